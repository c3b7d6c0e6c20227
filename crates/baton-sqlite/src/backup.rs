//! Online backup of a live database file with SQLite's backup API: pages are
//! copied in steps from a read connection while the server keeps writing
//! (a write between steps restarts the copy from the changed pages), and the
//! copy is a consistent snapshot of one committed moment. The destination is
//! a new file, written in rollback-journal mode like any fresh database; the
//! server switches it to WAL when it opens it.

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// Pages copied per step; between steps the writer may commit.
const BACKUP_STEP_PAGES: i32 = 1024;
/// Pause between steps, so a backup never starves the writer.
const BACKUP_STEP_PAUSE: Duration = Duration::from_millis(5);
/// Steps a backup may take before it gives up (a database written faster than
/// it can be copied would otherwise restart for ever).
const BACKUP_STEPS_MAX: u32 = 1_000_000;

/// Copies the database at `source` (which may be in use) to `dest`, which
/// must not exist. Returns the number of pages copied.
pub fn backup(source: &Path, dest: &Path) -> Result<i32, BackupError> {
    if dest.exists() {
        return Err(BackupError::Exists(dest.display().to_string()));
    }
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(Duration::from_secs(5))?;
    let mut dst = Connection::open(dest)?;
    let backup = Backup::new(&src, &mut dst)?;
    for _ in 0..BACKUP_STEPS_MAX {
        match backup.step(BACKUP_STEP_PAGES)? {
            StepResult::Done => return Ok(backup.progress().pagecount),
            StepResult::More | StepResult::Busy | StepResult::Locked => std::thread::sleep(BACKUP_STEP_PAUSE),
            _ => std::thread::sleep(BACKUP_STEP_PAUSE),
        }
    }
    Err(BackupError::TooBusy)
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; back up to a new file")]
    Exists(String),
    #[error("the database changed faster than it could be copied; try again when it is quieter")]
    TooBusy,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}
