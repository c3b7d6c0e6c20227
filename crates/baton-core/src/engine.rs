//! The engine runs one operation inside a store's transaction: load, decide,
//! save if unchanged, with the event row in the same transaction. Stores
//! implement `Tx` (plain reads and guarded writes, no business rules) and call
//! these functions; they commit, roll back a refused operation, and answer.
//! The engine also follows a change's consequences inside the transaction: a
//! child's end settles its parent's join, spawned children are submitted, and
//! claim-next leases the agent's next tasks after its action.
//! `keyed` makes any operation idempotent under a request key: the operation
//! and the record of its outcome commit in the same transaction, so no crash
//! can separate an effect from the answer a repeat will get.

use crate::archive::ArchiveCommit;
use crate::command::{Action, Command, NewTask};
use crate::decide::{Change, Env, decide_in, submit_in as decide_submit};
use crate::event::{Event, EventKind, Hash};
use crate::gauge::GaugeDeltas;
use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::limits::Limits;
use crate::metrics::{Anomaly, Counts, Observation, Rollup, RollupKey};
use crate::policy::Policies;
use crate::rejection::Rejection;
use crate::store::{
    ActOutcome, ActRequest, Alert, Applied, CancelRequest, ClaimRequest, Claimed, CommentRequest, Credential,
    Delivery, Grant, Handoff, HandoffOutcome, Notice, Op, OpOutcome, PushConfig, RequestKey, RequestRecord,
    Skipped, Submitted,
};
use crate::task::{Task, TaskState};
use crate::workflow::Workflow;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The rules an engine applies: stage policies and limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub policies: Policies,
    pub limits: Limits,
}

impl Rules {
    /// Checks that the policies fit the limits, so no operation can fail later
    /// for a reason the operator set up. Stores call it when they open.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let named = self.policies.stages.iter().map(|(name, p)| (name.as_str(), p));
        for (name, p) in std::iter::once(("(default)", &self.policies.default)).chain(named) {
            if p.lease_ms < l.lease_ttl_ms_min || p.lease_ms > l.lease_ttl_ms_max {
                return Err(format!(
                    "stage {name}: lease {} ms is outside the lease limits {}..={} ms",
                    p.lease_ms, l.lease_ttl_ms_min, l.lease_ttl_ms_max
                ));
            }
            if p.accept_within_ms <= 0 {
                return Err(format!("stage {name}: accept_within must be positive"));
            }
            if p.max_attempts == 0 {
                return Err(format!("stage {name}: max_attempts must be at least 1"));
            }
        }
        if l.request_key_ttl_ms <= 0 {
            return Err("request_key_ttl_ms must be positive".to_owned());
        }
        Ok(())
    }
}

/// A ready task's sort key: priority (higher first), then deadline, then age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyKey {
    pub id: TaskId,
    pub priority: i32,
    pub deadline_rank: Millis,
}

/// One open transaction of a store. Reads see the transaction's own writes.
pub trait Tx {
    type Error: std::fmt::Debug;
    /// A fresh UUIDv7.
    fn new_id(&mut self) -> Uuid;
    fn load(&mut self, id: TaskId) -> Result<Option<(Task, Hash)>, Self::Error>;
    fn load_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<(Task, Hash)>, Self::Error>;
    /// Up to `limit` ready tasks of a stage, best first.
    fn ready(&mut self, stage: &StageName, limit: usize) -> Result<Vec<ReadyKey>, Self::Error>;
    /// Up to `limit` live tasks with `due_at <= now`, earliest first.
    fn due(&mut self, now: Millis, limit: usize) -> Result<Vec<TaskId>, Self::Error>;
    /// How many tasks this agent holds now.
    fn leases_held(&mut self, agent: &AgentId) -> Result<u64, Self::Error>;
    /// Whether this token and its principal exist and neither is revoked,
    /// as this transaction sees them. Asked after `leases_held` for the same
    /// agent, so a store that locks the agent there (PostgreSQL, whose
    /// revocations take the same lock) orders it against revocations.
    fn credential_live(&mut self, credential: &Credential) -> Result<bool, Self::Error>;
    /// The payload of an existing task (payloads never change). Asked for
    /// each task a claim grants, inside the claim's transaction.
    fn payload(&mut self, id: TaskId) -> Result<String, Self::Error>;
    /// Writes a new task, its payload and its first event.
    fn insert(&mut self, task: &Task, payload: &str, event: &Event) -> Result<(), Self::Error>;
    /// Saves a task if its stored revision is still `task.revision - 1`, with
    /// its event. Returns false, writing nothing, if the revision moved.
    fn update(&mut self, task: &Task, event: &Event) -> Result<bool, Self::Error>;
    fn put_handoff(&mut self, handoff: &Handoff) -> Result<(), Self::Error>;
    fn put_alert(&mut self, alert: &Alert) -> Result<(), Self::Error>;
    /// Appends a notice to the outbox webhooks deliver from; the store gives
    /// it the next sequence number.
    fn put_notice(&mut self, notice: &Notice) -> Result<(), Self::Error>;
    /// Records one webhook delivery attempt.
    fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), Self::Error>;
    /// Saves a push config, replacing the one with the same task and id.
    fn put_push_config(&mut self, config: &PushConfig) -> Result<(), Self::Error>;
    /// Deletes the push config `id` of `task` if there is one.
    fn delete_push_config(&mut self, task: TaskId, id: &str) -> Result<(), Self::Error>;
    /// A workflow at `version`, or (`None`) its latest version. Versions never
    /// change once stored, so stores may cache them.
    fn workflow(&mut self, name: &str, version: Option<u32>) -> Result<Option<Arc<Workflow>>, Self::Error>;
    /// Stores a new workflow version (the engine numbered it).
    fn put_workflow(&mut self, workflow: &Workflow) -> Result<(), Self::Error>;
    /// How many tasks are held at `stage` now (for stage capacity).
    fn held_in_stage(&mut self, stage: &StageName) -> Result<u64, Self::Error>;
    /// The stored counters of one rollup key in one bucket.
    fn rollup(&mut self, bucket: Millis, key: &RollupKey) -> Result<Option<Counts>, Self::Error>;
    /// Saves (inserts or replaces) one rollup.
    fn put_rollup(&mut self, rollup: &Rollup) -> Result<(), Self::Error>;
    /// Deletes up to `limit` rollups of buckets before `before`; returns how many.
    fn purge_rollups(&mut self, before: Millis, limit: usize) -> Result<usize, Self::Error>;
    /// Stores a new anomaly; the store numbers it.
    /// Stores a new anomaly; returns its id (1, 2, ... in the order raised).
    fn put_anomaly(&mut self, anomaly: &Anomaly) -> Result<u64, Self::Error>;
    /// Anomaly `id`, if it exists.
    fn anomaly(&mut self, id: u64) -> Result<Option<Anomaly>, Self::Error>;
    /// Replaces anomaly `id` (to record its acknowledgement).
    fn update_anomaly(&mut self, id: u64, anomaly: &Anomaly) -> Result<(), Self::Error>;
    /// The record of a keyed request by (principal, key), expired or not: the
    /// engine judges its age against `request_key_ttl_ms`.
    fn load_request(&mut self, principal: &str, key: &str) -> Result<Option<RequestRecord>, Self::Error>;
    /// Saves the record of a keyed request made at `at`, replacing the
    /// (expired) record of the same principal and key if there is one.
    fn save_request(&mut self, key: &RequestKey, outcome: &OpOutcome, at: Millis) -> Result<(), Self::Error>;
    /// Deletes up to `limit` request records saved at or before `at_or_before`,
    /// oldest first; returns how many.
    fn purge_requests(&mut self, at_or_before: Millis, limit: usize) -> Result<usize, Self::Error>;
    /// The archived task that holds this idempotency key, if one does.
    fn archived_by_key(&mut self, namespace: &str, key: &str) -> Result<Option<TaskId>, Self::Error>;
    /// Deletes the commit's tasks from the live store (row, payload, events,
    /// handoffs, alerts, notices and their delivery records, push configs)
    /// and indexes each under its chunk, storing the chunk's bytes when it
    /// carries them. Returns false, having written nothing that stays, when
    /// a row is gone, is not at its named revision, or still has children.
    fn archive(&mut self, commit: &ArchiveCommit) -> Result<bool, Self::Error>;
}

/// Why an operation did not go through. The store rolls back its part.
#[derive(Debug)]
pub enum Fail<E> {
    Rejected(Rejection),
    /// A guarded save found the row changed: retry the operation.
    Conflict,
    Store(E),
}

impl<E> From<Rejection> for Fail<E> {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

/// What the transaction did besides its answer: stages with new ready work,
/// and what each change tells the metrics, which stores pass to their
/// listener after the commit; and what each saved row did to the per-stage
/// counters, which stores sum over the operations they keep and apply in
/// the same transaction, before COMMIT (`crate::gauge`). All only for
/// operations they kept.
#[derive(Debug, Default)]
pub struct Effects {
    pub ready: Vec<StageName>,
    pub observed: Vec<Observation>,
    pub gauges: GaugeDeltas,
}

impl Effects {
    fn note_ready(&mut self, task: &Task) {
        if task.is_ready() && !self.ready.contains(&task.stage) {
            self.ready.push(task.stage.clone());
        }
    }
}

/// Everything an engine call needs besides the transaction.
pub struct Ctx<'a> {
    pub rules: &'a Rules,
    pub now: Millis,
    pub effects: &'a mut Effects,
}

type Res<T, E> = Result<T, Fail<E>>;

fn st<T, E>(r: Result<T, E>) -> Res<T, E> {
    r.map_err(Fail::Store)
}

/// Runs `op` under an optional request key. A live record of the key (saved
/// less than `request_key_ttl_ms` ago) with the same fingerprint returns its
/// stored outcome and changes nothing; with another fingerprint the call is
/// refused `idempotency_conflict`. Otherwise the operation runs and its
/// outcome is saved in the same transaction, so the effect and the answer a
/// repeat gets commit together or not at all.
///
/// Two outcomes are not recorded, because they changed nothing and a retry
/// should be judged afresh: refusals (the store rolls the whole call back),
/// and claims that leased nothing (a long-polled claim calls the store again
/// with the same key until work arrives).
pub fn keyed<T: Tx>(
    tx: &mut T,
    key: Option<&RequestKey>,
    op: &Op,
    cx: &mut Ctx<'_>,
) -> Res<OpOutcome, T::Error> {
    let Some(key) = key else { return run(tx, op, cx) };
    let limits = &cx.rules.limits;
    if key.key.is_empty() {
        return Err(Rejection::invalid("Idempotency-Key", "must not be empty").into());
    }
    if key.key.len() > limits.idempotency_key_bytes_max {
        return Err(Rejection::limit(
            "idempotency_key_bytes_max",
            limits.idempotency_key_bytes_max,
            "use a shorter idempotency key",
        )
        .into());
    }
    if let Some(record) = st(tx.load_request(&key.principal, &key.key))?
        && cx.now.saturating_sub(record.at) < limits.request_key_ttl_ms
    {
        if record.fingerprint == key.fingerprint {
            let mut outcome = record.outcome;
            fill_payloads(tx, &mut outcome)?;
            return Ok(outcome);
        }
        return Err(Rejection::IdempotencyConflict { key: key.key.clone() }.into());
    }
    let outcome = run(tx, op, cx)?;
    let leased_nothing = matches!(&outcome, OpOutcome::Claim(claimed) if claimed.grants.is_empty());
    if !leased_nothing {
        st(tx.save_request(key, &outcome, cx.now))?;
    }
    Ok(outcome)
}

/// Gives the grants of a replayed outcome their payloads when its record
/// was saved before grants carried them (payloads never change).
fn fill_payloads<T: Tx>(tx: &mut T, outcome: &mut OpOutcome) -> Res<(), T::Error> {
    let grants = match outcome {
        OpOutcome::Claim(claimed) => &mut claimed.grants,
        OpOutcome::Act(acted) => &mut acted.next,
        _ => return Ok(()),
    };
    for grant in grants.iter_mut().filter(|g| g.payload.is_empty()) {
        grant.payload = st(tx.payload(grant.task.id))?;
    }
    Ok(())
}

/// Runs one operation, without a key.
pub fn run<T: Tx>(tx: &mut T, op: &Op, cx: &mut Ctx<'_>) -> Res<OpOutcome, T::Error> {
    Ok(match op {
        Op::Submit(new) => OpOutcome::Submit(submit(tx, new, cx)?),
        Op::Claim(req) => OpOutcome::Claim(claim(tx, req, cx)?),
        Op::Act(req) => OpOutcome::Act(act(tx, req, cx)?),
        Op::Cancel(req) => OpOutcome::Cancel(cancel(tx, req, cx)?),
        Op::Comment(req) => OpOutcome::Comment(comment(tx, req, cx)?),
        Op::ApplyWorkflow(wf) => OpOutcome::ApplyWorkflow(apply_workflow(tx, wf, cx)?),
        Op::RecordDelivery(d) => {
            st(tx.put_delivery(d))?;
            OpOutcome::RecordDelivery
        }
        Op::MergeRollups(rollups) => {
            merge_rollups(tx, rollups, cx)?;
            OpOutcome::MergeRollups
        }
        Op::RaiseAnomaly(anomaly) => {
            let id = st(tx.put_anomaly(anomaly))?;
            st(tx.put_notice(&Notice::Anomaly { id, anomaly: anomaly.clone() }))?;
            OpOutcome::RaiseAnomaly
        }
        Op::PutPushConfig(config) => {
            st(tx.load(config.task))?.ok_or(Rejection::TaskNotFound { task: config.task })?;
            st(tx.put_push_config(config))?;
            OpOutcome::PutPushConfig
        }
        Op::DeletePushConfig { task, id } => {
            st(tx.delete_push_config(*task, id))?;
            OpOutcome::DeletePushConfig
        }
        Op::AckAnomaly { id, by } => {
            let mut anomaly = st(tx.anomaly(*id))?.ok_or_else(|| {
                Rejection::invalid("id", format!("no anomaly {id}: list them with `baton alerts`"))
            })?;
            if anomaly.acked.is_none() {
                anomaly.acked = Some((by.clone(), cx.now));
                st(tx.update_anomaly(*id, &anomaly))?;
            }
            OpOutcome::AckAnomaly(anomaly)
        }
        Op::PurgeRollups { before } => {
            OpOutcome::PurgeRollups(st(tx.purge_rollups(*before, cx.rules.limits.sweep_batch_max))?)
        }
        Op::Archive(commit) => OpOutcome::Archive(archive(tx, commit, cx)?),
    })
}

/// The second half of an archive pass: deletes the commit's tasks from the
/// live store and indexes them, all or nothing (at most `archive_batch_max`).
/// A task that changed since the pass read it refuses the whole commit; the
/// store drops what it wrote for it and the next pass reads afresh.
pub fn archive<T: Tx>(tx: &mut T, commit: &ArchiveCommit, cx: &mut Ctx<'_>) -> Res<usize, T::Error> {
    let n = commit.tasks();
    if n > cx.rules.limits.archive_batch_max {
        return Err(Rejection::limit(
            "archive_batch_max",
            cx.rules.limits.archive_batch_max,
            "archive fewer tasks per pass",
        )
        .into());
    }
    if commit.chunks.iter().any(|c| !crate::archive::is_chunk_name(&c.name) || c.tasks.is_empty()) {
        return Err(Rejection::invalid("archive", "a chunk has a malformed name or no task").into());
    }
    if !st(tx.archive(commit))? {
        return Err(Rejection::invalid(
            "archive",
            "a task changed, or gained a child, after the pass read it; the next pass reads it again",
        )
        .into());
    }
    Ok(n)
}

/// Stores `wf` as the next version of its name, unless the latest version
/// already has the same definition. Checks the graph and the policies first.
pub fn apply_workflow<T: Tx>(tx: &mut T, wf: &Workflow, cx: &mut Ctx<'_>) -> Res<Applied, T::Error> {
    if let Some(first) = wf.check(&cx.rules.policies).into_iter().next() {
        let field = match &first.stage {
            Some(stage) => format!("stages.{stage}.{}", first.field),
            None => first.field.to_owned(),
        };
        return Err(Rejection::invalid(&field, first.message).into());
    }
    if wf.stages.len() > cx.rules.limits.workflows_max {
        return Err(
            Rejection::limit("workflows_max", cx.rules.limits.workflows_max, "declare fewer stages").into()
        );
    }
    let mut probe = Rules { policies: cx.rules.policies.clone(), limits: cx.rules.limits.clone() };
    probe.policies.stages = wf.stages.iter().map(|(n, s)| (n.clone(), s.policy.clone())).collect();
    probe.validate().map_err(|problem| Rejection::invalid("stages", problem))?;
    let latest = st(tx.workflow(&wf.name, None))?;
    if let Some(latest) = &latest
        && latest.same_definition(wf)
    {
        return Ok(Applied { workflow: Workflow::clone(latest), created: false });
    }
    let version = latest.map_or(1, |l| l.version + 1);
    if usize::try_from(version).unwrap_or(usize::MAX) > cx.rules.limits.workflows_max {
        return Err(Rejection::limit(
            "workflows_max",
            cx.rules.limits.workflows_max,
            "this workflow has too many versions; apply it under a new name",
        )
        .into());
    }
    let stored = Workflow { version, ..wf.clone() };
    st(tx.put_workflow(&stored))?;
    Ok(Applied { workflow: stored, created: true })
}

/// Adds each rollup's counters to the stored ones of its key and bucket (at
/// most `rollups_merge_max` per call).
pub fn merge_rollups<T: Tx>(tx: &mut T, rollups: &[Rollup], cx: &mut Ctx<'_>) -> Res<(), T::Error> {
    if rollups.len() > cx.rules.limits.rollups_merge_max {
        return Err(Rejection::limit(
            "rollups_merge_max",
            cx.rules.limits.rollups_merge_max,
            "merge fewer rollups per call",
        )
        .into());
    }
    for r in rollups {
        let mut counts = st(tx.rollup(r.bucket, &r.key))?.unwrap_or_default();
        counts.merge(&r.counts);
        st(tx.put_rollup(&Rollup { bucket: r.bucket, key: r.key.clone(), counts }))?;
    }
    Ok(())
}

/// The workflow version a task runs under, if any.
fn workflow_of<T: Tx>(tx: &mut T, task: &Task) -> Res<Option<Arc<Workflow>>, T::Error> {
    let Some(r) = &task.workflow else { return Ok(None) };
    match st(tx.workflow(&r.name, Some(r.version)))? {
        Some(wf) => Ok(Some(wf)),
        None => Err(Rejection::WorkflowNotFound { name: format!("{} v{}", r.name, r.version) }.into()),
    }
}

fn env<'a>(rules: &'a Rules, wf: Option<&'a Arc<Workflow>>) -> Env<'a> {
    Env { rules, workflow: wf.map(|w| &**w) }
}

/// Deletes up to `limit` (at most `sweep_batch_max`) expired request records.
pub fn purge_requests<T: Tx>(tx: &mut T, limit: usize, cx: &mut Ctx<'_>) -> Res<usize, T::Error> {
    let limit = limit.min(cx.rules.limits.sweep_batch_max);
    // A record saved at `at` is live while `now - at < ttl`.
    let at_or_before = cx.now.saturating_sub(cx.rules.limits.request_key_ttl_ms);
    st(tx.purge_requests(at_or_before, limit))
}

/// Submit: create the task, or return the existing one for a repeated key.
pub fn submit<T: Tx>(tx: &mut T, new: &NewTask, cx: &mut Ctx<'_>) -> Res<Submitted, T::Error> {
    let mut wf = None;
    let mut resolved;
    let mut new = new;
    if let Some(name) = &new.workflow {
        let found = st(tx.workflow(name, None))?.ok_or(Rejection::WorkflowNotFound { name: name.clone() })?;
        if !new.stage.as_str().is_empty() && new.stage != found.entry {
            return Err(Rejection::invalid(
                "stage",
                format!("workflow {name} starts at {}; omit the stage or name that one", found.entry),
            )
            .into());
        }
        resolved = new.clone();
        resolved.stage = found.entry.clone();
        new = &resolved;
        wf = Some(found);
    }
    if let Some(key) = &new.idempotency_key
        && let Some((existing, _)) = st(tx.load_by_key(&new.namespace, key))?
    {
        // Recompute the digest the way `decide::submit` does, to compare.
        let probe = decide_submit(existing.id, new, env(cx.rules, wf.as_ref()), cx.now)?;
        if probe.task.submit_digest == existing.submit_digest {
            return Ok(Submitted { task: existing, created: false });
        }
        return Err(Rejection::IdempotencyConflict { key: key.clone() }.into());
    }
    // The key of an archived task stays taken: a repeat must not start a
    // second task, and the archive cannot answer with the live row.
    if let Some(key) = &new.idempotency_key
        && let Some(task) = st(tx.archived_by_key(&new.namespace, key))?
    {
        return Err(Rejection::TaskArchived { task }.into());
    }
    let id = TaskId(tx.new_id());
    insert_new(tx, id, new, wf.as_ref(), cx).map(|task| Submitted { task, created: true })
}

/// The outbox notice of a change of a task whose workflow lists push URL
/// prefixes, for its push notification configs; nothing for other tasks, so
/// only workflows that opted in pay for an outbox row per change.
fn notice_update<T: Tx>(tx: &mut T, event: &Event, wf: Option<&Arc<Workflow>>) -> Res<(), T::Error> {
    let pushes = wf.and_then(|w| w.a2a.as_ref()).is_some_and(|a| !a.push_url_prefixes.is_empty());
    if pushes && event.kind != EventKind::Heartbeat {
        st(tx.put_notice(&Notice::Update { task: event.task, version: event.version }))?;
    }
    Ok(())
}

/// Creates a task with an id the engine chose, under `wf` when given.
fn insert_new<T: Tx>(
    tx: &mut T,
    id: TaskId,
    new: &NewTask,
    wf: Option<&Arc<Workflow>>,
    cx: &mut Ctx<'_>,
) -> Res<Task, T::Error> {
    if let Some(parent) = new.parent {
        check_lineage(tx, parent, cx.rules)?;
    }
    let change = decide_submit(id, new, env(cx.rules, wf), cx.now)?;
    let event = change.event.seal(Hash::ZERO, None);
    st(tx.insert(&change.task, &new.payload, &event))?;
    notice_update(tx, &event, wf)?;
    cx.effects.gauges.change(None, &change.task);
    cx.effects.observed.push(Observation {
        at: event.at,
        task: event.task,
        kind: event.kind,
        from: change.task.stage.clone(),
        stage: change.task.stage.clone(),
        actor: event.actor.clone(),
        elapsed_ms: None,
        handoff: None,
        trace: change.task.trace.clone(),
    });
    cx.effects.note_ready(&change.task);
    Ok(change.task)
}

/// Claim: lease up to `max` ready tasks from the stages, best first.
pub fn claim<T: Tx>(tx: &mut T, req: &ClaimRequest, cx: &mut Ctx<'_>) -> Res<Claimed, T::Error> {
    claim_except(tx, req, None, cx)
}

/// Claim, never taking `except`, a task ready in the given stage: claim-next
/// after a release must not hand the agent back the task it just gave up.
/// That stage's ready list is read one row longer, in case it holds it.
fn claim_except<T: Tx>(
    tx: &mut T,
    req: &ClaimRequest,
    except: Option<(TaskId, &StageName)>,
    cx: &mut Ctx<'_>,
) -> Res<Claimed, T::Error> {
    let except_stage = except.map(|(_, stage)| stage);
    let except = except.map(|(id, _)| id);
    let limits = &cx.rules.limits;
    if req.max == 0 || req.max > limits.claim_max {
        return Err(Rejection::limit(
            "claim_max",
            limits.claim_max,
            format!("claim between 1 and {} tasks", limits.claim_max),
        )
        .into());
    }
    if req.stages.is_empty() {
        return Err(Rejection::invalid("stages", "name at least one stage").into());
    }
    for stage in &req.stages {
        crate::decide::check_stage("stages", stage, cx.rules)?;
    }
    if let Some(ms) = req.lease_ms {
        crate::decide::check_lease_ms(ms, cx.rules)?;
    }
    let held = st(tx.leases_held(&req.agent))?;
    // Authentication came before the call, and a long poll may wait while
    // the caller is revoked: no lease goes out without this check. After
    // `leases_held`, which on PostgreSQL holds the agent's lock that
    // revocations take too.
    if let Some(credential) = &req.credential
        && !st(tx.credential_live(credential))?
    {
        return Err(Rejection::Revoked.into());
    }
    let room = limits.leases_per_agent_max.saturating_sub(held);
    if room == 0 {
        return Err(Rejection::TooManyLeases { max: limits.leases_per_agent_max }.into());
    }
    let max = req.max.min(usize::try_from(room).unwrap_or(usize::MAX));
    let mut candidates = Vec::new();
    if let Some(only) = req.only {
        // One named task: look it up itself. A stage's ready list is cut at
        // `max`, so filtering it would miss a task that is not the stage's best.
        if let Some((task, _)) = st(tx.load(only))?
            && task.is_ready()
            && req.stages.contains(&task.stage)
            && Some(only) != except
        {
            candidates.push(ReadyKey {
                id: task.id,
                priority: task.priority,
                deadline_rank: task.deadline_rank(),
            });
        }
    } else {
        for stage in &req.stages {
            let longer = usize::from(except_stage == Some(stage));
            candidates.extend(st(tx.ready(stage, max + longer))?);
        }
    }
    candidates.sort_by(|a, b| {
        b.priority.cmp(&a.priority).then(a.deadline_rank.cmp(&b.deadline_rank)).then(a.id.cmp(&b.id))
    });
    candidates.dedup_by_key(|c| c.id);
    candidates.retain(|c| Some(c.id) != except);
    // Decide every lease before writing any, so a refusal leaves nothing
    // half-claimed (claim-next commits its action even when its claim fails).
    let mut changes = Vec::with_capacity(max);
    // Held counts of capped stages, including leases this claim grants.
    let mut held: BTreeMap<StageName, u64> = BTreeMap::new();
    let mut skipped = Vec::new();
    for key in candidates {
        if changes.len() == max {
            break;
        }
        let Some((task, head)) = st(tx.load(key.id))? else { continue };
        let wf = workflow_of(tx, &task)?;
        let e = env(cx.rules, wf.as_ref());
        if let Some(cap) = wf.as_ref().and_then(|w| w.stage(&task.stage)).and_then(|s| s.capacity) {
            let count = match held.get(&task.stage) {
                Some(n) => *n,
                None => st(tx.held_in_stage(&task.stage))?,
            };
            if count >= u64::from(cap) {
                held.insert(task.stage.clone(), count);
                if !skipped.iter().any(|s: &Skipped| s.stage == task.stage) {
                    skipped.push(Skipped { stage: task.stage.clone(), held: count, capacity: cap });
                }
                continue;
            }
            held.insert(task.stage.clone(), count + 1);
        }
        let lease_ms = req.lease_ms.unwrap_or_else(|| e.policy(&task.stage).lease_ms);
        let command = Command::Claim { agent: req.agent.clone(), lease_ms };
        match decide_in(&task, &command, e, cx.now) {
            Ok(change) => changes.push((task, change, head, wf)),
            // The workflow keeps this stage's tasks for other agents.
            Err(Rejection::AgentNotAllowed { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    let mut grants = Vec::with_capacity(changes.len());
    for (before, change, head, wf) in changes {
        let task = apply(tx, &before, change, head, wf.as_ref(), cx)?;
        let TaskState::Held { lease } = &task.state else { unreachable!("a claim leaves the task held") };
        let payload = st(tx.payload(task.id))?;
        grants.push(Grant {
            epoch: lease.epoch,
            lease_expires_at: lease.expires_at,
            task: task.clone(),
            payload,
        });
    }
    Ok(Claimed { grants, skipped })
}

/// A holder's action, then optionally claim-next in the same transaction.
pub fn act<T: Tx>(tx: &mut T, req: &ActRequest, cx: &mut Ctx<'_>) -> Res<ActOutcome, T::Error> {
    let (task, head) = st(tx.load(req.task))?.ok_or(Rejection::TaskNotFound { task: req.task })?;
    let wf = workflow_of(tx, &task)?;
    if let Some(caller) = &req.caller {
        // Human stages: the global policies', and the task's workflow's.
        let human =
            cx.rules.policies.get(&task.stage).human || env(cx.rules, wf.as_ref()).policy(&task.stage).human;
        crate::auth::check_holder_call(caller, &task, &req.agent, req.epoch, &req.action, human)?;
    }
    let handoff_id = matches!(req.action, Action::Handoff { .. } | Action::Complete { .. })
        .then(|| HandoffId(tx.new_id()));
    let children: Vec<TaskId> = match &req.action {
        Action::Spawn { children, .. } if children.len() <= cx.rules.limits.children_max => {
            children.iter().map(|_| TaskId(tx.new_id())).collect()
        }
        Action::Abort { .. } => vec![TaskId(tx.new_id())],
        _ => Vec::new(),
    };
    let command = Command::Act {
        agent: req.agent.clone(),
        epoch: req.epoch,
        action: req.action.clone(),
        handoff_id,
        children: children.clone(),
    };
    let change = decide_in(&task, &command, env(cx.rules, wf.as_ref()), cx.now)?;
    let handoff_id = change.handoff.as_ref().map(|h| h.id);
    let children: Vec<TaskId> = change.spawn.iter().map(|(id, _)| *id).collect();
    let task = apply(tx, &task, change, head, wf.as_ref(), cx)?;
    let mut next = Vec::new();
    if let Some(claim_next) = &req.claim_next {
        let request = ClaimRequest {
            agent: req.agent.clone(),
            stages: claim_next.stages.clone(),
            max: claim_next.max,
            lease_ms: claim_next.lease_ms,
            only: None,
            credential: claim_next.credential.clone(),
        };
        // Only a task left ready in one of those stages could come back.
        let except =
            (task.is_ready() && request.stages.contains(&task.stage)).then_some((task.id, &task.stage));
        // The main action commits whatever happens to the claim part.
        match claim_except(tx, &request, except, cx) {
            Ok(claimed) => next = claimed.grants,
            Err(Fail::Rejected(_)) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(ActOutcome { handoff: handoff_id, children, next, task })
}

pub fn cancel<T: Tx>(tx: &mut T, req: &CancelRequest, cx: &mut Ctx<'_>) -> Res<Task, T::Error> {
    let (task, head) = st(tx.load(req.task))?.ok_or(Rejection::TaskNotFound { task: req.task })?;
    if let Some(caller) = &req.caller {
        crate::auth::check_cancel(caller, &task, "cancel tasks")?;
    }
    let wf = workflow_of(tx, &task)?;
    let command = Command::Cancel { actor: req.actor.clone(), reason: req.reason.clone() };
    let change = decide_in(&task, &command, env(cx.rules, wf.as_ref()), cx.now)?;
    apply(tx, &task, change, head, wf.as_ref(), cx)
}

/// Adds a message to a live task's history (`Command::Comment`).
pub fn comment<T: Tx>(tx: &mut T, req: &CommentRequest, cx: &mut Ctx<'_>) -> Res<Task, T::Error> {
    let (task, head) = st(tx.load(req.task))?.ok_or(Rejection::TaskNotFound { task: req.task })?;
    if let Some(caller) = &req.caller {
        crate::auth::check_cancel(caller, &task, "add messages to tasks")?;
    }
    let wf = workflow_of(tx, &task)?;
    let command =
        Command::Comment { actor: req.actor.clone(), note: req.note.clone(), findings: req.findings.clone() };
    let change = decide_in(&task, &command, env(cx.rules, wf.as_ref()), cx.now)?;
    apply(tx, &task, change, head, wf.as_ref(), cx)
}

/// The timers: act on up to `limit` tasks whose `due_at` has passed.
pub fn fire_due<T: Tx>(tx: &mut T, limit: usize, cx: &mut Ctx<'_>) -> Res<usize, T::Error> {
    let limit = limit.min(cx.rules.limits.sweep_batch_max);
    let mut fired = 0;
    for id in st(tx.due(cx.now, limit))? {
        let Some((task, head)) = st(tx.load(id))? else { continue };
        let wf = workflow_of(tx, &task)?;
        match decide_in(&task, &Command::Fire, env(cx.rules, wf.as_ref()), cx.now) {
            Ok(change) => {
                apply(tx, &task, change, head, wf.as_ref(), cx)?;
                fired += 1;
            }
            Err(Rejection::NotDue { .. }) => {}
            Err(other) => unreachable!("a due task always has a timer action: {other}"),
        }
    }
    Ok(fired)
}

/// Saves a change to `before` (the row as loaded) with its sealed event, its
/// counter deltas and its consequences: the handoff
/// and alert records, the outbox notices, the tasks it spawns and the join of
/// the parent it settles. `wf` is the changed task's workflow.
fn apply<T: Tx>(
    tx: &mut T,
    before: &Task,
    change: Change,
    head: Hash,
    wf: Option<&Arc<Workflow>>,
    cx: &mut Ctx<'_>,
) -> Res<Task, T::Error> {
    let event = change.event.seal(head, Some(before));
    if !st(tx.update(&change.task, &event))? {
        return Err(Fail::Conflict);
    }
    cx.effects.gauges.change(Some(before), &change.task);
    let handoff = change.handoff.clone().or_else(|| match (&event.kind, &change.task.state) {
        (EventKind::Reoffered, TaskState::Waiting { handoff, .. }) => handoff.clone(),
        _ => None,
    });
    cx.effects.observed.push(Observation {
        at: event.at,
        task: event.task,
        kind: event.kind,
        from: event.from.as_ref().map_or_else(|| change.task.stage.clone(), |p| p.stage.clone()),
        stage: change.task.stage.clone(),
        actor: event.actor.clone(),
        elapsed_ms: change.elapsed_ms,
        handoff,
        trace: change.task.trace.clone(),
    });
    if let Some(h) = &change.handoff {
        st(tx.put_handoff(h))?;
        if h.outcome != HandoffOutcome::Pending {
            st(tx.put_notice(&Notice::Handoff { handoff: h.clone() }))?;
        }
    }
    if let Some(a) = &change.alert {
        st(tx.put_alert(a))?;
        st(tx.put_notice(&Notice::Alert { alert: a.clone() }))?;
    }
    notice_update(tx, &event, wf)?;
    cx.effects.note_ready(&change.task);
    for (id, new) in &change.spawn {
        // A child in one of the workflow's stages runs under the same version.
        let child_wf = wf.filter(|w| w.stage(&new.stage).is_some());
        insert_new(tx, *id, new, child_wf, cx)?;
    }
    if let Some((parent, ok)) = change.settle_parent
        && let Some((p, p_head)) = st(tx.load(parent))?
    {
        let p_wf = workflow_of(tx, &p)?;
        let command = Command::ChildSettled { child: change.task.id, ok, next_id: TaskId(tx.new_id()) };
        // A parent that is no longer blocked (escalated at its join deadline,
        // cancelled) has nothing to settle: the child's end changes nothing.
        if let Ok(parent_change) = decide_in(&p, &command, env(cx.rules, p_wf.as_ref()), cx.now) {
            apply(tx, &p, parent_change, p_head, p_wf.as_ref(), cx)?;
        }
    }
    Ok(change.task)
}

fn check_lineage<T: Tx>(tx: &mut T, parent: TaskId, rules: &Rules) -> Res<(), T::Error> {
    let mut cursor = Some(parent);
    for _ in 0..rules.limits.lineage_depth_max {
        let Some(id) = cursor else { return Ok(()) };
        let (task, _) = st(tx.load(id))?.ok_or(Rejection::TaskNotFound { task: id })?;
        cursor = task.parent;
    }
    if cursor.is_none() {
        return Ok(());
    }
    Err(Rejection::limit("lineage_depth_max", rules.limits.lineage_depth_max, "the parent chain is too deep")
        .into())
}
