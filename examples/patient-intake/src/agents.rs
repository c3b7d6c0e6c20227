//! The agents of the run, each a tokio task against the server:
//!
//! - intake, triage, the healthy mailer, billing (when a stage follows it)
//!   and refund are `baton_client::Worker`s: a claim loop with heartbeats
//!   around a handler that returns a decision;
//! - the specialist never answers: it is on the roster and claims nothing,
//!   so the specialist stage's ladder re-offers and then reroutes every case
//!   to the backup;
//! - the backup specialist fans out: it spawns a `notify-email` and a
//!   `notify-sms` child with an `any` join, and when the join holds (the
//!   task comes back to it) completes the case on to billing;
//! - the crashing mailer is a process of its own (a thread with its own
//!   runtime, its own connections and workers): it claims the first email
//!   tasks, and while their handlers are mid-task the process dies (the
//!   runtime is dropped, heartbeats and all), so the leases expire and Baton
//!   offers the tasks again, to the healthy mailer that starts after it;
//! - the SMS gateway answers late: it claims a task only once the ladder has
//!   re-offered it (its first `accept_within` ran out), then completes it;
//! - the agent of the abort stage (the stage after billing, else billing)
//!   aborts cases whose insurance lapsed: Baton then hands a compensation
//!   task to `refund` for every compensable stage already done.
//!
//! Every loop ends on the run's stop signal; a raw loop gives up after
//! `CALL_RETRIES_MAX` failed calls in a row.

use crate::patients;
use crate::setup::{Cast, DEMO_LEASE_MS, stage};
use anyhow::Context;
use baton_client::api::{
    ChildSpec, ClaimRequest, CompleteRequest, JoinMode, JoinRequest, ListQuery, SpawnRequest,
};
use baton_client::api::{Payload, TaskStateName, WaitKind};
use baton_client::worker::RetryPolicy;
use baton_client::{Client, Decision, Error, Job, Lease, Worker, WorkerOptions};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::sleep;

/// `Worker`s run per stage (and for the restarted mailer): their commits batch.
const WORKERS_PER_STAGE: usize = 2;
/// Tasks one raw claim may lease.
const CLAIM_MAX: u32 = 10;
/// How long one raw claim waits for work (long poll).
const CLAIM_WAIT_MS: u64 = 1_000;
/// Failed calls in a row after which a raw loop gives up.
const CALL_RETRIES_MAX: u32 = 20;
/// The pause between retries of a failed call.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often the late SMS gateway looks for re-offered tasks.
const LATE_POLL: Duration = Duration::from_millis(100);
/// Tasks of one stage listing the SMS gateway reads.
const LIST_LIMIT: u32 = 100;
/// How long the children of a fan-out have to join.
pub const JOIN_WITHIN_MS: u64 = 30_000;
/// After its first lease the crashing mailer works this long, then dies.
const CRASH_AFTER: Duration = Duration::from_millis(1_000);

/// The run's stop signal, cloned into every agent.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub fn channel() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the run stops.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// What the agents counted, for the summary.
#[derive(Debug, Default)]
pub struct Tally {
    /// Email leases the crashing mailer held when it died.
    pub crashed_leases: AtomicUsize,
    /// SMS tasks claimed only after the ladder re-offered them.
    pub late_claims: AtomicUsize,
    pub spawns: AtomicUsize,
    pub aborts: AtomicUsize,
}

/// The running agents.
pub struct Fleet {
    pub tally: Arc<Tally>,
    handles: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl Fleet {
    /// Starts every agent of `cast` against `client`'s server.
    pub fn start(client: &Client, cast: &Cast, crashes: usize, stop: &Stop) -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        let mut fleet = Self { tally: tally.clone(), handles: Vec::new() };
        fleet.worker(client, &cast.intake, stage::INTAKE, stop, |job| async move {
            let patient = job.payload().to_value()["patient"].clone();
            Decision::complete()
                .note("vitals taken, history recorded")
                .findings(json!({ "patient": patient, "vitals": "stable" }))
                .confidence(0.95)
        })?;
        fleet.worker(client, &cast.triage, stage::TRIAGE, stop, |job| async move {
            if patients::is_unclear(&job.payload().to_value()) {
                Decision::handoff(stage::FRONT_DESK).note("cannot decide: a person must see this case")
            } else {
                Decision::handoff(stage::SPECIALIST).note("needs a cardiologist").confidence(0.8)
            }
        })?;
        // The specialist (`cast.specialist`) never answers: nothing is started for it.
        let backup = client.clone().with_agent(cast.backup.clone());
        let t = tally.clone();
        fleet.spawn_loop(&cast.backup, stage::BACKUP, &backup, stop, move |client, lease| {
            fan_out_or_finish(client, lease, t.clone())
        });
        fleet.crash_then_mail(client, &cast.mailer, crashes, stop)?;
        let sms = client.clone().with_agent(cast.sms.clone());
        let (t, s) = (tally.clone(), stop.clone());
        fleet.handles.push((cast.sms.clone(), tokio::spawn(late_sms(sms, t, s))));
        let abort_stage = cast.abort_stage().to_owned();
        if let Some((after, _)) = &cast.after_billing {
            fleet.worker(client, &cast.billing, stage::BILLING, stop, |_job| async move {
                Decision::complete().note("charged").result(json!({ "charged": 120 }))
            })?;
            debug_assert_eq!(after, &abort_stage);
        }
        let abort_agent = cast.after_billing.as_ref().map_or(&cast.billing, |(_, agent)| agent);
        let aborter = client.clone().with_agent(abort_agent.clone());
        let t = tally.clone();
        fleet.spawn_loop(abort_agent, &abort_stage, &aborter, stop, move |client, lease| {
            finish_or_abort(client, lease, t.clone())
        });
        fleet.worker(client, &cast.refund, stage::REFUND, stop, |job| async move {
            let refunded = job.payload().to_value()["compensate"].clone();
            Decision::complete().note("charge refunded").result(json!({ "refunded": 120, "case": refunded }))
        })?;
        Ok(fleet)
    }

    /// `WORKERS_PER_STAGE` `Worker`s for `agent` on `stage` with the run's short timings.
    fn worker<H, Fut>(
        &mut self,
        client: &Client,
        agent: &str,
        stage: &str,
        stop: &Stop,
        handler: H,
    ) -> anyhow::Result<()>
    where
        H: Fn(Job) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Decision> + Send + 'static,
    {
        for n in 1..=WORKERS_PER_STAGE {
            let worker = Worker::new(client.clone(), agent, [stage], worker_options())
                .with_context(|| format!("worker {agent} on {stage}"))?;
            let (stop, handler) = (stop.clone(), handler.clone());
            let handle = tokio::spawn(async move {
                worker.run(handler, stop.wait()).await.map(|_| ()).map_err(anyhow::Error::from)
            });
            self.handles.push((format!("{agent} #{n} ({stage})"), handle));
        }
        Ok(())
    }

    /// A raw claim loop on `stage` that hands each lease to `each`.
    fn spawn_loop<F, Fut>(&mut self, agent: &str, stage: &str, client: &Client, stop: &Stop, each: F)
    where
        F: Fn(Client, Lease) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let (client, stage_name, stop) = (client.clone(), stage.to_owned(), stop.clone());
        let handle = tokio::spawn(claim_loop(client, stage_name, stop, each));
        self.handles.push((format!("{agent} ({stage})"), handle));
    }

    /// The crashing mailer, then (once it died) the healthy one.
    fn crash_then_mail(
        &mut self,
        client: &Client,
        agent: &str,
        crashes: usize,
        stop: &Stop,
    ) -> anyhow::Result<()> {
        let mut workers = Vec::with_capacity(WORKERS_PER_STAGE);
        for _ in 0..WORKERS_PER_STAGE {
            workers.push(
                Worker::new(client.clone(), agent, [stage::EMAIL], worker_options())
                    .with_context(|| format!("worker {agent} on {}", stage::EMAIL))?,
            );
        }
        let (address, agent_name, stop) = (client.address().to_owned(), agent.to_owned(), stop.clone());
        let tally = self.tally.clone();
        let handle = tokio::spawn(async move {
            if crashes > 0 {
                let taken = crash_mailer(address, agent_name, crashes, stop.clone()).await?;
                tally.crashed_leases.fetch_add(taken, Ordering::Relaxed);
            }
            // Restarted: the healthy mailer's workers.
            let mut running = JoinSet::new();
            for worker in workers {
                let handler = |job: Job| async move {
                    let patient = job.payload().to_value()["patient"].clone();
                    Decision::complete()
                        .note("email sent")
                        .result(json!({ "to": patient, "channel": "email" }))
                };
                running.spawn(worker.run(handler, stop.clone().wait()));
            }
            while let Some(ended) = running.join_next().await {
                ended.context("a mailer worker panicked")??;
            }
            Ok(())
        });
        self.handles.push((format!("{agent} ({})", stage::EMAIL), handle));
        Ok(())
    }

    /// Waits for every agent to end (after the stop signal); an agent that
    /// failed or panicked is reported by name.
    pub async fn join(self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, handle) in self.handles {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => problems.push(format!("agent {name} stopped with an error: {error:#}")),
                Err(error) => problems.push(format!("agent {name} panicked: {error}")),
            }
        }
        problems
    }
}

fn worker_options() -> WorkerOptions {
    WorkerOptions {
        wait_ms: 2_000,
        lease_ms: DEMO_LEASE_MS as u64,
        claim_next: true,
        handler_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            give_up_after: Duration::from_secs(20),
        },
    }
}

/// Claims from `stage` until stopped and hands each lease to `each`. A lease
/// lost meanwhile is left to the ladder; a failed call is retried.
async fn claim_loop<F, Fut>(client: Client, stage: String, stop: Stop, each: F) -> anyhow::Result<()>
where
    F: Fn(Client, Lease) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let mut failures = 0;
    let stages = [stage.as_str()];
    while !stop.is_set() {
        let claimed = tokio::select! {
            claimed = client.claim_from(&stages, CLAIM_MAX, CLAIM_WAIT_MS) => claimed,
            () = stop.clone().wait() => break,
        };
        let leases = match claimed {
            Ok(leases) => leases,
            Err(error) => {
                retry_or_give_up(&mut failures, error, &stage).await?;
                continue;
            }
        };
        for lease in leases {
            match each(client.clone(), lease).await {
                // The lease ended first (the ladder took the task back): Baton offers it again.
                Ok(()) | Err(Error::LeaseLost { .. } | Error::NotHolder { .. }) => failures = 0,
                Err(error) => retry_or_give_up(&mut failures, error, &stage).await?,
            }
        }
    }
    Ok(())
}

/// Counts a failed call: a retryable one pauses and goes on, up to
/// `CALL_RETRIES_MAX` in a row; anything else ends the loop.
async fn retry_or_give_up(failures: &mut u32, error: Error, stage: &str) -> anyhow::Result<()> {
    *failures += 1;
    if !error.is_retryable() || *failures > CALL_RETRIES_MAX {
        return Err(anyhow::Error::from(error).context(format!("at {stage}, after {failures} failed calls")));
    }
    sleep(RETRY_PAUSE).await;
    Ok(())
}

/// The backup specialist: a first visit fans out to the two notify channels
/// (join `any`); the visit after the join completes the case on to billing.
async fn fan_out_or_finish(client: Client, lease: Lease, tally: Arc<Tally>) -> Result<(), Error> {
    let history = client.history(lease.task).await?;
    let joined = history.events.iter().any(|e| e.kind == "joined");
    if joined {
        let request = CompleteRequest {
            epoch: lease.epoch,
            note: Some("treatment plan written; patient notified".to_owned()),
            findings: Some(
                json!({ "diagnosis": "stable angina", "plan": "medication, follow-up in 4 weeks" }),
            ),
            confidence: Some(0.85),
            ..Default::default()
        };
        client.complete(lease.task, &request).await?;
        return Ok(());
    }
    let patient = lease.payload.to_value()["patient"].clone();
    let child = |stage: &str| -> Result<ChildSpec, Error> {
        let payload =
            Payload::from_value(&json!({ "patient": patient, "message": "your treatment plan is ready" }))
                .map_err(|e| Error::Protocol { status: 0, detail: e.to_string() })?;
        Ok(ChildSpec { stage: stage.to_owned(), payload, priority: 0, labels: Default::default() })
    };
    let request = SpawnRequest {
        epoch: lease.epoch,
        agent: None,
        children: vec![child(stage::EMAIL)?, child(stage::SMS)?],
        join: JoinRequest { mode: JoinMode::Any, n: None, within_ms: JOIN_WITHIN_MS },
        claim_next: None,
    };
    client.spawn(lease.task, &request).await?;
    tally.spawns.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The abort stage's agent: a lapsed insurance aborts the case (Baton
/// compensates what was done), anything else completes it.
async fn finish_or_abort(client: Client, lease: Lease, tally: Arc<Tally>) -> Result<(), Error> {
    if patients::is_lapsed(&lease.payload.to_value()) {
        client.abort(lease.task, lease.epoch, "insurance lapsed: the visit is not covered").await?;
        tally.aborts.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let request = CompleteRequest {
        epoch: lease.epoch,
        note: Some("case closed".to_owned()),
        result: Some(json!({ "charged": 120, "closed": true })),
        ..Default::default()
    };
    client.complete(lease.task, &request).await.map(|_| ())
}

/// The SMS gateway that answers late: it claims only once a waiting task has
/// been re-offered (its first `accept_within` ran out), then sends.
async fn late_sms(client: Client, tally: Arc<Tally>, stop: Stop) -> anyhow::Result<()> {
    let query = ListQuery {
        stage: Some(stage::SMS.to_owned()),
        state: Some(TaskStateName::Waiting),
        limit: Some(LIST_LIMIT),
        ..Default::default()
    };
    let mut failures = 0;
    while !stop.is_set() {
        let page = match client.list(&query).await {
            Ok(page) => page,
            Err(error) => {
                retry_or_give_up(&mut failures, error, stage::SMS).await?;
                continue;
            }
        };
        let late = page
            .tasks
            .iter()
            .filter(|t| t.reoffers >= 1 && t.waiting.as_ref().is_some_and(|w| w.kind == WaitKind::Offered))
            .count();
        if late == 0 {
            tokio::select! {
                () = sleep(LATE_POLL) => {}
                () = stop.clone().wait() => break,
            }
            continue;
        }
        let request = ClaimRequest {
            stages: vec![stage::SMS.to_owned()],
            max: u32::try_from(late).unwrap_or(CLAIM_MAX).min(CLAIM_MAX),
            wait_ms: 0,
            lease_ms: Some(DEMO_LEASE_MS as u64),
            agent: None,
        };
        let leases = match client.claim(&request).await {
            Ok(leases) => leases,
            Err(error) => {
                retry_or_give_up(&mut failures, error, stage::SMS).await?;
                continue;
            }
        };
        for lease in leases {
            tally.late_claims.fetch_add(1, Ordering::Relaxed);
            let request = CompleteRequest {
                epoch: lease.epoch,
                note: Some("SMS sent, late".to_owned()),
                result: Some(json!({ "channel": "sms" })),
                ..Default::default()
            };
            match client.complete(lease.task, &request).await {
                Ok(_) | Err(Error::LeaseLost { .. } | Error::NotHolder { .. }) => failures = 0,
                Err(error) => retry_or_give_up(&mut failures, error, stage::SMS).await?,
            }
        }
    }
    Ok(())
}

/// The crashing mailer: a process of its own (a thread with its own runtime
/// and connections) running `workers` mailers whose handlers never finish.
/// `CRASH_AFTER` its first lease (or at the stop signal) the process dies:
/// its runtime is dropped with every task on it, heartbeats included, so
/// nothing tells Baton; the leases simply expire. Returns how many leases it
/// held when it died.
async fn crash_mailer(address: String, agent: String, workers: usize, stop: Stop) -> anyhow::Result<usize> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("crashing-mailer".to_owned())
        .spawn(move || {
            let result = crashing_process(&address, &agent, workers, stop);
            let _ = done_tx.send(result);
        })
        .context("start the crashing mailer's thread")?;
    done_rx.await.context("the crashing mailer's thread ended without an answer")?
}

fn crashing_process(address: &str, agent: &str, workers: usize, stop: Stop) -> anyhow::Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let taken = Arc::new(AtomicUsize::new(0));
    // Each handler says "I have a task" here; nothing on this thread may block.
    let (took_tx, mut took_rx) = mpsc::unbounded_channel::<()>();
    runtime.block_on(async {
        let client = Client::new(address)?;
        for _ in 0..workers {
            let worker = Worker::new(client.clone(), agent, [stage::EMAIL], worker_options())?;
            let (taken, took_tx) = (taken.clone(), took_tx.clone());
            let handler = move |_job: Job| {
                taken.fetch_add(1, Ordering::Relaxed);
                let _ = took_tx.send(());
                // Composing the email... the process dies before it is sent.
                std::future::pending::<Decision>()
            };
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(handler, stop.wait()).await });
        }
        tokio::select! {
            _ = took_rx.recv() => {
                tokio::select! {
                    () = sleep(CRASH_AFTER) => {}
                    () = stop.clone().wait() => {}
                }
            }
            () = stop.clone().wait() => {}
        }
        anyhow::Ok(())
    })?;
    let held = taken.load(Ordering::Relaxed);
    // The crash: the runtime goes with every task on it, mid-task.
    runtime.shutdown_background();
    Ok(held)
}
