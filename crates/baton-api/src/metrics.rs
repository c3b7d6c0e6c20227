//! Handoff metrics and anomalies on the wire: `GET /v1/stats` (edges and
//! stages over a window, from the server's rollups), `GET /v1/alerts` and
//! `POST /v1/alerts/{id}/ack` (anomalies the detector raised). The server
//! computes every figure; these types only carry them.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/stats` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// How far back from now: a duration such as `15m`, `1h` or `1d`; `1h`
    /// by default, at most the rollups' retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Only this edge, as `FROM:TO` (stage names for stage edges, agent ids
    /// for agent edges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// Only this stage (its gauges and counters; edges touching it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// `GET /v1/stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// The window's start (a bucket boundary) and end (now).
    pub from: Timestamp,
    pub to: Timestamp,
    pub window_ms: u64,
    /// Stage-to-stage edges, by name.
    pub edges: Vec<EdgeStats>,
    /// Agent-to-agent edges (sender to accepting agent), by name.
    pub agent_edges: Vec<EdgeStats>,
    /// Stages, by name: live gauges and the window's counters.
    pub stages: Vec<StageStats>,
    /// True when the window held more rollups than one answer reads; the
    /// figures then cover its latest part only.
    #[serde(default)]
    pub truncated: bool,
}

/// One handoff edge over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EdgeStats {
    pub from: String,
    pub to: String,
    /// Handoffs sent along the edge (stage edges only: an agent edge is known
    /// once a handoff is accepted).
    pub handoffs: u64,
    pub accepted: u64,
    pub accept_latency: Latency,
    /// Re-offers after `accept_within` passed unclaimed.
    pub timeouts: u64,
    pub reroutes: u64,
    pub escalations: u64,
    pub cancelled: u64,
    /// Handoffs that reached an outcome: accepted, rerouted, escalated or cancelled.
    pub samples: u64,
    /// accepted / samples; absent without samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
}

/// Latency quantiles in milliseconds (within one histogram bucket, 1.5x wide).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Latency {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
}

/// One stage: gauges now, counters over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StageStats {
    pub stage: String,
    /// Tasks waiting and claimable now.
    pub backlog: u64,
    /// How long the oldest claimable task has waited, now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_ms: Option<u64>,
    /// Tasks held under a lease now.
    pub in_flight: u64,
    /// Tasks waiting for children now.
    pub blocked: u64,
    pub submitted: u64,
    /// Handoffs into the stage.
    pub handoffs_in: u64,
    pub claims: u64,
    /// Holder calls that finished the stage's part (complete or hand off).
    pub completes: u64,
    pub failures: u64,
    pub releases: u64,
    pub lease_expiries: u64,
    pub timeouts: u64,
    pub reroutes: u64,
    pub escalations: u64,
    /// From offer to claim.
    pub wait: Latency,
}

/// `GET /v1/alerts` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Acknowledged anomalies too; only open ones by default.
    #[serde(default)]
    pub all: bool,
    /// Anomalies with ids after this one (the last id of the previous page).
    #[serde(default)]
    pub after: u64,
    /// At most this many (`page_size_max`); 50 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/alerts` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalyList {
    pub anomalies: Vec<Anomaly>,
}

/// A window of an edge or a stage that departed from its learnt baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Anomaly {
    pub id: u64,
    /// `edge`, `agent_edge` or `stage`.
    pub scope: String,
    /// The edge's source (or the stage).
    pub from: String,
    /// The edge's target; absent for a stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `accept_latency`, `backlog_growth` or `success_rate`.
    pub metric: String,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub baseline: f64,
    pub observed: f64,
    pub message: String,
    pub raised_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_at: Option<Timestamp>,
}

/// `GET /v1/stats/series` query string: exactly one of `edge`,
/// `agent_edge` or `stage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// A stage-to-stage edge, as `FROM:TO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// An agent-to-agent edge (sender to accepting agent), as `FROM:TO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_edge: Option<String>,
    /// A stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// How far back from now, in whole one-minute buckets: `15m`, `1h`
    /// (the default), at most `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// `GET /v1/stats/series` answer: one point per one-minute bucket of the
/// window (buckets with no activity included, as zeros), and the baselines
/// anomaly detection compares the latest window with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    /// `edge`, `agent_edge` or `stage`.
    pub scope: String,
    /// The edge's sender or the stage.
    pub from: String,
    /// The edge's receiver; absent for a stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The first bucket's start and the window's end (the end of the current bucket).
    pub start: Timestamp,
    pub end: Timestamp,
    /// The width of one point (60000).
    pub bucket_ms: u64,
    pub points: Vec<SeriesPoint>,
    pub baseline: SeriesBaseline,
    /// True when the window held more rollups than one answer reads.
    #[serde(default)]
    pub truncated: bool,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesPoint {
    /// The bucket's start.
    pub at: Timestamp,
    /// Edges: handoffs sent and accepted in the bucket.
    pub handoffs: u64,
    pub accepted: u64,
    /// Edges: accept latency of the handoffs accepted in the bucket (absent with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    /// Edges: accepted of settled handoffs, 0 to 1 (absent with none settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Stages: tasks that arrived (submitted or handed in) and were claimed.
    pub arrivals: u64,
    pub claims: u64,
}

/// What anomaly detection learnt from the history before its latest window:
/// an EWMA centre and a robust spread (1.4826 x the median absolute
/// deviation) per metric. Absent where the history is too short to judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesBaseline {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_latency_ms: Option<BaselineValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<BaselineValue>,
    /// Net growth (arrivals minus claims) per bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_growth: Option<BaselineValue>,
    /// The history the baselines learnt from: its start and end.
    pub history_start: Timestamp,
    pub history_end: Timestamp,
}

/// One learnt baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BaselineValue {
    pub centre: f64,
    pub spread: f64,
}
