//! The `gupwatch` command line.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gup_common::{Api, ApiKind};
use gupwatch::{check, config::LogFormat, host, loader, plan::ProbePlan, scenarios, vmstat};

/// Watch how this Linux host pins user memory: who calls pin_user_pages*()
/// and get_user_pages*(), how many pages, and whether the kernel agrees.
#[derive(Parser, Debug)]
#[command(name = "gupwatch", version, about, long_about = None, after_help = "\
Examples:
  sudo gupwatch                 live view on a terminal (q to quit; ? for keys)
  sudo gupwatch --plain         a summary line every second (Ctrl-C to stop)
  sudo gupwatch -i 5 -c 12      a summary every 5 s, twelve times
  gupwatch top --connect HOST:PORT   the live view of a `gupwatch run` daemon
  sudo gupwatch doctor          can gupwatch run here? what would fix it
  sudo gupwatch probes          what gets hooked on this kernel, and how
  sudo gupwatch check --json    pin through real syscalls and compare with /proc/vmstat

Environment:
  GUPWATCH_LOG=debug            log level of the commands other than `run`
                                (gupwatch=debug adds the eBPF side's first events)
  GUPWATCH_LOG_DIR=DIR          where refused programs' verifier logs are saved
                                (default: the temporary directory)
  GUPWATCH_EBPF_OBJECT=FILE     load this eBPF object instead of the built-in one
                                (to try an eBPF build without rebuilding gupwatch)
  NO_COLOR=1                    no colours in log lines")]
struct Cli {
    /// Seconds between summaries.
    #[arg(short, long, default_value = "1", value_parser = gupwatch::args::parse_interval, global = true)]
    interval: Duration,
    /// Stop after this many summaries.
    #[arg(short, long, global = true)]
    count: Option<u64>,
    /// Print summary lines even on a terminal (they are the default when
    /// stdout is not a terminal, or with --count).
    #[arg(long)]
    plain: bool,
    /// Load no probes: the reduced mode (the kernel's FOLL_PIN counters
    /// and the pinned memory it accounts per process), as on a kernel that
    /// refuses tracing programs.
    #[arg(long)]
    reduced: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The live view: processes or call sites, rates, fast-path hit rate,
    /// latency and leaks. Of this host's probes, or with --connect of a
    /// `gupwatch run` daemon (its /api/snapshot).
    Top {
        /// A daemon's HOST:PORT (e.g. 127.0.0.1:10483).
        #[arg(long, value_name = "HOST:PORT")]
        connect: Option<String>,
        /// Load no probes: the reduced mode's screen (kernel counters and
        /// accounted pins per process).
        #[arg(long, conflicts_with = "connect")]
        reduced: bool,
    },
    /// Check whether gupwatch can run here and say what would fix it:
    /// privileges, BTF, lockdown, BPF JIT, kprobes and fentry (tried, not
    /// guessed), GUP functions, i915, /proc/vmstat. Exit status 0 full,
    /// 1 partial or reduced, 2 cannot run.
    Doctor {
        /// Print one JSON object (schema documented in doctor.rs).
        #[arg(long)]
        json: bool,
    },
    /// Generate shell completions or man pages (for packagers).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// Pin pages through ordinary syscalls and check gupwatch's counts
    /// against the kernel's /proc/vmstat (exit status 1 if any differs).
    Check {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory on a filesystem that supports O_DIRECT (ext4, xfs...).
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
        /// Capacity of the pin tracking map, in folios (make it small to
        /// see the partial-view accounting).
        #[arg(long, default_value_t = gup_common::TRACK_CAPACITY)]
        track_capacity: u32,
        /// Run only the scenarios whose names start with one of these
        /// prefixes (comma-separated), e.g. `churn,inflight_`.
        #[arg(long, value_delimiter = ',', value_name = "PREFIX")]
        only: Vec<String>,
        /// Leave out the scenarios whose names start with one of these
        /// prefixes (comma-separated; after --only).
        #[arg(long, value_delimiter = ',', value_name = "PREFIX")]
        skip: Vec<String>,
        /// Short-lived processes each `churn_` scenario forks (32 alive at
        /// a time).
        #[arg(long, default_value_t = scenarios::churn::DEFAULT_PROCS, value_name = "N")]
        churn_procs: u32,
    },
    /// Print the probe plan: each GUP function, how it is hooked on this
    /// kernel, and whether it attached.
    Probes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Resolve the plan without loading anything (no root needed).
        #[arg(long)]
        dry_run: bool,
    },
    /// Report outstanding pins and leak signals: who holds pins, since
    /// when, from which call path, and which look leaked. Pins are tracked
    /// from the moment gupwatch starts, so it watches for a while first.
    Leaks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds to watch before reporting (Ctrl-C reports early).
        #[arg(long, default_value = "10")]
        duration: u64,
        /// Pins held longer than this many seconds are long-held.
        #[arg(long, default_value = "300")]
        long_held: u64,
        /// Capacity of the tracking map, in folios.
        #[arg(long, default_value_t = gup_common::TRACK_CAPACITY)]
        track_capacity: u32,
    },
    /// Serve Prometheus metrics on /metrics (plus a status page, /healthz
    /// and /api/snapshot) until Ctrl-C or SIGTERM. Without probes, serves
    /// the kernel's /proc/vmstat counters and probe health only.
    ///
    /// Every flag can also be set in a TOML configuration file (--config,
    /// default /etc/gupwatch/gupwatch.toml if present) under the flag's
    /// name with underscores; flags win. SIGHUP re-reads the file and
    /// applies top_processes, long_held and log_level at once (listen,
    /// track_capacity and log_format need a restart).
    Run {
        /// Address to listen on [default: 127.0.0.1:10483].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Process names with their own gupwatch_process_pages_total series
        /// (the rest are summed into comm="other") [default: 10].
        #[arg(long, value_name = "N")]
        top_processes: Option<usize>,
        /// Pins held longer than this many seconds are long-held in
        /// /api/snapshot?leaks=1 [default: 300].
        #[arg(long, value_name = "SECS")]
        long_held: Option<u64>,
        /// Capacity of the pin tracking map, in folios [default: 65536].
        #[arg(long, value_name = "FOLIOS")]
        track_capacity: Option<u32>,
        /// Log line format [default: text].
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Log filter: a level (error, warn, info, debug, trace) or tracing
        /// directives such as gupwatch=debug,warn [default: info].
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
        /// Configuration file (TOML).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// TLS and basic auth for the endpoint, in the YAML format of
        /// Prometheus' exporter-toolkit (tls_server_config,
        /// basic_auth_users); re-read when it or its files change.
        #[arg(long, value_name = "FILE")]
        web_config: Option<PathBuf>,
        /// Connections one client address (IPv6: one /64) may have open at
        /// once; more are closed at once, so one client cannot take the
        /// whole descriptor budget [default: 256].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_connections_per_peer: Option<u64>,
        /// Load no probes: serve the reduced mode (vmstat counters and the
        /// gupwatch_accounted_* families) as on a kernel that refuses
        /// tracing programs.
        #[arg(long)]
        reduced: bool,
    },
    /// The in-guest part of `cargo xtask stress`: attach/detach cycles
    /// under a pin storm, SIGKILL rounds, an overflowing tracking map.
    #[command(hide = true)]
    Stress {
        /// storm: attach/detach cycles under a pin storm (the rest of the
        /// flags); churn: the churn_ scenarios, one exact interval per
        /// cycle (uses --cycles, --churn-procs and --scratch only).
        #[arg(long, value_enum, default_value_t)]
        mode: gupwatch::stress::StressMode,
        /// Short-lived processes per churn cycle.
        #[arg(long, default_value = "500")]
        churn_procs: u32,
        /// Attach/detach cycles (storm) or churn cycles.
        #[arg(long, default_value = "200")]
        cycles: u32,
        /// Pin storm processes.
        #[arg(long, default_value = "2")]
        storm_procs: u32,
        /// Milliseconds the storm runs per attached interval.
        #[arg(long, default_value = "40")]
        window_ms: u64,
        /// gupwatch processes to start and SIGKILL.
        #[arg(long, default_value = "3")]
        kill_rounds: u32,
        /// Tracking map capacity (small, so the storm overflows it).
        #[arg(long, default_value = "128")]
        track_capacity: u32,
        /// Directory on ext4 for the storm's direct I/O.
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
    },
    /// Repeat one pinning operation and print operations per second (for
    /// `cargo xtask bench`).
    #[command(hide = true)]
    BenchWorkload {
        /// The operation.
        #[arg(long, value_enum)]
        kind: gupwatch::bench::BenchKind,
        /// How long to run.
        #[arg(long, default_value = "5", value_parser = gupwatch::args::parse_run_seconds)]
        seconds: f64,
        /// Directory on a filesystem that supports O_DIRECT.
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
        /// For `odirect`: read this block device (its first 1 MiB is
        /// overwritten) instead of a file in --scratch.
        #[arg(long)]
        device: Option<PathBuf>,
    },
    /// Print every loaded BPF program's run count and run time as one JSON
    /// line (for `cargo xtask bench`; needs `kernel.bpf_stats_enabled`).
    #[command(hide = true, name = "bench-bpfstats")]
    BenchBpfStats,
    /// Generate a pinning workload (for demos and benchmarks).
    Workload {
        /// How long to run.
        #[arg(long, default_value = "30")]
        seconds: u64,
        /// Instead of a loop, register one 1 MiB io_uring buffer and hold
        /// it for this many seconds (to see it in `gupwatch leaks`).
        #[arg(long)]
        hold: Option<u64>,
        /// Directory on a filesystem that supports O_DIRECT.
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before anything allocates much (memstat.rs says why).
    gupwatch::memstat::tune_allocator();
    // First, so that any panic is one line naming the command and kernel,
    // then exit status 70 (crash.rs).
    gupwatch::crash::install();
    let matches = Cli::command().get_matches();
    gupwatch::crash::set_command(matches.subcommand_name());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Caught here rather than exiting in the hook: unwinding runs the
    // destructors that detach probes and restore the terminal.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gupwatch::crash::test_trigger();
        run(cli)
    }));
    // Errors are printed with their causes on one screen, never as a
    // backtrace, whatever RUST_BACKTRACE says.
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("gupwatch: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
        // The hook has printed the report.
        Err(_) => ExitCode::from(gupwatch::crash::EX_SOFTWARE),
    }
}

/// The error and its causes on one line, each once: a message that already
/// quotes its cause (as thiserror messages with `{source}` do) is not
/// followed by it again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &c;
    }
    out
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install signal handler")?;
    }
    Ok(stop)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => watch(cli.interval, cli.count, cli.plain, cli.reduced),
        Some(Command::Probes { json, dry_run }) => probes(json, dry_run),
        Some(Command::Check { json, scratch, track_capacity, only, skip, churn_procs }) => {
            run_check(json, &scratch, track_capacity, &check::CheckOptions { only, skip, churn_procs })
        }
        Some(Command::Leaks { json, duration, long_held, track_capacity }) => {
            leaks(json, Duration::from_secs(duration), Duration::from_secs(long_held), track_capacity)
        }
        Some(Command::Run {
            listen,
            top_processes,
            long_held,
            track_capacity,
            log_format,
            log_level,
            config,
            web_config,
            max_connections_per_peer,
            reduced,
        }) => {
            let flags = gupwatch::config::RunOptions {
                listen,
                top_processes,
                long_held,
                track_capacity,
                log_format,
                log_level,
                web_config,
                max_connections_per_peer: max_connections_per_peer.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            };
            serve(flags, config.as_deref(), reduced)
        }
        Some(Command::Top { connect, reduced }) => top(cli.interval, connect, reduced || cli.reduced),
        Some(Command::Doctor { json }) => doctor(json),
        Some(Command::Generate { what }) => generate(what),
        Some(Command::Stress { mode, churn_procs, cycles, storm_procs, window_ms, kill_rounds, track_capacity, scratch }) => {
            let r = gupwatch::stress::run(&gupwatch::stress::StressOptions {
                mode,
                churn_procs,
                cycles,
                storm_procs,
                window: Duration::from_millis(window_ms),
                kill_rounds,
                track_capacity,
                scratch,
            });
            println!("{}", serde_json::to_string(&r)?);
            Ok(if r.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some(Command::BenchWorkload { kind, seconds, scratch, device }) => {
            let stop = stop_flag()?;
            let r = gupwatch::bench::run(
                kind,
                &scratch,
                device.as_deref(),
                Duration::from_secs_f64(seconds.max(0.1)),
                &stop,
            )
            .context("benchmark workload failed")?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::BenchBpfStats) => {
            println!("{}", serde_json::to_string(&gupwatch::bench::prog_stats()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Workload { hold: Some(secs), scratch, .. }) => {
            let stop = stop_flag()?;
            let mut held = scenarios::builtin(&scratch)
                .into_iter()
                .find(|s| s.name() == "io_uring_buffers_held")
                .context("the io_uring_buffers_held scenario is missing")?;
            held.prepare().context("preparing the io_uring buffer")?;
            held.run().context("registering the io_uring buffer")?;
            eprintln!("workload: holding a registered 1 MiB io_uring buffer for {secs} s (pid {})", std::process::id());
            host::sleep_unless_stopped(Duration::from_secs(secs), &stop);
            held.cleanup().context("unregistering the io_uring buffer")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Workload { seconds, scratch, hold: None }) => {
            let stop = stop_flag()?;
            let stats = scenarios::run_workload(&scratch, Duration::from_secs(seconds), &stop)
                .context("workload failed")?;
            eprintln!("workload done: {stats}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn leaks(json: bool, duration: Duration, long_held: Duration, track_capacity: u32) -> Result<ExitCode> {
    init_env_logging()?;
    let stop = stop_flag()?;
    let opts = loader::LoadOptions { track_pins: true, track_capacity, ebpf_log: gupwatch::ebpflog::wanted() };
    let mut probes = loader::load_with(resolve_plan()?, opts).context("cannot load gupwatch's probes")?;
    let mut ebpf_log = probes.take_ebpf_log();
    if let Some(l) = ebpf_log.as_mut() {
        l.start();
    }
    if probes.plan.attached() == 0 {
        eprint!(
            "gupwatch: no GUP hook could be attached, so no pin can be tracked.\n{}",
            host::render(&host::diagnose(Some(&probes.plan), None))
        );
        return Ok(ExitCode::from(2));
    }
    eprintln!(
        "gupwatch: tracking pins for {} s (pins taken before now are not tracked; Ctrl-C reports early)...",
        duration.as_secs()
    );
    host::sleep_unless_stopped(duration, &stop);
    let kallsyms = gupwatch::kallsyms::Kallsyms::from_proc().unwrap_or_default();
    let caller = |id: i64| {
        let ips = if id >= 0 { probes.maps.stack(id).unwrap_or_default() } else { vec![] };
        gupwatch::attribution::caller_of(&ips, &kallsyms)
    };
    let snap = probes.maps.snapshot()?;
    let tracking = probes.maps.tracking();
    let mut report = gupwatch::leaks::analyze(
        &tracking,
        &gupwatch::leaks::Context {
            now_ns: gupwatch::leaks::monotonic_ns(),
            since_ns: 0,
            caller: &caller,
            site: &|ip| gupwatch::attribution::caller_of(&[ip], &kallsyms),
            alive: &gupwatch::leaks::process_alive,
            kernel_outstanding: vmstat::read(true).ok().map(|v| v.outstanding()),
            untracked_pins: snap.diag[gup_common::Diag::PinsUntracked as usize],
        },
        &gupwatch::leaks::LeakPolicy { long_held, ..Default::default() },
        None,
    );
    report.i915_objects = gupwatch::i915::rows(&probes.maps.i915_objects(), &tracking.exited)
        .into_iter()
        .filter(|o| o.pinned_pages > 0)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// One warning per hook the kernel has but refused: its calls go uncounted,
/// and the reason names the fix (and the saved verifier log, if any).
fn warn_failed_hooks(plan: Option<&gupwatch::plan::ProbePlan>) {
    for h in plan.into_iter().flat_map(|p| p.failed()) {
        if let gupwatch::plan::HookStatus::Failed(why) = &h.status {
            tracing::warn!(function = h.function, reason = %why, fix = failed_hook_fix(why).trim(), "hook not attached: its calls go uncounted");
        }
    }
}

/// [`warn_failed_hooks`] for the commands that write to a terminal.
fn print_failed_hooks(plan: &gupwatch::plan::ProbePlan) {
    for h in plan.failed() {
        if let gupwatch::plan::HookStatus::Failed(why) = &h.status {
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

/// `gupwatch run`: metrics over HTTP until SIGINT/SIGTERM, then exit 0
/// with the probes detached (dropping them detaches). Logs through
/// `tracing`; SIGHUP re-reads the configuration file.
// `..Default`/`..c.settings()` keep these literals valid if the structs
// gain fields.
#[allow(clippy::needless_update)]
fn serve(
    flags: gupwatch::config::RunOptions,
    config: Option<&std::path::Path>,
    reduced: bool,
) -> Result<ExitCode> {
    use gupwatch::{collect, config::RunOptions, http, leaks::LeakPolicy};
    let config_path = RunOptions::locate(config);
    let file = match &config_path {
        Some(p) => RunOptions::load(p)?,
        None => RunOptions::default(),
    };
    let mut settings = RunOptions::resolve(&flags, &file);
    let log = init_logging(settings.log_format, &settings.log_level)?;
    let inherited = gupwatch::privileges::close_inherited_fds();
    if !inherited.is_empty() {
        tracing::info!(fds = ?inherited, "closed descriptors inherited from the parent");
    }
    // Before anything slow: SIGHUP's default action would end the daemon.
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("cannot install the SIGHUP handler")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        settings = %settings.describe(),
        "starting"
    );
    let web = match settings.web_config.as_deref() {
        Some(p) => {
            let w = gupwatch::webconfig::WebConfigWatcher::load(p)?;
            let c = w.config();
            tracing::info!(path = %p.display(), settings = %c.describe(), "web config");
            for n in &c.notes {
                tracing::warn!(path = %p.display(), "web config: {n}");
            }
            Some(Arc::new(w))
        }
        None => None,
    };
    // Bind first: a busy port should fail before anything is loaded.
    let limits = http::ServerConfig {
        max_connections_per_peer: settings.max_connections_per_peer,
        ..http::ServerConfig::default()
    };
    let server = http::Server::bind(settings.listen.as_str(), limits)
        .map_err(|e| anyhow::anyhow!(http::explain_bind_error(&settings.listen, &e)))?;
    let server = match web {
        Some(w) => server.with_web_config(w),
        None => server,
    };
    let plan = resolve_plan()?;
    let opts = loader::LoadOptions {
        track_pins: true,
        track_capacity: settings.track_capacity,
        ebpf_log: gupwatch::ebpflog::wanted(),
    };
    let (mut probes, load_err) = match load_unless_reduced(&plan, opts, reduced) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
    // Started once this thread has no capabilities left (below).
    let mut ebpf_log = probes.as_mut().and_then(loader::Probes::take_ebpf_log).filter(|_| attached > 0);
    if reduced {
        tracing::info!("--reduced: no probes loaded; serving /proc/vmstat counters and accounted pins (reduced mode)");
    } else if attached == 0 {
        for f in host::diagnose(probes.as_ref().map(|p| &p.plan), load_err.as_deref()).iter().filter(|f| !f.ok) {
            tracing::warn!(check = f.check, detail = %f.detail, fix = f.fix.as_deref().unwrap_or(""), "probe check failed");
        }
        tracing::warn!(
            kernel = %plan.kernel,
            "this kernel will not run gupwatch's probes: serving the kernel's /proc/vmstat counters and probe health only (reduced mode); `gupwatch doctor` explains"
        );
    }
    if attached > 0 {
        warn_failed_hooks(probes.as_ref().map(|p| &p.plan));
    }
    let plan = probes.as_ref().map_or(plan, |p| p.plan.clone());
    let probes = probes.filter(|_| attached > 0);
    let mut collector = collect::Collector::new(
        probes,
        &plan,
        collect::Settings { top_processes: settings.top_processes, ..collect::Settings::default() },
    );
    collector.set_leak_policy(LeakPolicy { long_held: settings.long_held, ..LeakPolicy::default() });
    gupwatch::memstat::note("collector ready (kallsyms read)");
    // Module hooks are followed for as long as gupwatch runs: a module can
    // be unloaded and loaded again at any time, and each load needs fresh
    // kprobes.
    let late_attach = collector.follows_modules();
    let app = Arc::new(http::App::new(collector));
    // Loaded, attached, kallsyms read: shed every capability before any
    // thread starts (capabilities are per thread, and threads inherit
    // them). While a hook lives on a module (i915), CAP_BPF and
    // CAP_PERFMON stay for the module thread alone: it starts with them,
    // then this thread drops them too, so the HTTP workers and the reload
    // thread start with none. The reduced mode keeps the one its walk of
    // other processes' descriptors needs.
    drop_privileges_for(late_attach, attached == 0);
    // Installed only now: until here the default action of SIGINT/SIGTERM
    // (exit, which detaches whatever was attached) ends a slow load at once.
    let stop = stop_flag()?;
    let late_attacher = if late_attach {
        let t = spawn_late_attacher(Arc::clone(&app), Arc::clone(&stop))?;
        drop_privileges(false);
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
    gupwatch::memstat::note("start-up");
    tracing::info!(hooks_attached = attached, url = %format!("{}://{}/metrics", server.scheme(), server.local_addr()?), "serving");
    // Reloads run beside the server, which never waits for them.
    let reloader = {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("gupwatch-reload".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if reload.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        settings = reload_config(&flags, config_path.as_deref(), &settings, &app, &log);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .context("cannot start the reload thread")?
    };
    let handler: Arc<dyn http::Handler> = Arc::clone(&app) as Arc<dyn http::Handler>;
    let served = server.run(handler, &stop).context("metrics server");
    let _ = reloader.join();
    if let Some(t) = late_attacher {
        let _ = t.join();
    }
    // The last reference: the collector and its probes go with it.
    drop(app);
    drop(ebpf_log);
    served?;
    tracing::info!(hooks_detached = attached, "stopped");
    Ok(ExitCode::SUCCESS)
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
fn spawn_late_attacher(app: Arc<gupwatch::http::App>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .name("gupwatch-late-attach".into())
        .spawn(move || {
            tracing::info!(
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
        .context("cannot start the late-attach thread")
}

/// Logs what one look at the modules changed.
fn log_module_events(ev: &loader::ModuleEvents) {
    for d in &ev.detached {
        tracing::warn!(
            function = d.function,
            module = %d.module,
            reason = d.reason,
            "module hook dead: detached; attached again when the module loads"
        );
    }
    for f in &ev.attached {
        tracing::info!(
            function = f,
            mechanism = "kprobe",
            attach_ms = ev.attach_time.as_millis() as u64,
            "module loaded after start: hook attached"
        );
    }
    for (f, why) in &ev.failed {
        tracing::warn!(function = f, reason = %why, "module loaded after start: hook not attached");
    }
}

/// Re-reads the configuration on SIGHUP and applies what can change live;
/// returns the settings now in force. A bad file changes nothing.
// `..Default`/`..c.settings()` keep these literals valid if the structs
// gain fields.
#[allow(clippy::needless_update)]
fn reload_config(
    flags: &gupwatch::config::RunOptions,
    explicit: Option<&std::path::Path>,
    current: &gupwatch::config::RunSettings,
    app: &gupwatch::http::App,
    log: &LogHandle,
) -> gupwatch::config::RunSettings {
    use gupwatch::{collect, config::RunOptions, leaks::LeakPolicy};
    let Some(path) = RunOptions::locate(explicit) else {
        tracing::info!(default = gupwatch::config::DEFAULT_PATH, "SIGHUP: no configuration file; nothing to reload");
        return current.clone();
    };
    let file = match RunOptions::load(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the settings in force stay");
            return current.clone();
        }
    };
    let new = RunOptions::resolve(flags, &file);
    let plan = current.reload_plan(&new);
    let mut next = current.reloaded(&new);
    if next.log_level != current.log_level {
        if let Err(e) = log.set_level(&next.log_level) {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: log_level not changed");
            next.log_level = current.log_level.clone();
        }
    }
    app.update(|c| {
        c.set_settings(collect::Settings { top_processes: next.top_processes, ..c.settings() });
        c.set_leak_policy(LeakPolicy { long_held: next.long_held, ..c.leak_policy().clone() });
    });
    tracing::info!(path = %path.display(), applied = ?plan.applied, "configuration reloaded");
    if !plan.needs_restart.is_empty() {
        tracing::warn!(keys = ?plan.needs_restart, "changed in the configuration, but only a restart applies them");
    }
    next
}

/// Changes the running logger's filter (SIGHUP).
struct LogHandle(tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>);

impl LogHandle {
    fn set_level(&self, level: &str) -> Result<()> {
        let filter = gupwatch::args::log_filter(level).map_err(|e| anyhow::anyhow!("bad log filter {level:?}: {e}"))?;
        self.0.reload(filter).context("cannot change the log filter")
    }
}

/// The modes other than `run` log through `tracing` only when
/// `GUPWATCH_LOG` holds a filter (as `--log-level`: `debug`,
/// `gupwatch::ebpf=debug`): text lines on stderr. Its use is the eBPF
/// side's debug logs in `gupwatch check`, `leaks` and the summary mode.
fn init_env_logging() -> Result<()> {
    let Some(level) = std::env::var_os("GUPWATCH_LOG") else { return Ok(()) };
    let level = level.to_string_lossy();
    let filter =
        gupwatch::args::log_filter(&level).map_err(|e| anyhow::anyhow!("bad GUPWATCH_LOG {level:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Installs the `tracing` subscriber for `gupwatch run`: text or JSON lines
/// on stderr (journald takes stderr under systemd and stamps each line, so
/// text lines carry no time of their own there).
fn init_logging(format: LogFormat, level: &str) -> Result<LogHandle> {
    use tracing_subscriber::{fmt, layer::SubscriberExt, reload, util::SubscriberInitExt};
    let filter = gupwatch::args::log_filter(level).map_err(|e| anyhow::anyhow!("bad --log-level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(false).with_span_list(false).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Text if journald => {
            registry.with(fmt::layer().without_time().with_ansi(false).with_writer(std::io::stderr)).try_init()
        }
        LogFormat::Text => registry.with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init(),
    };
    installed.context("cannot install the logger")?;
    Ok(LogHandle(handle))
}

fn resolve_plan() -> Result<ProbePlan> {
    let plan = ProbePlan::for_running_kernel().context("cannot resolve the probe plan");
    gupwatch::memstat::note("plan resolved");
    // The BTF and kallsyms it read are gone: give their pages back before
    // aya parses the BTF again, so the two parses' peaks do not stack.
    loader::trim_heap();
    plan
}

fn probes(json: bool, dry_run: bool) -> Result<ExitCode> {
    let plan = resolve_plan()?;
    let plan = if dry_run {
        plan
    } else {
        match loader::load(plan.clone()) {
            Ok(p) => p.plan,
            Err(e) => {
                eprintln!("gupwatch: could not load the probes: {e}\n(showing the plan unattached)");
                plan
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_check(json: bool, scratch: &std::path::Path, track_capacity: u32, select: &check::CheckOptions) -> Result<ExitCode> {
    init_env_logging()?;
    let mut selection = check::Selection::new(scratch, select)?;
    // Pins some scenarios must hold before the probes exist.
    selection.before_attach();
    let opts = loader::LoadOptions { track_pins: true, track_capacity, ebpf_log: gupwatch::ebpflog::wanted() };
    let mut probes = loader::load_with(resolve_plan()?, opts).context("cannot load gupwatch's probes")?;
    let mut ebpf_log = probes.take_ebpf_log();
    if let Some(l) = ebpf_log.as_mut() {
        l.start();
    }
    if probes.plan.attached() == 0 {
        eprint!(
            "gupwatch: no GUP hook could be attached, so there is nothing to check.\n{}",
            host::render(&host::diagnose(Some(&probes.plan), None))
        );
        return Ok(ExitCode::from(2));
    }
    print_failed_hooks(&probes.plan);
    let report = check::run(&probes, selection)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The default mode: the live view on a terminal; else a periodic
/// summary, or the reduced mode with a diagnosis when this kernel will
/// not run the probes.
fn watch(interval: Duration, count: Option<u64>, plain: bool, reduced: bool) -> Result<ExitCode> {
    if !plain && count.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return top(interval, None, reduced);
    }
    init_env_logging()?;
    gupwatch::privileges::close_inherited_fds();
    let stop = stop_flag()?;
    let plan = resolve_plan()?;
    let opts = loader::LoadOptions { ebpf_log: gupwatch::ebpflog::wanted(), ..loader::LoadOptions::default() };
    let (mut probes, load_err) = match load_unless_reduced(&plan, opts, reduced) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
    let mut ebpf_log = probes.as_mut().and_then(loader::Probes::take_ebpf_log).filter(|_| attached > 0);
    let late_attach = attached > 0 && probes.as_ref().is_some_and(loader::Probes::follows_modules);
    drop_privileges_for(late_attach, attached == 0);
    // A thread: started after the drop, so it holds no capability.
    if let Some(l) = ebpf_log.as_mut() {
        l.start();
    }
    let mut out = std::io::stdout().lock();
    if attached == 0 {
        if reduced {
            eprintln!("gupwatch: --reduced: no probes loaded on {}; reduced mode. Ctrl-C to stop.\n", plan.kernel);
        } else {
            let findings = host::diagnose(probes.as_ref().map(|p| &p.plan), load_err.as_deref());
            eprintln!(
                "gupwatch: this kernel ({}) will not run gupwatch's probes:\n{}\nContinuing in reduced mode. Ctrl-C to stop.\n",
                plan.kernel,
                host::render(&findings)
            );
        }
        drop(probes);
        host::run_reduced(interval, count, &stop, &mut out, std::path::Path::new("/proc")).context("reduced mode")?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(mut probes) = probes else { unreachable!("attached > 0 implies probes") };
    let by_mech = |m| probes.plan.hooks.iter().filter(|h| h.status == gupwatch::plan::HookStatus::Attached && h.mechanism == Some(m)).count();
    writeln!(
        out,
        "gupwatch on {}: {} hooks attached ({} fentry/fexit, {} kprobe). Ctrl-C to stop.",
        probes.plan.kernel,
        attached,
        by_mech(gupwatch::plan::Mechanism::Fentry),
        by_mech(gupwatch::plan::Mechanism::Kprobe)
    )?;
    print_failed_hooks(&probes.plan);
    let first = probes.maps.snapshot()?;
    let vm_first = vmstat::read(true).ok();
    let mut prev = first.clone();
    let mut vm_prev = vm_first;
    let t0 = Instant::now();
    let mut printed = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && count.is_none_or(|c| printed < c) {
        host::sleep_unless_stopped(interval, &stop);
        // Module hooks (i915) attach when their module loads and detach
        // when it unloads; every interval, so either shows within one.
        if late_attach {
            let ev = probes.follow_modules();
            for d in &ev.detached {
                writeln!(out, "gupwatch: {} detached ({} {}); attached again when it loads", d.function, d.module, d.reason)?;
            }
            for f in &ev.attached {
                writeln!(out, "gupwatch: {f} appeared (module loaded); attached")?;
            }
            for (f, why) in &ev.failed {
                writeln!(out, "gupwatch: {f} not attached: {why}")?;
            }
        }
        let now = probes.maps.snapshot()?;
        let vm_now = vmstat::read(true).ok();
        let d = now.since(&prev);
        let t = d.totals();
        let mut top: Vec<(Api, u64)> = Api::ALL
            .iter()
            .filter(|a| matches!(a.kind(), ApiKind::Pin | ApiKind::Get))
            .map(|&a| (a, d.api(a).pages))
            .filter(|(_, p)| *p > 0)
            .collect();
        top.sort_by_key(|e| std::cmp::Reverse(e.1));
        let top: Vec<String> = top.iter().take(3).map(|(a, p)| format!("{} {}", a.symbol(), p)).collect();
        let kernel = match (vm_now, vm_prev) {
            (Some(n), Some(p)) => match n.delta_since(&p) {
                Ok(k) => format!("kernel +{} / -{}", k.acquired, k.released),
                Err(_) => "kernel n/a".into(),
            },
            _ => "kernel n/a".into(),
        };
        writeln!(
            out,
            "[{:>5.0}s] pinned +{:<6} unpinned +{:<6} refs +{:<6} calls {:<5} errors {:<3} | {} | outstanding since start {:>6} | {}",
            t0.elapsed().as_secs_f64(),
            t.pinned_pages,
            t.unpinned_pages,
            t.referenced_pages,
            t.pin_calls + t.get_calls,
            t.failed_calls,
            kernel,
            now.since(&first).totals().pinned_pages as i64 - now.since(&first).totals().unpinned_pages as i64,
            if top.is_empty() { "-".to_string() } else { top.join(", ") }
        )?;
        out.flush()?;
        prev = now;
        vm_prev = vm_now;
        printed += 1;
    }
    let total = probes.maps.snapshot()?.since(&first).totals();
    writeln!(
        out,
        "total: {} pages pinned in {} calls, {} unpinned, {} FOLL_GET references; detaching.",
        total.pinned_pages, total.pin_calls, total.unpinned_pages, total.referenced_pages
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `gupwatch top` (and `gupwatch` on a terminal): the live view.
/// Loads and attaches the probes, or none when the reduced mode was asked
/// for (`--reduced`).
fn load_unless_reduced(plan: &ProbePlan, opts: loader::LoadOptions, reduced: bool) -> Result<Option<loader::Probes>> {
    if reduced {
        return Ok(None);
    }
    Ok(Some(loader::load_with(plan.clone(), opts)?))
}

fn top(interval: Duration, connect: Option<String>, reduced: bool) -> Result<ExitCode> {
    use gupwatch::{collect, tui, tui::source};
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("the live view needs a terminal on stdout; `gupwatch --plain` (or --count N) prints summary lines");
    }
    // In raw mode Ctrl-C arrives as a key; these cover kill(1) and a
    // closed terminal, and the view restores the terminal on its way out.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install signal handler")?;
    }
    let (src, source_label, diagnosis): (Box<dyn source::Source>, String, Vec<String>) = match connect {
        Some(addr) => (Box::new(source::RemoteSource::new(addr.clone(), Duration::from_secs(5))), addr, vec![]),
        None => {
            eprintln!("gupwatch: loading probes...");
            let plan = resolve_plan()?;
            let (probes, load_err) = match load_unless_reduced(&plan, loader::LoadOptions::default(), reduced) {
                Ok(p) => (p, None),
                Err(e) => (None, Some(e.to_string())),
            };
            let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
            let diagnosis = if attached == 0 && !reduced {
                host::render(&host::diagnose(probes.as_ref().map(|p| &p.plan), load_err.as_deref()))
                    .lines()
                    .map(String::from)
                    .collect()
            } else {
                vec![]
            };
            let plan = probes.as_ref().map_or(plan, |p| p.plan.clone());
            let probes = probes.filter(|_| attached > 0);
            let collector = collect::Collector::new(probes, &plan, collect::Settings::default());
            drop_privileges_for(false, attached == 0);
            (Box::new(source::LocalSource::new(collector)), "local".into(), diagnosis)
        }
    };
    tui::run(src, tui::Options { interval, source_label, diagnosis }, &stop).context("live view")?;
    Ok(ExitCode::SUCCESS)
}

/// Drops the capabilities not needed any more (see privileges.rs) and says
/// what remains; a failure leaves them as they are, with a warning.
fn drop_privileges(late_attach: bool) {
    drop_privileges_for(late_attach, false);
}

/// [`drop_privileges`], keeping what the reduced mode's walk of other
/// processes' descriptors needs when `reduced` (see privileges.rs).
fn drop_privileges_for(late_attach: bool, reduced: bool) {
    // Start-up is over (the collector has read kallsyms too): what it
    // freed goes back to the kernel.
    loader::trim_heap();
    let needs = gupwatch::privileges::Needs { reads_other_processes: reduced, ..gupwatch::privileges::Needs::here(late_attach) };
    let r = gupwatch::privileges::drop_privileges(&needs);
    let fds = gupwatch::privileges::fd_summary();
    // `run` logs through tracing; the other modes have no subscriber, and
    // stderr keeps their stdout clean.
    match r {
        Ok(r) if tracing::dispatcher::has_been_set() => tracing::info!(open_fds = %fds, "{r}"),
        Ok(r) => eprintln!("gupwatch: {r}; open fds: {fds}"),
        Err(e) if tracing::dispatcher::has_been_set() => {
            tracing::warn!(error = %e, "could not drop capabilities; running with those it has")
        }
        Err(e) => eprintln!("gupwatch: could not drop capabilities ({e}); running with those it has"),
    }
}

/// `gupwatch doctor`.
fn doctor(json: bool) -> Result<ExitCode> {
    let report = gupwatch::doctor::evaluate(&gupwatch::doctor::Facts::gather());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::from(report.exit_code))
}

#[derive(Subcommand, Debug)]
enum Generate {
    /// A shell completion script, on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages: gupwatch(1) on stdout, or with --dir one page per
    /// subcommand (gupwatch-run.1, ...) written there.
    Man {
        /// Directory to write the pages into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Markdown pages, one per subcommand, into DIR (docs/cli in the
    /// repository, kept up to date by a test).
    Markdown {
        /// Directory to write the pages into.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// One Markdown page per visible subcommand, plus an index: the command's
/// own `--help` text, so the pages say exactly what the binary says.
fn markdown_pages(cmd: &mut clap::Command) -> Vec<(String, String)> {
    cmd.build();
    let mut pages = Vec::new();
    let mut index = String::from(
        "# gupwatch command reference\n\nGenerated from the command-line definition by \
         `gupwatch generate markdown --dir docs/cli`; `cargo test` fails when a page is out of date.\n\n\
         | command | what it does |\n|---|---|\n",
    );
    let mut page = |name: &str, c: &mut clap::Command| {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        let help = c.render_long_help().to_string();
        let file = format!("{}.md", name.replace(' ', "-"));
        index += &format!("| [`{name}`]({file}) | {} |\n", about.lines().next().unwrap_or(""));
        pages.push((file, format!("# `{name}`\n\n{about}\n\n```text\n{}\n```\n", help.trim_end())));
    };
    page("gupwatch", cmd);
    let subs: Vec<String> =
        cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").map(|c| c.get_name().to_string()).collect();
    for sub in subs {
        if let Some(c) = cmd.find_subcommand_mut(&sub) {
            page(&format!("gupwatch {sub}"), c);
        }
    }
    pages.push(("README.md".into(), index));
    pages
}

/// `gupwatch generate`: completions and man pages from the clap definition.
fn generate(what: Generate) -> Result<ExitCode> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match what {
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd.clone(), "gupwatch", &mut std::io::stdout());
        }
        Generate::Man { dir: None } => {
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("cannot write the man page")?;
        }
        Generate::Markdown { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for (file, text) in markdown_pages(&mut cmd.clone()) {
                let path = dir.join(file);
                std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Generate::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_are_optional_so_the_config_file_can_fill_them() {
        let cli = Cli::try_parse_from(["gupwatch", "run", "--top-processes", "3", "--log-format", "json"]).unwrap();
        let Some(Command::Run { listen, top_processes, log_format, config, .. }) = cli.command else { panic!() };
        assert_eq!((listen, top_processes, log_format, config), (None, Some(3), Some(LogFormat::Json), None));
        assert!(Cli::try_parse_from(["gupwatch", "run", "--log-format", "xml"]).is_err());
        let cli = Cli::try_parse_from(["gupwatch", "top", "--connect", "127.0.0.1:10483", "-i", "2"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Top { connect: Some(_), .. })));
        assert_eq!(cli.interval, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["gupwatch", "generate", "completions", "zsh"]).is_ok());
        assert!(Cli::try_parse_from(["gupwatch", "doctor", "--json"]).is_ok());
    }

    #[test]
    fn man_pages_and_completions_generate() {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains("doctor") && page.contains("top"), "subcommands listed");
        assert!(!page.contains("generate"), "the packagers' subcommand stays hidden");
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "gupwatch", &mut bash);
        assert!(String::from_utf8(bash).unwrap().contains("--connect"));
    }
}
