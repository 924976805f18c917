//! Module hooks through unload and load ([`Probes::follow_modules`]): a
//! hook on a module function is detached when the load of the module it
//! was attached to goes away, and attached again, with the same programs,
//! when the module is back. See [`crate::probes::modwatch`] for how an unload is
//! told, and why a kprobe cannot outlive its module's load.

use super::{attach_kprobe, describe, detach, detach_links, has_exit, kprobe_links, HookLinks, Probes};
use crate::{
    probes::modwatch::{Fate, KprobeList, Modules},
    kernel::plan::{HookStatus, Mechanism},
};

/// One hook found dead and detached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detach {
    /// The hooked function.
    pub function: &'static str,
    /// Its module.
    pub module: String,
    /// Why: `module_unloaded`, `module_reloaded` (unloaded and loaded again
    /// between two looks) or `kernel_gone` (the kernel lists its probe
    /// `[GONE]`, or not at all).
    pub reason: &'static str,
}

/// What one look at the modules changed.
#[derive(Default)]
pub struct ModuleEvents {
    /// Hooks detached because their module's load went away.
    pub detached: Vec<Detach>,
    /// Hooks attached because their module is (back) in the kernel.
    pub attached: Vec<&'static str>,
    /// Hooks whose module is in but could not be attached, and why.
    pub failed: Vec<(&'static str, String)>,
    /// How long attaching took, kallsyms included (0 when nothing was due).
    pub attach_time: std::time::Duration,
    /// The kallsyms read to attach, for the caller to name call sites in
    /// the module's new load without reading it again (a read of a
    /// distribution kernel's kallsyms takes seconds under emulation).
    pub kallsyms: Option<crate::kernel::kallsyms::Kallsyms>,
}

impl ModuleEvents {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.detached.is_empty() && self.attached.is_empty() && self.failed.is_empty()
    }
}

/// The `reason` labels of `gupwatch_probe_detached_total`.
pub const DETACH_REASONS: [&str; 3] = ["module_unloaded", "module_reloaded", "kernel_gone"];

impl Probes {
    /// Whether any hook lives on a module, attached or waiting for it: then
    /// [`Probes::follow_modules`] has work, and attaching needs the
    /// capabilities for it for as long as gupwatch runs.
    pub fn follows_modules(&self) -> bool {
        self.plan
            .hooks
            .iter()
            .any(|h| h.module.is_some() && (h.waits_for_module || h.status == HookStatus::Attached))
    }

    /// Whether a hook waits for its module (not loaded, or unloaded since).
    pub fn late_attach_pending(&self) -> bool {
        self.plan.hooks.iter().any(|h| h.waits_for_module)
    }

    /// Looks at the modules once: detaches every module hook whose module
    /// load is gone (or whose probes the kernel lists as gone), then
    /// attaches the hooks whose module is live. Meant to run every few
    /// seconds; a look is a read of `/proc/modules`, a stat per module
    /// hooked, and the kernel's kprobe list while module hooks are
    /// attached. kallsyms is read only when a waiting hook's module is live.
    pub fn follow_modules(&mut self) -> ModuleEvents {
        let mut ev = ModuleEvents::default();
        if !self.follows_modules() {
            return ev;
        }
        let look = self.modules.look();
        let attached_on_modules = self.links.iter().any(|h| h.module.is_some() && h.links.is_some());
        let kernel_list = if attached_on_modules { KprobeList::read() } else { None };
        for i in 0..self.links.len() {
            let h = &self.links[i];
            let (Some(module), true) = (h.module.clone(), h.links.is_some()) else { continue };
            let fate = match &h.instance {
                Some(was) => look.fate(&module, was),
                None if look.live(&module) => Fate::Same,
                None => Fate::Unloaded,
            };
            let kernel_dead = h.mechanism == Mechanism::Kprobe
                && kernel_list.as_ref().is_some_and(|l| !l.hook_live(&h.symbol, h.with_exit));
            let reason = match fate {
                Fate::Same if kernel_dead => "kernel_gone",
                Fate::Same => continue,
                f => f.reason(),
            };
            if let Some(d) = self.detach_module_hook(i, module, reason, &mut ev) {
                ev.detached.push(d);
            }
        }
        self.attach_waiting(&look, &mut ev);
        ev
    }

    /// Detaches one module hook and makes its plan entry wait for the
    /// module again.
    fn detach_module_hook(&mut self, i: usize, module: String, reason: &'static str, ev: &mut ModuleEvents) -> Option<Detach> {
        let h: &mut HookLinks = &mut self.links[i];
        // The link descriptors first: an open one keeps the link attached.
        h.kprobe_links.clear();
        h.instance = None;
        let idx = h.idx;
        let links = h.links.take()?;
        let hook = &mut self.plan.hooks[idx as usize];
        self.links[i].last_plan = Some(hook.clone());
        let function = hook.function;
        if let Err(e) = detach_links(&mut self._ebpf, idx, links) {
            // The links are dropped with the error's value either way; say
            // so rather than count a detach that may not have happened.
            ev.failed.push((function, format!("detaching after {module} went away: {e}")));
        }
        let what = match reason {
            "module_reloaded" => "was unloaded and loaded again",
            "kernel_gone" => "is loaded, but the kernel lists this hook's probes as gone",
            _ => "was unloaded",
        };
        hook.status = HookStatus::Absent;
        hook.waits_for_module = true;
        // Not "taken" any more: its function is chosen afresh when the
        // module is back (plan::resolve_late).
        hook.symbol = None;
        hook.reason = format!("{module} {what}: hook detached (a kprobe dies with its module's load); attached again when {module} loads");
        match self.detached.iter_mut().find(|(f, r, _)| *f == function && *r == reason) {
            Some((_, _, n)) => *n += 1,
            None => self.detached.push((function, reason, 1)),
        }
        Some(Detach { function, module, reason })
    }

    /// Attaches the hooks that wait for a module live in `look`.
    fn attach_waiting(&mut self, look: &Modules, ev: &mut ModuleEvents) {
        if !self.waits_on_live(look) {
            return;
        }
        let t0 = std::time::Instant::now();
        self.reattach_known(look, ev);
        if self.waits_on_live(look) {
            if let Ok(kallsyms) = crate::kernel::kallsyms::Kallsyms::from_proc() {
                self.attach_resolved(&kallsyms, look, ev);
                ev.kallsyms = Some(kallsyms);
            }
        }
        ev.attach_time = t0.elapsed();
    }

    /// Whether a hook waits for a module that `look` found live.
    fn waits_on_live(&self, look: &Modules) -> bool {
        self.plan
            .hooks
            .iter()
            .any(|h| h.waits_for_module && h.module.as_deref().is_some_and(|m| look.live(m)))
    }

    /// Attaches again, by the same function names, the hooks that were
    /// attached on an earlier load of their module. Reading kallsyms to
    /// choose them afresh takes about a second on a distribution kernel
    /// under emulation, and a module loaded again is almost always the same
    /// file. A hook whose function is not in the new load stays waiting
    /// and is resolved from kallsyms by the caller.
    fn reattach_known(&mut self, look: &Modules, ev: &mut ModuleEvents) {
        for i in 0..self.links.len() {
            let h = &self.links[i];
            let idx = h.idx as usize;
            let (None, Some(module), Some(plan)) = (&h.links, h.module.clone(), h.last_plan.clone()) else { continue };
            if !self.plan.hooks[idx].waits_for_module || !look.live(&module) {
                continue;
            }
            let instance = look.instance(&module);
            match attach_kprobe(&mut self._ebpf, h.idx, &h.symbol.clone(), h.with_exit) {
                Ok(l) => {
                    let h = &mut self.links[i];
                    h.links = Some(l);
                    h.instance = instance;
                    h.kprobe_links = kprobe_links(&self._ebpf, h.idx, Mechanism::Kprobe);
                    ev.attached.push(plan.function);
                    self.plan.hooks[idx] = plan;
                }
                Err(_) => {
                    // Half attached (the kretprobe without the kprobe) is
                    // undone by unloading; the kallsyms path loads again.
                    detach(&mut self._ebpf, self.links[i].idx, Mechanism::Kprobe);
                    self.links[i].last_plan = None;
                }
            }
        }
    }

    /// Attaches the waiting hooks `kallsyms` now has a function for.
    fn attach_resolved(&mut self, kallsyms: &crate::kernel::kallsyms::Kallsyms, look: &Modules, ev: &mut ModuleEvents) {
        for api in self.plan.resolve_late(kallsyms) {
            let idx = api as u32;
            let hook = &mut self.plan.hooks[api as usize];
            let (Some(symbol), Some(Mechanism::Kprobe), Some(module)) =
                (hook.symbol.clone(), hook.mechanism, hook.module.clone())
            else {
                // Not in a module after all: it would have been found at start.
                hook.status = HookStatus::Failed("found late but not in a module: restart gupwatch to hook it".into());
                ev.failed.push((hook.function, "not in a module".into()));
                continue;
            };
            let with_exit = has_exit(api);
            // Read before attaching: a reload in between then shows as a
            // changed instance at the next look, and the hook is redone.
            let instance = look.instance(&module);
            match attach_kprobe(&mut self._ebpf, idx, &symbol, with_exit) {
                Ok(l) => {
                    let kprobe_links = kprobe_links(&self._ebpf, idx, Mechanism::Kprobe);
                    let entry = HookLinks {
                        idx,
                        symbol,
                        with_exit,
                        task_kprobe: false,
                        mechanism: Mechanism::Kprobe,
                        links: Some(l),
                        kprobe_links,
                        module: Some(module),
                        instance,
                        last_plan: None,
                    };
                    match self.links.iter_mut().find(|h| h.idx == idx) {
                        Some(h) => *h = entry,
                        None => self.links.push(entry),
                    }
                    hook.reason = format!("{} (module loaded after gupwatch started)", hook.reason);
                    hook.status = HookStatus::Attached;
                    ev.attached.push(hook.function);
                }
                Err(e) => {
                    detach(&mut self._ebpf, idx, Mechanism::Kprobe);
                    let why = format!("kprobe: {}", describe(&e, hook.function));
                    if self.modules.look().live(&module) {
                        hook.status = HookStatus::Failed(why.clone());
                        ev.failed.push((hook.function, why));
                    } else {
                        // Unloaded again while attaching: wait for the next load.
                        hook.status = HookStatus::Absent;
                        hook.waits_for_module = true;
                        hook.symbol = None;
                        hook.reason = format!("{module} was unloaded while its hooks were being attached; attached when it loads");
                    }
                }
            }
        }
    }

    /// Per module hook (attached, or waiting for its module), how many
    /// times it was found dead, by reason; zeros included so the series
    /// exist before the first unload.
    pub fn probe_detached(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out: Vec<(&'static str, &'static str, u64)> = self
            .plan
            .hooks
            .iter()
            .filter(|h| h.module.is_some())
            .flat_map(|h| DETACH_REASONS.iter().map(move |r| (h.function, *r, 0)))
            .collect();
        for (f, r, n) in &self.detached {
            match out.iter_mut().find(|(of, or, _)| of == f && or == r) {
                Some(e) => e.2 = *n,
                None => out.push((f, r, *n)),
            }
        }
        out
    }
}
