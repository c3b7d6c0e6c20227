//! The human inbox (`/v1/inbox`, operators and admins): tasks waiting or held
//! in human stages, each with why it needs a person and since when; an
//! operator claims one by id and resolves it: hands it back into its workflow,
//! completes it, cancels it or aborts its workflow. Human stages are every
//! stage whose policy says `human`: the server's global ones (`inbox`) and
//! those any stored version of an applied workflow declares (tasks keep their
//! version, so an older version's human stage may still hold some). The handlers authorize, read and
//! convert; what a resolution does (which stages a handoff from a human stage
//! may take, the saga of an abort) is the engine's decision.

use crate::convert;
use crate::http::claims::{check_lease_ms, leases};
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, IdPath};
use crate::http::idempotency::{IdempotencyKeyHeader, KeyedJson, unexpected_outcome};
use crate::http::openapi::{InboxClaimRefusals, InboxListRefusals, InboxResolveRefusals};
use crate::http::principal::{CallerCredential, Principal};
use crate::http::tasks::millis;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_api::{ErrorCode, Timestamp};
use baton_core::decide::fence;
use baton_core::event::EventKind;
use baton_core::workflow::Workflow;
use baton_core::{
    ActRequest, Action, Actor, AgentId, CancelRequest, ClaimRequest, Event, Millis, Op, OpOutcome, Rejection,
    Report, StageName, StateName, Task, TaskFilter, TaskId,
};
use serde_json::json;
use std::collections::BTreeSet;

/// Human stages one inbox listing (or stuck listing) reads; past it, name
/// the stage to list (`?stage=`).
pub const INBOX_STAGES_MAX: usize = 64;

/// The holder an inbox call acts as with auth off when the body names none,
/// so `baton inbox claim ID` works against `baton dev` as it is.
pub const DEV_OPERATOR: &str = "operator";

/// `GET /v1/inbox?stage=&limit=&after=`: tasks waiting or held in human
/// stages, oldest first.
#[utoipa::path(
    get,
    path = "/v1/inbox",
    operation_id = "list_inbox",
    summary = "List the human inbox",
    tag = "inbox",
    params(api::InboxQuery),
    responses(
        (status = 200, description = "One page of tasks waiting or held in human stages, oldest first, \
            each with why it is there and since when.", body = api::InboxPage),
        InboxListRefusals,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::InboxQuery>,
) -> Result<Json<api::InboxPage>, ApiError> {
    principal.check_operator("use the inbox")?;
    let limit = page_limit(&state, query.limit)?;
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<TaskId>()
                .map_err(|_| ApiError::invalid("after", "pass the next_cursor of the previous page"))?,
        ),
    };
    let stages = listed_stages(&state, query.stage.as_deref()).await?;
    let mut tasks = Vec::new();
    let mut more = false;
    for stage in &stages {
        for wanted in [StateName::Waiting, StateName::Held] {
            let filter =
                TaskFilter { stage: Some(stage.clone()), state: Some(wanted), parent: None, after, limit };
            let page = state.store().list(filter).await?;
            more |= page.next.is_some();
            tasks.extend(page.tasks);
        }
    }
    // Each list is in id order from `after`: the first `limit` of their
    // union are the page.
    tasks.sort_by_key(|t| t.id);
    if tasks.len() > limit {
        tasks.truncate(limit);
        more = true;
    }
    let next_cursor = if more { tasks.last().map(|t| t.id.to_string()) } else { None };
    let mut items = Vec::with_capacity(tasks.len());
    for task in tasks {
        let events = since_entered(&state, &task).await?;
        let (why, since) = why_and_since(&task, &events);
        let from_stage = from_stage(&task, &events);
        items.push(api::InboxItem {
            task: convert::task(&task, None),
            why,
            since: Timestamp(since),
            from_stage,
            messages: messages(&task, &events),
        });
    }
    Ok(Json(api::InboxPage { items, next_cursor }))
}

/// `POST /v1/inbox/{id}/claim`: take one task of the inbox under a lease.
#[utoipa::path(
    post,
    path = "/v1/inbox/{id}/claim",
    operation_id = "claim_inbox_task",
    summary = "Claim one inbox task",
    tag = "inbox",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::InboxClaimRequest,
    responses(
        (status = 200, description = "The lease, with the task's payload and fence token.", body = api::Lease),
        InboxClaimRefusals,
    ),
)]
pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    CallerCredential(credential): CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::InboxClaimRequest>,
) -> Result<Json<api::Lease>, ApiError> {
    principal.check_operator("claim inbox tasks")?;
    let agent = operator(&principal, req.agent.as_deref())?;
    let lease_ms = check_lease_ms(&state, millis("lease_ms", req.lease_ms)?)?;
    let key = key.map(|k| k.scoped(&principal, Some(&agent)));
    let task = human_task(&state, id).await?;
    if !task.is_ready() {
        return Err(not_claimable(&task));
    }
    let request = ClaimRequest {
        agent,
        stages: vec![task.stage.clone()],
        max: 1,
        lease_ms,
        only: Some(task.id),
        credential,
    };
    let outcome = state.store().execute(Op::Claim(request), key).await?;
    let grants = outcome.into_grants().ok_or_else(|| unexpected_outcome("claim"))?;
    if grants.is_empty() {
        // Taken meanwhile, or the stage's own rules (agents, capacity) said no.
        let now = state.store().get(task.id).await?.map_or(task, |v| v.task);
        return Err(not_claimable(&now));
    }
    state.tasks().notify(&task.id);
    let mut leases = leases(&grants)?;
    Ok(Json(leases.remove(0)))
}

/// `POST /v1/inbox/{id}/resolve`: what the operator holding the task decided.
#[utoipa::path(
    post,
    path = "/v1/inbox/{id}/resolve",
    operation_id = "resolve_inbox_task",
    summary = "Resolve an inbox task you hold: hand it back, complete, cancel or abort",
    tag = "inbox",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::ResolveRequest,
    responses(
        (status = 200, description = "The task after the resolution (and the handoff id of a `handoff`).", body = api::ActResponse),
        InboxResolveRefusals,
    ),
)]
pub async fn resolve(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::ResolveRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    use api::Resolution as R;
    principal.check_operator("resolve inbox tasks")?;
    let agent = operator(&principal, req.agent.as_deref())?;
    let reason = req.reason.filter(|r| !r.trim().is_empty());
    match (req.resolution, &req.to_stage, &reason) {
        (R::Handoff, None, _) => {
            return Err(ApiError::invalid("to_stage", "name the stage to hand the task to"));
        }
        (R::Complete | R::Cancel | R::Abort, Some(_), _) => {
            return Err(ApiError::invalid("to_stage", "only a handoff names a stage"));
        }
        (R::Cancel | R::Abort, _, None) => {
            return Err(ApiError::invalid("reason", format!("say why: a {} needs a reason", req.resolution)));
        }
        _ => {}
    }
    let key = key.map(|k| k.scoped(&principal, Some(&agent)));
    let task = TaskId(id);
    let report = Report { note: req.note, findings: None, confidence: None };
    let act = |action| {
        // The inbox checks the holder itself (`check_holder`).
        Op::Act(ActRequest {
            task,
            agent: agent.clone(),
            epoch: req.epoch,
            action,
            claim_next: None,
            caller: None,
        })
    };
    let op = match req.resolution {
        R::Handoff => {
            act(Action::Handoff { to_stage: StageName::new(req.to_stage.unwrap_or_default()), report })
        }
        R::Complete => act(Action::Complete { result: None, report }),
        R::Abort => act(Action::Abort { reason: reason.unwrap_or_default() }),
        R::Cancel => Op::Cancel(CancelRequest {
            task,
            actor: Actor::Principal(agent.to_string()),
            reason: reason.unwrap_or_default(),
            caller: None,
        }),
    };
    if let Err(refusal) = check_holder(&state, task, &agent, req.epoch).await {
        // A retry of an accepted call finds the task moved on: let the store
        // answer it from the key's record with a call that can change nothing
        // (an epoch no lease has), else refuse.
        let Some(key) = key else { return Err(refusal) };
        let defused = ActRequest {
            task,
            agent: agent.clone(),
            epoch: u64::MAX,
            action: Action::Release { note: None },
            claim_next: None,
            caller: None,
        };
        return match state.store().execute(Op::Act(defused), Some(key)).await {
            Ok(outcome) => answer(&state, outcome).await,
            Err(_) => Err(refusal),
        };
    }
    let outcome = state.store().execute(op, key).await?;
    answer(&state, outcome).await
}

/// Whether `task` is in a human stage: the global policies, or its own
/// workflow version's (a stage the workflow does not declare keeps the
/// global policy).
pub async fn is_human(state: &AppState, task: &Task) -> Result<bool, ApiError> {
    let global = &state.options().policies;
    let Some(r) = &task.workflow else { return Ok(global.get(&task.stage).human) };
    match state.store().workflow(r.name.clone(), Some(r.version)).await? {
        Some(wf) => Ok(wf.policy(&task.stage, global).human),
        None => Ok(global.get(&task.stage).human),
    }
}

/// Every human stage: the global ones and those every stored version of each
/// workflow declares (versions not read before are read once, then kept).
pub async fn human_stages(state: &AppState) -> Result<BTreeSet<StageName>, ApiError> {
    let mut stages: BTreeSet<StageName> = state
        .options()
        .policies
        .stages
        .iter()
        .filter(|(_, p)| p.human)
        .map(|(name, _)| name.clone())
        .collect();
    let humans = |wf: &Workflow| -> BTreeSet<StageName> {
        wf.stages.iter().filter(|(_, s)| s.policy.human).map(|(name, _)| name.clone()).collect()
    };
    for latest in state.store().workflows().await? {
        let known = state.workflow_humans();
        let mut found = humans(&latest);
        for version in known.versions_read(&latest.name) + 1..latest.version {
            if let Some(older) = state.store().workflow(latest.name.clone(), Some(version)).await? {
                found.extend(humans(&older));
            }
        }
        stages.extend(known.add(&latest.name, latest.version, found));
    }
    Ok(stages)
}

/// The human stages a listing reads: `only` (which must be one), or all of
/// them, at most `INBOX_STAGES_MAX`.
pub async fn listed_stages(state: &AppState, only: Option<&str>) -> Result<Vec<StageName>, ApiError> {
    let all = human_stages(state).await?;
    if let Some(stage) = only {
        let stage = StageName::new(stage);
        if !all.contains(&stage) {
            let names: Vec<&str> = all.iter().map(StageName::as_str).collect();
            return Err(ApiError::invalid(
                "stage",
                format!("{stage} is not a human stage; the human stages are {}", names.join(", ")),
            ));
        }
        return Ok(vec![stage]);
    }
    if all.len() > INBOX_STAGES_MAX {
        return Err(ApiError::limit(
            "inbox_stages_max",
            INBOX_STAGES_MAX as u64,
            "there are more human stages than one listing reads: pass stage",
        ));
    }
    Ok(all.into_iter().collect())
}

/// Events read per page when looking back for the event that brought a task
/// to its stage.
pub const HISTORY_PAGE_MAX: usize = 64;

/// Pages read at most when looking back; a task that stayed longer than
/// that in its stage is described from the newest events.
pub const HISTORY_PAGES_MAX: usize = 16;

/// A task's events since it last came to its stage, oldest first, read from
/// the end of its history in pages (a long history is never read whole),
/// at most `HISTORY_PAGES_MAX` pages of `HISTORY_PAGE_MAX`.
pub async fn since_entered(state: &AppState, task: &Task) -> Result<Vec<Event>, ApiError> {
    let mut events: Vec<Event> = Vec::new();
    let mut before = None;
    for _ in 0..HISTORY_PAGES_MAX {
        let page = state.store().history_before(task.id, before, HISTORY_PAGE_MAX).await?;
        let full = page.len() == HISTORY_PAGE_MAX;
        let entered = page.iter().any(|e| entered_stage(e, task));
        before = page.last().map(|e| e.version);
        events.extend(page);
        if entered || !full {
            break;
        }
    }
    events.reverse();
    Ok(events)
}

/// Whether `event` brought the task to the stage it is in now.
fn entered_stage(event: &Event, task: &Task) -> bool {
    event.to.stage == task.stage && event.from.as_ref().is_none_or(|f| f.stage != task.stage)
}

/// Why a task in a human stage needs a person, and since when it is in its
/// stage, from its history: the note of the latest escalation (the alert's
/// message) or passed deadline since it came to the stage, else the note of
/// the event that brought it there.
pub fn why_and_since(task: &Task, events: &[Event]) -> (String, Millis) {
    let entered = events.iter().rposition(|e| entered_stage(e, task));
    let since = entered.map_or(task.created_at, |i| events[i].at);
    let after = entered.map_or(events, |i| &events[i..]);
    let alert = after
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventKind::Escalated | EventKind::DeadlinePassed) && e.note.is_some());
    let why = match (alert, entered.map(|i| &events[i])) {
        (Some(e), _) => e.note.clone().unwrap_or_default(),
        (None, Some(e)) => match &e.note {
            Some(note) => format!("{} by {}: {note}", e.kind.as_str(), e.actor),
            None => format!("{} to {} by {}", e.kind.as_str(), task.stage, e.actor),
        },
        (None, None) => format!("in {}", task.stage),
    };
    (why, since)
}

/// The messages added to the task since it came to its current stage
/// (`commented` events), oldest first.
pub fn messages(task: &Task, events: &[Event]) -> Vec<api::InboxMessage> {
    let entered = events.iter().rposition(|e| entered_stage(e, task)).unwrap_or(0);
    events[entered..]
        .iter()
        .filter(|e| e.kind == EventKind::Commented)
        .map(|e| api::InboxMessage {
            by: convert::actor(&e.actor),
            at: Timestamp(e.at),
            note: e.note.clone().unwrap_or_default(),
            findings: e.findings.clone(),
        })
        .collect()
}

/// The stage the task came to its current stage from: the one the latest
/// event that brought it there left (an escalation's, a reroute's or a
/// handoff's source stage); `None` for a task submitted into it.
pub fn from_stage(task: &Task, events: &[Event]) -> Option<String> {
    let entered = events.iter().rev().find(|e| entered_stage(e, task))?;
    entered.from.as_ref().map(|f| f.stage.to_string())
}

/// The page size asked for, within `page_size_max`.
fn page_limit(state: &AppState, limit: Option<u32>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(baton_api::limits::PAGE_SIZE_DEFAULT);
    let page_max = state.options().limits.page_size_max;
    if limit == 0 {
        return Err(ApiError::invalid("limit", "must be at least 1"));
    }
    match usize::try_from(limit) {
        Ok(l) if l <= page_max => Ok(l),
        _ => Err(ApiError::limit("page_size_max", page_max as u64, "ask for fewer tasks per page")),
    }
}

/// The operator an inbox call acts as: the token's principal, or with auth
/// off the body's `agent` (`DEV_OPERATOR` when it names none).
fn operator(principal: &Principal, claimed: Option<&str>) -> Result<AgentId, ApiError> {
    match principal {
        Principal::Anonymous => principal.agent_for(Some(claimed.unwrap_or(DEV_OPERATOR))),
        Principal::Authenticated(_) => principal.agent_for(claimed),
    }
}

/// The task `id`, if it is in a human stage; 404 otherwise (it is not an
/// inbox task).
async fn human_task(state: &AppState, id: uuid::Uuid) -> Result<Task, ApiError> {
    let view = state.store().get(TaskId(id)).await?.ok_or_else(|| ApiError::not_found("task", id))?;
    if !is_human(state, &view.task).await? {
        let message =
            format!("task {id} is not in the inbox: its stage {} is not a human stage", view.task.stage);
        return Err(ApiError::new(ErrorCode::NotFound, message).with_details(json!({ "task": id })));
    }
    Ok(view.task)
}

/// Refuses a resolve from the task as read: it must be in a human stage and
/// held by `agent` at `epoch` (`lease_lost`, `not_holder` as the engine
/// would). A held task cannot change stage within an epoch, so the stage read
/// is the one the resolution acts on.
async fn check_holder(state: &AppState, task: TaskId, agent: &AgentId, epoch: u64) -> Result<(), ApiError> {
    let task = human_task(state, task.0).await?;
    fence(&task, agent, epoch)?;
    Ok(())
}

/// 409 `invalid_transition`: the task cannot be claimed now.
fn not_claimable(task: &Task) -> ApiError {
    Rejection::InvalidTransition { task: task.id, command: "claim".to_owned(), state: task.state_name() }
        .into()
}

/// A resolution's answer, whichever operation it was.
async fn answer(state: &AppState, outcome: OpOutcome) -> Result<Json<api::ActResponse>, ApiError> {
    let response = match outcome {
        OpOutcome::Act(acted) => {
            state.tasks().notify(&acted.task.id);
            api::ActResponse {
                task: convert::task(&acted.task, None),
                handoff_id: acted.handoff.map(|h| h.0),
                children: acted.children.iter().map(|c| c.0).collect(),
                next: leases(&acted.next)?,
            }
        }
        OpOutcome::Cancel(task) => {
            state.tasks().notify(&task.id);
            api::ActResponse {
                task: convert::task(&task, None),
                handoff_id: None,
                children: Vec::new(),
                next: Vec::new(),
            }
        }
        _ => return Err(unexpected_outcome("resolve")),
    };
    Ok(Json(response))
}
