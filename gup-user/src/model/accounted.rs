//! Pinned memory as the kernel accounts it, per process: what the reduced
//! mode can still say about owners when no probe runs.
//!
//! Two sources, both plain `/proc` reads (no BPF; descriptor links and
//! fdinfo need ptrace read access, so CAP_SYS_PTRACE for a process that
//! holds capabilities gupwatch does not: the reduced mode keeps it):
//!
//! * `VmPin` and `VmLck` of `/proc/PID/status`: the mm's `pinned_vm`
//!   (io_uring registered buffers, RDMA memory registrations, and other
//!   drivers that charge long-term pins to the process) and `locked_vm`
//!   (mlock, and drivers that charge pins as locked memory, VFIO type1).
//! * `UserBufs:` of `/proc/PID/fdinfo/FD` for io_uring descriptors: each
//!   registered buffer's address and length.
//!
//! This is *accounted* memory, not traced calls: it says who holds pins
//! the kernel charged to a process, not who pinned what through which
//! function, and pins no driver charges (direct I/O in flight, most GPU
//! drivers) do not show.
//!
//! The two overlap but neither contains the other: on Debian's 7.2 a root
//! process holding a registered 1 MiB io_uring buffer shows `VmPin: 0 kB`
//! and the buffer in fdinfo (io_uring's accounting did not charge it; why,
//! capability or kernel version, was not pinned down). So a holder's pinned pages are
//! the larger of the two, each a lower bound, and every process's
//! descriptors are looked at (a readlink each, within [`MAX_FDS_PER_SCAN`]
//! per reading), not only those of processes with a `VmPin`.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

use gup_report::{Accounted, Holder};

/// Most bytes read from one `/proc/PID/status` (it is about 1.5 KiB).
const MAX_STATUS_BYTES: u64 = 64 << 10;
/// Most bytes read from one io_uring fdinfo: a ring with thousands of
/// registered files lists them all before its buffers.
const MAX_FDINFO_BYTES: u64 = 4 << 20;
/// Longest fdinfo line kept; longer ones (file paths) are skipped.
const MAX_LINE: usize = 4096;
/// Most descriptors looked at in one process.
const MAX_FDS_PER_PROCESS: usize = 65_536;
/// Most descriptors looked at in one reading, over all processes: bounds
/// the cost of a reading on a host with very many open files.
pub const MAX_FDS_PER_SCAN: usize = 1 << 18;
/// Most holders kept per reading (largest first).
pub const MAX_HOLDERS: usize = 4096;

/// Why a `/proc` file could not be read as expected.
#[derive(Debug, thiserror::Error)]
pub enum AccountedError {
    /// A line did not have the expected form.
    #[error("{what}: line {line}: {why}")]
    Malformed {
        /// Which file (`status`, `io_uring fdinfo`).
        what: &'static str,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        why: String,
    },
    /// A required field was missing.
    #[error("{what}: no {field} line")]
    Missing {
        /// Which file.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Reading failed.
    #[error("{what}: {source}")]
    Io {
        /// Which file.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What `/proc/PID/status` says about a process's pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPins {
    /// `Name:` (the comm, escaped by the kernel).
    pub name: String,
    /// `VmPin:` in bytes (0 for kernel threads, which have no mm).
    pub pinned_bytes: u64,
    /// `VmLck:` in bytes.
    pub locked_bytes: u64,
    /// Whether the process has user memory (a `VmSize:` line); kernel
    /// threads have none, nor descriptors worth reading.
    pub has_mm: bool,
}

/// A `kB` value of a status line (`"    1024 kB"`), in bytes.
fn kib_value(v: &str) -> Result<u64, String> {
    let n = v.trim().strip_suffix("kB").ok_or_else(|| format!("{:?} does not end in kB", v.trim()))?;
    let n: u64 = n.trim().parse().map_err(|_| format!("{:?} is not a number of kB", n.trim()))?;
    n.checked_mul(1024).ok_or_else(|| format!("{n} kB overflows"))
}

/// Parses `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Result<StatusPins, AccountedError> {
    const WHAT: &str = "status";
    let (mut name, mut pinned, mut locked, mut has_mm) = (None, 0, 0, false);
    for (i, line) in text.lines().enumerate() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let bad = |why| AccountedError::Malformed { what: WHAT, line: i + 1, why };
        match key {
            "Name" => name = Some(value.trim_start_matches(['\t', ' ']).to_string()),
            "VmPin" => pinned = kib_value(value).map_err(bad)?,
            "VmLck" => locked = kib_value(value).map_err(bad)?,
            "VmSize" => has_mm = true,
            _ => {}
        }
    }
    let name = name.ok_or(AccountedError::Missing { what: WHAT, field: "Name" })?;
    Ok(StatusPins { name, pinned_bytes: pinned, locked_bytes: locked, has_mm })
}

/// The registered buffers of one io_uring, from its fdinfo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringBufs {
    /// The count on the `UserBufs:` line (slots, used or not).
    pub declared: u32,
    /// Buffers listed with an address and length.
    pub listed: u32,
    /// Their lengths, summed.
    pub bytes: u64,
    /// Pages they span, summed.
    pub pages: u64,
}

/// Pages spanned by `len` bytes at `addr`.
fn span_pages(addr: u64, len: u64, page: u64) -> Option<u64> {
    if len == 0 {
        return Some(0);
    }
    let end = addr.checked_add(len)?;
    Some(end.div_ceil(page) - addr / page)
}

/// One `UserBufs` entry: `"    0: 0x7f0000001000/1048576"` or
/// `"    1: <none>"` (an empty slot). `Ok(None)` when the line is not an
/// entry at all (the next section).
fn parse_buf_entry(line: &str) -> Result<Option<Option<(u64, u64)>>, String> {
    let Some((idx, rest)) = line.trim_start().split_once(':') else { return Ok(None) };
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let rest = rest.trim();
    if rest == "<none>" {
        return Ok(Some(None));
    }
    let (addr, len) = rest.split_once('/').ok_or_else(|| format!("buffer {rest:?} is not ADDRESS/LENGTH"))?;
    let addr = addr
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("buffer address {addr:?} is not 0x-hex"))?;
    let len: u64 = len.parse().map_err(|_| format!("buffer length {len:?} is not a number"))?;
    Ok(Some(Some((addr, len))))
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without the
/// newline); a longer line is consumed and reported as `Some(false)`.
/// `None` at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if buf.len() <= MAX_LINE {
        return Ok(Some(true)); // the last line, without a newline
    }
    // Too long: skip to its end without keeping it.
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(p) => {
                r.consume(p + 1);
                break;
            }
            None => {
                let l = chunk.len();
                r.consume(l);
            }
        }
    }
    Ok(Some(false))
}

/// Parses an fdinfo stream; `Ok(None)` when it has no `UserBufs:` line
/// (not an io_uring, or a kernel that does not list them). Reads at most
/// [`MAX_FDINFO_BYTES`], one bounded line at a time. A kernel that could
/// not take the ring's lock prints the count without the entries, so
/// `listed` can be below `declared`.
pub fn parse_uring_fdinfo(r: impl Read, page_size: u64) -> Result<Option<UringBufs>, AccountedError> {
    const WHAT: &str = "io_uring fdinfo";
    let page = page_size.max(1);
    let mut r = BufReader::new(r.take(MAX_FDINFO_BYTES));
    let mut buf = Vec::new();
    let mut out: Option<UringBufs> = None;
    let mut in_bufs = false;
    let mut line_no = 0;
    while let Some(whole) = next_line(&mut r, &mut buf).map_err(|source| AccountedError::Io { what: WHAT, source })? {
        line_no += 1;
        let bad = |why: String| AccountedError::Malformed { what: WHAT, line: line_no, why };
        if !whole {
            in_bufs = false;
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some(n) = line.strip_prefix("UserBufs:") {
            let declared = n.trim().parse().map_err(|_| bad(format!("UserBufs count {:?} is not a number", n.trim())))?;
            out = Some(UringBufs { declared, ..UringBufs::default() });
            in_bufs = true;
            continue;
        }
        if !in_bufs {
            continue;
        }
        match parse_buf_entry(&line).map_err(bad)? {
            None => in_bufs = false,
            Some(None) => {}
            Some(Some((addr, len))) => {
                let b = out.get_or_insert_with(UringBufs::default);
                let pages = span_pages(addr, len, page).ok_or_else(|| bad(format!("buffer 0x{addr:x}/{len} wraps")))?;
                b.listed = b.listed.saturating_add(1);
                b.bytes = b.bytes.saturating_add(len);
                b.pages = b.pages.saturating_add(pages);
            }
        }
    }
    Ok(out)
}

/// The value of [`Accounted::source`].
pub const SOURCE: &str = "accounted";

/// Whether an error means the process (or its descriptor) went away.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// Sums the registered buffers of every io_uring descriptor of `pid`;
/// what cannot be read is counted in `acc.unreadable`, except when the
/// process or descriptor is gone (then it holds nothing any more).
fn uring_buffers(proc_root: &Path, pid: u32, page: u64, acc: &mut Accounted) -> UringBufs {
    let mut total = UringBufs::default();
    let dir = proc_root.join(pid.to_string());
    let fds = match fs::read_dir(dir.join("fd")) {
        Ok(f) => f,
        Err(e) if vanished(&e) => return total,
        Err(_) => {
            acc.unreadable += 1;
            return total;
        }
    };
    for (n, fd) in fds.flatten().enumerate() {
        if n >= MAX_FDS_PER_PROCESS || acc.fds >= MAX_FDS_PER_SCAN as u64 {
            acc.truncated = true;
            break;
        }
        acc.fds += 1;
        // Needs ptrace read access to the process (CAP_SYS_PTRACE for one
        // with capabilities gupwatch lacks): refused for one descriptor,
        // refused for all of them, so the process counts once.
        match fs::read_link(fd.path()) {
            Ok(t) if t.as_os_str() == "anon_inode:[io_uring]" => {}
            Ok(_) => continue,
            Err(e) if vanished(&e) => continue,
            Err(_) => {
                acc.unreadable += 1;
                break;
            }
        }
        let info = dir.join("fdinfo").join(fd.file_name());
        let parsed = match fs::File::open(&info) {
            Ok(f) => parse_uring_fdinfo(f, page),
            Err(e) if vanished(&e) => continue,
            Err(_) => {
                acc.unreadable += 1;
                continue;
            }
        };
        match parsed {
            Ok(Some(b)) => {
                total.declared = total.declared.saturating_add(b.declared);
                total.listed = total.listed.saturating_add(b.listed);
                total.bytes = total.bytes.saturating_add(b.bytes);
                total.pages = total.pages.saturating_add(b.pages);
            }
            Ok(None) => {}
            Err(_) => acc.unreadable += 1,
        }
    }
    total
}

/// Reads every process under `proc_root` (normally `/proc`).
pub fn scan(proc_root: &Path) -> Accounted {
    let page = page_size();
    let mut acc = Accounted { source: SOURCE.into(), ..Accounted::default() };
    let Ok(entries) = fs::read_dir(proc_root) else {
        acc.unreadable += 1;
        return acc;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let text = match fs::File::open(e.path().join("status")) {
            Ok(f) => {
                let mut s = String::new();
                match f.take(MAX_STATUS_BYTES).read_to_string(&mut s) {
                    Ok(_) => s,
                    Err(e) if vanished(&e) => continue,
                    Err(_) => {
                        acc.unreadable += 1;
                        continue;
                    }
                }
            }
            Err(e) if vanished(&e) => continue,
            Err(_) => {
                acc.unreadable += 1;
                continue;
            }
        };
        acc.processes += 1;
        let Ok(st) = parse_status(&text) else {
            acc.unreadable += 1;
            continue;
        };
        let uring = if st.has_mm { uring_buffers(proc_root, pid, page, &mut acc) } else { UringBufs::default() };
        if st.pinned_bytes == 0 && st.locked_bytes == 0 && uring.listed == 0 {
            continue;
        }
        let pinned_pages = (st.pinned_bytes / page).max(uring.pages);
        acc.holders.push(Holder {
            pid,
            comm: st.name,
            pinned_pages,
            pinned_bytes: pinned_pages.saturating_mul(page),
            vm_pin_bytes: st.pinned_bytes,
            locked_bytes: st.locked_bytes,
            io_uring_buffers: uring.listed,
            io_uring_bytes: uring.bytes,
            io_uring_pages: uring.pages,
        });
    }
    acc.holders.sort_by(|a, b| {
        b.pinned_pages
            .cmp(&a.pinned_pages)
            .then(b.io_uring_bytes.cmp(&a.io_uring_bytes))
            .then(b.locked_bytes.cmp(&a.locked_bytes))
            .then(a.pid.cmp(&b.pid))
    });
    if acc.holders.len() > MAX_HOLDERS {
        acc.holders.truncate(MAX_HOLDERS);
        acc.truncated = true;
    }
    acc
}

/// Human-readable bytes (`1.0M`, `512K`, `0`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The holders as a text table (the `--plain` reduced mode prints it each
/// interval), at most `limit` rows.
pub fn render_table(a: &Accounted, limit: usize) -> String {
    let mut s = format!(
        "accounted pinned memory (kernel per-process charges from /proc/PID/status VmPin/VmLck and io_uring fdinfo; not traced): {} holders of {} processes{}{}\n",
        a.holders.len(),
        a.processes,
        if a.unreadable > 0 { format!(", {} unreadable", a.unreadable) } else { String::new() },
        if a.truncated { ", some left out" } else { "" }
    );
    s += &format!(
        "{:>8} {:<16} {:>12} {:>9} {:>9} {:>10} {:>11}\n",
        "PID", "COMM", "PINNED_PAGES", "VMPIN", "VMLCK", "URING_BUFS", "URING_PAGES"
    );
    for h in a.holders.iter().take(limit) {
        s += &format!(
            "{:>8} {:<16} {:>12} {:>9} {:>9} {:>10} {:>11}\n",
            h.pid,
            h.comm,
            h.pinned_pages,
            human_bytes(h.vm_pin_bytes),
            human_bytes(h.locked_bytes),
            h.io_uring_buffers,
            h.io_uring_pages
        );
    }
    s
}

#[cfg(test)]
mod tests;
