//! `gupwatch stress --mode churn`: the `churn_` scenarios of `gupwatch
//! check` (short-lived processes pinning at once), one per cycle in turn,
//! with the probes attached throughout; every cycle is one interval between
//! two quiet readings, and must be exact (issue 24).

use crate::{
    probes::loader::{self, LoadOptions},
    kernel::plan::ProbePlan,
    check::scenarios::churn,
};

use super::{account, misses_since, quiet, record_diag, StressOptions, StressReport};

/// Runs the churn stress inside the guest.
pub(super) fn run(opts: &StressOptions) -> StressReport {
    let mut r = StressReport { kernel: crate::kernel::version::release(), mode: "churn", ..Default::default() };
    let plan = match ProbePlan::for_running_kernel() {
        Ok(p) => p,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    // The full tracking map: this mode is about counting, not overflow.
    let load = LoadOptions { track_pins: true, track_capacity: gup_common::TRACK_CAPACITY, ebpf_log: false };
    let probes = match loader::load_with(plan, load) {
        Ok(p) => p,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    let mut scenarios = churn::scenarios(&opts.scratch, opts.churn_procs);
    let first = probes.maps.snapshot().ok();
    for cycle in 0..opts.cycles {
        let sc = &mut scenarios[cycle as usize % churn::ChurnPath::ALL.len()];
        if let Err(e) = sc.prepare() {
            r.errors.push(e.to_string());
            break;
        }
        let begin = quiet(&probes);
        let misses0 = probes.probe_misses();
        let ran = sc.run();
        let end = quiet(&probes);
        let misses = misses_since(&probes.probe_misses(), &misses0);
        let cleaned = sc.cleanup();
        if let Err(e) = ran.and(cleaned) {
            r.errors.push(e.to_string());
            break;
        }
        let label = format!("{}: ", sc.name());
        let res = match (begin, end) {
            (Ok(b), Ok(e)) => account(&mut r, &label, b, e, &misses),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = res {
            r.errors.push(e);
            break;
        }
        r.cycles += 1;
    }
    record_diag(&mut r, first, &probes);
    r
}
