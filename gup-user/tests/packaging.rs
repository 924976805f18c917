//! The systemd unit: `systemd-analyze verify` accepts it (through
//! packaging/verify-unit.sh, which needs no running systemd), and it grants
//! what gupwatch needs to attach and to shed its capabilities afterwards.

use std::path::Path;
use std::process::Command;

fn packaging() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging"))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let out = Command::new("sh")
        .arg(packaging().join("verify-unit.sh"))
        .output()
        .expect("sh runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "verify-unit.sh failed (cargo xtask setup installs systemd's tools):\n{text}");
    assert!(text.contains("systemd-analyze verify: ok"), "{text}");
    // verify prints warnings without failing: none are allowed.
    let noise: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("gupwatch.service") && !l.contains("Overall exposure"))
        .collect();
    assert!(noise.is_empty(), "systemd-analyze complained about the unit:\n{}", noise.join("\n"));
}

#[test]
fn the_unit_grants_attach_and_drop_capabilities() {
    let unit = std::fs::read_to_string(packaging().join("gupwatch.service")).unwrap();
    let caps: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets a bounding set")
        .split_whitespace()
        .collect();
    for need in ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE"] {
        assert!(caps.contains(&need), "{need} missing from {caps:?}");
    }
    assert!(unit.contains("\nNoNewPrivileges=yes"), "no_new_privs");
    assert!(unit.contains("\nExecStart=/usr/bin/gupwatch run"), "runs the daemon");
    // bpf(2) and perf_event_open(2) are outside @system-service.
    let filter = unit.lines().find_map(|l| l.strip_prefix("SystemCallFilter=")).expect("a syscall filter");
    assert!(filter.contains("bpf") && filter.contains("perf_event_open"), "{filter}");
}
