//! OpenTelemetry traces. Two spans, both short, none on the per-frame path:
//! `session.open` (HELLO → WELCOME of a TCP or WebSocket session) and
//! `http.call` (one `POST /v1/call/{service}`). Each continues the caller's
//! W3C trace context — the `traceparent` HTTP header, or the `traceparent`
//! key of HELLO — and hands its own to the backend in the `traceparent` key
//! of OPEN, so a backend can continue the same trace.
//!
//! Spans are exported over OTLP/gRPC with a batch processor and sampled by
//! trace id (`telemetry.sample_ratio`); a sampled parent is always followed.
//! Without a `telemetry:` section nothing is exported, and a caller's
//! `traceparent` is still passed on to backends unchanged.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TelemetrySettings;

/// Target of the spans exported; the OTel layer passes nothing else.
pub const TARGET: &str = "gateway::trace";

/// The exporter behind the tracing layer; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the OTLP exporter and the layer that feeds it. Must run inside
    /// the tokio runtime (the gRPC client lives on it). Nothing connects
    /// yet: an unreachable collector costs dropped spans, never a failed
    /// start.
    pub fn start<S>(
        cfg: &TelemetrySettings,
        gateway_id: &str,
    ) -> anyhow::Result<(Telemetry, impl Layer<S> + Send + Sync + 'static)>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp_endpoint.clone())
            .with_timeout(cfg.export_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(cfg.export_interval)
                    .with_max_queue_size(cfg.export_queue)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .with_attribute(KeyValue::new("service.instance.id", gateway_id.to_string()))
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("gateway"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target() == TARGET
            }));
        Ok((Telemetry { provider }, layer))
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry: could not flush spans at shutdown");
        }
    }
}

/// Makes `span` a child of the W3C `traceparent` (if valid).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = One(tp);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` to hand to a backend: `span`'s own when it is being
/// recorded, else the caller's unchanged (so a trace survives a gateway
/// that does not export).
pub fn traceparent(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut carrier));
        if let Some(tp) = carrier.remove("traceparent") {
            return Some(tp);
        }
    }
    incoming
        .filter(|t| valid_traceparent(t))
        .map(str::to_string)
}

/// `version-traceid-spanid-flags`, lower-case hex, ids not all zero.
pub fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Carrier<'a>(&'a mut HashMap<String, String>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("00-4bf92f35-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("garbage"));
    }

    #[test]
    fn without_an_exporter_the_callers_context_passes_through() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::Span::none();
        set_parent(&span, Some(tp));
        assert_eq!(traceparent(&span, Some(tp)).as_deref(), Some(tp));
        assert_eq!(traceparent(&span, Some("bogus")), None);
        assert_eq!(traceparent(&span, None), None);
    }
}
