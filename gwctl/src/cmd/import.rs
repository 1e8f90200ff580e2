//! `import go-gateway`: the Go game gateway keeps its routing in Redis —
//! `game-gateway:routing:rules`, a JSON string
//! `{"<service>": {"strategy": "round_robin|consistent_hash|realm",
//! "endpoints": ["host:port", …]}}`, and the hash
//! `game-gateway:realm:mapping` (`realm_id` → `host:port`). This reads
//! both (read only), turns them into our bundle — services need numeric
//! ids — and shows or applies the change through the control plane, which
//! validates it like any other write. See docs/migrating.md.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use gg_proto::model::{Bundle, Service, ServiceId, Strategy};
use gg_proto::pb::controlplane as cp;
use redis::AsyncCommands;
use serde::Deserialize;

use super::{Status, bundle_file, get_config, options, write_view};
use crate::cli::{ImportCmd, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::View;

pub const RULES_KEY: &str = "game-gateway:routing:rules";
pub const REALMS_KEY: &str = "game-gateway:realm:mapping";

/// One service as the Go gateway stores it (unknown keys are ignored: the
/// Go side may add fields).
#[derive(Debug, Deserialize)]
struct GoRule {
    strategy: String,
    #[serde(default)]
    endpoints: Vec<String>,
}

pub(super) async fn run(ctx: &Ctx, c: ImportCmd) -> anyhow::Result<(View, Status)> {
    let ImportCmd::GoGateway {
        redis,
        ids,
        yes,
        write,
    } = c;
    let (rules, realms) = read_go(&redis, ctx.timeout).await?;
    let ids: HashMap<String, ServiceId> = match &ids {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            yaml_serde::from_str(&text).map_err(|e| {
                anyhow!(
                    "{} must map service names to ids (0-65535): {e}",
                    path.display()
                )
            })?
        }
        None => HashMap::new(),
    };
    let v = get_config(ctx).await?;
    let current = bundle_file(&v.bundle.unwrap_or_default())?;
    let (bundle, assigned, notes) = convert(&current, &rules, &realms, &ids)?;
    let write = WriteArgs {
        dry_run: !yes || write.dry_run,
        expected_revision: write.expected_revision.or(Some(v.revision)),
        comment: write
            .comment
            .or_else(|| Some(format!("import go-gateway from {}", redact(&redis)))),
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
    let mut view = write_view(&r);
    if let crate::out::Table::Lines(lines) = &mut view.table {
        let mut head: Vec<String> = notes;
        head.extend(assigned.iter().map(|(name, id)| {
            format!("service {name} gets id {id} (assigned; pin it with --ids)")
        }));
        head.append(lines);
        if r.dry_run && !r.unchanged {
            head.push("run again with --yes to apply".into());
        }
        *lines = head;
    }
    let view = view.with(
        "assigned_ids",
        serde_json::to_value(&assigned).unwrap_or_default(),
    );
    let status = if r.dry_run && !r.unchanged {
        Status::Incomplete
    } else {
        Status::Ok
    };
    Ok((view, status))
}

/// The two keys, read with a deadline; a missing rules key is an error
/// (wrong Redis or database), a missing realm map is an empty one.
async fn read_go(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(BTreeMap<String, GoRule>, BTreeMap<u32, String>)> {
    let shown = redact(url);
    let client = redis::Client::open(url).map_err(|e| anyhow!("--redis {shown}: {e}"))?;
    let mut conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| {
            anyhow!("no answer from the Go gateway's Redis at {shown} within {timeout:?}")
        })?
        .map_err(|e| anyhow!("cannot reach the Go gateway's Redis at {shown}: {e}"))?;
    let (raw, map): (Option<String>, HashMap<String, String>) =
        tokio::time::timeout(timeout, async {
            let raw: Option<String> = conn.get(RULES_KEY).await?;
            let map: HashMap<String, String> = conn.hgetall(REALMS_KEY).await?;
            Ok::<_, redis::RedisError>((raw, map))
        })
        .await
        .map_err(|_| anyhow!("no answer from {shown} within {timeout:?}"))?
        .map_err(|e| anyhow!("reading {RULES_KEY} / {REALMS_KEY} from {shown}: {e}"))?;
    let raw = raw.ok_or_else(|| {
        anyhow!("{shown} has no {RULES_KEY}: is this the Go gateway's Redis (and database)?")
    })?;
    let rules: BTreeMap<String, GoRule> = serde_json::from_str(&raw)
        .map_err(|e| anyhow!("{RULES_KEY} is not the Go gateway's JSON rules: {e}"))?;
    let mut realms = BTreeMap::new();
    for (k, v) in map {
        let id: u32 = k
            .parse()
            .map_err(|_| anyhow!("{REALMS_KEY}: realm id {k:?} is not a number"))?;
        realms.insert(id, v);
    }
    Ok((rules, realms))
}

/// The current bundle with the Go gateway's services (same-named ones
/// replaced, others kept) and realm map (its entries win). Returns the
/// ids assigned here and notes on what was adapted.
fn convert(
    current: &Bundle,
    rules: &BTreeMap<String, GoRule>,
    realms: &BTreeMap<u32, String>,
    ids: &HashMap<String, ServiceId>,
) -> anyhow::Result<(Bundle, BTreeMap<String, ServiceId>, Vec<String>)> {
    let mut out = current.clone();
    let mut assigned = BTreeMap::new();
    let mut notes = Vec::new();
    // Taken: services that stay, ids from the file, and ids the imported
    // services keep from the control plane.
    let mut used: std::collections::HashSet<ServiceId> = out
        .services
        .iter()
        .filter(|s| !rules.contains_key(&s.name) || !ids.contains_key(&s.name))
        .map(|s| s.id)
        .collect();
    used.extend(ids.values().copied());
    let mut next: ServiceId = 1;
    let mut errs = Vec::new();
    for (name, rule) in rules {
        let strategy = match rule.strategy.as_str() {
            "round_robin" => Strategy::RoundRobin,
            "consistent_hash" => Strategy::ConsistentHash,
            "realm" => Strategy::Realm,
            other => {
                errs.push(format!(
                    "service {name}: strategy {other:?} is not round_robin, consistent_hash or realm"
                ));
                continue;
            }
        };
        let id = match ids.get(name) {
            Some(id) => *id,
            None => match current.services.iter().find(|s| &s.name == name) {
                Some(s) => s.id,
                None => {
                    while used.contains(&next) {
                        next = next
                            .checked_add(1)
                            .ok_or_else(|| anyhow!("no free service id left"))?;
                    }
                    used.insert(next);
                    assigned.insert(name.clone(), next);
                    next
                }
            },
        };
        let mut endpoints = rule.endpoints.clone();
        if strategy == Strategy::Realm && !endpoints.is_empty() {
            notes.push(format!(
                "service {name}: a realm service routes by the realm map; its {} endpoint(s) are not imported",
                endpoints.len()
            ));
            endpoints.clear();
        }
        let svc = Service {
            name: name.clone(),
            id,
            strategy,
            endpoints,
            prefer_region: gg_proto::model::PreferRegion::None,
            protocol: gg_proto::model::BackendProtocol::Frame,
            tls: false,
        };
        match out.services.iter_mut().find(|s| s.name == *name) {
            Some(s) => *s = svc,
            None => out.services.push(svc),
        }
    }
    if !errs.is_empty() {
        bail!("{}", errs.join("; "));
    }
    out.realms
        .extend(realms.iter().map(|(k, v)| (*k, v.clone())));
    out.services.sort_by_key(|s| s.id);
    out.validate()
        .map_err(|e| anyhow!("the imported rules are not valid here: {e}"))?;
    Ok((out, assigned, notes))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(strategy: &str, eps: &[&str]) -> GoRule {
        GoRule {
            strategy: strategy.into(),
            endpoints: eps.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn ids_come_from_the_file_then_the_control_plane_then_the_next_free() {
        let current = Bundle {
            services: vec![Service {
                name: "login".into(),
                id: 1,
                strategy: Strategy::RoundRobin,
                endpoints: vec!["old:1".into()],
                prefer_region: gg_proto::model::PreferRegion::None,
                protocol: gg_proto::model::BackendProtocol::Frame,
                tls: false,
            }],
            ..Bundle::default()
        };
        let rules: BTreeMap<String, GoRule> = [
            ("login".to_string(), rule("round_robin", &["l:1", "l:2"])),
            ("chat".to_string(), rule("consistent_hash", &["c:1"])),
            ("battle".to_string(), rule("realm", &["ignored:1"])),
            ("shop".to_string(), rule("round_robin", &["s:1"])),
        ]
        .into();
        let realms = [(7u32, "g:7".to_string())].into();
        let ids = [("shop".to_string(), 2 as ServiceId)].into();
        let (b, assigned, notes) = convert(&current, &rules, &realms, &ids).unwrap();
        let id = |n: &str| b.services.iter().find(|s| s.name == n).unwrap().id;
        assert_eq!(id("login"), 1, "kept from the control plane");
        assert_eq!(id("shop"), 2, "from --ids");
        assert_eq!((id("battle"), id("chat")), (3, 4), "next free, by name");
        assert_eq!(assigned.len(), 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            b.services
                .iter()
                .find(|s| s.name == "battle")
                .unwrap()
                .endpoints
                .is_empty()
        );
        assert_eq!(b.realms.get(&7).map(String::as_str), Some("g:7"));
    }

    #[test]
    fn unknown_strategies_and_invalid_rules_are_refused() {
        let rules: BTreeMap<String, GoRule> =
            [("x".to_string(), rule("least_conn", &["a:1"]))].into();
        let e = convert(
            &Bundle::default(),
            &rules,
            &BTreeMap::new(),
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("least_conn"), "{e}");
        let rules: BTreeMap<String, GoRule> =
            [("x".to_string(), rule("round_robin", &["nope"]))].into();
        let e = convert(
            &Bundle::default(),
            &rules,
            &BTreeMap::new(),
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not host:port"), "{e}");
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
    }
}
