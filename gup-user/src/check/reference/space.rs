//! The memory the reference model works on: an address space of VMAs over
//! page tables, folios and page caches, and the page faults that change it.
//!
//! Addresses are virtual page numbers (base pages of 4 KiB). Only what GUP
//! looks at is modelled: PTE presence, writability, dirtiness and PROT_NONE;
//! special PTEs (raw PFNs and the shared zero page); folio kind, order,
//! AnonExclusive per subpage, how many processes map the folio, whether it
//! sits in ZONE_MOVABLE/CMA; and the reference/pin counts that pins move.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What a pin adds to a small folio's refcount (`GUP_PIN_COUNTING_BIAS`).
pub const GUP_PIN_COUNTING_BIAS: i64 = 1024;

/// Base pages per PMD leaf (2 MiB with 4 KiB pages): the size of a hugetlb
/// folio or PMD-mapped THP in this model.
pub const PMD_PAGES: u64 = 512;

/// A folio, by index into [`AddressSpace::folios`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FolioId(pub usize);

/// What backs a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    /// Anonymous memory (`MAP_ANONYMOUS`). Shared anonymous memory is shmem
    /// in the kernel, and becomes [`Backing::Shmem`] here.
    Anon,
    /// shmem/tmpfs: a memfd, `MAP_SHARED | MAP_ANONYMOUS`, a tmpfs file.
    /// Needs no dirty tracking.
    Shmem,
    /// A regular file on a filesystem that tracks dirty pages for writeback
    /// (ext4, xfs, btrfs).
    File,
    /// hugetlbfs or `MAP_HUGETLB`: 2 MiB folios.
    Hugetlb,
    /// `memfd_secret()` memory: removed from the kernel's direct map.
    Secretmem,
    /// Device memory mapped with `remap_pfn_range` (a PCI BAR):
    /// `VM_IO | VM_PFNMAP`, special PTEs without `struct page`s.
    Pfnmap,
}

impl Backing {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::Anon => "anon",
            Backing::Shmem => "shmem",
            Backing::File => "file",
            Backing::Hugetlb => "hugetlb",
            Backing::Secretmem => "secretmem",
            Backing::Pfnmap => "pfnmap",
        }
    }
}

/// What a folio holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolioKind {
    /// Anonymous memory.
    Anon,
    /// shmem page cache.
    Shmem,
    /// Page cache of a dirty-tracked filesystem.
    File,
    /// A hugetlb folio (anonymous for `MAP_PRIVATE`, see [`Folio::anon`]).
    Hugetlb,
    /// secretmem page cache.
    Secretmem,
    /// The shared zero page.
    Zero,
}

/// A folio and the counts GUP moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folio {
    /// What it holds.
    pub kind: FolioKind,
    /// `PageAnon`: true for anonymous folios, including private hugetlb
    /// and COW copies of file pages.
    pub anon: bool,
    /// log2 of its size in base pages.
    pub order: u32,
    /// In ZONE_MOVABLE or a CMA area: not long-term pinnable.
    pub movable: bool,
    /// `PageAnonExclusive` of each subpage (anonymous folios only).
    pub anon_exclusive: Vec<bool>,
    /// Processes mapping it (the modelled one and live forked children).
    pub mappers: u32,
    /// `_refcount`.
    pub refcount: i64,
    /// `_pincount` (large folios only; small folios count pins in
    /// `refcount` with [`GUP_PIN_COUNTING_BIAS`]).
    pub pincount: i64,
    /// The part of `refcount` that is not pins (allocation, FOLL_GET).
    pub base_refcount: i64,
    /// Dirty (written through a mapping or a write pin).
    pub dirty: bool,
}

impl Folio {
    /// Base pages in the folio.
    pub fn nr_pages(&self) -> u64 {
        1 << self.order
    }

    /// `folio_test_large`.
    pub fn is_large(&self) -> bool {
        self.order > 0
    }

    /// FOLL_PIN pins held on the folio, from its counts.
    pub fn pins(&self) -> i64 {
        if self.is_large() {
            self.pincount
        } else {
            (self.refcount - self.base_refcount) / GUP_PIN_COUNTING_BIAS
        }
    }

    /// `folio_maybe_dma_pinned`: exact for large folios, a heuristic (a
    /// refcount of 1024 or more) for small ones.
    pub fn maybe_dma_pinned(&self) -> bool {
        if self.is_large() {
            self.pincount > 0
        } else {
            self.refcount >= GUP_PIN_COUNTING_BIAS
        }
    }

    /// `folio_is_longterm_pinnable`.
    pub fn longterm_pinnable(&self) -> bool {
        self.kind == FolioKind::Zero || !self.movable
    }
}

/// What a present PTE points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A subpage of a folio.
    Page {
        /// The folio.
        folio: FolioId,
        /// Index of the subpage in it.
        subpage: u32,
    },
    /// A raw PFN without a `struct page` GUP may use (special PTE).
    Pfn,
}

/// A present page table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pte {
    /// What it maps.
    pub target: Target,
    /// Writable.
    pub writable: bool,
    /// Dirty.
    pub dirty: bool,
    /// PROT_NONE (`pte_protnone`): present but inaccessible.
    pub protnone: bool,
    /// Part of a PMD leaf (a 2 MiB mapping of a huge folio).
    pub pmd: bool,
}

/// A virtual memory area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// First page.
    pub start: u64,
    /// Length in pages.
    pub pages: u64,
    /// What backs it.
    pub backing: Backing,
    /// `VM_SHARED`.
    pub shared: bool,
    /// `VM_READ`.
    pub read: bool,
    /// `VM_WRITE`.
    pub write: bool,
    /// `VM_MAYWRITE` (FOLL_FORCE may write into a private mapping).
    pub may_write: bool,
    /// `VM_LOCKED` (mlock: every page faulted in at mapping time).
    pub mlocked: bool,
    /// The file, by index into [`AddressSpace::files`] (`vm_file`).
    pub file: Option<usize>,
    /// The page table entries, one per page (`None`: not present).
    pub ptes: Vec<Option<Pte>>,
}

impl Vma {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.pages
    }

    /// PROT_NONE: neither readable nor writable (its PTEs are PROT_NONE).
    pub fn inaccessible(&self) -> bool {
        !self.read && !self.write
    }

    /// `VM_IO | VM_PFNMAP`.
    pub fn io_pfnmap(&self) -> bool {
        self.backing == Backing::Pfnmap
    }

    /// `vma_is_anonymous`: private anonymous memory (no `vm_ops`).
    pub fn is_anonymous(&self) -> bool {
        self.backing == Backing::Anon
    }

    /// `is_cow_mapping`: private and may be written.
    pub fn is_cow(&self) -> bool {
        !self.shared && self.may_write
    }

    /// `vma_needs_dirty_tracking`: a shared writable mapping of a file whose
    /// filesystem writes dirty pages back (not shmem, not hugetlbfs).
    pub fn needs_dirty_tracking(&self) -> bool {
        self.shared && self.write && self.backing == Backing::File
    }

    /// The PTE of page `vpn` (which must be inside).
    pub fn pte(&self, vpn: u64) -> Option<Pte> {
        self.ptes[(vpn - self.start) as usize]
    }
}

/// A file's page cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObj {
    /// What kind of file.
    pub backing: Option<Backing>,
    /// Page index → folio (huge folios under their first index).
    pub cache: BTreeMap<u64, FolioId>,
}

/// The FOLL_PIN counters of `/proc/vmstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStat {
    /// `nr_foll_pin_acquired`.
    pub acquired: u64,
    /// `nr_foll_pin_released`.
    pub released: u64,
}

/// Why a page fault failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// No VMA, or the access is not allowed (SIGSEGV).
    Segv,
    /// The mapping cannot be faulted (raw PFNs, no hugetlb page: SIGBUS).
    Sigbus,
}

/// The kind of page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A read access.
    Read,
    /// A write access.
    Write,
    /// `FAULT_FLAG_UNSHARE`: make an anonymous page exclusive (or copy a
    /// file page into a private mapping) without making it writable, for a
    /// read-only pin.
    Unshare,
}

/// One process's address space, plus what its forked children share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpace {
    /// VMAs, sorted by start, not overlapping.
    pub vmas: Vec<Vma>,
    /// Every folio ever allocated (freed ones are never reused).
    pub folios: Vec<Folio>,
    /// Files.
    pub files: Vec<FileObj>,
    /// The shared zero page.
    pub zero: FolioId,
    /// The FOLL_PIN counters.
    pub vmstat: VmStat,
    /// New folios land in ZONE_MOVABLE/CMA (not long-term pinnable).
    pub alloc_movable: bool,
    /// Live forked children: the folios each one maps.
    pub children: Vec<BTreeSet<FolioId>>,
}

impl Default for AddressSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressSpace {
    /// An empty address space.
    pub fn new() -> Self {
        let zero = Folio {
            kind: FolioKind::Zero,
            anon: false,
            order: 0,
            movable: false,
            anon_exclusive: vec![false],
            mappers: 0,
            refcount: 1,
            pincount: 0,
            base_refcount: 1,
            dirty: false,
        };
        AddressSpace {
            vmas: vec![],
            folios: vec![zero],
            files: vec![],
            zero: FolioId(0),
            vmstat: VmStat::default(),
            alloc_movable: false,
            children: vec![],
        }
    }

    /// A folio.
    pub fn folio(&self, id: FolioId) -> &Folio {
        &self.folios[id.0]
    }

    fn folio_mut(&mut self, id: FolioId) -> &mut Folio {
        &mut self.folios[id.0]
    }

    fn alloc(&mut self, kind: FolioKind, anon: bool, order: u32) -> FolioId {
        let n = 1usize << order;
        self.folios.push(Folio {
            kind,
            anon,
            order,
            movable: self.alloc_movable,
            anon_exclusive: vec![anon; n],
            mappers: 1,
            refcount: 1,
            pincount: 0,
            base_refcount: 1,
            dirty: false,
        });
        FolioId(self.folios.len() - 1)
    }

    /// A new, empty file of the given kind; its index.
    pub fn new_file(&mut self, backing: Backing) -> usize {
        self.files.push(FileObj { backing: Some(backing), cache: BTreeMap::new() });
        self.files.len() - 1
    }

    /// Maps `pages` pages at `start` (like `mmap` with `MAP_FIXED_NOREPLACE`).
    /// Shared anonymous memory becomes shmem; hugetlb mappings must be whole
    /// 2 MiB units; file-backed kinds get a new file unless `file` names one.
    /// Returns the VMA's index, or `None` if it would overlap another.
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &mut self,
        start: u64,
        pages: u64,
        backing: Backing,
        shared: bool,
        read: bool,
        write: bool,
        file: Option<usize>,
    ) -> Option<usize> {
        if pages == 0 || self.vmas.iter().any(|v| start < v.end() && v.start < start + pages) {
            return None;
        }
        let backing = if backing == Backing::Anon && shared { Backing::Shmem } else { backing };
        if backing == Backing::Hugetlb && (start % PMD_PAGES != 0 || pages % PMD_PAGES != 0) {
            return None;
        }
        let file = match backing {
            Backing::Anon | Backing::Pfnmap => None,
            _ => Some(file.unwrap_or_else(|| self.new_file(backing))),
        };
        let ptes = if backing == Backing::Pfnmap {
            // remap_pfn_range fills every PTE at mmap time.
            let pte = Pte { target: Target::Pfn, writable: write, dirty: false, protnone: false, pmd: false };
            vec![Some(pte); pages as usize]
        } else {
            vec![None; pages as usize]
        };
        let vma = Vma {
            start,
            pages,
            backing,
            shared,
            read,
            write,
            may_write: write || shared || backing != Backing::Pfnmap,
            mlocked: false,
            file,
            ptes,
        };
        let at = self.vmas.partition_point(|v| v.start < start);
        self.vmas.insert(at, vma);
        Some(at)
    }

    /// The index of the VMA holding page `vpn`.
    pub fn vma_index(&self, vpn: u64) -> Option<usize> {
        let i = self.vmas.partition_point(|v| v.end() <= vpn);
        (i < self.vmas.len() && self.vmas[i].start <= vpn).then_some(i)
    }

    /// The PTE of page `vpn`, if mapped and present.
    pub fn pte(&self, vpn: u64) -> Option<Pte> {
        self.vma_index(vpn).and_then(|i| self.vmas[i].pte(vpn))
    }

    fn set_pte(&mut self, vi: usize, vpn: u64, pte: Option<Pte>) {
        let v = &mut self.vmas[vi];
        v.ptes[(vpn - v.start) as usize] = pte;
    }

    /// The page cache folio of a file at page `index`, created if missing
    /// (read from disk or zero-filled); and the subpage of `index` in it.
    fn pagecache(&mut self, file: usize, index: u64) -> (FolioId, u32) {
        let backing = self.files[file].backing.unwrap_or(Backing::File);
        let order = if backing == Backing::Hugetlb { PMD_PAGES.trailing_zeros() } else { 0 };
        let base = index & !((1u64 << order) - 1);
        if let Some(&f) = self.files[file].cache.get(&base) {
            return (f, (index - base) as u32);
        }
        let kind = match backing {
            Backing::Shmem | Backing::Anon => FolioKind::Shmem,
            Backing::Hugetlb => FolioKind::Hugetlb,
            Backing::Secretmem => FolioKind::Secretmem,
            _ => FolioKind::File,
        };
        let f = self.alloc(kind, false, order);
        self.folio_mut(f).mappers = 0;
        self.files[file].cache.insert(base, f);
        (f, (index - base) as u32)
    }

    /// Marks that this process maps `f` (once per folio).
    fn map_folio(&mut self, f: FolioId) {
        if f != self.zero {
            let folio = self.folio_mut(f);
            folio.mappers = folio.mappers.max(1);
        }
    }

    /// A user-space access to page `vpn` (the fault a load or store takes if
    /// it must), as the scenarios pre-fault their buffers.
    pub fn touch(&mut self, vpn: u64, write: bool) -> Result<(), FaultError> {
        let vi = self.vma_index(vpn).ok_or(FaultError::Segv)?;
        let v = &self.vmas[vi];
        if (write && !v.write) || (!write && !v.read) {
            return Err(FaultError::Segv);
        }
        match v.pte(vpn) {
            Some(p) if !p.protnone && (!write || p.writable) => {
                if write {
                    self.mark_dirty(vi, vpn);
                }
                Ok(())
            }
            _ => self.fault(vpn, if write { FaultKind::Write } else { FaultKind::Read }),
        }
    }

    fn mark_dirty(&mut self, vi: usize, vpn: u64) {
        if let Some(mut p) = self.vmas[vi].pte(vpn) {
            p.dirty = true;
            self.set_pte(vi, vpn, Some(p));
            if let Target::Page { folio, .. } = p.target {
                if folio != self.zero {
                    self.folio_mut(folio).dirty = true;
                }
            }
        }
    }

    /// The page fault handler: makes page `vpn` present (Read), writable and
    /// dirty (Write; a write the VMA does not allow, as FOLL_FORCE does,
    /// breaks COW but leaves the PTE read-only), or exclusive (Unshare).
    pub fn fault(&mut self, vpn: u64, kind: FaultKind) -> Result<(), FaultError> {
        let vi = self.vma_index(vpn).ok_or(FaultError::Segv)?;
        let v = self.vmas[vi].clone();
        if v.io_pfnmap() {
            return Err(FaultError::Sigbus);
        }
        if v.backing == Backing::Hugetlb {
            return self.fault_huge(vi, vpn, kind);
        }
        let off = vpn - v.start;
        let file_index = off; // files are mapped from offset 0
        match (v.pte(vpn), kind) {
            (None, FaultKind::Read | FaultKind::Unshare) => {
                let (target, writable) = if v.backing == Backing::Anon {
                    // do_anonymous_page: the zero page, read-only, special.
                    (Target::Page { folio: self.zero, subpage: 0 }, false)
                } else {
                    let (f, sub) = self.pagecache(v.file.expect("file-backed"), file_index);
                    self.map_folio(f);
                    // A shared writable mapping that needs no write
                    // notification (shmem, secretmem) maps writable even
                    // on a read fault; dirty-tracked files map read-only.
                    (Target::Page { folio: f, subpage: sub }, v.shared && v.write && !v.needs_dirty_tracking())
                };
                self.set_pte(vi, vpn, Some(Pte { target, writable, dirty: false, protnone: v.inaccessible(), pmd: false }));
                Ok(())
            }
            (None, FaultKind::Write) => {
                let target = if v.backing == Backing::Anon || !v.shared {
                    // Private: a new anonymous page (a COW copy of the file
                    // page for a private file mapping).
                    if v.backing != Backing::Anon {
                        self.pagecache(v.file.expect("file-backed"), file_index);
                    }
                    let f = self.alloc(FolioKind::Anon, true, 0);
                    Target::Page { folio: f, subpage: 0 }
                } else {
                    let (f, sub) = self.pagecache(v.file.expect("file-backed"), file_index);
                    self.map_folio(f);
                    Target::Page { folio: f, subpage: sub }
                };
                self.set_pte(vi, vpn, Some(Pte { target, writable: v.write, dirty: true, protnone: v.inaccessible(), pmd: false }));
                self.mark_dirty(vi, vpn);
                Ok(())
            }
            (Some(mut p), FaultKind::Read) => {
                // A NUMA hinting fault clears PROT_NONE (a PROT_NONE VMA
                // never gets here: GUP and user accesses refuse it first).
                p.protnone = false;
                self.set_pte(vi, vpn, Some(p));
                Ok(())
            }
            (Some(p), FaultKind::Write) => {
                let Target::Page { folio, subpage } = p.target else { return Err(FaultError::Sigbus) };
                if v.shared {
                    // page_mkwrite: writable and dirty.
                    self.set_pte(vi, vpn, Some(Pte { writable: v.write, dirty: true, protnone: v.inaccessible(), ..p }));
                    self.mark_dirty(vi, vpn);
                    return Ok(());
                }
                let f = self.folio(folio).clone();
                if f.anon && (f.anon_exclusive[subpage as usize] || f.mappers <= 1) {
                    // wp_can_reuse_anon_folio: ours alone, reuse it.
                    self.folio_mut(folio).anon_exclusive[subpage as usize] = true;
                    self.set_pte(vi, vpn, Some(Pte { writable: v.write, dirty: true, protnone: v.inaccessible(), ..p }));
                } else {
                    // Copy: from the zero page, a page shared with a child,
                    // or a file page in a private mapping.
                    self.copy_on_write(vi, vpn, folio, v.write);
                }
                self.mark_dirty(vi, vpn);
                Ok(())
            }
            (Some(p), FaultKind::Unshare) => {
                let Target::Page { folio, subpage } = p.target else { return Err(FaultError::Sigbus) };
                let f = self.folio(folio).clone();
                if f.anon {
                    if f.mappers <= 1 {
                        self.folio_mut(folio).anon_exclusive[subpage as usize] = true;
                    } else {
                        self.copy_on_write(vi, vpn, folio, false);
                    }
                } else if !v.shared {
                    self.copy_on_write(vi, vpn, folio, false);
                }
                Ok(())
            }
        }
    }

    /// Replaces the PTE's page with a fresh exclusive anonymous copy.
    fn copy_on_write(&mut self, vi: usize, vpn: u64, old: FolioId, writable: bool) {
        let p = self.vmas[vi].pte(vpn).expect("present");
        if old != self.zero && self.folio(old).anon {
            let o = self.folio_mut(old);
            o.mappers = o.mappers.saturating_sub(1);
        }
        let f = self.alloc(FolioKind::Anon, true, 0);
        let protnone = self.vmas[vi].inaccessible();
        self.set_pte(vi, vpn, Some(Pte { target: Target::Page { folio: f, subpage: 0 }, writable, dirty: p.dirty, protnone, pmd: false }));
    }

    /// Faults of a hugetlb VMA: the whole 2 MiB unit at once.
    fn fault_huge(&mut self, vi: usize, vpn: u64, kind: FaultKind) -> Result<(), FaultError> {
        let v = self.vmas[vi].clone();
        let base = v.start + (vpn - v.start) / PMD_PAGES * PMD_PAGES;
        let first = v.pte(base);
        let (folio, writable) = match (first, kind) {
            (None, _) => {
                let f = if v.shared {
                    let (f, _) = self.pagecache(v.file.expect("hugetlbfs file"), base - v.start);
                    self.map_folio(f);
                    f
                } else {
                    self.alloc(FolioKind::Hugetlb, true, PMD_PAGES.trailing_zeros())
                };
                (f, v.write && (v.shared || kind == FaultKind::Write))
            }
            (Some(p), _) => {
                let Target::Page { folio, .. } = p.target else { return Err(FaultError::Sigbus) };
                let f = self.folio(folio).clone();
                match kind {
                    FaultKind::Read => (folio, p.writable),
                    FaultKind::Write if v.shared => (folio, v.write),
                    FaultKind::Write | FaultKind::Unshare => {
                        if f.anon && (f.anon_exclusive.iter().all(|&e| e) || f.mappers <= 1) {
                            self.folio_mut(folio).anon_exclusive.iter_mut().for_each(|e| *e = true);
                            (folio, kind == FaultKind::Write && v.write || p.writable)
                        } else {
                            let o = self.folio_mut(folio);
                            o.mappers = o.mappers.saturating_sub(1);
                            (self.alloc(FolioKind::Hugetlb, true, PMD_PAGES.trailing_zeros()), kind == FaultKind::Write && v.write)
                        }
                    }
                }
            }
        };
        let dirty = kind == FaultKind::Write || first.is_some_and(|p| p.dirty);
        for i in 0..PMD_PAGES {
            let pte = Pte { target: Target::Page { folio, subpage: i as u32 }, writable, dirty, protnone: v.inaccessible(), pmd: true };
            self.set_pte(vi, base + i, Some(pte));
        }
        if dirty {
            self.folio_mut(folio).dirty = true;
        }
        Ok(())
    }

    /// `mprotect` of a whole VMA: removing write makes every PTE read-only;
    /// PROT_NONE makes present PTEs PROT_NONE.
    pub fn mprotect(&mut self, vi: usize, read: bool, write: bool) {
        let v = &mut self.vmas[vi];
        v.read = read;
        v.write = write;
        for p in v.ptes.iter_mut().flatten() {
            if !write {
                p.writable = false;
            }
            p.protnone = !read && !write;
        }
    }

    /// `mlock` of a whole VMA: faults every page in (for reading).
    pub fn mlock(&mut self, vi: usize) -> Result<(), FaultError> {
        self.vmas[vi].mlocked = true;
        let (start, end, write) = (self.vmas[vi].start, self.vmas[vi].end(), self.vmas[vi].write);
        for vpn in start..end {
            if self.vmas[vi].pte(vpn).is_none() {
                // populate_vma_page_range breaks COW of private writable
                // mappings with write faults.
                self.fault(vpn, if write && !self.vmas[vi].shared { FaultKind::Write } else { FaultKind::Read })?;
            }
        }
        Ok(())
    }

    /// `MADV_DONTNEED` of a whole VMA: drops every PTE (pinned folios stay
    /// allocated, no longer mapped here).
    pub fn dontneed(&mut self, vi: usize) {
        if self.vmas[vi].io_pfnmap() {
            return;
        }
        let targets: Vec<FolioId> = self.vmas[vi]
            .ptes
            .iter()
            .flatten()
            .filter_map(|p| match p.target {
                Target::Page { folio, .. } => Some(folio),
                Target::Pfn => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for f in targets {
            if f != self.zero && self.folio(f).anon {
                let o = self.folio_mut(f);
                o.mappers = o.mappers.saturating_sub(1);
            }
        }
        self.vmas[vi].ptes.iter_mut().for_each(|p| *p = None);
    }

    /// `fork()`: a child that maps everything this process maps. Private
    /// anonymous pages become shared copy-on-write: write-protected here and
    /// no longer AnonExclusive, unless they may be pinned for DMA, which the
    /// child gets a copy of instead (`page_needs_cow_for_dma`). Returns the
    /// child's index.
    pub fn fork(&mut self) -> usize {
        let mut shared = BTreeSet::new();
        for vi in 0..self.vmas.len() {
            let v = self.vmas[vi].clone();
            for (i, p) in v.ptes.iter().enumerate() {
                let Some(p) = p else { continue };
                let Target::Page { folio, subpage } = p.target else { continue };
                if folio == self.zero {
                    continue;
                }
                let f = self.folio(folio).clone();
                if !v.shared && f.anon {
                    if f.maybe_dma_pinned() {
                        continue;
                    }
                    self.folio_mut(folio).anon_exclusive[subpage as usize] = false;
                    self.set_pte(vi, v.start + i as u64, Some(Pte { writable: false, ..*p }));
                }
                shared.insert(folio);
            }
        }
        for &f in &shared {
            self.folio_mut(f).mappers += 1;
        }
        self.children.push(shared);
        self.children.len() - 1
    }

    /// The child `child` exits: its mappings go away.
    pub fn exit_child(&mut self, child: usize) {
        let set = std::mem::take(&mut self.children[child]);
        for f in set {
            let o = self.folio_mut(f);
            o.mappers = o.mappers.saturating_sub(1);
        }
    }

    /// Moves a folio out of ZONE_MOVABLE/CMA: a new non-movable copy takes
    /// its place in every PTE and page cache slot (as LONGTERM pinning
    /// migrates it). Returns the new folio.
    pub fn migrate(&mut self, old: FolioId) -> FolioId {
        let o = self.folio(old).clone();
        let new = FolioId(self.folios.len());
        self.folios.push(Folio { movable: false, refcount: 1, pincount: 0, base_refcount: 1, ..o });
        for v in &mut self.vmas {
            for p in v.ptes.iter_mut().flatten() {
                if let Target::Page { folio, .. } = &mut p.target {
                    if *folio == old {
                        *folio = new;
                    }
                }
            }
        }
        for file in &mut self.files {
            for f in file.cache.values_mut() {
                if *f == old {
                    *f = new;
                }
            }
        }
        new
    }

    /// Consistency rules every reachable state keeps; the first broken one.
    pub fn invariant_violation(&self) -> Option<String> {
        for v in &self.vmas {
            for (i, p) in v.ptes.iter().enumerate() {
                let Some(p) = p else { continue };
                let Target::Page { folio, subpage } = p.target else { continue };
                let f = self.folio(folio);
                if p.writable && !v.write {
                    return Some(format!("page {:#x}: writable PTE in a VMA without VM_WRITE", v.start + i as u64));
                }
                if p.writable && folio == self.zero {
                    return Some(format!("page {:#x}: writable PTE of the zero page", v.start + i as u64));
                }
                if p.writable && !v.shared && f.anon && !f.anon_exclusive[subpage as usize] {
                    return Some(format!("page {:#x}: writable PTE of a private anonymous page that is not AnonExclusive", v.start + i as u64));
                }
            }
        }
        for (i, f) in self.folios.iter().enumerate() {
            if f.pins() < 0 || f.pincount < 0 {
                return Some(format!("folio {i}: negative pin count"));
            }
            if !f.is_large() && f.pincount != 0 {
                return Some(format!("folio {i}: small folio with a _pincount"));
            }
            let pin_refs = if f.is_large() { f.pincount } else { f.pins() * GUP_PIN_COUNTING_BIAS };
            if f.refcount != f.base_refcount + pin_refs {
                return Some(format!("folio {i}: refcount {} is not base {} + pins", f.refcount, f.base_refcount));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_follow_the_mapping_kind() {
        let mut s = AddressSpace::new();
        let anon = s.map(0x100, 4, Backing::Anon, false, true, true, None).unwrap();
        s.touch(0x100, false).unwrap();
        let p = s.pte(0x100).unwrap();
        assert_eq!(p.target, Target::Page { folio: s.zero, subpage: 0 });
        assert!(!p.writable);
        s.touch(0x100, true).unwrap();
        let p = s.pte(0x100).unwrap();
        assert!(p.writable && p.dirty);
        assert_ne!(p.target, Target::Page { folio: s.zero, subpage: 0 });
        // Dirty-tracked shared file: read faults map read-only.
        let file = s.map(0x200, 2, Backing::File, true, true, true, None).unwrap();
        s.touch(0x200, false).unwrap();
        assert!(!s.pte(0x200).unwrap().writable);
        s.touch(0x200, true).unwrap();
        assert!(s.pte(0x200).unwrap().writable);
        // shmem shared: writable from a read fault.
        s.map(0x300, 2, Backing::Shmem, true, true, true, None).unwrap();
        s.touch(0x300, false).unwrap();
        assert!(s.pte(0x300).unwrap().writable);
        assert_eq!(s.vmas[anon].backing, Backing::Anon);
        assert!(s.vmas[file].needs_dirty_tracking());
        assert!(s.invariant_violation().is_none());
    }

    #[test]
    fn fork_shares_private_anon_copy_on_write() {
        let mut s = AddressSpace::new();
        s.map(0x100, 2, Backing::Anon, false, true, true, None).unwrap();
        s.touch(0x100, true).unwrap();
        let Target::Page { folio, .. } = s.pte(0x100).unwrap().target else { panic!() };
        let child = s.fork();
        assert!(!s.pte(0x100).unwrap().writable);
        assert!(!s.folio(folio).anon_exclusive[0]);
        s.touch(0x100, true).unwrap();
        let Target::Page { folio: copy, .. } = s.pte(0x100).unwrap().target else { panic!() };
        assert_ne!(copy, folio);
        s.exit_child(child);
        assert!(s.invariant_violation().is_none());
    }

    #[test]
    fn hugetlb_faults_a_whole_pmd() {
        let mut s = AddressSpace::new();
        s.map(PMD_PAGES, PMD_PAGES, Backing::Hugetlb, false, true, true, None).unwrap();
        s.touch(PMD_PAGES + 3, true).unwrap();
        assert!((PMD_PAGES..2 * PMD_PAGES).all(|v| s.pte(v).is_some_and(|p| p.pmd && p.writable)));
        assert!(s.map(1, 4, Backing::Hugetlb, false, true, true, None).is_none());
    }
}
