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

/// A `tracing` log filter (`--log-level`, `log_level` in the config):
/// a level or directives such as `gupwatch=debug,warn`.
///
/// Non-ASCII text is refused before it reaches tracing-subscriber, whose
/// directive parser (0.3.23) slices strings by bytes and panics on some
/// multi-byte characters (` [ü{` — found by the config_toml fuzz target;
/// in a config file it would take down the daemon's reload thread on
/// SIGHUP). Targets, spans and fields are Rust identifiers, so nothing
/// valid is lost.
///
/// Field values (`[span{field=value}]`) match literally, not as regular
/// expressions: tracing-subscriber builds a full DFA for a regex value,
/// which grows exponentially with patterns such as `b` and thirty `.`s
/// (the config_toml fuzz target's timeout: minutes of CPU at start or at
/// a SIGHUP reload).
pub fn log_filter(s: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "{c:?} is not allowed in a log filter: use a level (error, warn, info, debug, trace) or directives such as gupwatch=debug,warn"
        ));
    }
    tracing_subscriber::EnvFilter::builder().with_regex(false).parse(s).map_err(|e| {
        format!("{e}: use a level (error, warn, info, debug, trace) or directives such as gupwatch=debug,warn")
    })
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
    fn log_filters() {
        assert!(log_filter("info").is_ok());
        assert!(log_filter("gupwatch=debug,warn").is_ok());
        assert!(log_filter("[span{field=1}]=trace").is_ok());
        // The fuzzer's crash (tracing-subscriber panicked slicing inside 'ü').
        for bad in [" [ü{", "  [\u{fffd}\u{fffd}{==\"e", "[ü]", "ü"] {
            let e = log_filter(bad).unwrap_err();
            assert!(e.contains("not allowed in a log filter"), "{bad}: {e}");
        }
        assert!(log_filter("[[[").unwrap_err().contains("use a level"));
        // The fuzzer's timeout: a field value that, as a regex, needed an
        // exponential DFA. Literal matching parses it at once.
        let t = std::time::Instant::now();
        let slow = format!("[{{a=\"b{}{}}}\"=]trace", ".".repeat(33), "j".repeat(80));
        let _ = log_filter(&slow);
        assert!(log_filter(&format!("[{{a=b{}}}]=trace", ".".repeat(40))).is_ok());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn run_seconds() {
        assert_eq!(parse_run_seconds("5"), Ok(5.0));
        for bad in ["inf", "NaN", "1e30", "-3", "0", "abc"] {
            assert!(parse_run_seconds(bad).is_err(), "{bad}");
        }
    }
}
