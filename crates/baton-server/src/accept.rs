//! The accept loop: serves the router over HTTP/1.1 connections, with the
//! limits that live below the router (`header_read_timeout_ms`: a client
//! that does not send its headers in time, or a keep-alive connection idle
//! that long, is closed), and graceful shutdown: stop accepting, let each
//! connection finish the request it is on, then return. axum's own `serve`
//! takes no settings, hence this small loop over hyper. `connections_max`
//! bounds the connections open at once: one more is answered 503
//! `unavailable` with `Retry-After` and closed, so a flood of idle sockets
//! cannot exhaust the process's file descriptors. A connection the server
//! closes lingers: its write side is shut and what the client still sends
//! (say the rest of a body refused 413 from its `Content-Length`) is read
//! and dropped for a bounded time, so the kernel does not answer the unread
//! bytes with a reset that would destroy the answer before the client reads it.

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::Router;
use baton_api::{ErrorBody, ErrorCode};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The smallest head buffer hyper accepts.
pub const HEADER_BYTES_MIN: usize = 8_192;

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
    // hyper's read buffer bounds the request head; it refuses less than 8 KiB.
    builder.max_buf_size(state.options().header_bytes_max.max(HEADER_BYTES_MIN));
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    let connections_max = state.options().connections_max;
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
        // Receivers: this loop's own plus one per open connection.
        if open_tx.receiver_count() > connections_max {
            tokio::spawn(refuse(stream, connections_max));
            continue;
        }
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
/// shutdown lets it finish its current request; then it lingers.
async fn serve_connection(builder: http1::Builder, stream: TcpStream, app: Router, state: AppState) {
    // Answers are small and written whole: don't let Nagle hold them back.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let (stream, returned) = Returning::new(stream);
    {
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
        // Leaving this block drops the connection, which hands the socket back.
    }
    if let Ok(stream) = returned.await {
        linger(stream).await;
    }
}

/// How long a closed connection keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How many bytes a closed connection reads and drops at most.
const LINGER_BYTES_MAX: usize = 16 << 20;

/// Shuts the socket's write side (the client reads the answer, then end of
/// file), then reads and drops what the client still sends until it closes
/// too, `LINGER` passes or `LINGER_BYTES_MAX` bytes came. Closing a socket
/// with unread bytes makes the kernel send a reset, and a client still
/// writing a body the server refused would lose the answer to it.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0usize;
        while read < LINGER_BYTES_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A socket that goes back to `serve_connection` when hyper drops it, so
/// the connection can linger after hyper is done with it.
struct Returning {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Returning {
    fn new(stream: TcpStream) -> (Self, oneshot::Receiver<TcpStream>) {
        let (back, returned) = oneshot::channel();
        (Self { stream: Some(stream), back: Some(back) }, returned)
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        // The socket is taken only by `drop`; `TcpStream` is `Unpin`.
        Pin::new(self.get_mut().stream.as_mut().expect("the socket is held until drop"))
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // The receiver is gone only if serve_connection itself was dropped.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Returning {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Returning {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

/// How long a refused connection may take to take its 503.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection over `connections_max` with 503 and closes it,
/// without reading its request.
async fn refuse(stream: TcpStream, connections_max: usize) {
    let error = ApiError::new(
        ErrorCode::Unavailable,
        format!("the server has {connections_max} connections open (limit connections_max); retry shortly"),
    )
    .with_details(serde_json::json!({ "limit": "connections_max", "max": connections_max }));
    let retry_after = error.retry_after_s().unwrap_or(crate::http::error::RETRY_AFTER_DEFAULT_S);
    let body = serde_json::to_string(&ErrorBody::new(error.code, error.message).with_details(error.details))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        let mut rest = response.as_bytes();
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    if let Err(error) = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, write).await.unwrap_or(Ok(())) {
        tracing::debug!(%error, "could not refuse a connection over connections_max");
    }
    // Dropping the stream closes it.
}

/// Errors about one connection only; the loop goes on at once.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
