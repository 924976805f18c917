//! What the person at the keyboard chose (view, sort, filter, pause...)
//! and how keys change it. Pure: a key and the state in, the new state
//! and an [`Action`] out.

use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::view::{SortKey, View, ViewModel};

/// The interface state.
#[derive(Clone, Debug)]
pub struct UiState {
    /// Processes or call sites.
    pub view: View,
    /// The sort column.
    pub sort: SortKey,
    /// Largest first.
    pub descending: bool,
    /// The applied filter (case-blind substring).
    pub filter: String,
    /// The filter being typed, if `/` was pressed; it applies live, and Esc
    /// restores `filter_before`.
    pub editing: Option<String>,
    filter_before: String,
    /// New readings are not shown.
    pub paused: bool,
    /// The help overlay is open.
    pub help: bool,
    /// Idle rows (no calls in the last interval, nothing held) are listed
    /// too. Off by default: every exec leaves such a row behind, and they
    /// would push the busy processes off the screen.
    pub show_idle: bool,
    /// The latency histogram's API (`None`: all).
    pub latency_api: Option<String>,
    /// What the middle panel shows.
    pub panel: Panel,
    /// Where the data comes from ("local", or the daemon's address).
    pub source: String,
    /// Time between readings.
    pub interval: Duration,
    /// The last error reading data, shown in the footer until a reading
    /// succeeds.
    pub error: Option<String>,
    /// Lines explaining the reduced mode (the local diagnosis).
    pub diagnosis: Vec<String>,
}

impl UiState {
    /// The initial state.
    pub fn new(source: impl Into<String>, interval: Duration) -> UiState {
        UiState {
            view: View::Processes,
            sort: SortKey::PagesPerSec,
            descending: true,
            filter: String::new(),
            editing: None,
            filter_before: String::new(),
            paused: false,
            help: false,
            show_idle: false,
            latency_api: None,
            panel: Panel::Latency,
            source: source.into(),
            interval,
            error: None,
            diagnosis: vec![],
        }
    }
}

/// The middle panel of the bottom row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    /// Call latency of one API or all.
    Latency,
    /// Pin hold times per subsystem and LONGTERM.
    HoldTimes,
    /// Pins held per cgroup.
    Cgroups,
}

impl Panel {
    /// The panel `t` switches to.
    pub fn next(self) -> Panel {
        match self {
            Panel::Latency => Panel::HoldTimes,
            Panel::HoldTimes => Panel::Cgroups,
            Panel::Cgroups => Panel::Latency,
        }
    }
}

/// What the loop should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// Draw again.
    Redraw,
    /// Leave.
    Quit,
}

/// Applies one key.
pub fn handle_key(ui: &mut UiState, key: KeyEvent, vm: &ViewModel) -> Action {
    // Key repeat and release events (kitty protocol) are not presses.
    if key.kind != KeyEventKind::Press {
        return Action::None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
        return Action::Quit;
    }
    if let Some(edit) = &mut ui.editing {
        match key.code {
            KeyCode::Enter => {
                ui.filter = edit.trim().to_string();
                ui.editing = None;
            }
            KeyCode::Esc => {
                ui.filter = ui.filter_before.clone();
                ui.editing = None;
            }
            KeyCode::Backspace => {
                edit.pop();
                ui.filter = edit.clone();
            }
            KeyCode::Char(c) if !c.is_control() && edit.chars().count() < 64 => {
                edit.push(c);
                ui.filter = edit.clone();
            }
            _ => return Action::None,
        }
        return Action::Redraw;
    }
    if ui.help {
        // Any key closes the help; q still quits.
        ui.help = false;
        return if key.code == KeyCode::Char('q') { Action::Quit } else { Action::Redraw };
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Char('Q') => return Action::Quit,
        KeyCode::Esc if !ui.filter.is_empty() => ui.filter.clear(),
        KeyCode::Char('v') | KeyCode::Tab => ui.view = ui.view.toggle(),
        KeyCode::Char('s') => {
            ui.sort = ui.sort.next();
            ui.descending = ui.sort.default_descending();
        }
        KeyCode::Char('S') => ui.descending = !ui.descending,
        KeyCode::Char('/') => {
            ui.filter_before = ui.filter.clone();
            ui.editing = Some(ui.filter.clone());
        }
        KeyCode::Char('p') | KeyCode::Char(' ') => ui.paused = !ui.paused,
        KeyCode::Char('i') | KeyCode::Char('I') => ui.show_idle = !ui.show_idle,
        KeyCode::Char('t') | KeyCode::Char('T') => ui.panel = ui.panel.next(),
        KeyCode::Char('?') | KeyCode::Char('h') => ui.help = true,
        KeyCode::Char('a') | KeyCode::Char('A') => {
            let apis = vm.latency_apis();
            let pos = ui.latency_api.as_ref().and_then(|a| apis.iter().position(|x| x == a));
            // Cycle: all, then each API with data, then all again.
            let n = apis.len() as isize + 1;
            let cur = pos.map_or(0, |p| p as isize + 1);
            let step = if key.code == KeyCode::Char('a') { 1 } else { -1 };
            let next = (cur + step).rem_euclid(n);
            ui.latency_api = (next > 0).then(|| apis[next as usize - 1].clone());
        }
        _ => return Action::None,
    }
    Action::Redraw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view::tests::sample;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn keys_change_the_state() {
        let mut vm = ViewModel::new();
        vm.ingest(sample(1), 0.0);
        let mut ui = UiState::new("local", Duration::from_secs(1));
        assert_eq!(handle_key(&mut ui, key('v'), &vm), Action::Redraw);
        assert_eq!(ui.view, View::CallSites);
        handle_key(&mut ui, key('s'), &vm);
        assert_eq!((ui.sort, ui.descending), (SortKey::PinsPerSec, true));
        handle_key(&mut ui, key('S'), &vm);
        assert!(!ui.descending);
        for _ in 0..5 {
            handle_key(&mut ui, key('s'), &vm);
        }
        assert_eq!((ui.sort, ui.descending), (SortKey::Name, false), "names sort A-Z");
        handle_key(&mut ui, key('p'), &vm);
        assert!(ui.paused);
        assert!(!ui.show_idle, "idle rows are hidden by default");
        assert_eq!(handle_key(&mut ui, key('i'), &vm), Action::Redraw);
        assert!(ui.show_idle);
        handle_key(&mut ui, key('i'), &vm);
        assert!(!ui.show_idle, "i toggles back");
        handle_key(&mut ui, key('?'), &vm);
        assert!(ui.help);
        assert_eq!(handle_key(&mut ui, key('x'), &vm), Action::Redraw);
        assert!(!ui.help, "any key closes the help");
        assert_eq!(handle_key(&mut ui, key('q'), &vm), Action::Quit);
        assert_eq!(handle_key(&mut ui, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &vm), Action::Quit);
    }

    #[test]
    fn filter_typing_applies_live_and_esc_restores() {
        let vm = ViewModel::new();
        let mut ui = UiState::new("local", Duration::from_secs(1));
        handle_key(&mut ui, key('/'), &vm);
        for c in "fio".chars() {
            handle_key(&mut ui, key(c), &vm);
        }
        assert_eq!(ui.filter, "fio");
        assert_eq!(handle_key(&mut ui, key('q'), &vm), Action::Redraw, "q is text while typing");
        handle_key(&mut ui, code(KeyCode::Backspace), &vm);
        handle_key(&mut ui, code(KeyCode::Enter), &vm);
        assert_eq!((ui.filter.as_str(), ui.editing.is_none()), ("fio", true));
        handle_key(&mut ui, key('/'), &vm);
        handle_key(&mut ui, key('x'), &vm);
        assert_eq!(ui.filter, "fiox");
        handle_key(&mut ui, code(KeyCode::Esc), &vm);
        assert_eq!(ui.filter, "fio", "Esc restores the filter in force");
        handle_key(&mut ui, code(KeyCode::Esc), &vm);
        assert_eq!(ui.filter, "", "Esc again clears it");
    }

    #[test]
    fn latency_api_cycles_through_apis_with_data() {
        let mut vm = ViewModel::new();
        vm.ingest(sample(10), 0.0);
        let mut ui = UiState::new("local", Duration::from_secs(1));
        let mut seen = vec![];
        for _ in 0..4 {
            handle_key(&mut ui, key('a'), &vm);
            seen.push(ui.latency_api.clone());
        }
        assert_eq!(
            seen,
            [Some("pin_user_pages_fast".to_string()), Some("pin_user_pages".into()), Some("unpin_user_pages".into()), None]
        );
        handle_key(&mut ui, key('A'), &vm);
        assert_eq!(ui.latency_api.as_deref(), Some("unpin_user_pages"));
    }
}
