//! Bookkeeping of hooked unpins that run in interrupt context (direct I/O
//! completions unpin from the block layer's interrupt handlers).
//!
//! One per-CPU [`IrqUnpins`] value says which hooked unpins are in progress
//! on the CPU's interrupt stack, innermost last, so a call made inside
//! another one (`gup_put_folio` under `unpin_user_folio`) is counted once.
//! The eBPF programs apply these rules to the map value; the tests below
//! replay event sequences through the same code.
//!
//! Two things make the bookkeeping harder than a depth counter:
//!
//! - **The kernel skips programs.** A BPF program does not run while the
//!   same program is already running on the CPU: an interrupt that calls a
//!   hooked function while the interrupted task is inside that function's
//!   entry (or exit) program gets no entry (or exit) program. A call whose
//!   entry was skipped is counted at its exit ([`IrqExit::CountNow`]); a call
//!   whose exit was skipped leaves a frame behind, which later calls
//!   recognise as stale and drop.
//! - **Frames are recognised by stack position.** A call made inside a
//!   frame runs deeper on the same stack, so its probe frame is below the
//!   frame's by at least [`NESTED_MIN_DEPTH`]. A call at the frame's depth
//!   or above cannot be inside it: the frame is stale. Frames older than
//!   [`STALE_NS`] are dropped too.
//!
//! One case stays ambiguous: a hard interrupt that unpins while it
//! interrupts a softirq's hooked unpin on the same CPU runs deeper on the
//! same interrupt stack, so it looks nested and is not counted.

/// How much deeper on the stack a call made inside a call hooked by
/// fentry/fexit is, at least: the trampoline calls the hooked function, so
/// its frame lies between the two, even when the function tail-calls the
/// inner one. Two calls made at the same depth differ by a word at most.
pub const NESTED_MIN_DEPTH: u64 = 32;

/// Whether a call entered with stack pointer `frame` can run inside the
/// hooked call entered at `outer` (stacks grow down). `outer_trampoline`:
/// the outer call was hooked by fentry/fexit. Under a kprobe nothing lies
/// between, and a tail call enters the inner function at the outer one's
/// own depth, so only a call above that depth is known not to be inside.
#[inline(always)]
pub const fn is_inside(frame: u64, outer: u64, outer_trampoline: bool) -> bool {
    if outer_trampoline {
        frame.saturating_add(NESTED_MIN_DEPTH) <= outer
    } else {
        frame <= outer
    }
}

/// Whether a thread's in-flight record, written at the entry of a hooked
/// call of `outer_api` entered at `outer` with return address
/// `outer_ret` (read from the stack at entry, see [`ret_slot`]), still
/// belongs to a call in progress when the same thread enters a hooked call
/// of `api` at `frame` and the return-address slot now reads `ret_now`.
///
/// The kernel skips an exit program now and then (a recursion miss, or a
/// kretprobe out of instances), leaving the record behind; treating it as
/// live makes the thread's next calls look nested and loses them. It is
/// stale when:
///
/// - the new call is not inside it by stack position ([`is_inside`]);
/// - the new call is of the same function: no GUP function runs inside
///   itself, so a second entry means the first one returned;
/// - the return address in the record's frame changed: while a call is in
///   progress the return address it was entered with stays where it was,
///   so a later call that happens to run deeper, from another system
///   call, finds another one there (or none).
///
/// `api == u32::MAX` stands for a hook that is never an outer call
/// (`gup_put_folio`, the slow path). `trampoline_ret` is the kernel's
/// kretprobe return trampoline (0: none): a kretprobe on the call, or on
/// a function it tail-calls, puts it in place of the return address for
/// as long as the call runs.
// Eight plain numbers the eBPF side already holds in registers; a struct
// would be built on the 512-byte BPF stack at every call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn record_is_live(
    outer_api: u32,
    outer: u64,
    outer_trampoline: bool,
    outer_ret: u64,
    api: u32,
    frame: u64,
    ret_now: u64,
    trampoline_ret: u64,
) -> bool {
    if outer == 0 {
        // Recorded without a frame: nothing to judge by; keep the old rule.
        return true;
    }
    // While the call runs the slot holds what its entry read, or the
    // trampoline once a kretprobe hijacked it (its handler may run before or
    // after the entry program); the original comes back only on return.
    let same_ret = ret_now == outer_ret || (trampoline_ret != 0 && ret_now == trampoline_ret);
    is_inside(frame, outer, outer_trampoline) && api != outer_api && same_ret
}

/// Where the hooked function's return address sits, given the probe frame
/// of its entry: a kprobe's frame is the entry stack pointer, which holds
/// it; a trampoline's frame (see the eBPF side) is one word lower, where
/// the trampoline's own return into the function sits.
#[inline(always)]
pub const fn ret_slot(frame: u64, trampoline: bool) -> u64 {
    if trampoline {
        frame + 8
    } else {
        frame
    }
}

/// Frames kept; calls nested deeper are treated as nested but get none.
pub const IRQ_FRAMES: usize = 4;

/// No hooked unpin runs this long in interrupt context: a frame older than
/// this lost its exit program.
pub const STALE_NS: u64 = 100_000_000;

/// Per-CPU state; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IrqUnpins {
    /// Frames in use (at most [`IRQ_FRAMES`]).
    pub depth: u64,
    /// Calls in progress nested deeper than the frames go (no frame each).
    pub overflow: u64,
    /// Pages `gup_put_folio` counted with no frame open, since the last
    /// outermost frame opened or closed: if a call whose entry program was
    /// skipped turns out to contain them, its exit must not count them
    /// again.
    pub loose_pages: u64,
    /// Frames dropped as stale, ever (an exit program was skipped).
    pub stale_frames: u64,
    /// Each frame's [`crate::Api`] index.
    pub api: [u64; IRQ_FRAMES],
    /// Each frame's stack pointer at entry.
    pub sp: [u64; IRQ_FRAMES],
    /// 1 where the frame's call was hooked by fentry/fexit ([`is_inside`]).
    pub trampoline: [u64; IRQ_FRAMES],
    /// Each frame's entry time (`bpf_ktime_get_ns`).
    pub ns: [u64; IRQ_FRAMES],
}

/// What an entry program does with a hooked unpin it sees in interrupt
/// context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqEntry {
    /// The outermost hooked call: count its pages.
    Count,
    /// Inside another hooked call, which counts these pages.
    Nested,
}

/// What an exit program does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqExit {
    /// The entry was seen; nothing more to count.
    Closed,
    /// The entry program was skipped and the call was the outermost: count
    /// its pages now, less this many that `gup_put_folio` already counted
    /// inside it.
    CountNow {
        /// Pages already counted inside the call.
        already: u64,
    },
    /// The entry program was skipped, but the call ran inside another
    /// hooked call, which counted it.
    Nested,
}

impl IrqUnpins {
    /// Drops frames a call at stack pointer `sp` at time `now` cannot be
    /// inside.
    #[inline(always)]
    fn prune(&mut self, sp: Option<u64>, now: u64) {
        for _ in 0..IRQ_FRAMES {
            if self.depth == 0 {
                break;
            }
            let top = ((self.depth - 1) as usize) & (IRQ_FRAMES - 1);
            let above = sp.is_some_and(|sp| !is_inside(sp, self.sp[top], self.trampoline[top] != 0));
            if above || now.saturating_sub(self.ns[top]) > STALE_NS {
                self.depth -= 1;
                self.stale_frames += 1;
                // Whatever ran deeper than a stale frame is stale too.
                self.overflow = 0;
            } else {
                break;
            }
        }
    }

    /// A hooked unpin `api` entered at stack pointer `sp`, time `now`,
    /// through a trampoline (fentry/fexit) or not (kprobe).
    #[inline(always)]
    pub fn enter(&mut self, api: u64, sp: u64, trampoline: bool, now: u64) -> IrqEntry {
        self.prune(Some(sp), now);
        let nested = self.depth > 0;
        if !nested {
            self.loose_pages = 0;
        }
        if (self.depth as usize) < IRQ_FRAMES {
            let i = (self.depth as usize) & (IRQ_FRAMES - 1);
            self.api[i] = api;
            self.sp[i] = sp;
            self.trampoline[i] = trampoline as u64;
            self.ns[i] = now;
            self.depth += 1;
        } else {
            self.overflow += 1;
        }
        if nested {
            IrqEntry::Nested
        } else {
            IrqEntry::Count
        }
    }

    /// A hooked unpin `api` returned at time `now`.
    #[inline(always)]
    pub fn exit(&mut self, api: u64, now: u64) -> IrqExit {
        self.prune(None, now);
        if self.overflow > 0 {
            self.overflow -= 1;
            return IrqExit::Closed;
        }
        // The innermost frame of this API; frames above it belong to calls
        // inside it whose exit programs were skipped.
        let mut found = None;
        for k in 0..IRQ_FRAMES {
            if (k as u64) < self.depth && self.api[k] == api {
                found = Some(k);
            }
        }
        match found {
            Some(k) => {
                self.stale_frames += self.depth - 1 - k as u64;
                self.depth = k as u64;
                if self.depth == 0 {
                    self.loose_pages = 0;
                }
                IrqExit::Closed
            }
            None if self.depth == 0 => {
                let already = self.loose_pages;
                self.loose_pages = 0;
                IrqExit::CountNow { already }
            }
            None => IrqExit::Nested,
        }
    }

    /// `gup_put_folio` released `pages` at stack pointer `sp`, time `now`:
    /// whether a hooked unpin in progress covers them. If not, the caller
    /// counts them, and they are remembered as loose.
    #[inline(always)]
    pub fn put_folio(&mut self, pages: u64, sp: u64, now: u64) -> bool {
        self.prune(Some(sp), now);
        if self.depth > 0 {
            return true;
        }
        self.loose_pages = self.loose_pages.saturating_add(pages);
        false
    }
}

/// x86-64's `THREAD_SIZE`: 16 KiB, doubled by KASAN (`KASAN_STACK_ORDER`).
#[inline(always)]
pub const fn thread_size(kasan: bool) -> u64 {
    if kasan {
        32 << 10
    } else {
        16 << 10
    }
}

/// Whether stack address `sp` lies on the task stack starting at `base`,
/// `size` bytes long (`THREAD_SIZE`): if not, the code runs on an interrupt
/// stack. `base == 0` (unknown) says yes: the task rules apply.
#[inline(always)]
pub const fn on_task_stack(sp: u64, base: u64, size: u64) -> bool {
    base == 0 || (sp >= base && sp < base.saturating_add(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNPIN_FOLIO: u64 = 17;
    const UNPIN_PAGES: u64 = 12;
    const DIRTY_LOCK: u64 = 13;

    /// Stack pointers: an interrupt handler's hooked call at 0x1000, a call
    /// made inside it deeper at 0x0f00.
    const OUTER: u64 = 0x1000;
    const INNER: u64 = 0x0f00;

    #[test]
    fn a_call_and_the_calls_inside_it_count_once() {
        let mut s = IrqUnpins::default();
        assert_eq!(s.enter(DIRTY_LOCK, OUTER, true, 10), IrqEntry::Count);
        assert_eq!(s.enter(UNPIN_PAGES, INNER, true, 11), IrqEntry::Nested);
        assert!(s.put_folio(1, INNER - 0x100, 12), "covered by the outer call");
        assert_eq!(s.exit(UNPIN_PAGES, 13), IrqExit::Closed);
        assert_eq!(s.exit(DIRTY_LOCK, 14), IrqExit::Closed);
        assert_eq!(s, IrqUnpins { ns: s.ns, sp: s.sp, api: s.api, trampoline: s.trampoline, ..IrqUnpins::default() });
        // The next interrupt's call is counted again.
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, true, 20), IrqEntry::Count);
    }

    #[test]
    fn nesting_needs_a_trampoline_frame_of_depth() {
        assert!(is_inside(0x1000 - NESTED_MIN_DEPTH, 0x1000, true));
        // Same depth, a word apart: not inside.
        assert!(!is_inside(0x1000 - 8, 0x1000, true));
        assert!(!is_inside(0x1000, 0x1000, true));
        assert!(!is_inside(0x1100, 0x1000, true));
        assert!(!is_inside(u64::MAX, 0x1000, true));
        // Under a kprobe a tail call enters at the same depth.
        assert!(is_inside(0x1000, 0x1000, false));
        assert!(is_inside(0x0ff8, 0x1000, false));
        assert!(!is_inside(0x1008, 0x1000, false));
    }

    #[test]
    fn under_kprobes_a_tail_call_is_nested() {
        let mut s = IrqUnpins::default();
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, false, 10), IrqEntry::Count);
        assert!(s.put_folio(1, OUTER, 11), "gup_put_folio tail-called at the same depth");
        assert_eq!(s.exit(UNPIN_FOLIO, 12), IrqExit::Closed);
        // A later call from higher up shows a frame left by a skipped exit.
        s.enter(UNPIN_FOLIO, OUTER, false, 20);
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER + 0x40, false, 21), IrqEntry::Count);
        assert_eq!(s.stale_frames, 1);
    }

    #[test]
    fn a_skipped_entry_is_counted_at_the_exit() {
        // The 7.2 stress run: the task was inside unpin_user_folio's entry
        // program when a completion interrupt called unpin_user_folio 256
        // times; each entry program was skipped, each exit ran.
        let mut s = IrqUnpins::default();
        for t in 0..256 {
            assert_eq!(s.exit(UNPIN_FOLIO, t), IrqExit::CountNow { already: 0 });
        }
        assert_eq!(s.depth, 0);
    }

    #[test]
    fn a_skipped_entry_does_not_count_what_was_counted_inside_it() {
        let mut s = IrqUnpins::default();
        // gup_put_folio inside the call found no frame and counted 4 pages.
        assert!(!s.put_folio(4, INNER, 10));
        assert_eq!(s.exit(UNPIN_FOLIO, 11), IrqExit::CountNow { already: 4 });
        // Loose pages belong to one call only.
        assert_eq!(s.exit(UNPIN_FOLIO, 12), IrqExit::CountNow { already: 0 });
        // A new outermost call forgets older loose pages.
        assert!(!s.put_folio(2, INNER, 13));
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, true, 14), IrqEntry::Count);
        assert_eq!(s.exit(UNPIN_FOLIO, 15), IrqExit::Closed);
        assert_eq!(s.loose_pages, 0);
    }

    #[test]
    fn a_skipped_entry_inside_a_seen_call_is_nested() {
        let mut s = IrqUnpins::default();
        assert_eq!(s.enter(DIRTY_LOCK, OUTER, true, 10), IrqEntry::Count);
        assert_eq!(s.exit(UNPIN_PAGES, 11), IrqExit::Nested);
        assert_eq!(s.exit(DIRTY_LOCK, 12), IrqExit::Closed);
        assert_eq!(s.depth, 0);
    }

    #[test]
    fn a_frame_whose_exit_was_skipped_is_dropped_by_the_next_call() {
        let mut s = IrqUnpins::default();
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, true, 10), IrqEntry::Count);
        // Its exit program was skipped. The next interrupt's call runs at
        // the same depth, so it cannot be inside that frame.
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, true, 20), IrqEntry::Count);
        assert_eq!(s.stale_frames, 1);
        assert_eq!(s.exit(UNPIN_FOLIO, 21), IrqExit::Closed);
        assert_eq!(s.depth, 0);
        // A deeper call long after is not inside it either.
        assert_eq!(s.enter(UNPIN_FOLIO, OUTER, true, 30), IrqEntry::Count);
        assert_eq!(s.enter(UNPIN_PAGES, INNER, true, 30 + STALE_NS + 1), IrqEntry::Count);
        assert_eq!(s.stale_frames, 2);
        // gup_put_folio after a lost exit is not covered by the stale frame.
        let mut s = IrqUnpins::default();
        s.enter(UNPIN_FOLIO, OUTER, true, 10);
        assert!(!s.put_folio(1, OUTER + 0x40, 11));
    }

    #[test]
    fn an_exit_closes_frames_left_above_it() {
        let mut s = IrqUnpins::default();
        s.enter(DIRTY_LOCK, OUTER, true, 10);
        s.enter(UNPIN_PAGES, INNER, true, 11);
        // unpin_user_pages' exit program was skipped.
        assert_eq!(s.exit(DIRTY_LOCK, 12), IrqExit::Closed);
        assert_eq!((s.depth, s.stale_frames), (0, 1));
    }

    #[test]
    fn calls_deeper_than_the_frames_are_nested_and_leave_no_frame() {
        let mut s = IrqUnpins::default();
        assert_eq!(s.enter(UNPIN_PAGES, 0x1000, true, 1), IrqEntry::Count);
        for i in 1..IRQ_FRAMES as u64 + 2 {
            assert_eq!(s.enter(UNPIN_PAGES, 0x1000 - i * 0x100, true, 1), IrqEntry::Nested);
        }
        assert_eq!((s.depth, s.overflow), (IRQ_FRAMES as u64, 2));
        // Every exit closes one call, the outermost last.
        for _ in 0..IRQ_FRAMES + 2 {
            assert_eq!(s.exit(UNPIN_PAGES, 2), IrqExit::Closed);
        }
        assert_eq!((s.depth, s.overflow), (0, 0));
        assert_eq!(s.exit(UNPIN_PAGES, 3), IrqExit::CountNow { already: 0 });
    }

    #[test]
    fn a_record_is_live_only_while_its_call_is() {
        let ret = 0xffff_ffff_8100_1234;
        let outer = 0xffff_c900_0001_3e00;
        // gup_put_folio inside the unpin that recorded: live.
        assert!(record_is_live(12, outer, false, ret, u32::MAX, outer - 64, ret, 0));
        // Kprobe tail call at the same depth into another function: live.
        assert!(record_is_live(13, outer, false, ret, 12, outer, ret, 0));
        // The same function again, even deeper: the first call returned.
        assert!(!record_is_live(3, outer, false, ret, 3, outer - 256, ret, 0));
        assert!(!record_is_live(3, outer, true, ret, 3, outer, ret, 0));
        // Above the record's frame: not inside.
        assert!(!record_is_live(3, outer, false, ret, 1, outer + 8, ret, 0));
        // Deeper, but the return address at the frame was overwritten: a
        // later system call, the record's exit was skipped.
        assert!(!record_is_live(3, outer, false, ret, 1, outer - 512, 0xffff_ffff_8100_9999, 0));
        assert!(!record_is_live(3, outer, true, ret, u32::MAX, outer - 512, 0, 0));
        // Under a trampoline a nested call is at least NESTED_MIN_DEPTH deeper.
        assert!(!record_is_live(3, outer, true, ret, u32::MAX, outer - 8, ret, 0));
        assert!(record_is_live(3, outer, true, ret, u32::MAX, outer - NESTED_MIN_DEPTH, ret, 0));
        // No frame recorded: kept.
        assert!(record_is_live(3, 0, false, ret, 3, outer, 0, 0));
        // A kretprobe swapped the return address for its trampoline: live.
        let tramp = 0xffff_ffff_8100_0500;
        assert!(record_is_live(13, outer, false, ret, u32::MAX, outer - 64, tramp, tramp));
        assert!(record_is_live(13, outer, false, tramp, u32::MAX, outer - 64, tramp, tramp));
        // Entered hijacked, and the original is back: the call returned.
        assert!(!record_is_live(13, outer, false, tramp, u32::MAX, outer - 64, ret, tramp));
        assert!(!record_is_live(13, outer, false, ret, u32::MAX, outer - 64, 0xffff_ffff_8100_9999, tramp));
        assert_eq!(ret_slot(outer, false), outer);
        assert_eq!(ret_slot(outer, true), outer + 8);
    }

    #[test]
    fn the_task_stack_is_thread_size_long() {
        let base = 0xffff_c900_0010_0000;
        let size = thread_size(false);
        assert!(on_task_stack(base + 100, base, size));
        assert!(on_task_stack(base + size - 8, base, size));
        // Past 16 KiB is another stack (an interrupt stack, or the next
        // vmap area), not this task's: a 32 KiB window took it for the task.
        assert!(!on_task_stack(base + size + 64, base, size));
        assert!(on_task_stack(base + size + 64, base, thread_size(true)));
        assert!(!on_task_stack(base - 8, base, size));
        assert!(on_task_stack(12345, 0, size), "unknown base: task rules");
    }
}
