//! `rate_limit`: the exporter-toolkit's token bucket over every request
//! (`golang.org/x/time/rate`'s `NewLimiter(Every(interval), burst)`): a
//! token is added every `interval`, at most `burst` are kept, and each
//! request takes one or gets 429.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// A Go duration (`1s`, `500ms`, `1m30s`); `0` turns the limit off.
    interval: Option<String>,
    burst: Option<u64>,
}

/// `rate_limit`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time to earn one request.
    pub interval: Duration,
    /// Requests that may come at once.
    pub burst: u32,
}

/// `None` when the limit is off (no interval, or 0, as in the toolkit).
pub(super) fn parse(raw: RawRateLimit) -> Result<Option<RateLimit>, String> {
    let interval = match raw.interval.as_deref().map(str::trim) {
        None | Some("") => Duration::ZERO,
        Some(text) => go_duration(text).map_err(|why| format!("rate_limit.interval {text:?}: {why}"))?,
    };
    if interval.is_zero() {
        return Ok(None);
    }
    let burst = raw.burst.unwrap_or(0);
    if burst == 0 {
        // The toolkit's limiter with burst 0 refuses every request.
        return Err("rate_limit.burst must be at least 1 (with 0, every request would be refused)".into());
    }
    let burst = u32::try_from(burst).map_err(|_| format!("rate_limit.burst {burst} is too large"))?;
    Ok(Some(RateLimit { interval, burst }))
}

/// A Go `time.Duration` string: numbers with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`, e.g. `1m30s` or `1.5s`; a bare `0` is zero.
fn go_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || "not a duration: use e.g. 1s, 250ms or 1m30s (0 turns the limit off)".to_string();
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * unit;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The bucket.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Tokens, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter { limit, state: Mutex::new((f64::from(limit.burst), Instant::now())) }
    }

    /// Takes a token, or says how long until there is one.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let per = self.limit.interval.as_secs_f64();
        let earned = now.saturating_duration_since(st.1).as_secs_f64() / per;
        let tokens = (st.0 + earned).min(f64::from(self.limit.burst));
        *st = (tokens, now);
        if tokens >= 1.0 {
            st.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) * per))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [("1s", 1000), ("250ms", 250), ("1m30s", 90_000), ("1.5s", 1500), ("0", 0), ("2h", 7_200_000)] {
            assert_eq!(go_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "1", "s", "1x", "-1s", "1s2"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings() {
        let p = |i: &str, b: Option<u64>| parse(RawRateLimit { interval: Some(i.into()), burst: b });
        assert_eq!(p("1s", Some(3)), Ok(Some(RateLimit { interval: Duration::from_secs(1), burst: 3 })));
        assert_eq!(p("0", None), Ok(None), "0 turns it off, as in the toolkit");
        assert!(p("1s", None).unwrap_err().contains("at least 1"));
        assert!(p("soon", Some(1)).unwrap_err().contains("rate_limit.interval"));
    }

    #[test]
    fn the_bucket_refills_at_the_interval() {
        let l = RateLimiter::new(RateLimit { interval: Duration::from_millis(100), burst: 2 });
        let t0 = Instant::now();
        assert_eq!(l.take_at(t0), Ok(()));
        assert_eq!(l.take_at(t0), Ok(()));
        let wait = l.take_at(t0).unwrap_err();
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.take_at(t0 + Duration::from_millis(50)).is_err());
        assert_eq!(l.take_at(t0 + Duration::from_millis(101)), Ok(()));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((l.take_at(later), l.take_at(later)), (Ok(()), Ok(())));
        assert!(l.take_at(later).is_err());
    }
}
