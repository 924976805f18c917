//! Hold-time histograms: how long pins were held, from pin to unpin, per
//! subsystem and LONGTERM. Built by gup-user's `model::holdtime::fold`; served in
//! `/api/snapshot` (`hold_times`), printed by `gupwatch leaks` and written
//! to `/metrics` as `gupwatch_pin_hold_seconds`.

use gup_common::hold::{hold_bucket_upper_ns, HOLD_BUCKETS};
use serde::{Deserialize, Serialize};

/// The hold times of the pins one subsystem released, LONGTERM or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldHistogram {
    /// The subsystem, in the metrics' spelling (`io_uring`); `unknown`
    /// for pins whose kernel stack was lost.
    pub subsystem: String,
    /// Whether the pins were FOLL_LONGTERM.
    pub longterm: bool,
    /// Pages released.
    pub count: u64,
    /// Sum of their hold times, in seconds.
    pub sum_seconds: f64,
    /// Pages per bucket, not cumulative: bucket `b` ends at
    /// [`HoldHistogram::upper_seconds`]`(b)`; the last has no end.
    pub buckets: Vec<u64>,
}

impl HoldHistogram {
    /// The upper bound of bucket `b` in seconds (`None`: +Inf).
    pub fn upper_seconds(b: usize) -> Option<f64> {
        hold_bucket_upper_ns(b).map(|ns| ns as f64 / 1e9)
    }

    /// The upper bound of the bucket that holds quantile `q` (0..=1) of
    /// the pages: at most that long for `q` of them. `None` when empty;
    /// `Some(f64::INFINITY)` when it falls in the last bucket.
    pub fn quantile_upper_seconds(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (b, n) in self.buckets.iter().enumerate().take(HOLD_BUCKETS) {
            seen = seen.saturating_add(*n);
            if seen >= want {
                return Some(Self::upper_seconds(b).unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// Pages held at least `secs` (counted by whole buckets: those whose
    /// lower bound is at least `secs`).
    pub fn at_least(&self, secs: f64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(b, _)| *b > 0 && Self::upper_seconds(b - 1).is_some_and(|lo| lo >= secs))
            .map(|(_, n)| *n)
            .fold(0u64, u64::saturating_add)
    }
}

/// The histograms as a table for `gupwatch leaks`: per subsystem and
/// LONGTERM, pages released, the bucket bounds under which half and 99 %
/// of them were released, and how many were held a second or longer.
pub fn hold_table(hs: &[HoldHistogram]) -> String {
    let mut out = String::from("\nhold times of released pins (from pin to unpin, per page; p50/p99 are bucket upper bounds):\n");
    if hs.is_empty() {
        out += "  none released while tracking\n";
        return out;
    }
    out += &format!("{:<11} {:<8} {:>9} {:>8} {:>8} {:>9} {:>8}\n", "SUBSYSTEM", "LONGTERM", "PAGES", "P50", "P99", "MEAN", ">=1s");
    for h in hs {
        let q = |q: f64| h.quantile_upper_seconds(q).map_or("-".into(), short_duration);
        let mean = if h.count > 0 { short_duration(h.sum_seconds / h.count as f64) } else { "-".into() };
        out += &format!(
            "{:<11} {:<8} {:>9} {:>8} {:>8} {:>9} {:>8}\n",
            h.subsystem,
            if h.longterm { "yes" } else { "no" },
            h.count,
            format!("≤{}", q(0.5)),
            format!("≤{}", q(0.99)),
            mean,
            h.at_least(1.0)
        );
    }
    out
}

/// A duration in seconds as a short human figure (`512µs`, `1.1s`, `2.3h`).
pub fn short_duration(secs: f64) -> String {
    if secs.is_infinite() {
        return "inf".to_string();
    }
    if secs < 1e-3 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.0}ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.1}s")
    } else if secs < 7200.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pairs: &[(usize, u64)]) -> HoldHistogram {
        let mut buckets = vec![0; HOLD_BUCKETS];
        for (b, n) in pairs {
            buckets[*b] = *n;
        }
        let count = buckets.iter().sum();
        HoldHistogram { subsystem: "io_uring".into(), longterm: true, count, sum_seconds: 0.0, buckets }
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        // 90 pages under ~1 µs, 10 in the bucket ending at 2^30 ns (~1.07 s).
        let h = hist(&[(0, 90), (20, 10)]);
        assert_eq!(h.quantile_upper_seconds(0.5), Some(1024e-9));
        assert_eq!(h.quantile_upper_seconds(0.9), Some(1024e-9));
        assert_eq!(h.quantile_upper_seconds(0.99), Some((1u64 << 30) as f64 / 1e9));
        assert_eq!(hist(&[]).quantile_upper_seconds(0.5), None);
        assert_eq!(hist(&[(HOLD_BUCKETS - 1, 1)]).quantile_upper_seconds(0.5), Some(f64::INFINITY));
    }

    #[test]
    fn at_least_counts_whole_buckets_above_the_bound() {
        // Bucket 20 spans [2^29, 2^30) ns = [0.54 s, 1.07 s); bucket 21 [1.07 s, 2.1 s).
        let h = hist(&[(0, 5), (20, 3), (21, 2), (HOLD_BUCKETS - 1, 1)]);
        assert_eq!(h.at_least(1.0), 3);
        assert_eq!(h.at_least(0.5), 6);
        assert_eq!(h.at_least(0.0), 6);
    }

    #[test]
    fn the_table_has_a_line_per_histogram() {
        let t = hold_table(&[hist(&[(0, 90), (21, 10)])]);
        let line = t.lines().find(|l| l.starts_with("io_uring")).expect("a line");
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[..5], ["io_uring", "yes", "100", "≤1µs", "≤2.1s"]);
        assert_eq!(cols[6], "10", "held a second or longer");
        assert!(hold_table(&[]).contains("none released"));
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(short_duration(512e-6), "512µs");
        assert_eq!(short_duration(0.25), "250ms");
        assert_eq!(short_duration(1.07), "1.1s");
        assert_eq!(short_duration(600.0), "10m");
        assert_eq!(short_duration(4.0 * 3600.0), "4.0h");
        assert_eq!(short_duration(f64::INFINITY), "inf");
    }
}
