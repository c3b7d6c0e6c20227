//! `baton db migrate|check`: the schema of a database, without serving it.
//! `migrate` brings a PostgreSQL schema to this binary's version (under the
//! migration lock, so it is safe while replicas start); `check` reports the
//! version found against this binary's and exits non-zero when the database
//! is behind (run `migrate`) or ahead (run a newer baton). A SQLite file is
//! migrated whenever baton opens it, so `migrate` opens and closes it (after
//! a `quick_check`), and `check` runs SQLite's full `integrity_check` on it
//! (serving runs `quick_check` in the background instead) and compares the
//! per-stage counters the writer keeps with a full recount of the live tasks.

use crate::server::{Database, PostgresArgs, redact};
use anyhow::{Context, bail};
use baton_sqlite::{IntegrityCheck, SqliteOptions, SqliteStore};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Apply the migrations this binary has and the database lacks.
    Migrate(DbArgs),
    /// Report the schema version; exit 1 unless it matches this binary's.
    Check(DbArgs),
    /// Copy a SQLite database to a new file while Baton keeps serving it
    /// (SQLite's online backup). On PostgreSQL use pg_dump.
    Backup {
        #[command(flatten)]
        args: DbArgs,
        /// The new file to write (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// `postgres://USER@HOST:PORT/DB` or `sqlite://PATH` (as `baton serve`).
    #[arg(long, env = "BATON_DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite in this directory (`DIR/baton.db`).
    #[arg(long, env = "BATON_DATA_DIR", conflicts_with = "database_url")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    postgres: PostgresArgs,
}

pub async fn run(command: DbCommand) -> anyhow::Result<()> {
    let (args, migrate) = match &command {
        DbCommand::Migrate(args) => (args, true),
        DbCommand::Check(args) => (args, false),
        DbCommand::Backup { args, to } => return backup(args, to).await,
    };
    match Database::from_args(args.database_url.as_deref(), args.data_dir.as_deref())? {
        Database::Postgres(url) => {
            let options = args.postgres.options(&url)?;
            let where_ =
                format!("{} (schema {})", redact(&url), options.schema.as_deref().unwrap_or("default"));
            let status = if migrate {
                baton_postgres::migrate(&options).await
            } else {
                baton_postgres::check(&options).await
            }
            .with_context(|| format!("on {where_}"))?;
            let verdict = report(status.found, status.supported);
            println!(
                "{where_}: schema version {} (this binary: {}): {verdict}",
                status.found, status.supported
            );
            match status.found.cmp(&status.supported) {
                std::cmp::Ordering::Equal => Ok(()),
                std::cmp::Ordering::Less => {
                    bail!("the database is behind this binary: run `baton db migrate`")
                }
                std::cmp::Ordering::Greater => {
                    bail!("the database is ahead of this binary: run a newer baton")
                }
            }
        }
        Database::Sqlite(path) => {
            // `migrate` checks the pages before it writes (`quick_check`);
            // `check` runs the full `integrity_check` (indexes against their
            // tables too), which `open` refuses to pass on a damaged file.
            let integrity = if migrate { IntegrityCheck::Quick } else { IntegrityCheck::Full };
            if !migrate && !path.exists() {
                bail!("no database at {}: nothing to check", path.display());
            }
            let store = SqliteStore::open(&path, SqliteOptions::default().integrity_check(integrity))
                .with_context(|| format!("cannot open the database {}", path.display()))?;
            let gauges = if migrate { Ok(None) } else { check_gauges(&store).await.map(Some) };
            store.close();
            let stages = gauges?;
            let version = baton_sqlite::SCHEMA_VERSION;
            let checked = match stages {
                None => "quick_check ok".to_owned(),
                Some(n) => format!("integrity_check ok; stage counters match a recount ({n} stages)"),
            };
            println!(
                "{}: schema version {version} (this binary: {version}): current; {checked}",
                path.display()
            );
            Ok(())
        }
    }
}

/// `baton db backup`: SQLite's online backup to a new file.
async fn backup(args: &DbArgs, to: &std::path::Path) -> anyhow::Result<()> {
    match Database::from_args(args.database_url.as_deref(), args.data_dir.as_deref())? {
        Database::Postgres(_) => bail!(
            "baton db backup copies SQLite files; for PostgreSQL use pg_dump and pg_restore \
             (docs/howto/backup.md)"
        ),
        Database::Sqlite(path) => {
            if !path.exists() {
                bail!("no database at {}: nothing to back up", path.display());
            }
            let (from, dest) = (path.clone(), to.to_owned());
            let pages = tokio::task::spawn_blocking(move || baton_sqlite::backup(&from, &dest))
                .await?
                .with_context(|| format!("backing up {} to {}", path.display(), to.display()))?;
            println!("backed up {} to {} ({pages} pages)", path.display(), to.display());
            Ok(())
        }
    }
}

/// Compares the stage counters (what the dashboard and /metrics read) with a
/// recount of every live task; the number of stages when they agree.
async fn check_gauges(store: &SqliteStore) -> anyhow::Result<usize> {
    use baton_core::Store as _;
    let counted = store.stage_gauges(usize::MAX).await.context("reading the stage counters")?;
    let recounted = store.stage_gauges_recount(usize::MAX).await.context("recounting the live tasks")?;
    if counted != recounted {
        bail!(
            "the stage counters differ from a recount of the live tasks (counters {counted:?}, \
             recount {recounted:?}): the gauges are wrong; report this, with the database if you can"
        );
    }
    Ok(counted.len())
}

fn report(found: u32, supported: u32) -> &'static str {
    match found.cmp(&supported) {
        std::cmp::Ordering::Equal => "current",
        std::cmp::Ordering::Less => "behind",
        std::cmp::Ordering::Greater => "ahead",
    }
}
