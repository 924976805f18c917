//! The host gupwatch runs on: why probes could not attach, what would fix
//! it, and the reduced mode that still reports what `/proc/vmstat` offers.

use std::{
    io::Read,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    model::accounted,
    kernel::plan::{HookStatus, Mechanism, ProbePlan},
    kernel::vmstat,
};

/// One diagnostic finding.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: &'static str,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What would fix it, when it is not fine.
    pub fix: Option<String>,
}

impl Finding {
    /// A check that holds or not: `detail` says which (`[holds, not]`),
    /// `fix` is offered when it does not.
    fn yes_or_no(check: &'static str, ok: bool, detail: [&str; 2], fix: &str) -> Finding {
        Finding {
            check,
            ok,
            detail: detail[usize::from(!ok)].into(),
            fix: (!ok).then(|| fix.into()),
        }
    }
}

/// A kernel build option as the kernel reports it (`/proc/config.gz`, else
/// `/boot/config-<release>`): `Some(true)` set, `Some(false)` not set,
/// `None` unknown.
pub fn kernel_config(option: &str) -> Option<bool> {
    let text = read_kernel_config()?;
    let set = format!("{option}=");
    let unset = format!("# {option} is not set");
    for line in text.lines() {
        if line.starts_with(&set) {
            return Some(!line.ends_with("=n"));
        }
        if line == unset {
            return Some(false);
        }
    }
    Some(false)
}

fn read_kernel_config() -> Option<String> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut s = String::new();
        if flate2::read::GzDecoder::new(f).read_to_string(&mut s).is_ok() {
            return Some(s);
        }
    }
    std::fs::read_to_string(format!("/boot/config-{}", crate::kernel::version::release())).ok()
}

/// Explains why hooks could not attach (or confirms they did), from the
/// plan as the loader left it and the host's configuration.
pub fn diagnose(plan: Option<&ProbePlan>, load_error: Option<&str>) -> Vec<Finding> {
    let mut out = vec![];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    out.push(Finding::yes_or_no(
        "privileges",
        root,
        ["running as root", "not running as root"],
        "run with sudo, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8)",
    ));
    out.push(Finding::yes_or_no(
        "kernel BTF",
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        ["/sys/kernel/btf/vmlinux present", "/sys/kernel/btf/vmlinux missing"],
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (fentry needs it; kprobes still work without)",
    ));
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let kprobes_cfg = kernel_config("CONFIG_KPROBES");
    out.push(Finding {
        check: "kprobes",
        ok: kprobe_pmu,
        detail: match (kprobe_pmu, kprobes_cfg) {
            (true, _) => "kprobe PMU present".into(),
            (false, Some(false)) => "the kernel is built without CONFIG_KPROBES (no kprobe PMU in /sys/bus/event_source/devices)".into(),
            (false, _) => "no kprobe PMU in /sys/bus/event_source/devices".into(),
        },
        fix: (!kprobe_pmu).then(|| "use a kernel with CONFIG_KPROBES=y (every distribution kernel has it)".into()),
    });
    if let Ok(l) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        let confidentiality = l.contains("[confidentiality]");
        out.push(Finding {
            check: "lockdown",
            ok: !confidentiality,
            detail: format!("lockdown: {}", l.trim()),
            fix: confidentiality.then(|| "kernel lockdown (confidentiality) forbids reading kernel memory from BPF; boot without lockdown=confidentiality or Secure Boot's lockdown".into()),
        });
    }
    if let Some(e) = load_error {
        out.push(Finding {
            check: "BPF object",
            ok: false,
            detail: e.to_string(),
            // A kernel too old for the programs is not a privilege problem.
            fix: Some(if plan.is_some_and(|p| !p.capabilities.missing_helpers.is_empty()) {
                "none here: the reduced mode is what this kernel allows; use a newer kernel for the probes".into()
            } else {
                "run as root; if root already, the kernel or a security policy (seccomp, LSM) refuses bpf(2)".into()
            }),
        });
    }
    if let Some(plan) = plan {
        let fentry_err = plan.hooks.iter().find_map(|h| match &h.status {
            HookStatus::Failed(e) if e.contains("fentry") => Some(e.clone()),
            _ => None,
        });
        let attached = plan.attached();
        let present = plan.hooks.iter().filter(|h| h.status != HookStatus::Absent).count();
        out.push(Finding {
            check: "GUP hooks",
            ok: attached > 0 && attached == present,
            detail: format!("{attached} of {present} GUP functions present in this kernel attached"),
            fix: (attached < present).then(|| "see `gupwatch probes` for each function's reason".into()),
        });
        if let Some(e) = fentry_err {
            let eperm = e.contains("Operation not permitted") || e.contains("os error 1)");
            out.push(Finding {
                check: "fentry/fexit",
                ok: false,
                detail: format!("the kernel refused a BPF trampoline program: {e}"),
                fix: Some(if eperm {
                    "EPERM although privileged: this kernel (or the sandbox/VM it runs in) forbids BPF tracing programs. gupwatch needs either fentry (BTF + BPF trampolines) or kprobes; use a stock distribution kernel, or run gupwatch in a VM (`cargo xtask vm`)".into()
                } else {
                    "see the error; `gupwatch probes` shows every hook".into()
                }),
            });
        }
        let kprobe_hooks = plan.hooks.iter().any(|h| h.mechanism == Some(Mechanism::Kprobe));
        if kprobe_hooks && !kprobe_pmu {
            out.push(Finding {
                check: "kprobe fallback",
                ok: false,
                detail: "hooks that cannot use fentry need kprobes, which this kernel lacks".into(),
                fix: Some("use a kernel with CONFIG_KPROBES=y".into()),
            });
        }
    }
    out
}

/// Renders findings for a terminal.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s += &format!("  [{}] {:<14} {}\n", if f.ok { " ok " } else { "FAIL" }, f.check, f.detail);
        if let Some(fix) = &f.fix {
            s += &format!("         {:<14} fix: {}\n", "", fix);
        }
    }
    s
}

/// Holders listed per interval by the plain reduced mode.
pub const REDUCED_HOLDERS: usize = 10;

/// The reduced mode: every `interval`, the kernel's global FOLL_PIN
/// counters, then the processes holding pinned memory as the kernel
/// accounts it ([`accounted`]), until `count` intervals were printed or
/// `stop` is set. `proc_root` is `/proc` but for tests.
pub fn run_reduced(
    interval: Duration,
    count: Option<u64>,
    stop: &AtomicBool,
    out: &mut dyn std::io::Write,
    proc_root: &Path,
) -> Result<(), vmstat::VmstatError> {
    let start = vmstat::read(true)?;
    let mut prev = start;
    let mut prev_t = Instant::now();
    writeln!(
        out,
        "reduced mode: the kernel's global counters (/proc/vmstat nr_foll_pin_*) and, per process, the pinned memory it accounts (VmPin, VmLck, io_uring registered buffers); no traced per-caller or per-function detail"
    )
    .ok();
    let mut printed = 0u64;
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| printed < c) {
        sleep_unless_stopped(interval, stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = vmstat::read(true)?;
        let dt = prev_t.elapsed().as_secs_f64().max(1e-6);
        let d = now.delta_since(&prev)?;
        // The header again each interval: the holder table in between
        // would leave a lone line of numbers unlabelled.
        writeln!(
            out,
            "{:>8} {:>14} {:>14} {:>12} {:>12} {:>12}\n{:>7.0}s {:>14} {:>14} {:>12} {:>12.0} {:>12.0}",
            "TIME",
            "ACQUIRED",
            "RELEASED",
            "OUTSTANDING",
            "PINS/s",
            "UNPINS/s",
            t0.elapsed().as_secs_f64(),
            now.acquired,
            now.released,
            now.outstanding(),
            d.acquired as f64 / dt,
            d.released as f64 / dt
        )
        .ok();
        let held = accounted::scan(proc_root);
        write!(out, "{}", accounted::render_table(&held, REDUCED_HOLDERS)).ok();
        out.flush().ok();
        prev = now;
        prev_t = Instant::now();
        printed += 1;
    }
    let d = prev.delta_since(&start)?;
    writeln!(out, "since start: {} pins acquired, {} released", d.acquired, d.released).ok();
    Ok(())
}

/// Sleeps in small steps so Ctrl-C is answered promptly.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    // `Instant + Duration` panics past the clock's range (`leaks
    // --duration 18446744073709551615`): such a sleep lasts until stopped.
    let end = Instant::now().checked_add(d);
    while !stop.load(Ordering::Relaxed) {
        let left = end.map_or(Duration::MAX, |e| e.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duration no `Instant` can hold (`leaks --duration u64::MAX`)
    /// sleeps until stopped instead of panicking.
    #[test]
    fn endless_sleep_ends_when_stopped() {
        let stop = AtomicBool::new(true);
        sleep_unless_stopped(Duration::MAX, &stop);
        sleep_unless_stopped(Duration::from_secs(u64::MAX), &stop);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let t = std::thread::spawn(move || sleep_unless_stopped(Duration::MAX, &s));
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
