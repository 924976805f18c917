//! One reading of gupwatch's counters, whichever way it arrived: from the
//! collector of this process or from a daemon's `/api/snapshot`. Both are
//! the one `/api/snapshot` document ([`SnapshotReport`], made by
//! [`crate::export::api`]) and go through the one conversion
//! [`Sample::from_report`]; the view model only ever sees [`Sample`]s, so
//! the local and the remote view are the same code.
//!
//! Every counter is cumulative since the probes were attached; rates are
//! the view model's business.

use gup_common::LATENCY_BUCKETS;

pub use gup_report::{Kind, Mode};
use gup_report::{Accounted, ApiReport, CallerReport, HoldHistogram, HookReport, SnapshotReport, Totals};

use crate::{collect::Reading, export::api};

/// One reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// gupwatch's version (the daemon's, for a remote view).
    pub version: String,
    /// `uname -r` of the watched kernel.
    pub kernel: String,
    /// Probes or not.
    pub mode: Mode,
    /// Hooks attached.
    pub hooks_attached: usize,
    /// Hooks whose function the kernel has.
    pub hooks_present: usize,
    /// The plan's hooks (for the reduced-mode screen's "why").
    pub hooks: Vec<HookReport>,
    /// Totals in the terms of `/proc/vmstat` (full mode only).
    pub totals: Option<Totals>,
    /// The kernel's own `nr_foll_pin_acquired` / `nr_foll_pin_released`.
    pub kernel_counters: Option<(u64, u64)>,
    /// Per-API counters of pin, get and unpin APIs, each with
    /// [`LATENCY_BUCKETS`] latency buckets (all zero when a remote daemon
    /// is too old to send them).
    pub apis: Vec<ApiReport>,
    /// Attribution rows.
    pub rows: Vec<CallerReport>,
    /// Whether rows were left out (a remote daemon sends the largest only).
    pub rows_truncated: bool,
    /// Reduced mode: pinned memory as the kernel accounts it per process.
    pub accounted: Option<Accounted>,
    /// How long released pins were held, per subsystem and LONGTERM.
    pub hold_times: Vec<HoldHistogram>,
    /// Pins held now per cgroup.
    pub cgroups: Vec<gup_report::CgroupPins>,
}

/// Why a JSON document could not be read as a sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Not the JSON of `/api/snapshot`.
    #[error("not a gupwatch /api/snapshot document: {0}")]
    Json(#[from] serde_json::Error),
}

impl Sample {
    /// A sample from a reading of this process's collector, through the
    /// document a daemon would send for it (with every attribution row):
    /// what the local view shows is what `/api/snapshot` says.
    pub fn from_reading(d: &Reading) -> Sample {
        Sample::from_report(api::snapshot_with_callers(d, 0, usize::MAX))
    }

    /// A sample from a daemon's `/api/snapshot` document (with
    /// `?callers=1` for the rows). Unknown fields are ignored and missing
    /// optional ones default, so older and newer daemons both work.
    pub fn from_json(text: &str) -> Result<Sample, SampleError> {
        Ok(Sample::from_report(serde_json::from_str(text)?))
    }

    /// The one conversion of an `/api/snapshot` document into what the
    /// view uses. Its leak report (`leaks`), if any, is not part of a
    /// sample: take it out first.
    pub fn from_report(doc: SnapshotReport) -> Sample {
        let apis = doc
            .apis
            .into_iter()
            .map(|mut a| {
                a.latency_log2.resize(LATENCY_BUCKETS, 0);
                a
            })
            .collect();
        Sample {
            version: doc.version,
            kernel: doc.kernel,
            mode: doc.mode,
            hooks_attached: doc.hooks.iter().filter(|h| h.attached).count(),
            hooks_present: doc.hooks.iter().filter(|h| h.status != "absent").count(),
            hooks: doc.hooks,
            totals: if doc.mode == Mode::Full { doc.totals } else { None },
            kernel_counters: doc.kernel_counters.map(|k| (k.acquired, k.released)),
            apis,
            rows: doc.callers.unwrap_or_default(),
            rows_truncated: doc.callers_truncated.unwrap_or(false),
            accounted: doc.accounted,
            hold_times: doc.hold_times,
            cgroups: doc.cgroups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local view and the remote one (the daemon's HTTP body, as
    /// text) read the same sample, and it carries what the view uses.
    #[test]
    fn local_and_remote_agree() {
        let data = crate::collect::fixture::sample();
        let local = Sample::from_reading(&data);
        let doc = api::snapshot_with_callers(&data, 10, api::MAX_JSON_CALLERS);
        let remote = Sample::from_json(&gup_report::to_sorted_pretty_json(&doc).expect("writes")).expect("parses");
        assert_eq!(local, remote);
        assert_eq!(local.mode, Mode::Full);
        assert_eq!(local.version, data.version);
        assert_eq!(local.totals, data.snapshot.as_ref().map(|s| s.totals()));
        assert_eq!(local.kernel_counters, data.vmstat.map(|v| (v.acquired, v.released)));
        assert_eq!(local.rows.len(), data.rows.len(), "every row travels");
        assert!(local.apis.iter().any(|a| a.latency_log2.iter().sum::<u64>() > 0), "latency travels");
        let fast = local.apis.iter().find(|a| a.api == "pin_user_pages_fast").expect("pin_user_pages_fast");
        assert!(fast.fast_api() && fast.kind == Kind::Pin && fast.calls == 10);
    }

    #[test]
    fn old_daemons_and_reduced_mode_parse() {
        let s = Sample::from_json(
            r#"{"kernel":"6.18","mode":"reduced","totals":null,"kernel_counters":{"acquired":5,"released":3,"outstanding":2},
                "apis":[],"hooks":[{"function":"pin_user_pages","status":"failed","reason":"fentry: EPERM","attached":false},
                {"function":"pin_user_pages_fast_only","status":"absent","reason":"","attached":false}],"extra":1}"#,
        )
        .expect("parses");
        assert_eq!(s.mode, Mode::Reduced);
        assert_eq!(s.kernel_counters, Some((5, 3)));
        assert_eq!((s.hooks_attached, s.hooks_present), (0, 1));
        assert!(s.rows.is_empty());
        assert!(Sample::from_json("<html>").is_err());
    }

    /// A daemon too old to send latency buckets: the view still gets
    /// [`LATENCY_BUCKETS`] of them.
    #[test]
    fn latency_buckets_are_padded() {
        let s = Sample::from_json(r#"{"kernel":"6.1","mode":"full","apis":[{"api":"pin_user_pages","kind":"pin","calls":2}]}"#)
            .expect("parses");
        assert_eq!(s.apis[0].latency_log2, vec![0; LATENCY_BUCKETS]);
        assert_eq!((s.apis[0].calls, s.apis[0].fast_api()), (2, false));
    }
}
