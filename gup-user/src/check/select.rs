//! Which scenarios `gupwatch check` runs (`--only`), and their phase before
//! the probes attach.

use std::path::Path;

use serde::Serialize;

use crate::check::scenarios::{self, Scenario};
use crate::kernel::vmstat;

/// Options of `gupwatch check` that choose and size the scenarios.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Name prefixes to run (empty: every scenario). `churn` selects the
    /// `churn_` family, `inflight_` the in-flight ones; a full name also
    /// selects the scenarios whose names extend it.
    pub only: Vec<String>,
    /// Name prefixes to leave out (applied after `only`).
    pub skip: Vec<String>,
    /// Short-lived processes per `churn_` scenario.
    pub churn_procs: u32,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { only: vec![], skip: vec![], churn_procs: scenarios::churn::DEFAULT_PROCS }
    }
}

/// A filter that matches no scenario (a typo must not pass as "all exact").
#[derive(Debug, thiserror::Error)]
#[error("--only {filter} (less --skip) matches no scenario; the scenarios are: {known}")]
pub struct NoMatch {
    /// The filter as given.
    pub filter: String,
    /// Every scenario name.
    pub known: String,
}

/// What the phase before attach did, over the whole check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PreAttach {
    /// Pins the scenarios say they took before the probes attached.
    pub pins: u64,
    /// `nr_foll_pin_acquired - nr_foll_pin_released` moved by this much
    /// over the phase (settled), when it could be read.
    pub vmstat_outstanding: Option<i64>,
    /// Scenarios whose phase failed, with why (they run anyway and report
    /// the failure through their counts).
    pub errors: Vec<String>,
}

/// The selected scenarios, each with the pins it took before attach.
pub struct Selection {
    pub(super) scenarios: Vec<(Box<dyn Scenario>, u64)>,
    pub(super) pre_attach: PreAttach,
}

fn matches(name: &str, opts: &CheckOptions) -> bool {
    let starts = |p: &String| name.starts_with(p.as_str());
    (opts.only.is_empty() || opts.only.iter().any(starts)) && !opts.skip.iter().any(starts)
}

impl Selection {
    /// The scenarios `opts` selects, with O_DIRECT files in `scratch`.
    pub fn new(scratch: &Path, opts: &CheckOptions) -> Result<Selection, NoMatch> {
        let all = scenarios::for_check(scratch, opts.churn_procs);
        let known = all.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ");
        let chosen: Vec<_> = all.into_iter().filter(|s| matches(s.name(), opts)).map(|s| (s, 0)).collect();
        if chosen.is_empty() {
            return Err(NoMatch { filter: opts.only.join(","), known });
        }
        Ok(Selection { scenarios: chosen, pre_attach: PreAttach::default() })
    }

    /// Runs every scenario's [`Scenario::before_attach`]: call it before the
    /// probes are loaded. The kernel's outstanding pins are read around the
    /// phase, so the report can show the scenarios' account beside them.
    pub fn before_attach(&mut self) {
        let opts = super::settle_options();
        let before = vmstat::settle(&opts).ok().map(|s| s.counters);
        for (s, pins) in &mut self.scenarios {
            match s.before_attach() {
                Ok(n) => *pins = n,
                Err(e) => self.pre_attach.errors.push(format!("{}: {e}", s.name())),
            }
        }
        self.pre_attach.pins = self.scenarios.iter().map(|(_, n)| n).sum();
        let after = vmstat::settle(&opts).ok().map(|s| s.counters);
        if let (Some(b), Some(a)) = (before, after) {
            let outstanding = |c: vmstat::FollPinCounters| c.acquired as i64 - c.released as i64;
            self.pre_attach.vmstat_outstanding = Some(outstanding(a) - outstanding(b));
        }
    }

    /// Names of the selected scenarios, in run order.
    pub fn names(&self) -> Vec<&'static str> {
        self.scenarios.iter().map(|(s, _)| s.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_by_prefix_and_refuses_a_filter_that_matches_nothing() {
        let dir = Path::new("/nonexistent");
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sel_skip = |only: &[&str], skip: &[&str]| {
            Selection::new(dir, &CheckOptions { only: strings(only), skip: strings(skip), churn_procs: 10 })
        };
        let sel = |only: &[&str]| sel_skip(only, &[]);
        let names = sel(&["churn", "inflight_"]).map(|s| s.names()).unwrap_or_default();
        assert_eq!(
            names,
            [
                "churn_process_vm",
                "churn_io_uring",
                "churn_odirect",
                "inflight_odirect_shared",
                "inflight_fixed_pre_attach",
                "inflight_odirect_owners"
            ]
        );
        // A prefix, not a name: the whole family behind it.
        assert_eq!(
            sel(&["process_vm_readv"]).map(|s| s.names()).unwrap_or_default(),
            ["process_vm_readv", "process_vm_readv_prot_none", "process_vm_readv_file_shared", "process_vm_readv_after_fork"]
        );
        let all = sel(&[]).map(|s| s.names()).unwrap_or_default();
        assert!(all.len() > 20 && all.contains(&"churn_odirect") && all.contains(&"process_vm_readv"), "{all:?}");
        let err = sel(&["chrun"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--only chrun (less --skip) matches no scenario") && err.contains("churn_io_uring"), "{err}");
        let rest = sel_skip(&[], &["churn", "inflight_"]).map(|s| s.names()).unwrap_or_default();
        assert_eq!(rest.len(), all.len() - 6, "{rest:?}");
        assert!(!rest.iter().any(|n| n.starts_with("churn") || n.starts_with("inflight_")), "{rest:?}");
        assert!(sel_skip(&["churn"], &["churn"]).is_err(), "everything skipped is an error too");
    }
}
