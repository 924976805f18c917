//! The JSON API: the documents of `/api/snapshot` (with the opt-in
//! `callers=1` rows), written from a [`Reading`].
//!
//! The live view reads these same documents, from a daemon
//! (`gupwatch top --connect`) and from its own collector alike
//! (`tui::sample`), so the two views cannot drift apart.

use std::collections::BTreeMap;

use gup_common::{Api, Diag};
use serde::Serialize;

use crate::{
    accounted::Accounted,
    attribution::Row,
    collect::{kind_label, row_kind, HookHealth, Reading, KINDS},
    errno::errno_name,
    model::{Snapshot, Totals},
};

#[cfg(test)]
mod tests;

#[derive(Serialize)]
struct ApiJson {
    api: &'static str,
    kind: &'static str,
    attached: bool,
    calls: u64,
    pages: u64,
    requested_pages: u64,
    errors: u64,
    zero_calls: u64,
    short_calls: u64,
    undone_pages: u64,
    untimed_calls: u64,
    latency_ns_sum: u64,
    fast_pages: u64,
    slow_pages: u64,
    unsplit_pages: u64,
    fell_back_calls: u64,
    longterm_calls: u64,
    longterm_pages: u64,
    /// The log2 nanosecond latency histogram (bucket `i`: `2^i <= d <
    /// 2^(i+1)` ns), for clients that draw it (`gupwatch top --connect`).
    latency_log2: Vec<u64>,
}

#[derive(Serialize)]
struct ProcessJson {
    tgid: u32,
    comm: String,
    pinned_pages: u64,
    referenced_pages: u64,
    unpinned_pages: u64,
    calls: u64,
    errors: u64,
}

#[derive(Serialize)]
struct ErrnoJson {
    api: &'static str,
    errno: u32,
    name: String,
    calls: u64,
}

#[derive(Serialize)]
struct KernelJson {
    acquired: u64,
    released: u64,
    outstanding: i64,
}

#[derive(Serialize)]
struct SnapshotJson<'a> {
    version: &'a str,
    kernel: &'a str,
    mode: &'static str,
    hooks_attached: usize,
    totals: Option<Totals>,
    outstanding_pages: Option<i64>,
    kernel_counters: Option<KernelJson>,
    apis: Vec<ApiJson>,
    errnos: Vec<ErrnoJson>,
    events_dropped: BTreeMap<&'static str, u64>,
    top_processes: Vec<ProcessJson>,
    subsystems: Vec<ProcessSeriesJson>,
    hooks: &'a [HookHealth],
    scrape_duration_seconds: f64,
    /// Reduced mode: who holds pinned memory, as the kernel accounts it.
    accounted: Option<&'a Accounted>,
}

#[derive(Serialize)]
struct ProcessSeriesJson {
    subsystem: &'static str,
    kind: &'static str,
    pages: u64,
}

/// The counters of every pin, get and unpin API of the plan (none without
/// probes).
fn api_counters(d: &Reading) -> Vec<ApiJson> {
    let Some(s) = d.snapshot.as_ref() else { return vec![] };
    d.plan
        .hooks
        .iter()
        .filter_map(|h| {
            let kind = kind_label(h.api.kind())?;
            let a = s.api(h.api);
            Some(ApiJson {
                api: h.function,
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
fn top_processes(rows: &[Row], top: usize) -> Vec<ProcessJson> {
    let mut procs: BTreeMap<(u32, &str), ProcessJson> = BTreeMap::new();
    for r in rows {
        let Some(k) = row_kind(r) else { continue };
        let p = procs.entry((r.tgid, r.comm.as_str())).or_insert_with(|| ProcessJson {
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
    let mut top_processes: Vec<ProcessJson> = procs.into_values().collect();
    top_processes.sort_by(|a, b| {
        b.pinned_pages
            .cmp(&a.pinned_pages)
            .then((b.referenced_pages + b.unpinned_pages).cmp(&(a.referenced_pages + a.unpinned_pages)))
            .then(a.tgid.cmp(&b.tgid))
    });
    top_processes.truncate(top);
    top_processes
}

/// The JSON document of `/api/snapshot`: totals, per-API counters, the top
/// processes (by pid; JSON has no cardinality limit), subsystems and the
/// plan. `top` bounds the process list.
pub fn snapshot_json(d: &Reading, top: usize) -> serde_json::Value {
    let snap = d.snapshot.as_ref();
    let apis = api_counters(d);
    let errnos = snap
        .map(|s| {
            s.errnos
                .iter()
                .filter_map(|((api, errno), n)| {
                    Some(ErrnoJson {
                        api: Api::from_index(*api)?.symbol(),
                        errno: *errno,
                        name: errno_name(*errno),
                        calls: *n,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let top_processes = top_processes(&d.rows, top);
    let mut subsystems: BTreeMap<(&'static str, usize), u64> = BTreeMap::new();
    for r in &d.rows {
        if let Some(k) = row_kind(r) {
            *subsystems.entry((r.caller.subsystem.as_str(), k)).or_default() += r.pages;
        }
    }
    let events_dropped = snap
        .map(|s| {
            [
                ("inflight_full", Diag::InflightFull),
                ("arg_read_failed", Diag::ArgReadFailed),
                ("attrib_full", Diag::AttribFull),
                ("stack_lost", Diag::StackLost),
            ]
            .into_iter()
            .map(|(n, i)| (n, s.diag.get(i as usize).copied().unwrap_or(0)))
            .collect()
        })
        .unwrap_or_default();
    let totals = snap.map(Snapshot::totals);
    let doc = SnapshotJson {
        version: &d.version,
        kernel: &d.plan.kernel,
        mode: if snap.is_some() { "full" } else { "reduced" },
        hooks_attached: d.plan.attached(),
        totals,
        outstanding_pages: totals.map(|t| (t.pinned_pages as i64).wrapping_sub(t.unpinned_pages as i64)),
        kernel_counters: d.vmstat.map(|v| KernelJson {
            acquired: v.acquired,
            released: v.released,
            outstanding: v.outstanding(),
        }),
        apis,
        errnos,
        events_dropped,
        top_processes,
        subsystems: subsystems
            .into_iter()
            .map(|((subsystem, k), pages)| ProcessSeriesJson { subsystem, kind: KINDS[k], pages })
            .collect(),
        hooks: &d.plan.hooks,
        scrape_duration_seconds: d.gather_duration.as_secs_f64(),
        accounted: d.accounted.as_deref(),
    };
    serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
}

/// Most attribution rows `/api/snapshot?callers=1` returns.
pub const MAX_JSON_CALLERS: usize = 2000;

/// One attribution row of `/api/snapshot?callers=1`.
#[derive(Serialize)]
struct CallerJson<'a> {
    tgid: u32,
    comm: &'a str,
    api: &'static str,
    kind: &'static str,
    caller: &'a str,
    subsystem: &'static str,
    /// The driver module of the stack ([`Caller::module`](crate::attribution::Caller::module)), or null.
    module: Option<&'a str>,
    calls: u64,
    pages: u64,
    errors: u64,
    fast_pages: u64,
    slow_pages: u64,
    longterm_pages: u64,
}

/// The attribution rows (process, API, caller) with their cumulative
/// counters, largest first, at most `limit` of them; the flag says whether
/// rows were left out. Opt-in (`?callers=1`) because a busy host has
/// thousands of rows.
pub fn callers_json(d: &Reading, limit: usize) -> (serde_json::Value, bool) {
    let mut rows: Vec<&Row> = d.rows.iter().filter(|r| row_kind(r).is_some()).collect();
    rows.sort_by(|a, b| b.pages.cmp(&a.pages).then(b.calls.cmp(&a.calls)).then(a.tgid.cmp(&b.tgid)));
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let out: Vec<CallerJson<'_>> = rows
        .into_iter()
        .filter_map(|r| {
            Some(CallerJson {
                tgid: r.tgid,
                comm: &r.comm,
                api: r.api,
                kind: KINDS[row_kind(r)?],
                caller: &r.caller.function,
                subsystem: r.caller.subsystem.as_str(),
                module: r.caller.module.as_deref(),
                calls: r.calls,
                pages: r.pages,
                errors: r.errors,
                fast_pages: r.fast_pages,
                slow_pages: r.slow_pages,
                longterm_pages: r.longterm_pages,
            })
        })
        .collect();
    (serde_json::to_value(out).unwrap_or(serde_json::Value::Null), truncated)
}

/// The `/api/snapshot` document with its `callers=1` extra: the attribution
/// rows (at most `max_callers`) under `callers`, and under
/// `callers_truncated` whether rows were left out.
pub fn snapshot_with_callers(d: &Reading, top: usize, max_callers: usize) -> serde_json::Value {
    let mut doc = snapshot_json(d, top);
    let (rows, truncated) = callers_json(d, max_callers);
    doc["callers"] = rows;
    doc["callers_truncated"] = truncated.into();
    doc
}
