//! Principals and tokens on the wire: the admin API's requests and answers
//! (`/v1/principals`, `/v1/tokens`). Only admins call these routes. A token's
//! text appears in exactly one body, `TokenCreated`, once; listings carry a
//! token's public id and never its secret or the secret's hash.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Claims and works tasks in its stages; hands off along its routes.
    Agent,
    /// Submits tasks and reads them.
    Submitter,
    /// Works the human inbox: reads everything, claims from human stages, submits, cancels.
    Operator,
    /// Everything, including principals and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Agent, Self::Submitter, Self::Operator, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Submitter => "submitter",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; expected agent, submitter, operator or admin"))
    }
}

/// A handoff route: from one stage to another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub from: String,
    pub to: String,
}

impl FromStr for Route {
    type Err = String;
    /// `from:to`, as the CLI writes a route.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                Ok(Self { from: from.to_owned(), to: to.to_owned() })
            }
            _ => Err(format!("route {s:?} is not FROM:TO, e.g. intake:triage")),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.from, self.to)
    }
}

/// `POST /v1/principals`: create a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRequest {
    /// Unique for ever (a revoked principal keeps its name); for an agent,
    /// also its agent id. 1 to 128 letters, digits and `-_.:@/`.
    pub name: String,
    pub role: Role,
    /// Stages an agent (or an operator, besides human stages) may claim from
    /// and read; `["*"]` means every stage. An agent needs at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// Routes an agent may hand off (and spawn children) along; empty means
    /// "between its own stages".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A principal as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub stages: Vec<String>,
    pub routes: Vec<Route>,
    pub created_at: Timestamp,
    /// Set once the principal is revoked; its tokens are revoked with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// `GET /v1/principals`: every principal, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrincipalList {
    pub principals: Vec<Principal>,
}

/// `POST /v1/tokens`: mint a token for an existing, live principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub principal: String,
}

/// The answer to `POST /v1/tokens`: the only time the token's text is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// `baton_<id>_<secret>`: send it as `Authorization: Bearer <token>`.
    /// Baton keeps only a hash of the secret and cannot show it again.
    pub token: String,
    /// The token's public id, for listing and revoking.
    pub id: String,
    pub principal: String,
    pub created_at: Timestamp,
}

/// A token as listings show it: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub principal: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// `GET /v1/tokens`: every token, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_roles_parse_from_cli_text() {
        assert_eq!("a:b".parse::<Route>(), Ok(Route { from: "a".into(), to: "b".into() }));
        for bad in ["a", ":b", "a:", ""] {
            assert!(bad.parse::<Route>().is_err(), "{bad}");
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
        let err = serde_json::from_str::<PrincipalRequest>(r#"{"name":"a","role":"agent","secret":1}"#);
        assert!(err.is_err(), "unknown fields are refused");
    }
}

/// `GET /v1/whoami` answer: who the caller's token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// False when the server runs with authentication off (`baton dev`):
    /// every caller is trusted, and `principal` and `role` are absent.
    pub authentication: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}
