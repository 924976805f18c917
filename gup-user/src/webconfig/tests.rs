//! The web configuration's parsing, refusals and credential checks.

use super::{auth::ct_eq, *};
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
