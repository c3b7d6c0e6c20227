//! `PgTx`: the engine's `Tx` over the writer's open transaction, synchronous
//! over async tokio-postgres (the writer thread drives its own current-thread
//! runtime). Plain reads and revision-guarded writes, no business rule. What
//! makes it safe with several replicas on one database:
//!
//! - `ready` and `due` lock the rows they return (`FOR UPDATE SKIP LOCKED`):
//!   another replica's claim or timer skips them until this batch commits;
//! - `update` is one statement: the conditional `UPDATE ... WHERE id = $1 AND
//!   revision = $2` and the event `INSERT` fed by its `RETURNING`, so the
//!   event is written exactly when the row changed;
//! - `leases_held` and `load_request` first take a transaction-scoped
//!   advisory lock on the agent or on the request key, so two replicas cannot
//!   both count an agent below its lease limit, or both miss a key's record
//!   and run its operation twice. Lock and read are pipelined: one round trip.
//!
//! Every statement is prepared once per connection and reused.

use crate::error::StoreError;
use crate::rows::{Columns, int, json, limit, task_and_head};
use baton_core::engine::{ReadyKey, Tx};
use baton_core::metrics::{Anomaly, Counts, Rollup, RollupKey};
use baton_core::store::{Delivery, Notice};
use baton_core::workflow::Workflow;
use baton_core::{
    AgentId, Alert, Event, Handoff, Hash, Millis, OpOutcome, RequestKey, RequestRecord, StageName, Task,
    TaskId,
};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use uuid::Uuid;

const LOAD: &str = "SELECT body, head FROM tasks WHERE id = $1";
const LOAD_BY_KEY: &str = "SELECT body, head FROM tasks WHERE namespace = $1 AND idempotency_key = $2";
// `ready` literally, so the partial index tasks_ready answers it.
const READY: &str = "SELECT id, priority, deadline_rank, body, head FROM tasks WHERE ready AND stage = $1 \
                                ORDER BY priority DESC, deadline_rank, id LIMIT $2 FOR UPDATE SKIP LOCKED";
const DUE: &str = "SELECT id FROM tasks WHERE due_at IS NOT NULL AND due_at <= $1 \
                              ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED";
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
const LEASES_HELD: &str = "SELECT count(*) FROM tasks WHERE holder = $1";
const HELD_IN_STAGE: &str = "SELECT count(*) FROM tasks WHERE holder IS NOT NULL AND stage = $1";
const PUT_NOTICE: &str = "INSERT INTO notices (task, body) VALUES ($1, $2)";
const PUT_DELIVERY: &str = "INSERT INTO deliveries (notice, webhook, final, body) VALUES ($1, $2, $3, $4)";
// Replicas merge into the same rows: make the row exist, then lock it for
// the read-merge-write, so no merge is lost to a concurrent one.
const ROLLUP_ENSURE: &str =
    "INSERT INTO rollups (bucket, key, body) VALUES ($1, $2, '{}') ON CONFLICT (bucket, key) DO NOTHING";
const ROLLUP_LOCK: &str = "SELECT body FROM rollups WHERE bucket = $1 AND key = $2 FOR UPDATE";
const PUT_ROLLUP: &str = "UPDATE rollups SET body = $3 WHERE bucket = $1 AND key = $2";
const PURGE_ROLLUPS: &str = "DELETE FROM rollups WHERE (bucket, key) IN \
                             (SELECT bucket, key FROM rollups WHERE bucket < $1 ORDER BY bucket LIMIT $2)";
const PUT_ANOMALY: &str = "INSERT INTO anomalies (open, body) VALUES ($1, $2) RETURNING id";
const ANOMALY: &str = "SELECT body FROM anomalies WHERE id = $1 FOR UPDATE";
const UPDATE_ANOMALY: &str = "UPDATE anomalies SET open = $2, body = $3 WHERE id = $1";
const PUT_WORKFLOW: &str = "INSERT INTO workflows (name, version, body) VALUES ($1, $2, $3)";
pub(crate) const WORKFLOW_VERSION: &str = "SELECT body FROM workflows WHERE name = $1 AND version = $2";
pub(crate) const WORKFLOW_LATEST: &str =
    "SELECT body FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1";
const LOAD_REQUEST: &str = "SELECT fingerprint, at, outcome FROM requests WHERE principal = $1 AND key = $2";
const INSERT: &str = "WITH t AS (
        INSERT INTO tasks (id, namespace, idempotency_key, stage, state, priority, deadline_rank,
                           due_at, holder, ready, parent, revision, head, body)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)),
    p AS (INSERT INTO payloads (task, body) VALUES ($1, $15))
    INSERT INTO events (task, version, body) VALUES ($1, $16, $17)";
const UPDATE: &str = "WITH u AS (
        UPDATE tasks SET stage = $3, state = $4, priority = $5, deadline_rank = $6, due_at = $7,
                         holder = $8, ready = $9, revision = $10, head = $11, body = $12
        WHERE id = $1 AND revision = $2
        RETURNING id)
    INSERT INTO events (task, version, body) SELECT id, $13::bigint, $14::text FROM u";
const PUT_HANDOFF: &str = "INSERT INTO handoffs (id, task, body) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET body = excluded.body";
const PUT_ALERT: &str = "INSERT INTO alerts (task, at, body) VALUES ($1, $2, $3)";
const SAVE_REQUEST: &str = "INSERT INTO requests (principal, key, fingerprint, at, outcome)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (principal, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, at = excluded.at, outcome = excluded.outcome";
const PURGE_REQUESTS: &str = "DELETE FROM requests WHERE id IN
    (SELECT id FROM requests WHERE at <= $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// The writer's connection, its prepared statements, and the workflow
/// versions it read (they never change once stored; only versions read back
/// from the database enter, never ones a transaction wrote and might roll back).
pub(crate) struct Session {
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
    workflows: HashMap<(String, u32), Arc<Workflow>>,
}

impl Session {
    pub(crate) fn new(client: Client) -> Self {
        Self { client, statements: HashMap::new(), workflows: HashMap::new() }
    }
}

/// Runs one statement's future on the writer's runtime, within `timeout`.
pub(crate) fn block<T>(
    rt: &Runtime,
    timeout: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    // The timer is made inside the runtime (a `Sleep` needs its context).
    match rt.block_on(async { tokio::time::timeout(timeout, fut).await }) {
        Ok(result) => result.map_err(StoreError::Pg),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Polls `a` before `b` on every wake-up, so `a`'s statement is sent first
/// and both travel in one round trip (tokio-postgres pipelines the requests
/// of concurrently polled futures on one connection).
pub(crate) async fn pipelined<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (ra, rb) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}

/// One operation's view of the writer's transaction.
pub(crate) struct PgTx<'w> {
    pub rt: &'w Runtime,
    pub session: &'w mut Session,
    pub timeout: Duration,
    /// Write statements sent, counted before they run: the writer needs to
    /// know whether a refused operation left anything to undo.
    pub writes: u32,
    /// Rows `ready` returned and locked (`FOR UPDATE`), so the engine's
    /// `load` of a candidate needs no round trip: nobody else can change a
    /// locked row, and this operation's own saves drop their entry.
    pub prefetched: HashMap<TaskId, (Task, Hash)>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl PgTx<'_> {
    /// The prepared statement for `sql`, preparing it on first use.
    pub(crate) fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(st) = self.session.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = block(self.rt, self.timeout, self.session.client.prepare(sql))?;
        self.session.statements.insert(sql, st.clone());
        Ok(st)
    }

    pub(crate) fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        block(self.rt, self.timeout, self.session.client.query(&st, params))
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let st = self.statement(sql)?;
        block(self.rt, self.timeout, self.session.client.query_opt(&st, params))
    }

    /// Runs a write statement; returns the rows it touched.
    pub(crate) fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, StoreError> {
        self.writes += 1;
        let st = self.statement(sql)?;
        block(self.rt, self.timeout, self.session.client.execute(&st, params))
    }

    /// Takes a transaction-scoped advisory lock on `key`, then runs `sql`:
    /// one round trip, the query's snapshot taken after the lock is held.
    fn locked_query(
        &mut self,
        key: &str,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let lock = self.statement(LOCK)?;
        let st = self.statement(sql)?;
        let client = &self.session.client;
        let (locked, rows) = block(self.rt, self.timeout, async {
            Ok(pipelined(client.execute(&lock, &[&key]), client.query(&st, params)).await)
        })?;
        locked?;
        Ok(rows?)
    }
}

impl Tx for PgTx<'_> {
    type Error = StoreError;

    fn new_id(&mut self) -> Uuid {
        Uuid::now_v7()
    }

    fn load(&mut self, id: TaskId) -> Result<Option<(Task, Hash)>, StoreError> {
        if let Some(row) = self.prefetched.remove(&id) {
            return Ok(Some(row));
        }
        self.query_opt(LOAD, &[&id.0])?.map(|row| task_and_head(&row, 0)).transpose()
    }

    fn load_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<(Task, Hash)>, StoreError> {
        self.query_opt(LOAD_BY_KEY, &[&namespace, &key])?.map(|row| task_and_head(&row, 0)).transpose()
    }

    fn ready(&mut self, stage: &StageName, max: usize) -> Result<Vec<ReadyKey>, StoreError> {
        let rows = self.query(READY, &[&stage.as_str(), &limit(max)])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = ReadyKey {
                id: TaskId(row.try_get(0)?),
                priority: row.try_get(1)?,
                deadline_rank: row.try_get(2)?,
            };
            self.prefetched.insert(key.id, task_and_head(row, 3)?);
            out.push(key);
        }
        Ok(out)
    }

    fn due(&mut self, now: Millis, max: usize) -> Result<Vec<TaskId>, StoreError> {
        let rows = self.query(DUE, &[&now, &limit(max)])?;
        rows.iter().map(|row| Ok(TaskId(row.try_get(0)?))).collect()
    }

    fn leases_held(&mut self, agent: &AgentId) -> Result<u64, StoreError> {
        let key = format!("baton.agent.{}", agent.as_str());
        let rows = self.locked_query(&key, LEASES_HELD, &[&agent.as_str()])?;
        let n: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(n.max(0).unsigned_abs())
    }

    fn insert(&mut self, task: &Task, payload: &str, event: &Event) -> Result<(), StoreError> {
        let c = Columns::of(task)?;
        let body = serde_json::to_string(task)?;
        let event_body = serde_json::to_string(event)?;
        let parent = task.parent.map(|p| p.0);
        let version = int(event.version)?;
        self.execute(
            INSERT,
            &[
                &task.id.0,
                &task.namespace,
                &task.idempotency_key,
                &c.stage,
                &c.state,
                &c.priority,
                &c.deadline_rank,
                &c.due_at,
                &c.holder,
                &c.ready,
                &parent,
                &c.revision,
                &&event.hash.0[..],
                &body,
                &payload,
                &version,
                &event_body,
            ],
        )?;
        Ok(())
    }

    fn update(&mut self, task: &Task, event: &Event) -> Result<bool, StoreError> {
        self.prefetched.remove(&task.id);
        let c = Columns::of(task)?;
        let expected = int(task.revision.saturating_sub(1))?;
        let body = serde_json::to_string(task)?;
        let event_body = serde_json::to_string(event)?;
        let version = int(event.version)?;
        // The guard: the row changes (and its event is written) only if
        // nobody saved it since it was loaded.
        let written = self.execute(
            UPDATE,
            &[
                &task.id.0,
                &expected,
                &c.stage,
                &c.state,
                &c.priority,
                &c.deadline_rank,
                &c.due_at,
                &c.holder,
                &c.ready,
                &c.revision,
                &&event.hash.0[..],
                &body,
                &version,
                &event_body,
            ],
        )?;
        Ok(written == 1)
    }

    fn put_handoff(&mut self, handoff: &Handoff) -> Result<(), StoreError> {
        let body = serde_json::to_string(handoff)?;
        self.execute(PUT_HANDOFF, &[&handoff.id.0, &handoff.task.0, &body])?;
        Ok(())
    }

    fn put_alert(&mut self, alert: &Alert) -> Result<(), StoreError> {
        let body = serde_json::to_string(alert)?;
        self.execute(PUT_ALERT, &[&alert.task.0, &alert.at, &body])?;
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) -> Result<(), StoreError> {
        let body = serde_json::to_string(notice)?;
        self.execute(PUT_NOTICE, &[&notice.task().map(|t| t.0), &body])?;
        Ok(())
    }

    fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
        let body = serde_json::to_string(delivery)?;
        let notice = int(delivery.notice)?;
        self.execute(PUT_DELIVERY, &[&notice, &delivery.webhook, &delivery.status.is_final(), &body])?;
        Ok(())
    }

    fn workflow(&mut self, name: &str, version: Option<u32>) -> Result<Option<Arc<Workflow>>, StoreError> {
        if let Some(v) = version
            && let Some(wf) = self.session.workflows.get(&(name.to_owned(), v))
        {
            return Ok(Some(wf.clone()));
        }
        let row = match version {
            Some(v) => self.query_opt(WORKFLOW_VERSION, &[&name, &i64::from(v)])?,
            None => self.query_opt(WORKFLOW_LATEST, &[&name])?,
        };
        let Some(row) = row else { return Ok(None) };
        let wf: Arc<Workflow> = Arc::new(json(&row, 0)?);
        if version.is_some() {
            self.session.workflows.insert((name.to_owned(), wf.version), wf.clone());
        }
        Ok(Some(wf))
    }

    fn put_workflow(&mut self, workflow: &Workflow) -> Result<(), StoreError> {
        let body = serde_json::to_string(workflow)?;
        self.execute(PUT_WORKFLOW, &[&workflow.name, &i64::from(workflow.version), &body])?;
        Ok(())
    }

    fn rollup(&mut self, bucket: Millis, key: &RollupKey) -> Result<Option<Counts>, StoreError> {
        let key = serde_json::to_string(key)?;
        self.execute(ROLLUP_ENSURE, &[&bucket, &key])?;
        let Some(row) = self.query_opt(ROLLUP_LOCK, &[&bucket, &key])? else { return Ok(None) };
        Ok(Some(json(&row, 0)?))
    }

    fn put_rollup(&mut self, rollup: &Rollup) -> Result<(), StoreError> {
        let key = serde_json::to_string(&rollup.key)?;
        let body = serde_json::to_string(&rollup.counts)?;
        self.execute(ROLLUP_ENSURE, &[&rollup.bucket, &key])?;
        self.execute(PUT_ROLLUP, &[&rollup.bucket, &key, &body])?;
        Ok(())
    }

    fn purge_rollups(&mut self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = self.execute(PURGE_ROLLUPS, &[&before, &limit])?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn put_anomaly(&mut self, anomaly: &Anomaly) -> Result<u64, StoreError> {
        let body = serde_json::to_string(anomaly)?;
        self.writes += 1;
        let rows = self.query(PUT_ANOMALY, &[&anomaly.acked.is_none(), &body])?;
        let id: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(id).unwrap_or(0))
    }

    fn anomaly(&mut self, id: u64) -> Result<Option<Anomaly>, StoreError> {
        let id = int(id)?;
        let Some(row) = self.query_opt(ANOMALY, &[&id])? else { return Ok(None) };
        Ok(Some(json(&row, 0)?))
    }

    fn update_anomaly(&mut self, id: u64, anomaly: &Anomaly) -> Result<(), StoreError> {
        let body = serde_json::to_string(anomaly)?;
        self.execute(UPDATE_ANOMALY, &[&int(id)?, &anomaly.acked.is_none(), &body])?;
        Ok(())
    }

    fn held_in_stage(&mut self, stage: &StageName) -> Result<u64, StoreError> {
        let row = self.query_opt(HELD_IN_STAGE, &[&stage.as_str()])?;
        let n: i64 = row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(n.max(0).unsigned_abs())
    }

    fn load_request(&mut self, principal: &str, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        let lock = format!("baton.request.{principal}\u{1f}{key}");
        let rows = self.locked_query(&lock, LOAD_REQUEST, &[&principal, &key])?;
        let Some(row) = rows.first() else { return Ok(None) };
        let fingerprint: &[u8] = row.try_get(0)?;
        Ok(Some(RequestRecord {
            fingerprint: crate::rows::hash(fingerprint, "a request's fingerprint")?,
            at: row.try_get(1)?,
            outcome: json(row, 2)?,
        }))
    }

    fn save_request(&mut self, key: &RequestKey, outcome: &OpOutcome, at: Millis) -> Result<(), StoreError> {
        let body = serde_json::to_string(outcome)?;
        // An existing row is an expired record (the engine replays live ones,
        // and the advisory lock taken by load_request keeps other replicas out).
        self.execute(SAVE_REQUEST, &[&key.principal, &key.key, &&key.fingerprint.0[..], &at, &body])?;
        Ok(())
    }

    fn purge_requests(&mut self, at_or_before: Millis, max: usize) -> Result<usize, StoreError> {
        let deleted = self.execute(PURGE_REQUESTS, &[&at_or_before, &limit(max)])?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}
