//! Load of real clients for fault runs: tasks of `baton_client::Client` over
//! HTTP, each an agent that submits (with an idempotency key), claims, and
//! hands tasks through stages a → b → c → done with claim-next, recording
//! every call in the shared `Recorder` (invocation, then ok / fail /
//! unknown). Clients never retry a call whose outcome is unknown: they drop
//! the lease and move on, so the history holds exactly what each was told.
//! They keep going through server restarts (a refused connection is a
//! definite failure: nothing was sent), until `Load::stop`.

use crate::crash::SplitMix;
use baton_client::api::{ClaimNext, ClaimRequest, CompleteRequest, HandoffRequest, Payload, SubmitRequest};
use baton_client::{Client, Error, Lease};
use baton_core::TaskId;
use baton_testkit::history::{Call, Granted, Outcome, Recorder};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// The pipeline the clients run.
pub const STAGES: [&str; 3] = ["a", "b", "c"];
/// How long a claim long-polls for work.
const CLAIM_WAIT_MS: u64 = 200;
/// Pause after a failed call, so a down server is not hammered.
const BACKOFF: Duration = Duration::from_millis(50);
/// A call taking longer than this is abandoned as an unknown outcome.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the clients do.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub clients: usize,
    /// Lease asked for on every claim and claim-next.
    pub lease_ms: u64,
    /// One call in `submit_every` of an idle client is a submit.
    pub submit_every: u64,
    /// A client works on each lease this long (ms, uniform) before passing it on.
    pub work_ms: (u64, u64),
    pub seed: u64,
}

/// Running clients; `stop` ends them.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    pub skew: Arc<Skew>,
}

/// Server time minus client time, seen in lease expiries: evidence of a
/// clock offset in the server process (min and max over the run, in ms).
#[derive(Debug)]
pub struct Skew {
    pub min_ms: AtomicI64,
    pub max_ms: AtomicI64,
}

impl Skew {
    fn note(&self, lease: &Lease, lease_ms: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let skew = lease.lease_expires_at.as_millis() - lease_ms as i64 - now;
        self.min_ms.fetch_min(skew, Ordering::Relaxed);
        self.max_ms.fetch_max(skew, Ordering::Relaxed);
    }
}

impl Load {
    /// Starts `config.clients` clients against `address` on the current
    /// runtime; with `token` (auth on) every client calls as its principal.
    pub fn start(
        address: &str,
        config: &LoadConfig,
        recorder: &Recorder,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let skew = Arc::new(Skew { min_ms: AtomicI64::new(i64::MAX), max_ms: AtomicI64::new(i64::MIN) });
        let clients = (0..config.clients)
            .map(|i| {
                let client = Client::new(address)?.with_request_timeout(REQUEST_TIMEOUT);
                // With auth on, the agent is the token's principal; naming another is refused.
                let client = match token {
                    Some(token) => client.with_token(token),
                    None => client.with_agent(format!("fault-{}-{i}", config.seed)),
                };
                let agent = Agent {
                    id: i as u32,
                    client,
                    recorder: recorder.clone(),
                    config: config.clone(),
                    stop: Arc::clone(&stop),
                    skew: Arc::clone(&skew),
                };
                Ok(tokio::spawn(agent.run()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { stop, clients, skew })
    }

    /// Stops the clients and waits for their last calls to return.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            let _ = c.await;
        }
    }
}

struct Agent {
    id: u32,
    client: Client,
    recorder: Recorder,
    config: LoadConfig,
    stop: Arc<AtomicBool>,
    skew: Arc<Skew>,
}

impl Agent {
    async fn run(self) {
        let mut rng =
            SplitMix::new(self.config.seed ^ (u64::from(self.id) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut held: Option<Lease> = None;
        let mut submitted = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let ok = match held.take() {
                Some(lease) => {
                    let work = rng.range(self.config.work_ms.0, self.config.work_ms.1 + 1);
                    if work > 0 {
                        tokio::time::sleep(Duration::from_millis(work)).await;
                    }
                    let (next, ok) = self.pass_on(lease).await;
                    held = next;
                    ok
                }
                None if rng.range(0, self.config.submit_every) == 0 => {
                    let key = format!("f-{}-{}-{submitted}", self.config.seed, self.id);
                    submitted += 1;
                    self.submit(key).await
                }
                None => match self.claim().await {
                    Ok(lease) => {
                        held = lease;
                        true
                    }
                    Err(()) => false,
                },
            };
            if !ok {
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }

    async fn submit(&self, key: String) -> bool {
        let mut request =
            SubmitRequest::new(STAGES[0], Payload::from_json(r#"{"fault":true}"#).expect("json"));
        request.idempotency_key = Some(key.clone());
        let call = self.recorder.invoke(self.id, Some(key.clone()), Call::Submit { key });
        match self.client.submit(&request).await {
            Ok(done) => {
                self.recorder.finish(call, Outcome::Ok { task: Some(TaskId(done.task.id)), grants: vec![] });
                true
            }
            Err(e) => {
                self.recorder.finish(call, outcome_of(&e));
                false
            }
        }
    }

    async fn claim(&self) -> Result<Option<Lease>, ()> {
        let request = ClaimRequest {
            stages: STAGES.iter().map(|s| (*s).to_owned()).collect(),
            max: 1,
            wait_ms: CLAIM_WAIT_MS,
            lease_ms: Some(self.config.lease_ms),
            agent: None,
        };
        let call = self.recorder.invoke(self.id, None, Call::Claim { stages: request.stages.clone() });
        match self.client.claim(&request).await {
            Ok(leases) => {
                self.recorder.finish(call, Outcome::Ok { task: None, grants: self.granted(&leases) });
                Ok(leases.into_iter().next())
            }
            Err(e) => {
                self.recorder.finish(call, outcome_of(&e));
                Err(())
            }
        }
    }

    fn granted(&self, leases: &[Lease]) -> Vec<Granted> {
        leases
            .iter()
            .map(|l| {
                self.skew.note(l, self.config.lease_ms);
                Granted { task: TaskId(l.task), stage: l.stage.clone(), epoch: l.epoch }
            })
            .collect()
    }

    /// Hands the held task on (or completes it after the last stage), with
    /// claim-next; returns the next lease, if one came with the answer, and
    /// whether the call was accepted.
    async fn pass_on(&self, lease: Lease) -> (Option<Lease>, bool) {
        let Some(stage) = STAGES.iter().position(|s| *s == lease.stage) else { return (None, false) };
        let next = ClaimNext {
            stages: STAGES.iter().map(|s| (*s).to_owned()).collect(),
            max: 1,
            lease_ms: Some(self.config.lease_ms),
        };
        let (call, answer) = if stage + 1 < STAGES.len() {
            let call = Call::Handoff {
                task: TaskId(lease.task),
                epoch: lease.epoch,
                from: STAGES[stage].to_owned(),
                to: STAGES[stage + 1].to_owned(),
            };
            let request = HandoffRequest {
                epoch: lease.epoch,
                agent: None,
                to_stage: STAGES[stage + 1].to_owned(),
                note: None,
                findings: None,
                confidence: None,
                claim_next: Some(next),
            };
            let invoked = self.recorder.invoke(self.id, None, call);
            (invoked, self.client.handoff(lease.task, &request).await)
        } else {
            let call = Call::Complete {
                task: TaskId(lease.task),
                epoch: lease.epoch,
                stage: STAGES[stage].to_owned(),
            };
            let request =
                CompleteRequest { epoch: lease.epoch, claim_next: Some(next), ..Default::default() };
            let invoked = self.recorder.invoke(self.id, None, call);
            (invoked, self.client.complete(lease.task, &request).await)
        };
        match answer {
            Ok(response) => {
                self.recorder.finish(call, Outcome::Ok { task: None, grants: self.granted(&response.next) });
                (response.next.into_iter().next(), true)
            }
            Err(e) => {
                self.recorder.finish(call, outcome_of(&e));
                (None, false)
            }
        }
    }
}

/// A definite refusal (4xx with a code, or a connection never made) or an
/// unknown outcome (5xx, timeouts, broken connections, unreadable answers).
pub fn outcome_of(e: &Error) -> Outcome {
    match e {
        Error::Transport { source, .. } if source.is_connect() => {
            Outcome::Fail { code: "unreachable".into() }
        }
        Error::Transport { cause, .. } => Outcome::Unknown { why: cause.clone() },
        Error::Unavailable { message } => Outcome::Unknown { why: format!("unavailable: {message}") },
        Error::Protocol { status, detail } => Outcome::Unknown { why: format!("HTTP {status}: {detail}") },
        Error::Refused { status, body } if *status >= 500 => {
            Outcome::Unknown { why: format!("HTTP {status}: {}", body.message) }
        }
        other => match other.code() {
            Some(code) => Outcome::Fail { code: code.as_str().to_owned() },
            None => Outcome::Unknown { why: other.to_string() },
        },
    }
}
