//! Builds `gup-ebpf` for the BPF target and hands its path to the crate as
//! `GUPWATCH_EBPF_OBJECT`, which `loader.rs` embeds with `include_bytes!`.
//!
//! The eBPF crate needs nightly, `rust-src` and `bpf-linker`; `cargo xtask
//! setup` installs all three. It is built into `target/bpf` (not OUT_DIR) so
//! the debug, release and static builds share one eBPF build, and a separate
//! target directory keeps the nested cargo from waiting on our own lock.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

#[path = "../gup-ebpf/verified.rs"]
mod verified;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("gup-user sits in the workspace root");
    let ebpf_dir = root.join("gup-ebpf");
    let common_dir = root.join("gup-common");
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!("cargo:rerun-if-changed={}", dir.join("Cargo.toml").display());
    }
    println!("cargo:rerun-if-env-changed=GUPWATCH_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("verified.rs").display());

    // A pre-built object (e.g. from a packager's separate eBPF build).
    if let Some(obj) = env::var_os("GUPWATCH_EBPF_OBJECT") {
        println!("cargo:rustc-env=GUPWATCH_EBPF_OBJECT={}", PathBuf::from(obj).display());
        return;
    }

    let target_dir = root.join("target").join("bpf");
    warn_unverified_toolchain();
    match build_ebpf(&ebpf_dir, &target_dir) {
        Ok(obj) => println!("cargo:rustc-env=GUPWATCH_EBPF_OBJECT={}", obj.display()),
        Err(e) => {
            eprintln!(
                "\nerror: could not build gupwatch's eBPF programs (gup-ebpf): {e}\n\n\
                 They need the nightly toolchain with rust-src and bpf-linker.\n\
                 Run `cargo xtask setup` once; it installs what is missing.\n"
            );
            std::process::exit(1);
        }
    }
}

fn build_ebpf(ebpf_dir: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    // eBPF ISA v3 (Linux 5.12+; gupwatch needs 5.17+ for bpf_loop anyway):
    // the pin ledger's fetch-add and compare-and-swap (ledger.rs) exist only
    // there. rustc passes its target CPU to bpf-linker as `--cpu`.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Ctarget-cpu=v3",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .current_dir(ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's settings would otherwise leak into the nested build
    // (a stable rustc, host RUSTFLAGS such as +crt-static, a wrapper).
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().map_err(|e| format!("cannot run rustup: {e}"))?;
    if !status.success() {
        return Err(format!("`cargo +nightly build` of gup-ebpf failed ({status})"));
    }
    let obj = target_dir.join("bpfel-unknown-none/release/gup-ebpf");
    if !obj.is_file() {
        return Err(format!("the build finished but {} is missing", obj.display()));
    }
    Ok(obj)
}

/// A `cargo:warning` per difference from the toolchain the eBPF build was
/// verified with (gup-ebpf/verified.rs); never a failure.
fn warn_unverified_toolchain() {
    let output = |cmd: &mut Command| {
        cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(vv) = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"])) else { return };
    let linker = output(Command::new("bpf-linker").arg("--version"));
    for d in verified::differences(&vv, linker.as_deref()) {
        println!("cargo:warning=gup-ebpf: {d}");
    }
}

