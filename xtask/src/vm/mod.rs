//! Running one command in a throwaway QEMU guest on a real kernel.
//!
//! The guest has two serial ports: ttyS0 is the console (kernel log, the
//! command's stderr, init's markers) and reaches the host through qemu's
//! stdout; ttyS1 carries only the command's stdout and is written by qemu to
//! a file that the host streams. Keeping them apart is what lets
//! `cargo xtask vm -- gupwatch check --json > out.json` produce clean JSON.
//!
//! The pieces: [`kernels`] fetches and unpacks the Debian kernels,
//! [`modules`] resolves the kernel modules the guest loads, [`initramfs`]
//! writes its root file system (with [`guesttools`] for host programs such
//! as tmux), `launch` builds the qemu command line and picks the
//! accelerator (`accel`), `attempt` runs one boot and `console` reads
//! what the guest prints.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};

pub mod guesttools;
pub mod initramfs;
pub mod kernels;
pub mod modules;

mod accel;
mod attempt;
mod console;
mod launch;

pub use console::{kernel_message, kernel_problem, strip_escapes, ConsoleScanner, Problem};

use kernels::BootKernel;

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
    /// Host programs (names in PATH, or paths) to ship as
    /// `/usr/bin/<name>` with the shared libraries `ldd` lists
    /// (`cargo xtask vm --ship`).
    pub ship: Vec<String>,
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
/// define `up()` (seconds since boot). The daemon writes `stat_refresh` at
/// every reading (`--vmstat-refresh 0`, off by default): the steps that use
/// this compare its `/proc/vmstat` figures with gupwatch's own, exactly.
pub fn serve_and_wait_sh(tag: &str, port: u16) -> String {
    serve_with_args_and_wait_sh(tag, port, "")
}

/// [`serve_and_wait_sh`] with more arguments for `gupwatch run` (`args`,
/// shell words, e.g. `--long-held 20`).
pub fn serve_with_args_and_wait_sh(tag: &str, port: u16, args: &str) -> String {
    let args = if args.is_empty() { String::new() } else { format!(" {args}") };
    format!(
        r#"gupwatch run --listen 0.0.0.0:{port} --vmstat-refresh 0{args} 2>/tmp/run.err &
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

/// Guest shell lines that end a run started with [`serve_and_wait_sh`]
/// once the host released the guest (`$rel`: the release's status): kill
/// the background `pids` (shell words), stop `gupwatch run` with SIGTERM,
/// print its stderr if it failed and the `logs` (files), and exit with its
/// status, or 4 when the release never came.
pub fn stop_serving_sh(tag: &str, pids: &str, logs: &str) -> String {
    format!(
        r#"kill {pids} 2>/dev/null
kill -TERM $RUN
wait $RUN
st=$?
wait
echo "{tag}: host released the guest (nc status $rel); gupwatch run exited with status $st ($(up) s after boot)" >&2
if [ $st -ne 0 ]; then cat /tmp/run.err >&2; fi
cat {logs} 2>/dev/null >&2
if [ $rel -ne 0 ]; then exit 4; fi
exit $st
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
            ship: Vec::new(),
            kernel_args: Vec::new(),
            files: Vec::new(),
            icount: false,
            vfio: false,
        }
    }

    /// A run whose stdout its caller reads (not streamed to the host's),
    /// with the console echoed as `echo` says and progress lines tagged.
    pub fn captured(&mut self, echo: ConsoleEcho, tag: impl Into<String>) {
        self.echo = echo;
        self.stream_stdout = false;
        self.tag = tag.into();
    }

    /// A test step's guest: `gupwatch` installed, the run limited to
    /// `timeout`, stdout captured, no console echo, progress lines tagged.
    pub fn test_step(
        kernel: BootKernel,
        command: impl Into<String>,
        gupwatch: &std::path::Path,
        timeout: Duration,
        tag: impl Into<String>,
    ) -> VmRun {
        let mut run = VmRun::new(kernel, command);
        run.gupwatch = Some(gupwatch.to_path_buf());
        run.timeout = timeout;
        run.captured(ConsoleEcho::None, tag);
        run
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

impl VmOutcome {
    /// One line for a step's log: `label`, how long, how, how it ended,
    /// where the console log is.
    pub fn summary(&self, label: &str) -> String {
        format!(
            "{label} in {:.0} s ({}), exit status {}; console log: {}",
            self.elapsed.as_secs_f64(),
            self.accel,
            self.status,
            self.console_log.display()
        )
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

}
