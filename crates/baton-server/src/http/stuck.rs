//! `GET /v1/stuck` (operators and admins): every live task past a threshold,
//! with why. Three kinds: timers overdue by more than the grace (the sweeper
//! has not acted: a stopped or overloaded server), tasks waiting in human
//! stages (escalated to people), and tasks whose own deadline has passed and
//! are not done. A listing, bounded by `page_size_max`; the deadline scan
//! reads at most `STUCK_SCAN_TASKS_MAX` live tasks (`truncated` says so).

use crate::convert;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::inbox::{listed_stages, since_entered, why_and_since};
use crate::http::openapi::StuckRefusals;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_api::Timestamp;
use baton_core::{Millis, StateName, Task, TaskFilter, TaskId};
use std::collections::BTreeSet;

/// How late a timer may be before it is listed, when the query names no grace.
pub const STUCK_GRACE_MS_DEFAULT: u64 = 30_000;

/// Live tasks the deadline scan reads at most; past it the answer is `truncated`.
pub const STUCK_SCAN_TASKS_MAX: usize = 10_000;

/// `GET /v1/stuck?grace_ms=N`.
#[utoipa::path(
    get,
    path = "/v1/stuck",
    operation_id = "list_stuck",
    summary = "List stuck work: overdue timers, escalated tasks, passed deadlines",
    tag = "inbox",
    params(api::StuckQuery),
    responses(
        (status = 200, description = "Every live task past a threshold, with why (at most `page_size_max`).", body = api::StuckList),
        StuckRefusals,
    ),
)]
pub async fn stuck(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::StuckQuery>,
) -> Result<Json<api::StuckList>, ApiError> {
    principal.check_operator("list stuck work")?;
    let grace = Millis::try_from(query.grace_ms.unwrap_or(STUCK_GRACE_MS_DEFAULT))
        .map_err(|_| ApiError::invalid("grace_ms", "too large"))?;
    let max = state.options().limits.page_size_max;
    let now = state.clock().now();
    let mut list = Listing { stuck: Vec::new(), seen: BTreeSet::new(), max, truncated: false };

    // (a) Timers the sweeper should have acted on by now.
    let overdue = state.store().overdue(now.saturating_sub(grace), max + 1).await?;
    list.truncated |= overdue.len() > max;
    for task in &overdue {
        let due = task.due_at().unwrap_or(now);
        let why = format!(
            "due at {} and the sweeper has not acted for {} ms (grace {grace} ms)",
            Timestamp(due),
            now.saturating_sub(due)
        );
        list.push(task, due, why, api::StuckKind::Overdue);
    }

    // (b) Tasks waiting for people.
    for stage in listed_stages(&state, None).await? {
        let filter = TaskFilter {
            stage: Some(stage),
            state: Some(StateName::Waiting),
            parent: None,
            after: None,
            limit: max,
        };
        let page = state.store().list(filter).await?;
        list.truncated |= page.next.is_some();
        for task in &page.tasks {
            if list.is_full() {
                break;
            }
            let (why, since) = why_and_since(task, &since_entered(&state, task).await?);
            list.push(task, since, why, api::StuckKind::Escalated);
        }
    }

    // (c) Live tasks past their own deadline.
    let mut scanned = 0;
    'states: for live in [StateName::Waiting, StateName::Held, StateName::Blocked] {
        let mut after: Option<TaskId> = None;
        loop {
            if scanned >= STUCK_SCAN_TASKS_MAX || list.is_full() {
                list.truncated |= scanned >= STUCK_SCAN_TASKS_MAX;
                break 'states;
            }
            let filter = TaskFilter { stage: None, state: Some(live), parent: None, after, limit: max };
            let page = state.store().list(filter).await?;
            scanned += page.tasks.len();
            for task in page.tasks.iter().filter(|t| t.deadline_passed) {
                let deadline = task.deadline.unwrap_or(now);
                let why = format!(
                    "deadline passed {} ms ago ({}) and the task is {} at {}",
                    now.saturating_sub(deadline),
                    Timestamp(deadline),
                    task.state_name(),
                    task.stage
                );
                list.push(task, deadline, why, api::StuckKind::Deadline);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(Json(api::StuckList { stuck: list.stuck, truncated: list.truncated }))
}

/// The answer being built: each task once, at most `max` of them.
struct Listing {
    stuck: Vec<api::StuckTask>,
    seen: BTreeSet<TaskId>,
    max: usize,
    truncated: bool,
}

impl Listing {
    fn is_full(&self) -> bool {
        self.stuck.len() >= self.max
    }

    /// Adds `task` unless it is listed already (under an earlier kind).
    fn push(&mut self, task: &Task, since: Millis, why: String, kind: api::StuckKind) {
        if !self.seen.insert(task.id) {
            return;
        }
        if self.is_full() {
            self.truncated = true;
            return;
        }
        self.stuck.push(api::StuckTask {
            task: task.id.0,
            stage: task.stage.to_string(),
            state: convert::state_name(task.state_name()),
            custodian: task.custodian().as_ref().map(convert::custodian),
            since: Timestamp(since),
            why,
            kind,
        });
    }
}
