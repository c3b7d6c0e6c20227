//! Events: one per committed change of a task, append-only and hash-chained.
//! Each event carries the task as it is after the change (`after`), so folding
//! a task's events from empty reproduces its row exactly, and the SHA-256 of
//! the previous event, so an edited, deleted or reordered event breaks the
//! chain. A hash covers the previous hash and the event's compact serde JSON
//! in field order (`Hashed`); `canonical_json` (sorted keys) serves request
//! fingerprints, whose bodies come from clients in any key order.

use crate::ids::{AgentId, HandoffId, Millis, StageName, TaskId};
use crate::task::{StateName, Task};
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
    /// The task row as it is after this change.
    pub after: Task,
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
        let mut hasher = HashWriter(Sha256::new());
        hasher.0.update(self.prev_hash.0);
        serde_json::to_writer(&mut hasher, &body).expect("events serialize");
        Hash(hasher.0.finalize().into())
    }

    /// Sets `prev_hash` and `hash`, chaining this event after `prev`.
    pub fn seal(mut self, prev: Hash) -> Self {
        self.prev_hash = prev;
        self.hash = self.compute_hash();
        self
    }
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
/// previous `hash`, each hash correct. Returns the index of the first bad event.
pub fn verify_chain(events: &[Event]) -> Result<(), (usize, &'static str)> {
    let mut prev = Hash::ZERO;
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
        prev = e.hash;
    }
    Ok(())
}
