//! `cargo xtask demo`: gupwatch watching a pinning workload live, on the
//! newest kernel of the matrix.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::binary;
use crate::kernels::{self, Flavour};
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
