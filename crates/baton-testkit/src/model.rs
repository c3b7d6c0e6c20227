//! The model test: a reference model of the handoff protocol, written
//! independently of `decide`, run against a real store by
//! proptest-state-machine. Goal: the custody invariants (docs/design.md) hold under random
//! sequences of submits (with idempotency keys), claims, holder calls with
//! current, stale and foreign epochs, cancels, and clock advances that fire
//! timers. Method: the model predicts every call's outcome (which tasks a
//! claim takes, which refusal code a call gets) and every task's state, stage
//! and epoch; after each step the store must agree, and at the end the history
//! checker verifies chains, replay and custody over the whole store.
//!
//! The policy keeps the model small: stages `s0..s2` accept within a time the
//! test never reaches (so the ladder acts only through attempts), leases last
//! 5 s, three attempts per stage, a flat 1 s backoff (the inbox's too); past
//! the attempts a task escalates to the human stage `inbox`.

use crate::clock::ManualClock;
use crate::exec::block_on;
use crate::suite::{Setup, SuiteStore};
use baton_core::engine::Rules;
use baton_core::{
    ActRequest, Action, AgentId, Backoff, CancelRequest, ClaimRequest, Error, NewTask, Policies, Report,
    StageName, StagePolicy, StateName, Store, TaskId, store::NoListener,
};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use std::marker::PhantomData;
use std::sync::Arc;

const STAGES: [&str; 4] = ["s0", "s1", "s2", "inbox"];
const INBOX: usize = 3;
const LEASE_MS: i64 = 5_000;
const BACKOFF_MS: i64 = 1_000;
const MAX_ATTEMPTS: u32 = 3;
const INBOX_MAX_ATTEMPTS: u32 = 5;
const START: i64 = 1_700_000_000_000;

/// The rules the model assumes.
pub fn model_rules() -> Rules {
    let retry = Backoff { initial_ms: BACKOFF_MS, max_ms: BACKOFF_MS, multiplier: 1 };
    let stage = StagePolicy {
        accept_within_ms: 1_000_000_000,
        lease_ms: LEASE_MS,
        max_attempts: MAX_ATTEMPTS,
        retry: retry.clone(),
        reoffers: u32::MAX,
        ..StagePolicy::default()
    };
    // The inbox backs off as flatly as the other stages: the model knows one backoff.
    let inbox =
        StagePolicy { accept_within_ms: 1_000_000_000, lease_ms: LEASE_MS, retry, ..StagePolicy::human() };
    let policies = Policies::default()
        .with_stage("s0", stage.clone())
        .with_stage("s1", stage.clone())
        .with_stage("s2", stage)
        .with_stage("inbox", inbox);
    Rules { policies, limits: baton_core::Limits::default() }
}

/// A task as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MTask {
    pub stage: usize,
    /// The stage it was submitted to: part of what an idempotency key covers.
    pub origin: usize,
    pub priority: i32,
    pub payload: u8,
    pub key: Option<u8>,
    pub epoch: u64,
    pub attempts: u32,
    pub state: MState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MState {
    Ready,
    Backoff { until: i64 },
    Held { agent: u8, expires: i64 },
    Done,
    Cancelled,
}

/// What the model predicts for the last transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Nothing,
    Submitted { index: usize, created: bool },
    Claimed(Vec<usize>),
    Accepted,
    Refused(&'static str),
}

#[derive(Debug, Clone)]
pub struct Model {
    pub now: i64,
    pub tasks: Vec<MTask>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HolderCall {
    Heartbeat,
    Handoff(usize),
    Complete,
    Release,
    Fail { retryable: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Submit { stage: usize, priority: i32, payload: u8, key: Option<u8> },
    Claim { agent: u8, stages: Vec<usize>, max: usize },
    Act { task: usize, agent: u8, epoch: u64, call: HolderCall },
    Cancel { task: usize },
    Advance { ms: i64 },
}

pub struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model { now: START, tasks: Vec::new(), expect: Expect::Nothing }).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let submit = (0..3usize, 0..3i32, 0..2u8, prop::option::of(0..4u8))
            .prop_map(|(stage, priority, payload, key)| Step::Submit { stage, priority, payload, key });
        let claim = (0..3u8, prop::sample::subsequence(vec![0usize, 1, 2, 3], 1..=4), 1..4usize)
            .prop_map(|(agent, stages, max)| Step::Claim { agent, stages, max });
        let advance = prop_oneof![Just(500i64), Just(1_000), Just(5_000), Just(6_000)]
            .prop_map(|ms| Step::Advance { ms });
        if state.tasks.is_empty() {
            return prop_oneof![submit, advance].boxed();
        }
        let n = state.tasks.len();
        let epochs: Vec<u64> = state.tasks.iter().map(|t| t.epoch).collect();
        let call = prop_oneof![
            Just(HolderCall::Heartbeat),
            (0..3usize).prop_map(HolderCall::Handoff),
            Just(HolderCall::Complete),
            Just(HolderCall::Release),
            any::<bool>().prop_map(|retryable| HolderCall::Fail { retryable }),
        ];
        let act = (0..n, 0..3u8, prop_oneof![3 => Just(0i64), 1 => Just(-1), 1 => Just(1)], call).prop_map(
            move |(task, agent, delta, call)| {
                let epoch = epochs[task].saturating_add_signed(delta);
                Step::Act { task, agent, epoch, call }
            },
        );
        let cancel = (0..n).prop_map(|task| Step::Cancel { task });
        prop_oneof![3 => submit, 3 => claim, 6 => act, 1 => cancel, 2 => advance].boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::Act { task, .. } | Step::Cancel { task } => *task < state.tasks.len(),
            _ => true,
        }
    }

    fn apply(mut m: Model, step: &Step) -> Model {
        m.expect = match step {
            Step::Submit { stage, priority, payload, key } => m.submit(*stage, *priority, *payload, *key),
            Step::Claim { agent, stages, max } => m.claim(*agent, stages, *max),
            Step::Act { task, agent, epoch, call } => m.act(*task, *agent, *epoch, *call),
            Step::Cancel { task } => {
                let t = &mut m.tasks[*task];
                if matches!(t.state, MState::Done | MState::Cancelled) {
                    Expect::Refused("invalid_transition")
                } else {
                    t.state = MState::Cancelled;
                    Expect::Accepted
                }
            }
            Step::Advance { ms } => {
                m.now += ms;
                m.fire();
                Expect::Nothing
            }
        };
        m
    }
}

impl Model {
    fn submit(&mut self, stage: usize, priority: i32, payload: u8, key: Option<u8>) -> Expect {
        if let Some(k) = key
            && let Some(index) = self.tasks.iter().position(|t| t.key == Some(k))
        {
            let t = &self.tasks[index];
            return if (t.payload, t.priority) == (payload, priority) && t.origin == stage {
                Expect::Submitted { index, created: false }
            } else {
                Expect::Refused("idempotency_conflict")
            };
        }
        self.tasks.push(MTask {
            stage,
            origin: stage,
            priority,
            payload,
            key,
            epoch: 0,
            attempts: 0,
            state: MState::Ready,
        });
        Expect::Submitted { index: self.tasks.len() - 1, created: true }
    }

    fn claim(&mut self, agent: u8, stages: &[usize], max: usize) -> Expect {
        let mut ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].state == MState::Ready && stages.contains(&self.tasks[i].stage))
            .collect();
        ready.sort_by_key(|&i| (-self.tasks[i].priority, i));
        ready.truncate(max);
        for &i in &ready {
            let t = &mut self.tasks[i];
            t.epoch += 1;
            t.state = MState::Held { agent, expires: self.now + LEASE_MS };
        }
        Expect::Claimed(ready)
    }

    fn act(&mut self, index: usize, agent: u8, epoch: u64, call: HolderCall) -> Expect {
        let now = self.now;
        let t = &mut self.tasks[index];
        if epoch != t.epoch {
            return Expect::Refused("lease_lost");
        }
        match t.state {
            MState::Held { agent: holder, .. } if holder == agent => {}
            MState::Held { .. } => return Expect::Refused("not_holder"),
            _ => return Expect::Refused("lease_lost"),
        }
        match call {
            HolderCall::Heartbeat => t.state = MState::Held { agent, expires: now + LEASE_MS },
            HolderCall::Handoff(to) => {
                t.stage = to;
                t.attempts = 0;
                t.state = MState::Ready;
            }
            HolderCall::Complete => t.state = MState::Done,
            HolderCall::Release => {
                t.attempts += 1;
                if t.attempts >= t.max_attempts() {
                    t.escalate();
                } else {
                    t.state = MState::Ready;
                }
            }
            HolderCall::Fail { retryable } => {
                t.attempts += 1;
                if retryable && t.attempts < t.max_attempts() {
                    t.state = MState::Backoff { until: now + BACKOFF_MS };
                } else {
                    t.escalate();
                }
            }
        }
        Expect::Accepted
    }

    /// Timers: every due task acts once (the store fires until nothing is due).
    fn fire(&mut self) {
        let now = self.now;
        for t in &mut self.tasks {
            match t.state {
                MState::Backoff { until } if until <= now => t.state = MState::Ready,
                MState::Held { expires, .. } if expires <= now => {
                    t.epoch += 1;
                    t.attempts += 1;
                    if t.attempts >= t.max_attempts() {
                        t.escalate();
                    } else {
                        t.state = MState::Ready;
                    }
                }
                _ => {}
            }
        }
    }
}

impl MTask {
    fn max_attempts(&self) -> u32 {
        if self.stage == INBOX { INBOX_MAX_ATTEMPTS } else { MAX_ATTEMPTS }
    }
    fn escalate(&mut self) {
        self.stage = INBOX;
        self.attempts = 0;
        self.state = MState::Ready;
    }
}

/// The system under test: a store (through its suite harness), its clock, and
/// the ids of the model's tasks.
pub struct Sut<H> {
    harness: H,
    clock: Arc<ManualClock>,
    ids: Vec<TaskId>,
}

/// The model test over the store that harness `H` opens.
pub struct ModelTest<H>(PhantomData<H>);

impl<H: SuiteStore> StateMachineTest for ModelTest<H> {
    type SystemUnderTest = Sut<H>;
    type Reference = Reference;

    fn init_test(_: &Model) -> Sut<H> {
        let clock = Arc::new(ManualClock::new(START));
        let setup = Setup { clock: clock.clone(), rules: model_rules(), listener: Arc::new(NoListener) };
        Sut { harness: H::open(setup), clock, ids: Vec::new() }
    }

    fn apply(mut sut: Sut<H>, model: &Model, step: Step) -> Sut<H> {
        let store = sut.harness.store();
        let got: Expect = match &step {
            Step::Submit { stage, priority, payload, key } => {
                let mut new =
                    NewTask::new(STAGES[*stage], format!("{{\"p\":{payload}}}")).priority(*priority);
                new.idempotency_key = key.map(|k| format!("key-{k}"));
                match block_on(store.submit(new)) {
                    Ok(s) => {
                        let index = match sut.ids.iter().position(|id| *id == s.task.id) {
                            Some(i) => i,
                            None => {
                                sut.ids.push(s.task.id);
                                sut.ids.len() - 1
                            }
                        };
                        Expect::Submitted { index, created: s.created }
                    }
                    Err(e) => refused(e),
                }
            }
            Step::Claim { agent, stages, max } => {
                let request = ClaimRequest {
                    agent: agent_id(*agent),
                    stages: stages.iter().map(|&s| StageName::new(STAGES[s])).collect(),
                    max: *max,
                    lease_ms: None,
                    only: None,
                    credential: None,
                };
                match block_on(store.claim(request)) {
                    Ok(grants) => Expect::Claimed(
                        grants
                            .iter()
                            .map(|g| sut.ids.iter().position(|id| *id == g.task.id).expect("known task"))
                            .collect(),
                    ),
                    Err(e) => refused(e),
                }
            }
            Step::Act { task, agent, epoch, call } => {
                let action = match call {
                    HolderCall::Heartbeat => Action::Heartbeat { lease_ms: None, note: None },
                    HolderCall::Handoff(to) => {
                        Action::Handoff { to_stage: STAGES[*to].into(), report: Report::default() }
                    }
                    HolderCall::Complete => Action::Complete { result: None, report: Report::default() },
                    HolderCall::Release => Action::Release { note: None },
                    HolderCall::Fail { retryable } => {
                        Action::Fail { error: "e".into(), retryable: *retryable }
                    }
                };
                let request = ActRequest {
                    task: sut.ids[*task],
                    agent: agent_id(*agent),
                    epoch: *epoch,
                    action,
                    claim_next: None,
                    caller: None,
                };
                match block_on(store.act(request)) {
                    Ok(_) => Expect::Accepted,
                    Err(e) => refused(e),
                }
            }
            Step::Cancel { task } => {
                let request = CancelRequest {
                    task: sut.ids[*task],
                    actor: baton_core::Actor::Principal("ops".into()),
                    reason: "test".into(),
                    caller: None,
                };
                match block_on(store.cancel(request)) {
                    Ok(_) => Expect::Accepted,
                    Err(e) => refused(e),
                }
            }
            Step::Advance { ms } => {
                sut.clock.advance(*ms);
                // Fire until nothing is due; bounded: each round acts on every due task.
                for _ in 0..4 {
                    if block_on(store.fire_due(10_000)).expect("fire_due") == 0 {
                        break;
                    }
                }
                Expect::Nothing
            }
        };
        assert_eq!(got, model.expect, "after {step:?}");
        sut
    }

    fn check_invariants(sut: &Sut<H>, model: &Model) {
        assert_eq!(sut.ids.len(), model.tasks.len(), "every acknowledged submit is a task");
        for (i, (id, m)) in sut.ids.iter().zip(&model.tasks).enumerate() {
            let view = block_on(sut.harness.store().get(*id))
                .expect("get")
                .expect("acknowledged tasks are never lost");
            let t = &view.task;
            let want = match m.state {
                MState::Ready | MState::Backoff { .. } => StateName::Waiting,
                MState::Held { .. } => StateName::Held,
                MState::Done => StateName::Done,
                MState::Cancelled => StateName::Cancelled,
            };
            assert_eq!(
                (t.state_name(), t.stage.as_str(), t.epoch, t.attempts),
                (want, STAGES[m.stage], m.epoch, m.attempts),
                "task {i}"
            );
            if let MState::Held { agent, expires } = m.state {
                assert_eq!(t.holder(), Some(&agent_id(agent)), "task {i}: one live lease, the model's");
                assert_eq!(t.due_at(), Some(expires), "task {i}");
            }
            if let MState::Backoff { until } = m.state {
                assert!(!t.is_ready() && t.due_at() == Some(until), "task {i}: backing off until {until}");
            }
            if !t.is_terminal() {
                assert!(t.custodian().is_some() && t.due_at().is_some(), "task {i}: custody invariant");
            }
        }
        // The counters the write path keeps equal a full recount after every step.
        let store = sut.harness.store();
        let counted = block_on(store.stage_gauges(usize::MAX)).expect("stage gauges");
        let recounted = block_on(store.stage_gauges_recount(usize::MAX)).expect("stage gauge recount");
        assert_eq!(counted, recounted, "stage counters against a full recount");
    }

    fn teardown(sut: Sut<H>, _: Model) {
        if let Err(problems) = crate::checker::check_store(sut.harness.store()) {
            panic!("history checker: {problems:#?}");
        }
    }
}

fn agent_id(a: u8) -> AgentId {
    AgentId::new(format!("agent-{a}"))
}

fn refused(e: Error) -> Expect {
    match e {
        Error::Rejected(r) => Expect::Refused(r.code()),
        other => panic!("store failure: {other}"),
    }
}
