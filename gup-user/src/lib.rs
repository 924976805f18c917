//! gupwatch: see how a Linux host pins user memory.
//!
//! The data path, one module per step:
//!
//! 1. [`plan`] resolves the running kernel (BTF via [`btf`], symbols via
//!    [`kallsyms`]) into a probe plan: which GUP functions exist, where their
//!    arguments are, and how to hook each.
//! 2. [`loader`] loads the `gup-ebpf` programs and attaches them per plan;
//!    the programs aggregate in per-CPU maps in the kernel. [`session`]
//!    does steps 1 and 2 the same way for every command, and falls back to
//!    the reduced mode when the probes do not load.
//! 3. [`reader`] reads those maps into a [`model::Snapshot`].
//! 4. [`model`] turns snapshots into deltas and totals.
//! 5. Front ends: [`check`] (compares with `/proc/vmstat` via [`vmstat`],
//!    driving the kernel with [`scenarios`]), [`host`] (diagnosis and the
//!    reduced mode for kernels that refuse tracing programs), [`summary`],
//!    [`daemon`] (`gupwatch run`), and the `gupwatch` binary, which only
//!    parses arguments and dispatches.

pub mod accounted;
pub mod args;
pub mod attribution;
pub mod bench;
pub mod beforestart;
pub mod bpfstats;
pub mod btf;
pub mod cgroups;
pub mod check;
pub mod client;
pub mod collect;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod doctor;
pub mod ebpflog;
pub mod errno;
pub mod export;
pub mod holders;
pub mod host;
pub mod i915;
pub mod holdtime;
pub mod http;
pub mod kallsyms;
pub mod kernel;
pub mod leaks;
pub mod linkinfo;
pub mod loader;
pub mod logging;
pub mod memstat;
pub mod model;
pub mod modwatch;
pub mod plan;
pub mod privileges;
pub mod reader;
pub mod reference;
pub mod report;
pub mod scenarios;
pub mod session;
pub mod stress;
pub mod summary;
pub mod tui;
pub mod vmstat;
pub mod webconfig;
