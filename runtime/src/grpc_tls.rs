//! TLS for the gRPC APIs (the gateway admin API, the control plane) and their
//! clients (gateway → control plane, control plane → gateway admin), with
//! optional mutual TLS. One config shape for every server and one for every
//! client; both processes' configs use these types.

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// `tls:` of a gRPC server.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileServerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (mutual TLS); bearer tokens are still required.
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// `tls:` of a gRPC client.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct FileClientTls {
    /// PEM CA bundle that signed the server's certificate.
    pub ca_file: String,
    /// Client certificate and key, for servers that require mutual TLS.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    /// Name to check in the server's certificate (default: the host of
    /// the address dialled).
    #[serde(default)]
    pub server_name: Option<String>,
}

fn read(what: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {path}: {e}"))
}

/// Loads a server's certificate, key and optional client CA.
pub fn server_config(t: &FileServerTls) -> Result<ServerTlsConfig, String> {
    let cert = read("cert_file", &t.cert_file)?;
    let key = read("key_file", &t.key_file)?;
    check_pem("cert_file", &t.cert_file, &cert, "CERTIFICATE")?;
    check_pem("key_file", &t.key_file, &key, "PRIVATE KEY")?;
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &t.client_ca_file {
        let pem = read("client_ca_file", ca)?;
        check_pem("client_ca_file", ca, &pem, "CERTIFICATE")?;
        cfg = cfg.client_ca_root(Certificate::from_pem(pem));
    }
    Ok(cfg)
}

/// Loads a client's CA and optional certificate and key.
pub fn client_config(t: &FileClientTls) -> Result<ClientTlsConfig, String> {
    let ca = read("ca_file", &t.ca_file)?;
    check_pem("ca_file", &t.ca_file, &ca, "CERTIFICATE")?;
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => {
            let cert = read("cert_file", c)?;
            let key = read("key_file", k)?;
            check_pem("cert_file", c, &cert, "CERTIFICATE")?;
            check_pem("key_file", k, &key, "PRIVATE KEY")?;
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => return Err("cert_file and key_file go together".into()),
    }
    if let Some(name) = &t.server_name {
        cfg = cfg.domain_name(name.clone());
    }
    Ok(cfg)
}

/// A clear error at start instead of a failed handshake later.
fn check_pem(what: &str, path: &str, pem: &[u8], label: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN") && text.contains(label) {
        Ok(())
    } else {
        Err(format!("{what} {path} holds no PEM {label}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_named() {
        let e = server_config(&FileServerTls {
            cert_file: "/nonexistent/c.pem".into(),
            key_file: "/nonexistent/k.pem".into(),
            client_ca_file: None,
        })
        .unwrap_err();
        assert!(e.contains("cert_file /nonexistent/c.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("gg-grpc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = client_config(&FileClientTls {
            ca_file: junk.to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("holds no PEM CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
