//! The batch kernel: how every store runs a batch of queued operations in one
//! transaction and answers their callers. A store implements `Backend` (its
//! transaction's begin, savepoints, rollback and commit, and how its errors
//! read) and calls `run`, which:
//!
//! - runs each operation through the engine (`Backend::run`), catching a
//!   panic as a failure of that operation alone;
//! - first without savepoints, unless the store's are free
//!   (`Backend::SAVEPOINTS_FIRST`): most refusals come before an operation
//!   writes, and a savepoint costs a copy of every page it touches (SQLite).
//!   When an operation is refused or fails after it wrote, the attempt ends
//!   (`Halt::Tainted`), is rolled back, and the batch runs again with each
//!   operation in its own savepoint, rolled back to on refusal;
//! - reruns an operation whose guarded save found its row changed
//!   (`Fail::Conflict`) or whose unique key another transaction took
//!   (`Class::Conflict`), at most `Backend::CONFLICT_RETRIES_MAX` times;
//! - reruns the whole batch after a deadlock or serialization failure
//!   (`Halt::Rerun`, at most `BATCH_RERUNS_MAX` times), with savepoints;
//! - commits, and only then returns each operation's answer. Nothing is
//!   answered before COMMIT, so running a batch twice is invisible to callers.
//!
//! Everything else ends the batch with a `Halt` the store acts on: a lost
//! transaction or connection (`Lost`: nothing acknowledged), a full disk
//! (`Full`), a stale connection at BEGIN (`Stale`: reconnect, once), or an
//! error after which the process must stop (`Fatal`). A store decides which
//! of its errors is which (`Backend::classify`); the kernel decides what each
//! means for the batch, the same for every store.

use crate::engine::{Ctx, Effects, Fail, Rules, Tx};
use crate::gauge::GaugeDeltas;
use crate::ids::{Millis, StageName};
use crate::metrics::Observation;
use crate::rejection::Rejection;
use crate::store::Error;
use std::panic::{self, AssertUnwindSafe};

/// How often a batch reruns after a deadlock or serialization failure
/// before its callers hear `Unavailable`.
pub const BATCH_RERUNS_MAX: usize = 5;

/// Why an attempt at a batch stopped before its commit.
#[derive(Debug)]
pub enum Halt<F> {
    /// Without savepoints, an operation was refused or failed after it
    /// wrote (or a deferred write failed): roll back, rerun with savepoints.
    Tainted,
    /// A deadlock or serialization failure: roll back, rerun the batch.
    Rerun,
    /// The transaction or connection is gone: nothing of the batch
    /// committed; its callers hear `Unavailable`.
    Lost(String),
    /// The disk is full: nothing of the batch committed; its callers hear
    /// `StorageFull`.
    Full(String),
    /// The connection failed at BEGIN, before anything ran: the store may
    /// reconnect and run the batch again.
    Stale(String),
    /// An error after which nothing can be trusted: acknowledge nothing and
    /// stop the process.
    Fatal(F),
}

/// What a store error inside an operation means (`Backend::classify`).
#[derive(Debug)]
pub enum Class<F> {
    /// The batch cannot go on (`Halt`).
    Halt(Halt<F>),
    /// Another transaction took a unique key the operation wanted: its
    /// statement failed, and the operation reruns (its reads then see the
    /// other commit).
    Conflict,
    /// The operation failed: it changes nothing and its caller hears
    /// `Unavailable`; the rest of the batch goes on.
    Failed,
}

/// One step of an operation's savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Savepoint {
    Open,
    Release,
    /// Undo what the operation wrote; the savepoint stays open.
    RollbackTo,
}

/// Something the kernel tells the store for its log and counters.
#[derive(Debug)]
pub enum Report<'a> {
    /// An operation met a conflict and runs again.
    Conflict,
    /// An operation failed with a store error; it changed nothing.
    Failed(&'a str),
    /// An operation panicked (a bug); it changed nothing.
    Panicked(&'a str),
    /// The batch runs again with savepoints (after `Halt::Tainted`).
    Careful,
    /// The batch runs again after a deadlock (`Halt::Rerun`).
    Retry,
}

/// A store's transaction, as the kernel drives it.
pub trait Backend {
    /// What the store's transaction fails with.
    type Error: std::fmt::Display;
    /// One operation's view of the open transaction.
    type Tx<'t>: Tx<Error = Self::Error>
    where
        Self: 't;
    /// A queued operation.
    type Op;
    /// What an operation produces when it goes through.
    type Value;
    /// What a fatal error carries to the store.
    type Fatal;

    /// How often one operation reruns after a conflict.
    const CONFLICT_RETRIES_MAX: usize;
    /// Whether a failed statement aborts the transaction (PostgreSQL), so
    /// an operation that failed is rolled back to its savepoint even if it
    /// wrote nothing.
    const FAILURE_ABORTS: bool;
    /// Whether savepoints cost nothing, so the batch runs with them from the
    /// start (the memory store).
    const SAVEPOINTS_FIRST: bool = false;

    /// Opens the transaction of one attempt at `ops`; returns the batch's
    /// `now`. `careful`: each operation will run in its own savepoint.
    fn begin(&mut self, ops: &[Self::Op], careful: bool) -> Result<Millis, Halt<Self::Fatal>>;
    /// The transaction as operation `op` sees it.
    fn tx(&mut self, op: &Self::Op, careful: bool) -> Self::Tx<'_>;
    /// Whether the operation wrote anything through `tx` (so a refusal has
    /// something to undo).
    fn wrote(tx: &Self::Tx<'_>) -> bool;
    /// Runs `op` through the engine.
    fn run(op: &Self::Op, tx: &mut Self::Tx<'_>, cx: &mut Ctx<'_>) -> Result<Self::Value, Fail<Self::Error>>;
    /// What a store error means for the batch.
    fn classify(&mut self, error: &Self::Error) -> Class<Self::Fatal>;
    fn savepoint(&mut self, step: Savepoint) -> Result<(), Halt<Self::Fatal>>;
    /// Rolls the attempt back (before a rerun).
    fn rollback(&mut self) -> Result<(), Halt<Self::Fatal>>;
    /// Writes the kept operations' summed counter deltas and commits.
    /// `Halt::Tainted` or `Halt::Rerun` when a deferred write failed (the
    /// transaction is then over: `rollback` must still succeed).
    fn commit(
        &mut self,
        ops: &[Self::Op],
        gauges: &GaugeDeltas,
        careful: bool,
    ) -> Result<(), Halt<Self::Fatal>>;
    /// Hears what the kernel reports; the default ignores it.
    fn report(&mut self, _report: Report<'_>) {}
}

/// A committed batch: each operation's answer, in order, and what the kept
/// operations did for the store's listener.
#[derive(Debug)]
pub struct Committed<V> {
    pub outcomes: Vec<Result<V, Error>>,
    /// Stages with new ready work.
    pub ready: Vec<StageName>,
    /// What the committed changes tell the metrics, in commit order.
    pub observed: Vec<Observation>,
}

/// Runs `ops` in one transaction of `backend`, commits, and returns every
/// answer; or the `Halt` that stopped it, when nothing committed. `Tainted`
/// and `Rerun` never come back: the kernel reruns the batch (a `Rerun` past
/// `BATCH_RERUNS_MAX` comes back `Lost`).
pub fn run<B: Backend>(
    backend: &mut B,
    ops: &[B::Op],
    rules: &Rules,
) -> Result<Committed<B::Value>, Halt<B::Fatal>> {
    let mut careful = B::SAVEPOINTS_FIRST;
    let mut retries = 0;
    loop {
        let now = backend.begin(ops, careful)?;
        let mut kept = Kept::default();
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(execute(backend, op, rules, now, careful, &mut kept));
            if kept.end.is_some() {
                break;
            }
        }
        let end = match kept.end.take() {
            Some(end) => Some(end),
            None => backend.commit(ops, &kept.gauges, careful).err(),
        };
        match end {
            None => {
                return Ok(Committed { outcomes, ready: kept.ready, observed: kept.observed });
            }
            Some(Halt::Tainted) => {
                backend.rollback()?;
                careful = true;
                backend.report(Report::Careful);
            }
            Some(Halt::Rerun) => {
                backend.rollback()?;
                retries += 1;
                backend.report(Report::Retry);
                if retries > BATCH_RERUNS_MAX {
                    return Err(Halt::Lost(
                        "the write batch kept deadlocking with other transactions; retry".into(),
                    ));
                }
                careful = true;
            }
            Some(other) => return Err(other),
        }
    }
}

/// What the operations kept so far did, and why the attempt stopped early.
struct Kept<F> {
    ready: Vec<StageName>,
    observed: Vec<Observation>,
    gauges: GaugeDeltas,
    end: Option<Halt<F>>,
}

impl<F> Default for Kept<F> {
    fn default() -> Self {
        Self { ready: Vec::new(), observed: Vec::new(), gauges: GaugeDeltas::default(), end: None }
    }
}

impl<F> Kept<F> {
    fn keep(&mut self, effects: Effects) {
        for stage in effects.ready {
            if !self.ready.contains(&stage) {
                self.ready.push(stage);
            }
        }
        self.observed.extend(effects.observed);
        self.gauges.merge(&effects.gauges);
    }

    /// Ends the attempt: the operation's answer is moot.
    fn halt(&mut self, halt: Halt<F>) -> Error {
        self.end = Some(halt);
        not_committed()
    }
}

/// How one operation ended, short of success.
enum Failure {
    Refused(Rejection),
    /// A guarded save lost (no statement failed).
    Conflict,
    /// A unique key taken concurrently (the statement failed).
    KeyTaken,
    Store(String),
    Panic(String),
}

/// Runs one operation; on refusal or failure, undoes what it wrote.
fn execute<B: Backend>(
    backend: &mut B,
    op: &B::Op,
    rules: &Rules,
    now: Millis,
    careful: bool,
    kept: &mut Kept<B::Fatal>,
) -> Result<B::Value, Error> {
    if careful && let Err(halt) = backend.savepoint(Savepoint::Open) {
        return Err(kept.halt(halt));
    }
    let mut conflicts = 0;
    let failure = loop {
        let mut effects = Effects::default();
        let (outcome, wrote) = {
            let mut tx = backend.tx(op, careful);
            let mut cx = Ctx { rules, now, effects: &mut effects };
            // A panic is a bug in one operation: undo that operation and
            // keep serving the others, rather than lose the writer.
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| B::run(op, &mut tx, &mut cx)));
            (outcome, B::wrote(&tx))
        };
        let failure = match outcome {
            Ok(Ok(value)) => {
                if careful && let Err(halt) = backend.savepoint(Savepoint::Release) {
                    return Err(kept.halt(halt));
                }
                kept.keep(effects);
                return Ok(value);
            }
            Ok(Err(Fail::Rejected(r))) => Failure::Refused(r),
            Ok(Err(Fail::Conflict)) => Failure::Conflict,
            Ok(Err(Fail::Store(e))) => match backend.classify(&e) {
                Class::Halt(halt) => return Err(kept.halt(halt)),
                Class::Conflict => Failure::KeyTaken,
                Class::Failed => Failure::Store(e.to_string()),
            },
            Err(payload) => Failure::Panic(panic_text(payload.as_ref())),
        };
        let aborted =
            B::FAILURE_ABORTS && matches!(failure, Failure::KeyTaken | Failure::Store(_) | Failure::Panic(_));
        if wrote || aborted {
            if !careful {
                return Err(kept.halt(Halt::Tainted));
            }
            if let Err(halt) = backend.savepoint(Savepoint::RollbackTo) {
                return Err(kept.halt(halt));
            }
        }
        match failure {
            Failure::Conflict | Failure::KeyTaken if conflicts < B::CONFLICT_RETRIES_MAX => {
                conflicts += 1;
                backend.report(Report::Conflict);
            }
            other => break other,
        }
    };
    if careful && let Err(halt) = backend.savepoint(Savepoint::Release) {
        return Err(kept.halt(halt));
    }
    Err(match failure {
        Failure::Refused(r) => Error::Rejected(r),
        Failure::Conflict | Failure::KeyTaken => {
            Error::Unavailable("the task kept changing under the operation; retry".into())
        }
        Failure::Store(e) => {
            backend.report(Report::Failed(&e));
            Error::Unavailable(format!("storage error: {e}"))
        }
        Failure::Panic(what) => {
            backend.report(Report::Panicked(&what));
            Error::Unavailable("internal error; the operation changed nothing".into())
        }
    })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The answer of an operation whose batch did not commit.
pub fn not_committed() -> Error {
    Error::Unavailable("the write batch could not commit; nothing changed".into())
}
