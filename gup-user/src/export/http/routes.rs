//! gupwatch's routes over a [`Collector`]: what `/metrics`, `/healthz`,
//! `/api/snapshot` and `/` answer. Synchronous: the server calls them on a
//! blocking thread, at most `max_renders` at once.

use std::sync::Mutex;

use super::{Handler, Request, Response};
use crate::{
    collect::Collector,
    export::{
        api,
        prometheus::{self, Format},
    },
};

/// gupwatch's HTTP front end over a [`Collector`].
pub struct App {
    collector: Mutex<Collector>,
}

impl App {
    /// Serves this collector.
    pub fn new(collector: Collector) -> App {
        App { collector: Mutex::new(collector) }
    }

    fn collector(&self) -> std::sync::MutexGuard<'_, Collector> {
        // A panic in one scrape must not take the endpoint down for good.
        self.collector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the collector while serving (a configuration reload),
    /// between two requests.
    pub fn update(&self, f: impl FnOnce(&mut Collector)) {
        f(&mut self.collector());
    }
}

/// Whether a query string (`a=1&b`) turns a flag on: `name`, `name=1`,
/// `name=true` or `name=yes`.
pub(super) fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
        k == name && matches!(v, "1" | "true" | "yes")
    })
}

impl Handler for App {
    /// The pages that read the collector; `/healthz` and 404s are answered
    /// at once.
    fn renders(&self, req: &Request) -> bool {
        matches!(req.path.as_str(), "/metrics" | "/api/snapshot" | "/")
    }

    /// `/metrics` in one format is the same page for every scraper.
    fn coalesce(&self, req: &Request) -> Option<String> {
        (req.path == "/metrics").then(|| format!("/metrics {}", Format::negotiate(req.header("Accept")).content_type()))
    }

    /// Scrapes: large, repetitive text, and every scraper offers gzip.
    fn compresses(&self, req: &Request) -> bool {
        req.path == "/metrics"
    }

    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/metrics" => {
                let format = Format::negotiate(req.header("Accept"));
                // Gathered under the lock, encoded after it: the encoding
                // needs only the reading.
                let data = self.collector().gather();
                let body = prometheus::render(&data, format);
                Response::new(200, format.content_type(), body)
            }
            "/healthz" => Response::text(200, "ok\n"),
            "/api/snapshot" => {
                // Opt-in extras for `gupwatch top --connect`: `callers=1`
                // adds the attribution rows, `leaks=1` the leak report
                // (which reads the whole pin tracking map).
                let flag = |name: &str| query_flag(req.query.as_deref(), name);
                let mut c = self.collector();
                let top = c.settings().top_processes;
                let data = c.gather();
                // The report gather() made: analysing again would count the
                // same reading twice in the growth tracker.
                let leaks = if flag("leaks") { Some(c.last_leak_report().cloned()) } else { None };
                drop(c);
                let mut doc = if flag("callers") {
                    api::snapshot_with_callers(&data, top, api::MAX_JSON_CALLERS)
                } else {
                    api::snapshot_json(&data, top)
                };
                doc.leaks = leaks;
                match gup_report::to_sorted_pretty_json(&doc) {
                    Ok(body) => Response::new(200, "application/json", body + "\n"),
                    Err(e) => Response::text(500, format!("cannot write the snapshot: {e}\n")),
                }
            }
            "/" => Response::new(200, "text/html; charset=utf-8", self.index()),
            _ => Response::text(404, "not found: try /metrics, /healthz, /api/snapshot or /\n"),
        }
    }
}

impl App {
    fn index(&self) -> String {
        let c = self.collector();
        let plan = c.plan();
        let mode = if c.has_probes() && plan.attached() > 0 {
            format!("{} of {} hooks attached", plan.attached(), plan.hooks.len())
        } else {
            "reduced mode: no probe attached; the kernel's /proc/vmstat counters and per-process accounted pins (gupwatch_accounted_*, VmPin/VmLck and io_uring buffers) are exported".to_string()
        };
        let mut rows = String::new();
        for h in &plan.hooks {
            rows += &format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>\n",
                html(h.function),
                html(h.kind),
                html(h.mechanism),
                if h.attached { "ok" } else { "no" },
                html(h.status),
                html(&h.reason)
            );
        }
        format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gupwatch</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}}.ok{{color:#080}}.no{{color:#a00}}</style>
</head><body>
<h1>gupwatch {version}</h1>
<p>Kernel {kernel}: {mode}.</p>
<ul>
<li><a href="/metrics">/metrics</a> &mdash; Prometheus / OpenMetrics exposition</li>
<li><a href="/api/snapshot">/api/snapshot</a> &mdash; current totals as JSON</li>
<li><a href="/healthz">/healthz</a> &mdash; liveness</li>
</ul>
<h2>Probe plan</h2>
<table><tr><th>function</th><th>kind</th><th>mechanism</th><th>status</th><th>why</th></tr>
{rows}</table>
</body></html>
"#,
            version = html(env!("CARGO_PKG_VERSION")),
            kernel = html(&plan.kernel),
            mode = html(&mode),
        )
    }
}

/// Escapes text for HTML element content and attribute values.
pub(super) fn html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o += "&amp;",
            '<' => o += "&lt;",
            '>' => o += "&gt;",
            '"' => o += "&quot;",
            '\'' => o += "&#39;",
            c => o.push(c),
        }
    }
    o
}

