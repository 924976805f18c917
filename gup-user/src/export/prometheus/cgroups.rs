//! `gupwatch_cgroup_pinned_pages`: pins held now per cgroup, bounded to
//! the top cgroups plus `other` and `unknown` ([`crate::model::cgroups`]).

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

use super::gauges;
use crate::collect::Reading;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabels {
    cgroup: String,
    unit: String,
    pod_uid: String,
    container_id: String,
}

/// With the leak families: only where pins are tracked.
pub(super) fn cgroup_family(enc: &mut DescriptorEncoder, d: &Reading) -> fmt::Result {
    if d.leaks.is_none() {
        return Ok(());
    }
    gauges(
        enc,
        "gupwatch_cgroup_pinned_pages",
        "Pins held now (tracked since gupwatch started) by the processes of each cgroup v2, with its systemd unit, Kubernetes pod UID and container ID where the path has them; the largest cgroups only, the rest summed under the cgroup label other, pins of several owners or of removed cgroups under unknown.",
        None,
        d.cgroups.iter().map(|c| {
            let labels = CgroupLabels {
                cgroup: c.cgroup.path.clone(),
                unit: c.cgroup.unit.clone().unwrap_or_default(),
                pod_uid: c.cgroup.pod_uid.clone().unwrap_or_default(),
                container_id: c.cgroup.container_id.clone().unwrap_or_default(),
            };
            (labels, i64::try_from(c.pages).unwrap_or(i64::MAX))
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gup_report::CgroupPins;

    use crate::{
        model::cgroups::parse_path,
        export::prometheus::{render, Format},
    };

    #[test]
    fn one_gauge_per_cgroup_with_its_pod_and_container() {
        let mut d = (*crate::collect::fixture::sample()).clone();
        let cid = "2f1b6a0e9c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
        let path = format!("/kubepods/burstable/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/{cid}");
        d.cgroups = vec![
            CgroupPins { cgroup: parse_path(&path), pages: 256 },
            CgroupPins { cgroup: parse_path("/system.slice/qemu.service"), pages: 64 },
        ];
        let text = render(&Arc::new(d), Format::Prometheus);
        assert!(text.contains("# TYPE gupwatch_cgroup_pinned_pages gauge"), "{text}");
        let want = format!(
            r#"gupwatch_cgroup_pinned_pages{{cgroup="{path}",unit="",pod_uid="0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",container_id="{cid}"}} 256"#
        );
        assert!(text.lines().any(|l| l == want), "{text}");
        assert!(text.lines().any(|l| l.contains(r#"unit="qemu.service""#) && l.ends_with(" 64")));
    }
}
