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
//!
//! `rdma_handoff_fork` does the same with an RDMA memory region: the
//! creator registers it on a verbs context (`/dev/infiniband/uverbs0`) and
//! forks; the child keeps the context. The device's inode is shared by all
//! who open it, so the holder is found by the open file itself (the
//! task-file iterator, `holders/iter.rs`).
//!
//! `rdma_handoff_pass` passes the verbs descriptor instead: a receiver
//! that never inherited it (a sibling of the creator) takes it from a Unix
//! socket (`SCM_RIGHTS`) before the creator closes its own and exits, as
//! libvirt hands descriptors to QEMU. The receiver holds the pins.
//!
//! `vfio_handoff_fork` does it with a VFIO container: the creator maps
//! its buffer for QEMU's test device and forks; the child keeps the
//! container (`/dev/vfio/vfio`, another shared inode).
//!
//! `rdma_orphan_in_flight` is the true orphan: the creator sends its verbs
//! descriptor over a Unix socket (`SCM_RIGHTS`) that nobody reads from,
//! closes its own and exits. The open file lives on in the socket's queue,
//! in no process's descriptor table, so its pins are *orphaned* once the
//! grace period has passed; closing the socket (cleanup) releases them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::*;

/// The holder's `comm` (`PR_SET_NAME`), which the leak analysis must name.
pub const HOLDER_COMM: &str = "ring-holder";
/// The same, NUL-terminated, for `prctl`.
const HOLDER_COMM_C: &[u8] = b"ring-holder\0";
/// The holder's `comm` in `rdma_handoff_fork`.
pub const VERBS_HOLDER_COMM: &str = "verbs-holder";
/// The same, NUL-terminated, for `prctl`.
const VERBS_HOLDER_COMM_C: &[u8] = b"verbs-holder\0";
/// A report's stage when the RDMA creator failed: this plus its
/// [`super::rdma::Stage`].
const RDMA_STAGE_BASE: u32 = 100;
/// A report's stage when the VFIO creator failed: this plus the index of
/// its step in [`super::vfio::RAW_STEPS`].
const VFIO_STAGE_BASE: u32 = 200;
/// The holder's `comm` in `vfio_handoff_fork`.
pub const VFIO_HOLDER_COMM: &str = "vfio-holder";
/// The same, NUL-terminated, for `prctl`.
const VFIO_HOLDER_COMM_C: &[u8] = b"vfio-holder\0";
/// How long `run` waits for the holder's report after the creator exited.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fork of the creator failed.
const CHILD_FORK_FAILED: u32 = 3;
/// Sending the verbs descriptor over the socket failed.
const CHILD_SEND_FAILED: u32 = 4;
/// The receiver got no descriptor from the socket.
const CHILD_RECV_FAILED: u32 = 5;

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
    /// The socket pair the verbs descriptor goes through: its queue holds
    /// it in flight (`rdma_orphan_in_flight`: closing it releases the
    /// pins), or the receiver takes it (`rdma_handoff_pass`).
    sockets: Option<(OwnedFd, OwnedFd)>,
    /// `rdma_handoff_pass`: the receiver, a child of ours to reap.
    receiver: Option<libc::pid_t>,
    control_rx: OwnedFd,
    report_rx: OwnedFd,
    report_tx: OwnedFd,
    /// Untouched here: the creator faults its own pages into its copy.
    buf: Mapping,
}

/// What the creator registers and how it hands it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HandoffKind {
    /// An io_uring ring, to its child.
    RingFork,
    /// An io_uring ring, to a grandchild after `setsid` (a daemon).
    RingDaemon,
    /// An RDMA verbs context with a memory region, to its child.
    RdmaFork,
    /// An RDMA verbs context with a memory region, into an `SCM_RIGHTS`
    /// message nobody receives.
    RdmaInFlight,
    /// An RDMA verbs context with a memory region, over `SCM_RIGHTS` to a
    /// receiver that did not inherit it.
    RdmaPass,
    /// A VFIO container with a DMA mapping, to its child.
    VfioFork,
}

impl HandoffKind {
    fn rdma(self) -> bool {
        matches!(self, HandoffKind::RdmaFork | HandoffKind::RdmaInFlight | HandoffKind::RdmaPass)
    }

    /// Whether the descriptor goes through a socket pair.
    fn sends(self) -> bool {
        matches!(self, HandoffKind::RdmaInFlight | HandoffKind::RdmaPass)
    }
}

/// A creator registers a 1 MiB buffer, hands the object that holds the
/// pins to a child (or grandchild, [`HandoffKind`]) and exits.
pub(super) struct IoUringHandoff {
    pub(super) kind: HandoffKind,
    state: Option<HandoffState>,
    /// (creator, holder) of the last successful run.
    pids: Option<(u32, u32)>,
    /// [`HandoffKind::VfioFork`]: the IOMMU group's device path
    /// (NUL-terminated), found in `prepare`.
    vfio_group: [u8; 32],
}

impl IoUringHandoff {
    pub(super) fn new(kind: HandoffKind) -> Self {
        IoUringHandoff { kind, state: None, pids: None, vfio_group: [0; 32] }
    }

    fn holder_comm(&self) -> &'static str {
        match self.kind {
            HandoffKind::RdmaFork | HandoffKind::RdmaInFlight | HandoffKind::RdmaPass => VERBS_HOLDER_COMM,
            HandoffKind::VfioFork => VFIO_HOLDER_COMM,
            HandoffKind::RingFork | HandoffKind::RingDaemon => HOLDER_COMM,
        }
    }
}

/// The premise that leaves the in-flight orphan to RDMA: the kernel refuses
/// to send an io_uring descriptor with `SCM_RIGHTS` (EINVAL; "io_uring/
/// af_unix: disable sending io_uring over sockets", 6.7 and the stable
/// trees). A kernel that accepts it fails the ring scenarios here, so the
/// docs' claim and the missing ring in-flight scenario get revisited.
fn ring_not_sendable(scenario: &'static str, ring: &OwnedFd) -> Result<(), ScenarioError> {
    let (tx, _rx) = socket_pair(scenario)?;
    // SAFETY: both descriptors are open and ours; a message that the kernel
    // accepted is dropped with the sockets.
    match unsafe { send_fd(tx.as_raw_fd(), ring.as_raw_fd()) } {
        Err(libc::EINVAL) => Ok(()),
        Err(e) => Err(sys_err(scenario, "sendmsg(SCM_RIGHTS) of an io_uring ring", io::Error::from_raw_os_error(e))),
        Ok(()) => Err(sys_err(
            scenario,
            "sendmsg(SCM_RIGHTS) of an io_uring ring",
            io::Error::other("the kernel accepted it (expected EINVAL): a ring can be orphaned in flight here"),
        )),
    }
}

/// A connected pair of Unix stream sockets.
fn socket_pair(scenario: &'static str) -> Result<(OwnedFd, OwnedFd), ScenarioError> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: socketpair writes two new descriptors into the array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(sys_err(scenario, "socketpair", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
    /// The sending end of the socket pair (-1: none).
    sock_tx: libc::c_int,
    /// The receiving end of the socket pair (-1: none).
    sock_rx: libc::c_int,
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
unsafe fn creator(iov: libc::iovec, fds: ChildFds, kind: HandoffKind, vfio_group: &[u8; 32]) -> ! {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // Only the parent may end the holder's wait.
    libc::close(fds.control_tx);
    std::ptr::write_bytes(iov.iov_base.cast::<u8>(), SEED_SOURCE, iov.iov_len);
    let mut report = HolderReport::default();
    if kind == HandoffKind::VfioFork {
        if let Err((step, e)) = super::vfio::map_raw(vfio_group, iov.iov_base as u64, iov.iov_len as u64) {
            report.stage = VFIO_STAGE_BASE + step;
            report.errno = e;
            send_report(fds.report_tx, &report);
            libc::_exit(0);
        }
        hand_on(fds, kind)
    }
    if kind.rdma() {
        let fd = match super::rdma::register_raw(iov.iov_base as u64, iov.iov_len as u64) {
            Ok(fd) => fd,
            Err((stage, e)) => {
                report.stage = RDMA_STAGE_BASE + stage as u32;
                report.errno = e;
                send_report(fds.report_tx, &report);
                libc::_exit(0);
            }
        };
        if kind.sends() {
            send_away(fds, fd, kind == HandoffKind::RdmaInFlight)
        }
        hand_on(fds, kind)
    }
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
    hand_on(fds, kind)
}

/// The creator of `rdma_orphan_in_flight` and `rdma_handoff_pass`: sends
/// `fd` over the socket, closes its own and exits. In flight (nobody will
/// receive it) it reports itself, and no process has the verbs file open
/// any more; passed, the receiver reports once it has it.
///
/// # Safety
///
/// As [`creator`]: raw calls only, values on the stack.
unsafe fn send_away(fds: ChildFds, fd: libc::c_int, in_flight: bool) -> ! {
    let mut report = HolderReport::default();
    if let Err(e) = send_fd(fds.sock_tx, fd) {
        report.stage = CHILD_SEND_FAILED;
        report.errno = e;
    } else if in_flight {
        report.stage = CHILD_DONE;
        report.holder = libc::syscall(libc::SYS_getpid) as i32;
    } else {
        libc::close(fd);
        libc::_exit(0)
    }
    libc::close(fd);
    send_report(fds.report_tx, &report);
    libc::_exit(0)
}

/// `rdma_handoff_pass`'s receiver, forked by the checker before the
/// creator (so it inherits no verbs descriptor): takes the descriptor from
/// the socket and holds it as [`holder`] does.
///
/// # Safety
///
/// Only in the forked receiver: raw calls only, values on the stack.
unsafe fn receiver(fds: ChildFds) -> ! {
    // Only the parent may end the wait; the socket's sending end is the
    // creator's (and the parent's, which closes it on cleanup).
    libc::close(fds.control_tx);
    libc::close(fds.sock_tx);
    match recv_fd(fds.sock_rx) {
        Ok(_fd) => holder(fds, VERBS_HOLDER_COMM_C),
        Err(e) => {
            let report = HolderReport { stage: CHILD_RECV_FAILED, errno: e, holder: 0 };
            send_report(fds.report_tx, &report);
            libc::_exit(0)
        }
    }
}

/// `recvmsg` of one byte with one descriptor attached; the descriptor, or
/// the errno (`EBADMSG` for a message without one, `ENODATA` at end of
/// file). Raw calls only.
///
/// # Safety
///
/// `sock` is an open socket of the caller.
unsafe fn recv_fd(sock: libc::c_int) -> Result<libc::c_int, i32> {
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let mut cmsg: FdMessage = std::mem::zeroed();
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut FdMessage).cast();
    msg.msg_controllen = std::mem::size_of::<FdMessage>();
    loop {
        match libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) {
            1 => break,
            0 => return Err(libc::ENODATA),
            _ => {
                let e = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
                if e != libc::EINTR {
                    return Err(e);
                }
            }
        }
    }
    if msg.msg_controllen < std::mem::size_of::<libc::cmsghdr>() || cmsg.hdr.cmsg_level != libc::SOL_SOCKET || cmsg.hdr.cmsg_type != libc::SCM_RIGHTS {
        return Err(libc::EBADMSG);
    }
    Ok(cmsg.fd)
}

/// A control message carrying one descriptor (`CMSG_SPACE(sizeof(int))`).
#[repr(C)]
struct FdMessage {
    hdr: libc::cmsghdr,
    fd: libc::c_int,
    _pad: libc::c_int,
}

/// `sendmsg` of one byte with `fd` attached (`SCM_RIGHTS`); the errno on
/// failure. Raw calls only, no allocation.
///
/// # Safety
///
/// `sock` and `fd` are open descriptors of the caller.
unsafe fn send_fd(sock: libc::c_int, fd: libc::c_int) -> Result<(), i32> {
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let mut cmsg: FdMessage = std::mem::zeroed();
    cmsg.hdr.cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
    cmsg.hdr.cmsg_level = libc::SOL_SOCKET;
    cmsg.hdr.cmsg_type = libc::SCM_RIGHTS;
    cmsg.fd = fd;
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut FdMessage).cast();
    msg.msg_controllen = std::mem::size_of::<FdMessage>();
    if libc::sendmsg(sock, &msg, 0) == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }
}

/// The creator's last step: forks the holder (through a middle child that
/// calls `setsid` for a daemon) and exits with the object open in it only.
///
/// # Safety
///
/// As [`creator`]: raw calls only.
unsafe fn hand_on(fds: ChildFds, kind: HandoffKind) -> ! {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut report = HolderReport::default();
    let pid = raw_fork();
    if pid < 0 {
        report.stage = CHILD_FORK_FAILED;
        report.errno = errno();
        send_report(fds.report_tx, &report);
        libc::_exit(0);
    }
    if pid == 0 {
        if kind == HandoffKind::RingDaemon {
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
        let comm = match kind {
            HandoffKind::RdmaFork | HandoffKind::RdmaInFlight | HandoffKind::RdmaPass => VERBS_HOLDER_COMM_C,
            HandoffKind::VfioFork => VFIO_HOLDER_COMM_C,
            HandoffKind::RingFork | HandoffKind::RingDaemon => HOLDER_COMM_C,
        };
        holder(fds, comm)
    }
    // The creator exits with the object open in its child only.
    libc::_exit(0)
}

/// The holder: names itself, reports its pid and waits until the parent
/// closes the control pipe; its exit closes the ring.
unsafe fn holder(fds: ChildFds, comm: &'static [u8]) -> ! {
    libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, comm.as_ptr());
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
        CHILD_SEND_FAILED => Err(sys_err(scenario, "sendmsg(SCM_RIGHTS)", errno)),
        CHILD_RECV_FAILED => Err(sys_err(scenario, "recvmsg(SCM_RIGHTS)", errno)),
        s if s >= VFIO_STAGE_BASE => match super::vfio::RAW_STEPS.get((s - VFIO_STAGE_BASE) as usize) {
            Some(step) => Err(sys_err(scenario, step, errno)),
            None => Err(sys_err(scenario, "read", io::Error::other(format!("a bad report {report:?}")))),
        },
        s if s > RDMA_STAGE_BASE => match super::rdma::Stage::from_u32(s - RDMA_STAGE_BASE) {
            Some(stage) => Err(super::rdma::stage_err(scenario, (stage, report.errno))),
            None => Err(sys_err(scenario, "read", io::Error::other(format!("a bad report {report:?}")))),
        },
        _ => Err(sys_err(scenario, "read", io::Error::other(format!("a bad report {report:?}")))),
    }
}

impl Scenario for IoUringHandoff {
    fn reference_setup(&self) -> Option<reference::Setup> {
        if self.kind.rdma() || self.kind == HandoffKind::VfioFork {
            return None;
        }
        Some(reference::Setup {
            buffer: BufferSpec::anon(buffer_pages(), Prefault::Write),
            syscall: reference::Syscall::IoUringRegister,
            captured: None,
        })
    }

    fn spec(&self) -> Spec {
        if self.kind == HandoffKind::VfioFork {
            return Spec::pins(
                "vfio_handoff_fork",
                "a forked creator maps 1 MiB for QEMU's pci-testdev on a VFIO container of its own, \
                 forks and exits; its child keeps the container: the pins are held by the child (found \
                 by the open file, /dev/vfio/vfio's inode being shared), not orphaned",
                PinPath::VfioMapDma,
                buffer_pages(),
                ExpectedPath::Slow,
            );
        }
        if self.kind == HandoffKind::RdmaInFlight {
            return Spec::pins(
                "rdma_orphan_in_flight",
                "a forked creator registers a 1 MiB RDMA MR, sends its verbs descriptor over a Unix \
                 socket nobody reads, closes its own and exits: no process holds the context, so the \
                 pins are orphaned after the grace period; closing the socket releases them",
                PinPath::RdmaRegMr,
                buffer_pages(),
                ExpectedPath::Fast,
            );
        }
        if self.kind == HandoffKind::RdmaPass {
            return Spec::pins(
                "rdma_handoff_pass",
                "a forked creator registers a 1 MiB RDMA MR, passes its verbs descriptor over a Unix \
                 socket (SCM_RIGHTS) to a sibling that never inherited it, closes its own and exits: \
                 the pins are held by the receiver, not orphaned",
                PinPath::RdmaRegMr,
                buffer_pages(),
                ExpectedPath::Fast,
            );
        }
        if self.kind == HandoffKind::RdmaFork {
            return Spec::pins(
                "rdma_handoff_fork",
                "a forked creator registers a 1 MiB RDMA MR on a verbs context, forks and exits; its \
                 child keeps the context: the pins are held by the child (found by the open file, \
                 the device's inode being shared), not orphaned",
                PinPath::RdmaRegMr,
                buffer_pages(),
                ExpectedPath::Fast,
            );
        }
        let (name, description) = if self.kind == HandoffKind::RingDaemon {
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

    fn expected_leak(&self) -> Option<ExpectedLeak> {
        let (creator, _) = self.pids?;
        (self.kind == HandoffKind::RdmaInFlight).then(|| ExpectedLeak {
            kind: LeakKind::Orphaned.as_str(),
            pages: buffer_pages(),
            owner_tgid: creator,
        })
    }

    fn expected_holder(&self) -> Option<ExpectedHolder> {
        if self.kind == HandoffKind::RdmaInFlight {
            return None;
        }
        self.pids.map(|(creator, holder)| ExpectedHolder {
            owner_tgid: creator,
            pages: buffer_pages(),
            pid: holder,
            comm: self.holder_comm().to_string(),
        })
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.pids = None;
        let name = self.name();
        if self.kind == HandoffKind::VfioFork {
            self.vfio_group = super::vfio::group_path(name)?;
        } else if self.kind.rdma() {
            super::rdma::check_reachable(name)?;
        } else {
            let ring = io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(name, "io_uring_setup", e))?;
            ring_not_sendable(name, &ring)?;
        }
        let buf = Mapping::new_untouched(name, BUFFER_BYTES)?;
        let (report_rx, report_tx) = pipe(name, libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        // Blocking: the holder sleeps in read() until the write end closes.
        let (control_rx, control_tx) = pipe(name, libc::O_CLOEXEC)?;
        let sockets = if self.kind.sends() { Some(socket_pair(name)?) } else { None };
        self.state = Some(HandoffState { control_tx: Some(control_tx), sockets, receiver: None, control_rx, report_rx, report_tx, buf });
        Ok(())
    }

    /// Starts the creator, reaps it, and waits for the holder's report.
    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let kind = self.kind;
        let vfio_group = self.vfio_group;
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
            sock_tx: st.sockets.as_ref().map_or(-1, |(tx, _)| tx.as_raw_fd()),
            sock_rx: st.sockets.as_ref().map_or(-1, |(_, rx)| rx.as_raw_fd()),
        };
        if kind == HandoffKind::RdmaPass {
            // SAFETY: as below; the receiver makes raw syscalls only.
            let pid = unsafe { raw_fork() };
            if pid < 0 {
                return Err(sys_err(name, "clone", io::Error::last_os_error()));
            }
            if pid == 0 {
                // SAFETY: we are the forked receiver.
                unsafe { receiver(fds) }
            }
            st.receiver = Some(pid as libc::pid_t);
        }
        let iov = st.buf.iovec();
        // SAFETY: as in spawn_registering_child: the child makes raw
        // syscalls with values on its stack only and never returns.
        let pid = unsafe { raw_fork() };
        if pid < 0 {
            return Err(sys_err(name, "clone", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: we are the forked creator.
            unsafe { creator(iov, fds, kind, &vfio_group) }
        }
        wait_for_child(name, pid as libc::pid_t)?;
        let report = await_report(name, &st.report_rx)?;
        if kind == HandoffKind::RdmaInFlight {
            // Orphaned only past the grace period since the exit: the
            // checker reads the leaks right after `run`.
            std::thread::sleep(crate::model::leaks::ORPHAN_GRACE + Duration::from_millis(500));
        }
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
        let receiver = st.receiver.take();
        drop(st);
        if let Some(pid) = receiver {
            wait_for_child(name, pid)?;
        }
        baseline?.wait_for_release(name, "the holder's exit closing the ring or verbs context", buffer_pages())?;
        Ok(())
    }
}
