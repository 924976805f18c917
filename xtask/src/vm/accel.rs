//! Choosing the accelerator: KVM when /dev/kvm works, TCG otherwise, and a
//! remembered KVM failure so that later runs do not wait for it again.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::Accel;
use crate::say;
use crate::util;

/// How long a KVM failure is remembered, so later runs go straight to TCG.
const KVM_VERDICT_TTL: u64 = 24 * 3600;

fn kvm_verdict_path() -> Option<PathBuf> {
    util::cache_dir().ok().map(|c| c.join("kvm-verdict"))
}

/// Accelerators to try, in order.
pub(super) fn choose_accels(tag: &str) -> Result<Vec<Accel>> {
    match std::env::var("GUPWATCH_VM_ACCEL")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("kvm") => return Ok(vec![Accel::Kvm]),
        Some("tcg") => return Ok(vec![Accel::Tcg]),
        Some("") | None => {}
        Some(other) => bail!("GUPWATCH_VM_ACCEL={other}: expected `kvm` or `tcg`"),
    }
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(vec![Accel::Tcg]);
    }
    if let Some(path) = kvm_verdict_path() {
        if let Ok(text) = fs::read_to_string(&path) {
            if let Some(age) = parse_verdict(&text, util::unix_now()) {
                if age < KVM_VERDICT_TTL {
                    say!(
                        tag,
                        "using TCG: KVM failed here {} min ago (remembered in {}; GUPWATCH_VM_ACCEL=kvm forces a retry)",
                        age / 60,
                        path.display()
                    );
                    return Ok(vec![Accel::Tcg]);
                }
            }
        }
    }
    Ok(vec![Accel::Kvm, Accel::Tcg])
}

/// Age in seconds of a remembered KVM failure (`broken <unix time>`).
fn parse_verdict(text: &str, now: u64) -> Option<u64> {
    let mut words = text.split_whitespace();
    if words.next()? != "broken" {
        return None;
    }
    let at: u64 = words.next()?.parse().ok()?;
    Some(now.saturating_sub(at))
}

pub(super) fn remember_kvm(ok: bool) {
    if let Some(path) = kvm_verdict_path() {
        if ok {
            let _ = fs::remove_file(&path);
        } else {
            let _ = fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
            let _ = fs::write(&path, format!("broken {}\n", util::unix_now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict("broken 1000\n", 1600), Some(600));
        assert_eq!(parse_verdict("ok 1000", 1600), None);
        assert_eq!(parse_verdict("broken x", 1600), None);
        assert_eq!(parse_verdict("", 1600), None);
    }
}
