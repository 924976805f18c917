//! Built-in workloads that pin user pages through ordinary syscalls.
//!
//! Each [`Scenario`] has three phases: [`prepare`](Scenario::prepare) (not
//! measured: allocates and pre-faults its buffers, opens rings and files,
//! forks helpers), [`run`](Scenario::run) (measured by the caller between two
//! snapshots: one syscall that pins [`pages`](Scenario::pages) base pages, or
//! that must fail), and [`cleanup`](Scenario::cleanup) (not measured).
//! Nothing pins or unpins in `run` but its syscall, and whatever that syscall
//! starts has finished when `run` returns. (In the two orphan scenarios a
//! child forked in `run` makes the syscall and has exited when `run`
//! returns; the second also closes the ring and waits until its teardown
//! has unpinned.)
//!
//! Buffers are 1 MiB, page aligned (mmap) and marked `MADV_NOHUGEPAGE`, so
//! every page is its own small folio. The first six scenarios write their
//! buffers in full in `prepare`, so `run` faults nothing and the lock-free
//! fast path can pin every page; the next three set their buffers up so that
//! only the slow path can pin them (never touched, or shared with a forked
//! child); the last three hand the kernel memory it must refuse to pin
//! (PROT_NONE, device memory) and expect an errno. [`Scenario::expectation`]
//! says which is which.
//!
//! Three more leave pins behind on purpose, for the leak report: one keeps
//! its buffer registered after `run` (long-held), one has a short-lived
//! child register a buffer and exit while this process keeps the ring
//! (orphaned), and one does the same and then closes the ring and waits
//! until its teardown has released the pins. [`Scenario::expected_leak`]
//! says what the leak report should show right after `run`;
//! [`run_workload`] leaves these three out.
//!
//! No debugfs `gup_test`: Debian kernels do not build it.
//!
//! One file per family of workloads: `process_vm`,
//! `io_uring` (fixed buffers, refused memory), `direct_io`, `vfio` (DMA maps
//! through VFIO's type1 IOMMU), `rdma` (memory regions registered through
//! uverbs), `orphan` (rings
//! that outlive the registering process), `matrix` (the reference model's
//! backing × syscall table), [`churn`] and [`inflight`]; the shared pieces
//! are `memory` (mappings, scratch files), `registration` (what VFIO and
//! RDMA share: pin by registering, undo or hold), `error`, `uring` (a raw mmap'd
//! io_uring for the in-flight reads) and `workload` (the demo loop). This
//! file holds the [`Scenario`] trait, the registry ([`builtin`],
//! [`for_check`]) and the harness every family uses: a variant states what
//! it is in one [`Spec`], and `prepared`/`refusal` are the run phase's two
//! shared steps.

use std::io;
use std::path::Path;

pub mod churn;
mod direct_io;
mod error;
pub mod inflight;
mod io_uring;
mod matrix;
mod memory;
mod orphan;
mod placement;
mod process_vm;
mod rdma;
mod handoff;
mod registration;
mod reverted;
mod spec;
mod uring;
mod vfio;
mod workload;

#[cfg(test)]
mod live;
#[cfg(test)]
mod tests;

// The families share their helpers through this module: each file says
// `use super::*` and sees the others' `pub(super)` items.
use self::{direct_io::*, io_uring::*, matrix::*, memory::*, orphan::*, process_vm::*, registration::*};
pub use self::error::ScenarioError;
use self::error::*;
pub use self::memory::page_size;
pub use self::spec::{
    Expectation, ExpectedHolder, ExpectedLeak, ExpectedPath, PinPath, Spec, SUBSYSTEM_DIRECT_IO, SUBSYSTEM_IO_URING,
    SUBSYSTEM_PROCESS_VM, SUBSYSTEM_RDMA, SUBSYSTEM_VFIO,
};
pub use self::workload::{run_workload, ScenarioStats, WorkloadStats};
#[cfg(test)]
use self::workload::*;

use gup_report::LeakKind;
use crate::check::reference::{self, BufferSpec, Prefault, Prot};
use crate::kernel::vmstat::FollPinDelta;

/// Size of every scenario's buffer (1 MiB: 256 pages of 4 KiB).
pub const BUFFER_BYTES: usize = 1 << 20;

/// The state `prepare` left for `run`: a run before `prepare` (or after
/// `cleanup`) is a [`ScenarioError::Sequence`] error.
fn prepared<'a, S>(state: &'a mut Option<S>, scenario: &'static str) -> Result<&'a mut S, ScenarioError> {
    state.as_mut().ok_or_else(|| sequence(scenario, "run", "before prepare()"))
}

/// The outcome of a syscall that must fail with `errno`: records the errno
/// it returned in `observed` (for [`Scenario::observed_errno`]) and judges
/// it ([`expect_failure`]).
fn refusal<T>(
    observed: &mut Option<i32>,
    scenario: &'static str,
    syscall: &'static str,
    errno: i32,
    res: io::Result<T>,
) -> Result<(), ScenarioError> {
    *observed = res.as_ref().err().and_then(|e| e.raw_os_error());
    expect_failure(scenario, syscall, errno, res.map(|_| ()))
}

/// A built-in workload; see the module documentation for the phases.
pub trait Scenario: Send {
    /// What the scenario is: name, description, pin path, pages and
    /// expectation, fixed when it is built. The five accessors below read it.
    fn spec(&self) -> Spec;
    /// Stable snake_case name, e.g. `"process_vm_readv"`.
    fn name(&self) -> &'static str {
        self.spec().name
    }
    /// One line for humans.
    fn description(&self) -> &'static str {
        self.spec().description
    }
    /// Which kernel path pins in [`run`](Scenario::run).
    fn pin_path(&self) -> PinPath {
        self.spec().pin_path
    }
    /// Base pages one `run` pins (256 for 1 MiB with 4 KiB pages; 0 for a
    /// scenario whose syscall must fail).
    fn pages(&self) -> u64 {
        self.spec().pages
    }
    /// What `run` should make the kernel do.
    fn expectation(&self) -> Expectation {
        self.spec().expectation
    }
    /// The errno the last `run`'s pinning syscall failed with, recorded by
    /// the scenarios that expect a failure (`expectation().errno` is
    /// `Some`); `None` before `run`, after a success, and for every other
    /// scenario.
    fn observed_errno(&self) -> Option<i32> {
        None
    }
    /// The leak the checker should find right after `run()` (before
    /// cleanup), if any. A scenario whose owner is a child forked in `run`
    /// knows it only after a successful `run` (`None` before, and again
    /// after the next `prepare`).
    fn expected_leak(&self) -> Option<ExpectedLeak> {
        None
    }
    /// The live process that holds the pins after `run` although their
    /// creator exited (known only after a successful `run`).
    fn expected_holder(&self) -> Option<ExpectedHolder> {
        None
    }
    /// The settled change of `nr_foll_pin_acquired`/`nr_foll_pin_released`
    /// over one `run`: by default what [`pin_path`](Scenario::pin_path)
    /// gives for [`pages`](Scenario::pages); a scenario that also releases
    /// its pins in `run` (by other means than its pin path) says so here.
    fn expected_delta(&self) -> FollPinDelta {
        self.pin_path().expected_delta(self.pages())
    }
    /// The memory `run` hands the kernel and what its syscall does with it,
    /// for the reference model (`gupwatch check` compares the model's
    /// prediction with what happened). Valid after `prepare`; `None` when
    /// the scenario has no such description.
    fn reference_setup(&self) -> Option<reference::Setup> {
        None
    }
    /// The address and length of the buffer `run` hands the kernel, when
    /// it is this process's memory (after `prepare`), so the checker can
    /// read its presence from `/proc/self/pagemap`.
    fn buffer_range(&self) -> Option<(usize, usize)> {
        None
    }
    /// Takes the pins this scenario must hold before gupwatch attaches its
    /// probes (`gupwatch check` calls it once for every selected scenario,
    /// before loading anything), so the run can release pins gupwatch never
    /// saw taken. Returns the pins it took (the checker compares the sum
    /// with the kernel's counters). Most scenarios take none.
    fn before_attach(&mut self) -> Result<u64, ScenarioError> {
        Ok(0)
    }
    /// Whether the pin ledger must hold for the scenario to pass: no pin
    /// left untracked (`partial: false`), no unpin unmatched beyond those of
    /// pins taken before attach. The `inflight_` scenarios require it.
    fn ledger_must_hold(&self) -> bool {
        false
    }
    /// Sets up everything `run` needs, pre-faulting its buffers. Calling it
    /// again releases the previous set-up first.
    fn prepare(&mut self) -> Result<(), ScenarioError>;
    /// The measured phase: one pinning syscall plus checks that touch no
    /// new pages. Fails with [`ScenarioError::Sequence`] without `prepare`.
    /// A scenario whose syscall must fail returns `Ok` when it fails with
    /// `expectation().errno`, and [`ScenarioError::UnexpectedOutcome`] when
    /// it succeeds or fails otherwise (errors that mean the host does not
    /// support the syscall stay [`ScenarioError::Syscall`]).
    fn run(&mut self) -> Result<(), ScenarioError>;
    /// Releases what `prepare`/`run` set up. Safe to call at any time;
    /// dropping the scenario releases everything too (best effort).
    fn cleanup(&mut self) -> Result<(), ScenarioError>;
}


/// The built-in scenarios, in a fixed order: the six fast-path ones
/// (process_vm, io_uring, direct I/O), then the three that need the slow
/// path, then the three whose syscall must fail, then the three that leave
/// pins behind on purpose (long-held, orphaned, orphaned then released).
/// Direct I/O files go in `scratch_dir`, which should be on ext4 or xfs.
pub fn builtin(scratch_dir: &Path) -> Vec<Box<dyn Scenario>> {
    let mut all = balanced(scratch_dir);
    all.extend(leaking());
    all.extend(matrix(scratch_dir));
    all.extend(reverted_pins());
    all
}

/// The scenarios of pins a call takes and releases again ([`reverted`]).
fn reverted_pins() -> Vec<Box<dyn Scenario>> {
    vec![Box::new(reverted::Race { state: None }), Box::new(reverted::Movable { state: None })]
}

/// What `gupwatch check` runs: the [`builtin`] scenarios, then the
/// `churn_` family ([`churn`], `churn_procs` short-lived processes each),
/// the `inflight_` ones ([`inflight`]), the `vfio_` ones ([`vfio`],
/// reachable only in a QEMU guest with its test device), the `rdma_`
/// ones ([`rdma`], reachable with an RDMA device) and the `weak_pin_` one
/// ([`placement`], reachable with `movablecore=` and `null_blk`). Kept
/// apart from [`builtin`], which the demo workload and the benchmark also
/// draw from.
pub fn for_check(scratch_dir: &Path, churn_procs: u32) -> Vec<Box<dyn Scenario>> {
    let mut all = builtin(scratch_dir);
    all.extend(churn::scenarios(scratch_dir, churn_procs));
    all.extend(inflight::scenarios(scratch_dir));
    all.extend(vfio::scenarios());
    all.extend(rdma::scenarios());
    all.extend(placement::scenarios());
    all
}

/// The scenarios that leave pins behind after `run` on purpose (or, for the
/// closed orphan, create and release an orphan): left out of
/// [`run_workload`].
fn leaking() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(IoUringBuffers {
            op: RingOp::Held,
            state: None,
        }),
        Box::new(IoUringOrphan::new(false)),
        Box::new(IoUringOrphan::new(true)),
        Box::new(handoff::IoUringHandoff::new(handoff::HandoffKind::RingFork)),
        Box::new(handoff::IoUringHandoff::new(handoff::HandoffKind::RingDaemon)),
    ]
}

/// The other built-in scenarios: nothing they pin outlives their
/// `cleanup`, and none forks in `run`.
fn balanced(scratch_dir: &Path) -> Vec<Box<dyn Scenario>> {
    let process_vm = |kind| -> Box<dyn Scenario> { Box::new(ProcessVm { kind, state: None }) };
    let io_uring = |op| -> Box<dyn Scenario> { Box::new(IoUringBuffers { op, state: None }) };
    let direct_io = |kind| -> Box<dyn Scenario> {
        Box::new(DirectIo {
            dir: scratch_dir.to_path_buf(),
            kind,
            state: None,
        })
    };
    let refused = |what| -> Box<dyn Scenario> {
        Box::new(IoUringRefused {
            what,
            state: None,
            observed: None,
        })
    };
    vec![
        process_vm(ProcessVmKind::Readv),
        process_vm(ProcessVmKind::Writev),
        io_uring(RingOp::Register),
        io_uring(RingOp::Unregister),
        direct_io(DirectIoKind::Write),
        direct_io(DirectIoKind::Read),
        process_vm(ProcessVmKind::WritevUnfaulted),
        io_uring(RingOp::RegisterUnfaulted),
        direct_io(DirectIoKind::WriteAfterFork),
        Box::new(ProcessVmProtNone {
            state: None,
            observed: None,
        }),
        refused(Refused::ProtNone),
        refused(Refused::PciBar),
    ]
}

