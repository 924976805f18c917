use super::*;
use crate::kernel::btf::tests::Builder;

fn kallsyms(names: &[&str]) -> Kallsyms {
    Kallsyms::with_functions(names)
}

/// A 6.1-like kernel: 7-argument pin_user_pages_remote, #define FOLL_*.
fn btf_61() -> KernelBtf {
    let mut b = Builder::new();
    let long = b.int();
    b.func("pin_user_pages_remote", &["mm", "start", "nr_pages", "gup_flags", "pages", "vmas", "locked"], long);
    b.func("pin_user_pages_unlocked", &["start", "nr_pages", "pages", "gup_flags"], long);
    b.func("unpin_user_page", &["page"], 0);
    b.func("unpin_user_pages_dirty_lock", &["pages", "npages", "make_dirty"], 0);
    KernelBtf::parse(&b.build()).expect("valid")
}

#[test]
fn arguments_come_from_btf_parameter_names() {
    let btf = btf_61();
    let k = kallsyms(&["pin_user_pages_remote", "pin_user_pages_unlocked", "unpin_user_page", "unpin_user_pages_dirty_lock"]);
    let plan = ProbePlan::resolve("6.1.0-test".into(), Ok(&btf), &k);
    let remote = plan.hook(Api::PinUserPagesRemote);
    assert_eq!((remote.args.count_idx, remote.args.flags_idx, remote.args.nr_args), (2, 3, 7));
    assert_eq!(remote.mechanism, Some(Mechanism::Fentry));
    let unlocked = plan.hook(Api::PinUserPagesUnlocked);
    assert_eq!((unlocked.args.count_idx, unlocked.args.flags_idx), (1, 3));
    assert_eq!(plan.hook(Api::UnpinUserPage).args.count_idx, ARG_NONE);
    assert_eq!(plan.hook(Api::UnpinUserPagesDirtyLock).args.count_idx, 1);
    assert_eq!(plan.hook(Api::PinUserPagesFastOnly).status, HookStatus::Absent);
    assert_eq!(plan.hook_args()[Api::PinUserPagesRemote as usize].count_idx, 2);
}

#[test]
fn foll_values_come_from_btf_when_it_has_them() {
    let k = kallsyms(&[]);
    let legacy = ProbePlan::resolve("6.1".into(), Ok(&btf_61()), &k);
    assert_eq!(legacy.foll.source, FollSource::DefineTable);
    assert_eq!(legacy.foll.values["FOLL_PIN"], 0x40000);

    let mut b = Builder::new();
    b.enumeration(&[("FOLL_WRITE", 1), ("FOLL_LONGTERM", 1 << 8)]);
    b.enumeration(&[("FOLL_PIN", 1 << 19), ("FOLL_FAST_ONLY", 1 << 20)]);
    let btf = KernelBtf::parse(&b.build()).expect("valid");
    let modern = ProbePlan::resolve("6.12".into(), Ok(&btf), &k);
    assert_eq!(modern.foll.source, FollSource::Btf);
    assert_eq!(modern.foll.values["FOLL_PIN"], 1 << 19);
    assert_eq!(modern.foll.decode((1 << 19) | (1 << 8) | 1 | (1 << 30)), ["FOLL_WRITE", "FOLL_LONGTERM", "FOLL_PIN", "0x40000000"]);
}

/// Without BTF, the kernel's generation picks the table: a 6.3+ kernel
/// with the 5.8-6.2 values would count LONGTERM and FOLL_PIN releases
/// wrongly (seen on 7.2 with /sys/kernel/btf hidden).
#[test]
fn foll_values_without_btf_follow_the_kernel_generation() {
    let k = kallsyms(&[]);
    let old = ProbePlan::resolve("6.1.0-50-cloud-amd64".into(), Err("no BTF".into()), &k);
    assert_eq!(old.foll.source, FollSource::DefineTable);
    assert_eq!((old.foll.values["FOLL_PIN"], old.foll.values["FOLL_LONGTERM"]), (0x40000, 0x10000));
    for r in ["6.3.0", "6.12.117+deb13-cloud-amd64", "7.2.13+deb14-cloud-amd64", "10.0-rc1"] {
        let new = ProbePlan::resolve(r.into(), Err("no BTF".into()), &k);
        assert_eq!(new.foll.source, FollSource::EnumTable, "{r}");
        assert_eq!((new.foll.values["FOLL_PIN"], new.foll.values["FOLL_LONGTERM"]), (1 << 19, 1 << 8), "{r}");
    }
    let unknown = ProbePlan::resolve("weird".into(), Err("no BTF".into()), &k);
    assert_eq!(unknown.foll.source, FollSource::DefineTable);
    // Experimental's pre-release names: 7.3, so the 6.3+ table.
    for r in ["7.3-cloud-amd64", "7.3.0-rc7+"] {
        assert_eq!(ProbePlan::resolve(r.into(), Err("no BTF".into()), &k).foll.source, FollSource::EnumTable, "{r}");
    }
    for r in ["", "7", "99999999999.1-huge"] {
        assert_eq!(ProbePlan::resolve(r.into(), Err("no BTF".into()), &k).foll.source, FollSource::DefineTable, "{r:?}");
    }
}

#[test]
fn function_texts_and_stack_size_come_from_kallsyms() {
    let btf = btf_61();
    let k = kallsyms(&["unpin_user_page", "unpin_user_pages_dirty_lock", "next_function"]);
    let plan = ProbePlan::resolve("6.1.0-test".into(), Ok(&btf), &k);
    let t = plan.text_ranges()[Api::UnpinUserPagesDirtyLock as usize];
    assert_eq!((t.start, t.end), (0xffffffff81000010, 0xffffffff81000020));
    assert_eq!(plan.text_ranges()[Api::PinUserPagesFast as usize], TextRange::NONE, "absent");
    assert_eq!((plan.kernel_text.start, plan.kernel_text.end), (0xffffffff81000000, 0xffffffff81000021));
    assert_eq!(plan.page_layout.task_stack_size, 16 << 10);
    let kasan = kallsyms(&["unpin_user_page", "kasan_report"]);
    assert_eq!(ProbePlan::resolve("6.1.0-test".into(), Ok(&btf), &kasan).page_layout.task_stack_size, 32 << 10);
}

#[test]
fn without_btf_everything_present_is_a_kprobe() {
    let k = kallsyms(&["pin_user_pages_fast", "unpin_user_page"]);
    let plan = ProbePlan::resolve("x".into(), Err("no BTF".into()), &k);
    let fast = plan.hook(Api::PinUserPagesFast);
    assert_eq!(fast.mechanism, Some(Mechanism::Kprobe));
    assert_eq!(fast.args.count_idx, 1);
    assert!(fast.reason.contains("no kernel BTF"));
    assert!(!plan.capabilities.direct_io_pins);
}

#[test]
fn kprobes_are_preferred_where_the_kernel_has_them() {
    let btf = btf_61();
    let k = kallsyms(&["pin_user_pages_remote", "unpin_user_page", "arch_rethook_trampoline"]);
    let fresh = || ProbePlan::resolve("6.1.0-test".into(), Ok(&btf), &k);
    let mut auto = fresh();
    auto.prefer(Preference::Auto, true);
    let h = auto.hook(Api::PinUserPagesRemote);
    assert_eq!(h.mechanism, Some(Mechanism::Kprobe));
    assert!(h.fentry_possible, "fentry stays the fallback");
    assert!(h.reason.contains("preemption disabled"), "{}", h.reason);
    // Unpins run in interrupt context too: they stay on fentry.
    let u = auto.hook(Api::UnpinUserPage);
    assert_eq!(u.mechanism, Some(Mechanism::Fentry));
    assert!(u.reason.contains("interrupt context"), "{}", u.reason);
    let mut all = fresh();
    all.prefer(Preference::Kprobe, true);
    assert_eq!(all.hook(Api::UnpinUserPage).mechanism, Some(Mechanism::Kprobe));
    assert_ne!(auto.return_trampoline, 0, "the kretprobe trampoline comes from kallsyms");
    let mut no_kprobes = fresh();
    no_kprobes.prefer(Preference::Auto, false);
    assert_eq!(no_kprobes.hook(Api::UnpinUserPage).mechanism, Some(Mechanism::Fentry));
    let mut forced = fresh();
    forced.prefer(Preference::Fentry, true);
    assert_eq!(forced.hook(Api::UnpinUserPage).mechanism, Some(Mechanism::Fentry));
    // Absent functions get no mechanism either way.
    assert_eq!(forced.hook(Api::PinUserPagesFast).mechanism, None);
    assert_eq!(auto.hook(Api::PinUserPagesFast).mechanism, None);
}

/// kallsyms lines of module functions (`t name [module]`).
fn with_module(vmlinux: &[&str], module: &str, funcs: &[&str]) -> Kallsyms {
    let mut text: String = vmlinux
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{:016x} T {n}\n", 0xffffffff81000000u64 + i as u64 * 16))
        .collect();
    for (i, f) in funcs.iter().enumerate() {
        text += &format!("{:016x} t {f}\t[{module}]\n", 0xffffffffc0000000u64 + i as u64 * 16);
    }
    Kallsyms::parse(&text)
}

/// The userptr functions of Debian's 6.1, 6.12 and 7.2 i915 (kallsyms in
/// the VMs): i915_gem_object_userptr_drop_ref is static and inlined.
const I915_DEBIAN: &[&str] = &[
    "i915_gem_userptr_ioctl",
    "i915_gem_object_userptr_submit_init",
    "i915_gem_object_userptr_submit_done",
    "i915_gem_object_userptr_validate",
    "i915_gem_userptr_get_pages",
    "i915_gem_userptr_put_pages",
    "i915_gem_userptr_release",
];

fn i915_hooks(plan: &ProbePlan) -> Vec<&HookPlan> {
    plan.hooks.iter().filter(|h| h.api.kind() == ApiKind::I915).collect()
}

#[test]
fn i915_roles_resolve_to_the_functions_debian_builds_have() {
    let k = with_module(&["pin_user_pages_fast"], "i915", I915_DEBIAN);
    let plan = ProbePlan::resolve("6.12".into(), Ok(&btf_61()), &k);
    let by = |api| plan.hook(api);
    assert_eq!(by(Api::I915UserptrIoctl).function, "i915_gem_userptr_ioctl");
    assert_eq!(by(Api::I915UserptrSubmitInit).function, "i915_gem_object_userptr_submit_init");
    assert_eq!(by(Api::I915UserptrPutPages).function, "i915_gem_userptr_put_pages");
    // drop_ref is inlined: its other caller plays the role.
    let drop = by(Api::I915UserptrDropRef);
    assert_eq!(drop.function, "i915_gem_userptr_get_pages");
    assert_eq!(drop.symbol.as_deref(), Some("i915_gem_userptr_get_pages"));
    assert_eq!(drop.role, Some("unpin the object's pages at their last reference"));
    assert_eq!(
        drop.candidates,
        [
            CandidateCheck { function: "i915_gem_object_userptr_drop_ref", verdict: "not a symbol".into() },
            CandidateCheck { function: "i915_gem_userptr_get_pages", verdict: "chosen".into() },
        ]
    );
    assert!(drop.reason.contains("because i915_gem_object_userptr_drop_ref is not a symbol in this i915"), "{}", drop.reason);
    for h in i915_hooks(&plan) {
        assert_eq!((h.status.clone(), h.mechanism, h.waits_for_module), (HookStatus::Planned, Some(Mechanism::Kprobe), false), "{}", h.function);
        assert!(h.reason.ends_with("in module i915: aya cannot put fentry on module functions"), "{}", h.reason);
    }
    // Every i915 function is hooked at most once.
    let mut symbols: Vec<_> = i915_hooks(&plan).iter().filter_map(|h| h.symbol.clone()).collect();
    symbols.sort();
    symbols.dedup();
    assert_eq!(symbols.len(), 4);
}

#[test]
fn drop_ref_is_chosen_where_it_is_a_symbol() {
    let mut funcs = I915_DEBIAN.to_vec();
    funcs.push("i915_gem_object_userptr_drop_ref");
    let plan = ProbePlan::resolve("x".into(), Err("no BTF".into()), &with_module(&[], "i915", &funcs));
    let drop = plan.hook(Api::I915UserptrDropRef);
    assert_eq!(drop.function, "i915_gem_object_userptr_drop_ref");
    assert_eq!(drop.candidates[1].verdict, "not needed");
    assert!(drop.reason.starts_with("unpin the object's pages at their last reference: i915_gem_object_userptr_drop_ref ("), "{}", drop.reason);
}

#[test]
fn before_5_13_get_pages_pins_and_no_function_is_hooked_twice() {
    // 5.10-like i915: no submit_init, no drop_ref; get_pages pins.
    let k = with_module(&[], "i915", &["i915_gem_userptr_ioctl", "i915_gem_userptr_get_pages", "i915_gem_userptr_put_pages", "__i915_gem_userptr_get_pages_worker"]);
    let plan = ProbePlan::resolve("5.10".into(), Err("no BTF".into()), &k);
    let pin = plan.hook(Api::I915UserptrSubmitInit);
    assert_eq!((pin.function, pin.status.clone()), ("i915_gem_userptr_get_pages", HookStatus::Planned));
    assert!(pin.reason.contains("i915_gem_object_userptr_submit_init is not a symbol"), "{}", pin.reason);
    assert!(pin.reason.contains("pin_user_pages_fast_only"), "{}", pin.reason);
    let drop = plan.hook(Api::I915UserptrDropRef);
    assert_eq!(drop.status, HookStatus::Absent);
    assert!(!drop.waits_for_module, "i915 is loaded: nothing to wait for");
    assert_eq!(drop.candidates[1].verdict, "already hooked to pin the object's pages");
    assert!(drop.reason.contains("i915 is loaded but has none of its functions"), "{}", drop.reason);
    assert!(drop.reason.contains("put-pages hook credits them"), "{}", drop.reason);
    assert_eq!(plan.hook(Api::I915UserptrPutPages).status, HookStatus::Planned);
}

#[test]
fn without_i915_its_hooks_wait_then_resolve_late() {
    let mut plan = ProbePlan::resolve("6.12".into(), Ok(&btf_61()), &kallsyms(&["pin_user_pages_fast"]));
    for h in i915_hooks(&plan) {
        assert_eq!((h.status.clone(), h.waits_for_module), (HookStatus::Absent, true));
        assert_eq!(h.reason, "i915 not loaded (attached if the module appears)");
    }
    let fast = plan.hook(Api::PinUserPagesFast).clone();
    // Still not loaded: nothing found, still waiting.
    assert!(plan.resolve_late(&kallsyms(&["pin_user_pages_fast"])).is_empty());
    assert!(plan.hook(Api::I915UserptrIoctl).waits_for_module);
    // i915 loads.
    let found = plan.resolve_late(&with_module(&["pin_user_pages_fast"], "i915", I915_DEBIAN));
    assert_eq!(found, [Api::I915UserptrIoctl, Api::I915UserptrSubmitInit, Api::I915UserptrDropRef, Api::I915UserptrPutPages]);
    assert_eq!(plan.hook(Api::I915UserptrDropRef).function, "i915_gem_userptr_get_pages");
    for h in i915_hooks(&plan) {
        assert_eq!((h.status.clone(), h.mechanism, h.waits_for_module), (HookStatus::Planned, Some(Mechanism::Kprobe), false));
    }
    // GUP hooks are left alone.
    assert_eq!((plan.hook(Api::PinUserPagesFast).mechanism, plan.hook(Api::PinUserPagesFast).reason.clone()), (fast.mechanism, fast.reason));
    // Nothing waits any more: a second look finds nothing new.
    assert!(plan.resolve_late(&with_module(&[], "i915", I915_DEBIAN)).is_empty());
}

#[test]
fn hooks_know_their_module_and_wait_while_it_is_away() {
    let mut plan = ProbePlan::resolve("6.12".into(), Ok(&btf_61()), &kallsyms(&["pin_user_pages_fast"]));
    assert_eq!(plan.hook(Api::PinUserPagesFast).module, None, "vmlinux");
    assert!(i915_hooks(&plan).iter().all(|h| h.module.as_deref() == Some("i915")), "awaited module");
    plan.resolve_late(&with_module(&["pin_user_pages_fast"], "i915", I915_DEBIAN));
    assert!(i915_hooks(&plan).iter().all(|h| h.module.as_deref() == Some("i915") && h.symbol.is_some()));
    // Unloaded (the loader marks the hook so), then a look while another
    // module's symbols are in: it keeps waiting, with the loader's reason.
    let h = &mut plan.hooks[Api::I915UserptrIoctl as usize];
    (h.status, h.waits_for_module, h.symbol, h.reason) = (HookStatus::Absent, true, None, "i915 was unloaded".into());
    assert!(plan.resolve_late(&with_module(&["pin_user_pages_fast"], "nvidia", &["nv_ioctl"])).is_empty());
    let h = plan.hook(Api::I915UserptrIoctl);
    assert_eq!((h.waits_for_module, h.module.as_deref(), h.reason.as_str()), (true, Some("i915"), "i915 was unloaded"));
    // i915 back: resolved afresh.
    let found = plan.resolve_late(&with_module(&["pin_user_pages_fast"], "i915", I915_DEBIAN));
    assert_eq!(found, [Api::I915UserptrIoctl]);
}

#[test]
fn a_loaded_i915_without_a_role_function_names_what_is_missing() {
    let k = with_module(&[], "i915", &["i915_gem_userptr_ioctl", "i915_gem_userptr_put_pages"]);
    let plan = ProbePlan::resolve("x".into(), Err("no BTF".into()), &k);
    let pin = plan.hook(Api::I915UserptrSubmitInit);
    assert_eq!((pin.status.clone(), pin.waits_for_module, pin.function), (HookStatus::Absent, false, "i915_gem_object_userptr_submit_init"));
    assert!(
        pin.reason.contains("i915_gem_object_userptr_submit_init is not a symbol in this i915")
            && pin.reason.contains("i915_gem_userptr_get_pages is not a symbol in this i915"),
        "{}",
        pin.reason
    );
    assert!(pin.reason.ends_with("pins are still counted per API, but not per object"), "{}", pin.reason);
}

#[test]
fn direct_io_capability_follows_iov_iter_extract_pages() {
    let plan = ProbePlan::resolve("x".into(), Err("none".into()), &kallsyms(&["iov_iter_extract_pages"]));
    assert!(plan.capabilities.direct_io_pins);
}
