//! Which GUP rules a kernel applies, and how its callers pin: the
//! [`KernelProfile`], derived from the probe plan's BTF and kallsyms facts
//! (never from version strings).

use std::collections::BTreeMap;

use gup_common::Api;
use serde::{Deserialize, Serialize};

use crate::kernel::plan::{HookStatus, ProbePlan};

/// A deliberately wrong rule, for testing the differential checker: a model
/// with a mutation must disagree with the kernel where the rule matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mutation {
    /// The fast path forgets `gup_fast_folio_allowed`'s file-backed
    /// LONGTERM refusal (it pins dirty-tracked file pages).
    FastPathAllowsLongtermFile,
    /// Read-only pins never unshare pages that are not AnonExclusive.
    NoUnshareForReadOnlyPins,
    /// Pins of the zero page move `nr_foll_pin_*`.
    ZeroPageCounted,
    /// A refusal after the grab costs no transient pin (the grab is
    /// assumed to come after the checks).
    NoTransientPins,
}

/// The rules of one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelProfile {
    /// `uname -r`, for reports only: no rule is derived from it.
    pub kernel: String,
    /// 6.5+: FOLL_LONGTERM write pins of dirty-tracked file mappings are
    /// refused, by the fast path after its grab (one transient pin) and by
    /// the slow path's `check_vma_flags` with -EFAULT.
    pub longterm_file_rule: bool,
    /// Read-only FOLL_PIN pins of anonymous pages that are not
    /// AnonExclusive unshare them first (5.19+; every supported kernel).
    pub unshare_read_only_pins: bool,
    /// Pins of the shared zero page move `nr_foll_pin_*`.
    pub zero_page_counted: bool,
    /// Block direct I/O pins (FOLL_PIN) instead of taking references.
    pub direct_io_pins: bool,
    /// The GUP entry point io_uring registers fixed buffers with.
    #[serde(with = "api_name")]
    pub io_uring_api: Api,
    /// io_uring refuses buffers in file-backed VMAs other than shmem and
    /// hugetlbfs itself, after pinning them (-EOPNOTSUPP; before 6.5).
    pub io_uring_checks_file_vmas: bool,
    /// io_uring keeps one pin per large folio of a buffer and drops the
    /// others while registering.
    pub io_uring_coalesces: bool,
    /// `pin_user_pages_fast_only()` exists (5.8 to 6.2).
    pub has_pin_fast_only: bool,
    /// Why each rule has its value.
    pub reasons: BTreeMap<String, String>,
    /// A deliberately wrong rule (tests of the checker only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<Mutation>,
}

/// Serializes an [`Api`] by its kernel symbol.
mod api_name {
    use gup_common::Api;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(api: &Api, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(api.symbol())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Api, D::Error> {
        let name = String::deserialize(d)?;
        Api::from_symbol(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown GUP function {name}")))
    }
}

impl KernelProfile {
    /// The profile of the kernel a probe plan describes.
    pub fn from_plan(plan: &ProbePlan) -> KernelProfile {
        let caps = &plan.capabilities;
        let mut reasons = BTreeMap::new();
        reasons.insert("longterm_file_rule".to_string(), caps.longterm_file_rule_reason.clone());
        reasons.insert("direct_io_pins".to_string(), caps.direct_io_reason.clone());
        reasons.insert(
            "unshare_read_only_pins".to_string(),
            "every kernel gupwatch supports (5.19+) unshares anonymous pages that are not AnonExclusive before a read-only FOLL_PIN".to_string(),
        );
        reasons.insert(
            "zero_page_counted".to_string(),
            "measured: pins of the shared zero page move neither nr_foll_pin_* counter on Debian 6.1.176, 6.12 and 7.2 (nor on 6.18); no BTF or kallsyms fact tells".to_string(),
        );
        // io_uring checked the VMAs itself while it pinned with the `vmas`
        // array, which only pin_user_pages (the slow path) returns.
        let pup = plan.hook(Api::PinUserPages);
        let (io_uring_checks_file_vmas, why) = match &pup.params {
            Some(p) if p.iter().any(|n| n == "vmas") => (
                true,
                "pin_user_pages has a vmas parameter (BTF): io_uring pins fixed buffers with pin_user_pages (the slow path, which fills vmas) and refuses file-backed VMAs other than shmem/hugetlbfs itself with EOPNOTSUPP after pinning",
            ),
            Some(_) => (
                false,
                "pin_user_pages has no vmas parameter (BTF): io_uring leaves the file-backed check to GUP and pins fixed buffers with pin_user_pages_fast (true from 6.8; 6.5 to 6.7 still used pin_user_pages, which this profile cannot tell apart)",
            ),
            None if caps.longterm_file_rule => (false, "no BTF for pin_user_pages; GUP has the file-backed LONGTERM rule, so io_uring leaves the check to GUP and uses pin_user_pages_fast"),
            None => (true, "no BTF for pin_user_pages and no file-backed LONGTERM rule in GUP: io_uring checks the VMAs itself with pin_user_pages"),
        };
        reasons.insert("io_uring_api".to_string(), why.to_string());
        reasons.insert(
            "io_uring_coalesces".to_string(),
            if caps.io_uring_coalesces {
                "struct io_mapped_ubuf has folio_shift (BTF) or the kernel has io_check_coalesce_buffer: a fixed buffer in large folios keeps one pin per folio".to_string()
            } else {
                "no io_mapped_ubuf.folio_shift in BTF and no io_check_coalesce_buffer in /proc/kallsyms: io_uring keeps one pin per page".to_string()
            },
        );
        KernelProfile {
            kernel: plan.kernel.clone(),
            longterm_file_rule: caps.longterm_file_rule,
            unshare_read_only_pins: true,
            zero_page_counted: false,
            direct_io_pins: caps.direct_io_pins,
            io_uring_api: if io_uring_checks_file_vmas { Api::PinUserPages } else { Api::PinUserPagesFast },
            io_uring_checks_file_vmas,
            io_uring_coalesces: caps.io_uring_coalesces,
            has_pin_fast_only: plan.hook(Api::PinUserPagesFastOnly).status != HookStatus::Absent,
            reasons,
            mutation: None,
        }
    }

    /// A 6.12-like profile, for tests.
    pub fn modern() -> KernelProfile {
        KernelProfile {
            kernel: "model-6.12".into(),
            longterm_file_rule: true,
            unshare_read_only_pins: true,
            zero_page_counted: false,
            direct_io_pins: true,
            io_uring_api: Api::PinUserPagesFast,
            io_uring_checks_file_vmas: false,
            io_uring_coalesces: true,
            has_pin_fast_only: false,
            reasons: BTreeMap::new(),
            mutation: None,
        }
    }

    /// A 6.1-like profile, for tests.
    pub fn legacy() -> KernelProfile {
        KernelProfile {
            kernel: "model-6.1".into(),
            longterm_file_rule: false,
            direct_io_pins: false,
            io_uring_api: Api::PinUserPages,
            io_uring_checks_file_vmas: true,
            io_uring_coalesces: false,
            has_pin_fast_only: true,
            ..Self::modern()
        }
    }

    /// The same profile with a deliberately wrong rule.
    pub fn with_mutation(mut self, m: Mutation) -> KernelProfile {
        self.mutation = Some(m);
        self
    }

    /// Whether the fast path applies the file-backed LONGTERM refusal.
    pub(crate) fn fast_longterm_file_rule(&self) -> bool {
        self.longterm_file_rule && self.mutation != Some(Mutation::FastPathAllowsLongtermFile)
    }

    /// Whether read-only pins unshare.
    pub(crate) fn unshares(&self) -> bool {
        self.unshare_read_only_pins && self.mutation != Some(Mutation::NoUnshareForReadOnlyPins)
    }

    /// Whether zero-page pins are counted.
    pub(crate) fn counts_zero_page(&self) -> bool {
        self.zero_page_counted || self.mutation == Some(Mutation::ZeroPageCounted)
    }

    /// Whether a refusal after the grab leaves a transient pin.
    pub(crate) fn transient_pins(&self) -> bool {
        self.mutation != Some(Mutation::NoTransientPins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::btf::tests::Builder, kernel::btf::KernelBtf, kernel::kallsyms::Kallsyms};

    fn kallsyms(names: &[&str]) -> Kallsyms {
        Kallsyms::with_functions(names)
    }

    fn btf(pin_user_pages: &[&str]) -> KernelBtf {
        let mut b = Builder::new();
        let long = b.int();
        b.func("pin_user_pages", pin_user_pages, long);
        KernelBtf::parse(&b.build()).expect("valid")
    }

    #[test]
    fn a_61_like_kernel() {
        let k = kallsyms(&["pin_user_pages", "pin_user_pages_fast", "pin_user_pages_fast_only"]);
        let b = btf(&["start", "nr_pages", "gup_flags", "pages", "vmas"]);
        let plan = ProbePlan::resolve("6.1.0-test".into(), Ok(&b), &k);
        let p = KernelProfile::from_plan(&plan);
        assert!(!p.longterm_file_rule);
        assert!(p.io_uring_checks_file_vmas);
        assert_eq!(p.io_uring_api, Api::PinUserPages);
        assert!(p.has_pin_fast_only);
        assert!(!p.direct_io_pins);
        assert!(!p.io_uring_coalesces);
    }

    #[test]
    fn a_612_like_kernel() {
        let k = kallsyms(&["pin_user_pages", "pin_user_pages_fast", "gup_fast_folio_allowed", "iov_iter_extract_pages", "io_check_coalesce_buffer"]);
        let b = btf(&["start", "nr_pages", "gup_flags", "pages"]);
        let plan = ProbePlan::resolve("6.12.0-test".into(), Ok(&b), &k);
        let p = KernelProfile::from_plan(&plan);
        assert!(p.longterm_file_rule);
        assert!(p.reasons["longterm_file_rule"].contains("gup_fast_folio_allowed"));
        assert!(!p.io_uring_checks_file_vmas);
        assert_eq!(p.io_uring_api, Api::PinUserPagesFast);
        assert!(p.direct_io_pins && p.io_uring_coalesces && !p.has_pin_fast_only);
        // The inlined fast-path check: BTF alone tells.
        let plan = ProbePlan::resolve("6.6-test".into(), Ok(&b), &kallsyms(&["pin_user_pages"]));
        assert!(KernelProfile::from_plan(&plan).longterm_file_rule);
    }

    #[test]
    fn coalescing_from_btf_when_inlined() {
        let mut b = Builder::new();
        let int = b.int();
        b.func("pin_user_pages", &["start", "nr_pages", "gup_flags", "pages"], int);
        b.composite("io_mapped_ubuf", false, 32, &[("ubuf", int, 0), ("folio_shift", int, 128)]);
        let b = KernelBtf::parse(&b.build()).expect("valid");
        let plan = ProbePlan::resolve("6.12-test".into(), Ok(&b), &kallsyms(&["pin_user_pages", "gup_fast_folio_allowed"]));
        assert!(KernelProfile::from_plan(&plan).io_uring_coalesces);
    }

    #[test]
    fn round_trips_through_json() {
        let p = KernelProfile::legacy().with_mutation(Mutation::ZeroPageCounted);
        let back: KernelProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
