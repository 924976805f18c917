//! One boot of the guest with one accelerator: start qemu, stream its
//! console and the command's stdout, stop it when the guest is done, stuck
//! or broken, and judge how it ended.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::console::ConsoleScanner;
use super::initramfs::Markers;
use super::{Accel, ConsoleEcho, VmRun};
use crate::say;
use crate::util;

/// How long a KVM guest may take to reach /init before it is declared stuck.
const KVM_START_DEADLINE: Duration = Duration::from_secs(20);
/// How long to wait for qemu to exit after the guest printed its exit marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// How long a guest may go on after a serious kernel problem (oops, lockup,
/// stall) before it is stopped: enough for the rest of the report to reach
/// the log, without waiting for the timeout of a wedged guest.
const PROBLEM_GRACE: Duration = Duration::from_secs(10);


/// Size of the guest's scratch disk (sparse on the host).
const SCRATCH_BYTES: u64 = 512 * 1024 * 1024;

pub(super) enum AttemptError {
    /// KVM did not get the guest to /init; TCG may.
    KvmFailed(String),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for AttemptError {
    fn from(e: anyhow::Error) -> Self {
        AttemptError::Fatal(e)
    }
}

pub(super) struct Attempt {
    pub(super) status: i32,
    pub(super) stdout: Vec<u8>,
    pub(super) boot_time: Option<Duration>,
    pub(super) elapsed: Duration,
}
/// Why the watch loop stopped qemu itself, when it did.
#[derive(Default)]
struct Stopped {
    timed_out: bool,
    kvm_stuck: bool,
    interrupted: bool,
}

/// What the attempt saw, for [`VmRun::verdict`].
struct Seen {
    status: ExitStatus,
    stopped: Stopped,
    stdout: Vec<u8>,
    boot_time: Option<Duration>,
    elapsed: Duration,
    qemu_err: String,
}

impl VmRun {
    pub(super) fn attempt(
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
        let console_thread = spawn_console_reader(&mut child, &scanner, log, self.echo, &started_at, start);
        let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread =
            spawn_stderr_reader(&mut child, &stderr_lines, log, self.echo != ConsoleEcho::None);

        let mut stdout_bytes = Vec::new();
        let (status, stopped) =
            self.watch(&mut child, accel, start, &scanner, &mut stdout_reader, &mut stdout_bytes)?;
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
        self.verdict(
            accel,
            &scanner,
            Seen {
                status,
                stopped,
                stdout: stdout_bytes,
                boot_time,
                elapsed,
                qemu_err,
            },
            log_path,
        )
    }

    /// Polls qemu until it exits, streaming the command's stdout, and stops
    /// it on Ctrl-C, timeout, a stuck KVM start, a serious kernel problem or
    /// a guest that does not power off.
    fn watch(
        &self,
        child: &mut Child,
        accel: Accel,
        start: Instant,
        scanner: &Arc<Mutex<ConsoleScanner>>,
        stdout_reader: &mut File,
        stdout_bytes: &mut Vec<u8>,
    ) -> std::result::Result<(ExitStatus, Stopped), AttemptError> {
        let tag = self.tag.as_str();
        let mut exit_seen_at: Option<Instant> = None;
        let mut problem_seen_at: Option<Instant> = None;
        let mut stopped = Stopped::default();
        let status: ExitStatus = loop {
            self.pump_stdout(stdout_reader, stdout_bytes);
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    kill(child);
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
                stopped.interrupted = true;
                break kill(child);
            }
            if accel == Accel::Kvm && !started && start.elapsed() > KVM_START_DEADLINE {
                stopped.kvm_stuck = true;
                break kill(child);
            }
            if start.elapsed() > self.timeout {
                stopped.timed_out = true;
                break kill(child);
            }
            if serious && grace_over(&mut problem_seen_at, PROBLEM_GRACE) {
                say!(tag, "the guest kernel reported a serious problem; stopping qemu");
                break kill(child);
            }
            if exited && grace_over(&mut exit_seen_at, POWEROFF_GRACE) {
                say!(tag, "the guest did not power off after its command ended; stopping qemu");
                break kill(child);
            }
            thread::sleep(Duration::from_millis(50));
        };
        Ok((status, stopped))
    }

    /// How the attempt ended: the command's status, a KVM failure worth a
    /// retry with TCG, or an error naming what went wrong.
    fn verdict(
        &self,
        accel: Accel,
        scanner: &ConsoleScanner,
        seen: Seen,
        log_path: &Path,
    ) -> std::result::Result<Attempt, AttemptError> {
        let Seen { status, stopped, stdout: stdout_bytes, boot_time, elapsed, qemu_err } = seen;
        let log_hint = format!("full console log: {}", log_path.display());
        if stopped.interrupted {
            return Err(AttemptError::Fatal(anyhow!(util::Interrupted)));
        }
        if stopped.kvm_stuck {
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
        if stopped.timed_out {
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

/// Reads the console (qemu's stdout) into the scanner, the log and, as
/// `echo` says, the host's stderr; notes when /init started.
fn spawn_console_reader(
    child: &mut Child,
    scanner: &Arc<Mutex<ConsoleScanner>>,
    log: &Arc<Mutex<File>>,
    echo: ConsoleEcho,
    started_at: &Arc<Mutex<Option<Duration>>>,
    start: Instant,
) -> thread::JoinHandle<()> {
    let out = child.stdout.take();
    let scanner = Arc::clone(scanner);
    let log = Arc::clone(log);
    let started_at = Arc::clone(started_at);
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

}

/// Collects qemu's own stderr (into the log, and echoed unless the console
/// echo is off): its last line is why a KVM start failed.
fn spawn_stderr_reader(
    child: &mut Child,
    lines: &Arc<Mutex<Vec<String>>>,
    log: &Arc<Mutex<File>>,
    echo: bool,
) -> thread::JoinHandle<()> {
    let err = child.stderr.take();
    let lines = Arc::clone(lines);
    let log = Arc::clone(log);
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

pub(super) fn log_note(log: &Arc<Mutex<File>>, note: &str) {
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

/// Whether `grace` has passed since the condition was first seen (noted
/// in `seen_at` now, the first time).
fn grace_over(seen_at: &mut Option<Instant>, grace: Duration) -> bool {
    seen_at.get_or_insert_with(Instant::now).elapsed() > grace
}
