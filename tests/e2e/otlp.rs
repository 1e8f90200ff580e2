//! A minimal OTLP/gRPC trace receiver for the process tests.
#![allow(dead_code)] // shared by two test binaries; each uses a part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::eventually;

/// A minimal OTLP trace receiver: keeps every span it is sent, with the
/// `service.name` of its resource.
#[derive(Clone, Default)]
pub struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    pub async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = TraceServiceServer::new(r.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        (r, addr)
    }

    /// The first span called `name`, waiting for the batch exporter.
    pub async fn span(&self, name: &str) -> (String, Span) {
        let mut found = None;
        eventually(&format!("span {name} exported"), || {
            found = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|(_, s)| s.name == name)
                .cloned();
            std::future::ready(found.is_some())
        })
        .await;
        found.expect("found")
    }
}

impl Receiver {
    /// Every span received so far with `service.name`.
    pub fn all(&self) -> Vec<(String, Span)> {
        self.0.lock().expect("lock").clone()
    }
}

/// Lower-case hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
