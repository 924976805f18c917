//! Every family's name, type, labels and values, escaping, both formats,
//! and promtool's verdict, on the fixture readings.

use std::sync::Arc;

use gup_common::{Api, ApiKind, ATTRIB_CAPACITY, LATENCY_BUCKETS};

use gup_report::Subsystem;

use super::*;
use crate::{
    collect::{fixture::{plan, sample}, Settings, TopProcesses},
    export::api::{callers_json, snapshot_json, MAX_JSON_CALLERS},
    kernel::vmstat::FollPinCounters,
};

/// The sample lines of a family (exact name match before `{` or ` `).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"));
    line[series.len() + 1..].trim().parse().unwrap()
}

/// Each series has its value in the exposition.
fn assert_values(text: &str, expected: &[(&str, f64)]) {
    for (series, want) in expected {
        assert_eq!(value(text, series), *want, "{series}");
    }
}

#[test]
fn families_have_help_type_and_prefix() {
    let text = render(&sample(), Format::Prometheus);
    for (name, ty) in [
        ("gupwatch_calls_total", "counter"),
        ("gupwatch_pinned_pages_total", "counter"),
        ("gupwatch_referenced_pages_total", "counter"),
        ("gupwatch_unpinned_pages_total", "counter"),
        ("gupwatch_undone_pin_pages_total", "counter"),
        ("gupwatch_reverted_pin_pages_total", "counter"),
        ("gupwatch_failed_calls_total", "counter"),
        ("gupwatch_short_calls_total", "counter"),
        ("gupwatch_fast_path_pages_total", "counter"),
        ("gupwatch_slow_path_pages_total", "counter"),
        ("gupwatch_fast_path_fallback_calls_total", "counter"),
        ("gupwatch_longterm_pages_total", "counter"),
        ("gupwatch_call_duration_seconds", "histogram"),
        ("gupwatch_subsystem_pinned_pages_total", "counter"),
        ("gupwatch_subsystem_referenced_pages_total", "counter"),
        ("gupwatch_subsystem_unpinned_pages_total", "counter"),
        ("gupwatch_module_pinned_pages_total", "counter"),
        ("gupwatch_module_referenced_pages_total", "counter"),
        ("gupwatch_module_unpinned_pages_total", "counter"),
        ("gupwatch_process_pinned_pages_total", "counter"),
        ("gupwatch_process_referenced_pages_total", "counter"),
        ("gupwatch_process_unpinned_pages_total", "counter"),
        ("gupwatch_outstanding_pages", "gauge"),
        ("gupwatch_kernel_foll_pin_acquired_total", "counter"),
        ("gupwatch_kernel_foll_pin_released_total", "counter"),
        ("gupwatch_kernel_outstanding_pins", "gauge"),
        ("gupwatch_tracked_outstanding_pins", "gauge"),
        ("gupwatch_untracked_pins_total", "counter"),
        ("gupwatch_leak_signals", "gauge"),
        ("gupwatch_leak_pages", "gauge"),
        ("gupwatch_probe_attached", "gauge"),
        ("gupwatch_map_entries", "gauge"),
        ("gupwatch_map_capacity", "gauge"),
        ("gupwatch_events_dropped_total", "counter"),
        ("gupwatch_probe_misses_total", "counter"),
        ("gupwatch_probe_detached_total", "counter"),
        ("gupwatch_skipped_entries_total", "counter"),
        ("gupwatch_read_errors_total", "counter"),
        ("gupwatch_scrape_duration_seconds", "gauge"),
        ("gupwatch_build_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(text.contains(&format!("\n# TYPE {name} {ty}\n")), "{name} {ty} missing:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        // process_*: the client libraries' standard self-metrics.
        assert!(l.starts_with("gupwatch_") || l.starts_with("process_"), "unprefixed: {l}");
    }
}

#[test]
fn probe_misses_are_counted_per_function_from_zero() {
    let text = render(&sample(), Format::Prometheus);
    assert_eq!(value(&text, r#"gupwatch_probe_misses_total{function="unpin_user_folio"}"#), 3.0);
    assert_eq!(value(&text, r#"gupwatch_probe_misses_total{function="pin_user_pages_fast"}"#), 0.0);
    assert_eq!(samples(&text, "gupwatch_probe_misses_total").len(), 2);
    assert_eq!(value(&text, r#"gupwatch_skipped_entries_total{outcome="counted_at_release"}"#), 256.0);
}

#[test]
fn module_hooks_found_dead_are_counted_by_reason() {
    let text = render(&sample(), Format::Prometheus);
    assert_eq!(value(&text, r#"gupwatch_probe_detached_total{function="i915_gem_userptr_ioctl",reason="module_unloaded"}"#), 2.0);
    assert_eq!(value(&text, r#"gupwatch_probe_detached_total{function="i915_gem_userptr_ioctl",reason="kernel_gone"}"#), 0.0);
    assert_eq!(samples(&text, "gupwatch_probe_detached_total").len(), 2);
}

#[test]
fn per_api_values_and_labels() {
    let text = render(&sample(), Format::Prometheus);
    assert_values(&text, &[
        (r#"gupwatch_calls_total{api="pin_user_pages_fast",kind="pin"}"#, 10.0),
        (r#"gupwatch_pinned_pages_total{api="pin_user_pages_fast"}"#, 5120.0),
        (r#"gupwatch_unpinned_pages_total{api="unpin_user_pages"}"#, 5000.0),
        (r#"gupwatch_referenced_pages_total{api="get_user_pages_fast"}"#, 70.0),
        (r#"gupwatch_calls_total{api="get_user_pages_fast",kind="get"}"#, 7.0),
        (r#"gupwatch_undone_pin_pages_total{api="pin_user_pages_fast"}"#, 16.0),
        (r#"gupwatch_reverted_pin_pages_total{api="pin_user_pages_fast",reason="fast_walk"}"#, 1.0),
        (r#"gupwatch_reverted_pin_pages_total{api="pin_user_pages_fast",reason="migration"}"#, 15.0),
        (r#"gupwatch_reverted_pin_pages_total{api="pin_user_pages_fast",reason="slow_path"}"#, 0.0),
        (r#"gupwatch_failed_calls_total{api="pin_user_pages_fast",errno="EFAULT"}"#, 3.0),
        (r#"gupwatch_failed_calls_total{api="pin_user_pages_remote",errno="errno999"}"#, 1.0),
        (r#"gupwatch_short_calls_total{api="pin_user_pages_fast"}"#, 1.0),
        (r#"gupwatch_fast_path_pages_total{api="pin_user_pages_fast"}"#, 4096.0),
        (r#"gupwatch_fast_path_pages_total{api="get_user_pages_fast"}"#, 70.0),
        (r#"gupwatch_slow_path_pages_total{api="pin_user_pages_fast"}"#, 1024.0),
        (r#"gupwatch_fast_path_fallback_calls_total{api="pin_user_pages_fast"}"#, 2.0),
        (r#"gupwatch_longterm_pages_total{api="pin_user_pages_fast"}"#, 512.0),
    ]);
    // The absent hook has no per-API series; the slow-path hook is no API.
    assert!(!text.contains(r#"api="pin_user_pages_fast_only""#));
    assert!(!text.contains(r#"api="__gup_longterm_locked""#));
    // Fast-path families only for *_fast APIs; unpin has none of these.
    assert!(samples(&text, "gupwatch_fast_path_pages_total").iter().all(|l| l.contains("_fast")));
    assert!(!samples(&text, "gupwatch_slow_path_pages_total").iter().any(|l| l.contains("unpin")));
    // Every attached GUP hook has a calls series; the slow-path marker
    // and the i915 lifecycle hooks are not GUP calls.
    let counted = Api::ALL
        .iter()
        .filter(|a| **a != Api::PinUserPagesFastOnly && !matches!(a.kind(), ApiKind::SlowPath | ApiKind::I915))
        .count();
    assert_eq!(samples(&text, "gupwatch_calls_total").len(), counted);
    // Acquires and releases never share a family: each API's pages are in
    // the family of its kind alone, so the three together have one series
    // per counted API and none of them has a kind label.
    let of = |f: &str| samples(&text, f);
    let (pinned, referenced, unpinned) =
        (of("gupwatch_pinned_pages_total"), of("gupwatch_referenced_pages_total"), of("gupwatch_unpinned_pages_total"));
    assert_eq!(pinned.len() + referenced.len() + unpinned.len(), counted);
    assert!(pinned.iter().chain(&referenced).chain(&unpinned).all(|l| !l.contains("kind=")));
    assert!(pinned.iter().all(|l| l.contains(r#"api="pin_"#) || l.contains("memfd_pin_folios")), "{pinned:?}");
    assert!(unpinned.iter().all(|l| !l.contains(r#"api="pin_"#) && !l.contains(r#"api="get_"#)), "{unpinned:?}");
    assert!(referenced.iter().all(|l| l.contains("get_user_pages")), "{referenced:?}");
}

#[test]
fn leak_signals_by_kind() {
    let text = render(&sample(), Format::Prometheus);
    assert_eq!(value(&text, r#"gupwatch_leak_pages{kind="orphaned"}"#), 512.0);
    assert_eq!(value(&text, r#"gupwatch_leak_signals{kind="long_held"}"#), 1.0);
    assert_eq!(value(&text, "gupwatch_tracked_outstanding_pins"), 768.0);
    assert_eq!(value(&text, "gupwatch_untracked_pins_total"), 3.0);
    assert_eq!(value(&text, "gupwatch_held_by_other_process_pages"), 256.0);
}


#[test]
fn latency_histogram_is_cumulative_in_seconds() {
    let text = render(&sample(), Format::Prometheus);
    let b = |le: &str| value(&text, &format!(r#"gupwatch_call_duration_seconds_bucket{{api="pin_user_pages_fast",le="{le}"}}"#));
    // Kernel bucket 10 (1024..2048 ns) and 12 (4096..8192 ns) both end
    // at or under the 2^13 ns bound; nothing is under 2^10 ns.
    assert_eq!(b("1.024e-06"), 0.0);
    assert_eq!(b("8.192e-06"), 9.0);
    assert_eq!(b("0.268435456"), 9.0);
    // The last log2 bucket is open-ended: only +Inf holds it.
    assert_eq!(b("+Inf"), 10.0);
    assert!(!text.contains(r#"le="2.048e-06""#), "{text}");
    let buckets = samples(&text, "gupwatch_call_duration_seconds_bucket");
    assert_eq!(buckets.iter().filter(|l| l.contains(r#"api="pin_user_pages_fast""#)).count(), LATENCY_BOUNDS_LOG2.len() + 1);
    assert_eq!(value(&text, r#"gupwatch_call_duration_seconds_count{api="pin_user_pages_fast"}"#), 10.0);
    assert_eq!(value(&text, r#"gupwatch_call_duration_seconds_sum{api="pin_user_pages_fast"}"#), 0.003);
    let mut prev = 0.0;
    for l in buckets.iter().filter(|l| l.contains(r#"api="pin_user_pages_fast""#)) {
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v >= prev, "not cumulative: {l}");
        prev = v;
    }
}

#[test]
fn outstanding_kernel_and_self_metrics() {
    let text = render(&sample(), Format::Prometheus);
    // pinned (5120 + 16 undone) − unpinned 5000.
    assert_values(&text, &[
        ("gupwatch_outstanding_pages", 136.0),
        ("gupwatch_kernel_foll_pin_acquired_total", 1_000_000.0),
        ("gupwatch_kernel_foll_pin_released_total", 999_000.0),
        ("gupwatch_kernel_outstanding_pins", 1000.0),
        (r#"gupwatch_probe_attached{function="pin_user_pages_fast",mechanism="fentry"}"#, 1.0),
        (r#"gupwatch_probe_attached{function="memfd_pin_folios",mechanism="kprobe"}"#, 1.0),
        (r#"gupwatch_probe_attached{function="pin_user_pages_fast_only",mechanism="none"}"#, 0.0),
        (r#"gupwatch_map_entries{map="ATTRIB"}"#, 3.0),
        (r#"gupwatch_map_capacity{map="ATTRIB"}"#, f64::from(ATTRIB_CAPACITY)),
        (r#"gupwatch_map_entries{map="ERRNOS"}"#, 2.0),
        (r#"gupwatch_events_dropped_total{reason="inflight_full"}"#, 1.0),
        (r#"gupwatch_events_dropped_total{reason="arg_read_failed"}"#, 0.0),
        (r#"gupwatch_events_dropped_total{reason="attrib_full"}"#, 0.0),
        (r#"gupwatch_events_dropped_total{reason="stack_lost"}"#, 4.0),
        (r#"gupwatch_read_errors_total{source="vmstat"}"#, 2.0),
        ("gupwatch_scrape_duration_seconds", 0.0015),
    ]);
    assert_eq!(samples(&text, "gupwatch_probe_attached").len(), gup_common::API_COUNT);
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(value(&text, &format!(r#"gupwatch_build_info{{version="{v}",kernel="6.12.0-test"}}"#)), 1.0);
}

#[test]
fn subsystems_and_processes() {
    let text = render(&sample(), Format::Prometheus);
    assert_values(&text, &[
        (r#"gupwatch_subsystem_pinned_pages_total{subsystem="direct-io"}"#, 5120.0),
        (r#"gupwatch_subsystem_unpinned_pages_total{subsystem="direct-io"}"#, 5000.0),
        (r#"gupwatch_subsystem_referenced_pages_total{subsystem="vfio"}"#, 70.0),
        (r#"gupwatch_subsystem_pinned_pages_total{subsystem="gpu"}"#, 2048.0),
        (r#"gupwatch_module_pinned_pages_total{module="nvidia",subsystem="gpu"}"#, 2048.0),
        (r#"gupwatch_module_unpinned_pages_total{module="nvidia",subsystem="gpu"}"#, 2000.0),
    ]);
    // A subsystem appears only in the families of the kinds it did.
    assert!(!text.contains(r#"gupwatch_subsystem_referenced_pages_total{subsystem="direct-io"}"#), "{text}");
    assert!(!text.contains(r#"gupwatch_module_referenced_pages_total{"#), "{text}");
    // A module outside attribution's table gets no series (bounded label).
    assert!(!text.contains("mydrv"), "{text}");
    let (callers, _) = callers_json(&sample(), MAX_JSON_CALLERS);
    let nv = callers.iter().find(|c| c.comm == "cuda_app").expect("cuda_app's row");
    assert_eq!((nv.module.as_deref(), nv.subsystem.as_str()), (Some("nvidia"), "gpu"));
    // Two fio processes merge: no pid label.
    assert_eq!(value(&text, r#"gupwatch_process_pinned_pages_total{comm="fio"}"#), 5120.0);
    assert!(!text.contains("pid="), "{text}");
    assert!(!text.contains("tgid="), "{text}");
}

#[test]
fn comm_label_values_are_escaped() {
    let text = render(&sample(), Format::Prometheus);
    // Quote, backslash and newline escaped; the sample stays on one line.
    assert_eq!(value(&text, r#"gupwatch_process_referenced_pages_total{comm="qemu \"vm\"\\1\nx"}"#), 70.0);
    // Empty comm is a valid label value.
    assert_eq!(value(&text, r#"gupwatch_process_pinned_pages_total{comm=""}"#), 0.0);
    // Lossy UTF-8 replacement character and other control bytes pass through.
    assert_eq!(value(&text, "gupwatch_process_pinned_pages_total{comm=\"bad\u{fffd}utf8\t\r\"}"), 1.0);
    let om = render(&sample(), Format::OpenMetrics);
    assert!(om.contains(r#"gupwatch_process_referenced_pages_total{comm="qemu \"vm\"\\1\nx"} 70"#), "{om}");
}

#[test]
fn reduced_mode_has_vmstat_and_probe_health_only() {
    let mut p = plan();
    for h in &mut p.hooks {
        h.attached = false;
    }
    let mut top = TopProcesses::default();
    let d = Arc::new(Reading::new(
        p,
        None,
        Some(FollPinCounters { acquired: 7, released: 5 }),
        vec![],
        &mut top,
        Settings::default(),
    ));
    let text = render(&d, Format::Prometheus);
    assert!(samples(&text, "gupwatch_calls_total").is_empty());
    assert!(samples(&text, "gupwatch_outstanding_pages").is_empty());
    assert!(samples(&text, "gupwatch_process_pinned_pages_total").is_empty());
    assert_eq!(value(&text, "gupwatch_kernel_outstanding_pins"), 2.0);
    assert!(samples(&text, "gupwatch_probe_attached").iter().all(|l| l.ends_with(" 0")));
    promtool_check(&text);
}

/// Accounted holders: per pid and comm for the top N only, the holder
/// count for all, in both formats.
#[test]
fn reduced_mode_names_the_accounted_holders() {
    use crate::golden::fixture::holder;
    use gup_report::Accounted;
    let mut top = TopProcesses::default();
    let mut d = Reading::new(plan(), None, None, vec![], &mut top, Settings { top_processes: 2, ..Settings::default() });
    d.accounted = Some(Arc::new(Accounted {
        source: crate::model::accounted::SOURCE.into(),
        holders: vec![holder(200, "aa-holder", 1 << 20), holder(7, "qemu \"vm\"", 8192), holder(9, "third", 4096)],
        processes: 50,
        fds: 0,
        unreadable: 0,
        truncated: false,
    }));
    let d = Arc::new(d);
    let text = render(&d, Format::Prometheus);
    assert_eq!(value(&text, r#"gupwatch_accounted_pinned_bytes{pid="200",comm="aa-holder"}"#), 1048576.0);
    assert_eq!(value(&text, r#"gupwatch_accounted_io_uring_buffer_bytes{pid="200",comm="aa-holder"}"#), 1048576.0);
    assert_eq!(value(&text, r#"gupwatch_accounted_locked_bytes{pid="7",comm="qemu \"vm\""}"#), 4096.0);
    assert_eq!(samples(&text, "gupwatch_accounted_pinned_bytes").len(), 2, "top 2 only:\n{text}");
    assert!(!text.contains("third"), "{text}");
    assert_eq!(value(&text, "gupwatch_accounted_holders"), 3.0);
    promtool_check(&text);
    assert!(render(&d, Format::OpenMetrics).contains("# UNIT gupwatch_accounted_pinned_bytes bytes"));
    let j = snapshot_json(&d, 10);
    assert_eq!(j.mode, gup_report::Mode::Reduced);
    assert_eq!(j.accounted.as_ref().map(|a| (a.source.as_str(), a.holders.len())), Some(("accounted", 3)), "every holder");
    // The live view reads the same document back.
    let text = gup_report::to_sorted_pretty_json(&j).expect("writes");
    let s = crate::tui::sample::Sample::from_json(&text).expect("parses");
    assert_eq!(s.accounted.as_ref().map(|a| a.holders[0].pid), Some(200));
    assert_eq!(crate::tui::sample::Sample::from_reading(&d).accounted, s.accounted);
}

#[test]
fn openmetrics_format() {
    let om = render(&sample(), Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE gupwatch_calls counter\n"));
    assert!(om.contains("# TYPE gupwatch_call_duration_seconds histogram\n"));
    assert!(om.contains("# UNIT gupwatch_call_duration_seconds seconds\n"));
    assert!(om.contains("# TYPE gupwatch_build info\n"));
    assert!(om.contains(r#"gupwatch_calls_total{api="pin_user_pages_fast",kind="pin"} 10"#));
    assert!(om.contains(r#"gupwatch_call_duration_seconds_bucket{le="+Inf",api="pin_user_pages_fast"} 10"#));
    let prom = render(&sample(), Format::Prometheus);
    assert!(!prom.contains("# EOF"));
    // OpenMetrics HELP text may not hold bare quotes or backslashes, and
    // the encoder does not escape HELP: keep them out of the texts.
    for l in om.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!l.contains(['"', '\\']), "{l}");
    }
}

#[test]
fn accept_negotiation() {
    use Format::*;
    assert_eq!(Format::negotiate(None), Prometheus);
    assert_eq!(Format::negotiate(Some("*/*")), Prometheus);
    assert_eq!(Format::negotiate(Some("text/plain")), Prometheus);
    assert_eq!(Format::negotiate(Some("application/openmetrics-text")), OpenMetrics);
    assert_eq!(Format::negotiate(Some("application/openmetrics-text; version=1.0.0; charset=utf-8")), OpenMetrics);
    // What Prometheus 2.x sends.
    assert_eq!(
        Format::negotiate(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )),
        OpenMetrics
    );
    assert_eq!(Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.2")), Prometheus);
    assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Prometheus);
    assert_eq!(OpenMetrics.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert_eq!(Prometheus.content_type(), "text/plain; version=0.0.4; charset=utf-8");
}

/// Runs `promtool check metrics` on an exposition; fails when promtool
/// is missing (it is a declared dependency: `cargo xtask setup`).
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is not installed ({e}): run `cargo xtask setup` (it installs Debian's prometheus package, which provides /usr/bin/promtool)"
        ),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The age of the vmstat figures: from the last stat_refresh write, and
/// no sample when it was never written (their lag is then unknown).
#[test]
fn kernel_counters_age_is_the_last_refresh() {
    let text = render(&sample(), Format::Prometheus);
    assert!(text.contains("# TYPE gupwatch_kernel_counters_age_seconds gauge"), "{text}");
    assert_eq!(value(&text, "gupwatch_kernel_counters_age_seconds"), 0.25);
    let mut d = (*sample()).clone();
    d.vmstat_refreshed_ago = None;
    let text = render(&Arc::new(d), Format::Prometheus);
    assert!(samples(&text, "gupwatch_kernel_counters_age_seconds").is_empty(), "{text}");
    assert!(text.contains("# TYPE gupwatch_kernel_counters_age_seconds gauge"), "listed even without a sample");
}

#[test]
fn promtool_accepts_the_exposition() {
    promtool_check(&render(&sample(), Format::Prometheus));
}

/// The cardinality budget (docs/fleet.md): at default settings a node
/// exports at most 500 series whatever its workload. The worst reading:
/// every hook attached and busy in every latency bucket, 50 processes,
/// 60 (API, errno) pairs, every subsystem and kind, three driver modules
/// of the table, every leak kind, misses on every hook and every module
/// hook detached for every reason.
#[test]
fn one_node_stays_within_the_series_budget() {
    use crate::collect::{fixture::{hook, row, with_module}, ERRNO_SERIES, OTHER_COMM};
    let mut p = plan();
    p.hooks = Api::ALL.iter().map(|&a| hook(a, true, "kprobe")).collect();
    let mut snap = crate::model::counters::Snapshot::default();
    for a in Api::ALL {
        let st = &mut snap.apis[a as usize];
        st.calls = 1;
        st.latency_log2 = [1; LATENCY_BUCKETS];
    }
    for (i, a) in Api::ALL.iter().filter(|a| matches!(a.kind(), ApiKind::Pin | ApiKind::Get)).enumerate() {
        for errno in 1..=6u32 {
            snap.errnos.insert((*a as u32, errno), (i as u64 + 1) * u64::from(errno));
        }
    }
    let subsystems = [
        Subsystem::IoUring, Subsystem::DirectIo, Subsystem::ProcessVm, Subsystem::I915, Subsystem::Gpu,
        Subsystem::Rdma, Subsystem::Vfio, Subsystem::Udmabuf, Subsystem::Other,
    ];
    let mut rows = Vec::new();
    for i in 0..50u32 {
        let sub = subsystems[i as usize % subsystems.len()];
        for api in [Api::PinUserPagesFast, Api::GetUserPagesRemote, Api::UnpinUserPages] {
            rows.push(row(i, &format!("proc{i}"), api, u64::from(i) + 1, sub));
        }
    }
    for m in ["nvidia", "mlx5_ib", "vfio_iommu_type1"] {
        for api in [Api::PinUserPages, Api::UnpinUserPage] {
            rows.push(with_module(row(9, "drv", api, 1, Subsystem::Other), m));
        }
    }
    let mut top = TopProcesses::default();
    let mut d = Reading::new(p, Some(snap), Some(FollPinCounters { acquired: 9, released: 1 }), rows, &mut top, Settings::default());
    d.vmstat_refreshed_ago = Some(std::time::Duration::from_millis(3));
    // BPF run statistics are off by default (opt-in, --bpf-stats): the
    // per-program families have no samples then, whatever is attached.
    d.bpf_programs = Api::ALL
        .iter()
        .flat_map(|a| ["fe", "fx", "kp"].map(|p| crate::probes::loader::ProgramRuns { program: format!("{p}_{}", *a as u32), runs: 1, run_time_ns: 1 }))
        .collect();
    d.leaks = Some(crate::collect::LeakMetrics::default());
    if let Some(l) = d.leaks.as_mut() {
        for k in ["long_held", "orphaned", "unbalanced", "growth", "weak_pin"] {
            l.by_kind.insert(k, (1, 256));
        }
    }
    // Every subsystem released short and LONGTERM pins in every bucket; the
    // collector hands over its top cgroups plus other and unknown.
    d.hold_times = subsystems
        .iter()
        .flat_map(|s| [false, true].map(|longterm| gup_report::HoldHistogram {
            subsystem: s.as_str().to_string(),
            longterm,
            count: 1,
            sum_seconds: 1.0,
            buckets: vec![1; gup_common::hold::HOLD_BUCKETS],
        }))
        .collect();
    d.cgroups = (0..crate::model::cgroups::DEFAULT_TOP_CGROUPS)
        .map(|i| format!("/kubepods.slice/pod{i}"))
        .chain([gup_report::OTHER_CGROUP.into(), gup_report::UNKNOWN_CGROUP.into()])
        .map(|path| gup_report::CgroupPins {
            cgroup: gup_report::CgroupInfo { path, unit: Some("u".into()), pod_uid: Some("p".into()), container_id: Some("c".into()) },
            pages: 1,
        })
        .collect();
    d.probe_misses = Api::ALL.iter().map(|a| (a.symbol(), 1)).collect();
    d.probe_detached = Api::ALL
        .iter()
        .filter(|a| a.kind() == ApiKind::I915)
        .flat_map(|a| ["module_unloaded", "module_reloaded", "kernel_gone"].map(|r| (a.symbol(), r, 1)))
        .collect();
    let text = render(&Arc::new(d), Format::Prometheus);
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    eprintln!("worst-case node: {series} series, {} bytes", text.len());
    assert!(series <= 500, "{series} series, over the budget of 500:\n{text}");
    let failed = samples(&text, "gupwatch_failed_calls_total");
    assert_eq!(failed.len(), ERRNO_SERIES + 1, "{failed:?}");
    assert!(failed.iter().any(|l| l.contains(&format!(r#"api="{OTHER_COMM}",errno="{OTHER_COMM}""#))), "{failed:?}");
    for kind in ["pinned", "referenced", "unpinned"] {
        let n = samples(&text, &format!("gupwatch_process_{kind}_pages_total")).len();
        assert_eq!(n, Settings::default().top_processes + 1, "{kind}");
    }
    assert_eq!(samples(&text, "gupwatch_pin_hold_seconds_count").len(), 2, "one series per LONGTERM and short");
    assert_eq!(samples(&text, "gupwatch_kernel_counters_age_seconds").len(), 1);
    assert!(samples(&text, "gupwatch_bpf_program_runs_total").is_empty());
    assert_eq!(samples(&text, "gupwatch_cgroup_pinned_pages").len(), crate::model::cgroups::DEFAULT_TOP_CGROUPS + 2);
    promtool_check(&text);
}

/// Failed calls beyond the top pairs go to one `other` series, which
/// never decreases when the ranking changes.
#[test]
fn failed_calls_keep_the_top_pairs_and_sum_the_rest() {
    let mut top = TopProcesses::default();
    let mut e = std::collections::BTreeMap::new();
    for errno in 1..=12u32 {
        e.insert((Api::PinUserPagesFast as u32, errno), u64::from(errno));
    }
    let s = top.update_errnos(&e, 10);
    let other = |s: &[crate::collect::ErrnoSeries]| s.iter().find(|x| x.api == "other").map(|x| x.calls);
    assert_eq!(s.len(), 11);
    assert_eq!(other(&s), Some(1 + 2));
    // errno 1 overtakes everything: it is promoted, errno 3 demoted; other
    // gains only what the pairs outside the top grew by (errno 2: +0).
    e.insert((Api::PinUserPagesFast as u32, 1), 100);
    let s = top.update_errnos(&e, 10);
    assert_eq!(other(&s), Some(3));
    assert!(s.iter().any(|x| x.errno == "EPERM" && x.calls == 100), "{s:?}");
    // No failure at all: no series.
    assert!(TopProcesses::default().update_errnos(&Default::default(), 10).is_empty());
}
