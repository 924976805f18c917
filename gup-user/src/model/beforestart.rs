//! Pins taken before gupwatch attached: the tracking map only sees pins
//! taken after, so at attach gupwatch inventories what the kernel shows of
//! the pins already held, and at report time keeps what is still held.
//!
//! Source so far: io_uring registered buffers, from the `UserBufs:` lines
//! of `/proc/PID/fdinfo` of io_uring descriptors ([`crate::model::accounted`]
//! parses them). Each buffer's pages are pinned with FOLL_PIN |
//! FOLL_LONGTERM at registration and counted in `nr_foll_pin_acquired`,
//! one per page.
//!
//! Inventory before attach, check after: a buffer registered between the
//! two readings is tracked, not inventoried; one unregistered meanwhile is
//! dropped from the inventory by the second reading (per process, the
//! smaller of the two). A process that unregisters and registers the same
//! amount while gupwatch watches would be counted in both; the kernel's
//! outstanding total shows the difference.

use std::{collections::HashMap, path::Path};

use gup_report::{Accounted, HeldBeforeStart, HELD_BEFORE_START};

use crate::model::accounted::scan;

/// The io_uring buffers each process holds now, by pid: (comm, pages,
/// buffers); and whether some descriptors could not be read (the daemon
/// reads again after dropping its capabilities, and other root processes'
/// fdinfo then needs CAP_SYS_PTRACE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory(HashMap<u32, (String, u64, u32)>, bool);

impl Inventory {
    /// Reads every process's io_uring buffers under `proc_root`.
    pub fn take(proc_root: &Path) -> Inventory {
        Inventory::from_accounted(&scan(proc_root))
    }

    /// The io_uring part of an accounted reading.
    pub fn from_accounted(a: &Accounted) -> Inventory {
        Inventory(
            a.holders
                .iter()
                .filter(|h| h.io_uring_pages > 0)
                .map(|h| (h.pid, (h.comm.clone(), h.io_uring_pages, h.io_uring_buffers)))
                .collect(),
            a.unreadable > 0,
        )
    }

    /// What was held at `self` (before attach) and is still held at
    /// `now`: per process, the smaller of the two, largest first. A
    /// process `now` could not read (see [`Inventory`]) keeps its first
    /// figure, and then the total is cut to `gap`, the pins the kernel
    /// counts outstanding beyond those tracked: released buffers leave it.
    pub fn still_held(&self, now: &Inventory, gap: Option<u64>) -> Vec<HeldBeforeStart> {
        let mut out: Vec<HeldBeforeStart> = self
            .0
            .iter()
            .filter_map(|(pid, (comm, pages, bufs))| {
                let (_, p2, b2) = match now.0.get(pid) {
                    Some(e) => e.clone(),
                    None if now.1 => (String::new(), *pages, *bufs),
                    None => return None,
                };
                let pages = (*pages).min(p2);
                (pages > 0).then(|| HeldBeforeStart {
                    kind: HELD_BEFORE_START.into(),
                    source: "io_uring".into(),
                    owner_tgid: *pid,
                    comm: comm.clone(),
                    pages,
                    buffers: (*bufs).min(b2),
                })
            })
            .collect();
        out.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.owner_tgid.cmp(&b.owner_tgid)));
        if let (true, Some(mut left)) = (now.1, gap) {
            out.retain_mut(|h| {
                h.pages = h.pages.min(left);
                left -= h.pages;
                h.pages > 0
            });
        }
        out
    }
}

/// The table `gupwatch leaks` prints.
pub fn before_table(held: &[HeldBeforeStart], tracked: u64, kernel: Option<i64>) -> String {
    let total: u64 = held.iter().map(|h| h.pages).sum();
    let mut out = format!(
        "\npins held since before start (the kernel's view; not in the tracking map): {total} pages; tracked {tracked} + before start {total} = {}{}\n",
        tracked + total,
        kernel.map_or(String::new(), |k| format!(", kernel outstanding {k}"))
    );
    for h in held {
        out += &format!("{:>7} {:<16} {:<9} {:>7} pages in {} buffers\n", h.owner_tgid, h.comm, h.source, h.pages, h.buffers);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(entries: &[(u32, u64, u32)]) -> Inventory {
        Inventory(entries.iter().map(|(p, pages, b)| (*p, (format!("p{p}"), *pages, *b))).collect(), false)
    }

    #[test]
    fn only_what_is_still_held_counts() {
        // 1 keeps its buffer, 2 unregistered half, 3 is gone, 4 registered
        // after attach (tracked, not inventoried).
        let before = inv(&[(1, 256, 1), (2, 512, 2), (3, 64, 1)]);
        let after = inv(&[(1, 256, 1), (2, 256, 1), (4, 128, 1)]);
        let held = before.still_held(&after, Some(0));
        let got: Vec<(u32, u64, u32, &str)> =
            held.iter().map(|h| (h.owner_tgid, h.pages, h.buffers, h.kind.as_str())).collect();
        assert_eq!(got, vec![(1, 256, 1, HELD_BEFORE_START), (2, 256, 1, HELD_BEFORE_START)]);
        let t = before_table(&held, 10, Some(522));
        assert!(t.contains("tracked 10 + before start 512 = 522, kernel outstanding 522"), "{t}");
    }

    #[test]
    fn unreadable_processes_keep_their_figure_within_the_kernels_gap() {
        let before = inv(&[(1, 256, 1), (2, 512, 2)]);
        let mut after = inv(&[]);
        after.1 = true;
        let pages = |gap| before.still_held(&after, gap).iter().map(|h| (h.owner_tgid, h.pages)).collect::<Vec<_>>();
        assert_eq!(pages(None), vec![(2, 512), (1, 256)]);
        // Pid 1 released its buffer: the kernel's gap says 512 are left.
        assert_eq!(pages(Some(512)), vec![(2, 512)]);
        assert_eq!(pages(Some(600)), vec![(2, 512), (1, 88)]);
    }
}
