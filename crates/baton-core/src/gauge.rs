//! Per-stage counts of live tasks, kept by the write path so that the stage
//! gauges (the dashboard's overview, `/metrics`) cost O(stages) to read, not
//! O(live tasks).
//!
//! One place derives what a change does to the counts: `StageCounts::of`
//! says what one task row adds to its stage, and `GaugeDeltas::change` takes
//! the old row's part away and adds the new row's. The engine calls it for
//! every row it inserts or saves (`engine::Effects::gauges`); a store sums the
//! deltas of the operations it keeps and applies them once per batch, in the
//! same transaction as the rows. Stores never work out a delta themselves.
//!
//! The oldest ready task's `since` cannot be kept as a counter (taking the
//! oldest away would need the next oldest): stores read it per stage from an
//! index ordered by it (`IndexColumns::ready_since`).

use crate::ids::StageName;
use crate::task::{Task, TaskState};
use std::collections::BTreeMap;

/// What live tasks add to one stage's counters. Signed: as a delta it may
/// take away; as stored counters it is never negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Not done or cancelled: ready, held, blocked or backing off.
    pub live: i64,
    /// Waiting and claimable now (`Task::is_ready`).
    pub ready: i64,
    /// Leased to an agent.
    pub held: i64,
    /// Waiting for children.
    pub blocked: i64,
}

impl StageCounts {
    /// What one task row counts for in its stage: nothing once terminal.
    pub fn of(task: &Task) -> Self {
        let one = |b: bool| i64::from(b);
        Self {
            live: one(!task.is_terminal()),
            ready: one(task.is_ready()),
            held: one(matches!(task.state, TaskState::Held { .. })),
            blocked: one(matches!(task.state, TaskState::Blocked { .. })),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Adds a delta to these counts.
    pub fn apply(&mut self, delta: &Self) {
        self.add(delta, 1);
    }

    fn add(&mut self, other: &Self, sign: i64) {
        self.live += sign * other.live;
        self.ready += sign * other.ready;
        self.held += sign * other.held;
        self.blocked += sign * other.blocked;
    }
}

/// Summed changes to stage counters, by stage; stages whose changes cancel
/// out are left out, so an empty value writes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GaugeDeltas(BTreeMap<StageName, StageCounts>);

impl GaugeDeltas {
    /// Records one saved row: `before` is the row as loaded (`None` for a new
    /// task), `after` the row as saved.
    pub fn change(&mut self, before: Option<&Task>, after: &Task) {
        if let Some(before) = before {
            self.add(&before.stage, &StageCounts::of(before), -1);
        }
        self.add(&after.stage, &StageCounts::of(after), 1);
    }

    /// Adds another operation's deltas to these.
    pub fn merge(&mut self, other: &GaugeDeltas) {
        for (stage, counts) in &other.0 {
            self.add(stage, counts, 1);
        }
    }

    fn add(&mut self, stage: &StageName, counts: &StageCounts, sign: i64) {
        if counts.is_zero() {
            return;
        }
        let entry = self.0.entry(stage.clone()).or_default();
        entry.add(counts, sign);
        if entry.is_zero() {
            self.0.remove(stage);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The non-zero deltas, by stage name.
    pub fn iter(&self) -> impl Iterator<Item = (&StageName, &StageCounts)> {
        self.0.iter()
    }

    /// Clears the deltas, keeping the allocation.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::NewTask;
    use crate::engine::Rules;
    use crate::ids::TaskId;

    fn task(stage: &str) -> Task {
        let policies =
            crate::policy::Policies::default().with_stage(stage, crate::policy::StagePolicy::default());
        let rules = Rules { policies, limits: crate::limits::Limits::default() };
        let new = NewTask::new(stage, "{}");
        crate::decide::submit(TaskId(uuid::Uuid::nil()), &new, &rules, 1_000).expect("submit").task
    }

    #[test]
    fn a_move_takes_from_one_stage_and_adds_to_the_other() {
        let a = task("a");
        let mut b = a.clone();
        b.stage = StageName::new("b");
        let mut d = GaugeDeltas::default();
        d.change(None, &a);
        assert_eq!(d.iter().count(), 1);
        d.change(Some(&a), &b);
        let got: Vec<_> = d.iter().map(|(s, c)| (s.as_str().to_owned(), *c)).collect();
        let ready = StageCounts { live: 1, ready: 1, held: 0, blocked: 0 };
        assert_eq!(got, vec![("b".to_owned(), ready)], "a's +1 and -1 cancel out");
        let mut other = GaugeDeltas::default();
        other.change(Some(&b), &b);
        assert!(other.is_empty(), "an unchanged row changes no counter");
        other.merge(&d);
        assert_eq!(other, d);
    }
}
