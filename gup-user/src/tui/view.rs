//! The view model: what the live view shows, computed from a stream of
//! [`Sample`]s (and, every few seconds, a [`LeakReport`]) without
//! any terminal. Rates are deltas between the last two samples divided by
//! the time between them; shares (fast-path hit rate, LONGTERM share) are
//! over everything since the probes were attached, which keeps them steady
//! for idle rows. The history behind the sparklines is bounded in time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use gup_common::LATENCY_BUCKETS;

use super::sample::{Kind, Mode, Sample};
use gup_report::{CallerReport, LeakReport};

/// How much history the sparklines keep, in seconds.
pub const HISTORY_SECS: f64 = 600.0;

/// How much older than the reading it comes with a leak report can be, in
/// seconds: the collector reuses one for [`LEAK_REPORT_MIN_INTERVAL`]
/// (locally and in a daemon), plus a second for the request. A row that
/// pinned or got pages later than this before the report was taken may
/// hold pages the report does not show.
///
/// [`LEAK_REPORT_MIN_INTERVAL`]: crate::collect::LEAK_REPORT_MIN_INTERVAL
pub const HOLDINGS_LAG_SECS: f64 = 3.0;

/// What the table lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// One row per process (pid, comm).
    Processes,
    /// One row per call site (the first kernel frame outside GUP).
    CallSites,
}

impl View {
    /// The other view.
    pub fn toggle(self) -> View {
        match self {
            View::Processes => View::CallSites,
            View::CallSites => View::Processes,
        }
    }

    /// The table's title.
    pub fn title(self) -> &'static str {
        match self {
            View::Processes => "Processes",
            View::CallSites => "Call sites",
        }
    }
}

/// A sortable column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Pin and get calls per second.
    PinsPerSec,
    /// Pages pinned or referenced per second.
    PagesPerSec,
    /// Pins held now (from the tracking map).
    Outstanding,
    /// Fast-path hit rate.
    FastPct,
    /// LONGTERM share.
    LongtermPct,
    /// Pages since start.
    TotalPages,
    /// Process name or call site.
    Name,
}

impl SortKey {
    /// Every key, in the order `s` cycles through them.
    pub const ALL: [SortKey; 7] = [
        SortKey::PagesPerSec,
        SortKey::PinsPerSec,
        SortKey::Outstanding,
        SortKey::FastPct,
        SortKey::LongtermPct,
        SortKey::TotalPages,
        SortKey::Name,
    ];

    /// The next key.
    pub fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    /// The column header it sorts.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::PinsPerSec => "PINS/s",
            SortKey::PagesPerSec => "PAGES/s",
            SortKey::Outstanding => "OUTST",
            SortKey::FastPct => "FAST%",
            SortKey::LongtermPct => "LT%",
            SortKey::TotalPages => "PAGES",
            SortKey::Name => "NAME",
        }
    }

    /// The natural direction: largest first, except names.
    pub fn default_descending(self) -> bool {
        self != SortKey::Name
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableRow {
    /// Process id (processes view).
    pub tgid: Option<u32>,
    /// Process name, or call site.
    pub name: String,
    /// The subsystem with the most pages (processes view), or the call
    /// site's.
    pub subsystem: String,
    /// Distinct processes (call sites view).
    pub processes: usize,
    /// Pin and get calls per second.
    pub pins_per_sec: f64,
    /// Pages pinned or referenced per second.
    pub pages_per_sec: f64,
    /// Pages pinned or referenced since start.
    pub total_pages: u64,
    /// Pins held now, when the tracking map has been read since the row
    /// last pinned or got pages (else its report may miss a new pin).
    pub outstanding: Option<u64>,
    /// Share of `*_fast` pages the lock-free walk took, in percent.
    pub fast_pct: Option<f64>,
    /// Share of pages pinned with FOLL_LONGTERM, in percent.
    pub longterm_pct: Option<f64>,
    /// No pin or get activity in the current rate window and nothing held
    /// (see [`is_idle`]); such rows are hidden unless asked for.
    pub idle: bool,
}

/// Whether a row is idle: no pin or get calls and no pages in the current
/// rate window, and the tracking map, read, says it holds no pages.
///
/// A row whose holdings are unknown (`None`: the map not read yet, or read
/// before the row last pinned; see [`TableRow::outstanding`]) is not idle: a held or leaked pin must never be hidden, and "not read" is not
/// "nothing held". Every process that execs gets a row (execve copies its
/// arguments with `get_user_pages_remote`), which is what this filters out.
pub fn is_idle(pins_per_sec: f64, pages_per_sec: f64, outstanding: Option<u64>) -> bool {
    pins_per_sec <= 0.0 && pages_per_sec <= 0.0 && outstanding == Some(0)
}

/// The rows to draw, and how many idle rows were left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VisibleRows {
    /// The rows shown, in table order.
    pub rows: Vec<TableRow>,
    /// Idle rows left out (zero when idle rows are shown).
    pub idle_hidden: usize,
}

/// The rows of `table` (already filtered and sorted) that are drawn: all of
/// them with `show_idle`, else those not [`TableRow::idle`], keeping their
/// order. The hidden count is of rows that passed the filter, so it is the
/// number of rows that showing idle rows would add.
pub fn visible_rows(table: Vec<TableRow>, show_idle: bool) -> VisibleRows {
    if show_idle {
        return VisibleRows { rows: table, idle_hidden: 0 };
    }
    let all = table.len();
    let rows: Vec<TableRow> = table.into_iter().filter(|r| !r.idle).collect();
    VisibleRows { idle_hidden: all - rows.len(), rows }
}

/// One point of history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Seconds since the view started.
    pub t: f64,
    /// Pages pinned per second (gupwatch's count, else the kernel's).
    pub pin_rate: f64,
    /// Fast-path hit rate over the interval, in percent (none without
    /// `*_fast` pages in it).
    pub hit_pct: Option<f64>,
}

/// Rates of one attribution row over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RowRate {
    calls: f64,
    pages: f64,
}

type RowKey = (u32, String, String, String);

fn row_key(r: &CallerReport) -> RowKey {
    (r.tgid, r.comm.clone(), r.api.clone(), r.caller.clone())
}

/// Rows with the same key (one caller reached through several stacks)
/// summed, so deltas line up between samples.
fn merged(rows: &[CallerReport]) -> HashMap<RowKey, CallerReport> {
    let mut out: HashMap<RowKey, CallerReport> = HashMap::new();
    for r in rows {
        out.entry(row_key(r))
            .and_modify(|m| {
                m.calls += r.calls;
                m.pages += r.pages;
                m.errors += r.errors;
                m.fast_pages += r.fast_pages;
                m.slow_pages += r.slow_pages;
                m.longterm_pages += r.longterm_pages;
            })
            .or_insert_with(|| r.clone());
    }
    out
}

/// Everything the live view shows.
#[derive(Debug, Default)]
pub struct ViewModel {
    latest: Option<Sample>,
    latest_t: f64,
    first_t: Option<f64>,
    /// The kernel's counters at the first sample (for "since start").
    kernel_first: Option<(u64, u64)>,
    kernel_rate: Option<(f64, f64)>,
    pin_rate: Option<f64>,
    history: VecDeque<Point>,
    rates: HashMap<RowKey, RowRate>,
    /// Whether `rates` cover an interval: not before the second sample nor
    /// right after a restart, when every rate reads zero only for lack of
    /// a window and no row can be called idle.
    rated: bool,
    /// When each pinning attribution row last had calls (sample time), to
    /// tell whether the leak report was read after it.
    last_active: HashMap<RowKey, f64>,
    outstanding: Option<LeakReport>,
    /// The sample time the leak report came with.
    outstanding_t: f64,
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

/// (fast, fast + slow) pages of the `*_fast` APIs of a sample.
fn fast_split(s: &Sample) -> (u64, u64) {
    s.apis
        .iter()
        .filter(|a| a.fast_api() && a.kind != Kind::Unpin)
        .fold((0, 0), |(f, all), a| (f + a.fast_pages, all + a.fast_pages + a.slow_pages))
}

impl ViewModel {
    /// An empty model.
    pub fn new() -> ViewModel {
        ViewModel::default()
    }

    /// Takes a sample read at `t` seconds (any monotonic origin).
    pub fn ingest(&mut self, sample: Sample, t: f64) {
        self.first_t.get_or_insert(t);
        if self.kernel_first.is_none() {
            self.kernel_first = sample.kernel_counters;
        }
        if let Some(prev) = self.latest.take() {
            let prev = &prev;
            let dt = t - self.latest_t;
            // A sample from another kernel or daemon restart: start over.
            let restarted = prev.kernel != sample.kernel
                || match (prev.totals, sample.totals) {
                    (Some(a), Some(b)) => b.pinned_pages < a.pinned_pages || b.unpinned_pages < a.unpinned_pages,
                    _ => false,
                };
            if restarted {
                self.rates.clear();
                self.last_active.clear();
                self.rated = false;
            } else if dt > 0.0 {
                self.update_rates(prev, &sample, dt, t);
                self.rated = true;
                let hit_pct = {
                    let (f1, a1) = fast_split(&sample);
                    let (f0, a0) = fast_split(prev);
                    pct(f1.saturating_sub(f0), a1.saturating_sub(a0))
                };
                let pin_rate = self.pin_rate.or(self.kernel_rate.map(|k| k.0)).unwrap_or(0.0);
                self.history.push_back(Point { t, pin_rate, hit_pct });
                while self.history.front().is_some_and(|p| t - p.t > HISTORY_SECS) {
                    self.history.pop_front();
                }
            }
        }
        self.latest = Some(sample);
        self.latest_t = t;
    }

    fn update_rates(&mut self, prev: &Sample, now: &Sample, dt: f64, t: f64) {
        self.kernel_rate = match (prev.kernel_counters, now.kernel_counters) {
            (Some(a), Some(b)) => Some((rate(b.0, a.0, dt), rate(b.1, a.1, dt))),
            _ => None,
        };
        self.pin_rate = match (prev.totals, now.totals) {
            (Some(a), Some(b)) => Some(rate(b.pinned_pages, a.pinned_pages, dt)),
            _ => None,
        };
        let before = merged(&prev.rows);
        let now_rows = merged(&now.rows);
        self.rates = now_rows
            .iter()
            .map(|(k, r)| {
                let k = k.clone();
                let (calls0, pages0) = match before.get(&k) {
                    Some(b) => (b.calls, b.pages),
                    // Left out of a truncated list last time: its count
                    // is not all new, so show no rate rather than a spike.
                    None if prev.rows_truncated => (r.calls, r.pages),
                    None => (0, 0),
                };
                (k, RowRate { calls: rate(r.calls, calls0, dt), pages: rate(r.pages, pages0, dt) })
            })
            .collect();
        // Only FOLL_PIN calls can hold pages the leak report would show
        // (the tracking map records pins, not FOLL_GET references: an
        // exec's get_user_pages_remote never makes holdings unknown). Kept
        // for the rows of this sample only, so it stays bounded.
        let before = std::mem::take(&mut self.last_active);
        self.last_active = now_rows
            .iter()
            .filter(|(_, r)| r.kind == Kind::Pin)
            .filter_map(|(k, _)| {
                let moved = self.rates.get(k).is_some_and(|r| r.calls > 0.0 || r.pages > 0.0);
                let at = if moved { Some(t) } else { before.get(k).copied() };
                at.map(|at| (k.clone(), at))
            })
            .collect();
    }

    /// Takes a fresh leak report (or none: reduced mode, or not read).
    pub fn set_outstanding(&mut self, o: Option<LeakReport>) {
        self.outstanding = o;
        self.outstanding_t = self.latest_t;
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.latest.as_ref()
    }

    /// The latest leak report.
    pub fn outstanding(&self) -> Option<&LeakReport> {
        self.outstanding.as_ref()
    }

    /// Seconds between the first and the latest sample.
    pub fn uptime(&self) -> f64 {
        self.first_t.map_or(0.0, |f| self.latest_t - f)
    }

    /// Pages pinned per second over the last interval (gupwatch's count).
    pub fn pin_rate(&self) -> Option<f64> {
        self.pin_rate
    }

    /// The kernel's acquired and released pins per second over the last
    /// interval.
    pub fn kernel_rate(&self) -> Option<(f64, f64)> {
        self.kernel_rate
    }

    /// The kernel's acquired and released pins since the view started.
    pub fn kernel_since_start(&self) -> Option<(u64, u64)> {
        let now = self.latest.as_ref()?.kernel_counters?;
        let first = self.kernel_first?;
        Some((now.0.saturating_sub(first.0), now.1.saturating_sub(first.1)))
    }

    /// The fast-path hit rate since start, in percent.
    pub fn hit_pct(&self) -> Option<f64> {
        let (f, all) = fast_split(self.latest.as_ref()?);
        pct(f, all)
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Point> {
        self.history.iter()
    }

    /// APIs with latency data, for the histogram's selector.
    pub fn latency_apis(&self) -> Vec<String> {
        self.latest
            .iter()
            .flat_map(|s| s.apis.iter())
            .filter(|a| a.latency_log2.iter().any(|n| *n > 0))
            .map(|a| a.api.clone())
            .collect()
    }

    /// The log2 latency buckets since start of one API, or of every API.
    /// The hold-time histograms of the latest sample.
    pub fn hold_times(&self) -> &[gup_report::HoldHistogram] {
        self.latest.as_ref().map_or(&[], |s| s.hold_times.as_slice())
    }

    /// Pins held per cgroup in the latest sample.
    pub fn cgroups(&self) -> &[gup_report::CgroupPins] {
        self.latest.as_ref().map_or(&[], |s| s.cgroups.as_slice())
    }

    /// The call-latency histogram of one API, or of all.
    pub fn latency(&self, api: Option<&str>) -> [u64; LATENCY_BUCKETS] {
        let mut out = [0; LATENCY_BUCKETS];
        for a in self.latest.iter().flat_map(|s| s.apis.iter()).filter(|a| api.is_none_or(|x| x == a.api)) {
            for (o, n) in out.iter_mut().zip(&a.latency_log2) {
                *o += n;
            }
        }
        out
    }

    /// Whether the probes run (false before the first sample, too).
    pub fn full(&self) -> bool {
        self.latest.as_ref().is_some_and(|s| s.mode == Mode::Full)
    }

    /// The table: grouped by `view`, filtered by `filter` (a case-blind
    /// substring of the process name, call site or subsystem), sorted.
    /// Idle rows are included and marked ([`TableRow::idle`]);
    /// [`visible_rows`] leaves them out.
    pub fn table(&self, view: View, sort: SortKey, descending: bool, filter: &str) -> Vec<TableRow> {
        let Some(sample) = &self.latest else { return vec![] };
        let filter = filter.to_lowercase();
        let report_t = self.outstanding_t - HOLDINGS_LAG_SECS;
        let mut rows: Vec<TableRow> = self
            .groups(sample, view)
            .into_values()
            .filter(|g| g.counts)
            .map(|g| self.table_row(g, report_t))
            .filter(|r| {
                filter.is_empty()
                    || r.name.to_lowercase().contains(&filter)
                    || r.subsystem.to_lowercase().contains(&filter)
            })
            .collect();
        sort_rows(&mut rows, sort, descending);
        rows
    }

    /// The sample's rows and the leak report's holdings, grouped by
    /// process or by call site.
    fn groups(&self, sample: &Sample, view: View) -> BTreeMap<(u32, String), Group> {
        let mut groups: BTreeMap<(u32, String), Group> = BTreeMap::new();
        let key = |tgid: u32, comm: &str, caller: &str| match view {
            View::Processes => (tgid, comm.to_string()),
            View::CallSites => (0, caller.to_string()),
        };
        for (k, r) in merged(&sample.rows) {
            let g = groups.entry(key(r.tgid, &r.comm, &r.caller)).or_default();
            g.tgids.insert(r.tgid);
            match view {
                View::Processes => {
                    g.tgid = Some(r.tgid);
                    g.name = r.comm.clone();
                }
                View::CallSites => g.name = r.caller.clone(),
            }
            *g.subsystems.entry(r.subsystem.clone()).or_default() += r.pages.max(1);
            if r.kind == Kind::Unpin {
                continue;
            }
            g.counts = true;
            let rt = self.rates.get(&k).copied().unwrap_or_default();
            if let Some(&at) = self.last_active.get(&k) {
                g.last_active = Some(g.last_active.map_or(at, |a: f64| a.max(at)));
            }
            g.calls_rate += rt.calls;
            g.pages_rate += rt.pages;
            g.pages += r.pages;
            g.longterm += r.longterm_pages;
            if r.fast_api() {
                g.fast += r.fast_pages;
                g.fast_all += r.fast_pages + r.slow_pages;
            }
        }
        if let Some(o) = &self.outstanding {
            for h in &o.holdings {
                let g = groups.entry(key(h.owner_tgid, &h.comm, &h.caller.function)).or_default();
                if g.name.is_empty() {
                    g.tgid = (view == View::Processes).then_some(h.owner_tgid);
                    g.name = if view == View::Processes { h.comm.clone() } else { h.caller.function.clone() };
                    g.subsystems.insert(h.caller.subsystem.as_str().to_string(), h.pages);
                }
                g.tgids.insert(h.owner_tgid);
                g.counts = true;
                *g.outstanding.get_or_insert(0) += h.pages;
            }
            // Read, and nothing held: zero, not unknown.
            for g in groups.values_mut() {
                g.outstanding.get_or_insert(0);
            }
        }
        groups
    }

    /// One group as a table row; `report_t` is the latest time a row can
    /// have pinned and still be counted in the leak report.
    fn table_row(&self, g: Group, report_t: f64) -> TableRow {
        // Quiet now, but it pinned (FOLL_PIN) after the leak report
        // was made:
        // what it holds is not known yet (and a new pin must not
        // be hidden as idle). Busy rows keep the last report's
        // count; their rates keep them shown anyway.
        let quiet = g.calls_rate <= 0.0 && g.pages_rate <= 0.0;
        let outstanding = if quiet && g.last_active.is_some_and(|a| a >= report_t) { None } else { g.outstanding };
        let subsystem = g
            .subsystems
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        TableRow {
            tgid: g.tgid,
            name: g.name,
            subsystem,
            processes: g.tgids.len(),
            pins_per_sec: g.calls_rate,
            pages_per_sec: g.pages_rate,
            total_pages: g.pages,
            outstanding,
            fast_pct: pct(g.fast, g.fast_all),
            longterm_pct: pct(g.longterm, g.pages),
            idle: self.rated && is_idle(g.calls_rate, g.pages_rate, outstanding),
        }
    }
}

/// One row of the table being summed up: a process or a call site.
#[derive(Default)]
struct Group {
    tgid: Option<u32>,
    name: String,
    tgids: std::collections::BTreeSet<u32>,
    subsystems: BTreeMap<String, u64>,
    calls_rate: f64,
    pages_rate: f64,
    pages: u64,
    fast: u64,
    fast_all: u64,
    longterm: u64,
    outstanding: Option<u64>,
    last_active: Option<f64>,
    /// Whether it takes pins or references (unpin-only rows are not
    /// listed), or holds pins.
    counts: bool,
}

/// Sorts by `sort`; ties: the busiest first, then by name and pid, so rows
/// do not jump around between frames.
fn sort_rows(rows: &mut [TableRow], sort: SortKey, descending: bool) {
    let num = |r: &TableRow| -> f64 {
        match sort {
            SortKey::PinsPerSec => r.pins_per_sec,
            SortKey::PagesPerSec => r.pages_per_sec,
            SortKey::Outstanding => r.outstanding.map_or(-1.0, |o| o as f64),
            SortKey::FastPct => r.fast_pct.unwrap_or(-1.0),
            SortKey::LongtermPct => r.longterm_pct.unwrap_or(-1.0),
            SortKey::TotalPages | SortKey::Name => r.total_pages as f64,
        }
    };
    rows.sort_by(|a, b| {
        let primary = if sort == SortKey::Name { a.name.cmp(&b.name) } else { num(a).total_cmp(&num(b)) };
        let primary = if descending { primary.reverse() } else { primary };
        primary.then(b.total_pages.cmp(&a.total_pages)).then(a.name.cmp(&b.name)).then(a.tgid.cmp(&b.tgid))
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gup_report::{ApiReport, Caller, Holding, Leak, LeakKind, Subsystem, Totals};

    pub(crate) fn row(tgid: u32, comm: &str, api: &str, caller: &str, subsystem: &str, calls: u64, pages: u64) -> CallerReport {
        let fast_api = api.ends_with("_fast");
        CallerReport {
            tgid,
            comm: comm.into(),
            api: api.into(),
            kind: if api.starts_with("unpin") { Kind::Unpin } else if api.starts_with("get") { Kind::Get } else { Kind::Pin },
            caller: caller.into(),
            subsystem: subsystem.into(),
            module: None,
            calls,
            pages,
            errors: 0,
            fast_pages: if fast_api { pages * 3 / 4 } else { 0 },
            slow_pages: if fast_api { pages - pages * 3 / 4 } else { pages },
            longterm_pages: if subsystem == "io_uring" { pages } else { 0 },
        }
    }

    pub(crate) fn api(name: &str, pages: u64, fast: u64, slow: u64) -> ApiReport {
        let mut latency_log2 = vec![0; LATENCY_BUCKETS];
        latency_log2[10] = pages / 10;
        latency_log2[12] = pages / 20;
        ApiReport {
            api: name.into(),
            kind: if name.starts_with("unpin") { Kind::Unpin } else { Kind::Pin },
            attached: true,
            calls: pages / 4,
            pages,
            requested_pages: 0,
            errors: 0,
            zero_calls: 0,
            short_calls: 0,
            undone_pages: 0,
            untimed_calls: 0,
            latency_ns_sum: 0,
            fast_pages: fast,
            slow_pages: slow,
            unsplit_pages: 0,
            fell_back_calls: 0,
            longterm_calls: 0,
            longterm_pages: 0,
            latency_log2,
        }
    }

    /// `pages` held by a process from a call site, for `age` seconds.
    pub(crate) fn holding(tgid: u32, comm: &str, caller: &str, subsystem: Subsystem, pages: u64, age: f64) -> Holding {
        Holding {
            owner_tgid: tgid,
            comm: comm.into(),
            api: "pin_user_pages".into(),
            caller: Caller { function: caller.into(), subsystem, module: None },
            pages,
            oldest_age_secs: age,
            longterm: true,
            orphaned: false,
            owner_exited: false,
            holders: vec![],
            zones: Default::default(),
            object: gup_common::object::PinObject::NONE,
            exit_age_ns: 0,
            stack_id: 0,
        }
    }

    /// A leak report of these holdings and signals.
    pub(crate) fn report(kernel_outstanding: Option<i64>, holdings: Vec<Holding>, leaks: Vec<Leak>) -> LeakReport {
        LeakReport {
            tracked_outstanding: holdings.iter().map(|h| h.pages).sum(),
            kernel_outstanding,
            untracked_pins: 0,
            partial: false,
            holdings,
            leaks,
            notes: vec![],
            i915_objects: vec![],
            hold_times: vec![],
            cgroups: vec![],
            held_before_start: vec![],
        }
    }

    /// A hold-time histogram of `pages` released in the bucket that ends
    /// at 2^14 ns (16 µs).
    pub(crate) fn hold(subsystem: &str, longterm: bool, pages: u64) -> gup_report::HoldHistogram {
        let mut buckets = vec![0; gup_common::hold::HOLD_BUCKETS];
        buckets[4] = pages;
        gup_report::HoldHistogram { subsystem: subsystem.into(), longterm, count: pages, sum_seconds: pages as f64 * 10e-6, buckets }
    }

    /// A full-mode sample after `step` rounds of a workload: fio pins
    /// 100 pages/round through io_uring, dd 40 through direct I/O.
    pub(crate) fn sample(step: u64) -> Sample {
        let pinned = 140 * step;
        Sample {
            version: "0.1.0".into(),
            kernel: "6.12.0-test".into(),
            mode: Mode::Full,
            hooks_attached: 19,
            hooks_present: 19,
            hooks: vec![],
            totals: Some(Totals { pinned_pages: pinned, unpinned_pages: 40 * step, pin_calls: 3 * step, ..Totals::default() }),
            kernel_counters: Some((1_000_000 + pinned, 999_000 + 40 * step)),
            apis: vec![
                api("pin_user_pages_fast", pinned, 30 * step, 10 * step),
                api("pin_user_pages", 100 * step, 0, 100 * step),
                api("unpin_user_pages", 40 * step, 0, 0),
            ],
            rows: vec![
                row(100, "fio", "pin_user_pages", "io_sqe_buffer_register", "io_uring", step, 100 * step),
                row(200, "dd", "pin_user_pages_fast", "bio_iov_iter_get_pages", "direct-io", 2 * step, 40 * step),
                row(200, "dd", "unpin_user_pages", "bio_release_pages", "direct-io", 2 * step, 40 * step),
            ],
            rows_truncated: false,
            accounted: None,
            hold_times: vec![hold("direct-io", false, 40 * step)],
            cgroups: vec![gup_report::CgroupPins {
                cgroup: crate::model::cgroups::parse_path("/system.slice/fio.service"),
                pages: 100 * step,
            }],
        }
    }

    #[test]
    fn rates_come_from_deltas() {
        let mut vm = ViewModel::new();
        vm.ingest(sample(1), 10.0);
        assert_eq!(vm.pin_rate(), None, "one sample has no rate");
        vm.ingest(sample(3), 12.0);
        assert_eq!(vm.pin_rate(), Some(140.0));
        assert_eq!(vm.kernel_rate(), Some((140.0, 40.0)));
        assert_eq!(vm.kernel_since_start(), Some((280, 80)));
        assert_eq!(vm.uptime(), 2.0);
        let t = vm.table(View::Processes, SortKey::PagesPerSec, true, "");
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].name.as_str(), t[0].tgid, t[0].pages_per_sec, t[0].pins_per_sec), ("fio", Some(100), 100.0, 1.0));
        assert_eq!(t[0].longterm_pct, Some(100.0));
        assert_eq!(t[0].fast_pct, None, "pin_user_pages has no fast path");
        assert_eq!((t[1].name.as_str(), t[1].pages_per_sec, t[1].fast_pct), ("dd", 40.0, Some(75.0)));
        assert_eq!(t[1].outstanding, None, "tracking map not read yet");
        let h: Vec<&Point> = vm.history().collect();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].hit_pct, Some(75.0));
    }

    #[test]
    fn call_sites_view_groups_by_caller() {
        let mut vm = ViewModel::new();
        let mut s = sample(1);
        s.rows.push(row(300, "fio2", "pin_user_pages", "io_sqe_buffer_register", "io_uring", 1, 10));
        vm.ingest(s, 0.0);
        let t = vm.table(View::CallSites, SortKey::TotalPages, true, "");
        assert_eq!(t[0].name, "io_sqe_buffer_register");
        assert_eq!((t[0].processes, t[0].total_pages, t[0].tgid), (2, 110, None));
        assert_eq!(t[1].name, "bio_iov_iter_get_pages");
        assert!(!t.iter().any(|r| r.name == "bio_release_pages"), "unpin-only rows are not listed");
    }

    #[test]
    fn sort_filter_and_outstanding() {
        let mut vm = ViewModel::new();
        vm.ingest(sample(1), 0.0);
        vm.ingest(sample(2), 1.0);
        let fio = holding(100, "fio", "io_sqe_buffer_register", Subsystem::IoUring, 256, 30.0);
        let qemu = holding(400, "qemu", "vfio_pin_pages_remote", Subsystem::Vfio, 100, 3.0);
        let leaks = vec![Leak::of_holding(LeakKind::LongHeld, &fio)];
        vm.set_outstanding(Some(report(Some(400), vec![fio, qemu], leaks)));
        let t = vm.table(View::Processes, SortKey::Outstanding, true, "");
        let names: Vec<(&str, Option<u64>)> = t.iter().map(|r| (r.name.as_str(), r.outstanding)).collect();
        assert_eq!(names, [("fio", Some(256)), ("qemu", Some(100)), ("dd", Some(0))], "idle holders are listed");
        let t = vm.table(View::Processes, SortKey::Outstanding, false, "");
        assert_eq!(t[0].name, "dd");
        let t = vm.table(View::Processes, SortKey::Name, false, "");
        assert_eq!(t.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["dd", "fio", "qemu"]);
        assert_eq!(vm.table(View::Processes, SortKey::Name, false, "VFIO")[0].name, "qemu", "by subsystem");
        assert_eq!(vm.table(View::Processes, SortKey::Name, false, "dd").len(), 1, "by comm");
        assert!(vm.table(View::Processes, SortKey::Name, false, "nothing").is_empty());
    }

    /// [`sample`] plus a shell that exec'd once, long ago: a
    /// `get_user_pages_remote` row whose counts never move.
    fn with_exec(step: u64) -> Sample {
        let mut s = sample(step);
        s.rows.push(row(300, "sh", "get_user_pages_remote", "copy_strings", "exec", 3, 3));
        s
    }

    fn held_by(tgid: u32, comm: &str, caller: &str, pages: u64) -> LeakReport {
        report(None, vec![Holding { longterm: false, ..holding(tgid, comm, caller, Subsystem::Other, pages, 1.0) }], vec![])
    }

    fn nothing_held() -> LeakReport {
        report(None, vec![], vec![])
    }

    fn names(v: &VisibleRows) -> Vec<&str> {
        v.rows.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn idle_is_no_rate_and_nothing_held() {
        assert!(is_idle(0.0, 0.0, Some(0)));
        assert!(!is_idle(0.5, 0.0, Some(0)), "calls in the window");
        assert!(!is_idle(0.0, 3.0, Some(0)), "pages in the window");
        assert!(!is_idle(0.0, 0.0, Some(1)), "a held pin keeps its row");
        assert!(!is_idle(0.0, 0.0, None), "holdings unknown: not provably idle");
    }

    #[test]
    fn idle_rows_are_hidden_counted_and_shown_on_request() {
        let mut vm = ViewModel::new();
        vm.ingest(with_exec(1), 0.0);
        vm.set_outstanding(Some(nothing_held()));
        let t = vm.table(View::Processes, SortKey::Name, false, "");
        assert!(t.iter().all(|r| !r.idle), "one sample: no window, so nothing is idle yet");
        assert_eq!(visible_rows(t, false).idle_hidden, 0);

        vm.ingest(with_exec(2), 1.0);
        let t = vm.table(View::Processes, SortKey::Name, false, "");
        assert_eq!(t.iter().filter(|r| r.idle).map(|r| r.name.as_str()).collect::<Vec<_>>(), ["sh"]);
        let hidden = visible_rows(t.clone(), false);
        assert_eq!((names(&hidden), hidden.idle_hidden), (vec!["dd", "fio"], 1));
        // The toggle: everything, in the same order, nothing counted hidden.
        let shown = visible_rows(t, true);
        assert_eq!((names(&shown), shown.idle_hidden), (vec!["dd", "fio", "sh"], 0));

        // Sorting and filtering apply to what is visible; the count is of
        // idle rows the filter lets through (what `i` would add).
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, true, ""), false);
        assert_eq!(names(&v), ["fio", "dd"]);
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, "sh"), false);
        assert_eq!((v.rows.len(), v.idle_hidden), (0, 1));
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, "fio"), false);
        assert_eq!((names(&v), v.idle_hidden), (vec!["fio"], 0));

        // Call sites: the exec call site is idle too.
        let v = visible_rows(vm.table(View::CallSites, SortKey::Name, false, ""), false);
        assert_eq!(v.idle_hidden, 1);
        assert!(!names(&v).contains(&"copy_strings"), "{:?}", names(&v));
    }

    #[test]
    fn held_or_unknown_pins_keep_a_row_visible() {
        let mut vm = ViewModel::new();
        vm.ingest(with_exec(1), 0.0);
        vm.ingest(with_exec(2), 1.0);
        // The shell still holds a page: a held (or leaked) pin is shown.
        vm.set_outstanding(Some(held_by(300, "sh", "copy_strings", 1)));
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false);
        assert_eq!((names(&v), v.idle_hidden), (vec!["dd", "fio", "sh"], 0));
        let v = visible_rows(vm.table(View::CallSites, SortKey::Name, false, ""), false);
        assert!(names(&v).contains(&"copy_strings"), "{:?}", names(&v));
        // A holder that never pinned in view (only in the leak report).
        vm.set_outstanding(Some(held_by(400, "qemu", "vfio_pin_pages_remote", 8)));
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false);
        assert_eq!((names(&v), v.idle_hidden), (vec!["dd", "fio", "qemu"], 1));
        // The tracking map not read (or unreadable): nothing is hidden.
        vm.set_outstanding(None);
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false);
        assert_eq!((names(&v), v.idle_hidden), (vec!["dd", "fio", "sh"], 0));
    }

    #[test]
    fn rows_go_idle_when_activity_stops_and_restarts_judge_nothing() {
        let mut vm = ViewModel::new();
        vm.ingest(with_exec(1), 0.0);
        vm.set_outstanding(Some(nothing_held()));
        vm.ingest(with_exec(2), 1.0);
        // Nothing moved since: quiet, but fio and dd pinned after the leak
        // report was made, so what they hold is unknown and they stay.
        vm.ingest(with_exec(2), 2.0);
        let t = vm.table(View::Processes, SortKey::Name, false, "");
        let held: Vec<(&str, Option<u64>)> = t.iter().map(|r| (r.name.as_str(), r.outstanding)).collect();
        assert_eq!(held, [("dd", None), ("fio", None), ("sh", Some(0))]);
        let v = visible_rows(t, false);
        assert_eq!((names(&v), v.idle_hidden), (vec!["dd", "fio"], 1));
        // A report made well after their last pin says they hold nothing.
        // (HOLDINGS_LAG_SECS after it: a report at 4 s may have been made
        // at 1 s, as they pinned.)
        vm.ingest(with_exec(2), 4.0);
        vm.set_outstanding(Some(nothing_held()));
        assert_eq!(visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false).idle_hidden, 1);
        vm.ingest(with_exec(2), 4.5);
        vm.set_outstanding(Some(nothing_held()));
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false);
        assert_eq!((v.rows.len(), v.idle_hidden), (0, 3));
        // Work again: the rows come back.
        vm.ingest(with_exec(3), 5.0);
        assert_eq!(visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false).idle_hidden, 1);
        // A daemon restart (counters go back): no window, nothing hidden.
        vm.ingest(with_exec(1), 6.0);
        let v = visible_rows(vm.table(View::Processes, SortKey::Name, false, ""), false);
        assert_eq!((v.rows.len(), v.idle_hidden), (3, 0));
    }

    #[test]
    fn get_calls_never_make_holdings_unknown() {
        // A shell execs between two readings (a get_user_pages_remote,
        // FOLL_GET: not tracked, it can hold nothing the report shows).
        let mut vm = ViewModel::new();
        vm.ingest(sample(1), 0.0);
        vm.set_outstanding(Some(nothing_held()));
        vm.ingest(with_exec(2), 1.0);
        let sh = |vm: &ViewModel| vm.table(View::Processes, SortKey::Name, false, "sh").into_iter().next();
        assert!(sh(&vm).is_some_and(|r| !r.idle && r.pins_per_sec > 0.0), "active in its window");
        vm.ingest(with_exec(2), 2.0);
        let r = sh(&vm);
        assert!(r.as_ref().is_some_and(|r| r.idle && r.outstanding == Some(0)), "quiet, and gets are never held: {r:?}");
        // fio pinned after the report too, and stays (see above).
        assert!(vm.table(View::Processes, SortKey::Name, false, "fio").iter().all(|r| !r.idle && r.outstanding.is_none()));
    }

    #[test]
    fn truncated_rows_do_not_spike_and_restarts_reset() {
        let mut vm = ViewModel::new();
        let mut a = sample(1);
        a.rows_truncated = true;
        a.rows.retain(|r| r.comm != "dd");
        vm.ingest(a, 0.0);
        vm.ingest(sample(2), 1.0);
        let t = vm.table(View::Processes, SortKey::Name, false, "");
        assert_eq!(t[0].name, "dd");
        assert_eq!(t[0].pages_per_sec, 0.0, "first seen after truncation: no rate");
        // A daemon restart: counters go back; no negative or huge rates.
        vm.ingest(sample(1), 2.0);
        assert!(vm.table(View::Processes, SortKey::Name, false, "").iter().all(|r| r.pages_per_sec == 0.0));
    }

    #[test]
    fn latency_sums_apis_or_picks_one() {
        let mut vm = ViewModel::new();
        vm.ingest(sample(10), 0.0);
        assert_eq!(vm.latency(None)[10], 140 + 100 + 40);
        assert_eq!(vm.latency(Some("pin_user_pages"))[10], 100);
        assert_eq!(vm.latency_apis(), ["pin_user_pages_fast", "pin_user_pages", "unpin_user_pages"]);
    }

    #[test]
    fn reduced_mode_uses_the_kernel_rate() {
        let mut vm = ViewModel::new();
        let reduced = |acq| Sample {
            mode: Mode::Reduced,
            totals: None,
            apis: vec![],
            rows: vec![],
            kernel_counters: Some((acq, 0)),
            ..sample(0)
        };
        vm.ingest(reduced(100), 0.0);
        vm.ingest(reduced(600), 2.0);
        assert!(!vm.full());
        assert_eq!(vm.history().next().map(|p| p.pin_rate), Some(250.0));
        assert!(vm.table(View::Processes, SortKey::PagesPerSec, true, "").is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut vm = ViewModel::new();
        for i in 0..2000u64 {
            vm.ingest(sample(i), i as f64);
        }
        assert!(vm.history().count() as f64 <= HISTORY_SECS + 1.0);
    }
}
