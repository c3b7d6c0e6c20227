//! The inputs of the state machine: a new task, and the commands that change an
//! existing one. Holder commands carry the caller's epoch, the fence token.

use crate::event::Actor;
use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::task::JoinMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A submit request, validated by the engine against `Limits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub namespace: String,
    pub stage: StageName,
    /// JSON text, stored once as given.
    pub payload: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub deadline: Option<Millis>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub parent: Option<TaskId>,
    #[serde(default)]
    pub trace: Option<String>,
    pub submitter: Actor,
    /// Submit through this workflow (its latest version): `stage` must then be
    /// empty or the workflow's entry stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Set by the engine on a saga's compensation tasks, never by clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compensation: bool,
}

impl NewTask {
    /// A submit into `stage` with the given payload and defaults elsewhere.
    pub fn new(stage: impl Into<String>, payload: impl Into<String>) -> Self {
        Self {
            namespace: "default".into(),
            stage: StageName::new(stage),
            payload: payload.into(),
            priority: 0,
            deadline: None,
            idempotency_key: None,
            labels: BTreeMap::new(),
            parent: None,
            trace: None,
            submitter: Actor::System,
            workflow: None,
            compensation: false,
        }
    }

    /// A submit through a workflow's entry stage.
    pub fn workflow(name: impl Into<String>, payload: impl Into<String>) -> Self {
        Self { workflow: Some(name.into()), ..Self::new("", payload) }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// What a holder reports when it finishes its part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub note: Option<String>,
    pub findings: Option<serde_json::Value>,
    pub confidence: Option<f64>,
}

/// A child to spawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChild {
    pub stage: StageName,
    pub payload: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How a parent joins its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    pub mode: JoinMode,
    pub within_ms: Millis,
}

/// What a holder does with a task it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Heartbeat {
        lease_ms: Option<Millis>,
        note: Option<String>,
    },
    Handoff {
        to_stage: StageName,
        report: Report,
    },
    Complete {
        result: Option<serde_json::Value>,
        report: Report,
    },
    Release {
        note: Option<String>,
    },
    Fail {
        error: String,
        retryable: bool,
    },
    Spawn {
        children: Vec<NewChild>,
        join: JoinSpec,
    },
    /// Abort the task's workflow: compensate the stages already done, latest
    /// first, then cancel the task.
    Abort {
        reason: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Heartbeat { .. } => "heartbeat",
            Self::Handoff { .. } => "handoff",
            Self::Complete { .. } => "complete",
            Self::Release { .. } => "release",
            Self::Fail { .. } => "fail",
            Self::Spawn { .. } => "spawn",
            Self::Abort { .. } => "abort",
        }
    }
}

/// A command against an existing task: what `decide` judges.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Take the task under a lease of `lease_ms`.
    Claim { agent: AgentId, lease_ms: Millis },
    /// A holder's action, fenced by `epoch`. `handoff_id` names the handoff a
    /// `Handoff` action creates and `children` the tasks a `Spawn` creates
    /// (ids come from the store).
    Act { agent: AgentId, epoch: u64, action: Action, handoff_id: Option<HandoffId>, children: Vec<TaskId> },
    /// Cancel, by an authorized principal.
    Cancel { actor: Actor, reason: String },
    /// Add a message to a live task's history, by an authorized principal;
    /// nothing else about the task changes.
    Comment { actor: Actor, note: String, findings: Option<serde_json::Value> },
    /// The task's `due_at` has passed: lease expiry, re-offer, reroute,
    /// escalation, join deadline or retry after backoff.
    Fire,
    /// One of the task's children reached a terminal state (or, for a
    /// compensation task, was escalated). `next_id` names the next
    /// compensation task a saga may create.
    ChildSettled { child: TaskId, ok: bool, next_id: TaskId },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "claim",
            Self::Act { action, .. } => action.name(),
            Self::Cancel { .. } => "cancel",
            Self::Comment { .. } => "comment",
            Self::Fire => "fire",
            Self::ChildSettled { .. } => "settle a child of",
        }
    }
}
