//! Events: one per committed change of a task, append-only and hash-chained.
//! In memory every event carries the task as it is after the change
//! (`after`), so a history reads as a list of rows; on disk an event records
//! only what changed (`change`: the row's top-level fields whose JSON differs
//! from the row before, a removed one as null), and readers fold the changes
//! back into rows (`ChainReader`). Every `EVENT_CHECKPOINT_EVERY`th version
//! (1, 65, 129, ...) records the whole row, so a page of history from the end
//! folds from the checkpoint before it, not from the first event.
//!
//! Each event also carries the SHA-256 of the previous event, so an edited,
//! deleted or reordered event breaks the chain. The hash of a compact event
//! covers the previous hash and the compact JSON (in field order) of the
//! task id, version, time, actor, kind, the position it came from, the
//! report, the handoff, the change and the payload digest (`DeltaHashed`);
//! the row it folds to is checked against the change (`verify_chain`).
//! Events written before compact events (`change` absent) keep their bytes
//! and are hashed as they were: over the whole event with its `after`
//! (`Hashed`). A task's chain may hold both: new events chain onto old ones.
//! `canonical_json` (sorted keys) serves request fingerprints, whose bodies
//! come from clients in any key order.

use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::store::{Handoff, HandoffOutcome};
use crate::task::{StateName, Task, TaskState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Who caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// An agent, by id.
    Agent(AgentId),
    /// A non-agent principal (submitter, operator, admin), by name.
    Principal(String),
    /// Baton itself: timers and the ladder.
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent(a) => write!(f, "agent:{a}"),
            Self::Principal(p) => write!(f, "principal:{p}"),
            Self::System => f.write_str("baton"),
        }
    }
}

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    Claimed,
    Heartbeat,
    HandedOff,
    Completed,
    Released,
    Failed,
    RetryReady,
    Spawned,
    ChildSettled,
    Joined,
    Cancelled,
    LeaseExpired,
    Reoffered,
    Rerouted,
    Escalated,
    DeadlineNear,
    DeadlinePassed,
    Aborted,
    /// A message from a principal added to the task's history (an A2A
    /// client's reply to a task waiting for input): state, custody and
    /// timers are unchanged.
    Commented,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Claimed => "claimed",
            Self::Heartbeat => "heartbeat",
            Self::HandedOff => "handed_off",
            Self::Completed => "completed",
            Self::Released => "released",
            Self::Failed => "failed",
            Self::RetryReady => "retry_ready",
            Self::Spawned => "spawned",
            Self::ChildSettled => "child_settled",
            Self::Joined => "joined",
            Self::Cancelled => "cancelled",
            Self::LeaseExpired => "lease_expired",
            Self::Reoffered => "reoffered",
            Self::Rerouted => "rerouted",
            Self::Escalated => "escalated",
            Self::DeadlineNear => "deadline_near",
            Self::DeadlinePassed => "deadline_passed",
            Self::Aborted => "aborted",
            Self::Commented => "commented",
        }
    }
}

/// A state and stage, the two coordinates of a task's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub state: StateName,
    pub stage: StageName,
}

impl Position {
    pub fn of(task: &Task) -> Self {
        Self { state: task.state_name(), stage: task.stage.clone() }
    }
}

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The chain's start: the `prev_hash` of a task's first event.
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
            s.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }

    /// SHA-256 of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// One committed change of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub task: TaskId,
    /// Equals the task's revision after the change: 1, 2, 3... without gaps.
    pub version: u64,
    pub at: Millis,
    pub actor: Actor,
    pub kind: EventKind,
    pub from: Option<Position>,
    pub to: Position,
    pub note: Option<String>,
    pub findings: Option<serde_json::Value>,
    pub confidence: Option<f64>,
    pub handoff: Option<HandoffId>,
    /// The task row as it is after this change (on disk: folded from
    /// `change`, for events that have one).
    pub after: Task,
    /// What the change did to the row: its top-level fields that changed
    /// (all of them on a checkpoint version), a field that left as null.
    /// Absent on events written before compact events, whose hash covers
    /// `after` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<RowChange>,
    /// On a `submitted` event: the SHA-256 of the payload text as stored, so
    /// the chain covers the payload too (`audit` compares it). Events written
    /// before it existed have none, and hash exactly as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_digest: Option<Hash>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl Event {
    /// The hash this event should carry: SHA-256 over `prev_hash` and the
    /// compact JSON of every field but `hash`, in declared order (nested maps
    /// are sorted: serde_json's map is ordered by key). Serialized straight
    /// into the hasher: no intermediate value or string (this runs once per
    /// committed change, on the writer's hot path).
    pub fn compute_hash(&self) -> Hash {
        let mut hasher = HashWriter(Sha256::new());
        hasher.0.update(self.prev_hash.0);
        if let Some(change) = &self.change {
            let body = DeltaHashed {
                task: &self.task,
                version: self.version,
                at: self.at,
                actor: &self.actor,
                kind: self.kind,
                from: &self.from,
                note: &self.note,
                findings: &self.findings,
                confidence: self.confidence,
                handoff: &self.handoff,
                change,
                payload_digest: &self.payload_digest,
                prev_hash: &self.prev_hash,
            };
            serde_json::to_writer(&mut hasher, &body).expect("events serialize");
        } else {
            let body = Hashed {
                task: &self.task,
                version: self.version,
                at: self.at,
                actor: &self.actor,
                kind: self.kind,
                from: &self.from,
                to: &self.to,
                note: &self.note,
                findings: &self.findings,
                confidence: self.confidence,
                handoff: &self.handoff,
                after: &self.after,
                payload_digest: &self.payload_digest,
                prev_hash: &self.prev_hash,
            };
            serde_json::to_writer(&mut hasher, &body).expect("events serialize");
        }
        Hash(hasher.0.finalize().into())
    }

    /// Records what changed from `before` (the row as loaded; `None` for a
    /// new task), then sets `prev_hash` and `hash`, chaining this event after
    /// `prev`.
    pub fn seal(mut self, prev: Hash, before: Option<&Task>) -> Self {
        self.change = Some(row_change(before, &self.after, self.version));
        self.prev_hash = prev;
        self.hash = self.compute_hash();
        self
    }

    /// The event as stored: compact (what changed) for events with a
    /// `change`, the whole event for older ones. `task` and `version` are
    /// the stores' key columns, not repeated in the text.
    pub fn stored_body(&self) -> String {
        match &self.change {
            Some(change) => {
                let stored = StoredDeltaRef {
                    at: self.at,
                    actor: &self.actor,
                    kind: self.kind,
                    from: if is_checkpoint(self.version) { &self.from } else { &None },
                    note: &self.note,
                    findings: &self.findings,
                    confidence: self.confidence,
                    handoff: &self.handoff,
                    change,
                    payload_digest: &self.payload_digest,
                    prev_hash: if is_checkpoint(self.version) { Some(&self.prev_hash) } else { None },
                    hash: &self.hash,
                };
                serde_json::to_string(&stored).expect("events serialize")
            }
            None => serde_json::to_string(self).expect("events serialize"),
        }
    }
}

/// A row's top-level fields, by name, as JSON: the form of `Event::change`.
pub type RowChange = serde_json::Map<String, serde_json::Value>;

/// Every this many versions an event records the whole row (a checkpoint):
/// a page of history folds from the checkpoint before it.
pub const EVENT_CHECKPOINT_EVERY: u64 = 64;

/// Whether events of `version` record the whole row (1, 65, 129, ...).
pub fn is_checkpoint(version: u64) -> bool {
    version <= 1 || version % EVENT_CHECKPOINT_EVERY == 1
}

/// The version a history read must start from to fold `version`'s row: the
/// checkpoint at or before it.
pub fn fold_start(version: u64) -> u64 {
    if version <= 1 { 1 } else { (version - 1) / EVENT_CHECKPOINT_EVERY * EVENT_CHECKPOINT_EVERY + 1 }
}

fn row_map(task: &Task) -> RowChange {
    match serde_json::to_value(task).expect("tasks serialize") {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a task serializes as an object"),
    }
}

/// What changed from `before` to `after` at `version`: every field on a
/// checkpoint (or for a new task), else the fields whose JSON differs, a
/// field that `after` leaves out as null.
///
/// This runs on every write, on the store's writer, so it compares the
/// fields themselves and serializes only those that changed; it answers
/// exactly what comparing the two rows' JSON does (`row_change_by_json`,
/// which the tests hold it to).
pub fn row_change(before: Option<&Task>, after: &Task, version: u64) -> RowChange {
    let Some(before) = before.filter(|_| !is_checkpoint(version)) else { return row_map(after) };
    let mut change = RowChange::new();
    // Every field is named once: the pattern makes a new field a compile
    // error here until it is listed. Plain fields always serialize;
    // `skipped` ones are left out of the row when empty, so they change to
    // null; `implied` ones come from the event (`IMPLIED`).
    macro_rules! diff {
        (plain: $($p:ident),*; skipped: $($s:ident if $empty:expr),*; implied: $($i:ident),*) => {
            let Task { $($p,)* $($s,)* $($i: _,)* } = after;
            $(
                if &before.$p != $p {
                    change.insert(stringify!($p).to_owned(), field_json($p));
                }
            )*
            $(
                if &before.$s != $s {
                    let empty: fn(&_) -> bool = $empty;
                    let value = if empty($s) { serde_json::Value::Null } else { field_json($s) };
                    change.insert(stringify!($s).to_owned(), value);
                }
            )*
        };
    }
    diff!(
        plain: id, namespace, idempotency_key, submit_digest, stage, priority, deadline, parent, labels,
            trace, submitter, created_at, epoch, attempts, reoffers, reroutes, state;
        skipped: workflow if Option::is_none, trail if Vec::is_empty, boost_at if Option::is_none,
            deadline_passed if |b: &bool| !*b, compensation if |b: &bool| !*b;
        implied: updated_at, revision
    );
    change
}

fn field_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("task fields serialize")
}

/// `row_change` by comparing the two rows' whole JSON: the definition, kept
/// for the tests that hold the field-by-field comparison to it.
#[doc(hidden)]
pub fn row_change_by_json(before: Option<&Task>, after: &Task, version: u64) -> RowChange {
    let next = row_map(after);
    let Some(before) = before.filter(|_| !is_checkpoint(version)) else { return next };
    let prev = row_map(before);
    let mut change = RowChange::new();
    for (k, v) in &next {
        if prev.get(k) != Some(v) && !IMPLIED.contains(&k.as_str()) {
            change.insert(k.clone(), v.clone());
        }
    }
    for k in prev.keys() {
        if !next.contains_key(k) {
            change.insert(k.clone(), serde_json::Value::Null);
        }
    }
    change
}

/// Row fields a compact change leaves out, because every change sets them
/// from the event itself: the revision is the event's version and the row's
/// `updated_at` its time. Checkpoints record them like every field.
const IMPLIED: [&str; 2] = ["revision", "updated_at"];

/// Folds the change of event `version` at `at` into `row` (cleared first on
/// a checkpoint): a null removes the field, which reads back as its default
/// (every optional field of a task is `None` when absent).
fn fold(row: &mut RowChange, change: &RowChange, version: u64, at: Millis) {
    let checkpoint = is_checkpoint(version);
    if checkpoint {
        row.clear();
    }
    for (k, v) in change {
        if v.is_null() {
            row.remove(k);
        } else {
            row.insert(k.clone(), v.clone());
        }
    }
    if !checkpoint {
        row.insert(IMPLIED[0].to_owned(), version.into());
        row.insert(IMPLIED[1].to_owned(), at.into());
    }
}

fn task_of(row: &RowChange) -> Result<Task, serde_json::Error> {
    serde_json::from_value(serde_json::Value::Object(row.clone()))
}

/// An event as stored when it has a `change` (read side): no `after` (folded
/// on read), no `to` (the folded row's position), `from` and `prev_hash`
/// only on checkpoints (else the previous row's position and the previous
/// event's hash), `task` and `version` in the key columns.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredDelta {
    at: Millis,
    actor: Actor,
    kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    findings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handoff: Option<HandoffId>,
    change: RowChange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_digest: Option<Hash>,
    #[serde(default)]
    prev_hash: Option<Hash>,
    hash: Hash,
}

/// `StoredDelta`, borrowed, for writing: the same fields in the same order.
#[derive(Serialize)]
struct StoredDeltaRef<'a> {
    at: Millis,
    actor: &'a Actor,
    kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: &'a Option<Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    findings: &'a Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: &'a Option<HandoffId>,
    change: &'a RowChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_digest: &'a Option<Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_hash: Option<&'a Hash>,
    hash: &'a Hash,
}

/// Reads one task's stored events in version order, folding compact ones
/// into rows. Start it at version 1 or at a checkpoint (`fold_start`).
pub struct ChainReader {
    task: TaskId,
    /// The last row read, as JSON and as a task, and its event's hash.
    row: Option<(RowChange, Task, Hash)>,
}

impl ChainReader {
    pub fn new(task: TaskId) -> Self {
        Self { task, row: None }
    }

    /// Decodes the stored event `version` (the next in order).
    pub fn read(&mut self, version: u64, body: &str) -> Result<Event, serde_json::Error> {
        if body.starts_with("{\"task\"") {
            let event: Event = serde_json::from_str(body)?;
            self.row = Some((row_map(&event.after), event.after.clone(), event.hash));
            return Ok(event);
        }
        let stored: StoredDelta = serde_json::from_str(body)?;
        let checkpoint = is_checkpoint(version);
        let missing = |what: &str| {
            serde::de::Error::custom(format!("event {version} of task {} lacks {what}", self.task))
        };
        let (mut row, from, prev_hash) = match self.row.take() {
            Some((row, prev, hash)) if !checkpoint => (row, Some(Position::of(&prev)), hash),
            _ if checkpoint => {
                (RowChange::new(), stored.from.clone(), stored.prev_hash.ok_or_else(|| missing("prev_hash"))?)
            }
            _ => return Err(missing("the row before it (read from its checkpoint)")),
        };
        fold(&mut row, &stored.change, version, stored.at);
        let after = task_of(&row)?;
        let event = Event {
            task: self.task,
            version,
            at: stored.at,
            actor: stored.actor,
            kind: stored.kind,
            from,
            to: Position::of(&after),
            note: stored.note,
            findings: stored.findings,
            confidence: stored.confidence,
            handoff: stored.handoff,
            after: after.clone(),
            change: Some(stored.change),
            payload_digest: stored.payload_digest,
            prev_hash,
            hash: stored.hash,
        };
        self.row = Some((row, after, stored.hash));
        Ok(event)
    }
}

/// A handoff as its task's history tells it, so stores keep no record of
/// their own beside the events. The handoff is open in the rows of the
/// events that leave the task waiting with it (the handoff itself and any
/// re-offer); the first later event that names it settles it: a claim
/// accepts it (by the claiming agent, at the new epoch), a cancel cancels
/// it, a reroute or escalation ends it at the stage the task moved to.
pub fn handoff_from_history(events: &[Event], id: HandoffId) -> Option<Handoff> {
    let mut found: Option<Handoff> = None;
    for e in events {
        if let TaskState::Waiting { handoff: Some(h), .. } = &e.after.state
            && h.id == id
        {
            found = Some(h.clone());
            continue;
        }
        let Some(open) = found.as_ref().filter(|h| h.outcome == HandoffOutcome::Pending) else { continue };
        if e.handoff != Some(id) {
            continue;
        }
        let outcome = match (&e.kind, &e.actor) {
            (EventKind::Claimed, Actor::Agent(by)) => {
                HandoffOutcome::Accepted { by: by.clone(), at: e.at, epoch: e.after.epoch }
            }
            (EventKind::Cancelled, _) => HandoffOutcome::Cancelled { at: e.at },
            (EventKind::Rerouted, _) => HandoffOutcome::Rerouted { to: e.after.stage.clone(), at: e.at },
            _ => HandoffOutcome::Escalated { to: e.after.stage.clone(), at: e.at },
        };
        found = Some(Handoff { outcome, ..open.clone() });
    }
    found
}

/// Every handoff a task's history tells of, in the order they were made
/// (`handoff_from_history` for each).
pub fn handoffs_from_history(events: &[Event]) -> Vec<Handoff> {
    let mut ids: Vec<HandoffId> = Vec::new();
    for e in events {
        if let TaskState::Waiting { handoff: Some(h), .. } = &e.after.state
            && !ids.contains(&h.id)
        {
            ids.push(h.id);
        }
    }
    ids.into_iter().filter_map(|id| handoff_from_history(events, id)).collect()
}

/// Decodes a task's stored events, `rows` in version order from version 1
/// or from a checkpoint.
pub fn decode_chain<S: AsRef<str>>(task: TaskId, rows: &[(u64, S)]) -> Result<Vec<Event>, serde_json::Error> {
    let mut reader = ChainReader::new(task);
    rows.iter().map(|(version, body)| reader.read(*version, body.as_ref())).collect()
}

/// For a page of history read newest first whose oldest stored event is
/// `(version, body)`: the versions to read before it so it can be folded
/// (from its checkpoint up to, not including, it), if any.
pub fn fold_base(version: u64, body: &str) -> Option<std::ops::Range<u64>> {
    let start = fold_start(version);
    (start < version && !body.starts_with("{\"task\"")).then_some(start..version)
}

/// Decodes a page read newest first (`page`), after the events `base` that
/// `fold_base` asked for (oldest first). Answers newest first.
pub fn decode_page<S: AsRef<str>>(
    task: TaskId,
    base: &[(u64, S)],
    page: &[(u64, S)],
) -> Result<Vec<Event>, serde_json::Error> {
    let mut reader = ChainReader::new(task);
    for (version, body) in base {
        reader.read(*version, body.as_ref())?;
    }
    let mut out =
        page.iter().rev().map(|(v, body)| reader.read(*v, body.as_ref())).collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// The fields a compact event's hash covers, borrowed: what is stored, plus
/// the task id, version and previous position that the storage keys and the
/// previous row give back.
#[derive(Serialize)]
struct DeltaHashed<'a> {
    task: &'a TaskId,
    version: u64,
    at: Millis,
    actor: &'a Actor,
    kind: EventKind,
    from: &'a Option<Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    findings: &'a Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: &'a Option<HandoffId>,
    change: &'a RowChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_digest: &'a Option<Hash>,
    prev_hash: &'a Hash,
}

/// The fields an event's hash covers, borrowed, in `Event`'s order.
#[derive(Serialize)]
struct Hashed<'a> {
    task: &'a TaskId,
    version: u64,
    at: Millis,
    actor: &'a Actor,
    kind: EventKind,
    from: &'a Option<Position>,
    to: &'a Position,
    note: &'a Option<String>,
    findings: &'a Option<serde_json::Value>,
    confidence: Option<f64>,
    handoff: &'a Option<HandoffId>,
    after: &'a Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_digest: &'a Option<Hash>,
    prev_hash: &'a Hash,
}

/// Feeds serialized bytes into a hasher.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of a value's compact JSON, serialized straight into the hasher.
pub fn digest_json<T: Serialize + ?Sized>(value: &T) -> Hash {
    let mut hasher = HashWriter(Sha256::new());
    serde_json::to_writer(&mut hasher, value).expect("values serialize");
    Hash(hasher.0.finalize().into())
}

/// Serializes JSON canonically: object keys sorted, no whitespace. Numbers and
/// strings use serde_json's own (deterministic) formatting.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Checks one task's events: versions 1..n without gaps, each `prev_hash` the
/// previous `hash`, each hash correct, and each compact event's row the fold
/// of its change into the row before it (its `from` and `to` that row's and
/// its own position). Returns the index of the first bad event.
pub fn verify_chain(events: &[Event]) -> Result<(), (usize, &'static str)> {
    let mut prev = Hash::ZERO;
    let mut row: Option<(RowChange, &Task)> = None;
    for (i, e) in events.iter().enumerate() {
        if e.version != i as u64 + 1 {
            return Err((i, "version out of sequence"));
        }
        if e.prev_hash != prev {
            return Err((i, "prev_hash does not match the previous event"));
        }
        if e.compute_hash() != e.hash {
            return Err((i, "hash does not match the event's content"));
        }
        let map = match (&e.change, row.take()) {
            (Some(change), before) => {
                let checkpoint = is_checkpoint(e.version);
                let (mut map, before) = match before {
                    Some((map, before)) => (map, Some(before)),
                    None if checkpoint => (RowChange::new(), None),
                    None => return Err((i, "a change without the row before it")),
                };
                if !checkpoint && e.from.as_ref() != before.map(Position::of).as_ref() {
                    return Err((i, "from is not the previous row's position"));
                }
                fold(&mut map, change, e.version, e.at);
                if task_of(&map).as_ref().ok() != Some(&e.after) {
                    return Err((i, "the row does not match the recorded change"));
                }
                if e.to != Position::of(&e.after) {
                    return Err((i, "to is not the row's position"));
                }
                map
            }
            (None, _) => row_map(&e.after),
        };
        row = Some((map, &e.after));
        prev = e.hash;
    }
    Ok(())
}
