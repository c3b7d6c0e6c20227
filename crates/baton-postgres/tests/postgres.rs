//! The PostgreSQL store's tests, in one binary. Goal: the store keeps the
//! engine's promises on a real database, alone and with other stores
//! (replicas) on the same schema: the same protocol as every store (the
//! conformance suite and the model test), migrations that run once however
//! many replicas start, claims that never lease one task twice across
//! replicas, wake-ups that cross replicas, a singleton duty that moves, and
//! a lost connection answered `Unavailable` and then recovered from.
//!
//! Method: each test works in a schema of its own (`support::Schema`) in the
//! database named by `BATON_TEST_DATABASE_URL`, which must be set: an
//! unreachable database fails the run, it does not skip it.

#[path = "postgres/support.rs"]
mod support;

use baton_core::event::verify_chain;
use baton_core::store::ReadyListener;
use baton_core::{Alert, Error, StageName, Store, TaskId};
use baton_postgres::{DUTY_PURGE, PostgresOptions, PostgresStore, SCHEMA_VERSION};
use baton_testkit::suite::{act_op, claim_op, handoff_to, new_task, release};
use baton_testkit::{Setup, SuiteStore, block_on};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Schema, admin, scalar};

// ---------------------------------------------------------------------------
// The conformance suite every store passes

/// A fresh schema per case; the store on a manual clock.
struct Harness {
    store: Option<PostgresStore>,
    options: PostgresOptions,
    /// Dropped after the store (fields drop in order): the schema goes last.
    _schema: Schema,
}

impl SuiteStore for Harness {
    type Store = PostgresStore;

    fn open(setup: Setup) -> Self {
        let schema = Schema::new();
        // LISTEN on, as in production: it turns the ready cursors on, so the
        // suite and the model test check claims that start from a cursor.
        let options =
            schema.options().clock(setup.clock).rules(setup.rules).listener(setup.listener).listen(true);
        let store = PostgresStore::open(options.clone()).expect("open");
        Self { store: Some(store), options, _schema: schema }
    }

    fn store(&self) -> &PostgresStore {
        self.store.as_ref().expect("the store is open")
    }

    fn alerts(&self) -> Option<Vec<Alert>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = block_on(self.store().alerts(after, 100)).expect("alerts");
            let Some((last, _)) = page.last() else { return Some(all) };
            after = *last;
            all.extend(page.into_iter().map(|(_, alert)| alert));
        }
    }

    fn reopen(mut self) -> Self {
        if let Some(store) = self.store.take() {
            store.close();
        }
        self.store = Some(PostgresStore::open(self.options.clone()).expect("reopen"));
        self
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.close();
        }
    }
}

baton_testkit::store_suite!(Harness);

mod model {
    //! The model test over the PostgreSQL store: the same reference model as
    //! the memory and SQLite stores' (see `baton_testkit::model`).
    use super::Harness;
    use baton_testkit::model::ModelTest;
    use proptest_state_machine::prop_state_machine;

    prop_state_machine! {
        #![proptest_config(proptest::test_runner::Config { cases: 32, failure_persistence: None, ..Default::default() })]
        #[test]
        fn postgres_store_follows_the_model(sequential 1..60 => ModelTest<Harness>);
    }
}

// ---------------------------------------------------------------------------
// Migrations

#[test]
fn migrating_twice_changes_nothing() {
    let schema = Schema::new();
    let options = schema.options();
    let rt = support::runtime();
    let first = rt.block_on(baton_postgres::migrate(&options)).expect("migrate");
    assert_eq!((first.found, first.supported), (SCHEMA_VERSION, SCHEMA_VERSION));
    let second = rt.block_on(baton_postgres::migrate(&options)).expect("migrate again");
    assert!(second.is_current());
    assert_eq!(scalar(&schema.name, "SELECT count(*) FROM schema_migrations"), i64::from(SCHEMA_VERSION));
    let checked = rt.block_on(baton_postgres::check(&options)).expect("check");
    assert_eq!(checked, second);
    // A store opened on it migrates nothing either.
    drop(PostgresStore::open(options).expect("open"));
    assert_eq!(scalar(&schema.name, "SELECT count(*) FROM schema_migrations"), i64::from(SCHEMA_VERSION));
}

/// A schema made before the stage counters (version 7) gets them from a
/// full recount when migration 9 runs.
#[test]
fn migrating_an_older_schema_counts_its_live_tasks() {
    let schema = Schema::new();
    let store = PostgresStore::open(schema.options()).expect("open");
    for i in 0..6 {
        block_on(store.submit(new_task(["a", "b"][i % 2], &i.to_string()))).expect("submit");
    }
    let grants = block_on(store.execute(claim_op("w", &["a"], 2), None)).expect("claim").into_grants();
    let grants = grants.expect("grants");
    block_on(store.execute(act_op(&grants[0], handoff_to("b")), None)).expect("hand off");
    let before = block_on(store.stage_gauges_recount(10)).expect("recount");
    store.close();
    admin(&format!(
        "DROP TABLE {s}.archived, {s}.archive_chunks; DROP INDEX {s}.tasks_finished, {s}.handoff_tasks_task,
         {s}.alerts_task, {s}.deliveries_notice;
         CREATE TABLE {s}.handoffs (id uuid PRIMARY KEY, task uuid NOT NULL, body text NOT NULL);
         INSERT INTO {s}.handoffs SELECT id, task, '{{}}' FROM {s}.handoff_tasks; DROP TABLE {s}.handoff_tasks;
         DROP TABLE {s}.stage_counts; ALTER TABLE {s}.tasks DROP COLUMN ready_since;
         DELETE FROM {s}.schema_migrations WHERE version >= 9;",
        s = schema.name
    ));
    let store = PostgresStore::open(schema.options()).expect("reopen migrates");
    let counted = block_on(store.stage_gauges(10)).expect("gauges");
    assert_eq!(counted, before, "migration 9 counts what is live");
    assert_eq!(counted.iter().map(|g| (g.ready, g.held)).collect::<Vec<_>>(), [(1, 1), (4, 0)]);
    store.close();
}

#[test]
fn replicas_starting_together_migrate_once() {
    let schema = Schema::new();
    let options = schema.options();
    let statuses: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let options = options.clone();
                s.spawn(move || support::runtime().block_on(baton_postgres::migrate(&options)))
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("migrating thread")).collect()
    });
    for status in statuses {
        assert!(status.expect("every replica's migrate succeeds").is_current());
    }
    assert_eq!(scalar(&schema.name, "SELECT count(*) FROM schema_migrations"), i64::from(SCHEMA_VERSION));
}

#[test]
fn check_reports_an_empty_and_a_newer_schema() {
    let schema = Schema::new();
    let options = schema.options();
    let rt = support::runtime();
    admin(&format!("CREATE SCHEMA {}", schema.name));
    let empty = rt.block_on(baton_postgres::check(&options)).expect("check");
    assert_eq!(empty.found, 0);
    assert!(!empty.is_current());
    rt.block_on(baton_postgres::migrate(&options)).expect("migrate");
    admin(&format!("INSERT INTO {}.schema_migrations (version, name) VALUES (999, 'future')", schema.name));
    let ahead = rt.block_on(baton_postgres::check(&options)).expect("check");
    assert_eq!(ahead.found, 999);
    let refused = PostgresStore::open(options).err().expect("a newer schema is refused");
    assert!(refused.to_string().contains("newer than this binary"), "{refused}");
}

// ---------------------------------------------------------------------------
// Replicas on one schema

#[test]
fn replicas_claiming_concurrently_never_lease_one_task_twice() {
    const TASKS: usize = 120;
    let schema = Schema::new();
    // LISTEN on: each replica's claims start from its ready cursors, and
    // rows the other replica locked are passed by one and taken by the other.
    let a = PostgresStore::open(schema.options().replica("a").listen(true)).expect("open a");
    let b = PostgresStore::open(schema.options().replica("b").listen(true)).expect("open b");
    let ids: HashSet<TaskId> = (0..TASKS)
        .map(|i| block_on(a.submit(new_task("s", &i.to_string()))).expect("submit").task.id)
        .collect();
    let grants: Vec<(TaskId, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let store = if w % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let op = claim_op(&format!("w{w}"), &["s"], 3);
                        let got =
                            block_on(store.execute(op, None)).expect("claim").into_grants().expect("grants");
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.iter().map(|g| (g.task.id, g.epoch)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let leased: HashSet<TaskId> = grants.iter().map(|(id, _)| *id).collect();
    assert_eq!(grants.len(), TASKS, "each task leased exactly once across both replicas");
    assert_eq!(leased, ids);
    assert!(grants.iter().all(|(_, epoch)| *epoch == 1));
    for id in ids {
        let events = block_on(b.history(id)).expect("history");
        verify_chain(&events).unwrap_or_else(|(i, why)| panic!("task {id}: event {i}: {why}"));
        assert_eq!(events.len(), 2, "submitted and claimed once");
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.batch_max >= 1 && sb.batch_max >= 1, "{sa:?} {sb:?}");
}

#[test]
fn the_database_clock_sets_the_times() {
    let schema = Schema::new();
    let store = PostgresStore::open(schema.options()).expect("open");
    let task = block_on(store.submit(new_task("s", "{}"))).expect("submit").task;
    let db_now = scalar(&schema.name, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
    assert!((db_now - task.created_at).abs() < 10_000, "created at {} vs database {db_now}", task.created_at);
}

/// Records the stages a listener heard.
#[derive(Default)]
struct Heard(Mutex<BTreeSet<String>>);

impl ReadyListener for Heard {
    fn ready(&self, stages: &[StageName]) {
        self.0.lock().expect("not poisoned").extend(stages.iter().map(|s| s.as_str().to_owned()));
    }
}

#[test]
fn ready_work_wakes_listeners_on_other_replicas() {
    let schema = Schema::new();
    let heard_a = Arc::new(Heard::default());
    let heard_b = Arc::new(Heard::default());
    let a = PostgresStore::open(schema.options().replica("a").listen(true).listener(heard_a.clone()))
        .expect("open a");
    let b = PostgresStore::open(schema.options().replica("b").listen(true).listener(heard_b.clone()))
        .expect("open b");
    submit_until_heard(&a, &heard_b, "from-a", "replica b never heard replica a's work");
    assert!(
        heard_a.0.lock().expect("not poisoned").contains("from-a"),
        "a's own listener heard it at commit"
    );
    block_on(b.submit(new_task("from-b", "{}"))).expect("submit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !heard_a.0.lock().expect("not poisoned").contains("from-b") {
        assert!(Instant::now() < deadline, "replica a never heard replica b's work");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Listening starts in the background: submits into `stage` through `from`
/// until `heard` (another replica's listener) has heard of it.
fn submit_until_heard(from: &PostgresStore, heard: &Heard, stage: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        block_on(from.submit(new_task(stage, "{}"))).expect("submit");
        std::thread::sleep(Duration::from_millis(100));
        if heard.0.lock().expect("not poisoned").contains(stage) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
    }
}

/// Waits until `heard` has `stage` (then forgets what it heard).
fn wait_to_hear(heard: &Heard, stage: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !heard.0.lock().expect("not poisoned").contains(stage) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    heard.0.lock().expect("not poisoned").clear();
}

#[test]
fn claims_start_from_a_cursor_and_find_rows_made_ready_before_it() {
    let schema = Schema::new();
    let heard = Arc::new(Heard::default());
    // One writer, so every claim below meets the same cursor.
    let a =
        PostgresStore::open(schema.options().replica("a").writers(1).listen(true).listener(heard.clone()))
            .expect("open a");
    let b = PostgresStore::open(schema.options().replica("b").listen(true)).expect("open b");
    // Listening sends the cursors to the head when it starts: wait for it.
    submit_until_heard(&b, &heard, "warm-up", "replica a never heard replica b");
    let ids: Vec<TaskId> =
        (0..6).map(|i| block_on(a.submit(new_task("s", &i.to_string()))).expect("submit").task.id).collect();
    let claim = |agent: &str, max: usize| -> Vec<baton_core::Grant> {
        block_on(a.execute(claim_op(agent, &["s"], max), None)).expect("claim").into_grants().expect("grants")
    };
    let taken = |grants: &[baton_core::Grant]| grants.iter().map(|g| g.task.id).collect::<Vec<_>>();
    let first = claim("x", 2);
    assert_eq!(taken(&first), ids[..2]);
    let before = a.stats();
    assert_eq!(taken(&claim("x", 2)), ids[2..4], "the next two, read from the cursor");
    let after = a.stats();
    assert_eq!(after.ready_reads_from_cursor - before.ready_reads_from_cursor, 1, "{after:?}");

    // A released task waits before the cursor again: the next claim takes it first.
    let released = block_on(a.execute(act_op(&first[0], release()), None)).expect("release");
    assert!(released.into_acted().is_some());
    assert_eq!(taken(&claim("y", 1)), ids[..1], "the released task, oldest first");

    // Another replica's task, earlier in claim order (a higher priority):
    // its NOTIFY moves this replica's cursor back to it.
    heard.0.lock().expect("not poisoned").clear();
    let urgent = block_on(b.submit(new_task("s", "{}").priority(5))).expect("submit").task.id;
    wait_to_hear(&heard, "s", "replica a never heard replica b's urgent task");
    assert_eq!(taken(&claim("y", 1)), [urgent], "the other replica's urgent task first");
    assert_eq!(taken(&claim("y", 3)), ids[4..6], "then the rest, in order");
    assert!(claim("y", 1).is_empty());
}

#[test]
fn after_concurrent_work_on_two_replicas_every_ready_task_is_claimable_from_either() {
    const TASKS: usize = 60;
    let schema = Schema::new();
    // Releases count as attempts: let a task take as many as the test makes.
    let mut rules = baton_core::Rules::default();
    rules.policies.default.max_attempts = 10_000;
    let (heard_a, heard_b) = (Arc::new(Heard::default()), Arc::new(Heard::default()));
    let open = |name: &str, heard: &Arc<Heard>| {
        let options =
            schema.options().replica(name).rules(rules.clone()).listen(true).listener(heard.clone());
        PostgresStore::open(options).expect("open")
    };
    let (a, b) = (open("a", &heard_a), open("b", &heard_b));
    submit_until_heard(&a, &heard_b, "warm-up-a", "replica b never heard replica a");
    submit_until_heard(&b, &heard_a, "warm-up-b", "replica a never heard replica b");
    let stores = [&a, &b];
    for i in 0..TASKS {
        let task = new_task("s", &i.to_string()).priority(i32::try_from(i % 4).expect("small"));
        block_on(stores[i % 2].submit(task)).expect("submit");
    }
    let other = |stage: &StageName| if stage.as_str() == "s" { "t" } else { "s" };
    let claim_all = |store: &PostgresStore, agent: &str, max: usize| {
        let op = claim_op(agent, &["s", "t"], max);
        block_on(store.execute(op, None)).expect("claim").into_grants().expect("grants")
    };
    // Six workers on both replicas claim a few tasks at a time and release
    // each or hand it to the other stage: every claim passes rows the
    // others hold, and rows come back ready behind every cursor.
    std::thread::scope(|scope| {
        for w in 0..6u64 {
            scope.spawn(move || {
                let mut seed = w.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                for _ in 0..40 {
                    let store = stores[usize::from(next() % 2 == 0)];
                    let max = usize::try_from(next() % 3 + 1).expect("small");
                    for grant in claim_all(store, &format!("w{w}"), max) {
                        let action =
                            if next() % 5 < 2 { release() } else { handoff_to(other(&grant.task.stage)) };
                        block_on(store.execute(act_op(&grant, action), None)).expect("act");
                    }
                }
            });
        }
    });
    // Now every task waits, ready. Each replica, whichever writer takes the
    // call, must find all of them at once: no cursor may have passed one.
    for round in 0..8 {
        for store in stores {
            std::thread::sleep(Duration::from_millis(150)); // the other replica's NOTIFY
            let grants = claim_all(store, "checker", TASKS);
            assert_eq!(grants.len(), TASKS, "round {round}: a ready task was passed over");
            for grant in &grants {
                let action = handoff_to(other(&grant.task.stage));
                block_on(store.execute(act_op(grant, action), None)).expect("hand off");
            }
        }
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.ready_reads_from_cursor > 0 && sb.ready_reads_from_cursor > 0, "{sa:?} {sb:?}");
    // The counters both replicas' writers kept, each in its own slot rows,
    // add up to a recount of the tasks.
    let counted = block_on(a.stage_gauges(10)).expect("gauges");
    assert_eq!(counted, block_on(b.stage_gauges_recount(10)).expect("recount"));
    assert_eq!(counted.iter().map(|g| g.ready).sum::<u64>(), TASKS as u64 + 2, "and the two warm-ups");
}

#[test]
fn the_singleton_duty_moves_when_its_holder_goes() {
    let schema = Schema::new();
    let lease = Duration::from_millis(900);
    let holder = |store: &PostgresStore| -> Option<String> {
        let duties = block_on(store.duties()).expect("duties");
        duties.into_iter().find(|d| d.name == DUTY_PURGE).map(|d| d.holder)
    };
    let a = PostgresStore::open(schema.options().replica("a").duty_lease(lease)).expect("open a");
    assert_eq!(block_on(a.purge_requests(10)).expect("purge"), 0);
    assert_eq!(holder(&a).as_deref(), Some("a"), "the first replica takes the duty");
    let b = PostgresStore::open(schema.options().replica("b").duty_lease(lease)).expect("open b");
    std::thread::sleep(lease * 2);
    assert_eq!(holder(&b).as_deref(), Some("a"), "a renews it; b does not take it over");
    // A clean close releases the duty at once; b takes it at its next
    // renewal. (A replica killed with SIGKILL lets its lease run out: the
    // binary's replica test covers that.)
    a.close();
    let deadline = Instant::now() + lease * 4;
    while holder(&b).as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b never took the duty over");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_server_duties_are_held_by_one_replica_at_a_time() {
    use baton_core::SingletonDuty;
    let schema = Schema::new();
    let lease = Duration::from_millis(900);
    let a = PostgresStore::open(schema.options().replica("a").duty_lease(lease)).expect("open a");
    let b = PostgresStore::open(schema.options().replica("b").duty_lease(lease)).expect("open b");
    for duty in [SingletonDuty::Metrics, SingletonDuty::Webhooks] {
        assert!(block_on(a.holds_duty(duty)).expect("ask a"), "{duty:?}: a asked first and holds it");
        assert!(!block_on(b.holds_duty(duty)).expect("ask b"), "{duty:?}: b does not, while a lives");
    }
    a.close();
    let deadline = Instant::now() + lease * 4;
    for duty in [SingletonDuty::Metrics, SingletonDuty::Webhooks] {
        while !block_on(b.holds_duty(duty)).expect("ask b") {
            assert!(Instant::now() < deadline, "{duty:?} never moved to b");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_lost_connection_is_unavailable_then_recovered() {
    let schema = Schema::new();
    let store = PostgresStore::open(schema.options().io_timeout(Duration::from_secs(5))).expect("open");
    let id = block_on(store.submit(new_task("s", "{}"))).expect("submit").task.id;
    let stats = store.stats();
    // Cut every connection of this store (the test's schema is its
    // application name) from the server side, as a restart would.
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
        schema.name
    ));
    // Calls may fail while the store notices; none may panic or answer stale.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = block_on(store.get(id));
        let write = block_on(store.submit(new_task("s", "{}")));
        match (&read, &write) {
            (Ok(Some(_)), Ok(_)) => break,
            (Ok(None), _) => panic!("a read after reconnecting lost the task"),
            _ => {
                for e in [read.err(), write.err()].into_iter().flatten() {
                    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
                }
            }
        }
        assert!(Instant::now() < deadline, "the store did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(store.stats().connects > stats.connects, "the writer reconnected: {:?}", store.stats());
}

#[test]
fn an_unreachable_database_is_unavailable_not_a_panic() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = PostgresOptions::new(&format!("postgres://postgres@127.0.0.1:{port}/test"))
        .expect("url")
        .io_timeout(Duration::from_secs(2));
    let refused = PostgresStore::open(options).err().expect("no database, no store");
    assert!(refused.to_string().contains("cannot connect"), "{refused}");
}

// ---------------------------------------------------------------------------
// Migration fixture: a database written by an earlier version

mod migration_fixture {
    //! `tests/fixtures/baton-v1.sql` is a plain-SQL `pg_dump` of a schema
    //! written by Baton before the storage format changed (schema 9), with
    //! `snapshot.json` beside it holding what that version read back
    //! (`baton_testkit::fixture`). The test restores it into a schema of its
    //! own with `psql`, opens it with the current code (which migrates it),
    //! and requires the same reads, every chain verified, every keyed request
    //! replayed, and new changes chained onto old events.
    use super::Harness;
    use super::support::{self, Schema};
    use baton_postgres::PostgresStore;
    use baton_testkit::fixture::{
        check_migrated, continue_after_migration, first_difference, populate, snapshot,
    };
    use baton_testkit::{Case, suite_rules};
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    /// The schema name inside the committed dump, replaced on restore.
    const DUMPED_SCHEMA: &str = "baton_fixture_v1";

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn psql(sql: &str) {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &support::url(), "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql runs (PostgreSQL's client tools are installed with the server)");
        child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("write the dump");
        assert!(child.wait().expect("psql exits").success(), "psql failed to restore the fixture");
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
        let schema = Schema::new();
        let dump = std::fs::read_to_string(dir().join("baton-v1.sql")).expect("the dump");
        psql(&dump.replace(DUMPED_SCHEMA, &schema.name));
        let cx = Case::<Harness>::open_with(suite_rules(), now, move |setup| {
            let options = schema.options().clock(setup.clock).rules(setup.rules).listener(setup.listener);
            let store = PostgresStore::open(options.clone()).expect("open and migrate the fixture");
            Harness { store: Some(store), options, _schema: schema }
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
    /// `BATON_WRITE_MIGRATION_FIXTURE=1 cargo nextest run -p baton-postgres -E 'test(migration_fixture)'`.
    fn write_the_migration_fixture() {
        let cx = Case::<Harness>::open(suite_rules());
        populate(&cx);
        let snap = snapshot(cx.store(), cx.now());
        let name = cx.harness()._schema.name.clone();
        let out = Command::new("pg_dump")
            .args(["--no-owner", "--no-privileges", "--schema", &name, "-d", &support::url()])
            .output()
            .expect("pg_dump runs");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        let dump = String::from_utf8(out.stdout).expect("UTF-8 dump").replace(&name, DUMPED_SCHEMA);
        std::fs::create_dir_all(dir()).expect("fixtures dir");
        std::fs::write(dir().join("baton-v1.sql"), dump).expect("write the dump");
        let text = serde_json::to_string_pretty(&snap).expect("json") + "\n";
        std::fs::write(dir().join("snapshot.json"), text).expect("write snapshot");
    }
}
