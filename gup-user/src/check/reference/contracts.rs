//! The contracts of the GUP API, stated once and checked twice: on the
//! model's own calls (property tests) and on the live kernel's, from the
//! counters gupwatch's probes keep ([`check_live`], used by `gupwatch
//! check`).
//!
//! | contract | statement |
//! |---|---|
//! | `fast_only_never_negative` | `*_fast_only()` returns a count, never an errno (given valid flags: LONGTERM without PIN is refused with -EINVAL) |
//! | `pinned_le_requested` | no call returns more pages than it was asked for |
//! | `longterm_only_with_pin` | FOLL_LONGTERM only with FOLL_PIN (`get_user_pages*` never take LONGTERM references) |
//! | `unpinned_exactly_once` | every pin is released exactly once: no release of a pin never taken |
//! | `fast_only_no_slow_path` | a fast-only call never enters the slow path |
//! | `split_adds_up` | fast + slow pages = pages returned + pins taken and dropped inside the call |

use std::collections::BTreeMap;

use gup_common::{Api, ApiKind, ApiStats, Diag};
use serde::Serialize;

use super::gup::{GotPage, GupOutcome};
use super::space::FolioId;

/// A broken contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which contract (see the module table).
    pub contract: &'static str,
    /// What broke it.
    pub detail: String,
}

fn v(contract: &'static str, detail: String) -> Violation {
    Violation { contract, detail }
}

fn is_fast_only(api: Api) -> bool {
    matches!(api, Api::PinUserPagesFastOnly | Api::GetUserPagesFastOnly)
}

/// The contracts one model call must keep.
pub fn check_outcome(o: &GupOutcome) -> Vec<Violation> {
    let mut out = vec![];
    let name = o.api.symbol();
    // With invalid arguments (FOLL_LONGTERM without FOLL_PIN) the kernel
    // WARNs and get_user_pages_fast_only returns -EINVAL: the contract is
    // for valid calls.
    let valid = o.pins() || !o.flags.longterm;
    if is_fast_only(o.api) && o.ret < 0 && valid {
        out.push(v("fast_only_never_negative", format!("{name} returned {}", o.ret)));
    }
    if o.ret > o.requested as i64 {
        out.push(v("pinned_le_requested", format!("{name} returned {} of {} pages", o.ret, o.requested)));
    }
    if o.ret >= 0 && o.pages.len() as i64 != o.ret {
        out.push(v("pinned_le_requested", format!("{name} returned {} but holds {} pages", o.ret, o.pages.len())));
    }
    if o.flags.longterm && !o.pins() && o.ret > 0 {
        out.push(v("longterm_only_with_pin", format!("{name} took {} LONGTERM references", o.ret)));
    }
    if is_fast_only(o.api) && (o.slow_path || o.slow_returned() > 0) {
        out.push(v("fast_only_no_slow_path", format!("{name} took {} pages on the slow path", o.slow_returned())));
    }
    let transient = o.transient_fast + o.transient_slow;
    if o.pins() && o.acquired != o.pages.iter().filter(|p| p.counted).count() as u64 + transient {
        out.push(v(
            "split_adds_up",
            format!("{name}: nr_foll_pin_acquired moved {} for {} counted pins and {transient} transient ones", o.acquired, o.pages.len()),
        ));
    }
    out
}

/// Outstanding pins per (folio, subpage), to check that every pin is
/// released exactly once.
#[derive(Clone, Debug, Default)]
pub struct PinLedger {
    held: BTreeMap<(FolioId, u32, bool), u64>,
}

impl PinLedger {
    /// Records the pages a call returned.
    pub fn took(&mut self, pages: &[GotPage]) {
        for p in pages {
            *self.held.entry((p.folio, p.subpage, p.pin)).or_default() += 1;
        }
    }

    /// Records a release; a violation when the page holds no such pin.
    pub fn released(&mut self, pages: &[GotPage]) -> Vec<Violation> {
        let mut out = vec![];
        for p in pages {
            match self.held.get_mut(&(p.folio, p.subpage, p.pin)) {
                Some(n) if *n > 0 => *n -= 1,
                _ => out.push(v("unpinned_exactly_once", format!("page {:#x} (folio {}) released without a pin", p.vpn, p.folio.0))),
            }
        }
        out
    }

    /// Pins still held.
    pub fn outstanding(&self) -> u64 {
        self.held.values().sum()
    }
}

/// The contracts checked on a live scenario, from the change of gupwatch's
/// per-API counters and of its unbalanced-unpin counter over the scenario
/// (whole scenario: set-up, run and clean-up).
pub fn check_live(apis: &[(Api, ApiStats)], unbalanced_unpins: u64) -> Vec<Violation> {
    let mut out = vec![];
    for (api, s) in apis {
        let name = api.symbol();
        let kind = api.kind();
        if kind != ApiKind::Pin && kind != ApiKind::Get {
            continue;
        }
        if is_fast_only(*api) && s.errors > 0 {
            out.push(v("fast_only_never_negative", format!("{name}: {} calls returned an errno", s.errors)));
        }
        // requested_pages is known for calls whose entry was seen.
        let timed = s.calls.saturating_sub(s.untimed_calls);
        if s.untimed_calls == 0 && timed > 0 && s.pages > s.requested_pages {
            out.push(v("pinned_le_requested", format!("{name}: {} pages returned for {} requested", s.pages, s.requested_pages)));
        }
        if kind == ApiKind::Get && s.longterm_calls > 0 {
            out.push(v("longterm_only_with_pin", format!("{name}: {} FOLL_LONGTERM calls without FOLL_PIN", s.longterm_calls)));
        }
        if is_fast_only(*api) && (s.slow_pages > 0 || s.fell_back_calls > 0) {
            out.push(v("fast_only_no_slow_path", format!("{name}: {} pages on the slow path, {} calls fell back", s.slow_pages, s.fell_back_calls)));
        }
        if kind == ApiKind::Pin && s.fast_pages + s.slow_pages + s.unsplit_pages != s.pages + s.undone_pages {
            out.push(v(
                "split_adds_up",
                format!("{name}: fast {} + slow {} + unsplit {} != returned {} + undone {}", s.fast_pages, s.slow_pages, s.unsplit_pages, s.pages, s.undone_pages),
            ));
        }
    }
    if unbalanced_unpins > 0 {
        out.push(v("unpinned_exactly_once", format!("{unbalanced_unpins} unpins of pins gupwatch never saw taken")));
    }
    out
}

/// The per-API counters and unbalanced unpins between two snapshots.
pub fn live_inputs(later: &crate::model::counters::Snapshot, earlier: &crate::model::counters::Snapshot) -> (Vec<(Api, ApiStats)>, u64) {
    let d = later.since(earlier);
    let apis = Api::ALL.iter().map(|a| (*a, *d.api(*a))).filter(|(_, s)| s.calls > 0).collect();
    (apis, d.diag[Diag::UnbalancedUnpins as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_contracts() {
        let ok = ApiStats { calls: 1, pages: 256, requested_pages: 256, fast_pages: 1, slow_pages: 256, undone_pages: 1, ..ApiStats::ZERO };
        assert!(check_live(&[(Api::PinUserPagesFast, ok)], 0).is_empty());
        let bad = ApiStats { calls: 1, errors: 1, slow_pages: 3, pages: 3, requested_pages: 2, ..ApiStats::ZERO };
        let names: Vec<_> = check_live(&[(Api::PinUserPagesFastOnly, bad)], 2).iter().map(|v| v.contract).collect();
        assert_eq!(names, ["fast_only_never_negative", "pinned_le_requested", "fast_only_no_slow_path", "unpinned_exactly_once"]);
        let lt = ApiStats { calls: 1, longterm_calls: 1, ..ApiStats::ZERO };
        assert_eq!(check_live(&[(Api::GetUserPages, lt)], 0)[0].contract, "longterm_only_with_pin");
    }
}
