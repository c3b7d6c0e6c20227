//! Opening the store under test. One place names the SQLite store's options,
//! so the benchmark, the crash child and the crash test's checker all run
//! Baton as configured here: the production defaults (WAL, synchronous=FULL,
//! group commit up to `limits.commit_batch_max`, abort on a fatal commit
//! error), nothing tuned for the benchmark.

use anyhow::{Context as _, Result};
use baton_sqlite::{SqliteOptions, SqliteStore};
use std::path::Path;
use std::sync::Arc;

/// Opens (creating if needed) Baton's SQLite store at `path`.
pub fn open_sqlite(path: &Path) -> Result<Arc<SqliteStore>> {
    let store = SqliteStore::open(path, SqliteOptions::default())
        .with_context(|| format!("open Baton's SQLite store at {}", path.display()))?;
    Ok(Arc::new(store))
}
