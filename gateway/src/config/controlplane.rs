//! `controlplane:` — take routing config from the control plane.

use std::time::Duration;

use gg_runtime::auth::{FileToken, Token, read_tokens};
use serde::Deserialize;

use super::{Errors, ms};

pub const DEFAULT_SESSION_BATCH: usize = 500;
pub const DEFAULT_SESSION_FLUSH_MS: u64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControlPlane {
    pub url: String,
    /// Bearer token with the `operate` scope: `{ env | file | value }`.
    #[serde(default)]
    pub token: Option<FileToken>,
    pub snapshot_path: String,
    #[serde(default = "default_batch")]
    pub session_batch: usize,
    #[serde(default = "default_flush")]
    pub session_flush_ms: u64,
    /// For an `https://` url: the CA (and client certificate for mutual TLS).
    #[serde(default)]
    pub tls: Option<gg_runtime::grpc_tls::FileClientTls>,
}

fn default_batch() -> usize {
    DEFAULT_SESSION_BATCH
}
fn default_flush() -> u64 {
    DEFAULT_SESSION_FLUSH_MS
}

#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    pub url: String,
    pub token: Option<Token>,
    pub snapshot_path: std::path::PathBuf,
    pub session_batch: usize,
    pub session_flush: Duration,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl FileControlPlane {
    /// `file_routes`: the file also names services or realms (not allowed:
    /// routing then comes from the control plane).
    pub(super) fn validate(&self, file_routes: bool, errs: &mut Errors) -> ControlPlaneSettings {
        if file_routes {
            errs.push("services/realms must be empty when controlplane is set: routing comes from the control plane".into());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errs.push(format!(
                "controlplane.url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.tls.is_some() != self.url.starts_with("https://") {
            errs.push("controlplane.tls goes with an https:// url (and an https:// url needs controlplane.tls.ca_file)".into());
        }
        if self.session_batch == 0 || self.session_flush_ms == 0 {
            errs.push("controlplane.session_batch and session_flush_ms must be > 0".into());
        }
        let token = self
            .token
            .as_ref()
            .and_then(|t| read_tokens("controlplane.token", std::slice::from_ref(t), errs).pop());
        let tls = self.tls.as_ref().and_then(|t| {
            gg_runtime::grpc_tls::client_config(t)
                .map_err(|e| errs.push(format!("controlplane.tls: {e}")))
                .ok()
        });
        ControlPlaneSettings {
            url: self.url.clone(),
            token,
            snapshot_path: self.snapshot_path.clone().into(),
            session_batch: self.session_batch,
            session_flush: ms(self.session_flush_ms),
            tls,
        }
    }
}
