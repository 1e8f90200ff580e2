//! Rooms on this gateway: which local sessions are in which room, and the
//! delivery of each room's messages to them in sequence order, exactly
//! once.
//!
//! With a control plane, a room's messages are numbered by the control
//! plane (in Redis) and arrive on the Sync stream for every room that has a
//! member here; the gateway delivers them strictly in `seq` order, drops
//! duplicates, and when it sees a hole it asks the control plane to replay
//! the room's history after the last message it delivered (messages the
//! history no longer keeps are skipped and counted). Standalone, rooms are
//! local to the gateway and numbered here.
//!
//! A MESSAGE frame names no session, so each message is encoded once and
//! every member gets the same buffer. Fan-out happens under the registry's
//! lock, so concurrent publishers cannot interleave one room's order; a
//! member whose queue is full is closed as a slow consumer (3003) by its
//! own `deliver`, and the room goes on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use gg_proto::pb::controlplane as pb;
use gg_proto::room::{self, RoomError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::RoomMetrics;
use crate::session::{Outbound, SessionHandle};

/// Rooms one session may be in at once.
pub(crate) const MAX_ROOMS_PER_SESSION: usize = 64;

/// Room messages held while a hole in the sequence is being recovered;
/// beyond it the oldest are dropped and recovered from the history too.
const MAX_PENDING: usize = 4096;

/// Room work for the control plane's Sync stream.
#[derive(Debug)]
pub(crate) enum RoomOut {
    Op(pb::RoomOp),
    Subscribe(pb::RoomSubscribe),
    Unsubscribe(String),
    Publish(pb::RoomPublish),
}

/// Messages queued for the Sync stream at most (beyond, a JOIN or PUBLISH
/// is refused with an ERROR rather than buffered without bound).
const OUT_QUEUE: usize = 65_536;

/// Bytes of PUBLISH payloads queued for the Sync stream at most: while the
/// control plane is away, 65,536 publishes of up to a frame each would be
/// gigabytes.
const OUT_QUEUE_BYTES: usize = 64 << 20;

/// The receiving end of the room work for the Sync stream; taking a
/// PUBLISH off gives its bytes back to [`OUT_QUEUE_BYTES`].
pub(crate) struct RoomOutRx {
    rx: mpsc::Receiver<RoomOut>,
    bytes: Arc<AtomicUsize>,
}

impl RoomOutRx {
    pub(crate) async fn recv(&mut self) -> Option<RoomOut> {
        let m = self.rx.recv().await?;
        self.taken(&m);
        Some(m)
    }

    pub(crate) fn try_recv(&mut self) -> Result<RoomOut, mpsc::error::TryRecvError> {
        let m = self.rx.try_recv()?;
        self.taken(&m);
        Ok(m)
    }

    fn taken(&self, m: &RoomOut) {
        if let RoomOut::Publish(p) = m {
            self.bytes.fetch_sub(p.payload.len(), Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error(transparent)]
    Name(#[from] RoomError),
    #[error("session {0} is in {MAX_ROOMS_PER_SESSION} rooms already")]
    TooMany(u64),
    #[error("session {0} is closing")]
    Closed(u64),
    #[error("the control plane queue is full; try again")]
    Busy,
    #[error("the control plane did not confirm the subscription in time")]
    Timeout,
}

/// A join's outcome: the room's sequence at the join (every later message
/// reaches the session), now or once the control plane confirms it.
pub(crate) enum Joined {
    Now(u64),
    Wait(oneshot::Receiver<u64>),
}

impl Joined {
    /// The sequence, waiting up to `within` for the confirmation.
    pub(crate) async fn seq(self, within: std::time::Duration) -> Result<u64, JoinError> {
        match self {
            Joined::Now(s) => Ok(s),
            Joined::Wait(rx) => match tokio::time::timeout(within, rx).await {
                Ok(Ok(s)) => Ok(s),
                _ => Err(JoinError::Timeout),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the control plane's RoomState: messages are held.
    Subscribing,
    Live,
    /// A hole was seen; the replay was asked for.
    Recovering,
}

struct Room {
    members: HashMap<u64, SessionHandle>,
    /// The last sequence delivered (or skipped as lost).
    last: u64,
    phase: Phase,
    /// Messages after a hole, by sequence: (publisher's service, frame).
    pending: BTreeMap<u64, Bytes>,
    waiters: Vec<oneshot::Sender<u64>>,
}

impl Room {
    fn new(phase: Phase) -> Room {
        Room {
            members: HashMap::new(),
            last: 0,
            phase,
            pending: BTreeMap::new(),
            waiters: Vec::new(),
        }
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, Room>,
    by_session: HashMap<u64, Vec<Arc<str>>>,
}

pub(crate) struct Rooms {
    state: parking_lot::Mutex<State>,
    /// Memberships here; lets a closing session skip the lock when zero.
    memberships: AtomicUsize,
    /// To the Sync stream; `None` standalone (rooms are local).
    out: Option<mpsc::Sender<RoomOut>>,
    out_rx: parking_lot::Mutex<Option<RoomOutRx>>,
    /// PUBLISH payload bytes in `out` now.
    out_bytes: Arc<AtomicUsize>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Rooms {
    pub(crate) fn new(fleet: bool, metrics: Arc<crate::metrics::Metrics>) -> Rooms {
        let out_bytes = Arc::new(AtomicUsize::new(0));
        let (out, out_rx) = if fleet {
            let (tx, rx) = mpsc::channel(OUT_QUEUE);
            let rx = RoomOutRx {
                rx,
                bytes: out_bytes.clone(),
            };
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Rooms {
            state: parking_lot::Mutex::new(State::default()),
            memberships: AtomicUsize::new(0),
            out,
            out_rx: parking_lot::Mutex::new(out_rx),
            out_bytes,
            metrics,
        }
    }

    fn m(&self) -> &RoomMetrics {
        &self.metrics.rooms
    }

    /// The receiving end of room work for the control-plane client.
    pub(crate) fn take_out(&self) -> Option<RoomOutRx> {
        self.out_rx.lock().take()
    }

    fn send(&self, m: RoomOut) -> bool {
        let Some(tx) = &self.out else {
            return true;
        };
        let len = match &m {
            RoomOut::Publish(p) => p.payload.len(),
            _ => 0,
        };
        if len > 0 {
            let before = self.out_bytes.fetch_add(len, Ordering::Relaxed);
            // One publish always fits an empty queue.
            if before > 0 && before + len > OUT_QUEUE_BYTES {
                self.out_bytes.fetch_sub(len, Ordering::Relaxed);
                return false;
            }
        }
        if tx.try_send(m).is_err() {
            self.out_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Puts `s` into `room`. Joining a room it is already in is a no-op
    /// that answers the current sequence.
    pub(crate) fn join(&self, s: &SessionHandle, name: &str) -> Result<Joined, JoinError> {
        if !room::valid_room(name) {
            return Err(RoomError::BadName(name.to_string()).into());
        }
        if s.requested_close().is_some() {
            return Err(JoinError::Closed(s.id()));
        }
        let mut st = self.state.lock();
        let key: Arc<str> = match st.rooms.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => name.into(),
        };
        let mine = st.by_session.get(&s.id()).map_or(0, Vec::len);
        let already = st
            .rooms
            .get(name)
            .is_some_and(|r| r.members.contains_key(&s.id()));
        if !already && mine >= MAX_ROOMS_PER_SESSION {
            return Err(JoinError::TooMany(s.id()));
        }
        let fleet = self.out.is_some();
        let fresh = !st.rooms.contains_key(name);
        if !already {
            let op = RoomOut::Op(pb::RoomOp {
                session_id: s.id(),
                user_id: s.user_id(),
                room: name.to_string(),
                join: true,
                keep_for_resume: false,
            });
            if fresh
                && !self.send(RoomOut::Subscribe(pb::RoomSubscribe {
                    room: name.to_string(),
                    recover: false,
                    after_seq: 0,
                }))
            {
                return Err(JoinError::Busy);
            }
            if !self.send(op) {
                if fresh {
                    // Nothing joined: the subscription is answered and forgotten.
                    self.send(RoomOut::Unsubscribe(name.to_string()));
                }
                return Err(JoinError::Busy);
            }
        }
        let room = st.rooms.entry(key.clone()).or_insert_with(|| {
            self.m().active.inc();
            Room::new(if fleet {
                Phase::Subscribing
            } else {
                Phase::Live
            })
        });
        if !already {
            room.members.insert(s.id(), s.clone());
            self.memberships.fetch_add(1, Ordering::Relaxed);
            self.m().members.inc();
        }
        let joined = if room.phase == Phase::Subscribing {
            let (tx, rx) = oneshot::channel();
            room.waiters.push(tx);
            Joined::Wait(rx)
        } else {
            Joined::Now(room.last)
        };
        if !already {
            st.by_session.entry(s.id()).or_default().push(key);
        }
        Ok(joined)
    }

    /// Takes session `sid` out of `room`; whether it was in it.
    pub(crate) fn leave(&self, sid: u64, user_id: u64, name: &str) -> bool {
        let mut st = self.state.lock();
        let State { rooms, by_session } = &mut *st;
        let Some(list) = by_session.get_mut(&sid) else {
            return false;
        };
        let Some(i) = list.iter().position(|r| &**r == name) else {
            return false;
        };
        let key = list.swap_remove(i);
        if list.is_empty() {
            by_session.remove(&sid);
        }
        self.remove_member(rooms, &key, sid);
        self.send(RoomOut::Op(pb::RoomOp {
            session_id: sid,
            user_id,
            room: name.to_string(),
            join: false,
            keep_for_resume: false,
        }));
        true
    }

    fn remove_member(&self, rooms: &mut HashMap<Arc<str>, Room>, key: &str, sid: u64) {
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        if room.members.remove(&sid).is_some() {
            self.memberships.fetch_sub(1, Ordering::Relaxed);
            self.m().members.dec();
        }
        if room.members.is_empty() {
            rooms.remove(key);
            self.m().active.dec();
            self.send(RoomOut::Unsubscribe(key.to_string()));
        }
    }

    /// A session ended here: it leaves every room. `keep_for_resume`: it
    /// may resume elsewhere, and its rooms go with it.
    pub(crate) fn session_closed(&self, s: &SessionHandle, keep_for_resume: bool) {
        if self.memberships.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut st = self.state.lock();
        let State { rooms, by_session } = &mut *st;
        let Some(list) = by_session.remove(&s.id()) else {
            return;
        };
        for key in list {
            // Only this very session (a resume here replaced it with a new
            // handle, which keeps the rooms).
            let same = rooms
                .get(&key)
                .and_then(|r| r.members.get(&s.id()))
                .is_some_and(|m| m.same(s));
            if !same {
                by_session.entry(s.id()).or_default().push(key);
                continue;
            }
            self.remove_member(rooms, &key, s.id());
            self.send(RoomOut::Op(pb::RoomOp {
                session_id: s.id(),
                user_id: s.user_id(),
                room: key.to_string(),
                join: false,
                keep_for_resume,
            }));
        }
    }

    /// A session resumed here on a new connection replaces its old handle
    /// in every room it was in on this gateway.
    pub(crate) fn session_replaced(&self, s: &SessionHandle) {
        if self.memberships.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut st = self.state.lock();
        let State { rooms, by_session } = &mut *st;
        for key in by_session.get(&s.id()).into_iter().flatten() {
            if let Some(m) = rooms.get_mut(key).and_then(|r| r.members.get_mut(&s.id())) {
                *m = s.clone();
            }
        }
    }

    /// The rooms session `sid` is in here.
    pub(crate) fn of_session(&self, sid: u64) -> Vec<String> {
        let st = self.state.lock();
        let mut v: Vec<String> = (st.by_session.get(&sid).into_iter().flatten())
            .map(|r| r.to_string())
            .collect();
        v.sort();
        v
    }

    /// A PUBLISH from a backend (or the admin API): to the control plane
    /// for numbering and fleet fan-out, or, standalone, numbered and
    /// delivered here. Returns the sequence when it is known now.
    pub(crate) fn publish(
        &self,
        name: &str,
        service_type: u16,
        data: &[u8],
    ) -> Result<Option<u64>, JoinError> {
        if !room::valid_room(name) {
            return Err(RoomError::BadName(name.to_string()).into());
        }
        if self.out.is_some() {
            let ok = self.send(RoomOut::Publish(pb::RoomPublish {
                room: name.to_string(),
                service_type: u32::from(service_type),
                payload: data.to_vec(),
            }));
            if !ok {
                return Err(JoinError::Busy);
            }
            self.m().published.inc();
            return Ok(None);
        }
        self.m().published.inc();
        let mut st = self.state.lock();
        // A room nobody is in has no sequence to keep.
        let Some(room) = st.rooms.get_mut(name) else {
            return Ok(Some(0));
        };
        let seq = room.last + 1;
        let frame = room::message_frame(service_type, name, seq, data)?;
        self.m().messages.inc();
        self.deliver_one(room, seq, &frame);
        Ok(Some(seq))
    }

    fn deliver_one(&self, room: &mut Room, seq: u64, frame: &Bytes) {
        room.last = seq;
        let mut n = 0;
        for s in room.members.values() {
            // A session that closed while a join raced its close.
            if s.requested_close().is_none() {
                s.deliver(Outbound::Frame(frame.clone()));
                n += 1;
            }
        }
        self.m().deliveries.inc_by(n);
    }

    /// Delivers what is now contiguous after `last`.
    fn drain_pending(&self, room: &mut Room) {
        while let Some(entry) = room.pending.first_entry() {
            let seq = *entry.key();
            if seq <= room.last {
                entry.remove();
            } else if seq == room.last + 1 {
                let frame = entry.remove();
                self.deliver_one(room, seq, &frame);
            } else {
                break;
            }
        }
    }

    /// Room messages from the control plane, in the order it sent them.
    pub(crate) fn on_messages(&self, msgs: Vec<pb::RoomMessage>) {
        let mut st = self.state.lock();
        for msg in msgs {
            let Some(room) = st.rooms.get_mut(msg.room.as_str()) else {
                continue;
            };
            self.m().messages.inc();
            if room.phase != Phase::Subscribing && msg.seq <= room.last {
                continue;
            }
            let Ok(frame) =
                room::message_frame(msg.service_type as u16, &msg.room, msg.seq, &msg.payload)
            else {
                continue;
            };
            if room.phase != Phase::Subscribing && msg.seq == room.last + 1 {
                self.deliver_one(room, msg.seq, &frame);
                self.drain_pending(room);
                continue;
            }
            room.pending.insert(msg.seq, frame);
            if room.pending.len() > MAX_PENDING {
                room.pending.pop_first();
            }
            if room.phase == Phase::Live {
                room.phase = Phase::Recovering;
                self.m().recoveries.inc();
                self.send(RoomOut::Subscribe(pb::RoomSubscribe {
                    room: msg.room.clone(),
                    recover: true,
                    after_seq: room.last,
                }));
            }
        }
    }

    /// The control plane's word that everything of `name` through `seq` was
    /// sent (a fresh subscription: the room's sequence now) or is lost.
    pub(crate) fn on_state(&self, name: &str, seq: u64) {
        let mut st = self.state.lock();
        let Some(room) = st.rooms.get_mut(name) else {
            return;
        };
        match room.phase {
            Phase::Subscribing => {
                room.last = seq;
                for w in room.waiters.drain(..) {
                    let _ = w.send(seq);
                }
            }
            Phase::Recovering | Phase::Live => {
                if seq > room.last {
                    // Through `seq` the replay delivered what it had; the rest is gone.
                    let ready: Vec<u64> = room
                        .pending
                        .range(room.last + 1..=seq)
                        .map(|(k, _)| *k)
                        .collect();
                    self.m().lost.inc_by(seq - room.last - ready.len() as u64);
                    for s in ready {
                        if let Some(f) = room.pending.remove(&s) {
                            self.deliver_one(room, s, &f);
                        }
                    }
                    room.last = seq;
                }
            }
        }
        room.phase = Phase::Live;
        self.drain_pending(room);
        // Still a hole after the replay: the missing ones are newer than
        // what was asked; ask again from here.
        if !room.pending.is_empty() {
            room.phase = Phase::Recovering;
            self.m().recoveries.inc();
            self.send(RoomOut::Subscribe(pb::RoomSubscribe {
                room: name.to_string(),
                recover: true,
                after_seq: room.last,
            }));
        }
    }

    /// Everything the control plane must hear after the Sync stream comes
    /// (back) up: every membership, and every room's subscription —
    /// recovering from the last delivered message, so an outage loses
    /// nothing the history keeps.
    pub(crate) fn resync(&self) -> Vec<RoomOut> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        for (name, room) in st.rooms.iter_mut() {
            let sub = if room.phase == Phase::Subscribing {
                pb::RoomSubscribe {
                    room: name.to_string(),
                    recover: false,
                    after_seq: 0,
                }
            } else {
                room.phase = Phase::Recovering;
                self.m().recoveries.inc();
                pb::RoomSubscribe {
                    room: name.to_string(),
                    recover: true,
                    after_seq: room.last,
                }
            };
            out.push(RoomOut::Subscribe(sub));
            for s in room.members.values() {
                out.push(RoomOut::Op(pb::RoomOp {
                    session_id: s.id(),
                    user_id: s.user_id(),
                    room: name.to_string(),
                    join: true,
                    keep_for_resume: false,
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Protocol};
    use gg_proto::frame::{self, Kind};

    fn session(id: u64) -> (SessionHandle, crate::session::Inbox) {
        let addr = "127.0.0.1:1".parse().unwrap();
        SessionHandle::new(id, 100 + id, 0, Protocol::Tcp, addr, 64)
    }

    fn seqs(rx: &mut crate::session::Inbox) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(Outbound::Frame(b)) = rx.try_recv() {
            let f = frame::decode(&mut bytes::BytesMut::from(&b[..]), u32::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(f.header.kind(), Some(Kind::Message));
            v.push(room::parse_message(&f.payload).unwrap().1);
        }
        v
    }

    fn msg(room: &str, seq: u64) -> pb::RoomMessage {
        pb::RoomMessage {
            room: room.into(),
            seq,
            service_type: 1,
            payload: bytes::Bytes::from_static(b"x"),
            published_ms: 0,
        }
    }

    fn outs(rx: &mut RoomOutRx) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push(match m {
                RoomOut::Op(o) => format!(
                    "{}:{}:{}",
                    if o.join { "join" } else { "leave" },
                    o.session_id,
                    o.room
                ),
                RoomOut::Subscribe(s) if s.recover => format!("recover:{}:{}", s.room, s.after_seq),
                RoomOut::Subscribe(s) => format!("sub:{}", s.room),
                RoomOut::Unsubscribe(r) => format!("unsub:{r}"),
                RoomOut::Publish(p) => format!("pub:{}", p.room),
            });
        }
        v
    }

    #[test]
    fn publishes_waiting_for_the_control_plane_are_bounded_in_bytes() {
        let rooms = Rooms::new(true, Arc::new(Metrics::new()));
        let mut out = rooms.take_out().unwrap();
        let big = vec![0u8; OUT_QUEUE_BYTES / 4];
        for _ in 0..4 {
            rooms.publish("lobby", 1, &big).unwrap();
        }
        assert!(matches!(
            rooms.publish("lobby", 1, &big),
            Err(JoinError::Busy)
        ));
        assert!(matches!(
            rooms.publish("lobby", 1, b"x"),
            Err(JoinError::Busy)
        ));
        // Taken by the Sync stream: room again.
        assert!(matches!(out.try_recv(), Ok(RoomOut::Publish(_))));
        rooms.publish("lobby", 1, &big).unwrap();
        assert!(matches!(
            rooms.publish("lobby", 1, b"x"),
            Err(JoinError::Busy)
        ));
    }

    #[tokio::test]
    async fn messages_are_delivered_in_order_once_and_holes_are_recovered() {
        let rooms = Rooms::new(true, Arc::new(Metrics::new()));
        let mut out = rooms.take_out().unwrap();
        let (a, mut arx) = session(1);
        let Joined::Wait(w) = rooms.join(&a, "lobby").unwrap() else {
            panic!("a fresh room waits for the control plane")
        };
        assert_eq!(outs(&mut out), ["sub:lobby", "join:1:lobby"]);
        // Live messages racing the subscription; the state says 5.
        rooms.on_messages(vec![msg("lobby", 5), msg("lobby", 6)]);
        rooms.on_state("lobby", 5);
        assert_eq!(w.await.unwrap(), 5);
        assert_eq!(seqs(&mut arx), [6]);
        // A duplicate, then a hole: 9 waits for 7 and 8.
        rooms.on_messages(vec![msg("lobby", 6), msg("lobby", 7), msg("lobby", 9)]);
        assert_eq!(seqs(&mut arx), [7]);
        assert_eq!(outs(&mut out), ["recover:lobby:7"]);
        // The replay brings 8 (and 9 again); then the state.
        rooms.on_messages(vec![msg("lobby", 8), msg("lobby", 9)]);
        rooms.on_state("lobby", 7);
        assert_eq!(seqs(&mut arx), [8, 9]);
        // A hole the history lost: skipped, counted.
        rooms.on_messages(vec![msg("lobby", 12)]);
        assert_eq!(outs(&mut out), ["recover:lobby:9"]);
        rooms.on_state("lobby", 11);
        assert_eq!(seqs(&mut arx), [12]);
        assert_eq!(rooms.metrics.rooms.lost.get(), 2);
        // A second member joins without waiting.
        let (b, mut brx) = session(2);
        assert!(matches!(rooms.join(&b, "lobby").unwrap(), Joined::Now(12)));
        rooms.on_messages(vec![msg("lobby", 13)]);
        assert_eq!(seqs(&mut arx), [13]);
        assert_eq!(seqs(&mut brx), [13]);
        // Leaving and closing: the last one out unsubscribes.
        assert!(rooms.leave(1, 101, "lobby"));
        assert!(!rooms.leave(1, 101, "lobby"));
        rooms.session_closed(&b, true);
        let o = outs(&mut out);
        assert_eq!(
            o,
            [
                "join:2:lobby",
                "leave:1:lobby",
                "unsub:lobby",
                "leave:2:lobby"
            ]
        );
        assert_eq!(rooms.metrics.rooms.members.get(), 0);
        assert_eq!(rooms.metrics.rooms.active.get(), 0);
    }

    #[test]
    fn standalone_rooms_number_locally_and_names_are_checked() {
        let rooms = Rooms::new(false, Arc::new(Metrics::new()));
        let (a, mut arx) = session(1);
        assert!(matches!(
            rooms.join(&a, "bad room"),
            Err(JoinError::Name(_))
        ));
        assert!(matches!(rooms.join(&a, "r").unwrap(), Joined::Now(0)));
        assert_eq!(rooms.publish("r", 2, b"a").unwrap(), Some(1));
        assert_eq!(rooms.publish("r", 2, b"b").unwrap(), Some(2));
        assert_eq!(rooms.publish("empty", 2, b"c").unwrap(), Some(0));
        assert_eq!(seqs(&mut arx), [1, 2]);
        assert_eq!(rooms.of_session(1), ["r"]);
        for i in 0..MAX_ROOMS_PER_SESSION - 1 {
            rooms.join(&a, &format!("room{i}")).unwrap();
        }
        assert!(matches!(
            rooms.join(&a, "one-too-many"),
            Err(JoinError::TooMany(1))
        ));
        // A join of a room it is in already is fine.
        assert!(rooms.join(&a, "r").is_ok());
    }
}
