//! The library-queue peers of `bench` that live outside Baton's workspace
//! (docs/glossary.md, HB3): River (`riverqueue`) on SQLite and on
//! PostgreSQL, apalis with apalis-sqlite, and pgmq. They use sqlx's SQLite,
//! whose `libsqlite3-sys` cannot share a cargo resolve with our rusqlite, so
//! their adapters are a cargo project of their own, `bench/peers`
//! (`baton-peers`), with its own lock file.
//!
//! The bench builds it at run time, only when one of these systems is
//! selected: `cargo build --release --locked` of `bench/peers` (or
//! `BATON_BENCH_PEERS_DIR`) into `~/.cache/baton-bench-peers/target` (or
//! `BATON_BENCH_PEERS_TARGET`), the crates coming from the registry. A
//! failed build skips these systems with the reason.
//!
//! Each run is one child process (`baton-peers run --handshake ...`): it
//! sets up its database and preloads the N tasks (untimed), prints `ready`;
//! the bench then starts its readings (device flushes, machine CPU, the
//! child's CPU, and for the PostgreSQL peers the cluster's `postgres`
//! processes) and answers `go`; the child prints `done` when its last task
//! has finished (the readings stop there), cleans up, and prints its
//! figures as one JSON line: handoffs, seconds, preload seconds and the
//! step and handoff latency histograms as (value, count) pairs, merged here
//! into the same `Sample` as every other system.

use super::pipeline::STAGES;
use super::suite::{Sample, Summary, Sys};
use super::{RunParams, histogram};
use crate::sys::{self, Probe, Watch};
use anyhow::{Context as _, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether the River runs leave completions to River's batch completer
/// (`BATON_PEERS_RIVER_COMPLETION=batch`, which the child reads too).
pub fn river_batch_completer() -> bool {
    std::env::var("BATON_PEERS_RIVER_COMPLETION").is_ok_and(|v| v == "batch")
}

/// What River lacks next to Baton, printed with its numbers.
pub fn river_gaps() -> &'static str {
    if river_batch_completer() { RIVER_BATCH_GAPS } else { RIVER_GAPS }
}

/// River with the batch completer: the completion is a separate, later write.
const RIVER_BATCH_GAPS: &str = "no atomic ack-and-forward (the worker inserts the next stage's job and a \
     history record we add in one transaction; River's batch completer marks the job completed in a later, \
     batched write: a crash between them runs the stage again), no per-task versioned history, no lease \
     fencing beyond River's attempt check, no routing rules; a library in the agents' process";

/// River in the default mode of the adapter (synchronous completion in the worker's transaction).
const RIVER_GAPS: &str = "completion is synchronous and atomic with the forward (the worker completes its \
     job with `job_complete_tx` in the transaction that inserts the next stage's job and a history record we \
     add per handoff; River's default batch completer is bypassed); no per-task versioned, hash-chained \
     history (completed job rows plus our history table), no lease fencing of a slow worker beyond River's \
     attempt check, no routing rules; a library in the agents' process: no network hop";
/// What apalis + apalis-sqlite lacks next to Baton.
pub const APALIS_GAPS: &str = "no atomic ack-and-forward (the handler pushes the next stage's task and a \
     history record we add in one transaction; apalis acks its own task in a separate write afterwards: a \
     crash between them duplicates the task), polling every 50 ms (an empty fetch otherwise waits for the \
     30 s heartbeat), no per-task history, no fencing, no routing rules; a library in the agents' process";
/// What pgmq lacks next to Baton.
pub const PGMQ_GAPS: &str = "atomic forward (send next + history record we add + archive in one \
     transaction), but the read (the lease) is a separate commit and a visibility timeout, not a fenced \
     lease: a slow reader's archive after the timeout is still accepted; server-side long poll every \
     10 ms; no per-task versioned history (archive rows plus our history table), no routing rules; a \
     library in the agents' process";

/// How long a build may take (a cold build of sqlx, River, apalis and pgmq on 2 cores).
const BUILD_TIME_MAX: Duration = Duration::from_secs(1_800);
/// How long a child may take to set up and preload.
const READY_WAIT_MAX: Duration = Duration::from_secs(300);
/// A run that has not finished by then fails (bounded in time), and the child's own limit.
const RUN_TIME_MAX: Duration = Duration::from_secs(300);
/// How long the child may take to clean up and print its figures after `done`.
const RESULT_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long the child may take to exit after printing its figures.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(5);
/// Lines of a failed build's or run's output kept in the reason.
const TAIL_LINES: usize = 12;

/// Whether `system` is one of this module's, and its name for `baton-peers --system`.
pub fn system_name(system: Sys) -> Option<&'static str> {
    Some(match system {
        Sys::RiverSqlite => "river-sqlite",
        Sys::RiverPg => "river-pg",
        Sys::Apalis => "apalis-sqlite",
        Sys::Pgmq => "pgmq",
        _ => return None,
    })
}

/// Whether the system runs on PostgreSQL (the cluster's CPU is its server's).
pub fn on_postgres(system: Sys) -> bool {
    matches!(system, Sys::RiverPg | Sys::Pgmq)
}

/// The peer project's directory.
fn project_dir() -> PathBuf {
    std::env::var_os("BATON_BENCH_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers"))
}

/// Where the peer project is built.
fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("BATON_BENCH_PEERS_TARGET") {
        return t.into();
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/baton-bench-peers/target")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
}

/// Builds `baton-peers` (release, locked) and returns the binary, or why it
/// could not be built.
pub fn build() -> Result<PathBuf, String> {
    let dir = project_dir();
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(format!("no peer project at {}", dir.display()));
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let log_path = target.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building the peer adapters (River, apalis, pgmq): cargo build --release --locked --manifest-path {} \
         (log: {})",
        manifest.display(),
        log_path.display()
    );
    let started = Instant::now();
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("run cargo: {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < BUILD_TIME_MAX => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the peer build took longer than {BUILD_TIME_MAX:?}"));
            }
            Err(e) => return Err(format!("wait for cargo: {e}")),
        }
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("building bench/peers failed ({status}): {}", tail(&text)));
    }
    let binary = target.join("release/baton-peers");
    if binary.is_file() { Ok(binary) } else { Err(format!("no binary at {}", binary.display())) }
}

/// A child that is killed when dropped, whatever happened.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The child's result line.
#[derive(Debug, Deserialize)]
struct Output {
    handoffs: u64,
    seconds: f64,
    preload_seconds: f64,
    step: Vec<(u64, u64)>,
    handoff: Vec<(u64, u64)>,
    disk_bytes: Option<u64>,
    durability: String,
    completion: String,
}

fn merge(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for &(value, count) in pairs {
        let _ = h.record_n(value.max(1), count);
    }
    h
}

/// Waits for the next stdout line of the child, up to `wait`.
fn next_line(lines: &mpsc::Receiver<String>, wait: Duration, what: &str) -> Result<String> {
    match lines.recv_timeout(wait) {
        Ok(l) => Ok(l),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!("no {what} from baton-peers within {wait:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("baton-peers exited before {what}"),
    }
}

/// One HB3 burn-down of `system` by the `baton-peers` binary at `binary`.
pub fn run(system: Sys, binary: &Path, database_url: &str, p: &RunParams, probe: &Probe) -> Result<Sample> {
    let name = system_name(system).context("not a peer-project system")?;
    let stderr_path = p.dir.join("baton-peers.stderr");
    let mut cmd = Command::new(binary);
    cmd.args(["run", "--handshake", "--system", name])
        .arg("--agents")
        .arg(p.agents.to_string())
        .arg("--tasks")
        .arg(p.tasks.to_string())
        .arg("--payload-bytes")
        .arg(p.payload.len().to_string())
        .arg("--dir")
        .arg(&p.dir)
        .arg("--time-limit-s")
        .arg(RUN_TIME_MAX.as_secs().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?);
    if on_postgres(system) {
        cmd.arg("--database-url").arg(database_url);
    }
    let mut child = ChildGuard(cmd.spawn().with_context(|| format!("start {}", binary.display()))?);
    let result = drive(system, &mut child, p, probe);
    // After its figures the child only exits; give it a moment before the guard kills it.
    let exit_by = Instant::now() + EXIT_WAIT_MAX;
    let mut status = None;
    while result.is_ok() && Instant::now() < exit_by {
        status = child.0.try_wait().ok().flatten();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = status.or_else(|| child.0.try_wait().ok().flatten());
    drop(child);
    result.with_context(|| {
        let mut err = String::new();
        let _ = std::fs::File::open(&stderr_path).and_then(|mut f| f.read_to_string(&mut err));
        format!("baton-peers {name} ({}): {}", status.map_or("running".into(), |s| s.to_string()), tail(&err))
    })
}

fn drive(system: Sys, child: &mut ChildGuard, p: &RunParams, probe: &Probe) -> Result<Sample> {
    let stdout = child.0.stdout.take().context("child stdout")?;
    let mut stdin = child.0.stdin.take().context("child stdin")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = next_line(&lines, READY_WAIT_MAX, "`ready`")?;
    ensure!(ready == "ready", "baton-peers said {ready:?} instead of `ready`");
    let agents = Watch::start(vec![child.0.id()]);
    let server = on_postgres(system).then(|| Watch::named("postgres"));
    let mark = probe.start(None)?;
    writeln!(stdin, "go")?;
    stdin.flush()?;
    let done = next_line(&lines, RUN_TIME_MAX + Duration::from_secs(10), "`done`")?;
    let end = Instant::now();
    ensure!(done == "done", "baton-peers said {done:?} instead of `done`");
    let mut usage = probe.stop(&mark, end)?;
    let (child_cpu, child_rss) = agents.stop();
    let server_cpu = server.map(|w| w.stop().0);
    let json = next_line(&lines, RESULT_WAIT_MAX, "its figures")?;
    let out: Output = serde_json::from_str(&json).with_context(|| format!("parse {json:?}"))?;
    ensure!(
        out.handoffs == p.tasks as u64 * STAGES.len() as u64,
        "baton-peers counted {} handoffs for {} tasks",
        out.handoffs,
        p.tasks
    );
    eprint!("[{}; {}; preload {:.1} s] ", out.durability, out.completion, out.preload_seconds);
    // The child is this run's agents (and, for SQLite, the database too):
    // its CPU is the run's own, not noise.
    usage.cpu_seconds += child_cpu;
    usage.foreign_cpu_seconds = (usage.foreign_cpu_seconds - child_cpu).max(0.0);
    usage.seconds = out.seconds;
    let disk = out.disk_bytes.unwrap_or_else(|| sys::disk_bytes(&p.dir));
    Ok(Sample {
        handoffs: out.handoffs,
        handoff: Some(merge(&out.handoff)),
        server_cpu_s: server_cpu,
        rss_kib: child_rss,
        disk_bytes: Some(disk),
        ..Sample::new(usage, merge(&out.step))
    })
}

/// The goal lines (G3 and G5 of docs/glossary.md) for these peers.
pub fn goals(summary: &[Summary], agents: &[usize]) -> String {
    use super::suite::Mode;
    use std::fmt::Write as _;
    let mut out = String::new();
    let find = |s: Sys, k: usize| {
        summary.iter().find(|x| x.system == s && x.mode == Mode::BurnDown && x.agents == k)
    };
    let Some(kmax) = agents.iter().copied().max() else { return out };
    let baton = find(Sys::BatonHttp, kmax).or(find(Sys::BatonSqlite, kmax));
    for (peer, target) in [(Sys::RiverSqlite, "≥ 10x"), (Sys::Apalis, "≥ 10x")] {
        if let (Some(b), Some(x)) = (baton, find(peer, kmax)) {
            let lat = match (b.handoff_p50_us.or(b.step_p50_us), x.handoff_p50_us) {
                (Some(a), Some(c)) => format!("; handoff p50 {:.0} vs {:.0} µs", a.median, c.median),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| G3: {} at K={kmax} ÷ {} | {:.2}x{lat} | {target}; p50 handoff ≥ 100x lower |",
                b.system.label(),
                peer.label(),
                b.handoffs_per_s.median / x.handoffs_per_s.median
            );
        }
    }
    for &k in agents {
        for peer in [Sys::RiverPg, Sys::Pgmq] {
            if let (Some(b), Some(x)) = (find(Sys::BatonPg, k), find(peer, k)) {
                let _ = writeln!(
                    out,
                    "| G5: Baton on PostgreSQL ÷ {} at K={k} | {:.2}x | ≥ 1.5x |",
                    peer.label(),
                    b.handoffs_per_s.median / x.handoffs_per_s.median
                );
            }
        }
    }
    out
}
