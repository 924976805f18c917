//! `cargo xtask bench`: what gupwatch costs a pinning workload, measured in
//! one VM boot per run and reported as ratios (never asserted).
//!
//! Three modes, alternated round after round (A B C, A B C, ...):
//!
//! * **A**: the workload alone;
//! * **B**: with `gupwatch run` attached (metrics served, not scraped);
//! * **C**: as B, with `/metrics` scraped once a second.
//!
//! Workloads, each for a fixed duration: io_uring buffer registration and
//! unregistration of 1 MiB, `process_vm_readv` of 1 MiB, and 4 KiB
//! `O_DIRECT` reads of a memory-backed `null_blk` device, each `gupwatch
//! bench-workload --kind io-uring|process-vm|odirect --seconds N`.
//!
//! By default the guest runs on QEMU's instruction-counting clock (TCG,
//! `-icount shift=0`): guest time is instructions executed, every workload
//! is CPU-only, so a ratio repeats from run to run whatever the host's load,
//! and `kernel.bpf_stats_enabled` run time is instructions spent in BPF.
//! The whole thing runs twice (`--repeat`) and the spread of every ratio
//! between the runs is printed. `--wall-clock` gives the old measurement
//! (KVM when it works, scraped from the host).
//!
//! Besides throughput: the daemon's start-up time, peak RSS (`VmHWM`), CPU
//! time while attached and while scraped, and the cost of one probe hit,
//! both inside BPF (bpf_stats, per program through `gupwatch
//! bench-bpfstats`) and in all ((B − A) per op / BPF runs per op). Reports
//! go to stdout, `target/bench/latest.txt` and `target/bench/latest.json`;
//! on the counting clock the kernel's section of `docs/bench.md` is
//! rewritten.

mod docs;
mod guest;
mod parse;
mod report;
mod scrape;
mod summary;

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use guest::{guest_script, GUEST_PORT};
pub use parse::{parse_lines, runs, Line, Run};
pub use report::{report, Inputs, ScrapeSession};
pub use summary::{RunSummary, Summary, MAX_SPREAD_PCT};

use crate::binary;
use crate::e2e::free_port;
use crate::vm::kernels::{self, BootKernel, Flavour};
use crate::vm::{ConsoleEcho, Forward, VmRun};
use crate::say;
use crate::setup::{self, SetupOptions};
use crate::util;

/// Slowdown target (issue 14): throughput with gupwatch at least this share
/// of without.
pub const TARGET_RATIO: f64 = 0.97;
/// Peak RSS target of the daemon, in KiB (issue 14).
pub const TARGET_RSS_KIB: u64 = 32 * 1024;

/// Options of `cargo xtask bench`: the command line itself (the doc
/// comments are its help text).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Kernel to boot (alias or image path).
    #[arg(long, default_value = "7.2")]
    pub kernel: String,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds of A (alone) B (attached) C (attached and scraped).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Use the gupwatch built last instead of building it.
    #[arg(long)]
    pub no_build: bool,
    /// Measure in host time (KVM when it works, scraped from the host)
    /// instead of on QEMU's instruction-counting clock.
    #[arg(long)]
    pub wall_clock: bool,
    /// VM runs, to check that they agree [default: 2, or 1 with
    /// --wall-clock].
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Exit with status 1 when two runs disagree by more than 0.5% on a
    /// ratio (the figures themselves are never judged).
    #[arg(long)]
    pub require_deterministic: bool,
    /// Do not rewrite docs/bench.md (for trial runs).
    #[arg(long)]
    pub no_docs: bool,
    /// Run B and C with gupwatch's programs returning at once: what
    /// the trampolines and kprobes cost by themselves, the floor any
    /// program on these hooks pays (its own section of docs/bench.md).
    #[arg(long)]
    pub empty_programs: bool,
}

impl BenchOptions {
    fn icount(&self) -> bool {
        !self.wall_clock
    }
    fn repeats(&self) -> u32 {
        self.repeat.unwrap_or(if self.wall_clock { 1 } else { 2 })
    }
    /// The kernel option as a file-name part, so that runs on several
    /// kernels at once keep their own files.
    fn file_tag(&self) -> String {
        let base = self.kernel.rsplit('/').next().unwrap_or(&self.kernel);
        base.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
    /// The command line that reproduces these options (for docs/bench.md).
    fn command_line(&self) -> String {
        // Kernel arguments and clock options change what is measured
        // (maxcpus=1 on 6.1, sleep=off).
        let mut env = String::new();
        for var in ["GUPWATCH_VM_APPEND", "GUPWATCH_VM_ICOUNT"] {
            if let Ok(a) = std::env::var(var) {
                if !a.trim().is_empty() {
                    let _ = write!(env, "{var}='{}' ", a.trim());
                }
            }
        }
        let mut c = format!(
            "{env}cargo xtask bench --kernel {} --seconds {} --rounds {}",
            self.kernel, self.seconds, self.rounds
        );
        if self.wall_clock {
            c.push_str(" --wall-clock");
        }
        if self.repeat.is_some() {
            let _ = write!(c, " --repeat {}", self.repeats());
        }
        if self.empty_programs {
            c.push_str(" --empty-programs");
        }
        c
    }
}

/// The host's 1, 5 and 15 minute load averages.
fn loadavg() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// One VM run: its report text and figures.
struct Measured {
    text: String,
    summary: RunSummary,
}

/// Boots the guest once and runs every round in it.
fn run_once(o: &BenchOptions, kernel: &BootKernel, gupwatch: &Path, n: u32) -> Result<Measured> {
    let icount = o.icount();
    let metrics_port = free_port()?;
    let ctrl = TcpListener::bind("127.0.0.1:0").context("binding the control port")?;
    let ctrl_port = ctrl.local_addr()?.port();
    let state = Arc::new(Mutex::new(scrape::Scraping::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // On the counting clock C scrapes from inside the guest: no host
    // threads, no network device (its traffic would be host-timed input).
    let threads = if icount {
        Vec::new()
    } else {
        vec![
            scrape::control_thread(ctrl, Arc::clone(&state), Arc::clone(&stop)),
            scrape::scraper_thread(metrics_port, Arc::clone(&state), Arc::clone(&stop)),
        ]
    };

    // 3 kinds; each run plus its bookkeeping takes S + ~5 guest seconds, a
    // daemon start ~10. Under TCG with icount a guest second (10^9
    // instructions) takes several host seconds.
    let per_round = 3 * 3 * (o.seconds + 5) + 30;
    let guest = 60 + u64::from(o.rounds) * per_round + 3 * (o.seconds.min(2) + 10) + 30;
    let timeout = 120 + if icount { 8 * guest } else { guest };
    let mut run = VmRun::new(
        kernel.clone(),
        guest_script(o.seconds, o.rounds, ctrl_port, icount, o.empty_programs),
    );
    run.gupwatch = Some(gupwatch.to_path_buf());
    run.icount = icount;
    run.deferred_modules = vec!["null_blk".into()];
    if !icount {
        run.forwards = vec![Forward {
            host: metrics_port,
            guest: GUEST_PORT,
        }];
    }
    run.timeout = Duration::from_secs(timeout);
    run.captured(ConsoleEcho::AfterInit, "bench");
    say!(
        "bench",
        "run {n}/{}: {} round(s) x 3 modes x {} s per run in one VM ({}; at most {} s)",
        o.repeats(),
        o.rounds,
        o.seconds,
        if icount {
            "TCG, -icount shift=0"
        } else {
            "wall clock"
        },
        timeout
    );
    let load_before = loadavg();
    let outcome = run.run();
    let host_load = load_before.zip(loadavg());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let outcome = outcome?;
    let stdout = String::from_utf8_lossy(&outcome.stdout).to_string();
    let lines = parse_lines(&stdout);
    let dir = util::target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw_path = dir.join(format!("raw-{}-{n}.txt", o.file_tag()));
    fs::write(&raw_path, &stdout).with_context(|| format!("writing {}", raw_path.display()))?;
    if let Some(e) = lines.iter().find(|l| l.what == "error") {
        bail!(
            "the benchmark failed in the guest: {} (guest exit status {}; raw output {}; console log {})",
            e.text,
            outcome.status,
            raw_path.display(),
            outcome.console_log.display()
        );
    }
    if outcome.status != 0 || !lines.iter().any(|l| l.what == "done") {
        bail!(
            "the guest script did not finish (exit status {}); raw output {}; console log {}",
            outcome.status,
            raw_path.display(),
            outcome.console_log.display()
        );
    }
    let sessions = state
        .lock()
        .map_err(|_| anyhow::anyhow!("scrape state poisoned"))?
        .done
        .clone();
    let summary = summary::summarize(&lines, icount);
    let text = report(&Inputs {
        lines,
        sessions,
        accel: outcome.accel.to_string(),
        icount,
        seconds: o.seconds,
        rounds: o.rounds,
        vm_secs: outcome.elapsed.as_secs_f64(),
        host_load,
    });
    Ok(Measured { text, summary })
}

/// The agreement of the runs, one line per figure.
fn spread_text(s: &Summary) -> String {
    if s.spreads.is_empty() {
        return "Agreement between runs: one run only (--repeat 2 to check it)\n".into();
    }
    let mut rows = vec![vec![
        "workload".to_string(),
        "figure".into(),
        "per run".into(),
        "spread".into(),
        "".into(),
    ]];
    for sp in &s.spreads {
        let ratio = sp.figure.ends_with("_over_a");
        let d = if ratio { 4 } else { 0 };
        rows.push(vec![
            sp.kind.clone(),
            sp.figure.clone(),
            sp.values
                .iter()
                .map(|v| format!("{v:.d$}"))
                .collect::<Vec<_>>()
                .join(" "),
            format!("{:.2}%", sp.spread_pct),
            match (ratio, sp.spread_pct <= MAX_SPREAD_PCT) {
                (false, _) => "(not judged)".into(),
                (true, true) => "ok".into(),
                (true, false) => "TOO FAR".into(),
            },
        ]);
    }
    format!(
        "Agreement between the {} runs (spread = (max - min) / mean; ratios must agree within {MAX_SPREAD_PCT}%)\n{}  deterministic: {}\n",
        s.runs.len(),
        report::table(&rows, 2),
        s.deterministic
    )
}

/// The workspace's commit, `-dirty` when tracked files other than
/// docs/bench.md (which runs on other kernels rewrite) differ from it.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(util::workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let changes = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!docs/bench.md",
    ]);
    match changes {
        Some(c) if c.is_empty() => head,
        _ => format!("{head}-dirty"),
    }
}

/// Runs the benchmark; prints the report and saves it. Exit status 1 only
/// when `--require-deterministic` is given and the runs disagree.
pub fn run(o: &BenchOptions) -> Result<i32> {
    if o.seconds == 0 || o.rounds == 0 || o.repeats() == 0 {
        bail!("--seconds, --rounds and --repeat must be at least 1");
    }
    if o.require_deterministic && (o.wall_clock || o.repeats() < 2) {
        bail!("--require-deterministic needs the counting clock (no --wall-clock) and at least two runs");
    }
    setup::run(&SetupOptions {
        refresh: false,
        no_kernels: true,
    })?;
    let kernel = kernels::resolve_spec(&o.kernel, Flavour::Cloud, None)?;
    let gupwatch = binary::static_gupwatch(o.no_build)?;
    if !gupwatch.is_file() {
        bail!(
            "{} does not exist: run without --no-build",
            gupwatch.display()
        );
    }
    let mut texts = Vec::new();
    let mut runs = Vec::new();
    for n in 1..=o.repeats() {
        let m = run_once(o, &kernel, &gupwatch, n)?;
        println!("== run {n}/{} ==\n{}", o.repeats(), m.text);
        texts.push(format!("== run {n}/{} ==\n{}", o.repeats(), m.text));
        runs.push(m.summary);
    }
    let s = summary::combine(runs, o.icount(), o.seconds, o.rounds);
    let agreement = spread_text(&s);
    print!("{agreement}");
    texts.push(agreement);

    let dir = util::target_dir().join("bench");
    let body = serde_json::to_string_pretty(&s).context("serialising the summary")? + "\n";
    // latest.* is the last run on any kernel; <kernel>.* stay per kernel.
    for stem in ["latest".to_string(), o.file_tag()] {
        let txt = dir.join(format!("{stem}.txt"));
        fs::write(&txt, texts.join("\n")).with_context(|| format!("writing {}", txt.display()))?;
        let json = dir.join(format!("{stem}.json"));
        fs::write(&json, &body).with_context(|| format!("writing {}", json.display()))?;
    }
    say!(
        "bench",
        "reports saved to {dir}/latest.txt and {dir}/latest.json (and {tag}.txt, {tag}.json)",
        dir = dir.display(),
        tag = o.file_tag()
    );
    if o.empty_programs {
        say!("bench", "B and C ran gupwatch with empty programs (--empty-programs): the attach mechanisms' own cost");
    }
    if o.icount() && !o.no_docs {
        let path = util::workspace_root().join("docs").join("bench.md");
        docs::update(&path, &s, &o.command_line(), &commit(), o.empty_programs)?;
        say!(
            "bench",
            "updated the Linux {} section of {}",
            docs::series(&s.kernel),
            path.display()
        );
    }
    if o.require_deterministic && !s.deterministic {
        say!("bench", "the runs disagree by more than {MAX_SPREAD_PCT}% on some ratio (--require-deterministic)");
        return Ok(1);
    }
    Ok(0)
}
