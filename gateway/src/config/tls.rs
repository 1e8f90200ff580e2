//! `tls:` — TLS on the client port, told apart from plaintext by sniffing
//! (both are served). Absent = a TLS ClientHello is refused.

use std::sync::Arc;

use serde::Deserialize;

use super::Errors;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// The client port's TLS server config (key material is never printed),
/// and the files it came from, to reload them.
#[derive(Clone)]
pub struct TlsSettings {
    pub server: Arc<rustls::ServerConfig>,
    pub files: (String, String),
}

impl TlsSettings {
    /// Reads the certificate and key files again.
    pub fn reload(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        tls_server(&FileTls {
            cert_file: self.files.0.clone(),
            key_file: self.files.1.clone(),
        })
    }
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings(..)")
    }
}

impl FileTls {
    pub(super) fn validate(&self, errs: &mut Errors) -> Option<TlsSettings> {
        match tls_server(self) {
            Ok(server) => Some(TlsSettings {
                server,
                files: (self.cert_file.clone(), self.key_file.clone()),
            }),
            Err(e) => {
                errs.push(format!("tls: {e}"));
                None
            }
        }
    }
}

/// Loads the certificate chain and key into a rustls server config (ring).
fn tls_server(t: &FileTls) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", t.cert_file))?;
    if certs.is_empty() {
        return Err(format!("cert_file {} holds no certificate", t.cert_file));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .map_err(|e| format!("key_file {}: {e}", t.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    // HTTP/2 for gRPC clients, HTTP/1.1 for the rest; frame-protocol
    // clients offer no ALPN and are unaffected.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
