//! The JSON API: the `/api/snapshot` document (with the opt-in
//! `callers=1` rows) made from a [`Reading`], as [`gup_report`] types.
//!
//! The live view reads these same documents, from a daemon
//! (`gupwatch top --connect`) and from its own collector alike
//! (`tui::sample`), so the two views cannot drift apart.

use std::collections::BTreeMap;

use gup_common::{Api, Diag};

use crate::{
    model::attribution::Row,
    collect::{kind_index, row_kind, HookHealth, Reading},
    kernel::errno::errno_name,
    model::counters::Snapshot,
};
use gup_report::{
    ApiReport, CallerReport, ErrnoReport, HookReport, KernelCounters, Kind, Mode, ProcessReport, SnapshotReport,
    SubsystemReport,
};

#[cfg(test)]
mod tests;

/// The counters of every pin, get and unpin API of the plan (none without
/// probes).
fn api_counters(d: &Reading) -> Vec<ApiReport> {
    let Some(s) = d.snapshot.as_ref() else { return vec![] };
    d.plan
        .hooks
        .iter()
        .filter_map(|h| {
            let kind = kind_index(h.api.kind()).and_then(Kind::from_index)?;
            let a = s.api(h.api);
            Some(ApiReport {
                api: h.function.to_string(),
                kind,
                attached: h.attached,
                calls: a.calls,
                pages: a.pages,
                requested_pages: a.requested_pages,
                errors: a.errors,
                zero_calls: a.zero_calls,
                short_calls: a.short_calls,
                undone_pages: a.undone_pages,
                untimed_calls: a.untimed_calls,
                latency_ns_sum: a.latency_ns_sum,
                fast_pages: a.fast_pages,
                slow_pages: a.slow_pages,
                unsplit_pages: a.unsplit_pages,
                fell_back_calls: a.fell_back_calls,
                longterm_calls: a.longterm_calls,
                longterm_pages: a.longterm_pages,
                latency_log2: a.latency_log2.to_vec(),
            })
        })
        .collect()
}

/// The processes (by pid) with their pages by kind, most pinned pages
/// first, at most `top` of them.
fn top_processes(rows: &[Row], top: usize) -> Vec<ProcessReport> {
    let mut procs: BTreeMap<(u32, &str), ProcessReport> = BTreeMap::new();
    for r in rows {
        let Some(k) = row_kind(r) else { continue };
        let p = procs.entry((r.tgid, r.comm.as_str())).or_insert_with(|| ProcessReport {
            tgid: r.tgid,
            comm: r.comm.clone(),
            pinned_pages: 0,
            referenced_pages: 0,
            unpinned_pages: 0,
            calls: 0,
            errors: 0,
        });
        match k {
            0 => p.pinned_pages += r.pages,
            1 => p.referenced_pages += r.pages,
            _ => p.unpinned_pages += r.pages,
        }
        p.calls += r.calls;
        p.errors += r.errors;
    }
    let mut top_processes: Vec<ProcessReport> = procs.into_values().collect();
    top_processes.sort_by(|a, b| {
        b.pinned_pages
            .cmp(&a.pinned_pages)
            .then((b.referenced_pages + b.unpinned_pages).cmp(&(a.referenced_pages + a.unpinned_pages)))
            .then(a.tgid.cmp(&b.tgid))
    });
    top_processes.truncate(top);
    top_processes
}

/// Failed calls by API and errno.
fn errnos(snap: &Snapshot) -> Vec<ErrnoReport> {
    snap.errnos
        .iter()
        .filter_map(|((api, errno), n)| {
            Some(ErrnoReport {
                api: Api::from_index(*api)?.symbol().to_string(),
                errno: *errno,
                name: errno_name(*errno),
                calls: *n,
            })
        })
        .collect()
}

/// Pages by subsystem and kind, in subsystem then kind order.
fn subsystems(rows: &[Row]) -> Vec<SubsystemReport> {
    let mut pages: BTreeMap<(&'static str, usize), u64> = BTreeMap::new();
    for r in rows {
        if let Some(k) = row_kind(r) {
            *pages.entry((r.caller.subsystem.as_str(), k)).or_default() += r.pages;
        }
    }
    pages
        .into_iter()
        .filter_map(|((subsystem, k), pages)| {
            Some(SubsystemReport { subsystem: subsystem.to_string(), kind: Kind::from_index(k)?, pages })
        })
        .collect()
}

/// Events the programs dropped, by reason.
fn events_dropped(snap: &Snapshot) -> BTreeMap<String, u64> {
    [
        ("inflight_full", Diag::InflightFull),
        ("arg_read_failed", Diag::ArgReadFailed),
        ("attrib_full", Diag::AttribFull),
        ("stack_lost", Diag::StackLost),
    ]
    .into_iter()
    .map(|(n, i)| (n.to_string(), snap.diag.get(i as usize).copied().unwrap_or(0)))
    .collect()
}

fn hook(h: &HookHealth) -> HookReport {
    HookReport {
        function: h.function.to_string(),
        kind: h.kind.to_string(),
        mechanism: h.mechanism.to_string(),
        attached: h.attached,
        status: h.status.to_string(),
        reason: h.reason.clone(),
    }
}

/// The `/api/snapshot` document: totals, per-API counters, the top
/// processes (by pid; JSON has no cardinality limit), subsystems and the
/// plan. `top` bounds the process list.
pub fn snapshot_json(d: &Reading, top: usize) -> SnapshotReport {
    let snap = d.snapshot.as_ref();
    let totals = snap.map(Snapshot::totals);
    SnapshotReport {
        version: d.version.clone(),
        kernel: d.plan.kernel.clone(),
        mode: if snap.is_some() { Mode::Full } else { Mode::Reduced },
        hooks_attached: d.plan.attached(),
        totals,
        outstanding_pages: totals.map(|t| (t.pinned_pages as i64).wrapping_sub(t.unpinned_pages as i64)),
        kernel_counters: d.vmstat.map(|v| KernelCounters {
            acquired: v.acquired,
            released: v.released,
            outstanding: v.outstanding(),
            refreshed_ms_ago: d.vmstat_refreshed_ago.map(|a| a.as_millis().try_into().unwrap_or(u64::MAX)),
        }),
        apis: api_counters(d),
        errnos: snap.map(errnos).unwrap_or_default(),
        events_dropped: snap.map(events_dropped).unwrap_or_default(),
        top_processes: top_processes(&d.rows, top),
        subsystems: subsystems(&d.rows),
        hooks: d.plan.hooks.iter().map(hook).collect(),
        scrape_duration_seconds: d.gather_duration.as_secs_f64(),
        accounted: d.accounted.as_deref().cloned(),
        hold_times: d.hold_times.clone(),
        cgroups: d.cgroups.clone(),
        callers: None,
        callers_truncated: None,
        leaks: None,
    }
}

/// Most attribution rows `/api/snapshot?callers=1` returns.
pub const MAX_JSON_CALLERS: usize = 2000;

/// The attribution rows (process, API, caller) with their cumulative
/// counters, largest first, at most `limit` of them; the flag says whether
/// rows were left out. Opt-in (`?callers=1`) because a busy host has
/// thousands of rows.
pub fn callers_json(d: &Reading, limit: usize) -> (Vec<CallerReport>, bool) {
    let mut rows: Vec<&Row> = d.rows.iter().filter(|r| row_kind(r).is_some()).collect();
    rows.sort_by(|a, b| b.pages.cmp(&a.pages).then(b.calls.cmp(&a.calls)).then(a.tgid.cmp(&b.tgid)));
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let out = rows
        .into_iter()
        .filter_map(|r| {
            Some(CallerReport {
                tgid: r.tgid,
                comm: r.comm.clone(),
                api: r.api.to_string(),
                kind: row_kind(r).and_then(Kind::from_index)?,
                caller: r.caller.function.clone(),
                subsystem: r.caller.subsystem.as_str().to_string(),
                module: r.caller.module.clone(),
                calls: r.calls,
                pages: r.pages,
                errors: r.errors,
                fast_pages: r.fast_pages,
                slow_pages: r.slow_pages,
                longterm_pages: r.longterm_pages,
            })
        })
        .collect();
    (out, truncated)
}

/// The `/api/snapshot` document with its `callers=1` extra: the attribution
/// rows (at most `max_callers`) under `callers`, and under
/// `callers_truncated` whether rows were left out.
pub fn snapshot_with_callers(d: &Reading, top: usize, max_callers: usize) -> SnapshotReport {
    let (rows, truncated) = callers_json(d, max_callers);
    SnapshotReport { callers: Some(rows), callers_truncated: Some(truncated), ..snapshot_json(d, top) }
}
