//! What a scenario declares about itself before it runs: the pin path, the
//! expected GUP path, errno, subsystem and LONGTERM ([`Expectation`]), the
//! leak it leaves on purpose ([`ExpectedLeak`]), and the [`Spec`] that
//! bundles them with its name.

use serde::Serialize;

use crate::kernel::vmstat::FollPinDelta;

/// The kernel path that pins user pages in a scenario's `run` phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinPath {
    /// `process_vm_readv`/`process_vm_writev`: `pin_user_pages_remote` on the
    /// remote iovecs, unpinned before the syscall returns.
    ProcessVm,
    /// `IORING_REGISTER_BUFFERS`: `io_pin_pages` → `pin_user_pages_fast`
    /// (FOLL_LONGTERM); the pins outlive the syscall.
    IoUringRegister,
    /// `IORING_UNREGISTER_BUFFERS`: unpins what registration pinned.
    IoUringUnregister,
    /// `O_DIRECT` read/write: the block layer pins the user buffer for the
    /// bios (`iov_iter_extract_pages`) and unpins it on completion.
    DirectIo,
    /// `VFIO_IOMMU_MAP_DMA` (type1): `vfio_iommu_type1` pins the buffer
    /// with `pin_user_pages_remote` (FOLL_LONGTERM) for as long as the DMA
    /// mapping lives; the unmap releases it.
    VfioMapDma,
    /// uverbs `REG_MR`: `ib_umem_get` (ib_core) pins the memory region
    /// with `pin_user_pages_fast` (FOLL_LONGTERM) for as long as the MR
    /// lives; `DEREG_MR` (or closing the verbs file) releases it.
    RdmaRegMr,
}

/// Pins whose creator exited that a live process holds right after `run`
/// (see [`super::Scenario::expected_holder`]): the leak analysis must name
/// it and raise no orphaned signal for them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExpectedHolder {
    /// The process that pinned (exited).
    pub owner_tgid: u32,
    /// Pins held.
    pub pages: u64,
    /// The holder.
    pub pid: u32,
    /// Its `comm`.
    pub comm: String,
}

impl PinPath {
    /// Stable snake_case name (as serialized).
    pub fn as_str(&self) -> &'static str {
        match self {
            PinPath::ProcessVm => "process_vm",
            PinPath::IoUringRegister => "io_uring_register",
            PinPath::IoUringUnregister => "io_uring_unregister",
            PinPath::DirectIo => "direct_io",
            PinPath::VfioMapDma => "vfio_map_dma",
            PinPath::RdmaRegMr => "rdma_reg_mr",
        }
    }

    /// The change of `nr_foll_pin_acquired`/`nr_foll_pin_released` that one
    /// `run` touching `pages` base pages causes, once settled.
    ///
    /// Measured exactly on 6.18 for all four paths. It holds only where the
    /// path uses FOLL_PIN: direct I/O took FOLL_GET references (which vmstat
    /// does not count) before the block layer moved to
    /// `iov_iter_extract_pages` (about 6.3 per the project notes, unverified),
    /// and `process_vm_*` before its switch to `pin_user_pages_remote`
    /// (about 5.8, unverified); there the real delta is zero.
    pub fn expected_delta(&self, pages: u64) -> FollPinDelta {
        match self {
            PinPath::ProcessVm | PinPath::DirectIo => FollPinDelta {
                acquired: pages,
                released: pages,
            },
            PinPath::IoUringRegister | PinPath::VfioMapDma | PinPath::RdmaRegMr => FollPinDelta {
                acquired: pages,
                released: 0,
            },
            PinPath::IoUringUnregister => FollPinDelta {
                acquired: 0,
                released: pages,
            },
        }
    }
}

/// Which GUP path should pin a scenario's pages (see [`Expectation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedPath {
    /// A `*_fast` call whose lock-free walk pins every page; the slow path
    /// does not run.
    Fast,
    /// The slow path pins the pages: either a non-fast API
    /// (`pin_user_pages_remote`, `pin_user_pages`) or a `*_fast` call whose
    /// lock-free walk gives up and falls back.
    Slow,
    /// Pinned, by whichever path the kernel's API for this call uses: used
    /// where the kernels gupwatch supports (6.1 to 7.2) disagree. io_uring
    /// buffer registration calls `pin_user_pages` (slow) on 6.1 but
    /// `pin_user_pages_fast` on 6.12 and later.
    Any,
    /// Nothing gets pinned: the scenario only unpins, or its syscall must fail.
    None,
    /// What the reference model predicts for this kernel (the outcome
    /// differs between kernels, e.g. a LONGTERM pin of a shared ext4 file
    /// fails with EFAULT on 6.5+ and EOPNOTSUPP before): no fixed
    /// expectation; `gupwatch check` compares every count, the path split
    /// and the errno with the model ([`super::Scenario::reference_setup`]).
    Reference,
}

impl ExpectedPath {
    /// Stable snake_case name (as serialized).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExpectedPath::Fast => "fast",
            ExpectedPath::Slow => "slow",
            ExpectedPath::Any => "any",
            ExpectedPath::None => "none",
            ExpectedPath::Reference => "reference",
        }
    }
}

/// What a scenario should make the kernel do, for `gupwatch check` to verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Which GUP path should pin the pages.
    pub path: ExpectedPath,
    /// The errno the pinning syscall should fail with (positive, e.g.
    /// `libc::EFAULT`), if it should fail.
    pub errno: Option<i32>,
    /// The kernel subsystem that pins: one of "process_vm", "io_uring",
    /// "direct-io".
    pub subsystem: &'static str,
    /// Whether the pin is FOLL_LONGTERM. For a scenario that pins nothing
    /// ([`ExpectedPath::None`]): whether the pins it releases, or the pin its
    /// failing syscall attempts, are.
    pub longterm: bool,
    /// A reason the run must show at least one reverted pin for (pins a
    /// call took and released again before it returned).
    #[serde(serialize_with = "ser_reverted", skip_serializing_if = "Option::is_none")]
    pub reverted: Option<gup_common::Reverted>,
}

/// [`Expectation::subsystem`] of the `process_vm_readv/writev` scenarios.
pub const SUBSYSTEM_PROCESS_VM: &str = "process_vm";
/// [`Expectation::subsystem`] of the io_uring scenarios.
pub const SUBSYSTEM_IO_URING: &str = "io_uring";
/// [`Expectation::subsystem`] of the O_DIRECT scenarios.
pub const SUBSYSTEM_DIRECT_IO: &str = "direct-io";
/// [`Expectation::subsystem`] of the VFIO scenarios.
pub const SUBSYSTEM_VFIO: &str = "vfio";
/// [`Expectation::subsystem`] of the RDMA scenarios.
pub const SUBSYSTEM_RDMA: &str = "rdma";

/// A leak the leak report should show right after a scenario's `run` (see
/// [`super::Scenario::expected_leak`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExpectedLeak {
    /// "long_held" or "orphaned" ([`gup_report::LeakKind::as_str`]).
    pub kind: &'static str,
    /// Pins the leak must cover.
    pub pages: u64,
    /// The process that owns the pins (this process, or the child that
    /// registered them).
    pub owner_tgid: u32,
}

impl PinPath {
    /// The subsystem whose call stack pins through this path.
    pub fn subsystem(&self) -> &'static str {
        match self {
            PinPath::ProcessVm => SUBSYSTEM_PROCESS_VM,
            PinPath::IoUringRegister | PinPath::IoUringUnregister => SUBSYSTEM_IO_URING,
            PinPath::DirectIo => SUBSYSTEM_DIRECT_IO,
            PinPath::VfioMapDma => SUBSYSTEM_VFIO,
            PinPath::RdmaRegMr => SUBSYSTEM_RDMA,
        }
    }

    /// Whether this path's pins are FOLL_LONGTERM: io_uring's fixed
    /// buffers, VFIO's DMA maps and RDMA memory regions outlive the syscall.
    pub fn longterm(&self) -> bool {
        matches!(
            self,
            PinPath::IoUringRegister | PinPath::IoUringUnregister | PinPath::VfioMapDma | PinPath::RdmaRegMr
        )
    }
}

/// What a scenario is, fixed when it is built: everything `gupwatch check`
/// reads about it before and after a run, apart from what the run itself
/// recorded. Each family builds one per variant in a single table, so a
/// variant is stated in one place instead of in five methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// [`super::Scenario::name`].
    pub name: &'static str,
    /// [`super::Scenario::description`].
    pub description: &'static str,
    /// [`super::Scenario::pin_path`].
    pub pin_path: PinPath,
    /// [`super::Scenario::pages`].
    pub pages: u64,
    /// [`super::Scenario::expectation`].
    pub expectation: Expectation,
}

impl Spec {
    /// A scenario whose syscall succeeds, pinning (or, for an unregister,
    /// releasing) `pages` base pages through `pin_path`; `path` is the GUP
    /// path that should do it. Subsystem and LONGTERM follow from the pin
    /// path.
    pub fn pins(
        name: &'static str,
        description: &'static str,
        pin_path: PinPath,
        pages: u64,
        path: ExpectedPath,
    ) -> Spec {
        Spec { name, description, pin_path, pages, expectation: Expectation::of(pin_path, path, None) }
    }

    /// A scenario whose syscall must fail with `errno`, pinning nothing.
    pub fn refused(name: &'static str, description: &'static str, pin_path: PinPath, errno: i32) -> Spec {
        Spec {
            name,
            description,
            pin_path,
            pages: 0,
            expectation: Expectation::of(pin_path, ExpectedPath::None, Some(errno)),
        }
    }
}

impl Expectation {
    /// The expectation of a syscall that pins through `pin_path`: the
    /// subsystem and LONGTERM are the path's.
    pub fn of(pin_path: PinPath, path: ExpectedPath, errno: Option<i32>) -> Expectation {
        Expectation { path, errno, subsystem: pin_path.subsystem(), longterm: pin_path.longterm(), reverted: None }
    }
}

fn ser_reverted<S: serde::Serializer>(r: &Option<gup_common::Reverted>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_some(r.name()),
        None => s.serialize_none(),
    }
}
