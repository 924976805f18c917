//! VFIO type1 DMA maps: the classic FOLL_LONGTERM pinner. A process that
//! owns a device through VFIO maps its memory for the device's DMA with
//! `VFIO_IOMMU_MAP_DMA`; `vfio_iommu_type1` pins every page with
//! `pin_user_pages_remote(FOLL_LONGTERM)` for as long as the mapping lives,
//! and `VFIO_IOMMU_UNMAP_DMA` (or closing the container) unpins them, one
//! page per `unpin_user_pages_dirty_lock` call.
//!
//! The device is QEMU's `pci-testdev` (1b36:0005), a device only a QEMU
//! guest has, behind QEMU's emulated IOMMU (`-machine q35 -device
//! intel-iommu`, kernel argument `intel_iommu=on`): the scenarios bind it
//! to `vfio-pci` themselves and never touch another device, so on a real
//! host they are simply not reachable. `cargo xtask test`'s VFIO step boots
//! the guest that way (`cargo xtask vm --vfio` by hand).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::*;

/// QEMU's PCI test device, as sysfs spells its ids.
const TESTDEV: (&str, &str) = ("0x1b36", "0x0005");

/// `<linux/vfio.h>`: `_IO(VFIO_TYPE, VFIO_BASE + n)` with `VFIO_TYPE` ';'.
const fn vfio_io(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
const VFIO_API_VERSION: i64 = 0;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

/// Where the buffer lands in the device's I/O address space: any address
/// the IOMMU translates will do; 16 MiB stays clear of the x86 MSI window.
const IOVA: u64 = 16 << 20;

/// What to boot with so the scenarios run.
const HINT: &str = "they need QEMU's pci-testdev behind an emulated IOMMU and the vfio-pci module \
                    (in the VM: cargo xtask vm --vfio)";

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// A VFIO container with the test device's group in it, and the buffer:
/// `VFIO_IOMMU_MAP_DMA` of 1 MiB of this process's memory for QEMU's
/// pci-testdev, and its unmap.
pub(super) struct VfioState {
    container: OwnedFd,
    // Kept open: closing the group takes it out of the container.
    _group: OwnedFd,
    buf: Mapping,
    mapped: bool,
}

/// Map, then unmap, in `run`; or map and keep the mapping past `run` (a
/// long-held pin), unmapped by `cleanup`.
fn variant(held: bool) -> Box<dyn Scenario> {
    let pages = (BUFFER_BYTES / 4096) as u64;
    let spec = if held {
        Spec::pins(
            "vfio_map_dma_held",
            "VFIO_IOMMU_MAP_DMA of 1 MiB for QEMU's pci-testdev, kept mapped after the run (outstanding LONGTERM \
             pins, a long-held leak signal); unmapped at cleanup",
            PinPath::VfioMapDma,
            pages,
            ExpectedPath::Slow,
        )
    } else {
        Spec::pins(
            "vfio_map_dma",
            "VFIO_IOMMU_MAP_DMA of 1 MiB for QEMU's pci-testdev (type1 IOMMU, emulated intel-iommu), then \
             VFIO_IOMMU_UNMAP_DMA: LONGTERM pins by pin_user_pages_remote, released page by page",
            PinPath::VfioMapDma,
            pages,
            ExpectedPath::Slow,
        )
    };
    Box::new(Registered::<VfioState>::new(spec, held))
}

/// The PCI address of QEMU's pci-testdev under `devices`
/// (`/sys/bus/pci/devices`), if the machine has one.
pub(super) fn find_testdev(devices: &Path) -> Option<String> {
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let mut found: Vec<String> = std::fs::read_dir(devices)
        .ok()?
        .flatten()
        .filter(|e| read(e.path().join("vendor")) == TESTDEV.0 && read(e.path().join("device")) == TESTDEV.1)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The IOMMU group number from the target of a device's `iommu_group` link
/// (`../../../kernel/iommu_groups/N`).
pub(super) fn group_number(link: &Path) -> Option<u32> {
    link.file_name()?.to_str()?.parse().ok()
}

/// Binds the test device at `addr` to vfio-pci (unless it is already) and
/// returns its IOMMU group number.
fn bind(scenario: &'static str, addr: &str) -> Result<u32, ScenarioError> {
    let unreachable = |reason: String| ScenarioError::NotReachable { scenario, reason };
    let dev = Path::new("/sys/bus/pci/devices").join(addr);
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(unreachable(format!("the vfio-pci driver is not loaded: {HINT}")));
    }
    let driver = std::fs::read_link(dev.join("driver")).ok();
    match driver.as_deref().and_then(Path::file_name).and_then(|n| n.to_str()) {
        Some("vfio-pci") => {}
        Some(other) => return Err(unreachable(format!("{addr} is bound to {other}, not vfio-pci; left alone"))),
        None => {
            let write = |file: PathBuf, what: &str| {
                std::fs::write(&file, what).map_err(|e| sys_err(scenario, "write(sysfs)", e))
            };
            write(dev.join("driver_override"), "vfio-pci")?;
            write(PathBuf::from("/sys/bus/pci/drivers_probe"), addr)?;
        }
    }
    let link = std::fs::read_link(dev.join("iommu_group"))
        .map_err(|_| unreachable(format!("{addr} is in no IOMMU group (no IOMMU?): {HINT}")))?;
    group_number(&link).ok_or_else(|| unreachable(format!("unreadable IOMMU group link {}", link.display())))
}

fn open_rw(scenario: &'static str, path: &str) -> Result<OwnedFd, ScenarioError> {
    let f: File = OpenOptions::new().read(true).write(true).open(path).map_err(|e| sys_err(scenario, "open(/dev/vfio)", e))?;
    Ok(f.into())
}

/// `ioctl(fd, req, arg)`, its return value or errno.
fn ioctl(fd: &OwnedFd, req: u64, arg: u64) -> io::Result<i64> {
    // SAFETY: every request here takes either a plain integer or a pointer
    // to a `#[repr(C)]` struct (or int) that the caller keeps alive and
    // sized as the kernel's (its `argsz` says so) for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

impl Registrar for VfioState {
    /// Binds the test device, puts its group into a fresh type1 container
    /// and pre-faults the buffer.
    fn open(scenario: &'static str) -> Result<VfioState, ScenarioError> {
        let unreachable = |reason: String| ScenarioError::NotReachable { scenario, reason };
        let addr = find_testdev(Path::new("/sys/bus/pci/devices"))
            .ok_or_else(|| unreachable(format!("no QEMU pci-testdev (1b36:0005) on this machine: {HINT}")))?;
        let group_no = bind(scenario, &addr)?;
        let container = open_rw(scenario, "/dev/vfio/vfio")?;
        let version = ioctl(&container, VFIO_GET_API_VERSION, 0).map_err(|e| sys_err(scenario, "VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(unreachable(format!("VFIO API version {version}, this scenario speaks {VFIO_API_VERSION}")));
        }
        if ioctl(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU).unwrap_or(0) != 1 {
            return Err(unreachable("the kernel's VFIO has no type1v2 IOMMU (vfio_iommu_type1 not loaded?)".into()));
        }
        let group = open_rw(scenario, &format!("/dev/vfio/{group_no}"))?;
        let mut status = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        ioctl(&group, VFIO_GROUP_GET_STATUS, &mut status as *mut GroupStatus as u64)
            .map_err(|e| sys_err(scenario, "VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(unreachable(format!("IOMMU group {group_no} is not viable (another device in it has a host driver)")));
        }
        let cfd = container.as_raw_fd();
        ioctl(&group, VFIO_GROUP_SET_CONTAINER, &cfd as *const i32 as u64)
            .map_err(|e| sys_err(scenario, "VFIO_GROUP_SET_CONTAINER", e))?;
        ioctl(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU).map_err(|e| sys_err(scenario, "VFIO_SET_IOMMU", e))?;
        let buf = Mapping::new_prefaulted(scenario, BUFFER_BYTES, SEED_SOURCE)?;
        Ok(VfioState { container, _group: group, buf, mapped: false })
    }

    fn buffer(&self) -> &Mapping {
        &self.buf
    }

    fn register(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: self.buf.addr() as u64,
            iova: IOVA,
            size: self.buf.len as u64,
        };
        ioctl(&self.container, VFIO_IOMMU_MAP_DMA, &m as *const DmaMap as u64)
            .map_err(|e| sys_err(scenario, "VFIO_IOMMU_MAP_DMA", e))?;
        self.mapped = true;
        Ok(())
    }

    fn unregister(&mut self, scenario: &'static str) -> Result<(), ScenarioError> {
        if !self.mapped {
            return Ok(());
        }
        let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova: IOVA, size: self.buf.len as u64 };
        ioctl(&self.container, VFIO_IOMMU_UNMAP_DMA, &mut u as *mut DmaUnmap as u64)
            .map_err(|e| sys_err(scenario, "VFIO_IOMMU_UNMAP_DMA", e))?;
        self.mapped = false;
        // The kernel writes back how much it unmapped.
        if u.size != self.buf.len as u64 {
            return Err(ScenarioError::NotReachable {
                scenario,
                reason: format!("VFIO_IOMMU_UNMAP_DMA unmapped {} bytes of {}", u.size, self.buf.len),
            });
        }
        Ok(())
    }
}

/// The steps of [`map_raw`], for its failure report.
pub(super) const RAW_STEPS: [&str; 5] =
    ["open(/dev/vfio/vfio)", "open(/dev/vfio/GROUP)", "VFIO_GROUP_SET_CONTAINER", "VFIO_SET_IOMMU", "VFIO_IOMMU_MAP_DMA"];

/// For `vfio_handoff_fork`: binds the test device and checks the
/// container's API, and returns the group's path, NUL-terminated, for the
/// forked creator's raw `open` (the group is not kept open here: it may
/// be open in one process at a time).
pub(super) fn group_path(scenario: &'static str) -> Result<[u8; 32], ScenarioError> {
    let unreachable = |reason: String| ScenarioError::NotReachable { scenario, reason };
    let addr = find_testdev(Path::new("/sys/bus/pci/devices"))
        .ok_or_else(|| unreachable(format!("no QEMU pci-testdev (1b36:0005) on this machine: {HINT}")))?;
    let group_no = bind(scenario, &addr)?;
    let container = open_rw(scenario, "/dev/vfio/vfio")?;
    if ioctl(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU).unwrap_or(0) != 1 {
        return Err(unreachable("the kernel's VFIO has no type1v2 IOMMU (vfio_iommu_type1 not loaded?)".into()));
    }
    let mut path = [0u8; 32];
    let text = format!("/dev/vfio/{group_no}");
    path[..text.len()].copy_from_slice(text.as_bytes());
    Ok(path)
}

/// Opens a container and the group at `group` (a NUL-terminated path),
/// puts the group into it with a type1v2 IOMMU and maps `len` bytes at
/// `addr`: the pins. Both descriptors stay open (inherited by the
/// creator's child). On failure, the index into [`RAW_STEPS`] and errno.
///
/// # Safety
///
/// Only in a forked child: raw calls, no allocation; `addr` is its own
/// faulted-in memory of `len` bytes.
pub(super) unsafe fn map_raw(group: &[u8; 32], addr: u64, len: u64) -> Result<(), (u32, i32)> {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    let container = libc::open(c"/dev/vfio/vfio".as_ptr(), libc::O_RDWR);
    if container < 0 {
        return Err((0, errno()));
    }
    let group = libc::open(group.as_ptr().cast(), libc::O_RDWR);
    if group < 0 {
        return Err((1, errno()));
    }
    if libc::ioctl(group, VFIO_GROUP_SET_CONTAINER as _, &container as *const i32) < 0 {
        return Err((2, errno()));
    }
    if libc::ioctl(container, VFIO_SET_IOMMU as _, VFIO_TYPE1V2_IOMMU) < 0 {
        return Err((3, errno()));
    }
    let m = DmaMap {
        argsz: std::mem::size_of::<DmaMap>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: addr,
        iova: IOVA,
        size: len,
    };
    if libc::ioctl(container, VFIO_IOMMU_MAP_DMA as _, &m as *const DmaMap) < 0 {
        return Err((4, errno()));
    }
    Ok(())
}

/// The family, for `gupwatch check`.
pub(super) fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        variant(false),
        variant(true),
        Box::new(super::handoff::IoUringHandoff::new(super::handoff::HandoffKind::VfioFork)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // <linux/vfio.h> as compiled: _IO(';', 100 + n).
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }

    #[test]
    fn finds_only_the_test_device() {
        let dir = std::env::temp_dir().join(format!("gupwatch-vfio-{}", std::process::id()));
        let dev = |addr: &str, vendor: &str, device: &str| {
            let d = dir.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        };
        dev("0000:00:01.0", "0x8086", "0x0005");
        dev("0000:00:02.0", "0x1b36", "0x0001");
        assert_eq!(find_testdev(&dir), None);
        dev("0000:00:04.0", "0x1b36", "0x0005");
        assert_eq!(find_testdev(&dir).as_deref(), Some("0000:00:04.0"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(group_number(Path::new("../../../kernel/iommu_groups/7")), Some(7));
        assert_eq!(group_number(Path::new("../../../kernel/iommu_groups/x")), None);
    }
}
