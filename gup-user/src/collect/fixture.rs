//! Readings for the exporters' and the live view's tests: a busy one
//! touching every family, and the plan it comes from.

use std::{sync::Arc, time::Duration};

use gup_common::{Api, AttribKey, AttribValue, Diag, LATENCY_BUCKETS};

use super::{HookHealth, LeakMetrics, PlanSummary, Reading, Settings, TopProcesses};
use gup_report::{Caller, Subsystem};

use crate::{
    model::attribution::Row,
    model::counters::Snapshot,
    kernel::vmstat::FollPinCounters,
};

pub(crate) fn hook(api: Api, attached: bool, mechanism: &'static str) -> HookHealth {
    HookHealth {
        api,
        function: api.symbol(),
        kind: crate::kernel::plan::kind_name(api.kind()),
        mechanism,
        attached,
        status: if attached { "attached" } else { "absent" },
        reason: String::new(),
    }
}

/// A plan where every API is attached via fentry, except
/// pin_user_pages_fast_only (absent) and memfd_pin_folios (kprobe).
pub(crate) fn plan() -> PlanSummary {
    let hooks = Api::ALL
        .iter()
        .map(|&a| match a {
            Api::PinUserPagesFastOnly => hook(a, false, "none"),
            Api::MemfdPinFolios => hook(a, true, "kprobe"),
            _ => hook(a, true, "fentry"),
        })
        .collect();
    PlanSummary { kernel: "6.12.0-test".into(), hooks }
}

pub(crate) fn row(tgid: u32, comm: &str, api: Api, pages: u64, subsystem: Subsystem) -> Row {
    Row {
        tgid,
        comm: comm.into(),
        cgroup_id: 1,
        api: api.symbol(),
        caller: Caller { function: "caller_fn".into(), subsystem, module: None },
        calls: 1,
        pages,
        errors: 0,
        fast_pages: 0,
        slow_pages: pages,
        longterm_pages: 0,
    }
}

pub(crate) fn with_module(mut r: Row, module: &str) -> Row {
    r.caller.module = Some(module.into());
    r
}

/// A busy snapshot touching every family.
pub(crate) fn sample() -> Arc<Reading> {
    let mut s = Snapshot::default();
    let fast = &mut s.apis[Api::PinUserPagesFast as usize];
    fast.calls = 10;
    fast.pages = 5120;
    fast.undone_pages = 16;
    fast.reverted = [1, 15, 0];
    fast.fast_pages = 4096;
    fast.slow_pages = 1024;
    fast.fell_back_calls = 2;
    fast.short_calls = 1;
    fast.longterm_pages = 512;
    fast.latency_ns_sum = 3_000_000;
    fast.latency_log2[10] = 4; // 1024..2048 ns
    fast.latency_log2[12] = 5;
    fast.latency_log2[LATENCY_BUCKETS - 1] = 1;
    let unpin = &mut s.apis[Api::UnpinUserPages as usize];
    unpin.calls = 3;
    unpin.pages = 5000;
    let get = &mut s.apis[Api::GetUserPagesFast as usize];
    get.calls = 7;
    get.pages = 70;
    get.fast_pages = 70;
    s.diag[Diag::InflightFull as usize] = 1;
    s.diag[Diag::StackLost as usize] = 4;
    s.diag[Diag::EntrySkipped as usize] = 256;
    s.errnos.insert((Api::PinUserPagesFast as u32, libc::EFAULT as u32), 3);
    s.errnos.insert((Api::PinUserPagesRemote as u32, 999), 1);
    let key = AttribKey { tgid: 1, api: 1, site: 0 };
    let val = AttribValue { stack_id: 0, ..AttribValue::ZERO };
    s.attrib = vec![(key, val); 3];
    let rows = vec![
        row(100, "fio", Api::PinUserPagesFast, 4096, Subsystem::DirectIo),
        row(101, "fio", Api::PinUserPagesFast, 1024, Subsystem::DirectIo),
        row(100, "fio", Api::UnpinUserPages, 5000, Subsystem::DirectIo),
        row(200, "qemu \"vm\"\\1\nx", Api::GetUserPagesFast, 70, Subsystem::Vfio),
        row(300, "", Api::PinUserPagesFast, 0, Subsystem::Other),
        row(400, "bad\u{fffd}utf8\t\r", Api::PinUserPagesFast, 1, Subsystem::IoUring),
        with_module(row(500, "cuda_app", Api::PinUserPages, 2048, Subsystem::Gpu), "nvidia"),
        with_module(row(500, "cuda_app", Api::UnpinUserPage, 2000, Subsystem::Gpu), "nvidia"),
        with_module(row(600, "odd", Api::PinUserPages, 8, Subsystem::Other), "mydrv"),
    ];
    let mut top = TopProcesses::default();
    let mut d = Reading::new(
        plan(),
        Some(s),
        Some(FollPinCounters { acquired: 1_000_000, released: 999_000 }),
        rows,
        &mut top,
        Settings::default(),
    );
    d.gather_duration = Duration::from_micros(1500);
    d.read_errors.vmstat = 2;
    d.vmstat_refreshed_ago = Some(Duration::from_millis(250));
    let mut leaks = LeakMetrics { tracked_outstanding: 768, untracked: 3, held_by_others: 256, ..Default::default() };
    leaks.by_kind.insert("long_held", (1, 256));
    leaks.by_kind.insert("orphaned", (2, 512));
    d.leaks = Some(leaks);
    d.probe_misses = vec![("pin_user_pages_fast", 0), ("unpin_user_folio", 3)];
    d.probe_detached = vec![("i915_gem_userptr_ioctl", "module_unloaded", 2), ("i915_gem_userptr_ioctl", "kernel_gone", 0)];
    Arc::new(d)
}
