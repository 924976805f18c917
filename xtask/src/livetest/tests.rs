use super::*;

/// A screen as the live view draws it (as in docs/live-view.md, 80×24).
const SCREEN: &str = "\
gupwatch · 7.2.0-1-cloud-amd64 · 19/19 hooks · local · 1s · up 12s
gupwatch pinned    35.2k unpinned  34.9k held    256 │  3451/s fast 67% err 0
vmstat   acquired  40.1k released  39.8k held    256 │  3420/s out 3716/s
 Processes · sort PAGES/s ▼ · 2 rows · 14 idle hidden (i) ─────────────────────
    PID COMM                      SUBSYS      PINS/s PAGES/s▼   OUTST FAST%  LT%
    187 zz-pinner                 process_vm      13     3449   15.9k    67   33
    190 aa-holder                 io_uring         0        0     256     -  100


 Pin rate · fast-path hit   Latency · all APIs ──────  Outstanding · leaks ─────
3451/s max 11.0k · 7s         1µs ████████████ 510.9k held 15.9k · kernel 0
    █                         2µs ▏              7349 orphaned   3764p gupwatch
q quit  v view  s/S sort  / filter  i idle  a latency  p pause  ? help
";

/// The table of [`SCREEN`] after sorting by name and `i`: idle rows
/// shown (a shell that exec'd, tmux).
fn idle_shown() -> String {
    SCREEN
        .replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i) ─", "sort NAME ▲ · 4 rows · idle shown (i) ────────")
        .replace(
            "    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n    190 aa-holder                 io_uring         0        0     256     -  100\n\n",
            "    190 aa-holder                 io_uring         0        0     256     -  100\n     95 sh                        exec             0        0       0     -    -\n     12 tmux: server                               0        0       0     -    -\n    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n",
        )
}

#[test]
fn numbers() {
    assert_eq!(parse_human("3451/s"), Some(3451.0));
    assert_eq!(parse_human("35.2k"), Some(35200.0));
    assert_eq!(parse_human("32.3k"), Some(32300.0));
    assert_eq!(parse_human("1.23M"), Some(1_230_000.0));
    assert_eq!(parse_human("0.5"), Some(0.5));
    assert_eq!(parse_human("67%"), Some(67.0));
    assert_eq!(parse_human("-"), None);
    assert_eq!(parse_human("k"), None);
}

#[test]
fn header_title_and_rows() {
    let h = parse_header(SCREEN).unwrap();
    assert_eq!(h.hooks, (19, 19));
    assert_eq!((h.pinned, h.unpinned, h.pin_rate), (35200.0, 34900.0, 3451.0));
    assert_eq!((h.vm_acquired, h.vm_released, h.vm_rate), (40100.0, 39800.0, 3420.0));
    let t = parse_title(SCREEN).unwrap();
    assert_eq!(t, Title { sort: "PAGES/s".into(), descending: true, filter: None, rows: 2, idle_hidden: 14, idle_shown: false });
    let rows = parse_rows(SCREEN);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], ProcRow { pid: 187, comm: PINNER.into(), pins_per_sec: 13.0, pages_per_sec: 3449.0, outstanding: Some(15900.0) });
    assert_eq!((rows[1].comm.as_str(), rows[1].outstanding), (HOLDER, Some(256.0)));
    assert!(!rows[1].idle(), "a holder is not idle");
    let shown = idle_shown();
    assert_eq!(
        parse_title(&shown).unwrap(),
        Title { sort: "NAME".into(), descending: false, filter: None, rows: 4, idle_hidden: 0, idle_shown: true }
    );
    let rows = parse_rows(&shown);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[2].comm, "tmux: server", "a name with a space, an empty subsystem column");
    assert_eq!(rows.iter().filter(|r| r.idle()).map(|r| r.comm.as_str()).collect::<Vec<_>>(), ["sh", "tmux: server"]);
    let wide = SCREEN
        .replace("FAST%  LT%", "FAST%  LT%    PAGES")
        .replace("67   33", "67   33   35.2k");
    assert_eq!(parse_rows(&wide)[0].pages_per_sec, 3449.0, "the PAGES column of wide terminals");
    let f = SCREEN.replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i)", "sort NAME ▲ · filter \"zz-pin\" · 1 rows");
    assert_eq!(
        parse_title(&f).unwrap(),
        Title { sort: "NAME".into(), descending: false, filter: Some("zz-pin".into()), rows: 1, idle_hidden: 0, idle_shown: false }
    );
    assert!(parse_header("nothing").is_err());
    assert!(parse_rows("no table").is_empty());
}

#[test]
fn captures_are_split_by_markers() {
    let out = "noise\n@@capture a@@\nline 1\r\nline 2\n@@end a@@\n@@capture b@@\nx\n@@end wrong@@\n@@capture c@@\n\n@@end c@@\n";
    let c = parse_captures(out);
    assert_eq!(c.get("a").map(String::as_str), Some("line 1\nline 2\n"));
    assert!(!c.contains_key("b"), "unterminated captures are dropped");
    assert_eq!(c.get("c").map(String::as_str), Some("\n"));
}

fn screens(initial: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("initial".to_string(), initial.to_string());
    let by_pins = initial.replace("sort PAGES/s ▼", "sort PINS/s ▼");
    m.insert("sort-pins".into(), by_pins);
    let by_name = initial.replace("sort PAGES/s ▼", "sort NAME ▲").replace(
        "    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n    190 aa-holder                 io_uring         0        0     256     -  100\n",
        "    190 aa-holder                 io_uring         0        0     256     -  100\n    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n",
    );
    m.insert("sort-name".into(), by_name.clone());
    m.insert("show-idle".into(), idle_shown());
    m.insert("hide-idle".into(), by_name);
    let filtered = initial
        .replace("sort PAGES/s ▼ · 2 rows · 14 idle hidden (i)", "sort NAME ▲ · filter \"zz-pin\" · 1 rows")
        .replace("    190 aa-holder                 io_uring         0        0     256     -  100\n", "");
    m.insert("filter".into(), filtered);
    let restored = "$ \nRESTORED:0\nspeed 38400 baud; rows 24; columns 80;\nisig icanon iexten echo echoe echok -echonl\n";
    m.insert("quit".into(), restored.into());
    m.insert("quit-state".into(), "alternate_on=0 cursor_flag=1 pane_dead=0\n".into());
    m.insert("sigterm".into(), restored.into());
    m.insert("sigterm-state".into(), "alternate_on=0 cursor_flag=1 pane_dead=0\n".into());
    m
}

#[test]
fn a_good_run_passes() {
    let checks = judge("guest", "local", &screens(SCREEN));
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(checks.len() >= 15);
}

/// Each of `names` is among the failed checks `f`.
fn fails_as(f: &[String], names: &[&str]) {
    for name in names {
        assert!(f.iter().any(|n| n.contains(name)), "{name}: {f:?}");
    }
}

#[test]
fn each_kind_of_breakage_fails() {
    let fail = |m: BTreeMap<String, String>| -> Vec<String> {
        judge("host", "local", &m).into_iter().filter(|c| !c.ok).map(|c| c.name).collect()
    };
    // The failures when one screen is replaced by `screen` of the good run.
    let edited = |name: &str, screen: &dyn Fn(&BTreeMap<String, String>) -> String| {
        let mut m = screens(SCREEN);
        let s = screen(&m);
        m.insert(name.into(), s);
        fail(m)
    };
    // gupwatch counting double what the kernel counts.
    let f = fail(screens(&SCREEN.replace("│  3451/s fast", "│  6902/s fast")));
    fails_as(&f, &["vmstat"]);
    // Rows out of order for the sort the title claims.
    let f = edited("sort-pins", &|m| m["sort-name"].replace("sort NAME ▲", "sort PINS/s ▼"));
    fails_as(&f, &["rows sorted by PINS/s"]);
    // A sort key that did not change.
    let f = edited("sort-name", &|m| m["initial"].clone());
    fails_as(&f, &["title says sort NAME", "rows sorted by name"]);
    // A filter that does not filter.
    let f = edited("filter", &|m| m["initial"].replace("sort PAGES/s ▼ · 2 rows", "sort PAGES/s ▼ · filter \"zz-pin\" · 2 rows"));
    fails_as(&f, &["only rows matching"]);
    // Idle rows not hidden: the first screen lists a shell at 0/s.
    let f = fail(screens(&SCREEN.replace(
        "    190 aa-holder                 io_uring         0        0     256     -  100\n\n",
        "    190 aa-holder                 io_uring         0        0     256     -  100\n     95 sh                        exec             0        0       0     -    -\n",
    )));
    fails_as(&f, &["no idle row shown"]);
    // `i` does nothing.
    let f = edited("show-idle", &|m| m["sort-name"].clone());
    fails_as(&f, &["after `i` the table has more rows", "after `i` idle rows are on the screen"]);
    // The title does not say idle rows are hidden.
    let f = edited("sort-name", &|m| m["sort-name"].replace(" · 14 idle hidden (i) ", " ────────────────── "));
    fails_as(&f, &["before `i` the title counts"]);
    // `i` again does not hide them.
    let f = edited("hide-idle", &|_| idle_shown());
    fails_as(&f, &["`i` again hides them", "no idle row shown"]);
    // By name, the pinner is pushed off the screen, or the holder is
    // not first.
    let f = edited("sort-name", &|m| m["sort-name"].replace("    187 zz-pinner                 process_vm      13     3449   15.9k    67   33\n", ""));
    fails_as(&f, &["rows sorted by name"]);
    let f = edited("sort-name", &|m| m["sort-name"].replace(
        "    190 aa-holder  ",
        "      7 a-first                   exec             1        1       0     -    -\n    190 aa-holder  ",
    ));
    fails_as(&f, &["rows sorted by name"]);
    // Raw mode left on, alternate screen still on.
    let mut m = screens(SCREEN);
    m.insert("quit".into(), "RESTORED:0\nisig -icanon iexten -echo\n".into());
    m.insert("quit-state".into(), "alternate_on=1 cursor_flag=0 pane_dead=0\n".into());
    let f = fail(m);
    fails_as(&f, &["q: the tty is cooked", "q: alternate screen left"]);
    // The failure quotes the screen.
    let mut m = screens(SCREEN);
    m.insert("filter".into(), "garbage\n".into());
    let c = judge("guest", "local", &m);
    let bad = c.iter().find(|c| !c.ok).unwrap();
    assert!(bad.detail.contains("|garbage"), "{}", bad.detail);
}

#[test]
fn guest_script_has_every_step() {
    let s = guest_command(100);
    for want in ["cap initial tui", "cap sort-pins tui", "cap sort-name tui", "cap show-idle tui", "cap hide-idle tui", "cap filter tui", "cap quit tui", "cap sigterm term", "nc -l -p 10484", "-x 80 -y 24", "/tmp/zz-pinner workload"] {
        assert!(s.contains(want), "{want}");
    }
    for p in ["@SERVE@", "@PORT@", "@RELEASE@", "@WAIT@", "@PINNER@", "@HOLDER@", "@FILTER@", "@COLS@", "@ROWS@", "@REDUCED@", "@REDUCED_PORT@"] {
        assert!(!s.contains(p), "{p} replaced");
    }
}
