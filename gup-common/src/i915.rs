//! Per-object bookkeeping for i915 userptr objects.
//!
//! One pure state machine, [`I915Object::apply`], used twice: the eBPF
//! programs apply kernel events to the object's map value, and user-space
//! tests replay recorded event sequences through the same code. The rules
//! that say which object an event belongs to ([`credited_within`],
//! [`enter_replaces`], [`leave_clears`]) are shared the same way.

use crate::Api;

/// One i915 userptr object's history, keyed by the object's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct I915Object {
    /// Process that created (or first pinned) the object.
    pub owner_tgid: u32,
    /// 1 once the owner has been seen exiting while pages were pinned.
    pub orphaned: u32,
    /// When the object was first seen (its creating ioctl, or first pin).
    pub created_ns: u64,
    /// First successful pin of its pages (0: never).
    pub first_pin_ns: u64,
    /// Last release of its pages (0: never).
    pub released_ns: u64,
    /// Pages pinned now.
    pub pinned_pages: u64,
    /// Pages pinned over its life.
    pub total_pinned: u64,
    /// Pin attempts (`i915_gem_object_userptr_submit_init` calls).
    pub attempts: u64,
    /// Attempts that returned -EAGAIN (an mmu-notifier invalidation raced).
    pub eagain: u64,
    /// Pins that returned fewer pages than asked.
    pub short_pins: u64,
    /// Other failed attempts.
    pub failures: u64,
    /// `comm` of the owner.
    pub comm: [u8; 16],
}

/// Something that happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I915Event {
    /// First seen (ioctl or first pin) by `tgid` at `ns`.
    Created {
        /// Owner.
        tgid: u32,
        /// Owner's comm.
        comm: [u8; 16],
        /// Time.
        ns: u64,
    },
    /// `submit_init` returned `ret` (0 success, negative errno).
    Attempt {
        /// Return value.
        ret: i64,
    },
    /// Pages pinned for it: `pages` of `requested`.
    Pinned {
        /// Pages pinned.
        pages: u64,
        /// Pages asked for.
        requested: u64,
        /// Time.
        ns: u64,
    },
    /// Pages released.
    Released {
        /// Pages.
        pages: u64,
        /// Time.
        ns: u64,
    },
    /// The owner process exited.
    OwnerExited,
}

/// -EAGAIN.
const EAGAIN: i64 = 11;

/// The kind of an [`I915Event`], for [`credited_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I915EventKind {
    /// [`I915Event::Attempt`].
    Attempt,
    /// [`I915Event::Pinned`].
    Pinned,
    /// [`I915Event::Released`].
    Released,
}

/// Whether an event seen while the thread is inside the i915 hook `cur`
/// (an [`Api`] index) belongs to the object that hook is working on.
///
/// - Pins and pin attempts happen only in the pin hook
///   ([`Api::I915UserptrSubmitInit`]).
/// - Unpins are the object's in every hook that holds it: the release
///   hooks, and also the pin hook, which unpins what it just pinned when
///   it loses an mmu-notifier race (-EAGAIN) or finds the pages already
///   there, and which rebinds (put_pages) a stale object before pinning.
/// - Nothing is credited inside the ioctl: its first argument is the
///   device, not an object.
#[inline(always)]
pub fn credited_within(cur: u64, ev: I915EventKind) -> bool {
    let pin = cur == Api::I915UserptrSubmitInit as u64;
    match ev {
        I915EventKind::Attempt | I915EventKind::Pinned => pin,
        I915EventKind::Released => {
            pin || cur == Api::I915UserptrDropRef as u64 || cur == Api::I915UserptrPutPages as u64
        }
    }
}

/// Whether entering an i915 hook on object `obj` replaces the thread's
/// current entry `cur` (`[api, object]`).
///
/// i915's hooks nest: the pin function rebinds a stale object through
/// `i915_gem_userptr_put_pages` and gets its pages through
/// `i915_gem_userptr_get_pages` before it returns. A nested call on the
/// *same* object keeps the outer entry, so the outer hook still sees the
/// pins, unpins and return value that follow the nested call. A different
/// object (or a stale entry left by a missed return probe) is replaced.
#[inline(always)]
pub fn enter_replaces(cur: Option<[u64; 2]>, obj: u64) -> bool {
    match cur {
        Some([_, o]) => o != obj || obj == 0,
        None => true,
    }
}

/// Whether leaving the i915 hook `api` ends the thread's current entry,
/// whose hook is `cur`: only the hook that made the entry ends it.
#[inline(always)]
pub fn leave_clears(cur: u64, api: Api) -> bool {
    cur == api as u64
}

impl I915Object {
    /// A fresh object.
    pub const EMPTY: I915Object = I915Object {
        owner_tgid: 0,
        orphaned: 0,
        created_ns: 0,
        first_pin_ns: 0,
        released_ns: 0,
        pinned_pages: 0,
        total_pinned: 0,
        attempts: 0,
        eagain: 0,
        short_pins: 0,
        failures: 0,
        comm: [0; 16],
    };

    /// Applies one event.
    #[inline(always)]
    pub fn apply(&mut self, ev: I915Event) {
        match ev {
            I915Event::Created { tgid, comm, ns } => {
                if self.created_ns == 0 {
                    self.owner_tgid = tgid;
                    self.comm = comm;
                    self.created_ns = ns;
                }
            }
            I915Event::Attempt { ret } => {
                self.attempts += 1;
                if ret == -EAGAIN {
                    self.eagain += 1;
                } else if ret < 0 {
                    self.failures += 1;
                }
            }
            I915Event::Pinned { pages, requested, ns } => {
                self.pinned_pages += pages;
                self.total_pinned += pages;
                if pages > 0 && self.first_pin_ns == 0 {
                    self.first_pin_ns = ns;
                }
                if pages < requested {
                    self.short_pins += 1;
                }
            }
            I915Event::Released { pages, ns } => {
                self.pinned_pages = self.pinned_pages.saturating_sub(pages);
                self.released_ns = ns;
            }
            I915Event::OwnerExited => {
                if self.pinned_pages > 0 {
                    self.orphaned = 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn comm() -> [u8; 16] {
        let mut c = [0; 16];
        c[..4].copy_from_slice(b"mesa");
        c
    }

    fn replay(events: &[I915Event]) -> I915Object {
        let mut o = I915Object::EMPTY;
        for e in events {
            o.apply(*e);
        }
        o
    }

    #[test]
    fn create_pin_release() {
        let o = replay(&[
            I915Event::Created { tgid: 7, comm: comm(), ns: 100 },
            I915Event::Pinned { pages: 256, requested: 256, ns: 150 },
            I915Event::Attempt { ret: 0 },
            I915Event::Released { pages: 256, ns: 900 },
        ]);
        assert_eq!((o.owner_tgid, o.attempts, o.total_pinned, o.pinned_pages), (7, 1, 256, 0));
        assert_eq!((o.first_pin_ns - o.created_ns, o.released_ns - o.first_pin_ns), (50, 750));
        assert_eq!(o.orphaned, 0);
    }

    #[test]
    fn eagain_retry_then_success() {
        let o = replay(&[
            I915Event::Created { tgid: 7, comm: comm(), ns: 100 },
            I915Event::Pinned { pages: 256, requested: 256, ns: 110 },
            I915Event::Released { pages: 256, ns: 111 },
            I915Event::Attempt { ret: -11 },
            I915Event::Pinned { pages: 256, requested: 256, ns: 120 },
            I915Event::Attempt { ret: 0 },
        ]);
        assert_eq!((o.attempts, o.eagain, o.failures, o.pinned_pages, o.total_pinned), (2, 1, 0, 256, 512));
        assert_eq!(o.first_pin_ns, 110);
    }

    /// One thread as the eBPF programs see it: the `[api, object]` entry of
    /// `I915_CUR`, updated by the shared rules, and the object map.
    struct Thread {
        cur: Option<[u64; 2]>,
        objects: std::collections::HashMap<u64, I915Object>,
    }

    impl Thread {
        fn new() -> Self {
            Thread { cur: None, objects: Default::default() }
        }
        fn enter(&mut self, api: Api, obj: u64) {
            if enter_replaces(self.cur, obj) {
                self.cur = Some([api as u64, obj]);
            }
        }
        fn event(&mut self, kind: I915EventKind, ev: I915Event) {
            let Some([api, obj]) = self.cur else { return };
            if credited_within(api, kind) && obj != 0 {
                self.objects.entry(obj).or_insert(I915Object::EMPTY).apply(ev);
            }
        }
        fn leave(&mut self, api: Api, ret: i64) {
            if api == Api::I915UserptrSubmitInit {
                self.event(I915EventKind::Attempt, I915Event::Attempt { ret });
            }
            if self.cur.is_some_and(|[c, _]| leave_clears(c, api)) {
                self.cur = None;
            }
        }
        fn pin(&mut self, pages: u64, ns: u64) {
            self.event(I915EventKind::Pinned, I915Event::Pinned { pages, requested: pages, ns });
        }
        fn unpin(&mut self, pages: u64, ns: u64) {
            self.event(I915EventKind::Released, I915Event::Released { pages, ns });
        }
    }

    /// 6.x's submit_init on a stale object: it puts the old pages
    /// (put_pages, nested), pins again, and gets its pages through
    /// get_pages (nested; the drop-ref role where drop_ref is inlined).
    /// The nested calls must not end the outer entry, or the new pins and
    /// the attempt would be lost.
    #[test]
    fn nested_calls_on_the_same_object_keep_crediting_the_outer_call() {
        let obj = 0xffff_8880_1234_0000;
        let mut t = Thread::new();
        t.enter(Api::I915UserptrSubmitInit, obj);
        t.pin(256, 10);
        t.leave(Api::I915UserptrSubmitInit, 0);
        // The notifier moved on: the next submit rebinds.
        t.enter(Api::I915UserptrSubmitInit, obj);
        t.enter(Api::I915UserptrPutPages, obj);
        t.unpin(256, 20);
        t.leave(Api::I915UserptrPutPages, 0);
        t.pin(256, 30);
        t.enter(Api::I915UserptrDropRef, obj);
        t.leave(Api::I915UserptrDropRef, 0);
        t.leave(Api::I915UserptrSubmitInit, 0);
        assert_eq!(t.cur, None, "the outer call's return ends the entry");
        let o = t.objects[&obj];
        assert_eq!((o.attempts, o.pinned_pages, o.total_pinned, o.released_ns), (2, 256, 512, 20));
    }

    /// An mmu-notifier race: submit_init unpins what it pinned and returns
    /// -EAGAIN; the caller retries. Those unpins are the object's.
    #[test]
    fn eagain_unpins_inside_the_pin_call_are_credited() {
        let obj = 0xffff_8880_0000_1000;
        let mut t = Thread::new();
        t.enter(Api::I915UserptrSubmitInit, obj);
        t.pin(64, 1);
        t.unpin(64, 2);
        t.leave(Api::I915UserptrSubmitInit, -11);
        t.enter(Api::I915UserptrSubmitInit, obj);
        t.pin(64, 3);
        t.leave(Api::I915UserptrSubmitInit, 0);
        let o = t.objects[&obj];
        assert_eq!((o.attempts, o.eagain, o.pinned_pages, o.total_pinned), (2, 1, 64, 128));
        // Released later through put_pages, outside any pin call.
        t.enter(Api::I915UserptrPutPages, obj);
        t.unpin(64, 9);
        t.leave(Api::I915UserptrPutPages, 0);
        assert_eq!((t.objects[&obj].pinned_pages, t.objects[&obj].released_ns), (0, 9));
    }

    #[test]
    fn nothing_is_credited_inside_the_ioctl_or_outside_any_hook() {
        let mut t = Thread::new();
        t.pin(8, 1);
        t.enter(Api::I915UserptrIoctl, 0xdead_0000); // the device, not an object
        t.pin(8, 2);
        t.unpin(8, 3);
        t.leave(Api::I915UserptrIoctl, 0);
        assert!(t.objects.is_empty());
        assert_eq!(t.cur, None);
        // Another object's call replaces a stale entry (missed return).
        t.cur = Some([Api::I915UserptrPutPages as u64, 1]);
        t.enter(Api::I915UserptrSubmitInit, 2);
        assert_eq!(t.cur, Some([Api::I915UserptrSubmitInit as u64, 2]));
        // A nested call that is not the entry's owner does not end it.
        t.leave(Api::I915UserptrPutPages, 0);
        assert_eq!(t.cur, Some([Api::I915UserptrSubmitInit as u64, 2]));
    }

    #[test]
    fn owner_exit_with_pages_pinned_is_orphaned() {
        let mut o = replay(&[
            I915Event::Created { tgid: 7, comm: comm(), ns: 1 },
            I915Event::Pinned { pages: 10, requested: 16, ns: 2 },
            I915Event::OwnerExited,
        ]);
        assert_eq!((o.orphaned, o.short_pins), (1, 1));
        // Exit after release is not an orphan.
        let released = replay(&[
            I915Event::Created { tgid: 8, comm: comm(), ns: 1 },
            I915Event::Pinned { pages: 4, requested: 4, ns: 2 },
            I915Event::Released { pages: 4, ns: 3 },
            I915Event::OwnerExited,
        ]);
        assert_eq!(released.orphaned, 0);
        // A second Created (another process touching it) keeps the owner.
        o.apply(I915Event::Created { tgid: 9, comm: [0; 16], ns: 50 });
        assert_eq!((o.owner_tgid, o.created_ns), (7, 1));
    }
}
