//! Ready cursors: where a writer's claims start reading a stage's ready rows.
//!
//! Why: a claim reads the first ready rows of a stage in claim order
//! (`tasks_ready`). Every claim leaves the index entry of the row version it
//! claimed behind, and while any transaction holds an older snapshot (a long
//! report, a stuck session: the xmin horizon) PostgreSQL can neither remove
//! those entries nor mark them dead, so a claim that starts at the head of
//! the stage visits every row claimed since that snapshot began: claims
//! slow down in proportion to the snapshot's age. A cursor remembers, per
//! writer and stage, a key in claim order before which no ready row is
//! known to wait, and the claim starts its index scan there.
//!
//! What keeps a cursor true (it may only be too early, never too late):
//!
//! - It moves forward only when the writer's batch commits, and only up to
//!   the first row that batch read and left ready (or past the last one it
//!   read, when it took them all). Rows it skipped because another writer
//!   had them locked are that writer's: when that writer commits without
//!   taking one (a claim refused after its read, a claim-next after a
//!   release, which reads one row more), it moves every cursor of the stage
//!   back to it, other replicas' included.
//! - Every commit that makes a row ready moves every writer's cursor of that
//!   stage back to the row, if it lies earlier: this store's writers after
//!   their own commits, other replicas' through the NOTIFY that already
//!   announces new work (which names the earliest key per stage; a stage
//!   without one sends the cursors to the head).
//! - A batch that read a cursor moves it no further than any position it was
//!   moved back to while the batch ran (the batch may not have seen that row).
//! - Whatever escapes the above (a notification lost with a dropped LISTEN
//!   connection, or a NOTIFY that failed after its commit) is caught by
//!   `RESET_EVERY`: all cursors go back to the head, and when the LISTEN
//!   connection is made again.
//!
//! Cursors need every writer of the schema to be heard, so the store uses
//! them only while it LISTENs (`PostgresOptions::ready_cursors`). The careful
//! rerun of a batch, with savepoints, reads from the head and moves no cursor
//! forward (what it made ready still moves them back).

use baton_core::engine::ReadyKey;
use baton_core::{StageName, TaskId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often every cursor goes back to the head of its stage: the bound on
/// how long a ready row can wait unseen if a wake-up was lost.
pub(crate) const RESET_EVERY: Duration = Duration::from_secs(5);

/// Stages with cursors, at most; claims in further stages read from the head.
const STAGES_MAX: usize = 10_000;

/// A position in claim order: priority descending, then deadline rank, then
/// id. Sent in NOTIFY payloads (`crate::listen`) under short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Key {
    #[serde(rename = "p")]
    pub priority: i32,
    #[serde(rename = "d")]
    pub deadline_rank: i64,
    pub id: Uuid,
}

impl Key {
    pub(crate) fn of(key: &ReadyKey) -> Self {
        Self { priority: key.priority, deadline_rank: key.deadline_rank, id: key.id.0 }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then(self.deadline_rank.cmp(&other.deadline_rank))
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The earlier of two positions, `None` being the head.
fn earlier(a: Option<Key>, b: Option<Key>) -> Option<Key> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    }
}

/// Where one writer's claims start in one stage.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// `None`: the head of the stage.
    at: Option<Key>,
    /// Where the slot was moved back to since its writer's batch read it
    /// (`Some(None)`: to the head): the batch may not have seen that row.
    lowered: Option<Option<Key>>,
}

/// Where a batch started reading a stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    pub at: Option<Key>,
}

/// The cursors of one store's writers.
pub(crate) struct Cursors {
    writers: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    stages: HashMap<StageName, Vec<Slot>>,
    reset_at: Instant,
}

impl Cursors {
    pub(crate) fn new(writers: usize) -> Self {
        Self {
            writers: writers.max(1),
            inner: Mutex::new(Inner { stages: HashMap::new(), reset_at: Instant::now() }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `writer` starts reading `stage`'s ready rows. From here until
    /// `advance`, the slot records how far it is moved back.
    pub(crate) fn start(&self, writer: usize, stage: &StageName) -> Start {
        let mut inner = self.lock();
        if inner.reset_at.elapsed() >= RESET_EVERY {
            inner.rewind();
        }
        if inner.stages.len() >= STAGES_MAX && !inner.stages.contains_key(stage) {
            return Start { at: None };
        }
        let writers = self.writers;
        let slots = inner.stages.entry(stage.clone()).or_insert_with(|| vec![Slot::default(); writers]);
        match slots.get_mut(writer) {
            Some(slot) => {
                slot.lowered = None;
                Start { at: slot.at }
            }
            None => Start { at: None },
        }
    }

    /// After `writer`'s batch committed, having read `stage`: its claims may
    /// start at `to` from now on, or where the cursor was moved back to
    /// while the batch ran, if that is earlier.
    pub(crate) fn advance(&self, writer: usize, stage: &StageName, to: Key) {
        let mut inner = self.lock();
        let Some(slot) = inner.stages.get_mut(stage).and_then(|slots| slots.get_mut(writer)) else { return };
        slot.at = match slot.lowered.take() {
            None => Some(to),
            Some(lowered) => earlier(lowered, Some(to)),
        };
    }

    /// A commit made a row ready in `stage` at `key` (`None`: somewhere):
    /// every writer's cursor of the stage moves back to it if it lies later.
    pub(crate) fn lower(&self, stage: &StageName, key: Option<Key>) {
        let mut inner = self.lock();
        if let Some(slots) = inner.stages.get_mut(stage) {
            for slot in slots {
                slot.at = earlier(slot.at, key);
                slot.lowered = Some(match slot.lowered {
                    None => key,
                    Some(before) => earlier(before, key),
                });
            }
        }
    }

    /// Every cursor back to the head (wake-ups may have been missed).
    pub(crate) fn reset(&self) {
        self.lock().rewind();
    }
}

impl Inner {
    /// Every slot to the head, batches in flight included: the head is also
    /// where they will be moved back to when they commit.
    fn rewind(&mut self) {
        for slot in self.stages.values_mut().flatten() {
            slot.at = None;
            slot.lowered = Some(None);
        }
        self.reset_at = Instant::now();
    }
}

/// What one attempt at a batch read and wrote, for the cursors: kept until
/// the batch commits (or dropped with it).
#[derive(Debug, Default)]
pub(crate) struct Scans {
    /// Where each stage was first read from in this batch.
    pub starts: HashMap<StageName, Start>,
    /// Every ready row read, by stage (locked by this batch: nobody else can
    /// take them before it commits).
    pub read: HashMap<StageName, Vec<Key>>,
    /// Tasks the batch saved.
    pub saved: HashSet<TaskId>,
    /// The earliest row the batch made ready, by stage.
    pub made_ready: HashMap<StageName, Key>,
    /// Reads of ready rows, and those that started from a cursor.
    pub reads: u64,
    pub reads_from_cursor: u64,
}

impl Scans {
    /// A save of a task: if it is ready, its position in its stage.
    pub(crate) fn saved(&mut self, id: TaskId, ready_in: Option<(&StageName, Key)>) {
        self.saved.insert(id);
        if let Some((stage, key)) = ready_in {
            let earliest = self.made_ready.entry(stage.clone()).or_insert(key);
            *earliest = (*earliest).min(key);
        }
    }

    /// After the batch committed: moves `writer`'s cursors past what it took,
    /// then every cursor back to the earliest row it made ready or read and
    /// left ready. Returns those positions by stage, for other replicas'
    /// cursors: the rows it left were locked while it ran, so other claims
    /// skipped them and their cursors may have passed them.
    pub(crate) fn committed(self, cursors: &Cursors, writer: usize) -> HashMap<StageName, Key> {
        let (mut firsts, mut reads) = (self.made_ready, self.read);
        for stage in self.starts.keys() {
            let Some(mut read) = reads.remove(stage) else { continue };
            read.sort();
            let left = read.iter().find(|k| !self.saved.contains(&TaskId(k.id)));
            if let Some(&to) = left.or(read.last()) {
                cursors.advance(writer, stage, to);
            }
            if let Some(&left) = left {
                let first = firsts.entry(stage.clone()).or_insert(left);
                *first = (*first).min(left);
            }
        }
        for (stage, key) in &firsts {
            cursors.lower(stage, Some(*key));
        }
        firsts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(priority: i32, n: u128) -> Key {
        Key { priority, deadline_rank: i64::MAX, id: Uuid::from_u128(n) }
    }

    #[test]
    fn claim_order_is_priority_first_then_deadline_then_age() {
        assert!(key(5, 9) < key(1, 1), "higher priority first");
        assert!(key(1, 1) < key(1, 2), "then the older id");
        let soon = Key { deadline_rank: 10, ..key(1, 9) };
        assert!(soon < key(1, 1), "an earlier deadline before an older id");
    }

    #[test]
    fn a_cursor_moves_past_what_its_batch_took_and_stops_at_what_it_left() {
        let cursors = Cursors::new(2);
        let s = StageName::new("s");
        let mut scans = Scans::default();
        scans.starts.insert(s.clone(), cursors.start(0, &s));
        scans.read.insert(s.clone(), vec![key(0, 3), key(0, 1), key(0, 2)]);
        scans.saved(TaskId(Uuid::from_u128(1)), None);
        scans.saved(TaskId(Uuid::from_u128(3)), None);
        cursors.start(1, &s);
        cursors.advance(1, &s, key(0, 5));
        let firsts = scans.committed(&cursors, 0);
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 2)), "stops at the row it read and left");
        assert_eq!(cursors.start(1, &s).at, Some(key(0, 2)), "another writer that passed it comes back");
        assert_eq!(firsts.get(&s), Some(&key(0, 2)), "told to other replicas");

        let mut scans = Scans::default();
        scans.starts.insert(s.clone(), cursors.start(0, &s));
        scans.read.insert(s.clone(), vec![key(0, 2), key(0, 4)]);
        scans.saved(TaskId(Uuid::from_u128(2)), None);
        scans.saved(TaskId(Uuid::from_u128(4)), None);
        assert!(scans.committed(&cursors, 0).is_empty(), "nothing left, nothing made ready");
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 4)), "past the last row, all taken");
    }

    #[test]
    fn a_row_made_ready_earlier_moves_every_cursor_back() {
        let cursors = Cursors::new(2);
        let s = StageName::new("s");
        for writer in 0..2 {
            cursors.start(writer, &s);
            cursors.advance(writer, &s, key(0, 10 + writer as u128));
        }
        let mut scans = Scans::default();
        scans.saved(TaskId(Uuid::from_u128(5)), Some((&s, key(0, 5))));
        scans.saved(TaskId(Uuid::from_u128(7)), Some((&s, key(0, 7))));
        scans.committed(&cursors, 1);
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 5)));
        assert_eq!(cursors.start(1, &s).at, Some(key(0, 5)));
        cursors.lower(&s, Some(key(0, 9)));
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 5)), "a later row moves nothing");
        cursors.lower(&s, Some(key(9, 99)));
        assert_eq!(cursors.start(0, &s).at, Some(key(9, 99)), "a higher priority is earlier");
        cursors.lower(&s, None);
        assert_eq!(cursors.start(1, &s).at, None, "an unknown position is the head");
    }

    #[test]
    fn a_batch_moves_no_further_than_a_row_made_ready_while_it_ran() {
        let cursors = Cursors::new(1);
        let s = StageName::new("s");
        cursors.start(0, &s);
        cursors.advance(0, &s, key(0, 10));
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 10)));
        // Other writers commit rows at 15 and 30 after this batch read from 10.
        cursors.lower(&s, Some(key(0, 30)));
        cursors.lower(&s, Some(key(0, 15)));
        cursors.advance(0, &s, key(0, 20));
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 15)), "the batch may not have seen 15");
        cursors.lower(&s, Some(key(0, 40)));
        cursors.advance(0, &s, key(0, 25));
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 25)), "a row after the target holds nothing back");
        cursors.advance(0, &s, key(0, 26));
        assert_eq!(cursors.start(0, &s).at, Some(key(0, 26)), "nothing moved back since the read");
        cursors.reset();
        assert_eq!(cursors.start(0, &s).at, None);
    }
}
