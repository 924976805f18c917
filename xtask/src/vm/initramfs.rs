//! The guest's initramfs: a cpio "newc" archive written here (the format
//! the kernel unpacks into its rootfs), holding busybox, gupwatch, the
//! modules and an `/init` script.
//!
//! It is left uncompressed: under TCG the guest would spend longer
//! inflating it than qemu spends reading a few more megabytes.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::vm::modules::Module;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a cpio archive in the SVR4 "newc" format (magic `070701`, no CRC).
///
/// Parent directories are emitted automatically before their first child,
/// because the kernel's unpacker does not create them.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
            dirs: HashSet::new(),
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = clean(path);
        if path.is_empty() || self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | (perm & 0o7777), 2, 0, 0, &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, 0, 0, data)
    }

    /// Adds a symbolic link; its target is stored as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, major, minor, &[])
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        // The trailer has inode 0 like GNU cpio writes it.
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, 0, 0, &[])?;
        // Pad the whole archive to 512 bytes, as cpio(1) does, so that it can
        // be concatenated with other archives.
        let pad = (512 - (self.written % 512)) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmajor: u32,
        rminor: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {dmaj:08X}{dmin:08X}{rmajor:08X}{rminor:08X}{namesize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        self.write(data)?;
        self.pad4()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4)) % 4;
        self.write(&[0u8; 3][..pad as usize])
    }
}

fn clean(path: &str) -> String {
    path.trim_matches('/').to_string()
}

/// Busybox applets to link when `busybox --list` cannot be run.
const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ash", "mount", "umount", "mkdir", "cat", "echo", "poweroff", "reboot", "insmod",
    "lsmod", "ip", "udhcpc", "sleep", "grep", "ls", "dd", "sync", "stty", "uname", "dmesg", "ps",
    "kill", "head", "tail", "wc", "sed", "awk", "cp", "mv", "rm", "ln", "true", "false", "test",
    "[", "env", "df", "free", "find", "xargs", "sort", "uniq", "tr", "cut", "date", "seq",
    "timeout", "hexdump", "stat", "touch", "chmod", "printf", "which", "nproc",
];

/// A file copied from the host into the guest (tmux and what it needs,
/// see [`crate::vm::guesttools`]).
#[derive(Debug, Clone)]
pub struct GuestFile {
    /// Path in the guest, relative to its root.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// Everything that goes into a guest's initramfs.
pub struct Contents<'a> {
    /// Static busybox on the host.
    pub busybox: &'a Path,
    /// Static gupwatch on the host, if any.
    pub gupwatch: Option<&'a Path>,
    /// Modules in load order.
    pub modules: &'a [Module],
    /// Modules shipped but not loaded at boot, in load order; the guest
    /// loads them with `gupwatch-load-deferred`.
    pub deferred: &'a [Module],
    /// The guest's `/init`.
    pub init: &'a str,
    /// The command to run, stored in `/etc/gupwatch/command`.
    pub command: &'a str,
    /// More files (e.g. tmux, its libraries, locale and terminfo).
    pub extra: &'a [GuestFile],
}

/// `/bin/gupwatch-load-deferred`: loads the deferred modules in order,
/// failing on the first that does not load.
const LOAD_DEFERRED: &str = r#"#!/bin/sh
# Loads the modules the initramfs ships but /init did not load.
for m in $(cat /etc/gupwatch/modules.deferred); do
    insmod "/lib/modules/$m" || { echo "gupwatch-load-deferred: insmod $m failed" >&2; exit 1; }
done
echo "gupwatch-load-deferred: loaded $(cat /etc/gupwatch/modules.deferred | tr '\n' ' ')" >&2
"#;

/// Writes the initramfs to `out`.
pub fn write(contents: &Contents, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let io = |e: io::Error| anyhow::Error::new(e).context(format!("writing {}", out.display()));
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "mnt/scratch",
        "etc/gupwatch",
        "lib/modules",
        "var/log",
    ] {
        let perm = if d == "tmp" { 0o1777 } else { 0o755 };
        w.dir(d, perm).map_err(io)?;
    }
    // The kernel opens /dev/console for init's stdio before /init could
    // mount devtmpfs, so the node has to be in the archive.
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    w.char_dev("dev/null", 0o666, 1, 3).map_err(io)?;
    w.char_dev("dev/ttyS0", 0o600, 4, 64).map_err(io)?;
    w.char_dev("dev/ttyS1", 0o600, 4, 65).map_err(io)?;

    let busybox = fs::read(contents.busybox).with_context(|| {
        format!(
            "reading {} (install busybox-static: `cargo xtask setup`)",
            contents.busybox.display()
        )
    })?;
    w.file("bin/busybox", 0o755, &busybox).map_err(io)?;
    for applet in busybox_applets(contents.busybox) {
        if applet != "busybox" && applet != "gupwatch" && !applet.contains('/') {
            w.symlink(&format!("bin/{applet}"), "busybox").map_err(io)?;
        }
    }
    if let Some(g) = contents.gupwatch {
        let data = fs::read(g).with_context(|| format!("reading {}", g.display()))?;
        w.file("bin/gupwatch", 0o755, &data).map_err(io)?;
    }
    // Loaded at boot, in order; shipped for `gupwatch-load-deferred`.
    for (modules, list) in [
        (contents.modules, "etc/gupwatch/modules"),
        (contents.deferred, "etc/gupwatch/modules.deferred"),
    ] {
        let mut names = String::new();
        for m in modules {
            let name = format!("{}.ko", m.name);
            w.file(&format!("lib/modules/{name}"), 0o644, &m.data)
                .map_err(io)?;
            names.push_str(&name);
            names.push('\n');
        }
        w.file(list, 0o644, names.as_bytes()).map_err(io)?;
    }
    w.file("bin/gupwatch-load-deferred", 0o755, LOAD_DEFERRED.as_bytes())
        .map_err(io)?;
    w.file("etc/gupwatch/command", 0o644, contents.command.as_bytes())
        .map_err(io)?;
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io)?;
    w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .map_err(io)?;
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n")
        .map_err(io)?;
    w.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes())
        .map_err(io)?;
    for f in contents.extra {
        w.file(&f.path, f.mode, &f.data).map_err(io)?;
    }
    w.file("init", 0o755, contents.init.as_bytes())
        .map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

fn busybox_applets(busybox: &Path) -> Vec<String> {
    let listed = crate::util::output_lines(Command::new(busybox).arg("--list"));
    if listed.is_empty() {
        FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect()
    } else {
        listed
    }
}

/// udhcpc calls this to apply the lease (busybox ships no default script).
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
"#;

/// Marker lines the init script prints on the console.
#[derive(Debug, Clone)]
pub struct Markers {
    /// Printed as soon as /init runs.
    pub start: String,
    /// Prefix of the exit line; the command's status follows, then `@@`.
    pub exit_prefix: String,
}

impl Markers {
    /// Markers carrying a per-run token, so that nothing a command prints by
    /// accident can pass for them.
    pub fn new(token: &str) -> Markers {
        Markers {
            start: format!("@@gupwatch-init-start:{token}@@"),
            exit_prefix: format!("@@gupwatch-exit:{token}:"),
        }
    }

    /// The exit status in a console line, if the line carries the marker.
    pub fn exit_status(&self, line: &str) -> Option<i32> {
        let rest = &line[line.find(&self.exit_prefix)? + self.exit_prefix.len()..];
        let end = rest.find("@@")?;
        rest[..end].trim().parse().ok()
    }
}

/// Options of the guest's `/init`.
pub struct InitOptions<'a> {
    /// Marker lines.
    pub markers: &'a Markers,
    /// Configure eth0 (QEMU user networking) before running the command.
    pub network: bool,
    /// The device carrying the command's stdout.
    pub stdout_tty: &'a str,
    /// If the command is still running after this many seconds, print every
    /// CPU's backtrace (sysrq-l) and the blocked tasks (sysrq-w) on the
    /// console, so that a run killed by the host's timeout shows where the
    /// guest was stuck.
    pub stall_report_after: Option<u64>,
}

/// The guest's `/init` shell script.
pub fn init_script(o: &InitOptions) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# gupwatch guest init (generated by `cargo xtask vm`).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
# Set by programs shipped from the host (tmux: LANG, LD_LIBRARY_PATH).
[ -r /etc/gupwatch/env ] && . /etc/gupwatch/env
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
"#,
    );
    s.push_str(&format!("echo '{}'\n", o.markers.start));
    s.push_str(
        r#"ulimit -l unlimited
for m in $(cat /etc/gupwatch/modules); do
    insmod "/lib/modules/$m" || echo "gupwatch-init: insmod $m failed" >&2
done
echo "gupwatch-init: modules loaded: $(cat /etc/gupwatch/modules | tr '\n' ' ')"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if mount -t ext4 /dev/vda /mnt/scratch; then
    echo "gupwatch-init: scratch disk /dev/vda mounted on /mnt/scratch"
else
    echo "gupwatch-init: could not mount the scratch disk /dev/vda" >&2
fi
export GUPWATCH_SCRATCH=/mnt/scratch
ip link set lo up
"#,
    );
    if o.network {
        s.push_str(
            r#"ip link set eth0 up
how=dhcp
if ! udhcpc -i eth0 -n -q -t 5 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1; then
    # QEMU's user network always hands out these addresses.
    how=static
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2 dev eth0
fi
echo "gupwatch-init: eth0 $(ip -4 -o addr show eth0 | awk '{print $4}') ($how)"
"#,
        );
    }
    if let Some(secs) = o.stall_report_after {
        s.push_str(&format!(
            r#"(sleep {secs}
 echo "gupwatch-init: the command is still running after {secs} s; backtraces follow" > /dev/console
 echo l > /proc/sysrq-trigger; echo w > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &
"#
        ));
    }
    s.push_str(&format!(
        r#"stty -F {tty} raw -echo 2>/dev/null
cd /mnt/scratch
sh -c "$(cat /etc/gupwatch/command)" > {tty}
status=$?
sync
echo "{exit}$status@@"
poweroff -f
"#,
        tty = o.stdout_tty,
        exit = o.markers.exit_prefix,
    ));
    s
}

/// Where a run's initramfs goes.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("initramfs.cpio")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&h[6 + 8 * i..6 + 8 * (i + 1)]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    /// Parses a newc archive back into (name, mode, rdevmajor, rdevminor, data).
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let total = a.len();
        let mut out = Vec::new();
        loop {
            let off = total - a.len();
            assert_eq!(off % 4, 0, "entry not 4-aligned");
            assert_eq!(&a[..6], b"070701");
            let mode = field(a, 1);
            let size = field(a, 6) as usize;
            let namesize = field(a, 11) as usize;
            assert_eq!(field(a, 12), 0, "check field must be 0 in newc");
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0, "name must be NUL-terminated");
            let data_start = (110 + namesize + 3) & !3;
            let data = a[data_start..data_start + size].to_vec();
            let (rmaj, rmin) = (field(a, 9), field(a, 10));
            let next = (data_start + size + 3) & !3;
            a = &a[next..];
            let trailer = name == "TRAILER!!!";
            out.push((name, mode, rmaj, rmin, data));
            if trailer {
                assert!(a.iter().all(|&b| b == 0), "only padding after the trailer");
                return out;
            }
        }
    }

    #[test]
    fn header_layout_and_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"abcde").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let h = &bytes[..110];
        assert_eq!(&h[..6], b"070701");
        assert_eq!(field(h, 0), 1, "first inode");
        assert_eq!(field(h, 1), 0o100755);
        assert_eq!(field(h, 4), 1, "nlink");
        assert_eq!(field(h, 6), 5, "filesize");
        assert_eq!(field(h, 11), 5, "namesize counts the NUL");
        // 110 + "init\0" = 115 -> padded to 116; data 5 bytes -> padded to 124.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(bytes[115], 0);
        assert_eq!(&bytes[116..121], b"abcde");
        assert_eq!(&bytes[121..124], &[0, 0, 0]);
        assert_eq!(&bytes[124..130], b"070701");
        let trailer = &bytes[124..];
        assert_eq!(field(trailer, 0), 0);
        assert_eq!(field(trailer, 11), 11);
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
    }

    #[test]
    fn header_fields_are_uppercase_hex() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("x", 0o644, &[0u8; 0xAB]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[6 + 8 * 6..6 + 8 * 7], b"000000AB");
    }

    #[test]
    fn parents_devices_and_links() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("lib/modules/loop.ko", 0o644, b"ELF").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("lib", 0o755).unwrap(); // already there: no duplicate
        let entries = parse(&w.finish().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "lib",
                "lib/modules",
                "lib/modules/loop.ko",
                "dev",
                "dev/console",
                "bin",
                "bin/sh",
                "TRAILER!!!"
            ]
        );
        let console = &entries[4];
        assert_eq!(console.1, 0o020600);
        assert_eq!((console.2, console.3), (5, 1));
        let link = &entries[6];
        assert_eq!(link.1 & 0o170000, 0o120000);
        assert_eq!(link.4, b"busybox");
        assert_eq!(entries[0].1, 0o040755);
    }

    #[test]
    fn inodes_are_unique() {
        let mut w = CpioWriter::new(Vec::new());
        for i in 0..5 {
            w.file(&format!("f{i}"), 0o644, b"x").unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut inos = HashSet::new();
        let mut a = &bytes[..];
        while &a[..6] == b"070701" {
            let name_size = field(a, 11) as usize;
            let size = field(a, 6) as usize;
            if field(a, 1) != 0 {
                assert!(inos.insert(field(a, 0)));
            }
            let next = (((110 + name_size + 3) & !3) + size + 3) & !3;
            a = &a[next..];
            if a.len() < 6 {
                break;
            }
        }
        assert_eq!(inos.len(), 5);
    }

    #[test]
    fn exit_marker_parsing() {
        let m = Markers::new("abc");
        assert_eq!(m.exit_status("@@gupwatch-exit:abc:0@@"), Some(0));
        assert_eq!(
            m.exit_status("[  1.2] junk @@gupwatch-exit:abc:137@@\r"),
            Some(137)
        );
        assert_eq!(m.exit_status("@@gupwatch-exit:xyz:0@@"), None);
        assert_eq!(m.exit_status("@@gupwatch-exit:abc:@@"), None);
    }

    #[test]
    fn init_script_runs_command_with_stdout_on_second_serial() {
        let m = Markers::new("t0k");
        let s = init_script(&InitOptions {
            markers: &m,
            network: false,
            stdout_tty: "/dev/ttyS1",
            stall_report_after: None,
        });
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("echo '@@gupwatch-init-start:t0k@@'"));
        assert!(s.contains("> /dev/ttyS1\n"));
        assert!(s.contains("echo \"@@gupwatch-exit:t0k:$status@@\""));
        assert!(!s.contains("udhcpc"));
        let n = init_script(&InitOptions {
            markers: &m,
            network: true,
            stdout_tty: "/dev/ttyS1",
            stall_report_after: Some(90),
        });
        assert!(n.contains("(sleep 90\n"));
        assert!(n.contains("echo l > /proc/sysrq-trigger"));
        assert!(!s.contains("sysrq"));
        assert!(n.contains("udhcpc -i eth0"));
    }
}
