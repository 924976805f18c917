//! Step 3 of the data path: what gupwatch knows, as plain data, and the
//! analyses on it. Nothing here loads a probe or writes an output format.
//!
//! In: what [`crate::probes::reader`] read from the maps, and `/proc`.
//! Out: the counters, callers, holders and leak signals that
//! [`crate::collect`] gathers into one reading.
//!
//! * [`counters`]: snapshots, deltas and totals in vmstat's terms.
//! * [`attribution`]: who pins (callers and subsystems from kernel stacks).
//! * [`leaks`]: outstanding pins and leak signals, with [`holders`] (live
//!   holders of the objects behind pins) and [`beforestart`] (pins taken
//!   before gupwatch attached).
//! * [`holdtime`]: pin-to-unpin times per subsystem.
//! * [`cgroups`]: the cgroup, unit, pod and container of a pin.
//! * [`i915`]: the i915 userptr objects.
//! * [`accounted`]: pinned memory as the kernel accounts it per process
//!   (`/proc`), which the reduced mode reports when no probe runs.

pub mod accounted;
pub mod attribution;
pub mod beforestart;
pub mod cgroups;
pub mod counters;
pub mod holders;
pub mod holdtime;
pub mod i915;
pub mod leaks;
