//! The backlog series of `bench` (docs/glossary.md: HB3, goals G6-G8),
//! on Baton's SQLite store in process: for each backlog size B, preload B
//! waiting tasks into stage a, note the idle RSS, then burn down a sample of
//! them (`sample`, at most B) through all three stages with K agents while
//! the rest stay waiting, and report handoffs/s and RSS. At the largest B,
//! the crash child (`crash-child`, the kill -9 test's workload) works the
//! same database and is SIGKILLed mid-flight; the time from reopening the
//! store (WAL recovery included) to the first successful claim from the
//! backlog is the recovery figure (the default open: `quick_check` runs in
//! the background); a second kill, reopened with the check at open
//! (`IntegrityCheck::Quick`, which reads the whole file first), shows what
//! running it beside the writer saves.
//!
//! RSS is this whole process (the store runs in it, plus the harness's
//! agents, a few MiB), so it is an upper bound on the store's.
//!
//! `run_pg` is the same series on Baton's PostgreSQL store (when the run has
//! a database), each size with and without a snapshot held open by another
//! client (the xmin horizon that keeps a queue's dead rows from being pruned).

use super::baton::{BATON_WRITER_THREAD, burn_down, preload};
use super::pg::PG_WRITER_THREAD;
use super::pipeline::STAGES;
use crate::exec::block_on;
use crate::sys::{self, Probe, Watch};
use anyhow::{Context as _, Result, bail};
use baton_core::{AgentId, ClaimRequest, NewTask, StageName, Store};
use baton_sqlite::{IntegrityCheck, SqliteOptions, SqliteStore};
use serde::Serialize;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the crash child works before the kill.
const CHILD_RUN: Duration = Duration::from_millis(400);
/// How long the first claim after the restart may take before it counts as failed.
const FIRST_CLAIM_WAIT_MAX: Duration = Duration::from_secs(30);

/// One backlog size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogPoint {
    pub backlog: usize,
    pub preload_s: f64,
    pub sample_tasks: usize,
    pub handoffs_per_s: f64,
    pub rss_idle_mib: Option<f64>,
    pub rss_loaded_mib: Option<f64>,
    pub flushes_per_handoff: Option<f64>,
    pub disk_mib: f64,
    pub foreign_cpu_s: f64,
    pub disturbed: bool,
}

/// After kill -9 at the largest backlog.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub backlog: usize,
    /// The WAL the killed child left, in bytes.
    pub wal_bytes: u64,
    /// Opening the store (recovery) took this long.
    pub open_ms: f64,
    /// From the start of opening to the first granted claim.
    pub first_claim_ms: f64,
    /// The same after a second kill, opened with `IntegrityCheck::Quick`:
    /// `quick_check` before `open` returns (it reads the whole file), as
    /// the default did before the check moved beside the writer.
    pub first_claim_open_check_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BacklogReport {
    pub agents: usize,
    pub points: Vec<BacklogPoint>,
    pub recovery: Option<Recovery>,
    /// Why there is no recovery figure, when there is none.
    pub recovery_skipped: Option<String>,
}

pub fn run(
    root: &Path,
    backlogs: &[usize],
    agents: usize,
    sample: usize,
    payload: &str,
    probe: &Probe,
    harness: Option<&Path>,
) -> Result<BacklogReport> {
    let mut points = Vec::new();
    let mut recovery = None;
    let mut recovery_skipped = None;
    let largest = backlogs.iter().copied().max().unwrap_or(0);
    for &backlog in backlogs {
        let dir = root.join(format!("backlog-{backlog}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("baton.db");
        eprint!("backlog {backlog}: preload ... ");
        let point = (|| -> Result<BacklogPoint> {
            let sqlite = crate::store::open_sqlite(&db)?;
            let store: Arc<dyn Store> = sqlite.clone();
            let t0 = Instant::now();
            preload(&store, backlog, payload)?;
            let preload_s = t0.elapsed().as_secs_f64();
            let rss_idle = sys::rss_kib(None);
            let tasks = sample.min(backlog).max(1);
            let (usage, _) = burn_down(store, agents, tasks, probe, BATON_WRITER_THREAD, None)?;
            let rss_loaded = sys::rss_kib(None);
            sqlite.close();
            let handoffs = (tasks * STAGES.len()) as f64;
            Ok(BacklogPoint {
                backlog,
                preload_s,
                sample_tasks: tasks,
                handoffs_per_s: handoffs / usage.seconds.max(1e-9),
                rss_idle_mib: rss_idle.map(|k| k as f64 / 1024.0),
                rss_loaded_mib: rss_loaded.map(|k| k as f64 / 1024.0),
                flushes_per_handoff: usage.flushes.map(|f| f as f64 / handoffs),
                disk_mib: sys::disk_bytes(&dir) as f64 / (1024.0 * 1024.0),
                foreign_cpu_s: usage.foreign_cpu_seconds,
                disturbed: usage.foreign_cpu_seconds > super::FOREIGN_CORES_MAX * usage.seconds,
            })
        })();
        let point = match point {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        eprintln!(
            "{:.1} s; {:.0} handoffs/s over {} tasks; RSS idle {} MiB, loaded {} MiB{}",
            point.preload_s,
            point.handoffs_per_s,
            point.sample_tasks,
            point.rss_idle_mib.map_or("?".into(), |r| format!("{r:.0}")),
            point.rss_loaded_mib.map_or("?".into(), |r| format!("{r:.0}")),
            if point.disturbed { "  DISTURBED" } else { "" }
        );
        points.push(point);
        if backlog == largest {
            match harness {
                Some(harness) => {
                    let r =
                        kill_and_recover(harness, &db, backlog, IntegrityCheck::default()).map(|mut r| {
                            r.first_claim_open_check_ms =
                                kill_and_recover(harness, &db, backlog, IntegrityCheck::Quick)
                                    .ok()
                                    .map(|u| u.first_claim_ms);
                            r
                        });
                    match r {
                        Ok(r) => {
                            eprintln!(
                                "kill -9 at backlog {backlog}: reopen {:.0} ms, first claim {:.0} ms (WAL {} KiB); \
                                 with quick_check at open: first claim {} ms",
                                r.open_ms,
                                r.first_claim_ms,
                                r.wal_bytes / 1024,
                                r.first_claim_open_check_ms.map_or("?".into(), |x| format!("{x:.0}"))
                            );
                            recovery = Some(r);
                        }
                        Err(e) => recovery_skipped = Some(format!("the recovery run failed: {e:#}")),
                    }
                }
                None => recovery_skipped = Some("no harness binary to run the crash child".into()),
            }
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(BacklogReport { agents, points, recovery, recovery_skipped })
}

/// Runs the crash child on `db`, SIGKILLs it, and times reopen + first claim.
fn kill_and_recover(harness: &Path, db: &Path, backlog: usize, check: IntegrityCheck) -> Result<Recovery> {
    let mut child = Command::new(harness)
        .args(["crash-child", "--seed", "1", "--threads", "4", "--run-ms-max", "10000", "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} crash-child", harness.display()))?;
    std::thread::sleep(CHILD_RUN);
    let exited = child.try_wait()?;
    // std's kill is SIGKILL.
    let _ = child.kill();
    let _ = child.wait();
    if let Some(status) = exited {
        bail!("the crash child exited by itself before the kill ({status})");
    }
    let wal_bytes = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
    let t0 = Instant::now();
    let sqlite = SqliteStore::open(db, SqliteOptions::default().integrity_check(check))
        .with_context(|| format!("reopen {}", db.display()))?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let request = ClaimRequest {
        agent: AgentId::new("recovery"),
        stages: vec![StageName::new(STAGES[0])],
        max: 1,
        lease_ms: None,
        only: None,
        credential: None,
    };
    let first_claim_ms = loop {
        if !block_on(sqlite.claim(request.clone()))?.is_empty() {
            break t0.elapsed().as_secs_f64() * 1e3;
        }
        if t0.elapsed() > FIRST_CLAIM_WAIT_MAX {
            sqlite.close();
            bail!("no claim granted within {FIRST_CLAIM_WAIT_MAX:?} after the restart");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    sqlite.close();
    Ok(Recovery { backlog, wal_bytes, open_ms, first_claim_ms, first_claim_open_check_ms: None })
}

// ---------------------------------------------------------------------------
// The PostgreSQL backlog series

/// Tasks submitted at once while preloading the PostgreSQL store: enough for
/// its writers to fill their batches (`commit_batch_max`), well below its
/// queue bound (`queue_max`).
const PG_PRELOAD_IN_FLIGHT_MAX: usize = 1_024;

/// One PostgreSQL backlog size, with or without a snapshot held open.
#[derive(Debug, Clone, Serialize)]
pub struct PgBacklogPoint {
    /// Tasks waiting in stage a when the run started, at least.
    pub backlog: usize,
    /// Another connection held a transaction open (an xid and a REPEATABLE
    /// READ snapshot) for the whole run, so no dead row could be pruned.
    pub held_snapshot: bool,
    /// Submitting the backlog through the store (once per size).
    pub preload_s: f64,
    pub sample_tasks: usize,
    pub handoffs_per_s: f64,
    /// Dead rows in `tasks` after the run (`pg_stat_user_tables`).
    pub dead_tuples: Option<i64>,
    /// Round trips and statements per handoff of the store's writers.
    pub round_trips_per_handoff: f64,
    pub statements_per_handoff: f64,
    pub postgres_cpu_s: f64,
    pub foreign_cpu_s: f64,
    pub disturbed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgBacklogReport {
    pub agents: usize,
    pub points: Vec<PgBacklogPoint>,
}

/// The backlog series on Baton's PostgreSQL store (a schema per size,
/// dropped after). For each size B: submit B + 2 x `sample` tasks through
/// the store (its submit path, many calls in flight, so its writers commit
/// them in batches), VACUUM ANALYZE (this cluster may run without
/// autovacuum; a production one would have vacuumed a table that grew so
/// much), burn `sample` tasks down through all three stages with K agents;
/// VACUUM again, and burn down another `sample` while a second connection
/// holds a transaction with an xid and a REPEATABLE READ snapshot open,
/// so nothing the run leaves dead can be pruned (the xmin horizon). B tasks
/// or more wait in stage a throughout.
pub fn run_pg(
    url: &str,
    backlogs: &[usize],
    agents: usize,
    sample: usize,
    payload: &str,
    probe: &Probe,
) -> Result<PgBacklogReport> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut points = Vec::new();
    for &backlog in backlogs {
        let schema = super::pg::schema_name("backlog");
        let result = pg_size(&rt, url, &schema, backlog, agents, sample, payload, probe);
        let dropped = rt.block_on(super::pg::drop_schema(url, &schema));
        points.extend(result?);
        dropped.with_context(|| format!("drop schema {schema}"))?;
    }
    Ok(PgBacklogReport { agents, points })
}

#[allow(clippy::too_many_arguments)]
fn pg_size(
    rt: &tokio::runtime::Runtime,
    url: &str,
    schema: &str,
    backlog: usize,
    agents: usize,
    sample: usize,
    payload: &str,
    probe: &Probe,
) -> Result<Vec<PgBacklogPoint>> {
    let options = baton_postgres::PostgresOptions::new(url).context("database URL")?.schema(schema);
    let pg = Arc::new(baton_postgres::PostgresStore::open(options).context("open Baton's PostgreSQL store")?);
    let store: Arc<dyn Store> = pg.clone();
    let run = || -> Result<Vec<PgBacklogPoint>> {
        let sample = sample.max(1);
        eprint!("PostgreSQL backlog {backlog}: preload ... ");
        let t0 = Instant::now();
        rt.block_on(pg_preload(&store, backlog + 2 * sample, payload))?;
        let preload_s = t0.elapsed().as_secs_f64();
        eprintln!("{preload_s:.1} s");
        let admin = rt.block_on(super::pg::connect(url))?;
        let mut points = Vec::new();
        for held_snapshot in [false, true] {
            rt.block_on(admin.batch_execute(&format!(
                "VACUUM ANALYZE {schema}.tasks, {schema}.events, {schema}.handoff_tasks, {schema}.notices"
            )))
            .context("VACUUM")?;
            let holder = if held_snapshot {
                let c = rt.block_on(super::pg::connect(url))?;
                rt.block_on(c.batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current(); \
                     SELECT count(*) FROM {schema}.leader"
                )))
                .context("hold a snapshot")?;
                Some(c)
            } else {
                None
            };
            let before = pg.stats();
            let watch = Watch::named("postgres");
            let (usage, _) = burn_down(Arc::clone(&store), agents, sample, probe, PG_WRITER_THREAD, None)?;
            let (postgres_cpu_s, _) = watch.stop();
            let after = pg.stats();
            if let Some(c) = holder {
                rt.block_on(c.batch_execute("ROLLBACK")).context("end the held snapshot")?;
            }
            let dead_tuples = rt
                .block_on(admin.query_one(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'tasks'",
                    &[&schema],
                ))
                .ok()
                .map(|r| r.get::<_, i64>(0));
            let handoffs = (sample * STAGES.len()) as f64;
            let foreign = (usage.foreign_cpu_seconds - postgres_cpu_s).max(0.0);
            let point = PgBacklogPoint {
                backlog,
                held_snapshot,
                preload_s,
                sample_tasks: sample,
                handoffs_per_s: handoffs / usage.seconds.max(1e-9),
                dead_tuples,
                round_trips_per_handoff: (after.round_trips - before.round_trips) as f64 / handoffs,
                statements_per_handoff: (after.statements - before.statements) as f64 / handoffs,
                postgres_cpu_s,
                foreign_cpu_s: foreign,
                disturbed: foreign > super::FOREIGN_CORES_MAX * usage.seconds,
            };
            eprintln!(
                "PostgreSQL backlog {backlog}{}: {:.0} handoffs/s over {sample} tasks; {:.1} round trips and \
                 {:.1} statements per handoff; {} dead rows in tasks after{}",
                if held_snapshot { ", snapshot held" } else { "" },
                point.handoffs_per_s,
                point.round_trips_per_handoff,
                point.statements_per_handoff,
                dead_tuples.map_or("?".into(), |d| d.to_string()),
                if point.disturbed { "  DISTURBED" } else { "" }
            );
            points.push(point);
        }
        Ok(points)
    };
    let result = run();
    pg.close();
    result
}

/// Submits `tasks` tasks into stage a, up to `PG_PRELOAD_IN_FLIGHT_MAX` at a time.
async fn pg_preload(store: &Arc<dyn Store>, tasks: usize, payload: &str) -> Result<()> {
    let mut running = tokio::task::JoinSet::new();
    for n in 0..tasks {
        if n >= PG_PRELOAD_IN_FLIGHT_MAX
            && let Some(done) = running.join_next().await
        {
            done??;
        }
        let store = Arc::clone(store);
        let task = NewTask::new(STAGES[0], payload.to_owned());
        running.spawn(async move { store.submit(task).await.map(drop) });
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// The PostgreSQL series as Markdown, with the G6 ratio per held or not.
pub fn pg_markdown(b: &PgBacklogReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "**Backlog series on PostgreSQL** (Baton, PostgreSQL store in process, K = {}; a held snapshot is \
         a transaction with an xid and a REPEATABLE READ snapshot open on another connection for the whole \
         run):\n",
        b.agents
    );
    let _ = writeln!(
        out,
        "| backlog | snapshot held | preload s | sample tasks | handoffs/s | round trips / statements per \
         handoff | dead rows after | postgres CPU s | disturbed |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for p in &b.points {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {:.0} | {:.2} / {:.2} | {} | {:.1} | {} |",
            p.backlog,
            if p.held_snapshot { "yes" } else { "no" },
            p.preload_s,
            p.sample_tasks,
            p.handoffs_per_s,
            p.round_trips_per_handoff,
            p.statements_per_handoff,
            p.dead_tuples.map_or("?".into(), |d| d.to_string()),
            p.postgres_cpu_s,
            if p.disturbed { "yes" } else { "no" }
        );
    }
    let _ = writeln!(out);
    let plain: Vec<_> = b.points.iter().filter(|p| !p.held_snapshot).collect();
    let held: Vec<_> = b.points.iter().filter(|p| p.held_snapshot).collect();
    if let (Some(first), Some(last)) = (plain.first(), plain.last())
        && plain.len() > 1
    {
        let _ = writeln!(
            out,
            "G6 on PostgreSQL: handoffs/s at a {} backlog ÷ at {}: {:.2}x (goal ≥ 0.9x)",
            last.backlog,
            first.backlog,
            last.handoffs_per_s / first.handoffs_per_s
        );
        if let (Some(held_first), Some(held_last)) = (held.first(), held.last()) {
            let _ = writeln!(
                out,
                "G6 on PostgreSQL with a held snapshot: handoffs/s at a {} backlog, snapshot held, ÷ at {} \
                 without: {:.2}x (goal ≥ 0.8x); ÷ at {} with it held too: {:.2}x",
                held_last.backlog,
                first.backlog,
                held_last.handoffs_per_s / first.handoffs_per_s,
                held_first.backlog,
                held_last.handoffs_per_s / held_first.handoffs_per_s
            );
        }
    }
    out
}
