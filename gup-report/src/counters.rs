//! Counter totals in the terms of `/proc/vmstat`, as `/api/snapshot`
//! sends them; gup-user's `model::counters` sums them from a snapshot.

use serde::{Deserialize, Serialize};

/// Totals over all APIs, in the terms of `/proc/vmstat`. Read back (from
/// `/api/snapshot`), a counter an older daemon does not send is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// FOLL_PIN pins taken: what `nr_foll_pin_acquired` counts (pages the
    /// pin calls returned, plus pins they took and released again).
    pub pinned_pages: u64,
    /// FOLL_PIN pins released: what `nr_foll_pin_released` counts.
    pub unpinned_pages: u64,
    /// FOLL_GET references taken by `get_user_pages*` (not pins).
    pub referenced_pages: u64,
    /// Calls to pin functions.
    pub pin_calls: u64,
    /// Calls to unpin functions (nested ones excluded).
    pub unpin_calls: u64,
    /// Calls to get functions.
    pub get_calls: u64,
    /// Pin and get calls that returned an error.
    pub failed_calls: u64,
    /// FOLL_PIN pages the lock-free fast walk took.
    pub fast_pages: u64,
    /// FOLL_PIN pages the slow path took.
    pub slow_pages: u64,
    /// FOLL_PIN pages of fast calls whose split is unknown.
    pub unsplit_pages: u64,
    /// FOLL_PIN pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
}
