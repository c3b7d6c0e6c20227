//! Opening the store under test. One place names the SQLite store's options,
//! so the benchmark and the crash child run Baton exactly as configured here.

use anyhow::{Result, bail};
use baton_core::Store;
use std::path::Path;
use std::sync::Arc;

/// Opens (creating if needed) Baton's SQLite store at `path`.
pub fn open_sqlite(path: &Path) -> Result<Arc<dyn Store>> {
    bail!("baton_sqlite::SqliteStore does not exist yet; cannot open {}", path.display())
}
