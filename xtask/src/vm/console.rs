//! Reading the guest console: lines, init's markers and kernel problems.

use std::collections::VecDeque;

use crate::vm::initramfs::Markers;

/// A kernel console line that means the run must fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which pattern matched.
    pub kind: &'static str,
    /// The console line.
    pub line: String,
}

const PROBLEM_PATTERNS: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("WARNING:", "kernel WARNING"),
    ("BUG:", "kernel BUG"),
    ("soft lockup", "soft lockup"),
    ("hard LOCKUP", "hard lockup"),
    ("self-detected stall", "RCU stall"),
    ("detected stalls on CPU", "RCU stall"),
    ("RCU stall", "RCU stall"),
    ("Oops", "kernel Oops"),
    ("general protection fault", "general protection fault"),
    ("blocked for more than", "hung task"),
];

/// The message part of a kernel console line (`[    1.234567] text`), or
/// `None` for lines that do not come from printk. Only kernel lines are
/// checked for problems, so a command printing "WARNING:" on stderr does not
/// fail the run.
pub fn kernel_message(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = line[from..].find('[') {
        let start = from + i;
        let rest = &line[start + 1..];
        let trimmed = rest.trim_start_matches(' ');
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        let after = &trimmed[digits..];
        if digits > 0 {
            if let Some(frac) = after.strip_prefix('.') {
                let fd = frac.bytes().take_while(u8::is_ascii_digit).count();
                if fd > 0 {
                    if let Some(msg) = frac[fd..].strip_prefix(']') {
                        return Some(msg.strip_prefix(' ').unwrap_or(msg));
                    }
                }
            }
        }
        from = start + 1;
    }
    None
}

/// Which problem, if any, a console line reports.
pub fn kernel_problem(line: &str) -> Option<&'static str> {
    let msg = kernel_message(line)?;
    PROBLEM_PATTERNS
        .iter()
        .find(|(p, _)| msg.contains(p))
        .map(|(_, kind)| *kind)
}

/// Removes carriage returns and terminal escape sequences (SeaBIOS clears
/// the screen, which would wipe the user's terminal when echoed).
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            // CSI sequences run to a final byte in '@'..='~'; other escapes
            // (such as ESC c, reset) are two characters long.
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits the console stream into lines and watches for markers and
/// kernel problems.
#[derive(Debug)]
pub struct ConsoleScanner {
    markers: Markers,
    partial: Vec<u8>,
    /// /init has printed its start marker.
    pub started: bool,
    /// The command's exit status, once the exit marker was seen.
    pub exit: Option<i32>,
    /// Kernel problems seen so far.
    pub problems: Vec<Problem>,
    tail: VecDeque<String>,
}

impl ConsoleScanner {
    /// A scanner for one run's markers.
    pub fn new(markers: Markers) -> Self {
        ConsoleScanner {
            markers,
            partial: Vec::new(),
            started: false,
            exit: None,
            problems: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    /// Feeds raw console bytes; returns the complete lines they finished
    /// (without line terminators).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let raw = std::mem::take(&mut self.partial);
                lines.push(self.line(&raw));
            } else {
                self.partial.push(b);
            }
        }
        lines
    }

    /// Flushes an unterminated last line.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let raw = std::mem::take(&mut self.partial);
        Some(self.line(&raw))
    }

    fn line(&mut self, raw: &[u8]) -> String {
        let text = strip_escapes(&String::from_utf8_lossy(raw));
        if text.contains(&self.markers.start) {
            self.started = true;
        }
        if let Some(status) = self.markers.exit_status(&text) {
            self.exit = Some(status);
        }
        if let Some(kind) = kernel_problem(&text) {
            self.problems.push(Problem {
                kind,
                line: text.clone(),
            });
        }
        self.tail.push_back(text.clone());
        if self.tail.len() > 25 {
            self.tail.pop_front();
        }
        text
    }

    /// The last console lines, for error messages.
    pub fn tail(&self) -> String {
        self.tail.iter().map(|l| format!("    | {l}\n")).collect()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines() {
        assert_eq!(kernel_message("[    1.234567] hello"), Some("hello"));
        assert_eq!(kernel_message("[12345.000001] x"), Some("x"));
        assert_eq!(
            kernel_message("garbage[    0.000000] Linux version"),
            Some("Linux version")
        );
        assert_eq!(kernel_message("[ok] not a timestamp"), None);
        assert_eq!(kernel_message("plain stderr line"), None);
        assert_eq!(kernel_message("[   1.5"), None);
    }

    #[test]
    fn problems_detected() {
        let bad = [
            ("[   12.345678] WARNING: CPU: 1 PID: 80 at mm/gup.c:123 try_grab_folio+0x1/0x2", "kernel WARNING"),
            ("[    3.100000] WARNING: test", "kernel WARNING"),
            ("[    5.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008", "kernel BUG"),
            ("[    5.000000] Oops: 0002 [#1] PREEMPT SMP NOPTI", "kernel Oops"),
            ("[    9.000000] Kernel panic - not syncing: Attempted to kill init!", "kernel panic"),
            ("[   44.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", "kernel BUG"),
            ("[   60.000000] rcu: INFO: rcu_sched self-detected stall on CPU", "RCU stall"),
            ("[   60.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
            ("[    7.000000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", "general protection fault"),
            ("[  240.000000] INFO: task sh:1 blocked for more than 120 seconds.", "hung task"),
        ];
        for (line, kind) in bad {
            assert_eq!(kernel_problem(line), Some(kind), "{line}");
        }
        let fine = [
            "[    0.000000] Linux version 6.12.117+deb13-cloud-amd64",
            "[    0.100000] MDS: Vulnerable: Clear CPU buffers attempted, no microcode",
            "[    1.000000] x86/fpu: Supporting XSAVE feature 0x001",
            "WARNING: printed by a command on stderr",
            "gupwatch: BUG: not a kernel line",
            "[    2.000000] clocksource: Switched to clocksource tsc",
        ];
        for line in fine {
            assert_eq!(kernel_problem(line), None, "{line}");
        }
    }

    #[test]
    fn scanner_markers_lines_and_tail() {
        let mut s = ConsoleScanner::new(Markers::new("tok"));
        let lines = s.feed(b"[    0.1] boot\r\n@@gupwatch-init-");
        assert_eq!(lines, vec!["[    0.1] boot"]);
        assert!(!s.started);
        s.feed(b"start:tok@@\r\n[    3.000000] WARNING: test\r\n");
        assert!(s.started);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].line, "[    3.000000] WARNING: test");
        s.feed(b"@@gupwatch-exit:tok:3@@");
        assert_eq!(s.exit, None, "no newline yet");
        assert_eq!(s.finish().as_deref(), Some("@@gupwatch-exit:tok:3@@"));
        assert_eq!(s.exit, Some(3));
        assert!(s.tail().contains("    | [    3.000000] WARNING: test\n"));
    }

    #[test]
    fn scanner_ignores_other_tokens() {
        let mut s = ConsoleScanner::new(Markers::new("mine"));
        s.feed(b"@@gupwatch-init-start:other@@\n@@gupwatch-exit:other:0@@\n");
        assert!(!s.started);
        assert_eq!(s.exit, None);
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(
            strip_escapes("plain [    1.0] text"),
            "plain [    1.0] text"
        );
        assert_eq!(strip_escapes("tail\u{1b}"), "tail");
    }

}
