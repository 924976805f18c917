//! End-to-end test of the metrics path: gupwatch in a VM, scraped by a real
//! Prometheus server on the host, and every PromQL expression of the
//! dashboard and of the rule files evaluated against what it scraped.
//!
//! One guest boots with the guest's metrics port forwarded to a free port on
//! the host's loopback. In the guest, `gupwatch run` serves metrics while
//! `gupwatch workload` pins memory, a second workload holds a registered
//! io_uring buffer, and a loop makes a GUP call fail (for the errno panel).
//! On the host, Debian's `prometheus` (installed by `cargo xtask setup`)
//! listens on loopback only, scrapes the forwarded port every 2 s and
//! evaluates `dashboards/prometheus/{recording,alerts}.yml` every 2 s. Once
//! it has several scrapes, each check below goes through Prometheus's HTTP
//! API:
//!
//! * every `expr` of every panel of `dashboards/gupwatch-overview.json`
//!   (template variables substituted as Grafana would: `$job`, `$instance`,
//!   `$__rate_interval`, `$__range`, ...) must return a non-empty result that
//!   is not only NaN; so must the dashboard's template-variable queries;
//! * every recording rule must be healthy and its recorded series present;
//! * every alerting rule must be healthy, and the probe alerts
//!   (`GupwatchNoProbesAttached`, `GupwatchProbesDetached`) inactive while the
//!   probes are attached;
//! * `/metrics`, fetched once through the forward, must pass
//!   `promtool check metrics`.
//!
//! When the host side is done it connects to a second forwarded port, where
//! the guest waits with `nc -l`; the guest then stops its workloads and
//! gupwatch (which must exit 0) and powers off. Prometheus and the VM are
//! stopped on every path, and every wait is bounded.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::vm::kernels::BootKernel;
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};
use crate::say;
use crate::util;

/// gupwatch's metrics port in the guest.
pub const GUEST_METRICS_PORT: u16 = 10483;
/// Port in the guest where `nc -l` waits for the host to finish.
pub const GUEST_RELEASE_PORT: u16 = 10484;
/// The scrape job's name: `alerts.yml` (`up{job="gupwatch"}`) and the sample
/// `prometheus.yml` use it.
pub const JOB: &str = "gupwatch";
/// Scrape and rule-evaluation interval.
pub const SCRAPE_INTERVAL_S: u64 = 2;
/// What `$__rate_interval` becomes (Grafana: max(4 × scrape interval, ...)).
pub const RATE_INTERVAL: &str = "10s";
/// Successful scrapes Prometheus must have before the checks run.
pub const MIN_SCRAPES: u64 = 8;
/// How often, and how far apart, a check that found no data is retried.
const RETRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(4);
/// Longest time from the VM's start until Prometheus has its scrapes.
const DATA_DEADLINE: Duration = Duration::from_secs(180);
/// Longest a single HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The alerts that must stay inactive while gupwatch's probes are attached.
pub const PROBE_ALERTS: &[&str] = &["GupwatchNoProbesAttached", "GupwatchProbesDetached"];

/// Options of the end-to-end test.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Kernel to boot (the newest of the matrix).
    pub kernel: BootKernel,
    /// Static gupwatch for the guest.
    pub gupwatch: PathBuf,
    /// Time limit of the VM.
    pub timeout: Duration,
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked (e.g. `panel "Pin rate" A`).
    pub name: String,
    /// The PromQL expression as sent, if the check is one.
    pub expr: Option<String>,
    /// The verdict.
    pub ok: bool,
    /// The result in short (series count and values), or why it failed.
    pub detail: String,
}

impl Check {
    fn new(
        name: impl Into<String>,
        expr: Option<String>,
        ok: bool,
        detail: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            expr,
            ok,
            detail: detail.into(),
        }
    }
}

/// The outcome of a run that got as far as checking.
#[derive(Debug)]
pub struct E2eReport {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Remarks that are neither passes nor failures.
    pub notes: Vec<String>,
    /// Wall-clock time of the whole test.
    pub elapsed: Duration,
}

/// Renders the checks as `PASS`/`FAIL` lines; failed PromQL checks show the
/// expression that was sent.
pub fn render(report: &E2eReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = String::new();
    for c in &report.checks {
        let _ = writeln!(
            out,
            "  {}  {:<width$}  {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
        if !c.ok {
            if let Some(e) = &c.expr {
                let _ = writeln!(out, "        query: {e}");
            }
        }
    }
    for n in &report.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

// ---------------------------------------------------------------------------
// Queries: the dashboard and the rule files

/// One query of the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashQuery {
    /// `panel "<title>" <refId>` or `variable $<name>`.
    pub name: String,
    /// What to ask Prometheus.
    pub kind: DashQueryKind,
}

/// How a dashboard query is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DashQueryKind {
    /// A PromQL expression (template variables not yet substituted).
    Expr(String),
    /// Grafana's `label_values(selector, label)`: the label's values on the
    /// series the selector matches (`/api/v1/label/<label>/values`).
    LabelValues {
        /// Series selector, possibly empty (all series).
        selector: String,
        /// Label name.
        label: String,
    },
    /// A template query this test cannot evaluate.
    Unsupported(String),
}

/// Every query of a Grafana dashboard: the template variables of type
/// `query`, then each panel target's `expr`, panels in order (rows and
/// nested panels included).
pub fn dashboard_queries(dash: &Value) -> Vec<DashQuery> {
    let mut out = Vec::new();
    if let Some(vars) = dash.pointer("/templating/list").and_then(Value::as_array) {
        for v in vars {
            if v.get("type").and_then(Value::as_str) != Some("query") {
                continue;
            }
            let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
            let q = match v.get("query") {
                Some(Value::String(s)) => s.clone(),
                Some(o) => o
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            };
            out.push(DashQuery {
                name: format!("variable ${name}"),
                kind: template_query(&q),
            });
        }
    }
    fn walk(panels: &[Value], out: &mut Vec<DashQuery>) {
        for p in panels {
            let title = p
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("(untitled)");
            if let Some(targets) = p.get("targets").and_then(Value::as_array) {
                for (i, t) in targets.iter().enumerate() {
                    let Some(expr) = t.get("expr").and_then(Value::as_str) else {
                        continue;
                    };
                    if expr.trim().is_empty() {
                        continue;
                    }
                    let r = t
                        .get("refId")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("#{i}"));
                    out.push(DashQuery {
                        name: format!("panel \"{title}\" {r}"),
                        kind: DashQueryKind::Expr(expr.to_string()),
                    });
                }
            }
            if let Some(nested) = p.get("panels").and_then(Value::as_array) {
                walk(nested, out);
            }
        }
    }
    if let Some(panels) = dash.get("panels").and_then(Value::as_array) {
        walk(panels, &mut out);
    }
    // Old-style dashboards keep panels under rows.
    if let Some(rows) = dash.get("rows").and_then(Value::as_array) {
        for r in rows {
            if let Some(panels) = r.get("panels").and_then(Value::as_array) {
                walk(panels, &mut out);
            }
        }
    }
    out
}

/// Parses a Grafana Prometheus template query.
fn template_query(q: &str) -> DashQueryKind {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // The label is after the last comma outside braces and quotes.
        let (mut depth, mut quoted, mut split) = (0i32, false, None);
        for (i, c) in inner.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '{' | '(' if !quoted => depth += 1,
                '}' | ')' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => split = Some(i),
                _ => {}
            }
        }
        return match split {
            Some(i) => DashQueryKind::LabelValues {
                selector: inner[..i].trim().to_string(),
                label: inner[i + 1..].trim().to_string(),
            },
            None => DashQueryKind::LabelValues {
                selector: String::new(),
                label: inner.trim().to_string(),
            },
        };
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return DashQueryKind::Expr(inner.to_string());
    }
    DashQueryKind::Unsupported(q.to_string())
}

/// Replaces Grafana template variables (`$name`, `${name}`, `${name:fmt}`,
/// `[[name]]`) by their values; fails naming the first unknown variable.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> std::result::Result<String, String> {
    let lookup = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, len) = if let Some(t) = tail.strip_prefix("${") {
            match t.find('}') {
                Some(end) => (t[..end].split(':').next().unwrap_or(""), end + 3),
                None => return Err(format!("unterminated `${{` in `{expr}`")),
            }
        } else if let Some(t) = tail.strip_prefix("[[") {
            match t.find("]]") {
                Some(end) if t[..end].chars().all(ident) && end > 0 => {
                    (t[..end].split(':').next().unwrap_or(""), end + 4)
                }
                // A PromQL subquery or range, not a variable.
                _ => {
                    out.push('[');
                    rest = &tail[1..];
                    continue;
                }
            }
        } else if let Some(t) = tail.strip_prefix('$') {
            let n = t.chars().take_while(|c| ident(*c)).count();
            // `$1` in label_replace() is PromQL's own, not a variable.
            if n == 0 || t.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = &tail[1..];
                continue;
            }
            (&t[..n], n + 1)
        } else {
            out.push('[');
            rest = &tail[1..];
            continue;
        };
        match lookup(name) {
            Some(v) => out.push_str(v),
            None => return Err(format!("unknown template variable `{name}`")),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes regex metacharacters the way Grafana does for a Prometheus
/// variable used in `=~"..."` (the backslash itself escaped for PromQL's
/// double-quoted string).
pub fn grafana_regex_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if "\\^$*+?.()|{}[]".contains(c) {
            o.push_str("\\\\");
        }
        o.push(c);
    }
    o
}

/// `name:` values of the `- record:` / `- alert:` items of a rule file (a
/// cross-check of what Prometheus says it loaded).
pub fn rule_names(yaml: &str, key: &str) -> Vec<String> {
    let prefix = format!("- {key}:");
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The dashboard's default time range as a PromQL duration (`now-1h` →
/// `1h`), for `$__range`.
pub fn dashboard_range(dash: &Value) -> String {
    dash.pointer("/time/from")
        .and_then(Value::as_str)
        .and_then(|f| f.strip_prefix("now-"))
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("1h")
        .to_string()
}

// ---------------------------------------------------------------------------
// A minimal HTTP client (std only)

/// Percent-encodes a query-string component.
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = std::str::from_utf8(&body[..eol]).context("chunk size is not text")?;
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size `{size_hex}`"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// `GET target` from `127.0.0.1:port` (HTTP/1.0, so the server closes the
/// connection after the body); returns the status and body. Bounded by
/// `timeout` overall.
pub fn http_get(port: u16, target: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: text/plain, application/json\r\nUser-Agent: gupwatch-xtask\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "GET {target} on port {port}: no complete answer within {} s",
                timeout.as_secs()
            );
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(anyhow!(e)
                    .context(format!("reading the answer to GET {target} on port {port}")))
            }
        }
        if raw.len() > 64 << 20 {
            bail!("GET {target}: answer larger than 64 MiB");
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "GET {target} on port {port}: no HTTP header in the answer ({} bytes)",
            raw.len()
        );
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "GET {target}: bad status line `{}`",
                head.lines().next().unwrap_or("")
            )
        })?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

/// A free TCP port on 127.0.0.1 (free when asked; bound by someone else
/// later only in a race).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// Prometheus

/// A Prometheus server on the host's loopback; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
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
    fn start(
        dir: &Path,
        port: u16,
        target_port: u16,
        rule_files: &[PathBuf],
    ) -> Result<Prometheus> {
        let config = dir.join("prometheus.yml");
        let mut yml = format!(
            "# Written by `cargo xtask test` (end-to-end step).\n\
             global:\n  scrape_interval: {i}s\n  scrape_timeout: {i}s\n  evaluation_interval: {i}s\n\
             rule_files:\n"
            ,
            i = SCRAPE_INTERVAL_S
        );
        for r in rule_files {
            let _ = writeln!(yml, "  - \"{}\"", r.display());
        }
        let _ = write!(
            yml,
            "scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
        );
        fs::write(&config, yml).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("prometheus.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        say!(
            "e2e",
            "starting Prometheus on 127.0.0.1:{port}: {}",
            util::display_cmd(&cmd)
        );
        let child = cmd.spawn().context(
            "starting prometheus (Debian package `prometheus`: run `cargo xtask setup`)",
        )?;
        let p = Prometheus { child, port, log };
        p.wait_ready()?;
        Ok(p)
    }

    fn log_tail(&self) -> String {
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
    fn api(&mut self, target: &str) -> Result<Value> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!(
                "Prometheus exited ({st}); its log ends:\n{}",
                self.log_tail()
            );
        }
        let (status, body) = http_get(self.port, target, HTTP_TIMEOUT)?;
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("Prometheus answered {target} with {status} and no JSON"))?;
        if v.get("status").and_then(Value::as_str) != Some("success") {
            bail!(
                "{}: {}",
                v.get("errorType")
                    .and_then(Value::as_str)
                    .unwrap_or("error"),
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
            );
        }
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    fn query(&mut self, expr: &str) -> Result<Value> {
        self.api(&format!("/api/v1/query?query={}", url_encode(expr)))
    }

    /// The value of a query that returns one sample (0 if none).
    fn scalar(&mut self, expr: &str) -> Result<f64> {
        let d = self.query(expr)?;
        Ok(d.get("result")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(|s| s.pointer("/value/1"))
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }
}

/// Judges a `/api/v1/query` result: data that is not only NaN.
pub fn judge_result(data: &Value) -> (bool, String) {
    let kind = data
        .get("resultType")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match kind {
        "vector" | "matrix" => {
            let series = data
                .get("result")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if series.is_empty() {
                return (false, "no data (empty result)".into());
            }
            let values: Vec<String> = series
                .iter()
                .filter_map(|s| {
                    s.pointer("/value/1")
                        .or_else(|| s.pointer("/values/0/1"))
                        .and_then(Value::as_str)
                })
                .map(str::to_string)
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
                data.pointer("/result/1")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
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

// ---------------------------------------------------------------------------
// The guest

/// The guest command: gupwatch serving, two workloads, a failing GUP call
/// every few seconds, then a wait for the host's release.
pub fn guest_command(release_wait_s: u64) -> String {
    format!(
        r#"up() {{ cut -d' ' -f1 /proc/uptime; }}
{serve}gupwatch workload --seconds 50 --scratch /mnt/scratch 2>/tmp/workload.err &
W1=$!
gupwatch workload --hold 40 --scratch /mnt/scratch 2>/tmp/hold.err &
W2=$!
# Failing GUP calls for the errno panel: reading this shell's [vvar] mapping
# (VM_IO | VM_PFNMAP) through /proc/PID/mem makes get_user_pages_remote()
# fail with EFAULT.
V=$(awk '/\[vvar\]/ {{ split($1, a, "-"); print a[1]; exit }}' /proc/$$/maps)
if [ -z "$V" ]; then echo "e2e: no [vvar] mapping; no failing GUP calls" >&2; fi
( [ -n "$V" ] && for i in $(seq 12); do
    dd if=/proc/$$/mem of=/dev/null bs=4096 skip=$((0x$V / 4096)) count=1 2>/dev/null; sleep 5
  done ) &
W3=$!
echo "e2e: workloads started; waiting for the host (at most {wait} s)" >&2
echo ready | timeout {wait} nc -l -p {release} >/dev/null 2>&1
rel=$?
kill $W1 $W2 $W3 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
wait
echo "e2e: host released the guest (nc status $rel); gupwatch run exited with status $st ($(up) s after boot)" >&2
if [ $st -ne 0 ]; then cat /tmp/run.err >&2; fi
cat /tmp/workload.err /tmp/hold.err >&2
if [ $rel -ne 0 ]; then exit 4; fi
exit $st
"#,
        serve = crate::vm::serve_and_wait_sh("e2e", GUEST_METRICS_PORT),
        release = GUEST_RELEASE_PORT,
        wait = release_wait_s,
    )
}

/// Tells the guest the host is done: connects to the release port until
/// the guest's `nc` answers (a connection made before it listens is closed
/// by QEMU without data).
pub fn release_guest(port: u16, vm: &thread::JoinHandle<Result<VmOutcome>>, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within && !vm.is_finished() {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 16];
            if let Ok(n) = s.read(&mut buf) {
                if buf[..n].starts_with(b"ready") {
                    return true;
                }
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    false
}

// ---------------------------------------------------------------------------
// The test

/// Runs the end-to-end test. `Err` means it could not be run at all;
/// otherwise every check is in the report.
pub fn run(o: &E2eOptions) -> Result<E2eReport> {
    let started = Instant::now();
    for p in ["prometheus", "promtool"] {
        if !util::have_program(p) {
            bail!("`{p}` is not installed: run `cargo xtask setup` (installs the Debian package prometheus)");
        }
    }
    let root = util::workspace_root();
    let dash_path = root.join("dashboards/gupwatch-overview.json");
    let rules_dir = root.join("dashboards/prometheus");
    let rule_files = vec![
        rules_dir.join("recording.yml"),
        rules_dir.join("alerts.yml"),
    ];
    let dash: Value = serde_json::from_str(
        &fs::read_to_string(&dash_path)
            .with_context(|| format!("reading {}", dash_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", dash_path.display()))?;
    let mut expected_records = Vec::new();
    let mut expected_alerts = Vec::new();
    for f in &rule_files {
        let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        expected_records.extend(rule_names(&text, "record"));
        expected_alerts.extend(rule_names(&text, "alert"));
    }

    let metrics_port = free_port()?;
    let release_port = free_port()?;
    let prom_port = free_port()?;
    let dir = util::target_dir().join("e2e").join(format!(
        "{}-{}",
        util::timestamp(),
        &util::nonce()[..6]
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // Signals are ours to handle from here on (Prometheus and the VM must
    // not outlive us); the loops below poll util::interrupted().
    let _guard = util::guest_active();
    let release_wait = o.timeout.as_secs().saturating_sub(30).max(60);
    let mut vm_run = VmRun::new(o.kernel.clone(), guest_command(release_wait));
    vm_run.gupwatch = Some(o.gupwatch.clone());
    vm_run.timeout = o.timeout;
    vm_run.forwards = vec![
        Forward {
            host: metrics_port,
            guest: GUEST_METRICS_PORT,
        },
        Forward {
            host: release_port,
            guest: GUEST_RELEASE_PORT,
        },
    ];
    vm_run.echo = ConsoleEcho::None;
    vm_run.stream_stdout = false;
    vm_run.tag = "e2e".into();
    say!(
        "e2e",
        "guest metrics port {GUEST_METRICS_PORT} -> 127.0.0.1:{metrics_port}; release port -> 127.0.0.1:{release_port}; files in {}",
        dir.display()
    );
    let vm = thread::spawn(move || vm_run.run());

    let mut prom: Option<Prometheus> = None;
    let checked = (|| -> Result<(Vec<Check>, Vec<String>)> {
        prom = Some(Prometheus::start(
            &dir,
            prom_port,
            metrics_port,
            &rule_files,
        )?);
        let p = prom.as_mut().expect("just set");
        check_all(
            p,
            &dash,
            &expected_records,
            &expected_alerts,
            metrics_port,
            &vm,
            started,
        )
    })();

    // Clean-up on every path: release the guest, stop Prometheus, reap the VM.
    let released = release_guest(release_port, &vm, Duration::from_secs(30));
    let prom_log = prom.as_ref().map(|p| p.log.clone());
    let prom_tail = prom.as_ref().map(Prometheus::log_tail).unwrap_or_default();
    drop(prom);
    if !released && !vm.is_finished() {
        say!(
            "e2e",
            "the guest did not take the release; waiting for its time limit ({} s)",
            o.timeout.as_secs()
        );
    }
    let vm_result = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;

    let (mut checks, mut notes) = match checked {
        Ok(c) => c,
        Err(e) => {
            if util::interrupted() {
                return Err(anyhow!(util::Interrupted));
            }
            let mut msg = format!("{e:#}");
            if let Err(vm_err) = &vm_result {
                msg.push_str(&format!("\n  the VM: {vm_err:#}"));
            }
            if !prom_tail.is_empty() && !msg.contains("log ends") {
                msg.push_str(&format!(
                    "\n  Prometheus log ({}):\n{prom_tail}",
                    prom_log.as_deref().unwrap_or(Path::new("?")).display()
                ));
            }
            return Err(anyhow!(msg))
                .context(format!("end-to-end test (files kept in {})", dir.display()));
        }
    };
    match vm_result {
        Ok(out) => {
            let ok = out.status == 0;
            checks.push(Check::new(
                "guest: workloads ran and gupwatch run exited cleanly",
                None,
                ok,
                if ok {
                    format!("exit status 0 ({}, {:.0} s in all)", out.accel, out.elapsed.as_secs_f64())
                } else {
                    format!(
                        "exit status {} (3: gupwatch run never served, 4: the host never released the guest, else gupwatch run's own); console log: {}",
                        out.status,
                        out.console_log.display()
                    )
                },
            ));
        }
        Err(e) => {
            if e.downcast_ref::<util::Interrupted>().is_some() {
                return Err(e);
            }
            checks.push(Check::new("guest: VM run", None, false, format!("{e:#}")));
        }
    }
    if checks.iter().all(|c| c.ok) {
        let _ = fs::remove_dir_all(&dir);
    } else {
        notes.push(format!(
            "Prometheus config, data and log kept in {}",
            dir.display()
        ));
    }
    Ok(E2eReport {
        checks,
        notes,
        elapsed: started.elapsed(),
    })
}

fn interrupted_check() -> Result<()> {
    if util::interrupted() {
        return Err(anyhow!(util::Interrupted));
    }
    Ok(())
}

/// Waits for the data, then runs every check.
fn check_all(
    p: &mut Prometheus,
    dash: &Value,
    expected_records: &[String],
    expected_alerts: &[String],
    metrics_port: u16,
    vm: &thread::JoinHandle<Result<VmOutcome>>,
    started: Instant,
) -> Result<(Vec<Check>, Vec<String>)> {
    let mut notes = Vec::new();
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

    // 2. The dashboard's queries, with Grafana's variables.
    let instance = format!("127.0.0.1:{metrics_port}");
    let instance_re = grafana_regex_escape(&instance);
    let range = dashboard_range(dash);
    let vars: Vec<(&str, &str)> = vec![
        ("job", JOB),
        ("instance", &instance_re),
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "2s"),
        ("__range", &range),
        ("datasource", "prometheus"),
    ];
    notes.push(format!(
        "dashboard variables: $job={JOB}, $instance={instance_re}, $__rate_interval={RATE_INTERVAL}, $__interval=2s, $__range={range} (the dashboard's default range)"
    ));
    let mut checks: Vec<Check> = Vec::new();
    // (index in checks, how to evaluate) of the checks to retry if no data.
    let mut pending: Vec<(usize, Probe)> = Vec::new();
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
    for name in expected_records {
        if !rules
            .iter()
            .any(|r| r.kind == "recording" && &r.name == name)
        {
            checks.push(Check::new(
                format!("recording rule {name}"),
                None,
                false,
                "in recording.yml but not loaded by Prometheus",
            ));
        }
    }
    for name in expected_alerts {
        if !rules
            .iter()
            .any(|r| r.kind == "alerting" && &r.name == name)
        {
            checks.push(Check::new(
                format!("alert {name}"),
                None,
                false,
                "in alerts.yml but not loaded by Prometheus",
            ));
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

    // 5. The exposition itself, through the forward.
    checks.push(promtool_check(metrics_port));
    Ok((checks, notes))
}

fn expected_label(label: &str, instance: &str) -> Option<String> {
    match label {
        "job" => Some(JOB.to_string()),
        "instance" => Some(instance.to_string()),
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
                match p.api(&target) {
                    Ok(d) => {
                        let values: Vec<String> = d
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default();
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

/// One rule as `/api/v1/rules` reports it.
#[derive(Debug, Clone)]
struct RuleState {
    name: String,
    kind: String,
    query: String,
    health: String,
    last_error: String,
    state: String,
}

fn fetch_rules(p: &mut Prometheus) -> Result<Vec<RuleState>> {
    let d = p.api("/api/v1/rules").context("listing the rules")?;
    let mut out = Vec::new();
    for g in d
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for r in g
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            out.push(RuleState {
                name: s("name"),
                kind: s("type"),
                query: s("query"),
                health: s("health"),
                last_error: s("lastError"),
                state: s("state"),
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("job", "gupwatch"),
            ("instance", "127\\\\.0\\\\.0\\\\.1:9"),
            ("__rate_interval", "10s"),
            ("__range", "1h"),
        ]
    }

    #[test]
    fn substitutes_grafana_variables() {
        assert_eq!(
            substitute(
                r#"rate(x{job=~"$job",instance=~"${instance}"}[$__rate_interval])"#,
                &vars()
            )
            .unwrap(),
            r#"rate(x{job=~"gupwatch",instance=~"127\\.0\\.0\\.1:9"}[10s])"#
        );
        assert_eq!(
            substitute("increase(x[$__range]) + [[job]]", &vars()).unwrap(),
            "increase(x[1h]) + gupwatch"
        );
        assert_eq!(substitute("${job:regex}", &vars()).unwrap(), "gupwatch");
        // Subqueries and label matchers are left alone.
        assert_eq!(
            substitute("max_over_time(sum(x)[1h:1m])", &vars()).unwrap(),
            "max_over_time(sum(x)[1h:1m])"
        );
        assert_eq!(
            substitute("label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")", &vars()).unwrap(),
            "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")"
        );
        assert_eq!(
            substitute("x{a=\"$nope\"}", &vars()).unwrap_err(),
            "unknown template variable `nope`"
        );
        assert!(substitute("x[$__interval]", &vars())
            .unwrap_err()
            .contains("__interval"));
        assert_eq!(substitute("a $ b", &vars()).unwrap(), "a $ b");
    }

    #[test]
    fn regex_escape_matches_grafana() {
        assert_eq!(
            grafana_regex_escape("127.0.0.1:10483"),
            "127\\\\.0\\\\.0\\\\.1:10483"
        );
        assert_eq!(grafana_regex_escape("a+b"), "a\\\\+b");
    }

    #[test]
    fn template_queries() {
        assert_eq!(
            template_query(r#"label_values(gupwatch_build_info{job=~"$job", x="a,b"}, instance)"#),
            DashQueryKind::LabelValues {
                selector: r#"gupwatch_build_info{job=~"$job", x="a,b"}"#.into(),
                label: "instance".into()
            }
        );
        assert_eq!(
            template_query("label_values(job)"),
            DashQueryKind::LabelValues {
                selector: "".into(),
                label: "job".into()
            }
        );
        assert_eq!(
            template_query("query_result(up)"),
            DashQueryKind::Expr("up".into())
        );
        assert!(matches!(
            template_query("metrics(gupwatch_.*)"),
            DashQueryKind::Unsupported(_)
        ));
    }

    /// The real dashboard: every query is found and fully substituted.
    #[test]
    fn real_dashboard_queries_substitute() {
        let path = util::workspace_root().join("dashboards/gupwatch-overview.json");
        let dash: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let qs = dashboard_queries(&dash);
        assert!(qs.len() >= 10, "{qs:?}");
        let range = dashboard_range(&dash);
        let mut v = vars();
        v.push(("__interval", "2s"));
        v.push(("datasource", "prometheus"));
        let v: Vec<(&str, &str)> = v
            .into_iter()
            .map(|(a, b)| (a, if a == "__range" { range.as_str() } else { b }))
            .collect();
        for q in &qs {
            match &q.kind {
                DashQueryKind::Expr(e) => {
                    let s = substitute(e, &v).unwrap_or_else(|e| panic!("{}: {e}", q.name));
                    assert!(!s.contains('$'), "{}: {s}", q.name);
                }
                DashQueryKind::LabelValues { selector, .. } => {
                    substitute(selector, &v).unwrap();
                }
                DashQueryKind::Unsupported(t) => {
                    panic!("{}: unsupported template query {t}", q.name)
                }
            }
        }
        let names: Vec<&str> = qs.iter().map(|q| q.name.as_str()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            names.len(),
            "query names must be unique: {names:?}"
        );
    }

    #[test]
    fn rule_files_parse() {
        let y = "groups:\n  - name: g\n    rules:\n      - record: a:b:rate5m\n        expr: x\n      - alert: Foo\n        expr: y\n      - alert: \"Bar\"\n";
        assert_eq!(rule_names(y, "record"), vec!["a:b:rate5m"]);
        assert_eq!(rule_names(y, "alert"), vec!["Foo", "Bar"]);
        let root = util::workspace_root().join("dashboards/prometheus");
        let rec = fs::read_to_string(root.join("recording.yml")).unwrap();
        let al = fs::read_to_string(root.join("alerts.yml")).unwrap();
        assert!(!rule_names(&rec, "record").is_empty());
        assert!(rule_names(&al, "alert")
            .iter()
            .any(|a| a == "GupwatchNoProbesAttached"));
        assert!(rule_names(&al, "alert")
            .iter()
            .any(|a| a == "GupwatchProbesDetached"));
    }

    #[test]
    fn encoding_and_chunks() {
        assert_eq!(
            url_encode("sum(x{a=\"b\"})[5m] +1"),
            "sum%28x%7Ba%3D%22b%22%7D%29%5B5m%5D%20%2B1"
        );
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert!(dechunk(b"5\r\nhel").is_err());
    }

    #[test]
    fn judging_results() {
        let v: Value = serde_json::from_str(r#"{"resultType":"vector","result":[]}"#).unwrap();
        assert!(!judge_result(&v).0);
        let v: Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#,
        )
        .unwrap();
        let (ok, d) = judge_result(&v);
        assert!(!ok && d.starts_with("only NaN"), "{d}");
        let v: Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]},{"metric":{},"value":[1,"0.25"]}]}"#,
        )
        .unwrap();
        let (ok, d) = judge_result(&v);
        assert!(ok, "{d}");
        assert!(d.contains("2 series") && d.contains("1 NaN"), "{d}");
        let v: Value = serde_json::from_str(r#"{"resultType":"scalar","result":[1,"3"]}"#).unwrap();
        assert!(judge_result(&v).0);
    }

    #[test]
    fn guest_command_mentions_ports() {
        let c = guest_command(120);
        assert!(c.contains("--listen 0.0.0.0:10483"));
        assert!(c.contains("nc -l -p 10484"));
        assert!(c.contains("timeout 120"));
    }

    #[test]
    fn http_get_against_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /x?q=1 HTTP/1.0\r\n"));
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .unwrap();
        });
        let (st, body) = http_get(port, "/x?q=1", Duration::from_secs(5)).unwrap();
        h.join().unwrap();
        assert_eq!((st, body.as_slice()), (200, b"abc".as_slice()));
    }
}
