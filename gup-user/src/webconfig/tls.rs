//! The `tls_server_config` section made into a rustls server configuration.

use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

use super::{ClientAuth, Pem, TlsSettings, TlsVersion};

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
