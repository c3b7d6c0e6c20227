//! How to open a store: the injected world (clock, rules, ready listener, fatal
//! hook) and the few storage knobs, with defaults that are safe for
//! production. Durability settings (`journal_mode=WAL`, `synchronous=FULL`)
//! are deliberately not options: every acknowledged write is fsync'd.

use crate::error::FatalError;
use baton_core::store::{NoListener, ReadyListener};
use baton_core::{Clock, Rules, SystemClock};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Called once, from the writer thread, when a commit cannot be trusted.
/// The default logs and aborts the process; tests inject one that records.
pub type FatalHook = Arc<dyn Fn(&FatalError) + Send + Sync>;

/// How thoroughly `open` checks the file before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntegrityCheck {
    /// `PRAGMA integrity_check`: everything `Quick` does, plus every index
    /// against its table. O(n log n) in the database size.
    Full,
    /// `PRAGMA quick_check`: every page, b-tree and record is well formed;
    /// skips cross-checking index contents against tables. O(n): it reads the
    /// whole file before `open` returns (seconds at a million tasks).
    Quick,
    /// The default: `open` returns once the header, the schema and the
    /// migrations have been read (a file that is not a database, or whose
    /// schema is damaged, is still refused there), and `quick_check` then
    /// runs on its own read connection beside the writer. A problem it finds
    /// is a fatal storage error: writes are refused from then on and the
    /// fatal hook runs (in production the process stops). So a restart at a
    /// large backlog serves its first claim in milliseconds, not after a read
    /// of the whole file; a damaged page the writer touches first is fatal
    /// as it always is (`is_fatal`).
    #[default]
    Background,
    /// No check: for tools that only inspect a file.
    Off,
}

/// Options for `SqliteStore::open`. Build with `SqliteOptions::default()` and
/// the setters below.
#[derive(Clone)]
pub struct SqliteOptions {
    /// Where `now` comes from; read once per committed batch.
    pub clock: Arc<dyn Clock>,
    /// Stage policies and limits, including `limits.commit_batch_max`.
    pub rules: Rules,
    /// Told, after each commit, which stages got new ready work.
    pub listener: Arc<dyn ReadyListener>,
    /// Operations waiting for the writer, at most; past it a write is
    /// answered `Unavailable` at once instead of queueing without bound.
    pub queue_max: usize,
    /// Reader threads, each with its own read-only connection, serving
    /// `get`, `list`, `history`, ... (at least one).
    pub readers: usize,
    /// Reads waiting for a reader thread, at most; past it a read is
    /// answered `Unavailable` at once.
    pub read_queue_max: usize,
    /// How long a statement waits for another process's lock before failing.
    pub busy_timeout: Duration,
    pub integrity_check: IntegrityCheck,
    /// WAL pages after which a commit checkpoints into the main file. Bounds
    /// the WAL, so recovery after a crash has little to replay.
    pub wal_autocheckpoint_pages: u32,
    /// Size the WAL file is truncated to after a checkpoint.
    pub journal_size_limit_bytes: i64,
    /// Called on a fatal storage error; must not return in production.
    pub on_fatal: FatalHook,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            rules: Rules::default(),
            listener: Arc::new(NoListener),
            queue_max: 16 * 1024,
            readers: 4,
            read_queue_max: 4_096,
            busy_timeout: Duration::from_secs(5),
            integrity_check: IntegrityCheck::default(),
            wal_autocheckpoint_pages: 1_000,
            journal_size_limit_bytes: 64 * 1024 * 1024,
            on_fatal: Arc::new(abort_process),
        }
    }
}

impl SqliteOptions {
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    pub fn listener(mut self, listener: Arc<dyn ReadyListener>) -> Self {
        self.listener = listener;
        self
    }

    pub fn queue_max(mut self, queue_max: usize) -> Self {
        self.queue_max = queue_max;
        self
    }

    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    pub fn read_queue_max(mut self, max: usize) -> Self {
        self.read_queue_max = max;
        self
    }

    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    pub fn integrity_check(mut self, check: IntegrityCheck) -> Self {
        self.integrity_check = check;
        self
    }

    pub fn on_fatal(mut self, hook: FatalHook) -> Self {
        self.on_fatal = hook;
        self
    }
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("rules", &self.rules)
            .field("queue_max", &self.queue_max)
            .field("readers", &self.readers)
            .field("read_queue_max", &self.read_queue_max)
            .field("busy_timeout", &self.busy_timeout)
            .field("integrity_check", &self.integrity_check)
            .field("wal_autocheckpoint_pages", &self.wal_autocheckpoint_pages)
            .field("journal_size_limit_bytes", &self.journal_size_limit_bytes)
            .finish_non_exhaustive()
    }
}

/// The default fatal hook: the process must not outlive a commit it cannot
/// trust. Abort (not exit) so no destructor or buffered write runs after it.
fn abort_process(error: &FatalError) {
    eprintln!("baton-sqlite: {error}; aborting");
    std::process::abort();
}
