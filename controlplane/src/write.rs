//! The write path of the configuration: read → change → validate → diff →
//! CAS write, retried on a concurrent write, at most once per request id.
//! It runs against any [`ConfigStore`], so it is unit-tested in memory;
//! the process tests run it against Redis.

use std::time::Duration;

use gg_proto::model::Bundle;
use gg_proto::pb::controlplane as pb;
use gg_runtime::clock::now_ms;
use tonic::Status;
use tracing::info;

use crate::store::{ConfigStore, StoreError, Written};

/// What a write asks for beyond the change itself.
pub struct Request<'a> {
    pub author: String,
    pub opts: &'a pb::WriteOptions,
    /// Longest wait for the replica's write lock (another write in flight).
    pub lock_wait: Duration,
}

/// The answer, and the new versioned bundle to publish when one was written.
pub struct Outcome {
    pub response: pb::WriteResponse,
    pub published: Option<pb::Versioned>,
}

/// Maps an error from a read (before anything was sent to be written).
pub fn read_status(e: StoreError) -> Status {
    match e {
        StoreError::Redis(e) => Status::unavailable(format!(
            "redis unavailable ({}); nothing was written, retry later",
            crate::redis_error(&e)
        )),
        other => crate::api::store_status(other),
    }
}

/// Maps an error from the write itself: it was sent, so it may have been
/// applied. The request id makes the retry safe.
fn write_status(e: StoreError, request_id: &str) -> Status {
    match e {
        StoreError::Redis(e) => Status::unavailable(format!(
            "outcome unknown: the write was sent to redis but no answer came ({}); retry with the same request_id ({request_id}) and it is applied at most once",
            crate::redis_error(&e)
        )),
        other => crate::api::store_status(other),
    }
}

/// Runs one write (see the module doc). `lock` serializes this replica's
/// writes; waiting for it is bounded, so writes during an outage fail in
/// parallel instead of queueing behind each other.
pub async fn mutate(
    store: &dyn ConfigStore,
    lock: &tokio::sync::Mutex<()>,
    req: Request<'_>,
    mut change: impl FnMut(&mut pb::ConfigBundle) -> Result<(), Status>,
) -> Result<Outcome, Status> {
    let opts = req.opts;
    let author = if opts.author.is_empty() {
        req.author
    } else {
        opts.author.clone()
    };
    let Ok(_local) = tokio::time::timeout(req.lock_wait, lock.lock()).await else {
        return Err(Status::unavailable(
            "another write is still waiting for redis; nothing was written, retry later",
        ));
    };
    if let Some(rev) = store.applied(&opts.request_id).await.map_err(read_status)? {
        return replayed(store, rev, opts).await;
    }
    for _ in 0..5 {
        let cur = store.load().await.map_err(read_status)?;
        if opts.expected_revision != 0 && opts.expected_revision != cur.revision {
            return Err(Status::failed_precondition(format!(
                "expected revision {}, current is {}; re-read the config and retry",
                opts.expected_revision, cur.revision
            )));
        }
        let (new, response) = prepare(cur, opts, &mut change)?;
        if opts.dry_run || response.unchanged {
            return Ok(Outcome {
                response,
                published: None,
            });
        }
        let record = pb::HistoryRecord {
            revision: 0,
            author: author.clone(),
            at_ms: now_ms(),
            comment: opts.comment.clone(),
            diff: response.diff.clone(),
        };
        match store
            .write(response.revision, &new, &record, &opts.request_id)
            .await
        {
            Ok(Written {
                replayed: true,
                revision,
                ..
            }) => {
                return replayed(store, revision, opts).await;
            }
            Ok(w) => {
                info!(revision = w.revision, %author, changes = response.diff.len(), "config written");
                let published = pb::Versioned {
                    revision: w.revision,
                    epoch: w.epoch.clone(),
                    bundle: Some(new),
                };
                return Ok(Outcome {
                    response: pb::WriteResponse {
                        revision: w.revision,
                        epoch: w.epoch,
                        ..response
                    },
                    published: Some(published),
                });
            }
            // Another replica wrote in between: re-read and re-apply.
            Err(StoreError::Conflict { .. }) if opts.expected_revision == 0 => continue,
            Err(e) => return Err(write_status(e, &opts.request_id)),
        }
    }
    Err(Status::aborted("too many concurrent writes; retry"))
}

/// Applies the change to the current bundle and validates it with the
/// domain model: the bundle to write and the answer (diff) so far.
fn prepare(
    cur: pb::Versioned,
    opts: &pb::WriteOptions,
    change: &mut impl FnMut(&mut pb::ConfigBundle) -> Result<(), Status>,
) -> Result<(pb::ConfigBundle, pb::WriteResponse), Status> {
    let old = cur.bundle.unwrap_or_default();
    let mut new = old.clone();
    change(&mut new)?;
    // The same validation every gateway runs before applying, so what is
    // written here applies.
    let model = Bundle::from_pb(&new).map_err(|e| {
        Status::invalid_argument(format!(
            "invalid config (nothing written):\n  - {}",
            e.0.join("\n  - ")
        ))
    })?;
    // A stored bundle that no longer converts (written by an older
    // contract) diffs as if empty: every item shows as added.
    let diff = Bundle::diff(&Bundle::from_pb(&old).unwrap_or_default(), &model);
    let response = pb::WriteResponse {
        revision: cur.revision,
        epoch: cur.epoch,
        unchanged: diff.is_empty(),
        diff,
        dry_run: opts.dry_run,
        request_id: opts.request_id.clone(),
        replayed: false,
    };
    Ok((model.to_pb(), response))
}

/// The answer to a retry: the revision the first write produced, with its
/// recorded changes; nothing is written again.
async fn replayed(
    store: &dyn ConfigStore,
    revision: u64,
    opts: &pb::WriteOptions,
) -> Result<Outcome, Status> {
    let cur = store.load().await.map_err(read_status)?;
    let diff = store
        .history(cur.revision.saturating_sub(revision) as usize + 1)
        .await
        .map_err(read_status)?
        .into_iter()
        .find(|r| r.revision == revision)
        .map(|r| r.diff)
        .unwrap_or_default();
    Ok(Outcome {
        response: pb::WriteResponse {
            revision,
            epoch: cur.epoch,
            diff,
            dry_run: false,
            unchanged: false,
            request_id: opts.request_id.clone(),
            replayed: true,
        },
        published: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use parking_lot::Mutex;

    use super::*;

    /// The store in memory, with the failures a network adds: a write can
    /// be applied and its answer lost, and another writer can sneak in.
    #[derive(Default)]
    struct MemStore {
        state: Mutex<Mem>,
        /// The next write is applied, then reported as a timeout.
        lose_answer: AtomicBool,
        /// Writes that find a concurrent revision first (CAS conflicts).
        conflicts: AtomicU32,
    }

    #[derive(Default)]
    struct Mem {
        rev: u64,
        bundle: pb::ConfigBundle,
        hist: Vec<pb::HistoryRecord>,
        reqs: HashMap<String, u64>,
    }

    fn timeout() -> StoreError {
        StoreError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer",
        )))
    }

    #[tonic::async_trait]
    impl ConfigStore for MemStore {
        async fn load(&self) -> Result<pb::Versioned, StoreError> {
            let m = self.state.lock();
            Ok(pb::Versioned {
                revision: m.rev,
                epoch: "e1".into(),
                bundle: Some(m.bundle.clone()),
            })
        }

        async fn write(
            &self,
            expected: u64,
            bundle: &pb::ConfigBundle,
            record: &pb::HistoryRecord,
            request_id: &str,
        ) -> Result<Written, StoreError> {
            let mut m = self.state.lock();
            if let Some(rev) = m.reqs.get(request_id) {
                return Ok(Written {
                    revision: *rev,
                    epoch: "e1".into(),
                    replayed: true,
                });
            }
            if self.conflicts.load(Ordering::SeqCst) > 0 {
                self.conflicts.fetch_sub(1, Ordering::SeqCst);
                m.rev += 1;
                let rev = m.rev;
                m.hist.push(pb::HistoryRecord {
                    revision: rev,
                    ..Default::default()
                });
            }
            if m.rev != expected {
                return Err(StoreError::Conflict {
                    expected,
                    current: m.rev,
                });
            }
            m.rev += 1;
            let rev = m.rev;
            m.bundle = bundle.clone();
            m.hist.push(pb::HistoryRecord {
                revision: rev,
                ..record.clone()
            });
            if !request_id.is_empty() {
                m.reqs.insert(request_id.to_string(), rev);
            }
            if self.lose_answer.swap(false, Ordering::SeqCst) {
                return Err(timeout());
            }
            Ok(Written {
                revision: rev,
                epoch: "e1".into(),
                replayed: false,
            })
        }

        async fn applied(&self, request_id: &str) -> Result<Option<u64>, StoreError> {
            Ok(self.state.lock().reqs.get(request_id).copied())
        }

        async fn history(&self, limit: usize) -> Result<Vec<pb::HistoryRecord>, StoreError> {
            let m = self.state.lock();
            Ok(m.hist.iter().rev().take(limit).cloned().collect())
        }
    }

    fn opts(request_id: &str) -> pb::WriteOptions {
        pb::WriteOptions {
            request_id: request_id.into(),
            ..Default::default()
        }
    }

    fn add_service(
        name: &'static str,
        id: u32,
    ) -> impl FnMut(&mut pb::ConfigBundle) -> Result<(), Status> {
        move |b: &mut pb::ConfigBundle| {
            b.services.push(pb::Service {
                name: name.into(),
                id,
                strategy: gg_proto::model::Strategy::RoundRobin.to_pb(),
                endpoints: vec!["127.0.0.1:1".into()],
                ..Default::default()
            });
            Ok(())
        }
    }

    async fn run(
        s: &MemStore,
        o: &pb::WriteOptions,
        change: impl FnMut(&mut pb::ConfigBundle) -> Result<(), Status>,
    ) -> Result<Outcome, Status> {
        let lock = tokio::sync::Mutex::new(());
        let req = Request {
            author: "test".into(),
            opts: o,
            lock_wait: Duration::from_millis(100),
        };
        mutate(s, &lock, req, change).await
    }

    #[tokio::test]
    async fn a_retry_after_a_lost_answer_is_applied_once() {
        let s = MemStore::default();
        s.lose_answer.store(true, Ordering::SeqCst);
        let o = opts("req-1");
        let e = run(&s, &o, add_service("a", 1)).await.err().expect("lost");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("outcome unknown"), "{}", e.message());
        assert!(e.message().contains("req-1"), "{}", e.message());
        // The write did land; the retry gets its result, not a second one.
        let r = run(&s, &o, add_service("b", 2))
            .await
            .expect("replayed")
            .response;
        assert!(r.replayed);
        assert_eq!(r.revision, 1);
        assert!(r.diff.iter().any(|l| l.contains('a')), "{:?}", r.diff);
        assert_eq!(s.state.lock().rev, 1, "no second revision");
        assert_eq!(s.state.lock().bundle.services.len(), 1);
    }

    #[tokio::test]
    async fn conflicts_are_retried_and_pinned_revisions_are_not() {
        let s = MemStore::default();
        s.conflicts.store(2, Ordering::SeqCst);
        let out = run(&s, &opts(""), add_service("a", 1))
            .await
            .expect("written");
        assert_eq!(out.response.revision, 3, "two concurrent writes went first");
        assert!(out.published.is_some());
        let pinned = pb::WriteOptions {
            expected_revision: 1,
            ..Default::default()
        };
        let e = run(&s, &pinned, add_service("b", 2))
            .await
            .err()
            .expect("stale");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn dry_runs_unchanged_and_invalid_writes_write_nothing() {
        let s = MemStore::default();
        let dry = pb::WriteOptions {
            dry_run: true,
            ..Default::default()
        };
        let r = run(&s, &dry, add_service("a", 1))
            .await
            .expect("dry")
            .response;
        assert!(r.dry_run && !r.diff.is_empty());
        assert_eq!(s.state.lock().rev, 0);
        run(&s, &opts(""), add_service("a", 1))
            .await
            .expect("written");
        let r = run(&s, &opts(""), |_| Ok(())).await.expect("same").response;
        assert!(r.unchanged);
        let e = run(&s, &opts(""), add_service("a", 1))
            .await
            .err()
            .expect("dup");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("nothing written"), "{}", e.message());
        assert_eq!(s.state.lock().rev, 1);
    }

    #[tokio::test]
    async fn a_write_that_cannot_get_the_lock_fails_fast() {
        let s = MemStore::default();
        let lock = tokio::sync::Mutex::new(());
        let _held = lock.lock().await;
        let o = opts("");
        let req = Request {
            author: "t".into(),
            opts: &o,
            lock_wait: Duration::from_millis(20),
        };
        let e = mutate(&s, &lock, req, add_service("a", 1))
            .await
            .err()
            .expect("busy");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("nothing was written"),
            "{}",
            e.message()
        );
    }
}
