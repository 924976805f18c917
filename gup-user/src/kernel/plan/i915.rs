//! The i915 roles: which function of the running i915 plays each logical
//! hook of its userptr object lifecycle (the names moved between kernels).

use gup_common::Api;
use serde::Serialize;

use crate::kernel::kallsyms::Kallsyms;

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
