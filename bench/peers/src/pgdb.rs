//! A PostgreSQL database of the run's own for the PostgreSQL peers: made
//! from the admin URL's server, handed out as connection options and a pool,
//! and dropped (`WITH (FORCE)`) when the run is over, whatever happened.
//! Also reads back the durability settings, refusing to run without
//! `synchronous_commit` and `fsync` on.

use anyhow::{Context as _, Result, ensure};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr as _;
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most pool connections a PostgreSQL peer opens: one per agent plus the
/// library's own, below the server's default `max_connections` (100), which
/// other sessions share.
pub const POOL_MAX: u32 = 72;

/// A database made for one run.
pub struct RunDatabase {
    admin: PgConnectOptions,
    pub name: String,
    pub options: PgConnectOptions,
}

impl RunDatabase {
    /// Makes `baton_peers_<kind>_<pid>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, kind: &str) -> Result<Self> {
        let admin = PgConnectOptions::from_str(admin_url)?;
        let name = format!("baton_peers_{kind}_{}", std::process::id());
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, admin.connect())
            .await
            .context("connecting to PostgreSQL timed out")??;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("create database {name}"))?;
        let options = admin.clone().database(&name);
        Ok(Self { admin, name, options })
    }

    /// A pool on the run's database of at most `max` connections.
    pub async fn pool(&self, max: u32) -> Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(max.min(POOL_MAX))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(self.options.clone())
            .await?)
    }

    /// Drops the database once a run on it is over, whatever its `result`;
    /// the run's own error comes first.
    pub async fn drop_after<T>(self, result: Result<T>) -> Result<T> {
        let dropped = self.drop_now().await;
        let out = result?;
        dropped.context("drop the run's database")?;
        Ok(out)
    }

    /// Drops the database, closing whatever is still connected.
    async fn drop_now(&self) -> Result<()> {
        let mut conn = self.admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

/// `synchronous_commit` and `fsync` as the server has them; an error when a
/// commit would be acknowledged before it is on disk.
pub async fn durability(pool: &PgPool) -> Result<String> {
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pool).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?;
    ensure!(sync != "off" && fsync == "on", "PostgreSQL runs with synchronous_commit={sync}, fsync={fsync}");
    Ok(format!("PostgreSQL synchronous_commit={sync}, fsync={fsync}"))
}

/// Bytes of the current database.
pub async fn size(pool: &PgPool) -> Result<u64> {
    let bytes: i64 =
        sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(pool).await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// The history table every PostgreSQL peer writes one row to per handoff.
pub const HISTORY_DDL: &str = "CREATE TABLE hb_history(task bigint NOT NULL, stage int NOT NULL, \
     at_us bigint NOT NULL, PRIMARY KEY(task, stage))";
/// One history record: task, the stage left, the time in µs.
pub const HISTORY_INSERT: &str = "INSERT INTO hb_history(task, stage, at_us) VALUES ($1, $2, $3)";
