//! The fuzz harnesses (fuzz/src/harness.rs), run over the committed seeds
//! (fuzz/seeds/<target>/) on every `cargo test`: the seeds include every
//! input a fuzzer once crashed on, so this is also the regression suite
//! for those. And `promtool check metrics` over the expositions of the
//! adversarial `comm` seeds, as an outside opinion on the Rust-side check.

#[path = "../../fuzz/src/exposition.rs"]
#[allow(dead_code)]
mod exposition;
#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_seed_passes_its_harness() {
    let mut failed = vec![];
    for (target, run) in harness::TARGETS {
        for (name, data) in seeds(target) {
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(format!("{target}/{name}"));
            }
        }
    }
    assert!(failed.is_empty(), "seeds that fail their harness: {failed:?}");
}

#[test]
fn every_target_has_seeds_and_a_fuzz_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, _) in harness::TARGETS {
        assert!(fuzz_dir().join("fuzz_targets").join(format!("{target}.rs")).exists(), "no fuzz target for {target}");
        assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} is not a [[bin]] of fuzz/Cargo.toml");
        assert!(!seeds(target).is_empty(), "no seeds for {target}");
    }
}

fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}): `cargo xtask setup` installs Debian's prometheus package, which has it")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// Quotes, backslashes, newlines, invalid UTF-8, empty names, names that
/// look like metric lines: what promtool makes of the exposition.
#[test]
fn promtool_accepts_adversarial_comms() {
    let mut checked = 0;
    for (name, data) in seeds("metrics_exposition") {
        let (d, comms) = harness::scrape_data_from(&data);
        let text = gupwatch::export::prometheus::render(&Arc::new(d), gupwatch::export::prometheus::Format::Prometheus);
        if let Err(e) = promtool(&text) {
            panic!("promtool rejects the exposition of seed {name} (comms {comms:?}):\n{e}\n--- exposition ---\n{text}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} seeds");
}

/// A reading of `snap` on a 6.12 plan with only pin_user_pages_fast,
/// every hook attached: the state the fuzz target's regressions render.
fn reading_of(snap: gupwatch::model::counters::Snapshot) -> Arc<gupwatch::collect::Reading> {
    use gupwatch::collect::{PlanSummary, Reading, Settings, TopProcesses};
    let kallsyms = gupwatch::kernel::kallsyms::Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
    let plan = gupwatch::kernel::plan::ProbePlan::resolve("6.12.0".into(), Err("test".into()), &kallsyms);
    let mut plan = PlanSummary::from_plan(&plan);
    for h in &mut plan.hooks {
        h.attached = true;
    }
    Arc::new(Reading::new(plan, Some(snap), None, vec![], &mut TopProcesses::default(), Settings::default()))
}

/// The metrics_exposition fuzz target's crash: latency buckets whose sum
/// passes u64::MAX made the encoder's cumulative sum overflow (a panic in
/// debug builds, a decreasing bucket in release). Now they saturate, and
/// the exposition stays valid with `_count` equal to the `+Inf` bucket.
#[test]
fn regression_histogram_bucket_sum_overflow() {
    use gup_common::{Api, LATENCY_BUCKETS};
    use gupwatch::{
        export::prometheus::{render, Format},
    };
    let mut snap = gupwatch::model::counters::Snapshot::default();
    let s = &mut snap.apis[Api::PinUserPagesFast as usize];
    s.latency_log2 = [u64::MAX / 2; LATENCY_BUCKETS];
    let d = reading_of(snap);
    for (format, flavor) in [(Format::Prometheus, exposition::Flavor::Prometheus), (Format::OpenMetrics, exposition::Flavor::OpenMetrics)] {
        let text = render(&d, format);
        let exp = exposition::check(&text, flavor).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let inf = exp
            .named("gupwatch_call_duration_seconds_bucket")
            .find(|s| s.labels.iter().any(|(n, v)| n == "api" && v == "pin_user_pages_fast") && s.labels.iter().any(|(n, v)| n == "le" && v == "+Inf"))
            .expect("the +Inf bucket");
        assert_eq!(inf.value, u64::MAX as f64);
    }
    promtool(&render(&d, Format::Prometheus)).unwrap();
}

/// The metrics_exposition fuzz target's second crash: outstanding pages
/// (pinned minus unpinned, as i64) overflowed on wrapped counters. Now the
/// difference wraps, exact whenever it fits.
#[test]
fn regression_outstanding_difference_overflow() {
    use gup_common::Api;
    use gupwatch::{
        export::{
            api::snapshot_json,
            prometheus::{render, Format},
        },
    };
    let mut snap = gupwatch::model::counters::Snapshot::default();
    snap.apis[Api::PinUserPagesFast as usize].pages = i64::MAX as u64;
    snap.apis[Api::UnpinUserPages as usize].pages = u64::MAX;
    let d = reading_of(snap);
    let text = render(&d, Format::Prometheus);
    let exp = exposition::check(&text, exposition::Flavor::Prometheus).unwrap();
    assert_eq!(exp.named("gupwatch_outstanding_pages").next().unwrap().value, i64::MIN as f64);
    assert_eq!(snapshot_json(&d, 5).outstanding_pages, Some(i64::MIN));
}
