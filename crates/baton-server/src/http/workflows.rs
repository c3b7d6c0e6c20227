//! Workflow routes: apply a workflow file (`POST /v1/workflows`, operators
//! and admins), list the latest version of each, and show one version. The
//! server parses the file with the same code the CLI validates with
//! (`baton_api::parse_workflow`, against the server's own policies and
//! limits), so a bad file is refused with every mistake's line and column
//! (422 `invalid_workflow`); the store numbers versions, and an unchanged
//! definition makes none (200 with `created: false`).

use crate::convert;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::idempotency::{IdempotencyKeyHeader, KeyedJson, unexpected_outcome};
use crate::http::openapi::{ApplyWorkflowRefusals, ListWorkflowRefusals, ShowWorkflowRefusals};
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use baton_api as api;
use baton_core::Op;

/// `POST /v1/workflows`: 201 with a new version, 200 when the latest version
/// already has this definition.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    operation_id = "apply_workflow",
    summary = "Apply a workflow file",
    tag = "workflows",
    params(IdempotencyKeyHeader),
    request_body = api::ApplyWorkflowRequest,
    responses(
        (status = 201, description = "A new version was stored; tasks already running keep theirs.", body = api::AppliedWorkflow),
        (status = 200, description = "The latest version already has this definition: nothing changed.", body = api::AppliedWorkflow),
        ApplyWorkflowRefusals,
    ),
)]
pub async fn apply(
    State(state): State<AppState>,
    principal: Principal,
    KeyedJson { body: req, key }: KeyedJson<api::ApplyWorkflowRequest>,
) -> Result<(StatusCode, Json<api::AppliedWorkflow>), ApiError> {
    principal.check_operator("apply workflows")?;
    let options = state.options();
    let workflow = api::parse_workflow(&req.source, &options.policies, &options.limits)
        .map_err(|errors| ApiError::invalid_workflow(&errors))?;
    let key = key.map(|k| k.scoped(&principal, None));
    let outcome = state.store().execute(Op::ApplyWorkflow(workflow), key).await?;
    let applied = outcome.into_applied().ok_or_else(|| unexpected_outcome("apply_workflow"))?;
    if applied.created {
        tracing::info!(
            by = principal.name().unwrap_or("-"),
            workflow = %applied.workflow.name,
            version = applied.workflow.version,
            "workflow applied"
        );
    }
    let status = if applied.created { StatusCode::CREATED } else { StatusCode::OK };
    let body =
        api::AppliedWorkflow { workflow: convert::workflow(&applied.workflow), created: applied.created };
    Ok((status, Json(body)))
}

/// `GET /v1/workflows`: the latest version of every workflow, by name.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    operation_id = "list_workflows",
    summary = "List workflows (the latest version of each)",
    tag = "workflows",
    responses(
        (status = 200, description = "The latest version of every workflow, by name.", body = api::WorkflowList),
        ListWorkflowRefusals,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<Json<api::WorkflowList>, ApiError> {
    let mut all = state.store().workflows().await?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(api::WorkflowList { workflows: all.iter().map(convert::workflow).collect() }))
}

/// `GET /v1/workflows/{name}?version=N`: one version (the latest by default).
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}",
    operation_id = "show_workflow",
    summary = "Show a workflow version",
    tag = "workflows",
    params(("name" = String, Path, description = "The workflow's name."), api::WorkflowQuery),
    responses(
        (status = 200, description = "The version, with its stages and its text as a workflow file.", body = api::WorkflowView),
        ShowWorkflowRefusals,
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    _principal: Principal,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<api::WorkflowQuery>,
) -> Result<Json<api::WorkflowView>, ApiError> {
    let found = state.store().workflow(name.clone(), query.version).await?;
    let Some(workflow) = found else {
        let what = match query.version {
            Some(v) => format!("{name} v{v}"),
            None => name,
        };
        return Err(baton_core::Rejection::WorkflowNotFound { name: what }.into());
    };
    Ok(Json(convert::workflow(&workflow)))
}
