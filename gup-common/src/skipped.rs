//! Unpins whose entry program the kernel skipped, counted at their exit.
//!
//! A hooked unpin counts its pages at entry, and its in-flight record then
//! covers the `gup_put_folio` calls inside it. On a preemptible kernel the
//! BPF recursion guard skips an fentry program now and then (a task
//! preempted inside the same program on that CPU left it marked active),
//! so some calls run with no record. What the kernel released in such a
//! call must still be counted exactly once:
//!
//! - where the function calls `gup_put_folio` out of line, those calls see
//!   no record around them and count their own releases;
//! - where the compiler inlined it (`unpin_user_folio` on 7.2), nothing
//!   runs inside the call, and only its exit can count it;
//! - where it calls another hooked unpin (`unpin_user_pages_dirty_lock` →
//!   `unpin_user_pages`), the inner call's entry counts, its exit returns.
//!
//! So every release counted with no record around it leaves a *mark* in
//! the thread's in-flight slot: how many pages, and the return address of
//! the call that counted them (`gup_put_folio`'s or the inner unpin's),
//! which lies inside the function that made the call. The exit of an unpin
//! with no record of its own counts its pages minus those of a mark made
//! inside its own body ([`exit_count`]). The next hooked entry on the thread
//! overwrites the mark, so one never outlives the call that made it by
//! more than an unhooked stretch of the same thread.

/// [`crate::Inflight::api`] of a mark: not a call, pages already counted
/// by calls made where no hooked call was recorded around them.
pub const MARK: u32 = u32::MAX - 1;

/// A function's text, `[start, end)` (from kallsyms: its address and the
/// next symbol's). `[0, 0)` when unknown: contains nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TextRange {
    /// First byte of the function.
    pub start: u64,
    /// First byte after it.
    pub end: u64,
}

impl TextRange {
    /// No range known.
    pub const NONE: TextRange = TextRange { start: 0, end: 0 };

    /// Whether `addr` lies inside the function.
    #[inline(always)]
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Room for the hooked unpin functions' texts in [`UnpinTexts`].
pub const UNPIN_TEXTS: usize = 8;

/// The texts of the hooked unpin functions, and the span that holds them
/// all (they sit together in mm/gup.c), so that most addresses are told
/// apart by two comparisons on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UnpinTexts {
    /// From the lowest start to the highest end of `texts`.
    pub span: TextRange,
    /// Each hooked unpin function's text; unused slots are empty.
    pub texts: [TextRange; UNPIN_TEXTS],
}

impl UnpinTexts {
    /// None known.
    pub const NONE: UnpinTexts = UnpinTexts { span: TextRange::NONE, texts: [TextRange::NONE; UNPIN_TEXTS] };

    /// From the functions' texts (the first [`UNPIN_TEXTS`] non-empty).
    pub fn new(texts: impl IntoIterator<Item = TextRange>) -> UnpinTexts {
        let mut out = UnpinTexts::NONE;
        for (n, t) in texts.into_iter().filter(|t| t.start < t.end).take(UNPIN_TEXTS).enumerate() {
            out.texts[n] = t;
            out.span.start = if out.span.end == 0 { t.start } else { out.span.start.min(t.start) };
            out.span.end = out.span.end.max(t.end);
        }
        out
    }
}

/// Pages counted with no record around them, and where: a thread's mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Return address of the call that counted them (`gup_put_folio`'s,
    /// or a hooked unpin's), inside the function that made the call.
    pub ret: u64,
    /// That call's stack pointer at entry.
    pub frame: u64,
    /// Pages counted.
    pub pages: u64,
}

/// Whether `mark` was made inside the unpin now returning, whose text is
/// `body` and whose fexit frame is `exit_frame` (as at its entry, see
/// [`crate::irq::is_inside`]): the call that made it returned into the
/// unpin's body, or ran deeper on the stack under the unpin's trampoline
/// (a tail call returns into the trampoline, not the body).
#[inline(always)]
pub const fn made_inside(mark: &Mark, body: TextRange, exit_frame: u64) -> bool {
    body.contains(mark.ret) || (exit_frame != 0 && crate::irq::is_inside(mark.frame, exit_frame, true))
}

/// Pages an unpin whose entry was skipped still has to count at its exit:
/// `requested` (from its arguments) less what calls made inside it counted
/// already ([`made_inside`]).
#[inline(always)]
pub const fn exit_count(requested: u64, mark: Option<Mark>, body: TextRange, exit_frame: u64) -> u64 {
    match mark {
        Some(m) if made_inside(&m, body, exit_frame) => requested.saturating_sub(m.pages),
        _ => requested,
    }
}

/// The mark after a call at return address `ret`, entered at `frame`,
/// counted `pages` with no record around it: added to `prev` when that came
/// from the same place (several `gup_put_folio` calls in one unpin's loop),
/// else a new one.
#[inline(always)]
pub const fn add_to_mark(prev: Option<Mark>, ret: u64, frame: u64, pages: u64) -> Mark {
    match prev {
        Some(m) if m.ret == ret => Mark { ret, frame, pages: m.pages.saturating_add(pages) },
        _ => Mark { ret, frame, pages },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRTY_LOCK: TextRange = TextRange { start: 0x1000, end: 0x1100 };
    const FOLIO: TextRange = TextRange { start: 0x2000, end: 0x2040 };
    /// The unpin's frame at its fexit; calls made inside it run deeper.
    const EXIT: u64 = 0xffff_c900_0000_8000;
    const DEEPER: u64 = EXIT - 0x100;
    const ABOVE: u64 = EXIT + 0x200;

    #[test]
    fn inlined_release_is_counted_at_exit() {
        // unpin_user_folio on 7.2: gup_put_folio inlined, nothing ran
        // inside, so no mark: the exit counts all its pages.
        assert_eq!(exit_count(1, None, FOLIO, EXIT), 1);
        assert_eq!(exit_count(64, None, FOLIO, EXIT), 64);
    }

    #[test]
    fn releases_counted_inside_are_not_counted_again() {
        // unpin_user_pages_dirty_lock, entry skipped: its 4 out-of-line
        // gup_put_folio calls counted 4 pages, returning into its body.
        let mut mark = None;
        for _ in 0..4 {
            mark = Some(add_to_mark(mark, 0x1080, DEEPER, 1));
        }
        assert_eq!(mark.map(|m| m.pages), Some(4));
        assert_eq!(exit_count(4, mark, DIRTY_LOCK, EXIT), 0);
        // Its nested unpin_user_pages counted all 4 at its own entry.
        let inner = Mark { ret: 0x1010, frame: DEEPER, pages: 4 };
        assert_eq!(exit_count(4, Some(inner), DIRTY_LOCK, EXIT), 0);
    }

    #[test]
    fn a_tail_call_is_inside_by_depth() {
        // unpin_user_page ending in `jmp gup_put_folio`: the put returns
        // into the unpin's trampoline, outside its body, but runs deeper.
        let m = Mark { ret: 0xffffffffa0001234, frame: DEEPER, pages: 1 };
        assert_eq!(exit_count(1, Some(m), FOLIO, EXIT), 0);
    }

    #[test]
    fn a_mark_made_elsewhere_does_not_count() {
        // A release counted in another function, at or above this call's
        // depth (earlier on the thread), says nothing of this call.
        let m = Mark { ret: 0x1080, frame: ABOVE, pages: 8 };
        assert_eq!(exit_count(8, Some(m), FOLIO, EXIT), 8);
        let same_depth = Mark { ret: 0x1080, frame: EXIT, pages: 8 };
        assert_eq!(exit_count(8, Some(same_depth), FOLIO, EXIT), 8);
        assert_eq!(exit_count(8, Some(same_depth), TextRange::NONE, 0), 8);
    }

    #[test]
    fn never_below_zero() {
        let m = Mark { ret: 0x1080, frame: DEEPER, pages: 5 };
        assert_eq!(exit_count(2, Some(m), DIRTY_LOCK, EXIT), 0);
    }

    #[test]
    fn a_new_place_starts_a_new_mark() {
        let m = Mark { ret: 0x1080, frame: DEEPER, pages: 3 };
        assert_eq!(add_to_mark(Some(m), 0x2010, DEEPER, 1).pages, 1);
        assert_eq!(add_to_mark(None, 0x2010, DEEPER, 2).pages, 2);
    }

    #[test]
    fn unpin_texts_span_them_all() {
        let u = UnpinTexts::new([FOLIO, TextRange::NONE, DIRTY_LOCK]);
        assert_eq!(u.span, TextRange { start: 0x1000, end: 0x2040 });
        assert_eq!(&u.texts[..2], &[FOLIO, DIRTY_LOCK]);
        assert_eq!(UnpinTexts::new([]), UnpinTexts::NONE);
    }

    #[test]
    fn ranges_are_half_open() {
        assert!(DIRTY_LOCK.contains(0x1000));
        assert!(!DIRTY_LOCK.contains(0x1100));
        assert!(!TextRange::NONE.contains(0));
    }
}
