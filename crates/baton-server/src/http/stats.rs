//! `GET /v1/stats` (operators and admins): per handoff edge (stage to stage,
//! agent to agent) and per stage, the counters of a window merged from the
//! stored rollups and this process's unflushed deltas (`crate::metrics`),
//! with each stage's live gauges (backlog, oldest waiting, in flight) from
//! one store read. `GET /v1/alerts` and `POST /v1/alerts/{id}/ack`: the
//! anomalies the detector raised (`crate::anomaly`), listed and acknowledged.

use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::{AckAlertRefusals, StatsRefusals};
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use baton_api as api;
use baton_api::Timestamp;
use baton_core::metrics::{Counts, Histogram, RollupKey};
use baton_core::{Millis, Op, OpOutcome};

/// The window when the query names none.
pub const STATS_WINDOW_DEFAULT_MS: Millis = 3_600_000;

/// `GET /v1/stats?window=1h&edge=A:B&stage=S`.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats",
    summary = "Handoff edge and stage metrics over a window",
    tag = "metrics",
    params(api::StatsQuery),
    responses(
        (status = 200, description = "Edges and stages over the window.", body = api::Stats),
        StatsRefusals,
    ),
)]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::StatsQuery>,
) -> Result<Json<api::Stats>, ApiError> {
    principal.check_operator("read metrics")?;
    let window_ms = match &query.window {
        None => STATS_WINDOW_DEFAULT_MS,
        Some(text) => baton_api::workflow::parse_duration(text)
            .map_err(|problem| ApiError::invalid("window", problem))?,
    };
    let retention = state.options().metrics.retention_ms;
    if window_ms <= 0 || window_ms > retention {
        return Err(ApiError::invalid(
            "window",
            format!("must be more than 0 and at most the rollups' retention ({retention} ms)"),
        ));
    }
    Ok(Json(compute(&state, window_ms, query.edge.as_deref(), query.stage.as_deref()).await?))
}

/// The stats of the window ending now, filtered by edge (`FROM:TO`) and stage.
pub async fn compute(
    state: &AppState,
    window_ms: Millis,
    edge: Option<&str>,
    stage: Option<&str>,
) -> Result<api::Stats, ApiError> {
    let now = state.clock().now();
    let window = crate::metrics::window(state, now.saturating_sub(window_ms), now.saturating_add(1)).await?;
    let gauges = crate::metrics::gauges(state).await?;
    let wanted_edge = |from: &str, to: &str| {
        edge.is_none_or(|e| e.len() == from.len() + 1 + to.len() && e.starts_with(from) && e.ends_with(to))
            && stage.is_none_or(|s| s == from || s == to)
    };
    let mut edges = Vec::new();
    let mut agent_edges = Vec::new();
    let mut stages = std::collections::BTreeMap::new();
    for (key, counts) in &window.keys {
        match key {
            RollupKey::Edge { from, to } if wanted_edge(from.as_str(), to.as_str()) => {
                edges.push(edge_stats(from.as_str(), to.as_str(), counts));
            }
            RollupKey::AgentEdge { from, to }
                if edge.is_some_and(|_| wanted_edge(from.as_str(), to.as_str())) =>
            {
                agent_edges.push(edge_stats(from.as_str(), to.as_str(), counts));
            }
            RollupKey::AgentEdge { from, to } if edge.is_none() && stage.is_none() => {
                agent_edges.push(edge_stats(from.as_str(), to.as_str(), counts));
            }
            RollupKey::Stage { stage: name }
                if edge.is_none() && stage.is_none_or(|s| s == name.as_str()) =>
            {
                stages.insert(name.as_str().to_owned(), stage_stats(name.as_str(), Some(counts)));
            }
            _ => {}
        }
    }
    if edge.is_none() {
        for (name, g) in &gauges {
            if stage.is_some_and(|s| s != name) {
                continue;
            }
            let s = stages.entry(name.clone()).or_insert_with(|| stage_stats(name, None));
            s.backlog = g.ready;
            s.in_flight = g.held;
            s.blocked = g.blocked;
            s.oldest_waiting_ms =
                g.oldest_ready_since.map(|since| u64::try_from(now.saturating_sub(since)).unwrap_or(0));
        }
    }
    Ok(api::Stats {
        from: Timestamp(window.from),
        to: Timestamp(now),
        window_ms: u64::try_from(window_ms).unwrap_or(0),
        edges,
        agent_edges,
        stages: stages.into_values().collect(),
        truncated: window.truncated,
    })
}

/// One edge's counters on the wire.
pub fn edge_stats(from: &str, to: &str, c: &Counts) -> api::EdgeStats {
    api::EdgeStats {
        from: from.to_owned(),
        to: to.to_owned(),
        handoffs: c.handoffs,
        accepted: c.accepted,
        accept_latency: latency(&c.accept_latency),
        timeouts: c.timeouts,
        reroutes: c.rerouted,
        escalations: c.escalated,
        cancelled: c.cancelled,
        samples: c.accepted + c.rerouted + c.escalated + c.cancelled,
        success_rate: c.success_rate(),
    }
}

fn stage_stats(stage: &str, c: Option<&Counts>) -> api::StageStats {
    let empty = Counts::default();
    let c = c.unwrap_or(&empty);
    api::StageStats {
        stage: stage.to_owned(),
        backlog: 0,
        oldest_waiting_ms: None,
        in_flight: 0,
        blocked: 0,
        submitted: c.submitted,
        handoffs_in: c.handoffs,
        claims: c.claims,
        completes: c.completed,
        failures: c.failed,
        releases: c.released,
        lease_expiries: c.lease_expired,
        timeouts: c.timeouts,
        reroutes: c.rerouted,
        escalations: c.escalated,
        wait: latency(&c.wait),
    }
}

fn latency(h: &Histogram) -> api::Latency {
    api::Latency {
        count: h.count,
        p50_ms: h.quantile(0.50),
        p95_ms: h.quantile(0.95),
        p99_ms: h.quantile(0.99),
        max_ms: (h.count > 0).then_some(h.max_ms),
    }
}

/// `GET /v1/alerts?all=false&after=0&limit=50`.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    operation_id = "list_alerts",
    summary = "List anomalies: open ones, or all",
    tag = "metrics",
    params(api::AlertQuery),
    responses(
        (status = 200, description = "Anomalies in the order they were raised.", body = api::AnomalyList),
        StatsRefusals,
    ),
)]
pub async fn alerts(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::AlertQuery>,
) -> Result<Json<api::AnomalyList>, ApiError> {
    principal.check_operator("list alerts")?;
    let max = state.options().limits.page_size_max;
    let limit = query.limit.map_or(baton_api::limits::PAGE_SIZE_DEFAULT as usize, |l| l as usize);
    if limit == 0 || limit > max {
        return Err(ApiError::limit("page_size_max", max as u64, format!("limit {limit}")));
    }
    let found = state.store().anomalies(query.after, limit, !query.all).await?;
    Ok(Json(api::AnomalyList { anomalies: found.into_iter().map(|(id, a)| anomaly(id, a)).collect() }))
}

/// `POST /v1/alerts/{id}/ack`.
#[utoipa::path(
    post,
    path = "/v1/alerts/{id}/ack",
    operation_id = "ack_alert",
    summary = "Acknowledge an anomaly (a second acknowledgement keeps the first)",
    tag = "metrics",
    params(("id" = u64, Path, description = "The anomaly's id.")),
    responses(
        (status = 200, description = "The anomaly as acknowledged.", body = api::Anomaly),
        AckAlertRefusals,
    ),
)]
pub async fn ack(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<api::Anomaly>, ApiError> {
    principal.check_operator("acknowledge alerts")?;
    let id: u64 =
        id.parse().map_err(|_| ApiError::invalid("id", "not an anomaly id (a positive integer)"))?;
    let exists = id > 0
        && state.store().anomalies(id - 1, 1, false).await?.first().is_some_and(|(found, _)| *found == id);
    if !exists {
        return Err(ApiError::not_found("anomaly", id));
    }
    let by = principal.name().unwrap_or("anonymous").to_owned();
    match state.store().execute(Op::AckAnomaly { id, by }, None).await? {
        OpOutcome::AckAnomaly(a) => Ok(Json(anomaly(id, a))),
        _ => Err(ApiError::internal()),
    }
}

/// A stored anomaly on the wire.
pub fn anomaly(id: u64, a: baton_core::metrics::Anomaly) -> api::Anomaly {
    let (scope, from, to) = match a.key {
        RollupKey::Edge { from, to } => ("edge", from.as_str().to_owned(), Some(to.as_str().to_owned())),
        RollupKey::AgentEdge { from, to } => {
            ("agent_edge", from.as_str().to_owned(), Some(to.as_str().to_owned()))
        }
        RollupKey::Stage { stage } => ("stage", stage.as_str().to_owned(), None),
    };
    let (acked_by, acked_at) = match a.acked {
        Some((by, at)) => (Some(by), Some(Timestamp(at))),
        None => (None, None),
    };
    api::Anomaly {
        id,
        scope: scope.to_owned(),
        from,
        to,
        metric: a.metric,
        window_start: Timestamp(a.window_start),
        window_end: Timestamp(a.window_end),
        baseline: a.baseline,
        observed: a.observed,
        message: a.message,
        raised_at: Timestamp(a.raised_at),
        acked_by,
        acked_at,
    }
}
