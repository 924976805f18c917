//! `cargo xtask live-test`: gupwatch's live view driven through tmux, the
//! way a person uses it, inside a VM and from the host through
//! `gupwatch top --connect`.
//!
//! One guest boots (the newest kernel of the matrix) with tmux shipped in
//! its initramfs ([`crate::vm::guesttools`]) and two ports forwarded: the
//! metrics port of a `gupwatch run` daemon, and a release port where the
//! guest waits for the host (as in [`crate::e2e`]). Two pinning workloads
//! run under names of their own (symlinks to gupwatch, so their `comm`
//! differs): `zz-pinner` pins continuously, `aa-holder` registers one
//! io_uring buffer and holds it. Their names sort the other way round from
//! their rates, so a change of sort order is visible.
//!
//! * In the guest, a script starts `gupwatch top` (local probes) in a
//!   detached 80×24 tmux session, captures the pane, presses `s` (sort by
//!   PINS/s), five more `s` (sort by name), `i` (show idle rows), `i`
//!   again (hide them), `/zz-pin⏎` (filter), `q`, and captures after each; then it runs `gupwatch top --connect` in a second
//!   session and ends it with SIGTERM. The captures come back on stdout.
//! * At the same time, on the host, the same keys drive `gupwatch top
//!   --connect 127.0.0.1:PORT` in a tmux server of its own (`tmux -L`).
//!
//! All the judging happens here, on the host, from the captured screens
//! ([`judge`]): the header's numbers are real (non-zero, gupwatch's pin
//! rate close to the kernel's vmstat rate), the workload's row is there,
//! each sort orders the rows by its column, idle rows (no calls, nothing
//! held) are hidden until `i` shows them, the filter keeps only matching
//! rows, and after `q` or SIGTERM the terminal is back (the shell's output
//! shows, `stty -a` has `icanon` and `echo`, tmux says the alternate screen
//! is off and the cursor visible). A failed check quotes the screen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::e2e::{free_port, http_get, release_guest, Check};
use crate::vm::kernels::BootKernel;
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};
use crate::say;
use crate::util;

/// The daemon's port in the guest.
pub const GUEST_PORT: u16 = 10483;
/// Where the guest waits for the host to be done.
pub const GUEST_RELEASE_PORT: u16 = 10484;
/// The continuously pinning workload's name (its `comm`).
pub const PINNER: &str = "zz-pinner";
/// The workload that holds one registered buffer.
pub const HOLDER: &str = "aa-holder";
/// What the filter step types.
pub const FILTER: &str = "zz-pin";
/// The pane's size.
pub const COLS: u16 = 80;
/// The pane's size.
pub const ROWS: u16 = 24;
/// Longest wait for the daemon (boot and probe attach, under TCG).
const DAEMON_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for a screen to show what a step expects.
const SCREEN_DEADLINE: Duration = Duration::from_secs(90);
/// The VM time limit the test needs at least (boot, two probe attaches and
/// the key presses under TCG on a busy host).
pub const MIN_TIMEOUT_S: u64 = 420;
/// Time for the view to redraw after keys (and TCG to catch up).
const SETTLE: Duration = Duration::from_secs(2);

/// Options of the live-view test.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Kernel to boot.
    pub kernel: BootKernel,
    /// Static gupwatch, for the guest and for `top --connect` on the host.
    pub gupwatch: PathBuf,
    /// Time limit of the VM.
    pub timeout: Duration,
}

/// The outcome of a run that got as far as judging.
#[derive(Debug)]
pub struct LiveReport {
    /// Checks, in order (guest ones first).
    pub checks: Vec<Check>,
    /// Captured screens, `guest:<step>` and `host:<step>`.
    pub screens: BTreeMap<String, String>,
    /// Time from the VM's start to the guest script's end of the TUI part.
    pub guest_elapsed: Option<Duration>,
    /// Time the host's `top --connect` part took.
    pub host_elapsed: Option<Duration>,
    /// The whole run.
    pub elapsed: Duration,
}

// ---------------------------------------------------------------------------
// Reading screens

/// Parses the live view's compact numbers: `9999`, `12.3k`, `1.23M`,
/// `4.56G`, `0.5`, with an optional `/s` or `%`.
pub fn parse_human(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches("/s").trim_end_matches('%');
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    // 32.3k is 32300 pages, not 32299.999…
    num.parse::<f64>().ok().map(|n| if mult > 1.0 { (n * mult).round() } else { n })
}

/// The three header lines of the live view.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Hooks attached, of those the kernel has.
    pub hooks: (u32, u32),
    /// gupwatch's pages pinned since its probes attached.
    pub pinned: f64,
    /// gupwatch's pages unpinned.
    pub unpinned: f64,
    /// gupwatch's pin rate (pages/s).
    pub pin_rate: f64,
    /// The kernel's `nr_foll_pin_acquired`.
    pub vm_acquired: f64,
    /// The kernel's `nr_foll_pin_released`.
    pub vm_released: f64,
    /// The kernel's acquire rate (pages/s).
    pub vm_rate: f64,
}

/// The value after `key` among whitespace-separated tokens.
fn after<'a>(tokens: &[&'a str], key: &str) -> Option<&'a str> {
    tokens.iter().position(|t| *t == key).and_then(|i| tokens.get(i + 1).copied())
}

/// The rate after the `│` separator.
fn rate_after_bar(tokens: &[&str]) -> Option<f64> {
    after(tokens, "│").and_then(parse_human)
}

/// Reads the header, or says what is missing.
pub fn parse_header(screen: &str) -> std::result::Result<Header, String> {
    let hooks = screen
        .lines()
        .next()
        .and_then(|l| l.split(" · ").find(|p| p.ends_with(" hooks")))
        .and_then(|p| p.trim_end_matches(" hooks").split_once('/'))
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or("no `N/M hooks` on the first line")?;
    let line = |prefix: &str| {
        screen
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .ok_or(format!("no line starting with `{prefix}`"))
    };
    let g = line("gupwatch pinned")?;
    let v = line("vmstat   acquired")?;
    let num = |t: &[&str], k: &str| after(t, k).and_then(parse_human).ok_or(format!("no number after `{k}`"));
    Ok(Header {
        hooks,
        pinned: num(&g, "pinned")?,
        unpinned: num(&g, "unpinned")?,
        pin_rate: rate_after_bar(&g).ok_or("no gupwatch rate after `│`")?,
        vm_acquired: num(&v, "acquired")?,
        vm_released: num(&v, "released")?,
        vm_rate: rate_after_bar(&v).ok_or("no vmstat rate after `│`")?,
    })
}

/// The table's title: `Processes · sort PAGES/s ▼ · filter "x" · 2 rows
/// · 12 idle hidden (i)` (or `· idle shown (i)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title {
    /// The sort column's label.
    pub sort: String,
    /// `▼` (largest first) or not.
    pub descending: bool,
    /// The filter, if one applies.
    pub filter: Option<String>,
    /// Rows the title counts.
    pub rows: usize,
    /// Idle rows the title says are hidden (0 when it names none).
    pub idle_hidden: usize,
    /// The title says idle rows are shown.
    pub idle_shown: bool,
}

/// Reads the processes table's title line.
pub fn parse_title(screen: &str) -> Option<Title> {
    let line = screen.lines().find(|l| l.contains("Processes · sort "))?;
    let rest = &line[line.find("sort ")? + 5..];
    let mut parts = rest.split(" · ");
    let sort_part = parts.next()?.trim();
    let (sort, arrow) = sort_part.rsplit_once(' ')?;
    let mut filter = None;
    let mut rows = None;
    let mut idle_hidden = 0;
    let mut idle_shown = false;
    for p in parts {
        let p = p.trim().trim_end_matches(['─', ' ']);
        if let Some(f) = p.strip_prefix("filter \"") {
            filter = Some(f.trim_end_matches('"').to_string());
        } else if let Some(n) = p.strip_suffix(" rows") {
            rows = n.trim().parse().ok();
        } else if let Some(n) = p.strip_suffix(" idle hidden (i)") {
            idle_hidden = n.trim().parse().ok()?;
        } else if p == "idle shown (i)" {
            idle_shown = true;
        }
    }
    Some(Title {
        sort: sort.to_string(),
        descending: arrow == "▼",
        filter,
        rows: rows?,
        idle_hidden,
        idle_shown,
    })
}

/// One row of the processes table.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub comm: String,
    /// Pin and get calls per second.
    pub pins_per_sec: f64,
    /// Pages per second.
    pub pages_per_sec: f64,
    /// Pins held now (`None`: `?`, not read yet).
    pub outstanding: Option<f64>,
}

impl ProcRow {
    /// Idle as the live view means it: no calls and no pages per second,
    /// and the tracking map read and holding nothing for it.
    pub fn idle(&self) -> bool {
        self.pins_per_sec == 0.0 && self.pages_per_sec == 0.0 && self.outstanding == Some(0.0)
    }
}

/// The processes table's rows: the lines after the column header that read
/// as `PID COMM [SUBSYS] PINS/s PAGES/s OUTST FAST% LT% [PAGES]`, up to the
/// first line that does not. COMM is cut at the header's columns (a name
/// may hold spaces: `tmux: server`); the numbers are read from the right.
pub fn parse_rows(screen: &str) -> Vec<ProcRow> {
    let mut lines = screen.lines().skip_while(|l| !(l.contains("COMM") && l.contains("PINS/s")));
    let Some(header) = lines.next() else { return vec![] };
    let hc: Vec<char> = header.chars().collect();
    let find = |word: &str| -> Option<usize> {
        let w: Vec<char> = word.chars().collect();
        hc.windows(w.len()).position(|x| x == w.as_slice())
    };
    let (Some(comm_at), Some(subsys_at)) = (find("COMM"), find("SUBSYS")) else { return vec![] };
    // Terminals 90 columns and wider add PAGES after LT%.
    let extra = usize::from(header.split_whitespace().last().is_some_and(|t| t.starts_with("PAGES")));
    let mut out = vec![];
    for l in lines {
        let chars: Vec<char> = l.chars().collect();
        let t: Vec<&str> = l.split_whitespace().collect();
        let row = (|| {
            if t.len() < 7 + extra || chars.len() <= subsys_at {
                return None;
            }
            let pid: u32 = t[0].parse().ok()?;
            let comm: String = chars[comm_at..subsys_at].iter().collect::<String>().trim().to_string();
            if comm.is_empty() {
                return None;
            }
            let end = t.len() - extra;
            let num = |s: &str| parse_human(s).or_else(|| (s == "-").then_some(0.0));
            let pins = num(t[end - 5])?;
            let pages = num(t[end - 4])?;
            let outstanding = match t[end - 3] {
                "?" => None,
                s => Some(parse_human(s)?),
            };
            num(t[end - 2])?;
            num(t[end - 1])?;
            Some(ProcRow { pid, comm, pins_per_sec: pins, pages_per_sec: pages, outstanding })
        })();
        match row {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// The captures a guest script printed between `@@capture NAME@@` and
/// `@@end NAME@@` lines.
pub fn parse_captures(stdout: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in stdout.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("@@capture ").and_then(|r| r.strip_suffix("@@")) {
            cur = Some((name.to_string(), String::new()));
        } else if let Some(name) = line.strip_prefix("@@end ").and_then(|r| r.strip_suffix("@@")) {
            if let Some((n, text)) = cur.take() {
                if n == name {
                    out.insert(n, text);
                }
            }
        } else if let Some((_, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Judging

fn boxed(screen: &str) -> String {
    let mut s = String::from("\n    +--------------------------------------------------------------------------------\n");
    for l in screen.lines() {
        let _ = writeln!(s, "    |{l}");
    }
    s.push_str("    +--------------------------------------------------------------------------------");
    s
}

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

/// Judges one side's captures (`side` is `guest` or `host`); `source` is
/// what the header must name as the data source.
pub fn judge(side: &str, source: &str, screens: &BTreeMap<String, String>) -> Vec<Check> {
    let mut j = Judge { side, screens, checks: vec![] };

    // The first screen: real numbers, matching the kernel's.
    let initial = j.screen("initial").to_string();
    match parse_header(&initial) {
        Ok(h) => {
            j.check(
                "initial",
                "every hook the kernel has is attached",
                h.hooks.0 > 0 && h.hooks.0 == h.hooks.1,
                format!("{}/{} hooks", h.hooks.0, h.hooks.1),
            );
            j.check(
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
            j.check(
                "initial",
                "gupwatch's pin rate equals the kernel's (vmstat) rate",
                h.vm_rate > 0.0 && diff <= slack,
                format!("gupwatch {}/s, vmstat {}/s (allowed difference {slack:.0})", h.pin_rate, h.vm_rate),
            );
            // gupwatch counts since it attached, the kernel since boot.
            j.check(
                "initial",
                "gupwatch's totals do not exceed the kernel's",
                h.pinned <= h.vm_acquired * 1.01 && h.unpinned <= h.vm_released * 1.01,
                format!("pinned {} ≤ acquired {}, unpinned {} ≤ released {}", h.pinned, h.vm_acquired, h.unpinned, h.vm_released),
            );
        }
        Err(e) => j.check("initial", "header readable", false, e),
    }
    let first_line = initial.lines().next().unwrap_or("").to_string();
    j.check(
        "initial",
        &format!("header names the source ({source})"),
        first_line.contains(&format!(" · {source} · ")),
        format!("first line: {first_line:?}"),
    );
    let rows = parse_rows(&initial);
    let pinner = rows.iter().find(|r| r.comm == PINNER);
    j.check(
        "initial",
        &format!("a row for the workload {PINNER} with PAGES/s > 0"),
        pinner.is_some_and(|r| r.pages_per_sec > 0.0 && r.pins_per_sec > 0.0),
        format!("row: {pinner:?}"),
    );
    j.check(
        "initial",
        &format!("a row for {HOLDER}"),
        rows.iter().any(|r| r.comm == HOLDER),
        format!("rows: {}", rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", ")),
    );
    j.title_is("initial", "PAGES/s", true);
    j.ordered("initial", "PAGES/s", true, |r| r.pages_per_sec);
    j.no_idle_rows("initial");

    // `s`: PINS/s, largest first.
    j.title_is("sort-pins", "PINS/s", true);
    j.ordered("sort-pins", "PINS/s", true, |r| r.pins_per_sec);

    // Five more `s`: by name, A to Z. Every process that execs has a row
    // (execve copies its arguments with get_user_pages_remote), but those
    // are idle and hidden, so the screen holds the few active rows: the
    // holder (it holds its buffer) first, and the pinner on the screen.
    j.title_is("sort-name", "NAME", false);
    j.no_idle_rows("sort-name");
    let names: Vec<String> = parse_rows(j.screen("sort-name")).into_iter().map(|r| r.comm).collect();
    let sorted = |names: &[String]| names.windows(2).all(|w| w[0] <= w[1]);
    let first_before = parse_rows(j.screen("initial")).first().map(|r| r.comm.clone());
    j.check(
        "sort-name",
        &format!("rows sorted by name ({HOLDER} first, {PINNER} shown: the other way round from PAGES/s)"),
        names.len() >= 2
            && sorted(&names)
            && names.first().map(String::as_str) == Some(HOLDER)
            && names.iter().any(|n| n == PINNER)
            && names.first() != first_before.as_ref(),
        format!("rows: {}; first row by PAGES/s was {first_before:?}", names.join(", ")),
    );

    // `i`: the idle rows join the table; the title stops counting them as
    // hidden. Then `i` again hides them.
    let hidden_title = parse_title(j.screen("sort-name"));
    let shown_title = parse_title(j.screen("show-idle"));
    let shown_rows = parse_rows(j.screen("show-idle"));
    let idle_shown: Vec<&str> = shown_rows.iter().filter(|r| r.idle()).map(|r| r.comm.as_str()).collect();
    j.check(
        "show-idle",
        "before `i` the title counts hidden idle rows",
        hidden_title.as_ref().is_some_and(|t| t.idle_hidden > 0 && !t.idle_shown),
        format!("title before `i` (sort-name): {hidden_title:?}"),
    );
    j.check(
        "show-idle",
        "after `i` the table has more rows and the title counts none hidden",
        match (&hidden_title, &shown_title) {
            (Some(h), Some(s)) => s.rows > h.rows && s.idle_hidden == 0 && s.idle_shown,
            _ => false,
        },
        format!("title before: {hidden_title:?}; after: {shown_title:?}"),
    );
    j.check(
        "show-idle",
        "after `i` idle rows are on the screen, still sorted by name",
        !idle_shown.is_empty() && sorted(&shown_rows.iter().map(|r| r.comm.clone()).collect::<Vec<_>>()),
        format!(
            "rows: {}; idle: {}",
            shown_rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", "),
            idle_shown.join(", ")
        ),
    );
    let rehidden = parse_title(j.screen("hide-idle"));
    j.check(
        "hide-idle",
        "`i` again hides them: fewer rows, the title counts them hidden",
        match (&shown_title, &rehidden) {
            (Some(s), Some(h)) => h.rows < s.rows && h.idle_hidden > 0 && !h.idle_shown,
            _ => false,
        },
        format!("title with idle rows shown: {shown_title:?}; after `i` again: {rehidden:?}"),
    );
    j.no_idle_rows("hide-idle");

    // `/zz-pin⏎`: only the pinner.
    let t = parse_title(j.screen("filter"));
    let rows = parse_rows(j.screen("filter"));
    j.check(
        "filter",
        &format!("title shows the filter \"{FILTER}\""),
        t.as_ref().is_some_and(|t| t.filter.as_deref() == Some(FILTER) && t.rows == rows.len()),
        format!("title: {t:?}, {} rows on screen", rows.len()),
    );
    j.check(
        "filter",
        &format!("only rows matching \"{FILTER}\" remain"),
        !rows.is_empty() && rows.iter().all(|r| r.comm.contains(FILTER)) && rows.iter().any(|r| r.comm == PINNER),
        format!("rows: {}", rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>().join(", ")),
    );

    j.restored("quit", "q");
    j.restored("sigterm", "SIGTERM");
    j.checks
}

// ---------------------------------------------------------------------------
// The guest

/// The guest's script: the daemon, the in-guest tmux session, the
/// workloads, the key presses and captures, then the wait for the host.
pub fn guest_command(release_wait_s: u64) -> String {
    GUEST_SCRIPT
        .replace("@SERVE@", &crate::vm::serve_and_wait_sh("live", GUEST_PORT))
        .replace("@REDUCED@", &crate::reducedcheck::guest_part())
        .replace("@PORT@", &GUEST_PORT.to_string())
        .replace("@RELEASE@", &GUEST_RELEASE_PORT.to_string())
        .replace("@WAIT@", &release_wait_s.to_string())
        .replace("@PINNER@", PINNER)
        .replace("@HOLDER@", HOLDER)
        .replace("@FILTER@", FILTER)
        .replace("@COLS@", &COLS.to_string())
        .replace("@ROWS@", &ROWS.to_string())
}

const GUEST_SCRIPT: &str = r#"up() { cut -d' ' -f1 /proc/uptime; }
# tmux's client refuses init's TERM=dumb even for detached sessions; the
# terminfo entry of this one is shipped.
export TERM=xterm-256color
T="tmux -u -f /dev/null"
cap() { echo "@@capture $1@@"; $T capture-pane -p -t "$2"; echo "@@end $1@@"; }
state() {
    echo "@@capture $1@@"
    $T display-message -p -t "$2" 'alternate_on=#{alternate_on} cursor_flag=#{cursor_flag} pane_dead=#{pane_dead}'
    echo "@@end $1@@"
}
# waitfor SESSION TEXT SECONDS: until the pane shows TEXT.
waitfor() {
    i=0
    while ! $T capture-pane -p -t "$1" 2>/dev/null | grep -q -- "$2"; do
        i=$((i+1)); [ $i -gt "$3" ] && { echo "live: $1 never showed '$2' in $3 s" >&2; return 1; }
        sleep 1
    done
}
@SERVE@ln -s /bin/gupwatch /tmp/@PINNER@
ln -s /bin/gupwatch /tmp/@HOLDER@
$T new-session -d -s tui -x @COLS@ -y @ROWS@ sh -c 'gupwatch top; echo RESTORED:$?; stty -a; exec sleep 100000'
waitfor tui ' hooks ' 240 || cap attach tui
echo "live: the in-guest live view has its probes ($(up) s)" >&2
# The workloads start after both viewers attached, so the holder's pin is seen.
/tmp/@PINNER@ workload --seconds 1800 --scratch /mnt/scratch 2>/tmp/pinner.err &
W1=$!
/tmp/@HOLDER@ workload --hold 1800 --scratch /mnt/scratch 2>/tmp/holder.err &
W2=$!
waitfor tui @PINNER@ 120 && waitfor tui @HOLDER@ 60
# Two more readings, so the rates are over an interval of steady work.
sleep 3
cap initial tui
$T send-keys -t tui s
sleep 2
cap sort-pins tui
$T send-keys -t tui s s s s s
sleep 2
cap sort-name tui
$T send-keys -t tui i
sleep 2
cap show-idle tui
$T send-keys -t tui i
sleep 2
cap hide-idle tui
$T send-keys -t tui -l /
$T send-keys -t tui -l @FILTER@
$T send-keys -t tui Enter
sleep 2
cap filter tui
$T send-keys -t tui q
waitfor tui RESTORED: 30
sleep 1
cap quit tui
state quit-state tui
# SIGTERM: the inner shell writes its pid and becomes gupwatch.
$T new-session -d -s term -x @COLS@ -y @ROWS@ sh -c 'sh -c "echo \$\$ > /tmp/term.pid; exec gupwatch top --connect 127.0.0.1:@PORT@"; echo RESTORED:$?; stty -a; exec sleep 100000'
waitfor term @PINNER@ 90
cap sigterm-before term
kill -TERM "$(cat /tmp/term.pid)"
waitfor term RESTORED: 30
sleep 1
cap sigterm term
state sigterm-state term
@REDUCED@echo "@@guest-done:$(up)@@"
echo "live: guest part done ($(up) s); waiting for the host (at most @WAIT@ s)" >&2
echo ready | timeout @WAIT@ nc -l -p @RELEASE@ >/dev/null 2>&1
rel=$?
$T kill-server 2>/dev/null
kill $W1 $W2 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
wait
echo "live: released (nc status $rel); gupwatch run exited with status $st ($(up) s)" >&2
cat /tmp/pinner.err /tmp/holder.err >&2
if [ $st -ne 0 ]; then cat /tmp/run.err >&2; fi
exit $st
"#;

// ---------------------------------------------------------------------------
// The host

/// A tmux server of our own (`tmux -L NAME`), killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A fresh private server name (nothing starts until a session does).
    pub fn new() -> Result<Tmux> {
        if !util::have_program("tmux") {
            bail!("tmux is not installed: run `cargo xtask setup` (installs the Debian package tmux)");
        }
        Ok(Tmux { socket: format!("gupwatch-live-{}", &util::nonce()[..10]) })
    }

    /// Runs `tmux -L <ours> ARGS` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-u", "-f", "/dev/null"])
            .args(args)
            // tmux refuses to start without a UTF-8 locale; and a tmux we
            // are run from must not be the one we talk to.
            .env("LC_ALL", "C.UTF-8")
            // Whatever terminal (or none) xtask runs in: tmux's client
            // refuses TERM=dumb even for detached sessions.
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .output()
            .context("running tmux")?;
        if !out.status.success() {
            bail!("tmux {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pane's text.
    pub fn capture(&self, target: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", target])
    }

    /// Waits until the pane shows `text`; on time-out the error quotes it.
    pub fn wait_for(&self, target: &str, text: &str, within: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let s = self.capture(target).unwrap_or_default();
            if s.contains(text) {
                return Ok(s);
            }
            if util::interrupted() {
                return Err(anyhow!(util::Interrupted));
            }
            if t.elapsed() > within {
                bail!("the pane never showed {text:?} within {} s; it shows:{}", within.as_secs(), boxed(&s));
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn state(&self, target: &str) -> Result<String> {
        self.run(&["display-message", "-p", "-t", target, "alternate_on=#{alternate_on} cursor_flag=#{cursor_flag} pane_dead=#{pane_dead}"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .env_remove("TMUX")
            .stderr(std::process::Stdio::null())
            .status();
        // kill-server leaves the socket file behind; it is where tmux(1)
        // says -L puts it.
        let dir = std::env::var_os("TMUX_TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        // SAFETY: getuid(2) cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(dir.join(format!("tmux-{uid}")).join(&self.socket));
    }
}

/// Waits until the daemon's snapshot lists both workloads.
fn wait_for_workloads(port: u16, vm: &thread::JoinHandle<Result<VmOutcome>>, started: Instant) -> Result<()> {
    loop {
        if util::interrupted() {
            return Err(anyhow!(util::Interrupted));
        }
        if vm.is_finished() {
            bail!("the VM ended before its daemon listed the workloads");
        }
        if started.elapsed() > DAEMON_DEADLINE {
            bail!("the daemon did not list {PINNER} and {HOLDER} within {} s of the VM's start", DAEMON_DEADLINE.as_secs());
        }
        if let Ok((200, body)) = http_get(port, "/api/snapshot?callers=1", Duration::from_secs(10)) {
            let body = String::from_utf8_lossy(&body);
            if body.contains(&format!("\"{PINNER}\"")) && body.contains(&format!("\"{HOLDER}\"")) {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// The host's part: `gupwatch top --connect` in a private tmux server,
/// the same keys as in the guest. Returns the captures, by step.
fn host_part(gupwatch: &Path, addr: &str) -> Result<BTreeMap<String, String>> {
    let tmux = Tmux::new()?;
    let mut caps = BTreeMap::new();
    let gw = gupwatch.to_string_lossy().to_string();
    let (cols, rows) = (COLS.to_string(), ROWS.to_string());
    tmux.run(&[
        "new-session", "-d", "-s", "tui", "-x", &cols, "-y", &rows, "sh", "-c",
        r#""$0" top --connect "$1"; echo RESTORED:$?; stty -a; exec sleep 100000"#, &gw, addr,
    ])?;
    tmux.wait_for("tui", PINNER, SCREEN_DEADLINE)?;
    tmux.wait_for("tui", HOLDER, SCREEN_DEADLINE)?;
    thread::sleep(Duration::from_secs(3));
    caps.insert("initial".into(), tmux.capture("tui")?);
    let step = |name: &str, keys: &[&[&str]], caps: &mut BTreeMap<String, String>| -> Result<()> {
        for k in keys {
            let mut args = vec!["send-keys", "-t", "tui"];
            args.extend_from_slice(k);
            tmux.run(&args)?;
        }
        thread::sleep(SETTLE);
        caps.insert(name.into(), tmux.capture("tui")?);
        Ok(())
    };
    step("sort-pins", &[&["s"]], &mut caps)?;
    step("sort-name", &[&["s", "s", "s", "s", "s"]], &mut caps)?;
    step("show-idle", &[&["i"]], &mut caps)?;
    step("hide-idle", &[&["i"]], &mut caps)?;
    step("filter", &[&["-l", "/"], &["-l", FILTER], &["Enter"]], &mut caps)?;
    tmux.run(&["send-keys", "-t", "tui", "q"])?;
    let _ = tmux.wait_for("tui", "RESTORED:", Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    caps.insert("quit".into(), tmux.capture("tui")?);
    caps.insert("quit-state".into(), tmux.state("tui")?);

    let pidfile = util::target_dir().join(format!("live-term-{}.pid", &util::nonce()[..8]));
    let pf = pidfile.to_string_lossy().to_string();
    tmux.run(&[
        "new-session", "-d", "-s", "term", "-x", &cols, "-y", &rows, "sh", "-c",
        r#"sh -c 'echo $$ > "$0"; exec "$1" top --connect "$2"' "$0" "$1" "$2"; echo RESTORED:$?; stty -a; exec sleep 100000"#,
        &pf, &gw, addr,
    ])?;
    tmux.wait_for("term", PINNER, SCREEN_DEADLINE)?;
    caps.insert("sigterm-before".into(), tmux.capture("term")?);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .parse()
        .context("the pid file holds no pid")?;
    let _ = std::fs::remove_file(&pidfile);
    // SAFETY: kill(2) on the gupwatch we started (the shell exec'd it).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let _ = tmux.wait_for("term", "RESTORED:", Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    caps.insert("sigterm".into(), tmux.capture("term")?);
    caps.insert("sigterm-state".into(), tmux.state("term")?);
    Ok(caps)
}

/// Runs the test. `Err` means it could not run at all; otherwise every
/// check is in the report.
pub fn run(o: &LiveOptions) -> Result<LiveReport> {
    let started = Instant::now();
    // Checked now rather than after the boot.
    let _ = Tmux::new()?;
    let port = free_port()?;
    let release_port = free_port()?;
    let _guard = util::guest_active();
    let release_wait = o.timeout.as_secs().saturating_sub(30).max(60);
    let mut vm_run = VmRun::new(o.kernel.clone(), guest_command(release_wait));
    vm_run.gupwatch = Some(o.gupwatch.clone());
    vm_run.timeout = o.timeout;
    vm_run.tmux = true;
    vm_run.forwards = vec![
        Forward { host: port, guest: GUEST_PORT },
        Forward { host: release_port, guest: GUEST_RELEASE_PORT },
    ];
    vm_run.echo = ConsoleEcho::None;
    vm_run.stream_stdout = false;
    vm_run.tag = "live".into();
    say!("live", "guest daemon port {GUEST_PORT} -> 127.0.0.1:{port}; release port -> 127.0.0.1:{release_port}");
    let vm = thread::spawn(move || vm_run.run());

    let addr = format!("127.0.0.1:{port}");
    let host = wait_for_workloads(port, &vm, started).and_then(|()| {
        say!("live", "the daemon lists the workloads ({:.0} s); driving `gupwatch top --connect {addr}` in tmux", started.elapsed().as_secs_f64());
        let t = Instant::now();
        host_part(&o.gupwatch, &addr).map(|c| (c, t.elapsed()))
    });
    if host.is_ok() {
        say!("live", "host part done; waiting for the guest's part");
    }
    // The guest's part must end before it is released; the release wait
    // in release_guest is bounded by the VM's own time limit.
    let released = release_guest(release_port, &vm, o.timeout);
    if !released && !vm.is_finished() {
        say!("live", "the guest did not take the release; waiting for its time limit");
    }
    let vm_result = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;
    if util::interrupted() {
        return Err(anyhow!(util::Interrupted));
    }

    let mut checks = vec![];
    let mut screens = BTreeMap::new();
    let mut guest_elapsed = None;
    match &vm_result {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let caps = parse_captures(&stdout);
            guest_elapsed = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("@@guest-done:")?.strip_suffix("@@")?.parse::<f64>().ok())
                .map(Duration::from_secs_f64);
            checks.extend(judge("guest", "local", &caps));
            checks.extend(crate::reducedcheck::judge(&caps));
            checks.push(Check {
                name: "guest: the daemon and workloads ended cleanly".into(),
                expr: None,
                ok: out.status == 0,
                detail: format!(
                    "exit status {} (3: gupwatch run never served); {} s in all ({}); console log: {}",
                    out.status,
                    out.elapsed.as_secs(),
                    out.accel,
                    out.console_log.display()
                ),
            });
            screens.extend(caps.into_iter().map(|(k, v)| (format!("guest:{k}"), v)));
        }
        Err(e) => checks.push(Check { name: "guest: VM run".into(), expr: None, ok: false, detail: format!("{e:#}") }),
    }
    let mut host_elapsed = None;
    match host {
        Ok((caps, took)) => {
            host_elapsed = Some(took);
            checks.extend(judge("host", &addr, &caps));
            screens.extend(caps.into_iter().map(|(k, v)| (format!("host:{k}"), v)));
        }
        Err(e) => {
            if e.downcast_ref::<util::Interrupted>().is_some() {
                return Err(e);
            }
            checks.push(Check { name: "host: top --connect in tmux".into(), expr: None, ok: false, detail: format!("{e:#}") });
        }
    }
    Ok(LiveReport { checks, screens, guest_elapsed, host_elapsed, elapsed: started.elapsed() })
}

/// One line with the time each part took.
pub fn timing(r: &LiveReport) -> String {
    let secs = |d: Option<Duration>| d.map_or_else(|| "-".to_string(), |d| format!("{:.0} s", d.as_secs_f64()));
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    format!(
        "live view: {} of {} checks passed; guest part done {} after boot, host part (top --connect) {}, {:.0} s in all",
        r.checks.len() - failed,
        r.checks.len(),
        secs(r.guest_elapsed),
        secs(r.host_elapsed),
        r.elapsed.as_secs_f64()
    )
}

/// The first screens of each side, for the log.
pub fn render_screens(r: &LiveReport) -> String {
    let mut out = String::new();
    for key in ["guest:initial", "host:initial"] {
        if let Some(s) = r.screens.get(key) {
            let _ = writeln!(out, "  {key}:{}", boxed(s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A screen as the live view draws it (as in docs/live-view.md, 80×24).
    const SCREEN: &str = "\
gupwatch · 7.2.0-1-cloud-amd64 · 19/19 hooks · local · 1s · up 12s
gupwatch pinned    35.2k unpinned  34.9k held    256 │  3451/s fast 67% err 0
vmstat   acquired  40.1k released  39.8k held    256 │  3420/s out 3716/s
 Processes · sort PAGES/s ▼ · 2 rows · 14 idle hidden (i) ─────────────────────
    PID COMM                      SUBSYS      PINS/s PAGES/s▼   OUTST FAST%  LT%
    187 zz-pinner                 process_vm      13     3449   15.9k    67   33
    190 aa-holder                 io_uring         0        0     256     -  100


 Pin rate · fast-path hit   Latency · all APIs ──────  Outstanding · leaks ─────
3451/s max 11.0k · 7s         1µs ████████████ 510.9k held 15.9k · kernel 0
    █                         2µs ▏              7349 orphaned   3764p gupwatch
q quit  v view  s/S sort  / filter  i idle  a latency  p pause  ? help
";

    /// The table of [`SCREEN`] after sorting by name and `i`: idle rows
    /// shown (a shell that exec'd, tmux).
    fn idle_shown() -> String {
        SCREEN
            .replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i) ─", "sort NAME ▲ · 4 rows · idle shown (i) ────────")
            .replace(
                "    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n    190 aa-holder                 io_uring         0        0     256     -  100\n\n",
                "    190 aa-holder                 io_uring         0        0     256     -  100\n     95 sh                        exec             0        0       0     -    -\n     12 tmux: server                               0        0       0     -    -\n    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n",
            )
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_human("3451/s"), Some(3451.0));
        assert_eq!(parse_human("35.2k"), Some(35200.0));
        assert_eq!(parse_human("32.3k"), Some(32300.0));
        assert_eq!(parse_human("1.23M"), Some(1_230_000.0));
        assert_eq!(parse_human("0.5"), Some(0.5));
        assert_eq!(parse_human("67%"), Some(67.0));
        assert_eq!(parse_human("-"), None);
        assert_eq!(parse_human("k"), None);
    }

    #[test]
    fn header_title_and_rows() {
        let h = parse_header(SCREEN).unwrap();
        assert_eq!(h.hooks, (19, 19));
        assert_eq!((h.pinned, h.unpinned, h.pin_rate), (35200.0, 34900.0, 3451.0));
        assert_eq!((h.vm_acquired, h.vm_released, h.vm_rate), (40100.0, 39800.0, 3420.0));
        let t = parse_title(SCREEN).unwrap();
        assert_eq!(t, Title { sort: "PAGES/s".into(), descending: true, filter: None, rows: 2, idle_hidden: 14, idle_shown: false });
        let rows = parse_rows(SCREEN);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0], ProcRow { pid: 187, comm: PINNER.into(), pins_per_sec: 13.0, pages_per_sec: 3449.0, outstanding: Some(15900.0) });
        assert_eq!((rows[1].comm.as_str(), rows[1].outstanding), (HOLDER, Some(256.0)));
        assert!(!rows[1].idle(), "a holder is not idle");
        let shown = idle_shown();
        assert_eq!(
            parse_title(&shown).unwrap(),
            Title { sort: "NAME".into(), descending: false, filter: None, rows: 4, idle_hidden: 0, idle_shown: true }
        );
        let rows = parse_rows(&shown);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[2].comm, "tmux: server", "a name with a space, an empty subsystem column");
        assert_eq!(rows.iter().filter(|r| r.idle()).map(|r| r.comm.as_str()).collect::<Vec<_>>(), ["sh", "tmux: server"]);
        let wide = SCREEN
            .replace("FAST%  LT%", "FAST%  LT%    PAGES")
            .replace("67   33", "67   33   35.2k");
        assert_eq!(parse_rows(&wide)[0].pages_per_sec, 3449.0, "the PAGES column of wide terminals");
        let f = SCREEN.replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i)", "sort NAME ▲ · filter \"zz-pin\" · 1 rows");
        assert_eq!(
            parse_title(&f).unwrap(),
            Title { sort: "NAME".into(), descending: false, filter: Some("zz-pin".into()), rows: 1, idle_hidden: 0, idle_shown: false }
        );
        assert!(parse_header("nothing").is_err());
        assert!(parse_rows("no table").is_empty());
    }

    #[test]
    fn captures_are_split_by_markers() {
        let out = "noise\n@@capture a@@\nline 1\r\nline 2\n@@end a@@\n@@capture b@@\nx\n@@end wrong@@\n@@capture c@@\n\n@@end c@@\n";
        let c = parse_captures(out);
        assert_eq!(c.get("a").map(String::as_str), Some("line 1\nline 2\n"));
        assert!(!c.contains_key("b"), "unterminated captures are dropped");
        assert_eq!(c.get("c").map(String::as_str), Some("\n"));
    }

    fn screens(initial: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("initial".to_string(), initial.to_string());
        let by_pins = initial.replace("sort PAGES/s ▼", "sort PINS/s ▼");
        m.insert("sort-pins".into(), by_pins);
        let by_name = initial.replace("sort PAGES/s ▼", "sort NAME ▲").replace(
            "    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n    190 aa-holder                 io_uring         0        0     256     -  100\n",
            "    190 aa-holder                 io_uring         0        0     256     -  100\n    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n",
        );
        m.insert("sort-name".into(), by_name.clone());
        m.insert("show-idle".into(), idle_shown());
        m.insert("hide-idle".into(), by_name);
        let filtered = initial
            .replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i)", "sort NAME ▲ · filter \"zz-pin\" · 1 rows")
            .replace("    190 aa-holder                 io_uring         0        0     256     -  100\n", "");
        m.insert("filter".into(), filtered);
        let restored = "$ \nRESTORED:0\nspeed 38400 baud; rows 24; columns 80;\nisig icanon iexten echo echoe echok -echonl\n";
        m.insert("quit".into(), restored.into());
        m.insert("quit-state".into(), "alternate_on=0 cursor_flag=1 pane_dead=0\n".into());
        m.insert("sigterm".into(), restored.into());
        m.insert("sigterm-state".into(), "alternate_on=0 cursor_flag=1 pane_dead=0\n".into());
        m
    }

    #[test]
    fn a_good_run_passes() {
        let checks = judge("guest", "local", &screens(SCREEN));
        let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(checks.len() >= 15);
    }

    #[test]
    fn each_kind_of_breakage_fails() {
        let fail = |m: BTreeMap<String, String>| -> Vec<String> {
            judge("host", "local", &m).into_iter().filter(|c| !c.ok).map(|c| c.name).collect()
        };
        // gupwatch counting double what the kernel counts.
        let f = fail(screens(&SCREEN.replace("│  3451/s fast", "│  6902/s fast")));
        assert!(f.iter().any(|n| n.contains("vmstat")), "{f:?}");
        // Rows out of order for the sort the title claims.
        let mut m = screens(SCREEN);
        let unsorted = m["sort-name"].replace("sort NAME ▲", "sort PINS/s ▼");
        m.insert("sort-pins".into(), unsorted);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("rows sorted by PINS/s")), "{f:?}");
        // A sort key that did not change.
        let mut m = screens(SCREEN);
        let same = m["initial"].clone();
        m.insert("sort-name".into(), same);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("title says sort NAME")), "{f:?}");
        assert!(f.iter().any(|n| n.contains("rows sorted by name")), "{f:?}");
        // A filter that does not filter.
        let mut m = screens(SCREEN);
        let unfiltered = m["initial"].replace("sort PAGES/s ▼ · 2 rows", "sort PAGES/s ▼ · filter \"zz-pin\" · 2 rows");
        m.insert("filter".into(), unfiltered);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("only rows matching")), "{f:?}");
        // Idle rows not hidden: the first screen lists a shell at 0/s.
        let f = fail(screens(&SCREEN.replace(
            "    190 aa-holder                 io_uring         0        0     256     -  100\n\n",
            "    190 aa-holder                 io_uring         0        0     256     -  100\n     95 sh                        exec             0        0       0     -    -\n",
        )));
        assert!(f.iter().any(|n| n.contains("no idle row shown")), "{f:?}");
        // `i` does nothing.
        let mut m = screens(SCREEN);
        let same = m["sort-name"].clone();
        m.insert("show-idle".into(), same);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("after `i` the table has more rows")), "{f:?}");
        assert!(f.iter().any(|n| n.contains("after `i` idle rows are on the screen")), "{f:?}");
        // The title does not say idle rows are hidden.
        let mut m = screens(SCREEN);
        let silent = m["sort-name"].replace(" · 14 idle hidden (i) ", " ────────────────── ");
        m.insert("sort-name".into(), silent);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("before `i` the title counts")), "{f:?}");
        // `i` again does not hide them.
        let mut m = screens(SCREEN);
        m.insert("hide-idle".into(), idle_shown());
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("`i` again hides them")), "{f:?}");
        assert!(f.iter().any(|n| n.contains("no idle row shown")), "{f:?}");
        // By name, the pinner is pushed off the screen, or the holder is
        // not first.
        let mut m = screens(SCREEN);
        let no_pinner = m["sort-name"].replace("    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n", "");
        m.insert("sort-name".into(), no_pinner);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("rows sorted by name")), "{f:?}");
        let mut m = screens(SCREEN);
        let late_holder = m["sort-name"].replace(
            "    190 aa-holder  ",
            "      7 a-first                   exec             1        1       0     -    -\n    190 aa-holder  ",
        );
        m.insert("sort-name".into(), late_holder);
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("rows sorted by name")), "{f:?}");
        // Raw mode left on, alternate screen still on.
        let mut m = screens(SCREEN);
        m.insert("quit".into(), "RESTORED:0\nisig -icanon iexten -echo\n".into());
        m.insert("quit-state".into(), "alternate_on=1 cursor_flag=0 pane_dead=0\n".into());
        let f = fail(m);
        assert!(f.iter().any(|n| n.contains("q: the tty is cooked")), "{f:?}");
        assert!(f.iter().any(|n| n.contains("q: alternate screen left")), "{f:?}");
        // The failure quotes the screen.
        let mut m = screens(SCREEN);
        m.insert("filter".into(), "garbage\n".into());
        let c = judge("guest", "local", &m);
        let bad = c.iter().find(|c| !c.ok).unwrap();
        assert!(bad.detail.contains("|garbage"), "{}", bad.detail);
    }

    #[test]
    fn guest_script_has_every_step() {
        let s = guest_command(100);
        for want in ["cap initial tui", "cap sort-pins tui", "cap sort-name tui", "cap show-idle tui", "cap hide-idle tui", "cap filter tui", "cap quit tui", "cap sigterm term", "nc -l -p 10484", "-x 80 -y 24", "/tmp/zz-pinner workload"] {
            assert!(s.contains(want), "{want}");
        }
        for p in ["@SERVE@", "@PORT@", "@RELEASE@", "@WAIT@", "@PINNER@", "@HOLDER@", "@FILTER@", "@COLS@", "@ROWS@", "@REDUCED@", "@REDUCED_PORT@"] {
            assert!(!s.contains(p), "{p} replaced");
        }
    }
}
