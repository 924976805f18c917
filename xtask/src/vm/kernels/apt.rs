//! A private apt state per Debian suite, so that fetching kernels never
//! touches the machine's own apt configuration.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use super::packages::{parse_stanzas, PkgInfo};
use crate::debversion;
use crate::say;
use crate::util;

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

    /// `apt-cache SUBCOMMAND ARGS...` on the private state; its stdout.
    fn apt_cache<S: AsRef<std::ffi::OsStr>>(&self, subcommand: &str, args: &[S]) -> Result<String> {
        util::output(Command::new("apt-cache").args(self.opts()).arg(subcommand).args(args))
    }

    pub(crate) fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.apt_cache("pkgnames", &[prefix])?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    pub(crate) fn show(&self, names: &[String]) -> Result<Vec<PkgInfo>> {
        let out = self.apt_cache("show", names)?;
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
}
