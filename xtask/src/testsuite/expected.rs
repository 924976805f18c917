//! The scenarios each kernel step must reach: a committed list, so that a
//! scenario that silently stops running (listed as not reachable, or gone
//! from the report) fails the step instead of shrinking the table.
//!
//! Taken from what the steps report today (docs/check.md, "Not reachable"):
//! every kernel step boots with `hugepages=4`, so `io_uring_register_hugetlb`
//! runs everywhere, and with QEMU's IOMMU and PCI test device, so the
//! `vfio_` scenarios do; none has a movable zone, so
//! `io_uring_register_movable` is not reachable there (the preemptible
//! 6.12 step boots `movablecore=256M` for it); Debian's 6.1 has no
//! `memfd_secret` (secretmem off); the cloud kernels have no soft-RoCE, so
//! the `rdma_` scenarios run in the RDMA step on the generic ones. A new scenario, or one that becomes
//! reachable, changes the count: add it here.

use super::report::{NotReachable, Report};

/// Every scenario of `gupwatch check`, in report order.
const SCENARIOS: [&str; 49] = [
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_register_buffers",
    "io_uring_unregister_buffers",
    "direct_io_write",
    "direct_io_read",
    "process_vm_writev_unfaulted",
    "io_uring_register_unfaulted",
    "direct_io_write_after_fork",
    "process_vm_readv_prot_none",
    "io_uring_register_prot_none",
    "io_uring_register_pfnmap",
    "io_uring_buffers_held",
    "io_uring_orphaned",
    "io_uring_orphaned_closed",
    "io_uring_handoff_fork",
    "io_uring_handoff_daemon",
    "io_uring_register_memfd_shared",
    "io_uring_register_memfd_private",
    "io_uring_register_file_shared",
    "io_uring_register_file_private",
    "io_uring_register_file_private_read",
    "io_uring_register_read_only",
    "io_uring_register_secretmem",
    "io_uring_register_hugetlb",
    "process_vm_readv_file_shared",
    "process_vm_writev_file_shared",
    "process_vm_readv_after_fork",
    "process_vm_writev_read_only",
    "direct_io_write_memfd_shared",
    "direct_io_read_file_private",
    "io_uring_register_race",
    "io_uring_register_movable",
    "churn_process_vm",
    "churn_io_uring",
    "churn_odirect",
    "inflight_odirect_shared",
    "inflight_fixed_pre_attach",
    "inflight_odirect_owners",
    "vfio_map_dma",
    "vfio_map_dma_held",
    "vfio_handoff_fork",
    "rdma_reg_mr",
    "rdma_reg_mr_held",
    "rdma_reg_mr_exit",
    "weak_pin_odirect_movable",
    "rdma_handoff_fork",
    "rdma_handoff_pass",
    "rdma_orphan_in_flight",
];

/// Needs a populated ZONE_MOVABLE (`movablecore=`).
const MOVABLE: &str = "io_uring_register_movable";
/// Needs a populated ZONE_MOVABLE and `null_blk` (a slow device), which
/// only the preemptible step has.
const WEAK_PIN: &str = "weak_pin_odirect_movable";
/// Needs `memfd_secret` (secretmem), which Debian's 6.1 leaves off.
const SECRETMEM: &str = "io_uring_register_secretmem";

/// Need a verbs device: soft-RoCE (`rdma_rxe`) is in Debian's generic
/// flavour only, which the RDMA step boots ([`crate::rdmastep`]).
const RDMA: [&str; 6] = ["rdma_reg_mr", "rdma_reg_mr_held", "rdma_reg_mr_exit", "rdma_handoff_fork", "rdma_handoff_pass", "rdma_orphan_in_flight"];

/// Per matrix kernel step: the scenarios of [`SCENARIOS`] it cannot reach.
const NOT_REACHED: [(&str, &[&str]); 3] = [
    ("6.1", &[SECRETMEM, MOVABLE, RDMA[0], RDMA[1], RDMA[2], RDMA[3], RDMA[4], RDMA[5], WEAK_PIN]),
    ("6.12", &[MOVABLE, RDMA[0], RDMA[1], RDMA[2], RDMA[3], RDMA[4], RDMA[5], WEAK_PIN]),
    ("7.2", &[MOVABLE, RDMA[0], RDMA[1], RDMA[2], RDMA[3], RDMA[4], RDMA[5], WEAK_PIN]),
];

/// The step name of the preemptible kernel's step
/// ([`crate::preemptstep`]).
pub const PREEMPT_STEP: &str = "6.12 preempt=full movablecore";

/// What that step selects (`--only` in [`crate::preemptstep::COMMAND`]),
/// by name prefix; all of it reachable there.
const PREEMPT_ONLY: [&str; 5] = ["churn_", "inflight_", "io_uring_register_movable", "io_uring_register_race", "weak_pin_"];

/// The scenarios a step (a matrix kernel's name, or [`PREEMPT_STEP`]) must
/// reach; `None` for a step without a list (the canary's kernel is not
/// known in advance).
pub fn expected_reachable(step: &str) -> Option<Vec<&'static str>> {
    if step == PREEMPT_STEP {
        let selected = |s: &&str| PREEMPT_ONLY.iter().any(|p| s.starts_with(p));
        return Some(SCENARIOS.iter().copied().filter(selected).collect());
    }
    let (_, not) = NOT_REACHED.iter().find(|(k, _)| *k == step)?;
    Some(SCENARIOS.iter().copied().filter(|s| !not.contains(s)).collect())
}

/// A report's scenarios against the list a step must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// How many the list holds.
    pub expected: usize,
    /// Listed and run.
    pub reached: usize,
    /// Everything the report lists as not reachable, with why.
    pub not_reachable: Vec<NotReachable>,
    /// Listed, but neither run nor listed as not reachable.
    pub missing: Vec<String>,
    /// Listed, but the report says not reachable.
    pub unreachable: Vec<NotReachable>,
    /// Run, but not in the list.
    pub unlisted: Vec<String>,
}

/// The rule: every scenario of `expected` ran, and nothing else did.
pub fn judge_reachable(expected: &[&str], report: &Report) -> Reachability {
    let ran = |n: &str| report.scenarios.iter().any(|s| s.name == n);
    let listed = |n: &str| report.not_reachable.iter().find(|r| r.name == n);
    let mut r = Reachability {
        expected: expected.len(),
        reached: 0,
        not_reachable: report.not_reachable.clone(),
        missing: vec![],
        unreachable: vec![],
        unlisted: vec![],
    };
    for name in expected {
        if ran(name) {
            r.reached += 1;
        } else if let Some(nr) = listed(name) {
            r.unreachable.push(nr.clone());
        } else {
            r.missing.push(name.to_string());
        }
    }
    r.unlisted = report
        .scenarios
        .iter()
        .filter(|s| !expected.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    r
}

impl Reachability {
    /// Whether the step reached exactly its list.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.unreachable.is_empty() && self.unlisted.is_empty()
    }

    /// The step's lines: the count, each not-reachable scenario by name,
    /// and what is wrong.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "  {}  scenarios reached: {} of {} expected, {} not reachable",
            if self.ok() { "PASS" } else { "FAIL" },
            self.reached,
            self.expected,
            self.not_reachable.len()
        )];
        for n in &self.not_reachable {
            out.push(format!("        not reachable: {} ({})", n.name, n.reason));
        }
        if !self.ok() {
            out.push(format!("        {}", self.problem()));
        }
        out
    }

    /// What is wrong, in one line.
    pub fn problem(&self) -> String {
        let mut parts = vec![];
        if !self.missing.is_empty() {
            parts.push(format!("expected but missing from the report: {}", self.missing.join(", ")));
        }
        if !self.unreachable.is_empty() {
            let names: Vec<&str> = self.unreachable.iter().map(|n| n.name.as_str()).collect();
            parts.push(format!("expected reachable but not reachable: {}", names.join(", ")));
        }
        if !self.unlisted.is_empty() {
            parts.push(format!(
                "ran but not in the committed list (xtask/src/testsuite/expected.rs): {}",
                self.unlisted.join(", ")
            ));
        }
        if parts.is_empty() {
            return format!("{} of {} expected scenarios reached", self.reached, self.expected);
        }
        format!("scenario count {} of {} expected: {}", self.reached, self.expected, parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::report::parse_report;

    /// Check JSON with these scenarios run and these not reachable.
    fn report(ran: &[&str], not: &[(&str, &str)]) -> Report {
        let scenarios: Vec<String> = ran
            .iter()
            .map(|n| format!(r#"{{"name":"{n}","pinned_pages":1,"unpinned_pages":1,"vmstat_acquired":1,"vmstat_released":1,"exact":true,"passed":true}}"#))
            .collect();
        let nr: Vec<String> = not.iter().map(|(n, r)| format!(r#"{{"name":"{n}","reason":"{r}"}}"#)).collect();
        let json = format!(
            r#"{{"kernel":"7.2.13+deb14-cloud-amd64","scenarios":[{}],"not_reachable":[{}],"passed":true}}"#,
            scenarios.join(","),
            nr.join(",")
        );
        parse_report(&json).unwrap()
    }

    #[test]
    fn every_matrix_kernel_has_a_list() {
        for a in crate::vm::kernels::MATRIX {
            let l = expected_reachable(a.name).unwrap_or_else(|| panic!("no list for {}", a.name));
            assert!(!l.contains(&MOVABLE) && !l.contains(&WEAK_PIN), "{}", a.name);
            assert!(l.contains(&"io_uring_register_hugetlb"), "{}", a.name);
        }
        assert_eq!(expected_reachable("6.1").map(|l| l.len()), Some(40));
        assert_eq!(expected_reachable("7.2").map(|l| l.len()), Some(41));
        assert_eq!(expected_reachable("canary"), None);
        let preempt = expected_reachable(PREEMPT_STEP).unwrap();
        assert_eq!(preempt.len(), 9);
        assert!(preempt.contains(&MOVABLE) && preempt.contains(&WEAK_PIN));
        let only = PREEMPT_ONLY.join(",");
        assert!(crate::preemptstep::COMMAND.ends_with(&format!("--only {only}")), "the list follows the step's --only");
    }

    #[test]
    fn the_expected_list_passes() {
        let expected = expected_reachable("7.2").unwrap();
        let r = judge_reachable(&expected, &report(&expected, &[(MOVABLE, "no populated ZONE_MOVABLE")]));
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.reached, r.expected), (41, 41));
        let lines = r.lines();
        assert_eq!(lines[0], "  PASS  scenarios reached: 41 of 41 expected, 1 not reachable");
        assert_eq!(lines[1], "        not reachable: io_uring_register_movable (no populated ZONE_MOVABLE)");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn an_expected_scenario_not_reachable_fails() {
        let expected = expected_reachable("7.2").unwrap();
        let ran: Vec<&str> = expected.iter().copied().filter(|n| *n != "io_uring_register_hugetlb").collect();
        let r = judge_reachable(&expected, &report(&ran, &[("io_uring_register_hugetlb", "no free huge page"), (MOVABLE, "x")]));
        assert!(!r.ok());
        assert_eq!(r.unreachable.len(), 1);
        assert!(r.problem().contains("expected reachable but not reachable: io_uring_register_hugetlb"), "{}", r.problem());
        assert!(r.lines()[0].starts_with("  FAIL  scenarios reached: 40 of 41"), "{:?}", r.lines());
    }

    #[test]
    fn a_missing_scenario_fails() {
        let expected = expected_reachable("6.1").unwrap();
        let r = judge_reachable(&expected, &report(&expected[1..], &[]));
        assert!(!r.ok());
        assert_eq!(r.missing, vec!["process_vm_readv".to_string()]);
        assert!(r.problem().contains("expected but missing from the report: process_vm_readv"), "{}", r.problem());
    }

    #[test]
    fn an_unlisted_scenario_fails() {
        let expected = expected_reachable("6.1").unwrap();
        let mut ran = expected.clone();
        ran.push(SECRETMEM);
        let r = judge_reachable(&expected, &report(&ran, &[]));
        assert!(!r.ok());
        assert_eq!(r.unlisted, vec![SECRETMEM.to_string()]);
    }
}
