//! The fuzz harnesses: one function per target, each taking the fuzzer's
//! bytes and panicking only when gupwatch breaks an invariant (a panic in
//! gupwatch itself counts as one).
//!
//! They are plain functions over `&[u8]` so the same code runs in two
//! places: under libFuzzer (`fuzz/fuzz_targets/*.rs`, one line each) and in
//! gup-user's ordinary test suite, which replays the committed seeds
//! (`fuzz/seeds/<target>/`) through them on every `cargo test`
//! (`gup-user/tests/fuzz_seeds.rs` includes this file with `#[path]`).
//! So this file may use only std, `gupwatch`, `gup_common`, `aya`,
//! `serde_json` and the `exposition` module beside it.

#![allow(dead_code)]

use std::{collections::HashMap, path::Path, sync::Arc};

use gup_common::{Api, ApiStats, AttribKey, AttribValue, PinRecord, API_COUNT, DIAG_COUNT};
use gup_report::{Caller, Subsystem};
use gupwatch::{
    model::attribution,
    kernel::kallsyms::Kallsyms,
    model::leaks::{self, LeakTable},
    collect::{self, PlanSummary, Reading, Settings, TopProcesses},
    export::{
        api,
        prometheus::{self, Format},
    },
    model::counters::{self, Snapshot},
    kernel::plan::ProbePlan,
    kernel::vmstat,
};

use crate::exposition::{self, Flavor};

/// A harness: the fuzzer's bytes in, a panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// seed directories).
pub const TARGETS: &[(&str, Harness)] = &[
    ("btf_parse", btf_parse),
    ("kallsyms", kallsyms),
    ("vmstat_parse", vmstat_parse),
    ("kernel_version", kernel_version),
    ("map_records", map_records),
    ("cli_values", cli_values),
    ("config_toml", config_toml),
    ("metrics_exposition", metrics_exposition),
    ("web_config", web_config),
    ("http_request", http_request),
];

/// Reads the fuzzer's bytes as a stream of small values; past the end it
/// yields zeros, so every input decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// The next `n` bytes, zero-padded.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let have = self.data.len().saturating_sub(self.pos).min(n);
        out[..have].copy_from_slice(&self.data[self.pos..self.pos + have]);
        self.pos += have;
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1)[0]
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().unwrap())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().unwrap())
    }

    /// A value of a map's key or value type, from its raw bytes: what aya
    /// does with the bytes a `bpf(BPF_MAP_LOOKUP_ELEM)` returns.
    pub fn pod<T: aya::Pod>(&mut self) -> T {
        let b = self.bytes(std::mem::size_of::<T>());
        // SAFETY: `T: Pod` (gup_common's map types): every bit pattern is a
        // valid value, and the buffer holds size_of::<T>() bytes.
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn blob(&mut self, max: usize) -> Vec<u8> {
        let n = self.u8() as usize % (max + 1);
        self.bytes(n)
    }

    /// A length-prefixed string (invalid UTF-8 replaced, as gupwatch does).
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.blob(max)).into_owned()
    }

    /// A kernel `comm`: 16 raw bytes, as the BPF maps hold it.
    pub fn comm(&mut self) -> [u8; 16] {
        self.bytes(16).try_into().unwrap()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        r
    }
}

fn kallsyms_fixture() -> Kallsyms {
    Kallsyms::parse(
        "ffffffff81000000 T pin_user_pages_fast\n\
         ffffffff81000100 T unpin_user_pages\n\
         ffffffff81000200 T process_vm_rw_core\n\
         ffffffff81000300 t io_pin_pages\n\
         ffffffff81000400 T bio_iov_iter_get_pages\n\
         ffffffffc0000000 t i915_gem_userptr_get_pages\t[i915]\n",
    )
}

// ---------------------------------------------------------------------------
// BTF

/// `btf::KernelBtf::parse` on arbitrary bytes, then the probe plan built
/// from whatever it accepted (the plan is the parser's only consumer).
pub fn btf_parse(data: &[u8]) {
    let Ok(btf) = gupwatch::kernel::btf::KernelBtf::parse(data) else { return };
    for f in ["pin_user_pages_fast", "pin_user_pages_remote", "unpin_user_pages", "gup_put_folio", ""] {
        if let Some(p) = btf.func(f) {
            let _ = p.param_index(&["pages", "nr_pages", "gup_flags"]);
        }
    }
    let _ = btf.enumerator("FOLL_PIN");
    let _ = btf.enumerator("FOLL_LONGTERM");
    let _ = btf.struct_size("page");
    let _ = btf.member_offset("page", "compound_head");
    let _ = btf.member_offset("folio", "_pincount");
    let plan = ProbePlan::resolve("6.12.0-fuzz".into(), Ok(&btf), &kallsyms_fixture());
    let _ = plan.hook_args();
    let _ = plan.to_table();
    let _ = (plan.foll_pin(), plan.foll_longterm(), plan.splits_fast_path());
    serde_json::to_string(&plan).expect("the plan serializes");
}

// ---------------------------------------------------------------------------
// kallsyms

/// `/proc/kallsyms` parsing, lookups and symbolization.
pub fn kallsyms(data: &[u8]) {
    let mut input = Input::new(data);
    let addrs: Vec<u64> = (0..4).map(|_| input.u64()).collect();
    let text = String::from_utf8_lossy(input.rest());
    let k = Kallsyms::parse(&text);
    let mut names = vec![];
    for line in text.lines().take(64) {
        if let Some(name) = line.split_whitespace().nth(2) {
            let _ = k.get(name);
            if let Some((sym, _)) = k.find_function(name) {
                assert!(sym == name || sym.starts_with(&format!("{name}.")), "find_function({name}) gave {sym}");
            }
            let _ = k.has_module(name);
            names.push(name.to_string());
        }
    }
    let c = attribution::caller_of(&addrs, &k);
    if let Some(m) = &c.module {
        assert!(k.has_module(m), "caller module {m} is not in the table");
    }
    for a in addrs {
        if let Some((name, off)) = k.symbolize(a) {
            assert!(off <= a && off <= gupwatch::kernel::kallsyms::MAX_SYMBOL_OFFSET, "offset {off} beyond address {a:#x}");
            assert!(k.get(name).is_some(), "symbolize gave {name}, which get() does not know");
        }
    }
    let frames: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = attribution::classify(&frames);
    assert!(!c.function.is_empty());
    let plan = ProbePlan::resolve("6.1.0-fuzz".into(), Err("no BTF (fuzz)".into()), &k);
    let _ = plan.to_table();
}

// ---------------------------------------------------------------------------
// Kernel version strings

/// Every kernel version parser (gup-user/src/kernel/version.rs) on the same text:
/// an error or a version, never a panic (issue 21: a version string aya
/// 0.13 could not parse crashed gupwatch). A version that parses prints
/// and orders without panicking, and a release string's version comes
/// back from its own display.
pub fn kernel_version(data: &[u8]) {
    use gupwatch::kernel::version;
    let text = String::from_utf8_lossy(data);
    let parsed = [
        version::parse_release(&text).ok(),
        version::parse_debian_version(&text).ok(),
        version::parse_uname_version(&text).ok().map(|(_, v)| v),
        version::parse_version_signature(&text).ok().map(|(_, v)| v),
    ];
    for v in parsed.into_iter().flatten() {
        let _ = (v.at_least(6, 3), v.is_prerelease(), v.cmp(&v));
        assert_eq!(version::parse_release(&v.to_string()), Ok(v), "{v} round-trips");
    }
    let k = version::RunningKernel::from_strings(&text, Some(&text), Some(&text));
    let _ = (k.version(), k.describe(), k.assess());
}

// ---------------------------------------------------------------------------
// /proc/vmstat

/// `vmstat::parse`, and the arithmetic done on what it returns; and the
/// reduced mode's other /proc parsers (`/proc/PID/status`, io_uring
/// fdinfo), which read the same kind of kernel text.
pub fn vmstat_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = gupwatch::model::accounted::parse_status(&text) {
        assert!(s.pinned_bytes % 1024 == 0 && s.locked_bytes % 1024 == 0);
    }
    if let Ok(Some(b)) = gupwatch::model::accounted::parse_uring_fdinfo(data, 4096) {
        assert!(b.bytes == 0 || b.pages > 0 || b.listed == 0, "{b:?}");
    }
    let (a, b) = text.split_once("\n---\n").unwrap_or((&text, ""));
    match vmstat::parse(a) {
        Ok(now) => {
            let _ = now.outstanding();
            if let Ok(earlier) = vmstat::parse(b) {
                if let Ok(d) = now.delta_since(&earlier) {
                    assert_eq!(d.acquired, now.acquired - earlier.acquired);
                    let _ = (d.net(), d.is_zero());
                }
            }
        }
        Err(e) => {
            // Every error names the counter or the file.
            let msg = e.to_string();
            assert!(msg.contains("vmstat") || msg.contains("nr_foll_pin"), "{msg}");
        }
    }
}

// ---------------------------------------------------------------------------
// Records read from the BPF maps

fn snapshot_from(input: &mut Input<'_>) -> Snapshot {
    let mut s = Snapshot::default();
    // Per-CPU values of a few APIs, summed as the reader sums them.
    let ncpu = input.u8() % 4 + 1;
    for _ in 0..input.u8() % 6 {
        let api = input.u8() as usize % API_COUNT;
        for _ in 0..ncpu {
            let per_cpu: ApiStats = input.pod();
            counters::accumulate(&mut s.apis[api], &per_cpu);
        }
    }
    for d in s.diag.iter_mut() {
        *d = if input.u8() & 1 == 1 { input.u64() } else { 0 };
    }
    for _ in 0..input.u8() % 6 {
        // The errno map's key packs (api << 16 | errno), as the reader splits it.
        let k = input.u32();
        s.errnos.insert((k >> 16, k & 0xffff), input.u64());
    }
    for _ in 0..input.u8() % 8 {
        let k: AttribKey = input.pod();
        let v: AttribValue = input.pod();
        s.attrib.push((k, v));
    }
    s
}

/// Decoding of map records: per-CPU `ApiStats`, attribution keys and
/// values, pin records, i915 objects, from raw bytes, through the code that
/// turns them into snapshots, rows, totals and leak reports.
pub fn map_records(data: &[u8]) {
    let mut input = Input::new(data);
    let earlier = snapshot_from(&mut input);
    let now = snapshot_from(&mut input);
    let d = now.since(&earlier);
    let _ = d.totals();
    let _ = now.totals();
    for api in Api::ALL {
        let _ = d.errnos_of(api);
    }
    let _ = diag_len_is(&d.diag);

    // Attribution rows, with stacks from the input.
    let stacks: Vec<Vec<u64>> = (0..3).map(|_| (0..input.u8() % 6).map(|_| input.u64()).collect()).collect();
    let ks = kallsyms_fixture();
    let rows = attribution::resolve(&now.attrib, &ks, |id| stacks.get(id as usize).cloned());
    for r in &rows {
        assert!(!r.comm.contains('\0'), "comm keeps a NUL: {:?}", r.comm);
        assert!(r.comm.chars().count() <= 16);
    }
    for (_, v) in &now.attrib {
        let c = attribution::comm_string(&v.comm);
        assert!(c.len() <= 16 * 3, "{c:?}");
    }

    // Pin records → leak report.
    let pins: Vec<(u64, PinRecord)> = (0..input.u8() % 8).map(|_| (input.u64(), input.pod())).collect();
    let exited: HashMap<u32, u64> = (0..input.u8() % 4).map(|_| (input.u32(), input.u64())).collect();
    let unbalanced: Vec<(u64, u64)> = (0..input.u8() % 4).map(|_| (input.u64(), input.u64())).collect();
    let maps = leaks::TrackingMaps { pins, exited: exited.clone(), unbalanced };
    let alive_mask = input.u8();
    let caller = |id: i64| Caller {
        function: if id < 0 { "unknown".into() } else { format!("site_{}", id % 5) },
        subsystem: if id % 2 == 0 { Subsystem::IoUring } else { Subsystem::Other },
        module: None,
    };
    let site = |ip: u64| Caller { function: format!("site_{:x}", ip % 5), subsystem: Subsystem::Other, module: None };
    let alive = |tgid: u32| alive_mask & (1 << (tgid % 8)) != 0;
    // Objects with an odd inode have a live holder.
    let holders = |objects: &[gup_common::object::PinObject]| gupwatch::model::holders::Holders {
        by_object: objects
            .iter()
            .filter(|o| o.ino % 2 == 1)
            .map(|o| (*o, vec![gup_report::ObjectHolder { pid: 1, comm: "init".into(), cgroup: String::new() }]))
            .collect(),
        unreadable: objects.len() % 2,
        // Some readings without the holder iterator (its refusal note).
        file_lookup_failed: (objects.len() % 3 == 0).then(|| "refused".to_string()),
    };
    // Arbitrary folio keys against an arbitrary vmemmap and zones: the
    // PFN arithmetic must neither overflow nor divide by zero.
    let placement = gupwatch::kernel::placement::Placement {
        vmemmap_base: input.u64(),
        page_struct_size: input.u8() as u64,
        zones: (0..input.u8() % 4)
            .map(|i| gupwatch::kernel::placement::ZoneRange {
                name: if i % 2 == 0 { "Movable".into() } else { "Normal".into() },
                start_pfn: input.u64(),
                spanned: input.u64(),
            })
            .collect(),
    };
    let cx = leaks::Context {
        placement: (input.u8() & 1 == 1).then_some(&placement),
        now_ns: input.u64(),
        since_ns: if input.u8() & 1 == 1 { input.u64() } else { 0 },
        caller: &caller,
        site: &site,
        alive: &alive,
        holders: &holders,
        kernel_outstanding: if input.u8() & 1 == 1 { Some(input.u64() as i64) } else { None },
        untracked_pins: input.u64(),
    };
    let policy = leaks::LeakPolicy {
        long_held: std::time::Duration::from_secs(input.u32() as u64),
        growth_readings: input.u8() as usize % 4,
        ..Default::default()
    };
    let mut growth = leaks::GrowthTracker::default();
    let report = leaks::analyze(&maps, &cx, &policy, Some(&mut growth));
    let report2 = leaks::analyze(&maps, &cx, &policy, Some(&mut growth));
    let expected: u64 = maps
        .pins
        .iter()
        .flat_map(|(_, r)| r.held())
        .fold(0u64, |s, c| s.wrapping_add(c as u64));
    assert_eq!(report.tracked_outstanding, expected);
    assert_eq!(report2.tracked_outstanding, expected);
    let _ = report.to_table();
    serde_json::to_string(&report).expect("the leak report serializes");
    for h in &report.holdings {
        assert!(!h.orphaned || h.holders.is_empty(), "a held holding is not orphaned: {h:?}");
        assert!(!h.orphaned || h.owner_exited, "only an exited owner's pins are orphaned: {h:?}");
    }

    // i915 objects.
    let objects: Vec<(u64, gup_common::i915::I915Object)> =
        (0..input.u8() % 4).map(|_| (input.u64(), input.pod())).collect();
    let rows = gupwatch::model::i915::rows(&objects, &exited);
    assert_eq!(rows.len(), objects.len());
    serde_json::to_string(&rows).expect("i915 rows serialize");
}

fn diag_len_is(d: &[u64; DIAG_COUNT]) -> usize {
    d.len()
}

// ---------------------------------------------------------------------------
// Command-line values

/// The value parsers of the command line.
pub fn cli_values(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = gupwatch::args::parse_interval(&s) {
        let secs = d.as_secs_f64();
        assert!((0.049..=3600.0).contains(&secs), "interval {secs} accepted from {s:?}");
        // What the watch loop does with it.
        let _ = std::time::Instant::now().checked_add(d).expect("interval fits an Instant");
    }
    if let Ok(secs) = gupwatch::args::parse_run_seconds(&s) {
        let _ = std::time::Duration::from_secs_f64(secs);
    }
}

// ---------------------------------------------------------------------------
// TOML configuration

/// `gupwatch run --config` files.
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/gupwatch/gupwatch.toml");
    match gupwatch::config::RunOptions::parse(&text, path) {
        Ok(o) => {
            let s = gupwatch::config::RunOptions::resolve(&gupwatch::config::RunOptions::default(), &o);
            let _ = s.describe();
            let base = gupwatch::config::RunOptions::resolve(&Default::default(), &Default::default());
            let plan = base.reload_plan(&s);
            let _ = base.reloaded(&s);
            let _ = plan;
        }
        Err(e) => assert!(e.to_string().starts_with("/etc/gupwatch/gupwatch.toml"), "{e}"),
    }
}

// ---------------------------------------------------------------------------
// Metrics exposition

/// A reading with rows whose `comm` and caller bytes are arbitrary.
pub fn scrape_data_from(data: &[u8]) -> (Reading, Vec<String>) {
    let (d, comms, _) = scrape_input(data);
    (d, comms)
}

/// [`scrape_data_from`], and the format the input asks for (flag bit 2:
/// one format per run keeps the target fast; inputs cover both).
fn scrape_input(data: &[u8]) -> (Reading, Vec<String>, Format) {
    let mut input = Input::new(data);
    let kernel = input.text(40);
    let mut plan = PlanSummary::from_plan(&ProbePlan::resolve(kernel, Err("fuzz".into()), &Kallsyms::default()));
    let attached = input.u32();
    for (i, h) in plan.hooks.iter_mut().enumerate() {
        h.attached = attached & (1 << (i % 32)) != 0;
        if h.attached {
            h.mechanism = if i % 2 == 0 { "fentry" } else { "kprobe" };
            h.status = "attached";
        }
    }
    let flags = input.u8();
    let snapshot = if flags & 1 == 1 { Some(snapshot_from(&mut input)) } else { None };
    let vm = if flags & 2 == 2 {
        Some(vmstat::FollPinCounters { acquired: input.u64(), released: input.u64() })
    } else {
        None
    };
    let mut comms = vec![];
    let rows: Vec<attribution::Row> = (0..input.u8() % 12)
        .map(|_| {
            let comm = if input.u8() & 1 == 0 { attribution::comm_string(&input.comm()) } else { input.text(40) };
            comms.push(comm.clone());
            let api = Api::ALL[input.u8() as usize % API_COUNT];
            attribution::Row {
                tgid: input.u32(),
                comm,
                cgroup_id: input.u64(),
                api: api.symbol(),
                caller: Caller {
                    function: input.text(24),
                    subsystem: [Subsystem::IoUring, Subsystem::DirectIo, Subsystem::Gpu, Subsystem::Other][input.u8() as usize % 4],
                    module: (input.u8() & 1 == 1).then(|| input.text(12)),
                },
                calls: input.u32() as u64,
                pages: input.u32() as u64,
                errors: input.u8() as u64,
                fast_pages: input.u32() as u64,
                slow_pages: input.u32() as u64,
                longterm_pages: input.u32() as u64,
            }
        })
        .collect();
    let settings = Settings { top_processes: input.u8() as usize % 5, ..Settings::default() };
    let mut top = TopProcesses::default();
    let format = if flags & 4 == 4 { Format::OpenMetrics } else { Format::Prometheus };
    (Reading::new(plan, snapshot, vm, rows, &mut top, settings), comms, format)
}

/// The exposition of an arbitrary reading (above all arbitrary `comm`
/// bytes: quotes, backslashes, newlines, invalid UTF-8, empty) parses in
/// both formats, and every `comm` label value reads back as a name that
/// went in.
pub fn metrics_exposition(data: &[u8]) {
    let (d, comms, format) = scrape_input(data);
    let has_snapshot = d.snapshot.is_some();
    let kernel = d.plan.kernel.clone();
    let d = Arc::new(d);
    let flavor = match format {
        Format::Prometheus => Flavor::Prometheus,
        Format::OpenMetrics => Flavor::OpenMetrics,
    };
    {
        let text = prometheus::render(&d, format);
        let exp = match exposition::check(&text, flavor) {
            Ok(e) => e,
            Err(e) => panic!("{flavor:?} exposition does not parse: {e}\n--- text ---\n{text}"),
        };
        // Every kind's family keeps the same top process names.
        let mut seen_other = false;
        let families = ["gupwatch_process_pinned_pages_total", "gupwatch_process_referenced_pages_total", "gupwatch_process_unpinned_pages_total"];
        for s in families.iter().flat_map(|name| exp.named(name)) {
            let comm = &s.labels.iter().find(|(n, _)| n == "comm").expect("comm label").1;
            if comm == collect::OTHER_COMM {
                seen_other = true;
            } else {
                assert!(comms.contains(comm), "comm {comm:?} came out but never went in ({comms:?})");
            }
        }
        assert_eq!(seen_other, has_snapshot, "the other series exists exactly when there is a snapshot");
        let build = exp
            .samples
            .iter()
            .find(|s| s.name.starts_with("gupwatch_build"))
            .expect("gupwatch_build is always there");
        let k = &build.labels.iter().find(|(n, _)| n == "kernel").expect("kernel label").1;
        assert_eq!(k, &kernel, "the kernel label reads back");
    }
    let json = api::snapshot_json(&d, 5);
    let text = serde_json::to_string(&json).expect("snapshot JSON");
    let _: serde_json::Value = serde_json::from_str(&text).expect("snapshot JSON reads back");
    let (callers, _) = api::callers_json(&d, 50);
    serde_json::to_string(&callers).expect("callers JSON");
}

// ---------------------------------------------------------------------------
// Web configuration and HTTP

/// `--web-config` files (YAML), and the `Authorization` header parser.
pub fn web_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match gupwatch::export::webconfig::WebConfig::parse(&text, Path::new("/etc/gupwatch")) {
        Ok(c) => {
            let _ = c.describe();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Some((user, pass)) = gupwatch::export::webconfig::parse_basic_authorization(&text) {
        assert!(!user.contains(':'), "user {user:?} contains the separator");
        let _ = pass;
    }
}

/// The HTTP request-head parser (what every client reaches first) and
/// content negotiation.
pub fn http_request(data: &[u8]) {
    if let Ok(req) = gupwatch::export::http::parse_request_head(data) {
        assert!(req.path.starts_with('/'), "path {:?}", req.path);
        let _ = Format::negotiate(req.header("accept"));
        if let Some(h) = req.header("authorization") {
            let _ = gupwatch::export::webconfig::parse_basic_authorization(h);
        }
    }
}
