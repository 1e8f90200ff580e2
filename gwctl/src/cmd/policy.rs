//! Fleet-wide client policy in the bundle: `ip-lists` (allow/deny) and
//! `session-policy`. A change reads the bundle, edits it and writes it back
//! with compare-and-set on the revision it read (unless
//! `--expected-revision` says otherwise), so a concurrent write is refused,
//! never overwritten.

use anyhow::bail;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{bundle_file, get_config, options, write_view};
use crate::cli::{IpListName, IpListsCmd, OnExcess, SessionPolicyCmd, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::View;
use gg_proto::model::{Bundle, ExcessSessions, SessionPolicy};

#[derive(Serialize)]
struct Row<'a> {
    list: &'static str,
    block: &'a str,
}

pub(super) async fn ip_lists(ctx: &Ctx, c: IpListsCmd) -> anyhow::Result<View> {
    let v = get_config(ctx).await?;
    let mut bundle = bundle_file(&v.bundle.unwrap_or_default())?;
    let (list, blocks, write, add) = match c {
        IpListsCmd::List => {
            let l = &bundle.ip_lists;
            let rows: Vec<(&'static str, &String)> = (l.allow.iter().map(|b| ("allow", b)))
                .chain(l.deny.iter().map(|b| ("deny", b)))
                .collect();
            return Ok(View::list(
                "blocks",
                &rows,
                vec!["LIST", "BLOCK"],
                |(list, block)| Row { list, block },
                |(list, block)| vec![list.to_string(), block.to_string()],
            )
            .with("revision", v.revision));
        }
        IpListsCmd::Add {
            list,
            blocks,
            write,
        } => (list, blocks, write, true),
        IpListsCmd::Remove {
            list,
            blocks,
            write,
        } => (list, blocks, write, false),
    };
    let target = match list {
        IpListName::Allow => &mut bundle.ip_lists.allow,
        IpListName::Deny => &mut bundle.ip_lists.deny,
    };
    for b in blocks {
        if add {
            // Checked here for a message naming the block; the control
            // plane validates the whole bundle again.
            if let Err(e) = b.parse::<gg_proto::ip::Cidr>() {
                bail!("{e}");
            }
            if !target.contains(&b) {
                target.push(b);
            }
        } else if let Some(i) = target.iter().position(|x| *x == b) {
            target.remove(i);
        } else {
            bail!("{b} is not in the list (gwctl ip-lists list shows it as written)");
        }
    }
    write_back(ctx, bundle, v.revision, write).await
}

/// `session-policy get|set|clear`.
pub(super) async fn session_policy(ctx: &Ctx, c: SessionPolicyCmd) -> anyhow::Result<View> {
    let v = get_config(ctx).await?;
    let mut bundle = bundle_file(&v.bundle.unwrap_or_default())?;
    let write = match c {
        SessionPolicyCmd::Get => {
            let p = bundle.session_policy;
            let line = match p {
                Some(p) => format!(
                    "max {} session(s) per user; excess: {}",
                    p.max_sessions_per_user,
                    p.on_excess.name()
                ),
                None => "no session policy: users may hold any number of sessions".into(),
            };
            return Ok(
                View::of(&p, crate::out::Table::Lines(vec![line])).with("revision", v.revision)
            );
        }
        SessionPolicyCmd::Set {
            max_per_user,
            on_excess,
            write,
        } => {
            bundle.session_policy = Some(SessionPolicy {
                max_sessions_per_user: max_per_user,
                on_excess: match on_excess {
                    OnExcess::KickOldest => ExcessSessions::KickOldest,
                    OnExcess::RejectNew => ExcessSessions::RejectNew,
                },
            });
            write
        }
        SessionPolicyCmd::Clear { write } => {
            bundle.session_policy = None;
            write
        }
    };
    write_back(ctx, bundle, v.revision, write).await
}

/// Writes the edited bundle with compare-and-set on `read_revision`.
async fn write_back(
    ctx: &Ctx,
    bundle: Bundle,
    read_revision: u64,
    write: WriteArgs,
) -> anyhow::Result<View> {
    let write = WriteArgs {
        expected_revision: write.expected_revision.or(Some(read_revision)),
        ..write
    };
    let r = ctx
        .cp()
        .await?
        .apply(cp::ApplyRequest {
            bundle: Some(bundle.to_pb()),
            options: Some(options(&write)),
        })
        .await
        .map_err(explain)?
        .into_inner();
    Ok(write_view(&r))
}
