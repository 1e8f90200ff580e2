//! Where gwctl connects and with what token: flags, then env, then the
//! current context of the config file.
//!
//! ```yaml
//! current_context: staging
//! contexts:
//!   - name: staging
//!     controlplane: http://cp.staging:9300
//!     gateway: http://127.0.0.1:9200      # e.g. a port-forward
//!     token_file: ~/.config/gwctl/staging.token
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient;
use gg_proto::pb::controlplane::control_plane_client::ControlPlaneClient;
use gg_proto::pb::controlplane::session_directory_client::SessionDirectoryClient;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::Global;

#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<ContextConfig>,
}

#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// TLS: the CA that signed the servers' certificates, and a client
    /// certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Resolved targets and credentials.
pub struct Ctx {
    pub controlplane: Option<String>,
    pub gateway: Option<String>,
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
    pub timeout: Duration,
}

pub type Auth = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer …` to every call, and the current trace
/// context (`traceparent`) when gwctl exports spans.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        gg_runtime::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

/// The config file `--config` / `GWCTL_CONFIG` names, else the default.
pub fn config_path(g: &Global) -> Option<PathBuf> {
    g.config.clone().or_else(default_config_path)
}

/// The config file's contexts (empty when there is no file yet).
pub fn load_file(p: &Path) -> anyhow::Result<FileConfig> {
    if !p.exists() {
        return Ok(FileConfig::default());
    }
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the gwctl config {}", p.display()))?;
    yaml_serde::from_str::<FileConfig>(&text)
        .map_err(|e| anyhow!("invalid gwctl config {}: {e}", p.display()))
}

/// Writes the config file (creating its directory), replacing it whole.
pub fn save_file(p: &Path, f: &FileConfig) -> anyhow::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = yaml_serde::to_string(f)?;
    let tmp = p.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gwctl").join("config.yaml"))
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

fn read_token_file(p: &Path) -> anyhow::Result<String> {
    let p = expand_home(p);
    let t = std::fs::read_to_string(&p)
        .with_context(|| format!("cannot read the token file {}", p.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("the token file {} is empty", p.display());
    }
    Ok(t)
}

impl Ctx {
    pub fn resolve(g: &Global) -> anyhow::Result<Ctx> {
        let explicit = g.config.is_some();
        let file = match g.config.clone().or_else(default_config_path) {
            Some(p) if explicit || p.exists() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read the gwctl config {}", p.display()))?;
                yaml_serde::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow!("invalid gwctl config {}: {e}", p.display()))?
            }
            _ => FileConfig::default(),
        };
        let wanted = g.context.clone().or(file.current_context.clone());
        let context = match &wanted {
            None => ContextConfig::default(),
            Some(name) => file
                .contexts
                .iter()
                .find(|c| &c.name == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                    anyhow!(
                        "no context named {name:?} in the gwctl config (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })?,
        };
        let token = if let Some(p) = &g.token_file {
            Some(read_token_file(p)?)
        } else if let Some(t) = std::env::var("GWCTL_TOKEN").ok().filter(|t| !t.is_empty()) {
            Some(t)
        } else if let Some(p) = &context.token_file {
            Some(read_token_file(p)?)
        } else if let Some(var) = &context.token_env {
            Some(std::env::var(var).map_err(|_| {
                anyhow!(
                    "context {:?} reads its token from ${var}, which is not set",
                    context.name
                )
            })?)
        } else {
            None
        };
        let ca = g.ca_file.clone().or(context.ca_file.clone());
        let identity = match (g.cert_file.clone(), g.key_file.clone()) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => context.cert_file.clone().zip(context.key_file.clone()),
        };
        let tls = match ca {
            None if identity.is_some() => {
                bail!("a client certificate needs --ca-file (or ca_file in the context) too")
            }
            None => None,
            Some(ca) => {
                let read = |p: &Path| {
                    let p = expand_home(p);
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
                };
                let mut t =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)?));
                if let Some((c, k)) = identity {
                    t = t.identity(Identity::from_pem(read(&c)?, read(&k)?));
                }
                Some(t)
            }
        };
        Ok(Ctx {
            controlplane: g.controlplane.clone().or(context.controlplane),
            gateway: g.gateway.clone().or(context.gateway),
            token,
            tls,
            timeout: g.timeout,
        })
    }

    fn bearer(&self) -> anyhow::Result<Bearer> {
        match &self.token {
            None => Ok(Bearer(None)),
            Some(t) => {
                let v = format!("Bearer {t}").parse().map_err(|_| {
                    anyhow!("the token contains characters not allowed in a header")
                })?;
                Ok(Bearer(Some(v)))
            }
        }
    }

    async fn channel(&self, addr: &str, what: &str) -> anyhow::Result<Channel> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else if self.tls.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow!("invalid {what} address {addr:?}: {e}"))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| anyhow!("TLS settings for the {what}: {e}"))?;
        }
        ep.connect().await.map_err(|e| {
            anyhow!(
                "cannot reach the {what} at {url} ({e}) — is it running, and is the address right?"
            )
        })
    }

    fn cp_addr(&self) -> anyhow::Result<&str> {
        self.controlplane.as_deref().ok_or_else(|| {
            anyhow!("no control plane address: pass --controlplane HOST:PORT, set GWCTL_CONTROLPLANE, or add `controlplane:` to the current context")
        })
    }

    fn gw_addr(&self) -> anyhow::Result<&str> {
        self.gateway.as_deref().ok_or_else(|| {
            anyhow!("no gateway admin address: pass --gateway HOST:PORT, set GWCTL_GATEWAY, or add `gateway:` to the current context")
        })
    }

    pub async fn cp(&self) -> anyhow::Result<ControlPlaneClient<Auth>> {
        let ch = self.channel(self.cp_addr()?, "control plane").await?;
        Ok(ControlPlaneClient::with_interceptor(ch, self.bearer()?))
    }

    pub async fn directory(&self) -> anyhow::Result<SessionDirectoryClient<Auth>> {
        let ch = self.channel(self.cp_addr()?, "control plane").await?;
        Ok(SessionDirectoryClient::with_interceptor(ch, self.bearer()?))
    }

    pub async fn rooms(
        &self,
    ) -> anyhow::Result<gg_proto::pb::controlplane::rooms_client::RoomsClient<Auth>> {
        let ch = self.channel(self.cp_addr()?, "control plane").await?;
        Ok(
            gg_proto::pb::controlplane::rooms_client::RoomsClient::with_interceptor(
                ch,
                self.bearer()?,
            ),
        )
    }

    pub async fn gw(&self) -> anyhow::Result<GatewayAdminClient<Auth>> {
        let ch = self.channel(self.gw_addr()?, "gateway admin API").await?;
        Ok(GatewayAdminClient::with_interceptor(ch, self.bearer()?))
    }

    /// A gateway's admin API at `addr` (from the fleet list), same token.
    pub async fn gw_at(&self, addr: &str) -> anyhow::Result<GatewayAdminClient<Auth>> {
        let ch = self.channel(addr, "gateway admin API").await?;
        Ok(GatewayAdminClient::with_interceptor(ch, self.bearer()?))
    }
}

/// Turns a gRPC error into a message that says what to do.
pub fn explain(s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = s.message();
    let hint = match s.code() {
        Code::Unauthenticated => {
            " — set GWCTL_TOKEN, pass --token-file, or set token_file in the context"
        }
        Code::PermissionDenied => " — this token's scope is too low for this command",
        Code::Unavailable => " — is the server running and reachable?",
        Code::DeadlineExceeded => " — the call timed out; raise --timeout or check the server",
        _ => "",
    };
    anyhow!("{}: {msg}{hint}", code_name(s.code()))
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "failed precondition",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Aborted => "aborted",
        Code::Internal => "internal error",
        Code::Unimplemented => "unimplemented",
        Code::ResourceExhausted => "resource exhausted",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys() {
        let e = yaml_serde::from_str::<FileConfig>(
            "contexts:\n  - { name: a, controlplane: x, tokn_file: y }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("tokn_file"), "{e}");
    }

    #[test]
    fn home_is_expanded() {
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            expand_home(Path::new("~/t")),
            if home.is_empty() {
                PathBuf::from("~/t")
            } else {
                PathBuf::from(home).join("t")
            }
        );
        assert_eq!(expand_home(Path::new("/x/t")), PathBuf::from("/x/t"));
    }
}
