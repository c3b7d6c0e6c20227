//! The background integrity check (`IntegrityCheck::Background`, the
//! default): `PRAGMA quick_check` on its own read-only connection, in its own
//! thread, while the writer serves. Reading a large file takes seconds (4.8 s
//! at a million tasks, 3.2 GB), which at open would delay the first claim
//! after every restart by as much; beside the writer it delays nothing.
//!
//! A problem found is a fatal storage error, as a corrupt page met by the
//! writer is: the store refuses writes from then on and the fatal hook runs
//! (in production it stops the process). Closing the store interrupts a check
//! still running. In WAL mode the check's read snapshot keeps the WAL from
//! being checkpointed past it while it runs, so the WAL may grow by what the
//! writer commits meanwhile; it is truncated at the next checkpoint after.

use crate::error::{FatalError, OpenError, is_fatal};
use crate::options::{FatalHook, SqliteOptions};
use crate::schema::{integrity_problems, open_reader};
use crate::writer::Counters;
use rusqlite::InterruptHandle;
use rusqlite::ffi::ErrorCode;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

/// A running background check.
pub(crate) struct Checker {
    thread: JoinHandle<()>,
    interrupt: InterruptHandle,
}

impl Checker {
    /// Opens the check's connection and starts its thread.
    pub(crate) fn start(
        path: &Path,
        options: &SqliteOptions,
        counters: Arc<Counters>,
    ) -> Result<Self, OpenError> {
        let conn =
            open_reader(path, options).map_err(|source| OpenError::Sqlite { path: path.into(), source })?;
        let interrupt = conn.get_interrupt_handle();
        let on_fatal = Arc::clone(&options.on_fatal);
        let checked = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("baton-sqlite-check".into())
            .spawn(move || run(&conn, &checked, &counters, &on_fatal))
            .map_err(|source| OpenError::Thread { thread: "integrity check", path: path.into(), source })?;
        Ok(Self { thread, interrupt })
    }

    /// Interrupts the check if it is still running and waits for its thread.
    pub(crate) fn stop(self) {
        self.interrupt.interrupt();
        if self.thread.join().is_err() {
            tracing::error!("the SQLite integrity check thread panicked");
        }
    }
}

fn run(conn: &rusqlite::Connection, path: &Path, counters: &Counters, on_fatal: &FatalHook) {
    let started = Instant::now();
    let problems = match integrity_problems(conn, "quick_check") {
        Ok(None) => {
            tracing::info!(
                path = %path.display(),
                seconds = started.elapsed().as_secs_f64(),
                "integrity check passed (quick_check)"
            );
            return;
        }
        Ok(Some(problems)) => (problems, Some(rusqlite::ffi::SQLITE_CORRUPT)),
        // The store closed while the check ran.
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => return,
        Err(e) if is_fatal(&e) => (e.to_string(), e.sqlite_error().map(|s| s.extended_code)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the background integrity check could not run");
            return;
        }
    };
    let (found, code) = problems;
    let error = FatalError {
        during: "integrity check",
        code,
        message: format!(
            "quick_check found the database {path:?} corrupt: {found}. Restore it from a backup, or copy out \
             what is readable with `sqlite3 {path:?} .recover`"
        ),
        unacknowledged: 0,
    };
    tracing::error!(error = %error, "fatal storage error: refusing writes");
    counters.stopped.store(true, Ordering::Release);
    on_fatal(&error);
}
