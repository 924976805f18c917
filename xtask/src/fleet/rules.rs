//! The fleet's copy of `alerts.yml`: the same rules with every `for:`
//! shortened, so that an alert whose condition holds reaches `firing`
//! within the test (the real durations are ten minutes and more).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The `for:` of every alert in the fleet's copy: shorter than one
/// evaluation interval, so an alert fires at the evaluation after the one
/// that made it pending.
pub(crate) const FLEET_FOR: &str = "1s";

/// `alerts.yml` with each `for:` value replaced by `dur`; every other line
/// (expressions, labels, annotations, comments) byte for byte the same.
pub(crate) fn shorten_for(yaml: &str, dur: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let indent = &body[..body.len() - body.trim_start().len()];
        if body.trim_start().starts_with("for: ") {
            out.push_str(indent);
            out.push_str("for: ");
            out.push_str(dur);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Writes the shortened copy of `alerts` into `dir` and returns its path.
pub(crate) fn write_fast_alerts(alerts: &Path, dir: &Path) -> Result<PathBuf> {
    let text = fs::read_to_string(alerts).with_context(|| format!("reading {}", alerts.display()))?;
    let path = dir.join("alerts-fleet.yml");
    fs::write(&path, shorten_for(&text, FLEET_FOR)).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util;

    #[test]
    fn only_the_for_durations_change() {
        let y = fs::read_to_string(util::workspace_root().join("dashboards/prometheus/alerts.yml")).unwrap();
        let fast = shorten_for(&y, FLEET_FOR);
        let (a, b): (Vec<&str>, Vec<&str>) = (y.split('\n').collect(), fast.split('\n').collect());
        assert_eq!(a.len(), b.len());
        let mut changed = 0;
        for (old, new) in a.iter().zip(&b) {
            if old == new {
                continue;
            }
            changed += 1;
            assert!(old.trim_start().starts_with("for: ") && old.trim_start() != "for: 1s", "{old:?} -> {new:?}");
            assert_eq!(new.trim_start(), format!("for: {FLEET_FOR}"));
            assert_eq!(old.len() - old.trim_start().len(), new.len() - new.trim_start().len(), "indent of {old:?}");
        }
        // Every `for:` of the file was rewritten, and there are some.
        let fors = a.iter().filter(|l| l.trim_start().starts_with("for: ")).count();
        assert!(fors > 0 && changed == fors, "{changed} of {fors}");
        // The expressions the fleet's checks read are the same.
        for name in y.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
            assert_eq!(super::super::checks::alert_expr(&y, name), super::super::checks::alert_expr(&fast, name), "{name}");
        }
    }

    #[test]
    fn keeps_a_missing_final_newline_and_crlf() {
        assert_eq!(shorten_for("a:\n  for: 10m", "1s"), "a:\n  for: 1s");
        assert_eq!(shorten_for("  for: 5m\r\n", "1s"), "  for: 1s\r\n");
    }
}
