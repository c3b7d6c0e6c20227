//! The accept loop: serves the router over HTTP/1.1 connections, with the
//! limits that live below the router (`header_read_timeout_ms`: a client
//! that does not send its headers in time, or a keep-alive connection idle
//! that long, is closed), and graceful shutdown: stop accepting, let each
//! connection finish the request it is on, then return. axum's own `serve`
//! takes no settings, hence this small loop over hyper.

use crate::state::AppState;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long to back off after an accept error that is not about one
/// connection (for example too many open files).
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` resolves; then stops accepting,
/// tells open connections to close after their current request, waits for
/// them, and returns.
pub async fn run(listener: TcpListener, app: Router, state: AppState, stop: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    builder.header_read_timeout(Duration::from_millis(state.options().header_read_timeout_ms));
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut stop = pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::error!(%error, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let connection = serve_connection(builder.clone(), stream, app.clone(), state.clone());
        let open = open_rx.clone();
        tokio::spawn(async move {
            connection.await;
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    state.begin_shutdown();
    open_tx.closed().await;
}

/// One connection, until the client closes it, a limit closes it, or
/// shutdown lets it finish its current request.
async fn serve_connection(builder: http1::Builder, stream: TcpStream, app: Router, state: AppState) {
    // Answers are small and written whole: don't let Nagle hold them back.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut connection = pin!(connection);
    let mut shutdown = pin!(state.shutting_down());
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Slow or vanished clients end here (header read timeout, resets):
        // their business, not an operator's.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Errors about one connection only; the loop goes on at once.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
