//! Handoff metrics as mergeable, time-bucketed rollups. Every committed change
//! yields an `Observation` (the engine collects them in `Effects`; stores hand
//! them to their listener after the commit). `rollup_deltas` turns one into
//! counter increments for its keys: the stage edge of a handoff (`from` stage to
//! `to` stage), its agent edge (sender to accepting agent), and the stage the
//! change happened at. Rollups of one key and bucket merge by addition, so any
//! number of replicas can add their deltas to the same stored row, and a window
//! is the merge of its buckets: space is bounded by keys x buckets kept, never
//! by the number of events.
//!
//! Latencies go into a fixed log-scale histogram (`Histogram`, `HISTOGRAM_BUCKETS`
//! buckets, each `HISTOGRAM_GROWTH` times the one before), exact in count, sum,
//! min and max, and within one bucket's width in its quantiles.

use crate::event::{Actor, EventKind};
use crate::ids::{AgentId, Millis, StageName, TaskId};
use crate::store::{Handoff, HandoffOutcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Width of one rollup bucket.
pub const BUCKET_MS: Millis = 60_000;
/// Buckets of a latency histogram.
pub const HISTOGRAM_BUCKETS: usize = 48;
/// Each histogram bucket's upper bound is this times the one before (the first is 1 ms).
pub const HISTOGRAM_GROWTH: f64 = 1.5;

/// What one committed change tells the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub at: Millis,
    pub task: TaskId,
    pub kind: EventKind,
    /// The stage before the change.
    pub from: StageName,
    /// The stage after the change.
    pub stage: StageName,
    pub actor: Actor,
    /// Time spent in the state the change left: waiting (for a claim) or held
    /// (for a holder's action or a lease expiry).
    pub elapsed_ms: Option<Millis>,
    /// The handoff the change created or finished.
    pub handoff: Option<Handoff>,
    /// The task's W3C trace context (`traceparent`), for trace export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// What a rollup counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollupKey {
    /// Handoffs from one stage to another.
    Edge { from: StageName, to: StageName },
    /// Handoffs from one agent to the agent that accepted them.
    AgentEdge { from: AgentId, to: AgentId },
    /// What happened at one stage.
    Stage { stage: StageName },
}

/// A latency histogram on a fixed log scale; merges by addition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub count: u64,
    pub sum_ms: u64,
    pub min_ms: u64,
    pub max_ms: u64,
    /// Counts per bucket, trailing zero buckets omitted.
    pub buckets: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { count: 0, sum_ms: 0, min_ms: u64::MAX, max_ms: 0, buckets: Vec::new() }
    }
}

/// The upper bound (ms) of histogram bucket `i`.
pub fn bucket_bound(i: usize) -> f64 {
    HISTOGRAM_GROWTH.powi(i32::try_from(i).unwrap_or(i32::MAX))
}

impl Histogram {
    pub fn record(&mut self, ms: Millis) {
        let ms = u64::try_from(ms.max(0)).unwrap_or(0);
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
        let mut i = 0;
        while i + 1 < HISTOGRAM_BUCKETS && (ms as f64) > bucket_bound(i) {
            i += 1;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        self.min_ms = self.min_ms.min(other.min_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket clamped to
    /// the observed min and max; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = bucket_bound(i).ceil() as u64;
                return Some(bound.clamp(self.min_ms, self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64)
    }
}

/// The counters of one key in one bucket. Every field adds on merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Tasks submitted into the stage.
    pub submitted: u64,
    /// Handoffs sent along the edge (or into the stage).
    pub handoffs: u64,
    /// Handoffs accepted by a claim.
    pub accepted: u64,
    /// Handoffs (or tasks) offered again after `accept_within` passed unclaimed.
    pub timeouts: u64,
    pub rerouted: u64,
    pub escalated: u64,
    pub cancelled: u64,
    pub claims: u64,
    pub completed: u64,
    pub failed: u64,
    pub released: u64,
    pub lease_expired: u64,
    /// From handoff to acceptance.
    pub accept_latency: Histogram,
    /// From offer to claim, at a stage.
    pub wait: Histogram,
    /// From claim to the holder's action, at a stage.
    pub work: Histogram,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.submitted += o.submitted;
        self.handoffs += o.handoffs;
        self.accepted += o.accepted;
        self.timeouts += o.timeouts;
        self.rerouted += o.rerouted;
        self.escalated += o.escalated;
        self.cancelled += o.cancelled;
        self.claims += o.claims;
        self.completed += o.completed;
        self.failed += o.failed;
        self.released += o.released;
        self.lease_expired += o.lease_expired;
        self.accept_latency.merge(&o.accept_latency);
        self.wait.merge(&o.wait);
        self.work.merge(&o.work);
    }

    /// Handoffs that reached an outcome and were accepted, of all that reached one.
    pub fn success_rate(&self) -> Option<f64> {
        let settled = self.accepted + self.rerouted + self.escalated + self.cancelled;
        (settled > 0).then(|| self.accepted as f64 / settled as f64)
    }
}

/// One key's counters in the bucket starting at `bucket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    pub bucket: Millis,
    pub key: RollupKey,
    pub counts: Counts,
}

/// A window of a rollup key that departed from its learnt baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    pub key: RollupKey,
    /// What departed: `accept_latency`, `wait`, `backlog_growth`, `success_rate`...
    pub metric: String,
    pub window_start: Millis,
    pub window_end: Millis,
    pub baseline: f64,
    pub observed: f64,
    pub message: String,
    pub raised_at: Millis,
    /// Who acknowledged it and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<(String, Millis)>,
}

/// The start of the bucket `at` falls in.
pub fn bucket_of(at: Millis) -> Millis {
    at.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// Adds what `obs` counts to `into`, keyed by (bucket, key).
pub fn rollup_deltas(obs: &Observation, into: &mut BTreeMap<(Millis, RollupKey), Counts>) {
    let bucket = bucket_of(obs.at);
    let mut bump = |key: RollupKey, f: &dyn Fn(&mut Counts)| f(into.entry((bucket, key)).or_default());
    let stage = RollupKey::Stage { stage: obs.from.clone() };
    match obs.kind {
        EventKind::Submitted => bump(stage, &|c| c.submitted += 1),
        EventKind::Claimed => bump(stage, &|c| {
            c.claims += 1;
            if let Some(ms) = obs.elapsed_ms {
                c.wait.record(ms);
            }
        }),
        EventKind::Completed | EventKind::HandedOff | EventKind::Failed | EventKind::Released => {
            bump(stage, &|c| {
                match obs.kind {
                    EventKind::Completed => c.completed += 1,
                    EventKind::Failed => c.failed += 1,
                    EventKind::Released => c.released += 1,
                    _ => c.completed += 1,
                }
                if let Some(ms) = obs.elapsed_ms {
                    c.work.record(ms);
                }
            });
        }
        EventKind::LeaseExpired => bump(stage, &|c| c.lease_expired += 1),
        EventKind::Reoffered => bump(stage, &|c| c.timeouts += 1),
        EventKind::Rerouted => bump(stage, &|c| c.rerouted += 1),
        EventKind::Escalated => bump(stage, &|c| c.escalated += 1),
        EventKind::Cancelled | EventKind::Aborted => bump(stage, &|c| c.cancelled += 1),
        _ => {}
    }
    let Some(h) = &obs.handoff else { return };
    if obs.kind == EventKind::Reoffered {
        // The open handoff waited out `accept_within` once more.
        bump(RollupKey::Edge { from: h.from_stage.clone(), to: h.to_stage.clone() }, &|c| c.timeouts += 1);
        return;
    }
    let edge = RollupKey::Edge { from: h.from_stage.clone(), to: h.to_stage.clone() };
    match &h.outcome {
        HandoffOutcome::Pending => {
            bump(edge, &|c| c.handoffs += 1);
            bump(RollupKey::Stage { stage: h.to_stage.clone() }, &|c| c.handoffs += 1);
        }
        HandoffOutcome::Accepted { by, at, .. } => {
            let latency = at.saturating_sub(h.at);
            bump(edge, &|c| {
                c.accepted += 1;
                c.accept_latency.record(latency);
            });
            bump(RollupKey::AgentEdge { from: h.from_agent.clone(), to: by.clone() }, &|c| {
                c.accepted += 1;
                c.accept_latency.record(latency);
            });
        }
        HandoffOutcome::Rerouted { .. } => bump(edge, &|c| c.rerouted += 1),
        HandoffOutcome::Escalated { .. } => bump(edge, &|c| c.escalated += 1),
        HandoffOutcome::Cancelled { .. } => bump(edge, &|c| c.cancelled += 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_fall_in_the_right_bucket_and_merge() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(ms);
        }
        assert_eq!((h.count, h.min_ms, h.max_ms, h.sum_ms), (100, 1, 100, 5050));
        let p50 = h.quantile(0.5).expect("p50");
        assert!((50..=75).contains(&p50), "p50 {p50} within one bucket of 50");
        assert_eq!(h.quantile(1.0), Some(100));
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count, 200);
        assert_eq!(m.quantile(0.5), h.quantile(0.5));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
