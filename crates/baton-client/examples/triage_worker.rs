//! The triage agent of docs/howto/rust-worker.md (the page's block is this
//! file's code; CI builds it): a `Worker` that hands urgent patients to
//! `specialist` and completes the rest, until Ctrl-C. Against `baton dev`:
//! `cargo run -p baton-client --example triage_worker`.

use baton_client::{Client, Decision, Job, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::new("http://127.0.0.1:7707")?; // .with_token(...) on `baton serve`
    let worker = Worker::new(client, "triage-bot", ["triage"], WorkerOptions::default())?;
    let handler = |job: Job| async move {
        let patient = job.payload().to_value();
        // Side effects outside Baton: key them by job.fence() (task, stage, epoch).
        if patient["urgent"] == true {
            Decision::handoff("specialist").note("urgent").confidence(0.9)
        } else {
            Decision::complete().note("routine")
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let stats = worker.run(handler, shutdown).await?;
    println!("{} handed off, {} completed", stats.handed_off, stats.completed);
    Ok(())
}
