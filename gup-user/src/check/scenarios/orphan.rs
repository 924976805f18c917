//! io_uring rings that outlive the process that registered their buffers:
//! the orphaned pins, and the wait for a ring's teardown to release them.

use std::io::{self};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};


use super::*;
use crate::kernel::vmstat::{self, FollPinCounters};

// ---------------------------------------------------------------------------
// io_uring rings that outlive the process that registered their buffers

/// How long `io_uring_orphaned_closed` waits in `run` for the ring's
/// teardown to release the pins, reading exact totals (as root).
pub(super) const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same without `stat_refresh` (not root): the totals catch up only
/// when the kernel folds its per-CPU deltas (every `vm.stat_interval`).
pub(super) const RELEASE_TIMEOUT_NO_REFRESH: Duration = Duration::from_secs(15);
/// Pause between two readings while waiting for the release.
pub(super) const RELEASE_POLL: Duration = Duration::from_millis(10);

/// A reading of the FOLL_PIN counters to wait from.
pub(super) struct PinBaseline {
    pub(super) counters: FollPinCounters,
    /// Whether the readings refresh first (root) and so are exact.
    pub(super) refresh: bool,
}

impl PinBaseline {
    /// Exact (refreshed) as root; otherwise as the kernel last folded them.
    pub(super) fn read(scenario: &'static str) -> Result<Self, ScenarioError> {
        let vm = |error| ScenarioError::Vmstat { scenario, error };
        match vmstat::read(true) {
            Ok(counters) => Ok(PinBaseline {
                counters,
                refresh: true,
            }),
            Err(e) if e.is_refresh_failure() => Ok(PinBaseline {
                counters: vmstat::read(false).map_err(vm)?,
                refresh: false,
            }),
            Err(e) => Err(vm(e)),
        }
    }

    /// Polls `/proc/vmstat` until `nr_foll_pin_released` has grown by
    /// `pages` since this reading; how long that took, or
    /// [`ScenarioError::NotReleased`] after the timeout. (Not
    /// [`vmstat::settle`]: that waits for the counters to stop moving, not
    /// for a target, and a busy host never stops them.)
    pub(super) fn wait_for_release(
        &self,
        scenario: &'static str,
        what: &'static str,
        pages: u64,
    ) -> Result<Duration, ScenarioError> {
        let timeout = if self.refresh {
            RELEASE_TIMEOUT
        } else {
            RELEASE_TIMEOUT_NO_REFRESH
        };
        let start = Instant::now();
        loop {
            let now = vmstat::read(self.refresh)
                .map_err(|error| ScenarioError::Vmstat { scenario, error })?;
            let released = now.released.saturating_sub(self.counters.released);
            if released >= pages {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::NotReleased {
                    scenario,
                    what,
                    expected: pages,
                    released,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(RELEASE_POLL);
        }
    }
}

/// What the child of [`IoUringOrphan`] writes to its report pipe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ChildReport {
    /// [`CHILD_DONE`] or the stage that failed.
    pub(super) stage: u32,
    /// The errno of the failed stage.
    pub(super) errno: i32,
    /// When done: the ring's descriptor, in the table shared with the parent.
    pub(super) ring_fd: i32,
}

/// The child registered its buffer; `ring_fd` is the ring.
pub(super) const CHILD_DONE: u32 = 0;
/// `io_uring_setup` failed in the child.
pub(super) const CHILD_SETUP_FAILED: u32 = 1;
/// `IORING_REGISTER_BUFFERS` failed in the child (which closed the ring).
pub(super) const CHILD_REGISTER_FAILED: u32 = 2;

impl ChildReport {
    /// The ring of a successful report, as an owned descriptor; the
    /// child's failure otherwise.
    ///
    /// # Safety
    ///
    /// A successful report must name a descriptor of this process that
    /// nothing else owns: one the child left in the table it shared with us.
    pub(super) unsafe fn into_ring(self, scenario: &'static str) -> Result<OwnedFd, ScenarioError> {
        let errno = io::Error::from_raw_os_error(self.errno);
        match self.stage {
            CHILD_DONE if self.ring_fd >= 0 => {
                // SAFETY: the caller guarantees that nothing else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(self.ring_fd) })
            }
            CHILD_SETUP_FAILED => Err(sys_err(scenario, "io_uring_setup", errno)),
            CHILD_REGISTER_FAILED => Err(sys_err(scenario, REGISTER, errno)),
            _ => Err(sys_err(
                scenario,
                "clone",
                io::Error::other(format!("the forked child sent a bad report {self:?}")),
            )),
        }
    }
}

/// Starts a child process that shares this process's descriptor table
/// (`clone(CLONE_FILES | SIGCHLD)`; otherwise a fork: its own copy of the
/// memory), where it faults in its own copy of `buf`, creates a ring,
/// registers the buffer, writes a [`ChildReport`] to `report` and exits,
/// leaving the ring in the shared table. Returns its pid; the caller reaps
/// it.
///
/// Why not pass the ring over a Unix socket: the kernel refuses to send an
/// io_uring descriptor with SCM_RIGHTS (EINVAL, since 6.7 and in the stable
/// trees, measured on 6.18), and `pidfd_getfd` needs ptrace rights that a
/// seccomp profile or Yama may deny; a shared table needs nothing.
pub(super) fn spawn_registering_child(
    scenario: &'static str,
    buf: &Mapping,
    report: &OwnedFd,
) -> Result<libc::pid_t, ScenarioError> {
    let iov = buf.iovec();
    let tx = report.as_raw_fd();
    let flags = (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM, a null stack and no TID pointers
    // behaves like fork (the child runs on a copy-on-write copy of this
    // stack and returns here with 0), except that the descriptor table is
    // shared. The process may have other threads, so the child only makes
    // raw syscalls with values already on its stack (no allocation, no lock,
    // no destructor, nothing that relies on glibc's per-thread data, which a
    // raw clone does not update) and never returns from this block.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if pid < 0 {
        return Err(sys_err(scenario, "clone", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are that child; `iov` describes the child's own copy
        // of a mapping nobody else in the child uses.
        unsafe { registering_child(iov, tx) }
    }
    Ok(pid as libc::pid_t)
}

/// The child of [`spawn_registering_child`]: faults its buffer in, creates
/// a ring, registers the buffer, reports and `_exit`s (0 once the report is
/// written). It closes nothing but a ring whose registration failed: every
/// other descriptor is the parent's too.
///
/// # Safety
///
/// Only for that child, right after the clone: `iov` must be a read-write
/// anonymous mapping of this (child) process that nothing else touches.
pub(super) unsafe fn registering_child(iov: libc::iovec, tx: libc::c_int) -> ! {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // Fault every page in: fresh pages of the child's own memory (the
    // parent never touched the mapping, so none are shared with it).
    std::ptr::write_bytes(iov.iov_base.cast::<u8>(), SEED_SOURCE, iov.iov_len);
    let mut report = ChildReport::default();
    let mut params = IoUringParams::default();
    let ring = libc::syscall(
        libc::SYS_io_uring_setup,
        IO_URING_ENTRIES,
        &mut params as *mut IoUringParams,
    );
    if ring < 0 {
        report.stage = CHILD_SETUP_FAILED;
        report.errno = errno();
    } else {
        let ring = ring as libc::c_int;
        let rc = libc::syscall(
            libc::SYS_io_uring_register,
            ring,
            IORING_REGISTER_BUFFERS,
            &iov as *const libc::iovec,
            1 as libc::c_uint,
        );
        if rc < 0 {
            report.stage = CHILD_REGISTER_FAILED;
            report.errno = errno();
            libc::close(ring);
        } else {
            report.ring_fd = ring;
        }
    }
    let len = std::mem::size_of::<ChildReport>();
    let n = libc::write(tx, (&report as *const ChildReport).cast(), len);
    libc::_exit(if n == len as isize { 0 } else { 1 })
}

/// Reads the report of a child that has exited (the pipe is non-blocking:
/// no report is an error, not a hang).
pub(super) fn read_child_report(scenario: &'static str, rx: &OwnedFd) -> Result<ChildReport, ScenarioError> {
    let mut report = ChildReport::default();
    let len = std::mem::size_of::<ChildReport>();
    // SAFETY: reads at most `len` bytes into a local of that size; any bit
    // pattern is a valid ChildReport.
    let n = unsafe {
        libc::read(
            rx.as_raw_fd(),
            (&mut report as *mut ChildReport).cast(),
            len,
        )
    };
    if n == len as isize {
        return Ok(report);
    }
    let e = if n < 0 {
        io::Error::last_os_error()
    } else {
        io::Error::other(format!("{n} of {len} bytes"))
    };
    Err(sys_err(
        scenario,
        "read",
        io::Error::other(format!("the forked child sent no report ({e})")),
    ))
}

pub(super) struct OrphanState {
    // Field order is drop order: close the orphaned ring first.
    /// The ring the child registered its buffer on, kept after the child
    /// exited (the orphaned variant, until cleanup).
    pub(super) ring: Option<OwnedFd>,
    /// The child's report pipe (both ends non-blocking and close-on-exec).
    pub(super) report_rx: OwnedFd,
    pub(super) report_tx: OwnedFd,
    /// Never touched by this process: the child inherits the empty mapping
    /// and faults its own pages into it, so the pinned pages are the
    /// child's.
    pub(super) buf: Mapping,
}

/// A child process registers a 1 MiB buffer of its own memory on a ring and
/// exits; this process keeps the ring, so the pins outlive their owner,
/// held by this process, until `cleanup` closes it. The closed variant closes the ring
/// in `run` and waits until its teardown has released the pins.
pub(super) struct IoUringOrphan {
    pub(super) closed: bool,
    pub(super) state: Option<OrphanState>,
    /// The pid of the child of the last successful `run` since `prepare`.
    pub(super) child: Option<u32>,
    /// How long the last closed `run` waited for the release.
    pub(super) release_wait: Option<Duration>,
}

impl IoUringOrphan {
    pub(super) fn new(closed: bool) -> Self {
        IoUringOrphan {
            closed,
            state: None,
            child: None,
            release_wait: None,
        }
    }
}

impl Scenario for IoUringOrphan {
    /// The child's own buffer, written in full before it registers it (not
    /// in this process, so no pagemap capture).
    fn reference_setup(&self) -> Option<reference::Setup> {
        let syscall = if self.closed {
            reference::Syscall::IoUringRegisterThenRelease
        } else {
            reference::Syscall::IoUringRegister
        };
        Some(reference::Setup { buffer: BufferSpec::anon(buffer_pages(), Prefault::Write), syscall, captured: None })
    }

    /// As `io_uring_register_buffers`, in the child: its buffer is
    /// pre-faulted (by the child) when it registers it.
    fn spec(&self) -> Spec {
        let (name, description) = if self.closed {
            (
                "io_uring_orphaned_closed",
                "as io_uring_orphaned, then the ring is closed and the run waits until its \
                 asynchronous teardown has unpinned the buffer: nothing is left behind",
            )
        } else {
            (
                "io_uring_orphaned",
                "a forked child registers a 1 MiB fixed buffer of its own memory and exits while \
                 this process keeps the ring: the pins are held by this process (not orphaned) \
                 until cleanup closes the ring",
            )
        };
        Spec::pins(name, description, PinPath::IoUringRegister, buffer_pages(), ExpectedPath::Any)
    }

    /// The child exited, but this process has the ring open: the pins are
    /// held by this process, not orphaned (until cleanup closes the ring).
    fn expected_holder(&self) -> Option<ExpectedHolder> {
        if self.closed {
            return None;
        }
        let comm = std::fs::read_to_string("/proc/self/comm").map(|c| c.trim_end().to_string()).unwrap_or_default();
        self.child.map(|pid| ExpectedHolder { owner_tgid: pid, pages: buffer_pages(), pid: std::process::id(), comm })
    }

    /// The closed variant's run also releases what the child pinned.
    fn expected_delta(&self) -> FollPinDelta {
        let pages = self.pages();
        if self.closed {
            FollPinDelta {
                acquired: pages,
                released: pages,
            }
        } else {
            self.pin_path().expected_delta(pages)
        }
    }

    /// Maps the (untouched) buffer, creates the report pipe, and checks
    /// that this process may create a ring at all (so a host without
    /// io_uring fails here, not in the measured `run`).
    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.child = None;
        self.release_wait = None;
        let name = self.name();
        drop(io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(name, "io_uring_setup", e))?);
        let buf = Mapping::new_untouched(name, BUFFER_BYTES)?;
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(sys_err(name, "pipe2", io::Error::last_os_error()));
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let (report_rx, report_tx) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        self.state = Some(OrphanState {
            ring: None,
            report_rx,
            report_tx,
            buf,
        });
        Ok(())
    }

    /// Starts the child and waits until it has exited (reaped: its pid is
    /// gone), takes over its ring, and for the closed variant closes it and
    /// waits for the release.
    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let closed = self.closed;
        let st = prepared(&mut self.state, name)?;
        if st.ring.is_some() {
            return Err(sequence(
                name,
                "run",
                "twice without prepare() (the orphaned ring is still held)",
            ));
        }
        let baseline = if closed {
            Some(PinBaseline::read(name)?)
        } else {
            None
        };
        let pid = spawn_registering_child(name, &st.buf, &st.report_tx)?;
        let reaped = wait_for_child(name, pid);
        // Take the ring over even if the child then failed, so that it is
        // closed (on return) rather than left in our table.
        let ring = read_child_report(name, &st.report_rx).and_then(|r| {
            // SAFETY: the report comes from the child, which created the
            // ring in the descriptor table it shared with us (CLONE_FILES)
            // and exited without closing it: nothing else knows or owns it.
            unsafe { r.into_ring(name) }
        });
        reaped?;
        let ring = ring?;
        self.child = Some(pid as u32);
        match baseline {
            None => st.ring = Some(ring),
            Some(base) => {
                drop(ring);
                let waited = base.wait_for_release(name, "closing the ring", buffer_pages())?;
                self.release_wait = Some(waited);
            }
        }
        Ok(())
    }

    /// Closes the orphaned ring and waits until its asynchronous teardown
    /// has released the pins (as the closed variant's `run` does), so that
    /// the release cannot land in the next scenario's window. Fails with
    /// [`ScenarioError::NotReleased`] after the timeout (the ring is closed
    /// all the same).
    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let Some(mut st) = self.state.take() else {
            return Ok(());
        };
        let Some(ring) = st.ring.take() else {
            return Ok(());
        };
        let baseline = PinBaseline::read(name);
        drop(ring);
        drop(st);
        baseline?.wait_for_release(name, "closing the orphaned ring", buffer_pages())?;
        Ok(())
    }
}
