//! The eBPF side's own debug logs (`gupwatch::ebpf`).
//!
//! The programs count their trouble in the `Diag` counters (metrics) at
//! every level. At debug level they also log the first few events of each
//! counter on each CPU ([`gup_common::diag_log::FIRST`]) with their
//! details, through aya-log: a perf buffer that [`EbpfLog`] reads in a
//! thread of its own and turns into `tracing` events on target
//! [`TARGET`]. Whether the programs log at all is fixed at load time by
//! their read-only `LOG_DIAG` global ([`wanted`] decides it): at info level
//! the logging code is dead to the verifier, and no reader runs.
//!
//! aya-log 0.3 (the line that goes with aya 0.14) hands the records over
//! through a BPF ring buffer; [`EbpfLog::start`] reads it in a thread of
//! its own, started only after the caller has dropped its capabilities
//! (threads keep their own), woken by `poll(2)` on the ring's descriptor.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::Ebpf;
use gup_common::{diag_log, Api, Diag};

/// The `tracing` target of the eBPF side's log lines.
pub const TARGET: &str = "gupwatch::ebpf";

/// How long the reader sleeps in `poll(2)` before it looks at the stop
/// flag again: the worst-case delay of a clean shutdown.
const POLL_MS: libc::c_int = 200;

/// Whether the installed `tracing` subscriber wants the eBPF side's debug
/// lines (`--log-level debug`, `gupwatch=debug`, `gupwatch::ebpf=debug`).
/// False when no subscriber is installed.
pub fn wanted() -> bool {
    tracing::enabled!(target: "gupwatch::ebpf", tracing::Level::DEBUG)
}

/// Reads the programs' aya-log records and logs them on [`TARGET`].
pub struct EbpfLog {
    logger: Option<aya_log::EbpfLogger<Forward>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EbpfLog {
    /// Takes the programs' log map (no thread yet: see
    /// [`EbpfLog::start`]). An error means no eBPF log lines, never a
    /// failed load: callers warn and go on.
    pub fn init(ebpf: &mut Ebpf) -> Result<EbpfLog, String> {
        let logger = aya_log::EbpfLogger::init_with_logger(ebpf, Forward).map_err(|e| e.to_string())?;
        Ok(EbpfLog { logger: Some(logger), stop: Arc::new(AtomicBool::new(false)), thread: None })
    }

    /// Starts the thread that reads the records (once; later calls do
    /// nothing). Call it after dropping capabilities.
    pub fn start(&mut self) {
        let Some(mut logger) = self.logger.take() else { return };
        let stop = Arc::clone(&self.stop);
        let spawned = std::thread::Builder::new().name("gupwatch-ebpflog".into()).spawn(move || {
            let mut pfd = libc::pollfd { fd: logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: one valid pollfd, owned by this frame.
                let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                if n > 0 {
                    logger.flush();
                } else if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!("the eBPF log reader stopped: poll on its ring buffer failed");
                    return;
                }
            }
            logger.flush();
        });
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => tracing::warn!(error = %e, "cannot start the eBPF log reader: no eBPF debug lines"),
        }
    }
}

impl Drop for EbpfLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hands aya-log's records to `tracing`, rendered.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let raw = record.args().to_string();
        match DiagEvent::parse(&raw) {
            Some(ev) => tracing::debug!(
                target: "gupwatch::ebpf",
                diag = ev.counter_name(),
                api = %ev.api_name(),
                tgid = ev.tgid,
                n = ev.n,
                err = ev.err,
                key = %format!("{:#x}", ev.key),
                "{}",
                ev.render()
            ),
            None => tracing::debug!(target: "gupwatch::ebpf", "{raw}"),
        }
    }

    fn flush(&self) {}
}

/// One diagnostics event as the programs log it:
/// `diag=D why=W api=A tgid=T n=N err=E key=K` (key in hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagEvent {
    /// The counter.
    pub diag: Diag,
    /// A `diag_log::WHY_*` code.
    pub why: u32,
    /// The API index, or [`diag_log::API_NONE`].
    pub api: u32,
    /// The process (0: none, interrupt context).
    pub tgid: u32,
    /// Pages or calls the counter grew by.
    pub n: u64,
    /// The helper's errno (negative), or 0.
    pub err: i64,
    /// A folio, stack id, object or argument index, by counter (0: none).
    pub key: u64,
}

impl DiagEvent {
    /// Parses a record; `None` for anything else.
    pub fn parse(line: &str) -> Option<DiagEvent> {
        let fields: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(DiagEvent {
            diag: Diag::from_index(u32::try_from(num("diag")?).ok()?)?,
            why: u32::try_from(num("why")?).ok()?,
            api: u32::try_from(num("api")?).ok()?,
            tgid: u32::try_from(num("tgid")?).ok()?,
            n: num("n")?,
            err: errno(fields.get("err")?.parse().ok()?),
            key: u64::from_str_radix(fields.get("key")?, 16).ok()?,
        })
    }

    /// The counter's short name (as in `gupwatch_events_dropped{reason}`).
    pub fn counter_name(&self) -> &'static str {
        match self.diag {
            Diag::InflightFull => "inflight_full",
            Diag::ArgReadFailed => "arg_read_failed",
            Diag::AttribFull => "attrib_full",
            Diag::StackLost => "stack_lost",
            Diag::PinsTracked => "pins_tracked",
            Diag::PinsUntracked => "pins_untracked",
            Diag::UnbalancedUnpins => "unbalanced_unpins",
            Diag::UnpinsMatched => "unpins_matched",
            Diag::I915ObjectsFull => "i915_objects_full",
            Diag::EntrySkipped => "entry_skipped",
            Diag::StaleRecords => "stale_records",
            Diag::CountedAtExit => "counted_at_exit",
            Diag::UncountedAtExit => "uncounted_at_exit",
            Diag::LedgerReplaced => "ledger_replaced",
            Diag::UnpinNullEntries => "unpin_null_entries",
        }
    }

    /// The hooked function, or `-`.
    pub fn api_name(&self) -> String {
        match Api::from_index(self.api) {
            Some(a) => a.symbol().to_string(),
            None if self.api == diag_log::API_NONE => "-".into(),
            None => format!("api#{}", self.api),
        }
    }

    /// One readable sentence.
    pub fn render(&self) -> String {
        let who = match (Api::from_index(self.api), self.tgid) {
            (Some(a), 0) => format!("{}, no process (interrupt)", a.symbol()),
            (Some(a), t) => format!("{}, tgid {t}", a.symbol()),
            (None, 0) => "no process (interrupt)".to_string(),
            (None, t) => format!("tgid {t}"),
        };
        let mut s = match (self.diag, self.why) {
            (Diag::InflightFull, _) => format!("in-flight map INFLIGHT refused the call's entry record ({who})"),
            (Diag::ArgReadFailed, diag_log::WHY_ARG) => format!("could not read argument {} ({who})", self.key),
            (Diag::ArgReadFailed, _) => format!("could not read the probe's registers ({who})"),
            (Diag::AttribFull, _) => {
                format!("attribution map ATTRIB refused a new entry: {} pages unattributed ({who})", self.n)
            }
            (Diag::StackLost, _) => format!("stack map STACKS could not store the kernel stack ({who})"),
            (Diag::PinsUntracked, diag_log::WHY_MAP_FULL) => {
                format!("tracking map PINS refused folio {:#x}: pin not tracked ({who})", self.key)
            }
            (Diag::PinsUntracked, diag_log::WHY_TWO_OWNERS) => {
                format!("folio {:#x} already has two other owners: pin not tracked ({who})", self.key)
            }
            (Diag::PinsUntracked, diag_log::WHY_NO_PAGES_ARRAY) => {
                format!("{} pages pinned without a pages array to walk: not tracked ({who})", self.n)
            }
            (Diag::PinsUntracked, diag_log::WHY_BEYOND_ARRAY) => format!(
                "{} pages returned beyond the {} the caller's array holds: not tracked ({who})",
                self.n, self.key
            ),
            (Diag::PinsUntracked, diag_log::WHY_NO_ENTRY) => {
                format!("{} pages pinned by a call whose entry was not seen: not tracked ({who})", self.n)
            }
            (Diag::PinsUntracked, diag_log::WHY_PER_CALL_LIMIT) => format!(
                "{} pages beyond the {} walked per call: not tracked ({who})",
                self.n, self.key
            ),
            (Diag::PinsUntracked, diag_log::WHY_LEDGER_CLOSED) => format!(
                "folio {:#x}: its record and its spill record were both being deleted by their last unpins: pin not tracked ({who})",
                self.key
            ),
            (Diag::PinsUntracked, _) => format!("{} pins not tracked ({who})", self.n),
            (Diag::UnbalancedUnpins, _) => format!(
                "{} pages unpinned that were never seen pinned (taken before gupwatch started, or not tracked), unpin stack id {} ({who})",
                self.n, self.key as i64
            ),
            (Diag::I915ObjectsFull, _) => {
                format!("i915 object map I915_OBJECTS refused object {:#x} ({who})", self.key)
            }
            (Diag::PinsTracked
            | Diag::UnpinsMatched
            | Diag::EntrySkipped
            | Diag::StaleRecords
            | Diag::CountedAtExit
            | Diag::UncountedAtExit
            | Diag::LedgerReplaced
            | Diag::UnpinNullEntries,
                _,
            ) => format!("{} ({who})", self.counter_name()),
        };
        if self.err != 0 {
            let _ = write!(s, ": {}", errno_text(self.err));
        }
        s
    }
}

/// A helper's error as the program saw it: map updates that the verifier
/// turns into direct calls of the map's (int-returning) update function
/// hand back a 32-bit errno in a 64-bit register, zero-extended
/// (`4294967289` for -E2BIG, seen on 6.1).
fn errno(raw: i64) -> i64 {
    if (1 << 31..1 << 32).contains(&raw) {
        raw as i32 as i64
    } else {
        raw
    }
}

/// `-7` -> `E2BIG (-7)`; the kernel's helpers return negative errnos.
fn errno_text(err: i64) -> String {
    let name = match -err {
        1 => "EPERM",
        2 => "ENOENT",
        7 => "E2BIG",
        12 => "ENOMEM",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        _ => return format!("error {err}"),
    };
    format!("{name} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_render() {
        let line = "diag=5 why=1 api=1 tgid=321 n=1 err=-7 key=ffffea0004080000";
        let ev = DiagEvent::parse(line).unwrap();
        assert_eq!(
            ev,
            DiagEvent {
                diag: Diag::PinsUntracked,
                why: diag_log::WHY_MAP_FULL,
                api: Api::PinUserPagesFast as u32,
                tgid: 321,
                n: 1,
                err: -7,
                key: 0xffff_ea00_0408_0000,
            }
        );
        assert_eq!(ev.counter_name(), "pins_untracked");
        assert_eq!(
            ev.render(),
            "tracking map PINS refused folio 0xffffea0004080000: pin not tracked (pin_user_pages_fast, tgid 321): E2BIG (-7)"
        );
        let unbalanced = DiagEvent::parse("diag=6 why=0 api=4294967295 tgid=0 n=3 err=0 key=ffffffffffffffff").unwrap();
        assert_eq!(unbalanced.api_name(), "-");
        assert!(unbalanced.render().contains("stack id -1 (no process (interrupt))"), "{}", unbalanced.render());
        // A map update's errno, zero-extended from 32 bits (6.1).
        let wide = DiagEvent::parse("diag=5 why=1 api=0 tgid=125 n=1 err=4294967289 key=10").unwrap();
        assert_eq!(wide.err, -7);
        let stack = DiagEvent::parse("diag=3 why=0 api=18 tgid=9 n=1 err=-17 key=0").unwrap();
        assert!(stack.render().ends_with("(__gup_longterm_locked, tgid 9): EEXIST (-17)"), "{}", stack.render());
    }

    #[test]
    fn every_counter_and_reason_renders() {
        for d in Diag::ALL {
            for why in 0..=7 {
                let ev = DiagEvent { diag: d, why, api: 0, tgid: 1, n: 2, err: -99, key: 3 };
                let r = ev.render();
                assert!(r.contains("pin_user_pages, tgid 1") && r.ends_with("error -99"), "{r}");
            }
        }
    }

    #[test]
    fn other_records_are_not_events() {
        for bad in ["", "hello", "diag=99 why=0 api=0 tgid=0 n=0 err=0 key=0", "diag=1 why=0 api=0 tgid=0 n=0 err=0", "diag=1 why=0 api=0 tgid=x n=0 err=0 key=0"] {
            assert_eq!(DiagEvent::parse(bad), None, "{bad}");
        }
    }
}
