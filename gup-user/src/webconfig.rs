//! `gupwatch run --web-config FILE`: TLS and basic authentication for the
//! metrics endpoint, configured in the YAML format of Prometheus's
//! exporter-toolkit, so the file every other exporter on the host uses
//! works here too.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/gupwatch/tls.crt      # PEM chain; relative paths are
//!   key_file: /etc/gupwatch/tls.key       #   relative to this file
//!   # Client certificates (mutual TLS), optional:
//!   client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven
//!   client_ca_file: /etc/gupwatch/clients-ca.crt
//!   min_version: TLS12                    # TLS12 (default) or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...                # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! What differs from exporter-toolkit, on purpose:
//!
//! - TLS is rustls (pure Rust, ring provider): TLS 1.2 and 1.3 only, with
//!   rustls' own cipher suites and groups. `cipher_suites`,
//!   `curve_preferences`, `client_allowed_sans` and TLS10/TLS11 are refused
//!   with a message rather than silently ignored, so nobody believes a
//!   restriction is in force when it is not.
//! - `RequestClientCert` and `RequireAnyClientCert` (accept a client
//!   certificate without verifying it) are refused: a certificate that is
//!   not verified proves nothing.
//! - `http_server_config.http2` is accepted and ignored (the server speaks
//!   HTTP/1.1); `http_server_config.headers` are added to every response.
//!
//! Credentials: passwords are checked with bcrypt, whose comparison is
//! constant-time. A request naming an unknown user is checked against a
//! configured user's hash all the same, so the answer takes as long whether
//! the user exists or not. bcrypt is slow on purpose (tens of ms at cost
//! 10); as in exporter-toolkit, a successful check is cached, as an
//! HMAC-SHA256 tag of the credentials under a key drawn at start (never
//! the password itself), compared in constant time. bcrypt checks run on
//! the server's render threads, so its render limit (at most 4 at once,
//! see [`crate::http`]) caps them too. Wrong or missing
//! credentials get 401 with `WWW-Authenticate: Basic`.
//!
//! The file and the files it names are checked for changes (at most once a
//! second, when a connection arrives) and reloaded, as exporter-toolkit
//! does per request; a change that does not load is logged and the
//! configuration in force stays. Rotated certificates are picked up
//! without a restart. After `gupwatch run` drops its capabilities it reads
//! these files as plain uid 0, so keep them readable by root's uid or
//! group (root-owned, mode 0600 or 0640, as usual).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

/// Why a web configuration cannot be used. The message names the file, the
/// key, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("web config {path}: {message}")]
pub struct WebConfigError {
    /// The web configuration file.
    pub path: PathBuf,
    /// What is wrong, and the fix.
    pub message: String,
}

// -- The file, as written ----------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

// -- The configuration, checked -----------------------------------------------

/// Where a PEM document comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    /// A file (absolute, or made absolute against the config's directory).
    File(PathBuf),
    /// Inline in the config (`cert:` / `key:`).
    Inline(String),
}

/// Client certificate policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for (`NoClientCert`, the default).
    None,
    /// Verified against `client_ca_file` if the client sends one
    /// (`VerifyClientCertIfGiven`).
    VerifyIfGiven,
    /// Required and verified (`RequireAndVerifyClientCert`).
    Require,
}

/// A TLS protocol version rustls speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The `tls_server_config` section, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain (PEM).
    pub cert: Pem,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA bundle client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// Lowest version offered.
    pub min_version: TlsVersion,
    /// Highest version offered.
    pub max_version: TlsVersion,
    /// Choose the cipher suite by the server's preference.
    pub prefer_server_cipher_suites: bool,
}

/// A web configuration: syntax and values checked; files not yet read
/// ([`WebConfig::build`] reads them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// TLS, if configured.
    pub tls: Option<TlsSettings>,
    /// Users and their bcrypt hashes.
    pub users: BTreeMap<String, String>,
    /// Extra response headers (`http_server_config.headers`).
    pub headers: Vec<(&'static str, String)>,
    /// Things the operator should know (ignored keys), for the log.
    pub notes: Vec<String>,
}

/// Response headers `http_server_config.headers` may set (exporter-toolkit's
/// list). `X-Content-Type-Options: nosniff` is always sent already.
const ALLOWED_HEADERS: &[&str] =
    &["Strict-Transport-Security", "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection", "Content-Security-Policy"];

impl WebConfig {
    /// Parses and checks a web configuration's text; relative file names
    /// are taken relative to `base_dir` (the file's directory). Reads no
    /// file.
    pub fn parse(text: &str, base_dir: &Path) -> Result<WebConfig, WebConfigError> {
        Self::parse_at(text, base_dir, &base_dir.join("web-config.yml"))
    }

    fn parse_at(text: &str, base_dir: &Path, path: &Path) -> Result<WebConfig, WebConfigError> {
        let err = |message: String| WebConfigError { path: path.to_path_buf(), message };
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_norway::from_str::<Option<RawConfig>>(text)
                .map_err(|e| {
                    err(format!(
                        "{e}. The keys are tls_server_config, http_server_config and basic_auth_users, as in Prometheus' exporter-toolkit"
                    ))
                })?
                .unwrap_or_default()
        };
        let mut notes = vec![];
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => Self::parse_tls(t, base_dir, path, &mut notes)?,
        };
        let headers = Self::parse_headers(raw.http_server_config, path, &mut notes)?;
        let users = raw.basic_auth_users.unwrap_or_default();
        Self::check_users(&users, path, &mut notes)?;
        if !users.is_empty() && tls.is_none() {
            notes.push("basic_auth_users without TLS: passwords cross the network in clear text".into());
        }
        Ok(WebConfig { path: path.to_path_buf(), tls, users, headers, notes })
    }

    /// `tls_server_config`: the certificate and key (a file, relative to
    /// `base_dir`, or inline), versions and client authentication; refuses
    /// what rustls cannot honour. `None`: plain HTTP.
    fn parse_tls(
        t: RawTls,
        base_dir: &Path,
        path: &Path,
        notes: &mut Vec<String>,
    ) -> Result<Option<TlsSettings>, WebConfigError> {
        let err = |message: String| WebConfigError { path: path.to_path_buf(), message };
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let refuse = |key: &str, why: &str| {
            err(format!("tls_server_config.{key} is not supported by gupwatch: {why}; remove it"))
        };
        if t.cipher_suites.is_some() {
            return Err(refuse("cipher_suites", "rustls offers only its own modern AEAD suites"));
        }
        if t.curve_preferences.is_some() {
            return Err(refuse("curve_preferences", "rustls chooses among its own safe groups"));
        }
        if t.client_allowed_sans.is_some() {
            return Err(refuse(
                "client_allowed_sans",
                "restrict clients with a dedicated client CA (client_ca_file) instead",
            ));
        }
        let pem = |file: Option<String>, inline: Option<String>, what: &str| -> Result<Option<Pem>, WebConfigError> {
            match (file.filter(|f| !f.is_empty()), inline.filter(|i| !i.is_empty())) {
                (Some(_), Some(_)) => Err(err(format!(
                    "tls_server_config has both {what}_file and {what}: give one of them"
                ))),
                (Some(f), None) => Ok(Some(Pem::File(resolve(&f)))),
                (None, Some(i)) => Ok(Some(Pem::Inline(i))),
                (None, None) => Ok(None),
            }
        };
        let cert = pem(t.cert_file, t.cert, "cert")?;
        let key = pem(t.key_file, t.key, "key")?;
        let version = |key: &str, v: Option<String>, default: TlsVersion| match v.as_deref() {
            None | Some("") => Ok(default),
            Some("TLS12") => Ok(TlsVersion::Tls12),
            Some("TLS13") => Ok(TlsVersion::Tls13),
            Some(old @ ("TLS10" | "TLS11")) => Err(err(format!(
                "tls_server_config.{key}: {old} is not offered (rustls speaks TLS 1.2 and 1.3 only); use TLS12 or TLS13"
            ))),
            Some(other) => Err(err(format!("tls_server_config.{key}: unknown version {other:?}; use TLS12 or TLS13"))),
        };
        let min_version = version("min_version", t.min_version, TlsVersion::Tls12)?;
        let max_version = version("max_version", t.max_version, TlsVersion::Tls13)?;
        if min_version > max_version {
            return Err(err("tls_server_config.min_version is above max_version".into()));
        }
        let client_ca_file = t.client_ca_file.filter(|f| !f.is_empty()).map(|f| resolve(&f));
        let client_auth = match t.client_auth_type.as_deref().unwrap_or("") {
            "" | "NoClientCert" => ClientAuth::None,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::Require,
            unverified @ ("RequestClientCert" | "RequireAnyClientCert") => {
                return Err(err(format!(
                    "tls_server_config.client_auth_type {unverified} would accept client certificates without verifying them, which gupwatch refuses; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
                )))
            }
            other => {
                return Err(err(format!(
                    "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
                )))
            }
        };
        match (client_auth, &client_ca_file) {
            (ClientAuth::None, Some(_)) => {
                return Err(err(
                    "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)".into(),
                ))
            }
            (ClientAuth::VerifyIfGiven | ClientAuth::Require, None) => {
                return Err(err(
                    "tls_server_config.client_auth_type verifies client certificates, which needs client_ca_file (the CA bundle that signed them)".into(),
                ))
            }
            _ => {}
        }
        Ok(match (cert, key) {
            // exporter-toolkit serves plain HTTP when neither is set.
            (None, None) => {
                notes.push("tls_server_config has no certificate: serving plain HTTP".into());
                None
            }
            (Some(_), None) => {
                return Err(err("tls_server_config has a certificate but no key_file (or key)".into()))
            }
            (None, Some(_)) => {
                return Err(err("tls_server_config has a key but no cert_file (or cert)".into()))
            }
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_auth,
                client_ca_file,
                min_version,
                max_version,
                prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
            }),
        })
    }

    /// `http_server_config`: the response headers it may set (HTTP/2 is
    /// noted as ignored).
    fn parse_headers(
        http: Option<RawHttp>,
        path: &Path,
        notes: &mut Vec<String>,
    ) -> Result<Vec<(&'static str, String)>, WebConfigError> {
        let err = |message: String| WebConfigError { path: path.to_path_buf(), message };
        let mut headers = vec![];
        if let Some(h) = http {
            if h.http2 == Some(true) {
                notes.push("http_server_config.http2 is ignored: gupwatch serves HTTP/1.1".into());
            }
            for (name, value) in h.headers.unwrap_or_default() {
                let Some(canonical) = ALLOWED_HEADERS.iter().find(|a| a.eq_ignore_ascii_case(&name)) else {
                    return Err(err(format!(
                        "http_server_config.headers: {name:?} may not be set; allowed: {}",
                        ALLOWED_HEADERS.join(", ")
                    )));
                };
                if value.is_empty() || value.chars().any(|c| c.is_control()) {
                    return Err(err(format!(
                        "http_server_config.headers.{canonical}: the value must be non-empty, on one line, without control characters"
                    )));
                }
                if *canonical == "X-Content-Type-Options" {
                    if !value.eq_ignore_ascii_case("nosniff") {
                        return Err(err("http_server_config.headers.X-Content-Type-Options may only be nosniff (always sent)".into()));
                    }
                    continue;
                }
                headers.push((*canonical, value));
            }
        }
        Ok(headers)
    }

    /// `basic_auth_users`: names basic auth can carry, bcrypt hashes (a
    /// slow cost is noted).
    fn check_users(users: &BTreeMap<String, String>, path: &Path, notes: &mut Vec<String>) -> Result<(), WebConfigError> {
        let err = |message: String| WebConfigError { path: path.to_path_buf(), message };
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') || user.chars().any(|c| c.is_control()) {
                return Err(err(format!(
                    "basic_auth_users: user name {user:?} is empty or has ':' or a control character, which basic auth cannot carry"
                )));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                err(format!(
                    "basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'` and paste its output"
                ))
            })?;
            if parts.get_cost() > 16 {
                notes.push(format!(
                    "basic_auth_users.{user}: bcrypt cost {} makes every uncached check slow (each cost step doubles it; 10 to 12 is usual)",
                    parts.get_cost()
                ));
            }
        }
        Ok(())
    }

    /// Reads and checks a web configuration file.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::parse_at(&text, base, path)
    }

    /// The files this configuration reads (for change detection).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![];
        if let Some(t) = &self.tls {
            for p in [&t.cert, &t.key] {
                if let Pem::File(f) = p {
                    v.push(f.clone());
                }
            }
            v.extend(t.client_ca_file.clone());
        }
        v
    }

    /// One line for the log: `tls=on client_auth=... users=N`.
    pub fn describe(&self) -> String {
        let tls = match &self.tls {
            None => "tls=off".to_string(),
            Some(t) => format!(
                "tls=on versions={}-{} client_auth={}",
                version_name(t.min_version),
                version_name(t.max_version),
                match t.client_auth {
                    ClientAuth::None => "none",
                    ClientAuth::VerifyIfGiven => "verify-if-given",
                    ClientAuth::Require => "require-and-verify",
                }
            ),
        };
        format!("{tls} basic_auth_users={} extra_headers={}", self.users.len(), self.headers.len())
    }

    /// Reads the certificate, key and client CA, and builds what the server
    /// uses.
    pub fn build(&self) -> Result<Security, WebConfigError> {
        let err = |message: String| WebConfigError { path: self.path.clone(), message };
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(Arc::new(build_tls(t).map_err(err)?)),
        };
        let auth = (!self.users.is_empty()).then(|| BasicAuth::new(self.users.clone()));
        Ok(Security { tls, auth, headers: self.headers.clone() })
    }
}

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls12 => "TLS12",
        TlsVersion::Tls13 => "TLS13",
    }
}

fn read_pem(p: &Pem, what: &str, key: &str) -> Result<Vec<u8>, String> {
    match p {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(f) => std::fs::read(f).map_err(|e| {
            format!("cannot read the {what} {} (tls_server_config.{key}): {e}", f.display())
        }),
    }
}

fn pem_name(p: &Pem, key: &str) -> String {
    match p {
        Pem::File(f) => f.display().to_string(),
        Pem::Inline(_) => format!("tls_server_config.{key}"),
    }
}

fn build_tls(t: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read_pem(&t.cert, "TLS certificate", "cert_file")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", pem_name(&t.cert, "cert")))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" block found; cert_file must be a PEM certificate (chain)",
            pem_name(&t.cert, "cert")
        ));
    }
    let key_pem = read_pem(&t.key, "TLS private key", "key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{}: no usable private key ({e}); key_file must be a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC), unencrypted",
            pem_name(&t.key, "key")
        )
    })?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (t.client_auth, &t.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (policy, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|e| {
                format!("cannot read the client CA bundle {} (tls_server_config.client_ca_file): {e}", ca.display())
            })?;
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("{}: not a PEM certificate bundle: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: a CA certificate is not usable: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no CA certificate found (client_ca_file must be PEM)", ca.display()));
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let v = if policy == ClientAuth::VerifyIfGiven { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| format!("client certificate verifier ({}): {e}", ca.display()))?,
            )
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the certificate ({}) and key ({}) cannot be used together: {e}",
            pem_name(&t.cert, "cert"),
            pem_name(&t.key, "key")
        )
    })?;
    cfg.ignore_client_order = t.prefer_server_cipher_suites;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

// -- What the server uses ------------------------------------------------------

/// TLS and authentication as the server applies them.
pub struct Security {
    tls: Option<Arc<ServerConfig>>,
    auth: Option<BasicAuth>,
    headers: Vec<(&'static str, String)>,
}

impl Security {
    /// The rustls configuration, when TLS is on.
    pub fn tls(&self) -> Option<&Arc<ServerConfig>> {
        self.tls.as_ref()
    }

    /// Whether requests need credentials.
    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether a request with this `Authorization` header may pass (always
    /// true without `basic_auth_users`).
    pub fn authorize(&self, authorization: Option<&str>) -> bool {
        match &self.auth {
            None => true,
            Some(a) => a.check(authorization),
        }
    }

    /// [`Security::authorize`]'s answer when it needs no bcrypt (no
    /// `basic_auth_users`, no usable header, or credentials verified
    /// before), so the server can give it without a render slot; `None`
    /// when only bcrypt can tell.
    pub fn authorize_quick(&self, authorization: Option<&str>) -> Option<bool> {
        match &self.auth {
            None => Some(true),
            Some(a) => a.check_cached(authorization),
        }
    }

    /// Headers added to every response.
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }
}

/// The `WWW-Authenticate` challenge sent with 401.
pub const CHALLENGE: &str = "Basic realm=\"gupwatch\", charset=\"UTF-8\"";

/// Splits an `Authorization: Basic <base64(user:password)>` header into
/// the user (UTF-8) and the password bytes; `None` for anything else.
pub fn parse_basic_authorization(header: &str) -> Option<(String, Vec<u8>)> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Longest password bcrypt can check (it reads at most 72 bytes; longer
/// ones are refused, as Go's bcrypt does, rather than truncated).
const MAX_PASSWORD: usize = 72;

/// Users, their bcrypt hashes, and the cache of verified credentials.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Key of the cache's HMAC tags (random, per process).
    key: ring::hmac::Key,
    /// user → tag of the last credentials verified for that user.
    cache: Mutex<HashMap<String, ring::hmac::Tag>>,
}

impl BasicAuth {
    /// Users and their bcrypt hashes (checked by [`WebConfig::parse`]).
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("the system random generator works");
        BasicAuth { users, key, cache: Mutex::new(HashMap::new()) }
    }

    fn tag(&self, user: &str, password: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password);
        ctx.sign()
    }

    /// [`BasicAuth::check`] without bcrypt: `Some(false)` without usable
    /// credentials, `Some(true)` for credentials verified before, `None`
    /// when bcrypt must tell.
    pub fn check_cached(&self, authorization: Option<&str>) -> Option<bool> {
        let Some((user, password)) = authorization.and_then(parse_basic_authorization) else { return Some(false) };
        if self.users.is_empty() {
            return Some(false);
        }
        if self.users.contains_key(&user) {
            let tag = self.tag(&user, &password);
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&user).is_some_and(|t| ct_eq(t.as_ref(), tag.as_ref())) {
                return Some(true);
            }
        }
        None
    }

    /// Whether this `Authorization` header carries valid credentials.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic_authorization) else { return false };
        let tag = self.tag(&user, &password);
        let hash = self.users.get(&user);
        if hash.is_some() {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&user).is_some_and(|t| ct_eq(t.as_ref(), tag.as_ref())) {
                return true;
            }
        }
        // Unknown users are checked against a real hash too, so the time
        // taken does not tell whether the user exists.
        let Some(target) = hash.or_else(|| self.users.values().next()) else { return false };
        let ok = password.len() <= MAX_PASSWORD && bcrypt::verify(&password, target).unwrap_or(false);
        let ok = ok && hash.is_some();
        if ok {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(user, tag);
        }
        ok
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

// -- Reloading -----------------------------------------------------------------

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct WatchState {
    active: Arc<Security>,
    config: WebConfig,
    stamps: Vec<(PathBuf, Stamp)>,
    checked: Instant,
}

/// A loaded web configuration that follows changes to its files.
pub struct WebConfigWatcher {
    path: PathBuf,
    interval: Duration,
    state: Mutex<WatchState>,
}

impl WebConfigWatcher {
    /// Loads and builds the configuration; any error is returned (at start
    /// a bad configuration must stop the daemon, not open the endpoint).
    pub fn load(path: &Path) -> Result<WebConfigWatcher, WebConfigError> {
        let config = WebConfig::load(path)?;
        let active = Arc::new(config.build()?);
        let stamps = Self::stamps(path, &config);
        Ok(WebConfigWatcher {
            path: path.to_path_buf(),
            interval: Duration::from_secs(1),
            state: Mutex::new(WatchState { active, config, stamps, checked: Instant::now() }),
        })
    }

    fn stamps(path: &Path, config: &WebConfig) -> Vec<(PathBuf, Stamp)> {
        std::iter::once(path.to_path_buf()).chain(config.files()).map(|p| {
            let s = stamp(&p);
            (p, s)
        }).collect()
    }

    /// The configuration in force (as loaded first).
    pub fn config(&self) -> WebConfig {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).config.clone()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.current().tls().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// What applies to a new connection: reloads first if a file changed
    /// (checked at most once per interval). A change that fails to load is
    /// logged; the configuration in force stays.
    pub fn current(&self) -> Arc<Security> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.interval {
            st.checked = Instant::now();
            let now: Vec<(PathBuf, Stamp)> = st.stamps.iter().map(|(p, _)| (p.clone(), stamp(p))).collect();
            if now != st.stamps {
                match WebConfig::load(&self.path).and_then(|c| c.build().map(|s| (c, s))) {
                    Ok((config, security)) => {
                        tracing::info!(path = %self.path.display(), settings = %config.describe(), "web config reloaded");
                        st.stamps = Self::stamps(&self.path, &config);
                        st.active = Arc::new(security);
                        st.config = config;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "web config changed but does not load; the one in force stays");
                        st.stamps = now;
                    }
                }
            }
        }
        Arc::clone(&st.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/etc/gupwatch")).map_err(|e| e.to_string())
    }

    // "secret", bcrypt cost 4 (fast enough for tests).
    const HASH: &str = "$2b$04$u6rvD30jTCUjsr.w1c1EzeBNL7PAt2gcDesLfNQqo.Ko9fxaDHv3m";

    #[test]
    fn exporter_toolkit_format() {
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: /abs/tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\nbasic_auth_users:\n  prometheus: {HASH}\nhttp_server_config:\n  http2: true\n  headers:\n    Strict-Transport-Security: max-age=31536000\n"
        ))
        .unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.cert, Pem::File("/etc/gupwatch/tls.crt".into()));
        assert_eq!(t.key, Pem::File("/abs/tls.key".into()));
        assert_eq!(t.client_auth, ClientAuth::Require);
        assert_eq!(t.client_ca_file.as_deref(), Some(Path::new("/etc/gupwatch/ca.crt")));
        assert_eq!((t.min_version, t.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.headers, [("Strict-Transport-Security", "max-age=31536000".to_string())]);
        assert!(c.notes.iter().any(|n| n.contains("http2")));
        assert!(c.describe().contains("tls=on"), "{}", c.describe());
        // Empty file, and an empty document: nothing configured.
        assert_eq!(parse("").unwrap().tls, None);
        assert_eq!(parse("# just a comment\n").unwrap().users.len(), 0);
        // No certificate at all: plain HTTP (as exporter-toolkit).
        assert_eq!(parse("tls_server_config: {}\n").unwrap().tls, None);
    }

    #[test]
    fn refusals_name_the_key_and_the_fix() {
        let cases = [
            ("tls_srever_config: {}\n", "unknown field"),
            ("tls_server_config:\n  cert_file: a\n", "no key_file"),
            ("tls_server_config:\n  key_file: a\n", "no cert_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "TLS 1.2 and 1.3 only"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n", "above"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n", "without verifying"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n", "NoClientCert"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n", "not one of"),
            ("basic_auth_users:\n  alice: secret\n", "htpasswd"),
            ("basic_auth_users:\n  \"a:b\": x\n", "':'"),
            ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "may not be set"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: \"deny\\r\\nX: y\"\n", "control"),
            ("- a list\n", "exporter-toolkit"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("web config /etc/gupwatch/"), "{e}");
        }
    }

    #[test]
    fn basic_auth_header() {
        assert_eq!(parse_basic_authorization("Basic YWxpY2U6c2VjcmV0"), Some(("alice".into(), b"secret".to_vec())));
        assert_eq!(parse_basic_authorization("basic  YWxpY2U6c2VjcmV0 "), Some(("alice".into(), b"secret".to_vec())));
        // The password may hold ':'; the user may not.
        assert_eq!(parse_basic_authorization("Basic YTpiOmM="), Some(("a".into(), b"b:c".to_vec())));
        for bad in ["", "Basic", "Basic !!!", "Bearer YWxpY2U6c2VjcmV0", "Basic YWxpY2U=", "Basic /w=="] {
            assert_eq!(parse_basic_authorization(bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_are_checked_and_cached() {
        let auth = BasicAuth::new([("alice".to_string(), HASH.to_string())].into());
        let hdr = |u: &str, p: &str| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        };
        assert!(!auth.check(None));
        assert!(!auth.check(Some("Basic")));
        assert!(!auth.check(Some(&hdr("alice", "wrong"))));
        assert!(!auth.check(Some(&hdr("bob", "secret"))), "an unknown user never passes");
        assert_eq!(auth.check_cached(Some(&hdr("alice", "secret"))), None, "only bcrypt can tell yet");
        assert!(auth.check(Some(&hdr("alice", "secret"))));
        assert!(auth.check(Some(&hdr("alice", "secret"))), "cached");
        assert_eq!(auth.check_cached(Some(&hdr("alice", "secret"))), Some(true));
        assert_eq!(auth.check_cached(Some(&hdr("alice", "wrong"))), None, "a miss still goes to bcrypt");
        assert_eq!(auth.check_cached(Some("Basic")), Some(false));
        assert_eq!(auth.check_cached(None), Some(false));
        assert!(!auth.check(Some(&hdr("alice", "wrong"))), "the cache does not widen what passes");
        assert!(!auth.check(Some(&hdr("alice", &"x".repeat(100)))));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
