//! A hooked call's exit. [`on_exit`] takes this thread's `INFLIGHT` record
//! left at entry and counts a pin or get call from its return value
//! ([`pin_exit`]: pages, errno, fast/slow split, LONGTERM, call site, and
//! the pins into the ledger). Unpins were counted at their entry; one whose
//! entry program did not run is counted here from its arguments, less what
//! the calls inside it counted ([`unpin_exit_unseen`], the rules of
//! `gup_common::skipped`), and leaves a mark ([`leave_mark`]) so an outer
//! unpin does not count its pages again.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    EbpfContext,
};
use gup_common::{
    diag_log::{WHY_BEYOND_ARRAY, WHY_NO_ENTRY, WHY_NO_PAGES_ARRAY},
    i915::{I915Event, I915EventKind},
    object::PinObject,
    skipped::{self, Mark, MARK, UNPIN_TEXTS},
    Api, ApiKind, ApiStats, AttribKey, AttribValue, Diag, HookArgs, Inflight, PinOwner, ARG_NONE, PAGES_ARRAY,
};

use crate::{
    args::{hook_args, return_address, CallArgs},
    counters::{add, attribute, now, record_latency, stats, ZERO_ATTRIB},
    diag::{diag, diag_add, note},
    entry::count_unpin,
    i915::{i915_event, i915_exit},
    irq::{in_task_context, irq_unpin_exit},
    ledger::{track_ctx, track_pages},
    object::current_object,
    maps::{foll_longterm, kernel_text, read_global, text_range, ERRNOS, INFLIGHT, TRACK_PINS, UNPIN_FUNCTIONS},
};

/// x86-64 base page size, as a shift.
const PAGE_SHIFT: u64 = 12;

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

#[inline(always)]
pub(crate) fn on_exit<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
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
            // Once per call, and only for LONGTERM pins (registrations):
            // the object whose holders keep them (user space names them).
            object: if delta.longterm_pages > 0 { current_object() } else { PinObject::NONE },
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
pub(crate) fn exit_requested<A: CallArgs>(args: &HookArgs, a: &A) -> Option<u64> {
    match (a.trampoline(), args.count_idx) {
        (false, _) => None,
        (true, ARG_NONE) => Some(1),
        (true, idx) => a.arg(idx),
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

/// Whether `addr` lies in the text of a hooked unpin function: on every
/// hooked unpin's exit, so most addresses (outside mm/gup.c) are turned
/// away by the span's two comparisons.
#[inline(always)]
fn in_unpin_text(addr: u64) -> bool {
    // SAFETY: plain reads of a global, volatile as in `args::hook_args`.
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

/// Leaves the thread's mark: `pages` counted with no hooked call recorded
/// around them, by a call at return address `ret` entered at `frame`
/// ([`gup_common::skipped`]). The next hooked entry overwrites it.
#[inline(never)]
pub(crate) fn leave_mark(tid: u64, ret: u64, frame: u64, pages: u64) {
    // SAFETY: the value is copied out at once.
    let prev = unsafe { INFLIGHT.get(&tid) }
        .filter(|r| r.api == MARK)
        .map(|r| Mark { ret: r.ret, frame: r.frame, pages: r.counted });
    let m = skipped::add_to_mark(prev, ret, frame, pages);
    let rec = Inflight { api: MARK, ret: m.ret, frame: m.frame, counted: m.pages, ..EMPTY_INFLIGHT };
    let _ = INFLIGHT.insert(&tid, &rec, 0);
}
