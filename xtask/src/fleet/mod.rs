//! `cargo xtask fleet`: one Prometheus over many nodes.
//!
//! Three guests boot at once, one per kernel of the matrix (6.1, 6.12,
//! 7.2), one vCPU each, every one running `gupwatch run` and a different
//! workload ([`NODES`]): the mixed pinning loop; a held io_uring buffer
//! with failing GUP calls; and a buffer that outlived its creator (a child
//! registered it and exited, the parent keeps the ring) beside the loop. On the
//! host, the end-to-end test's pieces: Debian's Prometheus 2.42 pulls
//! every node (job `gupwatch`, the node's name as label `node`, the rule
//! files loaded, remote-write receiver on), and a second Prometheus in
//! agent mode scrapes them too (job `gupwatch-agent`) and remote-writes to
//! the first with the external label `prometheus="fleet-agent"`, so the
//! pushed copy can be told from the pulled one.
//!
//! Each guest takes its vmstat reading (after `stat_refresh`) only when the
//! host says go, runs its workload, reads vmstat again and hands the host
//! the `nr_foll_pin_*` deltas over its control port. The checks, all
//! through Prometheus's HTTP API (`checks.rs`), are listed in
//! [`checks::check_fleet`].

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

mod checks;
mod holders;
mod rules;

use crate::e2e::{self, conclude, free_port, guest_check, guest_greeting, http_get, release_guest, Check, E2eReport, Prometheus};
use crate::say;
use crate::util;
use crate::vm::kernels::{self, BootKernel, Flavour};
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};

/// gupwatch's metrics port in each guest.
const GUEST_METRICS_PORT: u16 = 10483;
/// Each guest's control port: `nc -l` there greets `waiting` (the host's
/// connection is the go), then `done <deltas>`, then `ready` (release).
const GUEST_CONTROL_PORT: u16 = 10484;
/// The pull job; the alerts' `up{job="gupwatch"}` names it.
pub const PULL_JOB: &str = e2e::JOB;
/// The agent's job, so dashboards with `$job=gupwatch` see the pulled
/// copy only.
pub const PUSH_JOB: &str = "gupwatch-agent";
/// The agent's external label, on every series it pushes.
pub const PUSH_LABEL: (&str, &str) = ("prometheus", "fleet-agent");
/// Scrape and rule-evaluation interval: three TCG guests share two host
/// cores, so a scrape may take seconds.
pub const SCRAPE_INTERVAL_S: u64 = 5;
/// `$__rate_interval` at that interval (Grafana: 4 × scrape interval).
pub const RATE_INTERVAL: &str = "20s";
/// How long each node's workload runs after the go.
pub const WORKLOAD_S: u64 = 40;
/// When, after the go, the dashboard's queries are evaluated (every
/// workload is running then and the rate windows lie inside it).
pub const DASHBOARD_AT_S: u64 = 32;
/// The cardinality budget of one node at default settings (docs/fleet.md).
pub const SERIES_BUDGET: u64 = 500;
/// `run --long-held` on every node, so a held buffer counts as long-held
/// within the test.
const LONG_HELD_S: u64 = 20;
/// Default time limit of each VM, in seconds (a passing run takes about
/// two minutes).
pub const DEFAULT_TIMEOUT_S: u64 = 900;
/// Default memory of each guest, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 640;
/// Longest wait for every guest to serve metrics.
const SERVE_DEADLINE: Duration = Duration::from_secs(420);

/// What a node runs besides `gupwatch run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The mixed loop: io_uring, direct I/O, process_vm (`workload --seconds`).
    Mix,
    /// One registered io_uring buffer held (`workload --hold`), and a GUP
    /// call that fails with EFAULT every few seconds.
    HeldAndFailing,
    /// An io_uring buffer whose creator exited while its child keeps the
    /// ring (`workload --hold --handoff`: the holder is `ring-holder`),
    /// beside the mixed loop: held, not orphaned.
    HandoffAndMix,
}

/// One node of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec {
    /// Kernel alias of the matrix.
    pub kernel: &'static str,
    /// Its `node` label.
    pub name: &'static str,
    /// Its workload.
    pub workload: Workload,
}

/// The fleet: one node per kernel of the matrix, each with its workload.
pub const NODES: [NodeSpec; 3] = [
    NodeSpec { kernel: "6.1", name: "node-6-1", workload: Workload::Mix },
    NodeSpec { kernel: "6.12", name: "node-6-12", workload: Workload::HeldAndFailing },
    NodeSpec { kernel: "7.2", name: "node-7-2", workload: Workload::HandoffAndMix },
];

/// Options of `cargo xtask fleet`.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Static gupwatch for the guests.
    pub gupwatch: PathBuf,
    /// Time limit of each VM.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

/// A node while the test runs: its spec, ports and VM.
pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    pub(crate) metrics_port: u16,
    control_port: u16,
    vm: thread::JoinHandle<Result<VmOutcome>>,
    /// The `nr_foll_pin_*` deltas the guest read over its workload.
    pub(crate) vmstat: Option<(u64, u64)>,
}

impl Node {
    /// The `instance` label Prometheus gives it.
    pub(crate) fn instance(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }
}

/// The guest's workload lines: background holders add their pid to `$BG`;
/// the foreground part runs about `secs` seconds.
fn workload_sh(w: Workload, secs: u64) -> String {
    let mix = format!("gupwatch workload --seconds {secs} --scratch /mnt/scratch 2>/tmp/workload.err\n");
    let hold = |orphan: &str| {
        format!("gupwatch workload --hold 3600{orphan} --scratch /mnt/scratch 2>/tmp/hold.err &\nBG=\"$BG $!\"\nsleep 2\n")
    };
    match w {
        Workload::Mix => mix,
        Workload::HandoffAndMix => format!("{}{mix}", hold(" --handoff")),
        // Reading this shell's [vvar] mapping (VM_IO | VM_PFNMAP) through
        // /proc/PID/mem makes get_user_pages_remote() fail with EFAULT.
        Workload::HeldAndFailing => format!(
            r#"{}V=$(awk '/\[vvar\]/ {{ split($1, a, "-"); print a[1]; exit }}' /proc/$$/maps)
for i in $(seq {n}); do
    [ -n "$V" ] && dd if=/proc/$$/mem of=/dev/null bs=4096 skip=$((0x$V / 4096)) count=1 2>/dev/null
    sleep 5
done
"#,
            hold(""),
            n = secs.div_ceil(5)
        ),
    }
}

/// The guest command of one node: gupwatch serving, a wait for the go,
/// vmstat, the workload, vmstat again, the deltas to the host, a wait for
/// the release.
pub fn guest_command(w: Workload, wait_s: u64) -> String {
    format!(
        r#"up() {{ cut -d' ' -f1 /proc/uptime; }}
ctl() {{ echo "$1" | timeout {wait_s} nc -l -p {ctl} >/dev/null 2>&1; }}
# Exact only after stat_refresh folds the per-CPU deltas.
pins() {{ echo 1 > /proc/sys/vm/stat_refresh; awk '/^nr_foll_pin_(acquired|released) / {{ printf "%s ", $2 }}' /proc/vmstat; }}
{serve}if ! ctl waiting; then echo "fleet: the host never said go" >&2; kill -TERM $RUN; exit 4; fi
set -- $(pins); A0=$1; R0=$2
echo "fleet: go ($(up) s after boot): acquired $A0 released $R0" >&2
BG=""
{workload}set -- $(pins); A1=$1; R1=$2
D="acquired=$((A1 - A0)) released=$((R1 - R0))"
echo "fleet: workload done ($(up) s after boot): vmstat delta $D" >&2
echo "vmstat $D"
ctl "done $D" || echo "fleet: the host never read the deltas" >&2
ctl ready
rel=$?
{stop}"#,
        ctl = GUEST_CONTROL_PORT,
        serve = crate::vm::serve_with_args_and_wait_sh("fleet", GUEST_METRICS_PORT, &format!("--long-held {LONG_HELD_S}")),
        workload = workload_sh(w, WORKLOAD_S),
        stop = crate::vm::stop_serving_sh("fleet", "$BG", "/tmp/workload.err /tmp/hold.err"),
    )
}

/// Parses `done acquired=A released=R` (the guest's greeting).
pub fn parse_deltas(line: &str) -> Option<(u64, u64)> {
    let mut a = None;
    let mut r = None;
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("acquired=") {
            a = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("released=") {
            r = v.parse().ok();
        }
    }
    Some((a?, r?))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Boots one node's guest in a thread.
fn start_node(spec: NodeSpec, kernel: BootKernel, o: &FleetOptions) -> Result<Node> {
    let (metrics_port, control_port) = (free_port()?, free_port()?);
    let wait = o.timeout.as_secs().saturating_sub(60).max(120);
    let mut run = VmRun::new(kernel, guest_command(spec.workload, wait));
    run.gupwatch = Some(o.gupwatch.clone());
    run.timeout = o.timeout;
    run.cpus = 1;
    run.memory_mib = o.memory_mib;
    run.forwards = vec![
        Forward { host: metrics_port, guest: GUEST_METRICS_PORT },
        Forward { host: control_port, guest: GUEST_CONTROL_PORT },
    ];
    run.captured(ConsoleEcho::None, format!("fleet {}", spec.name));
    say!(
        "fleet",
        "{} ({}, {:?}): metrics -> 127.0.0.1:{metrics_port}, control -> 127.0.0.1:{control_port}",
        spec.name,
        spec.kernel,
        spec.workload
    );
    let vm = thread::spawn(move || run.run());
    Ok(Node { spec, metrics_port, control_port, vm, vmstat: None })
}

/// The two Prometheus servers: the one that pulls, evaluates the rules and
/// receives remote writes, and the agent.
pub(crate) struct Servers {
    pub(crate) main: Prometheus,
    pub(crate) agent: Prometheus,
}

fn start_servers(dir: &std::path::Path, nodes: &[Node]) -> Result<Servers> {
    let root = util::workspace_root().join("dashboards/prometheus");
    // Expressions as shipped, `for:` shortened so a false orphan alert fires.
    let rules = [root.join("recording.yml"), rules::write_fast_alerts(&root.join("alerts.yml"), dir)?];
    let targets: Vec<(String, String)> = nodes.iter().map(|n| (n.instance(), n.spec.name.to_string())).collect();
    let (main_port, agent_port) = (free_port()?, free_port()?);
    let main_yml = format!(
        "# Written by `cargo xtask fleet`: pulls every node, receives the agent's remote writes.\n{}{}scrape_configs:\n{}",
        e2e::global_yaml(SCRAPE_INTERVAL_S, &[]),
        e2e::rule_files_yaml(&rules),
        e2e::scrape_job_yaml(PULL_JOB, SCRAPE_INTERVAL_S, &targets)
    );
    let main = Prometheus::launch(dir, "prometheus", main_port, &main_yml, &["--web.enable-remote-write-receiver"])?;
    let mut agent_yml = format!(
        "# Written by `cargo xtask fleet`: agent mode, pushes to the main server.\n{}scrape_configs:\n{}",
        e2e::global_yaml(SCRAPE_INTERVAL_S, &[PUSH_LABEL]),
        e2e::scrape_job_yaml(PUSH_JOB, SCRAPE_INTERVAL_S, &targets)
    );
    let _ = write!(
        agent_yml,
        "remote_write:\n  - url: http://127.0.0.1:{main_port}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n"
    );
    let agent = Prometheus::launch(dir, "agent", agent_port, &agent_yml, &["--enable-feature=agent"])?;
    Ok(Servers { main, agent })
}

/// Runs the fleet test. `Err` means it could not be run at all; otherwise
/// every check is in the report.
pub fn run(o: &FleetOptions) -> Result<E2eReport> {
    let started = Instant::now();
    if !util::have_program("prometheus") {
        bail!("`prometheus` is not installed: run `cargo xtask setup` (installs the Debian package prometheus)");
    }
    let dir = util::target_dir().join("fleet").join(format!("{}-{}", util::timestamp(), &util::nonce()[..6]));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernels: Vec<BootKernel> = NODES
        .iter()
        .map(|n| kernels::resolve_spec(n.kernel, Flavour::Cloud, None))
        .collect::<Result<_>>()?;
    let _guard = util::guest_active();
    let mut nodes = Vec::new();
    for (spec, kernel) in NODES.iter().zip(kernels) {
        nodes.push(start_node(*spec, kernel, o)?);
    }
    let mut servers: Option<Servers> = None;
    let checked = (|| -> Result<(Vec<Check>, Vec<String>)> {
        servers = Some(start_servers(&dir, &nodes)?);
        let s = servers.as_mut().expect("just set");
        let go_at = start_workloads(&nodes, started)?;
        collect_deltas(&mut nodes, go_at)?;
        let (mut checks, notes) = checks::check_fleet(s, &nodes, go_at + DASHBOARD_AT_S as f64)?;
        checks.extend(holders::holder_checks(&nodes, &o.gupwatch));
        Ok((checks, notes))
    })();

    // Clean-up on every path: release the guests, stop both servers, reap the VMs.
    for n in &nodes {
        if !release_guest(n.control_port, &n.vm, Duration::from_secs(30)) && !n.vm.is_finished() {
            say!("fleet", "{} did not take the release; waiting for its time limit", n.spec.name);
        }
    }
    let logs: Vec<String> = servers
        .as_ref()
        .map(|s| vec![format!("main:\n{}", s.main.log_tail()), format!("agent:\n{}", s.agent.log_tail())])
        .unwrap_or_default();
    drop(servers);
    let mut outcomes = Vec::new();
    for n in nodes {
        let r = n.vm.join().map_err(|_| anyhow!("the VM thread of {} panicked", n.spec.name))?;
        outcomes.push((n.spec.name, r));
    }
    let statuses = "3: gupwatch run never served, 4: the host never said go or released it, else gupwatch run's own";
    let guests = outcomes.iter().map(|(name, r)| guest_check(name, statuses, r)).collect::<Result<Vec<_>>>()?;
    let troubles = |_: &str| {
        let mut t: Vec<String> = outcomes
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e:#}")))
            .collect();
        t.extend(logs.iter().map(|l| format!("Prometheus log, {l}")));
        t
    };
    conclude("fleet test", &dir, checked, troubles, guests, started)
}

/// Waits until every guest serves metrics, then tells each to start its
/// workload; returns when that was (Unix seconds).
fn start_workloads(nodes: &[Node], started: Instant) -> Result<f64> {
    let mut last_report = Instant::now();
    loop {
        if util::interrupted() {
            return Err(anyhow!(util::Interrupted));
        }
        let serving: Vec<bool> = nodes
            .iter()
            .map(|n| matches!(http_get(n.metrics_port, "/healthz", Duration::from_secs(5)), Ok((200, _))))
            .collect();
        if serving.iter().all(|s| *s) {
            break;
        }
        if let Some(n) = nodes.iter().find(|n| n.vm.is_finished()) {
            bail!("the guest of {} ended before every node served metrics", n.spec.name);
        }
        if started.elapsed() > SERVE_DEADLINE {
            bail!("not every guest served metrics within {} s (console logs in target/vm-logs/)", SERVE_DEADLINE.as_secs());
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            let waiting: Vec<&str> =
                nodes.iter().zip(&serving).filter(|(_, s)| !**s).map(|(n, _)| n.spec.name).collect();
            say!("fleet", "waiting for {} to serve metrics", waiting.join(", "));
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_secs(2));
    }
    say!("fleet", "every node serves metrics after {:.0} s; starting the workloads", started.elapsed().as_secs_f64());
    let go_at = unix_now();
    for n in nodes {
        if guest_greeting(n.control_port, &n.vm, Duration::from_secs(60), "waiting").is_none() {
            bail!("{} never waited for the go on its control port", n.spec.name);
        }
    }
    Ok(go_at)
}

/// Reads every guest's vmstat deltas once its workload is done.
fn collect_deltas(nodes: &mut [Node], go_at: f64) -> Result<()> {
    let within = Duration::from_secs(WORKLOAD_S * 4 + 120);
    for n in nodes.iter_mut() {
        let line = guest_greeting(n.control_port, &n.vm, within, "done")
            .with_context(|| format!("{} never reported its workload done", n.spec.name))?;
        n.vmstat = Some(parse_deltas(&line).with_context(|| format!("{}: unreadable deltas `{line}`", n.spec.name))?);
        say!("fleet", "{}: {line} ({:.0} s after the go)", n.spec.name, unix_now() - go_at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_parse() {
        assert_eq!(parse_deltas("done acquired=5120 released=4864"), Some((5120, 4864)));
        assert_eq!(parse_deltas("done acquired=1"), None);
        assert_eq!(parse_deltas("done acquired=x released=2"), None);
    }

    #[test]
    fn each_node_runs_its_own_workload() {
        let kernels: Vec<&str> = NODES.iter().map(|n| n.kernel).collect();
        assert_eq!(kernels, ["6.1", "6.12", "7.2"]);
        let orphans = NODES.iter().filter(|n| guest_command(n.workload, 60).contains("--handoff")).count();
        assert_eq!(orphans, 1, "exactly one node holds an exited creator's buffer");
        let c = guest_command(Workload::HeldAndFailing, 60);
        assert!(c.contains("--long-held 20") && c.contains("nc -l -p 10484") && c.contains("stat_refresh"), "{c}");
        assert!(c.contains("--hold 3600 --scratch") && c.contains("vvar"), "{c}");
        assert!(guest_command(Workload::Mix, 60).contains("workload --seconds 40"));
    }
}
