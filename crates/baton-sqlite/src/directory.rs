//! Principals and tokens (`baton_core::auth::Directory`) in the `principals`
//! and `tokens` tables of migration 0002. Writes are operations of the writer
//! thread like any other (`DirectoryWrite`, queued as `Op::Directory`), so they
//! are durable, with `synchronous=FULL`, before the caller hears back; reads
//! run on the read pool. Only the SHA-256 of a token's secret is stored.
//! What may be written is decided by `baton_core::auth` (a taken name, a
//! token for a principal that does not exist or is revoked, the last live
//! admin) over what this module loads; it only loads and keeps the records.
//! The writer runs one transaction at a time, so what it loads cannot change
//! before the write commits.

use crate::error::StoreError;
use crate::tx::WriteTx;
use baton_core::auth::{self, Principal, Role, Route, TokenRecord};
use baton_core::engine::Fail;
use baton_core::{Hash, Millis, StageName};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// A directory write, run by the writer thread inside its batch transaction.
/// Answers `true`, except revocations: whether the record exists.
#[derive(Debug, Clone)]
pub(crate) enum DirectoryWrite {
    AddPrincipal(Principal),
    AddToken(TokenRecord),
    RevokePrincipal { name: String, at: Millis },
    RevokeToken { id: String, at: Millis },
}

type WriteResult = Result<bool, Fail<StoreError>>;

const PRINCIPAL: &str =
    "SELECT name, role, stages, routes, created_at, revoked_at FROM principals WHERE name = ?1";
const PRINCIPALS: &str =
    "SELECT name, role, stages, routes, created_at, revoked_at FROM principals ORDER BY name";
const LIVE_ADMINS: &str = "SELECT count(*) FROM principals WHERE role = 'admin' AND revoked_at IS NULL";
const TOKEN: &str = "SELECT id, principal, secret_hash, created_at, revoked_at FROM tokens WHERE id = ?1";
const TOKENS: &str =
    "SELECT id, principal, secret_hash, created_at, revoked_at FROM tokens ORDER BY created_at, id";

impl DirectoryWrite {
    pub(crate) fn run(&self, tx: &mut WriteTx<'_>) -> WriteResult {
        match self {
            Self::AddPrincipal(p) => add_principal(tx, p),
            Self::AddToken(t) => add_token(tx, t),
            Self::RevokePrincipal { name, at } => revoke_principal(tx, name, *at),
            Self::RevokeToken { id, at } => revoke_token(tx, id, *at),
        }
    }
}

fn store(e: impl Into<StoreError>) -> Fail<StoreError> {
    Fail::Store(e.into())
}

fn add_principal(tx: &mut WriteTx<'_>, p: &Principal) -> WriteResult {
    let existing = principal(tx.conn, &p.name).map_err(store)?;
    auth::check_add_principal(existing.as_ref(), p)?;
    let stages = serde_json::to_string(&p.stages).map_err(store)?;
    let routes = serde_json::to_string(&p.routes).map_err(store)?;
    tx.writes += 1;
    tx.conn
        .prepare_cached(
            "INSERT INTO principals (name, role, stages, routes, created_at, revoked_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![p.name, p.role.as_str(), stages, routes, p.created_at, p.revoked_at])
        })
        .map_err(store)?;
    Ok(true)
}

fn add_token(tx: &mut WriteTx<'_>, t: &TokenRecord) -> WriteResult {
    let owner = principal(tx.conn, &t.principal).map_err(store)?;
    let id_taken = token(tx.conn, &t.id).map_err(store)?.is_some();
    auth::check_add_token(owner.as_ref(), id_taken, t)?;
    tx.writes += 1;
    tx.conn
        .prepare_cached(
            "INSERT INTO tokens (id, principal, secret_hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![t.id, t.principal, &t.secret_hash.0[..], t.created_at, t.revoked_at])
        })
        .map_err(store)?;
    Ok(true)
}

/// Revokes the principal (keeping an earlier revocation time) and every token
/// of it not yet revoked, unless it is the last live admin.
fn revoke_principal(tx: &mut WriteTx<'_>, name: &str, at: Millis) -> WriteResult {
    let target = principal(tx.conn, name).map_err(store)?;
    let live_admins: i64 = tx
        .conn
        .prepare_cached(LIVE_ADMINS)
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(store)?;
    if !auth::check_revoke_principal(target.as_ref(), live_admins.max(0).unsigned_abs())? {
        return Ok(false);
    }
    tx.writes += 1;
    tx.conn
        .prepare_cached("UPDATE principals SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL")
        .and_then(|mut st| st.execute(params![name, at]))
        .map_err(store)?;
    tx.writes += 1;
    tx.conn
        .prepare_cached("UPDATE tokens SET revoked_at = ?2 WHERE principal = ?1 AND revoked_at IS NULL")
        .and_then(|mut st| st.execute(params![name, at]))
        .map_err(store)?;
    Ok(true)
}

fn revoke_token(tx: &mut WriteTx<'_>, id: &str, at: Millis) -> WriteResult {
    tx.writes += 1;
    let found = tx
        .conn
        .prepare_cached("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1")
        .and_then(|mut st| st.execute(params![id, at]))
        .map_err(store)?;
    Ok(found > 0)
}

pub(crate) fn principal(conn: &Connection, name: &str) -> Result<Option<Principal>, StoreError> {
    let mut st = conn.prepare_cached(PRINCIPAL)?;
    st.query_row([name], |row| Ok(principal_row(row))).optional()?.transpose()
}

pub(crate) fn principals(conn: &Connection) -> Result<Vec<Principal>, StoreError> {
    let mut st = conn.prepare_cached(PRINCIPALS)?;
    let rows = st.query_map([], |row| Ok(principal_row(row)))?;
    rows.map(|r| r?).collect()
}

pub(crate) fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    let mut st = conn.prepare_cached(TOKEN)?;
    st.query_row([id], |row| Ok(token_row(row))).optional()?.transpose()
}

pub(crate) fn tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let mut st = conn.prepare_cached(TOKENS)?;
    let rows = st.query_map([], |row| Ok(token_row(row)))?;
    rows.map(|r| r?).collect()
}

fn principal_row(row: &Row<'_>) -> Result<Principal, StoreError> {
    let role: String = row.get(1)?;
    let role = Role::parse(&role).ok_or_else(|| StoreError::Row(format!("unknown role {role:?}")))?;
    let stages: Vec<StageName> = serde_json::from_str(&row.get::<_, String>(2)?)?;
    let routes: Vec<Route> = serde_json::from_str(&row.get::<_, String>(3)?)?;
    Ok(Principal {
        name: row.get(0)?,
        role,
        stages,
        routes,
        created_at: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

fn token_row(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    let hash: Vec<u8> = row.get(2)?;
    let secret_hash = <[u8; 32]>::try_from(hash.as_slice())
        .map(Hash)
        .map_err(|_| StoreError::Row("a token's secret hash is not 32 bytes".into()))?;
    Ok(TokenRecord {
        id: row.get(0)?,
        principal: row.get(1)?,
        secret_hash,
        created_at: row.get(3)?,
        revoked_at: row.get(4)?,
    })
}
