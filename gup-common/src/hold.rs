//! How long pins are held, from pin to unpin: log2 histograms that the
//! ledger's unpin path fills (`gup-ebpf/src/ledger.rs`) and user space
//! turns into `gupwatch_pin_hold_seconds` per subsystem and LONGTERM.
//!
//! The subsystem of a pin is known only in user space (it comes from
//! symbolizing the pin's kernel stack), and the unpin path runs once per
//! page, so it must not update a hash map keyed by stack each time. User
//! space writes each stack's subsystem *class* into `STACK_CLASS` (an
//! array indexed by stack id) once it has resolved the stack; the unpin
//! reads that class and adds to the per-CPU array `HOLD`, indexed by
//! ([`HoldClass`], LONGTERM): two array look-ups. Only a stack user space
//! has not classified yet goes to the hash `HOLD_PENDING`, keyed by
//! [`pending_key`], which user space folds into the stack's subsystem when
//! it reads it; so every hold lands in its subsystem, and the hash is
//! touched only by a call site's first unpins.

/// Histogram buckets. Bucket 0 counts holds shorter than 2^10 ns (about
/// 1 µs); bucket `b` in `1..HOLD_BUCKETS - 1` counts holds `h` with
/// `2^(9 + b) <= h < 2^(10 + b)` ns; the last bucket counts everything from
/// 2^44 ns (about 4.9 hours) up.
pub const HOLD_BUCKETS: usize = 36;

/// log2 of the first bucket's upper bound in nanoseconds.
pub const HOLD_MIN_SHIFT: u32 = 10;

/// Subsystem classes in `HOLD`: [`HOLD_CLASS_PENDING`],
/// [`HOLD_CLASS_NO_STACK`] and those user space assigns
/// (`HOLD_CLASS_FIRST..HOLD_CLASSES`).
pub const HOLD_CLASSES: u32 = 16;

/// `STACK_CLASS` value of a stack user space has not classified yet: its
/// holds go to `HOLD_PENDING`.
pub const HOLD_CLASS_PENDING: u32 = 0;

/// Class of a pin whose kernel stack was lost (no stack id).
pub const HOLD_CLASS_NO_STACK: u32 = 1;

/// The first class user space assigns to a subsystem.
pub const HOLD_CLASS_FIRST: u32 = 2;

/// Entries of `HOLD_PENDING`: stacks (times LONGTERM) whose first unpins
/// came before user space classified them. When full, such holds count
/// under [`HOLD_CLASS_NO_STACK`].
pub const HOLD_PENDING_CAPACITY: u32 = 512;

/// One histogram: pages per bucket and the sum of their hold times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HoldHist {
    /// Pages released per bucket (see [`HOLD_BUCKETS`]).
    pub buckets: [u64; HOLD_BUCKETS],
    /// Sum of the hold times of those pages, in nanoseconds.
    pub sum_ns: u64,
}

impl HoldHist {
    /// An empty histogram.
    pub const ZERO: HoldHist = HoldHist { buckets: [0; HOLD_BUCKETS], sum_ns: 0 };

    /// Pages counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &HoldHist) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

/// The bucket of a hold of `ns` nanoseconds.
#[inline(always)]
pub const fn hold_bucket(ns: u64) -> usize {
    if ns < (1 << HOLD_MIN_SHIFT) {
        return 0;
    }
    let b = (63 - ns.leading_zeros() - (HOLD_MIN_SHIFT - 1)) as usize;
    if b >= HOLD_BUCKETS {
        HOLD_BUCKETS - 1
    } else {
        b
    }
}

/// Upper bound of bucket `b` in nanoseconds (`None` for the last: +Inf).
pub const fn hold_bucket_upper_ns(b: usize) -> Option<u64> {
    if b + 1 >= HOLD_BUCKETS {
        None
    } else {
        Some(1 << (HOLD_MIN_SHIFT as usize + b))
    }
}

/// Index into `HOLD` of a class and LONGTERM flag.
#[inline(always)]
pub const fn hold_index(class: u32, longterm: bool) -> u32 {
    class * 2 + longterm as u32
}

/// Key into `HOLD_PENDING` of a stack id and LONGTERM flag.
#[inline(always)]
pub const fn pending_key(stack_id: i64, longterm: bool) -> u64 {
    ((stack_id as u64) << 1) | longterm as u64
}

/// The stack id and LONGTERM flag of a `HOLD_PENDING` key.
pub const fn pending_parts(key: u64) -> (i64, bool) {
    ((key >> 1) as i64, key & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_at_a_microsecond_and_reach_hours() {
        assert_eq!(hold_bucket(0), 0);
        assert_eq!(hold_bucket(1023), 0);
        assert_eq!(hold_bucket(1024), 1);
        assert_eq!(hold_bucket(2047), 1);
        assert_eq!(hold_bucket(2048), 2);
        // 1 s = 2^29.9 ns: the bucket that ends at 2^30 ns.
        assert_eq!(hold_bucket_upper_ns(hold_bucket(1_000_000_000)), Some(1 << 30));
        // 2 hours is below the last finite bound (2^44 ns, 4.9 hours).
        let two_hours = 2 * 3600 * 1_000_000_000u64;
        assert_eq!(hold_bucket_upper_ns(hold_bucket(two_hours)), Some(1 << 43));
        assert_eq!(hold_bucket(1 << 44), HOLD_BUCKETS - 1);
        assert_eq!(hold_bucket(u64::MAX), HOLD_BUCKETS - 1);
        assert_eq!(hold_bucket_upper_ns(HOLD_BUCKETS - 1), None);
        assert_eq!(hold_bucket_upper_ns(0), Some(1024));
    }

    #[test]
    fn every_hold_is_below_its_bucket_bound() {
        for shift in 0..64 {
            for ns in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                let b = hold_bucket(ns);
                if let Some(up) = hold_bucket_upper_ns(b) {
                    assert!(ns < up, "{ns} in bucket {b} bound {up}");
                }
                if b > 0 {
                    assert!(ns >= hold_bucket_upper_ns(b - 1).unwrap_or(0), "{ns} in bucket {b}");
                }
            }
        }
    }

    #[test]
    fn pending_keys_round_trip() {
        for (id, lt) in [(0, false), (0, true), (4095, true), (17, false)] {
            assert_eq!(pending_parts(pending_key(id, lt)), (id, lt));
        }
        assert_eq!(hold_index(HOLD_CLASSES - 1, true), HOLD_CLASSES * 2 - 1);
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut a = HoldHist::ZERO;
        a.buckets[3] = 2;
        a.sum_ns = 10;
        let mut b = HoldHist::ZERO;
        b.buckets[3] = 1;
        b.buckets[35] = 4;
        b.sum_ns = 5;
        a.merge(&b);
        assert_eq!((a.buckets[3], a.buckets[35], a.count(), a.sum_ns), (3, 4, 7, 15));
    }
}
