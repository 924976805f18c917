use super::*;
use super::facts::{fentry_refusal, CAP_BPF, CAP_PERFMON, CAP_SYSLOG};
use crate::kernel::plan::HookStatus;

/// A healthy 6.12 host as root.
fn healthy() -> Facts {
    Facts {
        kernel: "6.12.0-test".into(),
        running: crate::kernel::version::RunningKernel::from_strings("6.12.0-test", None, None),
        euid: 0,
        cap_eff: Some(0x1ff_ffff_ffff),
        btf: Ok(()),
        lockdown: Some("[none] integrity confidentiality".into()),
        bpf_jit: Some("1".into()),
        kprobe_pmu: true,
        kprobes_config: Some(true),
        kptr_restrict: Some("1".into()),
        perf_event_paranoid: Some(3),
        tracefs_mounted: true,
        kallsyms: Ok((90_000, true)),
        i915_loaded: false,
        functions: vec![
            FunctionFact { function: "pin_user_pages_fast", present: true, kind: "pin" },
            FunctionFact { function: "unpin_user_pages", present: true, kind: "unpin" },
            FunctionFact { function: "pin_user_pages_fast_only", present: false, kind: "pin" },
            FunctionFact { function: "i915_gem_userptr_ioctl", present: false, kind: "i915" },
        ],
        tracepoint: Trial::Works { target: "sched:sched_process_exit".into() },
        fentry: Trial::Works { target: "unpin_user_page".into() },
        kprobe: Trial::Works { target: "unpin_user_page".into() },
        missing_helpers: vec![],
        hooks: Some(HookFacts { present: 19, attached: 19, fentry: 19, kprobe: 0, ..HookFacts::default() }),
        reduced: ReducedMode { available: true, acquired: Some(10), released: Some(8), error: None },
        memlock: None,
    }
}

/// This project's build machine: 6.18, no CONFIG_KPROBES, fentry EPERM.
fn no_tracing() -> Facts {
    let eperm = "program load refused: Operation not permitted (os error 1)".to_string();
    Facts {
        kprobe_pmu: false,
        kprobes_config: Some(false),
        fentry: Trial::Fails { target: "unpin_user_page".into(), error: eperm.clone() },
        kprobe: Trial::Fails { target: "unpin_user_page".into(), error: "`perf_event_open` failed: No such file or directory".into() },
        hooks: Some(HookFacts {
            present: 19,
            attached: 0,
            failed: vec![FailedHook { function: "pin_user_pages".into(), error: format!("fentry: {eperm}; kprobe: no PMU") }],
            ..HookFacts::default()
        }),
        ..healthy()
    }
}

fn find<'a>(r: &'a Report, id: &str) -> &'a Finding {
    r.findings.iter().find(|f| f.id == id).unwrap_or_else(|| panic!("no {id}"))
}

#[test]
fn a_kernel_without_the_helpers_is_reduced_and_names_them() {
    // Debian bullseye's 5.10: the loader refuses before trying.
    let why = "no program can load: the kernel lacks bpf_loop (Linux 5.17+)".to_string();
    let f = Facts {
        missing_helpers: vec!["bpf_loop (Linux 5.17+)".into(), "bpf_get_func_arg (Linux 5.17+)".into()],
        tracepoint: Trial::NotTried { why: why.clone() },
        fentry: Trial::NotTried { why: why.clone() },
        kprobe: Trial::NotTried { why },
        hooks: Some(HookFacts { present: 14, attached: 0, load_error: Some("this kernel lacks BPF helpers".into()), ..HookFacts::default() }),
        ..healthy()
    };
    let r = evaluate(&f);
    assert_eq!((r.verdict, r.exit_code), (Verdict::Reduced, 1));
    let h = find(&r, "bpf_helpers");
    assert_eq!(h.status, Status::Fail);
    assert!(h.detail.contains("bpf_loop (Linux 5.17+), bpf_get_func_arg (Linux 5.17+)"), "{}", h.detail);
    assert!(h.fix.as_deref().is_some_and(|x| x.contains("reduced mode")));
    // A kernel that has them gets no such finding.
    assert!(evaluate(&healthy()).findings.iter().all(|f| f.id != "bpf_helpers"));
}

#[test]
fn healthy_host_is_full() {
    let r = evaluate(&healthy());
    assert_eq!((r.verdict, r.exit_code), (Verdict::Full, 0));
    assert!(r.findings.iter().all(|f| f.status <= Status::Info), "{:#?}", r.findings);
    assert!(find(&r, "gup_functions").detail.contains("2 of 3 GUP functions"), "i915 hooks are not GUP functions");
    assert!(find(&r, "gup_functions").detail.contains("pin_user_pages_fast_only"));
}

#[test]
fn no_kprobes_and_fentry_eperm_is_reduced_and_says_why() {
    let r = evaluate(&no_tracing());
    assert_eq!((r.verdict, r.exit_code), (Verdict::Reduced, 1));
    let k = find(&r, "kprobe");
    assert_eq!(k.status, Status::Fail);
    assert!(k.detail.contains("without CONFIG_KPROBES"), "{}", k.detail);
    let fe = find(&r, "fentry");
    assert_eq!(fe.status, Status::Fail);
    assert!(fe.detail.contains("Operation not permitted"));
    assert!(fe.fix.as_deref().unwrap().contains("EPERM"));
    assert_eq!(find(&r, "vmstat").status, Status::Ok);
    assert!(r.summary.contains("reduced mode") && r.summary.contains("kprobe") && r.summary.contains("fentry"), "{}", r.summary);
    assert!(r.to_text().contains("verdict: REDUCED (exit 1)"));
}

#[test]
fn fentry_refused_but_kprobes_work_is_a_warning() {
    let f = Facts {
        fentry: Trial::Fails { target: "unpin_user_page".into(), error: "os error 524".into() },
        hooks: Some(HookFacts { present: 19, attached: 19, kprobe: 19, ..HookFacts::default() }),
        ..healthy()
    };
    let r = evaluate(&f);
    assert_eq!(r.verdict, Verdict::Full);
    assert_eq!(find(&r, "fentry").status, Status::Warn);
    assert!(find(&r, "fentry").fix.as_deref().unwrap().contains("six arguments"));
}

/// Root with only CAP_BPF, CAP_PERFMON and CAP_SYSLOG on a Debian kernel
/// (perf_event_paranoid=3), as measured in the 6.12 VM.
#[test]
fn debian_paranoid_perf_needs_sys_admin() {
    let denied = "`perf_event_open` failed: Permission denied (os error 13)".to_string();
    let f = Facts {
        cap_eff: Some((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYSLOG)),
        kprobe: Trial::Fails { target: "unpin_user_page".into(), error: denied.clone() },
        tracepoint: Trial::Fails { target: "sched:sched_process_exit".into(), error: "tracepoint: `perf_event_open_trace_point` failed: Permission denied (os error 13)".into() },
        ..healthy()
    };
    let r = evaluate(&f);
    assert_eq!(r.verdict, Verdict::Full, "fentry covers every hook on 6.12");
    let k = find(&r, "kprobe");
    assert_eq!(k.status, Status::Warn);
    assert!(k.detail.contains("perf_event_paranoid=3"), "{}", k.detail);
    assert!(k.fix.as_deref().unwrap().contains("CAP_SYS_ADMIN"));
    assert!(find(&r, "tracepoint").fix.as_deref().unwrap().contains("perf_event_paranoid=2"));
    // With CAP_SYS_ADMIN the same error is something else.
    let g = Facts { cap_eff: Some(u64::MAX >> 23), ..f.clone() };
    assert!(!find(&evaluate(&g), "kprobe").detail.contains("perf_event_paranoid"));
    // A service user: tracefs mounted but 0700 root.
    let tracefs = "tracepoint sched/sched_process_exit: tracefs not found".to_string();
    let u = Facts { euid: 65534, tracepoint: Trial::Fails { target: "sched:sched_process_exit".into(), error: tracefs }, ..f };
    assert!(find(&evaluate(&u), "tracepoint").fix.as_deref().unwrap().contains("CAP_DAC_READ_SEARCH"));
    let unmounted = Facts { tracefs_mounted: false, ..u };
    assert!(find(&evaluate(&unmounted), "tracepoint").fix.as_deref().unwrap().starts_with("mount -t tracefs"));
}

#[test]
fn partial_unprivileged_and_cannot_run() {
    let partial = Facts {
        hooks: Some(HookFacts {
            present: 19,
            attached: 17,
            failed: vec![FailedHook { function: "a".into(), error: "e".into() }, FailedHook { function: "b".into(), error: "e".into() }],
            ..HookFacts::default()
        }),
        ..healthy()
    };
    let r = evaluate(&partial);
    assert_eq!((r.verdict, r.exit_code), (Verdict::Partial, 1));
    assert!(find(&r, "probe_plan").detail.ends_with("; a, b: e"), "{}", find(&r, "probe_plan").detail);
    assert!(!evaluate(&healthy()).findings.iter().any(|f| f.id == "memlock"), "memlock only matters when loading failed");

    let user = Facts {
        euid: 1000,
        cap_eff: Some(0),
        hooks: Some(HookFacts { present: 19, load_error: Some("EPERM".into()), ..HookFacts::default() }),
        ..no_tracing()
    };
    let r = evaluate(&user);
    assert_eq!(find(&r, "privileges").status, Status::Fail);
    assert!(find(&r, "privileges").detail.contains("uid 1000"));
    assert_eq!(r.verdict, Verdict::Reduced);

    // A service user with ambient CAP_BPF + CAP_PERFMON is privileged.
    let service = Facts { euid: 999, cap_eff: Some((1 << CAP_BPF) | (1 << CAP_PERFMON)), ..healthy() };
    assert_eq!(find(&evaluate(&service), "privileges").status, Status::Ok);

    let none = Facts {
        reduced: ReducedMode { available: false, acquired: None, released: None, error: Some("no /proc".into()) },
        ..user
    };
    let r = evaluate(&none);
    assert_eq!((r.verdict, r.exit_code), (Verdict::CannotRun, 2));
}

#[test]
fn host_details() {
    let f = Facts {
        lockdown: Some("none integrity [confidentiality]".into()),
        bpf_jit: Some("0".into()),
        kallsyms: Ok((100, false)),
        i915_loaded: true,
        memlock: Some((65536, 65536)),
        hooks: Some(HookFacts { present: 19, load_error: Some("EPERM".into()), ..HookFacts::default() }),
        ..healthy()
    };
    let r = evaluate(&f);
    assert_eq!(find(&r, "lockdown").status, Status::Fail);
    assert_eq!(find(&r, "bpf_jit").status, Status::Warn);
    assert!(find(&r, "kallsyms").detail.contains("kptr_restrict=1"));
    assert!(find(&r, "i915").detail.starts_with("i915 loaded"));
    assert!(find(&r, "memlock").fix.is_some());
}

#[test]
fn json_is_stable() {
    let v = serde_json::to_value(evaluate(&no_tracing())).unwrap();
    for key in ["schema", "gupwatch_version", "kernel", "verdict", "exit_code", "summary", "findings", "mechanisms", "hooks", "reduced_mode"] {
        assert!(v.get(key).is_some(), "{key}");
    }
    assert_eq!(v["schema"], 1);
    assert_eq!(v["verdict"], "reduced");
    assert_eq!(v["mechanisms"]["fentry"]["result"], "fails");
    assert_eq!(v["mechanisms"]["tracepoint"]["result"], "works");
    assert_eq!(v["findings"][0]["id"], "privileges");
    assert_eq!(v["findings"][0]["status"], "ok");
    let ids: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["privileges", "kernel_btf", "lockdown", "bpf_jit", "kallsyms", "tracepoint", "fentry", "kprobe", "gup_functions", "i915", "vmstat", "probe_plan", "kernel"]
    );
}

#[test]
fn kernel_version_finding() {
    assert_eq!(find(&evaluate(&healthy()), "kernel").status, Status::Ok);
    let rc = |release: &str, uname_v: &str| Facts {
        running: crate::kernel::version::RunningKernel::from_strings(release, Some(uname_v), None),
        ..healthy()
    };
    let r = evaluate(&rc("7.3-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)"));
    assert_eq!((find(&r, "kernel").status, r.verdict), (Status::Info, Verdict::Full), "a pre-release alone changes no verdict");
    let r = evaluate(&rc("?!", ""));
    let k = find(&r, "kernel");
    assert_eq!((k.status, r.verdict), (Status::Warn, Verdict::Full));
    assert!(k.fix.is_some(), "a warning says what to do");
}

#[test]
fn parsing_helpers() {
    assert_eq!(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
    assert_eq!(parse_cap_eff("CapInh:\t0\n"), None);
    assert_eq!(
        fentry_refusal(&HookStatus::Failed("fentry: EPERM bad; kprobe: no".into()), ""),
        Some("EPERM bad".into())
    );
    assert_eq!(
        fentry_refusal(&HookStatus::Attached, "fentry refused (os error 524 (x)): fell back to kprobe"),
        Some("os error 524 (x)".into())
    );
    assert_eq!(fentry_refusal(&HookStatus::Attached, "in BTF with 2 arguments"), None);
}
