//! One guest from start to end: the run's work directory, modules and
//! initramfs, the qemu command line, and the fall-back from KVM to TCG.

use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use super::accel::{choose_accels, remember_kvm};
use super::attempt::{log_note, AttemptError};
use super::guesttools;
use super::initramfs::{self, InitOptions, Markers};
use super::modules;
use super::{Accel, VmOutcome, VmRun, ICOUNT_ARGS, VFIO_MODULES};
use crate::say;
use crate::util;

/// A run's temporary directory under target/vm, removed when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("GUPWATCH_VM_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

impl VmRun {
    /// Boots the guest, runs the command and returns its status and stdout.
    ///
    /// Fails (naming the console line and the log file) when the kernel
    /// reports a problem, on timeout, and when the guest never reports the
    /// command's exit status. A command that exits non-zero is *not* an
    /// error here: see [`VmOutcome::status`].
    pub fn run(&self) -> Result<VmOutcome> {
        let busybox = self.check_prerequisites()?;
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

        let (resolved, deferred) = self.guest_modules()?;
        let names: Vec<String> = resolved.modules.iter().map(|m| m.name.clone()).collect();
        let markers = Markers::new(&util::nonce());
        let cpio = self.write_initramfs(busybox, &work.0, &resolved, &deferred, &markers)?;
        self.boot(&work.0, &cpio, &log, &log_path, &markers, names)
    }

    /// qemu, busybox and the kernel image, or an error saying how to get them.
    fn check_prerequisites(&self) -> Result<&'static Path> {
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
        Ok(busybox)
    }

    /// The modules loaded at boot and the deferred ones, resolved against
    /// this kernel's tree, and said on the progress line.
    fn guest_modules(&self) -> Result<(modules::Resolved, Vec<modules::Module>)> {
        let tag = self.tag.as_str();
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
        let names: Vec<&str> = resolved.modules.iter().map(|m| m.name.as_str()).collect();
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
        Ok((resolved, deferred))
    }

    /// Writes the initramfs (init script, busybox, gupwatch, modules and
    /// extra files) into the work directory and returns its path.
    fn write_initramfs(
        &self,
        busybox: &Path,
        work: &Path,
        resolved: &modules::Resolved,
        deferred: &[modules::Module],
        markers: &Markers,
    ) -> Result<PathBuf> {
        let init = initramfs::init_script(&InitOptions {
            markers,
            network: !self.forwards.is_empty(),
            stdout_tty: "/dev/ttyS1",
            // Shortly before the host gives up (the guest's clock starts a
            // few seconds after qemu's).
            stall_report_after: self.timeout.as_secs().checked_sub(15).filter(|s| *s >= 15),
        });
        let mut extra = if self.tmux || !self.ship.is_empty() {
            guesttools::bundle(&self.ship, self.tmux).context("shipping host programs into the guest")?
        } else {
            Vec::new()
        };
        extra.extend(self.files.iter().cloned());
        let cpio = initramfs::path_in(work);
        initramfs::write(
            &initramfs::Contents {
                busybox,
                gupwatch: self.gupwatch.as_deref(),
                modules: &resolved.modules,
                deferred,
                init: &init,
                command: &self.command,
                extra: &extra,
            },
            &cpio,
        )?;

        Ok(cpio)
    }

    /// Boots with the first accelerator that works, falling back from KVM
    /// to TCG when KVM does not get the guest to /init.
    fn boot(
        &self,
        work: &Path,
        cpio: &Path,
        log: &Arc<Mutex<File>>,
        log_path: &Path,
        markers: &Markers,
        names: Vec<String>,
    ) -> Result<VmOutcome> {
        let tag = self.tag.as_str();
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
            match self.attempt(accel, work, cpio, log, log_path, markers) {
                Ok(a) => {
                    if accel == Accel::Kvm {
                        remember_kvm(true);
                    }
                    return Ok(VmOutcome {
                        status: a.status,
                        stdout: a.stdout,
                        console_log: log_path.to_path_buf(),
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
                        log,
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

    pub(super) fn qemu_command(
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
