//! The `gupwatch doctor --json` document (schema [`SCHEMA`]): written
//! by gup-user's `diagnose::doctor` from the facts it gathers on a host,
//! read by xtask's test suite and canary and by gup-user's host test.
//! gup-user's `diagnose/doctor.rs` documents the JSON's shape.

use serde::{Deserialize, Serialize};

/// Version of the JSON document; bumped only when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// How a finding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; changes nothing.
    Info,
    /// gupwatch runs, with less.
    Warn,
    /// Something gupwatch needs is missing.
    Fail,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable identifier: `privileges`, `kernel_btf`, `lockdown`, `bpf_jit`,
    /// `kallsyms`, `tracepoint`, `fentry`, `kprobe`, `gup_functions`,
    /// `i915`, `vmstat`, `memlock`, `probe_plan`, `kernel`.
    pub id: String,
    /// How it stands.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What would fix it (none when fine).
    pub fix: Option<String>,
}

/// What `gupwatch` can do here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every GUP function the kernel has is hooked.
    Full,
    /// Some hooks attached, some did not.
    Partial,
    /// No hook; the kernel's `/proc/vmstat` counters only.
    Reduced,
    /// Neither.
    CannotRun,
}

impl Verdict {
    /// The exit status of `gupwatch doctor`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Full => 0,
            Verdict::Partial | Verdict::Reduced => 1,
            Verdict::CannotRun => 2,
        }
    }
}

/// The result of trying one attach mechanism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Trial {
    /// Loaded and attached.
    Works {
        /// What it was attached to.
        target: String,
    },
    /// Refused.
    Fails {
        /// What it was attached to.
        target: String,
        /// The kernel's answer.
        error: String,
    },
    /// Not tried.
    NotTried {
        /// Why not.
        why: String,
    },
}

impl Trial {
    /// Whether the mechanism loaded and attached.
    pub fn works(&self) -> bool {
        matches!(self, Trial::Works { .. })
    }

    /// The document's `result` tag: `works`, `fails` or `not_tried`.
    pub fn result(&self) -> &'static str {
        match self {
            Trial::Works { .. } => "works",
            Trial::Fails { .. } => "fails",
            Trial::NotTried { .. } => "not_tried",
        }
    }
}

/// The whole plan, loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookFacts {
    /// Functions the kernel has.
    pub present: usize,
    /// Attached.
    pub attached: usize,
    /// Attached with fentry/fexit.
    pub fentry: usize,
    /// Attached with kprobe/kretprobe.
    pub kprobe: usize,
    /// Present but not attached, with the loader's reason.
    pub failed: Vec<FailedHook>,
    /// Functions this kernel does not have.
    pub absent: Vec<String>,
    /// Why the BPF object could not be loaded at all.
    pub load_error: Option<String>,
}

/// A hook that did not attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedHook {
    /// Kernel function.
    pub function: String,
    /// The loader's reason.
    pub error: String,
}

/// What the reduced mode has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReducedMode {
    /// `/proc/vmstat` has `nr_foll_pin_*`.
    pub available: bool,
    /// `nr_foll_pin_acquired`.
    pub acquired: Option<u64>,
    /// `nr_foll_pin_released`.
    pub released: Option<u64>,
    /// Why not.
    pub error: Option<String>,
}

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// This gupwatch.
    pub gupwatch_version: String,
    /// `uname -r`.
    pub kernel: String,
    /// What gupwatch can do here.
    pub verdict: Verdict,
    /// `gupwatch doctor`'s exit status.
    pub exit_code: u8,
    /// One sentence.
    pub summary: String,
    /// Every check, in a fixed order.
    pub findings: Vec<Finding>,
    /// The mechanism trials.
    pub mechanisms: Mechanisms,
    /// The whole plan, loaded.
    pub hooks: Option<HookFacts>,
    /// What works without probes.
    pub reduced_mode: ReducedMode,
}

/// The mechanism trials.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mechanisms {
    /// Tracepoint programs.
    pub tracepoint: Trial,
    /// fentry/fexit (BPF trampolines).
    pub fentry: Trial,
    /// kprobe/kretprobe.
    pub kprobe: Trial,
}

impl Report {
    /// The finding with this id.
    pub fn finding(&self, id: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.id == id)
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = format!("gupwatch doctor on kernel {}\n\n", self.kernel);
        for f in &self.findings {
            let tag = match f.status {
                Status::Ok => " ok ",
                Status::Info => "info",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            s += &format!("  [{tag}] {:<14} {}\n", f.id, f.detail);
            if let Some(fix) = &f.fix {
                s += &format!("         {:<14} fix: {fix}\n", "");
            }
        }
        s += &format!(
            "\nverdict: {} (exit {}): {}\n",
            match self.verdict {
                Verdict::Full => "FULL",
                Verdict::Partial => "PARTIAL",
                Verdict::Reduced => "REDUCED",
                Verdict::CannotRun => "CANNOT RUN",
            },
            self.exit_code,
            self.summary
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Trial;

    #[test]
    fn result_names_the_serialized_tag() {
        for t in [
            Trial::Works { target: "a".into() },
            Trial::Fails { target: "a".into(), error: "EPERM".into() },
            Trial::NotTried { why: "b".into() },
        ] {
            let doc = serde_json::to_string(&t).expect("serializes");
            assert!(doc.contains(&format!("\"result\":\"{}\"", t.result())), "{doc}");
        }
    }
}
