//! Pins taken before gupwatch started and still held: what the kernel
//! shows of them, so a restarted daemon is not blind to them. Built by
//! gup-user's `model::beforestart`; printed by `gupwatch leaks`.

use serde::{Deserialize, Serialize};

/// The `kind` of every [`HeldBeforeStart`] entry.
pub const HELD_BEFORE_START: &str = "held_before_start";

/// Pins one process held before gupwatch started, as the kernel shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBeforeStart {
    /// Always [`HELD_BEFORE_START`].
    pub kind: String,
    /// Where the kernel shows them: `io_uring` (registered buffers, from
    /// `/proc/PID/fdinfo`).
    pub source: String,
    /// Owning process.
    pub owner_tgid: u32,
    /// Its name.
    pub comm: String,
    /// Pins (pages the buffers span).
    pub pages: u64,
    /// Buffers.
    pub buffers: u32,
}
