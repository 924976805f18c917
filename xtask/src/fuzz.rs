//! `cargo xtask fuzz`, and the bounded fuzzing step of `cargo xtask test`:
//! every cargo-fuzz target in `fuzz/` for a few seconds each, through
//! `fuzz/run.sh` (which people also run by hand for long sessions).
//!
//! The fuzz build lives in the cache (`~/.cache/gupwatch/fuzz-target`), not
//! in `fuzz/target`: a clean checkout (CI) then rebuilds only what changed.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::say;
use crate::util;

/// Options of a fuzzing run.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// Seconds per target.
    pub seconds: u32,
    /// Targets to run (all when empty).
    pub targets: Vec<String>,
    /// `address` (AddressSanitizer) or `none`.
    pub sanitizer: String,
}

/// What `fuzz/run.sh` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzTally {
    /// Targets that ran their time without a crash.
    pub passed: u32,
    /// Targets that crashed (inputs left in `fuzz/artifacts/<target>/`).
    pub failed: u32,
}

/// Runs the targets; the tally comes from the script's closing
/// `N passed, N failed` line, so a script that dies early is an error, not
/// a pass.
pub fn run(o: &FuzzOptions) -> Result<FuzzTally> {
    let root = util::workspace_root();
    let target_dir = util::cache_dir()?.join("fuzz-target");
    say!(
        "fuzz",
        "{} s per target, sanitizer {}, build in {}",
        o.seconds,
        o.sanitizer,
        target_dir.display()
    );
    let out = Command::new("bash")
        .arg(root.join("fuzz/run.sh"))
        .arg(o.seconds.to_string())
        .args(&o.targets)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("FUZZ_SANITIZER", &o.sanitizer)
        // The script's progress goes to stderr, straight to the terminal.
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start bash fuzz/run.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    match parse_tally(&stdout) {
        Some(t) => Ok(t),
        None => bail!(
            "fuzz/run.sh ended ({}) without its `N passed, N failed` line: the build or cargo-fuzz failed (see above)",
            out.status
        ),
    }
}

/// The last `N passed, N failed` line.
pub fn parse_tally(stdout: &str) -> Option<FuzzTally> {
    stdout.lines().rev().find_map(|l| {
        let (p, f) = l.trim().split_once(", ")?;
        Some(FuzzTally {
            passed: p.strip_suffix(" passed")?.parse().ok()?,
            failed: f.strip_suffix(" failed")?.parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_is_read_from_the_closing_line() {
        let out = "noise\n9 passed, 0 failed\n";
        assert_eq!(parse_tally(out), Some(FuzzTally { passed: 9, failed: 0 }));
        assert_eq!(parse_tally("8 passed, 1 failed"), Some(FuzzTally { passed: 8, failed: 1 }));
        assert_eq!(parse_tally("building\n"), None);
        assert_eq!(parse_tally("x passed, 0 failed"), None);
    }
}
