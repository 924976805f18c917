//! The kernel's own FOLL_PIN accounting: `nr_foll_pin_acquired` and
//! `nr_foll_pin_released` in `/proc/vmstat` (Linux 5.7+).
//!
//! gupwatch checks its eBPF counts against these counters. They are node
//! counters with per-CPU deltas, so an exact reading needs
//! `/proc/sys/vm/stat_refresh` (root) first ([`refresh`]), and a measurement
//! window has to wait until the counters are quiet ([`settle`]) because some
//! paths unpin asynchronously (io_uring ring teardown, direct I/O completion
//! work).

use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

/// Where the counters are read from.
pub const VMSTAT_PATH: &str = "/proc/vmstat";
/// Writing "1" here folds every CPU's pending deltas into the totals.
pub const STAT_REFRESH_PATH: &str = "/proc/sys/vm/stat_refresh";
/// Pages pinned with FOLL_PIN (base pages; a fully pinned 2 MiB THP counts 512).
pub const ACQUIRED_KEY: &str = "nr_foll_pin_acquired";
/// Pages unpinned (every `unpin_user_page*` / `gup_put_folio` path).
pub const RELEASED_KEY: &str = "nr_foll_pin_released";

/// Errors from reading or refreshing the kernel's FOLL_PIN counters.
#[derive(Debug, Error)]
pub enum VmstatError {
    /// `/proc/vmstat` could not be read.
    #[error(
        "cannot read {path}: {error}; gupwatch needs a mounted procfs \
         (in a container, make sure /proc is the host's or mount -t proc proc /proc)"
    )]
    Read {
        path: &'static str,
        error: io::Error,
    },

    /// A FOLL_PIN counter is absent from the text.
    #[error(
        "`{counter}` is missing from /proc/vmstat: this kernel predates Linux 5.7 \
         (FOLL_PIN accounting) or is not Linux, so gupwatch cannot cross-check its \
         counts against the kernel here; use a 5.7+ kernel for the check"
    )]
    Missing { counter: &'static str },

    /// A FOLL_PIN counter is present but its value is not an unsigned integer.
    #[error(
        "line {line} of /proc/vmstat has `{counter}` with value {value:?}, which is not \
         an unsigned integer; is this really /proc/vmstat? please report it with the \
         output of `uname -a`"
    )]
    Malformed {
        counter: &'static str,
        line: usize,
        value: String,
    },

    /// A FOLL_PIN counter appears twice.
    #[error(
        "`{counter}` appears twice in /proc/vmstat (lines {first} and {second}); \
         the text is not a single /proc/vmstat snapshot"
    )]
    Duplicate {
        counter: &'static str,
        first: usize,
        second: usize,
    },

    /// Writing to `/proc/sys/vm/stat_refresh` was refused (not root, or a
    /// read-only /proc/sys in a container).
    #[error(
        "writing 1 to {STAT_REFRESH_PATH} was refused ({error}): run gupwatch as root for \
         exact vmstat totals; without the refresh they may lag by up to the per-CPU \
         deltas (tens of pages per CPU, folded about once a second)"
    )]
    RefreshDenied { error: io::Error },

    /// Writing to `/proc/sys/vm/stat_refresh` failed for another reason
    /// (absent before Linux 4.4 or without CONFIG_PROC_SYSCTL).
    #[error(
        "writing 1 to {STAT_REFRESH_PATH} failed ({error}); the vmstat totals may lag by \
         the per-CPU deltas (read without refreshing to go on anyway)"
    )]
    Refresh { error: io::Error },

    /// A later snapshot has a smaller counter than an earlier one.
    #[error(
        "`{counter}` went backwards ({earlier} -> {later}): the snapshots were passed in \
         the wrong order, come from different boots, or the kernel clamped a transiently \
         negative total; take both snapshots with refresh (as root) and try again"
    )]
    WentBackwards {
        counter: &'static str,
        earlier: u64,
        later: u64,
    },
}

impl VmstatError {
    /// True when the error only means "the totals may lag" (the refresh was
    /// not possible), so a caller may fall back to [`read`]`(false)`.
    pub fn is_refresh_failure(&self) -> bool {
        matches!(
            self,
            VmstatError::RefreshDenied { .. } | VmstatError::Refresh { .. }
        )
    }
}

/// One snapshot of the kernel's FOLL_PIN counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FollPinCounters {
    /// `nr_foll_pin_acquired`.
    pub acquired: u64,
    /// `nr_foll_pin_released`.
    pub released: u64,
}

/// The change between two snapshots ([`FollPinCounters::delta_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FollPinDelta {
    /// Pages pinned in the window.
    pub acquired: u64,
    /// Pages unpinned in the window.
    pub released: u64,
}

impl FollPinCounters {
    /// Pages pinned and not yet released (acquired − released). Negative only
    /// when a snapshot was taken without refresh and the per-CPU deltas had
    /// not been folded in evenly.
    pub fn outstanding(&self) -> i64 {
        clamp_i64(i128::from(self.acquired) - i128::from(self.released))
    }

    /// The change from `earlier` to `self`. Fails instead of wrapping when a
    /// counter went backwards.
    pub fn delta_since(&self, earlier: &FollPinCounters) -> Result<FollPinDelta, VmstatError> {
        let sub = |counter, later: u64, earlier: u64| {
            later
                .checked_sub(earlier)
                .ok_or(VmstatError::WentBackwards {
                    counter,
                    earlier,
                    later,
                })
        };
        Ok(FollPinDelta {
            acquired: sub(ACQUIRED_KEY, self.acquired, earlier.acquired)?,
            released: sub(RELEASED_KEY, self.released, earlier.released)?,
        })
    }
}

impl FollPinDelta {
    /// Net change in outstanding pins over the window (acquired − released).
    pub fn net(&self) -> i64 {
        clamp_i64(i128::from(self.acquired) - i128::from(self.released))
    }

    /// True when nothing was pinned or unpinned in the window.
    pub fn is_zero(&self) -> bool {
        self.acquired == 0 && self.released == 0
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Parses the text of `/proc/vmstat` (lines of `name value`).
pub fn parse(text: &str) -> Result<FollPinCounters, VmstatError> {
    // (value, 1-based line number) per counter.
    let mut acquired: Option<(u64, usize)> = None;
    let mut released: Option<(u64, usize)> = None;
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let (counter, slot) = match name {
            ACQUIRED_KEY => (ACQUIRED_KEY, &mut acquired),
            RELEASED_KEY => (RELEASED_KEY, &mut released),
            _ => continue,
        };
        let raw = fields.next().unwrap_or("");
        let value = match (raw.parse::<u64>(), fields.next()) {
            (Ok(v), None) => v,
            _ => {
                return Err(VmstatError::Malformed {
                    counter,
                    line: lineno,
                    // After the name, which starts the line once leading
                    // (Unicode) whitespace is gone, as split_whitespace
                    // sees it; slicing `line` itself cut a character in
                    // two (found by the vmstat_parse fuzz target).
                    value: line.trim_start().get(name.len()..).unwrap_or("").trim().to_string(),
                })
            }
        };
        if let Some((_, first)) = *slot {
            return Err(VmstatError::Duplicate {
                counter,
                first,
                second: lineno,
            });
        }
        *slot = Some((value, lineno));
    }
    let acquired = acquired
        .ok_or(VmstatError::Missing {
            counter: ACQUIRED_KEY,
        })?
        .0;
    let released = released
        .ok_or(VmstatError::Missing {
            counter: RELEASED_KEY,
        })?
        .0;
    Ok(FollPinCounters { acquired, released })
}

/// Writes "1" to `/proc/sys/vm/stat_refresh` so every CPU's pending deltas
/// are folded into the totals. Needs root.
///
/// `EINVAL` is treated as success: kernels 4.4–5.11 return it when some
/// (unrelated) counter is transiently negative, after having refreshed.
pub fn refresh() -> Result<(), VmstatError> {
    match fs::write(STAT_REFRESH_PATH, b"1") {
        Ok(()) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::EINVAL) => Ok(()),
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => {
                Err(VmstatError::RefreshDenied { error: e })
            }
            _ => Err(VmstatError::Refresh { error: e }),
        },
    }
}

/// Reads the counters, after [`refresh`] when `refresh` is true.
pub fn read(refresh: bool) -> Result<FollPinCounters, VmstatError> {
    if refresh {
        self::refresh()?;
    }
    let text = fs::read_to_string(VMSTAT_PATH).map_err(|error| VmstatError::Read {
        path: VMSTAT_PATH,
        error,
    })?;
    parse(&text)
}

/// How [`settle`] polls.
///
/// The default (refresh before every sample, 150 ms of quiet) is for root.
/// Without the refresh the totals only catch up when the kernel folds the
/// per-CPU deltas (every `vm.stat_interval`, 1 s by default): on a 6.18 host
/// a 256-page pin showed +250 right away and +256 only ~1.5 s later, so a
/// 150 ms quiet window would settle on the wrong value. Use
/// [`SettleOptions::without_refresh`] when not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleOptions {
    /// Pause between two samples (default 20 ms).
    pub interval: Duration,
    /// How long the counters must stay unchanged (default 150 ms).
    pub quiet: Duration,
    /// Give up after this long and return the last sample (default 3 s).
    pub timeout: Duration,
    /// Refresh before every sample (default true; needs root).
    pub refresh: bool,
}

impl Default for SettleOptions {
    fn default() -> Self {
        SettleOptions {
            interval: Duration::from_millis(20),
            quiet: Duration::from_millis(150),
            timeout: Duration::from_secs(3),
            refresh: true,
        }
    }
}

impl SettleOptions {
    /// For readers that cannot refresh (not root): no refresh, and a quiet
    /// window (2.5 s) longer than the kernel's 1 s fold interval, with a 10 s
    /// timeout. Still approximate: a counter whose per-CPU delta stays under
    /// the threshold is folded by the next periodic update only.
    pub fn without_refresh() -> Self {
        SettleOptions {
            interval: Duration::from_millis(100),
            quiet: Duration::from_millis(2500),
            timeout: Duration::from_secs(10),
            refresh: false,
        }
    }
}

/// The result of [`settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settled {
    /// The last sample taken.
    pub counters: FollPinCounters,
    /// True when the counters stayed unchanged for `quiet`; false when the
    /// timeout passed first (the host is busy pinning, or an asynchronous
    /// unpin is still pending).
    pub settled: bool,
    /// Samples taken.
    pub samples: u32,
    /// Time spent.
    pub waited: Duration,
}

/// Polls the counters (refresh + read) every `interval` until they are
/// unchanged for `quiet` or `timeout` passes.
///
/// Call it before each snapshot of a measurement window: some kernels unpin
/// asynchronously (io_uring unregister/ring teardown, direct I/O completion),
/// so the counters may still move after the syscall has returned.
pub fn settle(opts: &SettleOptions) -> Result<Settled, VmstatError> {
    let refresh = opts.refresh;
    settle_with(opts, || read(refresh))
}

/// [`settle`] with a custom sampler (for tests, or for counters read from
/// somewhere else). The sampler's first error is returned.
pub fn settle_with<F>(opts: &SettleOptions, mut sample: F) -> Result<Settled, VmstatError>
where
    F: FnMut() -> Result<FollPinCounters, VmstatError>,
{
    let start = Instant::now();
    let mut last = sample()?;
    let mut samples = 1u32;
    let mut last_change = Instant::now();
    loop {
        let now = Instant::now();
        // Quiet long enough wins over the time limit reached at once.
        let settled = now.duration_since(last_change) >= opts.quiet;
        if settled || now.duration_since(start) >= opts.timeout {
            return Ok(Settled {
                counters: last,
                settled,
                samples,
                waited: start.elapsed(),
            });
        }
        thread::sleep(opts.interval);
        let current = sample()?;
        samples = samples.saturating_add(1);
        if current != last {
            last = current;
            last_change = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Abridged from a real 6.18 /proc/vmstat (values changed).
    const REAL: &str = "nr_free_pages 5893247
nr_zone_inactive_anon 1297
nr_zone_active_anon 54013
nr_mlock 0
nr_bounce 0
numa_hit 8763246
nr_dirty 18
nr_writeback 0
nr_throttled_written 0
nr_kernel_misc_reclaimable 0
nr_foll_pin_acquired 1048832
nr_foll_pin_released 1048576
nr_kernel_stack 5552
pgpgin 3011442
pgfault 11029832
thp_fault_alloc 12
";

    #[test]
    fn parses_real_text() {
        let c = parse(REAL).unwrap();
        assert_eq!(
            c,
            FollPinCounters {
                acquired: 1_048_832,
                released: 1_048_576
            }
        );
        assert_eq!(c.outstanding(), 256);
    }

    #[test]
    fn parses_zeroes_extra_spaces_and_crlf() {
        let c = parse("nr_foll_pin_acquired    0\r\n\nnr_foll_pin_released\t0\r\n").unwrap();
        assert_eq!(c, FollPinCounters::default());
    }

    #[test]
    fn similar_names_are_not_the_counters() {
        let text = "nr_foll_pin_acquired_x 5\nxnr_foll_pin_released 6\n";
        assert!(matches!(
            parse(text),
            Err(VmstatError::Missing {
                counter: ACQUIRED_KEY
            })
        ));
    }

    #[test]
    fn missing_counters() {
        let e = parse("nr_free_pages 1\npgfault 2\n").unwrap_err();
        assert!(matches!(
            e,
            VmstatError::Missing {
                counter: ACQUIRED_KEY
            }
        ));
        assert!(e.to_string().contains("5.7"), "{e}");
        let e = parse("nr_foll_pin_acquired 3\n").unwrap_err();
        assert!(matches!(
            e,
            VmstatError::Missing {
                counter: RELEASED_KEY
            }
        ));
        assert!(matches!(parse(""), Err(VmstatError::Missing { .. })));
    }

    /// The vmstat_parse fuzz target's crash: a counter line that starts
    /// with Unicode whitespace (U+0085) made the message slice `line` inside
    /// a character. Now it names the value after the counter.
    #[test]
    fn leading_unicode_whitespace() {
        let e = parse("   \u{85}\u{85}nr_foll_pin_released\r`\r\nnr_foll_pin_acquired 1\n").unwrap_err();
        match e {
            VmstatError::Malformed { counter, line, ref value } => {
                assert_eq!((counter, line, value.as_str()), (RELEASED_KEY, 1, "`"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let ok = parse("\u{85} nr_foll_pin_acquired 5\n\tnr_foll_pin_released 3\n").unwrap();
        assert_eq!((ok.acquired, ok.released), (5, 3));
    }

    #[test]
    fn garbage() {
        let e = parse("\u{0}\u{1}binary junk\nnr_foll_pin_acquired -4\nnr_foll_pin_released 1\n")
            .unwrap_err();
        match e {
            VmstatError::Malformed {
                counter,
                line,
                ref value,
            } => {
                assert_eq!((counter, line, value.as_str()), (ACQUIRED_KEY, 2, "-4"));
            }
            other => panic!("unexpected {other:?}"),
        }
        for bad in [
            "nr_foll_pin_acquired\nnr_foll_pin_released 1\n",
            "nr_foll_pin_acquired 12abc\nnr_foll_pin_released 1\n",
            "nr_foll_pin_acquired 1 2\nnr_foll_pin_released 1\n",
            "nr_foll_pin_acquired 99999999999999999999999\nnr_foll_pin_released 1\n",
        ] {
            assert!(
                matches!(parse(bad), Err(VmstatError::Malformed { .. })),
                "{bad:?}"
            );
        }
        let dup = "nr_foll_pin_acquired 1\nnr_foll_pin_released 1\nnr_foll_pin_released 2\n";
        assert!(matches!(
            parse(dup),
            Err(VmstatError::Duplicate {
                counter: RELEASED_KEY,
                first: 2,
                second: 3
            })
        ));
    }

    #[test]
    fn deltas_are_checked() {
        let a = FollPinCounters {
            acquired: 10,
            released: 4,
        };
        let b = FollPinCounters {
            acquired: 266,
            released: 260,
        };
        let d = b.delta_since(&a).unwrap();
        assert_eq!(
            d,
            FollPinDelta {
                acquired: 256,
                released: 256
            }
        );
        assert_eq!(d.net(), 0);
        assert!(!d.is_zero());
        assert!(a.delta_since(&a).unwrap().is_zero());
        assert!(matches!(
            a.delta_since(&b),
            Err(VmstatError::WentBackwards {
                counter: ACQUIRED_KEY,
                earlier: 266,
                later: 10
            })
        ));
        let c = FollPinCounters {
            acquired: 0,
            released: u64::MAX,
        };
        assert_eq!(c.outstanding(), i64::MIN);
        assert_eq!(
            FollPinCounters {
                acquired: 3,
                released: 5
            }
            .outstanding(),
            -2
        );
    }

    #[test]
    fn refresh_failures_are_classified() {
        let denied = VmstatError::RefreshDenied {
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(denied.is_refresh_failure());
        assert!(denied.to_string().contains("root"));
        assert!(!VmstatError::Missing {
            counter: ACQUIRED_KEY
        }
        .is_refresh_failure());
    }

    fn fast() -> SettleOptions {
        SettleOptions {
            interval: Duration::from_millis(1),
            quiet: Duration::from_millis(15),
            timeout: Duration::from_millis(500),
            refresh: false,
        }
    }

    #[test]
    fn settle_waits_for_quiet() {
        // Moves for the first 5 samples, then stays put.
        let n = Cell::new(0u64);
        let s = settle_with(&fast(), || {
            n.set(n.get() + 1);
            let v = n.get().min(5);
            Ok(FollPinCounters {
                acquired: v,
                released: v,
            })
        })
        .unwrap();
        assert!(s.settled);
        assert_eq!(
            s.counters,
            FollPinCounters {
                acquired: 5,
                released: 5
            }
        );
        assert!(s.samples > 5);
    }

    #[test]
    fn settle_times_out_when_busy() {
        let n = Cell::new(0u64);
        let opts = SettleOptions {
            timeout: Duration::from_millis(60),
            ..fast()
        };
        let s = settle_with(&opts, || {
            n.set(n.get() + 1);
            Ok(FollPinCounters {
                acquired: n.get(),
                released: 0,
            })
        })
        .unwrap();
        assert!(!s.settled);
        assert_eq!(s.counters.acquired, n.get());
        assert!(s.waited >= Duration::from_millis(60));
    }

    #[test]
    fn settle_propagates_errors() {
        let e = settle_with(&fast(), || {
            Err(VmstatError::Missing {
                counter: ACQUIRED_KEY,
            })
        });
        assert!(matches!(e, Err(VmstatError::Missing { .. })));
    }
}
