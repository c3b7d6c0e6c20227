//! Audit: verify every task's history against its row. For each task, its
//! events must run from version 1 without gaps, each `prev_hash` must be the
//! previous event's hash and each hash must match the event's content; the
//! last event must carry the row as it is (`after`) and its hash must be the
//! row's head. An edited event breaks its hash, a deleted one leaves a gap (or,
//! if it was the last, a head that no longer matches), a reordered one breaks
//! the chain. The payload, stored beside the row, is checked too: against
//! the SHA-256 its `submitted` event records, or, for tasks written before
//! events recorded it, against the task's `submit_digest` (the digest of the
//! whole submit request, payload included, which every event's `after`
//! carries), rebuilt from the first event and the stored payload. An edited
//! payload is reported with its task. The first broken link of each task is
//! reported.
//!
//! Works through the public `Store` reads, so it verifies any store; it reads
//! pages of `AUDIT_PAGE_MAX` tasks and stops after `AUDIT_TASKS_MAX` tasks.

use crate::command::NewTask;
use crate::event::{Event, Hash, digest_json, verify_chain};
use crate::ids::TaskId;
use crate::store::{Store, TaskFilter};
use crate::task::Task;

/// Tasks read per page of the audit.
pub const AUDIT_PAGE_MAX: usize = 500;
/// Tasks one audit run verifies at most (the report says when it stopped).
pub const AUDIT_TASKS_MAX: usize = 100_000_000;

/// A task whose history does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub task: TaskId,
    /// The version of the first event that fails (or the row's revision when
    /// the events verify but the row does not match the last of them).
    pub version: u64,
    pub problem: String,
}

/// What an audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub tasks: u64,
    pub events: u64,
    pub broken: Vec<BrokenLink>,
    /// The audit stopped at `AUDIT_TASKS_MAX` before the end.
    pub truncated: bool,
}

/// Verifies every task of `store`; `progress` is called after each page with
/// the tasks verified so far.
pub async fn verify_store(
    store: &dyn Store,
    mut progress: impl FnMut(u64),
) -> Result<AuditReport, crate::store::Error> {
    let mut report = AuditReport::default();
    let mut after = None;
    loop {
        let page = store.list(TaskFilter { after, limit: AUDIT_PAGE_MAX, ..TaskFilter::default() }).await?;
        for task in &page.tasks {
            report.tasks += 1;
            let events = store.history(task.id).await?;
            report.events += events.len() as u64;
            let view = store.get(task.id).await?;
            if let Some(broken) = check_task(task.id, &events, view.as_ref()) {
                report.broken.push(broken);
            }
        }
        progress(report.tasks);
        match page.next {
            Some(next) if (report.tasks as usize) < AUDIT_TASKS_MAX => after = Some(next),
            Some(_) => {
                report.truncated = true;
                return Ok(report);
            }
            None => return Ok(report),
        }
    }
}

/// The first broken link of one task, if any.
pub fn check_task(
    id: TaskId,
    events: &[crate::event::Event],
    view: Option<&crate::store::TaskView>,
) -> Option<BrokenLink> {
    let broken = |version: u64, problem: String| Some(BrokenLink { task: id, version, problem });
    let Some(view) = view else { return broken(0, "the task's row is missing".to_owned()) };
    if let Err((i, why)) = verify_chain(events) {
        let version = events.get(i).map_or(i as u64 + 1, |e| e.version);
        return broken(version, format!("event {}: {why}", i + 1));
    }
    if let Some(e) = events.iter().find(|e| e.task != id) {
        return broken(e.version, format!("event {} belongs to task {}", e.version, e.task));
    }
    let Some(last) = events.last() else { return broken(1, "the task has no events".to_owned()) };
    if last.version != view.task.revision {
        return broken(
            last.version + 1,
            format!(
                "the row is at revision {} but the events end at version {}: events are missing",
                view.task.revision, last.version
            ),
        );
    }
    if last.hash != view.head {
        return broken(last.version, "the row's head is not the last event's hash".to_owned());
    }
    if last.after != view.task {
        return broken(last.version, "the row differs from the last event's state".to_owned());
    }
    if !payload_matches(&events[0], &view.payload) {
        return broken(1, "the stored payload differs from the one submitted: it was edited".to_owned());
    }
    None
}

/// Whether `payload` is the payload the task was submitted with, judged by
/// its first event (already verified as part of the chain).
pub fn payload_matches(first: &Event, payload: &str) -> bool {
    match first.payload_digest {
        Some(digest) => digest == Hash::of(payload.as_bytes()),
        None => submit_digest(&first.after, payload) == first.after.submit_digest,
    }
}

/// The submit digest of a task as first stored, with `payload`: the digest
/// `decide::submit` took of the submit request, rebuilt from the row.
fn submit_digest(task: &Task, payload: &str) -> String {
    let request = NewTask {
        namespace: task.namespace.clone(),
        stage: task.stage.clone(),
        payload: payload.to_owned(),
        priority: task.priority,
        deadline: task.deadline,
        idempotency_key: task.idempotency_key.clone(),
        labels: task.labels.clone(),
        parent: task.parent,
        trace: task.trace.clone(),
        submitter: task.submitter.clone(),
        workflow: task.workflow.as_ref().map(|w| w.name.clone()),
        compensation: task.compensation,
    };
    digest_json(&request).to_hex()
}

#[cfg(test)]
mod tests {
    //! The payload check: new events carry the payload's digest; older ones
    //! are judged by the submit digest rebuilt from the first event.

    use super::*;
    use crate::engine::Rules;
    use crate::ids::TaskId;

    #[test]
    fn an_edited_payload_fails_with_and_without_a_recorded_digest() {
        let mut new = NewTask::new("intake", r#"{"patient":"p-1"}"#);
        new.priority = 3;
        new.idempotency_key = Some("p-1".into());
        new.labels.insert("ward".into(), "b".into());
        let id = TaskId(uuid::Uuid::from_u128(7));
        let first = crate::decide::submit(id, &new, &Rules::default(), 10).expect("a valid submit").event;
        assert!(first.payload_digest.is_some(), "a new submit event records its payload's digest");
        let old = Event { payload_digest: None, ..first.clone() };
        for event in [&first, &old] {
            assert!(payload_matches(event, &new.payload));
            assert!(!payload_matches(event, r#"{"patient":"p-2"}"#), "an edit is caught");
            assert!(!payload_matches(event, r#"{"patient": "p-1"}"#), "even one byte");
        }
    }
}
