//! Fixed-kind pinning loops for benchmarks (`gupwatch bench-workload`):
//! one operation repeated for a while, reported as operations per second,
//! so runs with and without gupwatch attached can be compared.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::check::scenarios::{self, Scenario, ScenarioError};

/// Which operation to repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum BenchKind {
    /// Register and unregister a 1 MiB io_uring fixed buffer.
    IoUring,
    /// process_vm_readv of 1 MiB.
    ProcessVm,
    /// 4 KiB O_DIRECT reads.
    Odirect,
}

/// The result of a loop.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct BenchResult {
    /// What ran.
    pub kind: BenchKind,
    /// Operations completed.
    pub ops: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
}

/// Errors of a benchmark loop.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A scenario step failed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The O_DIRECT file could not be set up or read.
    #[error("O_DIRECT benchmark in {dir}: {source}. Point --scratch at ext4 or xfs")]
    Io {
        /// Scratch directory.
        dir: String,
        /// The error.
        source: std::io::Error,
    },
}

fn scenario(scratch: &Path, name: &str) -> Box<dyn Scenario> {
    scenarios::builtin(scratch)
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("built-in scenario {name} exists"))
}

/// Repeats `kind` for `duration` (or until `stop`). O_DIRECT reads go to
/// `device` when given (a block device such as a memory-backed
/// `/dev/nullb0`, so no filesystem and no device wait enter the loop),
/// else to a file in `scratch`.
pub fn run(
    kind: BenchKind,
    scratch: &Path,
    device: Option<&Path>,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<BenchResult, BenchError> {
    let t0 = Instant::now();
    let mut ops = 0u64;
    let running = |ops: u64| ops == 0 || (t0.elapsed() < duration && !stop.load(Ordering::Relaxed));
    match kind {
        BenchKind::IoUring => {
            // The unregister scenario's prepare registers; its run
            // unregisters: one register + unregister pair per operation.
            let mut s = scenario(scratch, "io_uring_unregister_buffers");
            while running(ops) {
                s.prepare()?;
                s.run()?;
                s.cleanup()?;
                ops += 1;
            }
        }
        BenchKind::ProcessVm => {
            let mut s = scenario(scratch, "process_vm_readv");
            s.prepare()?;
            while running(ops) {
                s.run()?;
                ops += 1;
            }
            s.cleanup()?;
        }
        BenchKind::Odirect => ops = odirect(scratch, device, &running)?,
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BenchResult { kind, ops, seconds, ops_per_sec: ops as f64 / seconds.max(1e-9) })
}

fn odirect(scratch: &Path, device: Option<&Path>, running: &dyn Fn(u64) -> bool) -> Result<u64, BenchError> {
    use std::os::unix::{fs::OpenOptionsExt, io::AsRawFd};
    let dir = device.unwrap_or(scratch);
    let err = |source| BenchError::Io { dir: dir.display().to_string(), source };
    let file = match device {
        Some(dev) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(dev)
                .map_err(err)?;
            // Fill the 1 MiB the loop reads, so a memory-backed device
            // copies real pages instead of zero-filling holes.
            fill_direct(file.as_raw_fd()).map_err(err)?;
            file
        }
        None => {
            let path = scratch.join(format!("gupwatch-bench-{}", std::process::id()));
            std::fs::write(&path, vec![0x5au8; 1 << 20]).map_err(err)?;
            let file =
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path).map_err(err)?;
            let _ = std::fs::remove_file(&path);
            file
        }
    };
    // An aligned 4 KiB buffer: O_DIRECT needs block-aligned memory.
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("valid layout");
    // SAFETY: non-zero size; freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    if buf.is_null() {
        return Err(err(std::io::Error::from(std::io::ErrorKind::OutOfMemory)));
    }
    let mut ops = 0u64;
    let mut result = Ok(());
    while running(ops) {
        let off = ((ops % 256) * 4096) as libc::off_t;
        // SAFETY: buf is 4096 writable bytes; fd is open.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.cast(), 4096, off) };
        if n != 4096 {
            result = Err(err(std::io::Error::last_os_error()));
            break;
        }
        ops += 1;
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    result.map(|()| ops)
}

/// Writes 1 MiB of a fixed pattern at offset 0 of an O_DIRECT descriptor.
fn fill_direct(fd: libc::c_int) -> std::io::Result<()> {
    const LEN: usize = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(LEN, 4096).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: non-zero size; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(std::io::ErrorKind::OutOfMemory.into());
    }
    // SAFETY: buf is LEN writable bytes.
    unsafe { std::ptr::write_bytes(buf, 0x5a, LEN) };
    // SAFETY: buf is LEN readable bytes; fd is open.
    let n = unsafe { libc::pwrite(fd, buf.cast(), LEN, 0) };
    let res = if n == LEN as isize { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    res
}

/// Run statistics of one loaded BPF program (`kernel.bpf_stats_enabled`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProgStat {
    /// Kernel program id (stable while the program stays loaded).
    pub id: u32,
    /// The program's name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    /// What it hooks, when the name follows gupwatch's `fe_N`/`fx_N`/`kp_N`/`kr_N`
    /// pattern: `fentry pin_user_pages_fast` and so on; else the name.
    pub hook: String,
    /// Runs since load.
    pub run_cnt: u64,
    /// Time spent in it since load, in ns (instructions under `-icount shift=0`).
    pub run_time_ns: u64,
}

/// Errors reading the loaded programs.
#[derive(Debug, thiserror::Error)]
#[error("listing loaded BPF programs (needs CAP_SYS_ADMIN): {0}")]
pub struct ProgStatError(#[from] aya::programs::ProgramError);

/// The hooked function of a gupwatch program name (`fe_3` ->
/// `fentry pin_user_pages_remote`), or the name itself.
pub fn hook_of(name: &str) -> String {
    let Some((prefix, idx)) = name.split_once('_') else { return name.to_string() };
    let kind = match prefix {
        "fe" => "fentry",
        "fx" => "fexit",
        "kp" => "kprobe",
        "kr" => "kretprobe",
        _ => return name.to_string(),
    };
    match idx.parse().ok().and_then(gup_common::Api::from_index) {
        Some(api) => format!("{kind} {}", api.symbol()),
        None => name.to_string(),
    }
}

/// Every loaded BPF program with its run statistics, read through
/// `BPF_PROG_GET_NEXT_ID` and `BPF_OBJ_GET_INFO_BY_FD` (no bpftool in the
/// guest). The counters only move while `kernel.bpf_stats_enabled` is 1.
pub fn prog_stats() -> Result<Vec<ProgStat>, ProgStatError> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        let name = info.name_as_str().unwrap_or("").to_string();
        out.push(ProgStat {
            id: info.id(),
            hook: hook_of(&name),
            name,
            run_cnt: info.run_count(),
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_named_from_program_names() {
        for (program, hook) in [
            ("fe_1", "fentry pin_user_pages_fast"),
            ("kr_3", "kretprobe pin_user_pages_remote"),
            ("sched_process_exit", "sched_process_exit"),
            ("fe_999", "fe_999"),
            ("xx_1", "xx_1"),
        ] {
            assert_eq!(hook_of(program), hook, "{program}");
        }
    }
}
