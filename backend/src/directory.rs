//! Who owns a session, fleet-wide, and pushing to it through its gateway.

use std::collections::HashMap;
use std::time::Duration;

use gg_proto::pb::admin as admin_pb;
use gg_proto::pb::controlplane as cp_pb;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

/// A session's owner, from the control plane's `SessionDirectory`.
pub type Ownership = cp_pb::Ownership;
/// One session's outcome of [`Directory::push_many`].
pub type PushResult = cp_pb::PushResult;
/// A batch of presence events from [`Directory::watch`], with its cursor.
pub type PresenceBatch = cp_pb::WatchBatch;

/// Why a directory call failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("bad address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    /// The server answered with an error (not found, unauthenticated, …).
    #[error("{0}: {1}")]
    Status(tonic::Code, String),
}

impl From<tonic::Status> for DirectoryError {
    fn from(s: tonic::Status) -> Self {
        DirectoryError::Status(s.code(), s.message().to_string())
    }
}

/// A client of the control plane's `SessionDirectory` (scope `read`), and
/// of gateways' admin `Push` (scope `operate`) for sessions this backend is
/// not connected to. Channels are kept and reused.
pub struct Directory {
    controlplane: Channel,
    directory_token: Option<String>,
    gateway_token: Option<String>,
    gateways: Mutex<HashMap<String, Channel>>,
}

impl Directory {
    /// `controlplane` is `http://host:port` of the control plane's gRPC
    /// port; `directory_token` a `read` token (None without auth);
    /// `gateway_token` an `operate` token for gateways' admin APIs, needed
    /// only by [`Directory::push`].
    pub fn new(
        controlplane: &str,
        directory_token: Option<String>,
        gateway_token: Option<String>,
    ) -> Result<Directory, DirectoryError> {
        Ok(Directory {
            controlplane: lazy(controlplane)?,
            directory_token,
            gateway_token,
            gateways: Mutex::new(HashMap::new()),
        })
    }

    /// The live gateway holding `session_id`, or None.
    pub async fn lookup(&self, session_id: u64) -> Result<Option<Ownership>, DirectoryError> {
        let mut c =
            cp_pb::session_directory_client::SessionDirectoryClient::new(self.controlplane.clone());
        let req = bearer(cp_pb::LookupRequest { session_id }, &self.directory_token);
        match c.lookup(req).await {
            Ok(r) => Ok(r.into_inner().ownership),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Every live session of `user_id`, wherever it is connected.
    pub async fn lookup_user(&self, user_id: u64) -> Result<Vec<Ownership>, DirectoryError> {
        let mut c =
            cp_pb::session_directory_client::SessionDirectoryClient::new(self.controlplane.clone());
        let req = bearer(cp_pb::LookupUserRequest { user_id }, &self.directory_token);
        Ok(c.lookup_user(req).await?.into_inner().sessions)
    }

    /// Pushes DATA to `session_id` through the gateway that owns it: true
    /// when that gateway queued it, false when no live gateway holds the
    /// session. An error after the gateway was reached means the outcome
    /// is unknown (it may have been delivered).
    pub async fn push(
        &self,
        session_id: u64,
        service_type: u16,
        payload: Vec<u8>,
    ) -> Result<bool, DirectoryError> {
        let Some(o) = self.lookup(session_id).await? else {
            return Ok(false);
        };
        let channel = self.gateway(&o.gateway_admin_addr)?;
        let mut c = admin_pb::gateway_admin_client::GatewayAdminClient::new(channel);
        let req = bearer(
            admin_pb::PushRequest {
                session_id,
                user_id: 0,
                service_type: u32::from(service_type),
                seq: 0,
                payload,
                session_ids: Vec::new(),
            },
            &self.gateway_token,
        );
        match c.push(req).await {
            Ok(r) => Ok(r.into_inner().delivered.contains(&session_id)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s.into()),
        }
    }

    /// One payload to many sessions and users, routed by the control plane
    /// (needs a control-plane token with scope `operate` as
    /// `directory_token`): a result per session.
    pub async fn push_many(
        &self,
        session_ids: Vec<u64>,
        user_ids: Vec<u64>,
        service_type: u16,
        payload: Vec<u8>,
    ) -> Result<Vec<PushResult>, DirectoryError> {
        let mut c =
            cp_pb::session_directory_client::SessionDirectoryClient::new(self.controlplane.clone());
        let req = bearer(
            cp_pb::BatchPushRequest {
                session_ids,
                user_ids,
                service_type: u32::from(service_type),
                payload,
            },
            &self.directory_token,
        );
        Ok(c.push(req).await?.into_inner().results)
    }

    /// Session opens and closes across the fleet from `cursor` (empty: from
    /// now; keep the last batch's cursor to resume without missing any).
    pub async fn watch(
        &self,
        cursor: &str,
        user_ids: Vec<u64>,
    ) -> Result<tonic::Streaming<PresenceBatch>, DirectoryError> {
        let mut c =
            cp_pb::session_directory_client::SessionDirectoryClient::new(self.controlplane.clone());
        let req = bearer(
            cp_pb::WatchRequest {
                cursor: cursor.to_string(),
                user_ids,
                ..Default::default()
            },
            &self.directory_token,
        );
        Ok(c.watch(req).await?.into_inner())
    }

    fn gateway(&self, addr: &str) -> Result<Channel, DirectoryError> {
        let mut map = self.gateways.lock();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = lazy(&format!("http://{addr}"))?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// A channel that connects on first use, with deadlines.
fn lazy(url: &str) -> Result<Channel, DirectoryError> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Ok(Endpoint::from_shared(url.clone())
        .map_err(|e| DirectoryError::Address(url, e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

fn bearer<T>(msg: T, token: &Option<String>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}
