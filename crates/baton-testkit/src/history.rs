//! The client-history checker (Jepsen style), beside the store checker in
//! `checker`. Fault tests make every client record each call it makes: the
//! invocation (what it asked, with task, epoch and idempotency key), then the
//! outcome it was told: `Ok` (with what the answer promised), `Fail` (a
//! definite refusal, with the API's error code) or `Unknown` (the call may or
//! may not have taken effect: a broken connection, a timeout, a server error).
//! After the run, `check_history` compares what clients were told against the
//! final store, read once through the public `Store` trait (`StoreView`):
//!
//! - every acknowledged submit exists, under its key, with the id returned;
//! - every acknowledged handoff or completion is in the task's chain exactly
//!   once, leaving the stage it named at the epoch it named;
//! - every acknowledged grant (claim or claim-next) is in the chain, and no
//!   epoch of a task was granted to two callers;
//! - no two different calls were both accepted for one task attempt (task,
//!   epoch), and no task was accepted as completed twice;
//! - no call was accepted although, before it was sent, a client had already
//!   been granted a newer epoch of its task (a stale epoch accepted);
//! - a definite refusal changed nothing;
//! - an unknown outcome may go either way: it is counted as applied or not.
//!
//! Only real-time order is used across clients (a call that returned before
//! another was invoked happened before it), so the checker needs no clock
//! agreement with the server. It writes nothing and knows no transport: the
//! fault runner in baton-harness records over HTTP, the unit tests below build
//! histories by hand over a real in-memory store.

use crate::checker::list_all;
use crate::exec::block_on;
use baton_core::{Event, EventKind, Store, TaskId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// API error codes that mean "your epoch is stale / you do not hold it".
pub const STALE_CODES: [&str; 2] = ["lease_lost", "not_holder"];

/// One lease a client was told it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub task: TaskId,
    pub stage: String,
    pub epoch: u64,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Submit { key: String },
    Claim { stages: Vec<String> },
    Handoff { task: TaskId, epoch: u64, from: String, to: String },
    Complete { task: TaskId, epoch: u64, stage: String },
}

impl Call {
    /// (task, epoch, kind, stage) of a call that ends a stage visit.
    fn exit(&self) -> Option<(TaskId, u64, EventKind, &str)> {
        match self {
            Self::Handoff { task, epoch, from, .. } => Some((*task, *epoch, EventKind::HandedOff, from)),
            Self::Complete { task, epoch, stage } => Some((*task, *epoch, EventKind::Completed, stage)),
            _ => None,
        }
    }
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted. `task`: a submit's id; `grants`: leases of a claim, or of a
    /// handoff's or completion's claim-next.
    Ok { task: Option<TaskId>, grants: Vec<Granted> },
    /// A definite refusal, with the API's error code (`lease_lost`, ...).
    Fail { code: String },
    /// May or may not have taken effect.
    Unknown { why: String },
}

/// One call: invocation and outcome, with times in ms since the recorder started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub client: u32,
    /// The request's idempotency key, if it sent one: calls with one key are one request.
    pub request_key: Option<String>,
    pub call: Call,
    pub outcome: Outcome,
    pub invoked_ms: u64,
    pub returned_ms: u64,
}

impl Entry {
    /// Who made the call: a retry with the same idempotency key is the same request.
    fn identity(&self, index: usize) -> String {
        match &self.request_key {
            Some(k) => format!("key:{k}"),
            None => format!("call:{index}"),
        }
    }
}

/// Collects entries from many client tasks; clones share one history.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    /// Wall-clock time of `start`, ms since the Unix epoch: to line entries
    /// up with timestamps from other tools (strace's, for one).
    start_unix_ms: u64,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { start: Instant::now(), start_unix_ms: unix.as_millis() as u64, entries: Arc::default() }
    }
}

/// A call invoked but not yet returned; finish it with `Recorder::finish`.
#[derive(Debug)]
pub struct Invoked {
    client: u32,
    request_key: Option<String>,
    call: Call,
    invoked_ms: u64,
}

impl Recorder {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since the recorder started, on the entries' time base.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_ms()
    }

    /// Wall-clock time (ms since the Unix epoch) of the recorder's time 0.
    pub fn start_unix_ms(&self) -> u64 {
        self.start_unix_ms
    }

    /// Notes the invocation; call right before sending the request.
    pub fn invoke(&self, client: u32, request_key: Option<String>, call: Call) -> Invoked {
        Invoked { client, request_key, call, invoked_ms: self.now_ms() }
    }

    /// Notes the outcome; call right after the answer (or the failure) arrives.
    pub fn finish(&self, invoked: Invoked, outcome: Outcome) {
        let entry = Entry {
            client: invoked.client,
            request_key: invoked.request_key,
            call: invoked.call,
            outcome,
            invoked_ms: invoked.invoked_ms,
            returned_ms: self.now_ms(),
        };
        self.entries.lock().expect("history lock").push(entry);
    }

    /// Every entry so far, in the order the outcomes arrived.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("history lock").clone()
    }
}

/// The final store as the checker sees it: keys and every task's events.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// Idempotency key (namespace `default`) to task id.
    pub keys: HashMap<String, TaskId>,
    pub histories: HashMap<TaskId, Vec<Event>>,
}

impl StoreView {
    /// Reads every task and its history through the public `Store` trait.
    pub fn read(store: &dyn Store) -> Result<Self, String> {
        let mut view = Self::default();
        for task in list_all(store)? {
            if task.namespace == "default"
                && let Some(key) = &task.idempotency_key
            {
                view.keys.insert(key.clone(), task.id);
            }
            let events =
                block_on(store.history(task.id)).map_err(|e| format!("history of {}: {e}", task.id))?;
            view.histories.insert(task.id, events);
        }
        Ok(view)
    }

    /// Events leaving stage `stage` of `task` by `kind`, at the attempt of epoch `epoch`.
    fn exits(&self, task: TaskId, epoch: u64, kind: EventKind, stage: &str) -> usize {
        let Some(events) = self.histories.get(&task) else { return 0 };
        events
            .windows(2)
            .filter(|w| {
                w[1].kind == kind
                    && w[0].after.epoch == epoch
                    && w[1].from.as_ref().is_some_and(|f| f.stage.as_str() == stage)
            })
            .count()
    }

    /// Whether `task` was ever held at `epoch` in `stage` (a claim, a claim-next, a re-claim).
    fn granted(&self, g: &Granted) -> bool {
        self.histories.get(&g.task).is_some_and(|events| {
            events.iter().any(|e| {
                e.kind == EventKind::Claimed && e.after.epoch == g.epoch && e.after.stage.as_str() == g.stage
            })
        })
    }
}

/// What the checker found. `problems()` lists every violation; the counts
/// are the evidence a fault test reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub calls: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Tasks the store holds.
    pub tasks: usize,
    /// Acknowledged effects missing from the store.
    pub lost: Vec<String>,
    /// Two accepted exits of one attempt, one epoch granted twice, a task completed twice.
    pub duplicate_accepted: Vec<String>,
    /// Calls accepted although a newer epoch had already been granted.
    pub stale_accepted: Vec<String>,
    /// Calls refused as stale (`lease_lost`, `not_holder`): the fence working.
    pub stale_refused: usize,
    /// Definite refusals whose effect is in the store anyway.
    pub refused_but_applied: Vec<String>,
    /// Unknown outcomes that took effect, and that did not.
    pub unknown_applied: usize,
    pub unknown_not_applied: usize,
}

impl Verdict {
    /// Every violation, one line each.
    pub fn problems(&self) -> Vec<String> {
        let tag = |name: &'static str| move |p: &String| format!("{name}: {p}");
        self.lost
            .iter()
            .map(tag("lost"))
            .chain(self.duplicate_accepted.iter().map(tag("duplicate accepted")))
            .chain(self.stale_accepted.iter().map(tag("stale accepted")))
            .chain(self.refused_but_applied.iter().map(tag("refused but applied")))
            .collect()
    }

    pub fn is_ok(&self) -> bool {
        self.problems().is_empty()
    }
}

/// Reads `store` and checks `entries` against it.
pub fn check_history_against(store: &dyn Store, entries: &[Entry]) -> Result<Verdict, String> {
    Ok(check_history(entries, &StoreView::read(store)?))
}

/// Compares what clients were told (`entries`) with the final store (`view`).
pub fn check_history(entries: &[Entry], view: &StoreView) -> Verdict {
    let mut v = Verdict { calls: entries.len(), tasks: view.histories.len(), ..Verdict::default() };
    // Every grant a client was told of: (task, epoch) -> (entry index, returned at).
    let mut grants: BTreeMap<(TaskId, u64), Vec<(usize, &Granted)>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Outcome::Ok { grants: gs, .. } = &e.outcome {
            for g in gs {
                grants.entry((g.task, g.epoch)).or_default().push((i, g));
            }
        }
    }
    // Exits a call may have made (Ok or Unknown), to tell a refusal's effect from a retry's.
    let mut maybe_exits: HashSet<(TaskId, u64, EventKind)> = HashSet::new();
    for e in entries {
        if !matches!(e.outcome, Outcome::Fail { .. })
            && let Some((task, epoch, kind, _)) = e.call.exit()
        {
            maybe_exits.insert((task, epoch, kind));
        }
    }
    let mut accepted_exits: BTreeMap<(TaskId, u64), Vec<(usize, &Entry)>> = BTreeMap::new();
    let mut completions: BTreeMap<TaskId, Vec<(u64, &Entry)>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        match (&e.outcome, &e.call) {
            (Outcome::Ok { task, .. }, Call::Submit { key }) => {
                v.ok += 1;
                match (view.keys.get(key), task) {
                    (Some(found), Some(told)) if found == told => {}
                    (Some(found), Some(told)) => {
                        v.lost.push(format!("submit {key:?} was told task {told}, the key names {found}"))
                    }
                    (None, _) => {
                        v.lost.push(format!("acknowledged submit {key:?} ({task:?}) is not in the store"))
                    }
                    (Some(_), None) => {}
                }
            }
            (Outcome::Ok { .. }, Call::Claim { .. }) => v.ok += 1,
            (Outcome::Ok { .. }, call) => {
                v.ok += 1;
                let Some((task, epoch, kind, stage)) = call.exit() else { continue };
                match view.exits(task, epoch, kind, stage) {
                    1 => {}
                    0 => v.lost.push(format!(
                        "acknowledged {} of task {task} from {stage} at epoch {epoch} is not in its chain",
                        kind.as_str()
                    )),
                    n => v.duplicate_accepted.push(format!(
                        "{} of task {task} from {stage} at epoch {epoch} is in its chain {n} times",
                        kind.as_str()
                    )),
                }
                accepted_exits.entry((task, epoch)).or_default().push((i, e));
                if kind == EventKind::Completed {
                    completions.entry(task).or_default().push((epoch, e));
                }
                // Stale: a newer epoch of this task had been granted before this call was sent.
                let newer = grants
                    .range((task, epoch + 1)..=(task, u64::MAX))
                    .flat_map(|(_, gs)| gs)
                    .find(|(gi, _)| entries[*gi].returned_ms < e.invoked_ms);
                if let Some((gi, g)) = newer {
                    v.stale_accepted.push(format!(
                        "{} of task {task} at epoch {epoch} (client {}, sent at {} ms) was accepted although \
                         epoch {} was granted to client {} at {} ms",
                        kind.as_str(),
                        e.client,
                        e.invoked_ms,
                        g.epoch,
                        entries[*gi].client,
                        entries[*gi].returned_ms
                    ));
                }
            }
            (Outcome::Fail { code }, call) => {
                v.failed += 1;
                if STALE_CODES.contains(&code.as_str()) {
                    v.stale_refused += 1;
                }
                let applied = match call {
                    Call::Submit { key } => {
                        view.keys.contains_key(key)
                            && !entries.iter().any(|o| {
                                matches!(&o.call, Call::Submit { key: k } if k == key)
                                    && !matches!(o.outcome, Outcome::Fail { .. })
                            })
                    }
                    _ => call.exit().is_some_and(|(task, epoch, kind, stage)| {
                        view.exits(task, epoch, kind, stage) > 0
                            && !maybe_exits.contains(&(task, epoch, kind))
                    }),
                };
                if applied {
                    v.refused_but_applied.push(format!("{call:?} was refused with {code} but took effect"));
                }
            }
            (Outcome::Unknown { .. }, call) => {
                v.unknown += 1;
                let applied = match call {
                    Call::Submit { key } => view.keys.contains_key(key),
                    Call::Claim { .. } => false,
                    _ => call
                        .exit()
                        .is_some_and(|(task, epoch, kind, stage)| view.exits(task, epoch, kind, stage) > 0),
                };
                if applied {
                    v.unknown_applied += 1;
                } else {
                    v.unknown_not_applied += 1;
                }
            }
        }
    }
    // Grants: each in the chain; no epoch of a task granted to two requests.
    for ((task, epoch), gs) in &grants {
        if let Some((_, g)) = gs.iter().find(|(_, g)| !view.granted(g)) {
            v.lost.push(format!(
                "acknowledged grant of task {task} in {} at epoch {epoch} is not in its chain",
                g.stage
            ));
        }
        let who: HashSet<String> = gs.iter().map(|(i, _)| entries[*i].identity(*i)).collect();
        if who.len() > 1 {
            v.duplicate_accepted
                .push(format!("epoch {epoch} of task {task} was granted to {} calls", who.len()));
        }
    }
    // Two different requests accepted for one attempt.
    for ((task, epoch), accepted) in &accepted_exits {
        let who: HashSet<String> = accepted.iter().map(|(i, e)| e.identity(*i)).collect();
        if who.len() > 1 {
            v.duplicate_accepted.push(format!(
                "attempt (task {task}, epoch {epoch}) was accepted as finished by {} calls (clients {:?})",
                who.len(),
                accepted.iter().map(|(_, e)| e.client).collect::<Vec<_>>()
            ));
        }
    }
    for (task, done) in &completions {
        let epochs: HashSet<u64> = done.iter().map(|(epoch, _)| *epoch).collect();
        if epochs.len() > 1 {
            let mut epochs: Vec<u64> = epochs.into_iter().collect();
            epochs.sort_unstable();
            v.duplicate_accepted.push(format!("task {task} was accepted as completed at epochs {epochs:?}"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    //! Goal: the checker passes a true history and names each lie. Method: a
    //! real history on the memory store (submit, claim, hand off, re-claim,
    //! complete), the client entries that truly describe it, then one edit
    //! per case: a lost acknowledgement, a duplicate completion, a stale
    //! epoch accepted, a refusal that took effect, and unknown outcomes both ways.

    use super::*;
    use crate::suite::{Case, complete, handoff_to, new_task};
    use crate::{MemoryStore, suite_rules};

    struct Fixture {
        view: StoreView,
        task: TaskId,
        /// The true history: submit, claim a@1, handoff a->b @1, claim b@2, complete b@2.
        entries: Vec<Entry>,
    }

    fn entry(client: u32, call: Call, outcome: Outcome, invoked_ms: u64, returned_ms: u64) -> Entry {
        Entry { client, request_key: None, call, outcome, invoked_ms, returned_ms }
    }

    fn ok(grants: Vec<Granted>) -> Outcome {
        Outcome::Ok { task: None, grants }
    }

    fn fixture() -> Fixture {
        let cx = Case::<MemoryStore>::open(suite_rules());
        let task = cx.submit(new_task("a", "{}").key("k1")).task.id;
        let alice = cx.claim_one("alice", "a");
        cx.act(&alice, handoff_to("b"));
        let bob = cx.claim_one("bob", "b");
        cx.act(&bob, complete());
        let view = StoreView::read(cx.store()).expect("read the store");
        let g = |stage: &str, epoch| Granted { task, stage: stage.into(), epoch };
        let (a, b) = (alice.epoch, bob.epoch);
        assert_eq!((a, b), (1, 2));
        let entries = vec![
            entry(
                0,
                Call::Submit { key: "k1".into() },
                Outcome::Ok { task: Some(task), grants: vec![] },
                0,
                1,
            ),
            entry(1, Call::Claim { stages: vec!["a".into()] }, ok(vec![g("a", a)]), 2, 3),
            entry(1, Call::Handoff { task, epoch: a, from: "a".into(), to: "b".into() }, ok(vec![]), 4, 5),
            entry(2, Call::Claim { stages: vec!["b".into()] }, ok(vec![g("b", b)]), 6, 7),
            entry(2, Call::Complete { task, epoch: b, stage: "b".into() }, ok(vec![]), 8, 9),
        ];
        cx.finish();
        Fixture { view, task, entries }
    }

    #[track_caller]
    fn flags(entries: &[Entry], view: &StoreView, expected: &str) -> Verdict {
        let verdict = check_history(entries, view);
        let problems = verdict.problems();
        assert!(problems.iter().any(|p| p.contains(expected)), "expected {expected:?} in {problems:#?}");
        verdict
    }

    #[test]
    fn a_true_history_passes() {
        let f = fixture();
        let verdict = check_history(&f.entries, &f.view);
        assert_eq!(verdict.problems(), Vec::<String>::new());
        assert_eq!((verdict.calls, verdict.ok, verdict.tasks), (5, 5, 1));
    }

    #[test]
    fn a_lost_acknowledgement_is_flagged() {
        let f = fixture();
        let mut entries = f.entries.clone();
        entries.push(entry(
            0,
            Call::Submit { key: "k2".into() },
            Outcome::Ok { task: Some(TaskId(uuid::Uuid::now_v7())), grants: vec![] },
            10,
            11,
        ));
        let v = flags(&entries, &f.view, "acknowledged submit \"k2\"");
        assert_eq!(v.lost.len(), 1);
        // A completion acknowledged at an epoch the chain never finished.
        let mut entries = f.entries.clone();
        entries[4].call = Call::Complete { task: f.task, epoch: 7, stage: "b".into() };
        flags(&entries, &f.view, "acknowledged completed of task");
        // A grant the store never made.
        let mut entries = f.entries.clone();
        entries[3].outcome = ok(vec![Granted { task: f.task, stage: "b".into(), epoch: 5 }]);
        flags(&entries, &f.view, "acknowledged grant");
    }

    #[test]
    fn a_duplicate_completion_is_flagged() {
        let f = fixture();
        // A second client was also told it completed the same attempt.
        let mut entries = f.entries.clone();
        let mut again = entries[4].clone();
        again.client = 3;
        entries.push(again);
        let v = flags(&entries, &f.view, "accepted as finished by 2 calls");
        assert_eq!(v.duplicate_accepted.len(), 1, "{v:#?}");
        // A retry with the same idempotency key is one request: not a duplicate.
        let mut entries = f.entries.clone();
        entries[4].request_key = Some("r1".into());
        let mut retry = entries[4].clone();
        retry.invoked_ms = 20;
        entries.push(retry);
        assert_eq!(check_history(&entries, &f.view).problems(), Vec::<String>::new());
        // The same epoch granted to two calls.
        let mut entries = f.entries.clone();
        let mut twice = entries[3].clone();
        twice.client = 4;
        entries.push(twice);
        flags(&entries, &f.view, "was granted to 2 calls");
    }

    #[test]
    fn a_stale_epoch_accepted_is_flagged() {
        let f = fixture();
        // Client 1's handoff at epoch 1 sent after client 2 had been granted epoch 2.
        let mut entries = f.entries.clone();
        entries[2].invoked_ms = 8;
        entries[2].returned_ms = 9;
        let v = flags(&entries, &f.view, "was accepted although epoch 2 was granted to client 2");
        assert_eq!(v.stale_accepted.len(), 1);
        // Sent before the newer grant returned: concurrent, not stale.
        let mut entries = f.entries.clone();
        entries[2].invoked_ms = 6;
        assert!(check_history(&entries, &f.view).is_ok());
    }

    #[test]
    fn refusals_and_unknown_outcomes() {
        let f = fixture();
        // A refused stale call that changed nothing is the fence working.
        let mut entries = f.entries.clone();
        entries.push(entry(
            1,
            Call::Complete { task: f.task, epoch: 1, stage: "a".into() },
            Outcome::Fail { code: "lease_lost".into() },
            8,
            9,
        ));
        let v = check_history(&entries, &f.view);
        assert!(v.is_ok(), "{v:#?}");
        assert_eq!(v.stale_refused, 1);
        // A refusal whose effect is in the store.
        let mut entries = f.entries.clone();
        entries[4].outcome = Outcome::Fail { code: "lease_lost".into() };
        flags(&entries, &f.view, "refused with lease_lost but took effect");
        // Unknown outcomes go either way and are counted.
        let mut entries = f.entries.clone();
        entries[4].outcome = Outcome::Unknown { why: "connection reset".into() };
        entries.push(entry(
            5,
            Call::Submit { key: "never-arrived".into() },
            Outcome::Unknown { why: "timed out".into() },
            10,
            11,
        ));
        let v = check_history(&entries, &f.view);
        assert!(v.is_ok(), "{v:#?}");
        assert_eq!((v.unknown, v.unknown_applied, v.unknown_not_applied), (2, 1, 1));
    }

    #[test]
    fn a_task_completed_twice_is_flagged() {
        let f = fixture();
        let mut entries = f.entries.clone();
        entries.push(entry(
            1,
            Call::Complete { task: f.task, epoch: 1, stage: "b".into() },
            ok(vec![]),
            3,
            4,
        ));
        flags(&entries, &f.view, "accepted as completed at epochs [1, 2]");
    }

    #[test]
    fn the_recorder_keeps_invocation_and_outcome() {
        let recorder = Recorder::default();
        let call = recorder.invoke(7, Some("r".into()), Call::Submit { key: "k".into() });
        recorder.finish(call, Outcome::Unknown { why: "killed".into() });
        let entries = recorder.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].client, entries[0].request_key.as_deref()), (7, Some("r")));
        assert!(entries[0].returned_ms >= entries[0].invoked_ms);
    }
}
