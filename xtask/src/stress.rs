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

use anyhow::{Context, Result};
use serde_json::Value;

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
    let gupwatch = if o.no_build { binary::static_gupwatch_path() } else { binary::build_static_gupwatch()? };
    let mut all_ok = true;
    let mut rows = vec![];
    for k in &o.kernels {
        let alias = kernels::alias(k).with_context(|| format!("unknown kernel `{k}` (known: {})", kernels::alias_names()))?;
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
                match text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()) {
                    Some(j) => {
                        let ok = out.status == 0;
                        // Strings bare (mode churn), the rest as JSON (errors as a list).
                        let get = |f: &str| {
                            j.get(f).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_else(|| "?".into())
                        };
                        let mut detail = format!(
                            "mode {} | cycles {} | pins observed {} (kernel {}) | largest gap {} | inexact intervals {} (unexplained {}) | programs skipped by the kernel {} (unpins without entry, counted at release {}, at exit {}, uncounted {}; stale records dropped {}) | untracked pins {} | leftover programs after SIGKILL {} | stale per-call records cleared {} | kernel-log findings 0 | errors {}",
                            get("mode"),
                            get("cycles"),
                            get("pins_observed"),
                            get("kernel_pins"),
                            get("max_gap"),
                            get("inexact_intervals"),
                            get("unexplained_intervals"),
                            get("probe_misses"),
                            get("entries_skipped"),
                            get("entries_counted_at_exit"),
                            get("entries_uncounted"),
                            get("stale_records_dropped"),
                            get("untracked_pins"),
                            get("leftover_programs"),
                            get("stale_records_cleared"),
                            get("errors")
                        );
                        for d in j.get("inexact_details").and_then(Value::as_array).into_iter().flatten() {
                            detail.push_str(&format!("\n        inexact {}", d.as_str().unwrap_or("?")));
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
