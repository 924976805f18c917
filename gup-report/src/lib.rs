//! The JSON documents gupwatch serves and prints, as one set of serde
//! types that the writers fill and the readers parse (issue 17):
//!
//! * [`SnapshotReport`]: `/api/snapshot`, with its `callers=1` rows
//!   ([`CallerReport`]) and its `leaks=1` report; written by gup-user's
//!   `export::api`, read by the live view (`top --connect`) and xtask.
//! * [`LeakReport`]: `gupwatch leaks --json`, and `leaks` in the snapshot;
//!   built by gup-user's `model::leaks::analyze`.
//!
//! * [`doctor::Report`]: `gupwatch doctor --json`, in its own module
//!   (its `Report`, `Status` and `Finding` are doctor's words).
//!
//! With them the plain records they embed ([`Caller`], [`Subsystem`],
//! [`Totals`], [`Accounted`], [`CgroupPins`], [`ObjectRow`]). This crate
//! needs neither aya nor the eBPF object, so xtask, which cannot build
//! gup-user, reads the documents through the same types as the daemon
//! writes them. A field added to a document is added here once, and every
//! reader sees it; gup-user's golden tests (`src/golden/`) hold the bytes
//! the writers produce.

mod accounted;
mod attribution;
mod before;
mod cgroups;
mod counters;
pub mod doctor;
mod holds;
mod i915;
mod leaks;
mod snapshot;

use serde::Serialize;

pub use accounted::{Accounted, Holder};
pub use attribution::{Caller, Subsystem};
pub use before::{HeldBeforeStart, HELD_BEFORE_START};
pub use cgroups::{CgroupInfo, CgroupPins, OTHER_CGROUP, UNKNOWN_CGROUP};
pub use counters::Totals;
pub use i915::ObjectRow;
pub use holds::{hold_table, short_duration, HoldHistogram};
pub use leaks::{Holding, ObjectHolder, Leak, LeakKind, LeakReport};
pub use snapshot::{
    ApiReport, CallerReport, ErrnoReport, HookReport, Kind, KernelCounters, Mode, ProcessReport, SnapshotReport,
    SubsystemReport,
};

/// A document as `/api/snapshot` sends it: pretty, with the keys of every
/// object sorted.
///
/// The sorting is the wire format: the document has always been written
/// through `serde_json::Value`, whose maps (serde_json without
/// `preserve_order`) sort their keys, so clients have seen sorted keys at
/// every level, whatever order the types declare their fields in. The
/// `Value` here is that sorting step only; nothing reads it.
pub fn to_sorted_pretty_json<T: Serialize>(doc: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&serde_json::to_value(doc)?)
}
