//! `cargo xtask test`: unit tests, the hostile-client test on the host
//! ([`crate::hostile`]), then `gupwatch check --json` in a VM on
//! every kernel of the matrix, with a table per kernel, then the i915 hooks
//! on the generic flavour of those kernels ([`crate::i915test`]), the
//! kernel's mm selftests under gupwatch ([`crate::mmselftests`]), the
//! faults, the live view and the end-to-end Prometheus test, and one
//! closing `N passed, N failed` line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::vm::kernels::{self, KernelAlias};

mod doctor;
mod expected;
mod host;
mod kernelstep;
mod report;
mod vmsteps;

pub use doctor::{judge_doctor, kernel_step_command, split_doctor, word, DoctorCheck, DOCTOR_BEGIN, DOCTOR_END, DOCTOR_OK_IN_VMS};
pub use expected::{expected_reachable, judge_reachable, Reachability, PREEMPT_STEP};
pub use kernelstep::{run_kernel_step, KernelRun};
pub use report::{open_work, parse_report, table, CheckJson, Ledger, NotReachable, Report, Scenario};

/// Options of `cargo xtask test`: the command line itself (the doc
/// comments are its help text).
#[derive(Debug, Clone, clap::Args)]
pub struct TestOptions {
    /// Kernels to run, comma-separated (default: 6.1,6.12,7.2).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Time limit of each VM, in seconds (a healthy check takes well
    /// under a minute even under TCG).
    #[arg(long, default_value = "300", value_parser = seconds)]
    pub timeout: Duration,
    /// Skip `cargo test --workspace`.
    #[arg(long)]
    pub skip_unit: bool,
    /// Skip the set-up checks.
    #[arg(long)]
    pub skip_setup: bool,
    /// Skip the end-to-end Prometheus test (reported as skipped).
    #[arg(long)]
    pub skip_e2e: bool,
    /// Skip the fleet test, three VMs at once (reported as skipped).
    #[arg(long)]
    pub skip_fleet: bool,
    /// Seconds each fuzz target runs (0 skips fuzzing, reported as
    /// skipped).
    #[arg(long, default_value_t = 10)]
    pub fuzz_seconds: u32,
    /// Skip the i915 hook test (reported as skipped).
    #[arg(long)]
    pub skip_i915: bool,
    /// Skip the live-view test (reported as skipped).
    #[arg(long)]
    pub skip_live: bool,
    /// Skip the canary step, experimental's newest kernel (reported
    /// as skipped).
    #[arg(long)]
    pub skip_canary: bool,
    /// Skip the kernel's mm selftests (reported as skipped).
    #[arg(long)]
    pub skip_mm_selftests: bool,
    /// Skip the soft-RoCE and VFIO step on the generic kernels (reported
    /// as skipped).
    #[arg(long)]
    pub skip_rdma: bool,
}

/// A whole number of seconds, as `--timeout` takes it.
fn seconds(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

/// Huge pages reserved at boot in the kernel steps' VMs (8 MiB).
pub const HUGEPAGES: u32 = 4;

/// Where a step's result goes in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// On the host: set-up, unit and integration tests, the build, the
    /// packages, the hostile clients.
    Host,
    /// The cargo-fuzz targets.
    Fuzz,
    /// `gupwatch check` and doctor in a VM per kernel (the matrix, the
    /// preemptible kernel, 5.10, the canary).
    Kernel,
    /// Other tests in VMs: i915, mm selftests, faults, the live view.
    Vm,
    /// gupwatch scraped by Prometheus.
    EndToEnd,
}

impl Tier {
    const ALL: [Tier; 5] = [Tier::Host, Tier::Fuzz, Tier::Kernel, Tier::Vm, Tier::EndToEnd];

    fn name(self) -> &'static str {
        match self {
            Tier::Host => "host tests",
            Tier::Fuzz => "fuzz",
            Tier::Kernel => "VM kernel steps",
            Tier::Vm => "VM tests",
            Tier::EndToEnd => "end-to-end",
        }
    }
}

/// How a step ended, for the summary: it ran (its checks are in the
/// tally), or it was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// It ran.
    Ran,
    /// It did not run.
    Skipped(String),
}

/// What a step does.
type StepFn<'a> = Box<dyn Fn(&mut Suite) -> Result<StepOutcome> + 'a>;

/// One step of the suite: its banner, and what it does.
struct Step<'a> {
    tier: Tier,
    /// Short name for the summary.
    name: String,
    /// The banner's text.
    title: String,
    run: StepFn<'a>,
}

impl<'a> Step<'a> {
    fn new(
        tier: Tier,
        name: impl Into<String>,
        title: impl Into<String>,
        run: impl Fn(&mut Suite) -> Result<StepOutcome> + 'a,
    ) -> Step<'a> {
        Step { tier, name: name.into(), title: title.into(), run: Box::new(run) }
    }
}

/// What the steps share: the options, the kernels, the static gupwatch
/// (once built) and the tally.
struct Suite<'a> {
    o: &'a TestOptions,
    aliases: Vec<KernelAlias>,
    gupwatch: Option<PathBuf>,
    t: Tally,
}

/// One step's line in the summary.
#[derive(Debug)]
struct StepRecord {
    tier: Tier,
    name: String,
    outcome: StepOutcome,
    passed: usize,
    failed: usize,
}

/// Totals of the run.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
    /// Steps not run; printed as skipped, never counted as passed.
    skipped: Vec<String>,
    /// Each step, as it ended.
    steps: Vec<StepRecord>,
}

impl Tally {
    /// Counts one verdict; a failure is kept for the summary as `failure`
    /// says it.
    fn count(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(failure());
        }
    }

    /// Counts a step's passes and its failures (already one line each).
    fn add(&mut self, passed: usize, failures: Vec<String>) {
        self.passed += passed;
        self.failed += failures.len();
        self.failures.extend(failures);
    }

    /// A step's own error: an interrupt ends the suite (returned), any
    /// other fails the step as `what: error`.
    fn step_error(&mut self, what: &str, e: anyhow::Error) -> Result<()> {
        if e.downcast_ref::<crate::util::Interrupted>().is_some() {
            return Err(e);
        }
        self.fail(format!("{what}: {e:#}"));
        Ok(())
    }

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

/// The summary's per-tier lines: what ran (with its counts) and what was
/// skipped.
fn tier_lines(steps: &[StepRecord]) -> Vec<String> {
    let mut out = Vec::new();
    for tier in Tier::ALL {
        let of: Vec<&StepRecord> = steps.iter().filter(|s| s.tier == tier).collect();
        if of.is_empty() {
            continue;
        }
        let ran: Vec<String> = of
            .iter()
            .filter(|s| s.outcome == StepOutcome::Ran)
            .map(|s| format!("{} ({} passed, {} failed)", s.name, s.passed, s.failed))
            .collect();
        let skipped: Vec<String> = of
            .iter()
            .filter_map(|s| match &s.outcome {
                StepOutcome::Skipped(why) => Some(format!("{} ({why})", s.name)),
                StepOutcome::Ran => None,
            })
            .collect();
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        out.push(format!("  {}: ran {}; skipped {}", tier.name(), list(&ran), list(&skipped)));
    }
    out
}

fn banner(step: usize, total: usize, what: &str) {
    println!("\n==== [{step}/{total}] {what} ====");
}

/// The kernels `--kernels` names (default: the whole matrix).
fn selected_kernels(o: &TestOptions) -> Result<Vec<KernelAlias>> {
    if o.kernels.is_empty() {
        return Ok(kernels::MATRIX.to_vec());
    }
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
        .collect()
}

/// Every step, in order: the host's, one per selected kernel, then the
/// other VM steps.
fn steps(aliases: &[KernelAlias]) -> Vec<Step<'static>> {
    let mut steps = host::steps();
    for a in aliases {
        steps.push(kernelstep::step(*a));
    }
    steps.extend(vmsteps::steps(aliases));
    steps
}

/// Runs the whole suite; `Ok(true)` when everything passed.
pub fn run(o: &TestOptions) -> Result<bool> {
    let aliases = selected_kernels(o)?;
    let steps = steps(&aliases);
    let total = steps.len();
    let mut s = Suite { o, aliases, gupwatch: None, t: Tally::default() };
    let started = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        banner(i + 1, total, &step.title);
        let (passed, failed) = (s.t.passed, s.t.failed);
        let outcome = (step.run)(&mut s)?;
        let record = StepRecord {
            tier: step.tier,
            name: step.name.clone(),
            outcome,
            passed: s.t.passed - passed,
            failed: s.t.failed - failed,
        };
        s.t.steps.push(record);
    }
    let t = s.t;
    println!(
        "\n==== summary ({:.0} s) ====",
        started.elapsed().as_secs_f64()
    );
    for l in tier_lines(&t.steps) {
        println!("{l}");
    }
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

    #[test]
    fn summary_says_per_tier_what_ran_and_what_was_skipped() {
        let rec = |tier, name: &str, outcome, passed, failed| StepRecord { tier, name: name.into(), outcome, passed, failed };
        let steps = [
            rec(Tier::Host, "setup", StepOutcome::Skipped("--skip-setup".into()), 0, 0),
            rec(Tier::Host, "dist", StepOutcome::Ran, 1, 0),
            rec(Tier::Fuzz, "fuzz targets", StepOutcome::Skipped("--fuzz-seconds 0".into()), 0, 0),
            rec(Tier::Kernel, "kernel 7.2", StepOutcome::Ran, 60, 1),
        ];
        assert_eq!(
            tier_lines(&steps),
            [
                "  host tests: ran dist (1 passed, 0 failed); skipped setup (--skip-setup)",
                "  fuzz: ran none; skipped fuzz targets (--fuzz-seconds 0)",
                "  VM kernel steps: ran kernel 7.2 (60 passed, 1 failed); skipped none",
            ]
        );
    }

    #[test]
    fn steps_are_numbered_as_before() {
        // 7 on the host (the Kubernetes base among them), one per kernel,
        // 10 after them (the fleet last).
        assert_eq!(steps(&kernels::MATRIX).len(), 7 + kernels::MATRIX.len() + 10);
    }
}
