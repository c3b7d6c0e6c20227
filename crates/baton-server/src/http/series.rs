//! `GET /v1/stats/series` (operators and admins): one edge's or stage's
//! counters per one-minute bucket over a window, with the baselines anomaly
//! detection learns (`crate::anomaly::Baseline`) from the history before its
//! latest window, so a chart can draw a metric against what is normal. Reads
//! the same merged rollups as `/v1/stats` (`crate::metrics::window_by_bucket`).

use crate::anomaly::Baseline;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::StatsRefusals;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_api::Timestamp;
use baton_core::metrics::{BUCKET_MS, Counts, RollupKey, bucket_of};
use baton_core::{AgentId, Millis, StageName};

/// Buckets one series answers at most (one day of minutes).
pub const SERIES_BUCKETS_MAX: i64 = 1_440;

/// `GET /v1/stats/series?edge=A:B|agent_edge=A:B|stage=S&window=1h`.
#[utoipa::path(
    get,
    path = "/v1/stats/series",
    operation_id = "stats_series",
    summary = "One edge's or stage's metrics per minute, with their learnt baselines",
    tag = "metrics",
    params(api::SeriesQuery),
    responses(
        (status = 200, description = "One point per one-minute bucket of the window, and the baselines.", body = api::Series),
        StatsRefusals,
    ),
)]
pub async fn series(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::SeriesQuery>,
) -> Result<Json<api::Series>, ApiError> {
    principal.check_operator("read metrics")?;
    let key = match (&query.edge, &query.agent_edge, &query.stage) {
        (Some(edge), None, None) => {
            let (from, to) = split_edge("edge", edge)?;
            RollupKey::Edge { from: StageName::new(from), to: StageName::new(to) }
        }
        (None, Some(edge), None) => {
            let (from, to) = split_edge("agent_edge", edge)?;
            RollupKey::AgentEdge { from: AgentId::new(from), to: AgentId::new(to) }
        }
        (None, None, Some(stage)) if !stage.is_empty() => RollupKey::Stage { stage: StageName::new(stage) },
        _ => return Err(ApiError::invalid("edge", "name exactly one of edge, agent_edge or stage")),
    };
    let window_ms = match &query.window {
        None => crate::http::stats::STATS_WINDOW_DEFAULT_MS,
        Some(text) => baton_api::workflow::parse_duration(text)
            .map_err(|problem| ApiError::invalid("window", problem))?,
    };
    let buckets = (window_ms + BUCKET_MS - 1) / BUCKET_MS;
    if buckets <= 0 || buckets > SERIES_BUCKETS_MAX || window_ms > state.options().metrics.retention_ms {
        return Err(ApiError::invalid(
            "window",
            "must be more than 0 and at most 1d (1440 one-minute buckets) and the rollups' retention",
        ));
    }
    let o = &state.options().metrics.anomaly;
    let now = state.clock().now();
    let end = bucket_of(now) + BUCKET_MS;
    let start = end - buckets * BUCKET_MS;
    // The detector's latest window, and the history its baselines learn from.
    let detector_from = end - (o.window_ms / BUCKET_MS).max(1) * BUCKET_MS;
    let history_from = detector_from - Millis::try_from(o.history_buckets).unwrap_or(0) * BUCKET_MS;
    let read = crate::metrics::window_by_bucket(&state, start.min(history_from), end).await?;
    let of_key: Vec<(Millis, &Counts)> =
        read.buckets.iter().filter(|((_, k), _)| *k == key).map(|((b, _), c)| (*b, c)).collect();

    let mut points = Vec::with_capacity(usize::try_from(buckets).unwrap_or(0));
    let mut at = start;
    let empty = Counts::default();
    while at < end {
        let c = of_key.iter().find(|(b, _)| *b == at).map_or(&empty, |(_, c)| *c);
        points.push(point(at, c));
        at += BUCKET_MS;
    }

    let past: Vec<(Millis, &Counts)> =
        of_key.iter().filter(|(b, _)| *b >= history_from && *b < detector_from).copied().collect();
    let value = |b: Baseline| api::BaselineValue { centre: b.centre, spread: b.spread };
    let mut baseline = api::SeriesBaseline {
        accept_latency_ms: None,
        success_rate: None,
        backlog_growth: None,
        history_start: Timestamp(history_from),
        history_end: Timestamp(detector_from),
    };
    match &key {
        RollupKey::Edge { .. } | RollupKey::AgentEdge { .. } => {
            let latency: Vec<f64> = past.iter().filter_map(|(_, c)| c.accept_latency.mean_ms()).collect();
            baseline.accept_latency_ms = Baseline::learn(o, &latency).map(value);
            if matches!(key, RollupKey::Edge { .. }) {
                let success: Vec<f64> = past.iter().filter_map(|(_, c)| c.success_rate()).collect();
                baseline.success_rate = Baseline::learn(o, &success).map(value);
            }
        }
        RollupKey::Stage { .. } => {
            // Every history bucket counts for growth (an empty one is 0), as
            // the detector counts it.
            let n = usize::try_from((detector_from - history_from) / BUCKET_MS).unwrap_or(0);
            let mut per_bucket = vec![0.0; n];
            for (bucket, c) in &past {
                if let Some(slot) =
                    per_bucket.get_mut(usize::try_from((bucket - history_from) / BUCKET_MS).unwrap_or(n))
                {
                    *slot = (c.submitted + c.handoffs) as f64 - c.claims as f64;
                }
            }
            let active = past.iter().filter(|(_, c)| c.submitted + c.handoffs + c.claims > 0).count();
            if active >= o.history_buckets_min {
                baseline.backlog_growth = Baseline::learn(o, &per_bucket).map(value);
            }
        }
    }
    let (scope, from, to) = match &key {
        RollupKey::Edge { from, to } => ("edge", from.to_string(), Some(to.to_string())),
        RollupKey::AgentEdge { from, to } => ("agent_edge", from.to_string(), Some(to.to_string())),
        RollupKey::Stage { stage } => ("stage", stage.to_string(), None),
    };
    Ok(Json(api::Series {
        scope: scope.to_owned(),
        from,
        to,
        start: Timestamp(start),
        end: Timestamp(end),
        bucket_ms: BUCKET_MS as u64,
        points,
        baseline,
        truncated: read.truncated,
    }))
}

fn point(at: Millis, c: &Counts) -> api::SeriesPoint {
    let h = &c.accept_latency;
    api::SeriesPoint {
        at: Timestamp(at),
        handoffs: c.handoffs,
        accepted: c.accepted,
        p50_ms: h.quantile(0.50),
        p95_ms: h.quantile(0.95),
        p99_ms: h.quantile(0.99),
        mean_ms: h.mean_ms(),
        success_rate: c.success_rate(),
        arrivals: c.submitted + c.handoffs,
        claims: c.claims,
    }
}

fn split_edge<'a>(field: &str, edge: &'a str) -> Result<(&'a str, &'a str), ApiError> {
    match edge.split_once(':') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok((from, to)),
        _ => Err(ApiError::invalid(field, "write the edge as FROM:TO")),
    }
}
