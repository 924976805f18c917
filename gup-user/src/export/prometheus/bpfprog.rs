//! gupwatch's own BPF programs: whether the kernel counts their runs, and
//! per attached program its runs and the time spent in it
//! ([`crate::probes::bpfstats`], `gupwatch run --bpf-stats`).
//!
//! The per-program families have samples only while statistics are on:
//! off, the kernel leaves the counters at zero, and their series (two per
//! attached program) would take a node past its series budget for
//! nothing (docs/fleet.md).

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
    registry::Unit,
};

use super::gauge;
use crate::collect::Reading;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
    hook: String,
}

/// What a program of the eBPF object hooks (`fentry pin_user_pages_fast`).
fn hook(program: &str) -> String {
    if program == "sched_process_exit" {
        return "tracepoint sched/sched_process_exit".into();
    }
    crate::check::bench::hook_of(program)
}

pub(super) fn program_families(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    gauge(
        enc,
        "gupwatch_bpf_stats_enabled",
        "1 if the kernel counts BPF program runs and run time (gupwatch run --bpf-stats holds BPF_ENABLE_STATS, or the sysctl kernel.bpf_stats_enabled is 1), else 0; counting costs two clock reads per program run.",
        None,
        Some(i64::from(d.bpf_stats_enabled)),
    )?;
    let programs = if d.bpf_stats_enabled { &d.bpf_programs[..] } else { &[] };
    let labels = |p: &crate::probes::loader::ProgramRuns| ProgramLabels { program: p.program.clone(), hook: hook(&p.program) };
    let mut m = enc.encode_descriptor(
        "gupwatch_bpf_program_run",
        "Time the kernel spent running each of gupwatch's attached BPF programs while run statistics were on (run_time_ns of the program's info); samples only while gupwatch_bpf_stats_enabled is 1.",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    for p in programs {
        ConstCounter::new(p.run_time_ns as f64 / 1e9).encode(m.encode_family(&labels(p))?)?;
    }
    let mut m = enc.encode_descriptor(
        "gupwatch_bpf_program_runs",
        "Runs of each of gupwatch's attached BPF programs while run statistics were on (run_cnt of the program's info); samples only while gupwatch_bpf_stats_enabled is 1.",
        None,
        MetricType::Counter,
    )?;
    for p in programs {
        ConstCounter::new(p.runs).encode(m.encode_family(&labels(p))?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{
        export::prometheus::{render, tests::promtool_check, Format},
        probes::loader::ProgramRuns,
    };

    fn with_programs(enabled: bool) -> String {
        let mut d = (*crate::collect::fixture::sample()).clone();
        d.bpf_stats_enabled = enabled;
        d.bpf_programs = vec![
            ProgramRuns { program: "fe_1".into(), runs: 12, run_time_ns: 1_500_000_000 },
            ProgramRuns { program: "sched_process_exit".into(), runs: 3, run_time_ns: 900 },
        ];
        render(&Arc::new(d), Format::Prometheus)
    }

    #[test]
    fn runs_and_run_time_per_program_while_stats_are_on() {
        let text = with_programs(true);
        assert!(text.lines().any(|l| l == "gupwatch_bpf_stats_enabled 1"), "{text}");
        assert!(text.contains("# TYPE gupwatch_bpf_program_run_seconds_total counter"), "{text}");
        let want = r#"gupwatch_bpf_program_runs_total{program="fe_1",hook="fentry pin_user_pages_fast"} 12"#;
        assert!(text.lines().any(|l| l == want), "{text}");
        let want = r#"gupwatch_bpf_program_run_seconds_total{program="fe_1",hook="fentry pin_user_pages_fast"} 1.5"#;
        assert!(text.lines().any(|l| l == want), "{text}");
        assert!(text.contains(r#"program="sched_process_exit",hook="tracepoint sched/sched_process_exit"} 3"#), "{text}");
        promtool_check(&text);
        let om = render(&Arc::new((*crate::collect::fixture::sample()).clone()), Format::OpenMetrics);
        assert!(om.contains("# UNIT gupwatch_bpf_program_run_seconds seconds"), "{om}");
    }

    #[test]
    fn no_program_series_while_stats_are_off() {
        let text = with_programs(false);
        assert!(text.lines().any(|l| l == "gupwatch_bpf_stats_enabled 0"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("gupwatch_bpf_program_")), "{text}");
        // The families are still listed, so a dashboard query finds them.
        assert!(text.contains("# TYPE gupwatch_bpf_program_runs_total counter"), "{text}");
    }
}
