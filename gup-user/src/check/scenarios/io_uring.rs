//! io_uring fixed buffers: IORING_REGISTER_BUFFERS pins a buffer LONGTERM
//! until it is unregistered or the ring is torn down; memory GUP must refuse
//! (PROT_NONE, a PCI BAR) fails with EFAULT.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};


use super::*;

/// `IORING_REGISTER_BUFFERS` (include/uapi/linux/io_uring.h).
pub(super) const IORING_REGISTER_BUFFERS: libc::c_uint = 0;
/// `IORING_UNREGISTER_BUFFERS`.
pub(super) const IORING_UNREGISTER_BUFFERS: libc::c_uint = 1;
/// Submission queue entries of the rings the scenarios create.
pub(super) const IO_URING_ENTRIES: u32 = 4;

// ---------------------------------------------------------------------------
// io_uring fixed buffers

/// `struct io_uring_params` (120 bytes; only zeroes go in).
#[repr(C)]
#[derive(Default)]
pub(super) struct IoUringParams {
    pub(super) sq_entries: u32,
    pub(super) cq_entries: u32,
    pub(super) flags: u32,
    pub(super) sq_thread_cpu: u32,
    pub(super) sq_thread_idle: u32,
    pub(super) features: u32,
    pub(super) wq_fd: u32,
    pub(super) resv: [u32; 3],
    pub(super) sq_off: [u32; 10],
    pub(super) cq_off: [u32; 10],
}

const _: () = assert!(std::mem::size_of::<IoUringParams>() == 120);

pub(super) fn io_uring_setup(entries: u32) -> io::Result<OwnedFd> {
    io_uring_setup_params(entries).map(|(fd, _)| fd)
}

/// `io_uring_setup(2)` with the parameters the kernel filled in (the ring
/// offsets that [`uring::Uring`] needs to map the rings).
pub(super) fn io_uring_setup_params(entries: u32) -> io::Result<(OwnedFd, IoUringParams)> {
    let mut params = IoUringParams::default();
    // SAFETY: `params` is a valid, zeroed io_uring_params the kernel may
    // write back into; it outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            entries,
            &mut params as *mut IoUringParams,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success io_uring_setup returns a new descriptor that nothing
    // else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) }, params))
}

pub(super) fn io_uring_register(
    ring: &OwnedFd,
    opcode: libc::c_uint,
    arg: *const libc::c_void,
    nr_args: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: `ring` is an open io_uring descriptor; `arg` is null or points
    // to `nr_args` iovecs that the caller keeps alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            opcode,
            arg,
            nr_args,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) const REGISTER: &str = "io_uring_register(IORING_REGISTER_BUFFERS)";
pub(super) const UNREGISTER: &str = "io_uring_register(IORING_UNREGISTER_BUFFERS)";

/// A ring and the buffer it registers; unregisters on drop if needed.
pub(super) struct RingState<B: UserBuffer = Mapping> {
    pub(super) ring: OwnedFd,
    pub(super) buf: B,
    pub(super) registered: bool,
}

impl RingState<Mapping> {
    /// A ring and a pre-faulted buffer.
    pub(super) fn new(scenario: &'static str) -> Result<Self, ScenarioError> {
        let buf = Mapping::new_prefaulted(scenario, BUFFER_BYTES, SEED_SOURCE)?;
        Self::with_buffer(scenario, buf)
    }
}

impl<B: UserBuffer> RingState<B> {
    pub(super) fn with_buffer(scenario: &'static str, buf: B) -> Result<Self, ScenarioError> {
        let ring =
            io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(scenario, "io_uring_setup", e))?;
        Ok(RingState {
            ring,
            buf,
            registered: false,
        })
    }

    /// IORING_REGISTER_BUFFERS of the buffer, as the raw syscall result.
    pub(super) fn try_register(&mut self) -> io::Result<()> {
        let iov = self.buf.iovec();
        io_uring_register(
            &self.ring,
            IORING_REGISTER_BUFFERS,
            (&iov as *const libc::iovec).cast(),
            1,
        )?;
        self.registered = true;
        Ok(())
    }

    pub(super) fn register(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        if self.registered {
            return Err(sequence(
                scenario,
                "run",
                "twice without prepare() (buffer already registered)",
            ));
        }
        self.try_register()
            .map_err(|e| sys_err(scenario, REGISTER, e))
    }

    pub(super) fn unregister(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        io_uring_register(&self.ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0)
            .map_err(|e| sys_err(scenario, UNREGISTER, e))?;
        self.registered = false;
        Ok(())
    }

    /// What `cleanup` does with a ring: unregisters the buffer if the
    /// kernel holds it, then closes the ring and unmaps the buffer (in that
    /// order: field order). An unregister error is returned, not dropped.
    pub(super) fn close(mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        let res = if self.registered { self.unregister(scenario) } else { Ok(()) };
        drop(self);
        res
    }
}

impl<B: UserBuffer> Drop for RingState<B> {
    fn drop(&mut self) {
        // Unregister synchronously rather than leave the unpin to the
        // kernel's asynchronous ring teardown (closing `ring` afterwards).
        if self.registered {
            let _ = io_uring_register(&self.ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0);
        }
    }
}

/// The variants of [`IoUringBuffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RingOp {
    /// `run` registers a pre-faulted buffer.
    Register,
    /// `prepare` registers a pre-faulted buffer, `run` unregisters it.
    Unregister,
    /// `run` registers a buffer that was never touched (no PTEs).
    RegisterUnfaulted,
    /// As `Register`, as a long-held leak: the buffer stays registered
    /// after `run` until `cleanup` (which [`Register`](RingOp::Register)
    /// also does, but this one tells the checker to expect the leak).
    Held,
}

/// Registers (run) or unregisters (run) a 1 MiB fixed buffer.
pub(super) struct IoUringBuffers {
    pub(super) op: RingOp,
    pub(super) state: Option<RingState>,
}

impl Scenario for IoUringBuffers {
    fn reference_setup(&self) -> Option<reference::Setup> {
        let prefault = if self.op == RingOp::RegisterUnfaulted { Prefault::None } else { Prefault::Write };
        let syscall = if self.op == RingOp::Unregister {
            reference::Syscall::IoUringUnregister
        } else {
            reference::Syscall::IoUringRegister
        };
        Some(reference::Setup { buffer: BufferSpec::anon(buffer_pages(), prefault), syscall, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.buf.addr() as usize, st.buf.len))
    }

    /// Registration pins with FOLL_WRITE | FOLL_LONGTERM: `pin_user_pages`
    /// on 6.1 (slow path API), `pin_user_pages_fast` on 6.12 and later,
    /// whose lock-free walk pins a pre-faulted buffer (so [`ExpectedPath::Any`])
    /// but finds no PTE in an untouched one and leaves all of it to the slow
    /// path (so [`ExpectedPath::Slow`] on every kernel).
    fn spec(&self) -> Spec {
        let (name, description, pin_path, path) = match self.op {
            RingOp::Register => (
                "io_uring_register_buffers",
                "IORING_REGISTER_BUFFERS of a 1 MiB fixed buffer: long-term pin that outlives the \
                 call",
                PinPath::IoUringRegister,
                ExpectedPath::Any,
            ),
            RingOp::Unregister => (
                "io_uring_unregister_buffers",
                "IORING_UNREGISTER_BUFFERS of a registered 1 MiB fixed buffer: unpins it",
                PinPath::IoUringUnregister,
                ExpectedPath::None,
            ),
            RingOp::RegisterUnfaulted => (
                "io_uring_register_unfaulted",
                "IORING_REGISTER_BUFFERS of a never-touched 1 MiB buffer: the slow path faults in \
                 and long-term pins every page",
                PinPath::IoUringRegister,
                ExpectedPath::Slow,
            ),
            RingOp::Held => (
                "io_uring_buffers_held",
                "IORING_REGISTER_BUFFERS of a 1 MiB fixed buffer kept registered after the run: a \
                 long-held leak owned by this process until cleanup unregisters it",
                PinPath::IoUringRegister,
                ExpectedPath::Any,
            ),
        };
        Spec::pins(name, description, pin_path, buffer_pages(), path)
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        let name = self.name();
        let mut st = match self.op {
            RingOp::Register | RingOp::Unregister | RingOp::Held => RingState::new(name)?,
            RingOp::RegisterUnfaulted => {
                RingState::with_buffer(name, Mapping::new_untouched(name, BUFFER_BYTES)?)?
            }
        };
        if self.op == RingOp::Unregister {
            st.register(name)?;
        }
        self.state = Some(st);
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let st = prepared(&mut self.state, name)?;
        match self.op {
            RingOp::Unregister => {
                if !st.registered {
                    return Err(sequence(
                        name,
                        "run",
                        "twice without prepare() (nothing registered)",
                    ));
                }
                st.unregister(name)
            }
            RingOp::Register | RingOp::RegisterUnfaulted | RingOp::Held => st.register(name),
        }
    }

    /// The held variant's buffer, registered by this process (the checker
    /// lowers its long-held threshold to see it right after `run`).
    fn expected_leak(&self) -> Option<ExpectedLeak> {
        (self.op == RingOp::Held).then(|| ExpectedLeak {
            kind: LeakKind::LongHeld.as_str(),
            pages: buffer_pages(),
            owner_tgid: std::process::id(),
        })
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        self.state.take().map_or(Ok(()), |st| st.close(name))
    }
}

/// What [`IoUringRefused`] registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// 1 MiB of PROT_NONE anonymous memory.
    ProtNone,
    /// Up to 1 MiB of a PCI memory BAR (VM_IO | VM_PFNMAP).
    PciBar,
}

/// IORING_REGISTER_BUFFERS of memory GUP must refuse: must fail with EFAULT.
pub(super) struct IoUringRefused {
    pub(super) what: Refused,
    pub(super) state: Option<RingState<Untouchable>>,
    pub(super) observed: Option<i32>,
}

impl Scenario for IoUringRefused {
    fn reference_setup(&self) -> Option<reference::Setup> {
        let buffer = match self.what {
            Refused::ProtNone => BufferSpec { prot: Prot::None, ..BufferSpec::anon(buffer_pages(), Prefault::None) },
            Refused::PciBar => BufferSpec {
                pages: (self.state.as_ref()?.buf.len / page_size()) as u64,
                backing: reference::Backing::Pfnmap,
                shared: true,
                prot: Prot::ReadWrite,
                prefault: Prefault::None,
                shared_with_child: false,
            },
        };
        Some(reference::Setup { buffer, syscall: reference::Syscall::IoUringRegister, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.buf.ptr.as_ptr() as usize, st.buf.len))
    }

    /// The lock-free walk finds no PTE (PROT_NONE, never touched) or a
    /// special one (the BAR) and pins nothing; the slow path's VMA check
    /// refuses the first page (no VM_READ/VM_WRITE; VM_IO | VM_PFNMAP) with
    /// -EFAULT, which io_uring returns (it unpins any partial pin first, so
    /// the counters would still balance).
    fn spec(&self) -> Spec {
        let (name, description) = match self.what {
            Refused::ProtNone => (
                "io_uring_register_prot_none",
                "IORING_REGISTER_BUFFERS of a 1 MiB PROT_NONE mapping: GUP refuses the VMA, \
                 nothing is pinned (EFAULT)",
            ),
            Refused::PciBar => (
                "io_uring_register_pfnmap",
                "IORING_REGISTER_BUFFERS of a mapped PCI memory BAR (VM_IO|VM_PFNMAP): GUP \
                 refuses it, nothing is pinned (EFAULT); needs root and a PCI device",
            ),
        };
        Spec::refused(name, description, PinPath::IoUringRegister, libc::EFAULT)
    }

    fn observed_errno(&self) -> Option<i32> {
        self.observed
    }

    /// For the BAR: maps the first memory BAR that sysfs lets us map, and
    /// fails with [`ScenarioError::NotReachable`] when there is none.
    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.observed = None;
        let name = self.name();
        let buf = match self.what {
            Refused::ProtNone => Untouchable::prot_none(name, BUFFER_BYTES)?,
            Refused::PciBar => map_pci_bar(name, Path::new(PCI_DEVICES))?.0,
        };
        self.state = Some(RingState::with_buffer(name, buf)?);
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let st = prepared(&mut self.state, name)?;
        if st.registered {
            return Err(sequence(
                name,
                "run",
                "again after the kernel accepted the buffer",
            ));
        }
        // On success `try_register` marks the buffer registered, so cleanup
        // (or drop) unregisters it.
        let res = st.try_register();
        refusal(&mut self.observed, name, REGISTER, libc::EFAULT, res)
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        self.state.take().map_or(Ok(()), |st| st.close(name))
    }
}

/// Where sysfs lists PCI devices.
pub(super) const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// `IORESOURCE_MEM` (include/linux/ioport.h): the resource is memory space.
pub(super) const IORESOURCE_MEM: u64 = 0x0000_0200;

/// The memory BARs listed in a PCI device's sysfs `resource` file (one line
/// `start end flags` in hex per resource; BARs are lines 0 to 5): their
/// index and size in bytes.
pub(super) fn parse_pci_resources(text: &str) -> Vec<(usize, u64)> {
    let hex = |t: &str| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    text.lines()
        .take(6)
        .enumerate()
        .filter_map(|(i, line)| {
            let mut f = line.split_whitespace().map(hex);
            let (start, end, flags) = (f.next()??, f.next()??, f.next()??);
            // A BAR spanning the whole address space would overflow the
            // size: such a file is garbage, not a BAR to map.
            let size = end.checked_sub(start)?.checked_add(1)?;
            (flags & IORESOURCE_MEM != 0 && end > start).then_some((i, size))
        })
        .collect()
}

/// Maps up to 1 MiB (whole pages) of the first PCI memory BAR under
/// `devices` that sysfs lets this process map read-write and shared; the
/// mapping and the `resourceN` file it came from.
pub(super) fn map_pci_bar(
    scenario: &'static str,
    devices: &Path,
) -> Result<(Untouchable, PathBuf), ScenarioError> {
    let unreachable = |reason: String| ScenarioError::NotReachable { scenario, reason };
    let entries = match fs::read_dir(devices) {
        Ok(d) => d,
        Err(e) => {
            return Err(unreachable(format!(
                "this machine has no PCI bus ({}: {e})",
                devices.display()
            )))
        }
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    let page = page_size() as u64;
    let (mut bars, mut no_file) = (0usize, None::<PathBuf>);
    let mut last_err: Option<(PathBuf, io::Error)> = None;
    for dir in &dirs {
        let Ok(text) = fs::read_to_string(dir.join("resource")) else {
            continue;
        };
        for (index, size) in parse_pci_resources(&text) {
            let len = size.min(BUFFER_BYTES as u64) / page * page;
            if len == 0 {
                continue;
            }
            bars += 1;
            let path = dir.join(format!("resource{index}"));
            if !path.exists() {
                no_file.get_or_insert(path);
                continue;
            }
            let mapped = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .and_then(|f| Untouchable::shared_file(&f, len as usize));
            match mapped {
                Ok(m) => return Ok((m, path)),
                Err(e) => last_err = Some((path, e)),
            }
        }
    }
    Err(unreachable(match (bars, last_err, no_file) {
        (0, _, _) => format!(
            "no PCI device under {} has a memory BAR of a page or more",
            devices.display()
        ),
        (n, Some((path, e)), _) => format!(
            "none of the {n} PCI memory BARs could be mapped read-write (last: {}: {e}); \
             mapping a BAR needs root, and CONFIG_IO_STRICT_DEVMEM or kernel lockdown refuse \
             BARs that a driver has claimed",
            path.display()
        ),
        (n, None, Some(path)) => format!(
            "the kernel exposes no sysfs resource files for the {n} PCI memory BARs found \
             (e.g. {} is missing)",
            path.display()
        ),
        (_, None, None) => "no PCI memory BAR could be mapped".to_string(),
    }))
}
