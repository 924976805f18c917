//! gupwatch's own health: the per-CPU `DIAG` counters ([`Diag`]) and, when
//! user space runs at debug level (`LOG_DIAG`), the first few events of
//! each counter with their details, noted where they happen and logged
//! through aya-log at the end of the program (`gup-user/src/probes/ebpflog.rs`).

use core::ffi::c_void;

use aya_ebpf::EbpfContext;
use gup_common::{
    diag_log::{self, WHY_NONE},
    Api, Diag,
};

use crate::{
    counters::{add, current_tgid},
    maps::{read_global, DIAG, DIAG_LOGGED, DIAG_NOTE, LOG_DIAG},
};

#[inline(always)]
pub(crate) fn diag(d: Diag) {
    if let Some(p) = DIAG.get_ptr_mut(d as u32) {
        // SAFETY: as in `counters::stats`.
        add(unsafe { &mut *p }, 1);
    }
}

/// This CPU's value of a diagnostics counter.
#[inline(always)]
pub(crate) fn diag_value(d: Diag) -> u64 {
    // SAFETY: a per-CPU array value, read once.
    DIAG.get_ptr_mut(d as u32).map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub(crate) fn diag_add(d: Diag, v: u64) {
    if let Some(p) = DIAG.get_ptr_mut(d as u32) {
        // SAFETY: as in `counters::stats`.
        add(unsafe { &mut *p }, v);
    }
}

/// Keeps the details of a diagnostics event for the log, if logging is on
/// and this counter has not logged its first few yet on this CPU. Called
/// only where the counter is bumped (cold paths); inlined, so at
/// `LOG_DIAG == 0` the verifier drops it with the branch.
#[inline(always)]
pub(crate) fn note(d: Diag, why: u32, api: u32, tgid: u32, n: u64, err: i64, key: u64) {
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
pub(crate) fn arg_read_failed(api: Api, err: i64) {
    diag(Diag::ArgReadFailed);
    note(Diag::ArgReadFailed, WHY_NONE, api as u32, current_tgid(), 1, err, 0);
}

/// The details of one diagnostics event (see [`gup_common::diag_log`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct DiagNote {
    /// `Diag` index + 1; 0: the slot is free.
    diag: u32,
    why: u32,
    api: u32,
    tgid: u32,
    n: u64,
    err: i64,
    key: u64,
}

/// Logs the pending diagnostics event, if any; every hook program ends
/// here. The branch is dead unless user space set `LOG_DIAG`.
#[inline(always)]
pub(crate) fn log_notes(ctx: *mut c_void) {
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

/// The context pointer of whichever program runs, for aya-log's perf
/// output (the helper takes any program type's context).
struct RawCtx(*mut c_void);

impl EbpfContext for RawCtx {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}
