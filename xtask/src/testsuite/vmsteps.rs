//! The steps in VMs after the matrix kernels': the preemptible kernel, 5.10
//! (older than the matrix), the canary, the i915 hooks, the mm selftests,
//! faults, the live view and the end-to-end Prometheus test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::{Step, StepOutcome, Suite, TestOptions, Tier};
use crate::beyondstep;
use crate::rdmastep;
use crate::canary;
use crate::e2e;
use crate::fleet;
use crate::faults;
use crate::i915test;
use crate::livetest;
use crate::mmselftests;
use crate::preemptstep;
use crate::util;
use crate::vm::kernels::{self, BootKernel, Flavour, KernelAlias};

/// The steps, in order; banners name the selected kernels.
pub(super) fn steps(aliases: &[KernelAlias]) -> Vec<Step<'static>> {
    let names = aliases.iter().map(|a| a.name).collect::<Vec<_>>().join(", ");
    let newest = newest().name;
    vec![
        Step::new(
            Tier::Kernel,
            format!("kernel {} preempt=full", preemptstep::KERNEL),
            format!("kernel {} booted preempt=full movablecore=256M: {}", preemptstep::KERNEL, preemptstep::COMMAND),
            preempt_step,
        ),
        Step::new(
            Tier::Kernel,
            "kernel 5.10",
            "kernel 5.10 (Debian bullseye, older than the matrix): gupwatch doctor names the missing BPF helpers, gupwatch run serves the reduced mode",
            beyond_step,
        ),
        Step::new(Tier::Kernel, "RDMA and VFIO", rdmastep::describe(), rdma_step),
        Step::new(
            Tier::Kernel,
            "canary kernel",
            "canary: experimental's newest kernel, if newer than sid's: gupwatch doctor --json, gupwatch check --json; fails only on a panic or a kernel oops/BUG/WARNING",
            canary_step,
        ),
        // The i915 hooks, on the generic flavour of the selected kernels.
        Step::new(
            Tier::Vm,
            "i915 hooks",
            format!("i915 hooks on the generic kernels ({names}): attached at start and when i915 loads later"),
            i915_step,
        ),
        Step::new(
            Tier::Vm,
            "mm selftests",
            format!(
                "the kernel's mm selftests (gup_longterm, cow, hugetlb_dio) on {names}: without and under gupwatch run, identical results, exact counts"
            ),
            mm_step,
        ),
        // Faults and refusals, the live view through tmux (in the guest and
        // from the host), and the end-to-end Prometheus test: on the newest
        // kernel of the matrix only.
        Step::new(
            Tier::Vm,
            "faults",
            format!("faults on kernel {newest}: no BTF, corrupt BTF, a map too large, a memory cgroup too small, a verifier refusal, a missing eBPF object"),
            faults_step,
        ),
        Step::new(
            Tier::Vm,
            "live view",
            format!("live view: gupwatch top in tmux on kernel {newest}, in the guest and through top --connect from the host"),
            live_step,
        ),
        Step::new(
            Tier::EndToEnd,
            "Prometheus end-to-end",
            format!("end-to-end: gupwatch on kernel {newest} scraped by Prometheus; every dashboard query and rule"),
            e2e_step,
        ),
        Step::new(
            Tier::EndToEnd,
            "fleet",
            "fleet: 6.1, 6.12 and 7.2 at once under one Prometheus (pull and remote write); per-node totals, dashboard, orphan alert, series budget".to_string(),
            fleet_step,
        ),
    ]
}

/// The newest kernel of the matrix: the one the last steps run on.
fn newest() -> KernelAlias {
    kernels::MATRIX[kernels::MATRIX.len() - 1]
}

/// The newest kernel, when the selection includes it (else the step says
/// it is skipped, and why).
fn newest_selected(s: &mut Suite, what: &str) -> Option<KernelAlias> {
    let newest = newest();
    if s.aliases.iter().any(|a| a.name == newest.name) {
        return Some(newest);
    }
    println!("SKIPPED: it runs on kernel {} only, which --kernels leaves out", newest.name);
    s.t.skipped.push(format!("{what} (kernel {} not selected)", newest.name));
    None
}

/// A step turned off by its flag: said on its line and in the summary.
fn skipped_by_flag(s: &mut Suite, flag: &str, what: &str) -> StepOutcome {
    println!("SKIPPED ({flag})");
    s.t.skipped.push(format!("{what} ({flag})"));
    StepOutcome::Skipped(flag.into())
}

/// The static gupwatch, or a failure of step `what` when it did not build.
fn built(s: &mut Suite, what: &str) -> Option<PathBuf> {
    if s.gupwatch.is_none() {
        s.t.fail(format!("{what}: not run, gupwatch did not build"));
    }
    s.gupwatch.clone()
}

/// The static gupwatch for a step its flag (`skip` reads it) can turn
/// off: `what` names the step when skipped, `label` in its failures; or
/// how the step ends without it.
fn unless_skipped(
    s: &mut Suite,
    skip: fn(&TestOptions) -> bool,
    flag: &str,
    what: &str,
    label: &str,
) -> std::result::Result<PathBuf, StepOutcome> {
    if skip(s.o) {
        return Err(skipped_by_flag(s, flag, what));
    }
    built(s, label).ok_or(StepOutcome::Ran)
}

/// The newest kernel, fetched, and the static gupwatch, for a step that
/// runs there and that its flag (`skip` reads it) can turn off
/// (`skipped_as` names it when skipped, `label` in its failures); or how
/// the step ends without them.
fn newest_with_build(
    s: &mut Suite,
    skip: fn(&TestOptions) -> bool,
    flag: &str,
    skipped_as: &str,
    label: &str,
) -> std::result::Result<(BootKernel, PathBuf), StepOutcome> {
    if skip(s.o) {
        return Err(skipped_by_flag(s, flag, skipped_as));
    }
    let Some(newest) = newest_selected(s, skipped_as) else {
        return Err(StepOutcome::Skipped(format!("kernel {} not selected", newest().name)));
    };
    let Some(bin) = built(s, label) else {
        return Err(StepOutcome::Ran);
    };
    match util::cache_dir().and_then(|c| kernels::ensure(&c, newest, Flavour::Cloud, false).map(|m| m.boot_kernel(&c))) {
        Ok(k) => Ok((k, bin)),
        Err(e) => {
            s.t.fail(format!("{label}: could not fetch kernel {}: {e:#}", newest.name));
            Err(StepOutcome::Ran)
        }
    }
}

fn preempt_step(s: &mut Suite) -> Result<StepOutcome> {
    let Some(bin) = built(s, &format!("{} preempt=full", preemptstep::KERNEL)) else {
        return Ok(StepOutcome::Ran);
    };
    match preemptstep::run(&s.aliases, &bin, s.o.timeout) {
        Ok(Some(r)) => {
            s.t.add(r.passed, r.failures);
            s.t.skipped.extend(r.reported_only);
        }
        Ok(None) => {
            println!("SKIPPED ({} is not among the selected kernels)", preemptstep::KERNEL);
            s.t.skipped.push(format!("preemptible {} step: kernel not selected", preemptstep::KERNEL));
            return Ok(StepOutcome::Skipped(format!("kernel {} not selected", preemptstep::KERNEL)));
        }
        Err(e) => s.t.step_error(&format!("{} preempt=full", preemptstep::KERNEL), e)?,
    }
    Ok(StepOutcome::Ran)
}

fn beyond_step(s: &mut Suite) -> Result<StepOutcome> {
    let Some(bin) = built(s, "5.10") else {
        return Ok(StepOutcome::Ran);
    };
    match beyondstep::run(&bin, s.o.timeout) {
        Ok(r) => {
            s.t.add(r.passed, r.failures);
        }
        Err(e) => s.t.step_error("5.10", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn rdma_step(s: &mut Suite) -> Result<StepOutcome> {
    let bin = match unless_skipped(s, |o| o.skip_rdma, "--skip-rdma", "RDMA and VFIO step", "RDMA step") {
        Ok(b) => b,
        Err(outcome) => return Ok(outcome),
    };
    match rdmastep::run(&s.aliases, &bin, s.o.timeout) {
        Ok(Some(r)) => s.t.add(r.passed, r.failures),
        Ok(None) => {
            let why = format!("none of {} selected", rdmastep::KERNELS.join(", "));
            s.t.skipped.push(format!("RDMA and VFIO step: {why}"));
            return Ok(StepOutcome::Skipped(why));
        }
        Err(e) => s.t.step_error("RDMA step", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn canary_step(s: &mut Suite) -> Result<StepOutcome> {
    let bin = match unless_skipped(s, |o| o.skip_canary, "--skip-canary", "canary kernel step", "canary") {
        Ok(b) => b,
        Err(outcome) => return Ok(outcome),
    };
    match canary::run(&bin, s.o.timeout, false) {
        Ok(r) => {
            print!("{}", canary::render(&r));
            for c in &r.checks {
                s.t.count(c.ok, || format!("canary on {}: {}: {}", r.kernel.as_deref().unwrap_or("?"), c.name, c.detail));
            }
            if let Some(why) = &r.skipped {
                s.t.skipped.push(format!("canary kernel step: {why}"));
                return Ok(StepOutcome::Skipped(why.clone()));
            }
        }
        Err(e) => s.t.step_error("canary", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn i915_step(s: &mut Suite) -> Result<StepOutcome> {
    let bin = match unless_skipped(s, |o| o.skip_i915, "--skip-i915", "i915 hook test", "i915") {
        Ok(b) => b,
        Err(outcome) => return Ok(outcome),
    };
    let results = i915test::run(&i915test::I915Options {
        kernels: s.aliases.clone(),
        gupwatch: bin,
        timeout: s.o.timeout,
    })?;
    for r in &results {
        for c in &r.checks {
            s.t.count(c.ok, || format!("i915 on kernel {}: {}: {}", r.alias, c.name, c.detail));
        }
        if let Some(e) = &r.error {
            s.t.fail(format!("i915 on kernel {}: {e}", r.alias));
        }
    }
    Ok(StepOutcome::Ran)
}

fn mm_step(s: &mut Suite) -> Result<StepOutcome> {
    let bin = match unless_skipped(s, |o| o.skip_mm_selftests, "--skip-mm-selftests", "mm selftests", "mm selftests") {
        Ok(b) => b,
        Err(outcome) => return Ok(outcome),
    };
    match mmselftests::suite_step(&s.aliases, &bin, s.o.timeout) {
        Ok((passed, failures)) => {
            s.t.add(passed, failures);
        }
        Err(e) => s.t.step_error("mm selftests", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn faults_step(s: &mut Suite) -> Result<StepOutcome> {
    let Some(newest) = newest_selected(s, "faults") else {
        return Ok(StepOutcome::Skipped(format!("kernel {} not selected", newest().name)));
    };
    let Some(bin) = built(s, "faults") else {
        return Ok(StepOutcome::Ran);
    };
    match faults::run(newest.name, bin, s.o.timeout) {
        Ok(cases) => {
            for c in cases {
                if c.ok {
                    println!("  ok    {}: {}", c.name, c.detail);
                    s.t.passed += 1;
                } else {
                    println!("  FAIL  {}: {}", c.name, c.detail);
                    s.t.failed += 1;
                    s.t.failures.push(format!("faults: {}: {}", c.name, c.detail));
                }
            }
        }
        Err(e) => s.t.step_error("faults", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn live_step(s: &mut Suite) -> Result<StepOutcome> {
    let (kernel, bin) = match newest_with_build(s, |o| o.skip_live, "--skip-live", "live-view test", "live view") {
        Ok(k) => k,
        Err(outcome) => return Ok(outcome),
    };
    let timeout = s.o.timeout.max(Duration::from_secs(livetest::MIN_TIMEOUT_S));
    match livetest::run(&livetest::LiveOptions { kernel, gupwatch: bin, timeout }) {
        Ok(report) => {
            print!("{}", e2e::render(&e2e::E2eReport { checks: report.checks.clone(), notes: vec![], elapsed: report.elapsed }));
            print!("{}", livetest::render_screens(&report));
            println!("{}", livetest::timing(&report));
            for c in &report.checks {
                s.t.count(c.ok, || format!("live view: {}", c.name));
            }
        }
        Err(e) => s.t.step_error("live view", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn e2e_step(s: &mut Suite) -> Result<StepOutcome> {
    let (kernel, bin) = match newest_with_build(
        s,
        |o| o.skip_e2e,
        "--skip-e2e",
        "end-to-end Prometheus test",
        "end-to-end",
    ) {
        Ok(k) => k,
        Err(outcome) => return Ok(outcome),
    };
    match e2e::run(&e2e::E2eOptions {
        kernel,
        gupwatch: bin,
        timeout: s.o.timeout,
    }) {
        Ok(report) => count_checks(s, "end-to-end", &report),
        Err(e) => s.t.step_error("end-to-end", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn fleet_step(s: &mut Suite) -> Result<StepOutcome> {
    if s.o.skip_fleet {
        return Ok(skipped_by_flag(s, "--skip-fleet", "fleet test"));
    }
    let missing: Vec<&str> = fleet::NODES.iter().map(|n| n.kernel).filter(|k| !s.aliases.iter().any(|a| a.name == *k)).collect();
    if !missing.is_empty() {
        println!("SKIPPED: it boots every kernel of the matrix, and --kernels leaves out {}", missing.join(", "));
        s.t.skipped.push(format!("fleet test (kernels {} not selected)", missing.join(", ")));
        return Ok(StepOutcome::Skipped("kernels not selected".into()));
    }
    let Some(bin) = built(s, "fleet") else {
        return Ok(StepOutcome::Ran);
    };
    let o = fleet::FleetOptions {
        gupwatch: bin,
        timeout: Duration::from_secs(fleet::DEFAULT_TIMEOUT_S),
        memory_mib: fleet::DEFAULT_MEMORY_MIB,
    };
    match fleet::run(&o) {
        Ok(report) => count_checks(s, "fleet", &report),
        Err(e) => s.t.step_error("fleet", e)?,
    }
    Ok(StepOutcome::Ran)
}

/// Prints a report's checks and counts each as a pass or a failure of
/// step `label`.
fn count_checks(s: &mut Suite, label: &str, report: &e2e::E2eReport) {
    print!("{}", e2e::render(report));
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    println!(
        "{label}: {} of {} checks passed in {:.0} s",
        report.checks.len() - failed,
        report.checks.len(),
        report.elapsed.as_secs_f64()
    );
    for c in &report.checks {
        s.t.count(c.ok, || format!("{label}: {}: {}", c.name, c.detail));
    }
}
