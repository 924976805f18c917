//! The probe plan: everything gupwatch needs to know about the running
//! kernel, resolved in one place from its BTF and `/proc/kallsyms`.
//!
//! For each GUP entry point the plan says whether the kernel has it, where
//! its arguments are (by parameter name, since positions moved between
//! versions), and how to hook it: fentry/fexit when BTF describes the
//! function, kprobe/kretprobe otherwise. The loader then tries the plan and
//! records what really happened (fentry can still be refused at attach time,
//! e.g. 6.1's x86 trampoline takes at most six arguments), so the printed
//! plan shows the truth. Kernel version strings are parsed only in
//! [`crate::kernel::version`], and read here only for the FOLL_* values of a kernel
//! without BTF and for what gates `bpf()` after start-up ([`BpfGates`],
//! which the capabilities kept follow; no symbol shows it).

pub mod bpf_helpers;

use std::collections::BTreeMap;

use gup_common::{skipped::{TextRange, UnpinTexts}, Api, ApiKind, HookArgs, API_COUNT, ARG_NONE, PAGES_ARRAY, PAGES_FOLIO, PAGES_RANGE};
use serde::Serialize;

use crate::{kernel::btf::KernelBtf, kernel::kallsyms::Kallsyms};

mod foll;
mod gates;
mod i915;
pub mod object;

pub use object::ObjectLookup;
pub use gates::BpfGates;
pub use foll::{FollFlags, FollSource, FOLL_NAMES};
pub use i915::{i915_role, resolve_i915, Candidate, CandidateCheck, I915Choice, I915Role};

/// How a hook is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// fentry + fexit through a BPF trampoline (needs BTF).
    Fentry,
    /// kprobe + kretprobe (needs CONFIG_KPROBES; works without BTF and on
    /// module functions and compiler clones).
    Kprobe,
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mechanism::Fentry => "fentry/fexit",
            Mechanism::Kprobe => "kprobe/kretprobe",
        })
    }
}

/// Where a hook stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum HookStatus {
    /// Resolved, not attached yet.
    Planned,
    /// Attached and counting.
    Attached,
    /// The kernel has no such function (not an error: APIs come and go).
    Absent,
    /// Could not be attached; the reason says why.
    Failed(String),
}

/// The plan for one hooked function.
#[derive(Clone, Debug, Serialize)]
pub struct HookPlan {
    /// Which API.
    #[serde(skip)]
    pub api: Api,
    /// The kernel function hooked. For a logical hook (i915's, see
    /// [`I915Role`]) the candidate chosen on this kernel, or its first
    /// candidate when none exists.
    pub function: &'static str,
    /// What a logical hook does, whichever function plays it (`None` for
    /// the GUP APIs, which are their function).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// A logical hook's candidate functions, best first, and what became
    /// of each on this kernel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateCheck>,
    /// Absent because its module is not loaded yet: attached when it is
    /// ([`ProbePlan::resolve_late`]).
    pub waits_for_module: bool,
    /// The module the function is in (`None`: vmlinux), or the one a
    /// waiting hook waits for: its hooks die when it is unloaded and are
    /// attached again when it loads ([`crate::probes::modwatch`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The symbol to attach to (differs for compiler clones).
    pub symbol: Option<String>,
    /// pin, get or unpin.
    pub kind: &'static str,
    /// Parameter names from BTF, when BTF describes the function.
    pub params: Option<Vec<String>>,
    /// Argument positions handed to the programs.
    #[serde(serialize_with = "ser_hook_args")]
    pub args: HookArgs,
    /// How it is (or will be) attached.
    pub mechanism: Option<Mechanism>,
    /// fentry/fexit would work here too (BTF describes the function under
    /// its own name, in vmlinux): the fallback when a preferred kprobe
    /// cannot be attached.
    #[serde(skip)]
    pub fentry_possible: bool,
    /// The function's BTF type id, where fentry is possible: what the
    /// loader hands the kernel to attach fentry/fexit, so that it need not
    /// parse the kernel's BTF a second time (see `loader::fentry_btf`).
    #[serde(skip)]
    pub btf_id: Option<u32>,
    /// Where the function's text lies (kallsyms): the programs tell by it
    /// whether a release counted with no record around it was made inside
    /// this function ([`gup_common::skipped`]).
    #[serde(skip)]
    pub text: TextRange,
    /// Under fentry, a kprobe beside it counts the calls made in task
    /// context (the fentry program keeps those in interrupts): a kprobe
    /// handler runs with preemption disabled, so no preempted task can make
    /// the kernel skip it ([`TASK_KPROBE_WHY`]).
    pub task_kprobe: bool,
    /// Why that mechanism, and any fallback taken.
    pub reason: String,
    /// Attached or not.
    pub status: HookStatus,
}

fn ser_hook_args<S: serde::Serializer>(a: &HookArgs, s: S) -> Result<S::Ok, S::Error> {
    let idx = |i: u8| (i != ARG_NONE).then_some(i);
    let mut m = BTreeMap::new();
    m.insert("count", idx(a.count_idx));
    m.insert("gup_flags", idx(a.flags_idx));
    m.insert("start", idx(a.start_idx));
    m.serialize(s)
}

/// What a kernel's GUP users do, derived from which functions it has.
#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    /// Block direct I/O pins user pages (FOLL_PIN) rather than taking
    /// references. True when the kernel has `iov_iter_extract_pages`, which
    /// arrived (6.3) with that change.
    pub direct_io_pins: bool,
    /// Why `direct_io_pins` has its value.
    pub direct_io_reason: String,
    /// GUP refuses FOLL_LONGTERM write pins of file mappings that need
    /// dirty tracking (ext4, xfs, btrfs; not shmem or hugetlbfs): the fast
    /// path in `gup_fast_folio_allowed` (`folio_fast_pin_allowed` before
    /// 6.10), the slow path in `check_vma_flags` with -EFAULT. Both arrived
    /// in 6.5, in the series that also removed `pin_user_pages`' `vmas`
    /// parameter and with it io_uring's own check of file-backed buffers.
    pub longterm_file_rule: bool,
    /// Why `longterm_file_rule` has its value.
    pub longterm_file_rule_reason: String,
    /// io_uring coalesces a fixed buffer that lies in large folios
    /// (hugetlb): it keeps one pin per folio and drops the others while
    /// registering. True when `struct io_mapped_ubuf` has a `folio_shift`
    /// (BTF), or the kernel has `io_check_coalesce_buffer` (kallsyms; 6.12
    /// inlines it): both arrived with the coalescing (6.10).
    pub io_uring_coalesces: bool,
    /// BPF helpers gupwatch's programs call that this kernel lacks
    /// ([`bpf_helpers`]), as `name (Linux X+)`: when any is, no program
    /// loads and gupwatch runs in the reduced mode.
    pub missing_helpers: Vec<String>,
    /// What gates `bpf()` after start-up, for the capabilities kept
    /// ([`crate::kernel::privileges`]); not part of the printed plan.
    #[serde(skip)]
    pub bpf_gates: BpfGates,
}

/// The probe plan for the running kernel.
#[derive(Clone, Debug, Serialize)]
pub struct ProbePlan {
    /// `uname -r`.
    pub kernel: String,
    /// Whether kernel BTF was readable, and the error if not.
    pub btf: Result<(), String>,
    /// One entry per API, in [`Api`] order.
    pub hooks: Vec<HookPlan>,
    /// gup_flags bit values.
    pub foll: FollFlags,
    /// Behaviour derived from the kernel's functions.
    pub capabilities: Capabilities,
    /// `struct page` layout for pin tracking.
    pub page_layout: PageLayout,
    /// Address of the kernel's kretprobe return trampoline (0: unknown). A
    /// kretprobe replaces its function's return address with it, so the
    /// programs accept it in place of the one a call was entered with
    /// (`gup_common::irq::record_is_live`).
    pub return_trampoline: u64,
    /// The core kernel's text ([`Kallsyms::core_text`]), for the programs'
    /// `KERNEL_TEXT`.
    #[serde(skip)]
    pub kernel_text: TextRange,
    /// The process-exit tracepoint (orphaned-pin detection).
    pub exit_hook: HookStatus,
    /// How the programs find the file behind a LONGTERM pin, whose
    /// holders keep the pins alive.
    pub object_lookup: ObjectLookup,
    /// The task-file iterator that names the live holders of RDMA and
    /// VFIO contexts (`holders/iter.rs`): attached, or why not.
    pub holder_iter: HookStatus,
}

/// `struct page` facts the tracking programs need, from BTF.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PageLayout {
    /// Offset of `compound_head` (`compound_info` since 7.0).
    pub compound_head: u64,
    /// `sizeof(struct page)`.
    pub size: u64,
    /// Whether both came from BTF (else the x86-64 defaults 8 and 64).
    pub from_btf: bool,
    /// Offset of `stack` in `struct task_struct`, to tell interrupt
    /// context (direct I/O completions unpin from softirq) from the
    /// interrupted task; 0 when BTF lacks it (detection off).
    pub task_stack: u64,
    /// The task stack's length (`THREAD_SIZE`): 32 KiB when kallsyms shows
    /// KASAN, else 16 KiB (x86-64).
    pub task_stack_size: u64,
    /// `vmemmap_base`, the `struct page` of PFN 0, to place a tracked folio
    /// in its zone ([`crate::kernel::placement`]); 0 when unreadable (no
    /// `/proc/kcore`, addresses hidden). A kernel address: kept out of the
    /// serialized plan.
    #[serde(skip)]
    pub vmemmap_base: u64,
}

impl PageLayout {
    fn resolve(btf: Option<&KernelBtf>, kallsyms: &Kallsyms) -> PageLayout {
        let kasan = ["kasan_report", "__asan_load8"].iter().any(|f| kallsyms.get(f).is_some());
        let task_stack_size = gup_common::irq::thread_size(kasan);
        // Renamed compound_info in 7.0 (same word, a new tail encoding that
        // gup_common::folio_of also decodes).
        let head = |b: &KernelBtf| b.member_offset("page", "compound_head").or_else(|| b.member_offset("page", "compound_info"));
        let found = btf.and_then(|b| Some((head(b)?, b.struct_size("page")?)));
        let task_stack = btf.and_then(|b| b.member_offset("task_struct", "stack")).unwrap_or(0) as u64;
        match found {
            Some((off, size)) => PageLayout { compound_head: off as u64, size: size as u64, from_btf: true, task_stack, task_stack_size, vmemmap_base: 0 },
            None => PageLayout { compound_head: 8, size: 64, from_btf: false, task_stack, task_stack_size, vmemmap_base: 0 },
        }
    }
}

/// Parameter names for the page/folio count, in order of preference.
const COUNT_PARAMS: &[&str] = &["nr_pages", "npages", "nfolios", "max_folios", "refs"];

/// Argument positions when BTF is unavailable: the layout of 6.5 and later
/// (6.1's extra `vmas` argument comes after the ones read here, except for
/// `pin_user_pages_remote`'s `locked`, which is not read).
fn fallback_args(api: Api) -> HookArgs {
    let (pages_idx, pages_form) = pages_arg(api);
    let a = |count_idx: u8, flags_idx: u8, start_idx: u8, nr_args: u8| HookArgs {
        count_idx,
        flags_idx,
        start_idx,
        nr_args,
        // Pin APIs' `pages` position is only known from BTF.
        pages_idx: if api.kind() == ApiKind::Unpin { pages_idx } else { ARG_NONE },
        pages_form,
        _pad: [0; 2],
    };
    match api {
        Api::PinUserPages | Api::PinUserPagesFast | Api::PinUserPagesFastOnly | Api::GetUserPages
        | Api::GetUserPagesFast | Api::GetUserPagesFastOnly => a(1, 2, 0, 4),
        Api::PinUserPagesRemote | Api::GetUserPagesRemote => a(2, 3, 1, 6),
        Api::PinUserPagesUnlocked | Api::GetUserPagesUnlocked => a(1, 3, 0, 4),
        Api::MemfdPinFolios => a(4, ARG_NONE, ARG_NONE, 6),
        Api::UnpinUserPage | Api::UnpinFolio => a(ARG_NONE, ARG_NONE, ARG_NONE, 1),
        Api::UnpinUserPages | Api::UnpinFolios | Api::UnpinUserFolio => a(1, ARG_NONE, ARG_NONE, 2),
        Api::UnpinUserPagesDirtyLock | Api::UnpinUserPageRangeDirtyLock => a(1, ARG_NONE, ARG_NONE, 3),
        Api::GupSlowPath => a(2, ARG_NONE, 1, 6),
        Api::GupPutFolio => a(1, 2, ARG_NONE, 3),
        // Module functions: no BTF for them here; the object is argument 0
        // (the ioctl's is its device, unused).
        Api::I915UserptrIoctl | Api::I915UserptrSubmitInit | Api::I915UserptrDropRef | Api::I915UserptrPutPages => HookArgs {
            count_idx: ARG_NONE,
            flags_idx: ARG_NONE,
            start_idx: ARG_NONE,
            nr_args: 0,
            pages_idx: 0,
            pages_form,
            _pad: [0; 2],
        },
    }
}

/// Where the pages a call pins or releases are, and in what form: unpin
/// APIs take them first; pin APIs in a `pages`/`folios` array found by name.
fn pages_arg(api: Api) -> (u8, u8) {
    match api {
        Api::UnpinUserPage | Api::UnpinUserPageRangeDirtyLock => (0, PAGES_RANGE),
        Api::UnpinFolio | Api::UnpinUserFolio | Api::GupPutFolio => (0, PAGES_FOLIO),
        Api::UnpinUserPages | Api::UnpinUserPagesDirtyLock | Api::UnpinFolios => (0, PAGES_ARRAY),
        _ => (ARG_NONE, PAGES_ARRAY),
    }
}

/// The kind as the hook-health report and the exporters name it.
pub(crate) fn kind_name(k: ApiKind) -> &'static str {
    match k {
        ApiKind::Pin => "pin",
        ApiKind::Get => "get",
        ApiKind::Unpin => "unpin",
        ApiKind::SlowPath => "slow-path",
        ApiKind::Undo => "release",
        ApiKind::I915 => "i915",
    }
}

/// Which attach mechanism the GUP hooks use where both would work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// kprobe/kretprobe where the kernel has kprobes, else fentry/fexit.
    Auto,
    /// kprobe/kretprobe wherever it attaches.
    Kprobe,
    /// fentry/fexit wherever BTF allows it (the cheaper trampoline, but
    /// preemptible: see [`KPROBE_WHY`]).
    Fentry,
}

/// The environment variable that overrides [`Preference::Auto`]:
/// `kprobe`, `fentry` or `auto`.
pub const MECHANISM_ENV: &str = "GUPWATCH_MECHANISM";

/// Why kprobes are preferred. Measured with `cargo xtask stress --mode
/// churn` (5,000 short-lived processes, each one process_vm_readv of 16
/// KiB) on Debian 7.2, whose default preemption model is lazy: with
/// fentry/fexit the kernel skipped 1,885 program runs and gupwatch's
/// totals were 1,016 pins short and 1,880 unpins over; with
/// kprobe/kretprobe it skipped none and both totals were exact.
pub const KPROBE_WHY: &str = "kprobe: its handlers run with preemption disabled, so a preempted task \
cannot make the kernel skip them (fentry, possible here, skipped 1,885 program runs under process churn \
on Debian 7.2, kprobes none: docs/exactness.md)";

/// Why the unpin functions stay on fentry when pins move to kprobes.
pub const UNPIN_FENTRY_WHY: &str = "fentry/fexit: unpins also run in interrupt context (direct I/O \
completions), where the kernel skips a kprobe program whenever the interrupt came during any kprobe \
program on that CPU (O_DIRECT churn on 7.2 lost 24 of 8,000 releases so), a trampoline program only \
for itself; an unpin whose entry a preempted task made the kernel skip is counted at its exit, less \
what gup_put_folio (a kprobe) counted inside it (docs/exactness.md)";

/// Why an unpin on fentry gets a kprobe for its task-context calls.
pub const TASK_KPROBE_WHY: &str = "plus a kprobe for calls in task context: on a preemptible kernel a \
task preempted inside an fentry program makes the kernel skip that program for every other task on its \
CPU, and an unpin whose release is inlined (unpin_user_folio on 7.2) has nothing else to count it \
(io_uring churn on 7.2 lost 4 of 8,000 releases so under host load); a kprobe handler runs with \
preemption disabled";

impl Preference {
    /// The preference named in [`MECHANISM_ENV`], or `Auto`. An unknown
    /// value is an error that names the accepted ones.
    pub fn from_env() -> Result<Preference, String> {
        match std::env::var(MECHANISM_ENV).ok().as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Ok(Preference::Auto),
            Some("kprobe") => Ok(Preference::Kprobe),
            Some("fentry") => Ok(Preference::Fentry),
            Some(other) => Err(format!("{MECHANISM_ENV}={other} is not a mechanism: use kprobe, fentry or auto")),
        }
    }
}

impl ProbePlan {
    /// Resolves the plan for the running kernel, with the mechanism
    /// preference of [`MECHANISM_ENV`] (an unknown value falls back to
    /// `Auto` with a warning).
    pub fn for_running_kernel() -> Result<ProbePlan, crate::kernel::kallsyms::KallsymsError> {
        let btf = crate::kernel::btf::KernelBtf::from_sys_fs();
        crate::memstat::note("plan: BTF parsed");
        let kallsyms = Kallsyms::from_proc()?;
        crate::memstat::note("plan: kallsyms read");
        let mut plan = Self::resolve(crate::kernel::version::release(), btf.as_ref().map_err(|e| e.to_string()), &kallsyms);
        // Read here, once, not in `resolve`: it reads kernel memory, which
        // the plan's tests cannot fake. Without it leaks show no zone.
        plan.page_layout.vmemmap_base = crate::kernel::placement::read_vmemmap_base().unwrap_or_else(|e| {
            tracing::info!("pinned pages' zones unknown: {e}");
            0
        });
        let pref = Preference::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; using auto");
            Preference::Auto
        });
        plan.prefer(pref, std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists());
        Ok(plan)
    }

    /// Moves the hooks planned as fentry to kprobes when `pref` asks for
    /// it, or when the kernel has kprobes (`Auto`: all but the unpins, see
    /// [`UNPIN_FENTRY_WHY`]); `Fentry` keeps the plan. The loader falls back to fentry where a kprobe will not
    /// attach ([`HookPlan::fentry_possible`]).
    pub fn prefer(&mut self, pref: Preference, kprobes: bool) {
        let to_kprobe = match pref {
            Preference::Fentry => false,
            Preference::Kprobe => true,
            Preference::Auto => kprobes,
        };
        if !to_kprobe {
            return;
        }
        for h in &mut self.hooks {
            if h.mechanism != Some(Mechanism::Fentry) {
                continue;
            }
            if pref == Preference::Auto && h.api.kind() == ApiKind::Unpin {
                h.reason = format!("{UNPIN_FENTRY_WHY}; {TASK_KPROBE_WHY}");
                h.task_kprobe = true;
            } else {
                h.mechanism = Some(Mechanism::Kprobe);
                h.reason = KPROBE_WHY.to_string();
            }
        }
    }

    /// Resolves a plan from already-read kernel facts (pure; unit-tested).
    pub fn resolve(kernel: String, btf: Result<&KernelBtf, String>, kallsyms: &Kallsyms) -> ProbePlan {
        let btf_ok = btf.as_ref().ok().copied();
        let foll = FollFlags::resolve(btf_ok, &kernel);
        let mut hooks: Vec<HookPlan> = Vec::with_capacity(Api::ALL.len());
        for &api in Api::ALL.iter() {
            let taken = taken_by(&hooks);
            hooks.push(Self::resolve_hook(api, btf_ok, kallsyms, &taken));
        }
        let direct_io_pins = kallsyms.get("iov_iter_extract_pages").is_some();
        let fast_rule = ["gup_fast_folio_allowed", "folio_fast_pin_allowed"]
            .into_iter()
            .find(|f| kallsyms.find_function(f).is_some());
        let pup_params = btf_ok.and_then(|b| b.func("pin_user_pages")).map(|p| p.params.clone());
        let (longterm_file_rule, longterm_file_rule_reason) = match (fast_rule, &pup_params) {
            (Some(f), _) => (true, format!("the kernel has {f}: LONGTERM write pins of dirty-tracked file mappings are refused (fast path: {f}; slow path: check_vma_flags, -EFAULT)")),
            (None, Some(p)) if !p.iter().any(|n| n == "vmas") => (true, "pin_user_pages has no vmas parameter (BTF), which went in the 6.5 series that refuses LONGTERM write pins of dirty-tracked file mappings (its fast-path check is inlined here)".into()),
            (None, Some(_)) => (false, "pin_user_pages still has its vmas parameter (BTF) and there is no gup_fast_folio_allowed/folio_fast_pin_allowed: GUP does not refuse LONGTERM write pins of file mappings (io_uring checks the VMAs itself)".into()),
            (None, None) => (false, "no gup_fast_folio_allowed/folio_fast_pin_allowed in /proc/kallsyms and no BTF for pin_user_pages: assuming GUP does not refuse LONGTERM write pins of file mappings".into()),
        };
        let io_uring_coalesces = ["io_check_coalesce_buffer", "io_coalesce_buffer", "io_do_coalesce_buffer"]
            .iter()
            .any(|f| kallsyms.find_function(f).is_some())
            || btf_ok.is_some_and(|b| b.member_offset("io_mapped_ubuf", "folio_shift").is_some());
        let capabilities = Capabilities {
            direct_io_pins,
            direct_io_reason: if direct_io_pins {
                "the kernel has iov_iter_extract_pages: block direct I/O pins user pages (FOLL_PIN)".into()
            } else {
                "the kernel has no iov_iter_extract_pages: block direct I/O takes page references (FOLL_GET via get_user_pages_fast), not pins, so it moves no nr_foll_pin_* counter (pins arrived in 6.3)".into()
            },
            longterm_file_rule,
            longterm_file_rule_reason,
            io_uring_coalesces,
            missing_helpers: bpf_helpers::missing(btf_ok, kallsyms),
            bpf_gates: BpfGates::for_release(&kernel),
        };
        ProbePlan {
            kernel,
            btf: btf.map(|_| ()),
            hooks,
            foll,
            capabilities,
            page_layout: PageLayout::resolve(btf_ok, kallsyms),
            object_lookup: ObjectLookup::resolve(btf_ok, kallsyms),
            return_trampoline: RETURN_TRAMPOLINES
                .iter()
                .find_map(|f| kallsyms.get(f))
                .map_or(0, |s| s.addr),
            kernel_text: kallsyms.core_text().map_or(TextRange::NONE, |(start, end)| TextRange { start, end }),
            exit_hook: HookStatus::Planned,
            holder_iter: HookStatus::Planned,
        }
    }

    fn resolve_hook(api: Api, btf: Option<&KernelBtf>, kallsyms: &Kallsyms, taken: &[(&str, &str)]) -> HookPlan {
        let mut hook = HookPlan {
            api,
            function: api.symbol(),
            role: None,
            candidates: vec![],
            waits_for_module: false,
            module: None,
            symbol: None,
            kind: kind_name(api.kind()),
            params: None,
            args: fallback_args(api),
            mechanism: None,
            fentry_possible: false,
            task_kprobe: false,
            btf_id: None,
            text: TextRange::NONE,
            reason: String::new(),
            status: HookStatus::Planned,
        };
        // A logical hook is resolved to the candidate this kernel has.
        let mut choice_reason = None;
        if let Some(role) = i915_role(api) {
            let choice = resolve_i915(role, kallsyms, taken);
            hook.role = Some(role.role);
            hook.candidates = choice.checks;
            match choice.chosen {
                Some((i, _)) => {
                    hook.function = role.candidates[i].function;
                    choice_reason = Some(choice.reason);
                }
                None => {
                    hook.status = HookStatus::Absent;
                    hook.reason = choice.reason;
                    hook.waits_for_module = choice.module_not_loaded;
                    hook.module = choice.module_not_loaded.then(|| "i915".to_string());
                    return hook;
                }
            }
        }
        let function = hook.function;
        let Some((symbol, sym)) = kallsyms.find_function(function) else {
            hook.status = HookStatus::Absent;
            hook.reason = "not in this kernel (/proc/kallsyms)".into();
            return hook;
        };
        hook.symbol = Some(symbol.to_string());
        hook.text = kallsyms.text_range(sym.addr).map_or(TextRange::NONE, |(start, end)| TextRange { start, end });
        hook.module = sym.module.map(str::to_string);
        let proto = btf.and_then(|b| b.func(function));
        if let Some(p) = &proto {
            let idx = |names: &[&str]| p.param_index(names).map_or(ARG_NONE, |i| i as u8);
            let (_, pages_form) = pages_arg(api);
            hook.args = HookArgs {
                count_idx: match api {
                    // One page/folio per call, whatever the parameters.
                    Api::UnpinUserPage | Api::UnpinFolio => ARG_NONE,
                    _ => idx(COUNT_PARAMS),
                },
                flags_idx: idx(&["gup_flags", "flags"]),
                start_idx: idx(&["start"]),
                nr_args: p.params.len() as u8,
                pages_idx: match api.kind() {
                    ApiKind::Pin | ApiKind::Unpin | ApiKind::Undo => idx(&["pages", "page", "folios", "folio"]),
                    _ => ARG_NONE,
                },
                pages_form,
                _pad: [0; 2],
            };
            hook.params = Some(p.params.clone());
        }
        let exact = symbol == function;
        let (mechanism, reason) = match (btf, proto, &sym.module) {
            (_, _, Some(m)) => (Mechanism::Kprobe, format!("in module {m}: aya cannot put fentry on module functions")),
            (None, _, _) => (Mechanism::Kprobe, "no kernel BTF: fentry needs it; argument positions assumed from the 6.5+ layout".into()),
            (Some(_), None, _) => (Mechanism::Kprobe, "not described in BTF (static or inlined): kprobe on the symbol".into()),
            (Some(_), Some(_), _) if !exact => (Mechanism::Kprobe, format!("only the compiler clone {symbol} exists: kprobe")),
            (Some(_), Some(p), _) => (
                Mechanism::Fentry,
                format!("in BTF with {} arguments: fentry/fexit trampoline", p.params.len()),
            ),
        };
        hook.mechanism = Some(mechanism);
        hook.fentry_possible = mechanism == Mechanism::Fentry;
        hook.btf_id = btf.filter(|_| hook.fentry_possible).and_then(|b| b.func_id(function));
        hook.reason = match choice_reason {
            Some(why) => format!("{why}; {reason}"),
            None => reason,
        };
        hook
    }

    /// Resolves again the logical (i915) hooks that found no function, from
    /// a fresh kallsyms (a module loaded since). Returns the APIs that now
    /// have a function to attach to; their entries are `Planned`.
    pub fn resolve_late(&mut self, kallsyms: &Kallsyms) -> Vec<Api> {
        let mut found = vec![];
        for i in 0..self.hooks.len() {
            let api = self.hooks[i].api;
            if !self.hooks[i].waits_for_module {
                continue;
            }
            let taken = taken_by(&self.hooks);
            // Module functions have no vmlinux BTF: kprobes, as at start.
            let mut hook = Self::resolve_hook(api, None, kallsyms, &taken);
            if hook.symbol.is_some() {
                found.push(api);
            } else if let Some(m) = self.hooks[i].module.clone().filter(|m| !kallsyms.has_module(m)) {
                // Its module is still away (another one loaded): keep waiting.
                hook.waits_for_module = true;
                hook.reason = self.hooks[i].reason.clone();
                hook.module = Some(m);
            }
            self.hooks[i] = hook;
        }
        found
    }

    /// The FOLL_PIN bit of this kernel.
    pub fn foll_pin(&self) -> u64 {
        self.foll.values.get("FOLL_PIN").copied().unwrap_or(0)
    }

    /// The FOLL_LONGTERM bit of this kernel.
    pub fn foll_longterm(&self) -> u64 {
        self.foll.values.get("FOLL_LONGTERM").copied().unwrap_or(0)
    }

    /// Whether the fast/slow split of `*_fast` calls is measured (the
    /// slow-path hook is attached).
    pub fn splits_fast_path(&self) -> bool {
        self.hook(Api::GupSlowPath).status == HookStatus::Attached
    }

    /// The argument positions for every API, as the programs' global.
    pub fn hook_args(&self) -> [HookArgs; API_COUNT] {
        let mut out = [HookArgs::NONE; API_COUNT];
        for h in &self.hooks {
            out[h.api as usize] = h.args;
        }
        out
    }

    /// Each API's function text, as the programs' global.
    pub fn text_ranges(&self) -> [TextRange; API_COUNT] {
        let mut out = [TextRange::NONE; API_COUNT];
        for h in &self.hooks {
            out[h.api as usize] = h.text;
        }
        out
    }

    /// The hooked unpin functions' texts, as the programs' global.
    pub fn unpin_texts(&self) -> UnpinTexts {
        UnpinTexts::new(self.hooks.iter().filter(|h| h.api.kind() == ApiKind::Unpin && h.symbol.is_some()).map(|h| h.text))
    }

    /// The plan entry for one API.
    pub fn hook(&self, api: Api) -> &HookPlan {
        &self.hooks[api as usize]
    }

    /// Number of attached hooks.
    pub fn attached(&self) -> usize {
        self.hooks.iter().filter(|h| h.status == HookStatus::Attached).count()
    }

    /// Hooks the kernel has but that could not be attached.
    pub fn failed(&self) -> impl Iterator<Item = &HookPlan> {
        self.hooks.iter().filter(|h| matches!(h.status, HookStatus::Failed(_)))
    }

    /// A human-readable table of the plan.
    pub fn to_table(&self) -> String {
        let mut out = format!("Probe plan for kernel {}\n", self.kernel);
        out += &format!(
            "  BTF: {}\n  FOLL_* values: {} (FOLL_PIN={:#x}, FOLL_LONGTERM={:#x})\n  direct I/O: {}\n\n",
            match &self.btf {
                Ok(()) => "/sys/kernel/btf/vmlinux".to_string(),
                Err(e) => format!("unavailable ({e})"),
            },
            match self.foll.source {
                FollSource::Btf => "from BTF enumerators",
                FollSource::DefineTable => "from the 5.8-6.2 #define table (not in BTF)",
                FollSource::EnumTable => "from the 6.3+ enum table (no BTF to read them from)",
            },
            self.foll.values.get("FOLL_PIN").copied().unwrap_or(0),
            self.foll.values.get("FOLL_LONGTERM").copied().unwrap_or(0),
            self.capabilities.direct_io_reason,
        );
        out.truncate(out.len() - 1);
        out += &format!(
            "  holder iterator (iter/task_file; names who holds RDMA and VFIO contexts): {}\n\n",
            match &self.holder_iter {
                HookStatus::Attached => "loaded".to_string(),
                HookStatus::Failed(e) => format!("unavailable ({e}): such pins whose creator exited read as orphaned"),
                HookStatus::Planned | HookStatus::Absent => "not loaded".to_string(),
            }
        );
        out += &format!("  {:<36} {:<6} {:<17} {:<9} {}\n", "FUNCTION", "KIND", "MECHANISM", "STATUS", "WHY");
        for h in &self.hooks {
            let (status, extra) = match &h.status {
                HookStatus::Planned => ("planned", String::new()),
                HookStatus::Attached => ("attached", String::new()),
                HookStatus::Absent => ("absent", String::new()),
                HookStatus::Failed(e) => ("FAILED", format!(" — {e}")),
            };
            out += &format!(
                "  {:<36} {:<6} {:<17} {:<9} {}{}\n",
                h.function,
                h.kind,
                match (h.mechanism, h.task_kprobe) {
                    (Some(m), true) => format!("{m} + task kprobe"),
                    (Some(m), false) => m.to_string(),
                    (None, _) => "-".into(),
                },
                status,
                h.reason,
                extra
            );
        }
        out
    }
}

/// The functions logical hooks already chose, with their roles, so no
/// function is hooked twice.
fn taken_by(hooks: &[HookPlan]) -> Vec<(&'static str, &'static str)> {
    hooks.iter().filter(|h| h.symbol.is_some()).filter_map(|h| Some((h.function, h.role?))).collect()
}

/// Where kretprobes return through, by kernel generation: rethook's since
/// 5.19, the kretprobe trampoline before (renamed in 5.16).
const RETURN_TRAMPOLINES: [&str; 3] = ["arch_rethook_trampoline", "__kretprobe_trampoline", "kretprobe_trampoline"];

#[cfg(test)]
mod tests;
