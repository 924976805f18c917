//! Who pins: turns the attribution map's (process, API, kernel stack) rows
//! into callers and subsystems a person recognises.
//!
//! The caller is the first stack frame outside the GUP machinery (and
//! outside gupwatch's own BPF trampoline frames); the subsystem comes from
//! the first frame anywhere in the stack that belongs to a known GUP user:
//! by its function's name ([`Subsystem::of_function`]) or, for drivers
//! built as modules, by the module kallsyms says it lives in
//! ([`DRIVER_MODULES`]). Out-of-tree drivers (NVIDIA's) have function
//! names no prefix rule can know, but their module names are stable.

use std::collections::BTreeMap;

use gup_common::{Api, AttribKey, AttribValue};
use gup_report::{Caller, Subsystem};
use serde::Serialize;

use crate::kernel::kallsyms::Kallsyms;

/// Whether a module is a driver of its subsystem or the subsystem's
/// common core (which the drivers call into).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleRole {
    /// A device driver: the module a person wants named.
    Driver,
    /// Shared core code (ib_core, ib_uverbs): named only when no driver
    /// module is in the stack.
    Core,
}

/// Kernel modules whose stack frames give the subsystem, one row each:
/// (module name as kallsyms spells it, subsystem, role). The only place
/// module names are matched; the module named in reports and metrics is
/// always one of these strings, which bounds the `module` label.
///
/// i915 keeps its own subsystem (`i915`), as its function-name rule has
/// always given it; the module rule covers stacks whose i915 frames do not
/// start with `i915_`.
pub const DRIVER_MODULES: &[(&str, Subsystem, ModuleRole)] = &[
    // NVIDIA's out-of-tree driver: os_lock_user_pages → pin_user_pages
    // (FOLL_LONGTERM) for cudaHostRegister, unpin_user_page per page on unlock.
    ("nvidia", Subsystem::Gpu, ModuleRole::Driver),
    ("nvidia_uvm", Subsystem::Gpu, ModuleRole::Driver),
    ("nvidia_drm", Subsystem::Gpu, ModuleRole::Driver),
    ("nvidia_modeset", Subsystem::Gpu, ModuleRole::Driver),
    ("nvidia_peermem", Subsystem::Gpu, ModuleRole::Driver),
    ("nvidia_vgpu_vfio", Subsystem::Gpu, ModuleRole::Driver),
    ("nouveau", Subsystem::Gpu, ModuleRole::Driver),
    ("amdgpu", Subsystem::Gpu, ModuleRole::Driver),
    ("radeon", Subsystem::Gpu, ModuleRole::Driver),
    ("xe", Subsystem::Gpu, ModuleRole::Driver),
    ("i915", Subsystem::I915, ModuleRole::Driver),
    ("habanalabs", Subsystem::Gpu, ModuleRole::Driver),
    ("etnaviv", Subsystem::Gpu, ModuleRole::Driver),
    ("ivpu", Subsystem::Gpu, ModuleRole::Driver),
    ("qaic", Subsystem::Gpu, ModuleRole::Driver),
    ("amdxdna", Subsystem::Gpu, ModuleRole::Driver),
    // RDMA providers (they register memory through ib_umem_get in ib_core).
    ("mlx5_ib", Subsystem::Rdma, ModuleRole::Driver),
    ("mlx4_ib", Subsystem::Rdma, ModuleRole::Driver),
    ("rdma_rxe", Subsystem::Rdma, ModuleRole::Driver),
    ("siw", Subsystem::Rdma, ModuleRole::Driver),
    ("irdma", Subsystem::Rdma, ModuleRole::Driver),
    ("bnxt_re", Subsystem::Rdma, ModuleRole::Driver),
    ("efa", Subsystem::Rdma, ModuleRole::Driver),
    ("hfi1", Subsystem::Rdma, ModuleRole::Driver),
    ("qedr", Subsystem::Rdma, ModuleRole::Driver),
    ("mana_ib", Subsystem::Rdma, ModuleRole::Driver),
    ("erdma", Subsystem::Rdma, ModuleRole::Driver),
    ("hns_roce_hw_v2", Subsystem::Rdma, ModuleRole::Driver),
    ("ocrdma", Subsystem::Rdma, ModuleRole::Driver),
    ("vmw_pvrdma", Subsystem::Rdma, ModuleRole::Driver),
    ("iw_cxgb4", Subsystem::Rdma, ModuleRole::Driver),
    ("ib_uverbs", Subsystem::Rdma, ModuleRole::Core),
    ("ib_core", Subsystem::Rdma, ModuleRole::Core),
    // VFIO as modules (the `vfio_` name rule covers its functions too).
    ("vfio_iommu_type1", Subsystem::Vfio, ModuleRole::Core),
    ("vfio", Subsystem::Vfio, ModuleRole::Core),
];

/// The [`DRIVER_MODULES`] row of a module: its name (static, for labels),
/// subsystem and role.
pub fn of_module(module: &str) -> Option<(&'static str, Subsystem, ModuleRole)> {
    DRIVER_MODULES.iter().find(|(m, _, _)| *m == module).copied()
}

/// Frames that are GUP machinery or gupwatch itself, never "the caller".
fn is_machinery(f: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "bpf_", "__bpf_", "pin_user_pages", "get_user_pages", "unpin_user_page", "unpin_folio",
        "unpin_user_folio", "memfd_pin_folios", "__gup_", "gup_", "internal_get_user_pages",
        "__get_user_pages", "lockless_pages_from_mm", "iov_iter_extract", "iov_iter_get_pages",
        "__iov_iter_get_pages", "want_pages_array", "try_grab_", "follow_page", "faultin_page",
        "check_and_migrate", "migrate_longterm", "arch_rethook", "rethook", "kretprobe",
        "__kretprobe", "kprobe", "ftrace", "__x64_sys", "x64_sys_call", "do_syscall_64",
        "entry_SYSCALL",
    ];
    PREFIXES.iter().any(|p| f.starts_with(p))
}

/// One frame of a stack as attribution reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Function name.
    pub function: &'a str,
    /// Its module, `None` for vmlinux.
    pub module: Option<&'a str>,
}

/// Classifies a stack of function names (all in vmlinux).
pub fn classify(frames: &[&str]) -> Caller {
    let frames: Vec<Frame<'_>> = frames.iter().map(|f| Frame { function: f, module: None }).collect();
    classify_frames(&frames)
}

/// Classifies a stack of frames with their modules (innermost first).
pub fn classify_frames(frames: &[Frame<'_>]) -> Caller {
    let caller = frames.iter().find(|f| !is_machinery(f.function));
    // Per frame, its module decides before its name: a module is what the
    // frame's code is, a name prefix only what it looks like.
    let subsystem = frames
        .iter()
        .find_map(|f| f.module.and_then(of_module).map(|(_, s, _)| s).or_else(|| Subsystem::of_function(f.function)))
        .unwrap_or(Subsystem::Other);
    let known = |role| frames.iter().find_map(|f| f.module.and_then(of_module).filter(|(_, _, r)| *r == role));
    let module = known(ModuleRole::Driver)
        .or_else(|| known(ModuleRole::Core))
        .map(|(m, _, _)| m.to_string())
        .or_else(|| caller.and_then(|f| f.module).map(str::to_string));
    Caller {
        function: caller.map_or_else(|| "unknown".to_string(), |f| f.function.to_string()),
        subsystem,
        module,
    }
}

/// Symbolizes a kernel stack (return addresses, innermost first) and
/// classifies it: what every view that names a caller uses.
pub fn caller_of(ips: &[u64], kallsyms: &Kallsyms) -> Caller {
    let frames: Vec<Frame<'_>> = ips
        .iter()
        .filter_map(|ip| kallsyms.frame(*ip).map(|f| Frame { function: f.function, module: f.module }))
        .collect();
    classify_frames(&frames)
}

/// One attribution row, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Process id.
    pub tgid: u32,
    /// Process name (`comm` of the first call seen).
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// The API called.
    pub api: &'static str,
    /// Who called it.
    pub caller: Caller,
    /// Calls.
    pub calls: u64,
    /// Pages pinned, referenced or released.
    pub pages: u64,
    /// Failed calls.
    pub errors: u64,
    /// Pages the fast walk took.
    pub fast_pages: u64,
    /// Pages the slow path took.
    pub slow_pages: u64,
    /// Pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
}

/// Resolves raw attribution entries with their stacks.
///
/// `stack` returns the instruction pointers of a stack id (innermost first);
/// stacks are resolved once per id. An entry whose stack was not captured
/// is named by its site (the return address into its caller) alone.
pub fn resolve(
    entries: &[(AttribKey, AttribValue)],
    kallsyms: &Kallsyms,
    mut stack: impl FnMut(i64) -> Option<Vec<u64>>,
) -> Vec<Row> {
    let mut callers: BTreeMap<(i64, u64), Caller> = BTreeMap::new();
    let mut rows = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let by = if v.stack_id >= 0 { (v.stack_id, 0) } else { (-1, k.site) };
        let caller = callers
            .entry(by)
            .or_insert_with(|| {
                let captured = if v.stack_id >= 0 { stack(v.stack_id) } else { None };
                let ips = captured.unwrap_or_else(|| if k.site != 0 { vec![k.site] } else { vec![] });
                caller_of(&ips, kallsyms)
            })
            .clone();
        let Some(api) = Api::from_index(k.api) else { continue };
        rows.push(Row {
            tgid: k.tgid,
            comm: comm_string(&v.comm),
            cgroup_id: v.cgroup_id,
            api: api.symbol(),
            caller,
            calls: v.calls,
            pages: v.pages,
            errors: v.errors,
            fast_pages: v.fast_pages,
            slow_pages: v.slow_pages,
            longterm_pages: v.longterm_pages,
        });
    }
    rows
}

/// A `comm` as text: up to the first NUL, invalid UTF-8 replaced.
pub fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The attribution entries that changed between two readings, as deltas.
pub fn since(
    now: &[(AttribKey, AttribValue)],
    earlier: &[(AttribKey, AttribValue)],
) -> Vec<(AttribKey, AttribValue)> {
    let before: std::collections::HashMap<(u32, u32, u64), &AttribValue> =
        earlier.iter().map(|(k, v)| ((k.tgid, k.api, k.site), v)).collect();
    now.iter()
        .filter_map(|(k, v)| {
            let d = match before.get(&(k.tgid, k.api, k.site)) {
                Some(b) => AttribValue {
                    calls: v.calls.wrapping_sub(b.calls),
                    pages: v.pages.wrapping_sub(b.pages),
                    errors: v.errors.wrapping_sub(b.errors),
                    fast_pages: v.fast_pages.wrapping_sub(b.fast_pages),
                    slow_pages: v.slow_pages.wrapping_sub(b.slow_pages),
                    longterm_pages: v.longterm_pages.wrapping_sub(b.longterm_pages),
                    ..*v
                },
                None => *v,
            };
            (d.calls > 0).then_some((*k, d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_symbolized_then_classified() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T pin_user_pages\nffffffff81000100 T io_pin_pages\nffffffff81000200 T io_sqe_buffers_register\n",
        );
        let c = caller_of(&[0xffffffff81000010, 0xffffffff81000123, 0xffffffff81000210], &k);
        assert_eq!(c.function, "io_pin_pages");
        assert_eq!(c.subsystem, Subsystem::IoUring);
        assert_eq!(caller_of(&[], &k).function, "unknown");
        assert_eq!(caller_of(&[0x10], &k).function, "unknown", "addresses outside the table name nothing");
    }

    #[test]
    fn the_caller_is_the_first_frame_outside_gup_and_bpf() {
        let stacks: [(&[&str], &str, Subsystem); 3] = [
            // GUP and BPF frames are skipped.
            (
                &[
                    "bpf_prog_abc_fe_3",
                    "bpf_trampoline_6442",
                    "pin_user_pages_remote",
                    "process_vm_rw_core",
                    "process_vm_rw",
                    "__x64_sys_process_vm_readv",
                    "do_syscall_64",
                ],
                "process_vm_rw_core",
                Subsystem::ProcessVm,
            ),
            // Direct I/O's caller is the bio layer.
            (
                &[
                    "pin_user_pages_fast",
                    "iov_iter_extract_pages",
                    "bio_iov_iter_get_pages",
                    "iomap_dio_bio_iter",
                    "__iomap_dio_rw",
                    "ext4_file_write_iter",
                ],
                "bio_iov_iter_get_pages",
                Subsystem::DirectIo,
            ),
            // Unknown callers keep their symbol.
            (&["pin_user_pages", "my_driver_map_user", "my_driver_ioctl"], "my_driver_map_user", Subsystem::Other),
        ];
        for (stack, function, subsystem) in stacks {
            let c = classify(stack);
            assert_eq!(c.function, function, "{stack:?}");
            assert_eq!(c.subsystem, subsystem, "{stack:?}");
        }
        assert_eq!(classify(&[]).function, "unknown");
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(b"fio\xff");
        assert_eq!(comm_string(&c), "fio\u{fffd}");
        assert_eq!(comm_string(&[b'a'; 16]), "aaaaaaaaaaaaaaaa");
    }

    #[test]
    fn since_keeps_only_changed_rows() {
        let k = |tgid| AttribKey { tgid, api: 1, site: 0xffff_ffff_8100_0007 };
        let v = |calls, pages| AttribValue { calls, pages, errors: 0, fast_pages: pages, slow_pages: 0, longterm_pages: 0, cgroup_id: 1, stack_id: 7, comm: [0; 16] };
        let earlier = vec![(k(1), v(2, 20)), (k(2), v(1, 1))];
        let now = vec![(k(1), v(5, 50)), (k(2), v(1, 1)), (k(3), v(1, 4))];
        let d = since(&now, &earlier);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].1.calls, d[0].1.pages, d[0].1.fast_pages), (3, 30, 30));
        assert_eq!(d[1].0.tgid, 3);
    }

    fn at(k: &Kallsyms, name: &str, off: u64) -> u64 {
        k.get(name).map(|s| s.addr + off).expect("fixture symbol")
    }

    /// cudaHostRegister on NVIDIA's driver: os_lock_user_pages in the
    /// nvidia module calls pin_user_pages (FOLL_LONGTERM).
    #[test]
    fn nvidia_pins_are_gpu_named_by_module() {
        let k = Kallsyms::parse(crate::kernel::kallsyms::tests::WITH_MODULES);
        let ips = [at(&k, "pin_user_pages", 0x9a), at(&k, "os_lock_user_pages", 0x31), at(&k, "nvidia_ioctl", 0x200), at(&k, "__x64_sys_ioctl", 0x40)];
        let c = caller_of(&ips, &k);
        assert_eq!(c.function, "os_lock_user_pages");
        assert_eq!(c.subsystem, Subsystem::Gpu);
        assert_eq!(c.module.as_deref(), Some("nvidia"));
        // The unlock path: unpin_user_page per page from os_unlock_user_pages.
        let c = caller_of(&[at(&k, "unpin_user_page", 0x10), at(&k, "os_unlock_user_pages", 0x8)], &k);
        assert_eq!((c.function.as_str(), c.subsystem, c.module.as_deref()), ("os_unlock_user_pages", Subsystem::Gpu, Some("nvidia")));
    }

    /// The module frame sits above generic vmlinux frames: the caller is
    /// the first generic frame, the subsystem and module still the driver's.
    #[test]
    fn a_module_frame_above_generic_frames_names_the_driver() {
        let k = Kallsyms::parse(crate::kernel::kallsyms::tests::WITH_MODULES);
        let ips = [
            at(&k, "pin_user_pages_fast", 4),
            at(&k, "iov_iter_extract_pages", 0x60),
            at(&k, "dma_buf_map_attachment", 0x20),
            at(&k, "os_lock_user_pages", 0x31),
            at(&k, "nvidia_ioctl", 0x10),
        ];
        let c = caller_of(&ips, &k);
        assert_eq!(c.function, "dma_buf_map_attachment");
        assert_eq!(c.subsystem, Subsystem::Gpu);
        assert_eq!(c.module.as_deref(), Some("nvidia"));
    }

    /// An RDMA registration: ib_umem_get (ib_core) called by the mlx5
    /// provider. The provider, not the shared core, is the module named.
    #[test]
    fn rdma_providers_are_named_over_the_core() {
        let k = Kallsyms::parse(crate::kernel::kallsyms::tests::WITH_MODULES);
        let c = caller_of(&[at(&k, "pin_user_pages_fast", 8), at(&k, "ib_umem_get", 0x90), at(&k, "mlx5_ib_reg_user_mr", 0x40)], &k);
        assert_eq!((c.function.as_str(), c.subsystem, c.module.as_deref()), ("ib_umem_get", Subsystem::Rdma, Some("mlx5_ib")));
        let c = caller_of(&[at(&k, "unpin_user_page", 8), at(&k, "ib_umem_release", 0x20)], &k);
        assert_eq!((c.subsystem, c.module.as_deref()), (Subsystem::Rdma, Some("ib_core")), "the core when no provider is in the stack");
    }

    #[test]
    fn every_table_module_classifies_and_i915_keeps_its_subsystem() {
        for (m, s, _) in DRIVER_MODULES {
            let c = classify_frames(&[Frame { function: "pin_user_pages", module: None }, Frame { function: "some_fn", module: Some(m) }]);
            assert_eq!((c.subsystem, c.module.as_deref()), (*s, Some(*m)), "{m}");
        }
        for gpu in ["nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia_peermem", "amdgpu", "xe", "habanalabs", "nouveau", "radeon"] {
            assert_eq!(of_module(gpu).map(|(_, s, _)| s), Some(Subsystem::Gpu), "{gpu}");
        }
        for rdma in ["mlx5_ib", "mlx4_ib", "rdma_rxe", "siw", "irdma", "bnxt_re", "efa", "hfi1", "qedr", "ib_uverbs", "ib_core"] {
            assert_eq!(of_module(rdma).map(|(_, s, _)| s), Some(Subsystem::Rdma), "{rdma}");
        }
        assert_eq!(of_module("i915").map(|(_, s, _)| s), Some(Subsystem::I915));
        assert_eq!(classify(&["pin_user_pages_fast", "i915_gem_userptr_get_pages"]).subsystem, Subsystem::I915, "built-in i915: the name rule");
        let unique: std::collections::HashSet<_> = DRIVER_MODULES.iter().map(|(m, _, _)| m).collect();
        assert_eq!(unique.len(), DRIVER_MODULES.len(), "one row per module");
    }

    #[test]
    fn unknown_modules_are_named_but_stay_other() {
        let c = classify_frames(&[
            Frame { function: "pin_user_pages", module: None },
            Frame { function: "mydrv_map_user", module: Some("mydrv") },
            Frame { function: "bpf_prog_1_x", module: Some("bpf") },
        ]);
        assert_eq!((c.function.as_str(), c.subsystem, c.module.as_deref()), ("mydrv_map_user", Subsystem::Other, Some("mydrv")));
        assert_eq!(classify(&["pin_user_pages", "io_sqe_buffer_register"]).module, None);
    }
}
