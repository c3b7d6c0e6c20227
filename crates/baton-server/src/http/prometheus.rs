//! `GET /metrics` (operators and admins; open with auth off): the edge and
//! stage metrics in the OpenMetrics text format, encoded by the
//! `prometheus-client` crate. Counters and latency histograms are this
//! process's totals since it started (the aggregator's, `crate::metrics`:
//! Prometheus sums replicas and computes rates itself); gauges come from one
//! store read per scrape (backlog, oldest waiting, in flight, blocked per
//! stage; open anomalies) plus the process's own health (store reachable,
//! observations folded, deltas pending and dropped, flushes). Each scrape
//! builds a small registry around a snapshot; nothing is kept between them.

use crate::http::error::ApiError;
use crate::http::principal::Principal;
use crate::metrics::AggregatorHealth;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use baton_core::StageGauge;
use baton_core::metrics::{Counts, HISTOGRAM_BUCKETS, Histogram, RollupKey, bucket_bound};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// The media type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Open anomalies a scrape counts at most.
pub const SCRAPE_ANOMALIES_MAX: usize = 500;

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics (OpenMetrics text)",
    tag = "metrics",
    responses(
        (status = 200, description = "Edge and stage counters, latency histograms, stage gauges and process \
            health, in the OpenMetrics text format.", body = String, content_type = "application/openmetrics-text"),
        crate::http::openapi::MetricsRefusals,
    ),
)]
pub async fn metrics(State(state): State<AppState>, principal: Principal) -> Result<Response, ApiError> {
    principal.check_operator("read metrics")?;
    let gauges = state.store().stage_gauges(state.options().metrics.stages_max).await;
    let open = state.store().anomalies(0, SCRAPE_ANOMALIES_MAX, true).await.map(|a| a.len());
    let snapshot = Snapshot {
        totals: state.hub().metrics().totals(),
        store_up: gauges.is_ok() && open.is_ok(),
        gauges: gauges.unwrap_or_default(),
        open_anomalies: open.unwrap_or(0),
        health: state.hub().metrics().health(),
        now: state.clock().now(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|_| ApiError::internal())?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// What one scrape reports.
#[derive(Debug)]
struct Snapshot {
    totals: BTreeMap<RollupKey, Counts>,
    gauges: Vec<StageGauge>,
    store_up: bool,
    open_anomalies: usize,
    health: AggregatorHealth,
    now: baton_core::Millis,
}

type Labels = Vec<(&'static str, String)>;
/// A counter family: name, help, and how to read it from a key's counts.
type CounterSpec = (&'static str, &'static str, fn(&Counts) -> u64);
/// A stage gauge family: name, help, and how to read it at `now`.
type GaugeSpec = (&'static str, &'static str, fn(&StageGauge, i64) -> f64);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let edges: Vec<(Labels, &Counts)> = self
            .totals
            .iter()
            .filter_map(|(key, c)| match key {
                RollupKey::Edge { from, to } => Some((edge_labels("stage", from.as_str(), to.as_str()), c)),
                RollupKey::AgentEdge { from, to } => {
                    Some((edge_labels("agent", from.as_str(), to.as_str()), c))
                }
                RollupKey::Stage { .. } => None,
            })
            .collect();
        let stages: Vec<(Labels, &Counts)> = self
            .totals
            .iter()
            .filter_map(|(key, c)| match key {
                RollupKey::Stage { stage } => Some((vec![("stage", stage.as_str().to_owned())], c)),
                _ => None,
            })
            .collect();

        let edge_counters: [CounterSpec; 6] = [
            ("baton_edge_handoffs", "Handoffs sent along the edge.", |c| c.handoffs),
            ("baton_edge_accepted", "Handoffs accepted by a claim.", |c| c.accepted),
            ("baton_edge_timeouts", "Handoffs re-offered after accept_within passed.", |c| c.timeouts),
            ("baton_edge_reroutes", "Handoffs rerouted to the fallback stage.", |c| c.rerouted),
            ("baton_edge_escalations", "Handoffs escalated to a human stage.", |c| c.escalated),
            ("baton_edge_cancelled", "Handoffs cancelled before acceptance.", |c| c.cancelled),
        ];
        for (name, help, get) in edge_counters {
            counter_family(&mut encoder, name, help, &edges, get)?;
        }
        histogram_family(
            &mut encoder,
            "baton_edge_accept_latency_seconds",
            "From handoff to acceptance.",
            &edges,
            |c| &c.accept_latency,
        )?;

        let stage_counters: [CounterSpec; 10] = [
            ("baton_stage_submitted", "Tasks submitted into the stage.", |c| c.submitted),
            ("baton_stage_handoffs_in", "Handoffs into the stage.", |c| c.handoffs),
            ("baton_stage_claims", "Claims at the stage.", |c| c.claims),
            ("baton_stage_completes", "Holder calls that finished the stage's part.", |c| c.completed),
            ("baton_stage_failures", "Failures reported at the stage.", |c| c.failed),
            ("baton_stage_releases", "Tasks released back to the stage.", |c| c.released),
            ("baton_stage_lease_expiries", "Leases that expired at the stage.", |c| c.lease_expired),
            ("baton_stage_timeouts", "Re-offers after accept_within passed.", |c| c.timeouts),
            ("baton_stage_reroutes", "Tasks rerouted away from the stage.", |c| c.rerouted),
            ("baton_stage_escalations", "Tasks escalated from the stage.", |c| c.escalated),
        ];
        for (name, help, get) in stage_counters {
            counter_family(&mut encoder, name, help, &stages, get)?;
        }
        histogram_family(&mut encoder, "baton_stage_wait_seconds", "From offer to claim.", &stages, |c| {
            &c.wait
        })?;

        let live: Vec<(Labels, &StageGauge)> =
            self.gauges.iter().map(|g| (vec![("stage", g.stage.as_str().to_owned())], g)).collect();
        let stage_gauges: [GaugeSpec; 4] = [
            ("baton_stage_backlog", "Tasks waiting and claimable now.", |g, _| g.ready as f64),
            ("baton_stage_in_flight", "Tasks held under a lease now.", |g, _| g.held as f64),
            ("baton_stage_blocked", "Tasks waiting for their children now.", |g, _| g.blocked as f64),
            (
                "baton_stage_oldest_waiting_seconds",
                "How long the oldest claimable task has waited.",
                |g, now| {
                    g.oldest_ready_since.map_or(0.0, |since| now.saturating_sub(since).max(0) as f64 / 1000.0)
                },
            ),
        ];
        for (name, help, get) in stage_gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, g) in &live {
                family.encode_family(labels)?.encode_gauge(&get(g, self.now))?;
            }
        }

        let h = &self.health;
        let process_gauges: [(&str, &str, f64); 3] = [
            (
                "baton_store_up",
                "1 when the last store read of this scrape succeeded.",
                f64::from(self.store_up),
            ),
            ("baton_anomalies_open", "Anomalies not acknowledged.", self.open_anomalies as f64),
            ("baton_metrics_pending_rollups", "Rollup deltas waiting for a flush.", h.pending as f64),
        ];
        for (name, help, value) in process_gauges {
            encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)?;
        }
        let process_counters: [(&str, &str, u64); 4] = [
            ("baton_metrics_observations", "Committed changes folded into the metrics.", h.observed),
            ("baton_metrics_dropped", "Rollup deltas dropped at a bound.", h.dropped),
            ("baton_metrics_flushes", "Rollup batches stored.", h.flushes),
            (
                "baton_metrics_flush_failures",
                "Rollup batches the store refused; kept for later.",
                h.flush_failures,
            ),
        ];
        for (name, help, value) in process_counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

fn edge_labels(kind: &'static str, from: &str, to: &str) -> Labels {
    vec![("kind", kind.to_owned()), ("from", from.to_owned()), ("to", to.to_owned())]
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, &Counts)],
    get: fn(&Counts) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, c) in series {
        family
            .encode_family(labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&get(c), None)?;
    }
    Ok(())
}

/// A histogram family in seconds, on the rollups' log-scale buckets (up to
/// the highest one in use, then `+Inf`).
fn histogram_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, &Counts)],
    get: fn(&Counts) -> &Histogram,
) -> Result<(), std::fmt::Error> {
    // The last rollup bucket also holds everything above it: it is `+Inf` here.
    let used = series.iter().map(|(_, c)| get(c).buckets.len()).max().unwrap_or(0).min(HISTOGRAM_BUCKETS - 1);
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, c) in series {
        let h = get(c);
        let mut buckets: Vec<(f64, u64)> =
            (0..used).map(|i| (bucket_bound(i) / 1000.0, h.buckets.get(i).copied().unwrap_or(0))).collect();
        let counted: u64 = buckets.iter().map(|(_, n)| n).sum();
        buckets.push((f64::INFINITY, h.count.saturating_sub(counted)));
        family.encode_family(labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_ms as f64 / 1000.0,
            h.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}
