//! The RDMA step of `cargo xtask test`: soft-RoCE on Debian's generic
//! kernels, running `gupwatch check`'s `rdma_` scenarios (memory regions
//! registered through uverbs, pinned by `ib_umem_get`).
//!
//! `rdma_rxe` is built only in the generic flavour. It needs a network
//! device to sit on, so the guest gets QEMU's user network (a forwarded
//! port nobody connects to is what turns it on), and iproute2's `rdma`
//! from the host, shipped with its libraries, links `rxe0` over `eth0`;
//! that creates `/dev/infiniband/uverbs0`, which the scenarios open. The
//! same boot has QEMU's IOMMU and PCI test device (`VmRun::vfio`), so the
//! generic kernels run the `vfio_` scenarios too.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::preemptstep::Outcome;
use crate::testsuite::{parse_report, table};
use crate::util;
use crate::vm::kernels::{self, Flavour, KernelAlias};
use crate::vm::{Forward, VmRun};

/// The kernels of the matrix the step boots (generic flavour), when
/// selected: a boot takes well under a minute.
pub const KERNELS: [&str; 3] = ["6.1", "6.12", "7.2"];

/// Modules the guest loads: soft-RoCE and the verbs character devices.
pub const MODULES: [&str; 2] = ["rdma_rxe", "ib_uverbs"];

/// The crypto API's crc32: before the kernel's CRC rework, rxe asks the
/// crypto API for "crc32" by name when it links a device, and without this
/// module `rdma link add` fails with ENOENT (`rxe_newlink: failed to add
/// eth0`, seen on 6.12). Later kernels have no such module (and need none).
const CRC32_CRYPTO: &str = "crc32_generic";

/// The scenarios that must run (not "not reachable") and pass.
pub const MUST_RUN: [&str; 9] = [
    "rdma_reg_mr",
    "rdma_reg_mr_held",
    "rdma_reg_mr_exit",
    "rdma_handoff_fork",
    "rdma_handoff_pass",
    "rdma_orphan_in_flight",
    "vfio_map_dma",
    "vfio_map_dma_held",
    "vfio_handoff_fork",
];

/// What the guest runs: links the rxe device with the host's `rdma`
/// (shipped with its libraries; its messages to the console, so stdout
/// stays the report), then the check.
pub const COMMAND: &str = "rdma link add rxe0 type rxe netdev eth0 >&2 || echo 'rdma link add failed' >&2; \
     ls -l /dev/infiniband >&2; gupwatch check --json --only rdma_,vfio_";

/// One line of the step for humans.
pub fn describe() -> String {
    format!(
        "RDMA and VFIO: kernels {} (generic) with {} and rxe0 over eth0, QEMU's IOMMU and test device: gupwatch check --json --only rdma_,vfio_",
        KERNELS.join(", "),
        MODULES.join(" + ")
    )
}

/// Boots each selected kernel of [`KERNELS`] and judges the `rdma_`
/// scenarios; `None` when none is selected.
pub fn run(aliases: &[KernelAlias], gupwatch: &Path, timeout: Duration) -> Result<Option<Outcome>> {
    let chosen: Vec<&KernelAlias> = aliases.iter().filter(|a| KERNELS.contains(&a.name)).collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    let mut out = Outcome::default();
    for alias in chosen {
        let cache = util::cache_dir()?;
        let kernel = kernels::ensure(&cache, *alias, Flavour::Generic, false)
            .map(|m| m.boot_kernel(&cache))
            .with_context(|| format!("fetching the generic {} kernel", alias.name))?;
        let modules = modules(kernel.modules_dir.as_deref());
        let mut vm = VmRun::test_step(kernel, COMMAND, gupwatch, timeout, format!("test {} generic rdma", alias.name));
        vm.extra_modules = modules;
        // iproute2's rdma (Debian's iproute2 is on every host that has ip).
        vm.ship = vec!["rdma".into()];
        vm.vfio = true;
        // Any forward gives the guest its network device (eth0).
        vm.forwards = vec![Forward { host: crate::e2e::free_port()?, guest: 9 }];
        let outcome = vm.run()?;
        let label = format!("{} generic (soft-RoCE)", alias.name);
        println!("{}", outcome.summary(&label));
        let stdout = String::from_utf8_lossy(&outcome.stdout);
        match parse_report(&stdout) {
            Ok(report) => {
                print!("{}", table(&report));
                judge(&label, &report, &mut out);
            }
            Err(e) => out.failures.push(format!(
                "{label}: gupwatch check exited with status {} and printed no report: {e:#}; console log: {}",
                outcome.status,
                outcome.console_log.display()
            )),
        }
    }
    Ok(Some(out))
}

/// [`MODULES`], and [`CRC32_CRYPTO`] when the kernel's module tree has it
/// (in `kernel/crypto/`; the cached trees have no `modules.dep`).
fn modules(tree: Option<&Path>) -> Vec<String> {
    let mut m: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    let crypto: Vec<String> = tree
        .and_then(|t| std::fs::read_dir(t.join("kernel/crypto")).ok())
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if has_module(&crypto, CRC32_CRYPTO) {
        m.push(CRC32_CRYPTO.into());
    }
    m
}

/// Whether a directory listing holds the module `name` (`name.ko`,
/// compressed or not).
fn has_module(files: &[String], name: &str) -> bool {
    files.iter().any(|f| f.strip_prefix(name).is_some_and(|rest| rest.starts_with(".ko")))
}

/// Every scenario of [`MUST_RUN`] in the report and passed; any other
/// scenario in it passed too.
fn judge(label: &str, report: &crate::testsuite::Report, out: &mut Outcome) {
    for name in MUST_RUN {
        match report.scenarios.iter().find(|s| s.name == name) {
            None => out.failures.push(format!("{label}: scenario {name} did not run (not reachable?)")),
            Some(s) if s.passed() => out.passed += 1,
            Some(s) => out.failures.push(format!("{label}: scenario {name}: {}", s.explanation())),
        }
    }
    for s in report.scenarios.iter().filter(|s| !MUST_RUN.contains(&s.name.as_str())) {
        if s.passed() {
            out.passed += 1;
        } else {
            out.failures.push(format!("{label}: scenario {}: {}", s.name, s.explanation()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_links_rxe_then_checks() {
        assert!(COMMAND.starts_with("rdma link add rxe0 type rxe netdev eth0"), "{COMMAND}");
        assert!(COMMAND.ends_with("gupwatch check --json --only rdma_,vfio_"), "{COMMAND}");
        assert!(describe().contains("rdma_rxe + ib_uverbs"));
    }

    #[test]
    fn crc32_only_where_the_tree_has_it() {
        let files = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(has_module(&files(&["crc32c_generic.ko.xz", "crc32_generic.ko.xz"]), CRC32_CRYPTO));
        assert!(has_module(&files(&["crc32_generic.ko"]), CRC32_CRYPTO));
        assert!(!has_module(&files(&["crc32-cryptoapi.ko.xz", "crc32c_generic.ko.xz"]), CRC32_CRYPTO));
        assert_eq!(modules(None), ["rdma_rxe", "ib_uverbs"]);
        let tree = std::env::temp_dir().join(format!("gupwatch-rdmastep-{}", crate::util::nonce()));
        std::fs::create_dir_all(tree.join("kernel/crypto")).unwrap();
        std::fs::write(tree.join("kernel/crypto/crc32_generic.ko.xz"), b"").unwrap();
        assert_eq!(modules(Some(&tree)), ["rdma_rxe", "ib_uverbs", CRC32_CRYPTO]);
        let _ = std::fs::remove_dir_all(&tree);
    }
}
