//! The kernel matrix: real Debian kernels fetched from the archive with a
//! private apt state (the machine's own apt configuration is never touched).
//!
//! Versions are resolved from the archive's package lists at set-up time
//! because Debian removes superseded kernel ABIs from the archive: a pinned
//! version would stop downloading within weeks.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::debversion;
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

/// Role of a package in a Debian kernel build, recognised by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PkgKind {
    /// `linux-image-<abi>-<flavour>-unsigned`: monolithic image + modules.
    ImageUnsigned,
    /// `linux-binary-unsigned-<abi>-<flavour>`: split layout, image only.
    BinaryUnsigned,
    /// `linux-binary-<abi>-<flavour>`: split layout, signed image only.
    Binary,
    /// `linux-image-<abi>-<flavour>`: signed monolithic image, or (split
    /// layout) a metapackage.
    Image,
    /// `linux-modules-<abi>-<flavour>`: split layout, modules.
    Modules,
    /// `linux-base-<abi>-<flavour>`: split layout, config and module lists.
    Base,
}

impl PkgKind {
    fn bootable(self) -> bool {
        matches!(
            self,
            PkgKind::ImageUnsigned | PkgKind::BinaryUnsigned | PkgKind::Binary | PkgKind::Image
        )
    }
}

/// A kernel ABI looks like `6.1.0-50`, `6.12.117+deb13` or `7.2.13+deb14`:
/// every `-`-separated part after the first must be numeric. This is what
/// stops `6.12.117+deb13-cloud` from passing as an ABI of the generic
/// (`amd64`) flavour.
fn valid_abi(abi: &str) -> bool {
    let mut parts = abi.split('-');
    let first = parts.next().unwrap_or("");
    let first_ok = first.starts_with(|c: char| c.is_ascii_digit())
        && first.contains('.')
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'));
    first_ok && parts.all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

fn classify(name: &str, flavour: Flavour) -> Option<(PkgKind, String)> {
    let fl = flavour.suffix();
    let patterns: [(PkgKind, &str, String); 6] = [
        (
            PkgKind::ImageUnsigned,
            "linux-image-",
            format!("-{fl}-unsigned"),
        ),
        (
            PkgKind::BinaryUnsigned,
            "linux-binary-unsigned-",
            format!("-{fl}"),
        ),
        (PkgKind::Binary, "linux-binary-", format!("-{fl}")),
        (PkgKind::Image, "linux-image-", format!("-{fl}")),
        (PkgKind::Modules, "linux-modules-", format!("-{fl}")),
        (PkgKind::Base, "linux-base-", format!("-{fl}")),
    ];
    for (kind, prefix, suffix) in patterns {
        if let Some(abi) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix.as_str()))
        {
            if valid_abi(abi) {
                return Some((kind, abi.to_string()));
            }
        }
    }
    None
}

/// One package stanza from `apt-cache show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgInfo {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
}

/// Parses `apt-cache show` output (RFC 822 stanzas).
fn parse_stanzas(text: &str) -> Vec<PkgInfo> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = Some(v.trim().to_string());
            }
        }
        if let (Some(name), Some(version)) = (name, version) {
            out.push(PkgInfo { name, version });
        }
    }
    out
}

/// The kernel chosen in one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The ABI in the package names (`7.2.13+deb14`, `7.3`).
    pub(crate) abi: String,
    /// The Debian package version (`7.3~rc7-1~exp1`).
    pub(crate) version: String,
    /// The packages that make it bootable.
    pub(crate) packages: Vec<String>,
}

impl Choice {
    /// The release string its packages are named for (`uname -r`).
    pub(crate) fn uname(&self, flavour: Flavour) -> String {
        format!("{}-{}", self.abi, flavour.suffix())
    }
}

/// Picks the newest kernel ABI of a flavour and the packages that make it
/// bootable, whichever packaging layout the suite uses.
pub(crate) fn choose(infos: &[PkgInfo], flavour: Flavour) -> Result<Choice> {
    // abi -> kind -> (name, version); several versions of one name keep the newest.
    let mut by_abi: BTreeMap<String, BTreeMap<PkgKind, (String, String)>> = BTreeMap::new();
    for info in infos {
        let Some((kind, abi)) = classify(&info.name, flavour) else {
            continue;
        };
        let slot = by_abi.entry(abi).or_default();
        let replace = match slot.get(&kind) {
            Some((_, v)) => debversion::compare(&info.version, v).is_gt(),
            None => true,
        };
        if replace {
            slot.insert(kind, (info.name.clone(), info.version.clone()));
        }
    }
    let best = by_abi
        .iter()
        .filter_map(|(abi, kinds)| {
            let version = kinds
                .iter()
                .filter(|(k, _)| k.bootable())
                .map(|(_, (_, v))| v.as_str())
                .max_by(|a, b| debversion::compare(a, b))?;
            Some((abi, kinds, version))
        })
        .max_by(|a, b| debversion::compare(a.2, b.2).then_with(|| debversion::compare(a.0, b.0)))
        .ok_or_else(|| anyhow!("no bootable {flavour} kernel package found"))?;
    let (abi, kinds, version) = best;
    // Preference: a package that carries the image itself (unsigned first, as
    // nothing here checks signatures), before a possible metapackage.
    let image = [
        PkgKind::ImageUnsigned,
        PkgKind::BinaryUnsigned,
        PkgKind::Binary,
        PkgKind::Image,
    ]
    .iter()
    .find_map(|k| kinds.get(k))
    .map(|(n, _)| n.clone())
    .ok_or_else(|| anyhow!("no kernel image package for {abi}"))?;
    let split = image.starts_with("linux-binary-");
    let mut packages = vec![image];
    for k in [PkgKind::Modules, PkgKind::Base] {
        if let Some((n, _)) = kinds.get(&k) {
            packages.push(n.clone());
        }
    }
    if split && !kinds.contains_key(&PkgKind::Modules) {
        bail!("{abi}: the kernel image is split out (linux-binary-*) but no linux-modules-{abi}-{} package exists", flavour.suffix());
    }
    Ok(Choice {
        abi: abi.clone(),
        version: version.to_string(),
        packages,
    })
}

/// Finds the Debian archive URL in the machine's apt sources (deb822
/// `.sources` files or one-line `.list` files). `GUPWATCH_DEBIAN_MIRROR`
/// overrides it.
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("GUPWATCH_DEBIAN_MIRROR") {
        if !m.trim().is_empty() {
            return Ok(m.trim().trim_end_matches('/').to_string());
        }
    }
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = fs::read_dir(dir) {
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths {
                let name = p.to_string_lossy();
                if name.ends_with(".sources") || name.ends_with(".list") {
                    if let Ok(t) = fs::read_to_string(&p) {
                        texts.push(t);
                    }
                }
            }
        }
    }
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    texts
        .iter()
        .find_map(|t| mirror_from_sources(t))
        .ok_or_else(|| {
            anyhow!(
                "no Debian archive found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list \
                 (looked for a URI ending in /debian); set GUPWATCH_DEBIAN_MIRROR to the archive URL"
            )
        })
}

/// The first archive URI (path ending in `/debian`, so not the security
/// archive) in one sources file of either syntax.
fn mirror_from_sources(text: &str) -> Option<String> {
    let is_main = |u: &str| {
        let u = u.trim_end_matches('/');
        (u.starts_with("http://") || u.starts_with("https://")) && u.ends_with("/debian")
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(uris) = line.strip_prefix("URIs:") {
            if let Some(u) = uris.split_whitespace().find(|u| is_main(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        } else if line.starts_with("deb ") {
            // deb [options] URI suite components
            let mut words = line.split_whitespace().skip(1).peekable();
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            if let Some(u) = words.next().filter(|u| is_main(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// A private apt state for one suite under `$CACHE/apt/<suite>`: its own
/// sources list, package lists and archive cache. Also used to fetch other
/// packages from the archive the same way (the mm selftests' sources).
pub(crate) struct AptState {
    suite: String,
    dir: PathBuf,
}

/// Suites already updated by this process (the generic flavour reuses them).
static UPDATED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl AptState {
    pub(crate) fn new(cache: &Path, suite: &str) -> AptState {
        AptState {
            suite: suite.to_string(),
            dir: cache.join("apt").join(suite),
        }
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::Cache={d}/cache"),
            "-oAcquire::Languages=none".into(),
            // Only the Packages index is needed (not AppStream metadata).
            "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            // Downloads land in our own cache directory, which the _apt user
            // may not be allowed to write.
            "-oAPT::Sandbox::User=root".into(),
            "-q".into(),
        ]
    }

    pub(crate) fn update(&self) -> Result<()> {
        {
            let guard = UPDATED
                .lock()
                .map_err(|_| anyhow!("internal lock poisoned"))?;
            if guard.as_ref().is_some_and(|s| s.contains(&self.suite)) {
                return Ok(());
            }
        }
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing: install it with `apt-get install debian-archive-keyring`");
        }
        let mirror = debian_mirror()?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}", self.dir.join(sub).display()))?;
        }
        fs::write(
            self.dir.join("sources.list"),
            format!("deb [signed-by={KEYRING}] {mirror} {} main\n", self.suite),
        )?;
        say!(
            "setup",
            "apt-get update ({} from {mirror}, private state in {})",
            self.suite,
            self.dir.display()
        );
        util::output(Command::new("apt-get").args(self.opts()).arg("update")).with_context(
            || {
                format!(
                    "updating the package lists of {} (is the Debian archive reachable?)",
                    self.suite
                )
            },
        )?;
        UPDATED
            .lock()
            .map_err(|_| anyhow!("internal lock poisoned"))?
            .get_or_insert_with(HashSet::new)
            .insert(self.suite.clone());
        Ok(())
    }

    pub(crate) fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = util::output(
            Command::new("apt-cache")
                .args(self.opts())
                .arg("pkgnames")
                .arg(prefix),
        )?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    pub(crate) fn show(&self, names: &[String]) -> Result<Vec<PkgInfo>> {
        let out = util::output(
            Command::new("apt-cache")
                .args(self.opts())
                .arg("show")
                .args(names),
        )?;
        Ok(parse_stanzas(&out))
    }

    /// Downloads packages into `dest` (skipping files already there) and
    /// returns their paths.
    pub(crate) fn download(&self, names: &[String], dest: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        let infos = self.show(names)?;
        let mut paths = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let version = infos
                .iter()
                .filter(|i| &i.name == name)
                .map(|i| i.version.as_str())
                .max_by(|a, b| debversion::compare(a, b))
                .ok_or_else(|| anyhow!("{name} vanished from the package lists"))?;
            // apt-get download's file naming: ':' of an epoch becomes %3a;
            // the architecture is `all` for packages such as linux-source.
            let stem = format!("{name}_{}", version.replace(':', "%3a"));
            let file = ["amd64", "all"]
                .iter()
                .map(|arch| dest.join(format!("{stem}_{arch}.deb")))
                .find(|f| f.is_file());
            match file {
                Some(f) => paths.push(f),
                None => {
                    missing.push(format!("{name}={version}"));
                    paths.push(dest.join(format!("{stem}_amd64.deb")));
                }
            }
        }
        if !missing.is_empty() {
            say!("setup", "downloading {}", missing.join(" "));
            util::output(
                Command::new("apt-get")
                    .args(self.opts())
                    .arg("download")
                    .args(&missing)
                    .current_dir(dest),
            )
            .context("downloading packages from the Debian archive")?;
        }
        for p in paths.iter_mut() {
            if !p.is_file() {
                let all = p.with_file_name(p.file_name().unwrap_or_default().to_string_lossy().replace("_amd64.deb", "_all.deb"));
                if !all.is_file() {
                    bail!("apt-get download did not produce {} (nor an _all.deb)", p.display());
                }
                *p = all;
            }
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: &str) -> PkgInfo {
        PkgInfo {
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn classify_names() {
        use PkgKind::*;
        let c = Flavour::Cloud;
        assert_eq!(
            classify("linux-image-6.1.0-50-cloud-amd64-unsigned", c),
            Some((ImageUnsigned, "6.1.0-50".into()))
        );
        assert_eq!(
            classify("linux-image-6.1.0-50-cloud-amd64", c),
            Some((Image, "6.1.0-50".into()))
        );
        assert_eq!(
            classify("linux-binary-unsigned-7.2.13+deb14-cloud-amd64", c),
            Some((BinaryUnsigned, "7.2.13+deb14".into()))
        );
        assert_eq!(
            classify("linux-binary-7.2.13+deb14-cloud-amd64", c),
            Some((Binary, "7.2.13+deb14".into()))
        );
        assert_eq!(
            classify("linux-modules-7.2.13+deb14-cloud-amd64", c),
            Some((Modules, "7.2.13+deb14".into()))
        );
        assert_eq!(
            classify("linux-base-7.2.13+deb14-cloud-amd64", c),
            Some((Base, "7.2.13+deb14".into()))
        );
        assert_eq!(classify("linux-image-cloud-amd64", c), None);
        assert_eq!(classify("linux-image-6.1.0-50-cloud-amd64-dbg", c), None);
        assert_eq!(classify("linux-image-6.1.0-50-rt-amd64", c), None);
        let g = Flavour::Generic;
        assert_eq!(
            classify("linux-image-6.12.117+deb13-amd64-unsigned", g),
            Some((ImageUnsigned, "6.12.117+deb13".into()))
        );
        // Other flavours must not pass as generic ones.
        assert_eq!(
            classify("linux-image-6.12.117+deb13-cloud-amd64-unsigned", g),
            None
        );
        assert_eq!(classify("linux-image-6.1.0-50-rt-amd64-unsigned", g), None);
        assert_eq!(classify("linux-image-6.1.0-50-cloud-amd64", g), None);
    }

    #[test]
    fn choose_monolithic_newest() {
        let infos = [
            info("linux-image-6.1.0-47-cloud-amd64-unsigned", "6.1.158-1"),
            info("linux-image-6.1.0-47-cloud-amd64", "6.1.158-1"),
            info("linux-image-6.1.0-50-cloud-amd64-unsigned", "6.1.176-1"),
            info("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1"),
            info("linux-image-6.1.0-50-amd64-unsigned", "6.1.176-1"),
        ];
        let c = choose(&infos, Flavour::Cloud).unwrap();
        assert_eq!(c.abi, "6.1.0-50");
        assert_eq!(c.version, "6.1.176-1");
        assert_eq!(
            c.packages,
            vec!["linux-image-6.1.0-50-cloud-amd64-unsigned"]
        );
        let g = choose(&infos, Flavour::Generic).unwrap();
        assert_eq!(g.packages, vec!["linux-image-6.1.0-50-amd64-unsigned"]);
    }

    #[test]
    fn choose_split_layout() {
        let infos = [
            info("linux-binary-unsigned-7.2.13+deb14-cloud-amd64", "7.2.13-1"),
            info("linux-binary-7.2.13+deb14-cloud-amd64", "7.2.13-1"),
            info("linux-image-7.2.13+deb14-cloud-amd64", "7.2.13-1"),
            info("linux-modules-7.2.13+deb14-cloud-amd64", "7.2.13-1"),
            info("linux-base-7.2.13+deb14-cloud-amd64", "7.2.13-1"),
            info("linux-binary-unsigned-7.1.9+deb14-cloud-amd64", "7.1.9-2"),
            info("linux-modules-7.1.9+deb14-cloud-amd64", "7.1.9-2"),
        ];
        let c = choose(&infos, Flavour::Cloud).unwrap();
        assert_eq!(c.abi, "7.2.13+deb14");
        assert_eq!(
            c.packages,
            vec![
                "linux-binary-unsigned-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64",
                "linux-base-7.2.13+deb14-cloud-amd64"
            ]
        );
    }

    #[test]
    fn choose_split_without_modules_fails() {
        let infos = [info("linux-binary-7.2.13+deb14-cloud-amd64", "7.2.13-1")];
        assert!(choose(&infos, Flavour::Cloud).is_err());
        assert!(choose(&[], Flavour::Cloud).is_err());
    }

    #[test]
    fn stanzas() {
        let text = "Package: a\nVersion: 1.0-1\nDepends: x\n\nPackage: b\nSource: linux (1)\nVersion: 2:3\n";
        assert_eq!(
            parse_stanzas(text),
            vec![info("a", "1.0-1"), info("b", "2:3")]
        );
    }

    #[test]
    fn mirrors() {
        let deb822 = "Types: deb\n# comment\nURIs: http://example.invalid/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://example.invalid/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_sources(deb822).as_deref(),
            Some("http://example.invalid/debian")
        );
        let sec_first =
            "URIs: http://example.invalid/debian-security\n\nURIs: https://m.invalid/debian/\n";
        assert_eq!(
            mirror_from_sources(sec_first).as_deref(),
            Some("https://m.invalid/debian")
        );
        let one_line = "# deb http://old.invalid/debian sid main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(one_line).as_deref(),
            Some("http://m.invalid/debian")
        );
        assert_eq!(
            mirror_from_sources("deb http://m.invalid/ubuntu jammy main\n"),
            None
        );
    }

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
