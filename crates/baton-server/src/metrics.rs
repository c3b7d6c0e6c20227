//! Handoff metrics in the server: the `Aggregator` folds the store's
//! observations (`ReadyListener::observed`, called after each commit) into
//! in-memory rollup deltas, per one-minute bucket and key
//! (`baton_core::metrics::rollup_deltas`), and into process-lifetime totals
//! for `/metrics`. `run` flushes the deltas to the store every
//! `flush_interval_ms` with `Op::MergeRollups` in batches of at most
//! `flush_batch_max` (and once more at shutdown), then runs anomaly detection
//! (`crate::anomaly`) when this process holds the metrics duty. Rollups merge
//! by addition, so every replica flushes its own deltas into the same rows.
//!
//! Reads: `window` merges the stored rollups of a window with the deltas not
//! yet flushed, per key (`/v1/stats`, `baton gate`, anomaly detection); other
//! replicas' unflushed deltas show up within their flush interval. The purge
//! of rollups older than `retention_ms` is the sweeper's (`crate::sweeper`).
//!
//! Memory is bounded: at most `PENDING_KEYS_MAX` (bucket, key) deltas wait for
//! a flush and `TOTAL_KEYS_MAX` keys have totals; past either, observations
//! of new keys are dropped and counted (`dropped`), never queued without end.

use crate::state::AppState;
use baton_core::metrics::{BUCKET_MS, Counts, Observation, Rollup, RollupKey, bucket_of, rollup_deltas};
use baton_core::{Error, Millis, Op, StageGauge};
use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Mutex;
use std::time::Duration;

/// (bucket, key) deltas waiting for a flush, at most.
pub const PENDING_KEYS_MAX: usize = 65_536;
/// Keys with process-lifetime totals (`/metrics` series), at most.
pub const TOTAL_KEYS_MAX: usize = 8_192;
/// Rollups one store read of a window returns at most (one page).
pub const WINDOW_PAGE_MAX: usize = 4_096;
/// Pages one window read takes at most; past it the answer is `truncated`.
pub const WINDOW_PAGES_MAX: usize = 64;
/// Store calls one flush makes at most; what is left waits for the next.
pub const FLUSH_BATCHES_MAX: usize = 64;
/// Buckets of history anomaly detection may read per run (one day).
pub const ANOMALY_HISTORY_BUCKETS_MAX: usize = 1_440;

/// How the server keeps its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsOptions {
    /// Whether `serve` runs the flush (and detection) task.
    pub enabled: bool,
    /// How often this process adds its deltas to the stored rollups.
    pub flush_interval_ms: u64,
    /// Rollups per `MergeRollups` call (within the store's `rollups_merge_max`).
    pub flush_batch_max: usize,
    /// How long stored rollups are kept; the sweeper purges older buckets.
    pub retention_ms: Millis,
    /// Stages one gauge read counts at most (`Store::stage_gauges`).
    pub stages_max: usize,
    /// Anomaly detection (`crate::anomaly`).
    pub anomaly: crate::anomaly::AnomalyOptions,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            flush_interval_ms: 5_000,
            flush_batch_max: 1_024,
            retention_ms: 8 * 24 * 3_600_000,
            stages_max: 1_000,
            anomaly: crate::anomaly::AnomalyOptions::default(),
        }
    }
}

impl MetricsOptions {
    /// Refuses settings the metrics task cannot run with; `serve` calls it.
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.anomaly;
        if self.flush_interval_ms == 0 || self.flush_batch_max == 0 || self.stages_max == 0 {
            return Err("flush_interval_ms, flush_batch_max and stages_max must be at least 1".into());
        }
        if a.window_ms < BUCKET_MS || a.interval_ms < 1 {
            return Err(format!("the anomaly window must be at least one bucket ({BUCKET_MS} ms)"));
        }
        if a.history_buckets < a.history_buckets_min || a.history_buckets > ANOMALY_HISTORY_BUCKETS_MAX {
            return Err(format!(
                "anomaly history_buckets must be from history_buckets_min ({}) to {ANOMALY_HISTORY_BUCKETS_MAX}",
                a.history_buckets_min
            ));
        }
        let history_ms = Millis::try_from(a.history_buckets).unwrap_or(Millis::MAX).saturating_mul(BUCKET_MS);
        if self.retention_ms < a.window_ms.saturating_add(history_ms) {
            return Err("retention_ms must cover the anomaly window and its history".into());
        }
        Ok(())
    }
}

/// Folds observations into deltas and totals; lives in the `ReadyHub`.
#[derive(Debug, Default)]
pub struct Aggregator {
    inner: Mutex<Folded>,
}

#[derive(Debug, Default)]
struct Folded {
    pending: BTreeMap<(Millis, RollupKey), Counts>,
    totals: BTreeMap<RollupKey, Counts>,
    /// Observations folded since the process started.
    observed: u64,
    /// Deltas dropped because a bound was reached.
    dropped: u64,
    flushes: u64,
    flush_failures: u64,
}

/// The aggregator's own health, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregatorHealth {
    pub observed: u64,
    pub dropped: u64,
    pub pending: usize,
    pub flushes: u64,
    pub flush_failures: u64,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds committed changes (the store's listener calls this after commit).
    pub fn observe(&self, changes: &[Observation]) {
        let mut deltas = BTreeMap::new();
        for obs in changes {
            rollup_deltas(obs, &mut deltas);
        }
        let mut f = self.lock();
        f.observed += changes.len() as u64;
        for ((bucket, key), counts) in deltas {
            if f.totals.len() < TOTAL_KEYS_MAX || f.totals.contains_key(&key) {
                f.totals.entry(key.clone()).or_default().merge(&counts);
            } else {
                f.dropped += 1;
            }
            let slot = (bucket, key);
            if f.pending.len() < PENDING_KEYS_MAX || f.pending.contains_key(&slot) {
                f.pending.entry(slot).or_default().merge(&counts);
            } else {
                f.dropped += 1;
            }
        }
    }

    /// Takes up to `max` pending deltas, oldest buckets first.
    pub fn take(&self, max: usize) -> Vec<Rollup> {
        let mut f = self.lock();
        let mut out = Vec::with_capacity(max.min(f.pending.len()));
        while out.len() < max {
            let Some(((bucket, key), counts)) = f.pending.pop_first() else { break };
            out.push(Rollup { bucket, key, counts });
        }
        out
    }

    /// Puts back deltas a flush could not store (merged with newer ones).
    pub fn restore(&self, rollups: Vec<Rollup>) {
        let mut f = self.lock();
        f.flush_failures += 1;
        for r in rollups {
            f.pending.entry((r.bucket, r.key)).or_default().merge(&r.counts);
        }
    }

    /// The pending deltas of buckets in `from..to`.
    pub fn pending(&self, from: Millis, to: Millis) -> Vec<Rollup> {
        let f = self.lock();
        f.pending
            .iter()
            .filter(|((b, _), _)| *b >= from && *b < to)
            .map(|((bucket, key), counts)| Rollup {
                bucket: *bucket,
                key: key.clone(),
                counts: counts.clone(),
            })
            .collect()
    }

    /// Process-lifetime totals per key.
    pub fn totals(&self) -> BTreeMap<RollupKey, Counts> {
        self.lock().totals.clone()
    }

    pub fn health(&self) -> AggregatorHealth {
        let f = self.lock();
        AggregatorHealth {
            observed: f.observed,
            dropped: f.dropped,
            pending: f.pending.len(),
            flushes: f.flushes,
            flush_failures: f.flush_failures,
        }
    }

    fn flushed(&self) {
        self.lock().flushes += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Folded> {
        // A panic while folding leaves counters, not invariants: go on.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs until shutdown: flushes every `flush_interval_ms`, runs anomaly
/// detection when due, and flushes once more on the way out.
pub async fn run(state: AppState) {
    let options = state.options().metrics.clone();
    let mut shutdown = pin!(state.shutting_down());
    let mut detector = crate::anomaly::Detector::new(options.anomaly.clone());
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(options.flush_interval_ms.max(1))) => {}
            () = &mut shutdown => break,
        }
        flush(&state).await;
        detector.tick(&state).await;
    }
    let left = flush(&state).await;
    tracing::debug!(left, "metrics flushed at shutdown");
}

/// Adds the pending deltas to the stored rollups, `flush_batch_max` per
/// store call, at most `FLUSH_BATCHES_MAX` calls; returns how many were
/// stored. A failed call puts its batch back for the next flush.
pub async fn flush(state: &AppState) -> usize {
    let batch_max =
        state.options().metrics.flush_batch_max.min(state.options().limits.rollups_merge_max).max(1);
    let metrics = state.hub().metrics();
    let mut stored = 0;
    for _ in 0..FLUSH_BATCHES_MAX {
        let batch = metrics.take(batch_max);
        if batch.is_empty() {
            break;
        }
        let n = batch.len();
        match state.store().execute(Op::MergeRollups(batch.clone()), None).await {
            Ok(_) => {
                stored += n;
                metrics.flushed();
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: storing rollups failed; keeping them for the next flush");
                metrics.restore(batch);
                break;
            }
        }
        if n < batch_max {
            break;
        }
    }
    stored
}

/// A window's counters per key: the stored rollups merged with this
/// process's unflushed deltas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The first bucket in the window.
    pub from: Millis,
    /// The window's end (exclusive).
    pub to: Millis,
    pub keys: BTreeMap<RollupKey, Counts>,
    /// Counters per bucket and key, when asked for (`window_by_bucket`).
    pub buckets: BTreeMap<(Millis, RollupKey), Counts>,
    /// Not every stored rollup of the window was read (`WINDOW_PAGES_MAX`).
    pub truncated: bool,
}

/// The window of buckets from the one holding `from` to `to`, merged per key.
pub async fn window(state: &AppState, from: Millis, to: Millis) -> Result<Window, Error> {
    read_window(state, from, to, false).await
}

/// As `window`, also keeping each bucket's counters (anomaly detection).
pub async fn window_by_bucket(state: &AppState, from: Millis, to: Millis) -> Result<Window, Error> {
    read_window(state, from, to, true).await
}

async fn read_window(state: &AppState, from: Millis, to: Millis, by_bucket: bool) -> Result<Window, Error> {
    let from = bucket_of(from);
    let mut w = Window { from, to, ..Window::default() };
    let add = |w: &mut Window, r: Rollup| {
        if by_bucket {
            w.buckets.entry((r.bucket, r.key.clone())).or_default().merge(&r.counts);
        }
        w.keys.entry(r.key).or_default().merge(&r.counts);
    };
    let mut cursor = from;
    let mut pages = 0;
    while cursor < to {
        if pages == WINDOW_PAGES_MAX {
            w.truncated = true;
            break;
        }
        pages += 1;
        let page = state.store().rollups(cursor, to, WINDOW_PAGE_MAX).await?;
        let full = page.len() >= WINDOW_PAGE_MAX;
        let last = page.last().map(|r| r.bucket);
        match (full, last) {
            (false, _) | (true, None) => {
                page.into_iter().for_each(|r| add(&mut w, r));
                break;
            }
            (true, Some(last)) if last == cursor => {
                // One bucket fills a page: keep what came, skip the rest of it.
                w.truncated = true;
                page.into_iter().for_each(|r| add(&mut w, r));
                cursor = last + BUCKET_MS;
            }
            (true, Some(last)) => {
                // The last bucket may be cut short: read it again from its start.
                page.into_iter().filter(|r| r.bucket < last).for_each(|r| add(&mut w, r));
                cursor = last;
            }
        }
    }
    for r in state.hub().metrics().pending(from, to) {
        add(&mut w, r);
    }
    Ok(w)
}

/// Live tasks per stage (backlog, oldest waiting, in flight), by name.
pub async fn gauges(state: &AppState) -> Result<BTreeMap<String, StageGauge>, Error> {
    let gauges = state.store().stage_gauges(state.options().metrics.stages_max).await?;
    Ok(gauges.into_iter().map(|g| (g.stage.as_str().to_owned(), g)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::metrics::Observation;
    use baton_core::{Actor, EventKind, StageName, TaskId};

    fn claimed(at: Millis, stage: &str, waited: Millis) -> Observation {
        Observation {
            at,
            task: TaskId(uuid::Uuid::nil()),
            kind: EventKind::Claimed,
            from: StageName::new(stage),
            stage: StageName::new(stage),
            actor: Actor::Principal("x".into()),
            elapsed_ms: Some(waited),
            handoff: None,
            trace: None,
        }
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(MetricsOptions::default().validate(), Ok(()));
        let bad = |adjust: fn(&mut MetricsOptions)| {
            let mut o = MetricsOptions::default();
            adjust(&mut o);
            o.validate().is_err()
        };
        assert!(bad(|o| o.flush_interval_ms = 0));
        assert!(bad(|o| o.retention_ms = 30 * BUCKET_MS));
        assert!(bad(|o| o.anomaly.window_ms = 1_000));
        assert!(bad(|o| o.anomaly.history_buckets = ANOMALY_HISTORY_BUCKETS_MAX + 1));
    }

    #[test]
    fn observations_fold_into_deltas_and_totals_and_take_empties_them() {
        let agg = Aggregator::new();
        agg.observe(&[claimed(0, "a", 10), claimed(1, "a", 30), claimed(BUCKET_MS, "a", 20)]);
        let key = RollupKey::Stage { stage: StageName::new("a") };
        assert_eq!(agg.totals()[&key].claims, 3);
        assert_eq!(agg.pending(0, BUCKET_MS).len(), 1);
        let taken = agg.take(1);
        assert_eq!((taken[0].bucket, taken[0].counts.claims), (0, 2));
        agg.restore(taken);
        assert_eq!(agg.take(10).len(), 2);
        assert!(agg.take(10).is_empty());
        assert_eq!(agg.health().flush_failures, 1);
    }
}
