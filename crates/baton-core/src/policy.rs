//! Stage policies: how long a task may wait unclaimed, lease length, retries
//! and their backoff, and the escalation ladder (re-offer, reroute, escalate).
//! `Policies` maps stage names to policies; a stage without an entry is an ad
//! hoc stage and gets the default policy. Workflows (a later layer) fill this map.

use crate::ids::{Millis, StageName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The human stage that escalations land in when a stage names none.
pub const DEFAULT_HUMAN_STAGE: &str = "inbox";

/// Retry backoff: `initial_ms * multiplier^(attempt-1)`, capped at `max_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: Millis,
    pub max_ms: Millis,
    pub multiplier: u32,
}

impl Backoff {
    /// The wait before retry number `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> Millis {
        let mut delay = self.initial_ms.max(0);
        for _ in 1..attempt.min(32) {
            delay = delay.saturating_mul(i64::from(self.multiplier.max(1)));
            if delay >= self.max_ms {
                break;
            }
        }
        delay.min(self.max_ms.max(0))
    }
}

/// The rules of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagePolicy {
    /// How long a task may wait unclaimed before the ladder acts.
    pub accept_within_ms: Millis,
    /// Lease length when a claim does not ask for one.
    pub lease_ms: Millis,
    /// Failures and lease expiries at this stage before the ladder climbs.
    pub max_attempts: u32,
    /// Backoff before a retryable failure is offered again.
    pub retry: Backoff,
    /// Re-offers (another `accept_within`) before rerouting or escalating.
    pub reoffers: u32,
    /// The fallback stage, if any.
    pub reroute_to: Option<StageName>,
    /// The human stage for escalations; `inbox` when unset.
    pub escalate_to: Option<StageName>,
    /// Whether operators (humans) work this stage. A human stage's ladder only
    /// re-offers: there is nowhere further to escalate.
    pub human: bool,
    /// How long before a task's deadline its priority is raised (by
    /// `DEADLINE_BOOST`), taken from the stage the task is submitted to.
    pub deadline_near_ms: Millis,
}

/// What a nearing deadline adds to a task's priority.
pub const DEADLINE_BOOST: i32 = 1_000;

impl Default for StagePolicy {
    fn default() -> Self {
        Self {
            accept_within_ms: 5 * 60_000,
            lease_ms: 30_000,
            max_attempts: 5,
            retry: Backoff { initial_ms: 1_000, max_ms: 5 * 60_000, multiplier: 2 },
            reoffers: 1,
            reroute_to: None,
            escalate_to: None,
            human: false,
            deadline_near_ms: 5 * 60_000,
        }
    }
}

impl StagePolicy {
    /// The default policy of a human stage: a day to accept, re-offered for ever.
    pub fn human() -> Self {
        Self { accept_within_ms: 24 * 3_600_000, human: true, ..Self::default() }
    }

    /// Where escalations from this stage go.
    pub fn escalation_target(&self) -> StageName {
        self.escalate_to.clone().unwrap_or_else(|| StageName::new(DEFAULT_HUMAN_STAGE))
    }
}

/// Policies by stage, with a default for ad hoc stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    pub default: StagePolicy,
    pub stages: BTreeMap<StageName, StagePolicy>,
}

impl Default for Policies {
    fn default() -> Self {
        let mut stages = BTreeMap::new();
        stages.insert(StageName::new(DEFAULT_HUMAN_STAGE), StagePolicy::human());
        Self { default: StagePolicy::default(), stages }
    }
}

impl Policies {
    pub fn get(&self, stage: &StageName) -> &StagePolicy {
        self.stages.get(stage).unwrap_or(&self.default)
    }

    pub fn with_stage(mut self, stage: impl Into<String>, policy: StagePolicy) -> Self {
        self.stages.insert(StageName::new(stage), policy);
        self
    }
}
