use super::*;

/// `/proc/PID/status` of a process holding a registered 1 MiB io_uring
/// buffer (Debian 7.2, trimmed).
const STATUS: &str = "Name:\tgupwatch\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t201\nPid:\t201\n\
VmPeak:\t   12000 kB\nVmSize:\t   11800 kB\nVmLck:\t       0 kB\nVmPin:\t    1024 kB\nVmHWM:\t    4000 kB\n\
Threads:\t1\n";

/// fdinfo of an io_uring with one registered buffer, in the 6.x/7.x form.
const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1054\nSqMask:\t0x7\nSqHead:\t0\n\
SqTail:\t0\nCachedSqHead:\t0\nCqMask:\t0xf\nCqHead:\t0\nCqTail:\t0\nCachedCqTail:\t0\nSQEs:\t0\nCQEs:\t0\n\
SqThread:\t-1\nSqThreadCpu:\t-1\nSqTotalTime:\t0\nSqWorkTime:\t0\nUserFiles:\t2\n    0: data.bin\n    1: <none>\n\
UserBufs:\t3\n    0: 0x7f3a5c200000/1048576\n    1: <none>\n    2: 0x7f3a5c300800/4096\nPollList:\nCqOverflowList:\n";

#[test]
fn status_gives_name_and_pinned_bytes() {
    let s = parse_status(STATUS).expect("parses");
    assert_eq!(s, StatusPins { name: "gupwatch".into(), pinned_bytes: 1 << 20, locked_bytes: 0, has_mm: true });
    // Kernel threads have no Vm* lines: nothing held, not an error.
    let k = parse_status("Name:\tkworker/0:1\nState:\tI (idle)\n").expect("parses");
    assert_eq!((k.pinned_bytes, k.locked_bytes, k.has_mm), (0, 0, false));
    // Names keep inner spaces.
    assert_eq!(parse_status("Name:\ttmux: server\n").map(|s| s.name).ok().as_deref(), Some("tmux: server"));
}

#[test]
fn malformed_status_is_a_clear_error() {
    let e = parse_status("Name:\tx\nVmPin:\t  12 MB\n").unwrap_err().to_string();
    assert_eq!(e, "status: line 2: \"12 MB\" does not end in kB");
    let e = parse_status("Name:\tx\nVmLck:\tlots kB\n").unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("not a number"), "{e}");
    let e = parse_status("Name:\tx\nVmPin:\t99999999999999999999 kB\n").unwrap_err().to_string();
    assert!(e.contains("not a number"), "{e}");
    let e = parse_status("Name:\tx\nVmPin:\t18446744073709551615 kB\n").unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    assert_eq!(parse_status("VmPin:\t0 kB\n").unwrap_err().to_string(), "status: no Name line");
    assert!(parse_status("").is_err());
    assert!(parse_status("\u{0}\u{ffff}:::\n\n").is_err());
}

#[test]
fn fdinfo_lists_registered_buffers() {
    let b = parse_uring_fdinfo(FDINFO.as_bytes(), 4096).expect("parses").expect("an io_uring");
    assert_eq!(b.declared, 3);
    assert_eq!(b.listed, 2, "empty slots are not buffers");
    assert_eq!(b.bytes, (1 << 20) + 4096);
    // 256 pages, plus an unaligned 4 KiB that straddles two.
    assert_eq!(b.pages, 256 + 2);
    // UserFiles entries look like buffer entries but are not counted.
    assert_eq!(parse_uring_fdinfo("UserFiles:\t1\n    0: 0x10/4096\n".as_bytes(), 4096).unwrap(), None);
}

#[test]
fn fdinfo_without_buffers_or_without_the_lock() {
    // Not an io_uring (an eventfd's fdinfo).
    assert_eq!(parse_uring_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1\neventfd-count:    0\n".as_bytes(), 4096).unwrap(), None);
    // The kernel could not take the ring's lock: the count, no entries.
    let b = parse_uring_fdinfo("UserBufs:\t4\nPollList:\n".as_bytes(), 4096).unwrap().unwrap();
    assert_eq!((b.declared, b.listed, b.bytes), (4, 0, 0));
    // Last line without a newline.
    let b = parse_uring_fdinfo("UserBufs:\t1\n    0: 0x1000/8192".as_bytes(), 4096).unwrap().unwrap();
    assert_eq!((b.listed, b.pages), (1, 2));
}

#[test]
fn malformed_fdinfo_is_a_clear_error() {
    let e = parse_uring_fdinfo("UserBufs:\tmany\n".as_bytes(), 4096).unwrap_err().to_string();
    assert_eq!(e, "io_uring fdinfo: line 1: UserBufs count \"many\" is not a number");
    let e = parse_uring_fdinfo("UserBufs:\t1\n    0: 0xzz/4096\n".as_bytes(), 4096).unwrap_err().to_string();
    assert_eq!(e, "io_uring fdinfo: line 2: buffer address \"0xzz\" is not 0x-hex");
    let e = parse_uring_fdinfo("UserBufs:\t1\n    0: 0x1000\n".as_bytes(), 4096).unwrap_err().to_string();
    assert!(e.contains("not ADDRESS/LENGTH"), "{e}");
    let e = parse_uring_fdinfo("UserBufs:\t1\n    0: 0x1000/-1\n".as_bytes(), 4096).unwrap_err().to_string();
    assert!(e.contains("length \"-1\""), "{e}");
    let e = parse_uring_fdinfo("UserBufs:\t1\n    0: 0xffffffffffffffff/4096\n".as_bytes(), 4096).unwrap_err().to_string();
    assert!(e.contains("wraps"), "{e}");
    // Invalid UTF-8 and a zero page size do not panic.
    assert!(parse_uring_fdinfo(&b"UserBufs:\t1\n    0: 0x\xff/1\n"[..], 0).is_err());
    assert!(parse_uring_fdinfo(&b"\xff\xfe\x00"[..], 4096).unwrap().is_none());
}

#[test]
fn huge_fdinfo_lines_and_files_stay_bounded() {
    // A path longer than any line kept, then the buffers.
    let mut text = format!("UserFiles:\t1\n    0: {}\n", "a".repeat(MAX_LINE * 3));
    text += "UserBufs:\t1\n    0: 0x2000/4096\n";
    let b = parse_uring_fdinfo(text.as_bytes(), 4096).unwrap().unwrap();
    assert_eq!((b.listed, b.pages), (1, 1));
    // Endless entries: reading stops at MAX_FDINFO_BYTES.
    struct Endless(u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let line = if self.0 == 0 { "UserBufs:\t1\n".to_string() } else { "    1: 0x1000/4096\n".to_string() };
            self.0 += 1;
            let n = line.len().min(buf.len());
            buf[..n].copy_from_slice(&line.as_bytes()[..n]);
            Ok(n)
        }
    }
    let b = parse_uring_fdinfo(Endless(0), 4096).unwrap().unwrap();
    assert!(u64::from(b.listed) < MAX_FDINFO_BYTES / 10, "{b:?}");
}

/// A fake /proc: one holder with an io_uring, a kernel thread, an
/// mlocking process, a vanished pid directory and a broken status; and a
/// root-like holder whose buffer is not charged to VmPin (as on 7.2).
#[test]
fn scan_reads_a_proc_tree() {
    let root = std::env::temp_dir().join(format!("gupwatch-accounted-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let p = |pid: &str| root.join(pid);
    fs::create_dir_all(p("201").join("fd")).unwrap();
    fs::create_dir_all(p("201").join("fdinfo")).unwrap();
    fs::write(p("201").join("status"), STATUS).unwrap();
    std::os::unix::fs::symlink("anon_inode:[io_uring]", p("201").join("fd").join("5")).unwrap();
    std::os::unix::fs::symlink("/dev/null", p("201").join("fd").join("0")).unwrap();
    fs::write(p("201").join("fdinfo").join("5"), FDINFO).unwrap();
    fs::write(p("201").join("fdinfo").join("0"), "pos:\t0\n").unwrap();
    fs::create_dir_all(p("2")).unwrap();
    fs::write(p("2").join("status"), "Name:\tkthreadd\n").unwrap();
    fs::create_dir_all(p("300")).unwrap();
    fs::write(p("300").join("status"), "Name:\tgpg-agent\nVmLck:\t 64 kB\nVmPin:\t 0 kB\n").unwrap();
    fs::create_dir_all(p("400")).unwrap(); // exited: no status
    fs::create_dir_all(p("500")).unwrap();
    fs::write(p("500").join("status"), "Name:\tx\nVmPin:\tgarbage\n").unwrap();
    fs::create_dir_all(p("self")).unwrap();
    fs::create_dir_all(p("600").join("fd")).unwrap();
    fs::create_dir_all(p("600").join("fdinfo")).unwrap();
    fs::write(p("600").join("status"), "Name:\taa-holder\nVmSize:\t 9000 kB\nVmLck:\t 0 kB\nVmPin:\t 0 kB\n").unwrap();
    std::os::unix::fs::symlink("anon_inode:[io_uring]", p("600").join("fd").join("3")).unwrap();
    fs::write(p("600").join("fdinfo").join("3"), "UserFiles:\t0\nUserBufs:\t1\n    0: 0x7fb3ff647000/1048576\nPollList:\n").unwrap();
    let a = scan(&root);
    let _ = fs::remove_dir_all(&root);
    assert_eq!(a.source, SOURCE);
    assert_eq!(a.processes, 5, "{a:?}");
    assert_eq!(a.unreadable, 1, "the broken status, not the vanished pid: {a:?}");
    assert_eq!(a.holders.len(), 3, "{a:?}");
    let h = &a.holders[0];
    assert_eq!((h.pid, h.comm.as_str(), h.vm_pin_bytes, h.io_uring_buffers, h.io_uring_bytes), (201, "gupwatch", 1 << 20, 2, (1 << 20) + 4096));
    // The larger of VmPin (256 pages) and the buffers' 258.
    assert_eq!(h.pinned_pages, 258);
    assert_eq!(h.pinned_bytes, 258 * page_size());
    assert_eq!(a.fds, 3, "two of 201, one of 600");
    let r = &a.holders[1];
    assert_eq!((r.pid, r.vm_pin_bytes, r.pinned_pages, r.io_uring_pages), (600, 0, 256, 256), "uncharged buffer: {a:?}");
    assert_eq!((a.holders[2].comm.as_str(), a.holders[2].locked_bytes), ("gpg-agent", 64 << 10));
    let table = render_table(&a, 10);
    assert!(table.contains("not traced"), "{table}");
    assert!(table.lines().any(|l| l.split_whitespace().take(3).eq(["201", "gupwatch", "258"])), "{table}");
    // The document round-trips (one set of types for /api/snapshot and the view).
    let back: Accounted = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}

#[test]
fn bytes_read_as_people_do() {
    assert_eq!(human_bytes(0), "0");
    assert_eq!(human_bytes(1023), "1023");
    assert_eq!(human_bytes(1 << 20), "1.0M");
    assert_eq!(human_bytes(u64::MAX), "16.0E");
}
