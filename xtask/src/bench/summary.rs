//! The machine-readable result of `cargo xtask bench`
//! (`target/bench/latest.json`) and the agreement between repeated runs.

use serde::{Deserialize, Serialize};

use super::parse::{median, ops_of, prog_deltas, runs, Line, Run};

/// Largest relative spread (percent) between repeated runs for a ratio to
/// count as reproduced.
pub const MAX_SPREAD_PCT: f64 = 0.5;

/// One BPF program's part of a workload's BPF cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// What it hooks (`fentry pin_user_pages_fast`), or its kernel name.
    pub name: String,
    /// Its share of the BPF run time of the workload (0..1).
    pub share: f64,
    /// Instructions per run (`run_time_ns / run_cnt` under icount; ns on
    /// the wall clock).
    pub insns_per_run: f64,
    /// Runs per workload operation.
    pub runs_per_op: f64,
}

/// One workload's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// `io-uring`, `process-vm` or `odirect`.
    pub kind: String,
    /// Throughput with gupwatch attached over without (median of rounds).
    pub b_over_a: Option<f64>,
    /// Throughput attached and scraped over without.
    pub c_over_a: Option<f64>,
    /// Instructions inside gupwatch's BPF programs per program run
    /// (bpf_stats; only on the counting clock).
    pub insns_per_hit: Option<f64>,
    /// All the extra instructions of B per program run: (insns/op B −
    /// insns/op A) / runs per op, so trampolines, kprobe entry and the
    /// daemon's own work are in (only on the counting clock).
    pub insns_per_hit_total: Option<f64>,
    /// BPF program runs per operation.
    pub hits_per_op: Option<f64>,
    /// Operations per guest second without gupwatch (median of rounds).
    pub a_ops_per_sec: Option<f64>,
    /// Per program, the costliest first.
    pub programs: Vec<Program>,
}

/// The daemon's footprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Daemon {
    /// Largest `VmHWM` seen.
    pub peak_rss_kib: Option<u64>,
    /// CPU share of the daemon while attached and not scraped (B).
    pub idle_cpu_share: Option<f64>,
}

/// The figures of one VM run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Guest `uname -r`.
    pub kernel: String,
    /// Per workload.
    pub workloads: Vec<Workload>,
    /// The daemon.
    pub daemon: Daemon,
}

/// How far repeated runs agree on one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Workload kind.
    pub kind: String,
    /// `b_over_a`, `c_over_a` or `insns_per_hit`.
    pub figure: String,
    /// The figure in each run.
    pub values: Vec<f64>,
    /// (max − min) / mean, in percent.
    pub spread_pct: f64,
}

/// `target/bench/latest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// On the instruction-counting clock, repeated, and every ratio within
    /// [`MAX_SPREAD_PCT`] between the runs.
    pub deterministic: bool,
    /// `icount` (guest time = instructions) or `wall`.
    pub clock: String,
    /// Guest `uname -r`.
    pub kernel: String,
    /// Seconds per measured run, rounds per VM run, VM runs.
    pub seconds: u64,
    /// Rounds of A B C per VM run.
    pub rounds: u32,
    /// Every workload figure is the mean over the VM runs; programs come
    /// from the first run.
    pub workloads: Vec<Workload>,
    /// Peak RSS over all runs, idle CPU share averaged.
    pub daemon: Daemon,
    /// Agreement of the runs, per ratio (empty with one run).
    pub spreads: Vec<Spread>,
    /// Each VM run's own figures.
    pub runs: Vec<RunSummary>,
}

fn ratio(x: Option<f64>, a: Option<f64>) -> Option<f64> {
    match (x, a) {
        (Some(x), Some(a)) if a > 0.0 => Some(x / a),
        _ => None,
    }
}

/// The median rate of one workload in one mode.
pub fn median_rate(runs: &[Run], kind: &str, mode: char) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.kind == kind && r.mode == mode)
            .map(Run::rate)
            .collect(),
    )
}

/// The workload kinds the guest announced.
pub fn kinds(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .find(|l| l.what == "info")
        .map(|l| {
            l.get("kinds")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn workload(lines: &[Line], rs: &[Run], kind: &str, icount: bool) -> Workload {
    let a = median_rate(rs, kind, 'A');
    let b = median_rate(rs, kind, 'B');
    let c = median_rate(rs, kind, 'C');
    let stats = lines
        .iter()
        .find(|l| l.what == "bpfstats" && l.get("kind") == kind);
    // (runs per op, BPF time per run) from the bpf_stats pass.
    let (hits_per_op, per_run) = match stats.and_then(|l| Some((l, ops_of(l)?))) {
        Some((l, (ops, _))) if ops > 0.0 => {
            let n = l.num("runs").unwrap_or(0.0);
            let t = l.num("run_ns").unwrap_or(0.0);
            (Some(n / ops), (n > 0.0).then(|| t / n))
        }
        _ => (None, None),
    };
    let per_op = |x: Option<f64>| x.filter(|r| *r > 0.0).map(|r| 1e9 / r);
    let total = match (per_op(a), per_op(b), hits_per_op) {
        (Some(ia), Some(ib), Some(h)) if h > 0.0 => Some((ib - ia) / h),
        _ => None,
    };
    let deltas = prog_deltas(lines, kind);
    let all: u64 = deltas.iter().map(|d| d.time).sum();
    let ops = stats.and_then(ops_of).map(|(o, _)| o).filter(|o| *o > 0.0);
    let programs = deltas
        .iter()
        .map(|d| Program {
            name: d.hook.clone(),
            share: if all > 0 {
                d.time as f64 / all as f64
            } else {
                0.0
            },
            insns_per_run: d.time as f64 / d.runs as f64,
            runs_per_op: ops.map_or(0.0, |o| d.runs as f64 / o),
        })
        .collect();
    Workload {
        kind: kind.to_string(),
        b_over_a: ratio(b, a),
        c_over_a: ratio(c, a),
        insns_per_hit: per_run.filter(|_| icount),
        insns_per_hit_total: total.filter(|_| icount),
        hits_per_op,
        a_ops_per_sec: a,
        programs,
    }
}

/// The figures of one VM run's lines.
pub fn summarize(lines: &[Line], icount: bool) -> RunSummary {
    let rs = runs(lines);
    let workloads = kinds(lines)
        .iter()
        .map(|k| workload(lines, &rs, k, icount))
        .collect();
    let hwm = lines
        .iter()
        .filter_map(|l| l.num("hwm"))
        .fold(0.0f64, f64::max);
    let b: Vec<&Run> = rs
        .iter()
        .filter(|r| r.mode == 'B' && r.daemon_ticks.is_some())
        .collect();
    let ticks: f64 = b.iter().filter_map(|r| r.daemon_ticks).sum();
    let secs: f64 = b.iter().map(|r| r.secs).sum();
    RunSummary {
        kernel: lines
            .iter()
            .find(|l| l.what == "info")
            .map(|l| l.get("uname").to_string())
            .unwrap_or_default(),
        workloads,
        daemon: Daemon {
            peak_rss_kib: (hwm > 0.0).then_some(hwm as u64),
            idle_cpu_share: (secs > 0.0).then(|| ticks / 100.0 / secs),
        },
    }
}

/// (max − min) / mean in percent; `None` with fewer than two values.
pub fn spread_pct(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (mean != 0.0).then(|| (max - min) / mean.abs() * 100.0)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The figure of a workload by name.
fn figure(w: &Workload, name: &str) -> Option<f64> {
    match name {
        "b_over_a" => w.b_over_a,
        "c_over_a" => w.c_over_a,
        "insns_per_hit" => w.insns_per_hit,
        "insns_per_hit_total" => w.insns_per_hit_total,
        _ => None,
    }
}

/// The spreads of every figure over the runs (each kind of the first run).
pub fn spreads(runs: &[RunSummary]) -> Vec<Spread> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for w in &first.workloads {
        for name in [
            "b_over_a",
            "c_over_a",
            "insns_per_hit",
            "insns_per_hit_total",
        ] {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.workloads.iter().find(|x| x.kind == w.kind))
                .filter_map(|x| figure(x, name))
                .collect();
            if let Some(s) = (values.len() == runs.len())
                .then(|| spread_pct(&values))
                .flatten()
            {
                out.push(Spread {
                    kind: w.kind.clone(),
                    figure: name.to_string(),
                    values,
                    spread_pct: s,
                });
            }
        }
    }
    out
}

/// Whether every ratio (B/A, C/A) agrees within [`MAX_SPREAD_PCT`]; the
/// per-hit figures are reported but not part of the verdict.
pub fn ratios_agree(spreads: &[Spread]) -> bool {
    spreads
        .iter()
        .filter(|s| s.figure.ends_with("_over_a"))
        .all(|s| s.spread_pct <= MAX_SPREAD_PCT)
}

/// Combines the runs: workload figures averaged, programs from the first.
pub fn combine(runs: Vec<RunSummary>, icount: bool, seconds: u64, rounds: u32) -> Summary {
    let spreads = spreads(&runs);
    let first = runs.first();
    let workloads = first
        .map(|f| {
            f.workloads
                .iter()
                .map(|w| {
                    let all: Vec<&Workload> = runs
                        .iter()
                        .filter_map(|r| r.workloads.iter().find(|x| x.kind == w.kind))
                        .collect();
                    let avg = |g: fn(&Workload) -> Option<f64>| {
                        let v: Vec<f64> = all.iter().filter_map(|x| g(x)).collect();
                        if v.len() == all.len() {
                            mean(&v)
                        } else {
                            None
                        }
                    };
                    Workload {
                        kind: w.kind.clone(),
                        b_over_a: avg(|x| x.b_over_a),
                        c_over_a: avg(|x| x.c_over_a),
                        insns_per_hit: avg(|x| x.insns_per_hit),
                        insns_per_hit_total: avg(|x| x.insns_per_hit_total),
                        hits_per_op: avg(|x| x.hits_per_op),
                        a_ops_per_sec: avg(|x| x.a_ops_per_sec),
                        programs: w.programs.clone(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let shares: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.daemon.idle_cpu_share)
        .collect();
    let daemon = Daemon {
        peak_rss_kib: runs.iter().filter_map(|r| r.daemon.peak_rss_kib).max(),
        idle_cpu_share: mean(&shares),
    };
    Summary {
        deterministic: icount && runs.len() >= 2 && !spreads.is_empty() && ratios_agree(&spreads),
        clock: if icount { "icount" } else { "wall" }.to_string(),
        kernel: first.map(|f| f.kernel.clone()).unwrap_or_default(),
        seconds,
        rounds,
        workloads,
        daemon,
        spreads,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: &str, b: f64, c: f64) -> Workload {
        Workload {
            kind: kind.into(),
            b_over_a: Some(b),
            c_over_a: Some(c),
            insns_per_hit: Some(5000.0),
            insns_per_hit_total: None,
            hits_per_op: Some(512.0),
            a_ops_per_sec: Some(100.0),
            programs: vec![],
        }
    }

    fn run(b: f64, c: f64) -> RunSummary {
        RunSummary {
            kernel: "7.2.13+deb14-cloud-amd64".into(),
            workloads: vec![w("io-uring", b, c)],
            daemon: Daemon {
                peak_rss_kib: Some(20000),
                idle_cpu_share: Some(0.01),
            },
        }
    }

    #[test]
    fn spread_is_relative_to_the_mean() {
        assert_eq!(spread_pct(&[1.0]), None);
        let s = spread_pct(&[0.875, 0.876]).unwrap();
        assert!((s - 0.1142).abs() < 0.001, "{s}");
    }

    #[test]
    fn two_close_runs_are_deterministic() {
        let s = combine(vec![run(0.875, 0.86), run(0.876, 0.861)], true, 3, 1);
        assert!(s.deterministic);
        assert_eq!(s.clock, "icount");
        assert!((s.workloads[0].b_over_a.unwrap() - 0.8755).abs() < 1e-9);
        // b_over_a, c_over_a, insns_per_hit (no total: it is None).
        assert_eq!(s.spreads.len(), 3);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.starts_with("{\"deterministic\":true"), "{json}");
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn far_runs_single_runs_and_wall_clock_are_not() {
        assert!(!combine(vec![run(0.875, 0.86), run(0.90, 0.861)], true, 3, 1).deterministic);
        assert!(!combine(vec![run(0.875, 0.86)], true, 3, 1).deterministic);
        assert!(!combine(vec![run(0.875, 0.86), run(0.875, 0.86)], false, 3, 1).deterministic);
    }
}
