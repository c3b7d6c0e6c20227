//! `baton webhook deliveries [--after N] [--limit N]`: the webhook delivery
//! records (every attempt to POST a notice to a configured webhook) through
//! `baton-client` against `--address` / `BATON_ADDRESS`; operators and admins
//! with auth on. `-o json` prints the API's page unchanged, `-o text` one line
//! per attempt. Webhooks themselves are configured in the server's `--config`
//! file (`[[webhooks]]`, see `config`), never through the API.

use crate::output::Format;
use crate::task::ClientArgs;
use baton_api as api;
use std::fmt::Write as _;

#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// List delivery attempts, oldest first.
    Deliveries {
        /// Only records with ids after this one (a page's `next_after`).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Records per page (1 to the server's page_size_max).
        #[arg(long, default_value_t = api::limits::PAGE_SIZE_DEFAULT)]
        limit: u32,
    },
}

pub async fn run(client: &ClientArgs, command: WebhookCommand) -> anyhow::Result<()> {
    let api = client.connect()?;
    match command {
        WebhookCommand::Deliveries { after, limit } => {
            let page = api.deliveries(after, limit).await?;
            let text = match client.output {
                Format::Json => format!("{}\n", serde_json::to_string_pretty(&page)?),
                Format::Text => page_text(&page),
            };
            print!("{text}");
            Ok(())
        }
    }
}

fn page_text(page: &api::DeliveryPage) -> String {
    let mut s = String::new();
    for d in &page.deliveries {
        let _ = write!(
            s,
            "{:>6}  {}  {:<16} notice {:<6} attempt {:<2} ",
            d.id, d.at, d.webhook, d.notice, d.attempt
        );
        let _ = match &d.status {
            api::DeliveryStatus::Delivered { http_status } => writeln!(s, "delivered (HTTP {http_status})"),
            api::DeliveryStatus::Failed { error, retry_at } => {
                writeln!(s, "failed: {error}; retry at {retry_at}")
            }
            api::DeliveryStatus::GaveUp { error } => writeln!(s, "gave up: {error}"),
        };
    }
    if page.deliveries.is_empty() {
        s.push_str("no deliveries\n");
    }
    if let Some(after) = page.next_after {
        let _ = writeln!(s, "more: --after {after}");
    }
    s
}
