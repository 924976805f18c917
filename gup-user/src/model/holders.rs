//! The live holders of the objects behind pins (`gup_common::object`): the
//! processes that have the file open (`/proc/<pid>/fd`) or mapped
//! (`/proc/<pid>/maps`: an io_uring ring's mapped queues hold it as an open
//! descriptor does). Looked up only for the objects whose creator has
//! exited, at most once per leak reading, and only matches are kept, so
//! memory stays bounded by the holders found.
//!
//! Objects are named by inode (device and number). Every io_uring ring has
//! an inode of its own (`anon_inode_getfile_secure()`/
//! `anon_inode_create_getfile()` make one per ring on 6.1 to 7.2); a
//! character device's inode is shared by all who open it
//! ([`PinObject::identifies_file`]), so those objects are found by their
//! `struct file` with the kernel's task-file iterator ([`iter`]), where the
//! kernel allows it.

pub mod iter;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
};

use gup_common::object::{HolderRecord, PinObject};

use gup_report::ObjectHolder;
pub use iter::HolderIter;

/// The live holders of each object looked up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holders {
    /// Object → the processes that hold it.
    pub by_object: BTreeMap<PinObject, Vec<ObjectHolder>>,
    /// Processes whose descriptor table could not be read (no
    /// CAP_SYS_PTRACE for another root process): a holder among them
    /// goes unnamed.
    pub unreadable: usize,
    /// Why character-device objects' holders could not be looked for (no
    /// holder iterator, or its run failed): their pins read as orphaned.
    pub file_lookup_failed: Option<String>,
}

/// (major, minor, inode) as `stat` and `/proc/<pid>/maps` show them.
type InodeKey = (u32, u32, u64);

fn key(o: &PinObject) -> InodeKey {
    let (major, minor) = o.major_minor();
    (major, minor, o.ino)
}

/// The holders of each of `objects` among the processes under `proc_root`
/// (`/proc`). Objects that identify no file are left out.
pub fn find(proc_root: &Path, objects: &[PinObject]) -> Holders {
    let wanted: BTreeMap<InodeKey, PinObject> =
        objects.iter().filter(|o| o.identifies_file()).map(|o| (key(o), *o)).collect();
    let mut found: BTreeMap<PinObject, BTreeSet<ObjectHolder>> = BTreeMap::new();
    let mut unreadable = 0;
    if wanted.is_empty() {
        return Holders::default();
    }
    let Ok(dir) = fs::read_dir(proc_root) else { return Holders::default() };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let base = entry.path();
        let Some(mut hits) = fd_hits(&base, &wanted) else {
            unreadable += 1;
            continue;
        };
        hits.extend(map_hits(&base, &wanted));
        if hits.is_empty() {
            continue;
        }
        let holder = holder_at(pid, &base);
        for o in hits {
            found.entry(o).or_default().insert(holder.clone());
        }
    }
    Holders {
        by_object: found.into_iter().map(|(o, h)| (o, h.into_iter().collect())).collect(),
        unreadable,
        file_lookup_failed: None,
    }
}

fn holder_at(pid: u32, base: &Path) -> ObjectHolder {
    ObjectHolder { pid, comm: read_trimmed(&base.join("comm")), cgroup: cgroup_of(base) }
}

/// [`find`] under this machine's `/proc`, for inode-named objects only
/// (no holder iterator).
pub fn live(objects: &[PinObject]) -> Holders {
    live_with(objects, Err("no probes loaded"))
}

/// The live holders of `objects`: inode-named ones from `/proc`, character
/// devices by their open file through `iter` (or the reason there is
/// none), run once and only when such an object is asked about.
pub fn live_with(objects: &[PinObject], iter: Result<&std::sync::Mutex<HolderIter>, &str>) -> Holders {
    let mut holders = find(Path::new("/proc"), objects);
    let files: BTreeSet<u64> = objects.iter().filter(|o| o.needs_file_lookup()).map(|o| o.file()).collect();
    if files.is_empty() {
        return holders;
    }
    let files: Vec<u64> = files.into_iter().collect();
    let run = match iter {
        Ok(m) => match m.lock() {
            Ok(mut it) => it.run(&files).map_err(|e| e.to_string()),
            Err(_) => Err("the holder iterator's lock is poisoned".to_string()),
        },
        Err(why) => Err(why.to_string()),
    };
    match run {
        Ok(records) => add_file_holders(&mut holders, objects, &records, Path::new("/proc")),
        Err(why) => holders.file_lookup_failed = Some(why),
    }
    holders
}

/// Adds the holders the iterator found (one record per descriptor) to the
/// character-device objects whose file they have open.
fn add_file_holders(holders: &mut Holders, objects: &[PinObject], records: &[HolderRecord], proc_root: &Path) {
    let mut found: BTreeMap<PinObject, BTreeSet<ObjectHolder>> = BTreeMap::new();
    let mut seen: BTreeMap<u32, ObjectHolder> = BTreeMap::new();
    for r in records {
        let holder = seen.entry(r.tgid).or_insert_with(|| holder_at(r.tgid, &proc_root.join(r.tgid.to_string())));
        for o in objects.iter().filter(|o| o.needs_file_lookup() && o.file() == r.file) {
            found.entry(*o).or_default().insert(holder.clone());
        }
    }
    for (o, h) in found {
        holders.by_object.insert(o, h.into_iter().collect());
    }
}

/// The wanted objects among a process's open descriptors; none when the
/// table may not be read (a process that exited meanwhile has none).
fn fd_hits(base: &Path, wanted: &BTreeMap<InodeKey, PinObject>) -> Option<BTreeSet<PinObject>> {
    let fds = match fs::read_dir(base.join("fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
        Err(_) => return Some(BTreeSet::new()),
    };
    let hits = fds
        .flatten()
        .filter_map(|fd| {
            // stat() follows the magic link to the open file's inode.
            let m = fs::metadata(fd.path()).ok()?;
            let dev = m.dev();
            wanted.get(&(libc::major(dev), libc::minor(dev), m.ino())).copied()
        })
        .collect();
    Some(hits)
}

/// The wanted objects among a process's mappings.
fn map_hits(base: &Path, wanted: &BTreeMap<InodeKey, PinObject>) -> BTreeSet<PinObject> {
    let Ok(text) = fs::read_to_string(base.join("maps")) else { return BTreeSet::new() };
    text.lines().filter_map(|l| parse_map_line(l).and_then(|k| wanted.get(&k).copied())).collect()
}

/// (major, minor, inode) of a `/proc/<pid>/maps` line
/// (`start-end perms offset MM:mm inode path`); none for anonymous memory.
fn parse_map_line(line: &str) -> Option<InodeKey> {
    let mut f = line.split_whitespace().skip(3);
    let (major, minor) = f.next()?.split_once(':')?;
    let ino = f.next()?.parse::<u64>().ok().filter(|i| *i != 0)?;
    Some((u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?, ino))
}

fn read_trimmed(p: &Path) -> String {
    fs::read_to_string(p).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// The process's cgroup v2 path (`0::/path`), or its first line.
fn cgroup_of(base: &Path) -> String {
    let text = read_trimmed(&base.join("cgroup"));
    text.lines().find_map(|l| l.strip_prefix("0::")).map_or_else(|| text.lines().next().unwrap_or("").to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_name_their_inode() {
        assert_eq!(parse_map_line("7f00-7f01 rw-s 00000000 00:0e 5123   anon_inode:[io_uring]"), Some((0, 14, 5123)));
        assert_eq!(parse_map_line("7f00-7f01 rw-p 00000000 00:00 0"), None);
        assert_eq!(parse_map_line("garbage"), None);
    }

    /// A fake /proc: a process whose fd 3 is a file of ours (its inode is
    /// the object) and one whose maps name it; character devices are never
    /// looked up.
    #[test]
    fn finds_holders_by_descriptor_and_mapping() {
        let root = std::env::temp_dir().join(format!("gupwatch-holders-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let target = root.join("ring");
        fs::create_dir_all(root.join("10/fd")).unwrap();
        fs::create_dir_all(root.join("11/fd")).unwrap();
        fs::write(&target, b"").unwrap();
        let m = fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, root.join("10/fd/3")).unwrap();
        fs::write(root.join("10/comm"), "child\n").unwrap();
        fs::write(root.join("10/cgroup"), "0::/app.slice\n").unwrap();
        let line = format!("7f00-7f01 rw-s 0 {:02x}:{:02x} {} /ring\n", libc::major(m.dev()), libc::minor(m.dev()), m.ino());
        fs::write(root.join("11/maps"), line).unwrap();
        fs::write(root.join("11/comm"), "mapper\n").unwrap();
        let dev = (libc::major(m.dev()) << 20) | libc::minor(m.dev());
        let obj = PinObject { ino: m.ino(), dev, mode: 0o100644, _pad: 0 };
        let chr = PinObject { mode: gup_common::object::S_IFCHR, ..obj };
        let found = find(&root, &[obj, chr]);
        let _ = fs::remove_dir_all(&root);
        assert_eq!(found.unreadable, 0);
        let pids: Vec<(u32, &str, &str)> = found.by_object[&obj].iter().map(|h| (h.pid, h.comm.as_str(), h.cgroup.as_str())).collect();
        assert_eq!(pids, [(10, "child", "/app.slice"), (11, "mapper", "")]);
        assert!(!found.by_object.contains_key(&chr));
    }

    /// The iterator's records name the holders of character-device objects
    /// by their open file: two processes with the same file (a fork) both
    /// hold it; another open file of the same device is held by nobody.
    #[test]
    fn iterator_records_name_file_holders() {
        let root = std::env::temp_dir().join(format!("gupwatch-fileholders-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("20")).unwrap();
        fs::write(root.join("20/comm"), "verbs-child\n").unwrap();
        fs::write(root.join("20/cgroup"), "0::/rdma.slice\n").unwrap();
        let mode = gup_common::object::S_IFCHR | 0o666;
        let held = PinObject { ino: 0xffff_8880_0000_1000, dev: 5, mode, _pad: 0 };
        let other = PinObject { ino: 0xffff_8880_0000_2000, ..held };
        let records = [
            HolderRecord { tgid: 20, fd: 3, file: held.file() },
            HolderRecord { tgid: 20, fd: 9, file: held.file() },
            HolderRecord { tgid: 21, fd: 4, file: held.file() },
            HolderRecord { tgid: 22, fd: 4, file: 0xffff_8880_0000_3000 },
        ];
        let mut h = Holders::default();
        add_file_holders(&mut h, &[held, other], &records, &root);
        let _ = fs::remove_dir_all(&root);
        let names: Vec<(u32, &str, &str)> = h.by_object[&held].iter().map(|x| (x.pid, x.comm.as_str(), x.cgroup.as_str())).collect();
        assert_eq!(names, [(20, "verbs-child", "/rdma.slice"), (21, "", "")]);
        assert!(!h.by_object.contains_key(&other));
    }

    #[test]
    fn no_iterator_says_why_for_character_devices_only() {
        let chr = PinObject { ino: 0xffff_8880_0000_1000, dev: 5, mode: gup_common::object::S_IFCHR, _pad: 0 };
        assert_eq!(live_with(&[chr], Err("refused")).file_lookup_failed.as_deref(), Some("refused"));
        let ring = PinObject { mode: 0o600, ..chr };
        assert_eq!(live_with(&[ring], Err("refused")).file_lookup_failed, None);
    }
}
