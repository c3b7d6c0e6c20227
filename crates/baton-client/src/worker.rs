//! A worker: the claim loop around a user handler.
//!
//! `Worker::new(client, agent, stages, options)` then `run(handler, shutdown)`:
//! the worker long-polls a claim (one task at a time), spawns the handler with
//! a `Job` (the lease: payload and fence token `(task, stage, epoch)`),
//! heartbeats every `lease_ms / 3` while the handler runs, and applies the
//! handler's `Decision` (hand off, complete, release, fail, abort). The decision
//! carries `claim_next` (except a release, whose own task could come right
//! back), so a busy worker gets its next task in the same round trip and
//! commit. Run several workers for several tasks at once; clones of a
//! `Client` share connections.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use baton_client::{Client, Decision, Job, Worker, WorkerOptions};
//! let client = Client::new("http://127.0.0.1:7707")?;
//! let worker = Worker::new(client, "triage-bot", ["triage"], WorkerOptions::default())?;
//! let handler = |job: Job| async move {
//!     // Work on job.payload(); key outside side effects by job.fence().
//!     Decision::handoff("review").note("triaged").confidence(0.8)
//! };
//! let (stop, mut stopped) = tokio::sync::watch::channel(false);
//! let shutdown = async move {
//!     let _ = stopped.wait_for(|stop| *stop).await;
//! };
//! let stats = worker.run(handler, shutdown).await?; // until `stop.send(true)`
//! # drop(stop);
//! println!("{} handed off", stats.handed_off);
//! # Ok(()) }
//! ```
//!
//! # Retries and why they are safe
//!
//! Claims, holder calls and the history read are retried on transport errors,
//! timeouts and 503 (`Error::is_retryable`) with jittered exponential backoff,
//! for at most `RetryPolicy::give_up_after` per call. A failed call may still
//! have committed (the answer was lost), so a retried holder call is repeated
//! *unchanged*, with the same epoch and the same `Idempotency-Key`
//! (`holder_key`: `{task}:{epoch}:{verb}`, from the fence token and the
//! verb). A server that keeps keyed answers replays the first answer to the
//! retry, status and body, `claim_next` leases included, so a decision whose
//! answer was lost is reported from that answer (`Confirmed::Response`) and
//! its next leases are worked, not left to expire.
//!
//! Servers that ignore the header (older ones), or whose record of the key is
//! gone, fall back on the fence: if the first attempt did not land, the retry
//! is the first to land. If it did land,
//! the lease is over (the task moved on or finished, epochs only grow), so the
//! retry changes nothing and is refused with `lease_lost`. The worker then
//! reads the task's history and looks for the decision's own event: an event
//! by this agent that left `held` at the lease's stage with the lease's epoch
//! (`handed_off` for a handoff; `completed` or `handed_off` for a complete;
//! `released`/`failed` or the ladder's `rerouted`/`escalated` for a release or
//! fail; `aborted` for an abort). Only this holder could have written it, because the epoch names the
//! lease and a lease expiry or another agent's claim would have raised the
//! epoch first. Found: the decision landed and is reported as applied
//! (`Confirmed::History`). Not found: the lease was lost before the decision
//! landed (`Outcome::Lost`). Without an earlier ambiguous failure a
//! `lease_lost` is taken as lost at once. So a repeated complete never counts
//! twice, and a complete that landed is never reported as lost.
//!
//! On that fallback path, leases granted by the `claim_next` part of an
//! answer that was lost are not known to the worker; they expire after `lease_ms` and Baton offers the
//! tasks again. The same holds for a long-poll claim abandoned at shutdown.
//!
//! # Bounds
//!
//! One lease at a time (plus at most one from `claim_next`); each call retried
//! for at most `give_up_after`; each handler run for at most
//! `handler_timeout`; once the worker is stopping, or the lease is known lost,
//! the handler gets `grace` to finish before it is aborted. Heartbeats end
//! with the handler. A claim loop that cannot reach Baton for `give_up_after`
//! ends the run with `WorkerError::GaveUp`.

use crate::{Client, Error, ErrorCode, FenceToken, Lease};
use baton_api::{
    AbortRequest, ActResponse, ClaimNext, ClaimRequest, CompleteRequest, Event, FailRequest, HandoffId,
    HandoffRequest, HeartbeatRequest, Payload, ReleaseRequest, TaskStateName,
};
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

/// Characters of a refusal quoted in the `fail` that reports it.
const REFUSAL_TEXT_MAX: usize = 500;

/// How a worker claims, heartbeats and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// How long one claim waits for work (long poll), 0 to 60000 ms.
    pub wait_ms: u64,
    /// The lease asked for on claims and heartbeats; heartbeats go every third of it.
    pub lease_ms: u64,
    /// Claim the next task in the same call that applies a decision.
    pub claim_next: bool,
    /// The longest a handler may run; then it is aborted and the task failed (retryable).
    pub handler_timeout: Duration,
    /// Once the worker is stopping or the lease is lost, how long a running
    /// handler may still take before it is aborted.
    pub grace: Duration,
    /// Each call's own timeout (long-poll claims get their wait on top).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            wait_ms: 20_000,
            lease_ms: 30_000,
            claim_next: true,
            handler_timeout: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// Jittered exponential backoff with a time budget per call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A call failing for this long is given up.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry `attempt` (0-based): half of the capped
    /// exponential step plus `unit` (in [0, 1)) of the other half.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let step = self.initial_backoff.saturating_mul(1u32 << attempt.min(20)).min(self.max_backoff);
        step / 2 + (step / 2).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// What a handler decides about its task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Finish this part and pass the task to `to_stage`.
    Handoff { to_stage: String, report: Report },
    /// Finish the task (or, with a workflow, its stage).
    Complete { result: Option<serde_json::Value>, report: Report },
    /// Give the task back to its stage (an attempt is counted).
    Release { note: Option<String> },
    /// Report a failure; retryable ones come back after the stage's backoff.
    Fail { error: String, retryable: bool },
    /// Abort the task's workflow: the stages it finished are compensated,
    /// latest first, then it ends cancelled.
    Abort { reason: String },
}

/// What a handoff or complete reports along.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub note: Option<String>,
    pub findings: Option<serde_json::Value>,
    /// Between 0 and 1.
    pub confidence: Option<f64>,
}

impl Decision {
    pub fn handoff(to_stage: impl Into<String>) -> Self {
        Self::Handoff { to_stage: to_stage.into(), report: Report::default() }
    }

    pub fn complete() -> Self {
        Self::Complete { result: None, report: Report::default() }
    }

    pub fn release() -> Self {
        Self::Release { note: None }
    }

    pub fn fail(error: impl Into<String>, retryable: bool) -> Self {
        Self::Fail { error: error.into(), retryable }
    }

    /// Abort the task's workflow, saying why (workflow tasks only).
    pub fn abort(reason: impl Into<String>) -> Self {
        Self::Abort { reason: reason.into() }
    }

    /// A note for the history (handoff, complete, release; a fail's note is its error).
    pub fn note(mut self, text: impl Into<String>) -> Self {
        match &mut self {
            Self::Handoff { report, .. } | Self::Complete { report, .. } => report.note = Some(text.into()),
            Self::Release { note } => *note = Some(text.into()),
            Self::Fail { .. } | Self::Abort { .. } => {}
        }
        self
    }

    /// Findings (any JSON) for a handoff or complete.
    pub fn findings(mut self, findings: serde_json::Value) -> Self {
        if let Self::Handoff { report, .. } | Self::Complete { report, .. } = &mut self {
            report.findings = Some(findings);
        }
        self
    }

    /// A confidence (0 to 1) for a handoff or complete.
    pub fn confidence(mut self, confidence: f64) -> Self {
        if let Self::Handoff { report, .. } | Self::Complete { report, .. } = &mut self {
            report.confidence = Some(confidence);
        }
        self
    }

    /// The result of a complete.
    pub fn result(mut self, value: serde_json::Value) -> Self {
        if let Self::Complete { result, .. } = &mut self {
            *result = Some(value);
        }
        self
    }

    /// The API verb this decision calls.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Handoff { .. } => "handoff",
            Self::Complete { .. } => "complete",
            Self::Release { .. } => "release",
            Self::Fail { .. } => "fail",
            Self::Abort { .. } => "abort",
        }
    }

    /// The event kinds this decision's landing may have written.
    fn event_kinds(&self) -> &'static [&'static str] {
        match self {
            Self::Handoff { .. } => &["handed_off"],
            Self::Complete { .. } => &["completed", "handed_off"],
            Self::Release { .. } => &["released", "rerouted", "escalated"],
            Self::Fail { .. } => &["failed", "rerouted", "escalated"],
            Self::Abort { .. } => &["aborted"],
        }
    }
}

/// One claimed task, as the handler gets it.
#[derive(Debug)]
pub struct Job {
    lease: Lease,
    lost: watch::Receiver<Option<Lost>>,
}

impl Job {
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn payload(&self) -> &Payload {
        &self.lease.payload
    }

    pub fn stage(&self) -> &str {
        &self.lease.stage
    }

    /// `(task, stage, epoch)`: the idempotency key for the handler's own side effects.
    pub fn fence(&self) -> FenceToken {
        self.lease.fence()
    }

    /// Whether a heartbeat learnt that the lease is lost (the decision will not land).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves when a heartbeat learns that the lease is lost; never otherwise.
    /// After that the handler has the worker's `grace` to stop.
    pub async fn lost(&self) -> Lost {
        let mut lost = self.lost.clone();
        let seen = lost.wait_for(Option::is_some).await.ok().map(|value| value.clone().unwrap_or_default());
        match seen {
            Some(lost) => lost,
            // The worker dropped the signal: the handler's run is over anyway.
            None => std::future::pending().await,
        }
    }
}

/// What Baton said when it refused the lease: the task's current epoch and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lost {
    pub current_epoch: Option<u64>,
    pub state: Option<String>,
}

/// How the decision was known to have landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The call's own answer.
    Response,
    /// The task's history, after an answer was lost and the retry found the lease over.
    History,
}

/// What became of one lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    HandedOff {
        to_stage: String,
        handoff_id: Option<HandoffId>,
        confirmed: Confirmed,
    },
    Completed {
        confirmed: Confirmed,
    },
    Released {
        confirmed: Confirmed,
    },
    Failed {
        retryable: bool,
        confirmed: Confirmed,
    },
    /// The workflow was aborted: compensation runs, then the task is cancelled.
    Aborted {
        confirmed: Confirmed,
    },
    /// The lease ended before the decision could land (expired, cancelled):
    /// Baton offers the task again or has finished it; nothing was applied.
    Lost(Lost),
    /// Baton refused the decision itself (for example `route_not_allowed`);
    /// the worker then failed the task, not retryable, so people see it
    /// (`reported`), or left its lease to expire.
    Refused {
        code: Option<ErrorCode>,
        message: String,
        reported: bool,
    },
    /// Every attempt within the retry budget failed; the decision may or may
    /// not have landed. If it did not, the lease expires and the task returns.
    Unknown {
        error: String,
    },
}

/// How the handler's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerEnd {
    /// It returned a decision.
    Returned,
    /// It panicked; the worker failed the task (retryable).
    Panicked(String),
    /// It ran past `handler_timeout`; the worker failed the task (retryable).
    TimedOut,
    /// The worker was stopping, or the lease was lost, and the grace ran out.
    Aborted,
    /// The lease came from `claim_next` after the worker began stopping; it
    /// was released unworked.
    NotRun,
}

/// One finished lease, as `Worker::on_finished` observers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub fence: FenceToken,
    pub handler: HandlerEnd,
    pub outcome: Outcome,
}

/// Counts over a worker's run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Claim calls made (long polls included, retries included).
    pub claims: u64,
    /// Leases received, from claims and `claim_next`.
    pub leases: u64,
    pub handed_off: u64,
    pub completed: u64,
    pub released: u64,
    pub failed: u64,
    pub aborted: u64,
    pub lost: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Decisions found landed in the history after their answer was lost.
    pub confirmed_by_history: u64,
    /// Calls repeated after a retryable failure.
    pub retries: u64,
    pub heartbeats: u64,
    pub heartbeat_failures: u64,
    pub handler_panics: u64,
    pub handler_timeouts: u64,
}

impl WorkerStats {
    /// Adds another worker's counts to these (for a fleet's totals).
    pub fn add(&mut self, other: &Self) {
        let Self {
            claims,
            leases,
            handed_off,
            completed,
            released,
            failed,
            aborted,
            lost,
            refused,
            unknown,
            confirmed_by_history,
            retries,
            heartbeats,
            heartbeat_failures,
            handler_panics,
            handler_timeouts,
        } = other;
        self.claims += claims;
        self.leases += leases;
        self.handed_off += handed_off;
        self.completed += completed;
        self.released += released;
        self.failed += failed;
        self.aborted += aborted;
        self.lost += lost;
        self.refused += refused;
        self.unknown += unknown;
        self.confirmed_by_history += confirmed_by_history;
        self.retries += retries;
        self.heartbeats += heartbeats;
        self.heartbeat_failures += heartbeat_failures;
        self.handler_panics += handler_panics;
        self.handler_timeouts += handler_timeouts;
    }
}

/// Why a worker stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker options: {0}")]
    Options(String),
    /// A claim was refused for a reason retrying cannot fix (unknown stage,
    /// lease out of bounds, ...).
    #[error("claim refused: {0}")]
    ClaimRefused(#[source] Error),
    /// Baton stayed unreachable or unavailable for the whole retry budget.
    #[error("gave up claiming after {elapsed:?}: {source}")]
    GaveUp {
        elapsed: Duration,
        #[source]
        source: Error,
    },
}

type Observer = Arc<dyn Fn(&Finished) + Send + Sync>;

/// The claim loop. See the module documentation.
pub struct Worker {
    client: Client,
    /// `agent:ID`, as the history names this worker.
    actor: String,
    stages: Vec<String>,
    options: WorkerOptions,
    observer: Option<Observer>,
    stats: WorkerStats,
    rng: SplitMix,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("actor", &self.actor)
            .field("stages", &self.stages)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `agent` on `stages`. Checks the options; talks to nobody yet.
    pub fn new(
        client: Client,
        agent: impl Into<String>,
        stages: impl IntoIterator<Item = impl Into<String>>,
        options: WorkerOptions,
    ) -> Result<Self, WorkerError> {
        let agent = agent.into();
        let stages: Vec<String> = stages.into_iter().map(Into::into).collect();
        check_options(&agent, &stages, &options).map_err(WorkerError::Options)?;
        let client = client.with_agent(agent.clone()).with_request_timeout(options.request_timeout);
        Ok(Self {
            client,
            actor: format!("agent:{agent}"),
            stages,
            options,
            observer: None,
            stats: WorkerStats::default(),
            rng: SplitMix::from_entropy(),
        })
    }

    /// Calls `observer` with every finished lease, in order, from the worker's task.
    pub fn on_finished(mut self, observer: impl Fn(&Finished) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Claims and works tasks until `shutdown` resolves, then lets the
    /// running handler finish (within `grace`), applies its decision without
    /// claiming more, releases any lease it has not started, and returns the
    /// counts. Errors only when claiming cannot go on (see `WorkerError`).
    pub async fn run<H, Fut, S>(mut self, handler: H, shutdown: S) -> Result<WorkerStats, WorkerError>
    where
        H: Fn(Job) -> Fut,
        Fut: Future<Output = Decision> + Send + 'static,
        S: Future<Output = ()> + Send,
    {
        let mut stop = Stop { signal: Box::pin(shutdown), fired: false };
        let mut pending: VecDeque<Lease> = VecDeque::new();
        loop {
            let stopping = stop.check();
            let lease = match pending.pop_front() {
                Some(lease) => lease,
                None if stopping => break,
                None => {
                    pending.extend(self.claim(&mut stop).await?);
                    continue;
                }
            };
            let finished = if stopping {
                let outcome = self.apply(&lease, &Decision::release().note("worker stopping"), None).await;
                Finished { fence: lease.fence(), handler: HandlerEnd::NotRun, outcome }
            } else {
                self.work(lease, &handler, &mut stop, &mut pending).await
            };
            self.record(&finished);
        }
        Ok(self.stats)
    }

    /// One claim, retried; empty when the wait ended with no work or the worker is stopping.
    async fn claim<S: Future<Output = ()>>(&mut self, stop: &mut Stop<S>) -> Result<Vec<Lease>, WorkerError> {
        let request = ClaimRequest {
            stages: self.stages.clone(),
            max: 1,
            wait_ms: self.options.wait_ms,
            lease_ms: Some(self.options.lease_ms),
            agent: None,
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            self.stats.claims += 1;
            let result = tokio::select! {
                result = self.client.claim(&request) => result,
                () = stop.wait() => return Ok(Vec::new()),
            };
            let error = match result {
                Ok(leases) => {
                    self.stats.leases += leases.len() as u64;
                    return Ok(leases);
                }
                Err(error) if error.is_retryable() || matches!(error, Error::TooManyLeases { .. }) => error,
                Err(error) => return Err(WorkerError::ClaimRefused(error)),
            };
            if started.elapsed() >= self.options.retry.give_up_after {
                return Err(WorkerError::GaveUp { elapsed: started.elapsed(), source: error });
            }
            self.stats.retries += 1;
            let pause = self.backoff(attempt);
            attempt += 1;
            tokio::select! {
                () = sleep(pause) => {}
                () = stop.wait() => return Ok(Vec::new()),
            }
        }
    }

    /// Runs the handler on one lease with heartbeats, then applies its decision.
    async fn work<H, Fut, S>(
        &mut self,
        lease: Lease,
        handler: &H,
        stop: &mut Stop<S>,
        pending: &mut VecDeque<Lease>,
    ) -> Finished
    where
        H: Fn(Job) -> Fut,
        Fut: Future<Output = Decision> + Send + 'static,
        S: Future<Output = ()>,
    {
        let (lost_tx, lost_rx) = watch::channel(None);
        let counters = Arc::new(BeatCounters::default());
        let mut run = tokio::spawn(handler(Job { lease: lease.clone(), lost: lost_rx.clone() }));
        let beats = tokio::spawn(heartbeats(
            self.client.clone(),
            lease.task,
            lease.epoch,
            self.options.lease_ms,
            lost_tx,
            counters.clone(),
        ));
        // If this future is dropped mid-task (the worker's caller gave up on
        // it), the handler and its heartbeats stop with it: detached
        // heartbeats would keep the lease alive with nobody working.
        let _stop_on_drop = AbortOnDrop([run.abort_handle(), beats.abort_handle()]);
        let hard_limit = Instant::now() + self.options.handler_timeout;
        let limit = sleep_until(hard_limit);
        tokio::pin!(limit);
        let mut watch_lost = lost_rx.clone();
        // Set once the worker is stopping or the lease is lost: the grace began.
        let mut cut_short = false;
        let (end, decision) = loop {
            tokio::select! {
                joined = &mut run => break match joined {
                    Ok(decision) => (HandlerEnd::Returned, decision),
                    Err(error) => {
                        let text = panic_text(error);
                        self.stats.handler_panics += 1;
                        let decision = Decision::fail(format!("handler panicked: {text}"), true);
                        (HandlerEnd::Panicked(text), decision)
                    }
                },
                () = &mut limit => {
                    run.abort();
                    if cut_short {
                        break (HandlerEnd::Aborted, Decision::release().note("worker stopping"));
                    }
                    self.stats.handler_timeouts += 1;
                    let after = self.options.handler_timeout;
                    break (HandlerEnd::TimedOut, Decision::fail(format!("handler timed out after {after:?}"), true));
                }
                () = stop.wait(), if !cut_short => cut_short = true,
                _ = watch_lost.wait_for(Option::is_some), if !cut_short => cut_short = true,
            }
            if cut_short {
                let graced = (Instant::now() + self.options.grace).min(hard_limit);
                limit.as_mut().reset(graced);
            }
        };
        beats.abort();
        self.stats.heartbeats += counters.ok.load(Ordering::Relaxed);
        self.stats.heartbeat_failures += counters.failed.load(Ordering::Relaxed);
        let lost = lost_rx.borrow().clone();
        let outcome = match lost {
            // The decision cannot land: the fence already refused this epoch.
            Some(lost) => Outcome::Lost(lost),
            None => {
                // A release asks for nothing next: the released task, offered
                // again in the same transaction, could be the one it gets back.
                let wants_next = !matches!(decision, Decision::Release { .. });
                let next = (self.options.claim_next && wants_next && !stop.check()).then(|| ClaimNext {
                    stages: self.stages.clone(),
                    max: 1,
                    lease_ms: Some(self.options.lease_ms),
                });
                let (outcome, next) = self.apply_with_next(&lease, &decision, next).await;
                self.stats.leases += next.len() as u64;
                pending.extend(next);
                outcome
            }
        };
        Finished { fence: lease.fence(), handler: end, outcome }
    }

    async fn apply(&mut self, lease: &Lease, decision: &Decision, next: Option<ClaimNext>) -> Outcome {
        self.apply_with_next(lease, decision, next).await.0
    }

    /// Delivers a decision; a refused one is reported with a non-retryable fail.
    async fn apply_with_next(
        &mut self,
        lease: &Lease,
        decision: &Decision,
        next: Option<ClaimNext>,
    ) -> (Outcome, Vec<Lease>) {
        let delivered = self.deliver(lease, decision, next).await;
        let applied = |confirmed, handoff_id| match decision {
            Decision::Handoff { to_stage, .. } => {
                Outcome::HandedOff { to_stage: to_stage.clone(), handoff_id, confirmed }
            }
            Decision::Complete { .. } => Outcome::Completed { confirmed },
            Decision::Release { .. } => Outcome::Released { confirmed },
            Decision::Fail { retryable, .. } => Outcome::Failed { retryable: *retryable, confirmed },
            Decision::Abort { .. } => Outcome::Aborted { confirmed },
        };
        match delivered {
            Delivered::Applied(response) => {
                (applied(Confirmed::Response, response.handoff_id), response.next)
            }
            Delivered::Landed => (applied(Confirmed::History, None), Vec::new()),
            Delivered::Lost(lost) => (Outcome::Lost(lost), Vec::new()),
            Delivered::Unknown(error) => (Outcome::Unknown { error }, Vec::new()),
            Delivered::Refused(error) => {
                let mut reported = false;
                if !matches!(decision, Decision::Fail { .. }) {
                    let text: String = format!("worker: {} refused: {error}", decision.verb())
                        .chars()
                        .take(REFUSAL_TEXT_MAX)
                        .collect();
                    let report = Decision::fail(text, false);
                    reported = matches!(
                        self.deliver(lease, &report, None).await,
                        Delivered::Applied(_) | Delivered::Landed
                    );
                }
                let outcome = Outcome::Refused { code: error.code(), message: error.to_string(), reported };
                (outcome, Vec::new())
            }
        }
    }

    /// Sends a decision, retrying as the module documentation describes.
    async fn deliver(&mut self, lease: &Lease, decision: &Decision, next: Option<ClaimNext>) -> Delivered {
        let started = Instant::now();
        let mut attempt = 0;
        let mut ambiguous = false;
        loop {
            let error = match self.send(lease, decision, next.clone()).await {
                Ok(response) => return Delivered::Applied(Box::new(response)),
                Err(error) => error,
            };
            match error {
                error if error.is_retryable() => {
                    // The answer is missing, not the decision: it may have landed.
                    ambiguous = true;
                    if started.elapsed() >= self.options.retry.give_up_after {
                        return Delivered::Unknown(error.to_string());
                    }
                    self.stats.retries += 1;
                    let pause = self.backoff(attempt);
                    attempt += 1;
                    sleep(pause).await;
                }
                Error::LeaseLost { current_epoch, state, .. } => {
                    let lost = Lost { current_epoch, state };
                    if !ambiguous {
                        return Delivered::Lost(lost);
                    }
                    return match self.landed(lease, decision).await {
                        Ok(true) => Delivered::Landed,
                        Ok(false) => Delivered::Lost(lost),
                        Err(error) => Delivered::Unknown(error),
                    };
                }
                Error::NotHolder { .. } | Error::NotFound { .. } => return Delivered::Lost(Lost::default()),
                error => return Delivered::Refused(error),
            }
        }
    }

    async fn send(
        &self,
        lease: &Lease,
        decision: &Decision,
        claim_next: Option<ClaimNext>,
    ) -> Result<ActResponse, Error> {
        let (task, epoch) = (lease.task, lease.epoch);
        let key = holder_key(lease, decision.verb());
        let key = Some(key.as_str());
        match decision {
            Decision::Handoff { to_stage, report } => {
                let request = HandoffRequest {
                    epoch,
                    agent: None,
                    to_stage: to_stage.clone(),
                    note: report.note.clone(),
                    findings: report.findings.clone(),
                    confidence: report.confidence,
                    claim_next,
                };
                self.client.handoff_keyed(task, &request, key).await
            }
            Decision::Complete { result, report } => {
                let request = CompleteRequest {
                    epoch,
                    agent: None,
                    result: result.clone(),
                    note: report.note.clone(),
                    findings: report.findings.clone(),
                    confidence: report.confidence,
                    claim_next,
                };
                self.client.complete_keyed(task, &request, key).await
            }
            Decision::Release { note } => {
                let request = ReleaseRequest { epoch, agent: None, note: note.clone(), claim_next };
                self.client.release_keyed(task, &request, key).await
            }
            Decision::Fail { error, retryable } => {
                let request = FailRequest {
                    epoch,
                    agent: None,
                    error: error.clone(),
                    retryable: *retryable,
                    claim_next,
                };
                self.client.fail_keyed(task, &request, key).await
            }
            Decision::Abort { reason } => {
                let request = AbortRequest { epoch, agent: None, reason: reason.clone(), claim_next };
                self.client.abort_request_keyed(task, &request, key).await
            }
        }
    }

    /// Whether the task's history holds this decision's event (retried reads).
    async fn landed(&mut self, lease: &Lease, decision: &Decision) -> Result<bool, String> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.client.history(lease.task).await {
                Ok(history) => {
                    let found = decision_landed(
                        &history.events,
                        &self.actor,
                        &lease.stage,
                        lease.epoch,
                        decision.event_kinds(),
                    );
                    if found {
                        self.stats.confirmed_by_history += 1;
                    }
                    return Ok(found);
                }
                Err(error)
                    if error.is_retryable() && started.elapsed() < self.options.retry.give_up_after =>
                {
                    self.stats.retries += 1;
                    let pause = self.backoff(attempt);
                    attempt += 1;
                    sleep(pause).await;
                }
                Err(error) => return Err(format!("could not read the history to settle a retry: {error}")),
            }
        }
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let unit = self.rng.unit();
        self.options.retry.delay(attempt, unit)
    }

    fn record(&mut self, finished: &Finished) {
        let stats = &mut self.stats;
        match &finished.outcome {
            Outcome::HandedOff { .. } => stats.handed_off += 1,
            Outcome::Completed { .. } => stats.completed += 1,
            Outcome::Released { .. } => stats.released += 1,
            Outcome::Failed { .. } => stats.failed += 1,
            Outcome::Aborted { .. } => stats.aborted += 1,
            Outcome::Lost(_) => stats.lost += 1,
            Outcome::Refused { .. } => stats.refused += 1,
            Outcome::Unknown { .. } => stats.unknown += 1,
        }
        if let Some(observer) = &self.observer {
            observer(finished);
        }
    }
}

enum Delivered {
    Applied(Box<ActResponse>),
    /// Found in the history after an answer was lost.
    Landed,
    Lost(Lost),
    Refused(Error),
    Unknown(String),
}

/// The `Idempotency-Key` of a holder call: `{task}:{epoch}:{verb}`. The
/// fence token names the lease and only its holder may act under it, so the
/// key is unique to one decision (and to the `fail` that reports a refused
/// one), and a retry of that decision carries the same key.
pub fn holder_key(lease: &Lease, verb: &str) -> String {
    format!("{}:{}:{verb}", lease.task, lease.epoch)
}

/// Whether `events` hold the event a decision by `actor` on the lease
/// `(stage, epoch)` writes: by that actor, of one of `kinds`, leaving `held`
/// at `stage`, with the lease's epoch (handoff, complete, release and fail
/// keep the epoch; only claims and expiries raise it).
pub fn decision_landed(events: &[Event], actor: &str, stage: &str, epoch: u64, kinds: &[&str]) -> bool {
    events.iter().any(|event| {
        event.actor == actor
            && event.epoch == epoch
            && kinds.contains(&event.kind.as_str())
            && event
                .from
                .as_ref()
                .is_some_and(|from| from.state == TaskStateName::Held && from.stage == stage)
    })
}

#[derive(Debug, Default)]
struct BeatCounters {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Heartbeats every `lease_ms / 3` until aborted or the lease is known lost.
/// A failed heartbeat is tried again after a quarter of that; each one is cut
/// off after the interval, so a hung call never delays the next.
async fn heartbeats(
    client: Client,
    task: crate::TaskId,
    epoch: u64,
    lease_ms: u64,
    lost: watch::Sender<Option<Lost>>,
    counters: Arc<BeatCounters>,
) {
    let every = Duration::from_millis((lease_ms / 3).max(1));
    let request =
        HeartbeatRequest { epoch, agent: None, lease_ms: Some(lease_ms), note: None, claim_next: None };
    let mut next = Instant::now() + every;
    loop {
        sleep_until(next).await;
        let sent = Instant::now();
        match tokio::time::timeout(every, client.heartbeat(task, &request)).await {
            Ok(Ok(_)) => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
                next = sent + every;
            }
            Ok(Err(Error::LeaseLost { current_epoch, state, .. })) => {
                lost.send_replace(Some(Lost { current_epoch, state }));
                return;
            }
            Ok(Err(Error::NotHolder { .. } | Error::NotFound { .. })) => {
                lost.send_replace(Some(Lost::default()));
                return;
            }
            Ok(Err(_)) | Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                next = Instant::now() + every / 4;
            }
        }
    }
}

/// The shutdown signal, polled from several places, remembered once fired.
struct Stop<S> {
    signal: Pin<Box<S>>,
    fired: bool,
}

impl<S: Future<Output = ()>> Stop<S> {
    /// Whether the signal has fired, looking without waiting.
    fn check(&mut self) -> bool {
        if !self.fired {
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            self.fired = self.signal.as_mut().poll(&mut context).is_ready();
        }
        self.fired
    }

    /// Resolves when the signal fires; never again after that.
    async fn wait(&mut self) {
        if self.fired {
            return std::future::pending().await;
        }
        self.signal.as_mut().await;
        self.fired = true;
    }
}

fn check_options(agent: &str, stages: &[String], options: &WorkerOptions) -> Result<(), String> {
    if agent.trim().is_empty() {
        return Err("agent must not be empty".into());
    }
    if stages.is_empty() || stages.iter().any(|s| s.trim().is_empty()) {
        return Err("name at least one stage, none empty".into());
    }
    if options.wait_ms > baton_api::limits::WAIT_MS_MAX {
        return Err(format!("wait_ms must be at most {}", baton_api::limits::WAIT_MS_MAX));
    }
    if options.lease_ms < 30 {
        return Err("lease_ms must be at least 30 (heartbeats go every third of it)".into());
    }
    let retry = &options.retry;
    if retry.initial_backoff.is_zero() || retry.max_backoff < retry.initial_backoff {
        return Err("retry backoff must be positive with max_backoff >= initial_backoff".into());
    }
    if options.handler_timeout.is_zero() || options.request_timeout.is_zero() {
        return Err("handler_timeout and request_timeout must be positive".into());
    }
    Ok(())
}

fn panic_text(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "cancelled".into();
    }
    let panic = error.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}

/// SplitMix64, seeded per worker from std's per-process random keys: jitter only.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn from_entropy() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        Self(hasher.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;

/// Aborts its tasks when dropped (a no-op for tasks already finished).
struct AbortOnDrop<const N: usize>([tokio::task::AbortHandle; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}
