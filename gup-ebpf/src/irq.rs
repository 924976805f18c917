//! Unpins in interrupt context (direct I/O completions unpin from the
//! block layer's interrupt handlers). There the "current" task is whichever
//! task was interrupted, so its per-thread records are not touched: nesting
//! is tracked per CPU in `IRQ_UNPINS` (`gup_common::irq`), and a call whose
//! entry program the kernel skipped is counted at its exit. Also which
//! program of an unpin's kprobe/fentry pair counts a call
//! ([`task_kprobe`], `TASK_KPROBES`).

use aya_ebpf::{helpers::bpf_get_current_task, helpers::bpf_probe_read_kernel, EbpfContext};
use gup_common::{
    irq::{IrqEntry, IrqExit, IrqUnpins},
    Api, AttribKey, AttribValue, Diag, HookArgs, PAGES_FOLIO,
};

use crate::{
    args::{hook_args, return_address, CallArgs},
    counters::{add, attribute, now, stats, ZERO_ATTRIB},
    diag::diag,
    exit::exit_requested,
    ledger::{track_ctx, track_pages, track_unpin, EMPTY_OWNER},
    maps::{read_global, IRQ_UNPINS, TASK_KPROBES, TASK_STACK_OFFSET, TASK_STACK_SIZE, TRACK_PINS},
};

/// Whether this program runs on the current task's own stack (process
/// context) rather than an interrupt stack. In interrupt context the
/// "current" task is whichever task was interrupted, so its per-thread
/// records must not be read or written.
#[inline(never)]
pub(crate) fn in_task_context() -> bool {
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
pub(crate) fn task_kprobe(api: Api) -> bool {
    TASK_KPROBES.get(0).is_some_and(|bits| bits & (1u64 << (api as u32)) != 0)
}

#[inline(always)]
pub(crate) fn irq_unpins() -> Option<&'static mut IrqUnpins> {
    // SAFETY: this CPU's slot; an interrupt handler runs to completion on
    // one CPU, and one that interrupts this program sees a consistent value
    // (the rules tolerate the frames it leaves).
    IRQ_UNPINS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// An unpin in interrupt context: counted and tracked without touching the
/// interrupted task's records; nesting is tracked per CPU. Inlined: as a
/// subprogram its frame pushed the deepest call chain past 6.1's 512 bytes.
#[inline(always)]
pub(crate) fn on_irq_unpin<C: EbpfContext, A: CallArgs>(ctx: &C, api: Api, args: &HookArgs, a: &A, count: u64, frame: u64) {
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
pub(crate) fn irq_unpin_exit<C: EbpfContext, A: CallArgs>(api: Api, ctx: &C, a: &A) {
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
