//! gupwatch: see how a Linux host pins user memory.
//!
//! The modules follow a pin on its way from the kernel to a Prometheus
//! line, one folder per step:
//!
//! 1. [`kernel`]: the running kernel as facts: its BTF and kallsyms
//!    resolved into a probe plan (which GUP functions exist, where their
//!    arguments are, how to hook each), and its own FOLL_PIN counters.
//! 2. [`probes`]: the `gup-ebpf` programs loaded and attached per plan;
//!    they count into per-CPU maps in the kernel, which the reader sums.
//!    [`session`] starts them the same way for every command, and falls
//!    back to the reduced mode when they do not load.
//! 3. [`model`]: what was read, as plain data: counters, callers, hold
//!    times, outstanding pins and leak signals.
//! 4. [`collect`]: one reading of every source, on demand.
//! 5. [`export`]: the reading written out: `/metrics`, `/api/snapshot`,
//!    and the HTTP server; the JSON documents' types are the `gup-report`
//!    crate ([`gup_report`]), which xtask reads them with too.
//!
//! The front ends read that path: [`tui`] (the live view), [`summary`],
//! [`daemon`] (`gupwatch run`, configured by [`config`]), and the
//! `gupwatch` binary, which parses arguments and dispatches. Beside the
//! path: [`diagnose`] (`gupwatch doctor`, the reduced mode, the panic
//! report) and [`check`] (the self-tests against `/proc/vmstat`, with the
//! built-in workloads and a reference model of GUP).

pub mod args;
pub mod check;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod diagnose;
pub mod export;
#[cfg(test)]
mod golden;
pub mod kernel;
pub mod logging;
pub mod memstat;
pub mod model;
pub mod probes;
pub mod session;
pub mod summary;
pub mod tui;
