//! Which kernel this is: its release string and, where one can be read, its
//! version. The one place gupwatch parses kernel version strings.
//!
//! gupwatch's kernel facts come from BTF and kallsyms ([`crate::kernel::plan`]),
//! not from version numbers. A version is read only where nothing else can
//! tell: the FOLL_* values of a kernel without BTF ([`crate::kernel::plan`]), the
//! capabilities the kernel checks ([`crate::kernel::privileges`]), and doctor's
//! report. So an unreadable version is never fatal: every caller has a
//! cautious default, and doctor says which one it took.
//!
//! The strings come from the kernel and from distributions, and a new one
//! can turn up with any kernel (Debian 7.3~rc7's `uname -v` crashed aya
//! 0.13, issue 21). Every parser here returns a typed error, never panics,
//! and is tested on the real strings below and on garbage.
//!
//! | source | example |
//! |---|---|
//! | `uname -r` (`/proc/sys/kernel/osrelease`) | `6.1.0-50-cloud-amd64`, `7.3.0-rc7+` |
//! | `uname -v` on Debian | `#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)` |
//! | Debian package versions | `6.12.95-1~bpo12+1`, `7.2.13-1`, `7.3~rc7-1~exp1` |
//! | Ubuntu's `/proc/version_signature` | `Ubuntu 6.8.0-45.45-generic 6.8.12` |
//!
//! Debian's stable release strings carry an ABI number, not the upstream
//! patch level (`6.1.0-50` is Linux 6.1.158): the upstream version is in
//! `uname -v`. Ubuntu keeps it in `/proc/version_signature`.

use std::{cmp::Ordering, fmt};

use serde::Serialize;

/// Longest input quoted in an error (the strings are the kernel's, and a
/// garbage one could be long).
const QUOTE_MAX: usize = 80;

/// A Linux version: `MAJOR.MINOR[.PATCH][-rcN]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct KernelVersion {
    /// `7` of 7.3.
    pub major: u32,
    /// `3` of 7.3.
    pub minor: u32,
    /// The patch level, when the string has one (Debian stable's release
    /// strings give the ABI's `0` here, see the module docs).
    pub patch: Option<u32>,
    /// The release candidate (`7` of 7.3-rc7), for pre-releases.
    pub rc: Option<u32>,
}

impl KernelVersion {
    /// Whether this is `major.minor` or later. A release candidate counts
    /// as its release: features are merged before rc1.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// A release candidate, not a release.
    pub fn is_prerelease(&self) -> bool {
        self.rc.is_some()
    }
}

impl Ord for KernelVersion {
    /// 7.3-rc7 < 7.3 = 7.3.0 < 7.3.1: a candidate comes before its release.
    fn cmp(&self, other: &Self) -> Ordering {
        let rc = |v: &KernelVersion| v.rc.unwrap_or(u32::MAX);
        (self.major, self.minor, self.patch.unwrap_or(0), rc(self)).cmp(&(
            other.major,
            other.minor,
            other.patch.unwrap_or(0),
            rc(other),
        ))
    }
}

impl PartialOrd for KernelVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        if let Some(rc) = self.rc {
            write!(f, "-rc{rc}")?;
        }
        Ok(())
    }
}

/// Why a string names no kernel version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Nothing to parse.
    #[error("the kernel version string is empty")]
    Empty,
    /// The string does not start with `MAJOR.MINOR`.
    #[error("{input:?} does not start with a kernel version (MAJOR.MINOR)")]
    NoVersion {
        /// The input (shortened).
        input: String,
    },
    /// A number does not fit.
    #[error("{input:?}: the number {number:?} is too large for a kernel version")]
    OutOfRange {
        /// The input (shortened).
        input: String,
        /// The digits.
        number: String,
    },
    /// `uname -v` without a Debian package version in it.
    #[error("{input:?} names no Debian package version (`Debian X.Y...` as Debian's uname -v has)")]
    NoDebianVersion {
        /// The input (shortened).
        input: String,
    },
    /// Not an Ubuntu `/proc/version_signature`.
    #[error("{input:?} is not a version signature (`Ubuntu ABI-FLAVOUR UPSTREAM`)")]
    NotASignature {
        /// The input (shortened).
        input: String,
    },
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Reads a run of ASCII digits at the start of `s`: its value and the rest.
fn number<'a>(s: &'a str, input: &str) -> Result<Option<(u32, &'a str)>, VersionError> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return Ok(None);
    }
    let (digits, rest) = s.split_at(end);
    let value = digits.parse().map_err(|_| VersionError::OutOfRange { input: quote(input), number: quote(digits) })?;
    Ok(Some((value, rest)))
}

/// `MAJOR.MINOR[.PATCH][(-|~)rcN]` at the start of `s`, and what follows.
/// `input` is the whole string, for errors.
fn leading_version<'a>(s: &'a str, input: &str) -> Result<(KernelVersion, &'a str), VersionError> {
    let no_version = || VersionError::NoVersion { input: quote(input) };
    let (major, rest) = number(s, input)?.ok_or_else(no_version)?;
    let rest = rest.strip_prefix('.').ok_or_else(no_version)?;
    let (minor, mut rest) = number(rest, input)?.ok_or_else(no_version)?;
    let mut patch = None;
    if let Some(after_dot) = rest.strip_prefix('.') {
        if let Some((p, r)) = number(after_dot, input)? {
            patch = Some(p);
            rest = r;
        }
    }
    let mut rc = None;
    for sep in ["-rc", "~rc"] {
        if let Some(after) = rest.strip_prefix(sep) {
            if let Some((n, r)) = number(after, input)? {
                rc = Some(n);
                rest = r;
            }
        }
    }
    Ok((KernelVersion { major, minor, patch, rc }, rest))
}

/// The version at the start of a kernel release string (`uname -r`):
/// `6.12.117+deb13-cloud-amd64` is 6.12.117, `7.3.0-rc7+` is 7.3.0-rc7.
/// What follows the version is the builder's and is ignored.
pub fn parse_release(release: &str) -> Result<KernelVersion, VersionError> {
    let s = release.trim();
    if s.is_empty() {
        return Err(VersionError::Empty);
    }
    Ok(leading_version(s, release)?.0)
}

/// The upstream version in a Debian kernel package version:
/// `[EPOCH:]UPSTREAM[-REVISION]`, e.g. `6.12.95-1~bpo12+1` (a backport),
/// `7.3~rc7-1~exp1` (experimental's release candidate).
pub fn parse_debian_version(version: &str) -> Result<KernelVersion, VersionError> {
    let s = version.trim();
    if s.is_empty() {
        return Err(VersionError::Empty);
    }
    // An epoch is digits then ':'; kernels have none, but it is valid.
    let s = match s.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => s,
    };
    let (v, rest) = leading_version(s, version)?;
    // The upstream part ends at the revision's '-' (or a '+' suffix); a
    // digit or letter here would mean the version went on unparsed.
    match rest.chars().next() {
        None | Some('-' | '+' | '~') => Ok(v),
        Some(_) => Err(VersionError::NoVersion { input: quote(version) }),
    }
}

/// The Debian package version in `uname -v`
/// (`#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)`): the
/// package version string and the upstream version in it.
pub fn parse_uname_version(uname_v: &str) -> Result<(String, KernelVersion), VersionError> {
    let mut words = uname_v.split_whitespace();
    while let Some(w) = words.next() {
        if w == "Debian" {
            if let Some(pkg) = words.next() {
                return parse_debian_version(pkg).map(|v| (pkg.to_string(), v));
            }
        }
    }
    Err(VersionError::NoDebianVersion { input: quote(uname_v.trim()) })
}

/// Ubuntu's `/proc/version_signature` (`Ubuntu 6.8.0-45.45-generic
/// 6.8.12`): the distribution's package (`Ubuntu 6.8.0-45.45-generic`)
/// and the upstream version (the last word).
pub fn parse_version_signature(signature: &str) -> Result<(String, KernelVersion), VersionError> {
    let words: Vec<&str> = signature.split_whitespace().collect();
    let not_sig = || VersionError::NotASignature { input: quote(signature.trim()) };
    let [distro, package, upstream] = words.as_slice() else {
        return Err(not_sig());
    };
    if !distro.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(not_sig());
    }
    let v = parse_release(upstream)?;
    Ok((format!("{distro} {package}"), v))
}

/// The running kernel's release (`uname -r`): from
/// `/proc/sys/kernel/osrelease`, else uname(2), else `unknown`. Never
/// fails or panics, so crash reports can use it.
pub fn release() -> String {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_string();
        }
    }
    uname_release().unwrap_or_else(|| "unknown".into())
}

fn uname_release() -> Option<String> {
    // SAFETY: utsname is plain bytes; uname(2) fills it or fails.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes the struct we pass.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let s = String::from_utf8_lossy(&bytes).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The running kernel as gupwatch reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningKernel {
    /// `uname -r`.
    pub release: String,
    /// The version at the start of the release string, or why there is
    /// none.
    pub version: Result<KernelVersion, VersionError>,
    /// The distribution's package and its upstream version, when the
    /// kernel says (Debian's `uname -v`, Ubuntu's version signature).
    pub upstream: Option<(String, KernelVersion)>,
}

impl RunningKernel {
    /// From the strings the kernel gives (pure, for tests): the release,
    /// `uname -v`, and `/proc/version_signature` where it exists.
    pub fn from_strings(release: &str, uname_v: Option<&str>, signature: Option<&str>) -> RunningKernel {
        let upstream = signature
            .and_then(|s| parse_version_signature(s).ok())
            .or_else(|| uname_v.and_then(|v| parse_uname_version(v).ok()).map(|(pkg, v)| (format!("Debian {pkg}"), v)));
        RunningKernel { release: release.to_string(), version: parse_release(release), upstream }
    }

    /// The running kernel. Unreadable files leave the fields empty.
    pub fn here() -> RunningKernel {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        RunningKernel::from_strings(
            &release(),
            read("/proc/sys/kernel/version").as_deref(),
            read("/proc/version_signature").as_deref(),
        )
    }

    /// The version for rules that depend on one: the upstream version
    /// when the distribution gives it, else the release's. `None` when
    /// neither parses; callers then take their cautious default.
    pub fn version(&self) -> Option<KernelVersion> {
        self.upstream.as_ref().map(|(_, v)| *v).or_else(|| self.version.as_ref().ok().copied())
    }

    /// One line: `Linux 7.3-rc7 (Debian 7.3~rc7-1~exp1)`, or why the
    /// version is unknown.
    pub fn describe(&self) -> String {
        match (&self.upstream, &self.version) {
            (Some((pkg, v)), _) => format!("Linux {v} ({pkg}; release {})", self.release),
            (None, Ok(v)) => format!("Linux {v} (release {})", self.release),
            (None, Err(e)) => format!("release {:?}: version unknown ({e})", self.release),
        }
    }
}

/// What a kernel's version tells doctor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A released version.
    Release,
    /// A release candidate: its GUP functions may still change.
    PreRelease,
    /// The release string names no version, so the rules keyed on one
    /// take their cautious defaults.
    Unknown,
}

impl RunningKernel {
    /// The version's standing, what was found, and what to do about it
    /// (doctor's `kernel` finding).
    pub fn assess(&self) -> (Standing, String, Option<String>) {
        let what = self.describe();
        match (&self.version, self.version()) {
            (Err(_), _) => (
                Standing::Unknown,
                format!(
                    "{what}: where BTF cannot tell, gupwatch takes the older rules (the FOLL_* values of 5.8-6.2 \
                     without BTF; the capabilities of kernels before 5.8 kept after start)"
                ),
                Some(
                    "nothing if the other findings are ok; please report the output of `uname -rv` so gupwatch \
                     learns this release format"
                        .into(),
                ),
            ),
            (Ok(_), Some(v)) if v.is_prerelease() => (
                Standing::PreRelease,
                format!(
                    "{what}: a release candidate; its GUP functions may still change, so doctor's hook \
                     findings are tried on it, not assumed, and `gupwatch check` shows whether the counts are \
                     exact on it"
                ),
                None,
            ),
            (Ok(_), _) => (Standing::Release, what, None),
        }
    }
}

/// The `(major, minor)` of a release string, for rules keyed on it;
/// `None` when the string names no version.
pub fn release_major_minor(release: &str) -> Option<(u32, u32)> {
    parse_release(release).ok().map(|v| (v.major, v.minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: Option<u32>, rc: Option<u32>) -> KernelVersion {
        KernelVersion { major, minor, patch, rc }
    }

    #[test]
    fn release_strings() {
        // Debian stable (an ABI number, not the patch level), trixie, sid.
        assert_eq!(parse_release("6.1.0-50-cloud-amd64"), Ok(v(6, 1, Some(0), None)));
        assert_eq!(parse_release("6.12.117+deb13-cloud-amd64"), Ok(v(6, 12, Some(117), None)));
        assert_eq!(parse_release("7.2.13+deb14-cloud-amd64"), Ok(v(7, 2, Some(13), None)));
        // Experimental's split package names the ABI `7.3`.
        assert_eq!(parse_release("7.3-cloud-amd64"), Ok(v(7, 3, None, None)));
        assert_eq!(parse_release("7.3.0-rc7-cloud-amd64"), Ok(v(7, 3, Some(0), Some(7))));
        // Vanilla builds, Ubuntu, this project's build host.
        assert_eq!(parse_release("7.3.0-rc7+"), Ok(v(7, 3, Some(0), Some(7))));
        assert_eq!(parse_release("7.3-rc7"), Ok(v(7, 3, None, Some(7))));
        assert_eq!(parse_release("6.8.0-45-generic"), Ok(v(6, 8, Some(0), None)));
        assert_eq!(parse_release("6.18.44-fc-v857\n"), Ok(v(6, 18, Some(44), None)));
        assert_eq!(parse_release("5.10"), Ok(v(5, 10, None, None)));
        // "-rc" not followed by a number is the builder's suffix.
        assert_eq!(parse_release("6.6.0-rcfoo"), Ok(v(6, 6, Some(0), None)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse_release(""), Err(VersionError::Empty));
        assert_eq!(parse_release("  \n"), Err(VersionError::Empty));
        for bad in ["linux", "6", "6.", ".6.1", "6-1", "v6.1", "6..1", "x.y.z", "é.1", "🦀"] {
            assert!(
                matches!(parse_release(bad), Err(VersionError::NoVersion { .. })),
                "{bad:?}: {:?}",
                parse_release(bad)
            );
        }
        let huge = parse_release("99999999999.1");
        assert!(matches!(huge, Err(VersionError::OutOfRange { ref number, .. }) if number == "99999999999"), "{huge:?}");
        assert!(matches!(parse_release("6.99999999999"), Err(VersionError::OutOfRange { .. })));
        assert!(matches!(parse_release("6.1.99999999999"), Err(VersionError::OutOfRange { .. })));
        assert!(matches!(parse_release("7.3-rc99999999999"), Err(VersionError::OutOfRange { .. })));
        // A long garbage string is quoted shortened.
        let long = "x".repeat(10_000);
        let msg = parse_release(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        // Every prefix of real strings, and some bytes: errors or values, never a panic.
        for s in ["6.12.95-1~bpo12+1", "#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)", "Ubuntu 6.8.0-45.45-generic 6.8.12"] {
            for (i, _) in s.char_indices() {
                let _ = parse_release(&s[..i]);
                let _ = parse_debian_version(&s[..i]);
                let _ = parse_uname_version(&s[..i]);
                let _ = parse_version_signature(&s[..i]);
            }
        }
    }

    #[test]
    fn debian_package_versions() {
        assert_eq!(parse_debian_version("6.1.158-1"), Ok(v(6, 1, Some(158), None)));
        assert_eq!(parse_debian_version("6.12.95-1~bpo12+1"), Ok(v(6, 12, Some(95), None)));
        assert_eq!(parse_debian_version("7.2.13-1"), Ok(v(7, 2, Some(13), None)));
        assert_eq!(parse_debian_version("7.3~rc7-1~exp1"), Ok(v(7, 3, None, Some(7))));
        assert_eq!(parse_debian_version("1:7.3~rc7-1~exp1"), Ok(v(7, 3, None, Some(7))));
        assert_eq!(parse_debian_version("6.12.117"), Ok(v(6, 12, Some(117), None)));
        // The date aya 0.13 choked on follows the version: not part of it.
        assert!(parse_debian_version("7.3~rc7-1~exp1 (2026-10-16)").is_ok());
        for bad in ["", "exp1", "7", "7.3a-1", "7.3.x-1", ":7.3", "7.3rc7-1"] {
            assert!(parse_debian_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uname_v_strings() {
        let stable = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)";
        assert_eq!(parse_uname_version(stable), Ok(("6.1.158-1".into(), v(6, 1, Some(158), None))));
        let exp = "#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)";
        assert_eq!(parse_uname_version(exp), Ok(("7.3~rc7-1~exp1".into(), v(7, 3, None, Some(7)))));
        let bpo = "#1 SMP PREEMPT_DYNAMIC Debian 6.12.95-1~bpo12+1 (2026-07-01)";
        assert_eq!(parse_uname_version(bpo).map(|(_, v)| v), Ok(v(6, 12, Some(95), None)));
        // Ubuntu's and vanilla uname -v carry no version.
        for other in [
            "#45-Ubuntu SMP PREEMPT_DYNAMIC Fri Aug 30 12:02:04 UTC 2024",
            "#1 SMP PREEMPT_DYNAMIC Tue Oct 13 10:00:00 UTC 2026",
            "#1 SMP Debian",
            "",
        ] {
            assert!(matches!(parse_uname_version(other), Err(VersionError::NoDebianVersion { .. })), "{other:?}");
        }
        assert!(parse_uname_version("#1 SMP Debian garbage").is_err());
    }

    #[test]
    fn ubuntu_version_signature() {
        assert_eq!(
            parse_version_signature("Ubuntu 6.8.0-45.45-generic 6.8.12\n"),
            Ok(("Ubuntu 6.8.0-45.45-generic".into(), v(6, 8, Some(12), None)))
        );
        for bad in ["", "Ubuntu", "Ubuntu 6.8.0-45.45-generic", "Ubuntu a b", "6.8 6.8.0 6.8.12", "a b c d"] {
            assert!(parse_version_signature(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ordering_and_display() {
        let rc7 = parse_release("7.3.0-rc7+").unwrap();
        let rel = parse_release("7.3-cloud-amd64").unwrap();
        let sid = parse_release("7.2.13+deb14-cloud-amd64").unwrap();
        assert!(sid < rc7 && rc7 < rel, "{sid} < {rc7} < {rel}");
        assert!(parse_release("7.3.1").unwrap() > rel);
        assert!(parse_release("6.12.117").unwrap() > parse_release("6.12.95").unwrap());
        assert!(rc7.at_least(7, 3) && rc7.is_prerelease() && !rel.is_prerelease());
        assert!(!sid.at_least(7, 3) && sid.at_least(6, 3));
        assert_eq!(rc7.to_string(), "7.3.0-rc7");
        assert_eq!(parse_debian_version("7.3~rc7-1~exp1").unwrap().to_string(), "7.3-rc7");
        assert_eq!(sid.to_string(), "7.2.13");
    }

    #[test]
    fn running_kernel_prefers_the_upstream_version() {
        let k = RunningKernel::from_strings(
            "6.1.0-50-cloud-amd64",
            Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)\n"),
            None,
        );
        assert_eq!(k.version(), Some(v(6, 1, Some(158), None)));
        assert_eq!(k.describe(), "Linux 6.1.158 (Debian 6.1.158-1; release 6.1.0-50-cloud-amd64)");
        let u = RunningKernel::from_strings(
            "6.8.0-45-generic",
            Some("#45-Ubuntu SMP PREEMPT_DYNAMIC Fri Aug 30 12:02:04 UTC 2024"),
            Some("Ubuntu 6.8.0-45.45-generic 6.8.12"),
        );
        assert_eq!(u.version(), Some(v(6, 8, Some(12), None)));
        let vanilla = RunningKernel::from_strings("7.3.0-rc7+", Some("#1 SMP Tue Oct 13 2026"), None);
        assert_eq!(vanilla.version(), Some(v(7, 3, Some(0), Some(7))));
        assert_eq!(vanilla.describe(), "Linux 7.3.0-rc7 (release 7.3.0-rc7+)");
        // A release naming no version, rescued by Debian's uname -v.
        let odd = RunningKernel::from_strings("custom-kernel", Some("#1 SMP Debian 7.3~rc7-1~exp1 (2026-10-16)"), None);
        assert!(odd.version.is_err());
        assert_eq!(odd.version(), Some(v(7, 3, None, Some(7))));
        let none = RunningKernel::from_strings("garbage", Some("garbage"), Some("garbage"));
        assert_eq!(none.version(), None);
        assert!(none.describe().contains("version unknown"), "{}", none.describe());
    }

    #[test]
    fn standing_for_doctor() {
        let exp = RunningKernel::from_strings("7.3-cloud-amd64", Some("#1 SMP PREEMPT_DYNAMIC Debian 7.3~rc7-1~exp1 (2026-10-16)"), None);
        let (s, detail, fix) = exp.assess();
        assert_eq!(s, Standing::PreRelease);
        assert!(detail.starts_with("Linux 7.3-rc7 (Debian 7.3~rc7-1~exp1; release 7.3-cloud-amd64): a release candidate"), "{detail}");
        assert_eq!(fix, None);
        let sid = RunningKernel::from_strings("7.2.13+deb14-cloud-amd64", Some("#1 SMP PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-09-01)"), None);
        assert_eq!(sid.assess(), (Standing::Release, "Linux 7.2.13 (Debian 7.2.13-1; release 7.2.13+deb14-cloud-amd64)".into(), None));
        let (s, detail, fix) = RunningKernel::from_strings("my-kernel", None, None).assess();
        assert_eq!(s, Standing::Unknown);
        assert!(detail.contains("\"my-kernel\"") && detail.contains("older rules"), "{detail}");
        assert!(fix.is_some_and(|f| f.contains("uname -rv")));
    }

    #[test]
    fn release_of_this_machine() {
        let r = release();
        assert!(!r.is_empty() && r == r.trim());
        assert_eq!(uname_release().as_deref(), Some(r.as_str()), "osrelease and uname(2) agree");
        assert_eq!(release_major_minor("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(release_major_minor("7"), None);
    }
}
