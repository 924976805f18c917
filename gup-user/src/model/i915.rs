//! The i915 userptr view: objects, their pinned pages, and which of them
//! outlived their owner.

use std::collections::HashMap;

use gup_common::i915::{I915Event, I915Object};
use gup_report::ObjectRow;

use crate::model::attribution::comm_string;

/// Builds the rows, marking objects whose owner exited (per `exited`,
/// tgid → exit time) with pages still pinned.
pub fn rows(objects: &[(u64, I915Object)], exited: &HashMap<u32, u64>) -> Vec<ObjectRow> {
    let mut out: Vec<ObjectRow> = objects
        .iter()
        .map(|(addr, o)| {
            let mut o = *o;
            if exited.get(&o.owner_tgid).is_some_and(|t| *t >= o.created_ns) {
                o.apply(I915Event::OwnerExited);
            }
            let secs = |a: u64, b: u64| (a != 0 && b >= a).then(|| (b - a) as f64 / 1e9);
            ObjectRow {
                object: format!("{addr:#x}"),
                owner_tgid: o.owner_tgid,
                comm: comm_string(&o.comm),
                pinned_pages: o.pinned_pages,
                total_pinned: o.total_pinned,
                attempts: o.attempts,
                eagain: o.eagain,
                short_pins: o.short_pins,
                create_to_pin_secs: secs(o.created_ns, o.first_pin_ns),
                pin_to_release_secs: secs(o.first_pin_ns, o.released_ns),
                orphaned: o.orphaned != 0,
            }
        })
        .collect();
    out.sort_by(|a, b| b.pinned_pages.cmp(&a.pinned_pages).then(a.object.cmp(&b.object)));
    out
}

/// A capacity-bounded object table fed by events: the user-space twin of
/// the kernel's object map, for replaying recorded event sequences. Events
/// for objects beyond the capacity are dropped and counted, as the kernel
/// does when its map is full.
#[derive(Clone, Debug, Default)]
pub struct ObjectTable {
    /// Objects by address.
    pub objects: HashMap<u64, I915Object>,
    /// Capacity.
    pub capacity: usize,
    /// Events dropped because the table was full.
    pub dropped: u64,
}

impl ObjectTable {
    /// An empty table holding at most `capacity` objects.
    pub fn new(capacity: usize) -> Self {
        ObjectTable { objects: HashMap::new(), capacity, dropped: 0 }
    }

    /// Applies an event to object `addr`, creating it if there is room.
    pub fn apply(&mut self, addr: u64, ev: I915Event) {
        if !self.objects.contains_key(&addr) && self.objects.len() >= self.capacity {
            self.dropped += 1;
            return;
        }
        self.objects.entry(addr).or_insert(I915Object::EMPTY).apply(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// A recorded sequence: two objects, one retried after -EAGAIN and
    /// released, one still pinned when its owner exits.
    #[test]
    fn replayed_sequence_gives_the_expected_view() {
        let mut t = ObjectTable::new(16);
        let (a, b) = (0xffff_8880_0001_0000u64, 0xffff_8880_0002_0000u64);
        t.apply(a, I915Event::Created { tgid: 10, comm: comm("mesa"), ns: 1_000 });
        t.apply(a, I915Event::Pinned { pages: 64, requested: 64, ns: 2_000 });
        t.apply(a, I915Event::Released { pages: 64, ns: 2_100 });
        t.apply(a, I915Event::Attempt { ret: -11 });
        t.apply(a, I915Event::Pinned { pages: 64, requested: 64, ns: 3_000 });
        t.apply(a, I915Event::Attempt { ret: 0 });
        t.apply(a, I915Event::Released { pages: 64, ns: 1_003_000 });
        t.apply(b, I915Event::Created { tgid: 11, comm: comm("game"), ns: 5_000 });
        t.apply(b, I915Event::Pinned { pages: 256, requested: 256, ns: 6_000 });
        t.apply(b, I915Event::Attempt { ret: 0 });
        let objs: Vec<(u64, I915Object)> = t.objects.iter().map(|(k, v)| (*k, *v)).collect();
        let rows = rows(&objs, &HashMap::from([(11, 9_000)]));
        assert_eq!(rows.len(), 2);
        let game = &rows[0];
        assert_eq!((game.owner_tgid, game.comm.as_str(), game.pinned_pages, game.orphaned), (11, "game", 256, true));
        let mesa = &rows[1];
        assert_eq!((mesa.attempts, mesa.eagain, mesa.pinned_pages, mesa.total_pinned, mesa.orphaned), (2, 1, 0, 128, false));
        assert_eq!(mesa.create_to_pin_secs, Some(1e-6));
        assert_eq!(mesa.pin_to_release_secs, Some(1.001e-3));
    }

    #[test]
    fn a_full_table_drops_and_counts() {
        let mut t = ObjectTable::new(2);
        for addr in 1..=3u64 {
            t.apply(addr, I915Event::Created { tgid: 1, comm: [0; 16], ns: addr });
        }
        t.apply(1, I915Event::Pinned { pages: 1, requested: 1, ns: 9 });
        assert_eq!((t.objects.len(), t.dropped), (2, 1));
        assert_eq!(t.objects[&1].pinned_pages, 1);
        // Every later event of the object that found no room is dropped
        // too (a pin, its release), and counted; the others are untouched.
        t.apply(3, I915Event::Pinned { pages: 8, requested: 8, ns: 10 });
        t.apply(3, I915Event::Released { pages: 8, ns: 11 });
        assert_eq!((t.objects.len(), t.dropped), (2, 3));
        assert!(!t.objects.contains_key(&3));
        let rows = rows(&t.objects.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), &HashMap::new());
        assert_eq!(rows.iter().map(|r| r.pinned_pages).sum::<u64>(), 1);
    }
}
