//! `gupwatch doctor --json` in a kernel step: kept apart from check's
//! output by markers, and judged against what the test VMs must have.

use serde::Deserialize;

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
    let v: DoctorJson = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            let head: String = json.chars().take(300).collect();
            push("doctor printed its JSON report".into(), false, format!("{e}: {head:?}"));
            return out;
        }
    };
    let s = |x: &Option<String>| x.as_deref().unwrap_or("?").to_string();
    push(
        "verdict full, exit status 0".into(),
        s(&v.verdict) == "full" && v.exit_code == Some(0) && status == Some(0),
        format!("verdict {}, exit_code {:?}, process status {status:?}: {}", s(&v.verdict), v.exit_code, s(&v.summary)),
    );
    if let Some(u) = uname {
        push(format!("kernel is {u}"), s(&v.kernel) == u, format!("doctor says {}", s(&v.kernel)));
    }
    for id in DOCTOR_OK_IN_VMS {
        let (status, detail) = match v.finding(id) {
            Some(f) => (s(&f.status), f.detail.clone().unwrap_or_default()),
            None => ("missing".into(), "no such finding".into()),
        };
        push(format!("{id} ok"), status == "ok", format!("{status}: {detail}"));
    }
    let i915 = v.finding("i915").and_then(|f| f.detail.as_deref()).unwrap_or("");
    push("i915 reported not loaded".into(), i915.starts_with("i915 not loaded"), i915.to_string());
    for m in ["tracepoint", "fentry", "kprobe"] {
        let mech = v.mechanisms.get(m);
        let r = mech.map_or_else(|| "?".to_string(), |x| s(&x.result));
        push(
            format!("{m} tried and works"),
            r == "works",
            format!(
                "{r} on {} {}",
                mech.map_or_else(|| "?".to_string(), |x| s(&x.target)),
                mech.and_then(|x| x.error.as_deref()).unwrap_or("")
            ),
        );
    }
    let hooks = v.hooks.unwrap_or_default();
    let (present, attached) = (hooks.present.unwrap_or(0), hooks.attached.unwrap_or(0));
    let failed = hooks.failed.as_ref().map_or(usize::MAX, Vec::len);
    // Quoted, the way doctor wrote it.
    let load_error = hooks.load_error.map(|e| serde_json::to_string(&e).unwrap_or(e));
    push(
        "every GUP function present is hooked".into(),
        present > 0 && attached == present && failed == 0 && load_error.is_none(),
        format!("{attached} of {present} attached, {failed} failed, load error {load_error:?}"),
    );
    let reduced = v.reduced_mode.unwrap_or_default();
    push(
        "reduced mode available (vmstat counters)".into(),
        reduced.available == Some(true),
        format!("acquired {:?} released {:?}", reduced.acquired, reduced.released),
    );
    out
}

/// `gupwatch doctor --json` (schema 1, `gup-user/src/doctor`): the fields
/// the suite and the canary read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DoctorJson {
    /// `full`, `partial`, ...
    pub verdict: Option<String>,
    /// The exit status doctor chose.
    pub exit_code: Option<u64>,
    /// One line for people.
    pub summary: Option<String>,
    /// `uname -r`.
    pub kernel: Option<String>,
    /// One per check.
    pub findings: Vec<Finding>,
    /// Each attach mechanism, tried.
    pub mechanisms: std::collections::BTreeMap<String, Mechanism>,
    /// The GUP functions' hooks.
    pub hooks: Option<Hooks>,
    /// The vmstat counters of reduced mode.
    pub reduced_mode: Option<ReducedMode>,
}

impl DoctorJson {
    /// The finding with this id.
    pub fn finding(&self, id: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.id.as_deref() == Some(id))
    }
}

/// One finding of doctor.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Finding {
    /// `privileges`, `kernel_btf`, ...
    pub id: Option<String>,
    /// `ok`, `warn`, `fail`, `info`.
    pub status: Option<String>,
    /// What was found.
    pub detail: Option<String>,
}

/// One attach mechanism as doctor tried it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Mechanism {
    /// `works`, `fails`, ...
    pub result: Option<String>,
    /// What it attached to.
    pub target: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Doctor's hooks section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Hooks {
    /// GUP functions the kernel has.
    pub present: Option<u64>,
    /// Of those, attached.
    pub attached: Option<u64>,
    /// Those that failed to attach.
    pub failed: Option<Vec<serde::de::IgnoredAny>>,
    /// Why the eBPF object did not load, if it did not.
    pub load_error: Option<String>,
}

/// Doctor's reduced-mode section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReducedMode {
    /// The vmstat counters are readable.
    pub available: Option<bool>,
    /// `nr_foll_pin_acquired`.
    pub acquired: Option<u64>,
    /// `nr_foll_pin_released`.
    pub released: Option<u64>,
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
            "schema": 1, "kernel": "7.2.0-1-cloud-amd64", "verdict": "full", "exit_code": 0, "summary": "s",
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
