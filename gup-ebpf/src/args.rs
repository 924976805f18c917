//! Argument access: one [`CallArgs`] interface over the two ways a hooked
//! function's arguments reach a program. fentry/fexit programs read them
//! through the trampoline's helpers ([`Trampoline`]); kprobes and
//! kretprobes from a copy of the registers ([`Regs`]). Which argument is
//! which comes from the probe plan, per API, in [`hook_args`]; where the
//! call returns to (its call site, and the liveness check of its
//! per-thread record) from [`return_address`].

use core::ffi::c_void;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_func_arg, bpf_get_func_arg_cnt, bpf_get_func_ret},
    },
};
use gup_common::{irq::ret_slot, Api, HookArgs, ARG_NONE};

use crate::maps::HOOK_ARGS;

/// Reads the arguments and return value of the hooked function.
pub(crate) trait CallArgs {
    fn arg(&self, idx: u8) -> Option<u64>;
    fn ret(&self) -> Option<i64>;
    /// The stack pointer at the hooked function's entry (within a word): a
    /// call made inside this one enters deeper (`gup_common::irq`).
    fn frame(&self) -> u64;
    /// Whether the call runs under an fentry/fexit trampoline.
    fn trampoline(&self) -> bool;
}

/// fentry/fexit context: the trampoline's argument array. The helpers take
/// a run-time index, which direct context loads (constant offsets only) do not.
pub(crate) struct Trampoline(pub(crate) *mut c_void);

impl CallArgs for Trampoline {
    #[inline(always)]
    fn arg(&self, idx: u8) -> Option<u64> {
        if idx == ARG_NONE {
            return None;
        }
        let mut v = 0u64;
        // SAFETY: the helper bounds-checks `idx` against the function's
        // argument count and writes 8 bytes to `v`.
        let r = unsafe { bpf_get_func_arg(self.0, idx as u32, &mut v) };
        (r == 0).then_some(v)
    }

    #[inline(always)]
    fn ret(&self) -> Option<i64> {
        let mut v = 0u64;
        // SAFETY: fexit programs may call it; writes 8 bytes to `v`.
        let r = unsafe { bpf_get_func_ret(self.0, &mut v) };
        (r == 0).then_some(v as i64)
    }

    /// The trampoline keeps the arguments one word each below its saved
    /// frame pointer (and, with fexit, a return-value word), and its frame
    /// pointer sits two words below the function's entry stack pointer.
    #[inline(always)]
    fn frame(&self) -> u64 {
        // SAFETY: the helper reads the argument count the trampoline keeps
        // next to the arguments.
        let n = unsafe { bpf_get_func_arg_cnt(self.0) }.max(0) as u64;
        // 6.1's verifier refuses arithmetic on the context pointer; read
        // back through the helper, its value is a plain number.
        let ctx = self.0 as u64;
        // SAFETY: reads the local above.
        let base = unsafe { bpf_probe_read_kernel(&ctx as *const u64) }.unwrap_or(0);
        base + 8 * n + 16
    }

    #[inline(always)]
    fn trampoline(&self) -> bool {
        true
    }
}

/// kprobe/kretprobe context: a copy of the x86-64 registers that carry
/// arguments and the return value (`pt_regs` slots r9..rdi, contiguous), so
/// a run-time argument index becomes a bounded stack access, and the stack
/// pointer. Only these are copied: the whole struct would cost 168 bytes of
/// the 512-byte BPF stack.
pub(crate) struct Regs([u64; 7], u64);

impl Regs {
    /// First copied `pt_regs` slot (r9).
    const FIRST_SLOT: usize = 8;
    /// Copied slots of the first six integer arguments (rdi, rsi, rdx, rcx,
    /// r8, r9) in the x86-64 calling convention.
    const ARG_SLOTS: [usize; 6] = [14 - 8, 13 - 8, 12 - 8, 11 - 8, 9 - 8, 8 - 8];
    /// Copied slot of rax, the return value.
    const RET_SLOT: usize = 10 - 8;
    /// `pt_regs` slot of rsp.
    const SP_SLOT: usize = 19;

    #[inline(always)]
    pub(crate) fn read(regs: *mut pt_regs) -> Result<Regs, i64> {
        // SAFETY: `regs` is the probe's context pointer; probe_read copies
        // seven words, then one, from inside it.
        let args = unsafe { bpf_probe_read_kernel((regs as *const u64).add(Self::FIRST_SLOT) as *const [u64; 7]) }?;
        let sp = unsafe { bpf_probe_read_kernel((regs as *const u64).add(Self::SP_SLOT)) }?;
        Ok(Regs(args, sp))
    }
}

impl CallArgs for Regs {
    #[inline(always)]
    fn arg(&self, idx: u8) -> Option<u64> {
        // Constant offsets only: a computed index into this stack array is
        // "math between fp pointer and register" to some verifiers (6.18).
        match idx {
            0 => Some(self.0[Self::ARG_SLOTS[0]]),
            1 => Some(self.0[Self::ARG_SLOTS[1]]),
            2 => Some(self.0[Self::ARG_SLOTS[2]]),
            3 => Some(self.0[Self::ARG_SLOTS[3]]),
            4 => Some(self.0[Self::ARG_SLOTS[4]]),
            5 => Some(self.0[Self::ARG_SLOTS[5]]),
            _ => None,
        }
    }

    #[inline(always)]
    fn ret(&self) -> Option<i64> {
        self.0.get(Self::RET_SLOT).map(|v| *v as i64)
    }

    #[inline(always)]
    fn frame(&self) -> u64 {
        self.1
    }

    #[inline(always)]
    fn trampoline(&self) -> bool {
        false
    }
}

#[inline(always)]
pub(crate) fn hook_args(api: Api) -> HookArgs {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold the zero initialiser the loader replaces.
    unsafe { core::ptr::read_volatile(&HOOK_ARGS[api as usize]) }
}

/// The return address of the call entered at `frame` ([`gup_common::Inflight::ret`]).
#[inline(always)]
pub(crate) fn return_address(frame: u64, trampoline: bool) -> u64 {
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel(ret_slot(frame, trampoline) as *const u64) }.unwrap_or(0)
}
