//! Migration fixtures: a store populated with every kind of stored thing an
//! upgrade must carry forward, and the snapshot of everything it reads back.
//!
//! `populate` drives a fresh store on the suite's rules and manual clock
//! through the public API until it holds tasks in every state (waiting, held,
//! handed off and unaccepted, backing off, blocked on children, escalated to
//! the human inbox with a reply, done, cancelled, an aborted saga whose
//! compensation finished and one still compensating), workflows, keyed
//! request records, outbox notices, webhook deliveries and a push config.
//! `snapshot` is what the store answers for all of it, as JSON.
//!
//! Each store's tests keep a database written by an earlier version of Baton
//! (a SQLite file, a PostgreSQL plain-SQL dump) with the snapshot that version
//! read from it. The migration test opens a copy with the current code, which
//! migrates it, and requires the same snapshot, every chain verified, the
//! history checker's approval, keyed requests replayed as first answered, and
//! new changes chaining onto old events (`continue_after_migration`). The
//! fixture files are written by the migration test itself when
//! `BATON_WRITE_MIGRATION_FIXTURE` is set, in each store's test binary
//! (docs/design.md, "Migrations and the fixtures that pin them").

use crate::suite::{ACCEPT_MS, Case, HUMANS, SuiteStore, complete, handoff_to, new_task, stage};
use crate::{block_on, check_store};
use baton_core::event::verify_chain;
use baton_core::store::{CommentRequest, Delivery, DeliveryStatus, PushConfig};
use baton_core::{
    Action, Actor, JoinMode, JoinSpec, NewChild, NewTask, Op, OpOutcome, Report, RequestKey, Store,
    TaskFilter, TaskId, Workflow, WorkflowStage,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The keyed requests `populate` makes: (principal, key) with the op each
/// ran. A migrated store must answer a repeat with the stored outcome.
pub fn keyed_requests() -> Vec<(RequestKey, Op)> {
    let key = |k: &str| RequestKey {
        principal: "fixture".into(),
        key: k.into(),
        fingerprint: baton_core::Hash::of(k.as_bytes()),
    };
    vec![(
        key("submit-keyed"),
        Op::Submit(NewTask {
            idempotency_key: Some("order-7".into()),
            ..new_task("intake", r#"{"order":7}"#)
        }),
    )]
}

/// A saga: reserve, then charge (compensated by refund), then ship.
fn saga() -> Workflow {
    let base = crate::suite_rules().policies.default;
    let st = |routes: &[&str], next: Option<&str>, compensate: Option<&str>| WorkflowStage {
        policy: base.clone(),
        routes: routes.iter().map(|r| stage(r)).collect(),
        next: next.map(stage),
        compensate: compensate.map(stage),
        ..WorkflowStage::default()
    };
    Workflow {
        name: "order".into(),
        version: 0,
        a2a: None,
        entry: stage("reserve"),
        stages: [
            ("reserve", st(&["charge"], Some("charge"), Some("unreserve"))),
            ("charge", st(&["ship"], Some("ship"), Some("refund"))),
            ("ship", st(&[], None, None)),
            ("unreserve", st(&[], None, None)),
            ("refund", st(&[], None, None)),
        ]
        .into_iter()
        .map(|(name, def)| (stage(name), def))
        .collect(),
    }
}

/// Fills a fresh store (on `suite_rules`) with tasks in every state and the
/// records around them. Deterministic apart from the ids the store makes.
pub fn populate<H: SuiteStore>(cx: &Case<H>) {
    // Workflows: the saga, applied twice (two versions).
    cx.apply(saga());
    cx.apply(saga());

    // Escalated to the human inbox (nobody claimed it within the accept
    // window, the re-offer lapsed too). First: the clock moves here only, so
    // the leases and timers of the tasks below stay as they are.
    let lonely = cx.submit(new_task("lonely", r#"{"q":"escalated"}"#)).task;
    for _ in 0..2 {
        cx.advance(ACCEPT_MS);
        cx.fire(100);
    }
    let escalated = cx.task(lonely.id);
    assert_eq!(escalated.stage, stage(HUMANS), "{escalated:?}");

    // Keyed requests (request records) and an idempotency key on a task.
    for (key, op) in keyed_requests() {
        cx.execute(op, &key);
    }

    // Waiting, fresh, with labels, a deadline and a trace.
    let mut labels = BTreeMap::new();
    labels.insert("team".to_owned(), "billing".to_owned());
    cx.submit(NewTask {
        labels,
        priority: 5,
        deadline: Some(cx.now() + 3_600_000),
        trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..new_task("intake", r#"{"q":"waiting"}"#)
    });

    // Held, with a heartbeat.
    let held = cx.submit(new_task("research", r#"{"q":"held"}"#)).task;
    let g = cx.claim_one("r1", "research");
    assert_eq!(g.task.id, held.id);
    cx.act(&g, Action::Heartbeat { lease_ms: None, note: Some("halfway".into()) });

    // Handed off and not yet accepted, with a push config watching it.
    let handed = cx.submit(new_task("draft", r#"{"q":"handed off"}"#)).task;
    put_push_config(cx, handed.id);
    let g = cx.claim_one("d1", "draft");
    let report = Report {
        note: Some("draft ready".into()),
        findings: Some(json!({"pages": 3})),
        confidence: Some(0.9),
    };
    cx.act(&g, Action::Handoff { to_stage: stage("review"), report });

    // Backing off after a retryable failure.
    cx.submit(new_task("flaky", r#"{"q":"backoff"}"#));
    let g = cx.claim_one("f1", "flaky");
    cx.act(&g, Action::Fail { error: "upstream 503".into(), retryable: true });

    // Blocked on children: one child done, one waiting.
    cx.submit(new_task("plan", r#"{"q":"parent"}"#));
    let g = cx.claim_one("p1", "plan");
    let child = |payload: &str| NewChild {
        stage: stage("subtask"),
        payload: payload.into(),
        priority: 0,
        labels: BTreeMap::new(),
    };
    let spawned = cx.act(
        &g,
        Action::Spawn {
            children: vec![child(r#"{"part":1}"#), child(r#"{"part":2}"#)],
            join: JoinSpec { mode: JoinMode::All, within_ms: 3_600_000 },
        },
    );
    assert_eq!(spawned.children.len(), 2);
    let g = cx.claim_one("s1", "subtask");
    cx.act(&g, complete());

    // Done, through a handoff accepted by a claim.
    cx.submit(new_task("extract", r#"{"q":"done"}"#));
    let g = cx.claim_one("e1", "extract");
    cx.act(&g, handoff_to("summarize"));
    let g = cx.claim_one("e2", "summarize");
    cx.act(&g, Action::Complete { result: Some(json!({"summary": "ok"})), report: Report::default() });

    // Cancelled while waiting.
    let doomed = cx.submit(new_task("intake", r#"{"q":"cancelled"}"#)).task;
    cx.cancel(doomed.id, "duplicate request");

    // An aborted saga whose compensation finished (cancelled), and one
    // still compensating (blocked on its refund).
    for finish in [true, false] {
        let order =
            cx.submit(NewTask { workflow: Some("order".into()), ..new_task("", r#"{"q":"saga"}"#) }).task;
        for (who, at) in [("w1", "reserve"), ("w2", "charge")] {
            let g = cx.claim_one(who, at);
            assert_eq!(g.task.id, order.id);
            cx.act(&g, complete());
        }
        let g = cx.claim_one("w3", "ship");
        cx.act(&g, Action::Abort { reason: "out of stock".into() });
        if finish {
            let refund = cx.claim_one("payments", "refund");
            cx.act(&refund, complete());
            let unreserve = cx.claim_one("stock", "unreserve");
            cx.act(&unreserve, complete());
        }
    }

    // A reply added to the escalated task.
    let comment = CommentRequest {
        task: lonely.id,
        actor: Actor::Principal("submitter".into()),
        note: "please use the EU address".into(),
        findings: None,
        caller: None,
    };
    cx.try_execute(Op::Comment(comment), None).expect("comment");

    // Webhook deliveries for the first notices: one delivered, one given up,
    // one failed with a retry pending.
    let notices = block_on(cx.store().notices(0, 10)).expect("notices");
    assert!(notices.len() >= 3, "populate makes notices: {notices:?}");
    let statuses = [
        DeliveryStatus::Delivered { http_status: 204 },
        DeliveryStatus::GaveUp { error: "connection refused".into() },
        DeliveryStatus::Failed { error: "timeout".into(), retry_at: cx.now() + 5_000 },
    ];
    for ((seq, _), status) in notices.iter().zip(statuses) {
        let delivery = Delivery { notice: *seq, webhook: "ops".into(), attempt: 1, at: cx.now(), status };
        cx.try_execute(Op::RecordDelivery(delivery), None).expect("delivery");
    }
}

fn put_push_config<H: SuiteStore>(cx: &Case<H>, task: TaskId) {
    let config = PushConfig {
        task,
        id: "cfg-1".into(),
        url: "http://127.0.0.1:9/push".into(),
        token: "push-secret".into(),
        by: "principal:submitter".into(),
        created_at: cx.now(),
        after_version: 1,
    };
    cx.try_execute(Op::PutPushConfig(config), None).expect("push config");
}

/// Everything the store reads back about what `populate` wrote, as JSON:
/// every task (view, history, its handoffs), notices, deliveries, push
/// configs, workflows and the stage counters.
pub fn snapshot(store: &dyn Store, now: baton_core::Millis) -> Value {
    let tasks = crate::checker::list_all(store).expect("list");
    let mut out = Vec::new();
    for task in &tasks {
        let view = block_on(store.get(task.id)).expect("get").expect("listed task exists");
        let history = block_on(store.history(task.id)).expect("history");
        let mut handoffs = Vec::new();
        for id in history.iter().filter_map(|e| e.handoff) {
            let h = block_on(store.handoff(id)).expect("handoff");
            handoffs.push(h.expect("a handoff named by an event exists"));
        }
        handoffs.sort_by_key(|h| h.id.to_string());
        handoffs.dedup();
        let children =
            block_on(store.list(TaskFilter { parent: Some(task.id), limit: 100, ..TaskFilter::default() }))
                .expect("children")
                .tasks
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>();
        out.push(json!({ "view": view, "history": history, "handoffs": handoffs, "children": children }));
    }
    let notices = block_on(store.notices(0, 1_000)).expect("notices");
    let deliveries = block_on(store.deliveries(0, 1_000)).expect("deliveries");
    let push = block_on(store.push_configs(None, 1_000)).expect("push configs");
    let workflows = block_on(store.workflows()).expect("workflows");
    let gauges = block_on(store.stage_gauges(1_000)).expect("gauges");
    json!({
        "now": now,
        "tasks": out,
        "notices": notices,
        "deliveries": deliveries,
        "push_configs": push,
        "workflows": workflows,
        "gauges": gauges,
        "next_due": block_on(store.next_due()).expect("next due"),
    })
}

/// The checks a migrated fixture must pass beyond an equal snapshot: every
/// chain verifies, the history checker approves, and every keyed request
/// replays its stored outcome. Returns the problems found.
pub fn check_migrated(store: &dyn Store) -> Vec<String> {
    let mut problems = Vec::new();
    for task in crate::checker::list_all(store).expect("list") {
        let history = block_on(store.history(task.id)).expect("history");
        if let Err(e) = verify_chain(&history) {
            problems.push(format!("task {}: chain does not verify: {e:?}", task.id));
        }
    }
    if let Err(found) = check_store(store) {
        problems.extend(found);
    }
    let before = crate::checker::list_all(store).expect("list");
    for (key, op) in keyed_requests() {
        let Op::Submit(new) = &op else { unreachable!("the fixture keys submits") };
        let keyed = before.iter().find(|t| t.idempotency_key == new.idempotency_key).map(|t| t.id);
        match block_on(store.execute(op, Some(key.clone()))) {
            Ok(OpOutcome::Submit(s)) if Some(s.task.id) == keyed => {}
            other => problems.push(format!("keyed request {} did not replay: {other:?}", key.key)),
        }
    }
    let after = crate::checker::list_all(store).expect("list");
    if after.len() != before.len() {
        problems.push(format!("replays made tasks: {} before, {} after", before.len(), after.len()));
    }
    problems
}

/// Changes after migration chain onto the old events: a claim, a handoff and
/// a completion of the fixture's waiting task, then the checks again.
pub fn continue_after_migration<H: SuiteStore>(cx: &Case<H>) {
    let g = cx.claim_one("after", "intake");
    cx.act(&g, handoff_to("review"));
    let g = cx.claim_one("after", "review");
    cx.act(&g, complete());
    let problems = check_migrated(cx.store());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The path to the first place two JSON values differ, for a readable
/// failure when a migrated fixture reads differently.
pub fn first_difference(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    None => return format!(".{k}: missing after migration"),
                    Some(w) if v != w => return format!(".{k}{}", first_difference(v, w)),
                    _ => {}
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map_or_else(String::new, |k| format!(".{k}: new after migration"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (v, w))| v != w)
            .map_or_else(String::new, |(i, (v, w))| format!("[{i}]{}", first_difference(v, w))),
        _ => format!(": {a} before, {b} after"),
    }
}
