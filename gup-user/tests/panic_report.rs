//! A panic of the real binary, made on purpose with the hidden test trigger
//! (`GUPWATCH_TEST_PANIC=1`, see gup-user/src/diagnose/crash.rs): one line on
//! stderr naming the command, the kernel and `gupwatch doctor`, exit status
//! 70, and a backtrace only when RUST_BACKTRACE asks for one.

use std::process::{Command, Output};

fn gupwatch(args: &[&str], rust_backtrace: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gupwatch"));
    cmd.args(args).env("GUPWATCH_TEST_PANIC", "1").env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    if let Some(v) = rust_backtrace {
        cmd.env("RUST_BACKTRACE", v);
    }
    cmd.output().expect("running the gupwatch binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_panic_is_one_line_and_exit_70() {
    let release = gupwatch::kernel::version::release();
    for (args, command) in [(&["doctor"][..], "`gupwatch doctor`"), (&["check", "--json"][..], "`gupwatch check`")] {
        for rust_backtrace in [None, Some("0")] {
            let o = gupwatch(args, rust_backtrace);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(70), "{args:?}: {err}");
            assert!(o.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&o.stdout));
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?} RUST_BACKTRACE={rust_backtrace:?}: exactly one line:\n{err}");
            let line = lines[0];
            assert!(line.starts_with(&format!("gupwatch: internal error in {command} on kernel {release}: ")), "{line}");
            assert!(line.contains("deliberate panic (GUPWATCH_TEST_PANIC=1)"), "the message, short: {line}");
            assert!(line.contains("run `gupwatch doctor`") && line.contains("report"), "{line}");
            assert!(!err.contains("panicked at") && !err.contains("backtrace:"), "no details: {err}");
        }
    }
}

#[test]
fn rust_backtrace_adds_where_and_a_backtrace() {
    let o = gupwatch(&["doctor"], Some("1"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(70), "{err}");
    let mut lines = err.lines();
    let first = lines.next().unwrap_or("");
    assert!(first.starts_with("gupwatch: internal error in `gupwatch doctor` on kernel "), "{first}");
    assert!(!first.contains("RUST_BACKTRACE=1 adds"), "the hint is moot when set: {first}");
    let rest: Vec<&str> = lines.collect();
    assert!(rest.first().is_some_and(|l| l.starts_with("details: panicked at ") && l.contains("crash.rs")), "{err}");
    assert!(rest.contains(&"backtrace:"), "{err}");
    // A real backtrace: it names the function that panicked.
    assert!(rest.iter().any(|l| l.contains("test_trigger")), "{err}");
}

#[test]
fn without_the_trigger_nothing_panics() {
    let o = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .arg("--version")
        .env("GUPWATCH_TEST_PANIC", "0")
        .output()
        .expect("running the gupwatch binary");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("gupwatch "));
}
