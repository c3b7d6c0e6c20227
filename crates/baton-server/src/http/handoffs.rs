//! `GET /v1/handoffs/{id}?wait_ms=`: a handoff and its outcome, long-polled.
//! While the outcome is `pending` the call waits for a change of the handed-off
//! task (a claim or a cancel through this server wakes it at once), looking at
//! the store at least every `handoff_poll_ms` for outcomes no wake-up
//! announces, until the wait ends or the server shuts down.

use crate::convert;
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, IdPath};
use crate::http::openapi::HandoffOutcomeRefusals;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_core::{HandoffId, HandoffOutcome};
use std::pin::pin;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};

/// `GET /v1/handoffs/{id}?wait_ms=`: the handoff and its outcome, waiting up
/// to `wait_ms` for a `pending` outcome to become final.
#[utoipa::path(
    get,
    path = "/v1/handoffs/{id}",
    operation_id = "show_handoff",
    tag = "handoffs",
    summary = "A handoff and its outcome, long-polling while pending",
    params(("id" = uuid::Uuid, Path, description = "The handoff's id, from the handoff call's answer."), api::HandoffQuery),
    responses(
        (status = 200, description = "The handoff; its outcome is still `pending` if the wait ended first.", body = api::Handoff),
        HandoffOutcomeRefusals,
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<api::HandoffQuery>,
) -> Result<Json<api::Handoff>, ApiError> {
    let wait_ms = query.wait_ms.unwrap_or(0);
    let wait_ms_max = state.options().wait_ms_max;
    if wait_ms > wait_ms_max {
        return Err(ApiError::limit("wait_ms_max", wait_ms_max, "wait less and ask again"));
    }
    let id = HandoffId(id);
    let read =
        || async { state.store().handoff(id).await?.ok_or_else(|| ApiError::not_found("handoff", id)) };
    let mut handoff = read().await?;
    principal.check_handoff_read(&state, &handoff).await?;
    if wait_ms > 0 && handoff.outcome == HandoffOutcome::Pending {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let poll = Duration::from_millis(state.options().handoff_poll_ms.max(1));
        let signal = state.tasks().subscribe(&handoff.task);
        let mut shutdown = pin!(state.shutting_down());
        loop {
            let mut changed = pin!(signal.notified());
            changed.as_mut().enable();
            handoff = read().await?;
            let now = Instant::now();
            if handoff.outcome != HandoffOutcome::Pending || now >= deadline || state.is_shutting_down() {
                break;
            }
            tokio::select! {
                () = changed => {}
                () = sleep_until(deadline.min(now + poll)) => {}
                () = &mut shutdown => {}
            }
        }
    }
    Ok(Json(convert::handoff(&handoff)))
}
