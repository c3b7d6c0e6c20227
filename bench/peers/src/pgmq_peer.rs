//! pgmq (the `pgmq` crate, SQL-only install) on PostgreSQL.
//!
//! The SQL is installed from the crate's embedded scripts into a database
//! of the run's own (`pgdb`; pgmq keeps its tables in schema `pgmq`). One
//! queue per stage (one shared queue when K < 3). Each agent has its own
//! loop: `read` one message with a visibility timeout of `run::LEASE` (the
//! lease; pgmq commits the read, so a claim is durable too), long-polling
//! server-side (`read_with_poll`, `POLL_INTERVAL`) when the queue is empty;
//! then in one transaction `send` the task to the next stage's queue, insert
//! a history record and `archive` its own message, and commit. Archive keeps
//! the message in the queue's archive table, as River keeps completed jobs.
//! The N tasks are preloaded into stage a with `send_batch` (untimed).

use crate::pgdb::{self, RunDatabase};
use crate::run::{self, Args, Output, Run, STAGES};
use anyhow::{Context as _, Result};
use pgmq::PGMQueueExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often pgmq's server-side long poll looks at an empty queue (the
/// crate's default is 250 ms; a tighter one favours latency).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long one long poll lasts before the agent checks whether the run is over.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// What this adapter does per handoff, for the report.
pub const COMPLETION: &str = "read with a 30 s visibility timeout (the lease), then send next + history record \
     + archive in one transaction";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hop {
    task: u64,
    /// The stage the message is for (what an agent of a shared queue works).
    stage: usize,
    payload: String,
}

fn queue(args: &Args, stage: usize) -> String {
    if args.shared_queue() { "hb3".to_owned() } else { format!("hb3_{}", STAGES[stage]) }
}

/// pgmq on a PostgreSQL database of the run's own.
pub async fn run(args: &Args) -> Result<Output> {
    let db = RunDatabase::create(args.database_url()?, "pgmq").await?;
    let result = async {
        let pool = db.pool(u32::try_from(args.agents)?.saturating_add(2)).await?;
        let out = burn_down(args, &pool).await;
        let size = pgdb::size(&pool).await.ok();
        pool.close().await;
        let mut out = out?;
        out.disk_bytes = size;
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    db.drop_after(result).await
}

async fn burn_down(args: &Args, pool: &PgPool) -> Result<Output> {
    let q = PGMQueueExt::new_with_pool(pool.clone()).await;
    q.install_sql_from_embedded().await.context("install pgmq's SQL")?;
    for s in 0..STAGES.len() {
        q.create(&queue(args, s)).await?;
    }
    sqlx::query(pgdb::HISTORY_DDL).execute(pool).await?;
    let durability = pgdb::durability(pool).await?;
    let payload = args.payload();
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..args.tasks as u64).collect();
    for chunk in ids.chunks(run::PRELOAD_CHUNK) {
        let hops: Vec<Hop> =
            chunk.iter().map(|&task| Hop { task, stage: 0, payload: payload.clone() }).collect();
        q.send_batch(&queue(args, 0), &hops).await?;
    }
    let preload = t0.elapsed();
    let run = Run::new(args.tasks)?;
    run::handshake(args).await?;
    let start = Instant::now();
    let mut agents = Vec::new();
    for (stage, n) in args.agents_per_stage().into_iter().enumerate() {
        if args.shared_queue() && stage > 0 {
            break;
        }
        for _ in 0..n {
            let (q, pool, run, args) = (q.clone(), pool.clone(), Arc::clone(&run), args.clone());
            agents.push(tokio::spawn(async move {
                let r = agent(&q, &pool, &run, &args, stage).await;
                if let Err(e) = &r {
                    run.fail(format!("{e:#}"));
                }
                r
            }));
        }
    }
    let end = run.wait_over(args.time_limit).await;
    run::done(args)?;
    for a in agents {
        a.await??;
    }
    let mut out = Output::new(args, &run, start, end?, preload);
    out.durability = durability;
    out.completion = COMPLETION.to_owned();
    Ok(out)
}

/// One agent of `stage`'s queue: read, hand off, repeat until the run is
/// over. With a shared queue (K < 3) the message says its stage.
async fn agent(q: &PGMQueueExt, pool: &PgPool, run: &Run, args: &Args, queue_stage: usize) -> Result<()> {
    while !run.is_over() {
        let msgs: Vec<pgmq::Message<Hop>> = q
            .read_batch_with_poll_with_cxn(
                &queue(args, queue_stage),
                run::LEASE.as_secs(),
                1,
                Some(POLL_TIMEOUT),
                Some(POLL_INTERVAL),
                pool,
            )
            .await?;
        for msg in msgs {
            let (task, stage) = (msg.message.task, msg.message.stage);
            run.received(task, stage);
            let last = stage + 1 == STAGES.len();
            let t0 = Instant::now();
            let mut tx = pool.begin().await?;
            if !last {
                run.sending(task, stage + 1, t0);
                let next = Hop { stage: stage + 1, ..msg.message.clone() };
                q.send_with_cxn(&queue(args, stage + 1), &next, &mut *tx).await?;
            }
            sqlx::query(pgdb::HISTORY_INSERT)
                .bind(i64::try_from(task)?)
                .bind(i32::try_from(stage)?)
                .bind(run::unix_us())
                .execute(&mut *tx)
                .await?;
            q.archive_with_cxn(&queue(args, stage), msg.msg_id, &mut *tx).await?;
            tx.commit().await?;
            run.stepped(t0.elapsed());
            if last {
                run.finished_one();
            }
        }
    }
    Ok(())
}
