//! `routes` (services and route explanations) and `realms`.

use std::collections::BTreeMap;

use anyhow::anyhow;
use gg_proto::model::Service;
use gg_proto::pb::admin as gw;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{bundle_file, get_config, options, strategy_name, write_view};
use crate::cli::{self, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View};

pub(super) async fn routes(ctx: &Ctx, c: cli::Routes) -> anyhow::Result<View> {
    match c {
        cli::Routes::List => {
            let v = get_config(ctx).await?;
            let b = bundle_file(&v.bundle.unwrap_or_default())?;
            Ok(services_view(&b.services).with("revision", v.revision))
        }
        cli::Routes::Get { name } => get(ctx, &name).await,
        cli::Routes::Set {
            name,
            id,
            strategy,
            endpoints,
            prefer_region,
            protocol,
            tls,
            write,
        } => {
            let s = Service {
                name,
                id,
                strategy,
                endpoints,
                prefer_region: prefer_region.into(),
                protocol: protocol.into(),
                tls,
            };
            set(ctx, &s, &write).await
        }
        cli::Routes::Delete { name, write } => {
            let r = ctx
                .cp()
                .await?
                .delete_service(cp::DeleteServiceRequest {
                    name,
                    options: Some(options(&write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(write_view(&r))
        }
        cli::Routes::Explain {
            service,
            user,
            realm,
            session,
            client_region,
        } => {
            let req = gw::ExplainRouteRequest {
                service_type: service,
                realm_id: realm,
                user_id: user,
                session_id: session,
                client_region,
            };
            explain_route(ctx, req).await
        }
    }
}

fn service_row(s: &Service) -> Vec<String> {
    vec![
        s.name.clone(),
        s.id.to_string(),
        s.strategy.to_string(),
        s.endpoints.join(","),
    ]
}

fn services_view(list: &[Service]) -> View {
    View::list(
        "services",
        list,
        vec!["NAME", "ID", "STRATEGY", "ENDPOINTS"],
        |s| s,
        service_row,
    )
}

async fn get(ctx: &Ctx, name: &str) -> anyhow::Result<View> {
    let v = get_config(ctx).await?;
    let b = bundle_file(&v.bundle.unwrap_or_default())?;
    let s = b
        .services
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("no service named {name:?}; `gwctl routes list` shows them"))?;
    let table = Table::Fields(vec![
        ("name", s.name.clone()),
        ("id", s.id.to_string()),
        ("strategy", s.strategy.to_string()),
        ("endpoints", s.endpoints.join(", ")),
        ("prefer_region", s.prefer_region.name().to_string()),
    ]);
    Ok(View::of(&s, table))
}

async fn set(ctx: &Ctx, s: &Service, write: &WriteArgs) -> anyhow::Result<View> {
    let r = ctx
        .cp()
        .await?
        .put_service(cp::PutServiceRequest {
            service: Some(s.to_pb()),
            options: Some(options(write)),
        })
        .await
        .map_err(explain)?
        .into_inner();
    Ok(write_view(&r))
}

/// What `routes explain` prints: the decision traffic would take.
#[derive(Serialize)]
struct Explained<'a> {
    service: &'a str,
    strategy: &'static str,
    override_id: &'a str,
    hash_key: &'a str,
    endpoint: &'a str,
    endpoint_healthy: bool,
    circuit: &'a str,
    endpoint_state: &'a str,
    why: &'a str,
    candidates: &'a [String],
}

async fn explain_route(ctx: &Ctx, req: gw::ExplainRouteRequest) -> anyhow::Result<View> {
    let r = ctx
        .gw()
        .await?
        .explain_route(req)
        .await
        .map_err(explain)?
        .into_inner();
    let dash = |s: &str| {
        if s.is_empty() {
            "-".into()
        } else {
            s.to_string()
        }
    };
    let table = Table::Fields(vec![
        ("service", r.service.clone()),
        ("strategy", strategy_name(r.strategy).to_string()),
        ("endpoint", r.endpoint.clone()),
        (
            "healthy",
            format!(
                "{} (circuit {}, state {})",
                r.endpoint_healthy, r.circuit, r.endpoint_state
            ),
        ),
        ("override", dash(&r.override_id)),
        ("hash key", dash(&r.hash_key)),
        ("candidates", r.candidates.join(", ")),
        ("preferred region", dash(&r.preferred_region)),
        ("endpoint region", dash(&r.endpoint_region)),
        ("why", r.why.clone()),
    ]);
    let data = Explained {
        service: &r.service,
        strategy: strategy_name(r.strategy),
        override_id: &r.override_id,
        hash_key: &r.hash_key,
        endpoint: &r.endpoint,
        endpoint_healthy: r.endpoint_healthy,
        circuit: &r.circuit,
        endpoint_state: &r.endpoint_state,
        why: &r.why,
        candidates: &r.candidates,
    };
    Ok(View::of(&data, table))
}

#[derive(Serialize)]
struct RealmMap<'a> {
    revision: u64,
    realms: &'a BTreeMap<u32, String>,
}

pub(super) async fn realms(ctx: &Ctx, c: cli::Realms) -> anyhow::Result<View> {
    let r = match c {
        cli::Realms::List => {
            let v = get_config(ctx).await?;
            let realms = bundle_file(&v.bundle.unwrap_or_default())?.realms;
            let table = Table::Rows {
                headers: vec!["REALM", "ENDPOINT"],
                rows: realms
                    .iter()
                    .map(|(k, v)| vec![k.to_string(), v.clone()])
                    .collect(),
            };
            let data = RealmMap {
                revision: v.revision,
                realms: &realms,
            };
            return Ok(View::of(&data, table));
        }
        cli::Realms::Set {
            realm,
            endpoint,
            write,
        } => {
            ctx.cp()
                .await?
                .put_realm(cp::PutRealmRequest {
                    realm_id: realm,
                    endpoint,
                    options: Some(options(&write)),
                })
                .await
        }
        cli::Realms::Delete { realm, write } => {
            ctx.cp()
                .await?
                .delete_realm(cp::DeleteRealmRequest {
                    realm_id: realm,
                    options: Some(options(&write)),
                })
                .await
        }
    };
    Ok(write_view(&r.map_err(explain)?.into_inner()))
}
