//! `GET /v1/tasks/{id}/lineage`: a task's path through stages and agents,
//! with the time spent at each step, and its tree of parent and children.
//! The path is computed here from the task's history (`steps`, a pure
//! function over the events); the tree from the store's children listing,
//! bounded in breadth, depth and total size so one read stays cheap. Who may
//! read follows `GET /v1/tasks/{id}`: a task outside an agent's stages is
//! `not_found`, and children the caller may not read are left out.

use crate::convert;
use crate::http::error::ApiError;
use crate::http::extract::IdPath;
use crate::http::openapi::LineageRefusals;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_api::Timestamp;
use baton_core::{Actor, Event, EventKind, Millis, StateName, TaskFilter, TaskId};
use std::future::Future;
use std::pin::Pin;

/// Children listed per task in a lineage tree.
pub const LINEAGE_CHILDREN_MAX: usize = 100;
/// Generations of children below the task in a lineage tree.
pub const LINEAGE_DEPTH_MAX: usize = 3;
/// Tasks in one lineage tree, over every generation.
pub const LINEAGE_NODES_MAX: usize = 500;

/// `GET /v1/tasks/{id}/lineage`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/lineage",
    operation_id = "task_lineage",
    summary = "A task's lineage",
    description = "The task's path through stages and agents, one step per stint at a stage \
        (entered, claimed by whom, left and how, with the time waited and held), computed from its \
        history; and its tree: the parent and the children, at most 100 per task, 3 generations \
        deep and 500 in all (`children_truncated` says when more exist).",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "The task's steps, their totals and its tree.", body = api::Lineage),
        LineageRefusals,
    ),
)]
pub async fn lineage(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Json<api::Lineage>, ApiError> {
    let Some(view) = state.store().get(TaskId(id)).await? else {
        // An archived task has no tree in the live store: 410, to whoever may read it.
        let archived = crate::archive::archived_view(&state, TaskId(id)).await?;
        let view = archived.ok_or_else(|| ApiError::not_found("task", id))?;
        principal.check_read(&view.task)?;
        return Err(baton_core::Rejection::TaskArchived { task: TaskId(id) }.into());
    };
    principal.check_read(&view.task)?;
    let events = state.store().history(TaskId(id)).await?;
    let as_of = state.clock().now();
    let (steps, totals) = steps(&events, as_of);
    let mut budget = LINEAGE_NODES_MAX;
    let (children, children_truncated) =
        children(&state, &principal, TaskId(id), LINEAGE_DEPTH_MAX, &mut budget).await?;
    Ok(Json(api::Lineage {
        task: id,
        stage: view.task.stage.to_string(),
        state: convert::state_name(view.task.state_name()),
        as_of: Timestamp(as_of),
        steps,
        totals,
        tree: api::LineageTree { parent: view.task.parent.map(|p| p.0), children, children_truncated },
    }))
}

/// The steps of a task and their totals, from its events (oldest first).
/// A step opens when the task starts waiting at a stage (submitted, handed
/// off, rerouted, escalated, or offered again after an expiry, release,
/// failure or join) and closes when it leaves the stage or its holder.
/// Durations of the open step run to `as_of`.
pub fn steps(events: &[Event], as_of: Millis) -> (Vec<api::LineageStep>, api::LineageTotals) {
    let mut steps: Vec<api::LineageStep> = Vec::new();
    let mut open: Option<api::LineageStep> = None;
    let mut blocked_since: Option<Millis> = None;
    let mut totals = api::LineageTotals::default();
    for event in events {
        let exit = match event.kind {
            EventKind::Submitted | EventKind::Joined => None,
            EventKind::Claimed => {
                let step = open.get_or_insert_with(|| entered(event));
                step.claimed_at = Some(Timestamp(event.at));
                step.claimed_by = Some(match &event.actor {
                    Actor::Agent(agent) => agent.to_string(),
                    other => convert::actor(other),
                });
                step.epoch = Some(event.after.epoch);
                continue;
            }
            EventKind::Heartbeat
            | EventKind::Commented
            | EventKind::Reoffered
            | EventKind::RetryReady
            | EventKind::ChildSettled
            | EventKind::DeadlineNear
            | EventKind::DeadlinePassed => {
                continue;
            }
            EventKind::Aborted => Some(api::StepExit::Aborted),
            EventKind::HandedOff => Some(api::StepExit::HandedOff),
            EventKind::Completed => Some(api::StepExit::Completed),
            EventKind::Released => Some(api::StepExit::Released),
            EventKind::Failed => Some(api::StepExit::Failed),
            EventKind::Spawned => Some(api::StepExit::Spawned),
            EventKind::Cancelled => Some(api::StepExit::Cancelled),
            EventKind::LeaseExpired => Some(api::StepExit::Expired),
            EventKind::Rerouted => Some(api::StepExit::Rerouted),
            EventKind::Escalated => Some(api::StepExit::Escalated),
        };
        if let Some(since) = blocked_since.take() {
            totals.blocked_ms += span(since, event.at);
        }
        if let (Some(exit), Some(mut step)) = (exit, open.take()) {
            step.left_at = Some(Timestamp(event.at));
            step.exit = Some(exit);
            if exit == api::StepExit::HandedOff || event.to.stage.as_str() != step.stage {
                step.to_stage = Some(event.to.stage.to_string());
            }
            if exit == api::StepExit::HandedOff {
                step.handoff = event.handoff.map(|h| h.0);
            }
            steps.push(finish(step, event.at));
        }
        match event.to.state {
            StateName::Waiting => open = Some(entered(event)),
            StateName::Blocked => blocked_since = Some(event.at),
            StateName::Held | StateName::Done | StateName::Cancelled => {}
        }
    }
    if let Some(step) = open {
        steps.push(finish(step, as_of));
    }
    if let Some(since) = blocked_since {
        totals.blocked_ms += span(since, as_of);
    }
    for step in &steps {
        totals.waited_ms += step.waited_ms;
        totals.held_ms += step.held_ms;
    }
    if let (Some(first), Some(last)) = (events.first(), events.last()) {
        let terminal = matches!(last.to.state, StateName::Done | StateName::Cancelled);
        totals.total_ms = span(first.at, if terminal { last.at } else { as_of });
    }
    (steps, totals)
}

/// A step that opens with `event`, waiting at the stage it moved the task to.
fn entered(event: &Event) -> api::LineageStep {
    api::LineageStep {
        stage: event.to.stage.to_string(),
        entered_at: Timestamp(event.at),
        claimed_at: None,
        claimed_by: None,
        epoch: None,
        left_at: None,
        exit: None,
        to_stage: None,
        handoff: None,
        waited_ms: 0,
        held_ms: 0,
    }
}

/// Fills a step's durations, measured up to `end`.
fn finish(mut step: api::LineageStep, end: Millis) -> api::LineageStep {
    let entered = step.entered_at.as_millis();
    match step.claimed_at {
        Some(claimed) => {
            step.waited_ms = span(entered, claimed.as_millis());
            step.held_ms = span(claimed.as_millis(), end);
        }
        None => step.waited_ms = span(entered, end),
    }
    step
}

/// Milliseconds from `from` to `to`; 0 if the clock went backwards.
fn span(from: Millis, to: Millis) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

type ChildrenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Vec<api::LineageChild>, bool), ApiError>> + Send + 'a>>;

/// The children of `parent` the caller may read, oldest first, with their
/// own children down `depth` generations, drawing on a shared node
/// `budget`. The flag says whether more children exist than are listed.
fn children<'a>(
    state: &'a AppState,
    principal: &'a Principal,
    parent: TaskId,
    depth: usize,
    budget: &'a mut usize,
) -> ChildrenFuture<'a> {
    Box::pin(async move {
        // At the depth or size limit, one task tells whether any exist.
        let limit = if depth == 0 || *budget == 0 { 1 } else { LINEAGE_CHILDREN_MAX.min(*budget) };
        let filter = TaskFilter { parent: Some(parent), limit, ..TaskFilter::default() };
        let page = state.store().list(filter).await?;
        if depth == 0 || *budget == 0 {
            return Ok((Vec::new(), !page.tasks.is_empty()));
        }
        let mut truncated = page.next.is_some();
        let mut listed = Vec::new();
        for task in page.tasks.iter().filter(|t| principal.check_read(t).is_ok()) {
            if *budget == 0 {
                truncated = true;
                break;
            }
            *budget -= 1;
            let (grandchildren, more) = children(state, principal, task.id, depth - 1, budget).await?;
            listed.push(api::LineageChild {
                id: task.id.0,
                stage: task.stage.to_string(),
                state: convert::state_name(task.state_name()),
                children: grandchildren,
                children_truncated: more,
            });
        }
        Ok((listed, truncated))
    })
}

#[cfg(test)]
mod tests {
    //! Goal: the steps and totals of typical histories. Method: run whole
    //! tasks through the engine's store in memory is the integration tests'
    //! job (tests/http.rs); here, hand-written event sequences go through one
    //! `check` helper that compares a compact rendering of the steps.
    use super::*;
    use baton_core::{AgentId, Hash, Position, StageName, Task, TaskState};

    fn event(kind: EventKind, at: Millis, actor: &str, to: (StateName, &str), epoch: u64) -> Event {
        let after = Task {
            id: TaskId(uuid::Uuid::nil()),
            namespace: "default".to_owned(),
            idempotency_key: None,
            submit_digest: String::new(),
            stage: StageName::new(to.1),
            priority: 0,
            deadline: None,
            parent: None,
            labels: Default::default(),
            trace: None,
            submitter: Actor::System,
            created_at: 0,
            updated_at: at,
            revision: 0,
            epoch,
            attempts: 0,
            reoffers: 0,
            reroutes: 0,
            workflow: None,
            trail: Vec::new(),
            boost_at: None,
            deadline_passed: false,
            compensation: false,
            state: TaskState::Cancelled { at, reason: String::new() },
        };
        Event {
            task: after.id,
            version: 0,
            at,
            actor: if actor.is_empty() { Actor::System } else { Actor::Agent(AgentId::new(actor)) },
            kind,
            from: None,
            to: Position { state: to.0, stage: StageName::new(to.1) },
            note: None,
            findings: None,
            confidence: None,
            handoff: None,
            after,
            change: None,
            payload_digest: None,
            prev_hash: Hash::default(),
            hash: Hash::default(),
        }
    }

    /// Renders each step as `stage waited/held by exit->to`.
    fn check(events: &[Event], as_of: Millis, want: &[&str], totals: (u64, u64, u64, u64)) {
        let (steps, sums) = steps(events, as_of);
        let got: Vec<String> = steps
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{} {} {}->{}",
                    s.stage,
                    s.waited_ms,
                    s.held_ms,
                    s.claimed_by.as_deref().unwrap_or("-"),
                    s.exit.map_or("open", api::StepExit::as_str),
                    s.to_stage.as_deref().unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!((sums.total_ms, sums.waited_ms, sums.held_ms, sums.blocked_ms), totals);
    }

    use EventKind as K;
    use StateName as S;

    #[test]
    fn steps_follow_handoffs_reroutes_and_expiries() {
        let events = [
            event(K::Submitted, 0, "", (S::Waiting, "a"), 0),
            event(K::Claimed, 100, "x", (S::Held, "a"), 1),
            event(K::HandedOff, 300, "x", (S::Waiting, "b"), 1),
            event(K::Reoffered, 400, "", (S::Waiting, "b"), 1),
            event(K::Rerouted, 1_300, "", (S::Waiting, "c"), 1),
            event(K::Claimed, 1_500, "y", (S::Held, "c"), 2),
            event(K::LeaseExpired, 2_000, "", (S::Waiting, "c"), 3),
            event(K::Claimed, 2_100, "z", (S::Held, "c"), 4),
            event(K::Completed, 2_600, "z", (S::Done, "c"), 4),
        ];
        check(
            &events,
            9_999,
            &[
                "a 100/200 x handed_off->b",
                "b 1000/0 - rerouted->c",
                "c 200/500 y expired->-",
                "c 100/500 z completed->-",
            ],
            (2_600, 1_400, 1_200, 0),
        );
    }

    #[test]
    fn open_steps_and_blocked_time_run_to_as_of() {
        let events = [
            event(K::Submitted, 0, "", (S::Waiting, "a"), 0),
            event(K::Claimed, 10, "x", (S::Held, "a"), 1),
            event(K::Spawned, 20, "x", (S::Blocked, "a"), 1),
            event(K::ChildSettled, 50, "", (S::Blocked, "a"), 1),
            event(K::Joined, 120, "", (S::Waiting, "a"), 1),
            event(K::Claimed, 150, "x", (S::Held, "a"), 2),
        ];
        check(&events, 400, &["a 10/10 x spawned->-", "a 30/250 x open->-"], (400, 40, 260, 100));
        check(&events[..3], 70, &["a 10/10 x spawned->-"], (70, 10, 10, 50));
        check(&[], 70, &[], (0, 0, 0, 0));
    }
}
