//! `baton dev` and `baton serve`: open the store, bind the listener, print
//! where the API is, and run `baton_server::serve` until Ctrl-C or SIGTERM,
//! then close the store (the writer drains and exits). `baton dev` always
//! runs on SQLite; `baton serve` picks the store from its database URL:
//! `sqlite://PATH` (or `--data-dir DIR`) for the embedded store,
//! `postgres://...` for PostgreSQL, where any number of `baton serve`
//! replicas may share one database (and schema).
//!
//! `baton dev` runs with auth off and refuses any address that is not
//! loopback (no auth, so no network: docs/design.md, "Security"). `baton serve` runs with
//! auth on (bearer tokens, principals in the same database) and may listen
//! on any address; on a database with no principal it creates the admin
//! principal `admin` and prints its token once on stdout.

use anyhow::{Context, bail};
use baton_core::Store;
use baton_core::auth::Directory;
use baton_core::{Clock, SystemClock};
use baton_postgres::{PostgresOptions, PostgresStore};
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
    /// How long a finished task stays in the database before it moves to
    /// the archive (`DIR/baton.db.archive/`), e.g. `7d`; `off` keeps every
    /// task. Off by default in `baton dev` (docs/reference/retention.md).
    #[arg(long, env = "BATON_RETENTION", value_parser = crate::duration::parse_retention)]
    retention: Option<u64>,
    /// A TOML file with `[limits]`, `[policies]` and `[server]` settings
    /// (docs/reference/limits.md names every key) and `[[webhooks]]`
    /// (docs/reference/webhooks.md).
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

/// `baton serve`: the server on a given database.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the data lives: `postgres://USER@HOST:PORT/DB` (replicas may
    /// share it) or `sqlite://PATH`. `DATABASE_URL` is read when neither this
    /// flag nor `BATON_DATABASE_URL` is set.
    #[arg(long, env = "BATON_DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite in this directory (`DIR/baton.db`), as `baton dev` keeps it;
    /// instead of `--database-url`.
    #[arg(long, env = "BATON_DATA_DIR", conflicts_with = "database_url")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    postgres: PostgresArgs,
    /// Address to listen on. Authentication is on, so any address will do;
    /// put a TLS-terminating proxy in front of a non-loopback one.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7707")]
    listen: SocketAddr,
    /// How long a finished task stays in the database before it moves to
    /// the archive (beside an SQLite file, or a table on PostgreSQL), e.g.
    /// `7d` (the default); `off` keeps every task (docs/reference/retention.md).
    #[arg(long, env = "BATON_RETENTION", value_parser = crate::duration::parse_retention)]
    retention: Option<u64>,
    /// A TOML file with `[limits]`, `[policies]` and `[server]` settings
    /// (docs/reference/limits.md names every key) and `[[webhooks]]`
    /// (docs/reference/webhooks.md).
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

/// `baton serve`'s retention when neither the flag nor the file sets one.
pub const SERVE_RETENTION_DEFAULT_MS: u64 = 7 * 86_400_000;

/// The retention in force: the flag, else the file's `retention_ms`, else
/// the mode's default; 0 is off.
fn retention(flag: Option<u64>, file: &crate::config::File, default_ms: u64) -> Option<i64> {
    let ms = flag.or(file.server.retention_ms).unwrap_or(default_ms);
    (ms > 0).then(|| i64::try_from(ms).unwrap_or(i64::MAX))
}

/// PostgreSQL settings of `baton serve` and `baton db`.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// The PostgreSQL schema Baton's tables live in (created if missing);
    /// replicas of one deployment name the same one. Default: the URL's
    /// `search_path`, else `public`.
    #[arg(long, env = "BATON_DATABASE_SCHEMA")]
    pub schema: Option<String>,
    /// How long a replica's singleton duties (the purge of expired request
    /// records) last without renewal: a dead replica's duty moves after this.
    #[arg(long, env = "BATON_DUTY_LEASE", default_value = "30s", value_parser = crate::duration::parse_ms)]
    pub duty_lease: u64,
    /// Writer threads, each with its own connection (PostgreSQL): more keep
    /// the database busier under many agents, each costs a connection.
    #[arg(long, env = "BATON_DATABASE_WRITERS", default_value_t = 4)]
    pub writers: usize,
}

impl PostgresArgs {
    /// Store options for `url`.
    pub fn options(&self, url: &str) -> anyhow::Result<PostgresOptions> {
        let mut options =
            PostgresOptions::new(url).with_context(|| format!("--database-url {}", redact(url)))?;
        if let Some(schema) = &self.schema {
            options = options.schema(schema.clone());
        }
        Ok(options
            .duty_lease(std::time::Duration::from_millis(self.duty_lease.max(1)))
            .writers(self.writers.max(1)))
    }
}

/// Where a server keeps its data.
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    /// The database of `--database-url` (or `BATON_DATABASE_URL`, then
    /// `DATABASE_URL`) or `--data-dir`.
    pub fn from_args(url: Option<&str>, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(dir) = data_dir {
            return Ok(Self::Sqlite(dir.join("baton.db")));
        }
        let from_env = std::env::var("DATABASE_URL").ok();
        let Some(url) = url.or(from_env.as_deref()) else {
            bail!(
                "name the database: --database-url postgres://USER@HOST:PORT/DB or sqlite://PATH \
                 (or BATON_DATABASE_URL), or --data-dir DIR"
            );
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        sqlite_path(url).map(Self::Sqlite)
    }
}

/// A URL for logs and messages, without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    let user = userinfo.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}@{host}")
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
    let retention = retention(args.retention, &file, 0);
    run_sqlite(&args.data_dir.join("baton.db"), args.listen, "dev", Auth::Off, file, retention).await
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let database = Database::from_args(args.database_url.as_deref(), args.data_dir.as_deref())?;
    let file = crate::config::File::load(args.config.as_deref())?;
    let retention = retention(args.retention, &file, SERVE_RETENTION_DEFAULT_MS);
    match database {
        Database::Sqlite(path) => {
            run_sqlite(&path, args.listen, "serve", Auth::Tokens, file, retention).await
        }
        Database::Postgres(url) => {
            let rules = file.rules();
            let hub = Arc::new(ReadyHub::new());
            let options = args.postgres.options(&url)?.rules(rules).listener(hub.clone());
            let store = PostgresStore::open(options)
                .with_context(|| format!("cannot open the PostgreSQL store at {}", redact(&url)))?;
            let store = Arc::new(store);
            let described =
                format!("{} (schema {}, replica {})", redact(&url), store.schema(), store.replica());
            let closing = store.clone();
            let at = (args.listen, retention);
            run(store, hub, &described, at, "serve", Auth::Tokens, file, move || closing.close()).await
        }
    }
}

async fn run_sqlite(
    db: &Path,
    listen: SocketAddr,
    mode: &str,
    auth: Auth,
    file: crate::config::File,
    retention: Option<i64>,
) -> anyhow::Result<()> {
    let hub = Arc::new(ReadyHub::new());
    let options = SqliteOptions::default().rules(file.rules()).listener(hub.clone());
    let store = SqliteStore::open(db, options)
        .with_context(|| format!("cannot open the database {}", db.display()))?;
    let store = Arc::new(store);
    let closing = store.clone();
    run(store, hub, &db.display().to_string(), (listen, retention), mode, auth, file, move || closing.close())
        .await
}

/// Serves `store` until a shutdown signal, then calls `close`.
#[allow(clippy::too_many_arguments)] // one call per store kind; a struct would only rename them
async fn run<S: Store + Directory>(
    store: Arc<S>,
    hub: Arc<ReadyHub>,
    db: &str,
    (listen, retention): (SocketAddr, Option<i64>),
    mode: &str,
    auth: Auth,
    file: crate::config::File,
    close: impl FnOnce(),
) -> anyhow::Result<()> {
    // Checked again here, so no path can start without auth off loopback.
    if auth == Auth::Off {
        refuse_non_loopback(listen, &format!("baton {mode}"))?;
    }
    let rules = file.rules();
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("the listener has no address")?;
    let first_token = match auth {
        Auth::Off => None,
        Auth::Tokens => match baton_server::auth::bootstrap_admin(&*store, SystemClock.now()).await {
            Ok(token) => token,
            // Replicas starting together on an empty database: another one
            // created the admin between our look and our write.
            Err(baton_server::auth::BootstrapError::Store(baton_core::Error::Rejected(_))) => None,
            Err(error) => return Err(error).context("cannot create the first admin"),
        },
    };
    let auth_mode = match auth {
        Auth::Off => AuthMode::Off,
        Auth::Tokens => AuthMode::Tokens(baton_server::Auth::new(store.clone(), rules.policies.clone())),
    };
    let mut options = Options { auth: auth_mode, otlp: otlp_from_env(), ..file.options(Options::default()) };
    options.sweeper.retention_ms = retention;
    let config = Config { store: store.clone(), clock: Arc::new(SystemClock), hub, options };

    // Only URLs that exist: the dashboard, the API, its docs, its health checks.
    match auth {
        Auth::Off => println!("Baton {mode} is running (authentication off, loopback only)"),
        Auth::Tokens => println!("Baton {mode} is running (authentication on: bearer tokens)"),
    }
    match auth {
        Auth::Off => println!("  dashboard: http://{bound}/ui"),
        Auth::Tokens => println!("  dashboard: http://{bound}/ui  (sign in with an operator or admin token)"),
    }
    println!("  API:       http://{bound}/v1");
    println!("  API docs:  http://{bound}/docs  (OpenAPI: http://{bound}/openapi.json)");
    println!("  MCP:       http://{bound}/mcp  (streamable HTTP; stdio: baton mcp)");
    println!("  health:    http://{bound}/healthz");
    println!("  readiness: http://{bound}/readyz");
    println!("  database:  {db}");
    match retention {
        Some(ms) => println!(
            "  retention: finished tasks move to the archive after {}",
            crate::duration::format_ms(ms)
        ),
        None => println!("  retention: off (finished tasks stay in the database)"),
    }
    if let Some(token) = &first_token {
        println!(
            "Created the admin principal {:?}. Its token, shown this once (it will not be shown again):",
            baton_server::auth::FIRST_ADMIN
        );
        println!("  {token}");
        println!("  Use it as BATON_TOKEN for `baton agent add`, `baton token create` and the API.");
    }
    println!("Press Ctrl-C to stop.");
    tracing::info!(address = %bound, database = %db, "listening");

    baton_server::serve(config, listener, shutdown_signal()).await.context("the server failed")?;
    close();
    tracing::info!("stopped");
    Ok(())
}

/// Trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector
/// (OTLP/HTTP, JSON); `OTEL_SERVICE_NAME` names the service (`baton`).
fn otlp_from_env() -> Option<baton_server::otlp::OtlpOptions> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty())?;
    let mut options = baton_server::otlp::OtlpOptions::new(endpoint.trim());
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty()) {
        options.service_name = name;
    }
    Some(options)
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
    bail!(
        "--database-url {:?} is not understood; write postgres://USER@HOST:PORT/DB or sqlite://PATH, \
         e.g. sqlite://./baton.db",
        redact(url)
    )
}
