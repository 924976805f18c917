//! The `/api/snapshot` document on the fixture reading.

use super::*;
use crate::collect::fixture::sample;

#[test]
fn json_snapshot() {
    let j = snapshot_json(&sample(), 10);
    assert_eq!(j["mode"], "full");
    assert_eq!(j["totals"]["pinned_pages"], 5136);
    assert_eq!(j["outstanding_pages"], 136);
    assert_eq!(j["kernel_counters"]["outstanding"], 1000);
    assert_eq!(j["top_processes"][0]["comm"], "fio");
    assert_eq!(j["top_processes"][0]["tgid"], 100);
    assert_eq!(j["top_processes"][0]["pinned_pages"], 4096);
    assert_eq!(j["events_dropped"]["stack_lost"], 4);
    assert!(j["apis"].as_array().unwrap().iter().any(|a| a["api"] == "pin_user_pages_fast" && a["calls"] == 10));
    assert_eq!(snapshot_json(&sample(), 1)["top_processes"].as_array().unwrap().len(), 1);
}
