//! Principals and tokens (`baton_core::auth::Directory`) in the `principals`
//! and `tokens` tables of migration 0002. Writes are operations of the writer
//! like any other (`DirectoryWrite`, queued as `Op::Directory`), so they are
//! committed before the caller hears back; reads run on the read pool. Only
//! the SHA-256 of a token's secret is stored. What may be written is decided
//! by `baton_core::auth` (a taken name, a token for a principal that does
//! not exist or is revoked, the last live admin) over what this module
//! loads. Every directory write first takes one advisory lock
//! (`PgTx::lock_directory`), and the rows it checks are locked (`FOR
//! UPDATE`), so two writers or replicas cannot both pass the same check:
//! two revocations of the last two admins run one after the other, and the
//! second sees the first.

use crate::error::StoreError;
use crate::rows::hash;
use crate::tx::PgTx;
use baton_core::auth::{self, Principal, Role, Route, TokenRecord};
use baton_core::engine::Fail;
use baton_core::{Millis, StageName};
use tokio_postgres::Row;

/// A directory write, run by the writer inside its batch transaction.
/// Answers `true`, except revocations: whether the record exists.
#[derive(Debug, Clone)]
pub(crate) enum DirectoryWrite {
    AddPrincipal(Principal),
    AddToken(TokenRecord),
    RevokePrincipal { name: String, at: Millis },
    RevokeToken { id: String, at: Millis },
}

type WriteResult = Result<bool, Fail<StoreError>>;

pub(crate) const PRINCIPAL: &str =
    "SELECT name, role, stages, routes, created_at, revoked_at FROM principals WHERE name = $1";
const PRINCIPAL_LOCKED: &str =
    "SELECT name, role, stages, routes, created_at, revoked_at FROM principals WHERE name = $1 FOR UPDATE";
pub(crate) const PRINCIPALS: &str =
    "SELECT name, role, stages, routes, created_at, revoked_at FROM principals ORDER BY name";
pub(crate) const TOKEN: &str =
    "SELECT id, principal, secret_hash, created_at, revoked_at FROM tokens WHERE id = $1";
pub(crate) const TOKENS: &str =
    "SELECT id, principal, secret_hash, created_at, revoked_at FROM tokens ORDER BY created_at, id";

impl DirectoryWrite {
    pub(crate) fn run(&self, tx: &mut PgTx<'_>) -> WriteResult {
        tx.lock_directory().map_err(Fail::Store)?;
        match self {
            Self::AddPrincipal(p) => add_principal(tx, p),
            Self::AddToken(t) => add_token(tx, t),
            Self::RevokePrincipal { name, at } => revoke_principal(tx, name, *at),
            Self::RevokeToken { id, at } => revoke_token(tx, id, *at),
        }
    }
}

fn locked_principal(tx: &mut PgTx<'_>, name: &str) -> Result<Option<Principal>, Fail<StoreError>> {
    let row = tx.query_opt(PRINCIPAL_LOCKED, &[&name]).map_err(Fail::Store)?;
    row.map(|r| principal_row(&r)).transpose().map_err(Fail::Store)
}

fn add_principal(tx: &mut PgTx<'_>, p: &Principal) -> WriteResult {
    let existing = locked_principal(tx, &p.name)?;
    auth::check_add_principal(existing.as_ref(), p)?;
    let stages = serde_json::to_string(&p.stages).map_err(|e| Fail::Store(e.into()))?;
    let routes = serde_json::to_string(&p.routes).map_err(|e| Fail::Store(e.into()))?;
    // A concurrent insert of the same name fails this one with a unique
    // violation, which the writer answers by running the operation again:
    // the rerun then finds the name taken.
    tx.execute(
        "INSERT INTO principals (name, role, stages, routes, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&p.name, &p.role.as_str(), &stages, &routes, &p.created_at, &p.revoked_at],
    )
    .map_err(Fail::Store)?;
    Ok(true)
}

fn add_token(tx: &mut PgTx<'_>, t: &TokenRecord) -> WriteResult {
    let owner = locked_principal(tx, &t.principal)?;
    let id_taken = tx.query_opt(TOKEN, &[&t.id]).map_err(Fail::Store)?.is_some();
    auth::check_add_token(owner.as_ref(), id_taken, t)?;
    tx.execute(
        "INSERT INTO tokens (id, principal, secret_hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
        &[&t.id, &t.principal, &&t.secret_hash.0[..], &t.created_at, &t.revoked_at],
    )
    .map_err(Fail::Store)?;
    Ok(true)
}

const TOKEN_PRINCIPAL: &str = "SELECT principal FROM tokens WHERE id = $1";
const LIVE_ADMINS: &str = "SELECT count(*) FROM principals WHERE role = 'admin' AND revoked_at IS NULL";

/// Revokes the principal (keeping an earlier revocation time) and every token
/// of it not yet revoked, unless it is the last live admin.
fn revoke_principal(tx: &mut PgTx<'_>, name: &str, at: Millis) -> WriteResult {
    // The agent's lock orders this against its claims on every replica.
    tx.lock_agent(name).map_err(Fail::Store)?;
    let target = locked_principal(tx, name)?;
    let live_admins: i64 = match tx.query_opt(LIVE_ADMINS, &[]).map_err(Fail::Store)? {
        Some(row) => row.try_get(0).map_err(|e| Fail::Store(e.into()))?,
        None => 0,
    };
    if !auth::check_revoke_principal(target.as_ref(), live_admins.max(0).unsigned_abs())? {
        return Ok(false);
    }
    tx.execute("UPDATE principals SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL", &[&name, &at])
        .map_err(Fail::Store)?;
    tx.execute(
        "UPDATE tokens SET revoked_at = $2 WHERE principal = $1 AND revoked_at IS NULL",
        &[&name, &at],
    )
    .map_err(Fail::Store)?;
    Ok(true)
}

fn revoke_token(tx: &mut PgTx<'_>, id: &str, at: Millis) -> WriteResult {
    // A token's principal never changes: lock it (as `revoke_principal`).
    let owner = tx.query_opt(TOKEN_PRINCIPAL, &[&id]).map_err(Fail::Store)?;
    if let Some(row) = owner {
        let principal: String = row.try_get(0).map_err(|e| Fail::Store(e.into()))?;
        tx.lock_agent(&principal).map_err(Fail::Store)?;
    }
    let found = tx
        .execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1", &[&id, &at])
        .map_err(Fail::Store)?;
    Ok(found > 0)
}

pub(crate) fn principal_row(row: &Row) -> Result<Principal, StoreError> {
    let role: &str = row.try_get(1)?;
    let role = Role::parse(role).ok_or_else(|| StoreError::Row(format!("unknown role {role:?}")))?;
    let stages: Vec<StageName> = serde_json::from_str(row.try_get(2)?)?;
    let routes: Vec<Route> = serde_json::from_str(row.try_get(3)?)?;
    Ok(Principal {
        name: row.try_get(0)?,
        role,
        stages,
        routes,
        created_at: row.try_get(4)?,
        revoked_at: row.try_get(5)?,
    })
}

pub(crate) fn token_row(row: &Row) -> Result<TokenRecord, StoreError> {
    let secret: &[u8] = row.try_get(2)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        principal: row.try_get(1)?,
        secret_hash: hash(secret, "a token's secret hash")?,
        created_at: row.try_get(3)?,
        revoked_at: row.try_get(4)?,
    })
}
