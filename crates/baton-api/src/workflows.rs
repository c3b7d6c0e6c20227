//! The bodies of the workflow routes (`/v1/workflows`): applying a workflow
//! file's text, and a stored workflow version as clients see it
//! (`WorkflowView`, durations in milliseconds, with the version rendered back
//! as TOML). The file format and its parser live in `workflow`; the server
//! parses what `apply` sends with that same code and converts the stored core
//! model into these types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/workflows`: the text of a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyWorkflowRequest {
    /// The workflow file, TOML (docs/reference/workflow-file.md).
    pub source: String,
}

/// `POST /v1/workflows` answer: the stored version, and whether applying made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppliedWorkflow {
    pub workflow: WorkflowView,
    /// False when the latest version already had this definition (no new version).
    pub created: bool,
}

/// `GET /v1/workflows` answer: the latest version of every workflow, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

/// `GET /v1/workflows/{name}` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkflowQuery {
    /// A version (1, 2, ...); the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One stored version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    pub name: String,
    /// 1 for the first version applied; tasks keep the version they started under.
    pub version: u32,
    /// The stage a task submitted through the workflow starts in.
    pub entry: String,
    /// Every stage the workflow declares, by name.
    pub stages: BTreeMap<String, WorkflowStageView>,
    /// This version as a workflow file (TOML), every policy spelled out.
    pub source: String,
    /// Present when the workflow is also an A2A agent (`[a2a]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<A2aView>,
}

/// A workflow's `[a2a]` section: how it answers as an A2A agent (docs/a2a.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct A2aView {
    /// The agent card's description; empty: a sentence naming the workflow.
    #[serde(default)]
    pub description: String,
    /// An escalation to a person shows as failed instead of input-required.
    #[serde(default)]
    pub escalation_is_failure: bool,
    /// URLs push notification configs may name; empty: push is refused.
    #[serde(default)]
    pub push_url_prefixes: Vec<String>,
}

/// A stage as a workflow declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowStageView {
    pub policy: StagePolicyView,
    /// Stages a holder may hand off to from here (`next` included).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Where `complete` sends the task; absent: `complete` finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The stage that undoes this stage's work when the workflow is aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
    /// Agents that may claim here; empty: any agent its grants allow.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Tasks held here at once; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// A canary route: this share of `complete`'s traffic goes to its stage
    /// instead of `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    /// Operators (people) work this stage: escalations land in such stages,
    /// and its tasks show in the inbox.
    pub human: bool,
}

/// A canary route of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CanaryView {
    pub stage: String,
    /// 1 to 99: the percent of tasks completing at the stage sent to `stage`.
    pub percent: u8,
}

/// A stage's policy, durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StagePolicyView {
    /// How long a task may wait unclaimed before the ladder acts.
    pub accept_within_ms: i64,
    /// The lease a claim gets when it asks for none.
    pub lease_ms: i64,
    /// Failures and lease expiries before the ladder climbs.
    pub max_attempts: u32,
    pub retry: BackoffView,
    /// Re-offers (another `accept_within_ms`) before rerouting or escalating.
    pub reoffers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reroute_to: Option<String>,
    /// The human stage escalations go to (`inbox` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
    /// How long before a task's deadline its priority is raised.
    pub deadline_near_ms: i64,
}

/// Retry backoff: `initial_ms * multiplier^(attempt-1)`, at most `max_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackoffView {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub multiplier: u32,
}

/// A task's workflow: its name and the version the task runs under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct WorkflowRef {
    pub name: String,
    pub version: u32,
}
