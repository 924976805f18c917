//! `cargo xtask demo`: gupwatch watching a pinning workload live, on the
//! newest kernel of the matrix.
//!
//! On a terminal, the VM runs `gupwatch run` and a mixed workload, and the
//! host shows the live view of that daemon (`gupwatch top --connect`
//! through a forwarded port) until `q` or Ctrl-C; the guest is then
//! released and powers off. Piped, the same workload runs for a fixed time
//! and the host prints one short report on stdout (what ran, gupwatch's
//! counts beside the kernel's, where the metrics were): that is what a log
//! or CI keeps, so the guest's console goes to its log file only.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gup_report::{Mode, SnapshotReport};

use crate::binary;
use crate::e2e::{free_port, http_get, release_guest};
use crate::vm::kernels::{self, Flavour, Manifest};
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};
use crate::say;
use crate::setup::{self, SetupOptions};
use crate::util;

/// Host port that reaches the guest's metrics port.
pub const HOST_PORT: u16 = 19483;
/// gupwatch's metrics port in the guest.
pub const GUEST_PORT: u16 = 10483;

/// Port in the guest where it waits for the host to be done (live view).
pub const GUEST_RELEASE_PORT: u16 = 10484;

/// The guest command of the live demo: the daemon, then a mixed workload
/// under names of their own (symlinks, so the processes' `comm` tells
/// them apart): `pin-loop` pins through io_uring, direct I/O and
/// process_vm_readv in a loop, `pin-holder` holds one registered io_uring
/// buffer. They start once the daemon serves (its probes are attached).
/// Then it waits for the host.
pub fn live_command(release_wait_s: u64) -> String {
    format!(
        r#"gupwatch run --listen 0.0.0.0:{GUEST_PORT} --vmstat-refresh 0 2>/tmp/run.err &
RUN=$!
# The workloads start once the probes are attached, so the held buffer's
# pin is seen. (busybox 1.35's wget -T crashes: timeout(1) bounds it.)
i=0
while ! timeout 5 wget -q -O /dev/null http://127.0.0.1:{GUEST_PORT}/healthz 2>/dev/null; do
    i=$((i+1)); if [ $i -gt 240 ] || ! kill -0 $RUN 2>/dev/null; then cat /tmp/run.err >&2; exit 3; fi
    sleep 0.5
done
ln -s /bin/gupwatch /tmp/pin-loop
ln -s /bin/gupwatch /tmp/pin-holder
/tmp/pin-loop workload --seconds {wait} --scratch /mnt/scratch 2>/dev/null &
W1=$!
/tmp/pin-holder workload --hold {wait} --scratch /mnt/scratch 2>/dev/null &
W2=$!
echo ready | timeout {wait} nc -l -p {GUEST_RELEASE_PORT} >/dev/null 2>&1
kill $W1 $W2 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
[ $st -ne 0 ] && cat /tmp/run.err >&2
exit $st
"#,
        wait = release_wait_s
    )
}

/// Seconds the piped demo's workload runs.
pub const REPORT_WORKLOAD_S: u64 = 30;

/// The guest command of the piped demo: the daemon, then the same two
/// workloads as the live demo, bracketed by rendezvous with the host. Each
/// `echo ready | nc -l` returns once the host has connected, so the host
/// reads its baseline before the workload starts, its final reading after
/// `pin-loop` ended (with `pin-holder` still holding), and then lets the
/// guest stop. `pin-loop`'s summary is the command's stdout; the guest's
/// stderr, like the console, goes to the log only.
pub fn report_command(workload_s: u64, wait_s: u64) -> String {
    format!(
        r#"gupwatch run --listen 0.0.0.0:{GUEST_PORT} --vmstat-refresh 0 >/dev/null 2>/tmp/run.err &
RUN=$!
i=0
while ! timeout 5 wget -q -O /dev/null http://127.0.0.1:{GUEST_PORT}/healthz 2>/dev/null; do
    i=$((i+1)); if [ $i -gt 240 ] || ! kill -0 $RUN 2>/dev/null; then cat /tmp/run.err >&2; exit 3; fi
    sleep 0.5
done
rendezvous() {{ echo ready | timeout {wait_s} nc -l -p {GUEST_RELEASE_PORT} >/dev/null 2>&1; }}
rendezvous
ln -s /bin/gupwatch /tmp/pin-loop
ln -s /bin/gupwatch /tmp/pin-holder
/tmp/pin-holder workload --hold {wait_s} --scratch /mnt/scratch 2>/dev/null &
W2=$!
/tmp/pin-loop workload --seconds {workload_s} --scratch /mnt/scratch 2>/tmp/loop.txt
cat /tmp/loop.txt
# io_uring tears down an exited process's rings from a kworker: let those
# unpins land before the final reading, so both counters have them.
sleep 2
rendezvous
rendezvous
kill $W2 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
[ $st -ne 0 ] && cat /tmp/run.err >&2
exit $st
"#
    )
}

/// What the report needs from one `/api/snapshot` of the daemon.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// The guest kernel's release, as the daemon reports it.
    pub kernel: String,
    /// Hooks attached in the guest.
    pub hooks_attached: u64,
    /// gupwatch's FOLL_PIN pins taken since it attached.
    pub pinned: u64,
    /// gupwatch's FOLL_PIN pins released since it attached.
    pub unpinned: u64,
    /// The kernel's `nr_foll_pin_acquired` (since boot).
    pub acquired: u64,
    /// The kernel's `nr_foll_pin_released` (since boot).
    pub released: u64,
    /// Pins held now, by gupwatch's count (since it attached).
    pub held: i64,
    /// Pins held now, by the kernel's count (since boot).
    pub kernel_held: i64,
    /// (comm, pinned pages), largest first, as the daemon ranks them.
    pub processes: Vec<(String, u64)>,
}

impl Reading {
    /// Parses `/api/snapshot` (gup-report's `SnapshotReport`, written by
    /// `gup-user/src/export/api.rs`). A reduced-mode daemon has no totals:
    /// an error, as the demo then has nothing to show.
    pub fn parse(body: &[u8]) -> Result<Reading> {
        let v: SnapshotReport = serde_json::from_slice(body).context("/api/snapshot is not a snapshot document")?;
        if v.mode != Mode::Full {
            bail!("gupwatch runs in reduced mode in the guest: no probe attached");
        }
        let totals = v.totals.ok_or_else(|| anyhow!("/api/snapshot has no totals"))?;
        let counters = v.kernel_counters.ok_or_else(|| anyhow!("/api/snapshot has no kernel counters"))?;
        Ok(Reading {
            kernel: v.kernel,
            hooks_attached: u64::try_from(v.hooks_attached).unwrap_or(u64::MAX),
            pinned: totals.pinned_pages,
            unpinned: totals.unpinned_pages,
            acquired: counters.acquired,
            released: counters.released,
            held: v.outstanding_pages.unwrap_or(0),
            kernel_held: counters.outstanding,
            processes: v.top_processes.into_iter().map(|p| (p.comm, p.pinned_pages)).collect(),
        })
    }
}

/// Everything the piped demo's report says.
#[derive(Debug, Clone)]
pub struct Report {
    /// The guest kernel's release string.
    pub kernel: String,
    /// The Debian suite it came from.
    pub suite: String,
    /// KVM or TCG.
    pub accel: String,
    /// How long `pin-loop` ran.
    pub workload_s: u64,
    /// `pin-loop`'s own summary (the `workload` command's plain text).
    pub workload: String,
    /// The daemon before the workload started.
    pub before: Reading,
    /// The daemon after `pin-loop` ended (`pin-holder` still holding).
    pub after: Reading,
    /// Where the host reached `/metrics` while the demo ran.
    pub metrics_url: String,
    /// The last scrape, kept after the VM is gone.
    pub metrics_copy: PathBuf,
    /// The guest's console log.
    pub console_log: PathBuf,
}

/// Groups digits by thousands: counts are easier to compare that way.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut o = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    if n < 0 {
        o.insert(0, '-');
    }
    o
}

/// The report, as printed on stdout.
pub fn render(r: &Report) -> String {
    let (b, a) = (&r.before, &r.after);
    let mut o = String::new();
    let _ = writeln!(o, "gupwatch demo: Debian {} kernel {} in a VM ({})", r.suite, r.kernel, r.accel);
    let _ = writeln!(o, "  gupwatch run attached {} hooks; then, for {} s:", a.hooks_attached, r.workload_s);
    let _ = writeln!(o, "  pin-loop    io_uring buffers, direct I/O and process_vm_readv in a loop");
    let _ = writeln!(o, "  pin-holder  one registered 1 MiB io_uring buffer, held to the end");
    let _ = writeln!(o);
    let _ = writeln!(o, "pin-loop's own count:");
    for l in r.workload.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(o, "  {}", l.trim_start_matches("workload done: "));
    }
    let _ = writeln!(o);
    let pinned = a.pinned.wrapping_sub(b.pinned) as i64;
    let unpinned = a.unpinned.wrapping_sub(b.unpinned) as i64;
    let acquired = a.acquired.wrapping_sub(b.acquired) as i64;
    let released = a.released.wrapping_sub(b.released) as i64;
    let same = |x: i64, y: i64| if x == y { "equal" } else { "DIFFERENT" };
    let _ = writeln!(o, "during the workload     gupwatch   kernel (/proc/vmstat)");
    let _ = writeln!(o, "  pages pinned       {:>12} {:>12}   {}", thousands(pinned), thousands(acquired), same(pinned, acquired));
    let _ = writeln!(o, "  pages unpinned     {:>12} {:>12}   {}", thousands(unpinned), thousands(released), same(unpinned, released));
    let _ = writeln!(o, "  held at the end    {:>12} {:>12}   {}", thousands(a.held), thousands(a.kernel_held), same(a.held, a.kernel_held));
    let top: Vec<String> = a
        .processes
        .iter()
        .filter(|(_, p)| *p > 0)
        .take(4)
        .map(|(c, p)| format!("{c} {}", thousands(*p as i64)))
        .collect();
    if !top.is_empty() {
        let _ = writeln!(o, "  pinned by process: {}", top.join(", "));
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "metrics:       {} (served while the demo ran)", r.metrics_url);
    let _ = writeln!(o, "last scrape:   {}", r.metrics_copy.display());
    let _ = writeln!(o, "guest console: {}", r.console_log.display());
    o
}

/// The demo's VM: the daemon's port and the release port forwarded, the
/// console to the log only (it would draw over the live view, and a pipe
/// gets the report alone).
fn demo_vm(manifest: &Manifest, cache: &Path, gupwatch: &Path, command: String, release_port: u16, timeout_s: u64) -> VmRun {
    let mut run = VmRun::new(manifest.boot_kernel(cache), command);
    run.gupwatch = Some(gupwatch.to_path_buf());
    run.forwards = vec![
        Forward { host: HOST_PORT, guest: GUEST_PORT },
        Forward { host: release_port, guest: GUEST_RELEASE_PORT },
    ];
    run.timeout = Duration::from_secs(timeout_s);
    run.captured(ConsoleEcho::None, "demo");
    run
}

/// The piped demo: the workload runs for a fixed time in the VM, the host
/// reads the daemon before and after it, and prints one report on stdout.
/// Progress goes to stderr and the guest's console to its log, so a pipe
/// or CI log gets the report alone. Returns 0 when the guest ended cleanly
/// and the counts were equal.
fn report(manifest: &Manifest, cache: &Path, gupwatch: &Path) -> Result<i32> {
    let release_port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{HOST_PORT}/metrics");
    say!("demo", "booting Debian's {} kernel in a VM (about a minute under TCG); its console goes to target/vm-logs/", manifest.uname);
    let _guard = util::guest_active();
    // The time the guest waits at each rendezvous before giving up.
    let wait_s = 600;
    let run = demo_vm(manifest, cache, gupwatch, report_command(REPORT_WORKLOAD_S, wait_s), release_port, 3 * wait_s);
    let vm = thread::spawn(move || run.run());

    let readings = (|| -> Result<(Reading, Reading)> {
        wait_for_daemon(&vm)?;
        let before = snapshot()?;
        if !release_guest(release_port, &vm, Duration::from_secs(60)) {
            bail!("the guest did not take the signal to start the workload");
        }
        say!("demo", "gupwatch run serves {metrics_url}; the workload runs for {REPORT_WORKLOAD_S} s");
        if !release_guest(release_port, &vm, Duration::from_secs(REPORT_WORKLOAD_S + 300)) {
            bail!("the workload did not end in time");
        }
        let after = snapshot()?;
        Ok((before, after))
    })();
    // The last scrape is kept, so the metrics can be read after the VM is gone.
    let metrics_copy = util::target_dir().join("demo").join("metrics.txt");
    if readings.is_ok() {
        let saved = http_get(HOST_PORT, "/metrics", Duration::from_secs(10)).and_then(|(_, body)| {
            std::fs::create_dir_all(metrics_copy.parent().unwrap_or(Path::new(".")))?;
            Ok(std::fs::write(&metrics_copy, body)?)
        });
        if let Err(e) = saved {
            say!("demo", "could not keep a copy of /metrics: {e:#}");
        }
        // Let the guest stop its workload and the daemon.
        release_guest(release_port, &vm, Duration::from_secs(30));
    } else {
        // Take the guest through whichever rendezvous it still waits at,
        // so it ends now rather than at its time limit.
        for _ in 0..3 {
            release_guest(release_port, &vm, Duration::from_secs(5));
        }
    }
    let outcome = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;
    let ((before, after), out) = match (readings, outcome) {
        (Ok(r), Ok(out)) => (r, out),
        (Err(e), Ok(out)) => bail!("{e:#} (guest console: {})", out.console_log.display()),
        (_, Err(e)) => return Err(e),
    };
    let exact = after.pinned.wrapping_sub(before.pinned) == after.acquired.wrapping_sub(before.acquired)
        && after.unpinned.wrapping_sub(before.unpinned) == after.released.wrapping_sub(before.released);
    print!(
        "{}",
        render(&Report {
            kernel: manifest.uname.clone(),
            suite: manifest.suite.clone(),
            accel: out.accel.to_string(),
            workload_s: REPORT_WORKLOAD_S,
            workload: String::from_utf8_lossy(&out.stdout).into_owned(),
            before,
            after,
            metrics_url,
            metrics_copy,
            console_log: out.console_log.clone(),
        })
    );
    if out.status != 0 {
        say!("demo", "the guest ended with status {}: see {}", out.status, out.console_log.display());
    }
    Ok(if out.status == 0 && exact { 0 } else { 1 })
}

/// Waits until the daemon in the VM answers `/healthz` through the
/// forwarded port (boot plus probe attach: about a minute under TCG).
fn wait_for_daemon(vm: &thread::JoinHandle<Result<VmOutcome>>) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if util::interrupted() {
            return Err(anyhow!(util::Interrupted));
        }
        if vm.is_finished() {
            bail!("the VM ended before gupwatch run served");
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("gupwatch run did not serve within 300 s");
        }
        if let Ok((200, _)) = http_get(HOST_PORT, "/healthz", Duration::from_secs(5)) {
            return Ok(t.elapsed());
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// One reading of the daemon, through the forwarded port.
fn snapshot() -> Result<Reading> {
    let (status, body) = http_get(HOST_PORT, "/api/snapshot", Duration::from_secs(10))?;
    if status != 200 {
        bail!("/api/snapshot answered {status}");
    }
    Reading::parse(&body)
}

/// Options of `cargo xtask demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Kernel alias (default: the newest of the matrix).
    pub kernel: String,
    /// Skip building gupwatch.
    pub no_build: bool,
}

/// Runs the demo; returns the guest command's exit status.
pub fn run(o: &DemoOptions) -> Result<i32> {
    setup::run(&SetupOptions {
        refresh: false,
        no_kernels: true,
    })?;
    let alias = kernels::known_alias(&o.kernel)?;
    let cache = util::cache_dir()?;
    let manifest = kernels::ensure(&cache, alias, Flavour::Cloud, false)?;
    let gupwatch = binary::static_gupwatch(o.no_build)?;
    if !gupwatch.is_file() {
        anyhow::bail!(
            "{} does not exist: run without --no-build",
            gupwatch.display()
        );
    }
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return live(&manifest, &cache, &gupwatch);
    }

    report(&manifest, &cache, &gupwatch)
}

/// The demo on a terminal: the live view on the host, of the daemon in the
/// VM. Returns 0 when the view and the guest both ended cleanly.
fn live(manifest: &Manifest, cache: &Path, gupwatch: &Path) -> Result<i32> {
    let release_port = free_port()?;
    let metrics = format!("http://127.0.0.1:{HOST_PORT}/metrics");
    eprintln!(
        "\n\
         gupwatch demo\n\
         -------------\n\
         A throwaway VM boots Debian's {kernel} kernel (Debian {suite}). Inside it,\n\
         `gupwatch run` attaches its eBPF probes to the kernel's GUP functions and\n\
         serves what they see, while a mixed workload pins user memory: pin-loop\n\
         (io_uring buffers, direct I/O, process_vm_readv, in a loop) and pin-holder\n\
         (one registered io_uring buffer, held).\n\
         Here, `gupwatch top --connect 127.0.0.1:{HOST_PORT}` shows it live: the\n\
         probes' counts above the kernel's own nr_foll_pin_* counters, a row per\n\
         process, the pin rate, latencies and pins held.\n\
         Keys: s/S sort, / filter, v processes/call sites, ? help, q or Ctrl-C quits.\n\
         Prometheus metrics: {metrics}  (while the demo runs)\n",
        kernel = manifest.uname,
        suite = manifest.suite,
    );
    let _guard = util::guest_active();
    // An hour of workload at most; quitting the view ends it sooner.
    let wait_s = 3600;
    let run = demo_vm(manifest, cache, gupwatch, live_command(wait_s), release_port, wait_s + 300);
    let vm = thread::spawn(move || run.run());

    say!("demo", "booting the VM and waiting for gupwatch run to serve (about a minute under TCG)...");
    let served = wait_for_daemon(&vm);
    let view = served.and_then(|t| {
        say!("demo", "gupwatch run serves after {:.0} s; opening the live view", t.as_secs_f64());
        Command::new(gupwatch)
            .args(["top", "--connect", &format!("127.0.0.1:{HOST_PORT}")])
            .status()
            .context("running gupwatch top --connect")
    });
    if !util::interrupted() && !release_guest(release_port, &vm, Duration::from_secs(30)) && !vm.is_finished() {
        say!("demo", "the guest did not take the release; stopping it at its time limit (Ctrl-C stops it now)");
    }
    let outcome = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;
    let status = view?;
    let outcome = outcome?;
    say!(
        "demo",
        "stopped: the live view exited with {status}, the guest with status {} after {:.0} s ({}); metrics were at {metrics}; console log: {}",
        outcome.status,
        outcome.elapsed.as_secs_f64(),
        outcome.accel,
        outcome.console_log.display()
    );
    if !status.success() {
        bail!("gupwatch top --connect exited with {status}");
    }
    Ok(outcome.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_command_serves_pins_and_waits() {
        let c = live_command(60);
        assert!(c.contains("gupwatch run --listen 0.0.0.0:10483"), "{c}");
        assert!(c.contains("/tmp/pin-loop workload --seconds 60"), "{c}");
        assert!(c.contains("/tmp/pin-holder workload --hold 60"), "{c}");
        assert!(c.contains("nc -l -p 10484"), "{c}");
        assert!(c.contains("kill -TERM $RUN"), "{c}");
    }

    #[test]
    fn report_command_meets_the_host_three_times() {
        let c = report_command(30, 600);
        assert_eq!(c.lines().filter(|l| *l == "rendezvous").count(), 3, "{c}");
        assert!(c.contains("/tmp/pin-loop workload --seconds 30"), "{c}");
        assert!(c.contains("/tmp/pin-holder workload --hold 600"), "{c}");
        // pin-loop's summary is the guest's stdout, read into the report.
        assert!(c.contains("2>/tmp/loop.txt\ncat /tmp/loop.txt"), "{c}");
    }

    fn reading(pinned: u64, unpinned: u64, acquired: u64, released: u64) -> Reading {
        Reading {
            kernel: "7.2.13+deb14-cloud-amd64".into(),
            hooks_attached: 19,
            pinned,
            unpinned,
            acquired,
            released,
            held: pinned as i64 - unpinned as i64,
            kernel_held: acquired as i64 - released as i64,
            processes: vec![("pin-loop".into(), 30_000), ("pin-holder".into(), 256), ("sh".into(), 0)],
        }
    }

    #[test]
    fn snapshot_json_parses() {
        let body = br#"{"kernel":"7.2","mode":"full","hooks_attached":19,
            "totals":{"pinned_pages":300,"unpinned_pages":44},"outstanding_pages":256,
            "kernel_counters":{"acquired":310,"released":54,"outstanding":256},
            "top_processes":[{"tgid":42,"comm":"pin-holder","pinned_pages":256,"referenced_pages":0,
                "unpinned_pages":0,"calls":1,"errors":0}]}"#;
        let r = Reading::parse(body).unwrap();
        assert_eq!((r.pinned, r.unpinned, r.acquired, r.released, r.held), (300, 44, 310, 54, 256));
        assert_eq!(r.processes, vec![("pin-holder".to_string(), 256)]);
        let reduced = br#"{"kernel":"7.2","mode":"reduced","totals":null}"#;
        assert!(Reading::parse(reduced).is_err());
    }

    #[test]
    fn report_is_plain_and_compares_deltas() {
        let text = render(&Report {
            kernel: "7.2.13+deb14-cloud-amd64".into(),
            suite: "sid".into(),
            accel: "TCG".into(),
            workload_s: 30,
            workload: "workload done: 58 rounds in 30.1 s\n  io_uring_register   58 runs\n".into(),
            before: reading(10, 10, 12, 12),
            after: reading(34_110, 33_854, 34_112, 33_856),
            metrics_url: "http://127.0.0.1:19483/metrics".into(),
            metrics_copy: "target/demo/metrics.txt".into(),
            console_log: "target/vm-logs/x.log".into(),
        });
        let row = |label: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or("");
            line[line.find(label).map_or(0, |i| i + label.len())..].split_whitespace().map(str::to_string).collect()
        };
        // Deltas over the workload, not totals since attach or boot.
        assert_eq!(row("pages pinned"), ["34,100", "34,100", "equal"], "{text}");
        assert_eq!(row("pages unpinned"), ["33,844", "33,844", "equal"], "{text}");
        assert_eq!(row("held at the end"), ["256", "256", "equal"], "{text}");
        assert!(text.contains("pinned by process: pin-loop 30,000, pin-holder 256\n"), "{text}");
        assert!(text.contains("  58 rounds in 30.1 s\n"), "{text}");
        assert!(text.contains("guest console: target/vm-logs/x.log"), "{text}");
        assert!(!text.contains('{') && !text.contains("DIFFERENT"), "{text}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
    }
}
