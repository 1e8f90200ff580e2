//! The config bundle: validation (the same rules the gateway applies to its
//! own file, so a bundle the control plane accepts is one every gateway
//! accepts) and a human-readable diff between two bundles.

use std::collections::BTreeMap;

use gateway::config::RoutesConfig;
use gg_proto::pb::controlplane as pb;

/// Validates a bundle; every problem is reported at once. This is the
/// gateway's own check, so a bundle written here is one every gateway applies.
pub fn validate(b: &pb::ConfigBundle) -> Result<RoutesConfig, Vec<String>> {
    gateway::cpclient::routes_from_bundle(b).map(|(routes, _)| routes)
}

/// A canonical form so equal bundles compare equal whatever their order.
pub fn normalize(b: &mut pb::ConfigBundle) {
    b.services.sort_by(|x, y| x.name.cmp(&y.name));
    b.overrides.sort_by(|x, y| x.id.cmp(&y.id));
}

fn svc_line(s: &pb::Service) -> String {
    format!("id={} {} [{}]", s.id, s.strategy, s.endpoints.join(", "))
}

fn ovr_line(o: &pb::ClusterOverride) -> String {
    format!(
        "service={} user={} realm={} → {} ({}; by {}; expires_at_ms={})",
        o.service_type, o.user_id, o.realm_id, o.target, o.reason, o.author, o.expires_at_ms
    )
}

/// `+` added, `-` removed, `~` changed; one line per item.
pub fn diff(old: &pb::ConfigBundle, new: &pb::ConfigBundle) -> Vec<String> {
    let mut out = Vec::new();
    for s in &new.services {
        match old.services.iter().find(|o| o.name == s.name) {
            None => out.push(format!("+ service {}: {}", s.name, svc_line(s))),
            Some(o) if o != s => out.push(format!(
                "~ service {}: {} → {}",
                s.name,
                svc_line(o),
                svc_line(s)
            )),
            _ => {}
        }
    }
    for o in &old.services {
        if !new.services.iter().any(|s| s.name == o.name) {
            out.push(format!("- service {}", o.name));
        }
    }
    let realms: BTreeMap<_, _> = new.realms.iter().collect();
    let old_realms: BTreeMap<_, _> = old.realms.iter().collect();
    for (r, ep) in &realms {
        match old_realms.get(r) {
            None => out.push(format!("+ realm {r}: {ep}")),
            Some(o) if o != ep => out.push(format!("~ realm {r}: {o} → {ep}")),
            _ => {}
        }
    }
    for r in old_realms.keys() {
        if !realms.contains_key(r) {
            out.push(format!("- realm {r}"));
        }
    }
    for o in &new.overrides {
        match old.overrides.iter().find(|x| x.id == o.id) {
            None => out.push(format!("+ override {}: {}", o.id, ovr_line(o))),
            Some(x) if x != o => out.push(format!("~ override {}: {}", o.id, ovr_line(o))),
            _ => {}
        }
    }
    for o in &old.overrides {
        if !new.overrides.iter().any(|x| x.id == o.id) {
            out.push(format!("- override {}", o.id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, id: u32, strategy: &str, eps: &[&str]) -> pb::Service {
        pb::Service {
            name: name.into(),
            id,
            strategy: strategy.into(),
            endpoints: eps.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let b = pb::ConfigBundle {
            services: vec![
                svc("a", 1, "random", &[]),
                svc("b", 70000, "round_robin", &["x:1"]),
            ],
            realms: [(1, "nope".to_string())].into(),
            overrides: vec![pb::ClusterOverride {
                id: "o".into(),
                service_type: 9,
                target: "bad".into(),
                ..Default::default()
            }],
        };
        let all = validate(&b).unwrap_err().join("\n");
        for needle in [
            "unknown strategy",
            "does not fit in u16",
            "realms[1]",
            "no service with service_type 9",
            "target",
            "reason is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?}: {all}");
        }
    }

    #[test]
    fn diff_lists_changes() {
        let old = pb::ConfigBundle {
            services: vec![svc("a", 1, "round_robin", &["h:1"])],
            ..Default::default()
        };
        let new = pb::ConfigBundle {
            services: vec![
                svc("a", 1, "round_robin", &["h:1", "h:2"]),
                svc("b", 2, "consistent_hash", &["h:3"]),
            ],
            realms: [(3, "g:1".to_string())].into(),
            ..Default::default()
        };
        let d = diff(&old, &new);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("~ service a"));
        assert!(d[1].starts_with("+ service b"));
        assert_eq!(d[2], "+ realm 3: g:1");
        assert!(diff(&new, &new).is_empty());
        assert_eq!(
            diff(&new, &old)
                .iter()
                .filter(|l| l.starts_with('-'))
                .count(),
            2
        );
    }
}
