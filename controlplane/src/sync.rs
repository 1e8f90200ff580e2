//! `GatewaySync`: one bidi stream per gateway. The gateway says HELLO; the
//! control plane registers it (lease), sends the lease period and the
//! current snapshot, then a new snapshot whenever the config changes —
//! coalesced, since a `watch` only ever holds the latest. The gateway acks
//! or rejects each revision, heartbeats, and reports session open/close in
//! batches that go to the directory in one Redis round trip each.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use gg_proto::pb::common::GatewayState;
use gg_proto::pb::controlplane as pb;
use gg_proto::pb::controlplane::control_message::Msg as Out;
use gg_proto::pb::controlplane::gateway_message::Msg as In;
use gg_runtime::auth::{Scope, require};
use gg_runtime::clock::now_ms;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::Cp;

pub(crate) struct SyncService {
    cp: Arc<Cp>,
    stop: CancellationToken,
}

impl SyncService {
    pub(crate) fn new(cp: Arc<Cp>, stop: CancellationToken) -> SyncService {
        SyncService { cp, stop }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_sync_server::GatewaySync for SyncService {
    type SyncStream = OutStream;

    async fn sync(
        &self,
        req: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        require(&req, Scope::Operate)?;
        let peer = req.remote_addr().map(|a| a.ip());
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no HELLO within 10s"))??;
        let Some(pb::GatewayMessage {
            msg: Some(In::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message on Sync must be hello",
            ));
        };
        if hello.gateway_id.is_empty() {
            return Err(Status::invalid_argument("hello.gateway_id is required"));
        }
        let cp = self.cp.clone();
        let id = hello.gateway_id.clone();
        cp.store
            .gateway_update(
                &id,
                &[
                    ("client_addr", reachable(&hello.client_addr, peer)),
                    ("admin_addr", reachable(&hello.admin_addr, peer)),
                    ("version", hello.version.clone()),
                    ("region", hello.region.clone()),
                    ("applied_rev", hello.revision.to_string()),
                    ("applied_epoch", hello.epoch.clone()),
                    ("last_seen_ms", now_ms().to_string()),
                    ("connected_to", cp.cfg.id.clone()),
                    ("state", GatewayState::NotReady.as_str_name().into()),
                ],
                cp.cfg.lease,
            )
            .await
            .map_err(crate::api::store_status)?;
        info!(gateway = %id, revision = hello.revision, "gateway connected");
        let (tx, rx) = mpsc::channel(8);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            cp.metrics.sync_streams.inc();
            if let Err(e) = session(&cp, &id, &mut inbound, &tx, &stop).await {
                warn!(gateway = %id, error = %e, "sync stream ended with an error");
            }
            cp.metrics.sync_streams.dec();
            let _ = cp
                .store
                .gateway_update(&id, &[("connected_to", String::new())], cp.cfg.lease)
                .await;
            info!(gateway = %id, "gateway disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Directory writes run at most [`crate::DIRECTORY_WRITES`] at a time and
/// are retried (3 times, 200/400/800 ms with jitter)
/// before a batch is dropped: a burst (a fleet reconnecting at once) can
/// outrun `redis.timeout_ms` on one round trip. Every command of a batch is
/// idempotent (epoch-checked scripts, set adds), except the presence event,
/// which may then be written twice (presence is at least once). Waiting
/// here also slows this gateway's stream down: its next batch is read
/// after this one is written.
async fn apply_sessions(
    cp: &Cp,
    id: &str,
    events: &[pb::SessionEvent],
) -> Result<usize, crate::store::StoreError> {
    // A few batches in Redis at a time: with every stream's batch in
    // flight at once (a fleet reporting 1M sessions), each waits behind the
    // others on the one multiplexed connection past `redis.timeout_ms`.
    let _slot = cp.directory_slots.acquire().await;
    let mut delay = Duration::from_millis(200);
    for _ in 0..3 {
        match cp.store.sessions_apply(id, events).await {
            Ok(n) => return Ok(n),
            Err(e) => {
                cp.metrics.directory_retries.inc();
                tracing::debug!(gateway = %id, error = %e, "directory batch failed; retrying");
                let jitter = fastrand::u64(0..=delay.as_millis() as u64 / 2);
                tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                delay *= 2;
            }
        }
    }
    cp.store.sessions_apply(id, events).await
}

/// A gateway listening on every interface (`0.0.0.0:9200`, as in a pod)
/// reports that address; the control plane dials the address the gateway's
/// stream came from instead, with the reported port. Anything else (a
/// specific address, a name, empty) is kept as reported.
fn reachable(reported: &str, peer: Option<std::net::IpAddr>) -> String {
    match (reported.parse::<std::net::SocketAddr>(), peer) {
        (Ok(a), Some(ip)) if a.ip().is_unspecified() => {
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        _ => reported.to_string(),
    }
}

async fn session(
    cp: &Arc<Cp>,
    id: &str,
    inbound: &mut Streaming<pb::GatewayMessage>,
    tx: &mpsc::Sender<Result<pb::ControlMessage, Status>>,
    stop: &CancellationToken,
) -> Result<(), Status> {
    let send = |m: Out| pb::ControlMessage { msg: Some(m) };
    let gone = || Status::cancelled("gateway went away");
    tx.send(Ok(send(Out::LeaseMs(cp.cfg.lease.as_millis() as u64))))
        .await
        .map_err(|_| gone())?;
    let mut config = cp.current.subscribe();
    let snapshot = (**config.borrow_and_update()).clone();
    tx.send(Ok(send(Out::Snapshot(snapshot))))
        .await
        .map_err(|_| gone())?;
    cp.metrics.snapshots_sent.inc();
    let mut sub = cp.rooms.register();
    let res = stream_loop(cp, id, inbound, tx, stop, &mut config, &mut sub).await;
    cp.rooms.unregister(sub.id);
    res
}

async fn stream_loop(
    cp: &Arc<Cp>,
    id: &str,
    inbound: &mut Streaming<pb::GatewayMessage>,
    tx: &mpsc::Sender<Result<pb::ControlMessage, Status>>,
    stop: &CancellationToken,
    config: &mut tokio::sync::watch::Receiver<Arc<pb::Versioned>>,
    sub: &mut crate::rooms::Subscriber,
) -> Result<(), Status> {
    let send = |m: Out| pb::ControlMessage { msg: Some(m) };
    let gone = || Status::cancelled("gateway went away");
    let mut behind_check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some(batch) = sub.next() => {
                tx.send(Ok(send(Out::RoomMessages(batch)))).await.map_err(|_| gone())?;
            }
            _ = behind_check.tick() => {
                if sub.behind.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    warn!(gateway = %id, "room messages for this gateway were dropped (its stream fell behind, or the log could not be read): it recovers every room from the history");
                    tx.send(Ok(send(Out::RoomsResync(true)))).await.map_err(|_| gone())?;
                }
            }
            changed = config.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snapshot = (**config.borrow_and_update()).clone();
                tx.send(Ok(send(Out::Snapshot(snapshot)))).await.map_err(|_| gone())?;
                cp.metrics.snapshots_sent.inc();
            }
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                for out in handle(cp, id, sub.id, msg).await? {
                    tx.send(Ok(send(out))).await.map_err(|_| gone())?;
                }
            }
        }
    }
}

/// Handles one message from the gateway; returns what to answer on the
/// stream (room states and replays, a resumed session's rooms).
async fn handle(
    cp: &Arc<Cp>,
    id: &str,
    sub_id: u64,
    msg: pb::GatewayMessage,
) -> Result<Vec<Out>, Status> {
    let lease = cp.cfg.lease;
    let mut answer = Vec::new();
    let seen = ("last_seen_ms", now_ms().to_string());
    let connected = ("connected_to", cp.cfg.id.clone());
    let res = match msg.msg {
        Some(In::Ack(a)) if a.error.is_empty() => {
            cp.store
                .gateway_update(
                    id,
                    &[
                        ("applied_rev", a.revision.to_string()),
                        ("applied_epoch", a.epoch),
                        ("last_error", String::new()),
                        seen,
                        connected,
                    ],
                    lease,
                )
                .await
        }
        Some(In::Ack(a)) => {
            warn!(gateway = %id, revision = a.revision, error = %a.error, "gateway rejected a revision");
            cp.store
                .gateway_update(
                    id,
                    &[
                        ("last_error", a.error),
                        ("error_rev", a.revision.to_string()),
                        seen,
                        connected,
                    ],
                    lease,
                )
                .await
        }
        Some(In::Heartbeat(h)) => {
            cp.store
                .gateway_update(
                    id,
                    &[
                        (
                            "state",
                            GatewayState::try_from(h.state)
                                .unwrap_or(GatewayState::Unspecified)
                                .as_str_name()
                                .into(),
                        ),
                        ("sessions", h.sessions.to_string()),
                        seen,
                        connected,
                    ],
                    lease,
                )
                .await
        }
        Some(In::Sessions(batch)) => {
            let n = batch.events.len() as u64;
            match apply_sessions(cp, id, &batch.events).await {
                Ok(cmds) => {
                    cp.metrics.directory_events.inc_by(n);
                    cp.metrics.directory_roundtrips.inc();
                    cp.metrics.directory_commands.inc_by(cmds as u64);
                    // Read after this write: see crate::policy.
                    let mut users: Vec<u64> = (batch.events.iter())
                        .filter(|e| e.open && e.user_id != 0)
                        .map(|e| e.user_id)
                        .collect();
                    users.sort_unstable();
                    users.dedup();
                    crate::policy::enforce(cp, users);
                    // A resumed session brings its rooms (kept at its close).
                    for e in batch.events.iter().filter(|e| e.open && e.resumed) {
                        match cp.store.session_rooms(e.session_id).await {
                            Ok(rooms) if !rooms.is_empty() => {
                                answer.push(Out::SessionRooms(pb::SessionRooms {
                                    session_id: e.session_id,
                                    rooms,
                                }));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(gateway = %id, error = %e, "cannot read a resumed session's rooms")
                            }
                        }
                    }
                }
                Err(e) => {
                    // Config sync matters more than the directory: keep the
                    // stream; the gateway resends all sessions on reconnect.
                    cp.metrics.directory_errors.inc();
                    warn!(gateway = %id, events = n, error = %e, "directory write failed; events dropped");
                }
            }
            Ok(())
        }
        Some(In::RoomOps(ops)) => {
            match cp.store.room_ops(cp.room_limits(), id, &ops.ops).await {
                Ok(n) => cp.metrics.room_ops.inc_by(n as u64),
                Err(e) => crate::rooms::log_ops_error(id, ops.ops.len(), &e),
            }
            Ok(())
        }
        Some(In::RoomSubscribe(s)) => {
            answer.extend(crate::rooms::on_subscribe(cp, sub_id, s).await?);
            Ok(())
        }
        Some(In::RoomUnsubscribe(u)) => {
            cp.rooms.unsubscribe(sub_id, &u.room);
            Ok(())
        }
        Some(In::Publish(p)) => {
            crate::rooms::on_publish(cp, id, p).await;
            Ok(())
        }
        Some(In::Hello(_)) => {
            return Err(Status::invalid_argument(
                "hello may only be sent once per stream",
            ));
        }
        None => Ok(()),
    };
    res.map_err(crate::api::store_status)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn an_unspecified_listen_address_becomes_the_stream_peer() {
        let peer = Some("10.1.2.3".parse().unwrap());
        assert_eq!(reachable("0.0.0.0:9200", peer), "10.1.2.3:9200");
        assert_eq!(
            reachable("[::]:9200", Some("fd00::7".parse().unwrap())),
            "[fd00::7]:9200"
        );
        assert_eq!(reachable("127.0.0.1:9200", peer), "127.0.0.1:9200");
        assert_eq!(reachable("0.0.0.0:9200", None), "0.0.0.0:9200");
        assert_eq!(reachable("", peer), "");
    }
}
