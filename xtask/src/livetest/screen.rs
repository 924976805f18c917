//! Reading the live view's screens as tmux captures them: the header, the
//! process table's title and rows, and the captures split by step.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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

/// A screen in a box, for a failure's detail.
pub(super) fn boxed(screen: &str) -> String {
    let mut s = String::from("\n    +--------------------------------------------------------------------------------\n");
    for l in screen.lines() {
        let _ = writeln!(s, "    |{l}");
    }
    s.push_str("    +--------------------------------------------------------------------------------");
    s
}
