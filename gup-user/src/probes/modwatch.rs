//! Following the kernel modules that hooks sit on through unload and load.
//!
//! A kprobe on a module function lives exactly as long as that module's
//! instance: at `rmmod` the kernel marks it `[GONE]` (kprobes' module
//! notifier, at MODULE_STATE_GOING) and never revives it, even when the
//! module is loaded again, because a probe created through perf is not on
//! the list that trace_kprobe re-arms. So a hook is alive only while the
//! module instance it was attached to is, and gupwatch has to notice an
//! unload, detach, and attach fresh probes on the next instance.
//!
//! Two readings say which instance is loaded ([`ModuleInstance`]):
//!
//! - `/proc/modules`: the state (`Live`, `Loading`, `Unloading`) and the
//!   load address. The address reads as 0 to a reader without CAP_SYSLOG
//!   (kptr_restrict); the kernel decides by the credentials of whoever
//!   *opened* the file, so [`ModuleTable`] opens it once while gupwatch
//!   still has its capabilities and re-reads that descriptor afterwards.
//! - the inode of `/sys/module/NAME`: sysfs numbers its directories
//!   cyclically, so every load of a module gets a new one. This catches an
//!   unload and load between two looks even when the new instance lands at
//!   the same address (freed module memory is reused).
//!
//! And the kernel's own view of each probe, when debugfs is mounted:
//! `/sys/kernel/debug/kprobes/list` ([`KprobeList`]) lists every kprobe and
//! marks the ones of an unloaded module `[GONE]`. A module hook the kernel
//! does not list live counts as dead whatever the module table says.
//!
//! The bpf_link_info of a perf-event kprobe link (see [`crate::probes::linkinfo`])
//! carries the function name, offset, address and missed count, but no
//! "gone" flag, and its address reads as 0 without CAP_SYSLOG: it cannot
//! tell a dead probe from a live one, so it is not used here.
//!
//! Parsing is pure and unit-tested; the readings themselves only make sense
//! on a real kernel (see `cargo xtask i915`).

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;

/// Where the kernel lists its kprobes (debugfs).
pub const KPROBE_LIST: &str = "/sys/kernel/debug/kprobes/list";

/// A module's state, as `/proc/modules` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModState {
    /// Initialised: its symbols are final and its functions can be probed.
    Live,
    /// Still running its init.
    Loading,
    /// Being removed: its kprobes are (about to be) gone.
    Unloading,
}

/// One line of `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleLine {
    /// The module's name.
    pub name: String,
    /// Its state.
    pub state: ModState,
    /// Its load address (0 when hidden from the opener).
    pub addr: u64,
}

/// Parses `/proc/modules`: `name size refs deps state addr [taint]`.
/// Lines it cannot read are skipped (a newer format then hides a module,
/// which makes its hooks wait rather than count wrongly).
pub fn parse_proc_modules(text: &str) -> Vec<ModuleLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let state = match *f.get(4)? {
                "Live" => ModState::Live,
                "Loading" => ModState::Loading,
                "Unloading" => ModState::Unloading,
                _ => return None,
            };
            let addr = f.get(5).and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
            Some(ModuleLine { name: f[0].to_string(), state, addr })
        })
        .collect()
}

/// Which load of a module a hook was attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInstance {
    /// Load address from `/proc/modules` (0: hidden).
    pub addr: u64,
    /// Inode of `/sys/module/NAME` (None: unreadable).
    pub sysfs_ino: Option<u64>,
}

impl ModuleInstance {
    /// Whether `now` is the same load as `self`. Each reading that both
    /// sides have must agree; one that either lacks (a hidden address, no
    /// sysfs) proves nothing either way.
    pub fn same_as(&self, now: &ModuleInstance) -> bool {
        let addr_same = self.addr == 0 || now.addr == 0 || self.addr == now.addr;
        let ino_same = match (self.sysfs_ino, now.sysfs_ino) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        addr_same && ino_same
    }
}

/// What became of the instance a hook was attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still loaded and live.
    Same,
    /// Not loaded, or on its way out.
    Unloaded,
    /// Another instance is loaded: it was unloaded and loaded again
    /// between two looks.
    Reloaded,
}

impl Fate {
    /// The `reason` label of `gupwatch_probe_detached_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Fate::Same => "none",
            Fate::Unloaded => "module_unloaded",
            Fate::Reloaded => "module_reloaded",
        }
    }
}

/// One look at the loaded modules.
#[derive(Clone, Debug, Default)]
pub struct Modules {
    lines: HashMap<String, ModuleLine>,
    inodes: HashMap<String, Option<u64>>,
}

impl Modules {
    /// Builds a look from parsed lines and a sysfs inode reader (pure for
    /// tests; [`ModuleTable::look`] reads the real ones).
    pub fn from_parts(lines: Vec<ModuleLine>, ino: impl Fn(&str) -> Option<u64>) -> Modules {
        let inodes = lines.iter().map(|l| (l.name.clone(), ino(&l.name))).collect();
        Modules { lines: lines.into_iter().map(|l| (l.name.clone(), l)).collect(), inodes }
    }

    /// Whether the module is loaded and live.
    pub fn live(&self, name: &str) -> bool {
        self.lines.get(name).is_some_and(|l| l.state == ModState::Live)
    }

    /// The live instance of a module, if any.
    pub fn instance(&self, name: &str) -> Option<ModuleInstance> {
        let l = self.lines.get(name).filter(|l| l.state == ModState::Live)?;
        Some(ModuleInstance { addr: l.addr, sysfs_ino: self.inodes.get(name).copied().flatten() })
    }

    /// What became of `was`, an instance of `name`.
    pub fn fate(&self, name: &str, was: &ModuleInstance) -> Fate {
        match self.instance(name) {
            None => Fate::Unloaded,
            Some(now) if was.same_as(&now) => Fate::Same,
            Some(_) => Fate::Reloaded,
        }
    }
}

/// `/proc/modules`, opened once (see the module docs: the address column
/// follows the opener's credentials) and re-read at each look.
#[derive(Debug)]
pub struct ModuleTable {
    file: Option<std::fs::File>,
}

impl ModuleTable {
    /// Opens `/proc/modules`. Call it while gupwatch still holds its
    /// start-up capabilities; without the file every look reports no
    /// module, so module hooks wait instead of counting wrongly.
    pub fn open() -> ModuleTable {
        ModuleTable { file: std::fs::File::open("/proc/modules").ok() }
    }

    /// Reads the loaded modules now.
    pub fn look(&mut self) -> Modules {
        let mut text = String::new();
        let read = self.file.as_mut().is_some_and(|f| f.seek(SeekFrom::Start(0)).is_ok() && f.read_to_string(&mut text).is_ok());
        if !read {
            // Reopened without the start-up credentials: addresses may read
            // as 0, the sysfs inode still tells instances apart.
            text = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        }
        Modules::from_parts(parse_proc_modules(&text), sysfs_ino)
    }
}

/// The inode of `/sys/module/NAME` (see the module docs).
fn sysfs_ino(name: &str) -> Option<u64> {
    std::fs::metadata(format!("/sys/module/{name}")).ok().map(|m| m.ino())
}

/// One probe of the kernel's kprobe list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KprobeEntry {
    /// `k` (kprobe) or `r` (kretprobe).
    pub kind: char,
    /// The function it sits in; `None` when the kernel could not name its
    /// address (its module is gone).
    pub symbol: Option<String>,
    /// Marked `[GONE]`: its module was unloaded.
    pub gone: bool,
}

/// The kernel's kprobe list (`/sys/kernel/debug/kprobes/list`).
#[derive(Clone, Debug, Default)]
pub struct KprobeList {
    entries: Vec<KprobeEntry>,
}

impl KprobeList {
    /// Reads it; `None` when debugfs is not mounted or not readable.
    pub fn read() -> Option<KprobeList> {
        std::fs::read_to_string(KPROBE_LIST).ok().map(|t| KprobeList::parse(&t))
    }

    /// Parses lines like `ffffffffc0a1e2b4  k  i915_gem_userptr_ioctl+0x4  i915 [FTRACE]`
    /// (kernel/kprobes.c, `report_probe`); an unnamed address prints as
    /// `%pS` with no `+0x`.
    pub fn parse(text: &str) -> KprobeList {
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let _addr = f.next()?;
                let kind = f.next()?.chars().next()?;
                let place = f.next()?;
                let symbol = place.split_once("+0x").map(|(s, _)| s.to_string());
                Some(KprobeEntry { kind, symbol, gone: l.contains("[GONE]") })
            })
            .collect();
        KprobeList { entries }
    }

    /// Whether the kernel lists a live (not `[GONE]`) probe of this kind on
    /// `symbol`.
    pub fn live(&self, kind: char, symbol: &str) -> bool {
        self.entries.iter().any(|e| e.kind == kind && !e.gone && e.symbol.as_deref() == Some(symbol))
    }

    /// Whether a hook's probes are live in the kernel's view: its kprobe,
    /// and its kretprobe when it has one.
    pub fn hook_live(&self, symbol: &str, with_exit: bool) -> bool {
        self.live('k', symbol) && (!with_exit || self.live('r', symbol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULES: &str = "i915 4390912 0 - Live 0xffffffffc0a00000\n\
drm_buddy 20480 1 i915, Live 0x0000000000000000\n\
ttm 114688 1 i915, Unloading 0xffffffffc0900000 (E)\n\
ext4 1064960 1 - Loading 0xffffffffc0800000\n\
garbage line\n";

    #[test]
    fn proc_modules_lines_are_read() {
        let m = parse_proc_modules(MODULES);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0], ModuleLine { name: "i915".into(), state: ModState::Live, addr: 0xffffffffc0a00000 });
        assert_eq!((m[1].state, m[1].addr), (ModState::Live, 0), "hidden address");
        assert_eq!(m[2].state, ModState::Unloading);
        assert_eq!(m[3].state, ModState::Loading);
    }

    fn look(text: &str, ino: u64) -> Modules {
        Modules::from_parts(parse_proc_modules(text), |_| Some(ino))
    }

    #[test]
    fn an_unload_and_load_between_looks_is_a_new_instance() {
        let before = look(MODULES, 100);
        let was = before.instance("i915").unwrap();
        assert_eq!(before.fate("i915", &was), Fate::Same);
        // Gone, or going.
        assert_eq!(look("", 100).fate("i915", &was), Fate::Unloaded);
        let going = MODULES.replace("- Live 0xffffffffc0a00000", "- Unloading 0xffffffffc0a00000");
        assert_eq!(look(&going, 100).fate("i915", &was), Fate::Unloaded);
        // Same address, new sysfs directory: reloaded into the freed space.
        assert_eq!(look(MODULES, 101).fate("i915", &was), Fate::Reloaded);
        // New address, inode unreadable: still told apart.
        let moved = MODULES.replace("0xffffffffc0a00000", "0xffffffffc1a00000");
        let no_ino = Modules::from_parts(parse_proc_modules(&moved), |_| None);
        assert_eq!(no_ino.fate("i915", &was), Fate::Reloaded);
        // Still loading: not live yet, so not the instance hooked.
        let loading = MODULES.replace("- Live 0xffffffffc0a00000", "- Loading 0xffffffffc1a00000");
        assert!(!look(&loading, 102).live("i915"));
        assert_eq!(Fate::Reloaded.reason(), "module_reloaded");
    }

    #[test]
    fn hidden_readings_prove_nothing() {
        let a = ModuleInstance { addr: 0, sysfs_ino: Some(5) };
        assert!(a.same_as(&ModuleInstance { addr: 0xffffffffc0000000, sysfs_ino: Some(5) }));
        assert!(!a.same_as(&ModuleInstance { addr: 0, sysfs_ino: Some(6) }));
        assert!(ModuleInstance { addr: 7, sysfs_ino: None }.same_as(&ModuleInstance { addr: 7, sysfs_ino: Some(1) }));
    }

    #[test]
    fn the_kernel_list_says_which_probes_are_gone() {
        // As 7.2 prints it: live module probes, then the same ones after an
        // rmmod + insmod (raw addresses, [GONE]), and a vmlinux probe.
        let text = "ffffffffc0a1e2b4  k  i915_gem_userptr_ioctl+0x4  i915 [FTRACE]\n\
ffffffffc0a1e2b4  r  i915_gem_userptr_ioctl+0x4  i915 [FTRACE]\n\
ffffffffc0a1f000  k  0xffffffffc0a1f000 [GONE]\n\
ffffffffc0a1f000  r  i915_gem_userptr_put_pages+0x4  i915 [GONE][FTRACE]\n\
0000000000000000  k  pin_user_pages_fast+0x4   [FTRACE]\n";
        let l = KprobeList::parse(text);
        assert!(l.hook_live("i915_gem_userptr_ioctl", true));
        assert!(!l.hook_live("i915_gem_userptr_put_pages", true), "its kretprobe is gone");
        assert!(!l.live('k', "i915_gem_userptr_put_pages"), "not listed at all");
        assert!(l.hook_live("pin_user_pages_fast", false));
        assert!(!l.hook_live("pin_user_pages_fast", true), "no kretprobe listed");
        assert_eq!(l.entries[2].symbol, None);
    }
}
