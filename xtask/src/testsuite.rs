//! `cargo xtask test`: unit tests, the hostile-client test on the host
//! ([`crate::hostile`]), then `gupwatch check --json` in a VM on
//! every kernel of the matrix, with a table per kernel, then the i915 hooks
//! on the generic flavour of those kernels ([`crate::i915test`]), the
//! kernel's mm selftests under gupwatch ([`crate::mmselftests`]), the
//! faults, the live view and the end-to-end Prometheus test, and one
//! closing `N passed, N failed` line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::binary;
use crate::canary;
use crate::dist;
use crate::e2e;
use crate::faults;
use crate::fuzz;
use crate::hostile;
use crate::i915test;
use crate::kernels::{self, BootKernel, Flavour};
use crate::livetest;
use crate::mmselftests;
use crate::preemptstep;
use crate::qemu::{ConsoleEcho, VmOutcome, VmRun};
use crate::rdmastep;
use crate::setup::{self, SetupOptions};
use crate::util;

/// Options of `cargo xtask test`.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Matrix aliases to run (default: all).
    pub kernels: Vec<String>,
    /// Per-VM time limit.
    pub timeout: Duration,
    /// Skip `cargo test --workspace`.
    pub skip_unit: bool,
    /// Skip `cargo xtask setup`.
    pub skip_setup: bool,
    /// Skip the end-to-end Prometheus test ([`crate::e2e`]).
    pub skip_e2e: bool,
    /// Seconds per fuzz target ([`crate::fuzz`]); 0 skips fuzzing.
    pub fuzz_seconds: u32,
    /// Skip the i915 hook test ([`crate::i915test`]).
    pub skip_i915: bool,
    /// Skip the live-view test ([`crate::livetest`]).
    pub skip_live: bool,
    /// Skip the canary kernel step ([`crate::canary`]).
    pub skip_canary: bool,
    /// Skip the kernel's mm selftests ([`crate::mmselftests`]).
    pub skip_mm_selftests: bool,
    /// Skip the soft-RoCE step ([`crate::rdmastep`]).
    pub skip_rdma: bool,
}

/// Huge pages reserved at boot in the kernel steps' VMs (8 MiB).
pub const HUGEPAGES: u32 = 4;

/// One scenario of `gupwatch check --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// Pages the probes saw pinned.
    pub pinned: i64,
    /// Pages the probes saw unpinned.
    pub unpinned: i64,
    /// `nr_foll_pin_acquired` delta.
    pub vmstat_acquired: i64,
    /// `nr_foll_pin_released` delta.
    pub vmstat_released: i64,
    /// Probe counts matched vmstat exactly.
    pub exact: bool,
    /// Whether the scenario is expected to pin at all.
    pub pins_expected: bool,
    /// Free text from gupwatch.
    pub note: String,
    /// gupwatch's own verdict (`passed`), when the report carries one: it
    /// also checks expectations such as errno, code path and leaks.
    pub self_verdict: Option<bool>,
    /// gupwatch's reasons for a failed own verdict (`mismatches`, `error`).
    pub mismatches: Vec<String>,
    /// The pin ledger as the scenario saw it (`partial`, `untracked_pins`,
    /// `unbalanced_pages`, ...); `None` from a gupwatch older than these
    /// fields.
    pub ledger: Option<Ledger>,
    /// Runs of gupwatch's programs the kernel skipped during the run.
    pub probe_misses: i64,
}

/// The pin ledger's fields of one scenario (issue 14: the `inflight_`
/// scenarios require `partial: false`, 0 untracked pins, 0 unbalanced
/// pages; gupwatch's own verdict already includes that).
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    /// Some pin went untracked during the run.
    pub partial: bool,
    /// Pins the tracking map could not record.
    pub untracked_pins: i64,
    /// Unpins of pins taken after attach that matched no tracked pin.
    pub unbalanced_pages: i64,
    /// Pins the scenario took before gupwatch attached.
    pub pre_attach_pins: i64,
    /// The scenario's verdict requires the ledger to hold.
    pub required: bool,
}

impl Ledger {
    /// Not partial, nothing untracked or unbalanced.
    pub fn holds(&self) -> bool {
        !self.partial && self.untracked_pins == 0 && self.unbalanced_pages == 0
    }
}

impl Scenario {
    /// The accounting rule: exact counts, and pins seen where pins are
    /// expected.
    pub fn accounting_ok(&self) -> bool {
        self.exact && (!self.pins_expected || self.pinned + self.unpinned > 0)
    }

    /// The verdict: the accounting rule, and gupwatch's own verdict when it
    /// gives one (a scenario fails if either says so).
    pub fn passed(&self) -> bool {
        self.accounting_ok() && self.self_verdict.unwrap_or(true) && self.ledger.as_ref().is_none_or(|l| !l.required || l.holds())
    }

    /// The note column: gupwatch's note, then why the scenario failed.
    pub fn explanation(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.note.is_empty() {
            parts.push(self.note.clone());
        }
        if !self.exact {
            parts.push("counts differ from /proc/vmstat".into());
        } else if !self.accounting_ok() && !self.note.contains("no pins seen") {
            parts.push("no pins seen".into());
        }
        if let Some(l) = self.ledger.as_ref().filter(|l| !l.holds() || l.pre_attach_pins > 0) {
            parts.push(format!(
                "ledger: partial {}, untracked {}, unbalanced {}, pre-attach pins {}",
                l.partial, l.untracked_pins, l.unbalanced_pages, l.pre_attach_pins
            ));
        }
        if !self.exact && self.probe_misses > 0 {
            parts.push(format!("{} probe misses", self.probe_misses));
        }
        if self.self_verdict == Some(false) {
            parts.extend(self.mismatches.iter().cloned());
            if self.mismatches.is_empty() {
                parts.push("gupwatch judged it failed".into());
            }
        }
        parts.dedup();
        parts.join("; ")
    }
}

/// The parsed report of one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `uname -r` in the guest.
    pub kernel: String,
    /// Scenarios in report order.
    pub scenarios: Vec<Scenario>,
}

/// Parses `gupwatch check --json` output. Unknown fields are ignored so the
/// report can grow; if stray text surrounds the JSON object, the outermost
/// `{...}` is used.
pub fn parse_report(stdout: &str) -> Result<Report> {
    let v: Value = match serde_json::from_str(stdout.trim()) {
        Ok(v) => v,
        Err(first) => {
            let (Some(a), Some(b)) = (stdout.find('{'), stdout.rfind('}')) else {
                bail!("gupwatch check printed no JSON object ({first})");
            };
            serde_json::from_str(&stdout[a..=b])
                .with_context(|| format!("gupwatch check printed invalid JSON ({first})"))?
        }
    };
    let kernel = v
        .get("kernel")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let list = v
        .get("scenarios")
        .and_then(Value::as_array)
        .context("the JSON has no `scenarios` array")?;
    let int = |s: &Value, k: &str| {
        s.get(k)
            .and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
            .unwrap_or(0)
    };
    let scenarios = list
        .iter()
        .enumerate()
        .map(|(i, s)| Scenario {
            name: s
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{i}")),
            pinned: int(s, "pinned_pages"),
            unpinned: int(s, "unpinned_pages"),
            vmstat_acquired: int(s, "vmstat_acquired"),
            vmstat_released: int(s, "vmstat_released"),
            exact: s.get("exact").and_then(Value::as_bool).unwrap_or(false),
            // Missing means "expected": a scenario must opt out of pinning.
            pins_expected: s
                .get("pins_expected")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            note: s
                .get("note")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            self_verdict: s.get("passed").and_then(Value::as_bool),
            mismatches: s
                .get("mismatches")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .chain(
                    s.get("error")
                        .and_then(Value::as_str)
                        .map(|e| format!("error: {e}")),
                )
                .collect(),
            ledger: s.get("partial").and_then(Value::as_bool).map(|partial| Ledger {
                partial,
                untracked_pins: int(s, "untracked_pins"),
                unbalanced_pages: int(s, "unbalanced_pages"),
                pre_attach_pins: int(s, "pre_attach_pins"),
                required: s.get("ledger_required").and_then(Value::as_bool).unwrap_or(false),
            }),
            probe_misses: int(s, "probe_misses"),
        })
        .collect();
    Ok(Report { kernel, scenarios })
}

/// Renders a report as an aligned table.
pub fn table(report: &Report) -> String {
    let header = [
        "scenario",
        "pinned",
        "unpinned",
        "vmstat acq/rel",
        "verdict",
        "note",
    ];
    let rows: Vec<[String; 6]> = report
        .scenarios
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.pinned.to_string(),
                s.unpinned.to_string(),
                format!("{}/{}", s.vmstat_acquired, s.vmstat_released),
                if s.passed() {
                    "PASS".into()
                } else {
                    "FAIL".into()
                },
                s.explanation(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i == cells.len() - 1 {
                s.push_str(c);
            } else if (1..=3).contains(&i) {
                s.push_str(&format!("{c:>w$}  ", w = width[i]));
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    let mut rule = width.map(|w| "-".repeat(w));
    // The note column is free text: underline its title only.
    rule[5] = "-".repeat(header[5].len());
    out.push_str(&line(&rule));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// Marker lines around `gupwatch doctor --json` in the guest's stdout, so
/// that its JSON and `gupwatch check --json`'s stay apart.
pub const DOCTOR_BEGIN: &str = "@@gupwatch-doctor-begin@@";
/// Prefix of the line after doctor's JSON; its exit status follows, then `@@`.
pub const DOCTOR_END: &str = "@@gupwatch-doctor-end:";

/// Scenario families whose exactness is still open work. They run in every
/// kernel step and their figures are printed; one that passes counts, one
/// that fails is listed as reported only, with the reason, until the issue
/// is resolved. None today: the churn and in-flight families, once here
/// (issues 24 and 14), are exact on every kernel of the matrix
/// (docs/exactness.md) and fail the suite like any other scenario.
const OPEN_WORK: [(&str, &str); 0] = [];

/// The open issue a scenario belongs to, if its verdict is not yet binding.
pub fn open_work(scenario: &str) -> Option<&'static str> {
    OPEN_WORK.iter().find(|(prefix, _)| scenario.starts_with(prefix)).map(|(_, why)| *why)
}

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
    let v: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            let head: String = json.chars().take(300).collect();
            push("doctor printed its JSON report".into(), false, format!("{e}: {head:?}"));
            return out;
        }
    };
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("?").to_string();
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64);
    push(
        "verdict full, exit status 0".into(),
        s("/verdict") == "full" && n("/exit_code") == Some(0) && status == Some(0),
        format!("verdict {}, exit_code {:?}, process status {status:?}: {}", s("/verdict"), n("/exit_code"), s("/summary")),
    );
    if let Some(u) = uname {
        push(format!("kernel is {u}"), s("/kernel") == u, format!("doctor says {}", s("/kernel")));
    }
    let findings: Vec<&Value> = v.get("findings").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let finding = |id: &str| findings.iter().find(|f| f.get("id").and_then(Value::as_str) == Some(id));
    for id in DOCTOR_OK_IN_VMS {
        let (status, detail) = match finding(id) {
            Some(f) => (
                f.get("status").and_then(Value::as_str).unwrap_or("?").to_string(),
                f.get("detail").and_then(Value::as_str).unwrap_or("").to_string(),
            ),
            None => ("missing".into(), "no such finding".into()),
        };
        push(format!("{id} ok"), status == "ok", format!("{status}: {detail}"));
    }
    let i915 = finding("i915").and_then(|f| f.get("detail")).and_then(Value::as_str).unwrap_or("");
    push("i915 reported not loaded".into(), i915.starts_with("i915 not loaded"), i915.to_string());
    for m in ["tracepoint", "fentry", "kprobe"] {
        let r = s(&format!("/mechanisms/{m}/result"));
        push(
            format!("{m} tried and works"),
            r == "works",
            format!("{r} on {} {}", s(&format!("/mechanisms/{m}/target")), v.pointer(&format!("/mechanisms/{m}/error")).and_then(Value::as_str).unwrap_or("")),
        );
    }
    let (present, attached) = (n("/hooks/present").unwrap_or(0), n("/hooks/attached").unwrap_or(0));
    let failed = v.pointer("/hooks/failed").and_then(Value::as_array).map_or(usize::MAX, Vec::len);
    let load_error = v.pointer("/hooks/load_error").filter(|e| !e.is_null()).map(|e| e.to_string());
    push(
        "every GUP function present is hooked".into(),
        present > 0 && attached == present && failed == 0 && load_error.is_none(),
        format!("{attached} of {present} attached, {failed} failed, load error {load_error:?}"),
    );
    push(
        "reduced mode available (vmstat counters)".into(),
        v.pointer("/reduced_mode/available").and_then(Value::as_bool) == Some(true),
        format!("acquired {:?} released {:?}", n("/reduced_mode/acquired"), n("/reduced_mode/released")),
    );
    out
}

/// What one kernel step's VM gave back.
#[derive(Debug)]
pub struct KernelRun {
    /// The VM run; its status is `gupwatch check`'s.
    pub outcome: VmOutcome,
    /// Doctor's JSON and exit status ([`split_doctor`]).
    pub doctor: Option<(String, Option<i32>)>,
    /// The rest of the guest's stdout: check's report.
    pub check_stdout: String,
    /// The daemon's memory ([`crate::rssguard`]), when it was reported.
    pub rss: Option<crate::rssguard::Reading>,
}

/// Boots `kernel` and runs [`kernel_step_command`] in it: the step the
/// matrix kernels and the canary share. Fails (naming the console line)
/// when the guest kernel reports an oops, BUG, WARNING, lockup or panic,
/// or the VM never reports the command's status.
pub fn run_kernel_step(kernel: BootKernel, label: &str, gupwatch: &Path, timeout: Duration) -> Result<KernelRun> {
    let mut run = VmRun::new(kernel, kernel_step_command());
    // A few 2 MiB huge pages, so io_uring_register_hugetlb runs (it
    // caught 7.0's compound_info mask encoding) instead of being
    // reported unreachable.
    run.kernel_args.push(format!("hugepages={HUGEPAGES}"));
    // QEMU's IOMMU and PCI test device, so the vfio_ scenarios run
    // (VFIO_IOMMU_MAP_DMA, the classic LONGTERM pinner).
    run.vfio = true;
    run.gupwatch = Some(gupwatch.to_path_buf());
    run.timeout = timeout;
    run.echo = ConsoleEcho::None;
    run.stream_stdout = false;
    run.tag = format!("test {label}");
    let outcome = run.run()?;
    println!(
        "{label} in {:.0} s ({}, /init after {:.1} s), exit status {}; console log: {}",
        outcome.elapsed.as_secs_f64(),
        outcome.accel,
        outcome.boot_time.map(|d| d.as_secs_f64()).unwrap_or(0.0),
        outcome.status,
        outcome.console_log.display()
    );
    let stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
    let (rss, stdout) = crate::rssguard::split(&stdout);
    let (doctor, check_stdout) = split_doctor(&stdout);
    Ok(KernelRun { outcome, doctor, check_stdout, rss })
}

/// Totals of the run.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
    /// Steps not run; printed as skipped, never counted as passed.
    skipped: Vec<String>,
}

impl Tally {
    /// Counts a failure; prints it in full now and keeps a one-line form
    /// (with the console log's path) for the summary.
    fn fail(&mut self, what: String) {
        println!("FAILED: {what}");
        self.failed += 1;
        let first = what
            .lines()
            .next()
            .unwrap_or("")
            .trim_end_matches(';')
            .to_string();
        let log = what
            .lines()
            .find_map(|l| l.split("full console log: ").nth(1))
            .filter(|_| !first.contains("full console log: "));
        self.failures.push(match log {
            Some(path) => format!("{first} (console log: {path})"),
            None => first,
        });
    }
}

fn banner(step: usize, total: usize, what: &str) {
    println!("\n==== [{step}/{total}] {what} ====");
}

/// The hostile-client step ([`hostile`]): each check counts in the tally.
fn hostile_step(t: &mut Tally, bin: &std::path::Path) {
    match hostile::run(&hostile::HostileOptions::new(bin.to_path_buf())) {
        Ok(reports) => {
            for r in &reports {
                print!("{}", hostile::render(r));
                for c in &r.checks {
                    if c.ok {
                        t.passed += 1;
                    } else {
                        t.failed += 1;
                        t.failures.push(format!("hostile clients ({}): {}: {}", r.mode.name(), c.name, c.detail));
                    }
                }
            }
        }
        Err(e) => t.fail(format!("hostile clients: {e:#}")),
    }
}

/// Runs the whole suite; `Ok(true)` when everything passed.
pub fn run(o: &TestOptions) -> Result<bool> {
    let aliases: Vec<kernels::KernelAlias> = if o.kernels.is_empty() {
        kernels::MATRIX.to_vec()
    } else {
        o.kernels
            .iter()
            .map(|k| {
                kernels::alias(k).with_context(|| {
                    format!(
                        "unknown kernel `{k}` in --kernels (known: {})",
                        kernels::alias_names()
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let total = 6 + aliases.len() + 8;
    let mut t = Tally::default();
    let started = Instant::now();

    banner(1, total, "setup");
    if o.skip_setup {
        println!("skipped (--skip-setup)");
    } else if let Err(e) = setup::run(&SetupOptions {
        refresh: false,
        no_kernels: true,
    }) {
        t.fail(format!("setup: {e:#}"));
    }

    banner(2, total, "unit tests: cargo test --workspace");
    if o.skip_unit {
        println!("skipped (--skip-unit)");
    } else {
        let mut cmd = Command::new(util::cargo());
        cmd.current_dir(util::workspace_root())
            .args(["test", "--workspace"]);
        if let Err(e) = util::run(&mut cmd) {
            t.fail(format!("unit tests: {e:#}"));
        }
    }

    banner(3, total, "fuzz: every cargo-fuzz target, bounded");
    if o.fuzz_seconds == 0 {
        println!("SKIPPED (--fuzz-seconds 0)");
        t.skipped.push("fuzzing (--fuzz-seconds 0)".into());
    } else {
        match fuzz::run(&fuzz::FuzzOptions {
            seconds: o.fuzz_seconds,
            targets: Vec::new(),
            sanitizer: "none".into(),
        }) {
            Ok(tally) => {
                t.passed += tally.passed as usize;
                t.failed += tally.failed as usize;
                if tally.failed > 0 {
                    t.failures.push(format!(
                        "fuzz: {} target(s) crashed; inputs in fuzz/artifacts/ (see above)",
                        tally.failed
                    ));
                }
            }
            Err(e) => t.fail(format!("fuzz: {e:#}")),
        }
    }

    banner(4, total, "build static gupwatch");
    let gupwatch = match binary::build_static_gupwatch() {
        Ok(p) => Some(p),
        Err(e) => {
            t.fail(format!("build: {e:#}"));
            None
        }
    };

    banner(5, total, "dist: static binary, tarball and Debian package");
    if gupwatch.is_none() {
        t.fail("dist: not run, gupwatch did not build".into());
    } else {
        match dist::run() {
            Ok(d) => {
                println!("{}", dist::describe(&d));
                t.passed += 1;
            }
            Err(e) => t.fail(format!("dist: {e:#}")),
        }
    }

    banner(
        6,
        total,
        "hostile clients on the host: gupwatch run against 2,000 stalled clients, a flood, slow readers and malformed requests, plain and TLS + basic auth",
    );
    match &gupwatch {
        None => t.fail("hostile clients: not run, gupwatch did not build".into()),
        Some(bin) => hostile_step(&mut t, bin),
    }

    for (i, a) in aliases.iter().enumerate() {
        banner(
            7 + i,
            total,
            &format!(
                "kernel {} (Debian {}): gupwatch run peak RSS, gupwatch doctor --json, gupwatch check --json",
                a.name, a.suite
            ),
        );
        let Some(bin) = &gupwatch else {
            t.fail(format!(
                "kernel {}: not run, gupwatch did not build",
                a.name
            ));
            continue;
        };
        let kernel = match util::cache_dir()
            .and_then(|c| kernels::ensure(&c, *a, Flavour::Cloud, false).map(|m| m.boot_kernel(&c)))
        {
            Ok(k) => k,
            Err(e) => {
                t.fail(format!("kernel {}: could not fetch it: {e:#}", a.name));
                continue;
            }
        };
        let KernelRun { outcome, doctor, check_stdout: stdout, rss } = match run_kernel_step(kernel, a.name, bin, o.timeout) {
            Ok(r) => r,
            Err(e) => {
                if e.downcast_ref::<util::Interrupted>().is_some() {
                    return Err(e);
                }
                t.fail(format!("kernel {}: {e:#}", a.name));
                continue;
            }
        };
        let uname = parse_report(&stdout).ok().map(|r| r.kernel).filter(|k| k != "?");
        let (rss_ok, rss_detail) = crate::rssguard::judge(rss.as_ref());
        let rss_what = format!("gupwatch run peak RSS < {} MiB", crate::rssguard::PEAK_RSS_BOUND_KIB / 1024);
        println!("  {}  {rss_what:<40} {rss_detail}", if rss_ok { "PASS" } else { "FAIL" });
        if rss_ok {
            t.passed += 1;
        } else {
            t.failed += 1;
            t.failures.push(format!("kernel {}: {rss_what}: {rss_detail}", a.name));
        }
        match &doctor {
            Some((json, status)) => {
                println!("gupwatch doctor --json:");
                for c in judge_doctor(json, *status, uname.as_deref()) {
                    println!("  {}  {:<40} {}", if c.ok { "PASS" } else { "FAIL" }, c.what, c.detail);
                    if c.ok {
                        t.passed += 1;
                    } else {
                        t.failed += 1;
                        t.failures.push(format!("kernel {}: doctor: {}: {}", a.name, c.what, c.detail));
                    }
                }
            }
            None => t.fail(format!(
                "kernel {}: gupwatch doctor --json printed nothing between its markers; console log: {}",
                a.name,
                outcome.console_log.display()
            )),
        }
        match parse_report(&stdout) {
            Ok(report) => {
                println!("gupwatch check --json on guest kernel: {}", report.kernel);
                print!("{}", table(&report));
                let mut all_ok = true;
                if report.scenarios.is_empty() {
                    t.fail(format!("kernel {}: the report lists no scenarios", a.name));
                    all_ok = false;
                }
                let mut open_failed = false;
                for s in &report.scenarios {
                    if s.passed() {
                        t.passed += 1;
                    } else if let Some(why) = open_work(&s.name) {
                        // Run and printed in the table above, but not yet a
                        // verdict: the issue named says what is left.
                        open_failed = true;
                        t.skipped.push(format!("kernel {}: scenario {} inexact, reported only ({why})", a.name, s.name));
                    } else {
                        all_ok = false;
                        t.failed += 1;
                        t.failures.push(format!("kernel {}: scenario {}", a.name, s.name));
                    }
                }
                if outcome.status != 0 && all_ok && !open_failed {
                    t.fail(format!("kernel {}: gupwatch check exited with status {}", a.name, outcome.status));
                }
            }
            Err(e) => t.fail(format!(
                "kernel {}: gupwatch check exited with status {} and its output is not a report: {e:#}; console log: {}",
                a.name,
                outcome.status,
                outcome.console_log.display()
            )),
        }
    }

    banner(
        total - 7,
        total,
        &format!("kernel {} booted preempt=full movablecore=256M: {}", preemptstep::KERNEL, preemptstep::COMMAND),
    );
    match &gupwatch {
        Some(bin) => match preemptstep::run(&aliases, bin, o.timeout) {
            Ok(Some(r)) => {
                t.passed += r.passed;
                t.failed += r.failures.len();
                t.failures.extend(r.failures);
                t.skipped.extend(r.reported_only);
            }
            Ok(None) => {
                println!("SKIPPED ({} is not among the selected kernels)", preemptstep::KERNEL);
                t.skipped.push(format!("preemptible {} step: kernel not selected", preemptstep::KERNEL));
            }
            Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => return Err(e),
            Err(e) => t.fail(format!("{} preempt=full: {e:#}", preemptstep::KERNEL)),
        },
        None => t.fail(format!("{} preempt=full: not run, gupwatch did not build", preemptstep::KERNEL)),
    }

    banner(total - 6, total, &rdmastep::describe());
    if o.skip_rdma {
        println!("SKIPPED (--skip-rdma)");
        t.skipped.push("RDMA step (--skip-rdma)".into());
    } else if let Some(bin) = &gupwatch {
        match rdmastep::run(&aliases, bin, o.timeout) {
            Ok(Some(r)) => {
                t.passed += r.passed;
                t.failed += r.failures.len();
                t.failures.extend(r.failures);
            }
            Ok(None) => t.skipped.push(format!("RDMA step: none of {} selected", rdmastep::KERNELS.join(", "))),
            Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => return Err(e),
            Err(e) => t.fail(format!("RDMA step: {e:#}")),
        }
    } else {
        t.fail("RDMA step: not run, gupwatch did not build".into());
    }

    banner(
        total - 5,
        total,
        "canary: experimental's newest kernel, if newer than sid's: gupwatch doctor --json, gupwatch check --json; fails only on a panic or a kernel oops/BUG/WARNING",
    );
    if o.skip_canary {
        println!("SKIPPED (--skip-canary)");
        t.skipped.push("canary kernel step (--skip-canary)".into());
    } else if let Some(bin) = &gupwatch {
        match canary::run(bin, o.timeout, false) {
            Ok(r) => {
                print!("{}", canary::render(&r));
                if let Some(why) = &r.skipped {
                    t.skipped.push(format!("canary kernel step: {why}"));
                }
                for c in &r.checks {
                    if c.ok {
                        t.passed += 1;
                    } else {
                        t.failed += 1;
                        t.failures.push(format!("canary on {}: {}: {}", r.kernel.as_deref().unwrap_or("?"), c.name, c.detail));
                    }
                }
            }
            Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => return Err(e),
            Err(e) => t.fail(format!("canary: {e:#}")),
        }
    } else {
        t.fail("canary: not run, gupwatch did not build".into());
    }

    // The i915 hooks, on the generic flavour of the selected kernels.
    banner(
        total - 4,
        total,
        &format!(
            "i915 hooks on the generic kernels ({}): attached at start and when i915 loads later",
            aliases.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ),
    );
    if o.skip_i915 {
        println!("SKIPPED (--skip-i915)");
        t.skipped.push("i915 hook test (--skip-i915)".into());
    } else if let Some(bin) = &gupwatch {
        let results = i915test::run(&i915test::I915Options {
            kernels: aliases.clone(),
            gupwatch: bin.clone(),
            timeout: o.timeout,
        })?;
        for r in &results {
            for c in &r.checks {
                if c.ok {
                    t.passed += 1;
                } else {
                    t.failed += 1;
                    t.failures.push(format!("i915 on kernel {}: {}: {}", r.alias, c.name, c.detail));
                }
            }
            if let Some(e) = &r.error {
                t.fail(format!("i915 on kernel {}: {e}", r.alias));
            }
        }
    } else {
        t.fail("i915: not run, gupwatch did not build".into());
    }

    banner(
        total - 3,
        total,
        &format!(
            "the kernel's mm selftests (gup_longterm, cow, hugetlb_dio) on {}: without and under gupwatch run, identical results, exact counts",
            aliases.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ),
    );
    if o.skip_mm_selftests {
        println!("SKIPPED (--skip-mm-selftests)");
        t.skipped.push("mm selftests (--skip-mm-selftests)".into());
    } else if let Some(bin) = &gupwatch {
        match mmselftests::suite_step(&aliases, bin, o.timeout) {
            Ok((passed, failures)) => {
                t.passed += passed;
                t.failed += failures.len();
                t.failures.extend(failures);
            }
            Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => return Err(e),
            Err(e) => t.fail(format!("mm selftests: {e:#}")),
        }
    } else {
        t.fail("mm selftests: not run, gupwatch did not build".into());
    }

    // Faults and refusals, the live view through tmux (in the guest and from
    // the host), and the end-to-end Prometheus test: on the newest kernel of
    // the matrix only.
    let newest = kernels::MATRIX[kernels::MATRIX.len() - 1];
    banner(
        total - 2,
        total,
        &format!("faults on kernel {}: no BTF, corrupt BTF, a map too large, a memory cgroup too small, a verifier refusal, a missing eBPF object", newest.name),
    );
    if !aliases.iter().any(|a| a.name == newest.name) {
        println!("SKIPPED: it runs on kernel {} only, which --kernels leaves out", newest.name);
        t.skipped.push(format!("faults (kernel {} not selected)", newest.name));
    } else if let Some(bin) = &gupwatch {
        match faults::run(newest.name, bin.clone(), o.timeout) {
            Ok(cases) => {
                for c in cases {
                    if c.ok {
                        println!("  ok    {}: {}", c.name, c.detail);
                        t.passed += 1;
                    } else {
                        println!("  FAIL  {}: {}", c.name, c.detail);
                        t.failed += 1;
                        t.failures.push(format!("faults: {}: {}", c.name, c.detail));
                    }
                }
            }
            Err(e) => {
                if e.downcast_ref::<util::Interrupted>().is_some() {
                    return Err(e);
                }
                t.fail(format!("faults: {e:#}"));
            }
        }
    } else {
        t.fail("faults: not run, gupwatch did not build".into());
    }

    banner(
        total - 1,
        total,
        &format!(
            "live view: gupwatch top in tmux on kernel {}, in the guest and through top --connect from the host",
            newest.name
        ),
    );
    if o.skip_live {
        println!("SKIPPED (--skip-live)");
        t.skipped.push("live-view test (--skip-live)".into());
    } else if !aliases.iter().any(|a| a.name == newest.name) {
        println!("SKIPPED: it runs on kernel {} only, which --kernels leaves out", newest.name);
        t.skipped.push(format!("live-view test (kernel {} not selected)", newest.name));
    } else if let Some(bin) = &gupwatch {
        match util::cache_dir().and_then(|c| kernels::ensure(&c, newest, Flavour::Cloud, false).map(|m| m.boot_kernel(&c))) {
            Err(e) => t.fail(format!("live view: could not fetch kernel {}: {e:#}", newest.name)),
            Ok(kernel) => match livetest::run(&livetest::LiveOptions { kernel, gupwatch: bin.clone(), timeout: o.timeout.max(Duration::from_secs(livetest::MIN_TIMEOUT_S)) }) {
                Ok(report) => {
                    print!("{}", e2e::render(&e2e::E2eReport { checks: report.checks.clone(), notes: vec![], elapsed: report.elapsed }));
                    print!("{}", livetest::render_screens(&report));
                    println!("{}", livetest::timing(&report));
                    for c in &report.checks {
                        if c.ok {
                            t.passed += 1;
                        } else {
                            t.failed += 1;
                            t.failures.push(format!("live view: {}", c.name));
                        }
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<util::Interrupted>().is_some() {
                        return Err(e);
                    }
                    t.fail(format!("live view: {e:#}"));
                }
            },
        }
    } else {
        t.fail("live view: not run, gupwatch did not build".into());
    }

    banner(
        total,
        total,
        &format!(
            "end-to-end: gupwatch on kernel {} scraped by Prometheus; every dashboard query and rule",
            newest.name
        ),
    );
    if o.skip_e2e {
        println!("SKIPPED (--skip-e2e)");
        t.skipped
            .push("end-to-end Prometheus test (--skip-e2e)".into());
    } else if !aliases.iter().any(|a| a.name == newest.name) {
        println!(
            "SKIPPED: it runs on kernel {} only, which --kernels leaves out",
            newest.name
        );
        t.skipped.push(format!(
            "end-to-end Prometheus test (kernel {} not selected)",
            newest.name
        ));
    } else if let Some(bin) = &gupwatch {
        match util::cache_dir().and_then(|c| {
            kernels::ensure(&c, newest, Flavour::Cloud, false).map(|m| m.boot_kernel(&c))
        }) {
            Err(e) => t.fail(format!(
                "end-to-end: could not fetch kernel {}: {e:#}",
                newest.name
            )),
            Ok(kernel) => match e2e::run(&e2e::E2eOptions {
                kernel,
                gupwatch: bin.clone(),
                timeout: o.timeout,
            }) {
                Ok(report) => {
                    print!("{}", e2e::render(&report));
                    let failed = report.checks.iter().filter(|c| !c.ok).count();
                    println!(
                        "end-to-end: {} of {} checks passed in {:.0} s",
                        report.checks.len() - failed,
                        report.checks.len(),
                        report.elapsed.as_secs_f64()
                    );
                    for c in &report.checks {
                        if c.ok {
                            t.passed += 1;
                        } else {
                            t.failed += 1;
                            t.failures
                                .push(format!("end-to-end: {}: {}", c.name, c.detail));
                        }
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<util::Interrupted>().is_some() {
                        return Err(e);
                    }
                    t.fail(format!("end-to-end: {e:#}"));
                }
            },
        }
    } else {
        t.fail("end-to-end: not run, gupwatch did not build".into());
    }

    println!(
        "\n==== summary ({:.0} s) ====",
        started.elapsed().as_secs_f64()
    );
    for s in &t.skipped {
        println!("  skipped: {s}");
    }
    for f in &t.failures {
        println!("  failed: {f}");
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    Ok(t.failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"kernel":"6.12.117+deb13-cloud-amd64","scenarios":[
        {"name":"odirect_read","pinned_pages":256,"unpinned_pages":256,"vmstat_acquired":256,"vmstat_released":256,"exact":true,"pins_expected":true,"note":"","extra":1},
        {"name":"plain_read","pinned_pages":0,"unpinned_pages":0,"vmstat_acquired":0,"vmstat_released":0,"exact":true,"pins_expected":false,"note":"no pins expected"},
        {"name":"vmsplice","pinned_pages":0,"unpinned_pages":0,"vmstat_acquired":4,"vmstat_released":4,"exact":false,"pins_expected":true,"note":"probe missed"},
        {"name":"silent","pinned_pages":0,"unpinned_pages":0,"vmstat_acquired":0,"vmstat_released":0,"exact":true,"pins_expected":true,"note":""},
        {"name":"leak","pinned_pages":256,"unpinned_pages":0,"vmstat_acquired":256,"vmstat_released":0,"exact":true,"pins_expected":true,"note":"","passed":false,"mismatches":["expected a leak"],"error":null},
        {"name":"own_pass","pinned_pages":9,"unpinned_pages":9,"vmstat_acquired":9,"vmstat_released":9,"exact":true,"pins_expected":true,"note":"","passed":true,"mismatches":[]}
    ]}"#;

    #[test]
    fn parses_and_judges() {
        let r = parse_report(SAMPLE).unwrap();
        assert_eq!(r.kernel, "6.12.117+deb13-cloud-amd64");
        let verdicts: Vec<bool> = r.scenarios.iter().map(Scenario::passed).collect();
        assert_eq!(verdicts, vec![true, true, false, false, false, true]);
        assert_eq!(r.scenarios[4].explanation(), "expected a leak");
        assert_eq!(r.scenarios[3].explanation(), "no pins seen");
        assert_eq!(
            r.scenarios[2].explanation(),
            "probe missed; counts differ from /proc/vmstat"
        );
        assert_eq!(r.scenarios[5].self_verdict, Some(true));
        assert_eq!(r.scenarios[0].pinned, 256);
        assert_eq!(r.scenarios[1].note, "no pins expected");
    }

    #[test]
    fn ledger_fields_fail_an_inflight_scenario_that_gupwatch_passed() {
        let one = |ledger: &str| {
            format!(
                r#"{{"kernel":"7.2","scenarios":[{{"name":"inflight_odirect_shared","pinned_pages":4,"unpinned_pages":4,
                "vmstat_acquired":4,"vmstat_released":4,"exact":true,"pins_expected":true,"passed":true,"probe_misses":3{ledger}}}]}}"#
            )
        };
        let held = r#","partial":false,"untracked_pins":0,"unbalanced_pages":0,"pre_attach_pins":64,"ledger_required":true"#;
        let r = parse_report(&one(held)).unwrap();
        let s = &r.scenarios[0];
        assert!(s.passed());
        assert_eq!(s.ledger.as_ref().map(|l| l.pre_attach_pins), Some(64));
        assert_eq!(s.probe_misses, 3);
        assert!(s.explanation().contains("pre-attach pins 64"), "{}", s.explanation());
        // Even if gupwatch's own verdict were missing or wrong, a broken
        // ledger fails a scenario that requires it.
        let broken = r#","partial":true,"untracked_pins":156,"unbalanced_pages":626,"ledger_required":true"#;
        let s = &parse_report(&one(broken)).unwrap().scenarios[0];
        assert!(!s.passed());
        assert!(s.explanation().contains("ledger: partial true, untracked 156, unbalanced 626"), "{}", s.explanation());
        // Not required: reported, not judged here.
        let s = &parse_report(&one(&broken.replace("true}", "false}").replace(r#""ledger_required":true"#, r#""ledger_required":false"#))).unwrap().scenarios[0];
        assert!(s.passed());
        // An older report without the fields still parses.
        assert!(parse_report(&one("")).unwrap().scenarios[0].ledger.is_none());
    }

    #[test]
    fn tolerates_surrounding_text() {
        let noisy = format!("warning: something\n{SAMPLE}\n");
        assert_eq!(parse_report(&noisy).unwrap().scenarios.len(), 6);
        assert!(parse_report("no json here").is_err());
        assert!(parse_report(r#"{"kernel":"x"}"#).is_err());
    }

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

    #[test]
    fn table_is_aligned() {
        let r = parse_report(SAMPLE).unwrap();
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 6);
        assert_eq!(lines[1].trim_end().rsplit("  ").next(), Some("----"));
        assert!(lines[0].starts_with("  scenario"));
        assert!(lines[2].contains("odirect_read") && lines[2].contains("PASS"));
        assert!(lines[4].contains("FAIL") && lines[4].ends_with("counts differ from /proc/vmstat"));
        // The verdict column starts at the same offset on every row.
        let col = lines[0].find("verdict").unwrap();
        for l in &lines[2..] {
            assert!(
                l[col..].starts_with("PASS") || l[col..].starts_with("FAIL"),
                "{l}"
            );
        }
    }

    #[test]
    fn churn_and_inflight_scenarios_are_binding() {
        for s in ["churn_io_uring", "churn_process_vm", "inflight_odirect_shared", "inflight_odirect_owners", "process_vm_readv"] {
            assert_eq!(super::open_work(s), None, "{s} fails the suite when inexact");
        }
    }
}
