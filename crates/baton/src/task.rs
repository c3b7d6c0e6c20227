//! `baton task ...`: the client commands, one API call each through
//! `baton-client`, against `--address` / `BATON_ADDRESS`. Data goes to stdout
//! (`-o text` for people, `-o json` for scripts: the API's own JSON); the
//! caller's errors go to stderr via `main`, with a non-zero exit.

use crate::duration::parse_ms;
use crate::output::{Format, Printer};
use anyhow::{Context, bail};
use baton_api as api;
use baton_client::{Client, DEFAULT_ADDRESS};
use std::collections::BTreeMap;
use std::io::Read;

/// Where the server is and how to print.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The Baton server's address.
    #[arg(long, global = true, env = "BATON_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// The API token (`baton_<id>_<secret>`) a server with auth on (`baton
    /// serve`) names the caller by; not needed for `baton dev`.
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// A client for `--address`, sending `--token` if given.
    pub fn connect(&self) -> anyhow::Result<Client> {
        let client = Client::new(&self.address)?;
        Ok(match &self.token {
            Some(token) => client.with_token(token.trim()),
            None => client,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a task into a stage.
    Submit(SubmitArgs),
    /// Claim waiting tasks as an agent, waiting for work if asked to.
    Claim(ClaimArgs),
    /// Show a task with its payload.
    Show {
        /// The task's id.
        id: api::TaskId,
    },
    /// Show a task's events, oldest first.
    History { id: api::TaskId },
    /// Show a task's path through stages and agents, with the time spent at
    /// each step, and its parent and children.
    Lineage { id: api::TaskId },
    /// List tasks, oldest first, one page at a time.
    List(ListArgs),
    /// Cancel a task.
    Cancel {
        id: api::TaskId,
        /// Why; recorded in the history.
        #[arg(long)]
        reason: String,
    },
    /// Complete a task you hold.
    Complete(CompleteArgs),
    /// Hand a task you hold to another stage.
    Handoff(HandoffArgs),
    /// Extend the lease on a task you hold.
    Heartbeat(HeartbeatArgs),
    /// Give back a task you hold: it waits in its stage again.
    Release(ReleaseArgs),
    /// Report that a task you hold failed.
    Fail(FailArgs),
    /// Split a task you hold into child tasks; it waits (blocked) for them.
    Spawn(SpawnArgs),
    /// Abort the workflow of a task you hold: the stages done are compensated,
    /// latest first, then the task is cancelled.
    Abort(AbortArgs),
}

#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    id: api::TaskId,
    #[command(flatten)]
    lease: LeaseArgs,
    /// Why; recorded in the history and given to the compensation tasks.
    #[arg(long)]
    reason: String,
}

/// Who holds the lease, and its epoch: shared by the holder calls.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// The agent holding the lease (left out with a token: its principal).
    #[arg(long, env = "BATON_AGENT")]
    agent: Option<String>,
    /// The lease's epoch, from the claim.
    #[arg(long)]
    epoch: u64,
}

#[derive(Debug, clap::Args)]
pub struct HeartbeatArgs {
    id: api::TaskId,
    #[command(flatten)]
    lease: LeaseArgs,
    /// The new lease length from now, e.g. 5m; the stage's default when left out.
    #[arg(long = "lease", value_parser = parse_ms)]
    lease_ms: Option<u64>,
    /// A note for the history.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    id: api::TaskId,
    #[command(flatten)]
    lease: LeaseArgs,
    /// A note for the history.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct FailArgs {
    id: api::TaskId,
    #[command(flatten)]
    lease: LeaseArgs,
    /// What went wrong; recorded in the history.
    #[arg(long)]
    error: String,
    /// Offer the task again after a backoff (otherwise the ladder climbs).
    #[arg(long)]
    retryable: bool,
}

#[derive(Debug, clap::Args)]
pub struct SpawnArgs {
    id: api::TaskId,
    #[command(flatten)]
    lease: LeaseArgs,
    /// A child, `STAGE` or `STAGE=JSON` (its payload; `{}` when left out); repeat for more.
    #[arg(long = "child", required = true, value_parser = parse_child)]
    children: Vec<(String, serde_json::Value)>,
    /// When the join holds: `all`, `any` or `quorum:N`.
    #[arg(long, default_value = "all", value_parser = parse_join)]
    join: (api::JoinMode, Option<u32>),
    /// How long the children may take before the ladder acts, e.g. 10m.
    #[arg(long, value_parser = parse_ms)]
    within: u64,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The stage to submit into (with --workflow: its entry stage, or leave it out).
    #[arg(long, required_unless_present = "workflow")]
    stage: Option<String>,
    /// Submit through this workflow (its latest version): the task starts in its entry stage.
    #[arg(long)]
    workflow: Option<String>,
    /// The payload as JSON text; `@FILE` reads a file, `@-` standard input.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Higher is claimed first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Submitting again with the same key returns the same task.
    #[arg(long = "key")]
    idempotency_key: Option<String>,
    /// A label, `KEY=VALUE`; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The task's absolute deadline, RFC 3339 (e.g. 2030-01-31T12:00:00Z).
    #[arg(long)]
    deadline: Option<api::Timestamp>,
    /// The parent task's id.
    #[arg(long)]
    parent: Option<api::TaskId>,
}

#[derive(Debug, clap::Args)]
pub struct ClaimArgs {
    /// The claiming agent: required with auth off (agents name themselves);
    /// with a token it is the token's principal and may be left out.
    #[arg(long, env = "BATON_AGENT")]
    agent: Option<String>,
    /// A stage to claim from; repeat for more.
    #[arg(long = "stage", required = true)]
    stages: Vec<String>,
    /// Tasks to claim at most (1-100).
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// How long to wait for work, e.g. 30s (at most 60s).
    #[arg(long, value_parser = parse_ms, default_value = "0s")]
    wait: u64,
    /// Lease length, e.g. 5m; the stage's default when left out.
    #[arg(long, value_parser = parse_ms)]
    lease: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    stage: Option<String>,
    /// waiting, held, blocked, done or cancelled.
    #[arg(long)]
    state: Option<api::TaskStateName>,
    #[arg(long)]
    parent: Option<api::TaskId>,
    /// Tasks per page.
    #[arg(long)]
    limit: Option<u32>,
    /// The cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// What a holder reports; shared by complete and handoff.
#[derive(Debug, clap::Args)]
pub struct HolderArgs {
    /// The agent holding the lease (left out with a token: its principal).
    #[arg(long, env = "BATON_AGENT")]
    agent: Option<String>,
    /// The lease's epoch, from the claim.
    #[arg(long)]
    epoch: u64,
    /// A note for the history (and the next agent).
    #[arg(long)]
    note: Option<String>,
    /// Findings as JSON text.
    #[arg(long, value_parser = parse_json)]
    findings: Option<serde_json::Value>,
    /// Confidence between 0 and 1.
    #[arg(long)]
    confidence: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    id: api::TaskId,
    #[command(flatten)]
    holder: HolderArgs,
    /// The result as JSON text.
    #[arg(long, value_parser = parse_json)]
    result: Option<serde_json::Value>,
}

#[derive(Debug, clap::Args)]
pub struct HandoffArgs {
    id: api::TaskId,
    /// The stage to hand the task to.
    #[arg(long = "to")]
    to_stage: String,
    #[command(flatten)]
    holder: HolderArgs,
}

pub async fn run(client: &ClientArgs, command: TaskCommand) -> anyhow::Result<()> {
    let api = client.connect()?;
    let out = Printer::new(client.output);
    match command {
        TaskCommand::Submit(args) => {
            let payload = read_payload(&args.payload)?;
            let request = api::SubmitRequest {
                stage: args.stage,
                workflow: args.workflow,
                payload,
                priority: args.priority,
                deadline: args.deadline,
                idempotency_key: args.idempotency_key,
                labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
                parent: args.parent,
                trace: None,
            };
            let submitted = api.submit(&request).await?;
            out.submitted(&submitted.task, submitted.created)
        }
        TaskCommand::Claim(args) => {
            let request = api::ClaimRequest {
                stages: args.stages,
                max: args.max,
                wait_ms: args.wait,
                lease_ms: args.lease,
                agent: args.agent,
            };
            let leases = api.claim(&request).await?;
            if leases.is_empty() {
                eprintln!("no task was ready in {}", request.stages.join(", "));
            }
            out.leases(&leases)
        }
        TaskCommand::Show { id } => out.task(&api.get(id).await?),
        TaskCommand::History { id } => out.history(&api.history(id).await?),
        TaskCommand::Lineage { id } => out.lineage(&api.lineage(id).await?),
        TaskCommand::List(args) => {
            let query = api::ListQuery {
                stage: args.stage,
                state: args.state,
                parent: args.parent,
                cursor: args.cursor,
                limit: args.limit,
            };
            out.page(&api.list(&query).await?)
        }
        TaskCommand::Cancel { id, reason } => out.task(&api.cancel(id, &reason).await?),
        TaskCommand::Complete(args) => {
            let h = args.holder;
            let request = api::CompleteRequest {
                epoch: h.epoch,
                agent: h.agent,
                result: args.result,
                note: h.note,
                findings: h.findings,
                confidence: h.confidence,
                claim_next: None,
            };
            out.act("completed", &api.complete(args.id, &request).await?)
        }
        TaskCommand::Handoff(args) => {
            let h = args.holder;
            let request = api::HandoffRequest {
                epoch: h.epoch,
                agent: h.agent,
                to_stage: args.to_stage,
                note: h.note,
                findings: h.findings,
                confidence: h.confidence,
                claim_next: None,
            };
            out.act("handed off", &api.handoff(args.id, &request).await?)
        }
        TaskCommand::Abort(args) => {
            let LeaseArgs { agent, epoch } = args.lease;
            let api = match agent {
                Some(agent) => api.with_agent(agent),
                None => api,
            };
            out.act("aborted", &api.abort(args.id, epoch, &args.reason).await?)
        }
        TaskCommand::Heartbeat(args) => {
            let LeaseArgs { agent, epoch } = args.lease;
            let request = api::HeartbeatRequest {
                epoch,
                agent,
                lease_ms: args.lease_ms,
                note: args.note,
                claim_next: None,
            };
            out.act("heartbeat on", &api.heartbeat(args.id, &request).await?)
        }
        TaskCommand::Release(args) => {
            let LeaseArgs { agent, epoch } = args.lease;
            let request = api::ReleaseRequest { epoch, agent, note: args.note, claim_next: None };
            out.act("released", &api.release(args.id, &request).await?)
        }
        TaskCommand::Fail(args) => {
            let LeaseArgs { agent, epoch } = args.lease;
            let request = api::FailRequest {
                epoch,
                agent,
                error: args.error,
                retryable: args.retryable,
                claim_next: None,
            };
            out.act("failed", &api.fail(args.id, &request).await?)
        }
        TaskCommand::Spawn(args) => {
            let LeaseArgs { agent, epoch } = args.lease;
            let mut children = Vec::new();
            for (stage, payload) in args.children {
                let payload = api::Payload::from_json(payload.to_string())
                    .map_err(|e| anyhow::anyhow!("the payload of a {stage} child: {e}"))?;
                children.push(api::ChildSpec { stage, payload, priority: 0, labels: BTreeMap::new() });
            }
            let (mode, n) = args.join;
            let join = api::JoinRequest { mode, n, within_ms: args.within };
            let request = api::SpawnRequest { epoch, agent, children, join, claim_next: None };
            out.act("spawned from", &api.spawn(args.id, &request).await?)
        }
    }
}

/// The payload flag: JSON text, `@FILE`, or `@-` for standard input.
fn read_payload(flag: &str) -> anyhow::Result<api::Payload> {
    let (text, source) = match flag.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the payload from standard input")?;
            (text, "standard input".to_owned())
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the payload file {path}"))?;
            (text, path.to_owned())
        }
        None => (flag.to_owned(), "--payload".to_owned()),
    };
    match api::Payload::from_json(text.trim().to_owned()) {
        Ok(payload) => Ok(payload),
        Err(error) => bail!("the payload from {source} is not valid JSON: {error}"),
    }
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// A `--child`: `STAGE` or `STAGE=JSON`.
fn parse_child(text: &str) -> Result<(String, serde_json::Value), String> {
    let (stage, payload) = match text.split_once('=') {
        Some((stage, json)) => (stage, parse_json(json)?),
        None => (text, serde_json::json!({})),
    };
    if stage.is_empty() {
        return Err(format!("{text:?} names no stage; write STAGE or STAGE=JSON"));
    }
    Ok((stage.to_owned(), payload))
}

/// A `--join`: `all`, `any` or `quorum:N`.
fn parse_join(text: &str) -> Result<(api::JoinMode, Option<u32>), String> {
    match text {
        "all" => Ok((api::JoinMode::All, None)),
        "any" => Ok((api::JoinMode::Any, None)),
        _ => match text.strip_prefix("quorum:").map(str::parse::<u32>) {
            Some(Ok(n)) if n > 0 => Ok((api::JoinMode::Quorum, Some(n))),
            _ => Err(format!("{text:?} is not a join; write all, any or quorum:N")),
        },
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not a label; write KEY=VALUE")),
    }
}
