//! Goal: the worker's claim loop, heartbeats and retries do what the module
//! documentation promises, including the paths a real server only shows under
//! faults (an answer lost after the decision landed, or before it did).
//!
//! Method: a scripted HTTP server on 127.0.0.1:0 answers each request from a
//! per-test closure (or drops the connection without answering), and logs
//! every request; each test runs one worker against it until a given number of
//! leases finished, then checks the outcomes and the requests sent. Pure parts
//! (backoff, the history match, option checks, decision builders) are tested
//! directly.

use super::*;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

const T0: &str = "1970-01-01T00:00:00.000Z";
const PATIENCE: Duration = Duration::from_secs(10);

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
    /// The `Idempotency-Key` header, if sent.
    key: Option<String>,
}

enum Reply {
    Json(u16, Value),
    /// Close the connection without answering: an answer lost in transit.
    Drop,
    /// Answer nothing for longer than any test runs: a long poll, or a hung server.
    Hang,
}

type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A scripted HTTP/1.1 server: one request per connection.
struct Fake {
    address: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Serves `script(request, how many earlier requests had the same path)`.
    async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (script, log) = (script.clone(), log.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else { return };
                    let earlier = {
                        let mut log = log.lock().unwrap();
                        let earlier = log.iter().filter(|s: &&Seen| s.path == request.path).count();
                        log.push(request.clone());
                        earlier
                    };
                    // Empty claims wait a little, as a long poll would.
                    let reply = script(&request, earlier);
                    if let Reply::Json(200, body) = &reply
                        && body.get("leases").is_some_and(|l| l.as_array().is_some_and(Vec::is_empty))
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Reply::Hang = reply {
                        tokio::time::sleep(PATIENCE * 2).await;
                    }
                    if let Reply::Json(status, body) = reply {
                        let body = body.to_string();
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                });
            }
        });
        Self { address, seen }
    }

    fn client(&self) -> Client {
        Client::new(&self.address).unwrap()
    }

    fn seen(&self, verb: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path.ends_with(verb)).cloned().collect()
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0usize);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("idempotency-key").then(|| value.trim().to_owned())
    });
    Some(Seen { method, path: path.split('?').next().unwrap().to_owned(), body, key })
}

fn lease_json(task: Uuid, stage: &str, epoch: u64) -> Value {
    json!({"task": task, "stage": stage, "epoch": epoch, "lease_expires_at": T0, "priority": 0,
           "attempts": 0, "payload": {"n": 1}})
}

fn task_json(task: Uuid, stage: &str, state: &str, epoch: u64) -> Value {
    json!({"id": task, "stage": stage, "state": state, "priority": 0, "submitter": "principal:t",
           "created_at": T0, "updated_at": T0, "revision": 3, "epoch": epoch, "attempts": 0,
           "reoffers": 0, "reroutes": 0})
}

fn act_json(task: Uuid, stage: &str, state: &str, epoch: u64, next: Vec<Value>) -> Value {
    json!({"task": task_json(task, stage, state, epoch), "next": next})
}

fn refusal(code: &str, details: Value) -> Value {
    json!({"code": code, "message": format!("refused: {code}"), "details": details})
}

fn event_json(version: u64, actor: &str, kind: &str, from: Option<(&str, &str)>, epoch: u64) -> Value {
    let mut event = json!({"version": version, "at": T0, "actor": actor, "kind": kind,
        "to": {"state": "waiting", "stage": "s"}, "epoch": epoch, "prev_hash": "0", "hash": "1"});
    if let Some((state, stage)) = from {
        event["from"] = json!({"state": state, "stage": stage});
    }
    event
}

fn empty_claim() -> Reply {
    Reply::Json(200, json!({"leases": []}))
}

fn fast_options() -> WorkerOptions {
    WorkerOptions {
        wait_ms: 50,
        lease_ms: 3_000,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            give_up_after: Duration::from_secs(2),
        },
        grace: Duration::from_millis(200),
        ..WorkerOptions::default()
    }
}

/// Runs a worker with `handler` until `leases` leases finished; returns what finished and the stats.
async fn run_until<H, Fut>(
    fake: &Fake,
    options: WorkerOptions,
    leases: usize,
    handler: H,
) -> (Vec<Finished>, WorkerStats)
where
    H: Fn(Job) -> Fut,
    Fut: Future<Output = Decision> + Send + 'static,
{
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let log = finished.clone();
    let worker = Worker::new(fake.client(), "w", ["s"], options).unwrap().on_finished(move |f| {
        log.lock().unwrap().push(f.clone());
        count_tx.send_modify(|n| *n += 1);
    });
    let shutdown = async move {
        let _ = count_rx.wait_for(|n| *n >= leases).await;
    };
    let stats = tokio::time::timeout(PATIENCE, worker.run(handler, shutdown))
        .await
        .expect("the worker stops once enough leases finished")
        .expect("the worker ends without error");
    let finished = finished.lock().unwrap().clone();
    (finished, stats)
}

/// A claim script: the first claim gets a lease of `task` at `epoch`, the rest nothing.
fn first_claim_gets(task: Uuid, epoch: u64) -> impl Fn(usize) -> Reply {
    move |earlier| {
        if earlier == 0 {
            Reply::Json(200, json!({"leases": [lease_json(task, "s", epoch)]}))
        } else {
            empty_claim()
        }
    }
}

#[tokio::test]
async fn a_keyed_retry_after_a_lost_answer_gets_the_first_answer_with_its_next_lease() {
    let (task, next) = (Uuid::now_v7(), Uuid::now_v7());
    let claim = first_claim_gets(task, 3);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        // The first complete lands but its answer is lost; the server replays
        // that answer, next lease included, to the retry with the same key.
        "complete" if seen.body["epoch"] == 3 && earlier == 0 => Reply::Drop,
        "complete" if seen.body["epoch"] == 3 => {
            assert_eq!(seen.key.as_deref(), Some(format!("{task}:3:complete").as_str()));
            Reply::Json(200, act_json(task, "s", "done", 3, vec![lease_json(next, "s", 1)]))
        }
        "complete" => Reply::Json(200, act_json(next, "s", "done", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) = run_until(&fake, fast_options(), 2, |_job| async { Decision::complete() }).await;
    assert_eq!(finished[0].outcome, Outcome::Completed { confirmed: Confirmed::Response });
    assert_eq!(finished[1].fence.task, next, "the replayed answer's next lease is worked");
    assert_eq!((stats.completed, stats.confirmed_by_history, stats.retries), (2, 0, 1));
    assert!(fake.seen("history").is_empty(), "no history read: the replay answered");
    assert_eq!(fake.seen("claims").len(), 1);
    let keys: Vec<_> = fake.seen("complete").into_iter().map(|c| c.key.unwrap()).collect();
    assert_eq!(
        keys,
        [format!("{task}:3:complete"), format!("{task}:3:complete"), format!("{next}:1:complete")]
    );
}

#[tokio::test]
async fn an_old_server_that_ignores_the_key_falls_back_on_the_history() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 3);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        // The first complete lands but its answer is lost; a server that does
        // not keep keyed answers finds the lease over on the retry.
        "complete" if earlier == 0 => Reply::Drop,
        "complete" => Reply::Json(409, refusal("lease_lost", json!({"current_epoch": 3, "state": "done"}))),
        "history" => Reply::Json(
            200,
            json!({"task": task, "events": [
                event_json(1, "principal:t", "submitted", None, 0),
                event_json(2, "agent:w", "claimed", Some(("waiting", "s")), 3),
                event_json(3, "agent:w", "completed", Some(("held", "s")), 3),
            ]}),
        ),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) = run_until(&fake, fast_options(), 1, |_job| async {
        Decision::complete().findings(json!({"ok": true}))
    })
    .await;
    assert_eq!(finished[0].outcome, Outcome::Completed { confirmed: Confirmed::History });
    assert_eq!(finished[0].fence, FenceToken { task, stage: "s".into(), epoch: 3 });
    assert_eq!((stats.completed, stats.confirmed_by_history, stats.lost), (1, 1, 0));
    let completes = fake.seen("complete");
    assert_eq!(completes.len(), 2, "one retry");
    assert_eq!(completes[0].body, completes[1].body, "the retry repeats the call unchanged");
    assert_eq!(completes[0].key, Some(format!("{task}:3:complete")), "keyed by the fence and the verb");
    assert_eq!(completes[0].key, completes[1].key, "with the same key");
    assert_eq!(completes[0].body["epoch"], 3);
    assert_eq!(completes[0].body["agent"], "w");
    assert_eq!(completes[0].body["claim_next"], json!({"stages": ["s"], "max": 1, "lease_ms": 3000}));
    assert!(completes.iter().all(|c| c.method == "POST"));
    assert_eq!(fake.seen("history")[0].method, "GET");
}

#[tokio::test]
async fn a_retry_that_finds_the_lease_expired_before_landing_is_lost() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 3);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "handoff" if earlier == 0 => Reply::Json(503, refusal("unavailable", json!({}))),
        "handoff" => Reply::Json(409, refusal("lease_lost", json!({"current_epoch": 5, "state": "held"}))),
        // The lease expired and another agent claimed; nothing by us at epoch 3.
        "history" => Reply::Json(
            200,
            json!({"task": task, "events": [
                event_json(2, "agent:w", "claimed", Some(("waiting", "s")), 3),
                event_json(3, "agent:w", "heartbeat", Some(("held", "s")), 3),
                event_json(4, "baton", "lease_expired", Some(("held", "s")), 4),
                event_json(5, "agent:x", "claimed", Some(("waiting", "s")), 5),
                // Our agent handing off at another epoch does not count.
                event_json(6, "agent:w", "handed_off", Some(("held", "s")), 2),
            ]}),
        ),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) =
        run_until(&fake, fast_options(), 1, |_job| async { Decision::handoff("t") }).await;
    assert_eq!(
        finished[0].outcome,
        Outcome::Lost(Lost { current_epoch: Some(5), state: Some("held".into()) })
    );
    assert_eq!((stats.handed_off, stats.lost, stats.confirmed_by_history), (0, 1, 0));
    assert_eq!(fake.seen("history").len(), 1);
}

#[tokio::test]
async fn a_lease_lost_without_an_earlier_failure_needs_no_history() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "complete" => {
            Reply::Json(409, refusal("lease_lost", json!({"current_epoch": 2, "state": "waiting"})))
        }
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, _) = run_until(&fake, fast_options(), 1, |_job| async { Decision::complete() }).await;
    assert!(matches!(finished[0].outcome, Outcome::Lost(Lost { current_epoch: Some(2), .. })));
    assert!(fake.seen("history").is_empty());
}

#[tokio::test]
async fn unavailable_is_retried_and_claim_next_feeds_the_loop_without_a_claim() {
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let claim = first_claim_gets(first, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "handoff" if earlier < 2 => Reply::Json(503, refusal("unavailable", json!({}))),
        "handoff" => Reply::Json(200, {
            let mut body = act_json(first, "t", "waiting", 1, vec![lease_json(second, "s", 7)]);
            body["handoff_id"] = json!(Uuid::now_v7());
            body
        }),
        "complete" => Reply::Json(200, act_json(second, "s", "done", 7, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) = run_until(&fake, fast_options(), 2, |job: Job| async move {
        if job.lease().epoch == 1 { Decision::handoff("t").note("first") } else { Decision::complete() }
    })
    .await;
    assert!(matches!(
        &finished[0].outcome,
        Outcome::HandedOff { to_stage, handoff_id: Some(_), confirmed: Confirmed::Response } if to_stage == "t"
    ));
    assert_eq!(finished[1].fence.task, second, "the next lease came with the handoff's answer");
    assert_eq!(finished[1].outcome, Outcome::Completed { confirmed: Confirmed::Response });
    assert_eq!(fake.seen("claims").len(), 1, "no claim between the two tasks");
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.leases, 2);
    let handoffs = fake.seen("handoff");
    assert_eq!(handoffs.len(), 3);
    assert_eq!(handoffs[2].body["note"], "first");
    assert_eq!(handoffs[2].body["to_stage"], "t");
}

#[tokio::test]
async fn a_release_asks_for_no_next_task() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "release" => Reply::Json(200, act_json(task, "s", "waiting", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, _) =
        run_until(&fake, fast_options(), 1, |_job| async { Decision::release().note("later") }).await;
    assert_eq!(finished[0].outcome, Outcome::Released { confirmed: Confirmed::Response });
    assert_eq!(fake.seen("release")[0].body, json!({"epoch": 1, "agent": "w", "note": "later"}));
}

#[tokio::test]
async fn an_abort_is_sent_keyed_with_its_reason_and_counted() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "abort" => Reply::Json(200, act_json(task, "s", "blocked", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) =
        run_until(&fake, fast_options(), 1, |_job| async { Decision::abort("out of stock") }).await;
    assert_eq!(finished[0].outcome, Outcome::Aborted { confirmed: Confirmed::Response });
    assert_eq!(stats.aborted, 1);
    let sent = &fake.seen("abort")[0];
    assert_eq!(sent.body["reason"], "out of stock");
    assert_eq!(sent.body["epoch"], 1);
    assert_eq!(sent.key.as_deref(), Some(format!("{task}:1:abort").as_str()));
}

#[tokio::test]
async fn heartbeats_keep_a_slow_handler_alive() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 4);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "heartbeat" => Reply::Json(200, act_json(task, "s", "held", 4, vec![])),
        "complete" => Reply::Json(200, act_json(task, "s", "done", 4, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let options = WorkerOptions { lease_ms: 90, ..fast_options() };
    let (finished, stats) = run_until(&fake, options, 1, |_job| async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Decision::complete()
    })
    .await;
    assert_eq!(finished[0].outcome, Outcome::Completed { confirmed: Confirmed::Response });
    let beats = fake.seen("heartbeat");
    assert!((2..=12).contains(&beats.len()), "every 30 ms for 250 ms: {}", beats.len());
    // A heartbeat still in flight when the handler returns is cancelled:
    // the fake saw it, the worker never counted its answer.
    let counted = stats.heartbeats;
    let sent = beats.len() as u64;
    assert!(counted == sent || counted + 1 == sent, "counted {counted} of {sent} sent");
    assert!(beats.iter().all(|b| b.body == json!({"epoch": 4, "agent": "w", "lease_ms": 90})), "{beats:?}");
    assert_eq!(fake.seen("complete").len(), 1);
}

#[tokio::test]
async fn dropping_a_running_worker_stops_its_handler_and_heartbeats() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 2);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "heartbeat" => Reply::Json(200, act_json(task, "s", "held", 2, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let options = WorkerOptions { lease_ms: 90, ..fast_options() };
    let worker = Worker::new(fake.client(), "w", ["s"], options).unwrap();
    let (alive_tx, alive_rx) = watch::channel(());
    let run = worker.run(
        move |_job| {
            let alive = alive_tx.clone();
            async move {
                // Holds a sender while it runs: the receiver sees it go when
                // the handler is dropped.
                let _alive = alive;
                std::future::pending::<Decision>().await
            }
        },
        std::future::pending::<()>(),
    );
    // Run until the handler has heartbeat twice, then drop the worker.
    let beaten = async {
        while fake.seen("heartbeat").len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = run => panic!("the worker never ends on its own here"),
        () = beaten => {}
        () = tokio::time::sleep(PATIENCE) => panic!("no heartbeats"),
    }
    let mut alive_rx = alive_rx;
    // `changed` fails once every sender is gone: the closure's and the
    // running handler's.
    let gone = async { while alive_rx.changed().await.is_ok() {} };
    tokio::time::timeout(Duration::from_secs(2), gone).await.expect("the handler was dropped");
    let beats = fake.seen("heartbeat").len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.seen("heartbeat").len(), beats, "no heartbeat after the worker was dropped");
}

#[tokio::test]
async fn a_heartbeat_that_finds_the_lease_lost_tells_the_handler_and_skips_the_decision() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 2);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "heartbeat" if earlier == 0 => Reply::Drop,
        "heartbeat" => {
            Reply::Json(409, refusal("lease_lost", json!({"current_epoch": 3, "state": "waiting"})))
        }
        other => panic!("unexpected call {other}"),
    })
    .await;
    let options = WorkerOptions { lease_ms: 60, ..fast_options() };
    let (finished, stats) = run_until(&fake, options, 1, |job: Job| async move {
        let lost = job.lost().await;
        assert!(job.is_lost());
        assert_eq!(lost.current_epoch, Some(3));
        Decision::complete()
    })
    .await;
    assert_eq!(finished[0].handler, HandlerEnd::Returned);
    assert_eq!(
        finished[0].outcome,
        Outcome::Lost(Lost { current_epoch: Some(3), state: Some("waiting".into()) })
    );
    assert_eq!(stats.heartbeat_failures, 1);
    assert!(fake.seen("complete").is_empty(), "a decision that cannot land is not sent");
}

#[tokio::test]
async fn a_panicking_handler_fails_the_task_retryably() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "fail" => Reply::Json(200, act_json(task, "s", "waiting", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) = run_until(&fake, fast_options(), 1, |_job| async {
        if true {
            panic!("boom");
        }
        Decision::complete()
    })
    .await;
    assert_eq!(finished[0].handler, HandlerEnd::Panicked("boom".into()));
    assert!(matches!(finished[0].outcome, Outcome::Failed { retryable: true, .. }));
    assert_eq!(stats.handler_panics, 1);
    let fails = fake.seen("fail");
    assert_eq!(fails[0].body["retryable"], true);
    assert_eq!(fails[0].body["error"], "handler panicked: boom");
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_aborted_and_the_task_failed() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "heartbeat" => Reply::Json(200, act_json(task, "s", "held", 1, vec![])),
        "fail" => Reply::Json(200, act_json(task, "s", "waiting", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let options = WorkerOptions { handler_timeout: Duration::from_millis(100), ..fast_options() };
    let (finished, stats) = run_until(&fake, options, 1, |_job| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Decision::complete()
    })
    .await;
    assert_eq!(finished[0].handler, HandlerEnd::TimedOut);
    assert_eq!(stats.handler_timeouts, 1);
    assert_eq!(fake.seen("fail")[0].body["retryable"], true);
}

#[tokio::test]
async fn a_refused_decision_is_reported_with_a_fail_that_is_not_retryable() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "handoff" => Reply::Json(422, refusal("route_not_allowed", json!({}))),
        "fail" => Reply::Json(200, act_json(task, "inbox", "waiting", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (finished, stats) =
        run_until(&fake, fast_options(), 1, |_job| async { Decision::handoff("nowhere") }).await;
    assert_eq!(
        finished[0].outcome,
        Outcome::Refused {
            code: Some(ErrorCode::RouteNotAllowed),
            message: "refused: route_not_allowed".into(),
            reported: true
        }
    );
    assert_eq!(stats.refused, 1);
    let fail = &fake.seen("fail")[0].body;
    assert_eq!(fail["retryable"], false);
    assert!(fail["error"].as_str().unwrap().starts_with("worker: handoff refused"), "{fail}");
    assert!(fail.get("claim_next").is_none(), "a report claims nothing");
}

#[tokio::test]
async fn stopping_releases_a_lease_that_came_with_claim_next_unworked() {
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let claim = first_claim_gets(first, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "complete" => Reply::Json(200, act_json(first, "s", "done", 1, vec![lease_json(second, "s", 2)])),
        "release" => Reply::Json(200, act_json(second, "s", "waiting", 2, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let started = Arc::new(AtomicUsize::new(0));
    let begun = started.clone();
    // The stop comes once the first lease finished, with the second already in hand.
    let (finished, stats) = run_until(&fake, fast_options(), 1, move |_job: Job| {
        begun.fetch_add(1, Ordering::SeqCst);
        async { Decision::complete() }
    })
    .await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "the lease from claim_next is not worked");
    assert_eq!(finished.len(), 2);
    assert_eq!(finished[0].outcome, Outcome::Completed { confirmed: Confirmed::Response });
    assert_eq!(finished[1].fence.task, second);
    assert_eq!(finished[1].handler, HandlerEnd::NotRun);
    assert_eq!(finished[1].outcome, Outcome::Released { confirmed: Confirmed::Response });
    assert_eq!(stats.released, 1);
    let release = &fake.seen("release")[0].body;
    assert_eq!(release, &json!({"epoch": 2, "agent": "w", "note": "worker stopping"}));
    assert_eq!(fake.seen("claims").len(), 1, "a stopping worker claims no more");
}

#[tokio::test]
async fn a_stop_while_a_handler_runs_lets_it_finish_and_asks_for_no_next_task() {
    let task = Uuid::now_v7();
    let claim = first_claim_gets(task, 1);
    let fake = Fake::start(move |seen, earlier| match seen.path.rsplit('/').next().unwrap() {
        "claims" => claim(earlier),
        "complete" => Reply::Json(200, act_json(task, "s", "done", 1, vec![])),
        other => panic!("unexpected call {other}"),
    })
    .await;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let worker = Worker::new(fake.client(), "w", ["s"], fast_options()).unwrap();
    let handler = move |_job: Job| {
        let stop_tx = stop_tx.clone();
        async move {
            stop_tx.send_replace(true);
            tokio::time::sleep(Duration::from_millis(30)).await;
            Decision::complete()
        }
    };
    let shutdown = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let stats = tokio::time::timeout(PATIENCE, worker.run(handler, shutdown)).await.unwrap().unwrap();
    assert_eq!(stats.completed, 1);
    let complete = &fake.seen("complete")[0].body;
    assert!(complete.get("claim_next").is_none(), "{complete}");
    assert_eq!(fake.seen("claims").len(), 1);
}

#[tokio::test]
async fn a_refused_claim_ends_the_run_and_an_unreachable_server_is_given_up() {
    let fake =
        Fake::start(|_, _| Reply::Json(422, refusal("limit_exceeded", json!({"limit": "lease_ttl_ms_min"}))))
            .await;
    let worker = Worker::new(fake.client(), "w", ["s"], fast_options()).unwrap();
    let ended = worker.run(|_job| async { Decision::complete() }, std::future::pending()).await;
    assert!(matches!(ended, Err(WorkerError::ClaimRefused(Error::LimitExceeded { .. }))), "{ended:?}");

    // A port nobody listens on: connection refused on every try.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = Client::new(&format!("http://{closed}")).unwrap();
    let mut options = fast_options();
    options.retry.give_up_after = Duration::from_millis(150);
    let worker = Worker::new(client, "w", ["s"], options).unwrap();
    let ended = tokio::time::timeout(
        PATIENCE,
        worker.run(|_job| async { Decision::complete() }, std::future::pending()),
    )
    .await
    .unwrap();
    assert!(matches!(ended, Err(WorkerError::GaveUp { source: Error::Transport { .. }, .. })), "{ended:?}");
}

#[tokio::test]
async fn a_stop_during_a_long_poll_returns_at_once() {
    let fake = Fake::start(|_, _| Reply::Hang).await;
    let options = WorkerOptions { wait_ms: 60_000, ..fast_options() };
    let worker = Worker::new(fake.client(), "w", ["s"], options).unwrap();
    let stats = tokio::time::timeout(
        PATIENCE,
        worker.run(|_job| async { Decision::complete() }, tokio::time::sleep(Duration::from_millis(100))),
    )
    .await
    .expect("stops promptly")
    .unwrap();
    assert_eq!((stats.claims, stats.leases, stats.retries), (1, 0, 0));
}

#[test]
fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(1_000),
        give_up_after: Duration::from_secs(1),
    };
    assert_eq!(retry.delay(0, 0.0), Duration::from_millis(50));
    assert_eq!(retry.delay(0, 1.0), Duration::from_millis(100));
    assert_eq!(retry.delay(2, 0.0), Duration::from_millis(200));
    assert_eq!(retry.delay(3, 0.5), Duration::from_millis(600));
    assert_eq!(retry.delay(10, 1.0), Duration::from_millis(1_000));
    assert_eq!(retry.delay(u32::MAX, 0.0), Duration::from_millis(500), "no overflow");
    let mut rng = SplitMix(7);
    for _ in 0..1_000 {
        let unit = rng.unit();
        assert!((0.0..1.0).contains(&unit));
    }
}

#[test]
fn the_history_match_wants_our_actor_kind_stage_and_epoch() {
    let parse = |v: Value| serde_json::from_value::<Event>(v).unwrap();
    let ours = parse(event_json(3, "agent:w", "completed", Some(("held", "s")), 3));
    let kinds = Decision::complete().event_kinds();
    assert!(decision_landed(std::slice::from_ref(&ours), "agent:w", "s", 3, kinds));
    for (other, why) in [
        (event_json(3, "agent:x", "completed", Some(("held", "s")), 3), "another agent"),
        (event_json(3, "agent:w", "completed", Some(("held", "s")), 4), "another epoch"),
        (event_json(3, "agent:w", "completed", Some(("held", "other")), 3), "another stage"),
        (event_json(3, "agent:w", "heartbeat", Some(("held", "s")), 3), "a heartbeat"),
        (event_json(3, "agent:w", "completed", Some(("waiting", "s")), 3), "not from held"),
        (event_json(3, "agent:w", "completed", None, 3), "no origin"),
    ] {
        assert!(!decision_landed(&[parse(other)], "agent:w", "s", 3, kinds), "{why}");
    }
    let escalated = parse(event_json(4, "agent:w", "escalated", Some(("held", "s")), 3));
    assert!(decision_landed(
        std::slice::from_ref(&escalated),
        "agent:w",
        "s",
        3,
        Decision::release().event_kinds()
    ));
    assert!(!decision_landed(&[escalated], "agent:w", "s", 3, Decision::handoff("t").event_kinds()));
}

#[test]
fn options_are_checked_before_anything_is_sent() {
    let client = Client::new("http://127.0.0.1:1").unwrap();
    let bad = |agent: &str, stages: &[&str], options: WorkerOptions| {
        Worker::new(client.clone(), agent, stages.iter().copied(), options).unwrap_err().to_string()
    };
    assert!(bad("", &["s"], WorkerOptions::default()).contains("agent"));
    assert!(bad("w", &[], WorkerOptions::default()).contains("stage"));
    assert!(bad("w", &["s", " "], WorkerOptions::default()).contains("stage"));
    assert!(
        bad("w", &["s"], WorkerOptions { wait_ms: 60_001, ..WorkerOptions::default() }).contains("wait_ms")
    );
    assert!(
        bad("w", &["s"], WorkerOptions { lease_ms: 10, ..WorkerOptions::default() }).contains("lease_ms")
    );
    let mut options = WorkerOptions::default();
    options.retry.max_backoff = Duration::from_millis(1);
    assert!(bad("w", &["s"], options).contains("backoff"));
    assert!(Worker::new(client, "w", ["s"], WorkerOptions::default()).is_ok());
}

#[test]
fn decision_builders_fill_what_applies() {
    let handoff = Decision::handoff("b").note("n").findings(json!({"k": 1})).confidence(0.5).result(json!(1));
    assert_eq!(
        handoff,
        Decision::Handoff {
            to_stage: "b".into(),
            report: Report { note: Some("n".into()), findings: Some(json!({"k": 1})), confidence: Some(0.5) }
        }
    );
    let complete = Decision::complete().result(json!({"r": 2})).confidence(1.0);
    assert!(matches!(
        complete,
        Decision::Complete { result: Some(_), report: Report { confidence: Some(_), .. } }
    ));
    assert_eq!(Decision::release().note("x"), Decision::Release { note: Some("x".into()) });
    assert_eq!(
        Decision::fail("e", true).note("ignored"),
        Decision::Fail { error: "e".into(), retryable: true }
    );
    assert_eq!(
        [Decision::handoff("b").verb(), Decision::complete().verb(), Decision::release().verb()],
        ["handoff", "complete", "release"]
    );
}
