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
//! Fields are only ever added; a change of meaning bumps `schema`.
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

use std::path::Path;

use gup_common::Api;
use serde::Serialize;

use crate::{
    kallsyms::Kallsyms,
    loader::{self, LoadOptions},
    plan::{HookStatus, Mechanism, ProbePlan},
    vmstat,
};

/// Version of the JSON document; bumped only when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// How a finding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; changes nothing.
    Info,
    /// gupwatch runs, with less.
    Warn,
    /// Something gupwatch needs is missing.
    Fail,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier: `privileges`, `kernel_btf`, `lockdown`, `bpf_jit`,
    /// `kallsyms`, `tracepoint`, `fentry`, `kprobe`, `gup_functions`,
    /// `i915`, `vmstat`, `memlock`, `probe_plan`, `kernel`.
    pub id: &'static str,
    /// How it stands.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What would fix it (none when fine).
    pub fix: Option<String>,
}

/// What `gupwatch` can do here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every GUP function the kernel has is hooked.
    Full,
    /// Some hooks attached, some did not.
    Partial,
    /// No hook; the kernel's `/proc/vmstat` counters only.
    Reduced,
    /// Neither.
    CannotRun,
}

impl Verdict {
    /// The exit status of `gupwatch doctor`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Full => 0,
            Verdict::Partial | Verdict::Reduced => 1,
            Verdict::CannotRun => 2,
        }
    }
}

/// The result of trying one attach mechanism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Trial {
    /// Loaded and attached.
    Works {
        /// What it was attached to.
        target: String,
    },
    /// Refused.
    Fails {
        /// What it was attached to.
        target: String,
        /// The kernel's answer.
        error: String,
    },
    /// Not tried.
    NotTried {
        /// Why not.
        why: String,
    },
}

impl Trial {
    fn works(&self) -> bool {
        matches!(self, Trial::Works { .. })
    }
}

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

/// The whole plan, loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HookFacts {
    /// Functions the kernel has.
    pub present: usize,
    /// Attached.
    pub attached: usize,
    /// Attached with fentry/fexit.
    pub fentry: usize,
    /// Attached with kprobe/kretprobe.
    pub kprobe: usize,
    /// Present but not attached, with the loader's reason.
    pub failed: Vec<FailedHook>,
    /// Functions this kernel does not have.
    pub absent: Vec<&'static str>,
    /// Why the BPF object could not be loaded at all.
    pub load_error: Option<String>,
}

/// A hook that did not attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedHook {
    /// Kernel function.
    pub function: &'static str,
    /// The loader's reason.
    pub error: String,
}

/// What the reduced mode has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReducedMode {
    /// `/proc/vmstat` has `nr_foll_pin_*`.
    pub available: bool,
    /// `nr_foll_pin_acquired`.
    pub acquired: Option<u64>,
    /// `nr_foll_pin_released`.
    pub released: Option<u64>,
    /// Why not.
    pub error: Option<String>,
}

/// Everything gathered from the host.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `uname -r`.
    pub kernel: String,
    /// Its version, as far as the kernel's strings tell.
    pub running: crate::kernel::RunningKernel,
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

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// This gupwatch.
    pub gupwatch_version: &'static str,
    /// `uname -r`.
    pub kernel: String,
    /// What gupwatch can do here.
    pub verdict: Verdict,
    /// `gupwatch doctor`'s exit status.
    pub exit_code: u8,
    /// One sentence.
    pub summary: String,
    /// Every check, in a fixed order.
    pub findings: Vec<Finding>,
    /// The mechanism trials.
    pub mechanisms: Mechanisms,
    /// The whole plan, loaded.
    pub hooks: Option<HookFacts>,
    /// What works without probes.
    pub reduced_mode: ReducedMode,
}

/// The mechanism trials.
#[derive(Clone, Debug, Serialize)]
pub struct Mechanisms {
    /// Tracepoint programs.
    pub tracepoint: Trial,
    /// fentry/fexit (BPF trampolines).
    pub fentry: Trial,
    /// kprobe/kretprobe.
    pub kprobe: Trial,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// `CapEff` from the text of `/proc/<pid>/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// The functions a trial attaches to, smallest first: few arguments keep
/// fentry's trampoline limits (six arguments on 6.1's x86) out of the way,
/// so a failure is about the mechanism, not the function.
const TRIAL_TARGETS: &[Api] = &[Api::UnpinUserPage, Api::UnpinUserPages, Api::PinUserPagesFast, Api::PinUserPages];

/// The plan with every hook but `api` removed, `api` set to `mechanism`.
fn trial_plan(plan: &ProbePlan, api: Api, mechanism: Mechanism) -> ProbePlan {
    let mut p = plan.clone();
    for h in p.hooks.iter_mut() {
        if h.api == api {
            h.mechanism = Some(mechanism);
        } else {
            h.mechanism = None;
            h.symbol = None;
            h.status = HookStatus::Absent;
        }
    }
    p
}

/// The fentry error a loaded hook records, if fentry was refused: the
/// loader writes "fentry refused (E): fell back to kprobe" when the
/// fallback worked, and "fentry: E; kprobe: K" when both failed.
fn fentry_refusal(status: &HookStatus, reason: &str) -> Option<String> {
    if let HookStatus::Failed(e) = status {
        let e = e.strip_prefix("fentry: ")?;
        return Some(e.split("; kprobe: ").next().unwrap_or(e).to_string());
    }
    let rest = reason.strip_prefix("fentry refused (")?;
    Some(rest.rsplit_once("): fell back").map_or(rest, |(e, _)| e).to_string())
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

impl Facts {
    /// Reads the host and tries the mechanisms (loads BPF programs: as
    /// root this attaches and detaches real probes for a moment).
    pub fn gather() -> Facts {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let cap_eff = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s));
        let kallsyms = Kallsyms::from_proc();
        let (kallsyms_fact, i915_loaded) = match &kallsyms {
            Ok(k) => {
                let visible = TRIAL_TARGETS
                    .iter()
                    .filter_map(|a| k.get(a.symbol()))
                    .chain(k.get("_text"))
                    .any(|s| s.addr != 0);
                (Ok((k.len(), visible)), k.has_module("i915"))
            }
            Err(e) => (Err(e.to_string()), false),
        };
        let reduced = match vmstat::read(false) {
            Ok(v) => ReducedMode { available: true, acquired: Some(v.acquired), released: Some(v.released), error: None },
            Err(e) => ReducedMode { available: false, acquired: None, released: None, error: Some(e.to_string()) },
        };
        let mut memlock = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct we pass.
        let memlock = (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut memlock) } == 0
            && memlock.rlim_cur != libc::RLIM_INFINITY)
            .then_some((memlock.rlim_cur, memlock.rlim_max));
        let plan = ProbePlan::for_running_kernel();
        let btf = match &plan {
            Ok(p) => p.btf.clone(),
            Err(_) => crate::btf::KernelBtf::from_sys_fs().map(|_| ()).map_err(|e| e.to_string()),
        };
        let running = crate::kernel::RunningKernel::here();
        let mut facts = Facts {
            kernel: running.release.clone(),
            running,
            euid,
            cap_eff,
            btf,
            lockdown: read_trim("/sys/kernel/security/lockdown"),
            bpf_jit: read_trim("/proc/sys/net/core/bpf_jit_enable"),
            kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            kprobes_config: crate::host::kernel_config("CONFIG_KPROBES"),
            kptr_restrict: read_trim("/proc/sys/kernel/kptr_restrict"),
            perf_event_paranoid: read_trim("/proc/sys/kernel/perf_event_paranoid").and_then(|v| v.parse().ok()),
            tracefs_mounted: std::fs::read_to_string("/proc/self/mounts")
                .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("tracefs"))),
            kallsyms: kallsyms_fact,
            i915_loaded,
            functions: vec![],
            tracepoint: Trial::NotTried { why: "no probe plan".into() },
            fentry: Trial::NotTried { why: "no probe plan".into() },
            kprobe: Trial::NotTried { why: "no probe plan".into() },
            missing_helpers: vec![],
            hooks: None,
            reduced,
            memlock,
        };
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                let why = format!("the probe plan needs /proc/kallsyms: {e}");
                facts.tracepoint = Trial::NotTried { why: why.clone() };
                facts.fentry = Trial::NotTried { why: why.clone() };
                facts.kprobe = Trial::NotTried { why };
                return facts;
            }
        };
        facts.functions = plan
            .hooks
            .iter()
            .map(|h| FunctionFact { function: h.function, present: h.status != HookStatus::Absent, kind: h.kind })
            .collect();
        facts.try_mechanisms(&plan);
        facts.hooks = Some(load_whole_plan(plan));
        facts
    }

    fn try_mechanisms(&mut self, plan: &ProbePlan) {
        self.missing_helpers = plan.capabilities.missing_helpers.clone();
        if !self.missing_helpers.is_empty() {
            let why = format!("no program can load: the kernel lacks {}", self.missing_helpers.join(", "));
            self.tracepoint = Trial::NotTried { why: why.clone() };
            self.fentry = Trial::NotTried { why: why.clone() };
            self.kprobe = Trial::NotTried { why };
            return;
        }
        // Small maps: a trial needs no pin tracking.
        let opts = LoadOptions { track_pins: false, track_capacity: 1, ebpf_log: false };
        let target = TRIAL_TARGETS.iter().copied().find(|a| plan.hook(*a).status != HookStatus::Absent);
        let Some(api) = target else {
            let why = "none of the trial functions (unpin_user_page, unpin_user_pages, pin_user_pages_fast, pin_user_pages) is in this kernel".to_string();
            self.fentry = Trial::NotTried { why: why.clone() };
            self.kprobe = Trial::NotTried { why: why.clone() };
            self.tracepoint = Trial::NotTried { why };
            return;
        };
        let symbol = plan.hook(api).symbol.clone().unwrap_or_else(|| api.symbol().to_string());
        // fentry, only where BTF describes the function (else it is not a
        // candidate and the plan uses kprobes anyway).
        self.fentry = if plan.btf.is_err() {
            Trial::NotTried { why: "no kernel BTF: fentry needs it".into() }
        } else if plan.hook(api).params.is_none() {
            Trial::NotTried { why: format!("{symbol} is not described in this kernel's BTF") }
        } else {
            match loader::load_with(trial_plan(plan, api, Mechanism::Fentry), opts) {
                Ok(p) => {
                    let h = p.plan.hook(api);
                    self.tracepoint = exit_hook_trial(&p.plan.exit_hook);
                    match (&h.status, h.mechanism, fentry_refusal(&h.status, &h.reason)) {
                        (HookStatus::Attached, Some(Mechanism::Fentry), _) => Trial::Works { target: symbol.clone() },
                        (_, _, Some(error)) => Trial::Fails { target: symbol.clone(), error },
                        (status, _, None) => {
                            Trial::Fails { target: symbol.clone(), error: format!("not attached: {status:?}") }
                        }
                    }
                }
                Err(e) => Trial::Fails { target: symbol.clone(), error: format!("the BPF object did not load: {e}") },
            }
        };
        self.kprobe = match loader::load_with(trial_plan(plan, api, Mechanism::Kprobe), opts) {
            Ok(p) => {
                if matches!(self.tracepoint, Trial::NotTried { .. }) {
                    self.tracepoint = exit_hook_trial(&p.plan.exit_hook);
                }
                match &p.plan.hook(api).status {
                    HookStatus::Attached => Trial::Works { target: symbol.clone() },
                    HookStatus::Failed(e) => Trial::Fails {
                        target: symbol.clone(),
                        error: e.strip_prefix("kprobe: ").unwrap_or(e).to_string(),
                    },
                    other => Trial::Fails { target: symbol.clone(), error: format!("not attached: {other:?}") },
                }
            }
            Err(e) => {
                let error = format!("the BPF object did not load: {e}");
                if matches!(self.tracepoint, Trial::NotTried { .. }) {
                    self.tracepoint = Trial::Fails { target: "sched:sched_process_exit".into(), error: error.clone() };
                }
                Trial::Fails { target: symbol.clone(), error }
            }
        };
    }
}

fn exit_hook_trial(status: &HookStatus) -> Trial {
    let target = "sched:sched_process_exit".to_string();
    match status {
        HookStatus::Attached => Trial::Works { target },
        HookStatus::Failed(e) => Trial::Fails { target, error: e.clone() },
        other => Trial::NotTried { why: format!("{other:?}") },
    }
}

fn load_whole_plan(plan: ProbePlan) -> HookFacts {
    let absent: Vec<&'static str> =
        plan.hooks.iter().filter(|h| h.status == HookStatus::Absent).map(|h| h.function).collect();
    let present = plan.hooks.len() - absent.len();
    match loader::load(plan) {
        Ok(p) => {
            let attached = |m: Option<Mechanism>| {
                p.plan
                    .hooks
                    .iter()
                    .filter(|h| h.status == HookStatus::Attached && (m.is_none() || h.mechanism == m))
                    .count()
            };
            HookFacts {
                present,
                attached: attached(None),
                fentry: attached(Some(Mechanism::Fentry)),
                kprobe: attached(Some(Mechanism::Kprobe)),
                failed: p
                    .plan
                    .hooks
                    .iter()
                    .filter_map(|h| match &h.status {
                        HookStatus::Failed(e) => Some(FailedHook { function: h.function, error: e.clone() }),
                        _ => None,
                    })
                    .collect(),
                absent,
                load_error: None,
            }
        }
        Err(e) => HookFacts { present, absent, load_error: Some(e.to_string()), ..HookFacts::default() },
    }
}

fn fix_for_fentry(error: &str) -> String {
    if error.contains("Operation not permitted") || error.contains("os error 1)") || error.contains("EPERM") {
        "the kernel refuses BPF tracing programs (BPF_PROG_TYPE_TRACING) with EPERM although the process has the capabilities: a kernel or sandbox policy (an LSM such as lockdown, SELinux or a BPF LSM program, or a VM/container host that filters bpf(2)) forbids them. Use a stock distribution kernel outside such a sandbox, or run gupwatch in a VM (`cargo xtask vm`)".into()
    } else if error.contains("-524") || error.contains("os error 524") {
        "the BPF trampoline cannot take this function (on 6.1's x86, more than six arguments): gupwatch uses kprobes for such functions".into()
    } else {
        "see the error; `gupwatch probes` shows every hook and its reason".into()
    }
}

/// Whether a perf_event_open(2) refusal comes from Debian's and Ubuntu's
/// `perf_event_paranoid=3`, which allows perf events (kprobes and
/// tracepoints are perf events) only with CAP_SYS_ADMIN, whatever
/// CAP_PERFMON says.
fn paranoid_refusal(f: &Facts, error: &str) -> bool {
    let denied = error.contains("Permission denied") || error.contains("os error 13");
    let sys_admin = f.cap_eff.is_some_and(|c| has_cap(c, CAP_SYS_ADMIN));
    denied && error.contains("perf_event_open") && f.perf_event_paranoid.is_some_and(|p| p > 2) && !sys_admin
}

const PARANOID_FIX: &str = "kernel.perf_event_paranoid=3 (a Debian/Ubuntu patch) allows perf_event_open(2), which kprobes and tracepoints go through, only with CAP_SYS_ADMIN: grant CAP_SYS_ADMIN too (the systemd unit does), or set kernel.perf_event_paranoid=2";

/// Turns facts into findings and a verdict (pure).
pub fn evaluate(f: &Facts) -> Report {
    let mut out = vec![];
    let mut push = |id, status, detail: String, fix: Option<String>| out.push(Finding { id, status, detail, fix });

    // Privileges: what the kernel checks is the effective capability set,
    // not the uid (root in a container may lack CAP_BPF; a service user
    // with ambient capabilities has it).
    match f.cap_eff {
        Some(caps) => {
            let names = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_SYSLOG, "CAP_SYSLOG")];
            let held: Vec<&str> = names.iter().filter(|(c, _)| has_cap(caps, *c)).map(|(_, n)| *n).collect();
            let ok = (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) || has_cap(caps, CAP_SYS_ADMIN);
            let who = if f.euid == 0 { "root".to_string() } else { format!("uid {}", f.euid) };
            push(
                "privileges",
                if ok { Status::Ok } else { Status::Fail },
                format!(
                    "running as {who}; effective capabilities {}",
                    if held.is_empty() { "include none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYSLOG".to_string() } else { format!("include {}", held.join(", ")) }
                ),
                (!ok).then(|| "run with sudo, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8), plus CAP_SYSLOG for kernel addresses; packaging/gupwatch.service does this for the daemon".into()),
            );
        }
        None => push("privileges", Status::Warn, "CapEff not readable from /proc/self/status".into(), None),
    }
    match &f.btf {
        Ok(()) => push("kernel_btf", Status::Ok, "/sys/kernel/btf/vmlinux readable: arguments are found by name, fentry is possible".into(), None),
        Err(e) => push(
            "kernel_btf",
            Status::Warn,
            format!("no kernel BTF ({e}): no fentry, argument positions assumed from the 6.5+ layout"),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every recent distribution kernel); kprobes work without it".into()),
        ),
    }
    match &f.lockdown {
        Some(l) if l.contains("[confidentiality]") => push(
            "lockdown",
            Status::Fail,
            format!("lockdown: {l}"),
            Some("confidentiality lockdown forbids BPF from reading kernel memory: boot without lockdown=confidentiality (or turn off Secure Boot's lockdown)".into()),
        ),
        Some(l) => push("lockdown", Status::Ok, format!("lockdown: {l} (BPF tracing allowed)"), None),
        None => push("lockdown", Status::Ok, "no lockdown LSM (/sys/kernel/security/lockdown absent)".into(), None),
    }
    match f.bpf_jit.as_deref() {
        Some("1") => push("bpf_jit", Status::Ok, "BPF JIT enabled (net.core.bpf_jit_enable=1)".into(), None),
        Some("2") => push(
            "bpf_jit",
            Status::Warn,
            "BPF JIT in debug mode (net.core.bpf_jit_enable=2): it logs every program".into(),
            Some("sysctl -w net.core.bpf_jit_enable=1".into()),
        ),
        Some(v) => push(
            "bpf_jit",
            Status::Warn,
            format!("BPF JIT off (net.core.bpf_jit_enable={v}): programs run in the interpreter, several times slower on every GUP call"),
            Some("sysctl -w net.core.bpf_jit_enable=1".into()),
        ),
        None => push(
            "bpf_jit",
            Status::Warn,
            "no /proc/sys/net/core/bpf_jit_enable: the kernel has no BPF JIT".into(),
            Some("use a kernel with CONFIG_BPF_JIT=y".into()),
        ),
    }
    match &f.kallsyms {
        Ok((n, true)) => push("kallsyms", Status::Ok, format!("/proc/kallsyms: {n} text symbols with addresses"), None),
        Ok((n, false)) => push(
            "kallsyms",
            Status::Warn,
            format!(
                "/proc/kallsyms: {n} text symbols but addresses hidden (kernel.kptr_restrict={}, kernel.perf_event_paranoid={}): hooks attach by name, but call sites and subsystems show as unknown",
                f.kptr_restrict.as_deref().unwrap_or("?"),
                f.perf_event_paranoid.map_or_else(|| "?".to_string(), |p| p.to_string())
            ),
            Some("grant CAP_SYSLOG (root has it): with kptr_restrict 0 or 1 it shows the addresses".into()),
        ),
        Err(e) => push(
            "kallsyms",
            Status::Fail,
            format!("/proc/kallsyms unreadable: {e}"),
            Some("gupwatch finds the GUP functions there: mount /proc and allow reading it".into()),
        ),
    }
    match &f.tracepoint {
        Trial::Works { target } => push("tracepoint", Status::Ok, format!("tracepoint programs load and attach ({target}): exited owners of pins are seen"), None),
        Trial::Fails { target, error } if error.contains("tracefs not found") && f.tracefs_mounted => push(
            "tracepoint",
            Status::Warn,
            format!("tracefs is mounted but out of this user's reach (its directory is 0700 root), so the tracepoint {target} cannot be found"),
            Some("run as uid 0, or grant CAP_DAC_READ_SEARCH; until then orphaned pins are found by checking /proc for their owner".into()),
        ),
        Trial::Fails { target, error } if error.contains("tracefs not found") => push(
            "tracepoint",
            Status::Warn,
            format!("tracefs is not mounted, so the tracepoint {target} cannot be found (the program itself was not refused)"),
            Some("mount -t tracefs nodev /sys/kernel/tracing (systemd does at boot); until then orphaned pins are found by checking /proc for their owner".into()),
        ),
        Trial::Fails { target, error } if paranoid_refusal(f, error) => push(
            "tracepoint",
            Status::Warn,
            format!("attaching the tracepoint {target} was refused by perf_event_paranoid={}: {error}", f.perf_event_paranoid.unwrap_or(3)),
            Some(format!("{PARANOID_FIX}; until then orphaned pins are found by checking /proc for their owner")),
        ),
        Trial::Fails { target, error } => push(
            "tracepoint",
            Status::Warn,
            format!("a tracepoint program on {target} was refused: {error}"),
            Some("orphaned pins are found by checking /proc for their owner instead".into()),
        ),
        Trial::NotTried { why } => push("tracepoint", Status::Info, format!("not tried: {why}"), None),
    }
    let kprobe_works = f.kprobe.works();
    match &f.fentry {
        Trial::Works { target } => push("fentry", Status::Ok, format!("fentry/fexit programs load and attach ({target})"), None),
        Trial::Fails { target, error } => push(
            "fentry",
            if kprobe_works { Status::Warn } else { Status::Fail },
            format!(
                "fentry on {target} was refused: {error}{}",
                if kprobe_works { " (kprobes are used instead)" } else { "" }
            ),
            Some(fix_for_fentry(error)),
        ),
        Trial::NotTried { why } => push("fentry", Status::Info, format!("not tried: {why}"), None),
    }
    match &f.kprobe {
        Trial::Works { target } => push("kprobe", Status::Ok, format!("kprobe/kretprobe programs load and attach ({target})"), None),
        Trial::Fails { target, error } => {
            let no_kprobes = !f.kprobe_pmu && f.kprobes_config != Some(true);
            let paranoid = paranoid_refusal(f, error);
            let detail = if paranoid {
                format!(
                    "a kprobe on {target} was refused by perf_event_paranoid={} without CAP_SYS_ADMIN: {error}",
                    f.perf_event_paranoid.unwrap_or(3)
                )
            } else if no_kprobes {
                format!(
                    "the kernel is built without CONFIG_KPROBES{} (no kprobe PMU in /sys/bus/event_source/devices); a kprobe on {target} failed: {error}",
                    if f.kprobes_config == Some(false) { "" } else { " (or it is off)" }
                )
            } else {
                format!("a kprobe on {target} was refused: {error}")
            };
            push(
                "kprobe",
                if f.fentry.works() { Status::Warn } else { Status::Fail },
                detail,
                Some(if paranoid {
                    format!("{PARANOID_FIX}; fentry covers what BTF describes, but 6.1's 7-argument pin_user_pages_remote and module functions (i915) need kprobes")
                } else if no_kprobes {
                    "use a kernel with CONFIG_KPROBES=y (every distribution kernel has it); fentry covers functions BTF describes, but module functions (i915) and static ones need kprobes".into()
                } else {
                    "see the error; perf_event_open(2) with the kprobe PMU must be allowed (CAP_PERFMON, no seccomp filter on it)".into()
                }),
            );
        }
        Trial::NotTried { why } => push("kprobe", Status::Info, format!("not tried: {why}"), None),
    }
    if !f.missing_helpers.is_empty() {
        push(
            "bpf_helpers",
            Status::Fail,
            format!(
                "this kernel lacks BPF helpers gupwatch's programs call: {}; its verifier would refuse every program, so none is loaded",
                f.missing_helpers.join(", ")
            ),
            Some("gupwatch runs here in the reduced mode (the kernel's FOLL_PIN counters, accounted pins); for the probes, use a newer kernel".into()),
        );
    }
    if !f.functions.is_empty() {
        // i915's hooks are its object lifecycle, not GUP entry points.
        let gup: Vec<&FunctionFact> = f.functions.iter().filter(|x| x.kind != "i915").collect();
        let present: Vec<&str> = gup.iter().filter(|x| x.present).map(|x| x.function).collect();
        let absent: Vec<&str> = gup.iter().filter(|x| !x.present).map(|x| x.function).collect();
        let core = ["pin_user_pages_fast", "unpin_user_pages"].iter().all(|c| present.contains(c));
        push(
            "gup_functions",
            if core { Status::Ok } else { Status::Warn },
            format!(
                "{} of {} GUP functions exist in this kernel{}",
                present.len(),
                gup.len(),
                if absent.is_empty() { String::new() } else { format!("; absent (they come and go between versions): {}", absent.join(", ")) }
            ),
            (!core).then(|| "pin_user_pages_fast or unpin_user_pages is missing: a kernel older than 5.8, or a very unusual build; gupwatch supports 5.8 and later".into()),
        );
    }
    push(
        "i915",
        Status::Info,
        if f.i915_loaded {
            "i915 loaded: its userptr objects are attributed (kprobes on module functions; a running gupwatch detaches them when i915 is unloaded, since the kernel kills a module's kprobes with it, and attaches new ones when it is loaded again)".into()
        } else {
            "i915 not loaded: its hooks attach if the module appears, and follow it through later unloads and loads".into()
        },
        None,
    );
    match (&f.reduced.acquired, &f.reduced.released, &f.reduced.error) {
        (Some(a), Some(r), _) => push(
            "vmstat",
            Status::Ok,
            format!("/proc/vmstat: nr_foll_pin_acquired={a} nr_foll_pin_released={r} (the reduced mode works)"),
            None,
        ),
        (_, _, e) => push(
            "vmstat",
            Status::Fail,
            format!("/proc/vmstat has no FOLL_PIN counters: {}", e.as_deref().unwrap_or("unknown")),
            Some("nr_foll_pin_* appeared in 5.8; mount /proc".into()),
        ),
    }
    // Only worth a line when the object did not load: kernels since 5.11
    // do not charge BPF maps to the limit, and gupwatch raises it anyway.
    if let (Some((cur, max)), Some(HookFacts { load_error: Some(_), .. })) = (f.memlock, &f.hooks) {
        push(
            "memlock",
            Status::Info,
            format!("RLIMIT_MEMLOCK {cur}/{max} bytes: gupwatch raises it (kernels before 5.11 charge BPF maps to it)"),
            (max != libc::RLIM_INFINITY).then(|| "on kernels before 5.11 grant CAP_SYS_RESOURCE or set LimitMEMLOCK=infinity (the systemd unit does)".into()),
        );
    }
    let verdict = match &f.hooks {
        Some(h) if h.attached > 0 && h.attached == h.present => Verdict::Full,
        Some(h) if h.attached > 0 => Verdict::Partial,
        _ if f.reduced.available => Verdict::Reduced,
        _ => Verdict::CannotRun,
    };
    match &f.hooks {
        Some(h) => {
            let mut detail = match &h.load_error {
                Some(e) => format!("the BPF object did not load: {e}"),
                None => format!("{} of {} hooks attached ({} fentry/fexit, {} kprobe)", h.attached, h.present, h.fentry, h.kprobe),
            };
            // Hooks usually fail for one reason: say it once, with whom.
            let mut by_error: Vec<(&str, Vec<&str>)> = vec![];
            for x in &h.failed {
                match by_error.iter_mut().find(|(e, _)| *e == x.error) {
                    Some((_, fns)) => fns.push(x.function),
                    None => by_error.push((&x.error, vec![x.function])),
                }
            }
            for (error, fns) in by_error.iter().take(3) {
                let who = if fns.len() > 3 { format!("{} and {} more", fns[..2].join(", "), fns.len() - 2) } else { fns.join(", ") };
                detail += &format!("; {who}: {error}");
            }
            if by_error.len() > 3 {
                detail += &format!("; {} other reasons (see --json or `gupwatch probes`)", by_error.len() - 3);
            }
            push(
                "probe_plan",
                match verdict {
                    Verdict::Full => Status::Ok,
                    Verdict::Partial => Status::Warn,
                    _ => Status::Fail,
                },
                detail,
                (verdict != Verdict::Full).then(|| "see the fentry and kprobe findings above; `gupwatch probes` shows each function's reason".into()),
            );
        }
        None => push("probe_plan", Status::Fail, "no probe plan (see kallsyms)".into(), None),
    }
    // Last, so the ids before it keep their places in the JSON.
    let (standing, detail, fix) = f.running.assess();
    let status = match standing {
        crate::kernel::Standing::Release => Status::Ok,
        crate::kernel::Standing::PreRelease => Status::Info,
        crate::kernel::Standing::Unknown => Status::Warn,
    };
    push("kernel", status, detail, fix);
    let reasons: Vec<&str> = out.iter().filter(|x| x.status == Status::Fail).map(|x| x.id).collect();
    let summary = match verdict {
        Verdict::Full => format!("gupwatch can run fully here: every GUP function this kernel has is hooked ({} hooks)", f.hooks.as_ref().map_or(0, |h| h.attached)),
        Verdict::Partial => {
            let h = f.hooks.as_ref().map_or((0, 0), |h| (h.attached, h.present));
            format!("gupwatch runs with {} of {} hooks; the others are listed under probe_plan", h.0, h.1)
        }
        Verdict::Reduced => format!(
            "gupwatch cannot attach its probes here ({}); it runs in reduced mode, with the kernel's global FOLL_PIN counters from /proc/vmstat only (no per-process, per-caller or per-function detail)",
            reasons.join(", ")
        ),
        Verdict::CannotRun => format!("gupwatch cannot run here: no probe attaches and /proc/vmstat has no FOLL_PIN counters ({})", reasons.join(", ")),
    };
    Report {
        schema: SCHEMA,
        gupwatch_version: env!("CARGO_PKG_VERSION"),
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

impl Report {
    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = format!("gupwatch doctor on kernel {}\n\n", self.kernel);
        for f in &self.findings {
            let tag = match f.status {
                Status::Ok => " ok ",
                Status::Info => "info",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            s += &format!("  [{tag}] {:<14} {}\n", f.id, f.detail);
            if let Some(fix) = &f.fix {
                s += &format!("         {:<14} fix: {fix}\n", "");
            }
        }
        s += &format!(
            "\nverdict: {} (exit {}): {}\n",
            match self.verdict {
                Verdict::Full => "FULL",
                Verdict::Partial => "PARTIAL",
                Verdict::Reduced => "REDUCED",
                Verdict::CannotRun => "CANNOT RUN",
            },
            self.exit_code,
            self.summary
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy 6.12 host as root.
    fn healthy() -> Facts {
        Facts {
            kernel: "6.12.0-test".into(),
            running: crate::kernel::RunningKernel::from_strings("6.12.0-test", None, None),
            euid: 0,
            cap_eff: Some(0x1ff_ffff_ffff),
            btf: Ok(()),
            lockdown: Some("[none] integrity confidentiality".into()),
            bpf_jit: Some("1".into()),
            kprobe_pmu: true,
            kprobes_config: Some(true),
            kptr_restrict: Some("1".into()),
            perf_event_paranoid: Some(3),
            tracefs_mounted: true,
            kallsyms: Ok((90_000, true)),
            i915_loaded: false,
            functions: vec![
                FunctionFact { function: "pin_user_pages_fast", present: true, kind: "pin" },
                FunctionFact { function: "unpin_user_pages", present: true, kind: "unpin" },
                FunctionFact { function: "pin_user_pages_fast_only", present: false, kind: "pin" },
                FunctionFact { function: "i915_gem_userptr_ioctl", present: false, kind: "i915" },
            ],
            tracepoint: Trial::Works { target: "sched:sched_process_exit".into() },
            fentry: Trial::Works { target: "unpin_user_page".into() },
            kprobe: Trial::Works { target: "unpin_user_page".into() },
            missing_helpers: vec![],
            hooks: Some(HookFacts { present: 19, attached: 19, fentry: 19, kprobe: 0, ..HookFacts::default() }),
            reduced: ReducedMode { available: true, acquired: Some(10), released: Some(8), error: None },
            memlock: None,
        }
    }

    /// This project's build machine: 6.18, no CONFIG_KPROBES, fentry EPERM.
    fn no_tracing() -> Facts {
        let eperm = "program load refused: Operation not permitted (os error 1)".to_string();
        Facts {
            kprobe_pmu: false,
            kprobes_config: Some(false),
            fentry: Trial::Fails { target: "unpin_user_page".into(), error: eperm.clone() },
            kprobe: Trial::Fails { target: "unpin_user_page".into(), error: "`perf_event_open` failed: No such file or directory".into() },
            hooks: Some(HookFacts {
                present: 19,
                attached: 0,
                failed: vec![FailedHook { function: "pin_user_pages", error: format!("fentry: {eperm}; kprobe: no PMU") }],
                ..HookFacts::default()
            }),
            ..healthy()
        }
    }

    fn find<'a>(r: &'a Report, id: &str) -> &'a Finding {
        r.findings.iter().find(|f| f.id == id).unwrap_or_else(|| panic!("no {id}"))
    }

    #[test]
    fn healthy_host_is_full() {
        let r = evaluate(&healthy());
        assert_eq!((r.verdict, r.exit_code), (Verdict::Full, 0));
        assert!(r.findings.iter().all(|f| f.status <= Status::Info), "{:#?}", r.findings);
        assert!(find(&r, "gup_functions").detail.contains("2 of 3 GUP functions"), "i915 hooks are not GUP functions");
        assert!(find(&r, "gup_functions").detail.contains("pin_user_pages_fast_only"));
    }

    #[test]
    fn a_kernel_without_the_helpers_is_reduced_and_names_them() {
        // Debian bullseye's 5.10: the loader refuses before trying.
        let why = "no program can load: the kernel lacks bpf_loop (Linux 5.17+)".to_string();
        let f = Facts {
            missing_helpers: vec!["bpf_loop (Linux 5.17+)".into(), "bpf_get_func_arg (Linux 5.17+)".into()],
            tracepoint: Trial::NotTried { why: why.clone() },
            fentry: Trial::NotTried { why: why.clone() },
            kprobe: Trial::NotTried { why },
            hooks: Some(HookFacts { present: 14, attached: 0, load_error: Some("this kernel lacks BPF helpers".into()), ..HookFacts::default() }),
            ..healthy()
        };
        let r = evaluate(&f);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Reduced, 1));
        let h = find(&r, "bpf_helpers");
        assert_eq!(h.status, Status::Fail);
        assert!(h.detail.contains("bpf_loop (Linux 5.17+), bpf_get_func_arg (Linux 5.17+)"), "{}", h.detail);
        assert!(h.fix.as_deref().is_some_and(|x| x.contains("reduced mode")));
        // A kernel that has them gets no such finding.
        assert!(evaluate(&healthy()).findings.iter().all(|f| f.id != "bpf_helpers"));
    }

    #[test]
    fn no_kprobes_and_fentry_eperm_is_reduced_and_says_why() {
        let r = evaluate(&no_tracing());
        assert_eq!((r.verdict, r.exit_code), (Verdict::Reduced, 1));
        let k = find(&r, "kprobe");
        assert_eq!(k.status, Status::Fail);
        assert!(k.detail.contains("without CONFIG_KPROBES"), "{}", k.detail);
        let fe = find(&r, "fentry");
        assert_eq!(fe.status, Status::Fail);
        assert!(fe.detail.contains("Operation not permitted"));
        assert!(fe.fix.as_deref().unwrap().contains("EPERM"));
        assert_eq!(find(&r, "vmstat").status, Status::Ok);
        assert!(r.summary.contains("reduced mode") && r.summary.contains("kprobe") && r.summary.contains("fentry"), "{}", r.summary);
        assert!(r.to_text().contains("verdict: REDUCED (exit 1)"));
    }

    #[test]
    fn fentry_refused_but_kprobes_work_is_a_warning() {
        let f = Facts {
            fentry: Trial::Fails { target: "unpin_user_page".into(), error: "os error 524".into() },
            hooks: Some(HookFacts { present: 19, attached: 19, kprobe: 19, ..HookFacts::default() }),
            ..healthy()
        };
        let r = evaluate(&f);
        assert_eq!(r.verdict, Verdict::Full);
        assert_eq!(find(&r, "fentry").status, Status::Warn);
        assert!(find(&r, "fentry").fix.as_deref().unwrap().contains("six arguments"));
    }

    /// Root with only CAP_BPF, CAP_PERFMON and CAP_SYSLOG on a Debian kernel
    /// (perf_event_paranoid=3), as measured in the 6.12 VM.
    #[test]
    fn debian_paranoid_perf_needs_sys_admin() {
        let denied = "`perf_event_open` failed: Permission denied (os error 13)".to_string();
        let f = Facts {
            cap_eff: Some((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYSLOG)),
            kprobe: Trial::Fails { target: "unpin_user_page".into(), error: denied.clone() },
            tracepoint: Trial::Fails { target: "sched:sched_process_exit".into(), error: "tracepoint: `perf_event_open_trace_point` failed: Permission denied (os error 13)".into() },
            ..healthy()
        };
        let r = evaluate(&f);
        assert_eq!(r.verdict, Verdict::Full, "fentry covers every hook on 6.12");
        let k = find(&r, "kprobe");
        assert_eq!(k.status, Status::Warn);
        assert!(k.detail.contains("perf_event_paranoid=3"), "{}", k.detail);
        assert!(k.fix.as_deref().unwrap().contains("CAP_SYS_ADMIN"));
        assert!(find(&r, "tracepoint").fix.as_deref().unwrap().contains("perf_event_paranoid=2"));
        // With CAP_SYS_ADMIN the same error is something else.
        let g = Facts { cap_eff: Some(u64::MAX >> 23), ..f.clone() };
        assert!(!find(&evaluate(&g), "kprobe").detail.contains("perf_event_paranoid"));
        // A service user: tracefs mounted but 0700 root.
        let tracefs = "tracepoint sched/sched_process_exit: tracefs not found".to_string();
        let u = Facts { euid: 65534, tracepoint: Trial::Fails { target: "sched:sched_process_exit".into(), error: tracefs }, ..f };
        assert!(find(&evaluate(&u), "tracepoint").fix.as_deref().unwrap().contains("CAP_DAC_READ_SEARCH"));
        let unmounted = Facts { tracefs_mounted: false, ..u };
        assert!(find(&evaluate(&unmounted), "tracepoint").fix.as_deref().unwrap().starts_with("mount -t tracefs"));
    }

    #[test]
    fn partial_unprivileged_and_cannot_run() {
        let partial = Facts {
            hooks: Some(HookFacts {
                present: 19,
                attached: 17,
                failed: vec![FailedHook { function: "a", error: "e".into() }, FailedHook { function: "b", error: "e".into() }],
                ..HookFacts::default()
            }),
            ..healthy()
        };
        let r = evaluate(&partial);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Partial, 1));
        assert!(find(&r, "probe_plan").detail.ends_with("; a, b: e"), "{}", find(&r, "probe_plan").detail);
        assert!(!evaluate(&healthy()).findings.iter().any(|f| f.id == "memlock"), "memlock only matters when loading failed");

        let user = Facts {
            euid: 1000,
            cap_eff: Some(0),
            hooks: Some(HookFacts { present: 19, load_error: Some("EPERM".into()), ..HookFacts::default() }),
            ..no_tracing()
        };
        let r = evaluate(&user);
        assert_eq!(find(&r, "privileges").status, Status::Fail);
        assert!(find(&r, "privileges").detail.contains("uid 1000"));
        assert_eq!(r.verdict, Verdict::Reduced);

        // A service user with ambient CAP_BPF + CAP_PERFMON is privileged.
        let service = Facts { euid: 999, cap_eff: Some((1 << CAP_BPF) | (1 << CAP_PERFMON)), ..healthy() };
        assert_eq!(find(&evaluate(&service), "privileges").status, Status::Ok);

        let none = Facts {
            reduced: ReducedMode { available: false, acquired: None, released: None, error: Some("no /proc".into()) },
            ..user
        };
        let r = evaluate(&none);
        assert_eq!((r.verdict, r.exit_code), (Verdict::CannotRun, 2));
    }

    #[test]
    fn host_details() {
        let f = Facts {
            lockdown: Some("none integrity [confidentiality]".into()),
            bpf_jit: Some("0".into()),
            kallsyms: Ok((100, false)),
            i915_loaded: true,
            memlock: Some((65536, 65536)),
            hooks: Some(HookFacts { present: 19, load_error: Some("EPERM".into()), ..HookFacts::default() }),
            ..healthy()
        };
        let r = evaluate(&f);
        assert_eq!(find(&r, "lockdown").status, Status::Fail);
        assert_eq!(find(&r, "bpf_jit").status, Status::Warn);
        assert!(find(&r, "kallsyms").detail.contains("kptr_restrict=1"));
        assert!(find(&r, "i915").detail.starts_with("i915 loaded"));
        assert!(find(&r, "memlock").fix.is_some());
    }

    #[test]
    fn json_is_stable() {
        let v = serde_json::to_value(evaluate(&no_tracing())).unwrap();
        for key in ["schema", "gupwatch_version", "kernel", "verdict", "exit_code", "summary", "findings", "mechanisms", "hooks", "reduced_mode"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["schema"], 1);
        assert_eq!(v["verdict"], "reduced");
        assert_eq!(v["mechanisms"]["fentry"]["result"], "fails");
        assert_eq!(v["mechanisms"]["tracepoint"]["result"], "works");
        assert_eq!(v["findings"][0]["id"], "privileges");
        assert_eq!(v["findings"][0]["status"], "ok");
        let ids: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["privileges", "kernel_btf", "lockdown", "bpf_jit", "kallsyms", "tracepoint", "fentry", "kprobe", "gup_functions", "i915", "vmstat", "probe_plan", "kernel"]
        );
    }

    #[test]
    fn kernel_version_finding() {
        assert_eq!(find(&evaluate(&healthy()), "kernel").status, Status::Ok);
        let rc = |release: &str, uname_v: &str| Facts {
            running: crate::kernel::RunningKernel::from_strings(release, Some(uname_v), None),
            ..healthy()
        };
        let r = evaluate(&rc("7.3-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)"));
        assert_eq!((find(&r, "kernel").status, r.verdict), (Status::Info, Verdict::Full), "a pre-release alone changes no verdict");
        let r = evaluate(&rc("?!", ""));
        let k = find(&r, "kernel");
        assert_eq!((k.status, r.verdict), (Status::Warn, Verdict::Full));
        assert!(k.fix.is_some(), "a warning says what to do");
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapInh:\t0\n"), None);
        assert_eq!(
            fentry_refusal(&HookStatus::Failed("fentry: EPERM bad; kprobe: no".into()), ""),
            Some("EPERM bad".into())
        );
        assert_eq!(
            fentry_refusal(&HookStatus::Attached, "fentry refused (os error 524 (x)): fell back to kprobe"),
            Some("os error 524 (x)".into())
        );
        assert_eq!(fentry_refusal(&HookStatus::Attached, "in BTF with 2 arguments"), None);
    }
}
