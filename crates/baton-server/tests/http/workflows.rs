//! Workflows, aborts, the human inbox and stuck work over HTTP, end to end on
//! the SQLite store.
//!
//! Goal: a workflow file is applied once per definition (201, then 200
//! unchanged, a changed file a new version) and a bad one is refused 422
//! `invalid_workflow` with each mistake's line and column; a task keeps the
//! version it was submitted under (its routes and its default route); the
//! stage rules of a workflow (agents, capacity) hold over the API; an abort
//! compensates the stages done latest first; operators list, claim and
//! resolve escalated tasks in every way, also in a human stage that only an
//! older version of the workflow declares; `stuck` names an escalated task, an
//! overdue timer and a passed deadline, each with why; and agents may not
//! touch any of the operators' routes. Method: the parent suite's `Api`
//! (`app(state).oneshot(..)`, a manual clock, the sweeper stepped by hand,
//! never running on its own), plus a small auth-on world for the roles.

use super::{Api, id};
use axum::body::Body;
use axum::http::{Request, header};
use baton_core::Rules;
use baton_server::{AppState, Auth, AuthMode, Config, Options, ReadyHub, sweeper};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

/// Version 1: take -> pack -> ship, each done stage with a compensation;
/// `take` escalates to the workflow's own human stage `desk` after 10 s.
const ORDERS_V1: &str = r#"
name = "orders"
entry = "take"

[stages.take]
accept_within = "10s"
reoffers = 0
escalate_to = "desk"
routes = ["pack", "ship"]
next = "pack"
compensate = "undo-take"

[stages.pack]
capacity = 1
routes = ["ship"]
next = "ship"
compensate = "undo-pack"

[stages.ship]
agents = ["shipper"]

[stages.undo-take]
[stages.undo-pack]

[stages.desk]
human = true
"#;

/// Version 2: `take` goes straight to `ship`; `pack` is no longer a route from it.
fn orders_v2() -> String {
    ORDERS_V1.replace(
        r#"routes = ["pack", "ship"]
next = "pack""#,
        r#"routes = ["ship"]
next = "ship""#,
    )
}

async fn apply(api: &Api, source: &str) -> (u16, Value) {
    let reply = api.post("/v1/workflows", json!({ "source": source })).await;
    (reply.status, reply.body)
}

async fn submit_orders(api: &Api) -> String {
    let task = api.post("/v1/tasks", json!({ "workflow": "orders", "payload": {"n": 1} })).await.expect(201);
    assert_eq!(task["stage"], "take");
    id(&task)
}

/// Claims `task`'s stage as `agent` and returns the epoch (the task must be the one leased).
async fn claim_task(api: &Api, agent: &str, stage: &str, task: &str) -> u64 {
    let lease = api.claim(agent, stage).await;
    assert_eq!(lease["task"], task, "the claim leased the expected task");
    lease["epoch"].as_u64().expect("an epoch")
}

async fn resolve(api: &Api, task: &str, body: Value) -> super::Reply {
    api.post(&format!("/v1/inbox/{task}/resolve"), body).await
}

async fn complete(api: &Api, agent: &str, task: &str, epoch: u64) -> Value {
    api.post(&format!("/v1/tasks/{task}/complete"), json!({ "agent": agent, "epoch": epoch }))
        .await
        .expect(200)
}

#[tokio::test]
async fn workflows_apply_once_per_definition_and_running_tasks_keep_their_version() {
    let api = Api::new();
    let (status, first) = apply(&api, ORDERS_V1).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!((first["created"].clone(), first["workflow"]["version"].clone()), (json!(true), json!(1)));
    let view = &first["workflow"];
    assert_eq!(view["entry"], "take");
    assert_eq!(view["stages"]["take"]["next"], "pack");
    assert_eq!(view["stages"]["take"]["policy"]["accept_within_ms"], 10_000);
    assert_eq!(view["stages"]["desk"]["human"], true);
    assert_eq!(view["stages"]["ship"]["agents"], json!(["shipper"]));
    assert_eq!(view["stages"]["pack"]["capacity"], 1);
    assert!(view["source"].as_str().unwrap().contains("name = \"orders\""), "{}", view["source"]);

    let (status, again) = apply(&api, ORDERS_V1).await;
    assert_eq!(
        (status, again["created"].clone(), again["workflow"]["version"].clone()),
        (200, json!(false), json!(1))
    );

    let old = submit_orders(&api).await;
    let (status, second) = apply(&api, &orders_v2()).await;
    assert_eq!((status, second["workflow"]["version"].clone()), (201, json!(2)), "{second}");
    let new = submit_orders(&api).await;
    let old_task = api.get(&format!("/v1/tasks/{old}")).await.expect(200);
    assert_eq!(old_task["workflow"], json!({"name": "orders", "version": 1}));
    let new_task = api.get(&format!("/v1/tasks/{new}")).await.expect(200);
    assert_eq!(new_task["workflow"], json!({"name": "orders", "version": 2}));

    // The v1 task follows v1's default route, the v2 task v2's.
    let epoch = claim_task(&api, "w1", "take", &old).await;
    let done = complete(&api, "w1", &old, epoch).await;
    assert_eq!(
        (done["task"]["stage"].clone(), done["task"]["state"].clone()),
        (json!("pack"), json!("waiting"))
    );
    assert!(done["handoff_id"].is_string(), "a routed complete is a handoff: {done}");
    assert_eq!(done["task"]["trail"], json!(["take"]));
    let epoch = claim_task(&api, "w1", "take", &new).await;
    // v2 has no route take -> pack: refused, nothing changed.
    let refused = api
        .post(&format!("/v1/tasks/{new}/handoff"), json!({"agent": "w1", "epoch": epoch, "to_stage": "pack"}))
        .await
        .expect(422);
    assert_eq!(refused["code"], "route_not_allowed");
    assert_eq!(refused["details"], json!({"from": "take", "to": "pack"}));
    let done = complete(&api, "w1", &new, epoch).await;
    assert_eq!(done["task"]["stage"], "ship");

    let list = api.get("/v1/workflows").await.expect(200);
    assert_eq!(list["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(list["workflows"][0]["version"], 2);
    let v1 = api.get("/v1/workflows/orders?version=1").await.expect(200);
    assert_eq!(v1["stages"]["take"]["next"], "pack");
    let latest = api.get("/v1/workflows/orders").await.expect(200);
    assert_eq!(latest["stages"]["take"]["next"], "ship");
    for missing in ["/v1/workflows/orders?version=3", "/v1/workflows/nope"] {
        assert_eq!(api.get(missing).await.expect(404)["code"], "not_found", "{missing}");
    }
}

#[tokio::test]
async fn a_bad_workflow_file_is_refused_with_every_mistake_where_it_is() {
    let api = Api::new();
    let bad = "name = \"w\"\nentry = \"a\"\n\n[stages.a]\nroutes = [\"nowhere\"]\nlease = \"5 minutes\"\n";
    let (status, body) = apply(&api, bad).await;
    assert_eq!((status, body["code"].clone()), (422, json!("invalid_workflow")), "{body}");
    let errors = body["details"]["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{body}");
    for error in errors {
        assert!(error["line"].as_u64().unwrap() >= 5 && error["column"].as_u64().unwrap() >= 1, "{error}");
        assert!(error["field"].as_str().unwrap().starts_with("stages.a."), "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let (status, syntax) = apply(&api, "name = \"w\"\nentry = [").await;
    assert_eq!((status, syntax["code"].clone()), (422, json!("invalid_workflow")));
    assert_eq!(syntax["details"]["errors"][0]["line"], 2, "{syntax}");
    assert_eq!(api.get("/v1/workflows").await.expect(200)["workflows"], json!([]), "nothing stored");

    let unknown = api.post("/v1/tasks", json!({"workflow": "nope", "payload": {}})).await.expect(404);
    assert_eq!(unknown["code"], "not_found");
    apply(&api, ORDERS_V1).await;
    let wrong = api.post("/v1/tasks", json!({"workflow": "orders", "stage": "pack", "payload": {}})).await;
    assert_eq!(wrong.expect(400)["code"], "invalid_request");
    let entry = api.post("/v1/tasks", json!({"workflow": "orders", "stage": "take", "payload": {}})).await;
    assert_eq!(entry.expect(201)["workflow"]["version"], 1);
}

#[tokio::test]
async fn stage_agents_and_capacity_hold_over_the_api() {
    let api = Api::new();
    apply(&api, ORDERS_V1).await;
    let (a, b) = (submit_orders(&api).await, submit_orders(&api).await);
    for task in [&a, &b] {
        let epoch = claim_task(&api, "w1", "take", task).await;
        complete(&api, "w1", task, epoch).await;
    }
    // `pack` holds one task at a time: the second claim gets nothing.
    let first = api.claim("p1", "pack").await;
    let none = api.post("/v1/claims", json!({"agent": "p2", "stages": ["pack"]})).await.expect(200);
    assert_eq!(none["leases"], json!([]), "capacity 1 is taken");
    assert_eq!(
        none["skipped"],
        json!([{"stage": "pack", "reason": "capacity", "held": 1, "capacity": 1}]),
        "the empty answer says why"
    );
    let task = first["task"].as_str().unwrap().to_owned();
    complete(&api, "p1", &task, first["epoch"].as_u64().unwrap()).await;
    let second = api.claim("p2", "pack").await;
    assert_ne!(second["task"], first["task"]);

    // Only `shipper` may claim at `ship`: anyone else is just not granted.
    let none = api.post("/v1/claims", json!({"agent": "intruder", "stages": ["ship"]})).await.expect(200);
    assert_eq!(none, json!({"leases": []}), "nothing skipped for capacity");
    let shipped = api.claim("shipper", "ship").await;
    assert_eq!(shipped["task"], task.as_str());
}

#[tokio::test]
async fn an_abort_compensates_the_stages_done_latest_first_then_cancels() {
    let api = Api::new();
    apply(&api, ORDERS_V1).await;
    let task = submit_orders(&api).await;
    let epoch = claim_task(&api, "w1", "take", &task).await;
    complete(&api, "w1", &task, epoch).await;
    api.clock.advance(1_000);
    let epoch = claim_task(&api, "p1", "pack", &task).await;
    complete(&api, "p1", &task, epoch).await;
    let epoch = claim_task(&api, "shipper", "ship", &task).await;

    let abort = format!("/v1/tasks/{task}/abort");
    let empty = api.post(&abort, json!({"agent": "shipper", "epoch": epoch, "reason": " "})).await;
    assert_eq!(empty.expect(400)["code"], "invalid_request");
    let stale = api.post(&abort, json!({"agent": "shipper", "epoch": 1, "reason": "x"})).await;
    assert_eq!(stale.expect(409)["code"], "lease_lost");
    let aborted = api
        .post(
            &format!("/v1/tasks/{task}/abort"),
            json!({"agent": "shipper", "epoch": epoch, "reason": "out of stock"}),
        )
        .await
        .expect(200);
    assert_eq!(aborted["task"]["state"], "blocked", "{aborted}");
    assert_eq!(aborted["task"]["trail"], json!(["take", "pack"]));

    // Latest first: undo-pack, then undo-take, each a task of its own.
    let mut order = Vec::new();
    for stage in ["undo-pack", "undo-take"] {
        let lease = api.claim("fixer", stage).await;
        assert_eq!(lease["parent"], task.as_str());
        assert_eq!(lease["payload"]["compensate"], task.as_str());
        assert_eq!(lease["payload"]["reason"], "out of stock");
        let child = lease["task"].as_str().unwrap().to_owned();
        assert_eq!(api.get(&format!("/v1/tasks/{child}")).await.expect(200)["compensation"], true);
        order.push(stage);
        complete(&api, "fixer", &child, lease["epoch"].as_u64().unwrap()).await;
    }
    assert_eq!(order, ["undo-pack", "undo-take"]);
    let end = api.get(&format!("/v1/tasks/{task}")).await.expect(200);
    assert_eq!(end["state"], "cancelled");
    let reason = end["cancel_reason"].as_str().unwrap();
    assert!(reason.contains("out of stock") && reason.contains("undo-pack done, undo-take done"), "{reason}");
    let history = api.get(&format!("/v1/tasks/{task}/history")).await.expect(200);
    let kinds: Vec<&str> =
        history["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "aborted").count(), 2, "aborted, then the end: {kinds:?}");
}

/// An `orders` task escalated to `desk` (nobody claimed it at `take`) and an
/// ad hoc task escalated to the global `inbox`; returns their ids.
async fn escalate_two(api: &Api) -> (String, String) {
    apply(api, ORDERS_V1).await;
    let desk = submit_orders(api).await;
    let adhoc = id(&api.submit("adhoc", json!({"n": 2})).await);
    api.clock.advance(11_000);
    sweeper::step(&api.state).await;
    api.clock.advance(300_000);
    sweeper::step(&api.state).await;
    api.clock.advance(300_000);
    sweeper::step(&api.state).await;
    let desk_task = api.get(&format!("/v1/tasks/{desk}")).await.expect(200);
    assert_eq!(desk_task["stage"], "desk", "{desk_task}");
    let inbox_task = api.get(&format!("/v1/tasks/{adhoc}")).await.expect(200);
    assert_eq!(inbox_task["stage"], "inbox", "{inbox_task}");
    (desk, adhoc)
}

#[tokio::test]
async fn operators_list_claim_and_resolve_the_inbox() {
    let api = Api::new();
    let (desk, adhoc) = escalate_two(&api).await;
    let page = api.get("/v1/inbox").await.expect(200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(items[0]["task"]["id"], desk.as_str(), "oldest first");
    assert!(items[0]["why"].as_str().unwrap().contains("not claimed at take"), "{}", items[0]["why"]);
    assert!(items[1]["why"].as_str().unwrap().contains("not claimed at adhoc"), "{}", items[1]["why"]);
    assert!(items[0]["since"].is_string());
    let only = api.get("/v1/inbox?stage=desk").await.expect(200);
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    assert_eq!(api.get("/v1/inbox?stage=take").await.expect(400)["code"], "invalid_request");
    let first = api.get("/v1/inbox?limit=1").await.expect(200);
    let cursor = first["next_cursor"].as_str().expect("a second page").to_owned();
    let rest = api.get(&format!("/v1/inbox?limit=1&after={cursor}")).await.expect(200);
    assert_eq!(rest["items"][0]["task"]["id"], adhoc.as_str());

    // Claim the second task of a stage by id (not the stage's best): the
    // inbox claim takes exactly the task named.
    let also = id(&api.submit("inbox", json!({"n": 3})).await);
    let lease = api.post(&format!("/v1/inbox/{also}/claim"), json!({})).await.expect(200);
    assert_eq!((lease["task"].as_str().unwrap(), lease["stage"].as_str().unwrap()), (also.as_str(), "inbox"));
    let again = api.post(&format!("/v1/inbox/{also}/claim"), json!({})).await.expect(409);
    assert_eq!(again["code"], "invalid_transition");
    let held = api.get("/v1/inbox?stage=inbox").await.expect(200);
    assert_eq!(held["items"].as_array().unwrap().len(), 2, "held inbox tasks are listed too");
    let epoch = lease["epoch"].clone();
    assert_eq!(
        resolve(&api, &also, json!({"epoch": epoch, "resolution": "cancel"})).await.expect(400)["code"],
        "invalid_request"
    );
    let stale = resolve(&api, &also, json!({"epoch": 99, "resolution": "complete"})).await.expect(409);
    assert_eq!(stale["code"], "lease_lost");
    let cancelled =
        resolve(&api, &also, json!({"epoch": epoch, "resolution": "cancel", "reason": "duplicate"})).await;
    let cancelled = cancelled.expect(200);
    assert_eq!(cancelled["task"]["state"], "cancelled");
    assert_eq!(cancelled["task"]["cancel_reason"], "duplicate");

    // Hand the workflow task back at any of its stages.
    let lease = api.post(&format!("/v1/inbox/{desk}/claim"), json!({"agent": "ann"})).await.expect(200);
    let back = resolve(
        &api,
        &desk,
        json!({"epoch": lease["epoch"], "agent": "ann", "resolution": "handoff", "to_stage": "pack", "note": "checked"}),
    )
    .await
    .expect(200);
    assert_eq!(
        (back["task"]["stage"].clone(), back["task"]["state"].clone()),
        (json!("pack"), json!("waiting"))
    );
    assert!(back["handoff_id"].is_string());
    let outside =
        resolve(&api, &desk, json!({"epoch": lease["epoch"], "agent": "ann", "resolution": "complete"}))
            .await;
    assert_eq!(outside.expect(404)["code"], "not_found", "no longer in the inbox");

    // Complete the ad hoc one.
    let lease = api.post(&format!("/v1/inbox/{adhoc}/claim"), json!({})).await.expect(200);
    let done = resolve(
        &api,
        &adhoc,
        json!({"epoch": lease["epoch"], "resolution": "complete", "note": "done by hand"}),
    )
    .await;
    assert_eq!(done.expect(200)["task"]["state"], "done");

    // Abort a workflow task from the desk: it did nothing, so it ends at once.
    let task = submit_orders(&api).await;
    api.clock.advance(11_000);
    sweeper::step(&api.state).await;
    let lease = api.post(&format!("/v1/inbox/{task}/claim"), json!({})).await.expect(200);
    let no_reason = resolve(&api, &task, json!({"epoch": lease["epoch"], "resolution": "abort"})).await;
    assert_eq!(no_reason.expect(400)["code"], "invalid_request");
    let aborted =
        resolve(&api, &task, json!({"epoch": lease["epoch"], "resolution": "abort", "reason": "fraud"}))
            .await;
    let aborted = aborted.expect(200);
    assert_eq!(aborted["task"]["state"], "cancelled");
    assert!(aborted["task"]["cancel_reason"].as_str().unwrap().contains("fraud"));

    // A task outside human stages is not an inbox task.
    let plain = id(&api.submit("work", json!({})).await);
    assert_eq!(
        api.post(&format!("/v1/inbox/{plain}/claim"), json!({})).await.expect(404)["code"],
        "not_found"
    );
    assert_eq!(api.get("/v1/inbox").await.expect(200)["items"], json!([]));
}

#[tokio::test]
async fn tasks_in_a_human_stage_only_an_older_version_declares_stay_in_the_inbox() {
    let api = Api::new();
    let (desk, adhoc) = escalate_two(&api).await;
    // Version 2 renames the human stage: `desk` is no longer declared, but
    // the task escalated under version 1 still waits there for a person.
    let renamed = ORDERS_V1
        .replace("escalate_to = \"desk\"", "escalate_to = \"front-desk\"")
        .replace("[stages.desk]", "[stages.front-desk]");
    let (status, applied) = apply(&api, &renamed).await;
    assert_eq!((status, applied["workflow"]["version"].clone()), (201, json!(2)), "{applied}");
    let page = api.get("/v1/inbox").await.expect(200);
    let listed: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|i| i["task"]["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [desk.as_str(), adhoc.as_str()], "{page}");
    let only = api.get("/v1/inbox?stage=desk").await.expect(200);
    assert_eq!(only["items"][0]["task"]["id"], desk.as_str(), "{only}");
    let stuck = api.get("/v1/stuck").await.expect(200);
    assert!(stuck.to_string().contains(desk.as_str()), "{stuck}");
    let lease = api.post(&format!("/v1/inbox/{desk}/claim"), json!({})).await.expect(200);
    assert_eq!((lease["task"].as_str().unwrap(), lease["stage"].as_str().unwrap()), (desk.as_str(), "desk"));
}

#[tokio::test]
async fn stuck_lists_escalated_tasks_overdue_timers_and_passed_deadlines_with_why() {
    let api = Api::new();
    let (desk, _) = escalate_two(&api).await;
    // A timer the sweeper has not acted on: nobody steps it this time.
    let late = id(&api.submit("late", json!({})).await);
    // A held task whose deadline passes: it stays held, and is listed.
    let deadline = baton_api::Timestamp(api.clock.now() + 2_000).to_string();
    let due = api
        .post("/v1/tasks", json!({"stage": "slow", "payload": {}, "deadline": deadline}))
        .await
        .expect(201);
    let due = id(&due);
    api.claim("worker", "slow").await;
    api.clock.advance(3_000);
    sweeper::step(&api.state).await;
    assert_eq!(api.get(&format!("/v1/tasks/{due}")).await.expect(200)["deadline_passed"], true);
    api.clock.advance(400_000);

    let stuck = api.get("/v1/stuck?grace_ms=1000").await.expect(200);
    let entries = stuck["stuck"].as_array().unwrap();
    let find = |task: &str| {
        entries.iter().find(|e| e["task"] == task).unwrap_or_else(|| panic!("{task} in {stuck}"))
    };
    let overdue = find(&late);
    assert_eq!((overdue["kind"].clone(), overdue["state"].clone()), (json!("overdue"), json!("waiting")));
    assert!(overdue["why"].as_str().unwrap().contains("the sweeper has not acted"), "{overdue}");
    let escalated = find(&desk);
    assert_eq!(escalated["kind"], "escalated");
    assert!(escalated["why"].as_str().unwrap().contains("not claimed at take"), "{escalated}");
    let passed = find(&due);
    assert!(["deadline", "overdue"].contains(&passed["kind"].as_str().unwrap()), "{passed}");
    // Once the sweeper has caught up, the passed deadline is what remains.
    sweeper::step(&api.state).await;
    let stuck = api.get("/v1/stuck?grace_ms=1000").await.expect(200);
    let entries = stuck["stuck"].as_array().unwrap();
    let passed = entries.iter().find(|e| e["task"] == due.as_str()).expect("the deadline task");
    assert_eq!(passed["kind"], "deadline", "{passed}");
    assert!(passed["why"].as_str().unwrap().contains("deadline passed"), "{passed}");
    assert_eq!(passed["custodian"]["kind"], "stage", "the lease expired meanwhile: {passed}");
    assert!(!entries.iter().any(|e| e["kind"] == "overdue"), "nothing overdue now: {stuck}");
    assert_eq!(api.get("/v1/stuck?grace_ms=x").await.expect(400)["code"], "invalid_request");
}

// ---------------------------------------------------------------------------
// Roles: a small world with auth on.

struct Authed {
    _dir: tempfile::TempDir,
    state: AppState,
    clock: Arc<ManualClock>,
    admin: String,
}

impl Authed {
    async fn new() -> Self {
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
        let admin = baton_server::auth::bootstrap_admin(&*store, clock.now())
            .await
            .expect("bootstrap")
            .expect("admin");
        let auth = Auth::new(store.clone(), rules.policies.clone());
        let options = Options { auth: AuthMode::Tokens(auth), limits: rules.limits, ..Options::default() };
        let state = AppState::new(Config { store, clock: clock.clone(), hub, options });
        Self { _dir: dir, state, clock, admin }
    }

    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let request = match body {
            Some(b) => {
                builder.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string()))
            }
            None => builder.body(Body::empty()),
        }
        .unwrap();
        let response = baton_server::app(self.state.clone()).oneshot(request).await.expect("answer");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") })
    }

    /// A principal and its token, made through the admin API.
    async fn principal(&self, name: &str, role: &str, stages: Value) -> String {
        let body = json!({"name": name, "role": role, "stages": stages});
        assert_eq!(self.call(&self.admin, "POST", "/v1/principals", Some(body)).await.0, 201);
        let (status, token) =
            self.call(&self.admin, "POST", "/v1/tokens", Some(json!({"principal": name}))).await;
        assert_eq!(status, 201);
        token["token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn only_operators_and_admins_use_the_inbox_stuck_work_and_apply_workflows() {
    let world = Authed::new().await;
    let agent = world.principal("bot", "agent", json!(["*"])).await;
    let submitter = world.principal("sub", "submitter", json!([])).await;
    let operator = world.principal("ops", "operator", json!([])).await;
    let apply = json!({"source": ORDERS_V1});
    for token in [&agent, &submitter] {
        for (method, path, body) in [
            ("POST", "/v1/workflows", Some(apply.clone())),
            ("GET", "/v1/inbox", None),
            ("GET", "/v1/stuck", None),
        ] {
            let (status, body) = world.call(token, method, path, body).await;
            assert_eq!((status, body["code"].clone()), (403, json!("forbidden")), "{method} {path}: {body}");
        }
    }
    assert_eq!(
        world.call(&agent, "GET", "/v1/workflows/orders", None).await.0,
        404,
        "nothing applied by them"
    );
    let (status, applied) = world.call(&operator, "POST", "/v1/workflows", Some(apply)).await;
    assert_eq!(status, 201, "{applied}");
    assert_eq!(
        world.call(&agent, "GET", "/v1/workflows/orders", None).await.0,
        200,
        "anyone reads workflows"
    );

    // An escalation to the workflow's own human stage is the operator's to
    // claim and resolve; the agent may not touch it through the inbox.
    let (status, task) =
        world.call(&submitter, "POST", "/v1/tasks", Some(json!({"workflow": "orders", "payload": {}}))).await;
    assert_eq!(status, 201, "{task}");
    let task = id(&task);
    world.clock.advance(11_000);
    sweeper::step(&world.state).await;
    let (status, inbox) = world.call(&operator, "GET", "/v1/inbox", None).await;
    assert_eq!((status, inbox["items"][0]["task"]["stage"].clone()), (200, json!("desk")), "{inbox}");
    let claim = format!("/v1/inbox/{task}/claim");
    assert_eq!(world.call(&agent, "POST", &claim, Some(json!({}))).await.0, 403);
    let (status, lease) = world.call(&operator, "POST", &claim, Some(json!({}))).await;
    assert_eq!(status, 200, "{lease}");
    let resolve = json!({"epoch": lease["epoch"], "resolution": "handoff", "to_stage": "ship"});
    let path = format!("/v1/inbox/{task}/resolve");
    assert_eq!(world.call(&agent, "POST", &path, Some(resolve.clone())).await.0, 403);
    let (status, back) = world.call(&operator, "POST", &path, Some(resolve)).await;
    assert_eq!((status, back["task"]["stage"].clone()), (200, json!("ship")), "{back}");

    // Plain claims: the workflow's human stage is an operator's, a worker stage is not.
    let (status, claimed) =
        world.call(&operator, "POST", "/v1/claims", Some(json!({"stages": ["desk"]}))).await;
    assert_eq!((status, claimed["leases"].clone()), (200, json!([])), "{claimed}");
    let (status, refused) =
        world.call(&operator, "POST", "/v1/claims", Some(json!({"stages": ["ship"]}))).await;
    assert_eq!((status, refused["code"].clone()), (403, json!("forbidden")), "{refused}");
}
