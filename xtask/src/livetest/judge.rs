//! Judging one side's captures, step by step: what each screen must show
//! after the keys pressed before it.

use std::collections::BTreeMap;
use super::screen::{boxed, parse_header, parse_rows, parse_title, ProcRow};
use super::{FILTER, HOLDER, PINNER};
use crate::e2e::Check;

struct Judge<'a> {
    side: &'a str,
    screens: &'a BTreeMap<String, String>,
    checks: Vec<Check>,
}

impl Judge<'_> {
    fn check(&mut self, step: &str, what: &str, ok: bool, detail: String) {
        let detail = if ok {
            detail
        } else {
            match self.screens.get(step) {
                Some(s) => format!("{detail}; the screen ({step}):{}", boxed(s)),
                None => format!("{detail} (no `{step}` screen was captured)"),
            }
        };
        self.checks.push(Check {
            name: format!("{}: {what}", self.side),
            expr: None,
            ok,
            detail,
        });
    }

    fn screen(&self, step: &str) -> &str {
        self.screens.get(step).map(String::as_str).unwrap_or("")
    }

    /// Checks that the rows are ordered by `key`, largest first or not.
    fn ordered(&mut self, step: &str, label: &str, descending: bool, key: fn(&ProcRow) -> f64) {
        let rows = parse_rows(self.screen(step));
        let vals: Vec<f64> = rows.iter().map(key).collect();
        let ok = rows.len() >= 2
            && vals.windows(2).all(|w| if descending { w[0] >= w[1] } else { w[0] <= w[1] });
        self.check(
            step,
            &format!("rows sorted by {label}"),
            ok,
            format!(
                "{} rows, {label}: {}",
                rows.len(),
                rows.iter().zip(&vals).map(|(r, v)| format!("{} {v}", r.comm)).collect::<Vec<_>>().join(", ")
            ),
        );
    }

    /// Checks that no row on the screen is idle (idle rows are hidden by
    /// default), and that there are rows to look at.
    fn no_idle_rows(&mut self, step: &str) {
        let rows = parse_rows(self.screen(step));
        let idle: Vec<&str> = rows.iter().filter(|r| r.idle()).map(|r| r.comm.as_str()).collect();
        self.check(
            step,
            "no idle row shown (0 calls/s, 0 pages/s, nothing held)",
            !rows.is_empty() && idle.is_empty(),
            format!("{} rows; idle among them: {}", rows.len(), idle.join(", ")),
        );
    }

    fn title_is(&mut self, step: &str, sort: &str, descending: bool) {
        let t = parse_title(self.screen(step));
        let ok = t.as_ref().is_some_and(|t| t.sort == sort && t.descending == descending);
        self.check(
            step,
            &format!("title says sort {sort} {}", if descending { "▼" } else { "▲" }),
            ok,
            format!("title: {t:?}"),
        );
    }

    /// The terminal after the view ended: the shell's line is there, the
    /// tty is cooked again, tmux says the alternate screen is off and the
    /// cursor shown.
    fn restored(&mut self, step: &str, how: &str) {
        let s = self.screen(step).to_string();
        let state = self.screen(&format!("{step}-state")).to_string();
        let status = s
            .lines()
            .find_map(|l| l.trim().strip_prefix("RESTORED:"))
            .map(|x| x.trim().to_string());
        self.check(
            step,
            &format!("after {how}: gupwatch exited 0 and the shell runs again"),
            status.as_deref() == Some("0"),
            format!("exit status printed by the shell: {status:?}"),
        );
        let tokens: Vec<&str> = s.split_whitespace().collect();
        let cooked = tokens.contains(&"icanon") && tokens.contains(&"echo") && !tokens.contains(&"-icanon") && !tokens.contains(&"-echo");
        self.check(
            step,
            &format!("after {how}: the tty is cooked again (stty -a: icanon echo)"),
            cooked,
            format!(
                "stty -a shows {}",
                ["icanon", "-icanon", "echo", "-echo"].iter().filter(|t| tokens.contains(t)).copied().collect::<Vec<_>>().join(" ")
            ),
        );
        let kv = |k: &str| state.split_whitespace().find_map(|t| t.strip_prefix(&format!("{k}="))).map(str::to_string);
        let alt = kv("alternate_on");
        let cursor = kv("cursor_flag");
        self.check(
            step,
            &format!("after {how}: alternate screen left, cursor shown"),
            alt.as_deref() == Some("0") && cursor.as_deref() == Some("1") && !s.contains("q quit"),
            format!("tmux: alternate_on={alt:?} cursor_flag={cursor:?}; live view still drawn: {}", s.contains("q quit")),
        );
    }
}

/// Whether names are in A-to-Z order.
fn sorted(names: &[String]) -> bool {
    names.windows(2).all(|w| w[0] <= w[1])
}

/// Judges one side's captures (`side` is `guest` or `host`); `source` is
/// what the header must name as the data source.
pub fn judge(side: &str, source: &str, screens: &BTreeMap<String, String>) -> Vec<Check> {
    let mut j = Judge { side, screens, checks: vec![] };
    j.initial(source);
    j.sorting();
    j.idle_rows();
    j.filter();
    j.restored("quit", "q");
    j.restored("sigterm", "SIGTERM");
    j.checks
}

impl Judge<'_> {
    /// The first screen: real numbers, matching the kernel's.
    fn initial(&mut self, source: &str) {
        let initial = self.screen("initial").to_string();
        match parse_header(&initial) {
            Ok(h) => {
                self.check(
                    "initial",
                    "every hook the kernel has is attached",
                    h.hooks.0 > 0 && h.hooks.0 == h.hooks.1,
                    format!("{}/{} hooks", h.hooks.0, h.hooks.1),
                );
                self.check(
                    "initial",
                    "gupwatch counts pins (pinned total and rate > 0)",
                    h.pinned > 0.0 && h.pin_rate > 0.0 && h.unpinned > 0.0,
                    format!("pinned {} unpinned {} at {}/s", h.pinned, h.unpinned, h.pin_rate),
                );
                // Both rates are deltas over the same interval of the same
                // reading; a pin between the map read and the vmstat read is
                // the only difference. Compact numbers are rounded to 3 digits.
                let diff = (h.pin_rate - h.vm_rate).abs();
                let slack = (0.25 * h.pin_rate.max(h.vm_rate)).max(300.0);
                self.check(
                    "initial",
                    "gupwatch's pin rate equals the kernel's (vmstat) rate",
                    h.vm_rate > 0.0 && diff <= slack,
                    format!("gupwatch {}/s, vmstat {}/s (allowed difference {slack:.0})", h.pin_rate, h.vm_rate),
                );
                // gupwatch counts since it attached, the kernel since boot.
                self.check(
                    "initial",
                    "gupwatch's totals do not exceed the kernel's",
                    h.pinned <= h.vm_acquired * 1.01 && h.unpinned <= h.vm_released * 1.01,
                    format!("pinned {} ≤ acquired {}, unpinned {} ≤ released {}", h.pinned, h.vm_acquired, h.unpinned, h.vm_released),
                );
            }
            Err(e) => self.check("initial", "header readable", false, e),
        }
        let first_line = initial.lines().next().unwrap_or("").to_string();
        self.check(
            "initial",
            &format!("header names the source ({source})"),
            first_line.contains(&format!(" · {source} · ")),
            format!("first line: {first_line:?}"),
        );
        let rows = parse_rows(&initial);
        let pinner = rows.iter().find(|r| r.comm == PINNER);
        self.check(
            "initial",
            &format!("a row for the workload {PINNER} with PAGES/s > 0"),
            pinner.is_some_and(|r| r.pages_per_sec > 0.0 && r.pins_per_sec > 0.0),
            format!("row: {pinner:?}"),
        );
        self.check(
            "initial",
            &format!("a row for {HOLDER}"),
            rows.iter().any(|r| r.comm == HOLDER),
            format!("rows: {}", rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", ")),
        );
        self.title_is("initial", "PAGES/s", true);
        self.ordered("initial", "PAGES/s", true, |r| r.pages_per_sec);
        self.no_idle_rows("initial");
    }

    /// `s` and five more `s`: by PINS/s, then by name.
    fn sorting(&mut self) {
        // `s`: PINS/s, largest first.
        self.title_is("sort-pins", "PINS/s", true);
        self.ordered("sort-pins", "PINS/s", true, |r| r.pins_per_sec);

        // Five more `s`: by name, A to Z. Every process that execs has a row
        // (execve copies its arguments with get_user_pages_remote), but those
        // are idle and hidden, so the screen holds the few active rows: the
        // holder (it holds its buffer) first, and the pinner on the screen.
        self.title_is("sort-name", "NAME", false);
        self.no_idle_rows("sort-name");
        let names: Vec<String> = parse_rows(self.screen("sort-name")).into_iter().map(|r| r.comm).collect();
        let first_before = parse_rows(self.screen("initial")).first().map(|r| r.comm.clone());
        self.check(
            "sort-name",
            &format!("rows sorted by name ({HOLDER} first, {PINNER} shown: the other way round from PAGES/s)"),
            names.len() >= 2
                && sorted(&names)
                && names.first().map(String::as_str) == Some(HOLDER)
                && names.iter().any(|n| n == PINNER)
                && names.first() != first_before.as_ref(),
            format!("rows: {}; first row by PAGES/s was {first_before:?}", names.join(", ")),
        );
    }

    /// `i` shows the idle rows, `i` again hides them.
    fn idle_rows(&mut self) {
        // `i`: the idle rows join the table; the title stops counting them as
        // hidden. Then `i` again hides them.
        let hidden_title = parse_title(self.screen("sort-name"));
        let shown_title = parse_title(self.screen("show-idle"));
        let shown_rows = parse_rows(self.screen("show-idle"));
        let idle_shown: Vec<&str> = shown_rows.iter().filter(|r| r.idle()).map(|r| r.comm.as_str()).collect();
        self.check(
            "show-idle",
            "before `i` the title counts hidden idle rows",
            hidden_title.as_ref().is_some_and(|t| t.idle_hidden > 0 && !t.idle_shown),
            format!("title before `i` (sort-name): {hidden_title:?}"),
        );
        self.check(
            "show-idle",
            "after `i` the table has more rows and the title counts none hidden",
            match (&hidden_title, &shown_title) {
                (Some(h), Some(s)) => s.rows > h.rows && s.idle_hidden == 0 && s.idle_shown,
                _ => false,
            },
            format!("title before: {hidden_title:?}; after: {shown_title:?}"),
        );
        self.check(
            "show-idle",
            "after `i` idle rows are on the screen, still sorted by name",
            !idle_shown.is_empty() && sorted(&shown_rows.iter().map(|r| r.comm.clone()).collect::<Vec<_>>()),
            format!(
                "rows: {}; idle: {}",
                shown_rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", "),
                idle_shown.join(", ")
            ),
        );
        let rehidden = parse_title(self.screen("hide-idle"));
        self.check(
            "hide-idle",
            "`i` again hides them: fewer rows, the title counts them hidden",
            match (&shown_title, &rehidden) {
                (Some(s), Some(h)) => h.rows < s.rows && h.idle_hidden > 0 && !h.idle_shown,
                _ => false,
            },
            format!("title with idle rows shown: {shown_title:?}; after `i` again: {rehidden:?}"),
        );
        self.no_idle_rows("hide-idle");
    }

    /// `/zz-pin⏎`: only the pinner.
    fn filter(&mut self) {
        let t = parse_title(self.screen("filter"));
        let rows = parse_rows(self.screen("filter"));
        self.check(
            "filter",
            &format!("title shows the filter \"{FILTER}\""),
            t.as_ref().is_some_and(|t| t.filter.as_deref() == Some(FILTER) && t.rows == rows.len()),
            format!("title: {t:?}, {} rows on screen", rows.len()),
        );
        self.check(
            "filter",
            &format!("only rows matching \"{FILTER}\" remain"),
            !rows.is_empty() && rows.iter().all(|r| r.comm.contains(FILTER)) && rows.iter().any(|r| r.comm == PINNER),
            format!("rows: {}", rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", ")),
        );
    }
}
