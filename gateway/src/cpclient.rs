//! The gateway's side of `controlplane.v1.GatewaySync`: keep one stream to
//! a control plane replica, apply each snapshot (validate, then swap
//! atomically; sessions are not dropped), persist the last good one to disk
//! so a restart without the control plane still serves, ack or reject each
//! revision, heartbeat within the lease, and report session open/close in
//! batches (size- and time-triggered).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gg_proto::pb::controlplane as pb;
use gg_proto::pb::controlplane::control_message::Msg as In;
use gg_proto::pb::controlplane::gateway_message::Msg as Out;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use gg_proto::model::Bundle;
use gg_proto::pb::common::GatewayState;
use gg_runtime::backoff::Backoff;

use crate::config::ControlPlaneSettings;
use crate::{Gateway, SessionEvent};

/// Applies a snapshot if it is newer (same epoch) or from a new epoch.
/// `Ok(true)` = applied, `Ok(false)` = already had it.
pub(crate) fn apply(
    gw: &Gateway,
    v: &pb::Versioned,
    persist: Option<&Path>,
) -> Result<bool, String> {
    let (rev, epoch) = gw.routing.applied();
    if v.revision == 0 {
        return Err(format!(
            "the control plane has no config in epoch {} (store empty or wiped); keeping revision {rev}",
            v.epoch
        ));
    }
    if v.epoch == epoch && v.revision <= rev {
        return Ok(false);
    }
    // The control plane validated it with this very function; checking
    // again guards against a newer control plane with rules this gateway
    // does not know (it keeps the previous config and says why).
    let routes =
        Bundle::from_pb(&v.bundle.clone().unwrap_or_default()).map_err(|e| e.to_string())?;
    // Saved before it is swapped in: whatever a gateway serves (and acks)
    // survives its restart.
    if let Some(path) = persist
        && let Err(e) = save(path, v)
    {
        warn!(path = %path.display(), error = %e, "cannot save the config snapshot; a restart without the control plane would not be ready");
    }
    let started = std::time::Instant::now();
    gw.routing.apply_routes(&routes, v.revision, &v.epoch);
    gw.close_denied_sessions();
    (gw.metrics.config_apply_seconds).observe(started.elapsed().as_secs_f64());
    (gw.metrics.config_revision).set(i64::try_from(v.revision).unwrap_or(i64::MAX));
    info!(revision = v.revision, epoch = %v.epoch, services = routes.services.len(), "config applied");
    Ok(true)
}

/// Writes the snapshot atomically (temp file + rename).
fn save(path: &Path, v: &pb::Versioned) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.encode_to_vec())?;
    std::fs::rename(tmp, path)
}

/// Loads and applies the snapshot saved by a previous run, if any.
pub(crate) fn load_saved(gw: &Gateway, path: &Path) {
    match std::fs::read(path) {
        Ok(bytes) => match pb::Versioned::decode(&bytes[..]) {
            Ok(v) => match apply(gw, &v, None) {
                Ok(_) => {
                    info!(revision = v.revision, path = %path.display(), "serving the last saved config until the control plane answers")
                }
                Err(e) => warn!(error = %e, "saved config snapshot rejected"),
            },
            Err(e) => {
                warn!(path = %path.display(), error = %e, "saved config snapshot is unreadable; ignoring it")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the saved config snapshot")
        }
    }
}

impl From<SessionEvent> for pb::SessionEvent {
    fn from(e: SessionEvent) -> Self {
        pb::SessionEvent {
            session_id: e.session_id,
            user_id: e.user_id,
            open: e.open,
            epoch: e.epoch,
            realm_id: e.realm_id,
            resumed: e.resumed,
        }
    }
}

/// Keeps the Sync stream up until `stop`.
pub(crate) async fn run(gw: Arc<Gateway>, cfg: ControlPlaneSettings, stop: CancellationToken) {
    let Some(mut events) = gw.take_session_events() else {
        return;
    };
    let Some(mut rooms) = gw.rooms.take_out() else {
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let res = tokio::select! {
            _ = stop.cancelled() => return,
            r = stream_once(&gw, &cfg, &mut events, &mut rooms) => r,
        };
        let (rev, _) = gw.routing.applied();
        match res {
            Ok(()) => backoff.reset(),
            Err(e) => {
                warn!(url = %cfg.url, error = %e, revision = rev, "control plane stream down — is it running? serving the last known config; reconnecting")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

fn state(gw: &Gateway) -> i32 {
    (match gw.readiness() {
        Ok(()) => GatewayState::Ready,
        Err(_) if gw.draining() => GatewayState::Draining,
        Err(_) => GatewayState::NotReady,
    }) as i32
}

/// The sending half of the Sync stream.
type Outbox = mpsc::Sender<pb::GatewayMessage>;

async fn send(tx: &Outbox, m: Out) -> Result<(), String> {
    tx.send(pb::GatewayMessage { msg: Some(m) })
        .await
        .map_err(|_| "stream closed".to_string())
}

/// Connects and opens the Sync stream with HELLO (what this gateway runs).
async fn open_stream(
    gw: &Gateway,
    cfg: &ControlPlaneSettings,
) -> Result<(Outbox, tonic::Streaming<pb::ControlMessage>), String> {
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(cfg.url.clone()).map_err(|e| e.to_string())?;
    if let Some(tls) = &cfg.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("tls: {e}"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = mpsc::channel::<pb::GatewayMessage>(64);
    let addrs = gw.addrs.get();
    let (rev, epoch) = gw.routing.applied();
    let hello = pb::GatewayHello {
        gateway_id: gw.cfg.gateway_id.clone(),
        client_addr: addrs.map(|a| a.client.to_string()).unwrap_or_default(),
        admin_addr: addrs
            .and_then(|a| a.admin)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").into(),
        revision: rev,
        epoch,
        region: gw.cfg.region.clone().unwrap_or_default(),
    };
    send(&tx, Out::Hello(hello)).await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = &cfg.token {
        let v = format!("Bearer {}", String::from_utf8_lossy(&t.secret))
            .parse()
            .map_err(|_| "controlplane.token is not valid header text".to_string())?;
        req.metadata_mut().insert("authorization", v);
    }
    let inbound = pb::gateway_sync_client::GatewaySyncClient::new(channel)
        .sync(req)
        .await
        .map_err(|e| format!("{}: {}", e.code(), e.message()))?
        .into_inner();
    Ok((tx, inbound))
}

async fn stream_once(
    gw: &Arc<Gateway>,
    cfg: &ControlPlaneSettings,
    events: &mut mpsc::Receiver<SessionEvent>,
    rooms: &mut crate::rooms::RoomOutRx,
) -> Result<(), String> {
    let (tx, mut inbound) = open_stream(gw, cfg).await?;
    info!(url = %cfg.url, "control plane stream up");
    // Every room's subscription and membership again: the control plane
    // replays what this gateway missed while the stream was down.
    for m in gw.rooms.resync() {
        send(&tx, room_out(m)).await?;
    }
    // Everything open now, so the directory is right after any outage.
    let mut pending: Vec<pb::SessionEvent> = gw
        .clients
        .sessions
        .all()
        .iter()
        .filter(|s| s.protocol() != crate::metrics::Protocol::Http)
        .map(|s| {
            SessionEvent {
                session_id: s.id(),
                user_id: s.user_id(),
                open: true,
                epoch: s.opened_ms(),
                realm_id: s.realm_id(),
                resumed: false,
            }
            .into()
        })
        .collect();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut flush = tokio::time::interval(cfg.session_flush);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|e| format!("{}: {}", e.code(), e.message()))?;
                let Some(pb::ControlMessage { msg: Some(m) }) = msg else {
                    return Err("control plane ended the stream".into());
                };
                match m {
                    // Heartbeat three times per lease.
                    In::LeaseMs(ms) => heartbeat = tokio::time::interval(Duration::from_millis((ms / 3).max(100))),
                    In::Snapshot(v) => send(&tx, Out::Ack(ack(gw, cfg, &v))).await?,
                    In::RoomMessages(m) => gw.rooms.on_messages(m.messages),
                    In::RoomState(st) => gw.rooms.on_state(&st.room, st.seq),
                    In::SessionRooms(sr) => carry_over_rooms(gw, sr),
                    In::RoomsResync(_) => {
                        for m in gw.rooms.resync() {
                            send(&tx, room_out(m)).await?;
                        }
                    }
                }
            }
            Some(m) = rooms.recv() => {
                // Membership changes batched like session events; the rest in order.
                match m {
                    crate::rooms::RoomOut::Op(op) => {
                        let mut ops = vec![op];
                        while ops.len() < cfg.session_batch {
                            match rooms.try_recv() {
                                Ok(crate::rooms::RoomOut::Op(op)) => ops.push(op),
                                Ok(other) => {
                                    send(&tx, Out::RoomOps(pb::RoomOps { ops: std::mem::take(&mut ops) })).await?;
                                    send(&tx, room_out(other)).await?;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if !ops.is_empty() {
                            send(&tx, Out::RoomOps(pb::RoomOps { ops })).await?;
                        }
                    }
                    other => send(&tx, room_out(other)).await?,
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::Heartbeat { state: state(gw), sessions: gw.clients.sessions.len() as u64 };
                send(&tx, Out::Heartbeat(hb)).await?;
            }
            Some(e) = events.recv(), if pending.len() < cfg.session_batch => {
                pending.push(e.into());
                while pending.len() < cfg.session_batch {
                    match events.try_recv() {
                        Ok(e) => pending.push(e.into()),
                        Err(_) => break,
                    }
                }
                if pending.len() >= cfg.session_batch {
                    let batch = std::mem::take(&mut pending);
                    send(&tx, Out::Sessions(pb::SessionEvents { events: batch })).await?;
                }
            }
            _ = flush.tick(), if !pending.is_empty() => {
                // Time-triggered: a quiet gateway still reports within session_flush_ms.
                let n = pending.len().min(cfg.session_batch);
                let batch: Vec<_> = pending.drain(..n).collect();
                send(&tx, Out::Sessions(pb::SessionEvents { events: batch })).await?;
            }
        }
    }
}

fn room_out(m: crate::rooms::RoomOut) -> Out {
    use crate::rooms::RoomOut;
    match m {
        RoomOut::Op(op) => Out::RoomOps(pb::RoomOps { ops: vec![op] }),
        RoomOut::Subscribe(s) => Out::RoomSubscribe(s),
        RoomOut::Unsubscribe(room) => Out::RoomUnsubscribe(pb::RoomUnsubscribe { room }),
        RoomOut::Publish(p) => Out::Publish(p),
    }
}

/// A session resumed here brings the rooms it was in where it was before.
fn carry_over_rooms(gw: &Gateway, sr: pb::SessionRooms) {
    let Some(s) = gw.clients.sessions.get(sr.session_id) else {
        return;
    };
    for room in &sr.rooms {
        if let Err(e) = gw.rooms.join(&s, room) {
            warn!(session = sr.session_id, room = %room, error = %e, "could not carry a room over to the resumed session");
        }
    }
    if !sr.rooms.is_empty() {
        info!(
            session = sr.session_id,
            rooms = sr.rooms.len(),
            "resumed session keeps its rooms"
        );
    }
}

/// Applies a snapshot and says how it went.
fn ack(gw: &Arc<Gateway>, cfg: &ControlPlaneSettings, v: &pb::Versioned) -> pb::Ack {
    let error = match apply(gw, v, Some(&cfg.snapshot_path)) {
        Ok(_) => String::new(),
        Err(error) => {
            warn!(revision = v.revision, %error, "config rejected; keeping the previous one");
            error
        }
    };
    pb::Ack {
        revision: v.revision,
        epoch: v.epoch.clone(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use gg_proto::model::Strategy;

    use super::*;
    use crate::config::Config;

    fn gateway() -> Arc<Gateway> {
        let cfg = Config::parse(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\ncontrolplane: { url: \"http://127.0.0.1:1\", snapshot_path: /nonexistent/snap.pb }\n",
            Some("gw-unit".into()),
        )
        .expect("config");
        Gateway::new(cfg)
    }

    fn versioned(revision: u64, epoch: &str, strategy: i32) -> pb::Versioned {
        pb::Versioned {
            revision,
            epoch: epoch.into(),
            bundle: Some(pb::ConfigBundle {
                services: vec![pb::Service {
                    name: "echo".into(),
                    id: 1,
                    strategy,
                    endpoints: vec!["127.0.0.1:9".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn snapshots_apply_in_order_and_invalid_ones_keep_the_previous() {
        let gw = gateway();
        let rr = Strategy::RoundRobin.to_pb();
        assert!(gw.readiness().is_err(), "not ready before a snapshot");

        let e = apply(&gw, &versioned(0, "e1", rr), None).unwrap_err();
        assert!(e.contains("no config in epoch e1"), "{e}");

        assert_eq!(apply(&gw, &versioned(2, "e1", rr), None), Ok(true));
        assert!(gw.readiness().is_ok());
        assert_eq!(gw.routing.applied(), (2, "e1".to_string()));
        assert_eq!(gw.routing.routes.load().services[&1].name, "echo");

        // The same or an older revision of the epoch changes nothing.
        assert_eq!(apply(&gw, &versioned(2, "e1", rr), None), Ok(false));
        assert_eq!(apply(&gw, &versioned(1, "e1", rr), None), Ok(false));

        // Invalid: rejected with the reason, the previous config stays.
        let e = apply(&gw, &versioned(3, "e1", 0), None).unwrap_err();
        assert!(e.contains("services[echo]: strategy is not set"), "{e}");
        assert_eq!(gw.routing.applied(), (2, "e1".to_string()));

        // A new epoch (store wiped) applies even with a lower revision.
        let ch = Strategy::ConsistentHash.to_pb();
        assert_eq!(apply(&gw, &versioned(1, "e2", ch), None), Ok(true));
        assert_eq!(gw.routing.applied(), (1, "e2".to_string()));
        assert_eq!(
            gw.routing.routes.load().services[&1].strategy,
            Strategy::ConsistentHash
        );
    }

    #[tokio::test]
    async fn a_saved_snapshot_is_served_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("gg-cpclient-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap.pb");
        let gw = gateway();
        let rr = Strategy::RoundRobin.to_pb();
        assert_eq!(apply(&gw, &versioned(5, "e1", rr), Some(&path)), Ok(true));
        let restarted = gateway();
        load_saved(&restarted, &path);
        assert_eq!(restarted.routing.applied(), (5, "e1".to_string()));
        assert!(restarted.readiness().is_ok());
        // An unreadable file is ignored, not fatal.
        std::fs::write(&path, b"\xff\xff not protobuf").unwrap();
        let third = gateway();
        load_saved(&third, &path);
        assert!(third.readiness().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
