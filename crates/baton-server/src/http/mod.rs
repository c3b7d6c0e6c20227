//! The HTTP layer: the route table, the fallbacks that keep every refusal in
//! the `{code, message, details}` shape, the body limit, and the refusal log
//! (method, route, status and code; with auth, the principal too, never a
//! token). Handlers live in one module per resource.

pub mod claims;
pub mod error;
pub mod extract;
pub mod handoffs;
pub mod health;
pub mod principal;
pub mod tasks;

use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use baton_api::ErrorCode;
use error::{ApiError, Refused};

/// The API's routes, as `GET /v1` lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/history"),
    ("POST", "/v1/tasks/{id}/heartbeat"),
    ("POST", "/v1/tasks/{id}/handoff"),
    ("POST", "/v1/tasks/{id}/complete"),
    ("POST", "/v1/tasks/{id}/release"),
    ("POST", "/v1/tasks/{id}/fail"),
    ("POST", "/v1/tasks/{id}/spawn"),
    ("POST", "/v1/tasks/{id}/cancel"),
    ("POST", "/v1/claims"),
    ("GET", "/v1/handoffs/{id}"),
];

/// The API's routes over the given state.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1", get(health::index))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/history", get(tasks::history))
        .route("/v1/tasks/{id}/heartbeat", post(tasks::heartbeat))
        .route("/v1/tasks/{id}/handoff", post(tasks::handoff))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/tasks/{id}/release", post(tasks::release))
        .route("/v1/tasks/{id}/fail", post(tasks::fail))
        .route("/v1/tasks/{id}/spawn", post(tasks::spawn))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/claims", post(claims::claim))
        .route("/v1/handoffs/{id}", get(handoffs::show))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(baton_api::limits::BODY_BYTES_MAX))
        .layer(middleware::from_fn(log_refusals))
        .with_state(state)
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route {} {}", request.method(), request.uri().path()))
}

async fn wrong_method(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// Logs every refused call: refusals are not task events, but operators see them.
async fn log_refusals(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => "(no route)".to_owned(),
    };
    let response = next.run(request).await;
    if let Some(Refused(code)) = response.extensions().get::<Refused>() {
        let status = response.status().as_u16();
        if response.status().is_server_error() {
            tracing::warn!(%method, %route, status, code = code.as_str(), "refused");
        } else {
            tracing::info!(%method, %route, status, code = code.as_str(), "refused");
        }
    }
    response
}
