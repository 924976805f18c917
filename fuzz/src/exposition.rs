//! A strict checker of the two text exposition formats gupwatch serves:
//! Prometheus text 0.0.4 and OpenMetrics 1.0.
//!
//! It accepts what `promtool check metrics` and Prometheus's text parser
//! accept for the families gupwatch writes, and is stricter where that is
//! cheap: every line must be a comment, a HELP/TYPE/UNIT line or a sample;
//! names and label names must match the grammar; label values may use only
//! the escapes `\\`, `\"` and `\n`; sample values must be floats; the
//! samples of a family must follow its TYPE line, together; no series may
//! repeat. Samples come back with their label values unescaped, so a caller
//! can check that what went in comes back out.
//!
//! Shared by the fuzz targets and gup-user's corpus test (included there
//! with `#[path]`), so it depends on nothing but std.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Which format the text claims to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Prometheus text 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text (must end with `# EOF`).
    OpenMetrics,
}

/// Label (name, value) pairs.
pub type Labels = Vec<(String, String)>;

/// One sample line, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as written (`foo_total`, `foo_bucket`, ...).
    pub name: String,
    /// Label (name, unescaped value) pairs, in order.
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// The family (from the TYPE line) it belongs to.
    pub family: String,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: BTreeMap<String, String>,
    /// Every sample in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The samples of a metric name (exact).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => {
            let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            if !ok {
                return Err(format!("bad sample value {s:?}"));
            }
            s.parse::<f64>().map_err(|_| format!("bad sample value {s:?}"))
        }
    }
}

/// Unescapes a HELP docstring (`\\` and `\n`; OpenMetrics also `\"`).
fn check_help(text: &str, flavor: Flavor) -> Result<(), String> {
    let mut it = text.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('\\') | Some('n') => {}
                Some('"') if flavor == Flavor::OpenMetrics => {}
                // Prometheus' parser keeps unknown escapes as they are; we
                // write none, so refuse them.
                other => return Err(format!("bad escape \\{other:?} in HELP {text:?}")),
            }
        }
    }
    Ok(())
}

/// Parses `{a="x",b="y"}` starting at `s` (which begins with `{`); returns
/// the labels and the rest after `}`.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = vec![];
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or_else(|| format!("label without '=' in {s:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or_else(|| format!("label {name} value not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let Some((i, c)) = chars.next() else { return Err(format!("unterminated label value in {s:?}")) };
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                '\n' => return Err("raw newline in a label value".into()),
                c => value.push(c),
            }
        };
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

/// The sample-name suffixes a family of this type may use.
fn suffixes(ty: &str, flavor: Flavor) -> &'static [&'static str] {
    match (ty, flavor) {
        ("histogram", _) => &["_bucket", "_sum", "_count", "_created"],
        ("summary", _) => &["", "_sum", "_count", "_created"],
        ("counter", Flavor::OpenMetrics) => &["_total", "_created"],
        ("info", Flavor::OpenMetrics) => &["_info"],
        _ => &[""],
    }
}

/// Parses and checks an exposition.
pub fn check(text: &str, flavor: Flavor) -> Result<Exposition, String> {
    let body = match flavor {
        Flavor::OpenMetrics => text.strip_suffix("# EOF\n").ok_or("OpenMetrics text must end with \"# EOF\\n\"")?,
        Flavor::Prometheus => text,
    };
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("the last line is not terminated".into());
    }
    let types_allowed: &[&str] = match flavor {
        Flavor::Prometheus => &["counter", "gauge", "histogram", "summary", "untyped"],
        Flavor::OpenMetrics => &["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"],
    };
    let mut exp = Exposition::default();
    let mut help_seen = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut closed = BTreeSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    // Histogram series (family and labels without `le`) → last cumulative count.
    let mut cumulative: HashMap<String, f64> = HashMap::new();
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            if flavor == Flavor::OpenMetrics {
                return Err(at("empty line".into()));
            }
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.strip_prefix(' ').unwrap_or(comment).splitn(3, ' ');
            let (kw, name, rest) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            match kw {
                "HELP" | "TYPE" | "UNIT" => {
                    let name = name.ok_or_else(|| at(format!("{kw} without a name")))?;
                    if !is_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    if current.as_deref() != Some(name) {
                        if let Some(c) = current.take() {
                            closed.insert(c);
                        }
                        if closed.contains(name) {
                            return Err(at(format!("family {name} appears twice")));
                        }
                        current = Some(name.to_string());
                    }
                    match kw {
                        "HELP" => {
                            if !help_seen.insert(name.to_string()) {
                                return Err(at("second HELP".into()));
                            }
                            check_help(rest.unwrap_or(""), flavor).map_err(at)?;
                        }
                        "TYPE" => {
                            let ty = rest.unwrap_or("");
                            if !types_allowed.contains(&ty) {
                                return Err(at(format!("bad type {ty:?}")));
                            }
                            if exp.types.insert(name.to_string(), ty.to_string()).is_some() {
                                return Err(at("second TYPE".into()));
                            }
                            if sampled.contains(name) {
                                return Err(at("TYPE after samples".into()));
                            }
                        }
                        _ => {
                            if flavor == Flavor::Prometheus {
                                return Err(at("UNIT is OpenMetrics only".into()));
                            }
                        }
                    }
                }
                _ if flavor == Flavor::OpenMetrics => return Err(at("unknown comment".into())),
                _ => {}
            }
            continue;
        }
        // A sample.
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) =
            if line[name_end..].starts_with('{') { parse_labels(&line[name_end..]).map_err(at)? } else { (vec![], &line[name_end..]) };
        let rest = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = current.clone().ok_or_else(|| at("sample before any TYPE".into()))?;
        let ty = exp.types.get(&family).cloned().unwrap_or_else(|| "untyped".into());
        let suffix = name.strip_prefix(family.as_str()).ok_or_else(|| at(format!("sample {name} outside its family {family}")))?;
        if !suffixes(&ty, flavor).contains(&suffix) {
            return Err(at(format!("sample {name} does not belong to {ty} {family}")));
        }
        if suffix == "_bucket" && !labels.iter().any(|(n, _)| n == "le") {
            return Err(at("bucket without le".into()));
        }
        if ty == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("counter below zero or NaN".into()));
        }
        let key_of = |name: &str, skip: &str| {
            let mut l: Vec<String> = labels.iter().filter(|(n, _)| n != skip).map(|(n, v)| format!("{n}={v:?}")).collect();
            l.sort();
            format!("{name}{{{}}}", l.join(","))
        };
        if suffix == "_bucket" {
            let prev = cumulative.insert(key_of(&family, "le"), value).unwrap_or(0.0);
            if value < prev {
                return Err(at(format!("cumulative bucket decreases ({prev} before)")));
            }
        }
        if suffix == "_count" && (ty == "histogram") {
            if let Some(inf) = cumulative.get(&key_of(&family, "")) {
                if *inf != value {
                    return Err(at(format!("_count {value} differs from the +Inf bucket {inf}")));
                }
            }
        }
        if !series.insert(key_of(name, "")) {
            return Err(at("series repeated".into()));
        }
        if !sampled.contains(&family) {
            sampled.insert(family.clone());
        }
        exp.samples.push(Sample { name: name.to_string(), labels, value, family });
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        let ok = "# HELP a_total x\\ny\n# TYPE a_total counter\na_total{c=\"q\\\"\\n\\\\\"} 1\n";
        let e = check(ok, Flavor::Prometheus).unwrap();
        assert_eq!(e.samples[0].labels[0].1, "q\"\n\\");
        for bad in [
            "# TYPE a counter\na{c=\"x\ny\"} 1\n",
            "# TYPE a counter\na{c=\"x\\t\"} 1\n",
            "# TYPE a counter\na{c=\"x\"} one\n",
            "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na 2\n",
            "# TYPE a counter\na 1\na 1\n",
            "# TYPE a counter\na 1",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\nh_sum 1\nh_count 4\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 4\nh_sum 1\nh_count 5\n",
        ] {
            assert!(check(bad, Flavor::Prometheus).is_err(), "{bad:?}");
        }
        let om = "# TYPE a counter\n# HELP a x\na_total 1\n# EOF\n";
        check(om, Flavor::OpenMetrics).unwrap();
        assert!(check("# TYPE a counter\na_total 1\n", Flavor::OpenMetrics).is_err());
    }
}
