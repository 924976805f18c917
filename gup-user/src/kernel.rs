//! Step 1 of the data path: the running kernel, as facts. The one place
//! that knows kernel versions and what differs between kernels.
//!
//! In: `/sys/kernel/btf/vmlinux`, `/proc/kallsyms`, `uname`, `/proc/vmstat`,
//! the process's capabilities. Out: a [`plan::ProbePlan`] (which GUP
//! functions exist, where their arguments are, how to hook each) for
//! [`crate::probes`], and the kernel's own FOLL_PIN counters
//! ([`vmstat::FollPinCounters`]) that every count is compared with.
//!
//! * [`plan`]: the probe plan, from [`btf`] (functions, parameter names,
//!   FOLL_* values) and [`kallsyms`] (symbols, module functions, clones);
//!   never from version numbers.
//! * [`version`]: the release string and version, parsed here and nowhere
//!   else, read only where nothing else can tell.
//! * [`privileges`]: which capabilities the kernel checks after start-up,
//!   and dropping the rest once the probes are attached.
//! * [`vmstat`]: the kernel's own counters, `nr_foll_pin_acquired` and
//!   `nr_foll_pin_released`.
//! * [`errno`]: the kernel's errno names.
//! * [`placement`]: which zone a pinned folio lies in (`vmemmap_base`
//!   from `/proc/kcore`, zone ranges from `/proc/zoneinfo`).

pub mod btf;
pub mod errno;
pub mod kallsyms;
pub mod placement;
pub mod plan;
pub mod privileges;
pub mod version;
pub mod vmstat;
