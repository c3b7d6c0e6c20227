//! Who is calling, and what they may do: the `Principal` extractor, the
//! `authenticate` middleware, and one check per kind of call, built on the
//! pure rules of `baton_core::auth`. Deny by default.
//!
//! With `AuthMode::Off` (`baton dev`, loopback only) every caller is trusted
//! and claims and holder calls name their agent in the body's `agent` field.
//! With `AuthMode::Tokens` the middleware authenticates every call to an API
//! route (401 `unauthenticated` without a valid token) before its body is
//! read, and the extractor hands the live principal to the handler, which
//! asks this module before it acts:
//!
//! - submit needs a submitter, operator or admin; cancel and messages an
//!   operator, an admin, or the submitter of that task; the inbox, stuck
//!   work and applying workflows an operator or an admin; the principal and
//!   token routes an admin (403 `forbidden`);
//! - claims (and `claim_next`) need an agent claiming from its stages, an
//!   operator claiming from human stages (or its own), or an admin; otherwise
//!   403 `forbidden`;
//! - an agent sees only tasks in its stages, a submitter only the tasks it
//!   submitted: reading, cancelling or messaging any other task (its
//!   history, lineage, verification, handoffs, a place in a listing)
//!   answers 404 `not_found`, exactly as for a task that does not exist;
//! - holder calls are fenced as the engine fences them (`lease_lost`,
//!   `not_holder`), and a handoff, or a spawn's children, must follow one of
//!   the agent's routes (422 `route_not_allowed`);
//! - the body's `agent`, when present, must be the token's principal (403).
//!
//! Checks of a holder call, a cancel or a message that depend on the task
//! are not made here: the request carries the principal (`caller`) and the
//! engine checks it against the task its own transaction loaded
//! (`baton_core::auth`), with the same codes. So no task is read before
//! those calls, and a keyed retry (`Idempotency-Key`) of an accepted call is
//! answered from its record, even after the task has moved on.

use crate::auth::{Auth, VerifyError};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_api::ErrorCode;
use baton_core::auth::{self, Role};
use baton_core::{ActRequest, Actor, AgentId, Credential, Handoff, StageName, Task, TaskId};
use std::sync::{Arc, OnceLock};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off: the caller is whoever it says it is.
    Anonymous,
    /// Auth is on: the live principal the request's token names.
    Authenticated(Arc<auth::Principal>),
}

/// Bytes of an agent id (and of a principal's name).
pub const AGENT_BYTES_MAX: usize = 128;

/// The authenticated caller, put in the request's extensions by
/// `authenticate`: the live principal and the public id of its token.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<auth::Principal>, pub Arc<str>);

/// The token and principal a request was authenticated with (none with auth
/// off): claims pass it to the store, whose transaction checks both are still
/// live before it grants a lease, however long the claim waited.
#[derive(Debug, Clone, Default)]
pub struct CallerCredential(pub Option<Credential>);

impl FromRequestParts<AppState> for CallerCredential {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Caller>().map(|Caller(principal, token)| Credential {
            principal: principal.name.clone(),
            token: token.to_string(),
        })))
    }
}

/// Who made a call, for the refusal log: an empty slot that the refusal log
/// puts in the request and `authenticate` fills once the token is verified.
#[derive(Debug, Clone, Default)]
pub struct CallerName(Arc<OnceLock<String>>);

impl CallerName {
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Routes anyone may call, token or not: the index, liveness, readiness and
/// the API's description. Unknown paths are answered 404 without a token.
pub(crate) fn is_open(request: &Request) -> bool {
    match request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        None => true,
        Some(path) => {
            matches!(path, "/v1" | "/healthz" | "/readyz" | crate::http::openapi::OPENAPI_PATH)
                || path.starts_with(crate::http::openapi::DOCS_PATH)
        }
    }
}

/// Middleware: with auth on, every call to an API route must carry a valid
/// bearer token; the principal it names goes into the request's extensions.
/// Runs before the body is read, so an unauthenticated caller learns nothing
/// about its request but 401.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(auth) = state.options().auth.tokens() else { return next.run(request).await };
    if is_open(&request) {
        return next.run(request).await;
    }
    match verify_headers(auth, request.headers()).await {
        Ok(caller) => {
            if let Some(name) = request.extensions().get::<CallerName>() {
                let _ = name.0.set(caller.0.name.clone());
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// The principal named by the request's `Authorization: Bearer` header, with
/// its token's id. A refusal is 401 (`ApiError` adds `WWW-Authenticate: Bearer`).
async fn verify_headers(auth: &Auth, headers: &HeaderMap) -> Result<Caller, ApiError> {
    use crate::auth::Unauthenticated as Why;
    let refuse = |why: Why| ApiError::new(ErrorCode::Unauthenticated, why.message());
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(refuse(Why::Missing)) };
    if values.next().is_some() {
        return Err(refuse(Why::Malformed));
    }
    let text = value.to_str().map_err(|_| refuse(Why::Malformed))?;
    let Some((scheme, token)) = text.split_once(' ') else { return Err(refuse(Why::Malformed)) };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(refuse(Why::Malformed));
    }
    let token = token.trim();
    match auth.verify(token).await {
        Ok(principal) => {
            let (id, _) = auth::parse_token(token).ok_or_else(|| refuse(Why::Malformed))?;
            Ok(Caller(principal, id.into()))
        }
        Err(VerifyError::Refused(why)) => Err(refuse(why)),
        Err(VerifyError::Store(e)) => Err(e.into()),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(auth) = state.options().auth.tokens() else { return Ok(Principal::Anonymous) };
        if let Some(Caller(principal, _)) = parts.extensions.get::<Caller>() {
            return Ok(Principal::Authenticated(principal.clone()));
        }
        // A route the middleware let through unauthenticated: deny by
        // default, and authenticate here.
        verify_headers(auth, &parts.headers)
            .await
            .map(|Caller(principal, _)| Principal::Authenticated(principal))
            .map_err(IntoResponse::into_response)
    }
}

/// 403 `forbidden`.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

impl Principal {
    /// The agent a claim or holder call acts as, given the body's `agent`.
    pub fn agent_for(&self, claimed: Option<&str>) -> Result<AgentId, ApiError> {
        match self {
            Principal::Anonymous => {
                let Some(agent) = claimed else {
                    return Err(ApiError::invalid(
                        "agent",
                        "required while auth is off: name the calling agent in \"agent\"",
                    ));
                };
                check_agent(agent)?;
                Ok(AgentId::new(agent))
            }
            Principal::Authenticated(p) => match claimed {
                Some(agent) if agent != p.name => Err(forbidden(format!(
                    "\"agent\" must be the token's principal ({}) or left out",
                    p.name
                ))),
                _ => Ok(AgentId::new(&p.name)),
            },
        }
    }

    /// The actor recorded for submits and cancels.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Anonymous => Actor::Principal("anonymous".to_owned()),
            Principal::Authenticated(p) => Actor::Principal(p.name.clone()),
        }
    }

    /// The principal's name, with auth on.
    pub fn name(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Authenticated(p) => Some(&p.name),
        }
    }

    fn role_refusal(p: &auth::Principal, what: &str) -> ApiError {
        p.role_refusal(what).into()
    }

    /// Submitting tasks: submitters, operators and admins.
    pub fn check_submit(&self) -> Result<(), ApiError> {
        match self {
            Principal::Authenticated(p) if !p.may_submit() => Err(Self::role_refusal(p, "submit tasks")),
            _ => Ok(()),
        }
    }

    /// Cancelling a task, or adding a message to its history (`what`): 403
    /// for an agent, whatever the task. Which tasks a submitter may touch
    /// (its own; any other is not found) the engine checks on the task it
    /// loads, with `caller` in the request (`baton_core::auth::check_cancel`).
    pub fn check_cancel(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Authenticated(p) if p.role == Role::Agent => Err(p.role_refusal(what).into()),
            _ => Ok(()),
        }
    }

    /// The principal a holder call, cancel or message carries to the engine,
    /// which checks it against the task it loads: `None` with auth off.
    pub fn caller(&self) -> Option<auth::Principal> {
        match self {
            Principal::Anonymous => None,
            Principal::Authenticated(p) => Some(auth::Principal::clone(p)),
        }
    }

    /// The operators' calls (the inbox, stuck work, applying workflows):
    /// operators and admins. With auth off everyone is trusted.
    pub fn check_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Authenticated(p) if !matches!(p.role, Role::Operator | Role::Admin) => {
                Err(Self::role_refusal(p, what))
            }
            _ => Ok(()),
        }
    }

    /// Principals and tokens: admins only. With auth off these routes do not
    /// serve at all: there is no directory to administer.
    pub fn check_admin(&self) -> Result<&auth::Principal, ApiError> {
        match self {
            Principal::Anonymous => Err(forbidden(
                "principals and tokens are managed with authentication on (baton serve), by an admin",
            )),
            Principal::Authenticated(p) if !p.may_administer() => {
                Err(Self::role_refusal(p, "manage principals and tokens"))
            }
            Principal::Authenticated(p) => Ok(p),
        }
    }

    /// Claiming from `stages` (a claim, or a holder call's `claim_next`). An
    /// operator may claim from human stages: the server's, and (read only
    /// when a stage is not one of those) the ones applied workflows declare.
    pub async fn check_claim<S: AsRef<str>>(&self, state: &AppState, stages: &[S]) -> Result<(), ApiError> {
        let (Principal::Authenticated(p), Some(auth)) = (self, state.options().auth.tokens()) else {
            return Ok(());
        };
        if p.role == Role::Submitter {
            return Err(Self::role_refusal(p, "claim tasks"));
        }
        let mut workflow_humans = None;
        for stage in stages {
            let stage = StageName::new(stage.as_ref());
            let mut human = auth.is_human(&stage);
            if !human && p.role == Role::Operator && !p.may_claim(&stage, false) {
                if workflow_humans.is_none() {
                    workflow_humans = Some(crate::http::inbox::human_stages(state).await?);
                }
                human = workflow_humans.as_ref().is_some_and(|h| h.contains(&stage));
            }
            if !p.may_claim(&stage, human) {
                return Err(forbidden(format!("principal {} may not claim from stage {stage}", p.name)));
            }
        }
        Ok(())
    }

    /// Reading `task`: an agent sees only tasks in its stages; any other is
    /// answered exactly as a task that does not exist.
    pub fn check_read(&self, task: &Task) -> Result<(), ApiError> {
        match self {
            Principal::Authenticated(p) if !p.may_read(task) => Err(ApiError::not_found("task", task.id)),
            _ => Ok(()),
        }
    }

    /// Reading a task known by id only: reads it for agents and submitters,
    /// whose view depends on its stage or its submitter. A missing task is
    /// 404 as an invisible one.
    pub async fn check_read_id(&self, state: &AppState, id: TaskId) -> Result<(), ApiError> {
        let Principal::Authenticated(p) = self else { return Ok(()) };
        if !matches!(p.role, Role::Agent | Role::Submitter) {
            return Ok(());
        }
        match crate::archive::view(state, id).await? {
            Some(view) => self.check_read(&view.task),
            None => Err(ApiError::not_found("task", id)),
        }
    }

    /// Listing tasks: an agent lists one of its stages at a time (any stage
    /// with `*`), so a page never shows a task it could not read.
    pub fn check_list(&self, stage: Option<&str>) -> Result<(), ApiError> {
        let Principal::Authenticated(p) = self else { return Ok(()) };
        if p.role != Role::Agent || p.stages.iter().any(|s| s.as_str() == "*") {
            return Ok(());
        }
        match stage {
            Some(stage) if p.stages.iter().any(|s| s.as_str() == stage) => Ok(()),
            Some(stage) => Err(forbidden(format!("principal {} may not list stage {stage}", p.name))),
            None => Err(forbidden(format!(
                "principal {} lists one of its stages at a time: pass stage (one of {})",
                p.name,
                p.stages.iter().map(StageName::as_str).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Reading a handoff: an agent sees handoffs from or to its stages, a
    /// submitter the handoffs of the tasks it submitted.
    pub async fn check_handoff_read(&self, state: &AppState, handoff: &Handoff) -> Result<(), ApiError> {
        let Principal::Authenticated(p) = self else { return Ok(()) };
        let sees = |stage: &StageName| p.stages.iter().any(|s| s.as_str() == "*" || s == stage);
        if p.role == Role::Agent && !sees(&handoff.from_stage) && !sees(&handoff.to_stage) {
            return Err(ApiError::not_found("handoff", handoff.id));
        }
        if p.reads_own_tasks_only() && self.check_read_id(state, handoff.task).await.is_err() {
            return Err(ApiError::not_found("handoff", handoff.id));
        }
        Ok(())
    }

    /// With auth on, a submitter: a listing shows only the tasks it submitted.
    pub fn own_tasks_only(&self) -> Option<&auth::Principal> {
        match self {
            Principal::Authenticated(p) if p.reads_own_tasks_only() => Some(p),
            _ => None,
        }
    }

    /// Authorizes a holder call before it reaches the store, as far as no
    /// task is needed: the role (a submitter works no task: 403 whatever the
    /// task) and the `claim_next` stages. The rest (the task's visibility,
    /// an operator's stage, the fence, the routes) the engine checks on the
    /// task its transaction loads, from `ActRequest::caller`; a keyed retry
    /// is answered from its record before those checks run.
    pub async fn check_act(&self, state: &AppState, request: &ActRequest) -> Result<(), ApiError> {
        let (Principal::Authenticated(p), Some(_)) = (self, state.options().auth.tokens()) else {
            return Ok(());
        };
        if p.role == Role::Submitter {
            return Err(Self::role_refusal(p, "work tasks"));
        }
        if let Some(next) = &request.claim_next {
            let stages: Vec<&str> = next.stages.iter().map(StageName::as_str).collect();
            self.check_claim(state, &stages).await?;
        }
        Ok(())
    }
}

/// Agent ids: 1 to `AGENT_BYTES_MAX` bytes of letters, digits and `-_.:@/`.
/// Principal names follow the same rule: an agent's name is its agent id.
pub fn check_agent(agent: &str) -> Result<(), ApiError> {
    check_name("agent", agent)
}

/// A name (agent id or principal name) in `field`.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > AGENT_BYTES_MAX {
        return Err(ApiError::invalid(field, format!("must be 1 to {AGENT_BYTES_MAX} bytes")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/')) {
        return Err(ApiError::invalid(field, "use letters, digits, '-', '_', '.', ':', '@' and '/' only"));
    }
    Ok(())
}
