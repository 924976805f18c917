//! The `tls_server_config` section made into a rustls server configuration:
//! Go's cipher-suite and curve names mapped to rustls', the client CA
//! (file or inline), and `client_allowed_sans` checked after verification.

use std::sync::Arc;

use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    CipherSuite, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore, ServerConfig, SignatureScheme,
};

use super::{ClientAuth, Pem, TlsSettings, TlsVersion};

/// Go's names of the TLS 1.2 suites rustls (ring) implements.
const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
];

/// Go's TLS 1.3 suite names: Go does not let them be configured (its
/// `CipherSuites` applies to TLS 1.2 and below), nor does the toolkit.
const TLS13_NAMES: &[&str] = &["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/// `cipher_suites` (Go's names) as rustls' TLS 1.2 suites, in order.
pub(super) fn cipher_suites(names: &[String], notes: &mut Vec<String>) -> Result<Vec<CipherSuite>, String> {
    let mut out = Vec::new();
    for name in names {
        if let Some((_, s)) = TLS12_SUITES.iter().find(|(n, _)| n == name) {
            if !out.contains(s) {
                out.push(*s);
            }
        } else if TLS13_NAMES.contains(&name.as_str()) {
            notes.push(format!(
                "tls_server_config.cipher_suites: {name} is a TLS 1.3 suite, which cannot be configured (as in Go); rustls offers all three"
            ));
        } else if ["_CBC_", "TLS_RSA_", "3DES", "RC4"].iter().any(|k| name.contains(k)) {
            return Err(format!(
                "{name} is not implemented by rustls (no CBC, RSA key-exchange, 3DES or RC4 suites: they are the weak ones); \
                 the TLS 1.2 suites it has: {}",
                tls12_names()
            ));
        } else {
            return Err(format!("unknown cipher {name:?}; the TLS 1.2 suites rustls has: {}", tls12_names()));
        }
    }
    Ok(out)
}

fn tls12_names() -> String {
    TLS12_SUITES.iter().map(|(n, _)| *n).filter(|n| n.ends_with("_SHA256") || n.ends_with("_SHA384")).collect::<Vec<_>>().join(", ")
}

/// `curve_preferences` (the toolkit's names) as rustls' key-exchange groups.
pub(super) fn groups(names: &[String]) -> Result<Vec<NamedGroup>, String> {
    let mut out = Vec::new();
    for name in names {
        let g = match name.as_str() {
            "X25519" => NamedGroup::X25519,
            "CurveP256" => NamedGroup::secp256r1,
            "CurveP384" => NamedGroup::secp384r1,
            "CurveP521" => {
                return Err("CurveP521: the ring provider gupwatch's rustls uses has no P-521; use X25519, CurveP256 or CurveP384".into())
            }
            other => return Err(format!("unknown curve {other:?}; use X25519, CurveP256 or CurveP384")),
        };
        if !out.contains(&g) {
            out.push(g);
        }
    }
    if out.is_empty() {
        return Err("the list is empty; leave the key out for rustls' own groups".into());
    }
    Ok(out)
}

/// The ring provider with the configured suites and groups, in the
/// configured order (the server's preference when
/// `prefer_server_cipher_suites`).
fn provider(t: &TlsSettings) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(wanted) = &t.cipher_suites {
        let all = std::mem::take(&mut p.cipher_suites);
        let tls13 = all.iter().filter(|s| s.tls13().is_some()).copied();
        let tls12 = wanted.iter().filter_map(|w| all.iter().find(|s| s.suite() == *w).copied());
        p.cipher_suites = tls13.chain(tls12).collect();
    }
    if let Some(wanted) = &t.groups {
        let all = std::mem::take(&mut p.kx_groups);
        p.kx_groups = wanted.iter().filter_map(|w| all.iter().find(|g| g.name() == *w).copied()).collect();
    }
    p
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

/// Reads the certificate, key and client CA and builds the rustls
/// configuration; the error names the file or key and the fix.
pub(super) fn build(t: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider(t));
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
        .map_err(|e| format!("TLS versions, cipher_suites and curve_preferences leave nothing to offer: {e}"))?;
    let builder = match client_verifier(t, &provider)? {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v),
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

/// The client-certificate verifier the policy asks for, with the SAN
/// check on top when `client_allowed_sans` is set.
fn client_verifier(t: &TlsSettings, provider: &Arc<CryptoProvider>) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    let (policy, Some(ca)) = (t.client_auth, &t.client_ca) else { return Ok(None) };
    if policy == ClientAuth::None {
        return Ok(None);
    }
    let name = pem_name(ca, "client_ca");
    let pem = read_pem(ca, "client CA bundle", "client_ca_file")?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("{name}: not a PEM certificate bundle: {e}"))?;
        roots.add(c).map_err(|e| format!("{name}: a CA certificate is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{name}: no CA certificate found (client_ca_file / client_ca must be PEM)"));
    }
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let v = if policy == ClientAuth::VerifyIfGiven { v.allow_unauthenticated() } else { v };
    let v = v.build().map_err(|e| format!("client certificate verifier ({name}): {e}"))?;
    Ok(Some(match &t.client_allowed_sans {
        None => v,
        Some(allowed) => Arc::new(SanVerifier { inner: v, allowed: allowed.clone() }),
    }))
}

/// Verifies as `inner` does, then wants one of `allowed` among the
/// certificate's SANs, compared exactly as the toolkit does (DNS names,
/// e-mail addresses, IP addresses in their usual text, URIs).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// The SANs of a DER certificate, as text.
pub(super) fn sans(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let Some(ext) = cert.subject_alternative_name().map_err(|e| e.to_string())? else { return Ok(vec![]) };
    Ok(ext
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => Some(s.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let found = sans(end_entity.as_ref()).map_err(|e| rustls::Error::General(format!("client certificate: {e}")))?;
        if found.iter().any(|s| self.allowed.contains(s)) {
            return Ok(verified);
        }
        tracing::warn!(sans = ?found, "client certificate refused: none of its SANs is in client_allowed_sans");
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
