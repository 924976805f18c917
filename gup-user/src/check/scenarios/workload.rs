//! The demo workload (`gupwatch workload`): the balanced built-in
//! scenarios round after round.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::*;

/// Pause between two rounds of [`run_workload`].
pub(super) const WORKLOAD_PAUSE: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Demo workload

/// What one scenario did during [`run_workload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioStats {
    pub name: &'static str,
    pub pin_path: PinPath,
    /// Rounds in which prepare, run and cleanup all succeeded.
    pub runs: u64,
    /// Base pages those runs pinned (or, for unregister, unpinned).
    pub pages: u64,
    /// Rounds that failed.
    pub failures: u64,
    /// True when the scenario was dropped after an
    /// [unsupported](ScenarioError::is_unsupported) error.
    pub disabled: bool,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The result of [`run_workload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadStats {
    /// Rounds started.
    pub rounds: u64,
    pub elapsed: Duration,
    /// One entry per built-in scenario that pins or unpins (those whose
    /// syscall must fail and the leak scenarios are left out), in
    /// [`builtin`] order.
    pub scenarios: Vec<ScenarioStats>,
}

/// What people read when the workload ends (the demo's report shows it):
/// one line of rounds, then a line per scenario. `{:?}` is for debugging.
impl std::fmt::Display for WorkloadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rounds in {:.1} s", self.rounds, self.elapsed.as_secs_f64())?;
        for s in &self.scenarios {
            // Unregister runs release pages; every other path pins them.
            let verb = if s.pin_path == PinPath::IoUringUnregister { "unpinned" } else { "pinned" };
            write!(f, "\n  {:<30} {:>6} runs {:>9} pages {verb}", s.name, s.runs, s.pages)?;
            if s.failures > 0 {
                write!(f, ", {} failed", s.failures)?;
                if let Some(e) = &s.last_error {
                    write!(f, " (last: {e})")?;
                }
            }
            if s.disabled {
                write!(f, ", dropped: not supported here")?;
            }
        }
        Ok(())
    }
}

/// Runs the built-in scenarios that pin or unpin (prepare, run, cleanup
/// each) round after round, pausing ~50 ms between rounds, until `duration`
/// has passed (checked between rounds; the first round always runs) or
/// `stop` is set (checked before every scenario and during the pause). The
/// scenarios whose syscall must fail are left out: they pin nothing, and one
/// maps a PCI device's memory, which a demo has no business doing. So are
/// the three leak scenarios: they hold or orphan pins on purpose.
///
/// A failing scenario is counted and retried next round, or disabled when
/// the failure means the host does not support it. Returns the first error
/// only when no scenario succeeded in the first round.
pub fn run_workload(
    scratch_dir: &Path,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<WorkloadStats, ScenarioError> {
    let start = Instant::now();
    let mut scenarios = workload_scenarios(scratch_dir);
    let mut stats: Vec<ScenarioStats> = scenarios
        .iter()
        .map(|s| ScenarioStats {
            name: s.name(),
            pin_path: s.pin_path(),
            runs: 0,
            pages: 0,
            failures: 0,
            disabled: false,
            last_error: None,
        })
        .collect();
    let mut rounds = 0u64;
    let mut first_error: Option<ScenarioError> = None;
    'rounds: loop {
        if rounds > 0 && start.elapsed() >= duration {
            break;
        }
        rounds += 1;
        for (sc, st) in scenarios.iter_mut().zip(stats.iter_mut()) {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            if st.disabled {
                continue;
            }
            match run_once(sc.as_mut()) {
                Ok(()) => {
                    st.runs += 1;
                    st.pages += sc.pages();
                }
                Err(e) => {
                    st.failures += 1;
                    st.disabled = e.is_unsupported();
                    st.last_error = Some(e.to_string());
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        if rounds == 1 && stats.iter().all(|s| s.runs == 0) {
            if let Some(e) = first_error.take() {
                return Err(e);
            }
        }
        if stats.iter().all(|s| s.disabled) {
            break;
        }
        let pause_end = Instant::now() + WORKLOAD_PAUSE;
        while Instant::now() < pause_end {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(WorkloadStats {
        rounds,
        elapsed: start.elapsed(),
        scenarios: stats,
    })
}

/// The scenarios [`run_workload`] runs, in [`builtin`] order.
pub(super) fn workload_scenarios(scratch_dir: &Path) -> Vec<Box<dyn Scenario>> {
    balanced(scratch_dir)
        .into_iter()
        .filter(|s| s.expectation().errno.is_none())
        .collect()
}

/// prepare, run, cleanup; cleanup runs even when an earlier phase failed,
/// and the first error wins.
pub(super) fn run_once(sc: &mut dyn Scenario) -> Result<(), ScenarioError> {
    let res = sc.prepare().and_then(|()| sc.run());
    let cleaned = sc.cleanup();
    res.and(cleaned)
}
