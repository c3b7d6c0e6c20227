//! Trace export, end to end: a real `serve` over SQLite with an OTLP
//! endpoint, a local collector on 127.0.0.1:0 that records what is posted to
//! `/v1/traces`, and one task carried by three agents (intake, triage,
//! specialist) through two handoffs and a complete.
//!
//! Goal: the task's journey is one trace: every exported span of the task
//! carries the trace id of the `traceparent` it was submitted with and that
//! context's parent span, the spans name the three agents, and their times
//! are in order; a task without a trace context gets a trace of its own id.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use baton_api as api;
use baton_client::Client;
use baton_server::otlp::OtlpOptions;
use baton_server::{Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

type Posted = Arc<Mutex<Vec<Value>>>;

async fn collect(State(posted): State<Posted>, body: axum::Json<Value>) -> &'static str {
    posted.lock().unwrap().push(body.0);
    "{}"
}

/// Every span posted so far, flattened.
fn spans(posted: &Posted) -> Vec<Value> {
    let bodies = posted.lock().unwrap().clone();
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().cloned().unwrap_or_default() {
            assert_eq!(rs["resource"]["attributes"][0]["value"]["stringValue"], "baton-test");
            for ss in rs["scopeSpans"].as_array().cloned().unwrap_or_default() {
                out.extend(ss["spans"].as_array().cloned().unwrap_or_default());
            }
        }
    }
    out
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

#[tokio::test]
async fn one_task_across_three_agents_is_one_trace() {
    let posted: Posted = Arc::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let app = Router::new().route("/v1/traces", post(collect)).with_state(posted.clone());
    tokio::spawn(async move { axum::serve(collector, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(ReadyHub::new());
    let store =
        SqliteStore::open(dir.path().join("baton.db"), SqliteOptions::default().listener(hub.clone()))
            .expect("open the store");
    let otlp =
        OtlpOptions { service_name: "baton-test".into(), interval_ms: 50, ..OtlpOptions::new(endpoint) };
    let options = Options { otlp: Some(otlp), ..Options::default() };
    let config = Config { store: Arc::new(store), clock: Arc::new(baton_core::SystemClock), hub, options };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve(config, listener, async move {
        let _ = stopped.await;
    }));

    let client = Client::new(&address).unwrap();
    let mut submit = api::SubmitRequest::new("intake", api::Payload::from_json("{}").unwrap());
    submit.trace = Some(format!("00-{TRACE}-{PARENT}-01"));
    let task = client.submit(&submit).await.unwrap().task.id;
    let plain =
        client.submit(&api::SubmitRequest::new("other", api::Payload::from_json("{}").unwrap())).await;
    let plain = plain.unwrap().task.id;
    for (agent, stage, next) in [
        ("intake-bot", "intake", Some("triage")),
        ("triage-bot", "triage", Some("specialist")),
        ("specialist-bot", "specialist", None),
    ] {
        let agent_client = Client::new(&address).unwrap().with_agent(agent);
        let lease = agent_client.claim_from(&[stage], 1, 1_000).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        match next {
            Some(to) => {
                let handoff = api::HandoffRequest {
                    epoch: lease.epoch,
                    agent: None,
                    to_stage: to.into(),
                    note: None,
                    findings: None,
                    confidence: None,
                    claim_next: None,
                };
                agent_client.handoff(task, &handoff).await.unwrap();
            }
            None => {
                let done = api::CompleteRequest { epoch: lease.epoch, ..Default::default() };
                agent_client.complete(task, &done).await.unwrap();
            }
        }
    }
    let other = Client::new(&address).unwrap().with_agent("other-bot");
    let lease = other.claim_from(&["other"], 1, 1_000).await.unwrap().remove(0);
    other.complete(plain, &api::CompleteRequest { epoch: lease.epoch, ..Default::default() }).await.unwrap();

    // 3 waits and 3 works for the traced task, 1 and 1 for the other.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spans(&posted).len() < 8 {
        assert!(Instant::now() < deadline, "spans never arrived: {:?}", spans(&posted));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = spans(&posted);
    let traced: Vec<&Value> =
        all.iter().filter(|s| attr(s, "baton.task") == Some(&task.to_string())).collect();
    assert_eq!(traced.len(), 6, "{traced:#?}");
    assert!(traced.iter().all(|s| s["traceId"] == TRACE && s["parentSpanId"] == PARENT), "{traced:#?}");
    let mut agents: Vec<&str> = traced.iter().filter_map(|s| attr(s, "baton.agent")).collect();
    agents.sort_unstable();
    agents.dedup();
    assert_eq!(agents, ["intake-bot", "specialist-bot", "triage-bot"]);
    let names: Vec<&str> = traced.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in
        ["wait intake", "work intake", "wait triage", "work triage", "wait specialist", "work specialist"]
    {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for s in &traced {
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start <= end, "{s}");
        assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
    }
    let own: Vec<&Value> = all.iter().filter(|s| attr(s, "baton.task") == Some(&plain.to_string())).collect();
    assert_eq!(own.len(), 2);
    assert!(
        own.iter().all(|s| s["traceId"] == plain.simple().to_string() && s.get("parentSpanId").is_none())
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve returned").unwrap().unwrap();
}
