//! Redis persistence. Redis is the source of truth; replicas keep no state
//! that matters. Key layout (documented in docs/controlplane.md):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{gg}:epoch` | string | random id of this store's lifetime; recreated after a wipe |
//! | `{gg}:rev` | integer | current config revision (only grows within an epoch) |
//! | `{gg}:config` | string | protobuf `ConfigBundle` at `{gg}:rev` |
//! | `{gg}:hist` | hash | `r:<rev>` → protobuf `HistoryRecord`, `b:<rev>` → protobuf bundle |
//! | `{gg}:req:<request_id>` | string | the revision a write with that request id produced (24 h) |
//! | `{gg}:gws` | set | gateway ids seen |
//! | `{gg}:gw:<id>` | hash | one gateway's registration; expires with its lease |
//! | `gg:sb:{<bucket(sid)>}` | hash | session ownership: session id → `epoch|user|gw` |
//! | `gg:ub:{<bucket(uid)>}` | hash | user index: `<uid>:<sid>` → `epoch|gw` |
//! | `gg:gs:{<gw>}:<n>` | set | session ids owned by a gateway, in 64 intset sub-sets (swept when its lease expires) |
//!
//! Config keys share the `{gg}` hash tag, so one Lua script writes rule,
//! revision and history atomically even on Redis Cluster. Directory entries are
//! fields of bucket hashes (65,536 buckets each for sessions and users), so
//! a million sessions cost no million keys: a bucket of up to 128 fields is
//! one compact listpack. Buckets spread over the cluster by their tag; a
//! batch's entries go through one script call per 128 (per slot on a
//! Cluster), pipelined.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use gg_proto::pb::controlplane as pb;

pub mod rooms;
pub use rooms::RoomLimits;

pub const K_EPOCH: &str = "{gg}:epoch";
pub const K_REV: &str = "{gg}:rev";
/// Presence history (a Redis stream), trimmed to about [`PRESENCE_KEEP`].
pub const K_PRESENCE: &str = "{gg}:presence";
pub const PRESENCE_KEEP: u64 = 100_000;
pub const K_CONFIG: &str = "{gg}:config";
pub const K_HIST: &str = "{gg}:hist";
pub const K_GWS: &str = "{gg}:gws";
pub const CHANNEL: &str = "{gg}:changes";

fn k_gw(id: &str) -> String {
    format!("{{gg}}:gw:{id}")
}
/// Buckets per directory index (a power of two).
const DIR_BUCKETS: u64 = 1 << 16;

/// The bucket of an id. Mixed first (Fibonacci hashing): session ids are a
/// random per-gateway prefix over a counter, so their low bits alone would
/// put every gateway's first sessions into the same few buckets.
fn bucket(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - DIR_BUCKETS.trailing_zeros())
}

fn k_sess(sid: u64) -> String {
    format!("gg:sb:{{{}}}", bucket(sid))
}
fn k_user(uid: u64) -> String {
    format!("gg:ub:{{{}}}", bucket(uid))
}
/// A user's entry in its bucket: `<uid>:<sid>`.
fn user_field(uid: u64, sid: u64) -> String {
    format!("{uid}:{sid}")
}

/// A session entry's value `epoch|user|gw` as (user, gw, epoch).
fn parse_session_entry(v: &str) -> Option<(u64, String, u64)> {
    let (epoch, rest) = v.split_once('|')?;
    let (user, gw) = rest.split_once('|')?;
    Some((user.parse().ok()?, gw.to_string(), epoch.parse().ok()?))
}
/// Sub-sets of a gateway's session set. Members are session ids read as
/// signed 64-bit integers, so each sub-set stays a compact intset (8 B a
/// member) up to Redis's `set-max-intset-entries` (512 by default): 32,768
/// sessions per gateway before a sub-set turns into a hash table.
const GW_SETS: u64 = 64;

/// Which sub-set of its gateway's session set a session id is in.
fn gw_set_of(sid: u64) -> u64 {
    sid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - GW_SETS.trailing_zeros())
}
/// A session id as a member of a gateway set (the same 64 bits, signed, so
/// Redis stores it as an integer).
fn gw_set_member(sid: u64) -> i64 {
    sid as i64
}
fn k_gwsess(gw: &str, sub: u64) -> String {
    format!("gg:gs:{{{gw}}}:{sub}")
}
/// The gateway set as one key, before the sub-sets (still read and deleted
/// by the sweep, so an upgrade loses no dead gateway's sessions).
fn k_gwsess_legacy(gw: &str) -> String {
    format!("gg:gs:{{{gw}}}")
}

/// Directory entries per script call: bounds how long one call holds Redis
/// (about 2 µs an entry).
const DIR_SCRIPT_ENTRIES: usize = 128;

/// One ownership or user-index entry to write (see `DIR_LUA`).
struct DirEntry {
    key: String,
    kind: &'static str,
    open: bool,
    field: String,
    epoch: u64,
    tail: String,
}

/// History kept (older revisions are trimmed).
pub const HISTORY_KEEP: u64 = 1000;

/// A single-node connection, a Cluster connection, or a connection to the
/// master that Sentinel names (re-resolved after a failover).
#[derive(Clone)]
pub enum ConnKind {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

/// A connection whose every call (command, pipeline, script) is bounded by
/// `redis.timeout_ms`: a Redis that stops answering turns into an error
/// within that, never a hang.
#[derive(Clone)]
pub struct Conn {
    kind: ConnKind,
    timeout: Duration,
}

impl Conn {
    pub fn new(kind: ConnKind, timeout: Duration) -> Conn {
        Conn { kind, timeout }
    }
}

fn timed_out(after: Duration) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer from redis within {} ms (redis.timeout_ms)",
            after.as_millis()
        ),
    ))
}

/// The metric label of a command: its name, from the few this process
/// sends (anything unexpected is `other`, so labels stay bounded).
fn command_label(cmd: &Cmd) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET",
        "SET",
        "DEL",
        "EXISTS",
        "EXPIRE",
        "PEXPIRE",
        "HGET",
        "HSET",
        "HDEL",
        "HGETALL",
        "HMGET",
        "SADD",
        "SREM",
        "SMEMBERS",
        "ZADD",
        "ZREM",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZREMRANGEBYSCORE",
        "INCR",
        "EVAL",
        "EVALSHA",
        "SCRIPT",
        "PING",
        "MGET",
        "SCAN",
        "LRANGE",
        "LPUSH",
        "LTRIM",
        "WATCH",
        "UNWATCH",
        "MULTI",
        "EXEC",
        "INFO",
        "CLIENT",
        "HKEYS",
        "PUBLISH",
        "SSCAN",
        "HSCAN",
        "TTL",
        "PTTL",
        "HINCRBY",
        "XADD",
        "XRANGE",
        "XREVRANGE",
        "XREAD",
        "HLEN",
    ];
    let name = match cmd.args_iter().next() {
        Some(redis::Arg::Simple(b)) => b,
        _ => return "other",
    };
    KNOWN
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("other")
}

/// The master's connection plus the Sentinel client that finds it again.
pub struct SentinelConn {
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    current: std::sync::RwLock<ConnectionManager>,
}

/// Errors after which the master may have moved.
fn failover_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.to_string().contains("READONLY")
}

impl SentinelConn {
    /// Asks the sentinels for the master and connects to it.
    pub async fn connect(
        mut client: redis::sentinel::SentinelClient,
    ) -> redis::RedisResult<SentinelConn> {
        let cm = Self::master(&mut client).await?;
        Ok(SentinelConn {
            client: tokio::sync::Mutex::new(client),
            current: std::sync::RwLock::new(cm),
        })
    }

    async fn master(
        client: &mut redis::sentinel::SentinelClient,
    ) -> redis::RedisResult<ConnectionManager> {
        let master = client.async_get_client().await?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        ConnectionManager::new_with_config(master, cfg).await
    }

    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finds the (possibly new) master and makes it current.
    async fn reresolve(&self) -> redis::RedisResult<ConnectionManager> {
        let mut client = self.client.lock().await;
        let cm = Self::master(&mut client).await?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cm.clone();
        tracing::warn!("redis master re-resolved through sentinel");
        Ok(cm)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let t = self.timeout;
        let call: RedisFuture<'a, Value> = match &mut self.kind {
            ConnKind::Single(c) => c.req_packed_command(cmd),
            ConnKind::Cluster(c) => c.req_packed_command(cmd),
            ConnKind::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    match s.current().req_packed_command(cmd).await {
                        Err(e) if failover_error(&e) => {
                            s.reresolve().await?.req_packed_command(cmd).await
                        }
                        other => other,
                    }
                })
            }
        };
        let label = command_label(cmd);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = tokio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err(timed_out(t)));
            (crate::REDIS_SECONDS)
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let t = self.timeout;
        let call: RedisFuture<'a, Vec<Value>> = match &mut self.kind {
            ConnKind::Single(c) => c.req_packed_commands(p, offset, count),
            ConnKind::Cluster(c) => c.req_packed_commands(p, offset, count),
            ConnKind::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    match s.current().req_packed_commands(p, offset, count).await {
                        Err(e) if failover_error(&e) => {
                            s.reresolve()
                                .await?
                                .req_packed_commands(p, offset, count)
                                .await
                        }
                        other => other,
                    }
                })
            }
        };
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = tokio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err(timed_out(t)));
            (crate::REDIS_SECONDS)
                .with_label_values(&["pipeline"])
                .observe(started.elapsed().as_secs_f64());
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            ConnKind::Single(c) => c.get_db(),
            ConnKind::Cluster(c) => c.get_db(),
            ConnKind::Sentinel(s) => s.current().get_db(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("revision conflict: expected {expected}, current is {current}")]
    Conflict { expected: u64, current: u64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What a config write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub revision: u64,
    pub epoch: String,
    /// The request id had already been applied: `revision` is the one that
    /// write produced, and nothing was written now.
    pub replayed: bool,
}

fn k_req(id: &str) -> String {
    format!("{{gg}}:req:{id}")
}

/// The configuration half of the store: what [`crate::api`]'s writes and
/// reads need. Redis in production ([`Store`]); an in-memory
/// implementation backs the unit tests of the write path.
#[tonic::async_trait]
pub trait ConfigStore: Send + Sync {
    /// The current versioned bundle.
    async fn load(&self) -> Result<pb::Versioned, StoreError>;
    /// Writes a new revision if the current one is `expected` (CAS). With a
    /// non-empty `request_id`, at most once: a repeat answers the revision
    /// the first write produced, `replayed`.
    async fn write(
        &self,
        expected: u64,
        bundle: &pb::ConfigBundle,
        record: &pb::HistoryRecord,
        request_id: &str,
    ) -> Result<Written, StoreError>;
    /// The revision a write with this request id produced, if any.
    async fn applied(&self, request_id: &str) -> Result<Option<u64>, StoreError>;
    /// History records, newest first.
    async fn history(&self, limit: usize) -> Result<Vec<pb::HistoryRecord>, StoreError>;
}

// Atomic config write: CAS on the revision, then config + revision +
// history together, then a pub/sub nudge. Creates the epoch if missing.
const WRITE_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[1], epoch)
end
if ARGV[7] ~= '' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {'DUP', prev, epoch} end
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local expected = tonumber(ARGV[1])
if expected >= 0 and cur ~= expected then
  return {'CAS', tostring(cur), epoch}
end
local rev = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], 'r:' .. rev, ARGV[3], 'b:' .. rev, ARGV[2])
local keep = tonumber(ARGV[4])
if rev > keep then
  redis.call('HDEL', KEYS[4], 'r:' .. (rev - keep), 'b:' .. (rev - keep))
end
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[5], tostring(rev), 'EX', 86400)
end
redis.call('PUBLISH', ARGV[6], tostring(rev))
return {'OK', tostring(rev), epoch}
"#;

// Ownership writes for directory entries, in order. ARGV[1] is the
// reporting gateway; then six per entry: key index, kind (`s` a session
// entry `epoch|user|gw`, `u` a user index entry `epoch|gw`), `1` open or
// `0` close, field, epoch, the value after the epoch. A stale owner (older
// epoch) cannot overwrite a newer one; a close removes only an entry this
// gateway owns. A new entry costs one HSETNX; an existing one is compared
// by epoch (first: a plain `find` parses it). One call carries
// many entries, so the script's own cost is paid once per call. The keys
// are declared (KEYS, one slot), or, for a call that spans the slots of one
// Cluster node, passed after the gateway id as a count and the names.
const DIR_LUA: &str = r#"
local gw = ARGV[1]
local keys, first = KEYS, 2
if #KEYS == 0 then
  local nk = tonumber(ARGV[2])
  keys = {}
  for j = 1, nk do keys[j] = ARGV[2 + j] end
  first = 3 + nk
end
local n = 0
for i = first, #ARGV, 6 do
  local k = keys[tonumber(ARGV[i])]
  local f = ARGV[i + 3]
  if ARGV[i + 2] == '1' then
    local nv = ARGV[i + 4] .. '|' .. ARGV[i + 5]
    if redis.call('HSETNX', k, f, nv) == 1 then
      n = n + 1
    else
      local v = redis.call('HGET', k, f)
      if tonumber(string.sub(v, 1, string.find(v, '|', 1, true) - 1)) <= tonumber(ARGV[i + 4]) then
        redis.call('HSET', k, f, nv)
        n = n + 1
      end
    end
  else
    local v = redis.call('HGET', k, f)
    if v then
      local a = string.find(v, '|', 1, true)
      if ARGV[i + 1] == 's' then a = string.find(v, '|', a + 1, true) end
      if string.sub(v, a + 1) == gw then
        redis.call('HDEL', k, f)
        n = n + 1
      end
    end
  end
end
return n
"#;

/// `XRANGE` replies: `[[id, [field, value, …]], …]`.
fn parse_entries(v: redis::Value) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let redis::Value::Array(parts) = e else {
                return None;
            };
            let id = text(parts.first()?);
            let redis::Value::Array(kv) = parts.get(1)? else {
                return None;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|c| Some((text(c.first()?), text(c.get(1)?))))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// `EVALSHA` of a script with these keys and arguments, so it can go into a
/// pipeline.
fn evalsha_keys<A: redis::ToRedisArgs>(script: &Script, keys: &[&str], args: &[A]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    for a in args {
        c.arg(a);
    }
    c
}

pub struct Store {
    conn: Conn,
    write: Script,
    dir: Script,
    rooms: rooms::RoomScripts,
    /// On a Cluster: which node serves which slots, for per-node pipelines
    /// of directory batches; refreshed when a batch meets a moved slot.
    slots: parking_lot::Mutex<Option<Arc<SlotMap>>>,
}

/// `CLUSTER SLOTS`: (first slot, last slot, primary host, port).
struct SlotMap(Vec<(u16, u16, String, u16)>);

impl SlotMap {
    fn parse(v: &Value) -> Option<SlotMap> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let int = |v: &Value| match v {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        let Value::Array(ranges) = v else { return None };
        let mut out = Vec::new();
        for r in ranges {
            let Value::Array(parts) = r else { return None };
            let Value::Array(primary) = parts.get(2)? else {
                return None;
            };
            out.push((
                int(parts.first()?)?,
                int(parts.get(1)?)?,
                text(primary.first()?)?,
                int(primary.get(1)?)?,
            ));
        }
        Some(SlotMap(out))
    }

    fn node(&self, slot: u16) -> Option<(&str, u16)> {
        self.0
            .iter()
            .find(|(a, b, _, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, h, p)| (h.as_str(), *p))
    }
}

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag (or of
/// the whole key) mod 16384.
fn cluster_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|s| {
        let rest = &key[s + 1..];
        let e = rest.iter().position(|&b| b == b'}')?;
        (e > 0).then(|| &rest[..e])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[tonic::async_trait]
impl ConfigStore for Store {
    /// Read in one MULTI so revision and bundle match; revision 0 and an
    /// empty bundle when nothing was written in this epoch.
    async fn load(&self) -> Result<pb::Versioned, StoreError> {
        let (rev, epoch, bytes): (Option<u64>, Option<String>, Option<Vec<u8>>) = redis::pipe()
            .atomic()
            .get(K_REV)
            .get(K_EPOCH)
            .get(K_CONFIG)
            .query_async(&mut self.c())
            .await?;
        let bundle = match bytes {
            Some(b) => pb::ConfigBundle::decode(&b[..])
                .map_err(|e| StoreError::Corrupt(format!("{K_CONFIG}: {e}")))?,
            None => pb::ConfigBundle::default(),
        };
        Ok(pb::Versioned {
            revision: rev.unwrap_or(0),
            epoch: epoch.unwrap_or_default(),
            bundle: Some(bundle),
        })
    }

    async fn write(
        &self,
        expected: u64,
        bundle: &pb::ConfigBundle,
        record: &pb::HistoryRecord,
        request_id: &str,
    ) -> Result<Written, StoreError> {
        let fresh_epoch = uuid::Uuid::new_v4().to_string();
        let (status, rev, epoch): (String, String, String) = self
            .write
            .key(K_EPOCH)
            .key(K_REV)
            .key(K_CONFIG)
            .key(K_HIST)
            .key(k_req(request_id))
            .arg(expected as i64)
            .arg(bundle.encode_to_vec())
            .arg(record.encode_to_vec())
            .arg(HISTORY_KEEP)
            .arg(fresh_epoch)
            .arg(CHANNEL)
            .arg(request_id)
            .invoke_async(&mut self.c())
            .await?;
        let revision: u64 = rev
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{K_REV}: {rev}")))?;
        match status.as_str() {
            "CAS" => Err(StoreError::Conflict {
                expected,
                current: revision,
            }),
            replay => Ok(Written {
                revision,
                epoch,
                replayed: replay == "DUP",
            }),
        }
    }

    async fn applied(&self, request_id: &str) -> Result<Option<u64>, StoreError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let rev: Option<u64> = redis::cmd("GET")
            .arg(k_req(request_id))
            .query_async(&mut self.c())
            .await?;
        Ok(rev)
    }

    async fn history(&self, limit: usize) -> Result<Vec<pb::HistoryRecord>, StoreError> {
        let (rev, _) = self.head().await?;
        let first = rev.saturating_sub(limit as u64 - 1).max(1);
        if rev == 0 {
            return Ok(Vec::new());
        }
        let revs: Vec<u64> = (first..=rev).rev().collect();
        let mut p = redis::pipe();
        for r in &revs {
            p.hget(K_HIST, format!("r:{r}"));
        }
        let raw: Vec<Option<Vec<u8>>> = p.query_async(&mut self.c()).await?;
        let mut out = Vec::new();
        for (r, b) in revs.into_iter().zip(raw) {
            let Some(b) = b else { continue };
            let mut rec = pb::HistoryRecord::decode(&b[..])
                .map_err(|e| StoreError::Corrupt(format!("history {r}: {e}")))?;
            rec.revision = r;
            out.push(rec);
        }
        Ok(out)
    }
}

/// A gateway's registration as stored.
#[derive(Debug, Clone, Default)]
pub struct GatewayRecord {
    pub id: String,
    pub client_addr: String,
    pub admin_addr: String,
    pub version: String,
    pub state: gg_proto::pb::common::GatewayState,
    pub applied_rev: u64,
    pub applied_epoch: String,
    pub last_error: String,
    pub error_rev: u64,
    pub sessions: u64,
    pub last_seen_ms: u64,
    pub connected_to: String,
    pub region: String,
}

impl Store {
    pub fn new(conn: Conn) -> Store {
        Store {
            conn,
            write: Script::new(WRITE_LUA),
            dir: Script::new(DIR_LUA),
            rooms: rooms::RoomScripts::new(),
            slots: parking_lot::Mutex::new(None),
        }
    }

    fn c(&self) -> Conn {
        self.conn.clone()
    }

    /// `PING`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.c()).await?;
        Ok(())
    }

    /// Current (revision, epoch) without the bundle; epoch is empty when the
    /// store has never been written (or was wiped).
    pub async fn head(&self) -> Result<(u64, String), StoreError> {
        let (rev, epoch): (Option<u64>, Option<String>) = redis::pipe()
            .get(K_REV)
            .get(K_EPOCH)
            .query_async(&mut self.c())
            .await?;
        Ok((rev.unwrap_or(0), epoch.unwrap_or_default()))
    }

    /// Makes sure an epoch exists (SET NX), so every replica agrees on it
    /// after a wipe; returns it.
    pub async fn ensure_epoch(&self) -> Result<String, StoreError> {
        let fresh = uuid::Uuid::new_v4().to_string();
        let _: Option<String> = redis::cmd("SET")
            .arg(K_EPOCH)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut self.c())
            .await?;
        let epoch: Option<String> = redis::cmd("GET")
            .arg(K_EPOCH)
            .query_async(&mut self.c())
            .await?;
        Ok(epoch.unwrap_or(fresh))
    }

    /// The bundle stored for one revision, if still in history.
    pub async fn bundle_at(&self, rev: u64) -> Result<Option<pb::ConfigBundle>, StoreError> {
        let b: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(K_HIST)
            .arg(format!("b:{rev}"))
            .query_async(&mut self.c())
            .await?;
        b.map(|b| {
            pb::ConfigBundle::decode(&b[..])
                .map_err(|e| StoreError::Corrupt(format!("history bundle {rev}: {e}")))
        })
        .transpose()
    }

    // ---------- fleet ----------

    /// Registers or refreshes a gateway; `fields` are written, the lease is renewed.
    pub async fn gateway_update(
        &self,
        id: &str,
        fields: &[(&str, String)],
        lease: Duration,
    ) -> Result<(), StoreError> {
        let key = k_gw(id);
        let mut p = redis::pipe();
        if !fields.is_empty() {
            p.hset_multiple(&key, fields).ignore();
        }
        p.pexpire(&key, lease.as_millis() as i64).ignore();
        p.sadd(K_GWS, id).ignore();
        p.query_async::<()>(&mut self.c()).await?;
        Ok(())
    }

    /// Every gateway whose lease is alive; ids whose lease expired are returned separately.
    pub async fn gateways(&self) -> Result<(Vec<GatewayRecord>, Vec<String>), StoreError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(K_GWS)
            .query_async(&mut self.c())
            .await?;
        if ids.is_empty() {
            // An empty fleet (a pipeline of no commands is an error).
            return Ok((Vec::new(), Vec::new()));
        }
        let mut p = redis::pipe();
        for id in &ids {
            p.hgetall(k_gw(id));
        }
        let maps: Vec<std::collections::HashMap<String, String>> =
            p.query_async(&mut self.c()).await?;
        let (mut alive, mut dead) = (Vec::new(), Vec::new());
        for (id, m) in ids.into_iter().zip(maps) {
            if m.is_empty() {
                dead.push(id);
                continue;
            }
            let get = |k: &str| m.get(k).cloned().unwrap_or_default();
            let num = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            alive.push(GatewayRecord {
                client_addr: get("client_addr"),
                admin_addr: get("admin_addr"),
                version: get("version"),
                state: gg_proto::pb::common::GatewayState::from_str_name(&get("state"))
                    .unwrap_or_default(),
                applied_rev: num("applied_rev"),
                applied_epoch: get("applied_epoch"),
                last_error: get("last_error"),
                error_rev: num("error_rev"),
                sessions: num("sessions"),
                last_seen_ms: num("last_seen_ms"),
                connected_to: get("connected_to"),
                region: get("region"),
                id,
            });
        }
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((alive, dead))
    }

    /// A live gateway's admin address (`None` when its lease expired).
    pub async fn gateway_admin_addr(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.gateway_contact(id).await?.map(|(admin, _)| admin))
    }

    /// A live gateway's admin address and region (`None`: lease expired).
    pub async fn gateway_contact(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let alive: (u64, Option<String>, Option<String>) = redis::pipe()
            .exists(k_gw(id))
            .hget(k_gw(id), "admin_addr")
            .hget(k_gw(id), "region")
            .query_async(&mut self.c())
            .await?;
        Ok((alive.0 == 1).then(|| (alive.1.unwrap_or_default(), alive.2.unwrap_or_default())))
    }

    /// Whether a gateway's lease is alive.
    pub async fn gateway_alive(&self, id: &str) -> Result<bool, StoreError> {
        let n: u64 = redis::cmd("EXISTS")
            .arg(k_gw(id))
            .query_async(&mut self.c())
            .await?;
        Ok(n == 1)
    }

    /// Removes a dead gateway, every session it still owns and their room
    /// memberships.
    pub async fn sweep_gateway(&self, id: &str, rooms: RoomLimits) -> Result<usize, StoreError> {
        // All of a gateway's sets share its tag: one slot, one pipeline.
        let mut keys: Vec<String> = (0..GW_SETS).map(|b| k_gwsess(id, b)).collect();
        keys.push(k_gwsess_legacy(id));
        let mut p = redis::pipe();
        for k in &keys {
            p.cmd("SMEMBERS").arg(k);
        }
        let sets: Vec<Vec<String>> = p.query_async(&mut self.c()).await?;
        // Members are signed (sub-sets) or unsigned (the legacy set).
        let mut sids: Vec<u64> = sets
            .iter()
            .flatten()
            .filter_map(|m| {
                m.parse::<u64>()
                    .ok()
                    .or_else(|| m.parse::<i64>().ok().map(|v| v as u64))
            })
            .collect();
        sids.sort_unstable();
        sids.dedup();
        // Users are not known here: read them from the session entries.
        let entries = self.sessions(&sids).await?;
        let events: Vec<pb::SessionEvent> = sids
            .iter()
            .zip(entries)
            .map(|(sid, entry)| pb::SessionEvent {
                session_id: *sid,
                user_id: entry.map(|e| e.0).unwrap_or(0),
                open: false,
                epoch: 0,
                realm_id: 0,
                resumed: false,
            })
            .collect();
        for chunk in events.chunks(500) {
            self.sessions_apply(id, chunk).await?;
        }
        let owned: Vec<(u64, u64)> = events.iter().map(|e| (e.session_id, e.user_id)).collect();
        self.rooms_sweep(rooms, id, &owned).await?;
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut self.c())
            .await?;
        let _: () = redis::cmd("SREM")
            .arg(K_GWS)
            .arg(id)
            .query_async(&mut self.c())
            .await?;
        Ok(sids.len())
    }

    // ---------- directory ----------

    /// Applies a batch of session events from gateway `gw` as few Redis
    /// commands as the topology allows: the ownership and user-index
    /// entries go through the directory script, many entries per call (on
    /// a Cluster, one call per slot, since a script's keys must share one);
    /// the gateway's session set gets one `SADD`/`SREM` per sub-set and run
    /// of opens or closes; presence one `XADD` per event. All of it is one
    /// pipeline (one per primary on a Cluster). Returns the number of Redis
    /// commands sent.
    pub async fn sessions_apply(
        &self,
        gw: &str,
        events: &[pb::SessionEvent],
    ) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let cluster = matches!(self.conn.kind, ConnKind::Cluster(_));
        let mut cmds: Vec<(u16, Cmd)> = Vec::new();
        let mut groups: std::collections::BTreeMap<u16, Vec<DirEntry>> = Default::default();
        let mut add = |e: DirEntry| {
            let group = if cluster {
                cluster_slot(e.key.as_bytes())
            } else {
                0
            };
            groups.entry(group).or_default().push(e);
        };
        for e in events {
            add(DirEntry {
                key: k_sess(e.session_id),
                kind: "s",
                open: e.open,
                field: e.session_id.to_string(),
                epoch: e.epoch,
                tail: format!("{}|{gw}", e.user_id),
            });
            if e.user_id != 0 {
                add(DirEntry {
                    key: k_user(e.user_id),
                    kind: "u",
                    open: e.open,
                    field: user_field(e.user_id, e.session_id),
                    epoch: e.epoch,
                    tail: gw.to_string(),
                });
            }
        }
        // On a Cluster, first try one call per node and 128 entries (keys of
        // many slots, undeclared); per slot is the fallback.
        let per_node = match &self.conn.kind {
            ConnKind::Cluster(_) => self.per_node_dir_calls(gw, &groups).await,
            _ => None,
        };
        for (slot, entries) in &groups {
            for chunk in entries.chunks(DIR_SCRIPT_ENTRIES) {
                cmds.push((*slot, self.dir_call(gw, chunk, true)));
            }
        }
        let n_dir = cmds.len();
        // The gateway's session set: one command per sub-set for each run
        // of opens (or closes), so an open and a close of one session in the
        // same batch still end in the right order.
        let mut run: std::collections::BTreeMap<u64, Vec<i64>> = Default::default();
        let mut flush = |open: bool, run: &mut std::collections::BTreeMap<u64, Vec<i64>>| {
            for (sub, members) in std::mem::take(run) {
                let key = k_gwsess(gw, sub);
                let mut c = redis::cmd(if open { "SADD" } else { "SREM" });
                c.arg(&key).arg(members);
                cmds.push((cluster_slot(key.as_bytes()), c));
            }
        };
        for (i, e) in events.iter().enumerate() {
            if i > 0 && e.open != events[i - 1].open {
                flush(events[i - 1].open, &mut run);
            }
            run.entry(gw_set_of(e.session_id))
                .or_default()
                .push(gw_set_member(e.session_id));
        }
        flush(events[events.len() - 1].open, &mut run);
        let presence_slot = cluster_slot(K_PRESENCE.as_bytes());
        for e in events {
            let mut x = redis::cmd("XADD");
            x.arg(K_PRESENCE)
                .arg("MAXLEN")
                .arg("~")
                .arg(PRESENCE_KEEP)
                .arg("*")
                .arg("s")
                .arg(e.session_id)
                .arg("u")
                .arg(e.user_id)
                .arg("r")
                .arg(e.realm_id)
                .arg("g")
                .arg(gw)
                .arg("o")
                .arg(match (e.open, e.resumed) {
                    (true, false) => 1u8,
                    (true, true) => 3,
                    (false, _) => 0,
                })
                .arg("e")
                .arg(e.epoch);
            cmds.push((presence_slot, x));
        }
        if let (Some(mut node_cmds), ConnKind::Cluster(cluster)) = (per_node, &self.conn.kind) {
            // The set and presence commands as they are.
            node_cmds.extend(cmds.iter().skip(n_dir).cloned());
            if self.send_per_node(cluster, &node_cmds).await {
                return Ok(node_cmds.len());
            }
            // A slot moved, or the script is not loaded there: per slot.
            let _ = self.load_dir_script().await;
        }
        match self.send_all(&cmds).await {
            Err(StoreError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted or failed over: load the script, retry once.
                self.load_dir_script().await?;
                self.send_all(&cmds).await?;
            }
            other => other?,
        }
        Ok(cmds.len())
    }

    /// The directory calls of a batch grouped by Cluster node (by the slot
    /// map), each tagged with a slot of its node; `None` without a map.
    async fn per_node_dir_calls(
        &self,
        gw: &str,
        groups: &std::collections::BTreeMap<u16, Vec<DirEntry>>,
    ) -> Option<Vec<(u16, Cmd)>> {
        let map = self.slot_map().await?;
        let mut by_node: std::collections::HashMap<(&str, u16), (u16, Vec<&DirEntry>)> =
            std::collections::HashMap::new();
        for (slot, entries) in groups {
            let node = map.node(*slot)?;
            by_node
                .entry(node)
                .or_insert_with(|| (*slot, Vec::new()))
                .1
                .extend(entries);
        }
        let mut out = Vec::new();
        for (slot, entries) in by_node.into_values() {
            for chunk in entries.chunks(DIR_SCRIPT_ENTRIES) {
                out.push((slot, self.dir_call(gw, chunk, false)));
            }
        }
        Some(out)
    }

    /// Loads the directory script on every primary (a Cluster) or the one
    /// node.
    async fn load_dir_script(&self) -> Result<(), StoreError> {
        if let ConnKind::Cluster(cluster) = &self.conn.kind {
            let mut c = redis::cmd("SCRIPT");
            c.arg("LOAD").arg(DIR_LUA);
            let route = redis::cluster_routing::RoutingInfo::MultiNode((
                redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                None,
            ));
            cluster.clone().route_command(c, route).await?;
            return Ok(());
        }
        self.dir.load_async(&mut self.c()).await?;
        Ok(())
    }

    /// One directory script call: keys declared when they share a slot
    /// (`declared`), else passed as arguments (one Cluster node's slots).
    fn dir_call<E: std::borrow::Borrow<DirEntry>>(
        &self,
        gw: &str,
        entries: &[E],
        declared: bool,
    ) -> Cmd {
        let mut keys: Vec<&str> = Vec::new();
        let mut args: Vec<String> = Vec::with_capacity(1 + entries.len() * 6);
        args.push(gw.to_string());
        for e in entries {
            let e = e.borrow();
            let idx = match keys.iter().position(|k| *k == e.key) {
                Some(i) => i,
                None => {
                    keys.push(&e.key);
                    keys.len() - 1
                }
            };
            args.push((idx + 1).to_string());
            args.push(e.kind.to_string());
            args.push(if e.open { "1" } else { "0" }.to_string());
            args.push(e.field.clone());
            args.push(e.epoch.to_string());
            args.push(if e.open {
                e.tail.clone()
            } else {
                String::new()
            });
        }
        if declared {
            return evalsha_keys(&self.dir, &keys, &args);
        }
        let mut all: Vec<String> = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(args[0].clone());
        all.push(keys.len().to_string());
        all.extend(keys.iter().map(|k| k.to_string()));
        all.extend(args.into_iter().skip(1));
        evalsha_keys(&self.dir, &[], &all)
    }

    /// Sends a batch: one pipeline on a single node; on a Cluster one
    /// pipeline per primary (by the slot map), or, when the map is stale
    /// or unknown, every command on its own. Every command in a batch is
    /// safe to send twice (the scripts are idempotent, presence is at least
    /// once), so a per-node attempt that fails is simply sent again.
    async fn send_all(&self, cmds: &[(u16, Cmd)]) -> Result<(), StoreError> {
        match &self.conn.kind {
            ConnKind::Single(_) | ConnKind::Sentinel(_) => {
                let mut p = redis::pipe();
                for (_, c) in cmds {
                    p.add_command(c.clone()).ignore();
                }
                p.query_async::<()>(&mut self.c()).await?;
            }
            ConnKind::Cluster(cluster) => {
                if self.send_per_node(cluster, cmds).await {
                    return Ok(());
                }
                let futs = cmds.iter().map(|(_, c)| {
                    let mut conn = self.c();
                    async move { c.query_async::<redis::Value>(&mut conn).await }
                });
                for r in futures_util::future::join_all(futs).await {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// The cached slot map, fetched (`CLUSTER SLOTS`) when there is none.
    async fn slot_map(&self) -> Option<Arc<SlotMap>> {
        if let Some(m) = self.slots.lock().clone() {
            return Some(m);
        }
        let v = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut self.c())
            .await;
        let m = Arc::new(SlotMap::parse(v.as_ref().ok()?)?);
        *self.slots.lock() = Some(m.clone());
        Some(m)
    }

    /// One pipeline per primary; false (and the slot map forgotten) when
    /// any of it failed or the map could not be had.
    async fn send_per_node(&self, cluster: &ClusterConnection, cmds: &[(u16, Cmd)]) -> bool {
        let Some(map) = self.slot_map().await else {
            return false;
        };
        let mut by_node: std::collections::HashMap<(&str, u16), (redis::Pipeline, usize)> =
            std::collections::HashMap::new();
        for (slot, c) in cmds {
            let Some(node) = map.node(*slot) else {
                *self.slots.lock() = None;
                return false;
            };
            let (p, n) = by_node.entry(node).or_insert_with(|| (redis::pipe(), 0));
            p.add_command(c.clone());
            *n += 1;
        }
        let futs = by_node.into_iter().map(|((host, port), (p, n))| {
            let mut conn = cluster.clone();
            let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.to_string(),
                port,
            };
            let timeout = self.conn.timeout;
            async move { tokio::time::timeout(timeout, conn.route_pipeline(p, 0, n, route)).await }
        });
        let ok = futures_util::future::join_all(futs).await.into_iter().all(|r| {
            matches!(r, Ok(Ok(values)) if !values.iter().any(|v| matches!(v, Value::ServerError(_))))
        });
        if !ok {
            *self.slots.lock() = None;
        }
        ok
    }

    /// The owners of many sessions, in order: one pipeline per 1,000 on one
    /// node; on a Cluster, where they live in different slots, each read on
    /// its own (the multiplexed connection pipelines them).
    pub async fn sessions(
        &self,
        sids: &[u64],
    ) -> Result<Vec<Option<(u64, String, u64)>>, StoreError> {
        let mut out = Vec::with_capacity(sids.len());
        for chunk in sids.chunks(1000) {
            let values: Vec<Option<String>> = match &self.conn.kind {
                ConnKind::Cluster(_) => {
                    let reads = chunk.iter().map(|sid| {
                        let mut conn = self.c();
                        async move {
                            redis::cmd("HGET")
                                .arg(k_sess(*sid))
                                .arg(sid)
                                .query_async::<Option<String>>(&mut conn)
                                .await
                        }
                    });
                    futures_util::future::join_all(reads)
                        .await
                        .into_iter()
                        .collect::<Result<_, _>>()?
                }
                _ => {
                    let mut p = redis::pipe();
                    for sid in chunk {
                        p.cmd("HGET").arg(k_sess(*sid)).arg(sid);
                    }
                    p.query_async(&mut self.c()).await?
                }
            };
            out.extend(
                values
                    .into_iter()
                    .map(|v| v.as_deref().and_then(parse_session_entry)),
            );
        }
        Ok(out)
    }

    /// The owner of one session: (user, gateway, epoch), if present.
    pub async fn session(&self, sid: u64) -> Result<Option<(u64, String, u64)>, StoreError> {
        let v: Option<String> = redis::cmd("HGET")
            .arg(k_sess(sid))
            .arg(sid)
            .query_async(&mut self.c())
            .await?;
        Ok(v.as_deref().and_then(parse_session_entry))
    }

    /// One user's entries in its index bucket: (session id, `epoch|gw`).
    async fn user_entries(&self, uid: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let prefix = format!("{uid}:");
        let pattern = format!("{uid}:*");
        let key = k_user(uid);
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, kv): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.c())
                .await?;
            for pair in kv.chunks(2) {
                if let [field, value] = pair
                    && let Some(sid) = field.strip_prefix(&prefix).and_then(|s| s.parse().ok())
                {
                    out.push((sid, value.clone()));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // HSCAN may return an entry twice while the hash is rehashed.
        out.sort_unstable_by_key(|e| e.0);
        out.dedup_by_key(|e| e.0);
        Ok(out)
    }

    /// One user's sessions from the index: (session id, gateway, epoch).
    /// Callers check that the gateway is alive.
    pub async fn user_session_list(&self, uid: u64) -> Result<Vec<(u64, String, u64)>, StoreError> {
        Ok(self
            .user_entries(uid)
            .await?
            .into_iter()
            .filter_map(|(sid, v)| {
                let (ep, gw) = v.split_once('|')?;
                Some((sid, gw.to_string(), ep.parse().unwrap_or(0)))
            })
            .collect())
    }

    /// Presence events after stream id `after` (at most `count`), with
    /// their ids.
    pub async fn presence_after(
        &self,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, std::collections::HashMap<String, String>)>, StoreError> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(K_PRESENCE)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.c())
            .await?;
        Ok(parse_entries(v))
    }

    /// The first and last ids of the presence stream (None when empty).
    pub async fn presence_bounds(&self) -> Result<Option<(String, String)>, StoreError> {
        let first: redis::Value = redis::cmd("XRANGE")
            .arg(K_PRESENCE)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.c())
            .await?;
        let last: redis::Value = redis::cmd("XREVRANGE")
            .arg(K_PRESENCE)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.c())
            .await?;
        let (f, l) = (parse_entries(first), parse_entries(last));
        Ok(match (f.into_iter().next(), l.into_iter().next()) {
            (Some((a, _)), Some((b, _))) => Some((a, b)),
            _ => None,
        })
    }

    /// Session ids of one user from the index (callers re-check ownership).
    pub async fn user_sessions(&self, uid: u64) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .user_entries(uid)
            .await?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_parse_and_bucket() {
        assert_eq!(
            parse_session_entry("7|42|gw-a"),
            Some((42, "gw-a".to_string(), 7))
        );
        // The gateway id is everything after the second `|`.
        assert_eq!(
            parse_session_entry("7|42|odd|id"),
            Some((42, "odd|id".to_string(), 7))
        );
        assert_eq!(parse_session_entry("7|42"), None);
        assert_eq!(parse_session_entry("1|x|gw"), None);
        assert_eq!(user_field(9, 1234), "9:1234");
        // Redis Cluster's own examples.
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(cluster_slot(b"123456789"), 0x31C3);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"{user1000}.followers")
        );
        // An empty first tag means the whole key is hashed.
        assert_ne!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"bar"));
        assert!(k_user(9).starts_with("gg:ub:{"));
        // Session ids of many gateways (random prefix, counter from 1)
        // spread over the buckets instead of piling into the first few.
        let mut used = std::collections::HashSet::new();
        for gw in 0..64u64 {
            let prefix = (gw.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1) << 32;
            for n in 1..=512u64 {
                let b = bucket(prefix | n);
                assert!(b < DIR_BUCKETS);
                used.insert(b);
            }
        }
        // 32,768 ids into 65,536 buckets: about 22,000 distinct if uniform.
        assert!(used.len() > 18_000, "{} buckets used", used.len());
    }
}
