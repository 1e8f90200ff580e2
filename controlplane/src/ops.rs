//! Ops HTTP for the control plane: `/health`, `/ready` (503 `store=down`
//! while Redis is unreachable; reads still serve the last known config) and
//! `/metrics`, served by the shared runtime's ops server.

use std::sync::Arc;

use gg_runtime::ops::OpsHandler;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Cp;

struct Ops(Arc<Cp>);

impl OpsHandler for Ops {
    fn readiness(&self) -> Result<String, String> {
        if self.0.store_ok() {
            Ok("store=up".into())
        } else {
            Err("store=down".into())
        }
    }

    fn metrics(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.0.metrics.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

pub(crate) async fn serve(cp: Arc<Cp>, listener: TcpListener, stop: CancellationToken) {
    gg_runtime::ops::serve(Arc::new(Ops(cp)), listener, stop).await;
}
