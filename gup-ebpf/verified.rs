//! The toolchain gupwatch's eBPF programs were last built with and verified
//! on real kernels (`cargo xtask test`: 6.1, 6.12, 7.2), and the check that
//! says when this machine's differs. Not part of the eBPF crate: it is
//! compiled into `gup-user/build.rs` and `cargo xtask setup` (both include
//! it with `#[path]`), so there is one record and one comparison.
//!
//! A different nightly or bpf-linker is a warning, not a failure: no
//! toolchain can be downloaded on some build machines, and a `rust-toolchain.toml`
//! naming an absent nightly would stop a fresh one from building at all.
//! When an eBPF build or the kernel's verifier fails, this is the first
//! thing to compare. Update the record after `cargo xtask test` passes with
//! a new toolchain.

/// `rustc +nightly -V` of the verified build.
pub const NIGHTLY: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)";
/// Its LLVM (bpf-linker is built against the nightly's own libLLVM).
pub const LLVM: &str = "22.1.4";
/// The bpf-linker release `cargo xtask setup` installs.
pub const BPF_LINKER: &str = "0.13.0";

/// What differs from the record, one sentence each: `rustc_vv` is
/// `rustc +nightly -vV`, `bpf_linker` is `bpf-linker --version` (`None`
/// when it does not run).
pub fn differences(rustc_vv: &str, bpf_linker: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let rustc = rustc_vv.lines().next().unwrap_or("").trim();
    if rustc != NIGHTLY {
        out.push(format!(
            "the nightly here is `{rustc}`, but the eBPF build was verified with `{NIGHTLY}`; \
             it usually builds and loads the same, but if the eBPF build or the kernel's verifier fails, \
             try that nightly (where toolchains can be downloaded)"
        ));
    }
    let llvm = rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version:")).map(str::trim);
    if llvm.is_some_and(|v| v != LLVM) {
        out.push(format!(
            "the nightly's LLVM is {}, the verified build's {LLVM}",
            llvm.unwrap_or("unknown")
        ));
    }
    if let Some(v) = bpf_linker {
        let v = v.trim().trim_start_matches("bpf-linker").trim();
        if v != BPF_LINKER {
            out.push(format!(
                "bpf-linker here is {v}, the verified build used {BPF_LINKER} \
                 (`cargo xtask setup` installs it: cargo install bpf-linker --version {BPF_LINKER})"
            ));
        }
    }
    out
}
