//! The summary mode (`gupwatch --plain`, or `gupwatch` when stdout is not
//! a terminal): one line per interval of what the probes counted, beside
//! the kernel's own FOLL_PIN counters.

use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use gup_common::{Api, ApiKind};

use crate::{
    diagnose::host,
    probes::loader::Probes,
    model::counters::Snapshot,
    kernel::plan::{HookStatus, Mechanism},
    probes::reader::ReadError,
    kernel::vmstat,
};

/// Why the summary lines stopped.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

/// The first line: the hooks attached, by mechanism.
pub fn write_header(probes: &Probes, out: &mut dyn Write) -> std::io::Result<()> {
    let by_mech =
        |m| probes.plan.hooks.iter().filter(|h| h.status == HookStatus::Attached && h.mechanism == Some(m)).count();
    writeln!(
        out,
        "gupwatch on {}: {} hooks attached ({} fentry/fexit, {} kprobe). Ctrl-C to stop.",
        probes.plan.kernel,
        probes.plan.attached(),
        by_mech(Mechanism::Fentry),
        by_mech(Mechanism::Kprobe)
    )
}

/// A summary line every `interval` until `count` were printed or `stop`
/// is set, then the totals. With `late_attach`, module hooks follow their
/// module between lines.
pub fn run(
    probes: &mut Probes,
    interval: Duration,
    count: Option<u64>,
    stop: &AtomicBool,
    late_attach: bool,
    out: &mut dyn Write,
) -> Result<(), SummaryError> {
    let first = probes.maps.snapshot()?;
    let vm_first = vmstat::read(true).ok();
    let mut prev = first.clone();
    let mut vm_prev = vm_first;
    let t0 = Instant::now();
    let mut printed = 0;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| printed < c) {
        host::sleep_unless_stopped(interval, stop);
        // Module hooks (i915) attach when their module loads and detach
        // when it unloads; every interval, so either shows within one.
        if late_attach {
            write_module_events(probes, out)?;
        }
        let now = probes.maps.snapshot()?;
        let vm_now = vmstat::read(true).ok();
        write_line(out, t0, &first, &prev, &now, vm_now.as_ref(), vm_prev.as_ref())?;
        out.flush()?;
        prev = now;
        vm_prev = vm_now;
        printed += 1;
    }
    let total = probes.maps.snapshot()?.since(&first).totals();
    writeln!(
        out,
        "total: {} pages pinned in {} calls, {} unpinned, {} FOLL_GET references; detaching.",
        total.pinned_pages, total.pin_calls, total.unpinned_pages, total.referenced_pages
    )?;
    Ok(())
}

/// What one look at the modules changed.
fn write_module_events(probes: &mut Probes, out: &mut dyn Write) -> std::io::Result<()> {
    let ev = probes.follow_modules();
    for d in &ev.detached {
        writeln!(out, "gupwatch: {} detached ({} {}); attached again when it loads", d.function, d.module, d.reason)?;
    }
    for f in &ev.attached {
        writeln!(out, "gupwatch: {f} appeared (module loaded); attached")?;
    }
    for (f, why) in &ev.failed {
        writeln!(out, "gupwatch: {f} not attached: {why}")?;
    }
    Ok(())
}

/// One interval's line: the probes' counts since `prev`, the kernel's,
/// the outstanding pages since `first` and the three busiest functions.
fn write_line(
    out: &mut dyn Write,
    t0: Instant,
    first: &Snapshot,
    prev: &Snapshot,
    now: &Snapshot,
    vm_now: Option<&vmstat::FollPinCounters>,
    vm_prev: Option<&vmstat::FollPinCounters>,
) -> std::io::Result<()> {
    let d = now.since(prev);
    let t = d.totals();
    let mut top: Vec<(Api, u64)> = Api::ALL
        .iter()
        .filter(|a| matches!(a.kind(), ApiKind::Pin | ApiKind::Get))
        .map(|&a| (a, d.api(a).pages))
        .filter(|(_, p)| *p > 0)
        .collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    let top: Vec<String> = top.iter().take(3).map(|(a, p)| format!("{} {}", a.symbol(), p)).collect();
    let kernel = match (vm_now, vm_prev) {
        (Some(n), Some(p)) => match n.delta_since(p) {
            Ok(k) => format!("kernel +{} / -{}", k.acquired, k.released),
            Err(_) => "kernel n/a".into(),
        },
        _ => "kernel n/a".into(),
    };
    writeln!(
        out,
        "[{:>5.0}s] pinned +{:<6} unpinned +{:<6} refs +{:<6} calls {:<5} errors {:<3} | {} | outstanding since start {:>6} | {}",
        t0.elapsed().as_secs_f64(),
        t.pinned_pages,
        t.unpinned_pages,
        t.referenced_pages,
        t.pin_calls + t.get_calls,
        t.failed_calls,
        kernel,
        now.since(first).totals().pinned_pages as i64 - now.since(first).totals().unpinned_pages as i64,
        if top.is_empty() { "-".to_string() } else { top.join(", ") }
    )
}
