//! River (`riverqueue` 0.5) on SQLite and on PostgreSQL.
//!
//! One job kind per stage (`hb3_a`, `hb3_b`, `hb3_c`) and one queue per stage
//! whose `max_workers` is the stage's share of the K agents (one shared queue
//! when K < 3), worked by one River client with River's default timings
//! (fetch cooldown 100 ms, fallback poll 1 s, insert notifications on).
//!
//! A stage's worker does its handoff in one transaction of its own, begun
//! with River's `begin_sqlite_write` / `begin_postgres`: insert the next
//! stage's job (`insert(..).tx(..)`), insert a history record, and complete
//! its own job with `WorkContext::job_complete_tx`, then commit. So the
//! completion is synchronous and atomic with the forward; River's batch
//! completer then finds the job already completed. The N tasks are preloaded
//! into stage a with `insert_many` (untimed).
//!
//! SQLite: WAL, `synchronous=FULL` and a 30 s busy timeout on every pooled
//! connection (River leaves pragmas to the caller), sqlx's default pool size.
//! PostgreSQL: a database of the run's own (`pgdb`), a connection per agent.

use crate::pgdb::{self, RunDatabase};
use crate::run::{self, Args, Output, Run, STAGES};
use anyhow::{Context as _, Result};
use riverqueue::database::ClientDatabase;
use riverqueue::migrate::{PostgresMigrator, SqliteMigrator};
use riverqueue::{Client, InsertOpts, Job, JobArgs, QueueConfig, WorkContext, WorkOutcome, Workers};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sqlx's default pool size, which River's SQLite example keeps
/// (`BATON_PEERS_SQLITE_POOL` overrides it).
const SQLITE_POOL_MAX: u32 = 10;
/// How long a SQLite writer waits for the lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long River may take to stop after the run.
const STOP_WAIT_MAX: Duration = Duration::from_secs(20);

/// River's fetch cooldown: the least time between two fetches of a queue,
/// which also paces insert notifications (River's default is 100 ms).
const FETCH_COOLDOWN: Duration = Duration::from_millis(100);
/// A queue's fallback poll when no notification arrives (River's default is 1 s).
const FETCH_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The fetch cooldown and poll interval: River's defaults, or
/// `BATON_PEERS_RIVER_FETCH_COOLDOWN_MS` / `BATON_PEERS_RIVER_POLL_MS`.
pub fn timings() -> Result<(Duration, Duration)> {
    let ms = |var: &str, default: Duration| -> Result<Duration> {
        Ok(match std::env::var(var) {
            Ok(v) => Duration::from_millis(v.parse().with_context(|| format!("{var}={v}"))?),
            Err(_) => default,
        })
    };
    Ok((
        ms("BATON_PEERS_RIVER_FETCH_COOLDOWN_MS", FETCH_COOLDOWN)?,
        ms("BATON_PEERS_RIVER_POLL_MS", FETCH_POLL_INTERVAL)?,
    ))
}

/// Whether stage completions go to River's batch completer (after the
/// worker's transaction, not atomic with it) instead of the worker's own
/// transaction: `BATON_PEERS_RIVER_COMPLETION=batch`.
pub fn batch_completer() -> bool {
    std::env::var("BATON_PEERS_RIVER_COMPLETION").is_ok_and(|v| v == "batch")
}

/// What this adapter does per handoff with the batch completer.
const COMPLETION_BATCH: &str = "next stage's insert and a history record in the worker's transaction; the \
     job's completion left to River's batch completer afterwards (not atomic)";

fn completion() -> &'static str {
    if batch_completer() { COMPLETION_BATCH } else { COMPLETION }
}

/// What this adapter does per handoff, for the report.
const COMPLETION: &str = "synchronous completion in the worker's transaction (job_complete_tx) with the \
     next stage's insert and a history record; River's batch completer then has nothing to write";

/// A stage's job: the task and its payload.
trait Hop: JobArgs + Clone + Send + Sync + 'static {
    const STAGE: usize;
    fn new(task: u64, payload: String) -> Self;
    fn task(&self) -> u64;
    fn into_payload(self) -> String;
}

macro_rules! hop {
    ($name:ident, $kind:literal, $stage:expr) => {
        #[derive(Clone, Debug, Serialize, Deserialize, JobArgs)]
        #[river(kind = $kind)]
        struct $name {
            task: u64,
            payload: String,
        }
        impl Hop for $name {
            const STAGE: usize = $stage;
            fn new(task: u64, payload: String) -> Self {
                Self { task, payload }
            }
            fn task(&self) -> u64 {
                self.task
            }
            fn into_payload(self) -> String {
                self.payload
            }
        }
    };
}
hop!(HopA, "hb3_a", 0);
hop!(HopB, "hb3_b", 1);
hop!(HopC, "hb3_c", 2);

fn queue(args: &Args, stage: usize) -> String {
    if args.shared_queue() { "hb3".to_owned() } else { format!("hb3_{}", STAGES[stage]) }
}

/// The stage-`A::STAGE` worker: the handoff to `N` (or the end, at the last
/// stage) in one transaction.
async fn hop<A: Hop, N: Hop>(
    run: Arc<Run>,
    next_queue: Arc<String>,
    wc: WorkContext,
    job: Job<A>,
) -> Result<WorkOutcome> {
    let stage = A::STAGE;
    let task = job.args.task();
    run.received(task, stage);
    let last = stage + 1 == STAGES.len();
    let t0 = Instant::now();
    let client = wc.client().context("a job worked outside a client")?;
    let next = (!last).then(|| {
        run.sending(task, stage + 1, t0);
        client
            .insert(N::new(task, job.args.into_payload()))
            .opts(InsertOpts::default().with_queue(next_queue.as_str()))
    });
    let (task_i, stage_i) = (i64::try_from(task)?, i32::try_from(stage)?);
    match client.database() {
        ClientDatabase::Sqlite(db) => {
            let mut tx = riverqueue::database::begin_sqlite_write(db.pool()).await?;
            if let Some(insert) = next {
                insert.tx(&mut tx).await?;
            }
            sqlx::query(SQLITE_HISTORY_INSERT)
                .bind(task_i)
                .bind(stage_i)
                .bind(run::unix_us())
                .execute(&mut *tx)
                .await?;
            if !batch_completer() {
                wc.job_complete_tx(&mut tx).await?;
            }
            tx.commit().await?;
        }
        ClientDatabase::Postgres(db) => {
            let mut tx = riverqueue::database::begin_postgres(db.pool()).await?;
            if let Some(insert) = next {
                insert.tx(&mut tx).await?;
            }
            sqlx::query(pgdb::HISTORY_INSERT)
                .bind(task_i)
                .bind(stage_i)
                .bind(run::unix_us())
                .execute(&mut *tx)
                .await?;
            if !batch_completer() {
                wc.job_complete_tx(&mut tx).await?;
            }
            tx.commit().await?;
        }
        _ => anyhow::bail!("a database this adapter does not know"),
    }
    run.stepped(t0.elapsed());
    if last {
        run.finished_one();
    }
    Ok(WorkOutcome::Complete)
}

fn register<A: Hop, N: Hop>(workers: &mut Workers, run: &Arc<Run>, next_queue: String) -> Result<()> {
    let (run, next_queue) = (Arc::clone(run), Arc::new(next_queue));
    workers.add_fn(move |wc: WorkContext, job: Job<A>| {
        let (run, next_queue) = (Arc::clone(&run), Arc::clone(&next_queue));
        async move {
            let r = hop::<A, N>(Arc::clone(&run), next_queue, wc, job).await;
            if let Err(e) = &r {
                run.fail(format!("{e:#}"));
            }
            r
        }
    })?;
    Ok(())
}

/// The client with its workers and queues (not started).
fn client(args: &Args, run: &Arc<Run>, database: impl riverqueue::database::IntoDatabase) -> Result<Client> {
    let mut workers = Workers::new();
    register::<HopA, HopB>(&mut workers, run, queue(args, 1))?;
    register::<HopB, HopC>(&mut workers, run, queue(args, 2))?;
    register::<HopC, HopA>(&mut workers, run, queue(args, 0))?;
    let (cooldown, poll) = timings()?;
    let mut builder = Client::builder(database).workers(workers).fetch_cooldown(cooldown);
    let config = |n: usize| QueueConfig::new(n).with_fetch_poll_interval(poll);
    if args.shared_queue() {
        builder = builder.queue(queue(args, 0), config(args.agents));
    } else {
        for (s, n) in args.agents_per_stage().into_iter().enumerate() {
            builder = builder.queue(queue(args, s), config(n));
        }
    }
    Ok(builder.build()?)
}

/// Preloads, waits for `go`, burns down, stops the client.
async fn burn_down(args: &Args, run: &Arc<Run>, client: &Client) -> Result<Output> {
    let payload = args.payload();
    let t0 = Instant::now();
    let opts = InsertOpts::default().with_queue(queue(args, 0));
    let ids: Vec<u64> = (0..args.tasks as u64).collect();
    for chunk in ids.chunks(run::PRELOAD_CHUNK) {
        client.insert_many(chunk.iter().map(|&t| (HopA::new(t, payload.clone()), opts.clone()))).await?;
    }
    let preload = t0.elapsed();
    run::handshake(args).await?;
    let start = Instant::now();
    let mut handle = client.start()?;
    let end = run.wait_over(args.time_limit).await;
    run::done(args)?;
    let stopped = tokio::time::timeout(STOP_WAIT_MAX, handle.stop_and_cancel()).await;
    let end = end?;
    stopped.context("River did not stop in time")??;
    Ok(Output::new(args, run, start, end, preload))
}

const SQLITE_HISTORY_DDL: &str = "CREATE TABLE hb_history(task INTEGER NOT NULL, stage INTEGER NOT NULL, \
     at_us INTEGER NOT NULL, PRIMARY KEY(task, stage))";
const SQLITE_HISTORY_INSERT: &str = "INSERT INTO hb_history(task, stage, at_us) VALUES (?1, ?2, ?3)";

/// River on a SQLite file in `args.dir`.
pub async fn run_sqlite(args: &Args) -> Result<Output> {
    let options = SqliteConnectOptions::new()
        .filename(args.dir.join("river.sqlite3"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let pool_max =
        std::env::var("BATON_PEERS_SQLITE_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(SQLITE_POOL_MAX);
    let pool = SqlitePoolOptions::new().max_connections(pool_max).connect_with(options).await?;
    SqliteMigrator::new(pool.clone()).migrate_up().await?;
    sqlx::query(SQLITE_HISTORY_DDL).execute(&pool).await?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&pool).await?;
    anyhow::ensure!(sync == 2, "SQLite synchronous is {sync}, not FULL (2)");
    let run = Run::new(args.tasks)?;
    let client = client(args, &run, pool.clone())?;
    let out = burn_down(args, &run, &client).await;
    pool.close().await;
    let mut out = out?;
    out.durability = format!("SQLite WAL, synchronous=FULL on every connection, pool of {pool_max}");
    out.completion = completion().to_owned();
    Ok(out)
}

/// River on a PostgreSQL database of the run's own.
pub async fn run_pg(args: &Args) -> Result<Output> {
    let db = RunDatabase::create(args.database_url()?, "river").await?;
    let result = async {
        let pool = db.pool(u32::try_from(args.agents)?.saturating_add(8)).await?;
        PostgresMigrator::new(pool.clone()).migrate_up().await?;
        sqlx::query(pgdb::HISTORY_DDL).execute(&pool).await?;
        let durability = pgdb::durability(&pool).await?;
        let run = Run::new(args.tasks)?;
        let client = client(args, &run, pool.clone())?;
        let out = burn_down(args, &run, &client).await;
        let size = pgdb::size(&pool).await.ok();
        pool.close().await;
        let mut out = out?;
        out.disk_bytes = size;
        out.durability = durability;
        out.completion = completion().to_owned();
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    db.drop_after(result).await
}
