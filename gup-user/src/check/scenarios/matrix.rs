//! The reference model's matrix: backing × sharing × permissions × syscall,
//! each combination judged by the model.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};


use super::*;

/// What a [`Matrix`] scenario keeps between its phases.
pub(super) struct MatrixState {
    // Field order is drop order (after Drop::drop unregisters): release
    // and reap the child, close the ring, close and unlink the direct I/O
    // file, unmap, then close or unlink what backed the mapping.
    pub(super) child: Option<SharingChild>,
    pub(super) ring: Option<OwnedFd>,
    pub(super) registered: bool,
    pub(super) dio: Option<(File, ScratchFile)>,
    /// The `local_iov` side of process_vm_readv/writev.
    pub(super) local: Option<Mapping>,
    pub(super) buf: RawMapping,
    pub(super) _memfd: Option<OwnedFd>,
    pub(super) _file: Option<ScratchFile>,
}

impl Drop for MatrixState {
    fn drop(&mut self) {
        if let (Some(ring), true) = (&self.ring, self.registered) {
            let _ = io_uring_register(ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0);
        }
    }
}

/// One combination of backing, sharing, permissions and syscall, judged by
/// the reference model (and by a fixed expectation where every kernel
/// agrees).
pub(super) struct Matrix {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) buffer: BufferSpec,
    pub(super) syscall: reference::Syscall,
    pub(super) path: ExpectedPath,
    pub(super) errno: Option<i32>,
    pub(super) dir: PathBuf,
    pub(super) state: Option<MatrixState>,
    pub(super) observed: Option<i32>,
}

impl Matrix {
    pub(super) fn bytes(&self) -> usize {
        self.buffer.pages as usize * page_size()
    }

    pub(super) fn syscall_name(&self) -> &'static str {
        use reference::Syscall as S;
        match self.syscall {
            S::ProcessVmReadv => "process_vm_readv",
            S::ProcessVmWritev => "process_vm_writev",
            S::IoUringRegister | S::IoUringUnregister | S::IoUringRegisterThenRelease => REGISTER,
            S::DirectIoWrite => "pwrite(O_DIRECT)",
            S::DirectIoRead => "pread(O_DIRECT)",
        }
    }

    /// Maps the buffer as the spec says (read-write for now).
    pub(super) fn map(&self) -> Result<(RawMapping, Option<OwnedFd>, Option<ScratchFile>), ScenarioError> {
        let name = self.name;
        let b = &self.buffer;
        let used = self.bytes();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let share = if b.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        let unreachable = |reason: String| ScenarioError::NotReachable { scenario: name, reason };
        let (len, ptr, memfd, file) = match b.backing {
            reference::Backing::Anon => {
                let ptr = mmap_new(used, rw, share | libc::MAP_ANONYMOUS, None).map_err(|e| sys_err(name, "mmap", e))?;
                (used, ptr, None, None)
            }
            reference::Backing::Shmem => {
                // SAFETY: a NUL-terminated name; no memory is handed over.
                let rc = unsafe { libc::memfd_create(c"gupwatch".as_ptr(), libc::MFD_CLOEXEC) };
                let fd = owned_fd(name, "memfd_create", rc as libc::c_long)?;
                ftruncate(name, &fd, used)?;
                // SAFETY: `fd` is an open memfd; mmap_new borrows it for the call only.
                let f = unsafe { File::from_raw_fd(fd.as_raw_fd()) };
                let r = mmap_new(used, rw, share, Some(&f));
                std::mem::forget(f);
                (used, r.map_err(|e| sys_err(name, "mmap(memfd)", e))?, Some(fd), None)
            }
            reference::Backing::File => {
                if let Some(fs) = emulated_direct_io_fs(name, &self.dir)? {
                    return Err(unreachable(format!(
                        "the scratch directory {} is on {fs}, whose files are shmem: a file-backed scenario needs a filesystem that writes dirty pages back (ext4, xfs)",
                        self.dir.display()
                    )));
                }
                let scratch = ScratchFile::create(name, &self.dir, used, SEED_SOURCE)?;
                let f = OpenOptions::new().read(true).write(true).open(&scratch.path).map_err(|e| sys_err(name, "open", e))?;
                let ptr = mmap_new(used, rw, share, Some(&f)).map_err(|e| sys_err(name, "mmap(file)", e))?;
                (used, ptr, None, Some(scratch))
            }
            reference::Backing::Hugetlb => {
                let free = free_huge_pages();
                if free.unwrap_or(0) == 0 {
                    return Err(unreachable(format!(
                        "no free huge page (HugePages_Free: {} in /proc/meminfo): set vm.nr_hugepages, or boot with hugepages=N (in the VM: GUPWATCH_VM_APPEND=hugepages=2)",
                        free.map_or("missing".to_string(), |n| n.to_string())
                    )));
                }
                let ptr = mmap_new(HUGE_PAGE_BYTES, rw, share | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB, None)
                    .map_err(|e| unreachable(format!("mmap(MAP_HUGETLB) of 2 MiB failed: {e}")))?;
                (HUGE_PAGE_BYTES, ptr, None, None)
            }
            reference::Backing::Secretmem => {
                // SAFETY: memfd_secret takes flags only.
                let rc = unsafe { libc::syscall(SYS_MEMFD_SECRET, 0 as libc::c_uint) };
                let fd = match owned_fd(name, "memfd_secret", rc) {
                    Ok(fd) => fd,
                    Err(e) if matches!(e.errno(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                        return Err(unreachable(format!(
                            "memfd_secret is not available ({}): the kernel lacks CONFIG_SECRETMEM or, before 6.5, was booted without secretmem.enable=1",
                            io::Error::from_raw_os_error(e.errno().unwrap_or(0))
                        )))
                    }
                    Err(e) => return Err(e),
                };
                ftruncate(name, &fd, used)?;
                // SAFETY: as for the memfd.
                let f = unsafe { File::from_raw_fd(fd.as_raw_fd()) };
                let r = mmap_new(used, rw, libc::MAP_SHARED, Some(&f));
                std::mem::forget(f);
                (used, r.map_err(|e| sys_err(name, "mmap(memfd_secret)", e))?, Some(fd), None)
            }
            reference::Backing::Pfnmap => {
                return Err(unreachable("PFN maps are covered by io_uring_register_pfnmap".into()));
            }
        };
        let m = RawMapping { ptr, len, used };
        if b.backing != reference::Backing::Hugetlb {
            // SAFETY: advice on this mapping only; harmless if refused.
            unsafe { libc::madvise(m.ptr.as_ptr().cast(), m.len, libc::MADV_NOHUGEPAGE) };
        }
        Ok((m, memfd, file))
    }
}

impl Scenario for Matrix {
    /// Subsystem and LONGTERM follow from the syscall's pin path; a row
    /// that must fail pins nothing.
    fn spec(&self) -> Spec {
        use reference::Syscall as S;
        let pin_path = match self.syscall {
            S::ProcessVmReadv | S::ProcessVmWritev => PinPath::ProcessVm,
            S::IoUringRegister | S::IoUringRegisterThenRelease => PinPath::IoUringRegister,
            S::IoUringUnregister => PinPath::IoUringUnregister,
            S::DirectIoWrite | S::DirectIoRead => PinPath::DirectIo,
        };
        Spec {
            name: self.name,
            description: self.description,
            pin_path,
            pages: if self.errno.is_some() { 0 } else { self.buffer.pages },
            expectation: Expectation::of(pin_path, self.path, self.errno),
        }
    }

    fn observed_errno(&self) -> Option<i32> {
        self.observed
    }

    fn reference_setup(&self) -> Option<reference::Setup> {
        Some(reference::Setup { buffer: self.buffer.clone(), syscall: self.syscall, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.buf.ptr.as_ptr() as usize, st.buf.used))
    }

    /// Maps and pre-faults the buffer, protects it, sets up the syscall's
    /// other side (ring, O_DIRECT file, local buffer), and forks the
    /// sharing child last. Fails with [`ScenarioError::NotReachable`] when
    /// the machine lacks the backing (no free huge page, no memfd_secret).
    fn prepare(&mut self) -> Result<(), ScenarioError> {
        use reference::Syscall as S;
        self.state = None;
        self.observed = None;
        let name = self.name;
        let direct_io = matches!(self.syscall, S::DirectIoWrite | S::DirectIoRead);
        if direct_io {
            if let Some(fs) = emulated_direct_io_fs(name, &self.dir)? {
                return Err(ScenarioError::EmulatedDirectIo { scenario: name, dir: self.dir.clone(), fs });
            }
        }
        let (mut buf, memfd, file) = self.map()?;
        buf.prefault(self.buffer.prefault);
        buf.protect(name, self.buffer.prot)?;
        let local = match self.syscall {
            S::ProcessVmReadv | S::ProcessVmWritev => Some(Mapping::new_prefaulted(name, self.bytes(), SEED_DEST)?),
            _ => None,
        };
        let ring = match self.syscall {
            S::IoUringRegister | S::IoUringUnregister | S::IoUringRegisterThenRelease => {
                Some(io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(name, "io_uring_setup", e))?)
            }
            _ => None,
        };
        let dio = match self.syscall {
            S::DirectIoWrite | S::DirectIoRead => {
                let scratch = ScratchFile::create(name, &self.dir, self.bytes(), SEED_DEST)?;
                let f = scratch.open_direct(name, self.syscall == S::DirectIoWrite)?;
                Some((f, scratch))
            }
            _ => None,
        };
        let child = if self.buffer.shared_with_child { Some(SharingChild::spawn(name)?) } else { None };
        self.state = Some(MatrixState { child, ring, registered: false, dio, local, buf, _memfd: memfd, _file: file });
        Ok(())
    }

    /// Makes the syscall once. An errno is recorded for the checker to judge
    /// (the model says which one each kernel returns), unless it means the
    /// host does not support the syscall at all.
    fn run(&mut self) -> Result<(), ScenarioError> {
        use reference::Syscall as S;
        let name = self.name;
        let syscall = self.syscall_name();
        let bytes = self.bytes();
        let st = prepared(&mut self.state, name)?;
        if st.registered {
            return Err(sequence(name, "run", "twice without prepare() (buffer already registered)"));
        }
        self.observed = None;
        let iov = st.buf.iovec();
        let res: io::Result<usize> = match self.syscall {
            S::ProcessVmReadv | S::ProcessVmWritev => {
                let dir = if self.syscall == S::ProcessVmReadv { Direction::Read } else { Direction::Write };
                let local = st.local.as_ref().expect("prepared").iovec();
                process_vm(dir, local, iov)
            }
            S::IoUringRegister | S::IoUringUnregister | S::IoUringRegisterThenRelease => {
                let ring = st.ring.as_ref().expect("prepared");
                let r = io_uring_register(ring, IORING_REGISTER_BUFFERS, (&iov as *const libc::iovec).cast(), 1);
                if r.is_ok() {
                    st.registered = true;
                }
                r.map(|()| bytes)
            }
            S::DirectIoWrite | S::DirectIoRead => {
                let (f, _) = st.dio.as_ref().expect("prepared");
                // SAFETY: `iov` is the live buffer of `st`, which no Rust
                // reference aliases; the kernel checks the range.
                let n = unsafe {
                    if self.syscall == S::DirectIoWrite {
                        libc::pwrite(f.as_raw_fd(), iov.iov_base, iov.iov_len, 0)
                    } else {
                        libc::pread(f.as_raw_fd(), iov.iov_base, iov.iov_len, 0)
                    }
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }
        };
        match res {
            Ok(n) if n == bytes => Ok(()),
            Ok(n) => Err(ScenarioError::ShortTransfer { scenario: name, syscall, expected: bytes, got: n }),
            Err(e) => {
                let errno = e.raw_os_error();
                let err = sys_err(name, syscall, e);
                // EOPNOTSUPP from IORING_REGISTER_BUFFERS is io_uring
                // refusing a file-backed buffer (before 6.5), an outcome
                // the model predicts, not a missing feature.
                if err.is_unsupported() && errno != Some(libc::EOPNOTSUPP) {
                    return Err(err);
                }
                self.observed = errno;
                Ok(())
            }
        }
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name;
        let Some(mut st) = self.state.take() else {
            return Ok(());
        };
        let mut res = Ok(());
        if let (Some(ring), true) = (&st.ring, st.registered) {
            res = io_uring_register(ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0).map_err(|e| sys_err(name, UNREGISTER, e));
            st.registered = false;
        }
        let reaped = st.child.take().map_or(Ok(()), |mut c| c.reap());
        drop(st);
        res.and(reaped)
    }
}

/// Makes one matrix scenario: name, description, buffer, syscall, expected
/// path and errno (see [`matrix`]).
type MakeMatrix<'a> = dyn Fn(&'static str, &'static str, BufferSpec, reference::Syscall, ExpectedPath, Option<i32>) -> Box<dyn Scenario> + 'a;
/// Makes a matrix buffer: backing, shared, protection, prefault, shared
/// with a forked child.
type MakeBuffer<'a> = dyn Fn(reference::Backing, bool, Prot, Prefault, bool) -> BufferSpec + 'a;

/// The matrix scenarios: every combination of backing, sharing and
/// permissions that an ordinary syscall can pin, each judged by the
/// reference model. Direct I/O and ext4 files go in `scratch_dir`.
pub(super) fn matrix(scratch_dir: &Path) -> Vec<Box<dyn Scenario>> {
    let pages = buffer_pages();
    let spec: &MakeBuffer = &|backing, shared, prot, prefault, shared_with_child| BufferSpec { pages, backing, shared, prot, prefault, shared_with_child };
    let m: &MakeMatrix = &|name, description, buffer, syscall, path, errno| {
        Box::new(Matrix { name, description, buffer, syscall, path, errno, dir: scratch_dir.to_path_buf(), state: None, observed: None })
    };
    let mut all = io_uring_rows(m, spec);
    all.extend(process_vm_rows(m, spec));
    all.extend(direct_io_rows(m, spec));
    all
}

/// The io_uring buffer registrations of the matrix.
fn io_uring_rows(m: &MakeMatrix, spec: &MakeBuffer) -> Vec<Box<dyn Scenario>> {
    use reference::{Backing as B, Syscall as S};
    let rw = Prot::ReadWrite;
    let efault = Some(libc::EFAULT);
    vec![
        m(
            "io_uring_register_memfd_shared",
            "IORING_REGISTER_BUFFERS of 1 MiB of a memfd mapped MAP_SHARED and written: shmem needs no dirty tracking, so the LONGTERM write pin is allowed",
            spec(B::Shmem, true, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::Any,
            None,
        ),
        m(
            "io_uring_register_memfd_private",
            "IORING_REGISTER_BUFFERS of 1 MiB of a memfd mapped MAP_PRIVATE and written (anonymous COW copies): allowed",
            spec(B::Shmem, false, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::Any,
            None,
        ),
        m(
            "io_uring_register_file_shared",
            "IORING_REGISTER_BUFFERS of 1 MiB of an ext4 file mapped MAP_SHARED and written: 6.5+ GUP refuses the LONGTERM write pin (EFAULT, after one transient fast-path pin); 6.1 pins it and io_uring refuses the file (EOPNOTSUPP)",
            spec(B::File, true, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::Reference,
            None,
        ),
        m(
            "io_uring_register_file_private",
            "IORING_REGISTER_BUFFERS of 1 MiB of an ext4 file mapped MAP_PRIVATE and written (anonymous COW copies): 6.5+ pins them on the fast path; 6.1 pins them and io_uring refuses the file (EOPNOTSUPP)",
            spec(B::File, false, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::Reference,
            None,
        ),
        m(
            "io_uring_register_file_private_read",
            "IORING_REGISTER_BUFFERS of 1 MiB of an ext4 file mapped MAP_PRIVATE and only read: the write pin breaks COW on the slow path (6.1: then EOPNOTSUPP)",
            spec(B::File, false, rw, Prefault::Read, false),
            S::IoUringRegister,
            ExpectedPath::Reference,
            None,
        ),
        m(
            "io_uring_register_read_only",
            "IORING_REGISTER_BUFFERS of 1 MiB of written anonymous memory made PROT_READ: a write pin of a VMA without VM_WRITE fails with EFAULT, nothing pinned",
            spec(B::Anon, false, Prot::ReadOnly, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::None,
            efault,
        ),
        m(
            "io_uring_register_secretmem",
            "IORING_REGISTER_BUFFERS of 1 MiB of memfd_secret memory: GUP refuses secretmem (EFAULT; the fast walk grabs and drops one page first)",
            spec(B::Secretmem, true, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::None,
            efault,
        ),
        m(
            "io_uring_register_hugetlb",
            "IORING_REGISTER_BUFFERS of the first 1 MiB of a written 2 MiB MAP_HUGETLB page: pinned; io_uring with buffer coalescing keeps one pin per huge folio (needs a free huge page)",
            spec(B::Hugetlb, false, rw, Prefault::Write, false),
            S::IoUringRegister,
            ExpectedPath::Any,
            None,
        ),
    ]
}

/// The process_vm_readv/writev pins of the matrix.
fn process_vm_rows(m: &MakeMatrix, spec: &MakeBuffer) -> Vec<Box<dyn Scenario>> {
    use reference::{Backing as B, Syscall as S};
    let rw = Prot::ReadWrite;
    let efault = Some(libc::EFAULT);
    vec![
        m(
            "process_vm_readv_file_shared",
            "process_vm_readv of 1 MiB from an ext4 file mapped MAP_SHARED: short-term read-only pins of page cache pages",
            spec(B::File, true, rw, Prefault::Write, false),
            S::ProcessVmReadv,
            ExpectedPath::Slow,
            None,
        ),
        m(
            "process_vm_writev_file_shared",
            "process_vm_writev of 1 MiB into an ext4 file mapped MAP_SHARED and only read: short-term write pins (allowed, not LONGTERM) after write faults",
            spec(B::File, true, rw, Prefault::Read, false),
            S::ProcessVmWritev,
            ExpectedPath::Slow,
            None,
        ),
        m(
            "process_vm_readv_after_fork",
            "process_vm_readv of 1 MiB of anonymous memory shared with a forked child: the slow path unshares (copies) each page before its read-only pin, without a transient pin",
            spec(B::Anon, false, rw, Prefault::Write, true),
            S::ProcessVmReadv,
            ExpectedPath::Slow,
            None,
        ),
        m(
            "process_vm_writev_read_only",
            "process_vm_writev of 1 MiB into written anonymous memory made PROT_READ: a write pin of a VMA without VM_WRITE fails with EFAULT",
            spec(B::Anon, false, Prot::ReadOnly, Prefault::Write, false),
            S::ProcessVmWritev,
            ExpectedPath::None,
            efault,
        ),
    ]
}

/// The direct I/O pins of the matrix.
fn direct_io_rows(m: &MakeMatrix, spec: &MakeBuffer) -> Vec<Box<dyn Scenario>> {
    use reference::{Backing as B, Syscall as S};
    let rw = Prot::ReadWrite;
    vec![
        m(
            "direct_io_write_memfd_shared",
            "O_DIRECT pwrite of 1 MiB from a memfd mapped MAP_SHARED: read-only short-term pins of shmem pages on the fast path",
            spec(B::Shmem, true, rw, Prefault::Write, false),
            S::DirectIoWrite,
            ExpectedPath::Fast,
            None,
        ),
        m(
            "direct_io_read_file_private",
            "O_DIRECT pread of 1 MiB into an ext4 file mapped MAP_PRIVATE and only read: the write pins break COW on the slow path",
            spec(B::File, false, rw, Prefault::Read, false),
            S::DirectIoRead,
            ExpectedPath::Slow,
            None,
        ),
    ]
}
