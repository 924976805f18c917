//! The web configuration's parsing, refusals and credential checks.

use super::{auth::ct_eq, *};
use std::time::Duration;
use base64::Engine as _;

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
    assert_eq!(t.client_ca, Some(Pem::File("/etc/gupwatch/ca.crt".into())));
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

/// Every key of the toolkit's web-configuration.md at once, each mapped.
#[test]
fn every_exporter_toolkit_key() {
    let c = parse(&format!(
        "tls_server_config:
  cert: |
    -----BEGIN CERTIFICATE-----
    inline
    -----END CERTIFICATE-----
  key: inline-key
  client_ca: inline-ca
  client_auth_type: RequireAndVerifyClientCert
  client_allowed_sans: [prometheus.example, 10.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP384, X25519]
http_server_config:
  http2: false
  headers:
    Content-Security-Policy: default-src 'none'
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    X-XSS-Protection: '1; mode=block'
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {HASH}
rate_limit:
  interval: 1m30s
  burst: 10
"
    ))
    .unwrap();
    let t = c.tls.as_ref().unwrap();
    assert!(matches!(&t.cert, Pem::Inline(p) if p.contains("BEGIN CERTIFICATE")));
    assert_eq!((&t.key, &t.client_ca), (&Pem::Inline("inline-key".into()), &Some(Pem::Inline("inline-ca".into()))));
    assert_eq!(t.client_allowed_sans, Some(vec!["prometheus.example".to_string(), "10.0.0.1".to_string()]));
    assert_eq!(
        t.cipher_suites,
        Some(vec![
            rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        ])
    );
    assert!(c.notes.iter().any(|n| n.contains("TLS_AES_128_GCM_SHA256") && n.contains("TLS 1.3")), "{:?}", c.notes);
    assert_eq!(t.groups, Some(vec![rustls::NamedGroup::secp384r1, rustls::NamedGroup::X25519]));
    assert!(!t.prefer_server_cipher_suites);
    assert_eq!(c.headers.len(), 4, "X-Content-Type-Options: nosniff is always sent");
    assert_eq!(c.rate_limit, Some(RateLimit { interval: Duration::from_secs(90), burst: 10 }));
    assert!(c.describe().contains("rate_limit=10/90s"), "{}", c.describe());
    // rate_limit with interval 0 is off, as in the toolkit.
    assert_eq!(parse("rate_limit:\n  interval: 0\n  burst: 0\n").unwrap().rate_limit, None);
}

#[test]
fn refusals_name_the_key_and_the_fix() {
    let cases = [
        ("tls_srever_config: {}\n", "unknown field"),
        ("tls_server_config:\n  cert_file: a\n", "no key_file"),
        ("tls_server_config:\n  key_file: a\n", "no cert_file"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "TLS 1.2 and 1.3 only"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n", "above"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "names no TLS 1.2 suite"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n", "cipher_suites is not supported by gupwatch: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is not implemented by rustls"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n", "RSA key-exchange"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [FAST]\n", "unknown cipher"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n", "curve_preferences is not supported by gupwatch: CurveP521: the ring provider"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [P256]\n", "unknown curve"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n", "client_allowed_sans is not supported by gupwatch: it needs client_auth_type RequireAndVerifyClientCert"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca: x\n  client_allowed_sans: [x]\n", "RequireAndVerifyClientCert"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca: x\n  client_ca_file: y\n", "both client_ca_file and client_ca"),
        ("rate_limit:\n  interval: 1s\n", "burst must be at least 1"),
        ("rate_limit:\n  interval: often\n  burst: 1\n", "rate_limit.interval"),
        ("rate_limit:\n  every: 1s\n", "unknown field"),
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
