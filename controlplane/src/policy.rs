//! Session policy: at most `max_sessions_per_user` live sessions per user
//! across the fleet. After a batch of session opens reaches the directory,
//! each user in it is checked; the excess is closed through the owning
//! gateways' admin API (KickSessions) — 3508 `replaced` for `kick_oldest`,
//! 3509 `session_limit` for `reject_new`.
//!
//! Two replicas may check one user at once. Each reads after its own write,
//! so the later read sees both opens; and a session chosen from part of a
//! user's sessions is also chosen from all of them
//! ([`SessionPolicy::excess`]), so concurrent checks only ever close
//! sessions the full picture would close. Resumes keep their session id:
//! they never count twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use gg_proto::model::SessionPolicy;
use gg_proto::pb::admin as gwpb;
use tracing::{info, warn};

use crate::Cp;

/// How long a closed session is remembered (it leaves the directory well
/// within this).
const RECENT: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks `users` in the background (the Sync stream does not wait).
pub(crate) fn enforce(cp: &Arc<Cp>, users: Vec<u64>) {
    let Some(policy) = current(cp) else { return };
    if users.is_empty() {
        return;
    }
    let cp = cp.clone();
    tokio::spawn(async move {
        for uid in users {
            if let Err(e) = enforce_user(&cp, policy, uid).await {
                warn!(user = uid, error = %e, "session policy not enforced for this user");
            }
        }
    });
}

/// The policy of the bundle this replica serves.
fn current(cp: &Cp) -> Option<SessionPolicy> {
    let v = cp.current.borrow().clone();
    let b = v.bundle.as_ref()?;
    gg_proto::model::Bundle::from_pb(b).ok()?.session_policy
}

async fn enforce_user(cp: &Arc<Cp>, policy: SessionPolicy, uid: u64) -> Result<(), String> {
    let listed = cp
        .store
        .user_session_list(uid)
        .await
        .map_err(|e| e.to_string())?;
    if listed.len() <= policy.max_sessions_per_user as usize {
        return Ok(());
    }
    // Only sessions of live gateways count (a dead one's expire with it).
    let mut live = Vec::new();
    let mut addrs: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (sid, gw, opened) in listed {
        if !addrs.contains_key(&gw) {
            let a = cp
                .store
                .gateway_admin_addr(&gw)
                .await
                .map_err(|e| e.to_string())?;
            addrs.insert(gw.clone(), a);
        }
        if addrs.get(&gw).is_some_and(Option::is_some) {
            live.push((opened, sid, gw));
        }
    }
    let mut keys: Vec<(u64, u64)> = live.iter().map(|(o, s, _)| (*o, *s)).collect();
    let (victims, code) = policy.excess(&mut keys);
    // Already being closed by an earlier check of this replica: once is enough.
    let victims: Vec<u64> = {
        let mut recent = cp.policy_recent.lock();
        let now = std::time::Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < RECENT);
        victims
            .into_iter()
            .filter(|sid| recent.insert(*sid, now).is_none())
            .collect()
    };
    if victims.is_empty() {
        return Ok(());
    }
    let mut by_gateway: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, sid, gw) in &live {
        if victims.contains(sid) {
            by_gateway.entry(gw.as_str()).or_default().push(*sid);
        }
    }
    for (gw, sessions) in by_gateway {
        let Some(Some(addr)) = addrs.get(gw) else {
            continue;
        };
        if addr.is_empty() {
            warn!(
                gateway = gw,
                user = uid,
                "session policy: the gateway has no admin API; cannot close its sessions"
            );
            continue;
        }
        let mut admin = crate::gwadmin::connect(cp, addr).await?;
        let req = crate::gwadmin::request(
            cp,
            gwpb::KickSessionsRequest {
                session_ids: sessions.clone(),
                code: u32::from(code.code()),
                reason: format!(
                    "user {uid} has more than {} session(s) (session policy {})",
                    policy.max_sessions_per_user,
                    policy.on_excess.name()
                ),
                ..Default::default()
            },
        )
        .map_err(|e| e.message().to_string())?;
        let r = admin
            .kick_sessions(req)
            .await
            .map_err(|e| format!("gateway {gw}: {}", e.message()))?
            .into_inner();
        cp.metrics.policy_closes.inc_by(r.kicked);
        info!(user = uid, gateway = gw, sessions = ?sessions, code = code.code(), "session policy closed sessions");
    }
    Ok(())
}
