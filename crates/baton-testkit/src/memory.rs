//! The in-memory store: `baton_core::Store` over a `Mutex<State>`, built on the
//! engine like every store. It owns the data structures (tasks by id with their
//! payloads and event chains, handoffs, alerts, the idempotency map, the
//! records of keyed requests), the
//! transaction (`MemTx`, an undo log over the state, so a refused or failed
//! operation leaves no trace), run by the batch kernel every store shares
//! (`baton_core::batch`, through `Batch`, whose savepoints are marks in the
//! undo log). It leaves
//! every decision to `baton_core::engine` and `decide`, and durability to the
//! real stores: nothing here survives the process. It is the reference that
//! the conformance suite holds the others to, and the store under the
//! benchmark row that measures Baton's HTTP server without storage, so what
//! a claim and a timer need is indexed as a database would (`Indexes`: ready
//! tasks per stage in claim order, live tasks by due time, leases per agent
//! and per stage), kept in step with every insert, update and rollback.

use baton_core::Workflow;
use baton_core::archive::{ArchiveChunk, ArchiveCommit, ArchiveRequest, ArchivedTask};
use baton_core::auth::{self, Directory, Principal, Role, TokenRecord};
use baton_core::batch::{self, Backend, Class, Halt, Savepoint};
use baton_core::engine::{self, Ctx, Fail, ReadyKey, Tx};
use baton_core::metrics::{Anomaly, Counts, Rollup, RollupKey};
use baton_core::store::{Delivery, NoListener, Notice, ReadyListener};
use baton_core::{
    ActOutcome, ActRequest, AgentId, Alert, CancelRequest, ClaimRequest, Clock, Credential, Error, Event,
    Grant, Handoff, HandoffId, Hash, Millis, NewTask, Op, OpOutcome, Page, PushConfig, RequestKey,
    RequestRecord, Rules, SingletonDuty, StageGauge, StageName, Store, StoreFuture, Submitted, Task,
    TaskFilter, TaskId, TaskState, TaskView,
};
use baton_core::{GaugeDeltas, StageCounts};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

mod archive;

/// How often an operation that met a revision conflict is run again before
/// the store gives up. Under one mutex a conflict means a bug, so this is small.
pub const CONFLICT_RETRIES_MAX: u32 = 3;

/// The in-memory store. Cheap to create; share it behind an `Arc`.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    rules: Rules,
    listener: Arc<dyn ReadyListener>,
    /// Principals and tokens, apart from the tasks: directory writes are
    /// single inserts and updates with nothing to roll back.
    directory: Mutex<Principals>,
}

/// Everything the store holds.
#[derive(Debug, Default, Clone)]
struct State {
    tasks: BTreeMap<TaskId, Row>,
    /// (namespace, idempotency key) -> task.
    keys: HashMap<(String, String), TaskId>,
    handoffs: HashMap<HandoffId, Handoff>,
    alerts: Vec<Alert>,
    /// (principal, key) -> the record of a keyed request.
    requests: HashMap<(String, String), RequestRecord>,
    /// Workflows by name, every version, oldest first.
    workflows: BTreeMap<String, Vec<Arc<Workflow>>>,
    /// The outbox: notices in sequence (number = index + 1).
    notices: Vec<Notice>,
    /// Webhook delivery attempts in order (id = index + 1).
    deliveries: Vec<Delivery>,
    /// Push notification configs by (task, id).
    push_configs: BTreeMap<(TaskId, String), PushConfig>,
    /// Metric rollups by (bucket, key).
    rollups: BTreeMap<(Millis, RollupKey), Counts>,
    /// Anomalies in order (id = index + 1).
    anomalies: Vec<Anomaly>,
    /// Live tasks counted per stage, kept by applying each committed
    /// operation's `Effects::gauges` (as the database stores do per batch).
    gauges: BTreeMap<StageName, StageCounts>,
    /// Failpoint: the write after this many more writes fails (see
    /// `MemoryStore::fail_write_after`).
    fail_after_writes: Option<usize>,
    /// What claims and timers look up, derived from the task rows.
    indexes: Indexes,
    /// Finished tasks moved out of `tasks` (`archive`).
    archive: archive::Archive,
}

/// The secondary indexes of the task rows, each derived from a task by
/// `Indexes::add` and taken out by `Indexes::remove` with the same row, so
/// they cannot drift from it.
#[derive(Debug, Default, Clone)]
struct Indexes {
    /// Ready tasks per stage in claim order: priority high first, then the
    /// earliest deadline, then the oldest id.
    ready: HashMap<StageName, BTreeSet<(Reverse<i32>, Millis, TaskId)>>,
    /// Live tasks by due time.
    due: BTreeSet<(Millis, TaskId)>,
    /// Leases held per agent.
    held_by_agent: HashMap<AgentId, u64>,
    /// Leases held per stage.
    held_in_stage: HashMap<StageName, u64>,
}

impl Indexes {
    fn add(&mut self, task: &Task) {
        if task.is_ready() {
            self.ready.entry(task.stage.clone()).or_default().insert(ready_key(task));
        }
        if let Some(at) = task.due_at() {
            self.due.insert((at, task.id));
        }
        if let Some(agent) = task.holder() {
            *self.held_by_agent.entry(agent.clone()).or_default() += 1;
            *self.held_in_stage.entry(task.stage.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, task: &Task) {
        if task.is_ready()
            && let Some(set) = self.ready.get_mut(&task.stage)
        {
            set.remove(&ready_key(task));
            if set.is_empty() {
                self.ready.remove(&task.stage);
            }
        }
        if let Some(at) = task.due_at() {
            self.due.remove(&(at, task.id));
        }
        if let Some(agent) = task.holder() {
            decrement(&mut self.held_by_agent, agent);
            decrement(&mut self.held_in_stage, &task.stage);
        }
    }

    /// Live tasks due at or before `at`, earliest first.
    fn due_by(&self, at: Millis) -> impl Iterator<Item = TaskId> + '_ {
        self.due.range(..=(at, TaskId(Uuid::max()))).map(|(_, id)| *id)
    }
}

fn ready_key(task: &Task) -> (Reverse<i32>, Millis, TaskId) {
    (Reverse(task.priority), task.deadline_rank(), task.id)
}

/// Counts one fewer under `key`, dropping the entry at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u64>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// One task: its row, its payload and its event chain (never empty).
#[derive(Debug, Clone)]
struct Row {
    task: Task,
    payload: String,
    events: Vec<Event>,
}

impl Row {
    fn head(&self) -> Hash {
        self.events.last().expect("a stored task has its first event").hash
    }
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>, rules: Rules) -> Self {
        if let Err(problem) = rules.validate() {
            panic!("invalid rules: {problem}");
        }
        Self {
            state: Mutex::new(State::default()),
            clock,
            rules,
            listener: Arc::new(NoListener),
            directory: Mutex::default(),
        }
    }

    /// Tells `listener` after each commit that made tasks claimable.
    pub fn with_listener(mut self, listener: Arc<dyn ReadyListener>) -> Self {
        self.listener = listener;
        self
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The alerts raised so far, oldest first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.lock().alerts.clone()
    }

    /// Failpoint for rollback tests: after `writes` more successful writes
    /// (inserts, updates, handoffs, alerts), the next write fails with a store
    /// error, once. The operation it belongs to must then leave no trace.
    pub fn fail_write_after(&self, writes: usize) {
        self.lock().fail_after_writes = Some(writes);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in a test or in the engine;
        // the test that caused it has failed already.
        self.state.lock().expect("memory store mutex poisoned by an earlier panic")
    }

    /// Runs one call in a transaction through the batch kernel, as the
    /// database stores run theirs: commit on success, roll back everything
    /// the call wrote on any failure, retry on a revision conflict, then tell
    /// the listener (after the lock is released) and answer.
    fn run(&self, call: Call<'_>) -> Result<Value, Error> {
        let committed = {
            let mut batch = Batch {
                state: self.lock(),
                directory: &self.directory,
                undo: Vec::new(),
                savepoints: Vec::new(),
                now: self.clock.now(),
                calls: PhantomData,
            };
            batch::run(&mut batch, std::slice::from_ref(&call), &self.rules)
        };
        let committed = match committed {
            Ok(committed) => committed,
            Err(halt) => {
                return Err(Error::Unavailable(format!("the memory store stopped a batch: {halt:?}")));
            }
        };
        if !committed.ready.is_empty() {
            self.listener.ready(&committed.ready);
        }
        if !committed.observed.is_empty() {
            self.listener.observed(&committed.observed);
        }
        committed.outcomes.into_iter().next().unwrap_or_else(|| Err(batch::not_committed()))
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }
}

fn answer<'a, T: Send + 'a>(result: Result<T, Error>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

/// One call of the memory store, as the batch kernel runs it.
enum Call<'a> {
    Submit(&'a NewTask),
    Claim(&'a ClaimRequest),
    Act(&'a ActRequest),
    Cancel(&'a CancelRequest),
    FireDue(usize),
    Execute(&'a Op, Option<&'a RequestKey>),
    PurgeRequests(usize),
    Archive(&'a ArchiveCommit),
}

/// What a call produced.
#[derive(Debug)]
enum Value {
    Submit(Submitted),
    Grants(Vec<Grant>),
    Act(ActOutcome),
    Task(Task),
    Count(usize),
    Outcome(OpOutcome),
}

impl Value {
    fn count(self) -> usize {
        match self {
            Value::Count(n) => n,
            other => unreachable!("a count answers a count: {other:?}"),
        }
    }
}

/// The store's transaction as the batch kernel drives it: the locked state
/// and the undo log of what the batch wrote, with the log's length at each
/// open savepoint. Savepoints cost nothing here, so every call runs in one
/// from the start (and a failpoint fires once, never in a rerun).
struct Batch<'s, 'a> {
    state: MutexGuard<'s, State>,
    directory: &'s Mutex<Principals>,
    undo: Vec<Undo>,
    savepoints: Vec<usize>,
    now: Millis,
    calls: PhantomData<Call<'a>>,
}

impl<'a> Backend for Batch<'_, 'a> {
    type Error = MemError;
    type Tx<'t>
        = MemTx<'t>
    where
        Self: 't;
    type Op = Call<'a>;
    type Value = Value;
    type Fatal = std::convert::Infallible;

    const CONFLICT_RETRIES_MAX: usize = CONFLICT_RETRIES_MAX as usize;
    const FAILURE_ABORTS: bool = false;
    const SAVEPOINTS_FIRST: bool = true;

    fn begin(&mut self, _calls: &[Call<'a>], _careful: bool) -> Result<Millis, Halt<Self::Fatal>> {
        Ok(self.now)
    }

    fn tx(&mut self, _call: &Call<'a>, _careful: bool) -> MemTx<'_> {
        let mut tx = MemTx::new(&mut self.state, &mut self.undo);
        tx.directory = Some(self.directory);
        tx
    }

    fn wrote(tx: &MemTx<'_>) -> bool {
        tx.undo.len() > tx.start
    }

    fn run(call: &Call<'a>, tx: &mut MemTx<'_>, cx: &mut Ctx<'_>) -> Result<Value, Fail<MemError>> {
        Ok(match call {
            Call::Submit(task) => Value::Submit(engine::submit(tx, task, cx)?),
            Call::Claim(request) => Value::Grants(engine::claim(tx, request, cx)?.grants),
            Call::Act(request) => Value::Act(engine::act(tx, request, cx)?),
            Call::Cancel(request) => Value::Task(engine::cancel(tx, request, cx)?),
            Call::FireDue(limit) => Value::Count(engine::fire_due(tx, *limit, cx)?),
            Call::Execute(op, key) => Value::Outcome(engine::keyed(tx, *key, op, cx)?),
            Call::PurgeRequests(limit) => Value::Count(engine::purge_requests(tx, *limit, cx)?),
            Call::Archive(commit) => Value::Count(engine::archive(tx, commit, cx)?),
        })
    }

    fn classify(&mut self, _error: &MemError) -> Class<Self::Fatal> {
        Class::Failed
    }

    fn savepoint(&mut self, step: Savepoint) -> Result<(), Halt<Self::Fatal>> {
        match step {
            Savepoint::Open => self.savepoints.push(self.undo.len()),
            Savepoint::Release => drop(self.savepoints.pop()),
            Savepoint::RollbackTo => {
                let mark = self.savepoints.last().copied().unwrap_or(0);
                self.state.undo_to(&mut self.undo, mark);
            }
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), Halt<Self::Fatal>> {
        self.state.undo_to(&mut self.undo, 0);
        self.savepoints.clear();
        Ok(())
    }

    fn commit(
        &mut self,
        _calls: &[Call<'a>],
        gauges: &GaugeDeltas,
        _careful: bool,
    ) -> Result<(), Halt<Self::Fatal>> {
        self.state.apply_gauges(gauges);
        self.undo.clear();
        Ok(())
    }
}

impl Store for MemoryStore {
    fn submit(&self, task: NewTask) -> StoreFuture<'_, Submitted> {
        answer(self.run(Call::Submit(&task)).map(|v| match v {
            Value::Submit(s) => s,
            other => unreachable!("a submit answers a submit: {other:?}"),
        }))
    }

    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, Vec<Grant>> {
        answer(self.run(Call::Claim(&request)).map(|v| match v {
            Value::Grants(grants) => grants,
            other => unreachable!("a claim answers grants: {other:?}"),
        }))
    }

    fn act(&self, request: ActRequest) -> StoreFuture<'_, ActOutcome> {
        answer(self.run(Call::Act(&request)).map(|v| match v {
            Value::Act(acted) => acted,
            other => unreachable!("an act answers an act: {other:?}"),
        }))
    }

    fn cancel(&self, request: CancelRequest) -> StoreFuture<'_, Task> {
        answer(self.run(Call::Cancel(&request)).map(|v| match v {
            Value::Task(task) => task,
            other => unreachable!("a cancel answers a task: {other:?}"),
        }))
    }

    fn fire_due(&self, limit: usize) -> StoreFuture<'_, usize> {
        answer(self.run(Call::FireDue(limit)).map(Value::count))
    }

    /// Under one mutex a keyed request is never seen half-done, so
    /// `request_in_progress` cannot arise here.
    fn execute(&self, op: Op, key: Option<RequestKey>) -> StoreFuture<'_, OpOutcome> {
        answer(self.run(Call::Execute(&op, key.as_ref())).map(|v| match v {
            Value::Outcome(outcome) => outcome,
            other => unreachable!("an operation answers its outcome: {other:?}"),
        }))
    }

    fn purge_requests(&self, limit: usize) -> StoreFuture<'_, usize> {
        answer(self.run(Call::PurgeRequests(limit)).map(Value::count))
    }

    fn get(&self, task: TaskId) -> StoreFuture<'_, Option<TaskView>> {
        answer(Ok(self.read(|s| {
            s.tasks.get(&task).map(|row| TaskView {
                task: row.task.clone(),
                payload: row.payload.clone(),
                head: row.head(),
            })
        })))
    }

    /// Pages by id. A `limit` of 0 means the largest page, `page_size_max`.
    fn list(&self, filter: TaskFilter) -> StoreFuture<'_, Page> {
        let page_max = self.rules.limits.page_size_max.max(1);
        let limit = if filter.limit == 0 { page_max } else { filter.limit.min(page_max) };
        answer(Ok(self.read(|s| {
            let lower = match filter.after {
                Some(after) => std::ops::Bound::Excluded(after),
                None => std::ops::Bound::Unbounded,
            };
            let mut matching = s
                .tasks
                .range((lower, std::ops::Bound::Unbounded))
                .map(|(_, row)| &row.task)
                .filter(|t| filter.stage.as_ref().is_none_or(|stage| &t.stage == stage))
                .filter(|t| filter.state.is_none_or(|state| t.state_name() == state))
                .filter(|t| filter.parent.is_none_or(|parent| t.parent == Some(parent)));
            let tasks: Vec<Task> = matching.by_ref().take(limit).cloned().collect();
            let more = matching.next().is_some();
            let next = if more { tasks.last().map(|t| t.id) } else { None };
            Page { tasks, next }
        })))
    }

    /// A task's events, from the archive once it was archived.
    fn history(&self, task: TaskId) -> StoreFuture<'_, Vec<Event>> {
        answer(self.read(|s| match s.tasks.get(&task) {
            Some(row) => Ok(row.events.clone()),
            None => archived_events(s, task),
        }))
    }

    fn history_before(&self, task: TaskId, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        answer(self.read(|s| {
            let events = match s.tasks.get(&task) {
                Some(row) => row.events.clone(),
                None => archived_events(s, task)?,
            };
            let before = before.unwrap_or(u64::MAX);
            Ok(events.into_iter().rev().filter(|e| e.version < before).take(limit).collect())
        }))
    }

    fn archive(&self, request: ArchiveRequest) -> StoreFuture<'_, usize> {
        let limit = request.limit.min(self.rules.limits.archive_batch_max);
        let records = self.read(|s| s.archive_candidates(&request, limit));
        if records.is_empty() {
            return answer(Ok(0));
        }
        let commit = baton_core::archive::commit_with_bytes(records);
        answer(self.run(Call::Archive(&commit)).map(Value::count))
    }

    fn archived(&self, task: TaskId) -> StoreFuture<'_, Option<ArchivedTask>> {
        answer(self.read(|s| s.archived(task)).map_err(Error::Unavailable))
    }

    fn archive_chunk(&self, after: Option<String>) -> StoreFuture<'_, Option<ArchiveChunk>> {
        answer(Ok(self.read(|s| s.archive_chunk(after.as_deref()))))
    }

    fn handoff(&self, id: HandoffId) -> StoreFuture<'_, Option<Handoff>> {
        answer(Ok(self.read(|s| s.handoffs.get(&id).cloned())))
    }

    fn next_due(&self) -> StoreFuture<'_, Option<Millis>> {
        answer(Ok(self.read(|s| s.indexes.due.first().map(|(at, _)| *at))))
    }

    fn workflow(&self, name: String, version: Option<u32>) -> StoreFuture<'_, Option<Workflow>> {
        answer(Ok(self.read(|s| find_workflow(s, &name, version).map(|w| Workflow::clone(&w)))))
    }

    fn workflows(&self) -> StoreFuture<'_, Vec<Workflow>> {
        answer(Ok(self
            .read(|s| s.workflows.values().filter_map(|v| v.last()).map(|w| Workflow::clone(w)).collect())))
    }

    fn overdue(&self, before: Millis, limit: usize) -> StoreFuture<'_, Vec<Task>> {
        answer(Ok(
            self.read(|s| s.indexes.due_by(before).take(limit).map(|id| s.tasks[&id].task.clone()).collect())
        ))
    }

    fn notices(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        answer(Ok(self.read(|s| numbered(&s.notices, after, limit))))
    }

    fn task_notices(&self, task: TaskId, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        answer(Ok(self.read(|s| {
            numbered(&s.notices, after, usize::MAX)
                .into_iter()
                .filter(|(_, n)| n.task() == Some(task))
                .take(limit)
                .collect()
        })))
    }

    fn deliveries(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Delivery)>> {
        answer(Ok(self.read(|s| numbered(&s.deliveries, after, limit))))
    }

    fn rollups(&self, from: Millis, to: Millis, limit: usize) -> StoreFuture<'_, Vec<Rollup>> {
        answer(Ok(self.read(|s| {
            s.rollups
                // The smallest key: `Edge` is the first variant, "" the least name.
                .range((from, RollupKey::Edge { from: StageName::new(""), to: StageName::new("") })..)
                .take_while(|((b, _), _)| *b < to)
                .take(limit)
                .map(|((bucket, key), counts)| Rollup {
                    bucket: *bucket,
                    key: key.clone(),
                    counts: counts.clone(),
                })
                .collect()
        })))
    }

    /// The counters, and the oldest ready task of each stage found by a scan
    /// of its tasks (the reference store has no index to seek).
    fn stage_gauges(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        answer(Ok(self.read(|s| {
            s.gauges
                .iter()
                .filter(|(_, c)| c.live > 0)
                .take(limit)
                .map(|(stage, c)| StageGauge {
                    stage: stage.clone(),
                    ready: u64::try_from(c.ready).unwrap_or(0),
                    held: u64::try_from(c.held).unwrap_or(0),
                    blocked: u64::try_from(c.blocked).unwrap_or(0),
                    oldest_ready_since: s
                        .tasks
                        .values()
                        .filter(|r| r.task.stage == *stage)
                        .filter_map(|r| r.task.index_columns().ready_since)
                        .min(),
                })
                .collect()
        })))
    }

    fn stage_gauges_recount(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        answer(Ok(self.read(|s| {
            let mut by_stage: BTreeMap<&StageName, StageGauge> = BTreeMap::new();
            for task in s.tasks.values().map(|r| &r.task).filter(|t| !t.is_terminal()) {
                let g = by_stage.entry(&task.stage).or_insert_with(|| StageGauge::empty(task.stage.clone()));
                match &task.state {
                    TaskState::Waiting { since, .. } if task.is_ready() => {
                        g.ready += 1;
                        g.oldest_ready_since = Some(g.oldest_ready_since.map_or(*since, |o| o.min(*since)));
                    }
                    TaskState::Held { .. } => g.held += 1,
                    TaskState::Blocked { .. } => g.blocked += 1,
                    _ => {}
                }
            }
            by_stage.into_values().take(limit).collect()
        })))
    }

    /// One process owns the memory store: it always holds every duty.
    fn holds_duty(&self, _duty: SingletonDuty) -> StoreFuture<'_, bool> {
        answer(Ok(true))
    }

    fn anomalies(&self, after: u64, limit: usize, open_only: bool) -> StoreFuture<'_, Vec<(u64, Anomaly)>> {
        answer(Ok(self.read(|s| {
            numbered(&s.anomalies, after, usize::MAX)
                .into_iter()
                .filter(|(_, a)| !open_only || a.acked.is_none())
                .take(limit)
                .collect()
        })))
    }

    fn delivery_cursor(&self, webhook: String) -> StoreFuture<'_, Option<u64>> {
        answer(Ok(self.read(|s| {
            s.deliveries
                .iter()
                .filter(|d| d.webhook == webhook && d.status.is_final())
                .map(|d| d.notice)
                .max()
        })))
    }

    fn last_delivery(&self, webhook: String) -> StoreFuture<'_, Option<Delivery>> {
        answer(Ok(self.read(|s| s.deliveries.iter().rev().find(|d| d.webhook == webhook).cloned())))
    }

    fn push_configs(&self, task: Option<TaskId>, limit: usize) -> StoreFuture<'_, Vec<PushConfig>> {
        answer(Ok(self.read(|s| {
            s.push_configs
                .values()
                .filter(|c| task.is_none_or(|t| c.task == t))
                .take(limit)
                .cloned()
                .collect()
        })))
    }
}

/// Items after sequence number `after` (numbers start at 1), at most `limit`.
/// The events of an archived task (none for a task never stored).
fn archived_events(s: &State, task: TaskId) -> Result<Vec<Event>, Error> {
    match s.archived(task).map_err(Error::Unavailable)? {
        Some(record) => record.parsed_events().map_err(|(_, why)| Error::Unavailable(why)),
        None => Ok(Vec::new()),
    }
}

fn numbered<T: Clone>(items: &[T], after: u64, limit: usize) -> Vec<(u64, T)> {
    let skip = usize::try_from(after).unwrap_or(usize::MAX);
    items.iter().enumerate().skip(skip).take(limit).map(|(i, x)| (i as u64 + 1, x.clone())).collect()
}

fn find_workflow(s: &State, name: &str, version: Option<u32>) -> Option<Arc<Workflow>> {
    let versions = s.workflows.get(name)?;
    match version {
        None => versions.last().cloned(),
        Some(v) => versions.iter().find(|w| w.version == v).cloned(),
    }
}

/// A store error of the memory store: only the failpoint and broken
/// preconditions of `Tx` produce one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemError(pub String);

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory store: {}", self.0)
    }
}

impl std::error::Error for MemError {}

/// One operation's view of the open transaction: writes go straight into
/// the state and are recorded in the batch's undo log (`undo`), which the
/// batch replays backwards to a savepoint or to its start
/// (`State::undo_to`) and clears when it commits.
pub struct MemTx<'s> {
    state: &'s mut State,
    /// The store's principals and tokens, for `credential_live` (none in
    /// the unit tests below, which never claim with a credential).
    directory: Option<&'s Mutex<Principals>>,
    undo: &'s mut Vec<Undo>,
    /// The log's length when this operation began: it wrote if it grew.
    start: usize,
}

/// The inverse of one write.
enum Undo {
    /// A task was inserted: remove it (and its idempotency key).
    Insert(TaskId),
    /// A task was updated: put the old row back and drop the new event.
    Update(Box<Task>),
    /// A handoff was put: restore what was there before.
    Handoff(HandoffId, Option<Handoff>),
    /// An alert was pushed: pop it.
    Alert,
    /// A request record was saved or purged: restore what was there before.
    Request((String, String), Option<Box<RequestRecord>>),
    /// A workflow version was stored: drop it.
    Workflow(String),
    Notice,
    Delivery,
    /// A push config was put or deleted: restore what was there before.
    PushConfig((TaskId, String), Option<Box<PushConfig>>),
    /// A rollup was put or purged: restore what was there before.
    Rollup((Millis, RollupKey), Option<Counts>),
    /// An anomaly was stored: pop it.
    AnomalyAdded,
    /// An anomaly was replaced: put the old one back.
    AnomalyUpdated(usize, Box<Anomaly>),
    /// Tasks were archived: put them back and forget their chunks.
    Archive(Box<archive::Removed>),
}

impl State {
    /// Adds a committed operation's counter deltas.
    fn apply_gauges(&mut self, deltas: &GaugeDeltas) {
        for (stage, delta) in deltas.iter() {
            self.gauges.entry(stage.clone()).or_default().apply(delta);
        }
    }

    /// Undoes the writes logged after `mark`, newest first.
    fn undo_to(&mut self, undo: &mut Vec<Undo>, mark: usize) {
        while undo.len() > mark {
            let Some(step) = undo.pop() else { break };
            match step {
                Undo::Insert(id) => {
                    let row = self.tasks.remove(&id).expect("an inserted task is present");
                    self.indexes.remove(&row.task);
                    if let Some(key) = row.task.idempotency_key {
                        self.keys.remove(&(row.task.namespace, key));
                    }
                }
                Undo::Update(old) => {
                    let row = self.tasks.get_mut(&old.id).expect("an updated task is present");
                    row.events.pop();
                    self.indexes.remove(&row.task);
                    self.indexes.add(&old);
                    row.task = *old;
                }
                Undo::Handoff(id, before) => match before {
                    Some(h) => {
                        self.handoffs.insert(id, h);
                    }
                    None => {
                        self.handoffs.remove(&id);
                    }
                },
                Undo::Alert => {
                    self.alerts.pop();
                }
                Undo::Workflow(name) => {
                    let versions = self.workflows.get_mut(&name).expect("a stored workflow is present");
                    versions.pop();
                    if versions.is_empty() {
                        self.workflows.remove(&name);
                    }
                }
                Undo::Notice => {
                    self.notices.pop();
                }
                Undo::Delivery => {
                    self.deliveries.pop();
                }
                Undo::PushConfig(key, before) => match before {
                    Some(config) => {
                        self.push_configs.insert(key, *config);
                    }
                    None => {
                        self.push_configs.remove(&key);
                    }
                },
                Undo::AnomalyAdded => {
                    self.anomalies.pop();
                }
                Undo::AnomalyUpdated(i, old) => self.anomalies[i] = *old,
                Undo::Archive(removed) => self.unarchive(*removed),
                Undo::Rollup(key, before) => match before {
                    Some(counts) => {
                        self.rollups.insert(key, counts);
                    }
                    None => {
                        self.rollups.remove(&key);
                    }
                },
                Undo::Request(key, before) => match before {
                    Some(record) => {
                        self.requests.insert(key, *record);
                    }
                    None => {
                        self.requests.remove(&key);
                    }
                },
            }
        }
    }
}

impl<'s> MemTx<'s> {
    fn new(state: &'s mut State, undo: &'s mut Vec<Undo>) -> Self {
        let start = undo.len();
        Self { state, directory: None, undo, start }
    }

    /// Consumes one unit of the failpoint's budget, failing when it runs out.
    fn write_allowed(&mut self) -> Result<(), MemError> {
        match self.state.fail_after_writes {
            Some(0) => {
                self.state.fail_after_writes = None;
                Err(MemError("injected write failure".into()))
            }
            Some(n) => {
                self.state.fail_after_writes = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Tx for MemTx<'_> {
    type Error = MemError;

    fn new_id(&mut self) -> Uuid {
        Uuid::now_v7()
    }

    fn load(&mut self, id: TaskId) -> Result<Option<(Task, Hash)>, MemError> {
        Ok(self.state.tasks.get(&id).map(|row| (row.task.clone(), row.head())))
    }

    fn load_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<(Task, Hash)>, MemError> {
        let id = self.state.keys.get(&(namespace.to_owned(), key.to_owned())).copied();
        match id {
            Some(id) => self.load(id),
            None => Ok(None),
        }
    }

    fn ready(&mut self, stage: &StageName, limit: usize) -> Result<Vec<ReadyKey>, MemError> {
        let Some(set) = self.state.indexes.ready.get(stage) else { return Ok(Vec::new()) };
        Ok(set
            .iter()
            .take(limit)
            .map(|&(Reverse(priority), deadline_rank, id)| ReadyKey { id, priority, deadline_rank })
            .collect())
    }

    fn due(&mut self, now: Millis, limit: usize) -> Result<Vec<TaskId>, MemError> {
        Ok(self.state.indexes.due_by(now).take(limit).collect())
    }

    fn leases_held(&mut self, agent: &AgentId) -> Result<u64, MemError> {
        Ok(self.state.indexes.held_by_agent.get(agent).copied().unwrap_or(0))
    }

    fn credential_live(&mut self, credential: &Credential) -> Result<bool, MemError> {
        let directory = self.directory.ok_or_else(|| MemError("no directory in this transaction".into()))?;
        let d = directory.lock().expect("memory directory mutex poisoned by an earlier panic");
        let token_live = d
            .tokens
            .get(&credential.token)
            .is_some_and(|t| t.principal == credential.principal && t.revoked_at.is_none());
        Ok(token_live && d.by_name.get(&credential.principal).is_some_and(Principal::is_live))
    }

    fn payload(&mut self, id: TaskId) -> Result<String, MemError> {
        let row = self.state.tasks.get(&id).ok_or_else(|| MemError(format!("task {id} has no payload")))?;
        Ok(row.payload.clone())
    }

    fn insert(&mut self, task: &Task, payload: &str, event: &Event) -> Result<(), MemError> {
        if self.state.tasks.contains_key(&task.id) {
            return Err(MemError(format!("task {} exists already", task.id)));
        }
        let key = task.idempotency_key.clone().map(|k| (task.namespace.clone(), k));
        if let Some(key) = &key
            && self.state.keys.contains_key(key)
        {
            return Err(MemError(format!("idempotency key {:?} is taken", key.1)));
        }
        self.write_allowed()?;
        if let Some(key) = key {
            self.state.keys.insert(key, task.id);
        }
        let row = Row { task: task.clone(), payload: payload.to_owned(), events: vec![event.clone()] };
        self.state.indexes.add(task);
        self.state.tasks.insert(task.id, row);
        self.undo.push(Undo::Insert(task.id));
        Ok(())
    }

    fn update(&mut self, task: &Task, event: &Event) -> Result<bool, MemError> {
        let Some(row) = self.state.tasks.get(&task.id) else { return Ok(false) };
        if row.task.revision + 1 != task.revision {
            return Ok(false);
        }
        self.write_allowed()?;
        let row = self.state.tasks.get_mut(&task.id).expect("checked above");
        let old = std::mem::replace(&mut row.task, task.clone());
        row.events.push(event.clone());
        self.state.indexes.remove(&old);
        self.state.indexes.add(task);
        self.undo.push(Undo::Update(Box::new(old)));
        Ok(true)
    }

    fn put_handoff(&mut self, handoff: &Handoff) -> Result<(), MemError> {
        self.write_allowed()?;
        let before = self.state.handoffs.insert(handoff.id, handoff.clone());
        self.undo.push(Undo::Handoff(handoff.id, before));
        Ok(())
    }

    fn put_alert(&mut self, alert: &Alert) -> Result<(), MemError> {
        self.write_allowed()?;
        self.state.alerts.push(alert.clone());
        self.undo.push(Undo::Alert);
        Ok(())
    }

    fn put_notice(&mut self, notice: &Notice) -> Result<(), MemError> {
        self.write_allowed()?;
        self.state.notices.push(notice.clone());
        self.undo.push(Undo::Notice);
        Ok(())
    }

    fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), MemError> {
        self.write_allowed()?;
        self.state.deliveries.push(delivery.clone());
        self.undo.push(Undo::Delivery);
        Ok(())
    }

    fn put_push_config(&mut self, config: &PushConfig) -> Result<(), MemError> {
        self.write_allowed()?;
        let key = (config.task, config.id.clone());
        let before = self.state.push_configs.insert(key.clone(), config.clone());
        self.undo.push(Undo::PushConfig(key, before.map(Box::new)));
        Ok(())
    }

    fn delete_push_config(&mut self, task: TaskId, id: &str) -> Result<(), MemError> {
        self.write_allowed()?;
        let key = (task, id.to_owned());
        let before = self.state.push_configs.remove(&key);
        self.undo.push(Undo::PushConfig(key, before.map(Box::new)));
        Ok(())
    }

    fn workflow(&mut self, name: &str, version: Option<u32>) -> Result<Option<Arc<Workflow>>, MemError> {
        Ok(find_workflow(self.state, name, version))
    }

    fn put_workflow(&mut self, workflow: &Workflow) -> Result<(), MemError> {
        self.write_allowed()?;
        self.state.workflows.entry(workflow.name.clone()).or_default().push(Arc::new(workflow.clone()));
        self.undo.push(Undo::Workflow(workflow.name.clone()));
        Ok(())
    }

    fn rollup(&mut self, bucket: Millis, key: &RollupKey) -> Result<Option<Counts>, MemError> {
        Ok(self.state.rollups.get(&(bucket, key.clone())).cloned())
    }

    fn put_rollup(&mut self, rollup: &Rollup) -> Result<(), MemError> {
        self.write_allowed()?;
        let key = (rollup.bucket, rollup.key.clone());
        let before = self.state.rollups.insert(key.clone(), rollup.counts.clone());
        self.undo.push(Undo::Rollup(key, before));
        Ok(())
    }

    fn purge_rollups(&mut self, before: Millis, limit: usize) -> Result<usize, MemError> {
        let old: Vec<(Millis, RollupKey)> =
            self.state.rollups.keys().filter(|(b, _)| *b < before).take(limit).cloned().collect();
        for key in &old {
            self.write_allowed()?;
            let counts = self.state.rollups.remove(key);
            self.undo.push(Undo::Rollup(key.clone(), counts));
        }
        Ok(old.len())
    }

    fn put_anomaly(&mut self, anomaly: &Anomaly) -> Result<u64, MemError> {
        self.write_allowed()?;
        self.state.anomalies.push(anomaly.clone());
        self.undo.push(Undo::AnomalyAdded);
        Ok(self.state.anomalies.len() as u64)
    }

    fn anomaly(&mut self, id: u64) -> Result<Option<Anomaly>, MemError> {
        let i = usize::try_from(id).unwrap_or(usize::MAX);
        Ok(i.checked_sub(1).and_then(|i| self.state.anomalies.get(i)).cloned())
    }

    fn update_anomaly(&mut self, id: u64, anomaly: &Anomaly) -> Result<(), MemError> {
        self.write_allowed()?;
        let i = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .filter(|i| *i < self.state.anomalies.len());
        let i = i.ok_or_else(|| MemError(format!("no anomaly {id}")))?;
        let old = std::mem::replace(&mut self.state.anomalies[i], anomaly.clone());
        self.undo.push(Undo::AnomalyUpdated(i, Box::new(old)));
        Ok(())
    }

    fn held_in_stage(&mut self, stage: &StageName) -> Result<u64, MemError> {
        Ok(self.state.indexes.held_in_stage.get(stage).copied().unwrap_or(0))
    }

    fn load_request(&mut self, principal: &str, key: &str) -> Result<Option<RequestRecord>, MemError> {
        Ok(self.state.requests.get(&(principal.to_owned(), key.to_owned())).cloned())
    }

    fn save_request(&mut self, key: &RequestKey, outcome: &OpOutcome, at: Millis) -> Result<(), MemError> {
        self.write_allowed()?;
        let id = (key.principal.clone(), key.key.clone());
        let record = RequestRecord { fingerprint: key.fingerprint, outcome: outcome.clone(), at };
        let before = self.state.requests.insert(id.clone(), record);
        self.undo.push(Undo::Request(id, before.map(Box::new)));
        Ok(())
    }

    fn purge_requests(&mut self, at_or_before: Millis, limit: usize) -> Result<usize, MemError> {
        let mut expired: Vec<(Millis, (String, String))> = self
            .state
            .requests
            .iter()
            .filter(|(_, r)| r.at <= at_or_before)
            .map(|(id, r)| (r.at, id.clone()))
            .collect();
        expired.sort();
        expired.truncate(limit);
        if !expired.is_empty() {
            self.write_allowed()?;
        }
        for (_, id) in &expired {
            let before = self.state.requests.remove(id);
            self.undo.push(Undo::Request(id.clone(), before.map(Box::new)));
        }
        Ok(expired.len())
    }

    fn archived_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<TaskId>, MemError> {
        Ok(self.key_archived(namespace, key))
    }

    fn archive(&mut self, commit: &ArchiveCommit) -> Result<bool, MemError> {
        self.archive_commit(commit)
    }
}

// ---------------------------------------------------------------- directory

/// The memory store's principals and tokens (`baton_core::auth::Directory`):
/// the same refusals as every store, decided by `baton_core::auth` (a taken
/// name, a token for a principal that does not exist or is revoked, the last
/// live admin) under the directory's one mutex.
#[derive(Debug, Default)]
struct Principals {
    by_name: BTreeMap<String, Principal>,
    tokens: BTreeMap<String, TokenRecord>,
}

impl MemoryStore {
    fn principals_lock(&self) -> MutexGuard<'_, Principals> {
        self.directory.lock().expect("memory directory mutex poisoned by an earlier panic")
    }
}

impl Directory for MemoryStore {
    fn add_principal(&self, principal: Principal) -> StoreFuture<'_, ()> {
        let mut d = self.principals_lock();
        if let Err(refused) = auth::check_add_principal(d.by_name.get(&principal.name), &principal) {
            return answer(Err(refused.into()));
        }
        d.by_name.insert(principal.name.clone(), principal);
        answer(Ok(()))
    }

    fn principal(&self, name: &str) -> StoreFuture<'_, Option<Principal>> {
        answer(Ok(self.principals_lock().by_name.get(name).cloned()))
    }

    fn principals(&self) -> StoreFuture<'_, Vec<Principal>> {
        answer(Ok(self.principals_lock().by_name.values().cloned().collect()))
    }

    fn revoke_principal(&self, name: &str, at: Millis) -> StoreFuture<'_, bool> {
        let mut d = self.principals_lock();
        let live_admins = d.by_name.values().filter(|p| p.role == Role::Admin && p.is_live()).count();
        match auth::check_revoke_principal(d.by_name.get(name), live_admins as u64) {
            Ok(true) => {}
            Ok(false) => return answer(Ok(false)),
            Err(refused) => return answer(Err(refused.into())),
        }
        if let Some(principal) = d.by_name.get_mut(name) {
            principal.revoked_at.get_or_insert(at);
        }
        for token in d.tokens.values_mut().filter(|t| t.principal == name) {
            token.revoked_at.get_or_insert(at);
        }
        answer(Ok(true))
    }

    fn add_token(&self, token: TokenRecord) -> StoreFuture<'_, ()> {
        let mut d = self.principals_lock();
        let id_taken = d.tokens.contains_key(&token.id);
        if let Err(refused) = auth::check_add_token(d.by_name.get(&token.principal), id_taken, &token) {
            return answer(Err(refused.into()));
        }
        d.tokens.insert(token.id.clone(), token);
        answer(Ok(()))
    }

    fn token(&self, id: &str) -> StoreFuture<'_, Option<TokenRecord>> {
        answer(Ok(self.principals_lock().tokens.get(id).cloned()))
    }

    /// Oldest first, as every store lists them.
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>> {
        let mut tokens: Vec<TokenRecord> = self.principals_lock().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        answer(Ok(tokens))
    }

    fn revoke_token(&self, id: &str, at: Millis) -> StoreFuture<'_, bool> {
        let mut d = self.principals_lock();
        let Some(token) = d.tokens.get_mut(id) else { return answer(Ok(false)) };
        token.revoked_at.get_or_insert(at);
        answer(Ok(true))
    }
}

#[cfg(test)]
mod tests {
    //! The transaction's guard and undo log, below the engine: what the
    //! conformance suite cannot reach through one mutex.

    use super::*;
    use baton_core::engine::Rules;

    fn submitted(tx: &mut MemTx<'_>) -> (Task, Event) {
        let new = NewTask::new("a", "{}").key("k");
        let change = baton_core::decide::submit(TaskId(tx.new_id()), &new, &Rules::default(), 10)
            .expect("a valid submit");
        let event = change.event.seal(Hash::ZERO, None);
        tx.insert(&change.task, &new.payload, &event).expect("insert");
        (change.task, event)
    }

    #[test]
    fn update_is_guarded_by_revision_and_rollback_undoes_everything() {
        let mut state = State::default();
        let mut log = Vec::new();
        let mut tx = MemTx::new(&mut state, &mut log);
        let (task, first) = submitted(&mut tx);
        log.clear(); // committed

        let mut tx = MemTx::new(&mut state, &mut log);
        let bumped = Task { revision: 2, updated_at: 20, ..task.clone() };
        let event =
            Event { version: 2, after: bumped.clone(), ..first.clone() }.seal(first.hash, Some(&task));
        let skipped = Task { revision: 3, ..bumped.clone() };
        assert!(!tx.update(&skipped, &event).expect("no store error"), "revision 3 does not follow 1");
        assert!(tx.update(&bumped, &event).expect("no store error"));
        assert!(!tx.update(&bumped, &event).expect("no store error"), "revision 2 is taken now");
        let handoff = Handoff {
            id: HandoffId(Uuid::now_v7()),
            task: task.id,
            from_stage: StageName::new("a"),
            to_stage: StageName::new("b"),
            from_agent: AgentId::new("w"),
            at: 20,
            outcome: baton_core::HandoffOutcome::Pending,
        };
        tx.put_handoff(&handoff).expect("put");
        tx.put_alert(&Alert {
            task: task.id,
            stage: StageName::new("inbox"),
            from: None,
            at: 20,
            message: "m".into(),
        })
        .expect("put");
        state.undo_to(&mut log, 0); // not committed: rolled back

        let row = &state.tasks[&task.id];
        assert_eq!((&row.task, row.events.len()), (&task, 1));
        assert!(state.handoffs.is_empty() && state.alerts.is_empty());
        assert_eq!(state.keys.len(), 1);

        // An id and an idempotency key are inserted once; a refused insert writes nothing.
        let mut tx = MemTx::new(&mut state, &mut log);
        assert!(tx.insert(&task, "{}", &first).is_err(), "the id is taken");
        let other = Task { id: TaskId(Uuid::now_v7()), ..task.clone() };
        assert!(tx.insert(&other, "{}", &first).is_err(), "the key is taken");
        assert!(tx.undo.is_empty());
        assert_eq!(state.tasks.len(), 1);
    }
}
