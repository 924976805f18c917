//! `gupwatch run`: the daemon. Metrics over HTTP until SIGINT/SIGTERM,
//! then exit 0 with the probes detached (dropping them detaches). Logs
//! through `tracing`; SIGHUP re-reads the configuration file; hooks on
//! modules follow their module from a thread of their own.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    collect,
    config::{ConfigError, RunOptions, RunSettings},
    export::http,
    model::leaks::LeakPolicy,
    probes::loader::{self, LoadOptions},
    logging::{self, LogError, LogHandle},
    session::{self, Session, SessionError, LOG_TARGET},
    export::webconfig::{WebConfigError, WebConfigWatcher},
};

/// Why the daemon could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The listening socket, explained ([`http::explain_bind_error`]).
    #[error("{0}")]
    Bind(String),
    #[error("cannot install the SIGHUP handler")]
    Sighup(#[source] std::io::Error),
    #[error("cannot install signal handler")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    LocalAddr(std::io::Error),
    #[error("metrics server")]
    Serve(#[source] http::ServeError),
}

/// How the daemon was asked to run: the command line's flags and where its
/// configuration file is.
pub struct RunRequest<'a> {
    pub flags: RunOptions,
    pub config: Option<&'a Path>,
    pub reduced: bool,
    /// Keep BPF run statistics on while the daemon runs ([`crate::probes::bpfstats`]).
    pub bpf_stats: bool,
}

/// Runs the daemon until SIGINT or SIGTERM.
// `..Default` keeps these literals valid if the structs gain fields.
#[allow(clippy::needless_update)]
pub fn run(req: RunRequest<'_>) -> Result<(), DaemonError> {
    let config_path = RunOptions::locate(req.config);
    let file = match &config_path {
        Some(p) => RunOptions::load(p)?,
        None => RunOptions::default(),
    };
    let settings = RunOptions::resolve(&req.flags, &file);
    let log = logging::init_logging(settings.log_format, &settings.log_level)?;
    let inherited = crate::kernel::privileges::close_inherited_fds();
    if !inherited.is_empty() {
        tracing::info!(target: LOG_TARGET, fds = ?inherited, "closed descriptors inherited from the parent");
    }
    // Before anything slow: SIGHUP's default action would end the daemon.
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload)).map_err(DaemonError::Sighup)?;
    tracing::info!(
        target: LOG_TARGET,
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        settings = %settings.describe(),
        "starting"
    );
    // Bind first: a busy port should fail before anything is loaded.
    let server = bind(&settings)?;
    let opts = LoadOptions {
        track_pins: true,
        track_capacity: settings.track_capacity,
        ebpf_log: crate::probes::ebpflog::wanted(),
    };
    let mut session = Session::start(opts, req.reduced)?;
    report_start(&session);
    let attached = session.attached();
    let mut ebpf_log = session.ebpf_log.take();
    let mut collector = collect::Collector::new(
        session.take_probes(),
        &session.plan,
        collect::Settings { top_processes: settings.top_processes, vmstat_refresh: settings.vmstat_refresh },
    );
    collector.set_leak_policy(LeakPolicy { long_held: settings.long_held, weak_pin: settings.weak_pin, ..LeakPolicy::default() });
    crate::memstat::note("collector ready (kallsyms read)");
    // Module hooks are followed for as long as gupwatch runs: a module can
    // be unloaded and loaded again at any time, and each load needs fresh
    // kprobes.
    let late_attach = collector.follows_modules();
    // Before the capabilities go: BPF_ENABLE_STATS needs CAP_SYS_ADMIN.
    // Kept until run returns; a refusal leaves the daemon running with
    // gupwatch_bpf_stats_enabled at 0, which says so.
    let _bpf_stats = req.bpf_stats.then(enable_bpf_stats).flatten();
    let app = Arc::new(http::App::new(collector));
    // Loaded, attached, kallsyms read: shed every capability before any
    // thread starts (capabilities are per thread, and threads inherit
    // them). While a hook lives on a module (i915), CAP_BPF and
    // CAP_PERFMON stay for the module thread alone: it starts with them,
    // then this thread drops them too, so the HTTP workers and the reload
    // thread start with none. The reduced mode keeps the one its walk of
    // other processes' descriptors needs.
    session::drop_privileges(&session.plan, late_attach, attached == 0);
    // Installed only now: until here the default action of SIGINT/SIGTERM
    // (exit, which detaches whatever was attached) ends a slow load at once.
    let stop = session::stop_on_signals().map_err(DaemonError::Signals)?;
    let late_attacher = if late_attach {
        let t = spawn_late_attacher(Arc::clone(&app), Arc::clone(&stop))?;
        session::drop_privileges(&session.plan, false, false);
        Some(t)
    } else {
        None
    };
    if let Some(l) = ebpf_log.as_mut() {
        l.start();
        tracing::debug!(
            target: "gupwatch::ebpf",
            first = gup_common::diag_log::FIRST,
            "eBPF debug logs on: the first events of each diagnostics counter, per CPU"
        );
    }
    crate::memstat::note("start-up");
    let url = format!("{}://{}/metrics", server.scheme(), server.local_addr().map_err(DaemonError::LocalAddr)?);
    tracing::info!(target: LOG_TARGET, hooks_attached = attached, url = %url, "serving");
    let reloader = Reloader { flags: req.flags, config: config_path, settings, log };
    let reloader = reloader.spawn(Arc::clone(&app), reload, Arc::clone(&stop))?;
    let handler: Arc<dyn http::Handler> = Arc::clone(&app) as Arc<dyn http::Handler>;
    let served = server.run(handler, &stop).map_err(DaemonError::Serve);
    let _ = reloader.join();
    if let Some(t) = late_attacher {
        let _ = t.join();
    }
    // The last reference: the collector and its probes go with it.
    drop(app);
    drop(ebpf_log);
    served?;
    tracing::info!(target: LOG_TARGET, hooks_detached = attached, "stopped");
    Ok(())
}

/// The listening socket, with the web configuration (TLS, basic auth) if
/// one is set.
// `..Default` keeps this literal valid if the struct gains fields.
#[allow(clippy::needless_update)]
fn bind(settings: &RunSettings) -> Result<http::Server, DaemonError> {
    let web = match settings.web_config.as_deref() {
        Some(p) => {
            let w = WebConfigWatcher::load(p)?;
            let c = w.config();
            tracing::info!(target: LOG_TARGET, path = %p.display(), settings = %c.describe(), "web config");
            for n in &c.notes {
                tracing::warn!(target: LOG_TARGET, path = %p.display(), "web config: {n}");
            }
            Some(Arc::new(w))
        }
        None => None,
    };
    let limits = http::ServerConfig {
        max_connections_per_peer: settings.max_connections_per_peer,
        ..http::ServerConfig::default()
    };
    let server = http::Server::bind(settings.listen.as_str(), limits)
        .map_err(|e| DaemonError::Bind(http::explain_bind_error(&settings.listen, &e)))?;
    Ok(match web {
        Some(w) => server.with_web_config(w),
        None => server,
    })
}

/// Logs how the probes started: the reduced mode and why, or the hooks
/// the kernel refused.
fn report_start(session: &Session) {
    if session.reduced {
        tracing::info!(target: LOG_TARGET, "--reduced: no probes loaded; serving /proc/vmstat counters and accounted pins (reduced mode)");
    } else if session.attached() == 0 {
        for f in session.diagnose().iter().filter(|f| !f.ok) {
            tracing::warn!(target: LOG_TARGET, check = f.check, detail = %f.detail, fix = f.fix.as_deref().unwrap_or(""), "probe check failed");
        }
        tracing::warn!(
            target: LOG_TARGET,
            kernel = %session.plan.kernel,
            "this kernel will not run gupwatch's probes: serving the kernel's /proc/vmstat counters and probe health only (reduced mode); `gupwatch doctor` explains"
        );
    }
    if session.attached() > 0 {
        session::warn_failed_hooks(&session.plan);
    }
}

/// How often `run` looks at the modules its hooks live on: a look is a
/// read of `/proc/modules`, a stat per module and the kernel's kprobe list
/// (kallsyms is read only when a waiting hook's module is live). A hook on
/// an unloaded module reads as detached at most this long after the
/// unload, and attaches at most this long after the module is back. A
/// look costs little (the files are short), so once a second: the
/// attached gauge is wrong for at most a second.
const MODULE_LOOK_EVERY: Duration = Duration::from_secs(1);

/// `run`'s module thread: detaches the hooks whose module is unloaded,
/// attaches those whose module loads (after gupwatch started, or again),
/// and logs each. It keeps the capabilities attaching needs (CAP_BPF,
/// CAP_PERFMON) for the life of the daemon, alone of all threads.
fn spawn_late_attacher(app: Arc<http::App>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name("gupwatch-late-attach".into())
        .spawn(move || {
            tracing::info!(
                target: LOG_TARGET,
                every_secs = MODULE_LOOK_EVERY.as_secs(),
                "hooks on modules (i915) follow their module: attached when it loads, detached when it unloads"
            );
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() < MODULE_LOOK_EVERY {
                    continue;
                }
                last = Instant::now();
                let mut ev = Default::default();
                app.update(|c| ev = c.follow_modules());
                log_module_events(&ev);
            }
        })
        .map_err(|e| DaemonError::Thread("late-attach", e))
}

/// Logs what one look at the modules changed.
fn log_module_events(ev: &loader::ModuleEvents) {
    for d in &ev.detached {
        tracing::warn!(
            target: LOG_TARGET,
            function = d.function,
            module = %d.module,
            reason = d.reason,
            "module hook dead: detached; attached again when the module loads"
        );
    }
    for f in &ev.attached {
        tracing::info!(
            target: LOG_TARGET,
            function = f,
            mechanism = "kprobe",
            attach_ms = ev.attach_time.as_millis() as u64,
            "module loaded after start: hook attached"
        );
    }
    for (f, why) in &ev.failed {
        tracing::warn!(target: LOG_TARGET, function = f, reason = %why, "module loaded after start: hook not attached");
    }
}

/// What SIGHUP re-reads and changes: the flags (which win over the file),
/// the file given with `--config`, the settings in force and the logger.
struct Reloader {
    flags: RunOptions,
    config: Option<PathBuf>,
    settings: RunSettings,
    log: LogHandle,
}

impl Reloader {
    /// Reloads run beside the server, which never waits for them.
    fn spawn(
        mut self,
        app: Arc<http::App>,
        reload: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, DaemonError> {
        std::thread::Builder::new()
            .name("gupwatch-reload".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if reload.swap(false, Ordering::Relaxed) {
                        self.settings = self.reload(&app);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .map_err(|e| DaemonError::Thread("reload", e))
    }

    /// Re-reads the configuration on SIGHUP and applies what can change
    /// live; returns the settings now in force. A bad file changes nothing.
    // `..c.settings()` keeps these literals valid if the structs gain
    // fields.
    #[allow(clippy::needless_update)]
    fn reload(&self, app: &http::App) -> RunSettings {
        let current = &self.settings;
        let Some(path) = RunOptions::locate(self.config.as_deref()) else {
            tracing::info!(target: LOG_TARGET, default = crate::config::DEFAULT_PATH, "SIGHUP: no configuration file; nothing to reload");
            return current.clone();
        };
        let file = match RunOptions::load(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(target: LOG_TARGET, error = %e, "SIGHUP: configuration not reloaded; the settings in force stay");
                return current.clone();
            }
        };
        let new = RunOptions::resolve(&self.flags, &file);
        let plan = current.reload_plan(&new);
        let mut next = current.reloaded(&new);
        if next.log_level != current.log_level {
            if let Err(e) = self.log.set_level(&next.log_level) {
                tracing::error!(target: LOG_TARGET, error = %format!("{e:#}"), "SIGHUP: log_level not changed");
                next.log_level = current.log_level.clone();
            }
        }
        app.update(|c| {
            c.set_settings(collect::Settings { top_processes: next.top_processes, vmstat_refresh: next.vmstat_refresh });
            c.set_leak_policy(LeakPolicy { long_held: next.long_held, weak_pin: next.weak_pin, ..c.leak_policy().clone() });
        });
        tracing::info!(target: LOG_TARGET, path = %path.display(), applied = ?plan.applied, "configuration reloaded");
        if !plan.needs_restart.is_empty() {
            tracing::warn!(target: LOG_TARGET, keys = ?plan.needs_restart, "changed in the configuration, but only a restart applies them");
        }
        next
    }
}

/// `--bpf-stats`: statistics on, or a warning saying why not.
fn enable_bpf_stats() -> Option<crate::probes::bpfstats::StatsGuard> {
    match crate::probes::bpfstats::enable() {
        Ok(g) => {
            tracing::info!(target: LOG_TARGET, "BPF run statistics on (--bpf-stats) until gupwatch exits");
            Some(g)
        }
        Err(e) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
            tracing::warn!(target: LOG_TARGET, error = %e, cause, "--bpf-stats: run statistics stay off");
            None
        }
    }
}
