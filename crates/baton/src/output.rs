//! Printing answers on stdout: `-o json` prints the API's JSON unchanged (one
//! document per command, pretty), `-o text` a compact form for people. Text
//! output is for reading, not parsing; scripts should use `-o json`.

use baton_api as api;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Printer {
    format: Format,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn task(&self, task: &api::Task) -> anyhow::Result<()> {
        self.print(task, || task_text(task))
    }

    /// A submit's answer. A replay (the idempotency key was used before, with
    /// the same body) says so: in text as the first line, with `-o json` on
    /// stderr, so the JSON stays the API's document.
    pub fn submitted(&self, task: &api::Task, created: bool) -> anyhow::Result<()> {
        if created {
            return self.task(task);
        }
        let replay = "an earlier submit with this idempotency key came back; nothing new was created";
        if self.format == Format::Json {
            eprintln!("replayed: {replay}");
        }
        self.print(task, || format!("{:<12}{replay}\n{}", "replayed", task_text(task)))
    }

    pub fn leases(&self, leases: &[api::Lease]) -> anyhow::Result<()> {
        let response = api::ClaimResponse { leases: leases.to_vec(), skipped: Vec::new() };
        self.print(&response, || leases.iter().map(lease_text).collect())
    }

    pub fn history(&self, history: &api::History) -> anyhow::Result<()> {
        self.print(history, || {
            let mut s = String::new();
            for e in &history.events {
                let from =
                    e.from.as_ref().map(|p| format!("{}@{} -> ", p.state, p.stage)).unwrap_or_default();
                let _ = write!(
                    s,
                    "{:>3}  {}  {:<13} {:<24} {from}{}@{}",
                    e.version, e.at, e.kind, e.actor, e.to.state, e.to.stage
                );
                if let Some(note) = &e.note {
                    let _ = write!(s, "  \"{note}\"");
                }
                if let Some(c) = e.confidence {
                    let _ = write!(s, "  confidence {c}");
                }
                if let Some(f) = &e.findings {
                    let _ = write!(s, "  findings {f}");
                }
                s.push('\n');
            }
            s
        })
    }

    pub fn page(&self, page: &api::TaskPage) -> anyhow::Result<()> {
        self.print(page, || {
            let mut s = String::new();
            for t in &page.tasks {
                let _ = writeln!(
                    s,
                    "{}  {:<9} {:<20} prio {:<4} updated {}",
                    t.id, t.state, t.stage, t.priority, t.updated_at
                );
            }
            if page.tasks.is_empty() {
                s.push_str("no tasks\n");
            }
            if let Some(cursor) = &page.next_cursor {
                let _ = writeln!(s, "more: --cursor {cursor}");
            }
            s
        })
    }

    /// A task's lineage: one line per step, the totals, then the tree.
    pub fn lineage(&self, lineage: &api::Lineage) -> anyhow::Result<()> {
        self.print(lineage, || {
            let mut s = format!("task {}: now {} in {}\n", lineage.task, lineage.state, lineage.stage);
            for (n, step) in lineage.steps.iter().enumerate() {
                let by = match (&step.claimed_by, step.epoch) {
                    (Some(agent), Some(epoch)) => format!("{agent} (epoch {epoch})"),
                    (Some(agent), None) => agent.clone(),
                    _ => "unclaimed".to_owned(),
                };
                let exit = match (step.exit, &step.to_stage) {
                    (Some(exit), Some(to)) => format!("{exit} -> {to}"),
                    (Some(exit), None) => exit.to_string(),
                    (None, _) => "(now)".to_owned(),
                };
                let _ = writeln!(
                    s,
                    "{:>3}  {:<20} {}  {:<24} waited {:>9}  held {:>9}  {exit}",
                    n + 1,
                    step.stage,
                    step.entered_at,
                    by,
                    ms_text(step.waited_ms),
                    ms_text(step.held_ms),
                );
            }
            let t = &lineage.totals;
            let _ = writeln!(
                s,
                "total {}: waited {}, held {}, blocked {}",
                ms_text(t.total_ms),
                ms_text(t.waited_ms),
                ms_text(t.held_ms),
                ms_text(t.blocked_ms)
            );
            if let Some(parent) = lineage.tree.parent {
                let _ = writeln!(s, "parent {parent}");
            }
            tree_text(&mut s, &lineage.tree.children, lineage.tree.children_truncated, 0);
            s
        })
    }

    /// A handoff and its outcome.
    pub fn handoff(&self, handoff: &api::Handoff) -> anyhow::Result<()> {
        self.print(handoff, || {
            let mut s = format!(
                "handoff {} of task {}: {} -> {} by {} at {}\n",
                handoff.id,
                handoff.task,
                handoff.from_stage,
                handoff.to_stage,
                handoff.from_agent,
                handoff.at
            );
            let outcome = match &handoff.outcome {
                api::HandoffOutcome::Pending => "pending".to_owned(),
                api::HandoffOutcome::Accepted { by, at, epoch } => {
                    format!("accepted by {by} at {at} (epoch {epoch})")
                }
                api::HandoffOutcome::Rerouted { to, at } => format!("rerouted to {to} at {at}"),
                api::HandoffOutcome::Escalated { to, at } => format!("escalated to {to} at {at}"),
                api::HandoffOutcome::Cancelled { at } => format!("cancelled at {at}"),
            };
            let _ = writeln!(s, "outcome {outcome}");
            s
        })
    }

    /// A holder call's answer.
    pub fn act(&self, verb: &str, answer: &api::ActResponse) -> anyhow::Result<()> {
        self.print(answer, || {
            let t = &answer.task;
            let mut s = format!("{verb} task {}: now {} in {}\n", t.id, t.state, t.stage);
            if let Some(h) = answer.handoff_id {
                let _ = writeln!(s, "handoff {h}");
            }
            for lease in &answer.next {
                s.push_str("next: ");
                s.push_str(&lease_text(lease));
            }
            s
        })
    }

    fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Text => print!("{}", text()),
        }
        Ok(())
    }
}

/// Milliseconds for people: `850ms`, `12.5s`, `3m20s`.
fn ms_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms as f64 / 1_000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

/// The children of a lineage tree, indented by generation.
fn tree_text(s: &mut String, children: &[api::LineageChild], truncated: bool, depth: usize) {
    let indent = "  ".repeat(depth + 1);
    for child in children {
        let _ = writeln!(s, "{indent}child {}  {:<9} {}", child.id, child.state, child.stage);
        tree_text(s, &child.children, child.children_truncated, depth + 1);
    }
    if truncated {
        let _ = writeln!(s, "{indent}... more children (baton task list --parent ID)");
    }
}

fn lease_text(lease: &api::Lease) -> String {
    format!(
        "task {}  stage {}  epoch {}  lease until {}\n  payload {}\n",
        lease.task, lease.stage, lease.epoch, lease.lease_expires_at, lease.payload
    )
}

fn task_text(t: &api::Task) -> String {
    let mut s = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(s, "{key:<12}{value}");
    };
    line("id", t.id.to_string());
    line("stage", t.stage.clone());
    let detail = match (&t.waiting, &t.lease) {
        (Some(w), _) => format!(
            " ({})",
            match w.kind {
                api::WaitKind::Offered => "offered",
                api::WaitKind::Backoff => "backing off",
            }
        ),
        _ => String::new(),
    };
    line("state", format!("{}{detail}", t.state));
    if let Some(c) = &t.custodian {
        let kind = match c.kind {
            api::CustodianKind::Submitter => "submitter",
            api::CustodianKind::Agent => "agent",
            api::CustodianKind::Stage => "stage",
        };
        line("custodian", format!("{kind} {}", c.id));
    }
    if let Some(due) = t.due_at {
        line("due", due.to_string());
    }
    if let Some(lease) = &t.lease {
        line("lease", format!("{} at epoch {}, until {}", lease.agent, lease.epoch, lease.expires_at));
    }
    if let Some(h) = t.waiting.as_ref().and_then(|w| w.handoff.as_ref()) {
        line("handoff", format!("{} from {} ({}), {}", h.id, h.from_agent, h.from_stage, h.outcome.status()));
    }
    if let Some(j) = &t.join {
        let mode = match (j.mode, j.n) {
            (api::JoinMode::Quorum, Some(n)) => format!("quorum of {n}"),
            (api::JoinMode::All, _) => "all".to_owned(),
            (api::JoinMode::Any, _) => "any".to_owned(),
            (api::JoinMode::Quorum, None) => "quorum".to_owned(),
        };
        line(
            "join",
            format!("{mode}: {} of {} done, {} failed, until {}", j.done, j.children, j.failed, j.due_at),
        );
    }
    if let Some(wf) = &t.workflow {
        line("workflow", format!("{} v{}", wf.name, wf.version));
    }
    if !t.trail.is_empty() {
        line("trail", t.trail.join(" -> "));
    }
    if t.deadline_passed {
        line("overdue", "the deadline has passed".to_owned());
    }
    if t.compensation {
        line("saga", "compensation task".to_owned());
    }
    line("priority", t.priority.to_string());
    line("epoch", format!("{} (revision {}, attempts {})", t.epoch, t.revision, t.attempts));
    if let Some(d) = t.deadline {
        line("deadline", d.to_string());
    }
    if let Some(p) = t.parent {
        line("parent", p.to_string());
    }
    if let Some(k) = &t.idempotency_key {
        line("key", k.clone());
    }
    for (k, v) in &t.labels {
        line("label", format!("{k}={v}"));
    }
    line("submitter", t.submitter.clone());
    line("created", t.created_at.to_string());
    line("updated", t.updated_at.to_string());
    if let Some(at) = t.finished_at {
        line("finished", at.to_string());
    }
    if let Some(r) = &t.cancel_reason {
        line("reason", r.clone());
    }
    if let Some(r) = &t.result {
        line("result", r.to_string());
    }
    if let Some(p) = &t.payload {
        line("payload", p.to_string());
    }
    s
}
