//! `cargo xtask hostile` (and a step of `cargo xtask test`): the real
//! `gupwatch run` on loopback against hostile clients, on the host (no
//! VM: without probes the daemon runs in reduced mode, and the HTTP path
//! is the same), twice: plain HTTP, and TLS with basic auth.
//!
//! While 2,000 clients stall (`GET /metrics HTTP/1.1\r\n` and nothing
//! more) and reconnect whenever the daemon drops them, a flood of 200
//! clients × 25 requests, slow readers, a client over the per-address cap
//! and a corpus of malformed requests run, and a scraper asks for
//! /metrics once a second for 8 s. It passes when every scrape gets 200
//! within 1 s, the flood sees no error other than 503 load shedding, the
//! daemon's RSS stays under 64 MiB, every malformed request gets its
//! status, and SIGTERM ends the daemon cleanly. Only 127.0.0.0/8 is used;
//! every client loop is bounded in count or time.

mod corpus;
mod daemon;
mod load;
mod net;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;

use crate::util;
use corpus::Expect;
use load::{Outcomes, StallStats};
use net::Target;

/// What `cargo xtask hostile` runs.
#[derive(Clone, Debug)]
pub struct HostileOptions {
    /// The gupwatch binary.
    pub gupwatch: PathBuf,
    /// Clients that stall and reconnect.
    pub stallers: usize,
    /// Scrapes, one a second.
    pub scrapes: u32,
    /// Flood clients.
    pub flood_clients: usize,
    /// Requests per flood client.
    pub flood_requests: usize,
    /// Slow readers.
    pub slow_readers: usize,
    /// The modes to run, in order.
    pub modes: Vec<Mode>,
}

impl HostileOptions {
    /// The numbers, with this binary.
    pub fn new(gupwatch: PathBuf) -> HostileOptions {
        HostileOptions { gupwatch, stallers: 2000, scrapes: 8, flood_clients: 200, flood_requests: 25, slow_readers: 50, modes: vec![Mode::Plain, Mode::TlsAuth] }
    }
}

/// The daemon's RSS must stay under this.
pub const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// Each scrape must be answered within this.
pub const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
/// The daemon's default per-address connection cap (`run
/// --max-connections-per-peer`).
const PER_PEER_CAP: usize = 256;
/// Connections the one greedy client opens.
const HOG: usize = 300;
/// The daemon's head deadline, and the slack allowed past it: timers on
/// two cores shared by the daemon, its 2,000 clients and the TLS work
/// fire late (up to 4 s seen on a loaded build machine); a daemon that
/// did not cut them would hold them for ever.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
const CUT_SLACK: Duration = Duration::from_secs(5);

/// Plain HTTP, or TLS with basic auth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No web configuration.
    Plain,
    /// A web configuration with TLS and basic auth.
    #[value(name = "tls")]
    TlsAuth,
}

impl Mode {
    /// For titles and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain HTTP",
            Mode::TlsAuth => "TLS + basic auth",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::TlsAuth => "tls-auth",
        }
    }
}

pub use crate::util::Check;

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok, detail: detail.into() }
}

/// One mode's run.
#[derive(Clone, Debug)]
pub struct ModeReport {
    /// Which.
    pub mode: Mode,
    /// The verdicts.
    pub checks: Vec<Check>,
    /// Where the daemon's log is.
    pub log: PathBuf,
    /// How long the run took.
    pub elapsed: Duration,
}

/// Runs both modes; an error means the test could not run at all (no
/// binary, no runtime), never that the daemon failed it.
pub fn run(o: &HostileOptions) -> Result<Vec<ModeReport>> {
    if !o.gupwatch.is_file() {
        bail!("{} does not exist: build gupwatch first (cargo xtask build)", o.gupwatch.display());
    }
    let nofile = daemon::raise_nofile();
    let needed = (o.stallers + o.flood_clients + o.slow_readers + HOG + 256) as u64;
    if nofile < needed {
        bail!("this process may open {nofile} descriptors, the clients need {needed}: raise the hard limit (ulimit -Hn)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the clients' tokio runtime")?;
    o.modes.iter().map(|&m| run_mode(o, m, &rt)).collect()
}

fn run_mode(o: &HostileOptions, mode: Mode, rt: &tokio::runtime::Runtime) -> Result<ModeReport> {
    let started = Instant::now();
    let dir = util::target_dir().join("hostile").join(mode.slug());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (web, tls) = match mode {
        Mode::Plain => (None, None),
        Mode::TlsAuth => {
            let (w, c) = daemon::tls_setup(&dir)?;
            (Some(w), Some(c))
        }
    };
    let auth = match mode {
        Mode::Plain => String::new(),
        // prometheus:secret
        Mode::TlsAuth => "Authorization: Basic cHJvbWV0aGV1czpzZWNyZXQ=\r\n".to_string(),
    };
    let port = daemon::free_port()?;
    let log = dir.join("gupwatch.log");
    let mut child = daemon::start(&o.gupwatch, port, web.as_deref(), &log)?;
    let target = Target { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), tls, auth };
    let seen = rt.block_on(exercise(o, &target, child.id()));
    let (exit, took) = daemon::terminate(&mut child, Duration::from_secs(10));
    let mut checks = judge(o, &seen?, mode == Mode::TlsAuth);
    let clean = exit.is_some_and(|s| s.success());
    checks.push(check(
        "SIGTERM ends the daemon cleanly",
        clean,
        match exit {
            Some(s) => format!("{s} after {:.2} s", took.as_secs_f64()),
            None => format!("still running {:.0} s after SIGTERM: killed", took.as_secs_f64()),
        },
    ));
    Ok(ModeReport { mode, checks, log, elapsed: started.elapsed() })
}

/// What the clients saw.
struct Seen {
    stall: Arc<StallStats>,
    ramp: Duration,
    scrapes: Outcomes,
    flood: Outcomes,
    flood_time: Duration,
    slow: Outcomes,
    corpus: Vec<(&'static str, Expect, Result<Expect, String>)>,
    hog: (usize, usize),
    healthy_after: Result<net::Answer, String>,
    rss_idle_kib: u64,
    rss_stalled_kib: u64,
    peaks: daemon::Peaks,
}

async fn exercise(o: &HostileOptions, t: &Target, pid: u32) -> Result<Seen> {
    let local = Ipv4Addr::LOCALHOST;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (_, Ok(a)) = load::request(t, local, &t.get("/healthz")).await {
            if a.status == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("gupwatch run did not answer /healthz within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_idle_kib = daemon::status_field(pid, "VmRSS:").unwrap_or(0);
    let sampler = daemon::Sampler::start(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let stall = Arc::new(StallStats::default());
    let mut stallers = JoinSet::new();
    load::stallers(&mut stallers, t, o.stallers, &stall, &stop, Instant::now() + Duration::from_secs(180));
    let t0 = Instant::now();
    while (stall.connected.load(Ordering::Relaxed) as usize) < o.stallers && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = t0.elapsed();
    let rss_stalled_kib = daemon::status_field(pid, "VmRSS:").unwrap_or(0);
    let (scrapes, (flood_time, flood), slow, corpus, hog) = tokio::join!(
        load::scraper(t, o.scrapes),
        async {
            let t0 = Instant::now();
            let r = load::flood(t, o.flood_clients, o.flood_requests).await;
            (t0.elapsed(), r)
        },
        load::slow_readers(t, o.slow_readers),
        async {
            let mut v = Vec::new();
            for c in corpus::cases(&t.auth, t.tls.is_some()) {
                let got = corpus::run_case(t, &c).await;
                v.push((c.name, c.expect, got));
            }
            v
        },
        load::hog(t, HOG),
    );
    stop.store(true, Ordering::Relaxed);
    stallers.abort_all();
    while stallers.join_next().await.is_some() {}
    let (_, healthy_after) = load::request(t, local, &t.get("/healthz")).await;
    let peaks = sampler.finish();
    Ok(Seen { stall, ramp, scrapes, flood, flood_time, slow, corpus, hog, healthy_after, rss_idle_kib, rss_stalled_kib, peaks })
}

/// Status counts (`200 ×4862`) and errors of a group of requests.
fn summarize(outcomes: &Outcomes) -> (String, Vec<String>) {
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for (_, r) in outcomes {
        match r {
            Ok(a) => *counts.entry(a.status).or_default() += 1,
            Err(e) => *errors.entry(e.clone()).or_default() += 1,
        }
    }
    let mut s: Vec<String> = counts.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    s.extend(errors.iter().map(|(e, n)| format!("{e} ×{n}")));
    (s.join(", "), errors.keys().cloned().collect())
}

fn judge(o: &HostileOptions, s: &Seen, mode_tls: bool) -> Vec<Check> {
    let mut v = Vec::new();
    let peak = s.stall.peak.load(Ordering::Relaxed) as usize;
    let cut = s.stall.cut.load(Ordering::Relaxed);
    let longest = Duration::from_millis(s.stall.longest_ms.load(Ordering::Relaxed));
    let never = s.stall.never_cut.load(Ordering::Relaxed);
    v.push(check(
        format!("{} stalled clients held at once", o.stallers),
        peak >= o.stallers,
        format!(
            "peak {peak} connected and stalled ({:.1} s to connect them all); {} connects failed",
            s.ramp.as_secs_f64(),
            s.stall.failed.load(Ordering::Relaxed)
        ),
    ));
    v.push(check(
        "stalled clients cut at the head deadline, and reconnected",
        cut > 0 && never == 0 && longest <= HEAD_DEADLINE + CUT_SLACK,
        format!(
            "cut {cut} times, longest stall {:.2} s (deadline 5 s, slack {} s); {never} never cut",
            longest.as_secs_f64(),
            CUT_SLACK.as_secs()
        ),
    ));
    let mut times: Vec<Duration> = s.scrapes.iter().map(|(d, _)| *d).collect();
    let all_ok = s.scrapes.len() as u32 == o.scrapes
        && s.scrapes.iter().all(|(d, r)| *d <= SCRAPE_LIMIT && matches!(r, Ok(a) if a.status == 200));
    let list: Vec<String> = s
        .scrapes
        .iter()
        .map(|(d, r)| match r {
            Ok(a) => format!(
                "{} in {:.0} ms (connect{} {:.0} ms)",
                a.status,
                d.as_secs_f64() * 1000.0,
                if mode_tls { " + TLS" } else { "" },
                a.connect.as_secs_f64() * 1000.0
            ),
            Err(e) => format!("{e} after {:.0} ms", d.as_secs_f64() * 1000.0),
        })
        .collect();
    v.push(check(
        format!("every scrape of /metrics gets 200 within 1 s ({} scrapes, 1 a second)", o.scrapes),
        all_ok,
        format!("{}; max {:.0} ms", list.join(", "), load::quantile_ms(&mut times, 1.0)),
    ));
    let (counts, errors) = summarize(&s.flood);
    let shed_only = errors.is_empty() && s.flood.iter().all(|(_, r)| matches!(r, Ok(a) if a.status == 200 || a.status == 503));
    let mut ft: Vec<Duration> = s.flood.iter().map(|(d, _)| *d).collect();
    v.push(check(
        format!("flood of {} clients × {} requests: no error but 503 load shedding", o.flood_clients, o.flood_requests),
        shed_only && s.flood.len() == o.flood_clients * o.flood_requests,
        format!(
            "{} requests in {:.1} s: {counts}; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            s.flood.len(),
            s.flood_time.as_secs_f64(),
            load::quantile_ms(&mut ft, 0.5),
            load::quantile_ms(&mut ft, 0.99),
            load::quantile_ms(&mut ft, 1.0)
        ),
    ));
    let (counts, errors) = summarize(&s.slow);
    let mut st: Vec<Duration> = s.slow.iter().map(|(d, _)| *d).collect();
    v.push(check(
        format!("{} slow readers (4 KiB receive buffer, 256 B per 50 ms) read their answer to the end", o.slow_readers),
        errors.is_empty() && s.slow.len() == o.slow_readers && s.slow.iter().all(|(_, r)| matches!(r, Ok(a) if a.status == 200 || a.status == 503)),
        format!("{counts}; slowest {:.1} s", load::quantile_ms(&mut st, 1.0) / 1000.0),
    ));
    let (held, refused) = s.hog;
    v.push(check(
        format!("one address opening {HOG} connections: {PER_PEER_CAP} held, the rest refused at once"),
        held == PER_PEER_CAP && refused == HOG - PER_PEER_CAP,
        format!("{held} held, {refused} refused"),
    ));
    for (name, want, got) in &s.corpus {
        let ok = got.as_ref().is_ok_and(|g| g == want);
        let got = match got {
            Ok(g) => g.to_string(),
            Err(e) => e.clone(),
        };
        v.push(check(format!("malformed: {name} -> {want}"), ok, format!("got {got}")));
    }
    v.push(check(
        "healthy after the load",
        matches!(&s.healthy_after, Ok(a) if a.status == 200),
        format!("{:?}", s.healthy_after.as_ref().map(|a| a.status)),
    ));
    let p = s.peaks;
    v.push(check(
        format!("daemon RSS under {} MiB", RSS_LIMIT_KIB / 1024),
        p.samples > 0 && p.rss_kib < RSS_LIMIT_KIB,
        format!(
            "idle {:.1} MiB, with the stalled clients {:.1} MiB, peak {:.1} MiB ({} samples); peak threads {}, descriptors {}",
            s.rss_idle_kib as f64 / 1024.0,
            s.rss_stalled_kib as f64 / 1024.0,
            p.rss_kib as f64 / 1024.0,
            p.samples,
            p.threads,
            p.fds
        ),
    ));
    v
}

/// The checks of one mode, aligned.
pub fn render(r: &ModeReport) -> String {
    let width = r.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0).min(70);
    let mut out = format!("{} ({:.0} s; daemon log: {}):\n", r.mode.name(), r.elapsed.as_secs_f64(), r.log.display());
    for c in &r.checks {
        let _ = writeln!(out, "  {}  {:<width$}  {}", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    out
}
