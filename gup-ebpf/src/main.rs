//! gupwatch's kernel-side programs.
//!
//! Every hooked GUP entry point gets four programs (fentry, fexit, kprobe,
//! kretprobe, named `fe_N`, `fx_N`, `kp_N`, `kr_N` after the API's index);
//! user space loads only the pair its probe plan chose for the running
//! kernel. They all funnel into [`entry::on_entry`] and [`exit::on_exit`],
//! which aggregate into per-CPU maps: nothing here wakes user space per
//! call.
//!
//! Argument *positions* are not compiled in. The probe plan finds them by
//! parameter name in the kernel's BTF and hands them over in the read-only
//! global [`maps::HOOK_ARGS`]; fentry/fexit read them with
//! `bpf_get_func_arg`, kprobes from a copy of `pt_regs`.
//!
//! # Following a pin
//!
//! `pin_user_pages_fast(start, 256, FOLL_LONGTERM, pages)` under its
//! kprobe pair:
//!
//! 1. `kp_1` (this file, `hooks!`) wraps the registers in [`args::Regs`]
//!    (an fentry program would wrap its context in [`args::Trampoline`];
//!    both are [`args::CallArgs`]) and calls [`entry::on_entry`].
//! 2. [`entry`] reads the argument positions ([`args::hook_args`]), checks
//!    for an outer hooked call of this thread ([`entry::live_outer`]), and
//!    stores the call's `INFLIGHT` record (`entry::record_entry`).
//!    If the fast walk falls back, the slow path's entry (`kp_18`) writes
//!    how far it got into that record.
//! 3. Pins the call takes and drops again reach `gup_put_folio`, whose
//!    kprobe ([`put_folio`]) finds the record and counts them as undone.
//! 4. `kr_1` calls [`exit::on_exit`], which takes the record and counts
//!    the returned pages in `API_STATS` (`exit::pin_exit`), the call site
//!    in `ATTRIB` ([`counters::attribute`]), and walks the `pages` array
//!    into the `PINS` ledger ([`ledger::track_pages`]).
//! 5. The later unpin is counted at its entry ([`entry::count_unpin`]),
//!    which releases the ledger's pins ([`ledger::track_unpin`]); in an
//!    interrupt, by [`irq`]; when its entry program was skipped, at its
//!    exit ([`exit`]) or in `gup_put_folio` ([`put_folio`]).
//!
//! # Modules
//!
//! - [`maps`]: every map and loader-written global, by the name user space
//!   finds it by;
//! - [`args`]: reading arguments, return value, frame and return address;
//! - [`entry`], [`exit`], [`put_folio`], [`irq`]: the hooks' logic;
//! - [`counters`]: `API_STATS` and `ATTRIB`; [`ledger`]: `PINS`;
//!   [`i915`]: i915 userptr objects; [`diag`]: gupwatch's own health;
//! - [`holder_iter`]: the task-file iterator that finds who holds an
//!   object's open file.
//!
//! # Verifier shape
//!
//! The `#[inline(always)]` and `#[inline(never)]` attributes are part of
//! the design: a function marked `inline(never)` is a BPF subprogram
//! (at most five arguments, its own frame), and 6.1's verifier limits the
//! deepest call chain's combined stack to 512 bytes, while from ~6.8 a
//! `bpf_loop` callback must converge. Comments at those functions say why
//! each one is what it is; keep them when moving code.
#![no_std]
#![no_main]
// `AtomicU64::fetch_add` is not available for the BPF target; the intrinsic
// lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod args;
mod counters;
mod diag;
mod entry;
mod exit;
mod holder_iter;
mod i915;
mod irq;
mod ledger;
mod maps;
mod object;
mod put_folio;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use gup_common::Api;

use crate::{
    args::{Regs, Trampoline},
    diag::{arg_read_failed, log_notes},
    entry::on_entry,
    exit::on_exit,
    maps::{read_global, EMPTY_PROGRAMS, EXITED},
};

/// What every hook program does around its work: nothing at all while
/// `EMPTY_PROGRAMS` is set (to measure what attaching costs by itself),
/// else `work`, then the debug notes it left.
#[inline(always)]
fn around(ctx: *mut core::ffi::c_void, work: impl FnOnce()) {
    if read_global(&EMPTY_PROGRAMS) != 0 {
        return;
    }
    work();
    log_notes(ctx);
}

macro_rules! hooks {
    ($($api:ident: $fe:ident, $fx:ident, $kp:ident, $kr:ident;)*) => {$(
        #[fentry]
        pub fn $fe(ctx: FEntryContext) -> i32 {
            around(ctx.as_ptr(), || on_entry(Api::$api, &ctx, &Trampoline(ctx.as_ptr())));
            0
        }

        #[fexit]
        pub fn $fx(ctx: FExitContext) -> i32 {
            around(ctx.as_ptr(), || on_exit(Api::$api, &ctx, &Trampoline(ctx.as_ptr())));
            0
        }

        #[kprobe]
        pub fn $kp(ctx: ProbeContext) -> u32 {
            around(ctx.as_ptr(), || match Regs::read(ctx.regs) {
                Ok(regs) => on_entry(Api::$api, &ctx, &regs),
                Err(e) => arg_read_failed(Api::$api, e),
            });
            0
        }

        #[kretprobe]
        pub fn $kr(ctx: RetProbeContext) -> u32 {
            around(ctx.as_ptr(), || match Regs::read(ctx.regs) {
                Ok(regs) => on_exit(Api::$api, &ctx, &regs),
                Err(e) => arg_read_failed(Api::$api, e),
            });
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
