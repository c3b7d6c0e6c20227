//! Who is calling: the `Principal` extractor, the seam where authentication
//! goes. Auth (tokens, roles) is not built yet. Today the only mode is
//! `AuthMode::Off` (`baton dev`, loopback only): every caller is trusted, and
//! claims and holder calls name their agent in the body's `agent` field.
//! With auth on, this extractor will read the bearer token, look up its
//! principal and role, answer 401/403, and `agent_for` will require a body
//! `agent`, if any, to match the token's agent. Handlers already go through
//! `Principal` for every identity, so that change stays inside this file.

use crate::http::error::ApiError;
use crate::state::{AppState, AuthMode};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use baton_core::{Actor, AgentId};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off: the caller is whoever it says it is.
    Anonymous,
}

/// Bytes of an agent id.
pub const AGENT_BYTES_MAX: usize = 128;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match state.options().auth {
            AuthMode::Off => Ok(Principal::Anonymous),
        }
    }
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
        }
    }

    /// The actor recorded for submits and cancels.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Anonymous => Actor::Principal("anonymous".to_owned()),
        }
    }
}

/// Agent ids: 1 to `AGENT_BYTES_MAX` bytes of letters, digits and `-_.:@/`.
fn check_agent(agent: &str) -> Result<(), ApiError> {
    if agent.is_empty() || agent.len() > AGENT_BYTES_MAX {
        return Err(ApiError::invalid("agent", format!("must be 1 to {AGENT_BYTES_MAX} bytes")));
    }
    if !agent.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/')) {
        return Err(ApiError::invalid("agent", "use letters, digits, '-', '_', '.', ':', '@' and '/' only"));
    }
    Ok(())
}
