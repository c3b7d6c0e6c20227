//! The naive pipeline: point-to-point handoffs written the way they usually
//! are. Each agent is an HTTP service on loopback (`POST /work` with a
//! patient) that puts the work on an in-memory queue, or, for the notifier,
//! does it before answering. A worker takes from the queue, does the work,
//! and sends the patient on with an HTTP call that has a timeout and a few
//! retries; when they run out the sender logs it and moves on.
//!
//! The ledger records every arrival and every execution of a stage's work;
//! the tally is computed from it alone: lost = arrived but the last stage
//! never ran; sent twice = a stage ran more than once for a patient.

use super::{BATCH_EVERY, DOWNTIME, LATE_BY, Plan, Progress, RUN_DEADLINE, STAGES, Timeline};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Each call's timeout, as a caller would set it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per handoff before the sender gives up.
const CALL_TRIES: u32 = 3;
/// Pause between tries.
const CALL_BACKOFF: Duration = Duration::from_millis(300);
/// How long the records consumer stays awake when it wakes.
const AWAKE: Duration = Duration::from_millis(1_000);
/// The run is over when nothing has moved for this long.
const QUIET: Duration = Duration::from_millis(1_500);
/// Simulated work per task.
const WORK: Duration = Duration::from_millis(60);

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    patient: u32,
}

/// Arrivals and executions, as they happened.
#[derive(Default)]
struct Ledger {
    arrivals: Mutex<Vec<u32>>,
    executions: Mutex<BTreeMap<(u32, &'static str), u32>>,
    gave_up: Mutex<BTreeMap<u32, String>>,
}

/// One agent's service: its queue and whether it is up.
struct Agent {
    stage: &'static str,
    queue: Mutex<VecDeque<u32>>,
    ready: Notify,
    down: AtomicBool,
    /// Triage's pending crash: its next task dies with it.
    crash: AtomicBool,
    /// The records consumer's window: it accepts work only while awake.
    awake: AtomicBool,
}

struct Inner {
    plan: Plan,
    agents: Vec<Arc<Agent>>,
    urls: Vec<String>,
    http: reqwest::Client,
    ledger: Ledger,
    /// Calls and queued items not yet settled; the run ends when it is 0 and quiet.
    in_flight: AtomicI64,
    last_move: Mutex<Instant>,
    progress: Arc<Progress>,
    /// The run's start and the shared timeline, set when the run starts.
    clock: std::sync::OnceLock<(Instant, Arc<Timeline>)>,
}

#[derive(Clone)]
pub struct Side {
    inner: Arc<Inner>,
    pub progress: Arc<Progress>,
}

#[derive(Debug, Serialize)]
pub struct Tally {
    pub arrived: u32,
    pub finished: u32,
    pub lost: Vec<Lost>,
    pub sent_twice: Vec<Twice>,
    /// Every execution of a stage's work: (patient, stage, times).
    pub executions: Vec<Twice>,
}

#[derive(Debug, Serialize)]
pub struct Lost {
    pub patient: u32,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct Twice {
    pub patient: u32,
    pub stage: String,
    pub times: u32,
}

impl Side {
    /// Starts one HTTP service per stage on loopback.
    pub async fn prepare(plan: &Plan) -> anyhow::Result<Self> {
        let progress = Arc::new(Progress::default());
        let mut agents = Vec::new();
        let mut listeners = Vec::new();
        let mut urls = Vec::new();
        for stage in STAGES {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}/work", listener.local_addr()?));
            listeners.push(listener);
            agents.push(Arc::new(Agent {
                stage,
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                down: AtomicBool::new(false),
                crash: AtomicBool::new(false),
                awake: AtomicBool::new(!plan.faults),
            }));
        }
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        let inner = Arc::new(Inner {
            plan: plan.clone(),
            agents,
            urls,
            http,
            ledger: Ledger::default(),
            in_flight: AtomicI64::new(0),
            last_move: Mutex::new(Instant::now()),
            progress: progress.clone(),
            clock: std::sync::OnceLock::new(),
        });
        for (i, listener) in listeners.into_iter().enumerate() {
            let app = Router::new().route("/work", post(receive)).with_state((inner.clone(), i));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Ok(Self { inner, progress })
    }

    pub async fn run(self, start: Instant, timeline: Arc<Timeline>) -> anyhow::Result<Tally> {
        let inner = self.inner.clone();
        *lock(&inner.last_move) = Instant::now();
        let _ = inner.clock.set((start, timeline.clone()));
        // Queue workers for intake, triage and specialist; notify works in its
        // handler, records in its batch loop.
        for (i, stage) in STAGES.iter().enumerate() {
            if !matches!(*stage, "notify" | "records") {
                tokio::spawn(work_loop(inner.clone(), i));
            }
        }
        tokio::spawn(records_loop(inner.clone()));
        if let Some(at) = inner.plan.crash_ms {
            let inner = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
                inner.agents[1].crash.store(true, Ordering::SeqCst);
            });
        }
        if let Some(at) = inner.plan.kill_ms {
            let (inner, timeline) = (inner.clone(), timeline.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
                let hub = &inner.agents[0];
                hub.down.store(true, Ordering::SeqCst);
                let lost = lock(&hub.queue).drain(..).count();
                inner.in_flight.fetch_sub(lost as i64, Ordering::SeqCst);
                timeline.note(
                    start,
                    format!("naive: the intake service is killed ({lost} queued patients gone)"),
                );
                tokio::time::sleep(DOWNTIME).await;
                hub.down.store(false, Ordering::SeqCst);
            });
        }
        for (patient, at) in inner.plan.arrivals_ms.iter().enumerate() {
            let patient = patient as u32;
            tokio::time::sleep_until((start + Duration::from_millis(*at)).into()).await;
            lock(&inner.ledger.arrivals).push(patient);
            send(inner.clone(), 0, patient);
        }
        // Wait until nothing is queued or in flight and nothing has moved for a while.
        let deadline = start + RUN_DEADLINE;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let quiet = lock(&inner.last_move).elapsed() > QUIET;
            if (inner.in_flight.load(Ordering::SeqCst) <= 0 && quiet) || Instant::now() > deadline {
                break;
            }
        }
        Ok(tally(&inner))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn note(inner: &Inner, what: String) {
    if let Some((start, timeline)) = inner.clock.get() {
        timeline.note(*start, what);
    }
}

fn moved(inner: &Inner) {
    *lock(&inner.last_move) = Instant::now();
}

fn executed(inner: &Inner, patient: u32, stage: &'static str) {
    *lock(&inner.ledger.executions).entry((patient, stage)).or_default() += 1;
    inner.progress.ran(stage);
    moved(inner);
}

/// A sender gave up on a patient (counted once per patient; a duplicate that
/// went another way may still finish it, which the ledger shows).
fn give_up(inner: &Inner, patient: u32, why: String) {
    if let std::collections::btree_map::Entry::Vacant(first) = lock(&inner.ledger.gave_up).entry(patient) {
        first.insert(why);
        inner.progress.set_aside.fetch_add(1, Ordering::Relaxed);
    }
}

/// `POST /work` at stage `i`.
async fn receive(
    State((inner, i)): State<(Arc<Inner>, usize)>,
    axum::Json(work): axum::Json<Work>,
) -> StatusCode {
    let agent = &inner.agents[i];
    if agent.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match agent.stage {
        "specialist" if inner.plan.silent.contains(&work.patient) => {
            // Never answers: the call hangs until the caller's timeout.
            std::future::pending::<()>().await;
            StatusCode::OK
        }
        "notify" => {
            // The gateway sends, then answers; late on some cases. The sending
            // goes on even when the caller has stopped waiting.
            let late = inner.plan.late.contains(&work.patient);
            let worker = inner.clone();
            let done = tokio::spawn(async move {
                tokio::time::sleep(if late { LATE_BY } else { WORK }).await;
                executed(&worker, work.patient, "notify");
                send(worker.clone(), 4, work.patient);
            });
            let _ = done.await;
            StatusCode::OK
        }
        "records" if !agent.awake.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
            lock(&agent.queue).push_back(work.patient);
            agent.ready.notify_one();
            StatusCode::ACCEPTED
        }
    }
}

/// Sends a patient to stage `to`, with a timeout and retries, in the background.
fn send(inner: Arc<Inner>, to: usize, patient: u32) {
    inner.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let mut last = String::new();
        for attempt in 0..CALL_TRIES {
            if attempt > 0 {
                tokio::time::sleep(CALL_BACKOFF).await;
            }
            let answer = inner.http.post(&inner.urls[to]).json(&Work { patient }).send().await;
            match answer {
                Ok(r) if r.status().is_success() => {
                    last.clear();
                    break;
                }
                Ok(r) => last = format!("{} answered {}", STAGES[to], r.status()),
                Err(e) if e.is_timeout() => {
                    last = format!("{} did not answer within {CALL_TIMEOUT:?}", STAGES[to])
                }
                Err(e) => last = format!("could not reach {}: {e}", STAGES[to]),
            }
        }
        if !last.is_empty() {
            give_up(&inner, patient, format!("gave up after {CALL_TRIES} tries: {last}"));
        }
        moved(&inner);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    });
}

/// A queue worker: take, work, send on.
async fn work_loop(inner: Arc<Inner>, i: usize) {
    let agent = inner.agents[i].clone();
    loop {
        let next = lock(&agent.queue).pop_front();
        let Some(patient) = next else {
            let _ = tokio::time::timeout(Duration::from_millis(200), agent.ready.notified()).await;
            continue;
        };
        tokio::time::sleep(WORK).await;
        if agent.crash.swap(false, Ordering::SeqCst) {
            // The process dies mid-task: this patient and its queue are gone.
            agent.down.store(true, Ordering::SeqCst);
            let queued: Vec<u32> = lock(&agent.queue).drain(..).collect();
            give_up(&inner, patient, "triage crashed while working on it".into());
            note(
                &inner,
                format!("naive: triage crashed holding patient {patient} ({} queued gone)", queued.len()),
            );
            for p in &queued {
                give_up(&inner, *p, "queued at triage when it crashed".into());
            }
            inner.in_flight.fetch_sub(1 + queued.len() as i64, Ordering::SeqCst);
            tokio::time::sleep(DOWNTIME).await;
            agent.down.store(false, Ordering::SeqCst);
            continue;
        }
        executed(&inner, patient, agent.stage);
        send(inner.clone(), i + 1, patient);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The records consumer: with faults on it wakes every few seconds, takes what
/// reached it while awake, and sleeps again (refusing calls meanwhile).
async fn records_loop(inner: Arc<Inner>) {
    let agent = inner.agents[4].clone();
    loop {
        if inner.plan.faults {
            agent.awake.store(false, Ordering::SeqCst);
            tokio::time::sleep(BATCH_EVERY).await;
            agent.awake.store(true, Ordering::SeqCst);
            tokio::time::sleep(AWAKE).await;
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(200), agent.ready.notified()).await;
        }
        let batch: Vec<u32> = lock(&agent.queue).drain(..).collect();
        for patient in &batch {
            executed(&inner, *patient, "records");
        }
        inner.in_flight.fetch_sub(batch.len() as i64, Ordering::SeqCst);
    }
}

fn tally(inner: &Inner) -> Tally {
    let arrivals = lock(&inner.ledger.arrivals).clone();
    let executions = lock(&inner.ledger.executions).clone();
    let gave_up = lock(&inner.ledger.gave_up).clone();
    let last = STAGES[STAGES.len() - 1];
    let finished: Vec<u32> =
        arrivals.iter().copied().filter(|p| executions.contains_key(&(*p, last))).collect();
    let lost = arrivals
        .iter()
        .filter(|p| !finished.contains(p))
        .map(|p| Lost {
            patient: *p,
            why: gave_up.get(p).cloned().unwrap_or_else(|| "still in flight when the run ended".into()),
        })
        .collect();
    let as_rows = |min: u32| -> Vec<Twice> {
        executions
            .iter()
            .filter(|(_, n)| **n >= min)
            .map(|((patient, stage), n)| Twice { patient: *patient, stage: (*stage).to_owned(), times: *n })
            .collect()
    };
    Tally {
        arrived: arrivals.len() as u32,
        finished: finished.len() as u32,
        lost,
        sent_twice: as_rows(2),
        executions: as_rows(1),
    }
}
