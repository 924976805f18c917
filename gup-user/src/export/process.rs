//! The standard `process_*` self-metrics every Prometheus client library
//! exports (CPU time, memory, file descriptors, start time), read from
//! `/proc/self` when a scrape is encoded: the same names as node_exporter's
//! and the Go and Python clients', so the usual "exporter resource usage"
//! dashboards and alerts work on gupwatch unchanged.

use std::fmt;

use prometheus_client::{
    collector::Collector as PromCollector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        MetricType,
    },
    registry::Unit,
};

/// One reading of this process's figures; `None` fields could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time.
    pub cpu_seconds: Option<f64>,
    /// Resident set size.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on file descriptors (`RLIMIT_NOFILE`).
    pub max_fds: Option<u64>,
    /// Start time since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// This process's figures, from `/proc/self` and `/proc/stat`.
    pub fn read() -> ProcessStats {
        let proc = |p: &str| std::fs::read_to_string(p).ok();
        // SAFETY: sysconf only reads a constant of the C library.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let mut s = proc("/proc/self/stat")
            .map(|stat| parse_stat(&stat, ticks as f64, page as u64, proc("/proc/stat").as_deref().and_then(boot_time)))
            .unwrap_or_default();
        s.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        s.max_fds = proc("/proc/self/limits").as_deref().and_then(max_open_files);
        s
    }
}

/// The figures of `/proc/self/stat`: fields 14-15 (utime, stime, in clock
/// ticks), 22 (starttime, ticks after boot), 23 (vsize, bytes) and 24
/// (rss, pages), counted after the `(comm)` field, which may hold spaces.
fn parse_stat(stat: &str, ticks_per_s: f64, page_bytes: u64, boot_time: Option<u64>) -> ProcessStats {
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // rest starts at field 3 (state): field n is rest's (n - 3)th.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks_ok = ticks_per_s > 0.0;
    ProcessStats {
        cpu_seconds: num(14).zip(num(15)).filter(|_| ticks_ok).map(|(u, s)| (u + s) as f64 / ticks_per_s),
        virtual_bytes: num(23),
        resident_bytes: num(24).map(|p| p * page_bytes),
        start_time_seconds: num(22).zip(boot_time).filter(|_| ticks_ok).map(|(st, b)| b as f64 + st as f64 / ticks_per_s),
        open_fds: None,
        max_fds: None,
    }
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft limit of the `Max open files` row of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let row = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    row.split_whitespace().next()?.parse().ok()
}

/// The `process_*` families, read at each encoding.
#[derive(Debug)]
pub struct Process;

impl PromCollector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        encode(&mut enc, &ProcessStats::read())
    }
}

fn encode(enc: &mut DescriptorEncoder, s: &ProcessStats) -> fmt::Result {
    if let Some(v) = s.cpu_seconds {
        let m = enc.encode_descriptor("process_cpu", "Total user and system CPU time spent.", Some(&Unit::Seconds), MetricType::Counter)?;
        ConstCounter::new(v).encode(m)?;
    }
    let gauges: [(&str, &str, Option<Unit>, Option<f64>); 5] = [
        ("process_resident_memory", "Resident memory size.", Some(Unit::Bytes), s.resident_bytes.map(|v| v as f64)),
        ("process_virtual_memory", "Virtual memory size.", Some(Unit::Bytes), s.virtual_bytes.map(|v| v as f64)),
        ("process_open_fds", "Number of open file descriptors.", None, s.open_fds.map(|v| v as f64)),
        ("process_max_fds", "Maximum number of open file descriptors.", None, s.max_fds.map(|v| v as f64)),
        ("process_start_time", "Start time of the process since the Unix epoch.", Some(Unit::Seconds), s.start_time_seconds),
    ];
    for (name, help, unit, value) in gauges {
        // A figure that could not be read is left out, family and all:
        // an empty family says nothing a missing one does not.
        if let Some(v) = value {
            ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn parses_proc_files() {
        // comm with a space and a parenthesis, as the kernel allows.
        let stat = "4242 (gup watch) ) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 2048 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096, Some(1_700_000_000));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.virtual_bytes, Some(123_456_789));
        assert_eq!(s.resident_bytes, Some(2048 * 4096));
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(parse_stat("garbage", 100.0, 4096, None), ProcessStats::default());
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_reads_and_encodes() {
        let s = ProcessStats::read();
        assert!(s.cpu_seconds.is_some() && s.start_time_seconds.is_some(), "{s:?}");
        assert!(s.resident_bytes.unwrap() > 0 && s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        assert!(s.open_fds.unwrap() >= 3 && s.max_fds.unwrap() >= s.open_fds.unwrap(), "{s:?}");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Process));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} in\n{text}");
        }
        crate::export::prometheus::tests::promtool_check(&text);
    }
}
