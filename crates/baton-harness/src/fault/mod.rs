//! The fault runner: real clients (`load`) drive a child `baton dev` (`node`)
//! over HTTP while a `Scenario` injects its fault, cycle after cycle; then
//! the final store is read and both checkers run: the client-history checker
//! (`baton_testkit::history`: what clients were told against the store) and
//! the store checker (`baton_testkit::check_store`: chains, replay, custody).
//! The result is a `FaultReport` (JSON): tasks, faults injected, lost,
//! duplicate accepted completions, stale accepted, stale refused, recovery
//! time p50/p99, and the scenario's own evidence that its fault took effect.
//!
//! A scenario is a value implementing `Scenario`: `prepare` adjusts how the
//! server starts (a wrapper such as strace, environment such as
//! libfaketime's, a data directory on a test filesystem), `inject` does one
//! fault to the running system through `Run` (kill, restart, power cut, clock
//! jump) and `finish` brings the system to the state to check and returns the
//! evidence, and `judge` says what the evidence lacks when the fault did not
//! take effect. Scenarios here: `scenarios::Kill9`, `PowerLoss` (on an
//! honest, lying or failing `Disk`), `FsyncEio`, `ClockJump`, `ClockJumpPg`
//! (`baton serve` on PostgreSQL; the clients use the admin token it prints) and `Soak`;
//! docs/reliability.md describes each and how to add one (another store
//! needs `Scenario::open_store`).

pub mod load;
pub mod node;
pub mod scenarios;

use anyhow::{Context as _, Result};
use baton_core::Store;
use baton_testkit::history::{Outcome, Recorder, Verdict, check_history_against};
use load::{Load, LoadConfig};
use node::{Launch, Node};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Problems listed in a report at most (the counts cover all of them).
pub const REPORT_PROBLEMS_MAX: usize = 20;

/// What a fault run is told.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// The `baton` binary.
    pub baton: PathBuf,
    /// The run's directory (data, logs, mount point); must exist.
    pub dir: PathBuf,
    /// Faults to inject, one per cycle.
    pub cycles: usize,
    /// Load runs this long (ms, uniform in the range) before each fault.
    pub run_ms: (u64, u64),
    pub load: LoadConfig,
    pub seed: u64,
}

impl FaultConfig {
    /// A small configuration for `baton` in `dir` (what the PR tier runs).
    pub fn small(baton: &Path, dir: &Path, seed: u64) -> Self {
        Self {
            baton: baton.to_owned(),
            dir: dir.to_owned(),
            cycles: 4,
            run_ms: (300, 700),
            load: LoadConfig { clients: 8, lease_ms: 2_000, submit_every: 3, work_ms: (0, 20), seed },
            seed,
        }
    }
}

/// The outcome of one run, as written to JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    pub scenario: String,
    pub seed: u64,
    pub seconds: f64,
    pub cycles: usize,
    pub faults_injected: usize,
    /// Tasks in the final store.
    pub tasks: usize,
    pub calls: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub lost: usize,
    pub duplicate_accepted: usize,
    pub stale_accepted: usize,
    pub stale_refused: usize,
    pub refused_but_applied: usize,
    pub unknown_applied: usize,
    pub unknown_not_applied: usize,
    /// Problems the store checker found (chains, replay, custody).
    pub store_problems: usize,
    /// From each fault to the first accepted call sent after it, in ms.
    pub recovery_ms_p50: Option<u64>,
    pub recovery_ms_p99: Option<u64>,
    /// The scenario's evidence that its fault took effect.
    pub evidence: Map<String, Value>,
    /// Whether the evidence shows the fault took effect (`evidence_problems` says why not).
    pub fault_took_effect: bool,
    pub evidence_problems: Vec<String>,
    /// The first problems found, both checkers.
    pub problems: Vec<String>,
}

impl FaultReport {
    /// No lost, duplicate or stale acceptance, no refusal that took effect, a clean store.
    pub fn passed(&self) -> bool {
        self.lost
            + self.duplicate_accepted
            + self.stale_accepted
            + self.refused_but_applied
            + self.store_problems
            == 0
    }
}

/// One fault, done to a running system.
pub trait Scenario {
    fn name(&self) -> String;

    /// False for a run without faults (the soak): no fault is then expected.
    fn injects_faults(&self) -> bool {
        true
    }

    /// Adjusts the load for this fault (lease length, work time); the default keeps it.
    fn tune(&self, _config: &mut FaultConfig) {}

    /// Adjusts the launch before the first start; `dir` is the run's directory.
    fn prepare(&mut self, _launch: &mut Launch, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Called once the first server answers, before the load starts.
    fn started(&mut self, _run: &mut Run) -> Result<()> {
        Ok(())
    }

    /// Injects one fault (cycle `cycle`) and leaves the system serving again.
    fn inject(&mut self, run: &mut Run, cycle: usize) -> Result<()>;

    /// After the load stopped: brings the system to the state to check (the
    /// server stopped) and returns the evidence that the fault took effect.
    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>>;

    /// Reads the finished report: why the evidence falls short of showing
    /// that the fault took effect (empty: it does).
    fn judge(&self, _report: &FaultReport) -> Vec<String> {
        Vec::new()
    }

    /// Opens the store to check; by default Baton's SQLite file in the data directory.
    fn open_store(&self, launch: &Launch) -> Result<Arc<dyn Store>> {
        Ok(crate::store::open_sqlite(&launch.data_dir.join("baton.db"))?)
    }
}

/// A run in progress: the server, the clients' history, the fault times.
pub struct Run {
    pub launch: Launch,
    pub recorder: Recorder,
    pub node: Option<Node>,
    /// The admin token of a server with auth on (`baton serve`), from its first start.
    pub token: Option<String>,
    starts: usize,
    /// Recorder times (ms) of each fault, for recovery times.
    pub fault_times: Vec<u64>,
    pub rng: crate::crash::SplitMix,
}

impl Run {
    /// Starts the server (again) and waits until it prints its banner (it listens then).
    pub fn start(&mut self) -> Result<()> {
        let node = Node::start(&self.launch, self.starts)?;
        self.starts += 1;
        if node.admin_token.is_some() {
            self.token.clone_from(&node.admin_token);
        }
        self.node = Some(node);
        Ok(())
    }

    /// Notes that a fault happens now.
    pub fn mark_fault(&mut self) {
        self.fault_times.push(self.recorder.elapsed_ms());
    }

    /// SIGKILLs the server and reaps it; returns its exit status.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        self.node.take().and_then(|mut n| n.kill())
    }
}

/// Runs `scenario` under load for `config.cycles` faults, then checks.
pub fn run(scenario: &mut dyn Scenario, config: &FaultConfig) -> Result<FaultReport> {
    let started = Instant::now();
    let mut config = config.clone();
    scenario.tune(&mut config);
    let config = &config;
    let mut launch = Launch::new(&config.baton, &config.dir)?;
    scenario.prepare(&mut launch, &config.dir).with_context(|| format!("prepare {}", scenario.name()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut run = Run {
        launch,
        recorder: Recorder::default(),
        node: None,
        token: None,
        starts: 0,
        fault_times: Vec::new(),
        rng: crate::crash::SplitMix::new(config.seed),
    };
    run.start()?;
    scenario.started(&mut run)?;
    let load = {
        let _entered = runtime.enter();
        Load::start(&run.launch.address(), &config.load, &run.recorder, run.token.as_deref())?
    };
    let mut failure = None;
    for cycle in 0..config.cycles {
        let ms = run.rng.range(config.run_ms.0, config.run_ms.1 + 1);
        std::thread::sleep(Duration::from_millis(ms));
        if let Err(e) = scenario.inject(&mut run, cycle) {
            failure = Some(e.context(format!("{} cycle {cycle}", scenario.name())));
            break;
        }
    }
    // Let the last recovery show before the clients stop.
    std::thread::sleep(Duration::from_millis(config.run_ms.0));
    let skew = Arc::clone(&load.skew);
    runtime.block_on(load.stop());
    if let Some(e) = failure {
        run.kill();
        return Err(e);
    }
    let mut evidence = scenario.finish(&mut run)?;
    run.kill();
    let (min, max) = (
        skew.min_ms.load(std::sync::atomic::Ordering::Relaxed),
        skew.max_ms.load(std::sync::atomic::Ordering::Relaxed),
    );
    if min <= max {
        evidence.insert("server_clock_skew_ms".into(), serde_json::json!([min, max]));
    }
    let store = scenario.open_store(&run.launch)?;
    let entries = run.recorder.entries();
    let verdict = check_history_against(store.as_ref(), &entries).map_err(anyhow::Error::msg)?;
    let store_problems = baton_testkit::check_store(store.as_ref()).err().unwrap_or_default();
    let expired = count_expiries(store.as_ref());
    evidence.insert("lease_expiries".into(), expired.into());
    let recoveries = recovery_times(&entries, &run.fault_times);
    drop(store);
    let mut report =
        report(scenario.name(), config, &run, verdict, store_problems, recoveries, evidence, started);
    if report.faults_injected == 0 && scenario.injects_faults() {
        report.evidence_problems.push("no fault was injected".into());
    }
    report.evidence_problems.extend(scenario.judge(&report));
    report.fault_took_effect = report.evidence_problems.is_empty();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn report(
    scenario: String,
    config: &FaultConfig,
    run: &Run,
    v: Verdict,
    store_problems: Vec<String>,
    mut recoveries: Vec<u64>,
    evidence: Map<String, Value>,
    started: Instant,
) -> FaultReport {
    recoveries.sort_unstable();
    let pct = |q: f64| -> Option<u64> {
        (!recoveries.is_empty()).then(|| recoveries[((recoveries.len() - 1) as f64 * q).round() as usize])
    };
    let mut problems = v.problems();
    problems.extend(store_problems.iter().map(|p| format!("store checker: {p}")));
    problems.truncate(REPORT_PROBLEMS_MAX);
    FaultReport {
        scenario,
        seed: config.seed,
        seconds: started.elapsed().as_secs_f64(),
        cycles: config.cycles,
        faults_injected: run.fault_times.len(),
        tasks: v.tasks,
        calls: v.calls,
        ok: v.ok,
        failed: v.failed,
        unknown: v.unknown,
        lost: v.lost.len(),
        duplicate_accepted: v.duplicate_accepted.len(),
        stale_accepted: v.stale_accepted.len(),
        stale_refused: v.stale_refused,
        refused_but_applied: v.refused_but_applied.len(),
        unknown_applied: v.unknown_applied,
        unknown_not_applied: v.unknown_not_applied,
        store_problems: store_problems.len(),
        recovery_ms_p50: pct(0.5),
        recovery_ms_p99: pct(0.99),
        evidence,
        fault_took_effect: false,
        evidence_problems: Vec::new(),
        problems,
    }
}

/// For each fault: from the fault to the first accepted call invoked after it.
fn recovery_times(entries: &[baton_testkit::history::Entry], faults: &[u64]) -> Vec<u64> {
    faults
        .iter()
        .filter_map(|&at| {
            entries
                .iter()
                .filter(|e| e.invoked_ms >= at && matches!(e.outcome, Outcome::Ok { .. }))
                .map(|e| e.returned_ms - at)
                .min()
        })
        .collect()
}

/// Lease expiries in the final store (events of kind `lease_expired`).
fn count_expiries(store: &dyn Store) -> usize {
    let Ok(tasks) = baton_testkit::checker::list_all(store) else { return 0 };
    tasks
        .iter()
        .filter_map(|t| baton_testkit::block_on(store.history(t.id)).ok())
        .map(|events| events.iter().filter(|e| e.kind == baton_core::EventKind::LeaseExpired).count())
        .sum()
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(report: &FaultReport, path: &Path) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("write {}", path.display()))
}

/// A number from a report's evidence (0 when absent).
pub fn evidence_u64(report: &FaultReport, key: &str) -> u64 {
    report.evidence.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The results table of docs/reliability.md: one row per report.
pub fn markdown(reports: &[FaultReport]) -> String {
    let mut out = String::from(
        "| scenario | cycles | faults | tasks | calls (ok / fail / unknown) | lost | duplicate accepted | \
         stale accepted | stale refused | recovery p50 / p99 (ms) | fault took effect | seconds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} ({} / {} / {}) | {} | {} | {} | {} | {} / {} | {} | {:.0} |\n",
            r.scenario,
            r.cycles,
            r.faults_injected,
            r.tasks,
            r.calls,
            r.ok,
            r.failed,
            r.unknown,
            r.lost,
            r.duplicate_accepted,
            r.stale_accepted,
            r.stale_refused,
            ms(r.recovery_ms_p50),
            ms(r.recovery_ms_p99),
            if r.fault_took_effect { "yes" } else { "NO" },
            r.seconds,
        ));
    }
    out
}
