//! The pin ledger: outstanding pins per folio in `PINS`, with their owners
//! (`gup_common::PinRecord`), for the leak analysis. A pin call's pages are
//! walked with `bpf_loop` ([`track_pages`], [`track_one`]) and each folio's
//! record gains a pin ([`track_pin`], [`place_pin`]); an unpin takes them
//! back ([`track_unpin`]) and a release that matches no tracked pin is
//! counted per call site in `UNBALANCED` ([`unbalanced`]). Counts move by
//! atomic adds only; the totals never depend on the ledger.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_loop};
use gup_common::{
    hold::{hold_bucket, hold_index, pending_key, HoldHist, HOLD_CLASSES, HOLD_CLASS_NO_STACK, HOLD_CLASS_PENDING},
    diag_log::{API_NONE, WHY_LEDGER_CLOSED, WHY_MAP_FULL, WHY_NONE, WHY_PER_CALL_LIMIT},
    spill_key, Diag, PinOwner, PinRecord, PAGES_ARRAY, PIN_OWNERS, SHARED_OWNER, TRACK_MAX_PER_CALL,
};

use crate::{
    counters::{add, add32, cas32, current_tgid, fetch_add32, now},
    diag::{diag_add, diag_value, note},
    maps::{read_global, HOLD, HOLD_PENDING, PAGE_COMPOUND_HEAD, PINS, STACK_CLASS, STRUCT_PAGE_SIZE, UNBALANCED},
};

/// What the `bpf_loop` callback needs to walk a call's pages. Read-only
/// inside the callback: the verifier re-verifies callbacks until their
/// state converges (since ~6.8), and counters kept here would never let it.
/// Outcomes go straight to the diagnostics counters instead.
#[repr(C)]
pub(crate) struct TrackCtx {
    /// Array of page/folio pointers, or the first page of a range.
    base: u64,
    /// `PAGES_ARRAY` or `PAGES_RANGE`.
    form: u64,
    /// 1 to record pins, 0 to release them, [`COUNT_ONLY`] to only count
    /// an unpin's NULL entries.
    pin: u64,
    /// Unpin call site (return address), for unbalanced unpins.
    site: u64,
    /// The owner to record (pins).
    owner: PinOwner,
}

/// `TrackCtx::pin` of a walk that only counts NULL entries.
const COUNT_ONLY: u64 = 2;

/// Walks a hooked unpin's page array, releasing its pages in the ledger
/// when `track`, and returns how many entries were NULL (not releases: see
/// `Diag::UnpinNullEntries`). The count is the walk's change to this CPU's
/// counter: the unpin's entry runs with preemption disabled (a kprobe in a
/// task, fentry in an interrupt), so nothing else adds to it meanwhile.
#[inline(never)]
pub(crate) fn walk_unpin(base: u64, site: u64, count: u64, track: bool) -> u64 {
    let before = diag_value(Diag::UnpinNullEntries);
    let mut c = track_ctx(base, PAGES_ARRAY, false, site, EMPTY_OWNER);
    if !track {
        c.pin = COUNT_ONLY;
    }
    track_pages(&c, count);
    diag_value(Diag::UnpinNullEntries).wrapping_sub(before).min(count)
}

pub(crate) const fn track_ctx(base: u64, form: u8, pin: bool, site: u64, owner: PinOwner) -> TrackCtx {
    TrackCtx { base, form: form as u64, pin: pin as u64, site, owner }
}

pub(crate) const EMPTY_OWNER: PinOwner = PinOwner {
    tgid: 0,
    count: 0,
    first_ns: 0,
    stack_id: -1,
    api: 0,
    longterm: 0,
    comm: [0; 16],
    object: gup_common::object::PinObject::NONE,
};

static ZERO_HOLD: HoldHist = HoldHist::ZERO;

static EMPTY_RECORD: PinRecord = PinRecord::of([EMPTY_OWNER; PIN_OWNERS]);

/// Walks `count` pages and records (pin) or releases (unpin) them.
#[inline(never)]
pub(crate) fn track_pages(c: &TrackCtx, count: u64) {
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
        if c.pin != 1 {
            diag_add(Diag::UnpinNullEntries, 1);
        }
        return 0;
    }
    if c.pin == COUNT_ONLY {
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

/// The folio a page belongs to (`page_folio()`), decoded by
/// [`gup_common::folio_of`] from the word a tail page keeps for it.
#[inline(always)]
fn page_folio(page: u64) -> u64 {
    let off = read_global(&PAGE_COMPOUND_HEAD);
    // SAFETY: probe_read tolerates any address.
    let info = unsafe { bpf_probe_read_kernel((page + off) as *const u64) }.unwrap_or(0);
    gup_common::folio_of(page, info)
}

/// Records one pin of `folio`. The record it finds can be closed under it:
/// the folio's last tracked pin was released on another CPU at the same
/// moment, and that unpin is deleting the record (`PinRecord::refs`). The
/// pin is then placed again (`Diag::LedgerReplaced`): in the fresh record
/// that follows, or, while the closing unpin's delete has not landed (its
/// CPU interrupted, preempted, or a vCPU its host has descheduled), in the
/// folio's spill record (`gup_common::spill_key`), which unpins look in
/// after the folio's own. Only a spill record closed at the same moment
/// too leaves the pin untracked (visible, with `WHY_LEDGER_CLOSED`).
#[inline(always)]
fn track_pin(folio: u64, c: &TrackCtx) {
    if !place_pin(folio, c) {
        return;
    }
    diag_add(Diag::LedgerReplaced, 1);
    // Unrolled, not a loop: a retry loop in the bpf_loop callback kept the
    // verifier (which re-verifies callbacks until their states converge,
    // since ~6.8) from converging.
    if !place_pin(folio, c) || !place_pin(spill_key(folio), c) {
        return;
    }
    diag_add(Diag::PinsUntracked, 1);
    note(Diag::PinsUntracked, WHY_LEDGER_CLOSED, c.owner.api, c.owner.tgid, 1, 0, folio);
}

/// Adds one pin to the record at `key` (a folio, or its spill key).
/// Returns true if the pin must be placed again: the record was closed for
/// deletion, or is no longer the map's.
///
/// Not inlined: `track_pin` calls it several times, and one body keeps the
/// bpf_loop callback small for the verifier.
#[inline(never)]
fn place_pin(key: u64, c: &TrackCtx) -> bool {
    let mut rec = PINS.get_ptr_mut(&key);
    if rec.is_none() {
        // Insert an empty record and fill it in place: building it here
        // would cost the callback's stack (6.1 limits the whole call chain
        // to 512 bytes). BPF_NOEXIST: if another CPU inserted it first, the
        // lookup finds theirs.
        if let Err(e) = PINS.insert(&key, &EMPTY_RECORD, 1) {
            rec = PINS.get_ptr_mut(&key);
            if rec.is_none() {
                diag_add(Diag::PinsUntracked, 1);
                note(Diag::PinsUntracked, WHY_MAP_FULL, c.owner.api, c.owner.tgid, 1, e.into(), key);
                return false;
            }
        } else {
            rec = PINS.get_ptr_mut(&key);
        }
    }
    let Some(ptr) = rec else {
        diag_add(Diag::PinsUntracked, 1);
        return false;
    };
    // SAFETY: a live map value.
    let rec = unsafe { &mut *ptr };
    // The reference first, the slot after: while it is held, no unpin can
    // close the record (its compare-and-swap needs `refs` at zero).
    if PinRecord::is_closed(fetch_add32(&mut rec.refs, 1)) {
        add32(&mut rec.refs, u32::MAX);
        return true;
    }
    // Still the map's record with the reference taken: then it stays so
    // until this pin's unpin. The reference alone cannot tell: the map's
    // elements are preallocated and reused at once, so between the lookup
    // and the add the record can have been closed, deleted and its memory
    // handed to another folio's fresh record (whose `refs` reads open).
    if PINS.get_ptr_mut(&key).map_or(0, |p| p as u64) != ptr as u64 {
        add32(&mut rec.refs, u32::MAX);
        return true;
    }
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
        // Unreachable (k < PIN_OWNERS); give the reference back.
        add32(&mut rec.refs, u32::MAX);
        return false;
    };
    add32(&mut o.count, 1);
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
    slot.object = owner.object;
}

/// Releases `n` pins of `folio`: from its record, then from its spill
/// record (pins placed while the record was closed), the rest unbalanced.
#[inline(always)]
pub(crate) fn track_unpin(folio: u64, n: u64, site: u64) {
    let mut taken = release(folio, n);
    if taken < n {
        taken += release(spill_key(folio), n - taken);
    }
    diag_add(Diag::UnpinsMatched, taken);
    if n > taken {
        unbalanced(site, n - taken);
    }
}

/// Takes up to `n` pins from the record at `key` and returns how many it
/// took; deletes the record when they were its last (`PinRecord::refs`).
/// Not inlined: `track_unpin` calls it twice.
#[inline(never)]
fn release(key: u64, n: u64) -> u64 {
    let Some(rec) = PINS.get_ptr_mut(&key) else {
        return 0;
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
    if taken == 0 {
        return 0;
    }
    let t = now();
    if take2 > 0 {
        let o = &rec.owners[2];
        record_hold(t.saturating_sub(o.first_ns), o.stack_id, o.longterm, take2);
    }
    if take1 > 0 {
        let o = &rec.owners[1];
        record_hold(t.saturating_sub(o.first_ns), o.stack_id, o.longterm, take1);
    }
    if take0 > 0 {
        let o = &rec.owners[0];
        record_hold(t.saturating_sub(o.first_ns), o.stack_id, o.longterm, take0);
    }
    // Give back the references of the pins taken, after taking them from
    // the slots (so `refs` never reads below what the slots hold). Only the
    // unpin that brings `refs` to zero may delete the record, and only by
    // closing it first: a pin on another CPU that took a reference in
    // between makes the compare-and-swap fail and keeps the record.
    let k = taken as u32;
    if fetch_add32(&mut rec.refs, k.wrapping_neg()) == k && cas32(&mut rec.refs, 0, PinRecord::CLOSED) {
        let _ = PINS.remove(&key);
    }
    taken
}

/// Adds `n` pages held `ns` to the hold-time histogram of their stack's
/// subsystem class (`gup_common::hold`): an array slot once user space has
/// classified the stack, the pending hash before.
///
/// The hold is measured from the owner slot's first pin still held, so a
/// folio an owner pins again before releasing the first pin counts the
/// later pin's hold from the first one; the shared last slot times every
/// further owner's pins from the first of them.
#[inline(never)]
fn record_hold(ns: u64, stack_id: i64, longterm: u32, n: u64) {
    let lt = longterm != 0;
    let class = if stack_id < 0 {
        HOLD_CLASS_NO_STACK
    } else {
        STACK_CLASS.get(stack_id as u32).copied().unwrap_or(HOLD_CLASS_NO_STACK)
    };
    if class == HOLD_CLASS_PENDING {
        if add_hold_pending(pending_key(stack_id, lt), ns, n) {
            return;
        }
        add_hold(hold_index(HOLD_CLASS_NO_STACK, lt), ns, n);
    } else if class < HOLD_CLASSES {
        add_hold(hold_index(class, lt), ns, n);
    }
}

#[inline(always)]
fn add_hold(index: u32, ns: u64, n: u64) {
    if let Some(h) = HOLD.get_ptr_mut(index) {
        // SAFETY: per-CPU array values live as long as the map.
        bump(unsafe { &mut *h }, ns, n);
    }
}

/// Returns false when the pending map is full.
#[inline(always)]
fn add_hold_pending(key: u64, ns: u64, n: u64) -> bool {
    if HOLD_PENDING.get_ptr_mut(&key).is_none() {
        // From a static, not the stack: 296 bytes of the 512 the whole
        // call chain has on 6.1.
        let _ = HOLD_PENDING.insert(&key, &ZERO_HOLD, 1);
    }
    match HOLD_PENDING.get_ptr_mut(&key) {
        // SAFETY: hash values live until deleted.
        Some(h) => {
            bump(unsafe { &mut *h }, ns, n);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn bump(h: &mut HoldHist, ns: u64, n: u64) {
    if let Some(b) = h.buckets.get_mut(hold_bucket(ns)) {
        add(b, n);
    }
    add(&mut h.sum_ns, ns.wrapping_mul(n));
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
