//! `gupwatch doctor --json`, the real binary, on the machine the tests run
//! on. Its verdicts are checked against facts read here independently of
//! gupwatch (the kprobe PMU in sysfs, the uid, tracefs in the mount table,
//! the vmstat counters) and against each other (a mechanism that failed
//! is a failed finding that quotes the kernel's error and says what to
//! do; no working mechanism means no hook and the reduced mode).
//!
//! On the machine this project is built on (no CONFIG_KPROBES, fentry
//! refused with EPERM) that makes this test check that doctor says both
//! are unavailable, and why. The VM kernels' verdicts are checked by
//! `cargo xtask test` (testsuite.rs, `judge_doctor`), in the guests.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;

fn doctor() -> (Value, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("running gupwatch doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}):\n{text}"));
    (v, out.status.code().expect("exit status"))
}

fn finding<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["findings"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["id"] == id))
        .unwrap_or_else(|| panic!("no finding {id} in {v:#}"))
}

fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn doctor_on_this_host_gives_correct_verdicts() {
    let (v, code) = doctor();
    let report = format!("{v:#}");
    println!("doctor on this host: verdict {} — {}", v["verdict"], v["summary"]);
    assert_eq!(i64::from(code), v["exit_code"].as_i64().unwrap_or(-1), "the process status is the report's\n{report}");
    let expected_code = match v["verdict"].as_str() {
        Some("full") => 0,
        Some("partial") | Some("reduced") => 1,
        Some("cannot_run") => 2,
        other => panic!("unknown verdict {other:?}"),
    };
    assert_eq!(code, expected_code, "{report}");
    assert_eq!(v["kernel"], std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim(), "uname -r");

    // Each mechanism: the finding agrees with the trial, and a refusal is
    // explained with the kernel's own error and a fix.
    let mut works = vec![];
    for m in ["fentry", "kprobe"] {
        let trial = &v["mechanisms"][m];
        let f = finding(&v, m);
        match trial["result"].as_str() {
            Some("works") => {
                assert_eq!(f["status"], "ok", "{m}: works but not ok\n{report}");
                works.push(m);
            }
            Some("fails") => {
                assert!(f["status"] == "fail" || f["status"] == "warn", "{m}: failed but {}\n{report}", f["status"]);
                let error = trial["error"].as_str().unwrap_or_default();
                assert!(!error.is_empty(), "{m}: a refusal without the kernel's error\n{report}");
                assert!(f["detail"].as_str().unwrap_or_default().contains(error), "{m}: the detail must quote the error\n{report}");
                assert!(f["fix"].as_str().is_some_and(|x| x.len() > 20), "{m}: a refusal needs a fix\n{report}");
            }
            other => assert_eq!(other, Some("not_tried"), "{m}\n{report}"),
        }
    }

    // Independent facts.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        // No kprobe PMU: kprobes cannot work, and doctor must say why.
        assert_eq!(v["mechanisms"]["kprobe"]["result"], "fails", "{report}");
        let detail = finding(&v, "kprobe")["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("CONFIG_KPROBES"), "kprobe detail must name CONFIG_KPROBES: {detail}");
        assert!(finding(&v, "kprobe")["fix"].as_str().unwrap_or_default().contains("CONFIG_KPROBES=y"), "{report}");
    }
    if v["mechanisms"]["fentry"]["error"].as_str().is_some_and(|e| e.contains("Operation not permitted")) {
        // EPERM with the capabilities held is a policy, not a missing
        // privilege: the fix must say so rather than "use sudo".
        assert_eq!(finding(&v, "privileges")["status"], "ok", "{report}");
        let fix = finding(&v, "fentry")["fix"].as_str().unwrap_or_default();
        assert!(fix.contains("refuses BPF tracing programs"), "{fix}");
    }
    if euid() == Some(0) {
        assert!(finding(&v, "privileges")["detail"].as_str().unwrap_or_default().starts_with("running as root"), "{report}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("tracefs")) {
        assert_ne!(v["mechanisms"]["tracepoint"]["result"], "works", "{report}");
        assert!(finding(&v, "tracepoint")["detail"].as_str().unwrap_or_default().contains("tracefs is not mounted"), "{report}");
    }
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let has_counters = vmstat.contains("nr_foll_pin_acquired ");
    assert_eq!(v["reduced_mode"]["available"], has_counters, "{report}");
    assert_eq!(finding(&v, "vmstat")["status"], if has_counters { "ok" } else { "fail" }, "{report}");

    // What the mechanisms allow decides the verdict.
    let attached = v["hooks"]["attached"].as_u64().unwrap_or(0);
    if works.is_empty() && v["mechanisms"]["fentry"]["result"] == "fails" && v["mechanisms"]["kprobe"]["result"] == "fails" {
        assert_eq!(attached, 0, "{report}");
        assert_eq!(v["verdict"], if has_counters { "reduced" } else { "cannot_run" }, "{report}");
        assert_eq!(finding(&v, "probe_plan")["status"], "fail", "{report}");
        let summary = v["summary"].as_str().unwrap_or_default();
        assert!(summary.contains("fentry") && summary.contains("kprobe"), "the summary names both refusals: {summary}");
    } else if !works.is_empty() {
        assert!(attached > 0, "a working mechanism attaches hooks\n{report}");
    }
}
