//! `gup_put_folio()`, where the kernel counts every FOLL_PIN release
//! (`nr_foll_pin_released`). Most releases were already counted by the
//! hooked unpin they happen in; this kprobe counts the rest: pins a pin
//! call takes and drops again (`undone_pages`), releases in an unpin whose
//! entry program the kernel skipped (leaving a mark for its exit), and
//! releases on paths gupwatch does not hook.

use gup_common::{Api, ApiKind, Diag, HookArgs, Reverted};

use crate::{
    args::{return_address, CallArgs},
    counters::{add, now, stats},
    diag::diag,
    entry::live_outer,
    exit::leave_mark,
    irq::{in_task_context, irq_unpins},
    ledger::track_unpin,
    maps::{foll_longterm, read_global, FOLL_PIN, INFLIGHT, TRACK_PINS},
};

/// `gup_put_folio(folio, refs, flags)`: counts FOLL_PIN releases that no
/// hooked unpin accounts for.
#[inline(never)]
pub(crate) fn on_put_folio<A: CallArgs>(tid: u64, api: Api, args: &HookArgs, a: &A) {
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
                    add(&mut s.reverted[reverted_in_slow_path(gup_flags) as usize], refs);
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

/// Takes `refs` from the pages the thread's hooked unpin counted at its
/// entry and has not released yet ([`gup_common::Inflight::requested`]); false when it
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

/// Why the slow path of a pin call released pins it had taken: in a
/// FOLL_LONGTERM call, to migrate them (the only reason
/// `__gup_longterm_locked` gives back what it pinned: pages on movable or
/// CMA memory, released by `gup_put_folio` or by an unpin, kernel by
/// kernel); otherwise the slow walk dropping a page.
#[inline(always)]
pub(crate) fn reverted_in_slow_path(gup_flags: u64) -> Reverted {
    if gup_flags & foll_longterm() != 0 {
        Reverted::Migration
    } else {
        Reverted::SlowPath
    }
}
