//! `gwctl`: the operator CLI for Game Gateway's two planes — routing rules,
//! realms and overrides in the control plane; drains, sessions, backends and
//! explanations on a gateway's admin API. See docs/gwctl.md.

mod cli;
mod cmd;
mod ctx;
mod out;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

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
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gwctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        let ctx = ctx::Ctx::resolve(&cli.global)?;
        cmd::run(&ctx, cli.cmd, cli.global.output).await
    });
    match res {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Incomplete) => ExitCode::from(2),
        Err(e) => {
            eprintln!("gwctl: {e:#}");
            ExitCode::from(1)
        }
    }
}
