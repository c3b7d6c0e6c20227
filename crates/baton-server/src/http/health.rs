//! `/healthz` (the process is up), `/readyz` (the store answers and the
//! server is not shutting down; 503 otherwise, so load balancers stop
//! sending), and `GET /v1`, the index of the API's routes.

use crate::http::error::ApiError;
use crate::http::openapi::ReadyRefusals;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use baton_api::Health;
use std::time::Duration;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1`: the routes, so the API URL `baton dev` prints answers something useful.
#[utoipa::path(
    get,
    path = "/v1",
    operation_id = "index",
    tag = "service",
    summary = "The API's routes",
    security(()),
    responses((status = 200, description = "`METHOD /path` for every API route.", body = baton_api::Index)),
)]
pub async fn index() -> Json<baton_api::Index> {
    Json(baton_api::Index {
        name: "baton".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        routes: super::ROUTES.iter().map(|(method, path)| format!("{method} {path}")).collect(),
    })
}

/// `GET /healthz`: the process is up (the store is not consulted).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "service",
    summary = "Liveness",
    security(()),
    responses((status = 200, description = "The process is up.", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(health("ok"))
}

/// `GET /readyz`: the store answers and the server is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "service",
    summary = "Readiness",
    security(()),
    responses(
        (status = 200, description = "Ready to serve.", body = Health),
        ReadyRefusals,
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return ApiError::new(baton_api::ErrorCode::Unavailable, "the server is shutting down")
            .into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, state.store().next_due()).await {
        Ok(Ok(_)) => Json(health("ok")).into_response(),
        Ok(Err(error)) => ApiError::from(error).into_response(),
        Err(_) => {
            tracing::warn!("readiness check: the store did not answer in time");
            ApiError::unavailable().into_response()
        }
    }
}

fn health(status: &str) -> Health {
    Health { status: status.to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() }
}
