//! The JSON documents gupwatch serves and prints, as one set of serde
//! types that the writers fill and the readers parse (issue 17):
//!
//! * [`SnapshotReport`]: `/api/snapshot`, with its `callers=1` rows
//!   ([`CallerReport`]) and its `leaks=1` report; written by
//!   [`crate::export::api`], read by the live view (`top --connect`).
//! * [`LeakReport`]: `gupwatch leaks --json`, and `leaks` in the snapshot;
//!   built by [`crate::model::leaks::analyze`].
//!
//! A field added to a document is added here once, and every reader sees
//! it; the golden tests (`report/tests.rs`) hold the bytes the writers
//! produce.

mod before;
mod holds;
mod leaks;
mod snapshot;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use before::{HeldBeforeStart, HELD_BEFORE_START};
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
