//! How to open a store: the database URL, the schema, the injected world
//! (clock, rules, ready listener) and the few knobs, with defaults safe for
//! production. Durability is not an option: every connection runs with
//! `synchronous_commit = on`, and nothing is acknowledged before COMMIT
//! returns.

use crate::error::OpenError;
use baton_core::store::{NoListener, ReadyListener};
use baton_core::{Clock, Rules};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Bytes of a schema name (PostgreSQL identifiers are at most 63 bytes).
pub const SCHEMA_BYTES_MAX: usize = 48;

/// Options for `PostgresStore::open`. Build with `PostgresOptions::new(url)`
/// and the setters below.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Connection settings parsed from the URL (`postgres://user@host:port/db`).
    pub config: tokio_postgres::Config,
    /// The schema Baton's tables live in (set as `search_path` on every
    /// connection and created if missing); `None` keeps the URL's or the
    /// server's default (`public`).
    pub schema: Option<String>,
    /// Where `now` comes from. `None` (the default): the database clock,
    /// `clock_timestamp()` read at the start of every write transaction, so
    /// every replica computes leases on one clock. Tests inject a manual clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// Stage policies and limits, including `limits.commit_batch_max`.
    pub rules: Rules,
    /// Told, after each commit (this replica's, or another's through NOTIFY),
    /// which stages got new ready work.
    pub listener: Arc<dyn ReadyListener>,
    /// Operations waiting for the writer, at most; past it a write is
    /// answered `Unavailable` at once instead of queueing without bound.
    pub queue_max: usize,
    /// Writer threads, each with its own connection, taking batches from
    /// one queue (see `writer`).
    pub writers: usize,
    /// Connections in the read pool, at most.
    pub readers: usize,
    /// How long one statement (or a connection attempt) may take before the
    /// connection is given up as lost and the call answered `Unavailable`.
    pub io_timeout: Duration,
    /// This process's name among the replicas (in the `leader` table and in
    /// NOTIFY payloads). Unique per process by default.
    pub replica: String,
    /// Listen for other replicas' ready notifications (LISTEN/NOTIFY).
    pub listen: bool,
    /// Claims start where earlier claims left off (`crate::cursor`), so a
    /// long-open transaction elsewhere (an old snapshot) does not make them
    /// step over every row claimed since. Used only with `listen`: a replica
    /// must hear the others' commits to know where their new rows wait.
    pub ready_cursors: bool,
    /// How long a singleton-duty lease lasts; the holder renews it every
    /// third of that, so a dead holder's duty moves within this time.
    pub duty_lease: Duration,
    /// A test-only failpoint, `None` everywhere but in fault tests (no flag,
    /// variable or config file of the binaries sets it): while the counter is
    /// above zero, each batch that COMMITs successfully with a keyed operation
    /// (one sent with an `Idempotency-Key`, or a submit with an idempotency key) takes one from it and is answered
    /// `Unavailable` as if the COMMIT's answer had been lost on the way
    /// back. The batch did commit: the callers' keyed retries must get its
    /// original outcome. See docs/reliability.md (ambiguous commits).
    pub lose_commit_answers: Option<Arc<AtomicUsize>>,
}

impl PostgresOptions {
    /// Options for the database at `url` (`postgres://` or `postgresql://`).
    pub fn new(url: &str) -> Result<Self, OpenError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| OpenError::Url(format!("{e}")))?;
        Ok(Self {
            config,
            schema: None,
            clock: None,
            rules: Rules::default(),
            listener: Arc::new(NoListener),
            queue_max: 16 * 1024,
            writers: 4,
            readers: 4,
            io_timeout: Duration::from_secs(10),
            replica: default_replica(),
            listen: true,
            ready_cursors: true,
            duty_lease: Duration::from_secs(30),
            lose_commit_answers: None,
        })
    }

    /// Keeps Baton's tables in `schema` (letters, digits and `_` only).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
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

    pub fn writers(mut self, writers: usize) -> Self {
        self.writers = writers;
        self
    }

    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    pub fn replica(mut self, replica: impl Into<String>) -> Self {
        self.replica = replica.into();
        self
    }

    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    pub fn ready_cursors(mut self, on: bool) -> Self {
        self.ready_cursors = on;
        self
    }

    pub fn duty_lease(mut self, lease: Duration) -> Self {
        self.duty_lease = lease;
        self
    }

    /// Arms the test-only failpoint `lose_commit_answers` with `counter`.
    pub fn lose_commit_answers(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.lose_commit_answers = Some(counter);
        self
    }

    /// Whether this committed batch's answer is to be lost (the failpoint
    /// is armed and `keyed`); takes one from the counter if so.
    pub(crate) fn take_lost_commit_answer(&self, keyed: bool) -> bool {
        keyed
            && self.lose_commit_answers.as_ref().is_some_and(|left| {
                left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            })
    }

    /// The connection settings every connection of the store uses: the
    /// URL's, plus the schema as `search_path`, durable commits, a name in
    /// `pg_stat_activity`, and the connect timeout.
    pub(crate) fn connection_config(&self) -> Result<tokio_postgres::Config, OpenError> {
        let mut config = self.config.clone();
        let mut settings = config.get_options().unwrap_or_default().to_owned();
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
            settings.push_str(&format!(" -c search_path={schema}"));
        }
        settings.push_str(" -c synchronous_commit=on");
        // A connection stuck inside a transaction (its process frozen, say)
        // loses the transaction well before webhook delivery would pass the
        // gap its notices leave (see `WRITE_TRANSACTION_MAX`).
        settings.push_str(&format!(
            " -c idle_in_transaction_session_timeout={}",
            crate::WRITE_TRANSACTION_MAX.as_millis()
        ));
        config.options(settings.trim());
        if config.get_application_name().is_none() {
            config.application_name("baton");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.io_timeout);
        }
        Ok(config)
    }
}

/// Refuses schema names that would need quoting: they go into `search_path`
/// and into identifiers, and plain names keep both simple and safe.
pub(crate) fn check_schema(schema: &str) -> Result<(), OpenError> {
    let plain = !schema.is_empty()
        && schema.len() <= SCHEMA_BYTES_MAX
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if plain {
        Ok(())
    } else {
        Err(OpenError::Url(format!(
            "schema {schema:?}: use 1 to {SCHEMA_BYTES_MAX} lowercase letters, digits and `_`, not starting with a digit"
        )))
    }
}

/// `<pid>-<8 hex digits>`: unique per process, readable in `leader`.
fn default_replica() -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{}-{}", std::process::id(), &random[random.len() - 8..])
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("host", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("schema", &self.schema)
            .field("injected_clock", &self.clock.is_some())
            .field("rules", &self.rules)
            .field("queue_max", &self.queue_max)
            .field("writers", &self.writers)
            .field("readers", &self.readers)
            .field("io_timeout", &self.io_timeout)
            .field("replica", &self.replica)
            .field("listen", &self.listen)
            .field("ready_cursors", &self.ready_cursors)
            .field("duty_lease", &self.duty_lease)
            .finish_non_exhaustive()
    }
}
