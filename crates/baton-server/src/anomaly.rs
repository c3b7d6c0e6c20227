//! Anomaly detection over the rollups, a singleton duty: every
//! `interval_ms` the process holding `SingletonDuty::Metrics` reads the last
//! `history_buckets` one-minute buckets before the evaluation window and the
//! window itself (`window_ms`, whole buckets ending at the current one), and
//! compares each edge's and stage's window with a baseline learnt from that
//! history: an EWMA of the metric per bucket (`ewma_alpha`) for the centre
//! and the median absolute deviation of the per-bucket values (scaled by
//! 1.4826, a standard deviation under normal noise) for the spread. The
//! baseline is recomputed from stored rollups on every run, so a replica
//! that takes the duty over learns at once, with nothing to hand over.
//!
//! Three metrics, each flagged only with enough samples in the window and
//! enough buckets of history:
//! - `accept_latency` (stage and agent edges): the window's mean accept
//!   latency is at least `latency_ratio` times the baseline and more than
//!   `mad_k` spreads above it (30 s becoming 60 s);
//! - `backlog_growth` (stages): arrivals (submitted + handed in) outran
//!   claims over the window by at least `backlog_growth_min` tasks, by more
//!   than `mad_k` spreads of the per-bucket net growth (times the square root
//!   of the window's buckets) above the expected growth, arrivals exceed
//!   claims by `backlog_ratio`, and the stage's backlog now holds at least
//!   half that growth (it grows; it was not drained some other way);
//! - `success_rate` (stage edges): the window's rate (accepted of settled)
//!   is below the baseline by `success_drop_min`, by more than `mad_k`
//!   spreads and by more than `mad_k` standard errors of a binomial rate
//!   over the window's samples, with at least `success_failures_min`
//!   handoffs not accepted.
//!
//! Deduplication: one open anomaly per key and metric. A key that departs is
//! raised (`Op::RaiseAnomaly`, which also writes the webhook notice) unless
//! it is both open in the store and departed within `clear_ms`; so a
//! departure that persists (or flickers while the baseline adapts) is raised
//! once, again after an acknowledgement, and again after the metric stayed
//! normal for `clear_ms` and departs anew.

use crate::metrics::Window;
use crate::state::AppState;
use baton_core::metrics::{Anomaly, BUCKET_MS, Counts, RollupKey, bucket_of};
use baton_core::{Millis, Op, SingletonDuty};
use std::collections::{BTreeMap, BTreeSet};

/// Open anomalies one run reads at most, for deduplication.
pub const OPEN_ANOMALIES_MAX: usize = 500;
/// Anomalies one run raises at most; the rest are raised at the next run.
pub const RAISES_PER_RUN_MAX: usize = 64;

/// How anomalies are detected.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyOptions {
    pub enabled: bool,
    /// How often detection runs (on the process holding the duty).
    pub interval_ms: Millis,
    /// The evaluation window, in whole buckets up to now.
    pub window_ms: Millis,
    /// Buckets of history before the window that the baseline learns from.
    pub history_buckets: usize,
    /// Buckets with data a baseline needs before it judges anything.
    pub history_buckets_min: usize,
    /// The EWMA's weight of each newer bucket.
    pub ewma_alpha: f64,
    /// How many robust spreads (1.4826 x MAD) a departure must exceed.
    pub mad_k: f64,
    /// Samples (accepted handoffs; settled handoffs) a window needs.
    pub samples_min: u64,
    /// The window's accept latency must be at least this times the baseline.
    pub latency_ratio: f64,
    /// Net arrivals over claims in the window, at least.
    pub backlog_growth_min: u64,
    /// Arrivals must be at least this times the claims.
    pub backlog_ratio: f64,
    /// The success rate must fall at least this much (0.05: five points).
    pub success_drop_min: f64,
    /// Handoffs not accepted in the window, at least: one failure in a small
    /// window is noise, not a fall.
    pub success_failures_min: u64,
    /// How long a key must not depart before it counts as back to normal
    /// (and a new departure raises a new anomaly though the old is open).
    pub clear_ms: Millis,
}

impl Default for AnomalyOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: BUCKET_MS,
            window_ms: 5 * BUCKET_MS,
            history_buckets: 60,
            history_buckets_min: 10,
            ewma_alpha: 0.1,
            mad_k: 4.0,
            samples_min: 10,
            latency_ratio: 1.5,
            backlog_growth_min: 10,
            backlog_ratio: 1.25,
            success_drop_min: 0.05,
            success_failures_min: 4,
            clear_ms: 15 * BUCKET_MS,
        }
    }
}

/// What a run found departing: (key, metric) -> the anomaly to raise.
type Departures = BTreeMap<(RollupKey, &'static str), Anomaly>;

/// The detector's memory between runs: when each key last departed.
#[derive(Debug)]
pub struct Detector {
    options: AnomalyOptions,
    next_at: Option<Millis>,
    /// (key, metric) -> the last run at which it departed, kept for
    /// `clear_ms`; `None` until the first run as the duty's holder, which
    /// starts from the store's open anomalies.
    active: Option<BTreeMap<(RollupKey, String), Millis>>,
}

impl Detector {
    pub fn new(options: AnomalyOptions) -> Self {
        Self { options, next_at: None, active: None }
    }

    /// Runs detection if it is due and this process holds the duty; returns
    /// how many anomalies it raised.
    pub async fn tick(&mut self, state: &AppState) -> usize {
        let now = state.clock().now();
        if !self.options.enabled || self.next_at.is_some_and(|at| now < at) {
            return 0;
        }
        self.next_at = Some(now.saturating_add(self.options.interval_ms.max(1)));
        match state.store().holds_duty(SingletonDuty::Metrics).await {
            Ok(true) => {}
            Ok(false) => {
                // Another replica detects; start afresh if the duty comes back.
                self.active = None;
                return 0;
            }
            Err(error) => {
                tracing::warn!(%error, "anomaly detection: could not ask for the metrics duty");
                return 0;
            }
        }
        match self.run(state, now).await {
            Ok(raised) => raised,
            Err(error) => {
                tracing::warn!(%error, "anomaly detection failed; trying again next run");
                0
            }
        }
    }

    /// One run at `now`, regardless of the interval (the duty is held).
    pub async fn run(&mut self, state: &AppState, now: Millis) -> Result<usize, baton_core::Error> {
        let o = &self.options;
        // The window ends with the current bucket: latency shows as handoffs
        // are accepted, and a backlog grows by the minute.
        let to = bucket_of(now) + BUCKET_MS;
        let window_buckets = (o.window_ms / BUCKET_MS).max(1);
        let window_from = to - window_buckets * BUCKET_MS;
        let history_from = window_from - Millis::try_from(o.history_buckets).unwrap_or(0) * BUCKET_MS;
        let read = crate::metrics::window_by_bucket(state, history_from, to).await?;
        let gauges = crate::metrics::gauges(state).await?;
        let backlog = |stage: &str| gauges.get(stage).map_or(0, |g| g.ready);
        let found = departures(o, &read, window_from, now, &backlog);

        let open: BTreeSet<(RollupKey, String)> = state
            .store()
            .anomalies(0, OPEN_ANOMALIES_MAX, true)
            .await?
            .into_iter()
            .map(|(_, a)| (a.key, a.metric))
            .collect();
        let mut active =
            self.active.take().unwrap_or_else(|| open.iter().map(|slot| (slot.clone(), now)).collect());
        // A key is back to normal once it has not departed for `clear_ms`:
        // a baseline that adapts to a lasting shift must not make the same
        // anomaly flap open again.
        active.retain(|_, last| now.saturating_sub(*last) <= o.clear_ms);
        let mut raised = 0;
        for ((key, metric), anomaly) in found {
            let slot = (key, metric.to_owned());
            let deduplicated = open.contains(&slot) && active.contains_key(&slot);
            active.insert(slot, now);
            if deduplicated || raised == RAISES_PER_RUN_MAX {
                continue;
            }
            tracing::warn!(metric, message = %anomaly.message, "anomaly raised");
            state.store().execute(Op::RaiseAnomaly(anomaly), None).await?;
            raised += 1;
        }
        self.active = Some(active);
        Ok(raised)
    }
}

/// Every key and metric departing from its baseline in the window.
fn departures(
    o: &AnomalyOptions,
    read: &Window,
    window_from: Millis,
    now: Millis,
    backlog: &dyn Fn(&str) -> u64,
) -> Departures {
    // Per key: the history's buckets in order, and the window merged.
    let mut history: BTreeMap<&RollupKey, Vec<(Millis, &Counts)>> = BTreeMap::new();
    let mut window: BTreeMap<&RollupKey, Counts> = BTreeMap::new();
    for ((bucket, key), counts) in &read.buckets {
        if *bucket < window_from {
            history.entry(key).or_default().push((*bucket, counts));
        } else {
            window.entry(key).or_default().merge(counts);
        }
    }
    let window_buckets = ((read.to - window_from) / BUCKET_MS).max(1);
    let history_buckets = ((window_from - read.from) / BUCKET_MS).max(0);
    let mut out = Departures::new();
    let mut flag = |key: &RollupKey, metric: &'static str, baseline: f64, observed: f64, message: String| {
        out.insert(
            (key.clone(), metric),
            Anomaly {
                key: key.clone(),
                metric: metric.to_owned(),
                window_start: window_from,
                window_end: read.to,
                baseline,
                observed,
                message,
                raised_at: now,
                acked: None,
            },
        );
    };
    for (key, w) in &window {
        let past = history.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let name = describe(key);
        // Accept latency, on stage and agent edges.
        if matches!(key, RollupKey::Edge { .. } | RollupKey::AgentEdge { .. })
            && w.accept_latency.count >= o.samples_min
        {
            let series: Vec<f64> = past.iter().filter_map(|(_, c)| c.accept_latency.mean_ms()).collect();
            if let Some(base) = Baseline::learn(o, &series)
                && let Some(observed) = w.accept_latency.mean_ms()
                && observed >= o.latency_ratio * base.centre
                && observed - base.centre > o.mad_k * base.spread
            {
                flag(
                    key,
                    "accept_latency",
                    base.centre,
                    observed,
                    format!(
                        "{name}: mean accept latency {:.1} s over the window, baseline {:.1} s",
                        observed / 1000.0,
                        base.centre / 1000.0
                    ),
                );
            }
        }
        // Success rate, on stage edges.
        if let RollupKey::Edge { .. } = key {
            let settled = w.accepted + w.rerouted + w.escalated + w.cancelled;
            let series: Vec<f64> = past.iter().filter_map(|(_, c)| c.success_rate()).collect();
            // The window's rate is a binomial estimate: its own standard
            // error (with a failure rate of at least 1/n) bounds a fall too.
            let n = settled.max(1) as f64;
            let sampling = |centre: f64| {
                let q = (1.0 - centre).max(1.0 / n);
                (q * (1.0 - q) / n).sqrt()
            };
            if settled >= o.samples_min
                && settled - w.accepted >= o.success_failures_min
                && let Some(base) = Baseline::learn(o, &series)
                && let Some(observed) = w.success_rate()
                && base.centre - observed >= o.success_drop_min
                && base.centre - observed > o.mad_k * base.spread
                && base.centre - observed > o.mad_k * sampling(base.centre)
            {
                flag(
                    key,
                    "success_rate",
                    base.centre,
                    observed,
                    format!(
                        "{name}: success rate {:.1}% over the window ({settled} settled), baseline {:.1}%",
                        observed * 100.0,
                        base.centre * 100.0
                    ),
                );
            }
        }
        // Backlog growth, on stages: every history bucket counts (an empty one is 0).
        if let RollupKey::Stage { stage } = key {
            let arrivals = w.submitted + w.handoffs;
            let growth = arrivals as f64 - w.claims as f64;
            let mut per_bucket = vec![0.0; usize::try_from(history_buckets).unwrap_or(0)];
            for (bucket, c) in past {
                let i = usize::try_from((bucket - read.from) / BUCKET_MS).unwrap_or(0);
                if let Some(slot) = per_bucket.get_mut(i) {
                    *slot = (c.submitted + c.handoffs) as f64 - c.claims as f64;
                }
            }
            let active_buckets = past.iter().filter(|(_, c)| c.submitted + c.handoffs + c.claims > 0).count();
            let base =
                (active_buckets >= o.history_buckets_min).then(|| Baseline::learn(o, &per_bucket)).flatten();
            let n = window_buckets as f64;
            if let Some(base) = base
                && growth >= o.backlog_growth_min as f64
                && arrivals as f64 >= o.backlog_ratio * w.claims as f64
                && growth - n * base.centre > o.mad_k * base.spread.max(1.0) * n.sqrt()
                && backlog(stage.as_str()) as f64 >= growth / 2.0
            {
                flag(
                    key,
                    "backlog_growth",
                    n * base.centre,
                    growth,
                    format!(
                        "{name}: backlog grew by {growth:.0} over the window ({arrivals} arrived, {} claimed; \
                         {} waiting now), baseline growth {:.1}",
                        w.claims,
                        backlog(stage.as_str()),
                        n * base.centre
                    ),
                );
            }
        }
    }
    out
}

/// A learnt baseline: EWMA centre and robust spread.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub centre: f64,
    pub spread: f64,
}

impl Baseline {
    /// `None` with fewer than `history_buckets_min` values.
    pub fn learn(o: &AnomalyOptions, series: &[f64]) -> Option<Self> {
        if series.len() < o.history_buckets_min.max(1) {
            return None;
        }
        let mut centre = series[0];
        for x in &series[1..] {
            centre += o.ewma_alpha * (x - centre);
        }
        let mid = median(series.to_vec());
        let spread = 1.4826 * median(series.iter().map(|x| (x - mid).abs()).collect());
        Some(Self { centre, spread })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// A key as people read it.
pub fn describe(key: &RollupKey) -> String {
    match key {
        RollupKey::Edge { from, to } => format!("edge {from} -> {to}"),
        RollupKey::AgentEdge { from, to } => format!("agent edge {from} -> {to}"),
        RollupKey::Stage { stage } => format!("stage {stage}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_is_an_ewma_with_a_robust_spread() {
        let o = AnomalyOptions { history_buckets_min: 3, ..AnomalyOptions::default() };
        assert!(Baseline::learn(&o, &[1.0, 2.0]).is_none(), "too little history");
        let b = Baseline::learn(&o, &[10.0, 10.0, 12.0, 8.0, 1000.0]).expect("a baseline");
        assert!((b.spread - 1.4826 * 2.0).abs() < 1e-9, "one outlier does not widen the spread: {b:?}");
        assert_eq!(median(vec![3.0, 1.0, 2.0, 4.0]), 2.5);
    }
}
