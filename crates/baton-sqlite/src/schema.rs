//! Opening the database file: the pragmas that make commits durable (set in
//! code, never left to defaults), the integrity check that refuses a corrupt
//! file (by default left to `check`, which runs it beside the writer), and
//! the numbered migrations embedded from `migrations/`, tracked with
//! `PRAGMA user_version`. Nothing here runs after `open`.

use crate::error::OpenError;
use crate::options::{IntegrityCheck, SqliteOptions};
use rusqlite::ffi::ErrorCode;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The migrations, in order: entry `i` is migration number `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_auth.sql"),
    include_str!("../migrations/0003_requests.sql"),
    include_str!("../migrations/0004_workflows.sql"),
    include_str!("../migrations/0005_rollups.sql"),
    include_str!("../migrations/0006_anomalies.sql"),
    include_str!("../migrations/0007_delivery_resume.sql"),
    include_str!("../migrations/0008_push_configs.sql"),
    include_str!("../migrations/0009_stage_counts.sql"),
    include_str!("../migrations/0010_handoff_index.sql"),
    include_str!("../migrations/0011_archive.sql"),
];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// `PRAGMA application_id` of a Baton database: "BATN" in ASCII.
const APPLICATION_ID: i64 = 0x4241_544E;

/// How many problems an integrity check reports before stopping.
const INTEGRITY_PROBLEMS_MAX: u32 = 10;

/// The writer's page cache, in KiB: enough for the hot part of the indexes at
/// a large backlog while keeping RSS bounded (readers use SQLite's default).
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// Opens (creating if needed) the write connection, checks it and migrates it.
pub(crate) fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory { path: path.into(), source })?;
    }
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite(path, e))?;
    stable_plans(&conn).map_err(|e| sqlite(path, e))?;
    set_writer_pragmas(&conn, path, options)?;
    check_integrity(&conn, path, options.integrity_check)?;
    migrate(&conn, path)?;
    // Enough room for every statement the writer runs, so none is re-prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection for the read pool.
pub(crate) fn open_reader(path: &Path, options: &SqliteOptions) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    stable_plans(&conn)?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Turns on the query planner stability guarantee. Without it, SQLite (3.54)
/// marks a statement whose plan could depend on a bound value (`LIMIT ?1`, for
/// one) to be re-prepared on every new binding, which re-parsed the claim and
/// timer lookups on every call (7% of the writer's CPU under load). Our plans
/// come from indexes, not from values, so a fixed plan is what we want anyway.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(drop)
}

fn set_writer_pragmas(conn: &Connection, path: &Path, options: &SqliteOptions) -> Result<(), OpenError> {
    let err = |e| sqlite(path, e);
    // First, so every later statement waits out another process's lock.
    conn.busy_timeout(options.busy_timeout).map_err(err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
    // FULL: in WAL mode, NORMAL may lose the latest commits on power loss. We
    // acknowledge only what survives that, so every commit fsyncs the WAL.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA wal_autocheckpoint = {};
         PRAGMA journal_size_limit = {};
         PRAGMA cache_size = -{WRITER_CACHE_KIB};
         PRAGMA temp_store = MEMORY;",
        options.wal_autocheckpoint_pages, options.journal_size_limit_bytes
    ))
    .map_err(err)?;
    // Read back what durability rests on: a silently ignored pragma must not pass.
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).map_err(err)?;
    let foreign_keys: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") || synchronous != 2 || foreign_keys != 1 {
        return Err(OpenError::Pragmas {
            path: path.into(),
            found: format!("journal_mode={mode}, synchronous={synchronous}, foreign_keys={foreign_keys}"),
        });
    }
    Ok(())
}

/// The open-time check; `Background` and `Off` run nothing here.
fn check_integrity(conn: &Connection, path: &Path, check: IntegrityCheck) -> Result<(), OpenError> {
    let pragma = match check {
        IntegrityCheck::Full => "integrity_check",
        IntegrityCheck::Quick => "quick_check",
        IntegrityCheck::Background | IntegrityCheck::Off => return Ok(()),
    };
    match integrity_problems(conn, pragma) {
        Ok(None) => Ok(()),
        Ok(Some(problems)) => Err(OpenError::Corrupt { path: path.into(), check: pragma, problems }),
        Err(e) => Err(sqlite(path, e)),
    }
}

/// Runs `PRAGMA <pragma>` (`integrity_check` or `quick_check`): `None` when
/// the file is sound, else the problems found (at most
/// `INTEGRITY_PROBLEMS_MAX`). A file too damaged for the check to finish
/// counts as a problem, not as an error.
pub(crate) fn integrity_problems(conn: &Connection, pragma: &str) -> rusqlite::Result<Option<String>> {
    let sql = format!("PRAGMA {pragma}({INTEGRITY_PROBLEMS_MAX})");
    let rows: rusqlite::Result<Vec<String>> =
        conn.prepare(&sql).and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(None),
        Ok(rows) => Ok(Some(rows.join("; "))),
        Err(e) if is_corruption(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Brings the schema to `SCHEMA_VERSION`, one migration per transaction.
fn migrate(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    loop {
        // IMMEDIATE, and the version read inside it: two processes opening one
        // new file at once apply each migration exactly once.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| sqlite(path, e))?;
        let step = next_migration(conn, path);
        let number = match step {
            Ok(Some(number)) => number,
            Ok(None) => {
                return conn.execute_batch("COMMIT").map_err(|e| sqlite(path, e));
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        let sql = MIGRATIONS[number as usize - 1];
        let applied = conn
            .execute_batch(sql)
            .and_then(|()| conn.execute_batch(&format!("PRAGMA user_version = {number}")))
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(source) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(OpenError::Migration { path: path.into(), number, source });
        }
        tracing::info!(path = %path.display(), migration = number, "applied migration");
    }
}

/// The next migration to apply, `None` when current; refuses foreign and
/// too-new files. Runs inside the migration transaction.
fn next_migration(conn: &Connection, path: &Path) -> Result<Option<u32>, OpenError> {
    let read = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(|e| sqlite(path, e));
    let version = read("PRAGMA user_version")?;
    let application = read("PRAGMA application_id")?;
    let objects = read("SELECT count(*) FROM sqlite_schema")?;
    let foreign = |why: String| Err(OpenError::Foreign { path: path.into(), why });
    if version == 0 {
        if application != 0 && application != APPLICATION_ID {
            return foreign(format!("its application_id is {application:#x}"));
        }
        if objects > 0 {
            return foreign(format!("it has {objects} schema objects but no Baton schema version"));
        }
    } else if application != APPLICATION_ID {
        return foreign(format!("its application_id is {application:#x}, not Baton's"));
    }
    let version = u32::try_from(version).unwrap_or(u32::MAX);
    if version > SCHEMA_VERSION {
        return Err(OpenError::TooNew { path: path.into(), found: version, supported: SCHEMA_VERSION });
    }
    Ok((version < SCHEMA_VERSION).then_some(version + 1))
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

/// Maps an open-time SQLite error, turning "not a database" and corruption
/// into the clear `Corrupt` refusal.
fn sqlite(path: &Path, source: rusqlite::Error) -> OpenError {
    if is_corruption(&source) {
        OpenError::Corrupt { path: path.into(), check: "open", problems: source.to_string() }
    } else {
        OpenError::Sqlite { path: path.into(), source }
    }
}
