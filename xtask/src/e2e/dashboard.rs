//! The queries under test: every PromQL expression and template-variable
//! query of the Grafana dashboard (read into typed structs), Grafana's
//! variable substitution, and the rule names of the rule files.

use serde::Deserialize;

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

/// The parts of a Grafana dashboard (JSON model) that hold queries; every
/// other field is ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Dashboard {
    /// Template variables.
    #[serde(default)]
    pub templating: Templating,
    /// Panels (rows and nested panels included).
    #[serde(default)]
    pub panels: Vec<Panel>,
    /// Old-style dashboards keep panels under rows.
    #[serde(default)]
    pub rows: Vec<Row>,
    /// The default time range.
    #[serde(default)]
    pub time: Option<TimeRange>,
}

/// `templating` of a dashboard.
#[derive(Debug, Default, Deserialize)]
pub struct Templating {
    /// The variables.
    #[serde(default)]
    pub list: Vec<TemplateVar>,
}

/// One template variable.
#[derive(Debug, Default, Deserialize)]
pub struct TemplateVar {
    /// `query`, `custom`, `datasource`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Variable name, without `$`.
    #[serde(default)]
    pub name: Option<String>,
    /// Its query: a string, or (newer Grafana) an object with `query`.
    #[serde(default)]
    pub query: Option<TemplateQuery>,
}

/// A template variable's query, in either of Grafana's shapes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TemplateQuery {
    /// The query text itself.
    Text(String),
    /// `{"query": "...", ...}`.
    Object {
        /// The query text.
        #[serde(default)]
        query: Option<String>,
    },
    /// Anything else: no query.
    Other(serde::de::IgnoredAny),
}

/// A panel (or a row panel holding others).
#[derive(Debug, Default, Deserialize)]
pub struct Panel {
    /// Title shown on the dashboard.
    #[serde(default)]
    pub title: Option<String>,
    /// Its queries.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Panels nested in a (collapsed) row.
    #[serde(default)]
    pub panels: Vec<Panel>,
}

/// One query of a panel.
#[derive(Debug, Default, Deserialize)]
pub struct Target {
    /// PromQL expression.
    #[serde(default)]
    pub expr: Option<String>,
    /// `A`, `B`, ...
    #[serde(default, rename = "refId")]
    pub ref_id: Option<String>,
}

/// An old-style row.
#[derive(Debug, Default, Deserialize)]
pub struct Row {
    /// Its panels.
    #[serde(default)]
    pub panels: Vec<Panel>,
}

/// `time` of a dashboard.
#[derive(Debug, Default, Deserialize)]
pub struct TimeRange {
    /// Start, such as `now-1h`.
    #[serde(default)]
    pub from: Option<String>,
}

/// Every query of a Grafana dashboard: the template variables of type
/// `query`, then each panel target's `expr`, panels in order (rows and
/// nested panels included).
pub fn dashboard_queries(dash: &Dashboard) -> Vec<DashQuery> {
    let mut out = Vec::new();
    for v in &dash.templating.list {
        if v.kind.as_deref() != Some("query") {
            continue;
        }
        let name = v.name.as_deref().unwrap_or("?");
        let q = match &v.query {
            Some(TemplateQuery::Text(s)) => s.as_str(),
            Some(TemplateQuery::Object { query }) => query.as_deref().unwrap_or(""),
            Some(TemplateQuery::Other(_)) | None => "",
        };
        out.push(DashQuery {
            name: format!("variable ${name}"),
            kind: template_query(q),
        });
    }
    fn walk(panels: &[Panel], out: &mut Vec<DashQuery>) {
        for p in panels {
            let title = p.title.as_deref().unwrap_or("(untitled)");
            for (i, t) in p.targets.iter().enumerate() {
                let Some(expr) = t.expr.as_deref() else {
                    continue;
                };
                if expr.trim().is_empty() {
                    continue;
                }
                let r = t.ref_id.clone().unwrap_or_else(|| format!("#{i}"));
                out.push(DashQuery {
                    name: format!("panel \"{title}\" {r}"),
                    kind: DashQueryKind::Expr(expr.to_string()),
                });
            }
            walk(&p.panels, out);
        }
    }
    walk(&dash.panels, &mut out);
    for r in &dash.rows {
        walk(&r.panels, &mut out);
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
pub fn dashboard_range(dash: &Dashboard) -> String {
    dash.time
        .as_ref()
        .and_then(|t| t.from.as_deref())
        .and_then(|f| f.strip_prefix("now-"))
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("1h")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util;
    use std::fs;

    fn vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("job", "gupwatch"),
            ("instance", "127\\\\.0\\\\.0\\\\.1:9"),
            ("node", ".*"),
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
        let dash: Dashboard = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
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
}
