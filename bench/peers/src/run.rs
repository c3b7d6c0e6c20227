//! What every adapter shares: the run's arguments, the HB3 shape (three
//! stages, K agents split across them), the clocks (step and handoff
//! latency histograms, the count of finished tasks and when the last one
//! finished), the handshake with `baton bench`, and the JSON line printed at
//! the end.
//!
//! Handshake (with `--handshake`): after the untimed preload the adapter
//! prints `ready`, waits for `go` on stdin, starts its agents, prints `done`
//! when the last task has finished (so the bench's CPU and flush readings
//! cover the burn-down only), cleans up, and prints the result as one JSON
//! line.

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pipeline: tasks start in `a`; `c`'s agents complete them.
pub const STAGES: [&str; 3] = ["a", "b", "c"];

/// Lease (visibility timeout) every adapter asks for, as HB3 does.
pub const LEASE: Duration = Duration::from_secs(30);

/// Jobs inserted per preload transaction.
pub const PRELOAD_CHUNK: usize = 1_000;

/// How long a run may take unless `--time-limit-s` says otherwise.
const TIME_LIMIT_DEFAULT: Duration = Duration::from_secs(300);

/// How long the bench may take to say `go` after `ready`.
const GO_WAIT_MAX: Duration = Duration::from_secs(60);

/// A run's arguments.
#[derive(Debug, Clone)]
pub struct Args {
    pub system: String,
    pub agents: usize,
    pub tasks: usize,
    pub payload_bytes: usize,
    /// A fresh directory for SQLite files.
    pub dir: PathBuf,
    /// PostgreSQL (an admin connection: the adapter makes and drops a database of its own).
    pub database_url: Option<String>,
    pub time_limit: Duration,
    pub handshake: bool,
}

impl Args {
    /// `run --system S --agents K --tasks N [--payload-bytes P] --dir D [--database-url U]
    /// [--time-limit-s T] [--handshake]`.
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Self> {
        match argv.next().as_deref() {
            Some("run") => {}
            other => bail!("usage: baton-peers run --system ... (got {other:?})"),
        }
        let mut a = Args {
            system: String::new(),
            agents: 0,
            tasks: 0,
            payload_bytes: 1024,
            dir: PathBuf::new(),
            database_url: None,
            time_limit: TIME_LIMIT_DEFAULT,
            handshake: false,
        };
        while let Some(flag) = argv.next() {
            if flag == "--handshake" {
                a.handshake = true;
                continue;
            }
            let value = argv.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--system" => a.system = value,
                "--agents" => a.agents = value.parse()?,
                "--tasks" => a.tasks = value.parse()?,
                "--payload-bytes" => a.payload_bytes = value.parse()?,
                "--dir" => a.dir = value.into(),
                "--database-url" => a.database_url = Some(value),
                "--time-limit-s" => a.time_limit = Duration::from_secs(value.parse()?),
                _ => bail!("unknown option {flag}"),
            }
        }
        if a.agents == 0 || a.tasks == 0 || a.system.is_empty() {
            bail!("--system, --agents and --tasks are required (and positive)");
        }
        Ok(a)
    }

    /// The PostgreSQL URL, for the PostgreSQL peers.
    pub fn database_url(&self) -> Result<&str> {
        self.database_url.as_deref().context("this system needs --database-url")
    }

    /// Agents per stage: with three or more agents each works one stage, spread
    /// as evenly as possible (as `baton bench` does); with fewer, each agent
    /// works every stage, which the adapters model as one shared queue.
    pub fn agents_per_stage(&self) -> Vec<usize> {
        if self.agents < STAGES.len() {
            return vec![self.agents; STAGES.len()];
        }
        (0..STAGES.len())
            .map(|s| self.agents / STAGES.len() + usize::from(s < self.agents % STAGES.len()))
            .collect()
    }

    /// One queue per stage, or one shared queue when K < 3.
    pub fn shared_queue(&self) -> bool {
        self.agents < STAGES.len()
    }

    /// A JSON payload of exactly `payload_bytes` bytes, as `baton bench` makes.
    pub fn payload(&self) -> String {
        format!("{{\"p\":\"{}\"}}", "x".repeat(self.payload_bytes.saturating_sub(8)))
    }
}

/// The clocks and counters of one run, shared by its agents.
pub struct Run {
    sent: Mutex<HashMap<(u64, usize), Instant>>,
    step: Mutex<Histogram<u64>>,
    handoff: Mutex<Histogram<u64>>,
    done: AtomicUsize,
    target: usize,
    end: Mutex<Option<Instant>>,
    over: tokio::sync::watch::Sender<bool>,
    failure: Mutex<Option<String>>,
}

/// A latency histogram in nanoseconds, from 1 ns to 100 s at 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 100_000_000_000, 3)?)
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    if let Ok(mut h) = h.lock() {
        h.saturating_record(ns);
    }
}

impl Run {
    pub fn new(tasks: usize) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            sent: Mutex::new(HashMap::new()),
            step: Mutex::new(histogram()?),
            handoff: Mutex::new(histogram()?),
            done: AtomicUsize::new(0),
            target: tasks,
            end: Mutex::new(None),
            over: tokio::sync::watch::channel(tasks == 0).0,
            failure: Mutex::new(None),
        }))
    }

    /// Stage `stage`'s agent is about to hand `task` on to `stage + 1`:
    /// call before the handoff commits, so the receiver always finds it.
    pub fn sending(&self, task: u64, next_stage: usize, at: Instant) {
        if let Ok(mut s) = self.sent.lock() {
            s.insert((task, next_stage), at);
        }
    }

    /// An agent of `stage` holds `task`: the handoff into `stage` is over.
    pub fn received(&self, task: u64, stage: usize) {
        let at = self.sent.lock().ok().and_then(|mut s| s.remove(&(task, stage)));
        if let Some(at) = at {
            record(&self.handoff, at.elapsed());
        }
    }

    /// One handoff's step: from the agent starting it to its acknowledgement.
    pub fn stepped(&self, took: Duration) {
        record(&self.step, took);
    }

    /// A task left the last stage; the last one ends the run.
    pub fn finished_one(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            if let Ok(mut e) = self.end.lock() {
                *e = Some(Instant::now());
            }
            let _ = self.over.send(true);
        }
    }

    /// Ends the run early: an agent failed.
    pub fn fail(&self, why: String) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(why);
        }
        let _ = self.over.send(true);
    }

    /// A receiver that sees the run end.
    pub fn subscribe_over(&self) -> tokio::sync::watch::Receiver<bool> {
        self.over.subscribe()
    }

    pub fn is_over(&self) -> bool {
        *self.over.borrow()
    }

    /// Waits until the last task finished, an agent failed, or `limit` passed.
    pub async fn wait_over(&self, limit: Duration) -> Result<Instant> {
        let mut over = self.over.subscribe();
        if tokio::time::timeout(limit, over.wait_for(|o| *o)).await.is_err() {
            let _ = self.over.send(true);
            bail!(
                "the run did not finish within {limit:?} ({} of {} tasks done)",
                self.done.load(Ordering::Acquire),
                self.target
            );
        }
        if let Some(f) = self.failure.lock().ok().and_then(|f| f.clone()) {
            bail!("an agent failed: {f}");
        }
        self.end.lock().ok().and_then(|e| *e).context("the run ended without finishing its tasks")
    }

    fn hist(h: &Mutex<Histogram<u64>>) -> Vec<(u64, u64)> {
        h.lock()
            .map(|h| h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
            .unwrap_or_default()
    }
}

/// Prints `ready` and waits for `go` (with `--handshake`); returns when the
/// agents may start.
pub async fn handshake(args: &Args) -> Result<()> {
    if !args.handshake {
        return Ok(());
    }
    println!("ready");
    std::io::stdout().flush()?;
    let line = tokio::time::timeout(
        GO_WAIT_MAX,
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .context("no `go` from the bench")???;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {:?}", line.trim());
    }
    Ok(())
}

/// Tells the bench the burn-down is over (its readings stop here).
pub fn done(args: &Args) -> Result<()> {
    if args.handshake {
        println!("done");
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// The result line.
#[derive(Debug, Serialize)]
pub struct Output {
    pub system: String,
    pub handoffs: u64,
    /// From the agents' start to the last task's completion.
    pub seconds: f64,
    pub preload_seconds: f64,
    /// (value in ns, count) pairs of the step histogram: an agent's handoff
    /// from its start to the system's acknowledgement.
    pub step: Vec<(u64, u64)>,
    /// Stage i's agent starting the handoff to stage i+1's agent holding the task.
    pub handoff: Vec<(u64, u64)>,
    /// Bytes of the database after the run, where the adapter can tell (PostgreSQL).
    pub disk_bytes: Option<u64>,
    /// The durability setting in force, as read back from the database.
    pub durability: String,
    /// How a stage's completion and the next stage's job are written.
    pub completion: String,
}

impl Output {
    pub fn new(args: &Args, run: &Run, start: Instant, end: Instant, preload: Duration) -> Self {
        Self {
            system: args.system.clone(),
            handoffs: args.tasks as u64 * STAGES.len() as u64,
            seconds: end.saturating_duration_since(start).as_secs_f64(),
            preload_seconds: preload.as_secs_f64(),
            step: Run::hist(&run.step),
            handoff: Run::hist(&run.handoff),
            disk_bytes: None,
            durability: String::new(),
            completion: String::new(),
        }
    }
}

/// Microseconds since the Unix epoch, for history records.
pub fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
