//! Kernel modules for the guest: find them in a module tree, resolve their
//! dependencies, decompress them, and give them in load order.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod writes it when the
//! package is installed), so when the file is absent the dependencies are
//! read from each module's own `.modinfo` `depends=` field, which is the same
//! information depmod uses to write it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// Modules every guest wants when they are not built in: the virtio
/// transport, the scratch disk and its filesystem, the network card for
/// port forwarding, and loop devices. (BPF, kprobes and io_uring are
/// `bool` options: never modules.)
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ext4",
    "loop",
    "af_packet",
];

/// Modules loaded when the kernel has them, and not missed when it does
/// not: where ext4 is modular it asks the crypto API for "crc32c" at mount
/// time, which needs modprobe unless a provider is already loaded (its name
/// changed in 7.x).
pub const OPTIONAL_GUEST_MODULES: &[&str] = &["crc32c_intel", "crc32c_generic", "crc32c_cryptoapi"];

/// Normalises a module name the way the kernel does (`-` and `_` are equal).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path such as `kernel/fs/ext4/ext4.ko.xz`.
pub fn name_from_path(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// Parses `modules.dep`: `kernel/a.ko.xz: kernel/b.ko.xz kernel/c.ko.xz`,
/// giving module name -> (path, dependency names).
pub fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim();
        let Some(name) = name_from_path(module) else {
            continue;
        };
        let deps = deps.split_whitespace().filter_map(name_from_path).collect();
        map.insert(name, (module.to_string(), deps));
    }
    map
}

/// Parses `modules.builtin` (one path per line) into module names.
pub fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| name_from_path(l.trim()))
        .collect()
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(normalize)
                .collect()
        })
        .unwrap_or_default()
}

/// The bytes of the `.modinfo` section of an ELF64 little-endian object.
pub fn modinfo_section(elf: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    // ELF64 (class 2), little-endian (data 1).
    if elf.get(0..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3A)?;
    let shnum = u16_at(0x3C)?;
    let shstrndx = u16_at(0x3E)?;
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let name_bytes = strtab.get(name..)?;
        let end = name_bytes.iter().position(|&b| b == 0)?;
        if &name_bytes[..end] == b".modinfo" {
            elf.get(off..off.checked_add(size)?)
        } else {
            None
        }
    })
}

/// Reads a module file, decompressing `.xz`, `.zst` and `.gz` with the
/// command-line tools (busybox `insmod` only takes plain ELF objects).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<(&str, &str)> = if name.ends_with(".xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some((prog, pkg)) => {
            let out = Command::new(prog)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| {
                    format!("running `{prog} -dc` (install {pkg}, or run `cargo xtask setup`)")
                })?;
            if !out.status.success() {
                bail!(
                    "`{prog} -dc {}` failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

/// A module ready for the initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    /// Normalised module name.
    pub name: String,
    /// Decompressed ELF object.
    pub data: Vec<u8>,
}

/// Outcome of resolving the wanted modules.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Modules in load order (dependencies first).
    pub modules: Vec<Module>,
    /// Wanted names that are built into the kernel.
    pub builtin: Vec<String>,
    /// Wanted names that are neither modules nor listed as built in.
    pub missing: Vec<String>,
}

/// The modules of one kernel's module tree.
pub struct ModuleTree {
    dir: PathBuf,
    /// name -> path relative to `dir`.
    files: HashMap<String, String>,
    /// From modules.dep, when the tree has one.
    dep: Option<HashMap<String, (String, Vec<String>)>>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Indexes a module tree (`.../lib/modules/<uname>`).
    pub fn open(dir: &Path) -> Result<ModuleTree> {
        if !dir.is_dir() {
            bail!("module directory {} does not exist", dir.display());
        }
        let mut files = HashMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for e in entries {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    let rel = rel.to_string_lossy().into_owned();
                    if let Some(name) = name_from_path(&rel) {
                        files.insert(name, rel);
                    }
                }
            }
        }
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .ok()
            .map(|t| parse_modules_dep(&t));
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| parse_builtin(&t))
            .unwrap_or_default();
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            dep,
            builtin,
        })
    }

    /// Resolves `wanted` (and their dependencies) into load order.
    pub fn resolve(&self, wanted: &[String]) -> Result<Resolved> {
        let mut out = Resolved::default();
        let mut done: HashSet<String> = HashSet::new();
        for w in wanted {
            let w = normalize(w);
            if !self.files.contains_key(&w) {
                if self.builtin.contains(&w) {
                    out.builtin.push(w);
                } else {
                    out.missing.push(w);
                }
                continue;
            }
            self.visit(&w, &mut done, &mut Vec::new(), &mut out.modules)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let Some(rel) = self.files.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            bail!(
                "module {name} (needed by {}) is not in {}",
                path.last().map(String::as_str).unwrap_or("?"),
                self.dir.display()
            );
        };
        let data = read_module(&self.dir.join(rel))?;
        let deps = match &self.dep {
            Some(dep) => dep.get(name).map(|(_, d)| d.clone()).unwrap_or_default(),
            None => modinfo_section(&data)
                .map(modinfo_depends)
                .unwrap_or_default(),
        };
        path.push(name.to_string());
        for d in &deps {
            self.visit(d, done, path, out)?;
        }
        path.pop();
        done.insert(name.to_string());
        out.push(Module {
            name: name.to_string(),
            data,
        });
        Ok(())
    }
}

/// Convenience: resolve the wanted modules of a tree, or nothing without one.
pub fn resolve_for_guest(dir: Option<&Path>, extra: &[String]) -> Result<Resolved> {
    let mut wanted: Vec<String> = GUEST_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(OPTIONAL_GUEST_MODULES.iter().map(|s| s.to_string()));
    wanted.extend(extra.iter().cloned());
    match dir {
        None => Ok(Resolved::default()),
        Some(d) => {
            let mut r = ModuleTree::open(d)?.resolve(&wanted)?;
            r.missing
                .retain(|m| !OPTIONAL_GUEST_MODULES.contains(&m.as_str()));
            r.builtin
                .retain(|m| !OPTIONAL_GUEST_MODULES.contains(&m.as_str()));
            Ok(r)
        }
    }
}

/// The modules `deferred` needs (with their dependencies, in load order)
/// beyond those `boot` already loads, for shipping in the initramfs
/// without loading them at boot.
pub fn resolve_deferred(
    dir: Option<&Path>,
    extra: &[String],
    deferred: &[String],
    boot: &Resolved,
) -> Result<Vec<Module>> {
    let Some(d) = dir else {
        bail!("no module tree for this kernel: cannot ship {}", deferred.join(" "));
    };
    let mut wanted: Vec<String> = extra.to_vec();
    wanted.extend(deferred.iter().cloned());
    let all = ModuleTree::open(d)?.resolve(&wanted)?;
    let missing: Vec<&String> = deferred.iter().filter(|w| all.missing.contains(&normalize(w))).collect();
    if !missing.is_empty() {
        bail!(
            "module(s) {} not in {} (the generic flavour carries i915: --flavour generic)",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
            d.display()
        );
    }
    Ok(all
        .modules
        .into_iter()
        .filter(|m| !boot.modules.iter().any(|b| b.name == m.name))
        .collect())
}

/// Whether the tools to decompress modules exist (for `setup` to report).
pub fn have_decompressors() -> bool {
    util::have_program("xz") && util::have_program("zstd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(
            name_from_path("kernel/fs/ext4/ext4.ko.xz").as_deref(),
            Some("ext4")
        );
        assert_eq!(
            name_from_path("kernel/crypto/crc32c-cryptoapi.ko.zst").as_deref(),
            Some("crc32c_cryptoapi")
        );
        assert_eq!(
            name_from_path("kernel/drivers/block/loop.ko").as_deref(),
            Some("loop")
        );
        assert_eq!(name_from_path("modules.order"), None);
    }

    #[test]
    fn modules_dep_parsing() {
        let text = "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
                    kernel/net/core/failover.ko.xz:\n\
                    kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n";
        let dep = parse_modules_dep(text);
        assert_eq!(dep["virtio_net"].1, vec!["net_failover", "failover"]);
        assert_eq!(dep["virtio_net"].0, "kernel/drivers/net/virtio_net.ko.xz");
        assert!(dep["failover"].1.is_empty());
    }

    #[test]
    fn modinfo_parsing() {
        let sec = b"license=GPL\0depends=net_failover,virtio-ring\0intree=Y\0name=virtio_net\0";
        assert_eq!(modinfo_depends(sec), vec!["net_failover", "virtio_ring"]);
        assert!(modinfo_depends(b"license=GPL\0depends=\0").is_empty());
        assert!(modinfo_depends(b"license=GPL\0").is_empty());
    }

    /// A minimal ELF64 LE object with a null section, `.modinfo` and `.shstrtab`.
    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() & 7 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, str_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn elf_modinfo_section() {
        let info = b"depends=jbd2,mbcache\0name=ext4\0";
        let elf = tiny_elf(info);
        assert_eq!(modinfo_section(&elf), Some(&info[..]));
        assert_eq!(
            modinfo_depends(modinfo_section(&elf).unwrap()),
            vec!["jbd2", "mbcache"]
        );
        assert_eq!(modinfo_section(b"not an elf"), None);
        assert_eq!(modinfo_section(&elf[..70]), None);
    }

    #[test]
    fn resolves_in_dependency_order_from_modules_dep() {
        let dir = std::env::temp_dir().join(format!("xtask-modtest-{}", util::nonce()));
        let k = dir.join("kernel");
        fs::create_dir_all(&k).unwrap();
        for m in ["a", "b", "c", "d"] {
            fs::write(k.join(format!("{m}.ko")), tiny_elf(b"name=x\0")).unwrap();
        }
        fs::write(
            dir.join("modules.dep"),
            "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\nkernel/d.ko:\n",
        )
        .unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let tree = ModuleTree::open(&dir).unwrap();
        let r = tree
            .resolve(&[
                "a".into(),
                "ext4".into(),
                "d".into(),
                "b".into(),
                "nope".into(),
            ])
            .unwrap();
        let order: Vec<&str> = r.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, vec!["c", "b", "a", "d"]);
        assert_eq!(r.builtin, vec!["ext4"]);
        assert_eq!(r.missing, vec!["nope"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolves_from_modinfo_without_modules_dep() {
        let dir = std::env::temp_dir().join(format!("xtask-modtest-{}", util::nonce()));
        let k = dir.join("kernel");
        fs::create_dir_all(&k).unwrap();
        fs::write(k.join("virtio_net.ko"), tiny_elf(b"depends=net_failover\0")).unwrap();
        fs::write(k.join("net_failover.ko"), tiny_elf(b"depends=failover\0")).unwrap();
        fs::write(k.join("failover.ko"), tiny_elf(b"depends=\0")).unwrap();
        let r = ModuleTree::open(&dir)
            .unwrap()
            .resolve(&["virtio-net".into()])
            .unwrap();
        let order: Vec<&str> = r.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, vec!["failover", "net_failover", "virtio_net"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dependency_cycles_are_errors() {
        let dir = std::env::temp_dir().join(format!("xtask-modtest-{}", util::nonce()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.ko"), tiny_elf(b"depends=y\0")).unwrap();
        fs::write(dir.join("y.ko"), tiny_elf(b"depends=x\0")).unwrap();
        assert!(ModuleTree::open(&dir)
            .unwrap()
            .resolve(&["x".into()])
            .is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
