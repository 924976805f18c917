//! Where a pinned folio lies in physical memory: its page frame number and
//! the zone that holds it (`Movable` pins block migration and memory
//! hot-unplug; docs/leaks.md, `weak_pin`).
//!
//! The pin ledger keys its records by folio (`struct page *`), so the PFN
//! is derived here in user space, with no per-page work in the programs:
//! with `SPARSEMEM_VMEMMAP` (x86-64) `page_to_pfn(p)` is
//! `(p - vmemmap_base) / sizeof(struct page)`. `vmemmap_base` is a kernel
//! variable (randomized at boot with KASLR), read once from `/proc/kcore`
//! at the address `/proc/kallsyms` gives it ([`read_vmemmap_base`]); the
//! zones' PFN ranges come from `/proc/zoneinfo` ([`parse_zones`]).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

/// Why `vmemmap_base` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// `/proc/kallsyms` or `/proc/kcore` could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// The file.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The symbol is missing or its address hidden (kptr_restrict).
    #[error("no address for vmemmap_base in /proc/kallsyms (kernel without KASLR memory randomization, or addresses hidden)")]
    NoSymbol,
    /// `/proc/kcore` maps no segment at the address, or is not ELF64.
    #[error("/proc/kcore maps nothing at {0:#x}")]
    NotMapped(u64),
}

/// One populated zone: its name (`DMA32`, `Normal`, `Movable`, ...) and
/// PFN range `[start_pfn, start_pfn + spanned)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneRange {
    /// The zone's name as `/proc/zoneinfo` spells it.
    pub name: String,
    /// First PFN.
    pub start_pfn: u64,
    /// PFNs spanned (holes included).
    pub spanned: u64,
}

/// The populated zones of `/proc/zoneinfo` (those with present pages).
pub fn parse_zones(zoneinfo: &str) -> Vec<ZoneRange> {
    let mut out = vec![];
    let mut name: Option<String> = None;
    let (mut spanned, mut present) = (0u64, 0u64);
    for line in zoneinfo.lines() {
        let t = line.trim();
        if t.starts_with("Node ") {
            name = t.split_whitespace().last().map(str::to_string);
            spanned = 0;
            present = 0;
            continue;
        }
        let Some(zone) = &name else { continue };
        let mut w = t.split_whitespace();
        match (w.next(), w.next()) {
            (Some("spanned"), Some(n)) => spanned = n.parse().unwrap_or(0),
            (Some("present"), Some(n)) => present = n.parse().unwrap_or(0),
            (Some("start_pfn:"), Some(n)) => {
                if present > 0 {
                    out.push(ZoneRange { name: zone.clone(), start_pfn: n.parse().unwrap_or(0), spanned });
                }
                name = None;
            }
            _ => {}
        }
    }
    out
}

/// PFN ranges of the populated ZONE_MOVABLE zones, as `(start_pfn,
/// spanned)`; empty where the kernel has none (booted without
/// `movablecore=`/`kernelcore=`).
pub fn movable_zones(zoneinfo: &str) -> Vec<(u64, u64)> {
    parse_zones(zoneinfo).into_iter().filter(|z| z.name == MOVABLE).map(|z| (z.start_pfn, z.spanned)).collect()
}

/// The name `/proc/zoneinfo` gives ZONE_MOVABLE.
pub const MOVABLE: &str = "Movable";

/// What maps a folio pointer to its zone.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// `vmemmap_base`: the `struct page` of PFN 0.
    pub vmemmap_base: u64,
    /// `sizeof(struct page)`.
    pub page_struct_size: u64,
    /// The populated zones.
    pub zones: Vec<ZoneRange>,
}

impl Placement {
    /// Reads the zones now (they change with memory hot-plug, so each
    /// analysis reads them afresh). `None` when `vmemmap_base` is unknown
    /// (0) or zoneinfo is unreadable.
    pub fn read(vmemmap_base: u64, page_struct_size: u64) -> Option<Placement> {
        if vmemmap_base == 0 || page_struct_size == 0 {
            return None;
        }
        let zones = parse_zones(&std::fs::read_to_string("/proc/zoneinfo").ok()?);
        Some(Placement { vmemmap_base, page_struct_size, zones })
    }

    /// The PFN of the `struct page` at `page`, if it lies in the vmemmap.
    pub fn pfn(&self, page: u64) -> Option<u64> {
        let off = page.checked_sub(self.vmemmap_base)?;
        (self.page_struct_size > 0 && off % self.page_struct_size == 0).then(|| off / self.page_struct_size)
    }

    /// The zone holding the folio at `folio`.
    pub fn zone_of(&self, folio: u64) -> Option<&str> {
        let pfn = self.pfn(folio)?;
        self.zones
            .iter()
            .find(|z| pfn >= z.start_pfn && pfn - z.start_pfn < z.spanned)
            .map(|z| z.name.as_str())
    }
}

/// `vmemmap_base` of the running kernel: its address from
/// `/proc/kallsyms` (a data symbol, which [`super::kallsyms::Kallsyms`]
/// does not keep), its value from `/proc/kcore` (root, CAP_SYS_RAWIO).
pub fn read_vmemmap_base() -> Result<u64, PlacementError> {
    let f = std::fs::File::open("/proc/kallsyms").map_err(|source| PlacementError::Read { what: "/proc/kallsyms", source })?;
    let addr = data_symbol(BufReader::new(f), "vmemmap_base")
        .map_err(|source| PlacementError::Read { what: "/proc/kallsyms", source })?
        .ok_or(PlacementError::NoSymbol)?;
    let kcore = std::fs::File::open("/proc/kcore").map_err(|source| PlacementError::Read { what: "/proc/kcore", source })?;
    read_kcore_u64(&kcore, addr)
}

/// The address of vmlinux symbol `name` (any type) in a kallsyms listing;
/// `None` when absent or hidden (zero).
fn data_symbol(input: impl BufRead, name: &str) -> std::io::Result<Option<u64>> {
    for line in input.lines() {
        let line = line?;
        let mut w = line.split_whitespace();
        if let (Some(a), Some(_), Some(n), None) = (w.next(), w.next(), w.next(), w.next()) {
            if n == name {
                return Ok(u64::from_str_radix(a, 16).ok().filter(|a| *a != 0));
            }
        }
    }
    Ok(None)
}

/// Reads the u64 at kernel address `addr` from an ELF64 core (`/proc/kcore`):
/// the `PT_LOAD` segment whose virtual range holds it gives the offset.
fn read_kcore_u64(f: &(impl FileExt + ?Sized), addr: u64) -> Result<u64, PlacementError> {
    let io = |source| PlacementError::Read { what: "/proc/kcore", source };
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).map_err(io)?;
    // ELF magic, ELFCLASS64, little-endian.
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(PlacementError::NotMapped(addr));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let (phoff, phentsize, phnum) = (u64_at(&eh, 0x20), u16_at(&eh, 0x36) as u64, u16_at(&eh, 0x38) as u64);
    if phentsize < 56 {
        return Err(PlacementError::NotMapped(addr));
    }
    let mut ph = [0u8; 56];
    for i in 0..phnum {
        f.read_exact_at(&mut ph, phoff + i * phentsize).map_err(io)?;
        let (kind, offset, vaddr, memsz) = (u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]), u64_at(&ph, 8), u64_at(&ph, 16), u64_at(&ph, 40));
        const PT_LOAD: u32 = 1;
        if kind == PT_LOAD && addr >= vaddr && addr - vaddr + 8 <= memsz {
            let mut v = [0u8; 8];
            f.read_exact_at(&mut v, offset + (addr - vaddr)).map_err(io)?;
            return Ok(u64::from_le_bytes(v));
        }
    }
    Err(PlacementError::NotMapped(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONEINFO: &str = "Node 0, zone      DMA\n  pages free     3000\n        spanned  4095\n        present  3998\n  start_pfn:           1\nNode 0, zone   Normal\n  pages free     1000\n        spanned  65536\n        present  65536\n        managed  60000\n  start_pfn:           1048576\nNode 0, zone  Movable\n  pages free     65000\n        spanned  65536\n        present  65536\n        managed  65536\n  node_unreclaimable:  0\n  start_pfn:           1114112\nNode 0, zone   Device\n  pages free     0\n        spanned  0\n        present  0\n";

    #[test]
    fn zones_are_read_from_zoneinfo() {
        let z = parse_zones(ZONEINFO);
        let names: Vec<_> = z.iter().map(|z| (z.name.as_str(), z.start_pfn, z.spanned)).collect();
        assert_eq!(names, vec![("DMA", 1, 4095), ("Normal", 1048576, 65536), ("Movable", 1114112, 65536)]);
        assert_eq!(movable_zones(ZONEINFO), vec![(1114112, 65536)]);
        // Booted without movablecore=: the zone is listed, empty, with no start.
        let empty = "Node 0, zone  Movable\n  pages free     0\n        spanned  0\n        present  0\n        managed  0\n        protection: (0, 0, 0, 0, 0)\n";
        assert!(movable_zones(empty).is_empty());
    }

    #[test]
    fn folio_pointers_map_to_zones() {
        let base = 0xffff_ea00_0000_0000u64;
        let p = Placement { vmemmap_base: base, page_struct_size: 64, zones: parse_zones(ZONEINFO) };
        assert_eq!(p.zone_of(base + 1114112 * 64), Some(MOVABLE));
        assert_eq!(p.zone_of(base + (1114112 + 65535) * 64), Some(MOVABLE));
        assert_eq!(p.zone_of(base + (1114112 + 65536) * 64), None);
        assert_eq!(p.zone_of(base + 1048577 * 64), Some("Normal"));
        // Not a struct page boundary, or below the vmemmap.
        assert_eq!(p.zone_of(base + 1048577 * 64 + 8), None);
        assert_eq!(p.zone_of(base - 64), None);
    }

    #[test]
    fn vmemmap_base_is_found_among_data_symbols() {
        let k = "ffffffff81000000 T _stext\nffffffff83a1b2c8 D vmemmap_base\nffffffffc0000000 t foo\t[mod]\n";
        assert_eq!(data_symbol(k.as_bytes(), "vmemmap_base").unwrap(), Some(0xffffffff83a1b2c8));
        assert_eq!(data_symbol("0000000000000000 D vmemmap_base\n".as_bytes(), "vmemmap_base").unwrap(), None);
        assert_eq!(data_symbol(k.as_bytes(), "page_offset_base").unwrap(), None);
    }

    #[test]
    fn kcore_segments_translate_addresses() {
        // An ELF64 header, one note and one PT_LOAD segment at file offset
        // 0x1000 mapping [0xffffffff80000000, +0x100).
        let mut img = vec![0u8; 0x1100];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        img[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        img[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        img[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let ph = 64 + 56;
        img[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        img[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        img[ph + 16..ph + 24].copy_from_slice(&0xffff_ffff_8000_0000u64.to_le_bytes());
        img[ph + 40..ph + 48].copy_from_slice(&0x100u64.to_le_bytes());
        img[0x1010..0x1018].copy_from_slice(&0xffff_ea00_0000_0000u64.to_le_bytes());
        let path = std::env::temp_dir().join(format!("gupwatch-kcore-{}", std::process::id()));
        std::fs::write(&path, &img).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(read_kcore_u64(&f, 0xffff_ffff_8000_0010).unwrap(), 0xffff_ea00_0000_0000);
        assert!(matches!(read_kcore_u64(&f, 0xffff_ffff_8000_00fc), Err(PlacementError::NotMapped(_))));
        assert!(matches!(read_kcore_u64(&f, 0xffff_ffff_7000_0000), Err(PlacementError::NotMapped(_))));
        let _ = std::fs::remove_file(&path);
    }
}
