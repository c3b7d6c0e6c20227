//! Task routes: submit, show, list, history, cancel, and the holder calls
//! (heartbeat, handoff, complete, release, fail, spawn, abort). Each handler turns a
//! wire request into one store call and the answer into wire types; the
//! store's engine decides. Holder calls are fenced by `epoch` and may claim
//! the agent's next tasks in the same transaction (`claim_next`).

use crate::convert;
use crate::http::claims::leases;
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, IdPath};
use crate::http::idempotency::{IdempotencyKey, IdempotencyKeyHeader, KeyedJson, unexpected_outcome};
use crate::http::openapi::{
    CancelRefusals, HandoffRefusals, HolderRefusals, ListRefusals, ReadRefusals, SubmitRefusals,
};
use crate::http::principal::{CallerCredential, Principal};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use baton_api as api;
use baton_api::Payload;
use baton_core::{
    ActRequest, Action, CancelRequest, ClaimNext, CommentRequest, JoinMode, JoinSpec, Millis, NewChild,
    NewTask, Op, Report, StageName, TaskFilter, TaskId,
};

/// `POST /v1/tasks`: 201 with the new task, 200 with the existing one for a
/// repeated idempotency key and body.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    operation_id = "submit_task",
    summary = "Submit a task",
    description = "A repeated `idempotency_key` with the same body returns the existing task (200). \
        The key of a task that was archived stays taken: 410 `task_archived` names that task.",
    tag = "tasks",
    params(IdempotencyKeyHeader),
    request_body = api::SubmitRequest,
    responses(
        (status = 201, description = "The new task.", body = api::Task),
        (status = 200, description = "The task submitted earlier with the same `idempotency_key` and the same body.", body = api::Task),
        SubmitRefusals,
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    KeyedJson { body: req, key }: KeyedJson<api::SubmitRequest>,
) -> Result<(StatusCode, Json<api::Task>), ApiError> {
    principal.check_submit()?;
    if let Some(key) = &req.idempotency_key {
        crate::a2a::check_key_space(principal.name(), key)?;
    }
    // With a workflow the stage may be omitted (the entry stage) or named
    // (it must be the entry stage: the engine checks).
    let (stage, workflow) = match (req.stage, req.workflow) {
        (Some(stage), workflow) => (stage, workflow),
        (None, Some(workflow)) => (String::new(), Some(workflow)),
        (None, None) => {
            return Err(ApiError::invalid(
                "stage",
                "required: name the stage (or the workflow) to submit into",
            ));
        }
    };
    let new = NewTask {
        namespace: "default".to_owned(),
        stage: StageName::new(stage),
        payload: req.payload.into_string(),
        priority: req.priority,
        deadline: req.deadline.map(|t| t.as_millis()),
        idempotency_key: req.idempotency_key,
        labels: req.labels,
        parent: req.parent.map(TaskId),
        trace: req.trace,
        submitter: principal.actor(),
        workflow,
        compensation: false,
    };
    if let Some(trace) = new.trace.as_deref().and_then(crate::telemetry::trace_id) {
        tracing::Span::current().record("trace_id", trace);
    }
    let key = key.map(|k| k.scoped(&principal, None));
    let outcome = state.store().execute(Op::Submit(new), key).await?;
    let submitted = outcome.into_submitted().ok_or_else(|| unexpected_outcome("submit"))?;
    let task = &submitted.task;
    crate::telemetry::record_task(task.id, task.trace.as_deref());
    if submitted.created {
        crate::telemetry::task_changed(task, "submitted");
    }
    let status = if submitted.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(convert::task(task, None))))
}

/// `GET /v1/tasks/{id}`: the task with its payload.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    operation_id = "show_task",
    summary = "Show a task with its payload",
    description = "A task that finished and was moved to the archive after the server's retention is \
        answered from the archive, in the same shape (docs/reference/retention.md).",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "The task, with its payload.", body = api::Task),
        ReadRefusals,
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Json<api::Task>, ApiError> {
    // An archived task answers from the archive, in the same shape.
    let view =
        crate::archive::view(&state, TaskId(id)).await?.ok_or_else(|| ApiError::not_found("task", id))?;
    principal.check_read(&view.task)?;
    Ok(Json(convert::task(&view.task, Some(stored_payload(view.payload)?))))
}

/// `GET /v1/tasks?stage=&state=&parent=&cursor=&limit=`: one page, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    operation_id = "list_tasks",
    summary = "List tasks",
    tag = "tasks",
    params(api::ListQuery),
    responses(
        (status = 200, description = "One page of tasks (without payloads), oldest first.", body = api::TaskPage),
        ListRefusals,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::ListQuery>,
) -> Result<Json<api::TaskPage>, ApiError> {
    principal.check_list(query.stage.as_deref())?;
    let limit = query.limit.unwrap_or(baton_api::limits::PAGE_SIZE_DEFAULT);
    let page_max = state.options().limits.page_size_max;
    if limit == 0 {
        return Err(ApiError::invalid("limit", "must be at least 1"));
    }
    if usize::try_from(limit).map_or(true, |l| l > page_max) {
        return Err(ApiError::limit("page_size_max", page_max as u64, "ask for fewer tasks per page"));
    }
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<TaskId>()
                .map_err(|_| ApiError::invalid("cursor", "pass the next_cursor of the previous page"))?,
        ),
    };
    let filter = TaskFilter {
        stage: query.stage.map(StageName::new),
        state: query.state.map(convert::state_from_api),
        parent: query.parent.map(TaskId),
        after,
        limit: limit as usize,
    };
    let page = match principal.own_tasks_only() {
        None => state.store().list(filter).await?,
        Some(p) => own_tasks(&state, p, filter, page_max).await?,
    };
    Ok(Json(api::TaskPage {
        tasks: page.tasks.iter().map(|t| convert::task(t, None)).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// Rows a submitter's listing reads past before it answers a page with what
/// it found: its own tasks are filtered out of the store's pages (the store
/// has no index by submitter), so a page may hold fewer than `limit` tasks,
/// or none, with a `next_cursor` to go on from.
pub const OWN_TASKS_SCAN_MAX: usize = 10_000;

/// One page of the tasks `p` submitted, in id order, read from the store's
/// pages of `page_max` after the filter's cursor: at most `filter.limit`
/// tasks, and at most `OWN_TASKS_SCAN_MAX` rows read.
async fn own_tasks(
    state: &AppState,
    p: &baton_core::auth::Principal,
    filter: TaskFilter,
    page_max: usize,
) -> Result<baton_core::Page, ApiError> {
    let limit = filter.limit;
    let mut out = baton_core::Page { tasks: Vec::new(), next: None };
    let mut after = filter.after;
    let mut scanned = 0;
    loop {
        let page = state.store().list(TaskFilter { after, limit: page_max, ..filter.clone() }).await?;
        for task in page.tasks {
            scanned += 1;
            after = Some(task.id);
            if p.may_read(&task) {
                out.tasks.push(task);
                if out.tasks.len() == limit {
                    out.next = after;
                    return Ok(out);
                }
            }
        }
        if page.next.is_none() {
            return Ok(out);
        }
        if scanned >= OWN_TASKS_SCAN_MAX {
            out.next = after;
            return Ok(out);
        }
    }
}

/// `GET /v1/tasks/{id}/history`: every event, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/history",
    operation_id = "task_history",
    summary = "A task's history",
    description = "Every event, oldest first, hash-chained. An archived task's history is read from \
        the archive: the same events, as they were stored.",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Every event of the task, oldest first, hash-chained.", body = api::History),
        ReadRefusals,
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Json<api::History>, ApiError> {
    principal.check_read_id(&state, TaskId(id)).await?;
    let events = state.store().history(TaskId(id)).await?;
    if events.is_empty() {
        return Err(ApiError::not_found("task", id));
    }
    Ok(Json(api::History { task: id, events: events.iter().map(convert::event).collect() }))
}

/// `POST /v1/tasks/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    operation_id = "cancel_task",
    summary = "Cancel a task",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::CancelRequest,
    responses(
        (status = 200, description = "The cancelled task; a holder's epoch is fenced off.", body = api::Task),
        CancelRefusals,
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::CancelRequest>,
) -> Result<Json<api::Task>, ApiError> {
    principal.check_cancel("cancel tasks")?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::invalid("reason", "say why the task is cancelled"));
    }
    let request = CancelRequest {
        task: TaskId(id),
        actor: principal.actor(),
        reason: req.reason,
        caller: principal.caller(),
    };
    crate::telemetry::record_task(id, None);
    let key = key.map(|k| k.scoped(&principal, None));
    let outcome = state.store().execute(Op::Cancel(request), key).await?;
    let task = outcome.into_cancelled().ok_or_else(|| unexpected_outcome("cancel"))?;
    crate::telemetry::record_task(task.id, task.trace.as_deref());
    crate::telemetry::task_changed(&task, "cancelled");
    state.tasks().notify(&task.id);
    Ok(Json(convert::task(&task, None)))
}

/// `POST /v1/tasks/{id}/comments`: add a message to a live task's history.
///
/// Records an event of kind `commented` under the caller's name, with the
/// note and findings given; the task's state, custodian, lease and timers do
/// not change. Operators, admins, and the submitter of the task may add one;
/// a finished task refuses it (409 `invalid_transition`).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/comments",
    operation_id = "comment_task",
    summary = "Add a message to a task's history",
    tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::CommentRequest,
    responses(
        (status = 200, description = "The task after the message was added (only its revision moved).", body = api::Task),
        CancelRefusals,
    ),
)]
pub async fn comment(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::CommentRequest>,
) -> Result<Json<api::Task>, ApiError> {
    principal.check_cancel("add messages to tasks")?;
    let request = CommentRequest {
        task: TaskId(id),
        actor: principal.actor(),
        note: req.note,
        findings: req.findings,
        caller: principal.caller(),
    };
    crate::telemetry::record_task(id, None);
    let key = key.map(|k| k.scoped(&principal, None));
    let outcome = state.store().execute(Op::Comment(request), key).await?;
    let task = outcome.into_commented().ok_or_else(|| unexpected_outcome("comment"))?;
    crate::telemetry::record_task(task.id, task.trace.as_deref());
    state.tasks().notify(&task.id);
    Ok(Json(convert::task(&task, None)))
}

/// `POST /v1/tasks/{id}/heartbeat`: extend the lease.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/heartbeat",
    operation_id = "heartbeat",
    tag = "holder",
    summary = "Extend the lease",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::HeartbeatRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::HeartbeatRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let action = Action::Heartbeat { lease_ms: millis("lease_ms", req.lease_ms)?, note: req.note };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/handoff`: finish this part and pass the task to another stage.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/handoff",
    operation_id = "hand_off",
    tag = "holder",
    summary = "Finish this part and pass the task on; the answer carries the handoff id",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::HandoffRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HandoffRefusals,
    ),
)]
pub async fn handoff(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::HandoffRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let report = Report { note: req.note, findings: req.findings, confidence: req.confidence };
    let action = Action::Handoff { to_stage: StageName::new(req.to_stage), report };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/complete`: finish the task (or follow its workflow).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/complete",
    operation_id = "complete",
    tag = "holder",
    summary = "Finish the task",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::CompleteRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::CompleteRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let report = Report { note: req.note, findings: req.findings, confidence: req.confidence };
    let action = Action::Complete { result: req.result, report };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/release`: give the task back to its stage.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/release",
    operation_id = "release",
    tag = "holder",
    summary = "Give the task back to its stage",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::ReleaseRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn release(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::ReleaseRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let action = Action::Release { note: req.note };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/fail`: report a failure; retryable ones come back after a backoff.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/fail",
    operation_id = "fail",
    tag = "holder",
    summary = "Report a failure",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::FailRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn fail(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::FailRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let action = Action::Fail { error: req.error, retryable: req.retryable };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/spawn`: create children; the task is blocked until they join.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/spawn",
    operation_id = "spawn",
    tag = "holder",
    summary = "Create child tasks and block until they join",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::SpawnRequest,
    responses(
        (status = 200, description = "The task after the call, and any leases from `claim_next`.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn spawn(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::SpawnRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let mode = match (req.join.mode, req.join.n) {
        (api::JoinMode::All, None) => JoinMode::All,
        (api::JoinMode::Any, None) => JoinMode::Any,
        (api::JoinMode::Quorum, Some(n)) => JoinMode::Quorum(n),
        (api::JoinMode::Quorum, None) => return Err(ApiError::invalid("join.n", "a quorum join needs n")),
        (_, Some(_)) => return Err(ApiError::invalid("join.n", "only a quorum join takes n")),
    };
    let within_ms =
        millis("join.within_ms", Some(req.join.within_ms))?.expect("a present duration stays present");
    let children = req
        .children
        .into_iter()
        .map(|c| NewChild {
            stage: StageName::new(c.stage),
            payload: c.payload.into_string(),
            priority: c.priority,
            labels: c.labels,
        })
        .collect();
    let action = Action::Spawn { children, join: JoinSpec { mode, within_ms } };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// `POST /v1/tasks/{id}/abort`: abort the task's workflow (a saga).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/abort",
    operation_id = "abort",
    tag = "holder",
    summary = "Abort the task's workflow: compensate the stages done, latest first, then cancel",
    params(("id" = uuid::Uuid, Path, description = "The task's id."), IdempotencyKeyHeader),
    request_body = api::AbortRequest,
    responses(
        (status = 200, description = "The task after the call: blocked on its first compensation task, \
            or cancelled when no stage done has one.", body = api::ActResponse),
        HolderRefusals,
    ),
)]
pub async fn abort(
    State(state): State<AppState>,
    principal: Principal,
    credential: CallerCredential,
    IdPath(id): IdPath,
    KeyedJson { body: req, key }: KeyedJson<api::AbortRequest>,
) -> Result<Json<api::ActResponse>, ApiError> {
    if req.reason.trim().is_empty() {
        return Err(ApiError::invalid("reason", "say why the workflow is aborted"));
    }
    let action = Action::Abort { reason: req.reason };
    let call = HolderCall { agent: req.agent, epoch: req.epoch, claim_next: req.claim_next, credential };
    act(&state, &principal, id, call, action, key).await
}

/// The parts every holder call shares.
struct HolderCall {
    agent: Option<String>,
    epoch: u64,
    claim_next: Option<api::ClaimNext>,
    credential: CallerCredential,
}

/// Runs one holder call: the action, then claim-next, in one store transaction.
async fn act(
    state: &AppState,
    principal: &Principal,
    id: uuid::Uuid,
    call: HolderCall,
    action: Action,
    key: Option<IdempotencyKey>,
) -> Result<Json<api::ActResponse>, ApiError> {
    let agent = principal.agent_for(call.agent.as_deref())?;
    let key = key.map(|k| k.scoped(principal, Some(&agent)));
    let claim_next = match call.claim_next {
        None => None,
        Some(next) => {
            crate::http::claims::check_stage_count(state, next.stages.len())?;
            Some(ClaimNext {
                stages: next.stages.into_iter().map(StageName::new).collect(),
                max: next.max as usize,
                // Not checked up front: the main action commits whatever
                // happens to the claim part, and a limit saying no leaves
                // `next` empty.
                lease_ms: millis("claim_next.lease_ms", next.lease_ms)?,
                credential: call.credential.0,
            })
        }
    };
    crate::telemetry::record_task(id, None);
    let what = action_name(&action);
    let request = ActRequest {
        task: TaskId(id),
        agent,
        epoch: call.epoch,
        action,
        claim_next,
        caller: principal.caller(),
    };
    let done = match principal.check_act(state, &request).await {
        Ok(()) => state.store().execute(Op::Act(request), key).await.map_err(ApiError::from),
        Err(refusal) => Err(refusal),
    };
    let outcome = match done {
        Ok(outcome) => outcome,
        Err(refusal) => {
            // The refusal log names the task's trace: one read, on refusals only.
            if let Ok(Some(view)) = state.store().get(TaskId(id)).await {
                crate::telemetry::record_task(id, view.task.trace.as_deref());
            }
            return Err(refusal);
        }
    };
    let outcome = outcome.into_acted().ok_or_else(|| unexpected_outcome("act"))?;
    crate::telemetry::record_task(outcome.task.id, outcome.task.trace.as_deref());
    crate::telemetry::task_changed(&outcome.task, what);
    for grant in &outcome.next {
        crate::telemetry::task_changed(&grant.task, "claimed (claim_next)");
    }
    // Waiting claims are woken by the store's listener after its commit;
    // handoff-outcome waits are woken here.
    state.tasks().notify(&outcome.task.id);
    for grant in &outcome.next {
        state.tasks().notify(&grant.task.id);
    }
    Ok(Json(api::ActResponse {
        task: convert::task(&outcome.task, None),
        handoff_id: outcome.handoff.map(|h| h.0),
        children: outcome.children.iter().map(|c| c.0).collect(),
        next: leases(&outcome.next)?,
    }))
}

/// What a holder call does, for the log.
fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Heartbeat { .. } => "heartbeat",
        Action::Handoff { .. } => "handed off",
        Action::Complete { .. } => "completed",
        Action::Release { .. } => "released",
        Action::Fail { .. } => "failed",
        Action::Spawn { .. } => "spawned children",
        Action::Abort { .. } => "aborted",
    }
}

/// A wire duration (`u64` ms) as a core duration.
pub fn millis(field: &str, ms: Option<u64>) -> Result<Option<Millis>, ApiError> {
    ms.map(|ms| Millis::try_from(ms).map_err(|_| ApiError::invalid(field, "too large"))).transpose()
}

/// A payload read back from the store.
pub fn stored_payload(text: String) -> Result<Payload, ApiError> {
    Payload::from_json(text).map_err(|e| {
        tracing::error!(error = %e, "a stored payload is not valid JSON");
        ApiError::internal()
    })
}
