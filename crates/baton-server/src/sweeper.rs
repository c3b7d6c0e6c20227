//! The sweeper: the timers over `due_at`. It asks the store when the next task
//! is due, sleeps until then (at most `idle_ms_max`, so tasks that become due
//! earlier are not missed), and calls `fire_due` in batches, looping at once
//! while a batch comes back full. What firing does (lease expiry, re-offer,
//! reroute, escalation, retry, join deadline) is the engine's business.
//! Work the timers make ready wakes waiting claims through the store's
//! listener; after a batch the sweeper wakes every handoff-outcome wait, since
//! reroutes and escalations settle handoffs the server cannot name.
//! Once every `REQUEST_PURGE_INTERVAL_MS` it also deletes expired records of
//! keyed requests (`Idempotency-Key`), in bounded batches; the store already
//! ignores them, so the purge only keeps the table small. Once every
//! `ROLLUP_PURGE_INTERVAL_MS`, the process holding the metrics duty deletes
//! rollups older than `metrics.retention_ms`, in bounded batches too.

use crate::state::AppState;
use std::pin::pin;
use std::time::Duration;

/// Pause after a round in which the store fired nothing although a task
/// looked due (clock skew between the store and the server): no busy loop.
const NOTHING_FIRED_PAUSE_MS: u64 = 50;

/// How often the sweeper purges expired request records.
pub const REQUEST_PURGE_INTERVAL_MS: i64 = 60_000;

/// Batches one purge round deletes at most; the rest wait for the next round.
pub const REQUEST_PURGE_BATCHES_MAX: usize = 16;

/// How often the sweeper purges rollups past their retention.
pub const ROLLUP_PURGE_INTERVAL_MS: i64 = 60_000;

/// Batches one rollup purge round deletes at most.
pub const ROLLUP_PURGE_BATCHES_MAX: usize = 16;

/// Runs until shutdown begins.
pub async fn run(state: AppState) {
    let mut shutdown = pin!(state.shutting_down());
    let mut purge_at = state.clock().now();
    let mut rollup_purge_at = state.clock().now();
    loop {
        if state.clock().now() >= rollup_purge_at {
            let more = purge_rollups(&state).await;
            let wait = if more { 0 } else { ROLLUP_PURGE_INTERVAL_MS };
            rollup_purge_at = state.clock().now().saturating_add(wait);
        }
        if state.clock().now() >= purge_at {
            let purged = purge_requests(&state).await;
            // A round that hit its bound leaves more behind: go on next loop.
            let more = purged >= REQUEST_PURGE_BATCHES_MAX * purge_batch(&state);
            let wait = if more { 0 } else { REQUEST_PURGE_INTERVAL_MS };
            purge_at = state.clock().now().saturating_add(wait);
        }
        let pause = step(&state).await;
        if state.is_shutting_down() {
            return;
        }
        if pause == 0 {
            // Let other tasks run between full batches.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            () = &mut shutdown => return,
        }
    }
}

/// One round: fire what is due; returns how many milliseconds to sleep.
pub async fn step(state: &AppState) -> u64 {
    let options = &state.options().sweeper;
    let idle = options.idle_ms_max.max(1);
    let due = match state.store().next_due().await {
        Ok(Some(due)) => due,
        Ok(None) => return idle,
        Err(error) => {
            tracing::warn!(%error, "sweeper: the store did not say what is due");
            return idle;
        }
    };
    let now = state.clock().now();
    if due > now {
        return u64::try_from(due - now).unwrap_or(u64::MAX).min(idle);
    }
    match state.store().fire_due(options.batch_max).await {
        Ok(0) => NOTHING_FIRED_PAUSE_MS.min(idle),
        Ok(fired) => {
            tracing::debug!(fired, "sweeper fired due tasks");
            state.tasks().notify_all();
            0
        }
        Err(error) => {
            tracing::warn!(%error, "sweeper: firing due tasks failed");
            idle
        }
    }
}

/// Deletes expired request records, batch by batch, until a batch comes back
/// short or `REQUEST_PURGE_BATCHES_MAX` batches ran; returns how many.
pub async fn purge_requests(state: &AppState) -> usize {
    let batch = purge_batch(state);
    let mut purged = 0;
    for _ in 0..REQUEST_PURGE_BATCHES_MAX {
        match state.store().purge_requests(batch).await {
            Ok(n) => {
                purged += n;
                if n < batch {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "sweeper: purging expired request records failed");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::debug!(purged, "sweeper purged expired request records");
    }
    purged
}

/// Deletes rollups of buckets older than the retention, if this process
/// holds the metrics duty, batch by batch (the store cuts each at
/// `sweep_batch_max`); returns true when a round hit its bound and more may
/// be left.
pub async fn purge_rollups(state: &AppState) -> bool {
    match state.store().holds_duty(baton_core::SingletonDuty::Metrics).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(error) => {
            tracing::warn!(%error, "sweeper: could not ask for the metrics duty");
            return false;
        }
    }
    let before = state.clock().now().saturating_sub(state.options().metrics.retention_ms);
    let batch = state.options().limits.sweep_batch_max.max(1);
    let mut purged = 0;
    for _ in 0..ROLLUP_PURGE_BATCHES_MAX {
        match state.store().execute(baton_core::Op::PurgeRollups { before }, None).await {
            Ok(baton_core::OpOutcome::PurgeRollups(n)) => {
                purged += n;
                if n < batch {
                    if purged > 0 {
                        tracing::debug!(purged, "sweeper purged old rollups");
                    }
                    return false;
                }
            }
            Ok(_) => return false,
            Err(error) => {
                tracing::warn!(%error, "sweeper: purging old rollups failed");
                return false;
            }
        }
    }
    true
}

/// Records one purge batch deletes: the sweeper's batch, within the store's
/// `sweep_batch_max` (a batch the store cuts short would look like the last).
fn purge_batch(state: &AppState) -> usize {
    let options = state.options();
    options.sweeper.batch_max.min(options.limits.sweep_batch_max).max(1)
}
