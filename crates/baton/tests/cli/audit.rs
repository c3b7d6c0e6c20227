//! `baton audit verify` on a real SQLite file: a clean database verifies
//! (exit 0); after editing one event, deleting another task's event and
//! swapping two events of a third, and editing a fourth task's payload, it
//! exits 1 and names each task with the version of its first broken link,
//! and leaves the untouched task alone.

use super::BATON;
use baton_core::{ClaimRequest, NewTask, Store, TaskId};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::block_on;
use baton_testkit::suite::{agent, complete, handoff_to, stage};
use std::path::Path;
use std::process::Command;

/// Five tasks, each with three events: submitted, claimed, handed off or completed.
fn populate(dir: &Path) -> Vec<TaskId> {
    let store = SqliteStore::open(dir.join("baton.db"), SqliteOptions::default()).expect("open");
    let mut ids = Vec::new();
    for i in 0..5 {
        let task = block_on(store.submit(NewTask::new("a", format!(r#"{{"n":{i}}}"#)))).expect("submit").task;
        let request = ClaimRequest {
            agent: agent("alice"),
            stages: vec![stage("a")],
            max: 1,
            lease_ms: None,
            only: None,
            credential: None,
        };
        let grant = block_on(store.claim(request)).expect("claim").remove(0);
        let act = |action| baton_core::ActRequest {
            task: grant.task.id,
            agent: agent("alice"),
            epoch: grant.epoch,
            action,
            claim_next: None,
            caller: None,
        };
        if i % 2 == 0 {
            block_on(store.act(act(handoff_to("b")))).expect("handoff");
        } else {
            block_on(store.act(act(complete()))).expect("complete");
        }
        ids.push(task.id);
    }
    store.close();
    ids
}

fn audit(dir: &Path) -> (bool, String) {
    let out = Command::new(BATON)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run baton audit verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn audit_verify_finds_edited_deleted_and_reordered_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = populate(dir.path());
    let (ok, text) = audit(dir.path());
    assert!(ok, "a clean database verifies: {text}");
    assert!(text.contains("5 tasks, 15 events verified; 0 broken"), "{text}");

    let conn = rusqlite::Connection::open(dir.path().join("baton.db")).expect("raw open");
    let key = |id: TaskId| id.0.as_bytes().to_vec();
    // Edited: the claim event of task 0 now says another agent claimed it.
    let edited = conn
        .execute(
            "UPDATE events SET body = replace(body, '\"alice\"', '\"mallory\"') WHERE task = ?1 AND version = 2",
            [key(ids[0])],
        )
        .expect("edit");
    assert_eq!(edited, 1);
    // Deleted: the last event of task 1 (the row is now ahead of its events).
    conn.execute("DELETE FROM events WHERE task = ?1 AND version = 3", [key(ids[1])]).expect("delete");
    // Reordered: events 2 and 3 of task 2 swap places.
    conn.execute_batch(&format!(
        "UPDATE events SET version = 99 WHERE task = x'{h}' AND version = 2; \
         UPDATE events SET version = 2 WHERE task = x'{h}' AND version = 3; \
         UPDATE events SET version = 3 WHERE task = x'{h}' AND version = 99;",
        h = ids[2].0.simple()
    ))
    .expect("reorder");
    // Edited payload: the chain is intact, but the payload served is not the one submitted.
    let edited =
        conn.execute("UPDATE payloads SET body = '{\"n\":40}' WHERE task = ?1", [key(ids[4])]).expect("edit");
    assert_eq!(edited, 1);
    drop(conn);

    let (ok, text) = audit(dir.path());
    assert!(!ok, "a tampered database fails the audit: {text}");
    assert!(text.contains(&format!("task {}: version 2: event 2: hash does not match", ids[0])), "{text}");
    assert!(text.contains(&format!("task {}: version 3: the row is at revision 3", ids[1])), "{text}");
    // An event's version is its row's key and its link the event before it,
    // so swapped rows read as events whose hashes no longer match.
    assert!(
        text.contains(&format!(
            "task {}: version 2: event 2: hash does not match the event's content",
            ids[2]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "task {}: version 1: the stored payload differs from the one submitted",
            ids[4]
        )),
        "{text}"
    );
    assert!(!text.contains(&ids[3].to_string()), "the untouched task verifies: {text}");
    assert!(text.contains("4 broken"), "{text}");
}
