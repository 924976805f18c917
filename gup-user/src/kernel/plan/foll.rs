//! The FOLL_* flag values of the running kernel: from BTF when it has
//! them, else from the kernel generation (they were renumbered in 6.2).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kernel::btf::KernelBtf;

/// Where the FOLL_* values came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollSource {
    /// Enumerators in the kernel's BTF (6.3 and later define them as enums).
    Btf,
    /// The `#define` values of 5.8–6.2, which BTF cannot carry.
    DefineTable,
    /// No BTF on a 6.3+ kernel: the enum values those kernels share
    /// (unchanged from 6.3 to 7.2; new flags were only appended).
    EnumTable,
}

/// The kernel's gup_flags bit values, by name.
#[derive(Clone, Debug, Serialize)]
pub struct FollFlags {
    /// Where they came from.
    pub source: FollSource,
    /// Name → bit value.
    pub values: BTreeMap<&'static str, u64>,
}

/// FOLL_* names gupwatch decodes.
pub const FOLL_NAMES: &[&str] = &[
    "FOLL_WRITE", "FOLL_GET", "FOLL_DUMP", "FOLL_FORCE", "FOLL_NOWAIT", "FOLL_NOFAULT",
    "FOLL_HWPOISON", "FOLL_ANON", "FOLL_LONGTERM", "FOLL_SPLIT_PMD", "FOLL_PCI_P2PDMA",
    "FOLL_INTERRUPTIBLE", "FOLL_HONOR_NUMA_FAULT", "FOLL_TOUCH", "FOLL_TRIED", "FOLL_REMOTE",
    "FOLL_PIN", "FOLL_FAST_ONLY", "FOLL_UNLOCKABLE", "FOLL_MADV_POPULATE", "FOLL_MIGRATION",
];

/// The FOLL_* `#define`s of 5.8–6.2 (include/linux/mm.h), used only when
/// BTF has no FOLL_* enumerators.
const FOLL_DEFINES: &[(&str, u64)] = &[
    ("FOLL_WRITE", 0x01), ("FOLL_TOUCH", 0x02), ("FOLL_GET", 0x04), ("FOLL_DUMP", 0x08),
    ("FOLL_FORCE", 0x10), ("FOLL_NOWAIT", 0x20), ("FOLL_NOFAULT", 0x80),
    ("FOLL_HWPOISON", 0x100), ("FOLL_MIGRATION", 0x400), ("FOLL_TRIED", 0x800),
    ("FOLL_REMOTE", 0x2000), ("FOLL_ANON", 0x8000), ("FOLL_LONGTERM", 0x10000),
    ("FOLL_SPLIT_PMD", 0x20000), ("FOLL_PIN", 0x40000), ("FOLL_FAST_ONLY", 0x80000),
];

/// The FOLL_* enumerators of 6.3 and later (include/linux/mm_types.h and
/// mm/internal.h), for a 6.3+ kernel without BTF. Identical in the BTF of
/// Debian's 6.12 and 7.2; the internal flags start at bit 16 so that public
/// flags added later (FOLL_HONOR_NUMA_FAULT in 6.5) do not move them.
const FOLL_ENUMS: &[(&str, u64)] = &[
    ("FOLL_WRITE", 1 << 0), ("FOLL_GET", 1 << 1), ("FOLL_DUMP", 1 << 2), ("FOLL_FORCE", 1 << 3),
    ("FOLL_NOWAIT", 1 << 4), ("FOLL_NOFAULT", 1 << 5), ("FOLL_HWPOISON", 1 << 6), ("FOLL_ANON", 1 << 7),
    ("FOLL_LONGTERM", 1 << 8), ("FOLL_SPLIT_PMD", 1 << 9), ("FOLL_PCI_P2PDMA", 1 << 10),
    ("FOLL_INTERRUPTIBLE", 1 << 11), ("FOLL_HONOR_NUMA_FAULT", 1 << 12), ("FOLL_TOUCH", 1 << 16),
    ("FOLL_TRIED", 1 << 17), ("FOLL_REMOTE", 1 << 18), ("FOLL_PIN", 1 << 19), ("FOLL_FAST_ONLY", 1 << 20),
    ("FOLL_UNLOCKABLE", 1 << 21), ("FOLL_MADV_POPULATE", 1 << 22),
];

impl FollFlags {
    /// From BTF when it has the enumerators (6.3+); otherwise from the
    /// table of the kernel's generation: the only place gupwatch reads the
    /// release number, because without BTF nothing else tells the two
    /// layouts apart.
    pub(super) fn resolve(btf: Option<&KernelBtf>, release: &str) -> FollFlags {
        if let Some(btf) = btf {
            if btf.enumerator("FOLL_PIN").is_some() {
                let values = FOLL_NAMES
                    .iter()
                    .filter_map(|n| btf.enumerator(n).map(|v| (*n, v as u64)))
                    .collect();
                return FollFlags { source: FollSource::Btf, values };
            }
        }
        // An unreadable release takes the older table: a 5.8-6.2 kernel
        // is likelier than a 6.3+ one without BTF (every 6.3+ distribution
        // kernel has BTF).
        match crate::kernel::version::release_major_minor(release) {
            Some(v) if v >= (6, 3) && btf.is_none() => {
                FollFlags { source: FollSource::EnumTable, values: FOLL_ENUMS.iter().copied().collect() }
            }
            _ => FollFlags { source: FollSource::DefineTable, values: FOLL_DEFINES.iter().copied().collect() },
        }
    }

    /// The names of the bits set in `flags`, lowest bit first; unknown bits
    /// are shown in hex.
    pub fn decode(&self, flags: u64) -> Vec<String> {
        let mut by_bit: Vec<(&&str, &u64)> = self.values.iter().collect();
        by_bit.sort_by_key(|(_, v)| **v);
        let mut rest = flags;
        let mut out = vec![];
        for (name, v) in by_bit {
            if *v != 0 && flags & v == *v {
                out.push(name.to_string());
                rest &= !v;
            }
        }
        if rest != 0 {
            out.push(format!("{rest:#x}"));
        }
        out
    }
}
