//! The retention soak (`baton-harness retention`): a child `baton dev` with a
//! short `--retention` takes a constant rate of tasks (submit, claim,
//! complete, over HTTP) for a given duration while the database's size on
//! disk (main file plus WAL) is sampled. Once the first retention period has
//! passed and one archive interval more (the archive's first pass has run),
//! the size must stay flat: no later sample above the first one by more than
//! `FLAT_TOLERANCE`. Without retention the file would grow with every task;
//! with it, what finished tasks leave behind is reused by new ones.
//!
//! At the end, a sample of the completed tasks is read back through the API
//! (`GET /v1/tasks/{id}` and its history, answered from the archive for
//! archived tasks): none may be lost. The report (JSON) has the size series,
//! the verdict and the archive's own size. The long tier runs it for an hour
//! (docs/reliability.md); the PR tier does not run it.

use crate::fault::node::{Launch, Node};
use anyhow::{Context as _, Result, bail};
use baton_client::Client;
use baton_client::api::{CompleteRequest, Payload, SubmitRequest};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far above the first steady sample the size may go and still be flat.
pub const FLAT_TOLERANCE: f64 = 0.10;
/// Completed tasks read back at the end, at most (spread over the run).
pub const READ_BACK_MAX: usize = 200;
/// The server's `archive_interval_ms` in the soak.
pub const ARCHIVE_INTERVAL_MS: u64 = 2_000;
/// Concurrent clients driving the rate.
pub const CLIENTS: usize = 4;

/// What a soak run is told.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub baton: PathBuf,
    pub dir: PathBuf,
    pub duration: Duration,
    pub retention: Duration,
    /// Tasks per second, all clients together.
    pub rate: u64,
    /// How often the size is sampled.
    pub sample: Duration,
    /// Bytes of each task's payload.
    pub payload_bytes: usize,
}

/// One sample of the database's size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SizeSample {
    pub at_s: f64,
    pub db_bytes: u64,
    pub wal_bytes: u64,
    pub total_bytes: u64,
    pub archive_bytes: u64,
    pub completed: u64,
}

/// The result, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub duration_s: f64,
    pub retention_s: f64,
    pub archive_interval_s: f64,
    pub rate: u64,
    pub completed: u64,
    pub errors: u64,
    /// From this time on the size must be flat.
    pub steady_from_s: f64,
    pub steady_first_bytes: u64,
    pub steady_max_bytes: u64,
    /// `steady_max / steady_first - 1`.
    pub growth: f64,
    pub read_back: usize,
    pub lost: Vec<String>,
    pub samples: Vec<SizeSample>,
    pub ok: bool,
    pub problems: Vec<String>,
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
    })
}

/// Runs the soak; an `Err` only when it could not run at all.
pub fn run(config: &RetentionConfig) -> Result<RetentionReport> {
    let retention_ms = u64::try_from(config.retention.as_millis()).unwrap_or(u64::MAX).max(1_000);
    // Frequent small passes: each commit's pages go through the WAL, so a
    // pass every `ARCHIVE_INTERVAL_MS` keeps them (and the WAL) small.
    let interval_ms = ARCHIVE_INTERVAL_MS.min(retention_ms);
    std::fs::create_dir_all(&config.dir)?;
    let conf = config.dir.join("baton.toml");
    std::fs::write(&conf, format!("[server]\narchive_interval_ms = {interval_ms}\n"))?;
    let mut launch = Launch::new(&config.baton, &config.dir)?;
    let listen = format!("127.0.0.1:{}", launch.port);
    launch.args = ["dev", "--listen", &listen, "--retention", &format!("{retention_ms}ms"), "--config"]
        .map(String::from)
        .into_iter()
        .chain([conf.display().to_string(), "--data-dir".into(), launch.data_dir.display().to_string()])
        .collect();
    launch.env.push(("RUST_LOG".into(), "warn".into()));
    let mut node = Node::start(&launch, 0).context("start baton dev")?;
    let db = launch.data_dir.join("baton.db");
    let (wal, archive) = (launch.data_dir.join("baton.db-wal"), launch.data_dir.join("baton.db.archive"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let address = launch.address();
    let result = runtime.block_on(async {
        let completed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let end = started + config.duration;
        let per_client = Duration::from_secs_f64(CLIENTS as f64 / config.rate.max(1) as f64);
        let payload = serde_json::json!({ "pad": "x".repeat(config.payload_bytes) });
        let mut workers = Vec::new();
        for n in 0..CLIENTS {
            let client = Client::new(&address)?.with_agent(format!("soak-{n}"));
            let (completed, errors, ids, payload) =
                (completed.clone(), errors.clone(), ids.clone(), payload.clone());
            workers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_client);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while Instant::now() < end {
                    tick.tick().await;
                    match one_task(&client, &payload).await {
                        Ok(id) => {
                            let done = completed.fetch_add(1, Ordering::Relaxed);
                            if done % 97 == 0 {
                                ids.lock().expect("ids").push(id);
                            }
                        }
                        Err(error) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("retention soak: a call failed: {error}");
                            }
                        }
                    }
                }
            }));
        }
        let mut samples = Vec::new();
        while Instant::now() < end {
            tokio::time::sleep(config.sample.min(end.saturating_duration_since(Instant::now()))).await;
            let (db_bytes, wal_bytes) = (size(&db), size(&wal));
            let sample = SizeSample {
                at_s: started.elapsed().as_secs_f64(),
                db_bytes,
                wal_bytes,
                total_bytes: db_bytes + wal_bytes,
                archive_bytes: dir_size(&archive),
                completed: completed.load(Ordering::Relaxed),
            };
            eprintln!(
                "retention soak: {:>6.0} s  db {:>10} B  wal {:>9} B  archive {:>10} B  {} tasks",
                sample.at_s, sample.db_bytes, sample.wal_bytes, sample.archive_bytes, sample.completed
            );
            samples.push(sample);
        }
        for w in workers {
            let _ = w.await;
        }
        // Every sampled completed task still answers, live or from the archive.
        let client = Client::new(&address)?;
        let ids: Vec<_> = ids.lock().expect("ids").clone();
        let step = ids.len().div_ceil(READ_BACK_MAX).max(1);
        let mut lost = Vec::new();
        let mut read_back = 0;
        for id in ids.iter().step_by(step) {
            read_back += 1;
            let shown = client.get(*id).await;
            let history = client.history(*id).await;
            match (shown, history) {
                (Ok(task), Ok(h))
                    if task.state == baton_client::api::TaskStateName::Done && !h.events.is_empty() => {}
                (shown, history) => lost.push(format!("{id}: {:?} / {:?}", shown.err(), history.err())),
            }
        }
        anyhow::Ok((
            samples,
            completed.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            read_back,
            lost,
        ))
    });
    node.kill();
    let (samples, completed, errors, read_back, lost) = result?;
    let steady_from_s = (retention_ms + interval_ms) as f64 / 1_000.0;
    let steady: Vec<&SizeSample> = samples.iter().filter(|s| s.at_s >= steady_from_s).collect();
    let mut problems = Vec::new();
    let (first, max) = match (steady.first(), steady.iter().map(|s| s.total_bytes).max()) {
        (Some(first), Some(max)) => (first.total_bytes, max),
        _ => {
            problems.push(format!("no sample after {steady_from_s} s: run longer than the retention"));
            (0, 0)
        }
    };
    let growth = if first == 0 { 0.0 } else { max as f64 / first as f64 - 1.0 };
    if growth > FLAT_TOLERANCE {
        problems.push(format!(
            "the database grew {:.1}% after the first retention period (from {first} to {max} bytes; at most {:.0}%)",
            growth * 100.0,
            FLAT_TOLERANCE * 100.0
        ));
    }
    if !lost.is_empty() {
        problems.push(format!("{} completed tasks no longer answer", lost.len()));
    }
    if samples.last().is_none_or(|s| s.archive_bytes == 0) {
        problems.push("nothing was archived".into());
    }
    if completed == 0 {
        bail!("no task completed; see {}", node.log.display());
    }
    Ok(RetentionReport {
        duration_s: config.duration.as_secs_f64(),
        retention_s: retention_ms as f64 / 1_000.0,
        archive_interval_s: interval_ms as f64 / 1_000.0,
        rate: config.rate,
        completed,
        errors,
        steady_from_s,
        steady_first_bytes: first,
        steady_max_bytes: max,
        growth,
        read_back,
        lost,
        samples,
        ok: problems.is_empty(),
        problems,
    })
}

/// Submit, claim and complete one task; returns its id.
async fn one_task(client: &Client, payload: &serde_json::Value) -> Result<baton_client::TaskId> {
    let submit = SubmitRequest::new("soak", Payload::from_value(payload)?);
    let task = client.submit(&submit).await?.task;
    for lease in client.claim_from(&["soak"], 1, 0).await? {
        let complete = CompleteRequest { epoch: lease.epoch, ..CompleteRequest::default() };
        client.complete(lease.task, &complete).await?;
    }
    Ok(task.id)
}
