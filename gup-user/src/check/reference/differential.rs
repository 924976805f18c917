//! Differential checking: a scenario describes the memory it hands the
//! kernel ([`Setup`]), the model predicts what the syscall's GUP calls do
//! ([`predict`]), and [`compare`] holds the prediction against what
//! gupwatch's probes and `/proc/vmstat` saw ([`Observation`]).

use std::fmt::Write as _;

use gup_common::Api;
use serde::{Deserialize, Serialize};

use super::contracts::{self, PinLedger, Violation};
use super::gup::{self, Foll, GotPage, GupOutcome};
use super::profile::KernelProfile;
use super::space::{AddressSpace, Backing, FolioId, PMD_PAGES};

/// Pages per bio: block direct I/O pins at most this many per GUP call
/// (`BIO_MAX_VECS`).
pub const BIO_MAX_VECS: u64 = 256;

/// Pages `process_vm_readv/writev` pins per GUP call
/// (`PVM_MAX_KMALLOC_PAGES / sizeof(struct page *)`).
pub const PVM_MAX_PAGES: u64 = 1024;

/// How the buffer was touched before the syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefault {
    /// Never touched: no PTE.
    None,
    /// Every page read.
    Read,
    /// Every page written.
    Write,
}

/// Permissions of the buffer's mapping at the time of the syscall (it is
/// mapped read-write, pre-faulted, then `mprotect`ed to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prot {
    /// PROT_READ | PROT_WRITE.
    ReadWrite,
    /// PROT_READ.
    ReadOnly,
    /// PROT_NONE.
    None,
}

/// The memory a scenario hands to the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSpec {
    /// Pages the syscall covers.
    pub pages: u64,
    /// What backs them.
    pub backing: Backing,
    /// MAP_SHARED (else MAP_PRIVATE).
    pub shared: bool,
    /// Permissions at syscall time.
    pub prot: Prot,
    /// How it was touched after mapping.
    pub prefault: Prefault,
    /// A forked child shares it (copy-on-write) during the syscall.
    pub shared_with_child: bool,
}

impl BufferSpec {
    /// Private anonymous memory, read-write.
    pub fn anon(pages: u64, prefault: Prefault) -> BufferSpec {
        BufferSpec { pages, backing: Backing::Anon, shared: false, prot: Prot::ReadWrite, prefault, shared_with_child: false }
    }
}

/// What the scenario's syscall does with the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    /// `process_vm_readv`: read-only remote pins of the buffer, released
    /// before the syscall returns.
    ProcessVmReadv,
    /// `process_vm_writev`: write remote pins, released before it returns.
    ProcessVmWritev,
    /// `IORING_REGISTER_BUFFERS`: LONGTERM write pins held after it returns.
    IoUringRegister,
    /// `IORING_UNREGISTER_BUFFERS` of a buffer registered beforehand (not
    /// measured): releases its pins.
    IoUringUnregister,
    /// Register (in a child), then close the ring: its teardown releases
    /// the pins before the run ends.
    IoUringRegisterThenRelease,
    /// `O_DIRECT` write: read-only, short-term pins of the source buffer.
    DirectIoWrite,
    /// `O_DIRECT` read: write, short-term pins of the destination buffer.
    DirectIoRead,
}

/// Presence of the buffer's pages, read from `/proc/self/pagemap` after the
/// scenario's set-up (before the measured run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// Runs of (present, pages), in address order.
    pub present_runs: Vec<(bool, u64)>,
    /// Pages mapped exclusively (`PM_MMAP_EXCLUSIVE`): not shared with a
    /// child.
    pub exclusive: u64,
}

impl Captured {
    /// Run-length encodes per-page presence.
    pub fn from_pages(present: &[bool], exclusive: u64) -> Captured {
        let mut runs: Vec<(bool, u64)> = vec![];
        for &p in present {
            match runs.last_mut() {
                Some((q, n)) if *q == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        Captured { present_runs: runs, exclusive }
    }

    /// Per-page presence.
    pub fn present(&self) -> Vec<bool> {
        self.present_runs.iter().flat_map(|&(p, n)| std::iter::repeat_n(p, n as usize)).collect()
    }

    /// Pages present.
    pub fn present_count(&self) -> u64 {
        self.present_runs.iter().filter(|r| r.0).map(|r| r.1).sum()
    }
}

/// A scenario's description for the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The buffer.
    pub buffer: BufferSpec,
    /// The syscall.
    pub syscall: Syscall,
    /// Presence captured from `/proc/self/pagemap`, when the buffer is in
    /// this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<Captured>,
}

/// One GUP call as the model ran it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTrace {
    /// Entry point.
    pub api: String,
    /// Pages asked for.
    pub requested: u64,
    /// Return value.
    pub ret: i64,
    /// Pages the fast walk returned.
    pub fast: u64,
    /// Pages the slow path returned.
    pub slow: u64,
    /// Pins taken and dropped inside the call.
    pub transient: u64,
    /// Why the fast walk stopped, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_stop: Option<String>,
    /// Why the slow path failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_error: Option<String>,
}

impl CallTrace {
    fn of(o: &GupOutcome) -> CallTrace {
        CallTrace {
            api: o.api.symbol().to_string(),
            requested: o.requested,
            ret: o.ret,
            fast: o.fast_returned(),
            slow: o.slow_returned(),
            transient: o.transient_fast + o.transient_slow,
            fast_stop: o.fast_stop.map(|(i, r)| format!("page {i}: {}", serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())),
            slow_error: o.slow_error.as_ref().map(|(i, e, why)| format!("page {i}: {} ({why})", crate::kernel::errno::errno_name(*e as u32))),
        }
    }
}

/// The page counts of one scenario run, in the terms of a `gupwatch
/// check` scenario report: what the model predicts and what gupwatch and
/// `/proc/vmstat` observed are compared field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCounts {
    /// FOLL_PIN pins taken, including those dropped again inside a call
    /// (gupwatch's `pinned_pages`).
    pub pinned_pages: u64,
    /// FOLL_PIN pins released during the run.
    pub unpinned_pages: u64,
    /// Pins the fast walk took (including transient ones).
    pub fast_pages: u64,
    /// Pins the slow path took (including transient ones).
    pub slow_pages: u64,
    /// Pins taken and dropped inside the GUP calls.
    pub undone_pages: u64,
    /// FOLL_GET references taken.
    pub referenced_pages: u64,
    /// LONGTERM pins returned.
    pub longterm_pages: u64,
    /// Change of `nr_foll_pin_acquired`.
    pub vmstat_acquired: u64,
    /// Change of `nr_foll_pin_released`.
    pub vmstat_released: u64,
}

/// What the model says the scenario's run makes the kernel do, in the terms
/// of a `gupwatch check` scenario report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// The page counts (in the JSON, at the top level as before).
    #[serde(flatten)]
    pub counts: PageCounts,
    /// The failing GUP calls, as `function:ERRNO` (gupwatch's `errors`
    /// keys).
    pub error: Option<String>,
    /// The errno the syscall returns.
    pub syscall_errno: Option<i32>,
    /// The GUP calls, in order.
    pub calls: Vec<CallTrace>,
    /// Contract violations in the model's own calls (a model bug).
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub model_violations: Vec<Violation>,
}

/// Where the model puts the buffer (page number).
const BUFFER_VPN: u64 = 0x7f00_0000;

/// Builds the address space a setup describes: map, pre-fault, protect,
/// fork; captured presence overrides the description page by page (a page
/// the description has but pagemap lacks is dropped; one pagemap has but
/// the description lacks is faulted in for reading). Returns the space and
/// what the capture changed.
pub fn build(setup: &Setup) -> (AddressSpace, Vec<String>) {
    let b = &setup.buffer;
    let mut s = AddressSpace::new();
    let map_pages = if b.backing == Backing::Hugetlb { b.pages.div_ceil(PMD_PAGES) * PMD_PAGES } else { b.pages };
    let (read, write) = match (b.prot, b.prefault) {
        (Prot::None, Prefault::None) => (false, false),
        _ => (true, true),
    };
    let vi = s.map(BUFFER_VPN, map_pages, b.backing, b.shared, read, write, None).expect("fresh space");
    let mut notes = vec![];
    for vpn in BUFFER_VPN..BUFFER_VPN + b.pages {
        let r = match b.prefault {
            Prefault::None => Ok(()),
            Prefault::Read => s.touch(vpn, false),
            Prefault::Write => s.touch(vpn, true),
        };
        if r.is_err() {
            notes.push(format!("pre-faulting page {} failed", vpn - BUFFER_VPN));
            break;
        }
    }
    match b.prot {
        Prot::ReadWrite => {}
        Prot::ReadOnly => s.mprotect(vi, true, false),
        Prot::None => s.mprotect(vi, false, false),
    }
    if let Some(c) = &setup.captured {
        let present = c.present();
        let (mut dropped, mut added) = (0, 0);
        for (i, &p) in present.iter().enumerate().take(b.pages as usize) {
            let vpn = BUFFER_VPN + i as u64;
            let have = s.pte(vpn).is_some();
            if have && !p && b.backing != Backing::Hugetlb {
                s.vmas[vi].ptes[i] = None;
                dropped += 1;
            } else if !have && p && s.fault(vpn, super::space::FaultKind::Read).is_ok() {
                added += 1;
            }
        }
        if dropped + added > 0 {
            notes.push(format!("pagemap: {dropped} pages the description has were not present, {added} it lacks were"));
        }
    }
    if b.shared_with_child {
        s.fork();
    }
    (s, notes)
}

/// Pins `pages` from `start` in calls of at most `chunk` pages, as a
/// caller that loops over short results does; stops at the first failure.
#[allow(clippy::too_many_arguments)]
fn pin_in_chunks(
    space: &mut AddressSpace,
    profile: &KernelProfile,
    api: Api,
    start: u64,
    pages: u64,
    chunk: u64,
    flags: Foll,
    calls: &mut Vec<GupOutcome>,
) -> Result<Vec<GotPage>, i32> {
    let mut got = vec![];
    let mut at = 0;
    while at < pages {
        let n = chunk.min(pages - at);
        let o = gup::gup(space, profile, api, start + at, n, flags);
        let ret = o.ret;
        got.extend_from_slice(&o.pages);
        calls.push(o);
        if ret <= 0 {
            return Err(if ret < 0 { (-ret) as i32 } else { libc::EFAULT });
        }
        at += ret as u64;
    }
    Ok(got)
}

/// Runs the scenario's syscall on the model: its GUP calls and what the
/// caller does with the pages (keep, release, refuse).
pub fn predict(profile: &KernelProfile, setup: &Setup) -> Prediction {
    let (mut s, _notes) = build(setup);
    let b = &setup.buffer;
    let n = b.pages;
    let mut calls: Vec<GupOutcome> = vec![];
    let mut ledger = PinLedger::default();
    let mut violations = vec![];
    // Pins released by the caller during the run (not inside GUP).
    let mut released: Vec<GotPage> = vec![];
    let mut folio_releases: Vec<(FolioId, u64)> = vec![];
    let mut syscall_errno = None;
    let write = Foll { write: true, longterm: false, force: false };
    let read = Foll::default();

    match setup.syscall {
        Syscall::ProcessVmReadv | Syscall::ProcessVmWritev | Syscall::DirectIoWrite | Syscall::DirectIoRead => {
            // Both pin the buffer a chunk at a time (process_vm_rw's page
            // array, a bio's vectors); a failing chunk ends the syscall,
            // which fails only when nothing was pinned.
            let dio_api = if profile.direct_io_pins { Api::PinUserPagesFast } else { Api::GetUserPagesFast };
            let (api, chunk, flags) = match setup.syscall {
                Syscall::ProcessVmWritev => (Api::PinUserPagesRemote, PVM_MAX_PAGES, write),
                Syscall::ProcessVmReadv => (Api::PinUserPagesRemote, PVM_MAX_PAGES, read),
                // A read from the file writes into the buffer.
                Syscall::DirectIoRead => (dio_api, BIO_MAX_VECS, write),
                // DirectIoWrite, the only one left: the buffer is read.
                _ => (dio_api, BIO_MAX_VECS, read),
            };
            match pin_in_chunks(&mut s, profile, api, BUFFER_VPN, n, chunk, flags, &mut calls) {
                Ok(got) => released.extend(got),
                Err(e) => {
                    let got: Vec<GotPage> = calls.iter().flat_map(|c| c.pages.clone()).collect();
                    released.extend(got.iter().copied());
                    if got.is_empty() {
                        syscall_errno = Some(e);
                    }
                }
            }
            calls.iter().for_each(|c| ledger.took(&c.pages));
        }
        Syscall::IoUringRegister | Syscall::IoUringRegisterThenRelease => match register(&mut s, profile, b, &mut calls, &mut ledger) {
            Ok(got) => {
                if setup.syscall == Syscall::IoUringRegisterThenRelease {
                    released.extend(got);
                } else if profile.io_uring_coalesces {
                    // io_coalesce_buffer: one pin per large folio stays.
                    let mut first = std::collections::BTreeSet::new();
                    for p in got {
                        if s.folio(p.folio).is_large() && !first.insert(p.folio) {
                            released.push(p);
                        }
                    }
                }
            }
            Err((e, got)) => {
                syscall_errno = Some(e);
                released.extend(got);
            }
        },
        Syscall::IoUringUnregister => {
            unregister(&mut s, profile, n, &mut ledger, &mut folio_releases, &mut violations);
        }
    }
    for c in &calls {
        violations.extend(contracts::check_outcome(c));
    }
    violations.extend(ledger.released(&released));
    if let Err(e) = gup::unpin(&mut s, profile, &released) {
        violations.push(Violation { contract: "unpinned_exactly_once", detail: e });
    }
    for (f, refs) in folio_releases {
        if let Err(e) = gup::unpin_folio(&mut s, profile, f, refs) {
            violations.push(Violation { contract: "unpinned_exactly_once", detail: e });
        }
    }
    if let Some(e) = s.invariant_violation() {
        violations.push(Violation { contract: "model_invariant", detail: e });
    }

    let mut p = Prediction { syscall_errno, model_violations: violations, ..Prediction::default() };
    tally(&mut p, &s, setup, profile, &calls, &released);
    p
}

/// How io_uring pins a registered buffer.
const LONGTERM_WRITE: Foll = Foll { write: true, longterm: true, force: false };

/// io_uring's buffer registration on the model: one long-term pin of the
/// whole buffer; a partial pin, or file-backed memory where io_uring
/// refuses it, fails and hands back what it got for release.
fn register(
    s: &mut AddressSpace,
    profile: &KernelProfile,
    b: &BufferSpec,
    calls: &mut Vec<GupOutcome>,
    ledger: &mut PinLedger,
) -> Result<Vec<GotPage>, (i32, Vec<GotPage>)> {
    let n = b.pages;
    let o = gup::gup(s, profile, profile.io_uring_api, BUFFER_VPN, n, LONGTERM_WRITE);
    let got = o.pages.clone();
    let ret = o.ret;
    ledger.took(&got);
    calls.push(o);
    if ret < 0 {
        return Err(((-ret) as i32, vec![]));
    }
    if (ret as u64) < n {
        // Partial: io_uring releases what it got and fails.
        return Err((libc::EFAULT, got));
    }
    if profile.io_uring_checks_file_vmas && !matches!(b.backing, Backing::Anon | Backing::Shmem | Backing::Hugetlb) {
        // io_pin_pages before 6.5: "don't support file backed memory".
        return Err((libc::EOPNOTSUPP, got));
    }
    Ok(got)
}

/// io_uring's unregistration on the model: the buffer was registered
/// before the run (pins outside the window), and the run releases it.
fn unregister(
    s: &mut AddressSpace,
    profile: &KernelProfile,
    n: u64,
    ledger: &mut PinLedger,
    folio_releases: &mut Vec<(FolioId, u64)>,
    violations: &mut Vec<Violation>,
) {
    // Registered before the run: pins outside the window.
    let o = gup::gup(s, profile, profile.io_uring_api, BUFFER_VPN, n, LONGTERM_WRITE);
    ledger.took(&o.pages);
    s.vmstat = Default::default();
    let mut held = o.pages;
    if profile.io_uring_coalesces {
        let mut by_folio: std::collections::BTreeMap<FolioId, u64> = Default::default();
        let mut keep = vec![];
        for p in held.drain(..) {
            if s.folio(p.folio).is_large() {
                let c = by_folio.entry(p.folio).or_default();
                *c += 1;
                if *c > 1 {
                    let _ = gup::unpin(s, profile, &[p]);
                    let _ = ledger.released(&[p]);
                    s.vmstat = Default::default();
                    continue;
                }
            }
            keep.push(p);
        }
        held = keep;
    }
    // io_buffer_unmap: unpin_user_folio per buffer page (or folio).
    for p in &held {
        folio_releases.push((p.folio, 1));
    }
    violations.extend(ledger.released(&held));
}

/// The prediction's counts from the model's GUP calls and the caller's
/// releases.
fn tally(p: &mut Prediction, s: &AddressSpace, setup: &Setup, profile: &KernelProfile, calls: &[GupOutcome], released: &[GotPage]) {
    for c in calls {
        let transient = c.transient_fast + c.transient_slow;
        if c.pins() {
            p.counts.pinned_pages += c.returned() + transient;
            p.counts.undone_pages += transient;
            p.counts.fast_pages += c.fast_returned() + c.transient_fast;
            p.counts.slow_pages += c.slow_returned() + c.transient_slow;
            if c.flags.longterm {
                p.counts.longterm_pages += c.returned();
            }
        } else {
            p.counts.referenced_pages += c.returned();
        }
        if c.ret < 0 {
            p.error = Some(format!("{}:{}", c.api.symbol(), crate::kernel::errno::errno_name((-c.ret) as u32)));
        }
        p.calls.push(CallTrace::of(c));
    }
    let pin_releases = released.iter().filter(|g| g.pin).count() as u64;
    let folio_pins: u64 = folio_releases_total(setup, profile, calls);
    p.counts.unpinned_pages = p.counts.undone_pages + pin_releases + folio_pins;
    p.counts.vmstat_acquired = s.vmstat.acquired;
    p.counts.vmstat_released = s.vmstat.released;
}

/// Pins the unregister path releases (counted per buffer page or folio).
fn folio_releases_total(setup: &Setup, profile: &KernelProfile, _calls: &[GupOutcome]) -> u64 {
    if setup.syscall != Syscall::IoUringUnregister {
        return 0;
    }
    let n = setup.buffer.pages;
    if profile.io_uring_coalesces && setup.buffer.backing == Backing::Hugetlb {
        n.div_ceil(PMD_PAGES)
    } else {
        n
    }
}

/// What gupwatch and `/proc/vmstat` saw during a scenario's run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What gupwatch's counters and `/proc/vmstat` changed by.
    pub counts: PageCounts,
    /// Failed GUP calls, `function:ERRNO`.
    pub errors: Vec<String>,
    /// The syscall's errno.
    pub syscall_errno: Option<i32>,
    /// Whether the fast/slow split was measured.
    pub fast_path_split: bool,
}

/// The differences between a prediction and an observation, in words;
/// empty when they agree.
pub fn compare(p: &Prediction, o: &Observation) -> Vec<String> {
    let mut out = vec![];
    let mut num = |what: &str, model: u64, kernel: u64| {
        if model != kernel {
            out.push(format!("{what}: model {model}, kernel {kernel}"));
        }
    };
    num("pinned_pages", p.counts.pinned_pages, o.counts.pinned_pages);
    num("unpinned_pages", p.counts.unpinned_pages, o.counts.unpinned_pages);
    if o.fast_path_split {
        num("fast_pages", p.counts.fast_pages, o.counts.fast_pages);
        num("slow_pages", p.counts.slow_pages, o.counts.slow_pages);
    }
    num("undone_pages", p.counts.undone_pages, o.counts.undone_pages);
    num("referenced_pages", p.counts.referenced_pages, o.counts.referenced_pages);
    num("longterm_pages", p.counts.longterm_pages, o.counts.longterm_pages);
    num("vmstat_acquired", p.counts.vmstat_acquired, o.counts.vmstat_acquired);
    num("vmstat_released", p.counts.vmstat_released, o.counts.vmstat_released);
    let seen: Vec<&str> = o.errors.iter().map(String::as_str).collect();
    let want: Vec<&str> = p.error.iter().map(String::as_str).collect();
    if seen != want {
        out.push(format!("error: model {}, kernel {}", fmt_list(&want), fmt_list(&seen)));
    }
    if p.syscall_errno != o.syscall_errno {
        let name = |e: Option<i32>| e.map_or("success".to_string(), |e| crate::kernel::errno::errno_name(e as u32));
        out.push(format!("syscall: model {}, kernel {}", name(p.syscall_errno), name(o.syscall_errno)));
    }
    for v in &p.model_violations {
        out.push(format!("model broke its own contract {}: {}", v.contract, v.detail));
    }
    out
}

fn fmt_list(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A one-line account of the prediction, for reports.
pub fn explain(p: &Prediction) -> String {
    let mut s = String::new();
    for (i, c) in p.calls.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        let _ = write!(s, "{}({}) = {}", c.api, c.requested, c.ret);
        if let Some(stop) = &c.fast_stop {
            let _ = write!(s, ", fast walk stopped at {stop}");
        }
        if let Some(e) = &c.slow_error {
            let _ = write!(s, ", slow path failed at {e}");
        }
        if c.transient > 0 {
            let _ = write!(s, ", {} transient", c.transient);
        }
    }
    if let Some(e) = p.syscall_errno {
        let _ = write!(s, "; syscall fails with {}", crate::kernel::errno::errno_name(e as u32));
    }
    s
}

/// Reads presence and exclusivity of `len` bytes at `addr` of this process
/// from `/proc/self/pagemap` (bit 63 present, bit 56 exclusively mapped).
/// Reading pagemap faults nothing in and pins nothing.
pub fn capture(addr: usize, len: usize) -> std::io::Result<Captured> {
    use std::io::{Read, Seek, SeekFrom};
    let page = 4096usize;
    let first = addr / page;
    let n = len.div_ceil(page);
    let mut f = std::fs::File::open("/proc/self/pagemap")?;
    f.seek(SeekFrom::Start((first * 8) as u64))?;
    let mut buf = vec![0u8; n * 8];
    f.read_exact(&mut buf)?;
    let entries: Vec<u64> = buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let present: Vec<bool> = entries.iter().map(|e| e >> 63 & 1 == 1).collect();
    let exclusive = entries.iter().filter(|e| *e >> 63 & 1 == 1 && *e >> 56 & 1 == 1).count() as u64;
    Ok(Captured::from_pages(&present, exclusive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(buffer: BufferSpec, syscall: Syscall) -> Setup {
        Setup { buffer, syscall, captured: None }
    }

    #[test]
    fn existing_scenarios_on_612() {
        let p = KernelProfile::modern();
        let pr = predict(&p, &setup(BufferSpec::anon(256, Prefault::Write), Syscall::ProcessVmReadv));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.counts.fast_pages, pr.counts.slow_pages), (256, 256, 0, 256));
        let pr = predict(&p, &setup(BufferSpec::anon(256, Prefault::Write), Syscall::IoUringRegister));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.counts.fast_pages, pr.counts.longterm_pages), (256, 0, 256, 256));
        let pr = predict(&p, &setup(BufferSpec::anon(256, Prefault::Write), Syscall::IoUringUnregister));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.counts.vmstat_released), (0, 256, 256));
        let fork = BufferSpec { shared_with_child: true, ..BufferSpec::anon(256, Prefault::Write) };
        let pr = predict(&p, &setup(fork, Syscall::DirectIoWrite));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.counts.fast_pages, pr.counts.slow_pages, pr.counts.undone_pages), (257, 257, 1, 256, 1));
        let none = BufferSpec { prot: Prot::None, ..BufferSpec::anon(256, Prefault::None) };
        let pr = predict(&p, &setup(none, Syscall::IoUringRegister));
        assert_eq!((pr.counts.pinned_pages, pr.error.as_deref(), pr.syscall_errno), (0, Some("pin_user_pages_fast:EFAULT"), Some(libc::EFAULT)));
        assert!(pr.model_violations.is_empty(), "{:?}", pr.model_violations);
    }

    #[test]
    fn existing_scenarios_on_61() {
        let p = KernelProfile::legacy();
        let pr = predict(&p, &setup(BufferSpec::anon(256, Prefault::Write), Syscall::DirectIoWrite));
        assert_eq!((pr.counts.pinned_pages, pr.counts.referenced_pages), (0, 256));
        let pr = predict(&p, &setup(BufferSpec::anon(256, Prefault::Write), Syscall::IoUringRegister));
        assert_eq!((pr.counts.pinned_pages, pr.counts.fast_pages, pr.counts.slow_pages), (256, 0, 256));
    }

    #[test]
    fn shared_file_longterm_differs_between_kernels() {
        let file = BufferSpec { backing: Backing::File, shared: true, ..BufferSpec::anon(256, Prefault::Write) };
        let pr = predict(&KernelProfile::modern(), &setup(file.clone(), Syscall::IoUringRegister));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.counts.fast_pages, pr.syscall_errno), (1, 1, 1, Some(libc::EFAULT)));
        let pr = predict(&KernelProfile::legacy(), &setup(file, Syscall::IoUringRegister));
        assert_eq!((pr.counts.pinned_pages, pr.counts.unpinned_pages, pr.syscall_errno, pr.error), (256, 256, Some(libc::EOPNOTSUPP), None));
    }

    #[test]
    fn compare_names_the_fields() {
        let p = Prediction { counts: PageCounts { pinned_pages: 2, ..PageCounts::default() }, error: Some("pin_user_pages_fast:EFAULT".into()), ..Prediction::default() };
        let o = Observation { counts: PageCounts { pinned_pages: 1, ..PageCounts::default() }, fast_path_split: true, ..Observation::default() };
        let d = compare(&p, &o);
        assert_eq!(d, ["pinned_pages: model 2, kernel 1", "error: model pin_user_pages_fast:EFAULT, kernel none"]);
    }

    #[test]
    fn captured_presence_overrides_the_description() {
        let c = Captured::from_pages(&[true, false, true], 2);
        assert_eq!(c.present_runs, [(true, 1), (false, 1), (true, 1)]);
        assert_eq!(c.present(), [true, false, true]);
        let s = Setup { captured: Some(c), ..setup(BufferSpec::anon(3, Prefault::Write), Syscall::IoUringRegister) };
        let (space, notes) = build(&s);
        assert!(space.pte(BUFFER_VPN + 1).is_none());
        assert_eq!(notes.len(), 1);
    }
}
