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

use gup_report::doctor::{Finding, Report, Status, Trial, Verdict};

fn doctor() -> (Report, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("running gupwatch doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("doctor --json is not its document ({e}):\n{text}"));
    (v, out.status.code().expect("exit status"))
}

fn finding<'a>(v: &'a Report, id: &str) -> &'a Finding {
    v.findings.iter().find(|f| f.id == id).unwrap_or_else(|| panic!("no finding {id} in {v:#?}"))
}

/// The kernel's error of a refused trial.
fn refusal(t: &Trial) -> Option<&str> {
    match t {
        Trial::Fails { error, .. } => Some(error),
        _ => None,
    }
}

fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn doctor_on_this_host_gives_correct_verdicts() {
    let (v, code) = doctor();
    let report = format!("{v:#?}");
    println!("doctor on this host: verdict {:?} — {}", v.verdict, v.summary);
    assert_eq!(i64::from(code), i64::from(v.exit_code), "the process status is the report's\n{report}");
    let expected_code = match v.verdict {
        Verdict::Full => 0,
        Verdict::Partial | Verdict::Reduced => 1,
        Verdict::CannotRun => 2,
    };
    assert_eq!(code, expected_code, "{report}");
    assert_eq!(v.kernel, std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim(), "uname -r");

    // Each mechanism: the finding agrees with the trial, and a refusal is
    // explained with the kernel's own error and a fix.
    let mut works = vec![];
    for (m, trial) in [("fentry", &v.mechanisms.fentry), ("kprobe", &v.mechanisms.kprobe)] {
        let f = finding(&v, m);
        match trial {
            Trial::Works { .. } => {
                assert_eq!(f.status, Status::Ok, "{m}: works but not ok\n{report}");
                works.push(m);
            }
            Trial::Fails { error, .. } => {
                assert!(matches!(f.status, Status::Fail | Status::Warn), "{m}: failed but {:?}\n{report}", f.status);
                assert!(!error.is_empty(), "{m}: a refusal without the kernel's error\n{report}");
                assert!(f.detail.contains(error.as_str()), "{m}: the detail must quote the error\n{report}");
                assert!(f.fix.as_ref().is_some_and(|x| x.len() > 20), "{m}: a refusal needs a fix\n{report}");
            }
            Trial::NotTried { .. } => {}
        }
    }

    // Independent facts.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        // No kprobe PMU: kprobes cannot work, and doctor must say why.
        assert!(matches!(v.mechanisms.kprobe, Trial::Fails { .. }), "{report}");
        let detail = &finding(&v, "kprobe").detail;
        assert!(detail.contains("CONFIG_KPROBES"), "kprobe detail must name CONFIG_KPROBES: {detail}");
        assert!(finding(&v, "kprobe").fix.as_deref().unwrap_or_default().contains("CONFIG_KPROBES=y"), "{report}");
    }
    if refusal(&v.mechanisms.fentry).is_some_and(|e| e.contains("Operation not permitted")) {
        // EPERM with the capabilities held is a policy, not a missing
        // privilege: the fix must say so rather than "use sudo".
        assert_eq!(finding(&v, "privileges").status, Status::Ok, "{report}");
        let fix = finding(&v, "fentry").fix.as_deref().unwrap_or_default();
        assert!(fix.contains("refuses BPF tracing programs"), "{fix}");
    }
    if euid() == Some(0) {
        assert!(finding(&v, "privileges").detail.starts_with("running as root"), "{report}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("tracefs")) {
        assert!(!v.mechanisms.tracepoint.works(), "{report}");
        assert!(finding(&v, "tracepoint").detail.contains("tracefs is not mounted"), "{report}");
    }
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let has_counters = vmstat.contains("nr_foll_pin_acquired ");
    assert_eq!(v.reduced_mode.available, has_counters, "{report}");
    assert_eq!(finding(&v, "vmstat").status, if has_counters { Status::Ok } else { Status::Fail }, "{report}");

    // What the mechanisms allow decides the verdict.
    let attached = v.hooks.as_ref().map_or(0, |h| h.attached);
    if works.is_empty() && refusal(&v.mechanisms.fentry).is_some() && refusal(&v.mechanisms.kprobe).is_some() {
        assert_eq!(attached, 0, "{report}");
        assert_eq!(v.verdict, if has_counters { Verdict::Reduced } else { Verdict::CannotRun }, "{report}");
        assert_eq!(finding(&v, "probe_plan").status, Status::Fail, "{report}");
        assert!(v.summary.contains("fentry") && v.summary.contains("kprobe"), "the summary names both refusals: {}", v.summary);
    } else if !works.is_empty() {
        assert!(attached > 0, "a working mechanism attaches hooks\n{report}");
    }
}
