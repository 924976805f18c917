//! `gupwatch_pin_hold_seconds`: how long released pins were held, a
//! histogram per subsystem and LONGTERM ([`crate::holdtime`]).

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::MetricType,
    registry::Unit,
};

use super::ConstHistogram;
use crate::{collect::Reading, report::HoldHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    subsystem: String,
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
        "How long released FOLL_PIN pins were held, from pin to unpin, one observation per page, by the subsystem that pinned and whether the pin was FOLL_LONGTERM (log2 buckets from about 1 microsecond to 4.9 hours).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for h in &d.hold_times {
        let labels = HoldLabels { subsystem: h.subsystem.clone(), longterm: if h.longterm { "true" } else { "false" } };
        histogram(h).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The kernel's buckets with their upper bounds in seconds.
fn histogram(h: &HoldHistogram) -> ConstHistogram {
    let bounds =
        h.buckets.iter().enumerate().map(|(b, n)| (HoldHistogram::upper_seconds(b).unwrap_or(f64::INFINITY), *n));
    ConstHistogram::new(h.sum_seconds, bounds)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gup_common::hold::HOLD_BUCKETS;

    use super::*;
    use crate::export::prometheus::{render, Format};

    #[test]
    fn the_family_is_a_prometheus_histogram_per_subsystem_and_longterm() {
        let mut d = (*crate::collect::fixture::sample()).clone();
        let mut buckets = vec![0; HOLD_BUCKETS];
        buckets[0] = 2;
        buckets[20] = 3;
        d.hold_times = vec![HoldHistogram { subsystem: "io_uring".into(), longterm: true, count: 5, sum_seconds: 2.5, buckets }];
        let text = render(&Arc::new(d), Format::Prometheus);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("gupwatch_pin_hold_seconds")).collect();
        let labels = r#"subsystem="io_uring",longterm="true""#;
        assert!(text.contains("# TYPE gupwatch_pin_hold_seconds histogram"), "{text}");
        assert!(lines.contains(&format!("gupwatch_pin_hold_seconds_sum{{{labels}}} 2.5").as_str()), "{lines:#?}");
        assert!(lines.contains(&format!("gupwatch_pin_hold_seconds_count{{{labels}}} 5").as_str()), "{lines:#?}");
        let buckets: Vec<&&str> = lines.iter().filter(|l| l.contains("_bucket")).collect();
        assert_eq!(buckets.len(), HOLD_BUCKETS);
        assert!(buckets[0].ends_with(" 2") && buckets[19].ends_with(" 2") && buckets[20].ends_with(" 5"), "{buckets:#?}");
        // The dashboard's ">= 1 s" panel names this bound.
        assert!(buckets[20].contains(r#"le="1.073741824""#), "{}", buckets[20]);
        assert!(buckets[HOLD_BUCKETS - 1].contains(r#"le="+Inf""#) && buckets[HOLD_BUCKETS - 1].ends_with(" 5"));
        // Without tracking (reduced mode) there is no family at all.
        let mut none = (*crate::collect::fixture::sample()).clone();
        none.leaks = None;
        assert!(!render(&Arc::new(none), Format::Prometheus).contains("gupwatch_pin_hold"));
    }

    #[test]
    fn bounds_are_log2_from_a_microsecond_and_end_in_inf() {
        let mut buckets = vec![0; HOLD_BUCKETS];
        buckets[0] = 3;
        buckets[HOLD_BUCKETS - 1] = u64::MAX;
        let h = HoldHistogram { subsystem: "io_uring".into(), longterm: true, count: 0, sum_seconds: 1.5, buckets };
        let c = histogram(&h);
        assert_eq!(c.buckets.len(), HOLD_BUCKETS);
        assert_eq!(c.buckets[0], (1024e-9, 3));
        assert_eq!(c.buckets[1].0, 2048e-9);
        assert_eq!(c.buckets[HOLD_BUCKETS - 1], (f64::INFINITY, u64::MAX - 3));
        assert_eq!(c.count, u64::MAX);
        assert_eq!(c.sum, 1.5);
    }
}
