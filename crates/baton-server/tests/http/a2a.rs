//! The A2A bridge over HTTP, end to end on the SQLite store.
//!
//! Goal: a workflow with an `[a2a]` section is an agent (its card names it,
//! its stages as skills, the bearer scheme) and one without is not; a message
//! makes one task, and the same message id again answers that same task;
//! the task's A2A state follows it (submitted, working, completed with its
//! result as an artifact; input-required or failed after an escalation;
//! canceled), each handoff's note and findings in its history; bad input is
//! a JSON-RPC error in a 200 answer, never a 5xx, and changes nothing.
//! Method: the parent suite's `Api` (`app(state).oneshot(..)`, a manual
//! clock, the sweeper stepped by hand); JSON-RPC requests are built by hand
//! in the wire format the `a2a-sdk` 1.x client sends.

use super::Api;
use axum::body::Body;
use axum::http::{Request, header};
use baton_server::sweeper;
use serde_json::{Value, json};

/// take -> ship;
/// `take` escalates to the human stage `desk` after 10 s unclaimed.
const ORDERS: &str = r#"
name = "orders"
entry = "take"

[stages.take]
accept_within = "10s"
reoffers = 0
escalate_to = "desk"
routes = ["ship"]
next = "ship"

[stages.ship]

[stages.desk]
human = true

[a2a]
description = "Takes and ships orders."
push_url_prefixes = ["http://127.0.0.1:9/hooks/"]
"#;

async fn apply(api: &Api, source: &str) {
    let reply = api.post("/v1/workflows", json!({ "source": source })).await;
    assert!(reply.status == 201 || reply.status == 200, "{}", reply.body);
}

/// One JSON-RPC call; every answer must be a 200 with a JSON-RPC body.
async fn rpc(api: &Api, agent: &str, method: &str, params: Value) -> Value {
    raw(api, agent, &json!({ "jsonrpc": "2.0", "id": "1", "method": method, "params": params }).to_string())
        .await
}

async fn raw(api: &Api, agent: &str, body: &str) -> Value {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/a2a/{agent}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let reply = api.send(request).await;
    assert_eq!(reply.status, 200, "JSON-RPC answers are 200: {}", reply.body);
    assert_eq!(reply.body["jsonrpc"], "2.0", "{}", reply.body);
    reply.body
}

fn result(answer: Value) -> Value {
    assert!(answer.get("error").is_none(), "{answer}");
    answer["result"].clone()
}

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"].as_i64().unwrap_or_else(|| panic!("a JSON-RPC error: {answer}"))
}

fn message(id: &str, text: &str) -> Value {
    json!({ "message": { "messageId": id, "role": "ROLE_USER", "parts": [{ "text": text }] } })
}

async fn send(api: &Api, id: &str, text: &str) -> Value {
    result(rpc(api, "orders", "SendMessage", message(id, text)).await)["task"].clone()
}

async fn get_task(api: &Api, id: &str) -> Value {
    result(rpc(api, "orders", "GetTask", json!({ "id": id })).await)
}

/// Server-sent events as (id, JSON data) pairs.
fn sse(bytes: &[u8]) -> Vec<(u64, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| b.contains("data:")) {
        let mut id = 0;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        out.push((id, serde_json::from_str(&data).unwrap()));
    }
    out
}

fn state(task: &Value) -> &str {
    task["status"]["state"].as_str().unwrap()
}

async fn task_count(api: &Api) -> usize {
    api.get("/v1/tasks").await.expect(200)["tasks"].as_array().unwrap().len()
}

#[tokio::test]
async fn a2a_card_names_the_workflow_its_stages_and_the_bearer_scheme() {
    let api = Api::new();
    apply(&api, ORDERS).await;
    let plain = ORDERS.split("[a2a]").next().unwrap().replace("name = \"orders\"", "name = \"plain\"");
    apply(&api, &plain).await;
    let card = api.get("/a2a/orders/.well-known/agent-card.json").await.expect(200);
    assert_eq!(card["name"], "orders");
    assert_eq!(card["description"], "Takes and ships orders.");
    let skills: Vec<&str> =
        card["skills"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(skills, ["desk", "ship", "take"]);
    assert_eq!(card["supportedInterfaces"][0]["protocolBinding"], "JSONRPC");
    assert!(card["supportedInterfaces"][0]["url"].as_str().unwrap().ends_with("/a2a/orders"));
    assert_eq!(card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"], "Bearer");
    assert_eq!(card["capabilities"]["pushNotifications"], true, "push_url_prefixes is not empty");
    apply(&api, &ORDERS.replace(r#"push_url_prefixes = ["http://127.0.0.1:9/hooks/"]"#, "")).await;
    let card = api.get("/a2a/orders/.well-known/agent-card.json").await.expect(200);
    assert_eq!(card["capabilities"]["pushNotifications"], false, "no prefixes, no push: {card}");
    apply(&api, ORDERS).await;
    // A workflow without [a2a] is no agent; nor is a missing one.
    let plain = api.get("/a2a/plain/.well-known/agent-card.json").await.expect(404);
    assert!(plain["message"].as_str().unwrap().contains("[a2a]"), "{plain}");
    api.get("/a2a/nothing/.well-known/agent-card.json").await.expect(404);
    let answer = rpc(&api, "plain", "SendMessage", message("m0", "hi")).await;
    assert_eq!(error_code(&answer), -32600);
    assert_eq!(task_count(&api).await, 0, "nothing submitted to a workflow that is no agent");
    // The section survives the round trip through the stored workflow.
    let shown = api.get("/v1/workflows/orders").await.expect(200);
    assert_eq!(shown["a2a"]["push_url_prefixes"][0], "http://127.0.0.1:9/hooks/");
    assert!(shown["source"].as_str().unwrap().contains("[a2a]"), "{shown}");
}

#[tokio::test]
async fn a2a_message_follows_the_task_to_completion_and_repeats_make_no_second_task() {
    let api = Api::new();
    apply(&api, ORDERS).await;
    let task = send(&api, "msg-1", "two boxes").await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(state(&task), "TASK_STATE_SUBMITTED", "{task}");
    assert_eq!(task["history"][0]["role"], "ROLE_USER");
    assert_eq!(task["history"][0]["messageId"], "msg-1");
    assert_eq!(task["history"][0]["parts"][0]["text"], "two boxes");
    let stored = api.get(&format!("/v1/tasks/{id}")).await.expect(200);
    assert_eq!(stored["payload"], json!({ "text": "two boxes" }));
    assert_eq!(stored["idempotency_key"], "a2a/anonymous/msg-1", "message ids are keyed per principal");

    // The same message again: the same task, still one task.
    let again = send(&api, "msg-1", "two boxes").await;
    assert_eq!(again["id"], task["id"]);
    assert_eq!(task_count(&api).await, 1);

    let lease = api.claim("w1", "take").await;
    let epoch = lease["epoch"].as_u64().unwrap();
    assert_eq!(state(&get_task(&api, &id).await), "TASK_STATE_WORKING");
    api.post(
        &format!("/v1/tasks/{id}/complete"),
        json!({ "agent": "w1", "epoch": epoch, "note": "picked", "findings": { "boxes": 2 } }),
    )
    .await
    .expect(200);
    let moved = get_task(&api, &id).await;
    assert_eq!(state(&moved), "TASK_STATE_WORKING", "waiting at a later stage: {moved}");
    let note = moved["history"].as_array().unwrap().iter().find(|m| m["parts"][0]["text"] == "picked");
    let note = note.unwrap_or_else(|| panic!("the handoff note in the history: {moved}"));
    assert_eq!(note["role"], "ROLE_AGENT");
    assert_eq!(note["parts"][1]["data"], json!({ "boxes": 2 }));

    let lease = api.claim("w2", "ship").await;
    let epoch = lease["epoch"].as_u64().unwrap();
    api.post(
        &format!("/v1/tasks/{id}/complete"),
        json!({ "agent": "w2", "epoch": epoch, "result": { "tracking": "T1" } }),
    )
    .await
    .expect(200);
    let done = get_task(&api, &id).await;
    assert_eq!(state(&done), "TASK_STATE_COMPLETED", "{done}");
    assert_eq!(done["artifacts"][0]["parts"][0]["data"], json!({ "tracking": "T1" }));
    let versions: Vec<u64> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["metadata"]["version"].as_u64())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "updates in version order: {versions:?}");
    // historyLength keeps the newest messages.
    let short = result(rpc(&api, "orders", "GetTask", json!({ "id": id, "historyLength": 1 })).await);
    assert_eq!(short["history"].as_array().unwrap().len(), 1);
    // SubscribeToTask on the finished task: the snapshot (SSE id: the newest
    // version), then the stream ends; after Last-Event-ID, only newer updates.
    let subscribe = |last: Option<u64>| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/a2a/orders")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        request
            .body(Body::from(
                json!({ "jsonrpc": "2.0", "id": 7, "method": "SubscribeToTask", "params": { "id": id } })
                    .to_string(),
            ))
            .unwrap()
    };
    let (status, headers, bytes) = api.send_raw(subscribe(None)).await;
    assert_eq!(status, 200);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse(&bytes);
    assert_eq!(events.len(), 1, "the snapshot only: {events:?}");
    assert_eq!(events[0].0, *versions.last().unwrap());
    assert_eq!(events[0].1["result"]["task"]["history"], done["history"]);
    let (_, _, bytes) = api.send_raw(subscribe(Some(versions[0]))).await;
    let resumed: Vec<u64> = sse(&bytes).iter().map(|(v, _)| *v).collect();
    assert_eq!(resumed, versions[1..], "every update after Last-Event-ID, in order, once");
    assert!(
        sse(&bytes)
            .iter()
            .all(|(_, e)| e["result"]["statusUpdate"]["status"]["message"]["role"] == "ROLE_AGENT")
    );
    // A finished task cannot be cancelled.
    let refused = rpc(&api, "orders", "CancelTask", json!({ "id": id })).await;
    assert_eq!(error_code(&refused), -32002);
}

#[tokio::test]
async fn a2a_escalation_is_input_required_or_failed_as_configured_and_cancel_is_canceled() {
    let api = Api::new();
    apply(&api, ORDERS).await;
    let waiting = send(&api, "msg-esc", "urgent").await;
    let id = waiting["id"].as_str().unwrap().to_owned();
    api.clock.advance(11_000);
    sweeper::step(&api.state).await;
    let escalated = get_task(&api, &id).await;
    assert_eq!(state(&escalated), "TASK_STATE_INPUT_REQUIRED", "{escalated}");

    // A reply naming the task joins its history as the user's message, is
    // shown in the inbox, and resolves nothing; its repeat adds nothing.
    let reply = json!({ "message": { "messageId": "msg-reply", "taskId": id, "role": "ROLE_USER",
        "parts": [{ "text": "the blue boxes" }, { "data": { "boxes": 2 } }] } });
    let replied = result(rpc(&api, "orders", "SendMessage", reply.clone()).await)["task"].clone();
    assert_eq!(state(&replied), "TASK_STATE_INPUT_REQUIRED", "{replied}");
    let last = replied["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "ROLE_USER", "{replied}");
    assert_eq!(last["parts"], json!([{ "text": "the blue boxes" }, { "data": { "boxes": 2 } }]));
    assert_eq!(last["metadata"]["kind"], "commented");
    let again = result(rpc(&api, "orders", "SendMessage", reply).await)["task"].clone();
    assert_eq!(again["history"], replied["history"], "a repeated message id adds nothing");
    let stored = api.get(&format!("/v1/tasks/{id}")).await.expect(200);
    assert_eq!((&stored["state"], &stored["stage"]), (&json!("waiting"), &json!("desk")));
    let inbox = api.get("/v1/inbox?stage=desk").await.expect(200);
    let item = &inbox["items"][0];
    assert_eq!(item["task"]["id"], json!(id));
    assert_eq!(item["messages"][0]["note"], "the blue boxes", "{inbox}");
    assert_eq!(item["messages"][0]["by"], "principal:anonymous");
    assert_eq!(item["messages"][0]["findings"], json!({ "boxes": 2 }));
    // A task not waiting for input refuses a message, and is left alone.
    let fresh = send(&api, "msg-fresh", "new").await;
    let to_fresh = json!({ "message": { "messageId": "msg-x", "taskId": fresh["id"], "role": "ROLE_USER", "parts": [{ "text": "hurry" }] } });
    let refused = rpc(&api, "orders", "SendMessage", to_fresh).await;
    assert_eq!(error_code(&refused), -32004, "{refused}");
    let fresh_id = fresh["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/tasks/{fresh_id}/history")).await.expect(200)["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The same workflow with escalation_is_failure: the same task now reads as failed.
    apply(&api, &ORDERS.replace("[a2a]", "[a2a]\nescalation_is_failure = true")).await;
    let failed = get_task(&api, &id).await;
    assert_eq!(state(&failed), "TASK_STATE_FAILED", "{failed}");

    let other = send(&api, "msg-cancel", "never mind").await;
    let other_id = other["id"].as_str().unwrap();
    let cancelled = result(rpc(&api, "orders", "CancelTask", json!({ "id": other_id })).await);
    assert_eq!(state(&cancelled), "TASK_STATE_CANCELED", "{cancelled}");
    assert_eq!(api.get(&format!("/v1/tasks/{other_id}")).await.expect(200)["state"], "cancelled");
}

/// Push configs: one under the allow-list with a long enough token is kept,
/// read back, listed and deleted; outside the list (or with a short token, a
/// bad id, an unknown task) it is refused and nothing is kept. Delivery is
/// tested with a real receiver in the Python SDK's tests.
#[tokio::test]
async fn a2a_push_configs_inside_the_allow_list_are_kept_listed_and_deleted() {
    let api = Api::new();
    apply(&api, ORDERS).await;
    let task = send(&api, "msg-push", "ping me").await;
    let id = task["id"].as_str().unwrap().to_owned();
    let create = |params: Value| rpc(&api, "orders", "CreateTaskPushNotificationConfig", params);
    let token = "a-token-of-24-bytes-long";
    let made = result(
        create(json!({ "taskId": id, "id": "c1", "url": "http://127.0.0.1:9/hooks/a", "token": token }))
            .await,
    );
    assert_eq!(
        made,
        json!({ "id": "c1", "taskId": id, "url": "http://127.0.0.1:9/hooks/a", "token": token })
    );
    let got = result(
        rpc(&api, "orders", "GetTaskPushNotificationConfig", json!({ "taskId": id, "id": "c1" })).await,
    );
    assert_eq!(got, made);
    for (what, params, code) in [
        (
            "outside the allow-list",
            json!({ "taskId": id, "url": "http://127.0.0.1:9/other", "token": token }),
            -32003,
        ),
        (
            "a short token",
            json!({ "taskId": id, "url": "http://127.0.0.1:9/hooks/b", "token": "short" }),
            -32602,
        ),
        ("no token", json!({ "taskId": id, "url": "http://127.0.0.1:9/hooks/b" }), -32602),
        (
            "an unknown task",
            json!({ "taskId": "0190a000-0000-7000-8000-000000000000", "url": "http://127.0.0.1:9/hooks/b", "token": token }),
            -32001,
        ),
    ] {
        let answer = create(params).await;
        assert_eq!(error_code(&answer), code, "{what}: {answer}");
    }
    let listed =
        result(rpc(&api, "orders", "ListTaskPushNotificationConfigs", json!({ "taskId": id })).await);
    assert_eq!(listed["configs"], json!([made]), "refused configs are not kept");
    result(
        rpc(&api, "orders", "DeleteTaskPushNotificationConfig", json!({ "taskId": id, "id": "c1" })).await,
    );
    let listed =
        result(rpc(&api, "orders", "ListTaskPushNotificationConfigs", json!({ "taskId": id })).await);
    assert_eq!(listed["configs"], json!([]));
    let gone =
        rpc(&api, "orders", "GetTaskPushNotificationConfig", json!({ "taskId": id, "id": "c1" })).await;
    assert_eq!(error_code(&gone), -32602);
}

#[tokio::test]
async fn a2a_bad_input_is_a_json_rpc_error_and_changes_nothing() {
    let api = Api::new();
    apply(&api, ORDERS).await;
    let cases: Vec<(&str, String, i64)> = vec![
        ("not JSON", "{".to_owned(), -32700),
        ("no jsonrpc", json!({ "id": 1, "method": "GetTask" }).to_string(), -32600),
        ("no method", json!({ "jsonrpc": "2.0", "id": 1 }).to_string(), -32600),
        ("object id", json!({ "jsonrpc": "2.0", "id": {}, "method": "GetTask" }).to_string(), -32600),
        ("unknown method", json!({ "jsonrpc": "2.0", "id": 1, "method": "Nope" }).to_string(), -32601),
        ("params not an object", json!({ "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": [] }).to_string(), -32602),
        ("no message", json!({ "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {} }).to_string(), -32602),
        (
            "no parts",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": { "message": { "messageId": "m", "parts": [] } } }).to_string(),
            -32602,
        ),
        (
            "a file part",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": { "message": { "messageId": "m", "parts": [{ "url": "http://x" }] } } }).to_string(),
            -32602,
        ),
        (
            "no message id",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": { "message": { "parts": [{ "text": "x" }] } } }).to_string(),
            -32602,
        ),
        ("task id not a uuid", json!({ "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": { "id": "x" } }).to_string(), -32001),
        (
            "unknown task",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": { "id": "0190a000-0000-7000-8000-000000000000" } }).to_string(),
            -32001,
        ),
        (
            "push outside the allow-list",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "CreateTaskPushNotificationConfig", "params": { "taskId": "t", "pushNotificationConfig": { "url": "http://evil.example/" } } }).to_string(),
            -32003,
        ),
        ("subscribe to no task", json!({ "jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": { "id": "t" } }).to_string(), -32001),
    ];
    for (what, body, code) in cases {
        let answer = raw(&api, "orders", &body).await;
        assert_eq!(error_code(&answer), code, "{what}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty(), "{what}");
    }
    // The same message id with another text is refused, not a second task.
    send(&api, "dup", "one").await;
    let answer = rpc(&api, "orders", "SendMessage", message("dup", "two")).await;
    assert_eq!(error_code(&answer), -32602, "{answer}");
    assert_eq!(task_count(&api).await, 1);
    // A task of another workflow is not this agent's.
    let adhoc = api.submit("adhoc", json!({})).await;
    let answer = rpc(&api, "orders", "GetTask", json!({ "id": adhoc["id"] })).await;
    assert_eq!(error_code(&answer), -32001);
}
