//! Pins held per cgroup, as the documents report them; gup-user's
//! `model::cgroups` names the cgroups and sums the pins.

use serde::{Deserialize, Serialize};

/// What a cgroup path says about who runs in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupInfo {
    /// The path below the cgroup2 root (`/system.slice/nginx.service`).
    pub path: String,
    /// The innermost systemd unit (`nginx.service`, `session-3.scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The Kubernetes pod UID (dashed, as the API shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container ID (64 hex digits) of docker, containerd or CRI-O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// Pins held now by the processes of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPins {
    /// Where the cgroup is and what runs there; the path is
    /// [`OTHER_CGROUP`] for the sum of the cgroups past the top N, and
    /// [`UNKNOWN_CGROUP`] for pins whose cgroup is not known (several
    /// owners share the folio, or the cgroup was removed).
    #[serde(flatten)]
    pub cgroup: CgroupInfo,
    /// Pins held.
    pub pages: u64,
}

/// The path of the series that sums the cgroups past the top N.
pub const OTHER_CGROUP: &str = "other";

/// The path of pins whose cgroup is not known.
pub const UNKNOWN_CGROUP: &str = "unknown";
