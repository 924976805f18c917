//! What one reading of the data sources holds ([`Reading`]), and the
//! pieces of it that outlive one reading (the top-N process selection).
//!
//! Plain data, so every exporter and the live view can be tested without a
//! kernel: the [`crate::collect::Collector`] fills it, `export::prometheus`
//! and `export::api` write it out.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use gup_common::{Api, ApiKind};
use serde::Serialize;

use super::Settings;
use gup_report::{Accounted, LeakReport};

use crate::{
    model::attribution::Row,
    model::counters::Snapshot,
    kernel::plan::{HookStatus, Mechanism, ProbePlan},
    kernel::vmstat::FollPinCounters,
};

/// The `comm` label of the series that sums every process outside the top N.
pub const OTHER_COMM: &str = "other";

/// One hook of the probe plan, as the exporters and the status page show it.
#[derive(Clone, Debug, Serialize)]
pub struct HookHealth {
    /// The API.
    #[serde(skip)]
    pub api: Api,
    /// Kernel function name.
    pub function: &'static str,
    /// pin, get, unpin or slow-path.
    pub kind: &'static str,
    /// `fentry`, `kprobe`, or `none` when the kernel lacks the function.
    pub mechanism: &'static str,
    /// Whether it is attached and counting.
    pub attached: bool,
    /// planned, attached, absent or failed.
    pub status: &'static str,
    /// Why this mechanism, or why it failed.
    pub reason: String,
}

/// What the exporters need from the probe plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanSummary {
    /// `uname -r`.
    pub kernel: String,
    /// Every hook of the plan, in [`Api`] order.
    pub hooks: Vec<HookHealth>,
}

impl PlanSummary {
    /// Summarises a plan (as the loader left it, or unattached).
    pub fn from_plan(plan: &ProbePlan) -> PlanSummary {
        let hooks = plan
            .hooks
            .iter()
            .map(|h| {
                let (status, extra) = match &h.status {
                    HookStatus::Planned => ("planned", None),
                    HookStatus::Attached => ("attached", None),
                    HookStatus::Absent => ("absent", None),
                    HookStatus::Failed(e) => ("failed", Some(e.as_str())),
                };
                let mechanism = match (&h.status, h.mechanism) {
                    (HookStatus::Absent, _) | (_, None) => "none",
                    (_, Some(Mechanism::Fentry)) => "fentry",
                    (_, Some(Mechanism::Kprobe)) => "kprobe",
                };
                HookHealth {
                    api: h.api,
                    function: h.function,
                    kind: h.kind,
                    mechanism,
                    attached: h.status == HookStatus::Attached,
                    status,
                    reason: match extra {
                        Some(e) => format!("{}: {e}", h.reason),
                        None => h.reason.clone(),
                    },
                }
            })
            .collect();
        PlanSummary { kernel: plan.kernel.clone(), hooks }
    }

    /// Number of attached hooks.
    pub fn attached(&self) -> usize {
        self.hooks.iter().filter(|h| h.attached).count()
    }
}

/// One series of the `gupwatch_process_*_pages_total` family of its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessSeries {
    /// Process name, or [`OTHER_COMM`].
    pub comm: String,
    /// pin, get or unpin.
    pub kind: &'static str,
    /// Pages.
    pub pages: u64,
}

/// The `kind` values, indexed by [`kind_index`].
pub(crate) const KINDS: [&str; 3] = ["pin", "get", "unpin"];

/// The `kind` label of an API: pin, get, or unpin for anything that
/// releases pins (the unpin entry points, and `gup_put_folio` for releases
/// no hooked unpin covers); `None` for the slow-path marker hook.
pub(crate) fn kind_index(kind: ApiKind) -> Option<usize> {
    match kind {
        ApiKind::Pin => Some(0),
        ApiKind::Get => Some(1),
        ApiKind::Unpin | ApiKind::Undo => Some(2),
        ApiKind::SlowPath | ApiKind::I915 => None,
    }
}

/// The `kind` label of an API (see [`kind_index`]).
pub(crate) fn kind_label(kind: ApiKind) -> Option<&'static str> {
    kind_index(kind).map(|i| KINDS[i])
}

/// The kind index of an attribution row's API.
pub(crate) fn row_kind(row: &Row) -> Option<usize> {
    Api::from_symbol(row.api).and_then(|a| kind_index(a.kind()))
}

/// The top-N selections of the exposition, kept across scrapes so that
/// each `other` series stays a true counter: the process names of
/// `gupwatch_process_*_pages_total` and the (API, errno) pairs of
/// `gupwatch_failed_calls_total` (the part of the metrics budget a
/// workload can grow; docs/fleet.md).
///
/// The top N keys are re-ranked every scrape. Membership can change; a
/// stateless "sum of the rest" would then drop whenever a key is promoted,
/// which `rate()` reads as a counter reset (a huge false spike). Instead
/// `other` only ever adds what keys outside the top N gained since the
/// last scrape, so it never decreases and its rate is the rate of the rest.
/// A process really named `other` is always folded into `other`.
#[derive(Debug, Default)]
pub struct TopProcesses {
    comms: TopN<String, 3>,
    errnos: TopN<(u32, u32), 1>,
}

/// (API, errno) pairs of `gupwatch_failed_calls_total` with their own
/// series; the rest are summed into `api="other", errno="other"`.
pub const ERRNO_SERIES: usize = 10;

/// One top-N selection of [`TopProcesses`]: the last cumulative counts of
/// every key and the running `other` sum.
#[derive(Debug)]
struct TopN<K, const W: usize> {
    last: HashMap<K, [u64; W]>,
    other: [u64; W],
}

impl<K, const W: usize> Default for TopN<K, W> {
    fn default() -> Self {
        TopN { last: HashMap::new(), other: [0; W] }
    }
}

impl<K: Clone + Eq + std::hash::Hash, const W: usize> TopN<K, W> {
    /// Keeps the first `n` of `ranked` (every key but the excluded ones,
    /// best first); adds every other key's growth to `other`. Returns the
    /// kept keys and the `other` sums.
    fn update(&mut self, now: HashMap<K, [u64; W]>, mut ranked: Vec<(K, [u64; W])>, n: usize) -> (Vec<(K, [u64; W])>, [u64; W]) {
        ranked.truncate(n);
        for (key, counts) in &now {
            if ranked.iter().any(|(k, _)| k == key) {
                continue;
            }
            let before = self.last.get(key).copied().unwrap_or([0; W]);
            for k in 0..W {
                self.other[k] = self.other[k].wrapping_add(counts[k].saturating_sub(before[k]));
            }
        }
        self.last = now;
        (ranked, self.other)
    }
}

impl TopProcesses {
    /// The series for this scrape: the top `n` names (every kind), then
    /// `other` (every kind).
    pub fn update(&mut self, rows: &[Row], n: usize) -> Vec<ProcessSeries> {
        let mut by_comm: HashMap<String, [u64; 3]> = HashMap::new();
        for r in rows {
            if let Some(k) = row_kind(r) {
                let e = by_comm.entry(r.comm.clone()).or_default();
                e[k] = e[k].wrapping_add(r.pages);
            }
        }
        let mut ranked: Vec<(String, [u64; 3])> =
            by_comm.iter().filter(|(c, _)| c.as_str() != OTHER_COMM).map(|(c, v)| (c.clone(), *v)).collect();
        ranked.sort_by(|a, b| {
            let total = |v: &[u64; 3]| v.iter().fold(0u64, |s, x| s.saturating_add(*x));
            b.1[0].cmp(&a.1[0]).then(total(&b.1).cmp(&total(&a.1))).then(a.0.cmp(&b.0))
        });
        let (kept, other) = self.comms.update(by_comm, ranked, n);
        let mut out = Vec::with_capacity(3 * (kept.len() + 1));
        for (comm, v) in kept.iter().map(|(c, v)| (c.as_str(), v)).chain([(OTHER_COMM, &other)]) {
            for (kind, pages) in KINDS.iter().zip(v) {
                out.push(ProcessSeries { comm: comm.to_string(), kind, pages: *pages });
            }
        }
        out
    }

    /// The `gupwatch_failed_calls_total` series for this scrape: the `n`
    /// (API, errno) pairs with the most failed calls, then their `other`
    /// (present once any pair is left out).
    pub fn update_errnos(&mut self, errnos: &BTreeMap<(u32, u32), u64>, n: usize) -> Vec<ErrnoSeries> {
        let now: HashMap<(u32, u32), [u64; 1]> = errnos.iter().map(|(k, v)| (*k, [*v])).collect();
        let mut ranked: Vec<((u32, u32), [u64; 1])> = errnos.iter().map(|(k, v)| (*k, [*v])).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (kept, [other]) = self.errnos.update(now, ranked, n);
        let mut out: Vec<ErrnoSeries> = kept
            .into_iter()
            .filter_map(|((api, errno), [calls])| {
                Some(ErrnoSeries { api: Api::from_index(api)?.symbol(), errno: crate::kernel::errno::errno_name(errno), calls })
            })
            .collect();
        if other > 0 || errnos.len() > n {
            out.push(ErrnoSeries { api: OTHER_COMM, errno: OTHER_COMM.to_string(), calls: other });
        }
        out
    }
}

/// One `gupwatch_failed_calls_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrnoSeries {
    /// The API's symbol, or [`OTHER_COMM`] for the sum of the rest.
    pub api: &'static str,
    /// The errno's name, or [`OTHER_COMM`].
    pub errno: String,
    /// Failed calls.
    pub calls: u64,
}

/// Failures to read a data source, by source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadErrors {
    /// Reading the BPF maps failed.
    pub maps: u64,
    /// Reading `/proc/vmstat` failed.
    pub vmstat: u64,
}

/// One reading of every data source, as plain data: what every exporter
/// (`/metrics`, `/api/snapshot`) and the live view show. Made by
/// [`crate::collect::Collector::gather`].
#[derive(Clone, Debug)]
pub struct Reading {
    /// gupwatch's version.
    pub version: String,
    /// The probe plan, as loaded.
    pub plan: PlanSummary,
    /// The in-kernel counters; `None` in the reduced mode (no probes).
    pub snapshot: Option<Snapshot>,
    /// The kernel's own FOLL_PIN counters, if readable.
    pub vmstat: Option<FollPinCounters>,
    /// How long ago `/proc/sys/vm/stat_refresh` was last written before
    /// `vmstat` was read (`None`: never, so `vmstat` lags each CPU's
    /// pending counts, folded every `vm.stat_interval`, 1 s by default).
    pub vmstat_refreshed_ago: Option<Duration>,
    /// Resolved attribution rows.
    pub rows: Vec<Row>,
    /// The per-process series (see [`TopProcesses`]).
    pub processes: Vec<ProcessSeries>,
    /// The failed-call series by API and errno (see [`TopProcesses`]).
    pub errnos: Vec<ErrnoSeries>,
    /// Time taken to gather this data (map reads, vmstat, symbolization).
    pub gather_duration: Duration,
    /// Read failures since start.
    pub read_errors: ReadErrors,
    /// Leak signals; `None` without probes.
    pub leaks: Option<LeakMetrics>,
    /// Per attached hook's function, the calls the kernel ran without
    /// gupwatch's program ([`crate::probes::loader::Probes::probe_misses`]).
    pub probe_misses: Vec<(&'static str, u64)>,
    /// Pinned memory as the kernel accounts it per process (reduced mode
    /// only: with probes the traced view says more, and the /proc walk
    /// is not free).
    pub accounted: Option<Arc<Accounted>>,
    /// Holders with their own `gupwatch_accounted_*` series
    /// ([`Settings::top_processes`]).
    pub top_processes: usize,
    /// Per module hook's function and reason, the times it was found dead
    /// ([`crate::probes::loader::Probes::probe_detached`]).
    pub probe_detached: Vec<(&'static str, &'static str, u64)>,
    /// How long released pins were held, per subsystem and LONGTERM
    /// (empty without probes or without pin tracking).
    pub hold_times: Vec<gup_report::HoldHistogram>,
    /// Pins held now per cgroup: the top ones, then `other` and
    /// `unknown` (empty without pin tracking).
    pub cgroups: Vec<gup_report::CgroupPins>,
    /// Whether the kernel counts BPF program runs ([`crate::probes::bpfstats`]).
    pub bpf_stats_enabled: bool,
    /// Run statistics of gupwatch's attached programs (empty without
    /// probes).
    pub bpf_programs: Vec<crate::probes::loader::ProgramRuns>,
}

impl Reading {
    /// Assembles a reading from its parts, updating the top-N state.
    pub fn new(
        plan: PlanSummary,
        snapshot: Option<Snapshot>,
        vmstat: Option<FollPinCounters>,
        rows: Vec<Row>,
        top: &mut TopProcesses,
        settings: Settings,
    ) -> Reading {
        let processes = if snapshot.is_some() { top.update(&rows, settings.top_processes) } else { vec![] };
        let errnos = snapshot.as_ref().map(|s| top.update_errnos(&s.errnos, ERRNO_SERIES)).unwrap_or_default();
        Reading {
            version: env!("CARGO_PKG_VERSION").to_string(),
            plan,
            snapshot,
            vmstat,
            vmstat_refreshed_ago: None,
            rows,
            processes,
            errnos,
            gather_duration: Duration::ZERO,
            read_errors: ReadErrors::default(),
            leaks: None,
            probe_misses: Vec::new(),
            accounted: None,
            top_processes: settings.top_processes,
            probe_detached: Vec::new(),
            hold_times: Vec::new(),
            cgroups: Vec::new(),
            bpf_stats_enabled: false,
            bpf_programs: Vec::new(),
        }
    }

    /// How many holders get per-process accounted series.
    pub(crate) fn processes_limit(&self) -> usize {
        self.top_processes
    }

    /// The pin/get/unpin APIs whose hooks are attached, in [`Api`] order.
    pub(crate) fn counted_apis(&self) -> Vec<(Api, &'static str)> {
        self.plan
            .hooks
            .iter()
            .filter(|h| h.attached)
            .filter_map(|h| kind_label(h.api.kind()).map(|k| (h.api, k)))
            .collect()
    }
}

/// Leak signals in metric form, from the pin tracking map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeakMetrics {
    /// Pins gupwatch tracks as outstanding.
    pub tracked_outstanding: u64,
    /// Pins the tracking map could not record.
    pub untracked: u64,
    /// Per signal kind: (signals, pages).
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Pins whose creator exited that a live process holds (not leaks).
    pub held_by_others: u64,
}

impl LeakMetrics {
    /// Summarises a leak report.
    pub fn from_report(r: &LeakReport) -> LeakMetrics {
        let mut by_kind: BTreeMap<&'static str, (u64, u64)> = [
            gup_report::LeakKind::LongHeld,
            gup_report::LeakKind::Orphaned,
            gup_report::LeakKind::Unbalanced,
            gup_report::LeakKind::Growth,
            gup_report::LeakKind::WeakPin,
        ]
        .iter()
        .map(|k| (k.as_str(), (0, 0)))
        .collect();
        for l in &r.leaks {
            let e = by_kind.entry(l.kind.as_str()).or_default();
            e.0 += 1;
            e.1 += l.pages;
        }
        let held_by_others = r.holdings.iter().filter(|h| !h.holders.is_empty()).map(|h| h.pages).sum();
        LeakMetrics { tracked_outstanding: r.tracked_outstanding, untracked: r.untracked_pins, by_kind, held_by_others }
    }
}
