//! `cargo xtask stress`: gupwatch's stress and fault suite on every kernel
//! of the matrix. Each VM runs `gupwatch stress` (attach/detach cycles under
//! a pin storm, SIGKILL rounds, an overflowing tracking map); the VM runner
//! fails the kernel on any WARNING, BUG, soft lockup or RCU stall.
//!
//! `--mode churn` runs `gupwatch stress --mode churn` instead: the churn_
//! scenarios of `gupwatch check` (short-lived processes pinning at once),
//! one exact interval per cycle. `--append ARG` adds kernel arguments, e.g.
//! `preempt=full` to make Debian's 6.12 preemptible like 7.2.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    binary,
    vm::kernels::{self, Flavour},
    vm::VmRun,
    setup::{self, SetupOptions},
    util,
};

/// Options of `cargo xtask stress`.
#[derive(Debug, Clone)]
pub struct StressOptions {
    /// Kernel aliases to run on.
    pub kernels: Vec<String>,
    /// Attach/detach cycles per kernel.
    pub cycles: u32,
    /// SIGKILL rounds per kernel.
    pub kill_rounds: u32,
    /// Skip building gupwatch.
    pub no_build: bool,
    /// "storm" or "churn" (`gupwatch stress --mode`).
    pub mode: String,
    /// Short-lived processes per churn cycle.
    pub churn_procs: u32,
    /// Extra kernel command-line arguments.
    pub append: Vec<String>,
}

/// Runs the suite; `Ok(true)` when every kernel passed.
pub fn run(o: &StressOptions) -> Result<bool> {
    setup::run(&SetupOptions { refresh: false, no_kernels: false })?;
    let cache = util::cache_dir()?;
    let gupwatch = binary::static_gupwatch(o.no_build)?;
    let mut all_ok = true;
    let mut rows = vec![];
    for k in &o.kernels {
        let alias = kernels::known_alias(k)?;
        let manifest = kernels::ensure(&cache, alias, Flavour::Cloud, false)?;
        let cmd = match o.mode.as_str() {
            "churn" => format!(
                "gupwatch stress --mode churn --cycles {} --churn-procs {} --scratch /mnt/scratch",
                o.cycles, o.churn_procs
            ),
            _ => format!("gupwatch stress --cycles {} --kill-rounds {} --scratch /mnt/scratch", o.cycles, o.kill_rounds),
        };
        let args = if o.append.is_empty() { String::new() } else { format!(" (kernel args: {})", o.append.join(" ")) };
        eprintln!("==== stress on {k}{args}: {cmd} ====");
        let mut vm = VmRun::new(manifest.boot_kernel(&cache), cmd);
        vm.gupwatch = Some(gupwatch.clone());
        vm.kernel_args.extend(o.append.iter().cloned());
        // Storm cycles take ~0.5-3 s each under TCG; a churn cycle about
        // 20 ms per process.
        let per_cycle = if o.mode == "churn" { 4 + o.churn_procs as u64 / 25 } else { 4 };
        vm.timeout = Duration::from_secs(120 + per_cycle * o.cycles as u64);
        vm.tag = format!("stress-{k}");
        let (verdict, detail) = match vm.run() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                match text.lines().rev().find_map(|l| serde_json::from_str::<StressJson>(l).ok()) {
                    Some(j) => {
                        let ok = out.status == 0;
                        let mut detail = j.summary();
                        for d in &j.inexact_details {
                            detail.push_str(&format!("\n        inexact {d}"));
                        }
                        (ok, detail)
                    }
                    None => (false, format!("no JSON report (exit {}); console: {}", out.status, out.console_log.display())),
                }
            }
            // The runner fails on WARNING/BUG/lockups/stalls and timeouts.
            Err(e) => (false, format!("{e:#}")),
        };
        all_ok &= verdict;
        rows.push((k.clone(), verdict, detail));
    }
    println!("\nstress summary");
    for (k, ok, d) in &rows {
        println!("  {:<5} {:<4} {d}", k, if *ok { "PASS" } else { "FAIL" });
    }
    let passed = rows.iter().filter(|r| r.1).count();
    println!("{} passed, {} failed", passed, rows.len() - passed);
    Ok(all_ok)
}

/// The JSON line `gupwatch stress` ends with (`gup-user/src/check/stress.rs`,
/// `StressReport`); a field it lacks shows as `?`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StressJson {
    mode: Option<String>,
    cycles: Option<u64>,
    pins_observed: Option<u64>,
    kernel_pins: Option<u64>,
    max_gap: Option<u64>,
    inexact_intervals: Option<u64>,
    unexplained_intervals: Option<u64>,
    probe_misses: Option<u64>,
    entries_skipped: Option<u64>,
    entries_counted_at_exit: Option<u64>,
    entries_uncounted: Option<u64>,
    stale_records_dropped: Option<u64>,
    untracked_pins: Option<u64>,
    leftover_programs: Option<Vec<u64>>,
    stale_records_cleared: Option<u64>,
    errors: Option<Vec<String>>,
    inexact_details: Vec<String>,
}

/// A field as the summary shows it: strings bare, the rest as JSON (errors
/// as a list), `?` when missing.
fn shown<T: Serialize>(v: &Option<T>) -> String {
    match v {
        Some(x) => serde_json::to_string(x).unwrap_or_else(|_| "?".into()),
        None => "?".into(),
    }
}

impl StressJson {
    /// The run's one-line summary.
    fn summary(&self) -> String {
        format!(
            "mode {} | cycles {} | pins observed {} (kernel {}) | largest gap {} | inexact intervals {} (unexplained {}) | programs skipped by the kernel {} (unpins without entry, counted at release {}, at exit {}, uncounted {}; stale records dropped {}) | untracked pins {} | leftover programs after SIGKILL {} | stale per-call records cleared {} | kernel-log findings 0 | errors {}",
            self.mode.as_deref().unwrap_or("?"),
            shown(&self.cycles),
            shown(&self.pins_observed),
            shown(&self.kernel_pins),
            shown(&self.max_gap),
            shown(&self.inexact_intervals),
            shown(&self.unexplained_intervals),
            shown(&self.probe_misses),
            shown(&self.entries_skipped),
            shown(&self.entries_counted_at_exit),
            shown(&self.entries_uncounted),
            shown(&self.stale_records_dropped),
            shown(&self.untracked_pins),
            shown(&self.leftover_programs),
            shown(&self.stale_records_cleared),
            shown(&self.errors)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shows_strings_bare_and_the_rest_as_json() {
        let j: StressJson = serde_json::from_str(
            r#"{"mode":"churn","cycles":3,"pins_observed":10,"leftover_programs":[0,1],"errors":["boom"],"inexact_details":["a"]}"#,
        )
        .unwrap();
        let s = j.summary();
        assert!(s.starts_with("mode churn | cycles 3 | pins observed 10 (kernel ?)"), "{s}");
        assert!(s.contains("leftover programs after SIGKILL [0,1]"), "{s}");
        assert!(s.ends_with("errors [\"boom\"]"), "{s}");
        assert_eq!(j.inexact_details, ["a"]);
    }
}
