//! Baton's async Rust client: one method per API call, `baton-api` types in
//! and out, and refusals as typed errors (`Error::LeaseLost`, `NotFound`,
//! ...) carrying the server's message and details. Leases expose their fence
//! token `(task, stage, epoch)` (`Lease::fence`), the idempotency key for an
//! agent's own side effects. `worker::Worker` runs the claim loop around a
//! handler: long-poll claims, heartbeats, claim-next, safe retries. With
//! auth on (`baton serve`) give the client a token (`Client::with_token`):
//! every call then sends `Authorization: Bearer <token>`, and the admin calls
//! (`add_principal`, `create_token`, ...) work for an admin's token. Plain
//! HTTP only (no TLS backend is built in): reach a remote server through a
//! TLS-terminating proxy.
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton_client::Error> {
//! use baton_client::{Client, api};
//! let client = Client::new("http://127.0.0.1:7707")?.with_agent("intake-bot");
//! let submit = api::SubmitRequest::new("intake", api::Payload::from_json(r#"{"n":1}"#).unwrap());
//! let task = client.submit(&submit).await?.task;
//! for lease in client.claim_from(&["intake"], 1, 5_000).await? {
//!     client.complete(lease.task, &api::CompleteRequest { epoch: lease.epoch, ..Default::default() }).await?;
//! }
//! # let _ = task; Ok(()) }
//! ```

pub mod worker;

pub use baton_api as api;
pub use baton_api::{ErrorCode, FenceToken, Lease, TaskId};
pub use worker::{Decision, Job, Outcome, Worker, WorkerError, WorkerOptions};

use baton_api::auth::{
    Principal, PrincipalList, PrincipalRequest, TokenCreated, TokenInfo, TokenList, TokenRequest,
};
use baton_api::{
    AbortRequest, ActResponse, AppliedWorkflow, ApplyWorkflowRequest, CancelRequest, ClaimRequest,
    ClaimResponse, CompleteRequest, ErrorBody, FailRequest, Handoff, HandoffId, HandoffQuery, HandoffRequest,
    Health, HeartbeatRequest, History, InboxClaimRequest, InboxPage, InboxQuery, Lineage, ListQuery,
    ReleaseRequest, ResolveRequest, SpawnRequest, StuckList, StuckQuery, SubmitRequest, Task, TaskPage,
    WorkflowList, WorkflowQuery, WorkflowView,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The default address of `baton dev`.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:7707";

/// The request header that makes a mutating call idempotent: for 24 h a
/// repeat with the same key from the same principal (and the same body) gets
/// the first answer, status and body, without acting again.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// Extra time allowed past a long poll's `wait_ms` before the client gives up.
const LONG_POLL_GRACE: Duration = Duration::from_secs(10);

/// How long a call that does not long-poll may take before it fails as a
/// transport error ("timed out"), unless `Client::with_request_timeout` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A refusal or a failure to talk to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's epoch is stale: stop working on the task.
    #[error("{message}")]
    LeaseLost { current_epoch: Option<u64>, state: Option<String>, message: String },
    /// The epoch is current but another agent holds the lease.
    #[error("{message}")]
    NotHolder { message: String },
    #[error("{message}")]
    NotFound { message: String },
    /// A malformed request; `field` names the culprit when known.
    #[error("{message}")]
    InvalidRequest { field: Option<String>, message: String },
    #[error("{message}")]
    InvalidTransition { message: String },
    /// A named limit said no.
    #[error("{message}")]
    LimitExceeded { limit: Option<String>, max: Option<u64>, message: String },
    #[error("{message}")]
    TooManyLeases { message: String },
    #[error("{message}")]
    IdempotencyConflict { message: String },
    #[error("{message}")]
    RouteNotAllowed { message: String },
    /// The server or its store cannot serve now; retry later.
    #[error("{message}")]
    Unavailable { message: String },
    /// Any other refusal, with the server's body.
    #[error("{body}")]
    Refused { status: u16, body: ErrorBody },
    /// The server could not be reached, or the connection broke.
    #[error("could not reach Baton at {url}: {cause}")]
    Transport {
        url: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        cause: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from Baton (HTTP {status}): {detail}")]
    Protocol { status: u16, detail: String },
    /// The client was given a bad address.
    #[error("bad Baton address {address:?}: {problem}")]
    Address { address: String, problem: String },
}

impl Error {
    /// The API's error code, for refusals.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::LeaseLost { .. } => ErrorCode::LeaseLost,
            Self::NotHolder { .. } => ErrorCode::NotHolder,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            Self::InvalidTransition { .. } => ErrorCode::InvalidTransition,
            Self::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            Self::TooManyLeases { .. } => ErrorCode::TooManyLeases,
            Self::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            Self::RouteNotAllowed { .. } => ErrorCode::RouteNotAllowed,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Refused { body, .. } => return body.error_code(),
            Self::Transport { .. } | Self::Protocol { .. } | Self::Address { .. } => return None,
        })
    }

    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Transport { .. })
            || matches!(
                self.code(),
                Some(
                    ErrorCode::RateLimited
                        | ErrorCode::RequestInProgress
                        | ErrorCode::RequestTimeout
                        | ErrorCode::StorageFull
                )
            )
    }

    fn from_body(status: StatusCode, body: ErrorBody) -> Self {
        let message = body.message.clone();
        let detail_u64 = |key: &str| body.details.get(key).and_then(serde_json::Value::as_u64);
        let detail_str = |key: &str| body.details.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        match body.error_code() {
            Some(ErrorCode::LeaseLost) => Self::LeaseLost {
                current_epoch: detail_u64("current_epoch"),
                state: detail_str("state"),
                message,
            },
            Some(ErrorCode::NotHolder) => Self::NotHolder { message },
            Some(ErrorCode::NotFound) => Self::NotFound { message },
            Some(ErrorCode::InvalidRequest) => Self::InvalidRequest { field: detail_str("field"), message },
            Some(ErrorCode::InvalidTransition) => Self::InvalidTransition { message },
            Some(ErrorCode::LimitExceeded) => {
                Self::LimitExceeded { limit: detail_str("limit"), max: detail_u64("max"), message }
            }
            Some(ErrorCode::TooManyLeases) => Self::TooManyLeases { message },
            Some(ErrorCode::IdempotencyConflict) => Self::IdempotencyConflict { message },
            Some(ErrorCode::RouteNotAllowed) => Self::RouteNotAllowed { message },
            Some(ErrorCode::Unavailable) => Self::Unavailable { message },
            _ => Self::Refused { status: status.as_u16(), body },
        }
    }
}

/// What a submit returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub task: Task,
    /// False when an earlier submit with the same idempotency key came back.
    pub created: bool,
}

/// A Baton API client. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    agent: Option<String>,
    /// Sent as a bearer token on every call; never printed (`Debug` redacts it).
    token: Option<Token>,
    /// Applies to every call; long polls get their wait plus a grace instead.
    timeout: Duration,
}

impl Client {
    /// A client for the server at `address` (`http://host:port`).
    pub fn new(address: &str) -> Result<Self, Error> {
        let base = address.trim_end_matches('/').to_owned();
        let bad = |problem: &str| Error::Address { address: address.to_owned(), problem: problem.to_owned() };
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            bad(if base.starts_with("https://") {
                "this client speaks plain HTTP; put a TLS proxy's plain side here"
            } else {
                "expected http://HOST:PORT"
            })
        })?;
        if rest.is_empty() || rest.contains('/') {
            return Err(bad("expected http://HOST:PORT with no path"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The server closes idle keep-alive connections after its header
            // read timeout (30 s by default); drop ours sooner so a call never
            // goes out on a connection the server has already closed.
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .map_err(|source| transport(&base, source))?;
        Ok(Self { http, base, agent: None, token: None, timeout: DEFAULT_REQUEST_TIMEOUT })
    }

    /// Sends `token` (`baton_<id>_<secret>`) as `Authorization: Bearer` on
    /// every call: the server's auth names the caller by it.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token(token.into()));
        self
    }

    /// Fills in `agent` on claims and holder calls that leave it out (auth off).
    pub fn with_agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// How long a call may take before it fails as `Error::Transport` ("timed
    /// out"); long polls (`claim`, `handoff_outcome`) wait their `wait_ms` plus
    /// a grace instead. A timed-out call may still have taken effect.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<Submitted, Error> {
        let (status, task) = self.send_with_status(Method::POST, "/v1/tasks", Some(request), None).await?;
        Ok(Submitted { task, created: status == StatusCode::CREATED })
    }

    /// `POST /v1/claims`: the leases granted, empty when the wait ended with no work.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Lease>, Error> {
        let mut request = request.clone();
        if request.agent.is_none() {
            request.agent.clone_from(&self.agent);
        }
        let wait = Duration::from_millis(request.wait_ms);
        let response: ClaimResponse =
            self.send(Method::POST, "/v1/claims", Some(&request), Some(wait)).await?;
        Ok(response.leases)
    }

    /// Claims up to `max` tasks from `stages` as this client's agent, waiting up to `wait_ms`.
    pub async fn claim_from(&self, stages: &[&str], max: u32, wait_ms: u64) -> Result<Vec<Lease>, Error> {
        let request = ClaimRequest {
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            max,
            wait_ms,
            lease_ms: None,
            agent: None,
        };
        self.claim(&request).await
    }

    pub async fn heartbeat(&self, task: TaskId, request: &HeartbeatRequest) -> Result<ActResponse, Error> {
        self.heartbeat_keyed(task, request, None).await
    }

    /// `heartbeat` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn heartbeat_keyed(
        &self,
        task: TaskId,
        request: &HeartbeatRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "heartbeat", &request, key).await
    }

    /// Hands the task to `to_stage`; the answer's `handoff_id` names the handoff.
    pub async fn handoff(&self, task: TaskId, request: &HandoffRequest) -> Result<ActResponse, Error> {
        self.handoff_keyed(task, request, None).await
    }

    /// `handoff` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn handoff_keyed(
        &self,
        task: TaskId,
        request: &HandoffRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "handoff", &request, key).await
    }

    pub async fn complete(&self, task: TaskId, request: &CompleteRequest) -> Result<ActResponse, Error> {
        self.complete_keyed(task, request, None).await
    }

    /// `complete` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn complete_keyed(
        &self,
        task: TaskId,
        request: &CompleteRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "complete", &request, key).await
    }

    pub async fn release(&self, task: TaskId, request: &ReleaseRequest) -> Result<ActResponse, Error> {
        self.release_keyed(task, request, None).await
    }

    /// `release` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn release_keyed(
        &self,
        task: TaskId,
        request: &ReleaseRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "release", &request, key).await
    }

    pub async fn fail(&self, task: TaskId, request: &FailRequest) -> Result<ActResponse, Error> {
        self.fail_keyed(task, request, None).await
    }

    /// `fail` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn fail_keyed(
        &self,
        task: TaskId,
        request: &FailRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "fail", &request, key).await
    }

    pub async fn spawn(&self, task: TaskId, request: &SpawnRequest) -> Result<ActResponse, Error> {
        self.spawn_keyed(task, request, None).await
    }

    /// `spawn` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn spawn_keyed(
        &self,
        task: TaskId,
        request: &SpawnRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "spawn", &request, key).await
    }

    pub async fn cancel(&self, task: TaskId, reason: &str) -> Result<Task, Error> {
        self.cancel_keyed(task, reason, None).await
    }

    /// `cancel` with an optional `Idempotency-Key`.
    pub async fn cancel_keyed(&self, task: TaskId, reason: &str, key: Option<&str>) -> Result<Task, Error> {
        let request = CancelRequest { reason: reason.to_owned() };
        self.post_keyed(&format!("/v1/tasks/{task}/cancel"), &request, key).await
    }

    /// `POST /v1/tasks/{id}/abort`: abort the task's workflow. The stages
    /// already done are compensated, latest first; then the task ends cancelled.
    pub async fn abort(&self, task: TaskId, epoch: u64, reason: &str) -> Result<ActResponse, Error> {
        self.abort_keyed(task, epoch, reason, None).await
    }

    /// `abort` with an optional `Idempotency-Key`: a repeat with the same key
    /// gets the first answer.
    pub async fn abort_keyed(
        &self,
        task: TaskId,
        epoch: u64,
        reason: &str,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let request = AbortRequest { epoch, agent: None, reason: reason.to_owned(), claim_next: None };
        self.abort_request_keyed(task, &request, key).await
    }

    /// `abort` with the whole request (`claim_next` included) and an optional `Idempotency-Key`.
    pub async fn abort_request_keyed(
        &self,
        task: TaskId,
        request: &AbortRequest,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.act_keyed(task, "abort", &request, key).await
    }

    /// `POST /v1/workflows` (operators and admins): applies a workflow file's
    /// text. `created` is false when the latest version already had this
    /// definition; a bad file is refused `invalid_workflow` with every
    /// mistake in the error's `details.errors`.
    pub async fn apply_workflow(&self, source: &str) -> Result<AppliedWorkflow, Error> {
        let request = ApplyWorkflowRequest { source: source.to_owned() };
        self.send(Method::POST, "/v1/workflows", Some(&request), None).await
    }

    /// `GET /v1/workflows`: the latest version of every workflow, by name.
    pub async fn workflows(&self) -> Result<Vec<WorkflowView>, Error> {
        let list: WorkflowList = self.send::<(), _>(Method::GET, "/v1/workflows", None, None).await?;
        Ok(list.workflows)
    }

    /// `GET /v1/workflows/{name}`: a version of a workflow, the latest when `version` is `None`.
    pub async fn workflow(&self, name: &str, version: Option<u32>) -> Result<WorkflowView, Error> {
        let url = format!("{}/v1/workflows/{}", self.base, path_segment(name));
        let query = WorkflowQuery { version };
        let request = self.http.get(&url).timeout(self.timeout).query(&query);
        self.execute(request, &url).await.map(|(_, view)| view)
    }

    /// `GET /v1/inbox` (operators and admins): tasks waiting or held in human
    /// stages, oldest first, each with why and since when.
    pub async fn inbox(&self, query: &InboxQuery) -> Result<InboxPage, Error> {
        let url = format!("{}/v1/inbox", self.base);
        let request = self.http.get(&url).timeout(self.timeout).query(query);
        self.execute(request, &url).await.map(|(_, page)| page)
    }

    /// `POST /v1/inbox/{id}/claim` (operators and admins): takes one inbox
    /// task under a lease (`lease_ms`, or the stage's default).
    pub async fn inbox_claim(&self, task: TaskId, lease_ms: Option<u64>) -> Result<Lease, Error> {
        let mut request = InboxClaimRequest { lease_ms, agent: None };
        self.fill_agent(&mut request.agent);
        self.send(Method::POST, &format!("/v1/inbox/{task}/claim"), Some(&request), None).await
    }

    /// `POST /v1/inbox/{id}/resolve`: resolves an inbox task this operator
    /// holds: hand it back, complete, cancel or abort.
    pub async fn inbox_resolve(&self, task: TaskId, request: &ResolveRequest) -> Result<ActResponse, Error> {
        let mut request = request.clone();
        self.fill_agent(&mut request.agent);
        self.send(Method::POST, &format!("/v1/inbox/{task}/resolve"), Some(&request), None).await
    }

    /// `GET /v1/stuck?grace_ms=` (operators and admins): every live task past
    /// a threshold, with why; `None` takes the server's grace (30 s).
    pub async fn stuck(&self, grace_ms: Option<u64>) -> Result<StuckList, Error> {
        let url = format!("{}/v1/stuck", self.base);
        let request = self.http.get(&url).timeout(self.timeout).query(&StuckQuery { grace_ms });
        self.execute(request, &url).await.map(|(_, list)| list)
    }

    /// `GET /v1/tasks/{id}`: the task with its payload.
    pub async fn get(&self, task: TaskId) -> Result<Task, Error> {
        self.send::<(), _>(Method::GET, &format!("/v1/tasks/{task}"), None, None).await
    }

    pub async fn history(&self, task: TaskId) -> Result<History, Error> {
        self.send::<(), _>(Method::GET, &format!("/v1/tasks/{task}/history"), None, None).await
    }

    /// `GET /v1/tasks/{id}/lineage`: the task's steps through stages and
    /// agents with their durations, and its tree of parent and children.
    pub async fn lineage(&self, task: TaskId) -> Result<Lineage, Error> {
        self.send::<(), _>(Method::GET, &format!("/v1/tasks/{task}/lineage"), None, None).await
    }

    /// One page of tasks; pass the page's `next_cursor` as `query.cursor` for the next.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskPage, Error> {
        let url = format!("{}/v1/tasks", self.base);
        let request = self.http.get(&url).timeout(self.timeout).query(query);
        self.execute(request, &url).await.map(|(_, page)| page)
    }

    /// `GET /v1/handoffs/{id}?wait_ms=`: the outcome, waiting while it is pending.
    pub async fn handoff_outcome(&self, id: HandoffId, wait_ms: u64) -> Result<Handoff, Error> {
        let url = format!("{}/v1/handoffs/{id}", self.base);
        let query = HandoffQuery { wait_ms: (wait_ms > 0).then_some(wait_ms) };
        let request =
            self.http.get(&url).query(&query).timeout(Duration::from_millis(wait_ms) + LONG_POLL_GRACE);
        self.execute(request, &url).await.map(|(_, handoff)| handoff)
    }

    /// `GET /v1/deliveries?after=&limit=` (operators and admins): webhook
    /// delivery attempts with record ids after `after`, oldest first; pass
    /// the page's `next_after` as `after` for the next page.
    pub async fn deliveries(&self, after: u64, limit: u32) -> Result<baton_api::DeliveryPage, Error> {
        let url = format!("{}/v1/deliveries", self.base);
        let query = baton_api::DeliveryQuery { after: Some(after), limit: Some(limit) };
        let request = self.http.get(&url).timeout(self.timeout).query(&query);
        self.execute(request, &url).await.map(|(_, page)| page)
    }

    /// `GET /v1/stats` (operators and admins): edge and stage metrics over
    /// a window (`window` such as `1h`; `edge` as `FROM:TO`).
    pub async fn stats(&self, query: &baton_api::StatsQuery) -> Result<baton_api::Stats, Error> {
        let url = format!("{}/v1/stats", self.base);
        let request = self.http.get(&url).timeout(self.timeout).query(query);
        self.execute(request, &url).await.map(|(_, stats)| stats)
    }

    /// `GET /v1/alerts` (operators and admins): anomalies, open only unless `all`.
    pub async fn alerts(&self, query: &baton_api::AlertQuery) -> Result<baton_api::AnomalyList, Error> {
        let url = format!("{}/v1/alerts", self.base);
        let request = self.http.get(&url).timeout(self.timeout).query(query);
        self.execute(request, &url).await.map(|(_, list)| list)
    }

    /// `POST /v1/alerts/{id}/ack` (operators and admins): acknowledges an anomaly.
    pub async fn ack_alert(&self, id: u64) -> Result<baton_api::Anomaly, Error> {
        self.send::<(), _>(Method::POST, &format!("/v1/alerts/{id}/ack"), None, None).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, Error> {
        self.send::<(), _>(Method::GET, "/healthz", None, None).await
    }

    /// `POST /v1/principals` (admins): creates a principal; mint its token
    /// with `create_token`.
    pub async fn add_principal(&self, request: &PrincipalRequest) -> Result<Principal, Error> {
        self.send(Method::POST, "/v1/principals", Some(request), None).await
    }

    /// `GET /v1/principals` (admins): every principal, by name.
    pub async fn principals(&self) -> Result<Vec<Principal>, Error> {
        let list: PrincipalList = self.send::<(), _>(Method::GET, "/v1/principals", None, None).await?;
        Ok(list.principals)
    }

    /// `DELETE /v1/principals/{name}` (admins): revokes the principal and its tokens.
    pub async fn revoke_principal(&self, name: &str) -> Result<Principal, Error> {
        self.send::<(), _>(Method::DELETE, &format!("/v1/principals/{}", path_segment(name)), None, None)
            .await
    }

    /// `POST /v1/tokens` (admins): a new token for an existing principal. The
    /// answer's `token` is the only copy: Baton keeps a hash.
    pub async fn create_token(&self, principal: &str) -> Result<TokenCreated, Error> {
        let request = TokenRequest { principal: principal.to_owned() };
        self.send(Method::POST, "/v1/tokens", Some(&request), None).await
    }

    /// `GET /v1/tokens` (admins): every token's id, principal and times.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        let list: TokenList = self.send::<(), _>(Method::GET, "/v1/tokens", None, None).await?;
        Ok(list.tokens)
    }

    /// `DELETE /v1/tokens/{id}` (admins).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, Error> {
        self.send::<(), _>(Method::DELETE, &format!("/v1/tokens/{}", path_segment(id)), None, None).await
    }

    fn fill_agent(&self, agent: &mut Option<String>) {
        if agent.is_none() {
            agent.clone_from(&self.agent);
        }
    }

    async fn act_keyed<B: Serialize>(
        &self,
        task: TaskId,
        verb: &str,
        body: &B,
        key: Option<&str>,
    ) -> Result<ActResponse, Error> {
        self.post_keyed(&format!("/v1/tasks/{task}/{verb}"), body, key).await
    }

    /// A POST with a JSON body and, when given, an `Idempotency-Key`.
    async fn post_keyed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: Option<&str>,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url).timeout(self.timeout).json(body);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        self.execute(request, &url).await.map(|(_, value)| value)
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        long_poll: Option<Duration>,
    ) -> Result<T, Error> {
        self.send_with_status(method, path, body, long_poll).await.map(|(_, value)| value)
    }

    async fn send_with_status<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        long_poll: Option<Duration>,
    ) -> Result<(StatusCode, T), Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).timeout(self.timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(wait) = long_poll {
            request = request.timeout(wait + LONG_POLL_GRACE);
        }
        self.execute(request, &url).await
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(StatusCode, T), Error> {
        let request = match &self.token {
            Some(Token(token)) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| transport(url, e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| transport(url, e))?;
        if status.is_success() {
            let value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Protocol { status: status.as_u16(), detail: e.to_string() })?;
            return Ok((status, value));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::from_body(status, body)),
            Err(_) => Err(Error::Protocol {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }
}

/// A bearer token, kept out of `Debug` output and so out of logs.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A name or id as one URL path segment: anything outside the unreserved
/// characters is percent-encoded, so a name cannot reach another route.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn transport(url: &str, source: reqwest::Error) -> Error {
    let mut cause: &dyn std::error::Error = &source;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let cause = if source.is_timeout() { "timed out".to_owned() } else { cause.to_string() };
    Error::Transport { url: url.to_owned(), cause, source }
}
