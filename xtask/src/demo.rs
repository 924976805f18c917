//! `cargo xtask demo`: gupwatch watching a pinning workload live, on the
//! newest kernel of the matrix.
//!
//! On a terminal, the VM runs `gupwatch run` and a mixed workload, and the
//! host shows the live view of that daemon (`gupwatch top --connect`
//! through a forwarded port) until `q` or Ctrl-C; the guest is then
//! released and powers off. Piped, the guest prints gupwatch's periodic
//! summary lines instead, which is what a log or CI keeps.

use std::io::IsTerminal;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::binary;
use crate::e2e::{free_port, http_get, release_guest};
use crate::kernels::{self, Flavour, Manifest};
use crate::qemu::{ConsoleEcho, Forward, VmRun};
use crate::say;
use crate::setup::{self, SetupOptions};
use crate::util;

/// Host port that reaches the guest's metrics port.
pub const HOST_PORT: u16 = 19483;
/// gupwatch's metrics port in the guest.
pub const GUEST_PORT: u16 = 10483;

/// The guest command: a workload that pins memory in the background and
/// gupwatch's periodic summary in the foreground.
pub const DEMO_COMMAND: &str = "gupwatch run --listen 0.0.0.0:10483 >/dev/null 2>&1 & \
     gupwatch workload --seconds 40 & gupwatch --interval 2 --count 20";

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
        r#"gupwatch run --listen 0.0.0.0:{GUEST_PORT} 2>/tmp/run.err &
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
    let alias = kernels::alias(&o.kernel).with_context(|| {
        format!(
            "unknown kernel `{}` (known: {})",
            o.kernel,
            kernels::alias_names()
        )
    })?;
    let cache = util::cache_dir()?;
    let manifest = kernels::ensure(&cache, alias, Flavour::Cloud, false)?;
    let gupwatch = if o.no_build {
        binary::static_gupwatch_path()
    } else {
        binary::build_static_gupwatch()?
    };
    if !gupwatch.is_file() {
        anyhow::bail!(
            "{} does not exist: run without --no-build",
            gupwatch.display()
        );
    }
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return live(&manifest, &cache, &gupwatch);
    }

    eprintln!(
        "\n\
         gupwatch demo\n\
         -------------\n\
         A throwaway VM boots Debian's {kernel} kernel (Debian {suite}). Inside it,\n\
         `gupwatch workload` makes the kernel pin user memory for 40 s while\n\
         `gupwatch` prints, every 2 s, how many pages were pinned and unpinned\n\
         (pin_user_pages / FOLL_PIN) as its eBPF probes saw them, next to the\n\
         kernel's own nr_foll_pin_* counters from /proc/vmstat.\n\
         stdout carries gupwatch's output; kernel messages and stderr come on stderr.\n\
         The guest's port {GUEST_PORT} (where `gupwatch run` serves Prometheus metrics)\n\
         is forwarded to 127.0.0.1:{HOST_PORT}. Ctrl-C stops the VM.\n",
        kernel = manifest.uname,
        suite = manifest.suite,
    );
    say!("demo", "guest command: {DEMO_COMMAND}");

    let mut run = VmRun::new(manifest.boot_kernel(&cache), DEMO_COMMAND);
    run.gupwatch = Some(gupwatch);
    run.forwards = vec![Forward {
        host: HOST_PORT,
        guest: GUEST_PORT,
    }];
    run.echo = ConsoleEcho::AfterInit;
    run.stream_stdout = true;
    run.timeout = Duration::from_secs(600);
    run.tag = "demo".into();
    let outcome = run.run()?;
    say!(
        "demo",
        "finished with status {} in {:.0} s ({}); console log: {}",
        outcome.status,
        outcome.elapsed.as_secs_f64(),
        outcome.accel,
        outcome.console_log.display()
    );
    Ok(outcome.status)
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
    let mut run = VmRun::new(manifest.boot_kernel(cache), live_command(wait_s));
    run.gupwatch = Some(gupwatch.to_path_buf());
    run.forwards = vec![
        Forward { host: HOST_PORT, guest: GUEST_PORT },
        Forward { host: release_port, guest: GUEST_RELEASE_PORT },
    ];
    // The console would draw over the live view: it goes to the log only.
    run.echo = ConsoleEcho::None;
    run.stream_stdout = false;
    run.timeout = Duration::from_secs(wait_s + 300);
    run.tag = "demo".into();
    let vm = thread::spawn(move || run.run());

    say!("demo", "booting the VM and waiting for gupwatch run to serve (about a minute under TCG)...");
    let t = Instant::now();
    let served = loop {
        if util::interrupted() {
            break Err(anyhow!(util::Interrupted));
        }
        if vm.is_finished() {
            break Err(anyhow!("the VM ended before gupwatch run served"));
        }
        if t.elapsed() > Duration::from_secs(300) {
            break Err(anyhow!("gupwatch run did not serve within 300 s"));
        }
        if let Ok((200, _)) = http_get(HOST_PORT, "/healthz", Duration::from_secs(5)) {
            break Ok(());
        }
        thread::sleep(Duration::from_millis(500));
    };
    let view = served.and_then(|()| {
        say!("demo", "gupwatch run serves after {:.0} s; opening the live view", t.elapsed().as_secs_f64());
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
}
