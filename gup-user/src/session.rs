//! Starting the probes, one way for every command: resolve the probe plan,
//! load and attach per plan (or load nothing in the reduced mode), and
//! keep what the command needs to say about the outcome.
//!
//! Every command that watches the kernel (`gupwatch`, `top`, `run`,
//! `check`, `leaks`, `probes`) starts here, so a change to start-up (a new
//! load option, a new fallback) is made once. Two ways to start:
//! [`Session::start`] falls back to the reduced mode when the probes do not
//! load, [`Session::require`] makes a load error the command's error (for
//! the commands that mean nothing without probes).

use crate::{
    probes::ebpflog::EbpfLog,
    diagnose::host::{self, Finding},
    kernel::kallsyms::KallsymsError,
    probes::loader::{self, LoadError, LoadOptions, Probes},
    kernel::plan::{HookStatus, ProbePlan},
};

/// The target of the start-up's and the daemon's log lines: the one they
/// had when the binary wrote them, which `--log-level` filters and the
/// text lines show.
pub(crate) const LOG_TARGET: &str = "gupwatch";

/// Why the probes could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot resolve the probe plan")]
    Plan(#[source] KallsymsError),
    #[error("cannot load gupwatch's probes")]
    Load(#[source] LoadError),
}

/// Resolves the running kernel's probe plan.
pub fn resolve_plan() -> Result<ProbePlan, SessionError> {
    let plan = ProbePlan::for_running_kernel().map_err(SessionError::Plan);
    crate::memstat::note("plan resolved");
    // The BTF and kallsyms it read are gone: give their pages back before
    // aya parses the BTF again, so the two parses' peaks do not stack.
    loader::trim_heap();
    plan
}

/// The probes a command runs with, or the reduced mode.
pub struct Session {
    /// The plan as the loader left it (each hook's status), or as resolved
    /// when nothing was loaded.
    pub plan: ProbePlan,
    /// The probes as loaded, attached or not: those of which no hook
    /// attached are let go by [`Session::take_probes`], so that until then
    /// their descriptors are held as the loader left them.
    probes: Option<Probes>,
    /// The eBPF side's debug logs, when asked for and a hook attached; not
    /// started yet (a thread started after the privilege drop holds no
    /// capability).
    pub ebpf_log: Option<EbpfLog>,
    /// The reduced mode was asked for (`--reduced`): nothing was loaded.
    pub reduced: bool,
    /// Whether the loader ran to the end (then `plan` is its result).
    loaded: bool,
    /// Why the probes did not load, when they did not.
    load_error: Option<String>,
}

impl Session {
    /// Resolves the plan and loads the probes unless `reduced`; a load
    /// error leaves a session in the reduced mode that remembers it (see
    /// [`Session::diagnose`]).
    pub fn start(opts: LoadOptions, reduced: bool) -> Result<Session, SessionError> {
        let plan = resolve_plan()?;
        if reduced {
            return Ok(Session::from_load(plan, Ok(None), true));
        }
        let loaded = loader::load_with(plan.clone(), opts).map(Some);
        Ok(Session::from_load(plan, loaded, false))
    }

    /// Resolves the plan and loads the probes; a load error is an error.
    pub fn require(opts: LoadOptions) -> Result<Session, SessionError> {
        let probes = loader::load_with(resolve_plan()?, opts).map_err(SessionError::Load)?;
        let plan = probes.plan.clone();
        Ok(Session::from_load(plan, Ok(Some(probes)), false))
    }

    /// [`Session::require`] with every pin tracked in a map of
    /// `track_capacity` folios (`check`, `leaks`), the eBPF log reader
    /// started.
    pub fn require_tracking(track_capacity: u32) -> Result<Session, SessionError> {
        let opts = LoadOptions { track_pins: true, track_capacity, ebpf_log: crate::probes::ebpflog::wanted() };
        let mut session = Session::require(opts)?;
        session.start_ebpf_log();
        Ok(session)
    }

    fn from_load(plan: ProbePlan, loaded: Result<Option<Probes>, LoadError>, reduced: bool) -> Session {
        let (mut probes, load_error) = match loaded {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
        let ebpf_log = probes.as_mut().and_then(Probes::take_ebpf_log).filter(|_| attached > 0);
        let plan = probes.as_ref().map_or(plan, |p| p.plan.clone());
        Session { plan, loaded: probes.is_some(), probes, ebpf_log, reduced, load_error }
    }

    /// Hooks attached.
    pub fn attached(&self) -> usize {
        self.probes.as_ref().map_or(0, |p| p.plan.attached())
    }

    /// The probes, when at least one hook attached; `None` is the reduced
    /// mode.
    pub fn probes(&self) -> Option<&Probes> {
        self.probes.as_ref().filter(|p| p.plan.attached() > 0)
    }

    /// [`Session::probes`]; when none attached, says so on stderr ("no GUP
    /// hook could be attached, so `consequence`") with the diagnosis.
    pub fn probes_or_explain(&self, consequence: &str) -> Option<&Probes> {
        let probes = self.probes();
        if probes.is_none() {
            eprint!(
                "gupwatch: no GUP hook could be attached, so {consequence}.\n{}",
                host::render(&self.diagnose())
            );
        }
        probes
    }

    /// [`Session::probes`], to change.
    pub fn probes_mut(&mut self) -> Option<&mut Probes> {
        self.probes.as_mut().filter(|p| p.plan.attached() > 0)
    }

    /// Takes the probes when at least one hook attached; else lets the
    /// loaded ones go (`None`: the reduced mode).
    pub fn take_probes(&mut self) -> Option<Probes> {
        self.probes.take().filter(|p| p.plan.attached() > 0)
    }

    /// Whether an attached hook lives on a module and must follow it.
    pub fn follows_modules(&self) -> bool {
        self.probes().is_some_and(Probes::follows_modules)
    }

    /// Why this kernel runs no probes: the checks of [`host::diagnose`].
    pub fn diagnose(&self) -> Vec<Finding> {
        host::diagnose(self.loaded.then_some(&self.plan), self.load_error.as_deref())
    }

    /// Why the probes did not load, when they did not.
    pub fn load_error(&self) -> Option<&str> {
        self.load_error.as_deref()
    }

    /// Starts the eBPF log reader, if there is one.
    pub fn start_ebpf_log(&mut self) {
        if let Some(l) = self.ebpf_log.as_mut() {
            l.start();
        }
    }
}

/// Drops the capabilities not needed any more on the kernel `plan`
/// describes (see privileges.rs) and says what remains; a failure leaves
/// them as they are, with a warning. The reduced mode keeps what its walk
/// of other processes' descriptors needs, and so does the full mode where
/// the programs record the objects behind pins: the leak analysis looks
/// for their holders in the same descriptor tables (`holders.rs`).
pub fn drop_privileges(plan: &ProbePlan, late_attach: bool, reduced: bool) {
    // Start-up is over (the collector has read kallsyms too): what it
    // freed goes back to the kernel.
    loader::trim_heap();
    let reads_other_processes = reduced || plan.object_lookup.enabled;
    let needs = crate::kernel::privileges::Needs { reads_other_processes, ..crate::kernel::privileges::Needs::here(late_attach, plan) };
    let r = crate::kernel::privileges::drop_privileges(&needs);
    let fds = crate::kernel::privileges::fd_summary();
    // `run` logs through tracing; the other modes have no subscriber, and
    // stderr keeps their stdout clean.
    match r {
        Ok(r) if tracing::dispatcher::has_been_set() => tracing::info!(target: LOG_TARGET, open_fds = %fds, "{r}"),
        Ok(r) => eprintln!("gupwatch: {r}; open fds: {fds}"),
        Err(e) if tracing::dispatcher::has_been_set() => {
            tracing::warn!(target: LOG_TARGET, error = %e, "could not drop capabilities; running with those it has")
        }
        Err(e) => eprintln!("gupwatch: could not drop capabilities ({e}); running with those it has"),
    }
}

/// One warning per hook the kernel has but refused: its calls go uncounted,
/// and the reason names the fix (and the saved verifier log, if any).
pub fn warn_failed_hooks(plan: &ProbePlan) {
    for h in plan.failed() {
        if let HookStatus::Failed(why) = &h.status {
            tracing::warn!(target: LOG_TARGET, function = h.function, reason = %why, fix = failed_hook_fix(why).trim(), "hook not attached: its calls go uncounted");
        }
    }
}

/// [`warn_failed_hooks`] for the commands that write to a terminal.
pub fn print_failed_hooks(plan: &ProbePlan) {
    for h in plan.failed() {
        if let HookStatus::Failed(why) = &h.status {
            eprintln!("gupwatch: {} is not hooked, so its calls go uncounted: {why}.{}", h.function, failed_hook_fix(why));
        }
    }
}

/// What to do about a refused hook, from the reason's wording.
fn failed_hook_fix(why: &str) -> &'static str {
    if why.contains("verifier refused") {
        " The verifier refusing gupwatch's own program is a gupwatch bug on this kernel: please report it with the saved verifier log."
    } else {
        " `gupwatch doctor` says what this kernel allows."
    }
}

/// The diagnosis as one string per line, for the live view's screen.
pub fn diagnosis_lines(findings: &[Finding]) -> Vec<String> {
    host::render(findings).lines().map(String::from).collect()
}

/// A flag set by SIGINT or SIGTERM, for the commands that stop on them.
pub fn stop_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, std::io::Error> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
    }
    Ok(stop)
}
