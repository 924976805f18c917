//! The Grafana dashboard and the Prometheus rules in `dashboards/` against
//! what the collector really emits:
//!
//! * every `gupwatch_*` name they mention is a series the exposition has;
//! * every dashboard query parses as PromQL (`promtool check rules` on the
//!   queries with Grafana's variables substituted);
//! * every panel has a description and a unit, and uses the templated
//!   data source;
//! * `promtool check rules`, `promtool test rules` and `promtool check
//!   config` pass on the Prometheus files.
//!
//! promtool is a declared dependency (`cargo xtask setup` installs Debian's
//! prometheus package): these tests fail, not skip, without it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use gup_common::{Api, ApiKind, Diag, LATENCY_BUCKETS};
use gup_report::{Caller, Subsystem};
use gupwatch::{
    model::attribution::Row,
    collect::{HookHealth, PlanSummary, Reading, Settings, TopProcesses},
    export::prometheus::{render, Format},
    model::counters::Snapshot,
    kernel::vmstat::FollPinCounters,
};

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn read(rel: &str) -> String {
    let p = dashboards().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A scrape with a sample in every family.
fn full_sample() -> String {
    let hooks = Api::ALL
        .iter()
        .map(|&api| HookHealth {
            api,
            function: api.symbol(),
            kind: "pin",
            mechanism: "fentry",
            attached: true,
            status: "attached",
            reason: String::new(),
        })
        .collect();
    let plan = PlanSummary { kernel: "6.12.0".into(), hooks };
    let mut s = Snapshot::default();
    for a in Api::ALL {
        let st = &mut s.apis[a as usize];
        st.calls = 3;
        st.pages = 30;
        st.latency_log2[5] = 3;
        st.latency_ns_sum = 100;
    }
    s.apis[Api::PinUserPagesFast as usize].latency_log2[LATENCY_BUCKETS - 1] = 1;
    s.diag[Diag::StackLost as usize] = 1;
    s.errnos.insert((Api::PinUserPagesFast as u32, 14), 2);
    let rows = [Api::PinUserPagesFast, Api::GetUserPagesFast, Api::UnpinUserPages]
        .iter()
        .map(|&api| Row {
            tgid: 1,
            comm: "fio".into(),
            cgroup_id: 1,
            api: api.symbol(),
            caller: Caller { function: "iomap_dio_bio_iter".into(), subsystem: Subsystem::DirectIo, module: None },
            calls: 1,
            pages: 8,
            errors: 0,
            fast_pages: 8,
            slow_pages: 0,
            longterm_pages: 0,
        })
        .collect();
    let mut top = TopProcesses::default();
    let mut d = Reading::new(
        plan,
        Some(s),
        Some(FollPinCounters { acquired: 10, released: 5 }),
        rows,
        &mut top,
        Settings::default(),
    );
    let mut leaks = gupwatch::collect::LeakMetrics { tracked_outstanding: 5, untracked: 0, ..Default::default() };
    leaks.by_kind.insert("orphaned", (1, 5));
    leaks.by_kind.insert("growth", (0, 0));
    d.leaks = Some(leaks);
    let mut buckets = vec![0; gup_common::hold::HOLD_BUCKETS];
    buckets[4] = 8;
    d.hold_times = vec![gup_report::HoldHistogram {
        subsystem: "direct-io".into(),
        longterm: false,
        count: 8,
        sum_seconds: 8e-5,
        buckets,
    }];
    d.cgroups = vec![gup_report::CgroupPins {
        cgroup: gupwatch::model::cgroups::parse_path("/system.slice/fio.service"),
        pages: 5,
    }];
    render(&Arc::new(d), Format::Prometheus)
}

/// Names of the series in an exposition (histograms give _bucket, _sum,
/// _count), and of the families (`# TYPE` lines), which texts may mention.
fn emitted() -> BTreeSet<String> {
    full_sample()
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') && !l.is_empty() => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect()
}

/// `gupwatch_…` identifiers in a text.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("gupwatch_") {
        let start = i + off;
        let before_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_' || b[start - 1] == b':');
        let mut end = start + "gupwatch_".len();
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_referenced_metric_is_emitted() {
    let emitted = emitted();
    // Sanity: the families the dashboard is built on are there.
    for n in ["gupwatch_calls_total", "gupwatch_call_duration_seconds_bucket", "gupwatch_process_pinned_pages_total"] {
        assert!(emitted.contains(n), "{n} not in {emitted:?}");
    }
    for file in [
        "gupwatch-overview.json",
        "prometheus/alerts.yml",
        "prometheus/recording.yml",
        "prometheus/rules_test.yml",
    ] {
        let names = names_in(&read(file));
        assert!(!names.is_empty(), "{file} mentions no gupwatch metric");
        let unknown: Vec<_> = names.difference(&emitted).collect();
        assert!(unknown.is_empty(), "{file} uses metrics gupwatch does not emit: {unknown:?}");
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("gupwatch-overview.json")).expect("dashboard is JSON")
}

fn exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn panels_have_units_descriptions_and_the_templated_datasource() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id at {title}");
        assert!(p["description"].as_str().is_some_and(|s| s.len() > 20), "{title}: no description");
        assert!(p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|s| !s.is_empty()), "{title}: no unit");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let e = t["expr"].as_str().unwrap();
            assert!(
                e.contains(r#"job=~"$job""#) && e.contains(r#"instance=~"$instance""#) && e.contains(r#"node=~"$node""#),
                "{title}: {e}"
            );
        }
    }
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).unwrap_or_else(|| panic!("no variable {n}"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("job")["type"], "query");
    assert_eq!(var("instance")["type"], "query");
    // The node selector matches series without a node label too.
    assert_eq!(var("node")["type"], "query");
    assert_eq!(var("node")["allValue"], ".*");
    // The panels the brief asks for are there.
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in ["Pin rate", "Fast-path hit rate", "Outstanding pins: gupwatch vs kernel", "GUP call latency", "Pages by subsystem", "Top processes by pinned pages", "Failures by errno", "Probe health", "Pinned pages by node", "Top subsystems across the fleet", "Long-held and orphaned pins by node"] {
        assert!(titles.contains(&want), "no panel {want}: {titles:?}");
    }
    let all = exprs(&d).join("\n");
    for family in ["fast_path_fallback_calls_total", "kernel_outstanding_pins", "outstanding_pages", "failed_calls_total", "subsystem_pinned_pages_total", "subsystem_referenced_pages_total", "subsystem_unpinned_pages_total", "process_pinned_pages_total", "pinned_pages_total", "referenced_pages_total", "unpinned_pages_total", "probe_attached", "call_duration_seconds_bucket"] {
        assert!(all.contains(family), "the dashboard never shows {family}");
    }
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("promtool is not installed ({e}): run `cargo xtask setup` (it installs Debian's prometheus package, which provides /usr/bin/promtool)")
    });
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs(&d).iter().chain([
        // The template variable queries, as series selectors.
        &r#"gupwatch_build_info"#.to_string(),
        &r#"gupwatch_build_info{job=~"$job"}"#.to_string(),
    ]).enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".+")
            .replace("$instance", ".+")
            .replace("$node", ".*");
        assert!(!e.contains('$'), "unsubstituted variable in {e}");
        rules += &format!("      - record: dashboard_query_{i}\n        expr: {}\n", serde_json::to_string(&e).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "{out}\n{rules}");
}

#[test]
fn prometheus_rules_check_and_unit_tests_pass() {
    let p = dashboards().join("prometheus");
    let f = |n: &str| p.join(n).to_str().unwrap().to_string();
    let (ok, out) = promtool(&["check", "rules", &f("alerts.yml"), &f("recording.yml")]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", &f("rules_test.yml")]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["check", "config", &f("prometheus.yml")]);
    assert!(ok, "{out}");
    // One unit test per alert.
    let alerts = read("prometheus/alerts.yml");
    let tests = read("prometheus/rules_test.yml");
    for name in alerts.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {name}")), "no unit test for {name}");
    }
}

#[test]
fn sample_scrape_target_is_the_default_listen_address() {
    assert!(read("prometheus/prometheus.yml").contains(&format!("\"{}\"", gupwatch::export::http::DEFAULT_LISTEN)));
}

#[test]
fn every_counted_api_has_its_pages_in_exactly_one_family() {
    // The dashboard shows pinned, referenced and unpinned pages from three
    // families; every GUP API must be in exactly one of them (the slow-path
    // marker and the i915 lifecycle hooks are not GUP calls), or its pages
    // would be missing from the panels or counted twice.
    let text = full_sample();
    for a in Api::ALL.iter().filter(|a| !matches!(a.kind(), ApiKind::SlowPath | ApiKind::I915)) {
        assert!(text.contains(&format!("gupwatch_calls_total{{api=\"{}\",kind=", a.symbol())), "{a:?}");
        let families = ["pinned", "referenced", "unpinned"]
            .iter()
            .filter(|f| text.contains(&format!("gupwatch_{f}_pages_total{{api=\"{}\"}}", a.symbol())))
            .count();
        assert_eq!(families, 1, "{a:?}");
    }
}

/// The GitHub anchor of a Markdown heading: lower case, punctuation but
/// `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let alerts = read("prometheus/alerts.yml");
    let runbook = std::fs::read_to_string(dashboards().join("../docs/alerts.md")).unwrap();
    let anchors: BTreeSet<String> = runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(anchor).collect();
    // The workspace's `repository`, where the docs are published.
    let manifest = std::fs::read_to_string(dashboards().join("../Cargo.toml")).unwrap();
    let repo = manifest.lines().find_map(|l| l.strip_prefix("repository = ")).expect("workspace repository").trim_matches('"');
    let base = format!("{repo}/blob/main/docs/alerts.md#");
    // Each rule's text runs from its `- alert:` line to the next one.
    let mut rules = alerts.split("- alert: ").skip(1).peekable();
    assert!(rules.peek().is_some(), "no alert in alerts.yml");
    for rule in rules {
        let name = rule.lines().next().unwrap_or("").trim();
        let url = rule
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let frag = url.strip_prefix(&base).unwrap_or_else(|| panic!("{name}: {url} is not under {base}"));
        assert_eq!(frag, name.to_lowercase(), "{name}: its anchor should be its own section");
        assert!(anchors.contains(frag), "{name}: docs/alerts.md has no section #{frag} (have {anchors:?})");
    }
}

#[test]
fn aggregations_keep_target_labels() {
    // `by (...)` would drop cluster, node, namespace and every other target
    // label from the alert; `without (...)` names what it drops.
    for l in read("prometheus/alerts.yml").lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(!l.contains(" by ("), "aggregation drops target labels: {l}");
    }
}
