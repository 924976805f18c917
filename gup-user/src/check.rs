//! `gupwatch check`: drive the kernel through real syscalls and compare what
//! the probes saw with the kernel's own FOLL_PIN accounting.
//!
//! Each scenario is measured in a quiet window: the vmstat counters must
//! settle (some kernels unpin asynchronously: io_uring teardown, direct I/O
//! completion) before each snapshot, and gupwatch's counters are read
//! between two identical vmstat readings so both describe the same moment.
//!
//! The self-tests live here, beside the data path they test: [`scenarios`]
//! (the built-in workloads that pin through ordinary syscalls),
//! [`mod@reference`] (a model of GUP to check the kernel against), [`stress`]
//! (`gupwatch stress`, the in-guest half of `cargo xtask stress`) and
//! [`mod@bench`] (`gupwatch bench-workload`).

use std::{collections::BTreeMap, time::Duration};

use gup_common::Api;
use serde::Serialize;

use gup_report::Subsystem;

use crate::{
    model::attribution,
    kernel::errno::errno_name,
    kernel::kallsyms::Kallsyms,
    probes::loader::Probes,
    model::counters::Snapshot,
    kernel::plan::ProbePlan,
    model::leaks::{self, LeakPolicy},
    check::reference::KernelProfile,
    check::scenarios::{Expectation, ExpectedHolder, ExpectedLeak, ExpectedPath, PinPath, Scenario, ScenarioError},
    kernel::vmstat::{self, FollPinCounters},
};

mod select;
pub mod bench;
pub mod reference;
pub mod scenarios;
pub mod stress;

pub use select::{CheckOptions, NoMatch, PreAttach, Selection};

/// Errors that stop the whole check (a failing scenario does not).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The kernel's counters could not be read.
    #[error(transparent)]
    Vmstat(#[from] vmstat::VmstatError),
    /// gupwatch's maps could not be read.
    #[error(transparent)]
    Read(#[from] crate::probes::reader::ReadError),
    /// The counters never held still long enough to measure.
    #[error("/proc/vmstat's nr_foll_pin_* counters kept moving for {0:?}: something else on this machine is pinning pages, so an exact comparison is impossible. Run the check on a quiet machine or in a VM (`cargo xtask vm -- gupwatch check`)")]
    Noisy(Duration),
}

/// Calls and pages one API saw during a scenario.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct ApiDelta {
    /// Calls.
    pub calls: u64,
    /// Pages (or folio pins) pinned, referenced or released.
    pub pages: u64,
}

/// The outcome of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// FOLL_PIN pins gupwatch saw taken.
    pub pinned_pages: u64,
    /// FOLL_PIN pins gupwatch saw released.
    pub unpinned_pages: u64,
    /// FOLL_GET references gupwatch saw taken (not pins).
    pub referenced_pages: u64,
    /// Change of `nr_foll_pin_acquired`.
    pub vmstat_acquired: u64,
    /// Change of `nr_foll_pin_released`.
    pub vmstat_released: u64,
    /// gupwatch's pin and unpin counts equal the kernel's, and the scenario ran.
    pub exact: bool,
    /// Whether this path pins pages on this kernel (so zero would be wrong).
    pub pins_expected: bool,
    /// Calls to pin functions.
    pub pin_calls: u64,
    /// Calls to unpin functions.
    pub unpin_calls: u64,
    /// FOLL_PIN pages the lock-free fast walk took.
    pub fast_pages: u64,
    /// FOLL_PIN pages the slow path took.
    pub slow_pages: u64,
    /// FOLL_PIN pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
    /// The subsystem that pinned (or, if nothing was pinned, released) most
    /// of the scenario's pages, from the kernel call stacks.
    pub subsystem: Option<Subsystem>,
    /// The kernel function that called into GUP for most of those pages.
    pub caller: Option<String>,
    /// Failed GUP calls by function and errno name.
    pub errors: BTreeMap<String, u64>,
    /// Pins taken and released again inside the same call (included in
    /// `pinned_pages` and `unpinned_pages`, as the kernel counts them).
    pub undone_pages: u64,
    /// Those pins by reason (`fast_walk`, `migration`, `slow_path`: see
    /// [`gup_common::Reverted`]); reasons with none are left out.
    pub reverted_pages: BTreeMap<&'static str, u64>,
    /// What the scenario should make the kernel do.
    pub expected: Expectation,
    /// The errno the scenario's syscall returned, if it failed.
    pub observed_errno: Option<i32>,
    /// Every expectation held (path, errno, subsystem, LONGTERM, leak).
    pub expectations_met: bool,
    /// The expectations that did not hold, in words.
    pub mismatches: Vec<String>,
    /// Pins tracked as outstanding after the run, taken during it.
    pub outstanding_pages: i64,
    /// The kernel's (acquired - released) delta is accounted for: pins
    /// tracked as outstanding, plus pins not tracked (map full), minus
    /// unpins of those untracked pins.
    pub outstanding_exact: bool,
    /// Pins during the run that the tracking map could not record.
    pub untracked_pins: u64,
    /// Unpins during the run that matched no tracked pin.
    pub unbalanced_unpins: u64,
    /// The ledger's view of the run was partial: some pin went untracked.
    pub partial: bool,
    /// Unbalanced unpins that are not of pins this scenario took before
    /// gupwatch attached (`unbalanced_unpins - pre_attach_unpins`): unpins
    /// of pins gupwatch should have seen taken. 0 when the ledger holds.
    pub unbalanced_pages: u64,
    /// Pins the scenario took before gupwatch attached its probes
    /// ([`Scenario::before_attach`]); its run releases them.
    pub pre_attach_pins: u64,
    /// Unbalanced unpins accounted as releases of those pre-attach pins:
    /// reported as such, never as leaks.
    pub pre_attach_unpins: u64,
    /// The scenario requires the ledger to hold ([`Scenario::ledger_must_hold`]).
    pub ledger_required: bool,
    /// Not partial, no untracked pin, no unbalanced page.
    pub ledger_holds: bool,
    /// Runs of gupwatch's programs the kernel skipped during the run
    /// (`recursion_misses`, summed over the hooks).
    pub probe_misses: u64,
    /// Unpins whose entry program did not run, counted by the
    /// `gup_put_folio` calls inside them.
    pub entries_skipped: u64,
    /// Unpins whose entry program did not run, counted at their exit
    /// (`gup_common::skipped`).
    pub entries_counted_at_exit: u64,
    /// Unpins whose entry program did not run and whose exit could not
    /// read their arguments (kretprobe): lost unless counted inside.
    pub entries_uncounted: u64,
    /// Pins placed again after a concurrent unpin removed the tracking
    /// record they landed in (`gupwatch_ledger_replaced_pins_total`).
    pub ledger_replaced: u64,
    /// Leak signals for pins taken during the run (long-held threshold 0 s).
    pub leaks: Vec<LeakSummary>,
    /// The leak the scenario should cause, if any.
    pub expected_leak: Option<ExpectedLeak>,
    /// Pins taken during the run whose creator exited and that a live
    /// process holds (the leak analysis's holders), right after the run.
    pub held: Vec<HeldSummary>,
    /// The live process that should hold the pins, if any.
    pub expected_holder: Option<ExpectedHolder>,
    /// `exact`, `outstanding_exact`, `expectations_met`, `agree`, no
    /// contract broken, and `ledger_holds` where `ledger_required`.
    pub passed: bool,
    /// Per-function breakdown (functions that saw calls only).
    pub apis: BTreeMap<&'static str, ApiDelta>,
    /// Why the numbers are what they are, when that needs saying.
    pub note: String,
    /// The scenario's own failure, if it could not run.
    pub error: Option<String>,
    /// The scenario's memory and syscall as described to the reference
    /// model, with the pages' presence read from `/proc/self/pagemap`.
    pub reference_setup: Option<reference::Setup>,
    /// The reference model's prediction for this kernel.
    pub reference: Option<reference::Prediction>,
    /// The kernel did what the model predicted: every count, the fast/slow
    /// split, the failing GUP call and the syscall's errno.
    pub agree: bool,
    /// Why not, in words.
    pub disagreement: Option<String>,
    /// The model's account of the GUP calls (and what the pagemap capture
    /// changed in the description).
    pub reference_note: String,
    /// GUP API contracts broken during the scenario (set-up to clean-up),
    /// from gupwatch's per-function counters.
    pub contract_violations: Vec<reference::Violation>,
    /// Why this machine cannot run the scenario (then it is listed under
    /// the report's `not_reachable`, neither passed nor failed).
    #[serde(skip)]
    pub not_reachable: Option<String>,
}

/// A scenario this machine cannot run.
#[derive(Clone, Debug, Serialize)]
pub struct NotReachable {
    /// Scenario name.
    pub name: String,
    /// Why, and what would make it reachable.
    pub reason: String,
}

/// A leak signal in a scenario report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LeakSummary {
    /// Signal kind.
    pub kind: &'static str,
    /// Pins concerned.
    pub pages: u64,
    /// Owner process.
    pub owner_tgid: Option<u32>,
    /// Pin call site.
    pub caller: String,
    /// The zone of the pages (`Movable` for `weak_pin`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Pins held by live processes other than their exited creator, in a
/// scenario report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeldSummary {
    /// The creator.
    pub owner_tgid: u32,
    /// Pins held.
    pub pages: u64,
    /// Who holds them.
    pub holders: Vec<gup_report::ObjectHolder>,
}

/// The whole check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// `uname -r`.
    pub kernel: String,
    /// Hooks attached.
    pub hooks_attached: usize,
    /// Hooks the kernel has that could not be attached.
    pub hooks_failed: Vec<String>,
    /// Whether fast/slow splits are measured (the slow-path hook attached).
    pub fast_path_split: bool,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Every scenario exact.
    pub exact: bool,
    /// Every scenario passed (exact and as expected).
    pub passed: bool,
    /// Capacity of the pin tracking map (folios).
    pub track_capacity: u32,
    /// Pins the tracking map could not record, over the whole check.
    pub untracked_pins: u64,
    /// The rules of this kernel the reference model applied, and why.
    pub reference_profile: KernelProfile,
    /// Every scenario agreed with the reference model.
    pub agree: bool,
    /// No scenario broke a GUP API contract.
    pub contracts_hold: bool,
    /// Scenarios this machine cannot run (neither passed nor failed).
    pub not_reachable: Vec<NotReachable>,
    /// Some scenario's ledger view was partial.
    pub partial: bool,
    /// The phase before the probes attached.
    pub pre_attach: PreAttach,
}

/// How long the counters must hold still, and how long to wait for that.
const QUIET: Duration = Duration::from_millis(150);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

fn settle_options() -> vmstat::SettleOptions {
    vmstat::SettleOptions { quiet: QUIET, timeout: SETTLE_TIMEOUT, ..Default::default() }
}

/// Runs the selected scenarios against attached probes (their phase before
/// attach, if any, has run: [`Selection::before_attach`]).
pub fn run(probes: &Probes, selection: Selection) -> Result<CheckReport, CheckError> {
    let first = probes.maps.snapshot()?;
    // Symbols for naming callers; without them callers show as unknown.
    let kallsyms = Kallsyms::from_proc().unwrap_or_default();
    let mut reports = vec![];
    let mut not_reachable = vec![];
    let profile = KernelProfile::from_plan(&probes.plan);
    let Selection { scenarios: all, pre_attach } = selection;
    let n = all.len();
    for (i, (mut scenario, pre_pins)) in all.into_iter().enumerate() {
        // Progress on stderr, so --json output stays clean.
        eprintln!("[check {}/{n}] {}", i + 1, scenario.name());
        let r = run_one(probes, &kallsyms, &profile, scenario.as_mut(), pre_pins)?;
        match &r.not_reachable {
            Some(reason) => not_reachable.push(NotReachable { name: r.name.clone(), reason: reason.clone() }),
            None => reports.push(r),
        }
    }
    let plan = &probes.plan;
    Ok(CheckReport {
        kernel: plan.kernel.clone(),
        hooks_attached: plan.attached(),
        hooks_failed: plan.failed().map(|h| h.function.to_string()).collect(),
        fast_path_split: plan.splits_fast_path(),
        exact: reports.iter().all(|r| r.exact),
        passed: reports.iter().all(|r| r.passed),
        track_capacity: probes.track_capacity,
        untracked_pins: probes.maps.snapshot()?.since(&first).diag[gup_common::Diag::PinsUntracked as usize],
        agree: reports.iter().all(|r| r.agree),
        contracts_hold: reports.iter().all(|r| r.contract_violations.is_empty()),
        reference_profile: profile,
        not_reachable,
        partial: reports.iter().any(|r| r.partial),
        pre_attach,
        scenarios: reports,
    })
}

/// Reads gupwatch's counters and the kernel's at one quiet moment.
fn quiet_snapshot(probes: &Probes) -> Result<(Snapshot, FollPinCounters), CheckError> {
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let before = vmstat::settle(&settle_options())?.counters;
        let snap = probes.maps.snapshot()?;
        let after = vmstat::read(true)?;
        if before == after {
            return Ok((snap, after));
        }
        if std::time::Instant::now() > deadline {
            return Err(CheckError::Noisy(SETTLE_TIMEOUT));
        }
    }
}

/// A report for `s` with nothing measured yet.
fn blank_report(s: &dyn Scenario, pins_expected: bool) -> ScenarioReport {
    ScenarioReport {
        name: s.name().to_string(),
        description: s.description().to_string(),
        pinned_pages: 0,
        unpinned_pages: 0,
        referenced_pages: 0,
        vmstat_acquired: 0,
        vmstat_released: 0,
        exact: false,
        pins_expected,
        pin_calls: 0,
        unpin_calls: 0,
        fast_pages: 0,
        slow_pages: 0,
        longterm_pages: 0,
        subsystem: None,
        caller: None,
        errors: BTreeMap::new(),
        undone_pages: 0,
        reverted_pages: BTreeMap::new(),
        expected: s.expectation(),
        observed_errno: None,
        expectations_met: false,
        mismatches: vec![],
        outstanding_pages: 0,
        outstanding_exact: false,
        untracked_pins: 0,
        unbalanced_unpins: 0,
        partial: false,
        unbalanced_pages: 0,
        pre_attach_pins: 0,
        pre_attach_unpins: 0,
        ledger_required: s.ledger_must_hold(),
        ledger_holds: false,
        probe_misses: 0,
        entries_skipped: 0,
        entries_counted_at_exit: 0,
        entries_uncounted: 0,
        ledger_replaced: 0,
        leaks: vec![],
        expected_leak: None,
        held: vec![],
        expected_holder: None,
        passed: false,
        apis: BTreeMap::new(),
        note: String::new(),
        error: None,
        reference_setup: None,
        reference: None,
        agree: false,
        disagreement: None,
        reference_note: String::new(),
        contract_violations: vec![],
        not_reachable: None,
    }
}

/// Runs one scenario; `pre_pins` are the pins its before-attach phase took.
fn run_one(
    probes: &Probes,
    kallsyms: &Kallsyms,
    profile: &KernelProfile,
    s: &mut dyn Scenario,
    pre_pins: u64,
) -> Result<ScenarioReport, CheckError> {
    // Whether this kernel's path for the scenario uses FOLL_PIN at all.
    let kernel_pins = pins_expected(&probes.plan, s.pin_path());
    // A scenario that must fail pins nothing by design.
    let pins_expected = kernel_pins && s.expectation().path != ExpectedPath::None;
    let mut report = blank_report(s, pins_expected);
    // Contracts are checked over the whole scenario, set-up to clean-up.
    let whole0 = probes.maps.snapshot()?;
    if let Err(e) = s.prepare() {
        if let ScenarioError::NotReachable { reason, .. } = &e {
            report.not_reachable = Some(reason.clone());
        }
        report.error = Some(format!("prepare: {e}"));
        let _ = s.cleanup();
        return Ok(report);
    }
    predict_reference(s, profile, kernel_pins, &mut report);
    let (snap0, vm0) = quiet_snapshot(probes)?;
    let misses0: u64 = probes.probe_misses().iter().map(|(_, n)| n).sum();
    let run_start_ns = leaks::monotonic_ns();
    let ran = s.run();
    let (snap1, vm1) = quiet_snapshot(probes)?;
    // Counters only grow while the programs stay loaded.
    report.probe_misses = probes.probe_misses().iter().map(|(_, n)| n).sum::<u64>().saturating_sub(misses0);
    report.observed_errno = s.observed_errno();
    // Known only after run (the orphaning child's pid).
    report.expected_leak = s.expected_leak();
    report.expected_holder = s.expected_holder();
    (report.leaks, report.held) = leak_summaries(probes, kallsyms, run_start_ns);
    if let Err(e) = s.cleanup() {
        report.note = format!("cleanup failed: {e}");
    }
    // Let asynchronous releases from cleanup finish before the next scenario.
    vmstat::settle(&settle_options())?;
    let whole1 = probes.maps.snapshot()?;

    let delta = snap1.since(&snap0);
    let vm = vm1.delta_since(&vm0)?;
    record_counts(&mut report, &delta, (&snap0, &snap1), &vm);
    let rows = attribution::resolve(&delta.attrib, kallsyms, |id| probes.maps.stack(id));
    if let Some((sub, caller)) = dominant(&rows) {
        report.subsystem = Some(sub);
        report.caller = Some(caller);
    }
    if let Err(e) = ran {
        report.error = Some(format!("run: {e}"));
    }
    report.exact = report.error.is_none()
        && report.pinned_pages == report.vmstat_acquired
        && report.unpinned_pages == report.vmstat_released;
    report.mismatches = mismatches(&report, kernel_pins);
    report.expectations_met = report.mismatches.is_empty();
    // The GUP API's contracts, on the kernel's calls (unpins of pins the
    // tracking map could not record are not unbalanced, nor are releases of
    // the pins the scenario took before attach).
    let (apis, unbalanced) = reference::contracts::live_inputs(&whole1, &whole0);
    let untracked = whole1.since(&whole0).diag[gup_common::Diag::PinsUntracked as usize];
    report.contract_violations =
        reference::contracts::check_live(&apis, unbalanced.saturating_sub(untracked).saturating_sub(pre_pins));
    judge_ledger(&mut report, pre_pins);
    // The kernel against the reference model.
    compare_with_reference(&mut report, probes.plan.splits_fast_path());
    report.passed = report.exact
        && report.outstanding_exact
        && report.expectations_met
        && (report.ledger_holds || !report.ledger_required)
        && report.agree
        && report.contract_violations.is_empty();
    if !kernel_pins {
        report.note = format!(
            "{}; gupwatch saw {} FOLL_GET page references",
            probes.plan.capabilities.direct_io_reason, report.referenced_pages
        );
    } else if report.exact && report.pinned_pages + report.unpinned_pages == 0 && report.expected.path != ExpectedPath::None {
        report.note = "no pins seen although this path pins on this kernel".into();
    }
    Ok(report)
}

/// Describes the scenario's memory to the reference model before the run
/// touches it and records the model's prediction; where the scenario's
/// expectation is the model's, whether pins must be seen follows from it.
fn predict_reference(s: &dyn Scenario, profile: &KernelProfile, kernel_pins: bool, report: &mut ScenarioReport) {
    // Describe the memory to the model before the run touches it: the
    // scenario's own account, with the pages' presence from pagemap.
    let mut setup = s.reference_setup();
    if let (Some(st), Some((addr, len))) = (setup.as_mut(), s.buffer_range()) {
        st.captured = reference::differential::capture(addr, len).ok();
    }
    let prediction = setup.as_ref().map(|st| reference::predict(profile, st));
    if let (Some(st), Some(p)) = (&setup, &prediction) {
        let (_, notes) = reference::differential::build(st);
        report.reference_note = reference::differential::explain(p);
        if !notes.is_empty() {
            report.reference_note = format!("{}; {}", report.reference_note, notes.join("; "));
        }
        if report.expected.path == ExpectedPath::Reference {
            // Whether pins must be seen follows from the model here.
            report.pins_expected = kernel_pins && p.counts.pinned_pages + p.counts.unpinned_pages > 0;
        }
    }
    report.reference_setup = setup;
    report.reference = prediction;
}

/// The leaks the tracking map shows since `run_start_ns` (judged while the
/// scenario still holds its pins), without the unbalanced unpins; and the
/// pins held by a live process other than their exited creator.
fn leak_summaries(probes: &Probes, kallsyms: &Kallsyms, run_start_ns: u64) -> (Vec<LeakSummary>, Vec<HeldSummary>) {
    let caller = |id: i64| -> gup_report::Caller {
        let ips = if id >= 0 { probes.maps.stack(id).unwrap_or_default() } else { vec![] };
        attribution::caller_of(&ips, kallsyms)
    };
    let layout = &probes.plan.page_layout;
    let placement = crate::kernel::placement::Placement::read(layout.vmemmap_base, layout.size);
    let leak_report = leaks::analyze(
        &probes.maps.tracking(),
        &leaks::Context {
            now_ns: leaks::monotonic_ns(),
            since_ns: run_start_ns,
            caller: &caller,
            site: &|ip| attribution::caller_of(&[ip], kallsyms),
            alive: &leaks::process_alive,
            holders: &|o| probes.holders(o),
            kernel_outstanding: None,
            untracked_pins: 0,
            placement: placement.as_ref(),
        },
        &LeakPolicy { long_held: Duration::ZERO, ..LeakPolicy::default() },
        None,
    );
    let held = leak_report
        .holdings
        .iter()
        .filter(|h| !h.holders.is_empty())
        .map(|h| HeldSummary { owner_tgid: h.owner_tgid, pages: h.pages, holders: h.holders.clone() })
        .collect();
    let leaks = leak_report
        .leaks
        .iter()
        .filter(|l| l.kind != gup_report::LeakKind::Unbalanced)
        .map(|l| LeakSummary {
            kind: l.kind.as_str(),
            pages: l.pages,
            owner_tgid: l.owner_tgid,
            caller: l.caller.clone(),
            zone: l.zone.clone(),
        })
        .collect();
    (leaks, held)
}

/// What gupwatch and the kernel counted over the run: pages, calls, the
/// tracking map's diagnostics, reverted pins, per-API calls and errors.
fn record_counts(
    report: &mut ScenarioReport,
    delta: &Snapshot,
    (snap0, snap1): (&Snapshot, &Snapshot),
    vm: &vmstat::FollPinDelta,
) {
    let totals = delta.totals();
    report.pinned_pages = totals.pinned_pages;
    report.unpinned_pages = totals.unpinned_pages;
    report.referenced_pages = totals.referenced_pages;
    report.pin_calls = totals.pin_calls;
    report.unpin_calls = totals.unpin_calls;
    report.vmstat_acquired = vm.acquired;
    report.vmstat_released = vm.released;
    let tracked = |snap: &Snapshot| {
        snap.diag[gup_common::Diag::PinsTracked as usize] as i64 - snap.diag[gup_common::Diag::UnpinsMatched as usize] as i64
    };
    report.outstanding_pages = tracked(snap1) - tracked(snap0);
    report.untracked_pins = delta.diag[gup_common::Diag::PinsUntracked as usize];
    report.unbalanced_unpins = delta.diag[gup_common::Diag::UnbalancedUnpins as usize];
    report.entries_skipped = delta.diag[gup_common::Diag::EntrySkipped as usize];
    report.entries_counted_at_exit = delta.diag[gup_common::Diag::CountedAtExit as usize];
    report.entries_uncounted = delta.diag[gup_common::Diag::UncountedAtExit as usize];
    report.ledger_replaced = delta.diag[gup_common::Diag::LedgerReplaced as usize];
    report.outstanding_exact = report.outstanding_pages + report.untracked_pins as i64 - report.unbalanced_unpins as i64
        == vm.acquired as i64 - vm.released as i64;
    report.undone_pages = Api::ALL.iter().map(|a| delta.api(*a).undone_pages).sum();
    for r in gup_common::Reverted::ALL {
        let n: u64 = Api::ALL.iter().map(|a| delta.api(*a).reverted[r as usize]).sum();
        if n > 0 {
            report.reverted_pages.insert(r.name(), n);
        }
    }
    report.fast_pages = totals.fast_pages;
    report.slow_pages = totals.slow_pages;
    report.longterm_pages = totals.longterm_pages;
    for api in Api::ALL {
        let a = delta.api(api);
        if a.calls > 0 || a.nested_calls > 0 {
            report.apis.insert(api.symbol(), ApiDelta { calls: a.calls, pages: a.pages });
        }
        for (errno, n) in delta.errnos_of(api) {
            report.errors.insert(format!("{}:{}", api.symbol(), errno_name(errno)), n);
        }
    }
}

/// The kernel against the reference model: the observation from the
/// report's counts, compared with the prediction.
fn compare_with_reference(report: &mut ScenarioReport, fast_path_split: bool) {
    match &report.reference {
        _ if report.error.is_some() => {
            report.disagreement = Some("the scenario did not run, so there is nothing to compare".into());
        }
        None => {
            report.agree = true;
            report.reference_note = "no reference description for this scenario".into();
        }
        Some(p) => {
            let obs = reference::Observation {
                counts: reference::PageCounts {
                    pinned_pages: report.pinned_pages,
                    unpinned_pages: report.unpinned_pages,
                    fast_pages: report.fast_pages,
                    slow_pages: report.slow_pages,
                    undone_pages: report.undone_pages,
                    referenced_pages: report.referenced_pages,
                    longterm_pages: report.longterm_pages,
                    vmstat_acquired: report.vmstat_acquired,
                    vmstat_released: report.vmstat_released,
                },
                errors: report.errors.keys().cloned().collect(),
                syscall_errno: report.observed_errno,
                fast_path_split,
            };
            let diffs = reference::compare(p, &obs);
            report.agree = diffs.is_empty();
            if !diffs.is_empty() {
                report.disagreement = Some(diffs.join("; "));
            }
        }
    }
}

/// The ledger's verdict on one run. Pins the scenario took before attach
/// (`pre_pins`) are released in its run, where gupwatch can only see them
/// as unpins of pins it never saw taken: up to `pre_pins` such unpins are
/// reported as pre-attach releases; the rest are unbalanced pages. Where the
/// scenario requires the ledger to hold, a partial view or an unbalanced
/// page fails it.
fn judge_ledger(r: &mut ScenarioReport, pre_pins: u64) {
    r.pre_attach_pins = pre_pins;
    r.pre_attach_unpins = r.unbalanced_unpins.min(pre_pins);
    r.unbalanced_pages = r.unbalanced_unpins - r.pre_attach_unpins;
    r.partial = r.untracked_pins > 0;
    r.ledger_holds = !r.partial && r.unbalanced_pages == 0;
    if r.ledger_required && !r.ledger_holds && r.error.is_none() {
        r.mismatches.push(format!(
            "the pin ledger did not hold: partial {}, untracked pins {}, unbalanced pages {} (pre-attach unpins {} of {})",
            r.partial, r.untracked_pins, r.unbalanced_pages, r.pre_attach_unpins, pre_pins
        ));
        r.expectations_met = false;
    }
}

/// The expectations of a scenario that the run did not meet.
fn mismatches(r: &ScenarioReport, pins_expected: bool) -> Vec<String> {
    let e = &r.expected;
    let mut out = vec![];
    // Deltas of kernel-side counters: saturating, so that a counter that
    // went wrong shows as a mismatch below rather than a panic here.
    let returned = r.pinned_pages.saturating_sub(r.undone_pages);
    if pins_expected {
        match e.path {
            ExpectedPath::Fast if !(returned > 0 && r.fast_pages >= returned && r.slow_pages == 0) => {
                out.push(format!("expected the fast path to pin every page; fast {} slow {} of {returned}", r.fast_pages, r.slow_pages))
            }
            ExpectedPath::Slow if r.slow_pages == 0 => {
                out.push(format!("expected the slow path to pin; fast {} slow 0", r.fast_pages))
            }
            ExpectedPath::Any if returned == 0 => out.push("expected pages to be pinned; none were".into()),
            ExpectedPath::None if returned > 0 => out.push(format!("expected no pins to be returned; {returned} were")),
            _ => {}
        }
        if returned > 0 && e.longterm != (r.longterm_pages == returned) {
            out.push(format!("expected LONGTERM={}, {} of {returned} pages were LONGTERM", e.longterm, r.longterm_pages));
        }
    }
    // Where the path takes FOLL_GET references instead of pins (direct I/O
    // before 6.3), they are attributed like pins: same subsystem.
    if pins_expected || r.referenced_pages > 0 {
        let sub = r.subsystem.map(|s| s.as_str());
        if sub != Some(e.subsystem) {
            out.push(format!("expected subsystem {}, saw {}", e.subsystem, sub.unwrap_or("none")));
        }
    }
    if let Some(reason) = e.reverted {
        if r.reverted_pages.get(reason.name()).copied().unwrap_or(0) == 0 {
            out.push(format!("expected pins reverted for {}, saw {:?}", reason.name(), r.reverted_pages));
        }
    }
    if let Some(errno) = e.errno {
        if r.observed_errno != Some(errno) {
            out.push(format!("expected the syscall to fail with {}, it returned {:?}", errno_name(errno as u32), r.observed_errno));
        }
        let name = errno_name(errno as u32);
        if pins_expected && !r.errors.keys().any(|k| k.ends_with(&format!(":{name}"))) {
            out.push(format!("gupwatch saw no GUP call fail with {name}"));
        }
    }
    match &r.expected_leak {
        // A partial view cannot show the whole leak; the counts above still
        // have to balance.
        Some(_) if r.untracked_pins > 0 => {}
        Some(l) => {
            let found = r.leaks.iter().any(|x| x.kind == l.kind && x.pages == l.pages && x.owner_tgid == Some(l.owner_tgid));
            if !found {
                out.push(format!("expected a {} leak of {} pages owned by {}; saw {:?}", l.kind, l.pages, l.owner_tgid, r.leaks));
            }
        }
        None if r.expected.path != ExpectedPath::None && !r.leaks.is_empty() && r.outstanding_pages == 0 => {
            out.push(format!("expected no leak; saw {:?}", r.leaks))
        }
        None => {}
    }
    if let Some(h) = &r.expected_holder {
        holder_mismatches(r, h, &mut out);
    }
    out
}

/// Whether the pins the scenario hands to another process are held by it
/// (pid and name) and raise no orphaned signal. A partial view cannot
/// show them.
fn holder_mismatches(r: &ScenarioReport, want: &ExpectedHolder, out: &mut Vec<String>) {
    if r.untracked_pins > 0 {
        return;
    }
    let named = r.held.iter().any(|h| {
        h.owner_tgid == want.owner_tgid
            && h.pages == want.pages
            && h.holders.iter().any(|x| x.pid == want.pid && x.comm == want.comm)
    });
    if !named {
        out.push(format!(
            "expected {} pages of {} held by {} ({}); saw held {:?}",
            want.pages, want.owner_tgid, want.pid, want.comm, r.held
        ));
    }
    let orphaned = r.leaks.iter().any(|l| l.kind == gup_report::LeakKind::Orphaned.as_str() && l.owner_tgid == Some(want.owner_tgid));
    if orphaned {
        out.push(format!("pins held by {} were reported orphaned: {:?}", want.pid, r.leaks));
    }
}

/// The subsystem and caller behind most pinned pages (or, when nothing was
/// pinned, most FOLL_GET references, which the same rows attribute: direct
/// I/O before 6.3; then most released pages; or, failing that, most pin
/// calls). What a run takes names it before what it gives back: a run that
/// releases pins taken earlier is still about what it took.
fn dominant(rows: &[attribution::Row]) -> Option<(Subsystem, String)> {
    let kind = |api: &str| Api::ALL.iter().find(|a| a.symbol() == api).map(|a| a.kind());
    let weight = |want: gup_common::ApiKind, by_calls: bool| {
        let mut by: BTreeMap<(Subsystem, String), u64> = BTreeMap::new();
        for r in rows.iter().filter(|r| kind(r.api) == Some(want)) {
            *by.entry((r.caller.subsystem, r.caller.function.clone())).or_default() += if by_calls { r.calls } else { r.pages };
        }
        by.into_iter().filter(|(_, w)| *w > 0).max_by_key(|(_, w)| *w).map(|(k, _)| k)
    };
    use gup_common::ApiKind::{Get, Pin, Unpin};
    weight(Pin, false).or_else(|| weight(Get, false)).or_else(|| weight(Unpin, false)).or_else(|| weight(Pin, true))
}

/// Whether a scenario's path pins pages on this kernel.
fn pins_expected(plan: &ProbePlan, path: PinPath) -> bool {
    match path {
        PinPath::DirectIo => plan.capabilities.direct_io_pins,
        PinPath::ProcessVm
        | PinPath::IoUringRegister
        | PinPath::IoUringUnregister
        | PinPath::VfioMapDma
        | PinPath::RdmaRegMr => true,
    }
}

impl CheckReport {
    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "gupwatch check on kernel {} ({} hooks attached)\n\n{:<36} {:>7} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6}  {:<11} {}\n",
            self.kernel, self.hooks_attached, "SCENARIO", "PINNED", "UNPINNED", "VM ACQ", "VM REL", "EXACT", "FAST", "SLOW", "MODEL", "SUBSYSTEM", "NOTE"
        );
        for r in &self.scenarios {
            // What the kernel skipped is the first lead when counts differ.
            let skipped = if !r.exact && r.probe_misses > 0 { format!("[{} probe misses] ", r.probe_misses) } else { String::new() };
            let note = skipped + &match &r.error {
                Some(e) => format!("error: {e}"),
                None if !r.mismatches.is_empty() => format!("UNEXPECTED: {}", r.mismatches.join("; ")),
                None if r.disagreement.is_some() => format!("MODEL DISAGREES: {}", r.disagreement.as_deref().unwrap_or("")),
                None if !r.contract_violations.is_empty() => format!(
                    "CONTRACT: {}",
                    r.contract_violations.iter().map(|v| format!("{}: {}", v.contract, v.detail)).collect::<Vec<_>>().join("; ")
                ),
                None => {
                    let leaks: Vec<String> = r.leaks.iter().map(|l| format!("{} {}p{}", l.kind, l.pages, l.zone.as_ref().map_or(String::new(), |z| format!(" {z}")))).collect();
                    if leaks.is_empty() { r.note.clone() } else { format!("leaks: {} {}", leaks.join(", "), r.note) }
                }
            };
            out += &format!(
                "{:<36} {:>7} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6}  {:<11} {}\n",
                r.name,
                r.pinned_pages,
                r.unpinned_pages,
                r.vmstat_acquired,
                r.vmstat_released,
                if r.passed { "yes" } else if r.exact { "exp?" } else { "NO" },
                r.fast_pages,
                r.slow_pages,
                match (&r.reference, r.agree) {
                    (None, _) => "-",
                    (Some(_), true) => "agree",
                    (Some(_), false) => "NO",
                },
                r.subsystem.map_or("-", |s| s.as_str()),
                note
            );
        }
        let inexact = self.scenarios.iter().filter(|r| !r.exact).count();
        let failed = self.scenarios.iter().filter(|r| !r.passed).count();
        out += &format!(
            "\n{} scenarios: {} passed, {} failed ({} not exact against /proc/vmstat)\n",
            self.scenarios.len(),
            self.scenarios.len() - failed,
            failed,
            inexact
        );
        let disagree = self.scenarios.iter().filter(|r| r.reference.is_some() && !r.agree).count();
        let broken = self.scenarios.iter().filter(|r| !r.contract_violations.is_empty()).count();
        out += &format!(
            "reference model: {} of {} scenarios agree; GUP contracts broken in {broken}\n",
            self.scenarios.iter().filter(|r| r.reference.is_some()).count() - disagree,
            self.scenarios.iter().filter(|r| r.reference.is_some()).count(),
        );
        for r in &self.not_reachable {
            out += &format!("not reachable here: {}: {}\n", r.name, r.reason);
        }
        if self.pre_attach.pins > 0 {
            out += &format!(
                "taken before attach: {} pins (kernel's outstanding count moved by {}); released during the runs as pre-attach unpins: {}\n",
                self.pre_attach.pins,
                self.pre_attach.vmstat_outstanding.map_or("?".to_string(), |n| n.to_string()),
                self.scenarios.iter().map(|r| r.pre_attach_unpins).sum::<u64>()
            );
        }
        for e in &self.pre_attach.errors {
            out += &format!("before attach: {e}\n");
        }
        if self.untracked_pins > 0 {
            out += &format!(
                "PARTIAL tracking view: {} pins were not tracked (tracking map capacity {} folios); totals stay exact\n",
                self.untracked_pins, self.track_capacity
            );
        }
        if !self.hooks_failed.is_empty() {
            out += &format!("hooks that failed to attach: {}\n", self.hooks_failed.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::scenarios::inflight;

    fn inflight_report() -> ScenarioReport {
        let all = inflight::scenarios(std::path::Path::new("/nonexistent"));
        let s = all.iter().find(|s| s.name() == "inflight_fixed_pre_attach").map(|s| s.as_ref());
        let mut r = blank_report(s.expect("inflight_fixed_pre_attach exists"), true);
        assert!(r.ledger_required, "the inflight_ scenarios require the ledger");
        r.expectations_met = true;
        r
    }

    #[test]
    fn pre_attach_unpins_are_not_unbalanced_and_the_rest_fail_the_ledger() {
        // 64 unpins of the 64 pins taken before attach: reported as such.
        let mut r = inflight_report();
        r.unbalanced_unpins = 64;
        judge_ledger(&mut r, 64);
        assert_eq!((r.pre_attach_unpins, r.unbalanced_pages), (64, 0));
        assert!(r.ledger_holds && r.expectations_met && r.mismatches.is_empty(), "{:?}", r.mismatches);
        // One more is an unpin of a pin taken after attach that gupwatch lost.
        let mut r = inflight_report();
        r.unbalanced_unpins = 65;
        judge_ledger(&mut r, 64);
        assert_eq!((r.pre_attach_unpins, r.unbalanced_pages), (64, 1));
        assert!(!r.ledger_holds && !r.expectations_met);
        assert!(r.mismatches[0].contains("unbalanced pages 1"), "{:?}", r.mismatches);
        // Without pre-attach pins every unbalanced unpin counts; a partial
        // view fails on its own.
        let mut r = inflight_report();
        r.untracked_pins = 3;
        judge_ledger(&mut r, 0);
        assert!(r.partial && !r.ledger_holds && !r.expectations_met);
    }

    fn row(api: &'static str, subsystem: Subsystem, function: &str, pages: u64) -> attribution::Row {
        attribution::Row {
            tgid: 1,
            comm: "t".into(),
            cgroup_id: 0,
            api,
            caller: gup_report::Caller { function: function.into(), subsystem, module: None },
            calls: 1,
            pages,
            errors: 0,
            fast_pages: 0,
            slow_pages: 0,
            longterm_pages: 0,
        }
    }

    #[test]
    fn references_name_the_subsystem_where_nothing_was_pinned() {
        // 6.1's direct I/O: FOLL_GET references only.
        let gets = [row("get_user_pages_fast", Subsystem::DirectIo, "__blkdev_direct_IO_simple", 256)];
        assert_eq!(dominant(&gets), Some((Subsystem::DirectIo, "__blkdev_direct_IO_simple".into())));
        // Pins outweigh references whatever their numbers, and references
        // outweigh releases (inflight_fixed_pre_attach on 6.1: O_DIRECT
        // reads take references while fixed buffers pinned before attach
        // are released).
        let mixed = [gets[0].clone(), row("pin_user_pages_fast", Subsystem::IoUring, "io_pin_pages", 1)];
        assert_eq!(dominant(&mixed).map(|d| d.0), Some(Subsystem::IoUring));
        let mixed = [gets[0].clone(), row("unpin_user_pages", Subsystem::IoUring, "io_buffer_unmap", 1024)];
        assert_eq!(dominant(&mixed).map(|d| d.0), Some(Subsystem::DirectIo));
        // And the subsystem of references is judged like that of pins.
        let all = crate::check::scenarios::builtin(std::path::Path::new("/nonexistent"));
        let dio = all.iter().find(|s| s.name() == "direct_io_read").map(|s| s.as_ref()).expect("direct_io_read");
        let mut r = blank_report(dio, false);
        r.referenced_pages = 256;
        r.subsystem = Some(Subsystem::ProcessVm);
        assert!(mismatches(&r, false).iter().any(|m| m.contains("expected subsystem direct-io")));
        r.subsystem = Some(Subsystem::DirectIo);
        assert!(mismatches(&r, false).is_empty(), "{:?}", mismatches(&r, false));
    }

    #[test]
    fn a_scenario_that_does_not_require_the_ledger_reports_it_without_failing() {
        let all = crate::check::scenarios::builtin(std::path::Path::new("/nonexistent"));
        let mut r = blank_report(all[0].as_ref(), true);
        r.expectations_met = true;
        r.untracked_pins = 5;
        r.unbalanced_unpins = 7;
        judge_ledger(&mut r, 0);
        assert!(r.partial && !r.ledger_holds && r.unbalanced_pages == 7);
        assert!(r.expectations_met && r.mismatches.is_empty());
    }
}
