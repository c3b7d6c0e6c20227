//! `GET /v1/whoami`: the principal the caller's token names, and its role,
//! so a client (the dashboard's sign-in among them) can tell what it may do
//! before it tries. Any valid token may ask.

use crate::http::openapi::WhoamiRefusals;
use crate::http::principal::Principal;
use axum::Json;
use baton_api as api;
use baton_core::auth::Role;

/// `GET /v1/whoami`.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    operation_id = "whoami",
    summary = "The principal the token names",
    tag = "admin",
    responses(
        (status = 200, description = "The caller's principal and role (none with authentication off).", body = api::Whoami),
        WhoamiRefusals,
    ),
)]
pub async fn whoami(principal: Principal) -> Json<api::Whoami> {
    Json(match principal {
        Principal::Anonymous => api::Whoami { authentication: false, principal: None, role: None },
        Principal::Authenticated(p) => api::Whoami {
            authentication: true,
            principal: Some(p.name.clone()),
            role: Some(match p.role {
                Role::Agent => api::Role::Agent,
                Role::Submitter => api::Role::Submitter,
                Role::Operator => api::Role::Operator,
                Role::Admin => api::Role::Admin,
            }),
        },
    })
}
