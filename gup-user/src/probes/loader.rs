//! Loads gupwatch's eBPF object and attaches the hooks the probe plan chose.
//!
//! Attach order matters for exact counts: the exit program of a hook is
//! attached before its entry program (so no call is entered without being
//! seen to return), and fentry falls back to kprobe when the kernel refuses
//! the trampoline. Whatever happens is written back into the plan.

use aya::{
    programs::{fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId, ProgramError},
    Ebpf, EbpfLoader,
};
use gup_common::Api;
use std::os::fd::{AsFd as _, AsRawFd as _};

use crate::{
    kernel::plan::{HookStatus, Mechanism, ProbePlan},
    probes::reader::StatsMaps,
};

mod attach;
mod explain;
mod follow;
pub use attach::attach_order;
use attach::{
    attach_exit_tracepoint, attach_hook, attach_kprobe, detach, detach_links, fentry_btf, has_exit, kprobe_links,
    prog_name, reattach,
};
pub(crate) use explain::describe;
use explain::{fdinfo_field, recursion_misses};
pub use follow::{Detach, ModuleEvents};

/// The eBPF object built from `gup-ebpf` by the build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GUPWATCH_EBPF_OBJECT"));

/// Errors loading the probes.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel lacks BPF helpers the programs call
    /// ([`crate::kernel::plan::bpf_helpers`]): its verifier would refuse them all.
    #[error("this kernel lacks BPF helpers gupwatch's programs call: {}. Its verifier would refuse every program, so none is loaded; the reduced mode (the kernel's FOLL_PIN counters) still works. Use a newer kernel for the probes", .0.join(", "))]
    MissingHelpers(Vec<String>),
    /// The object could not be loaded (map creation or relocation).
    #[error("the kernel refused gupwatch's BPF maps: {0}. Run as root (or with CAP_BPF and CAP_PERFMON); on kernels before 5.11 also raise the locked-memory limit (ulimit -l)")]
    Object(#[from] aya::EbpfError),
    /// The kernel refused to create one of the maps.
    #[error("the kernel refused to create BPF map {name}: {source}. {hint}")]
    MapCreate {
        /// The map.
        name: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
        /// What to do about it (depends on the errno).
        hint: &'static str,
    },
    /// A map the programs define was missing or of the wrong type.
    #[error("gupwatch's eBPF object is inconsistent with this binary: {0}")]
    Map(String),
    /// The object `GUPWATCH_EBPF_OBJECT` names could not be read.
    #[error("cannot read the eBPF object {path} (named by GUPWATCH_EBPF_OBJECT): {source}. Fix the path, or unset GUPWATCH_EBPF_OBJECT to use the programs built into gupwatch")]
    ObjectFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
}

/// The eBPF object to load, as 8-byte words: the object parser reads ELF
/// structures in place and needs them aligned, which a `Vec<u8>` does not
/// promise.
enum Object {
    /// The programs built into this binary.
    BuiltIn,
    /// A file named by `GUPWATCH_EBPF_OBJECT` at run time, to try an eBPF
    /// build without rebuilding gupwatch (the faults suite loads one with a
    /// program the verifier must refuse).
    File { words: Vec<u64>, len: usize },
}

impl Object {
    fn from_env() -> Result<Object, LoadError> {
        let Some(path) = std::env::var_os("GUPWATCH_EBPF_OBJECT").filter(|p| !p.is_empty()) else {
            return Ok(Object::BuiltIn);
        };
        let path = std::path::PathBuf::from(path);
        let bytes = std::fs::read(&path).map_err(|source| LoadError::ObjectFile { path: path.clone(), source })?;
        eprintln!("gupwatch: loading eBPF programs from {} (GUPWATCH_EBPF_OBJECT), not the built-in ones", path.display());
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Ok(Object::File { words, len: bytes.len() })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Object::BuiltIn => EBPF_OBJECT,
            // SAFETY: `words` holds at least `len` initialised bytes, and u8
            // has no alignment or validity requirements.
            Object::File { words, len } => unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) },
        }
    }
}

/// Errors detaching and attaching the probes again.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// A program could not be attached or detached.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A per-call map could not be read or cleared.
    #[error("cannot clear gupwatch's per-call records: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The eBPF object lacks a map this binary expects.
    #[error("gupwatch's eBPF object has no map {0}")]
    MissingMap(&'static str),
    /// Building a per-CPU value failed.
    #[error("cannot build per-CPU values: {0}")]
    PerCpu(#[from] std::io::Error),
}

/// Loaded, attached probes and the maps they fill.
pub struct Probes {
    /// The links of every attached hook, so they can be cycled. Declared
    /// first so it drops first: it holds descriptors of the kprobe links,
    /// which must be closed before aya's own for the links to go away.
    links: Vec<HookLinks>,
    /// Keeps the programs (and so their links) alive.
    _ebpf: Ebpf,
    /// The plan, with each hook's final status.
    pub plan: ProbePlan,
    /// The maps user space reads.
    pub maps: StatsMaps,
    /// Capacity the tracking map was created with.
    pub track_capacity: u32,
    /// The eBPF side's debug log reader, until the caller takes it.
    ebpf_log: Option<crate::probes::ebpflog::EbpfLog>,
    /// `/proc/modules`, opened at load (see [`crate::probes::modwatch`]).
    modules: crate::probes::modwatch::ModuleTable,
    /// Hooks found dead, by function and reason, since start
    /// (`gupwatch_probe_detached_total`).
    detached: Vec<(&'static str, &'static str, u64)>,
    /// The task-file iterator that names the holders of character-device
    /// objects ([`crate::model::holders::iter`]), or why the kernel has none.
    pub holder_iter: Result<std::sync::Mutex<crate::model::holders::HolderIter>, String>,
}

/// One attached program's run statistics ([`Probes::program_runs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    /// The program's name in the eBPF object (`fe_3`, `sched_process_exit`).
    pub program: String,
    /// Runs counted while statistics were on.
    pub runs: u64,
    /// Time spent in it while statistics were on, in nanoseconds.
    pub run_time_ns: u64,
}

/// The kernel links of one attached hook.
enum Links {
    /// Entry, exit, and the kprobe that counts the entries of task-context
    /// calls ([`crate::kernel::plan::HookPlan::task_kprobe`]).
    Fentry(FEntryLinkId, Option<FExitLinkId>, Option<KProbeLinkId>),
    Kprobe(KProbeLinkId, Option<KProbeLinkId>),
}

struct HookLinks {
    idx: u32,
    symbol: String,
    with_exit: bool,
    /// Task-context entries counted by a kprobe beside the fentry program.
    task_kprobe: bool,
    mechanism: Mechanism,
    /// `None` while detached.
    links: Option<Links>,
    /// Descriptors of this hook's kprobe links, for the kernel's count of
    /// calls the probes missed ([`crate::probes::linkinfo`]); empty for fentry,
    /// and closed before the hook is detached.
    kprobe_links: Vec<std::os::fd::OwnedFd>,
    /// The module the function is in (`None`: vmlinux).
    module: Option<String>,
    /// The load of that module the probes were attached to: they die with
    /// it ([`crate::probes::modwatch`]).
    instance: Option<crate::probes::modwatch::ModuleInstance>,
    /// The hook's plan entry while it was attached, kept when its module
    /// goes away: the next load is attached by the same function names
    /// without reading kallsyms again.
    last_plan: Option<crate::kernel::plan::HookPlan>,
}

/// How the probes are loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Track every pin per folio (outstanding pins and leaks).
    pub track_pins: bool,
    /// Capacity of the tracking map, in folios.
    pub track_capacity: u32,
    /// Let the programs log their first diagnostics events through aya-log
    /// (debug level; see [`crate::probes::ebpflog`]). Fixed for the programs'
    /// lifetime.
    pub ebpf_log: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { track_pins: true, track_capacity: gup_common::TRACK_CAPACITY, ebpf_log: false }
    }
}

fn warn_no_ebpf_log(why: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!(error = %why, "eBPF debug logs unavailable; the probes run without them");
    } else {
        eprintln!("gupwatch: eBPF debug logs unavailable ({why}); the probes run without them");
    }
}

/// Loads the object and attaches every planned hook; hooks that fail are
/// recorded in the plan, not returned as errors, so one missing function
/// never hides the rest.
pub fn load(plan: ProbePlan) -> Result<Probes, LoadError> {
    load_with(plan, LoadOptions::default())
}

/// Gives the heap's free memory back to the kernel. Start-up builds a few
/// large short-lived structures one after the other (the kernel's BTF and
/// kallsyms for the plan, aya's own BTF parse, the fentry type ids); glibc
/// keeps the pages of what was freed unless asked, and every stage's peak
/// would then stand on the last one's leftovers. See docs/architecture.md,
/// "Where the daemon's memory goes".
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The advice for a refused map creation, by errno.
pub fn map_create_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::E2BIG) | Some(libc::EINVAL) => {
            "A map is larger than this kernel accepts: lower --track-capacity (track_capacity in the configuration file)."
        }
        Some(libc::ENOMEM) => {
            "The kernel could not allocate it: BPF maps are charged to the memory cgroup since 5.11, so a memory limit \
             (MemoryMax= of the unit, a container's limit) or the host's free memory is too small for it. Lower \
             --track-capacity or raise the limit; on kernels before 5.11 raise the locked-memory limit (ulimit -l \
             unlimited, LimitMEMLOCK=infinity)."
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "Run as root (or with CAP_BPF and CAP_PERFMON); on kernels before 5.11 also raise the locked-memory limit \
             (ulimit -l unlimited, LimitMEMLOCK=infinity)."
        }
        _ => "Run gupwatch doctor for what this kernel allows.",
    }
}

/// Names map-creation refusals precisely; other load errors pass through.
fn map_create_error(e: aya::EbpfError) -> LoadError {
    match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error, .. }) => {
            let hint = map_create_hint(io_error.raw_os_error());
            LoadError::MapCreate { name, source: io_error, hint }
        }
        e => LoadError::Object(e),
    }
}

/// [`load`] with options.
pub fn load_with(mut plan: ProbePlan, opts: LoadOptions) -> Result<Probes, LoadError> {
    if !plan.capabilities.missing_helpers.is_empty() {
        return Err(LoadError::MissingHelpers(plan.capabilities.missing_helpers.clone()));
    }
    raise_memlock_limit();
    let hook_args = plan.hook_args();
    let text_ranges = plan.text_ranges();
    let foll_longterm = plan.foll_longterm();
    let track = opts.track_pins as u64;
    let log_diag = opts.ebpf_log as u64;
    // Hidden, for `cargo xtask bench --empty-programs`: programs that return
    // at once, so the bench can show what attaching alone costs.
    let empty = std::env::var_os("GUPWATCH_EMPTY_PROGRAMS").is_some_and(|v| v == "1") as u64;
    let object = Object::from_env()?;
    // aya's loader parses the whole kernel BTF when it is made (about
    // 20 MiB of heap on a distribution kernel), to relocate CO-RE field
    // accesses; Rust programs have none (the object's .BTF.ext holds no
    // core_relo records), so that copy goes at once, before the object is
    // parsed and the maps created, and never adds to their memory.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    trim_heap();
    crate::memstat::note("load: aya's loader made, its BTF dropped");
    let mut ebpf = loader
        .override_global("HOOK_ARGS", &hook_args, true)
        .override_global("FOLL_LONGTERM", &foll_longterm, true)
        .override_global("FOLL_PIN", &plan.foll_pin(), true)
        .override_global("PAGE_COMPOUND_HEAD", &plan.page_layout.compound_head, true)
        .override_global("STRUCT_PAGE_SIZE", &plan.page_layout.size, true)
        .override_global("TASK_STACK_OFFSET", &plan.page_layout.task_stack, true)
        .override_global("TASK_STACK_SIZE", &plan.page_layout.task_stack_size, true)
        .override_global("RETURN_TRAMPOLINE", &plan.return_trampoline, true)
        .override_global("TEXT_RANGES", &text_ranges, true)
        .override_global("KERNEL_TEXT", &plan.kernel_text, true)
        .override_global("UNPIN_FUNCTIONS", &plan.unpin_texts(), true)
        .override_global("OBJECT_LAYOUT", &plan.object_lookup.layout, true)
        .override_global("TRACK_PINS", &track, true)
        .override_global("LOG_DIAG", &log_diag, true)
        .override_global("EMPTY_PROGRAMS", &empty, true)
        .map_max_entries("PINS", opts.track_capacity.max(1))
        .load(object.bytes())
        .map_err(map_create_error)?;
    crate::memstat::note("load: object loaded, maps created");
    if std::env::var_os("GUPWATCH_DEBUG").is_some() {
        let u = plan.unpin_texts();
        eprintln!(
            "gupwatch: kernel text {:#x}..{:#x}, unpin functions {:#x}..{:#x}",
            plan.kernel_text.start, plan.kernel_text.end, u.span.start, u.span.end
        );
        eprintln!("gupwatch: object loaded; attaching sched_process_exit");
    }
    plan.exit_hook = match attach_exit_tracepoint(&mut ebpf) {
        Ok(()) => HookStatus::Attached,
        Err(e) => HookStatus::Failed(format!("tracepoint sched/sched_process_exit: {}", describe(&e, "sched_process_exit"))),
    };
    let btf = fentry_btf(&plan);
    crate::memstat::note("load: BTF ids for fentry");
    // Opened while the start-up capabilities are held: see ModuleTable.
    let mut modules = crate::probes::modwatch::ModuleTable::open();

    let debug = std::env::var_os("GUPWATCH_DEBUG").is_some();
    let mut all_links = vec![];
    for i in attach_order(&plan) {
        all_links.extend(attach_hook(&mut ebpf, &mut plan.hooks[i], btf.as_ref(), debug));
    }
    // Which load of each module the hooks on it belong to.
    let look = modules.look();
    for h in all_links.iter_mut() {
        h.instance = h.module.as_deref().and_then(|m| look.instance(m));
    }
    crate::memstat::note("load: hooks attached");
    let maps = StatsMaps::take(&mut ebpf).map_err(LoadError::Map)?;
    // Optional: without it RDMA and VFIO pins whose creator exited cannot
    // be told held from orphaned, and the leak report says so.
    let holder_iter = crate::model::holders::HolderIter::load(&mut ebpf, btf.as_ref())
        .map(std::sync::Mutex::new)
        .map_err(|e| e.to_string());
    plan.holder_iter = match &holder_iter {
        Ok(_) => HookStatus::Attached,
        Err(e) => HookStatus::Failed(e.clone()),
    };
    if debug {
        if let Err(e) = &holder_iter {
            eprintln!("gupwatch: no holder iterator: {e}");
        }
    }
    // Logging never costs the probes: without its reader the programs'
    // records are dropped in the kernel, and only the first few are made.
    let ebpf_log = if opts.ebpf_log {
        match crate::probes::ebpflog::EbpfLog::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn_no_ebpf_log(&e);
                None
            }
        }
    } else {
        None
    };
    trim_heap();
    Ok(Probes {
        _ebpf: ebpf,
        plan,
        maps,
        track_capacity: opts.track_capacity.max(1),
        links: all_links,
        ebpf_log,
        modules,
        detached: vec![],
        holder_iter,
    })
}


/// Maps were charged to RLIMIT_MEMLOCK before 5.11; lift it so map creation
/// does not fail on those kernels. Failure is harmless on newer ones.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

impl Probes {
    /// The live holders of `objects` ([`crate::model::holders::live_with`]), with
    /// this load's holder iterator: what the leak analysis calls.
    pub fn holders(&self, objects: &[gup_common::object::PinObject]) -> crate::model::holders::Holders {
        crate::model::holders::live_with(objects, self.holder_iter.as_ref().map_err(String::as_str))
    }

    /// The eBPF side's debug log reader ([`LoadOptions::ebpf_log`]), for
    /// the caller to [`start`](crate::probes::ebpflog::EbpfLog::start) once it has
    /// dropped its capabilities, and to keep while the probes run.
    pub fn take_ebpf_log(&mut self) -> Option<crate::probes::ebpflog::EbpfLog> {
        self.ebpf_log.take()
    }

    /// Detaches every hook; the programs stay loaded, so
    /// [`Probes::reattach_all`] is cheap (no verifier run). Used by the
    /// stress suite's attach/detach cycles.
    pub fn detach_all(&mut self) -> Result<(), ProgramError> {
        for h in self.links.iter_mut() {
            h.kprobe_links.clear();
            if let Some(l) = h.links.take() {
                detach_links(&mut self._ebpf, h.idx, l)?;
            }
        }
        Ok(())
    }

    /// Attaches again every hook [`Probes::detach_all`] detached, after
    /// clearing the per-thread and per-CPU records calls in flight at the
    /// detach left behind ([`Probes::clear_stale_records`]). Returns how
    /// many records were cleared.
    pub fn reattach_all(&mut self) -> Result<u64, CycleError> {
        let stale = self.clear_stale_records()?;
        for i in 0..self.links.len() {
            if self.links[i].links.is_none() {
                let l = reattach(&mut self._ebpf, &self.links[i])?;
                self.links[i].links = Some(l);
                self.links[i].kprobe_links = kprobe_links(&self._ebpf, self.links[i].idx, self.links[i].mechanism);
            }
        }
        Ok(stale)
    }

    /// Per hooked function, the calls the kernel ran without one of
    /// gupwatch's programs because that program was already running on the
    /// CPU (an interrupt calling the same function while it ran, or a task
    /// preempted inside it): the kernel's BPF recursion guard skipped it.
    /// Most such calls are still counted at their other end
    /// (`gup_common::irq`); the rest are missing, so every skip is reported.
    ///
    /// From each program's `recursion_misses` (in its fdinfo, 5.12+;
    /// kprobe programs count there from 6.7), plus, for kprobes, the calls
    /// the probe itself let through (a kretprobe out of instances, a
    /// kprobe hit inside another's handler: the link's `missed`, 6.7+).
    /// Every attached hook has an entry, 0 when nothing was missed.
    pub fn probe_misses(&self) -> Vec<(Api, u64)> {
        let mut out: Vec<(Api, u64)> = Vec::new();
        for h in self.links.iter().filter(|h| h.links.is_some()) {
            let Some(api) = Api::from_index(h.idx) else { continue };
            let prefixes: &[&str] = match h.mechanism {
                Mechanism::Fentry => &["fe", "fx"],
                Mechanism::Kprobe => &["kp", "kr"],
            };
            let misses: u64 = prefixes
                .iter()
                .filter_map(|p| self._ebpf.program(&prog_name(p, h.idx)))
                .filter_map(|prog| prog.fd().ok().map(|fd| fd.as_fd().as_raw_fd()))
                .filter_map(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok())
                .filter_map(|info| recursion_misses(&info))
                .sum::<u64>()
                + crate::probes::linkinfo::missed(&h.kprobe_links);
            match out.iter_mut().find(|(a, _)| *a == api) {
                Some((_, m)) => *m += misses,
                None => out.push((api, misses)),
            }
        }
        out
    }

    /// Run statistics of each of gupwatch's attached programs, from its
    /// fdinfo (`run_cnt`, `run_time_ns`: what `BPF_OBJ_GET_INFO_BY_FD`
    /// returns, readable without capabilities, so after the daemon shed
    /// them). The kernel moves them only while statistics are on
    /// ([`crate::probes::bpfstats`]). The names are the eBPF object's, so the set
    /// is bounded by it: entry and exit programs of every attached hook,
    /// the task kprobe beside an fentry hook, and the exit tracepoint.
    pub fn program_runs(&self) -> Vec<ProgramRuns> {
        let mut names: Vec<String> = Vec::new();
        for h in &self.links {
            match &h.links {
                Some(Links::Fentry(_, fx, kp)) => {
                    names.push(prog_name("fe", h.idx));
                    names.extend(fx.as_ref().map(|_| prog_name("fx", h.idx)));
                    names.extend(kp.as_ref().map(|_| prog_name("kp", h.idx)));
                }
                Some(Links::Kprobe(_, kr)) => {
                    names.push(prog_name("kp", h.idx));
                    names.extend(kr.as_ref().map(|_| prog_name("kr", h.idx)));
                }
                None => {}
            }
        }
        if self.plan.exit_hook == HookStatus::Attached {
            names.push("sched_process_exit".into());
        }
        names
            .into_iter()
            .filter_map(|program| {
                let fd = self._ebpf.program(&program)?.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                Some(ProgramRuns {
                    runs: fdinfo_field(&info, "run_cnt:")?,
                    run_time_ns: fdinfo_field(&info, "run_time_ns:")?,
                    program,
                })
            })
            .collect()
    }

    /// Empties the maps that hold one record per call in progress
    /// (`INFLIGHT`, `I915_CUR`) and the per-CPU interrupt-unpin frames.
    ///
    /// Only valid while nothing is attached. A call that was inside a
    /// hooked function when its exit program was detached never removes its
    /// record. The programs drop such records once a later call shows them
    /// stale, but clearing them here leaves nothing to chance.
    fn clear_stale_records(&mut self) -> Result<u64, CycleError> {
        use aya::maps::{HashMap, PerCpuArray, PerCpuValues};
        let mut cleared = 0;
        {
            let map = self._ebpf.map_mut("INFLIGHT").ok_or(CycleError::MissingMap("INFLIGHT"))?;
            let mut m: HashMap<_, u64, gup_common::Inflight> = HashMap::try_from(map)?;
            let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                cleared += m.remove(&k).is_ok() as u64;
            }
        }
        {
            let map = self._ebpf.map_mut("I915_CUR").ok_or(CycleError::MissingMap("I915_CUR"))?;
            let mut m: HashMap<_, u64, [u64; 2]> = HashMap::try_from(map)?;
            let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                cleared += m.remove(&k).is_ok() as u64;
            }
        }
        {
            use gup_common::irq::IrqUnpins;
            let map = self._ebpf.map_mut("IRQ_UNPINS").ok_or(CycleError::MissingMap("IRQ_UNPINS"))?;
            let mut m: PerCpuArray<_, IrqUnpins> = PerCpuArray::try_from(map)?;
            let cpus = m.get(&0, 0)?;
            let frames: u64 = cpus.iter().map(|c| c.depth + c.overflow).sum();
            cleared += frames;
            if frames != 0 {
                // Only the frames: the counters in the value stay.
                let cleared: Vec<IrqUnpins> =
                    cpus.iter().map(|c| IrqUnpins { depth: 0, overflow: 0, loose_pages: 0, ..*c }).collect();
                m.set(0, PerCpuValues::try_from(cleared)?, 0)?;
            }
        }
        Ok(cleared)
    }

}

/// The API whose programs carry this name (for diagnostics).
pub fn api_of_program(name: &str) -> Option<Api> {
    let idx = name.split('_').nth(1)?.parse().ok()?;
    Api::from_index(idx)
}

/// Refused map creations say what to change, by errno.
#[cfg(test)]
mod map_create_tests {
    use super::*;

    #[test]
    fn each_errno_gets_its_fix() {
        let err = |errno| {
            map_create_error(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: "PINS".into(),
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
            .to_string()
        };
        let big = err(libc::E2BIG);
        assert!(big.starts_with("the kernel refused to create BPF map PINS: Argument list too long"), "{big}");
        assert!(big.contains("lower --track-capacity") && !big.contains("Run as root"), "{big}");
        let nomem = err(libc::ENOMEM);
        assert!(nomem.contains("memory cgroup") && nomem.contains("MemoryMax"), "{nomem}");
        let perm = err(libc::EPERM);
        assert!(perm.contains("Run as root") && perm.contains("CAP_BPF"), "{perm}");
        assert!(err(libc::EBADF).contains("gupwatch doctor"));
    }
}

/// The verifier-refusal message (`describe`) and the saved log, without a
/// kernel: what `gupwatch probes` and the diagnosis show when the verifier
/// says no.
#[cfg(test)]
mod describe_tests {
    use super::attach::btf_with_functions;
    use super::*;

    #[test]
    fn fentry_functions_sit_at_their_kernel_type_ids() {
        use aya_obj::btf::BtfKind;
        let btf = btf_with_functions(vec![(90_001, "unpin_user_pages"), (7, "unpin_user_page"), (7, "zz_dup")])
            .expect("functions wanted");
        // aya's own lookup, the one FEntry::load makes, finds each id.
        assert_eq!(btf.id_by_type_name_kind("unpin_user_page", BtfKind::Func).ok(), Some(7));
        assert_eq!(btf.id_by_type_name_kind("unpin_user_pages", BtfKind::Func).ok(), Some(90_001));
        assert!(btf.id_by_type_name_kind("zz_dup", BtfKind::Func).is_err(), "one function an id");
        assert!(btf.id_by_type_name_kind("pin_user_pages", BtfKind::Func).is_err());
        assert!(btf_with_functions(vec![]).is_none());
        assert!(btf_with_functions(vec![(0, "void")]).is_none(), "id 0 is void");
    }

    #[test]
    fn recursion_misses_are_read_from_fdinfo() {
        // The layout of 6.12's bpf_prog_show_fdinfo.
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t94aa1b3c5e6b0b4f\nmemlock:\t4096\nprog_id:\t41\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t310\n";
        assert_eq!(recursion_misses(info), Some(17));
        // Before 5.12 the field does not exist.
        assert_eq!(recursion_misses("prog_type:\t26\nprog_id:\t41\n"), None);
    }

    #[test]
    fn verifier_refusals_are_summarized_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; int x = *(u64 *)(r1 + 8)\n1: (79) r2 = *(u64 *)(r1 +8)\ninvalid bpf_context access off=8 size=8\nprocessed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n";
        let refused = |log: &str| ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log.to_string()),
        };
        // The only test that sets it; describe() reads it when it saves.
        std::env::set_var("GUPWATCH_LOG_DIR", dir.path());
        let msg = describe(&refused(log), "pin_user_pages-kprobe");
        let empty = describe(&refused(""), "unpin_user_pages-kprobe");
        std::env::remove_var("GUPWATCH_LOG_DIR");
        assert!(msg.starts_with("verifier refused the program: Permission denied"), "{msg}");
        assert!(msg.contains("1: (79) r2 = *(u64 *)(r1 +8) | invalid bpf_context access off=8 size=8"), "{msg}");
        assert!(!msg.contains("processed 2 insns"), "bookkeeping lines are left out: {msg}");
        let saved = dir.path().join("gupwatch-verifier-pin_user_pages-kprobe.log");
        assert!(msg.ends_with(&format!(" (full verifier log: {})", saved.display())), "{msg}");
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), log, "the whole log is saved");
        // No log: the errno alone, nothing saved.
        assert_eq!(empty, "program load refused: Permission denied (os error 13)");
        assert!(!dir.path().join("gupwatch-verifier-unpin_user_pages-kprobe.log").exists());
    }
}

#[cfg(test)]
mod order_tests {
    use gup_common::{Api, ApiKind};

    use super::*;
    use crate::kernel::kallsyms::Kallsyms;

    #[test]
    fn releases_attach_before_pins() {
        let text: String = Api::ALL
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{:016x} T {}\n", 0xffffffff81000000u64 + i as u64 * 16, a.symbol()))
            .collect();
        let plan = ProbePlan::resolve("test".into(), Err("no BTF".into()), &Kallsyms::parse(&text));
        let order = attach_order(&plan);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..plan.hooks.len()).collect::<Vec<_>>(), "every hook once");
        let kinds: Vec<ApiKind> = order.iter().map(|&i| plan.hooks[i].api.kind()).collect();
        let first_other = kinds.iter().position(|k| !matches!(k, ApiKind::Unpin | ApiKind::Undo)).unwrap_or(kinds.len());
        assert!(first_other > 0, "some release hooks exist: {kinds:?}");
        assert!(
            kinds[first_other..].iter().all(|k| !matches!(k, ApiKind::Unpin | ApiKind::Undo)),
            "no release after a pin: {kinds:?}"
        );
        assert!(kinds.contains(&ApiKind::Pin));
        // Plan order within a group.
        let pins: Vec<usize> = order.iter().copied().filter(|&i| plan.hooks[i].api.kind() == ApiKind::Pin).collect();
        assert!(pins.windows(2).all(|w| w[0] < w[1]), "{pins:?}");
    }
}
