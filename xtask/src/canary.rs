//! The canary: the newest kernel Debian's archive has, usually a release
//! candidate in experimental, run through the matrix's kernel step
//! (`gupwatch doctor --json`, `gupwatch check --json` in one VM).
//!
//! Issue 21: gupwatch crashed on 7.3-rc7 weeks before 7.3 could reach sid.
//! A pre-release kernel may legitimately lose or rename GUP functions, so
//! the canary judges only what must hold on any kernel: gupwatch does not
//! panic (exit status 101, or 70 from its panic hook), and the guest kernel
//! reports no oops, BUG or WARNING (the VM harness stops on those). What
//! differs from the matrix (hooks, exactness, doctor's verdict) is printed
//! as a report, not counted.
//!
//! The kernel is resolved from experimental's package lists at set-up
//! (never hard-coded) and used only when its package version is newer than
//! sid's; otherwise the step is skipped, and says why.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gup_report::doctor::Report;
use serde::{Deserialize, Serialize};

use crate::debversion;
use crate::vm::kernels::{self, BootKernel, Flavour, KernelAlias, Manifest};
use crate::say;
use crate::testsuite::{self, KernelRun};
use crate::util;

/// The canary's alias (`cargo xtask vm --kernel canary`) and suite.
pub const ALIAS: KernelAlias = KernelAlias {
    name: "canary",
    suite: "experimental",
};

/// Exit statuses of a gupwatch that panicked: Rust's default, and
/// EX_SOFTWARE from gupwatch's own panic hook.
pub const PANIC_STATUSES: [i32; 2] = [101, 70];

/// The canary kernel, or why there is none.
#[derive(Debug, Clone)]
pub enum Canary {
    /// Fetched and newer than sid's kernel.
    Ready {
        /// Its manifest.
        manifest: Manifest,
        /// Sid's package version it is newer than.
        sid_version: String,
    },
    /// Not run, and why.
    Skipped(String),
}

/// A remembered "nothing newer in experimental", so that a set-up rerun
/// does no network access (like the matrix's cached kernels).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SkipRecord {
    /// Sid's package version when it was decided.
    sid_version: String,
    /// Why.
    reason: String,
}

fn skip_path(cache: &Path) -> PathBuf {
    cache.join("kernels").join("canary-skip.json")
}

/// Whether experimental's package version is newer than sid's (Debian
/// ordering: `7.3~rc7-1~exp1` > `7.2.13-1`, but < `7.3.1-1`).
pub fn is_newer(experimental: &str, sid: &str) -> bool {
    debversion::compare(experimental, sid).is_gt()
}

/// Resolves the canary: sid's kernel first (the one to beat), then
/// experimental's newest cloud kernel, fetched when newer. Without
/// `refresh`, a cached answer (kernel or skip) is reused with no network
/// access.
pub fn ensure(cache: &Path, refresh: bool) -> Result<Canary> {
    let sid_alias = kernels::MATRIX[kernels::MATRIX.len() - 1];
    // The cached manifest when there is one: setup has just printed it.
    let sid = match Manifest::load(cache, sid_alias.name, Flavour::Cloud).filter(|_| !refresh) {
        Some(m) => m,
        None => kernels::ensure(cache, sid_alias, Flavour::Cloud, refresh).with_context(|| {
            format!("fetching sid's kernel ({}), the one the canary must be newer than", sid_alias.name)
        })?,
    };
    let existing = Manifest::load(cache, ALIAS.name, Flavour::Cloud);
    let skip_file = skip_path(cache);
    if !refresh {
        if let Some(m) = &existing {
            if is_newer(&m.package_version, &sid.package_version) {
                say!("setup", "kernel canary: {} ({}, cached)", m.uname, m.package_version);
                return Ok(Canary::Ready { manifest: m.clone(), sid_version: sid.package_version });
            }
            return Ok(Canary::Skipped(format!(
                "the cached experimental kernel {} ({}) is not newer than sid's {} ({}); `cargo xtask setup --refresh` looks again",
                m.uname, m.package_version, sid.uname, sid.package_version
            )));
        }
        let record = fs::read_to_string(&skip_file)
            .ok()
            .and_then(|t| serde_json::from_str::<SkipRecord>(&t).ok());
        if let Some(r) = record.filter(|r| r.sid_version == sid.package_version) {
            return Ok(Canary::Skipped(format!("{} (cached; `cargo xtask setup --refresh` looks again)", r.reason)));
        }
    }
    let choice = kernels::newest_in_suite(cache, ALIAS.suite, Flavour::Cloud)?;
    let reason = match &choice {
        None => "Debian experimental has no cloud-amd64 kernel packages now".to_string(),
        Some(c) if !is_newer(&c.version, &sid.package_version) => format!(
            "experimental's newest cloud kernel, {} ({}), is not newer than sid's {} ({})",
            c.uname(Flavour::Cloud),
            c.version,
            sid.uname,
            sid.package_version
        ),
        Some(c) => {
            let manifest = kernels::install(cache, ALIAS, Flavour::Cloud, c, existing.as_ref())?;
            let _ = fs::remove_file(&skip_file);
            return Ok(Canary::Ready { manifest, sid_version: sid.package_version });
        }
    };
    say!("setup", "kernel canary: skipped: {reason}");
    let record = SkipRecord { sid_version: sid.package_version.clone(), reason: reason.clone() };
    if let Some(dir) = skip_file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&skip_file, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", skip_file.display()))?;
    // A kernel fetched earlier is stale now; it must not be booted by name.
    if existing.is_some() {
        let dir = cache.join("kernels").join(ALIAS.name);
        let _ = fs::remove_file(dir.join("manifest.json"));
    }
    Ok(Canary::Skipped(reason))
}

/// The canary kernel for `cargo xtask vm --kernel canary`.
pub fn boot_kernel() -> Result<BootKernel> {
    let cache = util::cache_dir()?;
    match ensure(&cache, false)? {
        Canary::Ready { manifest, .. } => Ok(manifest.boot_kernel(&cache)),
        Canary::Skipped(why) => anyhow::bail!("there is no canary kernel: {why}"),
    }
}

pub use crate::util::Check;

/// What the canary step found.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// The kernel, for the log (`7.3-cloud-amd64 (Debian experimental
    /// 7.3~rc7-1~exp1; sid has 7.2.13-1)`).
    pub kernel: Option<String>,
    /// Pass/fail verdicts: no panic, no kernel problem.
    pub checks: Vec<Check>,
    /// Differences from the matrix, reported only.
    pub notes: Vec<String>,
    /// Set when the step did not run.
    pub skipped: Option<String>,
}

impl StepReport {
    /// Failed checks.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }
}

/// Resolves the canary (from the cache unless `refresh`) and runs the
/// kernel step on it. Errors only for an interrupt or a set-up failure;
/// everything the VM shows is in the report.
pub fn run(gupwatch: &Path, timeout: Duration, refresh: bool) -> Result<StepReport> {
    let cache = util::cache_dir()?;
    let (manifest, sid_version) = match ensure(&cache, refresh)? {
        Canary::Ready { manifest, sid_version } => (manifest, sid_version),
        Canary::Skipped(why) => {
            println!("SKIPPED: no kernel newer than sid's: {why}");
            return Ok(StepReport { skipped: Some(why), ..StepReport::default() });
        }
    };
    let kernel = format!(
        "{} (Debian {} {}; sid has {sid_version})",
        manifest.uname, manifest.suite, manifest.package_version
    );
    println!("canary kernel: {kernel}");
    let mut report = StepReport { kernel: Some(kernel), ..StepReport::default() };
    match testsuite::run_kernel_step(manifest.boot_kernel(&cache), ALIAS.name, gupwatch, timeout) {
        Ok(run) => judge(&run, &manifest.uname, &mut report),
        Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => return Err(e),
        Err(e) => match hung_before_init(&format!("{e:#}")) {
            // An experimental kernel that stops booting under TCG before
            // /init ran never met gupwatch: nothing was tested, so the step
            // is skipped (never counted as passed), with the console's path.
            Some(log) => {
                let why = format!("the canary kernel stopped booting before /init started (gupwatch never ran); console log: {log}");
                println!("SKIPPED: {why}");
                report.skipped = Some(why);
            }
            None => report.checks.push(Check {
                name: "the guest kernel reported no oops, BUG or WARNING, and the VM finished".into(),
                ok: false,
                detail: format!("{e:#}"),
            }),
        },
    }
    Ok(report)
}

/// The console log of a failed run whose guest never reached the project's
/// /init (no `@@gupwatch-init-start` marker on its console), if the error
/// names one.
fn hung_before_init(error: &str) -> Option<String> {
    let log = error.split("full console log: ").nth(1)?.lines().next()?.trim().to_string();
    let console = fs::read_to_string(&log).ok()?;
    (!console.contains("@@gupwatch-init-start")).then_some(log)
}

/// The panic lines gupwatch left on the guest console (its stderr).
fn panic_lines(console_log: &Path) -> Vec<String> {
    fs::read_to_string(console_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked at") || l.contains("gupwatch: internal error"))
        .map(|l| l.trim().to_string())
        .take(4)
        .collect()
}

fn judge(run: &KernelRun, uname: &str, r: &mut StepReport) {
    let panics = panic_lines(&run.outcome.console_log);
    // gupwatch's own line names its command; Rust's default one does not,
    // so without a line of this command's, every panic line is shown.
    let panic_detail = |status: i32, command: &str| {
        let own: Vec<&String> = panics.iter().filter(|l| l.contains(&format!("`{command}`"))).collect();
        let shown: Vec<&String> = if own.is_empty() { panics.iter().collect() } else { own };
        let shown: Vec<&str> = shown.into_iter().map(String::as_str).collect();
        format!(
            "exit status {status}{}",
            if shown.is_empty() { String::new() } else { format!(": {}", shown.join(" | ")) }
        )
    };
    r.checks.push(Check {
        name: "the guest kernel reported no oops, BUG or WARNING, and the VM finished".into(),
        ok: true,
        detail: format!("console log: {}", run.outcome.console_log.display()),
    });
    let doctor_status = run.doctor.as_ref().and_then(|(_, s)| *s);
    r.checks.push(match doctor_status {
        Some(s) if PANIC_STATUSES.contains(&s) => Check { name: "gupwatch doctor --json did not panic".into(), ok: false, detail: panic_detail(s, "gupwatch doctor") },
        Some(s) => Check { name: "gupwatch doctor --json did not panic".into(), ok: true, detail: format!("exit status {s}") },
        None => Check {
            name: "gupwatch doctor --json did not panic".into(),
            ok: false,
            detail: format!("its exit status never reached the guest's stdout; console log: {}", run.outcome.console_log.display()),
        },
    });
    let check_status = run.outcome.status;
    r.checks.push(Check {
        name: "gupwatch check --json did not panic".into(),
        ok: !PANIC_STATUSES.contains(&check_status),
        detail: if PANIC_STATUSES.contains(&check_status) { panic_detail(check_status, "gupwatch check") } else { format!("exit status {check_status}") },
    });
    if let Some((json, status)) = &run.doctor {
        doctor_notes(json, *status, uname, &mut r.notes);
    }
    check_notes(&run.check_stdout, check_status, &mut r.notes);
}

/// What doctor said, and where it differs from the matrix's expectations.
fn doctor_notes(json: &str, status: Option<i32>, uname: &str, notes: &mut Vec<String>) {
    let Ok(v) = serde_json::from_str::<Report>(json) else {
        notes.push(format!("doctor printed no JSON report (exit status {status:?})"));
        return;
    };
    notes.push(format!("doctor: kernel {}, verdict {} (exit {status:?}): {}", v.kernel, testsuite::word(&v.verdict), v.summary));
    let kernel_finding = v.finding("kernel").map(|f| f.detail.as_str());
    if let Some(k) = kernel_finding {
        notes.push(format!("doctor's kernel finding: {k}"));
    }
    for c in testsuite::judge_doctor(json, status, Some(uname)).into_iter().filter(|c| !c.ok) {
        notes.push(format!("differs from the matrix: {}: {}", c.what, c.detail));
    }
}

/// Check's table, and which scenarios are not exact.
fn check_notes(stdout: &str, status: i32, notes: &mut Vec<String>) {
    match testsuite::parse_report(stdout) {
        Ok(report) => {
            println!("gupwatch check --json on guest kernel: {}", report.kernel);
            print!("{}", testsuite::table(&report));
            let failing: Vec<String> = report
                .scenarios
                .iter()
                .filter(|s| !s.passed())
                .map(|s| format!("{} ({})", s.name, s.explanation()))
                .collect();
            notes.push(format!(
                "check: {} of {} scenarios pass the matrix's rule (exit status {status})",
                report.scenarios.len() - failing.len(),
                report.scenarios.len()
            ));
            for f in failing {
                notes.push(format!("differs from the matrix: scenario {f}"));
            }
        }
        Err(e) => notes.push(format!("check printed no report (exit status {status}): {e:#}")),
    }
}

/// Prints a step report: checks, then the reported differences.
pub fn render(r: &StepReport) -> String {
    let mut out = String::new();
    for c in &r.checks {
        out += &format!("  {}  {}: {}\n", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    for n in &r.notes {
        out += &format!("  REPORT  {n}\n");
    }
    if let Some(k) = &r.kernel {
        out += &format!(
            "canary on {k}: {} of {} checks passed; {} differences reported, not counted\n",
            r.checks.len() - r.failed(),
            r.checks.len(),
            r.notes.iter().filter(|n| n.starts_with("differs")).count()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_than_sid() {
        assert!(is_newer("7.3~rc7-1~exp1", "7.2.13-1"));
        assert!(!is_newer("7.3~rc7-1~exp1", "7.3.1-1"), "sid caught up");
        assert!(!is_newer("7.3~rc7-1~exp1", "7.3-1"), "the release beats its candidate");
        assert!(!is_newer("7.2.13-1", "7.2.13-1"));
        assert!(is_newer("7.4~rc1-1~exp1", "7.3.2-1"));
    }

    /// Experimental's lists as seen on 2026-12-04: the split layout of
    /// sid, an ABI without a patch level, and an older candidate.
    #[test]
    fn experimental_lists_resolve_to_the_newest_candidate() {
        let info = |name: &str, version: &str| kernels::PkgInfo { name: name.into(), version: version.into() };
        let infos = [
            info("linux-binary-unsigned-7.3-cloud-amd64", "7.3~rc7-1~exp1"),
            info("linux-binary-7.3-cloud-amd64", "7.3~rc7-1~exp1"),
            info("linux-modules-7.3-cloud-amd64", "7.3~rc7-1~exp1"),
            info("linux-base-7.3-cloud-amd64", "7.3~rc7-1~exp1"),
            info("linux-binary-unsigned-7.3-cloud-amd64", "7.3~rc6-1~exp1"),
            info("linux-binary-unsigned-7.3-amd64", "7.3~rc7-1~exp1"),
        ];
        let c = kernels::choose(&infos, Flavour::Cloud).unwrap();
        assert_eq!((c.abi.as_str(), c.version.as_str()), ("7.3", "7.3~rc7-1~exp1"));
        assert_eq!(c.uname(Flavour::Cloud), "7.3-cloud-amd64");
        assert_eq!(
            c.packages,
            ["linux-binary-unsigned-7.3-cloud-amd64", "linux-modules-7.3-cloud-amd64", "linux-base-7.3-cloud-amd64"]
        );
        assert!(is_newer(&c.version, "7.2.13-1"));
    }

    fn run_with(stdout: &str, status: i32) -> KernelRun {
        let (doctor, check_stdout) = testsuite::split_doctor(stdout);
        KernelRun {
            outcome: crate::vm::VmOutcome {
                status,
                stdout: stdout.as_bytes().to_vec(),
                console_log: PathBuf::from("/nonexistent/console.log"),
                accel: crate::vm::Accel::Tcg,
                boot_time: None,
                elapsed: Duration::ZERO,
                modules: vec![],
            },
            doctor,
            check_stdout,
            rss: None,
        }
    }

    const CHECK: &str = r#"{"kernel":"7.3-cloud-amd64","scenarios":[
        {"name":"odirect_read","pinned_pages":256,"unpinned_pages":256,"vmstat_acquired":256,"vmstat_released":256,"exact":true,"pins_expected":true,"note":""},
        {"name":"vmsplice","pinned_pages":0,"unpinned_pages":0,"vmstat_acquired":4,"vmstat_released":4,"exact":false,"pins_expected":true,"note":"probe missed"}]}"#;

    #[test]
    fn panics_fail_differences_are_reported() {
        let doctor = r#"{"schema":1,"gupwatch_version":"0.1.0","kernel":"7.3-cloud-amd64","verdict":"partial","exit_code":1,"summary":"s",
            "findings":[{"id":"kernel","status":"info","detail":"Linux 7.3-rc7","fix":null}],
            "mechanisms":{"tracepoint":{"result":"works","target":"sched_process_exit"},"fentry":{"result":"works","target":"unpin_user_page"},
                "kprobe":{"result":"not_tried","why":"fentry works"}},
            "hooks":null,"reduced_mode":{"available":true,"acquired":1,"released":1,"error":null}}"#;
        let good = format!("{}\n{doctor}\n{}1@@\n{CHECK}\n", testsuite::DOCTOR_BEGIN, testsuite::DOCTOR_END);
        let mut r = StepReport::default();
        judge(&run_with(&good, 1), "7.3-cloud-amd64", &mut r);
        assert_eq!(r.failed(), 0, "{:#?}", r.checks);
        assert_eq!(r.checks.len(), 3);
        assert!(r.notes.iter().any(|n| n.contains("verdict partial")), "{:#?}", r.notes);
        assert!(r.notes.iter().any(|n| n == "doctor's kernel finding: Linux 7.3-rc7"), "{:#?}", r.notes);
        assert!(r.notes.iter().any(|n| n.starts_with("differs from the matrix: scenario vmsplice")), "{:#?}", r.notes);
        assert!(r.notes.iter().any(|n| n.starts_with("check: 1 of 2 scenarios")), "{:#?}", r.notes);

        // Doctor panicked (the hook's 70), check panicked (Rust's 101).
        let crashed = format!("{}\n{}70@@\n", testsuite::DOCTOR_BEGIN, testsuite::DOCTOR_END);
        let mut r = StepReport::default();
        judge(&run_with(&crashed, 101), "7.3-cloud-amd64", &mut r);
        let failed: Vec<&str> = r.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["gupwatch doctor --json did not panic", "gupwatch check --json did not panic"]);
        assert!(r.notes.iter().any(|n| n.starts_with("doctor printed no JSON")), "{:#?}", r.notes);
        assert!(r.notes.iter().any(|n| n.starts_with("check printed no report (exit status 101)")), "{:#?}", r.notes);

        // No markers at all: the guest never ran doctor to its end.
        let mut r = StepReport::default();
        judge(&run_with("", 0), "x", &mut r);
        assert_eq!(r.failed(), 1);
        let text = render(&r);
        assert!(text.contains("FAIL  gupwatch doctor --json did not panic"), "{text}");
    }
}
