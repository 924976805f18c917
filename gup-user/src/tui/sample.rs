//! One reading of gupwatch's counters, whichever way it arrived: from the
//! collector of this process ([`Sample::from_reading`]) or from a daemon's
//! `/api/snapshot` ([`Sample::from_json`]). Both go through the one
//! `/api/snapshot` document ([`crate::export::api`]) and the one conversion
//! below, and the view model only ever sees [`Sample`]s, so the local and
//! the remote view are the same code.
//!
//! Every counter is cumulative since the probes were attached; rates are
//! the view model's business.

use gup_common::{Api, LATENCY_BUCKETS};
use serde::Deserialize;

use crate::{accounted::Accounted, collect::Reading, export::api, model::Totals};

/// Whether the probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Probes attached: every counter is there.
    Full,
    /// No probe attached: only the kernel's `/proc/vmstat` counters.
    Reduced,
}

/// What a hooked function does, as the views group it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Takes FOLL_PIN pins.
    Pin,
    /// Takes FOLL_GET references.
    Get,
    /// Releases pins (the unpin entry points and `gup_put_folio`).
    Unpin,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "pin" => Some(Kind::Pin),
            "get" => Some(Kind::Get),
            "unpin" => Some(Kind::Unpin),
            _ => None,
        }
    }
}

/// The counters of one hooked API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSample {
    /// Kernel symbol.
    pub api: String,
    /// pin, get or unpin.
    pub kind: Kind,
    /// Whether the hook is attached.
    pub attached: bool,
    /// Whether the API walks page tables lock-free first (`*_fast`).
    pub fast_api: bool,
    /// Calls.
    pub calls: u64,
    /// Pages returned (pin/get) or released (unpin).
    pub pages: u64,
    /// Failed calls.
    pub errors: u64,
    /// Pages the lock-free walk took.
    pub fast_pages: u64,
    /// Pages the slow path took.
    pub slow_pages: u64,
    /// Pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
    /// log2 nanosecond latency buckets ([`LATENCY_BUCKETS`] of them; all
    /// zero when a remote daemon is too old to send them).
    pub latency_log2: Vec<u64>,
}

/// One attribution row: a process calling an API from a call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSample {
    /// Process id.
    pub tgid: u32,
    /// Process name.
    pub comm: String,
    /// Kernel symbol of the API.
    pub api: String,
    /// pin, get or unpin.
    pub kind: Kind,
    /// Whether the API is a `*_fast` one.
    pub fast_api: bool,
    /// The first kernel frame outside GUP.
    pub caller: String,
    /// The subsystem found in the stack.
    pub subsystem: String,
    /// Calls.
    pub calls: u64,
    /// Pages.
    pub pages: u64,
    /// Failed calls.
    pub errors: u64,
    /// Pages the lock-free walk took.
    pub fast_pages: u64,
    /// Pages the slow path took.
    pub slow_pages: u64,
    /// Pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
}

/// One hook of the probe plan (for the reduced-mode screen's "why").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSample {
    /// Kernel function.
    pub function: String,
    /// planned, attached, absent or failed.
    pub status: String,
    /// Why that mechanism, or why it failed.
    pub reason: String,
}

/// One reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// gupwatch's version (the daemon's, for a remote view).
    pub version: String,
    /// `uname -r` of the watched kernel.
    pub kernel: String,
    /// Probes or not.
    pub mode: Mode,
    /// Hooks attached.
    pub hooks_attached: usize,
    /// Hooks whose function the kernel has.
    pub hooks_present: usize,
    /// The plan's hooks.
    pub hooks: Vec<HookSample>,
    /// Totals in the terms of `/proc/vmstat` (full mode only).
    pub totals: Option<Totals>,
    /// The kernel's own `nr_foll_pin_acquired` / `nr_foll_pin_released`.
    pub kernel_counters: Option<(u64, u64)>,
    /// Per-API counters of pin, get and unpin APIs.
    pub apis: Vec<ApiSample>,
    /// Attribution rows.
    pub rows: Vec<RowSample>,
    /// Whether rows were left out (a remote daemon sends the largest only).
    pub rows_truncated: bool,
    /// Reduced mode: pinned memory as the kernel accounts it per process.
    pub accounted: Option<Accounted>,
}

/// Why a JSON document could not be read as a sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Not the JSON of `/api/snapshot`.
    #[error("not a gupwatch /api/snapshot document: {0}")]
    Json(#[from] serde_json::Error),
}

impl Sample {
    /// A sample from a reading of this process's collector, through the
    /// document a daemon would send for it (with every attribution row):
    /// one conversion for both views, and what the local view shows is
    /// what `/api/snapshot` says.
    pub fn from_reading(d: &Reading) -> Result<Sample, SampleError> {
        Sample::from_value(api::snapshot_with_callers(d, 0, usize::MAX))
    }

    /// A sample from an `/api/snapshot` document already parsed.
    pub fn from_value(doc: serde_json::Value) -> Result<Sample, SampleError> {
        let doc: SnapshotDoc = serde_json::from_value(doc)?;
        Ok(doc.into_sample())
    }

    /// A sample from a daemon's `/api/snapshot` document (with
    /// `?callers=1` for the rows). Unknown fields are ignored and missing
    /// optional ones default, so older and newer daemons both work.
    pub fn from_json(text: &str) -> Result<Sample, SampleError> {
        let doc: SnapshotDoc = serde_json::from_str(text)?;
        Ok(doc.into_sample())
    }
}

// The parts of /api/snapshot the view uses (written by export::api).

#[derive(Deserialize)]
struct SnapshotDoc {
    #[serde(default)]
    version: String,
    kernel: String,
    mode: String,
    #[serde(default)]
    totals: Option<TotalsDoc>,
    #[serde(default)]
    kernel_counters: Option<KernelDoc>,
    #[serde(default)]
    apis: Vec<ApiDoc>,
    #[serde(default)]
    hooks: Vec<HookDoc>,
    #[serde(default)]
    callers: Vec<CallerDoc>,
    #[serde(default)]
    callers_truncated: bool,
    #[serde(default)]
    accounted: Option<Accounted>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TotalsDoc {
    pinned_pages: u64,
    unpinned_pages: u64,
    referenced_pages: u64,
    pin_calls: u64,
    unpin_calls: u64,
    get_calls: u64,
    failed_calls: u64,
    fast_pages: u64,
    slow_pages: u64,
    unsplit_pages: u64,
    longterm_pages: u64,
}

#[derive(Deserialize)]
struct KernelDoc {
    acquired: u64,
    released: u64,
}

#[derive(Deserialize)]
struct ApiDoc {
    api: String,
    kind: String,
    #[serde(default)]
    attached: bool,
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    pages: u64,
    #[serde(default)]
    errors: u64,
    #[serde(default)]
    fast_pages: u64,
    #[serde(default)]
    slow_pages: u64,
    #[serde(default)]
    longterm_pages: u64,
    #[serde(default)]
    latency_log2: Vec<u64>,
}

#[derive(Deserialize)]
struct HookDoc {
    function: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    attached: bool,
}

#[derive(Deserialize)]
struct CallerDoc {
    tgid: u32,
    comm: String,
    api: String,
    kind: String,
    caller: String,
    subsystem: String,
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    pages: u64,
    #[serde(default)]
    errors: u64,
    #[serde(default)]
    fast_pages: u64,
    #[serde(default)]
    slow_pages: u64,
    #[serde(default)]
    longterm_pages: u64,
}

/// A subsystem name in the metrics' spelling ([`Subsystem::as_str`]).
///
/// [`Subsystem::as_str`]: crate::attribution::Subsystem::as_str
fn subsystem_label(s: &str) -> String {
    use crate::attribution::Subsystem::*;
    [IoUring, DirectIo, ProcessVm, I915, Gpu, Rdma, Vfio, Udmabuf, Other]
        .into_iter()
        .find(|x| serde_json::to_value(x).ok().and_then(|v| v.as_str().map(|v| v == s)).unwrap_or(false))
        .map_or_else(|| s.to_string(), |x| x.as_str().to_string())
}

fn fast_api(symbol: &str) -> bool {
    Api::from_symbol(symbol).is_some_and(Api::has_fast_path)
}

impl SnapshotDoc {
    fn into_sample(self) -> Sample {
        let mode = if self.mode == "full" { Mode::Full } else { Mode::Reduced };
        let apis = self
            .apis
            .into_iter()
            .filter_map(|a| {
                let mut latency = a.latency_log2;
                latency.resize(LATENCY_BUCKETS, 0);
                Some(ApiSample {
                    fast_api: fast_api(&a.api),
                    kind: Kind::parse(&a.kind)?,
                    api: a.api,
                    attached: a.attached,
                    calls: a.calls,
                    pages: a.pages,
                    errors: a.errors,
                    fast_pages: a.fast_pages,
                    slow_pages: a.slow_pages,
                    longterm_pages: a.longterm_pages,
                    latency_log2: latency,
                })
            })
            .collect();
        let rows = self
            .callers
            .into_iter()
            .filter_map(|c| {
                Some(RowSample {
                    tgid: c.tgid,
                    comm: c.comm,
                    fast_api: fast_api(&c.api),
                    kind: Kind::parse(&c.kind)?,
                    api: c.api,
                    caller: c.caller,
                    subsystem: c.subsystem,
                    calls: c.calls,
                    pages: c.pages,
                    errors: c.errors,
                    fast_pages: c.fast_pages,
                    slow_pages: c.slow_pages,
                    longterm_pages: c.longterm_pages,
                })
            })
            .collect();
        Sample {
            version: self.version,
            kernel: self.kernel,
            mode,
            hooks_attached: self.hooks.iter().filter(|h| h.attached).count(),
            hooks_present: self.hooks.iter().filter(|h| h.status != "absent").count(),
            hooks: self
                .hooks
                .into_iter()
                .map(|h| HookSample { function: h.function, status: h.status, reason: h.reason })
                .collect(),
            totals: if mode == Mode::Full {
                self.totals.map(|t| Totals {
                    pinned_pages: t.pinned_pages,
                    unpinned_pages: t.unpinned_pages,
                    referenced_pages: t.referenced_pages,
                    pin_calls: t.pin_calls,
                    unpin_calls: t.unpin_calls,
                    get_calls: t.get_calls,
                    failed_calls: t.failed_calls,
                    fast_pages: t.fast_pages,
                    slow_pages: t.slow_pages,
                    unsplit_pages: t.unsplit_pages,
                    longterm_pages: t.longterm_pages,
                })
            } else {
                None
            },
            kernel_counters: self.kernel_counters.map(|k| (k.acquired, k.released)),
            apis,
            rows,
            rows_truncated: self.callers_truncated,
            accounted: self.accounted,
        }
    }
}

/// Pins held by one owner from one call site.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HoldingSample {
    /// Owning process.
    pub owner_tgid: u32,
    /// Its name.
    pub comm: String,
    /// Where it pinned.
    pub caller: CallerSample,
    /// Pins held.
    pub pages: u64,
    /// Age of the oldest.
    pub oldest_age_secs: f64,
    /// Any of them FOLL_LONGTERM.
    #[serde(default)]
    pub longterm: bool,
    /// The owner has exited.
    #[serde(default)]
    pub orphaned: bool,
}

/// A call site as the leak report names it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CallerSample {
    /// Function.
    pub function: String,
    /// Subsystem.
    pub subsystem: String,
}

/// One leak signal.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LeakSample {
    /// long_held, orphaned, unbalanced or growth.
    pub kind: String,
    /// Pins concerned.
    pub pages: u64,
    /// Owner, if any.
    #[serde(default)]
    pub owner_tgid: Option<u32>,
    /// Its name.
    #[serde(default)]
    pub comm: Option<String>,
    /// Call site.
    pub caller: String,
    /// Its subsystem.
    pub subsystem: String,
    /// Age of the oldest pin concerned.
    #[serde(default)]
    pub age_secs: Option<f64>,
}

/// Outstanding pins and leak signals: [`crate::leaks::LeakReport`] as it
/// serializes (locally and in `/api/snapshot?leaks=1`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Outstanding {
    /// Pins gupwatch tracks as outstanding.
    pub tracked_outstanding: u64,
    /// Pins the kernel counts as outstanding.
    #[serde(default)]
    pub kernel_outstanding: Option<i64>,
    /// Whether some pins were not tracked.
    #[serde(default)]
    pub partial: bool,
    /// Holdings, oldest first.
    #[serde(default)]
    pub holdings: Vec<HoldingSample>,
    /// Leak signals.
    #[serde(default)]
    pub leaks: Vec<LeakSample>,
    /// Explanations.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Outstanding {
    /// From a serialized leak report (`null` gives `None`).
    pub fn from_value(v: serde_json::Value) -> Result<Option<Outstanding>, SampleError> {
        if v.is_null() {
            return Ok(None);
        }
        let mut o: Outstanding = serde_json::from_value(v)?;
        // The leak report spells subsystems as serde does (`io-uring`), the
        // attribution rows as the metrics do (`io_uring`): one spelling,
        // so filters and groups match.
        for h in &mut o.holdings {
            h.caller.subsystem = subsystem_label(&h.caller.subsystem);
        }
        for l in &mut o.leaks {
            l.subsystem = subsystem_label(&l.subsystem);
        }
        Ok(Some(o))
    }

    /// From a local leak report.
    pub fn from_report(r: &crate::leaks::LeakReport) -> Option<Outstanding> {
        serde_json::to_value(r).ok().and_then(|v| Outstanding::from_value(v).ok().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local view and the remote one (the daemon's HTTP body, as
    /// text) read the same sample, and it carries what the view uses.
    #[test]
    fn local_and_remote_agree() {
        let data = crate::collect::fixture::sample();
        let local = Sample::from_reading(&data).expect("reads back");
        let doc = api::snapshot_with_callers(&data, 10, api::MAX_JSON_CALLERS);
        let remote = Sample::from_json(&doc.to_string()).expect("parses");
        assert_eq!(local, remote);
        assert_eq!(local.mode, Mode::Full);
        assert_eq!(local.version, data.version);
        assert_eq!(local.totals, data.snapshot.as_ref().map(|s| s.totals()));
        assert_eq!(local.kernel_counters, data.vmstat.map(|v| (v.acquired, v.released)));
        assert_eq!(local.rows.len(), data.rows.len(), "every row travels");
        assert!(local.apis.iter().any(|a| a.latency_log2.iter().sum::<u64>() > 0), "latency travels");
        let fast = local.apis.iter().find(|a| a.api == "pin_user_pages_fast").expect("pin_user_pages_fast");
        assert!(fast.fast_api && fast.kind == Kind::Pin && fast.calls == 10);
    }

    #[test]
    fn old_daemons_and_reduced_mode_parse() {
        let s = Sample::from_json(
            r#"{"kernel":"6.18","mode":"reduced","totals":null,"kernel_counters":{"acquired":5,"released":3,"outstanding":2},
                "apis":[],"hooks":[{"function":"pin_user_pages","status":"failed","reason":"fentry: EPERM","attached":false},
                {"function":"pin_user_pages_fast_only","status":"absent","reason":"","attached":false}],"extra":1}"#,
        )
        .expect("parses");
        assert_eq!(s.mode, Mode::Reduced);
        assert_eq!(s.kernel_counters, Some((5, 3)));
        assert_eq!((s.hooks_attached, s.hooks_present), (0, 1));
        assert!(s.rows.is_empty());
        assert!(Sample::from_json("<html>").is_err());
    }

    #[test]
    fn leak_reports_round_trip() {
        assert_eq!(Outstanding::from_value(serde_json::Value::Null).unwrap(), None);
        let v = serde_json::json!({
            "tracked_outstanding": 256, "kernel_outstanding": 300, "untracked_pins": 0, "partial": false,
            "holdings": [{"owner_tgid": 7, "comm": "fio", "api": "pin_user_pages_fast",
                "caller": {"function": "io_sqe_buffer_register", "subsystem": "io-uring"},
                "pages": 256, "oldest_age_secs": 12.5, "longterm": true, "orphaned": true}],
            "leaks": [{"kind": "orphaned", "pages": 256, "owner_tgid": 7, "comm": "fio",
                "caller": "io_sqe_buffer_register", "subsystem": "io_uring", "age_secs": 12.5}],
            "notes": ["n"]
        });
        let o = Outstanding::from_value(v).unwrap().unwrap();
        assert_eq!(o.holdings[0].caller.subsystem, "io_uring");
        assert_eq!(subsystem_label("process-vm"), "process_vm", "serde's spelling becomes the metrics'");
        assert_eq!(subsystem_label("direct-io"), "direct-io");
        assert_eq!(subsystem_label("something"), "something");
        assert_eq!(o.leaks[0].kind, "orphaned");
    }
}
