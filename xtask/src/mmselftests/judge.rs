//! The verdicts of `cargo xtask mm-selftests`, from what the guest printed:
//! the selftests' TAP output with and without gupwatch, `/proc/vmstat`
//! around each run under gupwatch, and `/metrics` before and after it.
//! Pure functions, unit-tested on recorded text.

use std::collections::BTreeMap;

/// The result of one TAP test line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// `ok N ...`
    Pass,
    /// `not ok N ...`
    Fail,
    /// `ok N # SKIP ...`
    Skip,
    /// `ok N # XFAIL ...` (kselftest: an expected failure)
    Xfail,
    /// `ok N # XPASS ...`
    Xpass,
}

/// One test of a TAP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapTest {
    /// The test's number.
    pub number: u32,
    /// Its result.
    pub status: Status,
    /// The result line's text after the number (kselftest puts the skip or
    /// xfail reason there).
    pub text: String,
    /// The `# [RUN] ...` line printed before it, when there was one: the
    /// test's name where the result line carries only the number.
    pub run: String,
}

impl TapTest {
    /// A name for messages: the RUN line, else the result text.
    pub fn name(&self) -> &str {
        if self.run.is_empty() {
            &self.text
        } else {
            &self.run
        }
    }
}

/// A selftest's output: its tests and exit status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tap {
    /// The result lines in order.
    pub tests: Vec<TapTest>,
    /// `1..N`, when printed.
    pub plan: Option<u32>,
    /// The program's exit status (printed by the guest script).
    pub exit: Option<i32>,
    /// Seconds the program took (guest clock).
    pub seconds: Option<f64>,
}

impl Tap {
    /// How many tests ended with `s`.
    pub fn count(&self, s: Status) -> usize {
        self.tests.iter().filter(|t| t.status == s).count()
    }

    /// `pass P fail F skip S xfail X` (xpass only when there is one).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "pass {} fail {} skip {} xfail {}",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.count(Status::Xfail)
        );
        if self.count(Status::Xpass) > 0 {
            s += &format!(" xpass {}", self.count(Status::Xpass));
        }
        s
    }
}

/// Parses kselftest TAP output. The guest script appends `@@exit N` and
/// `@@seconds S` lines after the program's output.
pub fn parse_tap(text: &str) -> Tap {
    let mut tap = Tap::default();
    let mut run = String::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(r) = line.strip_prefix("# [RUN] ") {
            run = r.trim().to_string();
        } else if let Some(n) = line.strip_prefix("1..") {
            tap.plan = n.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("@@exit ") {
            tap.exit = e.trim().parse().ok();
        } else if let Some(s) = line.strip_prefix("@@seconds ") {
            tap.seconds = s.trim().parse().ok();
        } else if let Some(t) = parse_result(line, &run) {
            tap.tests.push(t);
            run.clear();
        }
    }
    tap
}

fn parse_result(line: &str, run: &str) -> Option<TapTest> {
    let (failed, rest) = match line.strip_prefix("not ok ") {
        Some(r) => (true, r),
        None => (false, line.strip_prefix("ok ")?),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let number: u32 = rest[..digits].parse().ok()?;
    let text = rest[digits..].trim().to_string();
    let directive = text.strip_prefix("# ").unwrap_or("");
    let status = if directive.starts_with("SKIP") {
        Status::Skip
    } else if directive.starts_with("XFAIL") {
        Status::Xfail
    } else if directive.starts_with("XPASS") {
        Status::Xpass
    } else if failed {
        Status::Fail
    } else {
        Status::Pass
    };
    Some(TapTest { number, status, text, run: run.to_string() })
}

/// The tests whose result differs between two runs (by number), plus a
/// line for a different plan, test count or exit status. Empty when the
/// runs agree.
pub fn tap_differences(without: &Tap, with: &Tap) -> Vec<String> {
    let mut out = vec![];
    if without.plan != with.plan {
        out.push(format!("plan {:?} without gupwatch, {:?} with", without.plan, with.plan));
    }
    if without.exit != with.exit {
        out.push(format!("exit status {:?} without gupwatch, {:?} with", without.exit, with.exit));
    }
    fn by_number(t: &Tap) -> BTreeMap<u32, &TapTest> {
        t.tests.iter().map(|x| (x.number, x)).collect()
    }
    let (a, b) = (by_number(without), by_number(with));
    for n in a.keys().chain(b.keys()).copied().collect::<std::collections::BTreeSet<_>>() {
        match (a.get(&n), b.get(&n)) {
            (Some(x), Some(y)) if x.status == y.status && x.text == y.text => {}
            (Some(x), Some(y)) => out.push(format!("test {n} ({}): {:?} without gupwatch, {:?} with", x.name(), x.status, y.status)),
            (Some(x), None) => out.push(format!("test {n} ({}): {:?} without gupwatch, absent with", x.name(), x.status)),
            (None, Some(y)) => out.push(format!("test {n} ({}): absent without gupwatch, {:?} with", y.name(), y.status)),
            (None, None) => {}
        }
    }
    out
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total` where the family has it).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses a text exposition (comments skipped; escaped label values are
/// kept as written, which is enough for the labels compared here).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], line[close + 1..].trim())
        }
        None => line.split_once(' ')?,
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
        None => (series, BTreeMap::new()),
    };
    Some(Sample { name: name.trim().to_string(), labels, value })
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let mut end = 0;
        let bytes = v.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), v[..end].to_string());
        rest = v.get(end + 1..).unwrap_or("");
    }
    out
}

/// The sum of a family's samples whose labels include every `(key, value)`
/// of `filter`; `None` when the exposition has no sample of that name.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .collect();
    if samples.iter().any(|s| s.name == name) {
        Some(matching.iter().sum())
    } else {
        None
    }
}

/// What gupwatch and the kernel counted over one selftest run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// `nr_foll_pin_acquired` delta.
    pub vm_acquired: i64,
    /// `nr_foll_pin_released` delta.
    pub vm_released: i64,
    /// gupwatch's pins: `pinned_pages_total` + `undone_pin_pages_total`.
    pub pinned: i64,
    /// Of which undone (taken and released inside the pin call).
    pub undone: i64,
    /// `unpinned_pages_total`.
    pub unpinned: i64,
    /// `subsystem_pinned_pages_total` and `subsystem_unpinned_pages_total`
    /// deltas by (subsystem, kind), kind `pin` or `unpin`.
    pub subsystems: BTreeMap<(String, String), i64>,
    /// `subsystem_referenced_pages_total{subsystem="direct-io"}` delta:
    /// references (FOLL_GET) direct I/O took, which vmstat does not count.
    pub dio_gets: i64,
    /// `events_dropped_total{reason="attrib_full"}` delta.
    pub attrib_dropped: i64,
    /// `untracked_pins_total` at the end (since gupwatch started).
    pub untracked: Option<i64>,
    /// `leak_pages{kind="unbalanced"}` at the end.
    pub unbalanced: Option<i64>,
}

impl Counts {
    /// The subsystems' total of one kind.
    pub fn subsystem_sum(&self, kind: &str) -> i64 {
        self.subsystems.iter().filter(|((_, k), _)| k == kind).map(|(_, v)| *v).sum()
    }

    /// `io_uring 40, direct-io 8` for one kind.
    pub fn subsystem_list(&self, kind: &str) -> String {
        let parts: Vec<String> =
            self.subsystems.iter().filter(|((_, k), v)| k == kind && **v != 0).map(|((s, _), v)| format!("{s} {v}")).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `nr_foll_pin_acquired N` / `nr_foll_pin_released N` lines.
pub fn parse_vmstat(text: &str) -> Option<(i64, i64)> {
    let field = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<i64>().ok()))
    };
    Some((field("nr_foll_pin_acquired ")?, field("nr_foll_pin_released ")?))
}

/// The counts of one run from the vmstat and `/metrics` texts before and
/// after it; an error names what is missing.
pub fn counts(vm0: &str, vm1: &str, m0: &str, m1: &str) -> Result<Counts, String> {
    let (a0, r0) = parse_vmstat(vm0).ok_or("no nr_foll_pin_* in /proc/vmstat before the run")?;
    let (a1, r1) = parse_vmstat(vm1).ok_or("no nr_foll_pin_* in /proc/vmstat after the run")?;
    let (s0, s1) = (parse_metrics(m0), parse_metrics(m1));
    if s1.is_empty() {
        return Err("/metrics after the run is empty".into());
    }
    if s0.is_empty() {
        return Err("/metrics before the run is empty".into());
    }
    let delta = |name: &str, filter: &[(&str, &str)]| -> i64 {
        (sum(&s1, name, filter).unwrap_or(0.0) - sum(&s0, name, filter).unwrap_or(0.0)).round() as i64
    };
    let pages = delta("gupwatch_pinned_pages_total", &[]);
    let undone = delta("gupwatch_undone_pin_pages_total", &[]);
    let mut subsystems = BTreeMap::new();
    for (family, kind) in [("gupwatch_subsystem_pinned_pages_total", "pin"), ("gupwatch_subsystem_unpinned_pages_total", "unpin")] {
        for s in s1.iter().chain(&s0).filter(|s| s.name == family) {
            let Some(sub) = s.labels.get("subsystem") else { continue };
            subsystems.entry((sub.clone(), kind.to_string())).or_insert_with(|| delta(family, &[("subsystem", sub)]));
        }
    }
    let end = |name: &str, filter: &[(&str, &str)]| sum(&s1, name, filter).map(|v| v.round() as i64);
    Ok(Counts {
        vm_acquired: a1 - a0,
        vm_released: r1 - r0,
        pinned: pages + undone,
        undone,
        unpinned: delta("gupwatch_unpinned_pages_total", &[]),
        subsystems,
        dio_gets: delta("gupwatch_subsystem_referenced_pages_total", &[("subsystem", "direct-io")]),
        attrib_dropped: delta("gupwatch_events_dropped_total", &[("reason", "attrib_full")]),
        untracked: end("gupwatch_untracked_pins_total", &[]),
        // The family lists only kinds that have signals; present but
        // without an unbalanced sample means 0.
        unbalanced: end("gupwatch_leak_pages", &[("kind", "unbalanced")])
            .or_else(|| s1.iter().any(|s| s.name == "gupwatch_untracked_pins_total").then_some(0)),
    })
}

pub use crate::util::Check;

/// What a program must be seen doing, so that exact counts mean something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// FOLL_PIN pins (io_uring fixed buffers: every kernel).
    Pins,
    /// Pins, or references taken by direct I/O: the block layer's direct
    /// I/O pins user pages on newer kernels (`iov_iter_extract_pages`) but
    /// takes FOLL_GET references on 6.1 (`iov_iter_get_pages2`), which
    /// vmstat does not count.
    PinsOrDirectIoRefs,
}

/// What each program of [`super::build::PROGRAMS`] must be seen doing.
pub fn expectation(program: &str) -> Expect {
    if program == "hugetlb_dio" {
        Expect::PinsOrDirectIoRefs
    } else {
        Expect::Pins
    }
}

/// The checks of one program on one kernel.
pub fn judge(without: &Tap, with: &Tap, c: &Counts, expect: Expect) -> Vec<Check> {
    let mut out = vec![];
    let mut check = |name: &str, ok: bool, detail: String| out.push(Check { name: name.into(), ok, detail });
    let diffs = tap_differences(without, with);
    check(
        "TAP results identical without and with gupwatch",
        diffs.is_empty() && !without.tests.is_empty() && without.exit.is_some(),
        if diffs.is_empty() {
            format!("{} tests, {}; exit {:?}", without.tests.len(), without.summary(), without.exit)
        } else {
            diffs.join("; ")
        },
    );
    // Exact counts of nothing would prove nothing.
    match expect {
        Expect::Pins => check("the program pinned pages", c.vm_acquired > 0, format!("nr_foll_pin_acquired moved by {}", c.vm_acquired)),
        Expect::PinsOrDirectIoRefs => check(
            "the program's direct I/O pinned (or referenced) pages",
            c.vm_acquired > 0 || c.dio_gets > 0,
            format!("nr_foll_pin_acquired moved by {}; direct-io references seen by gupwatch: {}", c.vm_acquired, c.dio_gets),
        ),
    }
    check(
        "pinned = nr_foll_pin_acquired delta",
        c.pinned == c.vm_acquired,
        format!("gupwatch {} (of which undone {}), vmstat {}", c.pinned, c.undone, c.vm_acquired),
    );
    check("unpinned = nr_foll_pin_released delta", c.unpinned == c.vm_released, format!("gupwatch {}, vmstat {}", c.unpinned, c.vm_released));
    let api_pins = c.pinned - c.undone;
    let other = c.subsystems.get(&("other".to_string(), "pin".to_string())).copied().unwrap_or(0);
    check(
        "every pinned page attributed to a subsystem",
        c.subsystem_sum("pin") == api_pins && other == 0 && c.attrib_dropped == 0,
        format!(
            "pins by subsystem: {} (sum {}) vs API pins {api_pins}; other {other}; attrib_full drops {}",
            c.subsystem_list("pin"),
            c.subsystem_sum("pin"),
            c.attrib_dropped
        ),
    );
    // An undone pin's release happens inside its pin call: gupwatch counts
    // it as released (vmstat does too) and as the call's undone page, but
    // under no subsystem's unpins.
    check(
        "unpins by subsystem + undone releases = API unpins",
        c.subsystem_sum("unpin") + c.undone == c.unpinned,
        format!(
            "unpins by subsystem: {} (sum {}) + undone {} vs API unpins {}",
            c.subsystem_list("unpin"),
            c.subsystem_sum("unpin"),
            c.undone,
            c.unpinned
        ),
    );
    check(
        "ledger: 0 untracked, 0 unbalanced",
        c.untracked == Some(0) && c.unbalanced == Some(0),
        format!("untracked {:?}, unbalanced pages {:?}", c.untracked, c.unbalanced),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAP_A: &str = "TAP version 13\n1..4\n# [RUN] R/O pinning ... with memfd\nok 1 R/O pinning\n# [RUN] longterm ... with tmpfile\nok 2 # SKIP gup_test not available\nnot ok 3 broken\nok 4 # XFAIL not supported\n# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0\n@@exit 1\n@@seconds 2.50\n";

    #[test]
    fn tap_lines() {
        let t = parse_tap(TAP_A);
        assert_eq!(t.plan, Some(4));
        assert_eq!(t.exit, Some(1));
        assert_eq!(t.seconds, Some(2.5));
        let st: Vec<Status> = t.tests.iter().map(|x| x.status).collect();
        assert_eq!(st, [Status::Pass, Status::Skip, Status::Fail, Status::Xfail]);
        assert_eq!(t.tests[1].name(), "longterm ... with tmpfile");
        assert_eq!(t.tests[2].name(), "broken");
        assert_eq!(t.summary(), "pass 1 fail 1 skip 1 xfail 1");
    }

    #[test]
    fn tap_differences_are_per_test() {
        let a = parse_tap(TAP_A);
        assert!(tap_differences(&a, &a).is_empty());
        let b = parse_tap(&TAP_A.replace("ok 1 R/O pinning", "not ok 1 R/O pinning"));
        let d = tap_differences(&a, &b);
        assert_eq!(d, ["test 1 (R/O pinning ... with memfd): Pass without gupwatch, Fail with"]);
        let c = parse_tap(&TAP_A.replace("ok 4 # XFAIL not supported\n", "").replace("@@exit 1", "@@exit 0"));
        assert_eq!(tap_differences(&a, &c).len(), 2);
    }

    const M0: &str = "# TYPE gupwatch_pinned_pages_total counter\n\
gupwatch_pinned_pages_total{api=\"pin_user_pages_fast\"} 10\n\
gupwatch_unpinned_pages_total{api=\"unpin_user_pages\"} 10\n\
gupwatch_subsystem_pinned_pages_total{subsystem=\"io_uring\"} 10\n\
gupwatch_subsystem_unpinned_pages_total{subsystem=\"io_uring\"} 10\n\
gupwatch_untracked_pins_total 0\n";
    const M1: &str = "gupwatch_pinned_pages_total{api=\"pin_user_pages_fast\"} 60\n\
gupwatch_pinned_pages_total{api=\"pin_user_pages\"} 4\n\
gupwatch_referenced_pages_total{api=\"get_user_pages\"} 99\n\
gupwatch_unpinned_pages_total{api=\"unpin_user_pages\"} 65\n\
gupwatch_undone_pin_pages_total{api=\"pin_user_pages_fast\"} 1\n\
gupwatch_subsystem_pinned_pages_total{subsystem=\"io_uring\"} 60\n\
gupwatch_subsystem_pinned_pages_total{subsystem=\"direct-io\"} 4\n\
gupwatch_subsystem_unpinned_pages_total{subsystem=\"io_uring\"} 64\n\
gupwatch_subsystem_referenced_pages_total{subsystem=\"process_vm\"} 99\n\
gupwatch_untracked_pins_total 0\n\
gupwatch_leak_pages{kind=\"long_held\"} 3\n";

    #[test]
    fn counts_and_verdicts() {
        let c = counts("nr_foll_pin_acquired 100\nnr_foll_pin_released 90\n", "nr_foll_pin_acquired 155\nnr_foll_pin_released 145\n", M0, M1).unwrap();
        assert_eq!((c.vm_acquired, c.vm_released, c.pinned, c.undone, c.unpinned), (55, 55, 55, 1, 55));
        assert_eq!(c.subsystem_list("pin"), "direct-io 4, io_uring 50");
        assert_eq!((c.untracked, c.unbalanced), (Some(0), Some(0)));
        let tap = parse_tap(TAP_A);
        let checks = judge(&tap, &tap, &c, Expect::Pins);
        assert!(checks.iter().all(|k| k.ok), "{checks:?}");
        // One page short is a failure, not a tolerance.
        let mut short = c.clone();
        short.pinned -= 1;
        assert!(!judge(&tap, &tap, &short, Expect::Pins)[2].ok);
        let mut other = c.clone();
        other.subsystems.insert(("other".into(), "pin".into()), 0);
        assert!(judge(&tap, &tap, &other, Expect::Pins)[4].ok);
        other.subsystems.insert(("other".into(), "pin".into()), 1);
        other.subsystems.insert(("io_uring".into(), "pin".into()), 49);
        assert!(!judge(&tap, &tap, &other, Expect::Pins)[4].ok);
    }

    #[test]
    fn direct_io_references_count_only_for_direct_io() {
        let refs = "gupwatch_subsystem_referenced_pages_total{subsystem=\"direct-io\"} 13\ngupwatch_untracked_pins_total 0\n";
        let z = "nr_foll_pin_acquired 7\nnr_foll_pin_released 7\n";
        let c = counts(z, z, "gupwatch_untracked_pins_total 0\n", refs).unwrap();
        assert_eq!((c.vm_acquired, c.dio_gets), (0, 13));
        let tap = parse_tap(TAP_A);
        assert!(judge(&tap, &tap, &c, Expect::PinsOrDirectIoRefs).iter().all(|k| k.ok));
        assert!(!judge(&tap, &tap, &c, Expect::Pins)[1].ok);
        assert_eq!(expectation("hugetlb_dio"), Expect::PinsOrDirectIoRefs);
        assert_eq!(expectation("cow"), Expect::Pins);
    }

    #[test]
    fn missing_ledger_fails() {
        let m1 = M1.replace("gupwatch_untracked_pins_total 0\n", "");
        let c = counts("nr_foll_pin_acquired 0\nnr_foll_pin_released 0\n", "nr_foll_pin_acquired 55\nnr_foll_pin_released 55\n", M0, &m1).unwrap();
        assert_eq!(c.untracked, None);
        assert!(!judge(&parse_tap(TAP_A), &parse_tap(TAP_A), &c, Expect::Pins)[6].ok);
        assert!(counts("", "", M0, M1).is_err());
    }

    #[test]
    fn labels_with_escapes() {
        let s = parse_metrics("x{comm=\"a\\\"b\",kind=\"pin\"} 3\n");
        assert_eq!(s[0].labels.get("kind").map(String::as_str), Some("pin"));
        assert_eq!(s[0].value, 3.0);
    }
}
