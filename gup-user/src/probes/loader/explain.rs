//! Explaining refusals: an attach error as one line, with the verifier's
//! last words and its whole log saved to a file; kprobe misses from fdinfo.

use aya::programs::ProgramError;

/// One line for an attach error, with the verifier log's last lines when
/// the verifier said no. The whole log is saved to a file the line names.
pub(crate) fn describe(e: &ProgramError, what: &str) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let saved = save_verifier_log(what, &log);
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| {
                    let l = l.trim();
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .rev()
                .take(3)
                .collect();
            if tail.is_empty() {
                format!("program load refused: {io_error}")
            } else {
                format!(
                    "verifier refused the program: {io_error}: {}{saved}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s += &format!(": {e}");
                src = e.source();
            }
            s
        }
    }
}

/// Writes a verifier log to `$GUPWATCH_LOG_DIR` (default: the temp dir)
/// and returns " (full log: PATH)", or "" if it could not be written.
pub(super) fn save_verifier_log(what: &str, log: &str) -> String {
    if log.trim().is_empty() {
        return String::new();
    }
    let dir = std::env::var_os("GUPWATCH_LOG_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("gupwatch-verifier-{what}.log"));
    match std::fs::write(&path, log) {
        Ok(()) => format!(" (full verifier log: {})", path.display()),
        Err(_) => String::new(),
    }
}

/// The `recursion_misses:` field of a BPF program's fdinfo.
pub(super) fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo_field(fdinfo, "recursion_misses:")
}

/// A numeric field of an fdinfo file.
pub(super) fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
}
