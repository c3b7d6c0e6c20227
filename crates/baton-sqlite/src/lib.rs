//! Baton's `Store` over embedded SQLite. One writer thread owns the write
//! connection and commits many operations per transaction (group commit: one
//! fsync for a batch, every caller answered only after it); a few reader
//! threads, each with a read-only connection, serve reads. The engine in `baton-core` decides
//! every transition; this crate loads, guards and persists, with no business
//! rule in its SQL.
//!
//! Durability is not configurable: WAL with `synchronous=FULL`, and a failed
//! commit stops the process, but for a full disk, which refuses the batch
//! with `StorageFull` and lets writes resume once space is freed (see `writer`).

pub mod archive;
mod backup;
mod check;
mod directory;
mod error;
mod oneshot;
mod options;
mod read;
mod rows;
mod schema;
mod store;
mod tx;
mod writer;

pub use backup::{BackupError, backup};
pub use error::{FatalError, OpenError, StoreError, is_fatal, is_full};
pub use options::{FatalHook, IntegrityCheck, SqliteOptions};
pub use schema::SCHEMA_VERSION;
pub use store::{SqliteStore, Stats};
