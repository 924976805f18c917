//! Tests that make the scenarios' real syscalls on the machine running
//! `cargo test`, without measuring `/proc/vmstat` (no root needed): the
//! premise of the unfaulted scenarios, the tmpfs refusal, every scenario's
//! phases and clean-up, and the demo workload. Where the machine lacks a
//! syscall or an O_DIRECT filesystem they print `SKIPPED: <reason>` and
//! return. What the syscalls pin is measured by `gupwatch check` in the
//! VMs of `cargo xtask test`, against vmstat and the reference model.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;

/// The scenarios' syscalls share the machine: these tests run one at a time.
static HOST: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the direct I/O scenarios put their files: `GUPWATCH_SCRATCH_DIR`,
/// or the temp dir (on tmpfs those scenarios are skipped as unsupported).
fn scratch_dir() -> PathBuf {
    std::env::var_os("GUPWATCH_SCRATCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// The errno of the last run is the expected one; the matrix rows whose
/// outcome differs between kernels ([`ExpectedPath::Reference`]) are judged
/// by the reference model in `gupwatch check`, not here.
fn assert_errno(sc: &dyn Scenario) {
    let want = sc.expectation();
    if want.path != ExpectedPath::Reference {
        assert_eq!(sc.observed_errno(), want.errno, "{}", sc.name());
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
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) => {
            println!("SKIPPED: process_vm_writev: {e}")
        }
        Err(e) => panic!("process_vm_writev: {e}"),
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

/// tmpfs accepts O_DIRECT (6.6+) without pinning: the scenarios refuse it.
#[test]
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

/// Every built-in scenario prepares, runs (twice where allowed; otherwise
/// the second run is a sequence error), and cleans up without leaving its
/// scratch file behind.
#[test]
fn all_scenarios_run() {
    let _g = lock();
    let dir = scratch_dir();
    // The PCI BAR scenario maps a real device's memory: that is for the
    // VMs of `gupwatch check`, not for a developer's machine.
    for mut sc in builtin(&dir).into_iter().filter(|s| s.name() != "io_uring_register_pfnmap") {
        match run_once(sc.as_mut()) {
            Ok(()) => println!("{}: ok (errno {:?})", sc.name(), sc.observed_errno()),
            Err(e) if e.is_unsupported() => {
                println!("SKIPPED: {e}");
                continue;
            }
            Err(e) => panic!("{e}"),
        }
        assert_errno(sc.as_ref());
        sc.prepare().unwrap();
        sc.run().unwrap();
        // Scenarios that leave state behind (a registered buffer, an
        // unshared buffer) refuse a second run without prepare(): those
        // named here, and every registration the kernel accepted.
        // The race scenario registers and unregisters every round.
        let registered = sc.name().starts_with("io_uring_register")
            && sc.name() != "io_uring_register_race"
            && sc.observed_errno().is_none();
        let repeatable = !registered
            && !matches!(
                sc.name(),
                "io_uring_unregister_buffers"
                    | "direct_io_write_after_fork"
                    | "io_uring_buffers_held"
                    | "io_uring_orphaned"
                    | "io_uring_handoff_fork"
                    | "io_uring_handoff_daemon"
            );
        if repeatable {
            sc.run().unwrap();
            assert_errno(sc.as_ref());
        } else {
            let again = sc.run();
            assert!(matches!(again, Err(ScenarioError::Sequence { .. })), "{}: {again:?}", sc.name());
        }
        sc.cleanup().unwrap();
        assert_errno(sc.as_ref());
    }
    // Every scenario's scratch file is `.gupwatch-<scenario>-<pid>-<n>.tmp`.
    let prefix = ".gupwatch-";
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

#[test]
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
