//! The state machine, pair by pair. Goal: every (state, command) pair is
//! accepted or refused as docs/design.md ("The handoff protocol") says. Method: one table of cases, each
//! a named starting state, a command, the time, and the expected result (the
//! event kind and resulting state, or the refusal code), run through `check`,
//! which also asserts the invariants every accepted change must keep.

use super::*;
use crate::command::{JoinSpec, NewChild};
use crate::limits::Limits;
use crate::policy::{Backoff, Policies, StagePolicy};
use crate::task::StateName;

const T0: Millis = 1_000_000;

fn rules() -> Rules {
    let policies = Policies::default()
        .with_stage(
            "a",
            StagePolicy {
                reroute_to: Some("b".into()),
                reoffers: 1,
                max_attempts: 2,
                ..StagePolicy::default()
            },
        )
        .with_stage(
            "b",
            StagePolicy { escalate_to: Some("desk".into()), reoffers: 0, ..StagePolicy::default() },
        )
        .with_stage("desk", StagePolicy::human());
    Rules { policies, limits: Limits::default() }
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s)
}

fn submitted(stage: &str) -> Task {
    submit(TaskId(uuid::Uuid::from_u128(7)), &NewTask::new(stage, "{}"), &rules(), T0).unwrap().task
}

/// Applies accepted commands in order, panicking on a refusal.
fn run(mut task: Task, steps: &[(Command, Millis)]) -> Task {
    for (command, now) in steps {
        task = decide(&task, command, &rules(), *now).unwrap_or_else(|r| panic!("{command:?}: {r}")).task;
    }
    task
}

fn claim_by(a: &str) -> Command {
    Command::Claim { agent: agent(a), lease_ms: 30_000 }
}

fn act(a: &str, epoch: u64, action: Action) -> Command {
    let handoff_id = matches!(action, Action::Handoff { .. }).then(|| HandoffId(uuid::Uuid::from_u128(9)));
    let children = match &action {
        Action::Spawn { children, .. } => (0..children.len()).map(|i| child(i as u128)).collect(),
        _ => Vec::new(),
    };
    Command::Act { agent: agent(a), epoch, action, handoff_id, children }
}

fn child(i: u128) -> TaskId {
    TaskId(uuid::Uuid::from_u128(100 + i))
}

fn heartbeat() -> Action {
    Action::Heartbeat { lease_ms: None, note: Some("halfway".into()) }
}
fn handoff(to: &str) -> Action {
    Action::Handoff {
        to_stage: to.into(),
        report: Report {
            note: Some("triaged".into()),
            findings: Some(serde_json::json!({"k": 1})),
            confidence: Some(0.9),
        },
    }
}
fn complete() -> Action {
    Action::Complete { result: Some(serde_json::json!({"ok": true})), report: Report::default() }
}
fn fail(retryable: bool) -> Action {
    Action::Fail { error: "boom".into(), retryable }
}
fn spawn(mode: JoinMode, n: usize) -> Action {
    let child = NewChild { stage: "c".into(), payload: "{}".into(), priority: 0, labels: Default::default() };
    Action::Spawn { children: vec![child; n], join: JoinSpec { mode, within_ms: 60_000 } }
}

/// The named starting states.
fn state(name: &str) -> Task {
    let waiting = submitted("a");
    match name {
        "waiting" => waiting,
        "held" => run(waiting, &[(claim_by("x"), T0 + 1)]),
        "handed_off" => run(state("held"), &[(act("x", 1, handoff("b")), T0 + 2)]),
        "backoff" => run(state("held"), &[(act("x", 1, fail(true)), T0 + 2)]),
        "blocked" => run(state("held"), &[(act("x", 1, spawn(JoinMode::All, 2)), T0 + 2)]),
        "blocked_any" => run(state("held"), &[(act("x", 1, spawn(JoinMode::Any, 2)), T0 + 2)]),
        "blocked_quorum" => run(state("held"), &[(act("x", 1, spawn(JoinMode::Quorum(2), 3)), T0 + 2)]),
        "done" => run(state("held"), &[(act("x", 1, complete()), T0 + 2)]),
        "cancelled" => {
            run(waiting, &[(Command::Cancel { actor: Actor::System, reason: "stop".into() }, T0 + 1)])
        }
        "reoffered" => run(waiting, &[(Command::Fire, T0 + 300_000)]),
        "held_b" => run(state("handed_off"), &[(claim_by("y"), T0 + 3)]),
        "human" => run(submitted("desk"), &[]),
        _ => panic!("no state {name}"),
    }
}

enum Expect {
    /// Accepted: the event kind, the resulting state and stage.
    Ok(EventKind, StateName, &'static str),
    /// Refused with this code.
    No(&'static str),
}
use Expect::{No, Ok as Yes};

/// Runs one case and checks the invariants of an accepted change.
fn check(from: &str, command: Command, now: Millis, expect: Expect) {
    let task = state(from);
    let result = decide(&task, &command, &rules(), now);
    let label = format!("{from} + {command:?} at {now}");
    match (expect, result) {
        (Yes(kind, state, stage), Ok(change)) => {
            assert_eq!(change.event.kind, kind, "{label}");
            assert_eq!(change.task.state_name(), state, "{label}");
            assert_eq!(change.task.stage.as_str(), stage, "{label}");
            assert_eq!(change.task.revision, task.revision + 1, "{label}: revision grows by one");
            assert_eq!(change.event.version, change.task.revision, "{label}");
            assert_eq!(change.event.after, change.task, "{label}: the event carries the row");
            assert!(change.task.epoch >= task.epoch, "{label}: epochs never shrink");
            assert_eq!(change.event.from, Some(Position::of(&task)), "{label}");
            if !change.task.is_terminal() {
                assert!(
                    change.task.custodian().is_some() && change.task.due_at().is_some(),
                    "{label}: custody invariant"
                );
            }
        }
        (No(code), Err(rejection)) => {
            assert_eq!(rejection.code(), code, "{label}: {rejection}");
        }
        (Yes(kind, ..), Err(r)) => panic!("{label}: expected {kind:?}, refused {r}"),
        (No(code), Ok(change)) => panic!("{label}: expected {code}, accepted {:?}", change.event.kind),
    }
}

#[test]
fn every_state_and_command() {
    use EventKind as K;
    use StateName as S;
    let later = T0 + 10;
    let cancel =
        || Command::Cancel { actor: Actor::Principal("ops".into()), reason: "no longer needed".into() };
    let settle = |ok| Command::ChildSettled { child: child(0), ok, next_id: child(50) };
    let stranger =
        Command::ChildSettled { child: TaskId(uuid::Uuid::from_u128(99)), ok: true, next_id: child(50) };
    let cases: Vec<(&str, Command, Millis, Expect)> = vec![
        // waiting (offered)
        ("waiting", claim_by("x"), later, Yes(K::Claimed, S::Held, "a")),
        ("waiting", Command::Claim { agent: agent("x"), lease_ms: 10 }, later, No("limit_exceeded")),
        ("waiting", Command::Claim { agent: agent("x"), lease_ms: i64::MAX }, later, No("limit_exceeded")),
        ("waiting", act("x", 0, heartbeat()), later, No("lease_lost")),
        ("waiting", act("x", 0, complete()), later, No("lease_lost")),
        ("waiting", act("x", 0, handoff("b")), later, No("lease_lost")),
        ("waiting", act("x", 0, Action::Release { note: None }), later, No("lease_lost")),
        ("waiting", act("x", 0, fail(true)), later, No("lease_lost")),
        ("waiting", act("x", 0, spawn(JoinMode::All, 1)), later, No("lease_lost")),
        ("waiting", cancel(), later, Yes(K::Cancelled, S::Cancelled, "a")),
        ("waiting", Command::Fire, later, No("not_due")),
        ("waiting", Command::Fire, T0 + 300_000, Yes(K::Reoffered, S::Waiting, "a")),
        ("reoffered", Command::Fire, T0 + 600_000, Yes(K::Rerouted, S::Waiting, "b")),
        ("waiting", settle(true), later, No("invalid_transition")),
        // waiting after a handoff: the ladder finalizes the outcome
        ("handed_off", claim_by("y"), later, Yes(K::Claimed, S::Held, "b")),
        ("handed_off", Command::Fire, T0 + 400_000, Yes(K::Escalated, S::Waiting, "desk")),
        ("handed_off", cancel(), later, Yes(K::Cancelled, S::Cancelled, "b")),
        ("handed_off", act("x", 1, complete()), later, No("lease_lost")),
        // backoff: not claimable until the timer offers it again
        ("backoff", claim_by("y"), later, No("invalid_transition")),
        ("backoff", Command::Fire, T0 + 2 + 1_000, Yes(K::RetryReady, S::Waiting, "a")),
        ("backoff", Command::Fire, T0 + 2 + 999, No("not_due")),
        ("backoff", cancel(), later, Yes(K::Cancelled, S::Cancelled, "a")),
        // held
        ("held", claim_by("y"), later, No("invalid_transition")),
        ("held", act("x", 1, heartbeat()), later, Yes(K::Heartbeat, S::Held, "a")),
        (
            "held",
            act("x", 1, Action::Heartbeat { lease_ms: Some(1), note: None }),
            later,
            No("limit_exceeded"),
        ),
        ("held", act("x", 1, handoff("b")), later, Yes(K::HandedOff, S::Waiting, "b")),
        ("held", act("x", 1, handoff("bad stage!")), later, No("invalid_request")),
        ("held", act("x", 1, complete()), later, Yes(K::Completed, S::Done, "a")),
        ("held", act("x", 1, Action::Release { note: None }), later, Yes(K::Released, S::Waiting, "a")),
        ("held", act("x", 1, fail(true)), later, Yes(K::Failed, S::Waiting, "a")),
        ("held", act("x", 1, fail(false)), later, Yes(K::Escalated, S::Waiting, "inbox")),
        ("held", act("x", 1, spawn(JoinMode::All, 2)), later, Yes(K::Spawned, S::Blocked, "a")),
        ("held", act("x", 1, spawn(JoinMode::Quorum(3), 2)), later, No("invalid_request")),
        ("held", act("x", 1, spawn(JoinMode::All, 101)), later, No("limit_exceeded")),
        ("held", act("x", 1, spawn(JoinMode::All, 0)), later, No("invalid_request")),
        ("held", act("x", 0, complete()), later, No("lease_lost")),
        ("held", act("x", 2, complete()), later, No("lease_lost")),
        ("held", act("y", 1, complete()), later, No("not_holder")),
        ("held", act("y", 1, heartbeat()), later, No("not_holder")),
        ("held", cancel(), later, Yes(K::Cancelled, S::Cancelled, "a")),
        ("held", Command::Fire, later, No("not_due")),
        ("held", Command::Fire, T0 + 1 + 30_000, Yes(K::LeaseExpired, S::Waiting, "a")),
        ("held", settle(true), later, No("invalid_transition")),
        ("held_b", act("y", 2, complete()), later, Yes(K::Completed, S::Done, "b")),
        ("held_b", act("x", 1, complete()), later, No("lease_lost")),
        // blocked on children
        ("blocked", claim_by("y"), later, No("invalid_transition")),
        ("blocked", act("x", 1, complete()), later, No("lease_lost")),
        ("blocked", settle(true), later, Yes(K::ChildSettled, S::Blocked, "a")),
        ("blocked_any", stranger, later, No("invalid_transition")),
        ("blocked", settle(false), later, Yes(K::Escalated, S::Waiting, "inbox")),
        ("blocked_any", settle(true), later, Yes(K::Joined, S::Waiting, "a")),
        ("blocked_any", settle(false), later, Yes(K::ChildSettled, S::Blocked, "a")),
        ("blocked_quorum", settle(true), later, Yes(K::ChildSettled, S::Blocked, "a")),
        ("blocked", Command::Fire, T0 + 2 + 60_000, Yes(K::Escalated, S::Waiting, "inbox")),
        ("blocked", Command::Fire, later, No("not_due")),
        ("blocked", cancel(), later, Yes(K::Cancelled, S::Cancelled, "a")),
        // terminal states refuse everything
        ("done", claim_by("y"), later, No("invalid_transition")),
        ("done", act("x", 1, complete()), later, No("lease_lost")),
        ("done", act("x", 1, heartbeat()), later, No("lease_lost")),
        ("done", cancel(), later, No("invalid_transition")),
        ("done", Command::Fire, later, No("invalid_transition")),
        ("done", settle(true), later, No("invalid_transition")),
        ("cancelled", claim_by("y"), later, No("invalid_transition")),
        ("cancelled", act("x", 0, complete()), later, No("lease_lost")),
        ("cancelled", cancel(), later, No("invalid_transition")),
        ("cancelled", Command::Fire, later, No("invalid_transition")),
        // a human stage only re-offers
        ("human", Command::Fire, T0 + 24 * 3_600_000, Yes(K::Reoffered, S::Waiting, "desk")),
        ("human", claim_by("ops"), later, Yes(K::Claimed, S::Held, "desk")),
    ];
    for (from, command, now, expect) in cases {
        check(from, command, now, expect);
    }
}

#[test]
fn custody_follows_the_protocol() {
    // After submit: the submitter. After a handoff: the sender, until a claim.
    let t = state("waiting");
    assert_eq!(t.custodian(), Some(Custodian::Submitter(Actor::System)));
    let t = state("handed_off");
    assert_eq!(t.custodian(), Some(Custodian::Agent(agent("x"))));
    // The claim accepts the handoff: the outcome names the claimer.
    let change = decide(&t, &claim_by("y"), &rules(), T0 + 5).unwrap();
    let h = change.handoff.expect("the claim finalizes the handoff");
    assert_eq!(h.outcome, HandoffOutcome::Accepted { by: agent("y"), at: T0 + 5, epoch: 2 });
    // A lease expiry returns the task to the stage with the next epoch.
    let held = change.task;
    let expired = decide(&held, &Command::Fire, &rules(), T0 + 5 + 30_000).unwrap().task;
    assert_eq!(expired.epoch, 3);
    assert_eq!(expired.custodian(), Some(Custodian::Stage("b".into())));
}

#[test]
fn the_ladder_reoffers_then_reroutes_then_escalates() {
    let r = rules();
    let mut t = state("waiting");
    let mut kinds = Vec::new();
    let mut now = T0;
    for _ in 0..4 {
        now = t.due_at().unwrap();
        let change = decide(&t, &Command::Fire, &r, now).unwrap();
        kinds.push((change.event.kind, change.task.stage.to_string(), change.alert.is_some()));
        t = change.task;
    }
    assert_eq!(
        kinds,
        vec![
            (EventKind::Reoffered, "a".into(), false),
            (EventKind::Rerouted, "b".into(), false),
            (EventKind::Escalated, "desk".into(), true),
            (EventKind::Reoffered, "desk".into(), false),
        ]
    );
    assert_eq!(t.due_at(), Some(now + 24 * 3_600_000));
}

#[test]
fn retries_back_off_then_climb_at_max_attempts() {
    // Stage a allows 2 attempts: one retryable failure backs off, the second reroutes.
    let r = rules();
    let t = state("backoff");
    assert_eq!(t.due_at(), Some(T0 + 2 + 1_000));
    let t = run(t, &[(Command::Fire, T0 + 1_002), (claim_by("x"), T0 + 1_003)]);
    let change = decide(&t, &act("x", 2, fail(true)), &r, T0 + 1_004).unwrap();
    assert_eq!((change.event.kind, change.task.stage.as_str()), (EventKind::Rerouted, "b"));
    assert_eq!(change.task.attempts, 0, "attempts count per stage visit");
}

#[test]
fn backoff_grows_and_is_capped() {
    let b = Backoff { initial_ms: 100, max_ms: 1_000, multiplier: 3 };
    let got: Vec<Millis> = (1..=5).map(|a| b.delay_ms(a)).collect();
    assert_eq!(got, vec![100, 300, 900, 1_000, 1_000]);
}

#[test]
fn submit_validates_and_digests() {
    let r = rules();
    let id = TaskId(uuid::Uuid::from_u128(1));
    let cases: Vec<(NewTask, Option<&str>)> = vec![
        (NewTask::new("a", "{\"x\":1}"), None),
        (NewTask::new("a", "not json"), Some("invalid_request")),
        (NewTask::new("", "{}"), Some("invalid_request")),
        (NewTask::new("a b", "{}"), Some("invalid_request")),
        (NewTask::new("a".repeat(200), "{}"), Some("limit_exceeded")),
        (NewTask::new("a", format!("\"{}\"", "x".repeat(300 * 1024))), Some("limit_exceeded")),
        (NewTask::new("a", "{}").key(""), Some("invalid_request")),
        (NewTask::new("a", "{}").key("k".repeat(300)), Some("limit_exceeded")),
    ];
    for (new, code) in cases {
        let got = submit(id, &new, &r, T0).err().map(|e| e.code());
        assert_eq!(got, code, "{:?}", &new.stage);
    }
    let a = submit(id, &NewTask::new("a", "{}").key("k"), &r, T0).unwrap().task;
    let b = submit(id, &NewTask::new("a", "{}").key("k"), &r, T0 + 5).unwrap().task;
    let c = submit(id, &NewTask::new("a", "[]").key("k"), &r, T0).unwrap().task;
    assert_eq!(a.submit_digest, b.submit_digest, "the digest covers the request, not the time");
    assert_ne!(a.submit_digest, c.submit_digest);
}

#[test]
fn events_chain_and_detect_tampering() {
    let r = rules();
    let first = submit(TaskId(uuid::Uuid::from_u128(3)), &NewTask::new("a", "{}"), &r, T0).unwrap();
    let e1 = first.event.seal(Hash::ZERO, None);
    let second = decide(&first.task, &claim_by("x"), &r, T0 + 1).unwrap();
    let e2 = second.event.seal(e1.hash, Some(&first.task));
    assert_eq!(crate::event::verify_chain(&[e1.clone(), e2.clone()]), Ok(()));
    let mut edited = e2.clone();
    edited.note = Some("forged".into());
    assert_eq!(crate::event::verify_chain(&[e1.clone(), edited]).unwrap_err().0, 1);
    assert_eq!(crate::event::verify_chain(&[e2.clone(), e1.clone()]).unwrap_err().0, 0);
    assert_eq!(crate::event::verify_chain(std::slice::from_ref(&e2)).unwrap_err().0, 0);
    // Canonical form: key order does not matter.
    let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":null}}"#).unwrap();
    assert_eq!(crate::event::canonical_json(&a), r#"{"a":{"c":null,"d":[1,2]},"b":1}"#);
}

/// A chain of `n` events: submit, then claim and heartbeat alternately
/// with release, sealed as the engine seals them.
fn long_chain(n: usize) -> Vec<Event> {
    let r = rules();
    let first = submit(TaskId(uuid::Uuid::from_u128(4)), &NewTask::new("a", "{}"), &r, T0).unwrap();
    let mut task = first.task.clone();
    let mut events = vec![first.event.seal(Hash::ZERO, None)];
    while events.len() < n {
        let now = T0 + i64::try_from(events.len()).unwrap();
        let command = match &task.state {
            TaskState::Held { .. } if events.len() % 3 == 0 => {
                act("x", task.epoch, Action::Release { note: None })
            }
            TaskState::Held { .. } => {
                act("x", task.epoch, Action::Heartbeat { lease_ms: None, note: Some(format!("n{now}")) })
            }
            _ => claim_by("x"),
        };
        let change = decide(&task, &command, &r, now).unwrap();
        let prev = events.last().map(|e| e.hash).unwrap();
        events.push(change.event.seal(prev, Some(&task)));
        task = change.task;
    }
    events
}

#[test]
fn compact_events_store_what_changed_and_read_back_whole() {
    use crate::event::{decode_chain, decode_page, fold_base, is_checkpoint, verify_chain};
    let events = long_chain(140);
    assert_eq!(verify_chain(&events), Ok(()));
    let id = events[0].task;
    let stored: Vec<(u64, String)> = events.iter().map(|e| (e.version, e.stored_body())).collect();
    // A heartbeat stores a few fields, not the row; a checkpoint the row.
    let row_len = serde_json::to_string(&events[0].after).unwrap().len();
    let (v, heartbeat) =
        stored.iter().find(|(v, b)| !is_checkpoint(*v) && b.contains("\"heartbeat\"")).unwrap();
    assert!(
        heartbeat.len() < row_len,
        "event {v} stores {} bytes against the row's {row_len}",
        heartbeat.len()
    );
    assert!(!heartbeat.contains("\"submit_digest\""), "unchanged fields are not stored: {heartbeat}");
    for implied in ["\"revision\"", "\"updated_at\"", "\"prev_hash\""] {
        assert!(!heartbeat.contains(implied), "{implied} is implied: {heartbeat}");
    }
    assert!(stored[64].1.contains("\"submit_digest\""), "version 65 is a checkpoint");
    // The whole chain reads back equal, and so does any page from the end.
    assert_eq!(decode_chain(id, &stored).unwrap(), events);
    for (before, limit) in [(141, 10), (100, 30), (66, 1), (65, 64), (3, 5)] {
        let page: Vec<(u64, String)> =
            stored.iter().rev().filter(|(v, _)| *v < before).take(limit).cloned().collect();
        let base: Vec<(u64, String)> = match page.last().and_then(|(v, b)| fold_base(*v, b)) {
            Some(range) => stored.iter().filter(|(v, _)| range.contains(v)).cloned().collect(),
            None => Vec::new(),
        };
        let expected: Vec<Event> =
            events.iter().rev().filter(|e| e.version < before).take(limit).cloned().collect();
        assert_eq!(decode_page(id, &base, &page).unwrap(), expected, "page before {before}, {limit} events");
    }
    // Without the row before it, a change cannot be read.
    assert!(decode_chain(id, &stored[1..3]).is_err());
}

/// The field-by-field `row_change` (what the writers run) answers what
/// comparing the rows' whole JSON answers: along a chain of real changes,
/// and for every field set, changed and cleared, the skipped-when-empty
/// ones included (they change to null).
#[test]
fn compact_events_row_change_by_field_equals_by_json() {
    use crate::event::{row_change, row_change_by_json};
    use crate::workflow::WorkflowRef;
    let events = long_chain(140);
    for pair in events.windows(2) {
        let (before, after) = (&pair[0].after, &pair[1].after);
        let v = pair[1].version;
        assert_eq!(
            row_change(Some(before), after, v),
            row_change_by_json(Some(before), after, v),
            "version {v}"
        );
    }
    assert_eq!(row_change(None, &events[5].after, 6), row_change_by_json(None, &events[5].after, 6));
    let base = events[1].after.clone();
    let edits: Vec<fn(&mut Task)> = vec![
        |t| t.trail = vec![StageName::new("a")],
        |t| t.workflow = Some(WorkflowRef { name: "wf".into(), version: 2 }),
        |t| t.boost_at = Some(T0 + 5),
        |t| t.deadline_passed = true,
        |t| t.compensation = true,
        |t| t.deadline = Some(T0 + 9),
        |t| t.parent = Some(TaskId(uuid::Uuid::from_u128(9))),
        |t| t.trace = Some("00-abc".into()),
        |t| t.idempotency_key = Some("k".into()),
        |t| {
            t.labels.insert("team".into(), "blue".into());
        },
        |t| t.priority = 7,
        |t| t.reroutes += 1,
        |t| t.stage = StageName::new("b"),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut changed = base.clone();
        edit(&mut changed);
        for (before, after) in [(&base, &changed), (&changed, &base)] {
            let by_field = row_change(Some(before), after, 2);
            assert_eq!(by_field, row_change_by_json(Some(before), after, 2), "edit {i}");
            assert_eq!(by_field.len(), 1, "edit {i} changes one field: {by_field:?}");
        }
    }
}

#[test]
fn compact_events_chain_onto_old_ones_and_edits_are_caught() {
    use crate::event::{decode_chain, verify_chain};
    let mut events = long_chain(6);
    // Events 1-3 as written before compact events: the whole row, hashed.
    let mut prev = Hash::ZERO;
    for e in &mut events[..3] {
        e.change = None;
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        prev = e.hash;
    }
    let mut before = Some(events[2].after.clone());
    for e in &mut events[3..] {
        let sealed = Event { change: None, ..e.clone() }.seal(prev, before.as_ref());
        *e = sealed;
        prev = e.hash;
        before = Some(e.after.clone());
    }
    assert_eq!(verify_chain(&events), Ok(()));
    let stored: Vec<(u64, String)> = events.iter().map(|e| (e.version, e.stored_body())).collect();
    assert!(stored[0].1.starts_with("{\"task\""), "old events keep their form");
    assert!(stored[3].1.contains("\"change\""));
    assert_eq!(decode_chain(events[0].task, &stored).unwrap(), events);
    // An edited change, row, position or report is caught.
    let mut edited = events.clone();
    edited[4].change.as_mut().unwrap().insert("priority".into(), serde_json::json!(99));
    assert_eq!(verify_chain(&edited).unwrap_err().0, 4);
    let mut edited = events.clone();
    edited[4].after.priority = 99;
    assert_eq!(verify_chain(&edited).unwrap_err(), (4, "the row does not match the recorded change"));
    let mut edited = events.clone();
    edited[5].to.stage = crate::ids::StageName::new("elsewhere");
    assert_eq!(verify_chain(&edited).unwrap_err().0, 5);
    let mut edited = events.clone();
    edited[3].note = Some("forged".into());
    assert_eq!(verify_chain(&edited).unwrap_err().0, 3);
    // A stored body edited on disk reads back as a chain that fails.
    let mut on_disk = stored.clone();
    let mut body: serde_json::Value = serde_json::from_str(&on_disk[4].1).unwrap();
    body["change"]["epoch"] = serde_json::json!(99);
    on_disk[4].1 = body.to_string();
    let read = decode_chain(events[0].task, &on_disk).unwrap();
    assert_eq!(verify_chain(&read).unwrap_err().0, 4);
}

#[test]
fn a_join_counts_only_its_own_children_once() {
    let r = rules();
    let t = state("blocked");
    let settle = |t: &Task, c, ok| {
        decide(t, &Command::ChildSettled { child: child(c), ok, next_id: child(50) }, &r, T0 + 9)
    };
    let t = settle(&t, 0, true).unwrap().task;
    assert_eq!(settle(&t, 0, true).unwrap_err().code(), "invalid_transition", "a child counts once");
    let joined = settle(&t, 1, true).unwrap();
    assert_eq!(joined.event.kind, EventKind::Joined);
    assert_eq!(joined.task.custodian(), Some(Custodian::Agent(agent("x"))), "back to the spawner");
}

#[test]
fn rules_must_fit_the_limits() {
    assert_eq!(rules().validate(), Ok(()));
    let mut bad = rules();
    bad.policies.default.lease_ms = bad.limits.lease_ttl_ms_max + 1;
    assert!(bad.validate().unwrap_err().contains("lease"));
    let mut bad = rules();
    bad.policies.stages.get_mut(&StageName::new("b")).unwrap().max_attempts = 0;
    assert!(bad.validate().unwrap_err().contains("stage b"));
}
