//! `churn_*`: thousands of short-lived processes pinning at once (issue 24).
//!
//! On a preemptible kernel (6.12 with `preempt=full`, 7.2's lazy model) a
//! task preempted inside a BPF trampoline program leaves it marked active on
//! that CPU, and the next task's call there is skipped. Many processes that
//! each pin once and exit are the plainest way to get there, so these
//! scenarios fork [`DEFAULT_PROCS`] children (a parameter), at most
//! [`ALIVE`] alive at a time, each pinning 16 KiB of its own memory once
//! through one path and exiting right after:
//!
//! - `churn_process_vm`: `process_vm_readv` of its own memory
//!   (`pin_user_pages_remote` + `unpin_user_pages_dirty_lock`);
//! - `churn_io_uring`: a ring, IORING_REGISTER_BUFFERS of one 16 KiB buffer
//!   (FOLL_LONGTERM), IORING_UNREGISTER_BUFFERS;
//! - `churn_odirect`: one 16 KiB O_DIRECT `pread` from a file on the
//!   scratch file system (pinned by the block layer, unpinned at
//!   completion).
//!
//! One family, one path per scenario, rather than one mixed scenario: when
//! the totals are off, the report says which path lost or doubled them.
//!
//! A child runs only raw syscalls on memory it maps itself (the parent may
//! have other threads, so nothing that allocates or locks after `fork`),
//! writes every page before the pin (the kernel does not count pins of the
//! shared zero page), and reports a failure as a (step, errno) record on a
//! non-blocking pipe.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use super::{
    emulated_direct_io_fs, io_uring_register, io_uring_setup, page_size, sequence, sys_err, ExpectedPath, PinPath,
    Scenario, ScenarioError, ScratchFile, Spec, IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS, SEED_SOURCE,
};
use crate::kernel::vmstat::FollPinDelta;

/// Children per scenario by default: a few thousand, bounded so one
/// scenario stays well under a minute under TCG on 2 vCPUs.
pub const DEFAULT_PROCS: u32 = 2000;
/// Children alive at once.
pub const ALIVE: usize = 32;
/// Bytes each child pins (16 KiB: 4 pages).
const CHILD_BYTES: usize = 16 << 10;

/// The pinning path of one churn scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnPath {
    /// `process_vm_readv` of the child's own memory.
    ProcessVm,
    /// io_uring register + unregister of one small fixed buffer.
    IoUring,
    /// One O_DIRECT read.
    DirectIo,
}

impl ChurnPath {
    /// Every path, in report order.
    pub const ALL: [ChurnPath; 3] = [ChurnPath::ProcessVm, ChurnPath::IoUring, ChurnPath::DirectIo];
}

/// What a child failed at (the record it writes is `[step, errno]`).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Step {
    Mmap = 1,
    ProcessVm = 2,
    ProcessVmShort = 3,
    RingSetup = 4,
    Register = 5,
    Unregister = 6,
    Pread = 7,
    PreadShort = 8,
}

fn step_syscall(step: u32) -> &'static str {
    match step {
        1 => "mmap (in a churn child)",
        2 => "process_vm_readv (in a churn child)",
        3 => "process_vm_readv (in a churn child; short transfer)",
        4 => "io_uring_setup (in a churn child)",
        5 => "io_uring_register(IORING_REGISTER_BUFFERS) (in a churn child)",
        6 => "io_uring_register(IORING_UNREGISTER_BUFFERS) (in a churn child)",
        7 => "pread(O_DIRECT) (in a churn child)",
        8 => "pread(O_DIRECT) (in a churn child; short read)",
        _ => "a churn child (killed or crashed)",
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child's work: map and write its own memory, pin it once through
/// `path`. Only raw syscalls and stack values: see the module docs.
fn child_work(path: ChurnPath, file: RawFd) -> Result<(), (Step, i32)> {
    let len = 2 * CHILD_BYTES;
    // SAFETY: a new private anonymous mapping; unmapped by the exit.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err((Step::Mmap, errno()));
    }
    // SAFETY: `len` writable bytes just mapped; nothing else refers to them.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0x5a, len) };
    let buf = libc::iovec { iov_base: p, iov_len: CHILD_BYTES };
    match path {
        ChurnPath::ProcessVm => {
            // SAFETY: an offset inside the mapping.
            let local = libc::iovec { iov_base: unsafe { p.cast::<u8>().add(CHILD_BYTES) }.cast(), iov_len: CHILD_BYTES };
            // SAFETY: both iovecs are this process's own mapping, alive.
            let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &buf, 1, 0) };
            if n < 0 {
                return Err((Step::ProcessVm, errno()));
            }
            if n as usize != CHILD_BYTES {
                return Err((Step::ProcessVmShort, 0));
            }
        }
        ChurnPath::IoUring => {
            let ring = io_uring_setup(1).map_err(|e| (Step::RingSetup, e.raw_os_error().unwrap_or(0)))?;
            io_uring_register(&ring, IORING_REGISTER_BUFFERS, (&buf as *const libc::iovec).cast(), 1)
                .map_err(|e| (Step::Register, e.raw_os_error().unwrap_or(0)))?;
            io_uring_register(&ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0)
                .map_err(|e| (Step::Unregister, e.raw_os_error().unwrap_or(0)))?;
        }
        ChurnPath::DirectIo => {
            // SAFETY: reads into the child's own mapping; `file` is the
            // parent's O_DIRECT descriptor, inherited.
            let n = unsafe { libc::pread(file, p, CHILD_BYTES, 0) };
            if n < 0 {
                return Err((Step::Pread, errno()));
            }
            if n as usize != CHILD_BYTES {
                return Err((Step::PreadShort, 0));
            }
        }
    }
    Ok(())
}

/// The child: never returns.
fn child_main(path: ChurnPath, file: RawFd, report: RawFd) -> ! {
    let code = match child_work(path, file) {
        Ok(()) => 0,
        Err((step, e)) => {
            let rec: [u32; 2] = [step as u32, e as u32];
            // SAFETY: writes 8 bytes from the stack (atomic on a pipe); a
            // full pipe (EAGAIN) drops the record, the exit status stays.
            unsafe { libc::write(report, rec.as_ptr().cast(), std::mem::size_of_val(&rec)) };
            1
        }
    };
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

struct State {
    // Field order is drop order: close the descriptor, then unlink.
    file: Option<(File, ScratchFile)>,
    /// Failure records: read end (non-blocking), write end (non-blocking,
    /// inherited by the children).
    records: (OwnedFd, OwnedFd),
}

/// One churn scenario (see the module documentation).
pub struct Churn {
    path: ChurnPath,
    procs: u32,
    dir: PathBuf,
    state: Option<State>,
}

impl Churn {
    /// `procs` children pinning through `path`; O_DIRECT files in `dir`.
    pub fn new(path: ChurnPath, procs: u32, dir: PathBuf) -> Churn {
        Churn { path, procs, dir, state: None }
    }

    /// Forks the children, [`ALIVE`] at a time, and reaps them all; the
    /// number that failed and the first failure record.
    fn fork_all(&self, st: &State) -> Result<(u32, Option<[u32; 2]>), ScenarioError> {
        let name = self.name();
        let file = st.file.as_ref().map_or(-1, |(f, _)| f.as_raw_fd());
        let report = st.records.1.as_raw_fd();
        let mut alive: HashSet<libc::pid_t> = HashSet::with_capacity(ALIVE);
        let (mut started, mut failed) = (0u32, 0u32);
        let mut fork_error = None;
        while (started < self.procs && fork_error.is_none()) || !alive.is_empty() {
            while started < self.procs && alive.len() < ALIVE && fork_error.is_none() {
                // SAFETY: the child runs only child_main (raw syscalls on
                // its own memory, then _exit); see the module docs.
                let pid = unsafe { libc::fork() };
                match pid {
                    0 => child_main(self.path, file, report),
                    p if p < 0 => fork_error = Some(io::Error::last_os_error()),
                    p => {
                        alive.insert(p);
                        started += 1;
                    }
                }
            }
            if alive.is_empty() {
                break;
            }
            let mut status = 0;
            // SAFETY: waits for any child of ours, status into a local.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(sys_err(name, "waitpid", e));
            }
            // Another child of this process (none in gupwatch check) is
            // reaped and ignored.
            if alive.remove(&pid) && !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                failed += 1;
            }
        }
        if let Some(e) = fork_error {
            return Err(sys_err(name, "fork", e));
        }
        Ok((failed, first_record(&st.records.0)))
    }
}

/// The first failure record on the pipe, if any.
fn first_record(rx: &OwnedFd) -> Option<[u32; 2]> {
    let mut rec = [0u32; 2];
    // SAFETY: reads at most 8 bytes into a local (non-blocking).
    let n = unsafe { libc::read(rx.as_raw_fd(), rec.as_mut_ptr().cast(), std::mem::size_of_val(&rec)) };
    (n == std::mem::size_of_val(&rec) as isize).then_some(rec)
}

/// Every churn scenario, `procs` children each.
pub fn scenarios(dir: &std::path::Path, procs: u32) -> Vec<Box<dyn Scenario>> {
    ChurnPath::ALL.into_iter().map(|p| Box::new(Churn::new(p, procs, dir.to_path_buf())) as Box<dyn Scenario>).collect()
}

impl Scenario for Churn {
    /// One path each, so an inexact total names its path.
    fn spec(&self) -> Spec {
        let (name, description, pin_path, path) = match self.path {
            ChurnPath::ProcessVm => (
                "churn_process_vm",
                "short-lived processes, 32 alive at once, each process_vm_readv of 16 KiB of its own memory",
                PinPath::ProcessVm,
                ExpectedPath::Slow,
            ),
            ChurnPath::IoUring => (
                "churn_io_uring",
                "short-lived processes, 32 alive at once, each io_uring register + unregister of a 16 KiB buffer",
                PinPath::IoUringRegister,
                ExpectedPath::Any,
            ),
            ChurnPath::DirectIo => (
                "churn_odirect",
                "short-lived processes, 32 alive at once, each one 16 KiB O_DIRECT read",
                PinPath::DirectIo,
                ExpectedPath::Any,
            ),
        };
        let pages = self.procs as u64 * (CHILD_BYTES / page_size()) as u64;
        Spec::pins(name, description, pin_path, pages, path)
    }

    /// Every path pins and unpins within the child's life, io_uring too.
    fn expected_delta(&self) -> FollPinDelta {
        FollPinDelta { acquired: self.pages(), released: self.pages() }
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        self.state = None;
        let file = if self.path == ChurnPath::DirectIo {
            if let Some(fs) = emulated_direct_io_fs(name, &self.dir)? {
                return Err(ScenarioError::EmulatedDirectIo { scenario: name, dir: self.dir.clone(), fs });
            }
            let scratch = ScratchFile::create(name, &self.dir, CHILD_BYTES, SEED_SOURCE)?;
            Some((scratch.open_direct(name, false)?, scratch))
        } else {
            None
        };
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(sys_err(name, "pipe2", io::Error::last_os_error()));
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let records = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        self.state = Some(State { file, records });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let st = self.state.as_ref().ok_or_else(|| sequence(name, "run", "without prepare()"))?;
        let (failed, first) = self.fork_all(st)?;
        if failed == 0 {
            return Ok(());
        }
        let [step, e] = first.unwrap_or([0, 0]);
        let errno = if e == 0 { io::Error::other(format!("{failed} of {} children failed", self.procs)) } else { io::Error::from_raw_os_error(e as i32) };
        Err(sys_err(name, step_syscall(step), errno))
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        if let Some(st) = self.state.take() {
            if let Some((f, scratch)) = st.file {
                drop(f);
                scratch.remove(self.name())?;
            }
        }
        Ok(())
    }
}
