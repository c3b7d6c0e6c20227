//! Baton's `Store` over PostgreSQL, for one or many `baton serve` replicas on
//! one database. One writer thread per process owns a write connection and
//! runs many queued operations in one transaction with one commit (group
//! commit, as the SQLite store); reads go through a small deadpool pool. The
//! engine in `baton-core` decides every transition; this crate loads, guards
//! and persists, with no business rule in its SQL.
//!
//! What replicas share, and how they stay out of each other's way: claims and
//! timers lock candidate rows with `FOR UPDATE SKIP LOCKED`; every save is one
//! conditional `UPDATE ... WHERE id = $1 AND revision = $2` with its event row
//! in the same statement, and a save that loses to another replica reruns its
//! operation; `now` and lease times come from the database clock; long-poll
//! wake-ups cross replicas by LISTEN/NOTIFY after each commit (`listen`); singleton duties go to
//! one replica by a lease row (`leader`). A lost database answers
//! `Unavailable`, never a stale read, and the store reconnects by itself.

mod archive;
mod cursor;
mod directory;
mod error;
mod leader;
mod listen;
mod options;
mod read;
mod rows;
mod schema;
mod store;
mod tx;
mod writer;

pub use error::{OpenError, StoreError};
pub use leader::{DUTY_PURGE, Duty};
pub use options::PostgresOptions;
pub use schema::{SCHEMA_VERSION, SchemaStatus, check, migrate};
pub use store::{PostgresStore, Stats, database_now};

/// The longest a write transaction may run before COMMIT (and stay idle
/// inside a transaction, on every connection). Notices take their numbers
/// when inserted and commit with their transaction, so numbers commit out of
/// order across writers and replicas; webhook delivery waits at a gap for a
/// while (`baton_server::webhooks::NOTICE_GAP_WAIT`, 10 s) before passing it
/// as a number that will never commit. A transaction older than this is
/// rolled back instead, so a gap still open after the wait is one that
/// never commits. Kept well below the wait; the binary's tests check it.
pub const WRITE_TRANSACTION_MAX: std::time::Duration = std::time::Duration::from_secs(5);
