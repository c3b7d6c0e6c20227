//! Principals, roles and tokens, and the pure authorization rules. Deny by
//! default: an agent claims only from its stages, acts only on tasks it holds,
//! hands off only along its routes, and sees a task outside its stages as
//! missing (404); a submitter sees, cancels and messages only the tasks it
//! submitted (the task's `submitter` names it), any other as missing. Only
//! admins create principals and tokens. Tokens are random
//! 256-bit secrets shown once; stores keep only their SHA-256 (a fast hash is
//! right for full-entropy secrets; slow hashes are for passwords).
//!
//! The directory's own rules (a name is never reused, a token only for a
//! live principal, the last live admin stays) are decided here too
//! (`check_add_principal`, `check_add_token`, `check_revoke_principal`),
//! over what a store loaded; stores load, lock, and persist.
//!
//! The checks that depend on a task (`check_holder_call`, `check_cancel`)
//! run in the engine, on the task its transaction loaded, so the server
//! needs no read of its own before a call and a keyed retry is answered from
//! its record before they run.

use crate::command::Action;
use crate::event::{Actor, Hash};
use crate::ids::{AgentId, Millis, StageName};
use crate::rejection::Rejection;
use crate::store::StoreFuture;
use crate::task::Task;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Claims and works tasks in its stages.
    Agent,
    /// Submits tasks, and reads, cancels and messages the ones it submitted.
    Submitter,
    /// Works the human inbox: reads everything, claims from human stages, cancels.
    Operator,
    /// Everything, including principals and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Submitter => "submitter",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "agent" => Self::Agent,
            "submitter" => Self::Submitter,
            "operator" => Self::Operator,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A handoff route an agent may use: from one stage to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub from: StageName,
    pub to: StageName,
}

/// Someone who calls Baton.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// Unique, also the agent id for agents.
    pub name: String,
    pub role: Role,
    /// Stages an agent may claim from and read; `["*"]` means every stage.
    pub stages: Vec<StageName>,
    /// Routes an agent may hand off along; empty means "between its own stages".
    pub routes: Vec<Route>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// A stored token: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The public part of the token, used to look it up.
    pub id: String,
    pub principal: String,
    pub secret_hash: Hash,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// The prefix every token starts with, so secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "baton_";

/// Builds a token from 8 random id bytes and 32 random secret bytes: the text
/// shown once to the user, and the record to store.
pub fn mint_token(
    principal: &str,
    id_bytes: [u8; 8],
    secret: [u8; 32],
    now: Millis,
) -> (String, TokenRecord) {
    let id = hex(&id_bytes);
    let secret_hex = hex(&secret);
    let record = TokenRecord {
        id: id.clone(),
        principal: principal.to_owned(),
        secret_hash: Hash::of(secret_hex.as_bytes()),
        created_at: now,
        revoked_at: None,
    };
    (format!("{TOKEN_PREFIX}{id}_{secret_hex}"), record)
}

/// Splits a presented token into its id and secret, or `None` if malformed.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, 16) && hexy(secret, 64)).then_some((id, secret))
}

/// Whether `secret` matches the record, comparing in constant time.
pub fn token_matches(record: &TokenRecord, secret: &str) -> bool {
    let presented = Hash::of(secret.as_bytes());
    let diff = presented.0.iter().zip(record.secret_hash.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    diff == 0 && record.revoked_at.is_none()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Principal {
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none()
    }

    fn has_stage(&self, stage: &StageName) -> bool {
        self.stages.iter().any(|s| s.as_str() == "*" || s == stage)
    }

    /// May this principal claim from `stage`?
    pub fn may_claim(&self, stage: &StageName, human_stage: bool) -> bool {
        match self.role {
            Role::Agent => self.has_stage(stage),
            Role::Operator => human_stage || self.has_stage(stage),
            Role::Admin => true,
            Role::Submitter => false,
        }
    }

    /// Whether this principal submitted `task` (the submit recorded its name).
    /// Tasks a holder spawned or Baton made (children, compensations) name
    /// their agent or Baton, so they are no principal's.
    pub fn submitted(&self, task: &Task) -> bool {
        matches!(&task.submitter, Actor::Principal(name) if *name == self.name)
    }

    /// May this principal see `task`? Agents see only tasks in their stages,
    /// submitters only the tasks they submitted (any other is reported as not
    /// found); operators and admins see everything.
    pub fn may_read(&self, task: &Task) -> bool {
        match self.role {
            Role::Agent => self.has_stage(&task.stage),
            Role::Submitter => self.submitted(task),
            Role::Operator | Role::Admin => true,
        }
    }

    /// Whether the role may list tasks only one by one as `may_read` allows
    /// (a submitter: its own tasks, found by `submitted`).
    pub fn reads_own_tasks_only(&self) -> bool {
        self.role == Role::Submitter
    }

    /// May this principal hand a task off from `from` to `to`?
    pub fn may_route(&self, from: &StageName, to: &StageName) -> bool {
        match self.role {
            Role::Agent if self.routes.is_empty() => self.has_stage(from) && self.has_stage(to),
            Role::Agent => self.routes.iter().any(|r| &r.from == from && &r.to == to),
            Role::Operator | Role::Admin => true,
            Role::Submitter => false,
        }
    }

    pub fn may_submit(&self) -> bool {
        matches!(self.role, Role::Submitter | Role::Operator | Role::Admin)
    }

    /// Cancelling, and adding a message to a task's history: operators and
    /// admins any task, a submitter the tasks it submitted (with the role's
    /// `may_read`, others are not found before this is asked), agents none.
    pub fn may_cancel(&self, task: &Task) -> bool {
        match self.role {
            Role::Operator | Role::Admin => true,
            Role::Submitter => self.submitted(task),
            Role::Agent => false,
        }
    }

    /// Only admins create principals and tokens; an admin holds every role's
    /// power, so it never creates one with more power than its own.
    pub fn may_administer(&self) -> bool {
        self.role == Role::Admin
    }
}

impl Principal {
    /// 403 `forbidden`: this principal's role may not `what`.
    pub fn role_refusal(&self, what: &str) -> Rejection {
        Rejection::Forbidden {
            message: format!("principal {} has role {}, which may not {what}", self.name, self.role),
        }
    }
}

/// Whether `p` may make a holder call (`agent` at `epoch`, doing `action`)
/// on `task` as its transaction loaded it; `human` says whether the task's
/// stage is a human stage (its workflow's policy, or the global one).
/// Refuses as a missing task when `p` may not see it, `forbidden` when an
/// operator works outside human stages and its own, then fences the call
/// (`lease_lost`, `not_holder`: a call that passes holds the task at this
/// epoch, so the stage cannot change under it), and for a handoff or a
/// spawn checks each route (`route_not_allowed`).
pub fn check_holder_call(
    p: &Principal,
    task: &Task,
    agent: &AgentId,
    epoch: u64,
    action: &Action,
    human: bool,
) -> Result<(), Rejection> {
    if p.role == Role::Submitter {
        return Err(p.role_refusal("work tasks"));
    }
    if !p.may_read(task) {
        return Err(Rejection::TaskNotFound { task: task.id });
    }
    if p.role == Role::Operator && !p.may_claim(&task.stage, human) {
        return Err(Rejection::Forbidden {
            message: format!("principal {} may not work tasks in stage {}", p.name, task.stage),
        });
    }
    crate::decide::fence(task, agent, epoch)?;
    let targets: Vec<&StageName> = match action {
        Action::Handoff { to_stage, .. } => vec![to_stage],
        Action::Spawn { children, .. } => children.iter().map(|c| &c.stage).collect(),
        _ => Vec::new(),
    };
    for to in targets {
        if !p.may_route(&task.stage, to) {
            return Err(Rejection::RouteNotAllowed { from: task.stage.clone(), to: to.clone() });
        }
    }
    Ok(())
}

/// Whether `p` may cancel `task`, or add a message to its history (`what`
/// names the call in the refusal): operators and admins any task, a
/// submitter its own (any other is missing to it), agents none.
pub fn check_cancel(p: &Principal, task: &Task, what: &str) -> Result<(), Rejection> {
    if p.role == Role::Agent {
        return Err(p.role_refusal(what));
    }
    if !p.may_read(task) {
        return Err(Rejection::TaskNotFound { task: task.id });
    }
    if p.may_cancel(task) { Ok(()) } else { Err(p.role_refusal(what)) }
}

/// Adding `new` to the directory, given the principal of that name the store
/// found (live or revoked): names are never reused, so a taken name is
/// refused (`invalid_request` on `name`).
pub fn check_add_principal(existing: Option<&Principal>, new: &Principal) -> Result<(), Rejection> {
    match existing {
        Some(_) => {
            Err(Rejection::invalid("name", format!("a principal named {:?} exists already", new.name)))
        }
        None => Ok(()),
    }
}

/// Adding `token`, given its principal as the store found it and whether a
/// token with its id exists: tokens are minted only for an existing, live
/// principal, and ids are never reused (`invalid_request`).
pub fn check_add_token(
    owner: Option<&Principal>,
    id_taken: bool,
    token: &TokenRecord,
) -> Result<(), Rejection> {
    match owner {
        None => Err(Rejection::invalid("principal", format!("no principal is named {:?}", token.principal))),
        Some(p) if !p.is_live() => {
            Err(Rejection::invalid("principal", format!("principal {:?} is revoked", token.principal)))
        }
        Some(_) if id_taken => Err(Rejection::invalid("id", "a token with this id exists already")),
        Some(_) => Ok(()),
    }
}

/// Revoking `target` (as the store found it, `None` when there is no such
/// principal), given how many live admins there are: whether there is
/// anything to revoke, or a refusal (`invalid_transition`) when it is the
/// last live admin, so the directory always keeps one who can administer
/// it. The store must count under a lock every directory write takes, so
/// two revocations of the last two admins cannot both pass.
pub fn check_revoke_principal(target: Option<&Principal>, live_admins: u64) -> Result<bool, Rejection> {
    match target {
        None => Ok(false),
        Some(p) if p.role == Role::Admin && p.is_live() && live_admins <= 1 => {
            Err(Rejection::LastAdmin { name: p.name.clone() })
        }
        Some(_) => Ok(true),
    }
}

/// Where principals and tokens are kept. Writes are durable before they resolve.
pub trait Directory: Send + Sync + 'static {
    /// Creates a principal; refuses (`invalid_request`) if the name is taken
    /// (`check_add_principal`).
    fn add_principal(&self, principal: Principal) -> StoreFuture<'_, ()>;
    fn principal(&self, name: &str) -> StoreFuture<'_, Option<Principal>>;
    fn principals(&self) -> StoreFuture<'_, Vec<Principal>>;
    /// Revokes a principal and every token it has; false when there is no
    /// such principal. Refuses the last live admin (`check_revoke_principal`,
    /// decided under a lock every directory write takes).
    fn revoke_principal(&self, name: &str, at: Millis) -> StoreFuture<'_, bool>;
    /// Stores a token for a live principal (`check_add_token`).
    fn add_token(&self, token: TokenRecord) -> StoreFuture<'_, ()>;
    fn token(&self, id: &str) -> StoreFuture<'_, Option<TokenRecord>>;
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>>;
    fn revoke_token(&self, id: &str, at: Millis) -> StoreFuture<'_, bool>;
}

#[cfg(test)]
mod tests {
    //! Tokens round-trip and compare exactly; each role gets exactly its powers.

    use super::*;

    fn agent(stages: &[&str], routes: &[(&str, &str)]) -> Principal {
        Principal {
            name: "a".into(),
            role: Role::Agent,
            stages: stages.iter().map(|s| StageName::new(*s)).collect(),
            routes: routes.iter().map(|(f, t)| Route { from: (*f).into(), to: (*t).into() }).collect(),
            created_at: 0,
            revoked_at: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let (text, record) = mint_token("bob", [1; 8], [2; 32], 5);
        let (id, secret) = parse_token(&text).expect("well formed");
        assert_eq!(id, record.id);
        assert!(token_matches(&record, secret));
        let mut forged = secret.to_owned();
        forged.replace_range(0..1, if forged.starts_with('0') { "1" } else { "0" });
        assert!(!token_matches(&record, &forged));
        assert!(!text.contains(&record.secret_hash.to_hex()), "the hash is not the secret");
        for bad in ["", "baton_", "baton_zz_00", &text[1..], &format!("{text}0"), "other_0102030405060708_00"]
        {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        let revoked = TokenRecord { revoked_at: Some(9), ..record };
        assert!(!token_matches(&revoked, secret));
    }

    #[test]
    fn roles_get_exactly_their_powers() {
        let a = agent(&["intake", "triage"], &[]);
        let s = |n: &str| StageName::new(n);
        assert!(a.may_claim(&s("intake"), false) && !a.may_claim(&s("billing"), false));
        assert!(a.may_route(&s("intake"), &s("triage")) && !a.may_route(&s("intake"), &s("billing")));
        let routed = agent(&["intake"], &[("intake", "triage")]);
        assert!(
            routed.may_route(&s("intake"), &s("triage")) && !routed.may_route(&s("triage"), &s("intake"))
        );
        let task = |submitter: Actor| Task {
            submitter,
            ..crate::decide::submit(
                crate::TaskId(uuid::Uuid::nil()),
                &crate::NewTask::new("intake", "{}"),
                &crate::engine::Rules::default(),
                0,
            )
            .expect("a valid submit")
            .task
        };
        let own = task(Actor::Principal("a".into()));
        let other = task(Actor::Principal("b".into()));
        assert!(!a.may_submit() && !a.may_cancel(&own) && !a.may_administer());
        let star = agent(&["*"], &[]);
        assert!(star.may_claim(&s("anything"), false));
        let op = Principal { role: Role::Operator, ..agent(&[], &[]) };
        assert!(
            op.may_claim(&s("inbox"), true) && !op.may_claim(&s("intake"), false) && op.may_cancel(&other)
        );
        assert!(op.may_read(&other));
        let sub = Principal { role: Role::Submitter, ..agent(&[], &[]) };
        assert!(sub.may_submit() && !sub.may_claim(&s("inbox"), true) && !sub.may_administer());
        // A submitter ("a") reads and cancels what it submitted, nothing else.
        assert!(sub.may_read(&own) && sub.may_cancel(&own));
        assert!(!sub.may_read(&other) && !sub.may_cancel(&other));
        assert!(!sub.may_read(&task(Actor::Agent(crate::AgentId::new("a")))));
        assert!(!sub.may_read(&task(Actor::System)));
        let admin = Principal { role: Role::Admin, ..agent(&[], &[]) };
        assert!(admin.may_administer() && admin.may_claim(&s("x"), false));
    }
}
