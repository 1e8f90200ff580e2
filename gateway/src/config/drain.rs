//! `drain:` — how a shutdown or an admin drain moves sessions away.

use std::time::Duration;

use serde::Deserialize;

use super::{Errors, ms, positive};

pub const DEFAULT_DRAIN_DEADLINE_MS: u64 = 30_000;
pub const DEFAULT_DRAIN_SPREAD_MS: u64 = 10_000;
pub const DEFAULT_RECONNECT_AFTER_MS: u64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileDrain {
    pub deadline_ms: u64,
    pub spread_ms: u64,
    pub reconnect_after_ms: u64,
}

impl Default for FileDrain {
    fn default() -> Self {
        FileDrain {
            deadline_ms: DEFAULT_DRAIN_DEADLINE_MS,
            spread_ms: DEFAULT_DRAIN_SPREAD_MS,
            reconnect_after_ms: DEFAULT_RECONNECT_AFTER_MS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub deadline: Duration,
    pub spread: Duration,
    pub reconnect_after: Duration,
}

impl FileDrain {
    pub(super) fn validate(self, errs: &mut Errors) -> DrainSettings {
        positive("drain.deadline_ms", self.deadline_ms, errs);
        if self.spread_ms > self.deadline_ms {
            errs.push(format!(
                "drain.spread_ms ({}) must not exceed drain.deadline_ms ({})",
                self.spread_ms, self.deadline_ms
            ));
        }
        DrainSettings {
            deadline: ms(self.deadline_ms),
            spread: ms(self.spread_ms),
            reconnect_after: ms(self.reconnect_after_ms),
        }
    }
}
