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
//! running a batch twice is invisible to callers.
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
use baton_core::engine::{self, Ctx, Effects, Fail};
use baton_core::metrics::Observation;
use baton_core::store::ReadyListener;
use baton_core::{
    ActOutcome, ActRequest, CancelRequest, ClaimRequest, Clock, Error, Grant, Millis, NewTask, OpOutcome,
    Rejection, RequestKey, Rules, StageName, Submitted, Task,
};
use rusqlite::Connection;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

/// How often one operation is re-run when a guarded save finds its row
/// changed. With one writer this never happens; the bound keeps a bug from
/// looping for ever.
const CONFLICT_RETRIES_MAX: usize = 3;

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
        let now = self.clock.now();
        let mut careful = false;
        let (outcomes, ready, observed, gauges) = loop {
            if let Err(e) = exec(&self.conn, "BEGIN IMMEDIATE") {
                if is_full(&e) {
                    return self.full(ops, &e.to_string());
                }
                if is_fatal(&e) {
                    return self.die(fatal("begin", &e), ops);
                }
                // Not fatal (another process held the lock past busy_timeout):
                // nothing was written; callers may retry.
                tracing::warn!(error = %e, ops = count, "could not begin a write transaction");
                self.lost(ops, &format!("the SQLite store could not begin a transaction: {e}"));
                return Flow::Continue;
            }
            let mut batch = Batch {
                conn: &self.conn,
                rules: &self.rules,
                workflows: &self.workflows,
                now,
                careful,
                ready: Vec::new(),
                observed: Vec::new(),
                gauges: GaugeDeltas::default(),
                end: None,
            };
            let mut outcomes = Vec::with_capacity(count);
            for op in ops.iter() {
                outcomes.push(op.run(&mut batch));
                if batch.end.is_some() {
                    break;
                }
            }
            match batch.end {
                None => break (outcomes, batch.ready, batch.observed, batch.gauges),
                Some(End::Fatal(error)) => return self.die(error, ops),
                Some(End::Full(why)) => return self.full(ops, &why),
                Some(End::Tainted) => {
                    // An operation wrote, then was refused or failed: take the
                    // whole batch back and rerun it with savepoints.
                    if let Err(e) = exec(&self.conn, "ROLLBACK") {
                        if is_fatal(&e) {
                            return self.die(fatal("rollback", &e), ops);
                        }
                        self.lost(ops, &format!("the SQLite store could not roll back: {e}"));
                        return Flow::Continue;
                    }
                    careful = true;
                    self.counters.reruns.fetch_add(1, Ordering::Relaxed);
                }
                Some(End::Lost(why)) => {
                    // SQLite dropped the transaction (out of memory, say):
                    // nothing of this batch is written or acknowledged.
                    tracing::error!(reason = %why, ops = count, "write transaction lost; batch not committed");
                    if !self.conn.is_autocommit() {
                        let _ = exec(&self.conn, "ROLLBACK");
                    }
                    self.lost(ops, &format!("the SQLite store lost the transaction: {why}"));
                    return Flow::Continue;
                }
            }
        };
        // The kept operations' counter deltas, summed: one write per stage
        // they changed, in the batch's transaction.
        if let Err(e) = crate::tx::apply_gauges(&self.conn, &gauges) {
            if is_full(&e) {
                return self.full(ops, &e.to_string());
            }
            if is_fatal(&e) {
                return self.die(fatal("stage counters", &e), ops);
            }
            if !self.conn.is_autocommit() {
                let _ = exec(&self.conn, "ROLLBACK");
            }
            self.lost(ops, &format!("the SQLite store could not update its stage counters: {e}"));
            return Flow::Continue;
        }
        if let Err(e) = exec(&self.conn, "COMMIT") {
            if is_full(&e) {
                // The commit record never reached the WAL: nothing committed.
                return self.full(ops, &e.to_string());
            }
            // Any other failed COMMIT leaves us not knowing what is on disk:
            // fail-stop.
            return self.die(fatal("commit", &e), ops);
        }
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(count as u64, Ordering::Relaxed);
        c.batch_max.fetch_max(count as u64, Ordering::Relaxed);
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
            if panic::catch_unwind(AssertUnwindSafe(|| listener.ready(&ready))).is_err() {
                tracing::error!("the ready listener panicked; wake-ups for this batch are lost");
            }
        }
        if !observed.is_empty() {
            let listener = &self.listener;
            if panic::catch_unwind(AssertUnwindSafe(|| listener.observed(&observed))).is_err() {
                tracing::error!("the ready listener panicked; metrics for this batch are lost");
            }
        }
        for (op, outcome) in ops.drain(..).zip(outcomes) {
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
enum Outcome {
    Submit(Result<Submitted, Error>),
    Claim(Result<Vec<Grant>, Error>),
    Act(Result<ActOutcome, Error>),
    Cancel(Result<Task, Error>),
    FireDue(Result<usize, Error>),
    Execute(Result<OpOutcome, Error>),
    PurgeRequests(Result<usize, Error>),
    Directory(Result<bool, Error>),
}

impl Outcome {
    fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Submit(r) => r.as_ref().err(),
            Outcome::Claim(r) => r.as_ref().err(),
            Outcome::Act(r) => r.as_ref().err(),
            Outcome::Cancel(r) => r.as_ref().err(),
            Outcome::FireDue(r) => r.as_ref().err(),
            Outcome::Execute(r) => r.as_ref().err(),
            Outcome::PurgeRequests(r) => r.as_ref().err(),
            Outcome::Directory(r) => r.as_ref().err(),
        }
    }
}

impl Op {
    /// Runs the operation in the batch's transaction. Takes `&self`: a batch
    /// may run twice, and the reply slot is used only after the commit.
    fn run(&self, b: &mut Batch<'_>) -> Outcome {
        match self {
            Op::Submit(req, _) => Outcome::Submit(b.execute(|tx, cx| engine::submit(tx, req, cx))),
            Op::Claim(req, _) => {
                Outcome::Claim(b.execute(|tx, cx| engine::claim(tx, req, cx).map(|c| c.grants)))
            }
            Op::Act(req, _) => Outcome::Act(b.execute(|tx, cx| engine::act(tx, req, cx))),
            Op::Cancel(req, _) => Outcome::Cancel(b.execute(|tx, cx| engine::cancel(tx, req, cx))),
            Op::FireDue(limit, _) => Outcome::FireDue(b.execute(|tx, cx| engine::fire_due(tx, *limit, cx))),
            Op::Execute(call, _) => {
                let (op, key) = call.as_ref();
                Outcome::Execute(b.execute(|tx, cx| engine::keyed(tx, key.as_ref(), op, cx)))
            }
            Op::PurgeRequests(limit, _) => {
                Outcome::PurgeRequests(b.execute(|tx, cx| engine::purge_requests(tx, *limit, cx)))
            }
            Op::Directory(write, _) => Outcome::Directory(b.execute(|tx, _| write.run(tx))),
        }
    }

    /// Tells the caller its outcome (the batch committed).
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (Op::Submit(_, r), Outcome::Submit(v)) => r.send(v),
            (Op::Claim(_, r), Outcome::Claim(v)) => r.send(v),
            (Op::Act(_, r), Outcome::Act(v)) => r.send(v),
            (Op::Cancel(_, r), Outcome::Cancel(v)) => r.send(v),
            (Op::FireDue(_, r), Outcome::FireDue(v)) => r.send(v),
            (Op::Execute(_, r), Outcome::Execute(v)) => r.send(v),
            (Op::PurgeRequests(_, r), Outcome::PurgeRequests(v)) => r.send(v),
            (Op::Directory(_, r), Outcome::Directory(v)) => r.send(v),
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

/// Why a batch stopped running operations before its end.
enum End {
    /// An error that stops the process.
    Fatal(FatalError),
    /// SQLite rolled the transaction back under us, or a savepoint failed.
    Lost(String),
    /// Without savepoints, an operation was refused or failed after writing:
    /// rerun the batch with them.
    Tainted,
    /// The disk is full (`SQLITE_FULL`): roll the batch back, answer
    /// `StorageFull`.
    Full(String),
}

/// How one operation ended, short of success.
enum Failure {
    Refused(Rejection),
    Conflict,
    Store(StoreError),
    Panic(String),
}

/// One open write transaction and what its operations produced so far.
struct Batch<'w> {
    conn: &'w Connection,
    rules: &'w Rules,
    workflows: &'w WorkflowCache,
    now: Millis,
    /// Each operation in its own savepoint.
    careful: bool,
    /// Stages with new ready work, from operations that were kept.
    ready: Vec<StageName>,
    /// What the kept operations' changes tell the metrics.
    observed: Vec<Observation>,
    /// The kept operations' stage counter deltas, summed.
    gauges: GaugeDeltas,
    end: Option<End>,
}

type EngineResult<T> = Result<T, Fail<StoreError>>;

impl Batch<'_> {
    /// Runs one operation; on refusal or failure, undoes what it wrote.
    fn execute<T>(
        &mut self,
        mut op: impl FnMut(&mut WriteTx<'_>, &mut Ctx<'_>) -> EngineResult<T>,
    ) -> Result<T, Error> {
        if self.careful {
            self.exec("SAVEPOINT op")?;
        }
        let mut conflicts = 0;
        let failure = loop {
            let mut effects = Effects::default();
            let mut tx = WriteTx::new(self.conn, self.workflows);
            let outcome = {
                let mut cx = Ctx { rules: self.rules, now: self.now, effects: &mut effects };
                // A panic is a bug in one operation: undo that operation and
                // keep serving the others, rather than lose the writer thread.
                panic::catch_unwind(AssertUnwindSafe(|| op(&mut tx, &mut cx)))
            };
            let failure = match outcome {
                Ok(Ok(value)) => {
                    if self.careful {
                        self.exec("RELEASE op")?;
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
                Ok(Err(Fail::Store(e))) => {
                    if let Some(sql) = e.sqlite()
                        && is_full(sql)
                    {
                        self.end = Some(End::Full(sql.to_string()));
                        return Err(not_committed());
                    }
                    if let Some(sql) = e.sqlite()
                        && is_fatal(sql)
                    {
                        self.end = Some(End::Fatal(fatal("operation", sql)));
                        return Err(not_committed());
                    }
                    if self.conn.is_autocommit() {
                        self.end = Some(End::Lost(e.to_string()));
                        return Err(not_committed());
                    }
                    Failure::Store(e)
                }
                Err(payload) => Failure::Panic(panic_text(payload.as_ref())),
            };
            if tx.writes > 0 {
                if !self.careful {
                    self.end = Some(End::Tainted);
                    return Err(not_committed());
                }
                // ROLLBACK TO keeps the savepoint open, for a retry.
                self.exec("ROLLBACK TO op")?;
            }
            match failure {
                Failure::Conflict if conflicts < CONFLICT_RETRIES_MAX => {
                    conflicts += 1;
                    tracing::warn!("revision conflict inside the single writer; retrying the operation");
                }
                other => break other,
            }
        };
        if self.careful {
            self.exec("RELEASE op")?;
        }
        Err(match failure {
            Failure::Refused(r) => Error::Rejected(r),
            Failure::Conflict => {
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
        exec(self.conn, sql).map_err(|e| {
            self.end = Some(if is_full(&e) {
                End::Full(e.to_string())
            } else if is_fatal(&e) {
                End::Fatal(fatal("savepoint", &e))
            } else {
                End::Lost(e.to_string())
            });
            not_committed()
        })
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
