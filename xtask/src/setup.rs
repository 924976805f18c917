//! `cargo xtask setup`: everything a fresh machine needs to build gupwatch
//! and run it in VMs. Idempotent: each step checks first and skips what is
//! already there, so a rerun does no network access.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::vm::kernels::{self, Flavour};
use crate::say;
use crate::util;

/// Debian packages the VM tests and the demo use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "e2fsprogs",
    "xz-utils",
    "zstd",
    "prometheus",
    "tmux",
    // `systemd-analyze verify` of the unit (packaging/verify-unit.sh).
    "systemd",
    // Debian's checks of the package (`cargo xtask dist`).
    "lintian",
    // The web-config tests scrape over TLS with curl as a second client.
    "curl",
    // Signs the archive's package lists that the kernel fetch reads.
    "debian-archive-keyring",
];

/// Options of `cargo xtask setup`.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Re-resolve the kernel versions from the archive.
    pub refresh: bool,
    /// Skip the kernel matrix.
    pub no_kernels: bool,
}

/// Runs every set-up step.
pub fn run(o: &SetupOptions) -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_debian_packages()?;
    for tool in CARGO_TOOLS {
        ensure_cargo_tool(tool)?;
    }
    if !o.no_kernels {
        let cache = util::cache_dir()?;
        for a in kernels::MATRIX {
            kernels::ensure(&cache, a, Flavour::Cloud, o.refresh)
                .with_context(|| format!("fetching kernel {} (Debian {})", a.name, a.suite))?;
        }
        // The canary: experimental's newest kernel when it is newer than
        // sid's (crate::canary); its own line says which, or why none.
        crate::canary::ensure(&cache, o.refresh).context("resolving the canary kernel (Debian experimental)")?;
    }
    say!("setup", "done");
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let list = || {
        util::raw_output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))
    };
    let mut out = list().context("running rustup (install Rust with rustup first)")?;
    if !out.status.success() {
        say!(
            "setup",
            "nightly toolchain missing: rustup toolchain install nightly --profile minimal"
        );
        util::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"])).context(
            "the nightly Rust toolchain is needed to build the eBPF programs, and installing it failed; \
             install it by hand (`rustup toolchain install nightly`) where toolchains can be downloaded",
        )?;
        out = list()?;
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        say!("setup", "nightly rust-src: present");
        return Ok(());
    }
    say!("setup", "rustup component add rust-src --toolchain nightly");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to the nightly toolchain (needed for -Z build-std=core)")
}

/// A cargo subcommand installed from crates.io.
pub struct CargoTool {
    /// The crate (and `cargo <sub>` name, without the `cargo-` prefix).
    pub krate: &'static str,
    /// The subcommand.
    pub sub: &'static str,
    /// What it is for, for the progress line.
    pub why: &'static str,
}

/// Cargo subcommands the test suite and `dist` use.
pub const CARGO_TOOLS: &[CargoTool] = &[
    CargoTool {
        krate: "cargo-fuzz",
        sub: "fuzz",
        why: "the fuzz targets (fuzz/) that `cargo xtask test` runs",
    },
    CargoTool {
        krate: "cargo-deb",
        sub: "deb",
        why: "the Debian package of `cargo xtask dist`",
    },
];

fn tool_version(t: &CargoTool) -> Option<String> {
    // Cargo finds `cargo-<sub>` in ~/.cargo/bin whatever the toolchain.
    let out = Command::new(util::cargo()).args([t.sub, "--version"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs a cargo subcommand unless it runs already.
pub fn ensure_cargo_tool(t: &CargoTool) -> Result<()> {
    if let Some(v) = tool_version(t) {
        say!("setup", "{}: {v}", t.krate);
        return Ok(());
    }
    say!("setup", "cargo install {} --locked (for {}); takes a few minutes", t.krate, t.why);
    util::run(Command::new(util::cargo()).args(["install", t.krate, "--locked"]))
        .with_context(|| format!("installing {} (needs crates.io)", t.krate))?;
    match tool_version(t) {
        Some(v) => {
            say!("setup", "{}: {v}", t.krate);
            Ok(())
        }
        None => bail!("{} was installed but `cargo {} --version` does not run; is ~/.cargo/bin on PATH?", t.krate, t.sub),
    }
}

fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"))
}

fn bpf_linker_version() -> Option<String> {
    let mut candidates = vec![PathBuf::from("bpf-linker")];
    if let Some(d) = cargo_bin_dir() {
        candidates.push(d.join("bpf-linker"));
    }
    candidates.into_iter().find_map(|c| {
        let out = Command::new(&c).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

/// The LLVM major version in `rustc -vV` output (`LLVM version: 22.1.4`).
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// The toolchain's own libLLVM among a sysroot's `lib/` file names
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`, older: `libLLVM-19-rust-*.so`).
pub fn pick_libllvm(names: &[String], major: u32) -> Option<String> {
    let new = format!("libLLVM.so.{major}.");
    let old = format!("libLLVM-{major}");
    let mut hits: Vec<&String> = names
        .iter()
        .filter(|n| (n.starts_with(&new) || n.starts_with(&old)) && n.contains("-rust-"))
        .collect();
    hits.sort();
    hits.last().map(|s| s.to_string())
}

/// The record of the toolchain the eBPF build was verified with, shared
/// with gup-user/build.rs.
#[path = "../../gup-ebpf/verified.rs"]
pub mod verified;

/// Says (a warning, never a failure: no toolchain can be downloaded on
/// some machines) where this machine's nightly and bpf-linker differ from
/// the verified ones.
fn warn_unverified_toolchain() {
    let Ok(vv) = util::output(Command::new("rustc").args(["+nightly", "-vV"])) else { return };
    let diffs = verified::differences(&vv, bpf_linker_version().as_deref());
    if diffs.is_empty() {
        say!("setup", "toolchain: the verified one ({}, bpf-linker {})", verified::NIGHTLY, verified::BPF_LINKER);
    }
    for d in diffs {
        say!("setup", "WARNING: {d}");
    }
}

/// Whether `bpf-linker --version` names the pinned release.
fn is_pinned(version: &str) -> bool {
    version.trim().trim_start_matches("bpf-linker").trim() == verified::BPF_LINKER
}

fn ensure_bpf_linker() -> Result<()> {
    // The prefix is refreshed first: an installed bpf-linker that stopped
    // running because its libLLVM link is missing comes back without a rebuild.
    let prefix = llvm_prefix()?;
    let found = bpf_linker_version();
    if let Some(v) = found.as_deref().filter(|v| is_pinned(v)) {
        say!("setup", "bpf-linker: {v}");
        warn_unverified_toolchain();
        return Ok(());
    }
    let major = prefix.major;
    let installed = cargo_bin_dir().is_some_and(|d| d.join("bpf-linker").is_file());
    say!(
        "setup",
        "building bpf-linker {} against the nightly toolchain's LLVM {major} (LLVM_PREFIX={}){}; takes a few minutes",
        verified::BPF_LINKER,
        prefix.dir.display(),
        found.as_deref().map(|v| format!(", replacing {v}")).unwrap_or_default()
    );
    let mut cmd = Command::new(util::cargo());
    // Pinned: a new bpf-linker release can change the object it emits.
    cmd.args(["install", "bpf-linker", "--version", verified::BPF_LINKER, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix.dir);
    if installed {
        // There is one, but another release, or one that does not run
        // (built against another LLVM).
        cmd.arg("--force");
    }
    util::run(&mut cmd).context("installing bpf-linker (needs crates.io and a C++ compiler)")?;
    match bpf_linker_version() {
        Some(v) => {
            say!("setup", "bpf-linker: {v}");
            warn_unverified_toolchain();
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but does not run; is {} on PATH?",
            cargo_bin_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "~/.cargo/bin".into())
        ),
    }
}

struct LlvmPrefix {
    dir: PathBuf,
    major: u32,
}

/// Makes `$CACHE/llvm/lib` hold links to the nightly toolchain's libLLVM:
/// `libLLVM.so` (what llvm-sys links with) and the library's own file names
/// (what the dynamic loader looks up through bpf-linker's rpath).
fn llvm_prefix() -> Result<LlvmPrefix> {
    let vv = util::output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("asking the nightly rustc for its LLVM version")?;
    let major = llvm_major(&vv)
        .ok_or_else(|| anyhow!("no `LLVM version:` line in `rustc +nightly -vV`:\n{vv}"))?;
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let names: Vec<String> = fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let lib = pick_libllvm(&names, major).ok_or_else(|| {
        anyhow!(
            "no libLLVM {major} in {} (the nightly toolchain should ship one; try `rustup component add llvm-tools --toolchain nightly`)",
            libdir.display()
        )
    })?;
    // bpf-linker keeps an rpath to this directory, so it lives in the
    // persistent cache, not in a temporary directory.
    let dir = util::cache_dir()?.join("llvm");
    let lib_dir = dir.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let mut links: Vec<(String, String)> = vec![("libLLVM.so".into(), lib.clone())];
    for n in names
        .iter()
        .filter(|n| n.starts_with("libLLVM") && n.contains("-rust-"))
    {
        links.push((n.clone(), n.clone()));
    }
    for (link_name, target_name) in links {
        let link = lib_dir.join(&link_name);
        let target = libdir.join(&target_name);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
        say!("setup", "linked {} -> {}", link.display(), target.display());
    }
    Ok(LlvmPrefix { dir, major })
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        say!(
            "setup",
            "Debian packages: all present ({})",
            DEBIAN_PACKAGES.join(" ")
        );
        return Ok(());
    }
    let hint = || {
        format!(
            "install them by hand as root: apt-get install {}",
            missing.join(" ")
        )
    };
    say!("setup", "apt-get update (missing: {})", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-q"])).with_context(hint)?;
    say!("setup", "apt-get install -y {}", missing.join(" "));
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(hint)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn libllvm_choice() {
        let names: Vec<String> = [
            "librustc_driver-abc.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "libstd-x.so",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            pick_libllvm(&names, 22).as_deref(),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(pick_libllvm(&names, 21), None);
        let old = vec!["libLLVM-19-rust-1.84.0-nightly.so".to_string()];
        assert_eq!(
            pick_libllvm(&old, 19).as_deref(),
            Some("libLLVM-19-rust-1.84.0-nightly.so")
        );
    }

    #[test]
    fn toolchain_differences_are_named() {
        let vv = |rustc: &str, llvm: &str| format!("{rustc}\nbinary: rustc\nLLVM version: {llvm}\n");
        let same = vv(verified::NIGHTLY, verified::LLVM);
        let linker = format!("bpf-linker {}", verified::BPF_LINKER);
        assert_eq!(verified::differences(&same, Some(&linker)), Vec::<String>::new());
        assert!(is_pinned(&linker) && !is_pinned("bpf-linker 0.9.15"));
        let d = verified::differences(&vv("rustc 1.99.0-nightly (0123456 2026-11-30)", "23.0.0"), Some("bpf-linker 0.9.15\n"));
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("1.99.0-nightly") && d[0].contains(verified::NIGHTLY), "{}", d[0]);
        assert!(d[1].contains("23.0.0"), "{}", d[1]);
        assert!(d[2].contains("0.9.15") && d[2].contains("--version"), "{}", d[2]);
    }
}
