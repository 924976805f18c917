//! One kernel's step: boot it once, measure the daemon's peak memory, run
//! doctor and check, and judge all three.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::doctor::{judge_doctor, kernel_step_command, split_doctor};
use super::expected::{expected_reachable, judge_reachable};
use super::report::{open_work, parse_report, table, Report};
use super::{Step, StepOutcome, Suite, Tally, Tier, HUGEPAGES};
use crate::util;
use crate::vm::kernels::{self, BootKernel, Flavour, KernelAlias};
use crate::vm::{VmOutcome, VmRun};

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
    let mut run = VmRun::test_step(kernel, kernel_step_command(), gupwatch, timeout, format!("test {label}"));
    // A few 2 MiB huge pages, so io_uring_register_hugetlb runs (it
    // caught 7.0's compound_info mask encoding) instead of being
    // reported unreachable.
    run.kernel_args.push(format!("hugepages={HUGEPAGES}"));
    // QEMU's IOMMU and PCI test device, so the vfio_ scenarios run
    // (VFIO_IOMMU_MAP_DMA, the classic LONGTERM pinner).
    run.vfio = true;
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


/// The step of one matrix kernel.
pub(super) fn step(a: KernelAlias) -> Step<'static> {
    Step::new(
        Tier::Kernel,
        format!("kernel {}", a.name),
        format!(
            "kernel {} (Debian {}): gupwatch run peak RSS, gupwatch doctor --json, gupwatch check --json",
            a.name, a.suite
        ),
        move |s: &mut Suite| matrix_kernel(s, a),
    )
}

/// Boots one matrix kernel and judges the daemon's memory, doctor and
/// check.
fn matrix_kernel(s: &mut Suite, a: KernelAlias) -> Result<StepOutcome> {
    let Some(bin) = s.gupwatch.clone() else {
        s.t.fail(format!(
            "kernel {}: not run, gupwatch did not build",
            a.name
        ));
        return Ok(StepOutcome::Ran);
    };
    let kernel = match util::cache_dir()
        .and_then(|c| kernels::ensure(&c, a, Flavour::Cloud, false).map(|m| m.boot_kernel(&c)))
    {
        Ok(k) => k,
        Err(e) => {
            s.t.fail(format!("kernel {}: could not fetch it: {e:#}", a.name));
            return Ok(StepOutcome::Ran);
        }
    };
    let run = match run_kernel_step(kernel, a.name, &bin, s.o.timeout) {
        Ok(r) => r,
        Err(e) => {
            if e.downcast_ref::<util::Interrupted>().is_some() {
                return Err(e);
            }
            s.t.fail(format!("kernel {}: {e:#}", a.name));
            return Ok(StepOutcome::Ran);
        }
    };
    let uname = parse_report(&run.check_stdout).ok().map(|r| r.kernel).filter(|k| k != "?");
    judge_rss(&mut s.t, a.name, run.rss.as_ref());
    judge_doctor_step(&mut s.t, a.name, &run, uname.as_deref());
    judge_check(&mut s.t, a.name, &run);
    Ok(StepOutcome::Ran)
}

/// The daemon's peak RSS against its bound ([`crate::rssguard`]).
fn judge_rss(t: &mut Tally, name: &str, rss: Option<&crate::rssguard::Reading>) {
    let (rss_ok, rss_detail) = crate::rssguard::judge(rss);
    let rss_what = format!("gupwatch run peak RSS < {} MiB", crate::rssguard::PEAK_RSS_BOUND_KIB / 1024);
    println!("  {}  {rss_what:<40} {rss_detail}", if rss_ok { "PASS" } else { "FAIL" });
    t.count(rss_ok, || format!("kernel {name}: {rss_what}: {rss_detail}"));
}

/// Doctor's report against what the test VMs must have.
fn judge_doctor_step(t: &mut Tally, name: &str, run: &KernelRun, uname: Option<&str>) {
    match &run.doctor {
        Some((json, status)) => {
            println!("gupwatch doctor --json:");
            for c in judge_doctor(json, *status, uname) {
                println!("  {}  {:<40} {}", if c.ok { "PASS" } else { "FAIL" }, c.what, c.detail);
                t.count(c.ok, || format!("kernel {name}: doctor: {}: {}", c.what, c.detail));
            }
        }
        None => t.fail(format!(
            "kernel {name}: gupwatch doctor --json printed nothing between its markers; console log: {}",
            run.outcome.console_log.display()
        )),
    }
}

/// Check's report: every scenario's verdict, and the scenarios reached
/// against the committed list ([`super::expected`]).
fn judge_check(t: &mut Tally, name: &str, run: &KernelRun) {
    let outcome = &run.outcome;
    match parse_report(&run.check_stdout) {
        Ok(report) => {
            println!("gupwatch check --json on guest kernel: {}", report.kernel);
            print!("{}", table(&report));
            let mut all_ok = true;
            if report.scenarios.is_empty() {
                t.fail(format!("kernel {name}: the report lists no scenarios"));
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
                    t.skipped.push(format!("kernel {name}: scenario {} inexact, reported only ({why})", s.name));
                } else {
                    all_ok = false;
                    t.failed += 1;
                    t.failures.push(format!("kernel {name}: scenario {}", s.name));
                }
            }
            all_ok &= judge_reach(t, &format!("kernel {name}"), name, &report);
            if outcome.status != 0 && all_ok && !open_failed {
                t.fail(format!("kernel {name}: gupwatch check exited with status {}", outcome.status));
            }
        }
        Err(e) => t.fail(format!(
            "kernel {name}: gupwatch check exited with status {} and its output is not a report: {e:#}; console log: {}",
            outcome.status,
            outcome.console_log.display()
        )),
    }
}

/// Prints which scenarios were reached against the committed list for
/// `step` and counts the verdict; `false` when it failed.
pub(crate) fn judge_reach(t: &mut Tally, label: &str, step: &str, report: &Report) -> bool {
    let Some(expected) = expected_reachable(step) else {
        return true;
    };
    let r = judge_reachable(&expected, report);
    for l in r.lines() {
        println!("{l}");
    }
    if r.ok() {
        t.passed += 1;
        true
    } else {
        t.failed += 1;
        t.failures.push(format!("{label}: {}", r.problem()));
        false
    }
}
