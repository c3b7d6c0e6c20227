//! Conformance cases of the archive (`Store::archive`, `archived`,
//! `archive_chunk`, and `history` of an archived task): which finished tasks
//! a pass moves and which stay, that an archived chain reads back exactly and
//! verifies, that an archived task's idempotency key stays taken, and that a
//! pass is bounded by `archive_batch_max`.

use super::{Case, SuiteStore, T0, complete, new_task, ok, suite_rules};
use crate::exec::block_on;
use baton_core::archive::{
    ArchiveAudit, ArchiveCommit, ArchiveRequest, ArchivedEntry, CommitChunk, HookFilter,
};
use baton_core::store::{Delivery, DeliveryStatus};
use baton_core::{JoinMode, Op, Store, TaskId};

/// Finish times are before this; tasks finished later are recent.
const CUTOFF: i64 = T0 + 10_000;

fn pass(hooks: Vec<HookFilter>) -> ArchiveRequest {
    ArchiveRequest { finished_before: CUTOFF, limit: 1_000, hooks }
}

fn ops_hook() -> HookFilter {
    HookFilter { name: "ops".into(), kinds: vec!["handoff".into(), "alert".into()], stages: None }
}

fn archive<H: SuiteStore>(cx: &Case<H>, request: ArchiveRequest) -> usize {
    ok(block_on(cx.store().archive(request)))
}

fn is_live<H: SuiteStore>(cx: &Case<H>, id: TaskId) -> bool {
    ok(block_on(cx.store().get(id))).is_some()
}

fn is_archived<H: SuiteStore>(cx: &Case<H>, id: TaskId) -> bool {
    ok(block_on(cx.store().archived(id))).is_some()
}

/// Every chunk the store indexes, checked as `baton audit verify --archive` does.
fn audit<H: SuiteStore>(cx: &Case<H>) -> ArchiveAudit {
    let mut report = ArchiveAudit::default();
    let mut after = None;
    while let Some(chunk) = ok(block_on(cx.store().archive_chunk(after.take()))) {
        report.check_chunk(&chunk);
        after = Some(chunk.name);
    }
    report
}

/// A pass moves finished tasks older than the cut-off, and only those no
/// live task needs and whose notices every configured webhook has had; an
/// archived task's history reads back exactly as it was, verifies, and
/// survives a reopen.
pub fn archive_moves_only_eligible_tasks<H: SuiteStore>() {
    let mut cx = Case::<H>::open(suite_rules());
    // Done and cancelled long ago: they go.
    let done = cx.submit_to("a").id;
    let grant = cx.claim_one("w", "a");
    cx.act(&grant, complete());
    let cancelled = cx.submit_to("a").id;
    cx.cancel(cancelled, "not needed");
    // Live: stays.
    let live = cx.submit_to("z").id;
    // A finished parent with a live child (submitted under it): both stay.
    let parent = cx.submit_to("p").id;
    cx.cancel(parent, "done with it");
    let child = cx.submit(baton_core::NewTask { parent: Some(parent), ..new_task("q", "{}") }).task.id;
    // A finished child of a live (blocked) parent: stays while the parent waits.
    let blocked = cx.submit_to("j").id;
    let grant = cx.claim_one("w", "j");
    let out = cx.act(&grant, super::spawn(&["k", "l"], JoinMode::All, 600_000));
    let k = cx.claim_one("w", "k");
    cx.act(&k, complete());
    let (finished_child, open_child) = (k.task.id, out.children.iter().copied().find(|c| *c != k.task.id));
    // A handoff whose outcome notice the webhook has not had yet: stays.
    let handed = cx.submit_to("a").id;
    let grant = cx.claim_one("w", "a");
    cx.act(&grant, super::handoff_to("b"));
    let grant = cx.claim_one("w", "b");
    cx.act(&grant, complete());
    // Finished after the cut-off: stays.
    cx.advance(20_000);
    let recent = cx.submit_to("a").id;
    cx.cancel(recent, "late");

    let histories: Vec<_> = [done, cancelled].iter().map(|id| (cx.view(*id), cx.history(*id))).collect();
    assert_eq!(archive(&cx, pass(vec![ops_hook()])), 2, "only the two old, unneeded tasks move");
    for (view, events) in &histories {
        let id = view.task.id;
        assert!(!is_live(&cx, id), "{id} left the live store");
        let record = ok(block_on(cx.store().archived(id))).expect("archived");
        assert_eq!(&record.view().expect("parses"), view, "the row, payload and head as they were");
        assert_eq!(&cx.history(id), events, "history reads back from the archive, identical");
        let newest: Vec<_> = events.iter().rev().take(1).cloned().collect();
        assert_eq!(ok(block_on(cx.store().history_before(id, None, 1))), newest);
        assert_eq!(record.check(), None, "the archived chain verifies");
    }
    for id in [live, parent, child, blocked, finished_child, handed, recent].into_iter().chain(open_child) {
        assert!(is_live(&cx, id), "{id} stays");
        assert!(!is_archived(&cx, id));
    }
    assert_eq!(archive(&cx, pass(vec![ops_hook()])), 0, "a second pass finds nothing more");

    // The webhook's final delivery frees the handed-off task; with no
    // webhook configured, nothing waits at all.
    let notices = ok(block_on(cx.store().task_notices(handed, 0, 100)));
    assert!(!notices.is_empty(), "an accepted handoff leaves a notice");
    for (id, _) in &notices {
        let status = DeliveryStatus::Delivered { http_status: 200 };
        let delivery = Delivery { notice: *id, webhook: "ops".into(), attempt: 1, at: cx.now(), status };
        ok(cx.try_execute(Op::RecordDelivery(delivery), None));
    }
    assert_eq!(archive(&cx, pass(vec![ops_hook()])), 1);
    assert!(is_archived(&cx, handed));

    // Children leave before their parents: the live child keeps its parent.
    let grant = cx.claim_one("w", "q");
    cx.act(&grant, complete());
    assert_eq!(archive(&cx, ArchiveRequest { finished_before: cx.now() + 1, ..pass(vec![]) }), 2);
    assert!(is_archived(&cx, child) && is_live(&cx, parent), "the child went first");
    assert_eq!(archive(&cx, ArchiveRequest { finished_before: cx.now() + 1, ..pass(vec![]) }), 1);
    assert!(is_archived(&cx, parent));
    // `recent` went in the pass before, with the child; the blocked family stays.
    assert!(is_archived(&cx, recent));
    assert!(is_live(&cx, finished_child) && is_live(&cx, blocked));

    let report = audit(&cx);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.tasks, 6);
    cx.reopen();
    for (view, events) in &histories {
        assert_eq!(&cx.history(view.task.id), events, "the archive survives a reopen");
    }
    assert_eq!(audit(&cx).tasks, 6);
    cx.finish();
}

/// A repeated submit with the idempotency key of an archived task is
/// refused `task_archived` naming the task, and creates nothing; other keys
/// are free as ever.
pub fn archived_idempotency_key_stays_taken<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let keyed = baton_core::NewTask { idempotency_key: Some("order-7".into()), ..new_task("a", "{}") };
    let id = cx.submit(keyed.clone()).task.id;
    cx.cancel(id, "done");
    assert!(!cx.submit(keyed.clone()).created, "before the archive, a repeat returns the task");
    cx.advance(20_000);
    assert_eq!(archive(&cx, pass(vec![])), 1);
    let rejection = cx.refuses("task_archived", |cx| cx.try_submit(keyed.clone()));
    assert_eq!(rejection, baton_core::Rejection::TaskArchived { task: id });
    let other = baton_core::NewTask { payload: r#"{"other":1}"#.into(), ..keyed.clone() };
    cx.refuses("task_archived", |cx| cx.try_submit(other));
    let fresh = baton_core::NewTask { idempotency_key: Some("order-8".into()), ..keyed };
    assert!(cx.submit(fresh).created);
    cx.finish();
}

/// A pass moves at most `archive_batch_max` tasks; the engine refuses a
/// commit of more, and a commit whose task changed or went is refused whole.
pub fn archive_pass_is_bounded<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.archive_batch_max = 3;
    let cx = Case::<H>::open(rules);
    let ids: Vec<TaskId> = (0..7)
        .map(|_| {
            let id = cx.submit_to("a").id;
            cx.cancel(id, "bulk");
            id
        })
        .collect();
    cx.advance(20_000);
    let moved: Vec<usize> = (0..4).map(|_| archive(&cx, pass(vec![]))).collect();
    assert_eq!(moved, vec![3, 3, 1, 0]);
    assert!(ids.iter().all(|id| is_archived(&cx, *id)));

    // Straight to the commit: more than the limit, or a task that is gone.
    let entry = |id: TaskId| ArchivedEntry {
        id,
        revision: 2,
        namespace: "default".into(),
        idempotency_key: None,
        finished_at: T0,
    };
    let more: Vec<TaskId> = (0..4).map(|_| cx.submit_to("a").id).collect();
    let chunk = |tasks: Vec<ArchivedEntry>| CommitChunk {
        name: baton_core::archive::chunk_name(T0, tasks[0].id),
        hour: T0,
        tasks,
        bytes: Some(vec![1, 2, 3]),
    };
    let too_many = ArchiveCommit { chunks: vec![chunk(more.iter().map(|id| entry(*id)).collect())] };
    let rejection = cx.refuses("limit_exceeded", |cx| cx.try_execute(Op::Archive(too_many), None));
    super::assert_limit(&rejection, "archive_batch_max");
    let gone = ArchiveCommit { chunks: vec![chunk(vec![entry(ids[0])])] };
    cx.refuses("invalid_request", |cx| cx.try_execute(Op::Archive(gone), None));
    let live = ArchiveCommit { chunks: vec![chunk(vec![entry(more[0])])] };
    cx.refuses("invalid_request", |cx| cx.try_execute(Op::Archive(live), None));
    cx.finish();
}
