//! `docs/bench.md`: the current figures, one section per kernel series,
//! rewritten by `cargo xtask bench` on the counting clock (no history: a
//! new run replaces its kernel's section).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::summary::{Summary, MAX_SPREAD_PCT};

/// What a fresh `docs/bench.md` starts with (the sections follow).
const PREAMBLE: &str = "# What gupwatch costs: `cargo xtask bench`\n\n\
The tables below are written by `cargo xtask bench`; edit the text around them, not them.\n";

/// Human names of the workload kinds.
fn title(kind: &str) -> &str {
    match kind {
        "io-uring" => "io_uring register+unregister 1 MiB",
        "process-vm" => "process_vm_readv 1 MiB",
        "odirect" => "O_DIRECT 4 KiB read (null_blk)",
        other => other,
    }
}

/// `7.2` of `7.2.13+deb14-cloud-amd64`: the section key.
pub fn series(kernel: &str) -> String {
    let mut it = kernel.split(['.', '-', '+']);
    match (it.next(), it.next()) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => format!("{a}.{b}"),
        _ => kernel.to_string(),
    }
}

fn num(x: Option<f64>, decimals: usize) -> String {
    x.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

/// A ratio with each run's value and the spread: `0.875 (0.875, 0.876; 0.11 %)`.
fn with_runs(s: &Summary, kind: &str, figure: &str, mean: Option<f64>, decimals: usize) -> String {
    match s
        .spreads
        .iter()
        .find(|x| x.kind == kind && x.figure == figure)
    {
        Some(sp) => format!(
            "{} ({}; {:.2} %)",
            num(mean, decimals),
            sp.values
                .iter()
                .map(|v| format!("{v:.decimals$}"))
                .collect::<Vec<_>>()
                .join(", "),
            sp.spread_pct
        ),
        None => num(mean, decimals),
    }
}

/// The marker key of a kernel series' section; `empty`: the run with
/// programs that return at once, a section of its own.
pub fn key(kernel: &str, empty: bool) -> String {
    match empty {
        true => format!("{} empty-programs", series(kernel)),
        false => series(kernel),
    }
}

/// The section of one kernel series, markers included.
pub fn section(s: &Summary, command: &str, commit: &str, empty: bool) -> String {
    let key = key(&s.kernel, empty);
    let what = if empty {
        ", programs that return at once (what attaching alone costs: the floor any gupwatch program pays)"
    } else {
        ""
    };
    let mut o = format!("<!-- bench:begin {key} -->\n### Linux {}{what}\n\n", s.kernel);
    let _ = writeln!(
        o,
        "`{command}` at commit `{commit}`: QEMU TCG with `-icount shift=0` (guest time = instructions), \
         {} VM run(s) of {} round(s), {} s per run. Deterministic: **{}** (every ratio within {MAX_SPREAD_PCT} % \
         between the runs{}).\n",
        s.runs.len(),
        s.rounds,
        s.seconds,
        if s.deterministic { "yes" } else { "no" },
        if s.runs.len() < 2 { "; needs two runs" } else { "" },
    );
    o.push_str(
        "| workload | B/A (runs; spread) | C/A (runs; spread) | BPF runs/op | insns/hit in BPF | insns/hit, all (B−A) |\n\
         |---|---|---|---|---|---|\n",
    );
    for w in &s.workloads {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            title(&w.kind),
            with_runs(s, &w.kind, "b_over_a", w.b_over_a, 3),
            with_runs(s, &w.kind, "c_over_a", w.c_over_a, 3),
            num(w.hits_per_op, 1),
            num(w.insns_per_hit, 0),
            num(w.insns_per_hit_total, 0),
        );
    }
    o.push_str("\nWhere the BPF instructions go (share, instructions per run, runs per op; first run):\n\n");
    for w in &s.workloads {
        let progs: Vec<String> = w
            .programs
            .iter()
            .take(5)
            .map(|p| {
                format!(
                    "`{}` {:.1} % ({:.0}, {:.2})",
                    p.name,
                    p.share * 100.0,
                    p.insns_per_run,
                    p.runs_per_op
                )
            })
            .collect();
        let more = w.programs.len().saturating_sub(5);
        let _ = writeln!(
            o,
            "- {}: {}{}",
            title(&w.kind),
            if progs.is_empty() {
                "not measured".to_string()
            } else {
                progs.join(", ")
            },
            if more > 0 {
                format!(", and {more} more")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        o,
        "\nDaemon: peak RSS {}, {} of one CPU while attached and not scraped.\n",
        s.daemon
            .peak_rss_kib
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "–".into()),
        s.daemon
            .idle_cpu_share
            .map(|c| format!("{:.2} %", c * 100.0))
            .unwrap_or_else(|| "–".into()),
    );
    let _ = writeln!(o, "<!-- bench:end {key} -->");
    o
}

/// `text` with the section of `key` replaced by `new` (appended when absent).
pub fn splice(text: &str, key: &str, new: &str) -> String {
    let begin = format!("<!-- bench:begin {key} -->");
    let end = format!("<!-- bench:end {key} -->");
    if let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) {
        if b < e {
            let mut after = e + end.len();
            if text[after..].starts_with('\n') {
                after += 1;
            }
            return format!("{}{new}{}", &text[..b], &text[after..]);
        }
    }
    let mut out = text.to_string();
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(new);
    out
}

/// Writes `s`'s section into `path` (created with a short preamble).
pub fn update(path: &Path, s: &Summary, command: &str, commit: &str, empty: bool) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PREAMBLE.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = splice(&old, &key(&s.kernel, empty), &section(s, command, commit, empty));
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::super::summary::{combine, Daemon, Program, RunSummary, Workload};
    use super::*;

    fn summary() -> Summary {
        let run = |b: f64| RunSummary {
            kernel: "7.2.13+deb14-cloud-amd64".into(),
            workloads: vec![Workload {
                kind: "io-uring".into(),
                b_over_a: Some(b),
                c_over_a: Some(0.86),
                insns_per_hit: Some(5100.0),
                insns_per_hit_total: Some(6200.0),
                hits_per_op: Some(514.0),
                a_ops_per_sec: Some(200.0),
                programs: vec![Program {
                    name: "fexit unpin_user_folio".into(),
                    share: 0.451,
                    insns_per_run: 5210.0,
                    runs_per_op: 256.0,
                }],
            }],
            daemon: Daemon {
                peak_rss_kib: Some(28058),
                idle_cpu_share: Some(0.02),
            },
        };
        combine(vec![run(0.875), run(0.876)], true, 3, 3)
    }

    #[test]
    fn series_keys() {
        for (release, key) in [
            ("7.2.13+deb14-cloud-amd64", "7.2"),
            ("6.1.0-50-cloud-amd64", "6.1"),
            ("6.12.117+deb13-cloud-amd64", "6.12"),
            ("weird", "weird"),
        ] {
            assert_eq!(series(release), key, "{release}");
        }
    }

    #[test]
    fn section_has_runs_spreads_and_programs() {
        let t = section(&summary(), "cargo xtask bench", "abc1234", false);
        assert!(
            t.contains(
                "| io_uring register+unregister 1 MiB | 0.875 (0.875, 0.876; 0.11 %) | 0.860"
            ),
            "{t}"
        );
        assert!(t.contains("Deterministic: **yes**"), "{t}");
        assert!(
            t.contains("`fexit unpin_user_folio` 45.1 % (5210, 256.00)"),
            "{t}"
        );
        assert!(t.contains("peak RSS 27.4 MiB, 2.00 %"), "{t}");
    }

    #[test]
    fn splice_replaces_only_its_kernel() {
        let a = "<!-- bench:begin 6.1 -->\nold 6.1\n<!-- bench:end 6.1 -->\n";
        let doc = format!(
            "# t\n\nprose\n\n{a}\n<!-- bench:begin 7.2 -->\nold\n<!-- bench:end 7.2 -->\ntail\n"
        );
        let new = "<!-- bench:begin 7.2 -->\nnew\n<!-- bench:end 7.2 -->\n";
        let out = splice(&doc, "7.2", new);
        assert_eq!(out, format!("# t\n\nprose\n\n{a}\n{new}tail\n"));
        let added = splice("# t\n", "6.12", "S\n");
        assert_eq!(added, "# t\n\nS\n");
    }
}
