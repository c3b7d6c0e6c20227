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
