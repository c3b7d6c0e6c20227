//! `bench-http`: HB3 over HTTP (goals G1, G2, G4 of docs/glossary.md).
//! A real `baton dev` process is spawned per run in a fresh directory; K
//! agents on a tokio runtime drive the 3-stage pipeline (a → b → c → done)
//! through `baton-client`, using claim-next on every handoff and complete, so
//! a busy agent makes one round trip per task and stage. The same run set
//! measures the store bench's raw single-commit and ideal batching-writer
//! baselines at the same K, interleaved (raw, ideal, HTTP; raw, ...).
//!
//! Counted as in `bench-store`: 3 handoffs per task; N tasks are submitted
//! into `a` before the clock starts (untimed, concurrently).
//!
//! * handoff latency: from an agent *sending* its handoff (or complete) of a
//!   task at stage i to some agent *receiving* that task's lease at stage
//!   i+1, from a claim or a claim-next. `Instant` is `CLOCK_MONOTONIC`; the
//!   send time is kept per (task, stage) and matched by task id.
//! * complete round trip: one handoff or complete call, send to answer.
//! * end-to-end (low load): 3 agents, one per stage, tasks submitted one at a
//!   time; submit sent to the final complete's answer.
//! * CPU per 1,000 handoffs: the server process (`/proc/PID/stat`) and the
//!   harness process (the agents) separately.

use super::pipeline::{self, STAGES, assign};
use super::{FOREIGN_CORES_MAX, RunParams, baselines, histogram, record};
use crate::sys::{self, Machine, Probe};
use anyhow::{Context as _, Result, bail, ensure};
use baton_client::api::{ActResponse, ClaimNext, CompleteRequest, HandoffRequest, Payload, SubmitRequest};
use baton_client::{Client, Lease, TaskId};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// How long an idle agent's claim long-polls before asking again.
const CLAIM_WAIT_MS: u64 = 2_000;

/// Submits in flight while preloading.
const PRELOAD_CONCURRENCY: usize = 32;

/// A run set's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub agents: Vec<usize>,
    pub tasks: usize,
    pub payload_bytes: usize,
    pub runs: usize,
    /// Tasks of the low-load end-to-end measurement, per round.
    pub e2e_tasks: usize,
    /// The `baton` binary spawned as `baton dev`.
    pub baton: PathBuf,
    pub dir: PathBuf,
    pub quiet_wait_s: u64,
}

/// The systems of a run set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpSystem {
    Raw,
    Ideal,
    BatonHttp,
}

impl HttpSystem {
    pub const ALL: [HttpSystem; 3] = [Self::Raw, Self::Ideal, Self::BatonHttp];

    pub fn label(self) -> &'static str {
        match self {
            Self::Raw => "raw single commit",
            Self::Ideal => "ideal batching writer",
            Self::BatonHttp => "Baton over HTTP",
        }
    }
}

/// One run's figures. Latencies in microseconds; the handoff and complete
/// figures exist for Baton over HTTP only, the step figures for the baselines.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRun {
    pub system: HttpSystem,
    pub agents: usize,
    pub tasks: usize,
    pub round: usize,
    pub handoffs: u64,
    pub seconds: f64,
    pub handoffs_per_s: f64,
    pub step_p50_us: Option<f64>,
    pub step_p99_us: Option<f64>,
    pub handoff_p50_us: Option<f64>,
    pub handoff_p99_us: Option<f64>,
    pub complete_rtt_p50_us: Option<f64>,
    pub complete_rtt_p99_us: Option<f64>,
    pub flushes_per_handoff: Option<f64>,
    /// The harness process: the agents (and, for the baselines, the system itself).
    pub client_cpu_s_per_1k: f64,
    /// The `baton dev` process.
    pub server_cpu_s_per_1k: Option<f64>,
    pub foreign_cpu_seconds: f64,
    pub disturbed: bool,
}

/// The low-load end-to-end measurement of one round.
#[derive(Debug, Clone, Serialize)]
pub struct E2eRun {
    pub round: usize,
    pub tasks: usize,
    pub e2e_p50_us: f64,
    pub e2e_p99_us: f64,
    pub handoff_p50_us: f64,
    pub handoff_p99_us: f64,
    pub complete_rtt_p50_us: f64,
}

/// Median and range over rounds: the same figure type as bench-store's.
pub use super::report::Stat;

/// Per agent count: each figure's median over rounds, per system, and ratios.
#[derive(Debug, Clone, Serialize)]
pub struct HttpGroup {
    pub agents: usize,
    pub tasks: usize,
    pub figures: Vec<(HttpSystem, String, Stat)>,
    /// Baton over HTTP handoffs/s ÷ raw single commit (median of per-round ratios' range kept too).
    pub vs_raw: Option<Stat>,
    pub vs_ideal: Option<Stat>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub machine: Machine,
    pub config: HttpConfig,
    pub started_unix_s: u64,
    pub runs: Vec<HttpRun>,
    pub e2e: Vec<E2eRun>,
    pub groups: Vec<HttpGroup>,
    pub e2e_p50_us: Option<Stat>,
    /// G1: Baton over HTTP at 1 agent ÷ raw single commit (handoffs/s).
    pub g1_ratio: Option<Stat>,
    /// G2: Baton over HTTP at 64 agents (or the largest K) ÷ ideal batching writer.
    pub g2_ratio: Option<Stat>,
    pub g2_agents: Option<usize>,
}

/// The default `baton` binary: next to this harness binary.
pub fn default_baton() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("baton")))
        .unwrap_or_else(|| PathBuf::from("baton"))
}

pub fn run(config: HttpConfig) -> Result<HttpReport> {
    ensure!(
        config.baton.is_file(),
        "no baton binary at {} (build it, or pass --baton)",
        config.baton.display()
    );
    std::fs::create_dir_all(&config.dir).with_context(|| format!("create {}", config.dir.display()))?;
    let device = sys::BlockDevice::holding(&config.dir).ok();
    let probe = Probe::new(device);
    let machine = Machine::describe(probe.device());
    let payload = pipeline::payload(config.payload_bytes);
    let started_unix_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    let mut runs = Vec::new();
    let mut e2e = Vec::new();
    for round in 0..config.runs {
        if config.e2e_tasks > 0 {
            let dir = fresh_dir(&config.dir, &format!("e2e-r{round}"))?;
            let e = runtime
                .block_on(run_e2e(&config.baton, &dir, config.e2e_tasks, &payload, round))
                .context("end-to-end run")?;
            eprintln!(
                "e2e round {}/{}: p50 {:.0} µs  p99 {:.0} µs  handoff p50 {:.0} µs  complete rtt p50 {:.0} µs",
                round + 1,
                config.runs,
                e.e2e_p50_us,
                e.e2e_p99_us,
                e.handoff_p50_us,
                e.complete_rtt_p50_us
            );
            e2e.push(e);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    for &agents in &config.agents {
        for round in 0..config.runs {
            for system in HttpSystem::ALL {
                let dir = fresh_dir(&config.dir, &format!("k{agents}-r{round}-{system:?}"))?;
                let (waited, load) =
                    sys::wait_for_quiet(FOREIGN_CORES_MAX, Duration::from_secs(config.quiet_wait_s))?;
                if load >= FOREIGN_CORES_MAX {
                    eprintln!("note: other processes use {load:.2} cores after {waited:.0?}; running anyway");
                }
                eprint!("K={agents:<3} round {}/{} {:<22} ", round + 1, config.runs, system.label());
                let params =
                    RunParams { agents, tasks: config.tasks, payload: payload.clone(), dir: dir.clone() };
                let r = match system {
                    HttpSystem::Raw => {
                        baseline_run(system, &params, round, baselines::run_raw(&params, &probe)?)
                    }
                    HttpSystem::Ideal => {
                        baseline_run(system, &params, round, baselines::run_ideal(&params, &probe)?)
                    }
                    HttpSystem::BatonHttp => runtime
                        .block_on(run_http(&config.baton, &params, round, &probe))
                        .with_context(|| format!("Baton over HTTP at K={agents}, round {}", round + 1))?,
                };
                eprintln!(
                    "{:>8.0} handoffs/s  handoff p50/p99 {}  complete rtt p50/p99 {}  cpu s/1k client {:.3} server {}{}",
                    r.handoffs_per_s,
                    pair(r.handoff_p50_us, r.handoff_p99_us),
                    pair(r.complete_rtt_p50_us, r.complete_rtt_p99_us),
                    r.client_cpu_s_per_1k,
                    r.server_cpu_s_per_1k.map_or("n/a".into(), |c| format!("{c:.3}")),
                    if r.disturbed { "  DISTURBED" } else { "" }
                );
                runs.push(r);
                std::fs::remove_dir_all(&dir)?;
            }
        }
    }
    Ok(summarise(machine, config, started_unix_s, runs, e2e))
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a:.0}/{b:.0} µs"),
        _ => "n/a".into(),
    }
}

fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(format!("http-{}", name.to_lowercase()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}

fn baseline_run(system: HttpSystem, p: &RunParams, round: usize, m: super::Measured) -> HttpRun {
    let handoffs = m.handoffs as f64;
    HttpRun {
        system,
        agents: p.agents,
        tasks: p.tasks,
        round,
        handoffs: m.handoffs,
        seconds: m.usage.seconds,
        handoffs_per_s: handoffs / m.usage.seconds,
        step_p50_us: Some(us(&m.step, 0.5)),
        step_p99_us: Some(us(&m.step, 0.99)),
        handoff_p50_us: None,
        handoff_p99_us: None,
        complete_rtt_p50_us: None,
        complete_rtt_p99_us: None,
        flushes_per_handoff: m.usage.flushes.map(|f| f as f64 / handoffs),
        client_cpu_s_per_1k: m.usage.cpu_seconds / handoffs * 1_000.0,
        server_cpu_s_per_1k: None,
        foreign_cpu_seconds: m.usage.foreign_cpu_seconds,
        disturbed: m.usage.foreign_cpu_seconds > FOREIGN_CORES_MAX * m.usage.seconds,
    }
}

/// Which server a run starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServerKind<'a> {
    /// `baton dev` (SQLite) from this `baton` binary.
    Dev(&'a Path),
    /// `baton-harness serve-memory` from this harness binary: the same
    /// server over the in-memory store.
    Memory(&'a Path),
}

/// A spawned `baton dev` (or `serve-memory`), killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) address: String,
}

impl Server {
    pub(crate) fn start(baton: &Path, dir: &Path) -> Result<Self> {
        Self::start_kind(ServerKind::Dev(baton), dir)
    }

    pub(crate) fn start_kind(kind: ServerKind<'_>, dir: &Path) -> Result<Self> {
        let mut command = match kind {
            ServerKind::Dev(baton) => {
                let mut c = Command::new(baton);
                c.args(["dev", "--listen", "127.0.0.1:0", "--data-dir", ".baton"]);
                c
            }
            ServerKind::Memory(harness) => {
                let mut c = Command::new(harness);
                c.args(["serve-memory", "--listen", "127.0.0.1:0"]);
                c
            }
        };
        let (ServerKind::Dev(program) | ServerKind::Memory(program)) = kind;
        let mut child = command
            .current_dir(dir)
            .env_remove("BATON_LISTEN")
            .env_remove("BATON_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdout = child.stdout.take().context("baton dev stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut address = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.trim().strip_prefix("API:") {
                address = Some(rest.trim().trim_end_matches("/v1").to_owned());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let Some(address) = address else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} exited before printing its address", program.display());
        };
        Ok(Self { child, address })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let rest = stat.rsplit_once(')').context("stat line")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11).context("utime")?.parse()?;
        let stime: u64 = f.get(12).context("stime")?.parse()?;
        Ok((utime + stime) as f64 / USER_HZ)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the agents share during a run.
struct Shared {
    /// Send time of each task's handoff into stage index s (1, 2).
    sent: Mutex<HashMap<(TaskId, usize), Instant>>,
    handoff: Mutex<Histogram<u64>>,
    rtt: Mutex<Histogram<u64>>,
    done: AtomicUsize,
    target: usize,
    end: Mutex<Option<Instant>>,
    over: tokio::sync::watch::Sender<bool>,
    /// Per finished task, for the end-to-end measurement.
    finished: tokio::sync::mpsc::UnboundedSender<TaskId>,
}

impl Shared {
    fn received(&self, lease: &Lease) {
        let Some(stage) = STAGES.iter().position(|s| *s == lease.stage) else { return };
        if stage == 0 {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.sent.lock().expect("sent").remove(&(lease.task, stage)) {
            record(&mut self.handoff.lock().expect("hist"), now.saturating_duration_since(t));
        }
    }

    fn finished_one(&self, task: TaskId) {
        let _ = self.finished.send(task);
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.end.lock().expect("end") = Some(Instant::now());
            let _ = self.over.send(true);
        }
    }
}

/// One agent: claim (long poll) when idle; hand off or complete with
/// claim-next while busy, so a busy agent makes one call per task.
async fn agent(client: Client, stages: Vec<usize>, shared: Arc<Shared>) -> Result<()> {
    let names: Vec<String> = stages.iter().map(|&s| STAGES[s].to_owned()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let next = ClaimNext { stages: names.clone(), max: 1, lease_ms: None };
    let mut over = shared.over.subscribe();
    let mut held: Option<Lease> = None;
    loop {
        if *over.borrow() {
            return Ok(());
        }
        let Some(lease) = held.take() else {
            let leases = tokio::select! {
                r = client.claim_from(&refs, 1, CLAIM_WAIT_MS) => r?,
                _ = over.changed() => return Ok(()),
            };
            for l in &leases {
                shared.received(l);
            }
            held = leases.into_iter().next();
            continue;
        };
        let stage = STAGES.iter().position(|s| *s == lease.stage).context("unknown stage")?;
        let t0 = Instant::now();
        if stage + 1 < STAGES.len() {
            shared.sent.lock().expect("sent").insert((lease.task, stage + 1), t0);
        }
        let answer = pass_on(&client, &lease, stage, &next).await?;
        record(&mut shared.rtt.lock().expect("hist"), t0.elapsed());
        for l in &answer.next {
            shared.received(l);
        }
        if stage + 1 == STAGES.len() {
            shared.finished_one(lease.task);
        }
        held = answer.next.into_iter().next();
    }
}

/// The call that ends a held task's stage `stage` of HB3: a handoff to the
/// next stage, or complete after the last; either carries claim-next.
pub(super) async fn pass_on(
    client: &Client,
    lease: &Lease,
    stage: usize,
    next: &ClaimNext,
) -> Result<ActResponse, baton_client::Error> {
    if stage + 1 < STAGES.len() {
        let request = HandoffRequest {
            epoch: lease.epoch,
            agent: None,
            to_stage: STAGES[stage + 1].to_owned(),
            note: None,
            findings: None,
            confidence: None,
            claim_next: Some(next.clone()),
        };
        client.handoff(lease.task, &request).await
    } else {
        let request =
            CompleteRequest { epoch: lease.epoch, claim_next: Some(next.clone()), ..Default::default() };
        client.complete(lease.task, &request).await
    }
}

fn shared(target: usize) -> (Arc<Shared>, tokio::sync::mpsc::UnboundedReceiver<TaskId>) {
    let (over, _) = tokio::sync::watch::channel(target == 0);
    let (finished, finished_rx) = tokio::sync::mpsc::unbounded_channel();
    let s = Shared {
        sent: Mutex::new(HashMap::new()),
        handoff: Mutex::new(histogram()),
        rtt: Mutex::new(histogram()),
        done: AtomicUsize::new(0),
        target,
        end: Mutex::new(None),
        over,
        finished,
    };
    (Arc::new(s), finished_rx)
}

fn spawn_agents(
    address: &str,
    plan: Vec<Vec<usize>>,
    shared: &Arc<Shared>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    plan.into_iter()
        .enumerate()
        .map(|(i, stages)| {
            let client = Client::new(address)?.with_agent(format!("bench-agent-{i}"));
            Ok(tokio::spawn(agent(client, stages, Arc::clone(shared))))
        })
        .collect()
}

/// What one Baton-over-HTTP burn-down measured, for `bench`.
pub(crate) struct HttpSample {
    pub handoffs: u64,
    pub usage: sys::Usage,
    /// Handoff or complete round trips.
    pub rtt: Histogram<u64>,
    /// Send of a handoff to the next stage's lease.
    pub handoff: Histogram<u64>,
    pub server_cpu_s: f64,
    pub server_rss_kib: Option<u64>,
}

async fn run_http(baton: &Path, p: &RunParams, round: usize, probe: &Probe) -> Result<HttpRun> {
    let s = run_http_sample(ServerKind::Dev(baton), p, probe).await?;
    let handoffs = s.handoffs as f64;
    let (usage, h, rtt, server_cpu) = (s.usage, s.handoff, s.rtt, s.server_cpu_s);
    Ok(HttpRun {
        system: HttpSystem::BatonHttp,
        agents: p.agents,
        tasks: p.tasks,
        round,
        handoffs: handoffs as u64,
        seconds: usage.seconds,
        handoffs_per_s: handoffs / usage.seconds,
        step_p50_us: None,
        step_p99_us: None,
        handoff_p50_us: Some(us(&h, 0.5)),
        handoff_p99_us: Some(us(&h, 0.99)),
        complete_rtt_p50_us: Some(us(&rtt, 0.5)),
        complete_rtt_p99_us: Some(us(&rtt, 0.99)),
        flushes_per_handoff: usage.flushes.map(|f| f as f64 / handoffs),
        client_cpu_s_per_1k: usage.cpu_seconds / handoffs * 1_000.0,
        server_cpu_s_per_1k: Some(server_cpu / handoffs * 1_000.0),
        // The server is not foreign here.
        foreign_cpu_seconds: (usage.foreign_cpu_seconds - server_cpu).max(0.0),
        disturbed: (usage.foreign_cpu_seconds - server_cpu) > FOREIGN_CORES_MAX * usage.seconds,
    })
}

/// One burn-down against a fresh `baton dev` in `p.dir`.
pub(crate) async fn run_http_sample(
    server: ServerKind<'_>,
    p: &RunParams,
    probe: &Probe,
) -> Result<HttpSample> {
    let server = Server::start_kind(server, &p.dir)?;
    let client = Client::new(&server.address)?;
    let payload = Payload::from_json(p.payload.clone())?;
    // Preload, untimed: N submits into `a`, some in flight at once.
    let next = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..PRELOAD_CONCURRENCY.min(p.tasks.max(1)))
        .map(|_| {
            let (client, payload, next, n) = (client.clone(), payload.clone(), Arc::clone(&next), p.tasks);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    client.submit(&SubmitRequest::new(STAGES[0], payload.clone())).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for l in loaders {
        l.await??;
    }

    let (shared, _finished) = shared(p.tasks);
    let server_cpu = server.cpu_seconds()?;
    let mark = probe.start(None)?;
    let agents = spawn_agents(&server.address, assign(p.agents), &shared)?;
    for a in agents {
        a.await??;
    }
    let end = shared.end.lock().expect("end").context("the run ended without finishing its tasks")?;
    let usage = probe.stop(&mark, end)?;
    let server_cpu = server.cpu_seconds()? - server_cpu;
    let handoffs = (p.tasks * STAGES.len()) as u64;
    let h = shared.handoff.lock().expect("hist").clone();
    let rtt = shared.rtt.lock().expect("hist").clone();
    ensure!(rtt.len() == handoffs, "{} handoff calls for {handoffs} handoffs", rtt.len());
    let server_rss_kib = sys::rss_kib(Some(server.child.id()));
    Ok(HttpSample { handoffs, usage, rtt, handoff: h, server_cpu_s: server_cpu, server_rss_kib })
}

/// Low load: one agent per stage, tasks submitted one at a time; each
/// task's submit sent to its final complete answered.
async fn run_e2e(baton: &Path, dir: &Path, tasks: usize, payload: &str, round: usize) -> Result<E2eRun> {
    let server = Server::start(baton, dir)?;
    let client = Client::new(&server.address)?;
    let payload = Payload::from_json(payload.to_owned())?;
    let (shared, mut finished) = shared(tasks);
    let agents = spawn_agents(&server.address, assign(STAGES.len()), &shared)?;
    // Let the agents' first long polls reach the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut e2e = histogram();
    for _ in 0..tasks {
        let t0 = Instant::now();
        let task = client.submit(&SubmitRequest::new(STAGES[0], payload.clone())).await?.task.id;
        let done = tokio::time::timeout(Duration::from_secs(30), finished.recv())
            .await
            .context("a task did not finish within 30 s")?
            .context("agents gone")?;
        ensure!(done == task, "finished {done}, expected {task}");
        record(&mut e2e, t0.elapsed());
    }
    for a in agents {
        a.await??;
    }
    let h = shared.handoff.lock().expect("hist");
    let rtt = shared.rtt.lock().expect("hist");
    Ok(E2eRun {
        round,
        tasks,
        e2e_p50_us: us(&e2e, 0.5),
        e2e_p99_us: us(&e2e, 0.99),
        handoff_p50_us: us(&h, 0.5),
        handoff_p99_us: us(&h, 0.99),
        complete_rtt_p50_us: us(&rtt, 0.5),
    })
}

type Getter = fn(&HttpRun) -> Option<f64>;

const METRICS: [(&str, Getter, usize); 9] = [
    ("handoffs/s", |r| Some(r.handoffs_per_s), 0),
    ("handoff p50 µs", |r| r.handoff_p50_us, 0),
    ("handoff p99 µs", |r| r.handoff_p99_us, 0),
    ("complete rtt p50 µs", |r| r.complete_rtt_p50_us, 0),
    ("complete rtt p99 µs", |r| r.complete_rtt_p99_us, 0),
    ("step p50 µs (baselines)", |r| r.step_p50_us, 0),
    ("flushes/handoff", |r| r.flushes_per_handoff, 3),
    ("server CPU s/1k handoffs", |r| r.server_cpu_s_per_1k, 3),
    ("client CPU s/1k handoffs", |r| Some(r.client_cpu_s_per_1k), 3),
];

fn ratio(runs: &[HttpRun], agents: usize, base: HttpSystem) -> Option<Stat> {
    let of = |s: HttpSystem| -> HashMap<usize, f64> {
        runs.iter()
            .filter(|r| r.agents == agents && r.system == s)
            .map(|r| (r.round, r.handoffs_per_s))
            .collect()
    };
    let (b, h) = (of(base), of(HttpSystem::BatonHttp));
    Stat::of(h.iter().filter_map(|(round, v)| b.get(round).map(|bv| v / bv)).collect())
}

fn summarise(
    machine: Machine,
    config: HttpConfig,
    started_unix_s: u64,
    runs: Vec<HttpRun>,
    e2e: Vec<E2eRun>,
) -> HttpReport {
    let groups: Vec<HttpGroup> = config
        .agents
        .iter()
        .map(|&agents| {
            let mut figures = Vec::new();
            for (name, get, _) in METRICS {
                for system in HttpSystem::ALL {
                    let values: Vec<f64> = runs
                        .iter()
                        .filter(|r| r.agents == agents && r.system == system)
                        .filter_map(get)
                        .collect();
                    if let Some(s) = Stat::of(values) {
                        figures.push((system, name.to_owned(), s));
                    }
                }
            }
            HttpGroup {
                agents,
                tasks: config.tasks,
                figures,
                vs_raw: ratio(&runs, agents, HttpSystem::Raw),
                vs_ideal: ratio(&runs, agents, HttpSystem::Ideal),
            }
        })
        .collect();
    let g1_ratio = groups.iter().find(|g| g.agents == 1).and_then(|g| g.vs_raw);
    let g2_agents = config.agents.iter().copied().filter(|&k| k > 2).max();
    let g2_ratio = g2_agents.and_then(|k| groups.iter().find(|g| g.agents == k)).and_then(|g| g.vs_ideal);
    let e2e_p50_us = Stat::of(e2e.iter().map(|e| e.e2e_p50_us).collect());
    HttpReport {
        machine,
        config,
        started_unix_s,
        runs,
        e2e,
        groups,
        e2e_p50_us,
        g1_ratio,
        g2_ratio,
        g2_agents,
    }
}

/// The report as Markdown: one table per agent count, the goals' ratios, and the low-load figures.
pub fn markdown(r: &HttpReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "Machine: {} ({} CPUs), {} MiB RAM, kernel {}, disk {}, SQLite {}. N = {} tasks ({} handoffs) per run, \
         {} B payloads, {} interleaved rounds; median [min–max].\n",
        m.cpu_model,
        m.cpus,
        m.memory_kib / 1024,
        m.kernel,
        m.device.as_deref().unwrap_or("?"),
        m.sqlite,
        r.config.tasks,
        r.config.tasks * 3,
        r.config.payload_bytes,
        r.config.runs
    );
    for g in &r.groups {
        let _ = writeln!(out, "**K = {}**\n", g.agents);
        let _ = writeln!(
            out,
            "| metric | {} | {} | {} |",
            HttpSystem::ALL[0].label(),
            HttpSystem::ALL[1].label(),
            HttpSystem::ALL[2].label()
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for (name, _, digits) in METRICS {
            let cells: Vec<String> = HttpSystem::ALL
                .iter()
                .map(|&s| {
                    g.figures
                        .iter()
                        .find(|(fs, n, _)| *fs == s && n == name)
                        .map_or("–".into(), |(_, _, st)| st.show(digits))
                })
                .collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
        let show = |s: Option<Stat>| s.map_or("–".into(), |s| format!("{}x", s.show(2)));
        let _ = writeln!(
            out,
            "\nBaton over HTTP ÷ raw single commit: {}; ÷ ideal batching writer: {}\n",
            show(g.vs_raw),
            show(g.vs_ideal)
        );
    }
    let show = |s: Option<Stat>| s.map_or("–".into(), |s| format!("{}x", s.show(2)));
    let _ = writeln!(out, "| goal | measured | target |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(out, "| G1: 1 agent ÷ raw single commit (handoffs/s) | {} | ≥ 0.8x |", show(r.g1_ratio));
    let _ = writeln!(
        out,
        "| G2: {} agents ÷ ideal batching writer (handoffs/s) | {} | ≥ 0.6x (stretch 1.0x) |",
        r.g2_agents.map_or("–".into(), |k| k.to_string()),
        show(r.g2_ratio)
    );
    if !r.e2e.is_empty() {
        let st = |f: fn(&E2eRun) -> f64| {
            Stat::of(r.e2e.iter().map(f).collect()).map_or("–".into(), |s| s.show(0))
        };
        let _ = writeln!(
            out,
            "| G4 input: 3-stage end-to-end p50 at low load (1 agent per stage, {} tasks one at a time) | {} µs (p99 {} µs) | ≤ 0.5x Restate's |",
            r.config.e2e_tasks,
            st(|e| e.e2e_p50_us),
            st(|e| e.e2e_p99_us)
        );
        let _ = writeln!(
            out,
            "| low-load handoff p50 / p99 (same runs) | {} / {} µs | G1: p50 ≤ 600 µs |",
            st(|e| e.handoff_p50_us),
            st(|e| e.handoff_p99_us)
        );
    }
    out
}
