//! The custody state machine: the only code that decides a transition.
//! `submit` builds a new task; `decide` judges a command against a task and
//! returns the new row with its event (unsealed: the engine chains it) or a
//! refusal. Both are pure: `now` and the rules are arguments.

use crate::command::{Action, Command, NewTask, Report};
use crate::engine::Rules;
use crate::event::{Actor, Event, EventKind, Hash, Position};
use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::policy::{DEADLINE_BOOST, StagePolicy};
use crate::rejection::Rejection;
use crate::store::{Alert, Handoff, HandoffOutcome};
use crate::task::{Custodian, Join, JoinMode, Lease, Saga, Task, TaskState, Wait};
use crate::workflow::{Workflow, WorkflowStage};

/// The result of an accepted command: the task after it, its event, and what
/// else the same transaction must write.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub task: Task,
    /// The event, with `prev_hash` and `hash` still zero until sealed.
    pub event: Event,
    /// A handoff record to create or update.
    pub handoff: Option<Handoff>,
    pub alert: Option<Alert>,
    /// The task reached a terminal state and has a parent: tell it (ok = done).
    pub settle_parent: Option<(TaskId, bool)>,
    /// Tasks to create in the same transaction (spawned children, a saga's
    /// next compensation task), with the ids the engine named.
    pub spawn: Vec<(TaskId, NewTask)>,
    /// Time spent in the state the change left (waiting or held), for metrics.
    pub elapsed_ms: Option<Millis>,
}

/// What `decide` judges against: the rules, and the task's workflow (the
/// version it was submitted under) when it has one.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub rules: &'a Rules,
    pub workflow: Option<&'a Workflow>,
}

impl<'a> Env<'a> {
    /// Rules alone: ad hoc stages.
    pub fn plain(rules: &'a Rules) -> Self {
        Self { rules, workflow: None }
    }

    /// The policy of `stage` for this task.
    pub fn policy(&self, stage: &StageName) -> &'a StagePolicy {
        match self.workflow {
            Some(wf) => wf.policy(stage, &self.rules.policies),
            None => self.rules.policies.get(stage),
        }
    }

    fn stage(&self, stage: &StageName) -> Option<&'a WorkflowStage> {
        self.workflow.and_then(|wf| wf.stage(stage))
    }
}

/// Builds a new task from a submit request. The caller supplies the id.
pub fn submit(id: TaskId, new: &NewTask, rules: &Rules, now: Millis) -> Result<Change, Rejection> {
    submit_in(id, new, Env::plain(rules), now)
}

/// `submit` for a task of `env.workflow` (the engine resolved it; the stage
/// is the workflow's entry stage) or ad hoc.
pub fn submit_in(id: TaskId, new: &NewTask, env: Env<'_>, now: Millis) -> Result<Change, Rejection> {
    let rules = env.rules;
    validate_new(new, rules)?;
    let policy = env.policy(&new.stage);
    let digest = crate::event::digest_json(new);
    let task = Task {
        id,
        namespace: new.namespace.clone(),
        idempotency_key: new.idempotency_key.clone(),
        submit_digest: digest.to_hex(),
        stage: new.stage.clone(),
        priority: new.priority,
        deadline: new.deadline,
        parent: new.parent,
        labels: new.labels.clone(),
        trace: new.trace.clone(),
        submitter: new.submitter.clone(),
        created_at: now,
        updated_at: now,
        revision: 1,
        epoch: 0,
        attempts: 0,
        reoffers: 0,
        reroutes: 0,
        workflow: env.workflow.map(Workflow::reference),
        trail: Vec::new(),
        boost_at: new.deadline.map(|d| d.saturating_sub(policy.deadline_near_ms)),
        deadline_passed: false,
        compensation: new.compensation,
        state: TaskState::Waiting {
            custodian: Custodian::Submitter(new.submitter.clone()),
            since: now,
            wait: Wait::Offered { due_at: now.saturating_add(policy.accept_within_ms) },
            handoff: None,
        },
    };
    let event = Event {
        task: id,
        version: 1,
        at: now,
        actor: new.submitter.clone(),
        kind: EventKind::Submitted,
        from: None,
        to: Position::of(&task),
        note: None,
        findings: None,
        confidence: None,
        handoff: None,
        after: task.clone(),
        change: None,
        payload_digest: Some(Hash::of(new.payload.as_bytes())),
        prev_hash: Hash::ZERO,
        hash: Hash::ZERO,
    };
    Ok(Change {
        task,
        event,
        handoff: None,
        alert: None,
        settle_parent: None,
        spawn: Vec::new(),
        elapsed_ms: None,
    })
}

/// Judges `command` against `task` at time `now`, for a task without a workflow.
pub fn decide(task: &Task, command: &Command, rules: &Rules, now: Millis) -> Result<Change, Rejection> {
    decide_in(task, command, Env::plain(rules), now)
}

/// Judges `command` against `task` at time `now`; `env.workflow` must be the
/// task's own workflow version.
pub fn decide_in(task: &Task, command: &Command, env: Env<'_>, now: Millis) -> Result<Change, Rejection> {
    let rules = env.rules;
    if task.is_terminal() && !matches!(command, Command::Act { .. }) {
        return Err(invalid(task, command));
    }
    match command {
        Command::Claim { agent, lease_ms } => claim(task, agent, *lease_ms, env, now),
        Command::Act { agent, epoch, action, handoff_id, children } => {
            let lease = fence(task, agent, *epoch)?;
            act(task, lease, action, Ids { handoff: *handoff_id, children }, env, now)
        }
        Command::Cancel { actor, reason } => cancel(task, actor, reason, rules, now),
        Command::Comment { actor, note, findings } => {
            comment(task, actor, note, findings.as_ref(), rules, now)
        }
        Command::Fire => fire(task, env, now),
        Command::ChildSettled { child, ok, next_id } => settle(task, *child, *ok, *next_id, env, now),
    }
}

fn claim(
    task: &Task,
    agent: &AgentId,
    lease_ms: Millis,
    env: Env<'_>,
    now: Millis,
) -> Result<Change, Rejection> {
    let TaskState::Waiting { wait: Wait::Offered { .. }, handoff, .. } = &task.state else {
        return Err(invalid(task, &Command::Claim { agent: agent.clone(), lease_ms }));
    };
    check_lease_ms(lease_ms, env.rules)?;
    if let Some(def) = env.stage(&task.stage)
        && !def.agents.is_empty()
        && !def.agents.iter().any(|a| a == agent.as_str())
    {
        return Err(Rejection::AgentNotAllowed { stage: task.stage.clone(), agent: agent.clone() });
    }
    let epoch = task.epoch + 1;
    let accepted = handoff
        .clone()
        .map(|h| Handoff { outcome: HandoffOutcome::Accepted { by: agent.clone(), at: now, epoch }, ..h });
    let lease =
        Lease { agent: agent.clone(), epoch, claimed_at: now, expires_at: now.saturating_add(lease_ms) };
    let next = Task { epoch, reoffers: 0, state: TaskState::Held { lease }, ..task.clone() };
    let mut change = change(task, next, EventKind::Claimed, Actor::Agent(agent.clone()), now);
    change.event.handoff = accepted.as_ref().map(|h| h.id);
    change.handoff = accepted;
    Ok(change)
}

/// Checks the caller's fence token: the epoch must be current and the lease
/// theirs. Public so the server can refuse from a task it read with the
/// same answer the engine gives.
pub fn fence<'t>(task: &'t Task, agent: &AgentId, epoch: u64) -> Result<&'t Lease, Rejection> {
    let lost = || Rejection::LeaseLost { task: task.id, current_epoch: task.epoch, state: task.state_name() };
    if epoch != task.epoch {
        return Err(lost());
    }
    match &task.state {
        TaskState::Held { lease } if &lease.agent == agent => Ok(lease),
        TaskState::Held { .. } => Err(Rejection::NotHolder { task: task.id }),
        _ => Err(lost()),
    }
}

/// Ids the store generated for what an action creates.
struct Ids<'a> {
    handoff: Option<HandoffId>,
    children: &'a [TaskId],
}

fn act(
    task: &Task,
    lease: &Lease,
    action: &Action,
    ids: Ids<'_>,
    env: Env<'_>,
    now: Millis,
) -> Result<Change, Rejection> {
    let rules = env.rules;
    let actor = Actor::Agent(lease.agent.clone());
    let policy = env.policy(&task.stage);
    match action {
        Action::Heartbeat { lease_ms, note } => {
            let ttl = lease_ms.unwrap_or(policy.lease_ms);
            check_lease_ms(ttl, rules)?;
            check_text("note", note.as_deref(), rules)?;
            let lease = Lease { expires_at: now.saturating_add(ttl), ..lease.clone() };
            let next = Task { state: TaskState::Held { lease }, ..task.clone() };
            let mut change = change(task, next, EventKind::Heartbeat, actor, now);
            change.event.note = note.clone();
            Ok(change)
        }
        Action::Handoff { to_stage, report } => {
            check_stage("to_stage", to_stage, rules)?;
            check_report(report, rules)?;
            if let Some(wf) = env.workflow
                && !wf.allows(&task.stage, to_stage, &rules.policies)
            {
                return Err(Rejection::RouteNotAllowed { from: task.stage.clone(), to: to_stage.clone() });
            }
            let id = ids.handoff.expect("the engine names every handoff");
            let mut change = hand_off(task, lease, to_stage, id, env, now);
            with_report(&mut change.event, report);
            Ok(change)
        }
        Action::Complete { result, report } => {
            check_report(report, rules)?;
            check_json("result", result.as_ref(), rules)?;
            if let Some(to) = env.stage(&task.stage).and_then(|s| s.complete_to(task.id)) {
                // The workflow's default route: a handoff like any other.
                let id = ids.handoff.expect("the engine names the handoff of a routed complete");
                let mut change = hand_off(task, lease, to, id, env, now);
                with_report(&mut change.event, report);
                if change.event.note.is_none() {
                    change.event.note = Some(format!("completed {}; routed to {to}", task.stage));
                }
                return Ok(change);
            }
            let next = Task { state: TaskState::Done { at: now, result: result.clone() }, ..task.clone() };
            let mut change = change(task, next, EventKind::Completed, actor, now);
            with_report(&mut change.event, report);
            change.settle_parent = task.parent.map(|p| (p, true));
            Ok(change)
        }
        Action::Release { note } => {
            check_text("note", note.as_deref(), rules)?;
            let attempts = task.attempts + 1;
            let mut change = if attempts >= policy.max_attempts {
                let why = format!("released {attempts} times at {}", task.stage);
                climb(task, Task { attempts, ..task.clone() }, true, &why, env, now, actor)
            } else {
                let next = Task {
                    attempts,
                    state: offered(task, Custodian::Stage(task.stage.clone()), env, now),
                    ..task.clone()
                };
                change(task, next, EventKind::Released, actor, now)
            };
            if change.event.note.is_none() {
                change.event.note = note.clone();
            }
            Ok(change)
        }
        Action::Fail { error, retryable } => {
            check_text("error", Some(error), rules)?;
            let attempts = task.attempts + 1;
            if *retryable && attempts < policy.max_attempts {
                let retry_at = now.saturating_add(policy.retry.delay_ms(attempts));
                let next = Task {
                    attempts,
                    state: TaskState::Waiting {
                        custodian: Custodian::Stage(task.stage.clone()),
                        since: now,
                        wait: Wait::Backoff { retry_at },
                        handoff: None,
                    },
                    ..task.clone()
                };
                let mut change = change(task, next, EventKind::Failed, actor, now);
                change.event.note = Some(error.clone());
                Ok(change)
            } else {
                let why = if *retryable {
                    format!("failed {attempts} times at {}: {error}", task.stage)
                } else {
                    format!("failed, not retryable: {error}")
                };
                Ok(climb(task, Task { attempts, ..task.clone() }, *retryable, &why, env, now, actor))
            }
        }
        Action::Spawn { children, join } => {
            if children.is_empty() {
                return Err(Rejection::invalid("children", "spawn needs at least one child"));
            }
            if children.len() > rules.limits.children_max {
                return Err(Rejection::limit(
                    "children_max",
                    rules.limits.children_max,
                    "spawn fewer children",
                ));
            }
            let count = u32::try_from(children.len()).expect("bounded by children_max");
            assert_eq!(ids.children.len(), children.len(), "the engine names every child");
            if let JoinMode::Quorum(n) = join.mode
                && (n == 0 || n > count)
            {
                return Err(Rejection::invalid("join.n", format!("a quorum must be between 1 and {count}")));
            }
            if join.within_ms <= 0 {
                return Err(Rejection::invalid("join.within_ms", "must be positive"));
            }
            let next = Task {
                state: TaskState::Blocked {
                    custodian: lease.agent.clone(),
                    join: Join {
                        mode: join.mode,
                        children: count,
                        open: ids.children.to_vec(),
                        done: 0,
                        failed: 0,
                        due_at: now.saturating_add(join.within_ms),
                        saga: None,
                    },
                },
                ..task.clone()
            };
            let mut change = change(task, next, EventKind::Spawned, actor, now);
            for (spec, id) in children.iter().zip(ids.children) {
                change.spawn.push((
                    *id,
                    NewTask {
                        namespace: task.namespace.clone(),
                        stage: spec.stage.clone(),
                        payload: spec.payload.clone(),
                        priority: spec.priority,
                        deadline: task.deadline,
                        idempotency_key: None,
                        labels: spec.labels.clone(),
                        parent: Some(task.id),
                        trace: task.trace.clone(),
                        submitter: Actor::Agent(lease.agent.clone()),
                        workflow: None,
                        compensation: false,
                    },
                ));
            }
            Ok(change)
        }
        Action::Abort { reason } => {
            check_text("reason", Some(reason), rules)?;
            let Some(wf) = env.workflow else {
                return Err(Rejection::invalid(
                    "action",
                    "abort applies to workflow tasks; use fail or cancel for an ad hoc task",
                ));
            };
            let remaining: Vec<StageName> = task
                .trail
                .iter()
                .rev()
                .filter_map(|s| wf.stage(s).and_then(|d| d.compensate.clone()))
                .collect();
            let saga = Saga { reason: reason.clone(), remaining, current: None, ran: Vec::new() };
            let first = ids.children.first().copied().expect("the engine names the first compensation task");
            let mut change = compensate(task, lease.agent.clone(), saga, first, env, now, actor);
            if change.event.kind == EventKind::Spawned {
                change.event.kind = EventKind::Aborted;
            }
            Ok(change)
        }
    }
}

/// A handoff from the holder to `to`: the sender stays custodian until the
/// first claim there.
fn hand_off(task: &Task, lease: &Lease, to: &StageName, id: HandoffId, env: Env<'_>, now: Millis) -> Change {
    let handoff = Handoff {
        id,
        task: task.id,
        from_stage: task.stage.clone(),
        to_stage: to.clone(),
        from_agent: lease.agent.clone(),
        at: now,
        outcome: HandoffOutcome::Pending,
    };
    let mut trail = task.trail.clone();
    if env.stage(&task.stage).is_some_and(|s| !s.policy.human) {
        trail.push(task.stage.clone());
    }
    let next = Task {
        stage: to.clone(),
        attempts: 0,
        reoffers: 0,
        trail,
        state: TaskState::Waiting {
            custodian: Custodian::Agent(lease.agent.clone()),
            since: now,
            wait: Wait::Offered { due_at: now.saturating_add(env.policy(to).accept_within_ms) },
            handoff: Some(handoff.clone()),
        },
        ..task.clone()
    };
    let mut change = change(task, next, EventKind::HandedOff, Actor::Agent(lease.agent.clone()), now);
    change.event.handoff = Some(id);
    change.handoff = Some(handoff);
    change
}

/// The next step of a saga: spawn the next compensation task as `next_id`,
/// or, with none left, cancel the aborted task.
fn compensate(
    task: &Task,
    custodian: AgentId,
    mut saga: Saga,
    next_id: TaskId,
    env: Env<'_>,
    now: Millis,
    actor: Actor,
) -> Change {
    if saga.remaining.is_empty() {
        let ran: Vec<String> = saga
            .ran
            .iter()
            .map(|(s, ok)| format!("{s} {}", if *ok { "done" } else { "escalated" }))
            .collect();
        let reason = if ran.is_empty() {
            format!("aborted: {}", saga.reason)
        } else {
            format!("aborted: {}; compensated: {}", saga.reason, ran.join(", "))
        };
        let next = Task { state: TaskState::Cancelled { at: now, reason: reason.clone() }, ..task.clone() };
        let mut change = change(task, next, EventKind::Aborted, actor, now);
        change.event.note = Some(reason);
        change.settle_parent = task.parent.map(|p| (p, false));
        return change;
    }
    let stage = saga.remaining.remove(0);
    saga.current = Some(stage.clone());
    let within = env.rules.limits.saga_step_within_ms;
    let next = Task {
        state: TaskState::Blocked {
            custodian,
            join: Join {
                mode: JoinMode::All,
                children: 1,
                open: vec![next_id],
                done: 0,
                failed: 0,
                due_at: now.saturating_add(within),
                saga: Some(saga.clone()),
            },
        },
        ..task.clone()
    };
    let mut change = change(task, next, EventKind::Spawned, actor, now);
    change.event.note = Some(format!("compensating at {stage} ({})", saga.reason));
    let payload = serde_json::json!({ "compensate": task.id, "reason": saga.reason }).to_string();
    change.spawn.push((
        next_id,
        NewTask {
            namespace: task.namespace.clone(),
            stage,
            payload,
            priority: task.priority,
            deadline: None,
            idempotency_key: None,
            labels: task.labels.clone(),
            parent: Some(task.id),
            trace: task.trace.clone(),
            submitter: Actor::System,
            workflow: None,
            compensation: true,
        },
    ));
    change
}

fn cancel(task: &Task, actor: &Actor, reason: &str, rules: &Rules, now: Millis) -> Result<Change, Rejection> {
    check_text("reason", Some(reason), rules)?;
    let next = Task { state: TaskState::Cancelled { at: now, reason: reason.to_owned() }, ..task.clone() };
    let mut change = change(task, next, EventKind::Cancelled, actor.clone(), now);
    change.event.note = Some(reason.to_owned());
    if let Some(h) = open_handoff(task) {
        change.event.handoff = Some(h.id);
        change.handoff = Some(Handoff { outcome: HandoffOutcome::Cancelled { at: now }, ..h.clone() });
    }
    change.settle_parent = task.parent.map(|p| (p, false));
    Ok(change)
}

/// A message added to the history: the row is the same but for its
/// revision and `updated_at`, so custody, the lease, the epoch and `due_at`
/// stay as they were. Measured by no metric.
fn comment(
    task: &Task,
    actor: &Actor,
    note: &str,
    findings: Option<&serde_json::Value>,
    rules: &Rules,
    now: Millis,
) -> Result<Change, Rejection> {
    if note.trim().is_empty() && findings.is_none() {
        return Err(Rejection::invalid("note", "send a message: a note, findings, or both"));
    }
    check_text("note", Some(note), rules)?;
    check_json("findings", findings, rules)?;
    let mut change = change(task, task.clone(), EventKind::Commented, actor.clone(), now);
    change.event.note = Some(note.to_owned()).filter(|n| !n.is_empty());
    change.event.findings = findings.cloned();
    change.elapsed_ms = None;
    Ok(change)
}

/// The timer: the task's `due_at` has passed. A passed deadline comes
/// first, then a nearing one, then the state's own timer.
fn fire(task: &Task, env: Env<'_>, now: Millis) -> Result<Change, Rejection> {
    match task.due_at() {
        Some(due) if due <= now => {}
        _ => return Err(Rejection::NotDue { task: task.id }),
    }
    if let Some(deadline) = task.deadline
        && deadline <= now
        && !task.deadline_passed
    {
        return Ok(deadline_passed(task, deadline, env, now));
    }
    if let Some(boost_at) = task.boost_at
        && boost_at <= now
    {
        let next =
            Task { priority: task.priority.saturating_add(DEADLINE_BOOST), boost_at: None, ..task.clone() };
        let mut change = change(task, next, EventKind::DeadlineNear, Actor::System, now);
        change.event.note = Some(format!(
            "deadline in {} ms; priority raised by {DEADLINE_BOOST}",
            task.deadline.unwrap_or(now).saturating_sub(now)
        ));
        return Ok(change);
    }
    let policy = env.policy(&task.stage);
    match &task.state {
        TaskState::Waiting { wait: Wait::Offered { .. }, custodian, since, handoff } => {
            if policy.human || task.reoffers < policy.reoffers {
                let next = Task {
                    reoffers: task.reoffers.saturating_add(1),
                    state: TaskState::Waiting {
                        custodian: custodian.clone(),
                        since: *since,
                        wait: Wait::Offered { due_at: now.saturating_add(policy.accept_within_ms) },
                        handoff: handoff.clone(),
                    },
                    ..task.clone()
                };
                let mut change = change(task, next, EventKind::Reoffered, Actor::System, now);
                change.event.note =
                    Some(format!("not claimed within {} ms; offered again", policy.accept_within_ms));
                Ok(change)
            } else {
                let why = format!("not claimed at {} after {} offers", task.stage, task.reoffers + 1);
                Ok(climb(task, task.clone(), true, &why, env, now, Actor::System))
            }
        }
        TaskState::Waiting { wait: Wait::Backoff { .. }, custodian, handoff, .. } => {
            let next = Task {
                state: TaskState::Waiting {
                    custodian: custodian.clone(),
                    since: now,
                    wait: Wait::Offered { due_at: now.saturating_add(policy.accept_within_ms) },
                    handoff: handoff.clone(),
                },
                ..task.clone()
            };
            Ok(change(task, next, EventKind::RetryReady, Actor::System, now))
        }
        TaskState::Held { lease } => {
            let attempts = task.attempts + 1;
            let expired = Task { epoch: task.epoch + 1, attempts, ..task.clone() };
            if attempts >= policy.max_attempts {
                let why = format!("lease of {} expired; {attempts} attempts at {}", lease.agent, task.stage);
                Ok(climb(task, expired, true, &why, env, now, Actor::System))
            } else {
                let next =
                    Task { state: offered(task, Custodian::Stage(task.stage.clone()), env, now), ..expired };
                let mut change = change(task, next, EventKind::LeaseExpired, Actor::System, now);
                change.event.note = Some(format!("lease of {} expired", lease.agent));
                Ok(change)
            }
        }
        TaskState::Blocked { join, .. } => {
            let why = match &join.saga {
                Some(saga) => format!("compensation for abort ({}) not done in time", saga.reason),
                None => format!("join deadline passed with {} of {} children done", join.done, join.needed()),
            };
            Ok(climb(task, task.clone(), false, &why, env, now, Actor::System))
        }
        TaskState::Done { .. } | TaskState::Cancelled { .. } => unreachable!("terminal tasks have no due_at"),
    }
}

/// The task's own deadline passed: a waiting task in a worker stage climbs
/// straight to its human stage; a held, blocked or already escalated task
/// stays where it is and an alert tells its custodian and the operators.
fn deadline_passed(task: &Task, deadline: Millis, env: Env<'_>, now: Millis) -> Change {
    let why = format!("deadline passed {} ms ago at {}", now.saturating_sub(deadline), task.stage);
    let base = Task {
        deadline_passed: true,
        boost_at: None,
        priority: if task.boost_at.is_some() {
            task.priority.saturating_add(DEADLINE_BOOST)
        } else {
            task.priority
        },
        ..task.clone()
    };
    let waiting = matches!(task.state, TaskState::Waiting { .. });
    if waiting && !env.policy(&task.stage).human {
        let mut change = climb(task, base, false, &why, env, now, Actor::System);
        change.event.kind = EventKind::Escalated;
        return change;
    }
    let mut change = change(task, base, EventKind::DeadlinePassed, Actor::System, now);
    change.event.note = Some(why.clone());
    change.alert = Some(Alert {
        task: task.id,
        stage: task.stage.clone(),
        from: Some(task.stage.clone()),
        at: now,
        message: why,
    });
    change
}

fn settle(
    task: &Task,
    child: TaskId,
    ok: bool,
    next_id: TaskId,
    env: Env<'_>,
    now: Millis,
) -> Result<Change, Rejection> {
    let command = Command::ChildSettled { child, ok, next_id };
    let TaskState::Blocked { custodian, join } = &task.state else {
        return Err(invalid(task, &command));
    };
    if !join.open.contains(&child) {
        // Not a child of the current spawn (an earlier spawn's, or a task
        // submitted with this parent): it does not count toward the join.
        return Err(invalid(task, &command));
    }
    if let Some(saga) = &join.saga {
        // A compensation step ended (done, or escalated to the operators): on
        // to the next one, latest first, until none is left.
        let mut saga = saga.clone();
        if let Some(stage) = saga.current.take() {
            saga.ran.push((stage, ok));
        }
        return Ok(compensate(task, custodian.clone(), saga, next_id, env, now, Actor::System));
    }
    let mut join = join.clone();
    join.open.retain(|c| *c != child);
    if ok {
        join.done += 1;
    } else {
        join.failed += 1;
    }
    let note = Some(format!("child {child} {}", if ok { "done" } else { "cancelled" }));
    let mut change = if join.satisfied() {
        let next =
            Task { state: offered(task, Custodian::Agent(custodian.clone()), env, now), ..task.clone() };
        change(task, next, EventKind::Joined, Actor::System, now)
    } else if join.hopeless() {
        let why = format!("join cannot hold: {} of {} children failed", join.failed, join.children);
        climb(task, task.clone(), false, &why, env, now, Actor::System)
    } else {
        let next = Task { state: TaskState::Blocked { custodian: custodian.clone(), join }, ..task.clone() };
        change(task, next, EventKind::ChildSettled, Actor::System, now)
    };
    if change.event.note.is_none() {
        change.event.note = note;
    }
    Ok(change)
}

/// Climbs the ladder past re-offers: reroute to the fallback stage when allowed
/// and available, otherwise escalate to the human stage with an alert.
/// `base` is the task with counters already updated by the caller.
fn climb(
    task: &Task,
    base: Task,
    allow_reroute: bool,
    why: &str,
    env: Env<'_>,
    now: Millis,
    actor: Actor,
) -> Change {
    let policy = env.policy(&task.stage);
    let reroute = policy
        .reroute_to
        .as_ref()
        .filter(|to| allow_reroute && **to != task.stage && task.reroutes < env.rules.limits.reroutes_max);
    let (to, kind, reroutes) = match reroute {
        Some(to) => (to.clone(), EventKind::Rerouted, base.reroutes + 1),
        None => (policy.escalation_target(), EventKind::Escalated, base.reroutes),
    };
    let accept_within = env.policy(&to).accept_within_ms;
    let next = Task {
        stage: to.clone(),
        attempts: 0,
        reoffers: 0,
        reroutes,
        state: TaskState::Waiting {
            custodian: Custodian::Stage(to.clone()),
            since: now,
            wait: Wait::Offered { due_at: now.saturating_add(accept_within) },
            handoff: None,
        },
        ..base
    };
    let mut change = change(task, next, kind, actor, now);
    change.event.note = Some(why.to_owned());
    if let Some(h) = open_handoff(task) {
        let outcome = match kind {
            EventKind::Rerouted => HandoffOutcome::Rerouted { to: to.clone(), at: now },
            _ => HandoffOutcome::Escalated { to: to.clone(), at: now },
        };
        change.event.handoff = Some(h.id);
        change.handoff = Some(Handoff { outcome, ..h.clone() });
    }
    if kind == EventKind::Escalated {
        change.alert = Some(Alert {
            task: task.id,
            stage: to,
            from: Some(task.stage.clone()),
            at: now,
            message: why.to_owned(),
        });
        // A saga waits for its compensation tasks to be done or escalated.
        if task.compensation {
            change.settle_parent = task.parent.map(|p| (p, false));
        }
    }
    change
}

/// A waiting state offered in the task's current stage.
fn offered(task: &Task, custodian: Custodian, env: Env<'_>, now: Millis) -> TaskState {
    let accept_within = env.policy(&task.stage).accept_within_ms;
    TaskState::Waiting {
        custodian,
        since: now,
        wait: Wait::Offered { due_at: now.saturating_add(accept_within) },
        handoff: None,
    }
}

fn open_handoff(task: &Task) -> Option<&Handoff> {
    match &task.state {
        TaskState::Waiting { handoff: Some(h), .. } => Some(h),
        _ => None,
    }
}

/// Builds the change from `task` to `next`: one more revision and its event.
fn change(task: &Task, mut next: Task, kind: EventKind, actor: Actor, now: Millis) -> Change {
    next.revision = task.revision + 1;
    next.updated_at = now;
    let event = Event {
        task: task.id,
        version: next.revision,
        at: now,
        actor,
        kind,
        from: Some(Position::of(task)),
        to: Position::of(&next),
        note: None,
        findings: None,
        confidence: None,
        handoff: None,
        after: next.clone(),
        change: None,
        payload_digest: None,
        prev_hash: Hash::ZERO,
        hash: Hash::ZERO,
    };
    let elapsed_ms = match &task.state {
        TaskState::Waiting { since, .. } => Some(now.saturating_sub(*since)),
        TaskState::Held { lease } => Some(now.saturating_sub(lease.claimed_at)),
        _ => None,
    };
    Change {
        task: next,
        event,
        handoff: None,
        alert: None,
        settle_parent: None,
        spawn: Vec::new(),
        elapsed_ms,
    }
}

fn with_report(event: &mut Event, report: &Report) {
    event.note = report.note.clone();
    event.findings = report.findings.clone();
    event.confidence = report.confidence;
}

fn invalid(task: &Task, command: &Command) -> Rejection {
    Rejection::InvalidTransition {
        task: task.id,
        command: command.name().to_owned(),
        state: task.state_name(),
    }
}

pub(crate) fn check_lease_ms(ms: Millis, rules: &Rules) -> Result<(), Rejection> {
    let l = &rules.limits;
    if ms < l.lease_ttl_ms_min {
        return Err(Rejection::limit(
            "lease_ttl_ms_min",
            l.lease_ttl_ms_min,
            format!("ask for a lease of at least {} ms", l.lease_ttl_ms_min),
        ));
    }
    if ms > l.lease_ttl_ms_max {
        return Err(Rejection::limit(
            "lease_ttl_ms_max",
            l.lease_ttl_ms_max,
            format!("ask for a lease of at most {} ms and heartbeat", l.lease_ttl_ms_max),
        ));
    }
    Ok(())
}

fn check_text(field: &str, text: Option<&str>, rules: &Rules) -> Result<(), Rejection> {
    match text {
        Some(t) if t.len() > rules.limits.note_bytes_max => Err(Rejection::limit(
            "note_bytes_max",
            rules.limits.note_bytes_max,
            format!("{field} is {} bytes; shorten it", t.len()),
        )),
        _ => Ok(()),
    }
}

fn check_json(field: &str, value: Option<&serde_json::Value>, rules: &Rules) -> Result<(), Rejection> {
    if let Some(v) = value {
        let len = serde_json::to_string(v).expect("values serialize").len();
        if len > rules.limits.findings_bytes_max {
            return Err(Rejection::limit(
                "findings_bytes_max",
                rules.limits.findings_bytes_max,
                format!("{field} is {len} bytes; store large data elsewhere and pass a reference"),
            ));
        }
    }
    Ok(())
}

fn check_report(report: &Report, rules: &Rules) -> Result<(), Rejection> {
    check_text("note", report.note.as_deref(), rules)?;
    check_json("findings", report.findings.as_ref(), rules)?;
    match report.confidence {
        Some(c) if !(0.0..=1.0).contains(&c) => {
            Err(Rejection::invalid("confidence", "must be between 0 and 1"))
        }
        _ => Ok(()),
    }
}

/// Stage names: 1 to `stage_bytes_max` bytes of letters, digits, `-`, `_`, `.`, `/`.
pub fn check_stage(field: &str, stage: &StageName, rules: &Rules) -> Result<(), Rejection> {
    let s = stage.as_str();
    if s.is_empty() {
        return Err(Rejection::invalid(field, "a stage name cannot be empty"));
    }
    if s.len() > rules.limits.stage_bytes_max {
        return Err(Rejection::limit(
            "stage_bytes_max",
            rules.limits.stage_bytes_max,
            format!("{field} is too long"),
        ));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
        return Err(Rejection::invalid(field, "use letters, digits, '-', '_', '.' and '/' only"));
    }
    Ok(())
}

fn validate_new(new: &NewTask, rules: &Rules) -> Result<(), Rejection> {
    let l = &rules.limits;
    check_stage("stage", &new.stage, rules)?;
    if new.payload.len() > l.payload_bytes_max {
        return Err(Rejection::limit(
            "payload_bytes_max",
            l.payload_bytes_max,
            format!(
                "payload is {} bytes; store large data elsewhere and pass a reference",
                new.payload.len()
            ),
        ));
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&new.payload).is_err() {
        return Err(Rejection::invalid("payload", "must be valid JSON"));
    }
    if let Some(key) = &new.idempotency_key {
        if key.is_empty() {
            return Err(Rejection::invalid("idempotency_key", "cannot be empty"));
        }
        if key.len() > l.idempotency_key_bytes_max {
            return Err(Rejection::limit(
                "idempotency_key_bytes_max",
                l.idempotency_key_bytes_max,
                "use a shorter idempotency key",
            ));
        }
    }
    if new.labels.len() > l.labels_max {
        return Err(Rejection::limit("labels_max", l.labels_max, "use fewer labels"));
    }
    if new
        .labels
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > l.label_bytes_max || v.len() > l.label_bytes_max)
    {
        return Err(Rejection::limit(
            "label_bytes_max",
            l.label_bytes_max,
            "label keys must be non-empty and keys and values short",
        ));
    }
    if let Some(t) = &new.trace
        && (t.len() > 256 || !t.is_ascii())
    {
        return Err(Rejection::invalid("trace", "must be a W3C traceparent"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
