//! The dashboard's pages and form actions. Each handler reads what it shows
//! from the `/v1` API as the session's principal (`Ui::call`) and renders
//! HTML; each action checks the form's CSRF token, makes one API call, and
//! redirects back (post, redirect, get), or shows the API's refusal.

use crate::ui::html::{
    Frame, csrf_input, dur, e, failure_box, ms_opt, page, pct, state_badge, task_link, url, when,
};
use crate::ui::session::{Session, check_post};
use crate::ui::{ApiFailure, Ui};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use baton_api as api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// The window of the overview's rates.
const OVERVIEW_WINDOW: &str = "15m";
const OVERVIEW_WINDOW_MIN: f64 = 15.0;
/// Windows the edges page offers.
const WINDOWS: &[&str] = &["15m", "1h", "6h", "1d"];
/// Rows of one listing page (inbox, alerts, deliveries).
const LIST_LIMIT: u32 = 100;

type Q = Query<HashMap<String, String>>;

impl Ui {
    async fn get<T: DeserializeOwned>(&self, session: &Session, path: &str) -> Result<T, ApiFailure> {
        self.call(session.token.as_deref(), Method::GET, path, None).await
    }

    async fn post(&self, session: &Session, path: &str, body: Value) -> Result<Value, ApiFailure> {
        self.call(session.token.as_deref(), Method::POST, path, Some(body)).await
    }

    fn now(&self) -> i64 {
        self.state().clock().now()
    }
}

/// The enum's wire name (`waiting`, `handed_off`, ...).
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn flash(q: &HashMap<String, String>) -> String {
    let text = match q.get("done").map(String::as_str) {
        Some("cancelled") => "The task was cancelled.",
        Some("aborted") => "The task was aborted: compensation runs for the stages it finished.",
        Some("claimed") => "You hold the task now: resolve it below.",
        Some("resolved") => "The task was resolved.",
        Some("acked") => "The alert was acknowledged.",
        _ => return String::new(),
    };
    format!("<p class=\"flash\" role=\"status\">{text}</p>")
}

fn render(session: &Session, title: &str, nav: &str, body: &str) -> Response {
    page(Frame { title, nav, session, charts: false }, body).into_response()
}

fn render_failure(session: &Session, title: &str, nav: &str, f: &ApiFailure) -> Response {
    let body = failure_box(f);
    (f.status, page(Frame { title, nav, session, charts: false }, &body)).into_response()
}

// ---------------------------------------------------------------- overview

/// `GET /ui`: every stage's gauges and rates, the inbox and open alerts,
/// refreshed by polling `/ui/live`.
pub async fn overview(State(ui): State<Ui>, session: Session) -> Response {
    let live = live_section(&ui, &session).await;
    let body = format!(
        "<p class=\"lede\">Where every task is: stages with their backlog, work in flight and the oldest \
         waiting task; rates over the last {OVERVIEW_WINDOW}. Updates every few seconds.</p>{live}\
         <form method=\"get\" action=\"/ui/tasks\" class=\"card find\" role=\"search\">\
         <label for=\"find-id\">Find a task by id</label>\
         <input id=\"find-id\" name=\"id\" required pattern=\"[0-9a-fA-F-]{{36}}\" placeholder=\"0193…\">\
         <button type=\"submit\">Show task</button></form>"
    );
    render(&session, "Overview", "/ui", &body)
}

/// `GET /ui/live`: the overview's live part, for htmx to swap in.
pub async fn overview_live(State(ui): State<Ui>, session: Session) -> Response {
    axum::response::Html(live_section(&ui, &session).await).into_response()
}

async fn live_section(ui: &Ui, session: &Session) -> String {
    let now = ui.now();
    let mut out = String::from(
        "<section id=\"live\" hx-get=\"/ui/live\" hx-trigger=\"every 3s\" hx-swap=\"outerHTML\" aria-labelledby=\"live-h\">\
         <h2 id=\"live-h\" class=\"visually-hidden\">Live state</h2>",
    );
    let stats: Result<api::Stats, _> = ui.get(session, &format!("/v1/stats?window={OVERVIEW_WINDOW}")).await;
    let alerts: Result<api::AnomalyList, _> = ui.get(session, "/v1/alerts?limit=20").await;
    let inbox: Result<api::InboxPage, _> = ui.get(session, &format!("/v1/inbox?limit={LIST_LIMIT}")).await;
    let inbox_count = match &inbox {
        Ok(p) if p.next_cursor.is_some() => format!("{}+", p.items.len()),
        Ok(p) => p.items.len().to_string(),
        Err(_) => "?".to_owned(),
    };
    let alert_count = alerts.as_ref().map_or("?".to_owned(), |a| a.anomalies.len().to_string());
    let stage_count = stats.as_ref().map_or(0, |s| s.stages.len());
    let _ = write!(
        out,
        "<ul class=\"tiles\"><li><a href=\"/ui/inbox\"><span class=\"n\" id=\"inbox-count\">{inbox_count}</span> in the inbox</a></li>\
         <li><a href=\"/ui/alerts\"><span class=\"n\" id=\"alert-count\">{alert_count}</span> open alerts</a></li>\
         <li><span class=\"n\">{stage_count}</span> stages</li></ul>"
    );
    match stats {
        Ok(stats) => {
            out.push_str(
                "<h2>Stages</h2><div class=\"scroll\" tabindex=\"0\"><table id=\"stages\"><caption class=\"visually-hidden\">Stages</caption><thead><tr>\
                 <th scope=\"col\">Stage</th><th scope=\"col\" class=\"num\">Backlog</th><th scope=\"col\" class=\"num\">In flight</th>\
                 <th scope=\"col\" class=\"num\">Blocked</th><th scope=\"col\">Oldest waiting</th>\
                 <th scope=\"col\" class=\"num\">Arrivals/min</th><th scope=\"col\" class=\"num\">Claims/min</th>\
                 <th scope=\"col\" class=\"num\">Escalations</th><th scope=\"col\">Chart</th></tr></thead><tbody>",
            );
            if stats.stages.is_empty() {
                out.push_str("<tr><td colspan=\"9\">No stage has seen a task yet.</td></tr>");
            }
            for s in &stats.stages {
                let arrivals = (s.submitted + s.handoffs_in) as f64 / OVERVIEW_WINDOW_MIN;
                let claims = s.claims as f64 / OVERVIEW_WINDOW_MIN;
                let oldest =
                    s.oldest_waiting_ms.map_or("–".to_owned(), |ms| dur(i64::try_from(ms).unwrap_or(0)));
                let _ = write!(
                    out,
                    "<tr><th scope=\"row\">{name}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td>{oldest}</td><td class=\"num\">{arrivals:.1}</td><td class=\"num\">{claims:.1}</td><td class=\"num\">{}</td>\
                     <td><a href=\"/ui/series?stage={q}\">flow<span class=\"visually-hidden\"> of {name}</span></a></td></tr>",
                    s.backlog,
                    s.in_flight,
                    s.blocked,
                    s.escalations,
                    name = e(&s.stage),
                    q = url(&s.stage),
                );
            }
            out.push_str("</tbody></table></div>");
        }
        Err(f) => out.push_str(&failure_box(&f)),
    }
    out.push_str("<h2>Open alerts</h2>");
    match alerts {
        Ok(list) if list.anomalies.is_empty() => out.push_str("<p>No open alerts.</p>"),
        Ok(list) => {
            out.push_str("<ul class=\"alerts\">");
            for a in &list.anomalies {
                let _ = write!(
                    out,
                    "<li><span class=\"badge warn\">{}</span> {} <span class=\"muted\">raised {}</span> \
                     <a href=\"/ui/alerts\">review<span class=\"visually-hidden\"> alert {}</span></a></li>",
                    e(&a.metric),
                    e(&a.message),
                    when(a.raised_at, now),
                    a.id
                );
            }
            out.push_str("</ul>");
        }
        Err(f) => out.push_str(&failure_box(&f)),
    }
    let _ = write!(out, "<p class=\"muted small\">Updated {}.</p></section>", when(api::Timestamp(now), now));
    out
}

// ---------------------------------------------------------------- edges

fn window_of(q: &HashMap<String, String>) -> &str {
    match q.get("window").map(String::as_str) {
        Some(w) if WINDOWS.contains(&w) => w,
        _ => "1h",
    }
}

fn window_form(action: &str, window: &str, hidden: &str) -> String {
    let mut options = String::new();
    for w in WINDOWS {
        let selected = if *w == window { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{w}\"{selected}>last {w}</option>");
    }
    format!(
        "<form method=\"get\" action=\"{action}\" class=\"inline-form\">{hidden}<label for=\"window\">Window</label>\
         <select id=\"window\" name=\"window\">{options}</select><button type=\"submit\">Show</button></form>"
    )
}

/// `GET /ui/edges?window=1h`: stage-to-stage and agent-to-agent handoffs.
pub async fn edges(State(ui): State<Ui>, session: Session, Query(q): Q) -> Response {
    let window = window_of(&q);
    let stats: api::Stats = match ui.get(&session, &format!("/v1/stats?window={window}")).await {
        Ok(s) => s,
        Err(f) => return render_failure(&session, "Edges", "/ui/edges", &f),
    };
    let mut body = format!(
        "<p class=\"lede\">Handoffs along each edge over the window: how many, how fast they were accepted \
         (p50/p95/p99), and the share accepted rather than rerouted, escalated or cancelled. Open a chart to see \
         an edge per minute against its learnt baseline.</p>{}",
        window_form("/ui/edges", window, "")
    );
    for (title, id, scope, list) in [
        ("Stage to stage", "stage-edges", "edge", &stats.edges),
        ("Agent to agent", "agent-edges", "agent_edge", &stats.agent_edges),
    ] {
        let _ = write!(
            body,
            "<h2>{title}</h2><div class=\"scroll\" tabindex=\"0\"><table id=\"{id}\"><thead><tr><th scope=\"col\">Edge</th>\
             <th scope=\"col\" class=\"num\">Handoffs</th><th scope=\"col\" class=\"num\">Accepted</th>\
             <th scope=\"col\" class=\"num\">p50</th><th scope=\"col\" class=\"num\">p95</th><th scope=\"col\" class=\"num\">p99</th>\
             <th scope=\"col\" class=\"num\">Success</th><th scope=\"col\" class=\"num\">Timeouts</th>\
             <th scope=\"col\" class=\"num\">Reroutes</th><th scope=\"col\" class=\"num\">Escalations</th><th scope=\"col\">Chart</th></tr></thead><tbody>"
        );
        if list.is_empty() {
            body.push_str("<tr><td colspan=\"11\">No handoffs in this window.</td></tr>");
        }
        for edge in list.iter() {
            let name = format!("{} → {}", edge.from, edge.to);
            let key = format!("{}:{}", edge.from, edge.to);
            let _ = write!(
                body,
                "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td><a href=\"/ui/series?{scope}={}&amp;window={window}\">chart<span class=\"visually-hidden\"> of {}</span></a></td></tr>",
                e(&name),
                edge.handoffs,
                edge.accepted,
                ms_opt(edge.accept_latency.p50_ms),
                ms_opt(edge.accept_latency.p95_ms),
                ms_opt(edge.accept_latency.p99_ms),
                pct(edge.success_rate),
                edge.timeouts,
                edge.reroutes,
                edge.escalations,
                url(&key),
                e(&name),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if stats.truncated {
        body.push_str("<p class=\"muted\">The window held more rollups than one read takes: figures cover its latest part.</p>");
    }
    render(&session, "Edges", "/ui/edges", &body)
}

/// `GET /ui/series?edge=A:B|agent_edge=A:B|stage=S&window=1h`: charts.
pub async fn series(State(ui): State<Ui>, session: Session, Query(q): Q) -> Response {
    let window = window_of(&q);
    let (param, key) =
        match ["edge", "agent_edge", "stage"].iter().find_map(|p| q.get(*p).map(|v| (*p, v.clone()))) {
            Some(found) => found,
            None => return Redirect::to("/ui/edges").into_response(),
        };
    let path = format!("/v1/stats/series?{param}={}&window={window}", url(&key));
    let s: api::Series = match ui.get(&session, &path).await {
        Ok(s) => s,
        Err(f) => return render_failure(&session, "Chart", "/ui/edges", &f),
    };
    let title = match &s.to {
        Some(to) => format!(
            "{} {} → {}",
            if param == "stage" {
                "Stage"
            } else if param == "edge" {
                "Edge"
            } else {
                "Agent edge"
            },
            s.from,
            to
        ),
        None => format!("Stage {}", s.from),
    };
    let hidden = format!("<input type=\"hidden\" name=\"{param}\" value=\"{}\">", e(&key));
    // The data for app.js; `<` is escaped so the JSON cannot close the script element.
    let data = serde_json::to_string(&s).unwrap_or_default().replace('<', "\\u003c");
    let mut body = format!(
        "{}<p class=\"lede\">Per minute over the window. Dashed lines are the baselines anomaly detection learnt \
         from the history before its latest window ({} to {}).</p>\
         <script type=\"application/json\" id=\"series-data\">{data}</script>",
        window_form("/ui/series", window, &hidden),
        s.baseline.history_start,
        s.baseline.history_end,
    );
    let b = &s.baseline;
    let baseline = |v: Option<api::BaselineValue>, f: &dyn Fn(f64) -> String| {
        v.map_or("not learnt yet (too little history)".to_owned(), |v| {
            format!("{} (spread {})", f(v.centre), f(v.spread))
        })
    };
    if s.scope == "stage" {
        let _ = write!(
            body,
            "<figure><figcaption>Arrivals and claims per minute</figcaption><div class=\"chart\" id=\"chart-flow\" role=\"img\" \
             aria-label=\"Arrivals and claims per minute\"></div></figure>\
             <p>Baseline net growth per minute: {}</p>",
            baseline(b.backlog_growth, &|x| format!("{x:.2}"))
        );
    } else {
        let _ = write!(
            body,
            "<figure><figcaption>Accept latency per minute (p50, p95, p99) against the baseline mean</figcaption>\
             <div class=\"chart\" id=\"chart-latency\" role=\"img\" aria-label=\"Accept latency per minute\"></div></figure>\
             <p>Baseline mean accept latency: {}</p>",
            baseline(b.accept_latency_ms, &|x| dur(x as i64))
        );
        if s.scope == "edge" {
            let _ = write!(
                body,
                "<figure><figcaption>Success rate per minute against the baseline</figcaption>\
                 <div class=\"chart\" id=\"chart-success\" role=\"img\" aria-label=\"Success rate per minute\"></div></figure>\
                 <p>Baseline success rate: {}</p>",
                baseline(b.success_rate, &|x| format!("{:.1}%", x * 100.0))
            );
        }
    }
    body.push_str(
        "<details><summary>The figures as a table</summary><div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Minute</th>\
         <th scope=\"col\" class=\"num\">Handoffs</th><th scope=\"col\" class=\"num\">Accepted</th><th scope=\"col\" class=\"num\">p50</th>\
         <th scope=\"col\" class=\"num\">p95</th><th scope=\"col\" class=\"num\">p99</th><th scope=\"col\" class=\"num\">Success</th>\
         <th scope=\"col\" class=\"num\">Arrivals</th><th scope=\"col\" class=\"num\">Claims</th></tr></thead><tbody>",
    );
    for p in s.points.iter().filter(|p| p.handoffs + p.accepted + p.arrivals + p.claims > 0) {
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            p.at,
            p.handoffs,
            p.accepted,
            ms_opt(p.p50_ms),
            ms_opt(p.p95_ms),
            ms_opt(p.p99_ms),
            pct(p.success_rate),
            p.arrivals,
            p.claims
        );
    }
    body.push_str("</tbody></table></div></details>");
    page(Frame { title: &title, nav: "/ui/edges", session: &session, charts: true }, &body).into_response()
}

// ---------------------------------------------------------------- stuck

/// `GET /ui/stuck`: live tasks past a threshold, with why.
pub async fn stuck(State(ui): State<Ui>, session: Session) -> Response {
    let now = ui.now();
    let list: api::StuckList = match ui.get(&session, "/v1/stuck").await {
        Ok(l) => l,
        Err(f) => return render_failure(&session, "Stuck work", "/ui/stuck", &f),
    };
    let mut body = String::from(
        "<p class=\"lede\">Live tasks past a threshold: timers the sweeper is late on, tasks escalated to people, \
         and tasks past their own deadline.</p><div class=\"scroll\" tabindex=\"0\"><table id=\"stuck\"><thead><tr><th scope=\"col\">Task</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">Stage</th><th scope=\"col\">State</th><th scope=\"col\">Custodian</th>\
         <th scope=\"col\">Since</th><th scope=\"col\">Why</th></tr></thead><tbody>",
    );
    if list.stuck.is_empty() {
        body.push_str("<tr><td colspan=\"7\">Nothing is stuck.</td></tr>");
    }
    for t in &list.stuck {
        let custodian =
            t.custodian.as_ref().map_or("–".to_owned(), |c| format!("{} {}", wire(&c.kind), c.id));
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            task_link(&t.task),
            e(&wire(&t.kind)),
            e(&t.stage),
            state_badge(&wire(&t.state)),
            e(&custodian),
            when(t.since, now),
            e(&t.why)
        );
    }
    body.push_str("</tbody></table></div>");
    if list.truncated {
        body.push_str("<p class=\"muted\">More tasks are stuck than one listing shows.</p>");
    }
    render(&session, "Stuck work", "/ui/stuck", &body)
}

// ---------------------------------------------------------------- tasks

/// `GET /ui/tasks?id=`: the find box's target.
pub async fn find_task(Query(q): Q) -> Response {
    match q.get("id").map(|s| s.trim().parse::<uuid::Uuid>()) {
        Some(Ok(id)) => Redirect::to(&format!("/ui/tasks/{id}")).into_response(),
        _ => Redirect::to("/ui").into_response(),
    }
}

fn task_id(id: &str) -> Result<uuid::Uuid, ApiFailure> {
    id.parse().map_err(|_| ApiFailure {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "not_found".into(),
        message: format!("{id:?} is not a task id"),
    })
}

/// The start of every form post about one task: the origin and CSRF checks,
/// then the task id from the path (a bad one goes back to `back`, refused).
fn task_post(
    session: &Session,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    id: &str,
    back: &str,
) -> Result<uuid::Uuid, Box<Response>> {
    if let Some(refused) = check_post(session, headers, form) {
        return Err(Box::new(refused));
    }
    task_id(id).map_err(|f| Box::new(after(Err(f), session, back)))
}

/// `GET /ui/tasks/{id}`: state, payload, timeline, lineage, chain, actions.
pub async fn task(State(ui): State<Ui>, session: Session, Path(id): Path<String>, Query(q): Q) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(f) => return render_failure(&session, "Task", "", &f),
    };
    let now = ui.now();
    let task: api::Task = match ui.get(&session, &format!("/v1/tasks/{id}")).await {
        Ok(t) => t,
        Err(f) => return render_failure(&session, "Task", "", &f),
    };
    let history: Result<api::History, _> = ui.get(&session, &format!("/v1/tasks/{id}/history")).await;
    let lineage: Result<api::Lineage, _> = ui.get(&session, &format!("/v1/tasks/{id}/lineage")).await;
    let verified: Result<api::ChainVerification, _> =
        ui.get(&session, &format!("/v1/tasks/{id}/verify")).await;
    let state = wire(&task.state);
    let live = matches!(
        task.state,
        api::TaskStateName::Waiting | api::TaskStateName::Held | api::TaskStateName::Blocked
    );
    // A human stage answers an inbox listing; any other stage is refused.
    let human = live
        && ui
            .get::<api::InboxPage>(&session, &format!("/v1/inbox?stage={}&limit=1", url(&task.stage)))
            .await
            .is_ok();
    let mine = task.lease.as_ref().is_some_and(|l| l.agent == session.name);

    let mut body = flash(&q);
    let _ = write!(body, "<p class=\"id-line\">Task <code>{id}</code> {}</p>", state_badge(&state));

    // Summary.
    body.push_str("<section aria-labelledby=\"sum-h\"><h2 id=\"sum-h\">Summary</h2><dl class=\"facts\">");
    let mut fact = |k: &str, v: String| {
        let _ = write!(body, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    };
    fact("State", state_badge(&state));
    fact("Stage", e(&task.stage).to_string());
    fact(
        "Custodian",
        task.custodian.as_ref().map_or("none (finished)".to_owned(), |c| {
            format!("{} <strong>{}</strong>", e(&wire(&c.kind)), e(&c.id))
        }),
    );
    fact("Due", task.due_at.map_or("–".to_owned(), |t| when(t, now)));
    if let Some(l) = &task.lease {
        fact(
            "Held by",
            format!(
                "<strong>{}</strong> at epoch {}, lease ends {}",
                e(&l.agent),
                l.epoch,
                when(l.expires_at, now)
            ),
        );
    }
    if let Some(d) = task.deadline {
        fact(
            "Deadline",
            format!(
                "{}{}",
                when(d, now),
                if task.deadline_passed { " <span class=\"badge warn\">passed</span>" } else { "" }
            ),
        );
    }
    fact("Priority", task.priority.to_string());
    fact("Epoch", task.epoch.to_string());
    fact("Attempts", format!("{} (re-offers {}, reroutes {})", task.attempts, task.reoffers, task.reroutes));
    if let Some(w) = &task.workflow {
        fact(
            "Workflow",
            format!(
                "<a href=\"/ui/workflows/{}?version={}\">{} v{}</a>",
                url(&w.name),
                w.version,
                e(&w.name),
                w.version
            ),
        );
    }
    fact("Submitted by", format!("{} {}", e(&task.submitter), when(task.created_at, now)));
    if let Some(p) = task.parent {
        fact("Parent", task_link(&p));
    }
    if let Some(r) = &task.cancel_reason {
        fact("Cancel reason", e(r).to_string());
    }
    if let Some(r) = &task.result {
        fact("Result", format!("<code>{}</code>", e(&r.to_string())));
    }
    if !task.labels.is_empty() {
        let labels: Vec<String> = task.labels.iter().map(|(k, v)| format!("{}={}", e(k), e(v))).collect();
        fact("Labels", labels.join(", "));
    }
    body.push_str("</dl></section>");

    // Chain verification.
    body.push_str("<section aria-labelledby=\"chain-h\"><h2 id=\"chain-h\">Hash chain</h2>");
    match &verified {
        Ok(v) if v.ok => {
            let _ = write!(
                body,
                "<p id=\"chain\" class=\"ok\"><span aria-hidden=\"true\">✔</span> Verified: {} events link one to the next and \
                 the last carries the row as stored (head <code>{}</code>).</p>",
                v.events,
                e(v.head.as_deref().unwrap_or(""))
            );
        }
        Ok(v) => {
            let _ = write!(
                body,
                "<p id=\"chain\" class=\"bad\" role=\"alert\"><span aria-hidden=\"true\">✘</span> Broken at version {}: {}</p>",
                v.broken_at.unwrap_or(0),
                e(v.problem.as_deref().unwrap_or(""))
            );
        }
        Err(f) => body.push_str(&failure_box(f)),
    }
    body.push_str("</section>");

    // Actions.
    body.push_str(&actions(&ui, &session, &task, live, human, mine).await);

    // Payload.
    let payload = task
        .payload
        .as_ref()
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .map_or_else(String::new, |v| serde_json::to_string_pretty(&v).unwrap_or_default());
    let _ = write!(
        body,
        "<section aria-labelledby=\"payload-h\"><h2 id=\"payload-h\">Payload</h2><pre class=\"json\" tabindex=\"0\">{}</pre></section>",
        e(&payload)
    );

    // Timeline.
    body.push_str(
        "<section aria-labelledby=\"tl-h\"><h2 id=\"tl-h\">Timeline</h2><div class=\"scroll\" tabindex=\"0\"><table id=\"timeline\"><thead><tr>\
         <th scope=\"col\" class=\"num\">#</th><th scope=\"col\">When</th><th scope=\"col\">Event</th><th scope=\"col\">By</th>\
         <th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Note</th><th scope=\"col\">Findings</th>\
         <th scope=\"col\" class=\"num\">Confidence</th></tr></thead><tbody>",
    );
    match &history {
        Ok(h) => {
            for ev in &h.events {
                let pos = |p: &api::Position| format!("{} {}", e(&p.stage), state_badge(&wire(&p.state)));
                let _ = write!(
                    body,
                    "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                    ev.version,
                    when(ev.at, now),
                    e(&ev.kind),
                    e(&ev.actor),
                    ev.from.as_ref().map_or("–".to_owned(), pos),
                    pos(&ev.to),
                    e(ev.note.as_deref().unwrap_or("")),
                    ev.findings
                        .as_ref()
                        .map_or(String::new(), |f| format!("<code>{}</code>", e(&f.to_string()))),
                    ev.confidence.map_or(String::new(), |c| format!("{c:.2}")),
                );
            }
        }
        Err(f) => {
            let _ = write!(body, "<tr><td colspan=\"9\">{}</td></tr>", failure_box(f));
        }
    }
    body.push_str("</tbody></table></div></section>");

    // Lineage.
    body.push_str("<section aria-labelledby=\"lin-h\"><h2 id=\"lin-h\">Lineage</h2>");
    match &lineage {
        Ok(l) => {
            body.push_str(
                "<div class=\"scroll\" tabindex=\"0\"><table id=\"steps\"><thead><tr><th scope=\"col\">Stage</th><th scope=\"col\">Entered</th>\
                 <th scope=\"col\">Claimed by</th><th scope=\"col\" class=\"num\">Waited</th><th scope=\"col\" class=\"num\">Held</th>\
                 <th scope=\"col\">Left as</th><th scope=\"col\">To</th></tr></thead><tbody>",
            );
            for s in &l.steps {
                let _ = write!(
                    body,
                    "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                    e(&s.stage),
                    when(s.entered_at, now),
                    e(s.claimed_by.as_deref().unwrap_or("–")),
                    dur(i64::try_from(s.waited_ms).unwrap_or(0)),
                    dur(i64::try_from(s.held_ms).unwrap_or(0)),
                    s.exit.as_ref().map_or("(here now)".to_owned(), |x| e(&wire(x)).to_string()),
                    e(s.to_stage.as_deref().unwrap_or("")),
                );
            }
            let t = &l.totals;
            let _ = write!(
                body,
                "</tbody></table></div><p>In total {}: waited {}, held {}, blocked on children {}.</p><h3>Tree</h3><div id=\"tree\">",
                dur(i64::try_from(t.total_ms).unwrap_or(0)),
                dur(i64::try_from(t.waited_ms).unwrap_or(0)),
                dur(i64::try_from(t.held_ms).unwrap_or(0)),
                dur(i64::try_from(t.blocked_ms).unwrap_or(0)),
            );
            if let Some(p) = l.tree.parent {
                let _ = write!(body, "<p>Parent: {}</p>", task_link(&p));
            }
            let _ = write!(
                body,
                "<ul class=\"tree\"><li><strong>this task</strong> ({}, {})",
                e(&l.stage),
                state_badge(&wire(&l.state))
            );
            children(&mut body, &l.tree.children, l.tree.children_truncated);
            body.push_str("</li></ul></div>");
        }
        Err(f) => body.push_str(&failure_box(f)),
    }
    body.push_str("</section>");
    render(&session, "Task", "", &body)
}

fn children(out: &mut String, kids: &[api::LineageChild], truncated: bool) {
    if kids.is_empty() && !truncated {
        return;
    }
    out.push_str("<ul>");
    for c in kids {
        let _ = write!(out, "<li>{} ({}, {})", task_link(&c.id), e(&c.stage), state_badge(&wire(&c.state)));
        children(out, &c.children, c.children_truncated);
        out.push_str("</li>");
    }
    if truncated {
        out.push_str("<li class=\"muted\">more children not shown</li>");
    }
    out.push_str("</ul>");
}

/// The forms the session may use on this task.
async fn actions(
    ui: &Ui,
    session: &Session,
    task: &api::Task,
    live: bool,
    human: bool,
    mine: bool,
) -> String {
    if !live {
        return String::new();
    }
    let id = task.id;
    let csrf = csrf_input(session);
    let mut out = String::from(
        "<section aria-labelledby=\"act-h\" id=\"actions\"><h2 id=\"act-h\">Act on this task</h2><div class=\"actions\">",
    );
    if human && task.state == api::TaskStateName::Waiting {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/inbox/{id}/claim\" class=\"card\"><h3>Take it</h3>\
             <p>The task waits in the human stage <strong>{}</strong>. Claim it to resolve it; the claim is recorded under your name.</p>\
             {csrf}<button type=\"submit\" id=\"claim\">Claim</button></form>",
            e(&task.stage)
        );
    }
    if human
        && mine
        && let Some(lease) = &task.lease
    {
        // The stages a handoff may go to: the workflow's (from a human stage
        // every stage of the workflow is allowed).
        let mut stages: Vec<String> = Vec::new();
        if let Some(w) = &task.workflow
            && let Ok(view) = ui
                .get::<api::WorkflowView>(
                    session,
                    &format!("/v1/workflows/{}?version={}", url(&w.name), w.version),
                )
                .await
        {
            stages = view.stages.into_keys().filter(|s| *s != task.stage).collect();
        }
        let to = if stages.is_empty() {
            "<input id=\"to_stage\" name=\"to_stage\" placeholder=\"stage name\">".to_owned()
        } else {
            let mut options = String::new();
            for s in &stages {
                let _ = write!(options, "<option value=\"{0}\">{0}</option>", e(s));
            }
            format!("<select id=\"to_stage\" name=\"to_stage\">{options}</select>")
        };
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/inbox/{id}/resolve\" class=\"card\" id=\"resolve\"><h3>Resolve</h3>{csrf}\
             <input type=\"hidden\" name=\"epoch\" value=\"{}\">\
             <fieldset><legend>Decision</legend>\
             <label><input type=\"radio\" name=\"resolution\" value=\"handoff\" checked> Hand back to a stage</label>\
             <label><input type=\"radio\" name=\"resolution\" value=\"complete\"> Complete</label>\
             <label><input type=\"radio\" name=\"resolution\" value=\"cancel\"> Cancel</label>\
             <label><input type=\"radio\" name=\"resolution\" value=\"abort\"> Abort (compensate the stages done)</label></fieldset>\
             <label for=\"to_stage\">Stage (for a hand-back)</label>{to}\
             <label for=\"note\">Note for the history</label><textarea id=\"note\" name=\"note\" rows=\"2\"></textarea>\
             <label for=\"reason\">Reason (required to cancel or abort)</label><input id=\"reason\" name=\"reason\">\
             <button type=\"submit\">Resolve</button></form>",
            lease.epoch
        );
    }
    if !human
        && mine
        && let Some(lease) = &task.lease
    {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/tasks/{id}/abort\" class=\"card\"><h3>Abort</h3>\
             <p>You hold this task: aborting hands compensation tasks to the stages it finished, latest first, then cancels it.</p>{csrf}\
             <input type=\"hidden\" name=\"epoch\" value=\"{}\"><label for=\"abort-reason\">Reason</label>\
             <input id=\"abort-reason\" name=\"reason\" required><button type=\"submit\">Abort</button></form>",
            lease.epoch
        );
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/ui/tasks/{id}/cancel\" class=\"card\"><h3>Cancel</h3>\
         <p>Ends the task now; a holder's lease is fenced off. Recorded under your name.</p>{csrf}\
         <label for=\"cancel-reason\">Reason</label><input id=\"cancel-reason\" name=\"reason\" required>\
         <button type=\"submit\" class=\"danger\">Cancel task</button></form></div></section>"
    );
    out
}

/// After a form: back to `to`, or the API's refusal.
fn after(result: Result<Value, ApiFailure>, session: &Session, to: &str) -> Response {
    match result {
        Ok(_) => Redirect::to(to).into_response(),
        Err(f) => {
            let body = format!(
                "{}<p><a href=\"{}\">Back</a></p>",
                failure_box(&f),
                e(to.split('?').next().unwrap_or("/ui"))
            );
            (f.status, page(Frame { title: "The API refused", nav: "", session, charts: false }, &body))
                .into_response()
        }
    }
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn epoch(form: &HashMap<String, String>) -> u64 {
    field(form, "epoch").and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// With auth off, the API needs the acting agent named; with auth on it is the token's.
fn dev_agent(session: &Session, body: &mut Value) {
    if session.is_dev() {
        body["agent"] = json!(session.name);
    }
}

/// `POST /ui/tasks/{id}/cancel`.
pub async fn cancel(
    State(ui): State<Ui>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match task_post(&session, &headers, &form, &id, "/ui") {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let body = json!({ "reason": field(&form, "reason").unwrap_or("") });
    let result = ui.post(&session, &format!("/v1/tasks/{id}/cancel"), body).await;
    after(result, &session, &format!("/ui/tasks/{id}?done=cancelled"))
}

/// `POST /ui/tasks/{id}/abort`: the holder's abort (compensation runs).
pub async fn abort(
    State(ui): State<Ui>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match task_post(&session, &headers, &form, &id, "/ui") {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let mut body = json!({ "epoch": epoch(&form), "reason": field(&form, "reason").unwrap_or("") });
    dev_agent(&session, &mut body);
    let result = ui.post(&session, &format!("/v1/tasks/{id}/abort"), body).await;
    after(result, &session, &format!("/ui/tasks/{id}?done=aborted"))
}

// ---------------------------------------------------------------- inbox

/// `GET /ui/inbox`: tasks waiting for people.
pub async fn inbox(State(ui): State<Ui>, session: Session, Query(q): Q) -> Response {
    let now = ui.now();
    let page_: api::InboxPage = match ui.get(&session, &format!("/v1/inbox?limit={LIST_LIMIT}")).await {
        Ok(p) => p,
        Err(f) => return render_failure(&session, "Inbox", "/ui/inbox", &f),
    };
    let csrf = csrf_input(&session);
    let mut body = flash(&q);
    body.push_str(
        "<p class=\"lede\">Tasks escalated to people or sent to a human stage, oldest first. Claim one, read its \
         history, then hand it back, complete, cancel or abort it.</p><div class=\"scroll\" tabindex=\"0\"><table id=\"inbox\"><thead><tr>\
         <th scope=\"col\">Task</th><th scope=\"col\">Stage</th><th scope=\"col\">From</th><th scope=\"col\">Why</th>\
         <th scope=\"col\">Since</th><th scope=\"col\">State</th><th scope=\"col\">Action</th></tr></thead><tbody>",
    );
    if page_.items.is_empty() {
        body.push_str("<tr><td colspan=\"7\">The inbox is empty.</td></tr>");
    }
    for item in &page_.items {
        let t = &item.task;
        let id = t.id;
        let action = match (&t.state, &t.lease) {
            (api::TaskStateName::Waiting, _) => format!(
                "<form method=\"post\" action=\"/ui/inbox/{id}/claim\" class=\"inline\">{csrf}\
                 <button type=\"submit\">Claim<span class=\"visually-hidden\"> task {id}</span></button></form>"
            ),
            (_, Some(l)) if l.agent == session.name => {
                format!(
                    "<a href=\"/ui/tasks/{id}#resolve\">Resolve<span class=\"visually-hidden\"> task {id}</span></a>"
                )
            }
            (_, Some(l)) => format!("held by {}", e(&l.agent)),
            _ => String::new(),
        };
        // Messages sent to the task while it waits (they resolve nothing).
        let mut why = e(&item.why).to_string();
        for m in &item.messages {
            let data =
                m.findings.as_ref().map_or(String::new(), |f| format!(" <code>{}</code>", e(&f.to_string())));
            let _ = write!(why, "<div class=\"message\">{}: {}{data}</div>", e(&m.by), e(&m.note));
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            task_link(&id),
            e(&t.stage),
            e(item.from_stage.as_deref().unwrap_or("–")),
            why,
            when(item.since, now),
            state_badge(&wire(&t.state)),
        );
    }
    body.push_str("</tbody></table></div>");
    if page_.next_cursor.is_some() {
        let _ = write!(
            body,
            "<p class=\"muted\">Showing the oldest {LIST_LIMIT}; resolve these to see more.</p>"
        );
    }
    render(&session, "Inbox", "/ui/inbox", &body)
}

/// `POST /ui/inbox/{id}/claim`.
pub async fn inbox_claim(
    State(ui): State<Ui>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match task_post(&session, &headers, &form, &id, "/ui/inbox") {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let mut body = json!({});
    dev_agent(&session, &mut body);
    let result = ui.post(&session, &format!("/v1/inbox/{id}/claim"), body).await;
    after(result, &session, &format!("/ui/tasks/{id}?done=claimed#resolve"))
}

/// `POST /ui/inbox/{id}/resolve`.
pub async fn inbox_resolve(
    State(ui): State<Ui>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match task_post(&session, &headers, &form, &id, "/ui/inbox") {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let resolution = field(&form, "resolution").unwrap_or("");
    let mut body = json!({ "epoch": epoch(&form), "resolution": resolution });
    if resolution == "handoff"
        && let Some(to) = field(&form, "to_stage")
    {
        body["to_stage"] = json!(to);
    }
    if let Some(note) = field(&form, "note") {
        body["note"] = json!(note);
    }
    if matches!(resolution, "cancel" | "abort")
        && let Some(reason) = field(&form, "reason")
    {
        body["reason"] = json!(reason);
    }
    dev_agent(&session, &mut body);
    let result = ui.post(&session, &format!("/v1/inbox/{id}/resolve"), body).await;
    after(result, &session, &format!("/ui/tasks/{id}?done=resolved"))
}

// ---------------------------------------------------------------- workflows

/// `GET /ui/workflows`: the stored workflows (latest versions).
pub async fn workflows(State(ui): State<Ui>, session: Session) -> Response {
    let list: api::WorkflowList = match ui.get(&session, "/v1/workflows").await {
        Ok(l) => l,
        Err(f) => return render_failure(&session, "Workflows", "/ui/workflows", &f),
    };
    let mut body = String::from(
        "<p class=\"lede\">Applied workflows, latest version first; each version is kept, and running tasks keep the \
         version they started under.</p><div class=\"scroll\" tabindex=\"0\"><table id=\"workflows\"><thead><tr><th scope=\"col\">Workflow</th>\
         <th scope=\"col\" class=\"num\">Latest version</th><th scope=\"col\">Entry</th><th scope=\"col\" class=\"num\">Stages</th>\
         <th scope=\"col\">Human stages</th></tr></thead><tbody>",
    );
    if list.workflows.is_empty() {
        body.push_str("<tr><td colspan=\"5\">No workflow applied yet (<code>baton workflow apply FILE</code>).</td></tr>");
    }
    for w in &list.workflows {
        let humans: Vec<&str> = w.stages.iter().filter(|(_, s)| s.human).map(|(n, _)| n.as_str()).collect();
        let _ = write!(
            body,
            "<tr><th scope=\"row\"><a href=\"/ui/workflows/{}\">{}</a></th><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            url(&w.name),
            e(&w.name),
            w.version,
            e(&w.entry),
            w.stages.len(),
            e(&humans.join(", "))
        );
    }
    body.push_str("</tbody></table></div>");
    render(&session, "Workflows", "/ui/workflows", &body)
}

/// `GET /ui/workflows/{name}?version=N`: one version, drawn.
pub async fn workflow(
    State(ui): State<Ui>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Q,
) -> Response {
    let latest: api::WorkflowView = match ui.get(&session, &format!("/v1/workflows/{}", url(&name))).await {
        Ok(w) => w,
        Err(f) => return render_failure(&session, "Workflow", "/ui/workflows", &f),
    };
    let version = q.get("version").and_then(|v| v.parse::<u32>().ok()).unwrap_or(latest.version);
    let w: api::WorkflowView = if version == latest.version {
        latest.clone()
    } else {
        match ui.get(&session, &format!("/v1/workflows/{}?version={version}", url(&name))).await {
            Ok(w) => w,
            Err(f) => return render_failure(&session, "Workflow", "/ui/workflows", &f),
        }
    };
    let mut versions =
        String::from("<nav aria-label=\"Versions\" class=\"versions\"><span>Versions:</span><ul>");
    for v in (1..=latest.version).rev() {
        let current = if v == w.version { " aria-current=\"page\"" } else { "" };
        let _ = write!(
            versions,
            "<li><a href=\"/ui/workflows/{}?version={v}\"{current}>v{v}</a></li>",
            url(&name)
        );
    }
    versions.push_str("</ul></nav>");
    let mut body = format!(
        "{versions}<p class=\"lede\">Version {} of <strong>{}</strong>, entering at <strong>{}</strong>. Solid arrows are \
         routes (thick: the default next stage), dashed ones the escalation ladder (reroute, escalate), dotted ones \
         compensation.</p><figure class=\"graph\" tabindex=\"0\">{}<figcaption>Stages and routes of {} v{}</figcaption></figure>",
        w.version,
        e(&w.name),
        e(&w.entry),
        crate::ui::graph::render(&w),
        e(&w.name),
        w.version
    );
    body.push_str(
        "<h2>Stages and their ladder</h2><div class=\"scroll\" tabindex=\"0\"><table id=\"ladder\"><thead><tr><th scope=\"col\">Stage</th>\
         <th scope=\"col\">Accept within</th><th scope=\"col\" class=\"num\">Re-offers</th><th scope=\"col\">Reroute to</th>\
         <th scope=\"col\">Escalate to</th><th scope=\"col\">Lease</th><th scope=\"col\" class=\"num\">Max attempts</th>\
         <th scope=\"col\">Next</th><th scope=\"col\">Routes</th><th scope=\"col\">Compensate</th></tr></thead><tbody>",
    );
    for (name, s) in &w.stages {
        let p = &s.policy;
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{}{}</th><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            e(name),
            if s.human { " <span class=\"badge human\">human</span>" } else { "" },
            dur(p.accept_within_ms),
            p.reoffers,
            e(p.reroute_to.as_deref().unwrap_or("–")),
            e(p.escalate_to.as_deref().unwrap_or("–")),
            dur(p.lease_ms),
            p.max_attempts,
            e(s.next.as_deref().unwrap_or("–")),
            e(&s.routes.join(", ")),
            e(s.compensate.as_deref().unwrap_or("–")),
        );
    }
    let _ = write!(
        body,
        "</tbody></table></div><details><summary>The workflow file</summary><pre tabindex=\"0\">{}</pre></details>",
        e(&w.source)
    );
    let title = format!("Workflow {}", w.name);
    render(&session, &title, "/ui/workflows", &body)
}

// ---------------------------------------------------------------- alerts

/// `GET /ui/alerts?show=open|all&scope=&metric=`.
pub async fn alerts(State(ui): State<Ui>, session: Session, Query(q): Q) -> Response {
    let now = ui.now();
    let all = q.get("show").is_some_and(|s| s == "all");
    let scope = q.get("scope").map(String::as_str).unwrap_or("");
    let metric = q.get("metric").map(String::as_str).unwrap_or("");
    let list: api::AnomalyList =
        match ui.get(&session, &format!("/v1/alerts?all={all}&limit={LIST_LIMIT}")).await {
            Ok(l) => l,
            Err(f) => return render_failure(&session, "Alerts", "/ui/alerts", &f),
        };
    let select = |name: &str, label: &str, current: &str, options: &[(&str, &str)]| {
        let mut out =
            format!("<label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\">");
        for (value, text) in options {
            let selected = if *value == current { " selected" } else { "" };
            let _ = write!(out, "<option value=\"{value}\"{selected}>{text}</option>");
        }
        out.push_str("</select>");
        out
    };
    let mut body = flash(&q);
    let _ = write!(
        body,
        "<p class=\"lede\">Anomalies: an edge or stage departing from the baseline learnt from its own history.</p>\
         <form method=\"get\" action=\"/ui/alerts\" class=\"inline-form\">{}{}{}<button type=\"submit\">Filter</button></form>",
        select("show", "Show", if all { "all" } else { "open" }, &[("open", "open only"), ("all", "all")]),
        select(
            "scope",
            "Scope",
            scope,
            &[("", "any"), ("edge", "stage edges"), ("agent_edge", "agent edges"), ("stage", "stages")]
        ),
        select(
            "metric",
            "Metric",
            metric,
            &[
                ("", "any"),
                ("accept_latency", "accept latency"),
                ("success_rate", "success rate"),
                ("backlog_growth", "backlog growth")
            ]
        ),
    );
    body.push_str(
        "<div class=\"scroll\" tabindex=\"0\"><table id=\"alerts\"><thead><tr><th scope=\"col\" class=\"num\">Id</th><th scope=\"col\">Raised</th>\
         <th scope=\"col\">Where</th><th scope=\"col\">Metric</th><th scope=\"col\" class=\"num\">Observed</th>\
         <th scope=\"col\" class=\"num\">Baseline</th><th scope=\"col\">Message</th><th scope=\"col\">Acknowledged</th></tr></thead><tbody>",
    );
    let csrf = csrf_input(&session);
    let shown: Vec<&api::Anomaly> = list
        .anomalies
        .iter()
        .filter(|a| scope.is_empty() || a.scope == scope)
        .filter(|a| metric.is_empty() || a.metric == metric)
        .collect();
    if shown.is_empty() {
        body.push_str("<tr><td colspan=\"8\">No alerts match.</td></tr>");
    }
    for a in shown {
        let figure = |x: f64| match a.metric.as_str() {
            "accept_latency" => dur(x as i64),
            "success_rate" => format!("{:.1}%", x * 100.0),
            _ => format!("{x:.1}"),
        };
        let place = match &a.to {
            Some(to) => format!("{} {} → {}", a.scope.replace('_', " "), a.from, to),
            None => format!("stage {}", a.from),
        };
        let acked = match (&a.acked_by, a.acked_at) {
            (Some(by), Some(at)) => format!("by <strong>{}</strong> {}", e(by), when(at, now)),
            _ => format!(
                "<form method=\"post\" action=\"/ui/alerts/{}/ack\" class=\"inline\">{csrf}<button type=\"submit\">Acknowledge\
                 <span class=\"visually-hidden\"> alert {}</span></button></form>",
                a.id, a.id
            ),
        };
        let _ = write!(
            body,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{acked}</td></tr>",
            a.id,
            when(a.raised_at, now),
            e(&place),
            e(&a.metric),
            figure(a.observed),
            figure(a.baseline),
            e(&a.message),
        );
    }
    body.push_str("</tbody></table></div>");
    render(&session, "Alerts", "/ui/alerts", &body)
}

/// `POST /ui/alerts/{id}/ack`.
pub async fn ack(
    State(ui): State<Ui>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    let result = ui.post(&session, &format!("/v1/alerts/{id}/ack"), json!(null)).await;
    after(result, &session, "/ui/alerts?done=acked")
}

// ---------------------------------------------------------------- webhooks

/// `GET /ui/webhooks?webhook=&after=`: delivery attempts, per webhook.
pub async fn webhooks(State(ui): State<Ui>, session: Session, Query(q): Q) -> Response {
    let now = ui.now();
    let after: u64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let only = q.get("webhook").map(String::as_str).unwrap_or("");
    let page_: api::DeliveryPage =
        match ui.get(&session, &format!("/v1/deliveries?after={after}&limit={LIST_LIMIT}")).await {
            Ok(p) => p,
            Err(f) => return render_failure(&session, "Webhook deliveries", "/ui/webhooks", &f),
        };
    let mut by_hook: BTreeMap<&str, Vec<&api::Delivery>> = BTreeMap::new();
    for d in &page_.deliveries {
        by_hook.entry(d.webhook.as_str()).or_default().push(d);
    }
    let mut options = String::from("<option value=\"\">every webhook</option>");
    for name in by_hook.keys() {
        let selected = if *name == only { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{0}\"{selected}>{0}</option>", e(name));
    }
    let mut body = format!(
        "<p class=\"lede\">Every attempt to deliver a notice (a handoff's outcome, an alert) to the webhooks in the \
         server's configuration, oldest first.</p><form method=\"get\" action=\"/ui/webhooks\" class=\"inline-form\">\
         <label for=\"f-webhook\">Webhook</label><select id=\"f-webhook\" name=\"webhook\">{options}</select>\
         <button type=\"submit\">Show</button></form>"
    );
    if by_hook.is_empty() {
        body.push_str("<p>No deliveries recorded (no webhook configured, or nothing to tell yet).</p>");
    }
    for (name, list) in by_hook.iter().filter(|(n, _)| only.is_empty() || **n == only) {
        let _ = write!(
            body,
            "<h2>{0}</h2><div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\" class=\"num\">Record</th><th scope=\"col\" class=\"num\">Notice</th>\
             <th scope=\"col\" class=\"num\">Attempt</th><th scope=\"col\">When</th><th scope=\"col\">Outcome</th></tr></thead><tbody>",
            e(name)
        );
        for d in list {
            let outcome = match &d.status {
                api::DeliveryStatus::Delivered { http_status } => {
                    format!("<span class=\"ok\">delivered</span> ({http_status})")
                }
                api::DeliveryStatus::Failed { error, retry_at } => {
                    format!(
                        "<span class=\"warn-text\">failed</span>: {}; retry {}",
                        e(error),
                        when(*retry_at, now)
                    )
                }
                api::DeliveryStatus::GaveUp { error } => {
                    format!("<span class=\"bad\">gave up</span>: {}", e(error))
                }
            };
            let _ = write!(
                body,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{outcome}</td></tr>",
                d.id,
                d.notice,
                d.attempt,
                when(d.at, now)
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if let Some(last) = page_.deliveries.last()
        && page_.deliveries.len() as u32 == LIST_LIMIT
    {
        let _ = write!(
            body,
            "<p><a href=\"/ui/webhooks?after={}&amp;webhook={}\">Next page</a></p>",
            last.id,
            url(only)
        );
    }
    render(&session, "Webhook deliveries", "/ui/webhooks", &body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            super::e("<a href=\"x\">'&'</a>").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(super::url("a b/ü"), "a%20b/%C3%BC");
    }
}
