//! `gupwatch_pin_hold_seconds`: how long released pins were held, a
//! histogram per LONGTERM and short pins ([`crate::model::holdtime`]). The
//! per-subsystem histograms stay in `/api/snapshot`, `gupwatch leaks` and
//! the live view: one series per subsystem would take a node past its
//! series budget (docs/fleet.md).

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::MetricType,
    registry::Unit,
};

use super::ConstHistogram;
use gup_report::HoldHistogram;

use crate::collect::Reading;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    longterm: &'static str,
}

/// The family, with the leak families: only where pins are tracked (the
/// hold time is measured by the tracking map).
pub(super) fn hold_family(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    if d.leaks.is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "gupwatch_pin_hold",
        "How long released FOLL_PIN pins were held, from pin to unpin, one observation per page, by whether the pin was FOLL_LONGTERM (log2 buckets from about 8 microseconds to 4.9 hours; per subsystem in /api/snapshot and gupwatch leaks).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for longterm in [false, true] {
        let mut of_kind = d.hold_times.iter().filter(|h| h.longterm == longterm).peekable();
        if of_kind.peek().is_none() {
            continue;
        }
        let labels = HoldLabels { longterm: if longterm { "true" } else { "false" } };
        merged(of_kind).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Upper bounds of the exported buckets, as powers of two nanoseconds:
/// 8 µs, 524 µs, 34 ms (every sixth), then 1.07 s (the weak-pin
/// threshold's bucket), 34 s, 275 s (next to the 300 s long-held default),
/// 4.9 h, and `+Inf`: 8 buckets, so each series stays at 10 lines and a
/// node under its series budget (docs/fleet.md). Each is a bound of the
/// kernel's log2 histogram, so every cumulative count is exact; the full
/// histogram is in `/api/snapshot`, `gupwatch leaks` and the live view.
pub(super) const HOLD_BOUNDS_LOG2: [u32; 7] = [13, 19, 25, 30, 35, 38, 44];

/// The subsystems' histograms of one kind summed: bucket counts, sums and
/// counts add.
fn merged<'a>(hs: impl Iterator<Item = &'a HoldHistogram>) -> ConstHistogram {
    let mut sum = HoldHistogram { subsystem: String::new(), longterm: false, count: 0, sum_seconds: 0.0, buckets: vec![] };
    for h in hs {
        sum.count = sum.count.saturating_add(h.count);
        sum.sum_seconds += h.sum_seconds;
        if sum.buckets.len() < h.buckets.len() {
            sum.buckets.resize(h.buckets.len(), 0);
        }
        for (a, b) in sum.buckets.iter_mut().zip(&h.buckets) {
            *a = a.saturating_add(*b);
        }
    }
    histogram(&sum)
}

/// The kernel's buckets summed into the exported ones: kernel bucket `b`
/// ends at `2^(10 + b)` ns (the last at `+Inf`) and counts under the first
/// exported bound at least that.
fn histogram(h: &HoldHistogram) -> ConstHistogram {
    let mut out: Vec<(f64, u64)> =
        HOLD_BOUNDS_LOG2.iter().map(|b| ((1u64 << b) as f64 / 1e9, 0)).chain([(f64::INFINITY, 0)]).collect();
    for (b, n) in h.buckets.iter().enumerate() {
        let slot = match HoldHistogram::upper_seconds(b) {
            None => HOLD_BOUNDS_LOG2.len(),
            Some(_) => {
                let upper = gup_common::hold::HOLD_MIN_SHIFT + b as u32;
                HOLD_BOUNDS_LOG2.iter().position(|x| upper <= *x).unwrap_or(HOLD_BOUNDS_LOG2.len())
            }
        };
        out[slot].1 = out[slot].1.saturating_add(*n);
    }
    ConstHistogram::new(h.sum_seconds, out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gup_common::hold::HOLD_BUCKETS;

    use super::*;
    use crate::export::prometheus::{render, Format};

    #[test]
    fn the_family_is_a_prometheus_histogram_per_longterm_with_subsystems_summed() {
        let mut d = (*crate::collect::fixture::sample()).clone();
        let mut buckets = vec![0; HOLD_BUCKETS];
        buckets[0] = 2;
        buckets[20] = 1;
        let mut rdma = vec![0; HOLD_BUCKETS];
        rdma[20] = 2;
        d.hold_times = vec![
            HoldHistogram { subsystem: "io_uring".into(), longterm: true, count: 3, sum_seconds: 1.5, buckets },
            HoldHistogram { subsystem: "rdma".into(), longterm: true, count: 2, sum_seconds: 1.0, buckets: rdma },
        ];
        let text = render(&Arc::new(d), Format::Prometheus);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("gupwatch_pin_hold_seconds")).collect();
        let labels = r#"longterm="true""#;
        assert!(text.contains("# TYPE gupwatch_pin_hold_seconds histogram"), "{text}");
        assert!(lines.contains(&format!("gupwatch_pin_hold_seconds_sum{{{labels}}} 2.5").as_str()), "{lines:#?}");
        assert!(lines.contains(&format!("gupwatch_pin_hold_seconds_count{{{labels}}} 5").as_str()), "{lines:#?}");
        let buckets: Vec<&&str> = lines.iter().filter(|l| l.contains("_bucket")).collect();
        assert_eq!(buckets.len(), HOLD_BOUNDS_LOG2.len() + 1);
        // Kernel bucket 20 ends at 2^30 ns: the exported bound 3 (1.07 s),
        // which the dashboard's ">= 1 s" panel names.
        assert!(buckets[0].ends_with(" 2") && buckets[2].ends_with(" 2") && buckets[3].ends_with(" 5"), "{buckets:#?}");
        assert!(buckets[3].contains(r#"le="1.073741824""#), "{}", buckets[3]);
        // No short pins were released: no longterm="false" series.
        assert!(!text.contains(r#"longterm="false""#), "{text}");
        let last = buckets[HOLD_BOUNDS_LOG2.len()];
        assert!(last.contains(r#"le="+Inf""#) && last.ends_with(" 5"));
        // Without tracking (reduced mode) there is no family at all.
        let mut none = (*crate::collect::fixture::sample()).clone();
        none.leaks = None;
        assert!(!render(&Arc::new(none), Format::Prometheus).contains("gupwatch_pin_hold"));
    }

    #[test]
    fn exported_bounds_are_kernel_bounds_and_every_page_counts() {
        let mut buckets = vec![1; HOLD_BUCKETS];
        buckets[HOLD_BUCKETS - 1] = 7;
        let h = HoldHistogram { subsystem: "x".into(), longterm: false, count: 0, sum_seconds: 0.0, buckets };
        let c = histogram(&h);
        assert_eq!(c.count, (HOLD_BUCKETS as u64 - 1) + 7);
        // 8 µs holds kernel buckets 0..=3; 524 µs kernel buckets 4..=9.
        assert_eq!((c.buckets[0].1, c.buckets[1].1), (4, 6));
        assert!(HOLD_BOUNDS_LOG2.iter().all(|b| (10..=44).contains(b)));
    }

    #[test]
    fn bounds_are_log2_from_a_microsecond_and_end_in_inf() {
        let mut buckets = vec![0; HOLD_BUCKETS];
        buckets[0] = 3;
        buckets[HOLD_BUCKETS - 1] = u64::MAX;
        let h = HoldHistogram { subsystem: "io_uring".into(), longterm: true, count: 0, sum_seconds: 1.5, buckets };
        let c = histogram(&h);
        assert_eq!(c.buckets.len(), HOLD_BOUNDS_LOG2.len() + 1);
        assert_eq!(c.buckets[0], (8192e-9, 3));
        assert_eq!(c.buckets[1].0, 524288e-9);
        assert_eq!(c.buckets[HOLD_BOUNDS_LOG2.len()], (f64::INFINITY, u64::MAX - 3));
        assert_eq!(c.count, u64::MAX);
        assert_eq!(c.sum, 1.5);
    }
}
