//! A panic, reported like an error: one line on stderr naming the command,
//! the kernel release and what to do (`gupwatch doctor`, report the bug),
//! then exit status 70 (EX_SOFTWARE, from sysexits.h: an internal error).
//! The panic's location and a backtrace follow only when `RUST_BACKTRACE`
//! asks for them (as Rust's own hook does, with `0` meaning no).
//!
//! Issue 21: on Debian's 7.3-rc7, aya 0.13 panicked inside gupwatch, and
//! the user saw a Rust panic message and exit status 101, with nothing to
//! say it was gupwatch's bug or what to do.
//!
//! The binary installs the hook first ([`install`]), records the command
//! once its arguments are parsed ([`set_command`]), and turns a panic that
//! unwinds out of the command into [`EX_SOFTWARE`] (`main` catches it, so
//! destructors run: probes detach, the terminal is restored). A panic in
//! another thread gets the same line; whoever joins that thread decides.
//!
//! # Test trigger (hidden, for tests only)
//!
//! `GUPWATCH_TEST_PANIC=1` makes any gupwatch command panic right after
//! its arguments are parsed ([`test_trigger`]), so the crash report can be
//! tested end to end (gup-user/tests/panic_report.rs). It is not in
//! `--help`: nothing else needs it.

use std::{
    io::Write,
    sync::{Mutex, Once},
};

/// EX_SOFTWARE (sysexits.h): the exit status after a panic.
pub const EX_SOFTWARE: u8 = 70;

/// The environment variable of the test trigger (see the module docs).
pub const TEST_PANIC_ENV: &str = "GUPWATCH_TEST_PANIC";

/// Longest panic message on the one line; the whole message is printed
/// with the details.
const MESSAGE_MAX: usize = 160;

static COMMAND: Mutex<Option<String>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Records the command for the report: the subcommand's name, `None` for
/// the live view (plain `gupwatch`).
pub fn set_command(subcommand: Option<&str>) {
    let name = match subcommand {
        Some(s) => format!("gupwatch {s}"),
        None => "gupwatch".to_string(),
    };
    if let Ok(mut c) = COMMAND.lock() {
        *c = Some(name);
    }
}

/// Panics when [`TEST_PANIC_ENV`] is `1` (see the module docs).
pub fn test_trigger() {
    if std::env::var_os(TEST_PANIC_ENV).is_some_and(|v| v == "1") {
        panic!("deliberate panic ({TEST_PANIC_ENV}=1)");
    }
}

/// Whether `RUST_BACKTRACE` asks for details (set, and not `0`).
pub fn details_wanted(rust_backtrace: Option<&str>) -> bool {
    rust_backtrace.is_some_and(|v| v != "0")
}

/// The one line (pure, for tests). `thread` is set for a thread other than
/// the main one.
pub fn one_line(command: &str, release: &str, message: &str, thread: Option<&str>, details: bool) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    let short = match first.char_indices().nth(MESSAGE_MAX) {
        Some((at, _)) => format!("{}...", &first[..at]),
        None => first.to_string(),
    };
    let short = if short.is_empty() { "panic".to_string() } else { short };
    let place = match thread {
        Some(t) => format!("thread `{t}` of `{command}`"),
        None => format!("`{command}`"),
    };
    format!(
        "gupwatch: internal error in {place} on kernel {release}: {short}. This is a bug in gupwatch: run \
         `gupwatch doctor` and report it with that output{}",
        if details { "" } else { " (RUST_BACKTRACE=1 adds where and a backtrace)" }
    )
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Installs the hook, replacing Rust's default message (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let command = COMMAND
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_else(|| "gupwatch".to_string());
            let message = payload_text(info.payload());
            let current = std::thread::current();
            let thread = match current.name() {
                Some("main") => None,
                Some(name) => Some(name.to_string()),
                None => Some(format!("{:?}", current.id())),
            };
            let details = details_wanted(std::env::var("RUST_BACKTRACE").ok().as_deref());
            let line = one_line(&command, &crate::kernel::version::release(), &message, thread.as_deref(), details);
            // Written whole, and never panicking again (a closed stderr
            // must not turn the report into an abort).
            let mut text = format!("{line}\n");
            if details {
                let at = info.location().map_or_else(|| "an unknown place".to_string(), |l| l.to_string());
                text += &format!(
                    "details: panicked at {at}:\n{message}\nbacktrace:\n{}\n",
                    std::backtrace::Backtrace::force_capture()
                );
            }
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_command_kernel_and_doctor() {
        let l = one_line(
            "gupwatch check",
            "7.3-cloud-amd64",
            "called `Result::unwrap()` on an `Err` value: ParseError(\"7.3~rc7-1~exp1 (2026-10-16)\")",
            None,
            false,
        );
        assert!(l.starts_with("gupwatch: internal error in `gupwatch check` on kernel 7.3-cloud-amd64: called"), "{l}");
        assert!(l.contains("run `gupwatch doctor`") && l.contains("RUST_BACKTRACE=1"), "{l}");
        assert!(!l.contains('\n'));
        let t = one_line("gupwatch run", "6.1.0-50-cloud-amd64", "boom", Some("gupwatch-http"), true);
        assert!(t.contains("in thread `gupwatch-http` of `gupwatch run`") && !t.contains("RUST_BACKTRACE"), "{t}");
    }

    #[test]
    fn long_and_multiline_messages_are_cut() {
        let long = format!("{}\nsecond line", "é".repeat(1000));
        let l = one_line("gupwatch", "r", &long, None, false);
        assert!(!l.contains('\n') && !l.contains("second line"), "{l}");
        assert!(l.chars().count() < 400, "{}", l.len());
        assert!(one_line("gupwatch", "r", "", None, false).contains(": panic."));
    }

    #[test]
    fn rust_backtrace_semantics() {
        assert!(!details_wanted(None));
        assert!(!details_wanted(Some("0")));
        assert!(details_wanted(Some("1")));
        assert!(details_wanted(Some("full")));
    }
}
