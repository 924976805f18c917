//! `cargo xtask dist`: what a host without a Rust toolchain installs.
//!
//! - `target/dist/gupwatch-<version>-x86_64-linux.tar.gz`: the static
//!   binary, man pages, shell completions, the systemd unit, the example
//!   configuration and the README;
//! - `target/dist/gupwatch_<version>-1_amd64.deb`, built by cargo-deb from
//!   `[package.metadata.deb]` in `gup-user/Cargo.toml`, with the same files
//!   in their Debian places.
//!
//! Both are checked after they are built ([`verify`]): the binary has no
//! ELF interpreter (it runs on any x86_64 Linux, whatever its libc), the
//! package holds every file, and the binary unpacked from it runs.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::binary;
use crate::say;
use crate::setup;
use crate::util;

/// Files every package must install (paths inside the .deb, without `./`).
pub const DEB_FILES: &[&str] = &[
    "usr/bin/gupwatch",
    "usr/lib/systemd/system/gupwatch.service",
    "etc/gupwatch/gupwatch.toml",
    "usr/share/man/man1/gupwatch.1.gz",
    "usr/share/man/man1/gupwatch-run.1.gz",
    "usr/share/bash-completion/completions/gupwatch",
    "usr/share/zsh/vendor-completions/_gupwatch",
    "usr/share/fish/vendor_completions.d/gupwatch.fish",
    "usr/share/doc/gupwatch/README.md",
    "usr/share/doc/gupwatch/changelog.Debian.gz",
    "usr/share/lintian/overrides/gupwatch",
];

/// Maintainer scripts the package must carry: cargo-deb's systemd snippets
/// (daemon-reload, restart on upgrade, stop and clean up on removal).
pub const DEB_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// What `dist` produced.
#[derive(Debug, Clone)]
pub struct Dist {
    /// The static binary.
    pub binary: PathBuf,
    /// The tarball.
    pub tarball: PathBuf,
    /// The Debian package.
    pub deb: PathBuf,
}

/// Where the generated files (`man/`, `completions/`) go: always
/// `<workspace>/target/dist/gen`, whatever CARGO_TARGET_DIR says, because
/// the cargo-deb asset list in gup-user/Cargo.toml names it relative to the
/// package (cargo-deb maps only `target/release/` to the real target
/// directory).
pub fn gen_dir() -> PathBuf {
    util::workspace_root().join("target").join("dist").join("gen")
}

/// Builds the static binary, the tarball and the package.
pub fn run() -> Result<Dist> {
    let bin = binary::build_static_gupwatch()?;
    if has_interpreter(&fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?)? {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): it is not self-contained; \
             was it built without +crt-static?",
            bin.display()
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    let dist = util::target_dir().join("dist");
    let gen = gen_dir();
    let stage = dist.join("stage");
    for d in [&gen, &stage] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("cleaning {}", d.display()))?;
        }
    }
    fs::create_dir_all(gen.join("completions"))?;
    say!("dist", "man pages and completions from the CLI definition");
    util::run(
        Command::new(&bin)
            .args(["generate", "man", "--dir"])
            .arg(gen.join("man")),
    )?;
    for (shell, file) in [
        ("bash", "gupwatch.bash"),
        ("zsh", "_gupwatch"),
        ("fish", "gupwatch.fish"),
    ] {
        let out = util::output(Command::new(&bin).args(["generate", "completions", shell]))?;
        fs::write(gen.join("completions").join(file), out)?;
    }
    let name = format!("gupwatch-{version}-x86_64-linux");
    let root = stage.join(&name);
    fs::create_dir_all(&root)?;
    for sub in ["man", "completions"] {
        copy_dir(&gen.join(sub), &root.join(sub))?;
    }
    let ws = util::workspace_root();
    for (from, to) in [
        (bin.clone(), root.join("gupwatch")),
        (ws.join("packaging/gupwatch.service"), root.join("gupwatch.service")),
        (ws.join("packaging/gupwatch.toml"), root.join("gupwatch.toml")),
        (ws.join("README.md"), root.join("README.md")),
    ] {
        fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    util::run(
        Command::new("tar")
            .arg("-C")
            .arg(&stage)
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&tarball)
            .arg(&name),
    )?;
    say!("dist", "tarball: {}", tarball.display());

    setup::ensure_cargo_tool(&setup::CARGO_TOOLS[1])?;
    say!("dist", "Debian package (cargo deb)");
    // --no-build: cargo-deb would build a dynamically linked binary; the
    // static one above is what goes in.
    let out = util::output(
        Command::new(util::cargo())
            .current_dir(&ws)
            .args(["deb", "-p", "gup-user", "--no-build", "--target", binary::TARGET, "--output"])
            .arg(&dist),
    )?;
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not print the path of the package it built")?;
    say!("dist", "package: {}", deb.display());
    let d = Dist { binary: bin, tarball, deb };
    verify(&d)?;
    Ok(d)
}

/// Checks what [`run`] built: the package lists every file of
/// [`DEB_FILES`], the tarball holds the binary, `dpkg -i` installs the
/// package (into a private root), and the installed binary runs
/// (`--version`) and is static.
pub fn verify(d: &Dist) -> Result<()> {
    let listing = util::output(Command::new("dpkg-deb").arg("--contents").arg(&d.deb))?;
    let listed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./"))
        .collect();
    let missing: Vec<&str> = DEB_FILES.iter().copied().filter(|f| !listed.contains(f)).collect();
    if !missing.is_empty() {
        bail!("{} lacks {}", d.deb.display(), missing.join(", "));
    }
    let tar_list = util::output(Command::new("tar").arg("-tzf").arg(&d.tarball))?;
    if !tar_list.lines().any(|l| l.ends_with("/gupwatch")) {
        bail!("{} has no gupwatch binary", d.tarball.display());
    }
    scripts_present(d)?;
    lintian(d)?;
    // A real `dpkg -i`, into a private root with an empty package database:
    // it reads the control file as a host would (an empty or malformed
    // field fails here), installs every file and runs the maintainer
    // scripts, chrooted into that root with busybox as its /bin/sh (they
    // find no systemd there and skip what would touch it).
    let tmp = util::target_dir().join("dist").join("root");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let db = tmp.join("var/lib/dpkg");
    for sub in ["info", "updates", "triggers"] {
        fs::create_dir_all(db.join(sub))?;
    }
    fs::write(db.join("status"), "")?;
    fs::create_dir_all(tmp.join("bin"))?;
    fs::create_dir_all(tmp.join("dev"))?;
    fs::copy("/bin/busybox", tmp.join("bin/sh")).context("copying /bin/busybox (busybox-static, from cargo xtask setup) as the private root's /bin/sh")?;
    util::output(
        Command::new("dpkg")
            .arg(format!("--root={}", tmp.display()))
            .args(["--force-not-root", "--log=/dev/null", "-i"])
            .arg(&d.deb),
    )
    .context("dpkg -i of the package into a private root")?;
    let status = util::output(Command::new("dpkg").arg(format!("--root={}", tmp.display())).args(["-s", "gupwatch"]))?;
    if !status.contains("Status: install ok installed") {
        bail!("dpkg does not report gupwatch installed:\n{status}");
    }
    let bin = tmp.join("usr/bin/gupwatch");
    let v = util::output(Command::new(&bin).arg("--version"))?;
    if !v.starts_with("gupwatch ") {
        bail!("{} --version printed {v:?}", bin.display());
    }
    if has_interpreter(&fs::read(&bin)?)? {
        bail!("the packaged {} is not static", bin.display());
    }
    // And removal: the scripts run again and the files go.
    util::output(
        Command::new("dpkg")
            .arg(format!("--root={}", tmp.display()))
            .args(["--force-not-root", "--log=/dev/null", "-r", "gupwatch"]),
    )
    .context("dpkg -r of the package from the private root")?;
    if bin.exists() {
        bail!("{} is still there after dpkg -r", bin.display());
    }
    let control = util::output(Command::new("dpkg-deb").args(["--field"]).arg(&d.deb).arg("Depends"))?;
    if !control.trim().is_empty() {
        bail!("the package depends on {:?}; a static binary should need nothing", control.trim());
    }
    say!(
        "dist",
        "verified: {} files in place, dpkg -i into {} works, {} runs, no dependencies",
        DEB_FILES.len(),
        tmp.display(),
        v.trim()
    );
    Ok(())
}

/// The package's maintainer scripts include every one of [`DEB_SCRIPTS`].
fn scripts_present(d: &Dist) -> Result<()> {
    let ctl = util::target_dir().join("dist").join("control");
    if ctl.exists() {
        fs::remove_dir_all(&ctl)?;
    }
    util::output(Command::new("dpkg-deb").arg("--control").arg(&d.deb).arg(&ctl))?;
    let missing: Vec<&str> = DEB_SCRIPTS.iter().copied().filter(|s| !ctl.join(s).is_file()).collect();
    if !missing.is_empty() {
        bail!("{} has no {} maintainer script(s): cargo-deb's systemd-units did not take", d.deb.display(), missing.join(", "));
    }
    Ok(())
}

/// Debian's own judge of a package: no error (warnings are printed).
/// `packaging/debian/gupwatch.lintian-overrides` says why its one
/// override is not an error.
fn lintian(d: &Dist) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&d.deb)
        .output()
        .context("running lintian (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let tags: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    if !out.status.success() {
        bail!("lintian finds errors in {}:\n{}", d.deb.display(), tags.join("\n"));
    }
    say!("dist", "lintian: no errors; {} warning(s){}", tags.len(), if tags.is_empty() { String::new() } else { format!(": {}", tags.join("; ")) });
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        fs::copy(e.path(), to.join(e.file_name()))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    Ok(())
}

/// Whether an ELF file names a dynamic loader (PT_INTERP): a static or
/// static-pie binary has none.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        bail!("truncated ELF header");
    };
    for i in 0..phnum {
        let off = (phoff as usize).saturating_add(i.saturating_mul(phentsize));
        let Some(t) = elf.get(off..off + 4) else {
            bail!("program header {i} lies outside the file");
        };
        if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The package's path for messages (`dpkg -i <path>`).
pub fn describe(d: &Dist) -> String {
    format!(
        "binary:  {}\ntarball: {}\npackage: {}\ninstall: sudo dpkg -i {}   (or unpack the tarball and copy gupwatch to /usr/local/bin)",
        d.binary.display(),
        d.tarball.display(),
        d.deb.display(),
        d.deb.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_is_found_only_in_dynamic_binaries() {
        // The test binary itself is dynamically linked.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
        // A minimal ELF header with one PT_LOAD program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert!(!has_interpreter(&elf).unwrap());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(has_interpreter(&elf).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&9u16.to_le_bytes());
        assert!(has_interpreter(&elf).is_err(), "headers past the end are an error");
    }
}
