//! The archive of an SQLite store: chunk files in a directory beside the
//! database (`<file>.archive/`, e.g. `.baton/baton.db.archive/`), one per
//! hour of finish per pass, each gzip JSON lines (`baton_core::archive`), and
//! the tables that index them (migration 0011): `archive_chunks` (name,
//! hour, task count), `archived` (task, chunk number, finish time) and
//! `archived_keys` (the idempotency keys of archived tasks), about 40 bytes a
//! task in all, since the index stays in the database.
//!
//! A pass (`SqliteStore::archive`) runs in two steps, so a crash anywhere
//! loses nothing and duplicates nothing:
//!
//! 1. On a reader thread, in one read transaction (one snapshot): pick the
//!    eligible tasks (`prepare`), read each whole record, and write each
//!    chunk durably: `NAME.tmp`, fsync, rename to `NAME.jsonl.gz`, fsync the
//!    directory. A crash here leaves a `.tmp` or a chunk nothing indexes.
//! 2. Through the writer: `Op::Archive`, one transaction that deletes the
//!    rows (guarded by revision) and inserts their index rows (`commit`).
//!    Only a chunk with index rows is ever read; the rows it holds are gone
//!    from the live tables in the same commit that made it visible.
//!
//! A chunk without index rows (a crash between the steps, or a commit that
//! was refused) is an orphan: the first pass of each process, and the pass
//! after a failed commit, remove orphans and leftover `.tmp` files. Its
//! tasks are still live and the next pass writes them again.

use crate::error::StoreError;
use crate::rows::int;
use baton_core::archive::{
    ARCHIVE_FORMAT, ARCHIVE_SCAN_FACTOR, ArchiveChunk, ArchiveCommit, ArchiveRequest, ArchivedTask,
    Candidate, eligible, encode_chunk, find_in_chunk, group, is_chunk_name,
};
use baton_core::store::{Notice, PushConfig};
use baton_core::{Hash, Task, TaskId};
use rusqlite::{Connection, OptionalExtension, params};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A chunk file's extension.
pub const CHUNK_SUFFIX: &str = ".jsonl.gz";

/// The oldest finished tasks, through `tasks_finished` (named: without
/// statistics the planner prefers `tasks_state` and sorts every finished task).
const CANDIDATES: &str = "SELECT body, head FROM tasks INDEXED BY tasks_finished WHERE state IN ('done', 'cancelled') \
    AND json_extract(body, '$.state.at') < ?1 ORDER BY json_extract(body, '$.state.at') LIMIT ?2";

/// Where the archive of the database at `db` lives: beside it.
pub fn archive_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".archive");
    db.with_file_name(name)
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Archive(format!("{what} {}: {e}", path.display()))
}

/// Step 1 of a pass (see the module docs): picks up to `limit` eligible
/// tasks, writes their chunks durably into `dir`, and returns the commit
/// that deletes and indexes them (empty when nothing may move). First
/// removes orphans when `sweep` is set.
pub(crate) fn prepare(
    conn: &Connection,
    dir: &Path,
    request: &ArchiveRequest,
    limit: usize,
    sweep: Option<&[String]>,
) -> Result<ArchiveCommit, StoreError> {
    // One snapshot for the reads, ended before the files are written: a
    // reader's snapshot keeps the writer's checkpoints from restarting the
    // WAL, so it is held no longer than the reads need.
    conn.execute_batch("BEGIN")?;
    let read = read_in(conn, dir, request, limit, sweep);
    let end = conn.execute_batch("COMMIT");
    let records = read?;
    end?;
    if records.is_empty() {
        return Ok(ArchiveCommit { chunks: Vec::new() });
    }
    ensure_dir(dir)?;
    let mut chunks = Vec::new();
    for (chunk, lines) in group(records) {
        write_chunk(dir, &chunk.name, &encode_chunk(&lines))?;
        chunks.push(chunk);
    }
    sync_dir(dir)?;
    Ok(ArchiveCommit { chunks })
}

fn read_in(
    conn: &Connection,
    dir: &Path,
    request: &ArchiveRequest,
    limit: usize,
    sweep: Option<&[String]>,
) -> Result<Vec<(ArchivedTask, u64)>, StoreError> {
    if let Some(names) = sweep {
        remove_orphans(conn, dir, names)?;
    }
    candidates(conn, request, limit)
}

/// The records of up to `limit` tasks `eligible` lets go, with revisions.
fn candidates(
    conn: &Connection,
    request: &ArchiveRequest,
    limit: usize,
) -> Result<Vec<(ArchivedTask, u64)>, StoreError> {
    let scan = int(limit.saturating_mul(ARCHIVE_SCAN_FACTOR) as u64)?;
    let mut st = conn.prepare_cached(CANDIDATES)?;
    let rows: Vec<(String, [u8; 32])> = st
        .query_map(params![request.finished_before, scan], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (body, head) in rows {
        if out.len() >= limit {
            break;
        }
        let task: Task = serde_json::from_str(&body)?;
        let id = task.id.0.as_bytes().to_vec();
        let parent: Option<Task> = match task.parent {
            Some(p) => conn
                .prepare_cached("SELECT body FROM tasks WHERE id = ?1")?
                .query_row([p.0.as_bytes()], |r| r.get::<_, String>(0))
                .optional()?
                .map(|b| serde_json::from_str(&b))
                .transpose()?,
            None => None,
        };
        let has_children = conn
            .prepare_cached("SELECT 1 FROM tasks WHERE parent = ?1 LIMIT 1")?
            .query_row([&id], |_| Ok(()))
            .optional()?
            .is_some();
        let notices = bodies(conn, "SELECT id, body FROM notices WHERE task = ?1 ORDER BY id", &id)?
            .into_iter()
            .map(|(n, b)| Ok((u64::try_from(n).unwrap_or(0), serde_json::from_str::<Notice>(&b)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let pushes = bodies(conn, "SELECT 0, body FROM push_configs WHERE task = ?1 ORDER BY id", &id)?
            .into_iter()
            .map(|(_, b)| serde_json::from_str::<PushConfig>(&b).map_err(StoreError::from))
            .collect::<Result<Vec<_>, _>>()?;
        let candidate = Candidate {
            task: &task,
            parent: parent.as_ref(),
            has_children,
            notices: &notices,
            pushes: &pushes,
        };
        let mut failed = None;
        let mut finals = conn.prepare_cached(
            "SELECT 1 FROM deliveries WHERE webhook = ?1 AND notice = ?2 AND final = 1 LIMIT 1",
        )?;
        let ok = eligible(&candidate, request, |hook, notice| {
            let n = i64::try_from(notice).unwrap_or(i64::MAX);
            match finals.query_row(params![hook, n], |_| Ok(())).optional() {
                Ok(found) => found.is_some(),
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        if !ok {
            continue;
        }
        let payload: String = conn
            .prepare_cached("SELECT body FROM payloads WHERE task = ?1")?
            .query_row([&id], |r| r.get(0))?;
        let texts = |sql: &str| -> Result<Vec<String>, StoreError> {
            Ok(bodies(conn, sql, &id)?.into_iter().map(|(_, b)| b).collect())
        };
        let events = texts("SELECT version, body FROM events WHERE task = ?1 ORDER BY version")?;
        let handoffs = baton_core::archive::handoff_lines(task.id, &events).map_err(StoreError::Row)?;
        let record = ArchivedTask {
            format: ARCHIVE_FORMAT,
            id: task.id,
            namespace: task.namespace.clone(),
            idempotency_key: task.idempotency_key.clone(),
            finished_at: baton_core::archive::finished_at(&task).unwrap_or_default(),
            head: Hash(head),
            row: body,
            payload,
            events,
            handoffs,
            alerts: texts("SELECT id, body FROM alerts WHERE task = ?1 ORDER BY id")?,
        };
        out.push((record, task.revision));
    }
    Ok(out)
}

/// `(integer, text)` rows of a query over one task id.
fn bodies(conn: &Connection, sql: &str, id: &[u8]) -> Result<Vec<(i64, String)>, StoreError> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io("cannot create the archive directory", dir, &e))?;
    // The new directory's own entry must be durable too.
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("cannot fsync the directory", dir, &e))
}

/// Writes a chunk atomically and durably (but for the directory's fsync,
/// which the caller does once for all chunks): a reader sees the whole file
/// or none.
fn write_chunk(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(format!("{name}{CHUNK_SUFFIX}"));
    let mut file = File::create(&tmp).map_err(|e| io("cannot create", &tmp, &e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| io("cannot write", &tmp, &e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io("cannot rename", &tmp, &e))
}

/// Removes chunk files nothing indexes and leftover `.tmp` files: all of
/// them when `names` is empty (the first pass), else just those named.
fn remove_orphans(conn: &Connection, dir: &Path, names: &[String]) -> Result<(), StoreError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut indexed = conn.prepare_cached("SELECT 1 FROM archive_chunks WHERE name = ?1")?;
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(|e| io("cannot list", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("cannot list", dir, &e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let orphan = if let Some(name) = file.strip_suffix(".tmp") {
            is_chunk_name(name)
        } else if let Some(name) = file.strip_suffix(CHUNK_SUFFIX) {
            is_chunk_name(name)
                && (names.is_empty() || names.iter().any(|n| n == name))
                && indexed.query_row([name], |_| Ok(())).optional()?.is_none()
        } else {
            false
        };
        if orphan {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io("cannot remove the orphan chunk", &path, &e))?;
            tracing::info!(chunk = %file, "archive: removed a chunk no index row names (a pass that did not commit)");
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Step 2 of a pass, in the writer's transaction: deletes each task's rows
/// guarded by revision and inserts its index row. False, having written
/// nothing, when a row moved on, went, or has a child.
/// `writes` counts the write about to run (the writer's savepoint logic).
pub(crate) fn commit(
    conn: &Connection,
    commit: &ArchiveCommit,
    writes: &mut u32,
) -> Result<bool, StoreError> {
    for entry in commit.chunks.iter().flat_map(|c| &c.tasks) {
        let id = entry.id.0.as_bytes();
        let revision: Option<i64> = conn
            .prepare_cached("SELECT revision FROM tasks WHERE id = ?1 AND state IN ('done', 'cancelled')")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        if revision != Some(int(entry.revision)?) {
            return Ok(false);
        }
        let child = conn
            .prepare_cached("SELECT 1 FROM tasks WHERE parent = ?1 LIMIT 1")?
            .query_row([id], |_| Ok(()))
            .optional()?;
        if child.is_some() {
            return Ok(false);
        }
    }
    if commit.chunks.iter().any(|c| c.bytes.is_some()) {
        return Err(StoreError::Archive(
            "an SQLite archive chunk is a file, written before the commit".into(),
        ));
    }
    const DELETES: &[&str] = &[
        "DELETE FROM deliveries WHERE notice IN (SELECT id FROM notices WHERE task = ?1)",
        "DELETE FROM notices WHERE task = ?1",
        "DELETE FROM push_configs WHERE task = ?1",
        "DELETE FROM alerts WHERE task = ?1",
        "DELETE FROM handoff_tasks WHERE task = ?1",
        "DELETE FROM events WHERE task = ?1",
        "DELETE FROM payloads WHERE task = ?1",
        "DELETE FROM tasks WHERE id = ?1",
    ];
    *writes += 1;
    for chunk in &commit.chunks {
        let number: i64 = conn
            .prepare_cached(
                "INSERT INTO archive_chunks (name, hour, tasks) VALUES (?1, ?2, ?3) RETURNING id",
            )?
            .query_row(params![chunk.name, chunk.hour, int(chunk.tasks.len() as u64)?], |r| r.get(0))?;
        for entry in &chunk.tasks {
            let id = entry.id.0.as_bytes();
            for sql in DELETES {
                conn.prepare_cached(sql)?.execute([id])?;
            }
            conn.prepare_cached("INSERT INTO archived (id, chunk, finished_at) VALUES (?1, ?2, ?3)")?
                .execute(params![id, number, entry.finished_at])?;
            if let Some(key) = &entry.idempotency_key {
                conn.prepare_cached(
                    "INSERT INTO archived_keys (namespace, idempotency_key, id) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![entry.namespace, key, id])?;
            }
        }
    }
    Ok(true)
}

/// The archived task holding an idempotency key, in the writer's transaction.
pub(crate) fn by_key(conn: &Connection, namespace: &str, key: &str) -> Result<Option<TaskId>, StoreError> {
    let id: Option<[u8; 16]> = conn
        .prepare_cached("SELECT id FROM archived_keys WHERE namespace = ?1 AND idempotency_key = ?2")?
        .query_row([namespace, key], |r| r.get(0))
        .optional()?;
    Ok(id.map(|b| TaskId(uuid::Uuid::from_bytes(b))))
}

/// An archived task's record, read from its chunk.
pub(crate) fn archived(
    conn: &Connection,
    dir: &Path,
    id: TaskId,
) -> Result<Option<ArchivedTask>, StoreError> {
    let chunk: Option<String> = conn
        .prepare_cached(
            "SELECT c.name FROM archived a JOIN archive_chunks c ON c.id = a.chunk WHERE a.id = ?1",
        )?
        .query_row([id.0.as_bytes()], |r| r.get(0))
        .optional()?;
    let Some(chunk) = chunk else { return Ok(None) };
    let bytes = read_chunk(dir, &chunk)?;
    match find_in_chunk(&bytes, id).map_err(|e| StoreError::Archive(format!("chunk {chunk}: {e}")))? {
        Some(record) => Ok(Some(record)),
        None => {
            Err(StoreError::Archive(format!("chunk {chunk} lacks task {id}, which the index places there")))
        }
    }
}

fn read_chunk(dir: &Path, name: &str) -> Result<Vec<u8>, StoreError> {
    if !is_chunk_name(name) {
        return Err(StoreError::Archive(format!("{name:?} is not a chunk name")));
    }
    let path = dir.join(format!("{name}{CHUNK_SUFFIX}"));
    fs::read(&path).map_err(|e| io("cannot read the archive chunk", &path, &e))
}

/// The events of an archived task (none when it was never archived).
pub(crate) fn history(
    conn: &Connection,
    dir: &Path,
    id: TaskId,
) -> Result<Vec<baton_core::Event>, StoreError> {
    match archived(conn, dir, id)? {
        Some(record) => record.parsed_events().map_err(|(_, why)| StoreError::Archive(why)),
        None => Ok(Vec::new()),
    }
}

/// The first indexed chunk after `after`, with its bytes, the tasks of it
/// the index places there (each line's id looked up: the index keeps no list
/// per chunk) and how many the index counts. A chunk whose file cannot be
/// read comes back with no bytes, which an audit reports as unreadable.
pub(crate) fn chunk_after(
    conn: &Connection,
    dir: &Path,
    after: Option<&str>,
) -> Result<Option<ArchiveChunk>, StoreError> {
    let row: Option<(i64, String, i64)> = conn
        .prepare_cached("SELECT id, name, tasks FROM archive_chunks WHERE name > ?1 ORDER BY name LIMIT 1")?
        .query_row([after.unwrap_or("")], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((number, name, count)) = row else { return Ok(None) };
    let bytes = read_chunk(dir, &name).unwrap_or_default();
    let mut indexed = Vec::new();
    let mut placed = conn.prepare_cached("SELECT 1 FROM archived WHERE id = ?1 AND chunk = ?2")?;
    for line in baton_core::archive::decode_chunk(&bytes).unwrap_or_default().into_iter().flatten() {
        if placed.query_row(params![line.id.0.as_bytes(), number], |_| Ok(())).optional()?.is_some() {
            indexed.push(line.id);
        }
    }
    let indexed_count = Some(u64::try_from(count).unwrap_or(0));
    Ok(Some(ArchiveChunk { name, bytes, indexed, indexed_count }))
}

/// The chunk files in an archive directory, by name, for an audit of a
/// directory without its database (`baton audit verify --archive PATH`).
pub fn chunk_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(CHUNK_SUFFIX)
            && is_chunk_name(name)
        {
            out.push((name.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}
