//! The live view (`gupwatch` on a terminal, `gupwatch top`).
//!
//! Data collection and drawing are separate:
//!
//! - a data thread calls a [`source::Source`] once per interval (this
//!   process's probes, or a daemon's `/api/snapshot`) and sends the
//!   [`sample::Sample`]s (plus, every few seconds, the leak report) to
//!   the interface thread;
//! - the interface thread feeds them to the [`view::ViewModel`] (pure:
//!   rates, tables, histories), applies keys to the [`input::UiState`]
//!   and draws both with [`render::draw`].
//!
//! So a slow daemon never freezes the keyboard, and everything but the
//! terminal itself is tested without one.

pub mod input;
pub mod render;
pub mod sample;
pub mod source;
mod term;
pub mod view;

use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event};

use self::{
    input::{handle_key, Action, UiState},
    sample::Sample,
    source::Source,
    view::ViewModel,
};

/// How often the leak report (and so the OUTST column) is refreshed at
/// most: it reads one map entry per tracked folio.
pub const OUTSTANDING_EVERY: Duration = Duration::from_secs(3);

/// Settings of one live view.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time between readings.
    pub interval: Duration,
    /// Where the data comes from, for the header ("local" or an address).
    pub source_label: String,
    /// Lines explaining the reduced mode (the local diagnosis).
    pub diagnosis: Vec<String>,
}

/// Why the live view could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// stdout is not a terminal.
    #[error("the live view needs a terminal on stdout (use `gupwatch --plain` for line output)")]
    NotATerminal,
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The data thread could not be started.
    #[error("cannot start the data thread: {0}")]
    Thread(std::io::Error),
}

/// One reading sent from the data thread.
struct Update {
    at: Instant,
    result: Result<(Sample, Option<gup_report::LeakReport>), String>,
    /// Whether the leak report was asked for (so `None` means "none").
    read_outstanding: bool,
}

fn spawn_reader(
    mut source: Box<dyn Source>,
    interval: Duration,
    quit: Arc<AtomicBool>,
    tx: mpsc::Sender<Update>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("gupwatch-tui-data".into()).spawn(move || {
        let mut last_outstanding: Option<Instant> = None;
        while !quit.load(Ordering::Relaxed) {
            let started = Instant::now();
            let read_outstanding = last_outstanding.is_none_or(|t| t.elapsed() >= OUTSTANDING_EVERY);
            let result = source.read(read_outstanding).map_err(|e| e.to_string());
            if read_outstanding && result.is_ok() {
                last_outstanding = Some(started);
            }
            if tx.send(Update { at: Instant::now(), result, read_outstanding }).is_err() {
                break;
            }
            // Sleep out the interval in small steps so quitting is prompt.
            let next = started + interval;
            while !quit.load(Ordering::Relaxed) {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                thread::sleep(left.min(Duration::from_millis(50)));
            }
        }
    })
}

/// Runs the live view until `q`, Ctrl-C, or `stop` (set by SIGTERM,
/// SIGINT or SIGHUP handlers), and restores the terminal in every case.
pub fn run(source: Box<dyn Source>, opts: Options, stop: &AtomicBool) -> Result<(), TuiError> {
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let quit = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let reader = spawn_reader(source, opts.interval, Arc::clone(&quit), tx).map_err(TuiError::Thread)?;
    let result = ui_loop(&rx, &opts, stop);
    quit.store(true, Ordering::Relaxed);
    // Let the data thread drop its source (detaching local probes) if it
    // can do so promptly; a remote request in flight is not waited for.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if reader.is_finished() {
        let _ = reader.join();
    }
    result
}

fn ui_loop(rx: &mpsc::Receiver<Update>, opts: &Options, stop: &AtomicBool) -> Result<(), TuiError> {
    let mut guard = term::TerminalGuard::enter()?;
    let t0 = Instant::now();
    let mut vm = ViewModel::new();
    let mut ui = UiState::new(opts.source_label.clone(), opts.interval);
    ui.diagnosis = opts.diagnosis.clone();
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(u) = rx.try_recv() {
            match u.result {
                Ok((sample, outstanding)) => {
                    ui.error = None;
                    if !ui.paused {
                        vm.ingest(sample, u.at.duration_since(t0).as_secs_f64());
                        if u.read_outstanding {
                            vm.set_outstanding(outstanding);
                        }
                    }
                }
                Err(e) => ui.error = Some(e),
            }
            dirty = true;
        }
        if dirty {
            guard.terminal.draw(|f| render::draw(f, &vm, &ui))?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                Event::Key(k) => match handle_key(&mut ui, k, &vm) {
                    Action::Quit => break,
                    Action::Redraw => dirty = true,
                    Action::None => {}
                },
                Event::Paste(text) => {
                    if let Some(edit) = &mut ui.editing {
                        edit.extend(text.chars().filter(|c| !c.is_control()).take(64));
                        ui.filter = edit.clone();
                        dirty = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::{
        input::UiState,
        render,
        sample::Mode,
        view::{
            tests::{holding, report, sample},
            View, ViewModel,
        },
    };

    fn screen(vm: &ViewModel, ui: &UiState, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render::draw(f, vm, ui)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out += buf[(x, y)].symbol();
            }
            out += "\n";
        }
        out
    }

    fn busy() -> ViewModel {
        let mut vm = ViewModel::new();
        for i in 1..=30 {
            vm.ingest(sample(i * 2), i as f64);
        }
        let fio = holding(100, "fio", "io_sqe_buffer_register", gup_report::Subsystem::IoUring, 256, 400.0);
        let leaks = vec![gup_report::Leak::of_holding(gup_report::LeakKind::LongHeld, &fio)];
        let mut r = report(Some(300), vec![fio], leaks);
        r.held_before_start = vec![gup_report::HeldBeforeStart {
            kind: gup_report::HELD_BEFORE_START.into(),
            source: "io_uring".into(),
            owner_tgid: 90,
            comm: "old".into(),
            pages: 44,
            buffers: 1,
        }];
        vm.set_outstanding(Some(r));
        vm
    }

    #[test]
    fn full_screen_at_80x24() {
        let vm = busy();
        let ui = UiState::new("local", std::time::Duration::from_secs(1));
        let s = screen(&vm, &ui, 80, 24);
        if std::env::var_os("GUPWATCH_SHOW_SCREEN").is_some() {
            eprintln!("{s}");
        }
        for want in [
            "6.12.0-test",
            "19/19 hooks",
            "gupwatch pinned     8400",
            "vmstat",
            "Processes",
            "PAGES/s▼",
            "fio",
            "io_uring",
            "direct-io",
            "Pin rate",
            "Latency · all APIs",
            "long_held",
            "held 256 · kernel 300",
            "+44 held before start",
            "q quit",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // fio: 100 pages per round, two rounds per second.
        let fio = s.lines().find(|l| l.contains(" fio ")).expect("fio row");
        assert!(fio.contains(" 200 ") && fio.contains(" 256 "), "{fio}");
        assert!(s.lines().all(|l| l.chars().count() == 80));
    }

    /// `t` turns the middle panel to hold times, then to pins per cgroup.
    #[test]
    fn hold_times_and_cgroup_panels() {
        let vm = busy();
        let mut ui = UiState::new("local", std::time::Duration::from_secs(1));
        use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let t = KeyEvent::new(KeyCode::Char('t'), KeyModifiers::NONE);
        super::input::handle_key(&mut ui, t, &vm);
        let s = screen(&vm, &ui, 120, 30);
        assert!(s.contains("Hold times · p50 p99"), "{s}");
        // 2400 pages released in the bucket that ends at 16 µs (2^14 ns).
        let line = s.lines().find(|l| l.contains("direct-io  ") && l.contains("≤")).expect("hold line");
        assert!(line.contains("≤  16µs ≤  16µs   2400p"), "{line}");
        super::input::handle_key(&mut ui, t, &vm);
        let s = screen(&vm, &ui, 120, 30);
        assert!(s.contains("Pins held · by cgroup"), "{s}");
        assert!(s.contains("6000p fio.service"), "{s}");
        super::input::handle_key(&mut ui, t, &vm);
        assert!(screen(&vm, &ui, 120, 30).contains("Latency · all APIs"));
    }

    #[test]
    fn call_sites_help_and_filter() {
        let vm = busy();
        let mut ui = UiState::new("10.0.0.1:10483", std::time::Duration::from_millis(500));
        ui.view = View::CallSites;
        ui.filter = "direct".into();
        let s = screen(&vm, &ui, 100, 30);
        assert!(s.contains("Call sites"), "{s}");
        assert!(s.contains("bio_iov_iter_get_pages"), "{s}");
        assert!(!s.contains("io_sqe_buffer_register   "), "filtered out:\n{s}");
        assert!(s.contains("10.0.0.1:10483 · 0.5s"), "{s}");
        assert!(s.contains("PAGES"), "wide terminals get the total column");
        ui.help = true;
        ui.paused = true;
        let s = screen(&vm, &ui, 80, 24);
        assert!(s.contains("gupwatch help") && s.contains("processes ⇄ call sites"), "{s}");
        assert!(s.contains("PAUSED"), "{s}");
    }

    #[test]
    fn idle_rows_are_hidden_until_i() {
        let mut vm = busy();
        let report = vm.outstanding().cloned();
        // A shell that exec'd once: its row never moves again.
        for i in 31..=35 {
            let mut s = sample(i * 2);
            s.rows.push(super::view::tests::row(300, "sh", "get_user_pages_remote", "copy_strings", "exec", 3, 3));
            vm.ingest(s, i as f64);
        }
        // The tracking map read well after the shell's exec.
        vm.set_outstanding(report);
        let mut ui = UiState::new("local", std::time::Duration::from_secs(1));
        let s = screen(&vm, &ui, 80, 24);
        if std::env::var_os("GUPWATCH_SHOW_SCREEN").is_some() {
            eprintln!("{s}");
        }
        assert!(s.contains(" · 2 rows · 1 idle hidden (i) "), "{s}");
        assert!(!s.lines().any(|l| l.contains(" sh ")), "the idle row is hidden:\n{s}");
        let footer = s.lines().last().unwrap_or_default();
        assert!(footer.contains("i idle") && footer.contains("? help"), "the footer fits 80 columns: {footer:?}");
        ui.show_idle = true;
        let s = screen(&vm, &ui, 80, 24);
        assert!(s.contains(" · 3 rows · idle shown (i) "), "{s}");
        assert!(s.lines().any(|l| l.contains(" sh ")), "{s}");
        // Only idle rows: the table says why it is empty.
        ui.show_idle = false;
        ui.filter = "sh".into();
        let s = screen(&vm, &ui, 80, 24);
        assert!(s.contains("1 idle hidden (i shows them)"), "{s}");
        ui.help = true;
        let s = screen(&vm, &ui, 80, 24);
        assert!(s.contains("show/hide idle rows"), "{s}");
    }

    #[test]
    fn reduced_mode_screen_explains() {
        let mut vm = ViewModel::new();
        let reduced = |acq| super::sample::Sample {
            mode: Mode::Reduced,
            totals: None,
            apis: vec![],
            rows: vec![],
            hooks_attached: 0,
            kernel_counters: Some((acq, acq - 10)),
            accounted: Some(gup_report::Accounted {
                source: crate::model::accounted::SOURCE.into(),
                holders: vec![gup_report::Holder {
                    pid: 201,
                    comm: "aa-holder".into(),
                    pinned_bytes: 1 << 20,
                    pinned_pages: 256,
                    vm_pin_bytes: 0,
                    locked_bytes: 0,
                    io_uring_buffers: 1,
                    io_uring_bytes: 1 << 20,
                    io_uring_pages: 256,
                }],
                processes: 40,
                fds: 0,
                unreadable: 0,
                truncated: false,
            }),
            ..sample(0)
        };
        vm.ingest(reduced(1000), 0.0);
        vm.ingest(reduced(3000), 1.0);
        let mut ui = UiState::new("local", std::time::Duration::from_secs(1));
        ui.diagnosis = vec![
            "  [ ok ] privileges     running as root".into(),
            "  [FAIL] kprobes        the kernel is built without CONFIG_KPROBES".into(),
            "                        fix: use a kernel with CONFIG_KPROBES=y".into(),
        ];
        let s = screen(&vm, &ui, 80, 24);
        if std::env::var_os("GUPWATCH_SHOW_SCREEN").is_some() {
            eprintln!("{s}");
        }
        for want in ["0/19 hooks", "reduced mode", "Reduced mode", "[FAIL] kprobes", "CONFIG_KPROBES", "acquired   3000 released   2990 held     10", "2000/s", "pins acquired (vmstat)", "Accounted pinned memory", "not traced", "1 holders"] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("privileges"), "only failed checks are shown:\n{s}");
        let holder = s.lines().find(|l| l.contains("aa-holder")).unwrap_or_else(|| panic!("no holder row in\n{s}"));
        assert_eq!(holder.split_whitespace().collect::<Vec<_>>(), ["201", "aa-holder", "256", "0", "0", "1", "256"], "{s}");
    }

    #[test]
    fn refs_are_shown_whole_or_not_at_all() {
        let mut vm = ViewModel::new();
        for i in 1..=3u64 {
            let mut s = sample(i * 2);
            if let Some(t) = s.totals.as_mut() {
                t.referenced_pages = 12_345 * i;
            }
            vm.ingest(s, i as f64);
        }
        let ui = UiState::new("local", std::time::Duration::from_secs(1));
        // At 80 columns the counts fill the line: a cut " refs" read "re".
        let narrow = screen(&vm, &ui, 80, 24);
        let line = narrow.lines().nth(1).unwrap_or_default().trim_end().to_string();
        assert!(line.ends_with("err 0"), "{line:?}");
        let wide = screen(&vm, &ui, 100, 24);
        assert!(wide.lines().nth(1).unwrap_or_default().contains(" refs 37.0k"), "{wide}");
    }

    #[test]
    fn tiny_and_empty_terminals_do_not_panic() {
        let vm = busy();
        let ui = UiState::new("local", std::time::Duration::from_secs(1));
        for (w, h) in [(20, 5), (80, 10), (1, 1), (200, 60)] {
            screen(&vm, &ui, w, h);
        }
        let s = screen(&ViewModel::new(), &ui, 80, 24);
        assert!(s.contains("waiting for the first reading"), "{s}");
    }
}
