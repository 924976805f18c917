//! The preemptible step of `cargo xtask test`: Debian's 6.12 booted with
//! `preempt=full` and a ZONE_MOVABLE (`movablecore=`), running the churn,
//! in-flight and reverted-pin scenarios.
//!
//! 7.2 and later are preemptible by default (and in the kernel steps);
//! 6.12 is the matrix kernel that is not, and on a preemptible kernel BPF
//! trampoline programs can be preempted, which is what made the kernel skip
//! gupwatch's programs under process churn (docs/exactness.md). Booting
//! 6.12 both ways keeps that difference in the suite. The movable zone
//! makes every LONGTERM pin of fresh anonymous memory migrate first, so
//! the same boot runs `io_uring_register_movable` (which needs it) and the
//! churn of io_uring registrations with thousands of migrations, and
//! `weak_pin_odirect_movable` (with `null_blk` loaded for its slow device).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::vm::kernels::{self, Flavour, KernelAlias};
use crate::vm::VmRun;
use crate::testsuite::{expected_reachable, judge_reachable, open_work, parse_report, table, PREEMPT_STEP};
use crate::util;

/// The matrix kernel this step boots preemptible.
pub const KERNEL: &str = "6.12";

/// What the guest runs.
pub const COMMAND: &str =
    "gupwatch check --json --only churn_,inflight_,io_uring_register_movable,io_uring_register_race,weak_pin_";


/// The ZONE_MOVABLE the guest gets.
const MOVABLECORE: &str = "movablecore=256M";

/// The line the kernel prints at boot once `preempt=full` took.
const PREEMPT_FULL: &str = "Dynamic Preempt: full";

/// The step's verdicts: passed checks, failures, and scenarios reported
/// only (open work) with the reason.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Checks that passed.
    pub passed: usize,
    /// One line per failed check.
    pub failures: Vec<String>,
    /// Failed scenarios of open work, not counted as failures.
    pub reported_only: Vec<String>,
}

/// Boots 6.12 with `preempt=full` and judges the churn and in-flight
/// scenarios; `None` when 6.12 is not among the selected kernels.
pub fn run(aliases: &[KernelAlias], gupwatch: &Path, timeout: Duration) -> Result<Option<Outcome>> {
    let Some(alias) = aliases.iter().find(|a| a.name == KERNEL) else {
        return Ok(None);
    };
    let cache = util::cache_dir()?;
    let kernel = kernels::ensure(&cache, *alias, Flavour::Cloud, false)
        .map(|m| m.boot_kernel(&cache))
        .with_context(|| format!("fetching kernel {KERNEL}"))?;
    let mut vm = VmRun::test_step(kernel, COMMAND, gupwatch, timeout, format!("test {KERNEL} preempt=full {MOVABLECORE}"));
    vm.kernel_args.push("preempt=full".into());
    vm.kernel_args.push(MOVABLECORE.into());
    // The slow device `weak_pin_odirect_movable` creates through configfs.
    vm.extra_modules.push("null_blk".into());
    let outcome = vm.run()?;
    println!("{}", outcome.summary(&format!("{KERNEL} preempt=full")));
    let mut out = Outcome::default();
    let console = std::fs::read_to_string(&outcome.console_log).unwrap_or_default();
    if console.contains(PREEMPT_FULL) {
        out.passed += 1;
        println!("  PASS  the kernel says \"{PREEMPT_FULL}\"");
    } else {
        out.failures.push(format!(
            "{KERNEL} preempt=full: the console never says \"{PREEMPT_FULL}\", so the kernel did not run preemptible (console log: {})",
            outcome.console_log.display()
        ));
    }
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let report = match parse_report(&stdout) {
        Ok(r) => r,
        Err(e) => {
            out.failures.push(format!(
                "{KERNEL} preempt=full: gupwatch check exited with status {} and printed no report: {e:#}; console log: {}",
                outcome.status,
                outcome.console_log.display()
            ));
            return Ok(Some(out));
        }
    };
    print!("{}", table(&report));
    if report.scenarios.is_empty() {
        out.failures.push(format!("{KERNEL} preempt=full: the report lists no scenarios"));
    }
    // Every scenario the step selects must run, the movable one included
    // (not "not reachable"): the committed list says which.
    if let Some(expected) = expected_reachable(PREEMPT_STEP) {
        let r = judge_reachable(&expected, &report);
        for l in r.lines() {
            println!("{l}");
        }
        if r.ok() {
            out.passed += 1;
        } else {
            out.failures.push(format!("{KERNEL} preempt=full {MOVABLECORE}: {}", r.problem()));
        }
    }
    for s in &report.scenarios {
        if s.passed() {
            out.passed += 1;
        } else if let Some(why) = open_work(&s.name) {
            out.reported_only.push(format!("{KERNEL} preempt=full: scenario {} inexact, reported only ({why})", s.name));
        } else {
            out.failures.push(format!("{KERNEL} preempt=full: scenario {}", s.name));
        }
    }
    Ok(Some(out))
}
