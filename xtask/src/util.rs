//! Small helpers shared by every subcommand: where things live, running
//! external programs with useful error messages, progress lines, signals.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Prints a progress line on stderr, prefixed with the step's tag:
/// `say!("setup", "fetching {}", x)` prints `[setup] fetching ...`.
///
/// Progress goes to stderr so that stdout stays reserved for data
/// (`cargo xtask vm` prints exactly the guest command's stdout there).
#[macro_export]
macro_rules! say {
    ($tag:expr, $($arg:tt)*) => {
        eprintln!("[{}] {}", $tag, format!($($arg)*))
    };
}

/// The root of the cargo workspace (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory for this workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The persistent download/build cache: `$GUPWATCH_CACHE`, else
/// `$XDG_CACHE_HOME/gupwatch`, else `~/.cache/gupwatch`.
///
/// It lives outside the work tree because bpf-linker keeps an rpath into it
/// and the kernels are large and slow to fetch.
pub fn cache_dir() -> Result<PathBuf> {
    cache_dir_from(
        std::env::var_os("GUPWATCH_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn cache_dir_from(
    explicit: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    if let Some(dir) = explicit.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = xdg.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("gupwatch"));
    }
    if let Some(home) = home.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(home).join(".cache").join("gupwatch"));
    }
    bail!("cannot choose a cache directory: set GUPWATCH_CACHE (or HOME) to a writable directory")
}

/// The `cargo` that is running us (so nested builds use the same toolchain).
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Renders a command line for messages.
pub fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let a = arg.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// One verdict of a test step (the canary, i915, mm selftests, hostile
/// clients): what was checked, whether it held, what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// Runs a command with inherited stdio and fails, naming the command, if it
/// cannot be started or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display_cmd(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command, captures stdout and stderr, and fails (quoting stderr) if
/// it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = raw_output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            display_cmd(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8", display_cmd(cmd)))
}

/// The trimmed, non-empty lines a command prints on stdout; none when it
/// cannot start or fails (for asking the host, where a built-in default
/// stands in for no answer).
pub fn output_lines(cmd: &mut Command) -> Vec<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a command capturing its output, only failing if it cannot start.
pub fn raw_output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null());
    cmd.output().with_context(|| {
        format!(
            "could not start `{}` (is it installed and on PATH?)",
            display_cmd(cmd)
        )
    })
}

/// Whether a program can be found on PATH (or is an existing path).
pub fn have_program(name: impl AsRef<OsStr>) -> bool {
    let name = name.as_ref();
    if Path::new(name).components().count() > 1 {
        return Path::new(name).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A UTC timestamp usable in file names, e.g. `20261129-153301`.
pub fn timestamp() -> String {
    format_timestamp(unix_now())
}

fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar),
/// so that log names are readable without pulling in a date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A hard-to-guess token, different for every call, for marker lines and
/// temporary names.
pub fn nonce() -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser: spreads the bits so tokens look unrelated.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("{x:016x}")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GUEST_ACTIVE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    if GUEST_ACTIVE.load(Ordering::SeqCst) {
        // The VM runner polls this flag, kills qemu and removes its files.
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // Nothing of ours to clean up: leave like the default action would,
        // but with the conventional status.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Installs SIGINT/SIGTERM handlers so that a running guest can be torn down
/// cleanly. Child processes other than qemu share our process group and get
/// the terminal's Ctrl-C themselves.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches atomics or calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C (or SIGTERM) arrived while a guest was running.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Marks that a guest is running (so signals are deferred to the runner),
/// until the returned guard is dropped.
pub fn guest_active() -> GuestActive {
    GUEST_ACTIVE.store(true, Ordering::SeqCst);
    GuestActive(())
}

/// See [`guest_active`].
pub struct GuestActive(());

impl Drop for GuestActive {
    fn drop(&mut self) {
        GUEST_ACTIVE.store(false, Ordering::SeqCst);
    }
}

/// The error returned when the user interrupted a run; `main` maps it to
/// exit status 130.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The first line of a per-kernel report: `kernel LABEL: N s`, then the
/// console log's path when there is one.
pub fn kernel_heading(label: &str, elapsed: Duration, console_log: Option<&Path>) -> String {
    let mut s = format!("kernel {label}: {:.0} s", elapsed.as_secs_f64());
    if let Some(log) = console_log {
        s += &format!("; console log: {}", log.display());
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(format_timestamp(0), "19700101-000000");
        // 2026-11-29 15:33:01 UTC
        assert_eq!(format_timestamp(1_795_966_381), "20261129-153301");
        // Leap day.
        assert_eq!(format_timestamp(951_782_400), "20000229-000000");
    }

    #[test]
    fn cache_dir_precedence() {
        let p = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            cache_dir_from(p("/c"), p("/x"), p("/h")).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(p(""), p("/x"), p("/h")).unwrap(),
            PathBuf::from("/x/gupwatch")
        );
        assert_eq!(
            cache_dir_from(None, None, p("/h")).unwrap(),
            PathBuf::from("/h/.cache/gupwatch")
        );
        assert!(cache_dir_from(None, None, None).is_err());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 16);
    }

    #[test]
    fn display_quotes_spaces() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo hi", "it's"]);
        assert_eq!(display_cmd(&c), "sh -c 'echo hi' 'it'\\''s'");
    }
}
