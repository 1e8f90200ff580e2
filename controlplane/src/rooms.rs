//! Rooms: fleet-wide fan-out, history and the `controlplane.v1.Rooms` API.
//!
//! A publish (from a backend through its gateway's Sync stream, or the
//! `Publish` RPC) is one Redis script: it numbers the message in the room
//! (`INCR`), keeps it in the room's history and appends it to one fan-out
//! log, a Redis stream. Every replica reads the log with a blocking `XREAD`
//! on a connection of its own and hands each message to the Sync streams
//! of the gateways that have members in the room (the [`Hub`] knows which).
//!
//! Why a stream and not pub/sub: a replica that loses its Redis connection
//! resumes the stream from the last id it read instead of silently losing
//! what was published meanwhile, and the same code works on one node,
//! behind Sentinel and on a Cluster (one key). The per-room sequence lets
//! every gateway see a hole anyway (a message dropped because its stream
//! was slow, a replica restart) and replay it from the room's history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gg_proto::pb::controlplane as pb;
use gg_proto::pb::controlplane::rooms_server::Rooms;
use gg_runtime::auth::{Scope, require};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::Cp;
use crate::api::store_status;
use crate::store::rooms::roomlog_read;

/// Room message batches queued per Sync stream; beyond it the stream is
/// marked behind and its gateway told to recover every room.
const FEED_QUEUE: usize = 1024;
/// Payload bytes queued per Sync stream; beyond it the stream is marked
/// behind as for [`FEED_QUEUE`] (1,024 batches of large messages would be
/// gigabytes for one slow gateway).
const FEED_BYTES: usize = 16 << 20;
/// Log entries per read.
const READ_BATCH: usize = 1000;

struct Feed {
    tx: mpsc::Sender<pb::RoomMessages>,
    behind: Arc<AtomicBool>,
    /// Payload bytes in `tx` now.
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct HubState {
    streams: HashMap<u64, Feed>,
    rooms: HashMap<String, HashSet<u64>>,
}

/// Which gateway streams on this replica want which rooms.
#[derive(Default)]
pub struct Hub {
    state: parking_lot::Mutex<HubState>,
    next: AtomicU64,
}

/// A Sync stream's registration: its id, its feed, its "fell behind" flag.
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    feed: mpsc::Receiver<pb::RoomMessages>,
    pub(crate) behind: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
}

impl Subscriber {
    /// The next batch of room messages for this stream.
    pub(crate) async fn next(&mut self) -> Option<pb::RoomMessages> {
        let batch = self.feed.recv().await?;
        self.queued
            .fetch_sub(payload_bytes(&batch.messages), Ordering::Relaxed);
        Some(batch)
    }
}

fn payload_bytes(messages: &[pb::RoomMessage]) -> usize {
    messages.iter().map(|m| m.payload.len()).sum()
}

impl Hub {
    pub(crate) fn register(&self) -> Subscriber {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, feed) = mpsc::channel(FEED_QUEUE);
        let behind = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        self.state.lock().streams.insert(
            id,
            Feed {
                tx,
                behind: behind.clone(),
                queued: queued.clone(),
            },
        );
        Subscriber {
            id,
            feed,
            behind,
            queued,
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        let mut st = self.state.lock();
        st.streams.remove(&id);
        st.rooms.retain(|_, s| {
            s.remove(&id);
            !s.is_empty()
        });
    }

    pub(crate) fn subscribe(&self, id: u64, room: &str) {
        let mut st = self.state.lock();
        st.rooms.entry(room.to_string()).or_default().insert(id);
    }

    pub(crate) fn unsubscribe(&self, id: u64, room: &str) {
        let mut st = self.state.lock();
        if let Some(s) = st.rooms.get_mut(room) {
            s.remove(&id);
            if s.is_empty() {
                st.rooms.remove(room);
            }
        }
    }

    /// Hands log messages to the streams that want them, one batch each.
    fn dispatch(&self, msgs: Vec<pb::RoomMessage>) -> usize {
        let st = self.state.lock();
        let mut per: HashMap<u64, Vec<pb::RoomMessage>> = HashMap::new();
        for m in msgs {
            if let Some(ids) = st.rooms.get(&m.room) {
                for id in ids {
                    per.entry(*id).or_default().push(m.clone());
                }
            }
        }
        let mut sent = 0;
        for (id, messages) in per {
            let Some(f) = st.streams.get(&id) else {
                continue;
            };
            let bytes = payload_bytes(&messages);
            let before = f.queued.fetch_add(bytes, Ordering::Relaxed);
            // One batch always fits an empty feed.
            let over = before > 0 && before + bytes > FEED_BYTES;
            let n = messages.len();
            if over || f.tx.try_send(pb::RoomMessages { messages }).is_err() {
                f.queued.fetch_sub(bytes, Ordering::Relaxed);
                f.behind.store(true, Ordering::Release);
                continue;
            }
            sent += n;
        }
        sent
    }

    /// Every stream must recover (the log could not be read for a while).
    fn all_behind(&self) {
        for f in self.state.lock().streams.values() {
            f.behind.store(true, Ordering::Release);
        }
    }
}

/// Reads the fan-out log from its tail on, until `shutdown`.
pub(crate) async fn run_log(cp: Arc<Cp>, shutdown: CancellationToken) {
    let block_ms = (cp.cfg.redis_timeout.as_millis() as u64 / 2).clamp(10, 1000);
    let mut last: Option<String> = None;
    let mut conn: Option<crate::store::Conn> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let res = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(
                    crate::connect(
                        &cp.cfg.redis,
                        cp.cfg.redis_tls_ca.as_deref(),
                        cp.cfg.redis_timeout,
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                ),
            };
            let after = match &last {
                Some(l) => l.clone(),
                None => cp.store.roomlog_tail().await.map_err(|e| e.to_string())?,
            };
            let got = roomlog_read(c, &after, block_ms, READ_BATCH)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((after, got))
        };
        let res = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = res => r,
        };
        match res {
            Ok((after, got)) => {
                last = Some(got.last().map_or(after, |(id, _)| id.clone()));
                if !got.is_empty() {
                    let n = got.len() as u64;
                    let sent = cp.rooms.dispatch(got.into_iter().map(|(_, m)| m).collect());
                    cp.metrics.room_log_read.inc_by(n);
                    cp.metrics.room_forwarded.inc_by(sent as u64);
                }
            }
            Err(e) => {
                warn!(error = %e, "reading the room fan-out log failed; retrying, and every gateway will recover its rooms");
                conn = None;
                cp.rooms.all_behind();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// A Sync stream's room request, answered on the stream.
pub(crate) async fn on_subscribe(
    cp: &Cp,
    sub_id: u64,
    s: pb::RoomSubscribe,
) -> Result<Vec<pb::control_message::Msg>, Status> {
    use pb::control_message::Msg;
    if !gg_proto::room::valid_room(&s.room) {
        return Err(Status::invalid_argument(format!(
            "room_subscribe: invalid room name {:?}",
            s.room
        )));
    }
    // Interest first, then the sequence: every message numbered after the
    // answer reaches this stream.
    cp.rooms.subscribe(sub_id, &s.room);
    if !s.recover {
        let seq = cp.store.room_seq(&s.room).await.map_err(store_status)?;
        return Ok(vec![Msg::RoomState(pb::RoomState { room: s.room, seq })]);
    }
    let (messages, seq, _gap) = cp
        .store
        .room_history(&s.room, s.after_seq, cp.cfg.rooms.history_size as usize + 1)
        .await
        .map_err(store_status)?;
    // Everything up to the first kept message is lost; up to the newest
    // replayed (or the sequence now, when nothing newer is kept) was sent.
    let through = messages.last().map_or(seq, |m| m.seq).max(s.after_seq);
    cp.metrics.room_replays.inc();
    let mut out = Vec::new();
    if !messages.is_empty() {
        out.push(Msg::RoomMessages(pb::RoomMessages { messages }));
    }
    out.push(Msg::RoomState(pb::RoomState {
        room: s.room,
        seq: through,
    }));
    Ok(out)
}

/// A publish through a gateway's stream.
pub(crate) async fn on_publish(cp: &Cp, gw: &str, p: pb::RoomPublish) {
    if !gg_proto::room::valid_room(&p.room) {
        warn!(gateway = %gw, room = %p.room, "publish with an invalid room name dropped");
        return;
    }
    match cp
        .store
        .room_publish(cp.room_limits(), &p.room, p.service_type, &p.payload, "")
        .await
    {
        Ok(_) => cp.metrics.room_publishes.inc(),
        Err(e) => {
            cp.metrics.room_publish_errors.inc();
            warn!(gateway = %gw, room = %p.room, error = %e, "publish failed: outcome unknown (the message may or may not have been numbered)");
        }
    }
}

fn room_arg(room: &str) -> Result<(), Status> {
    if gg_proto::room::valid_room(room) {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            gg_proto::room::RoomError::BadName(room.to_string()).to_string(),
        ))
    }
}

fn limit(n: u32, max: u32) -> usize {
    (if n == 0 { max } else { n.min(max) }) as usize
}

#[derive(Clone)]
pub struct RoomsApi {
    pub(crate) cp: Arc<Cp>,
}

impl RoomsApi {
    /// Joins or leaves through the owning gateway's admin API.
    async fn membership(
        &self,
        r: pb::RoomMembershipRequest,
        join: bool,
    ) -> Result<pb::RoomMembershipResponse, Status> {
        room_arg(&r.room)?;
        let cp = &self.cp;
        let (_, gw, _) = cp
            .store
            .session(r.session_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("session {} is not in the directory", r.session_id))
            })?;
        let addr = (cp
            .store
            .gateway_admin_addr(&gw)
            .await
            .map_err(store_status)?)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Status::unavailable(format!(
                "gateway {gw} holding session {} has no admin address",
                r.session_id
            ))
        })?;
        let mut client = crate::gwadmin::connect(cp, &addr)
            .await
            .map_err(|e| Status::unavailable(format!("gateway {gw} ({addr}): {e}")))?;
        let call = crate::gwadmin::request(
            cp,
            gg_proto::pb::admin::SetRoomMembershipRequest {
                session_id: r.session_id,
                room: r.room,
                join,
            },
        )?;
        let resp = client
            .set_room_membership(call)
            .await
            .map_err(|s| Status::new(s.code(), format!("gateway {gw}: {}", s.message())))?;
        Ok(pb::RoomMembershipResponse {
            gateway_id: gw,
            seq: resp.into_inner().seq,
        })
    }
}

#[tonic::async_trait]
impl Rooms for RoomsApi {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        require(&req, Scope::Operate)?;
        let r = req.into_inner();
        room_arg(&r.room)?;
        if r.service_type > u32::from(u16::MAX) {
            return Err(Status::invalid_argument("service_type must fit in 16 bits"));
        }
        if r.payload.len() > MAX_PAYLOAD {
            return Err(Status::invalid_argument(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                r.payload.len()
            )));
        }
        if r.request_id.len() > 128 {
            return Err(Status::invalid_argument(
                "request_id is longer than 128 bytes",
            ));
        }
        let cp = &self.cp;
        let (seq, duplicate) = cp
            .store
            .room_publish(cp.room_limits(), &r.room, r.service_type, &r.payload, &r.request_id)
            .await
            .map_err(|e| {
                cp.metrics.room_publish_errors.inc();
                let st = store_status(e);
                Status::new(
                    st.code(),
                    format!(
                        "{}: outcome unknown — the message may have been published; retry with the same request_id",
                        st.message()
                    ),
                )
            })?;
        if !duplicate {
            cp.metrics.room_publishes.inc();
        }
        Ok(Response::new(pb::PublishResponse { seq, duplicate }))
    }

    async fn join(
        &self,
        req: Request<pb::RoomMembershipRequest>,
    ) -> Result<Response<pb::RoomMembershipResponse>, Status> {
        require(&req, Scope::Operate)?;
        Ok(Response::new(
            self.membership(req.into_inner(), true).await?,
        ))
    }

    async fn leave(
        &self,
        req: Request<pb::RoomMembershipRequest>,
    ) -> Result<Response<pb::RoomMembershipResponse>, Status> {
        require(&req, Scope::Operate)?;
        Ok(Response::new(
            self.membership(req.into_inner(), false).await?,
        ))
    }

    async fn members(
        &self,
        req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        room_arg(&r.room)?;
        let (members, total) = (self.cp.store)
            .room_members(&r.room, limit(r.limit, 10_000))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::MembersResponse { members, total }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        if !r.prefix.is_empty() && !gg_proto::room::valid_room(&r.prefix) {
            return Err(Status::invalid_argument(format!(
                "prefix {:?} has characters no room name has",
                r.prefix
            )));
        }
        let rooms = (self.cp.store)
            .rooms_list(&r.prefix, limit(r.limit, 1000))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListRoomsResponse { rooms }))
    }

    async fn history(
        &self,
        req: Request<pb::RoomHistoryRequest>,
    ) -> Result<Response<pb::RoomHistoryResponse>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        room_arg(&r.room)?;
        let (messages, seq, gap) = (self.cp.store)
            .room_history(&r.room, r.after_seq, limit(r.limit, 1000))
            .await
            .map_err(store_status)?;
        // Older than the TTL: expired even if the stream still holds it.
        let oldest = gg_runtime::clock::now_ms().saturating_sub(self.cp.cfg.rooms.history_ttl_ms);
        let kept: Vec<_> = messages
            .into_iter()
            .filter(|m| m.published_ms >= oldest)
            .collect();
        Ok(Response::new(pb::RoomHistoryResponse {
            gap: gap || kept.first().is_some_and(|m| m.seq > r.after_seq + 1),
            messages: kept,
            seq,
        }))
    }
}

/// Largest payload a publish takes (the frame protocol's default maximum
/// less the header and the longest room envelope).
pub const MAX_PAYLOAD: usize = 1024 * 1024 - 28 - 1 - 128 - 8;

/// Logs and counts a stream's room work that failed.
pub(crate) fn log_ops_error(gw: &str, n: usize, e: &crate::store::StoreError) {
    warn!(gateway = %gw, ops = n, error = %e, "room membership write failed; the gateway resends its memberships when its stream reconnects");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, seq: u64, bytes: usize) -> pb::RoomMessage {
        pb::RoomMessage {
            room: room.into(),
            seq,
            service_type: 1,
            payload: vec![0; bytes].into(),
            published_ms: 0,
        }
    }

    #[tokio::test]
    async fn every_stream_gets_the_same_payload_not_a_copy() {
        let hub = Hub::default();
        let (mut a, mut b) = (hub.register(), hub.register());
        hub.subscribe(a.id, "lobby");
        hub.subscribe(b.id, "lobby");
        let m = msg("lobby", 1, 4096);
        let at = m.payload.as_ptr();
        assert_eq!(hub.dispatch(vec![m]), 2);
        let (ma, mb) = (a.next().await.unwrap(), b.next().await.unwrap());
        assert_eq!(ma.messages[0].payload.as_ptr(), at);
        assert_eq!(mb.messages[0].payload.as_ptr(), at);
    }

    #[tokio::test]
    async fn a_stream_past_its_bytes_is_marked_behind() {
        let hub = Hub::default();
        let mut sub = hub.register();
        hub.subscribe(sub.id, "lobby");
        let quarter = FEED_BYTES / 4;
        for seq in 1..=4 {
            assert_eq!(hub.dispatch(vec![msg("lobby", seq, quarter)]), 1);
        }
        assert!(!sub.behind.load(Ordering::Acquire));
        // Over the bound: dropped, and the gateway will recover the room.
        assert_eq!(hub.dispatch(vec![msg("lobby", 5, quarter)]), 0);
        assert!(sub.behind.load(Ordering::Acquire));
        // A batch taken off the feed makes room again.
        assert_eq!(sub.next().await.expect("a batch").messages[0].seq, 1);
        assert_eq!(hub.dispatch(vec![msg("lobby", 6, quarter)]), 1);
        // One batch always fits an empty feed, however large.
        let hub = Hub::default();
        let sub = hub.register();
        hub.subscribe(sub.id, "lobby");
        assert_eq!(hub.dispatch(vec![msg("lobby", 1, FEED_BYTES * 2)]), 1);
        assert!(!sub.behind.load(Ordering::Acquire));
    }
}
