//! OpenTelemetry traces for every Game Gateway process: the `telemetry:`
//! config section ([`FileTelemetry`]), the OTLP/gRPC exporter and the layer
//! that feeds it ([`Telemetry`]), and W3C trace context in and out — a
//! `traceparent` string ([`set_parent`], [`traceparent`]) or gRPC metadata
//! ([`inject`]; the server side is [`crate::grpc::RequestSpanLayer`]).
//!
//! Only spans with target [`TARGET`] are exported, so ordinary `tracing`
//! spans cost nothing extra. Spans are exported with a batch processor and
//! sampled by trace id (`sample_ratio`); a sampled parent is always
//! followed. Without a `telemetry:` section nothing is exported, and a
//! caller's `traceparent` is still passed on unchanged.

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

use std::time::Duration;

use serde::Deserialize;

/// Target of the spans exported; the OTel layer passes nothing else.
pub const TARGET: &str = "gg::trace";

/// The `telemetry:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    pub otlp_endpoint: String,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_export_timeout")]
    pub export_timeout_ms: u64,
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
    #[serde(default = "default_export_queue")]
    pub export_queue: usize,
}

fn default_sample_ratio() -> f64 {
    0.01
}
fn default_export_timeout() -> u64 {
    5000
}
fn default_export_interval() -> u64 {
    5000
}
fn default_export_queue() -> usize {
    2048
}

/// Where and how much to trace.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Fraction of new traces sampled; a sampled parent (`traceparent`) is
    /// always followed.
    pub sample_ratio: f64,
    pub export_timeout: Duration,
    /// Spans are sent at least this often.
    pub export_interval: Duration,
    /// Finished spans waiting for export; beyond it they are dropped.
    pub export_queue: usize,
}

impl TelemetrySettings {
    /// Everything sampled, exported at once: for a short-lived CLI.
    pub fn cli(otlp_endpoint: String, service_name: &str) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint,
            service_name: service_name.into(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(3),
            export_interval: Duration::from_millis(200),
            export_queue: 256,
        }
    }
}

impl FileTelemetry {
    /// `default_service` names the process when `service_name` is absent.
    pub fn validate(&self, default_service: &str, errs: &mut Vec<String>) -> TelemetrySettings {
        let t = self;
        if !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://")) {
            errs.push(format!(
                "telemetry.otlp_endpoint {:?} must start with http:// or https:// (an OTLP/gRPC collector, usually port 4317)",
                t.otlp_endpoint
            ));
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            errs.push(format!(
                "telemetry.sample_ratio {} must be between 0 and 1",
                t.sample_ratio
            ));
        }
        if t.service_name.as_deref() == Some("") {
            errs.push("telemetry.service_name must not be empty".into());
        }
        for (k, v) in [
            ("telemetry.export_timeout_ms", t.export_timeout_ms),
            ("telemetry.export_interval_ms", t.export_interval_ms),
            ("telemetry.export_queue", t.export_queue as u64),
        ] {
            if v == 0 {
                errs.push(format!("{k} must be greater than 0"));
            }
        }
        TelemetrySettings {
            otlp_endpoint: t.otlp_endpoint.clone(),
            service_name: t
                .service_name
                .clone()
                .unwrap_or_else(|| default_service.to_string()),
            sample_ratio: t.sample_ratio,
            export_timeout: Duration::from_millis(t.export_timeout_ms),
            export_interval: Duration::from_millis(t.export_interval_ms),
            export_queue: t.export_queue,
        }
    }
}

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
        instance_id: &str,
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
                    .with_attribute(KeyValue::new(
                        "service.instance.id",
                        instance_id.to_string(),
                    ))
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(cfg.service_name.clone()))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target() == TARGET
            }));
        Ok((Telemetry { provider }, layer))
    }

    /// Exports what is buffered and stops the exporter; says why not.
    pub fn shutdown(self) -> Result<(), String> {
        self.provider
            .shutdown()
            .map_err(|e| format!("telemetry: could not flush spans at shutdown: {e}"))
    }
}

/// Adds the current span's W3C trace context to an outgoing gRPC call's
/// metadata (nothing when the span is not recorded).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let span = tracing::Span::current();
    if let Some(tp) = traceparent(&span, None)
        && let Ok(v) = tp.parse()
    {
        metadata.insert("traceparent", v);
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
