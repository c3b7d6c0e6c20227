//! `baton audit verify`: checks every task's hash-chained history against its
//! row, straight from the database (SQLite file or PostgreSQL), and reports the
//! first broken link of each task: an edited event (its hash no longer
//! matches), a deleted one (a gap, or a row ahead of its events) or a
//! reordered one (the chain breaks). Exit 0 when everything verifies, 1 when a
//! link is broken. The checks themselves are `baton_core::audit`.

use crate::server::{Database, PostgresArgs, redact};
use anyhow::{Context, bail};
use baton_core::Store;
use baton_core::audit::{AuditReport, verify_store};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify every task's event chain and its row; exit 1 on a broken link.
    Verify(AuditArgs),
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// `postgres://USER@HOST:PORT/DB` or `sqlite://PATH` (as `baton serve`).
    #[arg(long, env = "BATON_DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite in this directory (`DIR/baton.db`).
    #[arg(long, env = "BATON_DATA_DIR", conflicts_with = "database_url")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    postgres: PostgresArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify(args) = command;
    let (report, source) = match Database::from_args(args.database_url.as_deref(), args.data_dir.as_deref())?
    {
        Database::Sqlite(path) => {
            if !path.exists() {
                bail!("no database at {}: name the data directory of a Baton server", path.display());
            }
            let store = baton_sqlite::SqliteStore::open(&path, baton_sqlite::SqliteOptions::default())
                .with_context(|| format!("cannot open the database {}", path.display()))?;
            let report = verify(&store).await;
            store.close();
            (report?, path.display().to_string())
        }
        Database::Postgres(url) => {
            let options = args.postgres.options(&url)?;
            let store = baton_postgres::PostgresStore::open(options)
                .with_context(|| format!("cannot open the PostgreSQL store at {}", redact(&url)))?;
            let report = verify(&store).await;
            store.close();
            (report?, redact(&url))
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&report, &source))?);
    } else {
        for b in &report.broken {
            println!("task {}: version {}: {}", b.task, b.version, b.problem);
        }
        let verdict = if report.broken.is_empty() { "ok" } else { "BROKEN" };
        println!(
            "{source}: {} tasks, {} events verified; {} broken{}: {verdict}",
            report.tasks,
            report.events,
            report.broken.len(),
            if report.truncated { " (stopped at the audit limit)" } else { "" }
        );
    }
    if !report.broken.is_empty() {
        bail!("{} task histories do not verify", report.broken.len());
    }
    Ok(())
}

async fn verify(store: &dyn Store) -> anyhow::Result<AuditReport> {
    verify_store(store, |n| tracing::debug!(tasks = n, "verified"))
        .await
        .context("the audit could not read the store")
}

fn json(report: &AuditReport, source: &str) -> serde_json::Value {
    serde_json::json!({
        "database": source,
        "tasks": report.tasks,
        "events": report.events,
        "truncated": report.truncated,
        "ok": report.broken.is_empty(),
        "broken": report.broken.iter().map(|b| serde_json::json!({
            "task": b.task, "version": b.version, "problem": b.problem,
        })).collect::<Vec<_>>(),
    })
}
