//! `gwctl`: the operator CLI for Game Gateway's two planes — routing rules,
//! realms and overrides in the control plane; drains, sessions, backends and
//! explanations on a gateway's admin API. See docs/gwctl.md.

mod cli;
mod cmd;
mod ctx;
mod out;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use cli::{Cli, Cmd};
use cmd::Status;

fn main() -> ExitCode {
    // Usage errors exit 1, not clap's 2: 2 means "diff" or "not complete".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Cmd::Completion { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "gwctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Cmd::Context(c) = cli.cmd {
        // Edits the config file only: no connection.
        return match cmd::context::run(&cli.global, c).and_then(|v| v.render(cli.global.output)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gwctl: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    // One worker thread rather than a current-thread runtime: the span
    // exporter runs its gRPC calls on this runtime from its own thread,
    // also while `main` is not inside `block_on` (the flush at exit).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gwctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let telemetry = match &cli.global.otlp_endpoint {
        Some(endpoint) => match start_telemetry(&rt, endpoint) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("gwctl: --otlp-endpoint: {e:#}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let span = tracing::info_span!(
        target: gg_runtime::telemetry::TARGET,
        "gwctl",
        otel.name = %command_name(),
        otel.kind = "client",
    );
    if telemetry.is_some()
        && let Some(id) = gg_runtime::telemetry::traceparent(&span, None)
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1).map(str::to_string))
    {
        eprintln!("gwctl: trace {id}");
    }
    let res = rt.block_on(
        async {
            let ctx = ctx::Ctx::resolve(&cli.global)?;
            cmd::run(&ctx, cli.cmd, cli.global.output).await
        }
        .instrument(span),
    );
    if let Some(t) = telemetry {
        // Flushes the span before exit; the exporter runs on the runtime.
        let _in = rt.enter();
        if let Err(e) = t.shutdown() {
            eprintln!("gwctl: {e}");
        }
    }
    match res {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Incomplete) => ExitCode::from(2),
        Err(e) => {
            eprintln!("gwctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `gwctl drain start`: the subcommand path, the span's name.
fn command_name() -> String {
    let mut name = String::from("gwctl");
    if let Ok(m) = Cli::command().try_get_matches() {
        let mut m = &m;
        while let Some((sub, next)) = m.subcommand() {
            name.push(' ');
            name.push_str(sub);
            m = next;
        }
    }
    name
}

/// Exports gwctl's span (always sampled) to the collector at `endpoint`.
fn start_telemetry(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
) -> anyhow::Result<gg_runtime::telemetry::Telemetry> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        anyhow::bail!(
            "{endpoint:?} must start with http:// or https:// (an OTLP/gRPC collector, usually port 4317)"
        );
    }
    let _in = rt.enter();
    let settings = gg_runtime::telemetry::TelemetrySettings::cli(endpoint.to_string(), "gwctl");
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let (t, layer) = gg_runtime::telemetry::Telemetry::start(&settings, &host)?;
    tracing_subscriber::registry().with(layer).try_init()?;
    Ok(t)
}
