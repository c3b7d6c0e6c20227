//! The HTTP layer: the route table (every API route documented: see
//! `openapi`), the fallbacks that keep every refusal in the
//! `{code, message, details}` shape, the request limits (body size, the
//! per-request time limit, the rate limit per principal in `rate_limit`;
//! JSON depth is checked by `extract::ApiJson`), and
//! the refusal log (method, route, status and code; with auth, the principal
//! too, never a token). Handlers live in one module per resource.

pub mod admin;
pub mod claims;
pub mod deliveries;
pub mod error;
pub mod extract;
pub mod handoffs;
pub mod health;
pub mod idempotency;
pub mod inbox;
pub mod lineage;
pub mod openapi;
pub mod principal;
pub mod prometheus;
pub mod rate_limit;
pub mod series;
pub mod stats;
pub mod stuck;
pub mod tasks;
pub mod verify;
pub mod whoami;
pub mod workflows;

use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use baton_api::ErrorCode;
use error::{ApiError, Refused};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API's routes, as `GET /v1` lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/history"),
    ("GET", "/v1/tasks/{id}/lineage"),
    ("GET", "/v1/tasks/{id}/verify"),
    ("POST", "/v1/tasks/{id}/heartbeat"),
    ("POST", "/v1/tasks/{id}/handoff"),
    ("POST", "/v1/tasks/{id}/complete"),
    ("POST", "/v1/tasks/{id}/release"),
    ("POST", "/v1/tasks/{id}/fail"),
    ("POST", "/v1/tasks/{id}/spawn"),
    ("POST", "/v1/tasks/{id}/abort"),
    ("POST", "/v1/tasks/{id}/cancel"),
    ("POST", "/v1/tasks/{id}/comments"),
    ("POST", "/v1/claims"),
    ("GET", "/v1/handoffs/{id}"),
    ("GET", "/v1/deliveries"),
    ("POST", "/v1/workflows"),
    ("GET", "/v1/workflows"),
    ("GET", "/v1/workflows/{name}"),
    ("GET", "/v1/inbox"),
    ("POST", "/v1/inbox/{id}/claim"),
    ("POST", "/v1/inbox/{id}/resolve"),
    ("GET", "/v1/stuck"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/stats/series"),
    ("GET", "/v1/alerts"),
    ("POST", "/v1/alerts/{id}/ack"),
    ("POST", "/v1/principals"),
    ("GET", "/v1/principals"),
    ("DELETE", "/v1/principals/{name}"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{id}"),
    ("GET", "/v1/whoami"),
];

/// Routes that wait by design: their time limit is `request_timeout_ms`
/// plus `wait_ms_max`, since `wait_ms` already bounds how long they wait.
pub const LONG_POLL_ROUTES: &[&str] = &["/v1/claims", "/v1/handoffs/{id}"];

/// The API's routes over the given state, with `/openapi.json`, `/docs` and
/// the MCP endpoint (`crate::mcp`), which calls the API's own router in
/// process and sits behind the same authentication.
pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    let options = state.options();
    let mcp = crate::mcp::service(api.clone(), options.body_bytes_max, options.auth.tokens().is_some());
    let endpoint = any(move |request: Request| {
        let mcp = mcp.clone();
        async move { mcp.handle(request).await.map(axum::body::Body::new) }
    })
    .layer(middleware::from_fn_with_state(state.clone(), principal::authenticate));
    // The dashboard, the MCP tools and the A2A bridge call the API router in
    // process, with the caller's own token: they have no other way in.
    Router::new()
        .route(crate::mcp::MCP_PATH, endpoint)
        .merge(api.clone())
        .merge(crate::ui::router(api.clone(), state.clone()))
        .merge(crate::a2a::routes(api, state))
}

/// The `/v1` API's routes with `/openapi.json` and `/docs`, and every layer
/// (not the dashboard, not `/mcp`).
fn api_router(state: AppState) -> Router {
    let (api, document) = documented_routes().split_for_parts();
    let json: Arc<str> = openapi::to_json(&document).into();
    let options = state.options();
    api.route(
        openapi::OPENAPI_PATH,
        get(move || {
            let json = json.clone();
            async move { openapi::serve_json(json) }
        }),
    )
    .merge(openapi::docs_ui())
    .fallback(no_route)
    .method_not_allowed_fallback(wrong_method)
    .layer(DefaultBodyLimit::max(options.body_bytes_max))
    .layer(middleware::from_fn_with_state(state.clone(), time_limit))
    .layer(middleware::from_fn_with_state(state.clone(), rate_limit::limit))
    .layer(middleware::from_fn_with_state(state.clone(), principal::authenticate))
    .layer(middleware::from_fn_with_state(state.clone(), refuse_oversized))
    .layer(middleware::from_fn(log_refusals))
    .with_state(state)
}

/// Every documented route: the router and the OpenAPI paths in one, so no
/// route is served undocumented. Routes that share a path share a `routes!`.
pub(crate) fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::index))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::show))
        .routes(routes!(tasks::history))
        .routes(routes!(lineage::lineage))
        .routes(routes!(verify::verify))
        .routes(routes!(tasks::heartbeat))
        .routes(routes!(tasks::handoff))
        .routes(routes!(tasks::complete))
        .routes(routes!(tasks::release))
        .routes(routes!(tasks::fail))
        .routes(routes!(tasks::spawn))
        .routes(routes!(tasks::abort))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::comment))
        .routes(routes!(claims::claim))
        .routes(routes!(handoffs::show))
        .routes(routes!(deliveries::list))
        .routes(routes!(workflows::apply, workflows::list))
        .routes(routes!(workflows::show))
        .routes(routes!(inbox::list))
        .routes(routes!(inbox::claim))
        .routes(routes!(inbox::resolve))
        .routes(routes!(stuck::stuck))
        .routes(routes!(stats::stats))
        .routes(routes!(series::series))
        .routes(routes!(stats::alerts))
        .routes(routes!(stats::ack))
        .routes(routes!(prometheus::metrics))
        .routes(routes!(admin::add_principal, admin::list_principals))
        .routes(routes!(admin::revoke_principal))
        .routes(routes!(admin::create_token, admin::list_tokens))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(whoami::whoami))
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

/// Answers 413 `body_too_large` at once when `Content-Length` says the body
/// is over `body_bytes_max`, before authentication and without waiting for
/// a body it would refuse anyway. Bodies without a length (chunked) are cut
/// off by `DefaultBodyLimit` as they are read.
async fn refuse_oversized(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let max = state.options().body_bytes_max;
    let length = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > max as u64 => {
            let mut response = ApiError::body_too_large(max).into_response();
            // The unread body stays on the wire: end the connection rather
            // than read it to find the next request.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            response
        }
        _ => next.run(request).await,
    }
}

/// Answers 503 `request_timeout` when a request outlasts its time limit. The
/// handler is dropped: a store call already sent may still commit, which is
/// why the answer tells the caller to retry the call unchanged.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let options = state.options();
    let long_poll = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| LONG_POLL_ROUTES.contains(&path.as_str()));
    let extra_ms = if long_poll { options.wait_ms_max } else { 0 };
    let limit = Duration::from_millis(options.request_timeout_ms.saturating_add(extra_ms));
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(options.request_timeout_ms).into_response(),
    }
}

/// Logs every refused call: refusals are not task events, but operators see
/// them. With auth on the line names the principal once its token is
/// verified ("-" before); never the token or any header.
async fn log_refusals(mut request: Request, next: Next) -> Response {
    let caller = principal::CallerName::default();
    request.extensions_mut().insert(caller.clone());
    let method = request.method().clone();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => "(no route)".to_owned(),
    };
    // Handlers record the task and its trace id in this span (`telemetry`).
    let span = crate::telemetry::request_span(method.as_str(), &route);
    let response = next.run(request).instrument(span.clone()).await;
    let _in_request = span.enter();
    if let Some(Refused(code)) = response.extensions().get::<Refused>() {
        let status = response.status().as_u16();
        let principal = caller.get().unwrap_or("-");
        if response.status().is_server_error() {
            tracing::warn!(%method, %route, status, code = code.as_str(), principal, "refused");
        } else {
            tracing::info!(%method, %route, status, code = code.as_str(), principal, "refused");
        }
    }
    response
}
