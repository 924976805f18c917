//! Why a scenario failed: [`ScenarioError`], with the hint each syscall's
//! errno gets, and the helpers that build these errors.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::kernel::vmstat::VmstatError;

/// Why a scenario failed, with a hint for the user.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// A syscall failed.
    #[error("{scenario}: {syscall} failed: {errno}{}{hint}", hint_sep(.hint))]
    Syscall {
        scenario: &'static str,
        syscall: &'static str,
        errno: io::Error,
        hint: &'static str,
    },
    /// A syscall moved fewer (or more) bytes than asked.
    #[error(
        "{scenario}: {syscall} moved {got} bytes instead of {expected}, so the run did not \
         pin the expected pages; please report it with `uname -a`"
    )]
    ShortTransfer {
        scenario: &'static str,
        syscall: &'static str,
        expected: usize,
        got: usize,
    },
    /// The data after the syscall is not what it should be.
    #[error(
        "{scenario}: after {syscall} the buffer differs from the expected data at byte \
         {offset}; the kernel copied the wrong pages (please report it with `uname -a`)"
    )]
    Corrupted {
        scenario: &'static str,
        syscall: &'static str,
        offset: usize,
    },
    /// The scratch directory's filesystem accepts O_DIRECT but emulates it
    /// with buffered I/O, so nothing would be pinned.
    #[error(
        "{scenario}: the scratch directory {} is on {fs}, which accepts O_DIRECT but serves it \
         from the page cache (no user pages are pinned); point the scratch directory at ext4 \
         or xfs",
        dir.display()
    )]
    EmulatedDirectIo {
        scenario: &'static str,
        dir: PathBuf,
        fs: &'static str,
    },
    /// The phases were called out of order (a caller bug).
    #[error("{scenario}: {phase}() called {problem}")]
    Sequence {
        scenario: &'static str,
        phase: &'static str,
        problem: &'static str,
    },
    /// A syscall that must fail succeeded (`got` is `None`) or failed with
    /// another errno.
    #[error(
        "{scenario}: {syscall} should fail with {} but {}",
        errno_text(*.expected),
        outcome_text(*.got)
    )]
    UnexpectedOutcome {
        scenario: &'static str,
        syscall: &'static str,
        expected: i32,
        got: Option<i32>,
    },
    /// The scenario needs something this machine does not have (e.g. a PCI
    /// device whose memory BAR sysfs lets root map).
    #[error("{scenario}: not reachable here: {reason}")]
    NotReachable {
        scenario: &'static str,
        reason: String,
    },
    /// The scenario could not read the kernel's FOLL_PIN counters, which it
    /// needs to wait for an asynchronous release.
    #[error("{scenario}: {error}")]
    Vmstat {
        scenario: &'static str,
        #[source]
        error: VmstatError,
    },
    /// Pins the scenario let go of (by closing a ring) did not show up as
    /// released in `/proc/vmstat` in time.
    #[error(
        "{scenario}: after {what}, nr_foll_pin_released grew by {released} in {waited:?} \
         instead of the {expected} pages the ring held; its asynchronous teardown \
         (io_ring_exit_work) has not unpinned them yet: the machine may be overloaded (a slow \
         emulated VM?) or the kernel kept the pins (see dmesg for hung tasks)"
    )]
    NotReleased {
        scenario: &'static str,
        what: &'static str,
        expected: u64,
        released: u64,
        waited: Duration,
    },
}

impl ScenarioError {
    /// The scenario that failed.
    pub fn scenario(&self) -> &'static str {
        match self {
            ScenarioError::Syscall { scenario, .. }
            | ScenarioError::ShortTransfer { scenario, .. }
            | ScenarioError::Corrupted { scenario, .. }
            | ScenarioError::EmulatedDirectIo { scenario, .. }
            | ScenarioError::Sequence { scenario, .. }
            | ScenarioError::UnexpectedOutcome { scenario, .. }
            | ScenarioError::NotReachable { scenario, .. }
            | ScenarioError::Vmstat { scenario, .. }
            | ScenarioError::NotReleased { scenario, .. } => scenario,
        }
    }

    /// The errno of a failed syscall.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ScenarioError::Syscall { errno, .. } => errno.raw_os_error(),
            ScenarioError::UnexpectedOutcome { got, .. } => *got,
            _ => None,
        }
    }

    /// True when the host's configuration, not the kernel's pinning, stopped
    /// the scenario: the syscall does not exist or is blocked (ENOSYS,
    /// EOPNOTSUPP, EPERM/EACCES from seccomp, `io_uring_disabled`, ptrace
    /// policy), the filesystem refuses O_DIRECT (EINVAL) or only emulates it
    /// (tmpfs), or RLIMIT_MEMLOCK is too low for io_uring (ENOMEM), or the
    /// machine lacks what the scenario needs ([`ScenarioError::NotReachable`],
    /// or a kernel without the FOLL_PIN counters in `/proc/vmstat`).
    /// Such a scenario should be reported as skipped (not reachable here)
    /// with its hint, never as passed.
    pub fn is_unsupported(&self) -> bool {
        match self {
            ScenarioError::EmulatedDirectIo { .. } | ScenarioError::NotReachable { .. } => {
                return true
            }
            ScenarioError::Vmstat { error, .. } => {
                return matches!(error, VmstatError::Missing { .. })
            }
            _ => {}
        }
        let ScenarioError::Syscall { syscall, errno, .. } = self else {
            return false;
        };
        let Some(e) = errno.raw_os_error() else {
            return false;
        };
        match e {
            libc::ENOSYS | libc::EOPNOTSUPP => true,
            libc::EPERM | libc::EACCES => {
                syscall.starts_with("io_uring") || syscall.starts_with("process_vm")
            }
            libc::EINVAL => syscall.contains("O_DIRECT"),
            libc::ENOMEM => syscall.starts_with("io_uring"),
            _ => false,
        }
    }
}

/// "Bad address (EFAULT)"-style text for an errno.
pub(super) fn errno_text(errno: i32) -> String {
    let msg = io::Error::from_raw_os_error(errno).to_string();
    let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
    match errno_name(errno) {
        Some(name) => format!("{name} ({msg})"),
        None => format!("errno {errno} ({msg})"),
    }
}

/// The symbolic name of the errnos the scenarios expect or may meet.
pub(super) fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EFAULT => "EFAULT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EBUSY => "EBUSY",
        libc::ENXIO => "ENXIO",
        libc::ESRCH => "ESRCH",
        _ => return None,
    })
}

pub(super) fn outcome_text(got: Option<i32>) -> String {
    match got {
        None => "it succeeded: the kernel pinned memory it must refuse to pin (please report it \
                 with `uname -a`)"
            .to_string(),
        Some(e) => format!(
            "it failed with {}; please report it with `uname -a`",
            errno_text(e)
        ),
    }
}

/// The result of a syscall that must fail with `expected`: `Ok` when it did,
/// the ordinary [`ScenarioError::Syscall`] when its errno means the host does
/// not support the syscall at all, [`ScenarioError::UnexpectedOutcome`]
/// otherwise (including success).
pub(super) fn expect_failure(
    scenario: &'static str,
    syscall: &'static str,
    expected: i32,
    res: io::Result<()>,
) -> Result<(), ScenarioError> {
    let Err(e) = res else {
        return Err(ScenarioError::UnexpectedOutcome {
            scenario,
            syscall,
            expected,
            got: None,
        });
    };
    let got = e.raw_os_error();
    if got == Some(expected) {
        return Ok(());
    }
    let err = sys_err(scenario, syscall, e);
    if err.is_unsupported() {
        return Err(err);
    }
    Err(ScenarioError::UnexpectedOutcome {
        scenario,
        syscall,
        expected,
        got,
    })
}

pub(super) fn hint_sep(hint: &str) -> &'static str {
    if hint.is_empty() {
        ""
    } else {
        "; "
    }
}

/// A hint for a failed syscall (empty when there is nothing useful to say).
pub(super) fn hint(syscall: &str, errno: i32) -> &'static str {
    let family = syscall.split(['(', ' ']).next().unwrap_or(syscall);
    match (family, errno) {
        ("process_vm_readv" | "process_vm_writev", libc::EPERM | libc::EACCES) => {
            "access to this process's own memory was refused, which ptrace rules allow, so a \
             seccomp filter (container runtime profile) or an LSM blocks process_vm_readv/writev; \
             allow them (e.g. a custom seccomp profile, or --cap-add SYS_PTRACE with docker) and \
             check /proc/sys/kernel/yama/ptrace_scope"
        }
        ("process_vm_readv" | "process_vm_writev", libc::ENOSYS) => {
            "the kernel lacks CONFIG_CROSS_MEMORY_ATTACH or a seccomp filter hides the syscall"
        }
        ("io_uring_setup" | "io_uring_register", libc::ENOSYS) => {
            "this kernel has no io_uring (CONFIG_IO_URING=n or Linux < 5.1) or a seccomp filter \
             (container runtime) hides it"
        }
        ("io_uring_setup" | "io_uring_register", libc::EPERM | libc::EACCES) => {
            "io_uring is disabled for this process: check /proc/sys/kernel/io_uring_disabled \
             (0 = allowed; 1 = only root/CAP_SYS_ADMIN and members of \
             /proc/sys/kernel/io_uring_group; 2 = nobody) and the container's seccomp profile"
        }
        ("io_uring_setup", libc::ENOMEM) => {
            "the ring could not be allocated; kernels before 5.12 charge rings to RLIMIT_MEMLOCK: \
             raise it with `ulimit -l` or run as root"
        }
        ("io_uring_register", libc::ENOMEM) => {
            "RLIMIT_MEMLOCK is too low to register a 1 MiB fixed buffer: raise it with \
             `ulimit -l 2048` (KiB) or more, or run as root (CAP_IPC_LOCK is not charged)"
        }
        ("io_uring_register", libc::EFAULT) => {
            "the kernel refused the FOLL_LONGTERM pin of the anonymous buffer (see dmesg)"
        }
        ("io_uring_register", libc::EBUSY) => {
            "a buffer table is already registered on this ring (run() twice without prepare())"
        }
        ("io_uring_register", libc::ENXIO) => "no buffers were registered on this ring",
        ("io_uring_register", libc::EINVAL | libc::EOPNOTSUPP) => {
            "this kernel's io_uring does not register buffers this way (too old?)"
        }
        (_, libc::EMFILE | libc::ENFILE) => "too many open files: raise `ulimit -n`",
        ("open" | "pwrite" | "pread", libc::EINVAL) => {
            "the scratch directory's filesystem refuses O_DIRECT (tmpfs before Linux 6.6, some \
             overlay/FUSE/network filesystems); point the scratch directory at ext4 or xfs"
        }
        ("statfs" | "create" | "write" | "fsync" | "open", libc::ENOENT) => {
            "the scratch directory does not exist: create it or point gupwatch at another one"
        }
        (
            "statfs" | "create" | "write" | "fsync" | "open",
            libc::EACCES | libc::EPERM | libc::EROFS,
        ) => {
            "the scratch directory is not writable: point gupwatch at a writable directory on \
             ext4 or xfs"
        }
        (_, libc::ENOSPC | libc::EDQUOT) => {
            "the scratch directory's filesystem is full (1 MiB is needed)"
        }
        ("mmap", libc::ENOMEM) => "out of memory, or RLIMIT_AS/vm.max_map_count is too low",
        ("clone", libc::EAGAIN) => {
            "no new process allowed: RLIMIT_NPROC (`ulimit -u`) or the pids cgroup limit is reached"
        }
        _ => "",
    }
}

pub(super) fn sys_err(scenario: &'static str, syscall: &'static str, errno: io::Error) -> ScenarioError {
    let hint = errno.raw_os_error().map_or("", |e| hint(syscall, e));
    ScenarioError::Syscall {
        scenario,
        syscall,
        errno,
        hint,
    }
}

pub(super) fn sequence(scenario: &'static str, phase: &'static str, problem: &'static str) -> ScenarioError {
    ScenarioError::Sequence {
        scenario,
        phase,
        problem,
    }
}
