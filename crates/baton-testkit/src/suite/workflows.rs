//! Conformance cases for workflows, deadlines and sagas: versions pinned at
//! submit, routes and the default route, who may claim and how many at once,
//! per-version policies driving the ladder, a deadline's priority boost and
//! escalation, and an abort's compensation in reverse order. Like every case
//! in `suite`, each runs on a manual clock against the public `Store` API and
//! ends with the history checker.

use super::*;
use baton_core::{DEADLINE_BOOST, Skipped, Workflow, WorkflowRef, WorkflowStage};

/// A stage of a test workflow: routes, default route and compensation stage.
struct S<'a> {
    name: &'a str,
    routes: &'a [&'a str],
    next: Option<&'a str>,
    compensate: Option<&'a str>,
}

fn s<'a>(name: &'a str, routes: &'a [&'a str], next: Option<&'a str>) -> S<'a> {
    S { name, routes, next, compensate: None }
}

/// A workflow over the suite's default policy (escalating to `HUMANS`).
fn workflow(name: &str, entry: &str, stages: &[S<'_>]) -> Workflow {
    let base = suite_rules().policies.default;
    Workflow {
        name: name.to_owned(),
        version: 0,
        a2a: None,
        entry: stage(entry),
        stages: stages
            .iter()
            .map(|st| {
                let def = WorkflowStage {
                    policy: base.clone(),
                    routes: st.routes.iter().map(|r| stage(r)).collect(),
                    next: st.next.map(stage),
                    compensate: st.compensate.map(stage),
                    ..WorkflowStage::default()
                };
                (stage(st.name), def)
            })
            .collect(),
    }
}

impl<H: SuiteStore> Case<H> {
    /// Applies a workflow, which must be accepted.
    pub fn apply(&self, wf: Workflow) -> baton_core::store::Applied {
        self.try_execute(Op::ApplyWorkflow(wf), None)
            .expect("apply")
            .into_applied()
            .expect("an apply outcome")
    }

    /// Submits through a workflow's entry stage.
    pub fn submit_via(&self, workflow: &str) -> Task {
        let new = NewTask { workflow: Some(workflow.to_owned()), ..new_task("", "{}") };
        self.submit(new).task
    }
}

fn pipeline() -> Workflow {
    workflow("pipeline", "a", &[s("a", &["b"], Some("b")), s("b", &[], None)])
}

/// Applying numbers versions; an unchanged definition makes none; reads see
/// every version; a graph error is refused and writes nothing.
pub fn workflow_versions_are_numbered_and_kept<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let v1 = cx.apply(pipeline());
    assert!(v1.created);
    assert_eq!(v1.workflow.version, 1);
    let again = cx.apply(pipeline());
    assert!(!again.created, "an unchanged definition makes no new version");
    assert_eq!(again.workflow.version, 1);
    let changed =
        workflow("pipeline", "a", &[s("a", &["b", "c"], Some("b")), s("b", &[], None), s("c", &[], None)]);
    let v2 = cx.apply(changed.clone());
    assert!(v2.created);
    assert_eq!(v2.workflow.version, 2);
    let store = cx.store();
    assert_eq!(block_on(store.workflow("pipeline".into(), None)).expect("read").map(|w| w.version), Some(2));
    let first = block_on(store.workflow("pipeline".into(), Some(1))).expect("read").expect("v1 kept");
    assert!(first.same_definition(&pipeline()));
    assert_eq!(block_on(store.workflow("nope".into(), None)).expect("read"), None);
    let all = block_on(store.workflows()).expect("list");
    assert_eq!(all.iter().map(|w| (w.name.as_str(), w.version)).collect::<Vec<_>>(), [("pipeline", 2)]);
    let broken = workflow("broken", "a", &[s("a", &["ghost"], None)]);
    let r = cx.refuses("invalid_request", |cx| cx.try_execute(Op::ApplyWorkflow(broken), None));
    assert_field(&r, "stages.a.routes");
    cx.refuses("not_found", |cx| {
        cx.try_submit(NewTask { workflow: Some("ghost".into()), ..new_task("", "{}") })
    });
    cx.refuses("invalid_request", |cx| {
        cx.try_submit(NewTask { workflow: Some("pipeline".into()), ..new_task("b", "{}") })
    });
    cx.finish();
}

/// A task keeps the version it was submitted under: a new version changes
/// what new tasks do, never a running one. `complete` follows `next`; a
/// handoff off the routes is refused; the last stage's complete finishes.
pub fn workflow_tasks_keep_their_version_and_follow_routes<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    cx.apply(pipeline());
    let old = cx.submit_via("pipeline");
    assert_eq!(old.stage, stage("a"));
    assert_eq!(old.workflow, Some(WorkflowRef { name: "pipeline".into(), version: 1 }));
    cx.apply(workflow("pipeline", "a", &[s("a", &["c"], Some("c")), s("b", &[], None), s("c", &[], None)]));
    let new = cx.submit_via("pipeline");
    assert_eq!(new.workflow.as_ref().map(|w| w.version), Some(2));

    let grant = cx.claim_one("alice", "a");
    assert_eq!(grant.task.id, old.id, "oldest first");
    let r = cx.refuses("route_not_allowed", |cx| cx.try_act(&grant, handoff_to("c")));
    assert!(matches!(r, Rejection::RouteNotAllowed { .. }), "{r:?}");
    let out = cx.act(&grant, complete());
    assert_eq!(out.task.stage, stage("b"), "v1's next");
    assert_eq!(out.task.trail, vec![stage("a")]);
    let (custodian, _, _) = waiting(&out.task);
    assert_eq!(custodian, &Custodian::Agent(agent("alice")), "the sender stays custodian");
    let handoff = cx.handoff(out.handoff.expect("a routed complete is a handoff"));
    assert_eq!(handoff.outcome, HandoffOutcome::Pending);

    let grant = cx.claim_one("alice", "a");
    assert_eq!(grant.task.id, new.id);
    let out = cx.act(&grant, complete());
    assert_eq!(out.task.stage, stage("c"), "v2's next");

    let grant = cx.claim_one("bob", "b");
    assert_eq!(
        cx.handoff(handoff.id).outcome.clone(),
        HandoffOutcome::Accepted { by: agent("bob"), at: cx.now(), epoch: grant.epoch }
    );
    let out = cx.act(&grant, complete());
    assert!(matches!(out.task.state, TaskState::Done { .. }), "b has no next: done");
    cx.finish();
}

/// A workflow stage's `agents` keep its tasks from other agents, and its
/// `capacity` caps how many are held there at once.
pub fn workflow_stage_agents_and_capacity<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let mut wf = workflow("gated", "a", &[s("a", &[], None)]);
    let a = wf.stages.get_mut(&stage("a")).expect("a");
    a.agents = vec!["alice".into()];
    a.capacity = Some(2);
    cx.apply(wf);
    for _ in 0..3 {
        cx.submit_via("gated");
    }
    assert!(cx.claim("bob", &["a"], 3).is_empty(), "bob is not listed");
    let grants = cx.claim("alice", &["a"], 3);
    assert_eq!(grants.len(), 2, "capacity 2");
    let full = ok(block_on(cx.store().execute(claim_op("alice", &["a"], 1), None)));
    let full = full.into_claimed().expect("a claim's outcome");
    assert!(full.grants.is_empty(), "full");
    assert_eq!(full.skipped, vec![Skipped { stage: stage("a"), held: 2, capacity: 2 }], "and says why");
    cx.act(&grants[0], complete());
    assert_eq!(cx.claim("alice", &["a"], 3).len(), 1, "room for one again");
    cx.finish();
}

/// The ladder uses the policies of the task's workflow version: here stage
/// `a` reroutes to `a2` after one offer, which the global policy would not.
pub fn workflow_policies_drive_the_ladder<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let mut wf = workflow("quick", "a", &[s("a", &[], None), s("a2", &[], None)]);
    let a = wf.stages.get_mut(&stage("a")).expect("a");
    a.policy.accept_within_ms = 1_000;
    a.policy.reoffers = 0;
    a.policy.reroute_to = Some(stage("a2"));
    wf.stages.get_mut(&stage("a2")).expect("a2").policy.accept_within_ms = 2_000;
    cx.apply(wf);
    let task = cx.submit_via("quick");
    let plain = cx.submit_to("a");
    assert_eq!(cx.next_due(), Some(T0 + 1_000));
    cx.advance(1_000);
    assert_eq!(cx.fire(10), 1, "only the workflow task is due");
    let moved = cx.task(task.id);
    assert_eq!(moved.stage, stage("a2"));
    assert_eq!(cx.last_event(task.id).kind, EventKind::Rerouted);
    assert_eq!(moved.due_at(), Some(T0 + 3_000), "a2's accept_within from the workflow");
    assert_eq!(cx.task(plain.id).due_at(), Some(T0 + ACCEPT_MS), "the ad hoc task keeps the global policy");
    cx.advance(2_000);
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.task(task.id).stage, stage("a2"), "re-offered once at a2 (global reoffers 1)");
    cx.advance(2_000);
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.task(task.id).stage, stage(HUMANS), "then escalated");
    cx.assert_alert(task.id, HUMANS);
    cx.finish();
}

/// From a human stage an operator may hand a workflow task back to any stage
/// of its workflow, and nowhere else.
pub fn escalated_workflow_task_goes_back_into_its_workflow<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    cx.apply(pipeline());
    let task = cx.submit_via("pipeline");
    let grant = cx.claim_one("alice", "a");
    cx.act(&grant, fail(false));
    assert_eq!(cx.task(task.id).stage, stage(HUMANS));
    let op = cx.claim_one("operator", HUMANS);
    cx.refuses("route_not_allowed", |cx| cx.try_act(&op, handoff_to("elsewhere")));
    let out = cx.act(&op, handoff_to("b"));
    assert_eq!(out.task.stage, stage("b"));
    assert!(out.task.trail.is_empty(), "a human stage is not work done");
    cx.finish();
}

/// A deadline raises the priority `deadline_near_ms` before it, then, once
/// passed, escalates a waiting task and alerts about a held one.
pub fn deadline_raises_priority_then_escalates<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let deadline = T0 + 40_000;
    let waiting_task = cx.submit(NewTask { deadline: Some(deadline), ..new_task("a", "{}") }).task;
    let held_task = cx.submit(NewTask { deadline: Some(deadline), ..new_task("b", "{}") }).task;
    let other = cx.submit_to("a");
    assert_eq!(waiting_task.boost_at, Some(deadline - DEADLINE_NEAR_MS));
    assert_eq!(cx.next_due(), Some(deadline - DEADLINE_NEAR_MS));
    let grant = cx.claim_one_for("bob", "b", Some(LEASE_MS * 5));
    assert_eq!(grant.task.id, held_task.id);

    cx.advance(deadline - DEADLINE_NEAR_MS - T0);
    assert_eq!(cx.fire(10), 2, "both deadline tasks near their deadline");
    let boosted = cx.task(waiting_task.id);
    assert_eq!(boosted.priority, DEADLINE_BOOST);
    assert_eq!(boosted.boost_at, None);
    assert_eq!(cx.last_event(waiting_task.id).kind, EventKind::DeadlineNear);
    let carol = cx.claim("carol", &["a"], 1).remove(0);
    assert_eq!(carol.task.id, waiting_task.id, "boosted ahead of the older task {}", other.id);
    // Give it back so it waits again when the deadline passes.
    cx.act(&carol, release());

    cx.advance(DEADLINE_NEAR_MS);
    assert_eq!(cx.fire(10), 2);
    let escalated = cx.task(waiting_task.id);
    assert_eq!(escalated.stage, stage(HUMANS));
    assert!(escalated.deadline_passed);
    assert_eq!(cx.last_event(waiting_task.id).kind, EventKind::Escalated);
    cx.assert_alert(waiting_task.id, HUMANS);
    let held = cx.task(held_task.id);
    assert_eq!(held.holder(), Some(&agent("bob")), "a held task stays with its holder");
    assert_eq!(cx.last_event(held_task.id).kind, EventKind::DeadlinePassed);
    cx.assert_alert(held_task.id, "b");
    assert_eq!(held.due_at(), held.state_due_at(), "the deadline acts once");
    cx.finish();
}

fn saga() -> Workflow {
    let mut reserve = s("reserve", &["charge"], Some("charge"));
    reserve.compensate = Some("unreserve");
    let mut charge = s("charge", &["ship"], Some("ship"));
    charge.compensate = Some("refund");
    workflow(
        "order",
        "reserve",
        &[reserve, charge, s("ship", &[], None), s("unreserve", &[], None), s("refund", &[], None)],
    )
}

/// Aborting compensates the stages already done, latest first, one at a time,
/// then cancels the task; a compensation task that is escalated instead of
/// done counts as settled, so the abort still completes.
pub fn abort_compensates_in_reverse_order<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    cx.apply(saga());
    let order = cx.submit_via("order");
    for (who, at) in [("r", "reserve"), ("c", "charge")] {
        let g = cx.claim_one(who, at);
        cx.act(&g, complete());
    }
    let g = cx.claim_one("s", "ship");
    let out = cx.act(&g, Action::Abort { reason: "out of stock".into() });
    assert_eq!(out.children.len(), 1);
    assert!(matches!(out.task.state, TaskState::Blocked { .. }));
    assert_eq!(cx.last_event(order.id).kind, EventKind::Aborted);
    assert!(cx.claim("x", &["unreserve"], 1).is_empty(), "one compensation at a time, latest first");
    let refund = cx.claim_one("payments", "refund");
    assert_eq!(refund.task.parent, Some(order.id));
    assert!(refund.task.compensation);
    assert_eq!(refund.task.workflow.as_ref().map(|w| w.version), Some(1));
    cx.act(&refund, complete());
    // The unreserve task is never claimed: its ladder escalates it.
    assert!(matches!(cx.task(order.id).state, TaskState::Blocked { .. }));
    cx.advance(ACCEPT_MS);
    cx.fire(10);
    cx.advance(ACCEPT_MS);
    cx.fire(10);
    let done = cx.task(order.id);
    let TaskState::Cancelled { reason, .. } = &done.state else {
        panic!("cancelled after compensation: {done:?}")
    };
    assert!(reason.contains("out of stock") && reason.contains("refund done"), "{reason}");
    assert!(reason.contains("unreserve escalated"), "{reason}");
    assert!(reason.find("refund").expect("refund") < reason.find("unreserve").expect("unreserve"));
    cx.finish();
}

/// Abort needs a workflow; with nothing done, it cancels at once.
pub fn abort_without_compensation<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    cx.submit_to("a");
    let g = cx.claim_one("alice", "a");
    let r = cx.refuses("invalid_request", |cx| cx.try_act(&g, Action::Abort { reason: "no".into() }));
    assert_field(&r, "action");
    cx.apply(saga());
    let order = cx.submit_via("order");
    let g = cx.claim_one("r", "reserve");
    let out = cx.act(&g, Action::Abort { reason: "changed my mind".into() });
    assert!(out.children.is_empty());
    assert!(matches!(out.task.state, TaskState::Cancelled { .. }));
    assert_eq!(cx.kinds(order.id).last(), Some(&EventKind::Aborted));
    cx.finish();
}

/// Children spawned into a workflow's stages run under the parent's version;
/// an `any` join holds after the first is done (redundant pathways).
pub fn workflow_children_share_the_version_and_any_joins<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let mut wf = workflow("notify", "a", &[s("a", &[], None), s("email", &[], None), s("sms", &[], None)]);
    wf.stages.get_mut(&stage("email")).expect("email").policy.accept_within_ms = 1_000;
    cx.apply(wf);
    let parent = cx.submit_via("notify");
    let g = cx.claim_one("alice", "a");
    let out = cx.act(&g, spawn(&["email", "sms", "elsewhere"], JoinMode::Any, 10_000));
    let kids: Vec<Task> = out.children.iter().map(|c| cx.task(*c)).collect();
    assert_eq!(kids[0].workflow, parent.workflow);
    assert_eq!(kids[1].workflow, parent.workflow);
    assert_eq!(kids[2].workflow, None, "a stage outside the workflow is ad hoc");
    assert_eq!(kids[0].due_at(), Some(cx.now() + 1_000), "the workflow's policy");
    let sms = cx.claim_one("sms-bot", "sms");
    cx.act(&sms, complete());
    let p = cx.task(parent.id);
    assert!(p.is_ready(), "any: one child done is enough");
    assert_eq!(cx.last_event(parent.id).kind, EventKind::Joined);
    cx.finish();
}

/// After each commit the listener hears one observation per change, in
/// order, with the time spent in the state left; refused calls are not
/// observed. Rolled up, a handoff and its acceptance count on the edge with
/// the exact accept latency.
pub fn observations_follow_each_commit_and_roll_up<H: SuiteStore>() {
    use baton_core::metrics::{RollupKey, bucket_of, rollup_deltas};
    let cx = Case::<H>::open(suite_rules());
    let task = cx.submit_to("a");
    cx.advance(1_000);
    let g = cx.claim_one("alice", "a");
    cx.advance(2_000);
    cx.act(&g, handoff_to("b"));
    cx.advance(500);
    cx.refuses("lease_lost", |cx| cx.try_act(&g, complete()));
    let g = cx.claim_one("bob", "b");
    let observed = cx.ready.take_observed();
    let kinds: Vec<EventKind> = observed.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, [EventKind::Submitted, EventKind::Claimed, EventKind::HandedOff, EventKind::Claimed]);
    assert!(observed.iter().all(|o| o.task == task.id));
    assert_eq!(observed[1].elapsed_ms, Some(1_000), "waited 1 s for the claim");
    assert_eq!(observed[2].elapsed_ms, Some(2_000), "held 2 s");
    assert_eq!((observed[2].from.as_str(), observed[2].stage.as_str()), ("a", "b"));
    let mut deltas = BTreeMap::new();
    for o in &observed {
        rollup_deltas(o, &mut deltas);
    }
    let edge = &deltas[&(bucket_of(T0), RollupKey::Edge { from: stage("a"), to: stage("b") })];
    assert_eq!((edge.handoffs, edge.accepted), (1, 1));
    assert_eq!(edge.accept_latency.max_ms, 500);
    let agents = &deltas[&(bucket_of(T0), RollupKey::AgentEdge { from: agent("alice"), to: agent("bob") })];
    assert_eq!(agents.accepted, 1);
    let a = &deltas[&(bucket_of(T0), RollupKey::Stage { stage: stage("a") })];
    assert_eq!((a.submitted, a.claims, a.completed), (1, 1, 1));
    assert_eq!((a.wait.max_ms, a.work.max_ms), (1_000, 2_000));
    cx.act(&g, complete());
    cx.finish();
}

/// Rollups add up per key and bucket, read back by window, and purge by age.
pub fn rollups_merge_and_read_by_window<H: SuiteStore>() {
    use baton_core::metrics::{BUCKET_MS, Counts, Rollup, RollupKey};
    let cx = Case::<H>::open(suite_rules());
    let key = RollupKey::Stage { stage: stage("a") };
    let edge = RollupKey::Edge { from: stage("a"), to: stage("b") };
    let one = |bucket, key: &RollupKey, claims| {
        let mut counts = Counts { claims, ..Counts::default() };
        counts.wait.record(claims as Millis * 10);
        Rollup { bucket, key: key.clone(), counts }
    };
    let merge = |rollups: Vec<Rollup>| cx.try_execute(Op::MergeRollups(rollups), None).expect("merge");
    merge(vec![one(T0, &key, 2), one(T0, &edge, 1), one(T0 + BUCKET_MS, &key, 3)]);
    merge(vec![one(T0, &key, 5)]);
    let read = |from, to| block_on(cx.store().rollups(from, to, 100)).expect("rollups");
    let all = read(T0, T0 + 2 * BUCKET_MS);
    assert_eq!(all.len(), 3);
    let first = all.iter().find(|r| r.bucket == T0 && r.key == key).expect("merged");
    assert_eq!(first.counts.claims, 7);
    assert_eq!(first.counts.wait.count, 2);
    assert_eq!((first.counts.wait.min_ms, first.counts.wait.max_ms), (20, 50));
    assert_eq!(read(T0 + BUCKET_MS, T0 + 2 * BUCKET_MS).len(), 1, "the window excludes earlier buckets");
    assert_eq!(read(T0, T0 + 2 * BUCKET_MS).iter().filter(|r| r.key == edge).count(), 1);
    let purged = cx.try_execute(Op::PurgeRollups { before: T0 + BUCKET_MS }, None).expect("purge");
    assert_eq!(purged, OpOutcome::PurgeRollups(2));
    assert_eq!(read(T0, T0 + 2 * BUCKET_MS).len(), 1);
    let too_many = (0..=suite_rules().limits.rollups_merge_max).map(|i| one(T0, &key, i as u64)).collect();
    cx.refuses("limit_exceeded", |cx| cx.try_execute(Op::MergeRollups(too_many), None));
    cx.finish();
}

/// Anomalies are stored in order with an outbox notice each (naming the
/// anomaly's id), listed all or
/// open only, and acknowledged once (a second ack keeps the first).
/// Webhook delivery records: listed in order; a webhook's cursor is its
/// highest notice with a final record, and its latest record (final or not)
/// is where a restarted dispatcher picks a notice in flight back up.
pub fn deliveries_resume_where_each_webhook_left_off<H: SuiteStore>() {
    use baton_core::metrics::{Anomaly, RollupKey};
    use baton_core::store::{Delivery, DeliveryStatus};
    let cx = Case::<H>::open(suite_rules());
    // Two notices in the outbox to deliver (an anomaly writes one).
    for metric in ["accept_latency", "backlog_growth"] {
        let anomaly = Anomaly {
            key: RollupKey::Edge { from: stage("a"), to: stage("b") },
            metric: metric.to_owned(),
            window_start: T0,
            window_end: T0 + 60_000,
            baseline: 1.0,
            observed: 2.0,
            message: format!("{metric} doubled"),
            raised_at: T0,
            acked: None,
        };
        cx.try_execute(Op::RaiseAnomaly(anomaly), None).expect("raise");
    }
    let notices = block_on(cx.store().notices(0, 10)).expect("notices");
    assert_eq!(notices.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
    let record = |webhook: &str, notice: u64, attempt: u32, status: DeliveryStatus| {
        let d =
            Delivery { notice, webhook: webhook.to_owned(), attempt, at: T0 + i64::from(attempt), status };
        cx.try_execute(Op::RecordDelivery(d.clone()), None).expect("record");
        d
    };
    let failed = |retry_at| DeliveryStatus::Failed { error: "HTTP 500".into(), retry_at };
    assert_eq!(block_on(cx.store().last_delivery("ops".into())).expect("read"), None);
    record("ops", 1, 1, DeliveryStatus::Delivered { http_status: 200 });
    record("audit", 1, 1, failed(T0 + 1_000));
    record("ops", 2, 1, failed(T0 + 1_000));
    let in_flight = record("ops", 2, 2, failed(T0 + 2_000));
    let audit = record("audit", 1, 2, DeliveryStatus::GaveUp { error: "HTTP 500".into() });
    let cursor = |w: &str| block_on(cx.store().delivery_cursor(w.into())).expect("cursor");
    let last = |w: &str| block_on(cx.store().last_delivery(w.into())).expect("last");
    assert_eq!((cursor("ops"), last("ops")), (Some(1), Some(in_flight)));
    assert_eq!((cursor("audit"), last("audit")), (Some(1), Some(audit)));
    assert_eq!((cursor("other"), last("other")), (None, None));
    let all = block_on(cx.store().deliveries(0, 10)).expect("deliveries");
    assert_eq!(
        all.iter().map(|(id, d)| (*id, d.webhook.as_str(), d.attempt)).collect::<Vec<_>>(),
        [(1, "ops", 1), (2, "audit", 1), (3, "ops", 1), (4, "ops", 2), (5, "audit", 2)]
    );
    cx.finish();
}

pub fn anomalies_are_stored_listed_and_acknowledged<H: SuiteStore>() {
    use baton_core::metrics::{Anomaly, RollupKey};
    let cx = Case::<H>::open(suite_rules());
    let anomaly = |metric: &str| Anomaly {
        key: RollupKey::Edge { from: stage("a"), to: stage("b") },
        metric: metric.to_owned(),
        window_start: T0,
        window_end: T0 + 60_000,
        baseline: 30_000.0,
        observed: 61_000.0,
        message: format!("{metric} doubled"),
        raised_at: T0,
        acked: None,
    };
    for metric in ["accept_latency", "backlog_growth"] {
        cx.try_execute(Op::RaiseAnomaly(anomaly(metric)), None).expect("raise");
    }
    let list = |open_only| block_on(cx.store().anomalies(0, 10, open_only)).expect("anomalies");
    let all = list(false);
    assert_eq!(
        all.iter().map(|(id, a)| (*id, a.metric.as_str())).collect::<Vec<_>>(),
        [(1, "accept_latency"), (2, "backlog_growth")]
    );
    cx.advance(5_000);
    let acked = cx.try_execute(Op::AckAnomaly { id: 1, by: "op".into() }, None).expect("ack");
    let OpOutcome::AckAnomaly(a) = acked else { panic!("an ack outcome: {acked:?}") };
    assert_eq!(a.acked, Some(("op".to_owned(), T0 + 5_000)));
    cx.advance(1_000);
    let again = cx.try_execute(Op::AckAnomaly { id: 1, by: "other".into() }, None).expect("ack again");
    assert_eq!(again, OpOutcome::AckAnomaly(a), "the first acknowledgement stands");
    assert_eq!(list(true).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2]);
    assert_eq!(list(false).len(), 2);
    cx.refuses("invalid_request", |cx| cx.try_execute(Op::AckAnomaly { id: 9, by: "op".into() }, None));
    let notices = block_on(cx.store().notices(0, 10)).expect("notices");
    let ids: Vec<u64> = notices
        .iter()
        .filter_map(|(_, n)| match n {
            baton_core::store::Notice::Anomaly { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [1, 2], "each anomaly notice names its anomaly");
    cx.finish();
}

/// Stage gauges count the live tasks of each stage by state (finished tasks
/// leave no trace), give the oldest ready task's `since`, are cut at the
/// limit by stage name; and a lone store holds every singleton duty.
pub fn stage_gauges_count_live_tasks_and_duties_are_held<H: SuiteStore>() {
    use baton_core::{SingletonDuty, StageGauge};
    let cx = Case::<H>::open(suite_rules());
    let first = cx.submit_to("a");
    cx.advance(1_000);
    cx.submit_to("a");
    cx.submit_to("b");
    let held = cx.claim_one("x", "a");
    assert_eq!(held.task.id, first.id, "the oldest is claimed first");
    cx.submit_to("c");
    let done = cx.claim_one("x", "c");
    cx.act(&done, complete());
    let gauges = |limit| block_on(cx.store().stage_gauges(limit)).expect("stage gauges");
    let since = Some(T0 + 1_000);
    let gauge = |name: &str, ready, held, since| StageGauge {
        ready,
        held,
        oldest_ready_since: since,
        ..StageGauge::empty(stage(name))
    };
    assert_eq!(gauges(10), [gauge("a", 1, 1, since), gauge("b", 1, 0, since)]);
    assert_eq!(gauges(1), [gauge("a", 1, 1, since)]);
    assert!(block_on(cx.store().holds_duty(SingletonDuty::Metrics)).expect("holds_duty"));
    cx.finish();
}

/// A canary route sends its share of `complete`'s traffic to the new stage
/// (by task id: within tolerance over many tasks); promoting it (a version
/// whose `next` is the canary) sends all new tasks there, and rolling back (a
/// version without it) none, while tasks on the earlier version keep its split.
pub fn canary_route_shares_then_promotes_and_rolls_back<H: SuiteStore>() {
    use baton_core::Canary;
    const TASKS: usize = 200;
    let cx = Case::<H>::open(suite_rules());
    let with = |canary: Option<u8>, next: &str| {
        let mut wf = workflow(
            "canaried",
            "a",
            &[s("a", &["b", "b2"], Some(next)), s("b", &[], None), s("b2", &[], None)],
        );
        wf.stages.get_mut(&stage("a")).expect("a").canary =
            canary.map(|percent| Canary { stage: stage("b2"), percent });
        wf
    };
    // Where complete sends `n` new tasks of the latest version.
    let route = |n: usize| {
        let mut to_canary = 0;
        for _ in 0..n {
            cx.submit_via("canaried");
            let g = cx.claim_one("alice", "a");
            let out = cx.act(&g, complete());
            assert!(["b", "b2"].contains(&out.task.stage.as_str()));
            to_canary += usize::from(out.task.stage.as_str() == "b2");
        }
        to_canary
    };
    let broken = with(Some(0), "b");
    cx.refuses("invalid_request", |cx| cx.try_execute(Op::ApplyWorkflow(broken), None));
    cx.apply(with(Some(25), "b"));
    let share = route(TASKS);
    // 25% of 200 is 50; four standard deviations (about 6.1 each) either side.
    assert!((26..=74).contains(&share), "{share} of {TASKS} went to the canary at 25%");
    // An early task, still on v1, waits to be completed after the promotion.
    cx.submit_via("canaried");
    let early = cx.claim_one("alice", "a");
    assert_eq!(cx.apply(with(None, "b2")).workflow.version, 2, "promoted");
    assert_eq!(route(20), 20, "after promotion every new task goes to the canary");
    let out = cx.act(&early, complete());
    let expected = if baton_core::workflow::canary_bucket(early.task.id) < 25 { "b2" } else { "b" };
    assert_eq!(out.task.stage.as_str(), expected, "a v1 task keeps v1's split");
    assert_eq!(cx.apply(with(None, "b")).workflow.version, 3, "rolled back");
    assert_eq!(route(20), 0, "after a rollback no new task goes to the canary");
    cx.finish();
}

/// Push notification configs: kept by (task, id), a second put with the same
/// id replaces the first, listed per task or all, deleted; a config of a
/// task that does not exist is refused. A task whose workflow lists push URL
/// prefixes leaves an `update` notice per change (none for heartbeats), read
/// per task with `task_notices`; other tasks leave none.
pub fn push_configs_are_kept_and_opted_in_tasks_leave_update_notices<H: SuiteStore>() {
    use baton_core::store::{Notice, PushConfig};
    use baton_core::{A2aSettings, TaskId};
    let cx = Case::<H>::open(suite_rules());
    let mut pushed = workflow("pushed", "pa", &[s("pa", &[], None)]);
    pushed.a2a =
        Some(A2aSettings { push_url_prefixes: vec!["http://127.0.0.1:9/".into()], ..A2aSettings::default() });
    cx.apply(pushed);
    cx.apply(workflow("quiet", "qa", &[s("qa", &[], None)]));
    let loud = cx.submit_via("pushed");
    let quiet = cx.submit_via("quiet");
    let grants = cx.claim("w", &["pa", "qa"], 2);
    for grant in &grants {
        cx.act(grant, Action::Heartbeat { lease_ms: None, note: None });
        cx.act(grant, complete());
    }
    let updates = |task: TaskId| -> Vec<u64> {
        block_on(cx.store().task_notices(task, 0, 100))
            .expect("task notices")
            .into_iter()
            .map(|(_, n)| match n {
                Notice::Update { version, .. } => version,
                other => panic!("only updates here: {other:?}"),
            })
            .collect()
    };
    assert_eq!(updates(loud.id), [1, 2, 4], "submitted, claimed, completed; no heartbeat");
    assert_eq!(updates(quiet.id), Vec::<u64>::new());
    let config = |id: &str, url: &str| PushConfig {
        task: loud.id,
        id: id.to_owned(),
        url: url.to_owned(),
        token: "a-token-of-24-bytes-long".to_owned(),
        by: "principal:p".to_owned(),
        created_at: T0,
        after_version: 1,
    };
    for c in [
        config("b", "http://127.0.0.1:9/1"),
        config("a", "http://127.0.0.1:9/2"),
        config("b", "http://127.0.0.1:9/3"),
    ] {
        cx.try_execute(Op::PutPushConfig(c), None).expect("put");
    }
    let listed = block_on(cx.store().push_configs(Some(loud.id), 10)).expect("list");
    assert_eq!(listed, [config("a", "http://127.0.0.1:9/2"), config("b", "http://127.0.0.1:9/3")]);
    assert_eq!(block_on(cx.store().push_configs(None, 10)).expect("all"), listed);
    assert_eq!(block_on(cx.store().push_configs(Some(quiet.id), 10)).expect("none"), []);
    cx.try_execute(Op::DeletePushConfig { task: loud.id, id: "a".into() }, None).expect("delete");
    assert_eq!(
        block_on(cx.store().push_configs(None, 10)).expect("after"),
        [config("b", "http://127.0.0.1:9/3")]
    );
    let orphan = PushConfig { task: TaskId(uuid::Uuid::now_v7()), ..config("x", "http://127.0.0.1:9/") };
    cx.refuses("not_found", |cx| cx.try_execute(Op::PutPushConfig(orphan), None));
    cx.finish();
}
