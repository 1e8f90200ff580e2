//! `controlplane` binary: load config (exit 64 on errors), connect to Redis
//! (fail fast with a clear message), serve until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser, Debug)]
#[command(name = "controlplane", version, about = "Game Gateway control plane")]
struct Args {
    /// YAML config file.
    #[arg(long, env = "CP_CONFIG")]
    config: PathBuf,
    /// Redis URL (overrides `redis:` in the file), e.g. redis://127.0.0.1:6379/0.
    #[arg(long, env = "CP_REDIS_URL")]
    redis_url: Option<String>,
    /// gRPC listen address (overrides `listen`).
    #[arg(long, env = "CP_LISTEN")]
    listen: Option<String>,
    /// Ops HTTP listen address (overrides `ops_listen`).
    #[arg(long, env = "CP_OPS_LISTEN")]
    ops_listen: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "CP_LOG", default_value = "info")]
    log: String,
    /// Validate the config (and read its token and TLS files), print the
    /// result and exit (0 valid, 64 invalid); Redis is not contacted.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let o = controlplane::config::Overrides {
        redis_url: args.redis_url,
        listen: args.listen,
        ops_listen: args.ops_listen,
    };
    let cfg = match controlplane::config::Config::load(&args.config, o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("controlplane: {}: {e}", args.config.display());
            return ExitCode::from(64);
        }
    };
    if args.check {
        println!("config ok: id={} tokens={}", cfg.id, cfg.tokens.len());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("controlplane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs through `--log`; spans for OpenTelemetry through their own
    // filter (only `gg::trace` spans), so `--log warn` keeps tracing on.
    let (telemetry, otel) = match &cfg.telemetry {
        None => (None, None),
        Some(t) => {
            let _in_runtime = rt.enter();
            match gg_runtime::telemetry::Telemetry::start(t, &cfg.id) {
                Ok((tel, layer)) => (Some(tel), Some(layer)),
                Err(e) => {
                    eprintln!("controlplane: {e:#}");
                    return ExitCode::from(64);
                }
            }
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    tracing_subscriber::registry().with(fmt).with(otel).init();
    let res = rt.block_on(run(cfg));
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
            eprintln!("controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: controlplane::config::Config) -> anyhow::Result<()> {
    // One crypto provider for every TLS client in the process (rediss://).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let conn =
        controlplane::connect(&cfg.redis, cfg.redis_tls_ca.as_deref(), cfg.redis_timeout).await?;
    let listeners = controlplane::Listeners::bind(&cfg).await?;
    let (grpc, ops) = listeners.addrs()?;
    println!("listening grpc={grpc} ops={ops} id={}", cfg.id);
    let shutdown = CancellationToken::new();
    gg_runtime::signal::cancel_on_shutdown_signal(shutdown.clone());
    controlplane::run(cfg, conn, listeners, shutdown).await
}
