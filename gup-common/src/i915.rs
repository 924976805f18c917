//! Per-object bookkeeping for i915 userptr objects.
//!
//! One pure state machine, [`I915Object::apply`], used twice: the eBPF
//! programs apply kernel events to the object's map value, and user-space
//! tests replay recorded event sequences through the same code.

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
