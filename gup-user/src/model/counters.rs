//! What gupwatch knows, as plain data: counter snapshots, the deltas
//! between them, and the totals that are compared with the kernel's own
//! `nr_foll_pin_*` counters.

use std::collections::BTreeMap;

use gup_common::{Api, ApiKind, ApiStats, AttribKey, AttribValue, API_COUNT, DIAG_COUNT, LATENCY_BUCKETS};
use gup_report::Totals;

/// All in-kernel counters at one moment, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Per-API counters, indexed by [`Api`].
    pub apis: [ApiStats; API_COUNT],
    /// gupwatch's own health counters, indexed by [`gup_common::Diag`].
    pub diag: [u64; DIAG_COUNT],
    /// Per (process, API, stack) counters, in no particular order.
    pub attrib: Vec<(AttribKey, AttribValue)>,
    /// Failed calls by (API index, errno).
    pub errnos: BTreeMap<(u32, u32), u64>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            apis: [ApiStats::ZERO; API_COUNT],
            diag: [0; DIAG_COUNT],
            attrib: Vec::new(),
            errnos: BTreeMap::new(),
        }
    }
}

/// Applies `op` to every scalar counter of two `ApiStats` and the latency
/// buckets, so adding a field to `ApiStats` means adding it here once.
macro_rules! zip_stats {
    ($a:expr, $b:expr, $op:expr) => {{
        let (a, b) = ($a, $b);
        let op = $op;
        let mut latency_log2 = [0; LATENCY_BUCKETS];
        for (i, slot) in latency_log2.iter_mut().enumerate() {
            *slot = op(a.latency_log2[i], b.latency_log2[i]);
        }
        let mut reverted = [0; gup_common::REVERTED_REASONS];
        for (i, slot) in reverted.iter_mut().enumerate() {
            *slot = op(a.reverted[i], b.reverted[i]);
        }
        ApiStats {
            calls: op(a.calls, b.calls),
            pages: op(a.pages, b.pages),
            requested_pages: op(a.requested_pages, b.requested_pages),
            errors: op(a.errors, b.errors),
            zero_calls: op(a.zero_calls, b.zero_calls),
            short_calls: op(a.short_calls, b.short_calls),
            undone_pages: op(a.undone_pages, b.undone_pages),
            nested_calls: op(a.nested_calls, b.nested_calls),
            untimed_calls: op(a.untimed_calls, b.untimed_calls),
            latency_ns_sum: op(a.latency_ns_sum, b.latency_ns_sum),
            fast_pages: op(a.fast_pages, b.fast_pages),
            slow_pages: op(a.slow_pages, b.slow_pages),
            unsplit_pages: op(a.unsplit_pages, b.unsplit_pages),
            fell_back_calls: op(a.fell_back_calls, b.fell_back_calls),
            longterm_calls: op(a.longterm_calls, b.longterm_calls),
            longterm_pages: op(a.longterm_pages, b.longterm_pages),
            latency_log2,
            reverted,
        }
    }};
}

/// Adds `b` into `a`, field by field (wrapping: counters are monotonic
/// u64s that will not wrap in practice, and a panic here would be worse).
pub fn accumulate(a: &mut ApiStats, b: &ApiStats) {
    *a = zip_stats!(&*a, b, u64::wrapping_add);
}

fn diff(a: &ApiStats, b: &ApiStats) -> ApiStats {
    zip_stats!(a, b, u64::wrapping_sub)
}

impl Snapshot {
    /// Counters accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut out = Snapshot::default();
        for i in 0..API_COUNT {
            out.apis[i] = diff(&self.apis[i], &earlier.apis[i]);
        }
        for i in 0..DIAG_COUNT {
            out.diag[i] = self.diag[i].wrapping_sub(earlier.diag[i]);
        }
        out.attrib = crate::model::attribution::since(&self.attrib, &earlier.attrib);
        out.errnos = self
            .errnos
            .iter()
            .map(|(k, v)| (*k, v.wrapping_sub(earlier.errnos.get(k).copied().unwrap_or(0))))
            .filter(|(_, v)| *v > 0)
            .collect();
        out
    }

    /// Failed calls of one API by errno (positive), largest first.
    pub fn errnos_of(&self, api: Api) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self
            .errnos
            .iter()
            .filter(|((a, _), _)| *a == api as u32)
            .map(|((_, e), n)| (*e, *n))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// The counters of one API.
    pub fn api(&self, api: Api) -> &ApiStats {
        &self.apis[api as usize]
    }

    /// Totals over all APIs. Sums wrap, as [`accumulate`] and
    /// [`Snapshot::since`] do: counters read from the maps are arbitrary
    /// u64s to this code (a delta across a reset is huge), and a panic here
    /// would take a scrape down (found by the map_records fuzz target).
    pub fn totals(&self) -> Totals {
        fn add(total: &mut u64, v: u64) {
            *total = total.wrapping_add(v);
        }
        let mut t = Totals::default();
        for api in Api::ALL {
            let s = self.api(api);
            match api.kind() {
                ApiKind::Pin => {
                    add(&mut t.pinned_pages, s.pages.wrapping_add(s.undone_pages));
                    add(&mut t.pin_calls, s.calls);
                    add(&mut t.failed_calls, s.errors);
                }
                ApiKind::Get => {
                    add(&mut t.referenced_pages, s.pages);
                    add(&mut t.get_calls, s.calls);
                    add(&mut t.failed_calls, s.errors);
                }
                ApiKind::Unpin => {
                    add(&mut t.unpinned_pages, s.pages);
                    add(&mut t.unpin_calls, s.calls);
                }
                ApiKind::SlowPath => {}
                // Releases no hooked unpin counted (see ApiKind::Undo).
                ApiKind::Undo => add(&mut t.unpinned_pages, s.pages),
                ApiKind::I915 => {}
            }
            if api.kind() == ApiKind::Pin {
                add(&mut t.fast_pages, s.fast_pages);
                add(&mut t.slow_pages, s.slow_pages);
                add(&mut t.unsplit_pages, s.unsplit_pages);
                add(&mut t.longterm_pages, s.longterm_pages);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(calls: u64, pages: u64, undone: u64) -> ApiStats {
        ApiStats { calls, pages, undone_pages: undone, ..ApiStats::ZERO }
    }

    #[test]
    fn totals_keep_pins_refs_and_unpins_apart() {
        let mut s = Snapshot::default();
        s.apis[Api::PinUserPagesFast as usize] = stats(2, 512, 0);
        s.apis[Api::PinUserPagesRemote as usize] = stats(1, 256, 16);
        s.apis[Api::GetUserPagesFast as usize] = stats(4, 100, 0);
        s.apis[Api::UnpinUserPage as usize] = stats(300, 300, 0);
        s.apis[Api::UnpinUserPages as usize] = stats(1, 256, 0);
        let t = s.totals();
        assert_eq!(t.pinned_pages, 512 + 256 + 16);
        assert_eq!(t.unpinned_pages, 556);
        assert_eq!(t.referenced_pages, 100);
        assert_eq!((t.pin_calls, t.unpin_calls, t.get_calls), (3, 301, 4));
    }

    #[test]
    fn since_subtracts_every_field() {
        let mut a = Snapshot::default();
        let mut b = Snapshot::default();
        a.apis[0] = stats(5, 50, 1);
        a.apis[0].latency_log2[3] = 7;
        a.diag[1] = 9;
        b.apis[0] = stats(2, 20, 1);
        b.apis[0].latency_log2[3] = 2;
        b.diag[1] = 4;
        let d = a.since(&b);
        assert_eq!(d.apis[0], ApiStats { calls: 3, pages: 30, latency_log2: { let mut l = [0; LATENCY_BUCKETS]; l[3] = 5; l }, ..ApiStats::ZERO });
        assert_eq!(d.diag[1], 5);
    }

    /// The map_records fuzz target's crash: counters summing past u64::MAX
    /// (e.g. a delta across a counter reset) wrap instead of panicking.
    #[test]
    fn totals_wrap_instead_of_overflowing() {
        let mut s = Snapshot::default();
        s.apis[Api::PinUserPagesFast as usize] = ApiStats { fast_pages: u64::MAX, ..stats(u64::MAX, u64::MAX, 2) };
        s.apis[Api::PinUserPagesRemote as usize] = ApiStats { fast_pages: 2, ..stats(3, 5, 0) };
        s.apis[Api::UnpinUserPages as usize] = stats(1, u64::MAX, 0);
        s.apis[Api::GupPutFolio as usize] = stats(1, 2, 0);
        let t = s.totals();
        assert_eq!(t.pinned_pages, 6); // MAX + 2 + 5 wraps to 6
        assert_eq!(t.pin_calls, 2);
        assert_eq!(t.unpinned_pages, 1);
        assert_eq!(t.fast_pages, 1);
    }

    #[test]
    fn accumulate_sums_cpus() {
        let mut a = stats(1, 10, 0);
        let mut b = stats(2, 20, 3);
        b.latency_log2[0] = 1;
        accumulate(&mut a, &b);
        assert_eq!((a.calls, a.pages, a.undone_pages, a.latency_log2[0]), (3, 30, 3, 1));
        b = ApiStats::ZERO;
        accumulate(&mut a, &b);
        assert_eq!(a.calls, 3);
    }
}
