//! One module per noun of the CLI; each command calls the API and builds a
//! [`View`] from typed, `Serialize` rows (the domain model's types where
//! there is one). This module dispatches and holds what they share.

use std::io::IsTerminal;

use anyhow::{Context as _, anyhow};
use gg_proto::model::{Bundle, Strategy};
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use crate::cli::{Cmd, Format, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View};

mod backends;
mod config;
pub mod context;
mod drain;
mod fleet;
mod import;
mod overrides;
mod policy;
mod rooms;
mod routes;
mod sessions;

/// Exit status of a command that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// A diff exists (`diff`) or an operation is not complete (`--wait`).
    Incomplete,
}

pub async fn run(ctx: &Ctx, cmd: Cmd, format: Format) -> anyhow::Result<Status> {
    let ok = |v: View| (v, Status::Ok);
    let (view, status) = match cmd {
        Cmd::Routes(c) => ok(routes::routes(ctx, c).await?),
        Cmd::Realms(c) => ok(routes::realms(ctx, c).await?),
        Cmd::Overrides(c) => ok(overrides::run(ctx, c).await?),
        Cmd::IpLists(c) => ok(policy::ip_lists(ctx, c).await?),
        Cmd::Import(c) => import::run(ctx, c).await?,
        Cmd::Presence(crate::cli::PresenceCmd::Watch {
            cursor,
            users,
            realms,
            gateway_id,
            rooms,
            limit,
        }) => {
            let req = cp::WatchRequest {
                cursor,
                user_ids: users,
                realm_ids: realms,
                gateway_id,
                rooms,
            };
            sessions::watch(ctx, req, limit, format).await?;
            return Ok(Status::Ok);
        }
        Cmd::Rooms(c) => ok(rooms::run(ctx, c).await?),
        Cmd::SessionPolicy(c) => ok(policy::session_policy(ctx, c).await?),
        Cmd::Apply(a) => ok(config::apply(ctx, &a.file.file, &a.write).await?),
        Cmd::Diff(f) => config::diff(ctx, &f.file).await?,
        Cmd::Dump => {
            print!("{}", config::dump(ctx, format).await?);
            return Ok(Status::Ok);
        }
        Cmd::History { limit } => ok(config::history(ctx, limit).await?),
        Cmd::Rollback { revision, write } => ok(config::rollback(ctx, revision, &write).await?),
        Cmd::Rollout(c) => fleet::rollout(ctx, c).await?,
        Cmd::Fleet(crate::cli::Fleet::List { region }) => {
            ok(fleet::list(ctx, region.as_deref()).await?)
        }
        Cmd::Drain(c) => drain::run(ctx, c).await?,
        Cmd::Sessions(c) => ok(sessions::run(ctx, c).await?),
        Cmd::Backends(c) => ok(backends::run(ctx, c).await?),
        Cmd::Info => ok(backends::info(ctx).await?),
        Cmd::Version => ok(version(ctx).await),
        Cmd::Completion { .. } | Cmd::Context(_) => unreachable!("handled before connecting"),
    };
    print!("{}", view.render(format)?);
    Ok(status)
}

#[derive(Serialize)]
struct Versions {
    gwctl: &'static str,
    controlplane: Option<String>,
    gateway: Option<String>,
}

/// This gwctl's version and each configured server's; a server that does
/// not answer is shown as such rather than failing the command.
async fn version(ctx: &Ctx) -> View {
    let cp = match &ctx.controlplane {
        None => None,
        Some(_) => Some(match ctx.cp().await {
            Ok(mut c) => match c.list_gateways(cp::ListGatewaysRequest {}).await {
                Ok(r) => r.into_inner().controlplane_version,
                Err(e) => format!("unreachable ({})", e.message()),
            },
            Err(e) => format!("unreachable ({e})"),
        }),
    };
    let gw = match &ctx.gateway {
        None => None,
        Some(_) => Some(match ctx.gw().await {
            Ok(mut g) => match g.get_info(gg_proto::pb::admin::GetInfoRequest {}).await {
                Ok(i) => i.into_inner().version,
                Err(e) => format!("unreachable ({})", e.message()),
            },
            Err(e) => format!("unreachable ({e})"),
        }),
    };
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "- (not configured)".into());
    let table = Table::Fields(vec![
        ("gwctl", env!("CARGO_PKG_VERSION").to_string()),
        ("control plane", dash(&cp)),
        ("gateway", dash(&gw)),
    ]);
    let data = Versions {
        gwctl: env!("CARGO_PKG_VERSION"),
        controlplane: cp,
        gateway: gw,
    };
    View::of(&data, table)
}

fn options(w: &WriteArgs) -> cp::WriteOptions {
    cp::WriteOptions {
        expected_revision: w.expected_revision.unwrap_or(0),
        dry_run: w.dry_run,
        author: String::new(),
        comment: w.comment.clone().unwrap_or_default(),
        request_id: w.request_id.clone().unwrap_or_else(new_request_id),
    }
}

/// A fresh id for one write: a retry of the same command line that lost
/// its answer can pass it again (`--request-id`) and is not applied twice.
fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The answer to every configuration write.
#[derive(Serialize)]
struct Written<'a> {
    revision: u64,
    epoch: &'a str,
    diff: &'a [String],
    dry_run: bool,
    unchanged: bool,
    request_id: &'a str,
}

fn write_view(r: &cp::WriteResponse) -> View {
    let mut lines = r.diff.clone();
    lines.push(if r.dry_run {
        format!(
            "dry run: nothing written (revision {}){}",
            r.revision,
            if r.unchanged { "; no changes" } else { "" }
        )
    } else if r.unchanged {
        format!("unchanged: revision {}", r.revision)
    } else {
        format!("written: revision {}", r.revision)
    });
    View::of(
        &Written {
            revision: r.revision,
            epoch: &r.epoch,
            diff: &r.diff,
            dry_run: r.dry_run,
            unchanged: r.unchanged,
            request_id: &r.request_id,
        },
        Table::Lines(lines),
    )
}

async fn get_config(ctx: &Ctx) -> anyhow::Result<cp::Versioned> {
    Ok(ctx
        .cp()
        .await?
        .get_config(cp::GetConfigRequest {})
        .await
        .map_err(explain)?
        .into_inner())
}

/// The file `apply -f` reads and `dump` writes is the domain model's
/// [`Bundle`] (unknown keys rejected): the same type the control plane
/// validates and gateways apply. Services are listed by id.
fn bundle_file(b: &cp::ConfigBundle) -> anyhow::Result<Bundle> {
    let mut f = Bundle::from_pb(b)
        .map_err(|e| anyhow!("the control plane returned a bundle this gwctl cannot read: {e}"))?;
    f.services.sort_by_key(|s| s.id);
    Ok(f)
}

/// A strategy's name, or `unspecified`.
fn strategy_name(v: i32) -> &'static str {
    Strategy::from_pb(v).map_or("unspecified", Strategy::name)
}

/// `SYNC_STATUS_IN_SYNC` → `in_sync`: the lower-case name without the
/// enum's prefix, as shown in tables and JSON.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// Reads a bundle file (YAML, which also reads JSON). Unknown keys are
/// errors, so a typo never silently drops part of the routing.
pub fn read_bundle(path: &std::path::Path) -> anyhow::Result<cp::ConfigBundle> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: Bundle = yaml_serde::from_str(&text)
        .map_err(|e| anyhow!("{} is not a valid bundle file: {e}", path.display()))?;
    Ok(f.to_pb())
}

/// A progress line on stderr: redrawn in place on a terminal, one line per
/// update otherwise (so CI logs stay readable).
fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
    } else {
        eprintln!("{msg}");
    }
}

fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_file_round_trips_and_rejects_typos() {
        let text = "services:\n  - { name: account, id: 1, strategy: consistent_hash, endpoints: [a:1, b:2] }\nrealms: { 7: g:1 }\n";
        let f: Bundle = yaml_serde::from_str(text).expect("parses");
        let b = f.to_pb();
        assert_eq!(b.services[0].endpoints, vec!["a:1", "b:2"]);
        assert_eq!(b.realms.get(&7).map(String::as_str), Some("g:1"));
        let back = bundle_file(&b).expect("valid");
        assert_eq!(back, f);
        let e = yaml_serde::from_str::<Bundle>(
            "services:\n  - { name: a, id: 1, strategy: round_robin, endpoint: [a:1] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
        assert!(yaml_serde::from_str::<Bundle>("servics: []\n").is_err());
    }

    #[test]
    fn enum_names_drop_their_prefix() {
        assert_eq!(
            enum_name(cp::SyncStatus::InSync.as_str_name(), "SYNC_STATUS_"),
            "in_sync"
        );
        assert_eq!(strategy_name(0), "unspecified");
        assert_eq!(strategy_name(Strategy::Realm.to_pb()), "realm");
    }

    #[test]
    fn every_write_carries_a_request_id() {
        let a = options(&WriteArgs::default());
        let b = options(&WriteArgs::default());
        assert_eq!(a.request_id.len(), 36);
        assert_ne!(a.request_id, b.request_id);
        let given = WriteArgs {
            request_id: Some("retry-1".into()),
            ..WriteArgs::default()
        };
        assert_eq!(options(&given).request_id, "retry-1");
    }
}
