//! `telemetry:` — OpenTelemetry trace export (OTLP over gRPC). Absent = no
//! export (W3C trace context is still passed on to backends).

use std::time::Duration;

use serde::Deserialize;

use super::{Errors, ms, positive};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_export_timeout")]
    pub export_timeout_ms: u64,
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
    #[serde(default = "default_export_queue")]
    pub export_queue: usize,
}

fn default_service_name() -> String {
    "game-gateway".into()
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

impl FileTelemetry {
    pub(super) fn validate(&self, errs: &mut Errors) -> TelemetrySettings {
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
        if t.service_name.is_empty() {
            errs.push("telemetry.service_name must not be empty".into());
        }
        positive("telemetry.export_timeout_ms", t.export_timeout_ms, errs);
        positive("telemetry.export_interval_ms", t.export_interval_ms, errs);
        positive("telemetry.export_queue", t.export_queue as u64, errs);
        TelemetrySettings {
            otlp_endpoint: t.otlp_endpoint.clone(),
            service_name: t.service_name.clone(),
            sample_ratio: t.sample_ratio,
            export_timeout: ms(t.export_timeout_ms),
            export_interval: ms(t.export_interval_ms),
            export_queue: t.export_queue,
        }
    }
}
