//! The holder iterator's user side: loads `holder_files`
//! (`gup-ebpf/src/holder_iter.rs`, a `task_file` iterator), and on each
//! run writes the wanted open files into `HOLDER_FILES`, creates an
//! iterator and reads its [`HolderRecord`]s. The kernel walks every task's
//! descriptor table itself, so a character-device object (whose shared
//! inode `/proc/<pid>/fd` cannot tell apart) is found by its `struct file`.

use std::{
    io::Read as _,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{Iter, ProgramError},
    Btf, Ebpf,
};
use gup_common::object::{HolderRecord, HOLDER_FILES_CAPACITY};

/// The program's name in the eBPF object.
pub const PROGRAM: &str = "holder_files";

/// Why the holder iterator is not available or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum IterError {
    /// No BTF id for `bpf_iter_task_file` (no BTF, or a kernel before 5.8).
    #[error("the kernel's BTF has no bpf_iter_task_file (no BTF, or a kernel without BPF task-file iterators)")]
    NoTarget,
    /// The eBPF object lacks the program or its map.
    #[error("gupwatch's eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel refused the program.
    #[error("the kernel refused the task-file iterator: {0}")]
    Refused(String),
    /// A map operation failed.
    #[error("the holder iterator's map: {0}")]
    Map(#[from] MapError),
    /// A bpf() command failed.
    #[error("{call}: {source}")]
    Syscall {
        /// The bpf() command.
        call: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The loaded iterator: its link (each run makes an iterator from it) and
/// the map of wanted files.
pub struct HolderIter {
    link: OwnedFd,
    files: HashMap<MapData, u64, u8>,
}

impl std::fmt::Debug for HolderIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HolderIter").field("link", &self.link.as_raw_fd()).finish_non_exhaustive()
    }
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with an iterator target (no
/// `iter_info`: every task).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_ITER_CREATE`.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// bpf(cmd, attr): a new descriptor, or the error.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T, call: &'static str) -> Result<OwnedFd, IterError> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix of
    // the size passed; the kernel reads at most that many bytes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        return Err(IterError::Syscall { call, source: std::io::Error::last_os_error() });
    }
    // SAFETY: bpf() returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

impl HolderIter {
    /// Loads the program against `bpf_iter_task_file` (found in `btf`,
    /// the loader's BTF of placeholders, when the probe plan found it) and
    /// links it. Failure leaves the holders of character devices unnamed,
    /// nothing else.
    pub(crate) fn load(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<HolderIter, IterError> {
        let btf = btf.ok_or(IterError::NoTarget)?;
        let prog: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or(IterError::Missing("holder_files program"))?
            .try_into()
            .map_err(|e: ProgramError| IterError::Refused(e.to_string()))?;
        prog.load("task_file", btf).map_err(|e| match e {
            ProgramError::Btf(_) => IterError::NoTarget,
            e => IterError::Refused(crate::probes::loader::describe(&e, PROGRAM)),
        })?;
        let prog_fd = prog.fd().map_err(|e| IterError::Refused(e.to_string()))?;
        let mut attr = LinkCreateAttr {
            prog_fd: prog_fd.as_fd().as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            ..Default::default()
        };
        let link = bpf_fd(BPF_LINK_CREATE, &mut attr, "bpf(BPF_LINK_CREATE)")?;
        let map = ebpf.take_map("HOLDER_FILES").ok_or(IterError::Missing("HOLDER_FILES map"))?;
        Ok(HolderIter { link, files: HashMap::try_from(map)? })
    }

    /// The live descriptors of `files` (at most [`HOLDER_FILES_CAPACITY`]
    /// are looked for; the rest are left out), one record per (process,
    /// descriptor).
    pub fn run(&mut self, files: &[u64]) -> Result<Vec<HolderRecord>, IterError> {
        let stale: Vec<u64> = self.files.keys().filter_map(Result::ok).collect();
        for k in stale {
            self.files.remove(&k)?;
        }
        for f in files.iter().take(HOLDER_FILES_CAPACITY as usize) {
            self.files.insert(f, 1, 0)?;
        }
        let mut attr = IterCreateAttr { link_fd: self.link.as_raw_fd() as u32, flags: 0 };
        let fd = bpf_fd(BPF_ITER_CREATE, &mut attr, "bpf(BPF_ITER_CREATE)")?;
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut out)
            .map_err(|source| IterError::Syscall { call: "read of the holder iterator", source })?;
        Ok(decode(&out))
    }
}

/// The records of an iterator's output (a partial record at the end is
/// dropped).
pub fn decode(bytes: &[u8]) -> Vec<HolderRecord> {
    bytes.chunks_exact(HolderRecord::SIZE).filter_map(HolderRecord::from_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_have_the_kernel_layout() {
        // link_create: prog_fd, target_fd, attach_type, flags, then the
        // 8-aligned iter_info pointer and its length.
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 32);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, iter_info), 16);
        assert_eq!(std::mem::size_of::<IterCreateAttr>(), 8);
    }

    #[test]
    fn output_decodes_whole_records_only() {
        let mut bytes = vec![];
        for (tgid, fd, file) in [(10u32, 3u32, 0xffff_8880_0000_1000u64), (11, 7, 0xffff_8880_0000_2000)] {
            bytes.extend(tgid.to_ne_bytes());
            bytes.extend(fd.to_ne_bytes());
            bytes.extend(file.to_ne_bytes());
        }
        bytes.extend([1, 2, 3]);
        let recs = decode(&bytes);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[1].tgid, recs[1].fd, recs[1].file), (11, 7, 0xffff_8880_0000_2000));
    }
}
