//! The lineage of a task (`GET /v1/tasks/{id}/lineage`): its path through
//! stages and agents with the time spent at each step, and its tree of
//! parent and children. The server computes it from the task's history and
//! its children listing; these are only the wire shapes.

use crate::TaskId;
use crate::response::TaskStateName;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// `GET /v1/tasks/{id}/lineage` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lineage {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    /// The task's stage and state now.
    pub stage: String,
    pub state: TaskStateName,
    /// What the durations of an open step are measured up to: the server's
    /// clock when the lineage was read.
    pub as_of: Timestamp,
    /// One step per stint at a stage: from entering (or re-entering) the
    /// stage, through its claim, until the task left the stage or its
    /// holder. Oldest first; only the last may be open (no `left_at`).
    pub steps: Vec<LineageStep>,
    /// The sums over the steps, and the time blocked on children.
    pub totals: LineageTotals,
    /// The task's parent and children.
    pub tree: LineageTree,
}

/// One stint at a stage: waiting there, then (perhaps) held by one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineageStep {
    pub stage: String,
    /// When the task began waiting at the stage for this step.
    pub entered_at: Timestamp,
    /// When an agent claimed it; absent when it left unclaimed (or waits still).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Timestamp>,
    /// The agent that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// The lease's epoch (the fence of that claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the step ended; absent for the open step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<Timestamp>,
    /// How the step ended; absent for the open step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<StepExit>,
    /// Where the task went, when it left for another stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_stage: Option<String>,
    /// The handoff that ended the step, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub handoff: Option<crate::HandoffId>,
    /// From `entered_at` to the claim (or to `left_at`, or `as_of`, unclaimed).
    pub waited_ms: u64,
    /// From the claim to `left_at` (or `as_of` while held); 0 unclaimed.
    pub held_ms: u64,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepExit {
    /// The holder handed it off to `to_stage`.
    HandedOff,
    /// The holder completed it.
    Completed,
    /// The ladder moved it to the stage's fallback (`to_stage`).
    Rerouted,
    /// The ladder moved it to the human stage (`to_stage`).
    Escalated,
    /// The holder's lease expired; it waits at the stage again.
    Expired,
    /// The holder released it; it waits at the stage again.
    Released,
    /// The holder failed it; it waits (after a backoff) at the stage again.
    Failed,
    /// The holder spawned children; it is blocked until they join.
    Spawned,
    /// It was cancelled.
    Cancelled,
    /// Its workflow was aborted: it waits for compensation, then ends cancelled.
    Aborted,
}

impl StepExit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandedOff => "handed_off",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
            Self::Rerouted => "rerouted",
            Self::Escalated => "escalated",
            Self::Expired => "expired",
            Self::Released => "released",
            Self::Failed => "failed",
            Self::Spawned => "spawned",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StepExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time sums of a lineage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct LineageTotals {
    /// From submit to the end (done or cancelled) or to `as_of`.
    pub total_ms: u64,
    /// Waiting unclaimed, over every step.
    pub waited_ms: u64,
    /// Held under a lease, over every step.
    pub held_ms: u64,
    /// Blocked on children, between a spawn and its join.
    pub blocked_ms: u64,
}

/// A task's place in its tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineageTree {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub parent: Option<TaskId>,
    /// The children, oldest first, each with its own children down to a
    /// bounded depth; at most a bounded number per task.
    pub children: Vec<LineageChild>,
    /// True when the task has more children than listed.
    #[serde(default)]
    pub children_truncated: bool,
}

/// A child in a lineage tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineageChild {
    #[schema(value_type = uuid::Uuid)]
    pub id: TaskId,
    pub stage: String,
    pub state: TaskStateName,
    /// Its own children; empty below the depth limit (see `children_truncated`).
    #[schema(no_recursion)]
    pub children: Vec<LineageChild>,
    /// True when it has more children than listed, or children below the depth limit.
    #[serde(default)]
    pub children_truncated: bool,
}

/// `GET /v1/tasks/{id}/verify` answer: whether the task's hash-chained
/// history verifies against its row (the check `baton audit verify` makes
/// for every task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainVerification {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    /// True when every event links to the one before, each hash matches its
    /// event, and the last event carries the row as stored.
    pub ok: bool,
    /// Events read.
    pub events: u64,
    /// The last event's hash (the row's head) when the chain verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The first version that fails, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    /// What is wrong there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
