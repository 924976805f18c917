//! The collector's own logic: the top-N selection, leak metrics, and the
//! reduced mode's accounted pins (on a fake /proc).

use gup_common::Api;

use super::fixture::row;
use super::*;
use gup_report::{LeakReport, Subsystem};

use crate::{
    model::attribution::Row,
};

#[test]
fn top_n_keeps_other_monotonic() {
    let mut top = TopProcesses::default();
    let r = |comm: &str, pages| row(1, comm, Api::PinUserPagesFast, pages, Subsystem::Other);
    let value = |s: &[ProcessSeries], comm: &str| {
        s.iter().find(|p| p.comm == comm && p.kind == "pin").map(|p| p.pages)
    };
    // N = 1: "a" leads, "b" goes to other.
    let s = top.update(&[r("a", 10), r("b", 5)], 1);
    assert_eq!((value(&s, "a"), value(&s, "b"), value(&s, OTHER_COMM)), (Some(10), None, Some(5)));
    assert_eq!(s.len(), 6, "3 kinds for a and for other");
    // "b" overtakes "a": b is promoted with its full count, a is demoted;
    // other grows by what non-top processes gained (a: +1) and never drops.
    let s = top.update(&[r("a", 11), r("b", 20)], 1);
    assert_eq!((value(&s, "a"), value(&s, "b"), value(&s, OTHER_COMM)), (None, Some(20), Some(6)));
    let s = top.update(&[r("a", 11), r("b", 20), r("c", 3)], 1);
    assert_eq!(value(&s, OTHER_COMM), Some(9));
    // A process really named "other" folds into other.
    let s = top.update(&[r("a", 11), r("b", 20), r("c", 3), r(OTHER_COMM, 100)], 5);
    assert_eq!(s.iter().filter(|p| p.comm == OTHER_COMM && p.kind == "pin").count(), 1);
    assert_eq!(value(&s, OTHER_COMM), Some(109));
    // N = 0: everything in other.
    let mut top = TopProcesses::default();
    let s = top.update(&[r("a", 1), r("b", 2)], 0);
    assert_eq!(s.len(), 3);
    assert_eq!(value(&s, OTHER_COMM), Some(3));
}

#[test]
fn top_n_limits_series() {
    let mut top = TopProcesses::default();
    let rows: Vec<Row> =
        (0..50).map(|i| row(i, &format!("p{i}"), Api::PinUserPagesFast, u64::from(i), Subsystem::Other)).collect();
    let s = top.update(&rows, 10);
    let comms: std::collections::BTreeSet<&str> = s.iter().map(|p| p.comm.as_str()).collect();
    assert_eq!(comms.len(), 11);
    assert!(comms.contains("p49") && comms.contains("p40") && !comms.contains("p39"));
    let other = s.iter().find(|p| p.comm == OTHER_COMM && p.kind == "pin").unwrap().pages;
    assert_eq!(other, (0..40).sum::<u64>());
}

#[test]
fn leak_metrics_list_every_kind() {
    let report = LeakReport {
        tracked_outstanding: 5,
        kernel_outstanding: None,
        untracked_pins: 0,
        partial: false,
        holdings: vec![],
        leaks: vec![gup_report::Leak {
            kind: gup_report::LeakKind::Growth,
            pages: 9,
            owner_tgid: Some(1),
            comm: None,
            caller: "x".into(),
            subsystem: gup_report::Subsystem::Other,
            age_secs: None,
            zone: None,
        }],
        hold_times: vec![],
        cgroups: vec![],
        held_before_start: vec![],
        notes: vec![],
        i915_objects: vec![],
    };
    let m = LeakMetrics::from_report(&report);
    assert_eq!(m.by_kind.len(), 5, "every kind is always present");
    assert_eq!(m.by_kind["weak_pin"], (0, 0));
    assert_eq!(m.by_kind["growth"], (1, 9));
    assert_eq!(m.by_kind["orphaned"], (0, 0));
}

/// A reduced-mode collector reads /proc (here a fake one) and reuses
/// the reading for scrapes closer than ACCOUNTED_MIN_INTERVAL.
#[test]
fn reduced_collector_reads_accounted_pins() {
    let root = std::env::temp_dir().join(format!("gupwatch-collector-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("42")).unwrap();
    std::fs::write(root.join("42/status"), "Name:\tpinner\nVmLck:\t0 kB\nVmPin:\t64 kB\n").unwrap();
    let kallsyms = Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
    let plan = ProbePlan::resolve("6.1.0-test".into(), Err("no BTF".into()), &kallsyms);
    let mut c = Collector::new(None, &plan, Settings::default());
    c.set_proc_root(root.clone());
    let first = c.gather();
    std::fs::write(root.join("42/status"), "Name:\tpinner\nVmPin:\t128 kB\n").unwrap();
    let second = c.gather();
    let _ = std::fs::remove_dir_all(&root);
    let pinned = |d: &Reading| d.accounted.as_ref().map(|a| a.holders.iter().map(|h| (h.pid, h.pinned_bytes)).collect::<Vec<_>>());
    assert_eq!(pinned(&first), Some(vec![(42, 64 << 10)]));
    assert_eq!(pinned(&second), pinned(&first), "reused within the interval");
}

/// `stat_refresh` is written only when asked for, and at most once per
/// interval; the reading says how long ago.
#[test]
fn vmstat_refresh_is_opt_in_and_rate_limited() {
    let plan = crate::kernel::plan::ProbePlan::resolve(
        "6.1.0-test".into(),
        Err("no BTF".into()),
        &crate::kernel::kallsyms::Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n"),
    );
    let settings = |r| Settings { vmstat_refresh: r, ..Settings::default() };
    let mut c = Collector::new(None, &plan, settings(None));
    for _ in 0..2 {
        assert_eq!(c.gather().vmstat_refreshed_ago, None, "never written when not asked for");
    }
    c.set_settings(settings(Some(Duration::from_secs(3600))));
    let first = c.gather().vmstat_refreshed_ago;
    if std::fs::OpenOptions::new().write(true).open(crate::kernel::vmstat::STAT_REFRESH_PATH).is_err() {
        // Not root (or no such file): the write is refused and not tried again.
        assert_eq!(first, None);
        return;
    }
    let first = first.expect("written at the first reading");
    std::thread::sleep(Duration::from_millis(30));
    let second = c.gather().vmstat_refreshed_ago.expect("still known");
    assert!(second >= first + Duration::from_millis(30), "not written again within the interval: {first:?} then {second:?}");
    c.set_settings(settings(Some(Duration::ZERO)));
    let third = c.gather().vmstat_refreshed_ago.expect("written");
    assert!(third < second, "ZERO writes at every reading: {third:?} after {second:?}");
}
