//! Request bodies and query strings. Every request type refuses unknown
//! fields, so a misspelt option is an error, not a silent default. Durations
//! are integer milliseconds (`*_ms`); times are RFC 3339 strings.
//!
//! With auth off (`baton dev`) claims and holder calls name the calling agent
//! in `agent`; with auth on the token names it and `agent`, if given, must
//! match.

use crate::TaskId;
use crate::payload::Payload;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/tasks`: name the `stage`, or the `workflow` (then `stage`, if
/// given, must be the workflow's entry stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// A workflow's name; the task starts in its entry stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Any JSON; stored once, as sent.
    pub payload: Payload,
    /// Higher is claimed first; 0 by default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The absolute deadline of the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// The same key with the same body returns the existing task (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub parent: Option<TaskId>,
    /// W3C `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl SubmitRequest {
    /// A submit into `stage` with defaults elsewhere.
    pub fn new(stage: impl Into<String>, payload: Payload) -> Self {
        Self {
            stage: Some(stage.into()),
            workflow: None,
            payload,
            priority: 0,
            deadline: None,
            idempotency_key: None,
            labels: BTreeMap::new(),
            parent: None,
            trace: None,
        }
    }
}

/// `POST /v1/claims`: lease up to `max` waiting tasks from `stages`, waiting up
/// to `wait_ms` for work to arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub stages: Vec<String>,
    /// 1 to 100; 1 by default.
    #[serde(default = "one")]
    pub max: u32,
    /// 0 (answer at once) to 60000.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
    /// The lease's length; the stage's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Claim the agent's next tasks in the same transaction as a holder call.
/// Never waits; an empty `next` means nothing was ready or a limit said no.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimNext {
    pub stages: Vec<String>,
    #[serde(default = "one")]
    pub max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// `POST /v1/tasks/{id}/heartbeat`: extend the lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The new lease length from now; the stage's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// A progress note, recorded in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `POST /v1/tasks/{id}/handoff`: finish this part and pass the task on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub to_stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
    /// Between 0 and 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `POST /v1/tasks/{id}/complete`: finish the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `POST /v1/tasks/{id}/release`: give the task back to its stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `POST /v1/tasks/{id}/fail`: report a failure. Retryable failures come back
/// after a backoff; the rest (and too many retries) climb the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub error: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `POST /v1/tasks/{id}/spawn`: create children; the parent is blocked until
/// the join holds or its deadline passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub children: Vec<ChildSpec>,
    pub join: JoinRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// One child of a spawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    pub stage: String,
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How a parent joins its children.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub mode: crate::JoinMode,
    /// Children that must be done; with `quorum` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// How long the children have, from now.
    pub within_ms: u64,
}

/// `POST /v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: String,
}

/// `POST /v1/tasks/{id}/comments`: a message added to a live task's history
/// (an event of kind `commented` under the caller's name). It changes
/// nothing else: not the state, the custodian, the lease or any timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    /// The message's text (may be empty when `findings` is given).
    #[serde(default)]
    pub note: String,
    /// Structured data that goes with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
}

/// `POST /v1/tasks/{id}/abort`: abort the task's workflow. The stages already
/// done are compensated, latest first (each a task in its compensation
/// stage); then the task ends cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why; recorded in the history and carried by the compensation tasks.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_next: Option<ClaimNext>,
}

/// `GET /v1/tasks` query string.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Only tasks in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::TaskStateName>,
    /// Only the children of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    #[param(value_type = Option<uuid::Uuid>)]
    pub parent: Option<TaskId>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Tasks per page; 50 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/handoffs/{id}` query string.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HandoffQuery {
    /// Wait up to this long (0 to 60000 ms) for the outcome to leave `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
