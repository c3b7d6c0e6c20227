//! `POST /v1/claims`: lease up to `max` waiting tasks, waiting up to `wait_ms`
//! for work. The long poll is server-side and bounded: claim; if nothing was
//! ready, wait for a wake-up from one of the claim's stages (`ReadyHub`), the
//! deadline, or shutdown; claim again. Interest is registered before each
//! claim, so work that arrives between the claim and the wait still wakes it.
//! A woken claim that leased something, or failed, passes its wake-up on to
//! two more waiters per stage (`Baton`), because more work may be ready; one
//! that found nothing ends the chain.

use crate::convert;
use crate::http::error::ApiError;
use crate::http::idempotency::{IdempotencyKeyHeader, KeyedJson, unexpected_outcome};
use crate::http::openapi::ClaimRefusals;
use crate::http::principal::{CallerCredential, Principal};
use crate::http::tasks::{millis, stored_payload};
use crate::state::AppState;
use crate::wake::AnyNotified;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_core::{ClaimRequest, Claimed, Grant, Millis, Op, RequestKey, StageName};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

/// `POST /v1/claims`: lease up to `max` waiting tasks from `stages`, by
/// priority, then deadline, then age; wait up to `wait_ms` for work.
#[utoipa::path(
    post,
    path = "/v1/claims",
    operation_id = "claim",
    tag = "claims",
    summary = "Claim waiting tasks, long-polling up to wait_ms",
    params(IdempotencyKeyHeader),
    request_body = api::ClaimRequest,
    responses(
        (status = 200, description = "The leases granted, each with its task's payload and fence token; \
            empty when the wait ended with no work.", body = api::ClaimResponse),
        ClaimRefusals,
    ),
)]
pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    CallerCredential(credential): CallerCredential,
    KeyedJson { body: req, key }: KeyedJson<api::ClaimRequest>,
) -> Result<Json<api::ClaimResponse>, ApiError> {
    let agent = principal.agent_for(req.agent.as_deref())?;
    principal.check_claim(&state, &req.stages).await?;
    let key = key.map(|k| k.scoped(&principal, Some(&agent)));
    let wait_ms_max = state.options().wait_ms_max;
    if req.wait_ms > wait_ms_max {
        return Err(ApiError::limit("wait_ms_max", wait_ms_max, "wait less and claim again"));
    }
    check_stage_count(&state, req.stages.len())?;
    let request = ClaimRequest {
        agent,
        stages: req.stages.into_iter().map(StageName::new).collect(),
        max: req.max as usize,
        lease_ms: check_lease_ms(&state, millis("lease_ms", req.lease_ms)?)?,
        only: None,
        credential,
    };
    let Claimed { grants, skipped } = if req.wait_ms == 0 {
        claim_once(&state, request, key).await?
    } else {
        wait_for_work(&state, request, key, Duration::from_millis(req.wait_ms)).await?
    };
    for grant in &grants {
        state.tasks().notify(&grant.task.id);
    }
    for grant in &grants {
        crate::telemetry::task_changed(&grant.task, "claimed");
    }
    let skipped = skipped
        .into_iter()
        .map(|s| api::SkippedStage {
            stage: s.stage.to_string(),
            reason: api::SkipReason::Capacity,
            held: s.held,
            capacity: s.capacity,
        })
        .collect();
    Ok(Json(api::ClaimResponse { leases: leases(&grants)?, skipped }))
}

/// Claims until something is granted, the wait ends or the server shuts down.
async fn wait_for_work(
    state: &AppState,
    request: ClaimRequest,
    key: Option<RequestKey>,
    wait: Duration,
) -> Result<Claimed, ApiError> {
    let deadline = Instant::now() + wait;
    let mut stages = request.stages.clone();
    stages.sort();
    stages.dedup();
    let signals: Vec<Arc<Notify>> = stages.iter().map(|s| state.hub().subscribe(s)).collect();
    let mut shutdown = pin!(state.shutting_down());
    let mut baton = Baton { signals: &signals, armed: false };
    // A revocation on this server wakes the claim, whose next round the
    // store refuses (401) when the caller was the one revoked.
    let mut revocations = state.options().auth.tokens().map(|auth| auth.revocations());
    loop {
        let woken = AnyNotified::enable(&signals);
        if let Some(seen) = &mut revocations {
            // Marked seen before the claim, so one made during it still wakes the wait.
            seen.borrow_and_update();
        }
        // On an error the baton, if held, passes on as this returns.
        let claimed = claim_once(state, request.clone(), key.clone()).await?;
        if !claimed.grants.is_empty() {
            return Ok(claimed);
        }
        baton.armed = false;
        if Instant::now() >= deadline || state.is_shutting_down() {
            return Ok(claimed);
        }
        tokio::select! {
            () = woken => baton.armed = true,
            () = sleep_until(deadline) => {}
            () = &mut shutdown => {}
            () = revoked(&mut revocations) => {}
        }
    }
}

/// Returns when a principal or token is revoked through this server.
async fn revoked(revocations: &mut Option<watch::Receiver<u64>>) {
    if let Some(seen) = revocations
        && seen.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// One claim, never waiting. Under a key, a claim that leased nothing is not
/// recorded, so the next round of a long poll claims again.
async fn claim_once(
    state: &AppState,
    request: ClaimRequest,
    key: Option<RequestKey>,
) -> Result<Claimed, ApiError> {
    let outcome = state.store().execute(Op::Claim(request), key).await?;
    outcome.into_claimed().ok_or_else(|| unexpected_outcome("claim"))
}

/// Held by a claim that a wake-up reached: when it goes (lease granted, error,
/// or the request dropped mid-claim) it wakes two more waiters per stage,
/// unless it was disarmed by a claim that found nothing.
struct Baton<'a> {
    signals: &'a [Arc<Notify>],
    armed: bool,
}

impl Drop for Baton<'_> {
    fn drop(&mut self) {
        if self.armed {
            for signal in self.signals {
                signal.notify_one();
                signal.notify_one();
            }
        }
    }
}

/// Leases as the agent sees them: each with its task's payload, which the
/// claim's own transaction read (no second read here).
pub fn leases(grants: &[Grant]) -> Result<Vec<api::Lease>, ApiError> {
    grants.iter().map(|grant| Ok(convert::lease(grant, stored_payload(grant.payload.clone())?))).collect()
}

/// Refuses a lease length outside the limits before any waiting: the engine
/// checks it only against a task it is about to lease, so an empty claim with
/// a bad `lease_ms` would otherwise wait, then fail when work arrives.
pub fn check_lease_ms(state: &AppState, lease_ms: Option<Millis>) -> Result<Option<Millis>, ApiError> {
    let limits = &state.options().limits;
    match lease_ms {
        Some(ms) if ms < limits.lease_ttl_ms_min => Err(ApiError::limit(
            "lease_ttl_ms_min",
            limits.lease_ttl_ms_min.unsigned_abs(),
            format!("ask for a lease of at least {} ms", limits.lease_ttl_ms_min),
        )),
        Some(ms) if ms > limits.lease_ttl_ms_max => Err(ApiError::limit(
            "lease_ttl_ms_max",
            limits.lease_ttl_ms_max.unsigned_abs(),
            format!("ask for a lease of at most {} ms and heartbeat", limits.lease_ttl_ms_max),
        )),
        _ => Ok(lease_ms),
    }
}

/// Refuses claims that name too many stages.
pub fn check_stage_count(state: &AppState, count: usize) -> Result<(), ApiError> {
    let max = state.options().claim_stages_max;
    if count > max {
        return Err(ApiError::limit("claim_stages_max", max as u64, "name fewer stages in one claim"));
    }
    Ok(())
}
