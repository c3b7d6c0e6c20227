//! The schema: numbered migrations embedded from `migrations/` (matching
//! baton-sqlite's numbers), tracked in a `schema_migrations` table, applied
//! under a session advisory lock so replicas starting together migrate once,
//! each migration in its own transaction. `check` reads the version without
//! changing anything (`baton db check`).

use crate::error::OpenError;
use crate::options::PostgresOptions;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// The migrations, in order: entry `i` is migration number `i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    ("0002_auth", include_str!("../migrations/0002_auth.sql")),
    ("0003_requests", include_str!("../migrations/0003_requests.sql")),
    ("0004_workflows", include_str!("../migrations/0004_workflows.sql")),
    ("0005_rollups", include_str!("../migrations/0005_rollups.sql")),
    ("0006_anomalies", include_str!("../migrations/0006_anomalies.sql")),
    ("0007_delivery_resume", include_str!("../migrations/0007_delivery_resume.sql")),
    ("0008_push_configs", include_str!("../migrations/0008_push_configs.sql")),
    ("0009_stage_counts", include_str!("../migrations/0009_stage_counts.sql")),
    ("0010_handoff_index", include_str!("../migrations/0010_handoff_index.sql")),
    ("0011_archive", include_str!("../migrations/0011_archive.sql")),
];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long `migrate` waits for another replica's migration lock.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);

/// A schema's version against this binary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest migration applied (0: none, an empty schema).
    pub found: u32,
    /// `SCHEMA_VERSION`.
    pub supported: u32,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.found == self.supported
    }
}

/// Connects once with the store's connection settings, the connection driven
/// on the current runtime.
pub(crate) async fn connect(options: &PostgresOptions) -> Result<Client, OpenError> {
    let config = options.connection_config()?;
    let connecting = tokio::time::timeout(options.io_timeout, config.connect(NoTls));
    let (client, connection) = connecting
        .await
        .map_err(|_| OpenError::Timeout(options.io_timeout))?
        .map_err(|e| OpenError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Brings the schema to `SCHEMA_VERSION`; returns the status after. Safe to
/// run from many processes at once: one applies, the others wait and find
/// nothing left to do.
pub async fn migrate(options: &PostgresOptions) -> Result<SchemaStatus, OpenError> {
    let client = connect(options).await?;
    let sql = |during: &'static str| move |source| OpenError::Sql { during, source };
    let lock_key = format!("baton.migrate.{}", options.schema.as_deref().unwrap_or(""));
    let lock_args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&lock_key];
    let locking = client.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &lock_args);
    tokio::time::timeout(MIGRATION_LOCK_WAIT, locking)
        .await
        .map_err(|_| OpenError::Timeout(MIGRATION_LOCK_WAIT))?
        .map_err(sql("taking the migration lock"))?;
    let result = migrate_locked(&client, options).await;
    // The lock also ends with the session; unlock anyway to free it at once.
    let _ = client.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&lock_key]).await;
    result
}

async fn migrate_locked(client: &Client, options: &PostgresOptions) -> Result<SchemaStatus, OpenError> {
    let sql = |during: &'static str| move |source| OpenError::Sql { during, source };
    if let Some(schema) = &options.schema {
        // The name was checked plain (`options::check_schema`): no quoting needed.
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(sql("creating the schema"))?;
    }
    let found = version(client).await?;
    if found == 0 {
        let tasks: Option<String> =
            client.query_one("SELECT to_regclass('tasks')::text", &[]).await.map_err(sql("reading"))?.get(0);
        if tasks.is_some() {
            return Err(OpenError::Foreign(
                "the schema has a `tasks` table but no Baton schema_migrations".into(),
            ));
        }
    }
    if found > SCHEMA_VERSION {
        return Err(OpenError::TooNew { found, supported: SCHEMA_VERSION });
    }
    // Created when missing (checked first: IF NOT EXISTS alone logs a notice).
    let table: Option<String> = client
        .query_one("SELECT to_regclass('schema_migrations')::text", &[])
        .await
        .map_err(sql("reading"))?
        .get(0);
    if table.is_some() {
        return apply(client, options, found).await;
    }
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (
                 version    integer     NOT NULL PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
             )",
        )
        .await
        .map_err(sql("creating schema_migrations"))?;
    apply(client, options, found).await
}

/// Applies the migrations after `found`, each in its own transaction.
async fn apply(client: &Client, options: &PostgresOptions, found: u32) -> Result<SchemaStatus, OpenError> {
    for number in found + 1..=SCHEMA_VERSION {
        let (name, text) = MIGRATIONS[number as usize - 1];
        let apply = async {
            client.batch_execute("BEGIN").await?;
            client.batch_execute(text).await?;
            let version = i32::try_from(number).unwrap_or(i32::MAX);
            client
                .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])
                .await?;
            client.batch_execute("COMMIT").await
        };
        if let Err(source) = apply.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(OpenError::Migration { number, source });
        }
        tracing::info!(migration = name, schema = ?options.schema, "applied migration");
    }
    Ok(SchemaStatus { found: version(client).await?, supported: SCHEMA_VERSION })
}

/// Reads the schema's version without changing anything.
pub async fn check(options: &PostgresOptions) -> Result<SchemaStatus, OpenError> {
    let client = connect(options).await?;
    Ok(SchemaStatus { found: version(&client).await?, supported: SCHEMA_VERSION })
}

async fn version(client: &Client) -> Result<u32, OpenError> {
    let sql = |source| OpenError::Sql { during: "reading the schema version", source };
    let table: Option<String> =
        client.query_one("SELECT to_regclass('schema_migrations')::text", &[]).await.map_err(sql)?.get(0);
    if table.is_none() {
        return Ok(0);
    }
    let max: Option<i32> =
        client.query_one("SELECT max(version) FROM schema_migrations", &[]).await.map_err(sql)?.get(0);
    Ok(max.map_or(0, |v| u32::try_from(v).unwrap_or(0)))
}
