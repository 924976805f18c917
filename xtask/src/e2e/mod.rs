//! End-to-end test of the metrics path: gupwatch in a VM, scraped by a real
//! Prometheus server on the host, and every PromQL expression of the
//! dashboard and of the rule files evaluated against what it scraped.
//!
//! One guest boots with the guest's metrics port forwarded to a free port on
//! the host's loopback. In the guest, `gupwatch run` serves metrics while
//! `gupwatch workload` pins memory, a second workload holds a registered
//! io_uring buffer, and a loop makes a GUP call fail (for the errno panel).
//! On the host, Debian's `prometheus` (installed by `cargo xtask setup`)
//! listens on loopback only, scrapes the forwarded port every 2 s and
//! evaluates `dashboards/prometheus/{recording,alerts}.yml` every 2 s. Once
//! it has several scrapes, each check below goes through Prometheus's HTTP
//! API:
//!
//! * every `expr` of every panel of `dashboards/gupwatch-overview.json`
//!   (template variables substituted as Grafana would: `$job`, `$instance`,
//!   `$__rate_interval`, `$__range`, ...) must return a non-empty result that
//!   is not only NaN; so must the dashboard's template-variable queries;
//! * every recording rule must be healthy and its recorded series present;
//! * every alerting rule must be healthy, and the probe alerts
//!   (`GupwatchNoProbesAttached`, `GupwatchProbesDetached`) inactive while the
//!   probes are attached;
//! * gupwatch runs with `--bpf-stats`: `gupwatch_bpf_stats_enabled` must be
//!   1, and the pin programs' run count and run time above 0;
//! * `/metrics`, fetched once through the forward, must pass
//!   `promtool check metrics`.
//!
//! When the host side is done it connects to a second forwarded port, where
//! the guest waits with `nc -l`; the guest then stops its workloads and
//! gupwatch (which must exit 0) and powers off. Prometheus and the VM are
//! stopped on every path, and every wait is bounded.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod checks;
mod dashboard;
mod http;
mod prometheus;

pub use dashboard::{dashboard_queries, dashboard_range, grafana_regex_escape, rule_names, substitute, DashQuery, DashQueryKind, Dashboard};
pub use http::{dechunk, free_port, http_get, url_encode};
pub use prometheus::{judge_result, QueryData};
pub(crate) use prometheus::{global_yaml, rule_files_yaml, scrape_job_yaml, Prometheus};

use checks::check_all;
use crate::vm::kernels::BootKernel;
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};
use crate::say;
use crate::util;

/// gupwatch's metrics port in the guest.
pub const GUEST_METRICS_PORT: u16 = 10483;
/// Port in the guest where `nc -l` waits for the host to finish.
pub const GUEST_RELEASE_PORT: u16 = 10484;
/// The scrape job's name: `alerts.yml` (`up{job="gupwatch"}`) and the sample
/// `prometheus.yml` use it.
pub const JOB: &str = "gupwatch";
/// The `node` label the scrape gives the guest (the dashboard's Node
/// selector lists it).
pub const NODE: &str = "e2e";
/// Scrape and rule-evaluation interval.
pub const SCRAPE_INTERVAL_S: u64 = 2;
/// What `$__rate_interval` becomes (Grafana: max(4 × scrape interval, ...)).
pub const RATE_INTERVAL: &str = "10s";
/// Successful scrapes Prometheus must have before the checks run.
pub const MIN_SCRAPES: u64 = 8;
/// How often, and how far apart, a check that found no data is retried.
const RETRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(4);
/// Longest time from the VM's start until Prometheus has its scrapes.
const DATA_DEADLINE: Duration = Duration::from_secs(180);
/// Longest a single HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The alerts that must stay inactive while gupwatch's probes are attached.
pub const PROBE_ALERTS: &[&str] = &["GupwatchNoProbesAttached", "GupwatchProbesDetached"];

/// Options of the end-to-end test.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Kernel to boot (the newest of the matrix).
    pub kernel: BootKernel,
    /// Static gupwatch for the guest.
    pub gupwatch: PathBuf,
    /// Time limit of the VM.
    pub timeout: Duration,
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked (e.g. `panel "Pin rate" A`).
    pub name: String,
    /// The PromQL expression as sent, if the check is one.
    pub expr: Option<String>,
    /// The verdict.
    pub ok: bool,
    /// The result in short (series count and values), or why it failed.
    pub detail: String,
}

impl Check {
    pub(crate) fn new(
        name: impl Into<String>,
        expr: Option<String>,
        ok: bool,
        detail: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            expr,
            ok,
            detail: detail.into(),
        }
    }
}

/// The outcome of a run that got as far as checking.
#[derive(Debug)]
pub struct E2eReport {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Remarks that are neither passes nor failures.
    pub notes: Vec<String>,
    /// Wall-clock time of the whole test.
    pub elapsed: Duration,
}

/// Renders the checks as `PASS`/`FAIL` lines; failed PromQL checks show the
/// expression that was sent.
pub fn render(report: &E2eReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = String::new();
    for c in &report.checks {
        let _ = writeln!(
            out,
            "  {}  {:<width$}  {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
        if !c.ok {
            if let Some(e) = &c.expr {
                let _ = writeln!(out, "        query: {e}");
            }
        }
    }
    for n in &report.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// The guest command: gupwatch serving, two workloads, a failing GUP call
/// every few seconds, then a wait for the host's release.
pub fn guest_command(release_wait_s: u64) -> String {
    format!(
        r#"up() {{ cut -d' ' -f1 /proc/uptime; }}
{serve}gupwatch workload --seconds 50 --scratch /mnt/scratch 2>/tmp/workload.err &
W1=$!
gupwatch workload --hold 40 --scratch /mnt/scratch 2>/tmp/hold.err &
W2=$!
# Failing GUP calls for the errno panel: reading this shell's [vvar] mapping
# (VM_IO | VM_PFNMAP) through /proc/PID/mem makes get_user_pages_remote()
# fail with EFAULT.
V=$(awk '/\[vvar\]/ {{ split($1, a, "-"); print a[1]; exit }}' /proc/$$/maps)
if [ -z "$V" ]; then echo "e2e: no [vvar] mapping; no failing GUP calls" >&2; fi
( [ -n "$V" ] && for i in $(seq 12); do
    dd if=/proc/$$/mem of=/dev/null bs=4096 skip=$((0x$V / 4096)) count=1 2>/dev/null; sleep 5
  done ) &
W3=$!
echo "e2e: workloads started; waiting for the host (at most {wait} s)" >&2
echo ready | timeout {wait} nc -l -p {release} >/dev/null 2>&1
rel=$?
{stop}"#,
        // --bpf-stats: the per-program run counts are checked too.
        serve = crate::vm::serve_with_args_and_wait_sh("e2e", GUEST_METRICS_PORT, "--bpf-stats"),
        stop = crate::vm::stop_serving_sh("e2e", "$W1 $W2 $W3", "/tmp/workload.err /tmp/hold.err"),
        release = GUEST_RELEASE_PORT,
        wait = release_wait_s,
    )
}

/// Tells the guest the host is done: connects to the release port until
/// the guest's `nc` answers (a connection made before it listens is closed
/// by QEMU without data).
pub fn release_guest(port: u16, vm: &thread::JoinHandle<Result<VmOutcome>>, within: Duration) -> bool {
    guest_greeting(port, vm, within, "ready").is_some()
}

/// Connects to a forwarded port until the guest's `nc -l` there greets
/// with a line starting with `prefix` (which lets the guest go on); the
/// line, or `None` when `within` passed or the VM ended first.
pub fn guest_greeting(
    port: u16,
    vm: &thread::JoinHandle<Result<VmOutcome>>,
    within: Duration,
    prefix: &str,
) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < within && !vm.is_finished() && !util::interrupted() {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n]);
                if line.starts_with(prefix) {
                    return Some(line.trim().to_string());
                }
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    None
}

/// Runs the end-to-end test. `Err` means it could not be run at all;
/// otherwise every check is in the report.
pub fn run(o: &E2eOptions) -> Result<E2eReport> {
    let started = Instant::now();
    for p in ["prometheus", "promtool"] {
        if !util::have_program(p) {
            bail!("`{p}` is not installed: run `cargo xtask setup` (installs the Debian package prometheus)");
        }
    }
    let inputs = Inputs::load()?;
    let ports = Ports {
        metrics: free_port()?,
        release: free_port()?,
        prometheus: free_port()?,
    };
    let dir = util::target_dir().join("e2e").join(format!(
        "{}-{}",
        util::timestamp(),
        &util::nonce()[..6]
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // Signals are ours to handle from here on (Prometheus and the VM must
    // not outlive us); the loops below poll util::interrupted().
    let _guard = util::guest_active();
    let vm = start_vm(o, &ports, &dir);

    let mut prom: Option<Prometheus> = None;
    let checked = (|| -> Result<(Vec<Check>, Vec<String>)> {
        prom = Some(Prometheus::start(
            &dir,
            ports.prometheus,
            ports.metrics,
            &inputs.rule_files,
        )?);
        let p = prom.as_mut().expect("just set");
        check_all(
            p,
            &inputs.dash,
            &inputs.expected_records,
            &inputs.expected_alerts,
            ports.metrics,
            &vm,
            started,
        )
    })();

    // Clean-up on every path: release the guest, stop Prometheus, reap the VM.
    let released = release_guest(ports.release, &vm, Duration::from_secs(30));
    let prom_log = prom.as_ref().map(|p| p.log.clone());
    let prom_tail = prom.as_ref().map(Prometheus::log_tail).unwrap_or_default();
    drop(prom);
    if !released && !vm.is_finished() {
        say!(
            "e2e",
            "the guest did not take the release; waiting for its time limit ({} s)",
            o.timeout.as_secs()
        );
    }
    let vm_result = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;
    let guest = guest_check(
        "guest",
        "3: gupwatch run never served, 4: the host never released the guest, else gupwatch run's own",
        &vm_result,
    )?;
    let troubles = |msg: &str| {
        let mut t = Vec::new();
        if let Err(vm_err) = &vm_result {
            t.push(format!("the VM: {vm_err:#}"));
        }
        if !prom_tail.is_empty() && !msg.contains("log ends") {
            t.push(format!(
                "Prometheus log ({}):\n{prom_tail}",
                prom_log.as_deref().unwrap_or(Path::new("?")).display()
            ));
        }
        t
    };
    conclude("end-to-end test", &dir, checked, troubles, vec![guest], started)
}

/// What the test checks against: the dashboard and the rules the rule
/// files define.
struct Inputs {
    dash: Dashboard,
    rule_files: Vec<PathBuf>,
    expected_records: Vec<String>,
    expected_alerts: Vec<String>,
}

impl Inputs {
    fn load() -> Result<Inputs> {
        let root = util::workspace_root();
        let dash_path = root.join("dashboards/gupwatch-overview.json");
        let rules_dir = root.join("dashboards/prometheus");
        let rule_files = vec![
            rules_dir.join("recording.yml"),
            rules_dir.join("alerts.yml"),
        ];
        let dash: Dashboard = serde_json::from_str(
            &fs::read_to_string(&dash_path)
                .with_context(|| format!("reading {}", dash_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", dash_path.display()))?;
        let mut expected_records = Vec::new();
        let mut expected_alerts = Vec::new();
        for f in &rule_files {
            let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            expected_records.extend(rule_names(&text, "record"));
            expected_alerts.extend(rule_names(&text, "alert"));
        }
        Ok(Inputs {
            dash,
            rule_files,
            expected_records,
            expected_alerts,
        })
    }
}

/// The host's loopback ports of one run.
struct Ports {
    /// Forwarded to the guest's metrics port.
    metrics: u16,
    /// Forwarded to the guest's release port.
    release: u16,
    /// Prometheus's own.
    prometheus: u16,
}

/// Starts the guest in a thread: gupwatch serving, the workloads, then a
/// wait for the host's release.
fn start_vm(o: &E2eOptions, ports: &Ports, dir: &Path) -> thread::JoinHandle<Result<VmOutcome>> {
    let (metrics_port, release_port) = (ports.metrics, ports.release);
    let release_wait = o.timeout.as_secs().saturating_sub(30).max(60);
    let mut vm_run = VmRun::new(o.kernel.clone(), guest_command(release_wait));
    vm_run.gupwatch = Some(o.gupwatch.clone());
    vm_run.timeout = o.timeout;
    vm_run.forwards = vec![
        Forward {
            host: metrics_port,
            guest: GUEST_METRICS_PORT,
        },
        Forward {
            host: release_port,
            guest: GUEST_RELEASE_PORT,
        },
    ];
    vm_run.captured(ConsoleEcho::None, "e2e");
    say!(
        "e2e",
        "guest metrics port {GUEST_METRICS_PORT} -> 127.0.0.1:{metrics_port}; release port -> 127.0.0.1:{release_port}; files in {}",
        dir.display()
    );
    thread::spawn(move || vm_run.run())
}

/// A guest's own verdict, as check `who: workloads ran and gupwatch run
/// exited cleanly`: its exit status 0 (`statuses` says what the others
/// mean). `Err` only when the run was interrupted.
pub(crate) fn guest_check(who: &str, statuses: &str, vm_result: &Result<VmOutcome>) -> Result<Check> {
    let what = format!("{who}: workloads ran and gupwatch run exited cleanly");
    match vm_result {
        Ok(out) if out.status == 0 => Ok(Check::new(
            what,
            None,
            true,
            format!("exit status 0 ({}, {:.0} s in all)", out.accel, out.elapsed.as_secs_f64()),
        )),
        Ok(out) => Ok(Check::new(
            what,
            None,
            false,
            format!("exit status {} ({statuses}); console log: {}", out.status, out.console_log.display()),
        )),
        Err(e) if e.downcast_ref::<util::Interrupted>().is_some() => Err(anyhow!(util::Interrupted)),
        Err(e) => Ok(Check::new(format!("{who}: VM run"), None, false, format!("{e:#}"))),
    }
}

/// The end of a run that booted guests beside Prometheus servers. When
/// the checks could not be made: one error with `troubles` (given the
/// error's text, so as not to repeat it), naming the kept files. Otherwise
/// the checks and the guests' verdicts, with the work directory removed
/// when every check passed and kept (and said) when not.
pub(crate) fn conclude(
    what: &str,
    dir: &Path,
    checked: Result<(Vec<Check>, Vec<String>)>,
    troubles: impl FnOnce(&str) -> Vec<String>,
    guests: Vec<Check>,
    started: Instant,
) -> Result<E2eReport> {
    let (mut checks, mut notes) = match checked {
        Ok(c) => c,
        Err(e) => {
            if util::interrupted() {
                return Err(anyhow!(util::Interrupted));
            }
            let mut msg = format!("{e:#}");
            for t in troubles(&msg) {
                msg.push_str("\n  ");
                msg.push_str(&t);
            }
            return Err(anyhow!(msg)).context(format!("{what} (files kept in {})", dir.display()));
        }
    };
    checks.extend(guests);
    if checks.iter().all(|c| c.ok) {
        let _ = fs::remove_dir_all(dir);
    } else {
        notes.push(format!("Prometheus configuration, data and log kept in {}", dir.display()));
    }
    Ok(E2eReport { checks, notes, elapsed: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_command_mentions_ports() {
        let c = guest_command(120);
        assert!(c.contains("--listen 0.0.0.0:10483"));
        assert!(c.contains("nc -l -p 10484"));
        assert!(c.contains("timeout 120"));
    }
}
