//! Singleton duties: work that one replica should do at a time (the purge of
//! expired request records; anomaly detection and the rollup purge, which the
//! server runs after asking `Store::holds_duty`). A
//! duty is a row in `leader` (duty, holder, expires_at): a replica holds it
//! while `expires_at` is ahead of the clock the store runs on (the database
//! clock unless one is injected). Taking and renewing are one upsert that
//! succeeds only for the holder or once the lease ran out, so at most one
//! replica holds a duty at any moment of that clock. The store renews its
//! duties every third of `duty_lease` and releases them when it closes; a
//! replica that dies stops renewing, and another takes the duty over when
//! the lease runs out. Duties need no fencing beyond that: each is
//! idempotent (purging an expired record twice deletes nothing the second
//! time), so an overlap at a lease's edge wastes work, never breaks a rule.

use crate::error::StoreError;
use baton_core::Millis;

/// The duty of purging expired request records (`Store::purge_requests`).
pub const DUTY_PURGE: &str = "purge";

/// Every duty this store takes and renews: the purge, and those the server
/// asks about (`Store::holds_duty`).
pub(crate) const DUTIES: &[&str] = &[
    DUTY_PURGE,
    baton_core::SingletonDuty::Metrics.name(),
    baton_core::SingletonDuty::Webhooks.name(),
    baton_core::SingletonDuty::Archive.name(),
];

/// One duty's lease, as read from `leader`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duty {
    pub name: String,
    /// The replica holding it (`PostgresOptions::replica`).
    pub holder: String,
    /// When the lease runs out unless renewed (ms, the store's clock).
    pub expires_at: Millis,
}

/// Takes or renews a duty at `now` for `lease_ms`; returns the holder after
/// (this replica if it holds the duty). `$3` is `now`.
pub(crate) const HOLD: &str =
    "INSERT INTO leader (duty, holder, expires_at) VALUES ($1, $2, $3::bigint + $4::bigint)
    ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leader.holder = excluded.holder OR leader.expires_at <= $3
    RETURNING holder";

/// Gives up every duty of a replica (on a clean close).
pub(crate) const RELEASE: &str = "DELETE FROM leader WHERE holder = $1";

pub(crate) const LIST: &str = "SELECT duty, holder, expires_at FROM leader ORDER BY duty";

/// The database clock in milliseconds since the Unix epoch. `clock_timestamp`
/// (not `now()`, which is the transaction's start) so it is read when asked.
pub(crate) const DB_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Takes or renews `duty` on a pooled connection; true if this replica holds it.
pub(crate) async fn hold(
    client: &tokio_postgres::Client,
    duty: &str,
    replica: &str,
    now: Option<Millis>,
    lease_ms: Millis,
) -> Result<bool, StoreError> {
    let now = match now {
        Some(now) => now,
        None => client.query_one(DB_NOW, &[]).await?.try_get(0)?,
    };
    let st = client.prepare(HOLD).await?;
    let row = client.query_opt(&st, &[&duty, &replica, &now, &lease_ms]).await?;
    Ok(row.is_some())
}

pub(crate) fn duty(row: &tokio_postgres::Row) -> Result<Duty, StoreError> {
    Ok(Duty { name: row.try_get(0)?, holder: row.try_get(1)?, expires_at: row.try_get(2)? })
}
