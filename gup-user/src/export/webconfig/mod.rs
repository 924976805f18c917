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
//! Every key of the toolkit's format is read. What rustls can honour is
//! mapped; what it cannot is refused with a message naming the key and
//! why, never silently ignored, so nobody believes a restriction is in
//! force when it is not:
//!
//! - TLS is rustls (pure Rust, ring provider): TLS 1.2 and 1.3 only
//!   (TLS10/TLS11 refused). `cipher_suites` takes Go's names: the ECDHE
//!   AES-GCM and ChaCha20-Poly1305 suites map to rustls' TLS 1.2 suites (in
//!   the order given, which `prefer_server_cipher_suites` makes the
//!   server's); CBC, RSA key exchange, 3DES and RC4 (which rustls does not
//!   implement) are refused; TLS 1.3 names are noted as not configurable,
//!   as in Go. `curve_preferences` maps `X25519`, `CurveP256` and
//!   `CurveP384` to rustls' key-exchange groups, in that order of
//!   preference; `CurveP521` is refused (ring has no P-521).
//! - `cert`, `key` and `client_ca` may be inline PEM instead of
//!   `cert_file`, `key_file` and `client_ca_file`.
//! - `client_allowed_sans`: the client certificate, once verified, must
//!   carry one of these SANs exactly (DNS, IP, e-mail or URI), as in the
//!   toolkit; it needs `RequireAndVerifyClientCert`.
//! - `RequestClientCert` and `RequireAnyClientCert` (accept a client
//!   certificate without verifying it) are refused: a certificate that is
//!   not verified proves nothing.
//! - `rate_limit` (`interval`, `burst`): a token bucket over every request,
//!   as the toolkit's; a request over it gets 429 before its credentials
//!   are checked.
//! - `http_server_config.http2` is accepted and noted: the server offers
//!   only HTTP/1.1 in ALPN, so clients use HTTP/1.1 as with `http2: false`;
//!   `http_server_config.headers` are added to every response.
//!
//! Credentials: passwords are checked with bcrypt, whose comparison is
//! constant-time. A request naming an unknown user is checked against a
//! configured user's hash all the same, so the answer takes as long whether
//! the user exists or not. bcrypt is slow on purpose (tens of ms at cost
//! 10); as in exporter-toolkit, a successful check is cached, as an
//! HMAC-SHA256 tag of the credentials under a key drawn at start (never
//! the password itself), compared in constant time. bcrypt checks run on
//! the server's render threads, so its render limit (at most 4 at once,
//! see [`crate::export::http`]) caps them too. Wrong or missing
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
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::ServerConfig;
use serde::Deserialize;

mod auth;
mod ratelimit;
mod tls;
mod watch;

pub use auth::{parse_basic_authorization, BasicAuth};
pub use ratelimit::{RateLimit, RateLimiter};
pub use watch::WebConfigWatcher;

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
    rate_limit: Option<ratelimit::RawRateLimit>,
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
    client_ca: Option<String>,
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
    /// CA bundle client certificates are verified against
    /// (`client_ca_file`, or inline `client_ca`).
    pub client_ca: Option<Pem>,
    /// SANs one of which a client certificate must carry (exact match).
    pub client_allowed_sans: Option<Vec<String>>,
    /// TLS 1.2 suites, in the order given (`None`: rustls' own).
    pub cipher_suites: Option<Vec<rustls::CipherSuite>>,
    /// Key-exchange groups, in the order given (`None`: rustls' own).
    pub groups: Option<Vec<rustls::NamedGroup>>,
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
    /// `rate_limit`, when on.
    pub rate_limit: Option<RateLimit>,
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
                        "{e}. The keys are tls_server_config, http_server_config, basic_auth_users and rate_limit, as in Prometheus' exporter-toolkit"
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
        let rate_limit = match raw.rate_limit {
            None => None,
            Some(r) => ratelimit::parse(r).map_err(err)?,
        };
        Ok(WebConfig { path: path.to_path_buf(), tls, users, headers, rate_limit, notes })
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
        let cipher_suites = match t.cipher_suites {
            None => None,
            Some(names) => Some(tls::cipher_suites(&names, notes).map_err(|why| refuse("cipher_suites", &why))?),
        };
        let groups = match t.curve_preferences {
            None => None,
            Some(names) => Some(tls::groups(&names).map_err(|why| refuse("curve_preferences", &why))?),
        };
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
        let client_ca = pem(t.client_ca_file, t.client_ca, "client_ca")?;
        let client_auth = client_auth(t.client_auth_type.as_deref(), client_ca.is_some()).map_err(err)?;
        let client_allowed_sans = t.client_allowed_sans.filter(|s| !s.is_empty());
        if client_allowed_sans.is_some() && client_auth != ClientAuth::Require {
            return Err(refuse(
                "client_allowed_sans",
                "it needs client_auth_type RequireAndVerifyClientCert (without a required certificate there is no SAN to match)",
            ));
        }
        if cipher_suites.is_some() && min_version == TlsVersion::Tls13 {
            notes.push("tls_server_config.cipher_suites applies to TLS 1.2, which min_version TLS13 turns off".into());
        } else if cipher_suites.as_ref().is_some_and(Vec::is_empty) {
            return Err(refuse(
                "cipher_suites",
                "it names no TLS 1.2 suite, so TLS 1.2 clients could not connect; name one, or set min_version TLS13",
            ));
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
                client_ca,
                client_allowed_sans,
                cipher_suites,
                groups,
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
            for p in [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()].into_iter().flatten() {
                if let Pem::File(f) = p {
                    v.push(f.clone());
                }
            }
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
        let rate = self.rate_limit.map_or("off".to_string(), |r| format!("{}/{:?}", r.burst, r.interval));
        format!("{tls} basic_auth_users={} extra_headers={} rate_limit={rate}", self.users.len(), self.headers.len())
    }

    /// Reads the certificate, key and client CA, and builds what the server
    /// uses.
    pub fn build(&self) -> Result<Security, WebConfigError> {
        let err = |message: String| WebConfigError { path: self.path.clone(), message };
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(Arc::new(tls::build(t).map_err(err)?)),
        };
        let auth = (!self.users.is_empty()).then(|| BasicAuth::new(self.users.clone()));
        let limiter = self.rate_limit.map(RateLimiter::new);
        Ok(Security { tls, auth, headers: self.headers.clone(), limiter })
    }
}

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls12 => "TLS12",
        TlsVersion::Tls13 => "TLS13",
    }
}


// -- What the server uses ------------------------------------------------------

/// TLS and authentication as the server applies them.
pub struct Security {
    tls: Option<Arc<ServerConfig>>,
    auth: Option<BasicAuth>,
    headers: Vec<(&'static str, String)>,
    /// One bucket for every connection made while this configuration is
    /// in force (a reload starts a full one).
    limiter: Option<RateLimiter>,
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

    /// Whether `rate_limit` lets one more request in now (`Err`: the time
    /// until it would).
    pub fn admit(&self) -> Result<(), std::time::Duration> {
        self.limiter.as_ref().map_or(Ok(()), RateLimiter::take)
    }
}

/// The `WWW-Authenticate` challenge sent with 401.
pub const CHALLENGE: &str = "Basic realm=\"gupwatch\", charset=\"UTF-8\"";


/// `client_auth_type`, checked against whether a client CA is given:
/// gupwatch never accepts a client certificate it does not verify.
fn client_auth(kind: Option<&str>, has_ca: bool) -> Result<ClientAuth, String> {
    let auth = match kind.unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::Require,
        unverified @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(format!(
                "tls_server_config.client_auth_type {unverified} would accept client certificates without verifying them, which gupwatch refuses; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            ))
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ))
        }
    };
    match (auth, has_ca) {
        (ClientAuth::None, true) => {
            return Err(
                "tls_server_config.client_ca_file (or client_ca) is set but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)".into(),
            )
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::Require, false) => {
            return Err(
                "tls_server_config.client_auth_type verifies client certificates, which needs client_ca_file or client_ca (the CA bundle that signed them)".into(),
            )
        }
        _ => {}
    }
    Ok(auth)
}

#[cfg(test)]
mod tests;
