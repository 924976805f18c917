//! Debian kernel packages: which package names make a kernel bootable, in
//! either packaging layout (monolithic `linux-image-*-unsigned`, or split
//! `linux-binary-*` + `linux-modules-*`), and the newest such kernel.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};

use super::Flavour;
use crate::debversion;

/// Role of a package in a Debian kernel build, recognised by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum PkgKind {
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

pub(super) fn classify(name: &str, flavour: Flavour) -> Option<(PkgKind, String)> {
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
pub(super) fn parse_stanzas(text: &str) -> Vec<PkgInfo> {
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
        use Flavour::{Cloud, Generic};
        use PkgKind::*;
        for (name, flavour, want) in [
            ("linux-image-6.1.0-50-cloud-amd64-unsigned", Cloud, Some((ImageUnsigned, "6.1.0-50"))),
            ("linux-image-6.1.0-50-cloud-amd64", Cloud, Some((Image, "6.1.0-50"))),
            ("linux-binary-unsigned-7.2.13+deb14-cloud-amd64", Cloud, Some((BinaryUnsigned, "7.2.13+deb14"))),
            ("linux-binary-7.2.13+deb14-cloud-amd64", Cloud, Some((Binary, "7.2.13+deb14"))),
            ("linux-modules-7.2.13+deb14-cloud-amd64", Cloud, Some((Modules, "7.2.13+deb14"))),
            ("linux-base-7.2.13+deb14-cloud-amd64", Cloud, Some((Base, "7.2.13+deb14"))),
            ("linux-image-cloud-amd64", Cloud, None),
            ("linux-image-6.1.0-50-cloud-amd64-dbg", Cloud, None),
            ("linux-image-6.1.0-50-rt-amd64", Cloud, None),
            ("linux-image-6.12.117+deb13-amd64-unsigned", Generic, Some((ImageUnsigned, "6.12.117+deb13"))),
            // Other flavours must not pass as generic ones.
            ("linux-image-6.12.117+deb13-cloud-amd64-unsigned", Generic, None),
            ("linux-image-6.1.0-50-rt-amd64-unsigned", Generic, None),
            ("linux-image-6.1.0-50-cloud-amd64", Generic, None),
        ] {
            assert_eq!(classify(name, flavour), want.map(|(k, v)| (k, v.to_string())), "{name}");
        }
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
}
