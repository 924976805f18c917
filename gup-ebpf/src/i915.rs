//! i915 userptr objects: the hooked i915 functions set which object this
//! thread works on (`I915_CUR`, in `on_entry`), and the pins and unpins made
//! inside them are credited to it in `I915_OBJECTS`
//! (the state machine is `gup_common::i915`).

use aya_ebpf::helpers::bpf_get_current_comm;
use gup_common::{
    diag_log::WHY_MAP_FULL,
    i915::{credited_within, leave_clears, I915Event, I915EventKind, I915Object},
    Api, Diag,
};

use crate::{
    counters::{add, now, stats},
    diag::{diag_add, note},
    maps::{I915_CREATED, I915_CUR, I915_OBJECTS},
};

/// Credits an event to the i915 object this thread is working on, if the
/// hook it is inside owns events of this kind (`credited_within`).
#[inline(never)]
pub(crate) fn i915_event(tid: u64, kind: I915EventKind, ev: I915Event) {
    let Some(cur) = I915_CUR.get_ptr(&tid) else { return };
    // SAFETY: this thread's own live entry, copied.
    let [api, obj] = unsafe { core::ptr::read_volatile(cur) };
    if !credited_within(api, kind) || obj == 0 {
        return;
    }
    if I915_OBJECTS.get_ptr_mut(&obj).is_none() {
        let tgid = (tid >> 32) as u32;
        // SAFETY: the value is only read.
        let created = unsafe { I915_CREATED.get(&tgid) }.copied().unwrap_or(0);
        let mut fresh = I915Object::EMPTY;
        fresh.apply(I915Event::Created {
            tgid,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ns: if created != 0 { created } else { now() },
        });
        if let Err(e) = I915_OBJECTS.insert(&obj, &fresh, 1) {
            if I915_OBJECTS.get_ptr_mut(&obj).is_none() {
                diag_add(Diag::I915ObjectsFull, 1);
                note(Diag::I915ObjectsFull, WHY_MAP_FULL, api as u32, tgid, 1, e.into(), obj);
                return;
            }
        }
    }
    if let Some(o) = I915_OBJECTS.get_ptr_mut(&obj) {
        // SAFETY: a live map value.
        unsafe { (*o).apply(ev) };
    }
}

/// Leaving an i915 userptr function.
#[inline(never)]
pub(crate) fn i915_exit(tid: u64, api: Api, mut ret: i64) {
    if ret >= 1 << 31 && ret < 1 << 32 {
        ret = ret as i32 as i64;
    }
    match api {
        Api::I915UserptrIoctl if ret == 0 => {
            let _ = I915_CREATED.insert(&((tid >> 32) as u32), &now(), 0);
        }
        Api::I915UserptrSubmitInit => i915_event(tid, I915EventKind::Attempt, I915Event::Attempt { ret }),
        _ => {}
    }
    // Only these two return an int: the release hooks' functions are void
    // (or, as a fallback, not the call whose result means anything), and a
    // leftover kernel pointer in the return register looks negative.
    if ret < 0 && matches!(api, Api::I915UserptrIoctl | Api::I915UserptrSubmitInit) {
        if let Some(s) = stats(api) {
            add(&mut s.errors, 1);
        }
    }
    // A nested call on the same object returns into the outer one, whose
    // entry stays.
    // SAFETY: the value is copied out at once.
    let cur = unsafe { I915_CUR.get(&tid) }.map(|c| c[0]);
    if cur.is_some_and(|c| leave_clears(c, api)) {
        let _ = I915_CUR.remove(&tid);
    }
}
