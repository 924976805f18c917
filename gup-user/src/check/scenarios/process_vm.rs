//! `process_vm_readv`/`process_vm_writev` on this process: the remote side
//! is pinned by `pin_user_pages_remote` (short-term, slow path only).

use std::io::{self};


use super::*;

// ---------------------------------------------------------------------------
// process_vm_readv / process_vm_writev

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Read,
    Write,
}


pub(super) struct ProcessVmState {
    /// The `local_iov` side (copied with copy_to/from_user, not pinned).
    pub(super) local: Mapping,
    /// The `remote_iov` side (pinned with pin_user_pages_remote).
    pub(super) remote: Mapping,
    /// A `run` has faulted the (unfaulted) remote side in.
    pub(super) ran: bool,
}

/// The variants of [`ProcessVm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProcessVmKind {
    Readv,
    Writev,
    /// `process_vm_writev` into a remote buffer left untouched (no PTEs) by
    /// `prepare`, so `pin_user_pages_remote` must fault every page in before
    /// pinning it. There is no read twin on purpose: reading untouched
    /// anonymous memory pins the shared zero page, which kernels since about
    /// 6.5 leave out of `nr_foll_pin_*` (measured on 6.18: +0/+0).
    WritevUnfaulted,
}

/// `process_vm_readv`/`process_vm_writev` on this same process.
pub(super) struct ProcessVm {
    pub(super) kind: ProcessVmKind,
    pub(super) state: Option<ProcessVmState>,
}

impl ProcessVm {
    pub(super) fn dir(&self) -> Direction {
        match self.kind {
            ProcessVmKind::Readv => Direction::Read,
            ProcessVmKind::Writev | ProcessVmKind::WritevUnfaulted => Direction::Write,
        }
    }

    pub(super) fn unfaulted(&self) -> bool {
        self.kind == ProcessVmKind::WritevUnfaulted
    }

    pub(super) fn syscall(&self) -> &'static str {
        match self.dir() {
            Direction::Read => "process_vm_readv",
            Direction::Write => "process_vm_writev",
        }
    }
}

/// `process_vm_readv`/`process_vm_writev` of one iovec each way on this
/// process; the number of bytes moved.
pub(super) fn process_vm(dir: Direction, local: libc::iovec, remote: libc::iovec) -> io::Result<usize> {
    // SAFETY: the caller hands iovecs of mappings it keeps alive for the
    // call, and no Rust reference aliases the destination side; the kernel
    // checks both against this process's address space (an inaccessible
    // remote side fails with EFAULT, it is never dereferenced by us).
    let n = unsafe {
        match dir {
            Direction::Read => libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0),
            Direction::Write => libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0),
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl Scenario for ProcessVm {
    fn reference_setup(&self) -> Option<reference::Setup> {
        let prefault = if self.unfaulted() { Prefault::None } else { Prefault::Write };
        let syscall = match self.dir() {
            Direction::Read => reference::Syscall::ProcessVmReadv,
            Direction::Write => reference::Syscall::ProcessVmWritev,
        };
        Some(reference::Setup { buffer: BufferSpec::anon(buffer_pages(), prefault), syscall, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.remote.addr() as usize, st.remote.len))
    }

    /// `pin_user_pages_remote` has no fast path: always the slow one.
    fn spec(&self) -> Spec {
        let (name, description) = match self.kind {
            ProcessVmKind::Readv => (
                "process_vm_readv",
                "process_vm_readv of 1 MiB from this process: pins the remote (source) pages",
            ),
            ProcessVmKind::Writev => (
                "process_vm_writev",
                "process_vm_writev of 1 MiB into this process: pins the remote (destination) pages",
            ),
            ProcessVmKind::WritevUnfaulted => (
                "process_vm_writev_unfaulted",
                "process_vm_writev of 1 MiB into never-touched memory: the slow path faults in \
                 and pins every remote page",
            ),
        };
        Spec::pins(name, description, PinPath::ProcessVm, buffer_pages(), ExpectedPath::Slow)
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        let name = self.name();
        let (local_seed, remote_seed) = match self.dir() {
            Direction::Read => (SEED_DEST, SEED_SOURCE),
            Direction::Write => (SEED_SOURCE, SEED_DEST),
        };
        let local = Mapping::new_prefaulted(name, BUFFER_BYTES, local_seed)?;
        let remote = if self.unfaulted() {
            Mapping::new_untouched(name, BUFFER_BYTES)?
        } else {
            Mapping::new_prefaulted(name, BUFFER_BYTES, remote_seed)?
        };
        self.state = Some(ProcessVmState {
            local,
            remote,
            ran: false,
        });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let syscall = self.syscall();
        let dir = self.dir();
        let unfaulted = self.unfaulted();
        let st = prepared(&mut self.state, name)?;
        if unfaulted {
            // An untouched destination must not be read (that would map the
            // zero page); after an earlier run, drop its pages instead so
            // this run faults them in again (MADV_DONTNEED pins nothing).
            if st.ran {
                st.remote.discard(name)?;
            }
        } else {
            // Re-arm the destination so a repeated run checks a real copy
            // (rewriting faults nothing: the pages are present and writable).
            let dest = match dir {
                Direction::Read => &mut st.local,
                Direction::Write => &mut st.remote,
            };
            if first_mismatch(dest.as_slice(), SEED_DEST).is_some() {
                dest.fill(SEED_DEST);
            }
        }
        st.ran = true;
        let n = process_vm(dir, st.local.iovec(), st.remote.iovec())
            .map_err(|e| sys_err(name, syscall, e))?;
        if n != BUFFER_BYTES {
            return Err(ScenarioError::ShortTransfer {
                scenario: name,
                syscall,
                expected: BUFFER_BYTES,
                got: n,
            });
        }
        let dest = match dir {
            Direction::Read => &st.local,
            Direction::Write => &st.remote,
        };
        verify_copy(name, syscall, dest.as_slice())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        Ok(())
    }
}

pub(super) struct ProcessVmProtNoneState {
    /// The destination (pre-faulted; must stay untouched by the kernel).
    pub(super) local: Mapping,
    /// The PROT_NONE source.
    pub(super) remote: Untouchable,
}

/// `process_vm_readv` from a PROT_NONE source: must fail with EFAULT.
pub(super) struct ProcessVmProtNone {
    pub(super) state: Option<ProcessVmProtNoneState>,
    pub(super) observed: Option<i32>,
}

impl Scenario for ProcessVmProtNone {
    fn reference_setup(&self) -> Option<reference::Setup> {
        let buffer = BufferSpec { prot: Prot::None, ..BufferSpec::anon(buffer_pages(), Prefault::None) };
        Some(reference::Setup { buffer, syscall: reference::Syscall::ProcessVmReadv, captured: None })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|st| (st.remote.ptr.as_ptr() as usize, st.remote.len))
    }

    /// The slow path's VMA check (no VM_READ, no FOLL_FORCE) refuses the
    /// first page, so nothing is pinned and process_vm_readv, having copied
    /// nothing, returns the error.
    fn spec(&self) -> Spec {
        Spec::refused(
            "process_vm_readv_prot_none",
            "process_vm_readv of 1 MiB from a PROT_NONE mapping: GUP refuses the VMA, nothing is \
             pinned (EFAULT)",
            PinPath::ProcessVm,
            libc::EFAULT,
        )
    }

    fn observed_errno(&self) -> Option<i32> {
        self.observed
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.observed = None;
        let name = self.name();
        let local = Mapping::new_prefaulted(name, BUFFER_BYTES, SEED_DEST)?;
        let remote = Untouchable::prot_none(name, BUFFER_BYTES)?;
        self.state = Some(ProcessVmProtNoneState { local, remote });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let st = prepared(&mut self.state, name)?;
        let res = process_vm(Direction::Read, st.local.iovec(), st.remote.iovec());
        refusal(&mut self.observed, name, "process_vm_readv", libc::EFAULT, res)?;
        if let Some(offset) = first_mismatch(st.local.as_slice(), SEED_DEST) {
            return Err(ScenarioError::Corrupted {
                scenario: name,
                syscall: "process_vm_readv",
                offset,
            });
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        Ok(())
    }
}
