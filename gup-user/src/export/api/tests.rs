//! The `/api/snapshot` document on the fixture reading (its bytes: the
//! golden tests of the `gup_report` types, `crate::golden`).

use super::*;
use crate::collect::fixture::sample;

#[test]
fn json_snapshot() {
    let j = snapshot_json(&sample(), 10);
    assert_eq!(j.mode, Mode::Full);
    assert_eq!(j.totals.map(|t| t.pinned_pages), Some(5136));
    assert_eq!(j.outstanding_pages, Some(136));
    assert_eq!(j.kernel_counters.map(|k| k.outstanding), Some(1000));
    assert_eq!((j.top_processes[0].comm.as_str(), j.top_processes[0].tgid), ("fio", 100));
    assert_eq!(j.top_processes[0].pinned_pages, 4096);
    assert_eq!(j.events_dropped["stack_lost"], 4);
    assert!(j.apis.iter().any(|a| a.api == "pin_user_pages_fast" && a.calls == 10));
    assert_eq!(snapshot_json(&sample(), 1).top_processes.len(), 1);
    assert_eq!((j.callers, j.callers_truncated, j.leaks), (None, None, None), "the extras are opt-in");
}

#[test]
fn callers_are_largest_first_and_bounded() {
    let d = sample();
    let (all, truncated) = callers_json(&d, MAX_JSON_CALLERS);
    assert!(!truncated);
    assert!(all.windows(2).all(|w| w[0].pages >= w[1].pages));
    let (two, truncated) = callers_json(&d, 2);
    assert!(truncated);
    assert_eq!(two, all[..2]);
    let doc = snapshot_with_callers(&d, 10, 2);
    assert_eq!((doc.callers.as_deref(), doc.callers_truncated), (Some(&two[..]), Some(true)));
}
