//! Presence events (`SessionDirectory.Watch`): every session open, resume
//! and close the gateways report, and every room join and leave, is appended to a Redis stream (`{gg}:presence`, about
//! 100,000 kept) in the same round trip as the directory write. A watcher
//! reads it from a cursor — the stream id of the last event it got — in
//! batches, so reconnecting with the last cursor misses nothing that is
//! still kept, and a cursor older than that is answered with `gap`.
//!
//! The stream is polled (`XRANGE` after the cursor, every 100 ms when idle)
//! rather than read with a blocking `XREAD`: a blocking call would hold the
//! replica's shared Redis connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gg_proto::pb::controlplane as pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::debug;

use crate::Cp;

/// Events per batch.
const BATCH: usize = 500;
/// Poll interval while there is nothing new.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// `ms-seq` stream ids, compared as numbers.
fn id_key(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(crate) async fn watch(
    cp: Arc<Cp>,
    r: pb::WatchRequest,
) -> Result<mpsc::Receiver<Result<pb::WatchBatch, Status>>, Status> {
    let bounds = cp
        .store
        .presence_bounds()
        .await
        .map_err(crate::api::store_status)?;
    let mut gap = false;
    let mut cursor = match r.cursor.as_str() {
        "" => bounds
            .as_ref()
            .map_or("0-0".to_string(), |(_, last)| last.clone()),
        "0" => "0-0".to_string(),
        c => {
            let key = id_key(c).ok_or_else(|| {
                Status::invalid_argument(format!("cursor {c:?} is not one this API returned"))
            })?;
            if let Some((first, _)) = &bounds
                && id_key(first).is_some_and(|f| key < f)
            {
                // Older than what is kept (unless it is the one just before).
                gap = true;
            }
            c.to_string()
        }
    };
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let entries = match cp.store.presence_after(&cursor, BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(crate::api::store_status(e))).await;
                    return;
                }
            };
            let Some((last, _)) = entries.last() else {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            let next = last.clone();
            let events: Vec<pb::PresenceEvent> = entries
                .iter()
                .filter_map(|(_, f)| event(f))
                .filter(|e| keep(&r, e))
                .collect();
            cursor = next;
            if events.is_empty() && !gap {
                continue;
            }
            let batch = pb::WatchBatch {
                events,
                cursor: cursor.clone(),
                gap: std::mem::take(&mut gap),
            };
            if tx.send(Ok(batch)).await.is_err() {
                debug!("presence watcher went away");
                return;
            }
        }
    });
    Ok(rx)
}

fn event(f: &HashMap<String, String>) -> Option<pb::PresenceEvent> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(pb::PresenceEvent {
        session_id: num("s")?,
        user_id: num("u").unwrap_or(0),
        realm_id: u32::try_from(num("r").unwrap_or(0)).unwrap_or(0),
        gateway_id: f.get("g").cloned().unwrap_or_default(),
        kind: match num("o") {
            Some(1) => pb::PresenceKind::Open,
            Some(3) => pb::PresenceKind::Resume,
            Some(4) => pb::PresenceKind::RoomJoin,
            Some(5) => pb::PresenceKind::RoomLeave,
            _ => pb::PresenceKind::Close,
        } as i32,
        epoch: num("e").unwrap_or(0),
        room: f.get("m").cloned().unwrap_or_default(),
    })
}

fn keep(r: &pb::WatchRequest, e: &pb::PresenceEvent) -> bool {
    (r.user_ids.is_empty() || r.user_ids.contains(&e.user_id))
        && (r.realm_ids.is_empty() || r.realm_ids.contains(&e.realm_id))
        && (r.gateway_id.is_empty() || r.gateway_id == e.gateway_id)
        && (r.rooms.is_empty() || r.rooms.contains(&e.room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_compare_as_numbers_and_filters_apply() {
        assert!(id_key("1700000000000-2") > id_key("1700000000000-1"));
        assert!(id_key("999-9") < id_key("1000-0"));
        assert_eq!(id_key("garbage"), None);
        let f: HashMap<String, String> = [
            ("s", "5"),
            ("u", "7"),
            ("r", "2"),
            ("g", "gw"),
            ("o", "1"),
            ("e", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = event(&f).unwrap();
        assert_eq!(
            (e.session_id, e.user_id, e.realm_id, e.kind),
            (5, 7, 2, pb::PresenceKind::Open as i32)
        );
        let by_user = pb::WatchRequest {
            user_ids: vec![8],
            ..Default::default()
        };
        assert!(!keep(&by_user, &e));
        let by_realm = pb::WatchRequest {
            realm_ids: vec![2],
            ..Default::default()
        };
        assert!(keep(&by_realm, &e));
    }
}
