//! `ip-lists`: the fleet-wide client allow/deny lists in the bundle. A
//! change reads the bundle, edits the list and writes it back with
//! compare-and-set on the revision it read (unless `--expected-revision`
//! says otherwise), so a concurrent write is refused, never overwritten.

use anyhow::bail;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{bundle_file, get_config, options, write_view};
use crate::cli::{IpListName, IpListsCmd, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::View;

#[derive(Serialize)]
struct Row<'a> {
    list: &'static str,
    block: &'a str,
}

pub(super) async fn run(ctx: &Ctx, c: IpListsCmd) -> anyhow::Result<View> {
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
    let write = WriteArgs {
        expected_revision: write.expected_revision.or(Some(v.revision)),
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
