//! `seed-backlog`: fills a store with a backlog through the store itself (no
//! HTTP), fast enough for a million tasks, then times the stage gauges read
//! (`Store::stage_gauges`, the per-stage counters) against the full recount
//! it replaced (`Store::stage_gauges_recount`) in the same run, and checks
//! they agree. The SQLite form seeds a `baton dev` data directory
//! (`DIR/baton.db`), so the dashboard can then be timed over HTTP on it
//! (`crates/baton-server/ui-tests/measure.mjs` with `DATA_DIR`). Not a test:
//! figures go to stdout, nothing is asserted but the agreement.

use crate::exec::block_on;
use anyhow::{Result, bail};
use baton_core::{NewTask, StageGauge, Store};
use futures_util::stream::{self, StreamExt as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Submits kept in flight at once while seeding: a few full group-commit
/// batches (`commit_batch_max` is 256), well under the queue bound.
pub const SEED_IN_FLIGHT: usize = 1024;

/// What to seed and how often to time each read.
#[derive(Debug, Clone)]
pub struct SeedConfig {
    /// Tasks to add (to whatever the store holds already).
    pub tasks: usize,
    /// Stages `stage-0 .. stage-{n-1}`, round-robin (measure.mjs's names).
    pub stages: usize,
    pub payload_bytes: usize,
    /// Timed reads of each kind, after one warm-up read each.
    pub rounds: usize,
}

/// Seeds `config.tasks` ready tasks (none with 0: time an existing backlog),
/// then times both gauge reads.
pub fn seed_and_time(store: Arc<dyn Store>, config: &SeedConfig) -> Result<()> {
    let payload = format!(r#"{{"text":"{}"}}"#, "x".repeat(config.payload_bytes));
    let started = Instant::now();
    let stages = config.stages.max(1);
    let submits = stream::iter(0..config.tasks)
        .map(|i| {
            let store = Arc::clone(&store);
            let task = NewTask::new(format!("stage-{}", i % stages), payload.clone());
            async move { store.submit(task).await }
        })
        .buffer_unordered(SEED_IN_FLIGHT);
    let mut done = 0usize;
    block_on(submits.for_each(|r| {
        if let Err(e) = r {
            eprintln!("submit failed: {e}");
        } else {
            done += 1;
            if done.is_multiple_of(100_000) {
                eprintln!("seeded {done} tasks in {:.1} s", started.elapsed().as_secs_f64());
            }
        }
        std::future::ready(())
    }));
    if done != config.tasks {
        bail!("only {done} of {} submits succeeded", config.tasks);
    }
    println!(
        "seeded {done} tasks in {:.1} s ({:.0} tasks/s)",
        started.elapsed().as_secs_f64(),
        done as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    let (counted, counters) = time(config.rounds, || block_on(store.stage_gauges(usize::MAX)))?;
    let live: u64 = counted.iter().map(|g| g.ready + g.held + g.blocked).sum();
    println!("stages {}, ready+held+blocked {live}", counted.len());
    report("stage_gauges (counters)", &counters);
    // The recount may outlast the store's read timeout at a large backlog
    // (PostgreSQL's `io_timeout`): that is a figure too, not a failure.
    let started = Instant::now();
    let (recounted, recount) = match time(config.rounds, || block_on(store.stage_gauges_recount(usize::MAX)))
    {
        Ok(timed) => timed,
        Err(e) => {
            println!("stage_gauges_recount (full recount) failed after {:?}: {e}", started.elapsed());
            return Ok(());
        }
    };
    report("stage_gauges_recount (full recount)", &recount);
    println!(
        "recount / counters, median: {:.1}x",
        median(&recount).as_secs_f64() / median(&counters).as_secs_f64().max(1e-9)
    );
    if counted != recounted {
        bail!("the counters {counted:?} differ from the recount {recounted:?}");
    }
    Ok(())
}

/// Runs `read` once to warm up, then `rounds` times; the last answer and the times.
fn time(
    rounds: usize,
    read: impl Fn() -> Result<Vec<StageGauge>, baton_core::Error>,
) -> Result<(Vec<StageGauge>, Vec<Duration>)> {
    let mut answer = read()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        answer = read()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((answer, times))
}

fn median(times: &[Duration]) -> Duration {
    times[times.len() / 2]
}

fn report(what: &str, times: &[Duration]) {
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    println!(
        "{what:<38} median {:>9.3} ms  p90 {:>9.3} ms  ({} rounds)",
        median(times).as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        times.len()
    );
}
