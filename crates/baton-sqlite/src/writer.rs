//! The writer thread and group commit. One thread owns the only write
//! connection and drains a channel of operations: it blocks for the first,
//! takes whatever else is queued (up to `limits.commit_batch_max`), runs them
//! in one `BEGIN IMMEDIATE` transaction, commits once (one fsync for the whole
//! batch), and only then answers every caller.
//!
//! A refused operation changes nothing while its neighbours commit. Most
//! refusals come before an operation writes anything, so a batch first runs
//! without savepoints (they cost a copy of every page an operation touches).
//! If an operation is refused or fails after it wrote, the writer rolls the
//! batch back and runs it again with each operation in its own savepoint,
//! rolling back to it on refusal. Nothing is answered before the commit, so
//! running a batch twice is invisible to callers. Those rules are the batch
//! kernel's (`baton_core::batch`), shared with every store; this module is
//! its SQLite backend (`Batch`: BEGIN IMMEDIATE, savepoints, COMMIT, and
//! which SQLite failures mean what) and the writer thread around it.
//!
//! A failure that makes the batch untrustworthy (an I/O error, corruption,
//! or a COMMIT that failed for any reason but a full disk) acknowledges
//! nothing and calls the fatal hook, which stops the process: SQLite keeps
//! accepting commits after an fsync error, and we must not. A full disk
//! (`SQLITE_FULL`, at a statement or at COMMIT) is not fatal: nothing of the
//! batch reached a commit record, so the writer rolls it back, answers every
//! caller `StorageFull` (HTTP 507), and carries on; reads keep serving and
//! writes succeed again once space is freed, without a restart.
//!
//! A keyed request (`Execute` with a `RequestKey`) saves its record in its
//! operation's transaction. Operations run one after another in queue order,
//! so a repeat queued behind the first finds the first's record already
//! written (in the same batch or a committed one): a repeat is never seen
//! while the first is half done, and `request_in_progress` cannot arise.

use crate::directory::DirectoryWrite;
use crate::error::{FatalError, StoreError, is_fatal, is_full};
use crate::oneshot;
use crate::options::FatalHook;
use crate::tx::{WorkflowCache, WriteTx};
use baton_core::GaugeDeltas;
use baton_core::batch::{self, Backend, Class, Halt, Report, Savepoint};
use baton_core::engine::{self, Ctx, Fail};
use baton_core::store::ReadyListener;
use baton_core::{
    ActOutcome, ActRequest, CancelRequest, ClaimRequest, Clock, Error, Grant, Millis, NewTask, OpOutcome,
    RequestKey, Rules, Submitted, Task,
};
use rusqlite::Connection;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

/// Where a caller waits for its answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// One write operation queued for the writer, with where to answer it.
pub(crate) enum Op {
    Submit(NewTask, Reply<Submitted>),
    Claim(ClaimRequest, Reply<Vec<Grant>>),
    Act(ActRequest, Reply<ActOutcome>),
    Cancel(CancelRequest, Reply<Task>),
    FireDue(usize, Reply<usize>),
    /// `Store::execute`: any operation, keyed or not (boxed: it is large).
    Execute(Box<(baton_core::Op, Option<RequestKey>)>, Reply<OpOutcome>),
    PurgeRequests(usize, Reply<usize>),
    /// A principal or token write (`crate::directory`).
    Directory(DirectoryWrite, Reply<bool>),
}

/// Counts kept by the writer, read by `SqliteStore::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub refused: AtomicU64,
    pub unavailable: AtomicU64,
    pub batch_max: AtomicU64,
    pub reruns: AtomicU64,
    /// Set when the writer stopped after a fatal error.
    pub stopped: AtomicBool,
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub conn: Connection,
    pub rx: Receiver<Op>,
    pub clock: Arc<dyn Clock>,
    pub rules: Rules,
    pub listener: Arc<dyn ReadyListener>,
    pub on_fatal: FatalHook,
    pub counters: Arc<Counters>,
    pub workflows: WorkflowCache,
}

enum Flow {
    Continue,
    Stop,
}

impl Writer {
    /// The thread's body. Returns when every sender is gone and the queue is
    /// drained (the store closed), or after a fatal error.
    pub(crate) fn run(mut self) {
        let max = self.rules.limits.commit_batch_max.max(1);
        let mut ops = Vec::with_capacity(max);
        while let Ok(first) = self.rx.recv() {
            ops.push(first);
            while ops.len() < max {
                match self.rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if let Flow::Stop = self.commit_batch(&mut ops) {
                return;
            }
        }
        // Closed cleanly: fold the WAL into the main file, so the next open
        // has nothing to replay.
        let checkpoint = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "checkpoint at close failed; the next open replays the WAL");
        }
    }

    /// Runs, commits and answers one batch; `ops` is empty afterwards.
    fn commit_batch(&mut self, ops: &mut Vec<Op>) -> Flow {
        let count = ops.len();
        // One `now` per batch: every operation in it happens at the same instant.
        let mut batch = Batch {
            conn: &self.conn,
            workflows: &self.workflows,
            now: self.clock.now(),
            counters: &self.counters,
        };
        let committed = match batch::run(&mut batch, ops, &self.rules) {
            Ok(committed) => committed,
            Err(Halt::Fatal(error)) => return self.die(error, ops),
            Err(Halt::Full(why)) => return self.full(ops, &why),
            Err(Halt::Lost(why) | Halt::Stale(why)) => {
                // SQLite dropped the transaction (out of memory, say), or
                // another process held the lock past busy_timeout: nothing of
                // this batch is written or acknowledged; callers may retry.
                tracing::error!(reason = %why, ops = count, "write batch not committed");
                if !self.conn.is_autocommit() {
                    let _ = exec(&self.conn, "ROLLBACK");
                }
                self.lost(ops, &why);
                return Flow::Continue;
            }
            Err(Halt::Tainted | Halt::Rerun) => unreachable!("the kernel reruns the batch itself"),
        };
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(count as u64, Ordering::Relaxed);
        c.batch_max.fetch_max(count as u64, Ordering::Relaxed);
        for outcome in &committed.outcomes {
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
        let (ready, observed) = (&committed.ready, &committed.observed);
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
        for (op, outcome) in ops.drain(..).zip(committed.outcomes) {
            op.answer(outcome);
        }
        Flow::Continue
    }

    /// Answers a batch that did not commit, and was not fatal, `Unavailable`.
    fn lost(&self, ops: &mut Vec<Op>, why: &str) {
        self.counters.unavailable.fetch_add(ops.len() as u64, Ordering::Relaxed);
        for op in ops.drain(..) {
            op.abandon(why);
        }
    }

    /// Rolls back a batch the full disk stopped and answers every caller
    /// `StorageFull`; the writer carries on with the next batch. A rollback
    /// that fails is fatal: the connection's state is then unknown.
    fn full(&mut self, ops: &mut Vec<Op>, why: &str) -> Flow {
        tracing::error!(error = %why, ops = ops.len(), "disk full: batch rolled back, nothing acknowledged");
        if !self.conn.is_autocommit()
            && let Err(e) = exec(&self.conn, "ROLLBACK")
        {
            return self.die(fatal("rollback", &e), ops);
        }
        self.counters.unavailable.fetch_add(ops.len() as u64, Ordering::Relaxed);
        for op in ops.drain(..) {
            op.answer_full(why);
        }
        Flow::Continue
    }

    /// Acknowledges nothing, reports, and stops the writer (in production the
    /// hook stops the process before this returns).
    fn die(&mut self, mut error: FatalError, ops: &mut Vec<Op>) -> Flow {
        error.unacknowledged = ops.len();
        tracing::error!(error = %error, "fatal storage error: stopping without acknowledging the batch");
        if !self.conn.is_autocommit() {
            let _ = exec(&self.conn, "ROLLBACK");
        }
        self.counters.stopped.store(true, Ordering::Release);
        (self.on_fatal)(&error);
        // Only a test's hook returns. The writer stops for good: later calls
        // find the channel closed and get `Unavailable`.
        for op in ops.drain(..) {
            op.abandon("the SQLite store stopped after a fatal storage error");
        }
        Flow::Stop
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn fatal(during: &'static str, e: &rusqlite::Error) -> FatalError {
    FatalError { during, code: e.sqlite_extended_error_code(), message: e.to_string(), unacknowledged: 0 }
}

/// What one operation produced, held until the batch commits.
pub(crate) enum Value {
    Submit(Submitted),
    Claim(Vec<Grant>),
    Act(ActOutcome),
    Cancel(Task),
    Count(usize),
    Execute(OpOutcome),
    Directory(bool),
}

impl Op {
    /// Runs the operation in the batch's transaction. Takes `&self`: a batch
    /// may run twice, and the reply slot is used only after the commit.
    fn run(&self, tx: &mut WriteTx<'_>, cx: &mut Ctx<'_>) -> Result<Value, Fail<StoreError>> {
        Ok(match self {
            Op::Submit(req, _) => Value::Submit(engine::submit(tx, req, cx)?),
            Op::Claim(req, _) => Value::Claim(engine::claim(tx, req, cx)?.grants),
            Op::Act(req, _) => Value::Act(engine::act(tx, req, cx)?),
            Op::Cancel(req, _) => Value::Cancel(engine::cancel(tx, req, cx)?),
            Op::FireDue(limit, _) => Value::Count(engine::fire_due(tx, *limit, cx)?),
            Op::Execute(call, _) => {
                let (op, key) = call.as_ref();
                Value::Execute(engine::keyed(tx, key.as_ref(), op, cx)?)
            }
            Op::PurgeRequests(limit, _) => Value::Count(engine::purge_requests(tx, *limit, cx)?),
            Op::Directory(write, _) => Value::Directory(write.run(tx)?),
        })
    }

    /// Tells the caller its outcome (the batch committed).
    fn answer(self, outcome: Result<Value, Error>) {
        let outcome = match outcome {
            Ok(value) => value,
            Err(e) => return self.fail_with(|| e.clone()),
        };
        match (self, outcome) {
            (Op::Submit(_, r), Value::Submit(v)) => r.send(Ok(v)),
            (Op::Claim(_, r), Value::Claim(v)) => r.send(Ok(v)),
            (Op::Act(_, r), Value::Act(v)) => r.send(Ok(v)),
            (Op::Cancel(_, r), Value::Cancel(v)) => r.send(Ok(v)),
            (Op::FireDue(_, r) | Op::PurgeRequests(_, r), Value::Count(v)) => r.send(Ok(v)),
            (Op::Execute(_, r), Value::Execute(v)) => r.send(Ok(v)),
            (Op::Directory(_, r), Value::Directory(v)) => r.send(Ok(v)),
            (op, _) => unreachable!("each outcome comes from its own operation ({})", op.name()),
        }
    }

    /// Tells the caller nothing happened for sure (the batch did not commit,
    /// or the operation never reached the writer).
    pub(crate) fn abandon(self, why: &str) {
        self.fail_with(|| Error::Unavailable(why.to_owned()));
    }

    /// Answers `StorageFull`: the disk filled up before this committed.
    fn answer_full(self, why: &str) {
        self.fail_with(|| Error::StorageFull(why.to_owned()));
    }

    fn fail_with(self, e: impl Fn() -> Error) {
        match self {
            Op::Submit(_, r) => r.send(Err(e())),
            Op::Claim(_, r) => r.send(Err(e())),
            Op::Act(_, r) => r.send(Err(e())),
            Op::Cancel(_, r) => r.send(Err(e())),
            Op::FireDue(_, r) => r.send(Err(e())),
            Op::Execute(_, r) => r.send(Err(e())),
            Op::PurgeRequests(_, r) => r.send(Err(e())),
            Op::Directory(_, r) => r.send(Err(e())),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Submit(..) => "submit",
            Op::Claim(..) => "claim",
            Op::Act(..) => "act",
            Op::Cancel(..) => "cancel",
            Op::FireDue(..) => "fire_due",
            Op::Execute(..) => "execute",
            Op::PurgeRequests(..) => "purge_requests",
            Op::Directory(..) => "directory",
        }
    }
}

/// The writer's open transaction, as the batch kernel drives it.
struct Batch<'w> {
    conn: &'w Connection,
    workflows: &'w WorkflowCache,
    /// The batch's instant, the same in a rerun.
    now: Millis,
    counters: &'w Counters,
}

/// What a failed statement means for the batch: a full disk, an error that
/// stops the process, or (`lost` says how) a transaction lost.
fn halt(e: &rusqlite::Error, during: &'static str, lost: &str) -> Halt<FatalError> {
    if is_full(e) {
        Halt::Full(e.to_string())
    } else if is_fatal(e) {
        Halt::Fatal(fatal(during, e))
    } else {
        Halt::Lost(format!("{lost}: {e}"))
    }
}

impl Backend for Batch<'_> {
    type Error = StoreError;
    type Tx<'t>
        = WriteTx<'t>
    where
        Self: 't;
    type Op = Op;
    type Value = Value;
    type Fatal = FatalError;

    /// With one writer a conflict never happens; the bound keeps a bug from
    /// looping for ever.
    const CONFLICT_RETRIES_MAX: usize = 3;
    const FAILURE_ABORTS: bool = false;

    fn begin(&mut self, _ops: &[Op], _careful: bool) -> Result<Millis, Halt<FatalError>> {
        // Not full or fatal: another process held the lock past
        // busy_timeout, and nothing was written.
        exec(self.conn, "BEGIN IMMEDIATE")
            .map_err(|e| halt(&e, "begin", "the SQLite store could not begin a transaction"))?;
        Ok(self.now)
    }

    fn tx(&mut self, _op: &Op, _careful: bool) -> WriteTx<'_> {
        WriteTx::new(self.conn, self.workflows)
    }

    fn wrote(tx: &WriteTx<'_>) -> bool {
        tx.writes > 0
    }

    fn run(op: &Op, tx: &mut WriteTx<'_>, cx: &mut Ctx<'_>) -> Result<Value, Fail<StoreError>> {
        op.run(tx, cx)
    }

    fn classify(&mut self, error: &StoreError) -> Class<FatalError> {
        if let Some(sql) = error.sqlite() {
            if is_full(sql) {
                return Class::Halt(Halt::Full(sql.to_string()));
            }
            if is_fatal(sql) {
                return Class::Halt(Halt::Fatal(fatal("operation", sql)));
            }
        }
        if self.conn.is_autocommit() {
            // SQLite rolled the transaction back under us.
            return Class::Halt(Halt::Lost(format!("the SQLite store lost the transaction: {error}")));
        }
        Class::Failed
    }

    fn savepoint(&mut self, step: Savepoint) -> Result<(), Halt<FatalError>> {
        let sql = match step {
            Savepoint::Open => "SAVEPOINT op",
            Savepoint::Release => "RELEASE op",
            Savepoint::RollbackTo => "ROLLBACK TO op",
        };
        exec(self.conn, sql).map_err(|e| halt(&e, "savepoint", "the SQLite store lost the transaction"))
    }

    fn rollback(&mut self) -> Result<(), Halt<FatalError>> {
        exec(self.conn, "ROLLBACK").map_err(|e| {
            if is_fatal(&e) {
                Halt::Fatal(fatal("rollback", &e))
            } else {
                Halt::Lost(format!("the SQLite store could not roll back: {e}"))
            }
        })
    }

    fn commit(&mut self, _ops: &[Op], gauges: &GaugeDeltas, _careful: bool) -> Result<(), Halt<FatalError>> {
        // The kept operations' counter deltas, summed: one write per stage
        // they changed, in the batch's transaction.
        crate::tx::apply_gauges(self.conn, gauges).map_err(|e| {
            halt(&e, "stage counters", "the SQLite store could not update its stage counters")
        })?;
        exec(self.conn, "COMMIT").map_err(|e| {
            if is_full(&e) {
                // The commit record never reached the WAL: nothing committed.
                Halt::Full(e.to_string())
            } else {
                // Any other failed COMMIT leaves us not knowing what is on
                // disk: fail-stop.
                Halt::Fatal(fatal("commit", &e))
            }
        })
    }

    fn report(&mut self, report: Report<'_>) {
        match report {
            Report::Conflict => {
                tracing::warn!("revision conflict inside the single writer; retrying the operation");
            }
            Report::Failed(e) => tracing::error!(error = %e, "a write operation failed; it changed nothing"),
            Report::Panicked(what) => {
                tracing::error!(panic = %what, "a write operation panicked; it changed nothing");
            }
            Report::Careful | Report::Retry => drop(self.counters.reruns.fetch_add(1, Ordering::Relaxed)),
        }
    }
}
