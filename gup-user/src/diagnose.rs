//! Beside the data path: when it cannot run, why, and what still can.
//!
//! In: the host (privileges, BTF, lockdown, attach trials with the real
//! loader) and the error a start-up met. Out: findings with fixes, and the
//! reduced mode's report from `/proc` alone.
//!
//! * [`doctor`]: `gupwatch doctor`, a verdict from gathered facts.
//! * [`host`]: why probes could not attach, and the reduced mode.
//! * [`crash`]: a panic reported like an error, naming what to do.

pub mod crash;
pub mod doctor;
pub mod host;
