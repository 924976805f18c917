//! `gupwatch doctor`: can gupwatch run on this host, and if not, exactly
//! why and what would fix it.
//!
//! Two halves, so the reasoning is tested without a kernel:
//!
//! * [`Facts::gather`] reads the host (privileges from `CapEff`, BTF,
//!   lockdown, the BPF JIT switch, kprobes, kallsyms, `/proc/vmstat`) and
//!   *tries* each attach mechanism with the real loader: a tracepoint,
//!   fentry on one small GUP function, a kprobe on the same function, and
//!   then the whole probe plan. Nothing is guessed from version numbers.
//! * [`evaluate`] turns facts into [`Finding`]s, each with a fix, and a
//!   [`Verdict`].
//!
//! # Exit status
//!
//! `0` full (every GUP function the kernel has is hooked), `1` partial or
//! reduced (gupwatch runs, with less: some hooks, or only the kernel's
//! `/proc/vmstat` counters), `2` cannot run (no hook and no counters).
//!
//! # JSON (`gupwatch doctor --json`), schema 1
//!
//! Fields are only ever added; a change of meaning bumps `schema`. The
//! document's types are [`gup_report::doctor`], which the readers parse.
//!
//! ```text
//! {
//!   "schema": 1,
//!   "gupwatch_version": "0.1.0",
//!   "kernel": "6.12.117+deb13-cloud-amd64",   // uname -r
//!   "verdict": "full" | "partial" | "reduced" | "cannot_run",
//!   "exit_code": 0 | 1 | 2,
//!   "summary": "one sentence",
//!   "findings": [                            // in a fixed order
//!     { "id": "privileges",                  // see Finding::id for the ids
//!       "status": "ok" | "info" | "warn" | "fail",
//!       "detail": "what was found",
//!       "fix": "what would fix it" | null }
//!   ],
//!   "mechanisms": {                          // tried, not inferred
//!     "tracepoint": Trial, "fentry": Trial, "kprobe": Trial
//!   },
//!   "hooks": {                               // the whole probe plan, loaded
//!     "present": 19, "attached": 19, "fentry": 18, "kprobe": 1,
//!     "failed": [ { "function": "...", "error": "..." } ],
//!     "absent": [ "pin_user_pages_fast_only", ... ],
//!     "load_error": "..." | null             // the BPF object itself
//!   },
//!   "reduced_mode": {                        // what works without probes
//!     "available": true, "acquired": 123, "released": 120, "error": null
//!   }
//! }
//! Trial = { "result": "works", "target": "unpin_user_page" }
//!       | { "result": "fails", "target": "...", "error": "..." }
//!       | { "result": "not_tried", "why": "..." }
//! ```

use gup_report::doctor::{FailedHook, Finding, HookFacts, Mechanisms, ReducedMode, Report, Status, Trial, Verdict, SCHEMA};
use serde::Serialize;

mod checks;
mod facts;
#[cfg(test)]
mod tests;

pub use facts::parse_cap_eff;

/// One GUP function of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionFact {
    /// Kernel function.
    pub function: &'static str,
    /// Whether the kernel has it.
    pub present: bool,
    /// pin, get, unpin, ... (the plan's kind).
    pub kind: &'static str,
}

/// Everything gathered from the host.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `uname -r`.
    pub kernel: String,
    /// Its version, as far as the kernel's strings tell.
    pub running: crate::kernel::version::RunningKernel,
    /// Effective uid.
    pub euid: u32,
    /// `CapEff` of this process, if readable.
    pub cap_eff: Option<u64>,
    /// Kernel BTF: readable, or why not.
    pub btf: Result<(), String>,
    /// `/sys/kernel/security/lockdown`.
    pub lockdown: Option<String>,
    /// `/proc/sys/net/core/bpf_jit_enable`.
    pub bpf_jit: Option<String>,
    /// The kprobe PMU exists.
    pub kprobe_pmu: bool,
    /// `CONFIG_KPROBES`, when the kernel config is readable.
    pub kprobes_config: Option<bool>,
    /// `/proc/sys/kernel/kptr_restrict`.
    pub kptr_restrict: Option<String>,
    /// `/proc/sys/kernel/perf_event_paranoid`.
    pub perf_event_paranoid: Option<i32>,
    /// Whether a tracefs is mounted (`/proc/self/mounts`).
    pub tracefs_mounted: bool,
    /// kallsyms: (text symbols, addresses visible), or why unreadable.
    pub kallsyms: Result<(usize, bool), String>,
    /// i915 module symbols in kallsyms.
    pub i915_loaded: bool,
    /// GUP functions of the plan (empty without a plan).
    pub functions: Vec<FunctionFact>,
    /// A tracepoint program (sched_process_exit).
    pub tracepoint: Trial,
    /// fentry/fexit on one GUP function.
    pub fentry: Trial,
    /// kprobe/kretprobe on one GUP function.
    pub kprobe: Trial,
    /// BPF helpers the programs call that the kernel lacks (the plan's
    /// `missing_helpers`).
    pub missing_helpers: Vec<String>,
    /// The whole plan, loaded (`None` without a plan).
    pub hooks: Option<HookFacts>,
    /// `/proc/vmstat`.
    pub reduced: ReducedMode,
    /// RLIMIT_MEMLOCK (soft, hard) before gupwatch raises it; `None` for
    /// unlimited.
    pub memlock: Option<(u64, u64)>,
}

/// Turns facts into findings and a verdict (pure): one check per concern,
/// in the fixed order of the JSON's `findings`.
pub fn evaluate(f: &Facts) -> Report {
    let mut out = vec![
        checks::privileges(f),
        checks::kernel_btf(f),
        checks::lockdown(f),
        checks::bpf_jit(f),
        checks::kallsyms(f),
        checks::tracepoint(f),
        checks::fentry(f),
        checks::kprobe(f),
    ];
    out.extend(checks::bpf_helpers(f));
    out.extend(checks::gup_functions(f));
    out.push(checks::i915(f));
    out.push(checks::vmstat(f));
    out.extend(checks::memlock(f));
    let verdict = checks::verdict(f);
    out.push(checks::probe_plan(f, verdict));
    // Last, so the ids before it keep their places in the JSON.
    out.push(checks::kernel(f));
    let summary = checks::summary(f, verdict, &out);
    Report {
        schema: SCHEMA,
        gupwatch_version: env!("CARGO_PKG_VERSION").into(),
        kernel: f.kernel.clone(),
        verdict,
        exit_code: verdict.exit_code(),
        summary,
        findings: out,
        mechanisms: Mechanisms { tracepoint: f.tracepoint.clone(), fentry: f.fentry.clone(), kprobe: f.kprobe.clone() },
        hooks: f.hooks.clone(),
        reduced_mode: f.reduced.clone(),
    }
}
