//! `weak_pin_odirect_movable`: a short-term pin (no FOLL_LONGTERM) held
//! past the weak-pin threshold on pages in ZONE_MOVABLE, the `weak_pin`
//! leak signal (docs/leaks.md).
//!
//! An `O_DIRECT` read into anonymous memory that lies in ZONE_MOVABLE
//! (`movablecore=`, as [`super::reverted::Movable`] finds it), from a
//! `null_blk` device created through configfs whose requests complete
//! [`COMPLETION`] after submission (`irqmode=2`, `completion_nsec`). The
//! block layer pins the buffer at submission and unpins it at completion,
//! so while the read is in flight the pins are outstanding; `run` returns
//! after [`HOLD`], past the default weak-pin threshold (1 s), and the
//! checker must see a `weak_pin` signal over all the buffer's pages, which
//! lie in ZONE_MOVABLE. `cleanup` waits for the read; the ledger must then
//! balance ([`Scenario::ledger_must_hold`]).
//!
//! Needs `movablecore=` on the kernel command line and the `null_blk`
//! module loaded (in the VM: `--append movablecore=256M --module
//! null_blk`); not reachable otherwise.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use super::reverted::{movable_zones, pfns};
use super::*;
use crate::kernel::vmstat::FollPinDelta;
use gup_report::LeakKind;

const NAME: &str = "weak_pin_odirect_movable";

/// Bytes of the read: 16 pages, one bio.
const IO_BYTES: usize = 64 << 10;

/// How long the device takes to complete a request: under null_blk's
/// request timeout (5 s; a read delayed 8 s fails with ETIMEDOUT).
const COMPLETION: Duration = Duration::from_secs(4);

/// How long `run` lets the read stay in flight before it returns: past the
/// default weak-pin threshold, with the checker's settling (150 ms quiet)
/// and leak analysis still well inside [`COMPLETION`].
const HOLD: Duration = Duration::from_millis(1500);

/// The configfs directory of the device this scenario creates.
const NULLB_DIR: &str = "/sys/kernel/config/nullb/gupwatch_weak_pin";

/// What to boot with so the scenario runs.
const HINT: &str = "boot with movablecore=256M and load null_blk (in the VM: --append movablecore=256M --module null_blk)";

/// The device, the buffer and the read in flight.
struct State {
    // Field order is drop order: the read is joined in `cleanup`; the
    // buffer outlives it.
    read: Option<JoinHandle<std::io::Result<usize>>>,
    dev: File,
    buf: Mapping,
}

/// The scenario; see the module documentation.
pub(super) struct WeakPin {
    state: Option<State>,
}

/// The scenario, for the registry.
pub(super) fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![Box::new(WeakPin { state: None })]
}

fn pages() -> u64 {
    (IO_BYTES / page_size()) as u64
}

/// Writes one configfs attribute of the device.
fn set(attr: &str, value: &str) -> Result<(), ScenarioError> {
    std::fs::write(Path::new(NULLB_DIR).join(attr), value).map_err(|e| sys_err(NAME, "write null_blk configfs attribute", e))
}

/// Creates the slow `null_blk` device and returns its block device path.
fn create_device() -> Result<PathBuf, ScenarioError> {
    let unreachable = |reason: String| ScenarioError::NotReachable { scenario: NAME, reason };
    if !Path::new("/sys/module/null_blk").exists() {
        return Err(unreachable(format!("null_blk is not loaded: {HINT}")));
    }
    let root = Path::new("/sys/kernel/config");
    if !root.join("nullb").exists() {
        // configfs is not mounted where the guest's /init left it; null_blk
        // registers its subsystem there once it is.
        let r = std::process::Command::new("mount").args(["-t", "configfs", "configfs"]).arg(root).status();
        if !matches!(r, Ok(s) if s.success()) || !root.join("nullb").exists() {
            return Err(unreachable(format!("no null_blk configfs directory under {} (configfs not mounted)", root.display())));
        }
    }
    remove_device();
    std::fs::create_dir(NULLB_DIR).map_err(|e| sys_err(NAME, "mkdir null_blk configfs device", e))?;
    set("blocksize", "4096")?;
    set("size", "16")?;
    set("irqmode", "2")?;
    set("completion_nsec", &COMPLETION.as_nanos().to_string())?;
    set("power", "1")?;
    let index = std::fs::read_to_string(Path::new(NULLB_DIR).join("index"))
        .map_err(|e| sys_err(NAME, "read null_blk configfs index", e))?;
    // A configfs device takes its directory's name (older kernels:
    // nullb<index>); devtmpfs creates the node shortly after the disk is
    // added.
    let names = [Path::new(NULLB_DIR).file_name().map(PathBuf::from), Some(PathBuf::from(format!("nullb{}", index.trim())))];
    let candidates: Vec<PathBuf> = names.into_iter().flatten().map(|n| Path::new("/dev").join(n)).collect();
    for _ in 0..50 {
        if let Some(dev) = candidates.iter().find(|d| d.exists()) {
            return Ok(dev.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(unreachable(format!("none of {candidates:?} appeared")))
}

/// Powers the device off and removes it (best effort: nothing to undo
/// when it was never created).
fn remove_device() {
    if Path::new(NULLB_DIR).exists() {
        let _ = std::fs::write(Path::new(NULLB_DIR).join("power"), "0");
        let _ = std::fs::remove_dir(NULLB_DIR);
    }
}

impl Drop for WeakPin {
    /// Joins a read still in flight before its buffer is unmapped.
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

impl Scenario for WeakPin {
    fn spec(&self) -> Spec {
        Spec::pins(
            NAME,
            "O_DIRECT read of 64 KiB into anonymous memory in ZONE_MOVABLE (movablecore=) from a null_blk \
             device completing after 4 s, judged 1.5 s into the read: the short-term pins are a weak_pin \
             leak signal in zone Movable; the ledger balances once the read completes",
            PinPath::DirectIo,
            pages(),
            ExpectedPath::Any,
        )
    }

    /// The read is still in flight when the run's window closes: pinned,
    /// not yet released.
    fn expected_delta(&self) -> FollPinDelta {
        FollPinDelta { acquired: pages(), released: 0 }
    }

    fn expected_leak(&self) -> Option<ExpectedLeak> {
        Some(ExpectedLeak { kind: LeakKind::WeakPin.as_str(), pages: pages(), owner_tgid: std::process::id() })
    }

    fn ledger_must_hold(&self) -> bool {
        true
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.cleanup()?;
        let unreachable = |reason: String| ScenarioError::NotReachable { scenario: NAME, reason };
        let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").map_err(|e| sys_err(NAME, "read /proc/zoneinfo", e))?;
        let zones = movable_zones(&zoneinfo);
        if zones.is_empty() {
            return Err(unreachable(format!("no populated ZONE_MOVABLE in /proc/zoneinfo: {HINT}")));
        }
        let buf = Mapping::new_prefaulted(NAME, IO_BYTES, SEED_DEST)?;
        let pfns = pfns(buf.addr() as usize, buf.len).map_err(|e| sys_err(NAME, "read /proc/self/pagemap", e))?;
        let in_movable = pfns
            .iter()
            .flatten()
            .filter(|p| zones.iter().any(|(start, spanned)| **p >= *start && **p < start + spanned))
            .count();
        if in_movable != pfns.len() {
            return Err(unreachable(format!(
                "{in_movable} of the buffer's {} pages are in ZONE_MOVABLE (zones {zones:?}; pagemap needs root)",
                pfns.len()
            )));
        }
        let path = create_device()?;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| sys_err(NAME, "open null_blk O_DIRECT", e))?;
        self.state = Some(State { read: None, dev, buf });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let st = prepared(&mut self.state, NAME)?;
        let (fd, addr, len) = (st.dev.as_raw_fd(), st.buf.addr() as usize, st.buf.len);
        st.read = Some(std::thread::spawn(move || {
            // SAFETY: the buffer is the scenario's own anonymous mapping,
            // which outlives this thread (`cleanup` joins it before the
            // mapping drops), and no Rust reference points into it while the
            // read runs; the descriptor likewise stays open until the join.
            let n = unsafe { libc::pread(fd, addr as *mut libc::c_void, len, 0) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }));
        std::thread::sleep(HOLD);
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let mut result = Ok(());
        if let Some(mut st) = self.state.take() {
            if let Some(read) = st.read.take() {
                result = match read.join() {
                    Ok(Ok(n)) if n == IO_BYTES => Ok(()),
                    Ok(Ok(n)) => Err(ScenarioError::ShortTransfer { scenario: NAME, syscall: "pread", got: n, expected: IO_BYTES }),
                    Ok(Err(e)) => Err(sys_err(NAME, "pread", e)),
                    Err(_) => Err(ScenarioError::NotReachable { scenario: NAME, reason: "the reading thread panicked".into() }),
                };
            }
            drop(st);
        }
        remove_device();
        result
    }
}
