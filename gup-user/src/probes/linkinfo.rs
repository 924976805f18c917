//! The kernel's own count of the calls a kprobe or kretprobe let through
//! without running gupwatch's program (`missed` in the perf-event link's
//! info, kernel 6.7+).
//!
//! A program's `recursion_misses` counts the runs the BPF recursion guard
//! skipped. A kprobe can also be missed before any program is asked: a
//! kretprobe has a fixed number of instances (by default max(10, 2 × CPUs)),
//! and a call entered while all are in use gets no exit; a kprobe hit inside
//! another kprobe's handler is not run. The kernel counts those in the
//! probe, and reports them through the link. aya keeps the link descriptors
//! to itself, so the links are found by program id at attach time (which
//! needs CAP_SYS_ADMIN, held then) and a descriptor of each is kept; it
//! must be closed before aya detaches, or the link would stay attached.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `BPF_OBJ_GET_INFO_BY_FD`.
const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_GET_FD_BY_ID`.
const LINK_GET_FD_BY_ID: libc::c_long = 30;
/// `BPF_LINK_GET_NEXT_ID`.
const LINK_GET_NEXT_ID: libc::c_long = 31;
/// `BPF_LINK_TYPE_PERF_EVENT`.
const LINK_TYPE_PERF_EVENT: u32 = 7;
/// `BPF_PERF_EVENT_KPROBE` and `BPF_PERF_EVENT_KRETPROBE`.
const PERF_EVENT_KPROBE: u32 = 3;
const PERF_EVENT_KRETPROBE: u32 = 4;

/// Byte offsets in `struct bpf_link_info` (include/uapi/linux/bpf.h).
const INFO_TYPE: usize = 0;
const INFO_PROG_ID: usize = 8;
const INFO_PERF_EVENT_TYPE: usize = 16;
const INFO_KPROBE_MISSED: usize = 48;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed 128-byte buffer laid out as the command's
    // part of `union bpf_attr`; the kernel reads and writes within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The info of a link, as raw bytes (zero past what this kernel fills in).
fn link_info(fd: BorrowedFd<'_>) -> Option<[u8; 128]> {
    let mut info = [0u8; 128];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    Some(info)
}

fn u32_at(b: &[u8; 128], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8; 128], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(w)
}

/// What a link's info says about a kprobe or kretprobe: `Some(missed)`
/// for a perf-event link of either kind (0 before 6.7, whose info has no
/// such field), `None` for any other link.
pub fn kprobe_missed_of(info: &[u8; 128]) -> Option<u64> {
    let kind = u32_at(info, INFO_PERF_EVENT_TYPE);
    (u32_at(info, INFO_TYPE) == LINK_TYPE_PERF_EVENT && (kind == PERF_EVENT_KPROBE || kind == PERF_EVENT_KRETPROBE))
        .then(|| u64_at(info, INFO_KPROBE_MISSED))
}

/// Opens a descriptor of every link that runs one of `prog_ids`. Errors
/// (no CAP_SYS_ADMIN, a kernel without link ids) give no descriptors: the
/// misses are then not reported, never wrong.
pub fn open_links_of(prog_ids: &[u32]) -> Vec<OwnedFd> {
    let mut out = vec![];
    let mut id = 0u32;
    // Bounded: link ids only grow, and each step moves past one.
    for _ in 0..1_000_000 {
        let mut attr = [0u64; 16];
        attr[0] = id as u64;
        if bpf(LINK_GET_NEXT_ID, &mut attr).is_err() {
            break;
        }
        id = (attr[0] >> 32) as u32;
        let mut attr = [0u64; 16];
        attr[0] = id as u64;
        let Ok(fd) = bpf(LINK_GET_FD_BY_ID, &mut attr) else { continue };
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let ours = link_info(fd.as_fd()).is_some_and(|i| prog_ids.contains(&u32_at(&i, INFO_PROG_ID)));
        if ours {
            out.push(fd);
        }
    }
    out
}

/// The missed count summed over kprobe links (see [`kprobe_missed_of`]).
pub fn missed(links: &[OwnedFd]) -> u64 {
    links.iter().filter_map(|fd| link_info(fd.as_fd())).filter_map(|i| kprobe_missed_of(&i)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(link_type: u32, perf_type: u32, missed: u64) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[INFO_TYPE..INFO_TYPE + 4].copy_from_slice(&link_type.to_ne_bytes());
        b[INFO_PROG_ID..INFO_PROG_ID + 4].copy_from_slice(&41u32.to_ne_bytes());
        b[INFO_PERF_EVENT_TYPE..INFO_PERF_EVENT_TYPE + 4].copy_from_slice(&perf_type.to_ne_bytes());
        b[INFO_KPROBE_MISSED..INFO_KPROBE_MISSED + 8].copy_from_slice(&missed.to_ne_bytes());
        b
    }

    #[test]
    fn only_kprobe_links_report_missed() {
        assert_eq!(kprobe_missed_of(&info(7, 4, 12)), Some(12), "kretprobe");
        assert_eq!(kprobe_missed_of(&info(7, 3, 0)), Some(0), "kprobe");
        assert_eq!(kprobe_missed_of(&info(7, 5, 9)), None, "tracepoint");
        assert_eq!(kprobe_missed_of(&info(2, 4, 9)), None, "a tracing (fentry) link");
    }
}
