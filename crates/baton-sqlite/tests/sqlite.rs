//! The SQLite store's tests, in one binary. Goal: the store keeps the
//! engine's promises on a real file (durability across close and reopen, a
//! refused operation changes nothing, group commit batches concurrent
//! callers) and refuses files it must not trust (corrupt, too new, foreign).
//! Method: the conformance suite (`baton_testkit::store_suite!`) pins the
//! protocol, as for every store; the tests below it drive the public API on a
//! manual clock and inspect what the store reports (`stats`, `lookup_plans`)
//! and what reopening finds.
//! Failures that need a broken disk run in a child process under a file-size
//! limit, so the real fail-stop path runs, not a mock.

use baton_core::event::verify_chain;
use baton_core::{
    ActRequest, Action, AgentId, Alert, ClaimRequest, Error, Grant, JoinMode, JoinSpec, NewChild, NewTask,
    Report, StageName, Store, TaskFilter, TaskId, TaskView,
};
use baton_sqlite::{IntegrityCheck, OpenError, SqliteOptions, SqliteStore, is_fatal, is_full};
use baton_testkit::disk::SmallDisk;
use baton_testkit::{ManualClock, Setup, SuiteStore, block_on};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The conformance suite every store passes

/// A fresh SQLite file per case, in its own temporary directory.
struct Harness {
    store: SqliteStore,
    options: SqliteOptions,
    dir: tempfile::TempDir,
}

impl SuiteStore for Harness {
    type Store = SqliteStore;

    fn open(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions::default().clock(setup.clock).rules(setup.rules).listener(setup.listener);
        let store = SqliteStore::open(dir.path().join("baton.db"), options.clone()).expect("open");
        Self { store, options, dir }
    }

    fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn alerts(&self) -> Option<Vec<Alert>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.alerts(after, 100).expect("alerts");
            let Some((last, _)) = page.last() else { return Some(all) };
            after = *last;
            all.extend(page.into_iter().map(|(_, alert)| alert));
        }
    }

    fn reopen(self) -> Self {
        let Self { store, options, dir } = self;
        store.close();
        drop(store);
        let store = SqliteStore::open(dir.path().join("baton.db"), options.clone()).expect("reopen");
        Self { store, options, dir }
    }
}

baton_testkit::store_suite!(Harness);

// ---------------------------------------------------------------------------
// Helpers for the SQLite-specific tests

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), clock: Arc::new(ManualClock::default()) }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("baton.db")
    }

    fn options(&self) -> SqliteOptions {
        SqliteOptions::default().clock(self.clock.clone())
    }

    fn open(&self) -> SqliteStore {
        SqliteStore::open(self.path(), self.options()).expect("open")
    }
}

fn agent(name: &str) -> AgentId {
    AgentId::new(name)
}

fn submit(store: &SqliteStore, stage: &str, payload: &str) -> TaskId {
    block_on(store.submit(NewTask::new(stage, payload))).expect("submit").task.id
}

fn claim(store: &SqliteStore, who: &str, stage: &str, max: usize) -> Vec<Grant> {
    let request = ClaimRequest {
        agent: agent(who),
        stages: vec![StageName::new(stage)],
        max,
        lease_ms: None,
        only: None,
        credential: None,
    };
    block_on(store.claim(request)).expect("claim")
}

fn act(store: &SqliteStore, grant: &Grant, action: Action) -> Result<baton_core::ActOutcome, Error> {
    let holder = grant.task.holder().expect("a grant is held").clone();
    block_on(store.act(ActRequest {
        task: grant.task.id,
        agent: holder,
        epoch: grant.epoch,
        action,
        claim_next: None,
        caller: None,
    }))
}

fn handoff_to(stage: &str) -> Action {
    Action::Handoff { to_stage: StageName::new(stage), report: Report::default() }
}

fn complete() -> Action {
    Action::Complete { result: None, report: Report::default() }
}

fn view(store: &SqliteStore, id: TaskId) -> TaskView {
    block_on(store.get(id)).expect("get").expect("task exists")
}

/// Checks a task's stored history: an unbroken chain ending at the row's head,
/// whose last event carries the row as it is.
fn check_history(store: &SqliteStore, id: TaskId) {
    let events = block_on(store.history(id)).expect("history");
    verify_chain(&events).unwrap_or_else(|(i, why)| panic!("task {id}: event {i}: {why}"));
    let view = view(store, id);
    let last = events.last().expect("at least the submit event");
    assert_eq!(last.hash, view.head, "task {id}: head is the last event's hash");
    assert_eq!(last.after, view.task, "task {id}: the last event carries the row");
    assert_eq!(last.version, view.task.revision, "task {id}: version equals revision");
}

// ---------------------------------------------------------------------------
// Storage: durability, batching, refusals

#[test]
fn acknowledged_writes_survive_close_and_reopen() {
    let fx = Fixture::new();
    let store = fx.open();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(submit(&store, "in", &format!(r#"{{"n":{i}}}"#)));
    }
    for grant in claim(&store, "a", "in", 20) {
        act(&store, &grant, handoff_to("out")).expect("handoff");
    }
    for grant in claim(&store, "b", "out", 10) {
        act(&store, &grant, complete()).expect("complete");
    }
    let before: Vec<_> =
        ids.iter().map(|id| (view(&store, *id), block_on(store.history(*id)).unwrap())).collect();
    drop(store);

    let store = fx.open();
    for (view_before, history_before) in &before {
        let id = view_before.task.id;
        assert_eq!(&view(&store, id), view_before, "task {id} and its head survive");
        assert_eq!(&block_on(store.history(id)).expect("history"), history_before);
        check_history(&store, id);
    }
    // And the store keeps working where it left off.
    assert_eq!(claim(&store, "c", "out", 100).len(), 10);
}

#[test]
fn many_concurrent_callers_share_commits() {
    const THREADS: usize = 32;
    const EACH: usize = 40;
    let fx = Fixture::new();
    let store = Arc::new(fx.open());
    let acked: Vec<TaskId> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = &store;
                s.spawn(move || {
                    (0..EACH).map(|i| submit(store, "s", &format!("[{t},{i}]"))).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let stats = store.stats();
    assert_eq!(stats.ops, (THREADS * EACH) as u64);
    // Group commit's correctness property: callers waiting together share a
    // commit. 32 callers blocked on fsync cannot all land in separate batches.
    assert!(stats.batch_max > 1, "no batch carried more than one operation: {stats:?}");
    assert!(stats.commits < stats.ops, "{stats:?}");
    assert_eq!(acked.len(), THREADS * EACH);
    for id in acked {
        assert!(block_on(store.get(id)).expect("get").is_some(), "acknowledged task {id} is stored");
    }
}

/// Holds the database's write lock from another connection, so the writer's
/// next `BEGIN IMMEDIATE` waits and callers queue up behind it.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(path: &Path) -> Self {
        let conn = rusqlite::Connection::open(path).expect("second connection");
        conn.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        Self(conn)
    }
    fn release(self) {
        self.0.execute_batch("ROLLBACK").expect("release");
    }
}

#[test]
fn a_refused_operation_leaves_its_batch_neighbours_committed() {
    let fx = Fixture::new();
    let store = fx.open();
    let parent = submit(&store, "plan", "{}");
    let grant = claim(&store, "a", "plan", 1).remove(0);
    let parent_before = view(&store, parent);
    let commits_before = store.stats().commits;

    let lock = WriteLock::take(&fx.path());
    // The first operation takes the writer into BEGIN, where it waits on the
    // lock; the next three queue meanwhile and are taken as one batch.
    let opener = store.submit(NewTask::new("s", "{}"));
    thread::sleep(Duration::from_millis(200));
    let good1 = store.submit(NewTask::new("s", r#""one""#));
    // Spawn writes the parent and the first child, then the second child's
    // stage is refused: all of this operation's writes must roll back.
    let bad_children = vec![
        NewChild {
            stage: StageName::new("fine"),
            payload: "{}".into(),
            priority: 0,
            labels: BTreeMap::new(),
        },
        NewChild {
            stage: StageName::new("bad stage!"),
            payload: "{}".into(),
            priority: 0,
            labels: BTreeMap::new(),
        },
    ];
    let bad = store.act(ActRequest {
        task: parent,
        agent: agent("a"),
        epoch: grant.epoch,
        action: Action::Spawn {
            children: bad_children,
            join: JoinSpec { mode: JoinMode::All, within_ms: 1_000 },
        },
        claim_next: None,
        caller: None,
    });
    let good2 = store.submit(NewTask::new("s", r#""two""#));
    lock.release();

    block_on(opener).expect("opener");
    let good1 = block_on(good1).expect("good1").task.id;
    let refused = block_on(bad);
    assert!(matches!(refused, Err(Error::Rejected(ref r)) if r.code() == "invalid_request"), "{refused:?}");
    let good2 = block_on(good2).expect("good2").task.id;

    let stats = store.stats();
    assert_eq!(stats.commits - commits_before, 2, "the opener, then the other three together: {stats:?}");
    assert!(stats.batch_max >= 3, "{stats:?}");
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.reruns, 1, "the spawn wrote before its refusal, so the batch ran again with savepoints");
    assert_eq!(view(&store, good1).payload, r#""one""#);
    assert_eq!(view(&store, good2).payload, r#""two""#);
    assert_eq!(view(&store, parent), parent_before, "the refused spawn left the parent as it was");
    let children =
        block_on(store.list(TaskFilter { parent: Some(parent), ..TaskFilter::default() })).expect("list");
    assert!(children.tasks.is_empty(), "the first child's insert was rolled back too");
    check_history(&store, parent);
}

#[test]
fn a_full_write_queue_refuses_at_once() {
    let fx = Fixture::new();
    let store = SqliteStore::open(fx.path(), fx.options().queue_max(2)).expect("open");
    let lock = WriteLock::take(&fx.path());
    let opener = store.submit(NewTask::new("s", "{}"));
    thread::sleep(Duration::from_millis(200)); // the writer takes it and waits in BEGIN
    let queued: Vec<_> = (0..2).map(|_| store.submit(NewTask::new("s", "{}"))).collect();
    // Answered before the lock is released: refused at the door, not queued.
    let refused = block_on(store.submit(NewTask::new("s", "{}")));
    assert!(matches!(&refused, Err(Error::Unavailable(why)) if why.contains("queue_max")), "{refused:?}");
    lock.release();
    block_on(opener).expect("opener");
    for q in queued {
        block_on(q).expect("queued");
    }
}

#[test]
fn a_closed_store_answers_unavailable() {
    let fx = Fixture::new();
    let store = fx.open();
    let id = submit(&store, "s", "{}");
    store.close();
    assert!(matches!(block_on(store.submit(NewTask::new("s", "{}"))), Err(Error::Unavailable(_))));
    assert!(matches!(block_on(store.get(id)), Err(Error::Unavailable(_))));
    store.close();
}

#[test]
fn hot_lookups_use_their_indexes() {
    let fx = Fixture::new();
    let store = fx.open();
    let plans: BTreeMap<&str, String> = store.lookup_plans().expect("plans").into_iter().collect();
    let expect = [
        ("load", "sqlite_autoindex_tasks_1"),
        ("load_by_key", "tasks_idempotency"),
        ("ready", "COVERING INDEX tasks_ready"),
        ("due", "tasks_due"),
        ("leases_held", "tasks_holder"),
        ("oldest_ready", "COVERING INDEX tasks_ready_since"),
    ];
    for (lookup, index) in expect {
        let plan = &plans[lookup];
        assert!(plan.contains(index), "{lookup} should use {index}, plan: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{lookup} should not sort, plan: {plan}");
    }
}

// ---------------------------------------------------------------------------
// Files the store must refuse

/// Updates set only the index columns that changed (see `tx.rs`); whatever
/// the transitions, every row's index columns must equal what its JSON body
/// implies, or claims and timers would read a stale index.
#[test]
fn index_columns_always_match_the_row_body() {
    let fx = Fixture::new();
    let store = fx.open();
    for i in 0..12 {
        let mut new = NewTask::new(if i % 3 == 0 { "b" } else { "a" }, "{}").priority(i % 4);
        new.deadline = (i % 2 == 0).then(|| 1_700_000_000_000 + i64::from(i) * 1_000);
        block_on(store.submit(new)).expect("submit");
    }
    let grants = claim(&store, "w", "a", 8);
    let heartbeat = Action::Heartbeat { lease_ms: Some(20_000), note: None };
    act(&store, &grants[0], heartbeat.clone()).expect("heartbeat");
    act(&store, &grants[1], heartbeat).expect("heartbeat");
    act(&store, &grants[2], handoff_to("b")).expect("handoff");
    act(&store, &grants[3], Action::Release { note: None }).expect("release");
    act(&store, &grants[4], Action::Fail { error: "flaky".into(), retryable: true }).expect("fail");
    act(&store, &grants[5], complete()).expect("complete");
    fx.clock.advance(45_000);
    assert!(block_on(store.fire_due(100)).expect("fire") > 0, "leases expired, a backoff ended");
    claim(&store, "v", "b", 3);
    drop(store);

    let conn = rusqlite::Connection::open(fx.path()).expect("raw open");
    let mut st = conn
        .prepare(
            "SELECT stage, state, priority, deadline_rank, due_at, holder, ready, revision, body FROM tasks",
        )
        .expect("prepare");
    type Row = (String, String, i32, i64, Option<i64>, Option<String>, bool, i64, String);
    let rows: Vec<Row> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 12);
    for (stage, state, priority, deadline_rank, due_at, holder, ready, revision, body) in rows {
        let task: baton_core::Task = serde_json::from_str(&body).expect("body");
        let expected = (
            task.stage.as_str().to_owned(),
            task.state_name().as_str().to_owned(),
            task.priority,
            task.deadline_rank(),
            task.due_at(),
            task.holder().map(|a| a.as_str().to_owned()),
            task.is_ready(),
            i64::try_from(task.revision).expect("small"),
        );
        assert_eq!(
            (stage, state, priority, deadline_rank, due_at, holder, ready, revision),
            expected,
            "task {}",
            task.id
        );
    }
    let mut st = conn.prepare("SELECT ready_since, body FROM tasks").expect("prepare");
    let rows: Vec<(Option<i64>, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (ready_since, body) in rows {
        let task: baton_core::Task = serde_json::from_str(&body).expect("body");
        assert_eq!(ready_since, task.index_columns().ready_since, "task {}", task.id);
    }
}

/// Fills a store with 200 tasks, then overwrites the middle of its file:
/// b-tree pages, not the header or the schema page.
fn corrupt_pages(fx: &Fixture) {
    let store = fx.open();
    for i in 0..200 {
        submit(&store, "s", &format!(r#"{{"filler":"{}"}}"#, "x".repeat(i)));
    }
    drop(store);
    let mut bytes = std::fs::read(fx.path()).expect("read db");
    assert!(bytes.len() > 16 * 4096, "the database spans many pages");
    for page in [3, 5, 8] {
        let at = page * 4096;
        bytes[at..at + 64].fill(0xA5);
    }
    std::fs::write(fx.path(), &bytes).expect("write db");
}

#[test]
fn a_corrupt_file_is_refused_with_a_clear_error() {
    let fx = Fixture::new();
    corrupt_pages(&fx);
    let err = SqliteStore::open(fx.path(), fx.options().integrity_check(IntegrityCheck::Quick))
        .err()
        .expect("a corrupt file is refused");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt"), "{err}");

    // A file that is not SQLite at all is refused the same way.
    std::fs::write(fx.path(), vec![0x42; 8192]).expect("write junk");
    let err = SqliteStore::open(fx.path(), fx.options()).err().expect("junk is refused");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
}

/// The default check runs beside the writer: `open` returns at once, and
/// the damage it then finds is fatal (the hook runs, writes are refused).
#[test]
fn the_background_integrity_check_stops_the_store_on_a_corrupt_file() {
    /// How long the check may take on this small file.
    const CHECK_WAIT_MAX: Duration = Duration::from_secs(20);
    let fx = Fixture::new();
    corrupt_pages(&fx);
    let seen: Arc<Mutex<Vec<baton_sqlite::FatalError>>> = Arc::default();
    let hook: baton_sqlite::FatalHook = {
        let seen = Arc::clone(&seen);
        Arc::new(move |e: &baton_sqlite::FatalError| seen.lock().expect("hook").push(e.clone()))
    };
    let store = SqliteStore::open(fx.path(), fx.options().on_fatal(hook)).expect("opens before checking");
    let started = Instant::now();
    while seen.lock().expect("seen").is_empty() {
        assert!(started.elapsed() < CHECK_WAIT_MAX, "the background check never reported the damage");
        std::thread::sleep(Duration::from_millis(10));
    }
    let fatal = seen.lock().expect("seen")[0].clone();
    assert_eq!(fatal.during, "integrity check");
    assert!(fatal.message.contains("corrupt") && fatal.message.contains(".recover"), "{fatal}");
    assert!(store.stats().stopped);
    let refused = block_on(store.submit(NewTask::new("s", "{}"))).expect_err("no write after the damage");
    assert!(matches!(refused, baton_core::Error::Unavailable(_)), "{refused:?}");
}

/// A sound file passes the background check and the store keeps serving.
#[test]
fn the_background_integrity_check_passes_a_healthy_file() {
    let fx = Fixture::new();
    let seen: Arc<Mutex<Vec<baton_sqlite::FatalError>>> = Arc::default();
    let hook: baton_sqlite::FatalHook = {
        let seen = Arc::clone(&seen);
        Arc::new(move |e: &baton_sqlite::FatalError| seen.lock().expect("hook").push(e.clone()))
    };
    let store = SqliteStore::open(fx.path(), fx.options().on_fatal(hook.clone())).expect("open");
    for _ in 0..50 {
        submit(&store, "s", "{}");
    }
    drop(store);
    let store = SqliteStore::open(fx.path(), fx.options().on_fatal(hook)).expect("reopen");
    submit(&store, "s", "{}");
    store.close();
    assert!(seen.lock().expect("seen").is_empty(), "a healthy file is not fatal");
    assert!(!store.stats().stopped);
}

#[test]
fn the_full_integrity_check_passes_a_healthy_file() {
    let fx = Fixture::new();
    drop(fx.open());
    let store =
        SqliteStore::open(fx.path(), fx.options().integrity_check(IntegrityCheck::Full)).expect("open");
    submit(&store, "s", "{}");
}

#[test]
fn a_newer_schema_is_refused() {
    let fx = Fixture::new();
    drop(fx.open());
    let conn = rusqlite::Connection::open(fx.path()).expect("raw open");
    conn.execute_batch(&format!("PRAGMA user_version = {}", baton_sqlite::SCHEMA_VERSION + 1)).expect("bump");
    drop(conn);
    let err = SqliteStore::open(fx.path(), fx.options()).err().expect("too new is refused");
    match &err {
        OpenError::TooNew { found, supported, .. } => {
            assert_eq!(
                (*found, *supported),
                (baton_sqlite::SCHEMA_VERSION + 1, baton_sqlite::SCHEMA_VERSION)
            );
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("newer than this binary"), "{err}");
}

#[test]
fn another_applications_database_is_refused() {
    let fx = Fixture::new();
    let conn = rusqlite::Connection::open(fx.path()).expect("raw open");
    conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY)").expect("create");
    drop(conn);
    let err = SqliteStore::open(fx.path(), fx.options()).err().expect("foreign is refused");
    assert!(matches!(err, OpenError::Foreign { .. }), "{err:?}");
}

#[test]
fn rules_that_do_not_fit_the_limits_are_refused() {
    let fx = Fixture::new();
    let mut rules = baton_core::Rules::default();
    rules.policies.default.lease_ms = rules.limits.lease_ttl_ms_max + 1;
    let err = SqliteStore::open(fx.path(), fx.options().rules(rules)).err().expect("refused");
    assert!(matches!(err, OpenError::Rules(_)), "{err:?}");
    assert!(!fx.path().exists(), "nothing was created for a refused configuration");
}

#[test]
fn reopening_migrates_nothing_twice() {
    let fx = Fixture::new();
    drop(fx.open());
    drop(fx.open());
    let conn = rusqlite::Connection::open(fx.path()).expect("raw open");
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(version, baton_sqlite::SCHEMA_VERSION);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, "wal", "WAL is persistent in the file");
}

/// A database made before the stage counters (schema 7) gets them from a
/// full recount when migration 9 runs, and the writer keeps them from there.
#[test]
fn migrating_an_older_file_counts_its_live_tasks() {
    let fx = Fixture::new();
    let store = fx.open();
    for i in 0..9 {
        submit(&store, ["a", "b", "c"][i % 3], "{}");
    }
    let grants = claim(&store, "w", "a", 3);
    act(&store, &grants[0], handoff_to("b")).expect("handoff");
    act(&store, &grants[1], complete()).expect("complete");
    let before = block_on(store.stage_gauges_recount(100)).expect("recount");
    store.close();
    drop(store);
    // Back to schema 8: no archive (11), handoff records (10), no counters, no ready_since column (9).
    let conn = rusqlite::Connection::open(fx.path()).expect("raw open");
    conn.execute_batch(
        "DROP TABLE archived_keys; DROP TABLE archived; DROP TABLE archive_chunks; DROP INDEX tasks_finished;
         DROP INDEX handoff_tasks_task; DROP INDEX alerts_task; DROP INDEX deliveries_notice;
         CREATE TABLE handoffs (id BLOB NOT NULL PRIMARY KEY, task BLOB NOT NULL, body TEXT NOT NULL);
         INSERT INTO handoffs SELECT id, task, '{}' FROM handoff_tasks; DROP TABLE handoff_tasks;
         DROP TABLE stage_counts; DROP INDEX tasks_ready_since; ALTER TABLE tasks DROP COLUMN ready_since;
         PRAGMA user_version = 8;",
    )
    .expect("downgrade");
    drop(conn);

    let store = fx.open();
    let counted = block_on(store.stage_gauges(100)).expect("gauges");
    assert_eq!(counted, before, "migration 9 counts what is live");
    assert_eq!(counted.iter().map(|g| (g.ready, g.held)).collect::<Vec<_>>(), [(0, 1), (4, 0), (3, 0)]);
    claim(&store, "v", "b", 2);
    let counted = block_on(store.stage_gauges(100)).expect("gauges");
    assert_eq!(counted, block_on(store.stage_gauges_recount(100)).expect("recount"));
}

// ---------------------------------------------------------------------------
// Fail-stop on I/O errors

#[test]
fn storage_failures_are_classified_fatal_or_not() {
    use rusqlite::ffi;
    let error = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    for code in [ffi::SQLITE_IOERR_FSYNC, ffi::SQLITE_IOERR_WRITE, ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
        assert!(is_fatal(&error(code)), "code {code} must stop the process");
        assert!(!is_full(&error(code)), "code {code} is not a full disk");
    }
    for code in [
        ffi::SQLITE_FULL,
        ffi::SQLITE_BUSY,
        ffi::SQLITE_CONSTRAINT_UNIQUE,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_MISUSE,
    ] {
        assert!(!is_fatal(&error(code)), "code {code} is not fatal");
    }
    assert!(is_full(&error(ffi::SQLITE_FULL)), "a full disk is refused, not fatal");
    assert!(!is_fatal(&rusqlite::Error::QueryReturnedNoRows));
}

/// Set in the child process of the test below: the database path.
const FATAL_CHILD_ENV: &str = "BATON_SQLITE_FATAL_CHILD";
/// The child's exit code when the fatal hook ran.
const FATAL_EXIT: i32 = 86;

/// Runs the real writer against a file-size limit (`ulimit -f`): once the WAL
/// would grow past it, writing the commit fails with EFBIG (SQLITE_IOERR_WRITE)
/// and the writer must call the fatal hook without acknowledging the batch.
/// The test re-runs this binary as the child, under `sh` with the limit set
/// and SIGXFSZ ignored (so the write fails instead of killing the process).
#[test]
fn the_fatal_hook_fires_when_a_commit_cannot_be_written() {
    if let Ok(path) = std::env::var(FATAL_CHILD_ENV) {
        fatal_child(Path::new(&path));
    }
    let fx = Fixture::new();
    drop(fx.open()); // create and migrate the file without a limit
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 2048 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "the_fatal_hook_fires_when_a_commit_cannot_be_written",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FATAL_CHILD_ENV, fx.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(FATAL_EXIT), "child stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("FATAL during=commit"), "the hook saw a failed commit:\n{stdout}");

    // Every submit the child saw acknowledged is on disk; the failed one is not.
    let acked: Vec<TaskId> = stdout
        .lines()
        .filter_map(|l| l.split("ACK ").nth(1))
        .map(|id| id.parse().expect("task id"))
        .collect();
    assert!(!acked.is_empty(), "some commits fitted under the limit:\n{stdout}");
    let store = fx.open();
    for id in &acked {
        assert!(block_on(store.get(*id)).expect("get").is_some(), "acknowledged task {id} lost");
    }
    let all = block_on(store.list(TaskFilter::default())).expect("list");
    assert_eq!(all.tasks.len(), acked.len(), "nothing unacknowledged was committed:\n{stdout}");
}

fn fatal_child(path: &Path) -> ! {
    let hook: baton_sqlite::FatalHook = Arc::new(|e: &baton_sqlite::FatalError| {
        println!("FATAL during={} code={:?} unacknowledged={}", e.during, e.code, e.unacknowledged);
        std::process::exit(FATAL_EXIT);
    });
    let store = SqliteStore::open(path, SqliteOptions::default().on_fatal(hook)).expect("child open");
    let payload = format!(r#""{}""#, "p".repeat(200 * 1024));
    for _ in 0..200 {
        match block_on(store.submit(NewTask::new("s", payload.clone()))) {
            Ok(s) => println!("ACK {}", s.task.id),
            Err(e) => println!("ERR {e}"),
        }
    }
    println!("the limit never bit");
    std::process::exit(1);
}

/// Fills the filesystem with one file until it refuses a write (ENOSPC).
fn fill(path: &Path) -> std::io::Error {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            return e;
        }
    }
    panic!("the filesystem never filled up");
}

/// A full disk is not fatal. On a small tmpfs filled up under a running
/// store, writes are refused `StorageFull` (SQLITE_FULL, at a statement or
/// at COMMIT: the batch is rolled back) while reads keep serving and the
/// fatal hook never runs; once space is freed, writes succeed again without
/// a restart; every acknowledged task is there after reopening, and nothing
/// refused is.
#[test]
fn a_full_disk_refuses_writes_until_space_returns_and_loses_nothing() {
    let disk = SmallDisk::mount("24m");
    let db = disk.path().join("baton.db");
    let fatal = Arc::new(Mutex::new(None::<String>));
    let seen = fatal.clone();
    let hook: baton_sqlite::FatalHook = Arc::new(move |e: &baton_sqlite::FatalError| {
        *seen.lock().unwrap() = Some(e.to_string());
    });
    let store = SqliteStore::open(&db, SqliteOptions::default().on_fatal(hook.clone())).expect("open");
    let payload = format!(r#""{}""#, "p".repeat(64 * 1024));
    let mut acked = Vec::new();
    for _ in 0..8 {
        acked
            .push(block_on(store.submit(NewTask::new("s", payload.clone()))).expect("room to start").task.id);
    }
    let enospc = fill(&disk.path().join("filler"));
    assert_eq!(enospc.raw_os_error(), Some(28), "the filler met ENOSPC: {enospc}");

    let mut refused = 0;
    for _ in 0..2_000 {
        match block_on(store.submit(NewTask::new("s", payload.clone()))) {
            Ok(s) => acked.push(s.task.id),
            Err(Error::StorageFull(why)) => {
                refused += 1;
                assert!(why.contains("full"), "{why}");
                if refused == 3 {
                    break;
                }
            }
            Err(other) => panic!("a full disk must answer StorageFull, not {other:?}"),
        }
    }
    assert_eq!(refused, 3, "the full disk was never reported");
    assert_eq!(*fatal.lock().unwrap(), None, "a full disk is not fatal");
    let read = block_on(store.get(acked[0])).expect("reads serve on a full disk");
    assert!(read.is_some());

    std::fs::remove_file(disk.path().join("filler")).expect("free the space");
    let again = block_on(store.submit(NewTask::new("s", payload.clone())));
    let again = again.expect("writes succeed again once space is freed, without a restart");
    acked.push(again.task.id);
    store.close();

    let store = SqliteStore::open(&db, SqliteOptions::default().on_fatal(hook)).expect("reopen");
    for id in &acked {
        let view = block_on(store.get(*id)).expect("get").unwrap_or_else(|| panic!("acknowledged {id} lost"));
        assert_eq!(view.payload, payload);
    }
    let all = block_on(store.list(TaskFilter { limit: 500, ..TaskFilter::default() })).expect("list");
    assert_eq!(all.tasks.len(), acked.len(), "nothing refused was committed");
    store.close();
    assert_eq!(*fatal.lock().unwrap(), None, "a full disk is not fatal");
}

mod model {
    //! The model test over the SQLite store: the same reference model as the
    //! memory store's (see `baton_testkit::model`), every step fsync'd.
    use super::Harness;
    use baton_testkit::model::ModelTest;
    use proptest_state_machine::prop_state_machine;

    prop_state_machine! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, failure_persistence: None, ..Default::default() })]
        #[test]
        fn sqlite_store_follows_the_model(sequential 1..60 => ModelTest<Harness>);
    }
}

// ---------------------------------------------------------------------------
// Migration fixture: a database written by an earlier version

mod migration_fixture {
    //! `tests/fixtures/baton-v1.db` was written by Baton before the storage
    //! format changed (schema 9), with `snapshot.json` beside it holding what
    //! that version read back (`baton_testkit::fixture`). The current code
    //! must open a copy, migrate it, read the same, verify every chain and
    //! replay every keyed request, then chain new changes onto old events.
    use super::Harness;
    use baton_sqlite::{SqliteOptions, SqliteStore};
    use baton_testkit::fixture::{
        check_migrated, continue_after_migration, first_difference, populate, snapshot,
    };
    use baton_testkit::{Case, suite_rules};
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn a_database_from_before_the_format_change_migrates_and_reads_as_before() {
        if std::env::var_os("BATON_WRITE_MIGRATION_FIXTURE").is_some() {
            write_the_migration_fixture();
        }
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir().join("snapshot.json")).expect("snapshot"))
                .expect("snapshot is JSON");
        let now = expected["now"].as_i64().expect("now");
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("baton.db");
        std::fs::copy(dir().join("baton-v1.db"), &path).expect("copy the fixture");
        let cx = Case::<Harness>::open_with(suite_rules(), now, |setup| {
            let options =
                SqliteOptions::default().clock(setup.clock).rules(setup.rules).listener(setup.listener);
            let store = SqliteStore::open(&path, options.clone()).expect("open and migrate the fixture");
            Harness { store, options, dir: tempfile::tempdir().expect("temp dir") }
        });
        let found = snapshot(cx.store(), now);
        assert!(found == expected, "reads differ after migration:\n{}", first_difference(&expected, &found));
        let problems = check_migrated(cx.store());
        assert!(problems.is_empty(), "{problems:#?}");
        continue_after_migration(&cx);
    }

    /// Writes the fixture (with `BATON_WRITE_MIGRATION_FIXTURE=1`, only on
    /// the last commit before a storage format change; the test then checks
    /// what it wrote):
    /// `BATON_WRITE_MIGRATION_FIXTURE=1 cargo nextest run -p baton-sqlite -E 'test(migration_fixture)'`.
    fn write_the_migration_fixture() {
        let cx = Case::<Harness>::open(suite_rules());
        populate(&cx);
        let snap = snapshot(cx.store(), cx.now());
        std::fs::create_dir_all(dir()).expect("fixtures dir");
        let dest = dir().join("baton-v1.db");
        let _ = std::fs::remove_file(&dest);
        baton_sqlite::backup(cx.harness().store.path(), &dest).expect("backup");
        let text = serde_json::to_string_pretty(&snap).expect("json") + "\n";
        std::fs::write(dir().join("snapshot.json"), text).expect("write snapshot");
    }
}
