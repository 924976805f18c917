//! Attaching one hook: fentry or kprobe per plan with the fallback to the
//! other, the task-entry kprobe beside fentry, and the exit tracepoint;
//! detaching and reattaching a hook's links.

use aya::{
    programs::{kprobe::KProbeLinkId, FEntry, FExit, KProbe, ProgramError, TracePoint},
    Btf, Ebpf,
};
use gup_common::Api;
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::{describe, fdinfo_field, HookLinks, Links};
use crate::kernel::plan::{HookPlan, HookStatus, Mechanism, ProbePlan};

/// Attaches one planned hook by its mechanism, falling back to the other
/// (see [`attach_with_fallback`]), adds the task-entry kprobe where an
/// fentry hook wants one, and writes the outcome into the hook's plan
/// entry. `None` when nothing was planned for it or it did not attach.
pub(super) fn attach_hook(ebpf: &mut Ebpf, hook: &mut HookPlan, btf: Option<&Btf>, debug: bool) -> Option<HookLinks> {
    let (Some(mechanism), Some(symbol)) = (hook.mechanism, hook.symbol.clone()) else {
        return None;
    };
    if debug {
        eprintln!("gupwatch: attaching {} ({mechanism})", hook.function);
    }
    let idx = hook.api as u32;
    let with_exit = has_exit(hook.api);
    let result = attach_with_fallback(ebpf, hook, mechanism, &symbol, btf, with_exit);
    let result = with_task_kprobe(ebpf, hook, &symbol, result);
    match result {
        Ok((m, l)) => {
            hook.mechanism = Some(m);
            hook.status = HookStatus::Attached;
            let kprobe_links = kprobe_links(ebpf, idx, m);
            let module = hook.module.clone();
            Some(HookLinks {
                idx,
                symbol,
                with_exit,
                task_kprobe: hook.task_kprobe,
                mechanism: m,
                links: Some(l),
                kprobe_links,
                module,
                instance: None,
                last_plan: None,
            })
        }
        Err(e) => {
            detach(ebpf, idx, Mechanism::Kprobe);
            hook.status = HookStatus::Failed(e);
            None
        }
    }
}

/// Attaches `hook` by `mechanism`; when the kernel refuses it, by the
/// other one where the hook can take it (the reason says so). The error
/// names both refusals.
fn attach_with_fallback(
    ebpf: &mut Ebpf,
    hook: &mut HookPlan,
    mechanism: Mechanism,
    symbol: &str,
    btf: Option<&Btf>,
    with_exit: bool,
) -> Result<(Mechanism, Links), String> {
    let idx = hook.api as u32;
    match (mechanism, btf) {
        (Mechanism::Fentry, Some(btf)) => match attach_fentry(ebpf, idx, symbol, btf, with_exit) {
            Ok(l) => Ok((Mechanism::Fentry, l)),
            Err(e) => {
                let fentry_err = describe(&e, &format!("{}-fentry", hook.function));
                detach(ebpf, idx, Mechanism::Fentry);
                match attach_kprobe(ebpf, idx, symbol, with_exit) {
                    Ok(l) => {
                        hook.reason = format!("fentry refused ({fentry_err}): fell back to kprobe");
                        Ok((Mechanism::Kprobe, l))
                    }
                    Err(k) => Err(format!(
                        "fentry: {fentry_err}; kprobe: {}",
                        describe(&k, &format!("{}-kprobe", hook.function))
                    )),
                }
            }
        },
        (Mechanism::Fentry, None) => Err("fentry planned but the kernel's BTF gave no type id for it".into()),
        (Mechanism::Kprobe, _) => match attach_kprobe(ebpf, idx, symbol, with_exit) {
            Ok(l) => Ok((Mechanism::Kprobe, l)),
            Err(e) => {
                let kprobe_err = describe(&e, &format!("{}-kprobe", hook.function));
                match (&btf, hook.fentry_possible) {
                    (Some(btf), true) => {
                        detach(ebpf, idx, Mechanism::Kprobe);
                        match attach_fentry(ebpf, idx, symbol, btf, with_exit) {
                            Ok(l) => {
                                hook.reason = format!("kprobe refused ({kprobe_err}): fell back to fentry");
                                Ok((Mechanism::Fentry, l))
                            }
                            Err(f) => {
                                detach(ebpf, idx, Mechanism::Fentry);
                                Err(format!(
                                "kprobe: {kprobe_err}; fentry: {}",
                                describe(&f, &format!("{}-fentry", hook.function))
                                ))
                            }
                        }
                    }
                    _ => Err(format!("kprobe: {kprobe_err}")),
                }
            }
        },
    }
}

/// Adds the task-entry kprobe beside an attached fentry hook that wants
/// one; a refusal keeps the hook, without it (the reason says what that
/// costs). Hooks on kprobes need none.
fn with_task_kprobe(
    ebpf: &mut Ebpf,
    hook: &mut HookPlan,
    symbol: &str,
    result: Result<(Mechanism, Links), String>,
) -> Result<(Mechanism, Links), String> {
    let idx = hook.api as u32;
    match result {
        Ok((Mechanism::Fentry, Links::Fentry(fe, fx, None))) if hook.task_kprobe => {
            let kp = match attach_task_kprobe(ebpf, idx, symbol) {
                Ok(kp) => Some(kp),
                Err(e) => {
                    hook.task_kprobe = false;
                    hook.reason = format!("{}; the task-entry kprobe was refused ({}), so preempted tasks can make the kernel skip this hook's entries", hook.reason, describe(&e, &format!("{}-kprobe", hook.function)));
                    None
                }
            };
            Ok((Mechanism::Fentry, Links::Fentry(fe, fx, kp)))
        }
        Ok((m, l)) => {
            if m != Mechanism::Fentry {
                hook.task_kprobe = false;
            }
            Ok((m, l))
        }
        Err(e) => Err(e),
    }
}

/// Opens this hook's kprobe links (see [`crate::probes::linkinfo`]).
pub(super) fn kprobe_links(ebpf: &Ebpf, idx: u32, mechanism: Mechanism) -> Vec<std::os::fd::OwnedFd> {
    let ids: Vec<u32> = kprobe_prefixes(mechanism)
        .iter()
        .filter_map(|p| ebpf.program(&prog_name(p, idx)))
        .filter_map(|prog| prog.fd().ok().map(|fd| fd.as_fd().as_raw_fd()))
        .filter_map(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok())
        .filter_map(|info| fdinfo_field(&info, "prog_id:"))
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    crate::probes::linkinfo::open_links_of(&ids)
}

/// The kprobe programs whose misses count against a hook. Not the
/// task-entry kprobe beside an fentry program: the kernel skips it in
/// every interrupt that comes during a kprobe program, where it would have
/// left the call to the fentry program anyway; in a task nothing skips it
/// (and the exit would count such a call, `counted_at_exit`).
pub(super) fn kprobe_prefixes(mechanism: Mechanism) -> &'static [&'static str] {
    match mechanism {
        Mechanism::Kprobe => &["kp", "kr"],
        Mechanism::Fentry => &[],
    }
}

/// Attaches the kprobe that counts an fentry hook's task-context entries,
/// then tells the programs so (the `TASK_KPROBES` bit): from then on the
/// fentry program leaves task-context calls to it.
pub(super) fn attach_task_kprobe(ebpf: &mut Ebpf, idx: u32, symbol: &str) -> Result<KProbeLinkId, ProgramError> {
    let kp: &mut KProbe = program(ebpf, &prog_name("kp", idx))?.try_into()?;
    load_once(kp)?;
    let link = kp.attach(symbol, 0)?;
    if let Err(e) = set_task_kprobe(ebpf, idx, true) {
        let kp: &mut KProbe = program(ebpf, &prog_name("kp", idx))?.try_into()?;
        let _ = kp.detach(link);
        return Err(e);
    }
    Ok(link)
}

/// Sets or clears `idx`'s bit in `TASK_KPROBES`. Between the attach and
/// the bit (or the bit and the detach) both programs may leave a call to
/// the other: its exit counts it then, from its arguments (an unseen
/// entry, `gup_common::skipped`).
pub(super) fn set_task_kprobe(ebpf: &mut Ebpf, idx: u32, on: bool) -> Result<(), ProgramError> {
    let map = ebpf
        .map_mut("TASK_KPROBES")
        .ok_or_else(|| aya::maps::MapError::InvalidName { name: "TASK_KPROBES".into() })?;
    let mut bits: aya::maps::Array<_, u64> = aya::maps::Array::try_from(map)?;
    let cur = bits.get(&0, 0)?;
    let next = if on { cur | 1 << idx } else { cur & !(1 << idx) };
    bits.set(0, next, 0)?;
    Ok(())
}


/// Whether a hook has an exit program: the slow-path hook only marks where
/// a fast call fell back, and the undo hook needs no return value.
pub(super) fn has_exit(api: Api) -> bool {
    !matches!(api.kind(), gup_common::ApiKind::SlowPath | gup_common::ApiKind::Undo)
}

/// The order in which the plan's hooks are attached: the ones that
/// release pins (unpins, and the internal release) first, then the rest in
/// plan order. Attached one by one, the hooks leave a window in which some
/// are live and others not. With pins live before unpins, a pin taken in
/// that window and released before the unpin hook was in place stayed
/// "outstanding" for ever (a workload running while gupwatch started left
/// 25,600 pages tracked that the kernel had released). The other way
/// round, the window only adds releases of pins taken before gupwatch
/// started, which it has to handle anyway.
pub fn attach_order(plan: &ProbePlan) -> Vec<usize> {
    let releases = |k: gup_common::ApiKind| matches!(k, gup_common::ApiKind::Unpin | gup_common::ApiKind::Undo);
    let mut order: Vec<usize> = (0..plan.hooks.len()).collect();
    // Stable: plan order within each group.
    order.sort_by_key(|&i| !releases(plan.hooks[i].api.kind()));
    order
}

/// What aya needs of the kernel's BTF to attach fentry/fexit: the type id
/// of each function (`FEntry::load` looks it up by name and hands it to
/// the kernel as `attach_btf_id`). The plan already read those ids from
/// the kernel's BTF, so instead of a second full parse (`Btf::from_sys_fs`,
/// some 20 MiB at start-up's peak) this builds a BTF in which each planned
/// function sits at its own id behind placeholder types: 40 bytes a type
/// up to the highest id, freed when attaching is done. `None` when no hook
/// can use fentry.
pub(super) fn fentry_btf(plan: &ProbePlan) -> Option<Btf> {
    let mut wanted: Vec<(u32, &str)> = plan.hooks.iter().filter_map(|h| Some((h.btf_id?, h.symbol.as_deref()?))).collect();
    // The holder iterator's target too: one BTF of placeholders for all,
    // rather than a second one as large beside it.
    wanted.extend(plan.object_lookup.task_file_iter_btf_id.map(|id| (id, crate::kernel::plan::object::TASK_FILE_ITER)));
    btf_with_functions(wanted)
}

/// A BTF in which each (type id, function name) of `wanted` is a FUNC at
/// that id, every other id a placeholder; `None` for no function.
pub(crate) fn btf_with_functions(wanted: Vec<(u32, &str)>) -> Option<Btf> {
    use aya_obj::btf::{BtfType, Func, FuncLinkage};
    let mut wanted: Vec<(u32, &str)> = wanted.into_iter().filter(|(id, _)| *id > 0).collect();
    if wanted.is_empty() {
        return None;
    }
    wanted.sort_unstable();
    wanted.dedup_by_key(|(id, _)| *id);
    let mut btf = Btf::new();
    // Id 0 (void) is there already.
    let mut next = 1u32;
    for (id, name) in wanted {
        while next < id {
            btf.add_type(BtfType::Unknown);
            next += 1;
        }
        let name_at = btf.add_string(name);
        next = btf.add_type(BtfType::Func(Func::new(name_at, 0, FuncLinkage::Global))) + 1;
    }
    Some(btf)
}

pub(super) fn prog_name(prefix: &str, idx: u32) -> String {
    format!("{prefix}_{idx}")
}

pub(super) fn attach_fentry(ebpf: &mut Ebpf, idx: u32, symbol: &str, btf: &Btf, with_exit: bool) -> Result<Links, ProgramError> {
    let fx = if with_exit {
        let fx: &mut FExit = program(ebpf, &prog_name("fx", idx))?.try_into()?;
        fx.load(symbol, btf)?;
        Some(fx.attach()?)
    } else {
        None
    };
    let fe: &mut FEntry = program(ebpf, &prog_name("fe", idx))?.try_into()?;
    fe.load(symbol, btf)?;
    Ok(Links::Fentry(fe.attach()?, fx, None))
}

/// Attaches already-loaded programs again (after [`Probes::detach_all`]).
pub(super) fn reattach(ebpf: &mut Ebpf, h: &HookLinks) -> Result<Links, ProgramError> {
    match h.mechanism {
        Mechanism::Fentry => {
            let fx = if h.with_exit {
                let fx: &mut FExit = program(ebpf, &prog_name("fx", h.idx))?.try_into()?;
                Some(fx.attach()?)
            } else {
                None
            };
            let fe: &mut FEntry = program(ebpf, &prog_name("fe", h.idx))?.try_into()?;
            let fe = fe.attach()?;
            let kp = if h.task_kprobe { Some(attach_task_kprobe(ebpf, h.idx, &h.symbol)?) } else { None };
            Ok(Links::Fentry(fe, fx, kp))
        }
        Mechanism::Kprobe => {
            let kr = if h.with_exit {
                let kr: &mut KProbe = program(ebpf, &prog_name("kr", h.idx))?.try_into()?;
                Some(kr.attach(&h.symbol, 0)?)
            } else {
                None
            };
            let kp: &mut KProbe = program(ebpf, &prog_name("kp", h.idx))?.try_into()?;
            Ok(Links::Kprobe(kp.attach(&h.symbol, 0)?, kr))
        }
    }
}

/// Detaches one hook's links, entry first (so no call is entered without
/// its exit being seen).
pub(super) fn detach_links(ebpf: &mut Ebpf, idx: u32, links: Links) -> Result<(), ProgramError> {
    match links {
        Links::Fentry(fe, fx, kp) => {
            if let Some(kp) = kp {
                // The bit first: the fentry program takes task-context
                // calls back before the kprobe stops seeing them.
                set_task_kprobe(ebpf, idx, false)?;
                let p: &mut KProbe = program(ebpf, &prog_name("kp", idx))?.try_into()?;
                p.detach(kp)?;
            }
            let p: &mut FEntry = program(ebpf, &prog_name("fe", idx))?.try_into()?;
            p.detach(fe)?;
            if let Some(fx) = fx {
                let p: &mut FExit = program(ebpf, &prog_name("fx", idx))?.try_into()?;
                p.detach(fx)?;
            }
        }
        Links::Kprobe(kp, kr) => {
            let p: &mut KProbe = program(ebpf, &prog_name("kp", idx))?.try_into()?;
            p.detach(kp)?;
            if let Some(kr) = kr {
                let p: &mut KProbe = program(ebpf, &prog_name("kr", idx))?.try_into()?;
                p.detach(kr)?;
            }
        }
    }
    Ok(())
}

pub(super) fn attach_exit_tracepoint(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    let tp: &mut TracePoint = program(ebpf, "sched_process_exit")?.try_into()?;
    tp.load()?;
    tp.attach("sched", "sched_process_exit")?;
    Ok(())
}

pub(super) fn attach_kprobe(ebpf: &mut Ebpf, idx: u32, symbol: &str, with_exit: bool) -> Result<Links, ProgramError> {
    let kr = if with_exit {
        let kr: &mut KProbe = program(ebpf, &prog_name("kr", idx))?.try_into()?;
        load_once(kr)?;
        Some(kr.attach(symbol, 0)?)
    } else {
        None
    };
    let kp: &mut KProbe = program(ebpf, &prog_name("kp", idx))?.try_into()?;
    load_once(kp)?;
    Ok(Links::Kprobe(kp.attach(symbol, 0)?, kr))
}

/// Loads a kprobe program unless it is loaded: a module hook attached
/// again after its module came back reuses its programs, so the verifier
/// does not run again and the number of programs stays the same.
pub(super) fn load_once(p: &mut KProbe) -> Result<(), ProgramError> {
    match p.load() {
        Err(ProgramError::AlreadyLoaded) => Ok(()),
        r => r,
    }
}

/// Unloads a half-attached hook so a fallback starts clean.
pub(super) fn detach(ebpf: &mut Ebpf, idx: u32, mechanism: Mechanism) {
    // Unloading a program that was never loaded is an error we can ignore:
    // the point is that nothing stays attached.
    match mechanism {
        Mechanism::Fentry => {
            if let Ok(p) = program(ebpf, &prog_name("fe", idx)).and_then(<&mut FEntry>::try_from) {
                let _ = p.unload();
            }
            if let Ok(p) = program(ebpf, &prog_name("fx", idx)).and_then(<&mut FExit>::try_from) {
                let _ = p.unload();
            }
        }
        Mechanism::Kprobe => {
            for prefix in ["kp", "kr"] {
                if let Ok(p) = program(ebpf, &prog_name(prefix, idx)).and_then(<&mut KProbe>::try_from) {
                    let _ = p.unload();
                }
            }
        }
    }
}

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, ProgramError> {
    ebpf.program_mut(name).ok_or_else(|| {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "find program",
            io_error: std::io::Error::new(std::io::ErrorKind::NotFound, format!("program {name} not in the object")),
        })
    })
}
