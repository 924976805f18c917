//! Fixed-kind pinning loops for benchmarks (`gupwatch bench-workload`):
//! one operation repeated for a while, reported as operations per second,
//! so runs with and without gupwatch attached can be compared.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::scenarios::{self, Scenario, ScenarioError};

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

/// Repeats `kind` for `duration` (or until `stop`).
pub fn run(kind: BenchKind, scratch: &Path, duration: Duration, stop: &AtomicBool) -> Result<BenchResult, BenchError> {
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
        BenchKind::Odirect => ops = odirect(scratch, &running)?,
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BenchResult { kind, ops, seconds, ops_per_sec: ops as f64 / seconds.max(1e-9) })
}

fn odirect(scratch: &Path, running: &dyn Fn(u64) -> bool) -> Result<u64, BenchError> {
    use std::os::unix::{fs::OpenOptionsExt, io::AsRawFd};
    let err = |source| BenchError::Io { dir: scratch.display().to_string(), source };
    let path = scratch.join(format!("gupwatch-bench-{}", std::process::id()));
    std::fs::write(&path, vec![0x5au8; 1 << 20]).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(err)?;
    let _ = std::fs::remove_file(&path);
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
