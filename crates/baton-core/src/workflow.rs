//! Workflows: versioned graphs of stages. A workflow names its entry stage and,
//! per stage, the stage's policy, the routes a handoff may take from it, the
//! default route `complete` follows (`next`), the compensation stage that
//! undoes its work when the workflow is aborted, which agents may claim there
//! and how many tasks may be held there at once.
//!
//! A task submitted through a workflow pins the workflow's name and version
//! (`WorkflowRef`): applying a new version never changes a running task. Stages
//! a workflow does not declare (the built-in human stage `inbox`, ad hoc
//! stages) keep the global policies. The file format and its line-and-column
//! errors live in `baton-api`; this module holds the checked model and the
//! graph checks every applied workflow passes (`Workflow::check`).

use crate::ids::{StageName, TaskId};
use crate::policy::{Policies, StagePolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A task's workflow: name and the version it was submitted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRef {
    pub name: String,
    pub version: u32,
}

/// One version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    /// Given by the store when the workflow is applied: 1, 2, ...
    pub version: u32,
    pub entry: StageName,
    pub stages: BTreeMap<StageName, WorkflowStage>,
    /// Present when the workflow is also an A2A agent (`[a2a]` in its file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<A2aSettings>,
}

/// How a workflow answers as an A2A agent: the `[a2a]` section of its file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aSettings {
    /// The agent card's description; empty: a sentence naming the workflow.
    pub description: String,
    /// An escalation to a person shows as `failed` instead of `input-required`.
    pub escalation_is_failure: bool,
    /// URLs push notification configs may name; empty: push is refused.
    pub push_url_prefixes: Vec<String>,
}

/// A stage as a workflow declares it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowStage {
    pub policy: StagePolicy,
    /// Stages a holder may hand off to from here (`next` included).
    pub routes: Vec<StageName>,
    /// Where `complete` sends the task; `None`: `complete` finishes it.
    pub next: Option<StageName>,
    /// The stage that undoes this stage's work when the workflow is aborted.
    pub compensate: Option<StageName>,
    /// Agents that may claim here; empty: any agent the principal table allows.
    pub agents: Vec<String>,
    /// Tasks held at this stage at once; `None`: no cap.
    pub capacity: Option<u32>,
    /// A share of `complete`'s traffic sent to a new stage instead of `next`,
    /// until it is promoted (it becomes `next`) or rolled back (removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A canary route: `percent` of the tasks completing at a stage go to `stage`
/// instead of the stage's `next`, chosen by task id, so a task's choice never
/// changes and the share holds over any run of tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub stage: StageName,
    /// 1 to 99.
    pub percent: u8,
}

/// The task's bucket for canary routes, 0 to 99, from the random bits of its id.
pub fn canary_bucket(task: TaskId) -> u8 {
    u8::try_from(task.0.as_u128() % 100).unwrap_or(0)
}

impl WorkflowStage {
    /// Where `complete` sends `task` from this stage: the canary's stage for
    /// the canary's share, else `next`; `None` when complete finishes it.
    pub fn complete_to(&self, task: TaskId) -> Option<&StageName> {
        let next = self.next.as_ref()?;
        match &self.canary {
            Some(c) if canary_bucket(task) < c.percent => Some(&c.stage),
            _ => Some(next),
        }
    }
}

/// A graph error: which stage (if any) and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// The stage the error is about, and the field (`routes`, `next`, ...).
    pub stage: Option<StageName>,
    pub field: &'static str,
    /// The offending value, when it is a stage name.
    pub value: Option<StageName>,
    pub message: String,
}

impl Workflow {
    pub fn reference(&self) -> WorkflowRef {
        WorkflowRef { name: self.name.clone(), version: self.version }
    }

    pub fn stage(&self, stage: &StageName) -> Option<&WorkflowStage> {
        self.stages.get(stage)
    }

    /// The policy of `stage` for this workflow's tasks: the workflow's own,
    /// else the global one.
    pub fn policy<'a>(&'a self, stage: &StageName, global: &'a Policies) -> &'a StagePolicy {
        self.stages.get(stage).map_or_else(|| global.get(stage), |s| &s.policy)
    }

    /// Whether a holder at `from` may hand off to `to`. From a human stage
    /// (an escalated task in an operator's hands) every stage of the workflow
    /// is allowed: resolving hands the task back wherever it belongs.
    pub fn allows(&self, from: &StageName, to: &StageName, global: &Policies) -> bool {
        match self.stages.get(from) {
            Some(s) if !s.policy.human => s.routes.contains(to) || s.next.as_ref() == Some(to),
            _ if self.policy(from, global).human => self.stages.contains_key(to),
            // A task rerouted to an ad hoc stage: it may come back anywhere.
            _ => self.stages.contains_key(to),
        }
    }

    /// The stages a holder at `from` may hand off to, for error messages.
    pub fn routes_from(&self, from: &StageName, global: &Policies) -> Vec<StageName> {
        match self.stages.get(from) {
            Some(s) if !s.policy.human => {
                let mut all: Vec<StageName> = s.routes.clone();
                if let Some(n) = &s.next
                    && !all.contains(n)
                {
                    all.push(n.clone());
                }
                all
            }
            _ => {
                let _ = global;
                self.stages.keys().cloned().collect()
            }
        }
    }

    /// Whether two versions declare the same thing (the version aside):
    /// applying an unchanged file makes no new version.
    pub fn same_definition(&self, other: &Workflow) -> bool {
        self.name == other.name
            && self.entry == other.entry
            && self.stages == other.stages
            && self.a2a == other.a2a
    }

    /// The graph checks: every stage named exists (in the workflow, or as a
    /// global human stage for escalations), `next` is a route, escalation
    /// targets are human stages, and every stage reachable from the entry
    /// (along routes, reroutes and compensations) can reach a stage where
    /// `complete` finishes the task (no cycle without exit).
    pub fn check(&self, global: &Policies) -> Vec<GraphError> {
        let mut errors = Vec::new();
        let known = |s: &StageName| self.stages.contains_key(s);
        let err = |stage: &StageName, field: &'static str, value: Option<&StageName>, message: String| {
            GraphError { stage: Some(stage.clone()), field, value: value.cloned(), message }
        };
        if !known(&self.entry) {
            errors.push(GraphError {
                stage: None,
                field: "entry",
                value: Some(self.entry.clone()),
                message: format!("entry stage `{}` is not declared: add [stages.{}]", self.entry, self.entry),
            });
        }
        for (name, s) in &self.stages {
            for to in &s.routes {
                if !known(to) {
                    errors.push(err(
                        name,
                        "routes",
                        Some(to),
                        format!("route to unknown stage `{to}`: declare [stages.{to}] or remove the route"),
                    ));
                } else if to == name {
                    errors.push(err(
                        name,
                        "routes",
                        Some(to),
                        format!("stage `{name}` routes to itself: use release or fail to retry a stage"),
                    ));
                }
            }
            if let Some(next) = &s.next {
                if !known(next) {
                    errors.push(err(
                        name,
                        "next",
                        Some(next),
                        format!("`next` names unknown stage `{next}`: declare [stages.{next}]"),
                    ));
                } else if !s.routes.contains(next) {
                    errors.push(err(
                        name,
                        "next",
                        Some(next),
                        format!("`next` = `{next}` is not one of this stage's routes: add it to `routes`"),
                    ));
                }
            }
            if let Some(to) = &s.policy.reroute_to {
                if !known(to) {
                    errors.push(err(
                        name,
                        "reroute_to",
                        Some(to),
                        format!("`reroute_to` names unknown stage `{to}`: declare [stages.{to}]"),
                    ));
                } else if to == name {
                    errors.push(err(
                        name,
                        "reroute_to",
                        Some(to),
                        "a stage cannot reroute to itself: name a fallback stage or remove `reroute_to`"
                            .to_owned(),
                    ));
                }
            }
            if let Some(to) = &s.policy.escalate_to {
                let human = self
                    .stages
                    .get(to)
                    .map_or_else(|| global.stages.get(to).is_some_and(|p| p.human), |t| t.policy.human);
                if !human {
                    let what = if known(to) || global.stages.contains_key(to) {
                        format!(
                            "`escalate_to` = `{to}` is not a human stage: set `human = true` on [stages.{to}]"
                        )
                    } else {
                        format!(
                            "`escalate_to` names unknown stage `{to}`: declare [stages.{to}] with `human = true`"
                        )
                    };
                    errors.push(err(name, "escalate_to", Some(to), what));
                }
            }
            if let Some(to) = &s.compensate {
                if !known(to) {
                    errors.push(err(
                        name,
                        "compensate",
                        Some(to),
                        format!("`compensate` names unknown stage `{to}`: declare [stages.{to}]"),
                    ));
                } else if to == name {
                    errors.push(err(
                        name,
                        "compensate",
                        Some(to),
                        "a stage cannot compensate itself: name a separate compensation stage".to_owned(),
                    ));
                } else if s.routes.is_empty() && s.next.is_none() {
                    // An abort compensates the stages a task has handed off
                    // from; a task leaves this one only by finishing.
                    errors.push(err(
                        name,
                        "compensate",
                        Some(to),
                        format!(
                            "`compensate` on `{name}` can never run: a task leaves `{name}` only by finishing, \
                             and an abort compensates stages already handed off from; give `{name}` a route \
                             (or `next`) to a later stage, or remove `compensate`"
                        ),
                    ));
                }
            }
            if let Some(c) = &s.canary {
                if !known(&c.stage) {
                    errors.push(err(
                        name,
                        "canary",
                        Some(&c.stage),
                        format!("`canary` names unknown stage `{}`: declare [stages.{}]", c.stage, c.stage),
                    ));
                } else if !s.routes.contains(&c.stage) {
                    errors.push(err(
                        name,
                        "canary",
                        Some(&c.stage),
                        format!(
                            "`canary` = `{}` is not one of this stage's routes: add it to `routes`",
                            c.stage
                        ),
                    ));
                } else if s.next.is_none() {
                    errors.push(err(
                        name,
                        "canary",
                        Some(&c.stage),
                        "a canary shares `next`'s traffic: set `next` (the current route) too".to_owned(),
                    ));
                } else if s.next.as_ref() == Some(&c.stage) {
                    errors.push(err(
                        name,
                        "canary",
                        Some(&c.stage),
                        "the canary is already `next`: promote it by removing `canary`".to_owned(),
                    ));
                }
                if !(1..=99).contains(&c.percent) {
                    errors.push(err(
                        name,
                        "canary_percent",
                        None,
                        format!(
                            "`canary_percent` is {}: send between 1 and 99 percent to the canary",
                            c.percent
                        ),
                    ));
                }
            }
            if s.capacity == Some(0) {
                errors.push(err(
                    name,
                    "capacity",
                    None,
                    "capacity 0 would let nobody claim: set at least 1 or remove it".to_owned(),
                ));
            }
        }
        if errors.is_empty() {
            errors.extend(self.cycles_without_exit());
        }
        errors
    }

    /// Stages reachable from the entry (by routes, reroutes and compensation)
    /// from which no finishing stage (one without `next`, reached by routes)
    /// can be reached.
    fn cycles_without_exit(&self) -> Vec<GraphError> {
        let mut reachable = BTreeSet::new();
        let mut stack = vec![self.entry.clone()];
        while let Some(s) = stack.pop() {
            if !reachable.insert(s.clone()) {
                continue;
            }
            if let Some(def) = self.stages.get(&s) {
                stack.extend(def.routes.iter().cloned());
                // Tasks also land where the ladder reroutes and where an abort
                // compensates: a trap there strands them just the same.
                stack.extend(def.policy.reroute_to.iter().cloned());
                stack.extend(def.compensate.iter().cloned());
            }
        }
        // Stages that can finish: fixed point over "has no next, or routes to one that can".
        let mut can_finish: BTreeSet<StageName> =
            self.stages.iter().filter(|(_, s)| s.next.is_none()).map(|(n, _)| n.clone()).collect();
        loop {
            let before = can_finish.len();
            for (name, s) in &self.stages {
                if s.routes.iter().any(|r| can_finish.contains(r)) {
                    can_finish.insert(name.clone());
                }
            }
            if can_finish.len() == before {
                break;
            }
        }
        let trapped: Vec<&StageName> = reachable.iter().filter(|s| !can_finish.contains(*s)).collect();
        let Some(first) = trapped.first() else { return Vec::new() };
        let names: Vec<&str> = trapped.iter().map(|s| s.as_str()).collect();
        vec![GraphError {
            stage: Some((*first).clone()),
            field: "next",
            value: None,
            message: format!(
                "stages {} form a cycle with no way out: every one has a `next`, so no task can finish; \
                 remove `next` from one of them or route one to a stage without `next`",
                names.join(", ")
            ),
        }]
    }
}
