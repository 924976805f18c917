//! Tests against the running kernel. They are `#[ignore]`d because they need
//! root (for `/proc/sys/vm/stat_refresh`, i.e. exact vmstat totals), a real
//! kernel with io_uring and a scratch directory that supports O_DIRECT
//! (`GUPWATCH_SCRATCH_DIR`, default the temp dir); `gupwatch check` runs the
//! equivalent inside VMs. Run them with
//! `cargo test -p gup-user --lib scenarios::host_kernel -- --ignored --nocapture --test-threads=1`.
//! Without root or without a syscall they print `SKIPPED: <reason>` and
//! return: such a run is a skip, not a pass.

use std::fs::{self, File};
use std::io::{self};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::vmstat::{self, FollPinCounters, SettleOptions};
use std::sync::Mutex;

/// vmstat is global: measuring tests must not overlap.
static HOST: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch_dir() -> PathBuf {
    std::env::var_os("GUPWATCH_SCRATCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn by_name(name: &str) -> Box<dyn Scenario> {
    // 200 churn children: enough to pin at once, quick on a host.
    for_check(&scratch_dir(), 200)
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap()
}

fn settle() -> FollPinCounters {
    let s = vmstat::settle(&SettleOptions::default()).expect("vmstat settle");
    if !s.settled {
        println!(
            "  (vmstat did not settle within the timeout after {} samples)",
            s.samples
        );
    }
    s.counters
}

#[derive(Debug)]
struct Attempt {
    /// Right after run() returned (refresh + read, no waiting).
    immediate: FollPinDelta,
    /// After vmstat settled.
    settled: FollPinDelta,
    /// The scenario's observed_errno() after run().
    errno: Option<i32>,
}

/// prepare, settle, run, read, settle, cleanup. `None` = skipped.
fn attempt(sc: &mut dyn Scenario) -> Option<Attempt> {
    if let Err(e) = sc.prepare() {
        let _ = sc.cleanup();
        if e.is_unsupported() {
            println!("SKIPPED: {}: {e}", sc.name());
            return None;
        }
        panic!("{}: prepare failed: {e}", sc.name());
    }
    let before = settle();
    let run = sc.run();
    let immediate = vmstat::read(true).expect("vmstat read");
    let after = settle();
    let errno = sc.observed_errno();
    sc.cleanup().expect("cleanup");
    if let Err(e) = run {
        if e.is_unsupported() {
            println!("SKIPPED: {}: {e}", sc.name());
            return None;
        }
        panic!("{}: run failed: {e}", sc.name());
    }
    Some(Attempt {
        immediate: immediate.delta_since(&before).unwrap(),
        settled: after.delta_since(&before).unwrap(),
        errno,
    })
}

/// Up to 5 attempts until the settled delta is the expected one; reports
/// every attempt and asserts on the one closest to the expectation
/// (other activity on the host can only add to the counters). Also
/// asserts that the observed errno is the expected one.
fn measure(name: &str) {
    let expected = by_name(name).expected_delta();
    let want = format!("+{}/+{}", expected.acquired, expected.released);
    let best = measure_with(name, &want, |d| {
        d.acquired.abs_diff(expected.acquired) + d.released.abs_diff(expected.released)
    });
    if let Some(best) = best {
        assert_eq!(best, expected, "{name}: vmstat delta");
    }
}

/// As [`measure`], with `distance` saying how far a settled delta is
/// from the expectation (0 = as expected; `want` describes it). Returns
/// the closest settled delta, or `None` when skipped.
fn measure_with(
    name: &str,
    want: &str,
    distance: impl Fn(&FollPinDelta) -> u64,
) -> Option<FollPinDelta> {
    let _g = lock();
    if !is_root() {
        println!("SKIPPED: {name}: needs root for /proc/sys/vm/stat_refresh");
        return None;
    }
    let mut sc = by_name(name);
    let expectation = sc.expectation();
    let mut best: Option<FollPinDelta> = None;
    for i in 1..=5 {
        let a = attempt(sc.as_mut())?;
        println!(
            "{name} attempt {i}: immediate +{}/+{}, settled +{}/+{} (acquired/released; \
             expected {want}), errno {:?} (expected {:?})",
            a.immediate.acquired,
            a.immediate.released,
            a.settled.acquired,
            a.settled.released,
            a.errno.map(errno_text),
            expectation.errno.map(errno_text),
        );
        assert_eq!(a.errno, expectation.errno, "{name}: errno");
        let d = a.settled;
        if best.as_ref().is_none_or(|b| distance(&d) < distance(b)) {
            best = Some(d);
        }
        if distance(&d) == 0 {
            break;
        }
    }
    let best = best.unwrap();
    println!(
        "{name}: best settled delta +{}/+{}",
        best.acquired, best.released
    );
    Some(best)
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn process_vm_readv_pins_256() {
    measure("process_vm_readv");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn process_vm_writev_pins_256() {
    measure("process_vm_writev");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_register_pins_256() {
    measure("io_uring_register_buffers");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_unregister_unpins_256() {
    measure("io_uring_unregister_buffers");
}

#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn direct_io_write_pins_256() {
    measure("direct_io_write");
}

#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn direct_io_read_pins_256() {
    measure("direct_io_read");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn churn_process_vm_pins_4_per_child() {
    measure("churn_process_vm");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn churn_io_uring_pins_and_unpins_4_per_child() {
    measure("churn_io_uring");
}

#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn churn_odirect_pins_4_per_child() {
    measure("churn_odirect");
}

/// 16 rounds of 32 reads of 4 pages in flight.
#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn inflight_odirect_shared_pins_2048() {
    measure("inflight_odirect_shared");
}

/// 4 processes × 16 rounds × 8 reads of 4 pages.
#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn inflight_odirect_owners_pins_2048() {
    measure("inflight_odirect_owners");
}

/// Without a before-attach phase the fixed buffers are registered in
/// prepare (outside the window); run releases them: +1024/+1088.
#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn inflight_fixed_pre_attach_releases_its_fixed_buffers() {
    measure("inflight_fixed_pre_attach");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn process_vm_writev_unfaulted_pins_256() {
    measure("process_vm_writev_unfaulted");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_register_unfaulted_pins_256() {
    measure("io_uring_register_unfaulted");
}

/// The lock-free walk of every `pin_user_pages_fast` call grabs the
/// first page, sees that it must be unshared and drops it again (both
/// counters +1), then the slow path pins all the pages: expected
/// +(256 + k)/+(256 + k) with k ≥ 1 calls (the block layer may pin a
/// large write in several calls), k at most one per page.
#[test]
#[ignore = "needs root, a real kernel and an O_DIRECT filesystem; see the module docs"]
fn direct_io_write_after_fork_pins_256_via_slow_path() {
    let pages = buffer_pages();
    let distance = |d: &FollPinDelta| {
        let balanced = d.acquired.abs_diff(d.released);
        let low = pages + 1;
        let range = if d.acquired < low {
            low - d.acquired
        } else {
            d.acquired.saturating_sub(2 * pages)
        };
        balanced + range
    };
    let want = format!("+(256+k)/+(256+k), 1 <= k <= {pages}");
    if let Some(best) = measure_with("direct_io_write_after_fork", &want, distance) {
        assert_eq!(
            distance(&best),
            0,
            "vmstat delta +{}/+{}",
            best.acquired,
            best.released
        );
        println!(
            "direct_io_write_after_fork: k = {} undone fast-path grab(s)",
            best.acquired - pages
        );
    }
}

/// Pages of `m` that are present (mincore), without touching them.
fn resident_pages(m: &Mapping) -> usize {
    let mut vec = vec![0u8; m.len / page_size()];
    // SAFETY: `vec` has one byte per page of the mapping, which `m`
    // keeps alive; mincore only writes into `vec`.
    let rc = unsafe { libc::mincore(m.addr(), m.len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// The premise of the two unfaulted scenarios: their buffer has no page
/// before the pinning syscall, and every page after it, so the syscall
/// itself faulted them in, which only the slow path does.
#[test]
#[ignore = "needs a real kernel with io_uring"]
fn unfaulted_buffers_are_faulted_in_by_the_pin() {
    let _g = lock();
    let pages = buffer_pages() as usize;
    let local = Mapping::new_prefaulted("t", BUFFER_BYTES, SEED_SOURCE).unwrap();
    let remote = Mapping::new_untouched("t", BUFFER_BYTES).unwrap();
    assert_eq!(resident_pages(&remote), 0);
    match process_vm(Direction::Write, local.iovec(), remote.iovec()) {
        Ok(n) => {
            assert_eq!(n, BUFFER_BYTES);
            assert_eq!(resident_pages(&remote), pages);
            println!("process_vm_writev: 0 -> {pages} resident pages");
        }
        Err(e) => println!("SKIPPED: process_vm_writev: {e}"),
    }
    let buf = Mapping::new_untouched("t", BUFFER_BYTES).unwrap();
    let mut st = match RingState::with_buffer("t", buf) {
        Ok(st) => st,
        Err(e) if e.is_unsupported() => {
            println!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(resident_pages(&st.buf), 0);
    match st.register("t") {
        Ok(()) => {
            assert_eq!(resident_pages(&st.buf), pages);
            println!("IORING_REGISTER_BUFFERS: 0 -> {pages} resident pages");
            st.unregister("t").unwrap();
        }
        Err(e) if e.is_unsupported() => println!("SKIPPED: {e}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn process_vm_readv_prot_none_fails_efault() {
    measure("process_vm_readv_prot_none");
}

#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_register_prot_none_fails_efault() {
    measure("io_uring_register_prot_none");
}

/// Needs a PCI device whose memory BAR sysfs lets root map; elsewhere
/// it prints SKIPPED with the reason.
#[test]
#[ignore = "needs root, a real kernel and a mappable PCI memory BAR; see the module docs"]
fn io_uring_register_pfnmap_fails_efault() {
    measure("io_uring_register_pfnmap");
}

/// Not a scenario (kernel-dependent on purpose): a read-only pin of
/// never-touched anonymous memory maps and pins the shared zero page,
/// which kernels since about 6.5 leave out of `nr_foll_pin_*`. Prints
/// the delta and asserts only that it balances.
#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn zero_page_pins_from_process_vm_readv() {
    let _g = lock();
    if !is_root() {
        println!("SKIPPED: needs root for /proc/sys/vm/stat_refresh");
        return;
    }
    let mut local = Mapping::new_prefaulted("zero_page", BUFFER_BYTES, SEED_DEST).unwrap();
    let mut deltas = vec![];
    for _ in 0..3 {
        let remote = Mapping::new_untouched("zero_page", BUFFER_BYTES).unwrap();
        let before = settle();
        let n = process_vm(Direction::Read, local.iovec(), remote.iovec());
        let d = settle().delta_since(&before).unwrap();
        match n {
            Ok(n) => assert_eq!(n, BUFFER_BYTES),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                println!("SKIPPED: process_vm_readv: {e}");
                return;
            }
            Err(e) => panic!("process_vm_readv: {e}"),
        }
        assert!(local.as_slice().iter().all(|&b| b == 0));
        local.fill(SEED_DEST);
        println!(
            "process_vm_readv from untouched memory (zero page): +{}/+{}",
            d.acquired, d.released
        );
        deltas.push(d);
    }
    let min = deltas.iter().min_by_key(|d| d.acquired).unwrap();
    assert_eq!(min.acquired, min.released);
}

/// Checks the VM_PFNMAP refusal without PCI: since 6.15 a perf ring
/// buffer is mapped VM_PFNMAP (earlier kernels map it otherwise, so this
/// is no scenario). Registering it must fail with EFAULT, pinning
/// nothing.
#[test]
#[ignore = "needs root and a real kernel (6.15+ for a VM_PFNMAP perf buffer)"]
fn pfnmap_refusal_via_perf_buffer() {
    let _g = lock();
    if !is_root() {
        println!("SKIPPED: needs root for /proc/sys/vm/stat_refresh");
        return;
    }
    // struct perf_event_attr, PERF_ATTR_SIZE_VER8 = 136 bytes: type
    // (u32) at 0, size (u32) at 4, config (u64) at 8; all else zero.
    let mut attr = [0u64; 17];
    attr[0] = 1 | (136 << 32); // PERF_TYPE_SOFTWARE, size
    attr[1] = 9; // PERF_COUNT_SW_DUMMY
                 // SAFETY: `attr` is a valid perf_event_attr of the size it states,
                 // alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0,  // this process
            -1, // any CPU
            -1, // no group
            8,  // PERF_FLAG_FD_CLOEXEC
        )
    };
    if fd < 0 {
        println!("SKIPPED: perf_event_open: {}", io::Error::last_os_error());
        return;
    }
    // SAFETY: a new descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd as libc::c_int) };
    // Header page + 16 data pages.
    let buf = Untouchable::shared_file(&file, 17 * page_size()).expect("mmap perf buffer");
    let maps = fs::read_to_string("/proc/self/smaps").unwrap();
    let addr = format!("{:x}-", buf.ptr.as_ptr() as usize);
    let vma = maps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&addr))
        .take_while(|l| l.starts_with(&addr) || !l.contains('-') || l.contains(':'))
        .find(|l| l.starts_with("VmFlags:"))
        .unwrap_or("VmFlags: ?")
        .trim()
        .to_string();
    println!("perf buffer {vma}");
    if !vma.contains(" pf") {
        println!("SKIPPED: the perf buffer is not VM_PFNMAP on this kernel");
        return;
    }
    let mut st = match RingState::with_buffer("perf", buf) {
        Ok(st) => st,
        Err(e) if e.is_unsupported() => {
            println!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let before = settle();
    let res = st.try_register();
    let d = settle().delta_since(&before).unwrap();
    println!(
        "register perf buffer: {:?}, vmstat +{}/+{}",
        res.as_ref().map_err(|e| e.raw_os_error().map(errno_text)),
        d.acquired,
        d.released
    );
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EFAULT));
    assert_eq!(
        d,
        FollPinDelta {
            acquired: 0,
            released: 0
        }
    );
}

/// Closing a ring that still has buffers registered: the kernel unpins
/// them from its ring-exit work, so the release may come after close().
/// Prints when it lands; asserts only the settled total.
#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_ring_teardown_unpins() {
    let _g = lock();
    if !is_root() {
        println!("SKIPPED: needs root for /proc/sys/vm/stat_refresh");
        return;
    }
    let mut st = match RingState::new("teardown") {
        Ok(st) => st,
        Err(e) if e.is_unsupported() => {
            println!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    st.register("teardown").unwrap();
    // Close the ring without unregistering: keep a duplicate of the ring
    // descriptor, let RingState drop (closing its descriptor and unmapping
    // the buffer; the pins keep the pages), then close the last one.
    st.registered = false;
    let ring = st.ring.try_clone().unwrap();
    drop(st);
    let before = settle();
    let t = Instant::now();
    drop(ring);
    let immediate = vmstat::read(true).unwrap().delta_since(&before).unwrap();
    let mut landed = None;
    while t.elapsed() < Duration::from_secs(3) {
        let d = vmstat::read(true).unwrap().delta_since(&before).unwrap();
        if d.released >= buffer_pages() {
            landed = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let settled = settle().delta_since(&before).unwrap();
    println!(
        "ring teardown: released +{} right after close(), +{} settled; all released after {:?}",
        immediate.released, settled.released, landed
    );
    assert_eq!(
        settled,
        FollPinDelta {
            acquired: 0,
            released: buffer_pages()
        }
    );
}

/// The vmstat deltas of one prepare/run/cleanup of a scenario that may
/// leave pins behind after `run`.
#[derive(Debug)]
struct Phases {
    /// Right after run() returned (refresh + read, no waiting).
    run_immediate: FollPinDelta,
    /// From before run() to after vmstat settled.
    run: FollPinDelta,
    /// Right after cleanup() returned.
    cleanup_immediate: FollPinDelta,
    /// From after run (settled) to after cleanup (settled).
    cleanup: FollPinDelta,
}

/// prepare, settle, run, settle, `check`, cleanup, settle. `None` =
/// skipped.
fn phases<S: Scenario + ?Sized>(sc: &mut S, check: &mut impl FnMut(&S)) -> Option<Phases> {
    let name = sc.name();
    if let Err(e) = sc.prepare() {
        let _ = sc.cleanup();
        if e.is_unsupported() {
            println!("SKIPPED: {name}: {e}");
            return None;
        }
        panic!("{name}: prepare failed: {e}");
    }
    let before = settle();
    let run = sc.run();
    let run_immediate = vmstat::read(true).expect("vmstat read");
    let after_run = settle();
    if let Err(e) = run {
        let _ = sc.cleanup();
        if e.is_unsupported() {
            println!("SKIPPED: {name}: {e}");
            return None;
        }
        panic!("{name}: run failed: {e}");
    }
    check(sc);
    sc.cleanup().expect("cleanup");
    let cleanup_immediate = vmstat::read(true).expect("vmstat read");
    let after_cleanup = settle();
    Some(Phases {
        run_immediate: run_immediate.delta_since(&before).unwrap(),
        run: after_run.delta_since(&before).unwrap(),
        cleanup_immediate: cleanup_immediate.delta_since(&after_run).unwrap(),
        cleanup: after_cleanup.delta_since(&after_run).unwrap(),
    })
}

/// Up to 5 attempts until both settled deltas are the expected ones (as
/// [`measure`]); asserts on the closest attempt. `check` runs between
/// `run` and `cleanup` of every attempt.
fn measure_phases<S: Scenario + ?Sized>(
    sc: &mut S,
    run_want: FollPinDelta,
    cleanup_want: FollPinDelta,
    mut check: impl FnMut(&S),
) {
    let _g = lock();
    let name = sc.name();
    if !is_root() {
        println!("SKIPPED: {name}: needs root for /proc/sys/vm/stat_refresh");
        return;
    }
    let dist = |d: &FollPinDelta, w: &FollPinDelta| {
        d.acquired.abs_diff(w.acquired) + d.released.abs_diff(w.released)
    };
    let show = |d: &FollPinDelta| format!("+{}/+{}", d.acquired, d.released);
    let mut best: Option<(u64, Phases)> = None;
    for i in 1..=5 {
        let Some(p) = phases(sc, &mut check) else {
            return;
        };
        println!(
            "{name} attempt {i}: run {} (immediate {}), cleanup {} (immediate {}); \
             expected run {}, cleanup {}",
            show(&p.run),
            show(&p.run_immediate),
            show(&p.cleanup),
            show(&p.cleanup_immediate),
            show(&run_want),
            show(&cleanup_want),
        );
        let d = dist(&p.run, &run_want) + dist(&p.cleanup, &cleanup_want);
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, p));
        }
        if d == 0 {
            break;
        }
    }
    let (_, p) = best.unwrap();
    assert_eq!(p.run, run_want, "{name}: vmstat delta over run");
    assert_eq!(p.cleanup, cleanup_want, "{name}: vmstat delta over cleanup");
}

fn delta(acquired: u64, released: u64) -> FollPinDelta {
    FollPinDelta { acquired, released }
}

/// The descriptor's target, e.g. `anon_inode:[io_uring]`.
fn fd_target(fd: &OwnedFd) -> String {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// Asserts that the child that registered the buffer is gone and was
/// not this process.
fn assert_child_gone(name: &str, child: Option<u32>) -> u32 {
    let pid = child.unwrap_or_else(|| panic!("{name}: no child recorded"));
    assert_ne!(pid, std::process::id(), "{name}: the owner is the child");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{name}: child {pid} still exists after run"
    );
    pid
}

/// The buffer stays registered (+256/+0) from run to cleanup, owned by
/// this process; cleanup unregisters it (+0/+256).
#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_buffers_held_keeps_256_until_cleanup() {
    let mut sc = by_name("io_uring_buffers_held");
    let pages = buffer_pages();
    let want = sc.expected_delta();
    assert_eq!(want, delta(pages, 0));
    measure_phases(sc.as_mut(), want, delta(0, pages), |sc| {
        assert_eq!(
            sc.expected_leak(),
            Some(ExpectedLeak {
                kind: "long_held",
                pages,
                owner_tgid: std::process::id()
            })
        );
    });
}

/// A child registers its buffer and exits; the pins stay (+256/+0) while
/// this process holds the ring, owned by a pid that no longer exists;
/// closing the ring in cleanup releases them (+0/+256).
#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_orphaned_keeps_256_after_the_child_exited() {
    let mut sc = IoUringOrphan::new(false);
    assert!(by_name(sc.name()).expected_leak().is_none());
    let pages = buffer_pages();
    let want = sc.expected_delta();
    assert_eq!(want, delta(pages, 0));
    measure_phases(&mut sc, want, delta(0, pages), |sc| {
        let pid = assert_child_gone(sc.name(), sc.child);
        assert_eq!(
            sc.expected_leak(),
            Some(ExpectedLeak {
                kind: "orphaned",
                pages,
                owner_tgid: pid
            })
        );
        let ring = sc.state.as_ref().unwrap().ring.as_ref().unwrap();
        let target = fd_target(ring);
        assert_eq!(target, "anon_inode:[io_uring]");
        let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", ring.as_raw_fd()))
            .unwrap_or_default();
        let bufs: Vec<_> = fdinfo
            .lines()
            .skip_while(|l| !l.starts_with("UserBufs"))
            .take(2)
            .collect();
        println!(
            "  child {pid} gone; ring fd {} ({target}): {bufs:?}",
            ring.as_raw_fd()
        );
    });
}

/// As the orphan, then run closes the ring and waits for the release:
/// +256/+256 over run, nothing in cleanup.
#[test]
#[ignore = "needs root and a real kernel; see the module docs"]
fn io_uring_orphaned_closed_releases_256_in_run() {
    let mut sc = IoUringOrphan::new(true);
    let pages = buffer_pages();
    let want = sc.expected_delta();
    assert_eq!(want, delta(pages, pages));
    measure_phases(&mut sc, want, delta(0, 0), |sc| {
        let pid = assert_child_gone(sc.name(), sc.child);
        assert_eq!(sc.expected_leak(), None);
        assert!(sc.state.as_ref().unwrap().ring.is_none());
        println!(
            "  child {pid} gone; the ring's teardown released the pins {:?} after close",
            sc.release_wait.unwrap()
        );
    });
}

/// tmpfs accepts O_DIRECT (6.6+) without pinning: the scenarios refuse it.
#[test]
#[ignore = "needs a tmpfs at /dev/shm"]
fn tmpfs_scratch_dir_is_refused() {
    let shm = Path::new("/dev/shm");
    match emulated_direct_io_fs("t", shm) {
        Ok(Some("tmpfs")) => {}
        other => {
            println!("SKIPPED: /dev/shm is not a tmpfs here ({other:?})");
            return;
        }
    }
    for mut sc in builtin(shm)
        .into_iter()
        .filter(|s| s.pin_path() == PinPath::DirectIo)
    {
        let e = sc.prepare().unwrap_err();
        assert!(matches!(e, ScenarioError::EmulatedDirectIo { .. }), "{e}");
        println!("{e}");
    }
}

/// Functional check without vmstat (no root needed): every scenario
/// prepares, runs twice where allowed, and cleans up without leaving its
/// scratch file behind.
#[test]
#[ignore = "needs a real kernel with io_uring and an O_DIRECT filesystem"]
fn all_scenarios_run() {
    let _g = lock();
    let dir = scratch_dir();
    for mut sc in builtin(&dir) {
        match run_once(sc.as_mut()) {
            Ok(()) => println!("{}: ok (errno {:?})", sc.name(), sc.observed_errno()),
            Err(e) if e.is_unsupported() => {
                println!("SKIPPED: {e}");
                continue;
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(sc.observed_errno(), sc.expectation().errno, "{}", sc.name());
        // Scenarios that leave state behind (a registered buffer, an
        // unshared buffer) refuse a second run without prepare().
        let repeatable = !matches!(
            sc.name(),
            "io_uring_register_buffers"
                | "io_uring_unregister_buffers"
                | "io_uring_register_unfaulted"
                | "direct_io_write_after_fork"
                | "io_uring_buffers_held"
                | "io_uring_orphaned"
        );
        sc.prepare().unwrap();
        sc.run().unwrap();
        if repeatable {
            sc.run().unwrap();
            assert_eq!(sc.observed_errno(), sc.expectation().errno, "{}", sc.name());
        } else {
            assert!(matches!(sc.run(), Err(ScenarioError::Sequence { .. })));
        }
        sc.cleanup().unwrap();
        assert_eq!(sc.observed_errno(), sc.expectation().errno, "{}", sc.name());
    }
    let prefix = ".gupwatch-direct_io";
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.contains(&format!("-{}-", std::process::id()))
        })
        .collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
}

/// A short demo workload (no root needed).
#[test]
fn workload_summary_is_plain_text() {
    let stats = WorkloadStats {
        rounds: 3,
        elapsed: Duration::from_millis(2500),
        scenarios: vec![
            ScenarioStats {
                name: "io_uring_register_buffers",
                pin_path: PinPath::IoUringRegister,
                runs: 3,
                pages: 768,
                failures: 0,
                disabled: false,
                last_error: None,
            },
            ScenarioStats {
                name: "direct_io_read",
                pin_path: PinPath::DirectIo,
                runs: 0,
                pages: 0,
                failures: 1,
                disabled: true,
                last_error: Some("EINVAL".into()),
            },
        ],
    };
    let text = stats.to_string();
    assert!(text.starts_with("3 rounds in 2.5 s\n"), "{text}");
    assert!(text.contains("io_uring_register_buffers") && text.contains("768 pages pinned"), "{text}");
    assert!(text.contains("1 failed (last: EINVAL), dropped: not supported here"), "{text}");
    assert!(!text.contains('{') && !text.contains("ScenarioStats"), "{text}");
}

#[test]
#[ignore = "needs a real kernel with io_uring and an O_DIRECT filesystem"]
fn workload_runs_and_stops() {
    let _g = lock();
    let stop = AtomicBool::new(false);
    let duration = Duration::from_millis(300);
    let stats = run_workload(&scratch_dir(), duration, &stop).unwrap();
    println!("{}", serde_json::to_string_pretty(&stats).unwrap());
    // One round can outlast the duration in a slow (TCG) guest.
    assert!(stats.rounds >= 2 || stats.elapsed >= duration, "{stats:?}");
    assert!(stats.scenarios.iter().any(|s| s.runs == stats.rounds));
    stop.store(true, Ordering::Relaxed);
    let stats = run_workload(&scratch_dir(), Duration::from_secs(60), &stop).unwrap();
    assert_eq!(stats.scenarios.iter().map(|s| s.runs).sum::<u64>(), 0);
}
