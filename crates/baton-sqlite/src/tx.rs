//! `WriteTx`: the engine's `Tx` over the writer's open transaction. Plain reads
//! and revision-guarded writes, no business rule: which task to claim, whether
//! a command is allowed and what the new row is, the engine decides. Every
//! statement is prepared once per connection and reused (`prepare_cached`).

use crate::error::StoreError;
use crate::rows::{Columns, Indexed, UPDATE_COLUMNS, int, task_and_head};
use baton_core::engine::{ReadyKey, Tx};
use baton_core::metrics::{Anomaly, Counts, Rollup, RollupKey};
use baton_core::store::{Delivery, Notice, PushConfig};
use baton_core::{
    AgentId, Alert, Credential, Event, GaugeDeltas, Handoff, HandoffOutcome, Hash, Millis, OpOutcome,
    RequestKey, RequestRecord, StageName, Task, TaskId, Workflow,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use uuid::Uuid;

const LOAD: &str = "SELECT body, head FROM tasks WHERE id = ?1";
const LOAD_BY_KEY: &str = "SELECT body, head FROM tasks WHERE namespace = ?1 AND idempotency_key = ?2";
const PAYLOAD: &str = "SELECT body FROM payloads WHERE task = ?1";
// `ready = 1` literally, so the partial index tasks_ready can answer it.
const READY: &str = "SELECT id, priority, deadline_rank FROM tasks WHERE ready = 1 AND stage = ?1 \
                     ORDER BY priority DESC, deadline_rank, id LIMIT ?2";
const DUE: &str = "SELECT id FROM tasks WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2";
const LEASES_HELD: &str = "SELECT count(*) FROM tasks WHERE holder = ?1";
const HELD_IN_STAGE: &str = "SELECT count(*) FROM tasks WHERE holder IS NOT NULL AND stage = ?1";
const CREDENTIAL_LIVE: &str = "SELECT count(*) FROM tokens t JOIN principals p ON p.name = t.principal \
                               WHERE t.id = ?1 AND t.principal = ?2 AND t.revoked_at IS NULL AND p.revoked_at IS NULL";
const LOAD_REQUEST: &str = "SELECT fingerprint, at, outcome FROM requests WHERE principal = ?1 AND key = ?2";
/// A stage's oldest ready task: one seek to the first entry of
/// `tasks_ready_since` (`ready = 1` literally, to match the partial index).
pub(crate) const OLDEST_READY: &str =
    "SELECT ready_since FROM tasks WHERE ready = 1 AND stage = ?1 ORDER BY ready_since LIMIT 1";
const ADD_STAGE_COUNTS: &str = "INSERT INTO stage_counts (stage, live, ready, held, blocked) \
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stage) DO UPDATE SET live = live + excluded.live, \
    ready = ready + excluded.ready, held = held + excluded.held, blocked = blocked + excluded.blocked";
const PURGE_REQUESTS: &str =
    "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE at <= ?1 ORDER BY at LIMIT ?2)";

/// The writer's lookups that must stay O(log n) at any backlog, by name, for
/// `SqliteStore::lookup_plans`.
pub(crate) const LOOKUPS: &[(&str, &str)] = &[
    ("load", LOAD),
    ("load_by_key", LOAD_BY_KEY),
    ("ready", READY),
    ("due", DUE),
    ("leases_held", LEASES_HELD),
    ("held_in_stage", HELD_IN_STAGE),
    ("load_request", LOAD_REQUEST),
    ("oldest_ready", OLDEST_READY),
];

/// Adds a batch's summed stage counter deltas (`Effects::gauges` of the
/// operations kept), one upsert per stage, in the open transaction.
pub(crate) fn apply_gauges(conn: &Connection, deltas: &GaugeDeltas) -> rusqlite::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut st = conn.prepare_cached(ADD_STAGE_COUNTS)?;
    for (stage, d) in deltas.iter() {
        st.execute(params![stage.as_str(), d.live, d.ready, d.held, d.blocked])?;
    }
    Ok(())
}

/// One operation's view of the writer's transaction (inside its savepoint).
pub(crate) struct WriteTx<'c> {
    pub conn: &'c Connection,
    /// Write calls made, counted before they run: the writer needs to know
    /// whether a refused operation left anything to undo.
    pub writes: u32,
    /// Index columns of the tasks this operation loaded, so an update sets
    /// only the columns that changed: SQLite rewrites an index entry for
    /// every indexed column named in SET, changed or not, and a heartbeat
    /// then costs one index (due) instead of five.
    pub loaded: HashMap<TaskId, Indexed>,
    /// Workflow versions read so far (they never change once stored).
    pub workflows: &'c WorkflowCache,
}

/// The writer's cache of workflow versions, by (name, version). Only versions
/// read back from the file enter it, never ones written by a transaction that
/// might still roll back.
pub(crate) type WorkflowCache = RefCell<HashMap<(String, u32), Arc<Workflow>>>;

impl<'c> WriteTx<'c> {
    pub(crate) fn new(conn: &'c Connection, workflows: &'c WorkflowCache) -> Self {
        Self { conn, writes: 0, loaded: HashMap::new(), workflows }
    }
}

impl Tx for WriteTx<'_> {
    type Error = StoreError;

    fn new_id(&mut self) -> Uuid {
        Uuid::now_v7()
    }

    fn load(&mut self, id: TaskId) -> Result<Option<(Task, Hash)>, StoreError> {
        let mut st = self.conn.prepare_cached(LOAD)?;
        let mut rows = st.query([id.0.as_bytes()])?;
        let Some(row) = rows.next()? else { return Ok(None) };
        let (task, head) = task_and_head(row, 0)?;
        self.loaded.insert(id, Indexed::of(&task));
        Ok(Some((task, head)))
    }

    fn load_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<(Task, Hash)>, StoreError> {
        let mut st = self.conn.prepare_cached(LOAD_BY_KEY)?;
        let mut rows = st.query([namespace, key])?;
        match rows.next()? {
            Some(row) => task_and_head(row, 0).map(Some),
            None => Ok(None),
        }
    }

    fn ready(&mut self, stage: &StageName, limit: usize) -> Result<Vec<ReadyKey>, StoreError> {
        let mut st = self.conn.prepare_cached(READY)?;
        let mut rows = st.query(params![stage.as_str(), int(limit as u64)?])?;
        let mut out = Vec::with_capacity(limit.min(64));
        while let Some(row) = rows.next()? {
            out.push(ReadyKey {
                id: TaskId(Uuid::from_bytes(row.get(0)?)),
                priority: row.get(1)?,
                deadline_rank: row.get(2)?,
            });
        }
        Ok(out)
    }

    fn due(&mut self, now: Millis, limit: usize) -> Result<Vec<TaskId>, StoreError> {
        let mut st = self.conn.prepare_cached(DUE)?;
        let mut rows = st.query(params![now, int(limit as u64)?])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(TaskId(Uuid::from_bytes(row.get(0)?)));
        }
        Ok(out)
    }

    fn leases_held(&mut self, agent: &AgentId) -> Result<u64, StoreError> {
        let mut st = self.conn.prepare_cached(LEASES_HELD)?;
        let n: i64 = st.query_row([agent.as_str()], |r| r.get(0))?;
        Ok(n.max(0).unsigned_abs())
    }

    fn credential_live(&mut self, credential: &Credential) -> Result<bool, StoreError> {
        let mut st = self.conn.prepare_cached(CREDENTIAL_LIVE)?;
        let n: i64 =
            st.query_row([credential.token.as_str(), credential.principal.as_str()], |r| r.get(0))?;
        Ok(n > 0)
    }

    fn payload(&mut self, id: TaskId) -> Result<String, StoreError> {
        let mut st = self.conn.prepare_cached(PAYLOAD)?;
        let body: Option<String> = st.query_row([id.0.as_bytes()], |r| r.get(0)).optional()?;
        body.ok_or_else(|| StoreError::Row(format!("task {id} has no payload")))
    }

    fn insert(&mut self, task: &Task, payload: &str, event: &Event) -> Result<(), StoreError> {
        self.writes += 1;
        let c = Columns::of(task)?;
        let id = task.id.0.as_bytes();
        let body = serde_json::to_string(task)?;
        self.conn
            .prepare_cached(
                "INSERT INTO tasks (id, namespace, idempotency_key, stage, state, priority, deadline_rank,
                                    due_at, holder, ready, ready_since, parent, revision, head, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                id,
                task.namespace,
                task.idempotency_key,
                c.stage,
                c.state,
                c.priority,
                c.deadline_rank,
                c.due_at,
                c.holder,
                c.ready,
                c.ready_since,
                task.parent.as_ref().map(|p| p.0.as_bytes()),
                c.revision,
                event.hash.0,
                body,
            ])?;
        self.conn
            .prepare_cached("INSERT INTO payloads (task, body) VALUES (?1, ?2)")?
            .execute(params![id, payload])?;
        self.append_event(event)
    }

    fn update(&mut self, task: &Task, event: &Event) -> Result<bool, StoreError> {
        self.writes += 1;
        let c = Columns::of(task)?;
        let expected = int(task.revision.saturating_sub(1))?;
        let body = serde_json::to_string(task)?;
        // Without a load in this operation (the engine always loads first),
        // set every index column.
        let mask = self.loaded.get(&task.id).map_or(ALL_COLUMNS, |before| c.changed_since(before));
        // The guard: the row changes only if nobody saved it since it was loaded.
        let changed = self.conn.prepare_cached(update_sql(mask))?.execute(params![
            task.id.0.as_bytes(),
            expected,
            c.stage,
            c.state,
            c.priority,
            c.deadline_rank,
            c.due_at,
            c.holder,
            c.ready,
            c.ready_since,
            c.revision,
            event.hash.0,
            body,
        ])?;
        self.loaded.insert(task.id, Indexed::of(task));
        if changed == 0 {
            return Ok(false);
        }
        self.append_event(event)?;
        Ok(true)
    }

    /// Only a new handoff is written, as its id and task: its record, and
    /// its outcome when it settles, are read from the task's events.
    fn put_handoff(&mut self, handoff: &Handoff) -> Result<(), StoreError> {
        if handoff.outcome != HandoffOutcome::Pending {
            return Ok(());
        }
        self.writes += 1;
        self.conn
            .prepare_cached(
                "INSERT INTO handoff_tasks (id, task) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![handoff.id.0.as_bytes(), handoff.task.0.as_bytes()])?;
        Ok(())
    }

    fn put_alert(&mut self, alert: &Alert) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(alert)?;
        self.conn
            .prepare_cached("INSERT INTO alerts (task, at, body) VALUES (?1, ?2, ?3)")?
            .execute(params![alert.task.0.as_bytes(), alert.at, body])?;
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(notice)?;
        self.conn
            .prepare_cached("INSERT INTO notices (task, body) VALUES (?1, ?2)")?
            .execute(params![notice.task().map(|t| t.0.as_bytes().to_vec()), body])?;
        Ok(())
    }

    fn put_push_config(&mut self, config: &PushConfig) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(config)?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO push_configs (task, id, body) VALUES (?1, ?2, ?3)")?
            .execute(params![config.task.0.as_bytes().to_vec(), config.id, body])?;
        Ok(())
    }

    fn delete_push_config(&mut self, task: TaskId, id: &str) -> Result<(), StoreError> {
        self.writes += 1;
        self.conn
            .prepare_cached("DELETE FROM push_configs WHERE task = ?1 AND id = ?2")?
            .execute(params![task.0.as_bytes().to_vec(), id])?;
        Ok(())
    }

    fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(delivery)?;
        self.conn
            .prepare_cached("INSERT INTO deliveries (notice, webhook, final, body) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                int(delivery.notice)?,
                delivery.webhook,
                i64::from(delivery.status.is_final()),
                body
            ])?;
        Ok(())
    }

    fn workflow(&mut self, name: &str, version: Option<u32>) -> Result<Option<Arc<Workflow>>, StoreError> {
        if let Some(v) = version
            && let Some(wf) = self.workflows.borrow().get(&(name.to_owned(), v))
        {
            return Ok(Some(wf.clone()));
        }
        let Some(wf) = crate::read::workflow(self.conn, name, version)? else { return Ok(None) };
        let wf = Arc::new(wf);
        if version.is_some() {
            self.workflows.borrow_mut().insert((name.to_owned(), wf.version), wf.clone());
        }
        Ok(Some(wf))
    }

    fn put_workflow(&mut self, workflow: &Workflow) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(workflow)?;
        self.conn
            .prepare_cached("INSERT INTO workflows (name, version, body) VALUES (?1, ?2, ?3)")?
            .execute(params![workflow.name, workflow.version, body])?;
        Ok(())
    }

    fn rollup(&mut self, bucket: Millis, key: &RollupKey) -> Result<Option<Counts>, StoreError> {
        let key = serde_json::to_string(key)?;
        let mut st = self.conn.prepare_cached("SELECT body FROM rollups WHERE bucket = ?1 AND key = ?2")?;
        let body: Option<String> = st.query_row(params![bucket, key], |r| r.get(0)).optional()?;
        body.map(|b| serde_json::from_str(&b)).transpose().map_err(Into::into)
    }

    fn put_rollup(&mut self, rollup: &Rollup) -> Result<(), StoreError> {
        self.writes += 1;
        let key = serde_json::to_string(&rollup.key)?;
        let body = serde_json::to_string(&rollup.counts)?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO rollups (bucket, key, body) VALUES (?1, ?2, ?3)")?
            .execute(params![rollup.bucket, key, body])?;
        Ok(())
    }

    fn purge_rollups(&mut self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.writes += 1;
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM rollups WHERE rowid IN \
                 (SELECT rowid FROM rollups WHERE bucket < ?1 ORDER BY bucket LIMIT ?2)",
            )?
            .execute(params![before, int(limit as u64)?])?;
        Ok(n)
    }

    fn put_anomaly(&mut self, anomaly: &Anomaly) -> Result<u64, StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(anomaly)?;
        self.conn
            .prepare_cached("INSERT INTO anomalies (open, body) VALUES (?1, ?2)")?
            .execute(params![i64::from(anomaly.acked.is_none()), body])?;
        Ok(u64::try_from(self.conn.last_insert_rowid()).unwrap_or(0))
    }

    fn anomaly(&mut self, id: u64) -> Result<Option<Anomaly>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT body FROM anomalies WHERE id = ?1")?;
        let body: Option<String> = st.query_row([int(id)?], |r| r.get(0)).optional()?;
        body.map(|b| serde_json::from_str(&b)).transpose().map_err(Into::into)
    }

    fn update_anomaly(&mut self, id: u64, anomaly: &Anomaly) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(anomaly)?;
        self.conn
            .prepare_cached("UPDATE anomalies SET open = ?2, body = ?3 WHERE id = ?1")?
            .execute(params![int(id)?, i64::from(anomaly.acked.is_none()), body])?;
        Ok(())
    }

    fn held_in_stage(&mut self, stage: &StageName) -> Result<u64, StoreError> {
        let mut st = self.conn.prepare_cached(HELD_IN_STAGE)?;
        let n: i64 = st.query_row([stage.as_str()], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn load_request(&mut self, principal: &str, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(LOAD_REQUEST)?;
        let mut rows = st.query([principal, key])?;
        let Some(row) = rows.next()? else { return Ok(None) };
        let fingerprint: [u8; 32] = row.get(0)?;
        let outcome: String = row.get(2)?;
        Ok(Some(RequestRecord {
            fingerprint: Hash(fingerprint),
            at: row.get(1)?,
            outcome: serde_json::from_str(&outcome)?,
        }))
    }

    fn save_request(&mut self, key: &RequestKey, outcome: &OpOutcome, at: Millis) -> Result<(), StoreError> {
        self.writes += 1;
        let body = serde_json::to_string(outcome)?;
        // An existing row is an expired record (the engine replays live ones).
        self.conn
            .prepare_cached(
                "INSERT INTO requests (principal, key, fingerprint, at, outcome) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (principal, key) DO UPDATE
                 SET fingerprint = excluded.fingerprint, at = excluded.at, outcome = excluded.outcome",
            )?
            .execute(params![key.principal, key.key, key.fingerprint.0, at, body])?;
        Ok(())
    }

    fn purge_requests(&mut self, at_or_before: Millis, limit: usize) -> Result<usize, StoreError> {
        self.writes += 1;
        let deleted =
            self.conn.prepare_cached(PURGE_REQUESTS)?.execute(params![at_or_before, int(limit as u64)?])?;
        Ok(deleted)
    }

    fn archived_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<TaskId>, StoreError> {
        crate::archive::by_key(self.conn, namespace, key)
    }

    fn archive(&mut self, commit: &baton_core::archive::ArchiveCommit) -> Result<bool, StoreError> {
        crate::archive::commit(self.conn, commit, &mut self.writes)
    }
}

impl WriteTx<'_> {
    fn append_event(&mut self, event: &Event) -> Result<(), StoreError> {
        let body = event.stored_body();
        self.conn
            .prepare_cached("INSERT INTO events (task, version, body) VALUES (?1, ?2, ?3)")?
            .execute(params![event.task.0.as_bytes(), int(event.version)?, body])?;
        Ok(())
    }
}

/// Every index column, for an update without a preceding load.
const ALL_COLUMNS: usize = (1 << UPDATE_COLUMNS.len()) - 1;

/// The guarded update that sets the index columns in `mask` (and always the
/// revision, head and body). Parameters keep fixed numbers: `?1` id, `?2` the
/// expected revision, `?3`..`?10` the index columns, `?11` revision, `?12`
/// head, `?13` body; a column outside the mask is bound but not used.
fn update_sql(mask: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=ALL_COLUMNS)
            .map(|m| {
                let mut sql = String::from("UPDATE tasks SET revision = ?11, head = ?12, body = ?13");
                for (i, column) in UPDATE_COLUMNS.iter().enumerate() {
                    if m & (1 << i) != 0 {
                        sql.push_str(&format!(", {column} = ?{}", i + 3));
                    }
                }
                sql.push_str(" WHERE id = ?1 AND revision = ?2");
                sql
            })
            .collect()
    });
    &all[mask & ALL_COLUMNS]
}
