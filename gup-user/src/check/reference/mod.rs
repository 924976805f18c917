//! A reference implementation of GUP, and differential checking of the
//! kernel against it.
//!
//! The model is pure Rust and touches no kernel:
//!
//! - [`space`]: an address space of VMAs (anonymous, shmem, dirty-tracked
//!   file, hugetlb, secretmem, PFN maps; shared or private; read/write;
//!   mlock) over page tables and folios (present, writable, dirty,
//!   PROT_NONE, special, AnonExclusive, the zero page, large folios,
//!   ZONE_MOVABLE/CMA), with the page faults that change them (COW,
//!   unshare, `fork`).
//! - [`gup`]: the GUP entry points on it: the lock-free fast walk that stops
//!   at the first page it refuses, the slow path with its VMA checks,
//!   faults and errnos, LONGTERM migration, pin accounting
//!   (`GUP_PIN_COUNTING_BIAS` for small folios, `_pincount` for large ones,
//!   `nr_foll_pin_*` including transient pins), and unpinning.
//! - [`profile`]: which rules the running kernel applies, derived from the
//!   probe plan's BTF and kallsyms facts.
//! - [`contracts`]: the API's contracts, checked on the model's calls and
//!   on the live kernel's counters.
//! - [`differential`]: a scenario's memory and syscall as a [`Setup`], the
//!   model's [`Prediction`] for it, and the comparison with what gupwatch
//!   and `/proc/vmstat` saw.

pub mod contracts;
pub mod differential;
pub mod gup;
pub mod profile;
pub mod space;

pub use contracts::Violation;
pub use differential::{compare, predict, BufferSpec, Captured, Observation, PageCounts, Prediction, Prefault, Prot, Setup, Syscall};
pub use profile::{KernelProfile, Mutation};
pub use space::Backing;

#[cfg(test)]
mod tests;
