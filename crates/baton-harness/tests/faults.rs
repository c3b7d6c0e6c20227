//! Fault tests, one binary (T1 of docs/glossary.md, at CI size).
//!
//! Goal: nothing Baton's SQLite store acknowledged is lost or duplicated by a
//! process crash, and the file is intact after every restart.
//!
//! Method: a kill -9 loop. Each cycle starts `baton-harness crash-child` on
//! the same database file (so every restart replays a non-empty WAL left by a
//! killed writer), lets it work for a random 50-400 ms, SIGKILLs it, then
//! reopens the store in this process and checks what the child printed as
//! acknowledged: every submitted key still maps to its task (a re-submit with
//! the key returns created=false and the same id), every acknowledged claim,
//! handoff and completion is exactly one event at its epoch, no stage is left
//! twice by any task, the stage counters equal a recount of the live tasks,
//! the testkit history checker passes over the whole store (chains verify,
//! events replay to rows, gauges match the tasks), and `PRAGMA
//! integrity_check` says ok. The seed is printed; set BATON_CRASH_SEED to
//! repeat a run's choices (kill times and thread interleavings still vary).

// The bench-http and bench smoke tests compile into this one test binary.
#[path = "faults/bench_http.rs"]
mod bench_http;
#[path = "faults/bench_suite.rs"]
mod bench_suite;
// The fault runner's scenarios over HTTP (power loss, fsync EIO, clock jumps).
#[path = "faults/scenarios.rs"]
mod scenarios;

use baton_core::{Event, EventKind, Store, TaskId};
use baton_harness::crash::{Ack, SplitMix, new_task};
use baton_harness::exec::block_on;
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::checker::check_gauges;
use baton_testkit::{Acknowledged, check_acknowledged, check_store};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kill cycles per run (CI size; a long run is a separate command).
const CYCLES: usize = 24;
/// How long a child works before the kill, in ms: uniform in this range.
const RUN_MS_MIN: u64 = 50;
const RUN_MS_MAX: u64 = 400;
/// Run the whole-store history check every this many cycles (and after the last).
const FULL_CHECK_EVERY: usize = 6;

#[test]
fn acknowledged_work_survives_kill_9() {
    let seed = std::env::var("BATON_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash test seed: {seed} (set BATON_CRASH_SEED={seed} to repeat)");
    let mut rng = SplitMix::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("crash.db");
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut every_ack: Vec<Ack> = Vec::new();
    for cycle in 0..CYCLES {
        let child_seed = rng.next_u64() >> 1;
        let run_ms = rng.range(RUN_MS_MIN, RUN_MS_MAX + 1);
        let acks = run_and_kill(&db, child_seed, Duration::from_millis(run_ms));
        tally.count(&acks);
        let full = (cycle + 1) % FULL_CHECK_EVERY == 0 || cycle + 1 == CYCLES;
        let checked = check_after_restart(&db, &acks, if full { Some(&every_ack) } else { None }, &mut tally);
        if let Err(problems) = checked {
            panic!(
                "cycle {cycle} (child seed {child_seed}, killed after {run_ms} ms) found problems:\n  {}",
                problems.join("\n  ")
            );
        }
        every_ack.extend(acks);
    }
    eprintln!(
        "crash test: {CYCLES} kill -9 cycles in {:.1} s; acknowledged {} submits, {} claims, {} handoffs, \
         {} completions; lost 0, duplicated 0, integrity ok; {} of {CYCLES} restarts replayed a non-empty WAL; \
         reopen p50 {:?}, max {:?}; {} tasks checked by the history checker",
        started.elapsed().as_secs_f64(),
        tally.submits,
        tally.claims,
        tally.handoffs,
        tally.completions,
        tally.wal_restarts,
        tally.reopen_p50(),
        tally.reopens.iter().max().copied().unwrap_or_default(),
        tally.checked_tasks,
    );
    assert!(tally.submits > 0 && tally.handoffs + tally.completions > 0, "the children acknowledged no work");
}

/// Starts a child on `db`, SIGKILLs it after `run`, and returns what it acknowledged.
fn run_and_kill(db: &Path, seed: u64, run: Duration) -> Vec<Ack> {
    let child = Command::new(env!("CARGO_BIN_EXE_baton-harness"))
        .args(["crash-child", "--db"])
        .arg(db)
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the crash child");
    let mut child = KillOnDrop(child);
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).expect("read the child's stdout");
        out
    });
    std::thread::sleep(run);
    if let Some(status) = child.0.try_wait().expect("poll the child") {
        let mut err = String::new();
        let _ = child.0.stderr.take().expect("piped stderr").read_to_string(&mut err);
        panic!("the crash child exited by itself before the kill ({status}): {err}");
    }
    // std's kill is SIGKILL: no destructor, no flush, no checkpoint runs.
    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");
    let out = reader.join().expect("stdout reader");
    Ack::parse_all(&out).expect("the child's acknowledgements parse")
}

/// Kills the child if the test panics, so no child outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reopens the store (recovering the killed child's WAL), checks this cycle's
/// acknowledgements and, when `earlier` is given, everything acknowledged in
/// earlier cycles plus the whole-store history check; then closes the store
/// and runs `PRAGMA integrity_check` on the file.
fn check_after_restart(
    db: &Path,
    acks: &[Ack],
    earlier: Option<&[Ack]>,
    tally: &mut Tally,
) -> Result<(), Vec<String>> {
    let wal = db.with_extension("db-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        tally.wal_restarts += 1;
    }
    let opened = Instant::now();
    let store =
        SqliteStore::open(db, SqliteOptions::default()).map_err(|e| vec![format!("reopen failed: {e}")])?;
    tally.reopens.push(opened.elapsed());
    let mut problems = Vec::new();
    let mut histories = Histories::default();
    check_acks(&store, acks, &mut histories, &mut problems);
    // After every kill: the stage counters equal a recount of the live tasks.
    check_gauges(&store, None, &mut problems);
    if let Some(earlier) = earlier {
        check_acks(&store, earlier, &mut histories, &mut problems);
        match check_store(&store) {
            Ok(report) => tally.checked_tasks = report.tasks,
            Err(found) => problems.extend(found.into_iter().map(|p| format!("history checker: {p}"))),
        }
        let all: Vec<Ack> = earlier.iter().chain(acks).cloned().collect();
        if let Err(found) = check_acknowledged(&store, &acknowledged(&all)) {
            problems.extend(found.into_iter().map(|p| format!("acknowledged checker: {p}")));
        }
    }
    store.close();
    drop(store);
    if let Err(e) = integrity_ok(db) {
        problems.push(e);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Every acknowledgement against the reopened store.
fn check_acks(store: &SqliteStore, acks: &[Ack], histories: &mut Histories, problems: &mut Vec<String>) {
    for ack in acks {
        match ack {
            Ack::Submit { key, task } => match block_on(store.submit(new_task(key))) {
                Ok(s) if !s.created && s.task.id == *task => {}
                Ok(s) if s.created => problems.push(format!("acknowledged submit {key} ({task}) was lost")),
                Ok(s) => {
                    problems.push(format!("key {key} was acknowledged as {task} but now names {}", s.task.id))
                }
                Err(e) => problems.push(format!("re-submitting key {key} failed: {e}")),
            },
            Ack::Claim { task, stage, epoch } => {
                let n = histories.count(store, *task, |e| {
                    e.kind == EventKind::Claimed && e.after.epoch == *epoch && e.after.stage.as_str() == stage
                });
                expect_once(n, ack, problems);
            }
            Ack::Handoff { task, from, to, epoch } => {
                let n = histories.count(store, *task, |e| {
                    e.kind == EventKind::HandedOff
                        && e.after.epoch == *epoch
                        && e.from.as_ref().is_some_and(|f| f.stage.as_str() == from)
                        && e.to.stage.as_str() == to
                });
                expect_once(n, ack, problems);
            }
            Ack::Complete { task, stage, epoch } => {
                let n = histories.count(store, *task, |e| {
                    e.kind == EventKind::Completed
                        && e.after.epoch == *epoch
                        && e.from.as_ref().is_some_and(|f| f.stage.as_str() == stage)
                });
                expect_once(n, ack, problems);
            }
        }
    }
    // The pipeline is linear (a → b → c → done), so a task leaves each stage
    // at most once, whatever its epochs: a second exit is a duplicate.
    for (task, events) in &histories.0 {
        let Ok(events) = events else { continue };
        let mut exits: HashMap<&str, usize> = HashMap::new();
        for e in events.iter().filter(|e| matches!(e.kind, EventKind::HandedOff | EventKind::Completed)) {
            *exits.entry(e.from.as_ref().map_or("?", |f| f.stage.as_str())).or_default() += 1;
        }
        for (stage, n) in exits.into_iter().filter(|(_, n)| *n > 1) {
            problems.push(format!("task {task} left stage {stage} {n} times"));
        }
    }
}

fn expect_once(found: Result<usize, String>, ack: &Ack, problems: &mut Vec<String>) {
    match found {
        Ok(1) => {}
        Ok(0) => problems.push(format!("acknowledged `{ack}` is lost: no such event")),
        Ok(n) => problems.push(format!("acknowledged `{ack}` is recorded {n} times")),
        Err(e) => problems.push(format!("`{ack}`: {e}")),
    }
}

/// Task histories read once per check.
#[derive(Default)]
struct Histories(HashMap<TaskId, Result<Vec<Event>, String>>);

impl Histories {
    fn count(
        &mut self,
        store: &SqliteStore,
        task: TaskId,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<usize, String> {
        let events = self
            .0
            .entry(task)
            .or_insert_with(|| block_on(store.history(task)).map_err(|e| format!("history of {task}: {e}")));
        match events {
            Ok(events) => Ok(events.iter().filter(|e| pred(e)).count()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The acknowledgements in the testkit checker's terms.
fn acknowledged(acks: &[Ack]) -> Acknowledged {
    let mut out = Acknowledged::default();
    for ack in acks {
        match ack {
            Ack::Submit { key, task } => {
                out.submit_keys.push(key.clone());
                out.submit_ids.push(*task);
            }
            Ack::Handoff { task, epoch, .. } => out.handoffs.push((*task, *epoch)),
            Ack::Complete { task, epoch, .. } => out.completions.push((*task, *epoch)),
            Ack::Claim { .. } => {}
        }
    }
    out
}

fn integrity_ok(db: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| format!("open for integrity_check: {e}"))?;
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("integrity_check: {e}"))?;
    if rows == ["ok"] { Ok(()) } else { Err(format!("integrity_check: {}", rows.join("; "))) }
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    submits: usize,
    claims: usize,
    handoffs: usize,
    completions: usize,
    wal_restarts: usize,
    reopens: Vec<Duration>,
    checked_tasks: usize,
}

impl Tally {
    fn count(&mut self, acks: &[Ack]) {
        for ack in acks {
            match ack {
                Ack::Submit { .. } => self.submits += 1,
                Ack::Claim { .. } => self.claims += 1,
                Ack::Handoff { .. } => self.handoffs += 1,
                Ack::Complete { .. } => self.completions += 1,
            }
        }
    }

    fn reopen_p50(&self) -> Duration {
        let mut sorted = self.reopens.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}
