//! The store's own errors: why a database would not open (`OpenError`), what
//! failed inside a transaction (`StoreError`, the engine's `Tx::Error`), and
//! the one place that classifies PostgreSQL failures (`Class`): a lost
//! connection, a batch to run again (deadlock, serialization), a unique key
//! taken by a concurrent writer (run the operation again), or anything else.
//! Callers of the `Store` trait never see these types: they get
//! `baton_core::Error`, where every store failure is `Unavailable`, but a
//! full disk, which is `StorageFull`.

use tokio_postgres::error::SqlState;

/// Why `PostgresStore::open` (or `migrate`, `check`) refused. Each message
/// says what to do, because an operator reads it at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid rules: {0}; fix the stage policies or the limits")]
    Rules(String),
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error(
        "cannot connect to PostgreSQL: {0}; is it running and reachable, and does the URL name the right user and database?"
    )]
    Connect(String),
    #[error("PostgreSQL error while {during}: {source}")]
    Sql { during: &'static str, source: tokio_postgres::Error },
    #[error("PostgreSQL did not answer within {0:?} while opening the store")]
    Timeout(std::time::Duration),
    #[error(
        "the database schema has version {found}, newer than this binary supports \
         (version {supported}); run a newer baton"
    )]
    TooNew { found: u32, supported: u32 },
    #[error(
        "the database schema has version {found}, older than this binary (version {supported}); \
         run `baton db migrate` first"
    )]
    Behind { found: u32, supported: u32 },
    #[error("{0}; point baton at its own schema")]
    Foreign(String),
    #[error("migration {number} failed: {source}")]
    Migration { number: u32, source: tokio_postgres::Error },
    #[error("cannot start the store's {what}: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

/// A failure inside a write transaction or a read, as the engine sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// The database did not answer within `io_timeout`: the connection is
    /// dropped, since its state is unknown.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// There is no connection (the last one was lost and reconnecting failed).
    #[error("no connection to PostgreSQL: {0}")]
    Disconnected(String),
    /// A stored row did not decode: a bug or a hand-edited database.
    #[error("unreadable row: {0}")]
    Row(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A deferred guarded save found its row changed since it was loaded
    /// (its checked form failed, aborting the transaction).
    #[error("a deferred save found its task changed under it")]
    SaveLost,
    /// A deferred write failed, aborting the transaction; the statement that
    /// carried it was not the cause.
    #[error("a deferred write failed: {0}")]
    Deferred(Box<StoreError>),
}

/// What a failure means for the batch that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The connection is gone or in an unknown state: drop it, acknowledge
    /// nothing of the batch, reconnect before the next one.
    Lost,
    /// Deadlock or serialization failure between replicas: roll the batch
    /// back and run it again.
    RerunBatch,
    /// A unique key taken by a concurrent transaction (two replicas
    /// submitting one idempotency key): run the operation again, it will
    /// find the other's row.
    Conflict,
    /// Anything else: this operation fails, its neighbours go on.
    Other,
}

impl StoreError {
    /// The one place that decides what a failure means.
    pub(crate) fn class(&self) -> Class {
        match self {
            Self::Timeout(_) | Self::Disconnected(_) => Class::Lost,
            Self::Row(_) | Self::Json(_) => Class::Other,
            Self::SaveLost => Class::Conflict,
            Self::Deferred(e) => e.class(),
            Self::Pg(e) => classify(e),
        }
    }
}

/// Whether PostgreSQL refused for lack of disk space (SQLSTATE 53100,
/// `disk_full`): answered `StorageFull` (HTTP 507) instead of `Unavailable`.
/// The connection is still dropped like any class-53 failure, so nothing of
/// the batch commits.
pub(crate) fn is_disk_full(e: &StoreError) -> bool {
    match e {
        StoreError::Pg(e) => e.code() == Some(&SqlState::DISK_FULL),
        StoreError::Deferred(e) => is_disk_full(e),
        _ => false,
    }
}

pub(crate) fn classify(e: &tokio_postgres::Error) -> Class {
    if e.is_closed() {
        return Class::Lost;
    }
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Class::RerunBatch
        }
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => Class::Conflict,
        // Class 08 (connection exception), 57P01..03 (admin shutdown, crash
        // shutdown, cannot connect now), 53 (insufficient resources).
        Some(code) if is_connection_state(code.code()) => Class::Lost,
        Some(_) => Class::Other,
        // No SQLSTATE: an IO or protocol error on the socket.
        None => Class::Lost,
    }
}

fn is_connection_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
}
