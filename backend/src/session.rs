//! Sessions as a backend sees them, across gateway connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gg_proto::control::{self, Close, Open};
use gg_proto::{CloseCode, ErrorCode, Frame, Header, Kind};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Frames queued for one gateway connection's writer.
pub(crate) type Writer = mpsc::Sender<Bytes>;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session ended, or moved and is not connected again yet.
    #[error("the session is not connected to this backend")]
    NotConnected,
    /// The gateway connection's queue is full: the gateway (or the network)
    /// is not keeping up. Nothing was queued.
    #[error("the gateway connection's queue is full")]
    Overloaded,
    /// Not a valid room name (1–128 bytes of `A–Z a–z 0–9 _ . : -`).
    #[error("invalid room name")]
    BadRoom,
}

/// The gateway connection a session is reached through now.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) conn: u64,
    pub(crate) tx: Writer,
    pub(crate) gateway_id: Arc<str>,
}

struct Shared {
    id: u64,
    user_id: u64,
    realm_id: u32,
    link: Mutex<Option<Link>>,
    open: Mutex<Open>,
    /// Set by [`Session::close`]: the gateway ends the session without a
    /// CLOSE back, so the table ends it (and runs `on_close`) itself.
    kicked: Mutex<Option<Close>>,
}

/// One player session. Cheap to clone; keep it in your own state to push
/// to the player later. Pushes go to whichever gateway connection holds
/// the session now.
#[derive(Clone)]
pub struct Session(Arc<Shared>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.0.id)
            .field("user_id", &self.0.user_id)
            .field("realm_id", &self.0.realm_id)
            .finish()
    }
}

impl Session {
    /// Cluster-unique session id (the frame header's `session_id`).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn user_id(&self) -> u64 {
        self.0.user_id
    }

    pub fn realm_id(&self) -> u32 {
        self.0.realm_id
    }

    /// The gateway holding the session now (`None` while it moves).
    pub fn gateway_id(&self) -> Option<String> {
        self.0
            .link
            .lock()
            .as_ref()
            .map(|l| l.gateway_id.to_string())
    }

    /// The latest OPEN: protocol, the player's address, `resumed`, and the
    /// W3C `traceparent` to continue in the backend's own spans.
    pub fn open(&self) -> Open {
        self.0.open.lock().clone()
    }

    /// Whether the session is connected (not ended, not in the middle of a
    /// move).
    pub fn is_connected(&self) -> bool {
        self.0.link.lock().is_some()
    }

    /// Sends DATA to the player unprompted (`seq` 0) with `service_type`.
    pub fn push(&self, service_type: u16, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let mut h = self.header(Kind::Data);
        h.service_type = service_type;
        self.send(Frame::new(h, payload))
    }

    /// Like [`Session::push`], but waits for room in the connection's
    /// queue instead of failing with [`SendError::Overloaded`].
    pub async fn push_wait(
        &self,
        service_type: u16,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let mut h = self.header(Kind::Data);
        h.service_type = service_type;
        self.send_wait(Frame::new(h, payload)).await
    }

    /// Kicks the player: the gateway closes the session with `code` and
    /// `reason` (use [`CloseCode::Kicked`] unless another code fits). The
    /// session ends here too; [`crate::Handler::on_close`] follows with
    /// this code.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.send(control::close_frame(self.0.id, code, reason))?;
        *self.0.link.lock() = None;
        *self.0.kicked.lock() = Some(Close {
            code: code.code(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Puts the player into `room` (rooms extension of protocol v1): every
    /// message published to the room afterwards reaches it, on whichever
    /// gateway it is connected. The gateway confirms with JOIN `{room, seq}`
    /// (the room's sequence at the join); to wait for it, use the control
    /// plane's `Rooms.Join` instead.
    pub fn join(&self, room: &str) -> Result<(), SendError> {
        self.room_frame(Kind::Join, room)
    }

    /// Takes the player out of `room`.
    pub fn leave(&self, room: &str) -> Result<(), SendError> {
        self.room_frame(Kind::Leave, room)
    }

    /// Publishes `data` to every member of `room` across the fleet, through
    /// this session's gateway connection (`service_type` tells clients
    /// which service it is from). Numbered by the control plane; use
    /// `Rooms.Publish` to learn the number.
    pub fn publish(&self, room: &str, service_type: u16, data: &[u8]) -> Result<(), SendError> {
        let payload =
            gg_proto::room::publish_payload(room, data).map_err(|_| SendError::BadRoom)?;
        let mut h = Header::new(Kind::Publish);
        h.service_type = service_type;
        self.send(Frame::new(h, payload))
    }

    fn room_frame(&self, kind: Kind, room: &str) -> Result<(), SendError> {
        if !gg_proto::room::valid_room(room) {
            return Err(SendError::BadRoom);
        }
        let body = gg_proto::room::RoomRef {
            room: room.to_string(),
        };
        self.send(control::control_frame(kind, self.header(kind), &body))
    }

    fn header(&self, kind: Kind) -> Header {
        let mut h = Header::new(kind);
        h.session_id = self.0.id;
        h.user_id = self.0.user_id;
        h.realm_id = self.0.realm_id;
        h
    }

    fn writer(&self) -> Result<Writer, SendError> {
        (self.0.link.lock().as_ref())
            .map(|l| l.tx.clone())
            .ok_or(SendError::NotConnected)
    }

    async fn send_wait(&self, f: Frame) -> Result<(), SendError> {
        let tx = self.writer()?;
        tx.send(f.to_bytes())
            .await
            .map_err(|_| SendError::NotConnected)
    }

    pub(crate) fn send(&self, f: Frame) -> Result<(), SendError> {
        let tx = self.writer()?;
        tx.try_send(f.to_bytes()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected,
        })
    }
}

/// One DATA frame from the player. Answer it with [`Request::reply`] or
/// [`Request::error`] — now, or later from a task (a `Request` is `Send`).
/// The answer carries the request's `seq` and `service_type`, so the
/// client can match it.
#[derive(Debug)]
pub struct Request {
    session: Session,
    header: Header,
    payload: Bytes,
}

impl Request {
    pub(crate) fn new(session: Session, header: Header, payload: Bytes) -> Request {
        Request {
            session,
            header,
            payload,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// DATA back to the player with this request's `seq`.
    pub fn reply(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.session.send(Frame::new(self.header, payload))
    }

    /// Like [`Request::reply`], but waits for room in the connection's
    /// queue (back-pressure for large answers).
    pub async fn reply_wait(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.session
            .send_wait(Frame::new(self.header, payload))
            .await
    }

    /// ERROR `{code, message}` for this request; the session stays open.
    pub fn error(&self, code: ErrorCode, message: &str) -> Result<(), SendError> {
        self.session
            .send(control::error_frame(&self.header, code, message))
    }
}

struct Entry {
    session: Session,
    /// The connection whose OPEN came last.
    owner: u64,
    /// Set while the session is between gateways (CLOSE `moved`, or its
    /// connection was lost): it waits for the next OPEN until the TTL.
    detached_at: Option<(Instant, Close)>,
}

/// Every session of this backend, by id (ids are cluster-unique).
#[derive(Default)]
pub(crate) struct Table {
    map: Mutex<HashMap<u64, Entry>>,
}

impl Table {
    /// OPEN on `link`: the same session again (resumed, or re-opened after
    /// a lost connection) keeps its handle and state; else a new one.
    pub(crate) fn open(&self, h: &Header, open: Open, link: Link) -> Session {
        let mut map = self.map.lock();
        let conn = link.conn;
        if let Some(e) = map.get_mut(&h.session_id) {
            *e.session.0.link.lock() = Some(link);
            *e.session.0.open.lock() = open;
            e.owner = conn;
            e.detached_at = None;
            return e.session.clone();
        }
        let session = Session(Arc::new(Shared {
            id: h.session_id,
            user_id: h.user_id,
            realm_id: h.realm_id,
            link: Mutex::new(Some(link)),
            open: Mutex::new(open),
            kicked: Mutex::new(None),
        }));
        map.insert(
            h.session_id,
            Entry {
                session: session.clone(),
                owner: conn,
                detached_at: None,
            },
        );
        session
    }

    /// A session that has not been kicked.
    pub(crate) fn get(&self, id: u64) -> Option<Session> {
        (self.map.lock().get(&id))
            .filter(|e| e.session.0.kicked.lock().is_none())
            .map(|e| e.session.clone())
    }

    /// CLOSE from connection `conn`: only the owner can end or detach the
    /// session (the next gateway's OPEN may have come first). Returns the
    /// session when it ended.
    pub(crate) fn close(&self, id: u64, conn: u64, close: Close) -> Option<Session> {
        let mut map = self.map.lock();
        let e = map.get_mut(&id).filter(|e| e.owner == conn)?;
        if close.code == CloseCode::Moved.code() {
            *e.session.0.link.lock() = None;
            e.detached_at = Some((Instant::now(), close));
            return None;
        }
        *e.session.0.link.lock() = None;
        map.remove(&id).map(|e| e.session)
    }

    /// Connection `conn` is gone: its sessions wait for a new OPEN.
    pub(crate) fn detach_conn(&self, conn: u64) {
        for e in self.map.lock().values_mut() {
            if e.owner == conn && e.detached_at.is_none() {
                *e.session.0.link.lock() = None;
                e.detached_at = Some((
                    Instant::now(),
                    Close {
                        code: CloseCode::Shutdown.code(),
                        reason: "the gateway connection was lost and the session not opened again"
                            .into(),
                    },
                ));
            }
        }
    }

    /// Sessions kicked, or detached for longer than `ttl`: removed and
    /// returned, with why they ended.
    pub(crate) fn expire(&self, ttl: Duration) -> Vec<(Session, Close)> {
        let mut map = self.map.lock();
        let mut gone = Vec::new();
        map.retain(|_, e| {
            let why = e.session.0.kicked.lock().clone().or_else(|| {
                e.detached_at
                    .as_ref()
                    .filter(|(t, _)| t.elapsed() >= ttl)
                    .map(|(_, c)| c.clone())
            });
            match why {
                Some(c) => {
                    gone.push((e.session.clone(), c));
                    false
                }
                None => true,
            }
        });
        gone
    }

    /// Connected sessions now.
    pub(crate) fn connected(&self) -> usize {
        self.map
            .lock()
            .values()
            .filter(|e| e.detached_at.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(conn: u64) -> (Link, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(4);
        (
            Link {
                conn,
                tx,
                gateway_id: format!("gw-{conn}").into(),
            },
            rx,
        )
    }

    fn open(resumed: bool) -> Open {
        Open {
            protocol: "tcp".into(),
            remote_addr: "127.0.0.1:1".into(),
            resumed,
            traceparent: None,
        }
    }

    fn header(id: u64) -> Header {
        let mut h = Header::new(Kind::Open);
        h.session_id = id;
        h.user_id = 7;
        h
    }

    fn moved() -> Close {
        Close {
            code: CloseCode::Moved.code(),
            reason: "moved".into(),
        }
    }

    #[test]
    fn a_move_keeps_the_session_whichever_frame_comes_first() {
        let t = Table::default();
        let (l1, _r1) = link(1);
        let (l2, mut r2) = link(2);
        let s = t.open(&header(9), open(false), l1);
        // The new gateway's OPEN first, then the old one's CLOSE moved.
        let s2 = t.open(&header(9), open(true), l2.clone());
        assert!(Arc::ptr_eq(&s.0, &s2.0));
        assert!(t.close(9, 1, moved()).is_none());
        assert!(s.is_connected(), "the old connection cannot detach it");
        s.push(3, "hi").expect("pushed to the new gateway");
        assert!(r2.try_recv().is_ok());
        assert_eq!(s.gateway_id().as_deref(), Some("gw-2"));
        // The other order: CLOSE moved, then OPEN resumed.
        assert!(t.close(9, 2, moved()).is_none());
        assert_eq!(s.push(3, "lost"), Err(SendError::NotConnected));
        let (l3, _r3) = link(3);
        t.open(&header(9), open(true), l3);
        assert!(s.is_connected());
        assert!(t.expire(Duration::ZERO).is_empty());
    }

    #[test]
    fn only_the_owner_ends_a_session_and_detached_ones_expire() {
        let t = Table::default();
        let (l1, _r1) = link(1);
        let s = t.open(&header(5), open(false), l1);
        let normal = Close {
            code: CloseCode::Normal.code(),
            reason: String::new(),
        };
        assert!(t.close(5, 2, normal.clone()).is_none(), "not the owner");
        assert!(t.close(5, 1, normal).is_some());
        assert!(t.get(5).is_none());
        assert_eq!(s.push(1, "x"), Err(SendError::NotConnected));

        let (l1, _r1) = link(1);
        t.open(&header(6), open(false), l1);
        t.detach_conn(1);
        assert_eq!(t.connected(), 0);
        assert!(t.expire(Duration::from_secs(60)).is_empty());
        let gone = t.expire(Duration::ZERO);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.code, CloseCode::Shutdown.code());
    }

    #[test]
    fn a_kicked_session_ends_with_the_kick() {
        let t = Table::default();
        let (l1, mut r1) = link(1);
        let s = t.open(&header(4), open(false), l1);
        s.close(CloseCode::Kicked, "cheating").expect("queued");
        assert!(r1.try_recv().is_ok());
        assert!(t.get(4).is_none(), "no more DATA for it");
        let gone = t.expire(Duration::from_secs(60));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.reason, "cheating");
        assert_eq!(s.push(1, "x"), Err(SendError::NotConnected));
    }

    #[test]
    fn a_full_writer_is_overloaded_not_blocked() {
        let t = Table::default();
        let (l1, _r1) = link(1);
        let s = t.open(&header(1), open(false), l1);
        for _ in 0..4 {
            s.push(1, "x").expect("queued");
        }
        assert_eq!(s.push(1, "x"), Err(SendError::Overloaded));
    }
}
