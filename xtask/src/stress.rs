//! `cargo xtask stress`: gupwatch's stress and fault suite on every kernel
//! of the matrix. Each VM runs `gupwatch stress` (attach/detach cycles under
//! a pin storm, SIGKILL rounds, an overflowing tracking map); the VM runner
//! fails the kernel on any WARNING, BUG, soft lockup or RCU stall.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    binary,
    kernels::{self, Flavour},
    qemu::VmRun,
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
        let cmd = format!(
            "gupwatch stress --cycles {} --kill-rounds {} --scratch /mnt/scratch",
            o.cycles, o.kill_rounds
        );
        eprintln!("==== stress on {k}: {cmd} ====");
        let mut vm = VmRun::new(manifest.boot_kernel(&cache), cmd);
        vm.gupwatch = Some(gupwatch.clone());
        // Cycles take ~0.5-3 s each under TCG.
        vm.timeout = Duration::from_secs(120 + 4 * o.cycles as u64);
        vm.tag = format!("stress-{k}");
        let (verdict, detail) = match vm.run() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                match text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()) {
                    Some(j) => {
                        let ok = out.status == 0;
                        let get = |f: &str| j.get(f).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
                        let mut detail = format!(
                            "cycles {} | pins observed {} (kernel {}) | largest gap {} | inexact intervals {} (unexplained {}) | programs skipped by the kernel {} (unpins without entry, counted at release {}; stale records dropped {}) | untracked pins {} | leftover programs after SIGKILL {} | stale per-call records cleared {} | kernel-log findings 0 | errors {}",
                            get("cycles"),
                            get("pins_observed"),
                            get("kernel_pins"),
                            get("max_gap"),
                            get("inexact_intervals"),
                            get("unexplained_intervals"),
                            get("probe_misses"),
                            get("entries_skipped"),
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
