//! The history checker: reads a whole store through the public `Store` trait
//! and checks the custody invariants (docs/design.md) over every task's row and
//! event log (chain intact, log replays to the row, custody, growing epochs, no
//! stage visit finished twice), plus `check_acknowledged` for crash and fault
//! tests (nothing acknowledged is lost). It owns the checks only; it never
//! writes, and it leaves producing histories to the suite, the model tests and
//! the fault harness. Results list every problem found, not just the first.

use crate::exec::block_on;
use baton_core::event::verify_chain;
use baton_core::{
    Event, EventKind, Millis, Position, StageGauge, StageName, Store, Task, TaskFilter, TaskId, TaskState,
    Wait,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The page size the checker lists with.
pub const CHECK_PAGE_SIZE: usize = 100;

/// Listing more pages than this means a cursor that never ends.
pub const CHECK_PAGES_MAX: usize = 100_000;

/// What a clean check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryReport {
    pub tasks: usize,
    /// Tasks not done or cancelled.
    pub live: usize,
    pub events: usize,
    /// The earliest `due_at` of live tasks, as the checker computed it.
    pub next_due: Option<Millis>,
}

/// Checks every task of `store`; `Ok` with counts, or every problem found.
///
/// Per task: the hash chain verifies; each event's `after` is a state of the
/// task whose revision is the event's version and whose position is the
/// event's `to` (and the previous event's `after` matches its `from`); the last
/// `after` equals the row exactly and the last hash equals the view's `head`;
/// every state in the log keeps custody (a non-terminal state has a custodian
/// and a `due_at`, a lease carries the task's epoch); epochs never decrease and
/// each claim raises the epoch; nothing follows a terminal event; no stage
/// visit (stage, epoch) is completed or handed off twice; every parent exists;
/// an open handoff on a row matches the stored handoff. Store-wide: ids and
/// idempotency keys are unique, `next_due` is the minimum live `due_at`, and
/// the stage gauges (the store's counters, `Store::stage_gauges`) equal both
/// the store's own recount and the checker's count of the listed tasks.
pub fn check_store(store: &dyn Store) -> Result<HistoryReport, Vec<String>> {
    let mut problems = Vec::new();
    let tasks = match list_all(store) {
        Ok(tasks) => tasks,
        Err(problem) => return Err(vec![problem]),
    };
    let mut report = HistoryReport { tasks: tasks.len(), ..HistoryReport::default() };
    let ids: HashSet<TaskId> = tasks.iter().map(|t| t.id).collect();
    if ids.len() != tasks.len() {
        problems.push(format!("listing returned {} tasks but {} distinct ids", tasks.len(), ids.len()));
    }
    let mut keys: HashMap<(&str, &str), TaskId> = HashMap::new();
    for task in &tasks {
        if let Some(key) = &task.idempotency_key
            && let Some(other) = keys.insert((&task.namespace, key), task.id)
        {
            problems.push(format!("idempotency key {key:?} is on tasks {other} and {}", task.id));
        }
        if let Some(parent) = task.parent
            && !ids.contains(&parent)
        {
            problems.push(format!("task {}: parent {parent} does not exist", task.id));
        }
        if !task.is_terminal() {
            report.live += 1;
        }
        report.events += check_task(store, task, &mut problems);
    }
    report.next_due = tasks.iter().filter_map(Task::due_at).min();
    match block_on(store.next_due()) {
        Ok(next) if next == report.next_due => {}
        Ok(next) => problems.push(format!(
            "next_due is {next:?} but the earliest due_at of live tasks is {:?}",
            report.next_due
        )),
        Err(e) => problems.push(format!("next_due failed: {e}")),
    }
    check_gauges(store, Some(&expected_gauges(&tasks)), &mut problems);
    if problems.is_empty() { Ok(report) } else { Err(problems) }
}

/// The stage gauges implied by `tasks`, counted here, independently of any
/// store: stages with live tasks, by name.
pub fn expected_gauges(tasks: &[Task]) -> Vec<StageGauge> {
    let mut by_stage: BTreeMap<&StageName, StageGauge> = BTreeMap::new();
    for task in tasks.iter().filter(|t| !t.is_terminal()) {
        let g = by_stage.entry(&task.stage).or_insert_with(|| StageGauge::empty(task.stage.clone()));
        match &task.state {
            TaskState::Waiting { since, wait: Wait::Offered { .. }, .. } => {
                g.ready += 1;
                g.oldest_ready_since = Some(g.oldest_ready_since.map_or(*since, |o| o.min(*since)));
            }
            TaskState::Held { .. } => g.held += 1,
            TaskState::Blocked { .. } => g.blocked += 1,
            _ => {}
        }
    }
    by_stage.into_values().collect()
}

/// Compares the store's counters (`stage_gauges`) with its recount
/// (`stage_gauges_recount`) and, when given, with `expected`.
pub fn check_gauges(store: &dyn Store, expected: Option<&[StageGauge]>, problems: &mut Vec<String>) {
    let counted = match block_on(store.stage_gauges(usize::MAX)) {
        Ok(g) => g,
        Err(e) => return problems.push(format!("stage_gauges failed: {e}")),
    };
    let recounted = match block_on(store.stage_gauges_recount(usize::MAX)) {
        Ok(g) => g,
        Err(e) => return problems.push(format!("stage_gauges_recount failed: {e}")),
    };
    if counted != recounted {
        problems.push(format!("stage counters {counted:?} differ from the recount {recounted:?}"));
    }
    if let Some(expected) = expected
        && recounted != expected
    {
        problems
            .push(format!("the store's gauge recount {recounted:?} differs from its tasks' {expected:?}"));
    }
}

/// Panics with every problem if the store fails `check_store`.
pub fn assert_store_ok(store: &dyn Store) -> HistoryReport {
    match check_store(store) {
        Ok(report) => report,
        Err(problems) => panic!("history check failed:\n  {}", problems.join("\n  ")),
    }
}

/// Lists every task of the store, following cursors, in id order.
pub fn list_all(store: &dyn Store) -> Result<Vec<Task>, String> {
    list_matching(store, TaskFilter::default())
}

/// Lists every task matching `filter` (its `after` and `limit` are replaced).
pub fn list_matching(store: &dyn Store, filter: TaskFilter) -> Result<Vec<Task>, String> {
    let mut tasks = Vec::new();
    let mut after = None;
    for _ in 0..CHECK_PAGES_MAX {
        let page = block_on(store.list(TaskFilter { after, limit: CHECK_PAGE_SIZE, ..filter.clone() }))
            .map_err(|e| format!("list failed: {e}"))?;
        if page.tasks.len() > CHECK_PAGE_SIZE {
            return Err(format!("list returned {} tasks for a limit of {CHECK_PAGE_SIZE}", page.tasks.len()));
        }
        if let (Some(prev), Some(first)) = (tasks.last().map(|t: &Task| t.id), page.tasks.first())
            && first.id <= prev
        {
            return Err(format!("list is not in id order across pages: {} after {prev}", first.id));
        }
        tasks.extend(page.tasks);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(tasks),
        }
    }
    Err(format!("list did not end within {CHECK_PAGES_MAX} pages"))
}

/// Checks one task; returns how many events it has.
fn check_task(store: &dyn Store, task: &Task, problems: &mut Vec<String>) -> usize {
    let id = task.id;
    let mut fail = |what: String| problems.push(format!("task {id}: {what}"));
    let view = match block_on(store.get(id)) {
        Ok(Some(view)) => view,
        Ok(None) => {
            fail("listed but get finds nothing".into());
            return 0;
        }
        Err(e) => {
            fail(format!("get failed: {e}"));
            return 0;
        }
    };
    if &view.task != task {
        fail("get and list disagree about the row".into());
    }
    let events = match block_on(store.history(id)) {
        Ok(events) => events,
        Err(e) => {
            fail(format!("history failed: {e}"));
            return 0;
        }
    };
    let Some(last) = events.last() else {
        fail("has no events".into());
        return 0;
    };
    if let Err((i, why)) = verify_chain(&events) {
        fail(format!("hash chain broken at event {}: {why}", i + 1));
    }
    if last.after != view.task {
        fail(format!(
            "replaying the log does not reproduce the row:\n    log: {:?}\n    row: {:?}",
            last.after, view.task
        ));
    }
    if last.hash != view.head {
        fail(format!("head is {:?} but the last event's hash is {:?}", view.head, last.hash));
    }
    for problem in check_events(&events) {
        fail(problem);
    }
    if let TaskState::Waiting { handoff: Some(open), .. } = &view.task.state {
        match block_on(store.handoff(open.id)) {
            Ok(Some(stored)) if &stored == open => {}
            Ok(stored) => fail(format!("open handoff {:?} is stored as {stored:?}", open.id)),
            Err(e) => fail(format!("handoff {} failed: {e}", open.id)),
        }
    }
    for event in &events {
        if event.kind == EventKind::HandedOff {
            match event.handoff {
                Some(h) => match block_on(store.handoff(h)) {
                    Ok(Some(stored)) if stored.task == id => {}
                    Ok(other) => fail(format!("handoff {h} of event {} is {other:?}", event.version)),
                    Err(e) => fail(format!("handoff {h} failed: {e}")),
                },
                None => fail(format!("handoff event {} names no handoff", event.version)),
            }
        }
    }
    events.len()
}

/// The log-only checks of one task's events, oldest first.
pub fn check_events(events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut prev: Option<&Event> = None;
    let mut finished: BTreeMap<(StageName, u64), (u64, EventKind)> = BTreeMap::new();
    for e in events {
        let v = e.version;
        let mut fail = |what: String| problems.push(format!("event {v} ({}): {what}", e.kind.as_str()));
        let after = &e.after;
        if e.task != after.id {
            fail(format!("is about task {} but carries task {}", e.task, after.id));
        }
        if after.revision != v {
            fail(format!("carries revision {} for version {v}", after.revision));
        }
        if e.to != Position::of(after) {
            fail(format!("says it moved to {:?} but the task is at {:?}", e.to, Position::of(after)));
        }
        if after.updated_at != e.at {
            fail(format!("at {} but the task was updated at {}", e.at, after.updated_at));
        }
        if !after.is_terminal() && (after.custodian().is_none() || after.due_at().is_none()) {
            fail("leaves a live task without a custodian or a due_at".into());
        }
        if let TaskState::Held { lease } = &after.state
            && lease.epoch != after.epoch
        {
            fail(format!("lease epoch {} differs from the task's epoch {}", lease.epoch, after.epoch));
        }
        match prev {
            None => {
                if e.kind != EventKind::Submitted || e.from.is_some() {
                    fail("the first event must be a submit from nowhere".into());
                }
            }
            Some(p) => {
                if p.after.is_terminal() {
                    fail(format!("follows the terminal event {}", p.version));
                }
                if e.from.as_ref() != Some(&Position::of(&p.after)) {
                    fail(format!(
                        "says it came from {:?} but the task was at {:?}",
                        e.from,
                        Position::of(&p.after)
                    ));
                }
                if after.epoch < p.after.epoch {
                    fail(format!("epoch went down from {} to {}", p.after.epoch, after.epoch));
                }
                if e.kind == EventKind::Claimed && after.epoch != p.after.epoch + 1 {
                    fail(format!("a claim moved the epoch from {} to {}", p.after.epoch, after.epoch));
                }
                if after.id != p.after.id || after.created_at != p.after.created_at {
                    fail("changed the task's identity".into());
                }
            }
        }
        if matches!(e.kind, EventKind::Completed | EventKind::HandedOff) {
            let stage = e.from.as_ref().map_or_else(|| after.stage.clone(), |f| f.stage.clone());
            let epoch = prev.map_or(after.epoch, |p| p.after.epoch);
            if let Some((first, kind)) = finished.insert((stage.clone(), epoch), (v, e.kind)) {
                fail(format!(
                    "finishes the visit to {stage} at epoch {epoch} again (first by event {first}, {})",
                    kind.as_str()
                ));
            }
        }
        prev = Some(e);
    }
    problems
}

/// What a client was told succeeded, collected by a crash or fault test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// Idempotency keys (namespace `default`) of submits answered with success.
    pub submit_keys: Vec<String>,
    /// Ids returned by successful submits.
    pub submit_ids: Vec<TaskId>,
    /// (task, epoch) of completes answered with success.
    pub completions: Vec<(TaskId, u64)>,
    /// (task, epoch) of handoffs answered with success.
    pub handoffs: Vec<(TaskId, u64)>,
}

/// Checks that everything acknowledged is in the store exactly once: each
/// key names one task, each id exists, each acknowledged complete or handoff
/// is one event at that epoch. Run `check_store` too for the rest.
pub fn check_acknowledged(store: &dyn Store, acked: &Acknowledged) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let tasks = list_all(store).map_err(|p| vec![p])?;
    let by_key: HashMap<&str, &Task> = tasks
        .iter()
        .filter(|t| t.namespace == "default")
        .filter_map(|t| t.idempotency_key.as_deref().map(|k| (k, t)))
        .collect();
    for key in &acked.submit_keys {
        if !by_key.contains_key(key.as_str()) {
            problems.push(format!("acknowledged submit with key {key:?} is lost"));
        }
    }
    let ids: HashSet<TaskId> = tasks.iter().map(|t| t.id).collect();
    for id in &acked.submit_ids {
        if !ids.contains(id) {
            problems.push(format!("acknowledged submit of task {id} is lost"));
        }
    }
    let mut histories: HashMap<TaskId, Vec<Event>> = HashMap::new();
    let acked_actions = acked
        .completions
        .iter()
        .map(|a| (a, EventKind::Completed))
        .chain(acked.handoffs.iter().map(|a| (a, EventKind::HandedOff)));
    for (&(task, epoch), kind) in acked_actions {
        let events = match histories.entry(task) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => match block_on(store.history(task)) {
                Ok(events) => slot.insert(events),
                Err(e) => {
                    problems.push(format!("history of {task} failed: {e}"));
                    continue;
                }
            },
        };
        let found = events
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                e.kind == kind && *i > 0 && events[*i - 1].after.epoch == epoch && e.from.is_some()
            })
            .count();
        match found {
            1 => {}
            0 => problems
                .push(format!("acknowledged {} of task {task} at epoch {epoch} is lost", kind.as_str())),
            n => {
                problems.push(format!("{} of task {task} at epoch {epoch} happened {n} times", kind.as_str()))
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    //! Goal: the checker accepts real histories and names each kind of
    //! corruption. Method: record a real history on the memory store, corrupt
    //! a copy one way per case (re-sealing the chain so only the intended
    //! problem shows), and check the problems through one `check` helper.

    use super::*;
    use crate::suite::{Case, complete, handoff_to, heartbeat};
    use crate::{MemoryStore, suite_rules};
    use baton_core::Hash;

    /// Submitted, Claimed (epoch 1), Heartbeat, HandedOff a -> b, Claimed (epoch 2), Completed.
    fn recorded() -> Vec<Event> {
        let cx = Case::<MemoryStore>::open(suite_rules());
        let id = cx.submit_to("a").id;
        let grant = cx.claim_one("alice", "a");
        cx.act(&grant, heartbeat(None));
        cx.act(&grant, handoff_to("b"));
        let bob = cx.claim_one("bob", "b");
        cx.act(&bob, complete());
        let events = cx.history(id);
        assert!(check_store(cx.store()).is_ok());
        events
    }

    /// Renumbers versions and revisions and re-seals the chain.
    fn resealed(mut events: Vec<Event>) -> Vec<Event> {
        let mut prev = Hash::ZERO;
        let mut before: Option<baton_core::Task> = None;
        for (i, e) in events.iter_mut().enumerate() {
            e.version = i as u64 + 1;
            e.after.revision = e.version;
            *e = e.clone().seal(prev, before.as_ref());
            prev = e.hash;
            before = Some(e.after.clone());
        }
        events
    }

    #[track_caller]
    fn check(events: Vec<Event>, expected: &str) {
        let problems = check_events(&events);
        if expected.is_empty() {
            assert_eq!(problems, Vec::<String>::new());
        } else {
            assert!(problems.iter().any(|p| p.contains(expected)), "expected {expected:?} in {problems:#?}");
        }
    }

    #[test]
    fn accepts_a_real_history() {
        check(recorded(), "");
    }

    #[test]
    fn names_each_corruption() {
        let events = recorded();
        type Corrupt = Box<dyn Fn(&mut Vec<Event>)>;
        let cases: Vec<(&str, Corrupt)> = vec![
            ("epoch went down", Box::new(|e| e[2].after.epoch = 0)),
            ("a claim moved the epoch", Box::new(|e| e[4].after.epoch = 7)),
            ("the first event must be a submit", Box::new(|e| e[0].kind = EventKind::Claimed)),
            ("follows the terminal event", Box::new(|e| e.push(e[5].clone()))),
            ("came from", Box::new(|e| e[3].from = e[0].from.clone())),
            ("says it moved to", Box::new(|e| e[1].to = e[0].to.clone())),
            ("changed the task's identity", Box::new(|e| e[3].after.created_at += 1)),
            ("updated at", Box::new(|e| e[2].at += 1)),
            ("is about task", Box::new(|e| e[2].task = TaskId(uuid::Uuid::now_v7()))),
            (
                "lease epoch",
                Box::new(|e| {
                    if let TaskState::Held { lease } = &mut e[2].after.state {
                        lease.epoch = 9;
                    }
                }),
            ),
            (
                // The handoff at (a, epoch 1) recorded twice.
                "finishes the visit to a at epoch 1 again",
                Box::new(|e| {
                    let again = e[3].clone();
                    e.insert(4, again);
                }),
            ),
        ];
        for (expected, corrupt) in cases {
            let mut copy = events.clone();
            corrupt(&mut copy);
            check(resealed(copy), expected);
        }
        // Without re-sealing, any edit breaks the chain.
        let mut edited = events.clone();
        edited[1].note = Some("edited".into());
        assert_eq!(
            baton_core::event::verify_chain(&edited),
            Err((1, "hash does not match the event's content"))
        );
    }

    #[test]
    fn acknowledged_work_must_be_there_once() {
        let cx = Case::<MemoryStore>::open(suite_rules());
        let kept = cx.submit(crate::suite::new_task("a", "{}").key("kept")).task.id;
        let grant = cx.claim_one("alice", "a");
        cx.act(&grant, handoff_to("b"));
        let bob = cx.claim_one("bob", "b");
        cx.act(&bob, complete());
        let good = Acknowledged {
            submit_keys: vec!["kept".into()],
            submit_ids: vec![kept],
            completions: vec![(kept, 2)],
            handoffs: vec![(kept, 1)],
        };
        assert_eq!(check_acknowledged(cx.store(), &good), Ok(()));
        let lost = Acknowledged {
            submit_keys: vec!["never".into()],
            submit_ids: vec![TaskId(uuid::Uuid::now_v7())],
            completions: vec![(kept, 1)],
            handoffs: vec![(kept, 2)],
        };
        let problems = check_acknowledged(cx.store(), &lost).expect_err("four losses");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        cx.finish();
    }

    /// A store that misreports one thing, to show `check_store` notices.
    struct Lying {
        inner: MemoryStore,
        lie: Lie,
    }

    use baton_core::store::{Delivery, Notice};

    #[derive(Clone, Copy)]
    enum Lie {
        RowDiffersFromLog,
        WrongHead,
        DroppedEvent,
        WrongNextDue,
        MissingHandoff,
    }

    impl Store for Lying {
        fn submit(&self, task: baton_core::NewTask) -> baton_core::StoreFuture<'_, baton_core::Submitted> {
            self.inner.submit(task)
        }
        fn claim(&self, r: baton_core::ClaimRequest) -> baton_core::StoreFuture<'_, Vec<baton_core::Grant>> {
            self.inner.claim(r)
        }
        fn act(&self, r: baton_core::ActRequest) -> baton_core::StoreFuture<'_, baton_core::ActOutcome> {
            self.inner.act(r)
        }
        fn cancel(&self, r: baton_core::CancelRequest) -> baton_core::StoreFuture<'_, Task> {
            self.inner.cancel(r)
        }
        fn fire_due(&self, limit: usize) -> baton_core::StoreFuture<'_, usize> {
            self.inner.fire_due(limit)
        }
        fn execute(
            &self,
            op: baton_core::Op,
            key: Option<baton_core::RequestKey>,
        ) -> baton_core::StoreFuture<'_, baton_core::OpOutcome> {
            self.inner.execute(op, key)
        }
        fn purge_requests(&self, limit: usize) -> baton_core::StoreFuture<'_, usize> {
            self.inner.purge_requests(limit)
        }
        fn archive(&self, r: baton_core::archive::ArchiveRequest) -> baton_core::StoreFuture<'_, usize> {
            self.inner.archive(r)
        }
        fn archived(
            &self,
            task: baton_core::TaskId,
        ) -> baton_core::StoreFuture<'_, Option<baton_core::archive::ArchivedTask>> {
            self.inner.archived(task)
        }
        fn archive_chunk(
            &self,
            after: Option<String>,
        ) -> baton_core::StoreFuture<'_, Option<baton_core::archive::ArchiveChunk>> {
            self.inner.archive_chunk(after)
        }
        fn workflow(
            &self,
            name: String,
            version: Option<u32>,
        ) -> baton_core::StoreFuture<'_, Option<baton_core::Workflow>> {
            self.inner.workflow(name, version)
        }
        fn workflows(&self) -> baton_core::StoreFuture<'_, Vec<baton_core::Workflow>> {
            self.inner.workflows()
        }
        fn overdue(&self, before: Millis, limit: usize) -> baton_core::StoreFuture<'_, Vec<Task>> {
            self.inner.overdue(before, limit)
        }
        fn notices(&self, after: u64, limit: usize) -> baton_core::StoreFuture<'_, Vec<(u64, Notice)>> {
            self.inner.notices(after, limit)
        }
        fn deliveries(&self, after: u64, limit: usize) -> baton_core::StoreFuture<'_, Vec<(u64, Delivery)>> {
            self.inner.deliveries(after, limit)
        }
        fn delivery_cursor(&self, webhook: String) -> baton_core::StoreFuture<'_, Option<u64>> {
            self.inner.delivery_cursor(webhook)
        }
        fn last_delivery(
            &self,
            webhook: String,
        ) -> baton_core::StoreFuture<'_, Option<baton_core::store::Delivery>> {
            self.inner.last_delivery(webhook)
        }
        fn task_notices(
            &self,
            task: TaskId,
            after: u64,
            limit: usize,
        ) -> baton_core::StoreFuture<'_, Vec<(u64, Notice)>> {
            self.inner.task_notices(task, after, limit)
        }
        fn push_configs(
            &self,
            task: Option<TaskId>,
            limit: usize,
        ) -> baton_core::StoreFuture<'_, Vec<baton_core::PushConfig>> {
            self.inner.push_configs(task, limit)
        }
        fn rollups(
            &self,
            from: Millis,
            to: Millis,
            limit: usize,
        ) -> baton_core::StoreFuture<'_, Vec<baton_core::metrics::Rollup>> {
            self.inner.rollups(from, to, limit)
        }
        fn anomalies(
            &self,
            after: u64,
            limit: usize,
            open_only: bool,
        ) -> baton_core::StoreFuture<'_, Vec<(u64, baton_core::metrics::Anomaly)>> {
            self.inner.anomalies(after, limit, open_only)
        }
        fn stage_gauges(&self, limit: usize) -> baton_core::StoreFuture<'_, Vec<baton_core::StageGauge>> {
            self.inner.stage_gauges(limit)
        }
        fn stage_gauges_recount(
            &self,
            limit: usize,
        ) -> baton_core::StoreFuture<'_, Vec<baton_core::StageGauge>> {
            self.inner.stage_gauges_recount(limit)
        }
        fn holds_duty(&self, duty: baton_core::SingletonDuty) -> baton_core::StoreFuture<'_, bool> {
            self.inner.holds_duty(duty)
        }
        fn get(&self, task: TaskId) -> baton_core::StoreFuture<'_, Option<baton_core::TaskView>> {
            let mut view = block_on(self.inner.get(task)).expect("memory get");
            if let Some(v) = &mut view {
                match self.lie {
                    Lie::RowDiffersFromLog => v.task.priority += 1,
                    Lie::WrongHead => v.head = Hash::ZERO,
                    _ => {}
                }
            }
            Box::pin(std::future::ready(Ok(view)))
        }
        fn list(&self, filter: TaskFilter) -> baton_core::StoreFuture<'_, baton_core::Page> {
            let mut page = block_on(self.inner.list(filter)).expect("memory list");
            if let Lie::RowDiffersFromLog = self.lie {
                page.tasks.iter_mut().for_each(|t| t.priority += 1);
            }
            Box::pin(std::future::ready(Ok(page)))
        }
        fn history(&self, task: TaskId) -> baton_core::StoreFuture<'_, Vec<Event>> {
            let mut events = block_on(self.inner.history(task)).expect("memory history");
            if let Lie::DroppedEvent = self.lie {
                events.remove(1);
            }
            Box::pin(std::future::ready(Ok(events)))
        }
        fn history_before(
            &self,
            task: TaskId,
            before: Option<u64>,
            limit: usize,
        ) -> baton_core::StoreFuture<'_, Vec<Event>> {
            self.inner.history_before(task, before, limit)
        }
        fn handoff(
            &self,
            id: baton_core::HandoffId,
        ) -> baton_core::StoreFuture<'_, Option<baton_core::Handoff>> {
            match self.lie {
                Lie::MissingHandoff => Box::pin(std::future::ready(Ok(None))),
                _ => self.inner.handoff(id),
            }
        }
        fn next_due(&self) -> baton_core::StoreFuture<'_, Option<Millis>> {
            match self.lie {
                Lie::WrongNextDue => Box::pin(std::future::ready(Ok(Some(0)))),
                _ => self.inner.next_due(),
            }
        }
    }

    #[test]
    fn check_store_notices_a_lying_store() {
        let cases = [
            (Lie::RowDiffersFromLog, "replaying the log does not reproduce the row"),
            (Lie::WrongHead, "head is"),
            (Lie::DroppedEvent, "hash chain broken at event 2"),
            (Lie::WrongNextDue, "next_due is Some(0)"),
            (Lie::MissingHandoff, "open handoff"),
        ];
        for (lie, expected) in cases {
            let clock = std::sync::Arc::new(crate::ManualClock::default());
            let store = Lying { inner: MemoryStore::new(clock, suite_rules()), lie };
            let id = block_on(store.submit(crate::suite::new_task("a", "{}"))).expect("submit").task.id;
            let request = baton_core::ClaimRequest {
                agent: baton_core::AgentId::new("w"),
                stages: vec![baton_core::StageName::new("a")],
                max: 1,
                lease_ms: None,
                only: None,
                credential: None,
            };
            let grant = block_on(store.claim(request)).expect("claim").remove(0);
            let handoff = baton_core::ActRequest {
                task: id,
                agent: baton_core::AgentId::new("w"),
                epoch: grant.epoch,
                action: handoff_to("b"),
                claim_next: None,
                caller: None,
            };
            block_on(store.act(handoff)).expect("handoff");
            let problems = check_store(&store).expect_err("a lie is noticed");
            assert!(problems.iter().any(|p| p.contains(expected)), "expected {expected:?} in {problems:#?}");
        }
    }
}
