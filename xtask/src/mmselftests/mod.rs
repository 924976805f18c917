//! `cargo xtask mm-selftests` (also a step of `cargo xtask test`): the
//! kernel's own mm selftests `gup_longterm`, `cow` and `hugetlb_dio`, built
//! from Debian's newest kernel source ([`build`]), run on every kernel of
//! the matrix once without gupwatch and once under `gupwatch run`.
//!
//! One boot per kernel, with huge pages reserved on the command line. The
//! guest runs each program alone, then starts `gupwatch run` and runs each
//! again between two readings of `/proc/vmstat` and `/metrics`. The host
//! then requires, per program ([`judge`]): the same TAP result for every
//! test with and without gupwatch, gupwatch's pinned and unpinned pages
//! equal to the `nr_foll_pin_*` deltas, every pinned page attributed to a
//! subsystem, and a ledger with nothing untracked or unbalanced.

pub mod build;
pub mod judge;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::i915test::sections;
use crate::vm::initramfs::GuestFile;
use crate::vm::kernels::{self, Flavour, KernelAlias};
use crate::vm::{serve_and_wait_sh, ConsoleEcho, VmRun};
use crate::{say, util};

pub use build::PROGRAMS;
use judge::{Check, Counts, Tap};

/// Where the programs go in the guest.
const GUEST_DIR: &str = "opt/mm-selftests";

/// The port `gupwatch run` listens on in the guest.
const PORT: u16 = 10483;

/// Huge pages reserved at boot (2 MiB each): `hugetlb_dio` asks for one,
/// `cow` and `gup_longterm` for a few per size; the selftests set their own
/// count and restore it at exit, but a boot-time reservation does not
/// depend on how fragmented memory is by then.
pub const HUGEPAGES: u32 = 16;

/// A VM's least time limit: a whole boot took 39-111 s under TCG on the
/// 2-core machine (`cow`, the longest, 8-34 s per pass), so a guest still
/// running after ten minutes is stuck, not slow.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of one run.
#[derive(Debug, Clone)]
pub struct MmOptions {
    /// Kernels of the matrix (cloud flavour).
    pub kernels: Vec<KernelAlias>,
    /// The static gupwatch to install in the guests.
    pub gupwatch: PathBuf,
    /// Time limit of each VM (at least [`MIN_TIMEOUT`]).
    pub timeout: Duration,
    /// Programs to run (default: all of [`PROGRAMS`]).
    pub programs: Vec<String>,
    /// Re-resolve the source packages from the archive.
    pub refresh: bool,
    /// Negative control: gupwatch's programs attach but return at once
    /// (`GUPWATCH_EMPTY_PROGRAMS=1`), so its counts stay 0 and the count
    /// checks must fail wherever the programs pinned.
    pub empty_programs: bool,
}

/// One program on one kernel.
#[derive(Debug, Clone)]
pub struct ProgramResult {
    /// `cow`.
    pub program: String,
    /// Its TAP output without gupwatch.
    pub without: Tap,
    /// And under `gupwatch run`.
    pub with: Tap,
    /// What gupwatch and vmstat counted over the run under gupwatch.
    pub counts: Option<Counts>,
    /// The verdicts.
    pub checks: Vec<Check>,
}

/// The result of one kernel.
#[derive(Debug)]
pub struct KernelResult {
    /// Matrix alias (`6.12`).
    pub alias: &'static str,
    /// Per program, in run order.
    pub programs: Vec<ProgramResult>,
    /// Wall-clock time of the boot, host side.
    pub elapsed: Duration,
    /// Console log of the VM.
    pub console_log: Option<PathBuf>,
    /// Set when the VM did not run to the end.
    pub error: Option<String>,
}

impl KernelResult {
    /// Checks that failed, plus one for an error.
    pub fn failed(&self) -> usize {
        self.programs.iter().map(|p| p.checks.iter().filter(|c| !c.ok).count()).sum::<usize>() + self.error.is_some() as usize
    }

    /// Checks that held.
    pub fn passed(&self) -> usize {
        self.programs.iter().map(|p| p.checks.iter().filter(|c| c.ok).count()).sum()
    }
}

/// The guest's command: each program alone, then `gupwatch run` and each
/// program again between readings of vmstat and `/metrics`. After a run,
/// it waits (up to 10 s) until the kernel holds as many pins as before it:
/// io_uring releases a ring's buffers from a workqueue after the process
/// exited, and those releases belong to the run.
pub fn guest_script(programs: &[String], empty_programs: bool) -> String {
    let list = programs.join(" ");
    let control = if empty_programs { "export GUPWATCH_EMPTY_PROGRAMS=1\n" } else { "" };
    format!(
        r#"{control}sec() {{ echo "@@section $1@@"; }}
up() {{ cut -d' ' -f1 /proc/uptime; }}
since() {{ awk -v a="$1" -v b="$(up)" 'BEGIN {{ printf "%.2f", b - a }}'; }}
pins() {{ echo 1 > /proc/sys/vm/stat_refresh 2>/dev/null; grep -E '^nr_foll_pin_(acquired|released) ' /proc/vmstat; }}
held() {{ pins | awk '{{v[$1]=$2}} END {{print v["nr_foll_pin_acquired"]-v["nr_foll_pin_released"]}}'; }}
settle() {{ i=0; while [ "$(held)" != "$1" ] && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.2; done; }}
prog() {{
    # hugetlb_dio's O_DIRECT file is an O_TMPFILE in /tmp, a tmpfs here:
    # shmem's direct I/O copies and pins nothing, so /tmp is the ext4
    # scratch disk while it runs (a block device's direct I/O path).
    [ "$1" = hugetlb_dio ] && mkdir -p /mnt/scratch/tmp && mount -o bind /mnt/scratch/tmp /tmp
    t=$(up); /{GUEST_DIR}/$1 2>&1; echo "@@exit $?"; echo "@@seconds $(since $t)"
    [ "$1" = hugetlb_dio ] && umount /tmp
}}
sec hugepages; grep -E '^(HugePages_(Total|Free)|Hugepagesize)' /proc/meminfo
# Swap, so that cow's swapped-out cases (MADV_PAGEOUT) run instead of
# skipping.
sec swap; dd if=/dev/zero of=/mnt/scratch/swapfile bs=1M count=128 2>/dev/null; chmod 600 /mnt/scratch/swapfile
mkswap /mnt/scratch/swapfile >/dev/null && swapon /mnt/scratch/swapfile; grep SwapTotal /proc/meminfo
for p in {list}; do
    echo "mm-selftests: $p without gupwatch" >&2
    h=$(held); sec "without-$p"; prog $p; settle $h
done
{serve}url=http://127.0.0.1:{PORT}
for p in {list}; do
    echo "mm-selftests: $p under gupwatch run" >&2
    h=$(held)
    sec "vmstat0-$p"; pins
    sec "metrics0-$p"; wget -qO- $url/metrics
    sec "with-$p"; prog $p
    settle $h
    sec "vmstat1-$p"; pins
    sec "metrics1-$p"; wget -qO- $url/metrics
done
kill $RUN; wait $RUN; echo "mm-selftests: gupwatch run exited with status $?" >&2
sec end
"#,
        serve = serve_and_wait_sh("mm-selftests", PORT),
    )
}

/// The results of each program from the guest's output.
pub fn evaluate(stdout: &str, programs: &[String]) -> Vec<ProgramResult> {
    let s = sections(stdout);
    let get = |k: String| s.get(&k).map(String::as_str).unwrap_or("");
    programs
        .iter()
        .map(|p| {
            let without = judge::parse_tap(get(format!("without-{p}")));
            let with = judge::parse_tap(get(format!("with-{p}")));
            let (counts, checks) = match judge::counts(
                get(format!("vmstat0-{p}")),
                get(format!("vmstat1-{p}")),
                get(format!("metrics0-{p}")),
                get(format!("metrics1-{p}")),
            ) {
                Ok(c) => {
                    let checks = judge::judge(&without, &with, &c, judge::expectation(p));
                    (Some(c), checks)
                }
                Err(e) => (None, vec![Check { name: "counts read in the guest".into(), ok: false, detail: e }]),
            };
            ProgramResult { program: p.clone(), without, with, counts, checks }
        })
        .collect()
}

/// Boots one kernel and runs the programs in it.
pub fn run_kernel(alias: KernelAlias, o: &MmOptions, files: &[GuestFile]) -> KernelResult {
    let started = Instant::now();
    let mut result = KernelResult { alias: alias.name, programs: vec![], elapsed: Duration::ZERO, console_log: None, error: None };
    let kernel = match util::cache_dir().and_then(|c| kernels::ensure(&c, alias, Flavour::Cloud, false).map(|m| m.boot_kernel(&c))) {
        Ok(k) => k,
        Err(e) => {
            result.error = Some(format!("could not fetch kernel {}: {e:#}", alias.name));
            return result;
        }
    };
    let mut run = VmRun::new(kernel, guest_script(&o.programs, o.empty_programs));
    run.gupwatch = Some(o.gupwatch.clone());
    run.timeout = o.timeout.max(MIN_TIMEOUT);
    run.kernel_args = vec![format!("hugepages={HUGEPAGES}")];
    run.files = files.to_vec();
    // Progress lines of the guest script (stderr) only, not the boot log.
    run.captured(ConsoleEcho::AfterInit, format!("mm-selftests {}", alias.name));
    match run.run() {
        Ok(outcome) => {
            result.console_log = Some(outcome.console_log.clone());
            let stdout = String::from_utf8_lossy(&outcome.stdout);
            // The guest's whole output (TAP lines, vmstat, /metrics), next
            // to the console log, for a look at a failed check.
            let saved = outcome.console_log.with_extension("stdout");
            match std::fs::write(&saved, stdout.as_bytes()) {
                Ok(()) => say!(run.tag, "guest output: {}", saved.display()),
                Err(e) => say!(run.tag, "could not write {}: {e}", saved.display()),
            }
            if !sections(&stdout).contains_key("end") {
                result.error = Some(format!(
                    "the guest script stopped early (exit status {}); console log: {}",
                    outcome.status,
                    outcome.console_log.display()
                ));
            }
            result.programs = evaluate(&stdout, &o.programs);
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    result.elapsed = started.elapsed();
    result
}

/// Builds (or takes from the cache) the selftests, then runs every kernel
/// of `o`, printing each result; returns them.
pub fn run(o: &MmOptions) -> Result<Vec<KernelResult>> {
    let cache = util::cache_dir()?;
    let tests = build::ensure(&cache, o.refresh)?;
    let mut files = vec![];
    for (name, path) in &tests.binaries {
        if !o.programs.contains(name) {
            continue;
        }
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push(GuestFile { path: format!("{GUEST_DIR}/{name}"), mode: 0o755, data });
    }
    println!(
        "mm selftests from {} {} (liburing-dev {}), run without and under gupwatch run, hugepages={HUGEPAGES}{}",
        tests.manifest.source_package,
        tests.manifest.source_version,
        tests.manifest.liburing_version,
        if o.empty_programs { "; NEGATIVE CONTROL: gupwatch's programs count nothing, its count checks must fail" } else { "" }
    );
    let mut out = vec![];
    for a in &o.kernels {
        if util::interrupted() {
            return Err(util::Interrupted.into());
        }
        say!("mm-selftests", "kernel {}: {} without and under gupwatch (one boot)", a.name, o.programs.join(", "));
        let r = run_kernel(*a, o, &files);
        print!("{}", render(&r));
        out.push(r);
    }
    Ok(out)
}

/// The step of `cargo xtask test`: every program on `kernels`; returns
/// how many checks held and one line per check that did not (or per
/// kernel that did not run to the end). Only an interruption, or a build
/// that fails, is an error.
pub fn suite_step(kernels: &[KernelAlias], gupwatch: &std::path::Path, timeout: Duration) -> Result<(usize, Vec<String>)> {
    let o = MmOptions {
        kernels: kernels.to_vec(),
        gupwatch: gupwatch.to_path_buf(),
        timeout: timeout.max(MIN_TIMEOUT),
        programs: PROGRAMS.iter().map(|p| p.to_string()).collect(),
        refresh: false,
        empty_programs: false,
    };
    let mut passed = 0;
    let mut failures = vec![];
    for r in run(&o)? {
        passed += r.passed();
        for p in &r.programs {
            for c in p.checks.iter().filter(|c| !c.ok) {
                failures.push(format!("mm selftests on kernel {}: {}: {}: {}", r.alias, p.program, c.name, c.detail));
            }
        }
        if let Some(e) = &r.error {
            failures.push(format!("mm selftests on kernel {}: {e}", r.alias));
        }
    }
    Ok((passed, failures))
}

/// One line per program: TAP results without and with gupwatch, gupwatch
/// against vmstat, the subsystems, the ledger and the times; then each
/// failed check.
pub fn render(r: &KernelResult) -> String {
    let mut s = util::kernel_heading(r.alias, r.elapsed, r.console_log.as_deref());
    for p in &r.programs {
        let ok = p.checks.iter().all(|c| c.ok);
        let secs = |t: &Tap| t.seconds.map(|x| format!("{x:.0} s")).unwrap_or_else(|| "? s".into());
        let figures = match &p.counts {
            Some(c) => format!(
                "pinned gupwatch {}{} vmstat {}; unpinned gupwatch {} vmstat {}; pins by subsystem {}{}; untracked {} unbalanced {}",
                c.pinned,
                if c.undone > 0 { format!(" ({} undone)", c.undone) } else { String::new() },
                c.vm_acquired,
                c.unpinned,
                c.vm_released,
                c.subsystem_list("pin"),
                if c.dio_gets > 0 { format!("; direct-io references {}", c.dio_gets) } else { String::new() },
                c.untracked.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                c.unbalanced.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            ),
            None => "no counts".into(),
        };
        s += &format!(
            "  {}  {} {:<12} without: {} ({}) | with: {} ({}) | {figures}\n",
            if ok { "PASS" } else { "FAIL" },
            r.alias,
            p.program,
            p.without.summary(),
            secs(&p.without),
            p.with.summary(),
            secs(&p.with),
        );
        for c in p.checks.iter().filter(|c| !c.ok) {
            s += &format!("        FAIL  {}: {}\n", c.name, c.detail);
        }
    }
    if let Some(e) = &r.error {
        s += &format!("  FAIL  {e}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_runs_each_program_twice() {
        let s = guest_script(&["cow".into(), "hugetlb_dio".into()], false);
        assert!(!s.contains("GUPWATCH_EMPTY_PROGRAMS"));
        assert!(guest_script(&["cow".into()], true).starts_with("export GUPWATCH_EMPTY_PROGRAMS=1\n"));
        assert!(s.contains("for p in cow hugetlb_dio; do"));
        assert_eq!(s.matches("prog $p").count(), 2);
        assert!(s.contains("/opt/mm-selftests/$1"));
    }

    #[test]
    fn evaluates_sections() {
        let m = "gupwatch_pinned_pages_total{api=\"pin_user_pages_fast\"} 8\n\
gupwatch_unpinned_pages_total{api=\"unpin_user_pages\"} 8\n\
gupwatch_subsystem_pinned_pages_total{subsystem=\"direct-io\"} 8\n\
gupwatch_subsystem_unpinned_pages_total{subsystem=\"direct-io\"} 8\n\
gupwatch_untracked_pins_total 0\n";
        let tap = "1..1\nok 1 dio\n@@exit 0\n@@seconds 1.0\n";
        let out = format!(
            "@@section without-hugetlb_dio@@\n{tap}@@section vmstat0-hugetlb_dio@@\nnr_foll_pin_acquired 5\nnr_foll_pin_released 5\n\
@@section metrics0-hugetlb_dio@@\ngupwatch_untracked_pins_total 0\n@@section with-hugetlb_dio@@\n{tap}\
@@section vmstat1-hugetlb_dio@@\nnr_foll_pin_acquired 13\nnr_foll_pin_released 13\n@@section metrics1-hugetlb_dio@@\n{m}@@section end@@\n"
        );
        let r = evaluate(&out, &["hugetlb_dio".into()]);
        assert!(r[0].checks.iter().all(|c| c.ok), "{:?}", r[0].checks);
        // A program whose sections are missing fails instead of passing.
        let r = evaluate(&out, &["cow".into()]);
        assert!(r[0].checks.iter().any(|c| !c.ok));
    }
}
