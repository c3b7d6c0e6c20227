//! MCP at `/mcp`, end to end in process over the SQLite store with auth on.
//!
//! Goal: `tools/list` shows each role exactly its tools; a task goes from
//! submit to done through tools alone; a refusal is a tool error carrying
//! the API's code and changes nothing; a bad argument is JSON-RPC invalid
//! params (-32602) naming the field, never an HTTP error; a tool the role
//! may not see cannot be called; history and lineage read as resources;
//! `/mcp` without a token is 401 before any MCP message.
//!
//! Method: JSON-RPC messages POSTed to `/mcp` through `app(state).oneshot`,
//! principals and tokens made through the admin API, as `baton serve` users
//! would. The Python `mcp` client drives the same endpoint over real sockets
//! and `baton mcp` over stdio (sdks/python/tests/test_mcp.py).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use baton_core::Rules;
use baton_server::{AppState, Auth, AuthMode, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tower::ServiceExt;

/// The JSON-RPC code for invalid params.
const INVALID_PARAMS: i64 = -32602;

/// The tools every role may call: the worker tools and the readers.
const WORKER_TOOLS: &[&str] = &[
    "claim",
    "heartbeat",
    "handoff",
    "complete",
    "fail",
    "escalate",
    "release",
    "spawn",
    "show",
    "history",
    "lineage",
];

struct World {
    _dir: tempfile::TempDir,
    app: Router,
    tokens: BTreeMap<String, String>,
}

impl World {
    /// Auth on; `agent-a` (stages s1, s2, route s1 -> s2), `agent-b` (stage
    /// s3), `sub` (submitter), `ops` (operator) and the first admin.
    async fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::default());
        let hub = Arc::new(ReadyHub::new());
        let rules = Rules::default();
        let store = Arc::new(
            SqliteStore::open(
                dir.path().join("baton.db"),
                SqliteOptions::default().clock(clock.clone()).rules(rules.clone()).listener(hub.clone()),
            )
            .expect("open the store"),
        );
        let admin = baton_server::auth::bootstrap_admin(&*store, baton_core::Clock::now(&*clock))
            .await
            .expect("bootstrap")
            .expect("the first admin");
        let auth = Auth::new(store.clone(), rules.policies.clone());
        let options =
            Options { auth: AuthMode::Tokens(auth), limits: rules.limits.clone(), ..Options::default() };
        let state = AppState::new(Config { store, clock, hub, options });
        let mut world = World { _dir: dir, app: baton_server::app(state), tokens: BTreeMap::new() };
        world.tokens.insert("admin".into(), admin);
        for (name, role, stages, routes) in [
            ("agent-a", "agent", json!(["s1", "s2"]), json!([{ "from": "s1", "to": "s2" }])),
            ("agent-b", "agent", json!(["s3"]), json!([])),
            ("sub", "submitter", json!([]), json!([])),
            ("ops", "operator", json!([]), json!([])),
        ] {
            let body = json!({ "name": name, "role": role, "stages": stages, "routes": routes });
            let (status, _) = world.http("admin", "POST", "/v1/principals", Some(body)).await;
            assert_eq!(status, 201);
            let (status, token) =
                world.http("admin", "POST", "/v1/tokens", Some(json!({ "principal": name }))).await;
            assert_eq!(status, 201);
            world.tokens.insert(name.into(), token["token"].as_str().unwrap().to_owned());
        }
        world
    }

    /// A plain HTTP call as `who` (`""`: no token).
    async fn http(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(token) = self.tokens.get(who) {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if path == "/mcp" {
            // As every HTTP/1.1 client sends it; rmcp refuses a request without.
            request = request.header(header::HOST, "baton.example:7707");
            request = request.header("mcp-protocol-version", "2025-06-18");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self.app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned())),
        )
    }

    /// One JSON-RPC request to `/mcp` as `who`; the response message.
    async fn rpc(&self, who: &str, method: &str, params: Value) -> Value {
        let message = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params });
        let (status, body) = self.http(who, "POST", "/mcp", Some(message)).await;
        assert_eq!(status, 200, "{method} as {who}: {body}");
        assert_eq!(body["id"], 7, "{body}");
        body
    }

    async fn tools(&self, who: &str) -> BTreeSet<String> {
        let body = self.rpc(who, "tools/list", json!({})).await;
        body["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `tools/call`; the whole response message.
    async fn call(&self, who: &str, tool: &str, arguments: Value) -> Value {
        self.rpc(who, "tools/call", json!({ "name": tool, "arguments": arguments })).await
    }

    /// A tool call that must succeed; its structured answer.
    async fn ok(&self, who: &str, tool: &str, arguments: Value) -> Value {
        let body = self.call(who, tool, arguments).await;
        assert_eq!(body["result"]["isError"], false, "{tool} as {who}: {body}");
        body["result"]["structuredContent"].clone()
    }

    /// A tool call the API refuses: its refusal (`code`, `message`, `next`).
    async fn refused(&self, who: &str, tool: &str, arguments: Value) -> Value {
        let body = self.call(who, tool, arguments).await;
        assert_eq!(body["result"]["isError"], true, "{tool} as {who}: {body}");
        let refusal = body["result"]["structuredContent"].clone();
        let text = body["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(refusal["code"].as_str().unwrap()), "the text carries the code: {text}");
        refusal
    }

    /// A tool call refused as invalid params: the field it names.
    async fn invalid(&self, who: &str, tool: &str, arguments: Value) -> String {
        let body = self.call(who, tool, arguments).await;
        assert_eq!(body["error"]["code"], INVALID_PARAMS, "{tool}: {body}");
        body["error"]["data"]["field"].as_str().expect("the field is named").to_owned()
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn tools_list_shows_each_role_its_tools() {
    let world = World::new().await;
    assert_eq!(world.tools("agent-a").await, names(WORKER_TOOLS));
    assert_eq!(world.tools("sub").await, names(&["submit", "show", "history", "lineage", "cancel"]));
    let all = world.tools("admin").await;
    assert_eq!(all.len(), 18, "{all:?}");
    assert_eq!(world.tools("ops").await, all);
    for operator_tool in ["stuck", "stats", "inbox_list", "inbox_claim", "inbox_resolve", "cancel"] {
        assert!(!world.tools("agent-a").await.contains(operator_tool));
    }
    // Every tool has a description for the model and an object schema.
    let body = world.rpc("admin", "tools/list", json!({})).await;
    for tool in body["result"]["tools"].as_array().unwrap() {
        assert!(tool["description"].as_str().unwrap().len() > 80, "{tool}");
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }
}

#[tokio::test]
async fn mcp_needs_a_token_and_a_role_that_may_call_the_tool() {
    let world = World::new().await;
    let message = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {} });
    let (status, body) = world.http("", "POST", "/mcp", Some(message)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthenticated")), "{body}");
    // A tool the agent does not see cannot be called either.
    assert_eq!(world.invalid("agent-a", "stuck", json!({})).await, "name");
    assert_eq!(world.invalid("agent-a", "inbox_list", json!({})).await, "name");
    assert_eq!(world.invalid("sub", "claim", json!({ "stages": ["s1"] })).await, "name");
    // The operator may.
    assert!(world.ok("ops", "stuck", json!({})).await.get("stuck").is_some());
}

#[tokio::test]
async fn a_task_goes_from_submit_to_done_through_tools() {
    let world = World::new().await;
    let task = world
        .ok("sub", "submit", json!({ "stage": "s1", "payload": { "n": 1 }, "idempotency_key": "k1" }))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let leases = world.ok("agent-a", "claim", json!({ "stages": ["s1"], "wait_ms": 0 })).await;
    let epoch = leases["leases"][0]["epoch"].as_u64().unwrap();
    assert_eq!(leases["leases"][0]["task"], id.as_str());
    world.ok("agent-a", "heartbeat", json!({ "task": id, "epoch": epoch, "note": "working" })).await;

    // Refusals are tool errors with the API's code, and change nothing.
    let before = world.ok("agent-a", "show", json!({ "task": id })).await;
    let stale = world
        .refused("agent-a", "handoff", json!({ "task": id, "epoch": epoch - 1, "to_stage": "s2" }))
        .await;
    assert_eq!(stale["code"], "lease_lost", "{stale}");
    assert!(stale["next"].as_str().unwrap().contains("claim new work"));
    let off_route =
        world.refused("agent-a", "handoff", json!({ "task": id, "epoch": epoch, "to_stage": "s1x" })).await;
    assert_eq!(off_route["code"], "route_not_allowed", "{off_route}");
    let hidden = world.refused("agent-b", "show", json!({ "task": id })).await;
    assert_eq!(hidden["code"], "not_found", "{hidden}");
    assert_eq!(world.ok("agent-a", "show", json!({ "task": id })).await["revision"], before["revision"]);

    world
        .ok(
            "agent-a",
            "handoff",
            json!({ "task": id, "epoch": epoch, "to_stage": "s2", "note": "first half", "confidence": 0.9, "idempotency_key": "h1" }),
        )
        .await;
    let leases = world.ok("agent-a", "claim", json!({ "stages": ["s2"] })).await;
    let epoch = leases["leases"][0]["epoch"].as_u64().unwrap();
    world.ok("agent-a", "complete", json!({ "task": id, "epoch": epoch, "result": { "ok": true } })).await;
    assert_eq!(world.ok("sub", "show", json!({ "task": id })).await["state"], "done");

    // History and lineage, as tools and as resources.
    let history = world.ok("agent-a", "history", json!({ "task": id })).await;
    let kinds: Vec<&str> =
        history["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"submitted"));
    assert!(kinds.contains(&"handed_off"), "{kinds:?}");
    let templates = world.rpc("sub", "resources/templates/list", json!({})).await;
    let uris: Vec<&str> = templates["result"]["resourceTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uriTemplate"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["baton://tasks/{id}/history", "baton://tasks/{id}/lineage"]);
    for kind in ["history", "lineage"] {
        let uri = format!("baton://tasks/{id}/{kind}");
        let read = world.rpc("sub", "resources/read", json!({ "uri": uri })).await;
        let contents = &read["result"]["contents"][0];
        assert_eq!(contents["uri"], uri.as_str(), "{read}");
        let parsed: Value = serde_json::from_str(contents["text"].as_str().unwrap()).unwrap();
        assert!(parsed.is_object());
    }
    let hidden =
        world.rpc("agent-b", "resources/read", json!({ "uri": format!("baton://tasks/{id}/history") })).await;
    assert!(hidden["error"]["code"].is_i64(), "{hidden}");
}

#[tokio::test]
async fn bad_arguments_are_invalid_params_naming_the_field() {
    let world = World::new().await;
    let id = world.ok("sub", "submit", json!({ "stage": "s1", "payload": 1 })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        ("handoff", json!({ "task": id, "to_stage": "s2" }), "epoch"),
        ("handoff", json!({ "task": id, "epoch": "one", "to_stage": "s2" }), "epoch"),
        ("handoff", json!({ "task": "not-a-uuid", "epoch": 1, "to_stage": "s2" }), "task"),
        ("handoff", json!({ "task": id, "epoch": 1, "to_stage": "s2", "confidence": 3 }), "confidence"),
        ("claim", json!({ "stages": [] }), "stages"),
        ("claim", json!({ "stages": ["s1"], "bogus": true }), "bogus"),
        ("show", json!({}), "task"),
    ];
    for (tool, arguments, field) in cases {
        assert_eq!(world.invalid("agent-a", tool, arguments.clone()).await, field, "{tool} {arguments}");
    }
    assert_eq!(
        world.invalid("ops", "inbox_resolve", json!({ "task": id, "epoch": 1, "resolution": "maybe" })).await,
        "resolution"
    );
    // Checked by the API itself: a field it refuses by name.
    assert_eq!(world.invalid("sub", "submit", json!({ "stage": "", "payload": 1 })).await, "stage");
    // A named limit stays a tool error, carrying the limit.
    let limit = world.refused("agent-a", "claim", json!({ "stages": ["s1"], "max": 0 })).await;
    assert_eq!(
        (limit["code"].as_str(), limit["details"]["limit"].as_str()),
        (Some("limit_exceeded"), Some("claim_max"))
    );
    // Nothing changed: the task still waits in s1 at its first revision.
    let task = world.ok("sub", "show", json!({ "task": id })).await;
    assert_eq!((task["state"].as_str(), task["revision"].as_u64()), (Some("waiting"), Some(1)));
}
