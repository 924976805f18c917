//! GUP on the model: the lock-free fast walk, the slow path with its faults
//! and VMA checks, LONGTERM migration, pin accounting, and unpinning.
//!
//! Each rule cites the kernel function it stands for. Where kernels differ,
//! the [`KernelProfile`] says which rule applies.

use gup_common::{Api, ApiKind};
use serde::{Deserialize, Serialize};

use super::profile::KernelProfile;
use super::space::{AddressSpace, FaultKind, FolioId, FolioKind, Target, Vma, GUP_PIN_COUNTING_BIAS};

/// The FOLL_* flags the model knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Foll {
    /// FOLL_WRITE: the caller will write to the pages.
    pub write: bool,
    /// FOLL_LONGTERM: the pin may be held indefinitely.
    pub longterm: bool,
    /// FOLL_FORCE: ignore the VMA's permissions (ptrace, /proc/pid/mem).
    pub force: bool,
}

/// Why the fast walk stopped at a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No page table or PTE (not mapped, not faulted in).
    NotPresent,
    /// `pte_protnone`.
    ProtNone,
    /// FOLL_WRITE and the PTE is not writable.
    WriteToReadOnlyPte,
    /// A special PTE: a raw PFN or the zero page.
    Special,
    /// FOLL_LONGTERM of a folio in ZONE_MOVABLE/CMA: the grab fails
    /// (before it is counted).
    NotLongtermPinnable,
    /// `gup_fast_folio_allowed`: a LONGTERM write pin of a dirty-tracked
    /// file page (6.5+), after the grab.
    LongtermFileBacked,
    /// A secretmem page, after the grab.
    Secretmem,
    /// A read-only pin of an anonymous page that is not AnonExclusive (or,
    /// LONGTERM, a file page in a COW mapping) must be unshared first,
    /// after the grab.
    MustUnshare,
}

impl Refusal {
    /// Whether the fast walk had grabbed (and counted) the page before it
    /// refused it, so the refusal costs one transient pin per page.
    pub fn after_grab(self) -> bool {
        matches!(self, Refusal::LongtermFileBacked | Refusal::Secretmem | Refusal::MustUnshare)
    }
}

/// Which path took a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GupPath {
    /// The lock-free fast walk.
    Fast,
    /// The slow path (`__get_user_pages`).
    Slow,
}

/// A page a GUP call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GotPage {
    /// Virtual page number.
    pub vpn: u64,
    /// Its folio.
    pub folio: FolioId,
    /// Subpage index in the folio.
    pub subpage: u32,
    /// The path that took it.
    pub path: GupPath,
    /// A FOLL_PIN pin (else a FOLL_GET reference).
    pub pin: bool,
    /// Whether the pin moved `nr_foll_pin_acquired` (not for the zero page).
    pub counted: bool,
}

/// The result of one GUP call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GupOutcome {
    /// The entry point.
    #[serde(serialize_with = "ser_api", deserialize_with = "de_api")]
    pub api: Api,
    /// First page asked for.
    pub start: u64,
    /// Pages asked for.
    pub requested: u64,
    /// Flags asked for.
    pub flags: Foll,
    /// The return value: pages, or a negative errno.
    pub ret: i64,
    /// The pages returned, in order.
    pub pages: Vec<GotPage>,
    /// Pins taken and dropped again inside the call by the fast walk.
    pub transient_fast: u64,
    /// Pins taken and dropped again inside the call by the slow path
    /// (LONGTERM migration).
    pub transient_slow: u64,
    /// Where and why the fast walk stopped (index from `start`).
    pub fast_stop: Option<(u64, Refusal)>,
    /// Whether the slow path ran.
    pub slow_path: bool,
    /// Where and why the slow path failed (index from `start`, errno, why).
    pub slow_error: Option<(u64, i32, String)>,
    /// Change of `nr_foll_pin_acquired` during the call.
    pub acquired: u64,
    /// Change of `nr_foll_pin_released` during the call.
    pub released: u64,
}

fn ser_api<S: serde::Serializer>(api: &Api, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(api.symbol())
}

fn de_api<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Api, D::Error> {
    let name = String::deserialize(d)?;
    Api::from_symbol(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown GUP function {name}")))
}

impl GupOutcome {
    /// Pages returned.
    pub fn returned(&self) -> u64 {
        self.ret.max(0) as u64
    }

    /// Pages the fast walk returned.
    pub fn fast_returned(&self) -> u64 {
        self.pages.iter().filter(|p| p.path == GupPath::Fast).count() as u64
    }

    /// Pages the slow path returned.
    pub fn slow_returned(&self) -> u64 {
        self.pages.iter().filter(|p| p.path == GupPath::Slow).count() as u64
    }

    /// Whether the call pins (FOLL_PIN) rather than takes references.
    pub fn pins(&self) -> bool {
        self.api.kind() == ApiKind::Pin
    }
}

/// How an entry point walks.
fn has_fast_walk(api: Api) -> bool {
    api.has_fast_path()
}

fn fast_only(api: Api) -> bool {
    matches!(api, Api::PinUserPagesFastOnly | Api::GetUserPagesFastOnly)
}

/// A call that can never reach the kernel's GUP core (a bad flag mix): the
/// outcome with `ret = -errno` and nothing taken.
fn refused(api: Api, start: u64, requested: u64, flags: Foll, errno: i32) -> GupOutcome {
    GupOutcome {
        api,
        start,
        requested,
        flags,
        ret: -(errno as i64),
        pages: vec![],
        transient_fast: 0,
        transient_slow: 0,
        fast_stop: None,
        slow_path: false,
        slow_error: None,
        acquired: 0,
        released: 0,
    }
}

/// Runs one GUP call (`api` with `flags`) over `nr` pages from `start`.
pub fn gup(space: &mut AddressSpace, profile: &KernelProfile, api: Api, start: u64, nr: u64, flags: Foll) -> GupOutcome {
    let pin = match api.kind() {
        ApiKind::Pin => true,
        ApiKind::Get => false,
        _ => return refused(api, start, nr, flags, libc::EINVAL),
    };
    // is_valid_gup_args: LONGTERM only with FOLL_PIN.
    if flags.longterm && !pin {
        return refused(api, start, nr, flags, libc::EINVAL);
    }
    let stat0 = space.vmstat;
    let mut out = refused(api, start, nr, flags, 0);
    out.ret = 0;
    if nr == 0 {
        return out;
    }
    let mut done = 0;
    if has_fast_walk(api) {
        done = fast_walk(space, profile, start, nr, flags, pin, &mut out);
        if done == nr || fast_only(api) {
            out.ret = done as i64;
            finish(space, stat0, &mut out);
            return out;
        }
    }
    out.slow_path = true;
    let slow = gup_longterm_locked(space, profile, start + done, nr - done, done, flags, pin, &mut out);
    out.ret = match slow {
        Ok(n) => (done + n) as i64,
        // The caller must release what the fast walk pinned, so a fast
        // call that pinned anything never returns an error.
        Err(_) if done > 0 => done as i64,
        Err(e) => -(e as i64),
    };
    finish(space, stat0, &mut out);
    out
}

fn finish(space: &AddressSpace, stat0: super::space::VmStat, out: &mut GupOutcome) {
    out.acquired = space.vmstat.acquired - stat0.acquired;
    out.released = space.vmstat.released - stat0.released;
}

/// Takes `refs` pins (or references) on subpages of one folio; false when
/// a LONGTERM pin of a non-pinnable folio must fail in the grab (the fast
/// path's `try_grab_folio_fast`; the slow path pins and migrates later).
fn grab(space: &mut AddressSpace, profile: &KernelProfile, folio: FolioId, refs: u64, pin: bool, check_pinnable: bool, longterm: bool) -> bool {
    let zero = folio == space.zero;
    let f = &mut space.folios[folio.0];
    if pin && longterm && check_pinnable && !f.longterm_pinnable() {
        return false;
    }
    if !pin {
        f.refcount += refs as i64;
        f.base_refcount += refs as i64;
        return true;
    }
    if zero && !profile.counts_zero_page() {
        // "Don't take a pin on the zero page": neither counted nor held.
        return true;
    }
    if f.is_large() {
        f.refcount += refs as i64;
        f.pincount += refs as i64;
    } else {
        f.refcount += GUP_PIN_COUNTING_BIAS * refs as i64;
    }
    space.vmstat.acquired += refs;
    true
}

/// Releases `refs` pins (or references) of one folio (`gup_put_folio`).
/// Err when there was no such pin: an unbalanced release.
fn put(space: &mut AddressSpace, profile: &KernelProfile, folio: FolioId, refs: u64, pin: bool) -> Result<(), String> {
    let zero = folio == space.zero;
    let f = &mut space.folios[folio.0];
    if !pin {
        if f.base_refcount - (refs as i64) < 1 {
            return Err(format!("folio {}: reference released that was never taken", folio.0));
        }
        f.refcount -= refs as i64;
        f.base_refcount -= refs as i64;
        return Ok(());
    }
    if zero && !profile.counts_zero_page() {
        return Ok(());
    }
    if f.pins() < refs as i64 {
        return Err(format!("folio {}: {} pins released, {} held", folio.0, refs, f.pins()));
    }
    if f.is_large() {
        f.refcount -= refs as i64;
        f.pincount -= refs as i64;
    } else {
        f.refcount -= GUP_PIN_COUNTING_BIAS * refs as i64;
    }
    space.vmstat.released += refs;
    Ok(())
}

/// `gup_must_unshare`: a read-only pin of an anonymous page that is not
/// AnonExclusive (or, LONGTERM, of a file page in a COW mapping; without
/// the VMA, as in the fast walk, any file page) must be unshared first.
fn must_unshare(space: &AddressSpace, profile: &KernelProfile, vma: Option<&Vma>, flags: Foll, pin: bool, folio: FolioId, subpage: u32) -> bool {
    if !pin || flags.write || !profile.unshares() || folio == space.zero {
        return false;
    }
    let f = space.folio(folio);
    if !f.anon {
        if !flags.longterm {
            return false;
        }
        return vma.is_none_or(|v| v.is_cow());
    }
    !f.anon_exclusive[subpage as usize]
}

/// `gup_fast_folio_allowed` (and the secretmem check of older kernels).
fn fast_folio_allowed(space: &AddressSpace, profile: &KernelProfile, folio: FolioId, flags: Foll, pin: bool) -> Result<(), Refusal> {
    let f = space.folio(folio);
    if f.kind == FolioKind::Secretmem {
        return Err(Refusal::Secretmem);
    }
    let reject_file = profile.fast_longterm_file_rule() && pin && flags.longterm && flags.write;
    if !reject_file || f.kind == FolioKind::Hugetlb || f.anon || f.kind == FolioKind::Shmem {
        return Ok(());
    }
    Err(Refusal::LongtermFileBacked)
}

/// The lock-free walk (`gup_fast`): pins from `start` until the first page
/// it refuses. Returns the pages pinned.
fn fast_walk(space: &mut AddressSpace, profile: &KernelProfile, start: u64, nr: u64, flags: Foll, pin: bool, out: &mut GupOutcome) -> u64 {
    let mut i = 0;
    while i < nr {
        let vpn = start + i;
        let stop = |out: &mut GupOutcome, r: Refusal| {
            out.fast_stop = Some((i, r));
            i
        };
        let Some(pte) = space.pte(vpn) else { return stop(out, Refusal::NotPresent) };
        if pte.protnone {
            return stop(out, Refusal::ProtNone);
        }
        if flags.write && !pte.writable {
            return stop(out, Refusal::WriteToReadOnlyPte);
        }
        let Target::Page { folio, subpage } = pte.target else { return stop(out, Refusal::Special) };
        if folio == space.zero {
            // The zero page is mapped with a special PTE.
            return stop(out, Refusal::Special);
        }
        // A PMD leaf is grabbed at once for every page up to the end of
        // the PMD or of the range (`gup_fast_pmd_leaf`).
        let refs = if pte.pmd {
            let per = space.folio(folio).nr_pages();
            (per - subpage as u64 % per).min(nr - i)
        } else {
            1
        };
        if !grab(space, profile, folio, refs, pin, true, flags.longterm) {
            return stop(out, Refusal::NotLongtermPinnable);
        }
        let refusal = fast_folio_allowed(space, profile, folio, flags, pin).err().or_else(|| {
            (!pte.writable && must_unshare(space, profile, None, flags, pin, folio, subpage)).then_some(Refusal::MustUnshare)
        });
        if let Some(r) = refusal {
            put(space, profile, folio, refs, pin).expect("the grab just took these");
            if !profile.transient_pins() && pin && folio != space.zero {
                // The mutated model: pretend the refusal came first.
                space.vmstat.acquired -= refs;
                space.vmstat.released -= refs;
            } else if pin {
                out.transient_fast += refs;
            }
            return stop(out, r);
        }
        let counted = pin && (folio != space.zero || profile.counts_zero_page());
        for k in 0..refs {
            out.pages.push(GotPage { vpn: vpn + k, folio, subpage: subpage + k as u32, path: GupPath::Fast, pin, counted });
        }
        i += refs;
    }
    i
}

/// `check_vma_flags`: whether GUP may use this VMA at all.
fn check_vma_flags(v: &Vma, profile: &KernelProfile, flags: Foll, pin: bool) -> Result<(), (i32, &'static str)> {
    use super::space::Backing;
    if v.io_pfnmap() {
        return Err((libc::EFAULT, "VM_IO | VM_PFNMAP"));
    }
    if v.backing == Backing::Secretmem {
        return Err((libc::EFAULT, "secretmem VMA"));
    }
    if flags.write {
        if !v.is_anonymous() && profile.longterm_file_rule && pin && flags.longterm && v.needs_dirty_tracking() {
            return Err((libc::EFAULT, "LONGTERM write pin of a file mapping that needs dirty tracking"));
        }
        if !v.write {
            if !flags.force {
                return Err((libc::EFAULT, "write to a VMA without VM_WRITE"));
            }
            if v.backing == Backing::Hugetlb {
                return Err((libc::EFAULT, "FOLL_FORCE write to hugetlb"));
            }
            if !v.is_cow() {
                return Err((libc::EFAULT, "FOLL_FORCE write to a shared mapping"));
            }
        }
    } else if !v.read && !flags.force {
        return Err((libc::EFAULT, "read of a VMA without VM_READ"));
    }
    Ok(())
}

/// What `follow_page_mask` finds for one page.
enum Follow {
    Page(FolioId, u32),
    Fault(FaultKind),
    Error(i32, &'static str),
}

fn follow(space: &AddressSpace, profile: &KernelProfile, vi: usize, vpn: u64, flags: Foll, pin: bool) -> Follow {
    let v = &space.vmas[vi];
    let Some(pte) = v.pte(vpn) else {
        return Follow::Fault(if flags.write { FaultKind::Write } else { FaultKind::Read });
    };
    // gup_can_follow_protnone: a PROT_NONE PTE in an accessible VMA is a
    // NUMA hint (fault it); in a PROT_NONE VMA (reached with FOLL_FORCE)
    // GUP follows it.
    if pte.protnone && !v.inaccessible() {
        return Follow::Fault(FaultKind::Read);
    }
    let Target::Page { folio, subpage } = pte.target else {
        return Follow::Error(libc::EFAULT, "raw PFN");
    };
    if folio == space.zero {
        return if flags.write { Follow::Fault(FaultKind::Write) } else { Follow::Page(folio, subpage) };
    }
    if flags.write && !pte.writable {
        // can_follow_write_pte: FOLL_FORCE may write through a read-only
        // PTE of an exclusive anonymous page that COW already gave us.
        let f = space.folio(folio);
        let forced = flags.force && !v.shared && f.anon && f.anon_exclusive[subpage as usize] && pte.dirty;
        if !forced {
            return Follow::Fault(FaultKind::Write);
        }
    }
    if !pte.writable && must_unshare(space, profile, Some(v), flags, pin, folio, subpage) {
        return Follow::Fault(FaultKind::Unshare);
    }
    Follow::Page(folio, subpage)
}

/// `__get_user_pages`: page by page, checking each new VMA, following the
/// page tables and faulting until the page can be taken. Returns the pages
/// taken, or the errno when the first page fails.
#[allow(clippy::too_many_arguments)]
fn get_user_pages(space: &mut AddressSpace, profile: &KernelProfile, start: u64, nr: u64, offset: u64, flags: Foll, pin: bool, out: &mut GupOutcome) -> Result<u64, i32> {
    let mut checked: Option<usize> = None;
    let fail = |out: &mut GupOutcome, i: u64, errno: i32, why: &str| -> Result<u64, i32> {
        out.slow_error = Some((offset + i, errno, why.to_string()));
        if i > 0 {
            Ok(i)
        } else {
            Err(errno)
        }
    };
    for i in 0..nr {
        let vpn = start + i;
        let Some(vi) = space.vma_index(vpn) else { return fail(out, i, libc::EFAULT, "no VMA") };
        if checked != Some(vi) {
            if let Err((e, why)) = check_vma_flags(&space.vmas[vi], profile, flags, pin) {
                return fail(out, i, e, why);
            }
            checked = Some(vi);
        }
        let mut faults = 0;
        let (folio, subpage) = loop {
            match follow(space, profile, vi, vpn, flags, pin) {
                Follow::Page(f, s) => break (f, s),
                Follow::Error(e, why) => return fail(out, i, e, why),
                Follow::Fault(kind) => {
                    faults += 1;
                    if faults > 3 || space.fault(vpn, kind).is_err() {
                        return fail(out, i, libc::EFAULT, "the fault failed");
                    }
                }
            }
        };
        grab(space, profile, folio, 1, pin, false, flags.longterm);
        let counted = pin && (folio != space.zero || profile.counts_zero_page());
        out.pages.push(GotPage { vpn, folio, subpage, path: GupPath::Slow, pin, counted });
    }
    Ok(nr)
}

/// `__gup_longterm_locked`: the slow path, plus for LONGTERM pins
/// `check_and_migrate_movable_pages`: when a pinned folio may not be held
/// long-term, every pin of the batch is dropped, the folios are migrated
/// and the batch is pinned again.
#[allow(clippy::too_many_arguments)]
fn gup_longterm_locked(space: &mut AddressSpace, profile: &KernelProfile, start: u64, nr: u64, offset: u64, flags: Foll, pin: bool, out: &mut GupOutcome) -> Result<u64, i32> {
    loop {
        let before = out.pages.len();
        let r = get_user_pages(space, profile, start, nr, offset, flags, pin, out);
        if !(pin && flags.longterm) || r.is_err() {
            return r;
        }
        let batch: Vec<GotPage> = out.pages[before..].to_vec();
        let movable: Vec<FolioId> = batch.iter().map(|p| p.folio).filter(|f| !space.folio(*f).longterm_pinnable()).collect();
        if movable.is_empty() {
            return r;
        }
        for p in &batch {
            put(space, profile, p.folio, 1, true).expect("pinned by this batch");
            if p.counted {
                out.transient_slow += 1;
            }
        }
        out.pages.truncate(before);
        out.slow_error = None;
        let mut seen = std::collections::BTreeSet::new();
        for f in movable {
            if seen.insert(f) {
                space.migrate(f);
            }
        }
    }
}

/// Releases every pin (or reference) of `pages` (`unpin_user_pages`).
/// Err on the first page that holds no such pin.
pub fn unpin(space: &mut AddressSpace, profile: &KernelProfile, pages: &[GotPage]) -> Result<(), String> {
    for p in pages {
        put(space, profile, p.folio, 1, p.pin)?;
    }
    Ok(())
}

/// Releases `refs` pins of one folio at once (`unpin_user_folio`).
pub fn unpin_folio(space: &mut AddressSpace, profile: &KernelProfile, folio: FolioId, refs: u64) -> Result<(), String> {
    put(space, profile, folio, refs, true)
}

#[cfg(test)]
mod tests {
    use super::super::space::Backing;
    use super::*;

    /// A space with `pages` of private anonymous memory at 0x1000.
    fn anon_space(pages: u64, write_fault: bool) -> AddressSpace {
        let mut s = AddressSpace::new();
        anon(&mut s, pages, write_fault);
        s
    }

    fn anon(space: &mut AddressSpace, pages: u64, write_fault: bool) {
        space.map(0x1000, pages, Backing::Anon, false, true, true, None).unwrap();
        if write_fault {
            for v in 0x1000..0x1000 + pages {
                space.touch(v, true).unwrap();
            }
        }
    }

    const WRITE_LT: Foll = Foll { write: true, longterm: true, force: false };
    const READ: Foll = Foll { write: false, longterm: false, force: false };

    #[test]
    fn prefaulted_anon_is_all_fast() {
        let p = KernelProfile::modern();
        let mut s = anon_space(256, true);
        let o = gup(&mut s, &p, Api::PinUserPagesFast, 0x1000, 256, WRITE_LT);
        assert_eq!((o.ret, o.fast_returned(), o.slow_returned(), o.acquired), (256, 256, 0, 256));
        assert!(!o.slow_path);
        unpin(&mut s, &p, &o.pages).unwrap();
        assert_eq!(s.vmstat.acquired, s.vmstat.released);
        assert!(s.invariant_violation().is_none());
    }

    #[test]
    fn untouched_anon_is_all_slow() {
        let p = KernelProfile::modern();
        let mut s = anon_space(256, false);
        let o = gup(&mut s, &p, Api::PinUserPagesFast, 0x1000, 256, WRITE_LT);
        assert_eq!((o.ret, o.fast_returned(), o.slow_returned()), (256, 0, 256));
        assert_eq!(o.fast_stop, Some((0, Refusal::NotPresent)));
    }

    #[test]
    fn read_only_pin_after_fork_costs_one_transient_pin_per_call() {
        let p = KernelProfile::modern();
        let mut s = anon_space(256, true);
        s.fork();
        let o = gup(&mut s, &p, Api::PinUserPagesFast, 0x1000, 256, READ);
        assert_eq!(o.fast_stop, Some((0, Refusal::MustUnshare)));
        assert_eq!((o.ret, o.transient_fast, o.slow_returned(), o.acquired, o.released), (256, 1, 256, 257, 1));
        // Remote pins have no fast walk: the slow path unshares for free.
        let mut s = anon_space(256, true);
        s.fork();
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x1000, 256, READ);
        assert_eq!((o.ret, o.transient_fast, o.acquired), (256, 0, 256));
    }

    #[test]
    fn longterm_write_pin_of_a_shared_file() {
        let mut s = AddressSpace::new();
        s.map(0x1000, 4, Backing::File, true, true, true, None).unwrap();
        (0x1000..0x1004).for_each(|v| s.touch(v, true).unwrap());
        let base = s.clone();
        let o = gup(&mut s, &KernelProfile::modern(), Api::PinUserPagesFast, 0x1000, 4, WRITE_LT);
        assert_eq!(o.ret, -(libc::EFAULT as i64));
        assert_eq!((o.transient_fast, o.acquired, o.released), (1, 1, 1));
        assert_eq!(o.fast_stop, Some((0, Refusal::LongtermFileBacked)));
        let mut s = base;
        let o = gup(&mut s, &KernelProfile::legacy(), Api::PinUserPages, 0x1000, 4, WRITE_LT);
        assert_eq!((o.ret, o.acquired), (4, 4));
    }

    #[test]
    fn zero_page_pins_are_returned_but_not_counted() {
        let p = KernelProfile::modern();
        let mut s = anon_space(8, false);
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x1000, 8, READ);
        assert_eq!((o.ret, o.acquired), (8, 0));
        assert!(o.pages.iter().all(|g| g.folio == s.zero && !g.counted));
        unpin(&mut s, &p, &o.pages).unwrap();
        assert_eq!(s.vmstat.released, 0);
        let p = p.with_mutation(super::super::profile::Mutation::ZeroPageCounted);
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x1000, 8, READ);
        assert_eq!(o.acquired, 8);
    }

    #[test]
    fn vma_checks() {
        let p = KernelProfile::modern();
        let mut s = AddressSpace::new();
        s.map(0x1000, 4, Backing::Anon, false, false, false, None).unwrap();
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x1000, 4, READ);
        assert_eq!(o.ret, -(libc::EFAULT as i64));
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x9000, 4, READ);
        assert_eq!(o.slow_error.as_ref().map(|e| e.2.as_str()), Some("no VMA"));
        s.map(0x2000, 4, Backing::Pfnmap, true, true, true, None).unwrap();
        let o = gup(&mut s, &p, Api::PinUserPagesFast, 0x2000, 4, WRITE_LT);
        assert_eq!((o.ret, o.fast_stop), (-(libc::EFAULT as i64), Some((0, Refusal::Special))));
        // FOLL_FORCE writes into a read-only private mapping break COW.
        s.map(0x3000, 2, Backing::Anon, false, true, false, None).unwrap();
        let force = Foll { write: true, longterm: false, force: true };
        let o = gup(&mut s, &p, Api::PinUserPagesRemote, 0x3000, 2, force);
        assert_eq!(o.ret, 2);
        assert!(s.invariant_violation().is_none());
    }

    #[test]
    fn longterm_pins_migrate_movable_folios() {
        let p = KernelProfile::modern();
        let mut s = AddressSpace::new();
        s.alloc_movable = true;
        anon(&mut s, 4, true);
        s.alloc_movable = false;
        let o = gup(&mut s, &p, Api::PinUserPagesFast, 0x1000, 4, WRITE_LT);
        assert_eq!(o.fast_stop, Some((0, Refusal::NotLongtermPinnable)));
        assert_eq!((o.ret, o.transient_fast, o.transient_slow, o.acquired, o.released), (4, 0, 4, 8, 4));
        assert!(o.pages.iter().all(|g| s.folio(g.folio).longterm_pinnable()));
    }

    #[test]
    fn fast_only_never_takes_the_slow_path() {
        let p = KernelProfile::legacy();
        let mut s = anon_space(8, false);
        s.touch(0x1000, true).unwrap();
        let o = gup(&mut s, &p, Api::PinUserPagesFastOnly, 0x1000, 8, WRITE_LT);
        assert_eq!((o.ret, o.slow_path), (1, false));
    }

    #[test]
    fn hugetlb_pmd_leaf_is_grabbed_at_once() {
        let p = KernelProfile::modern();
        let mut s = AddressSpace::new();
        let base = super::super::space::PMD_PAGES;
        s.map(base, base, Backing::Hugetlb, false, true, true, None).unwrap();
        s.touch(base, true).unwrap();
        let o = gup(&mut s, &p, Api::PinUserPagesFast, base, 256, WRITE_LT);
        assert_eq!((o.ret, o.acquired, o.fast_returned()), (256, 256, 256));
        let f = s.folio(o.pages[0].folio);
        assert_eq!((f.pincount, f.refcount - f.base_refcount), (256, 256));
    }
}
