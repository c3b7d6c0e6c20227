//! The two same-run baselines (docs/glossary.md), written directly
//! against rusqlite with no store abstraction and no history chain, so they
//! show what this machine and SQLite can do for the same durable work:
//!
//! * raw single commit: one thread; every handoff is one transaction (a
//!   revision-guarded UPDATE plus one event INSERT) committed with WAL and
//!   `synchronous=FULL`, so one fsync per handoff. No claims: it is the floor
//!   a one-agent Baton is compared with.
//! * ideal batching writer: K agent threads send claim and complete requests
//!   over a channel to one writer thread, which runs everything pending (up
//!   to 256 requests) in one transaction and answers after COMMIT. Claims are
//!   durable too. It is the ceiling for group commit without any of Baton's
//!   per-operation work (state machine, JSON task rows, hash-chained events).
//!
//! Both keep the payload in its own table, written once at submit, as Baton
//! does: a handoff then rewrites only the small task row, its ready-index
//! entry and one event row, the least durable work a handoff can be.

use super::pipeline::{Board, STAGES, assign};
use super::{Measured, RunParams, histogram, record};
use crate::sys::Probe;
use anyhow::{Context as _, Result, ensure};
use rusqlite::{Connection, OptionalExtension as _, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

/// The ideal writer thread's name (15 bytes at most, the kernel's limit).
const IDEAL_WRITER_THREAD: &str = "ideal-writer";

/// Requests the ideal writer puts in one transaction at most.
const IDEAL_BATCH_MAX: usize = 256;

const STATE_WAITING: i64 = 0;
const STATE_HELD: i64 = 1;
const STATE_DONE: i64 = 2;
/// Stage number of finished tasks (past the last stage).
const STAGE_DONE: i64 = STAGES.len() as i64;

const KIND_SUBMITTED: i64 = 0;
const KIND_CLAIMED: i64 = 1;
const KIND_HANDED_OFF: i64 = 2;
const KIND_COMPLETED: i64 = 3;

const SCHEMA: &str = "
    CREATE TABLE tasks(
        id INTEGER PRIMARY KEY,
        stage INTEGER NOT NULL,
        state INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        holder INTEGER
    );
    CREATE INDEX tasks_ready ON tasks(stage, id) WHERE state = 0;
    CREATE TABLE payloads(task_id INTEGER PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE events(
        task_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        at INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        agent INTEGER,
        from_stage INTEGER,
        to_stage INTEGER NOT NULL,
        PRIMARY KEY(task_id, version)
    ) WITHOUT ROWID;
";

const INSERT_EVENT: &str =
    "INSERT INTO events(task_id, version, kind, at, epoch, agent, from_stage, to_stage)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// For claims from any stage (agents working every stage, when K < 3) in id
/// order; made only then, so other runs do not pay for its upkeep.
const ANY_STAGE_INDEX: &str = "CREATE INDEX tasks_ready_any ON tasks(id) WHERE state = 0;";

/// Opens a fresh database with the durability Baton promises: WAL and
/// `synchronous=FULL` (an fsync of the WAL at every commit), set explicitly.
fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "SQLite refused WAL mode (got {mode})");
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    ensure!(sync == 2, "synchronous is {sync}, not FULL (2)");
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Loads `tasks` waiting tasks into the first stage with their creation
/// events, in one transaction: the preload is not measured.
fn preload(conn: &mut Connection, tasks: usize, payload: &str) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let mut task = tx.prepare(
            "INSERT INTO tasks(id, stage, state, revision, epoch, holder) VALUES (?1, 0, 0, 1, 0, NULL)",
        )?;
        let mut body = tx.prepare("INSERT INTO payloads(task_id, body) VALUES (?1, ?2)")?;
        let mut event = tx.prepare(INSERT_EVENT)?;
        let at = now_ms();
        for id in 1..=tasks as i64 {
            task.execute(params![id])?;
            body.execute(params![id, payload])?;
            event.execute(params![id, 1, KIND_SUBMITTED, at, 0, None::<i64>, None::<i64>, 0])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Raw single commit: each of the 3 handoffs of every task is its own
/// durable transaction. Step latency is one transaction, BEGIN to COMMIT.
pub fn run_raw(p: &RunParams, probe: &Probe) -> Result<Measured> {
    let mut conn = open(&p.dir.join("raw.db"))?;
    let started = Instant::now();
    preload(&mut conn, p.tasks, &p.payload)?;
    let preload_seconds = started.elapsed().as_secs_f64();

    let mut begin = conn.prepare("BEGIN IMMEDIATE")?;
    let mut commit = conn.prepare("COMMIT")?;
    let mut update = conn.prepare(
        "UPDATE tasks SET stage = ?2, state = ?3, revision = revision + 1 WHERE id = ?1 AND revision = ?4",
    )?;
    let mut event = conn.prepare(INSERT_EVENT)?;
    let mut step = histogram();
    let mut transactions = 0u64;
    // The calling thread is the writer here; the process CPU says it all.
    let mark = probe.start(None)?;
    for id in 1..=p.tasks as i64 {
        for stage in 0..STAGE_DONE {
            let t0 = Instant::now();
            let next = stage + 1;
            let (state, kind) = if next == STAGE_DONE {
                (STATE_DONE, KIND_COMPLETED)
            } else {
                (STATE_WAITING, KIND_HANDED_OFF)
            };
            let revision = stage + 1;
            begin.execute([])?;
            let changed = update.execute(params![id, next, state, revision])?;
            ensure!(changed == 1, "raw baseline: task {id} moved under us");
            event.execute(params![id, revision + 1, kind, now_ms(), 0, None::<i64>, stage, next])?;
            commit.execute([])?;
            transactions += 1;
            record(&mut step, t0.elapsed());
        }
    }
    let end = Instant::now();
    let usage = probe.stop(&mark, end)?;
    Ok(Measured {
        handoffs: p.tasks as u64 * STAGES.len() as u64,
        usage,
        step,
        transactions: Some(transactions),
        preload_seconds,
    })
}

/// A claimed task as the ideal writer reports it.
#[derive(Debug, Clone, Copy)]
struct Held {
    id: i64,
    revision: i64,
    epoch: i64,
    stage: i64,
}

enum Op {
    /// Lease the oldest waiting task of one stage (or of any stage when `None`).
    Claim { stage: Option<i64> },
    /// Move a held task to the next stage (or to done), fenced by revision and epoch.
    Complete(Held),
}

struct Request {
    agent: usize,
    op: Op,
}

enum Reply {
    Claimed(Option<Held>),
    Completed(bool),
}

/// Ideal batching writer: K agent threads and one writer thread doing group
/// commit. Step latency is a complete round trip plus the next claim's round
/// trip, the time an agent waits between finishing one task and holding the
/// next: the counterpart of one Baton `act` with claim-next.
pub fn run_ideal(p: &RunParams, probe: &Probe) -> Result<Measured> {
    let mut conn = open(&p.dir.join("ideal.db"))?;
    if assign(p.agents).iter().any(|stages| stages.len() > 1) {
        conn.execute_batch(ANY_STAGE_INDEX)?;
    }
    let started = Instant::now();
    preload(&mut conn, p.tasks, &p.payload)?;
    let preload_seconds = started.elapsed().as_secs_f64();

    let plan = assign(p.agents);
    let (to_writer, requests) = mpsc::channel::<Request>();
    let mut reply_senders = Vec::with_capacity(plan.len());
    let mut reply_receivers = Vec::with_capacity(plan.len());
    for _ in &plan {
        let (tx, rx) = mpsc::sync_channel::<Reply>(1);
        reply_senders.push(tx);
        reply_receivers.push(rx);
    }
    let writer = thread::Builder::new()
        .name(IDEAL_WRITER_THREAD.into())
        .spawn(move || writer_loop(conn, requests, reply_senders))?;

    let board = Arc::new(Board::new(p.tasks));
    let mark = probe.start(Some(IDEAL_WRITER_THREAD))?;
    let agents: Vec<_> = plan
        .into_iter()
        .zip(reply_receivers)
        .enumerate()
        .map(|(agent, (stages, replies))| {
            let board = Arc::clone(&board);
            let to_writer = to_writer.clone();
            thread::Builder::new()
                .name(format!("ideal-agent-{agent}"))
                .spawn(move || ideal_agent(agent, &stages, &board, &to_writer, &replies))
        })
        .collect::<Result<_, _>>()?;
    let mut step = histogram();
    for agent in agents {
        let h = agent.join().expect("ideal agent panicked")?;
        step.add(&h).expect("histograms share bounds");
    }
    let end = board.end().context("the ideal run ended without finishing its tasks")?;
    // `to_writer` is still held, so the writer thread is alive to be read.
    let usage = probe.stop(&mark, end)?;
    drop(to_writer);
    let transactions = writer.join().expect("ideal writer panicked")?;
    Ok(Measured {
        handoffs: p.tasks as u64 * STAGES.len() as u64,
        usage,
        step,
        transactions: Some(transactions),
        preload_seconds,
    })
}

fn ideal_agent(
    agent: usize,
    stages: &[usize],
    board: &Board,
    to_writer: &mpsc::Sender<Request>,
    replies: &mpsc::Receiver<Reply>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let call = |op: Op| -> Result<Reply> {
        to_writer.send(Request { agent, op }).context("ideal writer gone")?;
        replies.recv().context("ideal writer gone")
    };
    let claim_stage = (stages.len() == 1).then(|| stages[0] as i64);
    let mut step = histogram();
    let mut held: Option<Held> = None;
    while !board.is_over() {
        let Some(task) = held.take() else {
            let seen = board.generation(stages);
            match call(Op::Claim { stage: claim_stage })? {
                Reply::Claimed(Some(t)) => held = Some(t),
                Reply::Claimed(None) => board.wait(stages, seen),
                Reply::Completed(_) => unreachable!("a claim is answered with a claim reply"),
            }
            continue;
        };
        let t0 = Instant::now();
        let Reply::Completed(ok) = call(Op::Complete(task))? else { unreachable!("complete reply") };
        ensure!(ok, "ideal writer: a fenced complete of task {} failed", task.id);
        let next = task.stage + 1;
        if next == STAGE_DONE {
            board.finished_one();
        } else {
            board.handed_into(next as usize);
        }
        if board.is_over() {
            break;
        }
        let seen = board.generation(stages);
        let reply = call(Op::Claim { stage: claim_stage })?;
        // Recorded before any idle wait: the step ends when the claim answers.
        record(&mut step, t0.elapsed());
        match reply {
            Reply::Claimed(Some(t)) => held = Some(t),
            Reply::Claimed(None) => board.wait(stages, seen),
            Reply::Completed(_) => unreachable!("a claim is answered with a claim reply"),
        }
    }
    Ok(step)
}

/// Drains the channel into transactions of up to `IDEAL_BATCH_MAX` requests,
/// commits, then answers every request of the batch. Returns the number of
/// transactions.
fn writer_loop(
    mut conn: Connection,
    requests: mpsc::Receiver<Request>,
    replies: Vec<mpsc::SyncSender<Reply>>,
) -> Result<u64> {
    let mut batch: Vec<Request> = Vec::with_capacity(IDEAL_BATCH_MAX);
    let mut answers: Vec<Reply> = Vec::with_capacity(IDEAL_BATCH_MAX);
    let mut transactions = 0u64;
    while let Ok(first) = requests.recv() {
        batch.push(first);
        while batch.len() < IDEAL_BATCH_MAX {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at = now_ms();
        for request in &batch {
            answers.push(execute(&tx, request, at)?);
        }
        tx.commit()?;
        transactions += 1;
        for (request, answer) in batch.drain(..).zip(answers.drain(..)) {
            // An agent that already left (the run is over) no longer listens.
            let _ = replies[request.agent].send(answer);
        }
    }
    Ok(transactions)
}

fn execute(conn: &Connection, request: &Request, at: i64) -> Result<Reply> {
    let agent = request.agent as i64;
    match &request.op {
        Op::Claim { stage } => {
            let row = match stage {
                Some(stage) => conn
                    .prepare_cached(
                        "UPDATE tasks SET state = 1, holder = ?2, epoch = epoch + 1, revision = revision + 1
                         WHERE id = (SELECT id FROM tasks WHERE stage = ?1 AND state = 0 ORDER BY id LIMIT 1)
                         RETURNING id, revision, epoch, stage",
                    )?
                    .query_row(params![stage, agent], held_row)
                    .optional()?,
                None => conn
                    .prepare_cached(
                        "UPDATE tasks SET state = 1, holder = ?1, epoch = epoch + 1, revision = revision + 1
                         WHERE id = (SELECT id FROM tasks WHERE state = 0 ORDER BY id LIMIT 1)
                         RETURNING id, revision, epoch, stage",
                    )?
                    .query_row(params![agent], held_row)
                    .optional()?,
            };
            if let Some(t) = row {
                conn.prepare_cached(INSERT_EVENT)?.execute(params![
                    t.id,
                    t.revision,
                    KIND_CLAIMED,
                    at,
                    t.epoch,
                    agent,
                    t.stage,
                    t.stage
                ])?;
            }
            Ok(Reply::Claimed(row))
        }
        Op::Complete(t) => {
            let next = t.stage + 1;
            let (state, kind) = if next == STAGE_DONE {
                (STATE_DONE, KIND_COMPLETED)
            } else {
                (STATE_WAITING, KIND_HANDED_OFF)
            };
            let changed = conn
                .prepare_cached(
                    "UPDATE tasks SET stage = ?2, state = ?3, holder = NULL, revision = revision + 1
                     WHERE id = ?1 AND revision = ?4 AND epoch = ?5 AND holder = ?6 AND state = ?7",
                )?
                .execute(params![t.id, next, state, t.revision, t.epoch, agent, STATE_HELD])?;
            if changed == 1 {
                conn.prepare_cached(INSERT_EVENT)?.execute(params![
                    t.id,
                    t.revision + 1,
                    kind,
                    at,
                    t.epoch,
                    agent,
                    t.stage,
                    next
                ])?;
            }
            Ok(Reply::Completed(changed == 1))
        }
    }
}

fn held_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    Ok(Held { id: r.get(0)?, revision: r.get(1)?, epoch: r.get(2)?, stage: r.get(3)? })
}
