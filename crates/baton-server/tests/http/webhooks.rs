//! Webhooks, end to end: the dispatcher over the SQLite store POSTing to a
//! real receiver on 127.0.0.1:0.
//!
//! Goal: a handoff's final outcome and an alert each reach a configured
//! webhook as one signed notice (verified with `baton_api::webhook::verify`);
//! failed attempts are retried with growing backoff and recorded; a receiver
//! that never answers is given up after `attempts_max` and later notices
//! still go; a restarted dispatcher resends nothing already delivered and
//! goes on counting the attempts of the notice that was in flight; a
//! wrong secret or a stale timestamp fails verification. Method: the API is
//! driven through `app(state).oneshot(..)`; the dispatcher runs as
//! `webhooks::run` on its own `AppState` over the same store (stopping it is
//! that state's shutdown, restarting is a new state); time is a
//! `ManualClock`: backoff waits end when `drive` moves the clock to a failed
//! attempt's `retry_at`, so the recorded times are exact. The receiver can
//! fail or hang its first N requests. Every wait is bounded by `BOUND`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use baton_api::webhook::{self as wire, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, VerifyError};
use baton_api::{NoticeKind, WebhookNotice};
use baton_core::store::{Delivery, DeliveryStatus};
use baton_core::{Rules, Store};
use baton_server::webhooks::{self, Secret, Webhook, WebhookOptions};
use baton_server::{AppState, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const SECRET: &str = "test-secret-0123456789abcdef";
/// How long any one wait in these tests may take.
const BOUND: Duration = Duration::from_secs(5);
const BACKOFF_INITIAL_MS: u64 = 1_000;

/// A webhook receiver: verifies each request with its secret against the
/// server's (manual) clock, records it, and answers 500 to its first
/// `fail_first` requests, never to the next `hang` ones, 401 when a
/// signature does not verify, else 200.
#[derive(Clone)]
struct Receiver {
    inner: Arc<Mutex<Received>>,
    clock: Arc<ManualClock>,
    secret: Vec<u8>,
}

#[derive(Default)]
struct Received {
    requests: usize,
    fail_first: usize,
    hang: usize,
    /// Accepted requests: headers and the raw body.
    accepted: Vec<(HeaderMap, Bytes)>,
    refused: Vec<VerifyError>,
}

impl Receiver {
    async fn start(clock: Arc<ManualClock>, secret: &str, fail_first: usize, hang: usize) -> (Self, String) {
        let receiver = Self {
            inner: Arc::new(Mutex::new(Received { fail_first, hang, ..Received::default() })),
            clock,
            secret: secret.as_bytes().to_vec(),
        };
        let app = Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    /// The notices accepted so far, parsed.
    fn notices(&self) -> Vec<WebhookNotice> {
        let inner = self.inner.lock().unwrap();
        inner.accepted.iter().map(|(_, body)| serde_json::from_slice(body).expect("a notice")).collect()
    }

    fn accepted(&self) -> Vec<(HeaderMap, Bytes)> {
        self.inner.lock().unwrap().accepted.clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (n, fail_first, hang) = {
        let mut inner = receiver.inner.lock().unwrap();
        inner.requests += 1;
        (inner.requests, inner.fail_first, inner.hang)
    };
    if n <= fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if n <= fail_first + hang {
        std::future::pending::<()>().await;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let verified = wire::verify(
        &receiver.secret,
        &text(TIMESTAMP_HEADER),
        &body,
        &text(SIGNATURE_HEADER),
        receiver.clock.now(),
        wire::TIMESTAMP_TOLERANCE_MS,
    );
    let mut inner = receiver.inner.lock().unwrap();
    match verified {
        Ok(()) => {
            inner.accepted.push((headers, body));
            StatusCode::OK
        }
        Err(error) => {
            inner.refused.push(error);
            StatusCode::UNAUTHORIZED
        }
    }
}

/// The API and the configuration a dispatcher is started from.
struct Hooks {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    config: Config,
    app: Router,
    dispatcher: Option<(AppState, tokio::task::JoinHandle<()>)>,
}

impl Hooks {
    /// A server with one webhook `ops` to `url` signing with `secret`;
    /// `adjust` changes the delivery options.
    fn new(
        url: &str,
        secret: &str,
        clock: Arc<ManualClock>,
        adjust: impl FnOnce(&mut WebhookOptions),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = Arc::new(ReadyHub::new());
        let store = SqliteStore::open(
            dir.path().join("baton.db"),
            SqliteOptions::default().clock(clock.clone()).rules(Rules::default()).listener(hub.clone()),
        )
        .expect("open the store");
        let secret = Secret::resolve(secret, |_| None).expect("a long enough secret");
        let hook = Webhook::new("ops", url, secret, &[NoticeKind::Handoff, NoticeKind::Alert], None)
            .expect("a valid webhook");
        let mut webhooks = WebhookOptions {
            hooks: vec![hook],
            backoff_initial_ms: BACKOFF_INITIAL_MS,
            backoff_max_ms: 60_000,
            response_timeout_ms: 2_000,
            poll_ms: 5,
            ..WebhookOptions::default()
        };
        adjust(&mut webhooks);
        let mut options = Options { webhooks, ..Options::default() };
        options.sweeper.enabled = false;
        let config = Config { store: Arc::new(store), clock: clock.clone(), hub, options };
        let app = baton_server::app(AppState::new(config.clone()));
        Self { _dir: dir, clock, config, app, dispatcher: None }
    }

    fn store(&self) -> &dyn Store {
        &*self.config.store
    }

    fn start(&mut self) {
        assert!(self.dispatcher.is_none(), "one dispatcher at a time");
        let state = AppState::new(self.config.clone());
        let task = tokio::spawn(webhooks::run(state.clone()));
        self.dispatcher = Some((state, task));
    }

    async fn stop(&mut self) {
        let (state, task) = self.dispatcher.take().expect("a dispatcher runs");
        state.begin_shutdown();
        tokio::time::timeout(BOUND, task).await.expect("the dispatcher stops").expect("it did not panic");
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// Submits into `from`, claims as `a1`, hands off to `to` and claims
    /// there as `a2`: the handoff's outcome is `accepted`. Returns the task.
    async fn handoff_accepted(&self, from: &str, to: &str) -> String {
        let task = self.post("/v1/tasks", json!({ "stage": from, "payload": {} })).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let lease = self.post("/v1/claims", json!({ "agent": "a1", "stages": [from] })).await;
        let epoch = &lease["leases"][0]["epoch"];
        let path = format!("/v1/tasks/{id}/handoff");
        self.post(&path, json!({ "agent": "a1", "epoch": epoch, "to_stage": to })).await;
        let next = self.post("/v1/claims", json!({ "agent": "a2", "stages": [to] })).await;
        assert_eq!(next["leases"][0]["task"], id.as_str());
        id
    }

    /// Submits into `stage`, claims and fails it, not retryable: it escalates.
    async fn escalation(&self, stage: &str) -> String {
        let task = self.post("/v1/tasks", json!({ "stage": stage, "payload": {} })).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let lease = self.post("/v1/claims", json!({ "agent": "a1", "stages": [stage] })).await;
        let epoch = &lease["leases"][0]["epoch"];
        let fail = json!({ "agent": "a1", "epoch": epoch, "error": "cannot", "retryable": false });
        self.post(&format!("/v1/tasks/{id}/fail"), fail).await;
        id
    }

    /// Every delivery record, in order.
    async fn deliveries(&self) -> Vec<Delivery> {
        self.store().deliveries(0, 500).await.expect("deliveries").into_iter().map(|(_, d)| d).collect()
    }

    /// Waits until `done` holds for the delivery records, moving the clock
    /// to a failed attempt's `retry_at` whenever the dispatcher waits on one.
    async fn drive(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let records = self.deliveries().await;
            if done(&records) {
                return records;
            }
            if let Some(DeliveryStatus::Failed { retry_at, .. }) = records.last().map(|d| &d.status)
                && self.clock.now() < *retry_at
            {
                self.clock.set(*retry_at);
            }
            assert!(start.elapsed() < BOUND, "{what}: still waiting; records so far: {records:#?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The record's status as a short word, for table-like asserts.
fn word(status: &DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered { .. } => "delivered",
        DeliveryStatus::Failed { .. } => "failed",
        DeliveryStatus::GaveUp { .. } => "gave_up",
    }
}

fn finals(records: &[Delivery]) -> usize {
    records.iter().filter(|d| d.status.is_final()).count()
}

#[tokio::test]
async fn an_accepted_handoff_is_one_signed_notice_with_its_outcome() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |_| {});
    hooks.start();
    let task = hooks.handoff_accepted("intake", "triage").await;
    let records = hooks.drive("one delivery", |r| finals(r) == 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].attempt, word(&records[0].status)), (1, "delivered"));

    let notices = receiver.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = &notices[0];
    assert_eq!((notice.kind, notice.task.map(|t| t.to_string())), (NoticeKind::Handoff, Some(task)));
    let handoff = notice.handoff.as_ref().expect("the handoff");
    assert_eq!((handoff.from_stage.as_str(), handoff.to_stage.as_str()), ("intake", "triage"));
    match &handoff.outcome {
        baton_api::HandoffOutcome::Accepted { by, .. } => assert_eq!(by, "a2"),
        other => panic!("not accepted: {other:?}"),
    }
    assert_eq!(notice.id, records[0].notice);
    let (headers, _) = &receiver.accepted()[0];
    assert_eq!(headers[ID_HEADER].to_str().unwrap(), notice.id.to_string());
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");

    // The records are served to operators (auth off here: anyone).
    let (status, page) = hooks.get("/v1/deliveries?after=0&limit=10").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["deliveries"][0]["status"], "delivered");
    assert_eq!(page["deliveries"][0]["webhook"], "ops");
    assert_eq!(page["deliveries"][0]["http_status"], 200);
    assert!(page.get("next_after").is_none(), "{page}");
    let (status, page) = hooks.get("/v1/deliveries?limit=0").await;
    assert_eq!((status, page["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    let (status, page) = hooks.get("/v1/deliveries?limit=100000").await;
    assert_eq!(
        (status, page["details"]["limit"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("page_size_max"))
    );
    hooks.stop().await;
}

#[tokio::test]
async fn an_escalation_is_an_alert_notice() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |_| {});
    hooks.start();
    let task = hooks.escalation("billing").await;
    hooks.drive("one delivery", |r| finals(r) >= 1).await;
    let notices = receiver.notices();
    let alerts: Vec<_> = notices.iter().filter(|n| n.kind == NoticeKind::Alert).collect();
    assert_eq!(alerts.len(), 1, "{notices:?}");
    let alert = alerts[0].alert.as_ref().expect("the alert");
    assert_eq!(alert.task.to_string(), task);
    assert_eq!(alerts[0].task.map(|t| t.to_string()), Some(task));
    assert_eq!(alert.stage, "inbox", "escalated into the default human stage");
    assert_eq!(alert.from_stage.as_deref(), Some("billing"), "from the stage that failed it");
    hooks.stop().await;
}

#[tokio::test]
async fn failed_attempts_are_retried_with_growing_backoff_and_recorded() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 2, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |_| {});
    hooks.start();
    hooks.handoff_accepted("intake", "triage").await;
    let records = hooks.drive("three attempts", |r| finals(r) == 1).await;
    let table: Vec<_> = records.iter().map(|d| (d.notice, d.attempt, word(&d.status))).collect();
    let n = records[0].notice;
    assert_eq!(table, [(n, 1, "failed"), (n, 2, "failed"), (n, 3, "delivered")]);
    let waits: Vec<i64> = records
        .iter()
        .filter_map(|d| match &d.status {
            DeliveryStatus::Failed { error, retry_at } => {
                assert!(error.contains("HTTP 500"), "{error}");
                Some(retry_at - d.at)
            }
            _ => None,
        })
        .collect();
    let initial = BACKOFF_INITIAL_MS as i64;
    assert_eq!(waits, [initial, 2 * initial], "the backoff doubles");
    // Each retry went at (not before) the time its record promised.
    assert!(records[1].at >= records.first().map(|d| d.at + initial).unwrap());
    assert_eq!(receiver.notices().len(), 1, "delivered once");
    hooks.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_given_up_and_later_notices_still_go() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 2).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |o| {
        o.attempts_max = 2;
        o.response_timeout_ms = 150;
    });
    hooks.handoff_accepted("intake", "triage").await;
    hooks.handoff_accepted("intake", "triage").await;
    hooks.start();
    let records = hooks.drive("two notices settled", |r| finals(r) == 2).await;
    let table: Vec<_> = records.iter().map(|d| (d.notice, d.attempt, word(&d.status))).collect();
    let (first, second) = (records[0].notice, records[2].notice);
    assert!(first < second);
    assert_eq!(table, [(first, 1, "failed"), (first, 2, "gave_up"), (second, 1, "delivered")]);
    match &records[1].status {
        DeliveryStatus::GaveUp { error } => assert!(error.contains("no answer within 150 ms"), "{error}"),
        other => panic!("{other:?}"),
    }
    let ids: Vec<u64> = receiver.notices().iter().map(|n| n.id).collect();
    assert_eq!(ids, [second]);
    hooks.stop().await;
}

#[tokio::test]
async fn a_restarted_dispatcher_resumes_after_the_last_final_delivery() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |_| {});
    hooks.start();
    hooks.handoff_accepted("intake", "triage").await;
    hooks.escalation("billing").await;
    let before = hooks.drive("the first notices", |r| finals(r) == 2).await;
    hooks.stop().await;

    hooks.handoff_accepted("intake", "triage").await;
    hooks.start();
    let after = hooks.drive("the new notice", |r| finals(r) == 3).await;
    hooks.stop().await;
    assert_eq!(&after[..2], &before[..], "nothing recorded again");
    let ids: Vec<u64> = receiver.notices().iter().map(|n| n.id).collect();
    let recorded: Vec<u64> = after.iter().map(|d| d.notice).collect();
    assert_eq!(ids, recorded, "each notice received once, in order");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn a_restarted_dispatcher_goes_on_counting_the_attempts_of_the_notice_in_flight() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 3, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock, |o| o.attempts_max = 3);
    hooks.start();
    hooks.handoff_accepted("intake", "triage").await;
    let first = hooks.drive("the first attempt", |r| r.len() == 1).await;
    hooks.stop().await;
    let DeliveryStatus::Failed { retry_at, .. } = first[0].status else { panic!("{first:?}") };

    hooks.start();
    let records = hooks.drive("given up", |r| finals(r) == 1).await;
    hooks.stop().await;
    let n = first[0].notice;
    let table: Vec<_> = records.iter().map(|d| (d.notice, d.attempt, word(&d.status))).collect();
    assert_eq!(table, [(n, 1, "failed"), (n, 2, "failed"), (n, 3, "gave_up")], "counted across the restart");
    assert!(records[1].at >= retry_at, "the retry after the restart kept its time");
    assert!(receiver.notices().is_empty(), "three attempts, all refused");
}

#[tokio::test]
async fn a_wrong_secret_or_a_stale_timestamp_fails_verification() {
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 0).await;
    let mut hooks = Hooks::new(&url, SECRET, clock.clone(), |_| {});
    hooks.start();
    hooks.handoff_accepted("intake", "triage").await;
    hooks.drive("one delivery", |r| finals(r) == 1).await;
    hooks.stop().await;
    let (headers, body) = receiver.accepted().remove(0);
    let timestamp = headers[TIMESTAMP_HEADER].to_str().unwrap().to_owned();
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
    let now = clock.now();
    let tolerance = wire::TIMESTAMP_TOLERANCE_MS;
    let verify = |secret: &str, body: &[u8], now: i64| {
        wire::verify(secret.as_bytes(), &timestamp, body, &signature, now, tolerance)
    };
    assert_eq!(verify(SECRET, &body, now), Ok(()));
    assert_eq!(verify("another-secret-0123456789", &body, now), Err(VerifyError::BadSignature));
    let mut changed = body.to_vec();
    changed.push(b' ');
    assert_eq!(verify(SECRET, &changed, now), Err(VerifyError::BadSignature));
    let later = now + tolerance + 1;
    assert_eq!(verify(SECRET, &body, later), Err(VerifyError::Stale { skew_ms: tolerance + 1 }));

    // A server signing with another secret is refused by the receiver: every
    // attempt fails, the last is given up.
    let clock = Arc::new(ManualClock::default());
    let (receiver, url) = Receiver::start(clock.clone(), SECRET, 0, 0).await;
    let mut hooks = Hooks::new(&url, "not-the-receivers-secret", clock, |o| o.attempts_max = 2);
    hooks.start();
    hooks.handoff_accepted("intake", "triage").await;
    let records = hooks.drive("given up", |r| finals(r) == 1).await;
    let words: Vec<_> = records.iter().map(|d| word(&d.status)).collect();
    assert_eq!(words, ["failed", "gave_up"]);
    assert!(matches!(&records[1].status, DeliveryStatus::GaveUp { error } if error.contains("HTTP 401")));
    assert!(receiver.notices().is_empty());
    assert_eq!(
        receiver.inner.lock().unwrap().refused,
        [VerifyError::BadSignature, VerifyError::BadSignature]
    );
    hooks.stop().await;
}
