//! O_DIRECT `pwrite`/`pread` on a scratch file: the block layer pins the
//! user buffer for the duration of the I/O.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};


use super::*;

// ---------------------------------------------------------------------------
// O_DIRECT

pub(super) struct DirectIoState {
    // Field order is drop order: release and reap the child, close the
    // descriptor, unlink, unmap.
    pub(super) child: Option<SharingChild>,
    pub(super) file: File,
    pub(super) scratch: ScratchFile,
    pub(super) buf: Mapping,
    /// `run` has been called since `prepare`.
    pub(super) ran: bool,
}

/// A child forked in `prepare` so that the parent's private anonymous pages
/// are shared copy-on-write with it (no longer AnonExclusive) during `run`.
/// It blocks reading a pipe and exits when the parent closes the pipe; it
/// touches none of the scenario's memory and pins nothing. Released and
/// reaped on drop.
pub(super) struct SharingChild {
    pub(super) scenario: &'static str,
    /// 0 once reaped.
    pub(super) pid: libc::pid_t,
    /// The pipe's write end: closing it releases the child (EOF).
    pub(super) release: Option<OwnedFd>,
}

impl SharingChild {
    pub(super) fn spawn(scenario: &'static str) -> Result<Self, ScenarioError> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(sys_err(scenario, "pipe2", io::Error::last_os_error()));
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let (wait_end, release) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork in a process that may have other threads. The child
        // only makes async-signal-safe syscalls (close, read, _exit) with
        // values already on its stack, allocates nothing, runs no destructor
        // and never returns from this block.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys_err(scenario, "fork", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                // Without our copy of the write end, EOF comes as soon as the
                // parent closes its copy or dies.
                libc::close(release.as_raw_fd());
                let mut byte = 0u8;
                loop {
                    let n = libc::read(wait_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                    if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        break;
                    }
                }
                libc::_exit(0);
            }
        }
        drop(wait_end);
        Ok(SharingChild {
            scenario,
            pid,
            release: Some(release),
        })
    }

    /// Releases the child and waits for it; an error if it did not exit 0.
    pub(super) fn reap(&mut self) -> Result<(), ScenarioError> {
        if self.pid <= 0 {
            return Ok(());
        }
        self.release = None;
        let pid = std::mem::replace(&mut self.pid, 0);
        wait_for_child(self.scenario, pid)
    }
}

/// Waits until our child `pid` has exited and reaps it (so `/proc/<pid>` is
/// gone when this returns); an error if it did not exit 0.
pub(super) fn wait_for_child(scenario: &'static str, pid: libc::pid_t) -> Result<(), ScenarioError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waits for our own child and writes its status into a
        // local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(sys_err(scenario, "waitpid", e));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(sys_err(
            scenario,
            "waitpid",
            io::Error::other(format!(
                "the forked child ended abnormally (wait status {status:#x})"
            )),
        ))
    }
}

impl Drop for SharingChild {
    fn drop(&mut self) {
        let _ = self.reap();
    }
}

/// `TMPFS_MAGIC` (include/uapi/linux/magic.h).
pub(super) const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The name of a filesystem known to accept O_DIRECT without pinning user
/// pages, if `dir` is on one. Measured on 6.18: tmpfs (O_DIRECT allowed
/// since 6.6) moves neither vmstat counter.
pub(super) fn emulated_direct_io_fs(
    scenario: &'static str,
    dir: &Path,
) -> Result<Option<&'static str>, ScenarioError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        sys_err(
            scenario,
            "statfs",
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs, both
    // alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(sys_err(scenario, "statfs", io::Error::last_os_error()));
    }
    // f_type's width differs between architectures; the magic fits in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64 & 0xffff_ffff;
    Ok((magic == TMPFS_MAGIC).then_some("tmpfs"))
}

/// The variants of [`DirectIo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DirectIoKind {
    Write,
    Read,
    /// `pwrite` from a buffer that `prepare` shared with a forked child.
    WriteAfterFork,
}

/// One 1 MiB `pwrite`/`pread` with O_DIRECT on a file in the scratch dir.
/// The filesystem must really do direct I/O through the block layer (ext4,
/// xfs, btrfs); tmpfs is refused because it emulates O_DIRECT. Other
/// filesystems are not checked: if one fakes O_DIRECT or takes FOLL_GET
/// references, the vmstat delta of `gupwatch check` will show it.
pub(super) struct DirectIo {
    pub(super) dir: PathBuf,
    pub(super) kind: DirectIoKind,
    pub(super) state: Option<DirectIoState>,
}

impl DirectIo {
    pub(super) fn write(&self) -> bool {
        self.kind != DirectIoKind::Read
    }
}

impl Scenario for DirectIo {
    fn reference_setup(&self) -> Option<reference::Setup> {
        let buffer = BufferSpec {
            shared_with_child: self.kind == DirectIoKind::WriteAfterFork,
            ..BufferSpec::anon(buffer_pages(), Prefault::Write)
        };
        let syscall = if self.write() { reference::Syscall::DirectIoWrite } else { reference::Syscall::DirectIoRead };
        Some(reference::Setup { buffer, syscall, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.buf.addr() as usize, st.buf.len))
    }

    /// `iov_iter_extract_pages` → `pin_user_pages_fast`, not LONGTERM (from
    /// about 6.3; before, FOLL_GET references that vmstat does not count).
    /// Pre-faulted, exclusively owned pages: the lock-free walk pins them
    /// all. After the fork the pages are no longer AnonExclusive, so a
    /// read-only pin must unshare them first, which only the slow path does:
    /// the walk gives up at the first page of every call (taking and
    /// dropping one reference there, which `nr_foll_pin_*` counts on both
    /// sides) and the slow path copies and pins them all.
    fn spec(&self) -> Spec {
        let (name, description, path) = match self.kind {
            DirectIoKind::Write => (
                "direct_io_write",
                "O_DIRECT pwrite of 1 MiB over allocated blocks: the block layer pins the source \
                 buffer",
                ExpectedPath::Fast,
            ),
            DirectIoKind::Read => (
                "direct_io_read",
                "O_DIRECT pread of 1 MiB from disk: the block layer pins the destination buffer",
                ExpectedPath::Fast,
            ),
            DirectIoKind::WriteAfterFork => (
                "direct_io_write_after_fork",
                "O_DIRECT pwrite of 1 MiB from a buffer shared with a forked child: the slow path \
                 unshares (copies) every page before pinning it",
                ExpectedPath::Slow,
            ),
        };
        Spec::pins(name, description, PinPath::DirectIo, buffer_pages(), path)
    }

    /// Refuses a tmpfs scratch directory, writes the file with buffered
    /// I/O + fsync + POSIX_FADV_DONTNEED (so
    /// its blocks are allocated and the data is on disk), opens it with
    /// O_DIRECT (so a filesystem refusing O_DIRECT fails here, not in `run`)
    /// and pre-faults the buffer. For the after-fork variant it then forks
    /// the child that shares the buffer until `cleanup`.
    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        let name = self.name();
        let write = self.write();
        if let Some(fs) = emulated_direct_io_fs(name, &self.dir)? {
            return Err(ScenarioError::EmulatedDirectIo {
                scenario: name,
                dir: self.dir.clone(),
                fs,
            });
        }
        let scratch = ScratchFile::create(name, &self.dir, BUFFER_BYTES, SEED_SOURCE)?;
        let file = scratch.open_direct(name, write)?;
        let seed = if write { SEED_SOURCE ^ 0xff } else { SEED_DEST };
        let buf = Mapping::new_prefaulted(name, BUFFER_BYTES, seed)?;
        // Fork last: from here on the buffer is shared and must stay
        // untouched until run.
        let child = match self.kind {
            DirectIoKind::WriteAfterFork => Some(SharingChild::spawn(name)?),
            DirectIoKind::Write | DirectIoKind::Read => None,
        };
        self.state = Some(DirectIoState {
            child,
            file,
            scratch,
            buf,
            ran: false,
        });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let write = self.write();
        let one_shot = self.kind == DirectIoKind::WriteAfterFork;
        let st = prepared(&mut self.state, name)?;
        if one_shot && st.ran {
            return Err(sequence(
                name,
                "run",
                "twice without prepare() (the first run unshared the buffer)",
            ));
        }
        st.ran = true;
        let (syscall, n) = if write {
            // SAFETY: the buffer is BUFFER_BYTES of live, page-aligned memory
            // owned by `st`; the kernel only reads it.
            let n = unsafe { libc::pwrite(st.file.as_raw_fd(), st.buf.addr(), BUFFER_BYTES, 0) };
            ("pwrite(O_DIRECT)", n)
        } else {
            if first_mismatch(st.buf.as_slice(), SEED_DEST).is_some() {
                st.buf.fill(SEED_DEST);
            }
            // SAFETY: as above; the kernel writes into the buffer, which no
            // Rust reference aliases during the call.
            let n = unsafe { libc::pread(st.file.as_raw_fd(), st.buf.addr(), BUFFER_BYTES, 0) };
            ("pread(O_DIRECT)", n)
        };
        if n < 0 {
            return Err(sys_err(name, syscall, io::Error::last_os_error()));
        }
        if n as usize != BUFFER_BYTES {
            return Err(ScenarioError::ShortTransfer {
                scenario: name,
                syscall,
                expected: BUFFER_BYTES,
                got: n as usize,
            });
        }
        if write {
            return Ok(());
        }
        verify_copy(name, syscall, st.buf.as_slice())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let Some(st) = self.state.take() else {
            return Ok(());
        };
        let DirectIoState {
            child,
            file,
            scratch,
            buf,
            ran: _,
        } = st;
        let reaped = child.map_or(Ok(()), |mut c| c.reap());
        drop(file);
        let res = scratch.remove(name);
        drop(buf);
        reaped.and(res)
    }
}
