//! `baton audit verify`: checks every task's hash-chained history against its
//! row, straight from the database (SQLite file or PostgreSQL), and reports the
//! first broken link of each task: an edited event (its hash no longer
//! matches), a deleted one (a gap, or a row ahead of its events) or a
//! reordered one (the chain breaks). Exit 0 when everything verifies, 1 when a
//! link is broken. The checks themselves are `baton_core::audit`.
//!
//! With `--archive`, it checks the archive instead: every chunk the
//! store's index names (an SQLite archive directory, PostgreSQL's
//! `archive_chunks`), each archived task's chain with the same checks, and
//! that each indexed task is in its chunk; with `--archive PATH`, every
//! chunk file of that directory, no database needed. A changed byte makes
//! its chunk unreadable (gzip's checksum); an edited line breaks its task.

use crate::server::{Database, PostgresArgs, redact};
use anyhow::{Context, bail};
use baton_core::Store;
use baton_core::archive::{ArchiveAudit, ArchiveChunk};
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
    /// Verify the archive of finished tasks instead of the live ones; with
    /// PATH, the chunk files of that directory (an SQLite archive, e.g.
    /// `.baton/baton.db.archive`), without opening a database.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    archive: Option<Option<PathBuf>>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify(args) = command;
    if let Some(path) = &args.archive {
        return run_archive(&args, path.as_deref()).await;
    }
    let opened = Opened::open(&args)?;
    let report = verify(opened.store()).await;
    opened.close();
    let (report, source) = (report?, opened.source());
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

/// The store the arguments name, open (boxed: the stores differ in size).
enum Opened {
    Sqlite(Box<baton_sqlite::SqliteStore>),
    Postgres(Box<baton_postgres::PostgresStore>, String),
}

impl Opened {
    fn open(args: &AuditArgs) -> anyhow::Result<Self> {
        Ok(match Database::from_args(args.database_url.as_deref(), args.data_dir.as_deref())? {
            Database::Sqlite(path) => {
                if !path.exists() {
                    bail!("no database at {}: name the data directory of a Baton server", path.display());
                }
                let store = baton_sqlite::SqliteStore::open(&path, baton_sqlite::SqliteOptions::default())
                    .with_context(|| format!("cannot open the database {}", path.display()))?;
                Self::Sqlite(Box::new(store))
            }
            Database::Postgres(url) => {
                let options = args.postgres.options(&url)?;
                let store = baton_postgres::PostgresStore::open(options)
                    .with_context(|| format!("cannot open the PostgreSQL store at {}", redact(&url)))?;
                Self::Postgres(Box::new(store), redact(&url))
            }
        })
    }

    fn store(&self) -> &dyn Store {
        match self {
            Self::Sqlite(store) => store.as_ref(),
            Self::Postgres(store, _) => store.as_ref(),
        }
    }

    fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close(),
            Self::Postgres(store, _) => store.close(),
        }
    }

    /// What the report names: the file, or the URL without its password.
    fn source(&self) -> String {
        match self {
            Self::Sqlite(store) => store.path().display().to_string(),
            Self::Postgres(_, url) => url.clone(),
        }
    }
}

/// `--archive [PATH]`: every archived chain, from a directory or a store.
async fn run_archive(args: &AuditArgs, dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (report, source) = match dir {
        Some(dir) => (verify_dir(dir)?, dir.display().to_string()),
        None => {
            let opened = Opened::open(args)?;
            let report = verify_archive(opened.store()).await;
            opened.close();
            let source = match &opened {
                Opened::Sqlite(store) => store.archive_dir().display().to_string(),
                Opened::Postgres(..) => opened.source(),
            };
            (report?, source)
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&archive_json(&report, &source))?);
    } else {
        for (chunk, problem) in &report.unreadable {
            println!("chunk {chunk}: {problem}");
        }
        for b in &report.broken {
            println!("task {}: version {}: {}", b.task, b.version, b.problem);
        }
        let verdict = if report.ok() { "ok" } else { "BROKEN" };
        println!(
            "{source}: archive of {} chunks, {} tasks, {} events verified; {} broken, {} unreadable: {verdict}",
            report.chunks,
            report.tasks,
            report.events,
            report.broken.len(),
            report.unreadable.len()
        );
    }
    if !report.ok() {
        bail!(
            "the archive does not verify: {} broken task histories, {} unreadable chunks or lines",
            report.broken.len(),
            report.unreadable.len()
        );
    }
    Ok(())
}

/// Every chunk file of an archive directory, without its index.
fn verify_dir(dir: &std::path::Path) -> anyhow::Result<ArchiveAudit> {
    if !dir.is_dir() {
        bail!(
            "no archive directory at {}: name the `<database>.archive` directory beside a database",
            dir.display()
        );
    }
    let files = baton_sqlite::archive::chunk_files(dir)
        .with_context(|| format!("cannot list the archive directory {}", dir.display()))?;
    let mut report = ArchiveAudit::default();
    for (name, path) in files {
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        report.check_chunk(&ArchiveChunk { name, bytes, indexed: Vec::new(), indexed_count: None });
    }
    Ok(report)
}

/// Every chunk the store's index names, one at a time.
async fn verify_archive(store: &dyn Store) -> anyhow::Result<ArchiveAudit> {
    let mut report = ArchiveAudit::default();
    let mut after = None;
    while let Some(chunk) =
        store.archive_chunk(after.take()).await.context("the audit could not read the archive")?
    {
        if chunk.bytes.is_empty() {
            report.chunks += 1;
            report.unreadable.push((chunk.name.clone(), "the chunk is missing or empty".to_owned()));
        } else {
            report.check_chunk(&chunk);
        }
        after = Some(chunk.name);
    }
    Ok(report)
}

fn archive_json(report: &ArchiveAudit, source: &str) -> serde_json::Value {
    serde_json::json!({
        "archive": source,
        "chunks": report.chunks,
        "tasks": report.tasks,
        "events": report.events,
        "ok": report.ok(),
        "broken": report.broken.iter().map(|b| serde_json::json!({
            "task": b.task, "version": b.version, "problem": b.problem,
        })).collect::<Vec<_>>(),
        "unreadable": report.unreadable.iter().map(|(chunk, problem)| serde_json::json!({
            "chunk": chunk, "problem": problem,
        })).collect::<Vec<_>>(),
    })
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
