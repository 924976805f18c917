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
//! [`crate::kernel`], and read here only for the FOLL_* values of a kernel
//! without BTF.

pub mod bpf_helpers;

use std::collections::BTreeMap;

use gup_common::{skipped::{TextRange, UnpinTexts}, Api, ApiKind, HookArgs, API_COUNT, ARG_NONE, PAGES_ARRAY, PAGES_FOLIO, PAGES_RANGE};
use serde::Serialize;

use crate::{btf::KernelBtf, kallsyms::Kallsyms};

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
    /// attached again when it loads ([`crate::modwatch`]).
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

/// Where the FOLL_* values came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollSource {
    /// Enumerators in the kernel's BTF (6.3 and later define them as enums).
    Btf,
    /// The `#define` values of 5.8–6.2, which BTF cannot carry.
    DefineTable,
    /// No BTF on a 6.3+ kernel: the enum values those kernels share
    /// (unchanged from 6.3 to 7.2; new flags were only appended).
    EnumTable,
}

/// The kernel's gup_flags bit values, by name.
#[derive(Clone, Debug, Serialize)]
pub struct FollFlags {
    /// Where they came from.
    pub source: FollSource,
    /// Name → bit value.
    pub values: BTreeMap<&'static str, u64>,
}

/// FOLL_* names gupwatch decodes.
pub const FOLL_NAMES: &[&str] = &[
    "FOLL_WRITE", "FOLL_GET", "FOLL_DUMP", "FOLL_FORCE", "FOLL_NOWAIT", "FOLL_NOFAULT",
    "FOLL_HWPOISON", "FOLL_ANON", "FOLL_LONGTERM", "FOLL_SPLIT_PMD", "FOLL_PCI_P2PDMA",
    "FOLL_INTERRUPTIBLE", "FOLL_HONOR_NUMA_FAULT", "FOLL_TOUCH", "FOLL_TRIED", "FOLL_REMOTE",
    "FOLL_PIN", "FOLL_FAST_ONLY", "FOLL_UNLOCKABLE", "FOLL_MADV_POPULATE", "FOLL_MIGRATION",
];

/// The FOLL_* `#define`s of 5.8–6.2 (include/linux/mm.h), used only when
/// BTF has no FOLL_* enumerators.
const FOLL_DEFINES: &[(&str, u64)] = &[
    ("FOLL_WRITE", 0x01), ("FOLL_TOUCH", 0x02), ("FOLL_GET", 0x04), ("FOLL_DUMP", 0x08),
    ("FOLL_FORCE", 0x10), ("FOLL_NOWAIT", 0x20), ("FOLL_NOFAULT", 0x80),
    ("FOLL_HWPOISON", 0x100), ("FOLL_MIGRATION", 0x400), ("FOLL_TRIED", 0x800),
    ("FOLL_REMOTE", 0x2000), ("FOLL_ANON", 0x8000), ("FOLL_LONGTERM", 0x10000),
    ("FOLL_SPLIT_PMD", 0x20000), ("FOLL_PIN", 0x40000), ("FOLL_FAST_ONLY", 0x80000),
];

/// The FOLL_* enumerators of 6.3 and later (include/linux/mm_types.h and
/// mm/internal.h), for a 6.3+ kernel without BTF. Identical in the BTF of
/// Debian's 6.12 and 7.2; the internal flags start at bit 16 so that public
/// flags added later (FOLL_HONOR_NUMA_FAULT in 6.5) do not move them.
const FOLL_ENUMS: &[(&str, u64)] = &[
    ("FOLL_WRITE", 1 << 0), ("FOLL_GET", 1 << 1), ("FOLL_DUMP", 1 << 2), ("FOLL_FORCE", 1 << 3),
    ("FOLL_NOWAIT", 1 << 4), ("FOLL_NOFAULT", 1 << 5), ("FOLL_HWPOISON", 1 << 6), ("FOLL_ANON", 1 << 7),
    ("FOLL_LONGTERM", 1 << 8), ("FOLL_SPLIT_PMD", 1 << 9), ("FOLL_PCI_P2PDMA", 1 << 10),
    ("FOLL_INTERRUPTIBLE", 1 << 11), ("FOLL_HONOR_NUMA_FAULT", 1 << 12), ("FOLL_TOUCH", 1 << 16),
    ("FOLL_TRIED", 1 << 17), ("FOLL_REMOTE", 1 << 18), ("FOLL_PIN", 1 << 19), ("FOLL_FAST_ONLY", 1 << 20),
    ("FOLL_UNLOCKABLE", 1 << 21), ("FOLL_MADV_POPULATE", 1 << 22),
];

impl FollFlags {
    /// From BTF when it has the enumerators (6.3+); otherwise from the
    /// table of the kernel's generation: the only place gupwatch reads the
    /// release number, because without BTF nothing else tells the two
    /// layouts apart.
    fn resolve(btf: Option<&KernelBtf>, release: &str) -> FollFlags {
        if let Some(btf) = btf {
            if btf.enumerator("FOLL_PIN").is_some() {
                let values = FOLL_NAMES
                    .iter()
                    .filter_map(|n| btf.enumerator(n).map(|v| (*n, v as u64)))
                    .collect();
                return FollFlags { source: FollSource::Btf, values };
            }
        }
        // An unreadable release takes the older table: a 5.8-6.2 kernel
        // is likelier than a 6.3+ one without BTF (every 6.3+ distribution
        // kernel has BTF).
        match crate::kernel::release_major_minor(release) {
            Some(v) if v >= (6, 3) && btf.is_none() => {
                FollFlags { source: FollSource::EnumTable, values: FOLL_ENUMS.iter().copied().collect() }
            }
            _ => FollFlags { source: FollSource::DefineTable, values: FOLL_DEFINES.iter().copied().collect() },
        }
    }

    /// The names of the bits set in `flags`, lowest bit first; unknown bits
    /// are shown in hex.
    pub fn decode(&self, flags: u64) -> Vec<String> {
        let mut by_bit: Vec<(&&str, &u64)> = self.values.iter().collect();
        by_bit.sort_by_key(|(_, v)| **v);
        let mut rest = flags;
        let mut out = vec![];
        for (name, v) in by_bit {
            if *v != 0 && flags & v == *v {
                out.push(name.to_string());
                rest &= !v;
            }
        }
        if rest != 0 {
            out.push(format!("{rest:#x}"));
        }
        out
    }
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
            Some((off, size)) => PageLayout { compound_head: off as u64, size: size as u64, from_btf: true, task_stack, task_stack_size },
            None => PageLayout { compound_head: 8, size: 64, from_btf: false, task_stack, task_stack_size },
        }
    }
}

/// One function that can play a logical i915 hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The i915 function.
    pub function: &'static str,
    /// Which kernels have it as a symbol, and what hooking it covers.
    pub covers: &'static str,
}

/// A logical i915 hook: what it does, and the functions that can do it on
/// some kernel, best first. i915's userptr code was rewritten in 5.13 and
/// its static helpers are inlined or not depending on the build, so a role
/// is resolved to whichever candidate the running i915 has as a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct I915Role {
    /// What the hook does.
    pub role: &'static str,
    /// Candidates, best first.
    pub candidates: &'static [Candidate],
    /// Said when no candidate exists: where the role's events are seen then.
    pub when_none: &'static str,
}

const I915_CREATE: I915Role = I915Role {
    role: "create a userptr object",
    candidates: &[Candidate {
        function: "i915_gem_userptr_ioctl",
        covers: "the DRM_I915_GEM_USERPTR ioctl, in every i915 with userptr objects",
    }],
    when_none: "object creation times are then taken from their first pin",
};

const I915_PIN: I915Role = I915Role {
    role: "pin the object's pages",
    candidates: &[
        Candidate {
            function: "i915_gem_object_userptr_submit_init",
            covers: "5.13 and later: pins the pages with pin_user_pages_fast in the submitting thread, and unpins them itself when an mmu-notifier invalidation races it (-EAGAIN)",
        },
        Candidate {
            function: "i915_gem_userptr_get_pages",
            covers: "before 5.13: pins with pin_user_pages_fast_only in the calling thread and returns -EAGAIN while __i915_gem_userptr_get_pages_worker pins the rest with pin_user_pages_remote in a kworker; the worker's pins are counted per API but not credited to the object (its object is not an argument)",
        },
    ],
    when_none: "pins are still counted per API, but not per object",
};

const I915_DROP_REF: I915Role = I915Role {
    role: "unpin the object's pages at their last reference",
    candidates: &[
        Candidate {
            function: "i915_gem_object_userptr_drop_ref",
            covers: "5.13 and later, where the compiler kept it: every unpin of the object's pages goes through it",
        },
        Candidate {
            function: "i915_gem_userptr_get_pages",
            covers: "5.13 and later, where i915_gem_object_userptr_drop_ref is static and inlined: its callers are i915_gem_userptr_put_pages (the put-pages hook) and the error path of i915_gem_userptr_get_pages (hooked here), so every unpin still happens inside a hooked call on the object",
        },
    ],
    when_none: "before 5.13 there is no page reference: i915_gem_userptr_put_pages unpins the pages itself, and the put-pages hook credits them",
};

const I915_PUT_PAGES: I915Role = I915Role {
    role: "give back the object's pages",
    candidates: &[Candidate {
        function: "i915_gem_userptr_put_pages",
        covers: "the object's put_pages operation in every i915 with userptr objects (a symbol because its address is taken); it unpins directly before 5.13 and through the last page reference since",
    }],
    when_none: "unpins outside the pin hook are then counted per API, but not per object",
};

/// The logical role of an i915 API slot (`None` for the GUP APIs).
pub fn i915_role(api: Api) -> Option<&'static I915Role> {
    match api {
        Api::I915UserptrIoctl => Some(&I915_CREATE),
        Api::I915UserptrSubmitInit => Some(&I915_PIN),
        Api::I915UserptrDropRef => Some(&I915_DROP_REF),
        Api::I915UserptrPutPages => Some(&I915_PUT_PAGES),
        _ => None,
    }
}

/// What became of one candidate of a logical hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateCheck {
    /// The function.
    pub function: &'static str,
    /// `chosen`, `not a symbol`, `already hooked as <role>`, or `not
    /// needed` (an earlier candidate was chosen).
    pub verdict: String,
}

/// A logical hook resolved against kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I915Choice {
    /// Index into the role's candidates, and the symbol to attach to.
    pub chosen: Option<(usize, String)>,
    /// Every candidate's verdict.
    pub checks: Vec<CandidateCheck>,
    /// Why this one (or why none).
    pub reason: String,
    /// None was found because i915 is not loaded (yet).
    pub module_not_loaded: bool,
}

/// Resolves a logical i915 hook: the first candidate this kernel has as a
/// symbol and no other hook already uses. A function is hooked at most
/// once, because two hooks on one function would count its calls twice
/// and give its unpins to whichever entry came last. `taken` lists the
/// functions earlier hooks chose. Pure; unit-tested.
pub fn resolve_i915(role: &I915Role, kallsyms: &Kallsyms, taken: &[(&str, &str)]) -> I915Choice {
    let mut checks = Vec::with_capacity(role.candidates.len());
    let mut chosen: Option<(usize, String)> = None;
    for (i, c) in role.candidates.iter().enumerate() {
        let verdict = if chosen.is_some() {
            "not needed".to_string()
        } else if let Some((_, by)) = taken.iter().find(|(f, _)| *f == c.function) {
            format!("already hooked to {by}")
        } else if let Some((symbol, _)) = kallsyms.find_function(c.function) {
            chosen = Some((i, symbol.to_string()));
            "chosen".to_string()
        } else {
            "not a symbol".to_string()
        };
        checks.push(CandidateCheck { function: c.function, verdict });
    }
    let why_not = |upto: usize| -> String {
        role.candidates[..upto]
            .iter()
            .zip(&checks)
            .map(|(c, k)| match k.verdict.as_str() {
                "not a symbol" => format!("{} is not a symbol in this i915 (static and inlined, or not built)", c.function),
                v => format!("{} is {v}", c.function),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let reason = match &chosen {
        Some((0, _)) => format!("{}: {} ({})", role.role, role.candidates[0].function, role.candidates[0].covers),
        Some((i, _)) => format!(
            "{}: {}, because {}. It covers {}",
            role.role,
            role.candidates[*i].function,
            why_not(*i),
            role.candidates[*i].covers
        ),
        None if !kallsyms.has_module("i915") => "i915 not loaded (attached if the module appears)".to_string(),
        None => format!(
            "{}: i915 is loaded but has none of its functions: {}. Missing here, so {}",
            role.role,
            why_not(role.candidates.len()),
            role.when_none
        ),
    };
    let module_not_loaded = chosen.is_none() && !kallsyms.has_module("i915");
    I915Choice { chosen, checks, reason, module_not_loaded }
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

fn kind_name(k: ApiKind) -> &'static str {
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
    pub fn for_running_kernel() -> Result<ProbePlan, crate::kallsyms::KallsymsError> {
        let btf = crate::btf::KernelBtf::from_sys_fs();
        crate::memstat::note("plan: BTF parsed");
        let kallsyms = Kallsyms::from_proc()?;
        crate::memstat::note("plan: kallsyms read");
        let mut plan = Self::resolve(crate::kernel::release(), btf.as_ref().map_err(|e| e.to_string()), &kallsyms);
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
        };
        ProbePlan {
            kernel,
            btf: btf.map(|_| ()),
            hooks,
            foll,
            capabilities,
            page_layout: PageLayout::resolve(btf_ok, kallsyms),
            return_trampoline: RETURN_TRAMPOLINES
                .iter()
                .find_map(|f| kallsyms.get(f))
                .map_or(0, |s| s.addr),
            kernel_text: kallsyms.core_text().map_or(TextRange::NONE, |(start, end)| TextRange { start, end }),
            exit_hook: HookStatus::Planned,
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
mod tests {
    use super::*;
    use crate::btf::tests::Builder;

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
}
