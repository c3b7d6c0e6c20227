//! `baton-harness serve-memory`: Baton's HTTP server (the same router,
//! limits, sweeper and metrics as `baton dev`) over the in-memory store
//! instead of SQLite, for the benchmark row that shows what HTTP and the
//! engine cost without storage. Nothing is durable: it is a measuring
//! instrument, never a way to run Baton. It prints its API address in the
//! line `baton dev` prints (`  API:       http://ADDR/v1`), so the bench
//! starts and reads both the same way, and serves until killed.

use anyhow::{Context as _, Result};
use baton_core::SystemClock;
use baton_core::engine::Rules;
use baton_server::{Config, Options, ReadyHub};
use baton_testkit::MemoryStore;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the API over a fresh in-memory store on `listen` (loopback only:
/// no authentication runs) until the process is killed.
pub fn run(listen: SocketAddr) -> Result<()> {
    anyhow::ensure!(listen.ip().is_loopback(), "serve-memory listens on loopback only (no authentication)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async move {
        let hub = Arc::new(ReadyHub::new());
        let store = MemoryStore::new(Arc::new(SystemClock), Rules::default()).with_listener(hub.clone());
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr().context("the listener has no address")?;
        let config =
            Config { store: Arc::new(store), clock: Arc::new(SystemClock), hub, options: Options::default() };
        println!("Baton over the in-memory store (nothing is durable; for benchmarks only)");
        println!("  API:       http://{bound}/v1");
        baton_server::serve(config, listener, std::future::pending()).await.context("the server failed")
    })
}
