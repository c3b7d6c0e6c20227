//! PostgreSQL fault scenarios: ambiguous commits and a network partition
//! (docs/reliability.md, "PostgreSQL: ambiguous commits and a partition").
//!
//! Goal: a write whose COMMIT reached PostgreSQL but whose answer never came
//! back is answered "unknown" (503), never ok, and the client's retry with
//! the same `Idempotency-Key` gets the original outcome, never a second
//! effect; and a replica cut off from the database and its clients answers
//! nothing stale while the other replicas keep the pipeline going without
//! duplicated work, and serves again after the cut heals.
//!
//! Method: real clients (`baton_client`) record every call in the test
//! kit's `Recorder`; at the end `check_history_against` compares what they
//! were told with the final store and `check_store` checks the chains. Each
//! scenario prints a JSON line with the fault runner's report fields and
//! asserts its own evidence, so a run whose fault did nothing fails:
//! - `ambiguous_commit_cut_by_a_proxy`: a replica in this process reaches
//!   PostgreSQL through a loopback proxy that, when armed, forwards the next
//!   simple-protocol `COMMIT` (a `Q` message: the store sends COMMIT with
//!   `batch_execute`) and then closes both sides before any answer returns.
//! - `ambiguous_commit_by_the_store_failpoint`: the store's test-only
//!   failpoint (`PostgresOptions::lose_commit_answers`) answers a committed
//!   keyed batch `Unavailable`.
//! - `a_partitioned_replica` (root only: network namespaces): a private
//!   cluster and three `baton serve` replicas, each in its own network
//!   namespace on one bridge; a replica's link is taken down (cut from the
//!   database and its clients) for longer than a lease, then brought back.

use super::postgres::{Replica, Schema, host_port, postgres_bin, url, wrapped};
use baton_client::api::{ClaimRequest, CompleteRequest, HandoffRequest, Payload, SubmitRequest};
use baton_client::{Client, Error, Lease};
use baton_core::{EventKind, Store, SystemClock, TaskId};
use baton_postgres::{PostgresOptions, PostgresStore};
use baton_server::{Config, Options, ReadyHub};
use baton_testkit::history::{Call, Granted, Outcome, Recorder, StoreView, check_history_against};
use baton_testkit::{block_on, check_store};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ambiguous calls per kind (submit, handoff, complete) in one run.
const AMBIGUOUS_CYCLES: usize = 3;
/// A keyed retry is repeated at most this often while its outcome stays unknown.
const RETRIES_MAX: usize = 60;
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Leases in the partition run: shorter than a cut, so the cut replica's expire.
const LEASE_MS: u64 = 2_000;
/// How long a partition agent works on a lease before passing it on.
const WORK_MS: u64 = 300;
/// How long each cut lasts.
const CUT: Duration = Duration::from_millis(5_000);
/// A client gives up on a call after this (an unknown outcome).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A definite refusal (a 4xx with a code, or a connection never made) or an
/// unknown outcome (5xx, a timeout, a broken connection).
fn outcome_of(e: &Error) -> Outcome {
    match e {
        Error::Transport { source, .. } if source.is_connect() => {
            Outcome::Fail { code: "unreachable".into() }
        }
        Error::Refused { status, .. } | Error::Protocol { status, .. } if *status >= 500 => {
            Outcome::Unknown { why: e.to_string() }
        }
        Error::Transport { .. } | Error::Unavailable { .. } | Error::Protocol { .. } => {
            Outcome::Unknown { why: e.to_string() }
        }
        other => match other.code() {
            Some(code) => Outcome::Fail { code: code.as_str().to_owned() },
            None => Outcome::Unknown { why: other.to_string() },
        },
    }
}

fn grants(leases: &[Lease]) -> Vec<Granted> {
    leases.iter().map(|l| Granted { task: TaskId(l.task), stage: l.stage.clone(), epoch: l.epoch }).collect()
}

/// p50 and p99 of `ms`.
fn percentiles(mut ms: Vec<u64>) -> (Option<u64>, Option<u64>) {
    ms.sort_unstable();
    let at = |q: f64| (!ms.is_empty()).then(|| ms[((ms.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.99))
}

/// The report line (the fault runner's `FaultReport` fields), printed and returned.
fn report(
    scenario: &str,
    store: &dyn Store,
    recorder: &Recorder,
    faults: usize,
    recoveries: Vec<u64>,
    evidence: Value,
) -> Value {
    let verdict = check_history_against(store, &recorder.entries()).expect("read the store");
    let store_problems = check_store(store).err().unwrap_or_default();
    let (p50, p99) = percentiles(recoveries);
    let line = json!({
        "scenario": scenario,
        "faults_injected": faults,
        "tasks": verdict.tasks,
        "calls": verdict.calls,
        "ok": verdict.ok,
        "failed": verdict.failed,
        "unknown": verdict.unknown,
        "lost": verdict.lost.len(),
        "duplicate_accepted": verdict.duplicate_accepted.len(),
        "stale_accepted": verdict.stale_accepted.len(),
        "stale_refused": verdict.stale_refused,
        "refused_but_applied": verdict.refused_but_applied.len(),
        "unknown_applied": verdict.unknown_applied,
        "unknown_not_applied": verdict.unknown_not_applied,
        "store_problems": store_problems.len(),
        "recovery_ms_p50": p50,
        "recovery_ms_p99": p99,
        "evidence": evidence,
        "problems": verdict.problems().into_iter().chain(store_problems).take(20).collect::<Vec<_>>(),
    });
    eprintln!("{line}");
    assert!(
        verdict.is_ok() && line["store_problems"] == 0,
        "{scenario}: the checkers found problems: {line:#}"
    );
    line
}

// Ambiguous commits

/// A replica in this process: Baton's HTTP server on a `PostgresStore`
/// (auth off) on a loopback port.
struct Local {
    rt: tokio::runtime::Runtime,
    store: Arc<PostgresStore>,
    client: Client,
}

impl Local {
    fn start(options: PostgresOptions) -> Self {
        let hub = Arc::new(ReadyHub::new());
        let store = Arc::new(PostgresStore::open(options.listener(hub.clone())).expect("open the store"));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let config =
            Config { store: store.clone(), clock: Arc::new(SystemClock), hub, options: Options::default() };
        rt.spawn(async move { baton_server::serve(config, listener, std::future::pending()).await });
        let client =
            Client::new(&address).expect("client").with_agent("pgfault").with_request_timeout(CALL_TIMEOUT);
        Self { rt, store, client }
    }
}

/// What an ambiguous run saw.
#[derive(Default)]
struct Ambiguity {
    /// First attempts answered "unknown" while the fault was armed.
    ambiguous: usize,
    /// Of those, how many had committed before the retry (read from the database), and how many not.
    committed: usize,
    not_committed: usize,
    /// From each ambiguous first attempt to its retry's definite answer (ms).
    recoveries: Vec<u64>,
}

/// Runs `AMBIGUOUS_CYCLES` tasks through submit, handoff and complete, each
/// call keyed, arming the fault (`arm`) before each; every call whose
/// answer is unknown is retried with its key until the answer is definite.
fn ambiguous_run(local: &Local, recorder: &Recorder, tag: &str, arm: &dyn Fn()) -> Ambiguity {
    let mut seen = Ambiguity::default();
    let store: &dyn Store = local.store.as_ref();
    for cycle in 0..AMBIGUOUS_CYCLES {
        // Submit.
        let key = format!("{tag}-{cycle}");
        let mut request = SubmitRequest::new("a", Payload::from_json(r#"{"ambiguous":true}"#).unwrap());
        request.idempotency_key = Some(key.clone());
        let first = Instant::now();
        let mut attempt = 0;
        let task = loop {
            if attempt == 0 {
                arm();
            }
            let call = recorder.invoke(0, Some(key.clone()), Call::Submit { key: key.clone() });
            let answer = local.rt.block_on(local.client.submit(&request));
            match answer {
                Ok(done) => {
                    recorder.finish(call, Outcome::Ok { task: Some(TaskId(done.task.id)), grants: vec![] });
                    break TaskId(done.task.id);
                }
                Err(e) => {
                    let outcome = outcome_of(&e);
                    let unknown = matches!(outcome, Outcome::Unknown { .. });
                    recorder.finish(call, outcome);
                    assert!(unknown, "submit {key}: {e}");
                    if attempt == 0 {
                        let view = StoreView::read(store).expect("read the store");
                        seen.note(view.keys.contains_key(&key));
                    }
                }
            }
            attempt += 1;
            assert!(attempt < RETRIES_MAX, "submit {key} stayed unknown");
            std::thread::sleep(RETRY_PAUSE);
        };
        if attempt > 0 {
            seen.recoveries.push(first.elapsed().as_millis() as u64);
        }
        // Hand off a -> b, then complete in b.
        for (stage, next) in [("a", Some("b")), ("b", None)] {
            let claim = ClaimRequest {
                stages: vec![stage.into()],
                max: 1,
                wait_ms: 2_000,
                lease_ms: Some(30_000),
                agent: None,
            };
            let call = recorder.invoke(0, None, Call::Claim { stages: claim.stages.clone() });
            let leases = local.rt.block_on(local.client.claim(&claim)).expect("claim");
            recorder.finish(call, Outcome::Ok { task: None, grants: grants(&leases) });
            let lease = leases.into_iter().next().expect("the task is ready");
            assert_eq!(TaskId(lease.task), task, "only this cycle's task is ready");
            let (verb, kind) = if next.is_some() {
                ("handoff", EventKind::HandedOff)
            } else {
                ("complete", EventKind::Completed)
            };
            let key = format!("{}:{}:{verb}", lease.task, lease.epoch);
            let first = Instant::now();
            let mut attempt = 0;
            loop {
                if attempt == 0 {
                    arm();
                }
                let (call, answer) = match next {
                    Some(to) => {
                        let request = HandoffRequest {
                            epoch: lease.epoch,
                            agent: None,
                            to_stage: to.into(),
                            note: None,
                            findings: None,
                            confidence: None,
                            claim_next: None,
                        };
                        let call =
                            Call::Handoff { task, epoch: lease.epoch, from: stage.into(), to: to.into() };
                        let call = recorder.invoke(0, Some(key.clone()), call);
                        (
                            call,
                            local.rt.block_on(local.client.handoff_keyed(
                                lease.task,
                                &request,
                                Some(key.as_str()),
                            )),
                        )
                    }
                    None => {
                        let request = CompleteRequest { epoch: lease.epoch, ..Default::default() };
                        let call = recorder.invoke(
                            0,
                            Some(key.clone()),
                            Call::Complete { task, epoch: lease.epoch, stage: stage.into() },
                        );
                        (
                            call,
                            local.rt.block_on(local.client.complete_keyed(
                                lease.task,
                                &request,
                                Some(key.as_str()),
                            )),
                        )
                    }
                };
                match answer {
                    Ok(_) => {
                        recorder.finish(call, Outcome::Ok { task: None, grants: vec![] });
                        break;
                    }
                    Err(e) => {
                        let outcome = outcome_of(&e);
                        let unknown = matches!(outcome, Outcome::Unknown { .. });
                        recorder.finish(call, outcome);
                        // A definite refusal here (lease_lost, say) would be a second
                        // effect judged against the first: the key must replay it.
                        assert!(unknown, "{verb} {key}: the keyed retry was refused: {e}");
                        if attempt == 0 {
                            let events = block_on(store.history(task)).expect("history");
                            seen.note(events.iter().any(|ev| ev.kind == kind));
                        }
                    }
                }
                attempt += 1;
                assert!(attempt < RETRIES_MAX, "{verb} {key} stayed unknown");
                std::thread::sleep(RETRY_PAUSE);
            }
            if attempt > 0 {
                seen.recoveries.push(first.elapsed().as_millis() as u64);
            }
        }
    }
    seen
}

impl Ambiguity {
    fn note(&mut self, committed: bool) {
        self.ambiguous += 1;
        if committed {
            self.committed += 1;
        } else {
            self.not_committed += 1;
        }
    }
}

/// A loopback proxy in front of PostgreSQL that reads the frontend protocol:
/// armed, it forwards the next `COMMIT` (a simple Query message) to the
/// server and then closes both sides of that connection at once, so the
/// answer never reaches Baton.
struct CommitCutter {
    address: SocketAddr,
    armed: Arc<AtomicBool>,
    /// One line per cut, for the evidence.
    cuts: Arc<Mutex<Vec<String>>>,
}

impl CommitCutter {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts: Arc<Mutex<Vec<String>>> = Arc::default();
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = from_server.shutdown(Shutdown::Both);
                    let _ = to_client.shutdown(Shutdown::Both);
                });
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                std::thread::spawn(move || {
                    let _ = frontend(client, server, &armed, &cuts);
                });
            }
        });
        Self { address, armed, cuts }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// Copies the frontend messages of one connection, cutting after an armed COMMIT.
fn frontend(
    mut from: TcpStream,
    mut to: TcpStream,
    armed: &AtomicBool,
    cuts: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // Untyped start-up messages: an SSL or GSS request (then another), or the StartupMessage.
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        from.read_exact(&mut body)?;
        to.write_all(&len)?;
        to.write_all(&body)?;
        let code = body.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if !matches!(code, Some(80_877_103 | 80_877_104)) {
            break;
        }
    }
    loop {
        let mut head = [0u8; 5];
        from.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        from.read_exact(&mut body)?;
        to.write_all(&head)?;
        to.write_all(&body)?;
        let sql = String::from_utf8_lossy(&body);
        let commit = head[0] == b'Q'
            && sql.trim_end_matches('\0').trim().trim_end_matches(';').eq_ignore_ascii_case("COMMIT");
        if commit && armed.swap(false, Ordering::SeqCst) {
            to.flush()?;
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            cuts.lock()
                .unwrap()
                .push("forwarded COMMIT to PostgreSQL, then closed both sides before its answer".into());
            return Ok(());
        }
    }
}

/// Asserts an ambiguous run's evidence and prints its report line.
fn judge_ambiguous(
    scenario: &str,
    local: &Local,
    recorder: &Recorder,
    seen: Ambiguity,
    faults: usize,
    mut evidence: Value,
) {
    evidence["ambiguous_first_attempts"] = seen.ambiguous.into();
    evidence["committed_before_retry"] = seen.committed.into();
    evidence["not_committed_before_retry"] = seen.not_committed.into();
    let line = report(scenario, local.store.as_ref(), recorder, faults, seen.recoveries, evidence);
    assert!(
        seen.ambiguous > 0 && faults > 0,
        "{scenario}: no call saw an ambiguous commit, the fault did nothing: {line:#}"
    );
    assert_eq!(line["tasks"], AMBIGUOUS_CYCLES, "one task per submit key: {line:#}");
}

#[test]
fn ambiguous_commit_cut_by_a_proxy_is_resolved_by_the_keyed_retry() {
    let schema = Schema::new("ambig");
    let upstream = host_port(&url());
    let proxy = CommitCutter::start(upstream.clone());
    let proxied = url().replace(&upstream, &proxy.address.to_string());
    let options =
        PostgresOptions::new(&proxied).unwrap().schema(schema.0.clone()).writers(1).readers(2).listen(false);
    let local = Local::start(options);
    let recorder = Recorder::default();
    let seen = ambiguous_run(&local, &recorder, "proxy", &|| proxy.arm());
    let cuts = proxy.cuts.lock().unwrap().clone();
    // An armed proxy that saw no COMMIT stays armed: it did not cut.
    let evidence = json!({"proxy_cuts": cuts.len(), "proxy_log": cuts.first()});
    judge_ambiguous("ambiguous-commit-proxy", &local, &recorder, seen, cuts.len(), evidence);
    local.store.close();
}

#[test]
fn ambiguous_commit_by_the_store_failpoint_is_resolved_by_the_keyed_retry() {
    let schema = Schema::new("ambfp");
    let lose = Arc::new(AtomicUsize::new(0));
    let options = PostgresOptions::new(&url())
        .unwrap()
        .schema(schema.0.clone())
        .writers(1)
        .readers(2)
        .listen(false)
        .lose_commit_answers(lose.clone());
    let local = Local::start(options);
    let recorder = Recorder::default();
    let armed = AtomicUsize::new(0);
    let seen = ambiguous_run(&local, &recorder, "failpoint", &|| {
        armed.fetch_add(1, Ordering::SeqCst);
        lose.store(1, Ordering::SeqCst);
    });
    let fired = armed.load(Ordering::SeqCst) - lose.load(Ordering::SeqCst);
    let evidence = json!({"failpoint_fired": fired});
    // The failpoint fires only after a COMMIT that succeeded: every first attempt committed.
    assert_eq!(seen.not_committed, 0, "the failpoint fires after COMMIT succeeded");
    assert_eq!(seen.ambiguous, 3 * AMBIGUOUS_CYCLES, "every armed keyed call was ambiguous");
    judge_ambiguous("ambiguous-commit-failpoint", &local, &recorder, seen, fired, evidence);
    local.store.close();
}

// A network partition

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdin(Stdio::null()).output().is_ok_and(|o| o.status.success())
}

#[track_caller]
fn must_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces of the test's own: a switch (a bridge), the database
/// and three replicas, each joined to the bridge by a veth pair, and a veth
/// from this process's namespace for the clients. Removed on drop, also
/// when the test fails.
struct Net {
    prefix: String,
    /// `10.213.N.` — the subnet's first three octets.
    subnet: String,
    hosts: Vec<String>,
}

impl Net {
    const HOSTS: [(&'static str, u8); 4] = [("db", 2), ("r0", 10), ("r1", 11), ("r2", 12)];

    fn new() -> Self {
        let pid = std::process::id();
        let prefix = format!("bpf{}", pid % 100_000);
        let subnet = format!("10.213.{}.", pid % 200 + 20);
        let mut net = Self { prefix, subnet, hosts: Vec::new() };
        let sw = net.ns("sw");
        must_ip(&["netns", "add", &sw]);
        net.hosts.push(sw.clone());
        must_ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must_ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (host, last) in Self::HOSTS {
            let ns = net.ns(host);
            must_ip(&["netns", "add", &ns]);
            net.hosts.push(ns.clone());
            let (inner, port) = (format!("{ns}v"), format!("{ns}p"));
            must_ip(&["link", "add", &inner, "type", "veth", "peer", "name", &port]);
            must_ip(&["link", "set", &inner, "netns", &ns]);
            must_ip(&["link", "set", &port, "netns", &sw]);
            must_ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            must_ip(&["-n", &ns, "addr", "add", &format!("{}{last}/24", net.subnet), "dev", &inner]);
            must_ip(&["-n", &ns, "link", "set", &inner, "up"]);
            must_ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (here, port) = (format!("{}hv", net.prefix), format!("{}hp", net.prefix));
        must_ip(&["link", "add", &here, "type", "veth", "peer", "name", &port]);
        must_ip(&["link", "set", &port, "netns", &sw]);
        must_ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        must_ip(&["addr", "add", &format!("{}1/24", net.subnet), "dev", &here]);
        must_ip(&["link", "set", &here, "up"]);
        net
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn address(&self, host: &str) -> String {
        let last = Self::HOSTS.iter().find(|(h, _)| *h == host).expect("a host").1;
        format!("{}{last}", self.subnet)
    }

    /// Takes `host`'s link to the bridge down (`false`) or up.
    fn link(&self, host: &str, up: bool) {
        must_ip(&[
            "-n",
            &self.ns("sw"),
            "link",
            "set",
            &format!("{}p", self.ns(host)),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &format!("{}hv", self.prefix)]);
        for ns in self.hosts.drain(..).rev() {
            if !ip(&["netns", "del", &ns]) {
                eprintln!("could not remove network namespace {ns}");
            }
        }
    }
}

/// A private PostgreSQL cluster in the `db` namespace, listening on its bridge address.
struct NetCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl NetCluster {
    fn start(net: &Net) -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        assert!(Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success());
        let cluster = Self { dir, bin };
        let data = cluster.data();
        cluster.run(
            None,
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
        );
        // initdb trusts loopback only: the replicas connect from the bridge's subnet.
        let hba = format!("host all all {}0/24 trust\n", net.subnet);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.dir.path().join("data/pg_hba.conf"))
            .unwrap();
        file.write_all(hba.as_bytes()).unwrap();
        let options =
            format!("-p 5432 -k {} -c listen_addresses={}", cluster.dir.path().display(), net.address("db"));
        let log = cluster.dir.path().join("postgres.log").display().to_string();
        cluster.run(
            Some(&net.ns("db")),
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL tool as the `postgres` user, in namespace `ns`.
    fn run(&self, ns: Option<&str>, program: &str, args: &[&str]) {
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser"]);
                c
            }
            None => Command::new("runuser"),
        };
        let out = command
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The partition run's shared state.
struct Partition {
    recorder: Recorder,
    /// Per replica: the agent's client, and the admin's (submits).
    clients: Vec<Client>,
    submitters: Vec<Client>,
    stop: AtomicBool,
}

/// One agent homed on replica `home`: claims, hands a -> b -> done with
/// keyed calls, records every call; a handoff or completion whose outcome
/// is unknown is retried with its key (after a cut heals, the answer is the
/// original outcome or a stale-epoch refusal, never a second effect).
async fn partition_agent(run: Arc<Partition>, me: u32, home: usize) {
    let client = &run.clients[home];
    let rec = &run.recorder;
    let mut n = 0u64;
    while !run.stop.load(Ordering::Relaxed) {
        if n.is_multiple_of(3) {
            let key = format!("p-{me}-{n}");
            let mut request = SubmitRequest::new("a", Payload::from_json(r#"{"p":1}"#).unwrap());
            request.idempotency_key = Some(key.clone());
            let call = rec.invoke(me, Some(key.clone()), Call::Submit { key });
            match run.submitters[home].submit(&request).await {
                Ok(done) => {
                    rec.finish(call, Outcome::Ok { task: Some(TaskId(done.task.id)), grants: vec![] })
                }
                Err(e) => rec.finish(call, outcome_of(&e)),
            }
        }
        n += 1;
        let claim = ClaimRequest {
            stages: vec!["a".into(), "b".into()],
            max: 1,
            wait_ms: 300,
            lease_ms: Some(LEASE_MS),
            agent: None,
        };
        let call = rec.invoke(me, None, Call::Claim { stages: claim.stages.clone() });
        let lease = match client.claim(&claim).await {
            Ok(leases) => {
                rec.finish(call, Outcome::Ok { task: None, grants: grants(&leases) });
                leases.into_iter().next()
            }
            Err(e) => {
                rec.finish(call, outcome_of(&e));
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        };
        let Some(lease) = lease else { continue };
        // Work on it long enough that a cut often catches a held lease.
        tokio::time::sleep(Duration::from_millis(WORK_MS)).await;
        let task = TaskId(lease.task);
        let verb = if lease.stage == "a" { "handoff" } else { "complete" };
        let key = format!("{}:{}:{verb}", lease.task, lease.epoch);
        // An unknown outcome is retried with the same key until the answer is definite.
        for _ in 0..RETRIES_MAX {
            let (call, answer) = if lease.stage == "a" {
                let request = HandoffRequest {
                    epoch: lease.epoch,
                    agent: None,
                    to_stage: "b".into(),
                    note: None,
                    findings: None,
                    confidence: None,
                    claim_next: None,
                };
                let call = Call::Handoff { task, epoch: lease.epoch, from: "a".into(), to: "b".into() };
                let call = rec.invoke(me, Some(key.clone()), call);
                (call, client.handoff_keyed(lease.task, &request, Some(key.as_str())).await)
            } else {
                let request = CompleteRequest { epoch: lease.epoch, ..Default::default() };
                let call = Call::Complete { task, epoch: lease.epoch, stage: "b".into() };
                let call = rec.invoke(me, Some(key.clone()), call);
                (call, client.complete_keyed(lease.task, &request, Some(key.as_str())).await)
            };
            let outcome = match answer {
                Ok(_) => Outcome::Ok { task: None, grants: vec![] },
                Err(e) => outcome_of(&e),
            };
            let unknown = matches!(outcome, Outcome::Unknown { .. });
            rec.finish(call, outcome);
            if !unknown {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE * 3).await;
        }
    }
}

/// Runs only as root (network namespaces); says why it cannot run otherwise.
fn can_make_namespaces() -> bool {
    let probe = format!("bpfprobe{}", std::process::id() % 100_000);
    let ok = ip(&["netns", "add", &probe]);
    if ok {
        ip(&["netns", "del", &probe]);
    }
    ok
}

#[test]
fn a_partitioned_replica_answers_nothing_stale_and_recovers() {
    assert!(
        can_make_namespaces(),
        "this test makes network namespaces (`ip netns add`): run it as root with iproute2"
    );
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let net = Net::new();
    let cluster = NetCluster::start(&net);
    let db_url = format!("postgres://postgres@{}:5432/postgres", net.address("db"));
    let schema = Schema::on(db_url.clone(), "part");
    let mut replicas = Vec::new();
    for host in ["r0", "r1", "r2"] {
        let ns = net.ns(host);
        let mut command = wrapped(dir, &["ip", "netns", "exec", ns.as_str()]);
        let listen = format!("{}:8080", net.address(host));
        command.args([
            "serve",
            "--database-url",
            &db_url,
            "--schema",
            &schema.0,
            "--listen",
            &listen,
            "--duty-lease",
            "2s",
            "--writers",
            "2",
        ]);
        replicas.push(Replica::spawn(dir, command));
    }
    let admin = replicas[0].admin_token.clone().expect("the first replica creates the admin");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let admin_client = Client::new(&replicas[0].address).unwrap().with_token(&admin);
    let token = rt.block_on(async {
        let principal = json!({"name": "worker", "role": "agent", "stages": ["a", "b"]});
        let principal = serde_json::from_value(principal).expect("a principal request");
        admin_client.add_principal(&principal).await.expect("add the agent");
        admin_client.create_token("worker").await.expect("a token").token
    });
    let clients: Vec<Client> = replicas
        .iter()
        .map(|r| {
            Client::new(&r.address)
                .unwrap()
                .with_token(&token)
                .with_agent("worker")
                .with_request_timeout(CALL_TIMEOUT)
        })
        .collect();
    let submitters: Vec<Client> = replicas
        .iter()
        .map(|r| Client::new(&r.address).unwrap().with_token(&admin).with_request_timeout(CALL_TIMEOUT))
        .collect();
    let run = Arc::new(Partition {
        recorder: Recorder::default(),
        clients,
        submitters,
        stop: AtomicBool::new(false),
    });
    let agents: Vec<_> =
        (0..6u32).map(|i| rt.spawn(partition_agent(run.clone(), i, i as usize % 3))).collect();

    let mut evidence = Vec::new();
    let mut recoveries = Vec::new();
    let probe = ClaimRequest {
        stages: vec!["a".into(), "b".into()],
        max: 1,
        wait_ms: 0,
        lease_ms: Some(LEASE_MS),
        agent: None,
    };
    for (cycle, host) in ["r0", "r1"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(2_000));
        let index = cycle;
        net.link(host, false);
        let cut_at = Instant::now();
        // Probes of the cut replica: nothing or 503, never an answer.
        let (mut silent, mut unavailable, mut answered) = (0, 0, 0);
        while cut_at.elapsed() < CUT {
            match rt.block_on(run.clients[index].claim(&probe)) {
                Ok(_) => answered += 1,
                Err(Error::Unavailable { .. }) => unavailable += 1,
                Err(_) => silent += 1,
            }
        }
        net.link(host, true);
        let healed = Instant::now();
        // Recovered: the replica grants a claim again (a lease or none, through the database).
        loop {
            if rt.block_on(run.clients[index].claim(&probe)).is_ok() {
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(60),
                "{host} did not recover after the cut healed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let recovered = healed.elapsed().as_millis() as u64;
        recoveries.push(recovered);
        evidence.push(json!({"cut": host, "cut_ms": CUT.as_millis() as u64, "probes_silent": silent, "probes_503": unavailable, "probes_answered": answered, "recovered_ms": recovered}));
        assert_eq!(answered, 0, "the cut replica {host} answered a claim while cut off from its database");
        assert!(silent + unavailable > 0, "no probe reached the cut replica {host}");
    }
    std::thread::sleep(Duration::from_millis(1_000));
    run.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for a in agents {
            let _ = a.await;
        }
    });
    drop(replicas);
    let store = schema.store();
    let expiries: usize = baton_testkit::checker::list_all(&store)
        .expect("list")
        .iter()
        .map(|t| {
            block_on(store.history(t.id))
                .expect("history")
                .iter()
                .filter(|e| e.kind == EventKind::LeaseExpired)
                .count()
        })
        .sum();
    let line = report(
        "partition-netns",
        &store,
        &run.recorder,
        2,
        recoveries,
        json!({"cuts": evidence, "lease_expiries": expiries}),
    );
    let completed = run
        .recorder
        .entries()
        .iter()
        .filter(|e| matches!(e.call, Call::Complete { .. }) && matches!(e.outcome, Outcome::Ok { .. }))
        .count();
    assert!(line["tasks"].as_u64().unwrap_or(0) > 0 && completed > 0, "the clients got work done: {line:#}");
    drop(store);
    drop(schema);
    drop(cluster);
    drop(net);
}
