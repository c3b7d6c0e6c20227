//! PostgreSQL for `bench`: the raw PostgreSQL handoff baseline and Baton on
//! its PostgreSQL store (`baton-postgres`), each in a schema of its own on
//! the database at `BATON_BENCH_DATABASE_URL` (default `DEFAULT_DATABASE_URL`),
//! dropped afterwards whatever happened.
//!
//! * raw PostgreSQL handoff: K clients, one connection each; every handoff
//!   is one autocommitted statement, a revision-guarded UPDATE of the task
//!   row with its event INSERT in the same CTE, so one durable commit
//!   (`synchronous_commit` as the server has it, reported) per handoff and
//!   no claims, the PostgreSQL counterpart of the raw SQLite single commit
//!   at the same client count. Client c walks the tasks with id = c mod K.
//! * Baton on PostgreSQL: `PostgresStore` through the `Store` trait, the same
//!   burn-down loop as the SQLite store (`baton::burn_down`).
//!
//! The server's CPU is the cluster's `postgres` processes (a shared cluster:
//! other sessions' queries count too, and show up in the noise figure).

use super::baton::{OnDone, burn_down, preload};
use super::pipeline::STAGES;
use super::suite::Sample;
use super::{RunParams, histogram, record};
use crate::sys::{Probe, Watch};
use anyhow::{Context as _, Result, ensure};
use baton_core::Store;
use baton_postgres::{PostgresOptions, PostgresStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;

/// The database when `BATON_BENCH_DATABASE_URL` is not set: the one these
/// machines run on loopback, as the tests use it.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long connecting may take before PostgreSQL counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `baton-postgres` writer threads ("baton-pg-writer-N"; their CPU is
/// summed, so "writer busy" may exceed one core).
pub(super) const PG_WRITER_THREAD: &str = "baton-pg-writer";

/// The database URL of this run.
pub fn database_url() -> String {
    std::env::var("BATON_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A fresh schema name: unique per process and call, so runs never collide.
pub(crate) fn schema_name(kind: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("baton_bench_{kind}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .context("connecting to PostgreSQL timed out")??;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether PostgreSQL answers at `url`, and its durability settings
/// (`synchronous_commit`, `fsync`) for the report; an error says why not.
pub fn probe_database(rt: &Runtime, url: &str) -> Result<String> {
    rt.block_on(async {
        let client = connect(url).await?;
        let sync: String = client.query_one("SHOW synchronous_commit", &[]).await?.get(0);
        let fsync: String = client.query_one("SHOW fsync", &[]).await?.get(0);
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        ensure!(
            sync != "off" && fsync == "on",
            "PostgreSQL runs with synchronous_commit={sync}, fsync={fsync}: not durable per commit"
        );
        Ok(format!("PostgreSQL {version}, synchronous_commit={sync}, fsync={fsync}"))
    })
}

pub(crate) async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let client = connect(url).await?;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    Ok(())
}

/// Bytes of the schema's tables with their indexes and TOAST.
pub(super) async fn schema_bytes(client: &tokio_postgres::Client, schema: &str) -> Result<u64> {
    let row = client
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// The raw PostgreSQL handoff baseline (see the module doc).
pub fn run_raw_pg(rt: &Runtime, url: &str, p: &RunParams, probe: &Probe) -> Result<Sample> {
    let schema = schema_name("raw");
    let result = rt.block_on(raw_pg(url, &schema, p, probe));
    let dropped = rt.block_on(drop_schema(url, &schema));
    let sample = result?;
    dropped.with_context(|| format!("drop schema {schema}"))?;
    Ok(sample)
}

async fn raw_pg(url: &str, s: &str, p: &RunParams, probe: &Probe) -> Result<Sample> {
    let admin = connect(url).await?;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.tasks(id bigint PRIMARY KEY, stage int NOT NULL, state int NOT NULL,
                                    revision bigint NOT NULL);
             CREATE TABLE {s}.payloads(task_id bigint PRIMARY KEY, body text NOT NULL);
             CREATE TABLE {s}.events(task_id bigint NOT NULL, version bigint NOT NULL, kind int NOT NULL,
                                     at timestamptz NOT NULL, from_stage int, to_stage int NOT NULL,
                                     PRIMARY KEY(task_id, version));"
        ))
        .await?;
    let n = i64::try_from(p.tasks)?;
    admin
        .execute(
            &format!("INSERT INTO {s}.tasks SELECT g, 0, 0, 1 FROM generate_series(1, $1::bigint) g"),
            &[&n],
        )
        .await?;
    admin
        .execute(
            &format!("INSERT INTO {s}.payloads SELECT g, $2 FROM generate_series(1, $1::bigint) g"),
            &[&n, &p.payload],
        )
        .await?;
    admin
        .execute(
            &format!(
                "INSERT INTO {s}.events SELECT g, 1, 0, now(), NULL, 0 FROM generate_series(1, $1::bigint) g"
            ),
            &[&n],
        )
        .await?;
    admin.batch_execute(&format!("ANALYZE {s}.tasks; CHECKPOINT")).await.ok();

    let clients = p.agents.max(1);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(url).await?);
    }
    let watch = Watch::named("postgres");
    let mark = probe.start(None)?;
    let tasks = p.tasks as i64;
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let s = s.to_owned();
            tokio::spawn(async move {
                let statement = client
                    .prepare(&format!(
                        "WITH u AS (UPDATE {s}.tasks SET stage = $2, state = $3, revision = revision + 1
                                    WHERE id = $1 AND revision = $4 RETURNING id, revision)
                         INSERT INTO {s}.events(task_id, version, kind, at, from_stage, to_stage)
                         SELECT id, revision, $5, now(), $6, $2 FROM u"
                    ))
                    .await?;
                let mut step = histogram();
                let mut id = c as i64 + 1;
                while id <= tasks {
                    for stage in 0..STAGES.len() as i32 {
                        let next = stage + 1;
                        let last = next as usize == STAGES.len();
                        let (state, kind) = if last { (2i32, 3i32) } else { (0, 2) };
                        let revision = i64::from(stage) + 1;
                        let t0 = Instant::now();
                        let n = client
                            .execute(&statement, &[&id, &next, &state, &revision, &kind, &stage])
                            .await?;
                        ensure!(n == 1, "raw PostgreSQL: task {id} moved under us");
                        record(&mut step, t0.elapsed());
                    }
                    id += clients as i64;
                }
                // The client goes back alive: its backend's CPU is read after the run.
                anyhow::Ok((step, client))
            })
        })
        .collect();
    let mut step = histogram();
    let mut clients = Vec::new();
    for h in handles {
        let (h, client) = h.await??;
        step.add(&h).expect("histograms share bounds");
        clients.push(client);
    }
    let usage = probe.stop(&mark, Instant::now())?;
    let (server_cpu, _) = watch.stop();
    drop(clients);
    let disk = schema_bytes(&admin, s).await.ok();
    Ok(Sample {
        handoffs: p.tasks as u64 * STAGES.len() as u64,
        server_cpu_s: Some(server_cpu),
        disk_bytes: disk,
        ..Sample::new(usage, step)
    })
}

/// Baton on its PostgreSQL store, burn-down (or open loop when `rate` is
/// given, in tasks per second).
pub fn run_baton_pg(
    rt: &Runtime,
    url: &str,
    p: &RunParams,
    probe: &Probe,
    rate: Option<f64>,
) -> Result<Sample> {
    let schema = schema_name("baton");
    let result = baton_pg(rt, url, &schema, p, probe, rate);
    let dropped = rt.block_on(drop_schema(url, &schema));
    let sample = result?;
    dropped.with_context(|| format!("drop schema {schema}"))?;
    Ok(sample)
}

fn baton_pg(
    rt: &Runtime,
    url: &str,
    schema: &str,
    p: &RunParams,
    probe: &Probe,
    rate: Option<f64>,
) -> Result<Sample> {
    let options = PostgresOptions::new(url).context("database URL")?.schema(schema);
    let pg = Arc::new(PostgresStore::open(options).context("open Baton's PostgreSQL store")?);
    let store: Arc<dyn Store> = pg.clone();
    let run = || -> Result<Sample> {
        let before = pg.stats();
        let watch;
        let mut sample = match rate {
            None => {
                preload(&store, p.tasks, &p.payload)?;
                watch = Watch::named("postgres");
                let (usage, step) = burn_down(
                    Arc::clone(&store),
                    p.agents,
                    p.tasks,
                    probe,
                    PG_WRITER_THREAD,
                    None::<OnDone>,
                )?;
                Sample::new(usage, step)
            }
            Some(rate) => {
                watch = Watch::named("postgres");
                super::suite::open_loop(Arc::clone(&store), p, rate, probe, PG_WRITER_THREAD)?
            }
        };
        sample.handoffs = p.tasks as u64 * STAGES.len() as u64;
        sample.server_cpu_s = Some(watch.stop().0);
        let after = pg.stats();
        let per = |a: u64, b: u64| (a - b) as f64 / sample.handoffs.max(1) as f64;
        eprint!(
            "[writers: {:.2} round trips, {:.2} statements per handoff; {:.1} operations per commit] ",
            per(after.round_trips, before.round_trips),
            per(after.statements, before.statements),
            (after.ops - before.ops) as f64 / (after.commits - before.commits).max(1) as f64,
        );
        sample.disk_bytes = rt
            .block_on(async {
                let client = connect(url).await?;
                schema_bytes(&client, schema).await
            })
            .ok();
        Ok(sample)
    };
    let result = run();
    pg.close();
    result
}
