//! The daemon's own memory, from `/proc/self/status`.
//!
//! Start-up is where gupwatch's memory peaks (the kernel's BTF and
//! kallsyms are parsed then), and the peak (`VmHWM`) is what a memory
//! limit meets. `GUPWATCH_DEBUG=1` prints these figures after each
//! start-up stage, so a change that moves the peak shows where.

/// Resident-memory figures of one process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStatus {
    /// Peak resident set (`VmHWM`).
    pub hwm_kib: u64,
    /// Resident set now (`VmRSS`).
    pub rss_kib: u64,
    /// Anonymous part of it: the heap, stacks (`RssAnon`).
    pub anon_kib: u64,
    /// File-backed part of it: the binary's own pages (`RssFile`).
    pub file_kib: u64,
}

impl MemStatus {
    /// This process's figures; `None` where `/proc` is not mounted.
    pub fn current() -> Option<MemStatus> {
        std::fs::read_to_string("/proc/self/status").ok().map(|s| Self::parse(&s))
    }

    /// Parses the text of `/proc/PID/status` (missing fields read 0).
    pub fn parse(status: &str) -> MemStatus {
        let mut m = MemStatus::default();
        for line in status.lines() {
            let Some((key, rest)) = line.split_once(':') else { continue };
            let slot = match key {
                "VmHWM" => &mut m.hwm_kib,
                "VmRSS" => &mut m.rss_kib,
                "RssAnon" => &mut m.anon_kib,
                "RssFile" => &mut m.file_kib,
                _ => continue,
            };
            *slot = rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
        m
    }
}

impl std::fmt::Display for MemStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmHWM {} KiB, VmRSS {} KiB (anon {}, file {})",
            self.hwm_kib, self.rss_kib, self.anon_kib, self.file_kib
        )
    }
}

/// Sets glibc's allocator so that a large buffer, once freed, goes back to
/// the kernel at once. By default glibc raises its mmap threshold to the
/// size of each large block freed (up to 32 MiB): after start-up frees
/// the kernel's BTF (5 MiB), every later block under that size comes from
/// the heap, where a growing `Vec` is copied rather than remapped and
/// freed space lingers, so each start-up stage adds to the last one's
/// peak. A fixed threshold (this call) turns the adjustment off: blocks
/// of 128 KiB and up are mapped on their own and unmapped when freed.
/// Call it first thing, before any thread starts.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes allocator parameters only; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Whether `GUPWATCH_DEBUG` asks for start-up details.
pub fn debug() -> bool {
    // As the loader reads it: set at all means on.
    std::env::var_os("GUPWATCH_DEBUG").is_some()
}

/// Prints the memory figures after a start-up stage, under `GUPWATCH_DEBUG`.
pub fn note(stage: &str) {
    if !debug() {
        return;
    }
    if let Some(m) = MemStatus::current() {
        eprintln!("gupwatch: memory after {stage}: {m}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resident_set_fields() {
        let m = MemStatus::parse(
            "Name:\tgupwatch\nVmPeak:\t  100 kB\nVmHWM:\t   31000 kB\nVmRSS:\t   12000 kB\nRssAnon:\t    9000 kB\nRssFile:\t    3000 kB\nRssShmem:\t0 kB\n",
        );
        assert_eq!(m, MemStatus { hwm_kib: 31000, rss_kib: 12000, anon_kib: 9000, file_kib: 3000 });
        assert_eq!(MemStatus::parse("garbage"), MemStatus::default());
    }
}
