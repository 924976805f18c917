//! `cargo xtask bench`: what gupwatch costs a pinning workload, measured in
//! one VM boot and reported as ratios (never asserted).
//!
//! Three modes, alternated round after round (A B C, A B C, ...) so that
//! drift of the shared host hits them alike:
//!
//! * **A**: the workload alone;
//! * **B**: with `gupwatch run` attached (metrics served, not scraped);
//! * **C**: as B, with `/metrics` scraped once a second from the host
//!   through the forwarded port (the guest tells the host when a C run
//!   starts and ends over QEMU's user network, so the scraper's own cost
//!   stays outside the guest, as a real Prometheus server's would).
//!
//! Workloads, each for a fixed duration: io_uring buffer registration and
//! unregistration, `process_vm_readv` of 1 MiB, and 4 KiB `O_DIRECT` reads,
//! each `gupwatch bench-workload --kind io-uring|process-vm|odirect
//! --seconds N` (which prints one JSON line, `{"kind":..,"ops":..,
//! "seconds":..,"ops_per_sec":..}`).
//!
//! Besides throughput: the daemon's start-up time, peak RSS (`VmHWM`), CPU
//! time (`utime+stime`) while idle-attached and while scraped, and the cost
//! of one probe hit: (time per op with gupwatch − without) / (BPF program
//! runs per op, counted with `kernel.bpf_stats_enabled` in a separate,
//! unmeasured pass). The report goes to stdout and to
//! `target/bench/latest.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::binary;
use crate::e2e::{free_port, http_get};
use crate::kernels::{self, Flavour};
use crate::qemu::{ConsoleEcho, Forward, VmRun};
use crate::say;
use crate::setup::{self, SetupOptions};
use crate::util;

/// gupwatch's metrics port in the guest.
const GUEST_PORT: u16 = 10483;
/// Slowdown target: throughput with gupwatch at least this share of without.
pub const TARGET_RATIO: f64 = 0.95;
/// Peak RSS target of the daemon, in KiB.
pub const TARGET_RSS_KIB: u64 = 64 * 1024;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Kernel alias or image path.
    pub kernel: String,
    /// Seconds per measured run.
    pub seconds: u64,
    /// Rounds of A B C.
    pub rounds: u32,
    /// Use the gupwatch built last.
    pub no_build: bool,
}

/// The guest script. `@SECS@`, `@ROUNDS@`, `@CTRL@` and `@PORT@` are
/// replaced; every result is a `BENCH ...` line on stdout, progress goes to
/// the console.
const GUEST_SCRIPT: &str = r#"S=@SECS@
R=@ROUNDS@
CTRL=@CTRL@
PORT=@PORT@
CAL=$(( S < 2 ? S : 2 ))
cs() { awk '{printf "%d\n", $1*100}' /proc/uptime; }
acq() { awk '$1=="nr_foll_pin_acquired" {print $2}' /proc/vmstat; }
calls() { timeout 10 wget -q -O - http://127.0.0.1:$PORT/metrics 2>/dev/null | awk '/^gupwatch_calls_total[{ ]/ {s+=$NF} END {printf "%.0f\n", s}'; }
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
kib() { awk -v k="$2:" '$1==k {print $2}' /proc/$1/status; }
bpfrun() { cat /proc/$1/fdinfo/* 2>/dev/null | awk '$1=="run_cnt:" {c+=$2} $1=="run_time_ns:" {t+=$2} END {printf "%.0f %.0f\n", c, t}'; }
ctl() { echo "$1" | timeout 5 nc 10.0.2.2 $CTRL >/dev/null 2>&1 || echo "BENCH warn control message not delivered: $1"; }
say() { echo "bench: $*" >&2; }
cd /mnt/scratch
if ! gupwatch bench-workload --help >/dev/null 2>&1; then
    echo "BENCH error this gupwatch has no bench-workload subcommand"; exit 8
fi
KINDS="io-uring process-vm odirect"
echo "BENCH info kinds=$(echo $KINDS | tr ' ' ,) uname=$(uname -r) cpus=$(nproc)"
# work KIND SECONDS: runs one workload; prints json=<its JSON line>.
work() {
    J=$(gupwatch bench-workload --kind "$1" --seconds "$2" --scratch /mnt/scratch) || return 1
    echo "json=$J"
}
D=""
one() {
    extra=""
    if [ -n "$D" ]; then h0=$(calls); c0=$(ticks $D); fi
    if [ "$1" = C ]; then ctl "scrape on $1 $2 $3"; fi
    a0=$(acq); t0=$(cs)
    out=$(work $3 $S) || { echo "BENCH error the $3 workload failed (mode $1, round $2)"; exit 5; }
    t1=$(cs); a1=$(acq)
    if [ "$1" = C ]; then ctl "scrape off $1 $2 $3"; fi
    if [ -n "$D" ]; then
        h1=$(calls); c1=$(ticks $D)
        extra="calls=$((h1 - h0)) dticks=$((c1 - c0)) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
    fi
    echo "BENCH run mode=$1 round=$2 kind=$3 cs=$((t1 - t0)) pins=$((a1 - a0)) $extra $out"
}
start_daemon() {
    t0=$(cs)
    gupwatch run --listen 0.0.0.0:$PORT 2>>/tmp/daemon.err &
    D=$!
    i=0
    while ! timeout 5 wget -q -O /dev/null http://127.0.0.1:$PORT/healthz 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 240 ] || ! kill -0 $D 2>/dev/null; then
            echo "BENCH error gupwatch run did not start serving"; tail -20 /tmp/daemon.err >&2; exit 6
        fi
        sleep 0.5
    done
    echo "BENCH daemon_up round=$1 cs=$(( $(cs) - t0 )) ticks=$(ticks $D) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
}
stop_daemon() {
    echo "BENCH daemon_end round=$1 ticks=$(ticks $D) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
    kill -TERM $D
    wait $D
    st=$?
    if [ $st -ne 0 ]; then echo "BENCH error gupwatch run exited with status $st"; tail -20 /tmp/daemon.err >&2; exit 7; fi
    D=""
}
say "warm-up (kinds: $KINDS)"
for k in $KINDS; do work $k 1 >/dev/null || { echo "BENCH error the $k workload failed (warm-up)"; exit 5; }; done
r=1
while [ $r -le $R ]; do
    say "round $r/$R: A, the workloads alone"
    for k in $KINDS; do one A $r $k; done
    start_daemon $r
    say "round $r/$R: B, gupwatch attached"
    for k in $KINDS; do one B $r $k; done
    say "round $r/$R: C, gupwatch attached, /metrics scraped every second"
    for k in $KINDS; do one C $r $k; done
    stop_daemon $r
    r=$((r + 1))
done
say "probe hits per operation (kernel.bpf_stats_enabled, not timed)"
start_daemon 0
if echo 1 > /proc/sys/kernel/bpf_stats_enabled 2>/dev/null; then
    for k in $KINDS; do
        set -- $(bpfrun $D); n0=$1; ns0=$2
        a0=$(acq); t0=$(cs)
        out=$(work $k $CAL) || { echo "BENCH error the $k workload failed (bpf_stats pass)"; exit 5; }
        t1=$(cs); a1=$(acq)
        set -- $(bpfrun $D)
        echo "BENCH bpfstats kind=$k cs=$((t1 - t0)) pins=$((a1 - a0)) runs=$(($1 - n0)) run_ns=$(($2 - ns0)) $out"
    done
    echo 0 > /proc/sys/kernel/bpf_stats_enabled
else
    echo "BENCH warn kernel.bpf_stats_enabled cannot be set: probe hits per op come from gupwatch_calls_total"
fi
stop_daemon 0
echo "BENCH done"
"#;

/// The guest script for these settings.
pub fn guest_script(seconds: u64, rounds: u32, ctrl_port: u16) -> String {
    GUEST_SCRIPT
        .replace("@SECS@", &seconds.to_string())
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@CTRL@", &ctrl_port.to_string())
        .replace("@PORT@", &GUEST_PORT.to_string())
}

// ---------------------------------------------------------------------------
// Parsing the guest's lines

/// One `BENCH <what> key=value ... [json=...]` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// `run`, `daemon_up`, `daemon_end`, `bpfstats`, `info`, `warn`, `error`, `done`.
    pub what: String,
    /// key=value pairs (the `json` value is the rest of the line).
    pub kv: BTreeMap<String, String>,
    /// The line after `BENCH <what> ` (for warnings and errors).
    pub text: String,
}

impl Line {
    fn num(&self, k: &str) -> Option<f64> {
        self.kv.get(k).and_then(|v| v.parse().ok())
    }
    fn get(&self, k: &str) -> &str {
        self.kv.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parses the `BENCH` lines of the guest's stdout.
pub fn parse_lines(stdout: &str) -> Vec<Line> {
    let mut out = Vec::new();
    for l in stdout.lines() {
        let Some(rest) = l.trim_end().strip_prefix("BENCH ") else {
            continue;
        };
        let (what, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut kv = BTreeMap::new();
        let mut t = text;
        while !t.is_empty() {
            t = t.trim_start();
            if let Some(j) = t.strip_prefix("json=") {
                kv.insert("json".to_string(), j.to_string());
                break;
            }
            let (word, next) = t.split_once(' ').unwrap_or((t, ""));
            if let Some((k, v)) = word.split_once('=') {
                kv.insert(k.to_string(), v.to_string());
            }
            t = next;
        }
        out.push(Line {
            what: what.to_string(),
            kv,
            text: text.to_string(),
        });
    }
    out
}

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// A, B or C.
    pub mode: char,
    /// Round number (from 1).
    pub round: u32,
    /// Workload kind.
    pub kind: String,
    /// Operations done.
    pub ops: f64,
    /// Seconds the run took.
    pub secs: f64,
    /// `nr_foll_pin_acquired` delta.
    pub pins: f64,
    /// Hooked GUP calls gupwatch counted during the run (B, C).
    pub calls: Option<f64>,
    /// Daemon CPU ticks (1/100 s) during the run (B, C).
    pub daemon_ticks: Option<f64>,
}

impl Run {
    /// Throughput.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops / self.secs
        } else {
            0.0
        }
    }
}

/// Ops and seconds of a line, from `bench-workload`'s JSON (its own
/// timing, which leaves out process start-up; the guest's timing if absent).
fn ops_of(l: &Line) -> Option<(f64, f64)> {
    let secs = l.num("cs")? / 100.0;
    let v: Value = serde_json::from_str(l.kv.get("json")?).ok()?;
    let ops = v.get("ops").and_then(Value::as_f64)?;
    let s = v
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| *s > 0.0)
        .unwrap_or(secs);
    Some((ops, s))
}

/// The measured runs.
pub fn runs(lines: &[Line]) -> Vec<Run> {
    lines
        .iter()
        .filter(|l| l.what == "run")
        .filter_map(|l| {
            let (ops, secs) = ops_of(l)?;
            Some(Run {
                mode: l.get("mode").chars().next()?,
                round: l.num("round")? as u32,
                kind: l.get("kind").to_string(),
                ops,
                secs,
                pins: l.num("pins").unwrap_or(0.0),
                calls: l.num("calls"),
                daemon_ticks: l.num("dticks"),
            })
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Scrapes the host made during one C run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapeSession {
    /// `C <round> <kind>`.
    pub tag: String,
    /// Answered 200.
    pub ok: u32,
    /// Failed or not 200.
    pub failed: u32,
    /// Sum of the latencies of the answered ones.
    pub latency: Duration,
    /// Bytes of the last answer.
    pub bytes: usize,
}

/// What the report is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Guest lines.
    pub lines: Vec<Line>,
    /// The host's scrape sessions.
    pub sessions: Vec<ScrapeSession>,
    /// Accelerator (TCG/KVM).
    pub accel: String,
    /// Seconds per run and rounds asked for.
    pub seconds: u64,
    /// Rounds.
    pub rounds: u32,
    /// Wall-clock time of the VM.
    pub vm_secs: f64,
    /// The host's load averages (1, 5, 15 min) before and after the VM.
    pub host_load: Option<(String, String)>,
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn table(rows: &[Vec<String>], right_from: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let mut line = String::from("  ");
        for (i, c) in r.iter().enumerate() {
            if i >= right_from {
                let _ = write!(line, "{c:>width$}  ", width = w[i]);
            } else {
                let _ = write!(line, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = w.iter().map(|x| "-".repeat(*x)).collect();
            out.push_str(&format!("  {}\n", rule.join("  ")));
        }
    }
    out
}

/// Renders the report.
pub fn report(inp: &Inputs) -> String {
    let lines = &inp.lines;
    let info = lines.iter().find(|l| l.what == "info");
    let kinds: Vec<String> = info
        .map(|l| {
            l.get("kinds")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let runs = runs(lines);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "gupwatch bench on {} ({}, {} vCPUs): {} round(s) of A B C, {} s per run",
        info.map(|l| l.get("uname")).unwrap_or("?"),
        inp.accel,
        info.map(|l| l.get("cpus")).unwrap_or("?"),
        inp.rounds,
        inp.seconds
    );
    let _ = writeln!(
        o,
        "  A: workload alone   B: + `gupwatch run` attached, not scraped   C: + /metrics scraped every second from the host"
    );
    if inp.accel == "TCG" {
        let _ = writeln!(
            o,
            "  NOTE: the guest runs under QEMU TCG (software CPU emulation, one host thread for all vCPUs) on a shared host.\n        \
             Absolute numbers are far below real hardware and BPF/trampoline costs are distorted relative to the workload;\n        \
             the ratios are indicative only. These are reported figures, not assertions."
        );
    } else {
        let _ = writeln!(o, "  These are reported figures, not assertions.");
    }
    if let Some((before, after)) = &inp.host_load {
        let _ = writeln!(
            o,
            "  host load average (1/5/15 min): {before} before, {after} after, on {} host CPUs",
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
    }
    o.push('\n');

    // Throughput.
    let mut rows = vec![vec![
        "workload".to_string(),
        "A ops/s".into(),
        "B ops/s".into(),
        "C ops/s".into(),
        "B/A".into(),
        "C/A".into(),
        "B/A per round".into(),
        "C/A per round".into(),
    ]];
    // (kind, median rate of A, B, C)
    type KindRates = (String, Option<f64>, Option<f64>, Option<f64>);
    let mut per_kind: Vec<KindRates> = Vec::new();
    for k in &kinds {
        let of = |m: char| -> Vec<&Run> {
            runs.iter()
                .filter(|r| &r.kind == k && r.mode == m)
                .collect()
        };
        let med = |m: char| median(of(m).iter().map(|r| r.rate()).collect());
        let (a, b, c) = (med('A'), med('B'), med('C'));
        let paired = |m: char| -> String {
            let v: Vec<String> = of(m)
                .iter()
                .filter_map(|r| {
                    let a = of('A').into_iter().find(|x| x.round == r.round)?.rate();
                    (a > 0.0).then(|| format!("{:.3}", r.rate() / a))
                })
                .collect();
            v.join(" ")
        };
        let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let ratio = |x: Option<f64>| match (x, a) {
            (Some(x), Some(a)) if a > 0.0 => format!("{:.3}", x / a),
            _ => "-".into(),
        };
        rows.push(vec![
            k.clone(),
            f(a),
            f(b),
            f(c),
            ratio(b),
            ratio(c),
            paired('B'),
            paired('C'),
        ]);
        per_kind.push((k.clone(), a, b, c));
    }
    let _ = writeln!(
        o,
        "Throughput (median of the rounds; ratios > 1 are noise in gupwatch's favour)"
    );
    o.push_str(&table(&rows, 1));
    // Targets.
    let mut verdicts = Vec::new();
    for (k, a, b, c) in &per_kind {
        for (m, x) in [("B", b), ("C", c)] {
            if let (Some(x), Some(a)) = (x, a) {
                if *a > 0.0 {
                    let r = x / a;
                    verdicts.push(format!(
                        "{k} {m} {} ({})",
                        pct(r),
                        if r >= TARGET_RATIO { "within" } else { "over" }
                    ));
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "  target: at most 5% slower (ratio >= {TARGET_RATIO:.2}): {}",
        verdicts.join(", ")
    );
    o.push('\n');

    // Probe cost.
    let bpf: BTreeMap<String, &Line> = lines
        .iter()
        .filter(|l| l.what == "bpfstats")
        .map(|l| (l.get("kind").to_string(), l))
        .collect();
    let mut rows = vec![vec![
        "workload".to_string(),
        "pins/op".into(),
        "GUP calls/op".into(),
        "BPF runs/op".into(),
        "ns/op A".into(),
        "ns/op B".into(),
        "ns/hit (B-A)".into(),
        "ns/hit in BPF".into(),
    ]];
    for (k, a, b, _) in &per_kind {
        let unit_ops: Vec<&Run> = runs
            .iter()
            .filter(|r| &r.kind == k && r.mode == 'B')
            .collect();
        let ops: f64 = unit_ops.iter().map(|r| r.ops).sum();
        let pins: f64 = unit_ops.iter().map(|r| r.pins).sum();
        let calls: f64 = unit_ops.iter().filter_map(|r| r.calls).sum();
        let pins_per_op = (ops > 0.0).then(|| pins / ops);
        let calls_per_op =
            (ops > 0.0 && unit_ops.iter().any(|r| r.calls.is_some())).then(|| calls / ops);
        let (runs_per_op, bpf_ns) = match bpf.get(k).and_then(|l| Some((l, ops_of(l)?))) {
            Some((l, (bops, _))) if bops > 0.0 => {
                let n = l.num("runs").unwrap_or(0.0);
                (
                    Some(n / bops),
                    (n > 0.0).then(|| l.num("run_ns").unwrap_or(0.0) / n),
                )
            }
            _ => (None, None),
        };
        let hits = runs_per_op.or(calls_per_op);
        let ns_a = a.filter(|x| *x > 0.0).map(|x| 1e9 / x);
        let ns_b = b.filter(|x| *x > 0.0).map(|x| 1e9 / x);
        let per_hit = match (ns_a, ns_b, hits) {
            (Some(na), Some(nb), Some(h)) if h > 0.0 => Some((nb - na) / h),
            _ => None,
        };
        let f =
            |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
        // A negative difference is noise (B ran faster than A).
        let per_hit_text = match per_hit {
            Some(v) if v < 0.0 => format!("{v:.0} (noise)"),
            other => f(other, 0),
        };
        rows.push(vec![
            k.clone(),
            f(pins_per_op, 1),
            f(calls_per_op, 2),
            f(runs_per_op, 2),
            f(ns_a, 0),
            f(ns_b, 0),
            per_hit_text,
            f(bpf_ns, 0),
        ]);
    }
    let _ = writeln!(
        o,
        "Probe cost (ns/hit (B-A) = (time per op with gupwatch - without) / BPF program runs per op; \
         'in BPF' = run_time_ns / run_cnt from bpf_stats, excluding trampoline entry/exit)"
    );
    o.push_str(&table(&rows, 1));
    o.push('\n');

    // The daemon.
    let ups: Vec<&Line> = lines.iter().filter(|l| l.what == "daemon_up").collect();
    let ends: Vec<&Line> = lines.iter().filter(|l| l.what == "daemon_end").collect();
    let hwm = lines
        .iter()
        .filter_map(|l| l.num("hwm"))
        .fold(0.0f64, f64::max);
    let rss_end = median(ends.iter().filter_map(|l| l.num("rss")).collect());
    let start_s = median(
        ups.iter()
            .filter_map(|l| l.num("cs"))
            .map(|c| c / 100.0)
            .collect(),
    );
    let start_cpu = median(
        ups.iter()
            .filter_map(|l| l.num("ticks"))
            .map(|c| c / 100.0)
            .collect(),
    );
    let cpu_share = |m: char| -> Option<(f64, f64)> {
        let rs: Vec<&Run> = runs
            .iter()
            .filter(|r| r.mode == m && r.daemon_ticks.is_some())
            .collect();
        let ticks: f64 = rs.iter().filter_map(|r| r.daemon_ticks).sum();
        let secs: f64 = rs.iter().map(|r| r.secs).sum();
        (secs > 0.0).then(|| (ticks / 100.0 / secs, ticks / 100.0))
    };
    let ok: u32 = inp.sessions.iter().map(|s| s.ok).sum();
    let failed: u32 = inp.sessions.iter().map(|s| s.failed).sum();
    let lat: Duration = inp.sessions.iter().map(|s| s.latency).sum();
    let bytes = inp.sessions.iter().map(|s| s.bytes).max().unwrap_or(0);
    let _ = writeln!(o, "The daemon (`gupwatch run`, {} instance(s))", ups.len());
    if let (Some(s), Some(c)) = (start_s, start_cpu) {
        let _ = writeln!(o, "  start-up to /healthz answering: {s:.1} s (median), {c:.2} s CPU (load, verify, attach)");
    }
    let _ = writeln!(
        o,
        "  peak RSS (VmHWM, max): {}   RSS at the end of C (median): {}   target < {}: {}",
        mib(hwm),
        rss_end.map(mib).unwrap_or_else(|| "-".into()),
        mib(TARGET_RSS_KIB as f64),
        if hwm <= 0.0 {
            "not measured"
        } else if hwm < TARGET_RSS_KIB as f64 {
            "within"
        } else {
            "OVER"
        }
    );
    if let Some((share, _)) = cpu_share('B') {
        let _ = writeln!(
            o,
            "  CPU while attached, not scraped (B): {:.2}% of one CPU",
            share * 100.0
        );
    }
    if let Some((share, cpu)) = cpu_share('C') {
        let base = cpu_share('B').map(|(s, _)| s).unwrap_or(0.0);
        let c_secs: f64 = runs.iter().filter(|r| r.mode == 'C').map(|r| r.secs).sum();
        let per_scrape = if ok > 0 {
            Some(((cpu - base * c_secs) / ok as f64 * 1000.0).max(0.0))
        } else {
            None
        };
        let _ = writeln!(
            o,
            "  CPU while scraped every second (C): {:.2}% of one CPU{}",
            share * 100.0,
            per_scrape
                .map(|ms| format!(", about {ms:.0} ms of CPU per scrape"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        o,
        "  host scrapes during C: {ok} answered, {failed} failed{}{}",
        if ok > 0 {
            format!(
                ", mean latency {:.0} ms",
                lat.as_secs_f64() * 1000.0 / ok as f64
            )
        } else {
            String::new()
        },
        if bytes > 0 {
            format!(", {} KiB per answer", bytes / 1024)
        } else {
            String::new()
        }
    );
    let warns: Vec<&Line> = lines.iter().filter(|l| l.what == "warn").collect();
    for w in warns {
        let _ = writeln!(o, "  warning: {}", w.text);
    }
    let _ = writeln!(
        o,
        "\n(VM time {:.0} s; guest lines parsed: {})",
        inp.vm_secs,
        lines.len()
    );
    o
}

// ---------------------------------------------------------------------------
// The host side of C: a control listener and a scraper

#[derive(Default)]
struct Scraping {
    active: Option<(ScrapeSession, Instant)>,
    done: Vec<ScrapeSession>,
    messages: u32,
}

fn control_thread(
    listener: TcpListener,
    state: Arc<Mutex<Scraping>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 256];
                    while !buf.contains(&b'\n') && buf.len() < 4096 {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let msg = String::from_utf8_lossy(&buf).trim().to_string();
                    let Ok(mut st) = state.lock() else { return };
                    st.messages += 1;
                    if let Some(tag) = msg.strip_prefix("scrape on ") {
                        st.active = Some((
                            ScrapeSession {
                                tag: tag.to_string(),
                                ..Default::default()
                            },
                            Instant::now(),
                        ));
                    } else if msg.starts_with("scrape off") {
                        if let Some((s, _)) = st.active.take() {
                            st.done.push(s);
                        }
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

fn scraper_thread(
    port: u16,
    state: Arc<Mutex<Scraping>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let active = state.lock().map(|s| s.active.is_some()).unwrap_or(false);
            if !active || Instant::now() < next {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            next = Instant::now() + Duration::from_secs(1);
            let t = Instant::now();
            let res = http_get(port, "/metrics", Duration::from_secs(5));
            let took = t.elapsed();
            if let Ok(mut st) = state.lock() {
                if let Some((s, _)) = st.active.as_mut() {
                    match res {
                        Ok((200, body)) => {
                            s.ok += 1;
                            s.latency += took;
                            s.bytes = body.len();
                        }
                        _ => s.failed += 1,
                    }
                }
            }
        }
    })
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

/// Runs the benchmark; prints the report and saves it.
pub fn run(o: &BenchOptions) -> Result<i32> {
    if o.seconds == 0 || o.rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }
    setup::run(&SetupOptions {
        refresh: false,
        no_kernels: true,
    })?;
    let kernel = kernels::resolve_spec(&o.kernel, Flavour::Cloud, None)?;
    let gupwatch = if o.no_build {
        binary::static_gupwatch_path()
    } else {
        binary::build_static_gupwatch()?
    };
    if !gupwatch.is_file() {
        bail!(
            "{} does not exist: run without --no-build",
            gupwatch.display()
        );
    }
    let metrics_port = free_port()?;
    let ctrl = TcpListener::bind("127.0.0.1:0").context("binding the control port")?;
    let ctrl_port = ctrl.local_addr()?.port();
    let state = Arc::new(Mutex::new(Scraping::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = [
        control_thread(ctrl, Arc::clone(&state), Arc::clone(&stop)),
        scraper_thread(metrics_port, Arc::clone(&state), Arc::clone(&stop)),
    ];

    // 3 kinds at most; each run plus its bookkeeping takes S + ~5 s under
    // TCG, a daemon start ~10 s.
    let per_round = 3 * 3 * (o.seconds + 5) + 30;
    let timeout = 120 + u64::from(o.rounds) * per_round + 3 * (o.seconds.min(2) + 5) + 30;
    let mut run = VmRun::new(kernel, guest_script(o.seconds, o.rounds, ctrl_port));
    run.gupwatch = Some(gupwatch);
    run.forwards = vec![Forward {
        host: metrics_port,
        guest: GUEST_PORT,
    }];
    run.timeout = Duration::from_secs(timeout);
    run.echo = ConsoleEcho::AfterInit;
    run.stream_stdout = false;
    run.tag = "bench".into();
    say!(
        "bench",
        "{} round(s) x 3 modes x {} s per run in one VM (at most {} s); guest port {GUEST_PORT} -> 127.0.0.1:{metrics_port}, control 10.0.2.2:{ctrl_port}",
        o.rounds,
        o.seconds,
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
    let raw_path = dir.join("latest-raw.txt");
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
    let sessions = {
        let st = state
            .lock()
            .map_err(|_| anyhow::anyhow!("scrape state poisoned"))?;
        st.done.clone()
    };
    let text = report(&Inputs {
        lines,
        sessions,
        accel: outcome.accel.to_string(),
        seconds: o.seconds,
        rounds: o.rounds,
        vm_secs: outcome.elapsed.as_secs_f64(),
        host_load,
    });
    print!("{text}");
    let path = dir.join("latest.txt");
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    say!(
        "bench",
        "report saved to {} (raw guest output: {})",
        path.display(),
        raw_path.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
noise
BENCH info kinds=io_uring,odirect uname=7.2.13+deb14-cloud-amd64 cpus=2
BENCH run mode=A round=1 kind=io_uring cs=300 pins=25600  json={\"kind\":\"io_uring\",\"ops\":100,\"seconds\":3.0}
BENCH run mode=A round=1 kind=odirect cs=300 pins=3000  json={\"kind\":\"Odirect\",\"ops\":3000,\"seconds\":3.0}
BENCH daemon_up round=1 cs=600 ticks=250 hwm=70000 rss=65000
BENCH run mode=B round=1 kind=io_uring cs=300 pins=24320 calls=190 dticks=3 hwm=71000 rss=66000 json={\"kind\":\"io_uring\",\"ops\":95,\"seconds\":3.0}
BENCH run mode=B round=1 kind=odirect cs=300 pins=2900 calls=5800 dticks=2 hwm=71000 rss=66000 json={\"ops\":2900,\"seconds\":3.0}
BENCH run mode=C round=1 kind=io_uring cs=300 pins=23040 calls=180 dticks=30 hwm=72000 rss=66000 json={\"kind\":\"io_uring\",\"ops\":90,\"seconds\":3.0}
BENCH run mode=C round=1 kind=odirect cs=300 pins=2700 calls=5400 dticks=33 hwm=72000 rss=66000 json={\"ops\":2700}
BENCH daemon_end round=1 ticks=400 hwm=72500 rss=66000
BENCH daemon_up round=0 cs=600 ticks=250 hwm=70000 rss=65000
BENCH bpfstats kind=io_uring cs=200 pins=12800 runs=400 run_ns=400000 json={\"kind\":\"io_uring\",\"ops\":50,\"seconds\":2.0}
BENCH bpfstats kind=odirect cs=200 pins=2000 runs=8000 run_ns=800000 json={\"ops\":2000,\"seconds\":2.0}
BENCH daemon_end round=0 ticks=300 hwm=70500 rss=65000
BENCH done
";

    #[test]
    fn parses_lines_and_runs() {
        let lines = parse_lines(SAMPLE);
        assert_eq!(lines.len(), 14);
        assert_eq!(lines[0].get("kinds"), "io_uring,odirect");
        let rs = runs(&lines);
        assert_eq!(rs.len(), 6);
        assert_eq!(rs[0].ops, 100.0);
        assert!((rs[0].rate() - 33.333).abs() < 0.01);
        assert_eq!(rs[1].rate(), 1000.0);
        assert_eq!(rs[2].calls, Some(190.0));
    }

    #[test]
    fn report_has_ratios_and_targets() {
        let mut sessions = vec![ScrapeSession {
            tag: "C 1 io_uring".into(),
            ok: 3,
            failed: 0,
            latency: Duration::from_millis(150),
            bytes: 40000,
        }];
        sessions.push(ScrapeSession {
            tag: "C 1 odirect".into(),
            ok: 3,
            ..Default::default()
        });
        let text = report(&Inputs {
            lines: parse_lines(SAMPLE),
            sessions,
            accel: "TCG".into(),
            seconds: 3,
            rounds: 1,
            vm_secs: 100.0,
            host_load: Some(("1.00 0.50 0.25".into(), "2.00 1.00 0.50".into())),
        });
        assert!(text.contains("TCG"), "{text}");
        assert!(text.contains("not assertions"), "{text}");
        // io_uring: A 33.3 ops/s, B 31.7 (0.950), C 30.0 (0.900).
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("io_uring "))
            .unwrap();
        assert!(row.contains("0.950") && row.contains("0.900"), "{row}");
        assert!(
            text.contains("io_uring B -5.0% (within)") && text.contains("io_uring C -10.0% (over)"),
            "{text}"
        );
        // Probe cost: 8 runs/op for io_uring; ns/op A 30e6, B 31.58e6 -> 197368 ns/hit.
        let cost = text
            .lines()
            .filter(|l| l.trim_start().starts_with("io_uring "))
            .nth(1)
            .unwrap();
        assert!(
            cost.contains("8.00") && cost.contains("197368") && cost.contains("1000"),
            "{cost}"
        );
        assert!(text.contains("peak RSS (VmHWM, max): 70.8 MiB"), "{text}");
        assert!(text.contains("OVER"), "{text}");
        assert!(text.contains("6 answered, 0 failed"), "{text}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn script_is_filled_in() {
        let s = guest_script(3, 2, 4444);
        assert!(s.starts_with("S=3\nR=2\nCTRL=4444\nPORT=10483\n"));
        assert!(!s.contains('@'));
    }
}
