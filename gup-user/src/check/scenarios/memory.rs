//! The memory the scenarios hand the kernel: anonymous mappings (pre-faulted
//! or untouched), untouchable ones (PROT_NONE, device memory), raw mappings
//! of any backing, and scratch files for direct I/O.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};


use super::*;

/// The page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

/// Base pages in one scenario buffer.
pub(super) fn buffer_pages() -> u64 {
    (BUFFER_BYTES / page_size()) as u64
}

/// The pattern seed of a copy's source side (what the kernel reads).
pub(super) const SEED_SOURCE: u8 = 0x5a;
/// The pattern seed of a copy's destination before the copy.
pub(super) const SEED_DEST: u8 = 0xc3;

/// The byte at `offset` of a buffer filled with `seed`: differs between
/// neighbouring pages and between seeds, so a wrong page shows up.
pub(super) fn pattern_byte(seed: u8, offset: usize) -> u8 {
    ((offset % 251) as u8) ^ seed.rotate_left((offset / 4096 % 8) as u32)
}

/// First offset where `data` is not the `seed` pattern.
pub(super) fn first_mismatch(data: &[u8], seed: u8) -> Option<usize> {
    data.iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(seed, i))
}

/// Checks that the kernel copied the source pattern into `data` (the
/// destination of `syscall`): a mismatch is [`ScenarioError::Corrupted`].
pub(super) fn verify_copy(scenario: &'static str, syscall: &'static str, data: &[u8]) -> Result<(), ScenarioError> {
    match first_mismatch(data, SEED_SOURCE) {
        Some(offset) => Err(ScenarioError::Corrupted { scenario, syscall, offset }),
        None => Ok(()),
    }
}

/// An anonymous private mapping, unmapped on drop.
pub(super) struct Mapping {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

// SAFETY: the mapping is owned exclusively by this value (no aliases escape
// except as raw addresses handed to the kernel while `&self` is borrowed), so
// moving it to another thread is as safe as moving a Vec<u8>.
unsafe impl Send for Mapping {}

/// A fresh mapping of `len` bytes at an address of the kernel's choosing:
/// anonymous when `file` is `None`. The caller owns it and must unmap it.
pub(super) fn mmap_new(
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    file: Option<&File>,
) -> io::Result<NonNull<u8>> {
    let fd = file.map_or(-1, |f| f.as_raw_fd());
    // SAFETY: a new mapping at an address of the kernel's choosing (no
    // MAP_FIXED), so no existing memory is affected; `fd` is -1 or an open
    // descriptor borrowed for the call.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Memory whose address the scenarios hand to the kernel as one iovec.
pub(super) trait UserBuffer: Send {
    fn iovec(&self) -> libc::iovec;
}

impl Mapping {
    /// Maps `len` bytes of private anonymous memory, read-write, and opts
    /// out of THP (so every page will be its own small folio), without
    /// touching it: no page is present until something faults one in.
    pub(super) fn new_untouched(scenario: &'static str, len: usize) -> Result<Self, ScenarioError> {
        let ptr = mmap_new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        )
        .map_err(|e| sys_err(scenario, "mmap", e))?;
        let m = Mapping { ptr, len };
        // SAFETY: advice on a range this value owns; MADV_NOHUGEPAGE changes
        // no contents and faults nothing in. Errors (EINVAL without THP
        // support) are harmless.
        unsafe { libc::madvise(m.addr(), len, libc::MADV_NOHUGEPAGE) };
        Ok(m)
    }

    /// As [`new_untouched`](Mapping::new_untouched), then pre-faults every
    /// page by writing the `seed` pattern.
    pub(super) fn new_prefaulted(scenario: &'static str, len: usize, seed: u8) -> Result<Self, ScenarioError> {
        let mut m = Self::new_untouched(scenario, len)?;
        m.fill(seed);
        Ok(m)
    }

    /// Drops every page (MADV_DONTNEED): the mapping is untouched again,
    /// and the next access faults in a fresh zero-filled page.
    pub(super) fn discard(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        // SAFETY: the range is this value's own private anonymous mapping and
        // `&mut self` guarantees no slice into it is alive; MADV_DONTNEED only
        // replaces its contents with zeroes.
        if unsafe { libc::madvise(self.addr(), self.len, libc::MADV_DONTNEED) } != 0 {
            return Err(sys_err(
                scenario,
                "madvise(MADV_DONTNEED)",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub(super) fn addr(&self) -> *mut libc::c_void {
        self.ptr.as_ptr().cast()
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, initialised (anonymous
        // memory is zero-filled), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Writes every byte (so every page is faulted in, writable and dirty).
    pub(super) fn fill(&mut self, seed: u8) {
        for (i, b) in self.as_mut_slice().iter_mut().enumerate() {
            *b = pattern_byte(seed, i);
        }
    }

    pub(super) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.addr(),
            iov_len: self.len,
        }
    }
}

impl UserBuffer for Mapping {
    fn iovec(&self) -> libc::iovec {
        Mapping::iovec(self)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mmap returned; no slice borrowed
        // from it can outlive `self`.
        unsafe { libc::munmap(self.addr(), self.len) };
    }
}

/// A mapping this process must never read or write (PROT_NONE, or device
/// memory): it offers no slice, only its address for the kernel. Unmapped on
/// drop.
pub(super) struct Untouchable {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

// SAFETY: as for Mapping: exclusively owned, never dereferenced by us.
unsafe impl Send for Untouchable {}

impl Untouchable {
    /// `len` bytes of private anonymous memory with PROT_NONE: the VMA has
    /// neither VM_READ nor VM_WRITE, so GUP refuses it (EFAULT).
    pub(super) fn prot_none(scenario: &'static str, len: usize) -> Result<Self, ScenarioError> {
        let ptr = mmap_new(
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        )
        .map_err(|e| sys_err(scenario, "mmap(PROT_NONE)", e))?;
        Ok(Untouchable { ptr, len })
    }

    /// The first `len` bytes of `file`, read-write and shared. For a PCI
    /// `resourceN` file that is device memory mapped with
    /// `io_remap_pfn_range`: a VM_IO | VM_PFNMAP VMA of special PTEs.
    pub(super) fn shared_file(file: &File, len: usize) -> io::Result<Self> {
        let ptr = mmap_new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            Some(file),
        )?;
        Ok(Untouchable { ptr, len })
    }
}

impl UserBuffer for Untouchable {
    fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast(),
            iov_len: self.len,
        }
    }
}

impl Drop for Untouchable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mmap returned; nothing borrows it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A scratch file removed on drop.
pub(super) struct ScratchFile {
    pub(super) path: PathBuf,
}

impl ScratchFile {
    pub(super) fn unique_path(dir: &Path, scenario: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        dir.join(format!(
            ".gupwatch-{scenario}-{}-{n}.tmp",
            std::process::id()
        ))
    }

    /// Creates a file of `len` bytes of the `seed` pattern with buffered
    /// writes, fsyncs it (so its blocks are allocated and written) and drops
    /// its page cache.
    pub(super) fn create(
        scenario: &'static str,
        dir: &Path,
        len: usize,
        seed: u8,
    ) -> Result<Self, ScenarioError> {
        let path = Self::unique_path(dir, scenario);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| sys_err(scenario, "create", e))?;
        let guard = ScratchFile { path };
        let data: Vec<u8> = (0..len).map(|i| pattern_byte(seed, i)).collect();
        file.write_all(&data)
            .map_err(|e| sys_err(scenario, "write", e))?;
        file.sync_all().map_err(|e| sys_err(scenario, "fsync", e))?;
        // SAFETY: plain advice on an open descriptor; no memory involved.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                0,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(sys_err(
                scenario,
                "posix_fadvise",
                io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(guard)
    }

    pub(super) fn open_direct(&self, scenario: &'static str, write: bool) -> Result<File, ScenarioError> {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .map_err(|e| sys_err(scenario, "open(O_DIRECT)", e))
    }

    pub(super) fn remove(self, scenario: &'static str) -> Result<(), ScenarioError> {
        let res = fs::remove_file(&self.path).map_err(|e| sys_err(scenario, "unlink", e));
        std::mem::forget(self);
        res
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
// ---------------------------------------------------------------------------
// The reference model's matrix: backing × sharing × permissions × syscall

/// `memfd_secret(2)` on x86-64 (not in every libc).
pub(super) const SYS_MEMFD_SECRET: libc::c_long = 447;

/// Bytes of one huge page: a hugetlb buffer maps this much and hands the
/// kernel its first [`BUFFER_BYTES`].
pub(super) const HUGE_PAGE_BYTES: usize = 2 << 20;

/// A mapping of any backing, handed to the kernel by address only; this
/// process touches it only through volatile accesses in `prepare`.
/// Unmapped on drop.
pub(super) struct RawMapping {
    pub(super) ptr: NonNull<u8>,
    /// Bytes mapped.
    pub(super) len: usize,
    /// Bytes handed to the kernel (the first ones).
    pub(super) used: usize,
}

// SAFETY: exclusively owned, like Mapping; only raw addresses escape.
unsafe impl Send for RawMapping {}

impl RawMapping {
    /// Reads or writes one byte of every page of the used part.
    pub(super) fn prefault(&mut self, how: Prefault) {
        for off in (0..self.used).step_by(page_size()) {
            // SAFETY: `off` is inside the mapping, which is mapped readable
            // and writable while `prepare` pre-faults it; `&mut self` means
            // no slice aliases it.
            unsafe {
                let p = self.ptr.as_ptr().add(off);
                match how {
                    Prefault::None => {}
                    Prefault::Read => {
                        std::ptr::read_volatile(p);
                    }
                    Prefault::Write => std::ptr::write_volatile(p, pattern_byte(SEED_SOURCE, off)),
                }
            }
        }
    }

    pub(super) fn protect(&self, scenario: &'static str, prot: Prot) -> Result<(), ScenarioError> {
        let p = match prot {
            Prot::ReadWrite => return Ok(()),
            Prot::ReadOnly => libc::PROT_READ,
            Prot::None => libc::PROT_NONE,
        };
        // SAFETY: changes the protection of this value's own mapping; no
        // Rust reference into it exists.
        if unsafe { libc::mprotect(self.ptr.as_ptr().cast(), self.len, p) } != 0 {
            return Err(sys_err(scenario, "mprotect", io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl UserBuffer for RawMapping {
    fn iovec(&self) -> libc::iovec {
        libc::iovec { iov_base: self.ptr.as_ptr().cast(), iov_len: self.used }
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mmap returned; nothing borrows it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Free huge pages, from `/proc/meminfo` (`None` if it does not say).
pub(super) fn free_huge_pages() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A descriptor of an anonymous file from a syscall returning one.
pub(super) fn owned_fd(scenario: &'static str, syscall: &'static str, rc: libc::c_long) -> Result<OwnedFd, ScenarioError> {
    if rc < 0 {
        return Err(sys_err(scenario, syscall, io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

pub(super) fn ftruncate(scenario: &'static str, fd: &OwnedFd, len: usize) -> Result<(), ScenarioError> {
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(sys_err(scenario, "ftruncate", io::Error::last_os_error()));
    }
    Ok(())
}
