//! Test support for Baton's stores, publish=false: the in-memory store
//! (`memory`), the store conformance suite every store runs (`suite`, with the
//! `store_suite!` macro), the manual clock (`clock`), the history checker
//! (`checker`), the client-history checker of fault tests (`history`), a small tmpfs for disk-full tests (`disk`) and a std-only `block_on` (`exec`). It owns no production
//! behaviour: every decision is `baton_core`'s engine; the real stores live in
//! their own crates and depend on this one only as a dev-dependency.

pub mod checker;
pub mod clock;
pub mod disk;
pub mod exec;
pub mod fixture;
pub mod history;
pub mod memory;
pub mod model;
pub mod suite;

pub use checker::{Acknowledged, HistoryReport, assert_store_ok, check_acknowledged, check_store};
pub use clock::ManualClock;
pub use exec::block_on;
pub use memory::MemoryStore;
pub use suite::{Case, ReadyLog, Setup, SuiteStore, suite_rules};
