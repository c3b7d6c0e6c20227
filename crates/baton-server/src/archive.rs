//! Retention on the server's side: the archive pass the sweeper runs, and
//! reading an archived task for the API.
//!
//! With `SweeperOptions::retention_ms` set, a task beside the sweeper
//! (`run`; apart, so archive passes, which write and fsync files on SQLite,
//! never delay a timer) wakes every `archive_interval_ms`, and the process
//! holding `SingletonDuty::Archive` (every process on SQLite and in
//! memory; one replica on PostgreSQL) asks the store to move finished tasks
//! older than the retention into the archive, `archive_batch_max` at a time
//! and at most `ARCHIVE_BATCHES_MAX` batches per round, going again at once
//! while a round comes back full. The store decides which tasks may leave
//! (`baton_core::archive::eligible`): the pass only says the cut-off and the
//! configured webhooks, whose notices must be delivered first.
//!
//! An archived task still answers `GET /v1/tasks/{id}` (from the archive,
//! same shape) and its history; its lineage and a repeated keyed submit
//! answer 410 `task_archived` (docs/reference/retention.md).

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::webhooks::WebhookOptions;
use baton_core::archive::{ArchiveRequest, HookFilter};
use baton_core::{SingletonDuty, TaskId, TaskView};
use std::pin::pin;
use std::time::Duration;

/// Batches one archive round moves at most; the rest wait for the next.
pub const ARCHIVE_BATCHES_MAX: usize = 16;

/// The configured webhooks as the store's eligibility check sees them.
pub fn hook_filters(options: &WebhookOptions) -> Vec<HookFilter> {
    options.hooks.iter().map(crate::webhooks::Webhook::filter).collect()
}

/// Runs archive rounds until shutdown begins: one every
/// `archive_interval_ms`, or at once again while a round hits its bound.
pub async fn run(state: AppState) {
    let mut shutdown = pin!(state.shutting_down());
    loop {
        let (_, more) = round(&state).await;
        if state.is_shutting_down() {
            return;
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let wait = u64::try_from(state.options().sweeper.archive_interval_ms.max(1)).unwrap_or(u64::MAX);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            () = &mut shutdown => return,
        }
    }
}

/// One round of archive passes, if retention is on and this process holds
/// the archive duty; returns how many tasks moved and whether the round hit
/// its bound (more may be waiting).
pub async fn round(state: &AppState) -> (usize, bool) {
    let Some(retention) = state.options().sweeper.retention_ms else { return (0, false) };
    match state.store().holds_duty(SingletonDuty::Archive).await {
        Ok(true) => {}
        Ok(false) => return (0, false),
        Err(error) => {
            tracing::warn!(%error, "archive: could not ask for the archive duty");
            return (0, false);
        }
    }
    let batch = state.options().limits.archive_batch_max.max(1);
    let hooks = hook_filters(&state.options().webhooks);
    let mut moved = 0;
    for _ in 0..ARCHIVE_BATCHES_MAX {
        let request = ArchiveRequest {
            finished_before: state.clock().now().saturating_sub(retention),
            limit: batch,
            hooks: hooks.clone(),
        };
        match state.store().archive(request).await {
            Ok(n) => {
                moved += n;
                if n < batch {
                    if moved > 0 {
                        tracing::debug!(moved, "archived finished tasks");
                    }
                    return (moved, false);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "archive: a pass failed; the next round tries again");
                return (moved, false);
            }
        }
    }
    (moved, true)
}

/// A task as `GET /v1/tasks/{id}` shows it: live, or else from the archive.
pub async fn view(state: &AppState, id: TaskId) -> Result<Option<TaskView>, ApiError> {
    if let Some(view) = state.store().get(id).await? {
        return Ok(Some(view));
    }
    archived_view(state, id).await
}

/// An archived task's view, if it was archived.
pub async fn archived_view(state: &AppState, id: TaskId) -> Result<Option<TaskView>, ApiError> {
    let Some(record) = state.store().archived(id).await? else { return Ok(None) };
    record.view().map(Some).map_err(|problem| {
        tracing::error!(task = %id, %problem, "an archived task's record does not parse");
        ApiError::internal()
    })
}
