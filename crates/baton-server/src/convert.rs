//! Core types to wire types. The server never serializes a `baton-core` type:
//! every answer is built here from `baton-api` types, so the storage model can
//! change without changing the contract.

use baton_api as api;
use baton_api::{Payload, Timestamp};
use baton_core::{
    Actor, Custodian, Event, Grant, Handoff, HandoffOutcome, JoinMode, StagePolicy, StateName, Task,
    TaskState, Wait, Workflow,
};

pub fn task(task: &Task, payload: Option<Payload>) -> api::Task {
    let mut view = api::Task {
        id: task.id.0,
        stage: task.stage.to_string(),
        state: state_name(task.state_name()),
        priority: task.priority,
        deadline: task.deadline.map(Timestamp),
        idempotency_key: task.idempotency_key.clone(),
        parent: task.parent.map(|p| p.0),
        labels: task.labels.clone(),
        trace: task.trace.clone(),
        submitter: actor(&task.submitter),
        created_at: Timestamp(task.created_at),
        updated_at: Timestamp(task.updated_at),
        revision: task.revision,
        epoch: task.epoch,
        attempts: task.attempts,
        reoffers: task.reoffers,
        reroutes: task.reroutes,
        custodian: task.custodian().map(|c| custodian(&c)),
        due_at: task.due_at().map(Timestamp),
        waiting: None,
        lease: None,
        join: None,
        finished_at: None,
        result: None,
        cancel_reason: None,
        workflow: task
            .workflow
            .as_ref()
            .map(|w| api::WorkflowRef { name: w.name.clone(), version: w.version }),
        trail: task.trail.iter().map(ToString::to_string).collect(),
        deadline_passed: task.deadline_passed,
        compensation: task.compensation,
        payload,
    };
    match &task.state {
        TaskState::Waiting { since, wait, handoff: open, .. } => {
            view.waiting = Some(api::Waiting {
                since: Timestamp(*since),
                kind: match wait {
                    Wait::Offered { .. } => api::WaitKind::Offered,
                    Wait::Backoff { .. } => api::WaitKind::Backoff,
                },
                handoff: open.as_ref().map(handoff),
            });
        }
        TaskState::Held { lease } => {
            view.lease = Some(api::LeaseInfo {
                agent: lease.agent.to_string(),
                epoch: lease.epoch,
                claimed_at: Timestamp(lease.claimed_at),
                expires_at: Timestamp(lease.expires_at),
            });
        }
        TaskState::Blocked { join, .. } => {
            let (mode, n) = match join.mode {
                JoinMode::All => (api::JoinMode::All, None),
                JoinMode::Any => (api::JoinMode::Any, None),
                JoinMode::Quorum(n) => (api::JoinMode::Quorum, Some(n)),
            };
            view.join = Some(api::Join {
                mode,
                n,
                children: join.children,
                done: join.done,
                failed: join.failed,
                due_at: Timestamp(join.due_at),
            });
        }
        TaskState::Done { at, result } => {
            view.finished_at = Some(Timestamp(*at));
            view.result = result.clone();
        }
        TaskState::Cancelled { at, reason } => {
            view.finished_at = Some(Timestamp(*at));
            view.cancel_reason = Some(reason.clone());
        }
    }
    view
}

/// A lease as the claiming agent sees it, with the task's payload.
pub fn lease(grant: &Grant, payload: Payload) -> api::Lease {
    let task = &grant.task;
    api::Lease {
        task: task.id.0,
        stage: task.stage.to_string(),
        epoch: grant.epoch,
        lease_expires_at: Timestamp(grant.lease_expires_at),
        priority: task.priority,
        attempts: task.attempts,
        deadline: task.deadline.map(Timestamp),
        parent: task.parent.map(|p| p.0),
        labels: task.labels.clone(),
        trace: task.trace.clone(),
        payload,
    }
}

pub fn event(event: &Event) -> api::Event {
    api::Event {
        version: event.version,
        at: Timestamp(event.at),
        actor: actor(&event.actor),
        kind: event.kind.as_str().to_owned(),
        from: event
            .from
            .as_ref()
            .map(|p| api::Position { state: state_name(p.state), stage: p.stage.to_string() }),
        to: api::Position { state: state_name(event.to.state), stage: event.to.stage.to_string() },
        epoch: event.after.epoch,
        note: event.note.clone(),
        findings: event.findings.clone(),
        confidence: event.confidence,
        handoff_id: event.handoff.map(|h| h.0),
        prev_hash: event.prev_hash.to_hex(),
        hash: event.hash.to_hex(),
    }
}

pub fn handoff(handoff: &Handoff) -> api::Handoff {
    api::Handoff {
        id: handoff.id.0,
        task: handoff.task.0,
        from_stage: handoff.from_stage.to_string(),
        to_stage: handoff.to_stage.to_string(),
        from_agent: handoff.from_agent.to_string(),
        at: Timestamp(handoff.at),
        outcome: match &handoff.outcome {
            HandoffOutcome::Pending => api::HandoffOutcome::Pending,
            HandoffOutcome::Accepted { by, at, epoch } => {
                api::HandoffOutcome::Accepted { by: by.to_string(), at: Timestamp(*at), epoch: *epoch }
            }
            HandoffOutcome::Rerouted { to, at } => {
                api::HandoffOutcome::Rerouted { to: to.to_string(), at: Timestamp(*at) }
            }
            HandoffOutcome::Escalated { to, at } => {
                api::HandoffOutcome::Escalated { to: to.to_string(), at: Timestamp(*at) }
            }
            HandoffOutcome::Cancelled { at } => api::HandoffOutcome::Cancelled { at: Timestamp(*at) },
        },
    }
}

/// A stored workflow version, with its text rendered back as a workflow file.
pub fn workflow(wf: &Workflow) -> api::WorkflowView {
    let stages = wf
        .stages
        .iter()
        .map(|(name, s)| {
            let stage = api::WorkflowStageView {
                policy: policy(&s.policy),
                routes: s.routes.iter().map(ToString::to_string).collect(),
                next: s.next.as_ref().map(ToString::to_string),
                compensate: s.compensate.as_ref().map(ToString::to_string),
                agents: s.agents.clone(),
                capacity: s.capacity,
                canary: s
                    .canary
                    .as_ref()
                    .map(|c| api::CanaryView { stage: c.stage.to_string(), percent: c.percent }),
                human: s.policy.human,
            };
            (name.to_string(), stage)
        })
        .collect();
    api::WorkflowView {
        name: wf.name.clone(),
        version: wf.version,
        entry: wf.entry.to_string(),
        stages,
        source: baton_api::render_workflow(wf),
        a2a: wf.a2a.as_ref().map(|a| api::A2aView {
            description: a.description.clone(),
            escalation_is_failure: a.escalation_is_failure,
            push_url_prefixes: a.push_url_prefixes.clone(),
        }),
    }
}

fn policy(p: &StagePolicy) -> api::StagePolicyView {
    api::StagePolicyView {
        accept_within_ms: p.accept_within_ms,
        lease_ms: p.lease_ms,
        max_attempts: p.max_attempts,
        retry: api::BackoffView {
            initial_ms: p.retry.initial_ms,
            max_ms: p.retry.max_ms,
            multiplier: p.retry.multiplier,
        },
        reoffers: p.reoffers,
        reroute_to: p.reroute_to.as_ref().map(ToString::to_string),
        escalate_to: p.escalate_to.as_ref().map(ToString::to_string),
        deadline_near_ms: p.deadline_near_ms,
    }
}

pub fn state_name(state: StateName) -> api::TaskStateName {
    match state {
        StateName::Waiting => api::TaskStateName::Waiting,
        StateName::Held => api::TaskStateName::Held,
        StateName::Blocked => api::TaskStateName::Blocked,
        StateName::Done => api::TaskStateName::Done,
        StateName::Cancelled => api::TaskStateName::Cancelled,
    }
}

pub fn state_from_api(state: api::TaskStateName) -> StateName {
    match state {
        api::TaskStateName::Waiting => StateName::Waiting,
        api::TaskStateName::Held => StateName::Held,
        api::TaskStateName::Blocked => StateName::Blocked,
        api::TaskStateName::Done => StateName::Done,
        api::TaskStateName::Cancelled => StateName::Cancelled,
    }
}

/// `agent:ID`, `principal:NAME` or `baton`.
pub fn actor(actor: &Actor) -> String {
    actor.to_string()
}

pub fn custodian(custodian: &Custodian) -> api::Custodian {
    let (kind, id) = match custodian {
        Custodian::Submitter(a) => (api::CustodianKind::Submitter, actor(a)),
        Custodian::Agent(a) => (api::CustodianKind::Agent, a.to_string()),
        Custodian::Stage(s) => (api::CustodianKind::Stage, s.to_string()),
    };
    api::Custodian { kind, id }
}
