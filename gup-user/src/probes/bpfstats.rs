//! Run-time statistics of BPF programs: `gupwatch run --bpf-stats`.
//!
//! The kernel counts each program's runs (`run_cnt`) and the time spent in
//! it (`run_time_ns`) only while statistics are enabled: through the
//! `kernel.bpf_stats_enabled` sysctl, or while some process holds the
//! descriptor `BPF_ENABLE_STATS` returns. Counting costs two clock reads
//! per program run on every program of the host, which is why it is
//! opt-in. `--bpf-stats` takes the descriptor (before the daemon sheds
//! CAP_SYS_ADMIN) and keeps it for the daemon's life: closing it, or the
//! daemon exiting, turns the counting off again unless something else
//! keeps it on.
//!
//! Whether stats are on is [`enabled`]: our descriptor, or the sysctl.
//! Another process's descriptor (bpftop holds one) is invisible: the
//! sysctl shows only what was written to it.

use std::{
    os::fd::OwnedFd,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The sysctl that turns statistics on for every program of the host.
pub const SYSCTL_PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Descriptors from [`enable`] alive in this process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// `BPF_ENABLE_STATS` was refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot enable BPF run-time statistics (BPF_ENABLE_STATS needs CAP_SYS_ADMIN and Linux 5.8 or later)")]
pub struct StatsError(#[source] aya::sys::SyscallError);

/// Statistics stay on while this lives.
#[derive(Debug)]
pub struct StatsGuard {
    _fd: OwnedFd,
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Turns run-time statistics on until the guard is dropped.
pub fn enable() -> Result<StatsGuard, StatsError> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(StatsError)?;
    HELD.fetch_add(1, Ordering::Relaxed);
    Ok(StatsGuard { _fd: fd })
}

/// Whether the kernel is counting program runs as far as gupwatch can
/// tell: it holds a descriptor from [`enable`], or the sysctl is on.
pub fn enabled() -> bool {
    HELD.load(Ordering::Relaxed) > 0 || std::fs::read_to_string(SYSCTL_PATH).is_ok_and(|s| sysctl_on(&s))
}

/// The sysctl's text: `0` or `1` (any non-zero value turns it on).
fn sysctl_on(text: &str) -> bool {
    text.trim().parse::<u64>().is_ok_and(|v| v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_values() {
        assert!(sysctl_on("1\n"));
        assert!(!sysctl_on("0\n"));
        assert!(!sysctl_on(""));
    }
}
