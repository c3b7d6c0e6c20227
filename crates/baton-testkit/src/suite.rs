//! The store conformance suite: one set of cases that every `Store` (memory,
//! SQLite, Postgres) must pass, River-style.
//!
//! Goal: pin down the behaviour of the storage boundary, so that every store
//! answers the handoff protocol (docs/design.md) the same way, refuses the same
//! calls with the same codes, and changes nothing when it refuses.
//!
//! Method: a store crate implements `SuiteStore` for a harness type (how to
//! open a fresh, empty store on a `ManualClock`, and how to read its alerts)
//! and invokes `store_suite!(Harness)` in one integration test file; the macro
//! expands to one `#[test]` per case. Each case opens its own store, drives it
//! through the public async `Store` methods with `block_on`, moves time by hand
//! and asserts real outcomes: states, custodians, epochs, due times, events,
//! handoff outcomes, refusal codes, and for every refusal a whole-store
//! snapshot that must not change. Every case ends by running the history
//! checker (`checker::check_store`) over the whole store.
//!
//! This module owns the cases and their shared rules (`suite_rules`); it leaves
//! opening stores to the harness and the invariants themselves to `checker`.

mod archive;
mod workflows;
pub use archive::*;
pub use workflows::*;

use crate::checker::{Acknowledged, HistoryReport, assert_store_ok, check_acknowledged, list_all};
use crate::clock::ManualClock;
use crate::exec::block_on;
use baton_core::auth::{Directory, Principal, Role, Route, TokenRecord, mint_token};
use baton_core::store::ReadyListener;
use baton_core::{
    ActOutcome, ActRequest, Action, Actor, AgentId, Alert, Backoff, CancelRequest, ClaimNext, ClaimRequest,
    Credential, Custodian, Error, Event, EventKind, Grant, Handoff, HandoffId, HandoffOutcome, Hash,
    JoinMode, JoinSpec, Limits, Millis, NewChild, NewTask, Op, OpOutcome, Policies, Rejection, Report,
    RequestKey, Rules, StageName, StagePolicy, StateName, Store, Submitted, Task, TaskFilter, TaskId,
    TaskState, TaskView, Wait,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

/// What a harness gets to open a store with.
pub struct Setup {
    /// The store's only source of time; cases advance it.
    pub clock: Arc<ManualClock>,
    pub rules: Rules,
    /// Must be told the stages with new ready work after each commit, before
    /// the operation's future resolves (cases check it right after the call).
    pub listener: Arc<dyn ReadyListener>,
}

/// A store under test, as the suite opens it. Implement it for a harness type
/// that owns the store and whatever must outlive it (a temp dir, a database).
pub trait SuiteStore: Sized {
    /// Every store keeps principals and tokens too (`auth::Directory`).
    type Store: Store + Directory;

    /// Opens a fresh, empty store. Called once per case.
    fn open(setup: Setup) -> Self;

    fn store(&self) -> &Self::Store;

    /// The alerts the store raised, oldest first, or `None` if this harness
    /// cannot read them (then the suite does not check alerts; override this).
    fn alerts(&self) -> Option<Vec<Alert>> {
        None
    }

    /// Closes the store and opens it again on the same data with the same
    /// setup. Durable stores must override this; the default keeps the store.
    fn reopen(self) -> Self {
        self
    }
}

/// Expands to one `#[test]` per conformance case for the harness type `$h`
/// (a type implementing `baton_testkit::suite::SuiteStore`). Invoke it once, at
/// the top level of one integration test file. A durable store's harness owns
/// its temp dir and reopens on the same file, for example:
///
/// ```text
/// struct Harness { dir: tempfile::TempDir, options: SqliteOptions, store: SqliteStore }
///
/// impl SuiteStore for Harness {
///     type Store = SqliteStore;
///     fn open(setup: Setup) -> Self {
///         let dir = tempfile::tempdir().expect("temp dir");
///         let options = SqliteOptions::default()
///             .clock(setup.clock).rules(setup.rules).listener(setup.listener);
///         let store = SqliteStore::open(dir.path().join("baton.db"), options.clone()).expect("open");
///         Self { dir, options, store }
///     }
///     fn store(&self) -> &SqliteStore { &self.store }
///     fn alerts(&self) -> Option<Vec<Alert>> {
///         Some(self.store.alerts(0, 10_000).expect("alerts").into_iter().map(|(_, a)| a).collect())
///     }
///     fn reopen(self) -> Self {
///         let Self { dir, options, store } = self;
///         store.close();
///         drop(store);
///         let store = SqliteStore::open(dir.path().join("baton.db"), options.clone()).expect("reopen");
///         Self { dir, options, store }
///     }
/// }
///
/// baton_testkit::store_suite!(Harness);
/// ```
#[macro_export]
macro_rules! store_suite {
    ($h:ty) => {
        $crate::__store_suite_cases!(
            $h;
            submit_creates_a_waiting_task,
            submit_repeated_key_returns_the_existing_task,
            submit_key_with_another_body_conflicts,
            submit_refusals_write_nothing,
            claim_orders_by_priority_then_deadline_then_age,
            claim_max_and_claim_limits,
            claim_respects_leases_per_agent_max,
            claim_refused_midway_rolls_back_every_lease,
            grants_carry_their_payloads,
            calls_are_checked_against_their_caller,
            heartbeat_extends_the_lease,
            stale_epoch_gets_lease_lost_and_changes_nothing,
            other_agent_gets_not_holder,
            handoff_is_pending_until_the_first_claim,
            complete_finishes_the_task,
            release_returns_the_task_to_its_stage,
            retryable_fail_backs_off_then_climbs_the_ladder,
            non_retryable_fail_escalates_at_once,
            lease_expiry_returns_the_task_with_the_next_epoch,
            lease_expiries_climb_to_the_fallback_stage,
            release_at_max_attempts_escalates,
            ladder_reoffers_then_reroutes_then_escalates,
            pending_handoff_escalated_by_the_ladder,
            spawn_join_all,
            spawn_join_any,
            spawn_join_quorum,
            cancelled_child_making_the_join_impossible_escalates_the_parent,
            join_deadline_escalates_the_parent,
            spawn_refusals_write_nothing,
            cancel_ends_the_task,
            claim_next_returns_the_next_leases_in_the_same_call,
            list_pages_with_cursor_and_filters,
            history_is_a_verified_hash_chain,
            history_reads_in_pages_from_its_end,
            next_due_is_the_earliest_live_due_at,
            fire_due_respects_its_limit,
            ready_listener_hears_the_stages,
            concurrent_claims_lease_each_task_once,
            reopen_keeps_everything,
            random_walk_keeps_the_invariants,
            directory_keeps_principals_and_tokens,
            directory_refuses_what_would_break_it,
            directory_keeps_a_live_admin,
            directory_revocation_reaches_every_token,
            directory_survives_reopen,
            revoked_credentials_get_no_lease,
            keyed_repeat_returns_the_first_outcome_and_writes_nothing,
            keyed_repeat_with_another_request_conflicts,
            keyed_requests_are_scoped_to_their_principal,
            keyed_refusals_and_empty_claims_are_judged_afresh,
            keyed_request_expires_after_request_key_ttl_ms,
            keyed_outcomes_survive_reopen,
            concurrent_repeats_of_a_key_run_once,
            workflow_versions_are_numbered_and_kept,
            workflow_tasks_keep_their_version_and_follow_routes,
            workflow_stage_agents_and_capacity,
            workflow_policies_drive_the_ladder,
            escalated_workflow_task_goes_back_into_its_workflow,
            deadline_raises_priority_then_escalates,
            abort_compensates_in_reverse_order,
            abort_without_compensation,
            workflow_children_share_the_version_and_any_joins,
            observations_follow_each_commit_and_roll_up,
            rollups_merge_and_read_by_window,
            anomalies_are_stored_listed_and_acknowledged,
            deliveries_resume_where_each_webhook_left_off,
            push_configs_are_kept_and_opted_in_tasks_leave_update_notices,
            canary_route_shares_then_promotes_and_rolls_back,
            stage_gauges_count_live_tasks_and_duties_are_held,
            archive_moves_only_eligible_tasks,
            archived_idempotency_key_stays_taken,
            archive_pass_is_bounded,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_suite_cases {
    ($h:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::suite::$case::<$h>();
            }
        )*
    };
}

/// Where every case's clock starts: 2023-11-14T22:13:20Z.
pub const T0: Millis = 1_700_000_000_000;
/// `accept_within_ms` of ordinary stages.
pub const ACCEPT_MS: Millis = 60_000;
/// `lease_ms` of ordinary stages.
pub const LEASE_MS: Millis = 10_000;
/// `deadline_near_ms` of ordinary stages.
pub const DEADLINE_NEAR_MS: Millis = 30_000;
/// The human stage ordinary stages escalate to.
pub const HUMANS: &str = "humans";

/// The rules every case starts from. Ordinary (ad hoc) stages accept within a
/// minute, lease for 10 s, allow 3 attempts with 1 s, 2 s, 4 s backoff, re-offer
/// once and escalate to `humans`. Special stages:
/// - `triage`: accept within 1 s, 2 re-offers, reroute to `fallback`;
/// - `fallback`: accept within 0.5 s, no re-offer, then escalate;
/// - `flaky`: 2 attempts, reroute to `fallback`;
/// - `long-lease`: a default lease longer than `lease_ttl_ms_max`;
/// - `humans` and `inbox`: human stages.
pub fn suite_rules() -> Rules {
    let base = StagePolicy {
        accept_within_ms: ACCEPT_MS,
        lease_ms: LEASE_MS,
        max_attempts: 3,
        retry: Backoff { initial_ms: 1_000, max_ms: 4_000, multiplier: 2 },
        reoffers: 1,
        reroute_to: None,
        escalate_to: Some(StageName::new(HUMANS)),
        human: false,
        deadline_near_ms: DEADLINE_NEAR_MS,
    };
    let limits = Limits::default();
    let policies = Policies { default: base.clone(), stages: BTreeMap::new() }
        .with_stage(HUMANS, StagePolicy::human())
        .with_stage("inbox", StagePolicy::human())
        .with_stage(
            "triage",
            StagePolicy {
                accept_within_ms: 1_000,
                reoffers: 2,
                reroute_to: Some(StageName::new("fallback")),
                ..base.clone()
            },
        )
        .with_stage("fallback", StagePolicy { accept_within_ms: 500, reoffers: 0, ..base.clone() })
        .with_stage(
            "flaky",
            StagePolicy { max_attempts: 2, reroute_to: Some(StageName::new("fallback")), ..base },
        );
    Rules { policies, limits }
}

/// A listener that records every stage it is told about, and every
/// observation.
#[derive(Debug, Default)]
pub struct ReadyLog {
    stages: Mutex<Vec<StageName>>,
    observed: Mutex<Vec<baton_core::metrics::Observation>>,
}

impl ReadyLog {
    /// The stages heard since the last call, as a set of names.
    pub fn take(&self) -> BTreeSet<String> {
        let mut stages = self.stages.lock().expect("ready log poisoned");
        stages.drain(..).map(|s| s.0).collect()
    }

    /// The observations heard since the last call, in order.
    pub fn take_observed(&self) -> Vec<baton_core::metrics::Observation> {
        std::mem::take(&mut *self.observed.lock().expect("ready log poisoned"))
    }
}

impl ReadyListener for ReadyLog {
    fn ready(&self, stages: &[StageName]) {
        self.stages.lock().expect("ready log poisoned").extend_from_slice(stages);
    }

    fn observed(&self, changes: &[baton_core::metrics::Observation]) {
        self.observed.lock().expect("ready log poisoned").extend_from_slice(changes);
    }
}

/// The whole visible state of a store, to show that a refusal changed nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub tasks: Vec<(TaskView, Vec<Event>)>,
    pub next_due: Option<Millis>,
    pub alerts: Option<Vec<Alert>>,
}

/// One running case: a fresh store, its clock and its ready log, with
/// helpers that panic (with the caller's location) on unexpected answers.
pub struct Case<H: SuiteStore> {
    harness: Option<H>,
    pub clock: Arc<ManualClock>,
    pub ready: Arc<ReadyLog>,
}

impl<H: SuiteStore> Case<H> {
    /// Opens a fresh store at `T0` with `rules`.
    pub fn open(rules: Rules) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let ready = Arc::new(ReadyLog::default());
        let harness = H::open(Setup { clock: clock.clone(), rules, listener: ready.clone() });
        Self { harness: Some(harness), clock, ready }
    }

    /// Opens a store with `open` (an existing one, say a migration
    /// fixture's copy) on a manual clock at `now` with `rules`.
    pub fn open_with(rules: Rules, now: Millis, open: impl FnOnce(Setup) -> H) -> Self {
        let clock = Arc::new(ManualClock::new(now));
        let ready = Arc::new(ReadyLog::default());
        let harness = open(Setup { clock: clock.clone(), rules, listener: ready.clone() });
        Self { harness: Some(harness), clock, ready }
    }

    pub fn store(&self) -> &H::Store {
        self.harness.as_ref().expect("the harness is open").store()
    }

    /// The harness, for what only it knows (the file, the schema).
    pub fn harness(&self) -> &H {
        self.harness.as_ref().expect("the harness is open")
    }

    /// Runs the history checker over the whole store and closes the case.
    pub fn finish(self) -> HistoryReport {
        assert_store_ok(self.store())
    }

    /// Asserts the store's stage counters equal its recount and the count of
    /// its tasks (`checker::check_gauges`), mid-case.
    pub fn assert_gauges_match(&self) {
        let tasks = crate::checker::list_all(self.store()).expect("list");
        let expected = crate::checker::expected_gauges(&tasks);
        let mut problems = Vec::new();
        crate::checker::check_gauges(self.store(), Some(&expected), &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    pub fn reopen(&mut self) {
        let harness = self.harness.take().expect("the harness is open");
        self.harness = Some(harness.reopen());
    }

    pub fn alerts(&self) -> Option<Vec<Alert>> {
        self.harness.as_ref().expect("the harness is open").alerts()
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    pub fn advance(&self, ms: Millis) -> Millis {
        self.clock.advance(ms)
    }

    #[track_caller]
    pub fn submit(&self, new: NewTask) -> Submitted {
        ok(self.try_submit(new))
    }

    pub fn try_submit(&self, new: NewTask) -> Result<Submitted, Error> {
        block_on(self.store().submit(new))
    }

    /// Submits an empty-object payload into `stage`; returns the new task.
    #[track_caller]
    pub fn submit_to(&self, stage: &str) -> Task {
        let submitted = self.submit(new_task(stage, "{}"));
        assert!(submitted.created);
        submitted.task
    }

    #[track_caller]
    pub fn claim(&self, agent: &str, stages: &[&str], max: usize) -> Vec<Grant> {
        ok(self.try_claim(agent, stages, max, None))
    }

    pub fn try_claim(
        &self,
        agent: &str,
        stages: &[&str],
        max: usize,
        lease_ms: Option<Millis>,
    ) -> Result<Vec<Grant>, Error> {
        block_on(self.store().claim(ClaimRequest {
            agent: AgentId::new(agent),
            stages: stages.iter().map(|s| StageName::new(*s)).collect(),
            max,
            lease_ms,
            only: None,
            credential: None,
        }))
    }

    /// Claims exactly one task from `stage` and checks the lease it got.
    #[track_caller]
    pub fn claim_one(&self, agent: &str, stage: &str) -> Grant {
        self.claim_one_for(agent, stage, None)
    }

    #[track_caller]
    pub fn claim_one_for(&self, agent: &str, stage: &str, lease_ms: Option<Millis>) -> Grant {
        let mut grants = ok(self.try_claim(agent, &[stage], 1, lease_ms));
        assert_eq!(grants.len(), 1, "one task ready in {stage}");
        let grant = grants.pop().expect("one grant");
        let TaskState::Held { lease } = &grant.task.state else {
            panic!("a claimed task is held: {grant:?}")
        };
        assert_eq!(lease.agent.as_str(), agent);
        assert_eq!(lease.epoch, grant.epoch);
        assert_eq!(lease.expires_at, grant.lease_expires_at);
        assert_eq!(grant.task.epoch, grant.epoch);
        assert_eq!(self.task(grant.task.id), grant.task, "the grant is what the store holds");
        grant
    }

    /// Acts as the grant's holder with the grant's epoch.
    #[track_caller]
    pub fn act(&self, grant: &Grant, action: Action) -> ActOutcome {
        ok(self.try_act(grant, action))
    }

    pub fn try_act(&self, grant: &Grant, action: Action) -> Result<ActOutcome, Error> {
        let agent = grant.task.holder().expect("a grant names its holder").as_str().to_owned();
        self.try_act_as(grant.task.id, &agent, grant.epoch, action, None)
    }

    pub fn try_act_as(
        &self,
        task: TaskId,
        agent: &str,
        epoch: u64,
        action: Action,
        claim_next: Option<ClaimNext>,
    ) -> Result<ActOutcome, Error> {
        block_on(self.store().act(ActRequest {
            task,
            agent: AgentId::new(agent),
            epoch,
            action,
            claim_next,
            caller: None,
        }))
    }

    #[track_caller]
    pub fn act_next(&self, grant: &Grant, action: Action, stages: &[&str], max: usize) -> ActOutcome {
        let agent = grant.task.holder().expect("a grant names its holder").as_str().to_owned();
        let claim_next = ClaimNext {
            stages: stages.iter().map(|s| StageName::new(*s)).collect(),
            max,
            lease_ms: None,
            credential: None,
        };
        ok(self.try_act_as(grant.task.id, &agent, grant.epoch, action, Some(claim_next)))
    }

    pub fn try_cancel(&self, task: TaskId, reason: &str) -> Result<Task, Error> {
        block_on(self.store().cancel(CancelRequest {
            task,
            actor: Actor::Principal("operator".into()),
            reason: reason.into(),
            caller: None,
        }))
    }

    #[track_caller]
    pub fn cancel(&self, task: TaskId, reason: &str) -> Task {
        ok(self.try_cancel(task, reason))
    }

    #[track_caller]
    pub fn fire(&self, limit: usize) -> usize {
        ok(block_on(self.store().fire_due(limit)))
    }

    pub fn try_execute(&self, op: Op, key: Option<RequestKey>) -> Result<OpOutcome, Error> {
        block_on(self.store().execute(op, key))
    }

    /// Runs `op` under `key`.
    #[track_caller]
    pub fn execute(&self, op: Op, key: &RequestKey) -> OpOutcome {
        ok(self.try_execute(op, Some(key.clone())))
    }

    /// Repeats a keyed call: it must answer `first` and change nothing.
    #[track_caller]
    pub fn assert_replays(&self, op: Op, key: &RequestKey, first: &OpOutcome) {
        self.ready.take();
        let before = self.snapshot();
        assert_eq!(&self.execute(op, key), first, "a repeated key answers the first outcome");
        assert_eq!(self.snapshot(), before, "a repeated key changed the store");
        assert_eq!(self.ready.take(), BTreeSet::new(), "a repeated key sent a wake-up");
    }

    #[track_caller]
    pub fn purge_requests(&self, limit: usize) -> usize {
        ok(block_on(self.store().purge_requests(limit)))
    }

    #[track_caller]
    pub fn view(&self, id: TaskId) -> TaskView {
        ok(block_on(self.store().get(id))).unwrap_or_else(|| panic!("task {id} exists"))
    }

    #[track_caller]
    pub fn task(&self, id: TaskId) -> Task {
        self.view(id).task
    }

    #[track_caller]
    pub fn history(&self, id: TaskId) -> Vec<Event> {
        ok(block_on(self.store().history(id)))
    }

    #[track_caller]
    pub fn kinds(&self, id: TaskId) -> Vec<EventKind> {
        self.history(id).iter().map(|e| e.kind).collect()
    }

    #[track_caller]
    pub fn last_event(&self, id: TaskId) -> Event {
        self.history(id).pop().expect("every task has events")
    }

    #[track_caller]
    pub fn handoff(&self, id: HandoffId) -> Handoff {
        ok(block_on(self.store().handoff(id))).unwrap_or_else(|| panic!("handoff {id} exists"))
    }

    #[track_caller]
    pub fn next_due(&self) -> Option<Millis> {
        ok(block_on(self.store().next_due()))
    }

    #[track_caller]
    pub fn list(&self, filter: TaskFilter) -> Vec<Task> {
        crate::checker::list_matching(self.store(), filter).expect("list works")
    }

    #[track_caller]
    pub fn snapshot(&self) -> Snapshot {
        let tasks = list_all(self.store())
            .expect("list works")
            .into_iter()
            .map(|t| (self.view(t.id), self.history(t.id)))
            .collect();
        Snapshot { tasks, next_due: self.next_due(), alerts: self.alerts() }
    }

    /// Runs `op`, which must be refused with `code`, and checks that the
    /// store did not change and no wake-up was sent. Returns the refusal.
    #[track_caller]
    pub fn refuses<T: Debug>(&self, code: &str, op: impl FnOnce(&Self) -> Result<T, Error>) -> Rejection {
        self.ready.take();
        let before = self.snapshot();
        let rejection = refused(op(self), code);
        assert_eq!(self.snapshot(), before, "a refused call ({code}) changed the store");
        assert_eq!(self.ready.take(), BTreeSet::new(), "a refused call ({code}) sent a wake-up");
        rejection
    }

    /// Checks that an alert about `task` in `stage` was raised, if alerts are readable.
    #[track_caller]
    pub fn assert_alert(&self, task: TaskId, stage: &str) {
        if let Some(alerts) = self.alerts() {
            assert!(
                alerts.iter().any(|a| a.task == task && a.stage.as_str() == stage && !a.message.is_empty()),
                "an alert about {task} in {stage}; alerts: {alerts:?}"
            );
        }
    }

    #[track_caller]
    pub fn assert_alert_count(&self, count: usize) {
        if let Some(alerts) = self.alerts() {
            assert_eq!(alerts.len(), count, "alerts: {alerts:?}");
        }
    }
}

/// A submit into `stage` by a named principal, other fields defaulted.
pub fn new_task(stage: &str, payload: &str) -> NewTask {
    NewTask { submitter: Actor::Principal("submitter".into()), ..NewTask::new(stage, payload) }
}

pub fn agent(id: &str) -> AgentId {
    AgentId::new(id)
}

pub fn stage(name: &str) -> StageName {
    StageName::new(name)
}

pub fn complete() -> Action {
    Action::Complete { result: Some(serde_json::json!({"ok": true})), report: Report::default() }
}

pub fn handoff_to(to: &str) -> Action {
    Action::Handoff { to_stage: stage(to), report: Report::default() }
}

pub fn release() -> Action {
    Action::Release { note: None }
}

pub fn fail(retryable: bool) -> Action {
    Action::Fail { error: "it broke".into(), retryable }
}

pub fn heartbeat(lease_ms: Option<Millis>) -> Action {
    Action::Heartbeat { lease_ms, note: None }
}

pub fn spawn(stages: &[&str], mode: JoinMode, within_ms: Millis) -> Action {
    Action::Spawn {
        children: stages
            .iter()
            .map(|s| NewChild {
                stage: stage(s),
                payload: format!(r#"{{"child_of_stage":"{s}"}}"#),
                priority: 0,
                labels: BTreeMap::new(),
            })
            .collect(),
        join: JoinSpec { mode, within_ms },
    }
}

/// Every action kind, for checks that each one is fenced.
pub fn every_action() -> Vec<Action> {
    vec![
        heartbeat(None),
        handoff_to("b"),
        complete(),
        release(),
        fail(true),
        spawn(&["b"], JoinMode::All, 1_000),
    ]
}

/// A request key of `principal`, whose fingerprint stands for `request`.
pub fn request_key(principal: &str, key: &str, request: &str) -> RequestKey {
    RequestKey { principal: principal.into(), key: key.into(), fingerprint: Hash::of(request.as_bytes()) }
}

/// A submit of `{}` into `stage`, as an `Op`.
pub fn submit_op(stage: &str) -> Op {
    Op::Submit(new_task(stage, "{}"))
}

pub fn claim_op(agent_id: &str, stages: &[&str], max: usize) -> Op {
    Op::Claim(ClaimRequest {
        agent: agent(agent_id),
        stages: stages.iter().map(|s| stage(s)).collect(),
        max,
        lease_ms: None,
        only: None,
        credential: None,
    })
}

/// `action` by the grant's holder with the grant's epoch, as an `Op`.
pub fn act_op(grant: &Grant, action: Action) -> Op {
    Op::Act(ActRequest {
        task: grant.task.id,
        agent: grant.task.holder().expect("a grant names its holder").clone(),
        epoch: grant.epoch,
        action,
        claim_next: None,
        caller: None,
    })
}

#[track_caller]
pub fn ok<T>(result: Result<T, Error>) -> T {
    result.unwrap_or_else(|e| panic!("store call failed: {e:?}"))
}

/// The refusal in `result`, which must carry `code`.
#[track_caller]
pub fn refused<T: Debug>(result: Result<T, Error>, code: &str) -> Rejection {
    match result {
        Err(Error::Rejected(rejection)) if rejection.code() == code => rejection,
        other => panic!("expected a refusal with code {code}, got {other:?}"),
    }
}

#[track_caller]
fn assert_limit(rejection: &Rejection, name: &str) {
    match rejection {
        Rejection::LimitExceeded { limit, .. } => assert_eq!(limit, name),
        other => panic!("expected limit {name}, got {other:?}"),
    }
}

#[track_caller]
fn assert_field(rejection: &Rejection, name: &str) {
    match rejection {
        Rejection::InvalidRequest { field, .. } => assert_eq!(field, name),
        other => panic!("expected an invalid {name}, got {other:?}"),
    }
}

/// A waiting task's custodian and wait, or a panic.
#[track_caller]
fn waiting(task: &Task) -> (&Custodian, &Wait, &Option<Handoff>) {
    match &task.state {
        TaskState::Waiting { custodian, wait, handoff, .. } => (custodian, wait, handoff),
        other => panic!("expected task {} waiting, it is {other:?}", task.id),
    }
}

#[track_caller]
fn assert_offered(task: &Task, in_stage: &str, custodian: Custodian, due_at: Millis) {
    assert_eq!(task.stage.as_str(), in_stage, "task {} stage", task.id);
    let (c, wait, _) = waiting(task);
    assert_eq!(c, &custodian, "task {} custodian", task.id);
    assert_eq!(wait, &Wait::Offered { due_at }, "task {} wait", task.id);
    assert!(task.is_ready());
}

#[track_caller]
fn join_of(task: &Task) -> (AgentId, baton_core::Join) {
    match &task.state {
        TaskState::Blocked { custodian, join } => (custodian.clone(), join.clone()),
        other => panic!("expected task {} blocked, it is {other:?}", task.id),
    }
}

// ---------------------------------------------------------------- submit

/// A submit creates a waiting task in its stage, in the submitter's custody,
/// due when the stage's `accept_within` runs out, with one event.
pub fn submit_creates_a_waiting_task<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let submitted = cx.submit(new_task("a", r#"{"n": 1}"#).priority(3));
    assert!(submitted.created);
    let task = submitted.task;
    assert_eq!(task.stage, stage("a"));
    assert_eq!(task.priority, 3);
    assert_eq!((task.revision, task.epoch, task.attempts, task.reoffers), (1, 0, 0, 0));
    assert_eq!((task.created_at, task.updated_at), (T0, T0));
    assert_eq!(task.parent, None);
    assert_eq!(
        task.state,
        TaskState::Waiting {
            custodian: Custodian::Submitter(Actor::Principal("submitter".into())),
            since: T0,
            wait: Wait::Offered { due_at: T0 + ACCEPT_MS },
            handoff: None,
        }
    );
    let view = cx.view(task.id);
    assert_eq!(view.task, task);
    assert_eq!(view.payload, r#"{"n": 1}"#, "the payload is stored as given");
    let history = cx.history(task.id);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, EventKind::Submitted);
    assert_eq!(history[0].after, task);
    assert_eq!(history[0].actor, Actor::Principal("submitter".into()));
    assert_eq!(view.head, history[0].hash);
    assert_eq!(cx.next_due(), Some(T0 + ACCEPT_MS));
    let unknown = TaskId(uuid::Uuid::now_v7());
    assert_eq!(ok(block_on(cx.store().get(unknown))), None);
    assert_eq!(cx.ready.take(), BTreeSet::from(["a".to_owned()]));
    cx.finish();
}

/// The same idempotency key with the same body returns the existing task,
/// as it is now, and writes nothing; keys are unique per namespace.
pub fn submit_repeated_key_returns_the_existing_task<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let request = new_task("a", r#"{"order": 7}"#).key("order-7");
    let first = cx.submit(request.clone());
    assert!(first.created);
    cx.advance(1_000);
    let before = cx.snapshot();
    let again = cx.submit(request.clone());
    assert!(!again.created);
    assert_eq!(again.task, first.task);
    assert_eq!(cx.snapshot(), before, "a repeated submit writes nothing");
    // The repeat returns the task as it is now, not as it was created.
    let grant = cx.claim_one("w", "a");
    let later = cx.submit(request.clone());
    assert!(!later.created);
    assert_eq!(later.task.id, first.task.id);
    assert_eq!(later.task, grant.task);
    assert_eq!(cx.history(first.task.id).len(), 2);
    // Another namespace has its own keys.
    let other = cx.submit(NewTask { namespace: "other".into(), ..request });
    assert!(other.created);
    assert_ne!(other.task.id, first.task.id);
    assert_eq!(cx.list(TaskFilter::default()).len(), 2);
    cx.finish();
}

/// The same key with another body is refused with `idempotency_conflict`.
pub fn submit_key_with_another_body_conflicts<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let first = cx.submit(new_task("a", r#"{"order": 7}"#).key("order-7"));
    for other in [
        new_task("a", r#"{"order": 8}"#).key("order-7"),
        new_task("b", r#"{"order": 7}"#).key("order-7"),
        new_task("a", r#"{"order": 7}"#).key("order-7").priority(9),
    ] {
        let rejection = cx.refuses("idempotency_conflict", |cx| cx.try_submit(other));
        assert_eq!(rejection, Rejection::IdempotencyConflict { key: "order-7".into() });
    }
    assert_eq!(cx.list(TaskFilter::default()), vec![first.task]);
    cx.finish();
}

/// Malformed submits are refused with the right code; no task, event or key is written.
pub fn submit_refusals_write_nothing<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.payload_bytes_max = 64;
    let cx = Case::<H>::open(rules);
    let key = "refused-key";
    let r = cx.refuses("invalid_request", |cx| cx.try_submit(new_task("a", "{not json").key(key)));
    assert_field(&r, "payload");
    let r = cx.refuses("invalid_request", |cx| cx.try_submit(new_task("a", "").key(key)));
    assert_field(&r, "payload");
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(64));
    let r = cx.refuses("limit_exceeded", |cx| cx.try_submit(new_task("a", &big).key(key)));
    assert_limit(&r, "payload_bytes_max");
    let r = cx.refuses("invalid_request", |cx| cx.try_submit(new_task("bad stage", "{}").key(key)));
    assert_field(&r, "stage");
    let r = cx.refuses("invalid_request", |cx| cx.try_submit(new_task("", "{}").key(key)));
    assert_field(&r, "stage");
    let long = "s".repeat(129);
    let r = cx.refuses("limit_exceeded", |cx| cx.try_submit(new_task(&long, "{}").key(key)));
    assert_limit(&r, "stage_bytes_max");
    let r = cx.refuses("invalid_request", |cx| cx.try_submit(new_task("a", "{}").key("")));
    assert_field(&r, "idempotency_key");
    let orphan = NewTask { parent: Some(TaskId(uuid::Uuid::now_v7())), ..new_task("a", "{}") };
    cx.refuses("not_found", |cx| cx.try_submit(orphan));
    assert_eq!(cx.list(TaskFilter::default()), vec![]);
    assert_eq!(cx.next_due(), None);
    // None of the refusals took the key.
    let submitted = cx.submit(new_task("a", "{}").key(key));
    assert!(submitted.created);
    assert_eq!(cx.list(TaskFilter::default()).len(), 1);
    cx.finish();
}

// ---------------------------------------------------------------- claim

/// Claims take priority first, then the earliest deadline (none last), then
/// the oldest task, across all the stages asked for; a lease and epoch 1 each.
pub fn claim_orders_by_priority_then_deadline_then_age<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let with_deadline = |stage: &str, deadline: Option<Millis>| NewTask { deadline, ..new_task(stage, "{}") };
    let old_a = cx.submit(with_deadline("a", None)).task.id;
    let late_b = cx.submit(with_deadline("b", Some(T0 + 100_000))).task.id;
    let early_a = cx.submit(with_deadline("a", Some(T0 + 50_000))).task.id;
    let urgent_b = cx.submit(new_task("b", "{}").priority(5)).task.id;
    let newer_a = cx.submit(with_deadline("a", None)).task.id;
    let newest_b = cx.submit(with_deadline("b", None)).task.id;
    let low_a = cx.submit(new_task("a", "{}").priority(-1)).task.id;
    assert_eq!(cx.claim("w", &["c"], 5), vec![], "nothing ready in c");
    let expected = [urgent_b, early_a, late_b, old_a, newer_a, newest_b, low_a];
    for (i, want) in expected.iter().enumerate() {
        cx.advance(10);
        let grants = cx.claim("w", &["a", "b"], 1);
        assert_eq!(grants.len(), 1);
        let got = &grants[0];
        assert_eq!(got.task.id, *want, "claim number {} took the wrong task", i + 1);
        assert_eq!(got.epoch, 1);
        assert_eq!(got.lease_expires_at, cx.now() + LEASE_MS);
        assert_eq!(got.task.holder(), Some(&agent("w")));
    }
    assert_eq!(cx.claim("w", &["a", "b"], 1), vec![]);
    cx.finish();
}

/// A claim takes at most `max` tasks and `claim_max` bounds `max`;
/// malformed claims are refused and lease nothing.
pub fn claim_max_and_claim_limits<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.claim_max = 3;
    let cx = Case::<H>::open(rules);
    let ids: Vec<TaskId> = (0..5).map(|_| cx.submit_to("a").id).collect();
    let r = cx.refuses("limit_exceeded", |cx| cx.try_claim("w", &["a"], 0, None));
    assert_limit(&r, "claim_max");
    let r = cx.refuses("limit_exceeded", |cx| cx.try_claim("w", &["a"], 4, None));
    assert_limit(&r, "claim_max");
    let r = cx.refuses("invalid_request", |cx| cx.try_claim("w", &[], 1, None));
    assert_field(&r, "stages");
    let r = cx.refuses("invalid_request", |cx| cx.try_claim("w", &["a", "has space"], 1, None));
    assert_field(&r, "stages");
    let r = cx.refuses("limit_exceeded", |cx| cx.try_claim("w", &["a"], 1, Some(10)));
    assert_limit(&r, "lease_ttl_ms_min");
    let r = cx.refuses("limit_exceeded", |cx| cx.try_claim("w", &["a"], 1, Some(25 * 3_600_000)));
    assert_limit(&r, "lease_ttl_ms_max");
    let first = cx.claim("w", &["a"], 3);
    assert_eq!(first.iter().map(|g| g.task.id).collect::<Vec<_>>(), ids[..3]);
    let second = ok(cx.try_claim("w", &["a"], 3, Some(2_000)));
    assert_eq!(second.iter().map(|g| g.task.id).collect::<Vec<_>>(), ids[3..]);
    assert!(second.iter().all(|g| g.lease_expires_at == T0 + 2_000), "the asked-for lease length");
    assert_eq!(cx.claim("w", &["a"], 3), vec![], "an empty stage gives an empty claim");
    assert_eq!(cx.list(TaskFilter { state: Some(StateName::Held), ..TaskFilter::default() }).len(), 5);
    cx.finish();
}

/// An agent holds at most `leases_per_agent_max` leases; a claim is cut to
/// the room left, and refused with `too_many_leases` when there is none.
pub fn claim_respects_leases_per_agent_max<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.leases_per_agent_max = 2;
    let cx = Case::<H>::open(rules);
    for _ in 0..5 {
        cx.submit_to("a");
    }
    let alice = cx.claim("alice", &["a"], 3);
    assert_eq!(alice.len(), 2, "cut to the room left");
    let r = cx.refuses("too_many_leases", |cx| cx.try_claim("alice", &["a"], 1, None));
    assert_eq!(r, Rejection::TooManyLeases { max: 2 });
    assert_eq!(cx.claim("bob", &["a"], 3).len(), 2, "the limit is per agent");
    cx.act(&alice[0], complete());
    assert_eq!(cx.claim("alice", &["a"], 3).len(), 1, "room again after a complete");
    cx.finish();
}

/// A refused claim leases none of its candidates, and the handoff a lease
/// would have accepted stays pending. (Stage policies whose lease is outside
/// the limits are refused when the store opens, so a claim is decided for
/// every candidate before any lease is written.)
pub fn claim_refused_midway_rolls_back_every_lease<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let first = cx.submit(new_task("a", "{}").priority(9)).task;
    let sender = cx.claim_one("alice", "a");
    let handoff_id = cx.act(&sender, handoff_to("b")).handoff.expect("handoff id");
    cx.submit_to("c");
    let too_long = Some(suite_rules().limits.lease_ttl_ms_max + 1);
    let r = cx.refuses("limit_exceeded", |cx| cx.try_claim("w", &["b", "c"], 2, too_long));
    assert_limit(&r, "lease_ttl_ms_max");
    assert!(cx.task(first.id).is_ready(), "the first task's lease was rolled back");
    assert_eq!(cx.handoff(handoff_id).outcome, HandoffOutcome::Pending, "and its handoff's acceptance");
    cx.finish();
}

// ---------------------------------------------------------------- holder calls

/// A heartbeat moves the lease's expiry to now + lease and keeps the epoch;
/// the old expiry passes without effect.
pub fn heartbeat_extends_the_lease<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one_for("w", "a", Some(5_000));
    assert_eq!(grant.lease_expires_at, T0 + 5_000);
    cx.advance(4_000);
    let out = cx.act(&grant, Action::Heartbeat { lease_ms: None, note: Some("half way".into()) });
    let TaskState::Held { lease } = &out.task.state else { panic!("still held") };
    assert_eq!(lease.expires_at, T0 + 4_000 + LEASE_MS, "the stage's lease from now");
    assert_eq!(lease.epoch, 1);
    assert_eq!(lease.claimed_at, T0);
    let last = cx.last_event(id);
    assert_eq!(last.kind, EventKind::Heartbeat);
    assert_eq!(last.note.as_deref(), Some("half way"));
    assert_eq!(cx.next_due(), Some(T0 + 4_000 + LEASE_MS));
    cx.advance(6_000);
    assert_eq!(cx.fire(10), 0, "the original expiry has passed without effect");
    assert_eq!(cx.task(id).holder(), Some(&agent("w")));
    let r = cx.refuses("limit_exceeded", |cx| cx.try_act(&grant, heartbeat(Some(10))));
    assert_limit(&r, "lease_ttl_ms_min");
    let out = cx.act(&grant, heartbeat(Some(20_000)));
    assert_eq!(out.task.due_at(), Some(cx.now() + 20_000));
    assert_eq!(out.task.epoch, 1);
    cx.finish();
}

/// A holder whose epoch is no longer current gets `lease_lost` carrying the
/// current epoch and state, for every action, and nothing changes.
pub fn stale_epoch_gets_lease_lost_and_changes_nothing<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let old = cx.claim_one_for("alice", "a", Some(5_000));
    cx.advance(5_000);
    assert_eq!(cx.fire(10), 1, "the lease expired");
    for action in every_action() {
        let r = cx.refuses("lease_lost", |cx| cx.try_act(&old, action));
        assert_eq!(r, Rejection::LeaseLost { task: id, current_epoch: 2, state: StateName::Waiting });
    }
    let current = cx.claim_one("bob", "a");
    assert_eq!(current.epoch, 3);
    for action in every_action() {
        let r = cx.refuses("lease_lost", |cx| cx.try_act(&old, action));
        assert_eq!(r, Rejection::LeaseLost { task: id, current_epoch: 3, state: StateName::Held });
    }
    // A future epoch is as wrong as a past one.
    let r = cx.refuses("lease_lost", |cx| cx.try_act_as(id, "bob", 4, complete(), None));
    assert_eq!(r, Rejection::LeaseLost { task: id, current_epoch: 3, state: StateName::Held });
    cx.act(&current, complete());
    let r = cx.refuses("lease_lost", |cx| cx.try_act(&current, complete()));
    assert_eq!(r, Rejection::LeaseLost { task: id, current_epoch: 3, state: StateName::Done });
    let missing = TaskId(uuid::Uuid::now_v7());
    cx.refuses("not_found", |cx| cx.try_act_as(missing, "bob", 1, complete(), None));
    cx.finish();
}

/// Another agent calling with the current epoch gets `not_holder`; nothing changes.
pub fn other_agent_gets_not_holder<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    for action in every_action() {
        let r = cx.refuses("not_holder", |cx| cx.try_act_as(id, "mallory", grant.epoch, action, None));
        assert_eq!(r, Rejection::NotHolder { task: id });
    }
    assert_eq!(cx.task(id), grant.task);
    cx.finish();
}

/// A handoff moves the task to the target stage in the sender's custody with
/// a pending handoff; the first claim there makes it `accepted` by the
/// claimer, and a later lease expiry does not reopen it.
pub fn handoff_is_pending_until_the_first_claim<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.refuses("invalid_request", |cx| cx.try_act(&grant, handoff_to("not a stage")));
    cx.ready.take();
    cx.advance(1_000);
    let report = Report {
        note: Some("needs review".into()),
        findings: Some(serde_json::json!({"score": 7})),
        confidence: Some(0.9),
    };
    let out = cx.act(&grant, Action::Handoff { to_stage: stage("b"), report });
    let handoff_id = out.handoff.expect("a handoff has an id");
    let sent_at = T0 + 1_000;
    let expected = Handoff {
        id: handoff_id,
        task: id,
        from_stage: stage("a"),
        to_stage: stage("b"),
        from_agent: agent("alice"),
        at: sent_at,
        outcome: HandoffOutcome::Pending,
    };
    assert_eq!(cx.handoff(handoff_id), expected);
    let task = cx.task(id);
    assert_eq!(out.task, task);
    assert_offered(&task, "b", Custodian::Agent(agent("alice")), sent_at + ACCEPT_MS);
    assert_eq!(waiting(&task).2, &Some(expected.clone()));
    assert_eq!(task.epoch, 1, "a handoff does not move the epoch");
    let event = cx.last_event(id);
    assert_eq!(event.kind, EventKind::HandedOff);
    assert_eq!(event.handoff, Some(handoff_id));
    assert_eq!(event.note.as_deref(), Some("needs review"));
    assert_eq!(event.findings, Some(serde_json::json!({"score": 7})));
    assert_eq!(event.confidence, Some(0.9));
    assert_eq!(event.actor, Actor::Agent(agent("alice")));
    assert_eq!(cx.ready.take(), BTreeSet::from(["b".to_owned()]));
    assert_eq!(cx.claim("carol", &["a"], 1), vec![], "the task left stage a");

    cx.advance(2_000);
    let accepted_at = cx.now();
    let bob = cx.claim_one("bob", "b");
    assert_eq!(bob.epoch, 2);
    let accepted = HandoffOutcome::Accepted { by: agent("bob"), at: accepted_at, epoch: 2 };
    assert_eq!(cx.handoff(handoff_id), Handoff { outcome: accepted.clone(), ..expected });
    assert_eq!(cx.last_event(id).handoff, Some(handoff_id), "the claim event names the handoff");

    cx.advance(LEASE_MS);
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.handoff(handoff_id).outcome, accepted, "an expiry does not reopen the handoff");
    let task = cx.task(id);
    let (custodian, _, open) = waiting(&task);
    assert_eq!((custodian, open), (&Custodian::Stage(stage("b")), &None));
    cx.finish();
}

/// Complete ends the task: done with its result, no due time, no custodian.
pub fn complete_finishes_the_task<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("w", "a");
    cx.advance(500);
    let report = Report { note: Some("all good".into()), findings: None, confidence: Some(1.0) };
    let result = serde_json::json!({"answer": 42});
    let out = cx.act(&grant, Action::Complete { result: Some(result.clone()), report });
    assert_eq!(out.task.state, TaskState::Done { at: T0 + 500, result: Some(result) });
    assert_eq!(cx.task(id), out.task);
    assert_eq!((out.task.custodian(), out.task.due_at()), (None, None));
    assert_eq!(out.handoff, None);
    let event = cx.last_event(id);
    assert_eq!(
        (event.kind, event.note.as_deref(), event.confidence),
        (EventKind::Completed, Some("all good"), Some(1.0))
    );
    assert_eq!(cx.next_due(), None);
    let done = cx.list(TaskFilter { state: Some(StateName::Done), ..TaskFilter::default() });
    assert_eq!(done.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    cx.finish();
}

/// Release gives the task back to its stage, in the stage's custody, with the
/// attempt counted; the next claim gets the next epoch.
pub fn release_returns_the_task_to_its_stage<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.ready.take();
    cx.advance(100);
    let out = cx.act(&grant, Action::Release { note: Some("busy".into()) });
    assert_offered(&out.task, "a", Custodian::Stage(stage("a")), T0 + 100 + ACCEPT_MS);
    assert_eq!((out.task.attempts, out.task.epoch), (1, 1));
    let event = cx.last_event(id);
    assert_eq!((event.kind, event.note.as_deref()), (EventKind::Released, Some("busy")));
    assert_eq!(cx.ready.take(), BTreeSet::from(["a".to_owned()]));
    let again = cx.claim_one("bob", "a");
    assert_eq!(again.epoch, 2);
    cx.finish();
}

/// A retryable failure backs off (1 s, then 2 s), is not claimable meanwhile,
/// comes back at `retry_at` (`retry_ready`), and the last allowed attempt
/// climbs the ladder: escalation to the human stage with an alert.
pub fn retryable_fail_backs_off_then_climbs_the_ladder<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    for (attempt, backoff) in [(1u32, 1_000), (2, 2_000)] {
        let grant = cx.claim_one("w", "a");
        assert_eq!(grant.epoch, u64::from(attempt));
        let failed_at = cx.now();
        let out = cx.act(&grant, fail(true));
        assert_eq!(out.task.attempts, attempt);
        let (custodian, wait, _) = waiting(&out.task);
        assert_eq!(custodian, &Custodian::Stage(stage("a")));
        assert_eq!(wait, &Wait::Backoff { retry_at: failed_at + backoff });
        assert_eq!(cx.last_event(id).note.as_deref(), Some("it broke"));
        assert_eq!(cx.claim("w", &["a"], 1), vec![], "not claimable while backing off");
        assert_eq!(cx.next_due(), Some(failed_at + backoff));
        cx.advance(backoff - 1);
        assert_eq!(cx.fire(10), 0, "not due before retry_at");
        cx.ready.take();
        cx.advance(1);
        assert_eq!(cx.fire(10), 1);
        assert_eq!(cx.last_event(id).kind, EventKind::RetryReady);
        assert_offered(&cx.task(id), "a", Custodian::Stage(stage("a")), cx.now() + ACCEPT_MS);
        assert_eq!(cx.ready.take(), BTreeSet::from(["a".to_owned()]), "retry_ready wakes claimers");
    }
    let grant = cx.claim_one("w", "a");
    let out = cx.act(&grant, fail(true));
    assert_offered(&out.task, HUMANS, Custodian::Stage(stage(HUMANS)), cx.now() + 24 * 3_600_000);
    assert_eq!(out.task.attempts, 0, "attempts restart at the new stage");
    assert_eq!(
        cx.kinds(id),
        [
            EventKind::Submitted,
            EventKind::Claimed,
            EventKind::Failed,
            EventKind::RetryReady,
            EventKind::Claimed,
            EventKind::Failed,
            EventKind::RetryReady,
            EventKind::Claimed,
            EventKind::Escalated,
        ]
    );
    cx.assert_alert(id, HUMANS);
    cx.finish();
}

/// A failure that is not retryable escalates at once, skipping retries and
/// the stage's fallback.
pub fn non_retryable_fail_escalates_at_once<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("triage").id;
    let grant = cx.claim_one("w", "triage");
    let out = cx.act(&grant, fail(false));
    assert_eq!(out.task.stage, stage(HUMANS));
    assert_eq!(waiting(&out.task).0, &Custodian::Stage(stage(HUMANS)));
    assert_eq!(out.task.reroutes, 0);
    assert_eq!(cx.last_event(id).kind, EventKind::Escalated);
    cx.assert_alert(id, HUMANS);
    cx.assert_alert_count(1);
    cx.finish();
}

/// A lease that lapses (clock past `expires_at`, then `fire_due`) returns the
/// task to its stage in the stage's custody with the next epoch; the old
/// holder then gets `lease_lost`.
pub fn lease_expiry_returns_the_task_with_the_next_epoch<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one_for("alice", "a", Some(5_000));
    assert_eq!(cx.next_due(), Some(T0 + 5_000));
    cx.advance(4_999);
    assert_eq!(cx.fire(10), 0);
    cx.ready.take();
    cx.advance(1);
    assert_eq!(cx.fire(10), 1);
    let task = cx.task(id);
    assert_offered(&task, "a", Custodian::Stage(stage("a")), T0 + 5_000 + ACCEPT_MS);
    assert_eq!((task.epoch, task.attempts), (2, 1));
    let event = cx.last_event(id);
    assert_eq!((event.kind, &event.actor), (EventKind::LeaseExpired, &Actor::System));
    assert_eq!(cx.ready.take(), BTreeSet::from(["a".to_owned()]));
    let r = cx.refuses("lease_lost", |cx| cx.try_act(&grant, complete()));
    assert_eq!(r, Rejection::LeaseLost { task: id, current_epoch: 2, state: StateName::Waiting });
    assert_eq!(cx.claim_one("bob", "a").epoch, 3);
    cx.finish();
}

/// Lease expiries count as attempts; the last allowed one climbs the ladder,
/// here to the stage's fallback (`flaky` allows 2 attempts, reroutes to `fallback`).
pub fn lease_expiries_climb_to_the_fallback_stage<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("flaky").id;
    cx.claim_one("w", "flaky");
    cx.advance(LEASE_MS);
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.task(id).attempts, 1);
    cx.claim_one("w", "flaky");
    cx.advance(LEASE_MS);
    assert_eq!(cx.fire(10), 1);
    let task = cx.task(id);
    assert_offered(&task, "fallback", Custodian::Stage(stage("fallback")), cx.now() + 500);
    assert_eq!((task.epoch, task.attempts, task.reroutes), (4, 0, 1));
    assert_eq!(cx.last_event(id).kind, EventKind::Rerouted);
    cx.assert_alert_count(0);
    cx.finish();
}

/// Releases count as attempts too; the last allowed one escalates (stage `a`
/// has no fallback).
pub fn release_at_max_attempts_escalates<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    for attempt in 1..=3u32 {
        let grant = cx.claim_one("w", "a");
        let out = cx.act(&grant, release());
        if attempt < 3 {
            assert_eq!((out.task.stage.as_str(), out.task.attempts), ("a", attempt));
        } else {
            assert_eq!(out.task.stage, stage(HUMANS));
        }
    }
    assert_eq!(cx.last_event(id).kind, EventKind::Escalated);
    cx.assert_alert(id, HUMANS);
    cx.finish();
}

/// The ladder of an unclaimed task: re-offer `reoffers` times (another
/// `accept_within` each, waking claimers), then reroute to the fallback stage,
/// then escalate to the human stage with an alert; each step an event. The
/// pending handoff becomes `rerouted`. Human stages only re-offer.
pub fn ladder_reoffers_then_reroutes_then_escalates<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let handoff_id = cx.act(&grant, handoff_to("triage")).handoff.expect("handoff id");
    let sent_at = cx.now();
    cx.ready.take();
    for reoffer in 1..=2u32 {
        cx.advance(999);
        assert_eq!(cx.fire(10), 0);
        cx.advance(1);
        assert_eq!(cx.fire(10), 1);
        let task = cx.task(id);
        assert_eq!(task.reoffers, reoffer);
        assert_offered(&task, "triage", Custodian::Agent(agent("alice")), cx.now() + 1_000);
        assert_eq!(cx.last_event(id).kind, EventKind::Reoffered);
        assert_eq!(cx.ready.take(), BTreeSet::from(["triage".to_owned()]), "a re-offer wakes claimers");
        assert_eq!(cx.handoff(handoff_id).outcome, HandoffOutcome::Pending);
    }
    cx.advance(1_000);
    assert_eq!(cx.fire(10), 1);
    let rerouted_at = cx.now();
    let task = cx.task(id);
    assert_offered(&task, "fallback", Custodian::Stage(stage("fallback")), rerouted_at + 500);
    assert_eq!((task.reroutes, task.reoffers), (1, 0));
    assert_eq!(cx.last_event(id).kind, EventKind::Rerouted);
    assert_eq!(cx.last_event(id).handoff, Some(handoff_id));
    let outcome = HandoffOutcome::Rerouted { to: stage("fallback"), at: rerouted_at };
    assert_eq!(cx.handoff(handoff_id).outcome, outcome);
    assert_eq!(cx.ready.take(), BTreeSet::from(["fallback".to_owned()]));
    cx.assert_alert_count(0);

    cx.advance(500);
    assert_eq!(cx.fire(10), 1);
    let task = cx.task(id);
    assert_offered(&task, HUMANS, Custodian::Stage(stage(HUMANS)), cx.now() + 24 * 3_600_000);
    assert_eq!(cx.last_event(id).kind, EventKind::Escalated);
    assert_eq!(cx.handoff(handoff_id).outcome, outcome, "the outcome was final at the reroute");
    cx.assert_alert(id, HUMANS);
    cx.assert_alert_count(1);

    cx.advance(24 * 3_600_000);
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.task(id).stage, stage(HUMANS), "a human stage re-offers for ever");
    assert_eq!(
        cx.kinds(id),
        [
            EventKind::Submitted,
            EventKind::Claimed,
            EventKind::HandedOff,
            EventKind::Reoffered,
            EventKind::Reoffered,
            EventKind::Rerouted,
            EventKind::Escalated,
            EventKind::Reoffered,
        ]
    );
    assert!(cx.history(id)[3..].iter().all(|e| e.actor == Actor::System));
    assert_eq!(cx.handoff(handoff_id).at, sent_at);
    cx.finish();
}

/// A handoff nobody accepts, into a stage without re-offers or fallback,
/// becomes `escalated`, with an alert.
pub fn pending_handoff_escalated_by_the_ladder<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let handoff_id = cx.act(&grant, handoff_to("fallback")).handoff.expect("handoff id");
    cx.advance(500);
    assert_eq!(cx.fire(10), 1);
    let outcome = HandoffOutcome::Escalated { to: stage(HUMANS), at: cx.now() };
    assert_eq!(cx.handoff(handoff_id).outcome, outcome);
    assert_eq!(cx.task(id).stage, stage(HUMANS));
    cx.assert_alert(id, HUMANS);
    cx.finish();
}

// ---------------------------------------------------------------- spawn and join

/// Spawn blocks the parent in its spawner's custody and creates the children
/// (parent id set, waiting in their stages); the parent waits for all of
/// them, then returns to waiting in its stage, still the spawner's.
pub fn spawn_join_all<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let parent = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.ready.take();
    let out = cx.act(&grant, spawn(&["b", "c", "d"], JoinMode::All, 60_000));
    assert_eq!(out.children.len(), 3);
    let (custodian, join) = join_of(&out.task);
    assert_eq!(custodian, agent("alice"));
    assert_eq!((join.mode, join.children, join.done, join.failed), (JoinMode::All, 3, 0, 0));
    assert_eq!(join.due_at, T0 + 60_000);
    assert_eq!(cx.last_event(parent).kind, EventKind::Spawned);
    for (child, in_stage) in out.children.iter().zip(["b", "c", "d"]) {
        let view = cx.view(*child);
        assert_eq!(view.task.parent, Some(parent));
        assert_eq!(view.task.submitter, Actor::Agent(agent("alice")));
        assert_eq!(view.payload, format!(r#"{{"child_of_stage":"{in_stage}"}}"#));
        assert_offered(
            &view.task,
            in_stage,
            Custodian::Submitter(Actor::Agent(agent("alice"))),
            T0 + ACCEPT_MS,
        );
    }
    let listed: HashSet<TaskId> =
        cx.list(TaskFilter { parent: Some(parent), ..TaskFilter::default() }).iter().map(|t| t.id).collect();
    assert_eq!(listed, out.children.iter().copied().collect());
    assert_eq!(cx.ready.take(), BTreeSet::from(["b".to_owned(), "c".to_owned(), "d".to_owned()]));
    cx.refuses("lease_lost", |cx| cx.try_act(&grant, complete()));
    // The parent counts as blocked in its stage while its children run.
    cx.assert_gauges_match();

    let grants = cx.claim("bob", &["b", "c", "d"], 3);
    assert_eq!(grants.len(), 3);
    for (done, child) in grants.iter().enumerate() {
        cx.advance(100);
        cx.act(child, complete());
        let task = cx.task(parent);
        if done < 2 {
            assert_eq!(join_of(&task).1.done, u32::try_from(done).expect("small") + 1);
            assert_eq!(cx.last_event(parent).kind, EventKind::ChildSettled);
        } else {
            assert_offered(&task, "a", Custodian::Agent(agent("alice")), cx.now() + ACCEPT_MS);
            assert_eq!(cx.last_event(parent).kind, EventKind::Joined);
            assert_eq!(cx.ready.take(), BTreeSet::from(["a".to_owned()]));
        }
    }
    assert_eq!(cx.claim_one("alice", "a").epoch, 2);
    cx.finish();
}

/// An `any` join holds at the first child done; later children change nothing.
pub fn spawn_join_any<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let parent = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let out = cx.act(&grant, spawn(&["b", "c"], JoinMode::Any, 60_000));
    let first = cx.claim_one("bob", "b");
    cx.act(&first, complete());
    assert_offered(&cx.task(parent), "a", Custodian::Agent(agent("alice")), cx.now() + ACCEPT_MS);
    let parent_before = (cx.view(parent), cx.history(parent));
    let second = cx.claim_one("carol", "c");
    assert_eq!(second.task.id, out.children[1]);
    cx.act(&second, complete());
    assert_eq!((cx.view(parent), cx.history(parent)), parent_before, "a late child changes nothing");
    cx.finish();
}

/// A quorum join counts done children and tolerates failures until the
/// quorum becomes impossible.
pub fn spawn_join_quorum<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let parent = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let out = cx.act(&grant, spawn(&["b", "b", "b"], JoinMode::Quorum(2), 60_000));
    cx.cancel(out.children[0], "not needed");
    let join = join_of(&cx.task(parent)).1;
    assert_eq!((join.done, join.failed), (0, 1));
    let grants = cx.claim("bob", &["b"], 2);
    cx.act(&grants[0], complete());
    assert_eq!(join_of(&cx.task(parent)).1.done, 1);
    cx.act(&grants[1], complete());
    assert_offered(&cx.task(parent), "a", Custodian::Agent(agent("alice")), cx.now() + ACCEPT_MS);
    assert_eq!(cx.last_event(parent).kind, EventKind::Joined);
    cx.finish();
}

/// A cancelled child that makes the join impossible escalates the parent.
pub fn cancelled_child_making_the_join_impossible_escalates_the_parent<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let parent = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let out = cx.act(&grant, spawn(&["b", "c"], JoinMode::All, 60_000));
    cx.cancel(out.children[0], "wrong patient");
    let task = cx.task(parent);
    assert_offered(&task, HUMANS, Custodian::Stage(stage(HUMANS)), cx.now() + 24 * 3_600_000);
    assert_eq!(cx.last_event(parent).kind, EventKind::Escalated);
    cx.assert_alert(parent, HUMANS);
    assert!(cx.task(out.children[1]).is_ready(), "the other child lives on");
    let parent_before = (cx.view(parent), cx.history(parent));
    let other = cx.claim_one("bob", "c");
    cx.act(&other, complete());
    assert_eq!((cx.view(parent), cx.history(parent)), parent_before);
    cx.finish();
}

/// A join whose deadline passes escalates the parent; the children live on.
pub fn join_deadline_escalates_the_parent<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let parent = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let out = cx.act(&grant, spawn(&["b", "c"], JoinMode::All, 5_000));
    assert_eq!(cx.next_due(), Some(T0 + 5_000));
    cx.advance(4_999);
    assert_eq!(cx.fire(10), 0);
    cx.advance(1);
    assert_eq!(cx.fire(10), 1, "only the parent is due");
    let task = cx.task(parent);
    assert_eq!(task.stage, stage(HUMANS));
    assert_eq!(cx.last_event(parent).kind, EventKind::Escalated);
    cx.assert_alert(parent, HUMANS);
    for child in &out.children {
        assert!(cx.task(*child).is_ready());
    }
    let parent_before = (cx.view(parent), cx.history(parent));
    let child = cx.claim_one("bob", "b");
    cx.act(&child, complete());
    assert_eq!((cx.view(parent), cx.history(parent)), parent_before);
    cx.finish();
}

/// Malformed spawns are refused; neither the parent nor any child is written,
/// even when the refusal comes after the parent's change (a bad child stage).
pub fn spawn_refusals_write_nothing<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.children_max = 2;
    let cx = Case::<H>::open(rules);
    cx.submit_to("a");
    let grant = cx.claim_one("alice", "a");
    let r = cx.refuses("invalid_request", |cx| cx.try_act(&grant, spawn(&[], JoinMode::All, 1_000)));
    assert_field(&r, "children");
    let r =
        cx.refuses("limit_exceeded", |cx| cx.try_act(&grant, spawn(&["b", "b", "b"], JoinMode::All, 1_000)));
    assert_limit(&r, "children_max");
    let r = cx
        .refuses("invalid_request", |cx| cx.try_act(&grant, spawn(&["b", "b"], JoinMode::Quorum(0), 1_000)));
    assert_field(&r, "join.n");
    let r = cx
        .refuses("invalid_request", |cx| cx.try_act(&grant, spawn(&["b", "b"], JoinMode::Quorum(3), 1_000)));
    assert_field(&r, "join.n");
    let r = cx.refuses("invalid_request", |cx| cx.try_act(&grant, spawn(&["b"], JoinMode::All, 0)));
    assert_field(&r, "join.within_ms");
    let r = cx.refuses("invalid_request", |cx| {
        cx.try_act(&grant, spawn(&["b", "bad stage"], JoinMode::All, 1_000))
    });
    assert_field(&r, "stage");
    assert_eq!(cx.list(TaskFilter::default()).len(), 1);
    cx.act(&grant, complete());
    cx.finish();
}

// ---------------------------------------------------------------- cancel

/// Cancel ends a waiting, held or handed-off task with its reason; a holder
/// then gets `lease_lost`, a pending handoff becomes `cancelled`, and a
/// second cancel is an `invalid_transition`.
pub fn cancel_ends_the_task<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let waiting_id = cx.submit_to("a").id;
    cx.advance(100);
    let task = cx.cancel(waiting_id, "obsolete");
    assert_eq!(task.state, TaskState::Cancelled { at: T0 + 100, reason: "obsolete".into() });
    let event = cx.last_event(waiting_id);
    assert_eq!(event.kind, EventKind::Cancelled);
    assert_eq!(event.note.as_deref(), Some("obsolete"));
    assert_eq!(event.actor, Actor::Principal("operator".into()));
    let r = cx.refuses("invalid_transition", |cx| cx.try_cancel(waiting_id, "again"));
    assert_eq!(
        r,
        Rejection::InvalidTransition {
            task: waiting_id,
            command: "cancel".into(),
            state: StateName::Cancelled
        }
    );
    assert_eq!(cx.next_due(), None);

    let held_id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.cancel(held_id, "stop");
    let r = cx.refuses("lease_lost", |cx| cx.try_act(&grant, complete()));
    assert_eq!(r, Rejection::LeaseLost { task: held_id, current_epoch: 1, state: StateName::Cancelled });

    let handed_id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    let handoff_id = cx.act(&grant, handoff_to("b")).handoff.expect("handoff id");
    cx.cancel(handed_id, "customer left");
    assert_eq!(cx.handoff(handoff_id).outcome, HandoffOutcome::Cancelled { at: cx.now() });

    let done_id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.act(&grant, complete());
    cx.refuses("invalid_transition", |cx| cx.try_cancel(done_id, "too late"));
    let live = cx.submit_to("a").id;
    let r = cx.refuses("limit_exceeded", |cx| cx.try_cancel(live, &"x".repeat(9_000)));
    assert_limit(&r, "note_bytes_max");
    cx.refuses("not_found", |cx| cx.try_cancel(TaskId(uuid::Uuid::now_v7()), "who?"));
    cx.finish();
}

// ---------------------------------------------------------------- claim next

/// Complete and handoff with `claim_next` lease the agent's next tasks in the
/// same call; when nothing is ready, or the claim part is refused, the action
/// still commits and `next` is empty.
pub fn claim_next_returns_the_next_leases_in_the_same_call<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let ids: Vec<TaskId> = (0..4).map(|_| cx.submit_to("a").id).collect();
    let first = cx.claim_one("alice", "a");
    assert_eq!(first.task.id, ids[0]);
    let out = cx.act_next(&first, complete(), &["a"], 2);
    assert_eq!(out.task.state_name(), StateName::Done);
    assert_eq!(out.next.iter().map(|g| g.task.id).collect::<Vec<_>>(), ids[1..3]);
    for grant in &out.next {
        assert_eq!(grant.epoch, 1);
        assert_eq!(cx.task(grant.task.id), grant.task);
        assert_eq!(grant.task.holder(), Some(&agent("alice")));
    }
    let out2 = cx.act_next(&out.next[0], handoff_to("b"), &["a"], 5);
    assert!(out2.handoff.is_some());
    assert_eq!(out2.next.iter().map(|g| g.task.id).collect::<Vec<_>>(), vec![ids[3]]);
    let out3 = cx.act_next(&out.next[1], complete(), &["a"], 5);
    assert_eq!(out3.next, vec![], "nothing ready: the action still commits");
    assert_eq!(cx.task(ids[2]).state_name(), StateName::Done);
    let out4 = cx.act_next(&out2.next[0], complete(), &["a"], 0);
    assert_eq!(out4.next, vec![], "a refused claim part: the action still commits");
    assert_eq!(cx.task(ids[3]).state_name(), StateName::Done);
    let from_b = cx.claim_one("bob", "b");
    let later = cx.submit_to("b").id;
    let out5 = cx.act_next(&from_b, release(), &["b"], 2);
    assert_eq!(
        out5.next.iter().map(|g| g.task.id).collect::<Vec<_>>(),
        vec![later],
        "claim-next after a release takes other work, never the task just released"
    );
    assert!(cx.task(ids[1]).is_ready(), "the released task waits for another agent");
    // A handoff into a stage the claim-next reads: the task handed off is
    // that stage's oldest, and still not the one the sender gets back.
    let in_c = cx.submit_to("c").id;
    let out6 = cx.act_next(&out5.next[0], handoff_to("c"), &["c"], 1);
    assert_eq!(out6.next.iter().map(|g| g.task.id).collect::<Vec<_>>(), vec![in_c]);
    assert!(cx.task(later).is_ready(), "the handed-off task waits in c for another agent");
    cx.finish();
}

/// Every lease carries its task's payload, read in the claim's own
/// transaction: a claim's, claim-next's, a claim of one named task's, and a
/// keyed repeat's (the agent needs no second read).
pub fn grants_carry_their_payloads<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let payloads: Vec<String> = (0..4).map(|i| format!(r#"{{"n":{i},"text":"task {i}"}}"#)).collect();
    let ids: Vec<TaskId> = payloads.iter().map(|p| cx.submit(new_task("a", p)).task.id).collect();
    let grants = cx.claim("alice", &["a"], 2);
    assert_eq!(grants.iter().map(|g| g.task.id).collect::<Vec<_>>(), ids[..2]);
    for (grant, payload) in grants.iter().zip(&payloads) {
        assert_eq!(&grant.payload, payload);
    }
    let out = cx.act_next(&grants[0], complete(), &["a"], 1);
    assert_eq!(out.next.len(), 1);
    assert_eq!((out.next[0].task.id, &out.next[0].payload), (ids[2], &payloads[2]));
    let only = ClaimRequest {
        agent: agent("bob"),
        stages: vec![stage("a")],
        max: 1,
        lease_ms: None,
        only: Some(ids[3]),
        credential: None,
    };
    let key = request_key("bob", "only", "POST /v1/claims");
    let first = cx.execute(Op::Claim(only.clone()), &key);
    let grants = first.clone().into_grants().expect("a claim");
    assert_eq!((grants[0].task.id, &grants[0].payload), (ids[3], &payloads[3]));
    cx.assert_replays(Op::Claim(only), &key, &first);
    cx.finish();
}

/// With a `caller`, the engine checks the principal against the task its
/// own transaction loaded, with the codes the API answers: a task the caller
/// may not see is missing, an operator works only human stages (and its
/// own), the fence comes before the routes, a submitter cancels and
/// messages only its own tasks. Every refusal changes nothing, and a keyed
/// repeat of an accepted call gets its first answer after the task moved on.
pub fn calls_are_checked_against_their_caller<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let alice = principal("alice", Role::Agent, &["a"], &[("a", "b")]);
    let bob = principal("bob", Role::Agent, &["a"], &[]);
    let elsewhere = principal("eve", Role::Agent, &["z"], &[]);
    let operator = principal("olga", Role::Operator, &[], &[]);
    let submitter = principal("sam", Role::Submitter, &[], &[]);
    let act = |grant: &Grant, who: &Principal, action: Action| {
        Op::Act(ActRequest {
            task: grant.task.id,
            agent: agent(&who.name),
            epoch: grant.epoch,
            action,
            claim_next: None,
            caller: Some(who.clone()),
        })
    };
    let refused_quietly = |op: Op, code: &str| {
        let before = cx.snapshot();
        refused(cx.try_execute(op, None), code);
        assert_eq!(cx.snapshot(), before, "a refused {code} changed the store");
    };
    cx.submit_to("a");
    let grant = cx.claim_one("alice", "a");
    refused_quietly(act(&grant, &elsewhere, heartbeat(None)), "not_found");
    let missing = refused(cx.try_execute(act(&grant, &elsewhere, complete()), None), "not_found");
    assert_eq!(missing, Rejection::TaskNotFound { task: grant.task.id }, "the body of a missing task");
    refused_quietly(act(&grant, &bob, heartbeat(None)), "not_holder");
    refused_quietly(act(&grant, &operator, heartbeat(None)), "forbidden");
    refused_quietly(act(&grant, &submitter, heartbeat(None)), "forbidden");
    refused_quietly(act(&grant, &alice, handoff_to("c")), "route_not_allowed");
    let stale = Grant { epoch: grant.epoch + 1, ..grant.clone() };
    refused_quietly(act(&stale, &alice, handoff_to("c")), "lease_lost");
    // Accepted along its route; a keyed repeat after the task moved on.
    let key = request_key("alice", "handoff-1", "POST /v1/tasks/{id}/handoff");
    let first = cx.execute(act(&grant, &alice, handoff_to("b")), &key);
    cx.assert_replays(act(&grant, &alice, handoff_to("b")), &key, &first);
    // An operator works tasks in human stages.
    let escalated = cx.submit_to(HUMANS);
    let held = cx.claim_one("olga", HUMANS);
    assert_eq!(held.task.id, escalated.id);
    ok(cx.try_execute(act(&held, &operator, heartbeat(None)), None));
    // A submitter cancels and messages only what it submitted.
    let own = cx.submit(NewTask { submitter: Actor::Principal("sam".into()), ..new_task("a", "{}") }).task;
    let other = cx.submit_to("a");
    let cancel = |task: TaskId, who: &Principal| {
        Op::Cancel(CancelRequest {
            task,
            actor: Actor::Principal(who.name.clone()),
            reason: "no longer needed".into(),
            caller: Some(who.clone()),
        })
    };
    let comment = |task: TaskId, who: &Principal| {
        Op::Comment(baton_core::CommentRequest {
            task,
            actor: Actor::Principal(who.name.clone()),
            note: "a note".into(),
            findings: None,
            caller: Some(who.clone()),
        })
    };
    refused_quietly(cancel(other.id, &submitter), "not_found");
    refused_quietly(comment(other.id, &submitter), "not_found");
    refused_quietly(cancel(other.id, &alice), "forbidden");
    ok(cx.try_execute(comment(own.id, &submitter), None));
    ok(cx.try_execute(cancel(own.id, &submitter), None));
    ok(cx.try_execute(cancel(other.id, &operator), None));
    cx.finish();
}

// ---------------------------------------------------------------- reads

/// `list` pages by id with a cursor (no task twice, none missed), filters by
/// stage, state and parent, and caps the page size at `page_size_max`.
pub fn list_pages_with_cursor_and_filters<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.page_size_max = 4;
    let cx = Case::<H>::open(rules);
    let mut all: Vec<TaskId> = (0..4).map(|_| cx.submit_to("a").id).collect();
    all.extend((0..3).map(|_| cx.submit_to("b").id));
    let held: Vec<TaskId> = cx.claim("w", &["b"], 2).iter().map(|g| g.task.id).collect();
    let parent = cx.submit_to("p").id;
    all.push(parent);
    let grant = cx.claim_one("w", "p");
    let children = cx.act(&grant, spawn(&["c", "c"], JoinMode::All, 60_000)).children;
    all.extend(&children);
    all.sort();

    let page_through = |filter: TaskFilter, limit: usize| -> Vec<TaskId> {
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..20 {
            let page = ok(block_on(cx.store().list(TaskFilter { after, limit, ..filter.clone() })));
            assert!(page.tasks.len() <= limit.min(4), "page of {} for limit {limit}", page.tasks.len());
            seen.extend(page.tasks.iter().map(|t| t.id));
            match page.next {
                Some(next) => {
                    assert_eq!(Some(next), page.tasks.last().map(|t| t.id), "the cursor is the last id");
                    after = Some(next);
                }
                None => return seen,
            }
        }
        panic!("paging did not end");
    };
    assert_eq!(page_through(TaskFilter::default(), 3), all, "every task once, in id order");
    assert_eq!(page_through(TaskFilter::default(), 100), all, "pages capped at page_size_max");
    let first = ok(block_on(cx.store().list(TaskFilter { limit: 100, ..TaskFilter::default() })));
    assert_eq!(first.tasks.len(), 4);
    assert!(first.next.is_some());
    let by_stage = page_through(TaskFilter { stage: Some(stage("a")), ..TaskFilter::default() }, 2);
    assert_eq!(
        by_stage,
        all.iter().copied().filter(|id| cx.task(*id).stage == stage("a")).collect::<Vec<_>>()
    );
    assert_eq!(by_stage.len(), 4);
    let mut held_sorted = held.clone();
    held_sorted.sort();
    assert_eq!(
        page_through(TaskFilter { state: Some(StateName::Held), ..TaskFilter::default() }, 3),
        held_sorted
    );
    let waiting_b =
        TaskFilter { stage: Some(stage("b")), state: Some(StateName::Waiting), ..TaskFilter::default() };
    assert_eq!(page_through(waiting_b, 3).len(), 1);
    let blocked = TaskFilter { state: Some(StateName::Blocked), ..TaskFilter::default() };
    assert_eq!(page_through(blocked, 3), vec![parent]);
    let mut kids = children.clone();
    kids.sort();
    assert_eq!(page_through(TaskFilter { parent: Some(parent), ..TaskFilter::default() }, 1), kids);
    let none = TaskFilter { stage: Some(stage("nowhere")), ..TaskFilter::default() };
    assert_eq!(page_through(none, 3), vec![]);
    cx.finish();
}

/// A task's history lists its events in version order, chained by hash from
/// the first to the head the store reports; each event carries the task after it.
pub fn history_is_a_verified_hash_chain<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let id = cx.submit_to("a").id;
    let grant = cx.claim_one("alice", "a");
    cx.advance(10);
    cx.act(&grant, heartbeat(None));
    cx.advance(10);
    cx.act(&grant, handoff_to("b"));
    let bob = cx.claim_one("bob", "b");
    cx.advance(10);
    cx.act(&bob, complete());
    let history = cx.history(id);
    assert_eq!(
        history.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [
            EventKind::Submitted,
            EventKind::Claimed,
            EventKind::Heartbeat,
            EventKind::HandedOff,
            EventKind::Claimed,
            EventKind::Completed
        ]
    );
    assert_eq!(history.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(baton_core::event::verify_chain(&history), Ok(()));
    let view = cx.view(id);
    assert_eq!(view.head, history[5].hash);
    assert_eq!(history[5].after, view.task);
    assert!(history.iter().all(|e| e.task == id && e.after.revision == e.version));
    assert_eq!(history[0].prev_hash, baton_core::Hash::ZERO);
    let mut tampered = history.clone();
    tampered[2].note = Some("edited".into());
    assert_eq!(
        baton_core::event::verify_chain(&tampered),
        Err((2, "hash does not match the event's content"))
    );
    let unknown = ok(block_on(cx.store().history(TaskId(uuid::Uuid::now_v7()))));
    assert_eq!(unknown, vec![]);
    cx.finish();
}

/// `history_before` pages a history from its end: newest first, below the
/// version given, at most `limit`; pages put together are the history.
pub fn history_reads_in_pages_from_its_end<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let task = cx.submit_to("a");
    let grant = cx.claim("w", &["a"], 1).remove(0);
    for _ in 0..4 {
        cx.act(&grant, heartbeat(None));
    }
    let full = ok(block_on(cx.store().history(task.id)));
    assert_eq!(full.len(), 6, "submitted, claimed, four heartbeats");
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = ok(block_on(cx.store().history_before(task.id, before, 4)));
        assert!(page.len() <= 4);
        assert!(page.windows(2).all(|w| w[0].version > w[1].version), "newest first");
        let Some(last) = page.last() else { break };
        before = Some(last.version);
        pages.extend(page);
    }
    pages.reverse();
    assert_eq!(pages, full, "the pages make up the history");
    let newest = ok(block_on(cx.store().history_before(task.id, None, 1)));
    assert_eq!(newest, vec![full[5].clone()]);
    assert!(ok(block_on(cx.store().history_before(task.id, Some(1), 10))).is_empty());
    assert!(ok(block_on(cx.store().history_before(TaskId(uuid::Uuid::nil()), None, 10))).is_empty());
    cx.finish();
}

/// `next_due` is the earliest `due_at` of live tasks, `None` when there are none.
pub fn next_due_is_the_earliest_live_due_at<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    assert_eq!(cx.next_due(), None);
    let first = cx.submit_to("a").id;
    assert_eq!(cx.next_due(), Some(T0 + ACCEPT_MS));
    cx.advance(1_000);
    let grant = cx.claim_one_for("w", "a", Some(2_000));
    assert_eq!(cx.next_due(), Some(T0 + 3_000));
    let second = cx.submit_to("b").id;
    assert_eq!(cx.next_due(), Some(T0 + 3_000));
    cx.act(&grant, complete());
    assert_eq!(cx.next_due(), Some(T0 + 1_000 + ACCEPT_MS), "the done task no longer counts");
    cx.cancel(second, "done with it");
    assert_eq!(cx.next_due(), None);
    assert_eq!(cx.task(first).state_name(), StateName::Done);
    cx.finish();
}

/// `fire_due` acts on at most `limit` due tasks per call, earliest first.
pub fn fire_due_respects_its_limit<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let ids: Vec<TaskId> = (0..3)
        .map(|_| {
            cx.advance(10);
            cx.submit_to("a").id
        })
        .collect();
    assert_eq!(cx.fire(10), 0, "nothing due yet");
    cx.advance(ACCEPT_MS);
    assert_eq!(cx.fire(2), 2);
    let reoffers: Vec<u32> = ids.iter().map(|id| cx.task(*id).reoffers).collect();
    assert_eq!(reoffers, [1, 1, 0], "the earliest due first");
    assert_eq!(cx.fire(10), 1);
    assert_eq!(cx.fire(10), 0);
    cx.finish();
}

/// The ready listener hears the stage of every commit that makes a task
/// claimable (submit, handoff, release, expiry, join), and nothing else.
pub fn ready_listener_hears_the_stages<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let set = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    cx.submit_to("a");
    assert_eq!(cx.ready.take(), set(&["a"]));
    let _ = cx.try_submit(new_task("a", "not json"));
    assert_eq!(cx.ready.take(), set(&[]), "a refused submit wakes nobody");
    let grant = cx.claim_one("alice", "a");
    assert_eq!(cx.ready.take(), set(&[]), "a claim makes nothing ready");
    cx.act(&grant, heartbeat(None));
    assert_eq!(cx.ready.take(), set(&[]));
    cx.act(&grant, handoff_to("b"));
    assert_eq!(cx.ready.take(), set(&["b"]));
    let grant = cx.claim_one("bob", "b");
    cx.act(&grant, release());
    assert_eq!(cx.ready.take(), set(&["b"]));
    let grant = cx.claim_one("bob", "b");
    cx.advance(LEASE_MS);
    cx.fire(10);
    assert_eq!(cx.ready.take(), set(&["b"]));
    let grant2 = cx.claim_one("bob", "b");
    assert_ne!(grant.epoch, grant2.epoch);
    cx.act(&grant2, spawn(&["c", "d"], JoinMode::Any, 60_000));
    assert_eq!(cx.ready.take(), set(&["c", "d"]));
    let child = cx.claim_one("carol", "c");
    cx.act(&child, complete());
    assert_eq!(cx.ready.take(), set(&["b"]), "the joined parent is ready again");
    cx.finish();
}

/// Claims from several threads at once lease every task exactly once.
pub fn concurrent_claims_lease_each_task_once<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let ids: HashSet<TaskId> = (0..30).map(|_| cx.submit_to("a").id).collect();
    let store = cx.store();
    let grants: Vec<Grant> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|w| {
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..100 {
                        let request = ClaimRequest {
                            agent: agent(&format!("w{w}")),
                            stages: vec![stage("a")],
                            max: 4,
                            lease_ms: None,
                            only: None,
                            credential: None,
                        };
                        let got = ok(block_on(store.claim(request)));
                        if got.is_empty() {
                            break;
                        }
                        mine.extend(got);
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_eq!(grants.len(), 30, "every task leased once");
    let leased: HashSet<TaskId> = grants.iter().map(|g| g.task.id).collect();
    assert_eq!(leased, ids);
    assert!(grants.iter().all(|g| g.epoch == 1));
    cx.finish();
}

// ---------------------------------------------------------------- keyed requests

/// A repeated request key with the same fingerprint answers the first outcome
/// and writes nothing, for every operation: a repeated submit does not create
/// a second task, a repeated claim returns the same leases (not new ones), a
/// repeated complete returns its outcome (not `lease_lost`), a repeated
/// cancel returns the cancelled task (not `invalid_transition`).
pub fn keyed_repeat_returns_the_first_outcome_and_writes_nothing<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let key = request_key("alice", "submit-1", "POST /v1/tasks a");
    let first = cx.execute(submit_op("a"), &key);
    let submitted = first.clone().into_submitted().expect("a submit's outcome");
    assert!(submitted.created);
    cx.advance(1_000);
    cx.assert_replays(submit_op("a"), &key, &first);
    let task = submitted.task.id;
    let other = cx.submit_to("a");
    assert_eq!(cx.list(TaskFilter::default()).len(), 2);

    let key = request_key("w", "claim-1", "POST /v1/claims a 1");
    let first = cx.execute(claim_op("w", &["a"], 1), &key);
    let grants = first.clone().into_grants().expect("a claim's outcome");
    assert_eq!(grants.iter().map(|g| g.task.id).collect::<Vec<_>>(), vec![task]);
    cx.advance(1_000);
    cx.assert_replays(claim_op("w", &["a"], 1), &key, &first);
    assert!(cx.task(other.id).is_ready(), "the repeat leased nothing more");

    let grant = &grants[0];
    let key = request_key("w", "complete-1", "POST /v1/tasks/{id}/complete");
    let first = cx.execute(act_op(grant, complete()), &key);
    let done = first.clone().into_acted().expect("an act's outcome").task;
    assert_eq!(done.state_name(), StateName::Done);
    cx.refuses("lease_lost", |cx| cx.try_act(grant, complete()));
    cx.assert_replays(act_op(grant, complete()), &key, &first);
    assert_eq!(cx.history(task).len(), 3, "submitted, claimed, completed: once each");

    let cancel = Op::Cancel(CancelRequest {
        task: other.id,
        actor: Actor::Principal("operator".into()),
        reason: "duplicate".into(),
        caller: None,
    });
    let key = request_key("operator", "cancel-1", "POST /v1/tasks/{id}/cancel");
    let first = cx.execute(cancel.clone(), &key);
    assert_eq!(
        first.clone().into_cancelled().expect("a cancel's outcome").state_name(),
        StateName::Cancelled
    );
    cx.refuses("invalid_transition", |cx| cx.try_cancel(other.id, "duplicate"));
    cx.assert_replays(cancel, &key, &first);
    assert_eq!(cx.history(other.id).len(), 2);
    cx.finish();
}

/// The same key with another fingerprint is refused `idempotency_conflict`
/// and changes nothing, whatever the operation; the first still replays.
pub fn keyed_repeat_with_another_request_conflicts<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let key = request_key("alice", "k-1", "submit a");
    let first = cx.execute(submit_op("a"), &key);
    for (op, request) in [(submit_op("b"), "submit b"), (claim_op("alice", &["a"], 1), "claim a")] {
        let other = RequestKey { fingerprint: Hash::of(request.as_bytes()), ..key.clone() };
        let r = cx.refuses("idempotency_conflict", |cx| cx.try_execute(op, Some(other)));
        assert_eq!(r, Rejection::IdempotencyConflict { key: "k-1".into() });
    }
    cx.assert_replays(submit_op("a"), &key, &first);
    assert_eq!(cx.list(TaskFilter::default()).len(), 1);
    cx.finish();
}

/// Keys are scoped to their principal: the same key from another principal
/// is another request, with its own outcome.
pub fn keyed_requests_are_scoped_to_their_principal<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let alice = request_key("alice", "k", "submit a");
    let bob = request_key("bob", "k", "submit a");
    let a = cx.execute(submit_op("a"), &alice).into_submitted().expect("submitted");
    let b = cx.execute(submit_op("a"), &bob).into_submitted().expect("submitted");
    assert!(a.created && b.created);
    assert_ne!(a.task.id, b.task.id);
    // Carol's key is free even for another request.
    let carol = request_key("carol", "k", "claim a");
    assert_eq!(cx.execute(claim_op("carol", &["a"], 2), &carol).into_grants().expect("claimed").len(), 2);
    cx.assert_replays(submit_op("a"), &alice, &OpOutcome::Submit(a));
    cx.finish();
}

/// Refusals and claims that lease nothing are not recorded (they changed
/// nothing): a retry under the same key is judged afresh, and may succeed.
pub fn keyed_refusals_and_empty_claims_are_judged_afresh<H: SuiteStore>() {
    let mut rules = suite_rules();
    rules.limits.leases_per_agent_max = 1;
    let cx = Case::<H>::open(rules);
    let key = request_key("w", "claim-b", "claim b");
    let claim = claim_op("w", &["b"], 1);
    assert_eq!(cx.execute(claim.clone(), &key), OpOutcome::Claim(Vec::new().into()), "nothing ready in b");
    cx.submit_to("a");
    let held = cx.claim_one("w", "a");
    let waiting = cx.submit_to("b");
    cx.refuses("too_many_leases", |cx| cx.try_execute(claim.clone(), Some(key.clone())));
    cx.act(&held, complete());
    let first = cx.execute(claim.clone(), &key);
    let grants = first.clone().into_grants().expect("claimed");
    assert_eq!(grants.iter().map(|g| g.task.id).collect::<Vec<_>>(), vec![waiting.id]);
    cx.assert_replays(claim, &key, &first);
    // A refused call leaves its key free for another request.
    let key = request_key("w", "cancel-1", "cancel unknown");
    let unknown = TaskId(uuid::Uuid::now_v7());
    let cancel = Op::Cancel(CancelRequest {
        task: unknown,
        actor: Actor::Principal("w".into()),
        reason: "x".into(),
        caller: None,
    });
    cx.refuses("not_found", |cx| cx.try_execute(cancel, Some(key.clone())));
    let other = RequestKey { fingerprint: Hash::of(b"submit a"), ..key };
    assert!(cx.execute(submit_op("a"), &other).into_submitted().expect("submitted").created);
    cx.finish();
}

/// A key is remembered for `request_key_ttl_ms`: until then it replays, from
/// then on it is free (another request may use it) and its record may be
/// purged, in bounded batches, oldest first.
pub fn keyed_request_expires_after_request_key_ttl_ms<H: SuiteStore>() {
    let rules = suite_rules();
    let ttl = rules.limits.request_key_ttl_ms;
    let cx = Case::<H>::open(rules);
    let key = request_key("alice", "k", "submit a");
    let first = cx.execute(submit_op("a"), &key);
    for other in ["p1", "p2"] {
        cx.execute(submit_op("a"), &request_key("alice", other, "submit a"));
    }
    cx.advance(ttl - 1);
    assert_eq!(cx.purge_requests(100), 0, "nothing has expired yet");
    cx.assert_replays(submit_op("a"), &key, &first);
    let conflict = RequestKey { fingerprint: Hash::of(b"submit b"), ..key.clone() };
    cx.refuses("idempotency_conflict", |cx| cx.try_execute(submit_op("b"), Some(conflict.clone())));
    cx.advance(1);
    // Expired: the key is free, even for another request, which is recorded anew.
    let second = cx.execute(submit_op("b"), &conflict);
    let task = second.clone().into_submitted().expect("submitted").task;
    assert_eq!(task.stage, stage("b"));
    cx.assert_replays(submit_op("b"), &conflict, &second);
    // The two other records expired; the re-used key's record is live.
    assert_eq!(cx.purge_requests(1), 1);
    assert_eq!(cx.purge_requests(100), 1);
    assert_eq!(cx.purge_requests(100), 0);
    cx.assert_replays(submit_op("b"), &conflict, &second);
    let purged = request_key("alice", "p1", "submit a");
    assert!(cx.execute(submit_op("a"), &purged).into_submitted().expect("submitted").created);
    assert_eq!(cx.list(TaskFilter::default()).len(), 5);
    cx.finish();
}

/// Request records are as durable as the operations they record.
pub fn keyed_outcomes_survive_reopen<H: SuiteStore>() {
    let mut cx = Case::<H>::open(suite_rules());
    cx.submit_to("a");
    let grant = cx.claim_one("w", "a");
    let key = request_key("w", "complete-1", "complete");
    let first = cx.execute(act_op(&grant, complete()), &key);
    cx.reopen();
    cx.assert_replays(act_op(&grant, complete()), &key, &first);
    let other = RequestKey { fingerprint: Hash::of(b"another"), ..key };
    cx.refuses("idempotency_conflict", |cx| cx.try_execute(act_op(&grant, release()), Some(other)));
    cx.finish();
}

/// The same keyed request sent from several threads at once runs once:
/// every caller gets the same outcome, one task exists.
pub fn concurrent_repeats_of_a_key_run_once<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let key = request_key("alice", "k", "submit a");
    let store = cx.store();
    let outcomes: Vec<OpOutcome> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let key = key.clone();
                scope.spawn(move || ok(block_on(store.execute(submit_op("a"), Some(key)))))
            })
            .collect();
        callers.into_iter().map(|c| c.join().expect("caller")).collect()
    });
    assert!(outcomes.iter().all(|o| o == &outcomes[0]), "{outcomes:#?}");
    assert_eq!(cx.list(TaskFilter::default()).len(), 1);
    cx.finish();
}

/// Closing and reopening the store keeps every task, event, handoff and
/// idempotency key, and work goes on where it stopped.
pub fn reopen_keeps_everything<H: SuiteStore>() {
    let mut cx = Case::<H>::open(suite_rules());
    let keyed = new_task("a", r#"{"k": 1}"#).key("durable");
    let kept = cx.submit(keyed.clone()).task.id;
    let grant = cx.claim_one("alice", "a");
    let handoff_id = cx.act(&grant, handoff_to("b")).handoff.expect("handoff id");
    let parent = cx.submit_to("p").id;
    let pg = cx.claim_one("alice", "p");
    cx.act(&pg, spawn(&["c"], JoinMode::All, 5_000));
    cx.advance(5_000);
    cx.fire(10);
    let before = cx.snapshot();
    let pending = cx.handoff(handoff_id);
    cx.reopen();
    assert_eq!(cx.snapshot(), before);
    assert_eq!(cx.handoff(handoff_id), pending);
    let again = cx.submit(keyed);
    assert!(!again.created);
    assert_eq!(again.task.id, kept);
    let bob = cx.claim_one("bob", "b");
    assert!(matches!(cx.handoff(handoff_id).outcome, HandoffOutcome::Accepted { .. }));
    cx.act(&bob, complete());
    assert_eq!(cx.task(parent).stage, stage(HUMANS));
    cx.finish();
}

/// A long deterministic walk of mixed calls (submits with repeated keys,
/// claims, every holder action with current and stale epochs, cancels, time
/// passing, timers) keeps every invariant, and loses nothing acknowledged.
pub fn random_walk_keeps_the_invariants<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let stages = ["a", "b", "triage", "fallback", "flaky"];
    let agents = ["w0", "w1", "w2"];
    let mut held: Vec<Grant> = Vec::new();
    let mut stale: Vec<Grant> = Vec::new();
    let mut acked = Acknowledged::default();
    for step in 0..400 {
        match rng.below(10) {
            0 | 1 => {
                let key = format!("k{}", rng.below(40));
                let new = new_task(stages[rng.below(5)], "{}").key(key.clone());
                match cx.try_submit(new) {
                    Ok(s) => {
                        acked.submit_keys.push(key);
                        acked.submit_ids.push(s.task.id);
                    }
                    Err(e) => {
                        refused(Err::<(), _>(e), "idempotency_conflict");
                    }
                }
            }
            2 | 3 => {
                let who = agents[rng.below(3)];
                let from: Vec<&str> = (0..2).map(|_| stages[rng.below(5)]).collect();
                held.extend(ok(cx.try_claim(who, &from, 1 + rng.below(3), None)));
            }
            4..=6 if !held.is_empty() => {
                let grant = held.swap_remove(rng.below(held.len()));
                let action = match rng.below(7) {
                    0 => heartbeat(None),
                    1 => handoff_to(stages[rng.below(5)]),
                    2 => release(),
                    3 => fail(rng.below(2) == 0),
                    4 => spawn(&[stages[rng.below(5)], stages[rng.below(5)]], JoinMode::Any, 30_000),
                    _ => complete(),
                };
                let kind = action.clone();
                match cx.try_act(&grant, action) {
                    Ok(_) => {
                        match kind {
                            Action::Complete { .. } => acked.completions.push((grant.task.id, grant.epoch)),
                            Action::Handoff { .. } => acked.handoffs.push((grant.task.id, grant.epoch)),
                            _ => {}
                        }
                        // A heartbeat keeps the lease; every other action ends it.
                        if matches!(kind, Action::Heartbeat { .. }) {
                            held.push(grant);
                        } else {
                            stale.push(grant);
                        }
                    }
                    Err(e) => {
                        let r = refused(Err::<(), _>(e), "lease_lost");
                        let Rejection::LeaseLost { current_epoch, .. } = r else { unreachable!() };
                        assert!(current_epoch > grant.epoch || cx.task(grant.task.id).is_terminal());
                    }
                }
            }
            7 if !stale.is_empty() => {
                let grant = stale[rng.below(stale.len())].clone();
                cx.refuses("lease_lost", |cx| cx.try_act(&grant, complete()));
            }
            8 => {
                let tasks = list_all(cx.store()).expect("list works");
                if !tasks.is_empty() {
                    let task = &tasks[rng.below(tasks.len())];
                    match cx.try_cancel(task.id, "walk") {
                        Ok(_) => assert!(!task.is_terminal()),
                        Err(e) => {
                            refused(Err::<(), _>(e), "invalid_transition");
                            assert!(task.is_terminal());
                        }
                    }
                }
            }
            _ => {
                cx.advance(i64::try_from(rng.below(12_000)).expect("small"));
                cx.fire(1_000);
            }
        }
        if step % 100 == 99 {
            assert_store_ok(cx.store());
        }
    }
    if let Err(problems) = check_acknowledged(cx.store(), &acked) {
        panic!("acknowledged work lost:\n  {}", problems.join("\n  "));
    }
    let report = cx.finish();
    assert!(report.events > report.tasks, "the walk did more than submit");
}

// ---------------------------------------------------------------- directory

/// A principal as the directory cases create it.
pub fn principal(name: &str, role: Role, stages: &[&str], routes: &[(&str, &str)]) -> Principal {
    Principal {
        name: name.to_owned(),
        role,
        stages: stages.iter().map(|s| StageName::new(*s)).collect(),
        routes: routes.iter().map(|(f, t)| Route { from: stage(f), to: stage(t) }).collect(),
        created_at: T0,
        revoked_at: None,
    }
}

/// A token for `principal` with ids and secrets derived from `seed`; returns
/// the text shown once and the record to store.
pub fn token_for(principal: &str, seed: u8, at: Millis) -> (String, TokenRecord) {
    mint_token(principal, [seed; 8], [seed.wrapping_add(1); 32], at)
}

fn add_principal<H: SuiteStore>(cx: &Case<H>, p: &Principal) -> Result<(), Error> {
    block_on(cx.store().add_principal(p.clone()))
}

fn add_token<H: SuiteStore>(cx: &Case<H>, t: &TokenRecord) -> Result<(), Error> {
    block_on(cx.store().add_token(t.clone()))
}

/// Every principal and token, as the directory lists them.
fn directory<H: SuiteStore>(cx: &Case<H>) -> (Vec<Principal>, Vec<TokenRecord>) {
    (ok(block_on(cx.store().principals())), ok(block_on(cx.store().tokens())))
}

/// Principals and tokens read back exactly as written: principals by name,
/// tokens oldest first, each found by its key; the token's secret matches its
/// record and nothing else does. Directory writes touch no task.
pub fn directory_keeps_principals_and_tokens<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    cx.submit_to("a");
    let tasks_before = cx.snapshot();
    let worker = principal("worker-1", Role::Agent, &["a", "b"], &[("a", "b")]);
    let admin = principal("admin", Role::Admin, &["*"], &[]);
    let ops = Principal { created_at: T0 + 5, ..principal("ops", Role::Operator, &[], &[]) };
    for p in [&worker, &admin, &ops] {
        ok(add_principal(&cx, p));
    }
    assert_eq!(ok(block_on(cx.store().principal("worker-1"))), Some(worker.clone()));
    assert_eq!(ok(block_on(cx.store().principal("nobody"))), None);
    let (later_text, later) = token_for("worker-1", 7, T0 + 10);
    let (_, earlier) = token_for("admin", 3, T0 + 1);
    ok(add_token(&cx, &later));
    ok(add_token(&cx, &earlier));
    let stored = ok(block_on(cx.store().token(&later.id))).expect("the token is found by its id");
    assert_eq!(stored, later);
    let (id, secret) = baton_core::auth::parse_token(&later_text).expect("a minted token parses");
    assert_eq!(id, stored.id);
    assert!(baton_core::auth::token_matches(&stored, secret));
    assert!(!baton_core::auth::token_matches(&earlier, secret), "a secret matches only its own record");
    assert_eq!(ok(block_on(cx.store().token("0000000000000000"))), None);
    let (principals, tokens) = directory(&cx);
    assert_eq!(principals, vec![admin, ops, worker], "principals by name");
    assert_eq!(tokens, vec![earlier, later], "tokens oldest first");
    assert_eq!(cx.snapshot(), tasks_before, "directory writes touch no task");
    cx.finish();
}

/// A taken name (even a revoked one), a token for a principal that does not
/// exist or is revoked, and a taken token id are refused, changing nothing.
pub fn directory_refuses_what_would_break_it<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let worker = principal("worker-1", Role::Agent, &["a"], &[]);
    ok(add_principal(&cx, &worker));
    let (_, token) = token_for("worker-1", 1, T0);
    ok(add_token(&cx, &token));
    let gone = principal("gone", Role::Submitter, &[], &[]);
    ok(add_principal(&cx, &gone));
    assert!(ok(block_on(cx.store().revoke_principal("gone", T0 + 1))));
    let before = directory(&cx);
    let again = Principal { role: Role::Admin, ..worker.clone() };
    assert_field(&refused(add_principal(&cx, &again), "invalid_request"), "name");
    let reborn = principal("gone", Role::Submitter, &[], &[]);
    assert_field(&refused(add_principal(&cx, &reborn), "invalid_request"), "name");
    let (_, orphan) = token_for("nobody", 2, T0);
    assert_field(&refused(add_token(&cx, &orphan), "invalid_request"), "principal");
    let (_, revoked) = token_for("gone", 3, T0);
    assert_field(&refused(add_token(&cx, &revoked), "invalid_request"), "principal");
    let same_id = TokenRecord { secret_hash: baton_core::Hash::of(b"another secret"), ..token };
    assert_field(&refused(add_token(&cx, &same_id), "invalid_request"), "id");
    assert_eq!(directory(&cx), before, "refused directory writes changed nothing");
    cx.finish();
}

/// The last live admin cannot be revoked (`invalid_transition`, nothing
/// changes), and two revocations of the last two admins made at the same
/// time never both pass: in each of several rounds exactly one goes
/// through and one live admin remains. Revoking an admin already revoked,
/// or any other principal, is not affected.
pub fn directory_keeps_a_live_admin<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    let live_admins = |cx: &Case<H>| -> Vec<String> {
        directory(cx).0.into_iter().filter(|p| p.role == Role::Admin && p.is_live()).map(|p| p.name).collect()
    };
    ok(add_principal(&cx, &principal("root", Role::Admin, &[], &[])));
    ok(add_principal(&cx, &principal("worker", Role::Agent, &["a"], &[])));
    let before = directory(&cx);
    let last = refused(block_on(cx.store().revoke_principal("root", T0 + 1)), "invalid_transition");
    assert_eq!(last, Rejection::LastAdmin { name: "root".into() });
    assert_eq!(directory(&cx), before, "a refused revocation changed nothing");
    let mut survivor = "root".to_owned();
    for round in 0..6 {
        let other = format!("admin-{round}");
        ok(add_principal(&cx, &principal(&other, Role::Admin, &[], &[])));
        let barrier = std::sync::Barrier::new(2);
        let store = cx.store();
        let answers: Vec<Result<bool, Error>> = std::thread::scope(|scope| {
            let revoke = |name: String| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    block_on(store.revoke_principal(&name, T0 + 2))
                })
            };
            let first = revoke(survivor.clone());
            let second = revoke(other.clone());
            [first, second].into_iter().map(|h| h.join().expect("a revocation thread")).collect()
        });
        let passed = answers.iter().filter(|a| matches!(a, Ok(true))).count();
        let refused_last =
            answers.iter().filter(|a| matches!(a, Err(Error::Rejected(Rejection::LastAdmin { .. })))).count();
        assert_eq!((passed, refused_last), (1, 1), "round {round}: {answers:?}");
        let live = live_admins(&cx);
        assert_eq!(live.len(), 1, "round {round}: one live admin remains, not {live:?}");
        survivor = live[0].clone();
    }
    // Neither is the survivor: an admin revoked before is revoked again.
    let gone = if survivor == "root" { "admin-0" } else { "root" };
    assert!(ok(block_on(cx.store().revoke_principal(gone, T0 + 3))));
    assert!(ok(block_on(cx.store().revoke_principal("worker", T0 + 3))));
    assert_eq!(live_admins(&cx), vec![survivor]);
    cx.finish();
}

/// Revoking a token marks it (once: a second revocation keeps the first
/// time); revoking a principal marks it and every token it has, and no other.
/// Unknown names and ids answer `false`.
pub fn directory_revocation_reaches_every_token<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    ok(add_principal(&cx, &principal("w", Role::Agent, &["a"], &[])));
    ok(add_principal(&cx, &principal("s", Role::Submitter, &[], &[])));
    let (_, w1) = token_for("w", 1, T0);
    let (_, w2) = token_for("w", 2, T0 + 1);
    let (_, s1) = token_for("s", 3, T0 + 2);
    for t in [&w1, &w2, &s1] {
        ok(add_token(&cx, t));
    }
    let store = cx.store();
    assert!(ok(block_on(store.revoke_token(&w1.id, T0 + 10))));
    assert!(ok(block_on(store.revoke_token(&w1.id, T0 + 20))), "revoking twice is fine");
    assert_eq!(ok(block_on(store.token(&w1.id))).and_then(|t| t.revoked_at), Some(T0 + 10));
    assert!(!ok(block_on(store.revoke_token("ffffffffffffffff", T0 + 10))));
    assert!(!ok(block_on(store.revoke_principal("nobody", T0 + 10))));
    assert!(ok(block_on(store.revoke_principal("w", T0 + 30))));
    let revoked_at = |id: &str| ok(block_on(store.token(id))).expect("token exists").revoked_at;
    assert_eq!(revoked_at(&w1.id), Some(T0 + 10), "an earlier revocation stands");
    assert_eq!(revoked_at(&w2.id), Some(T0 + 30), "the principal's other token is revoked with it");
    assert_eq!(revoked_at(&s1.id), None, "another principal's token is untouched");
    let w = ok(block_on(store.principal("w"))).expect("a revoked principal is kept");
    assert_eq!(w.revoked_at, Some(T0 + 30));
    assert!(!w.is_live());
    assert!(ok(block_on(store.revoke_principal("w", T0 + 40))));
    assert_eq!(ok(block_on(store.principal("w"))).and_then(|p| p.revoked_at), Some(T0 + 30));
    cx.finish();
}

/// A claim made with a token checks, in its own transaction, that the token
/// and its principal are live: a revoked token or principal gets `Revoked`
/// (`unauthenticated`) and no lease, and claim-next grants it nothing while
/// its main action stands. A live credential claims as usual.
pub fn revoked_credentials_get_no_lease<H: SuiteStore>() {
    let cx = Case::<H>::open(suite_rules());
    ok(add_principal(&cx, &principal("w", Role::Agent, &["a", "b"], &[("a", "b")])));
    let (_, live) = token_for("w", 1, T0);
    let (_, dead) = token_for("w", 2, T0);
    ok(add_token(&cx, &live));
    ok(add_token(&cx, &dead));
    assert!(ok(block_on(cx.store().revoke_token(&dead.id, T0 + 1))));
    let credential = |t: &TokenRecord| Some(Credential { principal: "w".into(), token: t.id.clone() });
    let claim_with = |t: &TokenRecord| {
        Op::Claim(ClaimRequest {
            agent: agent("w"),
            stages: vec![stage("a")],
            max: 1,
            lease_ms: None,
            only: None,
            credential: credential(t),
        })
    };
    cx.submit_to("a");
    cx.submit_to("b");
    let before = cx.snapshot();
    refused(block_on(cx.store().execute(claim_with(&dead), None)), "unauthenticated");
    let other = Credential { principal: "someone-else".into(), token: live.id.clone() };
    let mismatched = Op::Claim(ClaimRequest {
        agent: agent("w"),
        stages: vec![stage("a")],
        max: 1,
        lease_ms: None,
        only: None,
        credential: Some(other),
    });
    refused(block_on(cx.store().execute(mismatched, None)), "unauthenticated");
    assert_eq!(cx.snapshot(), before, "a refused claim leases nothing");
    let grant = ok(block_on(cx.store().execute(claim_with(&live), None))).into_grants().expect("grants");
    assert_eq!(grant.len(), 1, "a live credential claims");
    // The principal is revoked while it holds the task: its hand-off stands
    // (the server authenticates holder calls), its claim-next gets nothing.
    assert!(ok(block_on(cx.store().revoke_principal("w", T0 + 2))));
    let act = Op::Act(ActRequest {
        task: grant[0].task.id,
        agent: agent("w"),
        epoch: grant[0].epoch,
        action: handoff_to("b"),
        claim_next: Some(ClaimNext {
            stages: vec![stage("b")],
            max: 2,
            lease_ms: None,
            credential: credential(&live),
        }),
        caller: None,
    });
    let acted = ok(block_on(cx.store().execute(act, None))).into_acted().expect("acted");
    assert!(acted.next.is_empty(), "claim-next leased {:?} to a revoked principal", acted.next);
    refused(block_on(cx.store().execute(claim_with(&live), None)), "unauthenticated");
    cx.finish();
}

/// Principals and tokens, revocations included, survive closing and
/// reopening a durable store.
pub fn directory_survives_reopen<H: SuiteStore>() {
    let mut cx = Case::<H>::open(suite_rules());
    ok(add_principal(&cx, &principal("w", Role::Agent, &["a", "b"], &[("a", "b")])));
    ok(add_principal(&cx, &principal("root", Role::Admin, &["*"], &[])));
    let (_, kept) = token_for("w", 1, T0);
    let (_, revoked) = token_for("root", 2, T0 + 1);
    ok(add_token(&cx, &kept));
    ok(add_token(&cx, &revoked));
    assert!(ok(block_on(cx.store().revoke_token(&revoked.id, T0 + 2))));
    let before = directory(&cx);
    cx.reopen();
    assert_eq!(directory(&cx), before);
    cx.finish();
}

/// A small deterministic generator, so every store walks the same path.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(n).expect("fits")).expect("fits")
    }
}

/// The memory store is its own harness: nothing outlives it, and it keeps
/// nothing across a reopen (the default `reopen` keeps the same store).
impl SuiteStore for crate::memory::MemoryStore {
    type Store = Self;

    fn open(setup: Setup) -> Self {
        Self::new(setup.clock, setup.rules).with_listener(setup.listener)
    }

    fn store(&self) -> &Self {
        self
    }

    fn alerts(&self) -> Option<Vec<Alert>> {
        Some(crate::memory::MemoryStore::alerts(self))
    }
}
