//! The whole bundle: `apply`, `diff`, `dump`, `history`, `rollback`.

use std::path::Path;

use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{Status, bundle_file, get_config, options, read_bundle, write_view};
use crate::cli::{Format, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::{View, time};

pub(super) async fn apply(ctx: &Ctx, file: &Path, write: &WriteArgs) -> anyhow::Result<View> {
    let bundle = read_bundle(file)?;
    let r = ctx
        .cp()
        .await?
        .apply(cp::ApplyRequest {
            bundle: Some(bundle),
            options: Some(options(write)),
        })
        .await
        .map_err(explain)?
        .into_inner();
    Ok(write_view(&r))
}

/// `apply --dry-run`; exit 2 when there is a difference.
pub(super) async fn diff(ctx: &Ctx, file: &Path) -> anyhow::Result<(View, Status)> {
    let dry = WriteArgs {
        dry_run: true,
        ..WriteArgs::default()
    };
    let bundle = read_bundle(file)?;
    let r = ctx
        .cp()
        .await?
        .apply(cp::ApplyRequest {
            bundle: Some(bundle),
            options: Some(options(&dry)),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let status = if r.unchanged || r.diff.is_empty() {
        Status::Ok
    } else {
        Status::Incomplete
    };
    Ok((write_view(&r), status))
}

/// The current bundle as a file for `apply -f`: YAML unless JSON is asked for.
pub(super) async fn dump(ctx: &Ctx, format: Format) -> anyhow::Result<String> {
    let v = get_config(ctx).await?;
    let file = bundle_file(&v.bundle.unwrap_or_default())?;
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&file)?),
        _ => format!(
            "# revision {} (epoch {})\n{}",
            v.revision,
            v.epoch,
            yaml_serde::to_string(&file)?
        ),
    })
}

pub(super) async fn rollback(ctx: &Ctx, revision: u64, write: &WriteArgs) -> anyhow::Result<View> {
    let r = ctx
        .cp()
        .await?
        .rollback(cp::RollbackRequest {
            to_revision: revision,
            options: Some(options(write)),
        })
        .await
        .map_err(explain)?
        .into_inner();
    Ok(write_view(&r))
}

#[derive(Serialize)]
struct Record<'a> {
    revision: u64,
    author: &'a str,
    at_ms: u64,
    comment: &'a str,
    diff: &'a [String],
}

pub(super) async fn history(ctx: &Ctx, limit: u32) -> anyhow::Result<View> {
    let recs = ctx
        .cp()
        .await?
        .history(cp::HistoryRequest { limit })
        .await
        .map_err(explain)?
        .into_inner()
        .records;
    Ok(View::list(
        "records",
        &recs,
        vec!["REVISION", "AT", "AUTHOR", "COMMENT", "CHANGES"],
        |r| Record {
            revision: r.revision,
            author: &r.author,
            at_ms: r.at_ms,
            comment: &r.comment,
            diff: &r.diff,
        },
        |r| {
            vec![
                r.revision.to_string(),
                time(r.at_ms),
                r.author.clone(),
                r.comment.clone(),
                r.diff.join("; "),
            ]
        },
    ))
}
