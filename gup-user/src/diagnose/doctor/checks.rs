//! The checks of [`super::evaluate`], one per concern: each turns the
//! facts it is about into its [`Finding`] (pure).

use super::{
    facts::{has_cap, CAP_BPF, CAP_PERFMON, CAP_SYSLOG, CAP_SYS_ADMIN},
    Facts, Finding, FunctionFact, HookFacts, Status, Trial, Verdict,
};

fn finding(id: &'static str, status: Status, detail: String, fix: Option<String>) -> Finding {
    Finding { id: id.into(), status, detail, fix }
}

/// Privileges: what the kernel checks is the effective capability set,
/// not the uid (root in a container may lack CAP_BPF; a service user
/// with ambient capabilities has it).
pub(super) fn privileges(f: &Facts) -> Finding {
    match f.cap_eff {
        Some(caps) => {
            let names = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_SYSLOG, "CAP_SYSLOG")];
            let held: Vec<&str> = names.iter().filter(|(c, _)| has_cap(caps, *c)).map(|(_, n)| *n).collect();
            let ok = (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) || has_cap(caps, CAP_SYS_ADMIN);
            let who = if f.euid == 0 { "root".to_string() } else { format!("uid {}", f.euid) };
            finding(
                "privileges",
                if ok { Status::Ok } else { Status::Fail },
                format!(
                    "running as {who}; effective capabilities {}",
                    if held.is_empty() { "include none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYSLOG".to_string() } else { format!("include {}", held.join(", ")) }
                ),
                (!ok).then(|| "run with sudo, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8), plus CAP_SYSLOG for kernel addresses; packaging/gupwatch.service does this for the daemon".into()),
            )
        }
        None => finding("privileges", Status::Warn, "CapEff not readable from /proc/self/status".into(), None),
    }
}

pub(super) fn kernel_btf(f: &Facts) -> Finding {
    match &f.btf {
        Ok(()) => finding("kernel_btf", Status::Ok, "/sys/kernel/btf/vmlinux readable: arguments are found by name, fentry is possible".into(), None),
        Err(e) => finding(
            "kernel_btf",
            Status::Warn,
            format!("no kernel BTF ({e}): no fentry, argument positions assumed from the 6.5+ layout"),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every recent distribution kernel); kprobes work without it".into()),
        ),
    }
}

pub(super) fn lockdown(f: &Facts) -> Finding {
    match &f.lockdown {
        Some(l) if l.contains("[confidentiality]") => finding(
            "lockdown",
            Status::Fail,
            format!("lockdown: {l}"),
            Some("confidentiality lockdown forbids BPF from reading kernel memory: boot without lockdown=confidentiality (or turn off Secure Boot's lockdown)".into()),
        ),
        Some(l) => finding("lockdown", Status::Ok, format!("lockdown: {l} (BPF tracing allowed)"), None),
        None => finding("lockdown", Status::Ok, "no lockdown LSM (/sys/kernel/security/lockdown absent)".into(), None),
    }
}

pub(super) fn bpf_jit(f: &Facts) -> Finding {
    match f.bpf_jit.as_deref() {
        Some("1") => finding("bpf_jit", Status::Ok, "BPF JIT enabled (net.core.bpf_jit_enable=1)".into(), None),
        Some("2") => finding(
            "bpf_jit",
            Status::Warn,
            "BPF JIT in debug mode (net.core.bpf_jit_enable=2): it logs every program".into(),
            Some("sysctl -w net.core.bpf_jit_enable=1".into()),
        ),
        Some(v) => finding(
            "bpf_jit",
            Status::Warn,
            format!("BPF JIT off (net.core.bpf_jit_enable={v}): programs run in the interpreter, several times slower on every GUP call"),
            Some("sysctl -w net.core.bpf_jit_enable=1".into()),
        ),
        None => finding(
            "bpf_jit",
            Status::Warn,
            "no /proc/sys/net/core/bpf_jit_enable: the kernel has no BPF JIT".into(),
            Some("use a kernel with CONFIG_BPF_JIT=y".into()),
        ),
    }
}

pub(super) fn kallsyms(f: &Facts) -> Finding {
    match &f.kallsyms {
        Ok((n, true)) => finding("kallsyms", Status::Ok, format!("/proc/kallsyms: {n} text symbols with addresses"), None),
        Ok((n, false)) => finding(
            "kallsyms",
            Status::Warn,
            format!(
                "/proc/kallsyms: {n} text symbols but addresses hidden (kernel.kptr_restrict={}, kernel.perf_event_paranoid={}): hooks attach by name, but call sites and subsystems show as unknown",
                f.kptr_restrict.as_deref().unwrap_or("?"),
                f.perf_event_paranoid.map_or_else(|| "?".to_string(), |p| p.to_string())
            ),
            Some("grant CAP_SYSLOG (root has it): with kptr_restrict 0 or 1 it shows the addresses".into()),
        ),
        Err(e) => finding(
            "kallsyms",
            Status::Fail,
            format!("/proc/kallsyms unreadable: {e}"),
            Some("gupwatch finds the GUP functions there: mount /proc and allow reading it".into()),
        ),
    }
}

pub(super) fn tracepoint(f: &Facts) -> Finding {
    match &f.tracepoint {
        Trial::Works { target } => finding("tracepoint", Status::Ok, format!("tracepoint programs load and attach ({target}): exited owners of pins are seen"), None),
        Trial::Fails { target, error } if error.contains("tracefs not found") && f.tracefs_mounted => finding(
            "tracepoint",
            Status::Warn,
            format!("tracefs is mounted but out of this user's reach (its directory is 0700 root), so the tracepoint {target} cannot be found"),
            Some("run as uid 0, or grant CAP_DAC_READ_SEARCH; until then orphaned pins are found by checking /proc for their owner".into()),
        ),
        Trial::Fails { target, error } if error.contains("tracefs not found") => finding(
            "tracepoint",
            Status::Warn,
            format!("tracefs is not mounted, so the tracepoint {target} cannot be found (the program itself was not refused)"),
            Some("mount -t tracefs nodev /sys/kernel/tracing (systemd does at boot); until then orphaned pins are found by checking /proc for their owner".into()),
        ),
        Trial::Fails { target, error } if paranoid_refusal(f, error) => finding(
            "tracepoint",
            Status::Warn,
            format!("attaching the tracepoint {target} was refused by perf_event_paranoid={}: {error}", f.perf_event_paranoid.unwrap_or(3)),
            Some(format!("{PARANOID_FIX}; until then orphaned pins are found by checking /proc for their owner")),
        ),
        Trial::Fails { target, error } => finding(
            "tracepoint",
            Status::Warn,
            format!("a tracepoint program on {target} was refused: {error}"),
            Some("orphaned pins are found by checking /proc for their owner instead".into()),
        ),
        Trial::NotTried { why } => finding("tracepoint", Status::Info, format!("not tried: {why}"), None),
    }
}

pub(super) fn fentry(f: &Facts) -> Finding {
    let kprobe_works = f.kprobe.works();
    match &f.fentry {
        Trial::Works { target } => finding("fentry", Status::Ok, format!("fentry/fexit programs load and attach ({target})"), None),
        Trial::Fails { target, error } => finding(
            "fentry",
            if kprobe_works { Status::Warn } else { Status::Fail },
            format!(
                "fentry on {target} was refused: {error}{}",
                if kprobe_works { " (kprobes are used instead)" } else { "" }
            ),
            Some(fix_for_fentry(error)),
        ),
        Trial::NotTried { why } => finding("fentry", Status::Info, format!("not tried: {why}"), None),
    }
}

pub(super) fn kprobe(f: &Facts) -> Finding {
    match &f.kprobe {
        Trial::Works { target } => finding("kprobe", Status::Ok, format!("kprobe/kretprobe programs load and attach ({target})"), None),
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
            finding(
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
            )
        }
        Trial::NotTried { why } => finding("kprobe", Status::Info, format!("not tried: {why}"), None),
    }
}

/// BPF helpers the programs call that the kernel lacks (5.10: `bpf_loop`,
/// `bpf_get_func_arg`): none of them loads, so this is the finding that
/// explains the reduced mode.
pub(super) fn bpf_helpers(f: &Facts) -> Option<Finding> {
    (!f.missing_helpers.is_empty()).then(|| {
        finding(
            "bpf_helpers",
            Status::Fail,
            format!(
                "this kernel lacks BPF helpers gupwatch's programs call: {}; its verifier would refuse every program, so none is loaded",
                f.missing_helpers.join(", ")
            ),
            Some("gupwatch runs here in the reduced mode (the kernel's FOLL_PIN counters, accounted pins); for the probes, use a newer kernel".into()),
        )
    })
}

/// None without a plan (no functions known).
pub(super) fn gup_functions(f: &Facts) -> Option<Finding> {
    if f.functions.is_empty() {
        return None;
    }
    // i915's hooks are its object lifecycle, not GUP entry points.
    let gup: Vec<&FunctionFact> = f.functions.iter().filter(|x| x.kind != "i915").collect();
    let present: Vec<&str> = gup.iter().filter(|x| x.present).map(|x| x.function).collect();
    let absent: Vec<&str> = gup.iter().filter(|x| !x.present).map(|x| x.function).collect();
    let core = ["pin_user_pages_fast", "unpin_user_pages"].iter().all(|c| present.contains(c));
    Some(finding(
        "gup_functions",
        if core { Status::Ok } else { Status::Warn },
        format!(
            "{} of {} GUP functions exist in this kernel{}",
            present.len(),
            gup.len(),
            if absent.is_empty() { String::new() } else { format!("; absent (they come and go between versions): {}", absent.join(", ")) }
        ),
        (!core).then(|| "pin_user_pages_fast or unpin_user_pages is missing: a kernel older than 5.8, or a very unusual build; gupwatch supports 5.8 and later".into()),
    ))
}

pub(super) fn i915(f: &Facts) -> Finding {
    finding(
        "i915",
        Status::Info,
        if f.i915_loaded {
            "i915 loaded: its userptr objects are attributed (kprobes on module functions; a running gupwatch detaches them when i915 is unloaded, since the kernel kills a module's kprobes with it, and attaches new ones when it is loaded again)".into()
        } else {
            "i915 not loaded: its hooks attach if the module appears, and follow it through later unloads and loads".into()
        },
        None,
    )
}

pub(super) fn vmstat(f: &Facts) -> Finding {
    match (&f.reduced.acquired, &f.reduced.released, &f.reduced.error) {
        (Some(a), Some(r), _) => finding(
            "vmstat",
            Status::Ok,
            format!("/proc/vmstat: nr_foll_pin_acquired={a} nr_foll_pin_released={r} (the reduced mode works)"),
            None,
        ),
        (_, _, e) => finding(
            "vmstat",
            Status::Fail,
            format!("/proc/vmstat has no FOLL_PIN counters: {}", e.as_deref().unwrap_or("unknown")),
            Some("nr_foll_pin_* appeared in 5.8; mount /proc".into()),
        ),
    }
}

/// Only worth a line when the object did not load: kernels since 5.11
/// do not charge BPF maps to the limit, and gupwatch raises it anyway.
pub(super) fn memlock(f: &Facts) -> Option<Finding> {
    let (Some((cur, max)), Some(HookFacts { load_error: Some(_), .. })) = (f.memlock, &f.hooks) else { return None };
    Some(finding(
        "memlock",
        Status::Info,
        format!("RLIMIT_MEMLOCK {cur}/{max} bytes: gupwatch raises it (kernels before 5.11 charge BPF maps to it)"),
        (max != libc::RLIM_INFINITY).then(|| "on kernels before 5.11 grant CAP_SYS_RESOURCE or set LimitMEMLOCK=infinity (the systemd unit does)".into()),
    ))
}

pub(super) fn verdict(f: &Facts) -> Verdict {
    match &f.hooks {
        Some(h) if h.attached > 0 && h.attached == h.present => Verdict::Full,
        Some(h) if h.attached > 0 => Verdict::Partial,
        _ if f.reduced.available => Verdict::Reduced,
        _ => Verdict::CannotRun,
    }
}

pub(super) fn probe_plan(f: &Facts, verdict: Verdict) -> Finding {
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
                    Some((_, fns)) => fns.push(&x.function),
                    None => by_error.push((&x.error, vec![&x.function])),
                }
            }
            for (error, fns) in by_error.iter().take(3) {
                let who = if fns.len() > 3 { format!("{} and {} more", fns[..2].join(", "), fns.len() - 2) } else { fns.join(", ") };
                detail += &format!("; {who}: {error}");
            }
            if by_error.len() > 3 {
                detail += &format!("; {} other reasons (see --json or `gupwatch probes`)", by_error.len() - 3);
            }
            finding(
                "probe_plan",
                match verdict {
                    Verdict::Full => Status::Ok,
                    Verdict::Partial => Status::Warn,
                    _ => Status::Fail,
                },
                detail,
                (verdict != Verdict::Full).then(|| "see the fentry and kprobe findings above; `gupwatch probes` shows each function's reason".into()),
            )
        }
        None => finding("probe_plan", Status::Fail, "no probe plan (see kallsyms)".into(), None),
    }
}

pub(super) fn kernel(f: &Facts) -> Finding {
    let (standing, detail, fix) = f.running.assess();
    let status = match standing {
        crate::kernel::version::Standing::Release => Status::Ok,
        crate::kernel::version::Standing::PreRelease => Status::Info,
        crate::kernel::version::Standing::Unknown => Status::Warn,
    };
    finding("kernel", status, detail, fix)
}

/// The report's one sentence, naming the failed checks when gupwatch runs
/// with less.
pub(super) fn summary(f: &Facts, verdict: Verdict, findings: &[Finding]) -> String {
    let reasons: Vec<&str> = findings.iter().filter(|x| x.status == Status::Fail).map(|x| x.id.as_str()).collect();
    match verdict {
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
