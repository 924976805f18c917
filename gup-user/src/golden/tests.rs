//! The documents byte for byte (golden files written by the code that
//! served them before these types existed), and back.

use gup_report::*;

use super::fixture;
use crate::export::api::{snapshot_json, snapshot_with_callers, MAX_JSON_CALLERS};
use crate::collect::fixture::sample;

/// The body `/api/snapshot` sends for a document.
fn body(doc: &SnapshotReport) -> String {
    to_sorted_pretty_json(doc).expect("writes") + "\n"
}

/// Full mode, with `callers=1` and `leaks=1`.
fn full() -> SnapshotReport {
    SnapshotReport { leaks: Some(Some(fixture::leak_report())), ..snapshot_with_callers(&sample(), 10, MAX_JSON_CALLERS) }
}

/// Reduced mode, with `leaks=1` and no report to give.
fn reduced() -> SnapshotReport {
    SnapshotReport { leaks: Some(None), ..snapshot_json(&fixture::reduced(), 10) }
}

#[test]
fn snapshot_is_byte_identical_to_the_golden_file() {
    assert_eq!(body(&full()), include_str!("snapshot_full.json"));
    assert_eq!(body(&reduced()), include_str!("snapshot_reduced.json"));
}

#[test]
fn leaks_json_is_byte_identical_to_the_golden_file() {
    // As `gupwatch leaks --json` prints it: fields in declaration order.
    let text = serde_json::to_string_pretty(&fixture::leak_report()).expect("writes") + "\n";
    assert_eq!(text, include_str!("leaks.json"));
}

#[test]
fn documents_round_trip() {
    for doc in [full(), reduced(), snapshot_json(&sample(), 10)] {
        let back: SnapshotReport = serde_json::from_str(&body(&doc)).expect("reads back");
        let mut want = doc;
        // The stack id groups holdings inside the daemon; it is not sent.
        for h in want.leaks.iter_mut().flatten().flat_map(|r| r.holdings.iter_mut()) {
            h.stack_id = 0;
        }
        assert_eq!(back, want);
    }
    let leaks = fixture::leak_report();
    let back: LeakReport = serde_json::from_str(&serde_json::to_string(&leaks).expect("writes")).expect("reads back");
    assert_eq!(back.holdings[0].stack_id, 0);
    assert_eq!(back, LeakReport { holdings: vec![Holding { stack_id: 0, ..leaks.holdings[0].clone() }], ..leaks });
}

/// `leaks` absent (not asked for), null (no report) and there are three
/// different documents.
#[test]
fn leaks_absent_null_and_present_differ() {
    let plain = snapshot_json(&fixture::reduced(), 10);
    assert!(!body(&plain).contains("\"leaks\""));
    assert!(body(&reduced()).contains("\"leaks\": null"));
    let read = |doc: &SnapshotReport| serde_json::from_str::<SnapshotReport>(&body(doc)).expect("reads back").leaks;
    assert_eq!(read(&plain), None);
    assert_eq!(read(&reduced()), Some(None));
    assert!(matches!(read(&full()), Some(Some(_))));
}

/// The kind index of the collector and the kinds of the documents agree.
#[test]
fn kinds_follow_the_collector_index() {
    for (i, label) in crate::collect::KINDS.iter().enumerate() {
        let kind = Kind::from_index(i).expect("a kind per index");
        assert_eq!(serde_json::to_value(kind).expect("writes"), *label);
    }
    assert_eq!(Kind::from_index(3), None);
}

/// Reports of older daemons (no `i915_objects`, `untracked_pins`, `api`,
/// `module`) and of newer ones (a subsystem this build does not know)
/// still read.
#[test]
fn leak_reports_of_other_versions_read() {
    let r: LeakReport = serde_json::from_str(
        r#"{"tracked_outstanding": 256, "kernel_outstanding": 300, "partial": false,
            "holdings": [{"owner_tgid": 7, "comm": "fio",
                "caller": {"function": "io_sqe_buffer_register", "subsystem": "io-uring"},
                "pages": 256, "oldest_age_secs": 12.5, "longterm": true, "orphaned": true}],
            "leaks": [{"kind": "orphaned", "pages": 256, "owner_tgid": 7, "comm": "fio",
                "caller": "io_sqe_buffer_register", "subsystem": "quantum-dma", "age_secs": 12.5}],
            "notes": ["n"], "extra": 1}"#,
    )
    .expect("reads");
    assert_eq!(r.holdings[0].caller.subsystem, Subsystem::IoUring);
    assert_eq!(r.holdings[0].caller.subsystem.as_str(), "io_uring", "the views use the metrics' spelling");
    assert_eq!((r.untracked_pins, r.i915_objects.len(), r.holdings[0].api.as_str()), (0, 0, ""));
    assert_eq!((r.leaks[0].kind, r.leaks[0].subsystem), (LeakKind::Orphaned, Subsystem::Other));
}
