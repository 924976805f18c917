//! Faults a user meets, on a real kernel (a step of `cargo xtask test`, and
//! `cargo xtask faults`): in one VM, gupwatch is run without kernel BTF,
//! with corrupt BTF, with a tracking map larger than the kernel accepts,
//! inside a memory cgroup too small for its maps, with an eBPF object whose
//! programs for one hook every verifier refuses, and with an eBPF object
//! that does not exist. Without BTF it must
//! fall back to kprobes and stay exact against /proc/vmstat; the refusals
//! must end with exit status 2 and a message that names the cause and the
//! fix. First, with a 16-folio tracking map that overflows at once, the
//! eBPF side must log its untracked pins at debug level and nothing at
//! info level.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::vm::initramfs::GuestFile;
use crate::vm::kernels::{self, Flavour};
use crate::util::Check;
use crate::vm::VmRun;
use crate::testsuite;
use crate::util;

/// The guest script (`case` is a shell keyword, hence `begin`): each case prints `@@case NAME`, its output, then
/// `@@rc STATUS`.
const SCRIPT: &str = r#"
begin() { echo "@@case $1"; }
rc() { echo "@@rc $1"; }
# eBPF-side debug logs: 16 folios overflow at the first pins (PinsUntracked).
# The load scenarios (churn_, inflight_) are judged in the kernel step; here
# they would only add minutes, and a 16-folio map makes the inflight_ ledger
# partial by design.
begin ebpf_log_debug; NO_COLOR=1 GUPWATCH_LOG=gupwatch=debug gupwatch check --skip churn,inflight_ --track-capacity 16 2>&1 >/dev/null; rc $?
begin ebpf_log_info; NO_COLOR=1 GUPWATCH_LOG=info gupwatch check --skip churn,inflight_ --track-capacity 16 2>&1 >/dev/null; rc $?
# A program every verifier refuses: pin_user_pages_fast's entry, by fentry
# and by kprobe alike (xtask's refusable_object). The check must fail
# (that hook's pins go uncounted), name the hook, and save both logs.
mkdir -p /tmp/vlog
begin verifier_refused
GUPWATCH_LOG_DIR=/tmp/vlog GUPWATCH_EBPF_OBJECT=/opt/gupwatch-faults/refused.bpf.o gupwatch check --skip churn,inflight_ --json 2>&1 >/dev/null
rc $?
begin verifier_log_saved; cat /tmp/vlog/gupwatch-verifier-pin_user_pages_fast-fentry.log /tmp/vlog/gupwatch-verifier-pin_user_pages_fast-kprobe.log; rc $?
begin object_unreadable; GUPWATCH_EBPF_OBJECT=/nonexistent/gupwatch.bpf.o gupwatch check 2>&1 >/dev/null; rc $?
# No BTF at all: hide /sys/kernel/btf.
mount -t tmpfs none /sys/kernel/btf
begin probes_without_btf; gupwatch probes --json 2>&1; rc $?
# The load scenarios stay out here too: with them the whole VM ran past its
# 300 s (2026-12-04, 7.2), and the inflight_ ledger recorded no pin at all
# without BTF (docs/check.md says why they are partial there).
begin check_without_btf; gupwatch check --skip churn,inflight_ --json 2>/dev/null; rc $?
# BTF that does not parse.
echo 'not BTF' > /sys/kernel/btf/vmlinux
begin probes_with_corrupt_btf; gupwatch probes --dry-run 2>&1; rc $?
umount /sys/kernel/btf
# A tracking map beyond what the kernel allocates (E2BIG).
begin map_too_large; gupwatch check --track-capacity 2000000000 2>&1 >/dev/null; rc $?
# Maps that do not fit the memory cgroup (ENOMEM): 96 MiB, 16M folios.
mkdir -p /sys/fs/cgroup
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/small
echo 96M > /sys/fs/cgroup/small/memory.max
begin memory_cgroup_too_small
sh -c 'echo $$ > /sys/fs/cgroup/small/cgroup.procs; exec gupwatch check --track-capacity 16000000' 2>&1 >/dev/null
rc $?
"#;


/// Splits the guest output into case name → (output, exit status).
pub fn split_cases(stdout: &str) -> BTreeMap<String, (String, Option<i32>)> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("@@case ") {
            cur = Some((name.trim().to_string(), String::new()));
        } else if let Some(rc) = line.strip_prefix("@@rc ") {
            if let Some((name, text)) = cur.take() {
                out.insert(name, (text, rc.trim().parse().ok()));
            }
        } else if let Some((_, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// `RUST_LOG=debug`: the eBPF log names the overflowing tracking map, and only the first few untracked pins.
fn ebpf_log_debug(text: &str, rc: &Option<i32>) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("gupwatch::ebpf")).collect();
    if *rc != Some(0) || text.contains("panicked") {
        return Err(format!("exit status {rc:?}: {text}"));
    }
    // The first 4 per counter and CPU (the VM has at most a few
    // CPUs), of the thousands of pins the map refuses.
    let untracked = lines.iter().filter(|l| l.contains("pins_untracked")).count();
    match lines.iter().find(|l| l.contains("tracking map PINS refused")) {
        Some(l) if untracked <= 32 => Ok(format!("{} eBPF log lines, e.g. {}", lines.len(), l.trim())),
        Some(_) => Err(format!("{untracked} untracked-pin lines: more than the first few")),
        None => Err(format!("no eBPF log line for the overflowing tracking map: {text}")),
    }
}

/// At info level the eBPF log stays quiet.
fn ebpf_log_info(text: &str, rc: &Option<i32>) -> Result<String, String> {
    if *rc != Some(0) {
        return Err(format!("exit status {rc:?}: {text}"));
    }
    match text.lines().find(|l| l.contains("gupwatch::ebpf")) {
        Some(l) => Err(format!("an eBPF log line at info level: {l}")),
        None => Ok("no eBPF log line at info level".into()),
    }
}

/// Without BTF: every core hook attached by kprobe, FOLL_* from the 6.3+ enum table.
fn probes_without_btf(text: &str, rc: &Option<i32>) -> Result<String, String> {
    if *rc != Some(0) {
        return Err(format!("exit status {rc:?}: {text}"));
    }
    let v: PlanJson = serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let source = v.foll.source.as_deref().unwrap_or("?");
    if source != "enum_table" {
        return Err(format!("FOLL_* values from {source:?}, expected the 6.3+ enum table"));
    }
    let hooks = v.hooks.ok_or("no hooks in the plan")?;
    let core: Vec<&HookJson> = hooks.iter().filter(|h| h.kind.as_deref() != Some("i915")).collect();
    let state = |h: &HookJson| h.status.state.clone();
    let attached: Vec<&HookJson> = core.iter().copied().filter(|h| state(h).as_deref() == Some("attached")).collect();
    if let Some(h) = attached.iter().find(|h| h.mechanism.as_deref() != Some("kprobe")) {
        return Err(format!("{} attached by {} without BTF", quoted(&h.function), quoted(&h.mechanism)));
    }
    let broken: Vec<String> = core
        .iter()
        .filter(|h| !matches!(state(h).as_deref(), Some("attached" | "absent")))
        .map(|h| quoted(&h.function))
        .collect();
    if attached.is_empty() || !broken.is_empty() {
        return Err(format!("{} attached; not attached: {}", attached.len(), broken.join(", ")));
    }
    Ok(format!("{} hooks attached by kprobe, FOLL_* from the enum table", attached.len()))
}

/// Without BTF, `gupwatch check` is exact through kprobes.
fn check_without_btf(text: &str, rc: &Option<i32>) -> Result<String, String> {
    let report = testsuite::parse_report(text).map_err(|e| format!("exit status {rc:?}, no report: {e:#}"))?;
    let failed: Vec<&str> =
        report.scenarios.iter().filter(|s| !s.passed()).map(|s| s.name.as_str()).collect();
    if report.scenarios.is_empty() || !failed.is_empty() || *rc != Some(0) {
        return Err(format!("exit status {rc:?}; failed: {}", failed.join(", ")));
    }
    Ok(format!("{} scenarios exact against /proc/vmstat through kprobes", report.scenarios.len()))
}

/// With corrupt BTF the plan names it and uses kprobes only.
fn probes_with_corrupt_btf(text: &str, rc: &Option<i32>) -> Result<String, String> {
    let btf_line = text.lines().find(|l| l.trim_start().starts_with("BTF: unavailable"));
    match (rc, btf_line) {
        (Some(0), Some(l)) if text.contains("kprobe/kretprobe") && !text.contains("fentry/fexit") => {
            Ok(format!("the plan says `{}` and uses kprobes", l.trim()))
        }
        _ => Err(format!("exit status {rc:?}; expected a kprobe-only plan naming the bad BTF: {text}")),
    }
}

/// A hook every verifier refuses: exit status 1 and one line naming the hook, the verifier's reason and its saved logs.
fn verifier_refused(text: &str, rc: &Option<i32>) -> Result<String, String> {
    if *rc != Some(1) {
        return Err(format!("exit status {rc:?}, expected 1 (a hook's pins uncounted): {text}"));
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("gupwatch: pin_user_pages_fast is not hooked"))
        .ok_or_else(|| format!("no line names the refused hook: {text}"))?;
    let must = [
        "verifier refused the program",
        "!read_ok",
        "(full verifier log: /tmp/vlog/gupwatch-verifier-pin_user_pages_fast-fentry.log)",
        "(full verifier log: /tmp/vlog/gupwatch-verifier-pin_user_pages_fast-kprobe.log)",
        "please report it",
    ];
    let missing: Vec<&&str> = must.iter().filter(|m| !line.contains(**m)).collect();
    if !missing.is_empty() {
        return Err(format!("the line lacks {missing:?}: {line}"));
    }
    Ok(line.to_string())
}

/// Both verifier logs saved, each ending in the refusal.
fn verifier_log_saved(text: &str, rc: &Option<i32>) -> Result<String, String> {
    // The register broken differs per program (refusable_object
    // reads one the program's first instructions did not write).
    let refusals = (2..=9).map(|r| text.matches(&format!("R{r} !read_ok")).count()).sum::<usize>();
    if *rc != Some(0) || refusals != 2 {
        return Err(format!("exit status {rc:?}, {refusals} of 2 logs end in `R<n> !read_ok`: {text}"));
    }
    Ok(format!("both logs saved ({} lines), each ending in `R<n> !read_ok`", text.lines().count()))
}

/// A refusal: exit status `rc_want` and a short message with every
/// phrase of `must`.
fn refusal(text: &str, rc: &Option<i32>, rc_want: Option<i32>, must: &[&str]) -> Result<String, String> {
    if *rc != rc_want {
        return Err(format!("exit status {rc:?}, expected {rc_want:?}: {text}"));
    }
    let missing: Vec<&&str> = must.iter().filter(|m| !text.contains(**m)).collect();
    if !missing.is_empty() {
        return Err(format!("the message lacks {missing:?}: {text}"));
    }
    if text.contains("panicked") || text.lines().count() > 3 {
        return Err(format!("not a one-paragraph message: {text}"));
    }
    Ok(text.trim().to_string())
}

/// A case's verdict from its output and exit status.
type CaseJudge = fn(&str, &Option<i32>) -> Result<String, String>;

/// How a case is judged.
enum Verdict {
    /// By its own function.
    By(CaseJudge),
    /// A refusal: exit status 2, and the output says all of these.
    Refused(&'static [&'static str]),
}

/// Every case, in order, with its verdict.
const CASES: [(&str, Verdict); 10] = [
    ("ebpf_log_debug", Verdict::By(ebpf_log_debug)),
    ("ebpf_log_info", Verdict::By(ebpf_log_info)),
    ("probes_without_btf", Verdict::By(probes_without_btf)),
    ("check_without_btf", Verdict::By(check_without_btf)),
    ("probes_with_corrupt_btf", Verdict::By(probes_with_corrupt_btf)),
    ("verifier_refused", Verdict::By(verifier_refused)),
    ("verifier_log_saved", Verdict::By(verifier_log_saved)),
    (
        "object_unreadable",
        Verdict::Refused(&["/nonexistent/gupwatch.bpf.o", "GUPWATCH_EBPF_OBJECT", "No such file", "unset GUPWATCH_EBPF_OBJECT"]),
    ),
    ("map_too_large", Verdict::Refused(&["refused to create BPF map PINS", "Argument list too long", "lower --track-capacity"])),
    (
        "memory_cgroup_too_small",
        Verdict::Refused(&["refused to create BPF map", "Cannot allocate memory", "memory cgroup", "--track-capacity"]),
    ),
];

/// Judges the cases (pure; unit-tested on recorded output).
pub fn judge(stdout: &str) -> Vec<Check> {
    let cases = split_cases(stdout);
    CASES
        .iter()
        .map(|(name, verdict)| {
            let r = match (cases.get(*name), verdict) {
                (Some((text, rc)), Verdict::By(judge)) => judge(text, rc),
                (Some((text, rc)), Verdict::Refused(must)) => refusal(text, rc, Some(2), must),
                (None, _) => Err(format!("the guest never ran case {name}")),
            };
            let (ok, detail) = match r {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            Check { name: (*name).into(), ok, detail }
        })
        .collect()
}

/// `gupwatch probes --json` (`gup-user/src/kernel/plan.rs`): the fields the
/// no-BTF case reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PlanJson {
    foll: Foll,
    hooks: Option<Vec<HookJson>>,
}

/// Where the FOLL_* values came from.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Foll {
    source: Option<String>,
}

/// One hook of the plan.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HookJson {
    function: Option<String>,
    kind: Option<String>,
    mechanism: Option<String>,
    status: HookStatus,
}

/// `{"state": "attached"}`, `{"state": "failed", "detail": "..."}`, ...
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HookStatus {
    state: Option<String>,
}

/// A field as JSON shows it (`"name"`, or `null`), as the messages always
/// quoted them.
fn quoted(s: &Option<String>) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `r0 = rN` (BPF_ALU64 | BPF_MOV | BPF_X, destination r0, source `src`).
/// Near a program's entry only r1 (the context), r10 (the frame) and what
/// the instructions before it wrote hold values, so every kernel's verifier
/// refuses a read of any other register with "R`src` !read_ok".
fn read_unset_register(src: u8) -> [u8; 8] {
    [0xbf, (src & 0xf) << 4, 0, 0, 0, 0, 0, 0]
}

/// The programs [`refusable_object`] breaks: both mechanisms of
/// `pin_user_pages_fast`'s entry hook (index 1), so the fallback from
/// fentry to kprobe is refused too and the hook ends failed.
const REFUSED_PROGRAMS: [&str; 2] = ["fe_1", "kp_1"];

/// Where the guest finds the object with refused programs.
const REFUSED_OBJECT_IN_GUEST: &str = "opt/gupwatch-faults/refused.bpf.o";

/// A copy of the eBPF object `obj` in which each program named in
/// `programs` reads a register nothing wrote, right after its leading
/// relocated instructions (loads of globals, which the loader rewrites): a
/// real verifier refusal for the faults suite, without a special build of
/// gupwatch.
pub fn refusable_object(obj: &[u8], programs: &[&str]) -> Result<Vec<u8>> {
    use object::{Object, ObjectSection, ObjectSymbol};
    // The ELF parser reads structures in place and wants them aligned.
    let mut words = vec![0u64; obj.len().div_ceil(8)];
    for (w, chunk) in words.iter_mut().zip(obj.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    // SAFETY: `words` holds at least obj.len() initialised bytes.
    let aligned = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), obj.len()) };
    let file = object::File::parse(aligned).context("parsing the eBPF object")?;
    let mut out = obj.to_vec();
    for name in programs {
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(*name))
            .with_context(|| format!("the eBPF object has no program {name}"))?;
        let section = file
            .section_by_index(sym.section_index().with_context(|| format!("{name} is not in a section"))?)
            .with_context(|| format!("the section of {name}"))?;
        let (offset, size) = section.file_range().with_context(|| format!("{name}'s section has no bytes in the file"))?;
        let at = sym.address();
        if at + 8 > size {
            anyhow::bail!("{name} starts outside its section");
        }
        // A relocated instruction (a 16-byte load of a global or a map)
        // is rewritten by the loader: skip those at the start, and read a
        // register none of them wrote.
        let relocated: Vec<u64> = section.relocations().map(|(r, _)| r).collect();
        let mut pc = at;
        let mut written = vec![1u8, 10];
        while relocated.contains(&pc) {
            if pc + 16 > size || pc > at + 64 {
                anyhow::bail!("{name} starts with too many relocated instructions; break another program");
            }
            let dst = obj.get((offset + pc + 1) as usize).copied().unwrap_or(0) & 0xf;
            written.push(dst);
            pc += 16;
        }
        let Some(src) = (2u8..=9).find(|r| !written.contains(r)) else {
            anyhow::bail!("{name}'s first instructions write every register; break another program");
        };
        let pos = (offset + pc) as usize;
        out[pos..pos + 8].copy_from_slice(&read_unset_register(src));
    }
    Ok(out)
}

/// The eBPF object the last build embedded in gupwatch.
fn built_object() -> PathBuf {
    util::target_dir().join("bpf/bpfel-unknown-none/release/gup-ebpf")
}

/// Boots `kernel` once and runs every case.
pub fn run(kernel: &str, gupwatch: PathBuf, timeout: Duration) -> Result<Vec<Check>> {
    let alias = kernels::alias(kernel).with_context(|| format!("unknown kernel {kernel}"))?;
    let cache = util::cache_dir()?;
    let boot = kernels::ensure(&cache, alias, Flavour::Cloud, false)?.boot_kernel(&cache);
    let object = built_object();
    let bytes = std::fs::read(&object)
        .with_context(|| format!("reading the eBPF object {} (run `cargo xtask build` first)", object.display()))?;
    let mut vm = VmRun::test_step(boot, SCRIPT, &gupwatch, timeout, format!("faults {kernel}"));
    vm.files.push(GuestFile {
        path: REFUSED_OBJECT_IN_GUEST.into(),
        mode: 0o644,
        data: refusable_object(&bytes, &REFUSED_PROGRAMS)?,
    });
    let out = vm.run()?;
    println!(
        "faults on {kernel}: VM ran {:.0} s; console log: {}",
        out.elapsed.as_secs_f64(),
        out.console_log.display()
    );
    Ok(judge(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_split_and_judged() {
        let out = "\
@@case map_too_large
gupwatch: error: cannot load gupwatch's probes: the kernel refused to create BPF map PINS: Argument list too long (os error 7). A map is larger than this kernel accepts: lower --track-capacity (track_capacity in the configuration file).
@@rc 2
@@case memory_cgroup_too_small
gupwatch: error: all fine
@@rc 0
@@case ebpf_log_debug
2026-11-29T20:00:00.000000Z DEBUG gupwatch::ebpf: tracking map PINS refused folio 0xffffea0000a1b2c0: pin not tracked (pin_user_pages_fast, tgid 312): E2BIG (-7) diag=\"pins_untracked\" api=pin_user_pages_fast tgid=312 n=1 err=-7 key=0xffffea0000a1b2c0
@@rc 0
@@case ebpf_log_info
2026-11-29T20:00:00.000000Z DEBUG gupwatch::ebpf: unbalanced
@@rc 0
";
        let cases = split_cases(out);
        assert_eq!(cases["map_too_large"].1, Some(2));
        let judged = judge(out);
        let by = |n: &str| judged.iter().find(|c| c.name == n).unwrap().clone();
        assert!(by("map_too_large").ok, "{:?}", by("map_too_large"));
        let small = by("memory_cgroup_too_small");
        assert!(!small.ok && small.detail.contains("exit status Some(0)"), "{small:?}");
        assert!(by("ebpf_log_debug").ok, "{:?}", by("ebpf_log_debug"));
        assert!(!by("ebpf_log_info").ok, "{:?}", by("ebpf_log_info"));
        let missing = by("check_without_btf");
        assert!(!missing.ok && missing.detail.contains("never ran"), "{missing:?}");
    }
}
