//! The mapping between domain values and row columns, shared by the writer and
//! the readers: ids as 16-byte blobs, hashes as 32-byte blobs, the extracted
//! index columns of a task, and decoding a task row. The JSON `body` is the
//! truth; the extracted columns are recomputed from the task on every save,
//! so they cannot drift from it.

use crate::error::StoreError;
use baton_core::{Hash, IndexColumns, Millis, Task};

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

impl Columns<'_> {
    /// Which index columns differ from `before`, as a mask of `UPDATE_COLUMNS`.
    pub(crate) fn changed_since(&self, before: &Indexed) -> usize {
        let flags = [
            self.stage != before.stage,
            self.state != before.state,
            self.priority != before.priority,
            self.deadline_rank != before.deadline_rank,
            self.due_at != before.due_at,
            self.holder != before.holder.as_deref(),
            self.ready != before.ready,
            self.ready_since != before.ready_since,
        ];
        flags.iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| 1 << i).sum()
    }
}

/// The index columns of a task as loaded, kept by the writer between a load
/// and the update that follows it.
pub(crate) struct Indexed {
    stage: String,
    state: &'static str,
    priority: i32,
    deadline_rank: Millis,
    due_at: Option<Millis>,
    holder: Option<String>,
    ready: bool,
    ready_since: Option<Millis>,
}

impl Indexed {
    pub(crate) fn of(task: &Task) -> Self {
        let c = task.index_columns();
        Self {
            stage: c.stage.to_owned(),
            state: c.state,
            priority: c.priority,
            deadline_rank: c.deadline_rank,
            due_at: c.due_at,
            holder: c.holder.map(str::to_owned),
            ready: c.ready,
            ready_since: c.ready_since,
        }
    }
}

/// The index columns an update may set, in the order of the `changed_since`
/// mask bits and of the update's parameters `?3` to `?10`.
pub(crate) const UPDATE_COLUMNS: [&str; 8] =
    ["stage", "state", "priority", "deadline_rank", "due_at", "holder", "ready", "ready_since"];

/// A u64 counter as an SQLite integer. Counters never come near 2^63; if one
/// did, refusing the write beats wrapping it.
pub(crate) fn int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Row(format!("{value} does not fit an SQLite integer")))
}

/// Decodes `(body, head)` columns at `at` and `at + 1` of a task row.
pub(crate) fn task_and_head(row: &rusqlite::Row<'_>, at: usize) -> Result<(Task, Hash), StoreError> {
    let body = row.get_ref(at)?.as_str().map_err(|e| StoreError::Row(format!("task body: {e}")))?;
    let task: Task = serde_json::from_str(body)?;
    let head: [u8; 32] = row.get(at + 1)?;
    Ok((task, Hash(head)))
}
