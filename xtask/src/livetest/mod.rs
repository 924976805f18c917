//! `cargo xtask live-test`: gupwatch's live view driven through tmux, the
//! way a person uses it, inside a VM and from the host through
//! `gupwatch top --connect`.
//!
//! One guest boots (the newest kernel of the matrix) with tmux shipped in
//! its initramfs ([`crate::vm::guesttools`]) and two ports forwarded: the
//! metrics port of a `gupwatch run` daemon, and a release port where the
//! guest waits for the host (as in [`crate::e2e`]). Two pinning workloads
//! run under names of their own (symlinks to gupwatch, so their `comm`
//! differs): `zz-pinner` pins continuously, `aa-holder` registers one
//! io_uring buffer and holds it. Their names sort the other way round from
//! their rates, so a change of sort order is visible.
//!
//! * In the guest, a script starts `gupwatch top` (local probes) in a
//!   detached 80×24 tmux session, captures the pane, presses `s` (sort by
//!   PINS/s), five more `s` (sort by name), `i` (show idle rows), `i`
//!   again (hide them), `/zz-pin⏎` (filter), `q`, and captures after each; then it runs `gupwatch top --connect` in a second
//!   session and ends it with SIGTERM. The captures come back on stdout.
//! * At the same time, on the host, the same keys drive `gupwatch top
//!   --connect 127.0.0.1:PORT` in a tmux server of its own (`tmux -L`).
//!
//! All the judging happens here, on the host, from the captured screens
//! ([`judge`]): the header's numbers are real (non-zero, gupwatch's pin
//! rate close to the kernel's vmstat rate), the workload's row is there,
//! each sort orders the rows by its column, idle rows (no calls, nothing
//! held) are hidden until `i` shows them, the filter keeps only matching
//! rows, and after `q` or SIGTERM the terminal is back (the shell's output
//! shows, `stty -a` has `icanon` and `echo`, tmux says the alternate screen
//! is off and the cursor visible). A failed check quotes the screen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gup_report::SnapshotReport;

mod judge;
mod screen;
#[cfg(test)]
mod tests;

pub use judge::judge;
use screen::boxed;
pub use screen::{parse_captures, parse_header, parse_human, parse_rows, parse_title, Header, ProcRow, Title};

use crate::e2e::{free_port, http_get, release_guest, Check};
use crate::vm::kernels::BootKernel;
use crate::vm::{ConsoleEcho, Forward, VmOutcome, VmRun};
use crate::say;
use crate::util;

/// The daemon's port in the guest.
pub const GUEST_PORT: u16 = 10483;
/// Where the guest waits for the host to be done.
pub const GUEST_RELEASE_PORT: u16 = 10484;
/// The continuously pinning workload's name (its `comm`).
pub const PINNER: &str = "zz-pinner";
/// The workload that holds one registered buffer.
pub const HOLDER: &str = "aa-holder";
/// What the filter step types.
pub const FILTER: &str = "zz-pin";
/// The pane's size.
pub const COLS: u16 = 80;
/// The pane's size.
pub const ROWS: u16 = 24;
/// Longest wait for the daemon (boot and probe attach, under TCG).
const DAEMON_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for a screen to show what a step expects.
const SCREEN_DEADLINE: Duration = Duration::from_secs(90);
/// The VM time limit the test needs at least (boot, two probe attaches and
/// the key presses under TCG on a busy host).
pub const MIN_TIMEOUT_S: u64 = 420;
/// Time for the view to redraw after keys (and TCG to catch up).
const SETTLE: Duration = Duration::from_secs(2);

/// Options of the live-view test.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Kernel to boot.
    pub kernel: BootKernel,
    /// Static gupwatch, for the guest and for `top --connect` on the host.
    pub gupwatch: PathBuf,
    /// Time limit of the VM.
    pub timeout: Duration,
}

/// The outcome of a run that got as far as judging.
#[derive(Debug)]
pub struct LiveReport {
    /// Checks, in order (guest ones first).
    pub checks: Vec<Check>,
    /// Captured screens, `guest:<step>` and `host:<step>`.
    pub screens: BTreeMap<String, String>,
    /// Time from the VM's start to the guest script's end of the TUI part.
    pub guest_elapsed: Option<Duration>,
    /// Time the host's `top --connect` part took.
    pub host_elapsed: Option<Duration>,
    /// The whole run.
    pub elapsed: Duration,
}

/// The guest's script: the daemon, the in-guest tmux session, the
/// workloads, the key presses and captures, then the wait for the host.
pub fn guest_command(release_wait_s: u64) -> String {
    GUEST_SCRIPT
        .replace("@SERVE@", &crate::vm::serve_and_wait_sh("live", GUEST_PORT))
        .replace("@REDUCED@", &crate::reducedcheck::guest_part())
        .replace("@PORT@", &GUEST_PORT.to_string())
        .replace("@RELEASE@", &GUEST_RELEASE_PORT.to_string())
        .replace("@WAIT@", &release_wait_s.to_string())
        .replace("@PINNER@", PINNER)
        .replace("@HOLDER@", HOLDER)
        .replace("@FILTER@", FILTER)
        .replace("@COLS@", &COLS.to_string())
        .replace("@ROWS@", &ROWS.to_string())
}

const GUEST_SCRIPT: &str = r#"up() { cut -d' ' -f1 /proc/uptime; }
# tmux's client refuses init's TERM=dumb even for detached sessions; the
# terminfo entry of this one is shipped.
export TERM=xterm-256color
T="tmux -u -f /dev/null"
cap() { echo "@@capture $1@@"; $T capture-pane -p -t "$2"; echo "@@end $1@@"; }
state() {
    echo "@@capture $1@@"
    $T display-message -p -t "$2" 'alternate_on=#{alternate_on} cursor_flag=#{cursor_flag} pane_dead=#{pane_dead}'
    echo "@@end $1@@"
}
# waitfor SESSION TEXT SECONDS: until the pane shows TEXT.
waitfor() {
    i=0
    while ! $T capture-pane -p -t "$1" 2>/dev/null | grep -q -- "$2"; do
        i=$((i+1)); [ $i -gt "$3" ] && { echo "live: $1 never showed '$2' in $3 s" >&2; return 1; }
        sleep 1
    done
}
@SERVE@ln -s /bin/gupwatch /tmp/@PINNER@
ln -s /bin/gupwatch /tmp/@HOLDER@
$T new-session -d -s tui -x @COLS@ -y @ROWS@ sh -c 'gupwatch top; echo RESTORED:$?; stty -a; exec sleep 100000'
waitfor tui ' hooks ' 240 || cap attach tui
echo "live: the in-guest live view has its probes ($(up) s)" >&2
# The workloads start after both viewers attached, so the holder's pin is seen.
/tmp/@PINNER@ workload --seconds 1800 --scratch /mnt/scratch 2>/tmp/pinner.err &
W1=$!
/tmp/@HOLDER@ workload --hold 1800 --scratch /mnt/scratch 2>/tmp/holder.err &
W2=$!
waitfor tui @PINNER@ 120 && waitfor tui @HOLDER@ 60
# Two more readings, so the rates are over an interval of steady work.
sleep 3
cap initial tui
$T send-keys -t tui s
sleep 2
cap sort-pins tui
$T send-keys -t tui s s s s s
sleep 2
cap sort-name tui
$T send-keys -t tui i
sleep 2
cap show-idle tui
$T send-keys -t tui i
sleep 2
cap hide-idle tui
$T send-keys -t tui -l /
$T send-keys -t tui -l @FILTER@
$T send-keys -t tui Enter
sleep 2
cap filter tui
$T send-keys -t tui q
waitfor tui RESTORED: 30
sleep 1
cap quit tui
state quit-state tui
# SIGTERM: the inner shell writes its pid and becomes gupwatch.
$T new-session -d -s term -x @COLS@ -y @ROWS@ sh -c 'sh -c "echo \$\$ > /tmp/term.pid; exec gupwatch top --connect 127.0.0.1:@PORT@"; echo RESTORED:$?; stty -a; exec sleep 100000'
waitfor term @PINNER@ 90
cap sigterm-before term
kill -TERM "$(cat /tmp/term.pid)"
waitfor term RESTORED: 30
sleep 1
cap sigterm term
state sigterm-state term
@REDUCED@echo "@@guest-done:$(up)@@"
echo "live: guest part done ($(up) s); waiting for the host (at most @WAIT@ s)" >&2
echo ready | timeout @WAIT@ nc -l -p @RELEASE@ >/dev/null 2>&1
rel=$?
$T kill-server 2>/dev/null
kill $W1 $W2 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
wait
echo "live: released (nc status $rel); gupwatch run exited with status $st ($(up) s)" >&2
cat /tmp/pinner.err /tmp/holder.err >&2
if [ $st -ne 0 ]; then cat /tmp/run.err >&2; fi
exit $st
"#;

// ---------------------------------------------------------------------------
// The host

/// A tmux server of our own (`tmux -L NAME`), killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A fresh private server name (nothing starts until a session does).
    pub fn new() -> Result<Tmux> {
        if !util::have_program("tmux") {
            bail!("tmux is not installed: run `cargo xtask setup` (installs the Debian package tmux)");
        }
        Ok(Tmux { socket: format!("gupwatch-live-{}", &util::nonce()[..10]) })
    }

    /// Runs `tmux -L <ours> ARGS` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-u", "-f", "/dev/null"])
            .args(args)
            // tmux refuses to start without a UTF-8 locale; and a tmux we
            // are run from must not be the one we talk to.
            .env("LC_ALL", "C.UTF-8")
            // Whatever terminal (or none) xtask runs in: tmux's client
            // refuses TERM=dumb even for detached sessions.
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .output()
            .context("running tmux")?;
        if !out.status.success() {
            bail!("tmux {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pane's text.
    pub fn capture(&self, target: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", target])
    }

    /// Waits until the pane shows `text`; on time-out the error quotes it.
    pub fn wait_for(&self, target: &str, text: &str, within: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let s = self.capture(target).unwrap_or_default();
            if s.contains(text) {
                return Ok(s);
            }
            if util::interrupted() {
                return Err(anyhow!(util::Interrupted));
            }
            if t.elapsed() > within {
                bail!("the pane never showed {text:?} within {} s; it shows:{}", within.as_secs(), boxed(&s));
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn state(&self, target: &str) -> Result<String> {
        self.run(&["display-message", "-p", "-t", target, "alternate_on=#{alternate_on} cursor_flag=#{cursor_flag} pane_dead=#{pane_dead}"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .env_remove("TMUX")
            .stderr(std::process::Stdio::null())
            .status();
        // kill-server leaves the socket file behind; it is where tmux(1)
        // says -L puts it.
        let dir = std::env::var_os("TMUX_TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        // SAFETY: getuid(2) cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(dir.join(format!("tmux-{uid}")).join(&self.socket));
    }
}

/// Whether a snapshot names a process, among the top processes or the
/// attribution rows (the places the live view shows it).
fn lists(doc: &SnapshotReport, comm: &str) -> bool {
    doc.top_processes.iter().any(|p| p.comm == comm) || doc.callers.iter().flatten().any(|c| c.comm == comm)
}

/// Waits until the daemon's snapshot lists both workloads.
fn wait_for_workloads(port: u16, vm: &thread::JoinHandle<Result<VmOutcome>>, started: Instant) -> Result<()> {
    loop {
        if util::interrupted() {
            return Err(anyhow!(util::Interrupted));
        }
        if vm.is_finished() {
            bail!("the VM ended before its daemon listed the workloads");
        }
        if started.elapsed() > DAEMON_DEADLINE {
            bail!("the daemon did not list {PINNER} and {HOLDER} within {} s of the VM's start", DAEMON_DEADLINE.as_secs());
        }
        if let Ok((200, body)) = http_get(port, "/api/snapshot?callers=1", Duration::from_secs(10)) {
            // A document that does not parse yet is retried like a refused
            // connection: the deadline above bounds the wait.
            if serde_json::from_slice::<SnapshotReport>(&body).is_ok_and(|doc| lists(&doc, PINNER) && lists(&doc, HOLDER)) {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// The host's part: `gupwatch top --connect` in a private tmux server,
/// the same keys as in the guest. Returns the captures, by step.
fn host_part(gupwatch: &Path, addr: &str) -> Result<BTreeMap<String, String>> {
    let tmux = Tmux::new()?;
    let mut caps = BTreeMap::new();
    let gw = gupwatch.to_string_lossy().to_string();
    let (cols, rows) = (COLS.to_string(), ROWS.to_string());
    tmux.run(&[
        "new-session", "-d", "-s", "tui", "-x", &cols, "-y", &rows, "sh", "-c",
        r#""$0" top --connect "$1"; echo RESTORED:$?; stty -a; exec sleep 100000"#, &gw, addr,
    ])?;
    tmux.wait_for("tui", PINNER, SCREEN_DEADLINE)?;
    tmux.wait_for("tui", HOLDER, SCREEN_DEADLINE)?;
    thread::sleep(Duration::from_secs(3));
    caps.insert("initial".into(), tmux.capture("tui")?);
    let step = |name: &str, keys: &[&[&str]], caps: &mut BTreeMap<String, String>| -> Result<()> {
        for k in keys {
            let mut args = vec!["send-keys", "-t", "tui"];
            args.extend_from_slice(k);
            tmux.run(&args)?;
        }
        thread::sleep(SETTLE);
        caps.insert(name.into(), tmux.capture("tui")?);
        Ok(())
    };
    step("sort-pins", &[&["s"]], &mut caps)?;
    step("sort-name", &[&["s", "s", "s", "s", "s"]], &mut caps)?;
    step("show-idle", &[&["i"]], &mut caps)?;
    step("hide-idle", &[&["i"]], &mut caps)?;
    step("filter", &[&["-l", "/"], &["-l", FILTER], &["Enter"]], &mut caps)?;
    tmux.run(&["send-keys", "-t", "tui", "q"])?;
    let _ = tmux.wait_for("tui", "RESTORED:", Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    caps.insert("quit".into(), tmux.capture("tui")?);
    caps.insert("quit-state".into(), tmux.state("tui")?);

    let pidfile = util::target_dir().join(format!("live-term-{}.pid", &util::nonce()[..8]));
    let pf = pidfile.to_string_lossy().to_string();
    tmux.run(&[
        "new-session", "-d", "-s", "term", "-x", &cols, "-y", &rows, "sh", "-c",
        r#"sh -c 'echo $$ > "$0"; exec "$1" top --connect "$2"' "$0" "$1" "$2"; echo RESTORED:$?; stty -a; exec sleep 100000"#,
        &pf, &gw, addr,
    ])?;
    tmux.wait_for("term", PINNER, SCREEN_DEADLINE)?;
    caps.insert("sigterm-before".into(), tmux.capture("term")?);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .parse()
        .context("the pid file holds no pid")?;
    let _ = std::fs::remove_file(&pidfile);
    // SAFETY: kill(2) on the gupwatch we started (the shell exec'd it).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let _ = tmux.wait_for("term", "RESTORED:", Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    caps.insert("sigterm".into(), tmux.capture("term")?);
    caps.insert("sigterm-state".into(), tmux.state("term")?);
    Ok(caps)
}

/// Runs the test. `Err` means it could not run at all; otherwise every
/// check is in the report.
pub fn run(o: &LiveOptions) -> Result<LiveReport> {
    let started = Instant::now();
    // Checked now rather than after the boot.
    let _ = Tmux::new()?;
    let port = free_port()?;
    let release_port = free_port()?;
    let _guard = util::guest_active();
    let release_wait = o.timeout.as_secs().saturating_sub(30).max(60);
    let mut vm_run = VmRun::new(o.kernel.clone(), guest_command(release_wait));
    vm_run.gupwatch = Some(o.gupwatch.clone());
    vm_run.timeout = o.timeout;
    vm_run.tmux = true;
    vm_run.forwards = vec![
        Forward { host: port, guest: GUEST_PORT },
        Forward { host: release_port, guest: GUEST_RELEASE_PORT },
    ];
    vm_run.captured(ConsoleEcho::None, "live");
    say!("live", "guest daemon port {GUEST_PORT} -> 127.0.0.1:{port}; release port -> 127.0.0.1:{release_port}");
    let vm = thread::spawn(move || vm_run.run());

    let addr = format!("127.0.0.1:{port}");
    let host = wait_for_workloads(port, &vm, started).and_then(|()| {
        say!("live", "the daemon lists the workloads ({:.0} s); driving `gupwatch top --connect {addr}` in tmux", started.elapsed().as_secs_f64());
        let t = Instant::now();
        host_part(&o.gupwatch, &addr).map(|c| (c, t.elapsed()))
    });
    if host.is_ok() {
        say!("live", "host part done; waiting for the guest's part");
    }
    // The guest's part must end before it is released; the release wait
    // in release_guest is bounded by the VM's own time limit.
    let released = release_guest(release_port, &vm, o.timeout);
    if !released && !vm.is_finished() {
        say!("live", "the guest did not take the release; waiting for its time limit");
    }
    let vm_result = vm.join().map_err(|_| anyhow!("the VM thread panicked"))?;
    if util::interrupted() {
        return Err(anyhow!(util::Interrupted));
    }

    let mut checks = vec![];
    let mut screens = BTreeMap::new();
    let mut guest_elapsed = None;
    match &vm_result {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let caps = parse_captures(&stdout);
            guest_elapsed = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("@@guest-done:")?.strip_suffix("@@")?.parse::<f64>().ok())
                .map(Duration::from_secs_f64);
            checks.extend(judge("guest", "local", &caps));
            checks.extend(crate::reducedcheck::judge(&caps));
            checks.push(Check {
                name: "guest: the daemon and workloads ended cleanly".into(),
                expr: None,
                ok: out.status == 0,
                detail: format!(
                    "exit status {} (3: gupwatch run never served); {} s in all ({}); console log: {}",
                    out.status,
                    out.elapsed.as_secs(),
                    out.accel,
                    out.console_log.display()
                ),
            });
            screens.extend(caps.into_iter().map(|(k, v)| (format!("guest:{k}"), v)));
        }
        Err(e) => checks.push(Check { name: "guest: VM run".into(), expr: None, ok: false, detail: format!("{e:#}") }),
    }
    let mut host_elapsed = None;
    match host {
        Ok((caps, took)) => {
            host_elapsed = Some(took);
            checks.extend(judge("host", &addr, &caps));
            screens.extend(caps.into_iter().map(|(k, v)| (format!("host:{k}"), v)));
        }
        Err(e) => {
            if e.downcast_ref::<util::Interrupted>().is_some() {
                return Err(e);
            }
            checks.push(Check { name: "host: top --connect in tmux".into(), expr: None, ok: false, detail: format!("{e:#}") });
        }
    }
    Ok(LiveReport { checks, screens, guest_elapsed, host_elapsed, elapsed: started.elapsed() })
}

/// One line with the time each part took.
pub fn timing(r: &LiveReport) -> String {
    let secs = |d: Option<Duration>| d.map_or_else(|| "-".to_string(), |d| format!("{:.0} s", d.as_secs_f64()));
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    format!(
        "live view: {} of {} checks passed; guest part done {} after boot, host part (top --connect) {}, {:.0} s in all",
        r.checks.len() - failed,
        r.checks.len(),
        secs(r.guest_elapsed),
        secs(r.host_elapsed),
        r.elapsed.as_secs_f64()
    )
}

/// The first screens of each side, for the log.
pub fn render_screens(r: &LiveReport) -> String {
    let mut out = String::new();
    for key in ["guest:initial", "host:initial"] {
        if let Some(s) = r.screens.get(key) {
            let _ = writeln!(out, "  {key}:{}", boxed(s));
        }
    }
    out
}

