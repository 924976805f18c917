//! Step 2 of the data path: the probes in the kernel and the maps they
//! count into.
//!
//! In: the [`crate::kernel::plan::ProbePlan`]. [`loader`] loads the
//! `gup-ebpf` programs and attaches each hook the plan chose (writing back
//! what really attached); the programs aggregate per CPU in the kernel's
//! maps (`API_STATS`, attribution, the per-folio tracking map). Out:
//! [`reader`] sums those maps into a [`crate::model::counters::Snapshot`]
//! and hands over the raw rows that [`crate::model::attribution`] and
//! [`crate::model::leaks`] turn into callers and leak signals.
//!
//! Around the hooks: [`modwatch`] follows the modules hooks sit on through
//! unload and load, [`linkinfo`] reads the kernel's count of kprobe runs
//! that never reached a program, and [`ebpflog`] turns the programs' debug
//! log into `tracing` events.

pub mod bpfstats;
pub mod ebpflog;
pub mod linkinfo;
pub mod loader;
pub mod modwatch;
pub mod reader;
