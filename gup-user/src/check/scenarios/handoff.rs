//! io_uring rings that outlive their creator in another process: the
//! creator registers a buffer, forks (once, or twice with `setsid` between,
//! as a daemon does) and exits, and the last child keeps the ring. The
//! pins are *held by* that child, not orphaned: the leak analysis must
//! name it ([`ExpectedHolder`]). `cleanup` lets the holder exit, which
//! closes the ring, and waits until the teardown has released the pins.
//!
//! Passing the ring over a Unix socket instead is not possible: the kernel
//! refuses to send an io_uring descriptor with SCM_RIGHTS (see
//! [`spawn_registering_child`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::*;

/// The holder's `comm` (`PR_SET_NAME`), which the leak analysis must name.
pub const HOLDER_COMM: &str = "ring-holder";
/// The same, NUL-terminated, for `prctl`.
const HOLDER_COMM_C: &[u8] = b"ring-holder\0";
/// How long `run` waits for the holder's report after the creator exited.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fork of the creator failed.
const CHILD_FORK_FAILED: u32 = 3;

/// What the creator (on failure) or the holder (once it holds the ring)
/// writes to the report pipe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HolderReport {
    /// [`CHILD_DONE`] or the stage that failed.
    stage: u32,
    /// The errno of the failed stage.
    errno: i32,
    /// When done: the holder's pid.
    holder: i32,
}

/// What the parent keeps while a holder lives.
struct HandoffState {
    /// Write end of the holder's control pipe: closing it lets the holder
    /// exit (it waits for end of file). Dropped first (field order).
    control_tx: Option<OwnedFd>,
    control_rx: OwnedFd,
    report_rx: OwnedFd,
    report_tx: OwnedFd,
    /// Untouched here: the creator faults its own pages into its copy.
    buf: Mapping,
}

/// A creator registers a 1 MiB buffer on a ring, hands the ring to a child
/// (`daemonize`: a grandchild after `setsid`) and exits.
pub(super) struct IoUringHandoff {
    pub(super) daemonize: bool,
    state: Option<HandoffState>,
    /// (creator, holder) of the last successful run.
    pids: Option<(u32, u32)>,
}

impl IoUringHandoff {
    pub(super) fn new(daemonize: bool) -> Self {
        IoUringHandoff { daemonize, state: None, pids: None }
    }
}

fn pipe(scenario: &'static str, flags: libc::c_int) -> Result<(OwnedFd, OwnedFd), ScenarioError> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(sys_err(scenario, "pipe2", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The descriptors the children use, as raw numbers on the stack.
#[derive(Clone, Copy)]
struct ChildFds {
    report_tx: libc::c_int,
    control_rx: libc::c_int,
    control_tx: libc::c_int,
}

/// Raw `fork` (clone with SIGCHLD): see [`spawn_registering_child`] for
/// why the children make raw syscalls only.
unsafe fn raw_fork() -> libc::c_long {
    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
}

unsafe fn send_report(tx: libc::c_int, report: &HolderReport) {
    let len = std::mem::size_of::<HolderReport>();
    libc::write(tx, (report as *const HolderReport).cast(), len);
}

/// The creator: faults its buffer in, registers it on a new ring, forks
/// the holder (through an intermediate child that calls `setsid` when
/// `daemonize`) and `_exit`s.
///
/// # Safety
///
/// Only in the forked creator, right after the fork: `iov` is its own copy
/// of a mapping nothing else touches.
unsafe fn creator(iov: libc::iovec, fds: ChildFds, daemonize: bool) -> ! {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // Only the parent may end the holder's wait.
    libc::close(fds.control_tx);
    std::ptr::write_bytes(iov.iov_base.cast::<u8>(), SEED_SOURCE, iov.iov_len);
    let mut report = HolderReport::default();
    let mut params = IoUringParams::default();
    let ring = libc::syscall(libc::SYS_io_uring_setup, IO_URING_ENTRIES, &mut params as *mut IoUringParams);
    if ring < 0 {
        report.stage = CHILD_SETUP_FAILED;
        report.errno = errno();
        send_report(fds.report_tx, &report);
        libc::_exit(0);
    }
    let rc = libc::syscall(libc::SYS_io_uring_register, ring as libc::c_int, IORING_REGISTER_BUFFERS, &iov as *const libc::iovec, 1 as libc::c_uint);
    if rc < 0 {
        report.stage = CHILD_REGISTER_FAILED;
        report.errno = errno();
        send_report(fds.report_tx, &report);
        libc::_exit(0);
    }
    let pid = raw_fork();
    if pid < 0 {
        report.stage = CHILD_FORK_FAILED;
        report.errno = errno();
        send_report(fds.report_tx, &report);
        libc::_exit(0);
    }
    if pid == 0 {
        if daemonize {
            // The classic double fork: a new session, then a grandchild
            // that is no session leader; the middle child exits at once.
            libc::syscall(libc::SYS_setsid);
            let pid = raw_fork();
            if pid != 0 {
                if pid < 0 {
                    report.stage = CHILD_FORK_FAILED;
                    report.errno = errno();
                    send_report(fds.report_tx, &report);
                }
                libc::_exit(0);
            }
        }
        holder(fds)
    }
    // The creator exits with the ring open in its child only.
    libc::_exit(0)
}

/// The holder: names itself, reports its pid and waits until the parent
/// closes the control pipe; its exit closes the ring.
unsafe fn holder(fds: ChildFds) -> ! {
    libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, HOLDER_COMM_C.as_ptr());
    let report = HolderReport { stage: CHILD_DONE, errno: 0, holder: libc::syscall(libc::SYS_getpid) as i32 };
    send_report(fds.report_tx, &report);
    let mut byte = 0u8;
    loop {
        let n = libc::read(fds.control_rx, (&mut byte as *mut u8).cast(), 1);
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            break;
        }
    }
    libc::_exit(0)
}

/// Waits up to [`REPORT_TIMEOUT`] for a report on the non-blocking pipe.
fn await_report(scenario: &'static str, rx: &OwnedFd) -> Result<HolderReport, ScenarioError> {
    let mut pfd = libc::pollfd { fd: rx.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, ours.
    let rc = unsafe { libc::poll(&mut pfd, 1, REPORT_TIMEOUT.as_millis() as libc::c_int) };
    if rc <= 0 {
        return Err(sys_err(scenario, "poll", io::Error::other("the ring's holder sent no report")));
    }
    let mut report = HolderReport::default();
    let len = std::mem::size_of::<HolderReport>();
    // SAFETY: reads at most `len` bytes into a local of that size; any bit
    // pattern is a valid report.
    let n = unsafe { libc::read(rx.as_raw_fd(), (&mut report as *mut HolderReport).cast(), len) };
    if n != len as isize {
        return Err(sys_err(scenario, "read", io::Error::other(format!("a short report ({n} of {len} bytes)"))));
    }
    let errno = io::Error::from_raw_os_error(report.errno);
    match report.stage {
        CHILD_DONE if report.holder > 0 => Ok(report),
        CHILD_SETUP_FAILED => Err(sys_err(scenario, "io_uring_setup", errno)),
        CHILD_REGISTER_FAILED => Err(sys_err(scenario, REGISTER, errno)),
        CHILD_FORK_FAILED => Err(sys_err(scenario, "clone", errno)),
        _ => Err(sys_err(scenario, "read", io::Error::other(format!("a bad report {report:?}")))),
    }
}

impl Scenario for IoUringHandoff {
    fn reference_setup(&self) -> Option<reference::Setup> {
        Some(reference::Setup {
            buffer: BufferSpec::anon(buffer_pages(), Prefault::Write),
            syscall: reference::Syscall::IoUringRegister,
            captured: None,
        })
    }

    fn spec(&self) -> Spec {
        let (name, description) = if self.daemonize {
            (
                "io_uring_handoff_daemon",
                "a forked creator registers a 1 MiB fixed buffer, double-forks (setsid between) and \
                 exits; the grandchild keeps the ring: the pins are held by it, not orphaned",
            )
        } else {
            (
                "io_uring_handoff_fork",
                "a forked creator registers a 1 MiB fixed buffer, forks and exits; its child keeps \
                 the ring: the pins are held by the child, not orphaned",
            )
        };
        Spec::pins(name, description, PinPath::IoUringRegister, buffer_pages(), ExpectedPath::Any)
    }

    fn expected_holder(&self) -> Option<ExpectedHolder> {
        self.pids.map(|(creator, holder)| ExpectedHolder {
            owner_tgid: creator,
            pages: buffer_pages(),
            pid: holder,
            comm: HOLDER_COMM.to_string(),
        })
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.pids = None;
        let name = self.name();
        drop(io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(name, "io_uring_setup", e))?);
        let buf = Mapping::new_untouched(name, BUFFER_BYTES)?;
        let (report_rx, report_tx) = pipe(name, libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        // Blocking: the holder sleeps in read() until the write end closes.
        let (control_rx, control_tx) = pipe(name, libc::O_CLOEXEC)?;
        self.state = Some(HandoffState { control_tx: Some(control_tx), control_rx, report_rx, report_tx, buf });
        Ok(())
    }

    /// Starts the creator, reaps it, and waits for the holder's report.
    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let daemonize = self.daemonize;
        let st = prepared(&mut self.state, name)?;
        let Some(control_tx) = &st.control_tx else {
            return Err(sequence(name, "run", "twice without prepare() (the holder still runs)"));
        };
        if self.pids.is_some() {
            return Err(sequence(name, "run", "twice without prepare() (the holder still runs)"));
        }
        let fds = ChildFds {
            report_tx: st.report_tx.as_raw_fd(),
            control_rx: st.control_rx.as_raw_fd(),
            control_tx: control_tx.as_raw_fd(),
        };
        let iov = st.buf.iovec();
        // SAFETY: as in spawn_registering_child: the child makes raw
        // syscalls with values on its stack only and never returns.
        let pid = unsafe { raw_fork() };
        if pid < 0 {
            return Err(sys_err(name, "clone", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: we are the forked creator.
            unsafe { creator(iov, fds, daemonize) }
        }
        wait_for_child(name, pid as libc::pid_t)?;
        let report = await_report(name, &st.report_rx)?;
        self.pids = Some((pid as u32, report.holder as u32));
        Ok(())
    }

    /// Lets the holder exit (closing the ring) and waits until the ring's
    /// teardown has released the pins.
    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let Some(mut st) = self.state.take() else { return Ok(()) };
        if self.pids.take().is_none() {
            return Ok(());
        }
        let baseline = PinBaseline::read(name);
        drop(st.control_tx.take());
        drop(st);
        baseline?.wait_for_release(name, "the holder's exit closing the ring", buffer_pages())?;
        Ok(())
    }
}
