//! The host's steps: set-up, the workspace's unit and integration tests,
//! the fuzz targets, the static build, the packages and the hostile
//! clients.

use std::process::Command;

use anyhow::Result;

use super::{Step, StepOutcome, Suite, Tally, Tier};
use crate::binary;
use crate::dist;
use crate::fuzz;
use crate::hostile;
use crate::setup::{self, SetupOptions};
use crate::util;

/// The host's steps, in order.
pub(super) fn steps() -> Vec<Step<'static>> {
    vec![
        Step::new(Tier::Host, "setup", "setup", setup_step),
        Step::new(Tier::Host, "unit and integration tests", "unit tests: cargo test --workspace", unit_step),
        Step::new(Tier::Fuzz, "fuzz targets", "fuzz: every cargo-fuzz target, bounded", fuzz_step),
        Step::new(Tier::Host, "static build", "build static gupwatch", build_step),
        Step::new(Tier::Host, "dist", "dist: static binary, tarball and Debian package", dist_step),
        Step::new(
            Tier::Host,
            "kubernetes base",
            "kubernetes: deploy/kubernetes is current with dashboards/, renders and validates (cargo xtask k8s)",
            k8s_step,
        ),
        Step::new(
            Tier::Host,
            "hostile clients",
            "hostile clients on the host: gupwatch run against 2,000 stalled clients, a flood, slow readers and malformed requests, plain and TLS + basic auth",
            |s: &mut Suite| {
                match s.gupwatch.clone() {
                    None => s.t.fail("hostile clients: not run, gupwatch did not build".into()),
                    Some(bin) => hostile_step(&mut s.t, &bin),
                }
                Ok(StepOutcome::Ran)
            },
        ),
    ]
}

fn k8s_step(s: &mut Suite) -> Result<StepOutcome> {
    match crate::k8s::run(false, crate::k8s::DEFAULT_JOB_SELECTOR) {
        Ok(o) => s.t.add(o.passed, o.failures),
        Err(e) => s.t.step_error("k8s", e)?,
    }
    Ok(StepOutcome::Ran)
}

fn setup_step(s: &mut Suite) -> Result<StepOutcome> {
    if s.o.skip_setup {
        println!("skipped (--skip-setup)");
        return Ok(StepOutcome::Skipped("--skip-setup".into()));
    }
    if let Err(e) = setup::run(&SetupOptions {
        refresh: false,
        no_kernels: true,
    }) {
        s.t.fail(format!("setup: {e:#}"));
    }
    Ok(StepOutcome::Ran)
}

fn unit_step(s: &mut Suite) -> Result<StepOutcome> {
    if s.o.skip_unit {
        println!("skipped (--skip-unit)");
        return Ok(StepOutcome::Skipped("--skip-unit".into()));
    }
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(util::workspace_root())
        .args(["test", "--workspace"]);
    if let Err(e) = util::run(&mut cmd) {
        s.t.fail(format!("unit tests: {e:#}"));
    }
    Ok(StepOutcome::Ran)
}

fn fuzz_step(s: &mut Suite) -> Result<StepOutcome> {
    if s.o.fuzz_seconds == 0 {
        println!("SKIPPED (--fuzz-seconds 0)");
        s.t.skipped.push("fuzzing (--fuzz-seconds 0)".into());
        return Ok(StepOutcome::Skipped("--fuzz-seconds 0".into()));
    }
    match fuzz::run(&fuzz::FuzzOptions {
        seconds: s.o.fuzz_seconds,
        targets: Vec::new(),
        sanitizer: "none".into(),
    }) {
        Ok(tally) => {
            s.t.passed += tally.passed as usize;
            s.t.failed += tally.failed as usize;
            if tally.failed > 0 {
                s.t.failures.push(format!(
                    "fuzz: {} target(s) crashed; inputs in fuzz/artifacts/ (see above)",
                    tally.failed
                ));
            }
        }
        Err(e) => s.t.fail(format!("fuzz: {e:#}")),
    }
    Ok(StepOutcome::Ran)
}

fn build_step(s: &mut Suite) -> Result<StepOutcome> {
    s.gupwatch = match binary::build_static_gupwatch() {
        Ok(p) => Some(p),
        Err(e) => {
            s.t.fail(format!("build: {e:#}"));
            None
        }
    };
    Ok(StepOutcome::Ran)
}

fn dist_step(s: &mut Suite) -> Result<StepOutcome> {
    if s.gupwatch.is_none() {
        s.t.fail("dist: not run, gupwatch did not build".into());
    } else {
        match dist::run() {
            Ok(d) => {
                println!("{}", dist::describe(&d));
                s.t.passed += 1;
            }
            Err(e) => s.t.fail(format!("dist: {e:#}")),
        }
    }
    Ok(StepOutcome::Ran)
}

/// The hostile-client step ([`hostile`]): each check counts in the tally.
fn hostile_step(t: &mut Tally, bin: &std::path::Path) {
    match hostile::run(&hostile::HostileOptions::new(bin.to_path_buf())) {
        Ok(reports) => {
            for r in &reports {
                print!("{}", hostile::render(r));
                for c in &r.checks {
                    t.count(c.ok, || format!("hostile clients ({}): {}: {}", r.mode.name(), c.name, c.detail));
                }
            }
        }
        Err(e) => t.fail(format!("hostile clients: {e:#}")),
    }
}

