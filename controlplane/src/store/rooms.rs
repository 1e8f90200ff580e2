//! Rooms in Redis. Every room key carries the `{gg}` hash tag, so a publish
//! (sequence, history, fan-out log, idempotency key) and a membership
//! change (member hash, the session's room set, the room index, presence)
//! are each one atomic script on one node — on a Redis Cluster too.
//!
//! - `{gg}:room:<name>:seq`   the room's sequence (INCR per publish)
//! - `{gg}:room:<name>:h`     history: a stream with ids `<seq>-0`, last N, TTL
//! - `{gg}:room:<name>:m`     members: session id → `gateway|user`
//! - `{gg}:sr:<session>`      the rooms of a session (kept for a resume)
//! - `{gg}:rooms`             room index: name → member count (sorted set)
//! - `{gg}:roomlog`           the fleet fan-out log every replica reads
//! - `{gg}:room:req:<id>`     a publish's request id → its seq (24 h)

use std::collections::HashMap;

use gg_proto::pb::controlplane as pb;
use redis::{Cmd, Script};

use super::{Conn, K_PRESENCE, PRESENCE_KEEP, Store, StoreError, evalsha_keys, parse_entries};

pub const K_ROOMLOG: &str = "{gg}:roomlog";
pub const K_ROOMS: &str = "{gg}:rooms";

fn k_seq(room: &str) -> String {
    format!("{{gg}}:room:{room}:seq")
}
fn k_hist(room: &str) -> String {
    format!("{{gg}}:room:{room}:h")
}
fn k_members(room: &str) -> String {
    format!("{{gg}}:room:{room}:m")
}
fn k_sess_rooms(sid: u64) -> String {
    format!("{{gg}}:sr:{sid}")
}
fn k_req(id: &str) -> String {
    format!("{{gg}}:room:req:{id}")
}

/// A room's sequence outlives its history by this much at least, so a
/// quiet room does not restart at 1 while history with higher ids exists.
const SEQ_TTL_S: u64 = 7 * 24 * 3600;

// KEYS: seq, hist, log, req. ARGV: room, service, payload, hist_size,
// hist_ttl_ms, log_keep, request_id, seq_ttl_s. Returns {seq, duplicate}.
const PUBLISH_LUA: &str = r#"
if ARGV[7] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {tonumber(prev), 1} end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[8])
local t = redis.call('TIME')
local ms = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], tostring(seq) .. '-0', 's', ARGV[2], 't', ms, 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'r', ARGV[1], 'q', tostring(seq), 's', ARGV[2], 't', ms, 'd', ARGV[3])
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], tostring(seq), 'EX', 86400) end
return {seq, 0}
"#;

// KEYS: members, session rooms, room index, presence. ARGV: op
// (join|leave|keep), session, gateway, user, room, resume_keep_ms,
// presence_keep. A leave only removes a membership this gateway holds (a
// session resumed elsewhere keeps its rooms there).
const MEMBER_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[1] == 'join' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. '|' .. ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[5])
  redis.call('PERSIST', KEYS[2])
  if cur then return 0 end
  redis.call('ZINCRBY', KEYS[3], 1, ARGV[5])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 's', ARGV[2], 'u', ARGV[4], 'g', ARGV[3], 'o', '4', 'm', ARGV[5])
  return 1
end
if not cur then
  if ARGV[1] == 'leave' then redis.call('SREM', KEYS[2], ARGV[5]) end
  return 0
end
local sep = string.find(cur, '|', 1, true)
if string.sub(cur, 1, sep - 1) ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
if tonumber(redis.call('ZINCRBY', KEYS[3], -1, ARGV[5])) <= 0 then
  redis.call('ZREM', KEYS[3], ARGV[5])
end
if ARGV[1] == 'leave' then
  redis.call('SREM', KEYS[2], ARGV[5])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 's', ARGV[2], 'u', ARGV[4], 'g', ARGV[3], 'o', '5', 'm', ARGV[5])
return 1
"#;

pub(crate) struct RoomScripts {
    publish: Script,
    member: Script,
}

impl RoomScripts {
    pub(crate) fn new() -> RoomScripts {
        RoomScripts {
            publish: Script::new(PUBLISH_LUA),
            member: Script::new(MEMBER_LUA),
        }
    }
}

/// Settings the room writes need.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub history_size: u32,
    pub history_ttl_ms: u64,
    pub log_keep: u64,
    pub resume_keep_ms: u64,
}

fn no_script(e: &StoreError) -> bool {
    matches!(e, StoreError::Redis(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// A room message as the log and the history store it.
fn message(room: &str, seq: u64, f: &HashMap<String, redis::Value>) -> pb::RoomMessage {
    let text = |k: &str| match f.get(k) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    pb::RoomMessage {
        room: room.to_string(),
        seq,
        service_type: text("s").parse().unwrap_or(0),
        payload: match f.get("d") {
            Some(redis::Value::BulkString(b)) => b.clone().into(),
            _ => Default::default(),
        },
        published_ms: text("t").parse().unwrap_or(0),
    }
}

/// `[[id, [field, value, …]], …]` keeping values as bytes (payloads are binary).
fn entries(v: redis::Value) -> Vec<(String, HashMap<String, redis::Value>)> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let redis::Value::Array(mut pair) = item else {
                return None;
            };
            let fields = pair.pop()?;
            let id = match pair.pop()? {
                redis::Value::BulkString(b) => String::from_utf8(b).ok()?,
                _ => return None,
            };
            let redis::Value::Array(kv) = fields else {
                return None;
            };
            let mut m = HashMap::new();
            let mut it = kv.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let redis::Value::BulkString(k) = k {
                    m.insert(String::from_utf8_lossy(&k).into_owned(), v);
                }
            }
            Some((id, m))
        })
        .collect()
}

impl Store {
    /// Numbers a message, keeps it in the room's history and appends it to
    /// the fan-out log, atomically: (seq, duplicate request id).
    pub async fn room_publish(
        &self,
        lim: RoomLimits,
        room: &str,
        service_type: u32,
        payload: &[u8],
        request_id: &str,
    ) -> Result<(u64, bool), StoreError> {
        let (seq_k, hist_k, req_k) = (k_seq(room), k_hist(room), k_req(request_id));
        let (svc, size, ttl, keep, seq_ttl) = (
            service_type.to_string(),
            lim.history_size.to_string(),
            lim.history_ttl_ms.to_string(),
            lim.log_keep.to_string(),
            SEQ_TTL_S.max(lim.history_ttl_ms / 1000 * 2).to_string(),
        );
        let cmd = evalsha_keys(
            &self.rooms.publish,
            &[&seq_k, &hist_k, K_ROOMLOG, &req_k],
            &[
                room.as_bytes(),
                svc.as_bytes(),
                payload,
                size.as_bytes(),
                ttl.as_bytes(),
                keep.as_bytes(),
                request_id.as_bytes(),
                seq_ttl.as_bytes(),
            ],
        );
        let run = || async {
            let (seq, dup): (u64, u8) = cmd.query_async(&mut self.c()).await?;
            Ok::<_, StoreError>((seq, dup == 1))
        };
        match run().await {
            Err(e) if no_script(&e) => {
                self.rooms.publish.load_async(&mut self.c()).await?;
                run().await
            }
            other => other,
        }
    }

    /// Applies membership changes from gateway `gw` (one pipeline on a
    /// single node). Returns how many changed something.
    pub async fn room_ops(
        &self,
        lim: RoomLimits,
        gw: &str,
        ops: &[pb::RoomOp],
    ) -> Result<usize, StoreError> {
        if ops.is_empty() {
            return Ok(0);
        }
        let (keep_ms, pkeep) = (lim.resume_keep_ms.to_string(), PRESENCE_KEEP.to_string());
        let cmds: Vec<Cmd> = ops
            .iter()
            .map(|o| {
                let op = match (o.join, o.keep_for_resume) {
                    (true, _) => "join",
                    (false, false) => "leave",
                    (false, true) => "keep",
                };
                let (sid, uid) = (o.session_id.to_string(), o.user_id.to_string());
                evalsha_keys(
                    &self.rooms.member,
                    &[
                        &k_members(&o.room),
                        &k_sess_rooms(o.session_id),
                        K_ROOMS,
                        K_PRESENCE,
                    ],
                    &[
                        op.as_bytes(),
                        sid.as_bytes(),
                        gw.as_bytes(),
                        uid.as_bytes(),
                        o.room.as_bytes(),
                        keep_ms.as_bytes(),
                        pkeep.as_bytes(),
                    ],
                )
            })
            .collect();
        let run = || async {
            let mut p = redis::pipe();
            for c in &cmds {
                p.add_command(c.clone());
            }
            let changed: Vec<u8> = p.query_async(&mut self.c()).await?;
            Ok::<_, StoreError>(changed.iter().filter(|c| **c == 1).count())
        };
        match run().await {
            Err(e) if no_script(&e) => {
                self.rooms.member.load_async(&mut self.c()).await?;
                run().await
            }
            other => other,
        }
    }

    /// The room's sequence now (0: never published, or forgotten).
    pub async fn room_seq(&self, room: &str) -> Result<u64, StoreError> {
        let v: Option<u64> = redis::cmd("GET")
            .arg(k_seq(room))
            .query_async(&mut self.c())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// History after `after_seq` (at most `limit`), the sequence now, and
    /// whether messages between `after_seq` and the first returned are
    /// no longer kept.
    pub async fn room_history(
        &self,
        room: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<pb::RoomMessage>, u64, bool), StoreError> {
        let (v, seq): (redis::Value, Option<u64>) = redis::pipe()
            .cmd("XRANGE")
            .arg(k_hist(room))
            .arg(format!("({after_seq}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .cmd("GET")
            .arg(k_seq(room))
            .query_async(&mut self.c())
            .await?;
        let seq = seq.unwrap_or(0);
        let msgs: Vec<pb::RoomMessage> = entries(v)
            .iter()
            .filter_map(|(id, f)| {
                let s = id.split_once('-')?.0.parse().ok()?;
                Some(message(room, s, f))
            })
            .collect();
        let first = msgs.first().map_or(seq + 1, |m| m.seq);
        let gap = first > after_seq + 1 && seq > after_seq;
        Ok((msgs, seq, gap))
    }

    /// Up to `limit` members and how many there are.
    pub async fn room_members(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<(Vec<pb::RoomMember>, u64), StoreError> {
        let m: HashMap<u64, String> = redis::cmd("HGETALL")
            .arg(k_members(room))
            .query_async(&mut self.c())
            .await?;
        let total = m.len() as u64;
        let mut v: Vec<pb::RoomMember> = m
            .into_iter()
            .filter_map(|(sid, val)| {
                let (gw, uid) = val.split_once('|')?;
                Some(pb::RoomMember {
                    session_id: sid,
                    user_id: uid.parse().unwrap_or(0),
                    gateway_id: gw.to_string(),
                })
            })
            .collect();
        v.sort_by_key(|m| m.session_id);
        v.truncate(limit);
        Ok((v, total))
    }

    /// Rooms with members (name, members, seq), by name.
    pub async fn rooms_list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<pb::RoomInfo>, StoreError> {
        let (start, end) = if prefix.is_empty() {
            ("-".to_string(), "+".to_string())
        } else {
            (format!("[{prefix}"), format!("[{prefix}\u{7f}"))
        };
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(K_ROOMS)
            .arg(start)
            .arg(end)
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.c())
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for n in &names {
            p.cmd("HLEN").arg(k_members(n)).cmd("GET").arg(k_seq(n));
        }
        let v: Vec<Option<u64>> = p.query_async(&mut self.c()).await?;
        Ok(names
            .into_iter()
            .zip(v.chunks(2))
            .map(|(name, c)| pb::RoomInfo {
                name,
                members: c[0].unwrap_or(0),
                seq: c.get(1).copied().flatten().unwrap_or(0),
            })
            .collect())
    }

    /// The rooms a session is in (or was in, kept for its resume).
    pub async fn session_rooms(&self, sid: u64) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = redis::cmd("SMEMBERS")
            .arg(k_sess_rooms(sid))
            .query_async(&mut self.c())
            .await?;
        v.sort();
        Ok(v)
    }

    /// Removes gateway `gw`'s memberships of these sessions (a dead
    /// gateway: its sessions ended).
    pub async fn rooms_sweep(
        &self,
        lim: RoomLimits,
        gw: &str,
        sessions: &[(u64, u64)],
    ) -> Result<usize, StoreError> {
        let mut ops = Vec::new();
        for (sid, uid) in sessions {
            for room in self.session_rooms(*sid).await? {
                ops.push(pb::RoomOp {
                    session_id: *sid,
                    user_id: *uid,
                    room,
                    join: false,
                    keep_for_resume: false,
                });
            }
        }
        self.room_ops(lim, gw, &ops).await
    }

    /// The id of the newest fan-out log entry ("0-0" when empty).
    pub async fn roomlog_tail(&self) -> Result<String, StoreError> {
        let v: redis::Value = redis::cmd("XREVRANGE")
            .arg(K_ROOMLOG)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.c())
            .await?;
        Ok(parse_entries(v)
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id))
    }
}

/// Reads the fan-out log after `after` on a connection of its own (a
/// blocking read would hold a shared one), waiting up to `block_ms`.
pub async fn roomlog_read(
    conn: &mut Conn,
    after: &str,
    block_ms: u64,
    count: usize,
) -> Result<Vec<(String, pb::RoomMessage)>, StoreError> {
    let v: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(K_ROOMLOG)
        .arg(after)
        .query_async(conn)
        .await?;
    // Nil on timeout; else [[key, [[id, fields], …]]] (RESP2) or a map (RESP3).
    let streams = match v {
        redis::Value::Nil => return Ok(Vec::new()),
        redis::Value::Array(s) => s
            .into_iter()
            .filter_map(|kv| match kv {
                redis::Value::Array(mut kv) => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        redis::Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    Ok(streams
        .into_iter()
        .flat_map(entries)
        .filter_map(|(id, f)| {
            let room = match f.get("r") {
                Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok()?,
                _ => return None,
            };
            let seq = match f.get("q") {
                Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok()?,
                _ => return None,
            };
            let m = message(&room, seq, &f);
            Some((id, m))
        })
        .collect())
}
