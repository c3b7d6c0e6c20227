//! `baton serve` on PostgreSQL, one replica and three.
//!
//! Goal: `baton db migrate|check` report and fix a schema's version;
//! `baton serve --database-url postgres://...` serves the task commands; and
//! three replicas on one schema share a 3-stage pipeline without duplicated
//! work: every submitted task done, no task completed twice, every event
//! chain verified and replayed to its row, also when one replica is killed
//! with SIGKILL mid-run (its leases expire and are claimed again through the
//! others; the singleton duty it held moves to another replica); and a
//! replica that loses its database answers 503 (readiness and API, never a
//! stale read) and serves again by itself when the database is back; and
//! the same pipeline on a private cluster that is restarted mid-run.
//!
//! Method: the real binary against the database of `BATON_TEST_DATABASE_URL`
//! (which must be set: the tests fail, never skip, without it), each test in
//! a schema of its own dropped at the end. Agents and submitters are HTTP
//! clients (reqwest) on a tokio runtime; the final checks read the schema
//! through a `PostgresStore` and the test kit's history checker. The outage
//! runs the replica through a TCP proxy the test cuts and heals.

use baton_core::{EventKind, Store};
use baton_postgres::{DUTY_PURGE, PostgresOptions, PostgresStore};
use baton_testkit::{block_on, check_store};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
const URL_VAR: &str = "BATON_TEST_DATABASE_URL";
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set. These tests need PostgreSQL: set, for example, \
             {URL_VAR}=postgres://postgres@127.0.0.1:5432/test (.ci/run does)"
        )
    })
}

/// A schema of the test's own, dropped at the end.
/// Its name, and the URL of its database.
pub(crate) struct Schema(pub(crate) String, pub(crate) String);

impl Schema {
    pub(crate) fn new(tag: &str) -> Self {
        Self::on(url(), tag)
    }

    pub(crate) fn on(url: String, tag: &str) -> Self {
        let random = uuid::Uuid::now_v7().simple().to_string();
        Self(format!("baton_cli_{tag}_{}_{}", std::process::id(), &random[random.len() - 6..]), url)
    }

    pub(crate) fn store(&self) -> PostgresStore {
        let options =
            PostgresOptions::new(&self.1).expect("url").schema(self.0.clone()).readers(4).listen(false);
        PostgresStore::open(options).expect("open the schema")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0);
        let url = self.1.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dropped = rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await
        });
        if let Err(e) = dropped {
            eprintln!("could not drop schema {}: {e}", self.0);
        }
    }
}

fn baton(dir: &Path) -> Command {
    wrapped(dir, &[])
}

/// `baton` run through `wrapper` (`ip netns exec NAME`; empty: directly),
/// in `dir`, without the variables that would change its settings.
pub(crate) fn wrapped(dir: &Path, wrapper: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BATON);
            c
        }
        None => Command::new(BATON),
    };
    command.current_dir(dir);
    for var in [
        "BATON_ADDRESS",
        "BATON_AGENT",
        "BATON_TOKEN",
        "BATON_LISTEN",
        "BATON_DATA_DIR",
        "BATON_DATABASE_URL",
        "BATON_DATABASE_SCHEMA",
        "DATABASE_URL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

#[track_caller]
fn check(dir: &Path, args: &[&str], code: i32) -> (String, String) {
    let out = baton(dir).args(args).output().expect("run baton");
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert_eq!(out.status.code(), Some(code), "baton {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

/// A running `baton serve` on PostgreSQL.
pub(crate) struct Replica {
    child: Child,
    pub(crate) address: String,
    /// Its name among the replicas, as printed in its banner.
    name: String,
    pub(crate) admin_token: Option<String>,
}

impl Replica {
    pub(crate) fn start(dir: &Path, schema: &Schema, extra: &[&str]) -> Self {
        let mut command = baton(dir);
        command
            .args(["serve", "--database-url", &schema.1, "--schema", &schema.0, "--listen", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(dir, command)
    }

    /// Starts `command` (a `baton serve`), its log appended to `serve.log`
    /// in `dir`, and reads its banner.
    pub(crate) fn spawn(dir: &Path, mut command: Command) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start baton serve");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut address, mut name, mut admin_token) = (None, None, None);
        loop {
            let line = lines.next().expect("baton serve printed its banner").expect("utf-8");
            let line = line.trim();
            if let Some(url) = line.strip_prefix("API:") {
                address = Some(url.trim().trim_end_matches("/v1").to_owned());
            }
            if let Some((_, replica)) = line.split_once("replica ") {
                name = Some(replica.trim_end_matches(')').to_owned());
            }
            if line.starts_with("baton_") {
                admin_token = Some(line.to_owned());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            address: address.expect("an API line"),
            name: name.expect("a database line naming the replica"),
            admin_token,
        }
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL baton serve");
        self.child.wait().expect("reap");
    }

    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "baton serve exits 0 after SIGTERM: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "baton serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn db_check_and_migrate_report_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let schema = Schema::new("db");
    let url = url();
    let at = ["--database-url", url.as_str(), "--schema", schema.0.as_str()];
    let with = |verb: &'static str| [&["db", verb][..], &at[..]].concat();
    let (out, err) = check(dir, &with("check"), 1);
    assert!(out.contains("schema version 0") && out.contains("behind"), "{out}");
    assert!(err.contains("baton db migrate"), "{err}");
    let (out, _) = check(dir, &with("migrate"), 0);
    assert!(out.contains("current"), "{out}");
    let (out, _) = check(dir, &with("check"), 0);
    assert!(out.contains(&format!("schema version {}", baton_postgres::SCHEMA_VERSION)), "{out}");
    let (_, err) = check(dir, &["db", "check", "--database-url", "mysql://x"], 1);
    assert!(err.contains("postgres://"), "{err}");
}

#[test]
fn serve_on_postgres_runs_the_task_commands() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let schema = Schema::new("serve");
    let serve = Replica::start(dir, &schema, &[]);
    let token = serve.admin_token.clone().expect("an empty schema gets an admin token");
    let address = serve.address.clone();
    let run = |args: &[&str], code: i32| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--address", &address, "--token", &token]);
        check(dir, &all, code)
    };
    let json = |text: &str| -> Value { serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")) };
    let (out, _) = run(&["task", "submit", "--stage", "intake", "--payload", r#"{"n":1}"#, "-o", "json"], 0);
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    let (out, _) =
        run(&["task", "claim", "--agent", "admin", "--stage", "intake", "--wait", "5s", "-o", "json"], 0);
    assert_eq!(json(&out)["leases"][0]["task"], id.as_str());
    let (out, _) =
        run(&["task", "handoff", &id, "--agent", "admin", "--epoch", "1", "--to", "review", "-o", "json"], 0);
    assert_eq!(json(&out)["task"]["stage"], "review");
    let (out, _) =
        run(&["task", "claim", "--agent", "admin", "--stage", "review", "--wait", "5s", "-o", "json"], 0);
    let epoch = json(&out)["leases"][0]["epoch"].as_u64().expect("a lease").to_string();
    let (_, err) = run(&["task", "complete", &id, "--agent", "admin", "--epoch", "1"], 1);
    assert!(err.contains("lease_lost"), "a stale epoch is refused: {err}");
    let (out, _) = run(&["task", "complete", &id, "--agent", "admin", "--epoch", &epoch], 0);
    assert!(out.starts_with(&format!("completed task {id}: now done")), "{out}");
    let (out, _) = run(&["task", "history", &id, "-o", "json"], 0);
    let kinds: Vec<String> = json(&out)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["submitted", "claimed", "handed_off", "claimed", "completed"]);
    serve.stop();
    // Every replica's duties were released at the clean stop. (The store
    // opened here to look takes duties of its own as it opens: leave those out.)
    let store = schema.store();
    let mut duties = block_on(store.duties()).expect("duties");
    duties.retain(|d| d.holder != store.replica());
    assert!(duties.is_empty(), "{duties:?}");
    let report = check_store(&store).unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
    assert_eq!(report.tasks, 1, "{report:?}");
}

// ---------------------------------------------------------------------------
// Three replicas

/// Tasks through the pipeline; set BATON_REPLICA_TASKS to change.
const TASKS: usize = 5_000;
const STAGES: [&str; 3] = ["s1", "s2", "s3"];
const AGENTS: usize = 16;
const SUBMITTERS: usize = 4;
const CLAIM_MAX: usize = 8;
/// Short leases, so a killed replica's leases expire quickly.
const LEASE_MS: u64 = 3_000;
/// The run (first submit to last completion) fails after this.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

fn tasks() -> usize {
    std::env::var("BATON_REPLICA_TASKS").ok().and_then(|n| n.parse().ok()).unwrap_or(TASKS)
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged submits.
    submitted: HashSet<String>,
    /// Accepted completions per task (must be 1 each).
    completions: HashMap<String, usize>,
    /// Refusals of stale holder calls (a lease that expired under the agent).
    stale: usize,
    /// Calls answered 503 or not answered at all.
    unavailable: usize,
}

struct Run {
    addresses: Vec<String>,
    /// Replicas that are down (killed): clients move to the next one.
    down: Vec<AtomicBool>,
    ledger: Mutex<Ledger>,
    completed: AtomicUsize,
    http: reqwest::Client,
}

impl Run {
    /// The address of replica `i`, or of the next live one.
    fn address(&self, i: usize) -> &str {
        let n = self.addresses.len();
        let live =
            (0..n).map(|k| (i + k) % n).find(|j| !self.down[*j].load(Ordering::Relaxed)).unwrap_or(i % n);
        &self.addresses[live]
    }

    /// POSTs `body` to replica `home` (or the next live one), retrying on
    /// transport errors and 503; other answers return. With `key`, as an
    /// `Idempotency-Key`: a retry after a lost answer (a replica killed
    /// between its commit and its answer) gets the first answer from any
    /// replica, since the key's record is in the shared database.
    async fn post(
        &self,
        home: usize,
        token: &str,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut attempt = 0;
        loop {
            let url = format!("{}{path}", self.address(home + attempt));
            let mut request = self.http.post(&url).bearer_auth(token).json(body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let sent = request.send().await;
            match sent {
                Ok(response) if response.status().as_u16() != 503 => {
                    let status = response.status().as_u16();
                    let value = response.json().await.unwrap_or(Value::Null);
                    return (status, value);
                }
                _ => {
                    self.ledger.lock().unwrap().unavailable += 1;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Creates the agents through the admin API; returns their tokens.
async fn agents(run: &Run, admin: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..AGENTS {
        let name = format!("agent{i}");
        let (status, body) = run
            .post(0, admin, "/v1/principals", &json!({"name": name, "role": "agent", "stages": STAGES}), None)
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = run.post(0, admin, "/v1/tokens", &json!({"principal": name}), None).await;
        assert_eq!(status, 201, "{body}");
        out.push((name, body["token"].as_str().expect("a token").to_owned()));
    }
    out
}

async fn submitter(run: Arc<Run>, admin: String, me: usize, count: usize) {
    for n in 0..count {
        let key = format!("t{me}-{n}");
        let body = json!({"stage": STAGES[0], "payload": {"n": n}, "idempotency_key": key});
        let (status, answer) = run.post(me, &admin, "/v1/tasks", &body, None).await;
        assert!(status == 201 || status == 200, "submit: {status} {answer}");
        run.ledger.lock().unwrap().submitted.insert(answer["id"].as_str().expect("an id").to_owned());
    }
}

async fn agent(run: Arc<Run>, me: usize, name: String, token: String, total: usize, stop: Arc<AtomicBool>) {
    let claim =
        json!({"agent": name, "stages": STAGES, "max": CLAIM_MAX, "wait_ms": 500, "lease_ms": LEASE_MS});
    while !stop.load(Ordering::Relaxed) && run.completed.load(Ordering::Relaxed) < total {
        let (status, answer) = run.post(me, &token, "/v1/claims", &claim, None).await;
        assert_eq!(status, 200, "claim: {answer}");
        for lease in answer["leases"].as_array().cloned().unwrap_or_default() {
            let task = lease["task"].as_str().expect("a task").to_owned();
            let epoch = lease["epoch"].as_u64().expect("an epoch");
            let (path, body) = match lease["stage"].as_str() {
                Some("s1") => ("handoff", json!({"agent": name, "epoch": epoch, "to_stage": "s2"})),
                Some("s2") => ("handoff", json!({"agent": name, "epoch": epoch, "to_stage": "s3"})),
                _ => ("complete", json!({"agent": name, "epoch": epoch})),
            };
            let key = format!("{task}:{epoch}:{path}");
            let (status, answer) =
                run.post(me, &token, &format!("/v1/tasks/{task}/{path}"), &body, Some(&key)).await;
            match status {
                200 => {
                    if path == "complete" {
                        *run.ledger.lock().unwrap().completions.entry(task).or_default() += 1;
                        run.completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The lease ran out (a replica died with our answer, or we were
                // slow): the task is someone else's now.
                409 | 422 => run.ledger.lock().unwrap().stale += 1,
                _ => panic!("{path} {task}: {status} {answer}"),
            }
        }
    }
}

/// Who holds the purge duty now, read from the database.
fn duty_holder(store: &PostgresStore) -> Option<String> {
    let duties = block_on(store.duties()).ok()?;
    duties.into_iter().find(|d| d.name == DUTY_PURGE).map(|d| d.holder)
}

/// Runs the pipeline on three replicas; with `kill`, SIGKILLs the replica
/// holding the purge duty once `kill` of the tasks are completed (a share).
fn pipeline(tag: &str, kill: Option<f64>) {
    pipeline_on(Schema::new(tag), tasks(), kill, None);
}

/// The pipeline on `schema`; with `restart`, restarts that PostgreSQL
/// (immediate stop, then start) once that share of the tasks is completed.
fn pipeline_on(schema: Schema, total: usize, kill: Option<f64>, restart: Option<(f64, &Cluster)>) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Few connections per replica: the database serves other tests too.
    let duty = ["--duty-lease", "2s", "--writers", "2"];
    let first = Replica::start(dir, &schema, &duty);
    let admin = first.admin_token.clone().expect("the first replica creates the admin");
    let mut replicas = vec![first, Replica::start(dir, &schema, &duty), Replica::start(dir, &schema, &duty)];
    let observer = schema.store();
    let run = Arc::new(Run {
        addresses: replicas.iter().map(|r| r.address.clone()).collect(),
        down: (0..3).map(|_| AtomicBool::new(false)).collect(),
        ledger: Mutex::new(Ledger::default()),
        completed: AtomicUsize::new(0),
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut killed = None;
    let mut restarted = false;
    rt.block_on(async {
        let tokens = agents(&run, &admin).await;
        let mut work = Vec::new();
        for s in 0..SUBMITTERS {
            let count = total / SUBMITTERS + usize::from(s < total % SUBMITTERS);
            work.push(tokio::spawn(submitter(run.clone(), admin.clone(), s, count)));
        }
        for (i, (name, token)) in tokens.into_iter().enumerate() {
            work.push(tokio::spawn(agent(run.clone(), i, name, token, total, stop.clone())));
        }
        let mut watch = tokio::time::interval(Duration::from_millis(50));
        while run.completed.load(Ordering::Relaxed) < total {
            watch.tick().await;
            let done = run.completed.load(Ordering::Relaxed);
            if let Some(share) = kill
                && killed.is_none()
                && done as f64 >= share * total as f64
            {
                let holder = duty_holder(&observer).expect("a replica holds the purge duty");
                let victim = replicas.iter().position(|r| r.name == holder).expect("the holder is ours");
                run.down[victim].store(true, Ordering::Relaxed);
                replicas[victim].kill();
                eprintln!("killed replica {victim} ({holder}) at {done} completions");
                killed = Some((victim, holder));
            }
            if let Some((share, cluster)) = restart
                && !restarted
                && done as f64 >= share * total as f64
            {
                let down = Instant::now();
                cluster.restart();
                eprintln!("restarted PostgreSQL at {done} completions in {:?}", down.elapsed());
                restarted = true;
            }
            if started.elapsed() > RUN_DEADLINE {
                stop.store(true, Ordering::Relaxed);
                panic!("the run did not finish within {RUN_DEADLINE:?}: {done} of {total} completed");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in work {
            w.await.expect("a client task");
        }
    });
    let elapsed = started.elapsed();
    if let Some((_, holder)) = &killed {
        // The dead replica's duty lease runs out; a live one takes it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match duty_holder(&observer) {
                Some(now) if &now != holder => break,
                now => assert!(Instant::now() < deadline, "the duty never moved from {holder}: {now:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let ledger = run.ledger.lock().unwrap();
    assert_eq!(restarted, restart.is_some(), "the restart happened");
    eprintln!(
        "{total} tasks x 3 stages on 3 replicas in {elapsed:?} (killed: {killed:?}, database restarted: \
         {restarted}): stale refusals {}, \
         unavailable retries {}",
        ledger.stale, ledger.unavailable
    );
    assert_eq!(ledger.submitted.len(), total, "every submit acknowledged once per key");
    let twice: Vec<_> = ledger.completions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "completions accepted twice: {twice:?}");
    assert_eq!(ledger.completions.len(), total);
    drop(ledger);
    for (i, replica) in replicas.into_iter().enumerate() {
        if killed.as_ref().map(|(victim, _)| *victim) != Some(i) {
            replica.stop();
        }
    }
    // The store's own account: every task done, each chain verified and
    // replayed to its row, custody kept, no stage visit finished twice.
    let report = check_store(&observer).unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
    assert_eq!((report.tasks, report.live), (total, 0), "{report:?}");
    let mut completed_events = 0;
    for id in run.ledger.lock().unwrap().submitted.iter().take(200) {
        let events = block_on(observer.history(id.parse().expect("a task id"))).expect("history");
        completed_events += events.iter().filter(|e| e.kind == EventKind::Completed).count();
    }
    assert_eq!(completed_events, 200.min(total), "one completed event per task");
}

#[test]
fn three_replicas_share_a_pipeline_without_duplicated_work() {
    pipeline("three", None);
}

#[test]
fn a_replica_killed_mid_run_loses_nothing_and_its_duty_moves() {
    pipeline("kill", Some(0.4));
}

// ---------------------------------------------------------------------------
// Losing the database

/// A TCP proxy in front of PostgreSQL that the test can cut and heal: cut,
/// it closes every connection through it and refuses new ones at once (as a
/// partition or a stopped database would look to the replica).
struct Proxy {
    address: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Self {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let pipes =
                    [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())];
                {
                    let mut open = open2.lock().unwrap();
                    open.extend(client.try_clone());
                    open.extend(server.try_clone());
                }
                for (from, to) in pipes {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else { continue };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { address, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `host:port` of the test database's URL.
pub(crate) fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    assert!(host.contains(':'), "{URL_VAR} must name host:port for this test: {url}");
    host.to_owned()
}

/// A replica whose database goes away answers 503 on `/readyz` and on API
/// calls (reads and writes: never a stale answer), and serves again by
/// itself once the database is back.
#[test]
fn a_replica_that_loses_its_database_answers_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let schema = Schema::new("outage");
    let upstream = host_port(&url());
    let proxy = Proxy::start(upstream.clone());
    let proxied = url().replace(&upstream, &proxy.address.to_string());
    let serve = {
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let mut child = baton(dir)
            .args(["serve", "--database-url", &proxied, "--schema", &schema.0, "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start baton serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut address, mut token) = (None, None);
        while token.is_none() || address.is_none() {
            let line = lines.next().expect("a banner line").expect("utf-8");
            let line = line.trim().to_owned();
            if let Some(url) = line.strip_prefix("API:") {
                address = Some(url.trim().trim_end_matches("/v1").to_owned());
            }
            if line.starts_with("baton_") {
                token = Some(line);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Replica { child, address: address.unwrap(), name: String::new(), admin_token: token }
    };
    let token = serve.admin_token.clone().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let call = |method: &str, path: &str, body: Option<Value>| {
        let url = format!("{}{path}", serve.address);
        let mut request = match method {
            "GET" => http.get(&url),
            _ => http.post(&url),
        }
        .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        rt.block_on(async {
            let response = request.send().await.expect("the replica answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let submit = || call("POST", "/v1/tasks", Some(json!({"stage": "s", "payload": {}})));
    let (status, task) = submit();
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(call("GET", "/readyz", None).0, 200);

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("GET", "/readyz", None).0 != 503 {
        assert!(Instant::now() < deadline, "/readyz kept answering 200 without a database");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the token cache (500 ms), every call needs the database.
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..3 {
        let (status, body) = submit();
        assert_eq!(status, 503, "a write without a database: {body}");
        assert_eq!(body["code"], "unavailable", "{body}");
        let (status, body) = call("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(status, 503, "a read without a database is never answered stale: {body}");
    }

    proxy.heal();
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(30);
    loop {
        let ready = call("GET", "/readyz", None).0 == 200;
        if ready && submit().0 == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica did not recover after the database came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("recovered {:?} after the database came back", healed.elapsed());
    let (status, body) = call("GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())), "{body}");
    serve.stop();
}

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`).
pub(crate) fn postgres_bin() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .find(|b| b.join("initdb").exists())
        .expect("initdb under /usr/lib/postgresql/*/bin")
}

/// A private PostgreSQL cluster (initdb into a temp dir, pg_ctl on a free
/// port, run as the `postgres` user when the test runs as root, since initdb
/// refuses root), so a test can restart it without disturbing anyone.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    pub(crate) as_postgres: bool,
}

impl Cluster {
    pub(crate) fn start() -> Self {
        let bin = postgres_bin();
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        if root {
            let owned = Command::new("chown").args(["postgres"]).arg(dir.path()).status().unwrap();
            assert!(owned.success(), "chown the cluster's directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { dir, bin, port, as_postgres: root };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).stdin(Stdio::null()).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"]);
    }

    /// An immediate stop (no checkpoint: crash recovery at the next start),
    /// then a start; returns when it accepts connections again.
    fn restart(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        self.pg_ctl_start();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&path).args(args).output()
        } else {
            Command::new(&path).args(args).output()
        };
    }
}

/// PostgreSQL itself restarted mid-run (immediate stop, crash recovery):
/// clients get 503 or no answer and retry; nothing acknowledged is lost, no
/// completion is accepted twice, every chain verifies and replays.
#[test]
fn a_postgresql_restart_mid_run_loses_nothing_acknowledged() {
    let cluster = Cluster::start();
    pipeline_on(Schema::on(cluster.url(), "restart"), tasks(), None, Some((0.4, &cluster)));
}
