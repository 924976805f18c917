//! RDMA memory registration: `ibv_reg_mr`, the pinner of every RDMA NIC.
//! Registering a memory region (MR) makes `ib_umem_get` (ib_core) pin the
//! whole buffer with `pin_user_pages_fast(FOLL_LONGTERM)` for as long as the
//! MR lives; deregistering it, or closing the verbs file that owns it,
//! unpins it (`unpin_user_page_range_dirty_lock`).
//!
//! gupwatch is a static binary without libibverbs, so the scenarios speak
//! the uverbs ABI themselves: the legacy `write()` command interface of
//! `/dev/infiniband/uverbs0` (`<rdma/ib_user_verbs.h>`: a command header,
//! then the command with a pointer the kernel writes its response to).
//! GET_CONTEXT, ALLOC_PD, REG_MR and DEREG_MR need no provider-specific
//! data on soft-RoCE (`rdma_rxe`), which is the device `cargo xtask test`'s
//! RDMA step gives its guest (`rdma link add rxe0 type rxe netdev eth0`).
//! Without a verbs device the scenarios are not reachable and say why.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::*;

/// The first verbs device (the only one in the test guest).
const UVERBS: &str = "/dev/infiniband/uverbs0";
/// The same, for the forked child's raw `open`.
const UVERBS_C: &[u8] = b"/dev/infiniband/uverbs0\0";

/// `enum ib_uverbs_write_cmds`.
const CMD_GET_CONTEXT: u32 = 0;
const CMD_ALLOC_PD: u32 = 3;
const CMD_REG_MR: u32 = 9;
const CMD_DEREG_MR: u32 = 13;
/// `IB_ACCESS_LOCAL_WRITE`: the device may write the memory, so the pins
/// are taken for writing (FOLL_WRITE).
const ACCESS_LOCAL_WRITE: u32 = 1;

/// What to set up so the scenarios run.
const HINT: &str = "they need an RDMA device and the ib_uverbs module, e.g. soft-RoCE: modprobe rdma_rxe \
                    ib_uverbs; rdma link add rxe0 type rxe netdev eth0 (cargo xtask test's RDMA step does it in \
                    a VM with Debian's generic kernel)";

/// `struct ib_uverbs_cmd_hdr`: sizes in 32-bit words, the header included
/// in `in_words`.
#[repr(C)]
struct CmdHdr {
    command: u32,
    in_words: u16,
    out_words: u16,
}

/// What one `write()` carries: the header, then the command.
#[repr(C)]
struct Request<T> {
    hdr: CmdHdr,
    cmd: T,
}

/// `struct ib_uverbs_get_context` and `struct ib_uverbs_alloc_pd`: only the
/// response pointer (no driver data).
#[repr(C)]
struct ResponseOnly {
    response: u64,
}

/// `struct ib_uverbs_get_context_resp`.
#[repr(C)]
#[derive(Default)]
struct GetContextResp {
    async_fd: u32,
    num_comp_vectors: u32,
}

/// `struct ib_uverbs_alloc_pd_resp`.
#[repr(C)]
#[derive(Default)]
struct AllocPdResp {
    pd_handle: u32,
}

/// `struct ib_uverbs_reg_mr`.
#[repr(C)]
struct RegMr {
    response: u64,
    start: u64,
    length: u64,
    hca_va: u64,
    pd_handle: u32,
    access_flags: u32,
}

/// `struct ib_uverbs_reg_mr_resp`.
#[repr(C)]
#[derive(Default)]
struct RegMrResp {
    mr_handle: u32,
    lkey: u32,
    rkey: u32,
}

/// `struct ib_uverbs_dereg_mr`.
#[repr(C)]
struct DeregMr {
    mr_handle: u32,
}

/// The stage of a registration that failed (what the forked child reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Stage {
    Open = 1,
    GetContext = 2,
    AllocPd = 3,
    RegMr = 4,
}

impl Stage {
    fn syscall(self) -> &'static str {
        match self {
            Stage::Open => "open(/dev/infiniband/uverbs0)",
            Stage::GetContext => "uverbs GET_CONTEXT",
            Stage::AllocPd => "uverbs ALLOC_PD",
            Stage::RegMr => "uverbs REG_MR",
        }
    }

    pub(super) fn from_u32(v: u32) -> Option<Stage> {
        [Stage::Open, Stage::GetContext, Stage::AllocPd, Stage::RegMr].into_iter().find(|s| *s as u32 == v)
    }
}

/// The calling thread's errno (after a failed libc call).
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// One legacy uverbs command on `fd`: `write()`s the header and `cmd`,
/// whose response pointer (if any) names an `out_bytes` buffer the kernel
/// fills. Raw calls only, no allocation: the forked child uses it too.
fn command<T>(fd: libc::c_int, command: u32, cmd: T, out_bytes: usize) -> Result<(), i32> {
    let len = std::mem::size_of::<Request<T>>();
    let req = Request {
        hdr: CmdHdr { command, in_words: (len / 4) as u16, out_words: (out_bytes / 4) as u16 },
        cmd,
    };
    // SAFETY: writes `len` bytes of a local; the kernel reads the request
    // and writes at most `out_bytes` to the response buffer `cmd` points
    // to, which the caller keeps alive for the call.
    let n = unsafe { libc::write(fd, (&req as *const Request<T>).cast(), len) };
    match n {
        n if n == len as isize => Ok(()),
        n if n < 0 => Err(errno()),
        _ => Err(libc::EIO),
    }
}

/// A verbs context with a protection domain on `fd`; returns the PD handle.
/// The context's async-event descriptor is closed right away (nothing
/// here waits for events).
fn context_and_pd(fd: libc::c_int) -> Result<u32, (Stage, i32)> {
    let mut ctx = GetContextResp::default();
    let response = &mut ctx as *mut GetContextResp as u64;
    command(fd, CMD_GET_CONTEXT, ResponseOnly { response }, std::mem::size_of::<GetContextResp>())
        .map_err(|e| (Stage::GetContext, e))?;
    // SAFETY: the kernel installed that descriptor for us and nothing else
    // knows it.
    unsafe { libc::close(ctx.async_fd as libc::c_int) };
    let mut pd = AllocPdResp::default();
    let response = &mut pd as *mut AllocPdResp as u64;
    command(fd, CMD_ALLOC_PD, ResponseOnly { response }, std::mem::size_of::<AllocPdResp>())
        .map_err(|e| (Stage::AllocPd, e))?;
    Ok(pd.pd_handle)
}

/// REG_MR of `len` bytes at `addr` (the MR's I/O address is the same):
/// the pins. Returns the MR handle.
fn reg_mr(fd: libc::c_int, pd_handle: u32, addr: u64, len: u64) -> Result<u32, i32> {
    let mut resp = RegMrResp::default();
    let cmd = RegMr {
        response: &mut resp as *mut RegMrResp as u64,
        start: addr,
        length: len,
        hca_va: addr,
        pd_handle,
        access_flags: ACCESS_LOCAL_WRITE,
    };
    command(fd, CMD_REG_MR, cmd, std::mem::size_of::<RegMrResp>())?;
    Ok(resp.mr_handle)
}

/// DEREG_MR: the unpins.
fn dereg_mr(fd: libc::c_int, mr_handle: u32) -> Result<(), i32> {
    command(fd, CMD_DEREG_MR, DeregMr { mr_handle }, 0)
}

/// Opens the verbs device: not reachable when there is none.
fn open_uverbs(scenario: &'static str) -> Result<OwnedFd, ScenarioError> {
    if !Path::new(UVERBS).exists() {
        return Err(ScenarioError::NotReachable { scenario, reason: format!("no {UVERBS}: {HINT}") });
    }
    let f = OpenOptions::new().read(true).write(true).open(UVERBS).map_err(|e| sys_err(scenario, Stage::Open.syscall(), e))?;
    Ok(f.into())
}

pub(super) fn stage_err(scenario: &'static str, (stage, e): (Stage, i32)) -> ScenarioError {
    sys_err(scenario, stage.syscall(), io::Error::from_raw_os_error(e))
}

/// A verbs context and PD on the device, the buffer, and the MR if
/// registered: REG_MR of 1 MiB of this process's prefaulted memory, and
/// its DEREG_MR.
pub(super) struct MrState {
    dev: OwnedFd,
    pd: u32,
    buf: Mapping,
    mr: Option<u32>,
}

impl Registrar for MrState {
    fn open(scenario: &'static str) -> Result<MrState, ScenarioError> {
        let dev = open_uverbs(scenario)?;
        let pd = context_and_pd(dev.as_raw_fd()).map_err(|e| stage_err(scenario, e))?;
        let buf = Mapping::new_prefaulted(scenario, BUFFER_BYTES, SEED_SOURCE)?;
        Ok(MrState { dev, pd, buf, mr: None })
    }

    fn buffer(&self) -> &Mapping {
        &self.buf
    }

    fn register(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        let mr = reg_mr(self.dev.as_raw_fd(), self.pd, self.buf.addr() as u64, self.buf.len as u64)
            .map_err(|e| stage_err(scenario, (Stage::RegMr, e)))?;
        self.mr = Some(mr);
        Ok(())
    }

    fn unregister(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        if let Some(mr) = self.mr.take() {
            dereg_mr(self.dev.as_raw_fd(), mr)
                .map_err(|e| sys_err(scenario, "uverbs DEREG_MR", io::Error::from_raw_os_error(e)))?;
        }
        Ok(())
    }
}

/// The in-process variants: registered and deregistered in `run`, or held.
fn in_process(held: bool) -> Box<dyn Scenario> {
    let (name, description) = if held {
        (
            "rdma_reg_mr_held",
            "uverbs REG_MR of 1 MiB kept registered after the run (outstanding LONGTERM pins, a long-held \
             leak signal); deregistered at cleanup",
        )
    } else {
        (
            "rdma_reg_mr",
            "uverbs REG_MR of 1 MiB (LOCAL_WRITE) on the first RDMA device (soft-RoCE in the VM), then \
             DEREG_MR: LONGTERM pins by ib_umem_get (pin_user_pages_fast)",
        )
    };
    let spec = Spec::pins(name, description, PinPath::RdmaRegMr, buffer_pages(), ExpectedPath::Fast);
    Box::new(Registered::<MrState>::new(spec, held))
}

/// What the forked child of [`RdmaMrExit`] leaves in the shared report
/// page: 0 and 0 when it registered, else the failed [`Stage`] and errno.
#[repr(C)]
struct ChildOutcome {
    stage: u32,
    errno: i32,
}

/// The child: faults its own copy of the buffer in, opens the device,
/// registers the buffer, writes its outcome and exits holding the MR, so
/// the kernel deregisters it when the exit closes the verbs file.
///
/// # Safety
///
/// Only in a child right after `fork`: raw calls, no allocation. `buf`
/// must be a private read-write mapping of `len` bytes, `report` a shared
/// one with room for a [`ChildOutcome`].
unsafe fn registering_child(buf: *mut u8, len: usize, report: *mut ChildOutcome) -> ! {
    std::ptr::write_bytes(buf, SEED_SOURCE, len);
    let fd = libc::open(UVERBS_C.as_ptr().cast(), libc::O_RDWR);
    let outcome = if fd < 0 {
        Err((Stage::Open, errno()))
    } else {
        context_and_pd(fd).and_then(|pd| reg_mr(fd, pd, buf as u64, len as u64).map_err(|e| (Stage::RegMr, e)))
    };
    let (stage, errno) = match outcome {
        Ok(_) => (0, 0),
        Err((s, e)) => (s as u32, e),
    };
    report.write_volatile(ChildOutcome { stage, errno });
    libc::_exit(0)
}

/// Opens the device, makes a context and PD, and registers `len` bytes at
/// `addr`, leaving the descriptor open and returning it (the forked
/// creator of `rdma_handoff_fork` hands it to its child, that of
/// `rdma_orphan_in_flight` sends it into a socket).
///
/// # Safety
///
/// Only in a forked child: raw calls, no allocation; `addr` is its own
/// faulted-in memory of `len` bytes.
pub(super) unsafe fn register_raw(addr: u64, len: u64) -> Result<libc::c_int, (Stage, i32)> {
    let fd = libc::open(UVERBS_C.as_ptr().cast(), libc::O_RDWR);
    if fd < 0 {
        return Err((Stage::Open, errno()));
    }
    let pd = context_and_pd(fd)?;
    reg_mr(fd, pd, addr, len).map_err(|e| (Stage::RegMr, e))?;
    Ok(fd)
}

/// Whether this process can open a verbs context (so a machine without
/// one fails in `prepare`, not in `run`).
pub(super) fn check_reachable(scenario: &'static str) -> Result<(), ScenarioError> {
    let dev = open_uverbs(scenario)?;
    context_and_pd(dev.as_raw_fd()).map_err(|e| stage_err(scenario, e))?;
    Ok(())
}

/// The child's buffer (never touched here) and the page it reports in.
pub(super) struct ExitState {
    buf: Mapping,
    report: Mapping,
}

/// A forked child registers a 1 MiB MR of its own memory and exits holding
/// it: the exit closes its verbs file, and the kernel deregisters the MR.
/// The run waits until `/proc/vmstat` shows the release.
pub(super) struct RdmaMrExit {
    pub(super) state: Option<ExitState>,
    /// How long the last `run` waited for the release.
    pub(super) release_wait: Option<Duration>,
}

impl Scenario for RdmaMrExit {
    fn spec(&self) -> Spec {
        Spec::pins(
            "rdma_reg_mr_exit",
            "a forked child registers a 1 MiB MR of its own memory and exits holding it; the kernel \
             deregisters it when the exit closes the verbs file, and the run waits until vmstat shows it",
            PinPath::RdmaRegMr,
            buffer_pages(),
            ExpectedPath::Fast,
        )
    }

    fn expected_delta(&self) -> FollPinDelta {
        let pages = self.pages();
        FollPinDelta { acquired: pages, released: pages }
    }

    /// Maps the buffers and checks that this process can open a verbs
    /// context (so a machine without one fails here, not in `run`).
    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        self.release_wait = None;
        let name = self.name();
        let dev = open_uverbs(name)?;
        context_and_pd(dev.as_raw_fd()).map_err(|e| stage_err(name, e))?;
        drop(dev);
        let buf = Mapping::new_untouched(name, BUFFER_BYTES)?;
        let page = page_size();
        let ptr = mmap_new(page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, None)
            .map_err(|e| sys_err(name, "mmap", e))?;
        self.state = Some(ExitState { buf, report: Mapping { ptr, len: page } });
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let st = prepared(&mut self.state, name)?;
        let report = st.report.addr().cast::<ChildOutcome>();
        // SAFETY: the report page is ours, shared, and large enough.
        unsafe { report.write_volatile(ChildOutcome { stage: u32::MAX, errno: 0 }) };
        let base = PinBaseline::read(name)?;
        // SAFETY: the child only makes raw calls on memory it owns (its
        // copy of the untouched buffer, the shared report page) and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys_err(name, "fork", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: we are the child, right after fork.
            unsafe { registering_child(st.buf.ptr.as_ptr(), st.buf.len, report) }
        }
        wait_for_child(name, pid)?;
        // SAFETY: the child has exited; the page holds what it wrote.
        let out = unsafe { report.read_volatile() };
        if out.stage != 0 {
            let stage = Stage::from_u32(out.stage).ok_or_else(|| {
                sys_err(name, "fork", io::Error::other("the forked child exited without a report"))
            })?;
            return Err(stage_err(name, (stage, out.errno)));
        }
        self.release_wait = Some(base.wait_for_release(name, "the registering child's exit", buffer_pages())?);
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        self.state = None;
        Ok(())
    }
}

/// The family, for `gupwatch check`.
pub(super) fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        in_process(false),
        in_process(true),
        Box::new(RdmaMrExit { state: None, release_wait: None }),
        Box::new(super::handoff::IoUringHandoff::new(super::handoff::HandoffKind::RdmaFork)),
        Box::new(super::handoff::IoUringHandoff::new(super::handoff::HandoffKind::RdmaPass)),
        Box::new(super::handoff::IoUringHandoff::new(super::handoff::HandoffKind::RdmaInFlight)),
    ]
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    /// Wraps a descriptor the test just created.
    fn owned(fd: libc::c_int) -> OwnedFd {
        // SAFETY: the tests pass descriptors they just created.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn layouts_are_the_kernels() {
        // <rdma/ib_user_verbs.h>: the write sizes the kernel checks
        // (in_words * 4 == count, out_words * 4 >= response size).
        assert_eq!(std::mem::size_of::<CmdHdr>(), 8);
        assert_eq!(std::mem::size_of::<Request<ResponseOnly>>(), 16);
        assert_eq!(std::mem::size_of::<Request<RegMr>>(), 48);
        assert_eq!(std::mem::size_of::<Request<DeregMr>>(), 12);
        assert_eq!(std::mem::size_of::<GetContextResp>(), 8);
        assert_eq!(std::mem::size_of::<RegMrResp>(), 12);
        assert_eq!(UVERBS_C, format!("{UVERBS}\0").as_bytes());
    }

    /// A command reaches the descriptor as header + command, sized in words.
    #[test]
    fn command_writes_header_and_body() {
        let mut fds = [-1; 2];
        // SAFETY: pipe writes two new descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (rx, tx) = (owned(fds[0]), owned(fds[1]));
        command(tx.as_raw_fd(), CMD_DEREG_MR, DeregMr { mr_handle: 7 }, 0).unwrap();
        let mut got = [0u8; 12];
        // SAFETY: reads into a local array of that size.
        assert_eq!(unsafe { libc::read(rx.as_raw_fd(), got.as_mut_ptr().cast(), 12) }, 12);
        assert_eq!(got, [13, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0]);
        drop(rx);
        assert_eq!(Stage::from_u32(4), Some(Stage::RegMr));
        assert_eq!(Stage::from_u32(0), None);
    }

    #[test]
    fn without_a_device_not_reachable() {
        if Path::new(UVERBS).exists() {
            return;
        }
        for mut s in scenarios() {
            let e = s.prepare().unwrap_err();
            assert!(matches!(e, ScenarioError::NotReachable { .. }), "{}: {e}", s.name());
        }
    }
}
