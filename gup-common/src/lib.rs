//! Types shared by gupwatch's kernel-side programs (`gup-ebpf`) and its
//! user-space daemon (`gup-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the eBPF programs write these
//! structs into maps and user space reads them back byte for byte, so a field
//! added here must be added on both sides at once (they are built together).
#![no_std]
#![deny(missing_docs)]

pub mod hold;
pub mod i915;
pub mod irq;
pub mod object;
pub mod skipped;

/// Number of hooked GUP entry points; the length of [`Api::ALL`].
pub const API_COUNT: usize = 24;

/// Number of log2 latency buckets per API. Bucket `i` counts calls whose
/// duration `d` in nanoseconds satisfies `2^i <= d < 2^(i+1)` (bucket 0 also
/// takes `d == 0`); the last bucket also takes everything longer.
pub const LATENCY_BUCKETS: usize = 40;

/// "No such argument" in [`HookArgs`]: the count is implied (one page or
/// folio) or the function has no `gup_flags` parameter.
pub const ARG_NONE: u8 = 0xff;

/// What a hooked function does to page reference counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ApiKind {
    /// Takes FOLL_PIN pins (`pin_user_pages*`, `memfd_pin_folios`). These are
    /// what `nr_foll_pin_acquired` counts.
    Pin = 0,
    /// Takes plain FOLL_GET references (`get_user_pages*`). Not pins: they do
    /// not move `nr_foll_pin_*` and are released with `put_page`, which
    /// gupwatch does not hook.
    Get = 1,
    /// Releases FOLL_PIN pins (`unpin_user_page*`, `unpin_folio*`). These are
    /// what `nr_foll_pin_released` counts.
    Unpin = 2,
    /// The slow path a `*_fast` call falls back to. Not an entry point: it
    /// only tells where the lock-free walk stopped.
    SlowPath = 3,
    /// The internal release of pins (`gup_put_folio`). Counted only where
    /// no hooked unpin covers it: pins a pin call took and dropped again
    /// (the fast walk's grab of a page it must refuse), or releases on a
    /// path gupwatch does not hook.
    Undo = 4,
    /// i915 userptr object lifecycle (module functions, hooked by kprobe):
    /// they tell which object the pins and unpins inside them belong to.
    I915 = 5,
}

macro_rules! apis {
    ($($(#[$doc:meta])* $variant:ident = $idx:literal, $symbol:literal, $kind:ident;)*) => {
        /// One hooked kernel entry point of the GUP family.
        ///
        /// The discriminant is the index into the per-API maps and globals.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum Api {
            $($(#[$doc])* $variant = $idx,)*
        }

        impl Api {
            /// Every API, in index order.
            pub const ALL: [Api; API_COUNT] = [$(Api::$variant,)*];

            /// The kernel symbol this API is hooked at.
            pub const fn symbol(self) -> &'static str {
                match self { $(Api::$variant => $symbol,)* }
            }

            /// Whether it pins, takes references or unpins.
            pub const fn kind(self) -> ApiKind {
                match self { $(Api::$variant => ApiKind::$kind,)* }
            }

            /// The API with this map index, if any.
            pub const fn from_index(index: u32) -> Option<Api> {
                match index { $($idx => Some(Api::$variant),)* _ => None }
            }

            /// The API hooked at this kernel symbol, if any.
            pub fn from_symbol(symbol: &str) -> Option<Api> {
                match symbol { $($symbol => Some(Api::$variant),)* _ => None }
            }
        }
    };
}

apis! {
    /// `pin_user_pages()`: slow path, caller holds mmap_lock.
    PinUserPages = 0, "pin_user_pages", Pin;
    /// `pin_user_pages_fast()`: lock-free walk, then the slow path for the rest.
    PinUserPagesFast = 1, "pin_user_pages_fast", Pin;
    /// `pin_user_pages_fast_only()` (5.8 to 6.2): lock-free walk only.
    PinUserPagesFastOnly = 2, "pin_user_pages_fast_only", Pin;
    /// `pin_user_pages_remote()`: another process's mm (process_vm_*, VFIO).
    PinUserPagesRemote = 3, "pin_user_pages_remote", Pin;
    /// `pin_user_pages_unlocked()`: slow path that takes mmap_lock itself.
    PinUserPagesUnlocked = 4, "pin_user_pages_unlocked", Pin;
    /// `memfd_pin_folios()` (6.11+): pins folios of a memfd (udmabuf).
    MemfdPinFolios = 5, "memfd_pin_folios", Pin;
    /// `get_user_pages()`.
    GetUserPages = 6, "get_user_pages", Get;
    /// `get_user_pages_fast()`.
    GetUserPagesFast = 7, "get_user_pages_fast", Get;
    /// `get_user_pages_fast_only()`.
    GetUserPagesFastOnly = 8, "get_user_pages_fast_only", Get;
    /// `get_user_pages_remote()`.
    GetUserPagesRemote = 9, "get_user_pages_remote", Get;
    /// `get_user_pages_unlocked()`.
    GetUserPagesUnlocked = 10, "get_user_pages_unlocked", Get;
    /// `unpin_user_page()`: one page.
    UnpinUserPage = 11, "unpin_user_page", Unpin;
    /// `unpin_user_pages()`: an array of pages.
    UnpinUserPages = 12, "unpin_user_pages", Unpin;
    /// `unpin_user_pages_dirty_lock()`: an array, optionally marked dirty.
    UnpinUserPagesDirtyLock = 13, "unpin_user_pages_dirty_lock", Unpin;
    /// `unpin_user_page_range_dirty_lock()`: a range of contiguous pages.
    UnpinUserPageRangeDirtyLock = 14, "unpin_user_page_range_dirty_lock", Unpin;
    /// `unpin_folio()` (6.11+): one folio pin.
    UnpinFolio = 15, "unpin_folio", Unpin;
    /// `unpin_folios()` (6.11+): an array of folio pins.
    UnpinFolios = 16, "unpin_folios", Unpin;
    /// `unpin_user_folio()` (6.11+): `npages` pins of one folio.
    UnpinUserFolio = 17, "unpin_user_folio", Unpin;
    /// `__gup_longterm_locked()`: the slow path every GUP call ends in. Its
    /// `start` argument inside a `*_fast` call says how far the lock-free
    /// walk got.
    GupSlowPath = 18, "__gup_longterm_locked", SlowPath;
    /// `gup_put_folio()`: where every FOLL_PIN release ends; see
    /// [`ApiKind::Undo`].
    GupPutFolio = 19, "gup_put_folio", Undo;
    /// `i915_gem_userptr_ioctl()`: creates a userptr object.
    I915UserptrIoctl = 20, "i915_gem_userptr_ioctl", I915;
    /// `i915_gem_object_userptr_submit_init()`: pins the object's pages.
    I915UserptrSubmitInit = 21, "i915_gem_object_userptr_submit_init", I915;
    /// `i915_gem_object_userptr_drop_ref()`: unpins them at the last ref.
    I915UserptrDropRef = 22, "i915_gem_object_userptr_drop_ref", I915;
    /// `i915_gem_userptr_put_pages()`: releases the object's pages.
    I915UserptrPutPages = 23, "i915_gem_userptr_put_pages", I915;
}

impl Api {
    /// Whether this API walks page tables lock-free before any slow path.
    pub const fn has_fast_path(self) -> bool {
        matches!(
            self,
            Api::PinUserPagesFast | Api::PinUserPagesFastOnly | Api::GetUserPagesFast | Api::GetUserPagesFastOnly
        )
    }
}

/// Where a hooked function keeps the arguments the programs read, resolved by
/// parameter *name* from the running kernel's BTF (positions moved between
/// kernels: `vmas` was dropped in 6.5, `pin_user_pages_unlocked` takes
/// `pages` before `gup_flags`).
///
/// Handed to the programs as a read-only global at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HookArgs {
    /// Index of the page/folio count argument, or [`ARG_NONE`] when the
    /// function always handles exactly one (`unpin_user_page`, `unpin_folio`).
    pub count_idx: u8,
    /// Index of the `gup_flags` argument, or [`ARG_NONE`].
    pub flags_idx: u8,
    /// Index of the `start` (user address) argument, or [`ARG_NONE`].
    pub start_idx: u8,
    /// Number of arguments the function takes.
    pub nr_args: u8,
    /// Index of the page/folio argument: an array (`struct page **pages`,
    /// `struct folio **folios`) or a single `struct page *` / `struct folio
    /// *`, per [`HookArgs::pages_form`]; [`ARG_NONE`] if there is none.
    pub pages_idx: u8,
    /// What `pages_idx` points at: one of the `PAGES_*` constants.
    pub pages_form: u8,
    /// Padding, kept zero.
    pub _pad: [u8; 2],
}

/// `pages_idx` is an array of `count` page (or folio) pointers.
pub const PAGES_ARRAY: u8 = 0;
/// `pages_idx` is one page; `count` contiguous `struct page`s follow it.
pub const PAGES_RANGE: u8 = 1;
/// `pages_idx` is one folio holding `count` pins.
pub const PAGES_FOLIO: u8 = 2;

impl HookArgs {
    /// A hook whose arguments are all unknown; it still counts calls.
    pub const NONE: HookArgs = HookArgs {
        count_idx: ARG_NONE,
        flags_idx: ARG_NONE,
        start_idx: ARG_NONE,
        nr_args: 0,
        pages_idx: ARG_NONE,
        pages_form: PAGES_ARRAY,
        _pad: [0; 2],
    };
}

/// Per-API counters, aggregated in the kernel in a per-CPU array indexed by
/// [`Api`]. User space sums the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ApiStats {
    /// Calls that returned (pin/get) or were entered (unpin), nested unpin
    /// calls excluded (see `nested_calls`).
    pub calls: u64,
    /// Pin/get: pages (or, for `memfd_pin_folios`, folio pins) the calls
    /// returned. Unpin: pins released.
    pub pages: u64,
    /// Pin/get: pages the callers asked for.
    pub requested_pages: u64,
    /// Pin/get: calls that returned a negative errno.
    pub errors: u64,
    /// Pin/get: calls that returned 0.
    pub zero_calls: u64,
    /// Pin/get: calls that returned fewer pages than asked (but more than 0).
    pub short_calls: u64,
    /// Pin: pins taken and released again inside the same call (for example
    /// pages unpinned before a LONGTERM migration). The kernel counts them as
    /// both acquired and released, so gupwatch does too.
    pub undone_pages: u64,
    /// Unpin: calls made from inside another hooked unpin (e.g.
    /// `unpin_user_pages_dirty_lock` → `unpin_user_pages`). Their pages are
    /// counted once, by the outer call.
    pub nested_calls: u64,
    /// Calls whose entry was not recorded (in flight at attach time, or the
    /// in-flight map was full): counted, but without a latency.
    pub untimed_calls: u64,
    /// Sum of call durations in nanoseconds (timed calls only).
    pub latency_ns_sum: u64,
    /// Pin/get: pages the lock-free fast walk took.
    pub fast_pages: u64,
    /// Pin/get: pages the slow path took (every page of a non-fast API).
    pub slow_pages: u64,
    /// Pin/get of a fast API whose entry was not seen, so the split is
    /// unknown. `fast_pages + slow_pages + unsplit_pages == pages +
    /// undone_pages`: pins taken and dropped inside a call count on the path
    /// that took them.
    pub unsplit_pages: u64,
    /// Fast-API calls that fell back to the slow path.
    pub fell_back_calls: u64,
    /// Pin/get calls with FOLL_LONGTERM.
    pub longterm_calls: u64,
    /// Pages those calls returned.
    pub longterm_pages: u64,
    /// log2 histogram of call durations; see [`LATENCY_BUCKETS`].
    pub latency_log2: [u64; LATENCY_BUCKETS],
    /// Pin: `undone_pages` by [`Reverted`] reason (they sum to it).
    pub reverted: [u64; REVERTED_REASONS],
}

/// Why a pin call released pins it had taken itself ([`ApiStats::undone_pages`]),
/// told by how the release was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reverted {
    /// `gup_put_folio()` before the slow path started: the lock-free walk
    /// let go of a page it had grabbed (a LONGTERM pin refused on a
    /// dirty-tracked file mapping, a page table entry that changed under
    /// it, a shared anonymous page that must be unshared first).
    FastWalk = 0,
    /// Released after the slow path started, in a FOLL_LONGTERM call: the
    /// pages it found on movable or CMA memory, released to migrate them
    /// before the call pins again (through `gup_put_folio` or a hooked
    /// unpin, depending on the kernel; or pins unwound on an error).
    Migration = 1,
    /// Released after the slow path started, in a call without
    /// FOLL_LONGTERM (the slow walk dropping a page it had grabbed).
    SlowPath = 2,
}

/// Length of [`ApiStats::reverted`].
pub const REVERTED_REASONS: usize = 3;

impl Reverted {
    /// Every reason, in index order.
    pub const ALL: [Reverted; REVERTED_REASONS] = [Reverted::FastWalk, Reverted::Migration, Reverted::SlowPath];

    /// The `reason` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Reverted::FastWalk => "fast_walk",
            Reverted::Migration => "migration",
            Reverted::SlowPath => "slow_path",
        }
    }
}

impl ApiStats {
    /// All counters zero.
    pub const ZERO: ApiStats = ApiStats {
        calls: 0,
        pages: 0,
        requested_pages: 0,
        errors: 0,
        zero_calls: 0,
        short_calls: 0,
        undone_pages: 0,
        nested_calls: 0,
        untimed_calls: 0,
        latency_ns_sum: 0,
        fast_pages: 0,
        slow_pages: 0,
        unsplit_pages: 0,
        fell_back_calls: 0,
        longterm_calls: 0,
        longterm_pages: 0,
        latency_log2: [0; LATENCY_BUCKETS],
        reverted: [0; REVERTED_REASONS],
    };
}

/// A call in flight, keyed by thread (`pid_tgid`) in the in-flight map:
/// written at entry, consumed at exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Inflight {
    /// The [`Api`] index of the outermost hooked call on this thread.
    pub api: u32,
    /// Non-zero while a hooked unpin runs nested inside this (pin) call, so
    /// `gup_put_folio` does not count its releases a second time.
    pub nested_unpin: u32,
    /// `bpf_ktime_get_ns()` at entry.
    pub start_ns: u64,
    /// Pages asked for (pin/get), from the count argument; for an unpin,
    /// the pages its entry counted that `gup_put_folio` has not released
    /// yet.
    pub requested: u64,
    /// `gup_flags`, or 0 when the function has none.
    pub gup_flags: u64,
    /// The user address the call starts at, or 0 when unknown.
    pub start: u64,
    /// Where the slow path started inside this call, or 0 if it was not
    /// entered (set by the [`Api::GupSlowPath`] hook).
    pub slow_start: u64,
    /// The `pages`/`folios` array argument, for tracking at exit.
    pub pages_ptr: u64,
    /// The stack pointer at the hooked function's entry. A later call of
    /// this thread that cannot be inside this one
    /// ([`irq::is_inside`]) shows the record stale: the kernel skipped its
    /// exit program.
    pub frame: u64,
    /// 1 if the call was hooked by fentry/fexit (see [`irq::is_inside`]).
    pub trampoline: u64,
    /// The call's return address, read at entry from its slot
    /// ([`irq::ret_slot`]): unchanged while the call is in progress
    /// ([`irq::record_is_live`]), and the call's site ([`AttribKey::site`]).
    pub ret: u64,
    /// Pages the call counted at entry (an unpin), kept for the mark its
    /// exit leaves when it ran inside another hooked unpin
    /// ([`skipped`]); for a mark ([`skipped::MARK`]), the pages it holds.
    pub counted: u64,
}

/// Index of each counter in the per-CPU diagnostics array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Diag {
    /// An entry could not be recorded because the in-flight map was full.
    InflightFull = 0,
    /// An argument could not be read (kprobe register read failed).
    ArgReadFailed = 1,
    /// A call could not be attributed: the attribution map was full. Its
    /// pages are still in the per-API totals.
    AttribFull = 2,
    /// A kernel stack could not be captured (stack map full or collision).
    StackLost = 3,
    /// Pins recorded in the tracking map.
    PinsTracked = 4,
    /// Pins not recorded: the tracking map was full, or a folio already had
    /// two other owners. Totals stay exact; the outstanding view is partial.
    PinsUntracked = 5,
    /// Unpins of pins gupwatch never saw taken (usually taken before it
    /// started). Per call site in the unbalanced map.
    UnbalancedUnpins = 6,
    /// Unpins that matched a tracked pin.
    UnpinsMatched = 7,
    /// i915 userptr objects not recorded: the object map was full.
    I915ObjectsFull = 8,
    /// Unpins whose entry program did not run (the kernel skipped it, or
    /// the call was already running when the probes attached) and whose
    /// releases were all counted inside them: nothing covered the
    /// `gup_put_folio` calls (or the hooked unpin) they made, so those
    /// counted them, where the kernel counts them ([`skipped`]).
    EntrySkipped = 9,
    /// Per-thread records of calls whose exit program never ran (the
    /// kernel skipped it), dropped when the thread's next call showed them
    /// stale ([`irq::record_is_live`]).
    StaleRecords = 10,
    /// Unpins whose entry program did not run and whose exit counted their
    /// pages, less any counted inside them ([`skipped`]): the release
    /// happened where nothing else could see it (`gup_put_folio` inlined).
    CountedAtExit = 11,
    /// Unpins whose entry program did not run, under a kretprobe that
    /// cannot read their arguments at exit: whatever was not counted
    /// inside them is lost (`gupwatch_skipped_entries_total`).
    UncountedAtExit = 12,
    /// Pins that found their folio's tracking record closed by an unpin on
    /// another CPU (it released the folio's last tracked pin at the same
    /// moment), or no longer the map's, and were placed again.
    LedgerReplaced = 13,
    /// NULL entries in the page arrays of hooked unpins: the kernel skips
    /// them (its own error paths, `pofs_unpin()` after a failed LONGTERM
    /// migration, pass arrays whose entries it cleared), so they are not
    /// counted as releases.
    UnpinNullEntries = 14,
}

/// Length of the diagnostics array.
pub const DIAG_COUNT: usize = 15;

impl Diag {
    /// Every counter, in index order.
    pub const ALL: [Diag; DIAG_COUNT] = [
        Diag::InflightFull,
        Diag::ArgReadFailed,
        Diag::AttribFull,
        Diag::StackLost,
        Diag::PinsTracked,
        Diag::PinsUntracked,
        Diag::UnbalancedUnpins,
        Diag::UnpinsMatched,
        Diag::I915ObjectsFull,
        Diag::EntrySkipped,
        Diag::StaleRecords,
        Diag::CountedAtExit,
        Diag::UncountedAtExit,
        Diag::LedgerReplaced,
        Diag::UnpinNullEntries,
    ];

    /// The counter with this index, if any.
    pub const fn from_index(index: u32) -> Option<Diag> {
        if (index as usize) < DIAG_COUNT {
            Some(Diag::ALL[index as usize])
        } else {
            None
        }
    }
}

/// Debug-level logging of the eBPF side's own trouble (`gupwatch::ebpf`):
/// when user space sets the programs' `LOG_DIAG` global, the first
/// [`diag_log::FIRST`] events of each [`Diag`] counter on each CPU are
/// logged through aya-log with their details, as one line of
/// `diag=D why=W api=A tgid=T n=N err=E key=K` that user space renders.
pub mod diag_log {
    /// Events logged per counter and CPU; the rest are only counted.
    pub const FIRST: u64 = 4;
    /// `api` when the event belongs to no one API.
    pub const API_NONE: u32 = u32::MAX;

    /// `why`: nothing more to say than the counter.
    pub const WHY_NONE: u32 = 0;
    /// A map insert was refused (usually full); `err` is the errno.
    pub const WHY_MAP_FULL: u32 = 1;
    /// The folio already had two other owners.
    pub const WHY_TWO_OWNERS: u32 = 2;
    /// The call returned pages but gupwatch has no pages array to walk.
    pub const WHY_NO_PAGES_ARRAY: u32 = 3;
    /// The call returned more pages than its array can hold.
    pub const WHY_BEYOND_ARRAY: u32 = 4;
    /// The call's entry was not seen (attached mid-call, or the in-flight
    /// record was lost).
    pub const WHY_NO_ENTRY: u32 = 5;
    /// More pages in one call than are walked per call.
    pub const WHY_PER_CALL_LIMIT: u32 = 6;
    /// A function argument could not be read; `key` is its index.
    pub const WHY_ARG: u32 = 7;
    /// A pin found the folio's record closed by its last unpin twice, and
    /// then its spill record closed too (both being deleted).
    pub const WHY_LEDGER_CLOSED: u32 = 8;
}

/// Default capacity of the pin tracking map (folios); user space may set
/// another at load time.
pub const TRACK_CAPACITY: u32 = 65536;

/// Most pages one call is tracked for (bpf_loop iterations); the rest
/// counts as untracked.
pub const TRACK_MAX_PER_CALL: u32 = 1 << 20;

/// Capacity of the exited-process map (an LRU).
pub const EXITED_CAPACITY: u32 = 4096;

/// Capacity of the i915 userptr object map.
pub const I915_OBJECTS_CAPACITY: u32 = 4096;

/// Capacity of the unbalanced-unpin map (call sites, by return address).
pub const UNBALANCED_CAPACITY: u32 = 1024;

/// One owner of the pins on a folio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PinOwner {
    /// Process that pinned (0: slot unused).
    pub tgid: u32,
    /// Pins it holds on this folio.
    pub count: u32,
    /// `bpf_ktime_get_ns()` of its first pin still held.
    pub first_ns: u64,
    /// Kernel stack of that pin (negative: unknown).
    pub stack_id: i64,
    /// [`Api`] index that pinned.
    pub api: u32,
    /// 1 if the pin was FOLL_LONGTERM.
    pub longterm: u32,
    /// `comm` of the pinning task.
    pub comm: [u8; 16],
    /// The file whose holders keep the pin (LONGTERM pins made by a
    /// syscall on a descriptor; [`object::PinObject::NONE`] otherwise).
    pub object: object::PinObject,
}

/// Owner slots per tracked folio.
pub const PIN_OWNERS: usize = 3;

/// `PinOwner::tgid` of the last slot once it holds pins of more than one
/// process: no single owner, so never orphaned.
pub const SHARED_OWNER: u32 = 0;

/// The tracked pins on one folio, by owner. Any number of processes may
/// pin one folio at once (direct I/O into a shared buffer pool): the first
/// [`PIN_OWNERS`] − 1 each get a slot, and the last slot counts the pins of
/// every further owner too, as [`SHARED_OWNER`] once it holds more than
/// one's. So every pin
/// is tracked and every unpin finds its count; only attribution is
/// approximate past that many owners.
///
/// Counts change only by atomic adds, so pins and unpins of one folio on
/// several CPUs at once never lose one; a slot can go below zero for a
/// while ([`PinRecord::total`], [`PinRecord::held`]).
///
/// `refs` decides when the record may be deleted (docs/exactness.md, "The
/// ledger's remove protocol"): a pin takes a reference (fetch-add) before it
/// adds to a slot, an unpin gives back what it took from the slots after
/// taking it, and only the unpin that brings `refs` to zero may close the
/// record, by compare-and-swap of 0 to [`PinRecord::CLOSED`], and delete
/// it. A pin that finds the record closed ([`PinRecord::is_closed`]) puts
/// its reference back and places itself in a fresh record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PinRecord {
    /// The owners; a slot with `count == 0` is free.
    pub owners: [PinOwner; PIN_OWNERS],
    /// Pins held plus pins being placed; [`PinRecord::CLOSED`] once an
    /// unpin has claimed the record for deletion.
    pub refs: u32,
    /// Keeps the record 8-aligned with no implicit padding (`aya::Pod`).
    pub pad: u32,
}

impl PinRecord {
    /// `refs` of a record its last unpin has closed for deletion. Pins that
    /// arrive after the close add to it and take their add back, so a
    /// closed record reads between `CLOSED` and a little above it; a record
    /// over-released by unbalanced unpins wraps below zero, above `i32::MAX`
    /// as a `u32`, and is not closed.
    pub const CLOSED: u32 = 1 << 30;

    /// A record with these owners, no pin being placed, open.
    pub const fn of(owners: [PinOwner; PIN_OWNERS]) -> PinRecord {
        PinRecord { owners, refs: 0, pad: 0 }
    }

    /// Whether `refs` (as a pin's fetch-add returned it) says the record
    /// is closed: the pin arrived after the record's last unpin claimed it.
    #[inline(always)]
    pub const fn is_closed(refs: u32) -> bool {
        refs >= Self::CLOSED && refs <= i32::MAX as u32
    }

    /// Pins held on the folio in all: the slots' sum. Unpins on several CPUs
    /// at once choose the slot to take from on reads another CPU may just
    /// have changed, so one slot can drop below zero (read as `i32`) while
    /// another keeps the pins it lost; the sum stays right.
    #[inline(always)]
    pub fn total(&self) -> u32 {
        self.owners[0].count.wrapping_add(self.owners[1].count).wrapping_add(self.owners[2].count)
    }

    /// Pins per slot with any slot below zero settled against the others,
    /// the last slot first (the order unpins take from): what each owner
    /// holds as far as the ledger can tell.
    pub fn held(&self) -> [u32; PIN_OWNERS] {
        let mut c = [0i64; PIN_OWNERS];
        for (v, o) in c.iter_mut().zip(self.owners.iter()) {
            *v = i64::from(o.count as i32);
        }
        for k in 0..PIN_OWNERS {
            while c[k] < 0 {
                let Some(j) = (0..PIN_OWNERS).rev().find(|&j| c[j] > 0) else {
                    // More released than held: nothing is held.
                    c[k] = 0;
                    break;
                };
                let moved = c[j].min(-c[k]);
                c[j] -= moved;
                c[k] += moved;
            }
        }
        let mut out = [0u32; PIN_OWNERS];
        for (o, v) in out.iter_mut().zip(c) {
            *o = v as u32;
        }
        out
    }
}

/// Capacity of the attribution map: (process, API, call stack) triples.
pub const ATTRIB_CAPACITY: u32 = 16384;

/// Capacity of the kernel stack map.
pub const STACK_CAPACITY: u32 = 4096;

/// Capacity of the errno map: distinct (API, errno) pairs.
pub const ERRNO_CAPACITY: u32 = 1024;

/// Key of the attribution map: who called which API from where.
///
/// The site is the return address into the caller, one stack read: the
/// whole kernel stack (thousands of instructions to unwind) is taken only
/// when a key is first seen, into [`AttribValue::stack_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AttribKey {
    /// Process (thread group) id.
    pub tgid: u32,
    /// [`Api`] index.
    pub api: u32,
    /// Return address into the calling function; 0 when unknown (an exit
    /// whose entry was not seen).
    pub site: u64,
}

/// Value of the attribution map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct AttribValue {
    /// Calls.
    pub calls: u64,
    /// Pages pinned/referenced (pin/get) or released (unpin).
    pub pages: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Pages the fast walk took.
    pub fast_pages: u64,
    /// Pages the slow path took.
    pub slow_pages: u64,
    /// Pages pinned with FOLL_LONGTERM.
    pub longterm_pages: u64,
    /// cgroup v2 id of the first caller.
    pub cgroup_id: u64,
    /// Kernel stack of the first call seen with this key, in the stack
    /// map (negative: not captured).
    pub stack_id: i64,
    /// `comm` of the first caller.
    pub comm: [u8; 16],
}

impl AttribValue {
    /// Nothing counted, no stack captured: the base of a delta or of a
    /// fresh entry.
    pub const ZERO: AttribValue = AttribValue {
        calls: 0,
        pages: 0,
        errors: 0,
        fast_pages: 0,
        slow_pages: 0,
        longterm_pages: 0,
        cgroup_id: 0,
        stack_id: -1,
        comm: [0; 16],
    };
}

/// Capacity of the in-flight map: threads inside a hooked call at once.
pub const INFLIGHT_CAPACITY: u32 = 8192;

/// The log2 latency bucket for a duration in nanoseconds.
#[inline(always)]
pub const fn latency_bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let b = 63 - ns.leading_zeros() as usize;
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and arrays of them, with explicit
    // padding fields; every bit pattern is valid.
    unsafe impl aya::Pod for super::ApiStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AttribKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AttribValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PinOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PinRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::object::ObjectLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::hold::HoldHist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::i915::I915Object {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::irq::IrqUnpins {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::skipped::TextRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::skipped::UnpinTexts {}
}

/// The folio (head page) of `page`, from the word at the `compound_head`
/// offset of its `struct page` (`compound_head` before 7.0,
/// `compound_info` since), as the kernel's `compound_head()` computes it:
///
/// - bit 0 clear: not a tail page, the page is its own folio;
/// - bit 0 set, the rest a pointer: the head page's address (+1);
/// - bit 0 set, the rest a mask (7.0+, with HugeTLB vmemmap optimization
///   and a power-of-two `struct page`): ones from bit 63 down to
///   `order + log2(sizeof(struct page))`, so `page & info` is the head.
///
/// The two tail forms are told apart by shape: a mask is a run of ones
/// from the top bit, which no `struct page` address is (vmemmap lives far
/// below the top of the address space). Shared by the eBPF programs and
/// their tests.
#[inline(always)]
pub fn folio_of(page: u64, info: u64) -> u64 {
    if info & 1 == 0 {
        return page;
    }
    let rest = info & !1;
    if rest != 0 && (rest | rest.wrapping_sub(1)) == u64::MAX {
        page & rest
    } else {
        rest
    }
}

/// The ledger key of a folio's spill record: where its pins go while its
/// own record is closed and waiting for its delete (docs/exactness.md, "The
/// ledger's remove protocol"). A `struct page` is 8-aligned, so bit 0 of
/// the folio pointer is free to tell the two apart.
#[inline(always)]
pub const fn spill_key(folio: u64) -> u64 {
    folio | 1
}

/// The folio a ledger key stands for: its own record or its spill record.
#[inline(always)]
pub const fn key_folio(key: u64) -> u64 {
    key & !1
}

#[cfg(test)]
mod pin_record_tests {
    use super::*;

    fn rec(counts: [u32; PIN_OWNERS]) -> PinRecord {
        let o = PinOwner { tgid: 1, count: 0, first_ns: 0, stack_id: -1, api: 0, longterm: 0, comm: [0; 16], object: object::PinObject::NONE };
        let mut r = PinRecord::of([o; PIN_OWNERS]);
        for (s, c) in r.owners.iter_mut().zip(counts) {
            s.count = c;
        }
        r
    }

    #[test]
    fn two_unpins_that_both_took_the_same_slot_keep_the_sum() {
        // Slots 1 and 2 held one pin each; two unpins on two CPUs both read
        // slot 2 as 1 and both took from it.
        let r = rec([0, 1, 1u32.wrapping_sub(2)]);
        assert_eq!(r.total(), 0, "both pins were released: the record is empty");
        assert_eq!(r.held(), [0, 0, 0]);
    }

    #[test]
    fn a_negative_slot_is_settled_against_the_others_last_first() {
        let r = rec([3, 2, 0u32.wrapping_sub(3)]);
        assert_eq!(r.total(), 2);
        assert_eq!(r.held(), [2, 0, 0]);
        let r = rec([0u32.wrapping_sub(1), 2, 4]);
        assert_eq!(r.held(), [0, 2, 3]);
    }

    #[test]
    fn closed_is_the_close_plus_late_pins_never_an_over_release() {
        assert!(!PinRecord::is_closed(0));
        assert!(!PinRecord::is_closed(5));
        assert!(PinRecord::is_closed(PinRecord::CLOSED));
        // Late pins add to a closed record before they see it closed.
        assert!(PinRecord::is_closed(PinRecord::CLOSED + 3));
        // Two unpins that matched one pin leave `refs` below zero: open,
        // so pins still land there.
        assert!(!PinRecord::is_closed(1u32.wrapping_sub(2)));
        assert!(!PinRecord::is_closed(0u32.wrapping_sub(PinRecord::CLOSED)));
    }

    #[test]
    fn a_spill_key_names_its_folio_and_never_another_folio() {
        let folio = 0xffff_ea00_0408_0040u64;
        assert_ne!(spill_key(folio), folio);
        assert_eq!(key_folio(spill_key(folio)), folio);
        assert_eq!(key_folio(folio), folio);
        // The next struct page is 64 bytes on: no spill key is a folio.
        assert_ne!(spill_key(folio), folio + 64);
    }

    #[test]
    fn the_record_is_8_aligned_without_implicit_padding() {
        // Map values are copied as plain bytes (aya::Pod); `refs` is the
        // target of 32-bit atomics.
        assert_eq!(core::mem::align_of::<PinRecord>(), 8);
        assert_eq!(core::mem::size_of::<PinRecord>(), PIN_OWNERS * core::mem::size_of::<PinOwner>() + 8);
        assert_eq!(core::mem::offset_of!(PinRecord, refs) % 4, 0);
    }

    #[test]
    fn plain_counts_are_untouched() {
        let r = rec([5, 0, 7]);
        assert_eq!((r.total(), r.held()), (12, [5, 0, 7]));
    }

    #[test]
    fn more_released_than_held_holds_nothing() {
        let r = rec([1, 0, 0u32.wrapping_sub(4)]);
        assert_eq!(r.held(), [0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn diag_indices_round_trip() {
        use super::{Diag, DIAG_COUNT};
        for (i, d) in Diag::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert_eq!(Diag::from_index(i as u32), Some(*d));
        }
        assert_eq!(Diag::from_index(DIAG_COUNT as u32), None);
    }

    #[test]
    fn folio_of_decodes_every_compound_form() {
        use super::folio_of;
        let head = 0xffff_ea00_0408_0000u64; // a 2 MiB folio's head (order 9)
        let tail = head + 255 * 64;
        // Not a tail.
        assert_eq!(folio_of(head, 0), head);
        assert_eq!(folio_of(head, 0xffff_ea00_1111_1100), head, "bit 0 clear: a list pointer, not a head");
        // Pointer form (before 7.0, or without HVO).
        assert_eq!(folio_of(tail, head | 1), head);
        // Mask form: order 9, 64-byte struct page -> bits 63..15.
        let mask = !((1u64 << 15) - 1);
        assert_eq!(folio_of(tail, mask | 1), head);
        assert_eq!(folio_of(head + 64, mask | 1), head);
        // Order 18 (1 GiB hugetlb).
        let gig_head = 0xffff_ea00_4000_0000u64;
        let gig_mask = !((1u64 << 24) - 1);
        assert_eq!(folio_of(gig_head + 1000 * 64, gig_mask | 1), gig_head);
    }

    extern crate std;
    use super::*;

    #[test]
    fn indices_match_discriminants() {
        for (i, api) in Api::ALL.iter().enumerate() {
            assert_eq!(*api as usize, i);
            assert_eq!(Api::from_index(i as u32), Some(*api));
            assert_eq!(Api::from_symbol(api.symbol()), Some(*api));
        }
        assert_eq!(Api::from_index(API_COUNT as u32), None);
    }

    #[test]
    fn latency_buckets_are_log2() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 1);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
