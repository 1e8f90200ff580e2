//! Replies for many sessions written with one system call.
//!
//! A backend read usually carries replies for many sessions. Written one
//! `send(2)` each, every send that wakes a client's reader lets that
//! reader take the worker's core on the way back to user space (the
//! kernel's wake-up preemption), so a worker delivering a batch was
//! switched out and back in mid-batch; with two workers sharing the cores
//! with their clients that was the largest cost left per round trip.
//! Here the runs of a read are gathered ([`offer`]) and written together
//! ([`flush`]) as `IORING_OP_SEND` operations submitted with one
//! `io_uring_enter`: the sends happen back to back in the kernel and the
//! worker is switched out, if at all, once per batch (measured in
//! docs/benchmarks.md, "Making it fast").
//!
//! Every operation carries `MSG_DONTWAIT`, so the kernel completes it
//! during the submission, with `-EAGAIN` when the socket is full, instead
//! of parking it: nothing is in flight once [`flush`] returns, so the
//! buffers and descriptors it used need to live only until then. A socket
//! that is full, or any error, leaves the run to the session's task
//! ([`SessionHandle::end_direct`]), exactly as a would-block direct write
//! does. Where io_uring is unavailable (an old kernel, a seccomp profile
//! that refuses it, `--io-uring off`) every run takes the `send(2)` path.
//!
//! This is the one module of the workspace with `unsafe` code: pushing an
//! operation whose buffer the kernel reads.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};
use tracing::info;

use crate::metrics::Metrics;
use crate::session::{Delivered, SessionHandle};

/// `MSG_DONTWAIT` (Linux): fail with `EAGAIN` rather than wait.
const MSG_DONTWAIT: i32 = 0x40;

/// Runs gathered before they are written (and the ring's size).
pub(crate) const BATCH: usize = 64;

/// Whether workers may use io_uring (`--io-uring`); off until the
/// gateway's startup turns it on.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets (or stops) workers write replies through io_uring.
pub fn configure(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether this thread writes replies through io_uring (creating its ring
/// on first use).
pub fn active() -> bool {
    BATCHER.with(|b| b.borrow_mut().ring().is_some())
}

/// One run waiting in the batch: the session holds its writer for it.
struct Pending {
    session: SessionHandle,
    raw: Bytes,
    count: u32,
    fd: RawFd,
}

enum Ring {
    /// Not tried yet on this thread.
    Untried,
    Ready(Box<IoUring>),
    /// Turned off, or the kernel refused one.
    Off,
}

struct Batcher {
    ring: Ring,
    pending: Vec<Pending>,
}

impl Batcher {
    fn ring(&mut self) -> Option<&mut IoUring> {
        if let Ring::Untried = self.ring {
            self.ring = if !ENABLED.load(Ordering::Relaxed) {
                Ring::Off
            } else {
                match IoUring::new(BATCH as u32) {
                    Ok(r) => Ring::Ready(Box::new(r)),
                    Err(e) => {
                        info!(error = %e, "io_uring is unavailable; replies are written one send(2) at a time");
                        Ring::Off
                    }
                }
            };
        }
        match &mut self.ring {
            Ring::Ready(r) => Some(r),
            _ => None,
        }
    }
}

thread_local! {
    static BATCHER: RefCell<Batcher> = const {
        RefCell::new(Batcher { ring: Ring::Untried, pending: Vec::new() })
    };
}

/// Takes `count` frames (back to back in `raw`) for `session` into this
/// worker's batch, to be written by the next [`flush`] on this thread
/// before anything else runs here. Gives `raw` back when the run cannot
/// be batched (io_uring off, or the session's writer is busy, shared with
/// another thread or closing): the caller then delivers it as before.
pub(crate) fn offer(
    session: &SessionHandle,
    raw: Bytes,
    count: u32,
    metrics: &Metrics,
) -> Option<Bytes> {
    BATCHER.with(|cell| {
        let mut b = cell.borrow_mut();
        if b.ring().is_none() {
            return Some(raw);
        }
        let Some(fd) = session.begin_direct() else {
            return Some(raw);
        };
        b.pending.push(Pending {
            session: session.clone(),
            raw,
            count,
            fd,
        });
        if b.pending.len() >= BATCH {
            write(&mut b, metrics);
        }
        None
    })
}

/// Writes every run [`offer`] took on this thread. Called before the
/// thread can run anything else (the end of a backend read).
pub(crate) fn flush(metrics: &Metrics) {
    BATCHER.with(|cell| {
        let mut b = cell.borrow_mut();
        if !b.pending.is_empty() {
            write(&mut b, metrics);
        }
    });
}

fn write(b: &mut Batcher, metrics: &Metrics) {
    let mut written = [None; BATCH];
    let mut pending = std::mem::take(&mut b.pending);
    if let Some(ring) = b.ring()
        && let Err(e) = submit(ring, &pending, &mut written)
    {
        // Operations it did not take are still in its queue: this ring is
        // done (dropping it discards them); the runs go to the tasks.
        info!(error = %e, "io_uring submission failed; replies are written one send(2) at a time");
        b.ring = Ring::Off;
    }
    for (p, n) in pending.drain(..).zip(written) {
        let (len, protocol) = (p.raw.len() as u64, p.session.protocol());
        if p.session.end_direct(p.raw, p.count, n) == Delivered::Written {
            let pm = metrics.proto(protocol);
            pm.frames_out.inc_by(u64::from(p.count));
            pm.bytes_out.inc_by(len);
        }
    }
    // Keep the allocation for the next batch.
    b.pending = pending;
}

/// Sends every pending run; `written[i]` gets what run `i`'s send wrote
/// (`None`: nothing, it would block or failed). Returns once no operation
/// is left in the kernel; an error means the ring refused the submission
/// and kept what it did not take.
fn submit(
    ring: &mut IoUring,
    pending: &[Pending],
    written: &mut [Option<usize>; BATCH],
) -> io::Result<()> {
    let mut queued = 0usize;
    {
        let mut sq = ring.submission();
        for (i, p) in pending.iter().enumerate().take(BATCH) {
            let len = u32::try_from(p.raw.len()).unwrap_or(u32::MAX);
            let op = opcode::Send::new(types::Fd(p.fd), p.raw.as_ptr(), len)
                .flags(MSG_DONTWAIT)
                .build()
                .user_data(i as u64);
            // SAFETY: the kernel reads `len` bytes at `p.raw`, which lives
            // in `pending` until this function returns, and every
            // operation has completed by then (MSG_DONTWAIT completes it
            // during the submission; the loop below waits for any that
            // did not). The descriptor stays open as long: the session's
            // task, the only one that closes it, runs on this thread
            // (`SessionHandle::begin_direct`), not before this returns.
            if unsafe { sq.push(&op) }.is_err() {
                break;
            }
            queued += 1;
        }
    }
    let (mut submitted, mut done) = (0usize, 0usize);
    loop {
        for c in ring.completion() {
            done += 1;
            let slot = written.get_mut(c.user_data() as usize);
            if let (Some(slot), Ok(n)) = (slot, usize::try_from(c.result())) {
                *slot = Some(n);
            }
        }
        if submitted == queued && done >= submitted {
            return Ok(());
        }
        // Submit what is queued; wait only for what is still running.
        let wait = if submitted == queued {
            submitted - done
        } else {
            0
        };
        match ring.submit_and_wait(wait) {
            Ok(n) => submitted += n,
            Err(e) if transient(&e) => {}
            Err(e) if submitted == done => return Err(e),
            Err(e) => {
                // Operations are in the kernel and the kernel will not say
                // when they end: returning would free buffers it may still
                // read and let their descriptors be reused.
                eprintln!("gateway: io_uring wait failed with operations in flight: {e}");
                std::process::abort();
            }
        }
    }
}

fn transient(e: &io::Error) -> bool {
    // EINTR, EAGAIN, EBUSY: the kernel is short of something for a moment.
    matches!(e.raw_os_error(), Some(4 | 11 | 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Outbound;
    use crate::session::tests::{read_exact, shared_session};

    fn on() -> bool {
        configure(true);
        active()
    }

    #[tokio::test]
    async fn runs_for_several_sessions_are_written_by_one_flush() {
        if !on() {
            eprintln!("io_uring unavailable here: the batched path is not exercised");
            return;
        }
        let m = Metrics::new();
        let (a, mut arx, mut aclient) = shared_session(8).await;
        let (b, mut brx, mut bclient) = shared_session(8).await;
        arx.release();
        brx.release();
        assert!(offer(&a, Bytes::from_static(b"for a"), 1, &m).is_none());
        assert!(offer(&b, Bytes::from_static(b"for b, two"), 2, &m).is_none());
        // While a run waits, the session's writer is taken: a second run
        // for it queues behind, so frames keep their order.
        assert_eq!(
            a.deliver_frames(Bytes::from_static(b" then"), 1),
            Delivered::Queued
        );
        flush(&m);
        assert_eq!(read_exact(&mut aclient, 5).await, b"for a");
        assert_eq!(read_exact(&mut bclient, 10).await, b"for b, two");
        assert!(matches!(arx.try_recv(), Some(Outbound::Frame(f)) if &f[..] == b" then"));
        assert!(brx.try_recv().is_none(), "a written run queues nothing");
        assert_eq!(m.proto(crate::metrics::Protocol::Tcp).frames_out.get(), 3);
        assert_eq!(m.proto(crate::metrics::Protocol::Tcp).bytes_out.get(), 15);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_run_to_the_task_and_a_partial_one_its_tail_first() {
        if !on() {
            eprintln!("io_uring unavailable here: the batched path is not exercised");
            return;
        }
        let m = Metrics::new();
        let (h, mut rx, mut client) = shared_session(8).await;
        rx.release();
        // More than the socket buffers take at once: written in part.
        let big: Bytes = (0..64u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        assert!(offer(&h, big.clone(), 1, &m).is_none());
        flush(&m);
        let Some(Outbound::Rest(rest)) = rx.try_recv() else {
            panic!("the tail is queued, first");
        };
        assert!(!rest.is_empty() && rest.len() < big.len());
        assert_eq!(&big[big.len() - rest.len()..], &rest[..]);
        // The task owns the writer now: the next run is not batched.
        let next = Bytes::from_static(b"next");
        assert_eq!(offer(&h, next.clone(), 1, &m), Some(next));
        // Only what was written is counted (the tail is counted as sent
        // too: the task writes it without counting it again).
        assert_eq!(m.proto(crate::metrics::Protocol::Tcp).frames_out.get(), 1);
        let head = read_exact(&mut client, big.len() - rest.len()).await;
        assert!(head == big[..head.len()]);
        // Once the task has written everything and released the writer,
        // a run to a socket that is full (the client reads nothing) is
        // queued whole, nothing lost.
        let (h2, mut rx2, _client2) = shared_session(8).await;
        rx2.release();
        let mut sent = 0usize;
        loop {
            assert!(offer(&h2, big.clone(), 1, &m).is_none());
            flush(&m);
            match rx2.try_recv() {
                Some(Outbound::Rest(_)) => {
                    sent += 1;
                    // Pretend the task wrote the tail: give the writer back.
                    rx2.release();
                }
                Some(Outbound::Frame(f)) => {
                    assert_eq!(f.len(), big.len(), "a refused run is queued whole");
                    break;
                }
                Some(_) => panic!("unexpected message"),
                None => sent += 1,
            }
            assert!(sent < 64, "the socket never filled up");
        }
    }

    #[tokio::test]
    async fn with_io_uring_off_runs_are_given_back() {
        BATCHER.with(|b| {
            let mut b = b.borrow_mut();
            b.ring = Ring::Off;
        });
        let m = Metrics::new();
        let (h, mut rx, _client) = shared_session(8).await;
        rx.release();
        let run = Bytes::from_static(b"run");
        assert_eq!(offer(&h, run.clone(), 1, &m), Some(run));
        flush(&m);
        assert!(rx.try_recv().is_none());
    }
}
