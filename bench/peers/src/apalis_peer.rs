//! apalis 1.0 with apalis-sqlite 1.0 on a SQLite file.
//!
//! apalis-sqlite's `setup()` sets `synchronous = OFF` on the connection it
//! runs on, so this adapter does not call it: it runs apalis-sqlite's
//! migrations itself on a pool whose every connection is opened in WAL
//! mode with `synchronous=FULL` (and a 30 s busy timeout).
//!
//! One queue (apalis `Config::queue`) and one apalis worker per stage, with
//! `concurrency` = the stage's share of the K agents and a fetch batch of
//! the same size (one shared queue when K < 3). An empty fetch parks an
//! apalis worker until its next heartbeat (30 s), so each stage's storage
//! polls every `POLL_INTERVAL` (`poll_with_interval`) instead.
//!
//! A handler's handoff: one `BEGIN IMMEDIATE` transaction that pushes the
//! task into the next stage's queue (`queries::push_tasks`) with a history
//! record; apalis then acknowledges (completes) the handler's own task in a
//! separate write after the handler returns, so ack-and-forward is not
//! atomic and the step time does not include the ack. The N tasks are
//! preloaded into stage a with `push_tasks` (untimed).

use crate::run::{self, Args, Output, Run, STAGES};
use anyhow::{Context as _, Result};
use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sqlx's default pool size.
const POOL_MAX: u32 = 10;
/// How long a SQLite writer waits for the lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle stage's storage looks for new tasks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the workers may take to stop after the run.
const STOP_WAIT_MAX: Duration = Duration::from_secs(20);

/// What this adapter does per handoff, for the report.
pub const COMPLETION: &str = "handler pushes next + history record in one transaction; apalis acks the task \
     in a separate write after the handler returns (not atomic)";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hop {
    task: u64,
    /// The stage the task is for (what a worker of a shared queue works).
    stage: usize,
    payload: String,
}

/// What the handlers share.
struct Ctx {
    run: Arc<Run>,
    pool: SqlitePool,
    shared_queue: bool,
}

fn queue(shared: bool, stage: usize) -> String {
    if shared { "hb3".to_owned() } else { format!("hb3_{}", STAGES[stage]) }
}

const HISTORY_DDL: &str = "CREATE TABLE hb_history(task INTEGER NOT NULL, stage INTEGER NOT NULL, \
     at_us INTEGER NOT NULL, PRIMARY KEY(task, stage))";
const HISTORY_INSERT: &str = "INSERT INTO hb_history(task, stage, at_us) VALUES (?1, ?2, ?3)";

fn task_of(hop: &Hop) -> Result<apalis_sqlite::SqliteTask> {
    Ok(TaskBuilder::new(serde_json::to_vec(hop)?).build())
}

async fn handle(hop: Hop, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let r = handoff(hop, &ctx).await;
    if let Err(e) = &r {
        ctx.run.fail(format!("{e:#}"));
    }
    Ok(r?)
}

async fn handoff(hop: Hop, ctx: &Ctx) -> Result<()> {
    let (task, stage) = (hop.task, hop.stage);
    ctx.run.received(task, stage);
    let last = stage + 1 == STAGES.len();
    let t0 = Instant::now();
    let mut tx = ctx.pool.begin_with("BEGIN IMMEDIATE").await?;
    if !last {
        ctx.run.sending(task, stage + 1, t0);
        let next = task_of(&Hop { stage: stage + 1, ..hop })?;
        apalis_sqlite::queries::push_tasks(&mut *tx, &queue(ctx.shared_queue, stage + 1), &[next]).await?;
    }
    sqlx::query(HISTORY_INSERT)
        .bind(i64::try_from(task)?)
        .bind(i64::try_from(stage)?)
        .bind(run::unix_us())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    ctx.run.stepped(t0.elapsed());
    if last {
        ctx.run.finished_one();
    }
    Ok(())
}

/// apalis on a SQLite file in `args.dir`.
pub async fn run(args: &Args) -> Result<Output> {
    let options = SqliteConnectOptions::new()
        .filename(args.dir.join("apalis.sqlite3"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new().max_connections(POOL_MAX).connect_with(options).await?;
    let out = burn_down(args, &pool).await;
    pool.close().await;
    out
}

async fn burn_down(args: &Args, pool: &SqlitePool) -> Result<Output> {
    SqliteStorage::<()>::migrations().run(pool).await.context("apalis-sqlite migrations")?;
    sqlx::query(HISTORY_DDL).execute(pool).await?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await?;
    anyhow::ensure!(sync == 2, "SQLite synchronous is {sync}, not FULL (2)");
    let shared = args.shared_queue();
    let payload = args.payload();
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..args.tasks as u64).collect();
    for chunk in ids.chunks(run::PRELOAD_CHUNK) {
        let tasks = chunk
            .iter()
            .map(|&task| task_of(&Hop { task, stage: 0, payload: payload.clone() }))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        apalis_sqlite::queries::push_tasks(&mut *tx, &queue(shared, 0), &tasks).await?;
        tx.commit().await?;
    }
    let preload = t0.elapsed();
    let run = Run::new(args.tasks)?;
    let ctx = Arc::new(Ctx { run: Arc::clone(&run), pool: pool.clone(), shared_queue: shared });
    run::handshake(args).await?;
    let start = Instant::now();
    let mut workers = Vec::new();
    for (stage, n) in args.agents_per_stage().into_iter().enumerate() {
        if shared && stage > 0 {
            break;
        }
        let storage = SqliteStorage::<Hop>::new(pool)
            .with_config(Config::default().queue(queue(shared, stage)).batch_size(n))
            .poll_with_interval(POLL_INTERVAL);
        let worker = WorkerBuilder::new(format!("hb3-{}", STAGES[stage]))
            .backend(storage)
            .data(Arc::clone(&ctx))
            .concurrency(n)
            .build(handle);
        let run = Arc::clone(&run);
        workers.push(tokio::spawn(async move {
            let over = async move {
                let mut rx = run.subscribe_over();
                let _ = rx.wait_for(|o| *o).await;
                Ok::<(), std::io::Error>(())
            };
            worker.run_until(over).await
        }));
    }
    let end = run.wait_over(args.time_limit).await;
    run::done(args)?;
    for w in workers {
        tokio::time::timeout(STOP_WAIT_MAX, w).await.context("apalis did not stop in time")???;
    }
    let mut out = Output::new(args, &run, start, end?, preload);
    out.durability = format!("SQLite WAL, synchronous=FULL on every connection, pool of {POOL_MAX}");
    out.completion = COMPLETION.to_owned();
    Ok(out)
}
