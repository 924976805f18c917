//! The i915 userptr objects of the leak report; gup-user's `model::i915`
//! builds the rows from the object map.

use serde::{Deserialize, Serialize};

/// One userptr object, as reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectRow {
    /// Kernel address of the `drm_i915_gem_object`.
    pub object: String,
    /// Owning process.
    pub owner_tgid: u32,
    /// Its `comm`.
    pub comm: String,
    /// Pages pinned now.
    pub pinned_pages: u64,
    /// Pages pinned over its life.
    pub total_pinned: u64,
    /// Pin attempts, and how many returned -EAGAIN (mmu-notifier races).
    pub attempts: u64,
    /// -EAGAIN results.
    pub eagain: u64,
    /// Short pins.
    pub short_pins: u64,
    /// Creation to first pin, in seconds.
    pub create_to_pin_secs: Option<f64>,
    /// First pin to last release, in seconds.
    pub pin_to_release_secs: Option<f64>,
    /// The owner exited while pages were still pinned.
    pub orphaned: bool,
}
