//! `inflight_*`: asynchronous O_DIRECT through io_uring with many I/Os in
//! flight at once, the workload that broke gupwatch's pin ledger in issue
//! 14 (a storage benchmark's io_uring job beside registered buffers taken
//! before gupwatch started).
//!
//! - `inflight_odirect_shared`: rounds of [`IN_FLIGHT`] `IORING_OP_READ`s,
//!   all submitted before any is reaped, into a pool of only [`POOL_BUFS`]
//!   buffers, so [`IN_FLIGHT`] / [`POOL_BUFS`] in-flight reads pin the same
//!   folios at the same time. The block layer pins each read's pages at
//!   submission and unpins them at completion (often from interrupt
//!   context).
//! - `inflight_fixed_pre_attach`: [`FIXED_BUFS`] fixed buffers registered
//!   in [`Scenario::before_attach`], i.e. before gupwatch attaches its
//!   probes; `run` mixes `IORING_OP_READ_FIXED`s into them (no pin per
//!   I/O: the buffers are already pinned) with shared-pool reads, then
//!   unregisters the fixed buffers, so gupwatch sees unpins of pins it
//!   could never have seen taken. Those must be reported as taken before
//!   attach, never as a leak or an unbalanced unpin of its own pins.
//!
//! - `inflight_odirect_owners`: the same reads, from [`OWNERS`] processes
//!   at once (each with its own ring, [`IN_FLIGHT`] / [`OWNERS`] reads in
//!   flight) into one pool shared between them (`MAP_SHARED`), so each
//!   folio has several owners at the same time, and completions unpin in
//!   whichever task the interrupt hit.
//!
//! For all three, `gupwatch check` requires the pin ledger to hold
//! ([`Scenario::ledger_must_hold`]): no untracked pin, no unbalanced unpin
//! beyond the pre-attach ones.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::uring::{Sqe, Uring, OP_READ, OP_READ_FIXED};
use super::{
    emulated_direct_io_fs, page_size, sequence, sys_err, ExpectedPath, Mapping, PinPath, Scenario, ScenarioError,
    ScratchFile, Spec, SEED_DEST, SEED_SOURCE,
};
use crate::kernel::vmstat::FollPinDelta;

/// Reads in flight at once (submitted together, reaped together).
pub const IN_FLIGHT: u32 = 32;
/// Buffers the plain reads share.
pub const POOL_BUFS: usize = 4;
/// Bytes of one read (and of one pool or fixed buffer).
const IO_BYTES: usize = 16 << 10;
/// The scratch file: one read's worth per in-flight slot, so the reads of
/// a round cover different blocks.
const FILE_BYTES: usize = IN_FLIGHT as usize * IO_BYTES;
/// Rounds of [`IN_FLIGHT`] reads per run.
const ROUNDS: u32 = 16;
/// Fixed buffers registered before attach.
pub const FIXED_BUFS: usize = 16;
/// Processes reading into the shared pool at once (`inflight_odirect_owners`).
pub const OWNERS: u32 = 4;

fn io_pages() -> u64 {
    (IO_BYTES / page_size()) as u64
}

/// Which of the two scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shared,
    FixedPreAttach,
    SharedOwners,
}

/// Fixed buffers and the ring they are registered with.
struct Fixed {
    // Field order is drop order: closing the ring releases the pins (if
    // still registered) before the memory is unmapped.
    ring: Uring,
    bufs: Mapping,
    registered: bool,
    /// Registered before the probes attached.
    before_attach: bool,
}

impl Fixed {
    fn register(scenario: &'static str, before_attach: bool) -> Result<Fixed, ScenarioError> {
        let ring = Uring::new(2 * IN_FLIGHT).map_err(|e| sys_err(scenario, "io_uring_setup", e))?;
        let bufs = Mapping::new_prefaulted(scenario, FIXED_BUFS * IO_BYTES, SEED_DEST)?;
        let iovecs: Vec<libc::iovec> = (0..FIXED_BUFS)
            // SAFETY: offsets inside the mapping.
            .map(|i| libc::iovec { iov_base: unsafe { bufs.addr().cast::<u8>().add(i * IO_BYTES) }.cast(), iov_len: IO_BYTES })
            .collect();
        ring.register_buffers(&iovecs).map_err(|e| sys_err(scenario, super::REGISTER, e))?;
        Ok(Fixed { ring, bufs, registered: true, before_attach })
    }
}

struct State {
    // Field order is drop order: the ring (and its in-flight reads, if a
    // run failed half-way) goes before the file and the buffers.
    fixed: Option<Fixed>,
    ring: Option<Uring>,
    file: File,
    scratch: ScratchFile,
    pool: Mapping,
}

/// See the module documentation.
pub struct Inflight {
    kind: Kind,
    dir: PathBuf,
    /// Registered in `before_attach`, kept across `prepare`.
    pre: Option<Fixed>,
    state: Option<State>,
}

/// Both `inflight_` scenarios, with their O_DIRECT files in `dir`.
pub fn scenarios(dir: &std::path::Path) -> Vec<Box<dyn Scenario>> {
    [Kind::Shared, Kind::FixedPreAttach, Kind::SharedOwners]
        .into_iter()
        .map(|kind| Box::new(Inflight { kind, dir: dir.to_path_buf(), pre: None, state: None }) as Box<dyn Scenario>)
        .collect()
}

impl Inflight {
    /// Plain reads per round (the rest of the slots are fixed reads).
    fn plain_per_round(&self) -> u32 {
        match self.kind {
            Kind::Shared | Kind::SharedOwners => IN_FLIGHT,
            Kind::FixedPreAttach => IN_FLIGHT / 2,
        }
    }

    fn pinned_pages(&self) -> u64 {
        ROUNDS as u64 * self.plain_per_round() as u64 * io_pages()
    }

    /// One round: every read queued, submitted at once, then all reaped.
    fn round(&self, st: &mut State, round: u32) -> Result<(), ScenarioError> {
        let name = self.name();
        let fd = st.file.as_raw_fd();
        let plain = self.plain_per_round();
        let fixed_bufs = st.fixed.as_ref().map_or(0, |f| f.bufs.addr() as u64);
        let ring = match (&mut st.fixed, &mut st.ring) {
            (Some(f), _) => &mut f.ring,
            (None, Some(r)) => r,
            (None, None) => return Err(sequence(name, "run", "without prepare()")),
        };
        for i in 0..IN_FLIGHT {
            let slot = (i + round) % IN_FLIGHT;
            let off = (slot as usize * IO_BYTES) as u64;
            let sqe = if i < plain {
                let buf = i as usize % POOL_BUFS;
                // SAFETY: an offset inside the pool mapping.
                let addr = unsafe { st.pool.addr().cast::<u8>().add(buf * IO_BYTES) } as u64;
                Sqe { opcode: OP_READ, fd, off, addr, len: IO_BYTES as u32, user_data: i as u64, ..Sqe::default() }
            } else {
                let idx = (i - plain) as usize % FIXED_BUFS;
                Sqe {
                    opcode: OP_READ_FIXED,
                    fd,
                    off,
                    addr: fixed_bufs + (idx * IO_BYTES) as u64,
                    len: IO_BYTES as u32,
                    buf_index: idx as u16,
                    user_data: i as u64,
                    ..Sqe::default()
                }
            };
            if !ring.push(sqe) {
                return Err(sequence(name, "run", "with a full submission queue (ring too small)"));
            }
        }
        ring.submit_and_wait(IN_FLIGHT).map_err(|e| sys_err(name, "io_uring_enter", e))?;
        let mut reaped = 0;
        while reaped < IN_FLIGHT {
            let Some(cqe) = ring.reap() else {
                ring.submit_and_wait(IN_FLIGHT - reaped).map_err(|e| sys_err(name, "io_uring_enter", e))?;
                continue;
            };
            reaped += 1;
            if cqe.res < 0 {
                return Err(sys_err(name, "io_uring read (O_DIRECT)", std::io::Error::from_raw_os_error(-cqe.res)));
            }
            if cqe.res as usize != IO_BYTES {
                return Err(ScenarioError::ShortTransfer {
                    scenario: name,
                    syscall: "io_uring read (O_DIRECT)",
                    expected: IO_BYTES,
                    got: cqe.res as usize,
                });
            }
        }
        Ok(())
    }
}

impl Scenario for Inflight {
    fn spec(&self) -> Spec {
        let (name, description) = match self.kind {
            Kind::Shared => (
                "inflight_odirect_shared",
                "io_uring O_DIRECT reads, 32 in flight into 4 shared 16 KiB buffers, 16 rounds",
            ),
            Kind::FixedPreAttach => (
                "inflight_fixed_pre_attach",
                "16 fixed buffers registered before attach; 16 READ_FIXED + 16 shared-pool reads in flight, 16 rounds; then unregister",
            ),
            Kind::SharedOwners => (
                "inflight_odirect_owners",
                "4 processes, 8 io_uring O_DIRECT reads in flight each, into 4 16 KiB buffers they all share, 16 rounds",
            ),
        };
        Spec::pins(name, description, PinPath::DirectIo, self.pinned_pages(), ExpectedPath::Any)
    }

    fn expected_delta(&self) -> FollPinDelta {
        let pinned = self.pinned_pages();
        let fixed = match self.kind {
            Kind::Shared | Kind::SharedOwners => 0,
            Kind::FixedPreAttach => FIXED_BUFS as u64 * io_pages(),
        };
        FollPinDelta { acquired: pinned, released: pinned + fixed }
    }

    fn ledger_must_hold(&self) -> bool {
        true
    }

    fn before_attach(&mut self) -> Result<u64, ScenarioError> {
        if self.kind != Kind::FixedPreAttach {
            return Ok(0);
        }
        self.pre = Some(Fixed::register(self.name(), true)?);
        Ok(FIXED_BUFS as u64 * io_pages())
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        // Keep the pre-attach registration; drop any earlier set-up.
        if let Some(old) = self.state.take() {
            if self.pre.is_none() {
                self.pre = old.fixed.filter(|f| f.before_attach && f.registered);
            }
        }
        if let Some(fs) = emulated_direct_io_fs(name, &self.dir)? {
            return Err(ScenarioError::EmulatedDirectIo { scenario: name, dir: self.dir.clone(), fs });
        }
        let scratch = ScratchFile::create(name, &self.dir, FILE_BYTES, SEED_SOURCE)?;
        let file = scratch.open_direct(name, false)?;
        let pool = match self.kind {
            Kind::SharedOwners => shared_pool(name)?,
            _ => Mapping::new_prefaulted(name, POOL_BUFS * IO_BYTES, SEED_DEST)?,
        };
        let (fixed, ring) = match self.kind {
            Kind::Shared => (None, Some(Uring::new(IN_FLIGHT).map_err(|e| sys_err(name, "io_uring_setup", e))?)),
            // Each owner makes its own ring in `run`.
            Kind::SharedOwners => (None, None),
            // Without a before-attach phase (a plain workload), the pins
            // are simply taken after attach.
            Kind::FixedPreAttach => match self.pre.take() {
                Some(f) => (Some(f), None),
                None => (Some(Fixed::register(name, false)?), None),
            },
        };
        self.state = Some(State { fixed, ring, file, scratch, pool });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let mut st = self.state.take().ok_or_else(|| sequence(self.name(), "run", "without prepare()"))?;
        if self.kind == Kind::SharedOwners {
            let res = owners(self.name(), &st);
            self.state = Some(st);
            return res;
        }
        let res = (0..ROUNDS).try_for_each(|r| self.round(&mut st, r)).and_then(|()| match st.fixed.as_mut() {
            Some(f) if f.registered => {
                f.ring.unregister_buffers().map_err(|e| sys_err(self.name(), super::UNREGISTER, e))?;
                f.registered = false;
                Ok(())
            }
            _ => Ok(()),
        });
        self.state = Some(st);
        res
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        self.pre = None;
        if let Some(st) = self.state.take() {
            drop(st.fixed);
            drop(st.ring);
            drop(st.file);
            st.scratch.remove(self.name())?;
        }
        Ok(())
    }
}

/// The pool as one `MAP_SHARED` anonymous mapping, written in full: after
/// `fork` every owner's reads land in (and pin) the same folios.
fn shared_pool(name: &'static str) -> Result<Mapping, ScenarioError> {
    let len = POOL_BUFS * IO_BYTES;
    let ptr = super::mmap_new(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, None)
        .map_err(|e| sys_err(name, "mmap(MAP_SHARED)", e))?;
    let mut pool = Mapping { ptr, len };
    pool.fill(SEED_DEST);
    Ok(pool)
}

/// One owner's reads: [`ROUNDS`] rounds of `IN_FLIGHT / OWNERS` reads into
/// the shared pool on a ring of its own. Runs in a forked child: only raw
/// syscalls and stack values (no allocation); an errno on failure.
fn owner_reads(fd: i32, pool: u64, owner: u32) -> Result<(), i32> {
    let per = IN_FLIGHT / OWNERS;
    let mut ring = Uring::new(per).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    for round in 0..ROUNDS {
        for i in 0..per {
            let slot = (owner * per + i + round) % IN_FLIGHT;
            let buf = (owner + i) as usize % POOL_BUFS;
            let sqe = Sqe {
                opcode: OP_READ,
                fd,
                off: (slot as usize * IO_BYTES) as u64,
                addr: pool + (buf * IO_BYTES) as u64,
                len: IO_BYTES as u32,
                user_data: i as u64,
                ..Sqe::default()
            };
            if !ring.push(sqe) {
                return Err(libc::EOVERFLOW);
            }
        }
        ring.submit_and_wait(per).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let mut reaped = 0;
        while reaped < per {
            let Some(cqe) = ring.reap() else {
                ring.submit_and_wait(per - reaped).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                continue;
            };
            reaped += 1;
            if cqe.res < 0 {
                return Err(-cqe.res);
            }
            if cqe.res as usize != IO_BYTES {
                return Err(libc::EIO);
            }
        }
    }
    Ok(())
}

/// Forks the [`OWNERS`] and waits for them all; the first that failed.
fn owners(name: &'static str, st: &State) -> Result<(), ScenarioError> {
    let fd = st.file.as_raw_fd();
    let pool = st.pool.addr() as u64;
    let mut pids = vec![];
    let mut fork_error = None;
    for owner in 0..OWNERS {
        // SAFETY: the child runs owner_reads (raw syscalls on the shared
        // pool and a ring of its own, no allocation), then _exit.
        match unsafe { libc::fork() } {
            0 => {
                let code = match owner_reads(fd, pool, owner) {
                    Ok(()) => 0,
                    // The errno in the exit status (errnos fit in 8 bits).
                    Err(e) => e.clamp(1, 255),
                };
                // SAFETY: ends the child without the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            p if p < 0 => {
                fork_error = Some(std::io::Error::last_os_error());
                break;
            }
            p => pids.push(p),
        }
    }
    // Reap every owner that started, whatever happened.
    let waited: Vec<_> = pids.into_iter().map(|p| super::wait_for_child(name, p)).collect();
    if let Some(e) = fork_error {
        return Err(sys_err(name, "fork", e));
    }
    waited.into_iter().collect()
}
