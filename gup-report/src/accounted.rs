//! Pinned memory as the kernel accounts it per process (`VmPin`, `VmLck`,
//! io_uring buffers): what `/api/snapshot` reports in reduced mode.
//! gup-user's `model::accounted` scans `/proc` to fill it.

use serde::{Deserialize, Serialize};

/// One process holding accounted pinned or locked memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Its name (`Name:` of status).
    pub comm: String,
    /// Pinned pages: the larger of `VmPin` and its io_uring buffers' pages
    /// (a buffer is not always charged to VmPin; see the module docs).
    pub pinned_pages: u64,
    /// `pinned_pages` in bytes.
    pub pinned_bytes: u64,
    /// `VmPin`, in bytes.
    pub vm_pin_bytes: u64,
    /// `VmLck`, in bytes.
    pub locked_bytes: u64,
    /// io_uring registered buffers over all its rings.
    #[serde(default)]
    pub io_uring_buffers: u32,
    /// Their bytes.
    #[serde(default)]
    pub io_uring_bytes: u64,
    /// The pages they span.
    #[serde(default)]
    pub io_uring_pages: u64,
}

/// One reading of accounted pins over every process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounted {
    /// Always `accounted`: these are the kernel's per-process charges,
    /// not traced pin calls.
    #[serde(default)]
    pub source: String,
    /// Holders (non-zero VmPin, VmLck or io_uring buffers), largest
    /// `VmPin` first, at most gup-user's `MAX_HOLDERS`.
    pub holders: Vec<Holder>,
    /// Processes whose status was read.
    #[serde(default)]
    pub processes: u32,
    /// Files that could not be read or parsed (processes that exited
    /// while being read are not counted: they simply hold nothing now).
    #[serde(default)]
    pub unreadable: u32,
    /// Descriptors looked at.
    #[serde(default)]
    pub fds: u64,
    /// Whether holders or descriptors were left out (the bounds above).
    #[serde(default)]
    pub truncated: bool,
}
