//! `cargo xtask <command>`: see `cargo xtask --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use xtask::vm::kernels::{self, Flavour};
use xtask::vm::{ConsoleEcho, Forward, VmRun};
use xtask::{bench, binary, canary, demo, e2e, i915test, livetest, mmselftests, say, setup, testsuite, util};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "gupwatch developer tasks: set-up, static build, VMs on real Debian kernels, tests, demo"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what builds and VM runs need, and fetch the kernel matrix
    /// (idempotent; a rerun with everything present does no network access).
    Setup {
        /// Re-resolve the kernels' current versions from the Debian archive.
        #[arg(long)]
        refresh: bool,
        /// Skip fetching kernels.
        #[arg(long)]
        no_kernels: bool,
    },
    /// Build the static gupwatch used in the VMs
    /// (target/x86_64-unknown-linux-gnu/release/gupwatch).
    Build,
    /// Run a shell command in a throwaway VM: its stdout on stdout, the
    /// console on stderr, its exit status as ours.
    Vm(VmArgs),
    /// All tests: unit tests, fuzzing, the static build and packages, the
    /// hostile-client test, `gupwatch doctor` and `gupwatch check` on every
    /// kernel of the matrix, then the canary, i915, the kernel's mm
    /// selftests, faults, live-view and Prometheus end-to-end steps; ends
    /// with `N passed, N failed`.
    Test(testsuite::TestOptions),
    /// The canary (also a step of `test`): Debian experimental's newest
    /// cloud kernel, when newer than sid's, runs `gupwatch doctor --json`
    /// and `gupwatch check --json`; fails only on a gupwatch panic or a
    /// kernel oops/BUG/WARNING, reports differences from the matrix.
    Canary {
        /// Time limit of the VM, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Re-resolve experimental's and sid's kernels from the archive.
        #[arg(long)]
        refresh: bool,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The faults a user meets, on a real kernel: no BTF, corrupt BTF, a
    /// map too large, a memory cgroup too small, a program the verifier
    /// refuses, a missing eBPF object, and the eBPF side's debug logs of an
    /// overflowing tracking map (also a step of `test`).
    Faults {
        /// Kernel to boot.
        #[arg(long, default_value = "7.2")]
        kernel: String,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The real `gupwatch run` on loopback against hostile clients, on
    /// the host (no VM), plain and with TLS + basic auth: 2,000 stalled
    /// reconnecting clients, a 200 × 25 flood, slow readers, a client over
    /// the per-address cap and malformed requests, while /metrics is
    /// scraped once a second (also a step of `test`).
    Hostile {
        /// Use this gupwatch binary instead of building the static one.
        #[arg(long, value_name = "PATH")]
        gupwatch: Option<PathBuf>,
        /// Use the static gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
        /// Run only this mode (plain or tls; repeatable; default both).
        #[arg(long, value_enum)]
        mode: Vec<xtask::hostile::Mode>,
    },
    /// Build what a host without Rust installs: a static x86_64 binary, a
    /// tarball (binary, man pages, completions, unit) and a Debian package,
    /// in target/dist/.
    Dist,
    /// Run the cargo-fuzz targets (fuzz/) for a while each; crashes are
    /// left in fuzz/artifacts/<target>/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Sanitizer: address (default; slower) or none.
        #[arg(long, default_value = "address", value_parser = ["address", "none"])]
        sanitizer: String,
        /// Targets (default: all; `cargo +nightly fuzz list` in fuzz/).
        targets: Vec<String>,
    },
    /// The i915 hooks on the generic Debian kernels (also a step of
    /// `test`): one boot each; `gupwatch probes` without and with i915,
    /// `gupwatch run` attaching them when i915 loads after it started, and
    /// 10 unload/load cycles of i915 under it (hooks detached and attached
    /// again each time, no descriptor leaked).
    I915 {
        /// Kernels to run on (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,7.2")]
        kernels: Vec<String>,
        /// Time limit of each VM, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The kernel's mm selftests gup_longterm, cow and hugetlb_dio, built
    /// statically from Debian's newest linux-source package, run on each
    /// kernel without and under `gupwatch run`: identical TAP results,
    /// gupwatch's totals equal to vmstat's, every pin attributed, nothing
    /// untracked or unbalanced (also a step of `test`).
    MmSelftests {
        /// Kernels to run on (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,7.2")]
        kernels: Vec<String>,
        /// Programs to run (comma-separated; default all three).
        #[arg(long, value_delimiter = ',', default_value = "gup_longterm,cow,hugetlb_dio")]
        programs: Vec<String>,
        /// Time limit of each VM, in seconds (at least 600; a healthy
        /// boot takes under two minutes under TCG).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Re-resolve the newest linux-source, liburing-dev and
        /// linux-libc-dev from the archive (and rebuild if one changed).
        #[arg(long)]
        refresh: bool,
        /// Negative control: gupwatch's programs attach but count nothing
        /// (GUPWATCH_EMPTY_PROGRAMS=1); its count checks must then fail
        /// wherever a program pinned, and the command exits 1.
        #[arg(long)]
        empty_programs: bool,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The live view driven through tmux: `gupwatch top` inside a VM, and
    /// `gupwatch top --connect` from the host to a daemon in the same VM;
    /// checks numbers, sort, filter and terminal restore (also a step of
    /// `test`).
    LiveTest {
        /// Kernel to boot.
        #[arg(long, default_value = "7.2")]
        kernel: String,
        /// Time limit of the VM, in seconds.
        #[arg(long, default_value_t = xtask::livetest::MIN_TIMEOUT_S)]
        timeout: u64,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
        /// Print every captured screen, not only the first of each side.
        #[arg(long)]
        screens: bool,
    },
    /// End-to-end: gupwatch in a VM scraped by a real Prometheus on the
    /// host; every dashboard query and rule checked (also a step of `test`).
    E2e {
        /// Kernel to boot.
        #[arg(long, default_value = "7.2")]
        kernel: String,
        /// Time limit of the VM, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// One Prometheus over many nodes: three VMs at once (6.1, 6.12, 7.2),
    /// each with `gupwatch run` and its own workload, pulled by one
    /// Prometheus and pushed to it by a second in agent mode; per-node
    /// totals against each guest's vmstat, the dashboard per node, the
    /// orphaned-pin alert on one node only, at most 500 series a node.
    Fleet {
        /// Time limit of each VM, in seconds.
        #[arg(long, default_value_t = xtask::fleet::DEFAULT_TIMEOUT_S)]
        timeout: u64,
        /// Memory of each guest, in MiB.
        #[arg(long, default_value_t = xtask::fleet::DEFAULT_MEMORY_MIB)]
        memory: u32,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The stress and fault suite on real kernels: attach/detach cycles
    /// under a pin storm, SIGKILL rounds, an overflowing tracking map.
    Stress {
        /// Kernels to run on (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,7.2")]
        kernels: Vec<String>,
        /// Attach/detach cycles per kernel.
        #[arg(long, default_value = "200")]
        cycles: u32,
        /// gupwatch processes to SIGKILL per kernel.
        #[arg(long, default_value = "3")]
        kill_rounds: u32,
        /// Use the gupwatch binary already built.
        #[arg(long)]
        no_build: bool,
        /// storm (attach/detach under a pin storm) or churn (short-lived
        /// processes pinning at once, every cycle exact; issue 24).
        #[arg(long, default_value = "storm", value_parser = ["storm", "churn"])]
        mode: String,
        /// Short-lived processes per churn cycle.
        #[arg(long, default_value_t = 500)]
        churn_procs: u32,
        /// Extra kernel command-line argument (repeatable), e.g.
        /// `--append preempt=full` for a preemptible 6.12.
        #[arg(long = "append", value_name = "ARG")]
        append: Vec<String>,
    },
    /// Measure what gupwatch costs a pinning workload (throughput ratios,
    /// instructions per probe hit and per program, RSS, CPU) on QEMU's
    /// instruction-counting clock, twice; reports, never asserts.
    Bench(bench::BenchOptions),
    /// The main job: gupwatch following a pinning workload in a VM. On a
    /// terminal, the live view until `q`; piped, a short report of
    /// gupwatch's counts beside the kernel's (the console goes to a log).
    Demo {
        /// Kernel to boot.
        #[arg(long, default_value = "7.2")]
        kernel: String,
        /// Use the gupwatch built last instead of building it.
        #[arg(long)]
        no_build: bool,
    },
    /// The Kubernetes base (deploy/kubernetes): its files generated from
    /// dashboards/ are current, `kubectl kustomize` renders it and every
    /// object validates against a current release's schemas.
    K8s {
        /// Write the generated files (the PrometheusRule, the dashboard)
        /// from dashboards/ first.
        #[arg(long)]
        write: bool,
        /// Label matchers selecting gupwatch's scrape job, in place of
        /// job="gupwatch" in the generated PrometheusRule.
        #[arg(long, default_value = xtask::k8s::DEFAULT_JOB_SELECTOR)]
        job_selector: String,
    },
}

#[derive(Args)]
struct VmArgs {
    /// 6.1, 6.12, 7.2 (or bookworm, trixie, sid), canary (experimental's
    /// newest, when newer than sid's), or a path to a bzImage/vmlinuz.
    #[arg(long)]
    kernel: String,
    /// Module tree (`.../lib/modules/<release>`) for a kernel given as a path.
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Debian kernel flavour: cloud (small, default) or generic (has i915);
    /// fetched on first use.
    #[arg(long, value_enum, default_value_t)]
    flavour: Flavour,
    /// Time limit in seconds; the VM is killed after it.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Do not build gupwatch; use the last build if there is one.
    #[arg(long)]
    no_build: bool,
    /// Forward 127.0.0.1:HOSTPORT on the host to GUESTPORT in the guest
    /// (HOSTPORT:GUESTPORT; repeatable).
    #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT")]
    forwards: Vec<Forward>,
    /// Extra kernel module to load in the guest, with its dependencies
    /// (repeatable; e.g. --module i915 with --flavour generic).
    #[arg(long = "module", value_name = "NAME")]
    extra_modules: Vec<String>,
    /// Kernel module to ship in the guest (with its dependencies) without
    /// loading it at boot; `gupwatch-load-deferred` in the guest loads it
    /// (repeatable; to test a module that appears while gupwatch runs).
    #[arg(long = "defer-module", value_name = "NAME")]
    deferred_modules: Vec<String>,
    /// Do not echo the guest console on stderr (it is still logged).
    #[arg(long)]
    quiet: bool,
    /// Ship the host's tmux into the guest (with its shared libraries, a
    /// UTF-8 locale and terminfo), to drive the live view there.
    #[arg(long)]
    tmux: bool,
    /// Ship a host program into the guest as /usr/bin/NAME, with the
    /// shared libraries `ldd` lists (repeatable; a name in PATH or a path),
    /// to run your own workload next to gupwatch.
    #[arg(long = "ship", value_name = "PROGRAM")]
    ship: Vec<String>,
    /// Extra kernel command-line argument (repeatable; GUPWATCH_VM_APPEND
    /// adds more), e.g. `--append preempt=full` to boot Debian's 6.12
    /// preemptible like 7.2 (7.2 refuses `preempt=voluntary`).
    #[arg(long = "append", value_name = "ARG")]
    append: Vec<String>,
    /// Boot a q35 machine with QEMU's emulated IOMMU and its PCI test
    /// device, and load the VFIO modules: what `gupwatch check`'s `vfio_`
    /// scenarios need.
    #[arg(long)]
    vfio: bool,
    /// The command, run with `sh -c` in the guest (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The guest's `sh -c` text from the words after `--`: one word is a
/// script as it stands (`-- 'a; b'`); several are quoted each, so that
/// `-- bash -c 'echo $BASH_VERSION'` reaches the guest as those three words.
fn guest_command(words: &[String]) -> String {
    match words {
        [one] => one.clone(),
        _ => words.iter().map(|w| format!("'{}'", w.replace('\'', r"'\''"))).collect::<Vec<_>>().join(" "),
    }
}

fn vm(a: VmArgs) -> Result<i32> {
    let kernel = kernels::resolve_spec(&a.kernel, a.flavour, a.modules)?;
    let gupwatch = if a.no_build {
        let p = binary::static_gupwatch_path();
        if p.is_file() {
            Some(p)
        } else {
            say!(
                "vm",
                "warning: {} does not exist (--no-build): the guest has no /bin/gupwatch",
                p.display()
            );
            None
        }
    } else {
        Some(binary::build_static_gupwatch()?)
    };
    let mut run = VmRun::new(kernel, guest_command(&a.command));
    run.gupwatch = gupwatch;
    run.timeout = Duration::from_secs(a.timeout);
    run.memory_mib = a.memory;
    run.cpus = a.cpus.max(1);
    run.forwards = a.forwards;
    run.extra_modules = a.extra_modules;
    run.deferred_modules = a.deferred_modules;
    run.tmux = a.tmux;
    run.ship = a.ship;
    run.kernel_args = a.append;
    run.vfio = a.vfio;
    if a.quiet {
        run.echo = ConsoleEcho::None;
    }
    let outcome = run.run()?;
    say!(
        "vm",
        "command exited with status {} ({}, /init after {:.1} s, {:.1} s in all); console log: {}",
        outcome.status,
        outcome.accel,
        outcome.boot_time.map(|d| d.as_secs_f64()).unwrap_or(0.0),
        outcome.elapsed.as_secs_f64(),
        outcome.console_log.display()
    );
    Ok(outcome.status)
}

/// The cloud kernel and the static binary of a one-kernel guest test
/// (`e2e`, `live-test`).
fn guest_inputs(kernel: &str, no_build: bool) -> Result<(kernels::BootKernel, PathBuf)> {
    Ok((kernels::resolve_spec(kernel, Flavour::Cloud, None)?, binary::static_gupwatch(no_build)?))
}

fn fleet_command(timeout: u64, memory: u32, no_build: bool) -> Result<i32> {
    let report = xtask::fleet::run(&xtask::fleet::FleetOptions {
        gupwatch: binary::static_gupwatch(no_build)?,
        timeout: Duration::from_secs(timeout),
        memory_mib: memory,
    })?;
    print_checks(&report)
}

/// Prints a report's checks and its `N passed, N failed` line; 1 if any failed.
fn print_checks(report: &e2e::E2eReport) -> Result<i32> {
    print!("{}", e2e::render(report));
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    println!(
        "{} passed, {} failed ({:.0} s)",
        report.checks.len() - failed,
        failed,
        report.elapsed.as_secs_f64()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

fn e2e_command(kernel: &str, timeout: u64, no_build: bool) -> Result<i32> {
    let (kernel, gupwatch) = guest_inputs(kernel, no_build)?;
    let report = e2e::run(&e2e::E2eOptions {
        kernel,
        gupwatch,
        timeout: Duration::from_secs(timeout),
    })?;
    print_checks(&report)
}

fn i915_command(names: &[String], timeout: u64, no_build: bool) -> Result<i32> {
    let kernels = names.iter().map(|k| kernels::known_alias(k)).collect::<Result<Vec<_>>>()?;
    let gupwatch = binary::static_gupwatch(no_build)?;
    let results = i915test::run(&i915test::I915Options { kernels, gupwatch, timeout: Duration::from_secs(timeout) })?;
    let passed: usize = results.iter().map(|r| r.checks.iter().filter(|c| c.ok).count()).sum();
    let failed: usize = results.iter().map(|r| r.checks.iter().filter(|c| !c.ok).count() + r.error.is_some() as usize).sum();
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

fn mm_command(names: &[String], programs: Vec<String>, timeout: u64, flags: (bool, bool, bool)) -> Result<i32> {
    let (refresh, no_build, empty_programs) = flags;
    let kernels = names.iter().map(|k| kernels::known_alias(k)).collect::<Result<Vec<_>>>()?;
    if let Some(p) = programs.iter().find(|p| !mmselftests::PROGRAMS.contains(&p.as_str())) {
        anyhow::bail!("unknown program `{p}` (known: {})", mmselftests::PROGRAMS.join(", "));
    }
    let gupwatch = binary::static_gupwatch(no_build)?;
    let results =
        mmselftests::run(&mmselftests::MmOptions {
        kernels,
        gupwatch,
        timeout: Duration::from_secs(timeout),
        programs,
        refresh,
        empty_programs,
    })?;
    let passed: usize = results.iter().map(|r| r.passed()).sum();
    let failed: usize = results.iter().map(|r| r.failed()).sum();
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

fn live_command(kernel: &str, timeout: u64, no_build: bool, all_screens: bool) -> Result<i32> {
    let (kernel, gupwatch) = guest_inputs(kernel, no_build)?;
    let report = livetest::run(&livetest::LiveOptions {
        kernel,
        gupwatch,
        timeout: Duration::from_secs(timeout),
    })?;
    if all_screens {
        for (name, screen) in &report.screens {
            println!("  {name}:");
            for l in screen.lines() {
                println!("    |{l}");
            }
        }
    } else {
        print!("{}", livetest::render_screens(&report));
    }
    print!(
        "{}",
        e2e::render(&e2e::E2eReport {
            checks: report.checks.clone(),
            notes: vec![],
            elapsed: report.elapsed
        })
    );
    println!("{}", livetest::timing(&report));
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    println!("{} passed, {} failed", report.checks.len() - failed, failed);
    Ok(if failed == 0 { 0 } else { 1 })
}

fn hostile_command(gupwatch: Option<PathBuf>, no_build: bool, modes: Vec<xtask::hostile::Mode>) -> Result<i32> {
    let gupwatch = match gupwatch {
        Some(p) => p,
        None => binary::static_gupwatch(no_build)?,
    };
    let mut opts = xtask::hostile::HostileOptions::new(gupwatch);
    if !modes.is_empty() {
        opts.modes = modes;
    }
    let reports = xtask::hostile::run(&opts)?;
    let (mut passed, mut failed) = (0, 0);
    for r in &reports {
        print!("{}", xtask::hostile::render(r));
        passed += r.checks.iter().filter(|c| c.ok).count();
        failed += r.checks.iter().filter(|c| !c.ok).count();
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Setup {
            refresh,
            no_kernels,
        } => setup::run(&setup::SetupOptions {
            refresh,
            no_kernels,
        })
        .map(|_| 0),
        Cmd::Build => binary::build_static_gupwatch().map(|_| 0),
        Cmd::Vm(a) => vm(a),
        Cmd::Test(o) => testsuite::run(&o).map(|ok| if ok { 0 } else { 1 }),
        Cmd::Faults { kernel, no_build } => {
            let bin = binary::static_gupwatch(no_build)?;
            let cases = xtask::faults::run(&kernel, bin, Duration::from_secs(300))?;
            let failed = cases.iter().filter(|c| !c.ok).count();
            for c in &cases {
                println!("  {}  {}: {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
            }
            println!("{} passed, {} failed", cases.len() - failed, failed);
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Cmd::Hostile { gupwatch, no_build, mode } => hostile_command(gupwatch, no_build, mode),
        Cmd::Dist => xtask::dist::run().map(|d| {
            println!("{}", xtask::dist::describe(&d));
            0
        }),
        Cmd::Fuzz { seconds, sanitizer, targets } => {
            setup::ensure_cargo_tool(&setup::CARGO_TOOLS[0])?;
            let t = xtask::fuzz::run(&xtask::fuzz::FuzzOptions { seconds, targets, sanitizer })?;
            Ok(if t.failed == 0 { 0 } else { 1 })
        }
        Cmd::I915 { kernels, timeout, no_build } => i915_command(&kernels, timeout, no_build),
        Cmd::MmSelftests { kernels, programs, timeout, refresh, no_build, empty_programs } => {
            mm_command(&kernels, programs, timeout, (refresh, no_build, empty_programs))
        }
        Cmd::Canary { timeout, refresh, no_build } => {
            let bin = binary::static_gupwatch(no_build)?;
            let r = canary::run(&bin, Duration::from_secs(timeout), refresh)?;
            print!("{}", canary::render(&r));
            // A skip is not a pass, but nothing failed: 0, with SKIPPED printed.
            Ok(if r.failed() == 0 { 0 } else { 1 })
        }
        Cmd::Demo { kernel, no_build } => demo::run(&demo::DemoOptions { kernel, no_build }),
        Cmd::K8s { write, job_selector } => xtask::k8s::run(write, &job_selector).map(|o| {
            println!("{} passed, {} failed", o.passed, o.failures.len());
            i32::from(!o.failures.is_empty())
        }),
        Cmd::E2e {
            kernel,
            timeout,
            no_build,
        } => e2e_command(&kernel, timeout, no_build),
        Cmd::Fleet { timeout, memory, no_build } => fleet_command(timeout, memory, no_build),
        Cmd::LiveTest {
            kernel,
            timeout,
            no_build,
            screens,
        } => live_command(&kernel, timeout, no_build, screens),
        Cmd::Stress { kernels, cycles, kill_rounds, no_build, mode, churn_procs, append } => {
            xtask::stress::run(&xtask::stress::StressOptions { kernels, cycles, kill_rounds, no_build, mode, churn_procs, append })
                .map(|ok| if ok { 0 } else { 1 })
        }
        Cmd::Bench(o) => bench::run(&o),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::install_signal_handlers();
    match dispatch(cli) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => {
            eprintln!("[xtask] interrupted: the VM was stopped and its temporary files removed");
            ExitCode::from(130)
        }
        Err(e) => {
            // The chain, without the backtrace that `{:?}` would add when
            // RUST_BACKTRACE is set: these are user-facing messages.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_command_keeps_the_words() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(guest_command(&w(&["gupwatch check; echo $?"])), "gupwatch check; echo $?");
        assert_eq!(guest_command(&w(&["bash", "-c", "echo $BASH_VERSION"])), "'bash' '-c' 'echo $BASH_VERSION'");
        assert_eq!(guest_command(&w(&["echo", "it's"])), r"'echo' 'it'\''s'");
    }

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_readme_lists_every_command() {
        let readme = include_str!("../README.md");
        for c in Cli::command().get_subcommands() {
            let row = format!("| `cargo xtask {}", c.get_name());
            assert!(readme.contains(&row), "xtask/README.md has no row for `cargo xtask {}`", c.get_name());
        }
    }
}
