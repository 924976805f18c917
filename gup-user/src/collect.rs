//! Collection: one [`Reading`] of every data source, on demand.
//!
//! A pin's way to the outputs: the probes count into `API_STATS`,
//! [`crate::probes::reader`] sums the CPUs into a [`crate::model::counters::Snapshot`], and
//! [`Collector::gather`] adds `/proc/vmstat`, the resolved attribution rows,
//! the top processes, the probes' miss counts and the leak report. Every
//! front end reads that [`Reading`]: `/metrics` ([`crate::export::prometheus`]),
//! `/api/snapshot` ([`crate::export::api`]) and the live view (`tui`).
//! Nothing here knows an output format.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use gup_common::Diag;

use gup_report::{Accounted, Caller, LeakReport};

use crate::{
    model::attribution,
    kernel::kallsyms::Kallsyms,
    model::leaks::{self, GrowthTracker, LeakPolicy},
    probes::loader::Probes,
    kernel::plan::ProbePlan,
    kernel::vmstat::{self, FollPinCounters},
};

mod reading;
#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

pub use reading::{ErrnoSeries, HookHealth, LeakMetrics, PlanSummary, ProcessSeries, ReadErrors, Reading, TopProcesses, ERRNO_SERIES, OTHER_COMM};
pub(crate) use reading::{kind_index, row_kind, KINDS};

/// How many process names get their own series by default.
pub const DEFAULT_TOP_PROCESSES: usize = 10;

/// Collector settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Process names with their own `gupwatch_process_*_pages_total` series.
    pub top_processes: usize,
    /// Write `/proc/sys/vm/stat_refresh` before reading `/proc/vmstat`, at
    /// most once per this interval (`ZERO`: every reading), so the
    /// kernel's counters are exact; `None`: never. The write queues work
    /// on every CPU, the isolated (nohz_full) ones too, so `gupwatch run`
    /// leaves it off unless asked (`--vmstat-refresh`); the live view and
    /// the summary, run by hand, refresh at every reading.
    pub vmstat_refresh: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { top_processes: DEFAULT_TOP_PROCESSES, vmstat_refresh: Some(Duration::ZERO) }
    }
}

/// The leak report is made at most this often; scrapes in between reuse
/// it (ages in it are then up to this much older).
pub const LEAK_REPORT_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Accounted pins are read at most this often; scrapes in between reuse
/// the reading.
pub const ACCOUNTED_MIN_INTERVAL: Duration = Duration::from_millis(900);

/// Reads the live data sources when asked (a scrape, an API request, a
/// tick of the live view): the one place exporters and the live view get
/// their data from.
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
    /// False once a `stat_refresh` write failed (not root): not tried again.
    vmstat_refresh: bool,
    /// When `stat_refresh` was last written.
    last_refresh: Option<Instant>,
    leak_policy: LeakPolicy,
    growth: GrowthTracker,
    last_leak_report: Option<LeakReport>,
    /// When `last_leak_report` was made.
    last_leak_at: Option<std::time::Instant>,
    /// The last accounted-pins reading and when it was made.
    accounted: Option<(Instant, Arc<Accounted>)>,
    /// Where accounted pins are read (`/proc`).
    proc_root: std::path::PathBuf,
    /// Stacks whose subsystem the programs were told (hold times).
    classified: std::collections::HashSet<i64>,
    /// Whether classifying failed once (said once).
    classify_failed: bool,
    /// cgroup ids to paths.
    cgroup_names: crate::model::cgroups::CgroupNames,
    /// Pins per cgroup, made with the leak report.
    last_cgroups: Vec<gup_report::CgroupPins>,
    /// What the kernel showed pinned when the collector was made over
    /// attached probes (`crate::model::beforestart`).
    before_start: Option<crate::model::beforestart::Inventory>,
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
        // Read right after the probes attached: a buffer registered in
        // between would be counted both here and in the tracking map.
        let before_start = probes.as_ref().map(|_| crate::model::beforestart::Inventory::take(std::path::Path::new("/proc")));
        Collector {
            probes,
            plan,
            settings,
            kallsyms,
            stacks: HashMap::new(),
            top: TopProcesses::default(),
            read_errors: ReadErrors::default(),
            vmstat_refresh: true,
            last_refresh: None,
            leak_policy: LeakPolicy::default(),
            growth: GrowthTracker::default(),
            last_leak_report: None,
            last_leak_at: None,
            accounted: None,
            proc_root: std::path::PathBuf::from("/proc"),
            classified: Default::default(),
            classify_failed: false,
            cgroup_names: Default::default(),
            last_cgroups: Vec::new(),
            before_start,
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
    pub fn leak_report(&mut self, data: &Reading) -> Option<LeakReport> {
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
        let layout = &p.plan.page_layout;
        let placement = crate::kernel::placement::Placement::read(layout.vmemmap_base, layout.size);

        let mut report = leaks::analyze(
            &tracking,
            &leaks::Context {
                now_ns: leaks::monotonic_ns(),
                since_ns: 0,
                caller: &caller,
                site: &|ip| attribution::caller_of(&[ip], kallsyms),
                alive: &leaks::process_alive,
                holders: &|o| p.holders(o),
                kernel_outstanding: data.vmstat.map(|v| v.outstanding()),
                untracked_pins: untracked,
                placement: placement.as_ref(),
            },
            &self.leak_policy,
            Some(&mut self.growth),
        );
        // The kernel's outstanding pins beyond those tracked bound what can
        // still be held from before.
        let gap = report.kernel_outstanding.map(|k| (k.max(0) as u64).saturating_sub(report.tracked_outstanding));
        report.held_before_start = self
            .before_start
            .as_ref()
            .map(|b| b.still_held(&crate::model::beforestart::Inventory::take(&self.proc_root), gap))
            .unwrap_or_default();
        Some(report)
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
    pub fn follow_modules(&mut self) -> crate::probes::loader::ModuleEvents {
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
    pub fn gather(&mut self) -> Arc<Reading> {
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
        let mut data = Reading::new(self.plan.clone(), snapshot, vmstat, rows, &mut self.top, self.settings);
        data.read_errors = self.read_errors;
        data.vmstat_refreshed_ago = self.last_refresh.map(|t| t.elapsed());
        data.probe_misses = self
            .probes
            .as_ref()
            .map(|p| p.probe_misses().into_iter().map(|(a, n)| (a.symbol(), n)).collect())
            .unwrap_or_default();
        data.probe_detached = self.probes.as_ref().map(Probes::probe_detached).unwrap_or_default();
        data.bpf_stats_enabled = crate::probes::bpfstats::enabled();
        data.bpf_programs = self.probes.as_ref().map(Probes::program_runs).unwrap_or_default();
        data.hold_times = self.hold_times();
        // Kept whole for /api/snapshot?leaks=1 and the live view: a second
        // analysis would feed the growth tracker the same reading twice.
        // It reads the whole tracking map (a syscall per folio), so scrapes
        // closer together than LEAK_REPORT_MIN_INTERVAL share one.
        let fresh = self.last_leak_at.is_some_and(|t| t.elapsed() < LEAK_REPORT_MIN_INTERVAL);
        if !fresh {
            self.last_leak_report = self.leak_report(&data);
            self.last_leak_at = Some(std::time::Instant::now());
            self.last_cgroups = self.cgroup_pins(&data);
        }
        data.cgroups = self.last_cgroups.clone();
        data.leaks = self.last_leak_report.as_ref().map(LeakMetrics::from_report);
        if self.probes.is_none() {
            data.accounted = Some(self.accounted());
        }
        data.gather_duration = t0.elapsed();
        Arc::new(data)
    }

    /// Pins held now per cgroup, from the leak report's holdings and the
    /// cgroup of each owner's pin calls.
    fn cgroup_pins(&mut self, data: &Reading) -> Vec<gup_report::CgroupPins> {
        let (Some(report), Some(snap)) = (&self.last_leak_report, &data.snapshot) else { return vec![] };
        let of = crate::model::cgroups::cgroup_of_processes(&snap.attrib);
        crate::model::cgroups::pinned_by_cgroup(
            report.holdings.iter().map(|h| (h.owner_tgid, h.pages)),
            &of,
            &mut self.cgroup_names,
            crate::model::cgroups::DEFAULT_TOP_CGROUPS,
        )
    }

    /// Classifies the stacks resolved so far for the programs' hold-time
    /// histograms, then reads and folds them (`crate::model::holdtime`).
    fn hold_times(&mut self) -> Vec<gup_report::HoldHistogram> {
        let Some(p) = self.probes.as_mut() else { return vec![] };
        let kallsyms = &self.kallsyms;
        for (id, ips) in &self.stacks {
            if self.classified.contains(id) {
                continue;
            }
            let s = attribution::caller_of(ips, kallsyms).subsystem;
            match p.maps.hold.classify(*id, s) {
                Ok(()) => {
                    self.classified.insert(*id);
                }
                // Unclassified stacks stay in the pending map, which is
                // folded below: only the cost rises, not the answer.
                Err(e) => {
                    if !self.classify_failed {
                        eprintln!("gupwatch: hold times: cannot classify stack {id}: {e}");
                        self.classify_failed = true;
                    }
                    break;
                }
            }
        }
        let raw = p.maps.hold.read();
        let stacks = &self.stacks;
        let maps = &p.maps;
        crate::model::holdtime::fold(&raw, |id| {
            let ips = match stacks.get(&id) {
                Some(ips) => ips.clone(),
                None => maps.stack(id)?,
            };
            Some(attribution::caller_of(&ips, kallsyms).subsystem)
        })
    }

    /// The accounted pins, read again when the last reading is older than
    /// [`ACCOUNTED_MIN_INTERVAL`]: a walk of /proc per scrape would let a
    /// client flood (or many viewers) cost a /proc walk each.
    fn accounted(&mut self) -> Arc<Accounted> {
        match &self.accounted {
            Some((at, a)) if at.elapsed() < ACCOUNTED_MIN_INTERVAL => Arc::clone(a),
            _ => {
                let a = Arc::new(crate::model::accounted::scan(&self.proc_root));
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

    fn read_vmstat(&mut self) -> Option<FollPinCounters> {
        let due = self.settings.vmstat_refresh.is_some_and(|min| self.last_refresh.is_none_or(|t| t.elapsed() >= min));
        if self.vmstat_refresh && due {
            match vmstat::read(true) {
                Ok(c) => {
                    self.last_refresh = Some(Instant::now());
                    return Some(c);
                }
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

