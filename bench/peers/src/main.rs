//! `baton-peers`: HB3 burn-down adapters for the library-queue peers of
//! `baton bench` (HB3 in docs/glossary.md): River (`riverqueue`) on SQLite
//! and on PostgreSQL, apalis with apalis-sqlite, and pgmq on PostgreSQL.
//!
//! A separate cargo project, not a member of Baton's workspace: these
//! peers use sqlx's SQLite, whose `libsqlite3-sys` (`links = "sqlite3"`)
//! cannot share a cargo resolve with Baton's rusqlite. `baton bench` builds
//! it at run time from the registries and runs one child process per run:
//!
//! ```text
//! baton-peers run --system river-sqlite|river-pg|apalis-sqlite|pgmq --agents K --tasks N
//!     [--payload-bytes P] --dir D [--database-url U] [--time-limit-s T] [--handshake]
//! ```
//!
//! Every system fsyncs before it acknowledges: SQLite in WAL mode with
//! `synchronous=FULL` on every connection, PostgreSQL with its
//! `synchronous_commit` (checked to be on). Every handoff writes a history
//! record (task, stage, time) in the same transaction as the next stage's
//! job, to match the work Baton does per handoff. The result is one JSON
//! line on stdout (`run::Output`).

mod apalis_peer;
mod pgdb;
mod pgmq_peer;
mod river;
mod run;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args = run::Args::parse(std::env::args().skip(1))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let output = rt.block_on(async {
        match args.system.as_str() {
            "river-sqlite" => river::run_sqlite(&args).await,
            "river-pg" => river::run_pg(&args).await,
            "apalis-sqlite" => apalis_peer::run(&args).await,
            "pgmq" => pgmq_peer::run(&args).await,
            other => bail!("unknown system {other:?} (river-sqlite, river-pg, apalis-sqlite, pgmq)"),
        }
    })?;
    println!("{}", serde_json::to_string(&output)?);
    // Background tasks of the queue libraries must not keep the process up.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
