//! [`Facts::gather`]: reading the host and trying each attach mechanism
//! with the real loader (nothing is guessed from version numbers).

use std::path::Path;

use gup_common::Api;

use super::{FailedHook, Facts, FunctionFact, HookFacts, ReducedMode, Trial};
use crate::{
    kernel::kallsyms::Kallsyms,
    probes::loader::{self, LoadOptions},
    kernel::plan::{HookStatus, Mechanism, ProbePlan},
    kernel::vmstat,
};

pub(super) const CAP_SYS_ADMIN: u32 = 21;
pub(super) const CAP_SYSLOG: u32 = 34;
pub(super) const CAP_PERFMON: u32 = 38;
pub(super) const CAP_BPF: u32 = 39;

pub(super) fn has_cap(caps: u64, cap: u32) -> bool {
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
pub(super) fn fentry_refusal(status: &HookStatus, reason: &str) -> Option<String> {
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
            Err(_) => crate::kernel::btf::KernelBtf::from_sys_fs().map(|_| ()).map_err(|e| e.to_string()),
        };
        let running = crate::kernel::version::RunningKernel::here();
        let mut facts = Facts {
            kernel: running.release.clone(),
            running,
            euid,
            cap_eff,
            btf,
            lockdown: read_trim("/sys/kernel/security/lockdown"),
            bpf_jit: read_trim("/proc/sys/net/core/bpf_jit_enable"),
            kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            kprobes_config: crate::diagnose::host::kernel_config("CONFIG_KPROBES"),
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
    let absent: Vec<String> =
        plan.hooks.iter().filter(|h| h.status == HookStatus::Absent).map(|h| h.function.to_string()).collect();
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
                        HookStatus::Failed(e) => Some(FailedHook { function: h.function.into(), error: e.clone() }),
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

