//! Which cgroup, systemd unit, Kubernetes pod and container a pin belongs
//! to: cgroup v2 ids (what `bpf_get_current_cgroup_id()` returns, the
//! inode number of the cgroup's directory) resolved to paths under the
//! cgroup2 mount ([`CgroupNames`]), and paths parsed into the unit, pod
//! UID and container ID their managers encode in them ([`parse_path`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gup_common::{Api, ApiKind, AttribKey, AttribValue};
use gup_report::{CgroupInfo, CgroupPins, OTHER_CGROUP, UNKNOWN_CGROUP};

/// Unit suffixes systemd gives cgroups.
const UNIT_SUFFIXES: [&str; 2] = [".service", ".scope"];

/// Container runtimes' prefixes of a container's cgroup (systemd driver:
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`;
/// cgroupfs driver: `crio-<id>` or the bare id).
const RUNTIME_PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container ID in one path component, if it names a container.
fn container_of(component: &str) -> Option<String> {
    let base = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(base) {
        return Some(base.to_string());
    }
    RUNTIME_PREFIXES
        .iter()
        .find_map(|p| base.strip_prefix(p))
        .filter(|id| is_container_id(id))
        .map(str::to_string)
}

/// A pod UID in one path component: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_of(component: &str) -> Option<String> {
    let base = component.strip_suffix(".slice").unwrap_or(component);
    let at = base.rfind("pod")?;
    // `pod` must start the component or follow a `-`.
    if at > 0 && !base[..at].ends_with('-') {
        return None;
    }
    let uid = base[at + 3..].replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') && uid.matches('-').count() == 4;
    ok.then_some(uid)
}

/// What a cgroup path says: its innermost systemd unit, pod UID and
/// container ID, where it has them.
pub fn parse_path(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo { path: path.to_string(), ..Default::default() };
    let mut in_kubepods = false;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "kubepods" || c.starts_with("kubepods.") || c.starts_with("kubepods-") {
            in_kubepods = true;
        }
        if in_kubepods {
            if let Some(uid) = pod_of(c) {
                info.pod_uid = Some(uid);
            }
        }
        if let Some(id) = container_of(c) {
            info.container_id = Some(id);
        }
        if UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)) {
            info.unit = Some(c.to_string());
        }
    }
    info
}

/// cgroup v2 ids resolved to their paths, by walking the cgroup2 mount
/// and reading each directory's inode number (the id the kernel hands
/// BPF). Cached; an unknown id walks again, at most every
/// [`WALK_INTERVAL`].
#[derive(Debug)]
pub struct CgroupNames {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    /// When the mount was last walked: ids of removed cgroups stay
    /// unknown, and must not make every scrape walk again.
    walked_at: Option<Instant>,
}

/// The least time between two walks.
const WALK_INTERVAL: Duration = Duration::from_secs(5);

impl Default for CgroupNames {
    fn default() -> Self {
        CgroupNames::new("/sys/fs/cgroup")
    }
}

/// Directories walked at most, so a host with very many cgroups cannot
/// make a scrape slow.
const WALK_LIMIT: usize = 100_000;

impl CgroupNames {
    /// Ids under the cgroup2 mount at `root`.
    pub fn new(root: impl Into<PathBuf>) -> CgroupNames {
        CgroupNames { root: root.into(), by_id: HashMap::new(), walked_at: None }
    }

    /// The paths of `ids` (`None` for ids no longer there: the cgroup was
    /// removed).
    pub fn resolve(&mut self, ids: impl IntoIterator<Item = u64> + Clone) -> HashMap<u64, Option<String>> {
        let stale = self.walked_at.is_none_or(|t| t.elapsed() >= WALK_INTERVAL);
        if stale && ids.clone().into_iter().any(|id| !self.by_id.contains_key(&id)) {
            self.walk();
            self.walked_at = Some(Instant::now());
        }
        ids.into_iter().map(|id| (id, self.by_id.get(&id).cloned())).collect()
    }

    fn walk(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.by_id.clear();
        let mut stack = vec![self.root.clone()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > WALK_LIMIT {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            self.by_id.insert(meta.ino(), relative(&self.root, &dir));
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

fn relative(root: &Path, dir: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(p) if p.as_os_str().is_empty() => "/".to_string(),
        Ok(p) => format!("/{}", p.display()),
        Err(_) => dir.display().to_string(),
    }
}

/// How many cgroups get their own series and line by default: with
/// [`OTHER_CGROUP`] and [`UNKNOWN_CGROUP`], at most 7 series, which the
/// node's series budget leaves room for (docs/fleet.md).
pub const DEFAULT_TOP_CGROUPS: usize = 5;

/// The pins per cgroup as a table for `gupwatch leaks`.
pub fn cgroup_table(cs: &[CgroupPins]) -> String {
    let mut out = String::from("\npins held now by cgroup:\n");
    if cs.is_empty() {
        out += "  none\n";
        return out;
    }
    out += &format!("{:>9}  {:<60} {}\n", "PAGES", "CGROUP", "UNIT / POD / CONTAINER");
    for c in cs {
        let g = &c.cgroup;
        let mut who = vec![];
        if let Some(u) = &g.unit {
            who.push(format!("unit {u}"));
        }
        if let Some(p) = &g.pod_uid {
            who.push(format!("pod {p}"));
        }
        if let Some(id) = &g.container_id {
            who.push(format!("container {}", &id[..12.min(id.len())]));
        }
        out += &format!("{:>9}  {:<60} {}\n", c.pages, g.path, who.join(", "));
    }
    out
}

/// The cgroup of each process, from the attribution entries of its pin
/// calls (the cgroup at its first call from each site; the one with the
/// most pages where a process moved).
pub fn cgroup_of_processes(attrib: &[(AttribKey, AttribValue)]) -> HashMap<u32, u64> {
    let mut best: HashMap<u32, (u64, u64)> = HashMap::new();
    for (k, v) in attrib {
        if Api::from_index(k.api).is_none_or(|a| a.kind() != ApiKind::Pin) || v.cgroup_id == 0 {
            continue;
        }
        let e = best.entry(k.tgid).or_insert((v.cgroup_id, 0));
        if v.pages >= e.1 {
            *e = (v.cgroup_id, v.pages);
        }
    }
    best.into_iter().map(|(t, (c, _))| (t, c)).collect()
}

/// Pins held now per cgroup, largest first: the `top` largest by path,
/// the rest summed as [`OTHER_CGROUP`], pins of unknown cgroup as
/// [`UNKNOWN_CGROUP`]. `holdings` are (owner process, pins held).
pub fn pinned_by_cgroup(
    holdings: impl IntoIterator<Item = (u32, u64)>,
    cgroup_of: &HashMap<u32, u64>,
    names: &mut CgroupNames,
    top: usize,
) -> Vec<CgroupPins> {
    let mut by_id: HashMap<u64, u64> = HashMap::new();
    let mut unknown = 0u64;
    for (tgid, pages) in holdings {
        match cgroup_of.get(&tgid) {
            Some(id) => *by_id.entry(*id).or_default() += pages,
            None => unknown += pages,
        }
    }
    let paths = names.resolve(by_id.keys().copied().collect::<Vec<_>>());
    let mut by_path: HashMap<String, u64> = HashMap::new();
    for (id, pages) in by_id {
        match paths.get(&id).cloned().flatten() {
            Some(p) => *by_path.entry(p).or_default() += pages,
            None => unknown += pages,
        }
    }
    let mut ranked: Vec<(String, u64)> = by_path.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest: u64 = ranked.iter().skip(top).map(|(_, n)| n).sum();
    let mut out: Vec<CgroupPins> =
        ranked.into_iter().take(top).map(|(p, pages)| CgroupPins { cgroup: parse_path(&p), pages }).collect();
    for (path, pages) in [(OTHER_CGROUP, rest), (UNKNOWN_CGROUP, unknown)] {
        if pages > 0 {
            out.push(CgroupPins { cgroup: CgroupInfo { path: path.into(), ..Default::default() }, pages });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "2f1b6a0e9c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";

    #[test]
    fn systemd_units() {
        let i = parse_path("/system.slice/nginx.service");
        assert_eq!((i.unit.as_deref(), i.pod_uid, i.container_id), (Some("nginx.service"), None, None));
        let i = parse_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(i.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(parse_path("/").unit, None);
        assert_eq!(parse_path("/gupwatch-test").unit, None);
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let uid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        for qos in ["", "burstable/", "besteffort/"] {
            let i = parse_path(&format!("/kubepods/{qos}pod{uid}/{CID}"));
            assert_eq!(i.pod_uid.as_deref(), Some(uid), "{qos}");
            assert_eq!(i.container_id.as_deref(), Some(CID), "{qos}");
            assert_eq!(i.unit, None);
        }
        // CRI-O under cgroupfs names the container's cgroup crio-<id>.
        let i = parse_path(&format!("/kubepods/burstable/pod{uid}/crio-{CID}"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id.as_deref()), (Some(uid), Some(CID)));
        // The pod's own cgroup: a pod, no container.
        let i = parse_path(&format!("/kubepods/pod{uid}"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id), (Some(uid), None));
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let uid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        let under = uid.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            let p = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/{runtime}-{CID}.scope"
            );
            let i = parse_path(&p);
            assert_eq!(i.pod_uid.as_deref(), Some(uid), "{runtime}");
            assert_eq!(i.container_id.as_deref(), Some(CID), "{runtime}");
            assert_eq!(i.unit, Some(format!("{runtime}-{CID}.scope")));
        }
        // Guaranteed QoS pods sit right under kubepods.slice.
        let i = parse_path(&format!("/kubepods.slice/kubepods-pod{under}.slice/cri-containerd-{CID}.scope"));
        assert_eq!(i.pod_uid.as_deref(), Some(uid));
    }

    #[test]
    fn docker_without_kubernetes() {
        let i = parse_path(&format!("/docker/{CID}"));
        assert_eq!((i.container_id.as_deref(), i.pod_uid), (Some(CID), None));
        let i = parse_path(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.unit, Some(format!("docker-{CID}.scope")));
    }

    #[test]
    fn look_alikes_are_not_pods_or_containers() {
        // Too short to be a container id; "pod" inside a word; a pod outside kubepods.
        let i = parse_path("/system.slice/docker-abc123.scope");
        assert_eq!(i.container_id, None);
        assert_eq!(parse_path("/system.slice/ipodder.service").pod_uid, None);
        assert_eq!(parse_path("/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9").pod_uid, None);
        // crio's conmon scope is the monitor, not the container.
        assert_eq!(parse_path(&format!("/kubepods.slice/crio-conmon-{CID}.scope")).container_id, None);
    }

    fn entry(tgid: u32, api: Api, cgroup_id: u64, pages: u64) -> (AttribKey, AttribValue) {
        (AttribKey { tgid, api: api as u32, site: 1 }, AttribValue { cgroup_id, pages, ..AttribValue::ZERO })
    }

    #[test]
    fn processes_take_the_cgroup_of_their_pins() {
        let attrib = vec![
            entry(1, Api::PinUserPagesFast, 100, 5),
            // Moved later; fewer pages from there.
            entry(1, Api::PinUserPages, 200, 2),
            // Unpins and gets say nothing about who pins.
            entry(2, Api::UnpinUserPages, 300, 9),
            entry(3, Api::GetUserPagesFast, 300, 9),
            entry(4, Api::PinUserPagesRemote, 0, 9),
        ];
        let m = cgroup_of_processes(&attrib);
        assert_eq!(m.get(&1), Some(&100));
        assert_eq!((m.get(&2), m.get(&3), m.get(&4)), (None, None, None));
    }

    #[test]
    fn pins_add_up_per_cgroup_with_top_n_other_and_unknown() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let mut ids = vec![];
        for name in ["a.service", "b.service", "c.service"] {
            let d = root.path().join("system.slice").join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            ids.push(std::fs::metadata(&d).expect("stat").ino());
        }
        let mut names = CgroupNames::new(root.path());
        let cg: HashMap<u32, u64> =
            [(1, ids[0]), (2, ids[0]), (3, ids[1]), (4, ids[2]), (5, u64::MAX)].into_iter().collect();
        // tgid 6 has no cgroup (a shared folio's owner 0 is like it).
        let holdings = [(1, 100), (2, 28), (3, 64), (4, 8), (5, 3), (6, 1)];
        let got = pinned_by_cgroup(holdings, &cg, &mut names, 2);
        let flat: Vec<(&str, Option<&str>, u64)> =
            got.iter().map(|c| (c.cgroup.path.as_str(), c.cgroup.unit.as_deref(), c.pages)).collect();
        assert_eq!(
            flat,
            vec![
                ("/system.slice/a.service", Some("a.service"), 128),
                ("/system.slice/b.service", Some("b.service"), 64),
                (OTHER_CGROUP, None, 8),
                (UNKNOWN_CGROUP, None, 4),
            ]
        );
        assert_eq!(got.iter().map(|c| c.pages).sum::<u64>(), holdings.iter().map(|h| h.1).sum::<u64>(), "nothing lost");
    }

    #[test]
    fn the_table_names_unit_pod_and_short_container() {
        let p = format!("/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/cri-containerd-{CID}.scope");
        let t = cgroup_table(&[CgroupPins { cgroup: parse_path(&p), pages: 7 }]);
        assert!(t.contains(&format!("pod 0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9, container {}", &CID[..12])), "{t}");
        assert!(cgroup_table(&[]).contains("none"));
    }

    #[test]
    fn ids_resolve_to_paths_by_inode() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let leaf = root.path().join("kubepods/burstable/podx");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let ino = std::fs::metadata(&leaf).expect("stat").ino();
        let root_ino = std::fs::metadata(root.path()).expect("stat").ino();
        let mut names = CgroupNames::new(root.path());
        let got = names.resolve([ino, root_ino, u64::MAX]);
        assert_eq!(got[&ino].as_deref(), Some("/kubepods/burstable/podx"));
        assert_eq!(got[&root_ino].as_deref(), Some("/"));
        assert_eq!(got[&u64::MAX], None);
    }
}
