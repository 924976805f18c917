//! The Prometheus / OpenMetrics exposition of a [`Reading`] (`/metrics`).
//!
//! Written through the official `prometheus-client` crate: a fresh registry
//! per scrape with one custom collector (`Exposition`) that writes every
//! family from the reading. The crate escapes label values and HELP text,
//! and writes both the OpenMetrics 1.0 text format and the Prometheus 0.0.4
//! text format ([`Format`]).
//!
//! Families that differ only in what they count are declared as data
//! (`API_FAMILIES`, the `DiagFamily` tables), in the spirit of
//! ebpf_exporter's metric configs; the rest are written by one function per
//! section of the exposition, in the order `docs/metrics.md` lists them.
//!
//! Conventions: every family is prefixed `gupwatch_`, counters end in
//! `_total`, durations are in seconds, and page counts are in pages (the
//! kernel's unit; there is no base unit for pages).
//!
//! Cardinality (the budget, at most 500 series a node at default settings,
//! is worked out in docs/fleet.md and pinned by a test): per-API families
//! have one series per hooked kernel function (at most 19, ×8 buckets for
//! the latency histogram); per-process families have no pid label and keep
//! only the top N process names (by pinned pages,
//! [`Settings::top_processes`]), the rest summed into `comm="other"`; failed
//! calls keep the top 10 (API, errno) pairs, the rest summed likewise.
//!
//! [`Settings::top_processes`]: crate::collect::Settings::top_processes

use std::{collections::BTreeMap, fmt, sync::Arc};

use gup_common::{Api, ApiKind, ApiStats, Diag, ATTRIB_CAPACITY, ERRNO_CAPACITY, LATENCY_BUCKETS};
use prometheus_client::{
    collector::Collector as PromCollector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::{Registry, Unit},
};

use gup_report::Totals;

use crate::{
    model::attribution,
    collect::{row_kind, Reading, KINDS},
    model::counters::Snapshot,
};

mod bpfprog;
mod cgroups;
mod hold;
#[cfg(test)]
pub(crate) mod tests;

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
struct RevertedLabels {
    api: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabels {
    api: &'static str,
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubsystemLabels {
    subsystem: &'static str,
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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakLabels {
    kind: &'static str,
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

/// Upper bounds of the exported latency buckets, as powers of two
/// nanoseconds (1.02 µs, 8.19 µs, 65.5 µs, 524 µs, 4.19 ms, 33.6 ms,
/// 268 ms), then `+Inf`: every third bound of the kernel's log2 histogram,
/// so each cumulative count is exact, and 8 buckets per API instead of
/// 40 keep a node under its series budget (docs/fleet.md). The full log2
/// histogram is in `/api/snapshot` and the live view.
const LATENCY_BOUNDS_LOG2: [u32; 7] = [10, 13, 16, 19, 22, 25, 28];

/// The latency histogram of one API in seconds: bucket `i` of the kernel's
/// log2 nanosecond histogram holds `2^i <= d < 2^(i+1)` ns, so it counts
/// under the first exported bound of at least `2^(i+1)` ns; the last
/// kernel bucket also takes everything longer, so only `+Inf` holds it.
fn latency_histogram(s: &ApiStats) -> ConstHistogram {
    // The encoder sums the buckets into cumulative counts. Counts whose sum
    // passes u64::MAX (only from wrapped or corrupt counters) saturate
    // there: unchecked, the sum overflowed (a panic in debug builds, a
    // decreasing cumulative bucket in release; found by the
    // metrics_exposition fuzz target).
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_LOG2
        .iter()
        .map(|b| ((1u64 << b) as f64 / 1e9, 0))
        .chain([(f64::INFINITY, 0)])
        .collect();
    let mut total = 0u64;
    for (i, n) in s.latency_log2.iter().enumerate() {
        let upper = i as u32 + 1;
        let slot = if i + 1 == LATENCY_BUCKETS {
            LATENCY_BOUNDS_LOG2.len()
        } else {
            LATENCY_BOUNDS_LOG2.iter().position(|b| upper <= *b).unwrap_or(LATENCY_BOUNDS_LOG2.len())
        };
        let n = (*n).min(u64::MAX - total);
        total += n;
        buckets[slot].1 += n;
    }
    ConstHistogram { sum: s.latency_ns_sum as f64 / 1e9, count: total, buckets }
}

impl ConstHistogram {
    /// A histogram of (upper bound, count in that bucket alone) pairs.
    ///
    /// The encoder sums the buckets into cumulative counts. Counts whose
    /// sum passes u64::MAX (only from wrapped or corrupt counters) saturate
    /// there: unchecked, the sum overflowed (a panic in debug builds, a
    /// decreasing cumulative bucket in release; found by the
    /// metrics_exposition fuzz target).
    fn new(sum: f64, buckets: impl IntoIterator<Item = (f64, u64)>) -> ConstHistogram {
        let mut total = 0u64;
        let buckets = buckets
            .into_iter()
            .map(|(le, n)| {
                let n = n.min(u64::MAX - total);
                total += n;
                (le, n)
            })
            .collect();
        ConstHistogram { sum, count: total, buckets }
    }
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


// ---------------------------------------------------------------------------
// The families, declared as data where they differ only in what they count.

/// Which series a family of the GUP-call section has, and their values.
enum ApiSeries {
    /// One per counted API, labelled `api` and `kind`: only for calls,
    /// where the sum over every kind (all hooked calls) still means
    /// something.
    ByKind(fn(&ApiStats) -> u64),
    /// One per counted API of one kind (a [`KINDS`] value), labelled `api`:
    /// acquired and released pages are separate families, so that summing
    /// a family over its labels never adds acquires to releases.
    OfKind(&'static str, fn(&ApiStats) -> u64),
    /// One per counted API the predicate admits, labelled `api`.
    PerApi(fn(Api) -> bool, fn(&ApiStats) -> u64),
    /// One per (API, errno) of the top [`ERRNO_SERIES`](crate::collect::ERRNO_SERIES), then the rest summed.
    ByErrno,
    /// One per (pin API, [`Reverted`](gup_common::Reverted) reason).
    ByReverted,
}

/// A counter family of what the GUP functions did.
struct ApiFamily {
    name: &'static str,
    help: &'static str,
    series: ApiSeries,
}

fn is_pin(a: Api) -> bool {
    a.kind() == ApiKind::Pin
}

fn is_pin_or_get(a: Api) -> bool {
    matches!(a.kind(), ApiKind::Pin | ApiKind::Get)
}

/// What the kernel's GUP functions did, in exposition order (the latency
/// histogram follows them).
const API_FAMILIES: [ApiFamily; 12] = [
    ApiFamily {
        name: "gupwatch_calls",
        help: "Calls to a hooked GUP function since gupwatch started (pin: takes FOLL_PIN pins; get: takes FOLL_GET references; unpin: releases pins, nested unpin calls excluded, gup_put_folio only for releases no hooked unpin covers).",
        series: ApiSeries::ByKind(|s| s.calls),
    },
    ApiFamily {
        name: "gupwatch_pinned_pages",
        help: "FOLL_PIN pins the pin calls took and kept (pages; folio pins for memfd_pin_folios), since gupwatch started; pins undone inside the call are in gupwatch_undone_pin_pages_total.",
        series: ApiSeries::OfKind("pin", |s| s.pages),
    },
    ApiFamily {
        name: "gupwatch_referenced_pages",
        help: "FOLL_GET page references the get calls took, since gupwatch started.",
        series: ApiSeries::OfKind("get", |s| s.pages),
    },
    ApiFamily {
        name: "gupwatch_unpinned_pages",
        help: "FOLL_PIN pins released, by the hooked release function that counted them (nested unpin calls excluded, gup_put_folio only for releases no hooked unpin covers), since gupwatch started.",
        series: ApiSeries::OfKind("unpin", |s| s.pages),
    },
    ApiFamily {
        name: "gupwatch_undone_pin_pages",
        help: "Pins a pin call took and released again before returning (e.g. before a FOLL_LONGTERM migration); nr_foll_pin_acquired and nr_foll_pin_released count them too.",
        series: ApiSeries::PerApi(is_pin, |s| s.undone_pages),
    },
    ApiFamily {
        name: "gupwatch_reverted_pin_pages",
        help: "gupwatch_undone_pin_pages_total by reason: fast_walk (the lock-free walk let go of a page it had grabbed: a LONGTERM pin refused on a dirty-tracked file mapping, an entry that changed under it, a page to unshare), migration (released after the slow path started in a FOLL_LONGTERM call: pages on movable or CMA memory migrated before the retry), slow_path (released by the slow path of a call without FOLL_LONGTERM).",
        series: ApiSeries::ByReverted,
    },
    ApiFamily {
        name: "gupwatch_failed_calls",
        help: "Pin/get calls that returned a negative errno, by API and errno name; the 10 pairs with the most calls, the rest summed into api and errno other.",
        series: ApiSeries::ByErrno,
    },
    ApiFamily {
        name: "gupwatch_short_calls",
        help: "Pin/get calls that returned fewer pages than asked for (but more than zero).",
        series: ApiSeries::PerApi(is_pin_or_get, |s| s.short_calls),
    },
    ApiFamily {
        name: "gupwatch_fast_path_pages",
        help: "Pages the lock-free fast walk of a *_fast API took.",
        series: ApiSeries::PerApi(Api::has_fast_path, |s| s.fast_pages),
    },
    ApiFamily {
        name: "gupwatch_slow_path_pages",
        help: "Pages the slow path (mmap_lock held) took: every page of a non-fast API, and what a *_fast API's fast walk left over.",
        series: ApiSeries::PerApi(is_pin_or_get, |s| s.slow_pages),
    },
    ApiFamily {
        name: "gupwatch_fast_path_fallback_calls",
        help: "Calls of a *_fast API that fell back to the slow path.",
        series: ApiSeries::PerApi(Api::has_fast_path, |s| s.fell_back_calls),
    },
    ApiFamily {
        name: "gupwatch_longterm_pages",
        help: "Pages pinned or referenced with FOLL_LONGTERM.",
        series: ApiSeries::PerApi(is_pin_or_get, |s| s.longterm_pages),
    },
];

/// A family of one `DIAG` counter per label value.
struct DiagFamily {
    name: &'static str,
    help: &'static str,
    /// The counters and their label values, in exposition order.
    counters: &'static [(Diag, &'static str)],
}

const SKIPPED_ENTRIES: DiagFamily = DiagFamily {
    name: "gupwatch_skipped_entries",
    help: "Unpins whose entry program did not run (the kernel skipped it, see gupwatch_probe_misses_total, or the call began before gupwatch attached), by outcome: counted_at_release (the gup_put_folio calls, or the hooked unpin, inside them counted their releases, where the kernel counts them), counted_at_exit (their fexit counted the pages nothing inside them counted: a release the compiler inlined), uncounted (a kretprobe exit cannot read the arguments, and nothing inside counted: those pages are missing from the unpinned totals).",
    counters: &[
        (Diag::EntrySkipped, "counted_at_release"),
        (Diag::CountedAtExit, "counted_at_exit"),
        (Diag::UncountedAtExit, "uncounted"),
    ],
};

const EVENTS_DROPPED: DiagFamily = DiagFamily {
    name: "gupwatch_events_dropped",
    help: "Events gupwatch's probes could not record in full (inflight_full: call not timed; arg_read_failed: argument unreadable; attrib_full: call not attributed; stack_lost: no call stack). Per-API totals still count the calls.",
    counters: &[
        (Diag::InflightFull, "inflight_full"),
        (Diag::ArgReadFailed, "arg_read_failed"),
        (Diag::AttribFull, "attrib_full"),
        (Diag::StackLost, "stack_lost"),
    ],
};

/// One `DIAG` counter of a snapshot (0 when the map is shorter).
fn diag(s: &Snapshot, d: Diag) -> u64 {
    s.diag.get(d as usize).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The sections of the exposition, in order.

/// The registry's view of one [`Reading`].
#[derive(Debug)]
struct Exposition(Arc<Reading>);

impl PromCollector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let d = &*self.0;
        gup_calls(&mut enc, d)?;
        who_pinned(&mut enc, d)?;
        outstanding(&mut enc, d)?;
        leak_families(&mut enc, d)?;
        hold::hold_family(&mut enc, d)?;
        cgroups::cgroup_family(&mut enc, d)?;
        accounted_families(&mut enc, d)?;
        own_health(&mut enc, d)?;
        bpfprog::program_families(&mut enc, d)
    }
}

/// What the kernel's GUP functions did: [`API_FAMILIES`] and the latency
/// histogram. Samples exist only with probes; the families are always
/// listed.
fn gup_calls(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let apis = d.counted_apis();
    let snap = d.snapshot.as_ref();
    for f in &API_FAMILIES {
        let Some(s) = snap else {
            counters(enc, f.name, f.help, std::iter::empty::<(ApiLabels, u64)>())?;
            continue;
        };
        match f.series {
            ApiSeries::ByKind(value) => counters(
                enc,
                f.name,
                f.help,
                apis.iter().map(|(a, k)| (ApiKindLabels { api: a.symbol(), kind: k }, value(s.api(*a)))),
            )?,
            ApiSeries::OfKind(kind, value) => counters(
                enc,
                f.name,
                f.help,
                apis.iter().filter(|(_, k)| *k == kind).map(|(a, _)| (ApiLabels { api: a.symbol() }, value(s.api(*a)))),
            )?,
            ApiSeries::PerApi(admits, value) => counters(
                enc,
                f.name,
                f.help,
                apis.iter().filter(|(a, _)| admits(*a)).map(|(a, _)| (ApiLabels { api: a.symbol() }, value(s.api(*a)))),
            )?,
            ApiSeries::ByReverted => counters(
                enc,
                f.name,
                f.help,
                apis.iter().filter(|(a, _)| is_pin(*a)).flat_map(|(a, _)| {
                    gup_common::Reverted::ALL
                        .iter()
                        .map(move |r| (RevertedLabels { api: a.symbol(), reason: r.name() }, s.api(*a).reverted[*r as usize]))
                }),
            )?,
            ApiSeries::ByErrno => counters(
                enc,
                f.name,
                f.help,
                d.errnos.iter().map(|e| (ErrnoLabels { api: e.api, errno: e.errno.clone() }, e.calls)),
            )?,
        }
    }
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
    Ok(())
}

/// What the per-kind families of a [`KINDS`] index count: the word in
/// their names (`gupwatch_subsystem_pinned_pages_total`, ...) and in their
/// HELP text.
const KIND_FAMILIES: [(&str, &str); 3] = [
    ("pinned", "FOLL_PIN pins taken (pages)"),
    ("referenced", "FOLL_GET page references taken"),
    ("unpinned", "FOLL_PIN pins released (pages)"),
];

/// Who pinned: by subsystem, by known driver module, by process name; one
/// family per kind each ([`KIND_FAMILIES`]), listed even when empty.
fn who_pinned(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let mut subsystems: BTreeMap<(usize, &'static str), u64> = BTreeMap::new();
    // Only modules of attribution's table get a series: the label's
    // values are that table's strings, so at most one series per row
    // and kind whatever modules a host loads.
    let mut modules: BTreeMap<(usize, &'static str, &'static str), u64> = BTreeMap::new();
    for r in &d.rows {
        let Some(k) = row_kind(r) else { continue };
        let e = subsystems.entry((k, r.caller.subsystem.as_str())).or_default();
        *e = e.wrapping_add(r.pages);
        if let Some((module, _, _)) = r.caller.module.as_deref().and_then(attribution::of_module) {
            let e = modules.entry((k, module, r.caller.subsystem.as_str())).or_default();
            *e = e.wrapping_add(r.pages);
        }
    }
    for (k, (word, what)) in KIND_FAMILIES.iter().enumerate() {
        counters(
            enc,
            &format!("gupwatch_subsystem_{word}_pages"),
            &format!("{what}, by the kernel subsystem found in the call stack."),
            subsystems.range((k, "")..(k + 1, "")).map(|((_, subsystem), v)| (SubsystemLabels { subsystem }, *v)),
        )?;
    }
    for (k, (word, what)) in KIND_FAMILIES.iter().enumerate() {
        counters(
            enc,
            &format!("gupwatch_module_{word}_pages"),
            &format!("{what} from call stacks through a known driver module (GPU, RDMA, VFIO; the table in attribution.rs), by module and the subsystem it gave."),
            modules
                .range((k, "", "")..(k + 1, "", ""))
                .map(|((_, module, subsystem), v)| (ModuleLabels { module, subsystem }, *v)),
        )?;
    }
    for (k, (word, what)) in KIND_FAMILIES.iter().enumerate() {
        counters(
            enc,
            &format!("gupwatch_process_{word}_pages"),
            &format!("{what}, by process name (comm); only the top processes by pinned pages, the rest summed into comm other."),
            d.processes.iter().filter(|p| p.kind == KINDS[k]).map(|p| (ProcessLabels { comm: p.comm.clone() }, p.pages)),
        )?;
    }
    Ok(())
}

/// Outstanding pins: gupwatch's view and the kernel's.
fn outstanding(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let totals: Option<Totals> = d.snapshot.as_ref().map(Snapshot::totals);
    gauge(
        enc,
        "gupwatch_outstanding_pages",
        "FOLL_PIN pins taken minus pins released, as seen by gupwatch since it started.",
        None,
        // Wrapping: exact whenever the true difference fits an i64, and
        // no overflow panic on wrapped counters (metrics_exposition fuzz target).
        totals.map(|t| (t.pinned_pages as i64).wrapping_sub(t.unpinned_pages as i64)),
    )?;
    counter(
        enc,
        "gupwatch_kernel_foll_pin_acquired",
        "The kernel's own count of FOLL_PIN pins taken since boot (/proc/vmstat nr_foll_pin_acquired).",
        d.vmstat.map(|v| v.acquired),
    )?;
    counter(
        enc,
        "gupwatch_kernel_foll_pin_released",
        "The kernel's own count of FOLL_PIN pins released since boot (/proc/vmstat nr_foll_pin_released).",
        d.vmstat.map(|v| v.released),
    )?;
    gauge(
        enc,
        "gupwatch_kernel_outstanding_pins",
        "Pins held right now according to the kernel (nr_foll_pin_acquired - nr_foll_pin_released).",
        None,
        d.vmstat.map(|v| v.outstanding()),
    )?;
    gauge(
        enc,
        "gupwatch_kernel_counters_age",
        "How long before this reading /proc/sys/vm/stat_refresh folded every CPU's pending counts into the nr_foll_pin_* counters read (gupwatch run --vmstat-refresh); no sample when it was never written, and then the counters lag by up to vm.stat_interval (1 s by default).",
        Some(&Unit::Seconds),
        d.vmstat.and(d.vmstat_refreshed_ago).map(|a| a.as_secs_f64()),
    )
}

/// Leaks, from the per-folio tracking map; no family at all without it
/// (the reduced mode).
fn leak_families(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let Some(l) = &d.leaks else { return Ok(()) };
    gauge(
        enc,
        "gupwatch_tracked_outstanding_pins",
        "Pins gupwatch tracks as held right now (taken since it started; see untracked).",
        None,
        Some(l.tracked_outstanding as i64),
    )?;
    counter(
        enc,
        "gupwatch_untracked_pins",
        "Pins the tracking map could not record (map full, beyond the per-call walk, or a folio whose record and spill record were both being deleted): totals stay exact, the outstanding view is partial.",
        Some(l.untracked),
    )?;
    counter(
        enc,
        "gupwatch_ledger_replaced_pins",
        "Pins that found their folio's tracking record closed by an unpin on another CPU at the same moment (it released the folio's last tracked pin), and were placed again in a fresh record. Nothing is lost; a high rate means folios pinned and released concurrently by many CPUs.",
        d.snapshot.as_ref().map(|s| diag(s, Diag::LedgerReplaced)),
    )?;
    gauges(
        enc,
        "gupwatch_leak_signals",
        "Leak signals right now, by kind: long_held, orphaned (owner exited and no live process holds the object behind the pins, after a grace period), unbalanced (unpins of unseen pins, per call site), growth, weak_pin (pins without FOLL_LONGTERM held on ZONE_MOVABLE pages past the weak-pin threshold).",
        None,
        l.by_kind.iter().map(|(k, (n, _))| (LeakLabels { kind: k }, *n as i64)),
    )?;
    gauges(
        enc,
        "gupwatch_leak_pages",
        "Pins covered by the leak signals of each kind.",
        None,
        l.by_kind.iter().map(|(k, (_, p))| (LeakLabels { kind: k }, *p as i64)),
    )?;
    gauge(
        enc,
        "gupwatch_held_by_other_process_pages",
        "Pins whose creator exited, held by a live process that has the object behind them open (an io_uring ring inherited across fork): not a leak; gupwatch leaks names the holder.",
        None,
        Some(l.held_by_others as i64),
    )
}


/// gupwatch's own health: hooks, misses, dropped events, read errors, the
/// gathering's duration and the build.
fn own_health(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let snap = d.snapshot.as_ref();
    gauges(
        enc,
        "gupwatch_probe_attached",
        "1 if the hook on this kernel function is attached and counting, 0 if not (mechanism none: the kernel lacks the function).",
        None,
        d.plan.hooks.iter().map(|h| (ProbeLabels { function: h.function, mechanism: h.mechanism }, h.attached as i64)),
    )?;
    counters(
        enc,
        "gupwatch_probe_misses",
        "Calls of this kernel function the kernel ran without one of gupwatch's programs: the BPF recursion guard skipped it (the same program, or for kprobes any kprobe program, was already running on that CPU), or a kprobe let the call through (a kretprobe out of instances). gupwatch_skipped_entries_total says which unpins were still counted. From the programs' recursion_misses (kernel 5.12+; kprobes 6.7+) and the kprobe links' missed count (6.7+).",
        d.probe_misses.iter().map(|(f, n)| (FunctionLabels { function: f }, *n)),
    )?;
    counters(
        enc,
        "gupwatch_probe_detached",
        "Times a hook on a module function was found dead and detached, by reason: module_unloaded, module_reloaded (unloaded and loaded again between two looks), kernel_gone (the kernel lists its kprobe as [GONE] or not at all). A kprobe dies with the load of its module; gupwatch attaches the hook again when the module is back (gupwatch_probe_attached says when).",
        d.probe_detached.iter().map(|(f, r, n)| (DetachLabels { function: f, reason: r }, *n)),
    )?;
    diag_counters(enc, &SKIPPED_ENTRIES, snap, |outcome| OutcomeLabels { outcome })?;
    let maps: Vec<(MapLabels, u64, u64)> = snap
        .map(|s| {
            vec![
                (MapLabels { map: "ATTRIB" }, s.attrib.len() as u64, u64::from(ATTRIB_CAPACITY)),
                (MapLabels { map: "ERRNOS" }, s.errnos.len() as u64, u64::from(ERRNO_CAPACITY)),
            ]
        })
        .unwrap_or_default();
    gauges(
        enc,
        "gupwatch_map_entries",
        "Entries in one of gupwatch's BPF hash maps; new keys are dropped once it is full.",
        None,
        maps.iter().map(|(l, n, _)| (l.clone(), *n)),
    )?;
    gauges(
        enc,
        "gupwatch_map_capacity",
        "Capacity of one of gupwatch's BPF hash maps.",
        None,
        maps.iter().map(|(l, _, c)| (l.clone(), *c)),
    )?;
    diag_counters(enc, &EVENTS_DROPPED, snap, |reason| ReasonLabels { reason })?;
    counters(
        enc,
        "gupwatch_read_errors",
        "Scrapes that could not read a data source (maps: gupwatch's BPF maps; vmstat: /proc/vmstat).",
        [
            (SourceLabels { source: "maps" }, d.read_errors.maps),
            (SourceLabels { source: "vmstat" }, d.read_errors.vmstat),
        ],
    )?;
    gauge(
        enc,
        "gupwatch_scrape_duration",
        "Time this scrape took to gather its data (BPF map reads, /proc/vmstat, stack symbolization), before encoding.",
        Some(&Unit::Seconds),
        Some(d.gather_duration.as_secs_f64()),
    )?;
    let build = enc.encode_descriptor(
        "gupwatch_build",
        "gupwatch's version and the kernel it runs on; always 1.",
        None,
        MetricType::Info,
    )?;
    Info::new(BuildLabels { version: d.version.clone(), kernel: d.plan.kernel.clone() }).encode(build)
}

/// A [`DiagFamily`]: its counters with their label values; no samples
/// without probes.
fn diag_counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    f: &DiagFamily,
    snap: Option<&Snapshot>,
    label: fn(&'static str) -> L,
) -> fmt::Result {
    let samples = snap.into_iter().flat_map(|s| f.counters.iter().map(move |(i, v)| (label(v), diag(s, *i))));
    counters(enc, f.name, f.help, samples)
}

/// One per-holder figure of the accounted families.
type HolderValue = fn(&gup_report::Holder) -> u64;

/// The `gupwatch_accounted_*` families: per holder (pid and comm) for the
/// top [`Settings::top_processes`] holders only, so a host with thousands
/// of mlocking processes still has a bounded series count; the holder
/// count says how many there were. Samples only in the reduced mode.
fn accounted_families(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    let top = d.accounted.as_deref().map_or(&[][..], |a| &a.holders[..a.holders.len().min(d.processes_limit())]);
    let per = |f: HolderValue| {
        top.iter().map(move |h| (HolderLabels { pid: h.pid.to_string(), comm: h.comm.clone() }, f(h)))
    };
    let families: [(&str, &str, HolderValue); 3] = [
        (
            "gupwatch_accounted_pinned",
            "Pinned memory the kernel accounts to a process: the larger of VmPin (/proc/PID/status: io_uring buffers, RDMA registrations...) and its io_uring registered buffers (fdinfo), whole pages; accounted, not traced; reduced mode, top holders only.",
            |h| h.pinned_bytes,
        ),
        (
            "gupwatch_accounted_locked",
            "Locked memory the kernel charges to a process (VmLck: mlock, VFIO type1 mappings), for the same holders.",
            |h| h.locked_bytes,
        ),
        (
            "gupwatch_accounted_io_uring_buffer",
            "Bytes of io_uring registered buffers (from /proc/PID/fdinfo of its io_uring descriptors), for the same holders.",
            |h| h.io_uring_bytes,
        ),
    ];
    for (name, help, value) in families {
        gauges(enc, name, help, Some(&Unit::Bytes), per(value))?;
    }
    gauge(
        enc,
        "gupwatch_accounted_holders",
        "Processes with non-zero VmPin, VmLck or io_uring buffers (all of them, not only the top holders).",
        None,
        d.accounted.as_deref().map(|a| a.holders.len() as i64),
    )
}

/// Renders a reading in the given format.
pub fn render(data: &Arc<Reading>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(Arc::clone(data))));
    registry.register_collector(Box::new(super::process::Process));
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

