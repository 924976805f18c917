//! Value parsers of the `gupwatch` command line.
//!
//! They live in the library, not the binary, so they are unit-tested and
//! fuzzed (`fuzz/fuzz_targets/cli_values.rs`) like any other parser: every
//! value a user can type must give either a value in range or a message
//! that names the accepted range, never a panic later (a `Duration` built
//! from `inf` or `1e30` seconds panics).

use std::time::Duration;

/// Shortest `--interval`, in seconds.
pub const MIN_INTERVAL_SECS: f64 = 0.05;
/// Longest `--interval`, in seconds.
pub const MAX_INTERVAL_SECS: f64 = 3600.0;

/// `-i/--interval`: seconds between summaries, 0.05 to 3600 (a decimal
/// number: `1`, `0.5`, `2.5`).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 1 or 0.5)"))?;
    // NaN fails both comparisons, so it is refused here too.
    if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&secs) {
        return Err(format!("interval {s} s is out of range: use {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS} seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A run length in seconds with a fraction (`bench-workload --seconds`):
/// 0.1 s to one day.
pub fn parse_run_seconds(s: &str) -> Result<f64, String> {
    const MAX: f64 = 86_400.0;
    let secs: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.1..=MAX).contains(&secs) {
        return Err(format!("{s} s is out of range: use 0.1 to {MAX} seconds"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("3600"), Ok(Duration::from_secs(3600)));
        for bad in ["", "x", "1s", "0", "-1", "0.01", "3601", "inf", "-inf", "NaN", "1e400", "1e30"] {
            let e = parse_interval(bad).unwrap_err();
            assert!(e.contains("seconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn run_seconds() {
        assert_eq!(parse_run_seconds("5"), Ok(5.0));
        for bad in ["inf", "NaN", "1e30", "-3", "0", "abc"] {
            assert!(parse_run_seconds(bad).is_err(), "{bad}");
        }
    }
}
