//! Draws the [`ViewModel`] with ratatui. Nothing here reads data or keeps
//! state: everything comes from the view model and the [`UiState`], so a
//! frame is a pure function of the two (and tests render it with
//! ratatui's `TestBackend`).
//!
//! Layout, top to bottom: three header lines (kernel, hooks, gupwatch's
//! totals beside the kernel's vmstat counters), the table, a row of three
//! panels (sparklines, latency histogram, outstanding pins and leak
//! signals), and a key hint line. It fits 80×24; panels give way to the
//! table on shorter terminals.

use ratatui::{
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap},
    Frame,
};

use super::{
    input::{Panel, UiState},
    view::{visible_rows, SortKey, TableRow, View, ViewModel, VisibleRows},
};
use gup_report::{short_duration, LeakKind};

/// Compact count: 9999, 12.3k, 1.23M, 4.56G.
pub fn human(n: u64) -> String {
    let f = n as f64;
    if n < 10_000 {
        n.to_string()
    } else if f < 1e6 {
        format!("{:.1}k", f / 1e3)
    } else if f < 1e9 {
        format!("{:.2}M", f / 1e6)
    } else {
        format!("{:.2}G", f / 1e9)
    }
}

/// Compact rate: 0, 0.5, 12, 1234, 12.3k.
pub fn human_rate(r: f64) -> String {
    if r <= 0.0 {
        "0".into()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else if r < 10_000.0 {
        format!("{r:.0}")
    } else {
        human(r as u64)
    }
}

/// A duration in nanoseconds, for latency bucket labels: 512ns, 1µs, 33µs,
/// 1ms, 2s.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1000 {
        format!("{ns}ns")
    } else if f < 1e6 {
        format!("{:.0}µs", f / 1e3)
    } else if f < 1e9 {
        format!("{:.0}ms", f / 1e6)
    } else {
        format!("{:.0}s", f / 1e9)
    }
}

fn human_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn pct_text(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p:.0}%"))
}

fn opt_pct(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p:.0}"))
}

const DIM: Style = Style::new().fg(Color::DarkGray);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

/// Draws one frame.
pub fn draw(f: &mut Frame, vm: &ViewModel, ui: &UiState) {
    let area = f.area();
    let [header, middle, footer] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    draw_header(f, header, vm, ui);
    // The panels need about 7 lines to say anything; below that the table
    // has the room.
    let bottom_h = match (middle.height >= 14 && vm.latest().is_some(), vm.full()) {
        (false, _) => 0,
        (true, true) => (middle.height / 2).clamp(7, 14),
        // Reduced mode has only the kernel's rate to draw; the diagnosis
        // gets the room.
        (true, false) => 6,
    };
    let [table, bottom] = Layout::vertical([Constraint::Min(3), Constraint::Length(bottom_h)]).areas(middle);
    if vm.latest().is_none() {
        let msg = match &ui.error {
            Some(e) => format!("waiting for data: {e}"),
            None => format!("waiting for the first reading from {}…", ui.source),
        };
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }).block(titled(" gupwatch ")), table);
    } else if vm.full() {
        draw_table(f, table, vm, ui);
    } else {
        draw_reduced(f, table, vm, ui);
    }
    if bottom_h > 0 && !vm.full() {
        draw_sparklines(f, bottom, vm);
    } else if bottom_h > 0 {
        let [spark, latency, leaks] =
            Layout::horizontal([Constraint::Ratio(1, 3), Constraint::Ratio(1, 3), Constraint::Ratio(1, 3)])
                .spacing(1)
                .areas(bottom);
        draw_sparklines(f, spark, vm);
        match ui.panel {
            Panel::Latency => draw_latency(f, latency, vm, ui),
            Panel::HoldTimes => draw_hold_times(f, latency, vm),
            Panel::Cgroups => draw_cgroups(f, latency, vm),
        }
        draw_leaks(f, leaks, vm);
    }
    draw_footer(f, footer, ui);
    if ui.help {
        draw_help(f, area);
    }
}

fn titled(title: &str) -> Block<'_> {
    Block::new().borders(Borders::TOP).title(Span::styled(title, BOLD)).border_style(DIM)
}

fn draw_header(f: &mut Frame, area: Rect, vm: &ViewModel, ui: &UiState) {
    let mut lines = vec![];
    let Some(s) = vm.latest() else {
        f.render_widget(Paragraph::new(format!("gupwatch · {}", ui.source)), area);
        return;
    };
    let hooks_style = if s.hooks_attached == 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if s.hooks_attached < s.hooks_present {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new().fg(Color::Green)
    };
    let tail = format!(" · {} · {}s · up {}", ui.source, trim_secs(ui.interval.as_secs_f64()), human_secs(vm.uptime()));
    let hooks = format!("{}/{} hooks", s.hooks_attached, s.hooks_present);
    // The name goes first when the line is too long (long kernel strings).
    let fits = "gupwatch · ".len() + s.kernel.chars().count() + 3 + hooks.len() + tail.chars().count() <= area.width as usize;
    let mut first = if fits { vec![Span::styled("gupwatch", BOLD), Span::raw(" · ")] } else { vec![] };
    first.extend([
        Span::styled(s.kernel.clone(), if fits { Style::new() } else { BOLD }),
        Span::raw(" · "),
        Span::styled(hooks, hooks_style),
        Span::raw(tail),
    ]);
    if ui.paused {
        first.push(Span::raw(" "));
        first.push(Span::styled(" PAUSED ", Style::new().add_modifier(Modifier::REVERSED)));
    }
    lines.push(Line::from(first));
    // gupwatch's totals (since its probes were attached) above the
    // kernel's (since boot), in the same columns, so the two line up.
    match s.totals {
        Some(t) => {
            let mut spans = vec![
                Span::styled("gupwatch ", BOLD),
                Span::raw(format!(
                    "pinned   {:>6} unpinned {:>6} held {:>6} ",
                    human(t.pinned_pages),
                    human(t.unpinned_pages),
                    human(t.pinned_pages.saturating_sub(t.unpinned_pages)),
                )),
                Span::styled(
                    format!("│ {:>5}/s", human_rate(vm.pin_rate().unwrap_or(0.0))),
                    Style::new().fg(Color::Cyan),
                ),
                Span::raw(format!(" fast {} err {}", pct_text(vm.hit_pct()), human(t.failed_calls))),
            ];
            // FOLL_GET references only where they fit whole: cut at 80
            // columns they read as a stray "re".
            let refs = format!(" refs {}", human(t.referenced_pages));
            let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
            if t.referenced_pages > 0 && used + refs.chars().count() <= area.width as usize {
                spans.push(Span::styled(refs, DIM));
            }
            lines.push(Line::from(spans));
        }
        None => lines.push(Line::from(vec![
            Span::styled("gupwatch ", BOLD),
            Span::styled("reduced mode: no probes; kernel counters, accounted pins", Style::new().fg(Color::Yellow)),
        ])),
    }
    match s.kernel_counters {
        Some((acq, rel)) => {
            let (ra, rr) = vm.kernel_rate().unwrap_or((0.0, 0.0));
            lines.push(Line::from(vec![
                Span::styled("vmstat   ", BOLD),
                Span::raw(format!(
                    "acquired {:>6} released {:>6} held {:>6} ",
                    human(acq),
                    human(rel),
                    human(acq.saturating_sub(rel))
                )),
                Span::styled(format!("│ {:>5}/s", human_rate(ra)), Style::new().fg(Color::Cyan)),
                Span::styled(format!(" out {}/s", human_rate(rr)), DIM),
            ]));
        }
        None => lines.push(Line::from(Span::styled("vmstat   nr_foll_pin_* unreadable", DIM))),
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn trim_secs(s: f64) -> String {
    let t = format!("{s:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

fn draw_table(f: &mut Frame, area: Rect, vm: &ViewModel, ui: &UiState) {
    let VisibleRows { rows, idle_hidden } = visible_rows(vm.table(ui.view, ui.sort, ui.descending, &ui.filter), ui.show_idle);
    let arrow = if ui.descending { "▼" } else { "▲" };
    let mut title = format!(" {} · sort {} {arrow}", ui.view.title(), ui.sort.label());
    if !ui.filter.is_empty() {
        title += &format!(" · filter \"{}\"", ui.filter);
    }
    title += &format!(" · {} rows", rows.len());
    // Say what is left out, and the key that brings it back, so a short
    // table is not mistaken for a quiet machine.
    if idle_hidden > 0 {
        title += &format!(" · {idle_hidden} idle hidden (i)");
    } else if ui.show_idle {
        title += " · idle shown (i)";
    }
    title.push(' ');
    let wide = area.width >= 90;
    // (header, width, right-aligned, sort key)
    let mut cols: Vec<(&str, Constraint, bool, Option<SortKey>)> = match ui.view {
        View::Processes => vec![
            ("PID", Constraint::Length(7), true, None),
            ("COMM", Constraint::Fill(1), false, Some(SortKey::Name)),
            ("SUBSYS", Constraint::Length(10), false, None),
        ],
        View::CallSites => vec![
            ("CALL SITE", Constraint::Fill(1), false, Some(SortKey::Name)),
            ("SUBSYS", Constraint::Length(10), false, None),
            ("PROCS", Constraint::Length(5), true, None),
        ],
    };
    cols.extend([
        ("PINS/s", Constraint::Length(7), true, Some(SortKey::PinsPerSec)),
        ("PAGES/s", Constraint::Length(8), true, Some(SortKey::PagesPerSec)),
        ("OUTST", Constraint::Length(7), true, Some(SortKey::Outstanding)),
        ("FAST%", Constraint::Length(5), true, Some(SortKey::FastPct)),
        ("LT%", Constraint::Length(4), true, Some(SortKey::LongtermPct)),
    ]);
    if wide {
        cols.push(("PAGES", Constraint::Length(8), true, Some(SortKey::TotalPages)));
    }
    let header = Row::new(cols.iter().map(|(h, _, r, key)| {
        let mut style = DIM.add_modifier(Modifier::BOLD);
        let mut text = h.to_string();
        if *key == Some(ui.sort) {
            style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
            text = format!("{text}{arrow}");
        }
        let line = Line::styled(text, style);
        Cell::from(if *r { line.alignment(Alignment::Right) } else { line })
    }));
    let body: Vec<Row> = rows
        .iter()
        .map(|r: &TableRow| {
            let mut cells = match ui.view {
                View::Processes => vec![
                    right(r.tgid.map_or_else(String::new, |t| t.to_string())),
                    Cell::from(r.name.clone()),
                    Cell::from(r.subsystem.clone()),
                ],
                View::CallSites => vec![
                    Cell::from(r.name.clone()),
                    Cell::from(r.subsystem.clone()),
                    right(r.processes.to_string()),
                ],
            };
            cells.extend([
                right(human_rate(r.pins_per_sec)),
                right(human_rate(r.pages_per_sec)),
                right(r.outstanding.map_or_else(|| "?".into(), human)),
                right(opt_pct(r.fast_pct)),
                right(opt_pct(r.longterm_pct)),
            ]);
            if wide {
                cells.push(right(human(r.total_pages)));
            }
            let row = Row::new(cells);
            if r.pages_per_sec > 0.0 {
                row.style(BOLD)
            } else {
                row
            }
        })
        .collect();
    let block = titled(&title);
    if body.is_empty() {
        let msg = match (ui.filter.is_empty(), idle_hidden > 0) {
            (true, false) => "no pin_user_pages*/get_user_pages* calls seen yet".to_string(),
            (true, true) => format!("no pin or get calls in the last interval; {idle_hidden} idle hidden (i shows them)"),
            (false, false) => format!("nothing matches \"{}\" (/ to change, Esc to clear)", ui.filter),
            (false, true) => format!("nothing active matches \"{}\"; {idle_hidden} idle hidden (i shows them)", ui.filter),
        };
        let inner = block.inner(area);
        f.render_widget(block, area);
        let [h, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
        f.render_widget(Table::new(Vec::<Row>::new(), cols.iter().map(|c| c.1)).header(header), h);
        f.render_widget(Paragraph::new(Span::styled(msg, DIM)).wrap(Wrap { trim: true }), rest);
        return;
    }
    let table = Table::new(body, cols.iter().map(|c| c.1)).header(header).column_spacing(1).block(block);
    f.render_widget(table, area);
}

fn draw_reduced(f: &mut Frame, area: Rect, vm: &ViewModel, ui: &UiState) {
    let mut lines = vec![
        Line::styled(
            "No probes run: no per-caller or per-API detail. The kernel's FOLL_PIN counters (/proc/vmstat) and, below, what it charges each process.",
            Style::new().fg(Color::Yellow),
        ),
    ];
    // The failed checks only (the full list, with fixes, is `doctor`'s).
    let failed: Vec<&String> = ui.diagnosis.iter().filter(|l| l.trim_start().starts_with("[FAIL]")).collect();
    if !failed.is_empty() {
        lines.extend(failed.iter().map(|l| Line::styled(l.trim().to_string(), Style::new().fg(Color::Red))));
    } else if let Some(s) = vm.latest() {
        // A remote daemon: its hooks' reasons say why.
        let mut seen = std::collections::BTreeSet::new();
        for h in s.hooks.iter().filter(|h| h.status == "failed") {
            if seen.insert(h.reason.clone()) && seen.len() <= 3 {
                lines.push(Line::raw(format!("  {}: {}", h.function, h.reason)));
            }
        }
    }
    lines.push(Line::styled("Run `gupwatch doctor` for every check and its fix.", DIM));
    let accounted = vm.latest().and_then(|s| s.accounted.as_ref());
    // The explanation gets what it needs (it wraps), the holders the rest.
    let want = (lines.len() as u16 + 3).min(area.height / 2).max(3);
    let [why, holders] = if accounted.is_some() {
        Layout::vertical([Constraint::Length(want), Constraint::Min(0)]).areas(area)
    } else {
        [area, Rect::default()]
    };
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(titled(" Reduced mode ")), why);
    if let Some(a) = accounted {
        draw_accounted(f, holders, a);
    }
}

/// The holders of accounted pinned memory (reduced mode).
fn draw_accounted(f: &mut Frame, area: Rect, a: &gup_report::Accounted) {
    use crate::model::accounted::human_bytes;
    let title = format!(
        " Accounted pinned memory · kernel charges, not traced · {} holders{} ",
        a.holders.len(),
        if a.truncated { " (some left out)" } else { "" }
    );
    // Numbers are right-aligned in their cells; so are their headers.
    let header = Row::new(["    PID", "COMM", "  PINNED", "  VmPin", "  VmLck", "URING", "URING_PG"].map(Cell::from))
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = a.holders.iter().map(|h| {
        Row::new([
            Cell::from(format!("{:>7}", h.pid)),
            Cell::from(h.comm.clone()),
            Cell::from(format!("{:>8}", human(h.pinned_pages))),
            Cell::from(format!("{:>7}", human_bytes(h.vm_pin_bytes))),
            Cell::from(format!("{:>7}", human_bytes(h.locked_bytes))),
            Cell::from(format!("{:>5}", h.io_uring_buffers)),
            Cell::from(format!("{:>8}", human(h.io_uring_pages))),
        ])
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths).header(header).column_spacing(1).block(titled(&title));
    f.render_widget(table, area);
}

fn draw_sparklines(f: &mut Frame, area: Rect, vm: &ViewModel) {
    let block = titled(if vm.full() { " Pin rate · fast-path hit " } else { " Pin rate " });
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.height < 4 || inner.width < 4 {
        return;
    }
    if !vm.full() {
        // Reduced mode: the kernel's acquire rate, nothing else.
        let [l1, s1] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
        let n = inner.width as usize;
        let points: Vec<_> = vm.history().collect();
        let recent = &points[points.len().saturating_sub(n)..];
        let rates: Vec<u64> = recent.iter().map(|p| p.pin_rate.round() as u64).collect();
        let now = recent.last().map_or(0.0, |p| p.pin_rate);
        let max = rates.iter().copied().max().unwrap_or(0);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(format!("{}/s", human_rate(now)), Style::new().fg(Color::Cyan)),
                Span::styled(format!(" pins acquired (vmstat) · max {}", human_rate(max as f64)), DIM),
            ])),
            l1,
        );
        f.render_widget(Sparkline::default().data(&rates).style(Style::new().fg(Color::Cyan)), s1);
        return;
    }
    let spark_h = (inner.height - 2) / 2;
    let [l1, s1, l2, s2] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(spark_h),
        Constraint::Length(1),
        Constraint::Length(spark_h),
    ])
    .areas(inner);
    let n = inner.width as usize;
    let points: Vec<_> = vm.history().collect();
    let recent = &points[points.len().saturating_sub(n)..];
    let rates: Vec<u64> = recent.iter().map(|p| p.pin_rate.round() as u64).collect();
    let hits: Vec<u64> = recent.iter().map(|p| p.hit_pct.map_or(0, |h| h.round() as u64)).collect();
    let max = rates.iter().copied().max().unwrap_or(0);
    let now = recent.last().map_or(0.0, |p| p.pin_rate);
    let span = recent.first().zip(recent.last()).map_or(0.0, |(a, b)| b.t - a.t);
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!("{}/s", human_rate(now)), Style::new().fg(Color::Cyan)),
            Span::styled(format!(" max {} · {}", human_rate(max as f64), human_secs(span)), DIM),
        ])),
        l1,
    );
    f.render_widget(Sparkline::default().data(&rates).style(Style::new().fg(Color::Cyan)), s1);
    let hit_now = recent.iter().rev().find_map(|p| p.hit_pct);
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!("fast {}", pct_text(hit_now)), Style::new().fg(Color::Green)),
            Span::styled(" of *_fast pages", DIM),
        ])),
        l2,
    );
    f.render_widget(Sparkline::default().data(&hits).max(100).style(Style::new().fg(Color::Green)), s2);
}

/// The `height` consecutive buckets holding the most calls.
fn bucket_window(b: &[u64], height: usize) -> std::ops::Range<usize> {
    let (Some(lo), Some(hi)) = (b.iter().position(|n| *n > 0), b.iter().rposition(|n| *n > 0)) else {
        return 0..0;
    };
    if hi - lo < height {
        // Centre the data, within the buckets that exist.
        let pad = height - (hi - lo + 1);
        let start = lo.saturating_sub(pad / 2).min(b.len().saturating_sub(height));
        return start..(start + height).min(b.len());
    }
    let best = (lo..=hi + 1 - height).max_by_key(|s| (b[*s..*s + height].iter().sum::<u64>(), usize::MAX - s)).unwrap_or(lo);
    best..best + height
}

fn bar(n: u64, max: u64, width: usize) -> String {
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if max == 0 || width == 0 {
        return String::new();
    }
    let eighths = ((n as f64 / max as f64) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s += EIGHTHS[eighths % 8];
    if n > 0 && s.is_empty() {
        s = "▏".into();
    }
    s
}

fn draw_latency(f: &mut Frame, area: Rect, vm: &ViewModel, ui: &UiState) {
    let which = ui.latency_api.as_deref();
    let name = which.unwrap_or("all APIs");
    // A long API name alone, rather than cut.
    let title = if name.len() + 12 <= area.width as usize { format!(" Latency · {name} ") } else { format!(" {name} ") };
    let block = titled(&title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let buckets = vm.latency(which);
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        let msg = if vm.full() { "no timed calls yet" } else { "needs probes" };
        f.render_widget(Paragraph::new(Span::styled(msg, DIM)), inner);
        return;
    }
    let rows = inner.height as usize;
    let window = bucket_window(&buckets, rows);
    let max = buckets[window.clone()].iter().copied().max().unwrap_or(0);
    let label_w = 6;
    let count_w = 6;
    let bar_w = (inner.width as usize).saturating_sub(label_w + count_w + 2);
    let lines: Vec<Line> = window
        .map(|i| {
            Line::from(vec![
                Span::styled(format!("{:>label_w$}", human_ns(1u64 << i)), DIM),
                Span::raw(" "),
                Span::styled(format!("{:<bar_w$}", bar(buckets[i], max, bar_w)), Style::new().fg(Color::Magenta)),
                Span::raw(format!(" {:>count_w$}", human(buckets[i]))),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

/// Draws a titled panel and returns its inside, or says why it is empty
/// (nothing yet, or no probes) and returns `None`.
fn panel(f: &mut Frame, area: Rect, title: &str, vm: &ViewModel, empty: bool, nothing: &str) -> Option<Rect> {
    let block = titled(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if empty {
        let msg = if vm.full() { nothing } else { "needs probes" };
        f.render_widget(Paragraph::new(Span::styled(msg, DIM)), inner);
        return None;
    }
    Some(inner)
}

/// One line per subsystem and LONGTERM: pages released and the bucket
/// bounds their median and 99th percentile hold times fall under.
fn draw_hold_times(f: &mut Frame, area: Rect, vm: &ViewModel) {
    let hs = vm.hold_times();
    let Some(inner) = panel(f, area, " Hold times · p50 p99 ", vm, hs.is_empty(), "no pins released yet") else {
        return;
    };
    let q = |h: &gup_report::HoldHistogram, q: f64| h.quantile_upper_seconds(q).map_or("-".into(), short_duration);
    let lines: Vec<Line> = hs
        .iter()
        .map(|h| {
            Line::from(vec![
                Span::raw(format!("{:<11}", h.subsystem)),
                Span::styled(if h.longterm { "LT " } else { "   " }, DIM),
                Span::raw(format!("≤{:>6} ≤{:>6}", q(h, 0.5), q(h, 0.99))),
                Span::styled(format!(" {:>6}p", human(h.count)), DIM),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

/// Pins held per cgroup: pages, then the unit, pod or container when the
/// path has one (more telling than a long path), else the path.
fn draw_cgroups(f: &mut Frame, area: Rect, vm: &ViewModel) {
    let cs = vm.cgroups();
    let Some(inner) = panel(f, area, " Pins held · by cgroup ", vm, cs.is_empty(), "no pins held") else {
        return;
    };
    let lines: Vec<Line> = cs
        .iter()
        .map(|c| {
            let g = &c.cgroup;
            let name = match (&g.pod_uid, &g.container_id, &g.unit) {
                (Some(p), Some(id), _) => format!("pod {} ctr {}", &p[..8.min(p.len())], &id[..12.min(id.len())]),
                (Some(p), None, _) => format!("pod {p}"),
                (None, Some(id), _) => format!("ctr {}", &id[..12.min(id.len())]),
                (None, None, Some(u)) => u.clone(),
                (None, None, None) => g.path.clone(),
            };
            Line::from(vec![Span::raw(format!("{:>7}p ", human(c.pages))), Span::raw(name)])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_leaks(f: &mut Frame, area: Rect, vm: &ViewModel) {
    let block = titled(" Outstanding · leaks ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut lines = vec![];
    match vm.outstanding() {
        None if !vm.full() => lines.push(Line::styled("needs probes", DIM)),
        None => lines.push(Line::styled("reading the tracking map…", DIM)),
        Some(o) => {
            lines.push(Line::from(vec![
                Span::raw(format!("held {}", human(o.tracked_outstanding))),
                Span::styled(
                    o.kernel_outstanding.map_or_else(String::new, |k| format!(" · kernel {}", human(k.max(0) as u64))),
                    DIM,
                ),
                Span::styled(if o.partial { " PARTIAL" } else { "" }, Style::new().fg(Color::Yellow)),
            ]));
            let before: u64 = o.held_before_start.iter().map(|h| h.pages).sum();
            if before > 0 {
                lines.push(Line::styled(format!("+{} held before start", human(before)), DIM));
            }
            if o.leaks.is_empty() {
                lines.push(Line::styled("no leak signals", Style::new().fg(Color::Green)));
            }
            // Pins whose creator exited, held by a live process: not leaks,
            // but the answer to "what do I restart".
            for h in o.holdings.iter().filter(|h| !h.holders.is_empty()) {
                lines.push(Line::from(vec![
                    Span::styled(format!("{:<10}", "held by"), Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)),
                    Span::raw(format!("{:>5}p ", human(h.pages))),
                    Span::raw(crate::model::leaks::holder_names(&h.holders)),
                    Span::styled(format!(" from {} {}", h.owner_tgid, h.comm), DIM),
                ]));
            }
            for l in &o.leaks {
                let color = match l.kind {
                    LeakKind::Orphaned | LeakKind::Growth => Color::Red,
                    LeakKind::LongHeld | LeakKind::Unbalanced | LeakKind::WeakPin => Color::Yellow,
                };
                let who = l.comm.clone().unwrap_or_else(|| l.caller.clone());
                lines.push(Line::from(vec![
                    Span::styled(format!("{:<10}", l.kind.as_str()), Style::new().fg(color).add_modifier(Modifier::BOLD)),
                    Span::raw(format!("{:>5}p ", human(l.pages))),
                    Span::raw(who),
                    Span::styled(format!(" {}", l.subsystem.as_str()), DIM),
                    Span::styled(l.zone.as_ref().map_or(String::new(), |z| format!(" zone {z}")), DIM),
                ]));
            }
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_footer(f: &mut Frame, area: Rect, ui: &UiState) {
    let line = if let Some(edit) = &ui.editing {
        Line::from(vec![
            Span::styled(format!("filter: {edit}▏"), Style::new().fg(Color::Cyan)),
            Span::styled("  Enter keep · Esc cancel", DIM),
        ])
    } else {
        let keys = [("q", "quit"), ("v", "view"), ("s/S", "sort"), ("/", "filter"), ("i", "idle"), ("a", "latency"), ("p", "pause"), ("?", "help")];
        let mut spans = vec![];
        for (k, what) in keys {
            spans.push(Span::styled(k, Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)));
            spans.push(Span::styled(format!(" {what}  "), DIM));
        }
        if let Some(e) = &ui.error {
            spans.push(Span::styled(e.clone(), Style::new().fg(Color::Red)));
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::styled("Keys", BOLD),
        Line::raw("  v        processes ⇄ call sites"),
        Line::raw("  s / S    next sort column / reverse order"),
        Line::raw("  /        filter by process, call site or subsystem"),
        Line::raw("  i        show/hide idle rows (no calls, none held)"),
        Line::raw("  a / A    latency histogram: next / previous API"),
        Line::raw("  t        middle panel: latency → hold times → cgroups"),
        Line::raw("  p        pause (the data keeps being read)"),
        Line::raw("  q, Ctrl-C quit · ? or Esc closes this"),
        Line::styled("Columns", BOLD),
        Line::raw("  PINS/s   pin+get calls per second (last interval)"),
        Line::raw("  PAGES/s  pages pinned or referenced per second"),
        Line::raw("  OUTST    pins held now (tracking map, every few s)"),
        Line::raw("  FAST%    *_fast pages the lock-free walk took"),
        Line::raw("  LT%      pages pinned FOLL_LONGTERM (since start)"),
        Line::styled("Header", BOLD),
        Line::raw("  gupwatch: pins since its probes attached; vmstat:"),
        Line::raw("  the kernel's nr_foll_pin_* since boot; │ rate/s"),
    ];
    let w = 58.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text).block(Block::bordered().title(Span::styled(" gupwatch help ", BOLD))),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leak panel names who holds pins whose creator exited.
    #[test]
    fn leak_panel_shows_the_holder() {
        use crate::tui::view::tests::{holding, report};
        let mut vm = ViewModel::new();
        let mut h = holding(169, "handoff", "io_pin_pages", gup_report::Subsystem::IoUring, 256, 12.0);
        h.owner_exited = true;
        h.holders = vec![gup_report::ObjectHolder { pid: 170, comm: "ring-holder".into(), cgroup: String::new() }];
        vm.set_outstanding(Some(report(Some(256), vec![h], vec![])));
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(60, 6)).expect("test terminal");
        term.draw(|f| draw_leaks(f, f.area(), &vm)).expect("draws");
        let text: String = term.backend().buffer().content().iter().map(|c| c.symbol()).collect();
        assert!(text.contains("held by     256p 170 ring-holder from 169 handoff"), "{text}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(human(9999), "9999");
        assert_eq!(human(12_345), "12.3k");
        assert_eq!(human(1_234_567), "1.23M");
        assert_eq!(human_rate(0.0), "0");
        assert_eq!(human_rate(0.25), "0.2");
        assert_eq!(human_rate(1234.4), "1234");
        assert_eq!(human_ns(512), "512ns");
        assert_eq!(human_ns(1024), "1µs");
        assert_eq!(human_ns(1 << 20), "1ms");
        assert_eq!(trim_secs(1.0), "1");
        assert_eq!(trim_secs(0.25), "0.25");
        assert_eq!(human_secs(3725.0), "1h02m");
    }

    #[test]
    fn latency_window_finds_the_mass() {
        let mut b = [0u64; 40];
        b[10] = 5;
        b[11] = 50;
        b[30] = 1;
        assert_eq!(bucket_window(&b, 4), 10..14);
        assert_eq!(bucket_window(&[0; 40], 4), 0..0);
        let mut b = [0u64; 40];
        b[39] = 1;
        assert_eq!(bucket_window(&b, 5), 35..40, "stays inside the buckets");
        assert_eq!(bar(4, 8, 2), "█");
        assert_eq!(bar(1, 1000, 10), "▏", "non-zero is visible");
    }
}
