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
use baton_core::engine::{self, Ctx, Effects, Fail};
use baton_core::metrics::Observation;
use baton_core::store::ReadyListener;
use baton_core::{Clock, Error, Millis, OpOutcome, Rejection, RequestKey, Rules, StageName, TaskId};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// How often one operation is rerun when a guarded save loses to another
/// replica. Each rerun reads the other's commit, so more than a few means a
/// task written in a tight loop elsewhere; then the caller hears `Unavailable`.
const CONFLICT_RETRIES_MAX: usize = 8;

/// The wake-ups of one commit, in one statement and a transaction of its own
/// whose commit does not wait for the disk (`set_config(.., true)` holds
/// until that commit): one NOTIFY per payload.
const NOTIFY: &str = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, payload) \
                      FROM unnest($2::text[]) AS payload";

/// How often a batch is rerun after a deadlock or serialization failure.
const BATCH_RERUNS_MAX: usize = 5;

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

/// How one attempt at a batch ended.
enum Attempt {
    /// With the earliest position the batch made ready in each stage.
    Committed(Vec<Outcome>, Vec<StageName>, Vec<Observation>, HashMap<StageName, Key>),
    /// Rerun with a savepoint per operation (already rolled back).
    Tainted,
    /// Rerun after a deadlock or serialization failure (already rolled back).
    Rerun,
    /// The connection failed at BEGIN, before anything ran: a stale
    /// connection (the database restarted). Reconnect and try once more.
    Stale(String),
    /// Nothing committed, nothing acknowledged; the connection is dropped.
    Lost(String),
    /// As `Lost`, because the database's disk is full: answered `StorageFull`.
    Full(String),
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
        let mut careful = false;
        let mut reruns = 0;
        let mut reconnected = false;
        loop {
            if self.session.is_none() {
                if let Err(why) = self.connect() {
                    tracing::warn!(reason = %why, ops = count, "the write batch found no database");
                    return self.lost(ops, &why);
                }
                reconnected = true;
            }
            match self.attempt(ops, careful) {
                Attempt::Committed(outcomes, ready, observed, firsts) => {
                    self.answer(ops, outcomes, &ready, &observed);
                    return self.notify_replicas(&ready, &firsts);
                }
                Attempt::Tainted => {
                    careful = true;
                    self.counters.reruns.fetch_add(1, Ordering::Relaxed);
                }
                Attempt::Rerun => {
                    reruns += 1;
                    self.counters.batch_retries.fetch_add(1, Ordering::Relaxed);
                    if reruns > BATCH_RERUNS_MAX {
                        return self.lost(ops, "the write batch kept deadlocking with other replicas; retry");
                    }
                    careful = true;
                }
                Attempt::Stale(why) => {
                    self.session = None;
                    if reconnected {
                        return self.lost(ops, &format!("the PostgreSQL store lost its connection: {why}"));
                    }
                    tracing::info!(reason = %why, "the write connection was stale; reconnecting");
                }
                Attempt::Lost(why) => {
                    self.session = None;
                    tracing::error!(reason = %why, ops = count, "write batch not committed");
                    return self.lost(ops, &format!("the PostgreSQL store could not commit: {why}"));
                }
                Attempt::Full(why) => {
                    self.session = None;
                    tracing::error!(reason = %why, ops = count, "disk full: write batch not committed");
                    self.counters.unavailable.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    for op in ops.drain(..) {
                        op.abandon_with(Err(Error::StorageFull(why.clone())));
                    }
                    return;
                }
            }
        }
    }

    /// One try at the batch, in one transaction, counting what it sent.
    fn attempt(&mut self, ops: &[Op], careful: bool) -> Attempt {
        let attempt = self.try_batch(ops, careful);
        self.count_traffic();
        attempt
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

    fn try_batch(&mut self, ops: &[Op], careful: bool) -> Attempt {
        let Some(session) = self.session.as_mut() else { return Attempt::Stale("no connection".into()) };
        session.pending.discard();
        let rt = &self.rt;
        let timeout = self.options.io_timeout;
        // The tasks the operations name, read with BEGIN (not in the careful
        // rerun, which reads everything afresh).
        let named: Vec<Uuid> =
            if careful { Vec::new() } else { ops.iter().filter_map(Op::names_task).map(|t| t.0).collect() };
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
            Err(e) if e.class() == Class::Lost => return Attempt::Stale(e.to_string()),
            Err(e) => return Attempt::Lost(format!("preparing the batch failed: {e}")),
        };
        let begun = std::time::Instant::now();
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
        let began = block(rt, timeout, async { Ok::<_, tokio_postgres::Error>(in_order(futures).await) })
            .and_then(|results| {
                let mut results = results.into_iter();
                let _begun = results.next().transpose()?;
                let now = match (&self.clock, results.next().filter(|_| now_st.is_some())) {
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
        let (now, mut read_ahead) = match began {
            Ok(began) => began,
            Err(e) if e.class() == Class::Lost => return Attempt::Stale(e.to_string()),
            Err(e) => {
                let _ = block(rt, timeout, session.client.batch_execute("ROLLBACK"));
                return Attempt::Lost(format!("BEGIN failed: {e}"));
            }
        };
        let mut scans = Scans::default();
        let mut batch = Batch {
            rt,
            session,
            timeout,
            rules: &self.rules,
            now,
            careful,
            read_ahead: &mut read_ahead,
            scans: &mut scans,
            cursors: if careful { None } else { self.cursors.as_deref().map(|c| (c, self.index)) },
            ready: Vec::new(),
            observed: Vec::new(),
            gauges: GaugeDeltas::default(),
            end: None,
            replica: &self.options.replica,
            lease_ms: i64::try_from(self.options.duty_lease.as_millis()).unwrap_or(i64::MAX),
            counters: &self.counters,
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(op.run(&mut batch));
            if batch.end.is_some() {
                break;
            }
        }
        let ready = std::mem::take(&mut batch.ready);
        let observed = std::mem::take(&mut batch.observed);
        let gauges = std::mem::take(&mut batch.gauges);
        let end = batch.end.take();
        self.counters.ready_reads.fetch_add(scans.reads, Ordering::Relaxed);
        self.counters.ready_reads_from_cursor.fetch_add(scans.reads_from_cursor, Ordering::Relaxed);
        match end {
            None => {}
            Some(End::Lost(why)) => return Attempt::Lost(why),
            Some(End::Full(why)) => return Attempt::Full(why),
            Some(end @ (End::Tainted | End::Rerun)) => {
                session.pending.discard();
                if let Err(e) = block(rt, timeout, session.client.batch_execute("ROLLBACK")) {
                    return Attempt::Lost(format!("ROLLBACK failed: {e}"));
                }
                return if matches!(end, End::Tainted) { Attempt::Tainted } else { Attempt::Rerun };
            }
        }
        // A transaction that ran long is not committed: its notices took
        // their numbers at insert, and webhook delivery passes a gap in the
        // numbers after a while, so a late commit could slip a notice past it.
        if begun.elapsed() > crate::WRITE_TRANSACTION_MAX {
            session.pending.discard();
            let _ = block(rt, timeout, session.client.batch_execute("ROLLBACK"));
            return Attempt::Lost(format!(
                "the write transaction ran {:?}, longer than {:?}; rolled back",
                begun.elapsed(),
                crate::WRITE_TRANSACTION_MAX
            ));
        }
        // The kept operations' counter deltas, summed: one upsert into this
        // connection's slot rows, sent with COMMIT.
        if let Err(e) = session.defer_gauges(rt, timeout, &gauges) {
            session.pending.discard();
            let _ = block(rt, timeout, session.client.batch_execute("ROLLBACK"));
            return match e.class() {
                Class::Lost => Attempt::Stale(e.to_string()),
                _ => Attempt::Lost(format!("preparing the stage counters failed: {e}")),
            };
        }
        // Other replicas hear of the new work after COMMIT (`notify_replicas`).
        let (client, pending) = session.parts();
        match block(rt, timeout, pending.carry(client, client.batch_execute("COMMIT"))) {
            Ok(()) => {}
            // A deferred write failed before COMMIT: the transaction was
            // aborted, so COMMIT rolled it back (unless the connection died).
            Err(e) if is_disk_full(&e) => return Attempt::Full(format!("COMMIT failed: {e}")),
            Err(StoreError::Deferred(cause)) => {
                return match cause.class() {
                    Class::Lost => Attempt::Lost(format!("COMMIT failed: {cause}")),
                    Class::RerunBatch => Attempt::Rerun,
                    // With savepoints only the counters' upsert was deferred:
                    // rerunning would fail it again.
                    Class::Conflict | Class::Other if careful => {
                        Attempt::Lost(format!("updating the stage counters failed: {cause}"))
                    }
                    Class::Conflict | Class::Other => Attempt::Tainted,
                };
            }
            // Whether it committed is unknown: acknowledge nothing. Keyed
            // retries (Idempotency-Key) find out which it was.
            Err(e) => return Attempt::Lost(format!("COMMIT failed: {e}")),
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
            return Attempt::Lost("COMMIT answer lost (test failpoint; the batch committed)".into());
        }
        let firsts = match &self.cursors {
            Some(cursors) => scans.committed(cursors, self.index),
            None => scans.made_ready,
        };
        Attempt::Committed(outcomes, ready, observed, firsts)
    }

    fn answer(
        &self,
        ops: &mut Vec<Op>,
        outcomes: Vec<Outcome>,
        ready: &[StageName],
        observed: &[Observation],
    ) {
        let count = ops.len() as u64;
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(count, Ordering::Relaxed);
        c.batch_max.fetch_max(count, Ordering::Relaxed);
        for outcome in &outcomes {
            match outcome.error() {
                None => {}
                Some(Error::Rejected(_)) => drop(c.refused.fetch_add(1, Ordering::Relaxed)),
                Some(Error::Unavailable(_) | Error::StorageFull(_)) => {
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
enum Outcome {
    /// Boxed: an `OpOutcome` is large, and a batch holds one per operation.
    Execute(Box<Result<OpOutcome, Error>>),
    Count(Result<usize, Error>),
    Directory(Result<bool, Error>),
}

impl Outcome {
    fn error(&self) -> Option<&Error> {
        match self {
            Self::Execute(r) => r.as_ref().as_ref().err(),
            Self::Count(r) => r.as_ref().err(),
            Self::Directory(r) => r.as_ref().err(),
        }
    }
}

impl Op {
    /// Runs the operation in the batch's transaction. Takes `&self`: a batch
    /// may run more than once, and the reply slot is used only after COMMIT.
    fn run(&self, b: &mut Batch<'_>) -> Outcome {
        match self {
            Op::Execute(call, _) => {
                let (op, key) = call.as_ref();
                let hint = claim_hint(op);
                Outcome::Execute(Box::new(b.execute(hint, |tx, cx| engine::keyed(tx, key.as_ref(), op, cx))))
            }
            Op::FireDue(limit, _) => {
                Outcome::Count(b.execute(None, |tx, cx| engine::fire_due(tx, *limit, cx)))
            }
            Op::PurgeRequests(limit, _) => {
                let (replica, lease_ms) = (b.replica, b.lease_ms);
                Outcome::Count(b.execute(None, |tx, cx| {
                    // A singleton duty: only the replica holding it purges.
                    let held = tx
                        .query(leader::HOLD, &[&leader::DUTY_PURGE, &replica, &cx.now, &lease_ms])
                        .map_err(Fail::Store)?;
                    tx.writes += 1;
                    if held.is_empty() {
                        return Ok(0);
                    }
                    engine::purge_requests(tx, *limit, cx)
                }))
            }
            Op::Directory(write, _) => Outcome::Directory(b.execute(None, |tx, _| write.run(tx))),
        }
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
    fn answer(self, outcome: Outcome) {
        let mismatch = || Err(Error::Unavailable("internal error: an answer went astray".into()));
        match (self, outcome) {
            (Op::Execute(_, r), Outcome::Execute(v)) => drop(r.send(*v)),
            (Op::FireDue(_, r) | Op::PurgeRequests(_, r), Outcome::Count(v)) => drop(r.send(v)),
            (Op::Directory(_, r), Outcome::Directory(v)) => drop(r.send(v)),
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

/// Why a batch stopped running operations before its end.
enum End {
    /// The connection failed or timed out: nothing of the batch commits.
    Lost(String),
    /// The database's disk is full: nothing of the batch commits.
    Full(String),
    /// Without savepoints, an operation failed after writing (or a statement
    /// failed, aborting the transaction): rerun the batch with savepoints.
    Tainted,
    /// Deadlock or serialization failure: rerun the batch.
    Rerun,
}

/// How one operation ended, short of success.
enum Failure {
    Refused(Rejection),
    /// A guarded save lost (no statement failed).
    Conflict,
    /// A unique key taken concurrently (the statement failed).
    KeyTaken,
    Store(StoreError),
    Panic(String),
}

/// One open write transaction and what its operations produced so far.
struct Batch<'w> {
    rt: &'w Runtime,
    session: &'w mut Session,
    timeout: Duration,
    rules: &'w Rules,
    now: Millis,
    /// Each operation in its own savepoint.
    careful: bool,
    read_ahead: &'w mut ReadAhead,
    scans: &'w mut Scans,
    cursors: Option<(&'w Cursors, usize)>,
    /// Stages with new ready work, from operations that were kept.
    ready: Vec<StageName>,
    /// What the kept operations' changes tell the metrics.
    observed: Vec<Observation>,
    /// The kept operations' stage counter deltas, summed.
    gauges: GaugeDeltas,
    end: Option<End>,
    replica: &'w str,
    lease_ms: Millis,
    counters: &'w Counters,
}

type EngineResult<T> = Result<T, Fail<StoreError>>;

impl Batch<'_> {
    /// Runs one operation; on refusal or failure, undoes what it wrote.
    fn execute<T>(
        &mut self,
        hint: Option<ClaimHint>,
        mut op: impl FnMut(&mut PgTx<'_>, &mut Ctx<'_>) -> EngineResult<T>,
    ) -> Result<T, Error> {
        if self.careful {
            self.exec("SAVEPOINT op")?;
        }
        let mut conflicts = 0;
        let failure = loop {
            let mut effects = Effects::default();
            let mut tx = PgTx {
                rt: self.rt,
                session: &mut *self.session,
                timeout: self.timeout,
                writes: 0,
                prefetched: HashMap::new(),
                payloads: HashMap::new(),
                defer: !self.careful,
                read_ahead: &mut *self.read_ahead,
                scans: &mut *self.scans,
                cursors: self.cursors,
                claim_hint: hint.clone(),
                ready_ahead: HashMap::new(),
                ready_ahead_limit: 0,
            };
            let outcome = {
                let mut cx = Ctx { rules: self.rules, now: self.now, effects: &mut effects };
                // A panic is a bug in one operation: undo that operation and
                // keep serving the others, rather than lose the writer thread.
                panic::catch_unwind(AssertUnwindSafe(|| op(&mut tx, &mut cx)))
            };
            let writes = tx.writes;
            let failure = match outcome {
                Ok(Ok(value)) => {
                    if self.careful {
                        self.exec("RELEASE SAVEPOINT op")?;
                    }
                    for stage in effects.ready {
                        if !self.ready.contains(&stage) {
                            self.ready.push(stage);
                        }
                    }
                    self.observed.extend(effects.observed);
                    self.gauges.merge(&effects.gauges);
                    return Ok(value);
                }
                Ok(Err(Fail::Rejected(r))) => Failure::Refused(r),
                Ok(Err(Fail::Conflict)) => Failure::Conflict,
                Ok(Err(Fail::Store(e))) => match e.class() {
                    _ if is_disk_full(&e) => {
                        self.end = Some(End::Full(e.to_string()));
                        return Err(not_committed());
                    }
                    Class::Lost => {
                        self.end = Some(End::Lost(e.to_string()));
                        return Err(not_committed());
                    }
                    Class::RerunBatch => {
                        self.end = Some(End::Rerun);
                        return Err(not_committed());
                    }
                    Class::Conflict => Failure::KeyTaken,
                    Class::Other => Failure::Store(e),
                },
                Err(payload) => Failure::Panic(panic_text(payload.as_ref())),
            };
            // A failed statement aborts the transaction, written or not.
            let aborted = matches!(failure, Failure::KeyTaken | Failure::Store(_) | Failure::Panic(_));
            if writes > 0 || aborted {
                if !self.careful {
                    self.end = Some(End::Tainted);
                    return Err(not_committed());
                }
                // ROLLBACK TO keeps the savepoint open, for a retry.
                self.exec("ROLLBACK TO SAVEPOINT op")?;
            }
            match failure {
                Failure::Conflict | Failure::KeyTaken if conflicts < CONFLICT_RETRIES_MAX => {
                    conflicts += 1;
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("another replica changed a row under the operation; running it again");
                }
                other => break other,
            }
        };
        if self.careful {
            self.exec("RELEASE SAVEPOINT op")?;
        }
        Err(match failure {
            Failure::Refused(r) => Error::Rejected(r),
            Failure::Conflict | Failure::KeyTaken => {
                Error::Unavailable("the task kept changing under the operation; retry".into())
            }
            Failure::Store(e) => {
                tracing::error!(error = %e, "a write operation failed; it changed nothing");
                Error::Unavailable(format!("storage error: {e}"))
            }
            Failure::Panic(what) => {
                tracing::error!(panic = %what, "a write operation panicked; it changed nothing");
                Error::Unavailable("internal error; the operation changed nothing".into())
            }
        })
    }

    fn exec(&mut self, sql: &str) -> Result<(), Error> {
        let (client, pending) = self.session.parts();
        block(self.rt, self.timeout, pending.carry(client, client.batch_execute(sql))).map_err(|e| {
            self.end = Some(match e.class() {
                _ if is_disk_full(&e) => End::Full(format!("{sql} failed: {e}")),
                Class::RerunBatch => End::Rerun,
                _ => End::Lost(format!("{sql} failed: {e}")),
            });
            not_committed()
        })
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

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn not_committed() -> Error {
    Error::Unavailable("the write batch could not commit; nothing changed".into())
}
