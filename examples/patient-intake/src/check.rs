//! The end of a run: wait (bounded) until every task the run made has
//! settled, then check each one and count.
//!
//! Settled means done, cancelled, or waiting or held in a human stage (the
//! inbox). Checked, for every patient's task and every child it has:
//! - it exists and has settled: otherwise it is *lost*;
//! - its history is complete: versions 1..=n without a gap, the first a
//!   `submitted` with a zero `prev_hash`, each `prev_hash` the hash of the
//!   event before, the last one the task's revision, state and stage;
//! - the patient's case ended as its facts say (routine: done; unclear: in
//!   the inbox; lapsed: aborted, and every compensable stage it had done
//!   compensated by a child that is done), along the expected path through
//!   the stages (its lineage), with the specialist never claiming (rerouted
//!   to the backup) and the notify fan-out joined;
//! - a task in a human stage is listed by the human inbox (`GET /v1/inbox`);
//! - the notify children are one email and one SMS, each done or in the
//!   inbox; and across the run the faults really happened: an email lease
//!   expired after the mailer crashed, an SMS was claimed only after a
//!   re-offer.

use crate::patients::{Case, Patient};
use crate::setup::{Cast, stage};
use baton_client::api::{Event, InboxQuery, ListQuery, StepExit, Task, TaskStateName};
use baton_client::{Client, Error, TaskId};
use baton_core::{StageName, Workflow};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// How often the settle wait looks at the tasks.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Pages of one task's children read at most.
const CHILD_PAGES_MAX: usize = 10;
/// Children per page.
const CHILD_PAGE_LIMIT: u32 = 100;
/// Pages of the human inbox read at most.
const INBOX_PAGES_MAX: usize = 50;
/// Inbox items per page.
const INBOX_PAGE_LIMIT: u32 = 100;
/// The hash before the first event.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A patient and the task submitted for it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub patient: Patient,
    pub task: TaskId,
}

/// What the checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub patients: usize,
    pub done: usize,
    /// Aborted, every compensation done (or escalated to people).
    pub aborted: usize,
    pub in_inbox: usize,
    pub children: usize,
    pub children_done: usize,
    pub children_in_inbox: usize,
    /// Tasks missing, or not settled when the wait ended.
    pub lost: usize,
    /// Patients the never-answering specialist's ladder rerouted to the backup.
    pub rerouted: usize,
    /// Fan-outs whose `any` join held.
    pub joins: usize,
    /// Email leases that expired (the crashed mailer's).
    pub lease_expiries: usize,
    /// SMS tasks claimed only after a re-offer.
    pub late_answers: usize,
    /// Refund tasks done.
    pub refunds: usize,
    /// History events checked, over every task.
    pub events: usize,
}

/// Whether a task has settled: finished, or with the people.
pub fn settled(task: &Task, human: &BTreeSet<String>) -> bool {
    match task.state {
        TaskStateName::Done | TaskStateName::Cancelled => true,
        TaskStateName::Waiting | TaskStateName::Held => human.contains(&task.stage),
        TaskStateName::Blocked => false,
    }
}

/// Waits until every tracked task and every child has settled, or `timeout`
/// passes. Returns whether everything settled.
pub async fn wait_settled(
    client: &Client,
    roots: &[Tracked],
    human: &BTreeSet<String>,
    timeout: Duration,
) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if all_settled(client, roots, human).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(SETTLE_POLL).await;
    }
}

async fn all_settled(client: &Client, roots: &[Tracked], human: &BTreeSet<String>) -> Result<bool, Error> {
    for root in roots {
        if !settled(&client.get(root.task).await?, human) {
            return Ok(false);
        }
        if !children(client, root.task).await?.iter().all(|c| settled(c, human)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every child of `parent`, oldest first (bounded by `CHILD_PAGES_MAX` pages).
pub async fn children(client: &Client, parent: TaskId) -> Result<Vec<Task>, Error> {
    let mut all = Vec::new();
    let mut query = ListQuery { parent: Some(parent), limit: Some(CHILD_PAGE_LIMIT), ..Default::default() };
    for _ in 0..CHILD_PAGES_MAX {
        let page = client.list(&query).await?;
        all.extend(page.tasks);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    all.sort_by_key(|t| (t.created_at, t.id));
    Ok(all)
}

/// Every task the human inbox lists (`GET /v1/inbox`, bounded by `INBOX_PAGES_MAX` pages).
pub async fn inbox(client: &Client) -> Result<BTreeSet<TaskId>, Error> {
    let mut ids = BTreeSet::new();
    let mut query = InboxQuery { limit: Some(INBOX_PAGE_LIMIT), ..Default::default() };
    for _ in 0..INBOX_PAGES_MAX {
        let page = client.inbox(&query).await?;
        ids.extend(page.items.iter().map(|item| item.task.id));
        match page.next_cursor {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
    }
    Ok(ids)
}

/// The checks over a settled run (see the module documentation).
pub struct Checker<'a> {
    pub client: &'a Client,
    pub cast: &'a Cast,
    pub workflow: &'a Workflow,
    /// Leases the crashing mailer held when it died.
    pub crashed_leases: usize,
    /// What the human inbox lists: every task found in a human stage must be there.
    inbox: BTreeSet<TaskId>,
    pub counts: Counts,
    pub violations: Vec<String>,
}

impl<'a> Checker<'a> {
    pub fn new(client: &'a Client, cast: &'a Cast, workflow: &'a Workflow, crashed_leases: usize) -> Self {
        Self {
            client,
            cast,
            workflow,
            crashed_leases,
            inbox: BTreeSet::new(),
            counts: Counts::default(),
            violations: Vec::new(),
        }
    }

    /// Checks every tracked patient, its children, and the run's faults.
    pub async fn run(mut self, roots: &[Tracked]) -> Result<(Counts, Vec<String>), Error> {
        self.inbox = inbox(self.client).await?;
        for root in roots {
            self.counts.patients += 1;
            self.patient(root).await?;
        }
        let c = &self.counts;
        let fanned_out = c.rerouted > 0;
        if fanned_out && self.crashed_leases > 0 && c.lease_expiries == 0 {
            self.violations.push("the mailer crashed holding leases, yet no email lease expired".to_owned());
        }
        if fanned_out && c.late_answers == 0 {
            self.violations
                .push("no SMS was claimed after a re-offer: the late answer did not happen".to_owned());
        }
        Ok((self.counts, self.violations))
    }

    fn violation(&mut self, who: &str, what: impl std::fmt::Display) {
        self.violations.push(format!("{who}: {what}"));
    }

    async fn patient(&mut self, root: &Tracked) -> Result<(), Error> {
        let who = format!("patient {} (task {}, {})", root.patient.id, root.task, root.patient.case.as_str());
        let Some((task, events)) = self.task_and_history(&who, root.task).await? else { return Ok(()) };
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let in_inbox = self.in_inbox(&task);
        // The outcome the case's facts call for.
        let outcome = match (task.state, in_inbox) {
            (TaskStateName::Done, _) => Some(Case::Routine),
            (TaskStateName::Cancelled, _) if kinds.last() == Some(&"aborted") => Some(Case::Lapsed),
            (_, true) => Some(Case::Unclear),
            _ => None,
        };
        match outcome {
            Some(Case::Routine) => self.counts.done += 1,
            Some(Case::Unclear) => self.counts.in_inbox += 1,
            Some(Case::Lapsed) => {}
            None => {
                self.counts.lost += 1;
                let at = format!("{} at {}", task.state, task.stage);
                self.violation(
                    &who,
                    format_args!("lost: ended {at}, neither done, aborted nor in the inbox"),
                );
            }
        }
        if outcome.is_some() && outcome != Some(root.patient.case) {
            let got = outcome.map_or("nothing", Case::as_str);
            self.violation(&who, format_args!("ended as {got}, expected {}", root.patient.case.as_str()));
        }
        self.path(&who, root).await?;
        let kids = children(self.client, root.task).await?;
        let through_backup = events.iter().any(|e| e.to.stage == stage::BACKUP);
        if through_backup {
            if kinds.contains(&"rerouted") {
                self.counts.rerouted += 1;
            } else {
                self.violation(&who, "reached the backup specialist without the specialist stage's reroute");
            }
            if kinds.contains(&"joined") {
                self.counts.joins += 1;
            } else {
                self.violation(&who, "the notify fan-out never joined");
            }
        }
        let mut notify: Vec<&str> = Vec::new();
        let mut compensated: Vec<String> = Vec::new();
        for child in &kids {
            self.child(&who, child, &mut compensated).await?;
            if child.stage == stage::EMAIL || child.stage == stage::SMS {
                notify.push(child.stage.as_str());
            }
        }
        notify.sort_unstable();
        let expected: &[&str] = if through_backup { &[stage::EMAIL, stage::SMS] } else { &[] };
        if notify != expected {
            self.violation(&who, format_args!("notify children {notify:?}, expected {expected:?}"));
        }
        if outcome == Some(Case::Lapsed) {
            self.saga(&who, &task, &events, &compensated);
        }
        Ok(())
    }

    /// An aborted case: cancelled by the abort, each compensable stage it
    /// had done compensated by a child that settled.
    fn saga(&mut self, who: &str, task: &Task, events: &[Event], compensated: &[String]) {
        if !task.cancel_reason.as_deref().is_some_and(|r| r.starts_with("aborted")) {
            self.violation(who, format_args!("cancelled with {:?}, not by an abort", task.cancel_reason));
        }
        // The stages the case finished, as the abort saw them: left by a handoff.
        let done_stages: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == "handed_off")
            .filter_map(|e| e.from.as_ref().map(|f| f.stage.as_str()))
            .collect();
        let mut owed: Vec<String> = done_stages
            .iter()
            .filter_map(|s| self.workflow.stage(&StageName::new(*s)).and_then(|d| d.compensate.clone()))
            .map(|s| s.as_str().to_owned())
            .collect();
        owed.sort_unstable();
        let mut got = compensated.to_vec();
        got.sort_unstable();
        if got != owed {
            self.violation(who, format_args!("compensated {got:?}, owed {owed:?}"));
        } else if self.cast.refunds_possible() && !owed.iter().any(|s| s == stage::REFUND) {
            self.violation(who, "aborted after billing, yet no refund was owed");
        }
        if owed.is_empty() || got == owed {
            self.counts.aborted += 1;
        }
    }

    /// One child: settled, history complete; counts the faults it shows.
    async fn child(
        &mut self,
        parent: &str,
        child: &Task,
        compensated: &mut Vec<String>,
    ) -> Result<(), Error> {
        let who = format!("{parent}, child {} at {}", child.id, child.stage);
        self.counts.children += 1;
        let Some((task, events)) = self.task_and_history(&who, child.id).await? else { return Ok(()) };
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let in_inbox = self.in_inbox(&task);
        match task.state {
            TaskStateName::Done => self.counts.children_done += 1,
            _ if in_inbox => self.counts.children_in_inbox += 1,
            state => {
                self.counts.lost += 1;
                self.violation(&who, format_args!("lost: ended {state} at {}", task.stage));
            }
        }
        // Where the child started: its first event's stage.
        let born = events.first().map_or(task.stage.as_str(), |e| e.to.stage.as_str());
        match born {
            stage::EMAIL => {
                self.counts.lease_expiries += kinds.iter().filter(|k| **k == "lease_expired").count()
            }
            stage::SMS => {
                let reoffered = kinds.iter().position(|k| *k == "reoffered");
                let claimed = kinds.iter().position(|k| *k == "claimed");
                if let (Some(r), Some(c)) = (reoffered, claimed)
                    && r < c
                {
                    self.counts.late_answers += 1;
                }
            }
            stage::REFUND if task.state == TaskStateName::Done => self.counts.refunds += 1,
            _ => {}
        }
        let is_compensation =
            self.workflow.stages.values().any(|s| s.compensate.as_ref().map(StageName::as_str) == Some(born));
        if is_compensation && (task.state == TaskStateName::Done || in_inbox) {
            compensated.push(born.to_owned());
        }
        Ok(())
    }

    /// The expected path of the case through the stages (its lineage).
    async fn path(&mut self, who: &str, root: &Tracked) -> Result<(), Error> {
        let lineage = self.client.lineage(root.task).await?;
        let mut stages: Vec<&str> = Vec::new();
        for step in &lineage.steps {
            if stages.last() != Some(&step.stage.as_str()) {
                stages.push(step.stage.as_str());
            }
        }
        let mut expected = vec![stage::INTAKE, stage::TRIAGE];
        match root.patient.case {
            Case::Unclear => expected.push(stage::FRONT_DESK),
            Case::Routine | Case::Lapsed => {
                expected.extend([stage::SPECIALIST, stage::BACKUP, stage::BILLING]);
                if let Some((after, _)) = &self.cast.after_billing {
                    expected.push(after.as_str());
                }
            }
        }
        if stages != expected {
            self.violation(who, format_args!("went through {stages:?}, expected {expected:?}"));
        }
        for step in lineage.steps.iter().filter(|s| s.stage == stage::SPECIALIST) {
            if step.claimed_by.is_some() || step.exit != Some(StepExit::Rerouted) {
                let by = step.claimed_by.as_deref().unwrap_or("nobody");
                let exit = step.exit.map_or("open", StepExit::as_str);
                self.violation(
                    who,
                    format_args!("at specialist: claimed by {by}, exit {exit}; expected a reroute"),
                );
            }
        }
        if root.patient.case != Case::Unclear
            && !lineage.steps.iter().any(|s| s.stage == stage::BACKUP && s.exit == Some(StepExit::Spawned))
        {
            self.violation(who, "the backup specialist never spawned the notify children");
        }
        Ok(())
    }

    fn in_inbox(&self, task: &Task) -> bool {
        matches!(task.state, TaskStateName::Waiting | TaskStateName::Held)
            && self.cast.human_stages.contains(&task.stage)
    }

    /// Reads a task and its history and checks the history is complete; a
    /// missing task is counted lost.
    async fn task_and_history(&mut self, who: &str, id: TaskId) -> Result<Option<(Task, Vec<Event>)>, Error> {
        let task = match self.client.get(id).await {
            Ok(task) => task,
            Err(Error::NotFound { .. }) => {
                self.counts.lost += 1;
                self.violation(who, "lost: the server does not know the task");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let events = self.client.history(id).await?.events;
        self.counts.events += events.len();
        if self.in_inbox(&task) && !self.inbox.contains(&id) {
            self.violation(
                who,
                format_args!("waits at human stage {} but the inbox does not list it", task.stage),
            );
        }
        for problem in chain_problems(&task, &events) {
            self.violation(who, format_args!("history: {problem}"));
        }
        Ok(Some((task, events)))
    }
}

/// What is wrong with a task's history, if anything.
pub fn chain_problems(task: &Task, events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(first) = events.first() else { return vec!["no events".to_owned()] };
    if first.kind != "submitted" || first.prev_hash != ZERO_HASH {
        problems.push(format!("starts with {} after {}", first.kind, first.prev_hash));
    }
    let mut previous: Option<&Event> = None;
    for (i, event) in events.iter().enumerate() {
        if event.version != i as u64 + 1 {
            problems.push(format!("event {} has version {}", i + 1, event.version));
        }
        if event.hash.len() != ZERO_HASH.len() || !event.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push(format!("version {} has hash {:?}", event.version, event.hash));
        }
        if let Some(before) = previous
            && event.prev_hash != before.hash
        {
            problems.push(format!("version {} does not chain to version {}", event.version, before.version));
        }
        previous = Some(event);
    }
    if let Some(last) = events.last() {
        if last.version != task.revision {
            problems
                .push(format!("ends at version {}, the task is at revision {}", last.version, task.revision));
        }
        if last.to.state != task.state || last.to.stage != task.stage {
            problems.push(format!(
                "ends {} at {}, the task is {} at {}",
                last.to.state, last.to.stage, task.state, task.stage
            ));
        }
    }
    problems
}

/// The summary table.
pub fn table(c: &Counts) -> String {
    let mut out = String::new();
    let mut row = |label: &str, value: usize| {
        let _ = writeln!(out, "  {label:<40} {value:>5}");
    };
    row("patients submitted", c.patients);
    row("  done", c.done);
    row("  aborted, compensation settled", c.aborted);
    row("  in the human inbox", c.in_inbox);
    row("children (notify, compensation)", c.children);
    row("  done", c.children_done);
    row("  in the human inbox", c.children_in_inbox);
    row("lost", c.lost);
    row("rerouted (specialist never answered)", c.rerouted);
    row("email leases expired (mailer crashed)", c.lease_expiries);
    row("SMS answered after a re-offer (late)", c.late_answers);
    row("notify fan-outs joined (any)", c.joins);
    row("refunds done", c.refunds);
    row("history events checked", c.events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_client::api::{Position, Timestamp};

    fn event(version: u64, kind: &str, prev: &str, hash: &str) -> Event {
        Event {
            version,
            at: Timestamp::from_millis(0),
            actor: "baton".to_owned(),
            kind: kind.to_owned(),
            from: None,
            to: Position { state: TaskStateName::Waiting, stage: "a".to_owned() },
            epoch: 0,
            note: None,
            findings: None,
            confidence: None,
            handoff_id: None,
            prev_hash: prev.to_owned(),
            hash: hash.to_owned(),
        }
    }

    fn task(revision: u64) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "01900000-0000-7000-8000-000000000000", "stage": "a", "state": "waiting", "priority": 0,
            "submitter": "baton", "created_at": "2026-01-01T00:00:00.000Z",
            "updated_at": "2026-01-01T00:00:00.000Z", "revision": revision, "epoch": 0,
            "attempts": 0, "reoffers": 0, "reroutes": 0
        }))
        .unwrap()
    }

    #[test]
    fn a_chain_with_a_gap_or_a_broken_link_is_reported() {
        let (h1, h2, h3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        let good = [event(1, "submitted", ZERO_HASH, &h1), event(2, "claimed", &h1, &h2)];
        assert!(chain_problems(&task(2), &good).is_empty());
        let gap = [event(1, "submitted", ZERO_HASH, &h1), event(3, "claimed", &h1, &h2)];
        assert!(chain_problems(&task(3), &gap).iter().any(|p| p.contains("has version 3")));
        let broken = [event(1, "submitted", ZERO_HASH, &h1), event(2, "claimed", &h3, &h2)];
        assert!(chain_problems(&task(2), &broken).iter().any(|p| p.contains("does not chain")));
        assert!(chain_problems(&task(5), &good).iter().any(|p| p.contains("revision 5")));
    }
}
