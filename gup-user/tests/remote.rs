//! `gupwatch top --connect` and `gupwatch leaks --connect` against the real
//! server with a web configuration of TLS, verified client certificates and
//! basic auth (certificates made here by rcgen): top's remote source
//! in-process, `leaks --connect` through the binary, and the refusals a
//! user meets (wrong password, untrusted certificate, no client
//! certificate, plain HTTP to the TLS port), each with a message naming it.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

mod common;

use common::{bcrypt_of, Pki, Running};
use gup_report::{LeakReport, SnapshotReport};
use gupwatch::model::leaks::LeakTable;
use gupwatch::{
    export::client::{ClientError, ConnectOptions, Remote, PASSWORD_ENV},
    collect::{Collector, Settings},
    export::http::{App, Handler, Request, Response, ServerConfig},
    kernel::kallsyms::Kallsyms,
    kernel::plan::ProbePlan,
    tui::source::{RemoteSource, Source},
};

/// A reduced-mode collector (no privileges needed): the daemon's real
/// pages, on a kernel named `6.1.0-remote-test`.
fn app() -> App {
    let kallsyms = Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
    let plan = ProbePlan::resolve("6.1.0-remote-test".into(), Err("no BTF".into()), &kallsyms);
    App::new(Collector::new(None, &plan, Settings::default()))
}

/// The leak report the test daemon serves: a reduced-mode collector has
/// none, so it is put into the real `/api/snapshot?leaks=1` document.
fn report() -> LeakReport {
    serde_json::from_value(serde_json::json!({
        "tracked_outstanding": 256,
        "kernel_outstanding": 300,
        "notes": ["44 pins were taken before gupwatch started"],
    }))
    .unwrap()
}

/// The real routes, with [`report`] as the leak report; counts the
/// snapshot requests.
struct WithLeaks {
    app: App,
    snapshots: Mutex<u32>,
}

impl Handler for WithLeaks {
    fn renders(&self, req: &Request) -> bool {
        self.app.renders(req)
    }

    fn handle(&self, req: &Request) -> Response {
        let mut resp = self.app.handle(req);
        if req.path == "/api/snapshot" {
            *self.snapshots.lock().unwrap() += 1;
            if req.query.as_deref().unwrap_or("").contains("leaks=1") {
                let mut doc: SnapshotReport = serde_json::from_slice(&resp.body).unwrap();
                assert!(matches!(doc.leaks, None | Some(None)), "the reduced mode has no report of its own");
                doc.leaks = Some(Some(report()));
                resp.body = serde_json::to_vec(&doc).unwrap();
            }
        }
        resp
    }
}

/// TLS, client certificates verified against the test CA, basic auth.
fn daemon(pki: &Pki) -> (Running, Arc<WithLeaks>) {
    let web = pki.config(&format!(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  prometheus: {}\n",
        bcrypt_of("s3cret")
    ));
    let handler = Arc::new(WithLeaks { app: app(), snapshots: Mutex::new(0) });
    (common::serve(&web, ServerConfig::default(), handler.clone()), handler)
}

fn options(pki: &Pki, srv: &Running) -> ConnectOptions {
    std::fs::write(pki.path("password"), "s3cret\n").unwrap();
    ConnectOptions {
        url: format!("https://127.0.0.1:{}", srv.addr.port()),
        tls_ca: Some(pki.path("ca.crt")),
        tls_cert: Some(pki.path("client.crt")),
        tls_key: Some(pki.path("client.key")),
        basic_auth_user: Some("prometheus".into()),
        basic_auth_password_file: Some(pki.path("password")),
        password_from_env: None,
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn top_source_reads_a_tls_daemon_with_auth() {
    let pki = Pki::new();
    let (srv, handler) = daemon(&pki);
    let mut src = RemoteSource::new(Remote::new(&options(&pki, &srv)).unwrap());
    let (sample, outstanding) = src.read(true).expect("reads over TLS with a client certificate and basic auth");
    assert_eq!(sample.kernel, "6.1.0-remote-test");
    assert_eq!(outstanding, Some(report()));
    let (_, outstanding) = src.read(false).unwrap();
    assert_eq!(outstanding, None, "no report unless asked for");
    assert_eq!(*handler.snapshots.lock().unwrap(), 2);
    // The library's own refusals, by type.
    let wrong = ConnectOptions { basic_auth_password_file: None, password_from_env: Some("nope".into()), ..options(&pki, &srv) };
    let e = Remote::new(&wrong).unwrap().leaks().unwrap_err();
    assert!(matches!(e, ClientError::Status { status: 401, .. }), "{e}");
}

/// Runs `gupwatch ARGS` with `env` set; (exit status, stdout, stderr).
fn gupwatch(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(args)
        .env_remove(PASSWORD_ENV)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn leaks_connect_prints_the_daemons_report() {
    let pki = Pki::new();
    let (srv, _handler) = daemon(&pki);
    let o = options(&pki, &srv);
    let (ca, cert, key, pw) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"), pki.path("password"));
    let tls = ["--tls-ca", p(&ca), "--tls-cert", p(&cert), "--tls-key", p(&key)];
    let with = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["leaks", "--connect", &o.url];
        args.extend(tls);
        args.extend(extra);
        gupwatch(&args, env)
    };
    let auth = ["--basic-auth-user", "prometheus", "--basic-auth-password-file", p(&pw)];

    let (code, out, err) = with(&[&auth[..], &["--json"]].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<LeakReport>(&out).unwrap(), report(), "{out}");
    // The table, as `gupwatch leaks` prints it; the password from the
    // environment this time.
    let (code, out, err) = with(&["--basic-auth-user", "prometheus"], &[(PASSWORD_ENV, "s3cret")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, report().to_table());
    assert!(out.contains("256 tracked by gupwatch, 300 counted by the kernel"), "{out}");

    // Refusals, each naming what to fix.
    let (code, _, err) = with(&["--basic-auth-user", "prometheus"], &[(PASSWORD_ENV, "wrong")]);
    assert_eq!(code, 2);
    assert!(err.contains("HTTP 401 Unauthorized") && err.contains("refused this user name or password"), "{err}");
    let (code, _, err) = with(&[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("HTTP 401") && err.contains("--basic-auth-user"), "{err}");
    let (code, _, err) = with(&["--basic-auth-user", "prometheus"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a password") && err.contains(PASSWORD_ENV), "{err}");
    // Not trusting the daemon's CA (Mozilla's roots do not hold it).
    let (code, _, err) =
        gupwatch(&[&["leaks", "--connect", &o.url, "--tls-cert", p(&cert), "--tls-key", p(&key)][..], &auth].concat(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not trusted") && err.contains("--tls-ca"), "{err}");
    // No client certificate.
    let (code, _, err) = gupwatch(&[&["leaks", "--connect", &o.url, "--tls-ca", p(&ca)][..], &auth].concat(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("client certificate"), "{err}");
    // A client certificate from another CA.
    let other = Pki::new();
    let (oc, ok) = (other.path("client.crt"), other.path("client.key"));
    let (code, _, err) = gupwatch(
        &[&["leaks", "--connect", &o.url, "--tls-ca", p(&ca), "--tls-cert", p(&oc), "--tls-key", p(&ok)][..], &auth].concat(),
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("refused this client certificate"), "{err}");
    // Plain HTTP to the TLS port.
    let plain = format!("127.0.0.1:{}", srv.addr.port());
    let (code, _, err) = gupwatch(&[&["leaks", "--connect", &plain][..], &auth].concat(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("https://"), "{err}");
    // Flags that mean nothing without --connect, or with it.
    let (code, _, err) = gupwatch(&["leaks", "--tls-ca", p(&ca)], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = gupwatch(&["leaks", "--connect", &o.url, "--duration", "3"], &[]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_daemon_without_a_leak_report_says_so() {
    let pki = Pki::new();
    let web = pki.config("");
    let srv = common::serve(&web, ServerConfig::default(), Arc::new(app()));
    let url = format!("http://127.0.0.1:{}", srv.addr.port());
    let (code, _, err) = gupwatch(&["leaks", "--connect", &url], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no leak report") && err.contains("reduced mode"), "{err}");
    // https:// to a plain-HTTP daemon.
    let url = format!("https://127.0.0.1:{}", srv.addr.port());
    let (code, _, err) = gupwatch(&["leaks", "--connect", &url, "--tls-ca", p(&pki.path("ca.crt"))], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("does not speak TLS"), "{err}");
}
