//! The Rust client's first call, as docs/quickstart.md shows it: claim one
//! task from the stage `intake` of a `baton dev` on 127.0.0.1:7707. Built by
//! CI (the docs test checks the page's block is this text), run by hand:
//! `cargo run -p baton-client --example quickstart`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = baton_client::Client::new("http://127.0.0.1:7707")?.with_agent("intake-bot");
    let leases = client.claim_from(&["intake"], 1, 5_000).await?;
    for lease in &leases {
        println!("leased {} at epoch {}", lease.task, lease.epoch);
    }
    Ok(())
}
