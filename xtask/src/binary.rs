//! Building the static `gupwatch` binary that goes into the guests.
//!
//! The guests have no libc of their own (a busybox initramfs), so the binary
//! is linked statically.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::say;
use crate::util;

/// The target triple named explicitly so that RUSTFLAGS reach only the
/// target artefacts, not build scripts and proc macros (which must stay
/// dynamic to be loadable by the compiler).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where [`build_static_gupwatch`] leaves the binary.
pub fn static_gupwatch_path() -> PathBuf {
    util::target_dir()
        .join(TARGET)
        .join("release")
        .join("gupwatch")
}

/// The static binary for a guest command: with `--no-build` the one a
/// previous build left (it may not exist; callers that need it say so),
/// else built now.
pub fn static_gupwatch(no_build: bool) -> Result<PathBuf> {
    if no_build {
        Ok(static_gupwatch_path())
    } else {
        build_static_gupwatch()
    }
}

/// `cargo build --release -p gup-user --bin gupwatch` as a static binary;
/// returns its path.
pub fn build_static_gupwatch() -> Result<PathBuf> {
    say!(
        "build",
        "building static gupwatch (release, {TARGET}, +crt-static)"
    );
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(' ');
    }
    rustflags.push_str("-C target-feature=+crt-static");
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(util::workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "gup-user",
            "--bin",
            "gupwatch",
            "--target",
            TARGET,
        ])
        // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", rustflags)
        // Our stdout belongs to the guest command (`cargo xtask vm`).
        .stdout(std::io::stderr());
    util::run(&mut cmd).context(
        "building gupwatch failed (see the compiler output above; `cargo xtask setup` installs the nightly \
         rust-src and bpf-linker that the eBPF part needs)",
    )?;
    let path = static_gupwatch_path();
    if !path.is_file() {
        anyhow::bail!(
            "cargo reported success but {} does not exist",
            path.display()
        );
    }
    say!("build", "static gupwatch: {}", path.display());
    Ok(path)
}
