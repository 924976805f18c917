//! The kernel matrix: real Debian kernels fetched from the archive with a
//! private apt state (the machine's own apt configuration is never touched).
//!
//! Versions are resolved from the archive's package lists at set-up time
//! because Debian removes superseded kernel ABIs from the archive: a pinned
//! version would stop downloading within weeks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

mod apt;
mod packages;

pub use apt::debian_mirror;
pub(crate) use apt::AptState;
pub use packages::PkgInfo;
pub(crate) use packages::{choose, Choice};
use packages::classify;

use crate::say;
use crate::util;

/// One entry of the kernel matrix: an alias the user types and the Debian
/// suite whose current kernel it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelAlias {
    /// What the user types (`--kernel 6.12`), also the expected major.minor.
    pub name: &'static str,
    /// The Debian suite that ships that kernel.
    pub suite: &'static str,
}

/// The matrix that `setup` fetches and `test` runs, oldest first.
pub const MATRIX: [KernelAlias; 3] = [
    KernelAlias {
        name: "6.1",
        suite: "bookworm",
    },
    KernelAlias {
        name: "6.12",
        suite: "trixie",
    },
    KernelAlias {
        name: "7.2",
        suite: "sid",
    },
];

/// Kernels older than the matrix that `cargo xtask vm` boots by alias:
/// bullseye's 5.10 lacks `bpf_loop` and `bpf_get_func_arg` (5.17), so
/// gupwatch falls back to its reduced mode there (the beyond step of
/// `cargo xtask test`).
pub const BEYOND: [KernelAlias; 1] = [KernelAlias {
    name: "5.10",
    suite: "bullseye",
}];

/// Finds a matrix or [`BEYOND`] entry by alias (`6.12`) or suite name
/// (`trixie`).
pub fn alias(name: &str) -> Option<KernelAlias> {
    MATRIX
        .iter()
        .chain(BEYOND.iter())
        .copied()
        .find(|a| a.name == name || a.suite == name)
}

/// Comma-separated aliases, for messages.
pub fn alias_names() -> String {
    MATRIX.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

/// [`alias`], or the error that names the known ones.
pub fn known_alias(name: &str) -> Result<KernelAlias> {
    alias(name).ok_or_else(|| anyhow!("unknown kernel `{name}` (known: {})", alias_names()))
}

/// Which Debian kernel flavour to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// `*-cloud-amd64`: small, virtio drivers, boots fast. The default.
    #[default]
    Cloud,
    /// `*-amd64`: the full kernel, carries drivers such as i915 as modules.
    Generic,
}

impl Flavour {
    /// The suffix of the kernel's release string and package names.
    pub fn suffix(self) -> &'static str {
        match self {
            Flavour::Cloud => "cloud-amd64",
            Flavour::Generic => "amd64",
        }
    }

    fn key_suffix(self) -> &'static str {
        match self {
            Flavour::Cloud => "",
            Flavour::Generic => "-generic",
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavour::Cloud => "cloud",
            Flavour::Generic => "generic",
        })
    }
}

/// What `setup` recorded about one fetched kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Matrix alias (`6.12`).
    pub alias: String,
    /// Debian suite it came from.
    pub suite: String,
    /// Kernel flavour.
    pub flavour: Flavour,
    /// The kernel's release string, as `uname -r` prints it in the guest.
    pub uname: String,
    /// Debian package version of the kernel image (e.g. `6.12.117-1`).
    pub package_version: String,
    /// Packages that were unpacked.
    pub packages: Vec<String>,
    /// Kernel image, relative to the kernel's cache directory.
    pub vmlinuz: PathBuf,
    /// Module tree (`.../modules/<uname>`), relative to the same directory.
    pub modules_dir: Option<PathBuf>,
    /// When it was fetched (Unix seconds).
    pub fetched_at: u64,
}

/// A kernel ready to boot: image, modules, and a label for log names.
#[derive(Debug, Clone)]
pub struct BootKernel {
    /// Short name used in log file names and messages (`6.12`, `7.2-generic`).
    pub label: String,
    /// bzImage to pass to `qemu -kernel`.
    pub vmlinuz: PathBuf,
    /// Module tree whose modules go into the initramfs, if any.
    pub modules_dir: Option<PathBuf>,
    /// Expected `uname -r`, when known.
    pub uname: Option<String>,
}

impl Manifest {
    fn key(alias: &str, flavour: Flavour) -> String {
        format!("{alias}{}", flavour.key_suffix())
    }

    /// The manifest of a fetched kernel, if present and its files still exist.
    pub fn load(cache: &Path, alias: &str, flavour: Flavour) -> Option<Manifest> {
        let dir = kernel_dir(cache, alias, flavour);
        let text = fs::read_to_string(dir.join("manifest.json")).ok()?;
        let m: Manifest = serde_json::from_str(&text).ok()?;
        if !dir.join(&m.vmlinuz).is_file() {
            return None;
        }
        if let Some(md) = &m.modules_dir {
            if !dir.join(md).is_dir() {
                return None;
            }
        }
        Some(m)
    }

    /// Turns the manifest into something bootable.
    pub fn boot_kernel(&self, cache: &Path) -> BootKernel {
        let dir = kernel_dir(cache, &self.alias, self.flavour);
        BootKernel {
            label: Manifest::key(&self.alias, self.flavour),
            vmlinuz: dir.join(&self.vmlinuz),
            modules_dir: self.modules_dir.as_ref().map(|m| dir.join(m)),
            uname: Some(self.uname.clone()),
        }
    }
}

fn kernel_dir(cache: &Path, alias: &str, flavour: Flavour) -> PathBuf {
    cache.join("kernels").join(Manifest::key(alias, flavour))
}

/// Resolves `--kernel` (an alias, a suite name, or a path to a kernel image)
/// into a bootable kernel, fetching an aliased kernel on first use.
pub fn resolve_spec(spec: &str, flavour: Flavour, modules: Option<PathBuf>) -> Result<BootKernel> {
    if let Some(a) = alias(spec) {
        let cache = util::cache_dir()?;
        let m = ensure(&cache, a, flavour, false)?;
        let mut k = m.boot_kernel(&cache);
        if let Some(dir) = modules {
            k.modules_dir = Some(dir);
        }
        return Ok(k);
    }
    if (spec == crate::canary::ALIAS.name || spec == crate::canary::ALIAS.suite) && flavour == Flavour::Cloud {
        let mut k = crate::canary::boot_kernel()?;
        if let Some(dir) = modules {
            k.modules_dir = Some(dir);
        }
        return Ok(k);
    }
    let path = PathBuf::from(spec);
    if !path.is_file() {
        bail!(
            "unknown kernel `{spec}`: use one of {} (or bookworm/trixie/sid), `canary` (experimental's newest, cloud only), or a path to a bzImage/vmlinuz file",
            alias_names()
        );
    }
    let modules_dir = match modules {
        Some(dir) => Some(dir),
        None => guess_modules_dir(&path),
    };
    if modules_dir.is_none() {
        say!(
            "vm",
            "note: no --modules given for {}; only built-in drivers are available (the scratch disk needs virtio_blk)",
            path.display()
        );
    }
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".into());
    Ok(BootKernel {
        label,
        vmlinuz: path,
        modules_dir,
        uname: None,
    })
}

/// The module tree that belongs to a kernel image given by path, if its
/// layout tells: a Debian split package keeps `vmlinuz` inside the tree, and
/// `<root>/boot/vmlinuz-<release>` pairs with `<root>/lib/modules/<release>`.
fn guess_modules_dir(image: &Path) -> Option<PathBuf> {
    let parent = image.parent()?;
    if parent.join("kernel").is_dir() {
        return Some(parent.to_path_buf());
    }
    let release = image.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let root = parent.parent()?;
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|b| root.join(b).join(release))
        .find(|d| d.join("kernel").is_dir())
}

/// Makes sure a matrix kernel is fetched and unpacked; with `refresh`,
/// re-resolves the current version from the archive first.
///
/// A cached kernel is returned without any network access.
pub fn ensure(cache: &Path, a: KernelAlias, flavour: Flavour, refresh: bool) -> Result<Manifest> {
    let tag = "setup";
    let label = Manifest::key(a.name, flavour);
    let existing = Manifest::load(cache, a.name, flavour);
    if let (false, Some(m)) = (refresh, &existing) {
        say!(tag, "kernel {label}: {} (cached)", m.uname);
        return Ok(m.clone());
    }

    let choice = newest_in_suite(cache, a.suite, flavour)?.ok_or_else(|| {
        anyhow!(
            "the {} package lists have no {} kernel packages (looked for linux-image-*-{}*, linux-binary-*); \
             check the archive in /etc/apt/sources.list.d/ or set GUPWATCH_DEBIAN_MIRROR",
            a.suite,
            flavour,
            flavour.suffix()
        )
    })?;
    let uname = choice.uname(flavour);
    match major_minor(&choice.abi) {
        Some(mm) if mm == a.name => {}
        other => say!(
            tag,
            "note: {} now ships {uname} (major.minor {}), not {}.x; using it for alias {}",
            a.suite,
            other.unwrap_or_else(|| "?".into()),
            a.name,
            a.name
        ),
    }
    install(cache, a, flavour, &choice, existing.as_ref())
}

/// The newest kernel of a flavour in a suite's package lists (after an
/// `apt-get update` of that suite), or `None` when the suite has no
/// kernel packages of that flavour (experimental often has none).
pub(crate) fn newest_in_suite(cache: &Path, suite: &str, flavour: Flavour) -> Result<Option<Choice>> {
    let apt = AptState::new(cache, suite);
    apt.update()?;
    let relevant: Vec<String> = apt
        .pkgnames("linux-")?
        .into_iter()
        .filter(|n| classify(n, flavour).is_some())
        .collect();
    if relevant.is_empty() {
        return Ok(None);
    }
    let infos = apt.show(&relevant)?;
    choose(&infos, flavour)
        .with_context(|| format!("choosing the {flavour} kernel of {suite}"))
        .map(Some)
}

/// Downloads and unpacks a chosen kernel under the alias's cache directory
/// and writes its manifest; `existing` is the manifest it replaces.
pub(crate) fn install(
    cache: &Path,
    a: KernelAlias,
    flavour: Flavour,
    choice: &Choice,
    existing: Option<&Manifest>,
) -> Result<Manifest> {
    let tag = "setup";
    let label = Manifest::key(a.name, flavour);
    let uname = choice.uname(flavour);
    let apt = AptState::new(cache, a.suite);
    if let Some(m) = existing {
        if m.uname == uname && m.package_version == choice.version {
            say!(
                tag,
                "kernel {label}: {uname} ({}) is current",
                choice.version
            );
            return Ok(m.clone());
        }
        say!(
            tag,
            "kernel {label}: {} -> {uname} ({})",
            m.uname,
            choice.version
        );
    } else {
        say!(
            tag,
            "kernel {label}: resolved {uname} ({}) from {}",
            choice.version,
            a.suite
        );
    }

    let debs = apt.download(&choice.packages, &cache.join("debs"))?;
    let dir = kernel_dir(cache, a.name, flavour);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let new_root = dir.join("root.new");
    let root = dir.join("root");
    if new_root.exists() {
        fs::remove_dir_all(&new_root)
            .with_context(|| format!("removing {}", new_root.display()))?;
    }
    fs::create_dir_all(&new_root)?;
    for deb in &debs {
        say!(
            tag,
            "unpacking {}",
            deb.file_name().unwrap_or_default().to_string_lossy()
        );
        util::run(
            Command::new("dpkg")
                .arg("-x")
                .arg(deb)
                .arg(&new_root)
                .stdout(std::io::stderr()),
        )
        .context("unpacking a kernel package (dpkg is part of every Debian system)")?;
    }
    let vmlinuz = find_vmlinuz(&new_root, &uname).ok_or_else(|| {
        anyhow!(
            "no kernel image (vmlinuz) found in packages {:?} unpacked at {}; the package layout may have changed",
            choice.packages,
            new_root.display()
        )
    })?;
    let modules = find_modules_dir(&new_root, &uname);
    if modules.is_none() {
        say!(
            tag,
            "warning: no module tree for {uname} in {:?}",
            choice.packages
        );
    }
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing old {}", root.display()))?;
    }
    fs::rename(&new_root, &root)?;
    let rel =
        |p: &Path| -> PathBuf { Path::new("root").join(p.strip_prefix(&new_root).unwrap_or(p)) };
    let m = Manifest {
        alias: a.name.to_string(),
        suite: a.suite.to_string(),
        flavour,
        uname: uname.clone(),
        package_version: choice.version.clone(),
        packages: choice.packages.clone(),
        vmlinuz: rel(&vmlinuz),
        modules_dir: modules.as_deref().map(rel),
        fetched_at: util::unix_now(),
    };
    let path = dir.join("manifest.json");
    fs::write(&path, serde_json::to_string_pretty(&m)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(old) = existing {
        prune_debs(&cache.join("debs"), &old.packages, &debs);
    }
    say!(tag, "kernel {label}: {uname} ready in {}", dir.display());
    Ok(m)
}

/// Removes the downloaded packages of a kernel that was replaced (they are
/// 30-100 MB each and only needed until unpacked): files of the old
/// packages that are not among the ones just used.
fn prune_debs(dir: &Path, old_packages: &[String], keep: &[PathBuf]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let pkg = name.split('_').next().unwrap_or("");
        if old_packages.iter().any(|o| o == pkg) && !keep.contains(&path) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// "6.12.117+deb13" -> "6.12"; "6.1.0-50" -> "6.1".
fn major_minor(abi: &str) -> Option<String> {
    let mut parts = abi.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().filter(|s| !s.is_empty())?;
    let minor = parts.next().filter(|s| !s.is_empty())?;
    Some(format!("{major}.{minor}"))
}

fn find_vmlinuz(root: &Path, uname: &str) -> Option<PathBuf> {
    let mut candidates = vec![root.join("boot").join(format!("vmlinuz-{uname}"))];
    for base in ["usr/lib/modules", "lib/modules"] {
        for name in ["vmlinuz", "vmlinuz.unsigned", "vmlinuz.efi"] {
            candidates.push(root.join(base).join(uname).join(name));
        }
    }
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(found);
    }
    // Unknown layout: any vmlinuz* under boot/.
    let mut any: Vec<PathBuf> = fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .collect();
    any.sort();
    any.pop()
}

fn find_modules_dir(root: &Path, uname: &str) -> Option<PathBuf> {
    ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|b| root.join(b).join(uname))
        .find(|p| p.join("kernel").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_of_abis() {
        assert_eq!(major_minor("6.1.0-50").as_deref(), Some("6.1"));
        assert_eq!(major_minor("6.12.117+deb13").as_deref(), Some("6.12"));
        assert_eq!(major_minor("7.2.13+deb14").as_deref(), Some("7.2"));
        assert_eq!(major_minor("x"), None);
    }

    #[test]
    fn aliases() {
        assert_eq!(alias("trixie").map(|a| a.name), Some("6.12"));
        assert_eq!(alias("7.2").map(|a| a.suite), Some("sid"));
        assert_eq!(alias("5.10").map(|a| a.suite), Some("bullseye"));
        assert_eq!(alias("4.19"), None);
    }
}
