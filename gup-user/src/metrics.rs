//! Prometheus / OpenMetrics exposition of gupwatch's counters.
//!
//! Two halves, so the format can be tested without a kernel:
//!
//! * [`Collector`] owns the loaded [`Probes`] (or none, in the reduced mode)
//!   and, at scrape time, reads the BPF maps, `/proc/vmstat` and the
//!   attribution rows into a plain [`ScrapeData`].
//! * [`render`] turns a [`ScrapeData`] into the exposition text, through the
//!   official `prometheus-client` crate: a fresh registry per scrape with one
//!   custom collector that writes every family from the data. The crate
//!   escapes label values and HELP text, and writes both the OpenMetrics
//!   1.0 text format and the Prometheus 0.0.4 text format ([`Format`]).
//!
//! Conventions: every family is prefixed `gupwatch_`, counters end in
//! `_total`, durations are in seconds, and page counts are in pages (the
//! kernel's unit; there is no base unit for pages).
//!
//! Cardinality: per-API families have one series per hooked kernel function
//! (at most 18, ×40 buckets for the latency histogram); per-process families
//! have no pid label and keep only the top N process names (by pinned
//! pages, [`Settings::top_processes`]), the rest summed into `comm="other"`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use gup_common::{Api, ApiKind, ApiStats, Diag, ATTRIB_CAPACITY, ERRNO_CAPACITY, LATENCY_BUCKETS};
use prometheus_client::{
    collector::Collector as PromCollector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::{Registry, Unit},
};
use serde::Serialize;

use crate::{
    accounted::Accounted,
    attribution::{self, Caller, Row},
    kallsyms::Kallsyms,
    leaks::{self, GrowthTracker, LeakPolicy, LeakReport},
    loader::Probes,
    model::{Snapshot, Totals},
    plan::{HookStatus, Mechanism, ProbePlan},
    vmstat::{self, FollPinCounters},
};

/// How many process names get their own series by default.
pub const DEFAULT_TOP_PROCESSES: usize = 10;

/// The `comm` label of the series that sums every process outside the top N.
pub const OTHER_COMM: &str = "other";

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The two text exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// Picks the format from an `Accept` header: OpenMetrics when the client
    /// names `application/openmetrics-text` with a quality at least that of
    /// any range plain text matches (`text/plain`, `text/*`, `*/*`);
    /// Prometheus text otherwise (also when there is no header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Prometheus };
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = v.trim().parse().unwrap_or(0.0);
                    }
                }
            }
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// Collector settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Process names with their own `gupwatch_process_pages_total` series.
    pub top_processes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { top_processes: DEFAULT_TOP_PROCESSES }
    }
}

/// One hook of the probe plan, as the metrics and the status page show it.
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

/// What the metrics need from the probe plan.
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

/// One `gupwatch_process_pages_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessSeries {
    /// Process name, or [`OTHER_COMM`].
    pub comm: String,
    /// pin, get or unpin.
    pub kind: &'static str,
    /// Pages.
    pub pages: u64,
}

const KINDS: [&str; 3] = ["pin", "get", "unpin"];

/// The `kind` label of an API: pin, get, or unpin for anything that
/// releases pins (the unpin entry points, and `gup_put_folio` for releases
/// no hooked unpin covers); `None` for the slow-path marker hook.
fn kind_index(kind: ApiKind) -> Option<usize> {
    match kind {
        ApiKind::Pin => Some(0),
        ApiKind::Get => Some(1),
        ApiKind::Unpin | ApiKind::Undo => Some(2),
        ApiKind::SlowPath | ApiKind::I915 => None,
    }
}

fn kind_label(kind: ApiKind) -> Option<&'static str> {
    kind_index(kind).map(|i| KINDS[i])
}

fn row_kind(row: &Row) -> Option<usize> {
    Api::from_symbol(row.api).and_then(|a| kind_index(a.kind()))
}

/// The top-N selection of `gupwatch_process_pages_total`, kept across
/// scrapes so that the `other` series stays a true counter.
///
/// The top N names are re-ranked every scrape by cumulative pinned pages
/// (then all pages, then name). Membership can change; a stateless "sum of
/// the rest" would then drop whenever a name is promoted, which `rate()`
/// reads as a counter reset (a huge false spike). Instead `other` only ever
/// adds the pages that processes outside the top N gained since the last
/// scrape, so it never decreases and its rate is the rate of the rest.
/// A process really named `other` is always folded into `other`.
#[derive(Debug, Default)]
pub struct TopProcesses {
    last: HashMap<String, [u64; 3]>,
    other: [u64; 3],
}

impl TopProcesses {
    /// The series for this scrape: the top `n` names (every kind), then
    /// `other` (every kind).
    pub fn update(&mut self, rows: &[Row], n: usize) -> Vec<ProcessSeries> {
        let mut by_comm: HashMap<&str, [u64; 3]> = HashMap::new();
        for r in rows {
            if let Some(k) = row_kind(r) {
                let e = by_comm.entry(r.comm.as_str()).or_default();
                e[k] = e[k].wrapping_add(r.pages);
            }
        }
        let mut ranked: Vec<(&str, [u64; 3])> =
            by_comm.iter().filter(|(c, _)| **c != OTHER_COMM).map(|(c, v)| (*c, *v)).collect();
        ranked.sort_by(|a, b| {
            let total = |v: &[u64; 3]| v.iter().fold(0u64, |s, x| s.saturating_add(*x));
            b.1[0].cmp(&a.1[0]).then(total(&b.1).cmp(&total(&a.1))).then(a.0.cmp(b.0))
        });
        ranked.truncate(n);
        let kept: std::collections::HashSet<&str> = ranked.iter().map(|(c, _)| *c).collect();
        for (comm, now) in &by_comm {
            if kept.contains(comm) {
                continue;
            }
            let before = self.last.get(*comm).copied().unwrap_or_default();
            for k in 0..3 {
                self.other[k] = self.other[k].wrapping_add(now[k].saturating_sub(before[k]));
            }
        }
        self.last = by_comm.iter().map(|(c, v)| (c.to_string(), *v)).collect();
        let mut out = Vec::with_capacity(3 * (ranked.len() + 1));
        for (comm, v) in &ranked {
            for (kind, pages) in KINDS.iter().zip(v) {
                out.push(ProcessSeries { comm: comm.to_string(), kind, pages: *pages });
            }
        }
        for (kind, pages) in KINDS.iter().zip(self.other) {
            out.push(ProcessSeries { comm: OTHER_COMM.into(), kind, pages });
        }
        out
    }
}

/// Failures to read a data source, by source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadErrors {
    /// Reading the BPF maps failed.
    pub maps: u64,
    /// Reading `/proc/vmstat` failed.
    pub vmstat: u64,
}

/// Everything one scrape renders, as plain data.
#[derive(Clone, Debug)]
pub struct ScrapeData {
    /// gupwatch's version.
    pub version: String,
    /// The probe plan, as loaded.
    pub plan: PlanSummary,
    /// The in-kernel counters; `None` in the reduced mode (no probes).
    pub snapshot: Option<Snapshot>,
    /// The kernel's own FOLL_PIN counters, if readable.
    pub vmstat: Option<FollPinCounters>,
    /// Resolved attribution rows.
    pub rows: Vec<Row>,
    /// The per-process series (see [`TopProcesses`]).
    pub processes: Vec<ProcessSeries>,
    /// Time taken to gather this data (map reads, vmstat, symbolization).
    pub scrape_duration: Duration,
    /// Read failures since start.
    pub read_errors: ReadErrors,
    /// Leak signals; `None` without probes.
    pub leaks: Option<LeakMetrics>,
    /// Per attached hook's function, the calls the kernel ran without
    /// gupwatch's program ([`crate::loader::Probes::probe_misses`]).
    pub probe_misses: Vec<(&'static str, u64)>,
    /// Pinned memory as the kernel accounts it per process (reduced mode
    /// only: with probes the traced view says more, and the /proc walk
    /// is not free).
    pub accounted: Option<Arc<Accounted>>,
    /// Holders with their own `gupwatch_accounted_*` series
    /// ([`Settings::top_processes`]).
    pub top_processes: usize,
    /// Per module hook's function and reason, the times it was found dead
    /// ([`crate::loader::Probes::probe_detached`]).
    pub probe_detached: Vec<(&'static str, &'static str, u64)>,
}

impl ScrapeData {
    /// Assembles scrape data from its parts, updating the top-N state.
    pub fn new(
        plan: PlanSummary,
        snapshot: Option<Snapshot>,
        vmstat: Option<FollPinCounters>,
        rows: Vec<Row>,
        top: &mut TopProcesses,
        settings: Settings,
    ) -> ScrapeData {
        let processes = if snapshot.is_some() { top.update(&rows, settings.top_processes) } else { vec![] };
        ScrapeData {
            version: env!("CARGO_PKG_VERSION").to_string(),
            plan,
            snapshot,
            vmstat,
            rows,
            processes,
            scrape_duration: Duration::ZERO,
            read_errors: ReadErrors::default(),
            leaks: None,
            probe_misses: Vec::new(),
            accounted: None,
            top_processes: settings.top_processes,
            probe_detached: Vec::new(),
        }
    }

    /// How many holders get per-process accounted series.
    fn processes_limit(&self) -> usize {
        self.top_processes
    }
    /// The pin/get/unpin APIs whose hooks are attached, in [`Api`] order.
    fn counted_apis(&self) -> Vec<(Api, &'static str)> {
        self.plan
            .hooks
            .iter()
            .filter(|h| h.attached)
            .filter_map(|h| kind_label(h.api.kind()).map(|k| (h.api, k)))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Rendering

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiKindLabels {
    api: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabels {
    api: &'static str,
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubsystemLabels {
    subsystem: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    pid: String,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    module: &'static str,
    subsystem: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    comm: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakLabels {
    kind: &'static str,
}

/// Leak signals in metric form, from the pin tracking map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeakMetrics {
    /// Pins gupwatch tracks as outstanding.
    pub tracked_outstanding: u64,
    /// Pins the tracking map could not record.
    pub untracked: u64,
    /// Per signal kind: (signals, pages).
    pub by_kind: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

impl LeakMetrics {
    /// Summarises a leak report.
    pub fn from_report(r: &LeakReport) -> LeakMetrics {
        let mut by_kind: std::collections::BTreeMap<&'static str, (u64, u64)> = [
            leaks::LeakKind::LongHeld,
            leaks::LeakKind::Orphaned,
            leaks::LeakKind::Unbalanced,
            leaks::LeakKind::Growth,
        ]
        .iter()
        .map(|k| (k.as_str(), (0, 0)))
        .collect();
        for l in &r.leaks {
            let e = by_kind.entry(l.kind.as_str()).or_default();
            e.0 += 1;
            e.1 += l.pages;
        }
        LeakMetrics { tracked_outstanding: r.tracked_outstanding, untracked: r.untracked_pins, by_kind }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    function: &'static str,
    mechanism: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetachLabels {
    function: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    kernel: String,
}

/// A classic histogram with precomputed (non-cumulative) buckets.
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The latency histogram of one API in seconds: bucket `i` of the kernel's
/// log2 nanosecond histogram holds `2^i <= d < 2^(i+1)` ns, so its upper
/// bound is `2^(i+1)` ns; the last bucket also takes everything longer, so
/// its bound is `+Inf`.
fn latency_histogram(s: &ApiStats) -> ConstHistogram {
    // The encoder sums the buckets into cumulative counts. Counts whose sum
    // passes u64::MAX (only from wrapped or corrupt counters) saturate
    // there: unchecked, the sum overflowed (a panic in debug builds, a
    // decreasing cumulative bucket in release; found by the
    // metrics_exposition fuzz target).
    let mut total = 0u64;
    let buckets = s
        .latency_log2
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let le = if i + 1 == LATENCY_BUCKETS { f64::INFINITY } else { (1u64 << (i + 1)) as f64 / 1e9 };
            let n = (*n).min(u64::MAX - total);
            total += n;
            (le, n)
        })
        .collect();
    ConstHistogram { sum: s.latency_ns_sum as f64 / 1e9, count: total, buckets }
}

fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<V>,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    match value {
        Some(v) => ConstGauge::new(v).encode(m),
        None => Ok(()),
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: Option<u64>) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    match value {
        Some(v) => ConstCounter::new(v).encode(m),
        None => Ok(()),
    }
}

/// The registry's view of one [`ScrapeData`].
#[derive(Debug)]
struct Exposition(Arc<ScrapeData>);

impl PromCollector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let d = &*self.0;
        let apis = d.counted_apis();
        let snap = d.snapshot.as_ref();
        // Per-API samples exist only with probes; families are always listed.
        let per_api = |f: &dyn Fn(Api, &ApiStats) -> Option<u64>| -> Vec<(ApiLabels, u64)> {
            let Some(s) = snap else { return vec![] };
            apis.iter().filter_map(|(a, _)| f(*a, s.api(*a)).map(|v| (ApiLabels { api: a.symbol() }, v))).collect()
        };
        let pin_or_get = |a: Api| matches!(a.kind(), ApiKind::Pin | ApiKind::Get);

        // --- What the kernel's GUP functions did.
        let by_kind = |f: fn(&ApiStats) -> u64| -> Vec<(ApiKindLabels, u64)> {
            let Some(s) = snap else { return vec![] };
            apis.iter().map(|(a, k)| (ApiKindLabels { api: a.symbol(), kind: k }, f(s.api(*a)))).collect()
        };
        counters(
            &mut enc,
            "gupwatch_calls",
            "Calls to a hooked GUP function since gupwatch started (pin: takes FOLL_PIN pins; get: takes FOLL_GET references; unpin: releases pins, nested unpin calls excluded, gup_put_folio only for releases no hooked unpin covers).",
            by_kind(|s| s.calls),
        )?;
        counters(
            &mut enc,
            "gupwatch_pages",
            "Pages the calls returned (pin/get; folio pins for memfd_pin_folios) or released (unpin), since gupwatch started.",
            by_kind(|s| s.pages),
        )?;
        counters(
            &mut enc,
            "gupwatch_undone_pin_pages",
            "Pins a pin call took and released again before returning (e.g. before a FOLL_LONGTERM migration); nr_foll_pin_acquired and nr_foll_pin_released count them too.",
            per_api(&|a, s| (a.kind() == ApiKind::Pin).then_some(s.undone_pages)),
        )?;
        let errnos: Vec<(ErrnoLabels, u64)> = snap
            .map(|s| {
                s.errnos
                    .iter()
                    .filter_map(|((api, errno), n)| {
                        let api = Api::from_index(*api)?;
                        Some((ErrnoLabels { api: api.symbol(), errno: crate::errno::errno_name(*errno) }, *n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        counters(
            &mut enc,
            "gupwatch_failed_calls",
            "Pin/get calls that returned a negative errno, by API and errno name.",
            errnos,
        )?;
        counters(
            &mut enc,
            "gupwatch_short_calls",
            "Pin/get calls that returned fewer pages than asked for (but more than zero).",
            per_api(&|a, s| pin_or_get(a).then_some(s.short_calls)),
        )?;
        counters(
            &mut enc,
            "gupwatch_fast_path_pages",
            "Pages the lock-free fast walk of a *_fast API took.",
            per_api(&|a, s| a.has_fast_path().then_some(s.fast_pages)),
        )?;
        counters(
            &mut enc,
            "gupwatch_slow_path_pages",
            "Pages the slow path (mmap_lock held) took: every page of a non-fast API, and what a *_fast API's fast walk left over.",
            per_api(&|a, s| pin_or_get(a).then_some(s.slow_pages)),
        )?;
        counters(
            &mut enc,
            "gupwatch_fast_path_fallback_calls",
            "Calls of a *_fast API that fell back to the slow path.",
            per_api(&|a, s| a.has_fast_path().then_some(s.fell_back_calls)),
        )?;
        counters(
            &mut enc,
            "gupwatch_longterm_pages",
            "Pages pinned or referenced with FOLL_LONGTERM.",
            per_api(&|a, s| pin_or_get(a).then_some(s.longterm_pages)),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "gupwatch_call_duration",
                "Duration of hooked GUP calls that were timed (entry and exit both seen), from the kernel's log2 nanosecond histogram.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            if let Some(s) = snap {
                for (a, _) in &apis {
                    let labels = ApiLabels { api: a.symbol() };
                    latency_histogram(s.api(*a)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        // --- Who pinned.
        let mut subsystems: BTreeMap<(&'static str, usize), u64> = BTreeMap::new();
        for r in &d.rows {
            if let Some(k) = row_kind(r) {
                let e = subsystems.entry((r.caller.subsystem.as_str(), k)).or_default();
                *e = e.wrapping_add(r.pages);
            }
        }
        counters(
            &mut enc,
            "gupwatch_subsystem_pages",
            "Pages pinned, referenced or released, by the kernel subsystem found in the call stack.",
            subsystems.into_iter().map(|((subsystem, k), v)| (SubsystemLabels { subsystem, kind: KINDS[k] }, v)),
        )?;
        // Only modules of attribution's table get a series: the label's
        // values are that table's strings, so at most one series per row
        // and kind whatever modules a host loads.
        let mut modules: BTreeMap<(&'static str, &'static str, usize), u64> = BTreeMap::new();
        for r in &d.rows {
            let known = r.caller.module.as_deref().and_then(attribution::of_module);
            if let (Some(k), Some((module, _, _))) = (row_kind(r), known) {
                let e = modules.entry((module, r.caller.subsystem.as_str(), k)).or_default();
                *e = e.wrapping_add(r.pages);
            }
        }
        counters(
            &mut enc,
            "gupwatch_module_pages",
            "Pages pinned, referenced or released from call stacks through a known driver module (GPU, RDMA, VFIO; the table in attribution.rs), by module, the subsystem it gave, and kind.",
            modules.into_iter().map(|((module, subsystem, k), v)| (ModuleLabels { module, subsystem, kind: KINDS[k] }, v)),
        )?;
        counters(
            &mut enc,
            "gupwatch_process_pages",
            "Pages pinned, referenced or released, by process name (comm); only the top processes by pinned pages, the rest summed into comm other.",
            d.processes.iter().map(|p| (ProcessLabels { comm: p.comm.clone(), kind: p.kind }, p.pages)),
        )?;

        // --- Outstanding pins: gupwatch's view and the kernel's.
        let totals: Option<Totals> = snap.map(Snapshot::totals);
        gauge(
            &mut enc,
            "gupwatch_outstanding_pages",
            "FOLL_PIN pins taken minus pins released, as seen by gupwatch since it started.",
            None,
            // Wrapping: exact whenever the true difference fits an i64, and
            // no overflow panic on wrapped counters (metrics_exposition fuzz target).
            totals.map(|t| (t.pinned_pages as i64).wrapping_sub(t.unpinned_pages as i64)),
        )?;
        counter(
            &mut enc,
            "gupwatch_kernel_foll_pin_acquired",
            "The kernel's own count of FOLL_PIN pins taken since boot (/proc/vmstat nr_foll_pin_acquired).",
            d.vmstat.map(|v| v.acquired),
        )?;
        counter(
            &mut enc,
            "gupwatch_kernel_foll_pin_released",
            "The kernel's own count of FOLL_PIN pins released since boot (/proc/vmstat nr_foll_pin_released).",
            d.vmstat.map(|v| v.released),
        )?;
        gauge(
            &mut enc,
            "gupwatch_kernel_outstanding_pins",
            "Pins held right now according to the kernel (nr_foll_pin_acquired - nr_foll_pin_released).",
            None,
            d.vmstat.map(|v| v.outstanding()),
        )?;

        // --- Leaks, from the per-folio tracking map.
        if let Some(l) = &d.leaks {
            gauge(
                &mut enc,
                "gupwatch_tracked_outstanding_pins",
                "Pins gupwatch tracks as held right now (taken since it started; see untracked).",
                None,
                Some(l.tracked_outstanding as i64),
            )?;
            counter(
                &mut enc,
                "gupwatch_untracked_pins",
                "Pins the tracking map could not record (full): totals stay exact, the outstanding view is partial.",
                Some(l.untracked),
            )?;
            counter(
                &mut enc,
                "gupwatch_ledger_replaced_pins",
                "Pins that landed in a tracking record an unpin on another CPU removed at the same moment (it released the folio's last tracked pin), and were placed again in the folio's current record. Nothing is lost; a high rate means folios pinned and released concurrently by many CPUs.",
                snap.map(|s| s.diag.get(Diag::LedgerReplaced as usize).copied().unwrap_or(0)),
            )?;
            gauges(
                &mut enc,
                "gupwatch_leak_signals",
                "Leak signals right now, by kind: long_held, orphaned (owner exited), unbalanced (unpins of unseen pins, per call site), growth.",
                None,
                l.by_kind.iter().map(|(k, (n, _))| (LeakLabels { kind: k }, *n as i64)),
            )?;
            gauges(
                &mut enc,
                "gupwatch_leak_pages",
                "Pins covered by the leak signals of each kind.",
                None,
                l.by_kind.iter().map(|(k, (_, p))| (LeakLabels { kind: k }, *p as i64)),
            )?;
        }

        // --- Accounted pins (reduced mode): the kernel's per-process charges.
        accounted_families(&mut enc, d)?;

        // --- gupwatch's own health.
        gauges(
            &mut enc,
            "gupwatch_probe_attached",
            "1 if the hook on this kernel function is attached and counting, 0 if not (mechanism none: the kernel lacks the function).",
            None,
            d.plan.hooks.iter().map(|h| (ProbeLabels { function: h.function, mechanism: h.mechanism }, h.attached as i64)),
        )?;
        counters(
            &mut enc,
            "gupwatch_probe_misses",
            "Calls of this kernel function the kernel ran without one of gupwatch's programs: the BPF recursion guard skipped it (the same program, or for kprobes any kprobe program, was already running on that CPU), or a kprobe let the call through (a kretprobe out of instances). gupwatch_skipped_entries_total says which unpins were still counted. From the programs' recursion_misses (kernel 5.12+; kprobes 6.7+) and the kprobe links' missed count (6.7+).",
            d.probe_misses.iter().map(|(f, n)| (FunctionLabels { function: f }, *n)),
        )?;
        counters(
            &mut enc,
            "gupwatch_probe_detached",
            "Times a hook on a module function was found dead and detached, by reason: module_unloaded, module_reloaded (unloaded and loaded again between two looks), kernel_gone (the kernel lists its kprobe as [GONE] or not at all). A kprobe dies with the load of its module; gupwatch attaches the hook again when the module is back (gupwatch_probe_attached says when).",
            d.probe_detached.iter().map(|(f, r, n)| (DetachLabels { function: f, reason: r }, *n)),
        )?;
        counters(
            &mut enc,
            "gupwatch_skipped_entries",
            "Unpins whose entry program did not run (the kernel skipped it, see gupwatch_probe_misses_total, or the call began before gupwatch attached), by outcome: counted_at_release (the gup_put_folio calls, or the hooked unpin, inside them counted their releases, where the kernel counts them), counted_at_exit (their fexit counted the pages nothing inside them counted: a release the compiler inlined), uncounted (a kretprobe exit cannot read the arguments, and nothing inside counted: those pages are missing from the unpinned totals).",
            snap.map(|s| {
                [
                    (Diag::EntrySkipped, "counted_at_release"),
                    (Diag::CountedAtExit, "counted_at_exit"),
                    (Diag::UncountedAtExit, "uncounted"),
                ]
                    .iter()
                    .map(|(i, outcome)| (OutcomeLabels { outcome }, s.diag.get(*i as usize).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        )?;
        let maps: Vec<(MapLabels, u64, u64)> = snap
            .map(|s| {
                vec![
                    (MapLabels { map: "ATTRIB" }, s.attrib.len() as u64, u64::from(ATTRIB_CAPACITY)),
                    (MapLabels { map: "ERRNOS" }, s.errnos.len() as u64, u64::from(ERRNO_CAPACITY)),
                ]
            })
            .unwrap_or_default();
        gauges(
            &mut enc,
            "gupwatch_map_entries",
            "Entries in one of gupwatch's BPF hash maps; new keys are dropped once it is full.",
            None,
            maps.iter().map(|(l, n, _)| (l.clone(), *n)),
        )?;
        gauges(
            &mut enc,
            "gupwatch_map_capacity",
            "Capacity of one of gupwatch's BPF hash maps.",
            None,
            maps.iter().map(|(l, _, c)| (l.clone(), *c)),
        )?;
        const DROPS: [(Diag, &str); 4] = [
            (Diag::InflightFull, "inflight_full"),
            (Diag::ArgReadFailed, "arg_read_failed"),
            (Diag::AttribFull, "attrib_full"),
            (Diag::StackLost, "stack_lost"),
        ];
        counters(
            &mut enc,
            "gupwatch_events_dropped",
            "Events gupwatch's probes could not record in full (inflight_full: call not timed; arg_read_failed: argument unreadable; attrib_full: call not attributed; stack_lost: no call stack). Per-API totals still count the calls.",
            snap.map(|s| {
                DROPS
                    .iter()
                    .map(|(i, reason)| (ReasonLabels { reason }, s.diag.get(*i as usize).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        )?;
        counters(
            &mut enc,
            "gupwatch_read_errors",
            "Scrapes that could not read a data source (maps: gupwatch's BPF maps; vmstat: /proc/vmstat).",
            [
                (SourceLabels { source: "maps" }, d.read_errors.maps),
                (SourceLabels { source: "vmstat" }, d.read_errors.vmstat),
            ],
        )?;
        gauge(
            &mut enc,
            "gupwatch_scrape_duration",
            "Time this scrape took to gather its data (BPF map reads, /proc/vmstat, stack symbolization), before encoding.",
            Some(&Unit::Seconds),
            Some(d.scrape_duration.as_secs_f64()),
        )?;
        let build = enc.encode_descriptor(
            "gupwatch_build",
            "gupwatch's version and the kernel it runs on; always 1.",
            None,
            MetricType::Info,
        )?;
        Info::new(BuildLabels { version: d.version.clone(), kernel: d.plan.kernel.clone() }).encode(build)?;
        Ok(())
    }
}

/// The `gupwatch_accounted_*` families: per holder (pid and comm) for the
/// top [`Settings::top_processes`] holders only, so a host with thousands
/// of mlocking processes still has a bounded series count; the holder
/// count says how many there were. Samples only in the reduced mode.
fn accounted_families(enc: &mut DescriptorEncoder, d: &ScrapeData) -> fmt::Result {
    let top = d.accounted.as_deref().map_or(&[][..], |a| &a.holders[..a.holders.len().min(d.processes_limit())]);
    let per = |f: fn(&crate::accounted::Holder) -> u64| {
        top.iter().map(move |h| (HolderLabels { pid: h.pid.to_string(), comm: h.comm.clone() }, f(h)))
    };
    gauges(
        enc,
        "gupwatch_accounted_pinned",
        "Pinned memory the kernel accounts to a process: the larger of VmPin (/proc/PID/status: io_uring buffers, RDMA registrations...) and its io_uring registered buffers (fdinfo), whole pages; accounted, not traced; reduced mode, top holders only.",
        Some(&Unit::Bytes),
        per(|h| h.pinned_bytes),
    )?;
    gauges(
        enc,
        "gupwatch_accounted_locked",
        "Locked memory the kernel charges to a process (VmLck: mlock, VFIO type1 mappings), for the same holders.",
        Some(&Unit::Bytes),
        per(|h| h.locked_bytes),
    )?;
    gauges(
        enc,
        "gupwatch_accounted_io_uring_buffer",
        "Bytes of io_uring registered buffers (from /proc/PID/fdinfo of its io_uring descriptors), for the same holders.",
        Some(&Unit::Bytes),
        per(|h| h.io_uring_bytes),
    )?;
    gauge(
        enc,
        "gupwatch_accounted_holders",
        "Processes with non-zero VmPin, VmLck or io_uring buffers (all of them, not only the top holders).",
        None,
        d.accounted.as_deref().map(|a| a.holders.len() as i64),
    )
}

/// Renders scrape data in the given format.
pub fn render(data: &Arc<ScrapeData>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(Arc::clone(data))));
    let mut out = String::with_capacity(64 * 1024);
    let r = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
    };
    // Writing into a String cannot fail, and every value we hand the
    // encoder is well-formed.
    r.expect("encoding metrics into a String");
    out
}

// ---------------------------------------------------------------------------
// JSON snapshot (for /api/snapshot)

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

/// The JSON document of `/api/snapshot`: totals, per-API counters, the top
/// processes (by pid; JSON has no cardinality limit), subsystems and the
/// plan. `top` bounds the process list.
pub fn snapshot_json(d: &ScrapeData, top: usize) -> serde_json::Value {
    let snap = d.snapshot.as_ref();
    let apis = snap
        .map(|s| {
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
        })
        .unwrap_or_default();
    let errnos = snap
        .map(|s| {
            s.errnos
                .iter()
                .filter_map(|((api, errno), n)| {
                    Some(ErrnoJson {
                        api: Api::from_index(*api)?.symbol(),
                        errno: *errno,
                        name: crate::errno::errno_name(*errno),
                        calls: *n,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut procs: BTreeMap<(u32, &str), ProcessJson> = BTreeMap::new();
    for r in &d.rows {
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
        scrape_duration_seconds: d.scrape_duration.as_secs_f64(),
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
    /// The driver module of the stack ([`Caller::module`]), or null.
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
pub fn callers_json(d: &ScrapeData, limit: usize) -> (serde_json::Value, bool) {
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

// ---------------------------------------------------------------------------
// The live collector

/// The leak report is made at most this often; scrapes in between reuse
/// it (ages in it are then up to this much older).
pub const LEAK_REPORT_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Accounted pins are read at most this often; scrapes in between reuse
/// the reading.
pub const ACCOUNTED_MIN_INTERVAL: Duration = Duration::from_millis(900);

/// Reads the live data sources at scrape time.
///
/// Holds the [`Probes`] (dropping the collector detaches them), kallsyms
/// (read once), a cache of resolved kernel stacks (stack ids are never
/// reused: the stack map is filled without `BPF_F_REUSE_STACKID`), and the
/// top-N process state.
pub struct Collector {
    probes: Option<Probes>,
    plan: PlanSummary,
    settings: Settings,
    kallsyms: Kallsyms,
    stacks: HashMap<i64, Vec<u64>>,
    top: TopProcesses,
    read_errors: ReadErrors,
    vmstat_refresh: bool,
    leak_policy: LeakPolicy,
    growth: GrowthTracker,
    last_leak_report: Option<LeakReport>,
    /// When `last_leak_report` was made.
    last_leak_at: Option<std::time::Instant>,
    /// The last accounted-pins reading and when it was made.
    accounted: Option<(Instant, Arc<Accounted>)>,
    /// Where accounted pins are read (`/proc`).
    proc_root: std::path::PathBuf,
}

impl Collector {
    /// A collector over loaded probes, or over none (the reduced mode:
    /// vmstat and the unattached plan only). `plan` is the plan as the
    /// loader left it (or the resolved plan when loading failed).
    pub fn new(probes: Option<Probes>, plan: &ProbePlan, settings: Settings) -> Collector {
        let plan = match &probes {
            Some(p) => PlanSummary::from_plan(&p.plan),
            None => PlanSummary::from_plan(plan),
        };
        let kallsyms = if probes.is_some() {
            Kallsyms::from_proc().unwrap_or_else(|e| {
                eprintln!("gupwatch: {e}; callers and subsystems will show as unknown/other");
                Kallsyms::default()
            })
        } else {
            Kallsyms::default()
        };
        Collector {
            probes,
            plan,
            settings,
            kallsyms,
            stacks: HashMap::new(),
            top: TopProcesses::default(),
            read_errors: ReadErrors::default(),
            vmstat_refresh: true,
            leak_policy: LeakPolicy::default(),
            growth: GrowthTracker::default(),
            last_leak_report: None,
            last_leak_at: None,
            accounted: None,
            proc_root: std::path::PathBuf::from("/proc"),
        }
    }

    /// Replaces the settings (a configuration reload); the next scrape
    /// uses them.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The thresholds [`Collector::leak_report`] applies.
    pub fn leak_policy(&self) -> &LeakPolicy {
        &self.leak_policy
    }

    /// The leak report of the last [`Collector::gather`] (`None` without
    /// probes).
    pub fn last_leak_report(&self) -> Option<&LeakReport> {
        self.last_leak_report.as_ref()
    }

    /// Replaces the leak thresholds (a configuration reload).
    pub fn set_leak_policy(&mut self, policy: LeakPolicy) {
        self.leak_policy = policy;
    }

    /// Outstanding pins and leak signals from the pin tracking map, with
    /// the kernel's total and the untracked count taken from `data` (a
    /// [`Collector::gather`] result). `None` without probes. Reads one map
    /// entry per tracked folio, so call it every few seconds, not per frame.
    pub fn leak_report(&mut self, data: &ScrapeData) -> Option<LeakReport> {
        let p = self.probes.as_ref()?;
        let tracking = p.maps.tracking();
        let stacks = &mut self.stacks;
        let kallsyms = &self.kallsyms;
        let names: std::cell::RefCell<HashMap<i64, Caller>> = Default::default();
        let caller = |id: i64| {
            if let Some(c) = names.borrow().get(&id) {
                return c.clone();
            }
            let ips = if id < 0 {
                vec![]
            } else if let Some(ips) = stacks.get(&id) {
                ips.clone()
            } else {
                p.maps.stack(id).unwrap_or_default()
            };
            let c = attribution::caller_of(&ips, kallsyms);
            names.borrow_mut().insert(id, c.clone());
            c
        };
        let untracked = data.snapshot.as_ref().map_or(0, |s| s.diag[Diag::PinsUntracked as usize]);
        Some(leaks::analyze(
            &tracking,
            &leaks::Context {
                now_ns: leaks::monotonic_ns(),
                since_ns: 0,
                caller: &caller,
                site: &|ip| attribution::caller_of(&[ip], kallsyms),
                alive: &leaks::process_alive,
                kernel_outstanding: data.vmstat.map(|v| v.outstanding()),
                untracked_pins: untracked,
            },
            &self.leak_policy,
            Some(&mut self.growth),
        ))
    }

    /// The plan summary.
    pub fn plan(&self) -> &PlanSummary {
        &self.plan
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether probes are loaded (false in the reduced mode).
    pub fn has_probes(&self) -> bool {
        self.probes.is_some()
    }

    /// Whether a hook waits for its module (i915 not loaded yet); see
    /// [`Probes::late_attach_pending`].
    pub fn late_attach_pending(&self) -> bool {
        self.probes.as_ref().is_some_and(Probes::late_attach_pending)
    }

    /// Whether any hook lives on a module ([`Probes::follows_modules`]).
    pub fn follows_modules(&self) -> bool {
        self.probes.as_ref().is_some_and(Probes::follows_modules)
    }

    /// Detaches the hooks whose module went away, attaches those whose
    /// module is (back) in, and refreshes the plan the metrics and
    /// `/api/snapshot` show; see [`Probes::follow_modules`].
    pub fn follow_modules(&mut self) -> crate::loader::ModuleEvents {
        let Some(p) = self.probes.as_mut() else { return Default::default() };
        let mut ev = p.follow_modules();
        if ev.is_empty() {
            return ev;
        }
        self.plan = PlanSummary::from_plan(&p.plan);
        // The module's functions, for naming call sites: the table the
        // attach read. Only when the addresses are readable: after the
        // capability drop they may read as zero, and the old table is
        // better than none.
        if let Some(k) = ev.kallsyms.take().filter(|k| !ev.attached.is_empty() && k.has_addresses()) {
            self.kallsyms = k;
        }
        ev
    }

    /// Reads every source now.
    pub fn gather(&mut self) -> Arc<ScrapeData> {
        let t0 = Instant::now();
        let snapshot = match &self.probes {
            Some(p) => match p.maps.snapshot() {
                Ok(s) => Some(s),
                Err(e) => {
                    if self.read_errors.maps == 0 {
                        eprintln!("gupwatch: scrape: {e}");
                    }
                    self.read_errors.maps += 1;
                    None
                }
            },
            None => None,
        };
        let vmstat = self.read_vmstat();
        let rows = match (&snapshot, &self.probes) {
            (Some(s), Some(p)) => {
                let stacks = &mut self.stacks;
                attribution::resolve(&s.attrib, &self.kallsyms, |id| {
                    if let Some(ips) = stacks.get(&id) {
                        return Some(ips.clone());
                    }
                    let ips = p.maps.stack(id)?;
                    stacks.insert(id, ips.clone());
                    Some(ips)
                })
            }
            _ => vec![],
        };
        let mut data = ScrapeData::new(self.plan.clone(), snapshot, vmstat, rows, &mut self.top, self.settings);
        data.read_errors = self.read_errors;
        data.probe_misses = self
            .probes
            .as_ref()
            .map(|p| p.probe_misses().into_iter().map(|(a, n)| (a.symbol(), n)).collect())
            .unwrap_or_default();
        data.probe_detached = self.probes.as_ref().map(Probes::probe_detached).unwrap_or_default();
        // Kept whole for /api/snapshot?leaks=1 and the live view: a second
        // analysis would feed the growth tracker the same reading twice.
        // It reads the whole tracking map (a syscall per folio), so scrapes
        // closer together than LEAK_REPORT_MIN_INTERVAL share one.
        let fresh = self.last_leak_at.is_some_and(|t| t.elapsed() < LEAK_REPORT_MIN_INTERVAL);
        if !fresh {
            self.last_leak_report = self.leak_report(&data);
            self.last_leak_at = Some(std::time::Instant::now());
        }
        data.leaks = self.last_leak_report.as_ref().map(LeakMetrics::from_report);
        if self.probes.is_none() {
            data.accounted = Some(self.accounted());
        }
        data.scrape_duration = t0.elapsed();
        Arc::new(data)
    }

    /// The accounted pins, read again when the last reading is older than
    /// [`ACCOUNTED_MIN_INTERVAL`]: a walk of /proc per scrape would let a
    /// client flood (or many viewers) cost a /proc walk each.
    fn accounted(&mut self) -> Arc<Accounted> {
        match &self.accounted {
            Some((at, a)) if at.elapsed() < ACCOUNTED_MIN_INTERVAL => Arc::clone(a),
            _ => {
                let a = Arc::new(crate::accounted::scan(&self.proc_root));
                self.accounted = Some((Instant::now(), Arc::clone(&a)));
                a
            }
        }
    }

    /// Reads the accounted pins from another /proc (tests).
    pub fn set_proc_root(&mut self, root: std::path::PathBuf) {
        self.proc_root = root;
        self.accounted = None;
    }

    /// One scrape, rendered.
    pub fn scrape(&mut self, format: Format) -> String {
        render(&self.gather(), format)
    }

    fn read_vmstat(&mut self) -> Option<FollPinCounters> {
        if self.vmstat_refresh {
            match vmstat::read(true) {
                Ok(c) => return Some(c),
                Err(e) if e.is_refresh_failure() => {
                    eprintln!("gupwatch: {e}");
                    self.vmstat_refresh = false;
                }
                Err(e) => return self.vmstat_failed(e),
            }
        }
        match vmstat::read(false) {
            Ok(c) => Some(c),
            Err(e) => self.vmstat_failed(e),
        }
    }

    fn vmstat_failed(&mut self, e: vmstat::VmstatError) -> Option<FollPinCounters> {
        if self.read_errors.vmstat == 0 {
            eprintln!("gupwatch: scrape: {e}");
        }
        self.read_errors.vmstat += 1;
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attribution::{Caller, Subsystem};
    use gup_common::{AttribKey, AttribValue};

    pub(crate) fn hook(api: Api, attached: bool, mechanism: &'static str) -> HookHealth {
        HookHealth {
            api,
            function: api.symbol(),
            kind: match api.kind() {
                ApiKind::Pin => "pin",
                ApiKind::Get => "get",
                ApiKind::Unpin => "unpin",
                ApiKind::SlowPath => "slow-path",
                ApiKind::Undo => "release",
                ApiKind::I915 => "i915",
            },
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

    fn row(tgid: u32, comm: &str, api: Api, pages: u64, subsystem: Subsystem) -> Row {
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

    fn with_module(mut r: Row, module: &str) -> Row {
        r.caller.module = Some(module.into());
        r
    }

    /// A busy snapshot touching every family.
    pub(crate) fn sample() -> Arc<ScrapeData> {
        let mut s = Snapshot::default();
        let fast = &mut s.apis[Api::PinUserPagesFast as usize];
        fast.calls = 10;
        fast.pages = 5120;
        fast.undone_pages = 16;
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
        let val = AttribValue {
            calls: 0,
            pages: 0,
            errors: 0,
            fast_pages: 0,
            slow_pages: 0,
            longterm_pages: 0,
            cgroup_id: 0,
            stack_id: 0,
            comm: [0; 16],
        };
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
        let mut d = ScrapeData::new(
            plan(),
            Some(s),
            Some(FollPinCounters { acquired: 1_000_000, released: 999_000 }),
            rows,
            &mut top,
            Settings::default(),
        );
        d.scrape_duration = Duration::from_micros(1500);
        d.read_errors.vmstat = 2;
        let mut leaks = LeakMetrics { tracked_outstanding: 768, untracked: 3, ..Default::default() };
        leaks.by_kind.insert("long_held", (1, 256));
        leaks.by_kind.insert("orphaned", (2, 512));
        d.leaks = Some(leaks);
        d.probe_misses = vec![("pin_user_pages_fast", 0), ("unpin_user_folio", 3)];
        d.probe_detached = vec![("i915_gem_userptr_ioctl", "module_unloaded", 2), ("i915_gem_userptr_ioctl", "kernel_gone", 0)];
        Arc::new(d)
    }

    /// The sample lines of a family (exact name match before `{` or ` `).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
            .collect()
    }

    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"));
        line[series.len() + 1..].trim().parse().unwrap()
    }

    #[test]
    fn families_have_help_type_and_prefix() {
        let text = render(&sample(), Format::Prometheus);
        for (name, ty) in [
            ("gupwatch_calls_total", "counter"),
            ("gupwatch_pages_total", "counter"),
            ("gupwatch_undone_pin_pages_total", "counter"),
            ("gupwatch_failed_calls_total", "counter"),
            ("gupwatch_short_calls_total", "counter"),
            ("gupwatch_fast_path_pages_total", "counter"),
            ("gupwatch_slow_path_pages_total", "counter"),
            ("gupwatch_fast_path_fallback_calls_total", "counter"),
            ("gupwatch_longterm_pages_total", "counter"),
            ("gupwatch_call_duration_seconds", "histogram"),
            ("gupwatch_subsystem_pages_total", "counter"),
            ("gupwatch_module_pages_total", "counter"),
            ("gupwatch_process_pages_total", "counter"),
            ("gupwatch_outstanding_pages", "gauge"),
            ("gupwatch_kernel_foll_pin_acquired_total", "counter"),
            ("gupwatch_kernel_foll_pin_released_total", "counter"),
            ("gupwatch_kernel_outstanding_pins", "gauge"),
            ("gupwatch_tracked_outstanding_pins", "gauge"),
            ("gupwatch_untracked_pins_total", "counter"),
            ("gupwatch_leak_signals", "gauge"),
            ("gupwatch_leak_pages", "gauge"),
            ("gupwatch_probe_attached", "gauge"),
            ("gupwatch_map_entries", "gauge"),
            ("gupwatch_map_capacity", "gauge"),
            ("gupwatch_events_dropped_total", "counter"),
            ("gupwatch_probe_misses_total", "counter"),
            ("gupwatch_probe_detached_total", "counter"),
            ("gupwatch_skipped_entries_total", "counter"),
            ("gupwatch_read_errors_total", "counter"),
            ("gupwatch_scrape_duration_seconds", "gauge"),
            ("gupwatch_build_info", "gauge"),
        ] {
            assert!(text.contains(&format!("\n# TYPE {name} {ty}\n")), "{name} {ty} missing:\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("gupwatch_"), "unprefixed: {l}");
        }
    }

    #[test]
    fn probe_misses_are_counted_per_function_from_zero() {
        let text = render(&sample(), Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_probe_misses_total{function="unpin_user_folio"}"#), 3.0);
        assert_eq!(value(&text, r#"gupwatch_probe_misses_total{function="pin_user_pages_fast"}"#), 0.0);
        assert_eq!(samples(&text, "gupwatch_probe_misses_total").len(), 2);
        assert_eq!(value(&text, r#"gupwatch_skipped_entries_total{outcome="counted_at_release"}"#), 256.0);
    }

    #[test]
    fn module_hooks_found_dead_are_counted_by_reason() {
        let text = render(&sample(), Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_probe_detached_total{function="i915_gem_userptr_ioctl",reason="module_unloaded"}"#), 2.0);
        assert_eq!(value(&text, r#"gupwatch_probe_detached_total{function="i915_gem_userptr_ioctl",reason="kernel_gone"}"#), 0.0);
        assert_eq!(samples(&text, "gupwatch_probe_detached_total").len(), 2);
    }

    #[test]
    fn per_api_values_and_labels() {
        let text = render(&sample(), Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_calls_total{api="pin_user_pages_fast",kind="pin"}"#), 10.0);
        assert_eq!(value(&text, r#"gupwatch_pages_total{api="pin_user_pages_fast",kind="pin"}"#), 5120.0);
        assert_eq!(value(&text, r#"gupwatch_pages_total{api="unpin_user_pages",kind="unpin"}"#), 5000.0);
        assert_eq!(value(&text, r#"gupwatch_calls_total{api="get_user_pages_fast",kind="get"}"#), 7.0);
        assert_eq!(value(&text, r#"gupwatch_undone_pin_pages_total{api="pin_user_pages_fast"}"#), 16.0);
        assert_eq!(value(&text, r#"gupwatch_failed_calls_total{api="pin_user_pages_fast",errno="EFAULT"}"#), 3.0);
        assert_eq!(value(&text, r#"gupwatch_failed_calls_total{api="pin_user_pages_remote",errno="errno999"}"#), 1.0);
        assert_eq!(value(&text, r#"gupwatch_short_calls_total{api="pin_user_pages_fast"}"#), 1.0);
        assert_eq!(value(&text, r#"gupwatch_fast_path_pages_total{api="pin_user_pages_fast"}"#), 4096.0);
        assert_eq!(value(&text, r#"gupwatch_fast_path_pages_total{api="get_user_pages_fast"}"#), 70.0);
        assert_eq!(value(&text, r#"gupwatch_slow_path_pages_total{api="pin_user_pages_fast"}"#), 1024.0);
        assert_eq!(value(&text, r#"gupwatch_fast_path_fallback_calls_total{api="pin_user_pages_fast"}"#), 2.0);
        assert_eq!(value(&text, r#"gupwatch_longterm_pages_total{api="pin_user_pages_fast"}"#), 512.0);
        // The absent hook has no per-API series; the slow-path hook is no API.
        assert!(!text.contains(r#"api="pin_user_pages_fast_only""#));
        assert!(!text.contains(r#"api="__gup_longterm_locked""#));
        // Fast-path families only for *_fast APIs; unpin has none of these.
        assert!(samples(&text, "gupwatch_fast_path_pages_total").iter().all(|l| l.contains("_fast")));
        assert!(!samples(&text, "gupwatch_slow_path_pages_total").iter().any(|l| l.contains("unpin")));
        // Every attached GUP hook has a calls series; the slow-path marker
        // and the i915 lifecycle hooks are not GUP calls.
        let counted = Api::ALL
            .iter()
            .filter(|a| **a != Api::PinUserPagesFastOnly && !matches!(a.kind(), ApiKind::SlowPath | ApiKind::I915))
            .count();
        assert_eq!(samples(&text, "gupwatch_calls_total").len(), counted);
    }

    #[test]
    fn leak_signals_by_kind() {
        let text = render(&sample(), Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_leak_pages{kind="orphaned"}"#), 512.0);
        assert_eq!(value(&text, r#"gupwatch_leak_signals{kind="long_held"}"#), 1.0);
        assert_eq!(value(&text, "gupwatch_tracked_outstanding_pins"), 768.0);
        assert_eq!(value(&text, "gupwatch_untracked_pins_total"), 3.0);
        let report = LeakReport {
            tracked_outstanding: 5,
            kernel_outstanding: None,
            untracked_pins: 0,
            partial: false,
            holdings: vec![],
            leaks: vec![leaks::Leak {
                kind: leaks::LeakKind::Growth,
                pages: 9,
                owner_tgid: Some(1),
                comm: None,
                caller: "x".into(),
                subsystem: crate::attribution::Subsystem::Other,
                age_secs: None,
            }],
            notes: vec![],
            i915_objects: vec![],
        };
        let m = LeakMetrics::from_report(&report);
        assert_eq!(m.by_kind.len(), 4, "every kind is always present");
        assert_eq!(m.by_kind["growth"], (1, 9));
        assert_eq!(m.by_kind["orphaned"], (0, 0));
    }

    #[test]
    fn latency_histogram_is_cumulative_in_seconds() {
        let text = render(&sample(), Format::Prometheus);
        let b = |le: &str| value(&text, &format!(r#"gupwatch_call_duration_seconds_bucket{{api="pin_user_pages_fast",le="{le}"}}"#));
        // Bucket 0's bound is 2 ns; bucket 10 (1024..2048 ns) ends at 2048 ns.
        assert_eq!(b("2e-09"), 0.0);
        assert_eq!(b("1.024e-06"), 0.0);
        assert_eq!(b("2.048e-06"), 4.0);
        assert_eq!(b("8.192e-06"), 9.0);
        // The last log2 bucket is open-ended: it becomes +Inf, with no 2^40 ns bound.
        assert_eq!(b("+Inf"), 10.0);
        assert!(!text.contains(r#"le="1099.511627776""#), "{text}");
        let buckets = samples(&text, "gupwatch_call_duration_seconds_bucket");
        assert_eq!(buckets.iter().filter(|l| l.contains(r#"api="pin_user_pages_fast""#)).count(), LATENCY_BUCKETS);
        assert_eq!(value(&text, r#"gupwatch_call_duration_seconds_count{api="pin_user_pages_fast"}"#), 10.0);
        assert_eq!(value(&text, r#"gupwatch_call_duration_seconds_sum{api="pin_user_pages_fast"}"#), 0.003);
        let mut prev = 0.0;
        for l in buckets.iter().filter(|l| l.contains(r#"api="pin_user_pages_fast""#)) {
            let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(v >= prev, "not cumulative: {l}");
            prev = v;
        }
    }

    #[test]
    fn outstanding_kernel_and_self_metrics() {
        let text = render(&sample(), Format::Prometheus);
        // pinned (5120 + 16 undone) − unpinned 5000.
        assert_eq!(value(&text, "gupwatch_outstanding_pages"), 136.0);
        assert_eq!(value(&text, "gupwatch_kernel_foll_pin_acquired_total"), 1_000_000.0);
        assert_eq!(value(&text, "gupwatch_kernel_foll_pin_released_total"), 999_000.0);
        assert_eq!(value(&text, "gupwatch_kernel_outstanding_pins"), 1000.0);
        assert_eq!(value(&text, r#"gupwatch_probe_attached{function="pin_user_pages_fast",mechanism="fentry"}"#), 1.0);
        assert_eq!(value(&text, r#"gupwatch_probe_attached{function="memfd_pin_folios",mechanism="kprobe"}"#), 1.0);
        assert_eq!(value(&text, r#"gupwatch_probe_attached{function="pin_user_pages_fast_only",mechanism="none"}"#), 0.0);
        assert_eq!(samples(&text, "gupwatch_probe_attached").len(), gup_common::API_COUNT);
        assert_eq!(value(&text, r#"gupwatch_map_entries{map="ATTRIB"}"#), 3.0);
        assert_eq!(value(&text, r#"gupwatch_map_capacity{map="ATTRIB"}"#), f64::from(ATTRIB_CAPACITY));
        assert_eq!(value(&text, r#"gupwatch_map_entries{map="ERRNOS"}"#), 2.0);
        assert_eq!(value(&text, r#"gupwatch_events_dropped_total{reason="inflight_full"}"#), 1.0);
        assert_eq!(value(&text, r#"gupwatch_events_dropped_total{reason="arg_read_failed"}"#), 0.0);
        assert_eq!(value(&text, r#"gupwatch_events_dropped_total{reason="attrib_full"}"#), 0.0);
        assert_eq!(value(&text, r#"gupwatch_events_dropped_total{reason="stack_lost"}"#), 4.0);
        assert_eq!(value(&text, r#"gupwatch_read_errors_total{source="vmstat"}"#), 2.0);
        assert_eq!(value(&text, "gupwatch_scrape_duration_seconds"), 0.0015);
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(value(&text, &format!(r#"gupwatch_build_info{{version="{v}",kernel="6.12.0-test"}}"#)), 1.0);
    }

    #[test]
    fn subsystems_and_processes() {
        let text = render(&sample(), Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_subsystem_pages_total{subsystem="direct-io",kind="pin"}"#), 5120.0);
        assert_eq!(value(&text, r#"gupwatch_subsystem_pages_total{subsystem="direct-io",kind="unpin"}"#), 5000.0);
        assert_eq!(value(&text, r#"gupwatch_subsystem_pages_total{subsystem="vfio",kind="get"}"#), 70.0);
        assert_eq!(value(&text, r#"gupwatch_subsystem_pages_total{subsystem="gpu",kind="pin"}"#), 2048.0);
        assert_eq!(value(&text, r#"gupwatch_module_pages_total{module="nvidia",subsystem="gpu",kind="pin"}"#), 2048.0);
        assert_eq!(value(&text, r#"gupwatch_module_pages_total{module="nvidia",subsystem="gpu",kind="unpin"}"#), 2000.0);
        // A module outside attribution's table gets no series (bounded label).
        assert!(!text.contains("mydrv"), "{text}");
        let (callers, _) = callers_json(&sample(), MAX_JSON_CALLERS);
        let nv = callers.as_array().and_then(|a| a.iter().find(|c| c["comm"] == "cuda_app")).cloned().unwrap_or_default();
        assert_eq!((nv["module"].as_str(), nv["subsystem"].as_str()), (Some("nvidia"), Some("gpu")));
        // Two fio processes merge: no pid label.
        assert_eq!(value(&text, r#"gupwatch_process_pages_total{comm="fio",kind="pin"}"#), 5120.0);
        assert!(!text.contains("pid="), "{text}");
        assert!(!text.contains("tgid="), "{text}");
    }

    #[test]
    fn comm_label_values_are_escaped() {
        let text = render(&sample(), Format::Prometheus);
        // Quote, backslash and newline escaped; the sample stays on one line.
        assert_eq!(value(&text, r#"gupwatch_process_pages_total{comm="qemu \"vm\"\\1\nx",kind="get"}"#), 70.0);
        // Empty comm is a valid label value.
        assert_eq!(value(&text, r#"gupwatch_process_pages_total{comm="",kind="pin"}"#), 0.0);
        // Lossy UTF-8 replacement character and other control bytes pass through.
        assert_eq!(value(&text, "gupwatch_process_pages_total{comm=\"bad\u{fffd}utf8\t\r\",kind=\"pin\"}"), 1.0);
        let om = render(&sample(), Format::OpenMetrics);
        assert!(om.contains(r#"gupwatch_process_pages_total{comm="qemu \"vm\"\\1\nx",kind="get"} 70"#), "{om}");
    }

    #[test]
    fn top_n_keeps_other_monotonic() {
        let mut top = TopProcesses::default();
        let r = |comm: &str, pages| row(1, comm, Api::PinUserPagesFast, pages, Subsystem::Other);
        let value = |s: &[ProcessSeries], comm: &str| {
            s.iter().find(|p| p.comm == comm && p.kind == "pin").map(|p| p.pages)
        };
        // N = 1: "a" leads, "b" goes to other.
        let s = top.update(&[r("a", 10), r("b", 5)], 1);
        assert_eq!((value(&s, "a"), value(&s, "b"), value(&s, OTHER_COMM)), (Some(10), None, Some(5)));
        assert_eq!(s.len(), 6, "3 kinds for a and for other");
        // "b" overtakes "a": b is promoted with its full count, a is demoted;
        // other grows by what non-top processes gained (a: +1) and never drops.
        let s = top.update(&[r("a", 11), r("b", 20)], 1);
        assert_eq!((value(&s, "a"), value(&s, "b"), value(&s, OTHER_COMM)), (None, Some(20), Some(6)));
        let s = top.update(&[r("a", 11), r("b", 20), r("c", 3)], 1);
        assert_eq!(value(&s, OTHER_COMM), Some(9));
        // A process really named "other" folds into other.
        let s = top.update(&[r("a", 11), r("b", 20), r("c", 3), r(OTHER_COMM, 100)], 5);
        assert_eq!(s.iter().filter(|p| p.comm == OTHER_COMM && p.kind == "pin").count(), 1);
        assert_eq!(value(&s, OTHER_COMM), Some(109));
        // N = 0: everything in other.
        let mut top = TopProcesses::default();
        let s = top.update(&[r("a", 1), r("b", 2)], 0);
        assert_eq!(s.len(), 3);
        assert_eq!(value(&s, OTHER_COMM), Some(3));
    }

    #[test]
    fn top_n_limits_series() {
        let mut top = TopProcesses::default();
        let rows: Vec<Row> =
            (0..50).map(|i| row(i, &format!("p{i}"), Api::PinUserPagesFast, u64::from(i), Subsystem::Other)).collect();
        let s = top.update(&rows, 10);
        let comms: std::collections::BTreeSet<&str> = s.iter().map(|p| p.comm.as_str()).collect();
        assert_eq!(comms.len(), 11);
        assert!(comms.contains("p49") && comms.contains("p40") && !comms.contains("p39"));
        let other = s.iter().find(|p| p.comm == OTHER_COMM && p.kind == "pin").unwrap().pages;
        assert_eq!(other, (0..40).sum::<u64>());
    }

    #[test]
    fn reduced_mode_has_vmstat_and_probe_health_only() {
        let mut p = plan();
        for h in &mut p.hooks {
            h.attached = false;
        }
        let mut top = TopProcesses::default();
        let d = Arc::new(ScrapeData::new(
            p,
            None,
            Some(FollPinCounters { acquired: 7, released: 5 }),
            vec![],
            &mut top,
            Settings::default(),
        ));
        let text = render(&d, Format::Prometheus);
        assert!(samples(&text, "gupwatch_calls_total").is_empty());
        assert!(samples(&text, "gupwatch_outstanding_pages").is_empty());
        assert!(samples(&text, "gupwatch_process_pages_total").is_empty());
        assert_eq!(value(&text, "gupwatch_kernel_outstanding_pins"), 2.0);
        assert!(samples(&text, "gupwatch_probe_attached").iter().all(|l| l.ends_with(" 0")));
        promtool_check(&text);
    }

    /// Accounted holders: per pid and comm for the top N only, the holder
    /// count for all, in both formats.
    #[test]
    fn reduced_mode_names_the_accounted_holders() {
        use crate::accounted::{Accounted, Holder};
        let holder = |pid: u32, comm: &str, pinned: u64| Holder {
            pid,
            comm: comm.into(),
            pinned_bytes: pinned,
            pinned_pages: pinned / 4096,
            vm_pin_bytes: pinned,
            locked_bytes: 4096,
            io_uring_buffers: 1,
            io_uring_bytes: pinned,
            io_uring_pages: pinned / 4096,
        };
        let mut top = TopProcesses::default();
        let mut d = ScrapeData::new(plan(), None, None, vec![], &mut top, Settings { top_processes: 2 });
        d.accounted = Some(Arc::new(Accounted {
            source: crate::accounted::SOURCE.into(),
            holders: vec![holder(200, "aa-holder", 1 << 20), holder(7, "qemu \"vm\"", 8192), holder(9, "third", 4096)],
            processes: 50,
            fds: 0,
            unreadable: 0,
            truncated: false,
        }));
        let d = Arc::new(d);
        let text = render(&d, Format::Prometheus);
        assert_eq!(value(&text, r#"gupwatch_accounted_pinned_bytes{pid="200",comm="aa-holder"}"#), 1048576.0);
        assert_eq!(value(&text, r#"gupwatch_accounted_io_uring_buffer_bytes{pid="200",comm="aa-holder"}"#), 1048576.0);
        assert_eq!(value(&text, r#"gupwatch_accounted_locked_bytes{pid="7",comm="qemu \"vm\""}"#), 4096.0);
        assert_eq!(samples(&text, "gupwatch_accounted_pinned_bytes").len(), 2, "top 2 only:\n{text}");
        assert!(!text.contains("third"), "{text}");
        assert_eq!(value(&text, "gupwatch_accounted_holders"), 3.0);
        promtool_check(&text);
        assert!(render(&d, Format::OpenMetrics).contains("# UNIT gupwatch_accounted_pinned_bytes bytes"));
        let j = snapshot_json(&d, 10);
        assert_eq!((j["mode"].as_str(), j["accounted"]["source"].as_str()), (Some("reduced"), Some("accounted")));
        assert_eq!(j["accounted"]["holders"].as_array().map(Vec::len), Some(3), "JSON has every holder");
        // The live view reads the same document back.
        let s = crate::tui::sample::Sample::from_json(&j.to_string()).expect("parses");
        assert_eq!(s.accounted.as_ref().map(|a| a.holders[0].pid), Some(200));
        assert_eq!(crate::tui::sample::Sample::from_scrape(&d).accounted, s.accounted);
    }

    /// A reduced-mode collector reads /proc (here a fake one) and reuses
    /// the reading for scrapes closer than ACCOUNTED_MIN_INTERVAL.
    #[test]
    fn reduced_collector_reads_accounted_pins() {
        let root = std::env::temp_dir().join(format!("gupwatch-collector-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(root.join("42/status"), "Name:\tpinner\nVmLck:\t0 kB\nVmPin:\t64 kB\n").unwrap();
        let kallsyms = Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
        let plan = ProbePlan::resolve("6.1.0-test".into(), Err("no BTF".into()), &kallsyms);
        let mut c = Collector::new(None, &plan, Settings::default());
        c.set_proc_root(root.clone());
        let first = c.gather();
        std::fs::write(root.join("42/status"), "Name:\tpinner\nVmPin:\t128 kB\n").unwrap();
        let second = c.gather();
        let _ = std::fs::remove_dir_all(&root);
        let pinned = |d: &ScrapeData| d.accounted.as_ref().map(|a| a.holders.iter().map(|h| (h.pid, h.pinned_bytes)).collect::<Vec<_>>());
        assert_eq!(pinned(&first), Some(vec![(42, 64 << 10)]));
        assert_eq!(pinned(&second), pinned(&first), "reused within the interval");
    }

    #[test]
    fn openmetrics_format() {
        let om = render(&sample(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE gupwatch_calls counter\n"));
        assert!(om.contains("# TYPE gupwatch_call_duration_seconds histogram\n"));
        assert!(om.contains("# UNIT gupwatch_call_duration_seconds seconds\n"));
        assert!(om.contains("# TYPE gupwatch_build info\n"));
        assert!(om.contains(r#"gupwatch_calls_total{api="pin_user_pages_fast",kind="pin"} 10"#));
        assert!(om.contains(r#"gupwatch_call_duration_seconds_bucket{le="+Inf",api="pin_user_pages_fast"} 10"#));
        let prom = render(&sample(), Format::Prometheus);
        assert!(!prom.contains("# EOF"));
        // OpenMetrics HELP text may not hold bare quotes or backslashes, and
        // the encoder does not escape HELP: keep them out of the texts.
        for l in om.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(!l.contains(['"', '\\']), "{l}");
        }
    }

    #[test]
    fn accept_negotiation() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Prometheus);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; version=1.0.0; charset=utf-8")), OpenMetrics);
        // What Prometheus 2.x sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.2")), Prometheus);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Prometheus);
        assert_eq!(OpenMetrics.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
        assert_eq!(Prometheus.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    }

    #[test]
    fn json_snapshot() {
        let j = snapshot_json(&sample(), 10);
        assert_eq!(j["mode"], "full");
        assert_eq!(j["totals"]["pinned_pages"], 5136);
        assert_eq!(j["outstanding_pages"], 136);
        assert_eq!(j["kernel_counters"]["outstanding"], 1000);
        assert_eq!(j["top_processes"][0]["comm"], "fio");
        assert_eq!(j["top_processes"][0]["tgid"], 100);
        assert_eq!(j["top_processes"][0]["pinned_pages"], 4096);
        assert_eq!(j["events_dropped"]["stack_lost"], 4);
        assert!(j["apis"].as_array().unwrap().iter().any(|a| a["api"] == "pin_user_pages_fast" && a["calls"] == 10));
        assert_eq!(snapshot_json(&sample(), 1)["top_processes"].as_array().unwrap().len(), 1);
    }

    /// Runs `promtool check metrics` on an exposition; fails when promtool
    /// is missing (it is a declared dependency: `cargo xtask setup`).
    pub(crate) fn promtool_check(text: &str) {
        use std::io::Write;
        let mut child = match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "promtool is not installed ({e}): run `cargo xtask setup` (it installs Debian's prometheus package, which provides /usr/bin/promtool)"
            ),
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        promtool_check(&render(&sample(), Format::Prometheus));
    }
}
