//! Least privilege for the modes that keep running: `gupwatch run`, the
//! default summary mode and the local live view.
//!
//! Loading and attaching the probes needs root or CAP_BPF + CAP_PERFMON
//! (and reading `/proc/kallsyms` addresses needs CAP_SYSLOG or root). Once
//! that is done, what the process still does needs almost nothing:
//!
//! | what | needs |
//! |---|---|
//! | reading the BPF maps through the fds it holds | nothing on Linux 5.19+ (commit c8644cd0efe7 limited `kernel.unprivileged_bpf_disabled` to map creation and program load). Before 5.19, with that sysctl set, every `bpf()` call checks CAP_BPF (5.8-5.18) or CAP_SYS_ADMIN (older): those are kept there |
//! | detaching at exit | nothing: closing the link and program fds |
//! | `/proc/vmstat`, `/proc/<pid>` | nothing |
//! | writing `/proc/sys/vm/stat_refresh` (exact vmstat totals) | uid 0 (a DAC check on a root-owned 0200 file), no capability |
//! | symbolizing stacks | nothing: `/proc/kallsyms` is read once, before the drop |
//! | the reduced mode's accounted pins: `/proc/<pid>/status` | nothing |
//! | the reduced mode's accounted pins: `/proc/<pid>/fd` links and `fdinfo` of other processes (io_uring buffers) | CAP_SYS_PTRACE: both need ptrace read access, which the kernel refuses when the target's permitted capabilities are not a subset of the reader's (any root daemon, or a root `gupwatch workload --hold`, measured on Debian 7.2: with no capability left, every io_uring descriptor went unseen). Kept in the reduced mode, where no probe runs |
//! | naming the live holders of pins whose creator exited: `/proc/<pid>/fd` and `/proc/<pid>/maps` of other processes (`holders.rs`) | CAP_SYS_PTRACE, for the same reason (measured on Debian 7.2: without it a ring held by a root child of an exited creator was reported orphaned). Kept in the full mode where the probe plan records the objects behind pins (BTF) |
//! | reloading the config and the `--web-config` files (certificates) | uid 0 and root-owned files (no CAP_DAC_OVERRIDE) |
//! | attaching i915 hooks when the module loads later, or again after an unload (`gupwatch run` looks every second, the summary mode every interval) | CAP_BPF (program load) + CAP_PERFMON (kprobe perf event); CAP_SYS_ADMIN instead of CAP_PERFMON where `kernel.perf_event_paranoid` is above 2 (Debian's and Ubuntu's patch lets only CAP_SYS_ADMIN call perf_event_open(2) at 3, their default: measured on Debian 7.2, where CAP_PERFMON alone gets EACCES); CAP_SYS_ADMIN alone before 5.8 |
//!
//! So with no hook on a module no thread keeps **any capability** on
//! 5.19+ kernels. While hooks live on a module (i915, loaded or awaited),
//! `gupwatch run` keeps the late-attach capabilities in one thread only,
//! the one that follows the module (the HTTP workers and the reload thread
//! start after the others dropped them, with none), for as long as it
//! runs: a module can be unloaded and loaded again at any time, and each
//! load needs new kprobes (those of the previous load are dead). The
//! summary mode (one thread) keeps them the same way. The bounding and
//! ambient sets are cleared to match (so nothing this process runs can
//! regain more), and `PR_SET_NO_NEW_PRIVS` is set (no privilege through
//! setuid binaries or file capabilities either). The uid stays 0: files
//! and sysctls gupwatch reads are root's.
//!
//! Under systemd the unit's `CapabilityBoundingSet` is what the process
//! starts with. Listing CAP_SETPCAP there lets gupwatch empty its own
//! bounding set after attaching; without it the effective, permitted,
//! inheritable and ambient sets are still emptied, the bounding set stays
//! as the unit set it, and the log says so. CAP_SYS_ADMIN is needed only
//! on kernels before 5.8 (no CAP_BPF/CAP_PERFMON there).
//!
//! Capabilities are per thread: [`drop_privileges`] must run before the
//! process starts threads (the HTTP workers, the reload thread), which
//! inherit the reduced sets. The report counts the threads and says so if
//! others already existed.
//!
//! [`close_inherited_fds`] closes descriptors inherited from whoever
//! started gupwatch (a leaky shell, a service manager) before gupwatch
//! opens anything itself; [`fd_summary`] names what is open after the
//! drop (BPF maps, programs, links, perf events, the listening socket).

use std::{fmt, io, path::Path};

/// `CAP_SETPCAP`.
pub const CAP_SETPCAP: u32 = 8;
/// `CAP_SYS_PTRACE`.
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYSLOG`.
pub const CAP_SYSLOG: u32 = 34;
/// `CAP_PERFMON` (Linux 5.8+).
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u32 = 39;

const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];

/// The name of a capability (`CAP_BPF`), or `cap_N`.
pub fn cap_name(cap: u32) -> String {
    CAP_NAMES.get(cap as usize).map_or_else(|| format!("cap_{cap}"), |n| n.to_string())
}

/// What the process still does after loading and attaching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Hooks may still be attached later (an i915 hook waits for its
    /// module).
    pub late_attach: bool,
    /// What gates `bpf()` on the running kernel (from the probe plan).
    pub gates: crate::kernel::plan::BpfGates,
    /// `kernel.perf_event_paranoid` (None: unreadable). Above 2 (Debian's
    /// and Ubuntu's 3) perf_event_open(2), and so a kprobe, needs
    /// CAP_SYS_ADMIN.
    pub perf_event_paranoid: Option<i32>,
    /// `kernel.unprivileged_bpf_disabled` (None: unreadable).
    pub unprivileged_bpf_disabled: Option<u32>,
    /// The reduced mode runs: it reads other processes' descriptors for
    /// their io_uring buffers ([`crate::model::accounted`]).
    pub reads_other_processes: bool,
}

impl Needs {
    /// The needs on this host: the running kernel (as its probe plan
    /// describes it) and its sysctl.
    pub fn here(late_attach: bool, plan: &crate::kernel::plan::ProbePlan) -> Needs {
        Needs {
            late_attach,
            reads_other_processes: false,
            gates: plan.capabilities.bpf_gates,
            perf_event_paranoid: std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            unprivileged_bpf_disabled: std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }
}

/// The capabilities to keep, each with why. Pure: see the module docs.
pub fn capabilities_to_keep(needs: &Needs) -> Vec<(u32, &'static str)> {
    let has_cap_bpf = needs.gates.cap_bpf;
    let mut keep = vec![];
    let restricted_map_access = needs.gates.map_access_checked && needs.unprivileged_bpf_disabled != Some(0);
    if restricted_map_access {
        keep.push(if has_cap_bpf {
            (CAP_BPF, "reading the BPF maps: before Linux 5.19, kernel.unprivileged_bpf_disabled makes every bpf() call check CAP_BPF")
        } else {
            (CAP_SYS_ADMIN, "reading the BPF maps: before Linux 5.8 (no CAP_BPF), kernel.unprivileged_bpf_disabled makes every bpf() call check CAP_SYS_ADMIN")
        });
    }
    if needs.late_attach {
        if has_cap_bpf {
            if !keep.iter().any(|(c, _)| *c == CAP_BPF) {
                keep.push((CAP_BPF, "attaching i915 hooks when the module loads (again): loading their programs"));
            }
            // Unknown: both, the cautious side.
            let paranoid = needs.perf_event_paranoid;
            if paranoid.is_none_or(|p| p <= 2) {
                keep.push((CAP_PERFMON, "attaching i915 hooks when the module loads (again): kprobe perf events"));
            }
            if paranoid.is_none_or(|p| p > 2) {
                keep.push((CAP_SYS_ADMIN, "attaching i915 hooks when the module loads: kprobe perf events, which kernel.perf_event_paranoid above 2 (a Debian/Ubuntu patch) allows only with CAP_SYS_ADMIN"));
            }
        } else if keep.is_empty() {
            keep.push((CAP_SYS_ADMIN, "attaching i915 hooks when the module loads (before Linux 5.8)"));
        }
    }
    if needs.reads_other_processes {
        keep.push((CAP_SYS_PTRACE, "reading other processes' descriptors (/proc/PID/fd, fdinfo, maps): the reduced mode's accounted pins, the full mode's holders of pins whose creator exited"));
    }
    keep
}

/// The three capability sets of the calling thread (bit N = capability N).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets.
pub fn current() -> io::Result<CapSets> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) through the pointers we pass.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| f(&data[0]) as u64 | (f(&data[1]) as u64) << 32;
    Ok(CapSets { effective: join(|d| d.effective), permitted: join(|d| d.permitted), inheritable: join(|d| d.inheritable) })
}

fn set(s: CapSets) -> io::Result<()> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let split = |v: u64| [v as u32, (v >> 32) as u32];
    let (e, p, i) = (split(s.effective), split(s.permitted), split(s.inheritable));
    let data = [
        CapData { effective: e[0], permitted: p[0], inheritable: i[0] },
        CapData { effective: e[1], permitted: p[1], inheritable: i[1] },
    ];
    // SAFETY: capset reads the header and two CapData we pass.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the prctl options used here take integer arguments only.
    let r = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn names(mask: u64) -> Vec<String> {
    (0..64).filter(|c| mask & (1 << c) != 0).map(cap_name).collect()
}

/// What [`drop_privileges`] did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Capabilities kept, and why.
    pub kept: Vec<(u32, &'static str)>,
    /// The sets after the drop.
    pub after: CapSets,
    /// The bounding set was reduced to the kept capabilities.
    pub bounding_reduced: bool,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// Threads in the process at the drop (1 is right).
    pub threads: usize,
    /// Remarks (what could not be done, and why).
    pub notes: Vec<String>,
}

impl Report {
    /// `CAP_BPF, CAP_PERFMON` or `none`.
    pub fn kept_names(&self) -> String {
        let n = names(self.after.effective);
        if n.is_empty() {
            "none".into()
        } else {
            n.join(", ")
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "capabilities kept: {}", self.kept_names())?;
        for (c, why) in &self.kept {
            write!(f, "; {} for {why}", cap_name(*c))?;
        }
        write!(
            f,
            "; bounding set {}; no_new_privs {}",
            if self.bounding_reduced { "reduced to match" } else { "unchanged" },
            if self.no_new_privs { "on" } else { "off" }
        )?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// Drops every capability `needs` does not call for, from the effective,
/// permitted, inheritable, ambient and bounding sets of the calling
/// thread, and sets `PR_SET_NO_NEW_PRIVS`. Can be called again later to
/// drop more (never to regain). Run it before starting threads.
pub fn drop_privileges(needs: &Needs) -> io::Result<Report> {
    let before = current()?;
    let kept: Vec<(u32, &'static str)> =
        capabilities_to_keep(needs).into_iter().filter(|(c, _)| before.permitted & (1 << c) != 0).collect();
    let keep_mask = kept.iter().fold(0u64, |m, (c, _)| m | 1 << c);
    let mut notes = vec![];
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads > 1 {
        notes.push(format!(
            "{} other threads already running keep their own capabilities (capabilities are per thread)",
            threads - 1
        ));
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest just after.
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let mut bounding_reduced = true;
    if before.effective & (1 << CAP_SETPCAP) != 0 {
        for cap in (0..=last_cap.min(63)).filter(|c| keep_mask & (1 << c) == 0) {
            if let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    bounding_reduced = false;
                    notes.push(format!("bounding set: cannot drop {}: {e}", cap_name(cap)));
                    break;
                }
            }
        }
    } else {
        bounding_reduced = false;
        notes.push("bounding set unchanged: CAP_SETPCAP is not held (not root)".into());
    }
    // Linux 4.3+; EINVAL before, where there is no ambient set to clear.
    let _ = prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong);
    set(CapSets { effective: keep_mask, permitted: keep_mask, inheritable: 0 })?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    let after = current()?;
    if after.effective != keep_mask || after.permitted != keep_mask {
        return Err(io::Error::other(format!(
            "capabilities still held after the drop: effective {}, permitted {}",
            names(after.effective).join(","),
            names(after.permitted).join(",")
        )));
    }
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer.
    let no_new_privs = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
    Ok(Report { kept, after, bounding_reduced, no_new_privs, threads, notes })
}

/// The open descriptors of this process, as `(fd, what)` (`what` is the
/// `/proc/self/fd` link: a path, `socket:[N]`, `anon_inode:bpf-map`...).
pub fn open_fds() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return vec![] };
    // The listing's own descriptor shows as /proc/<pid>/fd: not ours to report.
    let listing = format!("/proc/{}/fd", std::process::id());
    let mut fds: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?.display().to_string();
            (target != listing).then_some((fd, target))
        })
        .collect();
    fds.sort();
    fds
}

/// Kinds of open descriptors with counts: `bpf-map 14, bpf-prog 40, ...`.
pub fn fd_summary() -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (fd, what) in open_fds() {
        let kind = match what.as_str() {
            _ if fd <= 2 => "stdio".to_string(),
            w if w.starts_with("anon_inode:") => {
                w.trim_start_matches("anon_inode:").trim_matches(|c| c == '[' || c == ']').replace('_', "-")
            }
            w if w.starts_with("socket:") => "socket".into(),
            w if w.starts_with("pipe:") => "pipe".into(),
            w => w.to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Closes every descriptor above 2 that this process inherited, and
/// returns what was closed. Call it first thing, before gupwatch opens
/// anything of its own (whatever is open above 2 then was inherited).
pub fn close_inherited_fds() -> Vec<(i32, String)> {
    // Collected first: the directory's own fd is in the list while reading
    // it, and is closed (EBADF below, harmless) when the listing ends.
    let inherited: Vec<(i32, String)> = open_fds().into_iter().filter(|(fd, _)| *fd > 2).collect();
    let mut closed = vec![];
    for (fd, what) in inherited {
        // SAFETY: closing a descriptor nothing in this process uses yet.
        if unsafe { libc::close(fd) } == 0 {
            closed.push((fd, what));
        }
    }
    closed
}

/// `NoNewPrivs`, `CapEff`... lines of `/proc/<pid>/status` (for logs and
/// tests).
pub fn status_lines(proc_status: &Path) -> Vec<String> {
    std::fs::read_to_string(proc_status)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(release: &str, sysctl: Option<u32>, late: bool) -> Vec<u32> {
        needs_paranoid(release, sysctl, late, Some(2))
    }

    fn needs_paranoid(release: &str, sysctl: Option<u32>, late: bool, paranoid: Option<i32>) -> Vec<u32> {
        capabilities_to_keep(&Needs {
            late_attach: late,
            gates: crate::kernel::plan::BpfGates::for_release(release),
            unprivileged_bpf_disabled: sysctl,
            perf_event_paranoid: paranoid,
            reads_other_processes: false,
        })
        .into_iter()
        .map(|(c, _)| c)
        .collect()
    }

    #[test]
    fn what_is_kept_where() {
        // 5.19+: map reads need nothing, whatever the sysctl says.
        assert_eq!(needs("6.12.117+deb13-cloud-amd64", Some(2), false), Vec::<u32>::new());
        assert_eq!(needs("6.1.0-37-cloud-amd64", Some(2), false), Vec::<u32>::new());
        assert_eq!(needs("7.2.0", None, false), Vec::<u32>::new());
        // Late attach needs program load and kprobes.
        assert_eq!(needs("6.12.0", Some(2), true), [CAP_BPF, CAP_PERFMON]);
        // Before 5.19 with the sysctl set: CAP_BPF for every bpf() call.
        assert_eq!(needs("5.15.0-100-generic", Some(2), false), [CAP_BPF]);
        assert_eq!(needs("5.15.0-100-generic", Some(0), false), Vec::<u32>::new());
        assert_eq!(needs("5.15.0", None, true), [CAP_BPF, CAP_PERFMON]);
        // Debian's perf_event_paranoid=3: kprobes need CAP_SYS_ADMIN.
        assert_eq!(needs_paranoid("7.2.13+deb14-amd64", Some(2), true, Some(3)), [CAP_BPF, CAP_SYS_ADMIN]);
        assert_eq!(needs_paranoid("7.2.13+deb14-amd64", Some(2), false, Some(3)), Vec::<u32>::new());
        assert_eq!(needs_paranoid("6.12.0", Some(2), true, None), [CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN]);
        // Before 5.8: CAP_SYS_ADMIN.
        assert_eq!(needs("5.4.0", Some(1), false), [CAP_SYS_ADMIN]);
        assert_eq!(needs("5.4.0", Some(1), true), [CAP_SYS_ADMIN]);
        // Unparsable release: the cautious side.
        assert_eq!(needs("weird", Some(2), false), [CAP_SYS_ADMIN]);
    }

    #[test]
    fn versions_and_names() {
        // Release candidates keep what their release would (7.3-rc7 is
        // past 5.19), not the cautious pre-5.8 set of an unknown version.
        for rc in ["7.3-cloud-amd64", "7.3.0-rc7+", "7.3.0-rc7-cloud-amd64"] {
            assert_eq!(needs(rc, Some(2), true), needs("6.12.117+deb13-cloud-amd64", Some(2), true), "{rc}");
        }
        assert_ne!(needs("7.3.0-rc7+", Some(2), true), needs("garbage", Some(2), true));
        assert_eq!(cap_name(CAP_BPF), "CAP_BPF");
        assert_eq!(cap_name(CAP_PERFMON), "CAP_PERFMON");
        assert_eq!(cap_name(CAP_SYSLOG), "CAP_SYSLOG");
        assert_eq!(cap_name(63), "cap_63");
    }

    /// A real drop, in a thread of its own (capabilities are per thread,
    /// so the rest of the test process keeps its own).
    #[test]
    fn drop_in_a_thread() {
        let r = std::thread::spawn(|| {
            let before = current().unwrap();
            let report = drop_privileges(&Needs {
                late_attach: false,
                gates: crate::kernel::plan::BpfGates::for_release("6.12.0"),
                unprivileged_bpf_disabled: Some(2),
                perf_event_paranoid: Some(2),
                reads_other_processes: false,
            })
            .unwrap();
            (before, report, status_lines(Path::new("/proc/thread-self/status")))
        })
        .join()
        .unwrap();
        let (before, report, status) = r;
        assert_eq!(report.after, CapSets::default(), "{report}");
        assert_eq!(report.kept_names(), "none");
        assert!(report.no_new_privs);
        assert!(status.iter().any(|l| l == "NoNewPrivs:\t1"), "{status:?}");
        assert!(status.iter().any(|l| l == "CapEff:\t0000000000000000"), "{status:?}");
        if before.effective & (1 << CAP_SETPCAP) != 0 {
            assert!(report.bounding_reduced, "{report}");
            assert!(status.iter().any(|l| l == "CapBnd:\t0000000000000000"), "{status:?}");
        }
        // This thread still has what it had.
        assert_eq!(current().unwrap(), before);
    }

    #[test]
    fn fds_are_named() {
        let s = fd_summary();
        assert!(s.contains("stdio"), "{s}");
    }

    #[test]
    fn the_reduced_mode_keeps_ptrace_read_only() {
        let mut n = Needs {
            late_attach: false,
            gates: crate::kernel::plan::BpfGates::for_release("7.2.13"),
            perf_event_paranoid: Some(2),
            unprivileged_bpf_disabled: Some(2),
            reads_other_processes: false,
        };
        assert!(!capabilities_to_keep(&n).iter().any(|(c, _)| *c == CAP_SYS_PTRACE));
        n.reads_other_processes = true;
        assert_eq!(capabilities_to_keep(&n).iter().map(|(c, _)| *c).collect::<Vec<_>>(), [CAP_SYS_PTRACE]);
        assert_eq!(cap_name(CAP_SYS_PTRACE), "CAP_SYS_PTRACE");
    }
}
