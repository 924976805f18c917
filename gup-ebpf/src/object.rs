//! The kernel object of a LONGTERM pin call ([`gup_common::object`]): the
//! file of the descriptor the current syscall works on, named by its inode
//! so user space can find who has it open. Run once per LONGTERM pin call
//! (registrations), never per page; every offset comes from the probe plan
//! (`OBJECT_LAYOUT`), and any unreadable step gives no object.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use gup_common::object::{PinObject, OBJECT_SYSCALLS, S_IFCHR, S_IFMT};

use crate::maps::{read_global, OBJECT_LAYOUT, TASK_STACK_OFFSET, TASK_STACK_SIZE};

/// One field of the layout, read as the loader wrote it (volatile, like
/// every global: the compiler must not fold the zero initialiser).
macro_rules! layout {
    ($f:ident) => {
        // SAFETY: a plain read of a field of a global.
        unsafe { core::ptr::read_volatile(&OBJECT_LAYOUT.$f) }
    };
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// The object of the current task's syscall, or [`PinObject::NONE`]: not
/// in a syscall that names its object by its first argument, or the
/// lookup is off (no BTF) or failed.
#[inline(never)]
pub(crate) fn current_object() -> PinObject {
    lookup().unwrap_or(PinObject::NONE)
}

#[inline(always)]
fn lookup() -> Option<PinObject> {
    let files_off = layout!(task_files);
    let stack_off = read_global(&TASK_STACK_OFFSET);
    if files_off == 0 || stack_off == 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // task_pt_regs(): the user registers saved at the top of the task
    // stack, below the padding the plan measured.
    let stack = read_u64(task + stack_off)?;
    let regs = stack + read_global(&TASK_STACK_SIZE) - layout!(regs_below_top);
    let nr = read_u64(regs + layout!(regs_nr))?;
    if nr != OBJECT_SYSCALLS[0] && nr != OBJECT_SYSCALLS[1] && nr != OBJECT_SYSCALLS[2] {
        return None;
    }
    let fd = read_u64(regs + layout!(regs_arg0))? as u32 as u64;
    let files = read_u64(task + files_off)?;
    let fdt = read_u64(files + layout!(files_fdt))?;
    // SAFETY: probe_read tolerates any address.
    let max = unsafe { bpf_probe_read_kernel((fdt + layout!(fdt_max_fds)) as *const u32) }.ok()? as u64;
    if fd >= max {
        return None;
    }
    let fds = read_u64(fdt + layout!(fdt_fd))?;
    let file = read_u64(fds + 8 * fd)?;
    let inode = read_u64(file + layout!(file_inode))?;
    let ino = read_u64(inode + layout!(inode_ino))?;
    // SAFETY: probe_read tolerates any address.
    let mode = unsafe { bpf_probe_read_kernel((inode + layout!(inode_mode)) as *const u16) }.ok()?;
    let sb = read_u64(inode + layout!(inode_sb))?;
    // SAFETY: probe_read tolerates any address.
    let dev = unsafe { bpf_probe_read_kernel((sb + layout!(sb_dev)) as *const u32) }.ok()?;
    // A character device's inode is shared by every opener: the open file
    // itself names the object (`PinObject::ino`).
    let ino = if mode & S_IFMT == S_IFCHR { file } else { ino };
    (file != 0 && ino != 0).then_some(PinObject { ino, dev, mode, _pad: 0 })
}
