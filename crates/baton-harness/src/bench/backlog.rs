//! The backlog series of `bench` (notes/performance.md 4.2, goals G6-G8),
//! on Baton's SQLite store in process: for each backlog size B, preload B
//! waiting tasks into stage a, note the idle RSS, then burn down a sample of
//! them (`sample`, at most B) through all three stages with K agents while
//! the rest stay waiting, and report handoffs/s and RSS. At the largest B,
//! the crash child (`crash-child`, the kill -9 test's workload) works the
//! same database and is SIGKILLed mid-flight; the time from reopening the
//! store (WAL recovery included) to the first successful claim from the
//! backlog is the recovery figure; a second kill, reopened without the
//! open-time integrity check, shows what that check costs.
//!
//! RSS is this whole process (the store runs in it, plus the harness's
//! agents, a few MiB), so it is an upper bound on the store's.

use super::baton::{BATON_WRITER_THREAD, burn_down, preload};
use super::pipeline::STAGES;
use crate::exec::block_on;
use crate::sys::{self, Probe};
use anyhow::{Context as _, Result, bail};
use baton_core::{AgentId, ClaimRequest, StageName, Store};
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
    /// The same after a second kill, opened with `IntegrityCheck::Off`: what
    /// the default open-time `quick_check` (it reads the whole file) costs.
    pub first_claim_unchecked_ms: Option<f64>,
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
                            r.first_claim_unchecked_ms =
                                kill_and_recover(harness, &db, backlog, IntegrityCheck::Off)
                                    .ok()
                                    .map(|u| u.first_claim_ms);
                            r
                        });
                    match r {
                        Ok(r) => {
                            eprintln!(
                                "kill -9 at backlog {backlog}: reopen {:.0} ms, first claim {:.0} ms (WAL {} KiB); \
                                 without the open-time quick_check: first claim {} ms",
                                r.open_ms,
                                r.first_claim_ms,
                                r.wal_bytes / 1024,
                                r.first_claim_unchecked_ms.map_or("?".into(), |x| format!("{x:.0}"))
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
    Ok(Recovery { backlog, wal_bytes, open_ms, first_claim_ms, first_claim_unchecked_ms: None })
}
