//! Hold times, from pin to unpin, per subsystem and LONGTERM
//! (`gup_common::hold` says how the kernel side buckets them).
//!
//! User space's part: tell the programs each kernel stack's subsystem
//! ([`HoldMaps::classify`], once per stack, into `STACK_CLASS`), read the
//! per-class histograms and the not-yet-classified ones
//! ([`HoldMaps::read`]), and fold both into one histogram per (subsystem,
//! LONGTERM) ([`fold`]).

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use gup_common::hold::{
    hold_index, pending_parts, HoldHist, HOLD_BUCKETS, HOLD_CLASSES, HOLD_CLASS_FIRST, HOLD_CLASS_NO_STACK,
};

use gup_report::{HoldHistogram, Subsystem};

/// Every subsystem with a class, in class order (class =
/// `HOLD_CLASS_FIRST` + index).
const CLASSED: [Subsystem; 9] = [
    Subsystem::IoUring,
    Subsystem::DirectIo,
    Subsystem::ProcessVm,
    Subsystem::I915,
    Subsystem::Gpu,
    Subsystem::Rdma,
    Subsystem::Vfio,
    Subsystem::Udmabuf,
    Subsystem::Other,
];

const _: () = assert!(HOLD_CLASS_FIRST as usize + CLASSED.len() <= HOLD_CLASSES as usize);

/// The subsystem label of pins whose stack was lost.
pub const UNKNOWN_SUBSYSTEM: &str = "unknown";

/// The class the programs use for a subsystem.
pub fn class_of(s: Subsystem) -> u32 {
    let i = CLASSED.iter().position(|c| *c == s).unwrap_or(CLASSED.len() - 1);
    HOLD_CLASS_FIRST + i as u32
}

/// The subsystem label of a class (`None` for the pending class).
fn label_of(class: u32) -> Option<&'static str> {
    if class == HOLD_CLASS_NO_STACK {
        return Some(UNKNOWN_SUBSYSTEM);
    }
    let i = class.checked_sub(HOLD_CLASS_FIRST)? as usize;
    CLASSED.get(i).map(|s| s.as_str())
}

/// What the hold-time maps held at one read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawHolds {
    /// Per `hold_index(class, longterm)`, summed over CPUs.
    pub by_index: Vec<(u32, HoldHist)>,
    /// Not yet classified, per `pending_key(stack id, longterm)`.
    pub pending: Vec<(u64, HoldHist)>,
}

/// Handles on the hold-time maps.
pub struct HoldMaps {
    class: Array<MapData, u32>,
    hold: PerCpuArray<MapData, HoldHist>,
    pending: HashMap<MapData, u64, HoldHist>,
}

impl HoldMaps {
    /// Takes the maps out of a loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<HoldMaps, String> {
        let mut get = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("map {name} missing"));
        let class = Array::try_from(get("STACK_CLASS")?).map_err(|e| e.to_string())?;
        let hold = PerCpuArray::try_from(get("HOLD")?).map_err(|e| e.to_string())?;
        let pending = HashMap::try_from(get("HOLD_PENDING")?).map_err(|e| e.to_string())?;
        Ok(HoldMaps { class, hold, pending })
    }

    /// Tells the programs a stack's subsystem: its later unpins go to the
    /// subsystem's histogram directly.
    pub fn classify(&mut self, stack_id: i64, s: Subsystem) -> Result<(), aya::maps::MapError> {
        let Ok(id) = u32::try_from(stack_id) else { return Ok(()) };
        self.class.set(id, class_of(s), 0)
    }

    /// Reads the histograms (one syscall per class and LONGTERM, and one
    /// per pending entry).
    pub fn read(&self) -> RawHolds {
        let mut raw = RawHolds::default();
        for i in 0..HOLD_CLASSES * 2 {
            let Ok(per_cpu) = self.hold.get(&i, 0) else { continue };
            let mut sum = HoldHist::ZERO;
            for h in per_cpu.iter() {
                sum.merge(h);
            }
            if sum.count() > 0 {
                raw.by_index.push((i, sum));
            }
        }
        raw.pending = self.pending.iter().filter_map(Result::ok).collect();
        raw
    }
}

/// One histogram per (subsystem, LONGTERM), sorted by subsystem then
/// LONGTERM. `subsystem_of` names a pending entry's stack (`None`: its
/// stack can no longer be read, counted as unknown).
pub fn fold(raw: &RawHolds, mut subsystem_of: impl FnMut(i64) -> Option<Subsystem>) -> Vec<HoldHistogram> {
    let mut acc: BTreeMap<(&'static str, bool), HoldHist> = BTreeMap::new();
    for (i, h) in &raw.by_index {
        let (class, longterm) = (i / 2, i % 2 == 1);
        debug_assert_eq!(hold_index(class, longterm), *i);
        if let Some(label) = label_of(class) {
            acc.entry((label, longterm)).or_insert(HoldHist::ZERO).merge(h);
        }
    }
    for (key, h) in &raw.pending {
        let (stack, longterm) = pending_parts(*key);
        let label = subsystem_of(stack).map_or(UNKNOWN_SUBSYSTEM, Subsystem::as_str);
        acc.entry((label, longterm)).or_insert(HoldHist::ZERO).merge(h);
    }
    acc.into_iter()
        .map(|((subsystem, longterm), h)| HoldHistogram {
            subsystem: subsystem.to_string(),
            longterm,
            count: h.count(),
            sum_seconds: h.sum_ns as f64 / 1e9,
            buckets: h.buckets[..HOLD_BUCKETS].to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use gup_common::hold::pending_key;

    use super::*;

    fn one(bucket: usize, n: u64, sum_ns: u64) -> HoldHist {
        let mut h = HoldHist::ZERO;
        h.buckets[bucket] = n;
        h.sum_ns = sum_ns;
        h
    }

    #[test]
    fn every_subsystem_has_its_own_class() {
        let mut seen = std::collections::HashSet::new();
        for s in CLASSED {
            let c = class_of(s);
            assert!((HOLD_CLASS_FIRST..HOLD_CLASSES).contains(&c));
            assert!(seen.insert(c));
            assert_eq!(label_of(c), Some(s.as_str()));
        }
        assert_eq!(label_of(HOLD_CLASS_NO_STACK), Some(UNKNOWN_SUBSYSTEM));
        assert_eq!(label_of(0), None);
    }

    #[test]
    fn pending_entries_join_their_subsystem() {
        let io = class_of(Subsystem::IoUring);
        let raw = RawHolds {
            by_index: vec![
                (hold_index(io, true), one(3, 256, 256 * 5000)),
                (hold_index(HOLD_CLASS_NO_STACK, false), one(0, 1, 100)),
            ],
            pending: vec![
                // Stack 7 turned out to be io_uring's: folded into its histogram.
                (pending_key(7, true), one(20, 2, 2_000_000_000)),
                // Stack 9 can no longer be read: unknown.
                (pending_key(9, false), one(1, 4, 4000)),
            ],
        };
        let out = fold(&raw, |id| (id == 7).then_some(Subsystem::IoUring));
        let got: Vec<(&str, bool, u64, u64, u64)> = out
            .iter()
            .map(|h| (h.subsystem.as_str(), h.longterm, h.count, h.buckets[3], h.buckets[20]))
            .collect();
        assert_eq!(got, vec![("io_uring", true, 258, 256, 2), ("unknown", false, 5, 0, 0)]);
        assert!((out[0].sum_seconds - (256.0 * 5000e-9 + 2.0)).abs() < 1e-9);
    }
}
