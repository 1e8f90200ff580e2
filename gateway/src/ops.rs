//! The ops HTTP port: `GET /health` (process alive), `GET /ready` (routes
//! loaded and not draining; 503 with the reason otherwise) and
//! `GET /metrics` (Prometheus text format), served by the shared runtime's
//! ops server. Kept off the client port so load balancers and scrapers never
//! compete with clients for admission limits.

use std::sync::Arc;

use gg_runtime::ops::OpsHandler;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

struct Ops(Arc<Gateway>);

impl OpsHandler for Ops {
    fn readiness(&self) -> Result<String, String> {
        self.0
            .readiness()
            .map(|()| String::new())
            .map_err(str::to_string)
    }

    fn metrics(&self) -> String {
        let m = &self.0.metrics;
        m.buffered_bytes.set(self.0.clients.buffered.used() as i64);
        for (i, n) in self.0.workers.loads().into_iter().enumerate() {
            m.worker_connections
                .with_label_values(&[&i.to_string()])
                .set(n as i64);
        }
        m.render()
    }
}

/// Serves the ops port until `stop` is cancelled.
pub(crate) async fn serve(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
    gg_runtime::ops::serve(Arc::new(Ops(gw)), listener, stop).await;
}
