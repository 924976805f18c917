//! The reduced mode's owners, checked in the live-test guest: while
//! `aa-holder` (`gupwatch workload --hold`) holds a registered 1 MiB
//! io_uring buffer, `gupwatch --reduced` (no probes loaded) must name it
//! from what the kernel accounts: in `--plain` output, in the live view
//! (`gupwatch top --reduced` in tmux), and in a `gupwatch run --reduced`
//! daemon's `/metrics` and `/api/snapshot`.
//!
//! The guest part ([`GUEST_PART`]) runs inside [`crate::livetest`]'s
//! script, after its own steps and while the holder still holds; the
//! captures come back between `@@capture NAME@@` markers and are judged
//! here ([`judge`]), on the host.

use std::collections::BTreeMap;

use gup_report::{Mode, SnapshotReport};

use crate::e2e::Check;
use crate::livetest::HOLDER;

/// Pages of the holder's buffer (1 MiB of 4 KiB pages).
pub const HOLDER_PAGES: u64 = 256;

/// Where the reduced daemon listens in the guest (beside the live test's).
pub const REDUCED_PORT: u16 = 10491;

/// Shell lines for the live-test guest script (`@HOLDER@`, `@COLS@` and
/// `@ROWS@` are replaced with it; `$W2` is the holder's pid, `$T` tmux,
/// `cap` and `waitfor` its helpers).
pub const GUEST_PART: &str = r#"# The reduced mode, forced with --reduced, names the holder from /proc.
echo "@@capture reduced-plain@@"
echo "holder-pid $W2"
gupwatch --reduced --plain --count 2 2>/tmp/reduced.err
echo "exit-status $?"
echo "@@end reduced-plain@@"
gupwatch run --reduced --listen 127.0.0.1:@REDUCED_PORT@ 2>/tmp/reduced-run.err &
R2=$!
i=0
until timeout 5 wget -q -O /tmp/reduced.metrics http://127.0.0.1:@REDUCED_PORT@/metrics 2>/dev/null; do
    i=$((i+1)); [ $i -gt 120 ] && break; sleep 0.5
done
echo "@@capture reduced-metrics@@"; echo "holder-pid $W2"; grep '^gupwatch_accounted' /tmp/reduced.metrics; echo "@@end reduced-metrics@@"
timeout 5 wget -q -O /tmp/reduced.json http://127.0.0.1:@REDUCED_PORT@/api/snapshot
echo "@@capture reduced-snapshot@@"; echo "holder-pid $W2"; cat /tmp/reduced.json; echo; echo "@@end reduced-snapshot@@"
kill -TERM $R2
$T new-session -d -s red -x @COLS@ -y @ROWS@ sh -c 'gupwatch top --reduced; echo RESTORED:$?; exec sleep 100000'
waitfor red ' @HOLDER@ ' 60
echo "@@capture reduced-tui@@"; echo "holder-pid $W2"; $T capture-pane -p -t red; echo "@@end reduced-tui@@"
$T send-keys -t red q
waitfor red RESTORED: 30
echo "live: reduced mode checked ($(up) s)" >&2
"#;

/// The guest part with its port filled in.
pub fn guest_part() -> String {
    GUEST_PART.replace("@REDUCED_PORT@", &REDUCED_PORT.to_string())
}

fn check(name: &str, ok: bool, detail: String) -> Check {
    Check { name: format!("reduced mode: {name}"), expr: None, ok, detail }
}

/// The holder's pid, from the `holder-pid N` line the guest printed.
fn holder_pid(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.trim().strip_prefix("holder-pid ")?.trim().parse().ok())
}

/// Accounted-table rows (`PID COMM PINNED_PAGES ...` in `--plain`, the
/// same first three columns on the live view's screen) of `pid` named
/// HOLDER: their pinned pages.
fn holder_rows(text: &str, pid: u32) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|t| t.len() >= 3 && t[0] == pid.to_string() && t[1] == HOLDER)
        .collect()
}

fn number(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn quoted(text: &str) -> String {
    text.lines().take(40).map(|l| format!("\n    | {l}")).collect()
}

/// Judges the captures of [`GUEST_PART`].
pub fn judge(caps: &BTreeMap<String, String>) -> Vec<Check> {
    let mut out = vec![];
    let get = |k: &str| caps.get(k).map(String::as_str).unwrap_or("");
    // --plain: two intervals, each listing the holder with its pages.
    let plain = get("reduced-plain");
    match holder_pid(plain) {
        None => out.push(check("--plain names the holder", false, format!("no capture or no holder pid:{}", quoted(plain)))),
        Some(pid) => {
            let rows = holder_rows(plain, pid);
            // PID COMM PINNED_PAGES VMPIN VMLCK URING_BUFS URING_PAGES
            let good = rows
                .iter()
                .filter(|t| t.len() == 7 && number(&t[2]).is_some_and(|p| p >= HOLDER_PAGES) && number(&t[6]) == Some(HOLDER_PAGES))
                .count();
            out.push(check(
                &format!("--plain --count 2 lists {HOLDER} (pid {pid}) with >= {HOLDER_PAGES} pinned pages and its {HOLDER_PAGES}-page io_uring buffer, each interval"),
                good == 2,
                format!("{good} of 2 intervals:{}", quoted(plain)),
            ));
            out.push(check(
                "--plain labels it accounted, not traced, and exits 0",
                plain.contains("not traced") && plain.contains("exit-status 0"),
                quoted(plain),
            ));
        }
    }
    // The live view.
    let tui = get("reduced-tui");
    let tui_ok = holder_pid(tui).is_some_and(|pid| {
        holder_rows(tui, pid).iter().any(|t| number(&t[2]).is_some_and(|p| p >= HOLDER_PAGES))
    });
    out.push(check(
        &format!("gupwatch top --reduced shows {HOLDER}'s row with its pinned pages"),
        tui_ok && tui.contains("Accounted pinned memory"),
        quoted(tui),
    ));
    // /metrics of run --reduced.
    let metrics = get("reduced-metrics");
    let metric_ok = holder_pid(metrics).is_some_and(|pid| {
        let series = format!("gupwatch_accounted_pinned_bytes{{pid=\"{pid}\",comm=\"{HOLDER}\"}} ");
        let uring = format!("gupwatch_accounted_io_uring_buffer_bytes{{pid=\"{pid}\",comm=\"{HOLDER}\"}} ");
        let value = |prefix: &str| {
            metrics.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
        };
        value(&series).is_some_and(|v| v >= (HOLDER_PAGES * 4096) as f64) && value(&uring) == Some((HOLDER_PAGES * 4096) as f64)
    });
    out.push(check(
        &format!("run --reduced: /metrics has gupwatch_accounted_pinned_bytes and _io_uring_buffer_bytes of {HOLDER}"),
        metric_ok,
        quoted(metrics),
    ));
    // /api/snapshot of run --reduced.
    let snap = get("reduced-snapshot");
    // The document is pretty-printed: from its first brace to its last.
    let json = match (snap.find('{'), snap.rfind('}')) {
        (Some(a), Some(b)) if a < b => &snap[a..=b],
        _ => "",
    };
    let parsed = serde_json::from_str::<SnapshotReport>(json);
    let snap_ok = holder_pid(snap).is_some_and(|pid| {
        parsed.as_ref().is_ok_and(|v| {
            v.mode == Mode::Reduced
                && v.accounted.as_ref().is_some_and(|a| {
                    a.source == "accounted"
                        && a.holders.iter().any(|h| {
                            h.pid == pid && h.comm == HOLDER && h.io_uring_pages == HOLDER_PAGES && h.io_uring_buffers == 1
                        })
                })
        })
    });
    out.push(check(
        &format!("run --reduced: /api/snapshot's accounted holders list {HOLDER}"),
        snap_ok,
        match &parsed {
            // Through a Value, whose maps sort their keys: the detail shows
            // the fields as the snapshot's JSON object does.
            Ok(v) => serde_json::to_value(&v.accounted).map(|v| v.to_string()).unwrap_or_default(),
            Err(e) => format!("not JSON ({e}): {}", json.chars().take(300).collect::<String>()),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> BTreeMap<String, String> {
        let table = "accounted pinned memory (kernel per-process charges from /proc/PID/status VmPin/VmLck and io_uring fdinfo; not traced): 1 holders of 30 processes\n\
                     \x20    PID COMM             PINNED_PAGES     VMPIN     VMLCK URING_BUFS URING_PAGES\n\
                     \x20    200 aa-holder                 256      1.0M         0          1         256\n";
        let plain = format!("holder-pid 200\nreduced mode: ...\n{table}{table}since start: 0 pins acquired, 0 released\nexit-status 0\n");
        let metrics = "holder-pid 200\ngupwatch_accounted_pinned_bytes{pid=\"200\",comm=\"aa-holder\"} 1048576\n\
                       gupwatch_accounted_io_uring_buffer_bytes{pid=\"200\",comm=\"aa-holder\"} 1048576\n";
        // Pretty-printed, as the daemon sends it.
        let doc = serde_json::json!({"kernel": "6.1.0-test", "mode": "reduced", "accounted": {"source": "accounted", "holders": [{"pid": 200, "comm": "aa-holder",
            "pinned_bytes": 1048576, "pinned_pages": 256, "vm_pin_bytes": 0, "locked_bytes": 0, "io_uring_buffers": 1,
            "io_uring_bytes": 1048576, "io_uring_pages": 256}]}});
        let snap = format!("holder-pid 200\n{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default());
        let tui = "holder-pid 200\n Accounted pinned memory · kernel charges, not traced · 1 holders\n PID COMM ...\n     200 aa-holder         256    1.0M       0     1      256\n";
        [("reduced-plain", plain.as_str()), ("reduced-metrics", metrics), ("reduced-snapshot", snap.as_str()), ("reduced-tui", tui)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_good_run_passes() {
        for c in judge(&good()) {
            assert!(c.ok, "{}: {}", c.name, c.detail);
        }
    }

    #[test]
    fn the_snapshot_detail_is_the_accounted_object() {
        let c = judge(&good());
        let snap = c.iter().find(|c| c.name.contains("/api/snapshot")).unwrap();
        // As the snapshot's JSON has it, keys in alphabetical order.
        assert!(snap.detail.starts_with(r#"{"fds":"#), "{}", snap.detail);
        assert!(snap.detail.contains(r#""comm":"aa-holder","io_uring_buffers":1,"#), "{}", snap.detail);
    }

    #[test]
    fn each_breakage_fails() {
        let broken = |k: &str, from: &str, to: &str| {
            let mut caps = good();
            let v = caps[k].replace(from, to);
            caps.insert(k.into(), v);
            judge(&caps).iter().filter(|c| !c.ok).count()
        };
        assert_eq!(broken("reduced-plain", "1         256\n", "0           0\n"), 1, "no buffer listed");
        assert_eq!(broken("reduced-plain", "holder-pid 200", "holder-pid 201"), 1, "another pid");
        assert_eq!(broken("reduced-plain", "exit-status 0", "exit-status 2"), 1);
        assert_eq!(broken("reduced-metrics", "} 1048576\ngupwatch_accounted_io", "} 4096\ngupwatch_accounted_io"), 1);
        assert_eq!(broken("reduced-snapshot", "\"io_uring_pages\": 256", "\"io_uring_pages\": 1"), 1);
        assert_eq!(broken("reduced-tui", "aa-holder", "zz-pinner"), 1);
        assert_eq!(judge(&BTreeMap::new()).iter().filter(|c| !c.ok).count(), 4, "nothing captured: every check fails");
    }

    #[test]
    fn the_guest_part_fits_the_live_script() {
        let s = crate::livetest::guest_command(100);
        for want in ["gupwatch --reduced --plain --count 2", "gupwatch run --reduced --listen 127.0.0.1:10491", "gupwatch top --reduced", "waitfor red ' aa-holder ' 60"] {
            assert!(s.contains(want), "{want}");
        }
        assert!(!s.contains("@REDUCED"), "placeholders replaced");
    }
}
