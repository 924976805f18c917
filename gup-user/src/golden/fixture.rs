//! Documents for the report types' tests: the busy reading of
//! [`crate::collect::fixture`] with a leak report touching every field,
//! and a reduced-mode reading with accounted holders.

use std::sync::Arc;

use gup_report::{Accounted, Caller, Holder, Holding, Leak, LeakKind, LeakReport, ObjectRow, Subsystem};

use crate::{
    collect::{fixture, Reading, Settings, TopProcesses},
    kernel::vmstat::FollPinCounters,
};

/// A leak report with a holding, a signal of each shape (with and without
/// an owner and an age), a note and an i915 object.
pub(crate) fn leak_report() -> LeakReport {
    LeakReport {
        tracked_outstanding: 768,
        kernel_outstanding: Some(1000),
        untracked_pins: 3,
        partial: true,
        holdings: vec![Holding {
            owner_tgid: 100,
            comm: "fio".into(),
            api: "pin_user_pages_fast".into(),
            caller: Caller {
                function: "io_sqe_buffer_register".into(),
                subsystem: Subsystem::IoUring,
                module: Some("io_uring".into()),
            },
            pages: 512,
            oldest_age_secs: 12.5,
            longterm: true,
            orphaned: true,
            owner_exited: true,
            holders: vec![],
            zones: Default::default(),
            object: gup_common::object::PinObject::NONE,
            exit_age_ns: 0,
            stack_id: 7,
        }],
        leaks: vec![
            Leak {
                kind: LeakKind::Orphaned,
                pages: 512,
                owner_tgid: Some(100),
                comm: Some("fio".into()),
                caller: "io_sqe_buffer_register".into(),
                subsystem: Subsystem::IoUring,
                age_secs: Some(12.5),
                zone: None,
            },
            Leak {
                kind: LeakKind::Unbalanced,
                pages: 256,
                owner_tgid: None,
                comm: None,
                caller: "bio_release_pages".into(),
                subsystem: Subsystem::DirectIo,
                age_secs: None,
                zone: None,
            },
        ],
        notes: vec!["3 pins were not tracked (the tracking map was full)".into()],
        i915_objects: vec![ObjectRow {
            object: "0xffff888012345678".into(),
            owner_tgid: 500,
            comm: "cuda_app".into(),
            pinned_pages: 16,
            total_pinned: 32,
            attempts: 3,
            eagain: 1,
            short_pins: 0,
            create_to_pin_secs: Some(0.25),
            pin_to_release_secs: None,
            orphaned: false,
        }],
        hold_times: vec![],
        cgroups: vec![],
        held_before_start: vec![],
    }
}

/// A process holding `pinned` bytes, through VmPin and one io_uring
/// buffer, and a locked page.
pub(crate) fn holder(pid: u32, comm: &str, pinned: u64) -> Holder {
    Holder {
        pid,
        comm: comm.into(),
        pinned_bytes: pinned,
        pinned_pages: pinned / 4096,
        vm_pin_bytes: pinned,
        locked_bytes: 4096,
        io_uring_buffers: 1,
        io_uring_bytes: pinned,
        io_uring_pages: pinned / 4096,
    }
}

/// A reduced-mode reading (no probes) with the kernel's counters and two
/// accounted holders.
pub(crate) fn reduced() -> Arc<Reading> {
    let mut d = Reading::new(
        fixture::plan(),
        None,
        Some(FollPinCounters { acquired: 5, released: 3 }),
        vec![],
        &mut TopProcesses::default(),
        Settings::default(),
    );
    d.accounted = Some(Arc::new(Accounted {
        source: crate::model::accounted::SOURCE.into(),
        holders: vec![holder(200, "aa-holder", 1 << 20), holder(7, "qemu \"vm\"", 8192)],
        processes: 50,
        fds: 12,
        unreadable: 1,
        truncated: false,
    }));
    Arc::new(d)
}
