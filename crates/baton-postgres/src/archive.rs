//! The archive of a PostgreSQL store: chunks (gzip JSON lines,
//! `baton_core::archive`) are rows of `archive_chunks` in the same database,
//! and `archived` indexes their tasks (migration 0011). A pass reads its
//! candidates in one repeatable-read snapshot on a pooled connection
//! (`candidates`), encodes the chunks, and sends `Op::Archive` to a writer:
//! one transaction inserts the chunks and the index rows and deletes the
//! live rows (`commit`), so a chunk is never visible without its index or
//! its tasks still live, and every replica reads the archive (no shared
//! filesystem needed). The server runs passes only on the replica holding
//! the `archive` duty; should two overlap at a lease's edge, the second
//! commit finds its rows gone (or its chunk name taken) and is refused.

use crate::error::StoreError;
use crate::rows::limit;
use crate::tx::PgTx;
use baton_core::archive::{
    ARCHIVE_FORMAT, ARCHIVE_SCAN_FACTOR, ArchiveChunk, ArchiveCommit, ArchiveRequest, ArchivedTask,
    Candidate, eligible, find_in_chunk,
};
use baton_core::store::{Notice, PushConfig};
use baton_core::{Event, Hash, Task, TaskId};
use deadpool_postgres::Pool;

const CANDIDATES: &str = "SELECT body, head FROM tasks WHERE state IN ('done', 'cancelled') \
    AND (((body::jsonb) -> 'state' ->> 'at')::bigint) < $1 \
    ORDER BY (((body::jsonb) -> 'state' ->> 'at')::bigint) LIMIT $2";

fn conn_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Disconnected(e.to_string())
}

/// The records of up to `max` tasks `eligible` lets go, with revisions,
/// read in one snapshot.
pub(crate) async fn candidates(
    pool: Pool,
    request: ArchiveRequest,
    max: usize,
) -> Result<Vec<(ArchivedTask, u64)>, StoreError> {
    let mut c = pool.get().await.map_err(conn_err)?;
    let t = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let scan = limit(max.saturating_mul(ARCHIVE_SCAN_FACTOR));
    let rows = t.query(CANDIDATES, &[&request.finished_before, &scan]).await?;
    let mut out = Vec::new();
    for row in rows {
        if out.len() >= max {
            break;
        }
        let body: String = row.try_get(0)?;
        let head: Vec<u8> = row.try_get(1)?;
        let head = Hash(head.try_into().map_err(|_| StoreError::Row("a head is not 32 bytes".into()))?);
        let task: Task = serde_json::from_str(&body)?;
        let id = task.id.0;
        let parent: Option<Task> = match task.parent {
            Some(p) => t
                .query_opt("SELECT body FROM tasks WHERE id = $1", &[&p.0])
                .await?
                .map(|r| r.try_get::<_, String>(0).map_err(StoreError::from))
                .transpose()?
                .map(|b| serde_json::from_str(&b))
                .transpose()?,
            None => None,
        };
        let has_children =
            t.query_opt("SELECT 1 FROM tasks WHERE parent = $1 LIMIT 1", &[&id]).await?.is_some();
        let mut notices = Vec::new();
        for r in t.query("SELECT id, body FROM notices WHERE task = $1 ORDER BY id", &[&id]).await? {
            let n: i64 = r.try_get(0)?;
            let b: String = r.try_get(1)?;
            notices.push((u64::try_from(n).unwrap_or(0), serde_json::from_str::<Notice>(&b)?));
        }
        let mut pushes = Vec::new();
        for r in t.query("SELECT body FROM push_configs WHERE task = $1 ORDER BY id", &[&id]).await? {
            pushes.push(serde_json::from_str::<PushConfig>(&r.try_get::<_, String>(0)?)?);
        }
        // The final deliveries of this task's notices, read once.
        let mut finals = std::collections::HashSet::new();
        for r in t
            .query(
                "SELECT d.webhook, d.notice FROM deliveries d JOIN notices n ON n.id = d.notice \
                 WHERE n.task = $1 AND d.final",
                &[&id],
            )
            .await?
        {
            let webhook: String = r.try_get(0)?;
            let notice: i64 = r.try_get(1)?;
            finals.insert((webhook, u64::try_from(notice).unwrap_or(0)));
        }
        let candidate = Candidate {
            task: &task,
            parent: parent.as_ref(),
            has_children,
            notices: &notices,
            pushes: &pushes,
        };
        if !eligible(&candidate, &request, |hook, notice| finals.contains(&(hook.to_owned(), notice))) {
            continue;
        }
        let payload: String =
            t.query_one("SELECT body FROM payloads WHERE task = $1", &[&id]).await?.try_get(0)?;
        let texts = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<String>, StoreError> {
            rows.iter().map(|r| r.try_get::<_, String>(0).map_err(StoreError::from)).collect()
        };
        let events =
            texts(t.query("SELECT body FROM events WHERE task = $1 ORDER BY version", &[&id]).await?)?;
        let handoffs = baton_core::archive::handoff_lines(task.id, &events).map_err(StoreError::Row)?;
        let alerts = texts(t.query("SELECT body FROM alerts WHERE task = $1 ORDER BY id", &[&id]).await?)?;
        let record = ArchivedTask {
            format: ARCHIVE_FORMAT,
            id: task.id,
            namespace: task.namespace.clone(),
            idempotency_key: task.idempotency_key.clone(),
            finished_at: baton_core::archive::finished_at(&task).unwrap_or_default(),
            head,
            row: body,
            payload,
            events,
            handoffs,
            alerts,
        };
        out.push((record, task.revision));
    }
    t.commit().await?;
    Ok(out)
}

/// An archived task's record, read from its chunk row.
pub(crate) async fn archived(pool: Pool, id: TaskId) -> Result<Option<ArchivedTask>, StoreError> {
    let c = pool.get().await.map_err(conn_err)?;
    let st = c
        .prepare_cached(
            "SELECT c.name, c.body FROM archived a JOIN archive_chunks c ON c.name = a.chunk WHERE a.id = $1",
        )
        .await?;
    let Some(row) = c.query_opt(&st, &[&id.0]).await? else { return Ok(None) };
    let name: String = row.try_get(0)?;
    let bytes: Vec<u8> = row.try_get(1)?;
    match find_in_chunk(&bytes, id).map_err(|e| StoreError::Row(format!("archive chunk {name}: {e}")))? {
        Some(record) => Ok(Some(record)),
        None => Err(StoreError::Row(format!(
            "archive chunk {name} lacks task {id}, which the index places there"
        ))),
    }
}

/// The events of an archived task (none when it was never archived).
pub(crate) async fn history(pool: Pool, id: TaskId) -> Result<Vec<Event>, StoreError> {
    match archived(pool, id).await? {
        Some(record) => record.parsed_events().map_err(|(_, why)| StoreError::Row(why)),
        None => Ok(Vec::new()),
    }
}

/// The first chunk after `after`, with its bytes and indexed tasks.
pub(crate) async fn chunk_after(
    pool: Pool,
    after: Option<String>,
) -> Result<Option<ArchiveChunk>, StoreError> {
    let c = pool.get().await.map_err(conn_err)?;
    let after = after.unwrap_or_default();
    let Some(row) = c
        .query_opt("SELECT name, body FROM archive_chunks WHERE name > $1 ORDER BY name LIMIT 1", &[&after])
        .await?
    else {
        return Ok(None);
    };
    let name: String = row.try_get(0)?;
    let bytes: Vec<u8> = row.try_get(1)?;
    let indexed: Vec<TaskId> = c
        .query("SELECT id FROM archived WHERE chunk = $1 ORDER BY id", &[&name])
        .await?
        .iter()
        .map(|r| r.try_get::<_, uuid::Uuid>(0).map(TaskId))
        .collect::<Result<_, _>>()?;
    let indexed_count = Some(indexed.len() as u64);
    Ok(Some(ArchiveChunk { name, bytes, indexed, indexed_count }))
}

const DELETES: &[&str] = &[
    "DELETE FROM deliveries WHERE notice IN (SELECT id FROM notices WHERE task = $1)",
    "DELETE FROM notices WHERE task = $1",
    "DELETE FROM push_configs WHERE task = $1",
    "DELETE FROM alerts WHERE task = $1",
    "DELETE FROM handoff_tasks WHERE task = $1",
    "DELETE FROM events WHERE task = $1",
    "DELETE FROM payloads WHERE task = $1",
    "DELETE FROM tasks WHERE id = $1",
];

/// In a writer's transaction: checks every task (still there, terminal, at
/// its revision, locked, childless), then stores the chunks, indexes the
/// tasks and deletes their rows. False, having written nothing, when a
/// check fails.
pub(crate) fn commit(tx: &mut PgTx<'_>, commit: &ArchiveCommit) -> Result<bool, StoreError> {
    for entry in commit.chunks.iter().flat_map(|c| &c.tasks) {
        let row = tx.query_opt(
            "SELECT revision FROM tasks WHERE id = $1 AND state IN ('done', 'cancelled') FOR UPDATE",
            &[&entry.id.0],
        )?;
        let revision: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
        if revision != i64::try_from(entry.revision).ok() {
            return Ok(false);
        }
        if tx.query_opt("SELECT 1 FROM tasks WHERE parent = $1 LIMIT 1", &[&entry.id.0])?.is_some() {
            return Ok(false);
        }
    }
    for chunk in &commit.chunks {
        let bytes = chunk
            .bytes
            .as_ref()
            .ok_or_else(|| StoreError::Row(format!("archive chunk {} came without its bytes", chunk.name)))?;
        tx.execute(
            "INSERT INTO archive_chunks (name, hour, body) VALUES ($1, $2, $3)",
            &[&chunk.name, &chunk.hour, bytes],
        )?;
        for entry in &chunk.tasks {
            for sql in DELETES {
                tx.execute(sql, &[&entry.id.0])?;
            }
            tx.execute(
                "INSERT INTO archived (id, namespace, idempotency_key, chunk, finished_at) VALUES ($1, $2, $3, $4, $5)",
                &[&entry.id.0, &entry.namespace, &entry.idempotency_key, &chunk.name, &entry.finished_at],
            )?;
        }
    }
    Ok(true)
}

/// The archived task holding an idempotency key.
pub(crate) fn by_key(tx: &mut PgTx<'_>, namespace: &str, key: &str) -> Result<Option<TaskId>, StoreError> {
    let row = tx.query_opt(
        "SELECT id FROM archived WHERE namespace = $1 AND idempotency_key = $2",
        &[&namespace, &key],
    )?;
    Ok(row.map(|r| r.try_get::<_, uuid::Uuid>(0)).transpose()?.map(TaskId))
}
