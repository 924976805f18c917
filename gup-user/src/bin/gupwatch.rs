//! The `gupwatch` command line.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gup_common::{Api, ApiKind};
use gupwatch::{check, host, loader, plan::ProbePlan, scenarios, vmstat};

/// Watch how this Linux host pins user memory: who calls pin_user_pages*()
/// and get_user_pages*(), how many pages, and whether the kernel agrees.
#[derive(Parser, Debug)]
#[command(name = "gupwatch", version, about, long_about = None, after_help = "\
Examples:
  sudo gupwatch                 live summary every second (Ctrl-C to stop)
  sudo gupwatch -i 5 -c 12      a summary every 5 s, twelve times
  sudo gupwatch probes          what gets hooked on this kernel, and how
  sudo gupwatch check --json    pin through real syscalls and compare with /proc/vmstat")]
struct Cli {
    /// Seconds between summaries.
    #[arg(short, long, default_value = "1", value_parser = parse_interval, global = true)]
    interval: Duration,
    /// Stop after this many summaries.
    #[arg(short, long, global = true)]
    count: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    Run {
        /// Address to listen on.
        #[arg(long, default_value = gupwatch::http::DEFAULT_LISTEN)]
        listen: String,
        /// Process names with their own gupwatch_process_pages_total series
        /// (the rest are summed into comm="other").
        #[arg(long, default_value_t = gupwatch::metrics::DEFAULT_TOP_PROCESSES)]
        top_processes: usize,
    },
    /// Repeat one pinning operation and print operations per second (for
    /// `cargo xtask bench`).
    #[command(hide = true)]
    BenchWorkload {
        /// The operation.
        #[arg(long, value_enum)]
        kind: gupwatch::bench::BenchKind,
        /// How long to run.
        #[arg(long, default_value = "5")]
        seconds: f64,
        /// Directory on a filesystem that supports O_DIRECT.
        #[arg(long, env = "GUPWATCH_SCRATCH", default_value = ".")]
        scratch: PathBuf,
    },
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

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.05..=3600.0).contains(&secs) {
        return Err(format!("interval {secs} s is out of range (0.05 to 3600)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors are printed with their causes on one screen, never as a
    // backtrace, whatever RUST_BACKTRACE says.
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gupwatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
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
        None => watch(cli.interval, cli.count),
        Some(Command::Probes { json, dry_run }) => probes(json, dry_run),
        Some(Command::Check { json, scratch, track_capacity }) => run_check(json, &scratch, track_capacity),
        Some(Command::Leaks { json, duration, long_held, track_capacity }) => {
            leaks(json, Duration::from_secs(duration), Duration::from_secs(long_held), track_capacity)
        }
        Some(Command::Run { listen, top_processes }) => serve(&listen, top_processes),
        Some(Command::BenchWorkload { kind, seconds, scratch }) => {
            let stop = stop_flag()?;
            let r = gupwatch::bench::run(kind, &scratch, Duration::from_secs_f64(seconds.max(0.1)), &stop)
                .context("benchmark workload failed")?;
            println!("{}", serde_json::to_string(&r)?);
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
            eprintln!("workload done: {stats:?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn leaks(json: bool, duration: Duration, long_held: Duration, track_capacity: u32) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let opts = loader::LoadOptions { track_pins: true, track_capacity };
    let probes = loader::load_with(resolve_plan()?, opts).context("cannot load gupwatch's probes")?;
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
        let names: Vec<&str> = ips.iter().filter_map(|ip| kallsyms.symbolize(*ip).map(|(n, _)| n)).collect();
        gupwatch::attribution::classify(&names)
    };
    let snap = probes.maps.snapshot()?;
    let tracking = probes.maps.tracking();
    let mut report = gupwatch::leaks::analyze(
        &tracking,
        &gupwatch::leaks::Context {
            now_ns: gupwatch::leaks::monotonic_ns(),
            since_ns: 0,
            caller: &caller,
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

/// `gupwatch run`: metrics over HTTP until SIGINT/SIGTERM, then exit 0
/// with the probes detached (dropping them detaches).
fn serve(listen: &str, top_processes: usize) -> Result<ExitCode> {
    use gupwatch::{http, metrics};
    // Bind first: a busy port should fail before anything is loaded.
    let server = http::Server::bind(listen, http::ServerConfig::default())
        .with_context(|| format!("cannot listen on {listen}"))?;
    let plan = resolve_plan()?;
    let (probes, load_err) = match loader::load(plan.clone()) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
    if attached == 0 {
        let findings = host::diagnose(probes.as_ref().map(|p| &p.plan), load_err.as_deref());
        eprintln!(
            "gupwatch: this kernel ({}) will not run gupwatch's probes:\n{}\nServing the kernel's /proc/vmstat counters and probe health only (reduced mode).",
            plan.kernel,
            host::render(&findings)
        );
    }
    let plan = probes.as_ref().map_or(plan, |p| p.plan.clone());
    let probes = probes.filter(|_| attached > 0);
    let collector = metrics::Collector::new(probes, &plan, metrics::Settings { top_processes });
    // Installed only now: until here the default action of SIGINT/SIGTERM
    // (exit, which detaches whatever was attached) ends a slow load at once.
    let stop = stop_flag()?;
    eprintln!(
        "gupwatch: {attached} hooks attached; serving http://{}/metrics (Ctrl-C to stop)",
        server.local_addr()?
    );
    server.run(Arc::new(http::App::new(collector)), &stop).context("metrics server")?;
    eprintln!("gupwatch: stopped; probes detached.");
    Ok(ExitCode::SUCCESS)
}

fn resolve_plan() -> Result<ProbePlan> {
    ProbePlan::for_running_kernel().context("cannot resolve the probe plan")
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

fn run_check(json: bool, scratch: &std::path::Path, track_capacity: u32) -> Result<ExitCode> {
    let opts = loader::LoadOptions { track_pins: true, track_capacity };
    let probes = loader::load_with(resolve_plan()?, opts).context("cannot load gupwatch's probes")?;
    if probes.plan.attached() == 0 {
        eprint!(
            "gupwatch: no GUP hook could be attached, so there is nothing to check.\n{}",
            host::render(&host::diagnose(Some(&probes.plan), None))
        );
        return Ok(ExitCode::from(2));
    }
    let report = check::run(&probes, scratch)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The default mode: a periodic summary, or the reduced mode with a
/// diagnosis when this kernel will not run the probes.
fn watch(interval: Duration, count: Option<u64>) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let plan = resolve_plan()?;
    let (probes, load_err) = match loader::load(plan.clone()) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let attached = probes.as_ref().map_or(0, |p| p.plan.attached());
    let mut out = std::io::stdout().lock();
    if attached == 0 {
        let findings = host::diagnose(probes.as_ref().map(|p| &p.plan), load_err.as_deref());
        eprintln!(
            "gupwatch: this kernel ({}) will not run gupwatch's probes:\n{}\nContinuing in reduced mode. Ctrl-C to stop.\n",
            plan.kernel,
            host::render(&findings)
        );
        drop(probes);
        host::run_reduced(interval, count, &stop, &mut out).context("reduced mode")?;
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
    let first = probes.maps.snapshot()?;
    let vm_first = vmstat::read(true).ok();
    let mut prev = first.clone();
    let mut vm_prev = vm_first;
    let t0 = Instant::now();
    let mut printed = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && count.is_none_or(|c| printed < c) {
        host::sleep_unless_stopped(interval, &stop);
        // Module hooks (i915) attach when the module appears.
        if printed % 5 == 0 {
            for f in probes.attach_late_modules() {
                writeln!(out, "gupwatch: {f} appeared (module loaded); attached")?;
            }
        }
        let now = probes.maps.snapshot()?;
        let vm_now = vmstat::read(true).ok();
        let d = now.since(&prev);
        let t = d.totals();
        let mut top: Vec<(Api, u64)> = Api::ALL
            .iter()
            .filter(|a| a.kind() != ApiKind::Unpin)
            .map(|&a| (a, d.api(a).pages))
            .filter(|(_, p)| *p > 0)
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1));
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
