//! Pins a call takes and releases again before it returns ("reverted",
//! [`gup_common::Reverted`]): the kernel counts them as acquired and
//! released, and so must gupwatch, by reason. The refusal of a LONGTERM pin
//! on a dirty-tracked file mapping is a matrix row
//! (`io_uring_register_file_shared`); these two are the other triggers:
//!
//! - [`Movable`]: a LONGTERM pin of pages in ZONE_MOVABLE, which the kernel
//!   releases, migrates and pins again (needs `movablecore=` on the kernel
//!   command line);
//! - [`Race`]: registering a buffer while another thread zaps its page
//!   table entries, so the lock-free walk may find an entry changed under
//!   a page it grabbed and let go of it. Exact whether or not the race is
//!   hit; the report says how many reverted pages it saw.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// The buffer [`Race`] registers again and again.
const RACE_BYTES: usize = 16 * 4096;

/// Register + unregister rounds of [`Race`].
const RACE_ROUNDS: u32 = 400;

/// What to boot with so [`Movable`] runs.
const MOVABLE_HINT: &str = "boot with movablecore=256M (in the VM: --append movablecore=256M)";

pub(super) use crate::kernel::placement::movable_zones;

/// The page frame number backing each page of `[addr, addr + len)`, from
/// `/proc/self/pagemap` (root only: others read zeroes). `None` for a page
/// not present.
pub(super) fn pfns(addr: usize, len: usize) -> io::Result<Vec<Option<u64>>> {
    use std::os::unix::fs::FileExt;
    let page = page_size();
    let f = std::fs::File::open("/proc/self/pagemap")?;
    let n = len / page;
    let mut raw = vec![0u8; n * 8];
    f.read_exact_at(&mut raw, (addr / page * 8) as u64)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let e = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            // Bit 63: present; bits 0-54: the PFN.
            (e >> 63 == 1).then_some(e & ((1 << 55) - 1)).filter(|p| *p != 0)
        })
        .collect())
}

/// A LONGTERM pin (io_uring fixed buffer) of anonymous pages in
/// ZONE_MOVABLE: the kernel pins them, finds them unpinnable for the long
/// term, releases them, migrates them and pins the copies.
pub(super) struct Movable {
    pub(super) state: Option<RingState>,
}

impl Scenario for Movable {
    fn spec(&self) -> Spec {
        let mut s = Spec::pins(
            "io_uring_register_movable",
            "IORING_REGISTER_BUFFERS of 1 MiB of anonymous memory in ZONE_MOVABLE (movablecore=), then \
             unregister: the LONGTERM pin releases those pages, migrates them and pins again (reverted pins, \
             reason migration)",
            PinPath::IoUringRegister,
            (BUFFER_BYTES / 4096) as u64,
            ExpectedPath::Any,
        );
        s.expectation.reverted = Some(gup_common::Reverted::Migration);
        s
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        let scenario = "io_uring_register_movable";
        let unreachable = |reason: String| ScenarioError::NotReachable { scenario, reason };
        let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").map_err(|e| sys_err(scenario, "read /proc/zoneinfo", e))?;
        let zones = movable_zones(&zoneinfo);
        if zones.is_empty() {
            return Err(unreachable(format!("no populated ZONE_MOVABLE in /proc/zoneinfo: {MOVABLE_HINT}")));
        }
        let st = RingState::new(scenario)?;
        let pfns = pfns(st.buf.addr() as usize, st.buf.len).map_err(|e| sys_err(scenario, "read /proc/self/pagemap", e))?;
        let in_movable = pfns
            .iter()
            .flatten()
            .filter(|p| zones.iter().any(|(start, spanned)| **p >= *start && **p < start + spanned))
            .count();
        if in_movable == 0 {
            return Err(unreachable(format!(
                "none of the buffer's {} pages is in ZONE_MOVABLE (zones {zones:?}; pagemap needs root)",
                pfns.len()
            )));
        }
        self.state = Some(st);
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let st = prepared(&mut self.state, "io_uring_register_movable")?;
        st.register("io_uring_register_movable")?;
        st.unregister("io_uring_register_movable")
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        match self.state.take() {
            Some(st) => st.close("io_uring_register_movable"),
            None => Ok(()),
        }
    }
}

/// Registers and unregisters a small buffer [`RACE_ROUNDS`] times while
/// another thread drops its pages (MADV_DONTNEED) in a loop.
pub(super) struct Race {
    pub(super) state: Option<(OwnedFd, Mapping)>,
}

impl Scenario for Race {
    fn spec(&self) -> Spec {
        Spec::pins(
            "io_uring_register_race",
            "IORING_REGISTER_BUFFERS + UNREGISTER of 64 KiB, 400 times, while another thread drops the \
             buffer's pages (MADV_DONTNEED): the lock-free walk may let go of pages whose entry changed \
             under it (reverted pins, reason fast_walk); exact whether or not the race is hit",
            PinPath::IoUringRegister,
            (RACE_BYTES / 4096) as u64 * RACE_ROUNDS as u64,
            ExpectedPath::Any,
        )
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        let scenario = "io_uring_register_race";
        let ring = io_uring_setup(IO_URING_ENTRIES).map_err(|e| sys_err(scenario, "io_uring_setup", e))?;
        let buf = Mapping::new_prefaulted(scenario, RACE_BYTES, SEED_SOURCE)?;
        self.state = Some((ring, buf));
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let scenario = "io_uring_register_race";
        let (ring, buf) = prepared(&mut self.state, scenario)?;
        let iov = buf.iovec();
        let (addr, len) = (buf.addr() as usize, buf.len);
        let stop = Arc::new(AtomicBool::new(false));
        let zapper = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: the range is the scenario's own private
                    // anonymous mapping, which outlives this thread (joined
                    // below before `run` returns); no Rust reference points
                    // into it while the thread runs, and MADV_DONTNEED only
                    // replaces its contents with zeroes.
                    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                    std::thread::yield_now();
                }
            })
        };
        let mut result = Ok(());
        for _ in 0..RACE_ROUNDS {
            let r = match io_uring_register(ring, IORING_REGISTER_BUFFERS, (&iov as *const libc::iovec).cast(), 1) {
                // With a movable zone the LONGTERM pin migrates the pages
                // first, and pages the other thread drops meanwhile make
                // the migration fail: the kernel unpins what it took and
                // returns ENOMEM. Counted like any other round.
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => continue,
                r => r,
            };
            let r = r
                .map_err(|e| sys_err(scenario, REGISTER, e))
                .and_then(|()| {
                    io_uring_register(ring, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0)
                        .map_err(|e| sys_err(scenario, UNREGISTER, e))
                });
            if r.is_err() {
                result = r;
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        if zapper.join().is_err() {
            return Err(ScenarioError::NotReachable { scenario, reason: "the zapping thread panicked".into() });
        }
        result
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        Ok(())
    }
}
