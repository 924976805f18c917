//! The kernel object behind a LONGTERM pin: the file the pinning syscall
//! works on (the io_uring ring of `io_uring_register(fd, …)`, the uverbs
//! file of an RDMA `ioctl`/`write`, the VFIO container of its `ioctl`).
//! Whoever has that file open keeps the pins alive, so user space can name
//! the live holders of pins whose creator has exited (`leaks.rs`).
//!
//! The eBPF side reads it once per LONGTERM pin call, never per page: the
//! syscall's number and first argument from the task's saved user
//! registers, then the descriptor through `task->files->fdt->fd[]`, with
//! the offsets the probe plan took from BTF ([`ObjectLayout`]).

/// x86-64 syscalls whose first argument is the descriptor of the object
/// that keeps LONGTERM pins: `write` (uverbs commands), `ioctl` (uverbs,
/// VFIO, iommufd) and `io_uring_register`. Syscall numbers are ABI, the
/// same on every kernel. `io_uring_setup` (ring memory of
/// IORING_SETUP_NO_MMAP) is left out: its ring has no descriptor yet.
pub const OBJECT_SYSCALLS: [u64; 3] = [1, 16, 427];

/// `S_IFMT` and `S_IFCHR` (`i_mode`): a character device's inode is shared
/// by everyone who opens the device, so it cannot tell one open file (one
/// RDMA context, one VFIO container) from another.
pub const S_IFMT: u16 = 0o170000;
/// See [`S_IFMT`].
pub const S_IFCHR: u16 = 0o020000;

/// The object of a pin, as recorded (all zero: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PinObject {
    /// `inode->i_ino` of the file; for a character device, whose inode
    /// every opener shares, the `struct file` itself instead (a kernel
    /// address): the one open file that holds the pins, found among live
    /// descriptors by the holder iterator ([`PinObject::file`]). Kept in
    /// this one field so a pin's record does not grow: on 6.1 the pin
    /// programs' combined stack is at the verifier's 512-byte limit. Used
    /// only inside gupwatch, never exported.
    pub ino: u64,
    /// `inode->i_sb->s_dev`, the kernel's encoding (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// `inode->i_mode`.
    pub mode: u16,
    /// Padding, zero.
    pub _pad: u16,
}

impl PinObject {
    /// No object known.
    pub const NONE: PinObject = PinObject { ino: 0, dev: 0, mode: 0, _pad: 0 };

    /// Whether an object was recorded.
    pub fn is_known(&self) -> bool {
        self.ino != 0
    }

    /// Whether the inode names this one open file: not a character device
    /// (see [`S_IFCHR`]). An io_uring ring gets an inode of its own.
    pub fn identifies_file(&self) -> bool {
        self.is_known() && self.mode & S_IFMT != S_IFCHR
    }

    /// Whether its holders are found by the open file itself (the holder
    /// iterator, `gup-ebpf/src/holder_iter.rs`): a character device, whose
    /// inode names no one open file, with its file recorded.
    pub fn needs_file_lookup(&self) -> bool {
        self.is_known() && !self.identifies_file()
    }

    /// The `struct file` of a character-device object (0 for others).
    pub fn file(&self) -> u64 {
        if self.needs_file_lookup() {
            self.ino
        } else {
            0
        }
    }

    /// The device as (major, minor), from the kernel's encoding.
    pub fn major_minor(&self) -> (u32, u32) {
        (self.dev >> 20, self.dev & 0xf_ffff)
    }
}

/// Offsets (from BTF, by the probe plan) the eBPF side follows from the
/// current task to the file of a descriptor. `task_files == 0` turns the
/// lookup off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ObjectLayout {
    /// Bytes from the top of the task stack down to its saved user
    /// `struct pt_regs`: `sizeof(struct pt_regs)` plus the padding above
    /// it (`TOP_OF_KERNEL_STACK_PADDING`: 16 with FRED, else 0).
    pub regs_below_top: u64,
    /// Offset of `orig_ax` (the syscall number) in `struct pt_regs`.
    pub regs_nr: u64,
    /// Offset of `di` (the first syscall argument) in `struct pt_regs`.
    pub regs_arg0: u64,
    /// `task_struct.files`.
    pub task_files: u64,
    /// `files_struct.fdt`.
    pub files_fdt: u64,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u64,
    /// `fdtable.fd`.
    pub fdt_fd: u64,
    /// `file.f_inode`.
    pub file_inode: u64,
    /// `inode.i_ino`.
    pub inode_ino: u64,
    /// `inode.i_mode`.
    pub inode_mode: u64,
    /// `inode.i_sb`.
    pub inode_sb: u64,
    /// `super_block.s_dev`.
    pub sb_dev: u64,
    /// `task_struct.tgid`, for the holder iterator's records.
    pub task_tgid: u64,
}

impl ObjectLayout {
    /// Lookup off.
    pub const NONE: ObjectLayout = ObjectLayout {
        regs_below_top: 0,
        regs_nr: 0,
        regs_arg0: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_mode: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_tgid: 0,
    };
}

/// Most open files the holder iterator looks for in one run (its
/// `HOLDER_FILES` map): char-device objects whose creator exited are few
/// (one verbs context or VFIO container per exited process at most).
pub const HOLDER_FILES_CAPACITY: u32 = 64;

/// One record of the holder iterator (`iter/task_file`): a live descriptor
/// `fd` of process `tgid` whose open file is one of the wanted ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HolderRecord {
    /// The process (thread group) that has the file open.
    pub tgid: u32,
    /// The descriptor.
    pub fd: u32,
    /// The `struct file` (a kernel address; never exported).
    pub file: u64,
}

impl HolderRecord {
    /// Size of one record in the iterator's output.
    pub const SIZE: usize = core::mem::size_of::<HolderRecord>();

    /// Decodes one record (native endianness, as the program wrote it).
    pub fn from_bytes(b: &[u8]) -> Option<HolderRecord> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&b[8..16]);
        Some(HolderRecord { tgid: u32_at(0), fd: u32_at(4), file: u64::from_ne_bytes(f) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_devices_do_not_identify_a_file() {
        let ring = PinObject { ino: 42, dev: 14, mode: 0o600, _pad: 0 };
        assert!(ring.identifies_file() && !ring.needs_file_lookup() && ring.file() == 0);
        let uverbs = PinObject { ino: 0xffff_8880_0000_2000, dev: 5, mode: S_IFCHR | 0o666, _pad: 0 };
        assert!(uverbs.is_known() && !uverbs.identifies_file() && uverbs.needs_file_lookup());
        assert_eq!(uverbs.file(), 0xffff_8880_0000_2000);
        assert!(!PinObject { ino: 0, ..uverbs }.needs_file_lookup());
        assert!(!PinObject::NONE.identifies_file());
        assert_eq!(PinObject { dev: (231 << 20) | 192, ..ring }.major_minor(), (231, 192));
    }

    #[test]
    fn holder_records_decode_as_written() {
        let r = HolderRecord { tgid: 170, fd: 5, file: 0xffff_8880_1234_5678 };
        // SAFETY: HolderRecord is repr(C) plain data with no padding.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(r) };
        assert_eq!(HolderRecord::from_bytes(&bytes), Some(r));
        assert_eq!(HolderRecord::from_bytes(&bytes[..15]), None);
        assert_eq!(HolderRecord::SIZE, 16);
    }
}
