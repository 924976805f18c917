//! The step of `cargo xtask test` for a kernel older than the matrix:
//! Debian bullseye's 5.10 ([`kernels::BEYOND`]), which lacks `bpf_loop`
//! and `bpf_get_func_arg`. Its verifier refuses gupwatch's programs with
//! messages that name neither, so gupwatch must find out itself: `gupwatch
//! doctor` names the missing helpers and says REDUCED, and `gupwatch run`
//! attaches nothing and serves the kernel's FOLL_PIN counters (the reduced
//! mode) instead of a half-attached data plane whose counts would be wrong.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::vm::kernels::{self, Flavour};
use crate::vm::VmRun;
use crate::util;

/// Between doctor's JSON and what follows it in the guest's stdout.
const DOCTOR_END: &str = "@@beyond-doctor-exit:";
/// Before the metrics `gupwatch run` served.
const METRICS_BEGIN: &str = "@@beyond-metrics@@";

/// What the guest runs: doctor, then `gupwatch run` until /metrics answers.
fn command() -> String {
    format!(
        r#"gupwatch doctor --json; echo "{DOCTOR_END}$?@@"
gupwatch run --listen 127.0.0.1:9477 2>/tmp/run.err &
RUN=$!
i=0
while ! timeout 5 wget -q -O /tmp/metrics http://127.0.0.1:9477/metrics 2>/dev/null; do
    i=$((i+1)); [ $i -gt 120 ] && break; kill -0 $RUN 2>/dev/null || break; sleep 0.5
done
echo '{METRICS_BEGIN}'; cat /tmp/metrics 2>/dev/null
kill $RUN 2>/dev/null; wait $RUN; echo "run exit $?"; cat /tmp/run.err >&2"#
    )
}

/// The parts of `gupwatch doctor --json` this step reads.
#[derive(Debug, Deserialize)]
struct Doctor {
    verdict: String,
    exit_code: i32,
    findings: Vec<Finding>,
}

#[derive(Debug, Deserialize)]
struct Finding {
    id: String,
    status: String,
    detail: String,
}

/// The step's verdicts.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Checks that passed.
    pub passed: usize,
    /// One line per failed check.
    pub failures: Vec<String>,
}

impl Outcome {
    fn check(&mut self, what: &str, ok: bool, detail: String) {
        println!("  {}  {what:<52} {detail}", if ok { "PASS" } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(format!("5.10: {what}: {detail}"));
        }
    }
}

/// Judges the guest's stdout (pure; unit-tested).
pub fn judge(stdout: &str) -> Outcome {
    let mut out = Outcome::default();
    let (doctor_json, rest) = stdout.split_once(DOCTOR_END).unwrap_or((stdout, ""));
    let metrics = rest.split_once(METRICS_BEGIN).map_or("", |(_, m)| m);
    match serde_json::from_str::<Doctor>(doctor_json.trim()) {
        Ok(d) => {
            out.check(
                "doctor: verdict reduced, exit code 1",
                d.verdict == "reduced" && d.exit_code == 1,
                format!("verdict {}, exit code {}", d.verdict, d.exit_code),
            );
            let h = d.findings.iter().find(|f| f.id == "bpf_helpers");
            out.check(
                "doctor names bpf_loop and bpf_get_func_arg",
                h.is_some_and(|f| f.status == "fail" && f.detail.contains("bpf_loop") && f.detail.contains("bpf_get_func_arg")),
                h.map_or("no bpf_helpers finding".into(), |f| format!("{}: {}", f.status, f.detail)),
            );
        }
        Err(e) => out.check("doctor printed its JSON report", false, format!("{e}")),
    }
    let value = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    out.check(
        "run serves the kernel's FOLL_PIN counters",
        value("gupwatch_kernel_foll_pin_acquired_total ").is_some(),
        format!("gupwatch_kernel_foll_pin_acquired_total {:?}", value("gupwatch_kernel_foll_pin_acquired_total ")),
    );
    // One series per hook; the reduced mode has them all at 0.
    let hooks: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("gupwatch_probe_attached{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    out.check(
        "run attaches no probe (reduced mode)",
        !hooks.is_empty() && hooks.iter().all(|v| *v == 0.0),
        format!("{} of {} gupwatch_probe_attached series at 1", hooks.iter().filter(|v| **v != 0.0).count(), hooks.len()),
    );
    out
}

/// Boots 5.10 and judges doctor and run there.
pub fn run(gupwatch: &Path, timeout: Duration) -> Result<Outcome> {
    let alias = kernels::BEYOND[0];
    let cache = util::cache_dir()?;
    let kernel = kernels::ensure(&cache, alias, Flavour::Cloud, false)
        .map(|m| m.boot_kernel(&cache))
        .with_context(|| format!("fetching kernel {}", alias.name))?;
    let outcome = VmRun::test_step(kernel, command(), gupwatch, timeout, format!("test {}", alias.name)).run()?;
    println!("{}", outcome.summary(alias.name));
    Ok(judge(&String::from_utf8_lossy(&outcome.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCTOR: &str = r#"{"verdict":"reduced","exit_code":1,"findings":[{"id":"bpf_helpers","status":"fail","detail":"this kernel lacks BPF helpers gupwatch's programs call: bpf_loop (Linux 5.17+), bpf_get_func_arg (Linux 5.17+)"}]}"#;

    #[test]
    fn judges_doctor_and_run() {
        let good = format!(
            "{DOCTOR}\n{DOCTOR_END}1@@\n{METRICS_BEGIN}\ngupwatch_probe_attached{{function=\"pin_user_pages\",mechanism=\"none\"}} 0\ngupwatch_kernel_foll_pin_acquired_total 12\n"
        );
        let o = judge(&good);
        assert!(o.failures.is_empty() && o.passed == 4, "{o:?}");
        // A half-attached data plane (what 5.10 did before) fails.
        let o = judge(&good.replace("\"none\"} 0", "\"kprobe\"} 1"));
        assert_eq!(o.failures.len(), 1, "{o:?}");
        // So does a doctor that claims more than reduced.
        let o = judge(&good.replace("\"reduced\"", "\"partial\""));
        assert_eq!(o.failures.len(), 1, "{o:?}");
        // And no output at all fails every check that reads it.
        assert_eq!(judge("").failures.len(), 3);
    }
}
