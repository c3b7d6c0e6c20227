//! Calls whose client methods are still being added to baton-client (apply a
//! workflow, abort a workflow task). Until they land these answer an error
//! that says so; then each becomes a one-line forward to the client.

use baton_client::{Client, TaskId};

/// `POST /v1/workflows`: applies a workflow file's text; returns its version.
pub async fn apply_workflow(client: &Client, source: &str) -> anyhow::Result<u32> {
    let _ = (client, source);
    anyhow::bail!("baton-client has no apply_workflow yet: apply the file with the server's API first")
}

/// `POST /v1/tasks/{id}/abort`: aborts the holder's workflow task.
pub async fn abort(
    client: &Client,
    task: TaskId,
    epoch: u64,
    reason: &str,
) -> Result<(), baton_client::Error> {
    let _ = (client, task, epoch, reason);
    Err(baton_client::Error::Protocol { status: 0, detail: "baton-client has no abort yet".to_owned() })
}
