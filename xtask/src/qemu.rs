//! Running one command in a throwaway QEMU guest on a real kernel.
//!
//! The guest has two serial ports: ttyS0 is the console (kernel log, the
//! command's stderr, init's markers) and reaches the host through qemu's
//! stdout; ttyS1 carries only the command's stdout and is written by qemu to
//! a file that the host streams. Keeping them apart is what lets
//! `cargo xtask vm -- gupwatch check --json > out.json` produce clean JSON.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::guesttools;
use crate::initramfs::{self, InitOptions, Markers};
use crate::kernels::BootKernel;
use crate::modules;
use crate::say;
use crate::util;

/// How long a KVM guest may take to reach /init before it is declared stuck.
const KVM_START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a KVM failure is remembered, so later runs go straight to TCG.
const KVM_VERDICT_TTL: u64 = 24 * 3600;
/// How long to wait for qemu to exit after the guest printed its exit marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// How long a guest may go on after a serious kernel problem (oops, lockup,
/// stall) before it is stopped: enough for the rest of the report to reach
/// the log, without waiting for the timeout of a wedged guest.
const PROBLEM_GRACE: Duration = Duration::from_secs(10);
/// Size of the guest's scratch disk (sparse on the host).
const SCRATCH_BYTES: u64 = 512 * 1024 * 1024;

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg -cpu max`): slow, but works everywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// A TCP port forwarded from the host's loopback into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Port on 127.0.0.1 of the host.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

impl FromStr for Forward {
    type Err = anyhow::Error;

    /// `HOSTPORT:GUESTPORT` or `127.0.0.1:HOSTPORT:GUESTPORT`.
    fn from_str(s: &str) -> Result<Forward> {
        let parts: Vec<&str> = s.split(':').collect();
        let (addr, host, guest) = match parts.as_slice() {
            [h, g] => (None, *h, *g),
            [a, h, g] => (Some(*a), *h, *g),
            _ => bail!("bad --forward `{s}`: expected HOSTPORT:GUESTPORT (e.g. 19483:9483)"),
        };
        if let Some(a) = addr {
            if !(a == "localhost" || a.starts_with("127.")) {
                bail!("bad --forward `{s}`: only the host's loopback (127.0.0.1) may be forwarded");
            }
        }
        let port = |p: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => bail!("bad --forward `{s}`: `{p}` is not a TCP port (1-65535)"),
                Ok(n) => Ok(n),
            }
        };
        Ok(Forward {
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

/// What of the guest console to copy to the host's stderr while it runs
/// (the full console always goes to the log file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEcho {
    /// Everything, from the first kernel line.
    All,
    /// From the moment /init starts (skips the boot log).
    AfterInit,
    /// Nothing.
    None,
}

/// One command to run in a fresh guest.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// Kernel to boot.
    pub kernel: BootKernel,
    /// Shell command run by `sh -c` in the guest.
    pub command: String,
    /// Static gupwatch to install as /bin/gupwatch.
    pub gupwatch: Option<PathBuf>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Wall-clock limit for the whole run.
    pub timeout: Duration,
    /// Host-loopback ports to forward into the guest.
    pub forwards: Vec<Forward>,
    /// Modules to load on top of [`modules::GUEST_MODULES`].
    pub extra_modules: Vec<String>,
    /// Modules shipped in the initramfs (with their dependencies) but not
    /// loaded at boot: the command loads them with
    /// `gupwatch-load-deferred` (to test what happens when a module
    /// appears while gupwatch runs).
    pub deferred_modules: Vec<String>,
    /// Console echo on the host's stderr.
    pub echo: ConsoleEcho,
    /// Copy the command's stdout to the host's stdout as it arrives.
    pub stream_stdout: bool,
    /// Tag of progress lines.
    pub tag: String,
    /// Ship the host's tmux (with its libraries, a UTF-8 locale and
    /// terminfo) as /usr/bin/tmux.
    pub tmux: bool,
    /// Extra kernel command-line arguments (GUPWATCH_VM_APPEND adds more).
    pub kernel_args: Vec<String>,
    /// More files to put into the guest.
    pub files: Vec<initramfs::GuestFile>,
    /// Run the guest on QEMU's instruction-counting clock
    /// ([`ICOUNT_ARGS`]): TCG only (KVM has no such clock), so guest time
    /// is instructions executed and host load does not move it.
    pub icount: bool,
    /// Give the guest what gupwatch's `vfio_` scenarios need: a q35
    /// machine with QEMU's emulated IOMMU (`intel_iommu=on`), its PCI test
    /// device to bind to vfio-pci, and the VFIO modules ([`VFIO_MODULES`]).
    pub vfio: bool,
}

/// Modules a [`VmRun::vfio`] guest loads.
pub const VFIO_MODULES: [&str; 2] = ["vfio_iommu_type1", "vfio_pci"];

/// QEMU's deterministic clock: one guest nanosecond per instruction
/// (`shift=0`). `sleep=on` keeps QEMU's default for an idle guest (the clock
/// follows the host while every vCPU halts) so that guest timeouts on the
/// host's network and disk stay meaningful; a measured run keeps a vCPU busy,
/// so inside it time is instructions only.
pub const ICOUNT_ARGS: [&str; 2] = ["-icount", "shift=0,sleep=on"];

/// Guest shell lines that start `gupwatch run` on `port` in the background
/// (`$RUN` is its pid, stderr in /tmp/run.err) and wait until /healthz
/// answers; if it dies or takes over two minutes, they print `TAG: gupwatch
/// run did not start serving` with its stderr and exit 3. The script must
/// define `up()` (seconds since boot).
pub fn serve_and_wait_sh(tag: &str, port: u16) -> String {
    format!(
        r#"gupwatch run --listen 0.0.0.0:{port} 2>/tmp/run.err &
RUN=$!
i=0
# (busybox 1.35's wget -T crashes: timeout(1) bounds it instead.)
while ! timeout 5 wget -q -O /dev/null http://127.0.0.1:{port}/healthz 2>/dev/null; do
    i=$((i+1))
    if [ $i -gt 240 ] || ! kill -0 $RUN 2>/dev/null; then
        echo "{tag}: gupwatch run did not start serving" >&2; cat /tmp/run.err >&2; exit 3
    fi
    sleep 0.5
done
echo "{tag}: gupwatch run serving ($(up) s after boot)" >&2
"#
    )
}

impl VmRun {
    /// A run with the defaults of `cargo xtask vm`.
    pub fn new(kernel: BootKernel, command: impl Into<String>) -> VmRun {
        VmRun {
            kernel,
            command: command.into(),
            gupwatch: None,
            memory_mib: 1024,
            cpus: 2,
            timeout: Duration::from_secs(600),
            forwards: Vec::new(),
            extra_modules: Vec::new(),
            deferred_modules: Vec::new(),
            echo: ConsoleEcho::All,
            stream_stdout: true,
            tag: "vm".into(),
            tmux: false,
            kernel_args: Vec::new(),
            files: Vec::new(),
            icount: false,
            vfio: false,
        }
    }
}

/// The result of a guest that ran its command to the end.
#[derive(Debug)]
pub struct VmOutcome {
    /// The command's exit status in the guest.
    pub status: i32,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// The full console log on the host.
    pub console_log: PathBuf,
    /// The accelerator that ran it.
    pub accel: Accel,
    /// From qemu's start to /init's first line.
    pub boot_time: Option<Duration>,
    /// From qemu's start to its exit.
    pub elapsed: Duration,
    /// Modules loaded in the guest, in order.
    pub modules: Vec<String>,
}

/// A kernel console line that means the run must fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which pattern matched.
    pub kind: &'static str,
    /// The console line.
    pub line: String,
}

const PROBLEM_PATTERNS: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("WARNING:", "kernel WARNING"),
    ("BUG:", "kernel BUG"),
    ("soft lockup", "soft lockup"),
    ("hard LOCKUP", "hard lockup"),
    ("self-detected stall", "RCU stall"),
    ("detected stalls on CPU", "RCU stall"),
    ("RCU stall", "RCU stall"),
    ("Oops", "kernel Oops"),
    ("general protection fault", "general protection fault"),
    ("blocked for more than", "hung task"),
];

/// The message part of a kernel console line (`[    1.234567] text`), or
/// `None` for lines that do not come from printk. Only kernel lines are
/// checked for problems, so a command printing "WARNING:" on stderr does not
/// fail the run.
pub fn kernel_message(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = line[from..].find('[') {
        let start = from + i;
        let rest = &line[start + 1..];
        let trimmed = rest.trim_start_matches(' ');
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        let after = &trimmed[digits..];
        if digits > 0 {
            if let Some(frac) = after.strip_prefix('.') {
                let fd = frac.bytes().take_while(u8::is_ascii_digit).count();
                if fd > 0 {
                    if let Some(msg) = frac[fd..].strip_prefix(']') {
                        return Some(msg.strip_prefix(' ').unwrap_or(msg));
                    }
                }
            }
        }
        from = start + 1;
    }
    None
}

/// Which problem, if any, a console line reports.
pub fn kernel_problem(line: &str) -> Option<&'static str> {
    let msg = kernel_message(line)?;
    PROBLEM_PATTERNS
        .iter()
        .find(|(p, _)| msg.contains(p))
        .map(|(_, kind)| *kind)
}

/// Removes carriage returns and terminal escape sequences (SeaBIOS clears
/// the screen, which would wipe the user's terminal when echoed).
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            // CSI sequences run to a final byte in '@'..='~'; other escapes
            // (such as ESC c, reset) are two characters long.
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits the console stream into lines and watches for markers and
/// kernel problems.
#[derive(Debug)]
pub struct ConsoleScanner {
    markers: Markers,
    partial: Vec<u8>,
    /// /init has printed its start marker.
    pub started: bool,
    /// The command's exit status, once the exit marker was seen.
    pub exit: Option<i32>,
    /// Kernel problems seen so far.
    pub problems: Vec<Problem>,
    tail: VecDeque<String>,
}

impl ConsoleScanner {
    /// A scanner for one run's markers.
    pub fn new(markers: Markers) -> Self {
        ConsoleScanner {
            markers,
            partial: Vec::new(),
            started: false,
            exit: None,
            problems: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    /// Feeds raw console bytes; returns the complete lines they finished
    /// (without line terminators).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let raw = std::mem::take(&mut self.partial);
                lines.push(self.line(&raw));
            } else {
                self.partial.push(b);
            }
        }
        lines
    }

    /// Flushes an unterminated last line.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let raw = std::mem::take(&mut self.partial);
        Some(self.line(&raw))
    }

    fn line(&mut self, raw: &[u8]) -> String {
        let text = strip_escapes(&String::from_utf8_lossy(raw));
        if text.contains(&self.markers.start) {
            self.started = true;
        }
        if let Some(status) = self.markers.exit_status(&text) {
            self.exit = Some(status);
        }
        if let Some(kind) = kernel_problem(&text) {
            self.problems.push(Problem {
                kind,
                line: text.clone(),
            });
        }
        self.tail.push_back(text.clone());
        if self.tail.len() > 25 {
            self.tail.pop_front();
        }
        text
    }

    /// The last console lines, for error messages.
    pub fn tail(&self) -> String {
        self.tail.iter().map(|l| format!("    | {l}\n")).collect()
    }
}

/// A run's temporary directory under target/vm, removed when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("GUPWATCH_VM_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

enum AttemptError {
    /// KVM did not get the guest to /init; TCG may.
    KvmFailed(String),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for AttemptError {
    fn from(e: anyhow::Error) -> Self {
        AttemptError::Fatal(e)
    }
}

struct Attempt {
    status: i32,
    stdout: Vec<u8>,
    boot_time: Option<Duration>,
    elapsed: Duration,
}

impl VmRun {
    /// Boots the guest, runs the command and returns its status and stdout.
    ///
    /// Fails (naming the console line and the log file) when the kernel
    /// reports a problem, on timeout, and when the guest never reports the
    /// command's exit status. A command that exits non-zero is *not* an
    /// error here: see [`VmOutcome::status`].
    pub fn run(&self) -> Result<VmOutcome> {
        let tag = self.tag.as_str();
        if !util::have_program("qemu-system-x86_64") {
            bail!("qemu-system-x86_64 is not installed: run `cargo xtask setup` (installs qemu-system-x86)");
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox is missing: run `cargo xtask setup` (installs busybox-static)");
        }
        if !self.kernel.vmlinuz.is_file() {
            bail!(
                "kernel image {} does not exist",
                self.kernel.vmlinuz.display()
            );
        }
        let stamp = util::timestamp();
        let target = util::target_dir();
        let work = WorkDir(target.join("vm").join(format!(
            "{}-{stamp}-{}",
            self.kernel.label,
            &util::nonce()[..8]
        )));
        fs::create_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
        let log_dir = target.join("vm-logs");
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let (log_path, log) = create_log(&log_dir, &self.kernel.label, &stamp)?;
        let log = Arc::new(Mutex::new(log));

        // Modules, resolved against this kernel's tree.
        let mut extra_modules = self.extra_modules.clone();
        if self.vfio {
            extra_modules.extend(VFIO_MODULES.iter().map(|m| m.to_string()));
        }
        let resolved =
            modules::resolve_for_guest(self.kernel.modules_dir.as_deref(), &extra_modules)
                .with_context(|| format!("collecting kernel modules for {}", self.kernel.label))?;
        let deferred = if self.deferred_modules.is_empty() {
            vec![]
        } else {
            modules::resolve_deferred(
                self.kernel.modules_dir.as_deref(),
                &extra_modules,
                &self.deferred_modules,
                &resolved,
            )
            .with_context(|| format!("collecting deferred kernel modules for {}", self.kernel.label))?
        };
        if !deferred.is_empty() {
            say!(
                tag,
                "shipping {} module(s) to load later with gupwatch-load-deferred: {}",
                deferred.len(),
                deferred.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(" ")
            );
        }
        let names: Vec<String> = resolved.modules.iter().map(|m| m.name.clone()).collect();
        say!(
            tag,
            "kernel {}{}: loading {} module(s): {}{}{}",
            self.kernel.label,
            self.kernel
                .uname
                .as_ref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default(),
            names.len(),
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(" ")
            },
            if resolved.builtin.is_empty() {
                String::new()
            } else {
                format!("; built in: {}", resolved.builtin.join(" "))
            },
            if resolved.missing.is_empty() {
                String::new()
            } else {
                format!("; not available: {}", resolved.missing.join(" "))
            },
        );

        let markers = Markers::new(&util::nonce());
        let init = initramfs::init_script(&InitOptions {
            markers: &markers,
            network: !self.forwards.is_empty(),
            stdout_tty: "/dev/ttyS1",
            // Shortly before the host gives up (the guest's clock starts a
            // few seconds after qemu's).
            stall_report_after: self.timeout.as_secs().checked_sub(15).filter(|s| *s >= 15),
        });
        let mut extra = if self.tmux {
            guesttools::tmux_bundle().context("shipping tmux into the guest")?
        } else {
            Vec::new()
        };
        extra.extend(self.files.iter().cloned());
        let cpio = initramfs::path_in(&work.0);
        initramfs::write(
            &initramfs::Contents {
                busybox,
                gupwatch: self.gupwatch.as_deref(),
                modules: &resolved.modules,
                deferred: &deferred,
                init: &init,
                command: &self.command,
                extra: &extra,
            },
            &cpio,
        )?;

        let _guard = util::guest_active();
        let mut accels = if self.icount {
            // Only TCG counts instructions.
            vec![Accel::Tcg]
        } else {
            choose_accels(tag)?
        };
        loop {
            let accel = accels.remove(0);
            let fallback = !accels.is_empty();
            match self.attempt(accel, &work.0, &cpio, &log, &log_path, &markers) {
                Ok(a) => {
                    if accel == Accel::Kvm {
                        remember_kvm(true);
                    }
                    return Ok(VmOutcome {
                        status: a.status,
                        stdout: a.stdout,
                        console_log: log_path,
                        accel,
                        boot_time: a.boot_time,
                        elapsed: a.elapsed,
                        modules: names,
                    });
                }
                Err(AttemptError::KvmFailed(why)) if fallback => {
                    remember_kvm(false);
                    say!(
                        tag,
                        "KVM did not work ({why}); retrying with TCG (emulation, slower)"
                    );
                    log_note(
                        &log,
                        &format!("==== KVM failed ({why}); retrying with TCG ===="),
                    );
                }
                Err(AttemptError::KvmFailed(why)) => {
                    bail!(
                        "the guest did not boot with KVM: {why} (GUPWATCH_VM_ACCEL=kvm forbids falling back; unset it or set it to tcg); full console log: {}",
                        log_path.display()
                    )
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
            }
        }
    }

    fn qemu_command(
        &self,
        accel: Accel,
        work: &Path,
        cpio: &Path,
        disk: &Path,
        stdout_file: &Path,
    ) -> Result<Command> {
        for p in [work, cpio, disk, stdout_file, self.kernel.vmlinuz.as_path()] {
            if p.to_string_lossy().contains(',') {
                bail!("path {} contains a comma, which qemu's option syntax cannot take; use another target directory", p.display());
            }
        }
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-nographic",
            "-no-reboot",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-parallel",
            "none",
        ]);
        c.arg("-m").arg(self.memory_mib.to_string());
        c.arg("-smp").arg(self.cpus.to_string());
        match accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            // One host thread for all vCPUs: with multi-threaded TCG, QEMU
            // 7.2 lets a vCPU run stale translations of kernel text that
            // another vCPU just patched (text_poke_bp), which shows up as
            // spurious "Oops: int3" or soft lockups whenever the kernel flips
            // static keys or attaches probes: exactly what gupwatch does.
            Accel::Tcg => c.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        };
        if self.icount && accel == Accel::Tcg {
            // GUPWATCH_VM_ICOUNT replaces the -icount options, to try
            // others (sleep=off) without a rebuild.
            match std::env::var("GUPWATCH_VM_ICOUNT") {
                Ok(opts) if !opts.trim().is_empty() => c.args([ICOUNT_ARGS[0], opts.trim()]),
                _ => c.args(ICOUNT_ARGS),
            };
        }
        if self.vfio {
            c.args(["-machine", "q35", "-device", "intel-iommu", "-device", "pci-testdev"]);
        }
        c.arg("-kernel").arg(&self.kernel.vmlinuz);
        c.arg("-initrd").arg(cpio);
        let mut append = String::from("console=ttyS0 panic=-1 printk.time=1 rdinit=/init");
        if self.vfio {
            append.push_str(" intel_iommu=on");
        }
        for a in &self.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        if let Ok(extra) = std::env::var("GUPWATCH_VM_APPEND") {
            append.push(' ');
            append.push_str(&extra);
        }
        c.arg("-append").arg(append);
        c.args(["-serial", "stdio"]);
        c.arg("-serial")
            .arg(format!("file:{}", stdout_file.display()));
        c.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            disk.display()
        ));
        if self.forwards.is_empty() {
            c.args(["-nic", "none"]);
        } else {
            let mut netdev = String::from("user,id=net0");
            for f in &self.forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
            }
            c.arg("-netdev").arg(netdev);
            c.args(["-device", "virtio-net-pci,netdev=net0"]);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group: the terminal's Ctrl-C reaches us, not qemu, so
        // we decide how the guest ends and clean up after it.
        c.process_group(0);
        Ok(c)
    }

    fn attempt(
        &self,
        accel: Accel,
        work: &Path,
        cpio: &Path,
        log: &Arc<Mutex<File>>,
        log_path: &Path,
        markers: &Markers,
    ) -> std::result::Result<Attempt, AttemptError> {
        let tag = self.tag.as_str();
        let disk = work.join("scratch.img");
        make_scratch_disk(&disk)?;
        let stdout_file = work.join("stdout.serial");
        File::create(&stdout_file)
            .with_context(|| format!("creating {}", stdout_file.display()))?;
        let mut stdout_reader =
            File::open(&stdout_file).context("opening the guest stdout file")?;

        let mut cmd = self.qemu_command(accel, work, cpio, &disk, &stdout_file)?;
        log_note(
            log,
            &format!("==== {} ({accel}) ====", util::display_cmd(&cmd)),
        );
        say!(
            tag,
            "booting {} with {accel} ({} MiB, {} CPUs, timeout {} s); console log: {}",
            self.kernel.label,
            self.memory_mib,
            self.cpus,
            self.timeout.as_secs(),
            log_path.display()
        );
        let start = Instant::now();
        let mut child = cmd.spawn().context(
            "starting qemu-system-x86_64 (run `cargo xtask setup` to install qemu-system-x86)",
        )?;

        let scanner = Arc::new(Mutex::new(ConsoleScanner::new(markers.clone())));
        let started_at: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
        let console_thread = {
            let out = child.stdout.take();
            let scanner = Arc::clone(&scanner);
            let log = Arc::clone(log);
            let echo = self.echo;
            let started_at = Arc::clone(&started_at);
            thread::spawn(move || {
                let Some(mut out) = out else { return };
                let mut buf = [0u8; 4096];
                let mut echoing = echo == ConsoleEcho::All;
                loop {
                    let n = match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let (lines, now_started) = match scanner.lock() {
                        Ok(mut s) => {
                            let l = s.feed(&buf[..n]);
                            (l, s.started)
                        }
                        Err(_) => break,
                    };
                    if now_started {
                        if let Ok(mut t) = started_at.lock() {
                            t.get_or_insert_with(|| start.elapsed());
                        }
                    }
                    write_lines(&log, &lines, &mut echoing, echo, now_started);
                }
                let last = scanner.lock().ok().and_then(|mut s| s.finish());
                if let Some(l) = last {
                    write_lines(&log, &[l], &mut echoing, echo, true);
                }
            })
        };
        let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let err = child.stderr.take();
            let lines = Arc::clone(&stderr_lines);
            let log = Arc::clone(log);
            let echo = self.echo != ConsoleEcho::None;
            thread::spawn(move || {
                let Some(mut err) = err else { return };
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                for l in text.lines().filter(|l| !l.trim().is_empty()) {
                    if echo {
                        eprintln!("[qemu] {l}");
                    }
                    log_note(&log, &format!("[qemu stderr] {l}"));
                    if let Ok(mut v) = lines.lock() {
                        v.push(l.to_string());
                    }
                }
            })
        };

        let mut stdout_bytes = Vec::new();
        let mut exit_seen_at: Option<Instant> = None;
        let mut problem_seen_at: Option<Instant> = None;
        let mut timed_out = false;
        let mut kvm_stuck = false;
        let mut interrupted = false;
        let status: ExitStatus = loop {
            self.pump_stdout(&mut stdout_reader, &mut stdout_bytes);
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    kill(&mut child);
                    return Err(AttemptError::Fatal(anyhow!(e).context("waiting for qemu")));
                }
            }
            let (started, exited, serious) = scanner
                .lock()
                .map(|s| {
                    (
                        s.started,
                        s.exit.is_some(),
                        s.problems.iter().any(|p| p.kind != "kernel WARNING"),
                    )
                })
                .unwrap_or((false, false, false));
            if util::interrupted() {
                interrupted = true;
                break kill(&mut child);
            }
            if accel == Accel::Kvm && !started && start.elapsed() > KVM_START_DEADLINE {
                kvm_stuck = true;
                break kill(&mut child);
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                break kill(&mut child);
            }
            if serious {
                let t = *problem_seen_at.get_or_insert_with(Instant::now);
                if t.elapsed() > PROBLEM_GRACE {
                    say!(
                        tag,
                        "the guest kernel reported a serious problem; stopping qemu"
                    );
                    break kill(&mut child);
                }
            }
            if exited {
                let t = *exit_seen_at.get_or_insert_with(Instant::now);
                if t.elapsed() > POWEROFF_GRACE {
                    say!(
                        tag,
                        "the guest did not power off after its command ended; stopping qemu"
                    );
                    break kill(&mut child);
                }
            }
            thread::sleep(Duration::from_millis(50));
        };
        let elapsed = start.elapsed();
        let _ = console_thread.join();
        let _ = stderr_thread.join();
        self.pump_stdout(&mut stdout_reader, &mut stdout_bytes);

        let scanner = match scanner.lock() {
            Ok(s) => s,
            Err(_) => {
                return Err(AttemptError::Fatal(anyhow!(
                    "internal error: console scanner poisoned"
                )))
            }
        };
        let boot_time = started_at.lock().ok().and_then(|t| *t);
        let qemu_err = stderr_lines
            .lock()
            .map(|v| v.join("\n"))
            .unwrap_or_default();
        let log_hint = format!("full console log: {}", log_path.display());

        if interrupted {
            return Err(AttemptError::Fatal(anyhow!(util::Interrupted)));
        }
        if kvm_stuck {
            return Err(AttemptError::KvmFailed(format!(
                "no output from /init within {} s",
                KVM_START_DEADLINE.as_secs()
            )));
        }
        if accel == Accel::Kvm && !scanner.started && scanner.exit.is_none() {
            let why = qemu_err
                .lines()
                .last()
                .map(str::to_string)
                .unwrap_or_else(|| format!("qemu exited ({status})"));
            return Err(AttemptError::KvmFailed(why));
        }
        if let Some(p) = scanner.problems.first() {
            let more = if scanner.problems.len() > 1 {
                format!(
                    "(and {} more problem line(s))\n",
                    scanner.problems.len() - 1
                )
            } else {
                String::new()
            };
            return Err(AttemptError::Fatal(anyhow!(
                "{} on kernel {}: the console shows\n    {}\n{more}{log_hint}",
                p.kind,
                self.kernel.label,
                p.line.trim()
            )));
        }
        if timed_out {
            return Err(AttemptError::Fatal(anyhow!(
                "the guest ran longer than {} s and was killed (raise --timeout if the command needs longer); \
                 last console lines:\n{}{log_hint}",
                self.timeout.as_secs(),
                scanner.tail()
            )));
        }
        match scanner.exit {
            Some(st) => Ok(Attempt {
                status: st,
                stdout: stdout_bytes,
                boot_time,
                elapsed,
            }),
            None => {
                if accel == Accel::Kvm && stdout_bytes.is_empty() && !status.success() {
                    return Err(AttemptError::KvmFailed(format!(
                        "qemu exited ({status}) before the command ran"
                    )));
                }
                let qemu_part = if qemu_err.is_empty() {
                    String::new()
                } else {
                    format!("qemu said:\n{qemu_err}\n")
                };
                Err(AttemptError::Fatal(anyhow!(
                    "the guest stopped without reporting the command's exit status (qemu exited: {status}; \
                     /init {}); {qemu_part}last console lines:\n{}{log_hint}",
                    if scanner.started { "had started" } else { "never started" },
                    scanner.tail()
                )))
            }
        }
    }

    fn pump_stdout(&self, reader: &mut File, collected: &mut Vec<u8>) {
        let mut chunk = Vec::new();
        if reader.read_to_end(&mut chunk).is_ok() && !chunk.is_empty() {
            if self.stream_stdout {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&chunk);
                let _ = out.flush();
            }
            collected.extend_from_slice(&chunk);
        }
    }
}

fn write_lines(
    log: &Arc<Mutex<File>>,
    lines: &[String],
    echoing: &mut bool,
    echo: ConsoleEcho,
    started: bool,
) {
    if lines.is_empty() {
        return;
    }
    if let Ok(mut f) = log.lock() {
        for l in lines {
            let _ = writeln!(f, "{l}");
        }
    }
    if !*echoing && echo == ConsoleEcho::AfterInit && started {
        *echoing = true;
    }
    if *echoing {
        let mut err = std::io::stderr().lock();
        for l in lines {
            let _ = writeln!(err, "{l}");
        }
    }
}

fn log_note(log: &Arc<Mutex<File>>, note: &str) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{note}");
    }
}

/// Kills qemu and reaps it.
fn kill(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    child
        .wait()
        .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9))
}

fn create_log(dir: &Path, label: &str, stamp: &str) -> Result<(PathBuf, File)> {
    for i in 0..1000 {
        let name = if i == 0 {
            format!("{label}-{stamp}.log")
        } else {
            format!("{label}-{stamp}-{i}.log")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!(e).context(format!("creating {}", path.display()))),
        }
    }
    bail!("could not create a log file in {}", dir.display())
}

/// A fresh sparse ext4 image: the guest's /mnt/scratch, on a real block
/// device so that O_DIRECT I/O goes through the block layer.
fn make_scratch_disk(path: &Path) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(SCRATCH_BYTES)?;
    drop(f);
    util::output(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "scratch",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(path),
    )
    .context("formatting the scratch disk (mkfs.ext4 comes with e2fsprogs: `cargo xtask setup`)")?;
    Ok(())
}

fn kvm_verdict_path() -> Option<PathBuf> {
    util::cache_dir().ok().map(|c| c.join("kvm-verdict"))
}

/// Accelerators to try, in order.
fn choose_accels(tag: &str) -> Result<Vec<Accel>> {
    match std::env::var("GUPWATCH_VM_ACCEL")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("kvm") => return Ok(vec![Accel::Kvm]),
        Some("tcg") => return Ok(vec![Accel::Tcg]),
        Some("") | None => {}
        Some(other) => bail!("GUPWATCH_VM_ACCEL={other}: expected `kvm` or `tcg`"),
    }
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(vec![Accel::Tcg]);
    }
    if let Some(path) = kvm_verdict_path() {
        if let Ok(text) = fs::read_to_string(&path) {
            if let Some(age) = parse_verdict(&text, util::unix_now()) {
                if age < KVM_VERDICT_TTL {
                    say!(
                        tag,
                        "using TCG: KVM failed here {} min ago (remembered in {}; GUPWATCH_VM_ACCEL=kvm forces a retry)",
                        age / 60,
                        path.display()
                    );
                    return Ok(vec![Accel::Tcg]);
                }
            }
        }
    }
    Ok(vec![Accel::Kvm, Accel::Tcg])
}

/// Age in seconds of a remembered KVM failure (`broken <unix time>`).
fn parse_verdict(text: &str, now: u64) -> Option<u64> {
    let mut words = text.split_whitespace();
    if words.next()? != "broken" {
        return None;
    }
    let at: u64 = words.next()?.parse().ok()?;
    Some(now.saturating_sub(at))
}

fn remember_kvm(ok: bool) {
    if let Some(path) = kvm_verdict_path() {
        if ok {
            let _ = fs::remove_file(&path);
        } else {
            let _ = fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
            let _ = fs::write(&path, format!("broken {}\n", util::unix_now()));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serve_and_wait_names_its_port_and_tag() {
        let s = super::serve_and_wait_sh("live", 10483);
        assert!(s.starts_with("gupwatch run --listen 0.0.0.0:10483 "), "{s}");
        assert!(s.contains("http://127.0.0.1:10483/healthz"), "{s}");
        assert!(s.contains("\"live: gupwatch run did not start serving\" >&2; cat /tmp/run.err >&2; exit 3"), "{s}");
        assert!(s.ends_with("serving ($(up) s after boot)\" >&2\n"), "{s}");
    }

    use super::*;

    #[test]
    fn forwards() {
        assert_eq!(
            "19483:9483".parse::<Forward>().unwrap(),
            Forward {
                host: 19483,
                guest: 9483
            }
        );
        assert_eq!(
            "127.0.0.1:8080:80".parse::<Forward>().unwrap(),
            Forward {
                host: 8080,
                guest: 80
            }
        );
        assert_eq!(
            "localhost:1:2".parse::<Forward>().unwrap(),
            Forward { host: 1, guest: 2 }
        );
        assert!("0.0.0.0:8080:80".parse::<Forward>().is_err());
        assert!("10.0.0.1:8080:80".parse::<Forward>().is_err());
        assert!("8080".parse::<Forward>().is_err());
        assert!("0:80".parse::<Forward>().is_err());
        assert!("70000:80".parse::<Forward>().is_err());
    }

    #[test]
    fn kernel_lines() {
        assert_eq!(kernel_message("[    1.234567] hello"), Some("hello"));
        assert_eq!(kernel_message("[12345.000001] x"), Some("x"));
        assert_eq!(
            kernel_message("garbage[    0.000000] Linux version"),
            Some("Linux version")
        );
        assert_eq!(kernel_message("[ok] not a timestamp"), None);
        assert_eq!(kernel_message("plain stderr line"), None);
        assert_eq!(kernel_message("[   1.5"), None);
    }

    #[test]
    fn problems_detected() {
        let bad = [
            ("[   12.345678] WARNING: CPU: 1 PID: 80 at mm/gup.c:123 try_grab_folio+0x1/0x2", "kernel WARNING"),
            ("[    3.100000] WARNING: test", "kernel WARNING"),
            ("[    5.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008", "kernel BUG"),
            ("[    5.000000] Oops: 0002 [#1] PREEMPT SMP NOPTI", "kernel Oops"),
            ("[    9.000000] Kernel panic - not syncing: Attempted to kill init!", "kernel panic"),
            ("[   44.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", "kernel BUG"),
            ("[   60.000000] rcu: INFO: rcu_sched self-detected stall on CPU", "RCU stall"),
            ("[   60.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
            ("[    7.000000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", "general protection fault"),
            ("[  240.000000] INFO: task sh:1 blocked for more than 120 seconds.", "hung task"),
        ];
        for (line, kind) in bad {
            assert_eq!(kernel_problem(line), Some(kind), "{line}");
        }
        let fine = [
            "[    0.000000] Linux version 6.12.117+deb13-cloud-amd64",
            "[    0.100000] MDS: Vulnerable: Clear CPU buffers attempted, no microcode",
            "[    1.000000] x86/fpu: Supporting XSAVE feature 0x001",
            "WARNING: printed by a command on stderr",
            "gupwatch: BUG: not a kernel line",
            "[    2.000000] clocksource: Switched to clocksource tsc",
        ];
        for line in fine {
            assert_eq!(kernel_problem(line), None, "{line}");
        }
    }

    #[test]
    fn scanner_markers_lines_and_tail() {
        let mut s = ConsoleScanner::new(Markers::new("tok"));
        let lines = s.feed(b"[    0.1] boot\r\n@@gupwatch-init-");
        assert_eq!(lines, vec!["[    0.1] boot"]);
        assert!(!s.started);
        s.feed(b"start:tok@@\r\n[    3.000000] WARNING: test\r\n");
        assert!(s.started);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].line, "[    3.000000] WARNING: test");
        s.feed(b"@@gupwatch-exit:tok:3@@");
        assert_eq!(s.exit, None, "no newline yet");
        assert_eq!(s.finish().as_deref(), Some("@@gupwatch-exit:tok:3@@"));
        assert_eq!(s.exit, Some(3));
        assert!(s.tail().contains("    | [    3.000000] WARNING: test\n"));
    }

    #[test]
    fn scanner_ignores_other_tokens() {
        let mut s = ConsoleScanner::new(Markers::new("mine"));
        s.feed(b"@@gupwatch-init-start:other@@\n@@gupwatch-exit:other:0@@\n");
        assert!(!s.started);
        assert_eq!(s.exit, None);
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(
            strip_escapes("plain [    1.0] text"),
            "plain [    1.0] text"
        );
        assert_eq!(strip_escapes("tail\u{1b}"), "tail");
    }

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict("broken 1000\n", 1600), Some(600));
        assert_eq!(parse_verdict("ok 1000", 1600), None);
        assert_eq!(parse_verdict("broken x", 1600), None);
        assert_eq!(parse_verdict("", 1600), None);
    }
}
