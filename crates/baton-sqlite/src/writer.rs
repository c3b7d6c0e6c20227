//! The writer thread and group commit. One thread owns the only write
//! connection and drains a channel of operations: it blocks for the first,
//! takes whatever else is queued (up to `limits.commit_batch_max`), runs them
//! in one `BEGIN IMMEDIATE` transaction, each inside its own savepoint, commits
//! once (one fsync for the whole batch), and only then answers every caller.
//!
//! A refused operation rolls back to its savepoint, so it changes nothing
//! while its neighbours commit. A failure that makes the batch untrustworthy
//! (an I/O error, a full disk, corruption, or any failed COMMIT) acknowledges
//! nothing and calls the fatal hook, which stops the process: SQLite keeps
//! accepting commits after an fsync error, and we must not.

use crate::error::{FatalError, StoreError, is_fatal};
use crate::oneshot;
use crate::options::FatalHook;
use crate::tx::WriteTx;
use baton_core::engine::{self, Ctx, Effects, Fail};
use baton_core::store::ReadyListener;
use baton_core::{
    ActOutcome, ActRequest, CancelRequest, ClaimRequest, Clock, Error, Grant, Millis, NewTask, Rules,
    StageName, Submitted, Task,
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
}

/// Counts kept by the writer, read by `SqliteStore::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub refused: AtomicU64,
    pub unavailable: AtomicU64,
    pub batch_max: AtomicU64,
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

    fn commit_batch(&mut self, ops: &mut Vec<Op>) -> Flow {
        let count = ops.len();
        // One `now` per batch: every operation in it happens at the same instant.
        let now = self.clock.now();
        if let Err(e) = exec(&self.conn, "BEGIN IMMEDIATE") {
            let answers = ops.drain(..).map(Op::unanswered).collect();
            if is_fatal(&e) {
                return self.die(fatal("begin", &e), answers);
            }
            // Not fatal (another process held the lock past busy_timeout):
            // nothing was written; callers may retry.
            tracing::warn!(error = %e, ops = count, "could not begin a write transaction");
            self.counters.unavailable.fetch_add(count as u64, Ordering::Relaxed);
            abandon(answers, &format!("the SQLite store could not begin a transaction: {e}"));
            return Flow::Continue;
        }
        let mut batch = Batch {
            conn: &self.conn,
            rules: &self.rules,
            now,
            ready: Vec::new(),
            broken: None,
            refused: 0,
            unavailable: 0,
        };
        let answers: Vec<Box<dyn Answer>> = ops.drain(..).map(|op| op.run(&mut batch)).collect();
        let Batch { ready, broken, refused, unavailable, .. } = batch;
        match broken {
            Some(Broken::Fatal(f)) => return self.die(f, answers),
            Some(Broken::Lost(why)) => {
                // SQLite dropped the transaction (out of memory, say): nothing
                // of this batch is written, so nothing may be acknowledged.
                tracing::error!(reason = %why, ops = count, "write transaction lost; batch not committed");
                if !self.conn.is_autocommit() {
                    let _ = exec(&self.conn, "ROLLBACK");
                }
                self.counters.unavailable.fetch_add(count as u64, Ordering::Relaxed);
                abandon(answers, &format!("the SQLite store lost the transaction: {why}"));
                return Flow::Continue;
            }
            None => {}
        }
        if let Err(e) = exec(&self.conn, "COMMIT") {
            // Whatever the code, a failed COMMIT leaves us not knowing what is
            // on disk: fail-stop.
            return self.die(fatal("commit", &e), answers);
        }
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(count as u64, Ordering::Relaxed);
        c.refused.fetch_add(refused, Ordering::Relaxed);
        c.unavailable.fetch_add(unavailable, Ordering::Relaxed);
        c.batch_max.fetch_max(count as u64, Ordering::Relaxed);
        // Wake-ups before answers: a caller that sees its answer may rely on
        // the listener having heard about the work it created.
        if !ready.is_empty() {
            let listener = &self.listener;
            if panic::catch_unwind(AssertUnwindSafe(|| listener.ready(&ready))).is_err() {
                tracing::error!("the ready listener panicked; wake-ups for this batch are lost");
            }
        }
        for answer in answers {
            answer.deliver();
        }
        Flow::Continue
    }

    /// Acknowledges nothing, reports, and stops the writer (in production the
    /// hook stops the process before this returns).
    fn die(&mut self, mut error: FatalError, answers: Vec<Box<dyn Answer>>) -> Flow {
        error.unacknowledged = answers.len();
        tracing::error!(error = %error, "fatal storage error: stopping without acknowledging the batch");
        if !self.conn.is_autocommit() {
            let _ = exec(&self.conn, "ROLLBACK");
        }
        self.counters.stopped.store(true, Ordering::Release);
        (self.on_fatal)(&error);
        // Only a test's hook returns. The writer stops for good: later calls
        // find the channel closed and get `Unavailable`.
        abandon(answers, "the SQLite store stopped after a fatal storage error");
        Flow::Stop
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn fatal(during: &'static str, e: &rusqlite::Error) -> FatalError {
    FatalError { during, code: e.sqlite_extended_error_code(), message: e.to_string(), unacknowledged: 0 }
}

fn abandon(answers: Vec<Box<dyn Answer>>, why: &str) {
    for answer in answers {
        answer.abandon(why);
    }
}

impl Op {
    fn run(self, b: &mut Batch<'_>) -> Box<dyn Answer> {
        match self {
            Op::Submit(req, reply) => b.run(reply, |tx, cx| engine::submit(tx, &req, cx)),
            Op::Claim(req, reply) => b.run(reply, |tx, cx| engine::claim(tx, &req, cx)),
            Op::Act(req, reply) => b.run(reply, |tx, cx| engine::act(tx, &req, cx)),
            Op::Cancel(req, reply) => b.run(reply, |tx, cx| engine::cancel(tx, &req, cx)),
            Op::FireDue(limit, reply) => b.run(reply, |tx, cx| engine::fire_due(tx, limit, cx)),
        }
    }

    /// The operation's answer slot, for a batch that never ran it.
    fn unanswered(self) -> Box<dyn Answer> {
        fn slot<T: Send + 'static>(reply: Reply<T>) -> Box<dyn Answer> {
            Box::new(Answered { reply, result: Err(Error::Unavailable(String::new())) })
        }
        match self {
            Op::Submit(_, r) => slot(r),
            Op::Claim(_, r) => slot(r),
            Op::Act(_, r) => slot(r),
            Op::Cancel(_, r) => slot(r),
            Op::FireDue(_, r) => slot(r),
        }
    }
}

/// An operation's outcome, held until the batch commits.
trait Answer: Send {
    /// The batch committed: tell the caller its outcome.
    fn deliver(self: Box<Self>);
    /// The batch did not commit: tell the caller nothing happened for sure.
    fn abandon(self: Box<Self>, why: &str);
}

struct Answered<T> {
    reply: Reply<T>,
    result: Result<T, Error>,
}

impl<T: Send> Answer for Answered<T> {
    fn deliver(self: Box<Self>) {
        self.reply.send(self.result);
    }
    fn abandon(self: Box<Self>, why: &str) {
        self.reply.send(Err(Error::Unavailable(why.to_owned())));
    }
}

/// Why the rest of a batch cannot commit.
enum Broken {
    /// An error that stops the process.
    Fatal(FatalError),
    /// SQLite rolled the transaction back under us, or a savepoint failed.
    Lost(String),
}

/// One open write transaction and what its operations produced so far.
struct Batch<'w> {
    conn: &'w Connection,
    rules: &'w Rules,
    now: Millis,
    /// Stages with new ready work, from operations that were kept.
    ready: Vec<StageName>,
    broken: Option<Broken>,
    refused: u64,
    unavailable: u64,
}

type EngineResult<T> = Result<T, Fail<StoreError>>;

impl Batch<'_> {
    fn run<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        mut op: impl FnMut(&mut WriteTx<'_>, &mut Ctx<'_>) -> EngineResult<T>,
    ) -> Box<dyn Answer> {
        let result = self.execute(&mut op);
        match &result {
            Ok(_) => {}
            Err(Error::Rejected(_)) => self.refused += 1,
            Err(Error::Unavailable(_)) => self.unavailable += 1,
        }
        Box::new(Answered { reply, result })
    }

    /// Runs one operation inside its own savepoint.
    fn execute<T>(
        &mut self,
        op: &mut impl FnMut(&mut WriteTx<'_>, &mut Ctx<'_>) -> EngineResult<T>,
    ) -> Result<T, Error> {
        if self.broken.is_some() {
            return Err(not_committed());
        }
        self.exec("SAVEPOINT op")?;
        for _ in 0..CONFLICT_RETRIES_MAX {
            let mut effects = Effects::default();
            let outcome = {
                let mut cx = Ctx { rules: self.rules, now: self.now, effects: &mut effects };
                let mut tx = WriteTx { conn: self.conn };
                // A panic is a bug in one operation: undo that operation and
                // keep serving the others, rather than lose the writer thread.
                panic::catch_unwind(AssertUnwindSafe(|| op(&mut tx, &mut cx)))
            };
            match outcome {
                Ok(Ok(value)) => {
                    self.exec("RELEASE op")?;
                    for stage in effects.ready {
                        if !self.ready.contains(&stage) {
                            self.ready.push(stage);
                        }
                    }
                    return Ok(value);
                }
                Ok(Err(Fail::Rejected(r))) => {
                    self.undo()?;
                    return Err(Error::Rejected(r));
                }
                Ok(Err(Fail::Conflict)) => {
                    // ROLLBACK TO keeps the savepoint open for the retry.
                    self.exec("ROLLBACK TO op")?;
                    tracing::warn!("revision conflict inside the single writer; retrying the operation");
                }
                Ok(Err(Fail::Store(e))) => return Err(self.failed(e)),
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "a write operation panicked; it was rolled back");
                    self.undo()?;
                    return Err(Error::Unavailable("internal error; the operation changed nothing".into()));
                }
            }
        }
        self.undo()?;
        Err(Error::Unavailable("the task kept changing under the operation; retry".into()))
    }

    /// Classifies a storage error inside one operation.
    fn failed(&mut self, e: StoreError) -> Error {
        if let Some(sql) = e.sqlite()
            && is_fatal(sql)
        {
            self.broken = Some(Broken::Fatal(fatal("operation", sql)));
            return not_committed();
        }
        if self.conn.is_autocommit() {
            self.broken = Some(Broken::Lost(e.to_string()));
            return not_committed();
        }
        tracing::error!(error = %e, "a write operation failed; it was rolled back");
        match self.undo() {
            Ok(()) => Error::Unavailable(format!("storage error: {e}")),
            Err(lost) => lost,
        }
    }

    /// Undoes everything the current operation wrote and closes its savepoint.
    fn undo(&mut self) -> Result<(), Error> {
        self.exec("ROLLBACK TO op")?;
        self.exec("RELEASE op")
    }

    fn exec(&mut self, sql: &str) -> Result<(), Error> {
        exec(self.conn, sql).map_err(|e| {
            self.broken = Some(if is_fatal(&e) {
                Broken::Fatal(fatal("savepoint", &e))
            } else {
                Broken::Lost(e.to_string())
            });
            not_committed()
        })
    }
}

fn not_committed() -> Error {
    Error::Unavailable("the write batch could not commit; nothing changed".into())
}
