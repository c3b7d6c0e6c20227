//! The admin API: principals (`/v1/principals`) and tokens (`/v1/tokens`).
//! Admins only (403 `forbidden` for anyone else, and with auth off, where
//! there is no directory to manage). A token's text is shown once, in the
//! answer that creates it; listings show a token's id, principal and times,
//! never its secret or hash. Tokens are minted only for a principal that
//! exists and is live, and carry exactly that principal's role, so an admin
//! never creates more power than it has. Revocations empty the server's
//! token cache, so they take effect on the next call.

use crate::auth::{self, Auth};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::openapi::{AdminReadRefusals, AdminRefusals, AdminRevokeRefusals};
use crate::http::principal::{Principal, check_name};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use baton_api as api;
use baton_api::Timestamp;
use baton_core::auth::{self as core_auth, Role, Route, TokenRecord};
use baton_core::decide::check_stage;
use baton_core::{Policies, Rules, StageName};

/// Stages, and routes, one principal may be granted.
pub const GRANTS_MAX: usize = 256;

/// `POST /v1/principals`: create a principal (no token yet: see `POST /v1/tokens`).
#[utoipa::path(
    post,
    path = "/v1/principals",
    operation_id = "add_principal",
    summary = "Create a principal",
    tag = "admin",
    request_body = api::PrincipalRequest,
    responses(
        (status = 201, description = "The new principal.", body = api::auth::Principal),
        AdminRefusals,
    ),
)]
pub async fn add_principal(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<api::PrincipalRequest>,
) -> Result<(StatusCode, Json<api::auth::Principal>), ApiError> {
    let admin = principal.check_admin()?;
    let new = new_principal(&state, req)?;
    directory(&state)?.directory().add_principal(new.clone()).await?;
    tracing::info!(by = %admin.name, name = %new.name, role = %new.role, "principal created");
    Ok((StatusCode::CREATED, Json(wire_principal(&new))))
}

/// `GET /v1/principals`: every principal, by name, revoked ones included.
#[utoipa::path(
    get,
    path = "/v1/principals",
    operation_id = "list_principals",
    summary = "List principals",
    tag = "admin",
    responses(
        (status = 200, description = "Every principal, by name.", body = api::PrincipalList),
        AdminReadRefusals,
    ),
)]
pub async fn list_principals(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<api::PrincipalList>, ApiError> {
    principal.check_admin()?;
    let all = directory(&state)?.directory().principals().await?;
    Ok(Json(api::PrincipalList { principals: all.iter().map(wire_principal).collect() }))
}

/// `DELETE /v1/principals/{name}`: revoke a principal and every token it has.
#[utoipa::path(
    delete,
    path = "/v1/principals/{name}",
    operation_id = "revoke_principal",
    summary = "Revoke a principal and its tokens",
    tag = "admin",
    params(("name" = String, Path, description = "The principal's name.")),
    responses(
        (status = 200, description = "The revoked principal; its tokens no longer authenticate.", body = api::auth::Principal),
        AdminRevokeRefusals,
    ),
)]
pub async fn revoke_principal(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<api::auth::Principal>, ApiError> {
    let admin = principal.check_admin()?;
    check_name("name", &name)?;
    let auth = directory(&state)?;
    // The store refuses the last live admin, under a lock every directory
    // write takes (`baton_core::auth::check_revoke_principal`).
    if !auth.directory().revoke_principal(&name, state.clock().now()).await? {
        return Err(ApiError::not_found("principal", &name));
    }
    auth.forget();
    tracing::info!(by = %admin.name, name = %name, "principal revoked with its tokens");
    let revoked =
        auth.directory().principal(&name).await?.ok_or_else(|| ApiError::not_found("principal", &name))?;
    Ok(Json(wire_principal(&revoked)))
}

/// `POST /v1/tokens`: mint a token for an existing, live principal; its text
/// is in this answer only.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    summary = "Create a token (shown once)",
    tag = "admin",
    request_body = api::TokenRequest,
    responses(
        (status = 201, description = "The token's text, shown this once, and its id.", body = api::TokenCreated),
        AdminRefusals,
    ),
)]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<api::TokenRequest>,
) -> Result<(StatusCode, Json<api::TokenCreated>), ApiError> {
    let admin = principal.check_admin()?;
    check_name("principal", &req.principal)?;
    let auth = directory(&state)?;
    match auth.directory().principal(&req.principal).await? {
        None => return Err(ApiError::not_found("principal", &req.principal)),
        Some(p) if !p.is_live() => {
            return Err(ApiError::invalid("principal", format!("{} is revoked", req.principal)));
        }
        Some(_) => {}
    }
    let (text, record) = auth::mint(&req.principal, state.clock().now()).map_err(|e| {
        tracing::error!(error = %e, "the operating system's random source failed");
        ApiError::internal()
    })?;
    auth.directory().add_token(record.clone()).await?;
    tracing::info!(by = %admin.name, principal = %record.principal, token_id = %record.id, "token created");
    Ok((
        StatusCode::CREATED,
        Json(api::TokenCreated {
            token: text,
            id: record.id,
            principal: record.principal,
            created_at: Timestamp(record.created_at),
        }),
    ))
}

/// `GET /v1/tokens`: every token, oldest first, without secrets.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    summary = "List tokens (ids only, never secrets)",
    tag = "admin",
    responses(
        (status = 200, description = "Every token, oldest first: ids, principals and times.", body = api::TokenList),
        AdminReadRefusals,
    ),
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<api::TokenList>, ApiError> {
    principal.check_admin()?;
    let all = directory(&state)?.directory().tokens().await?;
    Ok(Json(api::TokenList { tokens: all.iter().map(wire_token).collect() }))
}

/// `DELETE /v1/tokens/{id}`: revoke one token.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "revoke_token",
    summary = "Revoke a token",
    tag = "admin",
    params(("id" = String, Path, description = "The token's id (16 hex digits, the part after `baton_`).")),
    responses(
        (status = 200, description = "The revoked token; it no longer authenticates.", body = api::TokenInfo),
        AdminRevokeRefusals,
    ),
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<api::TokenInfo>, ApiError> {
    let admin = principal.check_admin()?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("id", "a token id is 16 hex digits"));
    }
    let auth = directory(&state)?;
    if !auth.directory().revoke_token(&id, state.clock().now()).await? {
        return Err(ApiError::not_found("token", &id));
    }
    auth.forget();
    tracing::info!(by = %admin.name, token_id = %id, "token revoked");
    let revoked = auth.directory().token(&id).await?.ok_or_else(|| ApiError::not_found("token", &id))?;
    Ok(Json(wire_token(&revoked)))
}

/// The directory, with auth on (`check_admin` has passed, so it is).
fn directory(state: &AppState) -> Result<&Auth, ApiError> {
    state.options().auth.tokens().ok_or_else(|| {
        tracing::error!("an admin call was authorized with auth off");
        ApiError::internal()
    })
}

/// Checks a principal request and makes the principal. Stages apply to agents
/// and operators, routes to agents; an agent needs at least one stage.
fn new_principal(state: &AppState, req: api::PrincipalRequest) -> Result<core_auth::Principal, ApiError> {
    check_name("name", &req.name)?;
    let role = match req.role {
        api::Role::Agent => Role::Agent,
        api::Role::Submitter => Role::Submitter,
        api::Role::Operator => Role::Operator,
        api::Role::Admin => Role::Admin,
    };
    if req.stages.len() > GRANTS_MAX || req.routes.len() > GRANTS_MAX {
        return Err(ApiError::limit("grants_max", GRANTS_MAX as u64, "grant fewer stages or routes"));
    }
    if role == Role::Agent && req.stages.is_empty() {
        return Err(ApiError::invalid("stages", "an agent needs at least one stage (\"*\" for every stage)"));
    }
    if !matches!(role, Role::Agent | Role::Operator) && !req.stages.is_empty() {
        return Err(ApiError::invalid(
            "stages",
            format!("stages apply to agents and operators, not to {role}s"),
        ));
    }
    if role != Role::Agent && !req.routes.is_empty() {
        return Err(ApiError::invalid("routes", format!("routes apply to agents, not to {role}s")));
    }
    let rules = Rules { policies: Policies::default(), limits: state.options().limits.clone() };
    let stage = |field: &str, name: &str| -> Result<StageName, ApiError> {
        let stage = StageName::new(name);
        check_stage(field, &stage, &rules)?;
        Ok(stage)
    };
    let stages = req
        .stages
        .iter()
        .map(|s| if s == "*" { Ok(StageName::new("*")) } else { stage("stages", s) })
        .collect::<Result<Vec<_>, _>>()?;
    let routes = req
        .routes
        .iter()
        .map(|r| Ok(Route { from: stage("routes.from", &r.from)?, to: stage("routes.to", &r.to)? }))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(core_auth::Principal {
        name: req.name,
        role,
        stages,
        routes,
        created_at: state.clock().now(),
        revoked_at: None,
    })
}

fn wire_principal(p: &core_auth::Principal) -> api::auth::Principal {
    api::auth::Principal {
        name: p.name.clone(),
        role: match p.role {
            Role::Agent => api::Role::Agent,
            Role::Submitter => api::Role::Submitter,
            Role::Operator => api::Role::Operator,
            Role::Admin => api::Role::Admin,
        },
        stages: p.stages.iter().map(|s| s.as_str().to_owned()).collect(),
        routes: p
            .routes
            .iter()
            .map(|r| api::Route { from: r.from.as_str().to_owned(), to: r.to.as_str().to_owned() })
            .collect(),
        created_at: Timestamp(p.created_at),
        revoked_at: p.revoked_at.map(Timestamp),
    }
}

fn wire_token(t: &TokenRecord) -> api::TokenInfo {
    api::TokenInfo {
        id: t.id.clone(),
        principal: t.principal.clone(),
        created_at: Timestamp(t.created_at),
        revoked_at: t.revoked_at.map(Timestamp),
    }
}
