//! The checks, once Prometheus has data: the dashboard's queries, the
//! rules, a retry of what had no data yet, and promtool on `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::dashboard::{dashboard_queries, dashboard_range, grafana_regex_escape, substitute, DashQueryKind, Dashboard};
use super::http::{http_get, url_encode};
use super::prometheus::{judge_result, Prometheus, RuleState, RulesData};
use super::{Check, DATA_DEADLINE, HTTP_TIMEOUT, JOB, MIN_SCRAPES, NODE, PROBE_ALERTS, RATE_INTERVAL, RETRIES, RETRY_PAUSE, SCRAPE_INTERVAL_S};
use crate::vm::VmOutcome;
use crate::say;
use crate::util;

fn interrupted_check() -> Result<()> {
    if util::interrupted() {
        return Err(anyhow!(util::Interrupted));
    }
    Ok(())
}

/// A check that found no data, by its index in the list, and how to ask
/// again.
type Pending = Vec<(usize, Probe)>;

/// Waits for the data, then runs every check.
pub(super) fn check_all(
    p: &mut Prometheus,
    dash: &Dashboard,
    expected_records: &[String],
    expected_alerts: &[String],
    metrics_port: u16,
    vm: &thread::JoinHandle<Result<VmOutcome>>,
    started: Instant,
) -> Result<(Vec<Check>, Vec<String>)> {
    let mut notes = Vec::new();
    wait_for_scrapes(p, vm, started)?;
    let mut checks: Vec<Check> = Vec::new();
    // (index in checks, how to evaluate) of the checks to retry if no data.
    let mut pending: Pending = Vec::new();
    dashboard_checks(p, dash, metrics_port, &mut checks, &mut pending, &mut notes)?;
    rule_checks(p, expected_records, expected_alerts, &mut checks, &mut pending)?;
    bpf_stats_checks(p, &mut checks, &mut pending);
    retry_pending(p, &mut checks, pending)?;

    // 5. The exposition itself, through the forward.
    checks.push(promtool_check(metrics_port));
    Ok((checks, notes))
}

/// Until Prometheus has enough scrapes of gupwatch (or the VM ended, or
/// the deadline passed).
fn wait_for_scrapes(
    p: &mut Prometheus,
    vm: &thread::JoinHandle<Result<VmOutcome>>,
    started: Instant,
) -> Result<()> {
    // 1. Enough scrapes of a gupwatch whose probes are attached and see pins.
    let ready_expr = format!("sum_over_time(up{{job=\"{JOB}\"}}[5m])");
    let mut last_report = Instant::now();
    loop {
        interrupted_check()?;
        if vm.is_finished() {
            bail!("the VM ended before Prometheus had {MIN_SCRAPES} scrapes of gupwatch");
        }
        let scrapes = p.scalar(&ready_expr).unwrap_or(0.0);
        if scrapes >= MIN_SCRAPES as f64 {
            say!(
                "e2e",
                "Prometheus has {scrapes} scrapes of gupwatch after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > DATA_DEADLINE {
            bail!(
                "Prometheus had only {scrapes} successful scrapes of the guest's gupwatch after {} s (see the console log in target/vm-logs/)",
                DATA_DEADLINE.as_secs()
            );
        }
        if last_report.elapsed() > Duration::from_secs(20) {
            say!(
                "e2e",
                "waiting for scrapes ({scrapes} of {MIN_SCRAPES} so far)"
            );
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_secs(1));
    }
    // Two more rule evaluations, so recording rules have written samples.
    thread::sleep(Duration::from_secs(2 * SCRAPE_INTERVAL_S + 1));
    Ok(())
}

/// Every query of the dashboard, with Grafana's variables.
fn dashboard_checks(
    p: &mut Prometheus,
    dash: &Dashboard,
    metrics_port: u16,
    checks: &mut Vec<Check>,
    pending: &mut Pending,
    notes: &mut Vec<String>,
) -> Result<()> {
    // 2. The dashboard's queries, with Grafana's variables.
    let instance = format!("127.0.0.1:{metrics_port}");
    let instance_re = grafana_regex_escape(&instance);
    let range = dashboard_range(dash);
    let vars: Vec<(&str, &str)> = vec![
        ("job", JOB),
        ("instance", &instance_re),
        ("node", NODE),
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "2s"),
        ("__range", &range),
        ("datasource", "prometheus"),
    ];
    notes.push(format!(
        "dashboard variables: $job={JOB}, $instance={instance_re}, $node={NODE}, $__rate_interval={RATE_INTERVAL}, $__interval=2s, $__range={range} (the dashboard's default range)"
    ));
    for q in dashboard_queries(dash) {
        interrupted_check()?;
        let probe = match &q.kind {
            DashQueryKind::Expr(e) => match substitute(e, &vars) {
                Ok(expr) => Probe::Expr(expr),
                Err(why) => {
                    checks.push(Check::new(q.name, Some(e.clone()), false, why));
                    continue;
                }
            },
            DashQueryKind::LabelValues { selector, label } => match substitute(selector, &vars) {
                Ok(sel) => Probe::LabelValues {
                    selector: sel,
                    label: label.clone(),
                    expect: expected_label(label, &instance),
                },
                Err(why) => {
                    checks.push(Check::new(q.name, Some(selector.clone()), false, why));
                    continue;
                }
            },
            DashQueryKind::Unsupported(t) => {
                checks.push(Check::new(
                    q.name,
                    Some(t.clone()),
                    false,
                    "template query this test cannot evaluate",
                ));
                continue;
            }
        };
        let c = probe.eval(p, &q.name);
        if !c.ok {
            pending.push((checks.len(), probe));
        }
        checks.push(c);
    }
    Ok(())
}

/// The guest runs `gupwatch run --bpf-stats`: the kernel counts its
/// programs' runs, and the pin programs (entry of a pin API, fentry or
/// kprobe) ran under the workload. Checked through Prometheus, as a
/// dashboard would ask.
fn bpf_stats_checks(p: &mut Prometheus, checks: &mut Vec<Check>, pending: &mut Pending) {
    for (name, expr) in [
        ("BPF run statistics on (--bpf-stats)", format!(r#"gupwatch_bpf_stats_enabled{{job="{JOB}"}} == 1"#)),
        (
            "BPF pin programs ran (runs and run time > 0)",
            format!(
                r#"sum(gupwatch_bpf_program_runs_total{{job="{JOB}",hook=~"(fentry|kprobe) pin_user_pages.*"}}) > 0 and sum(gupwatch_bpf_program_run_seconds_total{{job="{JOB}",hook=~"(fentry|kprobe) pin_user_pages.*"}}) > 0"#
            ),
        ),
    ] {
        let probe = Probe::Expr(expr);
        let c = probe.eval(p, name);
        if !c.ok {
            pending.push((checks.len(), probe));
        }
        checks.push(c);
    }
}

/// Rules: health and state from /api/v1/rules; recorded series; the
/// probe alerts quiet while the probes are attached.
fn rule_checks(
    p: &mut Prometheus,
    expected_records: &[String],
    expected_alerts: &[String],
    checks: &mut Vec<Check>,
    pending: &mut Pending,
) -> Result<()> {
    // 3. Rules: health and state from /api/v1/rules; recorded series.
    let mut rules = fetch_rules(p)?;
    // Rules not yet evaluated report health "unknown": give them a moment.
    for _ in 0..5 {
        if rules.iter().all(|r| r.health != "unknown") {
            break;
        }
        thread::sleep(Duration::from_secs(SCRAPE_INTERVAL_S));
        rules = fetch_rules(p)?;
    }
    // Every rule the files define must be loaded, of its kind.
    for (kind, label, file, names) in [
        ("recording", "recording rule", "recording.yml", expected_records),
        ("alerting", "alert", "alerts.yml", expected_alerts),
    ] {
        for name in names {
            if !rules.iter().any(|r| r.kind == kind && &r.name == name) {
                checks.push(Check::new(
                    format!("{label} {name}"),
                    None,
                    false,
                    format!("in {file} but not loaded by Prometheus"),
                ));
            }
        }
    }
    for r in &rules {
        if r.kind == "recording" {
            let name = format!("recording rule {}", r.name);
            if r.health != "ok" {
                checks.push(Check::new(
                    name,
                    Some(r.query.clone()),
                    false,
                    format!("health {} {}", r.health, r.last_error),
                ));
                continue;
            }
            let probe = Probe::Expr(r.name.clone());
            let c = probe.eval(p, &name);
            if !c.ok {
                pending.push((checks.len(), probe));
            }
            checks.push(c);
        }
    }
    let hooks = p
        .scalar(&format!("sum(gupwatch_probe_attached{{job=\"{JOB}\"}})"))
        .unwrap_or(0.0);
    for r in rules.iter().filter(|r| r.kind == "alerting") {
        let name = format!("alert {}", r.name);
        let must_be_quiet = PROBE_ALERTS.contains(&r.name.as_str());
        let (ok, detail) = if r.health != "ok" {
            (false, format!("health {} {}", r.health, r.last_error))
        } else if must_be_quiet && hooks < 1.0 {
            (false, format!("no probe attached (sum(gupwatch_probe_attached) = {hooks}), so the probe alerts cannot be judged"))
        } else if must_be_quiet && r.state != "inactive" {
            (
                false,
                format!("{} with {hooks} hooks attached (must be inactive)", r.state),
            )
        } else if must_be_quiet {
            (
                true,
                format!("health ok, inactive with {hooks} hooks attached"),
            )
        } else {
            (true, format!("health ok, {}", r.state))
        };
        checks.push(Check::new(name, Some(r.query.clone()), ok, detail));
    }
    Ok(())
}

/// Retries what had no data: a rate may need one more sample.
fn retry_pending(p: &mut Prometheus, checks: &mut [Check], mut pending: Pending) -> Result<()> {
    // 4. Retry what had no data: a rate may need one more sample.
    let mut waited = Duration::ZERO;
    for _ in 0..RETRIES {
        if pending.is_empty() {
            break;
        }
        interrupted_check()?;
        thread::sleep(RETRY_PAUSE);
        waited += RETRY_PAUSE;
        let mut still = Vec::new();
        for (i, probe) in pending {
            let c = probe.eval(p, &checks[i].name);
            if c.ok {
                checks[i] = Check {
                    detail: format!("{} (after waiting {} s more)", c.detail, waited.as_secs()),
                    ..c
                };
            } else {
                checks[i] = c;
                still.push((i, probe));
            }
        }
        pending = still;
    }
    Ok(())
}

fn expected_label(label: &str, instance: &str) -> Option<String> {
    match label {
        "job" => Some(JOB.to_string()),
        "instance" => Some(instance.to_string()),
        "node" => Some(NODE.to_string()),
        _ => None,
    }
}

/// How a check asks Prometheus.
#[derive(Debug, Clone)]
enum Probe {
    Expr(String),
    LabelValues {
        selector: String,
        label: String,
        expect: Option<String>,
    },
}

impl Probe {
    fn eval(&self, p: &mut Prometheus, name: &str) -> Check {
        match self {
            Probe::Expr(expr) => match p.query(expr) {
                Ok(d) => {
                    let (ok, detail) = judge_result(&d);
                    Check::new(name, Some(expr.clone()), ok, detail)
                }
                Err(e) => Check::new(
                    name,
                    Some(expr.clone()),
                    false,
                    format!("query failed: {e:#}"),
                ),
            },
            Probe::LabelValues {
                selector,
                label,
                expect,
            } => {
                let mut target = format!("/api/v1/label/{label}/values");
                if !selector.is_empty() {
                    target.push_str(&format!("?match[]={}", url_encode(selector)));
                }
                let shown = format!("label_values({selector}, {label})");
                match p.api::<Vec<String>>(&target) {
                    Ok(values) => {
                        let ok = !values.is_empty()
                            && expect.as_ref().is_none_or(|e| values.contains(e));
                        let detail = if values.is_empty() {
                            "no values".to_string()
                        } else if ok {
                            format!("values: {}", values.join(", "))
                        } else {
                            format!(
                                "values {} lack {}",
                                values.join(", "),
                                expect.as_deref().unwrap_or("")
                            )
                        };
                        Check::new(name, Some(shown), ok, detail)
                    }
                    Err(e) => Check::new(name, Some(shown), false, format!("query failed: {e:#}")),
                }
            }
        }
    }
}

fn fetch_rules(p: &mut Prometheus) -> Result<Vec<RuleState>> {
    let d: RulesData = p.api("/api/v1/rules").context("listing the rules")?;
    let out: Vec<RuleState> = d.groups.into_iter().flat_map(|g| g.rules).collect();
    if out.is_empty() {
        bail!("Prometheus loaded no rules from recording.yml and alerts.yml");
    }
    Ok(out)
}

/// `promtool check metrics` on one scrape of `/metrics` (Prometheus text
/// format, which is what promtool parses).
fn promtool_check(metrics_port: u16) -> Check {
    let name = "promtool check metrics (/metrics through the forward)";
    let body = match http_get(metrics_port, "/metrics", HTTP_TIMEOUT) {
        Ok((200, b)) => b,
        Ok((st, _)) => return Check::new(name, None, false, format!("GET /metrics answered {st}")),
        Err(e) => return Check::new(name, None, false, format!("{e:#}")),
    };
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Check::new(name, None, false, format!("cannot run promtool: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    match child.wait_with_output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let families = String::from_utf8_lossy(&body)
                .lines()
                .filter(|l| l.starts_with("# TYPE "))
                .count();
            if out.status.success() {
                Check::new(
                    name,
                    None,
                    true,
                    format!("{} bytes, {families} families, no problems", body.len()),
                )
            } else {
                Check::new(
                    name,
                    None,
                    false,
                    format!("{}: {}", out.status, text.trim().replace('\n', "; ")),
                )
            }
        }
        Err(e) => Check::new(name, None, false, format!("promtool: {e}")),
    }
}

