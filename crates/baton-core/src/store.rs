//! The storage boundary: the `Store` trait (domain verbs, one per protocol
//! operation plus reads) and the request and outcome types it speaks. Stores
//! load, guard and persist; the engine (`crate::engine`) decides. Methods return
//! boxed futures so the trait stays object-safe and free of any runtime.

use crate::archive::{ArchiveChunk, ArchiveCommit, ArchiveRequest, ArchivedTask};
use crate::auth::Principal;
use crate::command::{Action, NewTask};
use crate::event::{Actor, Event, Hash};
use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::metrics::{Anomaly, Observation, Rollup};
use crate::rejection::Rejection;
use crate::task::{StateName, Task};
use crate::workflow::Workflow;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// What every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A store call's failure: a refusal (nothing changed) or the store itself.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store cannot serve now (closed, unreachable); retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store's disk (or database) is full: the write changed nothing;
    /// reads still serve, and writes succeed again once space is freed.
    #[error("storage full: {0}")]
    StorageFull(String),
}

/// A store of tasks. Every write is durable before its future resolves.
pub trait Store: Send + Sync + 'static {
    /// Creates a task, or returns the existing one for a repeated idempotency key.
    fn submit(&self, task: NewTask) -> StoreFuture<'_, Submitted>;
    /// Leases up to `max` ready tasks from the given stages. Never waits.
    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, Vec<Grant>>;
    /// A holder's heartbeat, handoff, complete, release, fail or spawn,
    /// optionally claiming the agent's next tasks in the same transaction.
    fn act(&self, request: ActRequest) -> StoreFuture<'_, ActOutcome>;
    fn cancel(&self, request: CancelRequest) -> StoreFuture<'_, Task>;
    /// Acts on up to `limit` tasks whose `due_at` has passed; returns how many.
    fn fire_due(&self, limit: usize) -> StoreFuture<'_, usize>;
    fn get(&self, task: TaskId) -> StoreFuture<'_, Option<TaskView>>;
    fn list(&self, filter: TaskFilter) -> StoreFuture<'_, Page>;
    fn history(&self, task: TaskId) -> StoreFuture<'_, Vec<Event>>;
    /// Up to `limit` of a task's events with a version below `before` (all,
    /// when `None`), newest first: a long history read in pages from its end.
    fn history_before(&self, task: TaskId, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<Event>>;
    fn handoff(&self, id: HandoffId) -> StoreFuture<'_, Option<Handoff>>;
    /// The earliest `due_at` among live tasks, so the sweeper knows when to wake.
    fn next_due(&self) -> StoreFuture<'_, Option<Millis>>;
    /// Runs one mutating operation. With a `RequestKey`, the operation and the
    /// record of its outcome commit in one transaction: a repeat of the key
    /// with the same fingerprint returns the first outcome and changes
    /// nothing; with another fingerprint it is refused `idempotency_conflict`
    /// (see `engine::keyed`). Without a key it is the per-verb method.
    fn execute(&self, op: Op, key: Option<RequestKey>) -> StoreFuture<'_, OpOutcome>;
    /// Deletes up to `limit` request records older than `request_key_ttl_ms`
    /// (at most `sweep_batch_max`), oldest first; returns how many. The
    /// sweeper calls it; expired records are already ignored before then.
    fn purge_requests(&self, limit: usize) -> StoreFuture<'_, usize>;
    /// A workflow by name, at `version` or (`None`) its latest version.
    fn workflow(&self, name: String, version: Option<u32>) -> StoreFuture<'_, Option<Workflow>>;
    /// The latest version of every workflow, by name.
    fn workflows(&self) -> StoreFuture<'_, Vec<Workflow>>;
    /// Up to `limit` live tasks whose `due_at` is at or before `before`,
    /// earliest first: timers the sweeper has not acted on yet.
    fn overdue(&self, before: Millis, limit: usize) -> StoreFuture<'_, Vec<Task>>;
    /// Up to `limit` notices with sequence numbers after `after`, in order.
    fn notices(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>>;
    /// Up to `limit` delivery records with ids after `after`, in order.
    fn deliveries(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Delivery)>>;
    /// The highest notice sequence number with a final delivery (delivered or
    /// given up) to `webhook`: where its deliveries resume after a restart.
    fn delivery_cursor(&self, webhook: String) -> StoreFuture<'_, Option<u64>>;
    /// The latest delivery record to `webhook`: one that is not final was in
    /// flight, and its notice's attempts go on from it after a restart.
    fn last_delivery(&self, webhook: String) -> StoreFuture<'_, Option<Delivery>>;
    /// Up to `limit` notices about task `task` with sequence numbers after
    /// `after`, in order (push configs read their task's updates this way).
    fn task_notices(&self, task: TaskId, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>>;
    /// Push notification configs, of task `task` or (`None`) of every task,
    /// in (task, id) order, at most `limit`.
    fn push_configs(&self, task: Option<TaskId>, limit: usize) -> StoreFuture<'_, Vec<PushConfig>>;
    /// The stored rollups of buckets in `from..to`, by bucket then key, at
    /// most `limit`.
    fn rollups(&self, from: Millis, to: Millis, limit: usize) -> StoreFuture<'_, Vec<Rollup>>;
    /// Up to `limit` anomalies with ids after `after`, in order; only those
    /// not acknowledged when `open_only`.
    fn anomalies(&self, after: u64, limit: usize, open_only: bool) -> StoreFuture<'_, Vec<(u64, Anomaly)>>;
    /// Live tasks counted per stage (ready, held, blocked, and since when the
    /// oldest ready task waits), for at most `limit` stages by name, stages
    /// with live tasks only. Read from the per-stage counters the write path
    /// keeps (`crate::gauge`) plus one index seek per stage for the oldest:
    /// O(stages), whatever the backlog.
    fn stage_gauges(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>>;
    /// The same answer as `stage_gauges`, counted afresh from every live
    /// task: O(live tasks). Checks compare it with the counters
    /// (`baton db check`, the testkit's history checker); nothing serves it.
    fn stage_gauges_recount(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>>;
    /// Takes or renews `duty` for this process and says whether it holds it.
    /// A store one process owns (memory, SQLite) always holds every duty; on
    /// PostgreSQL one replica at a time does (a lease row).
    fn holds_duty(&self, duty: SingletonDuty) -> StoreFuture<'_, bool>;
    /// One archive pass: moves up to `request.limit` (at most
    /// `archive_batch_max`) finished tasks that `crate::archive::eligible`
    /// lets go into the archive, durably, then deletes them from the live
    /// store in one transaction that also indexes them (`Op::Archive`);
    /// returns how many moved. The server runs it where the archive duty is.
    fn archive(&self, request: ArchiveRequest) -> StoreFuture<'_, usize>;
    /// An archived task's record, read back from the archive; `None` when
    /// the task was never archived. `history` answers from it too.
    fn archived(&self, task: TaskId) -> StoreFuture<'_, Option<ArchivedTask>>;
    /// The first archive chunk with a name after `after` (`None`: the
    /// first), with its bytes and the tasks the index places in it: audits
    /// read the archive one chunk at a time this way.
    fn archive_chunk(&self, after: Option<String>) -> StoreFuture<'_, Option<ArchiveChunk>>;
}

/// Live tasks of one stage, as `Store::stage_gauges` counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageGauge {
    pub stage: StageName,
    /// Waiting and claimable now (the backlog); backing-off tasks excluded.
    pub ready: u64,
    /// Leased to an agent (in flight).
    pub held: u64,
    /// Waiting for children.
    pub blocked: u64,
    /// The earliest `since` of the ready tasks: the oldest waits since then.
    pub oldest_ready_since: Option<Millis>,
}

impl StageGauge {
    /// A stage with nothing live.
    pub fn empty(stage: StageName) -> Self {
        Self { stage, ready: 0, held: 0, blocked: 0, oldest_ready_since: None }
    }
}

/// Work that one process at a time does when several share a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SingletonDuty {
    /// Anomaly detection over the rollups, and the purge of old rollups.
    Metrics,
    /// Webhook deliveries: one replica sends the outbox's notices.
    Webhooks,
    /// Archive passes: one replica moves finished tasks to the archive.
    Archive,
}

impl SingletonDuty {
    /// The duty's name in the store (PostgreSQL's `leader` table).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Webhooks => "webhooks",
            Self::Archive => "archive",
        }
    }
}

/// Something a custodian or an operator must hear about, written in the same
/// transaction as the change it reports (an outbox): webhooks deliver these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    /// A handoff reached its outcome (accepted, rerouted, escalated, cancelled).
    Handoff { handoff: Handoff },
    /// An escalation (or a passed deadline) raised an alert.
    Alert { alert: Alert },
    /// Anomaly detection flagged a window: anomaly `id` (0 in notices
    /// written before the id was recorded).
    Anomaly {
        #[serde(default)]
        id: u64,
        anomaly: Anomaly,
    },
    /// A task whose workflow lists push URL prefixes (`[a2a]`) changed: its
    /// event `version`, for push notification configs (never webhooks).
    Update { task: TaskId, version: u64 },
}

impl Notice {
    /// The task the notice is about; `None` for an anomaly.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Self::Handoff { handoff } => Some(handoff.task),
            Self::Alert { alert } => Some(alert.task),
            Self::Update { task, .. } => Some(*task),
            Self::Anomaly { .. } => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Handoff { .. } => "handoff",
            Self::Alert { .. } => "alert",
            Self::Anomaly { .. } => "anomaly",
            Self::Update { .. } => "update",
        }
    }
}

/// A push notification config: task `task`'s status updates after version
/// `after_version` are POSTed, signed with `token`, to `url` (an A2A client's
/// `CreateTaskPushNotificationConfig`; the server checks the URL against
/// the workflow's allow-list before it stores one). Delivered like a
/// webhook, with delivery records under `webhook_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub task: TaskId,
    /// The config's id within its task (the client's, or one the server gave).
    pub id: String,
    pub url: String,
    /// The secret the notifications are signed with; the client chose it.
    pub token: String,
    /// Who made it, as events name actors.
    pub by: String,
    pub created_at: Millis,
    /// The task's version when the config was made: later updates are sent.
    pub after_version: u64,
}

impl PushConfig {
    /// The name its delivery records carry: `push-` and 24 hex digits of
    /// the SHA-256 of task and id (letters, digits and `-`, as webhook names).
    pub fn webhook_name(&self) -> String {
        let hash = crate::event::Hash::of(format!("{}/{}", self.task, self.id).as_bytes()).to_hex();
        format!("push-{}", &hash[..24])
    }
}

/// One attempt to deliver a notice to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The notice's sequence number.
    pub notice: u64,
    /// The webhook's configured name.
    pub webhook: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Millis,
    pub status: DeliveryStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeliveryStatus {
    /// The receiver answered 2xx.
    Delivered { http_status: u16 },
    /// This attempt failed; another follows at `retry_at`.
    Failed { error: String, retry_at: Millis },
    /// The last attempt failed; no more follow.
    GaveUp { error: String },
}

impl DeliveryStatus {
    /// Whether no further attempt follows.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Failed { .. })
    }
}

/// The outcome of applying a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub workflow: Workflow,
    /// False when the latest version already had this definition.
    pub created: bool,
}

/// One mutating operation, as `Store::execute` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "request", rename_all = "snake_case")]
pub enum Op {
    Submit(NewTask),
    Claim(ClaimRequest),
    Act(ActRequest),
    Cancel(CancelRequest),
    /// Add a message to a live task's history (`Command::Comment`).
    Comment(CommentRequest),
    /// Store a new version of a workflow (its `version` is ignored).
    ApplyWorkflow(Workflow),
    /// Record a webhook delivery attempt.
    RecordDelivery(Delivery),
    /// Add metric rollups to the stored ones (replicas each add their own).
    MergeRollups(Vec<Rollup>),
    /// Delete rollups of buckets before `before` (bounded, like every purge).
    PurgeRollups {
        before: Millis,
    },
    /// Store an anomaly (and its outbox notice).
    RaiseAnomaly(Anomaly),
    /// Store (or replace, by task and id) a push notification config of an
    /// existing task.
    PutPushConfig(PushConfig),
    /// Delete a push notification config, if it exists.
    DeletePushConfig {
        task: TaskId,
        id: String,
    },
    /// Acknowledge anomaly `id`.
    AckAnomaly {
        id: u64,
        by: String,
    },
    /// Delete archived tasks from the live store and index them under their
    /// chunks (the second half of `Store::archive`; only stores send it).
    Archive(ArchiveCommit),
}

/// What an `Op` produced, one variant per operation. Stored as the record
/// of a keyed request, so a repeat returns exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "outcome", rename_all = "snake_case")]
pub enum OpOutcome {
    Submit(Submitted),
    Claim(Claimed),
    Act(ActOutcome),
    Cancel(Task),
    /// The task after the message was added.
    Comment(Task),
    ApplyWorkflow(Applied),
    RecordDelivery,
    MergeRollups,
    PurgeRollups(usize),
    RaiseAnomaly,
    PutPushConfig,
    DeletePushConfig,
    /// The anomaly as acknowledged.
    AckAnomaly(Anomaly),
    /// How many tasks left the live store.
    Archive(usize),
}

impl OpOutcome {
    pub fn into_submitted(self) -> Option<Submitted> {
        if let Self::Submit(s) = self { Some(s) } else { None }
    }

    pub fn into_grants(self) -> Option<Vec<Grant>> {
        self.into_claimed().map(|c| c.grants)
    }

    pub fn into_claimed(self) -> Option<Claimed> {
        if let Self::Claim(c) = self { Some(c) } else { None }
    }

    pub fn into_acted(self) -> Option<ActOutcome> {
        if let Self::Act(a) = self { Some(a) } else { None }
    }

    pub fn into_cancelled(self) -> Option<Task> {
        if let Self::Cancel(t) = self { Some(t) } else { None }
    }

    pub fn into_commented(self) -> Option<Task> {
        if let Self::Comment(t) = self { Some(t) } else { None }
    }

    pub fn into_applied(self) -> Option<Applied> {
        if let Self::ApplyWorkflow(a) = self { Some(a) } else { None }
    }
}

/// A request's idempotency key (the wire's `Idempotency-Key` header), scoped
/// to the principal that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestKey {
    /// Who sent the request: keys of different principals never meet.
    pub principal: String,
    /// The key as the client sent it.
    pub key: String,
    /// SHA-256 of the request (route and canonical body), computed by the
    /// server: the same key with another fingerprint is another request.
    pub fingerprint: Hash,
}

/// A keyed request's stored record: the first outcome, and when it was saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub fingerprint: Hash,
    pub outcome: OpOutcome,
    /// When the outcome committed; the record expires `request_key_ttl_ms` later.
    pub at: Millis,
}

/// Called by a store after each commit: the stages with new claimable work,
/// and what the committed changes tell the metrics.
pub trait ReadyListener: Send + Sync + 'static {
    fn ready(&self, stages: &[StageName]);
    /// The committed changes, in commit order. Called after `ready`; the
    /// default ignores them.
    fn observed(&self, _changes: &[Observation]) {}
}

/// A listener that ignores wake-ups.
pub struct NoListener;
impl ReadyListener for NoListener {
    fn ready(&self, _: &[StageName]) {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub task: Task,
    /// False when an earlier submit with the same idempotency key is returned.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub agent: AgentId,
    pub stages: Vec<StageName>,
    pub max: usize,
    /// Lease length; the stage's `lease_ms` when unset.
    pub lease_ms: Option<Millis>,
    /// Claim only this task (an operator taking one inbox item), if it is
    /// ready in one of `stages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<TaskId>,
    /// The token the claim was made with (auth on): the claim's transaction
    /// refuses `Revoked` unless it and its principal are still live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

/// A caller's token and the principal it names, checked inside a claim's
/// transaction: authentication happens before the call (and is cached), but
/// a long-polled claim may wait while an admin revokes either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub principal: String,
    /// The token's public id.
    pub token: String,
}

/// What a claim did: the leases it granted, and the stages whose ready tasks
/// it passed over because the stage was at its capacity (so an empty answer
/// says why). Request records written before `skipped` existed hold a bare
/// list of grants; both forms read back.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "ClaimedRecord")]
pub struct Claimed {
    pub grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

impl From<Vec<Grant>> for Claimed {
    fn from(grants: Vec<Grant>) -> Self {
        Self { grants, skipped: Vec::new() }
    }
}

/// The stored forms of `Claimed`, old and new.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClaimedRecord {
    Grants(Vec<Grant>),
    Claimed {
        grants: Vec<Grant>,
        #[serde(default)]
        skipped: Vec<Skipped>,
    },
}

impl From<ClaimedRecord> for Claimed {
    fn from(record: ClaimedRecord) -> Self {
        match record {
            ClaimedRecord::Grants(grants) => grants.into(),
            ClaimedRecord::Claimed { grants, skipped } => Self { grants, skipped },
        }
    }
}

/// A stage a claim passed over: its ready tasks wait because `held` tasks
/// are leased there already and the workflow caps it at `capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub stage: StageName,
    pub held: u64,
    pub capacity: u32,
}

/// A lease granted by a claim: the task as it is now held, and its payload,
/// read in the claim's own transaction so the agent needs no second read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub task: Task,
    pub epoch: u64,
    pub lease_expires_at: Millis,
    /// The task's payload (JSON text). Empty only in request records saved
    /// before grants carried it; `engine::keyed` fills those in on replay.
    #[serde(default)]
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimNext {
    pub stages: Vec<StageName>,
    pub max: usize,
    pub lease_ms: Option<Millis>,
    /// As `ClaimRequest::credential`: no next lease for a revoked caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActRequest {
    pub task: TaskId,
    pub agent: AgentId,
    pub epoch: u64,
    pub action: Action,
    pub claim_next: Option<ClaimNext>,
    /// With auth on, the principal making the call: the engine checks what
    /// it may do against the task it loads (`auth::check_holder_call`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Principal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActOutcome {
    pub task: Task,
    /// The handoff created by a `Handoff` action.
    pub handoff: Option<HandoffId>,
    /// Children created by a `Spawn` action.
    pub children: Vec<TaskId>,
    /// Leases from `claim_next`; empty when nothing was ready or a limit said no.
    pub next: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub task: TaskId,
    pub actor: Actor,
    pub reason: String,
    /// With auth on, the principal cancelling (`auth::check_cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Principal>,
}

/// A message for a task's history, from `actor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentRequest {
    pub task: TaskId,
    pub actor: Actor,
    pub note: String,
    pub findings: Option<serde_json::Value>,
    /// With auth on, the principal writing (`auth::check_cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Principal>,
}

/// A task with its payload and the head of its event chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task: Task,
    pub payload: String,
    pub head: Hash,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFilter {
    pub stage: Option<StageName>,
    pub state: Option<StateName>,
    pub parent: Option<TaskId>,
    /// Cursor: list tasks with ids after this one.
    pub after: Option<TaskId>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub tasks: Vec<Task>,
    /// The cursor for the next page, when there may be one.
    pub next: Option<TaskId>,
}

/// A handoff and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub id: HandoffId,
    pub task: TaskId,
    pub from_stage: StageName,
    pub to_stage: StageName,
    pub from_agent: AgentId,
    pub at: Millis,
    pub outcome: HandoffOutcome,
}

/// Open until the first claim in the target stage or until the ladder acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum HandoffOutcome {
    Pending,
    Accepted { by: AgentId, at: Millis, epoch: u64 },
    Rerouted { to: StageName, at: Millis },
    Escalated { to: StageName, at: Millis },
    Cancelled { at: Millis },
}

/// An alert raised by an escalation (or a deadline passed in a human stage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub task: TaskId,
    /// Where the task waits for a person: the human stage it escalated to.
    pub stage: StageName,
    /// The stage it was in when the alert was raised (absent in alerts
    /// recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StageName>,
    pub at: Millis,
    pub message: String,
}
