//! The bodies of the operators' routes: the human inbox (`/v1/inbox`: tasks
//! waiting or held in human stages, claimed and resolved by people) and the
//! stuck-work listing (`/v1/stuck`: live tasks past a threshold, each with
//! why). What a resolution does is the engine's business; these types only
//! carry the operator's choice.

use crate::TaskId;
use crate::response::{Custodian, Task, TaskStateName};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/inbox` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only this human stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Items per page; 50 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `GET /v1/inbox` answer: tasks waiting or held in human stages, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One task in a human stage, and why it is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboxItem {
    pub task: Task,
    /// Why the task needs a person: the escalation's alert, or the note of
    /// the handoff that sent it here.
    pub why: String,
    /// When the task came to this stage.
    pub since: Timestamp,
    /// The stage the task came from (the one it escalated from, or the
    /// sender's stage of a handoff); absent for a task submitted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_stage: Option<String>,
    /// Messages added to the task's history since it came to this stage
    /// (`POST /v1/tasks/{id}/comments`, or an A2A client's reply), oldest
    /// first. They resolve nothing: the task waits for a person as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<InboxMessage>,
}

/// A message on an inbox task: who sent it, when, and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboxMessage {
    /// The sender, as events name actors (`principal:NAME`).
    pub by: String,
    pub at: Timestamp,
    /// The text (empty when the message is data only).
    pub note: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
}

/// `POST /v1/inbox/{id}/claim`: take one inbox task under a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxClaimRequest {
    /// The lease's length; the stage's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// With auth off, who claims (recorded as the holder); with auth on the
    /// token's principal, and if given it must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// How an operator resolves an inbox task it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Hand the task back into its workflow at `to_stage` (any of the
    /// workflow's stages; any stage for a task without a workflow).
    Handoff,
    /// Finish the task (or, in a workflow stage with a `next`, follow it).
    Complete,
    /// Cancel the task; `reason` is required.
    Cancel,
    /// Abort the task's workflow: compensate the stages done, then cancel;
    /// `reason` is required.
    Abort,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handoff => "handoff",
            Self::Complete => "complete",
            Self::Cancel => "cancel",
            Self::Abort => "abort",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/inbox/{id}/resolve`: what the operator holding the task decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The epoch of the operator's lease, from the inbox claim.
    pub epoch: u64,
    pub resolution: Resolution,
    /// With `handoff`: the stage to hand the task to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_stage: Option<String>,
    /// A note for the history (handoff, complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// With `cancel` and `abort` (required): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With auth off, the operator holding the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl ResolveRequest {
    fn new(epoch: u64, resolution: Resolution) -> Self {
        Self { epoch, resolution, to_stage: None, note: None, reason: None, agent: None }
    }

    /// Hand the task back at `to_stage`.
    pub fn handoff(epoch: u64, to_stage: impl Into<String>) -> Self {
        Self { to_stage: Some(to_stage.into()), ..Self::new(epoch, Resolution::Handoff) }
    }

    pub fn complete(epoch: u64) -> Self {
        Self::new(epoch, Resolution::Complete)
    }

    pub fn cancel(epoch: u64, reason: impl Into<String>) -> Self {
        Self { reason: Some(reason.into()), ..Self::new(epoch, Resolution::Cancel) }
    }

    pub fn abort(epoch: u64, reason: impl Into<String>) -> Self {
        Self { reason: Some(reason.into()), ..Self::new(epoch, Resolution::Abort) }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// `GET /v1/stuck` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StuckQuery {
    /// How late a timer may be before it counts as overdue; 30000 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

/// `GET /v1/stuck` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StuckList {
    /// Overdue timers first (most overdue first), then escalated tasks, then
    /// tasks past their deadline.
    pub stuck: Vec<StuckTask>,
    /// True when more were found than one answer holds (`page_size_max`).
    #[serde(default)]
    pub truncated: bool,
}

/// One live task past a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StuckTask {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub stage: String,
    pub state: TaskStateName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custodian: Option<Custodian>,
    /// Since when: the missed timer, the escalation, or the deadline.
    pub since: Timestamp,
    pub why: String,
    pub kind: StuckKind,
}

/// Which threshold a stuck task is past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// Its `due_at` passed more than the grace ago and the sweeper has not acted.
    Overdue,
    /// It waits in a human stage (escalated, or handed to people).
    Escalated,
    /// Its own deadline passed and it is not done.
    Deadline,
}

impl StuckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overdue => "overdue",
            Self::Escalated => "escalated",
            Self::Deadline => "deadline",
        }
    }
}

impl fmt::Display for StuckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
