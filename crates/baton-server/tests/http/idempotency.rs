//! The `Idempotency-Key` header over HTTP, end to end on the SQLite store.
//!
//! Goal: a mutating call repeated with the same key answers the first call's
//! status and body and changes nothing; the same key with another body is
//! 422 `idempotency_conflict`; a malformed key is 400 `invalid_request`; keys
//! of different callers never meet. Method: requests go through
//! `app(state).oneshot(..)`; "changes nothing" is every task's history
//! length, compared before and after. The store-level rules (expiry,
//! durability, refusals not recorded) are pinned by the conformance suite.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use baton_core::Rules;
use baton_server::{AppState, Config, Options, ReadyHub, sweeper};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    state: AppState,
    app: Router,
}

impl Api {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::default());
        let hub = Arc::new(ReadyHub::new());
        let store = SqliteStore::open(
            dir.path().join("baton.db"),
            SqliteOptions::default().clock(clock.clone()).rules(Rules::default()).listener(hub.clone()),
        )
        .expect("open the store");
        let config =
            Config { store: Arc::new(store), clock: clock.clone(), hub, options: Options::default() };
        let state = AppState::new(config);
        Self { _dir: dir, clock, app: baton_server::app(state.clone()), state }
    }

    /// POSTs `body` (text, so tests control its exact bytes) with the given
    /// `Idempotency-Key` values; returns the status and the JSON answer.
    async fn post(&self, path: &str, keys: &[&str], body: &str) -> (u16, Value) {
        let mut builder =
            Request::builder().method("POST").uri(path).header(header::CONTENT_TYPE, "application/json");
        for key in keys {
            builder = builder.header("Idempotency-Key", *key);
        }
        let response =
            self.app.clone().oneshot(builder.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("a JSON answer"))
    }

    async fn get(&self, path: &str) -> Value {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    /// Every task's id and number of events: any change shows here.
    async fn changes(&self) -> Vec<(String, usize)> {
        let page = self.get("/v1/tasks?limit=500").await;
        let mut out = Vec::new();
        for task in page["tasks"].as_array().expect("tasks") {
            let id = task["id"].as_str().expect("id").to_owned();
            let history = self.get(&format!("/v1/tasks/{id}/history")).await;
            out.push((id, history["events"].as_array().expect("events").len()));
        }
        out
    }

    /// A task in `stage` claimed by `agent`; returns (task id, epoch).
    async fn held(&self, stage: &str, agent: &str) -> (String, u64) {
        let (status, _) =
            self.post("/v1/tasks", &[], &format!(r#"{{"stage":"{stage}","payload":{{}}}}"#)).await;
        assert_eq!(status, 201);
        let (status, claim) =
            self.post("/v1/claims", &[], &format!(r#"{{"agent":"{agent}","stages":["{stage}"]}}"#)).await;
        assert_eq!(status, 200, "{claim}");
        let lease = &claim["leases"][0];
        (lease["task"].as_str().expect("task id").to_owned(), lease["epoch"].as_u64().expect("epoch"))
    }
}

#[tokio::test]
async fn repeated_complete_answers_the_first_200_and_changes_nothing() {
    let api = Api::new();
    let (task, epoch) = api.held("a", "w1").await;
    let path = format!("/v1/tasks/{task}/complete");
    let body = format!(r#"{{"agent":"w1","epoch":{epoch},"result":{{"ok":true,"n":1}}}}"#);
    let (status, first) = api.post(&path, &["complete-1"], &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["task"]["state"], "done");
    let before = api.changes().await;
    // The same body, formatted differently, is the same request.
    let reformatted =
        format!("{{ \"result\": {{\"n\": 1, \"ok\": true}},\n \"epoch\": {epoch}, \"agent\": \"w1\" }}");
    for again in [&body, &reformatted] {
        let (status, replay) = api.post(&path, &["complete-1"], again).await;
        assert_eq!((status, &replay), (200, &first), "a repeat answers the first response");
    }
    assert_eq!(api.changes().await, before, "a repeat changed something");
    // Without the key, the same call is fenced: the lease is gone.
    let (status, refused) = api.post(&path, &[], &body).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("lease_lost")));
}

#[tokio::test]
async fn same_key_with_another_body_is_422_idempotency_conflict() {
    let api = Api::new();
    let (task, epoch) = api.held("a", "w1").await;
    let path = format!("/v1/tasks/{task}/heartbeat");
    let (status, _) = api.post(&path, &["k-1"], &format!(r#"{{"agent":"w1","epoch":{epoch}}}"#)).await;
    assert_eq!(status, 200);
    let before = api.changes().await;
    for (path, body) in [
        (path.clone(), format!(r#"{{"agent":"w1","epoch":{epoch},"note":"other"}}"#)),
        (format!("/v1/tasks/{task}/release"), format!(r#"{{"agent":"w1","epoch":{epoch}}}"#)),
    ] {
        let (status, refused) = api.post(&path, &["k-1"], &body).await;
        assert_eq!(status, 422, "{path}: {refused}");
        assert_eq!(refused["code"], "idempotency_conflict");
        assert_eq!(refused["details"]["key"], "k-1");
    }
    assert_eq!(api.changes().await, before, "a conflict changed something");
}

#[tokio::test]
async fn malformed_key_is_400_invalid_request_and_changes_nothing() {
    let api = Api::new();
    let body = r#"{"stage":"a","payload":{}}"#;
    let long = "k".repeat(256);
    let cases: [&[&str]; 4] = [&[""], &["two words"], &[long.as_str()], &["one", "two"]];
    for keys in cases {
        let (status, refused) = api.post("/v1/tasks", keys, body).await;
        assert_eq!(status, 400, "{keys:?}: {refused}");
        assert_eq!(refused["code"], "invalid_request");
        assert_eq!(refused["details"]["field"], "Idempotency-Key");
    }
    // Header values that are not even visible ASCII.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", axum::http::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap())
        .body(Body::from(body))
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(api.changes().await, vec![], "no task was created");
}

#[tokio::test]
async fn repeated_submit_and_claim_answer_their_first_responses() {
    let api = Api::new();
    let submit = r#"{"stage":"a","payload":{"order":7}}"#;
    let (status, first) = api.post("/v1/tasks", &["submit-1"], submit).await;
    assert_eq!(status, 201);
    let (status, again) = api.post("/v1/tasks", &["submit-1"], submit).await;
    assert_eq!((status, &again), (201, &first), "the first answer, status included");
    api.post("/v1/tasks", &[], submit).await;

    let claim = r#"{"agent":"w1","stages":["a"],"max":1}"#;
    let (status, first) = api.post("/v1/claims", &["claim-1"], claim).await;
    assert_eq!(status, 200);
    assert_eq!(first["leases"].as_array().expect("leases").len(), 1);
    let before = api.changes().await;
    let (status, again) = api.post("/v1/claims", &["claim-1"], claim).await;
    assert_eq!((status, &again), (200, &first), "the same lease, not a new one");
    assert_eq!(api.changes().await, before);
    // Keys are scoped to the caller: another agent's identical key is its own.
    let other = r#"{"agent":"w2","stages":["a"],"max":1}"#;
    let (status, theirs) = api.post("/v1/claims", &["claim-1"], other).await;
    assert_eq!(status, 200);
    assert_ne!(theirs["leases"][0]["task"], first["leases"][0]["task"]);
}

#[tokio::test]
async fn keyed_claim_that_leased_nothing_claims_again() {
    let api = Api::new();
    let claim = r#"{"agent":"w1","stages":["later"],"max":1,"wait_ms":0}"#;
    let (status, empty) = api.post("/v1/claims", &["claim-later"], claim).await;
    assert_eq!((status, empty["leases"].as_array().map(Vec::len)), (200, Some(0)));
    api.post("/v1/tasks", &[], r#"{"stage":"later","payload":{}}"#).await;
    let (status, first) = api.post("/v1/claims", &["claim-later"], claim).await;
    assert_eq!((status, first["leases"].as_array().map(Vec::len)), (200, Some(1)));
    let (_, again) = api.post("/v1/claims", &["claim-later"], claim).await;
    assert_eq!(again, first);
}

#[tokio::test]
async fn keys_expire_after_a_day_and_the_sweeper_purges_their_records() {
    let api = Api::new();
    let ttl = Rules::default().limits.request_key_ttl_ms;
    let (status, _) = api.post("/v1/tasks", &["day-1"], r#"{"stage":"a","payload":{}}"#).await;
    assert_eq!(status, 201);
    api.clock.advance(ttl - 1);
    assert_eq!(sweeper::purge_requests(&api.state).await, 0, "a day has not passed");
    let (status, _) = api.post("/v1/tasks", &["day-1"], r#"{"stage":"b","payload":{}}"#).await;
    assert_eq!(status, 422);
    api.clock.advance(1);
    assert_eq!(sweeper::purge_requests(&api.state).await, 1);
    let (status, task) = api.post("/v1/tasks", &["day-1"], r#"{"stage":"b","payload":{}}"#).await;
    assert_eq!((status, task["stage"].as_str()), (201, Some("b")), "the key is free again");
}
