//! Baton's HTTP server: the `/v1` API on axum over an injected `Store` and
//! `Clock`, the long-poll wake-ups, the sweeper (timers over `due_at`), and
//! graceful shutdown. `app(state)` builds the router for tests
//! (`tower::ServiceExt::oneshot`); `serve(config, listener, shutdown)` runs it
//! on a bound listener with the sweeper (and the webhook dispatcher, when
//! webhooks are configured: `webhooks`; the metrics flush and anomaly
//! detection: `metrics`, `anomaly`) until `shutdown` resolves. The server
//! converts core types to `baton-api` types and never serializes core types.
//! With `AuthMode::Tokens` every API call carries a bearer token (`auth`)
//! and each principal may do only what its role and grants allow
//! (`http::principal`). The API is
//! described by an OpenAPI document generated from the handlers
//! (`openapi_json`, served at `/openapi.json`, browsable at `/docs`). The
//! dashboard (`ui`, at `/ui`) is served by the same router and reads and
//! changes everything through the `/v1` routes. Workflows that opt in are
//! also A2A agents under `/a2a` (`a2a`), a bridge that calls the `/v1`
//! router in process.

pub mod a2a;
pub mod accept;
pub mod anomaly;
pub mod archive;
pub mod auth;
pub mod convert;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod otlp;
pub mod push;
pub mod state;
pub mod sweeper;
pub mod telemetry;
pub mod ui;
pub mod wake;
pub mod webhooks;

pub use auth::Auth;
pub use http::error::ApiError;
pub use http::openapi::{document as openapi, openapi_json};
pub use state::{AppState, AuthMode, Config, Options, SweeperOptions};
pub use wake::ReadyHub;
pub use webhooks::{Webhook, WebhookOptions};

use axum::Router;
use std::future::Future;
use tokio::net::TcpListener;

/// The API's router over `state`; no sweeper runs (see `serve`).
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Serves the API on `listener` and runs the sweeper, until `shutdown`
/// resolves: then it stops accepting, lets long polls answer with what they
/// have, finishes in-flight requests, stops the sweeper, and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Webhook settings the binary did not check still refuse to start.
    config
        .options
        .webhooks
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    config
        .options
        .metrics
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let state = AppState::new(config);
    let sweeper = state.options().sweeper.enabled.then(|| tokio::spawn(sweeper::run(state.clone())));
    let sweeping = state.options().sweeper.enabled && state.options().sweeper.retention_ms.is_some();
    let archiver = sweeping.then(|| tokio::spawn(archive::run(state.clone())));
    let webhooks =
        (!state.options().webhooks.hooks.is_empty()).then(|| tokio::spawn(webhooks::run(state.clone())));
    let metrics = state.options().metrics.enabled.then(|| tokio::spawn(metrics::run(state.clone())));
    let pushes = tokio::spawn(push::run(state.clone()));
    if let Some(otlp) = &state.options().otlp {
        otlp.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let traces = state.options().otlp.clone().map(|otlp| {
        state.hub().spans().enable();
        tokio::spawn(otlp::run(state.clone(), otlp))
    });
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    };
    accept::run(listener, app(state.clone()), state.clone(), signal).await;
    state.begin_shutdown();
    if let Some(sweeper) = sweeper
        && let Err(error) = sweeper.await
    {
        tracing::error!(%error, "the sweeper task failed");
    }
    if let Some(archiver) = archiver
        && let Err(error) = archiver.await
    {
        tracing::error!(%error, "the archive task failed");
    }
    if let Some(webhooks) = webhooks
        && let Err(error) = webhooks.await
    {
        tracing::error!(%error, "the webhook dispatcher failed");
    }
    if let Err(error) = pushes.await {
        tracing::error!(%error, "the push notification dispatcher failed");
    }
    if let Some(metrics) = metrics
        && let Err(error) = metrics.await
    {
        tracing::error!(%error, "the metrics task failed");
    }
    if let Some(traces) = traces
        && let Err(error) = traces.await
    {
        tracing::error!(%error, "the trace exporter failed");
    }
    Ok(())
}
