//! A minimal io_uring driven through raw syscalls and its mmap'd rings, for
//! the scenarios that need I/O in flight (liburing is not in the guests,
//! and the other io_uring scenarios only register buffers).
//!
//! One submitter thread, no SQPOLL: the submission tail and completion head
//! are ours; the kernel publishes the submission head and completion tail.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{io_uring_register, io_uring_setup_params, IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS};

/// `IORING_OFF_SQ_RING`, `IORING_OFF_CQ_RING`, `IORING_OFF_SQES`
/// (include/uapi/linux/io_uring.h).
const OFF_SQ_RING: libc::off_t = 0;
const OFF_CQ_RING: libc::off_t = 0x800_0000;
const OFF_SQES: libc::off_t = 0x1000_0000;
/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: libc::c_uint = 1;
/// `IORING_OP_READ_FIXED`: read into a registered buffer (no pin per I/O).
pub(super) const OP_READ_FIXED: u8 = 4;
/// `IORING_OP_READ` (5.6+): read into plain user memory, which the block
/// layer pins for the I/O and unpins at completion.
pub(super) const OP_READ: u8 = 22;

/// `struct io_uring_sqe` (64 bytes), the fields a read uses.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub ioprio: u16,
    pub fd: i32,
    pub off: u64,
    pub addr: u64,
    pub len: u32,
    pub rw_flags: u32,
    pub user_data: u64,
    pub buf_index: u16,
    pub personality: u16,
    pub splice_fd_in: i32,
    pub addr3: u64,
    pub pad: u64,
}

const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

/// `struct io_uring_cqe` (16 bytes, without IORING_SETUP_CQE32).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

/// One mmap of the ring descriptor, unmapped on drop.
struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl RingMap {
    fn new(fd: &OwnedFd, len: usize, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the ring's own memory at an
        // address of the kernel's choosing; it replaces nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(RingMap { ptr, len })
    }

    /// The `T` at byte `offset` (inside the mapping, aligned: the kernel's
    /// offsets are).
    fn at<T>(&self, offset: u32) -> *mut T {
        debug_assert!((offset as usize) < self.len);
        // SAFETY: the kernel's offsets lie inside the ring it sized.
        unsafe { self.ptr.as_ptr().add(offset as usize).cast() }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what mmap returned; the raw pointers into
        // it die with the Uring that owns this value.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A ring with its submission and completion queues mapped.
pub(super) struct Uring {
    // Field order is drop order: unmap before closing the descriptor.
    sq: RingMap,
    cq: RingMap,
    sqes: RingMap,
    fd: OwnedFd,
    sq_entries: u32,
    sq_off: [u32; 10],
    cq_off: [u32; 10],
    /// Submissions queued and not yet handed to the kernel.
    pending: u32,
}

// SAFETY: the mappings are owned by this value and used only through
// `&mut self` (or atomics shared with the kernel), like a Vec.
unsafe impl Send for Uring {}

// Indices into io_sqring_offsets / io_cqring_offsets.
const HEAD: usize = 0;
const TAIL: usize = 1;
const RING_MASK: usize = 2;
const SQ_ARRAY: usize = 6;
const CQ_CQES: usize = 5;

impl Uring {
    /// A ring of `entries` submission entries (the kernel gives twice as
    /// many completion entries).
    pub fn new(entries: u32) -> io::Result<Self> {
        let (fd, p) = io_uring_setup_params(entries)?;
        let sq_len = p.sq_off[SQ_ARRAY] as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off[CQ_CQES] as usize + p.cq_entries as usize * std::mem::size_of::<Cqe>();
        let sq = RingMap::new(&fd, sq_len, OFF_SQ_RING)?;
        let cq = RingMap::new(&fd, cq_len, OFF_CQ_RING)?;
        let sqes = RingMap::new(&fd, p.sq_entries as usize * std::mem::size_of::<Sqe>(), OFF_SQES)?;
        Ok(Uring { sq, cq, sqes, fd, sq_entries: p.sq_entries, sq_off: p.sq_off, cq_off: p.cq_off, pending: 0 })
    }

    fn sq_u32(&self, field: usize) -> &AtomicU32 {
        // SAFETY: a 4-byte aligned u32 inside the SQ ring, shared with the
        // kernel, which is exactly what AtomicU32 models.
        unsafe { &*self.sq.at::<AtomicU32>(self.sq_off[field]) }
    }

    fn cq_u32(&self, field: usize) -> &AtomicU32 {
        // SAFETY: as sq_u32, in the CQ ring.
        unsafe { &*self.cq.at::<AtomicU32>(self.cq_off[field]) }
    }

    /// Queues one submission; false when the submission queue is full.
    pub fn push(&mut self, sqe: Sqe) -> bool {
        let tail = self.sq_u32(TAIL).load(Ordering::Relaxed);
        let head = self.sq_u32(HEAD).load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= self.sq_entries {
            return false;
        }
        let mask = self.sq_u32(RING_MASK).load(Ordering::Relaxed);
        let idx = tail & mask;
        // SAFETY: idx < sq_entries, inside the SQE array and the SQ index
        // array; the kernel reads neither slot until the tail moves past it.
        unsafe {
            self.sqes.at::<Sqe>(0).add(idx as usize).write(sqe);
            self.sq.at::<u32>(self.sq_off[SQ_ARRAY]).add(idx as usize).write(idx);
        }
        self.sq_u32(TAIL).store(tail.wrapping_add(1), Ordering::Release);
        self.pending += 1;
        true
    }

    /// Hands the queued submissions to the kernel and waits until at least
    /// `min_complete` completions are there to reap.
    pub fn submit_and_wait(&mut self, min_complete: u32) -> io::Result<()> {
        let mut to_submit = self.pending;
        loop {
            // SAFETY: io_uring_enter on our ring with no signal mask.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd.as_raw_fd(),
                    to_submit,
                    min_complete,
                    ENTER_GETEVENTS,
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                )
            };
            if rc >= 0 {
                let done = rc as u32;
                self.pending -= done.min(self.pending);
                to_submit -= done.min(to_submit);
                if to_submit == 0 {
                    return Ok(());
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The next completion, if one is there.
    pub fn reap(&mut self) -> Option<Cqe> {
        let head = self.cq_u32(HEAD).load(Ordering::Relaxed);
        let tail = self.cq_u32(TAIL).load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let mask = self.cq_u32(RING_MASK).load(Ordering::Relaxed);
        // SAFETY: head != tail, so the kernel has written this CQE and will
        // not touch it until the head moves past it.
        let cqe = unsafe { self.cq.at::<Cqe>(self.cq_off[CQ_CQES]).add((head & mask) as usize).read() };
        self.cq_u32(HEAD).store(head.wrapping_add(1), Ordering::Release);
        Some(cqe)
    }

    /// IORING_REGISTER_BUFFERS of `iovecs` (pinned FOLL_LONGTERM until
    /// unregistered or the ring is torn down).
    pub fn register_buffers(&self, iovecs: &[libc::iovec]) -> io::Result<()> {
        io_uring_register(&self.fd, IORING_REGISTER_BUFFERS, iovecs.as_ptr().cast(), iovecs.len() as libc::c_uint)
    }

    /// IORING_UNREGISTER_BUFFERS: unpins every registered buffer, now.
    pub fn unregister_buffers(&self) -> io::Result<()> {
        io_uring_register(&self.fd, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0)
    }
}
