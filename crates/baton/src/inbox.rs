//! `baton inbox ...` and `baton stuck`: the operators' commands. `inbox list`
//! shows the tasks waiting or held in human stages with why and since when;
//! `inbox claim ID` takes one under a lease (its epoch is printed); `inbox
//! resolve ID --epoch N` hands it back into its workflow (`--to STAGE`),
//! completes it, cancels it or aborts its workflow. `stuck` lists every live
//! task past a threshold (an overdue timer, an escalation, a passed
//! deadline) as a table, and exits 0 whatever it finds: it is a listing.
//! With auth off the operator is `--agent` (`BATON_AGENT`), or `operator`.

use crate::duration::parse_ms;
use crate::output::Format;
use crate::task::ClientArgs;
use baton_api as api;
use std::fmt::Write as _;

#[derive(Debug, clap::Subcommand)]
pub enum InboxCommand {
    /// List the tasks waiting or held in human stages, oldest first.
    List {
        /// Only this human stage.
        #[arg(long)]
        stage: Option<String>,
        /// Tasks per page.
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor a previous page printed.
        #[arg(long)]
        after: Option<String>,
    },
    /// Claim one inbox task; prints the lease and its epoch.
    Claim {
        id: api::TaskId,
        /// Lease length, e.g. 30m; the stage's default when left out.
        #[arg(long, value_parser = parse_ms)]
        lease: Option<u64>,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Resolve an inbox task you hold: hand it back, complete, cancel or abort.
    Resolve(ResolveArgs),
}

/// Who the operator is.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// With auth off, the operator's name (default `operator`); with a token, its principal.
    #[arg(long, env = "BATON_AGENT")]
    agent: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("resolution").required(true).args(["to", "complete", "cancel", "abort"])))]
pub struct ResolveArgs {
    id: api::TaskId,
    /// The epoch of your lease, from `baton inbox claim`.
    #[arg(long)]
    epoch: u64,
    /// Hand the task back into its workflow at this stage.
    #[arg(long, value_name = "STAGE")]
    to: Option<String>,
    /// Complete the task.
    #[arg(long)]
    complete: bool,
    /// Cancel the task, with this reason.
    #[arg(long, value_name = "REASON")]
    cancel: Option<String>,
    /// Abort the task's workflow (compensations run), with this reason.
    #[arg(long, value_name = "REASON")]
    abort: Option<String>,
    /// A note for the history.
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    operator: OperatorArgs,
}

/// `baton stuck`.
#[derive(Debug, clap::Args)]
pub struct StuckArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How late a timer may be before it is listed, e.g. 30s (the server's default when left out).
    #[arg(long, value_parser = parse_ms)]
    grace: Option<u64>,
    /// Print the API's JSON (the same as `-o json`).
    #[arg(long)]
    json: bool,
}

pub async fn inbox(client: &ClientArgs, command: InboxCommand) -> anyhow::Result<()> {
    let api = client.connect()?;
    let json = client.output == Format::Json;
    match command {
        InboxCommand::List { stage, limit, after } => {
            let page = api.inbox(&api::InboxQuery { stage, limit, after }).await?;
            print(json, &page, || inbox_text(&page))
        }
        InboxCommand::Claim { id, lease, operator } => {
            let api = with_operator(api, operator);
            let lease = api.inbox_claim(id, lease).await?;
            print(json, &lease, || {
                format!(
                    "claimed task {} in {} at epoch {} until {}\npayload {}\n",
                    lease.task, lease.stage, lease.epoch, lease.lease_expires_at, lease.payload
                )
            })
        }
        InboxCommand::Resolve(args) => {
            let mut request = match (args.to, args.complete, args.cancel, args.abort) {
                (Some(to), ..) => api::ResolveRequest::handoff(args.epoch, to),
                (_, true, ..) => api::ResolveRequest::complete(args.epoch),
                (_, _, Some(reason), _) => api::ResolveRequest::cancel(args.epoch, reason),
                (_, _, _, Some(reason)) => api::ResolveRequest::abort(args.epoch, reason),
                _ => unreachable!("clap requires one resolution"),
            };
            request.note = args.note;
            let verb = match request.resolution {
                api::Resolution::Handoff => "handed back",
                api::Resolution::Complete => "completed",
                api::Resolution::Cancel => "cancelled",
                api::Resolution::Abort => "aborted",
            };
            let api = with_operator(api, args.operator);
            let answer = api.inbox_resolve(args.id, &request).await?;
            print(json, &answer, || {
                let t = &answer.task;
                let mut s = format!("{verb} task {}: now {} in {}\n", t.id, t.state, t.stage);
                if let Some(h) = answer.handoff_id {
                    let _ = writeln!(s, "handoff {h}");
                }
                s
            })
        }
    }
}

pub async fn stuck(args: StuckArgs) -> anyhow::Result<()> {
    let list = args.client.connect()?.stuck(args.grace).await?;
    let json = args.json || args.client.output == Format::Json;
    print(json, &list, || stuck_text(&list))
}

fn with_operator(api: baton_client::Client, operator: OperatorArgs) -> baton_client::Client {
    match operator.agent {
        Some(agent) => api.with_agent(agent),
        None => api,
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn inbox_text(page: &api::InboxPage) -> String {
    let mut s = String::new();
    for item in &page.items {
        let t = &item.task;
        let holder = t.lease.as_ref().map(|l| format!(" by {}", l.agent)).unwrap_or_default();
        let _ = writeln!(s, "{}  {:<7}{holder} {:<16} since {}", t.id, t.state, t.stage, item.since);
        let _ = writeln!(s, "    why: {}", item.why);
    }
    if page.items.is_empty() {
        s.push_str("the inbox is empty\n");
    }
    if let Some(cursor) = &page.next_cursor {
        let _ = writeln!(s, "more: --after {cursor}");
    }
    s
}

fn stuck_text(list: &api::StuckList) -> String {
    if list.stuck.is_empty() {
        return "nothing is stuck\n".to_owned();
    }
    let mut s =
        format!("{:<36}  {:<9} {:<8} {:<16} {:<24}  WHY\n", "TASK", "KIND", "STATE", "STAGE", "SINCE");
    for e in &list.stuck {
        let _ = writeln!(
            s,
            "{:<36}  {:<9} {:<8} {:<16} {:<24}  {}",
            e.task,
            e.kind.as_str(),
            e.state.as_str(),
            e.stage,
            e.since.to_string(),
            e.why
        );
    }
    if list.truncated {
        s.push_str("... more (the listing is bounded)\n");
    }
    s
}
