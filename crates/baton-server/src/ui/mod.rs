//! The dashboard at `/ui`: server-rendered pages for operators and the
//! people a task escalates to (overview, edges, stuck work, tasks,
//! workflows, the human inbox, alerts, webhook deliveries), with a small
//! vendored front end embedded in the binary (htmx for live polling, uPlot
//! for charts; `assets/`). It works offline: every page, script and style
//! comes from this server.
//!
//! The dashboard uses only the public API: each page calls the `/v1` router
//! in process (`ApiClient`, `tower::ServiceExt::oneshot`) with the signed-in
//! principal's bearer token, exactly as any client would, so every read is
//! authorized and every change is recorded under that principal by the same
//! code that serves the API. It never touches the store.
//!
//! Sessions (`session`): with authentication on, a person signs in with an
//! operator or admin token; the session cookie carries the token itself
//! (HttpOnly, SameSite=Strict, Path=/ui), so it works on every replica,
//! survives restarts, and ends when the token is revoked (the next page's
//! API call is refused within the token cache's lifetime). State-changing
//! forms carry a CSRF token derived from the session (HMAC-SHA256 keyed by
//! the session token) and are refused without it, or from another origin.
//! With authentication off (`baton dev`) there is no sign-in, and the CSRF
//! key is random per process.

mod graph;
mod html;
mod pages;
mod session;

pub use session::{CSRF_FIELD, SESSION_COOKIE, csrf_token};

use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt as _;

/// Where the dashboard is served.
pub const UI_PATH: &str = "/ui";

/// Bytes of one form post (a reason, a note, a token).
pub const FORM_BYTES_MAX: usize = 64 * 1024;

/// Bytes of one API answer the dashboard reads (a task page's payload and
/// history fit well within it).
pub const API_ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What every dashboard handler shares: the API router it calls, and the
/// session settings.
#[derive(Clone)]
pub struct Ui {
    api: Router,
    auth: bool,
    /// The CSRF key with authentication off (random per process).
    dev_key: [u8; 32],
    state: AppState,
}

/// The dashboard's routes, calling `api` (the full `/v1` router) in process.
pub fn router(api: Router, state: AppState) -> Router {
    let mut dev_key = [0u8; 32];
    // The OS random source failing leaves a zero key: forms still need the
    // token, and with auth off the dashboard is loopback only.
    let _ = getrandom::fill(&mut dev_key);
    let ui = Ui { api, auth: state.options().auth.tokens().is_some(), dev_key, state };
    Router::new()
        .route("/", get(|| async { Redirect::to(UI_PATH) }))
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { Redirect::to(UI_PATH) }))
        .route("/ui/live", get(pages::overview_live))
        .route("/ui/signin", get(session::signin_page).post(session::signin))
        .route("/ui/signout", post(session::signout))
        .route("/ui/edges", get(pages::edges))
        .route("/ui/series", get(pages::series))
        .route("/ui/stuck", get(pages::stuck))
        .route("/ui/tasks", get(pages::find_task))
        .route("/ui/tasks/{id}", get(pages::task))
        .route("/ui/tasks/{id}/cancel", post(pages::cancel))
        .route("/ui/tasks/{id}/abort", post(pages::abort))
        .route("/ui/workflows", get(pages::workflows))
        .route("/ui/workflows/{name}", get(pages::workflow))
        .route("/ui/inbox", get(pages::inbox))
        .route("/ui/inbox/{id}/claim", post(pages::inbox_claim))
        .route("/ui/inbox/{id}/resolve", post(pages::inbox_resolve))
        .route("/ui/alerts", get(pages::alerts))
        .route("/ui/alerts/{id}/ack", post(pages::ack))
        .route("/ui/webhooks", get(pages::webhooks))
        .route("/ui/static/{file}", get(asset))
        .layer(DefaultBodyLimit::max(FORM_BYTES_MAX))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

/// Headers on every dashboard answer: nothing loads from elsewhere, nothing
/// frames the pages, and pages are not cached (they show live state).
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The vendored front end and the dashboard's own script and style,
/// embedded in the binary.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &'static str) = match file.as_str() {
        "htmx.min.js" => (include_bytes!("assets/htmx.min.js"), "text/javascript"),
        "uPlot.iife.min.js" => (include_bytes!("assets/uPlot.iife.min.js"), "text/javascript"),
        "uPlot.min.css" => (include_bytes!("assets/uPlot.min.css"), "text/css"),
        "app.js" => (include_bytes!("assets/app.js"), "text/javascript"),
        "app.css" => (include_bytes!("assets/app.css"), "text/css"),
        "htmx.LICENSE" => (include_bytes!("assets/htmx.LICENSE"), "text/plain; charset=utf-8"),
        "uPlot.LICENSE" => (include_bytes!("assets/uPlot.LICENSE"), "text/plain; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// A refusal or failure of an API call, as the API answered it.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiFailure {
    fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal".into(), message: message.into() }
    }
}

impl Ui {
    /// Calls the API as `token` (none with auth off): `method path` with an
    /// optional JSON body, and reads the answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiFailure> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(json) => {
                request.header(header::CONTENT_TYPE, "application/json").body(Body::from(json.to_string()))
            }
            None => request.body(Body::empty()),
        }
        .map_err(|e| ApiFailure::internal(format!("bad request to {path}: {e}")))?;
        let response = self
            .api
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| ApiFailure::internal(format!("the API did not answer: {e}")))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), API_ANSWER_BYTES_MAX)
            .await
            .map_err(|e| ApiFailure::internal(format!("the API's answer could not be read: {e}")))?;
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ApiFailure {
                status,
                code: body["code"].as_str().unwrap_or("internal").to_owned(),
                message: body["message"].as_str().unwrap_or("the API refused the call").to_owned(),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiFailure::internal(format!("the API's answer to {path} did not parse: {e}")))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}
