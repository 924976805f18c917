//! Outstanding pins and leak signals, from the per-folio tracking map.
//!
//! The analysis is pure: it takes what the maps held, the time, and how to
//! name call sites, so every signal is unit-tested without a kernel.
//!
//! Signals (a group of pins gets at most one, most specific first):
//! - *orphaned*: the owning process has exited, no live process holds the
//!   object behind its pins (the io_uring ring it registered them on), and
//!   the object's teardown has had [`LeakPolicy::orphan_grace`]; pins whose
//!   object a live process holds are *held by* it ([`Holding::holders`]),
//!   not a leak;
//! - *weak_pin*: pins without FOLL_LONGTERM on ZONE_MOVABLE pages held
//!   longer than [`LeakPolicy::weak_pin`]: they keep the pages from
//!   migrating (memory hot-unplug, compaction) where a LONGTERM pin would
//!   have moved them out of the zone first. Needs the zones
//!   ([`Context::placement`]);
//! - *long-held*: held longer than the threshold (per subsystem if set);
//! - *unbalanced*: unpins of pins gupwatch never saw taken, per call site
//!   (usually pins taken before gupwatch started);
//! - *growth*: a call site whose outstanding pins rose at every one of the
//!   last N readings.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Duration,
};

use gup_common::{object::PinObject, Api, PinRecord};
use gup_report::{Caller, Holding, Leak, LeakKind, LeakReport, ObjectHolder, Subsystem};

use crate::model::attribution::comm_string;

/// Thresholds.
#[derive(Clone, Debug)]
pub struct LeakPolicy {
    /// Pins held longer than this are long-held.
    pub long_held: Duration,
    /// Per-subsystem overrides of `long_held` (io_uring fixed buffers are
    /// meant to stay pinned for the ring's life, for example).
    pub per_subsystem: BTreeMap<Subsystem, Duration>,
    /// Readings in a row with rising outstanding pins that make a growth
    /// signal.
    pub growth_readings: usize,
    /// How long after its owner's exit pins that no live process holds
    /// are left to their object's teardown before they are orphaned: a
    /// closed io_uring ring is freed later by a kernel worker
    /// (`io_ring_exit_work`; docs/leaks.md).
    pub orphan_grace: Duration,
    /// Pins without FOLL_LONGTERM on ZONE_MOVABLE pages held longer than
    /// this are a `weak_pin` signal.
    pub weak_pin: Duration,
}

/// [`LeakPolicy::weak_pin`] by default: an O_DIRECT or process_vm pin
/// lasts microseconds to milliseconds; one held a second is stuck I/O or
/// a driver keeping a short-term pin.
pub const WEAK_PIN: Duration = Duration::from_secs(1);

/// [`LeakPolicy::orphan_grace`] by default.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

impl Default for LeakPolicy {
    fn default() -> Self {
        LeakPolicy {
            long_held: Duration::from_secs(300),
            per_subsystem: BTreeMap::new(),
            growth_readings: 5,
            orphan_grace: ORPHAN_GRACE,
            weak_pin: WEAK_PIN,
        }
    }
}

impl LeakPolicy {
    fn threshold(&self, s: Subsystem) -> Duration {
        self.per_subsystem.get(&s).copied().unwrap_or(self.long_held)
    }
}

/// Remembers outstanding pins per call site across readings.
#[derive(Clone, Debug, Default)]
pub struct GrowthTracker {
    history: HashMap<(u32, String), VecDeque<u64>>,
}

impl GrowthTracker {
    /// Records this reading's outstanding pins per (owner, call site) and
    /// returns the sites that rose at each of the last `readings` readings.
    fn observe(&mut self, now: &BTreeMap<(u32, String), u64>, readings: usize) -> Vec<(u32, String, u64)> {
        self.history.retain(|k, _| now.contains_key(k));
        let mut out = vec![];
        for (k, v) in now {
            let h = self.history.entry(k.clone()).or_default();
            h.push_back(*v);
            while h.len() > readings + 1 {
                h.pop_front();
            }
            if readings > 0 && h.len() == readings + 1 && h.iter().zip(h.iter().skip(1)).all(|(a, b)| b > a) {
                out.push((k.0, k.1.clone(), *v));
            }
        }
        out
    }
}

/// The raw contents of the tracking maps.
#[derive(Clone, Debug, Default)]
pub struct TrackingMaps {
    /// folio → owners.
    pub pins: Vec<(u64, PinRecord)>,
    /// tgid → exit time (ns, monotonic).
    pub exited: HashMap<u32, u64>,
    /// unpin call site (return address into the caller) → unbalanced pins.
    pub unbalanced: Vec<(u64, u64)>,
}

/// Inputs of [`analyze`] besides the maps.
pub struct Context<'a> {
    /// Now, on the clock the programs use (CLOCK_MONOTONIC, ns).
    pub now_ns: u64,
    /// Only pins first taken at or after this time count (0: all).
    pub since_ns: u64,
    /// Names a call-site stack id.
    pub caller: &'a dyn Fn(i64) -> Caller,
    /// Names a call site by its return address alone.
    pub site: &'a dyn Fn(u64) -> Caller,
    /// Whether a process is still alive (for owners whose exit was missed).
    pub alive: &'a dyn Fn(u32) -> bool,
    /// The live holders of these objects ([`crate::model::holders::find`]);
    /// called once per analysis, with the objects of exited owners only.
    pub holders: &'a dyn Fn(&[PinObject]) -> crate::model::holders::Holders,
    /// The kernel's outstanding total, if readable.
    pub kernel_outstanding: Option<i64>,
    /// Untracked pins so far (from the diagnostics counters).
    pub untracked_pins: u64,
    /// Which zone a folio lies in; `None` leaves zones unknown (and no
    /// `weak_pin` signal).
    pub placement: Option<&'a crate::kernel::placement::Placement>,
}

/// Builds the report.
pub fn analyze(
    maps: &TrackingMaps,
    cx: &Context<'_>,
    policy: &LeakPolicy,
    growth: Option<&mut GrowthTracker>,
) -> LeakReport {
    let (tracked, mut holdings) = holdings(maps, cx);
    let (unreadable, file_lookup_failed) = name_holders(&mut holdings, cx, policy);
    let mut leaks = held_signals(&holdings, policy);
    let mut notes = vec![];
    if let Some(why) = file_lookup_failed.filter(|_| holdings.iter().any(|h| h.orphaned && h.object.needs_file_lookup())) {
        notes.push(format!(
            "the holders of RDMA and VFIO contexts could not be looked for ({why}): their pins show as orphaned once their creator exited, even where another process still holds the context"
        ));
    }
    if unreadable > 0 && holdings.iter().any(|h| h.orphaned) {
        notes.push(format!(
            "{unreadable} processes' descriptors could not be read (gupwatch lacks CAP_SYS_PTRACE): a holder among them cannot be named, so pins they hold may show as orphaned"
        ));
    }
    let (unbalanced, note) = unbalanced_signals(maps, cx);
    leaks.extend(unbalanced);
    notes.extend(note);
    if let Some(g) = growth {
        leaks.extend(growth_signals(&holdings, g, policy));
    }
    notes.extend(gap_notes(tracked, cx));
    LeakReport {
        tracked_outstanding: tracked,
        kernel_outstanding: cx.kernel_outstanding,
        untracked_pins: cx.untracked_pins,
        partial: cx.untracked_pins > 0,
        holdings,
        leaks,
        notes,
        i915_objects: vec![],
        hold_times: vec![],
        cgroups: vec![],
        held_before_start: vec![],
    }
}

/// The pins tracked (all of them), and the holdings by (owner, stack) of
/// those taken since `cx.since_ns`, oldest first.
fn holdings(maps: &TrackingMaps, cx: &Context<'_>) -> (u64, Vec<Holding>) {
    // (owner, stack, object) → holding
    let mut groups: BTreeMap<(u32, i64, PinObject), Holding> = BTreeMap::new();
    let mut oldest: BTreeMap<(u32, i64, PinObject), u64> = BTreeMap::new();
    let mut tracked = 0u64;
    for (folio, rec) in &maps.pins {
        // A spill record's key is its folio's with bit 0 set.
        let zone = cx.placement.and_then(|p| p.zone_of(gup_common::key_folio(*folio)));
        for (o, count) in rec.owners.iter().zip(rec.held()).filter(|(_, c)| *c > 0) {
            tracked += count as u64;
            if o.first_ns < cx.since_ns {
                continue;
            }
            let key = (o.tgid, o.stack_id, o.object);
            let exit_ns = maps.exited.get(&o.tgid).copied().filter(|t| *t >= o.first_ns);
            let exited_after_pin = exit_ns.is_some();
            let h = groups.entry(key).or_insert_with(|| Holding {
                owner_tgid: o.tgid,
                comm: comm_string(&o.comm),
                api: Api::from_index(o.api).map_or("unknown", |a| a.symbol()).to_string(),
                caller: (cx.caller)(o.stack_id),
                pages: 0,
                oldest_age_secs: 0.0,
                longterm: false,
                // Pins of several processes (the last slot) have no single
                // owner whose exit orphans them. Whether exited pins are
                // orphaned or held: `name_holders`.
                orphaned: false,
                owner_exited: o.tgid != gup_common::SHARED_OWNER && (exited_after_pin || !(cx.alive)(o.tgid)),
                holders: vec![],
                zones: BTreeMap::new(),
                object: o.object,
                exit_age_ns: exit_ns.map_or(u64::MAX, |t| cx.now_ns.saturating_sub(t)),
                stack_id: o.stack_id,
            });
            h.pages += count as u64;
            if let Some(z) = zone {
                *h.zones.entry(z.to_string()).or_default() += count as u64;
            }
            h.longterm |= o.longterm != 0;
            let first = oldest.entry(key).or_insert(o.first_ns);
            *first = (*first).min(o.first_ns);
        }
    }
    let mut holdings: Vec<Holding> = groups
        .into_iter()
        .map(|(k, mut h)| {
            h.oldest_age_secs = cx.now_ns.saturating_sub(oldest[&k]) as f64 / 1e9;
            h
        })
        .collect();
    holdings.sort_by(|a, b| b.oldest_age_secs.total_cmp(&a.oldest_age_secs));
    (tracked, holdings)
}

/// Names the live holders of the holdings whose owner exited, and marks
/// orphaned those nobody holds once the grace period since the exit has
/// passed (an exit gupwatch did not see counts as long past). Returns how
/// many processes could not be looked into, and why character-device
/// objects could not be looked for, if so.
fn name_holders(holdings: &mut [Holding], cx: &Context<'_>, policy: &LeakPolicy) -> (usize, Option<String>) {
    let wanted: Vec<PinObject> = holdings
        .iter()
        .filter(|h| h.owner_exited && (h.object.identifies_file() || h.object.needs_file_lookup()))
        .map(|h| h.object)
        .collect();
    let found = if wanted.is_empty() { crate::model::holders::Holders::default() } else { (cx.holders)(&wanted) };
    let grace = u64::try_from(policy.orphan_grace.as_nanos()).unwrap_or(u64::MAX);
    for h in holdings.iter_mut().filter(|h| h.owner_exited) {
        h.holders = found.by_object.get(&h.object).cloned().unwrap_or_default();
        h.orphaned = h.holders.is_empty() && h.exit_age_ns >= grace;
    }
    (found.unreadable, found.file_lookup_failed)
}

/// The orphaned, weak-pin and long-held signals, one per holding at most.
fn held_signals(holdings: &[Holding], policy: &LeakPolicy) -> Vec<Leak> {
    let mut leaks = vec![];
    for h in holdings {
        let movable = h.zones.get(crate::kernel::placement::MOVABLE).copied().unwrap_or(0);
        if !h.orphaned && !h.longterm && movable > 0 && h.oldest_age_secs >= policy.weak_pin.as_secs_f64() {
            // Only the pages in ZONE_MOVABLE are the problem; the age is
            // the holding's oldest (the ledger keeps one first-pin time
            // per owner and folio, not per page).
            leaks.push(Leak {
                pages: movable,
                zone: Some(crate::kernel::placement::MOVABLE.to_string()),
                ..Leak::of_holding(LeakKind::WeakPin, h)
            });
            continue;
        }
        let kind = if h.orphaned {
            Some(LeakKind::Orphaned)
        } else if h.oldest_age_secs >= policy.threshold(h.caller.subsystem).as_secs_f64() {
            Some(LeakKind::LongHeld)
        } else {
            None
        };
        if let Some(kind) = kind {
            leaks.push(Leak::of_holding(kind, h));
        }
    }
    leaks
}

/// The unbalanced signals, one per unpin site, and the note that explains
/// them.
fn unbalanced_signals(maps: &TrackingMaps, cx: &Context<'_>) -> (Vec<Leak>, Option<String>) {
    // Sums of map values saturate: they are arbitrary u64s to this code
    // (found by the map_records fuzz target; `Iterator::sum` overflowed).
    let total = maps.unbalanced.iter().fold(0u64, |t, (_, n)| t.saturating_add(*n));
    let leaks = maps
        .unbalanced
        .iter()
        .map(|(site, n)| {
            let c = (cx.site)(*site);
            Leak {
                kind: LeakKind::Unbalanced,
                pages: *n,
                owner_tgid: None,
                comm: None,
                caller: c.function,
                subsystem: c.subsystem,
                age_secs: None,
                zone: None,
            }
        })
        .collect();
    let note = (total > 0).then(|| {
        format!("{total} unpins matched no pin gupwatch saw; pins taken before gupwatch started are the usual cause")
    });
    (leaks, note)
}

/// The growth signals: (owner, call site) pairs whose holdings rose at
/// each of the last readings the policy asks for.
fn growth_signals(holdings: &[Holding], g: &mut GrowthTracker, policy: &LeakPolicy) -> Vec<Leak> {
    let mut by_site: BTreeMap<(u32, String), u64> = BTreeMap::new();
    for h in holdings {
        *by_site.entry((h.owner_tgid, h.caller.function.clone())).or_default() += h.pages;
    }
    g.observe(&by_site, policy.growth_readings)
        .into_iter()
        .map(|(tgid, caller, pages)| {
            let h = holdings.iter().find(|h| h.owner_tgid == tgid && h.caller.function == caller);
            Leak {
                kind: LeakKind::Growth,
                pages,
                owner_tgid: Some(tgid),
                comm: h.map(|h| h.comm.clone()),
                caller,
                subsystem: h.map_or(Subsystem::Other, |h| h.caller.subsystem),
                age_secs: h.map(|h| h.oldest_age_secs),
                zone: None,
            }
        })
        .collect()
}

/// Why the report's count differs from the kernel's, and whether the view
/// is partial.
fn gap_notes(tracked: u64, cx: &Context<'_>) -> Vec<String> {
    let mut notes = vec![];
    if let Some(k) = cx.kernel_outstanding {
        let gap = k.saturating_sub(i64::try_from(tracked).unwrap_or(i64::MAX));
        if gap > 0 {
            notes.push(format!(
                "the kernel counts {k} pins outstanding, gupwatch tracks {tracked}: {gap} were taken before gupwatch started (or not tracked) and will leave the gap as they are released"
            ));
        }
    }
    if cx.untracked_pins > 0 {
        notes.push(format!(
            "{} pins were not tracked (tracking map full): totals stay exact, this view is partial; raise --track-capacity",
            cx.untracked_pins
        ));
    }
    notes
}

/// The leak report as `gupwatch leaks` prints it. A trait because the
/// report is gup-report's type; the table is gup-user's output.
pub trait LeakTable {
    /// A human-readable table.
    fn to_table(&self) -> String;
}

impl LeakTable for LeakReport {
    fn to_table(&self) -> String {
        let mut out = format!(
            "outstanding pins: {} tracked by gupwatch, {} counted by the kernel{}\n",
            self.tracked_outstanding,
            self.kernel_outstanding.map_or("?".into(), |k| k.to_string()),
            if self.partial { " (PARTIAL view)" } else { "" }
        );
        for n in &self.notes {
            out += &format!("  note: {n}\n");
        }
        out += &format!(
            "\n{:>7} {:<16} {:<34} {:<11} {:>7} {:>9}  {:<24} {}\n",
            "OWNER", "COMM", "CALLER", "SUBSYSTEM", "PAGES", "AGE", "HOLDER", "SIGNAL"
        );
        for h in &self.holdings {
            let signal = self
                .leaks
                .iter()
                .find(|l| l.owner_tgid == Some(h.owner_tgid) && l.caller == h.caller.function && l.kind != LeakKind::Unbalanced)
                .map_or("", |l| l.kind.as_str());
            out += &format!(
                "{:>7} {:<16} {:<34} {:<11} {:>7} {:>8.1}s  {:<24} {}{}{}\n",
                h.owner_tgid,
                h.comm,
                h.caller.function,
                h.caller.subsystem.as_str(),
                h.pages,
                h.oldest_age_secs,
                holder_column(h),
                signal,
                if h.longterm { " (longterm)" } else { "" },
                h.zones.iter().map(|(z, n)| format!(" {z}:{n}")).collect::<String>()
            );
        }
        for o in &self.i915_objects {
            out += &format!(
                "i915 userptr object {} of process {} ({}) holds {} pages{}\n",
                o.object,
                o.owner_tgid,
                o.comm,
                o.pinned_pages,
                if o.orphaned { " — ORPHANED: the process has exited" } else { "" }
            );
        }
        for l in self.leaks.iter().filter(|l| l.kind == LeakKind::Unbalanced) {
            out += &format!("{:>7} {:<16} {:<34} {:<11} {:>7} {:>9}  unbalanced\n", "-", "-", l.caller, l.subsystem.as_str(), l.pages, "-");
        }
        out
    }
}

/// The holders as `pid comm`, comma-separated.
pub fn holder_names(holders: &[ObjectHolder]) -> String {
    holders.iter().map(|x| format!("{} {}", x.pid, x.comm)).collect::<Vec<_>>().join(", ")
}

/// Who holds a holding's pins: the owner while it lives ("-"), the live
/// holders once it has exited, or "none" (the owner's exit left them to
/// no process).
fn holder_column(h: &Holding) -> String {
    if !h.owner_exited {
        "-".into()
    } else if h.holders.is_empty() {
        "none".into()
    } else {
        holder_names(&h.holders)
    }
}

/// Whether a process exists (`/proc/<tgid>`).
pub fn process_alive(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use gup_common::{PinOwner, PinRecord};

    fn owner(tgid: u32, count: u32, first_ns: u64, stack_id: i64) -> PinOwner {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"app");
        PinOwner { tgid, count, first_ns, stack_id, api: Api::PinUserPagesFast as u32, longterm: 1, comm, object: PinObject::NONE }
    }
    const EMPTY: PinOwner =
        PinOwner { tgid: 0, count: 0, first_ns: 0, stack_id: -1, api: 0, longterm: 0, comm: [0; 16], object: PinObject::NONE };

    fn no_holders(_: &[PinObject]) -> crate::model::holders::Holders {
        crate::model::holders::Holders::default()
    }

    fn caller(id: i64) -> Caller {
        match id {
            1 => Caller { function: "io_sqe_buffer_register".into(), subsystem: Subsystem::IoUring, module: None },
            2 => Caller { function: "bio_iov_iter_get_pages".into(), subsystem: Subsystem::DirectIo, module: None },
            _ => Caller { function: "unknown".into(), subsystem: Subsystem::Other, module: None },
        }
    }

    /// Unbalanced sites are return addresses; the tests use small numbers
    /// that name the same callers as the stack ids.
    fn site(ip: u64) -> Caller {
        caller(ip as i64)
    }

    fn cx<'a>(now: u64, caller: &'a dyn Fn(i64) -> Caller, alive: &'a dyn Fn(u32) -> bool) -> Context<'a> {
        Context {
            now_ns: now,
            since_ns: 0,
            caller,
            site: &site,
            alive,
            holders: &no_holders,
            kernel_outstanding: None,
            untracked_pins: 0,
            placement: None,
        }
    }

    /// A short-term pin held 2 s on a movable page is a weak pin; the same
    /// on a Normal page, a LONGTERM pin on a movable page, or a short one
    /// younger than the threshold is not.
    #[test]
    fn weak_pins_are_short_term_pins_held_on_movable_pages() {
        use crate::kernel::placement::{Placement, ZoneRange};
        let base = 0xffff_ea00_0000_0000u64;
        let zone = |name: &str, start_pfn| ZoneRange { name: name.into(), start_pfn, spanned: 100 };
        let place = Placement { vmemmap_base: base, page_struct_size: 64, zones: vec![zone("Normal", 0), zone("Movable", 100)] };
        let folio = |pfn: u64| base + pfn * 64;
        let short = |tgid, count, first_ns| PinOwner { longterm: 0, ..owner(tgid, count, first_ns, 2) };
        let maps = TrackingMaps {
            pins: vec![
                // tgid 10: 3 pages in Movable, 1 in Normal, for 2 s.
                (folio(150), PinRecord::of([short(10, 2, 0), EMPTY, EMPTY])),
                (folio(151), PinRecord::of([short(10, 1, 0), EMPTY, EMPTY])),
                (folio(5), PinRecord::of([short(10, 1, 0), EMPTY, EMPTY])),
                // tgid 20: Normal only.
                (folio(6), PinRecord::of([short(20, 4, 0), EMPTY, EMPTY])),
                // tgid 30: LONGTERM on Movable.
                (folio(152), PinRecord::of([owner(30, 8, 0, 1), EMPTY, EMPTY])),
                // tgid 40: short on Movable, 0.5 s.
                (folio(153), PinRecord::of([short(40, 1, 1_500_000_000), EMPTY, EMPTY])),
            ],
            ..Default::default()
        };
        let c = Context { placement: Some(&place), ..cx(2_000_000_000, &caller, &|_| true) };
        let r = analyze(&maps, &c, &LeakPolicy::default(), None);
        let weak: Vec<_> = r.leaks.iter().filter(|l| l.kind == LeakKind::WeakPin).collect();
        assert_eq!(weak.len(), 1, "{:?}", r.leaks);
        assert_eq!((weak[0].owner_tgid, weak[0].pages, weak[0].zone.as_deref()), (Some(10), 3, Some("Movable")));
        let h10 = r.holdings.iter().find(|h| h.owner_tgid == 10).expect("holding of 10");
        assert_eq!(h10.zones, BTreeMap::from([("Movable".to_string(), 3), ("Normal".to_string(), 1)]));
        let h30 = r.holdings.iter().find(|h| h.owner_tgid == 30).expect("holding of 30");
        assert_eq!(h30.zones, BTreeMap::from([("Movable".to_string(), 8)]));
        // Without zones nothing is placed and nothing is weak.
        let r = analyze(&maps, &cx(2_000_000_000, &caller, &|_| true), &LeakPolicy::default(), None);
        assert!(r.leaks.is_empty() && r.holdings.iter().all(|h| h.zones.is_empty()), "{:?}", r.leaks);
        // A long-held signal on a LONGTERM holding names its dominant zone.
        let policy = LeakPolicy { long_held: Duration::from_secs(1), ..Default::default() };
        let r = analyze(&maps, &c, &policy, None);
        let lh = r.leaks.iter().find(|l| l.owner_tgid == Some(30)).expect("long-held of 30");
        assert_eq!((lh.kind, lh.zone.as_deref()), (LeakKind::LongHeld, Some("Movable")));
    }

    /// The map_records fuzz target's crashes: unbalanced counts summing
    /// past u64::MAX, and a kernel total near i64::MIN, overflowed.
    #[test]
    fn extreme_map_values_do_not_overflow() {
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([owner(7, 3, 10, 1), EMPTY, EMPTY]))],
            exited: HashMap::new(),
            unbalanced: vec![(1, u64::MAX), (2, u64::MAX)],
        };
        let alive = |_| true;
        let mut c = cx(20, &caller, &alive);
        c.kernel_outstanding = Some(i64::MIN);
        let r = analyze(&maps, &c, &LeakPolicy::default(), None);
        assert_eq!(r.tracked_outstanding, 3);
        assert!(r.notes[0].starts_with(&format!("{} unpins matched no pin", u64::MAX)), "{:?}", r.notes);
        c.kernel_outstanding = Some(i64::MAX);
        let r = analyze(&maps, &c, &LeakPolicy::default(), None);
        assert!(r.notes.iter().any(|n| n.contains(&format!("{} were taken before", i64::MAX - 3))), "{:?}", r.notes);
    }

    #[test]
    fn groups_by_owner_and_site_oldest_first() {
        let maps = TrackingMaps {
            pins: vec![
                (0x1000, PinRecord::of([owner(10, 1, 5_000_000_000, 1), EMPTY, EMPTY])),
                (0x2000, PinRecord::of([owner(10, 2, 1_000_000_000, 1), owner(11, 1, 9_000_000_000, 2), EMPTY])),
            ],
            ..Default::default()
        };
        let r = analyze(&maps, &cx(10_000_000_000, &caller, &|_| true), &LeakPolicy::default(), None);
        assert_eq!(r.tracked_outstanding, 4);
        assert_eq!(r.holdings.len(), 2);
        assert_eq!((r.holdings[0].owner_tgid, r.holdings[0].pages), (10, 3));
        assert!((r.holdings[0].oldest_age_secs - 9.0).abs() < 1e-9);
        assert!(r.leaks.is_empty(), "nothing is older than 300 s");
    }

    #[test]
    fn long_held_orphaned_and_per_subsystem_thresholds() {
        let maps = TrackingMaps {
            pins: vec![
                (0x1000, PinRecord::of([owner(10, 256, 0, 1), EMPTY, EMPTY])),
                (0x2000, PinRecord::of([owner(20, 8, 0, 2), EMPTY, EMPTY])),
                (0x3000, PinRecord::of([owner(30, 4, 100, 2), EMPTY, EMPTY])),
            ],
            exited: HashMap::from([(30, 200)]),
            ..Default::default()
        };
        let mut policy = LeakPolicy { long_held: Duration::from_secs(5), ..Default::default() };
        policy.per_subsystem.insert(Subsystem::IoUring, Duration::from_secs(60));
        let r = analyze(&maps, &cx(10_000_000_000, &caller, &|_| true), &policy, None);
        let kinds: Vec<(LeakKind, Option<u32>, u64)> = r.leaks.iter().map(|l| (l.kind, l.owner_tgid, l.pages)).collect();
        // io_uring (60 s override) is not long-held at 10 s; direct-io (5 s) is.
        assert!(kinds.contains(&(LeakKind::LongHeld, Some(20), 8)));
        assert!(kinds.contains(&(LeakKind::Orphaned, Some(30), 4)));
        assert!(!kinds.iter().any(|k| k.1 == Some(10)));
    }

    #[test]
    fn pins_shared_by_several_processes_are_never_orphaned() {
        let shared = owner(gup_common::SHARED_OWNER, 6, 500, 1);
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([owner(30, 1, 500, 1), owner(31, 1, 500, 1), shared]))],
            ..Default::default()
        };
        // Every process looks dead: the two single owners are orphaned,
        // the shared slot is not.
        let r = analyze(&maps, &cx(1_000, &caller, &|_| false), &LeakPolicy::default(), None);
        assert_eq!(r.tracked_outstanding, 8);
        let shared_row = r.holdings.iter().find(|h| h.owner_tgid == gup_common::SHARED_OWNER).expect("shared row");
        assert!(!shared_row.orphaned);
        assert!(r.holdings.iter().filter(|h| h.owner_tgid != gup_common::SHARED_OWNER).all(|h| h.orphaned));
    }

    /// An exited owner's ring that a live process holds is held by it; one
    /// nobody holds is orphaned only once the grace period has passed.
    #[test]
    fn held_by_a_live_process_is_not_orphaned_and_grace_delays_orphaned() {
        let ring = PinObject { ino: 77, dev: 14, mode: 0o600, _pad: 0 };
        let gone = PinObject { ino: 78, ..ring };
        let mut a = owner(30, 4, 100, 1);
        a.object = ring;
        let mut b = owner(31, 2, 100, 1);
        b.object = gone;
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([a, b, EMPTY]))],
            exited: HashMap::from([(30, 1_000), (31, 1_000)]),
            ..Default::default()
        };
        let asked = std::cell::RefCell::new(vec![]);
        let holders = |objects: &[PinObject]| {
            asked.borrow_mut().extend_from_slice(objects);
            let by_object = BTreeMap::from([(ring, vec![ObjectHolder { pid: 40, comm: "child".into(), cgroup: "/a".into() }])]);
            crate::model::holders::Holders { by_object, unreadable: 1, ..Default::default() }
        };
        let policy = LeakPolicy { long_held: Duration::from_secs(3600), ..Default::default() };
        let at = |now: u64| {
            let c = Context { holders: &holders, ..cx(now, &caller, &|_| false) };
            analyze(&maps, &c, &policy, None)
        };
        // Within the grace period: held by 40, the other not yet orphaned.
        let r = at(1_000 + 1_000_000);
        let held = r.holdings.iter().find(|h| h.owner_tgid == 30).expect("held row");
        assert!(held.owner_exited && !held.orphaned);
        assert_eq!(held.holders, [ObjectHolder { pid: 40, comm: "child".into(), cgroup: "/a".into() }]);
        assert!(r.leaks.is_empty(), "{:?}", r.leaks);
        // Past it: the unheld one is orphaned, the held one still is not.
        let r = at(1_000 + ORPHAN_GRACE.as_nanos() as u64);
        let kinds: Vec<_> = r.leaks.iter().map(|l| (l.kind, l.owner_tgid)).collect();
        assert_eq!(kinds, [(LeakKind::Orphaned, Some(31))]);
        assert!(r.notes.iter().any(|n| n.contains("CAP_SYS_PTRACE")), "{:?}", r.notes);
        assert_eq!(asked.borrow()[..2], [ring, gone]);
    }

    /// RDMA contexts share their device's inode: they are asked about by
    /// their open file, held where the iterator found a holder, and
    /// orphaned with a note saying why when it could not run.
    #[test]
    fn character_device_objects_are_looked_up_by_file() {
        let mode = gup_common::object::S_IFCHR | 0o666;
        let ctx_a = PinObject { ino: 0xffff_8880_0000_1000, dev: 5, mode, _pad: 0 };
        let ctx_b = PinObject { ino: 0xffff_8880_0000_2000, ..ctx_a };
        let mut a = owner(30, 4, 100, 1);
        a.object = ctx_a;
        let mut b = owner(31, 2, 100, 1);
        b.object = ctx_b;
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([a, b, EMPTY]))],
            exited: HashMap::from([(30, 1_000), (31, 1_000)]),
            ..Default::default()
        };
        let policy = LeakPolicy { long_held: Duration::from_secs(3600), ..Default::default() };
        let later = 1_000 + ORPHAN_GRACE.as_nanos() as u64;
        let found = |_: &[PinObject]| {
            let by_object = BTreeMap::from([(ctx_a, vec![ObjectHolder { pid: 41, comm: "verbs-child".into(), cgroup: String::new() }])]);
            crate::model::holders::Holders { by_object, ..Default::default() }
        };
        let r = analyze(&maps, &Context { holders: &found, ..cx(later, &caller, &|_| false) }, &policy, None);
        let kinds: Vec<_> = r.leaks.iter().map(|l| (l.kind, l.owner_tgid)).collect();
        assert_eq!(kinds, [(LeakKind::Orphaned, Some(31))]);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let refused = |_: &[PinObject]| crate::model::holders::Holders { file_lookup_failed: Some("EINVAL".into()), ..Default::default() };
        let r = analyze(&maps, &Context { holders: &refused, ..cx(later, &caller, &|_| false) }, &policy, None);
        assert_eq!(r.leaks.len(), 2);
        assert!(r.notes.iter().any(|n| n.contains("RDMA and VFIO") && n.contains("EINVAL")), "{:?}", r.notes);
    }

    #[test]
    fn exit_before_pin_is_not_orphaned_but_a_dead_pid_is() {
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([owner(30, 1, 500, 1), EMPTY, EMPTY]))],
            exited: HashMap::from([(30, 100)]), // an earlier process with the same pid
            ..Default::default()
        };
        let r = analyze(&maps, &cx(1_000, &caller, &|_| true), &LeakPolicy::default(), None);
        assert!(!r.holdings[0].orphaned);
        let r = analyze(&maps, &cx(1_000, &caller, &|_| false), &LeakPolicy::default(), None);
        assert!(r.holdings[0].orphaned);
    }

    #[test]
    fn unbalanced_is_reported_once_per_site_with_the_usual_cause() {
        let maps = TrackingMaps { unbalanced: vec![(2, 512)], ..Default::default() };
        let r = analyze(&maps, &cx(0, &caller, &|_| true), &LeakPolicy::default(), None);
        assert_eq!(r.leaks.len(), 1);
        assert_eq!((r.leaks[0].kind, r.leaks[0].pages, r.leaks[0].caller.as_str()), (LeakKind::Unbalanced, 512, "bio_iov_iter_get_pages"));
        assert!(r.notes[0].contains("before gupwatch started"));
    }

    #[test]
    fn growth_needs_a_rise_at_every_reading() {
        let policy = LeakPolicy { growth_readings: 3, ..Default::default() };
        let mut g = GrowthTracker::default();
        let mut signals = vec![];
        for (i, n) in [1u32, 2, 3, 4, 4, 5].into_iter().enumerate() {
            let maps = TrackingMaps { pins: vec![(0x1000, PinRecord::of([owner(10, n, 0, 1), EMPTY, EMPTY]))], ..Default::default() };
            let r = analyze(&maps, &cx(i as u64, &caller, &|_| true), &policy, Some(&mut g));
            signals.push(r.leaks.iter().any(|l| l.kind == LeakKind::Growth));
        }
        assert_eq!(signals, [false, false, false, true, false, false]);
    }

    #[test]
    fn since_filters_old_pins_and_notes_explain_gaps() {
        let maps = TrackingMaps {
            pins: vec![(0x1000, PinRecord::of([owner(10, 2, 100, 1), owner(11, 3, 900, 1), EMPTY]))],
            ..Default::default()
        };
        let c = Context { since_ns: 500, kernel_outstanding: Some(10), untracked_pins: 7, ..cx(1000, &caller, &|_| true) };
        let r = analyze(&maps, &c, &LeakPolicy::default(), None);
        assert_eq!(r.holdings.len(), 1);
        assert_eq!(r.holdings[0].owner_tgid, 11);
        assert!(r.partial);
        assert_eq!(r.notes.len(), 2);
    }
}
