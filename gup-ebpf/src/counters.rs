//! The aggregates every program adds to: atomic adds, the per-CPU
//! `API_STATS` slot of an API, call latency, and the `ATTRIB` rows (who
//! called what from where, with the kernel stack of a key's first call).

use core::{
    ffi::c_void,
    intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_stackid},
    },
    maps::StackTrace,
    EbpfContext,
};
use gup_common::{
    diag_log::{WHY_MAP_FULL, WHY_NONE},
    latency_bucket, Api, ApiStats, AttribKey, AttribValue, Diag,
};

use crate::{
    diag::{diag, note},
    maps::{API_STATS, ATTRIB, STACKS},
};

#[inline(always)]
pub(crate) fn add(counter: &mut u64, v: u64) {
    // SAFETY: map values are 8-aligned; fentry programs can be preempted on
    // the same CPU, so per-CPU slots still need atomic adds.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[inline(always)]
pub(crate) fn add32(counter: &mut u32, v: u32) {
    // SAFETY: map values are 4-aligned; as `add`, for several CPUs at once.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, v) };
}

/// Adds `v` and returns the value before: a BPF fetch-add (ISA v3, Linux
/// 5.12+; gup-user/build.rs builds for `-C target-cpu=v3`). Fully ordered,
/// as the kernel's fetch atomics are.
#[inline(always)]
pub(crate) fn fetch_add32(counter: &mut u32, v: u32) -> u32 {
    // SAFETY: map values are 4-aligned.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(counter, v) }
}

/// Replaces `old` with `new` if the word holds `old`; true if it did. A BPF
/// cmpxchg (ISA v3, as [`fetch_add32`]).
#[inline(always)]
pub(crate) fn cas32(word: &mut u32, old: u32, new: u32) -> bool {
    // SAFETY: map values are 4-aligned.
    unsafe { atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, old, new) }.1
}

#[inline(always)]
pub(crate) fn stats(api: Api) -> Option<&'static mut ApiStats> {
    // SAFETY: per-CPU array values live as long as the map.
    API_STATS.get_ptr_mut(api as u32).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(never)]
pub(crate) fn record_latency(s: &mut ApiStats, start_ns: u64) {
    // SAFETY: no preconditions.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
    add(&mut s.latency_ns_sum, ns);
    if let Some(slot) = s.latency_log2.get_mut(latency_bucket(ns)) {
        add(slot, 1);
    }
}

pub(crate) const ZERO_ATTRIB: AttribValue = AttribValue::ZERO;

/// Adds one call to the attribution map and returns the entry's stack id.
/// The kernel stack is taken only when the key is new: the site (a return
/// address) keeps keys apart, the first stack names the caller.
#[inline(never)]
pub(crate) fn attribute<C: EbpfContext>(ctx: &C, key: &AttribKey, delta: &AttribValue) -> i64 {
    let mut v = attrib_entry(key);
    if v.is_none() {
        let fresh = AttribValue {
            // SAFETY: no preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            stack_id: stack_id(ctx, key.api),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ..ZERO_ATTRIB
        };
        // BPF_NOEXIST: another CPU may have inserted the key meanwhile.
        if let Err(e) = ATTRIB.insert(key, &fresh, 1) {
            v = attrib_entry(key);
            if v.is_none() {
                diag(Diag::AttribFull);
                note(Diag::AttribFull, WHY_MAP_FULL, key.api, key.tgid, delta.pages, e.into(), key.site);
                return -1;
            }
        } else {
            v = attrib_entry(key);
        }
    }
    let Some(v) = v else {
        diag(Diag::AttribFull);
        return -1;
    };
    add(&mut v.calls, delta.calls);
    add(&mut v.pages, delta.pages);
    add(&mut v.errors, delta.errors);
    add(&mut v.fast_pages, delta.fast_pages);
    add(&mut v.slow_pages, delta.slow_pages);
    add(&mut v.longterm_pages, delta.longterm_pages);
    v.stack_id
}

#[inline(always)]
fn attrib_entry(key: &AttribKey) -> Option<&'static mut AttribValue> {
    // SAFETY: hash map values live until deleted; gupwatch never deletes
    // attribution entries while the programs run.
    ATTRIB.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn stack_id<C: EbpfContext>(ctx: &C, api: u32) -> i64 {
    // SAFETY: the context is the program's own; flags 0 = kernel stack.
    let id = unsafe { bpf_get_stackid(ctx.as_ptr(), &STACKS as *const StackTrace as *mut c_void, 0) };
    if id < 0 {
        diag(Diag::StackLost);
        note(Diag::StackLost, WHY_NONE, api, current_tgid(), 1, id, 0);
        return -1;
    }
    id
}
