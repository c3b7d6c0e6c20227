//! The memory store's integration tests, one binary.
//!
//! Goal: the in-memory store passes the whole store conformance suite, and its
//! own transaction rolls back completely when a write fails midway.
//!
//! Method: `store_suite!` expands to one test per conformance case over
//! `MemoryStore`; the rollback tests arm the store's write failpoint at every
//! write position of a multi-write operation and compare whole-store
//! snapshots before and after, then check the history.

use baton_core::{Error, JoinMode};
use baton_testkit::suite::{Case, act_op, complete, request_key, spawn, suite_rules};
use baton_testkit::{MemoryStore, assert_store_ok};

baton_testkit::store_suite!(baton_testkit::MemoryStore);

/// Arms the failpoint at each write of `op` in turn: every failed attempt
/// must leave the store exactly as it was; the unarmed run then succeeds.
fn check_rollback_at_every_write(
    cx: &Case<MemoryStore>,
    op: impl Fn(&Case<MemoryStore>) -> Result<(), Error>,
) -> usize {
    for writes in 0..100 {
        let before = cx.snapshot();
        cx.store().fail_write_after(writes);
        match op(cx) {
            Err(Error::Unavailable(message)) => {
                assert!(message.contains("injected"), "{message}");
                assert_eq!(cx.snapshot(), before, "a failed write at position {writes} left a trace");
                assert_store_ok(cx.store());
            }
            Ok(()) => {
                // The operation needed fewer writes than the budget: disarm.
                cx.store().fail_write_after(usize::MAX);
                return writes;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    panic!("operation never succeeded");
}

#[test]
fn spawn_rolls_back_at_every_write() {
    let cx = Case::<MemoryStore>::open(suite_rules());
    cx.submit_to("a");
    let grant = cx.claim_one("alice", "a");
    // The parent's update and three child inserts: four writes.
    let writes = check_rollback_at_every_write(&cx, |cx| {
        cx.try_act(&grant, spawn(&["b", "c", "d"], JoinMode::All, 60_000)).map(drop)
    });
    assert_eq!(writes, 4);
    assert_eq!(cx.claim("bob", &["b", "c", "d"], 10).len(), 3);
    cx.finish();
}

#[test]
fn child_completion_and_parent_escalation_roll_back_at_every_write() {
    let cx = Case::<MemoryStore>::open(suite_rules());
    cx.submit_to("a");
    let grant = cx.claim_one("alice", "a");
    let out = cx.act(&grant, spawn(&["b", "c"], JoinMode::All, 60_000));
    let child = cx.claim_one("bob", "b");
    // The child's completion (1) and the parent's ChildSettled (2).
    let writes = check_rollback_at_every_write(&cx, |cx| cx.try_act(&child, complete()).map(drop));
    assert_eq!(writes, 2);
    // A cancel that makes the join impossible: the child (1), the parent's
    // escalation (2), its alert (3) and the alert's outbox notice (4).
    let writes = check_rollback_at_every_write(&cx, |cx| cx.try_cancel(out.children[1], "gone").map(drop));
    assert_eq!(writes, 4);
    assert_eq!(cx.store().alerts().len(), 1);
    cx.finish();
}

/// A keyed call and the record of its outcome commit together: a failure at
/// either write leaves neither, and the retry runs the call and records it.
#[test]
fn keyed_call_and_its_record_roll_back_together() {
    let cx = Case::<MemoryStore>::open(suite_rules());
    cx.submit_to("a");
    let grant = cx.claim_one("alice", "a");
    let key = request_key("alice", "complete-1", "complete");
    // The task's update (1) and the request record (2).
    let writes = check_rollback_at_every_write(&cx, |cx| {
        cx.try_execute(act_op(&grant, complete()), Some(key.clone())).map(drop)
    });
    assert_eq!(writes, 2);
    let done = cx.task(grant.task.id);
    let replay = cx.execute(act_op(&grant, complete()), &key).into_acted().expect("an act's outcome");
    assert_eq!(replay.task, done);
    cx.finish();
}

mod model {
    //! The model test over the memory store: random protocol sequences, each
    //! step's outcome and every task's state checked against the reference
    //! model, the history checker at the end (see `baton_testkit::model`).
    use baton_testkit::MemoryStore;
    use baton_testkit::model::ModelTest;
    use proptest_state_machine::prop_state_machine;

    prop_state_machine! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, failure_persistence: None, ..Default::default() })]
        #[test]
        fn memory_store_follows_the_model(sequential 1..60 => ModelTest<MemoryStore>);
    }
}
