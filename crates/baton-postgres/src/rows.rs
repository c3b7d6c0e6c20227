//! The mapping between domain values and row columns, shared by the writer
//! and the readers: ids as `uuid`, hashes as 32-byte `bytea`, times as
//! `bigint` milliseconds, the extracted index columns of a task, and decoding
//! a task row. The JSON `body` is the truth; the extracted columns are
//! recomputed from the task on every save, so they cannot drift from it.

use crate::error::StoreError;
use baton_core::{Hash, IndexColumns, Task};
use tokio_postgres::Row;

/// The index columns of a task row (`Task::index_columns`) and its
/// revision as the database stores it.
pub(crate) struct Columns<'t> {
    index: IndexColumns<'t>,
    pub revision: i64,
}

impl<'t> Columns<'t> {
    pub(crate) fn of(task: &'t Task) -> Result<Self, StoreError> {
        Ok(Self { index: task.index_columns(), revision: int(task.revision)? })
    }
}

impl<'t> std::ops::Deref for Columns<'t> {
    type Target = IndexColumns<'t>;
    fn deref(&self) -> &IndexColumns<'t> {
        &self.index
    }
}

/// A u64 counter as a `bigint`. Counters never come near 2^63; if one did,
/// refusing the write beats wrapping it.
pub(crate) fn int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Row(format!("{value} does not fit a bigint")))
}

/// A count or limit as a `bigint` parameter.
pub(crate) fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A 32-byte hash from a `bytea` column.
pub(crate) fn hash(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes).map(Hash).map_err(|_| StoreError::Row(format!("{what} is not 32 bytes")))
}

/// Decodes `(body, head)` columns at `at` and `at + 1` of a task row.
pub(crate) fn task_and_head(row: &Row, at: usize) -> Result<(Task, Hash), StoreError> {
    let body: &str = row.try_get(at)?;
    let task: Task = serde_json::from_str(body)?;
    let head: &[u8] = row.try_get(at + 1)?;
    Ok((task, hash(head, "a task's head")?))
}

/// Decodes a JSON `text` column.
pub(crate) fn json<T: serde::de::DeserializeOwned>(row: &Row, at: usize) -> Result<T, StoreError> {
    let body: &str = row.try_get(at)?;
    Ok(serde_json::from_str(body)?)
}
