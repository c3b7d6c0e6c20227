//! The HTTP API, end to end over the real SQLite store in a temp dir.
//!
//! Goal: every route answers its documented status and body on the accepted
//! path, and every refusal has its documented status and code and changes
//! nothing. Method: requests go through `app(state).oneshot(..)` (no socket);
//! time is a `ManualClock` shared by the store and the sweeper, which tests
//! step by hand (`sweeper::step`); refusals are a table run through one
//! `check_refusals` helper that compares a snapshot of every task's revision
//! before and after each call. Tests that need a socket (the client, graceful
//! shutdown, the header and request time limits) run the server on
//! 127.0.0.1:0. The OpenAPI document is checked against the router: every
//! route documented, every refusal in the error shape.

// The auth (T13), Idempotency-Key, dashboard and workflow (workflows, aborts, the
// inbox, stuck work) suites live beside this file and compile into this one
// test binary.
#[path = "http/a2a.rs"]
mod a2a;
#[path = "http/anomaly.rs"]
mod anomaly;
#[path = "http/archive.rs"]
mod archive;
#[path = "http/auth.rs"]
mod auth;
#[path = "http/idempotency.rs"]
mod idempotency;
#[path = "http/mcp.rs"]
mod mcp;
#[path = "http/metrics.rs"]
mod metrics;
#[path = "http/otlp.rs"]
mod otlp;
#[path = "http/ui.rs"]
mod ui;
#[path = "http/webhooks.rs"]
mod webhooks;
#[path = "http/workflows.rs"]
mod workflows;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use baton_api as api;
use baton_client::Client;
use baton_core::{Rules, StageName, StagePolicy};
use baton_server::{AppState, Config, Options, ReadyHub, sweeper};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Leases one agent may hold in these tests (small, to reach `too_many_leases`).
const LEASES_MAX: u64 = 3;
/// A generous bound on waits that must end by a wake-up, not by their deadline.
const WAKE_BOUND: Duration = Duration::from_secs(30);

fn rules() -> Rules {
    let mut rules = Rules::default();
    rules.limits.leases_per_agent_max = LEASES_MAX;
    rules.policies = rules
        .policies
        .with_stage("flaky", StagePolicy { max_attempts: 2, lease_ms: 5_000, ..StagePolicy::default() })
        .with_stage(
            "sorting",
            StagePolicy {
                accept_within_ms: 10_000,
                reoffers: 0,
                reroute_to: Some(StageName::new("manual")),
                ..StagePolicy::default()
            },
        );
    rules
}

struct Api {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    state: AppState,
    app: Router,
}

struct Reply {
    status: u16,
    body: Value,
    /// The `Retry-After` header, if any.
    retry_after: Option<String>,
}

impl Api {
    fn new() -> Self {
        Self::with_options(|_| {})
    }

    /// An API whose server options `adjust` changes from the defaults.
    fn with_options(adjust: impl FnOnce(&mut Options)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::default());
        let hub = Arc::new(ReadyHub::new());
        let store = SqliteStore::open(
            dir.path().join("baton.db"),
            SqliteOptions::default().clock(clock.clone()).rules(rules()).listener(hub.clone()),
        )
        .expect("open the store");
        let mut options =
            Options { limits: rules().limits, policies: rules().policies, ..Options::default() };
        adjust(&mut options);
        let state = AppState::new(Config { store: Arc::new(store), clock: clock.clone(), hub, options });
        let app = baton_server::app(state.clone());
        Self { _dir: dir, clock, state, app }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let (status, headers, bytes) = self.send_raw(request).await;
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        let retry_after = headers.get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        Reply { status, body, retry_after }
    }

    /// Status, headers and body bytes, for answers that are not JSON.
    async fn send_raw(&self, request: Request<Body>) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        let response = self.app.clone().oneshot(request).await.expect("the router never fails");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, headers, bytes.to_vec())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.send(request(method, path, body.map(|b| RawBody::json(&b)))).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// Submits into `stage`; returns the task.
    async fn submit(&self, stage: &str, payload: Value) -> Value {
        self.post("/v1/tasks", json!({ "stage": stage, "payload": payload })).await.expect(201)
    }

    /// Claims one task from `stage` as `agent`; returns the lease.
    async fn claim(&self, agent: &str, stage: &str) -> Value {
        let reply = self.post("/v1/claims", json!({ "agent": agent, "stages": [stage] })).await.expect(200);
        let leases = reply["leases"].as_array().expect("leases");
        assert_eq!(leases.len(), 1, "one lease from {stage}: {reply}");
        leases[0].clone()
    }

    /// Every task's id, state and revision: any change shows here.
    async fn snapshot(&self) -> Vec<(String, String, u64)> {
        let page = self.get("/v1/tasks?limit=500").await.expect(200);
        page["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| (id(t), t["state"].as_str().unwrap().to_owned(), t["revision"].as_u64().unwrap()))
            .collect()
    }
}

impl Reply {
    /// Asserts the status and returns the body.
    #[track_caller]
    fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }
}

/// A request body with an explicit content type (or none).
struct RawBody {
    content_type: Option<&'static str>,
    bytes: Vec<u8>,
}

impl RawBody {
    fn json(value: &Value) -> Self {
        Self { content_type: Some("application/json"), bytes: serde_json::to_vec(value).unwrap() }
    }

    fn text(content_type: Option<&'static str>, text: &str) -> Self {
        Self { content_type, bytes: text.as_bytes().to_vec() }
    }
}

fn request(method: &str, path: &str, body: Option<RawBody>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(path);
    match body {
        None => builder.body(Body::empty()).unwrap(),
        Some(raw) => {
            let builder = match raw.content_type {
                Some(ct) => builder.header(header::CONTENT_TYPE, ct),
                None => builder,
            };
            builder.body(Body::from(raw.bytes)).unwrap()
        }
    }
}

/// `depth` nested arrays around a number: `nested(2)` is `[[1]]`.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

fn id(value: &Value) -> String {
    value["id"].as_str().or_else(|| value["task"].as_str()).expect("an id").to_owned()
}

// ---------------------------------------------------------------------------
// Refusals: status, code, details, and nothing changed.

struct Refusal {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<RawBody>,
    status: u16,
    code: &'static str,
    /// A detail the body must carry.
    detail: Option<(&'static str, Value)>,
}

fn refuse(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    status: u16,
    code: &'static str,
) -> Refusal {
    Refusal {
        name,
        method,
        path: path.into(),
        body: body.map(|b| RawBody::json(&b)),
        status,
        code,
        detail: None,
    }
}

impl Refusal {
    fn detail(mut self, key: &'static str, value: Value) -> Self {
        self.detail = Some((key, value));
        self
    }

    fn raw(mut self, body: RawBody) -> Self {
        self.body = Some(body);
        self
    }
}

async fn check_refusals(api: &Api, cases: Vec<Refusal>) {
    for case in cases {
        let before = api.snapshot().await;
        let reply = api.send(request(case.method, &case.path, case.body)).await;
        let name = case.name;
        assert_eq!(reply.status, case.status, "{name}: status; body {}", reply.body);
        assert_eq!(reply.body["code"], case.code, "{name}: code; body {}", reply.body);
        assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: message");
        assert!(reply.body["details"].is_object(), "{name}: details is an object");
        if let Some((key, value)) = case.detail {
            assert_eq!(reply.body["details"][key], value, "{name}: details.{key}; body {}", reply.body);
        }
        // A client told to come back later is told when.
        let come_back = reply.status == 429 || reply.status == 503;
        let seconds = reply.retry_after.as_deref().and_then(|s| s.parse::<u64>().ok());
        assert_eq!(come_back, seconds.is_some_and(|s| s >= 1), "{name}: Retry-After {:?}", reply.retry_after);
        assert_eq!(api.snapshot().await, before, "{name}: a refusal changed something");
    }
}

#[tokio::test]
async fn refusals_have_their_documented_status_and_code_and_change_nothing() {
    let api = Api::new();
    let held = api.submit("s-held", json!({"n": 1})).await;
    let lease = api.claim("a1", "s-held").await;
    assert_eq!(lease["epoch"], 1);
    api.submit("s-done", json!({})).await;
    let done = api.claim("a1", "s-done").await;
    api.post(&format!("/v1/tasks/{}/complete", id(&done)), json!({"agent": "a1", "epoch": 1}))
        .await
        .expect(200);
    let keyed = api
        .post("/v1/tasks", json!({"stage": "s-keyed", "payload": {"n": 1}, "idempotency_key": "k1"}))
        .await;
    let keyed = keyed.expect(201);
    for _ in 0..LEASES_MAX {
        api.submit("s-greedy", json!({})).await;
        api.claim("greedy", "s-greedy").await;
    }
    api.submit("s-greedy", json!({})).await;

    let held = id(&held);
    let done = id(&done);
    let keyed = id(&keyed);
    let unknown = "01900000-0000-7000-8000-000000000000";
    let big_payload = "x".repeat(300 * 1024);
    let huge_body = format!(r#"{{"stage":"s","payload":"{}"}}"#, "x".repeat(1100 * 1024));
    let act = |verb: &str, task: &str| format!("/v1/tasks/{task}/{verb}");

    let cases = vec![
        // Submit: malformed input.
        refuse("unknown field", "POST", "/v1/tasks", Some(json!({"stage": "s", "payload": {}, "colour": 1})), 400, "invalid_request"),
        refuse("malformed JSON", "POST", "/v1/tasks", None, 400, "invalid_request")
            .raw(RawBody::text(Some("application/json"), r#"{"stage":"#)),
        refuse("no content type", "POST", "/v1/tasks", None, 400, "invalid_request")
            .raw(RawBody::text(None, r#"{"stage":"s","payload":{}}"#))
            .detail("field", json!("content-type")),
        refuse("form content type", "POST", "/v1/tasks", None, 400, "invalid_request")
            .raw(RawBody::text(Some("application/x-www-form-urlencoded"), r#"{"stage":"s","payload":{}}"#)),
        refuse("empty body", "POST", "/v1/tasks", None, 400, "invalid_request")
            .raw(RawBody::text(Some("application/json"), "")),
        refuse("no stage", "POST", "/v1/tasks", Some(json!({"payload": {}})), 400, "invalid_request")
            .detail("field", json!("stage")),
        refuse("no payload", "POST", "/v1/tasks", Some(json!({"stage": "s"})), 400, "invalid_request"),
        refuse("stage and an unknown workflow", "POST", "/v1/tasks", Some(json!({"stage": "s", "workflow": "w", "payload": 1})), 404, "not_found")
            .detail("workflow", json!("w")),
        refuse("unknown workflow", "POST", "/v1/tasks", Some(json!({"workflow": "w", "payload": 1})), 404, "not_found")
            .detail("workflow", json!("w")),
        refuse("bad stage name", "POST", "/v1/tasks", Some(json!({"stage": "a b", "payload": 1})), 400, "invalid_request")
            .detail("field", json!("stage")),
        refuse("bad deadline", "POST", "/v1/tasks", Some(json!({"stage": "s", "payload": 1, "deadline": "tomorrow"})), 400, "invalid_request"),
        refuse("payload over its limit", "POST", "/v1/tasks", Some(json!({"stage": "s", "payload": big_payload})), 422, "limit_exceeded")
            .detail("limit", json!("payload_bytes_max")),
        refuse("body over 1 MiB", "POST", "/v1/tasks", None, 413, "body_too_large")
            .raw(RawBody::text(Some("application/json"), &huge_body))
            .detail("limit", json!("body_bytes_max")),
        refuse("JSON nested past json_depth_max", "POST", "/v1/tasks", Some(json!({"stage": "s", "payload": nested(40)})), 422, "limit_exceeded")
            .detail("limit", json!("json_depth_max")),
        refuse("idempotency conflict", "POST", "/v1/tasks", Some(json!({"stage": "s-keyed", "payload": {"n": 2}, "idempotency_key": "k1"})), 422, "idempotency_conflict")
            .detail("key", json!("k1")),
        refuse("parent unknown", "POST", "/v1/tasks", Some(json!({"stage": "s", "payload": 1, "parent": unknown})), 404, "not_found"),
        // Claims.
        refuse("claim max 0", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s"], "max": 0})), 422, "limit_exceeded")
            .detail("limit", json!("claim_max")),
        refuse("claim max 101", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s"], "max": 101})), 422, "limit_exceeded")
            .detail("limit", json!("claim_max")),
        refuse("claim negative max", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s"], "max": -1})), 400, "invalid_request"),
        refuse("claim wait too long", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s"], "wait_ms": 60_001})), 422, "limit_exceeded")
            .detail("limit", json!("wait_ms_max")),
        refuse("claim without agent", "POST", "/v1/claims", Some(json!({"stages": ["s"]})), 400, "invalid_request")
            .detail("field", json!("agent")),
        refuse("claim bad agent", "POST", "/v1/claims", Some(json!({"agent": "a b", "stages": ["s"]})), 400, "invalid_request"),
        refuse("claim lease too short", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s-greedy"], "lease_ms": 10})), 422, "limit_exceeded")
            .detail("limit", json!("lease_ttl_ms_min")),
        refuse("claim lease too short, nothing ready", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["empty"], "lease_ms": 10, "wait_ms": 60_000})), 422, "limit_exceeded")
            .detail("limit", json!("lease_ttl_ms_min")),
        refuse("claim lease too long", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["empty"], "lease_ms": 90_000_000_u64})), 422, "limit_exceeded")
            .detail("limit", json!("lease_ttl_ms_max")),
        refuse("claim no stages", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": []})), 400, "invalid_request"),
        refuse("claim unknown field", "POST", "/v1/claims", Some(json!({"agent": "a9", "stages": ["s"], "maxx": 1})), 400, "invalid_request"),
        refuse("too many leases", "POST", "/v1/claims", Some(json!({"agent": "greedy", "stages": ["s-greedy"]})), 429, "too_many_leases")
            .detail("max", json!(LEASES_MAX)),
        // Holder calls.
        refuse("stale epoch", "POST", act("heartbeat", &held), Some(json!({"agent": "a1", "epoch": 0})), 409, "lease_lost")
            .detail("current_epoch", json!(1)),
        refuse("stale epoch state", "POST", act("complete", &held), Some(json!({"agent": "a1", "epoch": 7})), 409, "lease_lost")
            .detail("state", json!("held")),
        refuse("not the holder", "POST", act("heartbeat", &held), Some(json!({"agent": "a2", "epoch": 1})), 403, "not_holder"),
        refuse("completed twice", "POST", act("complete", &done), Some(json!({"agent": "a1", "epoch": 1})), 409, "lease_lost")
            .detail("state", json!("done")),
        refuse("never claimed", "POST", act("release", &keyed), Some(json!({"agent": "a1", "epoch": 0})), 409, "lease_lost")
            .detail("state", json!("waiting")),
        refuse("unknown task", "POST", act("complete", unknown), Some(json!({"agent": "a1", "epoch": 1})), 404, "not_found"),
        refuse("malformed id", "POST", act("complete", "not-a-uuid"), Some(json!({"agent": "a1", "epoch": 1})), 400, "invalid_request")
            .detail("field", json!("id")),
        refuse("no epoch", "POST", act("complete", &held), Some(json!({"agent": "a1"})), 400, "invalid_request"),
        refuse("holder call without agent", "POST", act("complete", &held), Some(json!({"epoch": 1})), 400, "invalid_request"),
        refuse("confidence above 1", "POST", act("handoff", &held), Some(json!({"agent": "a1", "epoch": 1, "to_stage": "next", "confidence": 2.0})), 400, "invalid_request")
            .detail("field", json!("confidence")),
        refuse("handoff to no stage", "POST", act("handoff", &held), Some(json!({"agent": "a1", "epoch": 1, "to_stage": ""})), 400, "invalid_request"),
        refuse("fail without retryable", "POST", act("fail", &held), Some(json!({"agent": "a1", "epoch": 1, "error": "boom"})), 400, "invalid_request"),
        refuse("quorum without n", "POST", act("spawn", &held), Some(json!({"agent": "a1", "epoch": 1, "children": [{"stage": "c", "payload": 1}], "join": {"mode": "quorum", "within_ms": 1000}})), 400, "invalid_request")
            .detail("field", json!("join.n")),
        refuse("n without quorum", "POST", act("spawn", &held), Some(json!({"agent": "a1", "epoch": 1, "children": [{"stage": "c", "payload": 1}], "join": {"mode": "any", "n": 1, "within_ms": 1000}})), 400, "invalid_request"),
        refuse("spawn no children", "POST", act("spawn", &held), Some(json!({"agent": "a1", "epoch": 1, "children": [], "join": {"mode": "all", "within_ms": 1000}})), 400, "invalid_request"),
        refuse("spawn child in a bad stage", "POST", act("spawn", &held), Some(json!({"agent": "a1", "epoch": 1, "children": [{"stage": "b a d", "payload": 1}], "join": {"mode": "all", "within_ms": 1000}})), 400, "invalid_request"),
        refuse("lease_lost wins over bad input", "POST", act("heartbeat", &held), Some(json!({"agent": "a1", "epoch": 0, "lease_ms": 1})), 409, "lease_lost"),
        // Cancel.
        refuse("cancel a done task", "POST", act("cancel", &done), Some(json!({"reason": "why not"})), 409, "invalid_transition")
            .detail("state", json!("done")),
        refuse("cancel without reason", "POST", act("cancel", &held), Some(json!({"reason": " "})), 400, "invalid_request"),
        refuse("cancel unknown", "POST", act("cancel", unknown), Some(json!({"reason": "x"})), 404, "not_found"),
        // Reads.
        refuse("show unknown", "GET", format!("/v1/tasks/{unknown}"), None, 404, "not_found"),
        refuse("history unknown", "GET", format!("/v1/tasks/{unknown}/history"), None, 404, "not_found"),
        refuse("handoff unknown", "GET", format!("/v1/handoffs/{unknown}"), None, 404, "not_found"),
        refuse("handoff malformed id", "GET", "/v1/handoffs/42", None, 400, "invalid_request"),
        refuse("handoff wait too long", "GET", format!("/v1/handoffs/{unknown}?wait_ms=60001"), None, 422, "limit_exceeded"),
        refuse("list limit 0", "GET", "/v1/tasks?limit=0", None, 400, "invalid_request"),
        refuse("list page too big", "GET", "/v1/tasks?limit=501", None, 422, "limit_exceeded")
            .detail("limit", json!("page_size_max")),
        refuse("list bad cursor", "GET", "/v1/tasks?cursor=zzz", None, 400, "invalid_request"),
        refuse("list bad state", "GET", "/v1/tasks?state=lost", None, 400, "invalid_request"),
        refuse("list unknown parameter", "GET", "/v1/tasks?colour=red", None, 400, "invalid_request"),
        // Routing.
        refuse("no such route", "GET", "/v1/nope", None, 404, "not_found"),
        refuse("wrong method", "DELETE", "/v1/tasks", None, 405, "method_not_allowed"),
        refuse("claims are POST", "GET", "/v1/claims", None, 405, "method_not_allowed"),
    ];
    check_refusals(&api, cases).await;
}

// ---------------------------------------------------------------------------
// Accepted paths.

#[tokio::test]
async fn submit_creates_once_per_idempotency_key() {
    let api = Api::new();
    let body = json!({"stage": "intake", "payload": {"patient": "p-1"}, "idempotency_key": "p-1",
                      "priority": 5, "labels": {"ward": "3"}, "deadline": "2030-01-01T00:00:00Z"});
    let first = api.post("/v1/tasks", body.clone()).await.expect(201);
    assert_eq!(first["state"], "waiting");
    assert_eq!(first["stage"], "intake");
    assert_eq!(first["priority"], 5);
    assert_eq!(first["labels"], json!({"ward": "3"}));
    assert_eq!(first["deadline"], "2030-01-01T00:00:00.000Z");
    assert_eq!(first["revision"], 1);
    assert_eq!(first["epoch"], 0);
    assert_eq!(first["custodian"]["kind"], "submitter");
    assert_eq!(first["waiting"]["kind"], "offered");
    assert_eq!(first["created_at"], "2023-11-14T22:13:20.000Z", "times are RFC 3339 with ms");
    assert!(first["due_at"].is_string());
    assert!(first.get("payload").is_none(), "submit does not echo the payload");

    let again = api.post("/v1/tasks", body).await.expect(200);
    assert_eq!(again["id"], first["id"], "the same key and body return the same task");

    let shown = api.get(&format!("/v1/tasks/{}", id(&first))).await.expect(200);
    assert_eq!(shown["payload"], json!({"patient": "p-1"}));
    assert_eq!(api.snapshot().await.len(), 1);
}

#[tokio::test]
async fn claim_grants_a_lease_with_payload_and_fence() {
    let api = Api::new();
    let low = api.submit("work", json!({"n": "low"})).await;
    let high = api
        .post("/v1/tasks", json!({"stage": "work", "payload": {"n": "high"}, "priority": 9}))
        .await
        .expect(201);
    let reply = api
        .post("/v1/claims", json!({"agent": "a1", "stages": ["work", "other"], "max": 5, "lease_ms": 20_000}))
        .await;
    let leases = reply.expect(200)["leases"].as_array().unwrap().clone();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0]["task"], high["id"], "higher priority first");
    assert_eq!(leases[1]["task"], low["id"]);
    assert_eq!(leases[0]["payload"], json!({"n": "high"}));
    assert_eq!(leases[0]["stage"], "work");
    assert_eq!(leases[0]["epoch"], 1);
    assert_eq!(leases[0]["lease_expires_at"], "2023-11-14T22:13:40.000Z");
    let shown = api.get(&format!("/v1/tasks/{}", id(&low))).await.expect(200);
    assert_eq!(shown["state"], "held");
    assert_eq!(shown["lease"]["agent"], "a1");
    assert_eq!(shown["custodian"], json!({"kind": "agent", "id": "a1"}));

    let none = api.post("/v1/claims", json!({"agent": "a1", "stages": ["work"]})).await.expect(200);
    assert_eq!(none["leases"], json!([]), "nothing left: an empty answer at once");
}

#[tokio::test]
async fn a_task_travels_heartbeat_handoff_accept_and_complete_with_claim_next() {
    let api = Api::new();
    let task = id(&api.submit("intake", json!({"patient": "p-1"})).await);
    let lease = api.claim("intake-bot", "intake").await;
    let path = |verb: &str| format!("/v1/tasks/{task}/{verb}");

    api.clock.advance(10_000);
    let beat =
        api.post(&path("heartbeat"), json!({"agent": "intake-bot", "epoch": 1, "note": "halfway"})).await;
    let beat = beat.expect(200);
    assert_eq!(beat["task"]["lease"]["expires_at"], "2023-11-14T22:14:00.000Z", "30 s from the heartbeat");
    assert_eq!(beat["next"], json!([]));

    let handoff = api
        .post(
            &path("handoff"),
            json!({"agent": "intake-bot", "epoch": lease["epoch"], "to_stage": "triage",
               "note": "vitals taken", "findings": {"bp": "120/80"}, "confidence": 0.9}),
        )
        .await
        .expect(200);
    let handoff_id = handoff["handoff_id"].as_str().expect("a handoff id").to_owned();
    assert_eq!(handoff["task"]["state"], "waiting");
    assert_eq!(handoff["task"]["stage"], "triage");
    assert_eq!(handoff["task"]["custodian"], json!({"kind": "agent", "id": "intake-bot"}));
    assert_eq!(handoff["task"]["waiting"]["handoff"]["id"], handoff_id.as_str());
    let outcome = api.get(&format!("/v1/handoffs/{handoff_id}")).await.expect(200);
    assert_eq!(outcome["outcome"], json!({"status": "pending"}));
    assert_eq!(outcome["from_agent"], "intake-bot");
    assert_eq!(outcome["to_stage"], "triage");

    let accepted = api.claim("triage-bot", "triage").await;
    assert_eq!(accepted["epoch"], 2, "each claim is a new epoch");
    let outcome = api.get(&format!("/v1/handoffs/{handoff_id}")).await.expect(200);
    assert_eq!(outcome["outcome"]["status"], "accepted");
    assert_eq!(outcome["outcome"]["by"], "triage-bot");
    assert_eq!(outcome["outcome"]["epoch"], 2);

    let second = id(&api.submit("triage", json!({"patient": "p-2"})).await);
    let done = api
        .post(
            &path("complete"),
            json!({"agent": "triage-bot", "epoch": 2, "result": {"ok": true},
               "claim_next": {"stages": ["triage"], "max": 5}}),
        )
        .await
        .expect(200);
    assert_eq!(done["task"]["state"], "done");
    assert_eq!(done["task"]["result"], json!({"ok": true}));
    assert!(done["task"].get("custodian").is_none() && done["task"].get("due_at").is_none());
    let next = done["next"].as_array().unwrap();
    assert_eq!(next.len(), 1, "claim-next leased the waiting task: {done}");
    assert_eq!(next[0]["task"], second.as_str());
    assert_eq!(next[0]["payload"], json!({"patient": "p-2"}));

    let history = api.get(&format!("/v1/tasks/{task}/history")).await.expect(200);
    let events = history["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["submitted", "claimed", "heartbeat", "handed_off", "claimed", "completed"]);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["version"], i as u64 + 1);
        if i > 0 {
            assert_eq!(event["prev_hash"], events[i - 1]["hash"], "the chain links");
        }
    }
    assert_eq!(events[0]["prev_hash"], "0".repeat(64));
    assert_eq!(events[2]["note"], "halfway");
    assert_eq!(events[3]["findings"], json!({"bp": "120/80"}));
    assert_eq!(events[3]["confidence"], 0.9);
    assert_eq!(events[3]["handoff_id"], handoff_id.as_str());
    assert_eq!(events[3]["actor"], "agent:intake-bot");
    assert_eq!(events[3]["from"], json!({"state": "held", "stage": "intake"}));
    assert_eq!(events[3]["to"], json!({"state": "waiting", "stage": "triage"}));
}

#[tokio::test]
async fn release_and_fail_return_the_task_or_escalate_it() {
    let api = Api::new();
    let task = id(&api.submit("flaky", json!({})).await);
    let path = |verb: &str| format!("/v1/tasks/{task}/{verb}");

    api.claim("a1", "flaky").await;
    let released =
        api.post(&path("release"), json!({"agent": "a1", "epoch": 1, "note": "busy"})).await.expect(200);
    assert_eq!(released["task"]["state"], "waiting");
    assert_eq!(released["task"]["attempts"], 1);
    assert_eq!(released["task"]["custodian"], json!({"kind": "stage", "id": "flaky"}));

    api.claim("a1", "flaky").await;
    let failed =
        api.post(&path("fail"), json!({"agent": "a1", "epoch": 2, "error": "boom", "retryable": true})).await;
    let failed = failed.expect(200);
    assert_eq!(failed["task"]["stage"], "inbox", "the second attempt at a 2-attempt stage escalates");
    assert_eq!(failed["task"]["custodian"]["kind"], "stage");

    let other = id(&api.submit("work", json!({})).await);
    api.claim("a1", "work").await;
    let backoff = api
        .post(
            &format!("/v1/tasks/{other}/fail"),
            json!({"agent": "a1", "epoch": 1, "error": "flaky", "retryable": true}),
        )
        .await
        .expect(200);
    assert_eq!(backoff["task"]["state"], "waiting");
    assert_eq!(backoff["task"]["waiting"]["kind"], "backoff");
}

#[tokio::test]
async fn spawn_blocks_the_parent_until_its_children_are_done() {
    let api = Api::new();
    let parent = id(&api.submit("order", json!({})).await);
    api.claim("planner", "order").await;
    let spawned = api
        .post(&format!("/v1/tasks/{parent}/spawn"), json!({"agent": "planner", "epoch": 1,
               "children": [{"stage": "bill", "payload": {"amount": 3}}, {"stage": "notify", "payload": {"to": "p"}, "priority": 2}],
               "join": {"mode": "all", "within_ms": 60_000}}))
        .await
        .expect(200);
    assert_eq!(spawned["task"]["state"], "blocked");
    assert_eq!(
        spawned["task"]["join"],
        json!({"mode": "all", "children": 2, "done": 0, "failed": 0,
                                               "due_at": "2023-11-14T22:14:20.000Z"})
    );
    let children = spawned["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2);
    let listed = api.get(&format!("/v1/tasks?parent={parent}")).await.expect(200);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2);

    for stage in ["bill", "notify"] {
        let lease = api.claim("worker", stage).await;
        let path = format!("/v1/tasks/{}/complete", id(&lease));
        api.post(&path, json!({"agent": "worker", "epoch": lease["epoch"]})).await.expect(200);
    }
    let joined = api.get(&format!("/v1/tasks/{parent}")).await.expect(200);
    assert_eq!(joined["state"], "waiting", "the join held: the parent is offered again");
    assert_eq!(joined["custodian"], json!({"kind": "agent", "id": "planner"}));
}

#[tokio::test]
async fn cancel_ends_a_task_and_fences_its_holder() {
    let api = Api::new();
    let task = id(&api.submit("work", json!({})).await);
    api.claim("a1", "work").await;
    let cancelled =
        api.post(&format!("/v1/tasks/{task}/cancel"), json!({"reason": "duplicate order"})).await.expect(200);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["cancel_reason"], "duplicate order");
    assert!(cancelled["finished_at"].is_string());
    let late = api.post(&format!("/v1/tasks/{task}/complete"), json!({"agent": "a1", "epoch": 1})).await;
    let late = late.expect(409);
    assert_eq!(late["code"], "lease_lost");
    assert_eq!(late["details"]["state"], "cancelled");
}

#[tokio::test]
async fn list_filters_and_pages_with_a_cursor() {
    let api = Api::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id(&api.submit(if i % 2 == 0 { "even" } else { "odd" }, json!(i)).await));
    }
    api.claim("a1", "odd").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?limit=2&cursor={c}"),
            None => "/v1/tasks?limit=2".to_owned(),
        };
        let page = api.get(&path).await.expect(200);
        seen.extend(page["tasks"].as_array().unwrap().iter().map(id));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages cover every task once, oldest first");

    let even = api.get("/v1/tasks?stage=even").await.expect(200);
    assert_eq!(even["tasks"].as_array().unwrap().len(), 3);
    let held = api.get("/v1/tasks?state=held").await.expect(200);
    assert_eq!(held["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(held["tasks"][0]["stage"], "odd");
    let none = api.get("/v1/tasks?stage=even&state=held").await.expect(200);
    assert_eq!(none["tasks"], json!([]));
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let api = Api::new();
    let health = api.get("/healthz").await.expect(200);
    assert_eq!(health["status"], "ok");
    assert_eq!(api.get("/readyz").await.expect(200)["status"], "ok");
    api.state.begin_shutdown();
    let draining = api.get("/readyz").await.expect(503);
    assert_eq!(draining["code"], "unavailable");
}

#[tokio::test]
async fn the_index_lists_routes_that_all_exist() {
    let api = Api::new();
    let index = api.get("/v1").await.expect(200);
    let routes = index["routes"].as_array().unwrap();
    assert_eq!(routes.len(), baton_server::http::ROUTES.len());
    for (method, path) in baton_server::http::ROUTES {
        let path = path.replace("{id}", "01900000-0000-7000-8000-000000000000");
        let reply = api.call(method, &path, None).await;
        let message = reply.body["message"].as_str().unwrap_or("");
        assert!(!message.starts_with("no route") && reply.status != 405, "{method} {path}: {}", reply.body);
    }
}

// ---------------------------------------------------------------------------
// Long polls and timers.

#[tokio::test]
async fn a_waiting_claim_is_woken_by_a_submit() {
    let api = Api::new();
    let app = api.app.clone();
    let waiting = tokio::spawn(async move {
        let body = json!({"agent": "a1", "stages": ["quiet", "busy"], "wait_ms": 60_000});
        app.oneshot(request("POST", "/v1/claims", Some(RawBody::json(&body)))).await.unwrap()
    });
    // Give the claim time to find nothing and start waiting; a submit before
    // that is also fine (the claim then finds the task at once).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = api.submit("busy", json!({"hello": "world"})).await;
    let response = tokio::time::timeout(WAKE_BOUND, waiting)
        .await
        .expect("the submit woke the claim long before its 60 s wait ended")
        .unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["leases"][0]["task"], task["id"], "{body}");
    assert_eq!(body["leases"][0]["payload"], json!({"hello": "world"}));
}

#[tokio::test]
async fn work_made_ready_in_one_commit_reaches_every_waiting_claim() {
    let api = Api::new();
    let parent = id(&api.submit("plan", json!({})).await);
    api.claim("planner", "plan").await;
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let app = api.app.clone();
            tokio::spawn(async move {
                let body = json!({"agent": format!("w{i}"), "stages": ["fan"], "wait_ms": 60_000});
                let response =
                    app.oneshot(request("POST", "/v1/claims", Some(RawBody::json(&body)))).await.unwrap();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let child = json!({"stage": "fan", "payload": 1});
    api.post(
        &format!("/v1/tasks/{parent}/spawn"),
        json!({"agent": "planner", "epoch": 1,
             "children": [child, child, child], "join": {"mode": "all", "within_ms": 60_000}}),
    )
    .await
    .expect(200);
    let mut leased = Vec::new();
    for waiter in waiters {
        let body = tokio::time::timeout(WAKE_BOUND, waiter).await.expect("every waiter was woken").unwrap();
        assert_eq!(body["leases"].as_array().unwrap().len(), 1, "{body}");
        leased.push(body["leases"][0]["task"].as_str().unwrap().to_owned());
    }
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 3, "each child went to one waiter");
}

#[tokio::test]
async fn a_waiting_claim_ends_empty_at_its_deadline() {
    let api = Api::new();
    let reply = api.post("/v1/claims", json!({"agent": "a1", "stages": ["quiet"], "wait_ms": 50})).await;
    assert_eq!(reply.expect(200), json!({"leases": []}));
}

#[tokio::test]
async fn a_handoff_outcome_wait_is_woken_by_the_accepting_claim() {
    let api = Api::new();
    let task = id(&api.submit("a", json!({})).await);
    api.claim("sender", "a").await;
    let handoff = api
        .post(&format!("/v1/tasks/{task}/handoff"), json!({"agent": "sender", "epoch": 1, "to_stage": "b"}))
        .await
        .expect(200);
    let handoff_id = handoff["handoff_id"].as_str().unwrap().to_owned();
    let app = api.app.clone();
    let path = format!("/v1/handoffs/{handoff_id}?wait_ms=60000");
    let waiting = tokio::spawn(async move { app.oneshot(request("GET", &path, None)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.claim("receiver", "b").await;
    let response = tokio::time::timeout(WAKE_BOUND, waiting).await.expect("the claim woke the wait").unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["outcome"]["status"], "accepted", "{body}");
    assert_eq!(body["outcome"]["by"], "receiver");
}

#[tokio::test]
async fn the_sweeper_expires_leases_and_the_stale_holder_is_fenced() {
    let api = Api::new();
    let task = id(&api.submit("work", json!({})).await);
    api.claim("slow", "work").await;
    assert_eq!(sweeper::step(&api.state).await, 1_000, "nothing due: sleep the idle maximum");

    api.clock.advance(31_000);
    assert_eq!(sweeper::step(&api.state).await, 0, "a lease expired: fire and look again at once");
    let shown = api.get(&format!("/v1/tasks/{task}")).await.expect(200);
    assert_eq!(shown["state"], "waiting");
    assert_eq!(shown["epoch"], 2, "an expiry moves the epoch on");
    let stale = api.post(&format!("/v1/tasks/{task}/complete"), json!({"agent": "slow", "epoch": 1})).await;
    let stale = stale.expect(409);
    assert_eq!(stale["code"], "lease_lost");
    assert_eq!(stale["details"], json!({"task": task, "current_epoch": 2, "state": "waiting"}));
    let lease = api.claim("fast", "work").await;
    assert_eq!(lease["epoch"], 3);
}

// ---------------------------------------------------------------------------
// Lineage: steps and durations from the history, and the tree.

#[tokio::test]
async fn lineage_shows_each_step_with_its_durations_through_a_handoff_and_a_reroute() {
    let api = Api::new();
    let task = id(&api.submit("intake", json!({})).await);
    let path = |verb: &str| format!("/v1/tasks/{task}/{verb}");
    api.clock.advance(1_000);
    api.claim("a1", "intake").await;
    api.clock.advance(2_000);
    let handoff = api.post(&path("handoff"), json!({"agent": "a1", "epoch": 1, "to_stage": "sorting"})).await;
    let handoff_id = handoff.expect(200)["handoff_id"].clone();
    api.clock.advance(10_000);
    sweeper::step(&api.state).await;
    api.clock.advance(500);
    let lease = api.claim("a2", "manual").await;

    // While held, the open step's held time runs to now.
    api.clock.advance(1_000);
    let open = api.get(&path("lineage")).await.expect(200);
    assert_eq!(open["state"], "held");
    let last = &open["steps"][2];
    assert_eq!((last["stage"].clone(), last["held_ms"].clone()), (json!("manual"), json!(1_000)));
    assert!(last.get("exit").is_none() && last.get("left_at").is_none(), "open: {last}");

    api.clock.advance(2_000);
    api.post(&path("complete"), json!({"agent": "a2", "epoch": lease["epoch"]})).await.expect(200);
    api.clock.advance(60_000);
    let lineage = api.get(&path("lineage")).await.expect(200);
    assert_eq!(lineage["task"], task.as_str());
    assert_eq!(lineage["state"], "done");
    assert_eq!(
        lineage["steps"],
        json!([
            {"stage": "intake", "entered_at": "2023-11-14T22:13:20.000Z", "claimed_at": "2023-11-14T22:13:21.000Z",
             "claimed_by": "a1", "epoch": 1, "left_at": "2023-11-14T22:13:23.000Z", "exit": "handed_off",
             "to_stage": "sorting", "handoff": handoff_id, "waited_ms": 1_000, "held_ms": 2_000},
            {"stage": "sorting", "entered_at": "2023-11-14T22:13:23.000Z", "left_at": "2023-11-14T22:13:33.000Z",
             "exit": "rerouted", "to_stage": "manual", "waited_ms": 10_000, "held_ms": 0},
            {"stage": "manual", "entered_at": "2023-11-14T22:13:33.000Z", "claimed_at": "2023-11-14T22:13:33.500Z",
             "claimed_by": "a2", "epoch": 2, "left_at": "2023-11-14T22:13:36.500Z", "exit": "completed",
             "waited_ms": 500, "held_ms": 3_000},
        ])
    );
    assert_eq!(
        lineage["totals"],
        json!({"total_ms": 16_500, "waited_ms": 11_500, "held_ms": 5_000, "blocked_ms": 0}),
        "a finished task's total ends when it finished, not at the read"
    );
    assert_eq!(lineage["tree"], json!({"children": [], "children_truncated": false}));

    let missing = api.get("/v1/tasks/0190a0c4-5e2b-7c3d-9f00-2a6b8c1d4e5f/lineage").await.expect(404);
    assert_eq!(missing["code"], "not_found");
}

#[tokio::test]
async fn lineage_of_a_spawned_parent_shows_its_children_and_theirs() {
    let api = Api::new();
    let parent = id(&api.submit("order", json!({})).await);
    api.claim("planner", "order").await;
    let spawn = |task: &str, epoch: u64, stages: &[&str]| {
        let children: Vec<Value> = stages.iter().map(|s| json!({"stage": s, "payload": {}})).collect();
        (
            format!("/v1/tasks/{task}/spawn"),
            json!({"agent": "planner", "epoch": epoch, "children": children,
                   "join": {"mode": "all", "within_ms": 60_000}}),
        )
    };
    let (path, body) = spawn(&parent, 1, &["bill", "notify"]);
    let spawned = api.post(&path, body).await.expect(200);
    let children: Vec<String> =
        spawned["children"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    let lease = api.claim("planner", "bill").await;
    let (path, body) = spawn(&children[0], lease["epoch"].as_u64().unwrap(), &["ledger"]);
    let grandchild = api.post(&path, body).await.expect(200)["children"][0].clone();
    api.clock.advance(4_000);

    let lineage = api.get(&format!("/v1/tasks/{parent}/lineage")).await.expect(200);
    assert_eq!(lineage["steps"][0]["exit"], "spawned");
    assert_eq!(lineage["totals"]["blocked_ms"], 4_000, "blocked since the spawn, up to now");
    assert_eq!(
        lineage["tree"],
        json!({"children": [
            {"id": children[0], "stage": "bill", "state": "blocked", "children_truncated": false,
             "children": [{"id": grandchild, "stage": "ledger", "state": "waiting", "children": [],
                           "children_truncated": false}]},
            {"id": children[1], "stage": "notify", "state": "waiting", "children": [], "children_truncated": false},
        ], "children_truncated": false})
    );
    let child = api.get(&format!("/v1/tasks/{}/lineage", children[0])).await.expect(200);
    assert_eq!(child["tree"]["parent"], parent.as_str());
}

// ---------------------------------------------------------------------------
// A real socket, the Rust client, graceful shutdown.

#[tokio::test]
async fn over_a_socket_with_the_client_then_a_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(ReadyHub::new());
    let store =
        SqliteStore::open(dir.path().join("baton.db"), SqliteOptions::default().listener(hub.clone()))
            .expect("open the store");
    let config = Config {
        store: Arc::new(store),
        clock: Arc::new(baton_core::SystemClock),
        hub,
        options: Options::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve(config, listener, async move {
        let _ = stopped.await;
    }));

    let client = Client::new(&address).unwrap().with_agent("socket-bot");
    assert_eq!(client.health().await.unwrap().status, "ok");
    let payload = api::Payload::from_json(r#"{"k": [1, 2, 3]}"#).unwrap();
    let mut submit = api::SubmitRequest::new("socket", payload.clone());
    submit.idempotency_key = Some("once".into());
    let first = client.submit(&submit).await.unwrap();
    assert!(first.created);
    let again = client.submit(&submit).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.task.id, first.task.id);

    let leases = client.claim_from(&["socket"], 1, 1_000).await.unwrap();
    assert_eq!(leases.len(), 1);
    let fence = leases[0].fence();
    assert_eq!((fence.task, fence.stage.as_str(), fence.epoch), (first.task.id, "socket", 1));
    assert_eq!(leases[0].payload, payload, "the payload comes back byte for byte");

    let stale = client.complete(fence.task, &api::CompleteRequest { epoch: 0, ..Default::default() }).await;
    match stale {
        Err(baton_client::Error::LeaseLost { current_epoch, state, .. }) => {
            assert_eq!((current_epoch, state.as_deref()), (Some(1), Some("held")));
        }
        other => panic!("expected lease_lost, got {other:?}"),
    }
    let complete = api::CompleteRequest { epoch: 1, ..Default::default() };
    let key = Some("socket:1:complete");
    let done = client.complete_keyed(fence.task, &complete, key).await.unwrap();
    assert_eq!(done.task.state, api::TaskStateName::Done);
    let replayed = client.complete_keyed(fence.task, &complete, key).await.unwrap();
    assert_eq!(replayed, done, "a keyed repeat gets the first answer");
    let shown = client.get(fence.task).await.unwrap();
    assert_eq!(shown.payload, Some(payload));
    let history = client.history(fence.task).await.unwrap();
    assert_eq!(history.events.len(), 3);
    let lineage = client.lineage(fence.task).await.unwrap();
    assert_eq!(lineage.steps.len(), 1);
    assert_eq!(lineage.steps[0].exit, Some(api::StepExit::Completed));
    let page =
        client.list(&api::ListQuery { state: Some(api::TaskStateName::Done), ..Default::default() }).await;
    assert_eq!(page.unwrap().tasks.len(), 1);
    let missing = client.get(uuid::Uuid::nil()).await.unwrap_err();
    assert_eq!(missing.code(), Some(api::ErrorCode::NotFound));

    // A long poll in flight when shutdown begins answers (empty) and lets the
    // server stop; the server then returns from `serve`.
    let polling = {
        let client = client.clone();
        tokio::spawn(async move { client.claim_from(&["never"], 1, 60_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let leases = tokio::time::timeout(WAKE_BOUND, polling).await.expect("shutdown ended the poll").unwrap();
    assert_eq!(leases.unwrap(), vec![]);
    tokio::time::timeout(WAKE_BOUND, server).await.expect("serve returned").unwrap().unwrap();
    assert!(client.health().await.is_err(), "the listener is closed");
}

// ---------------------------------------------------------------------------
// The OpenAPI document and the docs UI.

/// Routes served besides `ROUTES` (the index lists only the `/v1` API).
const SERVICE_ROUTES: &[(&str, &str)] =
    &[("GET", "/v1"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")];

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_every_refusal() {
    let api = Api::new();
    let doc = api.get("/openapi.json").await.expect(200);
    assert_eq!(doc["openapi"], "3.1.0", "OpenAPI 3.1");
    // utoipa's own types read back the frame and every path item. (They
    // cannot read a schema without a `type`, which is how JSON Schema says
    // "any JSON" for payloads and findings, so schemas are checked below.)
    let _: utoipa::openapi::Info = serde_json::from_value(doc["info"].clone()).expect("info parses");
    let paths: utoipa::openapi::Paths = serde_json::from_value(doc["paths"].clone()).expect("paths parse");
    assert!(!paths.paths.is_empty());
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let keys = ["type", "oneOf", "allOf", "anyOf", "$ref", "description"];
        assert!(keys.iter().any(|k| schema.get(*k).is_some()), "schema {name} says what it is: {schema}");
    }
    let generated: Value = serde_json::from_str(&baton_server::openapi_json()).unwrap();
    assert_eq!(doc, generated, "/openapi.json serves what `openapi_json` (and `cargo xtask openapi`) writes");

    // Every route, with its method, and nothing else.
    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let id = operation["operationId"].as_str().expect("every operation has an id");
            assert!(operation_ids.insert(id.to_owned()), "operationId {id} is used twice");
            check_operation(&doc, &format!("{} {path}", method.to_uppercase()), operation);
        }
    }
    let expected: BTreeSet<(String, String)> = baton_server::http::ROUTES
        .iter()
        .chain(SERVICE_ROUTES)
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, expected, "documented routes vs ROUTES and the service routes");
    // ...and each documented route is served.
    for (method, path) in &documented {
        let path = path.replace("{id}", "01900000-0000-7000-8000-000000000000");
        // `/metrics` answers text, every other route JSON.
        let (status, _, bytes) = api.send_raw(request(method, &path, None)).await;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = body["message"].as_str().unwrap_or("");
        assert!(!message.starts_with("no route") && status != 405, "{method} {path}: {body}");
    }

    // The error schema, and every code in its examples.
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], json!(["code", "message", "details"]));
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"].as_array().unwrap();
    assert_eq!(codes.len(), api::ErrorCode::ALL.len());
    for code in api::ErrorCode::ALL {
        let example = &doc["components"]["examples"][code.as_str()]["value"];
        assert_eq!(example["code"], code.as_str(), "an example body for {code}");
    }
    check_refs_resolve(&doc, &doc);
}

/// Every response of an operation: at least one success; every refusal is
/// an `ErrorBody` whose example codes have the response's status.
fn check_operation(doc: &Value, name: &str, operation: &Value) {
    let responses = operation["responses"].as_object().expect("responses");
    assert!(responses.keys().any(|status| status.starts_with('2')), "{name}: a success response");
    for (status, response) in responses {
        if status.starts_with('2') {
            continue;
        }
        let content = &response["content"]["application/json"];
        assert_eq!(content["schema"]["$ref"], "#/components/schemas/ErrorBody", "{name} {status}: ErrorBody");
        let examples = content["examples"].as_object().expect("one example per code");
        assert!(!examples.is_empty(), "{name} {status}: names its codes");
        for (code, example) in examples {
            let parsed =
                api::ErrorCode::parse(code).unwrap_or_else(|| panic!("{name} {status}: unknown code {code}"));
            let status_of = baton_server::http::error::status_of(parsed).as_u16().to_string();
            assert_eq!(&status_of, status, "{name}: {code} is answered with {status_of}, not {status}");
            assert!(
                response["description"].as_str().unwrap().contains(&format!("`{code}`")),
                "{name} {status}"
            );
            assert_eq!(example["$ref"], format!("#/components/examples/{code}"));
            assert!(doc["components"]["examples"].get(code).is_some());
        }
    }
}

/// Every `$ref` in the document points at something in it.
fn check_refs_resolve(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').expect("local references only");
                assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
            }
            map.values().for_each(|v| check_refs_resolve(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs_resolve(doc, v)),
        _ => {}
    }
}

/// Routes enter the router only through `routes!` (which documents them):
/// the plain `.route(`s in the server's sources serve the document itself
/// and `/mcp`, which speaks MCP (JSON-RPC; its `tools/list` describes it).
#[test]
fn no_route_is_added_around_the_documented_router() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = src.clone();
    let mut found = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The dashboard's pages (`src/ui`) are HTML, not API routes: they
            // live under `/ui` (and `/` redirects there), outside `/v1`.
            let dashboard = path.strip_prefix(&root).is_ok_and(|p| p.starts_with("ui"));
            for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                for (at, _) in text.match_indices(needle) {
                    let call: String = text[at..].chars().take(80).collect();
                    if dashboard {
                        assert!(
                            call.starts_with(".route(\"/ui") || call.starts_with(".route(\"/\","),
                            "a dashboard route outside /ui: {call}"
                        );
                        continue;
                    }
                    found.push(format!(
                        "{}: {}",
                        path.display(),
                        call.split_whitespace().collect::<String>()
                    ));
                }
            }
        }
    }
    // The A2A bridge's two routes speak another protocol (JSON-RPC, the agent
    // card), documented in docs/a2a.md rather than in the OpenAPI document.
    let a2a = std::path::Path::new("src").join("a2a.rs");
    let (bridge, mut found): (Vec<_>, Vec<_>) =
        found.into_iter().partition(|f| f.contains(&*a2a.to_string_lossy()));
    assert_eq!(bridge.len(), 2, "the A2A card and JSON-RPC routes only: {bridge:#?}");
    assert!(bridge.iter().all(|f| f.contains("\"/a2a/{workflow}")), "{bridge:#?}");
    found.sort();
    assert_eq!(found.len(), 2, "routes added outside `routes!`: {found:#?}");
    assert!(found.iter().any(|f| f.contains("openapi::OPENAPI_PATH")), "{found:#?}");
    assert!(found.iter().any(|f| f.contains("mcp::MCP_PATH")), "{found:#?}");
}

#[test]
fn long_poll_routes_are_api_routes() {
    for route in baton_server::http::LONG_POLL_ROUTES {
        assert!(baton_server::http::ROUTES.iter().any(|(_, path)| path == route), "{route}");
    }
}

#[tokio::test]
async fn the_api_docs_ui_is_served_offline() {
    let api = Api::new();
    let get = |path: &str| request("GET", path, None);
    let (status, headers, _) = api.send_raw(get("/docs")).await;
    assert!((300..400).contains(&status), "/docs redirects to /docs/");
    assert_eq!(headers[header::LOCATION], "/docs/");

    let (status, headers, html) = api.send_raw(get("/docs/")).await;
    assert_eq!(status, 200);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(html).unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    for attribute in ["src=\"http", "href=\"http", "src='http", "href='http", "//cdn", "unpkg"] {
        assert!(!html.contains(attribute), "the page loads nothing from the network: {attribute} in {html}");
    }
    for (asset, content_type) in [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui-standalone-preset.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("swagger-initializer.js", "javascript"),
    ] {
        let (status, headers, body) = api.send_raw(get(&format!("/docs/{asset}"))).await;
        assert_eq!(status, 200, "{asset} is compiled in");
        let served = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(served.contains(content_type), "{asset}: {served}");
        assert!(body.len() > 100, "{asset} has content");
        if asset == "swagger-initializer.js" {
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("\"/openapi.json\""), "the UI reads the served document: {text}");
            assert!(text.contains("\"validatorUrl\": \"none\""), "no call to a public validator: {text}");
        }
    }
}

// ---------------------------------------------------------------------------
// The server's own limits: JSON depth, request and header time limits.

#[tokio::test]
async fn json_nested_deeper_than_json_depth_max_is_refused_and_changes_nothing() {
    let api = Api::with_options(|o| o.json_depth_max = 8);
    // The submit body's own object is depth 1, so its payload may nest 7 deep.
    api.post("/v1/tasks", json!({"stage": "deep", "payload": nested(7)})).await.expect(201);
    let lease = api.claim("a1", "deep").await;
    let before = api.snapshot().await;
    let refused = api.post("/v1/tasks", json!({"stage": "deep", "payload": nested(8)})).await.expect(422);
    assert_eq!(refused["code"], "limit_exceeded");
    assert_eq!(refused["details"], json!({"limit": "json_depth_max", "max": 8}));
    // Findings count the same way (body, findings object, then its value).
    let path = format!("/v1/tasks/{}/complete", id(&lease));
    let deep = json!({"agent": "a1", "epoch": 1, "findings": {"f": nested(7)}});
    let refused = api.post(&path, deep).await.expect(422);
    assert_eq!(refused["details"]["limit"], "json_depth_max");
    assert_eq!(api.snapshot().await, before, "the refused calls changed nothing");
    api.post(&path, json!({"agent": "a1", "epoch": 1, "findings": {"f": nested(6)}})).await.expect(200);
}

/// The rate limit is per principal (see the auth suite); with auth off there
/// is none to key by, and a burst far past the settings is accepted.
#[tokio::test]
async fn with_auth_off_the_rate_limit_does_not_apply() {
    let api = Api::with_options(|o| {
        o.requests_per_second_max = 1;
        o.request_burst_max = 1;
    });
    let task = api.submit("s", json!({ "n": 1 })).await;
    for _ in 0..10 {
        api.get(&format!("/v1/tasks/{}", id(&task))).await.expect(200);
    }
    api.submit("s", json!({ "n": 2 })).await;
    assert!(api.state.rate_limiter().is_empty(), "no bucket is kept with auth off");
}

#[tokio::test]
async fn long_polls_may_outlast_the_request_time_limit() {
    let api = Api::with_options(|o| o.request_timeout_ms = 50);
    let reply = api.post("/v1/claims", json!({"agent": "a1", "stages": ["quiet"], "wait_ms": 300})).await;
    assert_eq!(reply.expect(200), json!({"leases": []}), "the wait ends at wait_ms, not at the time limit");
}

/// A server on 127.0.0.1:0 with `adjust`ed options; stop it with the sender.
async fn start_server(
    dir: &tempfile::TempDir,
    adjust: impl FnOnce(&mut Options),
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let hub = Arc::new(ReadyHub::new());
    let store =
        SqliteStore::open(dir.path().join("baton.db"), SqliteOptions::default().listener(hub.clone()))
            .expect("open the store");
    let mut options = Options::default();
    adjust(&mut options);
    let config = Config { store: Arc::new(store), clock: Arc::new(baton_core::SystemClock), hub, options };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    (address, stop, server)
}

/// Writes `bytes` on a fresh connection and reads until the server closes it
/// (blocking IO on its own thread, so the server keeps running meanwhile).
async fn raw_exchange(address: std::net::SocketAddr, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(WAKE_BOUND)).unwrap();
        stream.write_all(&bytes).unwrap();
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("the server did not close the slow connection: {error}"),
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_the_header_and_request_time_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (address, stop, server) = start_server(&dir, |o| {
        o.header_read_timeout_ms = 200;
        o.request_timeout_ms = 200;
    })
    .await;

    // Headers never finished: closed without an answer (there is no request to answer).
    let answer = raw_exchange(address, b"GET /healthz HTTP/1.1\r\nHost: baton\r\n").await;
    assert_eq!(answer, "", "no answer, just a closed connection");

    // Headers sent, body promised but never finished: the request time limit answers.
    let head = "POST /v1/tasks HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"stage\":";
    let answer = raw_exchange(address, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "request_timeout");
    assert_eq!(body["details"], json!({"limit": "request_timeout_ms", "max": 200}));

    // A prompt client is served as usual.
    let answer =
        raw_exchange(address, b"GET /healthz HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    stop.send(()).unwrap();
    tokio::time::timeout(WAKE_BOUND, server).await.expect("serve returned").unwrap().unwrap();
}

/// A body over `body_bytes_max` is refused 413 as soon as its
/// `Content-Length` says so, not after waiting for it; connections past
/// `connections_max` get 503 with `Retry-After` and the JSON error body, and
/// a slot freed is served again.
#[tokio::test]
async fn oversized_bodies_and_connections_over_the_cap_are_refused_at_once() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (address, stop, server) = start_server(&dir, |o| {
        o.request_timeout_ms = 60_000;
        o.connections_max = 2;
    })
    .await;

    // The body never comes: before the fix the server waited for it until
    // the request time limit and answered 503.
    let head = "POST /v1/tasks HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\n\
                Content-Length: 2000000\r\n\r\n";
    let started = std::time::Instant::now();
    let answer = raw_exchange(address, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at once");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "body_too_large");
    assert_eq!(body["details"]["limit"], "body_bytes_max");

    // A client that sends the whole oversized body before it reads still
    // gets the 413: the server reads and drops the rest after answering
    // instead of closing on unread bytes, which makes the kernel send a
    // reset that destroys the answer (and fails the client's writes).
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(WAKE_BOUND)).unwrap();
        stream.set_write_timeout(Some(WAKE_BOUND)).unwrap();
        let size = 8_000_000;
        let head = format!(
            "POST /v1/tasks HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&vec![b' '; size]).expect("the server reads the refused body instead of resetting");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("the answer arrives before a clean close");
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // A head well over header_bytes_max (64 KiB) is refused below the router
    // (hyper checks the limit between reads, so a head somewhat over it may pass).
    let big = format!("GET /healthz HTTP/1.1\r\nHost: baton\r\nX-Big: {}\r\n\r\n", "a".repeat(300_000));
    let answer = raw_exchange(address, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Two keep-alive connections, each served once so the server holds both.
    let hold = move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(WAKE_BOUND)).unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: baton\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stream
    };
    let (first, _second) = tokio::task::spawn_blocking(move || (hold(), hold())).await.unwrap();
    let answer = raw_exchange(address, b"GET /healthz HTTP/1.1\r\nHost: baton\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["details"], json!({"limit": "connections_max", "max": 2}));

    // A connection closed frees its slot.
    drop(first);
    let deadline = std::time::Instant::now() + WAKE_BOUND;
    loop {
        let answer =
            raw_exchange(address, b"GET /healthz HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the freed slot was never served: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(_second);
    stop.send(()).unwrap();
    tokio::time::timeout(WAKE_BOUND, server).await.expect("serve returned").unwrap().unwrap();
}
