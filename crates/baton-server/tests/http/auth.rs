//! Authentication and authorization over HTTP, end to end on the SQLite store
//! (T13 of docs/glossary.md).
//!
//! Goal: with auth on, every route refuses every caller who may not make the
//! call, with the documented status and code (401 for a missing, malformed,
//! unknown or revoked token; 403 for a role or a grant that says no; 404 for
//! a task outside an agent's stages, exactly as for a missing one; 403
//! `not_holder` and 409 `lease_lost` for another agent's lease; 422
//! `route_not_allowed` off an agent's routes), changes nothing, and is logged
//! with its route, code and (once known) principal; a token's secret appears
//! in no log line, no event and no byte of the database; and each role's own
//! calls are accepted.
//!
//! Method: one world per test (a temp-dir SQLite store shared by the server's
//! auth as its directory, a manual clock), principals and tokens made through
//! the admin API, requests through `app(state).oneshot(..)`. Refusals are a
//! table run through one `check` helper, which compares a snapshot of every
//! task (revision, event count) and of the directory before and after each
//! call, and finds the refusal's line in the captured log (a JSON tracing
//! subscriber writing to a buffer).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use baton_core::auth::{Directory, Principal, TokenRecord};
use baton_core::{Rules, Store, TaskFilter};
use baton_server::{AppState, Auth, AuthMode, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// The captured log

/// Every log line of this test binary, as written by the JSON subscriber.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let capture = Capture(buffer.clone());
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || capture.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        buffer
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_len() -> usize {
    logs().lock().unwrap().len()
}

/// The log lines written since `mark`, parsed.
fn log_since(mark: usize) -> Vec<Value> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()[mark..]).into_owned();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------
// The world: a store, a server with auth on, principals and their tokens

struct World {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<SqliteStore>,
    state: AppState,
    app: Router,
    /// Tokens by principal name (the text shown once).
    tokens: BTreeMap<String, String>,
}

/// Who calls: the `Authorization` header sent, or a token in the query string.
#[derive(Debug, Clone)]
enum Cred {
    None,
    Header(String),
    Query(String),
}

struct Reply {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
}

impl Reply {
    #[track_caller]
    fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }
}

impl World {
    /// A server with auth on over an empty store, the first admin made as
    /// `baton serve` makes it, and the principals the cases use, made through
    /// the admin API:
    /// - `agent-a`: stages s1, s1b (no routes: between its own stages);
    /// - `agent-b`: stages s2, s2b;
    /// - `agent-c`: stages s1, s2, one route s1 -> s2;
    /// - `sub` (submitter: every task of the scene is its), `sub2` (another
    ///   submitter), `ops` (operator: human stages such as `inbox`);
    /// - `gone`: a submitter, revoked (its token too).
    async fn new() -> Self {
        Self::with_options(|_| {}).await
    }

    /// `new` with server options that `adjust` changes from the defaults.
    async fn with_options(adjust: impl FnOnce(&mut Options)) -> Self {
        logs();
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
        let admin = baton_server::auth::bootstrap_admin(&*store, clock.now_ms())
            .await
            .expect("bootstrap")
            .expect("an empty directory gets its first admin");
        assert_eq!(baton_server::auth::bootstrap_admin(&*store, clock.now_ms()).await.expect("again"), None);
        let auth = Auth::new(store.clone(), rules.policies.clone());
        let mut options =
            Options { auth: AuthMode::Tokens(auth), limits: rules.limits.clone(), ..Options::default() };
        adjust(&mut options);
        let state = AppState::new(Config { store: store.clone(), clock: clock.clone(), hub, options });
        let app = baton_server::app(state.clone());
        let mut world = Self { dir, clock, store, state, app, tokens: BTreeMap::new() };
        world.tokens.insert("admin".into(), admin);
        for (name, role, stages, routes) in [
            ("agent-a", "agent", json!(["s1", "s1b"]), json!([])),
            ("agent-b", "agent", json!(["s2", "s2b"]), json!([])),
            ("agent-c", "agent", json!(["s1", "s2"]), json!([{ "from": "s1", "to": "s2" }])),
            ("sub", "submitter", json!([]), json!([])),
            ("sub2", "submitter", json!([]), json!([])),
            ("ops", "operator", json!([]), json!([])),
            ("gone", "submitter", json!([]), json!([])),
        ] {
            let body = json!({ "name": name, "role": role, "stages": stages, "routes": routes });
            let created = world.call_as("admin", "POST", "/v1/principals", Some(body)).await.expect(201);
            assert_eq!(created["name"], name);
            let token = world.mint(name).await;
            world.tokens.insert(name.to_owned(), token);
        }
        world.call_as("admin", "DELETE", "/v1/principals/gone", None).await.expect(200);
        world
    }

    /// Mints a token for `principal` through the admin API.
    async fn mint(&self, principal: &str) -> String {
        let created = self
            .call_as("admin", "POST", "/v1/tokens", Some(json!({ "principal": principal })))
            .await
            .expect(201);
        assert_eq!(created["principal"], principal);
        created["token"].as_str().expect("the token's text").to_owned()
    }

    fn token(&self, principal: &str) -> &str {
        &self.tokens[principal]
    }

    fn bearer(&self, principal: &str) -> Cred {
        Cred::Header(format!("Bearer {}", self.token(principal)))
    }

    async fn send(&self, cred: &Cred, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let uri = match cred {
            Cred::Query(token) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}access_token={token}")
            }
            _ => path.to_owned(),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if let Cred::Header(value) = cred {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.expect("the router never fails");
        let status = response.status().as_u16();
        let www_authenticate =
            response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
        let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
        Reply { status, body, www_authenticate, retry_after }
    }

    async fn call_as(&self, principal: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.send(&self.bearer(principal), method, path, body.as_ref()).await
    }

    /// Submits into `stage` as `sub`; returns the task's id.
    async fn submit(&self, stage: &str) -> String {
        let body = json!({ "stage": stage, "payload": { "n": 1 } });
        let task = self.call_as("sub", "POST", "/v1/tasks", Some(body)).await.expect(201);
        task["id"].as_str().unwrap().to_owned()
    }

    /// Claims one task from `stage` as `principal`; returns (task, epoch).
    async fn claim(&self, principal: &str, stage: &str) -> (String, u64) {
        let body = json!({ "stages": [stage] });
        let reply = self.call_as(principal, "POST", "/v1/claims", Some(body)).await.expect(200);
        let lease = &reply["leases"][0];
        (lease["task"].as_str().expect("a lease").to_owned(), lease["epoch"].as_u64().unwrap())
    }

    /// Everything a refused call must leave alone: every task's revision and
    /// event count, every principal and every token.
    async fn snapshot(&self) -> (Vec<(String, u64, usize)>, Vec<Principal>, Vec<TokenRecord>) {
        let mut tasks = Vec::new();
        let mut after = None;
        loop {
            let filter = TaskFilter { after, limit: 500, ..TaskFilter::default() };
            let page = self.store.list(filter).await.expect("list");
            for task in &page.tasks {
                let events = self.store.history(task.id).await.expect("history").len();
                tasks.push((task.id.to_string(), task.revision, events));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let principals = self.store.principals().await.expect("principals");
        let tokens = self.store.tokens().await.expect("tokens");
        (tasks, principals, tokens)
    }

    /// Every secret this world has handed out: each token's text and its
    /// secret part.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        for token in self.tokens.values() {
            let (_, secret) = baton_core::auth::parse_token(token).expect("a minted token parses");
            secrets.push(token.clone());
            secrets.push(secret.to_owned());
        }
        secrets
    }

    /// The bytes of the database files: the main file and the WAL.
    fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for name in ["baton.db", "baton.db-wal", "baton.db-shm"] {
            let path: PathBuf = self.dir.path().join(name);
            if let Ok(more) = std::fs::read(&path) {
                bytes.extend(more);
            }
        }
        bytes
    }
}

/// `now` of the manual clock, for directory calls made outside the server.
trait NowMs {
    fn now_ms(&self) -> i64;
}

impl NowMs for ManualClock {
    fn now_ms(&self) -> i64 {
        baton_core::Clock::now(self)
    }
}

// ---------------------------------------------------------------------------
// Refusals: one table, one check

/// One refused call.
struct Case {
    name: String,
    cred: Cred,
    method: &'static str,
    /// The route as the router names it, e.g. `/v1/tasks/{id}/heartbeat`.
    route: &'static str,
    path: String,
    body: Option<Value>,
    status: u16,
    code: &'static str,
    /// The principal the refusal log must name; `-` before authentication.
    principal: &'static str,
}

/// Sends the case's call and checks: the status and code; for 401 the
/// `WWW-Authenticate` challenge; no change to any task, event, principal or
/// token; and a refusal line in the log naming the route, the code and the
/// principal.
async fn check(world: &World, case: &Case) {
    let before = world.snapshot().await;
    let mark = log_len();
    let reply = world.send(&case.cred, case.method, &case.path, case.body.as_ref()).await;
    let at = format!("{} ({} {})", case.name, case.method, case.path);
    assert_eq!(reply.status, case.status, "{at}: {}", reply.body);
    assert_eq!(reply.body["code"], case.code, "{at}: {}", reply.body);
    assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{at}: {}", reply.body);
    if case.status == 401 {
        assert_eq!(reply.www_authenticate.as_deref(), Some("Bearer"), "{at}");
    }
    assert!(world.snapshot().await == before, "{at}: a refused call changed something");
    let logged = log_since(mark).iter().any(|line| {
        let f = &line["fields"];
        f["message"] == "refused"
            && f["route"] == case.route
            && f["method"] == case.method
            && f["code"] == case.code
            && f["status"] == case.status
            && f["principal"] == case.principal
    });
    assert!(logged, "{at}: no refusal line naming {} {} {}", case.route, case.code, case.principal);
}

/// The calls a holder can make on a task, as (verb, body) at `epoch`.
fn holder_calls(epoch: u64) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("heartbeat", "/v1/tasks/{id}/heartbeat", json!({ "epoch": epoch })),
        ("handoff", "/v1/tasks/{id}/handoff", json!({ "epoch": epoch, "to_stage": "s1b" })),
        ("complete", "/v1/tasks/{id}/complete", json!({ "epoch": epoch })),
        ("release", "/v1/tasks/{id}/release", json!({ "epoch": epoch })),
        ("fail", "/v1/tasks/{id}/fail", json!({ "epoch": epoch, "error": "boom", "retryable": true })),
        (
            "spawn",
            "/v1/tasks/{id}/spawn",
            json!({ "epoch": epoch, "children": [{ "stage": "s1b", "payload": {} }],
                    "join": { "mode": "all", "within_ms": 60_000 } }),
        ),
    ]
}

/// Tasks and a handoff in known states, for the cases to aim at.
struct Scene {
    /// In s1, held by agent-a.
    ta: (String, u64),
    /// In s2, held by agent-b.
    tb: (String, u64),
    /// In s1, held by agent-c.
    tc: (String, u64),
    /// In s2, held by agent-c.
    tc2: (String, u64),
    /// In s1, waiting.
    tw: String,
    /// A handoff by agent-b from s2 to s2b.
    hb: String,
    /// A token of agent-b's, by id.
    b_token_id: String,
    /// A task agent-a held at `tr.1`, whose lease expired and that agent-a
    /// claimed again at a later epoch.
    tr: (String, u64),
}

async fn scene(world: &World) -> Scene {
    // First (time passes): a stale epoch of agent-a's own: its lease expires, the timer returns
    // the task, and agent-a claims it again.
    world.submit("s1b").await;
    let (tr, old) = world.claim("agent-a", "s1b").await;
    world.clock.advance(10 * 60_000);
    while world.store.fire_due(100).await.expect("timers") > 0 {}
    let (again, new) = world.claim("agent-a", "s1b").await;
    assert_eq!(again, tr);
    assert!(new > old);
    world.submit("s1").await;
    let ta = world.claim("agent-a", "s1").await;
    world.submit("s2").await;
    let tb = world.claim("agent-b", "s2").await;
    world.submit("s1").await;
    let tc = world.claim("agent-c", "s1").await;
    world.submit("s2").await;
    let tc2 = world.claim("agent-c", "s2").await;
    world.submit("s2").await;
    let (tb2, eb2) = world.claim("agent-b", "s2").await;
    let handoff = json!({ "epoch": eb2, "to_stage": "s2b" });
    let reply = world.call_as("agent-b", "POST", &format!("/v1/tasks/{tb2}/handoff"), Some(handoff)).await;
    let hb = reply.expect(200)["handoff_id"].as_str().expect("a handoff id").to_owned();
    let tw = world.submit("s1").await;
    let tokens = world.store.tokens().await.expect("tokens");
    let b_token_id = tokens.iter().find(|t| t.principal == "agent-b").expect("agent-b's token").id.clone();
    Scene { ta, tb, tc, tc2, tw, hb, b_token_id, tr: (tr, old) }
}

/// Every route of the API with a body it accepts in shape, aimed at the scene.
fn routes(s: &Scene) -> Vec<(&'static str, &'static str, String, Option<Value>)> {
    let (ta, ea) = (&s.ta.0, s.ta.1);
    let mut routes = vec![
        ("POST", "/v1/tasks", "/v1/tasks".to_owned(), Some(json!({ "stage": "s1", "payload": {} }))),
        ("GET", "/v1/tasks", "/v1/tasks?stage=s1".to_owned(), None),
        ("GET", "/v1/tasks/{id}", format!("/v1/tasks/{ta}"), None),
        ("GET", "/v1/tasks/{id}/history", format!("/v1/tasks/{ta}/history"), None),
        ("GET", "/v1/tasks/{id}/lineage", format!("/v1/tasks/{ta}/lineage"), None),
        (
            "POST",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{}/cancel", s.tw),
            Some(json!({ "reason": "x" })),
        ),
        (
            "POST",
            "/v1/tasks/{id}/comments",
            format!("/v1/tasks/{}/comments", s.tw),
            Some(json!({ "note": "x" })),
        ),
        ("GET", "/v1/tasks/{id}/verify", format!("/v1/tasks/{ta}/verify"), None),
        ("POST", "/v1/claims", "/v1/claims".to_owned(), Some(json!({ "stages": ["s1"] }))),
        ("GET", "/v1/handoffs/{id}", format!("/v1/handoffs/{}", s.hb), None),
        ("GET", "/v1/deliveries", "/v1/deliveries".to_owned(), None),
        (
            "POST",
            "/v1/principals",
            "/v1/principals".to_owned(),
            Some(json!({ "name": "x", "role": "submitter" })),
        ),
        ("GET", "/v1/principals", "/v1/principals".to_owned(), None),
        ("DELETE", "/v1/principals/{name}", "/v1/principals/agent-b".to_owned(), None),
        ("POST", "/v1/tokens", "/v1/tokens".to_owned(), Some(json!({ "principal": "agent-a" }))),
        ("GET", "/v1/tokens", "/v1/tokens".to_owned(), None),
        ("DELETE", "/v1/tokens/{id}", format!("/v1/tokens/{}", s.b_token_id), None),
    ];
    for (_, route, body) in holder_calls(ea) {
        routes.push(("POST", route, route.replace("{id}", ta), Some(body)));
    }
    routes
}

/// The six admin routes, for callers that are not admins.
fn admin_routes(s: &Scene) -> Vec<(&'static str, &'static str, String, Option<Value>)> {
    routes(s)
        .into_iter()
        .filter(|(_, route, _, _)| route.starts_with("/v1/principals") || route.starts_with("/v1/tokens"))
        .collect()
}

/// Builds the whole T13 table.
fn cases(world: &World, s: &Scene) -> Vec<Case> {
    let mut cases = Vec::new();

    // Bad credentials on every route: 401, before anything else is looked at.
    let a = world.token("agent-a");
    let (a_id, _) = baton_core::auth::parse_token(a).unwrap();
    let unknown = format!("baton_{}_{}", "0123456789abcdef", "ab".repeat(32));
    let wrong_secret = format!("baton_{a_id}_{}", "cd".repeat(32));
    let bad: Vec<(&str, Cred)> = vec![
        ("no token", Cred::None),
        ("malformed token", Cred::Header("Bearer not-a-baton-token".into())),
        ("truncated token", Cred::Header(format!("Bearer {}", &a[..a.len() - 1]))),
        ("wrong scheme", Cred::Header(format!("Basic {a}"))),
        ("unknown token id", Cred::Header(format!("Bearer {unknown}"))),
        ("wrong secret", Cred::Header(format!("Bearer {wrong_secret}"))),
        ("revoked token", Cred::Header(format!("Bearer {}", world.token("agent-a-revoked")))),
        ("revoked principal", world.bearer("gone")),
        ("token in the query string", Cred::Query(a.to_owned())),
    ];
    for (what, cred) in &bad {
        for (method, route, path, body) in routes(s) {
            cases.push(Case {
                name: format!("{what} on {method} {route}"),
                cred: cred.clone(),
                method,
                route,
                path,
                body,
                status: 401,
                code: "unauthenticated",
                principal: "-",
            });
        }
    }

    let case = |who: &'static str,
                name: &str,
                method: &'static str,
                route: &'static str,
                path: String,
                body: Option<Value>,
                status: u16,
                code: &'static str| Case {
        name: format!("{who}: {name}"),
        cred: world.bearer(who),
        method,
        route,
        path,
        body,
        status,
        code,
        principal: who,
    };
    let post = |who, name: &str, route, path: String, body: Value, status, code| {
        case(who, name, "POST", route, path, Some(body), status, code)
    };
    let on = |route: &str, task: &str| route.replace("{id}", task);

    // Agents on other agents' leases: outside their stages 404, inside them
    // 403 not_holder (current epoch) or 409 lease_lost (another epoch).
    for (who, task, epoch, status, code) in [
        ("agent-a", &s.tb.0, s.tb.1, 404, "not_found"),
        ("agent-a", &s.tb.0, s.tb.1 + 5, 404, "not_found"),
        ("agent-a", &s.tc.0, s.tc.1, 403, "not_holder"),
        ("agent-a", &s.tc.0, s.tc.1 + 5, 409, "lease_lost"),
        ("agent-b", &s.ta.0, s.ta.1, 404, "not_found"),
        ("agent-c", &s.ta.0, s.ta.1, 403, "not_holder"),
        ("agent-c", &s.tb.0, s.tb.1, 403, "not_holder"),
    ] {
        for (verb, route, body) in holder_calls(epoch) {
            cases.push(post(
                who,
                &format!("{verb} a task of another agent"),
                route,
                on(route, task),
                body,
                status,
                code,
            ));
        }
    }
    // Roles that do not work tasks, on a task held by agent-a.
    for who in ["sub", "ops"] {
        for (verb, route, body) in holder_calls(s.ta.1) {
            cases.push(post(
                who,
                &format!("{verb} an agent's task"),
                route,
                on(route, &s.ta.0),
                body,
                403,
                "forbidden",
            ));
        }
    }
    // Non-admins on the admin routes.
    for who in ["agent-a", "agent-b", "agent-c", "sub", "sub2", "ops"] {
        for (method, route, path, body) in admin_routes(s) {
            cases.push(case(who, "an admin route", method, route, path, body, 403, "forbidden"));
        }
    }
    // Webhook delivery records: operators' and admins' only.
    for who in ["agent-a", "sub"] {
        let path = "/v1/deliveries".to_owned();
        cases.push(case(
            who,
            "list webhook deliveries",
            "GET",
            "/v1/deliveries",
            path,
            None,
            403,
            "forbidden",
        ));
    }

    let claim = |stages: Value| json!({ "stages": stages });
    let handoff_to = |epoch: u64, to: &str| json!({ "epoch": epoch, "to_stage": to });
    let (ta, ea) = (&s.ta.0, s.ta.1);
    let hand = "/v1/tasks/{id}/handoff";
    let spawn = "/v1/tasks/{id}/spawn";
    let spawn_into = |epoch: u64, stage: &str| json!({ "epoch": epoch, "children": [{ "stage": stage, "payload": {} }], "join": { "mode": "all", "within_ms": 60_000 } });
    cases.extend([
        // Claims outside the grants, and by roles that do not claim.
        post(
            "agent-a",
            "claim a foreign stage",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["s2"])),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "claim a foreign stage among its own",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["s1", "s2"])),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "claim a human stage",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["inbox"])),
            403,
            "forbidden",
        ),
        post(
            "agent-b",
            "claim a foreign stage",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["s1"])),
            403,
            "forbidden",
        ),
        post(
            "agent-c",
            "claim a foreign stage",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["s2b"])),
            403,
            "forbidden",
        ),
        post("sub", "claim", "/v1/claims", "/v1/claims".into(), claim(json!(["s1"])), 403, "forbidden"),
        post(
            "sub",
            "claim a human stage",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["inbox"])),
            403,
            "forbidden",
        ),
        post(
            "ops",
            "claim a stage that is not human",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["s1"])),
            403,
            "forbidden",
        ),
        post(
            "ops",
            "claim a mix of human and other stages",
            "/v1/claims",
            "/v1/claims".into(),
            claim(json!(["inbox", "s1"])),
            403,
            "forbidden",
        ),
        // Impersonation through the body's `agent`.
        post(
            "agent-a",
            "claim as agent-c",
            "/v1/claims",
            "/v1/claims".into(),
            json!({ "stages": ["s1"], "agent": "agent-c" }),
            403,
            "forbidden",
        ),
        post(
            "agent-b",
            "claim as agent-a",
            "/v1/claims",
            "/v1/claims".into(),
            json!({ "stages": ["s1"], "agent": "agent-a" }),
            403,
            "forbidden",
        ),
        post(
            "ops",
            "claim as agent-a",
            "/v1/claims",
            "/v1/claims".into(),
            json!({ "stages": ["inbox"], "agent": "agent-a" }),
            403,
            "forbidden",
        ),
        post(
            "agent-c",
            "complete agent-a's task as agent-a",
            "/v1/tasks/{id}/complete",
            on("/v1/tasks/{id}/complete", ta),
            json!({ "epoch": ea, "agent": "agent-a" }),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "complete its own task naming agent-b",
            "/v1/tasks/{id}/complete",
            on("/v1/tasks/{id}/complete", ta),
            json!({ "epoch": ea, "agent": "agent-b" }),
            403,
            "forbidden",
        ),
        post(
            "sub",
            "complete agent-a's task as agent-a",
            "/v1/tasks/{id}/complete",
            on("/v1/tasks/{id}/complete", ta),
            json!({ "epoch": ea, "agent": "agent-a" }),
            403,
            "forbidden",
        ),
        // Routes an agent lacks.
        post(
            "agent-a",
            "hand off to a foreign stage",
            hand,
            on(hand, ta),
            handoff_to(ea, "s2"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-a",
            "hand off to the human stage",
            hand,
            on(hand, ta),
            handoff_to(ea, "inbox"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-a",
            "spawn into a foreign stage",
            spawn,
            on(spawn, ta),
            spawn_into(ea, "s2"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-b",
            "hand off to a foreign stage",
            hand,
            on(hand, &s.tb.0),
            handoff_to(s.tb.1, "s1"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-c",
            "hand off against its one route",
            hand,
            on(hand, &s.tc2.0),
            handoff_to(s.tc2.1, "s1"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-c",
            "hand off to its own stage off its routes",
            hand,
            on(hand, &s.tc.0),
            handoff_to(s.tc.1, "s1b"),
            422,
            "route_not_allowed",
        ),
        post(
            "agent-c",
            "spawn off its routes",
            spawn,
            on(spawn, &s.tc.0),
            spawn_into(s.tc.1, "s2b"),
            422,
            "route_not_allowed",
        ),
        // claim_next outside the grants, inside an otherwise fine call.
        post(
            "agent-a",
            "claim_next from a foreign stage",
            "/v1/tasks/{id}/heartbeat",
            on("/v1/tasks/{id}/heartbeat", ta),
            json!({ "epoch": ea, "claim_next": { "stages": ["s2"] } }),
            403,
            "forbidden",
        ),
        // A stale epoch of its own, after its lease expired and it claimed again.
        post(
            "agent-a",
            "complete its own task with the epoch before the re-claim",
            "/v1/tasks/{id}/complete",
            on("/v1/tasks/{id}/complete", &s.tr.0),
            json!({ "epoch": s.tr.1 }),
            409,
            "lease_lost",
        ),
        // Submit and cancel by roles that may not.
        post(
            "agent-a",
            "submit",
            "/v1/tasks",
            "/v1/tasks".into(),
            json!({ "stage": "s1", "payload": {} }),
            403,
            "forbidden",
        ),
        post(
            "agent-b",
            "submit",
            "/v1/tasks",
            "/v1/tasks".into(),
            json!({ "stage": "s2", "payload": {} }),
            403,
            "forbidden",
        ),
        post(
            "agent-c",
            "submit",
            "/v1/tasks",
            "/v1/tasks".into(),
            json!({ "stage": "s1", "payload": {} }),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "cancel a task in its stage",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{}/cancel", s.tw),
            json!({ "reason": "mine" }),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "cancel a foreign task",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{}/cancel", s.tb.0),
            json!({ "reason": "x" }),
            403,
            "forbidden",
        ),
        post(
            "agent-c",
            "cancel",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{}/cancel", s.tw),
            json!({ "reason": "x" }),
            403,
            "forbidden",
        ),
        post(
            "agent-a",
            "add a message to a task in its stage",
            "/v1/tasks/{id}/comments",
            format!("/v1/tasks/{}/comments", s.tw),
            json!({ "note": "mine" }),
            403,
            "forbidden",
        ),
        // Tasks another submitter sent: 404 on every route that shows or
        // changes one, as if they did not exist (sub2 sees only its own).
        case(
            "sub2",
            "read another submitter's task",
            "GET",
            "/v1/tasks/{id}",
            format!("/v1/tasks/{}", s.tw),
            None,
            404,
            "not_found",
        ),
        case(
            "sub2",
            "read another submitter's history",
            "GET",
            "/v1/tasks/{id}/history",
            format!("/v1/tasks/{}/history", s.tw),
            None,
            404,
            "not_found",
        ),
        case(
            "sub2",
            "read another submitter's lineage",
            "GET",
            "/v1/tasks/{id}/lineage",
            format!("/v1/tasks/{}/lineage", s.tw),
            None,
            404,
            "not_found",
        ),
        case(
            "sub2",
            "verify another submitter's task",
            "GET",
            "/v1/tasks/{id}/verify",
            format!("/v1/tasks/{}/verify", s.tw),
            None,
            404,
            "not_found",
        ),
        case(
            "sub2",
            "read the handoff of another submitter's task",
            "GET",
            "/v1/handoffs/{id}",
            format!("/v1/handoffs/{}", s.hb),
            None,
            404,
            "not_found",
        ),
        post(
            "sub2",
            "cancel another submitter's task",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{}/cancel", s.tw),
            json!({ "reason": "x" }),
            404,
            "not_found",
        ),
        post(
            "sub2",
            "add a message to another submitter's task",
            "/v1/tasks/{id}/comments",
            format!("/v1/tasks/{}/comments", s.tw),
            json!({ "note": "x" }),
            404,
            "not_found",
        ),
        post(
            "sub2",
            "resubmit another submitter's A2A message id",
            "/v1/tasks",
            "/v1/tasks".into(),
            json!({ "stage": "s1", "payload": {}, "idempotency_key": "a2a/sub/m-1" }),
            400,
            "invalid_request",
        ),
        // Reads outside an agent's stages: 404, as if the task did not exist.
        case(
            "agent-a",
            "read a foreign task",
            "GET",
            "/v1/tasks/{id}",
            format!("/v1/tasks/{}", s.tb.0),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-a",
            "read a foreign task's history",
            "GET",
            "/v1/tasks/{id}/history",
            format!("/v1/tasks/{}/history", s.tb.0),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-b",
            "read a foreign task",
            "GET",
            "/v1/tasks/{id}",
            format!("/v1/tasks/{ta}"),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-b",
            "read a foreign task's history",
            "GET",
            "/v1/tasks/{id}/history",
            format!("/v1/tasks/{ta}/history"),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-b",
            "read a foreign task's lineage",
            "GET",
            "/v1/tasks/{id}/lineage",
            format!("/v1/tasks/{ta}/lineage"),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-a",
            "read a foreign handoff",
            "GET",
            "/v1/handoffs/{id}",
            format!("/v1/handoffs/{}", s.hb),
            None,
            404,
            "not_found",
        ),
        case(
            "agent-a",
            "list a foreign stage",
            "GET",
            "/v1/tasks",
            "/v1/tasks?stage=s2".into(),
            None,
            403,
            "forbidden",
        ),
        case("agent-a", "list every stage", "GET", "/v1/tasks", "/v1/tasks".into(), None, 403, "forbidden"),
        case(
            "agent-b",
            "list a foreign stage",
            "GET",
            "/v1/tasks",
            "/v1/tasks?stage=s1".into(),
            None,
            403,
            "forbidden",
        ),
        case(
            "agent-c",
            "list every stage",
            "GET",
            "/v1/tasks",
            "/v1/tasks?state=held".into(),
            None,
            403,
            "forbidden",
        ),
        // Admins: never a token for a principal that does not exist or is
        // revoked; no taken name, no unknown field (mass assignment).
        post(
            "admin",
            "mint for a principal that does not exist",
            "/v1/tokens",
            "/v1/tokens".into(),
            json!({ "principal": "nobody" }),
            404,
            "not_found",
        ),
        post(
            "admin",
            "mint for a revoked principal",
            "/v1/tokens",
            "/v1/tokens".into(),
            json!({ "principal": "gone" }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "mint with a role of its choosing",
            "/v1/tokens",
            "/v1/tokens".into(),
            json!({ "principal": "agent-a", "role": "admin" }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "create a taken name",
            "/v1/principals",
            "/v1/principals".into(),
            json!({ "name": "agent-a", "role": "admin" }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "reuse a revoked name",
            "/v1/principals",
            "/v1/principals".into(),
            json!({ "name": "gone", "role": "submitter" }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "create an agent without stages",
            "/v1/principals",
            "/v1/principals".into(),
            json!({ "name": "x", "role": "agent" }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "create a principal with a server-owned field",
            "/v1/principals",
            "/v1/principals".into(),
            json!({ "name": "x", "role": "agent", "stages": ["s1"], "created_at": 0 }),
            400,
            "invalid_request",
        ),
        post(
            "admin",
            "create a principal with a bad name",
            "/v1/principals",
            "/v1/principals".into(),
            json!({ "name": "a b", "role": "submitter" }),
            400,
            "invalid_request",
        ),
        case(
            "admin",
            "revoke the last admin",
            "DELETE",
            "/v1/principals/{name}",
            "/v1/principals/admin".into(),
            None,
            409,
            "invalid_transition",
        ),
        case(
            "admin",
            "revoke a principal that does not exist",
            "DELETE",
            "/v1/principals/{name}",
            "/v1/principals/nobody".into(),
            None,
            404,
            "not_found",
        ),
        case(
            "admin",
            "revoke a token that does not exist",
            "DELETE",
            "/v1/tokens/{id}",
            "/v1/tokens/ffffffffffffffff".into(),
            None,
            404,
            "not_found",
        ),
        case(
            "admin",
            "revoke a malformed token id",
            "DELETE",
            "/v1/tokens/{id}",
            "/v1/tokens/zz".into(),
            None,
            400,
            "invalid_request",
        ),
    ]);
    cases
}

#[tokio::test]
async fn t13_every_cross_principal_attempt_is_refused_logged_and_changes_nothing() {
    let mut world = World::new().await;
    // A second token of agent-a's, revoked through the API.
    let revoked = world.mint("agent-a").await;
    let (revoked_id, _) = baton_core::auth::parse_token(&revoked).unwrap();
    world.call_as("admin", "DELETE", &format!("/v1/tokens/{revoked_id}"), None).await.expect(200);
    world.tokens.insert("agent-a-revoked".into(), revoked);
    let scene = scene(&world).await;
    let cases = cases(&world, &scene);
    assert!(cases.len() >= 150, "the T13 matrix has {} attempts", cases.len());
    for case in &cases {
        check(&world, case).await;
    }
    // The refused attempts were logged, and no secret was: not in the log,
    // not in any event, not in the database files.
    let logged = log_text();
    let events: Vec<String> = {
        let (tasks, _, _) = world.snapshot().await;
        let mut all = Vec::new();
        for (id, _, _) in tasks {
            let history = world.store.history(id.parse().unwrap()).await.unwrap();
            all.push(serde_json::to_string(&history).unwrap());
        }
        all
    };
    let database = world.database_bytes();
    assert!(!database.is_empty());
    for secret in world.secrets() {
        assert!(!logged.contains(&secret), "a token secret is in the log");
        assert!(!events.iter().any(|e| e.contains(&secret)), "a token secret is in an event");
        let found = database.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "a token secret is in the database files");
    }
    assert!(
        !logged.to_ascii_lowercase().contains("authorization"),
        "the Authorization header is never logged"
    );
}

/// The rate limit is per principal: one over its bucket is refused 429
/// `rate_limited` with `Retry-After`, logged under its name, and changes
/// nothing; another principal is unaffected; time refills the bucket.
#[tokio::test]
async fn the_rate_limit_is_per_principal_refused_calls_are_logged_and_change_nothing() {
    // The set-up's admin calls fit in one burst.
    let world = World::with_options(|o| {
        o.requests_per_second_max = 1;
        o.request_burst_max = 20;
    })
    .await;
    world.clock.advance(60_000);
    let id = world.submit("s1").await;
    for _ in 1..20 {
        world.call_as("sub", "GET", &format!("/v1/tasks/{id}"), None).await.expect(200);
    }
    let over = world.call_as("sub", "GET", "/v1/tasks", None).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.retry_after.as_deref(), Some("1"));
    assert_eq!(over.body["details"]["limit"], "requests_per_second_max");
    assert_eq!(over.body["details"]["max"], 1);
    assert_eq!(over.body["details"]["retry_after_ms"], 1_000);
    let submit = json!({ "stage": "s1", "payload": { "n": 2 } });
    check(
        &world,
        &Case {
            name: "sub over its rate".into(),
            cred: world.bearer("sub"),
            method: "POST",
            route: "/v1/tasks",
            path: "/v1/tasks".into(),
            body: Some(submit.clone()),
            status: 429,
            code: "rate_limited",
            principal: "sub",
        },
    )
    .await;
    // Every API route of sub's is refused the same way, before its body is read.
    let refused = [
        ("POST", format!("/v1/tasks/{id}/cancel"), Some(json!({ "reason": "r" }))),
        ("GET", format!("/v1/tasks/{id}/history"), None),
        ("POST", "/v1/claims".to_owned(), Some(json!({ "stages": ["s1"] }))),
        ("POST", "/v1/tasks".to_owned(), Some(json!({ "unknown": "field" }))),
    ];
    for (method, path, body) in refused {
        let reply = world.call_as("sub", method, &path, body).await;
        assert_eq!((reply.status, &reply.body["code"]), (429, &json!("rate_limited")), "{method} {path}");
        assert_eq!(reply.retry_after.as_deref(), Some("1"), "{method} {path}");
    }
    // Part of a second later: still refused, and told how much longer.
    world.clock.advance(600);
    let reply = world.call_as("sub", "GET", "/v1/tasks", None).await;
    assert_eq!(reply.body["details"]["retry_after_ms"], 400, "{}", reply.body);
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    // Service routes are exempt; a bad token is still 401, not 429.
    for path in ["/healthz", "/readyz", "/openapi.json", "/v1"] {
        world.send(&world.bearer("sub"), "GET", path, None).await.expect(200);
    }
    let bad = Cred::Header("Bearer baton_nope".into());
    world.send(&bad, "GET", "/v1/tasks", None).await.expect(401);
    // Another principal has its own bucket.
    let (task, _) = world.claim("agent-a", "s1").await;
    assert_eq!(task, id);
    world.call_as("admin", "GET", "/v1/principals", None).await.expect(200);
    // One second after the burst sub may make one more call.
    world.clock.advance(399);
    world.call_as("sub", "POST", "/v1/tasks", Some(submit.clone())).await.expect(429);
    world.clock.advance(1);
    world.call_as("sub", "POST", "/v1/tasks", Some(submit.clone())).await.expect(201);
    world.call_as("sub", "POST", "/v1/tasks", Some(submit)).await.expect(429);
    for secret in world.secrets() {
        assert!(!log_text().contains(&secret), "a token secret is in the log");
    }
}

// ---------------------------------------------------------------------------
// Accepted paths, one per role

#[tokio::test]
async fn each_role_makes_its_own_calls() {
    let world = World::new().await;
    // Submitter: submit, read, list every stage, history.
    let id = world.submit("s1").await;
    let task = world.call_as("sub", "GET", &format!("/v1/tasks/{id}"), None).await.expect(200);
    assert_eq!(task["payload"], json!({ "n": 1 }));
    world.call_as("sub", "GET", "/v1/tasks", None).await.expect(200);
    let history = world.call_as("sub", "GET", &format!("/v1/tasks/{id}/history"), None).await.expect(200);
    assert_eq!(
        history["events"][0]["actor"], "principal:sub",
        "the submitter is recorded by name: {history}"
    );
    // Another submitter lists only its own tasks, page by page; `sub` sees
    // its own, none of sub2's; each reads, messages and cancels its own.
    let mut mine = Vec::new();
    for n in 0..3 {
        let body = json!({ "stage": "own", "payload": { "n": n } });
        let task = world.call_as("sub2", "POST", "/v1/tasks", Some(body)).await.expect(201);
        mine.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = world
            .call_as("sub2", "GET", &format!("/v1/tasks?limit=2&cursor={cursor}"), None)
            .await
            .expect(200);
        listed.extend(page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed, mine, "sub2 lists exactly its own tasks, in order");
    let subs = world.call_as("sub", "GET", "/v1/tasks?limit=100", None).await.expect(200);
    let subs: Vec<&str> =
        subs["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(subs, [id.as_str()], "sub lists its own task only");
    let noted = world
        .call_as(
            "sub2",
            "POST",
            &format!("/v1/tasks/{}/comments", mine[0]),
            Some(json!({ "note": "any news?" })),
        )
        .await
        .expect(200);
    assert_eq!(noted["state"], "waiting");
    let events =
        world.call_as("sub2", "GET", &format!("/v1/tasks/{}/history", mine[0]), None).await.expect(200);
    let last = &events["events"][1];
    assert_eq!(
        (&last["kind"], &last["actor"], &last["note"]),
        (&json!("commented"), &json!("principal:sub2"), &json!("any news?"))
    );
    world
        .call_as("sub2", "POST", &format!("/v1/tasks/{}/cancel", mine[1]), Some(json!({ "reason": "mine" })))
        .await
        .expect(200);

    // Agent: claim its stage without naming itself, heartbeat naming itself,
    // hand off between its stages, read and list its stages, follow the handoff.
    let (task, epoch) = world.claim("agent-a", "s1").await;
    assert_eq!(task, id);
    let beat = json!({ "epoch": epoch, "agent": "agent-a" });
    world.call_as("agent-a", "POST", &format!("/v1/tasks/{id}/heartbeat"), Some(beat)).await.expect(200);
    world.call_as("agent-a", "GET", &format!("/v1/tasks/{id}"), None).await.expect(200);
    world.call_as("agent-a", "GET", "/v1/tasks?stage=s1", None).await.expect(200);
    let handoff = json!({ "epoch": epoch, "to_stage": "s1b" });
    let acted =
        world.call_as("agent-a", "POST", &format!("/v1/tasks/{id}/handoff"), Some(handoff)).await.expect(200);
    let hid = acted["handoff_id"].as_str().unwrap().to_owned();
    world.call_as("agent-a", "GET", &format!("/v1/handoffs/{hid}"), None).await.expect(200);
    let (again, epoch) = world.claim("agent-a", "s1b").await;
    assert_eq!(again, id);
    let done = json!({ "epoch": epoch, "result": { "ok": true } });
    world.call_as("agent-a", "POST", &format!("/v1/tasks/{id}/complete"), Some(done)).await.expect(200);

    // An agent with explicit routes hands off along them, and spawns along them.
    let id = world.submit("s1").await;
    let (_, epoch) = world.claim("agent-c", "s1").await;
    let handoff = json!({ "epoch": epoch, "to_stage": "s2" });
    world.call_as("agent-c", "POST", &format!("/v1/tasks/{id}/handoff"), Some(handoff)).await.expect(200);
    let (_, epoch) = world.claim("agent-c", "s2").await;
    world
        .call_as("agent-c", "POST", &format!("/v1/tasks/{id}/release"), Some(json!({ "epoch": epoch })))
        .await
        .expect(200);

    // Operator: submits into the inbox, claims there, completes; cancels anywhere; reads everything.
    let body = json!({ "stage": "inbox", "payload": {} });
    let inbox = world.call_as("ops", "POST", "/v1/tasks", Some(body)).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (got, epoch) = world.claim("ops", "inbox").await;
    assert_eq!(got, inbox);
    world
        .call_as("ops", "POST", &format!("/v1/tasks/{inbox}/complete"), Some(json!({ "epoch": epoch })))
        .await
        .expect(200);
    let cancel = json!({ "reason": "not needed" });
    world.call_as("ops", "POST", &format!("/v1/tasks/{id}/cancel"), Some(cancel)).await.expect(200);
    world.call_as("ops", "GET", &format!("/v1/tasks/{id}/history"), None).await.expect(200);
    let deliveries = world.call_as("ops", "GET", "/v1/deliveries", None).await.expect(200);
    assert_eq!(deliveries["deliveries"], json!([]), "no webhook is configured here");

    // Admin: everything, including principals and tokens.
    let id = world.submit("s9").await;
    let (_, epoch) = world.claim("admin", "s9").await;
    let handoff = json!({ "epoch": epoch, "to_stage": "anywhere" });
    world.call_as("admin", "POST", &format!("/v1/tasks/{id}/handoff"), Some(handoff)).await.expect(200);
    world
        .call_as("admin", "POST", &format!("/v1/tasks/{id}/cancel"), Some(json!({ "reason": "r" })))
        .await
        .expect(200);
    world.call_as("admin", "GET", "/v1/deliveries?limit=5", None).await.expect(200);
    let principals = world.call_as("admin", "GET", "/v1/principals", None).await.expect(200);
    let names: Vec<&str> =
        principals["principals"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "agent-a", "agent-b", "agent-c", "gone", "ops", "sub", "sub2"]);
    let tokens = world.call_as("admin", "GET", "/v1/tokens", None).await.expect(200);
    for token in tokens["tokens"].as_array().unwrap() {
        let keys: Vec<&String> = token.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| ["id", "principal", "created_at", "revoked_at"].contains(&k.as_str())),
            "{token}"
        );
    }
    let text = tokens.to_string();
    for secret in world.secrets() {
        assert!(!text.contains(&secret), "a listing shows a secret");
    }
}

/// Revoking through the API bites on the very next call; a revocation made
/// behind the server's back (another process on the same database) within
/// the cache's lifetime, under a second.
#[tokio::test]
async fn revocation_takes_effect_at_once_through_the_api_and_within_a_second_otherwise() {
    let world = World::new().await;
    let extra = world.mint("sub").await;
    let as_extra = Cred::Header(format!("Bearer {extra}"));
    world.send(&as_extra, "GET", "/v1/tasks", None).await.expect(200);
    let (id, _) = baton_core::auth::parse_token(&extra).unwrap();
    world.call_as("admin", "DELETE", &format!("/v1/tokens/{id}"), None).await.expect(200);
    world.send(&as_extra, "GET", "/v1/tasks", None).await.expect(401);
    world.call_as("sub", "GET", "/v1/tasks", None).await.expect(200);

    // Revoking a principal revokes every token it has.
    let second = world.mint("agent-b").await;
    world.call_as("agent-b", "GET", "/v1/tasks?stage=s2", None).await.expect(200);
    world.call_as("admin", "DELETE", "/v1/principals/agent-b", None).await.expect(200);
    world.call_as("agent-b", "GET", "/v1/tasks?stage=s2", None).await.expect(401);
    world
        .send(&Cred::Header(format!("Bearer {second}")), "GET", "/v1/tasks?stage=s2", None)
        .await
        .expect(401);

    // Behind the server's back: the cache forgets within CACHE_TTL.
    world.call_as("sub", "GET", "/v1/tasks", None).await.expect(200);
    let (sub_id, _) = baton_core::auth::parse_token(world.token("sub")).unwrap();
    assert!(world.store.revoke_token(sub_id, world.clock.now_ms()).await.unwrap());
    let revoked_at = Instant::now();
    loop {
        let status = world.call_as("sub", "GET", "/v1/tasks", None).await.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "a revocation took a second or more to bite");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No lease ever goes to a revoked principal or token. A long-polled claim
/// waiting while its token is revoked through this server ends at once with
/// 401; one whose principal is revoked behind the server's back (another
/// replica, so this server's token cache still trusts it) is refused by the
/// claim's own transaction when work arrives, and the work stays claimable;
/// claim-next grants nothing to a revoked caller either.
#[tokio::test]
async fn a_revoked_caller_never_gets_a_lease() {
    let world = World::new().await;
    let claim = |cred: Cred, wait_ms: u64| {
        let world = &world;
        async move {
            let body = json!({ "stages": ["s1"], "wait_ms": wait_ms });
            world.send(&cred, "POST", "/v1/claims", Some(&body)).await
        }
    };

    // Revoked through this server while waiting: ends at once.
    let token = world.mint("agent-a").await;
    let (token_id, _) = baton_core::auth::parse_token(&token).unwrap();
    let token_id = token_id.to_owned();
    let waiting = claim(Cred::Header(format!("Bearer {token}")), 20_000);
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        world.call_as("admin", "DELETE", &format!("/v1/tokens/{token_id}"), None).await.expect(200);
        Instant::now()
    };
    let started = Instant::now();
    let (reply, revoked_at) = tokio::join!(waiting, revoke);
    assert_eq!(reply.status, 401, "the waiting claim is refused: {}", reply.body);
    assert_eq!(reply.body["code"], "unauthenticated");
    assert_eq!(reply.www_authenticate.as_deref(), Some("Bearer"));
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5) && started.elapsed() < Duration::from_secs(10),
        "the claim ended with the revocation, not at the end of its wait"
    );

    // Revoked behind the server's back while waiting: the claim wakes when
    // work arrives and its transaction refuses it; the task stays ready.
    let waiting = claim(world.bearer("agent-c"), 20_000);
    let revoke_and_submit = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(world.store.revoke_principal("agent-c", world.clock.now_ms()).await.unwrap());
        world.submit("s1").await
    };
    let (reply, task) = tokio::join!(waiting, revoke_and_submit);
    assert_eq!(reply.status, 401, "no lease for a revoked principal: {}", reply.body);
    let shown = world.call_as("admin", "GET", &format!("/v1/tasks/{task}"), None).await.expect(200);
    assert_eq!(shown["state"], "waiting", "the task was not leased: {shown}");
    let (claimed, _) = world.claim("agent-a", "s1").await;
    assert_eq!(claimed, task, "the task is still claimable by a live agent");
}

/// An accepted keyed holder call, repeated after the task moved on, gets its
/// first answer (the checks that now refuse it are replaced by the key's
/// record); a keyed call that was never accepted is refused as usual.
#[tokio::test]
async fn keyed_repeat_of_an_accepted_call_replays_after_the_task_moved_on() {
    let world = World::new().await;
    let id = world.submit("s1").await;
    let (_, epoch) = world.claim("agent-c", "s1").await;
    let keyed = |key: &str, body: &Value, path: &str| {
        Request::builder()
            .method("POST")
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", world.token("agent-c")))
            .header("idempotency-key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    };
    let path = format!("/v1/tasks/{id}/handoff");
    let body = json!({ "epoch": epoch, "to_stage": "s2" });
    let send = |request| async { world.app.clone().oneshot(request).await.unwrap() };
    let first = send(keyed("k1", &body, &path)).await;
    assert_eq!(first.status(), 200);
    let first = axum::body::to_bytes(first.into_body(), usize::MAX).await.unwrap();
    // The task waits in s2, then agent-c claims it there at a new epoch:
    // the handoff's epoch is long gone.
    let _ = world.claim("agent-c", "s2").await;
    let repeat = send(keyed("k1", &body, &path)).await;
    assert_eq!(repeat.status(), 200);
    let repeat = axum::body::to_bytes(repeat.into_body(), usize::MAX).await.unwrap();
    assert_eq!(first, repeat, "the repeat answers the first answer");
    // A new key with the same stale call is judged afresh: refused.
    let fresh = send(keyed("k2", &body, &path)).await;
    assert_eq!(fresh.status(), 409, "lease_lost");
}

/// `bootstrap_admin` makes one admin on an empty directory and nothing on
/// any other; the auth-off server serves as before and has no admin API.
#[tokio::test]
async fn bootstrap_only_on_an_empty_directory_and_no_admin_api_with_auth_off() {
    let world = World::new().await;
    let principals = world.store.principals().await.unwrap();
    assert_eq!(principals.iter().filter(|p| p.role == baton_core::auth::Role::Admin).count(), 1);

    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(ReadyHub::new());
    let store =
        SqliteStore::open(dir.path().join("baton.db"), SqliteOptions::default().listener(hub.clone()))
            .unwrap();
    let state = AppState::new(Config {
        store: Arc::new(store),
        clock: Arc::new(ManualClock::default()),
        hub,
        options: Options::default(),
    });
    let app = baton_server::app(state);
    let call = |method: &str, uri: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    };
    let submitted = app
        .clone()
        .oneshot(call("POST", "/v1/tasks", json!({ "stage": "s1", "payload": {} })))
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201, "auth off: no token needed");
    let refused = app.clone().oneshot(call("POST", "/v1/tokens", json!({ "principal": "x" }))).await.unwrap();
    assert_eq!(refused.status(), 403, "auth off: no admin API");
    let _ = world.state.is_shutting_down();
}
