//! `--web-config` with real clients: TLS (rustls, and curl when it is
//! installed) and basic auth against the real server, with certificates
//! made here by rcgen; then the same through the `gupwatch run` binary.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

mod common;

use base64::Engine as _;
use common::{bcrypt_of, Pki, Running};
use gupwatch::{
    export::http::{Request, Response, ServerConfig},
    export::webconfig::WebConfigWatcher,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

fn serve(web: &Path, cfg: ServerConfig) -> Running {
    common::serve(web, cfg, Arc::new(|req: &Request| Response::text(200, format!("hello {}\n", req.path))))
}

fn tls_client(pki: &Pki, client_cert: bool) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::ring::default_provider();
    tls_client_with(pki, client_cert.then_some("client"), provider, rustls::DEFAULT_VERSIONS)
}

/// A rustls client trusting the test CA, with `provider`'s suites and
/// groups, these versions and the client certificate `NAME.crt`, if any.
fn tls_client_with(
    pki: &Pki,
    client_cert: Option<&str>,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client_cert {
        Some(name) => {
            let chain: Vec<_> =
                CertificateDer::pem_file_iter(pki.path(&format!("{name}.crt"))).unwrap().map(Result::unwrap).collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap()).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// The suite and group a handshake with `cfg` settles on, or its error.
fn negotiated(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result<(rustls::CipherSuite, rustls::NamedGroup), String> {
    let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite()).ok_or("no suite")?;
    let group = conn.negotiated_key_exchange_group().map(|g| g.name()).ok_or("no group")?;
    Ok((suite, group))
}

/// GET over TLS; returns the whole response, or the error.
fn https_get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, path: &str, auth: Option<(&str, &str)>) -> Result<String, String> {
    https_request(addr, cfg, "GET", path, auth)
}

fn https_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<String, String> {
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // One request per connection: the server keeps connections alive
    // otherwise, and this client reads to the end.
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        req += &format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    }
    req += "\r\n";
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn plain_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn tls_and_basic_auth_with_a_rustls_client() {
    let pki = Pki::new();
    let web = pki.config(&format!(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: {}\nhttp_server_config:\n  headers:\n    Strict-Transport-Security: max-age=63072000\n",
        bcrypt_of("s3cret")
    ));
    let srv = serve(&web, ServerConfig::default());
    let cfg = tls_client(&pki, false);

    // No credentials: 401 with a challenge, over TLS.
    let r = https_get(srv.addr, Arc::clone(&cfg), "/metrics", None).unwrap();
    assert_eq!(status(&r), 401, "{r}");
    // Header names are case-insensitive; hyper writes this one title-cased.
    assert!(r.to_ascii_lowercase().contains("\r\nwww-authenticate: basic realm=\"gupwatch\""), "{r}");
    assert!(!r.contains("hello"), "{r}");
    // Wrong password, unknown user: 401.
    assert_eq!(status(&https_get(srv.addr, Arc::clone(&cfg), "/metrics", Some(("prometheus", "nope"))).unwrap()), 401);
    assert_eq!(status(&https_get(srv.addr, Arc::clone(&cfg), "/metrics", Some(("root", "s3cret"))).unwrap()), 401);
    // Right ones: 200, with the configured header.
    let r = https_get(srv.addr, Arc::clone(&cfg), "/metrics", Some(("prometheus", "s3cret"))).unwrap();
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.ends_with("hello /metrics\n"), "{r}");
    assert!(r.contains("\r\nStrict-Transport-Security: max-age=63072000\r\n"), "{r}");
    // Credentials before anything else: a POST without them is 401, not 405.
    assert_eq!(status(&https_request(srv.addr, Arc::clone(&cfg), "POST", "/metrics", None).unwrap()), 401);
    assert_eq!(status(&https_request(srv.addr, Arc::clone(&cfg), "POST", "/", Some(("prometheus", "s3cret"))).unwrap()), 405);
    // Plain HTTP on the TLS port: a plain-text 400 saying so.
    let r = plain_get(srv.addr, "/metrics");
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("HTTP request to an HTTPS server"), "{r}");
    // A client that does not trust the certificate fails the handshake.
    let untrusting = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    assert!(https_get(srv.addr, untrusting, "/", None).is_err());
    // The server is still fine after all that.
    assert_eq!(status(&https_get(srv.addr, cfg, "/healthz", Some(("prometheus", "s3cret"))).unwrap()), 200);
}

#[test]
fn with_curl() {
    // A declared dependency (cargo xtask setup installs it): missing is a
    // failure, never a silent pass.
    if let Err(e) = Command::new("curl").arg("--version").stdout(Stdio::null()).status() {
        panic!("curl is not installed ({e}): run `cargo xtask setup`, which installs it");
    }
    let pki = Pki::new();
    let web = pki.config(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: {}\n",
        pki.path("tls.crt").display(),
        pki.path("tls.key").display(),
        bcrypt_of("s3cret")
    ));
    let srv = serve(&web, ServerConfig::default());
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(pki.path("ca.crt"))
            .args(args)
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let url = format!("https://127.0.0.1:{}/metrics", srv.addr.port());
    assert_eq!(curl(&[&url]).0, "401");
    assert_eq!(curl(&["-u", "prometheus:wrong", &url]).0, "401");
    let (code, exit, err) = curl(&["-u", "prometheus:s3cret", &url]);
    assert_eq!((code.as_str(), exit), ("200", Some(0)), "{err}");
    // curl speaking plain HTTP to the TLS port gets the 400.
    let (code, _, _) = curl(&[&format!("http://127.0.0.1:{}/metrics", srv.addr.port())]);
    assert_eq!(code, "400");
    // curl expecting TLS from a port that does not verify fails outright.
    let (_, exit, _) = curl(&["--cacert", "/dev/null", "-u", "prometheus:s3cret", &url]);
    assert_ne!(exit, Some(0));
}

#[test]
fn client_certificates() {
    let pki = Pki::new();
    let web = pki.config("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
    let srv = serve(&web, ServerConfig::default());
    let r = https_get(srv.addr, tls_client(&pki, true), "/", None).unwrap();
    assert_eq!(status(&r), 200, "{r}");
    // Without a certificate: refused in the handshake (TLS 1.3 reports it
    // on the first read).
    assert!(https_get(srv.addr, tls_client(&pki, false), "/", None).map(|r| status(&r)) != Ok(200));
    // VerifyClientCertIfGiven: both pass.
    let web = pki.config("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n");
    let srv = serve(&web, ServerConfig::default());
    assert_eq!(status(&https_get(srv.addr, tls_client(&pki, true), "/", None).unwrap()), 200);
    assert_eq!(status(&https_get(srv.addr, tls_client(&pki, false), "/", None).unwrap()), 200);
}

#[test]
fn a_stalled_handshake_does_not_hold_a_worker() {
    let pki = Pki::new();
    let web = pki.config("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n");
    let cfg = ServerConfig { head_timeout: Duration::from_millis(400), max_renders: 1, ..ServerConfig::default() };
    let srv = serve(&web, cfg);
    // Half a ClientHello record header, then silence; then a byte at a
    // time, which must not reset the deadline.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&[0x16, 0x03]).unwrap();
    for _ in 0..20 {
        if s.write_all(&[0x01]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(3), "the stalled handshake held on for {:?}", t0.elapsed());
    // The one worker is free again.
    assert_eq!(status(&https_get(srv.addr, tls_client(&pki, false), "/", None).unwrap()), 200);
}

#[test]
fn changes_are_picked_up_and_bad_ones_ignored() {
    let pki = Pki::new();
    let web = pki.config(&format!("basic_auth_users:\n  a: {}\n", bcrypt_of("one")));
    let srv = serve(&web, ServerConfig::default());
    let get = |user: &str, pass: &str| {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        s.write_all(format!("GET / HTTP/1.1\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        status(&out)
    };
    assert_eq!(get("a", "one"), 200);
    thread::sleep(Duration::from_millis(1100));
    std::fs::write(&web, format!("basic_auth_users:\n  a: {}\n", bcrypt_of("two"))).unwrap();
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(get("a", "two"), 200, "the new password applies");
    assert_eq!(get("a", "one"), 401, "the old one no longer does");
    // A broken file changes nothing.
    std::fs::write(&web, "basic_auth_users: [\n").unwrap();
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(get("a", "two"), 200);
}

#[test]
fn certificate_problems_are_explained() {
    let pki = Pki::new();
    let load = |text: &str| WebConfigWatcher::load(&pki.config(text)).err().map(|e| e.to_string()).unwrap_or_default();
    let e = load("tls_server_config:\n  cert_file: missing.crt\n  key_file: tls.key\n");
    assert!(e.contains("cannot read the TLS certificate") && e.contains("missing.crt"), "{e}");
    let e = load("tls_server_config:\n  cert_file: tls.key\n  key_file: tls.key\n");
    assert!(e.contains("BEGIN CERTIFICATE"), "{e}");
    let e = load("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.crt\n");
    assert!(e.contains("no usable private key"), "{e}");
    let e = load("tls_server_config:\n  cert_file: tls.crt\n  key_file: client.key\n");
    assert!(e.contains("cannot be used together"), "{e}");
}

/// The whole path through the binary: `gupwatch run --web-config` (in the
/// reduced mode on a host without probes, which is enough for the endpoint).
#[test]
fn gupwatch_run_serves_tls_with_auth() {
    let pki = Pki::new();
    let web = pki.config(&format!(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: {}\n",
        bcrypt_of("s3cret")
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--web-config"])
        .arg(&web)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let cfg = tls_client(&pki, false);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = https_get(addr, Arc::clone(&cfg), "/metrics", None);
        if last.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let denied = last.clone();
    let ok = https_get(addr, Arc::clone(&cfg), "/metrics", Some(("prometheus", "s3cret")));
    let plain = TcpStream::connect(addr).map(|_| plain_get(addr, "/metrics"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(denied.map(|r| status(&r)), Ok(401), "{log}");
    let ok = ok.unwrap();
    assert_eq!(status(&ok), 200, "{log}");
    assert!(ok.contains("gupwatch_build"), "{ok}");
    assert_eq!(plain.map(|r| status(&r)).ok(), Some(400));
    assert!(log.contains("https://"), "the log names the https URL: {log}");
    assert!(out.status.success(), "{log}");
}

/// cipher_suites, curve_preferences, inline PEM, client_allowed_sans and
/// rate_limit, with a real rustls client: each does what the toolkit's does.
#[test]
fn the_rest_of_the_exporter_toolkit_keys() {
    use rustls::{crypto::ring::cipher_suite, crypto::ring::kx_group, CipherSuite, NamedGroup};
    let pki = Pki::new();
    let indent = |name: &str| std::fs::read_to_string(pki.path(name)).unwrap().replace('\n', "\n    ");
    // Inline certificate, key and client CA; two TLS 1.2 suites and one
    // group; a client certificate with the SAN prometheus.example.
    let web = pki.config(&format!(
        "tls_server_config:\n  cert: |\n    {}\n  key: |\n    {}\n  client_ca: |\n    {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [prometheus.example]\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]\n  curve_preferences: [CurveP384]\nrate_limit:\n  interval: 1h\n  burst: 3\n",
        indent("tls.crt"),
        indent("tls.key"),
        indent("ca.crt")
    ));
    let srv = serve(&web, ServerConfig::default());
    let client = |cert: Option<&str>, suites: Vec<rustls::SupportedCipherSuite>, versions: &[&'static rustls::SupportedProtocolVersion]| {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites = suites;
        p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        tls_client_with(&pki, cert, p, versions)
    };
    let tls12 = &[&rustls::version::TLS12][..];
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec();
    // A TLS 1.2 client offering everything gets the server's first suite
    // (prefer_server_cipher_suites defaults to true) and the only group.
    assert_eq!(
        negotiated(srv.addr, client(Some("client-san"), all.clone(), tls12)),
        Ok((CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, NamedGroup::secp384r1))
    );
    // One offering only a suite left out fails the handshake.
    assert!(negotiated(srv.addr, client(Some("client-san"), vec![cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], tls12)).is_err());
    // TLS 1.3 suites are not restricted (as in Go).
    let tls13 = &[&rustls::version::TLS13][..];
    assert_eq!(negotiated(srv.addr, client(Some("client-san"), all.clone(), tls13)).map(|n| n.1), Ok(NamedGroup::secp384r1));
    // A verified certificate without the allowed SAN is refused (TLS 1.3
    // tells the client on its first read).
    let e = https_get(srv.addr, client(Some("client"), all.clone(), tls13), "/healthz", None);
    assert!(e.as_ref().is_err_and(|e| e.contains("alert")), "{e:?}");
    // The rate limit (3 per hour): 3 answers, then 429. The handshakes
    // above made no request.
    let cfg = client(Some("client-san"), all, rustls::DEFAULT_VERSIONS);
    for _ in 0..3 {
        assert_eq!(status(&https_get(srv.addr, Arc::clone(&cfg), "/healthz", None).unwrap()), 200);
    }
    let r = https_get(srv.addr, cfg, "/healthz", None).unwrap();
    assert_eq!(status(&r), 429, "{r}");
    assert!(r.contains("rate_limit") && r.to_ascii_lowercase().contains("retry-after: "), "{r}");
}
