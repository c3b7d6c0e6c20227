//! The writer threads and group commit. Each of the store's `writers`
//! threads owns one write connection (driven by its own current-thread
//! runtime) and takes operations from the store's one queue: it blocks for
//! the first, takes whatever else is queued (up to
//! `limits.commit_batch_max`), runs them in one transaction, commits once,
//! and only then answers every caller. While one writer waits on the
//! database, the next collects and runs the following batch: a single writer
//! spends most of its time waiting for round trips, so several keep the
//! database busy. They need nothing beyond what keeps replicas apart (row
//! locks, revision guards, advisory locks), since to the database each
//! writer is just another replica's connection.
//!
//! `now` is read once per batch: the database clock (`clock_timestamp()`,
//! pipelined with BEGIN) unless a clock is injected.
//!
//! A refused operation changes nothing while its neighbours commit. A batch
//! first runs without savepoints; if an operation is refused or fails after it
//! wrote (or any statement fails, which aborts a PostgreSQL transaction), the
//! writer rolls the batch back and runs it again with each operation in its
//! own savepoint. Nothing is answered before COMMIT, so callers cannot tell.
//! Those rules, and the reruns below, are the batch kernel's
//! (`baton_core::batch`), shared with every store; this module is its
//! PostgreSQL backend (`Batch`: BEGIN with the clock and the read-ahead,
//! savepoints, COMMIT with the deferred writes, and which errors mean what)
//! and the writer threads around it.
//!
//! Without savepoints, writes nobody waits for are deferred and travel with
//! the next awaited statement or with COMMIT (see `crate::tx`); a deferred
//! write that fails (a guarded save that lost included) aborts the
//! transaction, and the batch reruns with savepoints, where nothing is
//! deferred. A COMMIT that carried a failed write rolled back: nothing of
//! the batch is acknowledged from it.
//!
//! Other replicas write the same rows. A guarded save that finds the row
//! changed (`Fail::Conflict`), or a unique key taken by a concurrent
//! transaction, reruns the operation (its reads then see the other commit);
//! a deadlock or serialization failure between replicas reruns the batch.
//! Both are bounded. A lost connection, a timeout or a failed COMMIT
//! acknowledges nothing (`Unavailable`): the connection is dropped and the
//! next batch connects afresh, so the store recovers by itself.

use crate::cursor::{Cursors, Key, Scans};
use crate::directory::DirectoryWrite;
use crate::error::{Class, StoreError, is_disk_full};
use crate::leader;
use crate::listen;
use crate::options::PostgresOptions;
use crate::rows::task_and_head;
use crate::tx::{ClaimHint, LOAD_MANY, PgTx, ReadAhead, RowsFuture, Session, block, in_order};
use baton_core::GaugeDeltas;
use baton_core::batch::{self, Backend, Committed, Halt, Report, Savepoint};
use baton_core::engine::{self, Ctx, Fail};
use baton_core::metrics::Observation;
use baton_core::store::ReadyListener;
use baton_core::{Clock, Error, Millis, OpOutcome, RequestKey, Rules, StageName, TaskId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The wake-ups of one commit, in one statement and a transaction of its own
/// whose commit does not wait for the disk (`set_config(.., true)` holds
/// until that commit): one NOTIFY per payload.
const NOTIFY: &str = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, payload) \
                      FROM unnest($2::text[]) AS payload";

/// Where a caller waits for its answer.
pub(crate) type Reply<T> = tokio::sync::oneshot::Sender<Result<T, Error>>;

/// One write operation queued for the writer, with where to answer it.
pub(crate) enum Op {
    /// `Store::execute` and the per-verb methods (boxed: it is large).
    Execute(Box<(baton_core::Op, Option<RequestKey>)>, Reply<OpOutcome>),
    FireDue(usize, Reply<usize>),
    PurgeRequests(usize, Reply<usize>),
    /// A principal or token write (`crate::directory`).
    Directory(DirectoryWrite, Reply<bool>),
}

/// Counts kept by the writer, read by `PostgresStore::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub refused: AtomicU64,
    pub unavailable: AtomicU64,
    pub batch_max: AtomicU64,
    pub reruns: AtomicU64,
    pub conflicts: AtomicU64,
    pub batch_retries: AtomicU64,
    pub connects: AtomicU64,
    pub statements: AtomicU64,
    pub round_trips: AtomicU64,
    pub ready_reads: AtomicU64,
    pub ready_reads_from_cursor: AtomicU64,
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub rt: Runtime,
    pub session: Option<Session>,
    pub options: PostgresOptions,
    /// The store's queue, shared by its writers: the one holding the lock
    /// collects a batch, then lets the next collect while it commits.
    pub rx: Arc<Mutex<Receiver<Op>>>,
    pub clock: Option<Arc<dyn Clock>>,
    pub rules: Rules,
    pub listener: Arc<dyn ReadyListener>,
    pub counters: Arc<Counters>,
    /// The NOTIFY channel of this schema.
    pub channel: String,
    /// The schema the store's tables live in.
    pub schema: String,
    /// The store's ready cursors (`None`: claims read from the head) and
    /// this writer's number in them.
    pub cursors: Option<Arc<Cursors>>,
    pub index: usize,
}

impl Writer {
    /// The thread's body. Returns when every sender is gone and the queue is
    /// drained (the store closed).
    pub(crate) fn run(mut self) {
        let max = self.rules.limits.commit_batch_max.max(1);
        let mut ops = Vec::with_capacity(max);
        while self.collect(&mut ops, max) {
            self.commit_batch(&mut ops);
        }
        // Closed cleanly: hand the duties over at once instead of letting
        // their leases run out.
        if let Some(session) = &self.session {
            let released = block(
                &self.rt,
                self.options.io_timeout,
                session.client.execute(leader::RELEASE, &[&self.options.replica]),
            );
            if let Err(error) = released {
                tracing::warn!(%error, "could not release this replica's duties; they expire by themselves");
            }
        }
    }

    /// Waits for the next operation and takes what else is queued, up to
    /// `max`; false once the store closed and the queue is drained.
    fn collect(&self, ops: &mut Vec<Op>, max: usize) -> bool {
        let rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(first) = rx.recv() else { return false };
        ops.push(first);
        while ops.len() < max {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        true
    }

    fn connect(&mut self) -> Result<(), String> {
        let config = self.options.connection_config().map_err(|e| e.to_string())?;
        let timeout = self.options.io_timeout;
        let connected =
            self.rt.block_on(async { tokio::time::timeout(timeout, config.connect(NoTls)).await });
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("cannot connect to PostgreSQL: {e}")),
            Err(_) => return Err(format!("connecting to PostgreSQL took more than {timeout:?}")),
        };
        self.rt.spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the writer's PostgreSQL connection ended");
            }
        });
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.session = Some(Session::new(client, self.schema.clone()));
        Ok(())
    }

    /// Runs, commits and answers one batch; `ops` is empty afterwards.
    fn commit_batch(&mut self, ops: &mut Vec<Op>) {
        let count = ops.len();
        let mut reconnected = false;
        loop {
            if self.session.is_none() {
                if let Err(why) = self.connect() {
                    tracing::warn!(reason = %why, ops = count, "the write batch found no database");
                    return self.lost(ops, &why);
                }
                reconnected = true;
            }
            let Some(session) = self.session.as_mut() else { return self.lost(ops, "no connection") };
            let mut batch = Batch {
                rt: &self.rt,
                session,
                timeout: self.options.io_timeout,
                clock: self.clock.as_ref(),
                options: &self.options,
                read_ahead: ReadAhead::default(),
                scans: Scans::default(),
                cursors: self.cursors.as_deref().map(|c| (c, self.index)),
                begun: Instant::now(),
                open: false,
                replica: &self.options.replica,
                lease_ms: i64::try_from(self.options.duty_lease.as_millis()).unwrap_or(i64::MAX),
                counters: &self.counters,
            };
            let result = batch::run(&mut batch, ops, &self.rules);
            let scans = batch.take_scans();
            self.count_traffic();
            match result {
                Ok(committed) => {
                    let firsts = match &self.cursors {
                        Some(cursors) => scans.committed(cursors, self.index),
                        None => scans.made_ready,
                    };
                    let Committed { outcomes, ready, observed } = committed;
                    self.answer(ops, outcomes, &ready, &observed);
                    return self.notify_replicas(&ready, &firsts);
                }
                Err(Halt::Stale(why)) => {
                    self.session = None;
                    if reconnected {
                        return self.lost(ops, &format!("the PostgreSQL store lost its connection: {why}"));
                    }
                    tracing::info!(reason = %why, "the write connection was stale; reconnecting");
                }
                Err(Halt::Lost(why)) => {
                    self.session = None;
                    tracing::error!(reason = %why, ops = count, "write batch not committed");
                    return self.lost(ops, &format!("the PostgreSQL store could not commit: {why}"));
                }
                Err(Halt::Full(why)) => {
                    self.session = None;
                    tracing::error!(reason = %why, ops = count, "disk full: write batch not committed");
                    self.counters.unavailable.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    for op in ops.drain(..) {
                        op.abandon_with(Err(Error::StorageFull(why.clone())));
                    }
                    return;
                }
                Err(Halt::Fatal(never)) => match never {},
                Err(Halt::Tainted | Halt::Rerun) => {
                    self.session = None;
                    return self.lost(ops, "internal error: a batch was not rerun");
                }
            }
        }
    }

    /// Adds the statements and round trips the session sent since the last
    /// count to the store's counters.
    fn count_traffic(&mut self) {
        if let Some(session) = self.session.as_mut() {
            let traffic = std::mem::take(&mut session.pending.traffic);
            self.counters.statements.fetch_add(traffic.statements, Ordering::Relaxed);
            self.counters.round_trips.fetch_add(traffic.round_trips, Ordering::Relaxed);
        }
    }

    fn answer(
        &self,
        ops: &mut Vec<Op>,
        outcomes: Vec<Result<Value, Error>>,
        ready: &[StageName],
        observed: &[Observation],
    ) {
        let count = ops.len() as u64;
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(count, Ordering::Relaxed);
        c.batch_max.fetch_max(count, Ordering::Relaxed);
        for outcome in &outcomes {
            match outcome {
                Ok(_) => {}
                Err(Error::Rejected(_)) => drop(c.refused.fetch_add(1, Ordering::Relaxed)),
                Err(Error::Unavailable(_) | Error::StorageFull(_)) => {
                    c.unavailable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Wake-ups before answers: a caller that sees its answer may rely on
        // the listener having heard about the work it created.
        if !ready.is_empty() {
            let listener = &self.listener;
            if panic::catch_unwind(AssertUnwindSafe(|| listener.ready(ready))).is_err() {
                tracing::error!("the ready listener panicked; wake-ups for this batch are lost");
            }
        }
        if !observed.is_empty() {
            let listener = &self.listener;
            if panic::catch_unwind(AssertUnwindSafe(|| listener.observed(observed))).is_err() {
                tracing::error!("the ready listener panicked; metrics for this batch are lost");
            }
        }
        for (op, outcome) in ops.drain(..).zip(outcomes) {
            op.answer(outcome);
        }
    }

    /// Tells other replicas' waiting claims which stages got new work, and
    /// their ready cursors where rows were made or left ready (`firsts`),
    /// after the batch committed and its callers were answered. Not inside the
    /// write transaction: NOTIFY holds a database-wide lock from its
    /// transaction's pre-commit until the commit ends, so it would make every
    /// writer's (and replica's) commit, fsync included, wait for the
    /// previous one, and group commit across writers would be lost. Here it
    /// runs in a transaction of its own (one statement, `NOTIFY`) that does
    /// not wait for its commit record to reach the disk: a wake-up is a
    /// hint, and one lost to a crash costs a waiting claim latency only (long
    /// polls re-check the store when their wait ends).
    fn notify_replicas(&mut self, ready: &[StageName], firsts: &HashMap<StageName, Key>) {
        let payloads = listen::payloads(&self.options.replica, ready, firsts);
        let Some(session) = self.session.as_mut() else { return };
        if payloads.is_empty() {
            return;
        }
        let timeout = self.options.io_timeout;
        let sent = session.prepared(&self.rt, timeout, NOTIFY).and_then(|st| {
            let (client, pending) = session.parts();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.channel, &payloads];
            block(&self.rt, timeout, pending.carry(client, client.execute(&st, &params)))
        });
        self.count_traffic();
        let Err(error) = sent else { return };
        tracing::warn!(%error, "could not notify other replicas of new work; their long polls re-check");
        // The next batch starts clean: reconnecting, or after ending this.
        let ended = error.class() != Class::Lost
            && self
                .session
                .as_ref()
                .is_some_and(|s| block(&self.rt, timeout, s.client.batch_execute("ROLLBACK")).is_ok());
        if !ended {
            self.session = None;
        }
    }

    /// Answers a batch that did not commit `Unavailable`.
    fn lost(&self, ops: &mut Vec<Op>, why: &str) {
        self.counters.unavailable.fetch_add(ops.len() as u64, Ordering::Relaxed);
        for op in ops.drain(..) {
            op.abandon(why);
        }
    }
}

/// What one operation produced, held until the batch commits.
pub(crate) enum Value {
    /// Boxed: an `OpOutcome` is large, and a batch holds one per operation.
    Execute(Box<OpOutcome>),
    Count(usize),
    Directory(bool),
}

impl Op {
    /// Runs the operation in the batch's transaction. Takes `&self`: a batch
    /// may run more than once, and the reply slot is used only after COMMIT.
    fn run(&self, tx: &mut PgTx<'_>, cx: &mut Ctx<'_>) -> Result<Value, Fail<StoreError>> {
        Ok(match self {
            Op::Execute(call, _) => {
                let (op, key) = call.as_ref();
                Value::Execute(Box::new(engine::keyed(tx, key.as_ref(), op, cx)?))
            }
            Op::FireDue(limit, _) => Value::Count(engine::fire_due(tx, *limit, cx)?),
            Op::PurgeRequests(limit, _) => {
                // A singleton duty: only the replica holding it purges.
                let (replica, lease_ms) = tx.duty;
                let held = tx
                    .query(leader::HOLD, &[&leader::DUTY_PURGE, &replica, &cx.now, &lease_ms])
                    .map_err(Fail::Store)?;
                tx.writes += 1;
                if held.is_empty() {
                    return Ok(Value::Count(0));
                }
                Value::Count(engine::purge_requests(tx, *limit, cx)?)
            }
            Op::Directory(write, _) => Value::Directory(write.run(tx)?),
        })
    }

    /// The task this operation acts on by id, read ahead with BEGIN.
    fn names_task(&self) -> Option<TaskId> {
        let Op::Execute(call, _) = self else { return None };
        match &call.0 {
            baton_core::Op::Act(r) => Some(r.task),
            baton_core::Op::Cancel(r) => Some(r.task),
            baton_core::Op::Comment(r) => Some(r.task),
            baton_core::Op::Claim(r) => r.only,
            _ => None,
        }
    }

    /// Tells the caller its outcome (the batch committed).
    fn answer(self, outcome: Result<Value, Error>) {
        let mismatch = || Err(Error::Unavailable("internal error: an answer went astray".into()));
        let outcome = match outcome {
            Ok(value) => value,
            Err(e) => return self.abandon_with(Err(e)),
        };
        match (self, outcome) {
            (Op::Execute(_, r), Value::Execute(v)) => drop(r.send(Ok(*v))),
            (Op::FireDue(_, r) | Op::PurgeRequests(_, r), Value::Count(v)) => drop(r.send(Ok(v))),
            (Op::Directory(_, r), Value::Directory(v)) => drop(r.send(Ok(v))),
            (op, _) => {
                tracing::error!("an outcome did not match its operation");
                op.abandon_with(mismatch());
            }
        }
    }

    /// Tells the caller nothing happened for sure (the batch did not commit,
    /// or the operation never reached the writer).
    pub(crate) fn abandon(self, why: &str) {
        self.abandon_with(Err(Error::Unavailable(why.to_owned())));
    }

    fn abandon_with(self, e: Result<std::convert::Infallible, Error>) {
        let Err(e) = e;
        match self {
            Op::Execute(_, r) => drop(r.send(Err(e))),
            Op::FireDue(_, r) | Op::PurgeRequests(_, r) => drop(r.send(Err(e))),
            Op::Directory(_, r) => drop(r.send(Err(e))),
        }
    }
}

/// The writer's open transaction, as the batch kernel drives it. Holds what
/// one attempt at the batch read ahead and scanned.
struct Batch<'w> {
    rt: &'w Runtime,
    session: &'w mut Session,
    timeout: Duration,
    clock: Option<&'w Arc<dyn Clock>>,
    options: &'w PostgresOptions,
    /// The tasks the operations name, read with BEGIN (not in the careful
    /// rerun, which reads everything afresh).
    read_ahead: ReadAhead,
    /// What the attempt read and saved.
    scans: Scans,
    /// The store's ready cursors and this writer's number in them; used
    /// only without savepoints.
    cursors: Option<(&'w Cursors, usize)>,
    /// When the attempt began: a transaction that ran long is not committed.
    begun: Instant,
    /// Whether a transaction is open: a COMMIT that failed ended it, and
    /// the rerun that follows needs no ROLLBACK first.
    open: bool,
    replica: &'w str,
    lease_ms: Millis,
    counters: &'w Counters,
}

impl Batch<'_> {
    /// The last attempt's scans, its ready reads counted.
    fn take_scans(&mut self) -> Scans {
        let scans = std::mem::take(&mut self.scans);
        self.counters.ready_reads.fetch_add(scans.reads, Ordering::Relaxed);
        self.counters.ready_reads_from_cursor.fetch_add(scans.reads_from_cursor, Ordering::Relaxed);
        scans
    }

    /// Ends the transaction, forgetting what was deferred; a failure is left
    /// to the next statement (the connection is dropped on `Lost`).
    fn abandon(&mut self) {
        self.session.pending.discard();
        let _ = block(self.rt, self.timeout, self.session.client.batch_execute("ROLLBACK"));
    }

    fn exec(&mut self, sql: &str) -> Result<(), Halt<Infallible>> {
        let (client, pending) = self.session.parts();
        block(self.rt, self.timeout, pending.carry(client, client.batch_execute(sql))).map_err(|e| {
            match e.class() {
                _ if is_disk_full(&e) => Halt::Full(format!("{sql} failed: {e}")),
                Class::RerunBatch => Halt::Rerun,
                _ => Halt::Lost(format!("{sql} failed: {e}")),
            }
        })
    }
}

impl Backend for Batch<'_> {
    type Error = StoreError;
    type Tx<'t>
        = PgTx<'t>
    where
        Self: 't;
    type Op = Op;
    type Value = Value;
    /// Nothing stops the process: a lost connection is reconnected.
    type Fatal = Infallible;

    /// Each rerun reads the other replica's commit, so more than a few means
    /// a task written in a tight loop elsewhere; then the caller hears
    /// `Unavailable`.
    const CONFLICT_RETRIES_MAX: usize = 8;
    /// A failed statement aborts a PostgreSQL transaction.
    const FAILURE_ABORTS: bool = true;

    /// BEGIN, pipelined with the database clock (unless a clock is injected)
    /// and, without savepoints, the read-ahead of the tasks the operations
    /// name: one round trip.
    fn begin(&mut self, ops: &[Op], careful: bool) -> Result<Millis, Halt<Infallible>> {
        let previous = self.take_scans();
        drop(previous);
        self.session.pending.discard();
        self.read_ahead = ReadAhead::default();
        let (rt, timeout) = (self.rt, self.timeout);
        let named: Vec<Uuid> =
            if careful { Vec::new() } else { ops.iter().filter_map(Op::names_task).map(|t| t.0).collect() };
        let session = &mut *self.session;
        let prepared = (|| {
            let now = if self.clock.is_none() {
                Some(session.prepared(rt, timeout, leader::DB_NOW)?)
            } else {
                None
            };
            let load = if named.is_empty() { None } else { Some(session.prepared(rt, timeout, LOAD_MANY)?) };
            Ok::<_, StoreError>((now, load))
        })();
        let (now_st, load_st) = match prepared {
            Ok(p) => p,
            Err(e) if e.class() == Class::Lost => return Err(Halt::Stale(e.to_string())),
            Err(e) => return Err(Halt::Lost(format!("preparing the batch failed: {e}"))),
        };
        self.begun = Instant::now();
        let (client, pending) = session.parts();
        let mut futures: Vec<RowsFuture<'_>> =
            vec![Box::pin(async { client.batch_execute("BEGIN").await.map(|()| Vec::new()) })];
        if let Some(st) = &now_st {
            futures.push(Box::pin(client.query(st, &[])));
        }
        if let Some(st) = &load_st {
            let named = &named;
            futures.push(Box::pin(async move { client.query(st, &[named]).await }));
        }
        pending.traffic.round_trips += 1;
        pending.traffic.statements += futures.len() as u64;
        let clock = self.clock;
        let began = block(rt, timeout, async { Ok::<_, tokio_postgres::Error>(in_order(futures).await) })
            .and_then(|results| {
                let mut results = results.into_iter();
                let _begun = results.next().transpose()?;
                let now = match (clock, results.next().filter(|_| now_st.is_some())) {
                    (Some(clock), _) => clock.now(),
                    (None, Some(rows)) => rows?
                        .first()
                        .ok_or_else(|| StoreError::Row("no time".into()))?
                        .try_get::<_, Millis>(0)?,
                    (None, None) => return Err(StoreError::Row("no time".into())),
                };
                let mut ahead = ReadAhead::default();
                if let Some(rows) = results.next() {
                    for row in rows? {
                        let id = TaskId(row.try_get(0)?);
                        ahead.rows.insert(id, task_and_head(&row, 1)?);
                    }
                }
                Ok((now, ahead))
            });
        match began {
            Ok((now, ahead)) => {
                self.read_ahead = ahead;
                self.open = true;
                Ok(now)
            }
            Err(e) if e.class() == Class::Lost => Err(Halt::Stale(e.to_string())),
            Err(e) => {
                let _ = block(rt, timeout, self.session.client.batch_execute("ROLLBACK"));
                Err(Halt::Lost(format!("BEGIN failed: {e}")))
            }
        }
    }

    fn tx(&mut self, op: &Op, careful: bool) -> PgTx<'_> {
        PgTx {
            rt: self.rt,
            session: &mut *self.session,
            timeout: self.timeout,
            writes: 0,
            prefetched: HashMap::new(),
            payloads: HashMap::new(),
            defer: !careful,
            read_ahead: &mut self.read_ahead,
            scans: &mut self.scans,
            cursors: if careful { None } else { self.cursors },
            claim_hint: op.claim_hint(),
            ready_ahead: HashMap::new(),
            ready_ahead_limit: 0,
            duty: (self.replica, self.lease_ms),
        }
    }

    fn wrote(tx: &PgTx<'_>) -> bool {
        tx.writes > 0
    }

    fn run(op: &Op, tx: &mut PgTx<'_>, cx: &mut Ctx<'_>) -> Result<Value, Fail<StoreError>> {
        op.run(tx, cx)
    }

    fn classify(&mut self, error: &StoreError) -> batch::Class<Infallible> {
        match error.class() {
            _ if is_disk_full(error) => batch::Class::Halt(Halt::Full(error.to_string())),
            Class::Lost => batch::Class::Halt(Halt::Lost(error.to_string())),
            Class::RerunBatch => batch::Class::Halt(Halt::Rerun),
            Class::Conflict => batch::Class::Conflict,
            Class::Other => batch::Class::Failed,
        }
    }

    fn savepoint(&mut self, step: Savepoint) -> Result<(), Halt<Infallible>> {
        self.exec(match step {
            Savepoint::Open => "SAVEPOINT op",
            Savepoint::Release => "RELEASE SAVEPOINT op",
            Savepoint::RollbackTo => "ROLLBACK TO SAVEPOINT op",
        })
    }

    fn rollback(&mut self) -> Result<(), Halt<Infallible>> {
        self.session.pending.discard();
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        block(self.rt, self.timeout, self.session.client.batch_execute("ROLLBACK"))
            .map_err(|e| Halt::Lost(format!("ROLLBACK failed: {e}")))
    }

    fn commit(&mut self, ops: &[Op], gauges: &GaugeDeltas, careful: bool) -> Result<(), Halt<Infallible>> {
        // A transaction that ran long is not committed: its notices took
        // their numbers at insert, and webhook delivery passes a gap in the
        // numbers after a while, so a late commit could slip a notice past it.
        if self.begun.elapsed() > crate::WRITE_TRANSACTION_MAX {
            self.abandon();
            return Err(Halt::Lost(format!(
                "the write transaction ran {:?}, longer than {:?}; rolled back",
                self.begun.elapsed(),
                crate::WRITE_TRANSACTION_MAX
            )));
        }
        // The kept operations' counter deltas, summed: one upsert into this
        // connection's slot rows, sent with COMMIT.
        if let Err(e) = self.session.defer_gauges(self.rt, self.timeout, gauges) {
            self.abandon();
            return Err(match e.class() {
                Class::Lost => Halt::Stale(e.to_string()),
                _ => Halt::Lost(format!("preparing the stage counters failed: {e}")),
            });
        }
        // Other replicas hear of the new work after COMMIT (`notify_replicas`).
        self.open = false;
        let (client, pending) = self.session.parts();
        match block(self.rt, self.timeout, pending.carry(client, client.batch_execute("COMMIT"))) {
            Ok(()) => {}
            // A deferred write failed before COMMIT: the transaction was
            // aborted, so COMMIT rolled it back (unless the connection died).
            Err(e) if is_disk_full(&e) => return Err(Halt::Full(format!("COMMIT failed: {e}"))),
            Err(StoreError::Deferred(cause)) => {
                return Err(match cause.class() {
                    Class::Lost => Halt::Lost(format!("COMMIT failed: {cause}")),
                    Class::RerunBatch => Halt::Rerun,
                    // With savepoints only the counters' upsert was deferred:
                    // rerunning would fail it again.
                    Class::Conflict | Class::Other if careful => {
                        Halt::Lost(format!("updating the stage counters failed: {cause}"))
                    }
                    Class::Conflict | Class::Other => Halt::Tainted,
                });
            }
            // Whether it committed is unknown: acknowledge nothing. Keyed
            // retries (Idempotency-Key) find out which it was.
            Err(e) => return Err(Halt::Lost(format!("COMMIT failed: {e}"))),
        }
        let keyed = ops.iter().any(|op| match op {
            Op::Execute(call, _) => {
                call.1.is_some()
                    || matches!(&call.0, baton_core::Op::Submit(task) if task.idempotency_key.is_some())
            }
            _ => false,
        });
        if self.options.take_lost_commit_answer(keyed) {
            // The test-only failpoint (`PostgresOptions::lose_commit_answers`).
            return Err(Halt::Lost("COMMIT answer lost (test failpoint; the batch committed)".into()));
        }
        Ok(())
    }

    fn report(&mut self, report: Report<'_>) {
        match report {
            Report::Conflict => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("another replica changed a row under the operation; running it again");
            }
            Report::Failed(e) => tracing::error!(error = %e, "a write operation failed; it changed nothing"),
            Report::Panicked(what) => {
                tracing::error!(panic = %what, "a write operation panicked; it changed nothing");
            }
            Report::Careful => drop(self.counters.reruns.fetch_add(1, Ordering::Relaxed)),
            Report::Retry => drop(self.counters.batch_retries.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl Op {
    /// What a claim in this operation will read (`claim_hint`).
    fn claim_hint(&self) -> Option<ClaimHint> {
        match self {
            Op::Execute(call, _) => claim_hint(&call.0),
            _ => None,
        }
    }
}

/// What a claim in `op` will read: the ready rows of its stages.
fn claim_hint(op: &baton_core::Op) -> Option<ClaimHint> {
    use baton_core::Action;
    match op {
        // Claim-next skips the acted task when it is left ready in one of
        // its stages, and then reads one row more there: after a release or
        // a failure (it may stay), or a handoff into one of them. (A workflow
        // route that sends a handoff elsewhere is caught by `ready`, which
        // reads again when it wants more than was read ahead.)
        baton_core::Op::Act(r) => r.claim_next.as_ref().map(|c| {
            let stays = match &r.action {
                Action::Release { .. } | Action::Fail { .. } => true,
                Action::Handoff { to_stage, .. } => c.stages.contains(to_stage),
                _ => false,
            };
            ClaimHint { stages: c.stages.clone(), limit: c.max.saturating_add(usize::from(stays)) }
        }),
        baton_core::Op::Claim(r) if r.only.is_none() => {
            Some(ClaimHint { stages: r.stages.clone(), limit: r.max })
        }
        _ => None,
    }
}
