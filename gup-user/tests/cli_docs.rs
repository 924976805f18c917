//! docs/cli (a Markdown page per subcommand) is what the binary says: it
//! is generated from the clap definition, and this test fails when the
//! committed pages and the definition drift apart.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn pages(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn committed_cli_pages_are_up_to_date() {
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(["generate", "markdown", "--dir"])
        .arg(fresh.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli"));
    let generated = pages(fresh.path());
    let fix = "regenerate with: cargo run -p gup-user --bin gupwatch -- generate markdown --dir docs/cli";
    assert_eq!(committed.keys().collect::<Vec<_>>(), generated.keys().collect::<Vec<_>>(), "{fix}");
    for (name, text) in &generated {
        assert_eq!(&committed[name], text, "docs/cli/{name} is out of date; {fix}");
    }
    for sub in ["run", "top", "doctor", "check", "probes", "leaks"] {
        assert!(generated.contains_key(&format!("gupwatch-{sub}.md")), "a page for {sub}");
    }
}
