//! The archive of a real SQLite file, through the store and the CLI.
//!
//! Round trip: finished tasks are archived, `baton audit verify --archive`
//! passes (from the database's index, and from the directory alone), their
//! histories read back identical; then an edited line (its task's event
//! changed, gzip rewritten), a deleted line and a changed byte (gzip's
//! checksum) each make the audit fail naming the task or the chunk, and a
//! deleted chunk file is reported as missing.
//!
//! Crash: the first step of a pass (chunks written and fsynced) without the
//! second (rows deleted and indexed) is what a crash between them leaves.
//! After a reopen every task is still live and served from the live tables,
//! the orphan chunk is ignored, and the next pass removes it, archives every
//! task exactly once and leaves only indexed chunk files.

use super::BATON;
use baton_core::archive::{ArchiveRequest, decode_chunk, encode_chunk};
use baton_core::{ActRequest, ClaimRequest, Event, NewTask, Store, TaskId};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::block_on;
use baton_testkit::suite::{agent, complete, stage};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `finished` tasks done (each submitted, claimed, completed) and one live.
fn populate(store: &SqliteStore, finished: usize) -> (Vec<TaskId>, TaskId) {
    let mut done = Vec::new();
    for i in 0..finished {
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
        let act = ActRequest {
            task: grant.task.id,
            agent: agent("alice"),
            epoch: grant.epoch,
            action: complete(),
            claim_next: None,
            caller: None,
        };
        block_on(store.act(act)).expect("complete");
        done.push(task.id);
    }
    let live = block_on(store.submit(NewTask::new("z", "{}"))).expect("submit").task.id;
    (done, live)
}

/// Everything finished before now may go; no webhook waits.
fn everything() -> ArchiveRequest {
    ArchiveRequest { finished_before: i64::MAX, limit: 1_000, hooks: Vec::new() }
}

fn histories(store: &SqliteStore, ids: &[TaskId]) -> Vec<Vec<Event>> {
    ids.iter().map(|id| block_on(store.history(*id)).expect("history")).collect()
}

fn verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(BATON)
        .args(["audit", "verify"])
        .args(args)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("BATON_DATA_DIR")
        .output()
        .expect("run baton audit verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
}

#[test]
fn archive_round_trip_verifies_and_reports_tampering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().unwrap();
    let store = SqliteStore::open(dir.path().join("baton.db"), SqliteOptions::default()).expect("open");
    let (done, live) = populate(&store, 5);
    let before = histories(&store, &done);
    assert_eq!(block_on(store.archive(everything())).expect("archive"), 5);
    assert_eq!(histories(&store, &done), before, "archived histories read back identical");
    assert!(block_on(store.get(live)).expect("get").is_some());
    let archive = store.archive_dir().to_owned();
    store.close();
    drop(store);

    let (ok, text) = verify(&["--data-dir", data, "--archive"]);
    assert!(ok && text.contains("5 tasks, 15 events verified; 0 broken, 0 unreadable: ok"), "{text}");
    let (ok, text) = verify(&["--archive", archive.to_str().unwrap()]);
    assert!(ok && text.contains("5 tasks, 15 events verified"), "{text}");
    let (ok, text) = verify(&["--data-dir", data]);
    assert!(
        ok && text.contains("1 tasks, 1 events verified; 0 broken"),
        "the live audit sees the rest: {text}"
    );

    // An edited line: the claim event of the first task names another agent.
    let files = chunk_files(&archive);
    assert_eq!(files.len(), 1, "one pass, one hour: one chunk");
    let original = std::fs::read(&files[0]).expect("read");
    let mut lines: Vec<_> =
        decode_chunk(&original).expect("decodes").into_iter().map(|l| l.expect("line")).collect();
    let victim = lines[0].id;
    lines[0].events[1] = lines[0].events[1].replace("\"alice\"", "\"mallory\"");
    std::fs::write(&files[0], encode_chunk(&lines)).expect("rewrite");
    let (ok, text) = verify(&["--data-dir", data, "--archive"]);
    assert!(!ok, "an edited line fails: {text}");
    assert!(text.contains(&format!("task {victim}: version 2:")), "{text}");
    assert!(text.contains("1 broken, 0 unreadable: BROKEN"), "{text}");

    // A deleted line: the index counts more tasks than the chunk holds.
    std::fs::write(&files[0], encode_chunk(&lines[1..])).expect("rewrite");
    let (ok, text) = verify(&["--data-dir", data, "--archive"]);
    assert!(!ok && text.contains("the index places 5 tasks in this chunk, 4 of them are in it"), "{text}");

    // A changed byte: the chunk no longer decompresses (or its checksum fails).
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&files[0], &bytes).expect("flip");
    let (ok, text) = verify(&["--archive", archive.to_str().unwrap()]);
    assert!(!ok && text.contains("chunk ") && text.contains("BROKEN"), "a changed byte fails: {text}");

    // A deleted chunk: the index still names it.
    std::fs::remove_file(&files[0]).expect("delete");
    let (ok, text) = verify(&["--data-dir", data, "--archive"]);
    assert!(!ok && text.contains("missing"), "a deleted chunk fails: {text}");
}

#[test]
fn a_crash_between_the_chunk_write_and_the_delete_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
    let (done, live) = populate(&store, 4);
    let before = histories(&store, &done);
    let written = store.archive_write_only(everything()).expect("write the chunks");
    assert_eq!(written.len(), 1);
    let archive = store.archive_dir().to_owned();
    // A half-written chunk from an earlier crash, too.
    std::fs::write(archive.join(format!("{}.tmp", written[0])), b"partial").expect("tmp");
    store.close();
    drop(store);

    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("reopen");
    for (id, events) in done.iter().zip(&before) {
        assert!(block_on(store.get(*id)).expect("get").is_some(), "{id} is still live");
        assert!(block_on(store.archived(*id)).expect("archived").is_none(), "the orphan chunk is not read");
        assert_eq!(&block_on(store.history(*id)).expect("history"), events);
    }
    assert!(block_on(store.archive_chunk(None)).expect("chunks").is_none(), "nothing is indexed");

    assert_eq!(block_on(store.archive(everything())).expect("archive"), 4);
    assert_eq!(histories(&store, &done), before);
    assert!(block_on(store.get(live)).expect("get").is_some());
    let files = chunk_files(&archive);
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".jsonl.gz")), "no .tmp is left: {names:?}");
    let mut seen = Vec::new();
    for file in &files {
        for line in decode_chunk(&std::fs::read(file).expect("read")).expect("decodes") {
            seen.push(line.expect("line").id);
        }
    }
    let unique: BTreeSet<TaskId> = seen.iter().copied().collect();
    assert_eq!((seen.len(), unique), (4, done.iter().copied().collect()), "each task archived exactly once");
    let mut indexed = 0;
    let mut after = None;
    while let Some(chunk) = block_on(store.archive_chunk(after.take())).expect("chunk") {
        indexed += chunk.indexed.len();
        after = Some(chunk.name);
    }
    assert_eq!(indexed, 4);
    store.close();
}

#[test]
fn baton_dev_with_a_retention_archives_finished_tasks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    std::fs::write(dir.join("baton.toml"), "[server]\narchive_interval_ms = 100\n").expect("config");
    let dev = super::Dev::start_with(dir, &["--retention", "1s", "--config", "baton.toml"]);
    let address = dev.address.clone();
    let run = |args: &[&str], code| {
        let mut args = args.to_vec();
        args.extend(["--address", &address]);
        super::check(dir, &args, code)
    };
    let submit = ["task", "submit", "--stage", "s", "--payload", r#"{"n":1}"#, "--key", "k1", "-o", "json"];
    let id = super::json(&run(&submit, 0).0)["id"].as_str().expect("id").to_owned();
    run(&["task", "claim", "--agent", "a", "--stage", "s", "--wait", "5s"], 0);
    run(&["task", "complete", &id, "--agent", "a", "--epoch", "1"], 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, text) = verify(&["--data-dir", dir.join(".baton").to_str().unwrap(), "--archive"]);
        if ok && text.contains("1 tasks") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the task was not archived: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (out, _) = run(&["task", "show", &id], 0);
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "done"]), "{out}");
    let (_, err) = run(&submit, 1);
    assert!(err.contains("task_archived") && err.contains(&id), "the key stays taken: {err}");
    dev.stop();
}

#[test]
fn a_bad_retention_is_refused_with_what_to_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, err) = super::check(dir.path(), &["dev", "--retention", "0s"], 2);
    assert!(err.contains("write `off`"), "{err}");
    let (_, err) = super::check(dir.path(), &["serve", "--data-dir", ".", "--retention", "a week"], 2);
    assert!(err.contains("7d") && err.contains("`off`"), "{err}");
}
