//! Who pins, as the documents name it: the subsystem and the call site
//! of a stack. gup-user's attribution (`model::attribution`) finds them
//! in kernel stacks; the leak report and the metrics carry them.

use serde::{Deserialize, Serialize};

/// A kernel subsystem that pins user memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subsystem {
    /// io_uring fixed buffers.
    IoUring,
    /// Block and iomap direct I/O.
    DirectIo,
    /// process_vm_readv/writev.
    ProcessVm,
    /// Intel i915 GPU userptr objects.
    I915,
    /// Other GPU and accelerator drivers (NVIDIA, AMD, Intel Xe, Habana...),
    /// recognised by their kernel module.
    Gpu,
    /// RDMA memory registration.
    Rdma,
    /// VFIO device DMA mappings.
    Vfio,
    /// udmabuf / memfd pinning.
    Udmabuf,
    /// Anything else (the caller symbol still says who); also what a
    /// subsystem read back from a newer gupwatch's report that this one
    /// does not know becomes.
    #[serde(other)]
    Other,
}

impl Subsystem {
    /// The label value used in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Subsystem::IoUring => "io_uring",
            Subsystem::DirectIo => "direct-io",
            Subsystem::ProcessVm => "process_vm",
            Subsystem::I915 => "i915",
            Subsystem::Gpu => "gpu",
            Subsystem::Rdma => "rdma",
            Subsystem::Vfio => "vfio",
            Subsystem::Udmabuf => "udmabuf",
            Subsystem::Other => "other",
        }
    }

    /// The subsystem a kernel function belongs to, if it is a known GUP user.
    pub fn of_function(f: &str) -> Option<Subsystem> {
        const RULES: &[(&str, Subsystem)] = &[
            ("io_pin_pages", Subsystem::IoUring),
            ("io_sqe_buffer", Subsystem::IoUring),
            ("io_register_", Subsystem::IoUring),
            ("io_buffer_", Subsystem::IoUring),
            ("io_rsrc_", Subsystem::IoUring),
            ("__io_uring_register", Subsystem::IoUring),
            ("io_ring_exit_work", Subsystem::IoUring),
            ("io_free_region", Subsystem::IoUring),
            ("bio_iov_iter_get_pages", Subsystem::DirectIo),
            ("__bio_iov_iter_get_pages", Subsystem::DirectIo),
            ("bio_release_pages", Subsystem::DirectIo),
            ("__bio_release_pages", Subsystem::DirectIo),
            ("iomap_dio_", Subsystem::DirectIo),
            ("__blockdev_direct_IO", Subsystem::DirectIo),
            ("blkdev_direct_IO", Subsystem::DirectIo),
            ("__iomap_dio_rw", Subsystem::DirectIo),
            ("process_vm_rw", Subsystem::ProcessVm),
            ("i915_", Subsystem::I915),
            ("ib_umem_", Subsystem::Rdma),
            ("vfio_", Subsystem::Vfio),
            ("udmabuf_", Subsystem::Udmabuf),
        ];
        RULES.iter().find(|(p, _)| f.starts_with(p)).map(|(_, s)| *s)
    }
}

/// The caller and subsystem of one call stack (innermost frame first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The first frame outside the GUP machinery, or `unknown`.
    pub function: String,
    /// The subsystem the stack belongs to.
    pub subsystem: Subsystem,
    /// The driver module of the stack: the innermost `DRIVER_MODULES` (gup-user's attribution)
    /// driver frame, else its innermost core-module frame, else the module
    /// of the caller's function (any module), else `None` (vmlinux).
    #[serde(default)]
    pub module: Option<String>,
}
