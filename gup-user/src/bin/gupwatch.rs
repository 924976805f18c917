//! The `gupwatch` command line.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gupwatch::{
    check,
    config::LogFormat,
    diagnose::host, probes::loader, check::scenarios,
    session::{self, Session},
    kernel::vmstat,
    model::leaks::LeakTable,
};

/// Watch how this Linux host pins user memory: who calls pin_user_pages*()
/// and get_user_pages*(), how many pages, and whether the kernel agrees.
#[derive(Parser, Debug)]
#[command(name = "gupwatch", version, about = "gupwatch: live view of how a Linux host pins user memory (pin_user_pages / GUP)", long_about = None, after_help = "\
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
    /// Seconds between summaries (or screen refreshes).
    // Not global: on `run`, `doctor` and the rest it would be accepted and
    // mean nothing (`gupwatch run -c 5` never stopped).
    #[arg(short, long, default_value = "1", value_parser = gupwatch::args::parse_interval)]
    interval: Duration,
    /// Stop after this many summaries.
    #[arg(short, long)]
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

/// How to reach a `gupwatch run` daemon (`top` and `leaks`), with the
/// names Prometheus gives the same settings.
#[derive(clap::Args, Debug)]
struct ConnectArgs {
    /// A daemon's URL: HOST:PORT or http://HOST:PORT, https://HOST:PORT
    /// when its --web-config turns on TLS.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    /// PEM file of the CA that signed the daemon's certificate (default:
    /// Mozilla's public roots).
    #[arg(long, value_name = "FILE", requires = "connect")]
    tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for a daemon that verifies
    /// client certificates (with --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["connect", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// PEM file of the key of --tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["connect", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Basic-auth user; the password comes from --basic-auth-password-file
    /// or the GUPWATCH_BASIC_AUTH_PASSWORD environment variable, never
    /// from the command line.
    #[arg(long, value_name = "USER", requires = "connect")]
    basic_auth_user: Option<String>,
    /// File whose first line is the basic-auth password.
    #[arg(long, value_name = "FILE", requires = "basic_auth_user")]
    basic_auth_password_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The daemon to ask, when --connect was given.
    fn remote(self) -> Result<Option<(gupwatch::export::client::Remote, String)>> {
        let Some(url) = self.connect else { return Ok(None) };
        let opts = gupwatch::export::client::ConnectOptions {
            url: url.clone(),
            tls_ca: self.tls_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            basic_auth_user: self.basic_auth_user,
            basic_auth_password_file: self.basic_auth_password_file,
            password_from_env: std::env::var(gupwatch::export::client::PASSWORD_ENV).ok(),
            timeout: Duration::from_secs(5),
        };
        Ok(Some((gupwatch::export::client::Remote::new(&opts)?, url)))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The live view: processes or call sites, rates, fast-path hit rate,
    /// latency and leaks. Of this host's probes, or with --connect of a
    /// `gupwatch run` daemon (its /api/snapshot).
    Top {
        /// Seconds between screen refreshes.
        #[arg(short, long, default_value = "1", value_parser = gupwatch::args::parse_interval)]
        interval: Duration,
        #[command(flatten)]
        remote: ConnectArgs,
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
    ///
    /// With --connect, the report of a `gupwatch run` daemon instead (its
    /// /api/snapshot?leaks=1): every pin it tracked since it started, by
    /// the daemon's own --long-held; no probes are loaded here.
    Leaks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds to watch before reporting (Ctrl-C reports early).
        #[arg(long, default_value = "10", conflicts_with = "connect")]
        duration: u64,
        /// Pins held longer than this many seconds are long-held.
        #[arg(long, default_value = "300", conflicts_with = "connect")]
        long_held: u64,
        /// Pins without FOLL_LONGTERM on ZONE_MOVABLE pages held longer
        /// than this many seconds are weak pins (they block migration).
        #[arg(long, default_value = "1", conflicts_with = "connect")]
        weak_pin: u64,
        /// Capacity of the tracking map, in folios.
        #[arg(long, default_value_t = gup_common::TRACK_CAPACITY, conflicts_with = "connect")]
        track_capacity: u32,
        #[command(flatten)]
        remote: ConnectArgs,
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
    Run(RunArgs),
    /// The in-guest part of `cargo xtask stress`: attach/detach cycles
    /// under a pin storm, SIGKILL rounds, an overflowing tracking map.
    #[command(hide = true)]
    Stress {
        /// storm: attach/detach cycles under a pin storm (the rest of the
        /// flags); churn: the churn_ scenarios, one exact interval per
        /// cycle (uses --cycles, --churn-procs and --scratch only).
        #[arg(long, value_enum, default_value_t)]
        mode: gupwatch::check::stress::StressMode,
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
        kind: gupwatch::check::bench::BenchKind,
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
        /// With --hold: a forked child registers the buffer and exits while
        /// this process keeps the ring, so the pins outlive their owner and
        /// this process is named as their holder (`gupwatch leaks`).
        #[arg(long, requires = "hold", conflicts_with = "handoff")]
        orphan: bool,
        /// With --hold: a forked child registers the buffer, forks and
        /// exits, and its child holds the ring (see the holder in
        /// `gupwatch leaks`).
        #[arg(long, requires = "hold")]
        handoff: bool,
        /// Directory on a filesystem that supports O_DIRECT.
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
    },
}

/// `gupwatch run`'s flags.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address to listen on; `:PORT` is every address, as for the Go
    /// exporters (also --web.listen-address) [default: 127.0.0.1:10483].
    #[arg(long, value_name = "ADDR", alias = "web.listen-address")]
    listen: Option<String>,
    /// Process names with their own gupwatch_process_*_pages_total series
    /// (the rest are summed into comm="other") [default: 10].
    #[arg(long, value_name = "N")]
    top_processes: Option<usize>,
    /// Pins held longer than this many seconds are long-held in
    /// /api/snapshot?leaks=1 [default: 300].
    #[arg(long, value_name = "SECS")]
    long_held: Option<u64>,
    /// Pins without FOLL_LONGTERM on ZONE_MOVABLE pages held longer than
    /// this many seconds are weak pins in /api/snapshot?leaks=1 [default: 1].
    #[arg(long, value_name = "SECS")]
    weak_pin: Option<u64>,
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
    /// basic_auth_users); re-read when it or its files change (also
    /// --web.config.file).
    #[arg(long, value_name = "FILE", alias = "web.config.file")]
    web_config: Option<PathBuf>,
    /// Connections one client address (IPv6: one /64) may have open at
    /// once; more are closed at once, so one client cannot take the
    /// whole descriptor budget [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_peer: Option<u64>,
    /// Write /proc/sys/vm/stat_refresh before reading /proc/vmstat, at
    /// most once every SECS seconds (0: at every reading), so the
    /// kernel's counters are exact. Off by default: the write queues
    /// work on every CPU, isolated (nohz_full) ones included; without
    /// it the figures may lag by up to vm.stat_interval (1 s), and
    /// /api/snapshot's kernel_counters.refreshed_ms_ago says how fresh
    /// they are.
    #[arg(long, value_name = "SECS")]
    vmstat_refresh: Option<u64>,
    /// Load no probes: serve the reduced mode (vmstat counters and the
    /// gupwatch_accounted_* families) as on a kernel that refuses
    /// tracing programs.
    #[arg(long)]
    reduced: bool,
    /// Have the kernel count runs and run time of BPF programs
    /// (BPF_ENABLE_STATS) for as long as the daemon runs, exported as
    /// gupwatch_bpf_program_runs_total and
    /// gupwatch_bpf_program_run_seconds_total per attached program. Off
    /// by default: while on, every BPF program of the host costs two
    /// clock reads more per run.
    #[arg(long)]
    bpf_stats: bool,
}


fn main() -> ExitCode {
    // Before anything allocates much (memstat.rs says why).
    gupwatch::memstat::tune_allocator();
    // First, so that any panic is one line naming the command and kernel,
    // then exit status 70 (crash.rs).
    gupwatch::diagnose::crash::install();
    let matches = Cli::command().get_matches();
    gupwatch::diagnose::crash::set_command(matches.subcommand_name());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Caught here rather than exiting in the hook: unwinding runs the
    // destructors that detach probes and restore the terminal.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gupwatch::diagnose::crash::test_trigger();
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
        Err(_) => ExitCode::from(gupwatch::diagnose::crash::EX_SOFTWARE),
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
    session::stop_on_signals().context("cannot install signal handler")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => watch(cli.interval, cli.count, cli.plain, cli.reduced),
        Some(Command::Probes { json, dry_run }) => probes(json, dry_run),
        Some(Command::Check { json, scratch, track_capacity, only, skip, churn_procs }) => {
            run_check(json, &scratch, track_capacity, &check::CheckOptions { only, skip, churn_procs })
        }
        Some(Command::Leaks { json, duration, long_held, weak_pin, track_capacity, remote }) => match remote.remote()? {
            Some((remote, _)) => remote_leaks(json, &remote),
            None => leaks(json, Duration::from_secs(duration), (Duration::from_secs(long_held), Duration::from_secs(weak_pin)), track_capacity),
        },
        Some(Command::Run(a)) => {
            let flags = gupwatch::config::RunOptions {
                listen: a.listen,
                top_processes: a.top_processes,
                long_held: a.long_held,
                weak_pin: a.weak_pin,
                track_capacity: a.track_capacity,
                log_format: a.log_format,
                log_level: a.log_level,
                web_config: a.web_config,
                max_connections_per_peer: a.max_connections_per_peer.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                vmstat_refresh: a.vmstat_refresh,
            };
            gupwatch::daemon::run(gupwatch::daemon::RunRequest {
                flags,
                config: a.config.as_deref(),
                reduced: a.reduced,
                bpf_stats: a.bpf_stats,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Top { interval, remote, reduced }) => top(interval, remote.remote()?, reduced || cli.reduced),
        Some(Command::Doctor { json }) => doctor(json),
        Some(Command::Generate { what }) => generate(what),
        Some(Command::Stress { mode, churn_procs, cycles, storm_procs, window_ms, kill_rounds, track_capacity, scratch }) => {
            let r = gupwatch::check::stress::run(&gupwatch::check::stress::StressOptions {
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
            let r = gupwatch::check::bench::run(
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
            println!("{}", serde_json::to_string(&gupwatch::check::bench::prog_stats()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Workload { hold: Some(secs), orphan, handoff, scratch, .. }) => {
            let stop = stop_flag()?;
            let (name, whose) = if orphan {
                ("io_uring_orphaned", "an exited child's")
            } else if handoff {
                ("io_uring_handoff_fork", "an exited creator's")
            } else {
                ("io_uring_buffers_held", "a")
            };
            let mut held = scenarios::builtin(&scratch)
                .into_iter()
                .find(|s| s.name() == name)
                .with_context(|| format!("the {name} scenario is missing"))?;
            held.prepare().context("preparing the io_uring buffer")?;
            held.run().context("registering the io_uring buffer")?;
            eprintln!(
                "workload: holding {whose} registered 1 MiB io_uring buffer for {secs} s (pid {})",
                std::process::id()
            );
            host::sleep_unless_stopped(Duration::from_secs(secs), &stop);
            held.cleanup().context("unregistering the io_uring buffer")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Workload { seconds, scratch, hold: None, .. }) => {
            let stop = stop_flag()?;
            let stats = scenarios::run_workload(&scratch, Duration::from_secs(seconds), &stop)
                .context("workload failed")?;
            eprintln!("workload done: {stats}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gupwatch leaks --connect`: the daemon's report, printed as the local
/// one is.
fn remote_leaks(json: bool, remote: &gupwatch::export::client::Remote) -> Result<ExitCode> {
    let report = remote.leaks()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// `thresholds`: the long-held and weak-pin thresholds.
fn leaks(json: bool, duration: Duration, thresholds: (Duration, Duration), track_capacity: u32) -> Result<ExitCode> {
    let (long_held, weak_pin) = thresholds;
    init_env_logging()?;
    let stop = stop_flag()?;
    // What is pinned already, read before the probes attach: whatever is
    // pinned after is tracked (gupwatch::model::beforestart).
    let proc_root = std::path::Path::new("/proc");
    let before = gupwatch::model::beforestart::Inventory::take(proc_root);
    let session = Session::require_tracking(track_capacity)?;
    let Some(probes) = session.probes_or_explain("no pin can be tracked") else {
        return Ok(ExitCode::from(2));
    };
    eprintln!(
        "gupwatch: tracking pins for {} s (pins taken before now are not tracked; Ctrl-C reports early)...",
        duration.as_secs()
    );
    host::sleep_unless_stopped(duration, &stop);
    let kallsyms = gupwatch::kernel::kallsyms::Kallsyms::from_proc().unwrap_or_default();
    let caller = |id: i64| {
        let ips = if id >= 0 { probes.maps.stack(id).unwrap_or_default() } else { vec![] };
        gupwatch::model::attribution::caller_of(&ips, &kallsyms)
    };
    let snap = probes.maps.snapshot()?;
    let tracking = probes.maps.tracking();
    let layout = &probes.plan.page_layout;
    let placement = gupwatch::kernel::placement::Placement::read(layout.vmemmap_base, layout.size);
    let mut report = gupwatch::model::leaks::analyze(
        &tracking,
        &gupwatch::model::leaks::Context {
            now_ns: gupwatch::model::leaks::monotonic_ns(),
            since_ns: 0,
            caller: &caller,
            site: &|ip| gupwatch::model::attribution::caller_of(&[ip], &kallsyms),
            alive: &gupwatch::model::leaks::process_alive,
            holders: &|o| probes.holders(o),
            kernel_outstanding: vmstat::read(true).ok().map(|v| v.outstanding()),
            untracked_pins: snap.diag[gup_common::Diag::PinsUntracked as usize],
            placement: placement.as_ref(),
        },
        &gupwatch::model::leaks::LeakPolicy { long_held, weak_pin, ..Default::default() },
        None,
    );
    report.i915_objects = gupwatch::model::i915::rows(&probes.maps.i915_objects(), &tracking.exited)
        .into_iter()
        .filter(|o| o.pinned_pages > 0)
        .collect();
    // No stack was classified while tracking (nothing gathered), so every
    // hold is in the pending map, named here by its stack.
    report.hold_times = gupwatch::model::holdtime::fold(&probes.maps.hold.read(), |id| {
        probes.maps.stack(id).map(|ips| gupwatch::model::attribution::caller_of(&ips, &kallsyms).subsystem)
    });
    report.cgroups = gupwatch::model::cgroups::pinned_by_cgroup(
        report.holdings.iter().map(|h| (h.owner_tgid, h.pages)),
        &gupwatch::model::cgroups::cgroup_of_processes(&snap.attrib),
        &mut gupwatch::model::cgroups::CgroupNames::default(),
        gupwatch::model::cgroups::DEFAULT_TOP_CGROUPS,
    );
    let gap = report.kernel_outstanding.map(|k| (k.max(0) as u64).saturating_sub(report.tracked_outstanding));
    report.held_before_start = before.still_held(&gupwatch::model::beforestart::Inventory::take(proc_root), gap);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
        print!(
            "{}",
            gupwatch::model::beforestart::before_table(
                &report.held_before_start,
                report.tracked_outstanding,
                report.kernel_outstanding
            )
        );
        print!("{}", gup_report::hold_table(&report.hold_times));
        print!("{}", gupwatch::model::cgroups::cgroup_table(&report.cgroups));
    }
    Ok(ExitCode::SUCCESS)
}

/// See [`gupwatch::logging::init_env_logging`].
fn init_env_logging() -> Result<()> {
    Ok(gupwatch::logging::init_env_logging()?)
}

fn probes(json: bool, dry_run: bool) -> Result<ExitCode> {
    let session = Session::start(loader::LoadOptions::default(), dry_run)?;
    if let Some(e) = session.load_error() {
        eprintln!("gupwatch: could not load the probes: {e}\n(showing the plan unattached)");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&session.plan)?);
    } else {
        print!("{}", session.plan.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_check(json: bool, scratch: &std::path::Path, track_capacity: u32, select: &check::CheckOptions) -> Result<ExitCode> {
    init_env_logging()?;
    let mut selection = check::Selection::new(scratch, select)?;
    // Pins some scenarios must hold before the probes exist.
    selection.before_attach();
    let session = Session::require_tracking(track_capacity)?;
    let Some(probes) = session.probes_or_explain("there is nothing to check") else {
        return Ok(ExitCode::from(2));
    };
    session::print_failed_hooks(&session.plan);
    let report = check::run(probes, selection)?;
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
    gupwatch::kernel::privileges::close_inherited_fds();
    let stop = stop_flag()?;
    let opts = loader::LoadOptions { ebpf_log: gupwatch::probes::ebpflog::wanted(), ..loader::LoadOptions::default() };
    let mut session = Session::start(opts, reduced)?;
    let late_attach = session.follows_modules();
    session::drop_privileges(&session.plan, late_attach, session.attached() == 0);
    // A thread: started after the drop, so it holds no capability.
    session.start_ebpf_log();
    let mut out = std::io::stdout().lock();
    let Some(probes) = session.probes_mut() else {
        if reduced {
            eprintln!("gupwatch: --reduced: no probes loaded on {}; reduced mode. Ctrl-C to stop.\n", session.plan.kernel);
        } else {
            eprintln!(
                "gupwatch: this kernel ({}) will not run gupwatch's probes:\n{}\nContinuing in reduced mode. Ctrl-C to stop.\n",
                session.plan.kernel,
                host::render(&session.diagnose())
            );
        }
        drop(session.take_probes());
        host::run_reduced(interval, count, &stop, &mut out, std::path::Path::new("/proc")).context("reduced mode")?;
        return Ok(ExitCode::SUCCESS);
    };
    gupwatch::summary::write_header(probes, &mut out)?;
    session::print_failed_hooks(&probes.plan);
    gupwatch::summary::run(probes, interval, count, &stop, late_attach, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// `gupwatch top` (and `gupwatch` on a terminal): the live view, of this
/// host's probes (none when the reduced mode was asked for, `--reduced`)
/// or of a daemon's.
fn top(interval: Duration, connect: Option<(gupwatch::export::client::Remote, String)>, reduced: bool) -> Result<ExitCode> {
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
        Some((remote, url)) => (Box::new(source::RemoteSource::new(remote)), url, vec![]),
        None => {
            eprintln!("gupwatch: loading probes...");
            let mut session = Session::start(loader::LoadOptions::default(), reduced)?;
            let attached = session.attached();
            let diagnosis =
                if attached == 0 && !reduced { session::diagnosis_lines(&session.diagnose()) } else { vec![] };
            let collector = collect::Collector::new(session.take_probes(), &session.plan, collect::Settings::default());
            session::drop_privileges(&session.plan, false, attached == 0);
            (Box::new(source::LocalSource::new(collector)), "local".into(), diagnosis)
        }
    };
    tui::run(src, tui::Options { interval, source_label, diagnosis }, &stop).context("live view")?;
    Ok(ExitCode::SUCCESS)
}

/// `gupwatch doctor`.
fn doctor(json: bool) -> Result<ExitCode> {
    let report = gupwatch::diagnose::doctor::evaluate(&gupwatch::diagnose::doctor::Facts::gather());
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
        let Some(Command::Run(RunArgs { listen, top_processes, log_format, config, .. })) = cli.command else { panic!() };
        assert_eq!((listen, top_processes, log_format, config), (None, Some(3), Some(LogFormat::Json), None));
        assert!(Cli::try_parse_from(["gupwatch", "run", "--log-format", "xml"]).is_err());
        let cli = Cli::try_parse_from(["gupwatch", "top", "--connect", "127.0.0.1:10483", "-i", "2"]).unwrap();
        let Some(Command::Top { remote: ConnectArgs { connect: Some(_), .. }, interval, .. }) = cli.command else { panic!() };
        assert_eq!(interval, Duration::from_secs(2));
        // -i and -c belong to the summary mode (and -i to top): a
        // subcommand where they would mean nothing refuses them.
        for sub in ["run", "doctor", "probes", "check", "leaks"] {
            assert!(Cli::try_parse_from(["gupwatch", sub, "-c", "5"]).is_err(), "{sub} -c");
            assert!(Cli::try_parse_from(["gupwatch", sub, "-i", "2"]).is_err(), "{sub} -i");
        }
        assert!(Cli::try_parse_from(["gupwatch", "-i", "5", "-c", "12"]).is_ok());
        // The exporter-toolkit's flag names, as aliases.
        let cli = Cli::try_parse_from(["gupwatch", "run", "--web.listen-address", ":9", "--web.config.file", "w.yml"]).unwrap();
        let Some(Command::Run(RunArgs { listen, web_config, .. })) = cli.command else { panic!() };
        assert_eq!((listen.as_deref(), web_config), (Some(":9"), Some(PathBuf::from("w.yml"))));
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
