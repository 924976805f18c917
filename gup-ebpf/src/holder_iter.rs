//! The holder iterator (`iter/task_file`): the live descriptors whose open
//! file is one of the objects user space asks about (`HOLDER_FILES`), as
//! [`HolderRecord`]s written to the iterator's output. It names the holders
//! of character-device objects (an RDMA verbs context, a VFIO container),
//! whose inode, shared by every opener, says nothing about which open file
//! keeps the pins (`gup_common::object`). User space fills the map and
//! reads the iterator only when such an object's creator has exited.
//!
//! The context is `struct bpf_iter__task_file { meta*, task*, u32 fd
//! (8-aligned), file* }`. `meta` and `meta->seq` are loaded directly, as the
//! verifier wants a trusted `seq_file` for `bpf_seq_write`; `task`, `fd`
//! and `file` are copied with `bpf_probe_read_kernel`, which leaves plain
//! numbers (no pointer arithmetic on a maybe-null pointer to check).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_probe_read_kernel, bpf_seq_write},
};
use gup_common::object::HolderRecord;

use crate::maps::{HOLDER_FILES, OBJECT_LAYOUT};

/// Offsets in `struct bpf_iter__task_file` (every member 8-aligned).
const CTX_TASK: usize = 8;
const CTX_FD: usize = 16;
const CTX_FILE: usize = 24;

#[inline(always)]
fn read_at<T>(addr: u64) -> Option<T> {
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// One (task, fd, file) of the walk: a record when the file is wanted.
#[no_mangle]
#[link_section = "iter/task_file"]
pub extern "C" fn holder_files(ctx: *mut c_void) -> i32 {
    let _ = visit(ctx);
    0
}

#[inline(always)]
fn visit(ctx: *mut c_void) -> Option<()> {
    let base = ctx as u64;
    let file: u64 = read_at(base + CTX_FILE as u64)?;
    let task: u64 = read_at(base + CTX_TASK as u64)?;
    if file == 0 || task == 0 {
        // The walk's last call (from seq_stop) has neither.
        return None;
    }
    // SAFETY: a map lookup; the value is only tested for presence.
    unsafe { HOLDER_FILES.get(&file) }?;
    // SAFETY: a plain read of a field of a global.
    let tgid_off = unsafe { core::ptr::read_volatile(&OBJECT_LAYOUT.task_tgid) };
    if tgid_off == 0 {
        return None;
    }
    let tgid: i32 = read_at(task + tgid_off)?;
    let fd: u32 = read_at(base + CTX_FD as u64)?;
    let rec = HolderRecord { tgid: tgid as u32, fd, file };
    // SAFETY: `ctx` points at the iterator's context, whose first member
    // is the trusted `struct bpf_iter_meta *`, and `meta->seq` its first;
    // both direct loads, so the verifier keeps their BTF types.
    unsafe {
        let meta = core::ptr::read_volatile(ctx as *const *const *mut seq_file);
        let seq = core::ptr::read_volatile(meta);
        bpf_seq_write(seq, &rec as *const HolderRecord as *const c_void, HolderRecord::SIZE as u32);
    }
    Some(())
}
