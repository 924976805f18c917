//! A hooked call's entry. [`on_entry`] sorts the call by kind: a release
//! inside `gup_put_folio` goes to [`crate::put_folio`], an i915 userptr call
//! to its object, the slow path marks how far the fast walk got, an unpin
//! in interrupt context to [`crate::irq`]. A pin, get or unpin in task
//! context leaves this thread's `INFLIGHT` record ([`record_entry`]) for
//! its exit program and for the calls made inside it, which
//! [`live_outer`] finds (nested calls count once); an unpin is counted
//! here, at its entry ([`count_unpin`]), and its pins released in the
//! ledger.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    EbpfContext,
};
use gup_common::{
    diag_log::{WHY_ARG, WHY_MAP_FULL},
    i915::{enter_replaces, I915Event, I915EventKind},
    irq::{is_inside, record_is_live},
    skipped::MARK,
    Api, ApiKind, AttribKey, AttribValue, Diag, HookArgs, Inflight, ARG_NONE, PAGES_ARRAY, PAGES_FOLIO,
};

use crate::{
    args::{hook_args, return_address, CallArgs},
    counters::{add, attribute, now, stats, ZERO_ATTRIB},
    diag::{diag, note},
    i915::i915_event,
    irq::{in_task_context, on_irq_unpin, task_kprobe},
    ledger::{track_ctx, track_pages, track_unpin, walk_unpin, EMPTY_OWNER},
    maps::{read_global, I915_CUR, INFLIGHT, RETURN_TRAMPOLINE, TRACK_PINS},
    put_folio::{on_put_folio, reverted_in_slow_path},
};

#[inline(always)]
pub(crate) fn on_entry<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
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
            let released = count_unpin(ctx, api, &args, a, count, tid, true, return_address(frame, a.trampoline()));
            if let Some(s) = stats(outer_api) {
                add(&mut s.undone_pages, released);
                let gup_flags = outer_rec.map_or(0, |o| o.gup_flags);
                add(&mut s.reverted[reverted_in_slow_path(gup_flags) as usize], released);
                add(&mut s.slow_pages, released);
            }
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
pub(crate) fn live_outer(tid: u64, api: u32, frame: u64) -> Option<Inflight> {
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

/// Counts a hooked unpin in task context: its pages, its call site and,
/// unless it runs inside a pin call (whose undone pins were never tracked),
/// the release of the tracked pins and of an i915 object's pages.
#[inline(always)]
pub(crate) fn count_unpin<C: EbpfContext, A: CallArgs>(
    ctx: &C,
    api: Api,
    args: &HookArgs,
    a: &A,
    count: u64,
    tid: u64,
    inside_pin: bool,
    site: u64,
) -> u64 {
    // The ledger first: its walk of a page array also finds the NULL
    // entries, which the kernel skips. Inside a pin call (gup.c unpinning
    // what it must migrate, or unwinding after a failed migration, with
    // entries it cleared) nothing is tracked, but the array is walked for
    // them all the same.
    let track = !inside_pin && read_global(&TRACK_PINS) != 0;
    let mut count = count;
    if let Some(base) = a.arg(args.pages_idx) {
        if args.pages_form == PAGES_ARRAY && (track || inside_pin) {
            count -= walk_unpin(base, site, count, track);
        } else if track && args.pages_form == PAGES_FOLIO {
            track_unpin(base, count, site);
        } else if track {
            track_pages(&track_ctx(base, args.pages_form, false, site, EMPTY_OWNER), count);
        }
    }
    if let Some(s) = stats(api) {
        add(&mut s.calls, 1);
        add(&mut s.pages, count);
    }
    if !inside_pin {
        i915_event(tid, I915EventKind::Released, I915Event::Released { pages: count, ns: now() });
    }
    let delta = AttribValue { calls: 1, pages: count, ..ZERO_ATTRIB };
    attribute(ctx, &AttribKey { tgid: (tid >> 32) as u32, api: api as u32, site }, &delta);
    count
}
