//! `gupwatch doctor --json` in a kernel step: kept apart from check's
//! output by markers, and judged against what the test VMs must have.

use gup_report::doctor::{Report, Status, Trial, Verdict};

/// Marker lines around `gupwatch doctor --json` in the guest's stdout, so
/// that its JSON and `gupwatch check --json`'s stay apart.
pub const DOCTOR_BEGIN: &str = "@@gupwatch-doctor-begin@@";
/// Prefix of the line after doctor's JSON; its exit status follows, then `@@`.
pub const DOCTOR_END: &str = "@@gupwatch-doctor-end:";

/// The guest command of a kernel's step: the daemon's peak memory
/// ([`crate::rssguard`]) and `gupwatch doctor --json`, each between
/// markers, then `gupwatch check --json` (whose status is the command's).
/// One boot for all: a VM boot under TCG costs more than any of them.
pub fn kernel_step_command() -> String {
    format!(
        "{}; echo '{DOCTOR_BEGIN}'; gupwatch doctor --json; echo \"{DOCTOR_END}$?@@\"; gupwatch check --json",
        crate::rssguard::guest_command()
    )
}

/// Splits a kernel step's stdout into doctor's JSON with its exit status
/// (`None` when the markers are missing) and the rest (check's output).
pub fn split_doctor(stdout: &str) -> (Option<(String, Option<i32>)>, String) {
    let Some(b) = stdout.find(DOCTOR_BEGIN) else {
        return (None, stdout.to_string());
    };
    let after_begin = &stdout[b + DOCTOR_BEGIN.len()..];
    let Some(e) = after_begin.find(DOCTOR_END) else {
        return (None, stdout.to_string());
    };
    let json = after_begin[..e].trim().to_string();
    let rest = &after_begin[e + DOCTOR_END.len()..];
    let (status, check) = match rest.find("@@") {
        Some(i) => (rest[..i].trim().parse().ok(), &rest[i + 2..]),
        None => (None, rest),
    };
    (Some((json, status)), stdout[..b].to_string() + check)
}

/// One verdict on `gupwatch doctor --json` in a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorCheck {
    /// What must hold.
    pub what: String,
    /// Whether it does.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// Findings that must be `ok` in the test VMs: root, BTF, no lockdown,
/// the JIT, kallsyms with addresses, and every mechanism (the guests'
/// init mounts tracefs, and Debian's kernels have fentry and kprobes);
/// and `kernel`: a released Debian kernel's version must be readable.
pub const DOCTOR_OK_IN_VMS: &[&str] = &[
    "privileges",
    "kernel_btf",
    "lockdown",
    "bpf_jit",
    "kallsyms",
    "tracepoint",
    "fentry",
    "kprobe",
    "gup_functions",
    "vmstat",
    "probe_plan",
    "kernel",
];

/// Judges doctor's report from a test VM (a Debian kernel, root, no i915):
/// every check of [`DOCTOR_OK_IN_VMS`] ok, each mechanism tried and
/// working, every GUP function the kernel has hooked, i915 reported not
/// loaded, verdict `full` with exit status 0, and the kernel the one that
/// was booted.
pub fn judge_doctor(json: &str, status: Option<i32>, uname: Option<&str>) -> Vec<DoctorCheck> {
    let mut out = vec![];
    let mut push = |what: String, ok: bool, detail: String| out.push(DoctorCheck { what, ok, detail });
    let v: Report = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            let head: String = json.chars().take(300).collect();
            push("doctor printed its JSON report".into(), false, format!("{e}: {head:?}"));
            return out;
        }
    };
    push(
        "verdict full, exit status 0".into(),
        v.verdict == Verdict::Full && v.exit_code == 0 && status == Some(0),
        format!("verdict {}, exit_code {}, process status {status:?}: {}", word(&v.verdict), v.exit_code, v.summary),
    );
    if let Some(u) = uname {
        push(format!("kernel is {u}"), v.kernel == u, format!("doctor says {}", v.kernel));
    }
    for id in DOCTOR_OK_IN_VMS {
        let (ok, status, detail) = match v.finding(id) {
            Some(f) => (f.status == Status::Ok, word(&f.status), f.detail.clone()),
            None => (false, "missing".into(), "no such finding".into()),
        };
        push(format!("{id} ok"), ok, format!("{status}: {detail}"));
    }
    let i915 = v.finding("i915").map_or("", |f| f.detail.as_str());
    push("i915 reported not loaded".into(), i915.starts_with("i915 not loaded"), i915.to_string());
    let m = &v.mechanisms;
    for (name, trial) in [("tracepoint", &m.tracepoint), ("fentry", &m.fentry), ("kprobe", &m.kprobe)] {
        let (target, error) = match trial {
            Trial::Works { target } => (target.as_str(), ""),
            Trial::Fails { target, error } => (target.as_str(), error.as_str()),
            Trial::NotTried { why } => ("?", why.as_str()),
        };
        push(
            format!("{name} tried and works"),
            trial.works(),
            format!("{} on {target} {error}", trial.result()),
        );
    }
    let hooks = v.hooks.unwrap_or_default();
    let (present, attached, failed) = (hooks.present, hooks.attached, hooks.failed.len());
    // Quoted, the way doctor wrote it.
    let load_error = hooks.load_error.map(|e| serde_json::to_string(&e).unwrap_or(e));
    push(
        "every GUP function present is hooked".into(),
        present > 0 && attached == present && failed == 0 && load_error.is_none(),
        format!("{attached} of {present} attached, {failed} failed, load error {load_error:?}"),
    );
    let reduced = v.reduced_mode;
    push(
        "reduced mode available (vmstat counters)".into(),
        reduced.available,
        format!("acquired {:?} released {:?}", reduced.acquired, reduced.released),
    );
    out
}

/// A unit variant as the document spells it (`full`, `cannot_run`, `ok`).
pub fn word<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_value(x).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use crate::testsuite::report::parse_report;
    use crate::testsuite::report::tests::SAMPLE;


    #[test]
    fn doctor_and_check_outputs_stay_apart() {
        let out = format!("{DOCTOR_BEGIN}\n{{\"verdict\":\"full\"}}\n{DOCTOR_END}0@@\n{SAMPLE}\n");
        let (doctor, rest) = split_doctor(&out);
        let (json, status) = doctor.unwrap();
        assert_eq!((json.as_str(), status), ("{\"verdict\":\"full\"}", Some(0)));
        assert_eq!(parse_report(&rest).unwrap().scenarios.len(), 6, "check's JSON alone");
        let (none, same) = split_doctor(SAMPLE);
        assert!(none.is_none());
        assert_eq!(same, SAMPLE);
        // A doctor that died before the end marker: no doctor, all kept.
        assert!(split_doctor(&format!("{DOCTOR_BEGIN}\n{{")).0.is_none());
        let cmd = kernel_step_command();
        assert!(cmd.contains("gupwatch doctor --json") && cmd.ends_with("gupwatch check --json"), "{cmd}");
    }

    /// Doctor's JSON (schema 1) as a healthy guest gives it.
    fn healthy_doctor() -> Value {
        let ok = |id: &str| serde_json::json!({"id": id, "status": "ok", "detail": "fine", "fix": null});
        let mut findings: Vec<Value> = DOCTOR_OK_IN_VMS.iter().map(|id| ok(id)).collect();
        findings.push(serde_json::json!({"id": "i915", "status": "info", "detail": "i915 not loaded: its hooks attach if the module appears", "fix": null}));
        serde_json::json!({
            "schema": 1, "gupwatch_version": "0.1.0", "kernel": "7.2.0-1-cloud-amd64", "verdict": "full", "exit_code": 0, "summary": "s",
            "findings": findings,
            "mechanisms": {
                "tracepoint": {"result": "works", "target": "sched_process_exit"},
                "fentry": {"result": "works", "target": "unpin_user_page"},
                "kprobe": {"result": "works", "target": "unpin_user_page"}
            },
            "hooks": {"present": 19, "attached": 19, "fentry": 18, "kprobe": 1, "failed": [], "absent": [], "load_error": null},
            "reduced_mode": {"available": true, "acquired": 10, "released": 10, "error": null}
        })
    }

    #[test]
    fn doctor_verdicts_in_vms() {
        let good = healthy_doctor().to_string();
        let c = judge_doctor(&good, Some(0), Some("7.2.0-1-cloud-amd64"));
        assert!(c.iter().all(|c| c.ok), "{c:#?}");
        assert!(c.len() >= DOCTOR_OK_IN_VMS.len() + 6);
        let failed = |v: Value, status: Option<i32>| -> Vec<String> {
            judge_doctor(&v.to_string(), status, Some("7.2.0-1-cloud-amd64")).into_iter().filter(|c| !c.ok).map(|c| c.what).collect()
        };
        let mut v = healthy_doctor();
        v["mechanisms"]["fentry"] = serde_json::json!({"result": "fails", "target": "x", "error": "EPERM"});
        v["findings"][6]["status"] = "fail".into();
        v["verdict"] = "partial".into();
        assert_eq!(failed(v, Some(1)), ["verdict full, exit status 0", "fentry ok", "fentry tried and works"]);
        let mut v = healthy_doctor();
        v["hooks"]["attached"] = 18.into();
        v["findings"][DOCTOR_OK_IN_VMS.len()]["detail"] = "i915 loaded: ...".into();
        assert_eq!(failed(v, Some(0)), ["i915 reported not loaded", "every GUP function present is hooked"]);
        assert_eq!(failed(healthy_doctor(), None), ["verdict full, exit status 0"], "the process status counts too");
        let c = judge_doctor("gupwatch: error: boom", Some(2), None);
        assert_eq!(c.len(), 1);
        assert!(!c[0].ok && c[0].detail.contains("boom"));
    }
}
