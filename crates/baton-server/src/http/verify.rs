//! `GET /v1/tasks/{id}/verify`: one task's hash-chained history checked
//! against its row, with the same check `baton audit verify` runs over a
//! whole store (`baton_core::audit::check_task`). Whoever may read the task
//! may verify it.

use crate::http::error::ApiError;
use crate::http::extract::IdPath;
use crate::http::openapi::ReadRefusals;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_core::TaskId;

/// `GET /v1/tasks/{id}/verify`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/verify",
    operation_id = "verify_task",
    summary = "Verify a task's hash chain against its row",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Whether the chain verifies, and the first broken link if not.", body = api::ChainVerification),
        ReadRefusals,
    ),
)]
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Json<api::ChainVerification>, ApiError> {
    let task = TaskId(id);
    principal.check_read_id(&state, task).await?;
    let view = state.store().get(task).await?;
    let events = state.store().history(task).await?;
    if view.is_none() && events.is_empty() {
        return Err(ApiError::not_found("task", id));
    }
    let broken = baton_core::audit::check_task(task, &events, view.as_ref());
    Ok(Json(api::ChainVerification {
        task: id,
        ok: broken.is_none(),
        events: events.len() as u64,
        head: broken.is_none().then(|| events.last().map(|e| e.hash.to_hex())).flatten(),
        broken_at: broken.as_ref().map(|b| b.version),
        problem: broken.map(|b| b.problem),
    }))
}
