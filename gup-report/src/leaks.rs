//! The leak report: what is pinned now and what looks leaked. Built by
//! gup-user's `model::leaks::analyze`; printed by `gupwatch leaks --json` (fields in
//! declaration order) and served under `leaks` in `/api/snapshot?leaks=1`,
//! which the live view reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CgroupPins, ObjectRow, Caller, Subsystem};

/// A leak signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakKind {
    /// Held longer than the threshold.
    LongHeld,
    /// The owner exited; the pins remain.
    Orphaned,
    /// Unpins without a matching pin seen.
    Unbalanced,
    /// Outstanding pins of a call site keep rising.
    Growth,
    /// Pins without FOLL_LONGTERM on ZONE_MOVABLE pages held longer than
    /// the weak-pin threshold: they block migration and memory hot-unplug
    /// (a LONGTERM pin would have migrated the pages out first).
    WeakPin,
}

impl LeakKind {
    /// The label value used in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::LongHeld => "long_held",
            LeakKind::Orphaned => "orphaned",
            LeakKind::Unbalanced => "unbalanced",
            LeakKind::Growth => "growth",
            LeakKind::WeakPin => "weak_pin",
        }
    }
}

/// Pins held by one owner from one call site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holding {
    /// Owning process.
    pub owner_tgid: u32,
    /// Its `comm` at pin time.
    pub comm: String,
    /// The API that pinned.
    #[serde(default)]
    pub api: String,
    /// Who called it.
    pub caller: Caller,
    /// Pins held.
    pub pages: u64,
    /// Age of the oldest of them.
    pub oldest_age_secs: f64,
    /// Any of them FOLL_LONGTERM.
    #[serde(default)]
    pub longterm: bool,
    /// Orphaned: the owner has exited and no live process holds the
    /// object that keeps the pins, past the grace period its teardown gets.
    #[serde(default)]
    pub orphaned: bool,
    /// The owner (creator) has exited: no process maps the pinned pages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_exited: bool,
    /// The live processes that hold the object behind the pins (the
    /// io_uring ring the creator registered them on): inherited across a
    /// fork or received over a socket. Looked for only once the owner has
    /// exited; then the pins are *held by* them, not leaked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<ObjectHolder>,
    /// Pages per zone (`/proc/zoneinfo` names: `DMA32`, `Normal`,
    /// `Movable`, ...); empty when zones are unknown (no `/proc/kcore`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, u64>,
    /// The object, for grouping (not in the documents).
    #[serde(skip)]
    pub object: gup_common::object::PinObject,
    /// Nanoseconds since the owner exited (`u64::MAX`: long ago, or an exit
    /// gupwatch did not see), for the grace period (not in the documents).
    #[serde(skip)]
    pub exit_age_ns: u64,
    /// Kernel stack id of the call site (for grouping; not in the
    /// documents, 0 when read back).
    #[serde(skip)]
    pub stack_id: i64,
}

/// A live process that holds the object behind pins (has its file open, or
/// mapped).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectHolder {
    /// The process.
    pub pid: u32,
    /// Its `comm` now.
    pub comm: String,
    /// Its cgroup (v2 path; empty if unknown).
    #[serde(default)]
    pub cgroup: String,
}

/// One leak signal with what it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leak {
    /// Which signal.
    pub kind: LeakKind,
    /// Pins concerned.
    pub pages: u64,
    /// Owning process (none for unbalanced unpins).
    pub owner_tgid: Option<u32>,
    /// Its `comm`.
    pub comm: Option<String>,
    /// The call site (pin site, or unpin site for unbalanced).
    pub caller: String,
    /// Its subsystem.
    pub subsystem: Subsystem,
    /// Age of the oldest pin concerned.
    pub age_secs: Option<f64>,
    /// The zone of the pages concerned: `Movable` for `weak_pin`, else the
    /// zone holding most of the holding's pages (none when unknown or not
    /// about a holding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Leak {
    /// A signal about a holding: its pages, owner, call site and age.
    pub fn of_holding(kind: LeakKind, h: &Holding) -> Leak {
        Leak {
            kind,
            pages: h.pages,
            owner_tgid: Some(h.owner_tgid),
            comm: Some(h.comm.clone()),
            caller: h.caller.function.clone(),
            subsystem: h.caller.subsystem,
            age_secs: Some(h.oldest_age_secs),
            zone: h.zones.iter().max_by_key(|(_, n)| **n).map(|(z, _)| z.clone()),
        }
    }
}

/// The report: what is pinned now, and what looks leaked. Fields newer
/// than the first daemons that served it default when read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakReport {
    /// Pins gupwatch tracks as outstanding.
    pub tracked_outstanding: u64,
    /// Pins the kernel counts as outstanding (`nr_foll_pin_acquired -
    /// nr_foll_pin_released`), including those taken before gupwatch started.
    pub kernel_outstanding: Option<i64>,
    /// Pins seen but not tracked (the tracking map was full).
    #[serde(default)]
    pub untracked_pins: u64,
    /// Whether the view is partial (`untracked_pins > 0`).
    #[serde(default)]
    pub partial: bool,
    /// Outstanding pins by owner and call site, oldest first.
    #[serde(default)]
    pub holdings: Vec<Holding>,
    /// Leak signals.
    #[serde(default)]
    pub leaks: Vec<Leak>,
    /// Explanations the reader needs (gap to the kernel's total, partial view).
    #[serde(default)]
    pub notes: Vec<String>,
    /// i915 userptr objects still holding pinned pages (filled by the
    /// caller from the object map; empty where i915 is absent).
    #[serde(default)]
    pub i915_objects: Vec<ObjectRow>,
    /// How long the pins released while tracking were held, per
    /// subsystem and LONGTERM (filled by `gupwatch leaks`; absent from
    /// `/api/snapshot`, which has its own `hold_times`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold_times: Vec<super::HoldHistogram>,
    /// Pins held now per cgroup (filled by `gupwatch leaks`; absent from
    /// `/api/snapshot`, which has its own `cgroups`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupPins>,
    /// Pins held since before gupwatch started, as the kernel shows them
    /// (filled by `gupwatch leaks`): with `tracked_outstanding`, what
    /// `kernel_outstanding` counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_before_start: Vec<super::HeldBeforeStart>,
}

