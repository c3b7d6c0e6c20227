//! Refusals as values. Each has a stable code that crosses the wire unchanged;
//! the server maps codes to HTTP statuses in one place. A refusal always means
//! nothing changed.

use crate::ids::{AgentId, HandoffId, StageName, TaskId};
use crate::task::StateName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    /// The caller's epoch is not the task's current lease epoch (or the lease is gone).
    #[error(
        "the lease on task {task} is lost: current epoch is {current_epoch} and the task is {state}; stop working on it"
    )]
    LeaseLost { task: TaskId, current_epoch: u64, state: StateName },
    /// The epoch is current but another agent holds the lease.
    #[error("task {task} is held by another agent")]
    NotHolder { task: TaskId },
    /// The command does not apply to the task's state.
    #[error("cannot {command} a task that is {state}")]
    InvalidTransition { task: TaskId, command: String, state: StateName },
    /// An idempotency key was reused with a different request.
    #[error(
        "idempotency key {key:?} was already used with a different request; use a new key or repeat the original request"
    )]
    IdempotencyConflict { key: String },
    /// A named limit refused the request.
    #[error("limit {limit} is {max}; {what}")]
    LimitExceeded { limit: String, max: u64, what: String },
    /// Too many open leases for one agent.
    #[error("agent holds {max} leases already (limit leases_per_agent_max); finish or release some first")]
    TooManyLeases { max: u64 },
    /// No such task (or none visible to the caller).
    #[error("task {task} not found")]
    TaskNotFound { task: TaskId },
    /// The task finished and was moved to the archive: its history is still
    /// served (`GET /v1/tasks/{task}/history`), but it takes no call and its
    /// idempotency key cannot start another task.
    #[error(
        "task {task} finished and was archived; read its history at GET /v1/tasks/{task}/history (an archived task takes no further call, and its idempotency key stays taken)"
    )]
    TaskArchived { task: TaskId },
    /// No such handoff.
    #[error("handoff {handoff} not found")]
    HandoffNotFound { handoff: HandoffId },
    /// The route is not allowed by the task's workflow or the agent's grants.
    #[error("handing off from {from} to {to} is not an allowed route")]
    RouteNotAllowed { from: StageName, to: StageName },
    /// A request field is malformed.
    #[error("{field}: {problem}")]
    InvalidRequest { field: String, problem: String },
    /// No workflow of that name (or version) has been applied.
    #[error("workflow {name:?} not found; apply it first with `baton workflow apply`")]
    WorkflowNotFound { name: String },
    /// The task's workflow does not let this agent claim at this stage.
    #[error("agent {agent} may not claim at stage {stage}: the workflow lists who may")]
    AgentNotAllowed { stage: StageName, agent: AgentId },
    /// The timer fired before the task was due (a benign race; nothing to do).
    #[error("task {task} is not due yet")]
    NotDue { task: TaskId },
    /// The caller's principal or token was revoked: checked again inside a
    /// claim's own transaction, so no lease goes to a revoked caller.
    #[error("the caller's token or principal is revoked; ask an admin for a new token")]
    Revoked,
    /// The caller's principal may not make this call (its role, or the
    /// task's stage): `crate::auth` says which and why.
    #[error("{message}")]
    Forbidden { message: String },
    /// Revoking this principal would leave no live admin.
    #[error("{name} is the last live admin; create another admin before revoking it")]
    LastAdmin { name: String },
}

impl Rejection {
    /// The stable code sent to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::LeaseLost { .. } => "lease_lost",
            Self::NotHolder { .. } => "not_holder",
            Self::InvalidTransition { .. } | Self::LastAdmin { .. } => "invalid_transition",
            Self::IdempotencyConflict { .. } => "idempotency_conflict",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::TooManyLeases { .. } => "too_many_leases",
            Self::TaskNotFound { .. } | Self::HandoffNotFound { .. } | Self::WorkflowNotFound { .. } => {
                "not_found"
            }
            Self::TaskArchived { .. } => "task_archived",
            Self::AgentNotAllowed { .. } | Self::Forbidden { .. } => "forbidden",
            Self::RouteNotAllowed { .. } => "route_not_allowed",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::NotDue { .. } => "not_due",
            Self::Revoked => "unauthenticated",
        }
    }

    pub fn limit(limit: &str, max: impl TryInto<u64>, what: impl Into<String>) -> Self {
        Self::LimitExceeded {
            limit: limit.to_owned(),
            max: max.try_into().unwrap_or(u64::MAX),
            what: what.into(),
        }
    }

    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::InvalidRequest { field: field.to_owned(), problem: problem.into() }
    }
}
