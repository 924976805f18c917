//! The client side of `gupwatch top --connect` and `gupwatch leaks
//! --connect`: GETs on a `gupwatch run` daemon's JSON API, over plain HTTP
//! or TLS (with a client certificate if asked) and with basic auth, so the
//! remote views reach a daemon whatever its `--web-config` turns on.
//!
//! The flags are Prometheus's own names for the same things (`tls_config`'s
//! `ca_file`, `cert_file`, `key_file`; `basic_auth`'s `username` and
//! `password_file`), and the password never comes from the command line,
//! where every user of the host can read it in `/proc/PID/cmdline`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;

use gup_report::{LeakReport, SnapshotReport};

/// Largest response body accepted (a snapshot with every caller row is a
/// few MiB at most).
pub const MAX_RESPONSE: u64 = 64 << 20;

/// The environment variable that may hold the basic-auth password.
pub const PASSWORD_ENV: &str = "GUPWATCH_BASIC_AUTH_PASSWORD";

/// Where and how to reach a daemon.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `HOST:PORT` (plain HTTP), `http://HOST:PORT` or `https://HOST:PORT`,
    /// optionally with a path prefix (a daemon behind a reverse proxy).
    pub url: String,
    /// PEM file of the CA(s) that signed the daemon's certificate (without
    /// it, https:// trusts Mozilla's public roots).
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate chain (for a daemon whose
    /// web config verifies client certificates).
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Basic-auth user name.
    pub basic_auth_user: Option<String>,
    /// File holding the basic-auth password (one line).
    pub basic_auth_password_file: Option<PathBuf>,
    /// The password from the environment ([`PASSWORD_ENV`]), read by the
    /// caller so that tests need not touch the process's environment.
    pub password_from_env: Option<String>,
    /// Bound on each request, from connecting to the last byte.
    pub timeout: Duration,
}

/// Why a request to the daemon failed, or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options do not make a client.
    #[error("{0}")]
    Options(String),
    /// A certificate, key or password file could not be used.
    #[error("{what} {}: {why}", path.display())]
    File {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// No HTTP answer (connection, TLS, timeout, a broken response).
    #[error("GET {url}: {why}{hint}")]
    Request {
        /// The URL asked for.
        url: String,
        /// The HTTP client's error.
        why: String,
        /// What probably fixes it ("" when nothing is known).
        hint: String,
    },
    /// An answer other than 200.
    #[error("GET {url}: HTTP {status} {}: {body}{hint}", reason(*status))]
    Status {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
        /// The first line of the body.
        body: String,
        /// What probably fixes it ("" when nothing is known).
        hint: String,
    },
    /// The answer was not the JSON document expected.
    #[error("GET {url}: not a gupwatch snapshot: {source}")]
    Decode {
        /// The URL asked for.
        url: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The daemon has no leak report to give.
    #[error("{url}: the daemon has no leak report (it runs in the reduced mode, or without pin tracking)")]
    NoLeaks {
        /// The daemon's URL.
        url: String,
    },
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A daemon, ready to be asked.
pub struct Remote {
    /// `scheme://authority[/prefix]`, no trailing `/`.
    base: String,
    agent: ureq::Agent,
    /// The `Authorization` header's value.
    authorization: Option<String>,
    has_user: bool,
    has_client_cert: bool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Remote").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Remote {
    /// Checks the options and reads the certificates, key and password.
    pub fn new(opts: &ConnectOptions) -> Result<Remote, ClientError> {
        let base = base_url(&opts.url)?;
        let https = base.starts_with("https://");
        let tls_flags = opts.tls_ca.is_some() || opts.tls_cert.is_some() || opts.tls_key.is_some();
        if tls_flags && !https {
            return Err(ClientError::Options(format!(
                "--tls-ca, --tls-cert and --tls-key need an https:// URL (got {})",
                opts.url
            )));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &opts.tls_ca {
            let certs = read_certs(ca, "--tls-ca")?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        match (&opts.tls_cert, &opts.tls_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--tls-cert")?;
                let key = read_key(key)?;
                tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => return Err(ClientError::Options("--tls-cert and --tls-key go together".into())),
        }
        let authorization = match &opts.basic_auth_user {
            Some(user) => {
                if user.contains(':') {
                    return Err(ClientError::Options(format!("--basic-auth-user {user:?}: a user name cannot hold ':'")));
                }
                let password = password(opts)?;
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            None if opts.basic_auth_password_file.is_some() => {
                return Err(ClientError::Options("--basic-auth-password-file needs --basic-auth-user".into()))
            }
            None => None,
        };
        if authorization.is_some() && !https {
            // As curl and Prometheus do, but say so: the password crosses
            // the network in clear.
            log::warn!("sending basic-auth credentials over plain HTTP to {base}");
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            // Credentials go to the daemon named, nowhere else.
            .max_redirects(0)
            .user_agent(format!("gupwatch/{}", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Remote {
            base,
            agent,
            authorization,
            has_user: opts.basic_auth_user.is_some(),
            has_client_cert: opts.tls_cert.is_some(),
        })
    }

    /// The daemon's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (starting with `/`); the body of a 200 answer.
    pub fn get(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(|e| self.request_error(&url, &e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .lossy_utf8(status != 200)
            .read_to_string()
            .map_err(|e| self.request_error(&url, &e))?;
        if status == 200 {
            return Ok(body);
        }
        let hint = self.status_hint(status, &body);
        let body = body.lines().next().unwrap_or("").chars().take(200).collect();
        Err(ClientError::Status { url, status, body, hint })
    }

    /// `/api/snapshot`, with the caller rows and/or the leak report.
    pub fn snapshot(&self, callers: bool, leaks: bool) -> Result<SnapshotReport, ClientError> {
        let path = match (callers, leaks) {
            (true, true) => "/api/snapshot?callers=1&leaks=1",
            (true, false) => "/api/snapshot?callers=1",
            (false, true) => "/api/snapshot?leaks=1",
            (false, false) => "/api/snapshot",
        };
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|source| ClientError::Decode { url: format!("{}{path}", self.base), source })
    }

    /// The daemon's leak report (`/api/snapshot?leaks=1`).
    pub fn leaks(&self) -> Result<LeakReport, ClientError> {
        self.snapshot(false, true)?.leaks.flatten().ok_or_else(|| ClientError::NoLeaks { url: self.base.clone() })
    }

    fn request_error(&self, url: &str, e: &ureq::Error) -> ClientError {
        let why = e.to_string();
        let hint = transport_hint(&why, self.base.starts_with("https://"), self.has_client_cert);
        ClientError::Request { url: url.into(), why, hint: hint.map(|h| format!(" ({h})")).unwrap_or_default() }
    }

    fn status_hint(&self, status: u16, body: &str) -> String {
        let hint = match status {
            401 if self.has_user => "the daemon refused this user name or password".to_string(),
            401 => format!(
                "the daemon wants basic auth: --basic-auth-user, with the password in \
                 --basic-auth-password-file or ${PASSWORD_ENV}"
            ),
            400 if body.contains("HTTPS") => "the daemon serves TLS: use an https:// URL".into(),
            _ => return String::new(),
        };
        format!(" ({hint})")
    }
}

/// What probably fixes a failed connection, from the error's text (ureq
/// wraps rustls' errors as text).
fn transport_hint(why: &str, https: bool, has_client_cert: bool) -> Option<String> {
    let w = why.to_ascii_lowercase();
    if w.contains("unknownissuer") || w.contains("unknown issuer") || w.contains("invalid peer certificate") {
        return Some("the daemon's certificate is not trusted: give the CA that signed it with --tls-ca".into());
    }
    // The server's alerts about the client's certificate: none given
    // (CertificateRequired; HandshakeFailure from TLS 1.2), or one it does
    // not trust (UnknownCA, BadCertificate; DecryptError when a CA of the
    // same name signed it).
    let alerts = ["certificaterequired", "handshakefailure", "unknownca", "badcertificate", "decrypterror"];
    if alerts.iter().any(|a| w.contains(&format!("fatal alert: {a}"))) {
        return Some(if has_client_cert {
            "the daemon refused this client certificate (is it signed by the daemon's client_ca_file?)".into()
        } else {
            "the daemon wants a client certificate: --tls-cert and --tls-key".into()
        });
    }
    if https && (w.contains("corrupt message") || w.contains("invalidcontenttype") || w.contains("invalid content type")) {
        return Some("the daemon does not speak TLS here: use an http:// URL".into());
    }
    if w.contains("refused") {
        return Some("is `gupwatch run` listening there? see its --listen".into());
    }
    None
}

/// `scheme://authority[/prefix]` from what the user wrote.
fn base_url(url: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::Options(format!("--connect {url:?}: {why}"));
    let full = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let (scheme, rest) = full.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http:// or https://"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('@') {
        return Err(bad("no credentials in the URL (every user of the host can read a command line): use --basic-auth-user"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("no query or fragment: the path is gupwatch's to choose"));
    }
    Ok(full.trim_end_matches('/').to_string())
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File { what, path: path.into(), why: e.to_string() })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    let pem = read_file(path, what)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(ClientError::File { what, path: path.into(), why: e.to_string() }),
        }
    }
    if certs.is_empty() {
        return Err(ClientError::File { what, path: path.into(), why: "no PEM certificate (BEGIN CERTIFICATE) in it".into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<ureq::tls::PrivateKey<'static>, ClientError> {
    let what = "--tls-key";
    let pem = read_file(path, what)?;
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::PrivateKey(k)) => return Ok(k),
            Ok(_) => {}
            Err(e) => return Err(ClientError::File { what, path: path.into(), why: e.to_string() }),
        }
    }
    Err(ClientError::File { what, path: path.into(), why: "no PEM private key in it".into() })
}

/// The password: from its file (its first line), else the environment.
fn password(opts: &ConnectOptions) -> Result<String, ClientError> {
    if let Some(path) = &opts.basic_auth_password_file {
        let what = "--basic-auth-password-file";
        let text = read_file(path, what)?;
        let text = String::from_utf8(text)
            .map_err(|_| ClientError::File { what, path: path.into(), why: "not UTF-8".into() })?;
        // One line; the newline an editor or `echo` adds is not part of it.
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    opts.password_from_env.clone().ok_or_else(|| {
        ClientError::Options(format!(
            "--basic-auth-user needs a password: --basic-auth-password-file FILE or ${PASSWORD_ENV} \
             (never on the command line)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(base_url("127.0.0.1:10483").unwrap(), "http://127.0.0.1:10483");
        assert_eq!(base_url("https://node1:10483/").unwrap(), "https://node1:10483");
        assert_eq!(base_url("https://proxy/gupwatch/node1").unwrap(), "https://proxy/gupwatch/node1");
        assert_eq!(base_url("[::1]:10483").unwrap(), "http://[::1]:10483");
        for (bad, why) in [
            ("ftp://x:1", "http:// or https://"),
            ("https://", "no host"),
            ("https://u:p@h:1", "--basic-auth-user"),
            ("h:1/api?x=1", "no query"),
        ] {
            let e = base_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn option_refusals() {
        let opts = |f: &dyn Fn(&mut ConnectOptions)| {
            let mut o = ConnectOptions { url: "https://127.0.0.1:1".into(), timeout: Duration::from_secs(1), ..Default::default() };
            f(&mut o);
            Remote::new(&o).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(opts(&|_| {}), Ok(()));
        type Edit<'a> = &'a dyn Fn(&mut ConnectOptions);
        let cases: [(Edit, &str); 6] = [
            (&|o| o.url = "127.0.0.1:1".into(), ""),
            (&|o| o.tls_cert = Some("c".into()), "go together"),
            (&|o| o.basic_auth_user = Some("prometheus".into()), "never on the command line"),
            (&|o| o.basic_auth_password_file = Some("/nonexistent".into()), "needs --basic-auth-user"),
            (&|o| o.tls_ca = Some("/nonexistent/ca.crt".into()), "--tls-ca /nonexistent/ca.crt"),
            (&|o| { o.url = "h:1".into(); o.tls_ca = Some("ca".into()) }, "need an https:// URL"),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            match opts(f) {
                Ok(()) => assert!(want.is_empty(), "case {i} passed"),
                Err(e) => assert!(!want.is_empty() && e.contains(want), "case {i}: {e}"),
            }
        }
        // The password file's first line, without its newline.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let o = ConnectOptions { basic_auth_user: Some("u".into()), basic_auth_password_file: Some(p), ..Default::default() };
        assert_eq!(password(&o).unwrap(), "s3cret");
        let o = ConnectOptions { password_from_env: Some("e".into()), ..Default::default() };
        assert_eq!(password(&o).unwrap(), "e");
    }

    #[test]
    fn hints_name_the_fix() {
        let h = |w: &str| transport_hint(w, true, false).unwrap_or_default();
        assert!(h("io: invalid peer certificate: UnknownIssuer").contains("--tls-ca"));
        assert!(h("io: received fatal alert: CertificateRequired").contains("--tls-cert"));
        let with_cert = transport_hint("io: received fatal alert: DecryptError", true, true).unwrap_or_default();
        assert!(with_cert.contains("refused this client certificate"), "{with_cert}");
        assert!(h("io: received corrupt message of type InvalidContentType").contains("http://"));
        assert!(h("io: Connection refused (os error 111)").contains("--listen"));
        assert_eq!(h("timeout: global"), "");
    }
}
