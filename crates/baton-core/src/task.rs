//! The task and its states. `TaskState` is an enum whose variants carry exactly
//! the data their state needs, so illegal combinations (a held task without a
//! lease, a waiting task without a due time) cannot be built. Every
//! non-terminal state yields a custodian and a `due_at`: the custody invariant
//! holds by construction.

use crate::event::Actor;
use crate::ids::{AgentId, Millis, StageName, TaskId};
use crate::store::Handoff;
use crate::workflow::WorkflowRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One work item. The payload is stored once, beside the task, not in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: TaskId,
    /// Idempotency keys are unique per namespace (`default` until tenants exist).
    pub namespace: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the submit request, to tell a repeat from a conflict.
    pub submit_digest: String,
    pub stage: StageName,
    /// Higher is claimed first.
    pub priority: i32,
    /// Absolute deadline of the whole task, if any.
    pub deadline: Option<Millis>,
    pub parent: Option<TaskId>,
    pub labels: BTreeMap<String, String>,
    /// W3C trace context (`traceparent`), carried so one journey is one trace.
    pub trace: Option<String>,
    pub submitter: Actor,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Versions the row: every change adds one; saves are guarded by it.
    pub revision: u64,
    /// Fences lease holders: grows on every claim and every lease expiry.
    pub epoch: u64,
    /// Failures and lease expiries at the current stage.
    pub attempts: u32,
    /// Re-offers at the current stage.
    pub reoffers: u32,
    /// Reroutes over the task's life.
    pub reroutes: u32,
    /// The workflow and version the task runs under; `None`: ad hoc stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowRef>,
    /// Workflow stages the task has finished, in order: what an abort compensates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trail: Vec<StageName>,
    /// When the nearing deadline raises the priority; `None` once raised or
    /// without a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boost_at: Option<Millis>,
    /// The deadline has passed and the ladder has acted on it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deadline_passed: bool,
    /// A saga's compensation task: its escalation also counts as settled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compensation: bool,
    pub state: TaskState,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The five states. Terminal states are `Done` and `Cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskState {
    /// In a stage, unclaimed.
    Waiting {
        custodian: Custodian,
        since: Millis,
        wait: Wait,
        /// The handoff that brought the task here, while its outcome is open.
        handoff: Option<Handoff>,
    },
    /// Leased to an agent.
    Held {
        lease: Lease,
    },
    /// Waiting for child tasks.
    Blocked {
        custodian: AgentId,
        join: Join,
    },
    Done {
        at: Millis,
        result: Option<serde_json::Value>,
    },
    Cancelled {
        at: Millis,
        reason: String,
    },
}

/// Why a waiting task waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Wait {
    /// Claimable now; the ladder acts at `due_at` if nobody claims it.
    Offered { due_at: Millis },
    /// Backing off after a retryable failure; offered again at `retry_at`.
    Backoff { retry_at: Millis },
}

/// A lease: the holder, its fence epoch and when it lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub agent: AgentId,
    pub epoch: u64,
    pub claimed_at: Millis,
    pub expires_at: Millis,
}

/// Who is accountable for a waiting task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Custodian {
    /// Whoever submitted it, until the first claim.
    Submitter(Actor),
    /// The agent that handed it off (or spawned children), until the next claim.
    Agent(AgentId),
    /// The stage itself: Baton, acting under the stage's ladder. For a human
    /// stage, its operators.
    Stage(StageName),
}

/// A parent's join over the children of its current spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub mode: JoinMode,
    pub children: u32,
    /// The children of this spawn not yet settled. Only these count: a child
    /// of an earlier spawn, or a task submitted with this parent, does not.
    pub open: Vec<TaskId>,
    pub done: u32,
    pub failed: u32,
    pub due_at: Millis,
    /// Set when the join waits for a saga's compensation tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<Saga>,
}

/// An aborted workflow's compensation, one stage at a time, latest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saga {
    pub reason: String,
    /// Compensation stages still to run, the next one first.
    pub remaining: Vec<StageName>,
    /// The compensation stage whose task runs now.
    pub current: Option<StageName>,
    /// Compensation stages run so far, with whether each was done (not escalated).
    pub ran: Vec<(StageName, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "n", rename_all = "snake_case")]
pub enum JoinMode {
    All,
    Any,
    Quorum(u32),
}

impl Join {
    /// Children that must be done for the join to hold.
    pub fn needed(&self) -> u32 {
        match self.mode {
            JoinMode::All => self.children,
            JoinMode::Any => 1.min(self.children),
            JoinMode::Quorum(n) => n.min(self.children),
        }
    }
    pub fn satisfied(&self) -> bool {
        self.done >= self.needed()
    }
    /// True when too many children failed for the join ever to hold.
    pub fn hopeless(&self) -> bool {
        self.children - self.failed < self.needed()
    }
}

/// The indexed columns of a task row (`Task::index_columns`): the ready set
/// (stage, ready, priority, deadline rank), the timers (`due_at`), leases per
/// agent (`holder`) and listings by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexColumns<'t> {
    pub stage: &'t str,
    pub state: &'static str,
    pub priority: i32,
    pub deadline_rank: Millis,
    pub due_at: Option<Millis>,
    pub holder: Option<&'t str>,
    pub ready: bool,
    /// Since when a ready task waits (`None` unless ready): the key of the
    /// index that finds a stage's oldest ready task in one seek.
    pub ready_since: Option<Millis>,
}

/// A state's name, as stored in indexes and sent over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Waiting,
    Held,
    Blocked,
    Done,
    Cancelled,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Held => "held",
            Self::Blocked => "blocked",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "waiting" => Self::Waiting,
            "held" => Self::Held,
            "blocked" => Self::Blocked,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Task {
    pub fn state_name(&self) -> StateName {
        match self.state {
            TaskState::Waiting { .. } => StateName::Waiting,
            TaskState::Held { .. } => StateName::Held,
            TaskState::Blocked { .. } => StateName::Blocked,
            TaskState::Done { .. } => StateName::Done,
            TaskState::Cancelled { .. } => StateName::Cancelled,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.state, TaskState::Done { .. } | TaskState::Cancelled { .. })
    }

    /// When Baton acts on the task if nothing else happens; `None` only when
    /// terminal. The deadline's two moments (raise the priority, escalate)
    /// count as well as the state's own timer.
    pub fn due_at(&self) -> Option<Millis> {
        let state = self.state_due_at()?;
        let deadline = self.deadline.filter(|_| !self.deadline_passed);
        Some([Some(state), self.boost_at, deadline].into_iter().flatten().min().unwrap_or(state))
    }

    /// The state's own timer: acceptance, backoff, lease or join deadline.
    pub fn state_due_at(&self) -> Option<Millis> {
        match &self.state {
            TaskState::Waiting { wait: Wait::Offered { due_at }, .. } => Some(*due_at),
            TaskState::Waiting { wait: Wait::Backoff { retry_at }, .. } => Some(*retry_at),
            TaskState::Held { lease } => Some(lease.expires_at),
            TaskState::Blocked { join, .. } => Some(join.due_at),
            TaskState::Done { .. } | TaskState::Cancelled { .. } => None,
        }
    }

    /// Who is accountable now; `None` only when terminal.
    pub fn custodian(&self) -> Option<Custodian> {
        match &self.state {
            TaskState::Waiting { custodian, .. } => Some(custodian.clone()),
            TaskState::Held { lease } => Some(Custodian::Agent(lease.agent.clone())),
            TaskState::Blocked { custodian, .. } => Some(Custodian::Agent(custodian.clone())),
            TaskState::Done { .. } | TaskState::Cancelled { .. } => None,
        }
    }

    /// The current lease holder, if held.
    pub fn holder(&self) -> Option<&AgentId> {
        match &self.state {
            TaskState::Held { lease } => Some(&lease.agent),
            _ => None,
        }
    }

    /// Whether a claim may take the task now.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, TaskState::Waiting { wait: Wait::Offered { .. }, .. })
    }

    /// The columns a store indexes this task by, derived from it on every
    /// save so they cannot drift from the row (every store keeps the same ones).
    pub fn index_columns(&self) -> IndexColumns<'_> {
        IndexColumns {
            stage: self.stage.as_str(),
            state: self.state_name().as_str(),
            priority: self.priority,
            deadline_rank: self.deadline_rank(),
            due_at: self.due_at(),
            holder: self.holder().map(AgentId::as_str),
            ready: self.is_ready(),
            ready_since: match &self.state {
                TaskState::Waiting { since, wait: Wait::Offered { .. }, .. } => Some(*since),
                _ => None,
            },
        }
    }

    /// The deadline as a sort key: no deadline sorts last.
    pub fn deadline_rank(&self) -> Millis {
        self.deadline.unwrap_or(Millis::MAX)
    }
}
