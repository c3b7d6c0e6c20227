//! Baton's benchmark and fault harness. `bench` is the store-level HB3
//! benchmark with its same-run baselines (docs/glossary.md);
//! `crash` is the workload of the kill -9 test (T1) and
//! the parser of what it acknowledged; `fault` runs real clients against a
//! child `baton dev` while a scenario injects a fault (kill -9, power loss,
//! fsync EIO, clock jumps) and checks what they were told; `sys` reads device flushes and CPU
//! time; `retention` is the retention soak (database size flat under a
//! constant rate with a short retention); `exec` drives store futures from plain threads; `gauges` seeds a
//! large backlog through the store and times the stage gauges. The binary
//! `baton-harness` exposes them as subcommands.

pub mod bench;
pub mod crash;
pub mod exec;
pub mod fault;
pub mod gauges;
pub mod retention;
pub mod store;
pub mod sys;
