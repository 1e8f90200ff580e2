//! Thread per core: the data plane runs on N single-threaded runtimes, one
//! per worker thread, and a connection lives on one of them from accept to
//! close. Worker 0 is the thread the gateway was started on; it also runs
//! the accept loop, the ops and admin servers and the control-plane client.
//!
//! Why not one work-stealing runtime: a session, the backend connection
//! its frames go out on, and the reader that hands the replies back would
//! land on different threads, so every frame paid a cross-thread wake-up
//! and the shared queues bounced between caches. Measured on 2 cores (two
//! one-worker gateways against one two-worker gateway): about 10 % more
//! round trips per second and 15 % less CPU per round trip
//! (docs/benchmarks.md). Like nginx workers and Pingora's no-steal
//! runtime, a busy worker cannot hand work to an idle one; connections are
//! placed on the worker with the fewest, and backend connections are
//! spread over the workers, so each worker sends on its own.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use tracing::debug;

thread_local! {
    /// This thread's worker index; 0 for any thread that is not a worker.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

thread_local! {
    /// Whether this worker's yields before parking have been paying.
    static PARK_GATE: Cell<YieldGate> = const { Cell::new(YieldGate::new()) };
}

/// A `sched_yield` that took at least this long gave the CPU to another
/// thread; a shorter one found nobody else to run.
const YIELD_SWITCHED: Duration = Duration::from_micros(5);

/// Call just before a worker parks (tokio's `on_thread_park`). A worker
/// with nothing left to run yields the CPU once before it sleeps in
/// `epoll_wait`: on a machine shared with the processes it serves (a load
/// generator and a backend on the same cores), the thread that runs in its
/// place usually produces the worker's next event, which the worker then
/// finds without a sleep and a wake-up (2 workers, 1 in flight: -9 % CPU
/// per round trip). A yield that found nobody else to run bought nothing
/// and cost a syscall, so the gate then skips the next 1, 3, 7, ... parks
/// (an idle or lightly loaded gateway: at most one yield per 64 parks).
pub fn before_park() {
    let mut gate = PARK_GATE.with(Cell::get);
    if gate.should_yield() {
        let start = Instant::now();
        std::thread::yield_now();
        gate.record(start.elapsed() >= YIELD_SWITCHED);
    }
    PARK_GATE.with(|g| g.set(gate));
}

/// Yield when it pays. A caller about to yield asks [`YieldGate::should_yield`]
/// and reports with [`YieldGate::record`] whether the yield achieved
/// anything; one that achieved nothing makes the gate skip the next 1, 3,
/// 7, ... (at most [`YieldGate::MAX_SKIP`]) chances before it tries again,
/// and one that achieved something turns yielding back on. Used by the
/// backend writer (flush on idle) and by [`before_park`].
#[derive(Clone, Copy, Default)]
pub(crate) struct YieldGate {
    skip: u32,
    left: u32,
}

impl YieldGate {
    const MAX_SKIP: u32 = 63;

    const fn new() -> YieldGate {
        YieldGate { skip: 0, left: 0 }
    }

    pub(crate) fn should_yield(&mut self) -> bool {
        if self.left == 0 {
            true
        } else {
            self.left -= 1;
            false
        }
    }

    /// What the last yield achieved.
    pub(crate) fn record(&mut self, paid: bool) {
        self.skip = if paid {
            0
        } else {
            (self.skip * 2 + 1).min(Self::MAX_SKIP)
        };
        self.left = self.skip;
    }
}

/// The worker the calling thread is (0 when it is none).
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The gateway's worker runtimes, by index.
pub struct Workers {
    handles: Box<[Handle]>,
    /// Connections on each worker now.
    load: Box<[AtomicUsize]>,
}

impl Workers {
    /// One worker: the runtime the caller runs in (tests, embedders, and
    /// `--worker-threads 1`).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current_runtime() -> Arc<Workers> {
        Workers::new(vec![Handle::current()])
    }

    /// Worker `i` is `handles[i]`; `handles[0]` is the caller's runtime.
    /// Threads driving `handles[1..]` must call [`Workers::enter`] first.
    pub fn new(handles: Vec<Handle>) -> Arc<Workers> {
        assert!(!handles.is_empty(), "at least one worker");
        let load = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        Arc::new(Workers {
            handles: handles.into(),
            load,
        })
    }

    /// Marks the calling thread as worker `index` (call once, before it
    /// drives that worker's runtime).
    pub fn enter(index: usize) {
        INDEX.with(|c| c.set(index));
    }

    /// Number of workers.
    pub(crate) fn count(&self) -> usize {
        self.handles.len()
    }

    /// Worker `index`'s runtime (indices wrap).
    pub(crate) fn handle(&self, index: usize) -> &Handle {
        &self.handles[index % self.handles.len()]
    }

    /// Connections placed on each worker now.
    pub(crate) fn loads(&self) -> Vec<usize> {
        self.load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker with the fewest connections (the caller's own on a tie,
    /// so a single worker never hands off).
    fn pick(&self) -> usize {
        let me = current() % self.count();
        let mut best = me;
        let mut best_load = self.load[me].load(Ordering::Relaxed);
        for (i, l) in self.load.iter().enumerate() {
            let l = l.load(Ordering::Relaxed);
            if l < best_load {
                best = i;
                best_load = l;
            }
        }
        best
    }

    /// Runs `serve(stream, placed)` as a tracked task on the least loaded
    /// worker; `placed` counts the connection there until it is dropped
    /// (the caller keeps it as long as the connection lives, past the task
    /// that hands a session on). A stream accepted on another worker is
    /// moved to the chosen one's reactor, so its reads and writes wake that
    /// worker only.
    pub(crate) fn spawn_conn<F, Fut>(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stream: TcpStream,
        serve: F,
    ) where
        F: FnOnce(TcpStream, Placed) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let w = self.pick();
        let placed = Placed::new(self.clone(), w);
        if w == current() {
            tracker.spawn(serve(stream, placed));
            return;
        }
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "cannot move a connection to another worker; closed");
                return;
            }
        };
        tracker.spawn_on(
            async move {
                match TcpStream::from_std(std) {
                    Ok(stream) => serve(stream, placed).await,
                    Err(e) => {
                        debug!(error = %e, "cannot register a connection on its worker; closed")
                    }
                }
            },
            self.handle(w),
        );
    }
}

/// Counts one connection on a worker while it lives.
pub(crate) struct Placed {
    workers: Arc<Workers>,
    index: usize,
}

impl Placed {
    fn new(workers: Arc<Workers>, index: usize) -> Placed {
        workers.load[index].fetch_add(1, Ordering::Relaxed);
        Placed { workers, index }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.workers.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two extra single-threaded runtimes on their own threads, as main
    /// builds them.
    fn spawn_workers(n: usize) -> (Arc<Workers>, tokio_util::sync::CancellationToken) {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut handles = vec![Handle::current()];
        for i in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                Workers::enter(i);
                rt.block_on(stop.cancelled());
            });
        }
        (Workers::new(handles), stop)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_go_to_the_least_loaded_worker_and_run_there() {
        let (workers, stop) = spawn_workers(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracker = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let release = tokio_util::sync::CancellationToken::new();
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let release = release.clone();
            workers.spawn_conn(&tracker, s, move |mut s, placed| async move {
                use tokio::io::AsyncWriteExt as _;
                let _placed = placed;
                // Runs on its worker: the I/O works there, and it reports
                // which worker it is.
                s.write_all(&[current() as u8]).await.unwrap();
                tx.send(current()).unwrap();
                release.cancelled().await;
            });
            // Each placement is counted before the next pick.
            rx.recv().await.unwrap();
        }
        let mut seen = Vec::new();
        for c in &mut clients {
            use tokio::io::AsyncReadExt as _;
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            seen.push(b[0]);
        }
        assert_eq!(
            seen,
            vec![0, 1, 2, 0, 1, 2],
            "least loaded, ties to the caller"
        );
        assert_eq!(workers.loads(), vec![2, 2, 2]);
        release.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(
            workers.loads(),
            vec![0, 0, 0],
            "released when the task ends"
        );
        stop.cancel();
    }

    /// Runs `batches` batches; every yield gathers `gathered`. Returns how
    /// many batches yielded.
    fn run(g: &mut YieldGate, batches: usize, gathered: bool) -> usize {
        let mut yields = 0;
        for _ in 0..batches {
            if g.should_yield() {
                yields += 1;
                g.record(gathered);
            }
        }
        yields
    }

    #[test]
    fn yield_gate_backs_off_when_yields_gather_nothing() {
        let mut g = YieldGate::default();
        // Tries at batches 0, 2, 6, 14, 30, 62, then every 64th.
        assert_eq!(run(&mut g, 3, false), 2);
        assert_eq!(run(&mut g, 60, false), 4);
        let settled = run(&mut g, 640, false);
        assert!((10..=11).contains(&settled), "{settled} yields in 640");
    }

    #[test]
    fn yield_gate_keeps_yielding_while_yields_gather() {
        let mut g = YieldGate::default();
        run(&mut g, 1000, false);
        // One fruitful try turns yielding back on for every batch.
        while !g.should_yield() {}
        g.record(true);
        assert_eq!(run(&mut g, 100, true), 100);
    }
}
