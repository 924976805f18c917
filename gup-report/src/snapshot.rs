//! The `/api/snapshot` document: written by gup-user's `export::api` from a
//! reading, read by the live view (gup-user's `tui::sample`) and xtask.
//!
//! Deserializing is lenient where the writer grew: fields a daemon of an
//! older version does not send default (`#[serde(default)]`), unknown
//! ones are ignored, so `top --connect` works across versions.

use std::collections::BTreeMap;

use gup_common::Api;
use serde::{Deserialize, Deserializer, Serialize};

use super::LeakReport;
use crate::{Accounted, CgroupPins, Totals};

/// Whether the probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Probes attached: every counter is there.
    Full,
    /// No probe attached: only the kernel's `/proc/vmstat` counters (and
    /// the accounted holders).
    Reduced,
}

/// What a hooked function does, as the documents and the views group it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Takes FOLL_PIN pins.
    Pin,
    /// Takes FOLL_GET references.
    Get,
    /// Releases pins (the unpin entry points and `gup_put_folio`).
    Unpin,
}

impl Kind {
    /// The kinds in the order of the collector's kind index
    /// (`collect::KINDS`: pin, get, unpin).
    pub const ALL: [Kind; 3] = [Kind::Pin, Kind::Get, Kind::Unpin];

    /// The kind of a collector kind index.
    pub fn from_index(i: usize) -> Option<Kind> {
        Kind::ALL.get(i).copied()
    }
}

/// Whether a kernel symbol is an API that walks page tables lock-free
/// first (`*_fast`).
fn has_fast_path(symbol: &str) -> bool {
    Api::from_symbol(symbol).is_some_and(Api::has_fast_path)
}

/// The counters of one hooked pin, get or unpin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiReport {
    /// Kernel symbol.
    pub api: String,
    /// pin, get or unpin.
    pub kind: Kind,
    /// Whether the hook is attached.
    #[serde(default)]
    pub attached: bool,
    /// Calls.
    #[serde(default)]
    pub calls: u64,
    /// Pages returned (pin/get) or released (unpin).
    #[serde(default)]
    pub pages: u64,
    /// Pages the calls asked for.
    #[serde(default)]
    pub requested_pages: u64,
    /// Failed calls.
    #[serde(default)]
    pub errors: u64,
    /// Calls that returned no page.
    #[serde(default)]
    pub zero_calls: u64,
    /// Calls that returned fewer pages than asked.
    #[serde(default)]
    pub short_calls: u64,
    /// Pages taken and released again within the call.
    #[serde(default)]
    pub undone_pages: u64,
    /// Calls without a latency.
    #[serde(default)]
    pub untimed_calls: u64,
    /// Sum of the calls' latencies.
    #[serde(default)]
    pub latency_ns_sum: u64,
    /// Pages the lock-free walk took.
    #[serde(default)]
    pub fast_pages: u64,
    /// Pages the slow path took.
    #[serde(default)]
    pub slow_pages: u64,
    /// Pages of fast calls whose split is unknown.
    #[serde(default)]
    pub unsplit_pages: u64,
    /// Fast calls that fell back to the slow path.
    #[serde(default)]
    pub fell_back_calls: u64,
    /// Calls with FOLL_LONGTERM.
    #[serde(default)]
    pub longterm_calls: u64,
    /// Pages pinned with FOLL_LONGTERM.
    #[serde(default)]
    pub longterm_pages: u64,
    /// The log2 nanosecond latency histogram (bucket `i`: `2^i <= d <
    /// 2^(i+1)` ns), for clients that draw it (`gupwatch top --connect`);
    /// empty from daemons too old to send it.
    #[serde(default)]
    pub latency_log2: Vec<u64>,
}

impl ApiReport {
    /// Whether the API walks page tables lock-free first (`*_fast`).
    pub fn fast_api(&self) -> bool {
        has_fast_path(&self.api)
    }
}

/// Failed calls of one API with one errno.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrnoReport {
    /// Kernel symbol of the API.
    pub api: String,
    /// The errno.
    pub errno: u32,
    /// Its name (`EFAULT`), or the number.
    pub name: String,
    /// Calls that failed with it.
    pub calls: u64,
}

/// The kernel's own FOLL_PIN counters (`/proc/vmstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// `nr_foll_pin_acquired`.
    pub acquired: u64,
    /// `nr_foll_pin_released`.
    pub released: u64,
    /// Their difference.
    #[serde(default)]
    pub outstanding: i64,
    /// Milliseconds between the last `/proc/sys/vm/stat_refresh` and this
    /// reading; `null`: not refreshed (`gupwatch run` without
    /// `--vmstat-refresh`), so the figures may lag each CPU's pending
    /// counts by up to `vm.stat_interval` (1 s by default).
    #[serde(default)]
    pub refreshed_ms_ago: Option<u64>,
}

/// One process (by pid) with its pages by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Process id.
    pub tgid: u32,
    /// Process name.
    pub comm: String,
    /// Pages pinned (FOLL_PIN).
    pub pinned_pages: u64,
    /// Pages referenced (FOLL_GET).
    pub referenced_pages: u64,
    /// Pages unpinned.
    pub unpinned_pages: u64,
    /// Calls.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
}

/// Pages of one kind a subsystem took or released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemReport {
    /// The subsystem, in the metrics' spelling (`io_uring`).
    pub subsystem: String,
    /// pin, get or unpin.
    pub kind: Kind,
    /// Pages.
    pub pages: u64,
}

/// One hook of the probe plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookReport {
    /// Kernel function name.
    pub function: String,
    /// pin, get, unpin, slow-path, release or i915.
    #[serde(default)]
    pub kind: String,
    /// `fentry`, `kprobe`, or `none` when the kernel lacks the function.
    #[serde(default)]
    pub mechanism: String,
    /// Whether it is attached and counting.
    #[serde(default)]
    pub attached: bool,
    /// planned, attached, absent or failed.
    #[serde(default)]
    pub status: String,
    /// Why this mechanism, or why it failed.
    #[serde(default)]
    pub reason: String,
}

/// One attribution row of `/api/snapshot?callers=1`: a process calling an
/// API from a call site, with its cumulative counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerReport {
    /// Process id.
    pub tgid: u32,
    /// Process name.
    pub comm: String,
    /// Kernel symbol of the API.
    pub api: String,
    /// pin, get or unpin.
    pub kind: Kind,
    /// The first kernel frame outside GUP.
    pub caller: String,
    /// The subsystem found in the stack, in the metrics' spelling.
    pub subsystem: String,
    /// The driver module of the stack
    /// ([`Caller::module`](crate::Caller::module)), or null.
    #[serde(default)]
    pub module: Option<String>,
    /// Calls.
    #[serde(default)]
    pub calls: u64,
    /// Pages.
    #[serde(default)]
    pub pages: u64,
    /// Failed calls.
    #[serde(default)]
    pub errors: u64,
    /// Pages the lock-free walk took.
    #[serde(default)]
    pub fast_pages: u64,
    /// Pages the slow path took.
    #[serde(default)]
    pub slow_pages: u64,
    /// Pages pinned with FOLL_LONGTERM.
    #[serde(default)]
    pub longterm_pages: u64,
}

impl CallerReport {
    /// Whether the API is a `*_fast` one.
    pub fn fast_api(&self) -> bool {
        has_fast_path(&self.api)
    }
}

/// The `/api/snapshot` document: totals, per-API counters, the top
/// processes, subsystems and the plan; with `callers=1` the attribution
/// rows, with `leaks=1` the leak report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// gupwatch's version.
    #[serde(default)]
    pub version: String,
    /// `uname -r` of the watched kernel.
    pub kernel: String,
    /// Probes or not.
    pub mode: Mode,
    /// Hooks attached.
    #[serde(default)]
    pub hooks_attached: usize,
    /// Totals in the terms of `/proc/vmstat` (full mode only).
    #[serde(default)]
    pub totals: Option<Totals>,
    /// Pinned minus unpinned pages (wrapping, as the counters do).
    #[serde(default)]
    pub outstanding_pages: Option<i64>,
    /// The kernel's own counters, where readable.
    #[serde(default)]
    pub kernel_counters: Option<KernelCounters>,
    /// Per-API counters of the pin, get and unpin APIs of the plan.
    #[serde(default)]
    pub apis: Vec<ApiReport>,
    /// Failed calls by API and errno.
    #[serde(default)]
    pub errnos: Vec<ErrnoReport>,
    /// Events the programs dropped, by reason.
    #[serde(default)]
    pub events_dropped: BTreeMap<String, u64>,
    /// The processes with the most pinned pages.
    #[serde(default)]
    pub top_processes: Vec<ProcessReport>,
    /// Pages by subsystem and kind.
    #[serde(default)]
    pub subsystems: Vec<SubsystemReport>,
    /// The plan's hooks.
    #[serde(default)]
    pub hooks: Vec<HookReport>,
    /// How long gathering the reading took.
    #[serde(default)]
    pub scrape_duration_seconds: f64,
    /// Reduced mode: who holds pinned memory, as the kernel accounts it.
    #[serde(default)]
    pub accounted: Option<Accounted>,
    /// How long released pins were held, per subsystem and LONGTERM;
    /// absent while none was released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold_times: Vec<super::HoldHistogram>,
    /// Pins held now per cgroup (top ones, `other`, `unknown`); absent
    /// while none is held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupPins>,
    /// `callers=1`: the attribution rows, largest first (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Vec<CallerReport>>,
    /// `callers=1`: whether rows were left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers_truncated: Option<bool>,
    /// `leaks=1`: the leak report, `null` when there is none (no tracking
    /// map); absent when not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub leaks: Option<Option<LeakReport>>,
}

/// A field that is there, even as `null` (`Some(None)`); with
/// `#[serde(default)]` an absent one is `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}
