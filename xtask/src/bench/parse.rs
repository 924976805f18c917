//! Parsing the guest's `BENCH` lines into runs and BPF statistics.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `BENCH <what> key=value ... [json=...]` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// `run`, `daemon_up`, `daemon_end`, `bpfstats`, `bpfprogs`, `info`,
    /// `warn`, `error`, `done`.
    pub what: String,
    /// key=value pairs (the `json` value is the rest of the line).
    pub kv: BTreeMap<String, String>,
    /// The line after `BENCH <what> ` (for warnings and errors).
    pub text: String,
}

impl Line {
    /// A numeric value.
    pub fn num(&self, k: &str) -> Option<f64> {
        self.kv.get(k).and_then(|v| v.parse().ok())
    }
    /// A value, or "" when absent.
    pub fn get(&self, k: &str) -> &str {
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

/// What `gupwatch bench-workload` prints (the fields the report uses).
#[derive(Debug, Deserialize)]
struct WorkloadJson {
    ops: f64,
    #[serde(default)]
    seconds: Option<f64>,
}

/// One program in `gupwatch bench-bpfstats`' output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProgSnapshot {
    /// Kernel program id.
    pub id: u32,
    /// Kernel name (`fe_1`, ...).
    pub name: String,
    /// What it hooks (`fentry pin_user_pages_fast`).
    pub hook: String,
    /// Runs since load.
    pub run_cnt: u64,
    /// Run time since load (instructions under icount).
    pub run_time_ns: u64,
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
    /// Scrapes made from inside the guest during the run (C, counting clock).
    pub scrapes: Option<f64>,
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
pub fn ops_of(l: &Line) -> Option<(f64, f64)> {
    let secs = l.num("cs")? / 100.0;
    let v: WorkloadJson = serde_json::from_str(l.kv.get("json")?).ok()?;
    let s = v.seconds.filter(|s| *s > 0.0).unwrap_or(secs);
    Some((v.ops, s))
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
                scrapes: l.num("scrapes"),
            })
        })
        .collect()
}

/// One program's work during a workload's bpf_stats pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgDelta {
    /// What it hooks (or its name).
    pub hook: String,
    /// Runs during the pass.
    pub runs: u64,
    /// Run time during the pass (instructions under icount).
    pub time: u64,
}

/// Per program, what a workload's bpf_stats pass added (the `before` and
/// `after` snapshots of `bpfprogs` lines), programs that did not run left
/// out, the costliest first.
pub fn prog_deltas(lines: &[Line], kind: &str) -> Vec<ProgDelta> {
    let snap = |when: &str| -> Option<Vec<ProgSnapshot>> {
        let l = lines
            .iter()
            .find(|l| l.what == "bpfprogs" && l.get("kind") == kind && l.get("when") == when)?;
        serde_json::from_str(l.kv.get("json")?).ok()
    };
    let (Some(before), Some(after)) = (snap("before"), snap("after")) else {
        return Vec::new();
    };
    let mut out: Vec<ProgDelta> = after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            let runs = a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt));
            let time = a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns));
            (runs > 0).then(|| ProgDelta {
                hook: a.hook.clone(),
                runs,
                time,
            })
        })
        .collect();
    out.sort_by(|x, y| y.time.cmp(&x.time).then_with(|| x.hook.cmp(&y.hook)));
    out
}

/// The median of the finite values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn program_deltas_by_id() {
        let text = r#"BENCH bpfprogs kind=io-uring when=before json=[{"id":7,"name":"fe_1","hook":"fentry pin_user_pages_fast","run_cnt":10,"run_time_ns":1000},{"id":8,"name":"fx_1","hook":"fexit pin_user_pages_fast","run_cnt":10,"run_time_ns":500}]
BENCH bpfprogs kind=io-uring when=after json=[{"id":7,"name":"fe_1","hook":"fentry pin_user_pages_fast","run_cnt":30,"run_time_ns":5000},{"id":8,"name":"fx_1","hook":"fexit pin_user_pages_fast","run_cnt":10,"run_time_ns":500},{"id":9,"name":"kp_3","hook":"kprobe pin_user_pages_remote","run_cnt":5,"run_time_ns":9000}]
"#;
        let d = prog_deltas(&parse_lines(text), "io-uring");
        assert_eq!(
            d,
            vec![
                ProgDelta {
                    hook: "kprobe pin_user_pages_remote".into(),
                    runs: 5,
                    time: 9000
                },
                ProgDelta {
                    hook: "fentry pin_user_pages_fast".into(),
                    runs: 20,
                    time: 4000
                },
            ]
        );
        assert!(prog_deltas(&parse_lines(text), "odirect").is_empty());
    }
}
