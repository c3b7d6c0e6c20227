//! Response bodies: the task as clients see it, leases, events, handoffs and
//! pages. Responses do not refuse unknown fields, so older clients keep
//! working when the server adds a field. Optional details are omitted when
//! empty; `state` says which of `waiting`, `lease`, `join` and the finish
//! fields are present.

use crate::payload::Payload;
use crate::time::Timestamp;
use crate::{HandoffId, TaskId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStateName {
    Waiting,
    Held,
    Blocked,
    Done,
    Cancelled,
}

impl TaskStateName {
    pub const ALL: [Self; 5] = [Self::Waiting, Self::Held, Self::Blocked, Self::Done, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Held => "held",
            Self::Blocked => "blocked",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStateName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}; expected waiting, held, blocked, done or cancelled"))
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    #[schema(value_type = uuid::Uuid)]
    pub id: TaskId,
    pub stage: String,
    pub state: TaskStateName,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub parent: Option<TaskId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Who submitted it: `agent:ID`, `principal:NAME` or `baton`.
    pub submitter: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Versions the task: one more on every change.
    pub revision: u64,
    /// The fence: grows on every claim and every lease expiry.
    pub epoch: u64,
    /// Failures and lease expiries at the current stage.
    pub attempts: u32,
    pub reoffers: u32,
    pub reroutes: u32,
    /// Who is accountable now; absent only when done or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custodian: Option<Custodian>,
    /// When Baton acts if nothing else happens; absent only when done or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// Present when `state` is `waiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// Present when `state` is `held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    /// Present when `state` is `blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    /// When the task became done or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The result a `complete` gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The workflow and version the task runs under; absent for ad hoc stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::workflows::WorkflowRef>,
    /// The workflow stages the task has finished, in order (what an abort compensates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trail: Vec<String>,
    /// The task's deadline has passed and the ladder acted on it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deadline_passed: bool,
    /// A compensation task of an aborted workflow.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compensation: bool,
    /// The payload; sent by `GET /v1/tasks/{id}` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
}

/// Who is accountable for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Custodian {
    pub kind: CustodianKind,
    /// An agent id, a stage name, or for a submitter `agent:ID` / `principal:NAME`.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustodianKind {
    /// The submitter, until the first claim.
    Submitter,
    /// The agent that handed it off or spawned children.
    Agent,
    /// The stage itself: Baton acting under the stage's rules.
    Stage,
}

/// Why and since when a task waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    pub since: Timestamp,
    /// `offered` (claimable now) or `backoff` (offered again at `due_at`).
    pub kind: WaitKind,
    /// The handoff that brought the task here, while its outcome is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Offered,
    Backoff,
}

/// The current lease of a held task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseInfo {
    pub agent: String,
    pub epoch: u64,
    pub claimed_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinMode {
    All,
    Any,
    Quorum,
}

/// A blocked parent's join over its children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Join {
    pub mode: JoinMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    pub children: u32,
    pub done: u32,
    pub failed: u32,
    pub due_at: Timestamp,
}

/// A lease granted by a claim: the fence token `(task, stage, epoch)` and what
/// the agent needs to work, including the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub stage: String,
    pub epoch: u64,
    pub lease_expires_at: Timestamp,
    pub priority: i32,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub parent: Option<TaskId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub payload: Payload,
}

impl Lease {
    /// The fence token, also the idempotency key for the agent's own side effects.
    pub fn fence(&self) -> FenceToken {
        FenceToken { task: self.task, stage: self.stage.clone(), epoch: self.epoch }
    }
}

/// `(task, stage, epoch)`: unique per lease; holder calls carry its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct FenceToken {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub stage: String,
    pub epoch: u64,
}

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.task, self.stage, self.epoch)
    }
}

/// `POST /v1/claims` answer; empty when the wait ended with no work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    pub leases: Vec<Lease>,
    /// Stages whose ready tasks the claim passed over, and why: so an empty
    /// answer with work waiting says what holds it back. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedStage>,
}

/// A stage whose ready tasks a claim could not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedStage {
    pub stage: String,
    pub reason: SkipReason,
    /// Tasks leased at the stage now.
    pub held: u64,
    /// The most the stage's workflow lets be leased there at once.
    pub capacity: u32,
}

/// Why a claim passed a stage over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The stage holds `capacity` leases already; its tasks wait until one ends.
    Capacity,
}

/// The answer of every holder call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActResponse {
    /// The task after the call.
    pub task: Task,
    /// The handoff a `handoff` call created; ask `GET /v1/handoffs/{id}` for its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub handoff_id: Option<HandoffId>,
    /// The children a `spawn` call created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<uuid::Uuid>)]
    pub children: Vec<TaskId>,
    /// Leases from `claim_next`; empty when nothing was ready or a limit said no.
    #[serde(default)]
    #[schema(required = true)]
    pub next: Vec<Lease>,
}

/// `GET /v1/tasks` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/tasks/{id}/history` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub events: Vec<Event>,
}

/// One committed change of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// 1, 2, 3... without gaps; equals the task's revision after the change.
    pub version: u64,
    pub at: Timestamp,
    /// `agent:ID`, `principal:NAME` or `baton` (timers and the ladder).
    pub actor: String,
    /// `submitted`, `claimed`, `heartbeat`, `handed_off`, `completed`, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Position>,
    pub to: Position,
    /// The epoch after the change.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub handoff_id: Option<HandoffId>,
    /// SHA-256 (hex) of the previous event; zeros for the first.
    pub prev_hash: String,
    pub hash: String,
}

/// A state and a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Position {
    pub state: TaskStateName,
    pub stage: String,
}

/// A handoff and its outcome: `GET /v1/handoffs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Handoff {
    #[schema(value_type = uuid::Uuid)]
    pub id: HandoffId,
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub from_stage: String,
    pub to_stage: String,
    pub from_agent: String,
    pub at: Timestamp,
    pub outcome: HandoffOutcome,
}

/// Open (`pending`) until the first claim in the target stage or until the
/// ladder acts; final after that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HandoffOutcome {
    Pending,
    Accepted { by: String, at: Timestamp, epoch: u64 },
    Rerouted { to: String, at: Timestamp },
    Escalated { to: String, at: Timestamp },
    Cancelled { at: Timestamp },
}

impl HandoffOutcome {
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Pending)
    }

    pub fn status(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted { .. } => "accepted",
            Self::Rerouted { .. } => "rerouted",
            Self::Escalated { .. } => "escalated",
            Self::Cancelled { .. } => "cancelled",
        }
    }
}

/// `/healthz` and `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    pub version: String,
}

/// `GET /v1`: what this server serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Index {
    pub name: String,
    pub version: String,
    /// `METHOD /path` for every API route.
    pub routes: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
