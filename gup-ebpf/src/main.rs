//! gupwatch's kernel-side programs.
//!
//! Every hooked GUP entry point gets four programs (fentry, fexit, kprobe,
//! kretprobe); user space loads only the pair its probe plan chose for the
//! running kernel. They all funnel into [`on_entry`] and [`on_exit`], which
//! aggregate into per-CPU maps: nothing here wakes user space per call.
//!
//! Argument *positions* are not compiled in. The probe plan finds them by
//! parameter name in the kernel's BTF and hands them over in the read-only
//! global [`HOOK_ARGS`]; fentry/fexit read them with `bpf_get_func_arg`,
//! kprobes from a copy of `pt_regs`.
#![no_std]
#![no_main]
// `AtomicU64::fetch_add` is not available for the BPF target; the intrinsic
// lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_stackid, bpf_get_func_arg, bpf_get_func_arg_cnt, bpf_get_func_ret, bpf_loop},
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, StackTrace},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use gup_common::{
    diag_log::{
        self, API_NONE, WHY_ARG, WHY_BEYOND_ARRAY, WHY_MAP_FULL, WHY_NONE, WHY_NO_ENTRY,
        WHY_NO_PAGES_ARRAY, WHY_PER_CALL_LIMIT,
    },
    i915::{credited_within, enter_replaces, leave_clears, I915Event, I915EventKind, I915Object},
    irq::{is_inside, record_is_live, ret_slot, IrqEntry, IrqExit, IrqUnpins},
    skipped::{self, Mark, TextRange, UnpinTexts, MARK, UNPIN_TEXTS},
    latency_bucket, Api, ApiKind, ApiStats, AttribKey, AttribValue, Diag, HookArgs, Inflight,
    PinOwner, PinRecord, Reverted, API_COUNT, PIN_OWNERS, SHARED_OWNER, ARG_NONE, ATTRIB_CAPACITY, DIAG_COUNT, ERRNO_CAPACITY,
    EXITED_CAPACITY, INFLIGHT_CAPACITY, PAGES_ARRAY, PAGES_FOLIO, STACK_CAPACITY,
    TRACK_CAPACITY, TRACK_MAX_PER_CALL, UNBALANCED_CAPACITY, I915_OBJECTS_CAPACITY,
};

/// x86-64 base page size, as a shift.
const PAGE_SHIFT: u64 = 12;

/// Where each API keeps its arguments on the running kernel; written by the
/// loader before load, read-only (and so constant to the verifier) after.
#[no_mangle]
static HOOK_ARGS: [HookArgs; API_COUNT] = [HookArgs::NONE; API_COUNT];

/// The running kernel's FOLL_LONGTERM bit (it moved in 6.3); 0 disables
/// LONGTERM accounting.
#[no_mangle]
static FOLL_LONGTERM: u64 = 0;

/// The running kernel's FOLL_PIN bit (it moved in 6.3).
#[no_mangle]
static FOLL_PIN: u64 = 0;

/// Offset of `compound_head` in `struct page` (from BTF), to find a page's
/// folio: the kernel counts pins per folio.
#[no_mangle]
static PAGE_COMPOUND_HEAD: u64 = 8;

/// `sizeof(struct page)` (from BTF), to walk a range of pages.
#[no_mangle]
static STRUCT_PAGE_SIZE: u64 = 64;

/// The kernel's kretprobe return trampoline (from kallsyms; 0: unknown),
/// which a kretprobe writes over its function's return address.
#[no_mangle]
static RETURN_TRAMPOLINE: u64 = 0;

/// Each API's function text (from kallsyms), to tell whether a release
/// counted with no record around it was made inside a given unpin
/// ([`gup_common::skipped`]). `[0, 0)` where unknown.
#[no_mangle]
static TEXT_RANGES: [TextRange; API_COUNT] = [TextRange::NONE; API_COUNT];

/// The hooked unpin functions' texts (from kallsyms), for the check on
/// every hooked unpin's exit ([`in_unpin_text`]).
#[no_mangle]
static UNPIN_FUNCTIONS: UnpinTexts = UnpinTexts::NONE;

/// The core kernel's text (from kallsyms; `[0, 0)` if unknown). A hooked
/// unpin returning to an address outside it was called from a module or
/// tail-called under another function's BPF trampoline, maybe another
/// hooked unpin's ([`gup_common::skipped`]).
#[no_mangle]
static KERNEL_TEXT: TextRange = TextRange::NONE;

/// Offset of `stack` in `struct task_struct` (from BTF); 0 if unknown,
/// which turns interrupt-context detection off.
#[no_mangle]
static TASK_STACK_OFFSET: u64 = 0;

/// The kernel's `THREAD_SIZE` (16 KiB, 32 KiB with KASAN; from kallsyms):
/// the task stack's length, beyond which an address is on another stack.
#[no_mangle]
static TASK_STACK_SIZE: u64 = 16384;

/// 1: track every pin per folio (outstanding pins, leaks); 0: counters only.
#[no_mangle]
static TRACK_PINS: u64 = 1;

/// 1: every hook program returns at once. Only for measuring what the
/// attach mechanisms (trampolines, kprobes) cost by themselves
/// (`cargo xtask bench --empty-programs`); read-only, so at 0 the check
/// is gone after verification.
#[no_mangle]
static EMPTY_PROGRAMS: u64 = 0;

/// 1: log the first few diagnostics events through aya-log (user space
/// sets it only when gupwatch runs at debug level). Read-only, so at 0 the
/// verifier knows every logging branch is dead and removes it: the default
/// level pays nothing.
#[no_mangle]
static LOG_DIAG: u64 = 0;

/// Per-API counters, summed over CPUs by user space.
#[map]
static API_STATS: PerCpuArray<ApiStats> = PerCpuArray::with_max_entries(API_COUNT as u32, 0);

/// gupwatch's own health counters (see [`Diag`]).
#[map]
static DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_COUNT as u32, 0);

/// The outermost hooked call each thread is in: entry time and arguments for
/// the exit program, and the guard that keeps nested unpins from being
/// counted twice.
/// An LRU: a thread whose exit program the kernel skipped, and that never
/// calls again (it exited), would otherwise keep its record for good.
#[map]
static INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// Who called what from where: per (process, API, kernel stack) counters.
/// Bounded; when full, calls are still in `API_STATS` and `Diag::AttribFull`
/// counts what could not be attributed.
#[map]
static ATTRIB: HashMap<AttribKey, AttribValue> = HashMap::with_max_entries(ATTRIB_CAPACITY, 0);

/// Kernel call stacks at entry to a hooked function.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACK_CAPACITY, 0);

/// Failed calls per API and errno, keyed `api << 16 | errno`. Sparse:
/// errors are rare, so user space reads a handful of entries, not a table.
#[map]
static ERRNOS: HashMap<u32, u64> = HashMap::with_max_entries(ERRNO_CAPACITY, 0);

/// Outstanding pins per folio, with their owners. Bounded: when full, pins
/// are counted as untracked (`Diag::PinsUntracked`), never dropped from the
/// totals. User space may resize it at load time.
#[map]
static PINS: HashMap<u64, PinRecord> = HashMap::with_max_entries(TRACK_CAPACITY, 0);

/// Pages unpinned that were never seen pinned, per unpin call site (return
/// address): reported once per site.
#[map]
static UNBALANCED: HashMap<u64, u64> = HashMap::with_max_entries(UNBALANCED_CAPACITY, 0);

/// Processes that exited, with the time: pins they still own are orphaned.
#[map]
static EXITED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(EXITED_CAPACITY, 0);

/// i915 userptr objects by address.
#[map]
static I915_OBJECTS: HashMap<u64, I915Object> = HashMap::with_max_entries(I915_OBJECTS_CAPACITY, 0);

/// The i915 userptr call each thread is in: `[API index, object]`, so pins
/// and unpins inside it are credited to the object. Nested calls on the
/// same object keep the outer entry (`gup_common::i915::enter_replaces`).
#[map]
static I915_CUR: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// When each process last created a userptr object (the ioctl does not
/// expose the object; its first pin does).
#[map]
static I915_CREATED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(EXITED_CAPACITY, 0);

/// A diagnostics event waiting to be logged on this CPU: written where it
/// happens (anywhere, bpf_loop callbacks included), logged at the end of
/// the program, which has the context aya-log's perf output needs. Only
/// used when [`LOG_DIAG`] is set.
#[map]
static DIAG_NOTE: PerCpuArray<DiagNote> = PerCpuArray::with_max_entries(1, 0);

/// Events logged so far per diagnostics counter on this CPU (at most
/// [`diag_log::FIRST`] each).
#[map]
static DIAG_LOGGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_COUNT as u32, 0);

/// The details of one diagnostics event (see [`gup_common::diag_log`]).
#[derive(Clone, Copy)]
#[repr(C)]
struct DiagNote {
    /// `Diag` index + 1; 0: the slot is free.
    diag: u32,
    why: u32,
    api: u32,
    tgid: u32,
    n: u64,
    err: i64,
    key: u64,
}

/// Bit `api` set: that unpin's task-context entries are counted by its
/// kprobe and interrupt-context ones by its fentry program (each returns at
/// once for the other's). A kprobe handler runs with preemption disabled,
/// so a task preempted inside an fentry program cannot make the kernel skip
/// another task's unpin (docs/exactness.md). Written by the loader once the
/// kprobe is attached; clear, the fentry program counts every call.
#[map]
static TASK_KPROBES: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(1, 0);

/// Hooked unpins in progress in interrupt context on each CPU (direct I/O
/// completions unpin from the block layer's interrupt handlers), so nested
/// ones and their gup_put_folio releases are counted once, and a call whose
/// entry program the kernel skipped is counted at its exit
/// (`gup_common::irq`). Per CPU because an interrupt does not migrate.
#[map]
static IRQ_UNPINS: PerCpuArray<IrqUnpins> = PerCpuArray::with_max_entries(1, 0);

/// Reads the arguments and return value of the hooked function.
trait CallArgs {
    fn arg(&self, idx: u8) -> Option<u64>;
    fn ret(&self) -> Option<i64>;
    /// The stack pointer at the hooked function's entry (within a word): a
    /// call made inside this one enters deeper (`gup_common::irq`).
    fn frame(&self) -> u64;
    /// Whether the call runs under an fentry/fexit trampoline.
    fn trampoline(&self) -> bool;
}

/// fentry/fexit context: the trampoline's argument array. The helpers take
/// a run-time index, which direct context loads (constant offsets only) do not.
struct Trampoline(*mut c_void);

impl CallArgs for Trampoline {
    #[inline(always)]
    fn arg(&self, idx: u8) -> Option<u64> {
        if idx == ARG_NONE {
            return None;
        }
        let mut v = 0u64;
        // SAFETY: the helper bounds-checks `idx` against the function's
        // argument count and writes 8 bytes to `v`.
        let r = unsafe { bpf_get_func_arg(self.0, idx as u32, &mut v) };
        (r == 0).then_some(v)
    }

    #[inline(always)]
    fn ret(&self) -> Option<i64> {
        let mut v = 0u64;
        // SAFETY: fexit programs may call it; writes 8 bytes to `v`.
        let r = unsafe { bpf_get_func_ret(self.0, &mut v) };
        (r == 0).then_some(v as i64)
    }

    /// The trampoline keeps the arguments one word each below its saved
    /// frame pointer (and, with fexit, a return-value word), and its frame
    /// pointer sits two words below the function's entry stack pointer.
    #[inline(always)]
    fn frame(&self) -> u64 {
        // SAFETY: the helper reads the argument count the trampoline keeps
        // next to the arguments.
        let n = unsafe { bpf_get_func_arg_cnt(self.0) }.max(0) as u64;
        // 6.1's verifier refuses arithmetic on the context pointer; read
        // back through the helper, its value is a plain number.
        let ctx = self.0 as u64;
        // SAFETY: reads the local above.
        let base = unsafe { bpf_probe_read_kernel(&ctx as *const u64) }.unwrap_or(0);
        base + 8 * n + 16
    }

    #[inline(always)]
    fn trampoline(&self) -> bool {
        true
    }
}

/// kprobe/kretprobe context: a copy of the x86-64 registers that carry
/// arguments and the return value (`pt_regs` slots r9..rdi, contiguous), so
/// a run-time argument index becomes a bounded stack access, and the stack
/// pointer. Only these are copied: the whole struct would cost 168 bytes of
/// the 512-byte BPF stack.
struct Regs([u64; 7], u64);

impl Regs {
    /// First copied `pt_regs` slot (r9).
    const FIRST_SLOT: usize = 8;
    /// Copied slots of the first six integer arguments (rdi, rsi, rdx, rcx,
    /// r8, r9) in the x86-64 calling convention.
    const ARG_SLOTS: [usize; 6] = [14 - 8, 13 - 8, 12 - 8, 11 - 8, 9 - 8, 8 - 8];
    /// Copied slot of rax, the return value.
    const RET_SLOT: usize = 10 - 8;
    /// `pt_regs` slot of rsp.
    const SP_SLOT: usize = 19;

    #[inline(always)]
    fn read(regs: *mut pt_regs) -> Result<Regs, i64> {
        // SAFETY: `regs` is the probe's context pointer; probe_read copies
        // seven words, then one, from inside it.
        let args = unsafe { bpf_probe_read_kernel((regs as *const u64).add(Self::FIRST_SLOT) as *const [u64; 7]) }?;
        let sp = unsafe { bpf_probe_read_kernel((regs as *const u64).add(Self::SP_SLOT)) }?;
        Ok(Regs(args, sp))
    }
}

impl CallArgs for Regs {
    #[inline(always)]
    fn arg(&self, idx: u8) -> Option<u64> {
        // Constant offsets only: a computed index into this stack array is
        // "math between fp pointer and register" to some verifiers (6.18).
        match idx {
            0 => Some(self.0[Self::ARG_SLOTS[0]]),
            1 => Some(self.0[Self::ARG_SLOTS[1]]),
            2 => Some(self.0[Self::ARG_SLOTS[2]]),
            3 => Some(self.0[Self::ARG_SLOTS[3]]),
            4 => Some(self.0[Self::ARG_SLOTS[4]]),
            5 => Some(self.0[Self::ARG_SLOTS[5]]),
            _ => None,
        }
    }

    #[inline(always)]
    fn ret(&self) -> Option<i64> {
        self.0.get(Self::RET_SLOT).map(|v| *v as i64)
    }

    #[inline(always)]
    fn frame(&self) -> u64 {
        self.1
    }

    #[inline(always)]
    fn trampoline(&self) -> bool {
        false
    }
}

#[inline(always)]
fn hook_args(api: Api) -> HookArgs {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold the zero initialiser the loader replaces.
    unsafe { core::ptr::read_volatile(&HOOK_ARGS[api as usize]) }
}

#[inline(always)]
fn text_range(api: Api) -> TextRange {
    // SAFETY: a plain read of a global, volatile as in `hook_args`.
    unsafe { core::ptr::read_volatile(&TEXT_RANGES[api as usize]) }
}

#[inline(always)]
fn kernel_text() -> TextRange {
    // SAFETY: a plain read of a global, volatile as in `hook_args`.
    unsafe { core::ptr::read_volatile(&KERNEL_TEXT) }
}

/// Whether `addr` lies in the text of a hooked unpin function: on every
/// hooked unpin's exit, so most addresses (outside mm/gup.c) are turned
/// away by the span's two comparisons.
#[inline(always)]
fn in_unpin_text(addr: u64) -> bool {
    // SAFETY: plain reads of a global, volatile as in `hook_args`.
    let span = unsafe { core::ptr::read_volatile(&UNPIN_FUNCTIONS.span) };
    if !span.contains(addr) {
        return false;
    }
    let mut i = 0;
    while i < UNPIN_TEXTS {
        // SAFETY: as above; `i` is in bounds.
        if unsafe { core::ptr::read_volatile(&UNPIN_FUNCTIONS.texts[i]) }.contains(addr) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn add(counter: &mut u64, v: u64) {
    // SAFETY: map values are 8-aligned; fentry programs can be preempted on
    // the same CPU, so per-CPU slots still need atomic adds.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[inline(always)]
fn stats(api: Api) -> Option<&'static mut ApiStats> {
    // SAFETY: per-CPU array values live as long as the map.
    API_STATS.get_ptr_mut(api as u32).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn diag(d: Diag) {
    if let Some(p) = DIAG.get_ptr_mut(d as u32) {
        // SAFETY: as in `stats`.
        add(unsafe { &mut *p }, 1);
    }
}

/// Keeps the details of a diagnostics event for the log, if logging is on
/// and this counter has not logged its first few yet on this CPU. Called
/// only where the counter is bumped (cold paths); inlined, so at
/// `LOG_DIAG == 0` the verifier drops it with the branch.
#[inline(always)]
fn note(d: Diag, why: u32, api: u32, tgid: u32, n: u64, err: i64, key: u64) {
    if read_global(&LOG_DIAG) == 0 {
        return;
    }
    let Some(logged) = DIAG_LOGGED.get_ptr_mut(d as u32) else { return };
    let Some(slot) = DIAG_NOTE.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slots; a program that interrupts this one may
    // take the note slot first, and then this event is only counted.
    unsafe {
        if *logged >= diag_log::FIRST || (*slot).diag != 0 {
            return;
        }
        *logged += 1;
        *slot = DiagNote { diag: d as u32 + 1, why, api, tgid, n, err, key };
    }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The context pointer of whichever program runs, for aya-log's perf
/// output (the helper takes any program type's context).
struct RawCtx(*mut c_void);

impl EbpfContext for RawCtx {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}

/// Logs the pending diagnostics event, if any; every hook program ends
/// here. The branch is dead unless user space set `LOG_DIAG`.
#[inline(always)]
fn log_notes(ctx: *mut c_void) {
    if read_global(&LOG_DIAG) != 0 {
        flush_note(ctx);
    }
}

/// A subprogram of its own, reached only from `log_notes`: aya-log's
/// formatting stays out of the hook's frame, and the record is built in
/// aya-log's per-CPU buffer, not on the stack.
#[inline(never)]
fn flush_note(ctx: *mut c_void) {
    let Some(slot) = DIAG_NOTE.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, copied, then freed.
    let n = unsafe { core::ptr::read_volatile(slot) };
    if n.diag == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).diag = 0 };
    aya_log_ebpf::debug!(
        &RawCtx(ctx),
        "diag={} why={} api={} tgid={} n={} err={} key={:x}",
        n.diag - 1,
        n.why,
        n.api,
        n.tgid,
        n.n,
        n.err,
        n.key
    );
}

/// Whether this program runs on the current task's own stack (process
/// context) rather than an interrupt stack. In interrupt context the
/// "current" task is whichever task was interrupted, so its per-thread
/// records must not be read or written.
#[inline(never)]
fn in_task_context() -> bool {
    let off = read_global(&TASK_STACK_OFFSET);
    if off == 0 {
        return true;
    }
    let marker = 0u64;
    let sp = &marker as *const u64 as u64;
    // SAFETY: probe_read tolerates any address; the task pointer is the
    // kernel's current task.
    let base = unsafe { bpf_probe_read_kernel((bpf_get_current_task() + off) as *const u64) }.unwrap_or(0);
    gup_common::irq::on_task_stack(sp, base, read_global(&TASK_STACK_SIZE))
}

/// Whether `api`'s task-context entries belong to its kprobe (TASK_KPROBES).
#[inline(always)]
fn task_kprobe(api: Api) -> bool {
    TASK_KPROBES.get(0).is_some_and(|bits| bits & (1u64 << (api as u32)) != 0)
}

#[inline(always)]
fn irq_unpins() -> Option<&'static mut IrqUnpins> {
    // SAFETY: this CPU's slot; an interrupt handler runs to completion on
    // one CPU, and one that interrupts this program sees a consistent value
    // (the rules tolerate the frames it leaves).
    IRQ_UNPINS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn diag_add(d: Diag, v: u64) {
    if let Some(p) = DIAG.get_ptr_mut(d as u32) {
        // SAFETY: as in `stats`.
        add(unsafe { &mut *p }, v);
    }
}

#[inline(never)]
fn record_latency(s: &mut ApiStats, start_ns: u64) {
    // SAFETY: no preconditions.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
    add(&mut s.latency_ns_sum, ns);
    if let Some(slot) = s.latency_log2.get_mut(latency_bucket(ns)) {
        add(slot, 1);
    }
}

#[inline(always)]
fn foll_longterm() -> u64 {
    // SAFETY: as in `hook_args`.
    unsafe { core::ptr::read_volatile(&FOLL_LONGTERM) }
}

#[inline(always)]
fn stack_id<C: EbpfContext>(ctx: &C, api: u32) -> i64 {
    // SAFETY: the context is the program's own; flags 0 = kernel stack.
    let id = unsafe { bpf_get_stackid(ctx.as_ptr(), &STACKS as *const StackTrace as *mut c_void, 0) };
    if id < 0 {
        diag(Diag::StackLost);
        note(Diag::StackLost, WHY_NONE, api, current_tgid(), 1, id, 0);
        return -1;
    }
    id
}

/// Adds one call to the attribution map and returns the entry's stack id.
/// The kernel stack is taken only when the key is new: the site (a return
/// address) keeps keys apart, the first stack names the caller.
#[inline(never)]
fn attribute<C: EbpfContext>(ctx: &C, key: &AttribKey, delta: &AttribValue) -> i64 {
    let mut v = attrib_entry(key);
    if v.is_none() {
        let fresh = AttribValue {
            calls: 0,
            pages: 0,
            errors: 0,
            fast_pages: 0,
            slow_pages: 0,
            longterm_pages: 0,
            // SAFETY: no preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            stack_id: stack_id(ctx, key.api),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        // BPF_NOEXIST: another CPU may have inserted the key meanwhile.
        if let Err(e) = ATTRIB.insert(key, &fresh, 1) {
            v = attrib_entry(key);
            if v.is_none() {
                diag(Diag::AttribFull);
                note(Diag::AttribFull, WHY_MAP_FULL, key.api, key.tgid, delta.pages, e.into(), key.site);
                return -1;
            }
        } else {
            v = attrib_entry(key);
        }
    }
    let Some(v) = v else {
        diag(Diag::AttribFull);
        return -1;
    };
    add(&mut v.calls, delta.calls);
    add(&mut v.pages, delta.pages);
    add(&mut v.errors, delta.errors);
    add(&mut v.fast_pages, delta.fast_pages);
    add(&mut v.slow_pages, delta.slow_pages);
    add(&mut v.longterm_pages, delta.longterm_pages);
    v.stack_id
}

#[inline(always)]
fn attrib_entry(key: &AttribKey) -> Option<&'static mut AttribValue> {
    // SAFETY: hash map values live until deleted; gupwatch never deletes
    // attribution entries while the programs run.
    ATTRIB.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

const ZERO_ATTRIB: AttribValue = AttribValue {
    calls: 0,
    pages: 0,
    errors: 0,
    fast_pages: 0,
    slow_pages: 0,
    longterm_pages: 0,
    cgroup_id: 0,
    stack_id: -1,
    comm: [0; 16],
};

#[inline(always)]
fn on_entry<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
    let tid = bpf_get_current_pid_tgid();
    let tgid = (tid >> 32) as u32;
    let args = hook_args(api);
    if api.kind() == ApiKind::Undo {
        on_put_folio(tid, api, &args, a);
        return;
    }
    if api.kind() == ApiKind::I915 {
        let obj = a.arg(args.pages_idx).unwrap_or(0);
        // SAFETY: the value is copied out at once.
        let cur = unsafe { I915_CUR.get(&tid) }.copied();
        if enter_replaces(cur, obj) {
            let _ = I915_CUR.insert(&tid, &[api as u64, obj], 0);
        }
        if let Some(s) = stats(api) {
            add(&mut s.calls, 1);
        }
        return;
    }
    let task = api.kind() != ApiKind::Unpin || in_task_context();
    if api.kind() == ApiKind::Unpin && task == a.trampoline() && task_kprobe(api) {
        // The other program of the pair counts this call (TASK_KPROBES).
        return;
    }
    // Two helper calls under fentry: read once per call.
    let frame = a.frame();
    if api.kind() == ApiKind::SlowPath {
        // Inside a fast-path call: remember where the slow path took over.
        if live_outer(tid, u32::MAX, frame).is_none() {
            return;
        }
        if let Some(rec) = INFLIGHT.get_ptr_mut(&tid) {
            // SAFETY: a live map value of this thread's own record.
            let rec = unsafe { &mut *rec };
            if rec.slow_start == 0 {
                if let Some(start) = a.arg(args.start_idx) {
                    rec.slow_start = start.max(1);
                }
            }
        }
        return;
    }
    let count = if args.count_idx == ARG_NONE {
        1
    } else {
        match a.arg(args.count_idx) {
            Some(c) => c,
            None => {
                diag(Diag::ArgReadFailed);
                note(Diag::ArgReadFailed, WHY_ARG, api as u32, tgid, 1, 0, args.count_idx as u64);
                0
            }
        }
    };
    if !task {
        on_irq_unpin(ctx, api, &args, a, count, frame);
        return;
    }
    if api.kind() == ApiKind::Unpin {
        let outer_rec = live_outer(tid, api as u32, frame);
        let outer = outer_rec.and_then(|o| Api::from_index(o.api));
        if let Some(outer_api) = outer {
            if let Some(rec) = INFLIGHT.get_ptr_mut(&tid) {
                // SAFETY: this thread's own live record.
                unsafe { (*rec).nested_unpin = 1 };
            }
            if outer_api.kind() == ApiKind::Unpin {
                // The outer unpin already counted these pages.
                if let Some(s) = stats(api) {
                    add(&mut s.nested_calls, 1);
                }
                return;
            }
            // Pins released inside a pin call: real releases, and pins the
            // kernel counted as acquired although the call does not return
            // them (taken by the slow path: LONGTERM migration).
            if let Some(s) = stats(outer_api) {
                add(&mut s.undone_pages, count);
                let longterm = outer_rec.is_some_and(|o| o.gup_flags & foll_longterm() != 0);
                add(&mut s.reverted[reverted_in_slow_path(longterm) as usize], count);
                add(&mut s.slow_pages, count);
            }
        }
        if outer.is_some() {
            count_unpin(ctx, api, &args, a, count, tid, true, return_address(frame, a.trampoline()));
            return;
        }
    }
    if api.kind() != ApiKind::Unpin {
        // A GUP call made from inside another hooked one (6.1's
        // get_user_pages_fast falls back through get_user_pages_unlocked):
        // the outer call counts the pages; recording this one would replace
        // the outer record and count them twice.
        let outer = live_outer(tid, api as u32, frame).and_then(|o| Api::from_index(o.api));
        if outer.is_some_and(|o| matches!(o.kind(), ApiKind::Pin | ApiKind::Get)) {
            if let Some(s) = stats(api) {
                add(&mut s.nested_calls, 1);
            }
            return;
        }
    }
    // Counted once the record is in: without one, nothing covers the
    // gup_put_folio calls inside it, and they count its releases.
    // The return address is the record's liveness check and the call
    // site: read once.
    let ret = return_address(frame, a.trampoline());
    if record_entry(api, a, count, frame, ret) && api.kind() == ApiKind::Unpin {
        count_unpin(ctx, api, &args, a, count, tid, false, ret);
    }
}

/// Stores this thread's in-flight record; false if the map refused it.
/// Not inlined: the record would otherwise sit in the entry program's own
/// frame, and 6.1's verifier refuses the kprobe programs' combined stack
/// (over 512 bytes) on the unpin path.
#[inline(never)]
fn record_entry<A: CallArgs>(api: Api, a: &A, count: u64, frame: u64, ret: u64) -> bool {
    // BPF functions take at most five arguments: these two are re-read.
    let args = hook_args(api);
    let tid = bpf_get_current_pid_tgid();
    let rec = Inflight {
        api: api as u32,
        nested_unpin: 0,
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        requested: count,
        gup_flags: a.arg(args.flags_idx).unwrap_or(0),
        start: a.arg(args.start_idx).unwrap_or(0),
        slow_start: 0,
        pages_ptr: a.arg(args.pages_idx).unwrap_or(0),
        frame,
        trampoline: a.trampoline() as u64,
        ret,
        counted: count,
    };
    match INFLIGHT.insert(&tid, &rec, 0) {
        Ok(()) => true,
        Err(e) => {
            diag(Diag::InflightFull);
            note(Diag::InflightFull, WHY_MAP_FULL, api as u32, (tid >> 32) as u32, count, e.into(), 0);
            false
        }
    }
}

/// This thread's record of the hooked call it is inside, if that call is
/// still in progress ([`gup_common::irq::record_is_live`]): a record whose
/// exit program the kernel skipped (seen on 7.2, where a task preempted
/// inside an exit program made another task's call of that function skip
/// it) is dropped before it makes this call of `api` look nested.
#[inline(always)]
fn live_outer(tid: u64, api: u32, frame: u64) -> Option<Inflight> {
    // SAFETY: the value is copied out at once.
    let rec = unsafe { INFLIGHT.get(&tid) }.copied()?;
    if rec.api == MARK {
        // Not a call: the next record written replaces it.
        return None;
    }
    let tramp = rec.trampoline != 0;
    // The stack words are read only when position and function allow the
    // record to be live: one probe_read on the nested path, none otherwise.
    let ret_now = if rec.frame != 0 && is_inside(frame, rec.frame, tramp) && api != rec.api {
        return_address(rec.frame, tramp)
    } else {
        0
    };
    if !record_is_live(rec.api, rec.frame, tramp, rec.ret, api, frame, ret_now, read_global(&RETURN_TRAMPOLINE)) {
        let _ = INFLIGHT.remove(&tid);
        diag(Diag::StaleRecords);
        return None;
    }
    Some(rec)
}

/// The return address of the call entered at `frame` ([`Inflight::ret`]).
#[inline(always)]
fn return_address(frame: u64, trampoline: bool) -> u64 {
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel(ret_slot(frame, trampoline) as *const u64) }.unwrap_or(0)
}

/// Counts a hooked unpin in task context: its pages, its call site and,
/// unless it runs inside a pin call (whose undone pins were never tracked),
/// the release of the tracked pins and of an i915 object's pages.
#[inline(always)]
fn count_unpin<C: EbpfContext, A: CallArgs>(
    ctx: &C,
    api: Api,
    args: &HookArgs,
    a: &A,
    count: u64,
    tid: u64,
    inside_pin: bool,
    site: u64,
) {
    if let Some(s) = stats(api) {
        add(&mut s.calls, 1);
        add(&mut s.pages, count);
    }
    if !inside_pin {
        i915_event(tid, I915EventKind::Released, I915Event::Released { pages: count, ns: now() });
    }
    let delta = AttribValue { calls: 1, pages: count, ..ZERO_ATTRIB };
    attribute(ctx, &AttribKey { tgid: (tid >> 32) as u32, api: api as u32, site }, &delta);
    if inside_pin || read_global(&TRACK_PINS) == 0 {
        return;
    }
    if let Some(base) = a.arg(args.pages_idx) {
        if args.pages_form == PAGES_FOLIO {
            track_unpin(base, count, site);
        } else {
            track_pages(&track_ctx(base, args.pages_form, false, site, EMPTY_OWNER), count);
        }
    }
}

const EMPTY_INFLIGHT: Inflight = Inflight {
    api: u32::MAX,
    nested_unpin: 0,
    start_ns: 0,
    requested: 0,
    gup_flags: 0,
    start: 0,
    slow_start: 0,
    pages_ptr: 0,
    frame: 0,
    trampoline: 0,
    ret: 0,
    counted: 0,
};

static EMPTY_RECORD: PinRecord = PinRecord { owners: [EMPTY_OWNER; PIN_OWNERS] };

const EMPTY_OWNER: PinOwner = PinOwner {
    tgid: 0,
    count: 0,
    first_ns: 0,
    stack_id: -1,
    api: 0,
    longterm: 0,
    comm: [0; 16],
};

/// What the `bpf_loop` callback needs to walk a call's pages. Read-only
/// inside the callback: the verifier re-verifies callbacks until their
/// state converges (since ~6.8), and counters kept here would never let it.
/// Outcomes go straight to the diagnostics counters instead.
#[repr(C)]
struct TrackCtx {
    /// Array of page/folio pointers, or the first page of a range.
    base: u64,
    /// `PAGES_ARRAY` or `PAGES_RANGE`.
    form: u64,
    /// 1 to record pins, 0 to release them.
    pin: u64,
    /// Unpin call site (return address), for unbalanced unpins.
    site: u64,
    /// The owner to record (pins).
    owner: PinOwner,
}

#[inline(always)]
fn read_global(g: &u64) -> u64 {
    // SAFETY: a plain read of a global, volatile as in `hook_args`.
    unsafe { core::ptr::read_volatile(g) }
}

/// The folio a page belongs to (`page_folio()`), decoded by
/// [`gup_common::folio_of`] from the word a tail page keeps for it.
#[inline(always)]
fn page_folio(page: u64) -> u64 {
    let off = read_global(&PAGE_COMPOUND_HEAD);
    // SAFETY: probe_read tolerates any address.
    let info = unsafe { bpf_probe_read_kernel((page + off) as *const u64) }.unwrap_or(0);
    gup_common::folio_of(page, info)
}

/// Records one pin of `folio`. A pin can land in a record that an unpin on
/// another CPU has just removed (it released the folio's last tracked pin
/// between this pin's lookup and its add): the record is re-read after the
/// add, and if it is no longer the map's, the pin is taken back and placed
/// once more, in the record that is there now or a fresh one
/// (`Diag::LedgerReplaced`).
#[inline(always)]
fn track_pin(folio: u64, c: &TrackCtx) {
    if place_pin(folio, c) {
        diag_add(Diag::LedgerReplaced, 1);
        // Once more, and no further: a second removal inside this one's
        // window would need a third CPU releasing the same folio's last pin
        // twice within a few instructions.
        let _ = place_pin(folio, c);
    }
}

/// Adds one pin to `folio`'s record. Returns true if the record was removed
/// under it (the pin was taken back and must be placed again).
///
/// Not inlined: `track_pin` calls it twice, and one body keeps the bpf_loop
/// callback small for the verifier (which re-verifies callbacks until their
/// states converge since ~6.8; a retry loop here kept it from converging).
#[inline(never)]
fn place_pin(folio: u64, c: &TrackCtx) -> bool {
    let mut rec = PINS.get_ptr_mut(&folio);
    if rec.is_none() {
        // Insert an empty record and fill it in place: building it here
        // would cost 96 bytes of the callback's stack (6.1 limits the whole
        // call chain to 512). BPF_NOEXIST: if another CPU inserted it first,
        // the lookup finds theirs.
        if let Err(e) = PINS.insert(&folio, &EMPTY_RECORD, 1) {
            rec = PINS.get_ptr_mut(&folio);
            if rec.is_none() {
                diag_add(Diag::PinsUntracked, 1);
                note(Diag::PinsUntracked, WHY_MAP_FULL, c.owner.api, c.owner.tgid, 1, e.into(), folio);
                return false;
            }
        } else {
            rec = PINS.get_ptr_mut(&folio);
        }
    }
    let Some(ptr) = rec else {
        diag_add(Diag::PinsUntracked, 1);
        return false;
    };
    // SAFETY: a live map value.
    let rec = unsafe { &mut *ptr };
    let cur = c.owner.tgid;
    // The slot this owner already holds, else the first free one, else the
    // last, which takes every further owner (see PinRecord).
    let k = if rec.owners[0].count > 0 && rec.owners[0].tgid == cur {
        0
    } else if rec.owners[1].count > 0 && rec.owners[1].tgid == cur {
        1
    } else if rec.owners[0].count == 0 {
        claim(&mut rec.owners[0], &c.owner);
        0
    } else if rec.owners[1].count == 0 {
        claim(&mut rec.owners[1], &c.owner);
        1
    } else {
        if rec.owners[2].count == 0 {
            claim(&mut rec.owners[2], &c.owner);
        } else if rec.owners[2].tgid != cur {
            // Pins of several processes now: no one of them is the owner
            // (one exiting would make the rest look orphaned).
            rec.owners[2].tgid = SHARED_OWNER;
        }
        2
    };
    let Some(o) = rec.owners.get_mut(k) else {
        return false;
    };
    add32(&mut o.count, 1);
    // The unpin that removes a record checks it empty first, then deletes
    // it: a pin whose add fell between the two is in a record nobody will
    // read. Still the map's record after the add means the add counts.
    let now = PINS.get_ptr_mut(&folio).map_or(0, |p| p as u64);
    if now != ptr as u64 {
        add32(&mut o.count, u32::MAX);
        return true;
    }
    diag_add(Diag::PinsTracked, 1);
    false
}

/// Writes an owner into a free slot, all but its count: the count moves
/// only by atomic adds, so two CPUs claiming one slot at once lose no pin
/// (the slot is then attributed to whichever wrote last).
#[inline(always)]
fn claim(slot: &mut PinOwner, owner: &PinOwner) {
    slot.tgid = owner.tgid;
    slot.first_ns = owner.first_ns;
    slot.stack_id = owner.stack_id;
    slot.api = owner.api;
    slot.longterm = owner.longterm;
    slot.comm = owner.comm;
}

#[inline(always)]
fn add32(counter: &mut u32, v: u32) {
    // SAFETY: map values are 4-aligned; as `add`, for several CPUs at once.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[inline(always)]
fn track_unpin(folio: u64, n: u64, site: u64) {
    let Some(rec) = PINS.get_ptr_mut(&folio) else {
        unbalanced(site, n);
        return;
    };
    // SAFETY: a live map value.
    let rec = unsafe { &mut *rec };
    // Which owner an unpin releases is not known (the kernel does not know
    // either): the last slot first, then the others.
    // The counts are read, then taken from by atomic adds: an unpin on
    // another CPU may take from the same slot in between and drive it below
    // zero (PinRecord::total keeps the sum right). A slot below zero has
    // nothing to give.
    let take2 = n.min(held(rec.owners[2].count));
    add32(&mut rec.owners[2].count, (take2 as u32).wrapping_neg());
    let take1 = (n - take2).min(held(rec.owners[1].count));
    add32(&mut rec.owners[1].count, (take1 as u32).wrapping_neg());
    let take0 = (n - take2 - take1).min(held(rec.owners[0].count));
    add32(&mut rec.owners[0].count, (take0 as u32).wrapping_neg());
    let taken = take0 + take1 + take2;
    diag_add(Diag::UnpinsMatched, taken);
    if n > taken {
        unbalanced(site, n - taken);
    }
    if rec.total() == 0 {
        let _ = PINS.remove(&folio);
    }
}

/// A slot's count as pins it can give up: none when below zero.
#[inline(always)]
fn held(count: u32) -> u64 {
    (count as i32).max(0) as u64
}

/// Counts unpins that matched no tracked pin, per unpin call site.
#[inline(never)]
fn unbalanced(site: u64, n: u64) {
    diag_add(Diag::UnbalancedUnpins, n);
    note(Diag::UnbalancedUnpins, WHY_NONE, API_NONE, current_tgid(), n, 0, site);
    if UNBALANCED.get_ptr_mut(&site).is_none() {
        let zero: u64 = 0;
        let _ = UNBALANCED.insert(&site, &zero, 1);
    }
    if let Some(p) = UNBALANCED.get_ptr_mut(&site) {
        // SAFETY: hash values live until deleted.
        add(unsafe { &mut *p }, n);
    }
}

#[inline(never)]
extern "C" fn track_one(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer we gave it: a TrackCtx on
    // the caller's stack.
    let c = unsafe { &*(ctx as *const TrackCtx) };
    let page = if c.form == PAGES_ARRAY as u64 {
        // SAFETY: probe_read tolerates any address.
        match unsafe { bpf_probe_read_kernel((c.base + 8 * i as u64) as *const u64) } {
            Ok(p) => p,
            Err(_) => return 1,
        }
    } else {
        c.base + i as u64 * read_global(&STRUCT_PAGE_SIZE)
    };
    if page == 0 {
        return 0;
    }
    let folio = page_folio(page);
    if c.pin == 1 {
        track_pin(folio, c);
    } else {
        track_unpin(folio, 1, c.site);
    }
    0
}

/// Walks `count` pages and records (pin) or releases (unpin) them.
#[inline(never)]
fn track_pages(c: &TrackCtx, count: u64) {
    let n = count.min(TRACK_MAX_PER_CALL as u64);
    if c.pin == 1 && count > n {
        diag_add(Diag::PinsUntracked, count - n);
        note(Diag::PinsUntracked, WHY_PER_CALL_LIMIT, c.owner.api, c.owner.tgid, count - n, 0, n);
    }
    // SAFETY: the callback only reads `c`, which outlives the call.
    unsafe {
        bpf_loop(n as u32, track_one as *mut c_void, c as *const TrackCtx as *mut c_void, 0);
    }
}

const fn track_ctx(base: u64, form: u8, pin: bool, site: u64, owner: PinOwner) -> TrackCtx {
    TrackCtx { base, form: form as u64, pin: pin as u64, site, owner }
}

/// An unpin in interrupt context: counted and tracked without touching the
/// interrupted task's records; nesting is tracked per CPU. Inlined: as a
/// subprogram its frame pushed the deepest call chain past 6.1's 512 bytes.
#[inline(always)]
fn on_irq_unpin<C: EbpfContext, A: CallArgs>(ctx: &C, api: Api, args: &HookArgs, a: &A, count: u64, frame: u64) {
    let entry = irq_unpins().map_or(IrqEntry::Count, |st| st.enter(api as u64, frame, a.trampoline(), now()));
    if entry == IrqEntry::Nested {
        if let Some(s) = stats(api) {
            add(&mut s.nested_calls, 1);
        }
        return;
    }
    count_irq_unpin(ctx, api, args, a, count, return_address(frame, a.trampoline()));
}

/// Counts a hooked unpin in interrupt context, at its entry or, when the
/// kernel skipped the entry program, at its exit.
#[inline(always)]
fn count_irq_unpin<C: EbpfContext, A: CallArgs>(ctx: &C, api: Api, args: &HookArgs, a: &A, count: u64, site: u64) {
    if let Some(s) = stats(api) {
        add(&mut s.calls, 1);
        add(&mut s.pages, count);
    }
    // The interrupted task is not the owner; attribute to no process.
    attribute(ctx, &AttribKey { tgid: 0, api: api as u32, site }, &AttribValue { calls: 1, pages: count, ..ZERO_ATTRIB });
    if read_global(&TRACK_PINS) != 0 {
        if let Some(base) = a.arg(args.pages_idx) {
            if args.pages_form == PAGES_FOLIO {
                track_unpin(base, count, site);
            } else {
                track_pages(&track_ctx(base, args.pages_form, false, site, EMPTY_OWNER), count);
            }
        }
    }
}

/// The exit of an unpin in interrupt context ([`gup_common::irq`]).
#[inline(always)]
fn irq_unpin_exit<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
    let exit = irq_unpins().map_or(IrqExit::Closed, |st| st.exit(api as u64, now()));
    if let IrqExit::CountNow { already } = exit {
        // Its entry program did not run, so no frame covered the
        // gup_put_folio calls inside it: they counted what they
        // released; the rest (an inlined release) is counted here.
        let args = hook_args(api);
        match exit_requested(&args, a) {
            Some(n) if n > already => {
                diag(Diag::CountedAtExit);
                count_irq_unpin(ctx, api, &args, a, n - already, return_address(a.frame(), true));
            }
            Some(_) => diag(Diag::EntrySkipped),
            None => diag(if already > 0 { Diag::EntrySkipped } else { Diag::UncountedAtExit }),
        }
    }
}

/// The exit of a pin or get call: its pages from the return value, its
/// errno, the fast/slow split and LONGTERM from its record (`have`), its
/// call site, and the ledger.
#[inline(always)]
fn pin_exit<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A, s: &mut ApiStats, tid: u64, r: &Inflight, have: bool) {
    let mut ret = a.ret().unwrap_or(0);
    // Some of these return `int` on some kernels (pin_user_pages_fast
    // on 6.12): the register then holds a zero-extended 32-bit value.
    // No call pins 2^31 pages, so such a value is a negative errno.
    if ret >= 1 << 31 && ret < 1 << 32 {
        ret = ret as i32 as i64;
    }
    add(&mut s.calls, 1);
    let pages = if ret > 0 { ret as u64 } else { 0 };
    let mut delta = AttribValue { calls: 1, pages, ..ZERO_ATTRIB };
    if ret > 0 {
        add(&mut s.pages, pages);
    } else if ret == 0 {
        add(&mut s.zero_calls, 1);
    } else {
        add(&mut s.errors, 1);
        delta.errors = 1;
        let key = (api as u32) << 16 | ((-ret) as u32 & 0xffff);
        if ERRNOS.get_ptr_mut(&key).is_none() {
            // BPF_NOEXIST: another CPU may have inserted it meanwhile.
            // A typed zero: a bare `&0` here was laid out narrower than
            // the 8-byte value the map copies, so counts started from
            // whatever followed it.
            let zero: u64 = 0;
            let _ = ERRNOS.insert(&key, &zero, 1);
        }
        if let Some(slot) = ERRNOS.get_ptr_mut(&key) {
            // SAFETY: hash values live until deleted; we never delete.
            add(unsafe { &mut *slot }, 1);
        }
    }
    if have {
        pin_exit_seen(api, ctx, s, tid, r, pages, delta);
    } else {
        pin_exit_unseen(api, ctx, s, tid, pages, delta);
    }
}

/// A pin or get call whose entry was recorded.
#[inline(always)]
fn pin_exit_seen<C: EbpfContext>(api: Api, ctx: &C, s: &mut ApiStats, tid: u64, r: &Inflight, pages: u64, mut delta: AttribValue) {
    add(&mut s.requested_pages, r.requested);
    if pages > 0 && pages < r.requested {
        add(&mut s.short_calls, 1);
    }
    if api.has_fast_path() {
        let fast = if r.slow_start == 0 {
            pages
        } else {
            add(&mut s.fell_back_calls, 1);
            (r.slow_start.saturating_sub(r.start) >> PAGE_SHIFT).min(pages)
        };
        delta.fast_pages = fast;
        delta.slow_pages = pages - fast;
    } else {
        delta.slow_pages = pages;
    }
    let lt = foll_longterm();
    if lt != 0 && r.gup_flags & lt != 0 {
        add(&mut s.longterm_calls, 1);
        add(&mut s.longterm_pages, pages);
        delta.longterm_pages = pages;
    }
    add(&mut s.fast_pages, delta.fast_pages);
    add(&mut s.slow_pages, delta.slow_pages);
    let stack = attribute(ctx, &AttribKey { tgid: (tid >> 32) as u32, api: api as u32, site: r.ret }, &delta);
    if api.kind() == ApiKind::Pin && pages > 0 && read_global(&TRACK_PINS) != 0 {
        let owner = PinOwner {
            tgid: (tid >> 32) as u32,
            count: 1,
            // SAFETY: no preconditions.
            first_ns: unsafe { bpf_ktime_get_ns() },
            stack_id: stack,
            api: api as u32,
            longterm: (delta.longterm_pages > 0) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        if r.pages_ptr != 0 {
            // Never walk past what the caller's array can hold.
            let n = if r.requested > 0 { pages.min(r.requested) } else { pages };
            if pages > n {
                diag_add(Diag::PinsUntracked, pages - n);
                note(Diag::PinsUntracked, WHY_BEYOND_ARRAY, api as u32, owner.tgid, pages - n, 0, n);
            }
            track_pages(&track_ctx(r.pages_ptr, PAGES_ARRAY, true, 0, owner), n);
        } else {
            diag_add(Diag::PinsUntracked, pages);
            note(Diag::PinsUntracked, WHY_NO_PAGES_ARRAY, api as u32, owner.tgid, pages, 0, 0);
        }
    }
}

/// A pin or get call whose entry did not run: counted, not split, not
/// tracked.
#[inline(always)]
fn pin_exit_unseen<C: EbpfContext>(api: Api, ctx: &C, s: &mut ApiStats, tid: u64, pages: u64, mut delta: AttribValue) {
    add(&mut s.untimed_calls, 1);
    if api.has_fast_path() {
        add(&mut s.unsplit_pages, pages);
    } else {
        add(&mut s.slow_pages, pages);
        delta.slow_pages = pages;
    }
    attribute(ctx, &AttribKey { tgid: (tid >> 32) as u32, api: api as u32, site: 0 }, &delta);
    if api.kind() == ApiKind::Pin && read_global(&TRACK_PINS) != 0 {
        diag_add(Diag::PinsUntracked, pages);
        if pages > 0 {
            note(Diag::PinsUntracked, WHY_NO_ENTRY, api as u32, (tid >> 32) as u32, pages, 0, 0);
        }
    }
}

#[inline(always)]
fn on_exit<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
    if api.kind() == ApiKind::Unpin && !in_task_context() {
        irq_unpin_exit(api, ctx, a);
        return;
    }
    let tid = bpf_get_current_pid_tgid();
    // Copied into a record that is initialised on every path: 6.1's
    // verifier rejects reads of uninitialised stack, and an Option<Inflight>
    // lets the compiler read the fields before checking the tag.
    let mut r = EMPTY_INFLIGHT;
    let mut have = false;
    let rec = INFLIGHT.get_ptr_mut(&tid);
    if let Some(p) = rec {
        // SAFETY: a live map value; copied before the entry is removed.
        let v = unsafe { core::ptr::read_volatile(p) };
        if v.api == api as u32 {
            r = v;
            have = true;
        }
    }
    if have && api.kind() == ApiKind::Unpin && a.trampoline() && !same_unpin(api, a, &r) {
        // Left by an earlier call of this function whose exit the kernel
        // skipped (a loop unpinning folio after folio runs each call at
        // the same place), and this call's entry was skipped too.
        let _ = INFLIGHT.remove(&tid);
        diag(Diag::StaleRecords);
        have = false;
    }
    let Some(s) = stats(api) else { return };
    if !have && matches!(api.kind(), ApiKind::Pin | ApiKind::Get) {
        // Returning from a call nested in another hooked GUP call (see
        // on_entry): the outer call counts its pages.
        // SAFETY: the value is only read.
        let outer = unsafe { INFLIGHT.get(&tid) }.and_then(|o| Api::from_index(o.api));
        if outer.is_some_and(|o| matches!(o.kind(), ApiKind::Pin | ApiKind::Get)) {
            return;
        }
    }
    if api.kind() == ApiKind::Pin || api.kind() == ApiKind::Get {
        pin_exit(api, ctx, a, s, tid, &r, have);
    }
    if api.kind() == ApiKind::I915 {
        i915_exit(tid, api, a.ret().unwrap_or(0));
        return;
    }
    if api.kind() == ApiKind::Pin && pages_of(a) > 0 {
        i915_event(tid, I915EventKind::Pinned, I915Event::Pinned { pages: pages_of(a), requested: r.requested, ns: now() });
    }
    if have {
        record_latency(s, r.start_ns);
        match rec {
            // Maybe called from another hooked unpin that has no record
            // (else this one would have been nested): that one's entry was
            // skipped, and its exit must not count these pages again. The
            // record becomes the mark where it is: its return address,
            // frame and pages are the mark's.
            // SAFETY: this thread's own live record.
            Some(p) if api.kind() == ApiKind::Unpin && leaves_mark(r.ret) => unsafe { (*p).api = MARK },
            _ => {
                let _ = INFLIGHT.remove(&tid);
            }
        }
    } else if api.kind() == ApiKind::Unpin {
        let nested = INFLIGHT.get_ptr_mut(&tid).filter(|rec| {
            // SAFETY: this thread's own live record.
            unsafe { (**rec).api != MARK }
        });
        match nested {
            // A nested unpin returning: its outer call's record stays, but
            // gup_put_folio may count again.
            // SAFETY: this thread's own live record.
            Some(rec) => unsafe { (*rec).nested_unpin = 0 },
            // No record: the entry program did not run (the kernel skipped
            // it, or the call began before the probes attached).
            None => unpin_exit_unseen(ctx, api, a, tid),
        }
    }
}

/// The exit of an unpin whose entry program did not run: counts what the
/// calls inside it did not ([`gup_common::skipped`]), from its arguments,
/// which only fexit can read.
#[inline(always)]
fn unpin_exit_unseen<C: EbpfContext, A: CallArgs>(ctx: &C, api: Api, a: &A, tid: u64) {
    // SAFETY: the value is copied out at once.
    let mark = unsafe { INFLIGHT.get(&tid) }
        .filter(|r| r.api == MARK)
        .map(|r| Mark { ret: r.ret, frame: r.frame, pages: r.counted });
    if mark.is_some() {
        let _ = INFLIGHT.remove(&tid);
    }
    let args = hook_args(api);
    let Some(requested) = exit_requested(&args, a) else {
        // A kretprobe's registers no longer hold the arguments: what was
        // counted inside is all there is.
        diag(if mark.is_some() { Diag::EntrySkipped } else { Diag::UncountedAtExit });
        return;
    };
    let frame = a.frame();
    let ret = return_address(frame, true);
    let count = skipped::exit_count(requested, mark, text_range(api), frame);
    if count == 0 {
        diag(Diag::EntrySkipped);
    } else {
        diag(Diag::CountedAtExit);
        count_unpin(ctx, api, &args, a, count, tid, false, ret);
    }
    if leaves_mark(ret) {
        // Its pages are all counted now; an outer unpin whose entry was
        // skipped too must not count them again.
        leave_mark(tid, ret, frame, requested);
    }
}

/// Whether a hooked unpin returning to `ret` may have been called by
/// another hooked unpin (its body, or a tail call under its trampoline,
/// which returns outside the kernel's text; a module's call does too, and
/// leaves a mark the next hooked entry overwrites).
#[inline(always)]
fn leaves_mark(ret: u64) -> bool {
    in_unpin_text(ret) || !kernel_text().contains(ret)
}

/// Whether the record `r` of an unpin of `api` is this call's, by the
/// pages it releases (fexit still has the arguments).
#[inline(always)]
fn same_unpin<A: CallArgs>(api: Api, a: &A, r: &Inflight) -> bool {
    let idx = hook_args(api).pages_idx;
    idx == ARG_NONE || a.arg(idx).is_none_or(|p| p == r.pages_ptr)
}

/// The pages an unpin was asked to release, read at its exit: only fexit
/// still has the arguments (a kretprobe's registers were reused).
#[inline(always)]
fn exit_requested<A: CallArgs>(args: &HookArgs, a: &A) -> Option<u64> {
    match (a.trampoline(), args.count_idx) {
        (false, _) => None,
        (true, ARG_NONE) => Some(1),
        (true, idx) => a.arg(idx),
    }
}

/// Leaves the thread's mark: `pages` counted with no hooked call recorded
/// around them, by a call at return address `ret` entered at `frame`
/// ([`gup_common::skipped`]). The next hooked entry overwrites it.
#[inline(never)]
fn leave_mark(tid: u64, ret: u64, frame: u64, pages: u64) {
    // SAFETY: the value is copied out at once.
    let prev = unsafe { INFLIGHT.get(&tid) }
        .filter(|r| r.api == MARK)
        .map(|r| Mark { ret: r.ret, frame: r.frame, pages: r.counted });
    let m = skipped::add_to_mark(prev, ret, frame, pages);
    let rec = Inflight { api: MARK, ret: m.ret, frame: m.frame, counted: m.pages, ..EMPTY_INFLIGHT };
    let _ = INFLIGHT.insert(&tid, &rec, 0);
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The pages a pin call returned (0 on error), sign-fixed as in `on_exit`.
#[inline(always)]
fn pages_of<A: CallArgs>(a: &A) -> u64 {
    let ret = a.ret().unwrap_or(0);
    if ret > 0 && ret < 1 << 31 {
        ret as u64
    } else {
        0
    }
}

/// Credits an event to the i915 object this thread is working on, if the
/// hook it is inside owns events of this kind (`credited_within`).
#[inline(never)]
fn i915_event(tid: u64, kind: I915EventKind, ev: I915Event) {
    let Some(cur) = I915_CUR.get_ptr(&tid) else { return };
    // SAFETY: this thread's own live entry, copied.
    let [api, obj] = unsafe { core::ptr::read_volatile(cur) };
    if !credited_within(api, kind) || obj == 0 {
        return;
    }
    if I915_OBJECTS.get_ptr_mut(&obj).is_none() {
        let tgid = (tid >> 32) as u32;
        // SAFETY: the value is only read.
        let created = unsafe { I915_CREATED.get(&tgid) }.copied().unwrap_or(0);
        let mut fresh = I915Object::EMPTY;
        fresh.apply(I915Event::Created {
            tgid,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ns: if created != 0 { created } else { now() },
        });
        if let Err(e) = I915_OBJECTS.insert(&obj, &fresh, 1) {
            if I915_OBJECTS.get_ptr_mut(&obj).is_none() {
                diag_add(Diag::I915ObjectsFull, 1);
                note(Diag::I915ObjectsFull, WHY_MAP_FULL, api as u32, tgid, 1, e.into(), obj);
                return;
            }
        }
    }
    if let Some(o) = I915_OBJECTS.get_ptr_mut(&obj) {
        // SAFETY: a live map value.
        unsafe { (*o).apply(ev) };
    }
}

/// Leaving an i915 userptr function.
#[inline(never)]
fn i915_exit(tid: u64, api: Api, mut ret: i64) {
    if ret >= 1 << 31 && ret < 1 << 32 {
        ret = ret as i32 as i64;
    }
    match api {
        Api::I915UserptrIoctl if ret == 0 => {
            let _ = I915_CREATED.insert(&((tid >> 32) as u32), &now(), 0);
        }
        Api::I915UserptrSubmitInit => i915_event(tid, I915EventKind::Attempt, I915Event::Attempt { ret }),
        _ => {}
    }
    // Only these two return an int: the release hooks' functions are void
    // (or, as a fallback, not the call whose result means anything), and a
    // leftover kernel pointer in the return register looks negative.
    if ret < 0 && matches!(api, Api::I915UserptrIoctl | Api::I915UserptrSubmitInit) {
        if let Some(s) = stats(api) {
            add(&mut s.errors, 1);
        }
    }
    // A nested call on the same object returns into the outer one, whose
    // entry stays.
    // SAFETY: the value is copied out at once.
    let cur = unsafe { I915_CUR.get(&tid) }.map(|c| c[0]);
    if cur.is_some_and(|c| leave_clears(c, api)) {
        let _ = I915_CUR.remove(&tid);
    }
}

/// `gup_put_folio(folio, refs, flags)`: counts FOLL_PIN releases that no
/// hooked unpin accounts for.
#[inline(never)]
fn on_put_folio<A: CallArgs>(tid: u64, api: Api, args: &HookArgs, a: &A) {
    let flags = a.arg(args.flags_idx).unwrap_or(0);
    let pin = read_global(&FOLL_PIN);
    if pin == 0 || flags & pin == 0 {
        return;
    }
    let refs = a.arg(args.count_idx).unwrap_or(1) & 0xffff_ffff;
    // Two helper calls under fentry: read once.
    let frame = a.frame();
    if !in_task_context() {
        // Inside a hooked unpin on this CPU's interrupt stack: counted there.
        let covered = irq_unpins().is_some_and(|st| st.put_folio(refs, frame, now()));
        if !covered {
            if read_global(&TRACK_PINS) != 0 {
                if let Some(folio) = a.arg(args.pages_idx) {
                    track_unpin(folio, refs, return_address(frame, false));
                }
            }
            if let Some(s) = stats(api) {
                add(&mut s.calls, 1);
                add(&mut s.pages, refs);
            }
        }
        return;
    }
    let mut outer = live_outer(tid, u32::MAX, frame).map(|r| (Api::from_index(r.api), r.nested_unpin, r.slow_start, r.gup_flags));
    if let Some((Some(o), _, _, _)) = outer {
        if o.kind() == ApiKind::Unpin {
            // Inside a hooked unpin, which counted these pages at its entry,
            // as long as it has any left to release. One whose releases are
            // all done is left over from a call whose exit the kernel
            // skipped, found again by a call at the same place whose entry
            // it skipped too: that release is counted here.
            if consume_covered(tid, refs) {
                return;
            }
            let _ = INFLIGHT.remove(&tid);
            diag(Diag::StaleRecords);
            outer = None;
        }
    }
    match outer {
        Some((Some(_), nested, _, _)) if nested != 0 => return,
        // Inside a pin call: a pin taken and dropped again, by the fast
        // walk if the slow path has not started yet.
        Some((Some(o), _, slow_start, gup_flags)) => {
            if let Some(s) = stats(o) {
                add(&mut s.undone_pages, refs);
                if o.has_fast_path() && slow_start == 0 {
                    add(&mut s.fast_pages, refs);
                    add(&mut s.reverted[Reverted::FastWalk as usize], refs);
                } else {
                    add(&mut s.slow_pages, refs);
                    let longterm = gup_flags & foll_longterm() != 0;
                    add(&mut s.reverted[reverted_in_slow_path(longterm) as usize], refs);
                }
            }
        }
        // No hooked call: a release on a path gupwatch does not hook, or
        // inside an unpin whose entry the kernel skipped, which must then
        // not count it again at its exit.
        _ => {
            let ret = return_address(frame, a.trampoline());
            if read_global(&TRACK_PINS) != 0 {
                if let Some(folio) = a.arg(args.pages_idx) {
                    track_unpin(folio, refs, ret);
                }
            }
            leave_mark(tid, ret, frame, refs);
        }
    }
    if let Some(s) = stats(api) {
        add(&mut s.calls, 1);
        add(&mut s.pages, refs);
    }
}

/// Why the slow path of a pin call released pins it had taken: in a
/// FOLL_LONGTERM call, to migrate them (the only reason
/// `__gup_longterm_locked` gives back what it pinned: pages on movable or
/// CMA memory, released by `gup_put_folio` or by an unpin, kernel by
/// kernel); otherwise the slow walk dropping a page.
#[inline(always)]
fn reverted_in_slow_path(longterm: bool) -> Reverted {
    if longterm && foll_longterm() != 0 {
        Reverted::Migration
    } else {
        Reverted::SlowPath
    }
}

/// Takes `refs` from the pages the thread's hooked unpin counted at its
/// entry and has not released yet ([`Inflight::requested`]); false when it
/// has fewer left.
#[inline(always)]
fn consume_covered(tid: u64, refs: u64) -> bool {
    let Some(rec) = INFLIGHT.get_ptr_mut(&tid) else { return false };
    // SAFETY: this thread's own live record.
    unsafe {
        if (*rec).requested < refs {
            return false;
        }
        (*rec).requested -= refs;
    }
    true
}

#[inline(always)]
fn arg_read_failed(api: Api, err: i64) {
    diag(Diag::ArgReadFailed);
    note(Diag::ArgReadFailed, WHY_NONE, api as u32, current_tgid(), 1, err, 0);
}

macro_rules! hooks {
    ($($api:ident: $fe:ident, $fx:ident, $kp:ident, $kr:ident;)*) => {$(
        #[fentry]
        pub fn $fe(ctx: FEntryContext) -> i32 {
            if read_global(&EMPTY_PROGRAMS) != 0 {
                return 0;
            }
            on_entry(Api::$api, &ctx, &Trampoline(ctx.as_ptr()));
            log_notes(ctx.as_ptr());
            0
        }

        #[fexit]
        pub fn $fx(ctx: FExitContext) -> i32 {
            if read_global(&EMPTY_PROGRAMS) != 0 {
                return 0;
            }
            on_exit(Api::$api, &ctx, &Trampoline(ctx.as_ptr()));
            log_notes(ctx.as_ptr());
            0
        }

        #[kprobe]
        pub fn $kp(ctx: ProbeContext) -> u32 {
            if read_global(&EMPTY_PROGRAMS) != 0 {
                return 0;
            }
            match Regs::read(ctx.regs) {
                Ok(regs) => on_entry(Api::$api, &ctx, &regs),
                Err(e) => arg_read_failed(Api::$api, e),
            }
            log_notes(ctx.as_ptr());
            0
        }

        #[kretprobe]
        pub fn $kr(ctx: RetProbeContext) -> u32 {
            if read_global(&EMPTY_PROGRAMS) != 0 {
                return 0;
            }
            match Regs::read(ctx.regs) {
                Ok(regs) => on_exit(Api::$api, &ctx, &regs),
                Err(e) => arg_read_failed(Api::$api, e),
            }
            log_notes(ctx.as_ptr());
            0
        }
    )*};
}

// Program names are `<mechanism>_<index>` so they fit the kernel's 16-byte
// program names; user space derives them from `Api` the same way.
hooks! {
    PinUserPages: fe_0, fx_0, kp_0, kr_0;
    PinUserPagesFast: fe_1, fx_1, kp_1, kr_1;
    PinUserPagesFastOnly: fe_2, fx_2, kp_2, kr_2;
    PinUserPagesRemote: fe_3, fx_3, kp_3, kr_3;
    PinUserPagesUnlocked: fe_4, fx_4, kp_4, kr_4;
    MemfdPinFolios: fe_5, fx_5, kp_5, kr_5;
    GetUserPages: fe_6, fx_6, kp_6, kr_6;
    GetUserPagesFast: fe_7, fx_7, kp_7, kr_7;
    GetUserPagesFastOnly: fe_8, fx_8, kp_8, kr_8;
    GetUserPagesRemote: fe_9, fx_9, kp_9, kr_9;
    GetUserPagesUnlocked: fe_10, fx_10, kp_10, kr_10;
    UnpinUserPage: fe_11, fx_11, kp_11, kr_11;
    UnpinUserPages: fe_12, fx_12, kp_12, kr_12;
    UnpinUserPagesDirtyLock: fe_13, fx_13, kp_13, kr_13;
    UnpinUserPageRangeDirtyLock: fe_14, fx_14, kp_14, kr_14;
    UnpinFolio: fe_15, fx_15, kp_15, kr_15;
    UnpinFolios: fe_16, fx_16, kp_16, kr_16;
    UnpinUserFolio: fe_17, fx_17, kp_17, kr_17;
    GupSlowPath: fe_18, fx_18, kp_18, kr_18;
    GupPutFolio: fe_19, fx_19, kp_19, kr_19;
    I915UserptrIoctl: fe_20, fx_20, kp_20, kr_20;
    I915UserptrSubmitInit: fe_21, fx_21, kp_21, kr_21;
    I915UserptrDropRef: fe_22, fx_22, kp_22, kr_22;
    I915UserptrPutPages: fe_23, fx_23, kp_23, kr_23;
}

/// Records process exits (the group leader's), so pins whose owner is gone
/// can be reported as orphaned.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    if tid as u32 == (tid >> 32) as u32 {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = EXITED.insert(&((tid >> 32) as u32), &now, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic; the verifier rejects any path that
    // reaches here, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
