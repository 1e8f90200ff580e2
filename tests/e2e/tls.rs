//! TLS on the client port: frames and HTTP over TLS, next to plaintext on
//! the same port, with a certificate made by `openssl` for the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use gg_proto::Frame;
use gg_proto::frame::{self, Header, Kind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A CA and a server certificate for the test: (ca, cert, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("cert dir");
    make_certs(dir);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

async fn tls_connect(addr: std::net::SocketAddr, ca: &Path) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca pem") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

async fn read_frame(s: &mut TlsStream<TcpStream>, buf: &mut BytesMut) -> Frame {
    loop {
        if let Some(f) = frame::decode(buf, 1 << 20).expect("valid frame") {
            return f;
        }
        let n = tokio::time::timeout(WAIT, s.read_buf(buf))
            .await
            .expect("frame in time")
            .expect("read");
        assert!(n > 0, "connection closed");
    }
}

#[tokio::test]
async fn frames_and_http_over_tls_next_to_plaintext() {
    let (ca, cert, key) = make_cert(&scratch("tls", "d"));
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}tls: {{ cert_file: {}, key_file: {} }}\n",
        one_service(b.addr),
        cert.display(),
        key.display()
    ))
    .await;

    // Frames over TLS.
    let mut s = tls_connect(gw.client, &ca).await;
    let mut h = Header::new(Kind::Hello);
    h.user_id = 5;
    s.write_all(&Frame::new(h, &b"{}"[..]).to_bytes())
        .await
        .expect("hello");
    let mut buf = BytesMut::new();
    let welcome = read_frame(&mut s, &mut buf).await;
    assert_eq!(welcome.header.kind(), Some(Kind::Welcome));
    let mut d = Header::new(Kind::Data);
    d.service_type = 1;
    d.seq = 9;
    s.write_all(&Frame::new(d, &b"over tls"[..]).to_bytes())
        .await
        .expect("data");
    let reply = read_frame(&mut s, &mut buf).await;
    assert_eq!(
        (reply.header.seq, &reply.payload[..]),
        (9, &b"over tls"[..])
    );

    // HTTP over TLS.
    let mut s = tls_connect(gw.client, &ca).await;
    s.write_all(b"POST /v1/call/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhttps")
        .await
        .expect("request");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read");
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("https"), "{resp}");

    // Plaintext on the same port still works.
    let mut c = Client::tcp(gw.client).await;
    c.hello(6, 0).await;
    assert_eq!(c.call_text(1, 1, "plain").await, "plain");

    // A broken handshake is dropped and counted.
    let mut raw = TcpStream::connect(gw.client).await.expect("connect");
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 1, 2, 3, 4])
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await;
    gw.wait_metric("gg_rejections_total{reason=\"tls_handshake\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test]
async fn bad_tls_config_is_refused() {
    let (_ca, cert, _key) = make_cert(&scratch("tls", "d"));
    let (code, err) = run_to_exit(
        "gateway",
        &format!(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\ntls: {{ cert_file: {}, key_file: /nonexistent/key.pem }}\n",
            cert.display()
        ),
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("tls: key_file /nonexistent/key.pem"), "{err}");
}

#[tokio::test]
async fn admin_api_over_mutual_tls() {
    let dir = scratch("tls", "d");
    let (ca, cert, key) = make_cert(&dir);
    let (client_cert, client_key) = (dir.join("client.crt"), dir.join("client.key"));
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}admin:\n  listen: 127.0.0.1:0\n  tokens: [ {{ name: r, scope: read, value: {READ_TOKEN} }} ]\n  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n",
        one_service(b.addr),
        cert.display(),
        key.display(),
        ca.display()
    ))
    .await;
    let addr = gw.admin.expect("admin");
    let pem = |p: &Path| std::fs::read(p).expect("pem");
    let connect = |identity: bool| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem(&ca)))
            .domain_name("localhost");
        if identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                pem(&client_cert),
                pem(&client_key),
            ));
        }
        async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut c =
                gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient::with_interceptor(
                    ch,
                    Bearer(Some(READ_TOKEN.into())),
                );
            c.get_info(gg_proto::pb::admin::GetInfoRequest {})
                .await
                .map(|r| r.into_inner().gateway_id)
                .map_err(|e| format!("call: {e}"))
        }
    };
    let ok: Result<String, String> = connect(true).await;
    assert_eq!(ok.expect("mutual TLS works"), "gw-e2e");
    let no_cert: Result<String, String> = connect(false).await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate is refused"
    );
    // Plaintext gRPC to a TLS port fails too.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient::new(ch);
        assert!(
            c.get_info(gg_proto::pb::admin::GetInfoRequest {})
                .await
                .is_err()
        );
    }
}

/// The DER of the certificate the server presented.
fn peer_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("server certificate")
}

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("pem").to_vec()
}

#[tokio::test]
async fn certificate_reload_on_sighup() {
    let (d1, d2) = (scratch("tls", "d"), scratch("tls", "d"));
    let (ca1, cert1, key1) = make_cert(&d1);
    let (ca2, cert2, key2) = make_cert(&d2);
    let (live_cert, live_key) = (d1.join("live.crt"), d1.join("live.key"));
    std::fs::copy(&cert1, &live_cert).expect("copy");
    std::fs::copy(&key1, &live_key).expect("copy");
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}tls: {{ cert_file: {}, key_file: {} }}\n",
        one_service(b.addr),
        live_cert.display(),
        live_key.display()
    ))
    .await;
    // Trust both CAs, so the client accepts either certificate.
    let both = d1.join("both-ca.pem");
    std::fs::write(
        &both,
        [
            std::fs::read(&ca1).expect("ca1"),
            std::fs::read(&ca2).expect("ca2"),
        ]
        .concat(),
    )
    .expect("bundle");

    let before = tls_connect(gw.client, &both).await;
    assert_eq!(peer_cert(&before), der(&cert1));

    // New files + SIGHUP: new connections get the new certificate.
    std::fs::copy(&cert2, &live_cert).expect("copy");
    std::fs::copy(&key2, &live_key).expect("copy");
    gw.proc.signal("HUP");
    gw.wait_metric("gg_tls_reloads_total{result=\"ok\"}", |v| v >= 1.0)
        .await;
    let after = tls_connect(gw.client, &both).await;
    assert_eq!(peer_cert(&after), der(&cert2));

    // A broken key: the reload fails, the current certificate stays.
    std::fs::write(&live_key, "not a key").expect("junk");
    gw.proc.signal("HUP");
    gw.wait_metric("gg_tls_reloads_total{result=\"error\"}", |v| v >= 1.0)
        .await;
    let still = tls_connect(gw.client, &both).await;
    assert_eq!(peer_cert(&still), der(&cert2));
}
