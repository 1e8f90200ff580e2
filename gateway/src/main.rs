//! `gateway` binary: parse flags, load and validate the config (exit 64 on
//! any error, all errors listed), bind, print the bound addresses, serve
//! until SIGTERM/SIGINT, drain, exit 0.

/// jemalloc keeps small long-lived objects (sessions) apart from large
/// short-lived ones (handshake buffers), so a connection storm leaves less
/// memory stranded: 14 % less RSS per idle TCP session on a fresh gateway,
/// the same throughput (measured against glibc and mimalloc; see
/// docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Exit code for a bad config or bad flags (BSD EX_USAGE-adjacent EX_DATAERR).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "Game Gateway data plane")]
struct Args {
    /// YAML config file (standalone mode: services, endpoints and realms come from it).
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: PathBuf,
    /// Gateway id; overrides `gateway_id` in the file (default: the file, then $POD_NAME, then the hostname).
    #[arg(long, env = "GATEWAY_ID")]
    gateway_id: Option<String>,
    /// This gateway's region (`eu`, `us-east-1`); overrides `region` in the file.
    #[arg(long, env = "REGION")]
    region: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `gateway=debug`.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Validate the config, print the result and exit (0 valid, 64 invalid).
    #[arg(long)]
    check: bool,
    /// Worker threads (default: one per CPU), each with its own
    /// single-threaded runtime; a connection stays on one from accept to
    /// close. 1 runs everything on one thread, like a single nginx worker.
    #[arg(long, env = "GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Write the replies a backend read carries for many sessions with one
    /// io_uring submission (`auto`: when the kernel allows it, else one
    /// `send` each) or always one `send` each (`off`).
    #[arg(long, env = "GATEWAY_IO_URING", value_parser = ["auto", "off"], default_value = "auto")]
    io_uring: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match gateway::config::Config::load(&args.config, args.gateway_id.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {}: {e}", args.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(r) = args.region.clone().filter(|r| !r.is_empty()) {
        if !gg_proto::model::valid_region(&r) {
            eprintln!("gateway: --region / REGION {r:?} must be [a-z0-9-], 1 to 32 characters");
            return ExitCode::from(EXIT_CONFIG);
        }
        cfg.region = Some(r);
    }
    if args.check {
        println!(
            "config ok: gateway_id={} services={} realms={}",
            cfg.gateway_id,
            cfg.routes.services.len(),
            cfg.routes.realms.len()
        );
        return ExitCode::SUCCESS;
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gateway: --log {:?}: {e}", args.log);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Thread per core: worker 0 is this thread, the others get their own
    // single-threaded runtime and thread (see gateway::workers, also for
    // the yield before a worker parks).
    let n = args.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    gateway::use_io_uring(args.io_uring == "auto");
    let runtime = |i: usize| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(gateway::workers::before_park)
            .thread_name(format!("gw-blocking-{i}"))
            .build()
    };
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers_stop = CancellationToken::new();
    let mut handles = vec![rt.handle().clone()];
    let mut threads = Vec::new();
    for i in 1..n {
        let started = runtime(i).and_then(|wrt| {
            handles.push(wrt.handle().clone());
            let stop = workers_stop.clone();
            std::thread::Builder::new()
                .name(format!("gw-worker-{i}"))
                .spawn(move || {
                    gateway::workers::Workers::enter(i);
                    wrt.block_on(stop.cancelled());
                })
        });
        match started {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("gateway: cannot start worker {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let workers = gateway::workers::Workers::new(handles);
    // Logs go to stderr through `--log`; spans for OpenTelemetry through
    // their own filter, so `--log warn` does not turn tracing off.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if args.log_format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (telemetry, otel) = match &cfg.telemetry {
        None => (None, None),
        Some(t) => {
            let _in_runtime = rt.enter();
            match gg_runtime::telemetry::Telemetry::start(t, &cfg.gateway_id) {
                Ok((tel, layer)) => (Some(tel), Some(layer)),
                Err(e) => {
                    eprintln!("gateway: {e:#}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    let res = rt.block_on(run(cfg, workers));
    workers_stop.cancel();
    for t in threads {
        let _ = t.join();
    }
    if let Some(t) = telemetry {
        // Flushes buffered spans; the exporter needs the runtime.
        let _in_runtime = rt.enter();
        if let Err(e) = t.shutdown() {
            eprintln!("{e}");
        }
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cfg: gateway::config::Config,
    workers: std::sync::Arc<gateway::workers::Workers>,
) -> anyhow::Result<()> {
    let listeners = gateway::Listeners::bind(&cfg).await?;
    let a = listeners.addrs()?;
    let admin = a.admin.map_or_else(|| "-".to_string(), |x| x.to_string());
    // One machine-readable line on stdout so scripts and tests can find
    // ports chosen by the OS (`listen: 127.0.0.1:0`).
    println!(
        "listening client={} ops={} admin={admin} gateway_id={}",
        a.client, a.ops, cfg.gateway_id
    );
    // Worker 0 (this thread) sets up its io_uring here; a kernel that
    // refuses it is logged, and replies then go one `send` at a time.
    let io_uring = gateway::io_uring_active();
    info!(client = %a.client, ops = %a.ops, %admin, gateway_id = %cfg.gateway_id, io_uring, "gateway listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        gg_runtime::signal::wait_for_shutdown_signal().await;
        info!("shutdown signal received; draining");
        signal.cancel();
    });
    let gw = gateway::Gateway::with_workers(cfg, workers);
    if gw.cfg.tls.is_some() || gw.cfg.ip_lists.file.is_some() {
        // SIGHUP: load the client port's certificate and the IP list file
        // again (rotation without dropping sessions).
        let gw = gw.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = gw.reload_tls();
                if gw.cfg.ip_lists.file.is_some() {
                    let _ = gw.reload_ip_lists();
                }
            }
        });
    }
    gateway::serve(gw, listeners, shutdown).await;
    info!("gateway stopped");
    Ok(())
}
