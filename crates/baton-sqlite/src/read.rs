//! Reads: the reader threads and the queries behind `get`,
//! `list`, `history`, `handoff` and `next_due`. Reads never touch the writer:
//! in WAL mode each read sees the latest committed snapshot while the writer
//! keeps committing. Each query is one statement, so it reads one snapshot.
//!
//! Reads run on the store's own reader threads (`readers`, one connection
//! each), never on the caller's thread: a caller on an async runtime is not
//! blocked by SQLite, at most `readers` reads run at once, and at most
//! `read_queue_max` wait (past it, `Unavailable` at once). The answer comes
//! back through the same runtime-free one-shot channel as the writer's.

use crate::error::StoreError;
use crate::oneshot;
use crate::options::SqliteOptions;
use crate::rows::{int, task_and_head};
use crate::schema::open_reader;
use baton_core::event::{decode_chain, decode_page, fold_base, handoff_from_history};
use baton_core::metrics::{Anomaly, Rollup};
use baton_core::store::{Delivery, Notice, PushConfig, StageGauge};
use baton_core::{
    Alert, Error, Event, Handoff, HandoffId, Millis, Page, Task, TaskFilter, TaskId, TaskView, Workflow,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A read, sent to a reader thread with the channel its answer goes back on.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// The reader threads. Each owns one read-only connection and takes reads
/// off one bounded queue, so reads never run on the caller's (async) thread,
/// at most `readers` run at once, and at most `read_queue_max` wait: past
/// that a read is answered `Unavailable` at once instead of piling up.
pub(crate) struct ReadPool {
    jobs: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ReadPool {
    pub(crate) fn open(path: PathBuf, options: &SqliteOptions) -> rusqlite::Result<Self> {
        let readers = options.readers.max(1);
        let (jobs, queue) = sync_channel::<Job>(options.read_queue_max.max(1));
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::with_capacity(readers);
        for i in 0..readers {
            let conn = open_reader(&path, options)?;
            let queue = Arc::clone(&queue);
            let thread = std::thread::Builder::new()
                .name(format!("baton-sqlite-reader-{i}"))
                .spawn(move || serve_reads(&conn, &queue))
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            threads.push(thread);
        }
        Ok(Self { jobs: Mutex::new(Some(jobs)), threads: Mutex::new(threads) })
    }

    /// Runs `f` on a reader thread; resolves with its answer.
    pub(crate) fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        let (answer, answered) = oneshot::channel();
        let queued =
            self.queue(Box::new(move |conn: &Connection| answer.send(f(conn).map_err(|e| unavailable(&e)))));
        async move {
            queued?;
            answered.await.unwrap_or_else(|| Err(Error::Unavailable("the SQLite store is closed".into())))
        }
    }

    /// `with`, waiting on this thread: for the store's few blocking methods.
    pub(crate) fn with_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let (answer, answered) = std::sync::mpsc::channel();
        self.queue(Box::new(move |conn: &Connection| {
            let _ = answer.send(f(conn).map_err(|e| unavailable(&e)));
        }))?;
        answered.recv().unwrap_or_else(|_| Err(Error::Unavailable("the SQLite store is closed".into())))
    }

    fn queue(&self, job: Job) -> Result<(), Error> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(jobs) = jobs.as_ref() else {
            return Err(Error::Unavailable("the SQLite store is closed".into()));
        };
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                Error::Unavailable("too many reads are waiting (limit read_queue_max); retry shortly".into())
            }
            TrySendError::Disconnected(_) => Error::Unavailable("the SQLite store is closed".into()),
        })
    }

    /// Refuses later reads, lets queued ones finish, and stops the threads.
    pub(crate) fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(PoisonError::into_inner).take());
        for thread in self.threads.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            if thread.join().is_err() {
                tracing::error!("a SQLite reader thread panicked");
            }
        }
    }
}

/// A reader thread's loop: one read at a time until the pool closes.
fn serve_reads(conn: &Connection, queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panicking read is a bug in that read: its caller hears
        // `Unavailable` (its answer channel drops); the thread goes on.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!("a SQLite read panicked");
        }
    }
}

fn unavailable(e: &StoreError) -> Error {
    tracing::error!(error = %e, "SQLite read failed");
    Error::Unavailable(format!("reading the SQLite store failed: {e}"))
}

pub(crate) fn get(conn: &Connection, id: TaskId) -> Result<Option<TaskView>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT t.body, t.head, p.body FROM tasks t JOIN payloads p ON p.task = t.id WHERE t.id = ?1",
    )?;
    let mut rows = st.query([id.0.as_bytes()])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    let (task, head) = task_and_head(row, 0)?;
    Ok(Some(TaskView { task, head, payload: row.get(2)? }))
}

/// A page of tasks in id order (oldest first), after the cursor.
pub(crate) fn list(conn: &Connection, filter: &TaskFilter, page_size_max: usize) -> Result<Page, StoreError> {
    let limit = match filter.limit {
        0 => page_size_max,
        n => n.min(page_size_max),
    };
    // Only the filters given appear in the SQL, so SQLite can pick the index
    // for each combination; at most 16 texts, each prepared once and cached.
    let mut sql = String::from("SELECT body FROM tasks WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::with_capacity(5);
    if let Some(stage) = &filter.stage {
        args.push(Value::Text(stage.as_str().to_owned()));
        sql.push_str(&format!(" AND stage = ?{}", args.len()));
    }
    if let Some(state) = filter.state {
        args.push(Value::Text(state.as_str().to_owned()));
        // With a stage too, `+state` keeps SQLite on `tasks_stage`: without
        // statistics it guessed `tasks_state`, and a stage with few tasks
        // (the inbox's human stages, listed on every dashboard refresh) was
        // found by walking every waiting task: 0.4 s at a million. A stage is
        // the narrower term whenever the backlog is large.
        let column = if filter.stage.is_some() { "+state" } else { "state" };
        sql.push_str(&format!(" AND {column} = ?{}", args.len()));
    }
    if let Some(parent) = filter.parent {
        args.push(Value::Blob(parent.0.as_bytes().to_vec()));
        sql.push_str(&format!(" AND parent = ?{}", args.len()));
    }
    if let Some(after) = filter.after {
        args.push(Value::Blob(after.0.as_bytes().to_vec()));
        sql.push_str(&format!(" AND id > ?{}", args.len()));
    }
    // One row more than the page tells whether another page exists.
    args.push(Value::Integer(int(limit as u64 + 1)?));
    sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(args))?;
    let mut tasks = Vec::with_capacity(limit.min(64));
    let mut more = false;
    while let Some(row) = rows.next()? {
        if tasks.len() == limit {
            more = true;
            break;
        }
        let body = row.get_ref(0)?.as_str().map_err(|e| StoreError::Row(format!("task body: {e}")))?;
        tasks.push(serde_json::from_str::<Task>(body)?);
    }
    let next = if more { tasks.last().map(|t| t.id) } else { None };
    Ok(Page { tasks, next })
}

pub(crate) fn history(conn: &Connection, id: TaskId) -> Result<Vec<Event>, StoreError> {
    let rows = event_rows(conn, id, 1, u64::MAX)?;
    Ok(decode_chain(id, &rows)?)
}

/// The stored events of `id` with versions in `from..to`, oldest first.
fn event_rows(conn: &Connection, id: TaskId, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError> {
    let mut st = conn
        .prepare_cached("SELECT version, body FROM events WHERE task = ?1 AND version >= ?2 AND version < ?3 ORDER BY version")?;
    let (from, to) = (clamp(from), clamp(to));
    let rows = st.query_map(rusqlite::params![id.0.as_bytes(), from, to], event_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A stored event as `(version, body)`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, String)> {
    let version: i64 = r.get(0)?;
    // The column is CHECKed >= 1.
    Ok((version.unsigned_abs(), r.get(1)?))
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn history_before(
    conn: &Connection,
    id: TaskId,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT version, body FROM events WHERE task = ?1 AND version < ?2 ORDER BY version DESC LIMIT ?3",
    )?;
    let before = before.map_or(i64::MAX, clamp);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let page = st
        .query_map(rusqlite::params![id.0.as_bytes(), before, limit], event_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let base = match page.last().and_then(|(v, body)| fold_base(*v, body)) {
        Some(range) => event_rows(conn, id, range.start, range.end)?,
        None => Vec::new(),
    };
    Ok(decode_page(id, &base, &page)?)
}

pub(crate) fn handoff(conn: &Connection, id: HandoffId) -> Result<Option<Handoff>, StoreError> {
    let mut st = conn.prepare_cached("SELECT task FROM handoff_tasks WHERE id = ?1")?;
    let task: Option<Vec<u8>> = st.query_row([id.0.as_bytes()], |r| r.get(0)).optional()?;
    let Some(task) = task else { return Ok(None) };
    let task =
        TaskId(uuid::Uuid::from_slice(&task).map_err(|e| StoreError::Row(format!("handoff task: {e}")))?);
    Ok(handoff_from_history(&history(conn, task)?, id))
}

pub(crate) fn next_due(conn: &Connection) -> Result<Option<Millis>, StoreError> {
    let mut st = conn.prepare_cached("SELECT min(due_at) FROM tasks WHERE due_at IS NOT NULL")?;
    Ok(st.query_row([], |r| r.get(0))?)
}

/// Alerts in the order they were raised, after the `after` cursor (an alert
/// sequence number), at most `limit`.
pub(crate) fn alerts(conn: &Connection, after: i64, limit: usize) -> Result<Vec<(i64, Alert)>, StoreError> {
    let mut st = conn.prepare_cached("SELECT id, body FROM alerts WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let mut rows = st.query(rusqlite::params![after, int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let body = row.get_ref(1)?.as_str().map_err(|e| StoreError::Row(format!("alert body: {e}")))?;
        out.push((row.get(0)?, serde_json::from_str(body)?));
    }
    Ok(out)
}

/// A workflow at `version`, or its latest version.
pub(crate) fn workflow(
    conn: &Connection,
    name: &str,
    version: Option<u32>,
) -> Result<Option<Workflow>, StoreError> {
    let body: Option<String> = match version {
        Some(v) => conn
            .prepare_cached("SELECT body FROM workflows WHERE name = ?1 AND version = ?2")?
            .query_row(rusqlite::params![name, v], |r| r.get(0))
            .optional()?,
        None => conn
            .prepare_cached("SELECT body FROM workflows WHERE name = ?1 ORDER BY version DESC LIMIT 1")?
            .query_row([name], |r| r.get(0))
            .optional()?,
    };
    body.map(|b| serde_json::from_str(&b)).transpose().map_err(Into::into)
}

/// The latest version of every workflow, by name, at most `limit`.
pub(crate) fn workflows(conn: &Connection, limit: usize) -> Result<Vec<Workflow>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT w.body FROM workflows w WHERE w.version = \
         (SELECT max(version) FROM workflows v WHERE v.name = w.name) ORDER BY w.name LIMIT ?1",
    )?;
    let mut rows = st.query([int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        out.push(serde_json::from_str(&body)?);
    }
    Ok(out)
}

/// Live tasks due at or before `before`, earliest first.
pub(crate) fn overdue(conn: &Connection, before: Millis, limit: usize) -> Result<Vec<Task>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT body FROM tasks WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
    )?;
    let mut rows = st.query(rusqlite::params![before, int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        out.push(serde_json::from_str(&body)?);
    }
    Ok(out)
}

/// Rows `(id, body)` after `after`, in id order, with their JSON bodies parsed.
fn sequence<T>(conn: &Connection, sql: &str, after: u64, limit: usize) -> Result<Vec<(u64, T)>, StoreError>
where
    for<'a> T: Deserialize<'a>,
{
    let mut st = conn.prepare_cached(sql)?;
    let mut rows = st.query(rusqlite::params![int(after)?, int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let body: String = row.get(1)?;
        out.push((u64::try_from(id).unwrap_or(0), serde_json::from_str(&body)?));
    }
    Ok(out)
}

pub(crate) fn notices(conn: &Connection, after: u64, limit: usize) -> Result<Vec<(u64, Notice)>, StoreError> {
    sequence(conn, "SELECT id, body FROM notices WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit)
}

pub(crate) fn task_notices(
    conn: &Connection,
    task: TaskId,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Notice)>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT id, body FROM notices WHERE task = ?1 AND id > ?2 ORDER BY id LIMIT ?3")?;
    let mut rows =
        st.query(rusqlite::params![task.0.as_bytes().to_vec(), int(after)?, int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let body: String = row.get(1)?;
        out.push((u64::try_from(id).unwrap_or(0), serde_json::from_str(&body)?));
    }
    Ok(out)
}

pub(crate) fn deliveries(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Delivery)>, StoreError> {
    sequence(conn, "SELECT id, body FROM deliveries WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit)
}

pub(crate) fn last_delivery(conn: &Connection, webhook: &str) -> Result<Option<Delivery>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT body FROM deliveries WHERE webhook = ?1 ORDER BY id DESC LIMIT 1")?;
    let body: Option<String> = st.query_row([webhook], |r| r.get(0)).optional()?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}

/// Push configs of `task` (or every task), in (task, id) order, at most `limit`.
pub(crate) fn push_configs(
    conn: &Connection,
    task: Option<TaskId>,
    limit: usize,
) -> Result<Vec<PushConfig>, StoreError> {
    let limit = int(limit as u64)?;
    let bodies: Vec<String> = match task {
        Some(task) => conn
            .prepare_cached("SELECT body FROM push_configs WHERE task = ?1 ORDER BY id LIMIT ?2")?
            .query_map(rusqlite::params![task.0.as_bytes().to_vec(), limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
        None => conn
            .prepare_cached("SELECT body FROM push_configs ORDER BY task, id LIMIT ?1")?
            .query_map([limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
    };
    bodies.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
}

pub(crate) fn delivery_cursor(conn: &Connection, webhook: &str) -> Result<Option<u64>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT max(notice) FROM deliveries WHERE webhook = ?1 AND final = 1")?;
    let n: Option<i64> = st.query_row([webhook], |r| r.get(0))?;
    Ok(n.and_then(|n| u64::try_from(n).ok()))
}

/// Rollups of buckets in `from..to`, by bucket then key, at most `limit`.
pub(crate) fn rollups(
    conn: &Connection,
    from: Millis,
    to: Millis,
    limit: usize,
) -> Result<Vec<Rollup>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT bucket, key, body FROM rollups WHERE bucket >= ?1 AND bucket < ?2 ORDER BY bucket, key LIMIT ?3",
    )?;
    let mut rows = st.query(rusqlite::params![from, to, int(limit as u64)?])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let key: String = row.get(1)?;
        let body: String = row.get(2)?;
        out.push(Rollup {
            bucket: row.get(0)?,
            key: serde_json::from_str(&key)?,
            counts: serde_json::from_str(&body)?,
        });
    }
    Ok(out)
}

/// Anomalies after `after`, in order, only open ones when `open_only`.
pub(crate) fn anomalies(
    conn: &Connection,
    after: u64,
    limit: usize,
    open_only: bool,
) -> Result<Vec<(u64, Anomaly)>, StoreError> {
    let sql = if open_only {
        "SELECT id, body FROM anomalies WHERE open = 1 AND id > ?1 ORDER BY id LIMIT ?2"
    } else {
        "SELECT id, body FROM anomalies WHERE id > ?1 ORDER BY id LIMIT ?2"
    };
    sequence(conn, sql, after, limit)
}

/// Live tasks per stage, by name, at most `limit` stages, from the counters
/// the writer keeps (`stage_counts`, one row per stage) and, for the oldest
/// ready task, one seek per stage into `tasks_ready_since`: O(stages)
/// whatever the backlog. One statement, so one snapshot.
pub(crate) fn stage_gauges(conn: &Connection, limit: usize) -> Result<Vec<StageGauge>, StoreError> {
    gauges(
        conn,
        "SELECT c.stage, c.ready, c.held, c.blocked, \
         (SELECT t.ready_since FROM tasks t WHERE t.ready = 1 AND t.stage = c.stage \
          ORDER BY t.ready_since LIMIT 1) \
         FROM stage_counts c WHERE c.live > 0 ORDER BY c.stage LIMIT ?1",
        limit,
    )
}

/// The same answer counted afresh from every live task (`tasks_due` holds
/// exactly them): O(live tasks), for checks against the counters. The oldest
/// ready task's `since` is read from the row's body, not the extracted column,
/// so the check covers that column too.
pub(crate) fn stage_gauges_recount(conn: &Connection, limit: usize) -> Result<Vec<StageGauge>, StoreError> {
    gauges(
        conn,
        "SELECT stage, sum(ready), sum(state = 'held'), sum(state = 'blocked'), \
         min(CASE WHEN ready = 1 THEN json_extract(body, '$.state.since') END) \
         FROM tasks WHERE due_at IS NOT NULL GROUP BY stage ORDER BY stage LIMIT ?1",
        limit,
    )
}

/// Runs a gauge query whose rows are (stage, ready, held, blocked, oldest).
fn gauges(conn: &Connection, sql: &str, limit: usize) -> Result<Vec<StageGauge>, StoreError> {
    let mut st = conn.prepare_cached(sql)?;
    // A limit past what SQLite counts means no limit.
    let mut rows = st.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let count = |i| -> Result<u64, StoreError> { Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0)) };
        out.push(StageGauge {
            stage: baton_core::StageName::new(row.get::<_, String>(0)?),
            ready: count(1)?,
            held: count(2)?,
            blocked: count(3)?,
            oldest_ready_since: row.get(4)?,
        });
    }
    Ok(out)
}
