//! The fleet's checks, through the main Prometheus's HTTP API.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::{unix_now, Node, Servers, DASHBOARD_AT_S, PULL_JOB, PUSH_JOB, PUSH_LABEL, RATE_INTERVAL, SCRAPE_INTERVAL_S, SERIES_BUDGET};
use crate::e2e::{dashboard_queries, dashboard_range, http_get, judge_result, substitute, url_encode, Check, DashQueryKind, Dashboard, QueryData};
use crate::util;

/// gupwatch's pinned pages as `nr_foll_pin_acquired` counts them, per node
/// (`SEL` is the job's selector).
const PINNED: &str = "sum by (node) (gupwatch_pinned_pages_total{SEL}) + sum by (node) (gupwatch_undone_pin_pages_total{SEL})";
/// gupwatch's unpinned pages as `nr_foll_pin_released` counts them.
const UNPINNED: &str = "sum by (node) (gupwatch_unpinned_pages_total{SEL})";
/// Runs of gupwatch's programs the kernel skipped, per node.
const MISSES: &str = "sum by (node) (gupwatch_probe_misses_total{SEL})";
/// The alert that must not fire where a live process holds the pins.
const ORPHAN_ALERT: &str = "GupwatchOrphanedPins";
/// Pins whose creator exited, held by a live process.
const HELD_BY_OTHER: &str = "gupwatch_held_by_other_process_pages";

/// Every check, once each guest has reported its deltas:
///
/// * every node's pinned and unpinned totals, pulled and pushed, equal its
///   guest's own `nr_foll_pin_*` deltas;
/// * each node exported at most [`SERIES_BUDGET`] series in every scrape
///   (`scrape_samples_scraped`), and as many series are stored for it;
/// * pulled series never carry the agent's label and pushed ones always do;
/// * every dashboard query, at a moment when every workload ran, returns
///   data, and one series per node when it is grouped by node or instance;
///   its template variables list the three nodes;
/// * on the node whose buffer outlived its creator, gupwatch names the live
///   holder, and the orphaned-pin alert fires on no node (the fleet loads
///   alerts.yml with `for:` shortened, so a false alarm would fire).
pub(super) fn check_fleet(s: &mut Servers, nodes: &[Node], dashboard_at: f64) -> Result<(Vec<Check>, Vec<String>)> {
    let done_at = unix_now();
    wait_for_fresh_samples(s, nodes, done_at)?;
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    for (job, sel) in [(PULL_JOB, format!("job=\"{PULL_JOB}\"")), (PUSH_JOB, format!("job=\"{PUSH_JOB}\",{}=\"{}\"", PUSH_LABEL.0, PUSH_LABEL.1))] {
        checks.extend(totals_checks(s, nodes, job, &sel)?);
    }
    checks.extend(budget_checks(s, nodes)?);
    checks.extend(label_checks(s)?);
    let dash_path = util::workspace_root().join("dashboards/gupwatch-overview.json");
    let dash: Dashboard = serde_json::from_str(&fs::read_to_string(&dash_path).with_context(|| format!("reading {}", dash_path.display()))?)
        .with_context(|| format!("{} is not JSON", dash_path.display()))?;
    let range = dashboard_range(&dash);
    notes.push(format!(
        "dashboard evaluated {DASHBOARD_AT_S} s after the go with $job={PULL_JOB}, $instance=.+, $node=.*, $__rate_interval={RATE_INTERVAL}, $__range={range}"
    ));
    checks.extend(dashboard_checks(s, nodes, &dash, &range, dashboard_at));
    checks.extend(alert_checks(s, nodes)?);
    notes.extend(cost_notes(s));
    Ok((checks, notes))
}

/// `/api/v1/rules` with each group's last evaluation time.
#[derive(Debug, Deserialize)]
struct RuleGroups {
    #[serde(default)]
    groups: Vec<RuleGroupTime>,
}

#[derive(Debug, Deserialize)]
struct RuleGroupTime {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "evaluationTime")]
    evaluation_time: f64,
    #[serde(default)]
    rules: Vec<serde::de::IgnoredAny>,
}

/// `/api/v1/status/tsdb`: the head's series count.
#[derive(Debug, Deserialize)]
struct TsdbStatus {
    #[serde(rename = "headStats")]
    head: HeadStats,
}

#[derive(Debug, Deserialize)]
struct HeadStats {
    #[serde(rename = "numSeries")]
    series: u64,
}

/// What the fleet cost the main server: its series and the rule groups'
/// last evaluation time (the measured figures behind docs/fleet.md).
fn cost_notes(s: &mut Servers) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = s.main.api::<TsdbStatus>("/api/v1/status/tsdb") {
        out.push(format!("main Prometheus: {} series in its head (pulled and pushed copies of 3 nodes, rules' output)", t.head.series));
    }
    if let Ok(r) = s.main.api::<RuleGroups>("/api/v1/rules") {
        for g in r.groups {
            out.push(format!("rule group {}: {} rules, last evaluation {:.2} ms", g.name, g.rules.len(), g.evaluation_time * 1e3));
        }
    }
    out
}

/// Until the latest sample of every node, pulled and pushed, is newer than
/// the moment the last workload ended.
fn wait_for_fresh_samples(s: &mut Servers, nodes: &[Node], done_at: f64) -> Result<()> {
    let t = Instant::now();
    let expr = "max by (job, node) (timestamp(gupwatch_build_info))";
    loop {
        let d = s.main.query(expr)?;
        let fresh: BTreeSet<(String, String)> = d
            .series()
            .iter()
            .filter(|x| x.value.as_ref().is_some_and(|v| v.1.parse::<f64>().unwrap_or(0.0) > done_at + 0.5))
            .map(|x| (label(&x.metric, "job"), label(&x.metric, "node")))
            .collect();
        let missing: Vec<String> = [PULL_JOB, PUSH_JOB]
            .iter()
            .flat_map(|j| nodes.iter().map(move |n| (j.to_string(), n.spec.name.to_string())))
            .filter(|k| !fresh.contains(k))
            .map(|(j, n)| format!("{j}/{n}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(90) {
            bail!("no sample newer than the workloads' end after 90 s for {}", missing.join(", "));
        }
        if util::interrupted() {
            return Err(anyhow!(util::Interrupted));
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn label(m: &BTreeMap<String, String>, k: &str) -> String {
    m.get(k).cloned().unwrap_or_default()
}

/// One value per node of a `by (node)` query.
fn per_node(s: &mut Servers, expr: &str) -> Result<BTreeMap<String, f64>> {
    let d = s.main.query(expr)?;
    Ok(d.series()
        .iter()
        .filter_map(|x| Some((label(&x.metric, "node"), x.value.as_ref()?.1.parse::<f64>().ok()?)))
        .collect())
}

/// Each node's pinned and unpinned totals in `job` equal its vmstat deltas.
fn totals_checks(s: &mut Servers, nodes: &[Node], job: &str, sel: &str) -> Result<Vec<Check>> {
    let pinned_q = PINNED.replace("SEL", sel);
    let unpinned_q = UNPINNED.replace("SEL", sel);
    let misses_q = MISSES.replace("SEL", sel);
    let pinned = per_node(s, &pinned_q)?;
    let unpinned = per_node(s, &unpinned_q)?;
    let misses = per_node(s, &misses_q)?;
    let mut out = Vec::new();
    for n in nodes {
        let (a, r) = n.vmstat.unwrap_or((0, 0));
        let p = pinned.get(n.spec.name).copied();
        let u = unpinned.get(n.spec.name).copied();
        let missed = misses.get(n.spec.name).copied().unwrap_or(0.0);
        let verdict = n.vmstat.map(|_| totals_verdict((p, u), (a as f64, r as f64), missed));
        let show = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.0}"));
        let mut detail = format!("pinned {} vs acquired {a}, unpinned {} vs released {r}", show(p), show(u));
        if verdict == Some(Totals::ShortByReportedMisses) {
            detail += &format!("; short, and gupwatch reported {missed:.0} program runs the kernel skipped (gupwatch_probe_misses_total)");
        }
        out.push(Check::new(
            format!("{} ({}): {job} totals = vmstat deltas, or short by reported probe misses", n.spec.name, n.spec.kernel),
            Some(format!("{pinned_q}\n        query: {unpinned_q}\n        query: {misses_q}")),
            verdict.is_some_and(|v| v != Totals::Wrong),
            detail,
        ));
    }
    Ok(out)
}

/// How a node's totals compare with its vmstat deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Totals {
    /// Both equal.
    Exact,
    /// gupwatch counted less, and said so: the kernel skipped some of its
    /// program runs and `gupwatch_probe_misses_total` counts them
    /// (docs/exactness.md, "Skipped on a busy one-CPU preemptible
    /// guest"). Never more than vmstat.
    ShortByReportedMisses,
    /// Anything else: more than the kernel, or less with no miss reported.
    Wrong,
}

fn totals_verdict(got: (Option<f64>, Option<f64>), kernel: (f64, f64), misses: f64) -> Totals {
    let (Some(p), Some(u)) = got else { return Totals::Wrong };
    if (p, u) == kernel {
        Totals::Exact
    } else if p <= kernel.0 && u <= kernel.1 && misses > 0.0 {
        Totals::ShortByReportedMisses
    } else {
        Totals::Wrong
    }
}

/// No node exported more than the budget in any scrape.
fn budget_checks(s: &mut Servers, nodes: &[Node]) -> Result<Vec<Check>> {
    let most = per_node(s, &format!("max by (node) (max_over_time(scrape_samples_scraped{{job=\"{PULL_JOB}\"}}[1h]))"))?;
    let stored = per_node(s, &format!("count by (node) ({{job=\"{PULL_JOB}\",__name__=~\"gupwatch_.+\"}})"))?;
    Ok(nodes
        .iter()
        .map(|n| {
            let m = most.get(n.spec.name).copied();
            // One scrape of its own, for the size of the text.
            let body = match http_get(n.metrics_port, "/metrics", Duration::from_secs(10)) {
                Ok((200, b)) => format!(", {} bytes in a scrape now", b.len()),
                _ => String::new(),
            };
            let st = stored.get(n.spec.name).copied();
            let ok = m.is_some_and(|m| m > 0.0 && m <= SERIES_BUDGET as f64) && st.is_some_and(|v| v <= SERIES_BUDGET as f64);
            Check::new(
                format!("{} ({}): at most {SERIES_BUDGET} series", n.spec.name, n.spec.kernel),
                Some("max_over_time(scrape_samples_scraped[1h]); count by (node) ({__name__=~\"gupwatch_.+\"})".into()),
                ok,
                format!(
                    "{} samples in its largest scrape, {} gupwatch series stored{}",
                    m.map_or("no".into(), |v| format!("{v:.0}")),
                    st.map_or("no".into(), |v| format!("{v:.0}")),
                    body
                ),
            )
        })
        .collect())
}

/// Pushed and pulled copies are told apart by the agent's label. The main
/// server's own rule outputs (recorded series, `ALERTS`) computed from the
/// pushed copy keep its job but aggregate the label away: not scraped
/// series, so left out.
fn label_checks(s: &mut Servers) -> Result<Vec<Check>> {
    let (k, v) = PUSH_LABEL;
    let mut out = Vec::new();
    let expr = format!("count by (node) ({{{k}=\"{v}\",job=\"{PUSH_JOB}\"}})");
    let d = s.main.query(&expr)?;
    let counts: Vec<String> = d
        .series()
        .iter()
        .map(|x| format!("{} {}", label(&x.metric, "node"), x.value.as_ref().map_or("?", |v| v.1.as_str())))
        .collect();
    out.push(Check::new(
        "remote write: pushed series arrived from every node",
        Some(expr),
        d.series().len() == super::NODES.len(),
        format!("series per node: {}", counts.join(", ")),
    ));
    for (name, expr) in [
        ("every pushed series carries the agent's label", format!("group by (__name__) ({{job=\"{PUSH_JOB}\",{k}!=\"{v}\"}})")),
        ("no pulled series carries it", format!("group by (__name__) ({{job=\"{PULL_JOB}\",{k}!=\"\"}})")),
    ] {
        let d = s.main.query(&expr)?;
        let names: Vec<String> = d.series().iter().map(|x| label(&x.metric, "__name__")).collect();
        let (rules, scraped): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| n.contains(':') || n.starts_with("ALERTS"));
        out.push(Check::new(
            format!("remote write: {name}"),
            Some(expr),
            scraped.is_empty(),
            if scraped.is_empty() {
                format!("no scraped series lacks it ({} rule outputs do, as expected)", rules.len())
            } else {
                format!("these do: {}", scraped.join(", "))
            },
        ));
    }
    Ok(out)
}

/// Every dashboard query at `at`; one series per node where it groups by
/// node or instance.
fn dashboard_checks(s: &mut Servers, nodes: &[Node], dash: &Dashboard, range: &str, at: f64) -> Vec<Check> {
    let vars: Vec<(&str, &str)> = vec![
        ("job", PULL_JOB),
        ("instance", ".+"),
        ("node", ".*"),
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "5s"),
        ("__range", range),
        ("datasource", "prometheus"),
    ];
    let names: BTreeSet<String> = nodes.iter().map(|n| n.spec.name.to_string()).collect();
    let instances: BTreeMap<String, String> = nodes.iter().map(|n| (n.instance(), n.spec.name.to_string())).collect();
    let mut out = Vec::new();
    for q in dashboard_queries(dash) {
        let c = match &q.kind {
            DashQueryKind::Expr(e) => match substitute(e, &vars) {
                Ok(expr) => match s.main.query_at(&expr, at) {
                    Ok(d) => {
                        let (ok, detail) = judge_per_node(&d, &names, &instances);
                        Check::new(q.name, Some(expr), ok, detail)
                    }
                    Err(err) => Check::new(q.name, Some(expr), false, format!("query failed: {err:#}")),
                },
                Err(why) => Check::new(q.name, Some(e.clone()), false, why),
            },
            DashQueryKind::LabelValues { selector, label } => label_values_check(s, &q.name, selector, label, &vars, &names, &instances),
            DashQueryKind::Unsupported(t) => Check::new(q.name, Some(t.clone()), false, "template query this test cannot evaluate"),
        };
        out.push(c);
    }
    out
}

/// A result grouped by node or instance (every series labelled by those
/// alone) must have one series per node; any other must have data.
pub fn judge_per_node(d: &QueryData, names: &BTreeSet<String>, instances: &BTreeMap<String, String>) -> (bool, String) {
    let (ok, detail) = judge_result(d);
    let series = d.series();
    let grouped = !series.is_empty()
        && series.iter().all(|x| !x.metric.is_empty() && x.metric.keys().all(|k| k == "node" || k == "instance"));
    if !ok || !grouped {
        return (ok, detail);
    }
    let seen: Vec<String> = series
        .iter()
        .map(|x| x.metric.get("node").cloned().or_else(|| x.metric.get("instance").and_then(|i| instances.get(i).cloned())).unwrap_or_default())
        .collect();
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    if seen.len() == names.len() && &distinct == names {
        (true, format!("one series per node; {detail}"))
    } else {
        (false, format!("expected one series per node ({}), got {}: {detail}", names.len(), seen.join(", ")))
    }
}

/// `label_values(selector, label)`: the nodes' names, instances or the job.
fn label_values_check(
    s: &mut Servers,
    name: &str,
    selector: &str,
    label: &str,
    vars: &[(&str, &str)],
    names: &BTreeSet<String>,
    instances: &BTreeMap<String, String>,
) -> Check {
    let sel = match substitute(selector, vars) {
        Ok(x) => x,
        Err(why) => return Check::new(name, Some(selector.to_string()), false, why),
    };
    let mut target = format!("/api/v1/label/{label}/values");
    if !sel.is_empty() {
        target.push_str(&format!("?match[]={}", url_encode(&sel)));
    }
    let shown = format!("label_values({sel}, {label})");
    let values: Vec<String> = match s.main.api(&target) {
        Ok(v) => v,
        Err(e) => return Check::new(name, Some(shown), false, format!("query failed: {e:#}")),
    };
    let got: BTreeSet<String> = values.iter().cloned().collect();
    let ok = match label {
        "node" => &got == names,
        "instance" => got.iter().eq(instances.keys()),
        "job" => got.contains(PULL_JOB),
        _ => !got.is_empty(),
    };
    Check::new(name, Some(shown), ok, format!("values: {}", values.join(", ")))
}

/// `/api/v1/alerts`.
#[derive(Debug, Deserialize)]
struct AlertsData {
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
struct Alert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    state: String,
}

/// The node whose io_uring buffer outlived the process that registered it
/// (another process keeps the ring): gupwatch names that process as the
/// holder on that node only, and the orphaned-pin alert, its `for:`
/// shortened so that a false alarm would fire within the test, fires on no
/// node: pins a live process holds are not a leak.
fn alert_checks(s: &mut Servers, nodes: &[Node]) -> Result<Vec<Check>> {
    let handoff: BTreeSet<String> =
        nodes.iter().filter(|n| n.spec.workload == super::Workload::HandoffAndMix).map(|n| n.instance()).collect();
    let by_instance: BTreeMap<String, &str> = nodes.iter().map(|n| (n.instance(), n.spec.name)).collect();
    let show = |set: &BTreeSet<String>| -> String {
        let v: Vec<&str> = set.iter().map(|i| by_instance.get(i).copied().unwrap_or(i.as_str())).collect();
        if v.is_empty() { "none".into() } else { v.join(", ") }
    };
    let rules_path = util::workspace_root().join("dashboards/prometheus/alerts.yml");
    let expr = alert_expr(&fs::read_to_string(&rules_path).with_context(|| format!("reading {}", rules_path.display()))?, ORPHAN_ALERT)
        .with_context(|| format!("no alert {ORPHAN_ALERT} in {}", rules_path.display()))?;
    let held_expr = format!("{HELD_BY_OTHER}{{job=\"{PULL_JOB}\"}} > 0");
    let t = Instant::now();
    // The rule engine evaluates every interval: give it several, so that a
    // pending alert would have turned firing.
    loop {
        let held: BTreeSet<String> = s.main.query(&held_expr)?.series().iter().map(|x| label(&x.metric, "instance")).collect();
        let selected: BTreeSet<String> = s.main.query(&expr)?.series().iter().map(|x| label(&x.metric, "instance")).collect();
        let alerts: AlertsData = s.main.api("/api/v1/alerts")?;
        let active: Vec<&Alert> = alerts.alerts.iter().filter(|a| a.labels.get("alertname").map(String::as_str) == Some(ORPHAN_ALERT)).collect();
        let active_at: BTreeSet<String> = active.iter().map(|a| label(&a.labels, "instance")).collect();
        let states: BTreeSet<String> = active.iter().map(|a| format!("{} {}", a.state, label(&a.labels, "job"))).collect();
        let settled = held == handoff && t.elapsed() > Duration::from_secs(3 * SCRAPE_INTERVAL_S);
        if settled || t.elapsed() > Duration::from_secs(6 * SCRAPE_INTERVAL_S) {
            return Ok(vec![
                Check::new(
                    format!("{HELD_BY_OTHER}: the live holder is named on the hand-off node only"),
                    Some(held_expr),
                    held == handoff,
                    format!("on {} (expected {})", show(&held), show(&handoff)),
                ),
                Check::new(
                    format!("alert {ORPHAN_ALERT}: its expression selects no node"),
                    Some(expr.clone()),
                    selected.is_empty(),
                    format!("selects {}", show(&selected)),
                ),
                Check::new(
                    format!("alert {ORPHAN_ALERT}: active on no node"),
                    None,
                    active_at.is_empty(),
                    format!(
                        "active on {} ({}; `for:` shortened to {})",
                        show(&active_at),
                        states.into_iter().collect::<Vec<_>>().join(", "),
                        super::rules::FLEET_FOR
                    ),
                ),
            ]);
        }
        thread::sleep(Duration::from_secs(SCRAPE_INTERVAL_S));
    }
}

/// The `expr:` of an alert in a rule file (one line or a `|` block).
pub fn alert_expr(yaml: &str, alert: &str) -> Option<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("- alert: {alert}")).skip(1);
    let first = lines.find(|l| l.trim_start().starts_with("expr:"))?;
    let inline = first.trim_start().trim_start_matches("expr:").trim();
    if !inline.is_empty() && inline != "|" {
        return Some(inline.to_string());
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let block: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || indent(l) > indent(first)).collect();
    Some(block.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_exact_or_short_by_misses_gupwatch_reported() {
        let k = (512.0, 256.0);
        assert_eq!(totals_verdict((Some(512.0), Some(256.0)), k, 0.0), Totals::Exact);
        assert_eq!(totals_verdict((Some(256.0), Some(256.0)), k, 2.0), Totals::ShortByReportedMisses);
        // Short with no miss reported, more than the kernel, or no series.
        assert_eq!(totals_verdict((Some(256.0), Some(256.0)), k, 0.0), Totals::Wrong);
        assert_eq!(totals_verdict((Some(768.0), Some(256.0)), k, 2.0), Totals::Wrong);
        assert_eq!(totals_verdict((None, Some(256.0)), k, 0.0), Totals::Wrong);
    }

    #[test]
    fn finds_the_orphan_alert_expression() {
        let y = fs::read_to_string(util::workspace_root().join("dashboards/prometheus/alerts.yml")).unwrap();
        let e = alert_expr(&y, ORPHAN_ALERT).unwrap();
        assert!(e.contains("gupwatch_leak_pages{kind=\"orphaned\"}") && e.ends_with("> 0"), "{e}");
        let e = alert_expr(&y, "GupwatchOutstandingDiverging").unwrap();
        assert!(e.starts_with("abs(") && e.contains("> 4096") && !e.contains("for:"), "{e}");
    }

    #[test]
    fn per_node_results() {
        let names: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let inst: BTreeMap<String, String> = [("h:1".into(), "a".into()), ("h:2".into(), "b".into())].into();
        let q = |json: &str| -> QueryData { serde_json::from_str(json).unwrap() };
        let two = q(r#"{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[1,"3"]},{"metric":{"node":"b"},"value":[1,"NaN"]}]}"#);
        assert!(judge_per_node(&two, &names, &inst).0);
        let by_inst = q(r#"{"resultType":"vector","result":[{"metric":{"instance":"h:1"},"value":[1,"3"]},{"metric":{"instance":"h:2"},"value":[1,"0"]}]}"#);
        assert!(judge_per_node(&by_inst, &names, &inst).0);
        let one = q(r#"{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[1,"3"]}]}"#);
        let (ok, why) = judge_per_node(&one, &names, &inst);
        assert!(!ok && why.contains("one series per node"), "{why}");
        // Not grouped by node: data is enough.
        let by_kind = q(r#"{"resultType":"vector","result":[{"metric":{"kind":"pin"},"value":[1,"3"]}]}"#);
        assert!(judge_per_node(&by_kind, &names, &inst).0);
        let summed = q(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}"#);
        assert!(judge_per_node(&summed, &names, &inst).0);
    }
}
