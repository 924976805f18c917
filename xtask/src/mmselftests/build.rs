//! Fetching and building the kernel's own mm selftests (`gup_longterm`,
//! `cow`, `hugetlb_dio`) from Debian's packages, statically, on the host.
//!
//! The sources come from Debian's newest `linux-source-X.Y` (resolved from
//! sid's package lists, never a pinned version: superseded ones leave the
//! archive), liburing from `liburing-dev` (its static `liburing.a` and
//! headers) and the UAPI headers from `linux-libc-dev` of the same suite:
//! the host's are older than what `vm_util.c` uses. Everything lands under
//! `$CACHE/mm-selftests/<key>/`, keyed by the three package versions, so
//! a rerun with a cached build does no network access (like the kernels:
//! `--refresh` re-resolves).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::debversion;
use crate::vm::kernels::AptState;
use crate::say;
use crate::util;

/// The selftests this step builds and runs, in run order.
pub const PROGRAMS: [&str; 3] = ["gup_longterm", "cow", "hugetlb_dio"];

/// The suite whose lists name the newest kernel source.
const SUITE: &str = "sid";

const TAG: &str = "mm-selftests";

/// What a build recorded; `$CACHE/mm-selftests/current.json` names the one
/// in use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildManifest {
    /// `linux-source-X.Y`.
    pub source_package: String,
    /// Its Debian version (`7.2.13-1`).
    pub source_version: String,
    /// `liburing-dev`'s version.
    pub liburing_version: String,
    /// `linux-libc-dev`'s version.
    pub libc_dev_version: String,
    /// The build's directory name under `$CACHE/mm-selftests`.
    pub key: String,
}

/// Static selftest binaries ready to ship into guests.
#[derive(Debug, Clone)]
pub struct Selftests {
    /// What they were built from.
    pub manifest: BuildManifest,
    /// (name, host path) per program of [`PROGRAMS`].
    pub binaries: Vec<(String, PathBuf)>,
}

fn root(cache: &Path) -> PathBuf {
    cache.join("mm-selftests")
}

fn binaries(cache: &Path, key: &str) -> Vec<(String, PathBuf)> {
    PROGRAMS
        .iter()
        .map(|p| (p.to_string(), root(cache).join(key).join("bin").join(p)))
        .collect()
}

/// The cached build, when `current.json` names one whose binaries exist.
fn cached(cache: &Path) -> Option<Selftests> {
    let text = fs::read_to_string(root(cache).join("current.json")).ok()?;
    let manifest: BuildManifest = serde_json::from_str(&text).ok()?;
    let binaries = binaries(cache, &manifest.key);
    binaries.iter().all(|(_, p)| p.is_file()).then_some(Selftests { manifest, binaries })
}

/// `linux-source-7.2` is a versioned source package; `linux-source` (the
/// metapackage) and `linux-source-7.2-foo` are not.
fn is_versioned_source(name: &str) -> bool {
    name.strip_prefix("linux-source-").is_some_and(|v| {
        let mut parts = v.split('.');
        let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
    })
}

/// The newest (name, version) among `infos` whose name passes `keep`.
fn newest(infos: &[crate::vm::kernels::PkgInfo], keep: impl Fn(&str) -> bool) -> Option<(&str, &str)> {
    infos
        .iter()
        .filter(|i| keep(&i.name))
        .max_by(|a, b| debversion::compare(&a.version, &b.version))
        .map(|i| (i.name.as_str(), i.version.as_str()))
}

/// The build key: the three versions, safe as a directory name.
fn key_of(source: &str, uring: &str, libc: &str) -> String {
    format!("{source}_uring{uring}_libc{libc}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') { c } else { '_' })
        .collect()
}

/// Resolves the newest packages from sid's lists (one `apt-get update`).
fn resolve(apt: &AptState) -> Result<BuildManifest> {
    apt.update()?;
    let sources: Vec<String> = apt.pkgnames("linux-source-")?.into_iter().filter(|n| is_versioned_source(n)).collect();
    if sources.is_empty() {
        bail!("{SUITE}'s package lists have no linux-source-X.Y package; check the archive in /etc/apt/sources.list.d/ or set GUPWATCH_DEBIAN_MIRROR");
    }
    let infos = apt.show(&sources)?;
    let (source_package, source_version) =
        newest(&infos, |_| true).ok_or_else(|| anyhow!("apt-cache show printed nothing for {sources:?}"))?;
    let libs = apt.show(&["liburing-dev".to_string(), "linux-libc-dev".to_string()])?;
    let (_, liburing_version) = newest(&libs, |n| n == "liburing-dev")
        .ok_or_else(|| anyhow!("{SUITE}'s package lists have no liburing-dev"))?;
    let (_, libc_dev_version) = newest(&libs, |n| n == "linux-libc-dev")
        .ok_or_else(|| anyhow!("{SUITE}'s package lists have no linux-libc-dev"))?;
    Ok(BuildManifest {
        key: key_of(source_version, liburing_version, libc_dev_version),
        source_package: source_package.to_string(),
        source_version: source_version.to_string(),
        liburing_version: liburing_version.to_string(),
        libc_dev_version: libc_dev_version.to_string(),
    })
}

/// Makes sure the selftests are built: the cached build without network
/// access, unless `refresh` (or there is none), which re-resolves the
/// packages and builds again when a version changed.
pub fn ensure(cache: &Path, refresh: bool) -> Result<Selftests> {
    if !refresh {
        if let Some(s) = cached(cache) {
            say!(TAG, "selftests from {} {} (cached)", s.manifest.source_package, s.manifest.source_version);
            return Ok(s);
        }
    }
    let apt = AptState::new(cache, SUITE);
    let m = resolve(&apt)?;
    let bins = binaries(cache, &m.key);
    if bins.iter().all(|(_, p)| p.is_file()) {
        say!(TAG, "selftests from {} {} are current", m.source_package, m.source_version);
    } else {
        say!(
            TAG,
            "building gup_longterm, cow and hugetlb_dio from {} {} with liburing-dev {} and linux-libc-dev {}",
            m.source_package,
            m.source_version,
            m.liburing_version,
            m.libc_dev_version
        );
        let names = [m.source_package.clone(), "liburing-dev".to_string(), "linux-libc-dev".to_string()];
        let debs = apt.download(&names, &cache.join("debs"))?;
        build(&root(cache).join(&m.key), &m, &debs)?;
    }
    let current = root(cache).join("current.json");
    fs::write(&current, serde_json::to_string_pretty(&m)? + "\n").with_context(|| format!("writing {}", current.display()))?;
    Ok(Selftests { manifest: m, binaries: bins })
}

/// Unpacks the three packages (`debs`: source, liburing-dev, linux-libc-dev)
/// into `dir/work`, builds the programs into `dir/bin`, removes the work
/// tree (the source package alone is 160 MB).
fn build(dir: &Path, m: &BuildManifest, debs: &[PathBuf]) -> Result<()> {
    let [source_deb, uring_deb, libc_deb] = debs else {
        bail!("expected three packages, got {debs:?}");
    };
    let work = dir.join("work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let (src, uring, libc) = (work.join("source"), work.join("liburing"), work.join("libc-dev"));
    for (deb, to) in [(source_deb, &src), (uring_deb, &uring), (libc_deb, &libc)] {
        fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        say!(TAG, "unpacking {}", deb.file_name().unwrap_or_default().to_string_lossy());
        util::run(Command::new("dpkg").arg("-x").arg(deb).arg(to)).context("unpacking a package with dpkg -x")?;
    }
    let tree = unpack_source_tarball(&src, &m.source_package)?;
    let mm = tree.join("tools/testing/selftests/mm");
    // What the Makefile's check_config.sh writes when liburing is found
    // (its test compile is replaced by giving gcc liburing explicitly).
    fs::write(mm.join("local_config.h"), "#define LOCAL_CONFIG_HAVE_LIBURING 1\n")?;
    let liba = uring.join("usr/lib/x86_64-linux-gnu/liburing.a");
    if !liba.is_file() {
        bail!("liburing-dev has no {} (the package layout changed?)", liba.display());
    }
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    for p in PROGRAMS {
        let started = Instant::now();
        say!(TAG, "gcc -static {p}");
        let out = bin.join(p);
        let mut cmd = Command::new("gcc");
        cmd.current_dir(&mm)
            // The selftests' Makefile flags, plus -static.
            .args(["-static", "-Wall", "-O2", "-U_FORTIFY_SOURCE", "-no-pie", "-I", "..", "-I", "../../../../tools/include"])
            .arg("-isystem")
            .arg(uring.join("usr/include"))
            .arg("-isystem")
            .arg(libc.join("usr/include"))
            .arg("-isystem")
            .arg(libc.join("usr/include/x86_64-linux-gnu"))
            .arg("-o")
            .arg(&out)
            .args([format!("{p}.c"), "vm_util.c".into(), "hugepage_settings.c".into()])
            .arg(&liba)
            .args(["-lrt", "-lpthread", "-lm"]);
        util::output(&mut cmd).with_context(|| format!("building {p} from {} {}", m.source_package, m.source_version))?;
        say!(TAG, "built {} ({} KiB, {:.1} s)", out.display(), fs::metadata(&out).map(|md| md.len() / 1024).unwrap_or(0), started.elapsed().as_secs_f64());
    }
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// Extracts only what the three programs need from the source tarball
/// (`usr/src/linux-source-X.Y.tar.xz`): the mm selftests, kselftest's
/// headers, `tools/include` and `mm/gup_test.h`. xz has to decompress the
/// whole 1.5 GB stream anyway, which takes a while: progress is printed.
fn unpack_source_tarball(src: &Path, package: &str) -> Result<PathBuf> {
    let tarball = src.join("usr/src").join(format!("{package}.tar.xz"));
    if !tarball.is_file() {
        bail!("{package} has no {} (the package layout changed?)", tarball.display());
    }
    let started = Instant::now();
    say!(TAG, "extracting tools/testing/selftests/mm, tools/include and mm/gup_test.h from {} (about 20 s)", tarball.display());
    let top = package;
    util::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(src)
            .arg("--wildcards")
            .arg(format!("{top}/tools/testing/selftests/mm/*"))
            .arg(format!("{top}/tools/testing/selftests/kselftest*"))
            .arg(format!("{top}/tools/include/*"))
            .arg(format!("{top}/mm/gup_test.h")),
    )
    .with_context(|| format!("extracting the mm selftests from {}", tarball.display()))?;
    fs::remove_file(&tarball).with_context(|| format!("removing {}", tarball.display()))?;
    say!(TAG, "extracted in {:.0} s", started.elapsed().as_secs_f64());
    let tree = src.join(top);
    if !tree.join("tools/testing/selftests/mm/cow.c").is_file() {
        bail!("{} has no tools/testing/selftests/mm/cow.c", tree.display());
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kernels::PkgInfo;

    #[test]
    fn source_package_names() {
        assert!(is_versioned_source("linux-source-7.2"));
        assert!(is_versioned_source("linux-source-6.12"));
        assert!(!is_versioned_source("linux-source"));
        assert!(!is_versioned_source("linux-source-"));
        assert!(!is_versioned_source("linux-source-7.2-rt"));
        assert!(!is_versioned_source("linux-source-7"));
    }

    #[test]
    fn newest_by_debian_order() {
        let i = |n: &str, v: &str| PkgInfo { name: n.into(), version: v.into() };
        let infos = [i("linux-source-7.2", "7.2.13-1"), i("linux-source-7.3", "7.3~rc7-1"), i("linux-source-7.2", "7.2.9-1")];
        assert_eq!(newest(&infos, |_| true), Some(("linux-source-7.3", "7.3~rc7-1")));
        assert_eq!(newest(&infos, |n| n.ends_with("7.2")), Some(("linux-source-7.2", "7.2.13-1")));
        assert_eq!(newest(&infos, |n| n == "x"), None);
    }

    #[test]
    fn keys_are_directory_names() {
        assert_eq!(key_of("7.2.13-1", "2.15-1", "1:7.2"), "7.2.13-1_uring2.15-1_libc1_7.2");
    }
}
