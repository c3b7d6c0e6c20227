//! `bench-store`: the store-level HB3 benchmark (docs/glossary.md). For each agent count K it runs Baton's SQLite store and the two
//! same-run baselines in interleaved rounds (raw, ideal, Baton; raw, ideal,
//! Baton; ...), each in a fresh data directory, and summarises every figure as
//! a median with its range and as a ratio to the baselines.
//!
//! What is counted: a task makes three handoffs, one per stage it leaves
//! (a to b, b to c, c to done). Tasks are preloaded into stage a before the
//! clock starts (the preload, creation being HB3's first handoff, is timed
//! separately and not in the rate), so a burn-down of N tasks is 3N handoffs,
//! and handoffs/s is 3N divided by the time from the agents' start to the
//! last task's completion. Every handoff is durable (fsync'd) before the agent
//! hears about it, in Baton and in both baselines.
//!
//! `suite` is `bench`, the single entry point (`baton bench`) that runs
//! these systems together with Baton on PostgreSQL (`pg`), the peers
//! (`peers`), an open loop, the backlog series (`backlog`) and, on request,
//! Restate and Temporal as latency anchors (`anchors`).

pub mod anchors;
pub mod backlog;
pub mod baselines;
pub mod baton;
pub mod external;
pub mod http;
pub mod memory_server;
pub mod peers;
pub mod pg;
pub mod pipeline;
pub mod report;
pub mod suite;

use crate::sys::{Machine, Probe, Usage};
use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The systems a run set measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// rusqlite, one thread, one durable transaction per handoff.
    Raw,
    /// rusqlite, K agents and one writer thread with group commit (up to 256).
    Ideal,
    /// Baton's `SqliteStore` through the `Store` trait, with claim-next.
    Baton,
}

impl System {
    pub const ALL: [System; 3] = [System::Raw, System::Ideal, System::Baton];

    pub fn label(self) -> &'static str {
        match self {
            Self::Raw => "raw single commit",
            Self::Ideal => "ideal batching writer",
            Self::Baton => "Baton SqliteStore",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "raw" => Self::Raw,
            "ideal" => Self::Ideal,
            "baton" => Self::Baton,
            _ => return None,
        })
    }
}

/// A run set's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub agents: Vec<usize>,
    /// Tasks per run for K > 1.
    pub tasks: usize,
    /// Tasks per run for K = 1, which is slow (one fsync per handoff).
    pub tasks_single: usize,
    pub payload_bytes: usize,
    /// Measured rounds per K; each round runs every system once.
    pub runs: usize,
    pub systems: Vec<System>,
    /// Where the per-run data directories are made (and removed).
    pub dir: PathBuf,
    /// Before each run, wait up to this long for other processes to quiet down.
    pub quiet_wait_s: u64,
    /// Run every system once, unrecorded, before the first measured round.
    pub warmup: bool,
}

/// Other processes may use this many cores during a run before it counts as
/// disturbed (the noise gate of docs/glossary.md: 20% of a core).
pub const FOREIGN_CORES_MAX: f64 = 0.2;

/// Tasks in a warm-up run: enough to touch every code path and warm caches.
const WARMUP_TASKS_MAX: usize = 2_000;

/// What one system's run is given.
pub struct RunParams {
    pub agents: usize,
    pub tasks: usize,
    pub payload: String,
    /// A fresh, empty directory for this run's database.
    pub dir: PathBuf,
}

/// What one run measured, before summarising.
pub struct Measured {
    pub handoffs: u64,
    pub usage: Usage,
    /// Per handoff, what an agent waits between finishing one task and holding
    /// the next (see each system for its exact definition), in nanoseconds.
    pub step: Histogram<u64>,
    /// Transactions committed, where the system under test can say.
    pub transactions: Option<u64>,
    pub preload_seconds: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub system: System,
    pub agents: usize,
    pub tasks: usize,
    pub round: usize,
    pub handoffs: u64,
    pub seconds: f64,
    pub handoffs_per_s: f64,
    pub step_p50_us: f64,
    pub step_p99_us: f64,
    pub step_max_us: f64,
    pub flushes: Option<u64>,
    pub flushes_per_handoff: Option<f64>,
    pub cpu_seconds: f64,
    pub cpu_s_per_1k_handoffs: f64,
    pub foreign_cpu_seconds: f64,
    pub handoffs_per_transaction: Option<f64>,
    /// The writer thread's CPU seconds per second of run: 1.0 is a full core,
    /// so a single writer near 1.0 is the bottleneck.
    pub writer_busy: Option<f64>,
    /// KiB passed to write system calls per handoff (WAL frames, checkpoints).
    pub written_kib_per_handoff: f64,
    pub preload_seconds: f64,
    /// How long the run waited for the machine to quiet down before starting.
    pub quiet_wait_seconds: f64,
    /// Other processes used more than `FOREIGN_CORES_MAX` cores on average.
    pub disturbed: bool,
}

/// Every run of a set plus the machine; the summary is computed from these.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub config: BenchConfig,
    pub started_unix_s: u64,
    pub runs: Vec<RunResult>,
    pub summary: Vec<report::GroupSummary>,
}

/// Runs the whole set, printing progress to stderr.
pub fn run(config: BenchConfig) -> Result<BenchReport> {
    std::fs::create_dir_all(&config.dir).with_context(|| format!("create {}", config.dir.display()))?;
    let device = match crate::sys::BlockDevice::holding(&config.dir) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("note: no device flush counts: {e:#}");
            None
        }
    };
    let probe = Probe::new(device);
    let machine = Machine::describe(probe.device());
    let payload = pipeline::payload(config.payload_bytes);
    let started_unix_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if config.warmup {
        let agents = config.agents[0];
        let tasks = config.tasks.min(WARMUP_TASKS_MAX);
        for &system in &config.systems {
            eprintln!("warm-up: {} at K={agents}, {tasks} tasks", system.label());
            let dir = fresh_dir(&config.dir, &format!("warmup-{system:?}"))?;
            let params = RunParams { agents, tasks, payload: payload.clone(), dir: dir.clone() };
            run_system(system, &params, &probe)?;
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let mut runs = Vec::new();
    for &agents in &config.agents {
        let tasks = if agents == 1 { config.tasks_single } else { config.tasks };
        for round in 0..config.runs {
            for &system in &config.systems {
                let dir = fresh_dir(&config.dir, &format!("k{agents}-r{round}-{system:?}"))?;
                let params = RunParams { agents, tasks, payload: payload.clone(), dir: dir.clone() };
                // --quiet-wait-s 0 skips even the first one-second sample.
                let (waited, load) = if config.quiet_wait_s == 0 {
                    (Duration::ZERO, 0.0)
                } else {
                    crate::sys::wait_for_quiet(FOREIGN_CORES_MAX, Duration::from_secs(config.quiet_wait_s))?
                };
                if load >= FOREIGN_CORES_MAX {
                    eprintln!(
                        "note: other processes still use {load:.2} cores after {waited:.0?}; running anyway"
                    );
                }
                eprint!("K={agents:<3} round {}/{} {:<22} ", round + 1, config.runs, system.label());
                let measured = run_system(system, &params, &probe)
                    .with_context(|| format!("{} at K={agents}, round {}", system.label(), round + 1))?;
                let mut result = summarise_run(system, &params, round, &measured);
                result.quiet_wait_seconds = waited.as_secs_f64();
                eprintln!(
                    "{:>9.0} handoffs/s  p50 {:>7.1} µs  p99 {:>8.1} µs  flushes/handoff {}  KiB/handoff {:.1}  cpu s/1k {:.3}  \
                     handoffs/txn {}  writer busy {}  foreign cpu {:.2} s{}",
                    result.handoffs_per_s,
                    result.step_p50_us,
                    result.step_p99_us,
                    result.flushes_per_handoff.map_or("n/a".into(), |f| format!("{f:.3}")),
                    result.written_kib_per_handoff,
                    result.cpu_s_per_1k_handoffs,
                    result.handoffs_per_transaction.map_or("n/a".into(), |f| format!("{f:.1}")),
                    result.writer_busy.map_or("n/a".into(), |f| format!("{:.0}%", f * 100.0)),
                    result.foreign_cpu_seconds,
                    if result.disturbed { "  DISTURBED" } else { "" },
                );
                runs.push(result);
                std::fs::remove_dir_all(&dir)?;
            }
        }
    }
    let summary = report::summarise(&config, &runs);
    Ok(BenchReport { machine, config, started_unix_s, runs, summary })
}

fn run_system(system: System, params: &RunParams, probe: &Probe) -> Result<Measured> {
    match system {
        System::Raw => baselines::run_raw(params, probe),
        System::Ideal => baselines::run_ideal(params, probe),
        System::Baton => baton::run_baton(params, probe),
    }
}

/// An empty directory `name` under `root` (lower-cased), emptied if it exists.
fn fresh_dir(root: &std::path::Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name.to_lowercase());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn summarise_run(system: System, p: &RunParams, round: usize, m: &Measured) -> RunResult {
    let us = |ns: u64| ns as f64 / 1_000.0;
    let handoffs = m.handoffs as f64;
    RunResult {
        system,
        agents: p.agents,
        tasks: p.tasks,
        round,
        handoffs: m.handoffs,
        seconds: m.usage.seconds,
        handoffs_per_s: handoffs / m.usage.seconds,
        step_p50_us: us(m.step.value_at_quantile(0.50)),
        step_p99_us: us(m.step.value_at_quantile(0.99)),
        step_max_us: us(m.step.max()),
        flushes: m.usage.flushes,
        flushes_per_handoff: m.usage.flushes.map(|f| f as f64 / handoffs),
        cpu_seconds: m.usage.cpu_seconds,
        cpu_s_per_1k_handoffs: m.usage.cpu_seconds / handoffs * 1_000.0,
        foreign_cpu_seconds: m.usage.foreign_cpu_seconds,
        handoffs_per_transaction: m.transactions.map(|t| handoffs / t as f64),
        writer_busy: m.usage.writer_cpu_seconds.map(|c| c / m.usage.seconds),
        written_kib_per_handoff: m.usage.written_bytes as f64 / 1024.0 / handoffs,
        preload_seconds: m.preload_seconds,
        quiet_wait_seconds: 0.0,
        disturbed: m.usage.foreign_cpu_seconds > FOREIGN_CORES_MAX * m.usage.seconds,
    }
}

/// A latency histogram in nanoseconds, from 1 ns to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration, saturating at the histogram's top.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole run set on a tiny workload: every system finishes, counts
    /// 3 handoffs per task, and the report has a ratio for every figure that
    /// takes one. Plumbing only: nothing here looks at speed.
    #[test]
    fn a_tiny_run_set_measures_every_system() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = BenchConfig {
            agents: vec![1, 4],
            tasks: 24,
            tasks_single: 6,
            payload_bytes: 64,
            runs: 1,
            systems: System::ALL.to_vec(),
            dir: dir.path().join("runs"),
            quiet_wait_s: 0,
            warmup: false,
        };
        let report = run(config).expect("the run set completes");
        assert_eq!(report.runs.len(), 6);
        for r in &report.runs {
            let tasks = if r.agents == 1 { 6 } else { 24 };
            assert_eq!((r.tasks, r.handoffs), (tasks, tasks as u64 * 3), "{:?} at K={}", r.system, r.agents);
            assert!(r.handoffs_per_s > 0.0 && r.step_p50_us > 0.0, "{r:?}");
        }
        for group in &report.summary {
            let ratios = group.ratios.iter().filter(|r| r.metric == report::Metric::HandoffsPerS).count();
            assert_eq!(ratios, 2, "K={}: a throughput ratio to each baseline", group.agents);
        }
        let table = report::markdown(&report);
        assert!(table.contains("### K = 4 agents") && table.contains("Baton ÷ ideal"), "{table}");
        assert!(!dir.path().join("runs").read_dir().expect("runs dir").any(|_| true), "run dirs are removed");
    }
}
