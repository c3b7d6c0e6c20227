//! The store's own errors: why a database would not open (`OpenError`), what
//! failed inside a transaction (`StoreError`, the engine's `Tx::Error`), the
//! fatal condition that stops the process (`FatalError`), and `is_fatal`, the
//! one place that decides which SQLite failures are fatal. Callers of the
//! `Store` trait never see these types: they get `baton_core::Error`.

use rusqlite::ffi::ErrorCode;
use std::fmt;
use std::path::PathBuf;

/// Why `SqliteStore::open` refused a database. Each message names the file and
/// says what to do, because an operator reads it at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The stage policies do not fit the limits.
    #[error("invalid rules: {0}; fix the stage policies or the limits")]
    Rules(String),
    #[error("cannot create the directory for {path:?}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the SQLite database {path:?}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(
        "the database {path:?} is corrupt ({check} found: {problems}); refusing to open it. \
         Restore it from a backup, or copy out what is readable with `sqlite3 {path:?} .recover`"
    )]
    Corrupt { path: PathBuf, check: &'static str, problems: String },
    #[error(
        "the database {path:?} has schema version {found}, newer than this binary supports \
         (version {supported}); run a newer baton, or restore a backup taken before the upgrade"
    )]
    TooNew { path: PathBuf, found: u32, supported: u32 },
    #[error("{path:?} is not a Baton database ({why}); point baton at its own database file")]
    Foreign { path: PathBuf, why: String },
    #[error(
        "the database {path:?} did not accept the durability settings ({found}); \
         WAL needs a local filesystem with shared memory"
    )]
    Pragmas { path: PathBuf, found: String },
    #[error("migration {number} failed on {path:?}: {source}")]
    Migration { path: PathBuf, number: u32, source: rusqlite::Error },
    #[error("cannot start the {thread} thread for {path:?}: {source}")]
    Thread { thread: &'static str, path: PathBuf, source: std::io::Error },
}

/// A failure inside a write transaction, as the engine sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row did not decode: a bug or a hand-edited database.
    #[error("unreadable row: {0}")]
    Row(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The archive directory or a chunk file failed (`crate::archive`).
    #[error("archive: {0}")]
    Archive(String),
}

impl StoreError {
    /// The SQLite error inside, if any, for `is_fatal`.
    pub(crate) fn sqlite(&self) -> Option<&rusqlite::Error> {
        match self {
            Self::Sqlite(e) => Some(e),
            Self::Row(_) | Self::Json(_) | Self::Archive(_) => None,
        }
    }
}

/// True for the SQLite failures after which the process must stop instead of
/// carrying on: I/O errors (including a failed fsync) and corruption. After
/// an fsync EIO, SQLite keeps accepting commits that may never reach the
/// disk (the fsyncgate lesson), so the only safe answer is to acknowledge
/// nothing, exit, and let recovery on restart find the truth.
///
/// A full disk is not fatal (`is_full`): SQLite reports `SQLITE_FULL` before
/// the commit record reaches the WAL, so the transaction is simply not
/// committed; the writer rolls the batch back, answers `StorageFull`, and
/// the next batch succeeds once space is freed.
pub fn is_fatal(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::SystemIoFailure | ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// True for `SQLITE_FULL`: the disk (or the database's size limit) is full.
pub fn is_full(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

/// What the writer reports to the fatal hook before the process stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalError {
    /// The step that failed: `begin`, `commit`, `operation`, ...
    pub during: &'static str,
    /// SQLite's extended result code, when SQLite reported the failure.
    pub code: Option<i32>,
    pub message: String,
    /// Operations in the batch; none of them was acknowledged.
    pub unacknowledged: usize,
}

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fatal storage error during {}: {} (sqlite code {:?}); {} operation(s) not acknowledged",
            self.during, self.message, self.code, self.unacknowledged
        )
    }
}
