//! T1 over HTTP (docs/glossary.md): a three-stage pipeline run
//! by `baton_client::Worker`s through repeated `kill -9` of the server.
//!
//! Goal: every acknowledged submit ends `done`; each task is handed off from
//! `a` once, from `b` once and completed at `c` once (no double accepted
//! completion), although the server dies mid-run again and again and clients
//! see refused connections, broken long polls and lost answers.
//!
//! Method: `baton dev` in a temp dir on a fixed loopback port; eight workers
//! (two per stage, two on all three) with 2 s leases and claim-next; four
//! submitters sending `TASKS` tasks with idempotency keys, retrying on
//! transport errors and 503. Some handlers outlast two heartbeats. A nemesis thread SIGKILLs the server `KILLS`
//! times, each at a random point of the run's progress (acknowledged submits,
//! handoffs and completions), and restarts it at once on the same data dir
//! and port; two of the kills keep it down longer than a lease, so leases
//! expire under holders that are still retrying. When every task is reported completed, the workers stop, the
//! server is listed through the API (all done, nothing extra), stopped, and
//! its SQLite file is checked with the testkit: `check_store` (chains verify,
//! events replay to rows, custody, no stage visit finished twice),
//! `check_acknowledged` (nothing acknowledged lost or applied twice) and the
//! per-task stage counts. Bounded: the run fails after `RUN_DEADLINE`.
//! Set BATON_KILL_SEED to repeat the kill points.

use super::support::{Server, SplitMix, seed};
use baton_client::worker::{Finished, Outcome, RetryPolicy, WorkerStats};
use baton_client::{Client, Decision, Job, TaskId, Worker, WorkerOptions, api};
use baton_core::{EventKind, StateName, Store, TaskId as CoreId};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::{Acknowledged, block_on, check_acknowledged, check_store};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TASKS: usize = 300;
const KILLS: usize = 12;
const LEASE_MS: u64 = 2_000;
const SUBMITTERS: usize = 4;
/// One task in this many works stage `b` for 3/4 of a lease, heartbeating.
const SLOW_EVERY: u64 = 20;
/// The run (submits to the last completion) fails after this; it never hangs.
const RUN_DEADLINE: Duration = Duration::from_secs(90);
/// These kills (by index) keep the server down longer than a lease, so
/// leases expire under holders that are still retrying.
const LONG_OUTAGES: [usize; 2] = [3, 8];
const LONG_OUTAGE: Duration = Duration::from_millis(LEASE_MS + 700);
/// The server serves at least this long between two kills.
const MIN_UP: Duration = Duration::from_millis(150);
/// Kill points lie in this share of the run's progress, in per mille.
const KILL_SPAN: (u64, u64) = (30, 920);
/// Pages of 100 read when listing the tasks, at most.
const PAGES_MAX: usize = 50;

/// Agents and the stages they work.
const AGENTS: [(&str, &[&str]); 8] = [
    ("a1", &["a"]),
    ("a2", &["a"]),
    ("b1", &["b"]),
    ("b2", &["b"]),
    ("c1", &["c"]),
    ("c2", &["c"]),
    ("all1", &["a", "b", "c"]),
    ("all2", &["a", "b", "c"]),
];

/// What clients were told, as the run goes.
#[derive(Debug, Default)]
struct Ledger {
    /// Acknowledged submits: key -> task.
    keys: HashMap<String, TaskId>,
    completions: Vec<(TaskId, u64)>,
    handoffs: Vec<(TaskId, u64)>,
    completed: HashSet<TaskId>,
    /// Completions reported twice for one task (must stay empty).
    completed_twice: Vec<TaskId>,
    lost: usize,
    unknown: Vec<String>,
    refused: Vec<String>,
}

#[derive(Debug)]
struct Kill {
    at_progress: usize,
    /// From the kill until the server accepted connections again.
    down: Duration,
}

#[test]
fn a_pipeline_of_workers_loses_and_duplicates_nothing_through_kill_9() {
    let started = Instant::now();
    let mut rng = SplitMix::new(seed("BATON_KILL_SEED"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let address = server.address.clone();
    let progress = Arc::new(AtomicUsize::new(0));
    let run_over = Arc::new(AtomicBool::new(false));
    let total = TASKS * 4;
    let mut points: Vec<usize> =
        (0..KILLS).map(|_| rng.range(KILL_SPAN.0, KILL_SPAN.1) as usize * total / 1000).collect();
    points.sort_unstable();
    let nemesis = {
        let (progress, run_over) = (progress.clone(), run_over.clone());
        let mut rng = rng.clone();
        std::thread::spawn(move || nemesis(server, &points, &progress, &run_over, &mut rng))
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = Client::new(&address).unwrap().with_request_timeout(Duration::from_secs(5));
    let run = runtime.block_on(run_pipeline(client.clone(), ledger.clone(), progress.clone()));
    run_over.store(true, Ordering::SeqCst);
    let (mut server, kills) = nemesis.join().expect("the nemesis thread");
    let stats = match run {
        Ok(stats) => stats,
        Err(why) => {
            let open = runtime.block_on(not_done(&client));
            panic!("{why}\nkills: {kills:?}\nnot done: {open:#?}\nserver log:\n{}", server.log_tail());
        }
    };
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let run_time = started.elapsed();

    // What the API shows: every task done, nothing else.
    let listed = runtime.block_on(list_all(&client, None));
    let done = runtime.block_on(list_all(&client, Some(api::TaskStateName::Done)));
    assert_eq!((listed.len(), done.len()), (TASKS, TASKS), "every task done, no extra task");
    drop(runtime);
    server.stop();

    assert!(kills.len() >= 10, "the server was killed mid-run at least 10 times: {kills:?}");
    assert!(ledger.unknown.is_empty(), "decisions left unknown: {:?}", ledger.unknown);
    assert!(ledger.refused.is_empty(), "decisions refused: {:?}", ledger.refused);
    assert!(ledger.completed_twice.is_empty(), "reported completed twice: {:?}", ledger.completed_twice);
    assert_eq!(ledger.keys.len(), TASKS);

    // What the store holds.
    let store = SqliteStore::open(server.database(), SqliteOptions::default()).expect("open the store");
    let report =
        check_store(&store).unwrap_or_else(|p| panic!("history check failed:\n  {}", p.join("\n  ")));
    assert_eq!((report.tasks, report.live), (TASKS, 0));
    let acked = Acknowledged {
        submit_keys: ledger.keys.keys().cloned().collect(),
        submit_ids: ledger.keys.values().map(|&id| CoreId(id)).collect(),
        completions: ledger.completions.iter().map(|&(id, epoch)| (CoreId(id), epoch)).collect(),
        handoffs: ledger.handoffs.iter().map(|&(id, epoch)| (CoreId(id), epoch)).collect(),
    };
    if let Err(problems) = check_acknowledged(&store, &acked) {
        panic!("acknowledged work lost or doubled:\n  {}", problems.join("\n  "));
    }
    let mut expiries = 0;
    for &task in ledger.keys.values() {
        let events = block_on(store.history(CoreId(task))).unwrap();
        let left = |kind: EventKind, stage: &str| {
            events
                .iter()
                .filter(|e| e.kind == kind)
                .filter(|e| {
                    e.from.as_ref().is_some_and(|f| f.state == StateName::Held && f.stage.as_str() == stage)
                })
                .count()
        };
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            (
                left(EventKind::HandedOff, "a"),
                left(EventKind::HandedOff, "b"),
                left(EventKind::Completed, "c")
            ),
            (1, 1, 1),
            "task {task}: {kinds:?}"
        );
        let finishes =
            events.iter().filter(|e| matches!(e.kind, EventKind::HandedOff | EventKind::Completed));
        assert_eq!(finishes.count(), 3, "task {task}: {kinds:?}");
        expiries += events.iter().filter(|e| e.kind == EventKind::LeaseExpired).count();
    }
    store.close();

    let points: Vec<usize> = kills.iter().map(|k| k.at_progress).collect();
    eprintln!("kills at progress {points:?} of {}", TASKS * 4);
    let mut downs: Vec<Duration> = kills.iter().map(|k| k.down).collect();
    downs.sort_unstable();
    eprintln!(
        "kill -9 pipeline: {TASKS} tasks done in {run_time:.1?}; {} kills (down p50 {:?}, max {:?}); \
         {} events; lost 0, duplicate completions 0; leases expired {expiries}; decisions confirmed by \
         history {}; stale decisions refused {}; retries {}; heartbeats {}; claims {}",
        kills.len(),
        downs[downs.len() / 2],
        downs[downs.len() - 1],
        report.events,
        stats.confirmed_by_history,
        ledger.lost,
        stats.retries,
        stats.heartbeats,
        stats.claims,
    );
}

/// Kills the server at each progress point (plus a random few ms), restarting it at once.
fn nemesis(
    mut server: Server,
    points: &[usize],
    progress: &AtomicUsize,
    run_over: &AtomicBool,
    rng: &mut SplitMix,
) -> (Server, Vec<Kill>) {
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut kills = Vec::new();
    let mut up_since = Instant::now();
    for (index, &point) in points.iter().enumerate() {
        while progress.load(Ordering::SeqCst) < point {
            if run_over.load(Ordering::SeqCst) || Instant::now() > deadline {
                return (server, kills);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
        if let Some(rest) = MIN_UP.checked_sub(up_since.elapsed()) {
            std::thread::sleep(rest);
        }
        let at_progress = progress.load(Ordering::SeqCst);
        server.kill();
        let killed = Instant::now();
        if LONG_OUTAGES.contains(&index) {
            std::thread::sleep(LONG_OUTAGE);
        }
        server.restart();
        up_since = Instant::now();
        kills.push(Kill { at_progress, down: killed.elapsed() });
    }
    (server, kills)
}

/// Submits, works and waits for every task; the workers' summed counts.
async fn run_pipeline(
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    progress: Arc<AtomicUsize>,
) -> Result<WorkerStats, String> {
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let options = WorkerOptions {
        wait_ms: 5_000,
        lease_ms: LEASE_MS,
        claim_next: true,
        handler_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            give_up_after: Duration::from_secs(30),
        },
    };
    let mut workers = Vec::new();
    for (agent, stages) in AGENTS {
        let (ledger, progress) = (ledger.clone(), progress.clone());
        let worker = Worker::new(client.clone(), agent, stages.iter().copied(), options.clone())
            .unwrap()
            .on_finished(move |finished| note(&ledger, &progress, finished));
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        workers.push(tokio::spawn(worker.run(work, shutdown)));
    }
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|k| tokio::spawn(submit_share(client.clone(), k, ledger.clone(), progress.clone(), deadline)))
        .collect();
    for submitter in submitters {
        submitter.await.map_err(|e| format!("submitter panicked: {e}"))??;
    }
    let outcome = loop {
        if ledger.lock().unwrap().completed.len() == TASKS {
            break Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let done = ledger.lock().unwrap().completed.len();
            break Err(format!("only {done} of {TASKS} tasks completed within {RUN_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_tx.send_replace(true);
    let mut total = WorkerStats::default();
    for worker in workers {
        let stats = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .map_err(|_| "a worker did not stop within 30 s".to_owned())?
            .map_err(|e| format!("a worker panicked: {e}"))?
            .map_err(|e| format!("a worker failed: {e}"))?;
        total.add(&stats);
    }
    outcome.map(|()| total)
}

/// The handler: a short piece of work (a long one, past two heartbeats, for
/// one task in `SLOW_EVERY` at stage `b`), then on to the next stage.
async fn work(job: Job) -> Decision {
    let id = job.lease().task.as_u128() as u64;
    let pause =
        if job.stage() == "b" && id.is_multiple_of(SLOW_EVERY) { LEASE_MS * 3 / 4 } else { 1 + id % 5 };
    tokio::time::sleep(Duration::from_millis(pause)).await;
    let n = job.payload().get().to_owned();
    match job.stage() {
        "a" => Decision::handoff("b").note("a done").findings(json!({"a": n})).confidence(0.9),
        "b" => Decision::handoff("c").note("b done").findings(json!({"b": true})).confidence(0.8),
        "c" => Decision::complete().result(json!({"ok": true})).findings(json!({"c": 1})).confidence(0.99),
        other => Decision::fail(format!("no stage {other} in this pipeline"), false),
    }
}

fn note(ledger: &Mutex<Ledger>, progress: &AtomicUsize, finished: &Finished) {
    let mut ledger = ledger.lock().unwrap();
    let (task, epoch) = (finished.fence.task, finished.fence.epoch);
    match &finished.outcome {
        Outcome::HandedOff { .. } => ledger.handoffs.push((task, epoch)),
        Outcome::Completed { .. } => {
            ledger.completions.push((task, epoch));
            if !ledger.completed.insert(task) {
                ledger.completed_twice.push(task);
            }
        }
        Outcome::Lost(_) => {
            ledger.lost += 1;
            return;
        }
        Outcome::Unknown { error } => {
            ledger.unknown.push(format!("{}: {error}", finished.fence));
            return;
        }
        other => {
            ledger.refused.push(format!("{}: {other:?}", finished.fence));
            return;
        }
    }
    progress.fetch_add(1, Ordering::SeqCst);
}

/// Submits tasks `k, k + SUBMITTERS, ...` with idempotency keys, retrying until acknowledged.
async fn submit_share(
    client: Client,
    k: usize,
    ledger: Arc<Mutex<Ledger>>,
    progress: Arc<AtomicUsize>,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    for i in (k..TASKS).step_by(SUBMITTERS) {
        let key = format!("kill-{i}");
        let mut request =
            api::SubmitRequest::new("a", api::Payload::from_json(format!("{{\"n\":{i}}}")).unwrap());
        request.idempotency_key = Some(key.clone());
        let mut attempt = 0u32;
        let task = loop {
            match client.submit(&request).await {
                Ok(submitted) => break submitted.task,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt.min(20)))).await;
                }
                Err(e) => return Err(format!("submit {key} failed: {e}")),
            }
        };
        assert_eq!(task.idempotency_key.as_deref(), Some(key.as_str()));
        let mut ledger = ledger.lock().unwrap();
        if let Some(earlier) = ledger.keys.insert(key.clone(), task.id) {
            return Err(format!("key {key} named {earlier} and then {}", task.id));
        }
        progress.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Every task, or every task in `state`, through the API's pages.
async fn list_all(client: &Client, state: Option<api::TaskStateName>) -> Vec<api::Task> {
    let mut tasks = Vec::new();
    let mut cursor = None;
    for _ in 0..PAGES_MAX {
        let query = api::ListQuery { state, cursor: cursor.take(), limit: Some(100), ..Default::default() };
        let page = client.list(&query).await.expect("list tasks");
        tasks.extend(page.tasks);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return tasks,
        }
    }
    panic!("more than {PAGES_MAX} pages of tasks");
}

/// The tasks not done, for a failure message (empty if the server cannot say).
async fn not_done(client: &Client) -> Vec<String> {
    let mut open = Vec::new();
    for state in [api::TaskStateName::Waiting, api::TaskStateName::Held, api::TaskStateName::Blocked] {
        let query = api::ListQuery { state: Some(state), limit: Some(100), ..Default::default() };
        if let Ok(page) = client.list(&query).await {
            open.extend(page.tasks.iter().map(|t| {
                format!("{} {} at {} epoch {} attempts {}", t.id, t.state, t.stage, t.epoch, t.attempts)
            }));
        }
    }
    open
}
