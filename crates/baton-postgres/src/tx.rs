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
//! Writes whose answer no operation reads (event-carrying inserts, handoff,
//! notice, alert, request and rollup records) and, while a batch runs
//! without savepoints, the guarded saves too, are not awaited one by one:
//! they are queued in the session (`Deferred`) and sent, in order, in the
//! same round trip as the next statement whose answer is needed, or with
//! COMMIT (tokio-postgres pipelines the requests of futures polled together
//! on one connection). The server runs them in the order sent, so every
//! read still sees every earlier write. A deferred guarded save cannot
//! answer whether it found its row unchanged, so it is sent in a form that
//! fails when it did not (`UPDATE_CHECKED`): the failure aborts the
//! transaction like any failed statement, and the writer reruns the batch
//! with a savepoint per operation, where nothing is deferred and each
//! operation meets its own conflicts exactly as before.
//!
//! Every statement is prepared once per connection and reused.

use crate::cursor::{Cursors, Key, Scans};
use crate::error::StoreError;
use crate::rows::{Columns, int, json, limit, task_and_head};
use baton_core::engine::{ReadyKey, Tx};
use baton_core::metrics::{Anomaly, Counts, Rollup, RollupKey};
use baton_core::store::{Delivery, Notice, PushConfig};
use baton_core::workflow::Workflow;
use baton_core::{
    AgentId, Alert, Credential, Event, GaugeDeltas, Handoff, HandoffOutcome, Hash, Millis, OpOutcome,
    RequestKey, RequestRecord, StageName, Task, TaskId,
};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use uuid::Uuid;

const LOAD: &str = "SELECT body, head FROM tasks WHERE id = $1";
/// The tasks a batch's operations name, read with BEGIN (`ReadAhead`).
pub(crate) const LOAD_MANY: &str = "SELECT id, body, head FROM tasks WHERE id = ANY($1)";
const LOAD_BY_KEY: &str = "SELECT body, head FROM tasks WHERE namespace = $1 AND idempotency_key = $2";
const PAYLOAD: &str = "SELECT body FROM payloads WHERE task = $1";
// `ready` literally, so the partial index tasks_ready answers it.
// The last column is the payload, for the grant: a claim needs no second read.
const READY: &str = "SELECT id, priority, deadline_rank, body, head, \
                                (SELECT p.body FROM payloads p WHERE p.task = tasks.id) \
                                FROM tasks WHERE ready AND stage = $1 \
                                ORDER BY priority DESC, deadline_rank, id LIMIT $2 FOR UPDATE SKIP LOCKED";
/// `READY` from a cursor (`crate::cursor`) at ($3, $4, $5): the rest of the
/// cursor's priority, then the lower priorities, each an index range that
/// starts where it should, so neither visits the entries the cursor passed.
/// The second runs only if the first returns fewer than $2 rows (its rows are
/// locked only as the LIMIT pulls them); the engine sorts what it gets.
const READY_FROM: &str = "WITH here AS (SELECT id, priority, deadline_rank, body, head FROM tasks \
        WHERE ready AND stage = $1 AND priority = $3 AND (deadline_rank, id) >= ($4, $5) \
        ORDER BY priority DESC, deadline_rank, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
    later AS (SELECT id, priority, deadline_rank, body, head FROM tasks \
        WHERE ready AND stage = $1 AND priority < $3 \
        ORDER BY priority DESC, deadline_rank, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
    SELECT r.*, (SELECT p.body FROM payloads p WHERE p.task = r.id) \
    FROM (SELECT * FROM here UNION ALL SELECT * FROM later LIMIT $2) r";
const DUE: &str = "SELECT id FROM tasks WHERE due_at IS NOT NULL AND due_at <= $1 \
                              ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED";
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
// Ordered by holder so the planner reads tasks_holder (this agent's entries
// only) and never tasks_held_by_stage, whose every entry (all agents' held
// tasks, and the dead versions of tasks held before) it would filter: a
// generic plan on a table whose statistics saw no holder once chose it.
const LEASES_HELD: &str =
    "SELECT count(*) FROM (SELECT holder FROM tasks WHERE holder = $1 ORDER BY holder) h";
const HELD_IN_STAGE: &str = "SELECT count(*) FROM tasks WHERE holder IS NOT NULL AND stage = $1";
// Read after `leases_held` took the agent's advisory lock, which revocations
// take too (`agent_lock`): a revocation committed on any replica is either
// seen here or waits for this transaction, so no lease commits after it.
const CREDENTIAL_LIVE: &str = "SELECT 1 FROM tokens t JOIN principals p ON p.name = t.principal \
                               WHERE t.id = $1 AND t.principal = $2 AND t.revoked_at IS NULL \
                               AND p.revoked_at IS NULL";
const PUT_NOTICE: &str = "INSERT INTO notices (task, body) VALUES ($1, $2)";
const PUT_DELIVERY: &str = "INSERT INTO deliveries (notice, webhook, final, body) VALUES ($1, $2, $3, $4)";
const PUT_PUSH_CONFIG: &str = "INSERT INTO push_configs (task, id, body) VALUES ($1, $2, $3) \
    ON CONFLICT (task, id) DO UPDATE SET body = excluded.body";
const DELETE_PUSH_CONFIG: &str = "DELETE FROM push_configs WHERE task = $1 AND id = $2";
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
                           due_at, holder, ready, ready_since, parent, revision, head, body)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)),
    p AS (INSERT INTO payloads (task, body) VALUES ($1, $16))
    INSERT INTO events (task, version, body) VALUES ($1, $17, $18)";
const UPDATE: &str = "WITH u AS (
        UPDATE tasks SET stage = $3, state = $4, priority = $5, deadline_rank = $6, due_at = $7,
                         holder = $8, ready = $9, ready_since = $10, revision = $11, head = $12, body = $13
        WHERE id = $1 AND revision = $2
        RETURNING id)
    INSERT INTO events (task, version, body) SELECT id, $14::bigint, $15::text FROM u";
/// `UPDATE` for a deferred save: the same statement, failing with
/// `division_by_zero` (`SAVE_LOST_STATE`) when the guard found the row changed,
/// so that a save nobody waits for still cannot commit half an operation.
const UPDATE_CHECKED: &str = "WITH u AS (
        UPDATE tasks SET stage = $3, state = $4, priority = $5, deadline_rank = $6, due_at = $7,
                         holder = $8, ready = $9, ready_since = $10, revision = $11, head = $12, body = $13
        WHERE id = $1 AND revision = $2
        RETURNING id),
    e AS (INSERT INTO events (task, version, body) SELECT id, $14::bigint, $15::text FROM u RETURNING 1)
    SELECT 1 / count(*)::integer FROM e";
/// Adds a batch's summed stage counter deltas to this connection's slot rows
/// in one statement (`$6` is `STAGE_COUNT_SLOTS`). Rows go in stage order,
/// so two writers that share a slot lock its rows in the same order.
const ADD_STAGE_COUNTS: &str = "INSERT INTO stage_counts (stage, slot, live, ready, held, blocked)
    SELECT d.stage, pg_backend_pid() % $6::integer, d.live, d.ready, d.held, d.blocked
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
         AS d(stage, live, ready, held, blocked)
    ORDER BY d.stage
    ON CONFLICT (stage, slot) DO UPDATE SET live = stage_counts.live + excluded.live,
        ready = stage_counts.ready + excluded.ready, held = stage_counts.held + excluded.held,
        blocked = stage_counts.blocked + excluded.blocked";

/// How many slot rows a stage's counters are spread over. Each writer
/// connection adds to the slot of its backend pid: with a few writers per
/// replica and a few replicas, two rarely share one, so a handoff never
/// waits for another writer's commit to update a counter. Reads sum the
/// slots: O(stages x slots) rows at most.
pub(crate) const STAGE_COUNT_SLOTS: i32 = 64;

const PUT_HANDOFF: &str = "INSERT INTO handoff_tasks (id, task) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
const PUT_ALERT: &str = "INSERT INTO alerts (task, at, body) VALUES ($1, $2, $3)";
const SAVE_REQUEST: &str = "INSERT INTO requests (principal, key, fingerprint, at, outcome)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (principal, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, at = excluded.at, outcome = excluded.outcome";
const PURGE_REQUESTS: &str = "DELETE FROM requests WHERE id IN
    (SELECT id FROM requests WHERE at <= $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// The writer's connection, its prepared statements, the workflow versions
/// it read (they never change once stored; only versions read back from the
/// database enter, never ones a transaction wrote and might roll back), and
/// the writes of the open transaction not sent yet.
pub(crate) struct Session {
    pub client: Client,
    /// The schema: advisory locks are database-wide, so their keys name it,
    /// or deployments in other schemas of the database (other Baton
    /// installations, parallel tests) would wait on, and deadlock with,
    /// each other's agents and request keys.
    lock_scope: String,
    statements: HashMap<&'static str, Statement>,
    workflows: HashMap<(String, u32), Arc<Workflow>>,
    pub pending: Pending,
}

/// The writes not sent yet, and what the connection carried so far.
#[derive(Default)]
pub(crate) struct Pending {
    /// Writes queued in order, sent with the next statement that is awaited.
    deferred: Vec<Deferred>,
    /// Statements sent and round trips waited for (`PostgresStore::stats`).
    pub traffic: Traffic,
}

/// What the writer's connection carried.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Traffic {
    pub statements: u64,
    pub round_trips: u64,
}

/// A write sent later (see the module doc), with its parameters owned.
struct Deferred {
    statement: Statement,
    params: Vec<Param>,
    /// A guarded save in its checked form (`UPDATE_CHECKED`).
    guarded: bool,
}

/// An owned statement parameter.
type Param = Box<dyn ToSql + Sync + Send>;

impl Session {
    pub(crate) fn new(client: Client, lock_scope: String) -> Self {
        Self {
            client,
            lock_scope,
            statements: HashMap::new(),
            workflows: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// The prepared statement for `sql`, preparing it on first use.
    pub(crate) fn prepared(
        &mut self,
        rt: &Runtime,
        timeout: Duration,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        self.pending.traffic.round_trips += 1;
        let st = block(rt, timeout, self.client.prepare(sql))?;
        self.statements.insert(sql, st.clone());
        Ok(st)
    }

    /// The connection and the pending writes, borrowed apart.
    pub(crate) fn parts(&mut self) -> (&Client, &mut Pending) {
        (&self.client, &mut self.pending)
    }
}

impl Session {
    /// Queues the batch's summed stage counter deltas as one upsert that
    /// travels with COMMIT. Nothing to queue when the deltas cancel out.
    pub(crate) fn defer_gauges(
        &mut self,
        rt: &Runtime,
        timeout: Duration,
        deltas: &GaugeDeltas,
    ) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let statement = self.prepared(rt, timeout, ADD_STAGE_COUNTS)?;
        let (mut stages, mut live, mut ready, mut held, mut blocked) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (stage, d) in deltas.iter() {
            stages.push(stage.as_str().to_owned());
            live.push(d.live);
            ready.push(d.ready);
            held.push(d.held);
            blocked.push(d.blocked);
        }
        let params: Vec<Param> = vec![
            Box::new(stages),
            Box::new(live),
            Box::new(ready),
            Box::new(held),
            Box::new(blocked),
            Box::new(STAGE_COUNT_SLOTS),
        ];
        self.pending.deferred.push(Deferred { statement, params, guarded: false });
        Ok(())
    }
}

impl Pending {
    /// Forgets the deferred writes of a transaction that is rolled back.
    pub(crate) fn discard(&mut self) {
        self.deferred.clear();
    }

    /// Runs `last` on `client` after every deferred write, all in one round
    /// trip and in order; the first deferred write that failed is the answer
    /// (it aborted the transaction, so `last` failed or, for COMMIT, rolled
    /// back).
    pub(crate) async fn carry<T>(
        &mut self,
        client: &Client,
        last: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        self.traffic.round_trips += 1;
        self.traffic.statements += 1 + self.deferred.len() as u64;
        if self.deferred.is_empty() {
            return last.await.map_err(StoreError::Pg);
        }
        let deferred = std::mem::take(&mut self.deferred);
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = deferred
            .iter()
            .map(|d| d.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect())
            .collect();
        let mut writes: Vec<_> =
            deferred.iter().zip(&params).map(|(d, p)| Box::pin(client.execute(&d.statement, p))).collect();
        let mut done: Vec<Option<Result<u64, tokio_postgres::Error>>> =
            std::iter::repeat_with(|| None).take(writes.len()).collect();
        let mut last = pin!(last);
        let mut answer = None;
        // Polled in order, so the requests leave in order (see `pipelined`).
        poll_fn(|cx| {
            for (write, slot) in writes.iter_mut().zip(done.iter_mut()) {
                if slot.is_none()
                    && let Poll::Ready(v) = write.as_mut().poll(cx)
                {
                    *slot = Some(v);
                }
            }
            if answer.is_none()
                && let Poll::Ready(v) = last.as_mut().poll(cx)
            {
                answer = Some(v);
            }
            if answer.is_some() && done.iter().all(Option::is_some) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
        for (d, result) in deferred.iter().zip(done) {
            if let Some(Err(e)) = result {
                let lost_guard = d.guarded && e.code() == Some(&SAVE_LOST_STATE);
                let cause = if lost_guard { StoreError::SaveLost } else { StoreError::Pg(e) };
                return Err(StoreError::Deferred(Box::new(cause)));
            }
        }
        match answer {
            Some(result) => result.map_err(StoreError::Pg),
            None => Err(StoreError::Row("a pipelined statement went unanswered".into())),
        }
    }
}

/// How `UPDATE_CHECKED` says its guard found the row changed.
const SAVE_LOST_STATE: SqlState = SqlState::DIVISION_BY_ZERO;

/// Runs one statement's future on the writer's runtime, within `timeout`.
pub(crate) fn block<T, E>(
    rt: &Runtime,
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError>
where
    StoreError: From<E>,
{
    // The timer is made inside the runtime (a `Sleep` needs its context).
    match rt.block_on(async { tokio::time::timeout(timeout, fut).await }) {
        Ok(result) => result.map_err(StoreError::from),
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

/// A query's future, boxed to sit in a list with others (`in_order`).
pub(crate) type RowsFuture<'f> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 'f>>;

/// Polls every future in order on each wake-up, so their statements leave in
/// that order and travel in one round trip (as `pipelined`, for any number).
pub(crate) async fn in_order<'f, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + 'f>>>) -> Vec<T> {
    let mut futures = futures;
    let mut done: Vec<Option<T>> = std::iter::repeat_with(|| None).take(futures.len()).collect();
    poll_fn(|cx| {
        for (f, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *slot = Some(v);
            }
        }
        if done.iter().all(Option::is_some) { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Tasks read at the start of a batch (the tasks its operations name), for
/// operations that run without savepoints: a row is used only if no earlier
/// operation of the batch saved that task (`Scans::saved`). Another writer may have saved it
/// since; then the operation's checked save fails and the batch reruns with
/// savepoints, where nothing is read ahead. A refusal decided on such a row
/// changed nothing and was true when the row was read, after the operation
/// was queued.
#[derive(Default)]
pub(crate) struct ReadAhead {
    pub rows: HashMap<TaskId, (Task, Hash)>,
}

/// The stages (and how many rows of each) a claim in this operation will
/// read: read together with the agent's lease count, in one round trip.
#[derive(Clone)]
pub(crate) struct ClaimHint {
    pub stages: Vec<StageName>,
    pub limit: usize,
}

/// One operation's view of the writer's transaction.
pub(crate) struct PgTx<'w> {
    pub rt: &'w Runtime,
    pub session: &'w mut Session,
    pub timeout: Duration,
    /// Write statements sent or deferred, counted before they run: the
    /// writer needs to know whether a refused operation left anything to undo.
    pub writes: u32,
    /// Rows `ready` returned and locked (`FOR UPDATE`), so the engine's
    /// `load` of a candidate needs no round trip: nobody else can change a
    /// locked row, and this operation's own saves drop their entry.
    pub prefetched: HashMap<TaskId, (Task, Hash)>,
    /// The payloads of the rows `ready` returned, for the grants of a claim.
    pub payloads: HashMap<TaskId, String>,
    /// Defer writes (see the module doc): true while the batch runs without
    /// savepoints, false in the careful rerun, where every statement is
    /// awaited and a guarded save answers whether it found its row. Reading
    /// ahead (`read_ahead`, `claim_hint`) goes with it.
    pub defer: bool,
    pub read_ahead: &'w mut ReadAhead,
    /// What the batch read and saved so far.
    pub scans: &'w mut Scans,
    /// The store's ready cursors and this writer's number in them; `None`
    /// reads every stage from its head (cursors off, or the careful rerun).
    pub cursors: Option<(&'w Cursors, usize)>,
    /// Taken by the first `leases_held` (the claim's first read).
    pub claim_hint: Option<ClaimHint>,
    /// Ready rows read with the lease count, by stage, for `ready`, and
    /// how many each read asked for.
    pub ready_ahead: HashMap<StageName, Vec<Row>>,
    pub ready_ahead_limit: usize,
    /// This replica's name and its singleton duties' lease, for the purge
    /// of request records, which only the duty's holder runs.
    pub duty: (&'w str, Millis),
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

/// The cursor's parameters of `READY_FROM` (none for `READY`).
struct ReadyParams {
    from: Option<(i32, i64, Uuid)>,
}

impl ReadyParams {
    fn from(key: Option<Key>) -> Self {
        Self { from: key.map(|k| (k.priority, k.deadline_rank, k.id)) }
    }

    /// The statement's parameters: stage and limit, then the cursor's.
    fn with<'p>(&'p self, stage: &'p &str, limit: &'p i64) -> Vec<&'p (dyn ToSql + Sync)> {
        match &self.from {
            None => vec![stage, limit],
            Some((priority, rank, id)) => vec![stage, limit, priority, rank, id],
        }
    }
}

/// A ready row's position (`READY`'s and `READY_FROM`'s first columns).
fn ready_key(row: &Row) -> Result<ReadyKey, StoreError> {
    Ok(ReadyKey { id: TaskId(row.try_get(0)?), priority: row.try_get(1)?, deadline_rank: row.try_get(2)? })
}

/// The index columns, in the order `INSERT` and `UPDATE` both list them
/// (stage through ready).
fn index_params(c: &Columns<'_>) -> [Param; 8] {
    [
        Box::new(c.stage.to_owned()),
        Box::new(c.state),
        Box::new(c.priority),
        Box::new(c.deadline_rank),
        Box::new(c.due_at),
        Box::new(c.holder.map(str::to_owned)),
        Box::new(c.ready),
        Box::new(c.ready_since),
    ]
}

/// Where a saved task waits, if it is ready: its stage and position.
fn ready_in<'t>(task: &'t Task, c: &Columns<'t>) -> Option<(&'t StageName, Key)> {
    c.ready
        .then(|| (&task.stage, Key { priority: c.priority, deadline_rank: c.deadline_rank, id: task.id.0 }))
}

impl PgTx<'_> {
    /// The prepared statement for `sql`, preparing it on first use.
    pub(crate) fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        self.session.prepared(self.rt, self.timeout, sql)
    }

    pub(crate) fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        let (client, pending) = self.session.parts();
        block(self.rt, self.timeout, pending.carry(client, client.query(&st, params)))
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let st = self.statement(sql)?;
        let (client, pending) = self.session.parts();
        block(self.rt, self.timeout, pending.carry(client, client.query_opt(&st, params)))
    }

    /// Runs a write statement; returns the rows it touched.
    pub(crate) fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, StoreError> {
        self.writes += 1;
        let st = self.statement(sql)?;
        let (client, pending) = self.session.parts();
        block(self.rt, self.timeout, pending.carry(client, client.execute(&st, params)))
    }

    /// A write whose answer nobody reads: deferred when the batch allows it,
    /// else run at once.
    fn write(&mut self, sql: &'static str, params: Vec<Param>) -> Result<(), StoreError> {
        self.send(sql, params, false).map(drop)
    }

    /// Runs or defers `sql`; `guarded` marks a checked save. Returns the rows
    /// touched, or 1 when deferred (a deferred save that would touch no row
    /// fails the transaction instead).
    fn send(&mut self, sql: &'static str, params: Vec<Param>, guarded: bool) -> Result<u64, StoreError> {
        if !self.defer {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            return self.execute(sql, &refs);
        }
        self.writes += 1;
        let statement = self.statement(sql)?;
        self.session.pending.deferred.push(Deferred { statement, params, guarded });
        Ok(1)
    }

    /// The advisory lock key of an agent (a principal's name, with auth on):
    /// taken by its claims (the lease count) and by revocations of it.
    pub(crate) fn agent_lock(&self, agent: &str) -> String {
        format!("baton.agent.{}\u{1f}{}", self.session.lock_scope, agent)
    }

    /// Takes the transaction-scoped advisory lock of `agent` (see `agent_lock`).
    pub(crate) fn lock_agent(&mut self, agent: &str) -> Result<(), StoreError> {
        let key = self.agent_lock(agent);
        self.query_opt(LOCK, &[&key]).map(drop)
    }

    /// Takes the transaction-scoped advisory lock every directory write takes
    /// first, so what one checks (how many live admins there are, above
    /// all) cannot change under it from another writer or replica.
    pub(crate) fn lock_directory(&mut self) -> Result<(), StoreError> {
        let key = format!("baton.directory.{}", self.session.lock_scope);
        self.query_opt(LOCK, &[&key]).map(drop)
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
        let (client, pending) = self.session.parts();
        pending.traffic.statements += 1;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&key];
        let both = pipelined(client.execute(&lock, &lock_params), client.query(&st, params));
        let (locked, rows) = block(
            self.rt,
            self.timeout,
            pending.carry(client, async { Ok::<_, tokio_postgres::Error>(both.await) }),
        )?;
        locked?;
        Ok(rows?)
    }

    /// Where this batch reads `stage` from: its cursor, taken once per batch.
    fn ready_from(&mut self, stage: &StageName) -> Option<Key> {
        let (cursors, writer) = self.cursors?;
        self.scans.starts.entry(stage.clone()).or_insert_with(|| cursors.start(writer, stage)).at
    }

    /// The statement reading a stage's ready rows from `from` (counted in `Scans`).
    fn ready_statement(&mut self, from: Option<Key>) -> Result<Statement, StoreError> {
        self.scans.reads += 1;
        self.scans.reads_from_cursor += u64::from(from.is_some());
        self.statement(if from.is_some() { READY_FROM } else { READY })
    }

    /// Notes ready rows read (and locked) in `stage`, for the cursors.
    fn read_rows(&mut self, stage: &StageName, rows: &[Row]) -> Result<(), StoreError> {
        if self.cursors.is_none() {
            return Ok(());
        }
        let read = self.scans.read.entry(stage.clone()).or_default();
        for row in rows {
            read.push(Key::of(&ready_key(row)?));
        }
        Ok(())
    }

    /// `locked_query` for the lease count, followed in the same round trip by
    /// the ready rows of the claim's stages (kept in `ready_ahead`): the
    /// statements run in the order the engine would send them.
    fn locked_count_and_ready(
        &mut self,
        key: &str,
        agent: &AgentId,
        hint: &ClaimHint,
    ) -> Result<Vec<Row>, StoreError> {
        let lock = self.statement(LOCK)?;
        let count = self.statement(LEASES_HELD)?;
        let mut reads = Vec::with_capacity(hint.stages.len());
        for stage in &hint.stages {
            let from = self.ready_from(stage);
            reads.push((stage.as_str(), self.ready_statement(from)?, ReadyParams::from(from)));
        }
        self.ready_ahead_limit = hint.limit;
        let (client, pending) = self.session.parts();
        let limit = limit(hint.limit);
        let agent = agent.as_str();
        let mut futures: Vec<RowsFuture<'_>> = vec![
            Box::pin(async move { client.query(&lock, &[&key]).await }),
            Box::pin(async move { client.query(&count, &[&agent]).await }),
        ];
        for (stage, ready, from) in &reads {
            futures.push(Box::pin(async move { client.query(ready, &from.with(stage, &limit)).await }));
        }
        pending.traffic.statements += futures.len() as u64 - 1;
        let mut results =
            block(self.rt, self.timeout, pending.carry(client, async { Ok(in_order(futures).await) }))?
                .into_iter();
        let (Some(locked), Some(counted)) = (results.next(), results.next()) else {
            return Err(StoreError::Row("a pipelined statement went unanswered".into()));
        };
        locked?;
        let counted = counted?;
        for (stage, rows) in hint.stages.iter().zip(results) {
            let rows = rows?;
            self.read_rows(stage, &rows)?;
            self.ready_ahead.insert(stage.clone(), rows);
        }
        Ok(counted)
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
        if self.defer
            && !self.scans.saved.contains(&id)
            && let Some(row) = self.read_ahead.rows.remove(&id)
        {
            return Ok(Some(row));
        }
        self.query_opt(LOAD, &[&id.0])?.map(|row| task_and_head(&row, 0)).transpose()
    }

    fn load_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<(Task, Hash)>, StoreError> {
        self.query_opt(LOAD_BY_KEY, &[&namespace, &key])?.map(|row| task_and_head(&row, 0)).transpose()
    }

    fn ready(&mut self, stage: &StageName, max: usize) -> Result<Vec<ReadyKey>, StoreError> {
        let ahead = self.ready_ahead.remove(stage);
        let rows = match ahead {
            // Read with the lease count: the first `max` are what this query
            // would return now, unless it asks for more than was read and the
            // read came back full (then read again: the rows this batch
            // locked come back too).
            Some(mut rows) if max <= self.ready_ahead_limit || rows.len() < self.ready_ahead_limit => {
                rows.truncate(max);
                rows
            }
            _ => {
                let from = self.ready_from(stage);
                let st = self.ready_statement(from)?;
                let (client, pending) = self.session.parts();
                let (stage_name, limit) = (stage.as_str(), limit(max));
                let params = ReadyParams::from(from);
                let params = params.with(&stage_name, &limit);
                let rows = block(self.rt, self.timeout, pending.carry(client, client.query(&st, &params)))?;
                self.read_rows(stage, &rows)?;
                rows
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = ready_key(row)?;
            self.prefetched.insert(key.id, task_and_head(row, 3)?);
            if let Some(payload) = row.try_get::<_, Option<String>>(5)? {
                self.payloads.insert(key.id, payload);
            }
            out.push(key);
        }
        Ok(out)
    }

    fn due(&mut self, now: Millis, max: usize) -> Result<Vec<TaskId>, StoreError> {
        let rows = self.query(DUE, &[&now, &limit(max)])?;
        rows.iter().map(|row| Ok(TaskId(row.try_get(0)?))).collect()
    }

    fn leases_held(&mut self, agent: &AgentId) -> Result<u64, StoreError> {
        let key = self.agent_lock(agent.as_str());
        let hint = self.claim_hint.take().filter(|_| self.defer);
        let rows = match hint {
            Some(hint) => self.locked_count_and_ready(&key, agent, &hint)?,
            None => self.locked_query(&key, LEASES_HELD, &[&agent.as_str()])?,
        };
        let n: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(n.max(0).unsigned_abs())
    }

    /// From the ready rows a claim read, else one query (a claim of one
    /// named task, `only`).
    fn payload(&mut self, id: TaskId) -> Result<String, StoreError> {
        if let Some(payload) = self.payloads.remove(&id) {
            return Ok(payload);
        }
        let row = self.query_opt(PAYLOAD, &[&id.0])?;
        let row = row.ok_or_else(|| StoreError::Row(format!("task {id} has no payload")))?;
        Ok(row.try_get(0)?)
    }

    fn insert(&mut self, task: &Task, payload: &str, event: &Event) -> Result<(), StoreError> {
        let c = Columns::of(task)?;
        self.scans.saved(task.id, ready_in(task, &c));
        let mut params: Vec<Param> = vec![
            Box::new(task.id.0),
            Box::new(task.namespace.clone()),
            Box::new(task.idempotency_key.clone()),
        ];
        params.extend(index_params(&c));
        params.extend::<[Param; 7]>([
            Box::new(task.parent.map(|p| p.0)),
            Box::new(c.revision),
            Box::new(event.hash.0.to_vec()),
            Box::new(serde_json::to_string(task)?),
            Box::new(payload.to_owned()),
            Box::new(int(event.version)?),
            Box::new(event.stored_body()),
        ]);
        self.write(INSERT, params)
    }

    fn update(&mut self, task: &Task, event: &Event) -> Result<bool, StoreError> {
        self.prefetched.remove(&task.id);
        let c = Columns::of(task)?;
        self.scans.saved(task.id, ready_in(task, &c));
        let expected = int(task.revision.saturating_sub(1))?;
        let mut params: Vec<Param> = vec![Box::new(task.id.0), Box::new(expected)];
        params.extend(index_params(&c));
        params.extend::<[Param; 5]>([
            Box::new(c.revision),
            Box::new(event.hash.0.to_vec()),
            Box::new(serde_json::to_string(task)?),
            Box::new(int(event.version)?),
            Box::new(event.stored_body()),
        ]);
        // The guard: the row changes (and its event is written) only if
        // nobody saved it since it was loaded. Deferred, it is the checked
        // form, which fails the transaction instead of answering false.
        let sql = if self.defer { UPDATE_CHECKED } else { UPDATE };
        Ok(self.send(sql, params, true)? == 1)
    }

    /// Only a new handoff is written, as its id and task: its record, and
    /// its outcome when it settles, are read from the task's events.
    fn put_handoff(&mut self, handoff: &Handoff) -> Result<(), StoreError> {
        if handoff.outcome != HandoffOutcome::Pending {
            return Ok(());
        }
        self.write(PUT_HANDOFF, vec![Box::new(handoff.id.0), Box::new(handoff.task.0)])
    }

    fn put_alert(&mut self, alert: &Alert) -> Result<(), StoreError> {
        let body = serde_json::to_string(alert)?;
        self.write(PUT_ALERT, vec![Box::new(alert.task.0), Box::new(alert.at), Box::new(body)])
    }

    fn put_notice(&mut self, notice: &Notice) -> Result<(), StoreError> {
        let body = serde_json::to_string(notice)?;
        self.write(PUT_NOTICE, vec![Box::new(notice.task().map(|t| t.0)), Box::new(body)])
    }

    fn put_push_config(&mut self, config: &PushConfig) -> Result<(), StoreError> {
        let body = serde_json::to_string(config)?;
        self.write(
            PUT_PUSH_CONFIG,
            vec![Box::new(config.task.0), Box::new(config.id.clone()), Box::new(body)],
        )
    }

    fn delete_push_config(&mut self, task: TaskId, id: &str) -> Result<(), StoreError> {
        self.write(DELETE_PUSH_CONFIG, vec![Box::new(task.0), Box::new(id.to_owned())])
    }

    fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
        let body = serde_json::to_string(delivery)?;
        let notice = int(delivery.notice)?;
        self.write(
            PUT_DELIVERY,
            vec![
                Box::new(notice),
                Box::new(delivery.webhook.clone()),
                Box::new(delivery.status.is_final()),
                Box::new(body),
            ],
        )
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
        let version = i64::from(workflow.version);
        self.write(PUT_WORKFLOW, vec![Box::new(workflow.name.clone()), Box::new(version), Box::new(body)])
    }

    fn rollup(&mut self, bucket: Millis, key: &RollupKey) -> Result<Option<Counts>, StoreError> {
        let key = serde_json::to_string(key)?;
        self.write(ROLLUP_ENSURE, vec![Box::new(bucket), Box::new(key.clone())])?;
        let Some(row) = self.query_opt(ROLLUP_LOCK, &[&bucket, &key])? else { return Ok(None) };
        Ok(Some(json(&row, 0)?))
    }

    fn put_rollup(&mut self, rollup: &Rollup) -> Result<(), StoreError> {
        let key = serde_json::to_string(&rollup.key)?;
        let body = serde_json::to_string(&rollup.counts)?;
        self.write(ROLLUP_ENSURE, vec![Box::new(rollup.bucket), Box::new(key.clone())])?;
        self.write(PUT_ROLLUP, vec![Box::new(rollup.bucket), Box::new(key), Box::new(body)])
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
        self.write(
            UPDATE_ANOMALY,
            vec![Box::new(int(id)?), Box::new(anomaly.acked.is_none()), Box::new(body)],
        )
    }

    fn credential_live(&mut self, credential: &Credential) -> Result<bool, StoreError> {
        let row =
            self.query_opt(CREDENTIAL_LIVE, &[&credential.token.as_str(), &credential.principal.as_str()])?;
        Ok(row.is_some())
    }

    fn held_in_stage(&mut self, stage: &StageName) -> Result<u64, StoreError> {
        let row = self.query_opt(HELD_IN_STAGE, &[&stage.as_str()])?;
        let n: i64 = row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(n.max(0).unsigned_abs())
    }

    fn load_request(&mut self, principal: &str, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        let lock = format!("baton.request.{}\u{1f}{principal}\u{1f}{key}", self.session.lock_scope);
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
        self.write(
            SAVE_REQUEST,
            vec![
                Box::new(key.principal.clone()),
                Box::new(key.key.clone()),
                Box::new(key.fingerprint.0.to_vec()),
                Box::new(at),
                Box::new(body),
            ],
        )
    }

    fn purge_requests(&mut self, at_or_before: Millis, max: usize) -> Result<usize, StoreError> {
        let deleted = self.execute(PURGE_REQUESTS, &[&at_or_before, &limit(max)])?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn archived_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<TaskId>, StoreError> {
        crate::archive::by_key(self, namespace, key)
    }

    fn archive(&mut self, commit: &baton_core::archive::ArchiveCommit) -> Result<bool, StoreError> {
        crate::archive::commit(self, commit)
    }
}
