//! Host programs copied into the guest's initramfs, with what they need to
//! run there: today tmux, so that a test can drive gupwatch's live view
//! inside a VM exactly as a person would (`send-keys`, `capture-pane`).
//!
//! The guest has no libc of its own, so a dynamically linked program comes
//! with its shared libraries and its ELF interpreter. They are resolved on
//! the host when the initramfs is built (`ldd`, which follows DT_NEEDED
//! recursively the way the dynamic loader will), never listed by hand, so a
//! newer Debian with other sonames needs no change here. tmux also needs a
//! UTF-8 locale (it refuses to start without one) and the terminfo entries
//! of the terminals it emulates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::vm::initramfs::GuestFile;

/// Terminfo entries shipped with tmux: its default `default-terminal`,
/// the classic one older configurations name, and the usual outer terminal.
pub const TERMINFO_ENTRIES: &[&str] = &["tmux-256color", "screen", "xterm-256color"];

/// Where the guest's environment additions go; the guest's `/init` sources
/// it when present.
pub const ENV_FILE: &str = "etc/gupwatch/env";

/// The directories glibc reads compiled locales from (its `complocaledir`).
const LOCALE_DIRS: &[&str] = &["/usr/lib/locale"];
/// Names of the C.UTF-8 locale directory (glibc normalises `C.UTF-8` to
/// `C.utf8` when it looks it up).
const UTF8_LOCALES: &[&str] = &["C.utf8", "C.UTF-8"];

/// ncurses's default search list, used when `infocmp -D` cannot tell.
const DEFAULT_TERMINFO_DIRS: &[&str] = &["/etc/terminfo", "/lib/terminfo", "/usr/share/terminfo"];

/// A program found on the host's PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The files `ldd` says a dynamically linked program loads: its libraries
/// and the ELF interpreter, as absolute paths, without duplicates. An empty
/// list means a static program. Fails when a library is `not found`.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            return Ok(vec![]);
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
        // `/lib64/ld-linux-x86-64.so.2 (0x...)` (the interpreter), or
        // `linux-vdso.so.1 (0x...)` (in the kernel: nothing to copy).
        let (name, target) = match line.split_once("=>") {
            Some((n, t)) => (n.trim(), t.trim()),
            None => (line, line),
        };
        if target.starts_with("not found") {
            bail!("ldd: the library {name} is not found on this host");
        }
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            let p = PathBuf::from(path);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The terminfo directories ncurses searches on this host.
fn terminfo_dirs() -> Vec<PathBuf> {
    let asked: Vec<PathBuf> = crate::util::output_lines(Command::new("infocmp").arg("-D"))
        .into_iter()
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    if asked.is_empty() {
        DEFAULT_TERMINFO_DIRS.iter().map(PathBuf::from).collect()
    } else {
        asked
    }
}

/// The compiled terminfo entry `name` in `dirs` (ncurses's layout:
/// `<dir>/<first letter>/<name>`), the first directory winning.
pub fn find_terminfo(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let first = name.chars().next()?;
    dirs.iter()
        .map(|d| d.join(first.to_string()).join(name))
        .find(|p| p.is_file())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn guest_path(host: &Path) -> String {
    host.to_string_lossy().trim_start_matches('/').to_string()
}

/// tmux (the host's, from PATH) and everything it needs in the guest: its
/// libraries and interpreter at the paths `ldd` gives, the C.UTF-8 locale,
/// the terminfo entries of [`TERMINFO_ENTRIES`], and [`ENV_FILE`] setting
/// `LANG` and `LD_LIBRARY_PATH` for the guest's commands.
pub fn tmux_bundle() -> Result<Vec<GuestFile>> {
    bundle(&[], true)
}

/// Host programs for the guest (`cargo xtask vm --ship`): each (a name
/// found in PATH, or a path) as `/usr/bin/<its name>` with the libraries
/// and interpreter `ldd` lists at the paths it gives, plus, with `tmux`,
/// tmux and what it needs besides ([`tmux_bundle`]); one [`ENV_FILE`] for
/// them all.
pub fn bundle(programs: &[String], tmux: bool) -> Result<Vec<GuestFile>> {
    let mut files = Vec::new();
    let mut lib_dirs: Vec<String> = Vec::new();
    for p in programs {
        let path = if p.contains('/') { Some(PathBuf::from(p)) } else { find_program(p) };
        let path = path.filter(|p| p.is_file()).with_context(|| format!("--ship {p}: no such program on this host (a name in PATH, or a path)"))?;
        ship_program(&path, &mut files, &mut lib_dirs)?;
    }
    if tmux {
        let path = find_program("tmux")
            .context("tmux is not installed on this host: run `cargo xtask setup` (installs the Debian package tmux)")?;
        ship_program(&path, &mut files, &mut lib_dirs)?;
        tmux_extras(&mut files)?;
    }
    let mut vars: Vec<String> = Vec::new();
    if tmux {
        vars.extend(["LANG=C.UTF-8".to_string(), "TERMINFO=/usr/share/terminfo".to_string()]);
    }
    if !lib_dirs.is_empty() {
        vars.push(format!("LD_LIBRARY_PATH={}", lib_dirs.join(":")));
    }
    let env = if vars.is_empty() { String::new() } else { format!("export {}\n", vars.join(" ")) };
    files.push(GuestFile {
        path: ENV_FILE.into(),
        mode: 0o644,
        data: env.into_bytes(),
    });
    Ok(files)
}

/// One program as `/usr/bin/<name>` and its shared libraries; their
/// directories are added to `lib_dirs`.
fn ship_program(program: &Path, files: &mut Vec<GuestFile>, lib_dirs: &mut Vec<String>) -> Result<()> {
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    files.push(GuestFile {
        path: format!("usr/bin/{name}"),
        mode: 0o755,
        data: read(program)?,
    });
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("running ldd (libc-bin) to find {}'s shared libraries", program.display()))?;
    let text = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    let libs = parse_ldd(&text).with_context(|| format!("resolving the libraries of {}", program.display()))?;
    if !ldd.status.success() && !libs.is_empty() {
        bail!("ldd {} failed: {}", program.display(), text.trim());
    }
    for lib in &libs {
        // fs::read follows symlinks: the guest gets the file itself at the
        // path the loader asks for.
        if files.iter().any(|f| f.path == guest_path(lib)) {
            continue;
        }
        files.push(GuestFile {
            path: guest_path(lib),
            mode: 0o755,
            data: read(lib)?,
        });
        if let Some(dir) = lib.parent() {
            let d = dir.to_string_lossy().to_string();
            if !lib_dirs.contains(&d) {
                lib_dirs.push(d);
            }
        }
    }
    Ok(())
}

/// What tmux needs besides its libraries: a UTF-8 locale and terminfo.
fn tmux_extras(files: &mut Vec<GuestFile>) -> Result<()> {
    // tmux exits with "need UTF-8 locale" without one.
    let locale = LOCALE_DIRS
        .iter()
        .flat_map(|d| UTF8_LOCALES.iter().map(move |l| Path::new(d).join(l)))
        .find(|p| p.is_dir())
        .context("no C.UTF-8 locale in /usr/lib/locale (Debian's libc-bin ships /usr/lib/locale/C.utf8); tmux refuses to start without a UTF-8 locale")?;
    add_tree(&locale, files)?;

    let dirs = terminfo_dirs();
    for name in TERMINFO_ENTRIES {
        let entry = find_terminfo(name, &dirs).with_context(|| {
            format!(
                "no terminfo entry {name} in {} (Debian's ncurses-base and ncurses-term ship them)",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
        // Into the guest under /usr/share/terminfo, which ncurses always
        // searches, whatever directory the host had it in.
        let first = name.chars().next().unwrap_or('x');
        files.push(GuestFile {
            path: format!("usr/share/terminfo/{first}/{name}"),
            mode: 0o644,
            data: read(&entry)?,
        });
    }

    Ok(())
}

/// Every regular file under `dir`, at the same path in the guest.
fn add_tree(dir: &Path, files: &mut Vec<GuestFile>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            add_tree(&path, files)?;
        } else if path.is_file() {
            files.push(GuestFile {
                path: guest_path(&path),
                mode: 0o644,
                data: read(&path)?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_interpreter() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibtinfo.so.6 => /lib/x86_64-linux-gnu/libtinfo.so.6 (0x00007f63)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f62)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f64)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f62)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libtinfo.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").unwrap().is_empty());
        let err = parse_ldd("\tlibevent_core-2.1.so.7 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libevent_core-2.1.so.7"), "{err}");
    }

    #[test]
    fn terminfo_lookup_uses_the_first_letter_directory() {
        let root = std::env::temp_dir().join(format!("gupwatch-terminfo-{}", crate::util::nonce()));
        let (a, b) = (root.join("a"), root.join("b"));
        fs::create_dir_all(b.join("t")).unwrap();
        fs::write(b.join("t").join("tmux-256color"), b"x").unwrap();
        fs::create_dir_all(&a).unwrap();
        let dirs = vec![a, b.clone()];
        assert_eq!(find_terminfo("tmux-256color", &dirs), Some(b.join("t/tmux-256color")));
        assert_eq!(find_terminfo("screen", &dirs), None);
        let _ = fs::remove_dir_all(&root);
    }

    /// On a host with tmux (`cargo xtask setup` installs it), the bundle
    /// resolves: the binary, libc, an interpreter, the locale, terminfo.
    #[test]
    fn tmux_bundle_on_this_host() {
        if find_program("tmux").is_none() {
            eprintln!("skipped: no tmux on this host");
            return;
        }
        let files = tmux_bundle().unwrap();
        let has = |f: &dyn Fn(&str) -> bool| files.iter().any(|g| f(&g.path));
        assert!(has(&|p| p == "usr/bin/tmux"));
        assert!(has(&|p| p.contains("libc.so")), "libc");
        assert!(has(&|p| p.contains("ld-linux")), "the interpreter");
        assert!(has(&|p| p.ends_with("/LC_CTYPE")), "the locale");
        for t in TERMINFO_ENTRIES {
            assert!(has(&|p| p.ends_with(&format!("/{t}"))), "{t}");
        }
        let env = files.iter().find(|f| f.path == ENV_FILE).unwrap();
        assert!(String::from_utf8_lossy(&env.data).contains("LANG=C.UTF-8"));
    }
}
