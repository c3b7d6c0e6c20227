//! `baton handoff show ID [--wait 10s]`: a handoff's outcome, long-polled
//! while it is pending, through `baton-client` against `--address` /
//! `BATON_ADDRESS`; printed like the task commands (`-o text|json`).

use crate::duration::parse_ms;
use crate::output::Printer;
use crate::task::ClientArgs;
use baton_api as api;

#[derive(Debug, clap::Subcommand)]
pub enum HandoffCommand {
    /// Show a handoff and its outcome, waiting while it is pending if asked to.
    Show {
        /// The handoff's id, as a handoff call printed it.
        id: api::HandoffId,
        /// How long to wait for a pending handoff to be decided, e.g. 10s (at most 60s).
        #[arg(long, value_parser = parse_ms, default_value = "0s")]
        wait: u64,
    },
}

pub async fn run(client: &ClientArgs, command: HandoffCommand) -> anyhow::Result<()> {
    let api = client.connect()?;
    let out = Printer::new(client.output);
    match command {
        HandoffCommand::Show { id, wait } => out.handoff(&api.handoff_outcome(id, wait).await?),
    }
}
