//! Everything the programs share with user space, by name: the read-only
//! globals the loader writes before load (`#[no_mangle]`, found by symbol
//! name) and every map (`#[map]`, found by map name). Renaming any of them
//! breaks `gup-user/src/probes/loader.rs` and `reader.rs`.
//!
//! The globals are read-only after load, so the verifier treats them as
//! constants and removes branches they turn off. They are read through
//! [`read_global`] and the readers below, all volatile: the compiler must
//! not fold the zero initialisers the loader replaces.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, StackTrace},
};
use gup_common::{
    hold::{HoldHist, HOLD_CLASSES, HOLD_PENDING_CAPACITY},
    i915::I915Object,
    irq::IrqUnpins,
    object::{ObjectLayout, HOLDER_FILES_CAPACITY},
    skipped::{TextRange, UnpinTexts},
    Api, ApiStats, AttribKey, AttribValue, HookArgs, Inflight, PinRecord, API_COUNT, ATTRIB_CAPACITY, DIAG_COUNT,
    ERRNO_CAPACITY, EXITED_CAPACITY, I915_OBJECTS_CAPACITY, INFLIGHT_CAPACITY, STACK_CAPACITY, TRACK_CAPACITY,
    UNBALANCED_CAPACITY,
};

use crate::diag::DiagNote;

// ---- Globals written by the loader ----

/// Where each API keeps its arguments on the running kernel; written by the
/// loader before load, read-only (and so constant to the verifier) after.
#[no_mangle]
pub(crate) static HOOK_ARGS: [HookArgs; API_COUNT] = [HookArgs::NONE; API_COUNT];

/// The running kernel's FOLL_LONGTERM bit (it moved in 6.3); 0 disables
/// LONGTERM accounting.
#[no_mangle]
static FOLL_LONGTERM: u64 = 0;

/// The running kernel's FOLL_PIN bit (it moved in 6.3).
#[no_mangle]
pub(crate) static FOLL_PIN: u64 = 0;

/// Offset of `compound_head` in `struct page` (from BTF), to find a page's
/// folio: the kernel counts pins per folio.
#[no_mangle]
pub(crate) static PAGE_COMPOUND_HEAD: u64 = 8;

/// `sizeof(struct page)` (from BTF), to walk a range of pages.
#[no_mangle]
pub(crate) static STRUCT_PAGE_SIZE: u64 = 64;

/// The kernel's kretprobe return trampoline (from kallsyms; 0: unknown),
/// which a kretprobe writes over its function's return address.
#[no_mangle]
pub(crate) static RETURN_TRAMPOLINE: u64 = 0;

/// Each API's function text (from kallsyms), to tell whether a release
/// counted with no record around it was made inside a given unpin
/// ([`gup_common::skipped`]). `[0, 0)` where unknown.
#[no_mangle]
static TEXT_RANGES: [TextRange; API_COUNT] = [TextRange::NONE; API_COUNT];

/// The hooked unpin functions' texts (from kallsyms), for the check on
/// every hooked unpin's exit (`exit::in_unpin_text`).
#[no_mangle]
pub(crate) static UNPIN_FUNCTIONS: UnpinTexts = UnpinTexts::NONE;

/// The core kernel's text (from kallsyms; `[0, 0)` if unknown). A hooked
/// unpin returning to an address outside it was called from a module or
/// tail-called under another function's BPF trampoline, maybe another
/// hooked unpin's ([`gup_common::skipped`]).
#[no_mangle]
static KERNEL_TEXT: TextRange = TextRange::NONE;

/// Offset of `stack` in `struct task_struct` (from BTF); 0 if unknown,
/// which turns interrupt-context detection off.
#[no_mangle]
pub(crate) static TASK_STACK_OFFSET: u64 = 0;

/// The kernel's `THREAD_SIZE` (16 KiB, 32 KiB with KASAN; from kallsyms):
/// the task stack's length, beyond which an address is on another stack.
#[no_mangle]
pub(crate) static TASK_STACK_SIZE: u64 = 16384;

/// Where the file of a syscall's descriptor is (from BTF), for the object
/// of LONGTERM pins (`object.rs`); `task_files == 0`: lookup off.
#[no_mangle]
pub(crate) static OBJECT_LAYOUT: ObjectLayout = ObjectLayout::NONE;

/// 1: track every pin per folio (outstanding pins, leaks); 0: counters only.
#[no_mangle]
pub(crate) static TRACK_PINS: u64 = 1;

/// 1: every hook program returns at once. Only for measuring what the
/// attach mechanisms (trampolines, kprobes) cost by themselves
/// (`cargo xtask bench --empty-programs`); read-only, so at 0 the check
/// is gone after verification.
#[no_mangle]
pub(crate) static EMPTY_PROGRAMS: u64 = 0;

/// 1: log the first few diagnostics events through aya-log (user space
/// sets it only when gupwatch runs at debug level). Read-only, so at 0 the
/// verifier knows every logging branch is dead and removes it: the default
/// level pays nothing.
#[no_mangle]
pub(crate) static LOG_DIAG: u64 = 0;

// ---- Reading them: volatile, so the compiler does not fold the zero
// initialisers the loader replaces ----

#[inline(always)]
pub(crate) fn read_global(g: &u64) -> u64 {
    // SAFETY: a plain read of a global, volatile as in `args::hook_args`.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub(crate) fn foll_longterm() -> u64 {
    // SAFETY: as in `args::hook_args`.
    unsafe { core::ptr::read_volatile(&FOLL_LONGTERM) }
}

#[inline(always)]
pub(crate) fn text_range(api: Api) -> TextRange {
    // SAFETY: a plain read of a global, volatile as in `args::hook_args`.
    unsafe { core::ptr::read_volatile(&TEXT_RANGES[api as usize]) }
}

#[inline(always)]
pub(crate) fn kernel_text() -> TextRange {
    // SAFETY: a plain read of a global, volatile as in `args::hook_args`.
    unsafe { core::ptr::read_volatile(&KERNEL_TEXT) }
}

// ---- Maps ----

/// Per-API counters, summed over CPUs by user space.
#[map]
pub(crate) static API_STATS: PerCpuArray<ApiStats> = PerCpuArray::with_max_entries(API_COUNT as u32, 0);

/// gupwatch's own health counters (see [`gup_common::Diag`]).
#[map]
pub(crate) static DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_COUNT as u32, 0);

/// The outermost hooked call each thread is in: entry time and arguments for
/// the exit program, and the guard that keeps nested unpins from being
/// counted twice.
/// An LRU: a thread whose exit program the kernel skipped, and that never
/// calls again (it exited), would otherwise keep its record for good.
#[map]
pub(crate) static INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// Who called what from where: per (process, API, kernel stack) counters.
/// Bounded; when full, calls are still in `API_STATS` and `Diag::AttribFull`
/// counts what could not be attributed.
#[map]
pub(crate) static ATTRIB: HashMap<AttribKey, AttribValue> = HashMap::with_max_entries(ATTRIB_CAPACITY, 0);

/// Kernel call stacks at entry to a hooked function.
#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(STACK_CAPACITY, 0);

/// Failed calls per API and errno, keyed `api << 16 | errno`. Sparse:
/// errors are rare, so user space reads a handful of entries, not a table.
#[map]
pub(crate) static ERRNOS: HashMap<u32, u64> = HashMap::with_max_entries(ERRNO_CAPACITY, 0);

/// Outstanding pins per folio, with their owners. Bounded: when full, pins
/// are counted as untracked (`Diag::PinsUntracked`), never dropped from the
/// totals. User space may resize it at load time.
#[map]
pub(crate) static PINS: HashMap<u64, PinRecord> = HashMap::with_max_entries(TRACK_CAPACITY, 0);

/// Pages unpinned that were never seen pinned, per unpin call site (return
/// address): reported once per site.
#[map]
pub(crate) static UNBALANCED: HashMap<u64, u64> = HashMap::with_max_entries(UNBALANCED_CAPACITY, 0);

/// Each kernel stack's subsystem class for the hold-time histograms
/// (`gup_common::hold`), indexed by stack id; written by user space once
/// it has symbolized the stack, 0 (pending) until then.
#[map]
pub(crate) static STACK_CLASS: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::with_max_entries(STACK_CAPACITY, 0);

/// Hold times of released pins per (subsystem class, LONGTERM): see
/// `gup_common::hold::hold_index`.
#[map]
pub(crate) static HOLD: PerCpuArray<HoldHist> = PerCpuArray::with_max_entries(HOLD_CLASSES * 2, 0);

/// Hold times of released pins whose stack was not yet classified, per
/// `gup_common::hold::pending_key` (stack id, LONGTERM).
#[map]
pub(crate) static HOLD_PENDING: HashMap<u64, HoldHist> = HashMap::with_max_entries(HOLD_PENDING_CAPACITY, 0);

/// Processes that exited, with the time: pins they still own are orphaned.
#[map]
pub(crate) static EXITED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(EXITED_CAPACITY, 0);

/// The open files (`struct file` addresses) whose live descriptors the
/// holder iterator reports (`holder_iter.rs`); filled by user space before
/// each run, at most [`HOLDER_FILES_CAPACITY`].
#[map]
pub(crate) static HOLDER_FILES: HashMap<u64, u8> = HashMap::with_max_entries(HOLDER_FILES_CAPACITY, 0);

/// i915 userptr objects by address.
#[map]
pub(crate) static I915_OBJECTS: HashMap<u64, I915Object> = HashMap::with_max_entries(I915_OBJECTS_CAPACITY, 0);

/// The i915 userptr call each thread is in: `[API index, object]`, so pins
/// and unpins inside it are credited to the object. Nested calls on the
/// same object keep the outer entry (`gup_common::i915::enter_replaces`).
#[map]
pub(crate) static I915_CUR: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// When each process last created a userptr object (the ioctl does not
/// expose the object; its first pin does).
#[map]
pub(crate) static I915_CREATED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(EXITED_CAPACITY, 0);

/// A diagnostics event waiting to be logged on this CPU: written where it
/// happens (anywhere, bpf_loop callbacks included), logged at the end of
/// the program, which has the context aya-log's perf output needs. Only
/// used when [`LOG_DIAG`] is set.
#[map]
pub(crate) static DIAG_NOTE: PerCpuArray<DiagNote> = PerCpuArray::with_max_entries(1, 0);

/// Events logged so far per diagnostics counter on this CPU (at most
/// [`gup_common::diag_log::FIRST`] each).
#[map]
pub(crate) static DIAG_LOGGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_COUNT as u32, 0);

/// Bit `api` set: that unpin's task-context entries are counted by its
/// kprobe and interrupt-context ones by its fentry program (each returns at
/// once for the other's). A kprobe handler runs with preemption disabled,
/// so a task preempted inside an fentry program cannot make the kernel skip
/// another task's unpin (docs/exactness.md). Written by the loader once the
/// kprobe is attached; clear, the fentry program counts every call.
#[map]
pub(crate) static TASK_KPROBES: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(1, 0);

/// Hooked unpins in progress in interrupt context on each CPU (direct I/O
/// completions unpin from the block layer's interrupt handlers), so nested
/// ones and their gup_put_folio releases are counted once, and a call whose
/// entry program the kernel skipped is counted at its exit
/// (`gup_common::irq`). Per CPU because an interrupt does not migrate.
#[map]
pub(crate) static IRQ_UNPINS: PerCpuArray<IrqUnpins> = PerCpuArray::with_max_entries(1, 0);
