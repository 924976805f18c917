//! A Prometheus server on the host, and its HTTP API answers as typed
//! structs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::http::{http_get, url_encode};
use super::{HTTP_TIMEOUT, JOB, NODE, SCRAPE_INTERVAL_S};
use crate::say;
use crate::util;

/// A Prometheus server on the host's loopback; killed when dropped.
pub(crate) struct Prometheus {
    child: Child,
    port: u16,
    pub(crate) log: PathBuf,
}

/// The `global:` section: scrape and evaluation every `interval_s`, and
/// these external labels.
pub(crate) fn global_yaml(interval_s: u64, external: &[(&str, &str)]) -> String {
    let mut y = format!(
        "global:\n  scrape_interval: {i}s\n  scrape_timeout: {i}s\n  evaluation_interval: {i}s\n",
        i = interval_s
    );
    if !external.is_empty() {
        y.push_str("  external_labels:\n");
        for (k, v) in external {
            let _ = writeln!(y, "    {k}: \"{v}\"");
        }
    }
    y
}

/// The `rule_files:` section (empty without rule files).
pub(crate) fn rule_files_yaml(rule_files: &[PathBuf]) -> String {
    let mut y = String::new();
    if !rule_files.is_empty() {
        y.push_str("rule_files:\n");
    }
    for r in rule_files {
        let _ = writeln!(y, "  - \"{}\"", r.display());
    }
    y
}

/// One item of `scrape_configs:`: job `job` scraping `/metrics` of each
/// (address, node name) target, the node name as label `node`.
pub(crate) fn scrape_job_yaml(job: &str, interval_s: u64, targets: &[(String, String)]) -> String {
    let mut y = format!(
        "  - job_name: {job}\n    scrape_interval: {interval_s}s\n    metrics_path: /metrics\n    static_configs:\n"
    );
    for (addr, node) in targets {
        let _ = writeln!(y, "      - targets: [\"{addr}\"]\n        labels:\n          node: \"{node}\"");
    }
    y
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGTERM first (it flushes and exits within a second or two), then
        // SIGKILL: bounded either way.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// The end-to-end test's server: one scrape job of gupwatch on
    /// `target_port` (with a `node` label, as the Kubernetes monitor's
    /// relabelling gives one), and the rule files.
    pub(super) fn start(
        dir: &Path,
        port: u16,
        target_port: u16,
        rule_files: &[PathBuf],
    ) -> Result<Prometheus> {
        let yml = format!(
            "# Written by `cargo xtask test` (end-to-end step).\n{}{}scrape_configs:\n{}",
            global_yaml(SCRAPE_INTERVAL_S, &[]),
            rule_files_yaml(rule_files),
            scrape_job_yaml(JOB, SCRAPE_INTERVAL_S, &[(format!("127.0.0.1:{target_port}"), NODE.to_string())]),
        );
        Prometheus::launch(dir, "prometheus", port, &yml, &[])
    }

    /// Starts Debian's `prometheus` with this configuration on
    /// 127.0.0.1:`port`, its files named `name` in `dir` (`name.yml`, the
    /// data folder `name-data`, `name.log`), plus `extra` arguments; waits
    /// until it is ready.
    pub(crate) fn launch(dir: &Path, name: &str, port: u16, config: &str, extra: &[&str]) -> Result<Prometheus> {
        let config_path = dir.join(format!("{name}.yml"));
        fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("{name}.log"));
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let data = dir.join(format!("{name}-data"));
        let agent = extra.contains(&"--enable-feature=agent");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.{}.path={}",
                if agent { "agent" } else { "tsdb" },
                data.display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        say!(
            "prometheus",
            "starting {name} on 127.0.0.1:{port}: {}",
            util::display_cmd(&cmd)
        );
        let child = cmd.spawn().context(
            "starting prometheus (Debian package `prometheus`: run `cargo xtask setup`)",
        )?;
        let p = Prometheus { child, port, log };
        p.wait_ready()?;
        Ok(p)
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..]
            .iter()
            .map(|l| format!("    | {l}\n"))
            .collect()
    }

    fn wait_ready(&self) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.port, "/-/ready", Duration::from_secs(2)) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "Prometheus was not ready within 30 s; its log ends:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// GET an API path; the `data` member of a successful answer.
    pub(crate) fn api<T: DeserializeOwned>(&mut self, target: &str) -> Result<T> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!(
                "Prometheus exited ({st}); its log ends:\n{}",
                self.log_tail()
            );
        }
        let (status, body) = http_get(self.port, target, HTTP_TIMEOUT)?;
        let head: ApiStatus = serde_json::from_slice(&body)
            .with_context(|| format!("Prometheus answered {target} with {status} and no JSON"))?;
        if head.status.as_deref() != Some("success") {
            bail!(
                "{}: {}",
                head.error_type.as_deref().unwrap_or("error"),
                head.error.as_deref().unwrap_or("(no message)")
            );
        }
        let ok: ApiSuccess<T> = serde_json::from_slice(&body)
            .with_context(|| format!("Prometheus answered {target} with data of an unexpected shape"))?;
        Ok(ok.data)
    }

    pub(crate) fn query(&mut self, expr: &str) -> Result<QueryData> {
        self.api(&format!("/api/v1/query?query={}", url_encode(expr)))
    }

    /// A query evaluated at `time` (Unix seconds) rather than now.
    pub(crate) fn query_at(&mut self, expr: &str, time: f64) -> Result<QueryData> {
        self.api(&format!("/api/v1/query?query={}&time={time:.3}", url_encode(expr)))
    }

    /// The value of a query that returns one sample (0 if none).
    pub(crate) fn scalar(&mut self, expr: &str) -> Result<f64> {
        let d = self.query(expr)?;
        Ok(d.series()
            .first()
            .and_then(|s| s.value.as_ref())
            .and_then(|v| v.1.parse().ok())
            .unwrap_or(0.0))
    }
}

/// The status part of every Prometheus API answer.
#[derive(Debug, Deserialize)]
struct ApiStatus {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A successful Prometheus API answer.
#[derive(Debug, Deserialize)]
struct ApiSuccess<T> {
    data: T,
}

/// `data` of `/api/v1/query`.
#[derive(Debug, Deserialize)]
pub struct QueryData {
    /// `vector`, `matrix`, `scalar` or `string`.
    #[serde(rename = "resultType")]
    pub result_type: String,
    /// The result, whose shape the type says.
    pub result: QueryResult,
}

/// The `result` of a query.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum QueryResult {
    /// Of a vector or a matrix.
    Series(Vec<Series>),
    /// Of a scalar or a string: `[time, "value"]`.
    Sample(Sample),
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

/// One series of a vector (`value`) or a matrix (`values`).
#[derive(Debug, Deserialize)]
pub struct Series {
    /// Its labels.
    #[serde(default)]
    pub metric: std::collections::BTreeMap<String, String>,
    /// Its sample, in a vector.
    #[serde(default)]
    pub value: Option<Sample>,
    /// Its samples, in a matrix.
    #[serde(default)]
    pub values: Vec<Sample>,
}

/// `[unix time, "value"]`: Prometheus sends values as strings.
#[derive(Debug, Deserialize)]
pub struct Sample(pub f64, pub String);

impl QueryData {
    /// The series of a vector or matrix (none for other results).
    pub fn series(&self) -> &[Series] {
        match &self.result {
            QueryResult::Series(s) => s,
            _ => &[],
        }
    }
}

/// `data` of `/api/v1/rules`.
#[derive(Debug, Deserialize)]
pub(super) struct RulesData {
    #[serde(default)]
    pub(super) groups: Vec<RuleGroup>,
}

/// One rule group.
#[derive(Debug, Deserialize)]
pub(super) struct RuleGroup {
    #[serde(default)]
    pub(super) rules: Vec<RuleState>,
}

/// One rule as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct RuleState {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) query: String,
    pub(super) health: String,
    #[serde(rename = "lastError")]
    pub(super) last_error: String,
    pub(super) state: String,
}

/// Judges a `/api/v1/query` result: data that is not only NaN.
pub fn judge_result(data: &QueryData) -> (bool, String) {
    let kind = data.result_type.as_str();
    match kind {
        "vector" | "matrix" => {
            let series = data.series();
            if series.is_empty() {
                return (false, "no data (empty result)".into());
            }
            let values: Vec<String> = series
                .iter()
                .filter_map(|s| s.value.as_ref().or_else(|| s.values.first()))
                .map(|v| v.1.clone())
                .collect();
            let numeric: Vec<f64> = values
                .iter()
                .filter_map(|v| v.parse::<f64>().ok())
                .collect();
            let real = numeric.iter().filter(|v| !v.is_nan()).count();
            let shown: Vec<String> = values.iter().take(4).map(|v| short_number(v)).collect();
            let more = if values.len() > 4 { ", ..." } else { "" };
            let summary = format!(
                "{} series: {}{more}{}",
                series.len(),
                shown.join(", "),
                if real < numeric.len() {
                    format!(" ({} NaN)", numeric.len() - real)
                } else {
                    String::new()
                }
            );
            if real == 0 && !numeric.is_empty() {
                (false, format!("only NaN ({summary})"))
            } else {
                (true, summary)
            }
        }
        "scalar" | "string" => (
            true,
            format!(
                "{kind}: {}",
                match &data.result {
                    QueryResult::Sample(s) => s.1.as_str(),
                    _ => "?",
                }
            ),
        ),
        other => (false, format!("unexpected result type `{other}`")),
    }
}

fn short_number(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() != 0.0 => format!("{f:.4}"),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_results() {
        let v: QueryData = serde_json::from_str(r#"{"resultType":"vector","result":[]}"#).unwrap();
        assert!(!judge_result(&v).0);
        let v: QueryData = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#,
        )
        .unwrap();
        let (ok, d) = judge_result(&v);
        assert!(!ok && d.starts_with("only NaN"), "{d}");
        let v: QueryData = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]},{"metric":{},"value":[1,"0.25"]}]}"#,
        )
        .unwrap();
        let (ok, d) = judge_result(&v);
        assert!(ok, "{d}");
        assert!(d.contains("2 series") && d.contains("1 NaN"), "{d}");
        let v: QueryData = serde_json::from_str(r#"{"resultType":"scalar","result":[1,"3"]}"#).unwrap();
        assert!(judge_result(&v).0);
    }
}
