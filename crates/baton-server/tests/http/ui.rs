//! The dashboard's server side and the API routes it added, without a browser
//! (the browser tests are `crates/baton-server/ui-tests`).
//!
//! Goal: only operator and admin tokens open a session; the session cookie
//! is HttpOnly, SameSite=Strict and ends with its token; a form post without
//! the session's CSRF token, or from another origin, is refused and changes
//! nothing, and one with it acts under the person's principal; the pages
//! render with auth off; `/v1/whoami`, `/v1/tasks/{id}/verify`,
//! `/v1/stats/series` and the inbox's `from_stage` answer as documented.
//! Method: requests through `app(state).oneshot(..)` on a real SQLite store,
//! as in the rest of this binary.

use super::{Api, RawBody, request};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use baton_core::Rules;
use baton_server::{AppState, Auth, AuthMode, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

/// A server with auth on and one principal per role, with their tokens.
struct Served {
    _dir: tempfile::TempDir,
    app: Router,
    tokens: BTreeMap<&'static str, String>,
    token_ids: BTreeMap<&'static str, String>,
}

struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Served {
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
        let admin = baton_server::auth::bootstrap_admin(&*store, baton_core::Clock::now(&*clock))
            .await
            .expect("bootstrap")
            .expect("the first admin");
        let auth = Auth::new(store.clone(), rules.policies.clone());
        let options = Options {
            auth: AuthMode::Tokens(auth),
            limits: rules.limits.clone(),
            policies: rules.policies.clone(),
            ..Options::default()
        };
        let state = AppState::new(Config { store, clock, hub, options });
        let mut served = Self {
            _dir: dir,
            app: baton_server::app(state),
            tokens: BTreeMap::from([("admin", admin)]),
            token_ids: BTreeMap::new(),
        };
        for (name, role, stages) in
            [("ops", "operator", json!([])), ("bot", "agent", json!(["s1"])), ("sub", "submitter", json!([]))]
        {
            let body = json!({ "name": name, "role": role, "stages": stages });
            served.api("admin", "POST", "/v1/principals", Some(body)).await.expect(201);
            let token = served.api("admin", "POST", "/v1/tokens", Some(json!({ "principal": name }))).await;
            let token = token.expect(201);
            served.tokens.insert(name, token["token"].as_str().unwrap().to_owned());
            served.token_ids.insert(name, token["id"].as_str().unwrap().to_owned());
        }
        served
    }

    async fn api(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> super::Reply {
        let mut req = request(method, path, body.map(|b| RawBody::json(&b)));
        let bearer = format!("Bearer {}", self.tokens[who]);
        req.headers_mut().insert(header::AUTHORIZATION, bearer.parse().unwrap());
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        super::Reply { status, body, retry_after: None }
    }

    /// A browser's request: the session cookie of `who` (if any), a form body.
    async fn browse(
        &self,
        method: &str,
        path: &str,
        who: Option<&str>,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, "127.0.0.1:7707");
        if let Some(who) = who {
            builder = builder.header(header::COOKIE, format!("baton_session={}", self.tokens[who]));
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        let req = if method == "POST" {
            let body: String = form
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
                .collect::<Vec<_>>()
                .join("&");
            builder
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap()
        } else {
            builder.body(Body::empty()).unwrap()
        };
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    fn csrf(&self, who: &str) -> String {
        baton_server::ui::csrf_token(self.tokens[who].as_bytes())
    }
}

impl Answer {
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn cookie(&self) -> Option<&str> {
        self.headers.get(header::SET_COOKIE).and_then(|v| v.to_str().ok())
    }
}

#[tokio::test]
async fn only_operators_and_admins_sign_in_into_a_strict_httponly_cookie() {
    let s = Served::new().await;
    let origin = Some("http://127.0.0.1:7707");
    for (who, status) in [("ops", 303), ("admin", 303), ("bot", 403), ("sub", 403)] {
        let token = s.tokens[who].clone();
        let answer =
            s.browse("POST", "/ui/signin", None, &[("token", &token), ("next", "/ui/inbox")], origin).await;
        assert_eq!(answer.status, status, "{who}: {}", answer.text);
        if status == 303 {
            assert_eq!(answer.location(), "/ui/inbox");
            let cookie = answer.cookie().expect("a session cookie");
            for part in ["baton_session=", "HttpOnly", "SameSite=Strict", "Path=/ui"] {
                assert!(cookie.contains(part), "{cookie} has {part}");
            }
        } else {
            assert!(answer.cookie().is_none(), "{who} gets no cookie");
            assert!(answer.text.contains("only operators and admins"), "{}", answer.text);
        }
    }
    // Reached over HTTPS (through a proxy), the cookie is `Secure` too.
    let token = s.tokens["ops"].clone();
    let answer =
        s.browse("POST", "/ui/signin", None, &[("token", &token)], Some("https://127.0.0.1:7707")).await;
    assert_eq!(answer.status, 303);
    assert!(answer.cookie().is_some_and(|c| c.contains("; Secure")), "{:?}", answer.cookie());
    let forged = format!("baton_0000000000000000_{}", "0".repeat(64));
    let answer = s.browse("POST", "/ui/signin", None, &[("token", &forged)], origin).await;
    assert_eq!(answer.status, 401);
    assert!(answer.cookie().is_none());
    let answer = s.browse("POST", "/ui/signin", None, &[("token", "not a token")], origin).await;
    assert_eq!(answer.status, 401);
    // Another site's form is refused before the token is looked at.
    let token = s.tokens["ops"].clone();
    let answer =
        s.browse("POST", "/ui/signin", None, &[("token", &token)], Some("http://evil.example")).await;
    assert_eq!(answer.status, 403);
    assert!(answer.cookie().is_none());
}

#[tokio::test]
async fn pages_need_a_live_session_and_revocation_ends_it() {
    let s = Served::new().await;
    let answer = s.browse("GET", "/ui/inbox", None, &[], None).await;
    assert_eq!(answer.status, 303);
    assert!(answer.location().starts_with("/ui/signin?next=/ui/inbox"), "{}", answer.location());
    for page in ["/ui", "/ui/inbox", "/ui/stuck", "/ui/edges", "/ui/workflows", "/ui/alerts", "/ui/webhooks"]
    {
        let answer = s.browse("GET", page, Some("ops"), &[], None).await;
        assert_eq!(answer.status, 200, "{page}: {}", answer.text);
        assert!(answer.text.contains("Signed in as <strong>ops</strong>"), "{page}");
        let csp = answer.headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
    }
    // An agent's token in a cookie does not open a page either.
    let answer = s.browse("GET", "/ui/inbox", Some("bot"), &[], None).await;
    assert_eq!(answer.status, 303);
    assert!(answer.location().contains("why=role"));
    s.api("admin", "DELETE", &format!("/v1/tokens/{}", s.token_ids["ops"]), None).await.expect(200);
    let answer = s.browse("GET", "/ui/inbox", Some("ops"), &[], None).await;
    assert_eq!(answer.status, 303);
    assert!(answer.location().contains("why=ended"), "{}", answer.location());
    assert!(answer.cookie().is_some_and(|c| c.contains("Max-Age=0")), "the cookie is cleared");
    // The overview's poll is told to load the sign-in page as a page.
    let req = Request::builder()
        .uri("/ui/live")
        .header(header::COOKIE, format!("baton_session={}", s.tokens["ops"]))
        .header("hx-request", "true")
        .header("hx-current-url", "http://127.0.0.1:7707/ui")
        .body(Body::empty())
        .unwrap();
    let response = s.app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["hx-redirect"], "/ui/signin?next=/ui&why=ended");
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token_and_act_under_the_person() {
    let s = Served::new().await;
    let task =
        s.api("admin", "POST", "/v1/tasks", Some(json!({ "stage": "s1", "payload": {} }))).await.expect(201);
    let id = task["id"].as_str().unwrap().to_owned();
    let path = format!("/ui/tasks/{id}/cancel");
    let origin = Some("http://127.0.0.1:7707");
    let right = s.csrf("ops");
    let wrong = s.csrf("admin");
    for (csrf, origin, why) in [
        (None, origin, "no token"),
        (Some(wrong.as_str()), origin, "another session's token"),
        (Some(right.as_str()), Some("http://evil.example"), "another origin"),
    ] {
        let mut form = vec![("reason", "forged")];
        if let Some(csrf) = csrf {
            form.push(("_csrf", csrf));
        }
        let answer = s.browse("POST", &path, Some("ops"), &form, origin).await;
        assert_eq!(answer.status, 403, "{why}: {}", answer.text);
        let now = s.api("admin", "GET", &format!("/v1/tasks/{id}"), None).await.expect(200);
        assert_eq!(now["state"], "waiting", "{why}: nothing changed");
        assert_eq!(now["revision"], task["revision"]);
    }
    let answer =
        s.browse("POST", &path, Some("ops"), &[("reason", "duplicate"), ("_csrf", &right)], origin).await;
    assert_eq!(answer.status, 303, "{}", answer.text);
    assert_eq!(answer.location(), format!("/ui/tasks/{id}?done=cancelled"));
    let history = s.api("admin", "GET", &format!("/v1/tasks/{id}/history"), None).await.expect(200);
    let last = history["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "principal:ops");
    assert_eq!(last["note"], "duplicate");
    // Signing out needs the token too.
    let answer = s.browse("POST", "/ui/signout", Some("ops"), &[], origin).await;
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn whoami_names_the_principal_and_its_role() {
    let s = Served::new().await;
    let me = s.api("ops", "GET", "/v1/whoami", None).await.expect(200);
    assert_eq!(me, json!({ "authentication": true, "principal": "ops", "role": "operator" }));
    let me = s.api("bot", "GET", "/v1/whoami", None).await.expect(200);
    assert_eq!(me["role"], "agent");
    let api = Api::new();
    assert_eq!(api.get("/v1/whoami").await.expect(200), json!({ "authentication": false }));
}

#[tokio::test]
async fn with_auth_off_the_pages_render_and_root_redirects() {
    let api = Api::new();
    let task = api.submit("s1", json!({ "note": "<script>alert(1)</script>" })).await;
    let id = task["id"].as_str().unwrap();
    let (status, headers, _) = api.send_raw(request("GET", "/", None)).await;
    assert_eq!(status, 303);
    assert_eq!(headers[header::LOCATION], "/ui");
    for page in [
        "/ui",
        "/ui/live",
        "/ui/inbox",
        "/ui/stuck",
        "/ui/edges",
        "/ui/workflows",
        "/ui/alerts",
        "/ui/webhooks",
    ] {
        let (status, _, body) = api.send_raw(request("GET", page, None)).await;
        assert_eq!(status, 200, "{page}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, body) = api.send_raw(request("GET", &format!("/ui/tasks/{id}"), None)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the payload is escaped");
    assert!(!body.contains("<script>alert(1)"), "never raw");
    let (status, _, _) = api.send_raw(request("GET", "/ui/tasks/not-a-task", None)).await;
    assert_eq!(status, 404);
    let (status, headers, _) = api.send_raw(request("GET", "/ui/static/htmx.min.js", None)).await;
    assert_eq!(status, 200);
    assert_eq!(headers[header::CONTENT_TYPE], "text/javascript");
}

#[tokio::test]
async fn a_tasks_chain_verifies() {
    let api = Api::new();
    let task = api.submit("s1", json!({})).await;
    let id = task["id"].as_str().unwrap();
    let lease = api.claim("a1", "s1").await;
    let body = json!({ "agent": "a1", "epoch": lease["epoch"], "to_stage": "s2" });
    api.post(&format!("/v1/tasks/{id}/handoff"), body).await.expect(200);
    let v = api.get(&format!("/v1/tasks/{id}/verify")).await.expect(200);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], 3);
    let history = api.get(&format!("/v1/tasks/{id}/history")).await.expect(200);
    assert_eq!(v["head"], history["events"][2]["hash"]);
    let missing = api.get("/v1/tasks/01900000-0000-7000-8000-000000000000/verify").await.expect(404);
    assert_eq!(missing["code"], "not_found");
}

#[tokio::test]
async fn series_answer_one_point_per_minute_and_refuse_bad_queries() {
    let api = Api::new();
    let task = api.submit("s1", json!({})).await;
    let id = task["id"].as_str().unwrap();
    let lease = api.claim("a1", "s1").await;
    let body = json!({ "agent": "a1", "epoch": lease["epoch"], "to_stage": "s2" });
    api.post(&format!("/v1/tasks/{id}/handoff"), body).await.expect(200);
    api.claim("a2", "s2").await;
    let s = api.get("/v1/stats/series?edge=s1:s2&window=15m").await.expect(200);
    assert_eq!(s["scope"], "edge");
    assert_eq!(s["bucket_ms"], 60_000);
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 15);
    let handoffs: u64 = points.iter().map(|p| p["handoffs"].as_u64().unwrap()).sum();
    let accepted: u64 = points.iter().map(|p| p["accepted"].as_u64().unwrap()).sum();
    assert_eq!((handoffs, accepted), (1, 1), "{s}");
    assert!(s["baseline"].get("accept_latency_ms").is_none(), "no history, no baseline: {s}");
    let stage = api.get("/v1/stats/series?stage=s1&window=5m").await.expect(200);
    let arrivals: u64 =
        stage["points"].as_array().unwrap().iter().map(|p| p["arrivals"].as_u64().unwrap()).sum();
    assert_eq!(arrivals, 1);
    for bad in [
        "/v1/stats/series",
        "/v1/stats/series?edge=s1",
        "/v1/stats/series?edge=s1:s2&stage=s1",
        "/v1/stats/series?stage=s1&window=2d",
        "/v1/stats/series?stage=s1&window=0s",
        "/v1/stats/series?stage=s1&other=1",
    ] {
        let refused = api.get(bad).await.expect(400);
        assert_eq!(refused["code"], "invalid_request", "{bad}");
    }
}

#[tokio::test]
async fn inbox_items_name_the_stage_they_came_from() {
    let api = Api::new();
    let task = api.submit("s1", json!({})).await;
    let id = task["id"].as_str().unwrap();
    let lease = api.claim("a1", "s1").await;
    let body =
        json!({ "agent": "a1", "epoch": lease["epoch"], "to_stage": "inbox", "note": "needs a person" });
    api.post(&format!("/v1/tasks/{id}/handoff"), body).await.expect(200);
    let direct = api.submit("inbox", json!({})).await;
    let page = api.get("/v1/inbox").await.expect(200);
    let items = page["items"].as_array().unwrap();
    let from = |task: &str| items.iter().find(|i| i["task"]["id"] == task).map(|i| i["from_stage"].clone());
    assert_eq!(from(id), Some(json!("s1")));
    assert_eq!(from(direct["id"].as_str().unwrap()), Some(Value::Null), "submitted there: no source stage");
}

/// A message its submitter adds to a task waiting in the inbox shows on the
/// inbox page under that task, and in the task page's timeline; the task
/// still waits for a person.
#[tokio::test]
async fn a_message_on_an_inbox_task_shows_on_the_inbox_and_task_pages() {
    let s = Served::new().await;
    let task = s.api("sub", "POST", "/v1/tasks", Some(json!({ "stage": "inbox", "payload": {} }))).await;
    let id = task.expect(201)["id"].as_str().unwrap().to_owned();
    let note = json!({ "note": "the <blue> boxes, please", "findings": { "boxes": 2 } });
    let noted = s.api("sub", "POST", &format!("/v1/tasks/{id}/comments"), Some(note)).await.expect(200);
    assert_eq!(noted["state"], "waiting");
    let inbox = s.browse("GET", "/ui/inbox", Some("ops"), &[], None).await;
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.text.contains("principal:sub: the &lt;blue&gt; boxes, please"),
        "the message, escaped, under its task: {}",
        inbox.text
    );
    let page = s.browse("GET", &format!("/ui/tasks/{id}"), Some("ops"), &[], None).await;
    assert!(page.text.contains("<td>commented</td>"), "{}", page.text);
}
