//! Who holds the pins now, read the way an operator reads it: each node's
//! `/api/snapshot?leaks=1`, and `gupwatch leaks --connect --json` against
//! the node whose io_uring buffer outlived the process that registered it
//! (a child registered it, forked and exited; the grandchild,
//! `ring-holder`, keeps the ring). That node must name the live holder and
//! raise no orphaned signal; the others name no holder at all.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gup_report::{LeakKind, LeakReport, SnapshotReport};

use super::{Node, Workload};
use crate::e2e::{http_get, Check};

/// The holder's name (`gupwatch workload --hold --handoff`).
const HOLDER_COMM: &str = "ring-holder";
/// The held buffer: 1 MiB of 4 KiB pages.
const HELD_PAGES: u64 = 256;

/// One check per node from its snapshot, and one from `leaks --connect` on
/// the hand-off node.
pub(super) fn holder_checks(nodes: &[Node], gupwatch: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    for n in nodes {
        let expect = (n.spec.workload == Workload::HandoffAndMix).then_some(HOLDER_COMM);
        let what = match expect {
            Some(c) => format!("{}: /api/snapshot?leaks=1 names the live holder `{c}`, no orphaned signal", n.spec.name),
            None => format!("{}: /api/snapshot?leaks=1 names no holder and no orphaned signal", n.spec.name),
        };
        let (ok, detail) = match snapshot_leaks(n.metrics_port) {
            Ok(report) => judge(&report, expect),
            Err(e) => (false, e),
        };
        checks.push(Check::new(what, None, ok, detail));
        if expect.is_some() {
            let (ok, detail) = match connect_leaks(gupwatch, n.metrics_port) {
                Ok(report) => judge(&report, expect),
                Err(e) => (false, e),
            };
            checks.push(Check::new(
                format!("{}: gupwatch leaks --connect --json names the live holder `{HOLDER_COMM}`, no orphaned signal", n.spec.name),
                None,
                ok,
                detail,
            ));
        }
    }
    checks
}

fn snapshot_leaks(port: u16) -> Result<LeakReport, String> {
    let (status, body) = http_get(port, "/api/snapshot?leaks=1", Duration::from_secs(10)).map_err(|e| format!("{e:#}"))?;
    if status != 200 {
        return Err(format!("/api/snapshot?leaks=1 answered {status}"));
    }
    let snap: SnapshotReport = serde_json::from_slice(&body).map_err(|e| format!("/api/snapshot?leaks=1 is not a snapshot: {e}"))?;
    snap.leaks.flatten().ok_or_else(|| "the snapshot has no leak report (no tracking map?)".to_string())
}

fn connect_leaks(gupwatch: &Path, port: u16) -> Result<LeakReport, String> {
    let out = Command::new(gupwatch)
        .args(["leaks", "--json", "--connect", &format!("127.0.0.1:{port}")])
        .output()
        .map_err(|e| format!("running {}: {e}", gupwatch.display()))?;
    if !out.status.success() {
        return Err(format!("gupwatch leaks --connect exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("gupwatch leaks --connect --json printed no leak report: {e}"))
}

/// With `holder`: some holding whose owner exited is held by a live
/// process of that name, for the whole buffer; without: no holding names
/// a holder. Either way no orphaned signal.
fn judge(r: &LeakReport, holder: Option<&str>) -> (bool, String) {
    let held: Vec<String> = r
        .holdings
        .iter()
        .filter(|h| !h.holders.is_empty())
        .map(|h| {
            let names: Vec<String> = h.holders.iter().map(|x| format!("{} {}", x.pid, x.comm)).collect();
            format!("{} pages of {} {} held by {}", h.pages, h.owner_tgid, h.comm, names.join(", "))
        })
        .collect();
    let orphaned: u64 = r.leaks.iter().filter(|l| l.kind == LeakKind::Orphaned).map(|l| l.pages).sum();
    let named = match holder {
        Some(c) => r
            .holdings
            .iter()
            .any(|h| h.owner_exited && h.pages >= HELD_PAGES && h.holders.iter().any(|x| x.comm == c && x.pid > 0)),
        None => held.is_empty(),
    };
    let seen = if held.is_empty() { "no holder named".to_string() } else { held.join("; ") };
    (named && orphaned == 0, format!("{seen}; orphaned pages {orphaned}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gup_report::{Holding, Leak, ObjectHolder};

    fn holding(exited: bool, holders: Vec<ObjectHolder>) -> Holding {
        // As the daemon serves it; the fields it leaves out default.
        let mut h: Holding = serde_json::from_str(
            r#"{"owner_tgid": 40, "comm": "gupwatch", "caller": {"function": "io_pin_pages", "subsystem": "io-uring"},
                "pages": 256, "oldest_age_secs": 9.0}"#,
        )
        .expect("a served holding");
        h.owner_exited = exited;
        h.holders = holders;
        h
    }

    fn report(holdings: Vec<Holding>, leaks: Vec<Leak>) -> LeakReport {
        let mut r: LeakReport = serde_json::from_str(r#"{"tracked_outstanding":256,"kernel_outstanding":256}"#).expect("minimal report");
        r.holdings = holdings;
        r.leaks = leaks;
        r
    }

    #[test]
    fn the_handoff_node_needs_its_holder_and_no_orphan() {
        let ring = ObjectHolder { pid: 41, comm: HOLDER_COMM.into(), cgroup: "/".into() };
        let good = report(vec![holding(true, vec![ring.clone()])], vec![]);
        assert!(judge(&good, Some(HOLDER_COMM)).0);
        // Held by someone else, or not known to be held: not the answer.
        let other = ObjectHolder { comm: "bash".into(), ..ring.clone() };
        assert!(!judge(&report(vec![holding(true, vec![other])], vec![]), Some(HOLDER_COMM)).0);
        assert!(!judge(&report(vec![holding(true, vec![])], vec![]), Some(HOLDER_COMM)).0);
        // A named holder beside an orphaned signal is a false alarm.
        let mut orphan = Leak::of_holding(LeakKind::Orphaned, &holding(true, vec![]));
        orphan.pages = 256;
        let (ok, detail) = judge(&report(vec![holding(true, vec![ring])], vec![orphan]), Some(HOLDER_COMM));
        assert!(!ok && detail.contains("orphaned pages 256"), "{detail}");
    }

    #[test]
    fn other_nodes_name_no_holder() {
        assert!(judge(&report(vec![holding(false, vec![])], vec![]), None).0);
        let stray = ObjectHolder { pid: 7, comm: "x".into(), cgroup: String::new() };
        assert!(!judge(&report(vec![holding(true, vec![stray])], vec![]), None).0);
    }
}
