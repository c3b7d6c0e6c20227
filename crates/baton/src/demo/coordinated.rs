//! The same pipeline on Baton: a child `baton dev` in the demo's temporary
//! directory (so it can really be SIGKILLed and restarted on its data), the
//! stages as a workflow with short demo timings, and one agent per stage that
//! claims, works and hands off (the records agent completes). The faults are
//! the naive side's: triage dies holding a lease (it expires, the task is
//! offered again, the restarted triage takes it); the specialist claims its
//! silent cases and never answers (the lease expires twice, and the ladder
//! escalates the case to the `front-desk` inbox); the notifier answers late
//! inside its lease; records wakes every few seconds and claims a batch; the
//! coordinator is SIGKILLed once and every caller retries its call unchanged
//! (the same idempotency key, the same epoch) until it answers.
//!
//! The tally is read back from the store: each task's state, and from its
//! history how many handoffs or completions each stage accepted.

use super::{BATCH_EVERY, DOWNTIME, LATE_BY, Plan, Progress, RUN_DEADLINE, STAGES, Timeline};
use anyhow::Context as _;
use baton_client::api::{self, ClaimRequest, CompleteRequest, HandoffRequest, Payload, SubmitRequest};
use baton_client::{Client, Error, Lease, TaskId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The workflow's name.
const WORKFLOW: &str = "demo-intake";
/// The human stage escalations land in.
const INBOX: &str = "front-desk";
/// The workflow, with demo timings: leases of seconds, two attempts, then the inbox.
const WORKFLOW_TOML: &str = r#"
name = "demo-intake"
entry = "intake"
description = "baton demo: intake, triage, specialist, notify, records"

[defaults]
accept_within = "20s"
lease = "3s"
max_attempts = 2
reoffers = 0
escalate_to = "front-desk"

[stages.intake]
routes = ["triage"]
next = "triage"

[stages.triage]
routes = ["specialist"]
next = "specialist"

[stages.specialist]
lease = "2s"
routes = ["notify"]
next = "notify"

[stages.notify]
lease = "6s"
routes = ["records"]
next = "records"

[stages.records]

[stages.front-desk]
human = true
accept_within = "4h"
"#;
/// How long a call is retried while Baton cannot be reached (it is being restarted).
const RETRY_FOR: Duration = Duration::from_secs(20);
/// How long `baton dev` may take to start.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// Simulated work per task.
const WORK: Duration = Duration::from_millis(60);

struct Inner {
    plan: Plan,
    exe: PathBuf,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    listen: String,
    client: Client,
    tasks: Mutex<BTreeMap<u32, TaskId>>,
    stopping: AtomicBool,
    triage_crash: AtomicBool,
    progress: Arc<Progress>,
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
    /// Arrivals whose submit was never acknowledged, or whose task is gone.
    pub lost: Vec<Lost>,
    /// Tasks still in Baton's custody (waiting or held) when the run ended.
    pub unsettled: Vec<Lost>,
    pub ran_twice: Vec<Twice>,
    pub escalated: Vec<Escalated>,
    /// Every patient's task as the store has it at the end.
    pub tasks: Vec<Settled>,
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

#[derive(Debug, Serialize)]
pub struct Escalated {
    pub patient: u32,
    pub task: TaskId,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct Settled {
    pub patient: u32,
    pub task: TaskId,
    pub state: String,
    pub stage: String,
}

impl Side {
    /// Starts `baton dev` in `dir` and applies the demo workflow.
    pub async fn prepare(exe: &Path, dir: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let (child, address) = start_dev(exe, dir, "127.0.0.1:0").await?;
        let listen = address.trim_start_matches("http://").to_owned();
        let client = Client::new(&address)?.with_request_timeout(Duration::from_secs(5));
        client.apply_workflow(WORKFLOW_TOML).await.context("applying the demo workflow")?;
        let progress = Arc::new(Progress::default());
        let inner = Arc::new(Inner {
            plan: plan.clone(),
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            child: Mutex::new(Some(child)),
            listen,
            client,
            tasks: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            triage_crash: AtomicBool::new(false),
            progress: progress.clone(),
            clock: std::sync::OnceLock::new(),
        });
        Ok(Self { inner, progress })
    }

    /// Stops the agents and `baton dev`.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some(mut child) = lock(&self.inner.child).take() {
            terminate(&mut child);
        }
    }

    pub async fn run(self, start: Instant, timeline: Arc<Timeline>) -> anyhow::Result<Tally> {
        let inner = self.inner.clone();
        let _ = inner.clock.set((start, timeline.clone()));
        for stage in ["intake", "triage", "specialist", "notify"] {
            tokio::spawn(agent(inner.clone(), stage));
        }
        tokio::spawn(records(inner.clone()));
        if let Some(at) = inner.plan.crash_ms {
            let inner = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
                inner.triage_crash.store(true, Ordering::SeqCst);
            });
        }
        if let Some(at) = inner.plan.kill_ms {
            let inner = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
                if let Err(e) = kill_and_restart(&inner).await {
                    note(&inner, format!("baton: restart failed: {e:#}"));
                }
            });
        }
        let mut submits = Vec::new();
        for (patient, at) in inner.plan.arrivals_ms.iter().enumerate() {
            tokio::time::sleep_until((start + Duration::from_millis(*at)).into()).await;
            submits.push(tokio::spawn(submit(inner.clone(), patient as u32)));
        }
        for s in submits {
            let _ = s.await;
        }
        let deadline = start + RUN_DEADLINE;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if settled(&inner).await {
                break;
            }
        }
        inner.stopping.store(true, Ordering::SeqCst);
        tally(&inner).await
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

/// Starts `baton dev --listen LISTEN` in `dir` and returns it with its API address.
async fn start_dev(exe: &Path, dir: &Path, listen: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(exe)
        .args(["dev", "--listen", listen])
        .current_dir(dir)
        .env_remove("BATON_DATA_DIR")
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} dev", exe.display()))?;
    let stdout = child.stdout.take().context("baton dev's stdout")?;
    let read = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let Some(Ok(line)) = lines.next() else { return None };
            if let Some(url) = line.trim().strip_prefix("API:") {
                break url.trim().trim_end_matches("/v1").to_owned();
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(address)
    });
    match tokio::time::timeout(START_PATIENCE, read).await {
        Ok(Ok(Some(address))) => Ok((child, address)),
        _ => {
            terminate(&mut child);
            anyhow::bail!("baton dev did not start in {}", dir.display())
        }
    }
}

fn terminate(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn kill_and_restart(inner: &Inner) -> anyhow::Result<()> {
    let Some(mut child) = lock(&inner.child).take() else { return Ok(()) };
    // Child::kill sends SIGKILL: no shutdown, no flush, nothing saved on the way out.
    terminate(&mut child);
    let killed = Instant::now();
    note(inner, "baton: the coordinator is SIGKILLed".into());
    tokio::time::sleep(DOWNTIME).await;
    if inner.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (child, _) = start_dev(&inner.exe, &inner.dir, &inner.listen).await?;
    *lock(&inner.child) = Some(child);
    note(inner, format!("baton: restarted on its data, {} ms after the kill", killed.elapsed().as_millis()));
    Ok(())
}

/// Retries a call while Baton cannot be reached or is unavailable.
async fn retry<T, F, Fut>(inner: &Inner, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let until = Instant::now() + RETRY_FOR;
    loop {
        match call().await {
            Err(e)
                if e.is_retryable() && Instant::now() < until && !inner.stopping.load(Ordering::SeqCst) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn submit(inner: Arc<Inner>, patient: u32) {
    let request = SubmitRequest {
        stage: None,
        workflow: Some(WORKFLOW.to_owned()),
        payload: Payload::from_value(&serde_json::json!({ "patient": patient })).expect("a JSON object"),
        priority: 0,
        deadline: None,
        idempotency_key: Some(format!("patient-{patient}")),
        labels: BTreeMap::new(),
        parent: None,
        trace: None,
    };
    if let Ok(submitted) = retry(&inner, || inner.client.submit(&request)).await {
        lock(&inner.tasks).insert(patient, submitted.task.id);
    }
}

fn patient_of(lease: &Lease) -> u32 {
    lease.payload.to_value()["patient"].as_u64().unwrap_or(u64::MAX) as u32
}

/// One agent of `stage`: claim, work, hand on; with the stage's fault.
async fn agent(inner: Arc<Inner>, stage: &'static str) {
    let name = format!("{stage}-bot");
    while !inner.stopping.load(Ordering::SeqCst) {
        let request = ClaimRequest {
            stages: vec![stage.to_owned()],
            max: 1,
            wait_ms: 500,
            lease_ms: None,
            agent: Some(name.clone()),
        };
        let Ok(leases) = retry(&inner, || inner.client.claim(&request)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for lease in leases {
            let patient = patient_of(&lease);
            match stage {
                "triage" if inner.triage_crash.swap(false, Ordering::SeqCst) => {
                    // Dies holding the lease: no heartbeat, no answer; a new
                    // triage process starts after the same downtime as the
                    // naive one, knowing nothing of the lease.
                    note(
                        &inner,
                        format!("baton: triage crashed holding patient {patient} (epoch {})", lease.epoch),
                    );
                    tokio::time::sleep(DOWNTIME).await;
                    break;
                }
                "specialist" if inner.plan.silent.contains(&patient) => continue,
                "notify" if inner.plan.late.contains(&patient) => tokio::time::sleep(LATE_BY).await,
                _ => tokio::time::sleep(WORK).await,
            }
            let next = STAGES[STAGES.iter().position(|s| *s == stage).unwrap_or(0) + 1];
            let handoff = HandoffRequest {
                epoch: lease.epoch,
                agent: Some(name.clone()),
                to_stage: next.to_owned(),
                note: Some(format!("{stage} done")),
                findings: None,
                confidence: None,
                claim_next: None,
            };
            let key = format!("{}:{}:handoff", lease.task, lease.epoch);
            if retry(&inner, || inner.client.handoff_keyed(lease.task, &handoff, Some(&key))).await.is_ok() {
                inner.progress.ran(stage);
            }
        }
    }
}

/// The records consumer: with faults on it wakes every few seconds and
/// claims a batch; Baton keeps the tasks meanwhile.
async fn records(inner: Arc<Inner>) {
    let name = "records-bot".to_owned();
    while !inner.stopping.load(Ordering::SeqCst) {
        let wait_ms = if inner.plan.faults {
            tokio::time::sleep(BATCH_EVERY).await;
            0
        } else {
            500
        };
        let request = ClaimRequest {
            stages: vec!["records".to_owned()],
            max: 100,
            wait_ms,
            lease_ms: None,
            agent: Some(name.clone()),
        };
        let Ok(leases) = retry(&inner, || inner.client.claim(&request)).await else { continue };
        for lease in leases {
            let complete = CompleteRequest {
                epoch: lease.epoch,
                agent: Some(name.clone()),
                note: Some("filed".into()),
                ..CompleteRequest::default()
            };
            let key = format!("{}:{}:complete", lease.task, lease.epoch);
            if retry(&inner, || inner.client.complete_keyed(lease.task, &complete, Some(&key))).await.is_ok()
            {
                inner.progress.ran("records");
            }
        }
    }
}

/// True when every arrival has a task that is done or waits in the inbox.
async fn settled(inner: &Inner) -> bool {
    let tasks = lock(&inner.tasks).clone();
    if tasks.len() < inner.plan.patients() as usize {
        return false;
    }
    let mut all = true;
    let mut inbox = 0;
    for id in tasks.values() {
        match inner.client.get(*id).await {
            Ok(task) if task.stage == INBOX => inbox += 1,
            Ok(task) if task.state == api::TaskStateName::Done => {}
            _ => all = false,
        }
    }
    inner.progress.set_aside.store(inbox, Ordering::Relaxed);
    all
}

async fn tally(inner: &Inner) -> anyhow::Result<Tally> {
    let tasks = lock(&inner.tasks).clone();
    let mut out = Tally {
        arrived: inner.plan.patients(),
        finished: 0,
        lost: vec![],
        unsettled: vec![],
        ran_twice: vec![],
        escalated: vec![],
        tasks: vec![],
    };
    for patient in 0..inner.plan.patients() {
        let Some(id) = tasks.get(&patient).copied() else {
            out.lost.push(Lost { patient, why: "the submit was never acknowledged".into() });
            continue;
        };
        let task = match retry(inner, || inner.client.get(id)).await {
            Ok(task) => task,
            Err(e) if e.code() == Some(baton_client::ErrorCode::NotFound) => {
                out.lost.push(Lost { patient, why: format!("task {id} was acknowledged and is gone") });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let history = retry(inner, || inner.client.history(id)).await?;
        let mut accepted: BTreeMap<String, u32> = BTreeMap::new();
        for event in &history.events {
            if matches!(event.kind.as_str(), "handed_off" | "completed")
                && let Some(from) = &event.from
            {
                *accepted.entry(from.stage.clone()).or_default() += 1;
            }
        }
        for (stage, times) in accepted {
            if times > 1 {
                out.ran_twice.push(Twice { patient, stage, times });
            }
        }
        if task.stage == INBOX {
            let why = history
                .events
                .iter()
                .rev()
                .find(|e| e.kind == "escalated")
                .and_then(|e| e.note.clone())
                .unwrap_or_else(|| "escalated".into());
            out.escalated.push(Escalated { patient, task: id, why });
        } else if task.state == api::TaskStateName::Done {
            out.finished += 1;
        } else {
            out.unsettled
                .push(Lost { patient, why: format!("{} at {} when the run ended", task.state, task.stage) });
        }
        out.tasks.push(Settled {
            patient,
            task: id,
            state: task.state.to_string(),
            stage: task.stage.clone(),
        });
    }
    Ok(out)
}
