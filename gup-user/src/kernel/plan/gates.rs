//! What gates the `bpf()` calls gupwatch makes after start-up on this
//! kernel: the rules [`crate::kernel::privileges`] keeps capabilities by, so that
//! the kernel's generation is read here, with the rest of the plan, and
//! not there.

/// The kernel's gates on BPF once the probes are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfGates {
    /// CAP_BPF and CAP_PERFMON exist (Linux 5.8+); before them,
    /// CAP_SYS_ADMIN stands for both.
    pub cap_bpf: bool,
    /// `kernel.unprivileged_bpf_disabled` makes every `bpf()` call check a
    /// capability, map reads too (before 5.19; commit c8644cd0efe7 limited
    /// it to map creation and program load).
    pub map_access_checked: bool,
}

impl BpfGates {
    /// The gates of a kernel release (`uname -r`).
    pub fn for_release(release: &str) -> BpfGates {
        // Unknown version: assume the older rules (keeping more, not less).
        let v = crate::kernel::version::release_major_minor(release).unwrap_or((0, 0));
        BpfGates { cap_bpf: v >= (5, 8), map_access_checked: v < (5, 19) }
    }
}
