//! The text report of one VM run of `cargo xtask bench`, one section per
//! function: header, throughput, probe cost, per-program cost, the daemon.

use std::fmt::Write as _;
use std::thread;
use std::time::Duration;

use super::parse::{median, ops_of, runs, Line, Run};
use super::summary::{self, RunSummary};
use super::{TARGET_RATIO, TARGET_RSS_KIB};

/// Scrapes the host made during one C run (wall-clock mode).
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
    /// The host's scrape sessions (wall-clock mode).
    pub sessions: Vec<ScrapeSession>,
    /// Accelerator (TCG/KVM).
    pub accel: String,
    /// The guest ran on the instruction-counting clock.
    pub icount: bool,
    /// Seconds per run asked for.
    pub seconds: u64,
    /// Rounds.
    pub rounds: u32,
    /// Wall-clock time of the VM.
    pub vm_secs: f64,
    /// The host's load averages (1, 5, 15 min) before and after the VM.
    pub host_load: Option<(String, String)>,
}

/// Formats an optional number, `-` when absent.
pub fn opt(x: Option<f64>, decimals: usize) -> String {
    x.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// A plain-text table; columns from `right_from` on are right-aligned.
pub fn table(rows: &[Vec<String>], right_from: usize) -> String {
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

/// Renders the report of one VM run.
pub fn report(inp: &Inputs) -> String {
    let runs = runs(&inp.lines);
    let sum = summary::summarize(&inp.lines, inp.icount);
    let mut o = header(inp);
    o.push_str(&throughput(inp, &runs, &sum));
    o.push_str(&probe_cost(inp, &runs, &sum));
    o.push_str(&programs(inp, &sum));
    o.push_str(&daemon(inp, &runs));
    o
}

fn header(inp: &Inputs) -> String {
    let info = inp.lines.iter().find(|l| l.what == "info");
    let mut o = String::new();
    let _ =
        writeln!(
        o,
        "gupwatch bench on {} ({}{}, {} vCPUs): {} round(s) of A B C, {} s per run; O_DIRECT on {}",
        info.map(|l| l.get("uname")).unwrap_or("?"),
        inp.accel,
        if inp.icount { ", -icount shift=0" } else { "" },
        info.map(|l| l.get("cpus")).unwrap_or("?"),
        inp.rounds,
        inp.seconds,
        info.map(|l| l.get("odirect")).filter(|s| !s.is_empty()).unwrap_or("?"),
    );
    let scraper = if inp.icount {
        "inside the guest"
    } else {
        "from the host"
    };
    let _ = writeln!(
        o,
        "  A: workload alone   B: + `gupwatch run` attached, not scraped   C: + /metrics scraped every second {scraper}"
    );
    if inp.icount {
        let _ = writeln!(
            o,
            "  Guest time counts instructions (1 ns = 1 instruction): ops/s is ops per 10^9 guest instructions,\n  \
             host load does not enter. C's scraper (busybox wget) runs in the guest, so its own cost is in C.\n  \
             These are reported figures, not assertions."
        );
    } else if inp.accel == "TCG" {
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
    o
}

/// B/A of each round against the same round's A.
fn per_round(runs: &[Run], kind: &str, mode: char) -> String {
    let of = |m: char| runs.iter().filter(move |r| r.kind == kind && r.mode == m);
    of(mode)
        .filter_map(|r| {
            let a = of('A').find(|x| x.round == r.round)?.rate();
            (a > 0.0).then(|| format!("{:.3}", r.rate() / a))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn throughput(inp: &Inputs, runs: &[Run], sum: &RunSummary) -> String {
    let unit = if inp.icount { "ops/Ginsn" } else { "ops/s" };
    let mut rows = vec![vec![
        "workload".to_string(),
        format!("A {unit}"),
        format!("B {unit}"),
        format!("C {unit}"),
        "B/A".into(),
        "C/A".into(),
        "B/A per round".into(),
        "C/A per round".into(),
    ]];
    let mut verdicts = Vec::new();
    for w in &sum.workloads {
        let k = w.kind.as_str();
        rows.push(vec![
            k.to_string(),
            opt(summary::median_rate(runs, k, 'A'), 1),
            opt(summary::median_rate(runs, k, 'B'), 1),
            opt(summary::median_rate(runs, k, 'C'), 1),
            opt(w.b_over_a, 3),
            opt(w.c_over_a, 3),
            per_round(runs, k, 'B'),
            per_round(runs, k, 'C'),
        ]);
        for (m, r) in [("B", w.b_over_a), ("C", w.c_over_a)] {
            if let Some(r) = r {
                let within = if r >= TARGET_RATIO { "within" } else { "over" };
                verdicts.push(format!("{k} {m} {} ({within})", pct(r)));
            }
        }
    }
    let mut o = String::from(
        "Throughput (median of the rounds; ratios > 1 are noise in gupwatch's favour)\n",
    );
    o.push_str(&table(&rows, 1));
    let _ = writeln!(
        o,
        "  target: at most {:.0}% slower (ratio >= {TARGET_RATIO:.2}): {}\n",
        (1.0 - TARGET_RATIO) * 100.0,
        verdicts.join(", ")
    );
    o
}

fn probe_cost(inp: &Inputs, runs: &[Run], sum: &RunSummary) -> String {
    let u = if inp.icount { "insns" } else { "ns" };
    let mut rows = vec![vec![
        "workload".to_string(),
        "pins/op".into(),
        "GUP calls/op".into(),
        "BPF runs/op".into(),
        format!("{u}/op A"),
        format!("{u}/op B"),
        format!("{u}/hit (B-A)"),
        format!("{u}/hit in BPF"),
    ]];
    for w in &sum.workloads {
        let b: Vec<&Run> = runs
            .iter()
            .filter(|r| r.kind == w.kind && r.mode == 'B')
            .collect();
        let ops: f64 = b.iter().map(|r| r.ops).sum();
        let pins: f64 = b.iter().map(|r| r.pins).sum();
        let calls: f64 = b.iter().filter_map(|r| r.calls).sum();
        let calls_per_op = (ops > 0.0 && b.iter().any(|r| r.calls.is_some())).then(|| calls / ops);
        let per_op = |m: char| {
            summary::median_rate(runs, &w.kind, m)
                .filter(|x| *x > 0.0)
                .map(|x| 1e9 / x)
        };
        let (ia, ib) = (per_op('A'), per_op('B'));
        let hits = w.hits_per_op.or(calls_per_op);
        let per_hit = match (ia, ib, hits) {
            (Some(a), Some(b), Some(h)) if h > 0.0 => Some((b - a) / h),
            _ => None,
        };
        let in_bpf = inp
            .lines
            .iter()
            .find(|l| l.what == "bpfstats" && l.get("kind") == w.kind)
            .filter(|l| ops_of(l).is_some())
            .and_then(|l| Some(l.num("run_ns")? / l.num("runs").filter(|n| *n > 0.0)?));
        rows.push(vec![
            w.kind.clone(),
            opt((ops > 0.0).then(|| pins / ops), 1),
            opt(calls_per_op, 2),
            opt(w.hits_per_op, 2),
            opt(ia, 0),
            opt(ib, 0),
            // A negative difference is noise (B ran faster than A).
            match per_hit {
                Some(v) if v < 0.0 => format!("{v:.0} (noise)"),
                other => opt(other, 0),
            },
            opt(in_bpf, 0),
        ]);
    }
    let mut o = format!(
        "Probe cost ({u}/hit (B-A) = ({u} per op with gupwatch - without) / BPF program runs per op; \
         'in BPF' = run_time_ns / run_cnt from bpf_stats, excluding trampoline entry/exit)\n"
    );
    o.push_str(&table(&rows, 1));
    o.push('\n');
    o
}

fn programs(inp: &Inputs, sum: &RunSummary) -> String {
    let u = if inp.icount { "insns" } else { "ns" };
    let mut rows = vec![vec![
        "workload".to_string(),
        "program".into(),
        "share".into(),
        format!("{u}/run"),
        "runs/op".into(),
    ]];
    for w in &sum.workloads {
        for p in &w.programs {
            rows.push(vec![
                w.kind.clone(),
                p.name.clone(),
                format!("{:.1}%", p.share * 100.0),
                format!("{:.0}", p.insns_per_run),
                format!("{:.2}", p.runs_per_op),
            ]);
        }
    }
    if rows.len() == 1 {
        return String::from("Per-program cost: not measured (no bench-bpfstats snapshots)\n\n");
    }
    let mut o =
        String::from("Per-program cost (share of the workload's BPF run time, from bpf_stats)\n");
    o.push_str(&table(&rows, 2));
    o.push('\n');
    o
}

/// Daemon CPU share and CPU seconds over the runs of one mode.
fn cpu_share(runs: &[Run], m: char) -> Option<(f64, f64)> {
    let rs: Vec<&Run> = runs
        .iter()
        .filter(|r| r.mode == m && r.daemon_ticks.is_some())
        .collect();
    let ticks: f64 = rs.iter().filter_map(|r| r.daemon_ticks).sum();
    let secs: f64 = rs.iter().map(|r| r.secs).sum();
    (secs > 0.0).then(|| (ticks / 100.0 / secs, ticks / 100.0))
}

fn daemon(inp: &Inputs, runs: &[Run]) -> String {
    let lines = &inp.lines;
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
    let mut o = String::new();
    let _ = writeln!(o, "The daemon (`gupwatch run`, {} instance(s))", ups.len());
    if let (Some(s), Some(c)) = (start_s, start_cpu) {
        let _ = writeln!(o, "  start-up to /healthz answering: {s:.1} s (median), {c:.2} s CPU (load, verify, attach)");
    }
    let verdict = if hwm <= 0.0 {
        "not measured"
    } else if hwm < TARGET_RSS_KIB as f64 {
        "within"
    } else {
        "OVER"
    };
    let _ = writeln!(
        o,
        "  peak RSS (VmHWM, max): {}   RSS at the end of C (median): {}   target < {}: {verdict}",
        mib(hwm),
        rss_end.map(mib).unwrap_or_else(|| "-".into()),
        mib(TARGET_RSS_KIB as f64),
    );
    if let Some((share, _)) = cpu_share(runs, 'B') {
        let _ = writeln!(
            o,
            "  CPU while attached, not scraped (B): {:.2}% of one CPU",
            share * 100.0
        );
    }
    o.push_str(&scraping(inp, runs));
    for w in lines.iter().filter(|l| l.what == "warn") {
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

/// The C lines: the daemon's CPU while scraped and the scrapes themselves.
fn scraping(inp: &Inputs, runs: &[Run]) -> String {
    let mut o = String::new();
    let c_runs: Vec<&Run> = runs.iter().filter(|r| r.mode == 'C').collect();
    let guest_scrapes: f64 = c_runs.iter().filter_map(|r| r.scrapes).sum();
    let ok = if inp.icount {
        guest_scrapes as u32
    } else {
        inp.sessions.iter().map(|s| s.ok).sum()
    };
    if let Some((share, cpu)) = cpu_share(runs, 'C') {
        let base = cpu_share(runs, 'B').map(|(s, _)| s).unwrap_or(0.0);
        let c_secs: f64 = c_runs.iter().map(|r| r.secs).sum();
        let per_scrape =
            (ok > 0).then(|| ((cpu - base * c_secs) / f64::from(ok) * 1000.0).max(0.0));
        let _ = writeln!(
            o,
            "  CPU while scraped every second (C): {:.2}% of one CPU{}",
            share * 100.0,
            per_scrape
                .map(|ms| format!(", about {ms:.0} ms of CPU per scrape"))
                .unwrap_or_default()
        );
    }
    if inp.icount {
        let _ = writeln!(o, "  in-guest scrapes during C: {ok} answered");
        return o;
    }
    let failed: u32 = inp.sessions.iter().map(|s| s.failed).sum();
    let lat: Duration = inp.sessions.iter().map(|s| s.latency).sum();
    let bytes = inp.sessions.iter().map(|s| s.bytes).max().unwrap_or(0);
    let _ = writeln!(
        o,
        "  host scrapes during C: {ok} answered, {failed} failed{}{}",
        if ok > 0 {
            format!(
                ", mean latency {:.0} ms",
                lat.as_secs_f64() * 1000.0 / f64::from(ok)
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
    o
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_lines;
    use super::*;

    pub(crate) const SAMPLE: &str = "\
noise
BENCH info kinds=io_uring,odirect uname=7.2.13+deb14-cloud-amd64 cpus=2 odirect=/dev/nullb0 det=0
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
BENCH bpfprogs kind=io_uring when=before json=[{\"id\":7,\"name\":\"fe_1\",\"hook\":\"fentry pin_user_pages_fast\",\"run_cnt\":0,\"run_time_ns\":0}]
BENCH bpfprogs kind=io_uring when=after json=[{\"id\":7,\"name\":\"fe_1\",\"hook\":\"fentry pin_user_pages_fast\",\"run_cnt\":400,\"run_time_ns\":400000}]
BENCH bpfstats kind=odirect cs=200 pins=2000 runs=8000 run_ns=800000 json={\"ops\":2000,\"seconds\":2.0}
BENCH daemon_end round=0 ticks=300 hwm=70500 rss=65000
BENCH done
";

    fn sample_inputs(icount: bool) -> Inputs {
        let sessions = vec![
            ScrapeSession {
                tag: "C 1 io_uring".into(),
                ok: 3,
                failed: 0,
                latency: Duration::from_millis(150),
                bytes: 40000,
            },
            ScrapeSession {
                tag: "C 1 odirect".into(),
                ok: 3,
                ..Default::default()
            },
        ];
        Inputs {
            lines: parse_lines(SAMPLE),
            sessions,
            accel: "TCG".into(),
            icount,
            seconds: 3,
            rounds: 1,
            vm_secs: 100.0,
            host_load: Some(("1.00 0.50 0.25".into(), "2.00 1.00 0.50".into())),
        }
    }

    #[test]
    fn parses_runs() {
        let lines = parse_lines(SAMPLE);
        assert_eq!(lines.len(), 16);
        let rs = runs(&lines);
        assert_eq!(rs.len(), 6);
        assert!((rs[0].rate() - 33.333).abs() < 0.01);
        assert_eq!(rs[1].rate(), 1000.0);
        assert_eq!(rs[2].calls, Some(190.0));
    }

    #[test]
    fn report_has_ratios_and_targets() {
        let text = report(&sample_inputs(false));
        assert!(
            text.contains("TCG") && text.contains("not assertions"),
            "{text}"
        );
        assert!(text.contains("O_DIRECT on /dev/nullb0"), "{text}");
        // io_uring: A 33.3 ops/s, B 31.7 (0.950), C 30.0 (0.900).
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("io_uring "))
            .unwrap();
        assert!(row.contains("0.950") && row.contains("0.900"), "{row}");
        assert!(
            text.contains("io_uring B -5.0% (over)") && text.contains("io_uring C -10.0% (over)"),
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
        // The one program took all of io_uring's BPF time, 1000 ns a run.
        let prog = text
            .lines()
            .find(|l| l.contains("fentry pin_user_pages_fast"))
            .unwrap();
        assert!(
            prog.contains("100.0%") && prog.contains("1000") && prog.contains("8.00"),
            "{prog}"
        );
        assert!(text.contains("peak RSS (VmHWM, max): 70.8 MiB"), "{text}");
        assert!(text.contains("OVER"), "{text}");
        assert!(text.contains("6 answered, 0 failed"), "{text}");
    }

    #[test]
    fn counting_clock_speaks_of_instructions() {
        let text = report(&sample_inputs(true));
        assert!(
            text.contains("-icount shift=0") && text.contains("insns/hit in BPF"),
            "{text}"
        );
        assert!(
            text.contains("A ops/Ginsn") && text.contains("inside the guest"),
            "{text}"
        );
    }
}
