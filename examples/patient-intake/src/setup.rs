//! The workflow the run applies and who works it. The shared file
//! `workflow.toml` is parsed with baton-api's own parser (the one `baton
//! workflow validate` and the server use); unless the run keeps the file's
//! timings, every worker stage is put on a demo clock (`Timings::Demo`: a
//! two seconds to accept, two-second leases) and the workflow is
//! rendered back for `apply`, so a run takes seconds instead of hours. The
//! graph, the agents and the human stages are the file's, untouched.
//!
//! `Cast` names the stages the scenario uses and the agent that works each,
//! from the file's `agents` lists, and checks that the file still has the
//! shape the scenario relies on (intake, then triage, then a specialist that
//! reroutes to a backup, then billing, compensated by refund), saying what is
//! missing when it does not.

use anyhow::{Context, anyhow, bail};
use baton_core::{Limits, Policies, StageName, Workflow, WorkflowStage};
use std::collections::BTreeSet;

/// The workflow file, as committed next to this crate.
pub const WORKFLOW_SOURCE: &str = include_str!("../workflow.toml");

/// How long a worker stage gives a task to be claimed, on the demo clock.
pub const DEMO_ACCEPT_WITHIN_MS: i64 = 2_000;
/// A worker stage's lease on the demo clock (also what the agents ask for).
pub const DEMO_LEASE_MS: i64 = 2_000;
/// The first retry's backoff on the demo clock, and its cap.
pub const DEMO_RETRY_MS: (i64, i64) = (200, 1_000);

/// The stage names the scenario uses (the workflow file's vocabulary).
pub mod stage {
    pub const INTAKE: &str = "intake";
    pub const TRIAGE: &str = "triage";
    pub const SPECIALIST: &str = "specialist";
    pub const BACKUP: &str = "specialist-backup";
    pub const EMAIL: &str = "notify-email";
    pub const SMS: &str = "notify-sms";
    pub const BILLING: &str = "billing";
    pub const REFUND: &str = "refund";
    pub const FRONT_DESK: &str = "front-desk";
}

/// Which timings the run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timings {
    /// Worker stages on the demo clock; human stages as written.
    #[default]
    Demo,
    /// The file as written (minutes to accept: a run then takes that long).
    AsWritten,
}

/// The parsed workflow and the source to apply.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub workflow: Workflow,
    /// What `apply` sends: the file itself, or its demo-clock rendering.
    pub source: String,
}

/// Parses `source` against the default policies and limits (those `baton
/// dev` starts with) and applies `timings`.
pub fn prepare(source: &str, timings: Timings) -> anyhow::Result<Prepared> {
    let mut workflow = parse(source)?;
    if timings == Timings::AsWritten {
        return Ok(Prepared { workflow, source: source.to_owned() });
    }
    for stage in workflow.stages.values_mut().filter(|s| !s.policy.human) {
        let p = &mut stage.policy;
        p.accept_within_ms = DEMO_ACCEPT_WITHIN_MS;
        p.lease_ms = DEMO_LEASE_MS;
        (p.retry.initial_ms, p.retry.max_ms) = DEMO_RETRY_MS;
    }
    let rendered = baton_api::render_workflow(&workflow);
    // The rendering must say exactly what was meant: parse it back.
    let again = parse(&rendered).context("the demo-clock rendering of the workflow")?;
    if !again.same_definition(&workflow) {
        bail!("the demo-clock rendering of the workflow parses back to another definition");
    }
    Ok(Prepared { workflow, source: rendered })
}

fn parse(source: &str) -> anyhow::Result<Workflow> {
    baton_api::parse_workflow(source, &Policies::default(), &Limits::default()).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow!("the workflow file has errors:\n{}", lines.join("\n"))
    })
}

/// The stages the scenario uses and the agent that works each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cast {
    pub intake: String,
    pub triage: String,
    /// Never answers: on the roster, claims nothing.
    pub specialist: String,
    pub backup: String,
    pub mailer: String,
    pub sms: String,
    pub billing: String,
    /// The stage after billing, if the workflow has one, and its agent.
    /// Aborts happen there: only stages already done are compensated, so an
    /// abort at billing itself has nothing to refund.
    pub after_billing: Option<(String, String)>,
    pub refund: String,
    /// Stages whose tasks count as "in the human inbox".
    pub human_stages: BTreeSet<String>,
}

impl Cast {
    /// Reads the cast from the workflow and checks the shape the scenario needs.
    pub fn of(wf: &Workflow) -> anyhow::Result<Self> {
        use stage::*;
        let get = |name: &str| -> anyhow::Result<&WorkflowStage> {
            wf.stage(&StageName::new(name))
                .ok_or_else(|| anyhow!("the workflow has no stage `{name}`: the scenario needs it"))
        };
        let agent = |name: &str| -> anyhow::Result<String> {
            Ok(get(name)?.agents.first().cloned().unwrap_or_else(|| format!("{name}-bot")))
        };
        let next = |name: &str| -> anyhow::Result<Option<String>> {
            Ok(get(name)?.next.as_ref().map(|n| n.as_str().to_owned()))
        };
        let expect = |what: bool, message: &str| if what { Ok(()) } else { Err(anyhow!("{message}")) };
        expect(wf.entry.as_str() == INTAKE, "the workflow must start at `intake`")?;
        expect(next(INTAKE)?.as_deref() == Some(TRIAGE), "`intake` must have next = \"triage\"")?;
        expect(next(TRIAGE)?.as_deref() == Some(SPECIALIST), "`triage` must have next = \"specialist\"")?;
        expect(
            get(TRIAGE)?.routes.iter().any(|r| r.as_str() == FRONT_DESK),
            "`triage` must route to `front-desk`",
        )?;
        expect(
            get(SPECIALIST)?.policy.reroute_to.as_ref().map(StageName::as_str) == Some(BACKUP),
            "`specialist` must reroute to `specialist-backup`",
        )?;
        expect(
            next(BACKUP)?.as_deref() == Some(BILLING),
            "`specialist-backup` must have next = \"billing\"",
        )?;
        expect(
            get(BILLING)?.compensate.as_ref().map(StageName::as_str) == Some(REFUND),
            "`billing` must be compensated by `refund`",
        )?;
        expect(get(FRONT_DESK)?.policy.human, "`front-desk` must be a human stage")?;
        get(EMAIL)?;
        get(SMS)?;
        let after_billing = match next(BILLING)? {
            Some(after) => Some((after.clone(), agent(&after)?)),
            None => None,
        };
        let mut human_stages: BTreeSet<String> =
            wf.stages.iter().filter(|(_, s)| s.policy.human).map(|(n, _)| n.as_str().to_owned()).collect();
        human_stages.insert(baton_core::policy::DEFAULT_HUMAN_STAGE.to_owned());
        Ok(Self {
            intake: agent(INTAKE)?,
            triage: agent(TRIAGE)?,
            specialist: agent(SPECIALIST)?,
            backup: agent(BACKUP)?,
            mailer: agent(EMAIL)?,
            sms: agent(SMS)?,
            billing: agent(BILLING)?,
            after_billing,
            refund: agent(REFUND)?,
            human_stages,
        })
    }

    /// The stage where lapsed-insurance cases are aborted.
    pub fn abort_stage(&self) -> &str {
        self.after_billing.as_ref().map_or(stage::BILLING, |(s, _)| s.as_str())
    }

    /// Whether an abort there compensates billing (billing is done by then).
    pub fn refunds_possible(&self) -> bool {
        self.after_billing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_file_prepares_on_the_demo_clock() {
        let prepared = prepare(WORKFLOW_SOURCE, Timings::Demo).unwrap();
        let wf = &prepared.workflow;
        let triage = wf.stage(&StageName::new(stage::TRIAGE)).unwrap();
        assert_eq!((triage.policy.accept_within_ms, triage.policy.lease_ms), (2_000, 2_000));
        let desk = wf.stage(&StageName::new(stage::FRONT_DESK)).unwrap();
        assert!(
            desk.policy.human && desk.policy.accept_within_ms > 60_000,
            "human stages keep their timings"
        );
        let as_written = prepare(WORKFLOW_SOURCE, Timings::AsWritten).unwrap();
        assert_eq!(as_written.source, WORKFLOW_SOURCE);
        assert_eq!(
            as_written.workflow.stages.keys().collect::<Vec<_>>(),
            wf.stages.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_cast_comes_from_the_file() {
        let cast = Cast::of(&prepare(WORKFLOW_SOURCE, Timings::Demo).unwrap().workflow).unwrap();
        assert_eq!(cast.specialist, "specialist-bot");
        assert_eq!(cast.refund, "billing-bot");
        assert!(cast.human_stages.contains(stage::FRONT_DESK));
    }

    #[test]
    fn a_file_without_the_scenario_shape_is_refused_with_why() {
        let source = WORKFLOW_SOURCE.replace("reroute_to = \"specialist-backup\"", "");
        let wf = prepare(&source, Timings::AsWritten).unwrap().workflow;
        let error = Cast::of(&wf).unwrap_err().to_string();
        assert!(error.contains("reroute to `specialist-backup`"), "{error}");
    }
}
