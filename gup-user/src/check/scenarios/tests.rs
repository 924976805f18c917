//! Unit tests of the scenarios: names, expectations, errors and hints.

use std::fs::{self, File};
use std::io::{self};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::kernel::vmstat::{self, VmstatError};

/// The built-in scenarios before the reference model's matrix (which
/// `matrix_scenarios` checks).
fn original(dir: &Path) -> Vec<Box<dyn Scenario>> {
    let mut all = balanced(dir);
    all.extend(leaking());
    all
}

#[test]
fn matrix_scenarios() {
    let all = builtin(Path::new("/nonexistent"));
    let mut names: Vec<_> = all.iter().map(|s| s.name()).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "names are unique");
    let m = matrix(Path::new("/nonexistent"));
    assert_eq!(all.len(), original(Path::new("/nonexistent")).len() + m.len() + reverted_pins().len());
    for s in &m {
        let setup = s.reference_setup().expect("every matrix scenario describes its memory");
        assert_eq!(setup.buffer.pages, buffer_pages(), "{}", s.name());
        let e = s.expectation();
        assert_eq!(e.longterm, s.pin_path() == PinPath::IoUringRegister, "{}", s.name());
        assert_eq!(e.errno.is_some(), e.path == ExpectedPath::None, "{}", s.name());
        assert!(s.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", s.name());
    }
    let reference: Vec<_> = m.iter().filter(|s| s.expectation().path == ExpectedPath::Reference).map(|s| s.name()).collect();
    assert_eq!(reference, ["io_uring_register_file_shared", "io_uring_register_file_private", "io_uring_register_file_private_read"]);
    // Every scenario but the PCI BAR one (sized at prepare) describes
    // its memory before prepare.
    for s in original(Path::new("/nonexistent")) {
        assert_eq!(s.reference_setup().is_some(), s.name() != "io_uring_register_pfnmap", "{}", s.name());
    }
}

/// The builtin scenarios, in order: their names are the report's and
/// the metrics' keys, so they must not change.
const BUILTIN_NAMES: [&str; 17] = [
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_register_buffers",
    "io_uring_unregister_buffers",
    "direct_io_write",
    "direct_io_read",
    "process_vm_writev_unfaulted",
    "io_uring_register_unfaulted",
    "direct_io_write_after_fork",
    "process_vm_readv_prot_none",
    "io_uring_register_prot_none",
    "io_uring_register_pfnmap",
    "io_uring_buffers_held",
    "io_uring_orphaned",
    "io_uring_orphaned_closed",
    "io_uring_handoff_fork",
    "io_uring_handoff_daemon",
];

#[test]
fn builtin_names_are_stable_unique_snake_case() {
    let all = original(Path::new("/nonexistent"));
    let names: Vec<_> = all.iter().map(|s| s.name()).collect();
    assert_eq!(names, BUILTIN_NAMES);
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    for s in &all {
        assert!(s
            .name()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert!(!s.description().is_empty() && !s.description().contains('\n'));
        assert!(!s.description().contains("  "), "{}", s.description());
        // Scenarios that must fail pin nothing; the others a whole buffer.
        let pages = if s.expectation().errno.is_some() {
            0
        } else {
            (BUFFER_BYTES / page_size()) as u64
        };
        assert_eq!(s.pages(), pages, "{}", s.name());
        assert_eq!(s.observed_errno(), None, "{}", s.name());
    }
    let paths: Vec<_> = all.iter().map(|s| s.pin_path()).collect();
    use PinPath::*;
    assert_eq!(
        paths,
        [
            ProcessVm,
            ProcessVm,
            IoUringRegister,
            IoUringUnregister,
            DirectIo,
            DirectIo,
            ProcessVm,
            IoUringRegister,
            DirectIo,
            ProcessVm,
            IoUringRegister,
            IoUringRegister,
            IoUringRegister,
            IoUringRegister,
            IoUringRegister,
            IoUringRegister,
            IoUringRegister,
        ]
    );
}

#[test]
fn expectations() {
    let all = original(Path::new("/nonexistent"));
    let got: Vec<_> = all
        .iter()
        .map(|s| {
            let e = s.expectation();
            (s.name(), e.path, e.errno, e.subsystem, e.longterm)
        })
        .collect();
    use ExpectedPath as P;
    let no = Option::<i32>::None;
    let (pvm, uring, dio) = ("process_vm", "io_uring", "direct-io");
    let efault = Some(libc::EFAULT);
    assert_eq!(
        got,
        [
            ("process_vm_readv", P::Slow, no, pvm, false),
            ("process_vm_writev", P::Slow, no, pvm, false),
            ("io_uring_register_buffers", P::Any, no, uring, true),
            ("io_uring_unregister_buffers", P::None, no, uring, true),
            ("direct_io_write", P::Fast, no, dio, false),
            ("direct_io_read", P::Fast, no, dio, false),
            ("process_vm_writev_unfaulted", P::Slow, no, pvm, false),
            ("io_uring_register_unfaulted", P::Slow, no, uring, true),
            ("direct_io_write_after_fork", P::Slow, no, dio, false),
            ("process_vm_readv_prot_none", P::None, efault, pvm, false),
            ("io_uring_register_prot_none", P::None, efault, uring, true),
            ("io_uring_register_pfnmap", P::None, efault, uring, true),
            ("io_uring_buffers_held", P::Any, no, uring, true),
            ("io_uring_orphaned", P::Any, no, uring, true),
            ("io_uring_orphaned_closed", P::Any, no, uring, true),
            ("io_uring_handoff_fork", P::Any, no, uring, true),
            ("io_uring_handoff_daemon", P::Any, no, uring, true),
        ]
    );
    // The subsystem agrees with the pin path, and every scenario that
    // must fail pins nothing.
    for s in &all {
        let e = s.expectation();
        let subsystem = match s.pin_path() {
            PinPath::ProcessVm => SUBSYSTEM_PROCESS_VM,
            PinPath::IoUringRegister | PinPath::IoUringUnregister => SUBSYSTEM_IO_URING,
            PinPath::DirectIo => SUBSYSTEM_DIRECT_IO,
            PinPath::VfioMapDma => SUBSYSTEM_VFIO,
            PinPath::RdmaRegMr => SUBSYSTEM_RDMA,
        };
        assert_eq!(e.subsystem, subsystem, "{}", s.name());
        if e.errno.is_some() {
            assert_eq!(e.path, ExpectedPath::None, "{}", s.name());
        }
    }
    let e = all[7].expectation();
    assert_eq!(
        serde_json::to_value(e).unwrap(),
        serde_json::json!({
            "path": "slow",
            "errno": null,
            "subsystem": "io_uring",
            "longterm": true
        })
    );
    assert_eq!(
        serde_json::to_value(all[9].expectation()).unwrap()["errno"],
        serde_json::json!(libc::EFAULT)
    );
    for p in [P::Fast, P::Slow, P::Any, P::None] {
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            format!("\"{}\"", p.as_str())
        );
    }
}

#[test]
fn expected_leaks_and_deltas() {
    let pages = buffer_pages();
    let all = original(Path::new("/nonexistent"));
    let held = ExpectedLeak {
        kind: "long_held",
        pages,
        owner_tgid: std::process::id(),
    };
    for s in &all {
        let want = (s.name() == "io_uring_buffers_held").then_some(held);
        assert_eq!(s.expected_leak(), want, "{}", s.name());
        let delta = match s.name() {
            "io_uring_orphaned_closed" => FollPinDelta {
                acquired: pages,
                released: pages,
            },
            _ => s.pin_path().expected_delta(s.pages()),
        };
        assert_eq!(s.expected_delta(), delta, "{}", s.name());
    }
    // The orphan's child exited; this process holds its ring.
    let mut orphan = IoUringOrphan::new(false);
    assert_eq!((orphan.expected_leak(), orphan.expected_holder()), (None, None));
    orphan.child = Some(4242);
    let me = orphan.expected_holder().expect("a holder after run");
    assert_eq!((me.owner_tgid, me.pages, me.pid), (4242, pages, std::process::id()));
    assert!(!me.comm.is_empty());
    assert_eq!(orphan.expected_leak(), None);
    let mut closed = IoUringOrphan::new(true);
    closed.child = Some(4242);
    assert_eq!((closed.expected_leak(), closed.expected_holder()), (None, None));
    for s in &all {
        let forks = matches!(s.name(), "io_uring_handoff_fork" | "io_uring_handoff_daemon");
        assert!(!forks || s.expected_holder().is_none(), "{}: no holder before run", s.name());
    }
    assert_eq!(
        LeakKind::LongHeld.as_str(),
        "long_held",
        "ExpectedLeak::kind must match the leak report's labels"
    );
    assert_eq!(
        serde_json::to_value(held).unwrap(),
        serde_json::json!({"kind": "long_held", "pages": pages, "owner_tgid": std::process::id()})
    );
}

#[test]
fn workload_leaves_out_failing_and_leaking_scenarios() {
    let names: Vec<_> = workload_scenarios(Path::new("/nonexistent"))
        .iter()
        .map(|s| s.name())
        .collect();
    // The first nine builtins: the ones that neither fail nor leak.
    assert_eq!(names, BUILTIN_NAMES[..9]);
}

#[test]
fn child_reports() {
    // SAFETY: none of these reports names a descriptor (failures, or -1).
    let fail = |stage, errno| unsafe {
        ChildReport {
            stage,
            errno,
            ring_fd: -1,
        }
        .into_ring("t")
        .unwrap_err()
    };
    let e = fail(CHILD_SETUP_FAILED, libc::ENOSYS);
    assert!(e.is_unsupported(), "{e}");
    assert!(e.to_string().contains("io_uring_setup"), "{e}");
    let e = fail(CHILD_REGISTER_FAILED, libc::ENOMEM);
    assert!(
        e.is_unsupported() && e.to_string().contains("ulimit -l"),
        "{e}"
    );
    let e = fail(CHILD_REGISTER_FAILED, libc::EFAULT);
    assert!(!e.is_unsupported(), "{e}");
    assert!(fail(CHILD_DONE, 0).to_string().contains("bad report"));
    assert!(fail(7, 0).to_string().contains("bad report"));
    // A good report hands over the descriptor.
    let raw = std::os::fd::IntoRawFd::into_raw_fd(File::open("/dev/null").unwrap());
    let report = ChildReport {
        stage: CHILD_DONE,
        errno: 0,
        ring_fd: raw,
    };
    // SAFETY: `raw` was given up by its File just above.
    let ring = unsafe { report.into_ring("t") }.unwrap();
    assert_eq!(ring.as_raw_fd(), raw);
}

#[test]
fn release_errors() {
    let e = ScenarioError::NotReleased {
        scenario: "t",
        what: "closing the ring",
        expected: 256,
        released: 10,
        waited: Duration::from_secs(10),
    };
    assert!(!e.is_unsupported());
    assert_eq!(e.scenario(), "t");
    let text = e.to_string();
    assert!(
        text.contains("after closing the ring") && text.contains("grew by 10 in 10s"),
        "{text}"
    );
    let e = ScenarioError::Vmstat {
        scenario: "t",
        error: VmstatError::Missing {
            counter: vmstat::ACQUIRED_KEY,
        },
    };
    assert!(e.is_unsupported(), "{e}");
    assert!(
        e.to_string().starts_with("t: `nr_foll_pin_acquired`"),
        "{e}"
    );
}

#[test]
fn expected_failures() {
    let io = |e| Err(io::Error::from_raw_os_error(e));
    assert!(expect_failure("t", REGISTER, libc::EFAULT, io(libc::EFAULT)).is_ok());
    let e = expect_failure("t", REGISTER, libc::EFAULT, Ok(())).unwrap_err();
    assert!(
        matches!(e, ScenarioError::UnexpectedOutcome { got: None, .. }),
        "{e}"
    );
    assert_eq!(e.errno(), None);
    assert!(!e.is_unsupported());
    assert!(e.to_string().contains("should fail with EFAULT"), "{e}");
    assert!(e.to_string().contains("it succeeded"), "{e}");
    let e = expect_failure("t", REGISTER, libc::EFAULT, io(libc::EINVAL)).unwrap_err();
    assert!(
        matches!(
            e,
            ScenarioError::UnexpectedOutcome {
                got: Some(libc::EINVAL),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert!(e.to_string().contains("failed with EINVAL"), "{e}");
    // A host that blocks io_uring is a skip, not a wrong errno.
    let e = expect_failure("t", REGISTER, libc::EFAULT, io(libc::EPERM)).unwrap_err();
    assert!(matches!(e, ScenarioError::Syscall { .. }), "{e}");
    assert!(e.is_unsupported());
    let e =
        expect_failure("t", "process_vm_readv", libc::EFAULT, io(libc::ENOSYS)).unwrap_err();
    assert!(e.is_unsupported(), "{e}");
    assert_eq!(errno_text(libc::EFAULT), "EFAULT (Bad address)");
    assert!(errno_text(4095).starts_with("errno 4095 ("));
}

#[test]
fn pci_resource_lines() {
    let text = "\
0x00000000fe000000 0x00000000fe7fffff 0x0000000000042208
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000c000 0x000000000000c01f 0x0000000000040101
0x0000004000100000 0x0000004000100fff 0x0000000000140204
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000000c0000 0x00000000000dffff 0x0000000000000212
";
    // Index 2 is an I/O port BAR, index 6 the expansion ROM (not a BAR).
    assert_eq!(parse_pci_resources(text), [(0, 8 << 20), (3, 4096)]);
    assert!(parse_pci_resources("").is_empty());
    assert!(parse_pci_resources("garbage\n0x1 0x2\n").is_empty());
    // Kernel-read values: an end before the start, or a BAR whose size
    // overflows u64, are skipped, not a panic.
    assert!(parse_pci_resources("0x2000 0x1000 0x200\n0x0 0xffffffffffffffff 0x200\n").is_empty());
}

#[test]
fn pci_bar_not_reachable_reasons() {
    let t = tempfile::tempdir().unwrap();
    let reason = |dir: &Path| match map_pci_bar("t", dir) {
        Err(e @ ScenarioError::NotReachable { .. }) => {
            assert!(e.is_unsupported());
            e.to_string()
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("mapped something under {}", dir.display()),
    };
    let missing = t.path().join("none");
    assert!(reason(&missing).contains("no PCI bus"));
    let dev = t.path().join("0000:00:01.0");
    fs::create_dir(&dev).unwrap();
    fs::write(
        dev.join("resource"),
        "0x000000000000c000 0x000000000000c01f 0x0000000000040101\n",
    )
    .unwrap();
    assert!(
        reason(t.path()).contains("has a memory BAR"),
        "{}",
        reason(t.path())
    );
    fs::write(
        dev.join("resource"),
        "0x0000004000100000 0x000000400017ffff 0x0000000000140204\n",
    )
    .unwrap();
    let r = reason(t.path());
    assert!(
        r.contains("no sysfs resource files") && r.contains("resource0"),
        "{r}"
    );
    // A resource0 that is a plain file: mmap works on it, so use a
    // directory, which cannot be opened read-write.
    fs::create_dir(dev.join("resource0")).unwrap();
    let r = reason(t.path());
    assert!(
        r.contains("could be mapped") && r.contains("needs root"),
        "{r}"
    );
}

#[test]
fn pages_for_4k() {
    if page_size() == 4096 {
        assert_eq!(buffer_pages(), 256);
    }
}

#[test]
fn expected_deltas() {
    let d = |a, r| FollPinDelta {
        acquired: a,
        released: r,
    };
    assert_eq!(PinPath::ProcessVm.expected_delta(256), d(256, 256));
    assert_eq!(PinPath::DirectIo.expected_delta(256), d(256, 256));
    assert_eq!(PinPath::IoUringRegister.expected_delta(256), d(256, 0));
    assert_eq!(PinPath::IoUringUnregister.expected_delta(256), d(0, 256));
    assert_eq!(
        serde_json::to_string(&PinPath::IoUringUnregister).unwrap(),
        "\"io_uring_unregister\""
    );
    assert_eq!(PinPath::DirectIo.as_str(), "direct_io");
}

#[test]
fn pattern_distinguishes_pages_and_seeds() {
    let page = |seed, p: usize| -> Vec<u8> {
        (p * 4096..(p + 1) * 4096)
            .map(|i| pattern_byte(seed, i))
            .collect()
    };
    assert_ne!(page(SEED_SOURCE, 0), page(SEED_SOURCE, 1));
    assert_ne!(page(SEED_SOURCE, 3), page(SEED_DEST, 3));
    let data: Vec<u8> = (0..10_000).map(|i| pattern_byte(7, i)).collect();
    assert_eq!(first_mismatch(&data, 7), None);
    let mut bad = data.clone();
    bad[5000] ^= 1;
    assert_eq!(first_mismatch(&bad, 7), Some(5000));
    assert!(first_mismatch(&data, 8).is_some());
}

#[test]
fn hints_and_classification() {
    let err = |syscall, e| sys_err("t", syscall, io::Error::from_raw_os_error(e));
    let e = err(REGISTER, libc::ENOMEM);
    assert!(e.to_string().contains("ulimit -l"), "{e}");
    assert!(e.is_unsupported());
    let e = err("io_uring_setup", libc::EPERM);
    assert!(
        e.to_string().contains("/proc/sys/kernel/io_uring_disabled"),
        "{e}"
    );
    assert!(e.is_unsupported());
    let e = err("process_vm_readv", libc::EPERM);
    assert!(
        e.to_string().contains("ptrace") && e.to_string().contains("seccomp"),
        "{e}"
    );
    assert!(e.is_unsupported());
    let e = err("open(O_DIRECT)", libc::EINVAL);
    assert!(e.to_string().contains("ext4 or xfs"), "{e}");
    assert!(e.is_unsupported());
    assert!(err("pwrite(O_DIRECT)", libc::EINVAL).is_unsupported());
    let e = err("process_vm_readv", libc::EFAULT);
    assert!(!e.is_unsupported());
    assert_eq!(e.errno(), Some(libc::EFAULT));
    assert_eq!(
        e.to_string(),
        format!(
            "t: process_vm_readv failed: {}",
            io::Error::from_raw_os_error(libc::EFAULT)
        )
    );
    assert!(err("create", libc::ENOSPC).to_string().contains("full"));
    assert!(!ScenarioError::Corrupted {
        scenario: "t",
        syscall: "x",
        offset: 1
    }
    .is_unsupported());
    let e = ScenarioError::EmulatedDirectIo {
        scenario: "t",
        dir: "/dev/shm".into(),
        fs: "tmpfs",
    };
    assert!(e.is_unsupported());
    assert!(e.to_string().contains("/dev/shm is on tmpfs"), "{e}");
}

#[test]
fn phases_out_of_order_are_errors() {
    for mut s in builtin(Path::new("/nonexistent")) {
        assert_eq!(s.observed_errno(), None);
        let e = s.run().unwrap_err();
        assert!(
            matches!(e, ScenarioError::Sequence { phase: "run", .. }),
            "{e}"
        );
        assert_eq!(e.scenario(), s.name());
        s.cleanup().unwrap();
    }
}

#[test]
fn io_uring_params_layout() {
    assert_eq!(std::mem::size_of::<IoUringParams>(), 120);
    assert_eq!(std::mem::offset_of!(IoUringParams, sq_off), 40);
    assert_eq!(std::mem::offset_of!(IoUringParams, cq_off), 80);
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
