//! `baton dev` and `baton serve`: open the SQLite store, bind the listener,
//! print where the API is, and run `baton_server::serve` until Ctrl-C or
//! SIGTERM, then close the store (the writer drains and exits).
//!
//! `baton dev` runs with auth off and refuses any address that is not
//! loopback (SPEC section 7: no auth, no network). `baton serve` runs with
//! auth on (bearer tokens, principals in the same database) and may listen
//! on any address; on a database with no principal it creates the admin
//! principal `admin` and prints its token once on stdout.

use anyhow::{Context, bail};
use baton_core::{Clock, SystemClock};
use baton_server::{AuthMode, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// `baton dev`: embedded SQLite in `./.baton/`, loopback only, auth off.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address to listen on; must be loopback. Port 0 picks a free port.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7707")]
    listen: SocketAddr,
    /// Directory for the database (`baton.db`); created if missing.
    #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
    data_dir: PathBuf,
    /// A TOML file with `[limits]`, `[policies]` and `[server]` settings
    /// (docs/reference/limits.md names every key).
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

/// `baton serve`: the server on a given database.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the data lives: `sqlite://PATH` (PostgreSQL comes later).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Address to listen on. Authentication is on, so any address will do;
    /// put a TLS-terminating proxy in front of a non-loopback one.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7707")]
    listen: SocketAddr,
    /// A TOML file with `[limits]`, `[policies]` and `[server]` settings
    /// (docs/reference/limits.md names every key).
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

/// Whether a run authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Off,
    Tokens,
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    refuse_non_loopback(args.listen, "baton dev")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let file = crate::config::File::load(args.config.as_deref())?;
    run(&args.data_dir.join("baton.db"), args.listen, "dev", Auth::Off, file).await
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let path = sqlite_path(&args.database_url)?;
    let file = crate::config::File::load(args.config.as_deref())?;
    run(&path, args.listen, "serve", Auth::Tokens, file).await
}

async fn run(
    db: &Path,
    listen: SocketAddr,
    mode: &str,
    auth: Auth,
    file: crate::config::File,
) -> anyhow::Result<()> {
    // Checked again here, so no path can start without auth off loopback.
    if auth == Auth::Off {
        refuse_non_loopback(listen, &format!("baton {mode}"))?;
    }
    let rules = file.rules();
    let hub = Arc::new(ReadyHub::new());
    let store = SqliteStore::open(db, SqliteOptions::default().rules(rules.clone()).listener(hub.clone()))
        .with_context(|| format!("cannot open the database {}", db.display()))?;
    let store = Arc::new(store);
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("the listener has no address")?;
    let first_token = match auth {
        Auth::Off => None,
        Auth::Tokens => baton_server::auth::bootstrap_admin(&*store, SystemClock.now())
            .await
            .context("cannot create the first admin")?,
    };
    let auth_mode = match auth {
        Auth::Off => AuthMode::Off,
        Auth::Tokens => AuthMode::Tokens(baton_server::Auth::new(store.clone(), rules.policies.clone())),
    };
    let options = Options { auth: auth_mode, ..file.options(Options::default()) };
    let config = Config { store: store.clone(), clock: Arc::new(SystemClock), hub, options };

    // Only URLs that exist: the API, its docs, its health checks.
    match auth {
        Auth::Off => println!("Baton {mode} is running (authentication off, loopback only)"),
        Auth::Tokens => println!("Baton {mode} is running (authentication on: bearer tokens)"),
    }
    println!("  API:       http://{bound}/v1");
    println!("  API docs:  http://{bound}/docs  (OpenAPI: http://{bound}/openapi.json)");
    println!("  health:    http://{bound}/healthz");
    println!("  readiness: http://{bound}/readyz");
    println!("  database:  {}", db.display());
    if let Some(token) = &first_token {
        println!(
            "Created the admin principal {:?}. Its token, shown this once (it will not be shown again):",
            baton_server::auth::FIRST_ADMIN
        );
        println!("  {token}");
        println!("  Use it as BATON_TOKEN for `baton agent add`, `baton token create` and the API.");
    }
    println!("Press Ctrl-C to stop.");
    tracing::info!(address = %bound, database = %db.display(), "listening");

    baton_server::serve(config, listener, shutdown_signal()).await.context("the server failed")?;
    store.close();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn refuse_non_loopback(address: SocketAddr, command: &str) -> anyhow::Result<()> {
    if !address.ip().is_loopback() {
        bail!(
            "{command} refuses to listen on {address}: authentication is off, so it listens on \
             loopback addresses only (for example 127.0.0.1:7707); use `baton serve`, which \
             authenticates every call, to listen on a network"
        );
    }
    Ok(())
}

/// The file path of a `sqlite://PATH` URL (`sqlite:///abs/path` or `sqlite://rel/path`).
fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            bail!("--database-url {url:?} names no file; write sqlite://PATH, e.g. sqlite://./baton.db");
        }
        return Ok(PathBuf::from(path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!("PostgreSQL is not supported yet; use --database-url sqlite://PATH");
    }
    bail!("--database-url {url:?} is not understood; write sqlite://PATH, e.g. sqlite://./baton.db")
}
