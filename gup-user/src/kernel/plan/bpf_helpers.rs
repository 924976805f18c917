//! The BPF helpers gupwatch's programs call that older kernels lack. The
//! verifier of such a kernel refuses every program that calls one, with
//! errors that do not name it (5.10: "number of funcs in func_info doesn't
//! match number of subprogs" for a `bpf_loop` callback), so the plan finds
//! out first and the loader refuses to try: the daemon then serves the
//! reduced mode and `gupwatch doctor` says what is missing.

use crate::kernel::btf::KernelBtf;
use crate::kernel::kallsyms::Kallsyms;

/// A helper the programs need: its `enum bpf_func_id` name (BTF), the
/// function that implements it (kallsyms, for kernels without BTF), its
/// name in messages and the release that brought it.
struct Required {
    enumerator: &'static str,
    symbol: &'static str,
    name: &'static str,
    since: &'static str,
}

const REQUIRED: [Required; 2] = [
    // The ledger walks a call's pages with it.
    Required { enumerator: "BPF_FUNC_loop", symbol: "bpf_loop", name: "bpf_loop", since: "5.17" },
    // fentry/fexit programs read arguments by position with it.
    Required { enumerator: "BPF_FUNC_get_func_arg", symbol: "get_func_arg", name: "bpf_get_func_arg", since: "5.17" },
];

/// The helpers this kernel lacks, as `name (Linux since+)`; empty when it
/// has them all. A helper counts as present when either the kernel's BTF
/// lists it or kallsyms has its function.
pub fn missing(btf: Option<&KernelBtf>, kallsyms: &Kallsyms) -> Vec<String> {
    REQUIRED
        .iter()
        .filter(|r| btf.and_then(|b| b.enumerator(r.enumerator)).is_none() && kallsyms.get(r.symbol).is_none())
        .map(|r| format!("{} (Linux {}+)", r.name, r.since))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_present_by_btf_or_by_its_function() {
        let old = Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
        assert_eq!(missing(None, &old), ["bpf_loop (Linux 5.17+)", "bpf_get_func_arg (Linux 5.17+)"]);
        let new = Kallsyms::parse("ffffffff81000000 T bpf_loop\nffffffff81000100 t get_func_arg\n");
        assert!(missing(None, &new).is_empty());
        let half = Kallsyms::parse("ffffffff81000000 T bpf_loop\n");
        assert_eq!(missing(None, &half), ["bpf_get_func_arg (Linux 5.17+)"]);
    }
}
