//! Canary routes against a real `baton dev`: a workflow whose stage `a` sends
//! 30% of `complete`'s traffic to `b2` instead of `next` = `b`; 200 tasks
//! completed at `a` land in `b2` within tolerance; `baton workflow promote`
//! makes a version where every new task goes to `b2`, `baton workflow
//! rollback` (of a new canary) one where none does. Tasks are driven with
//! `baton-client` against the binary; the operator commands run as a user
//! would.

use super::{Dev, check};
use baton_api as api;
use std::path::Path;

const CANARIED: &str = r#"name = "canaried"
entry = "a"

[stages.a]
routes = ["b", "b2"]
next = "b"
canary = "b2"
canary_percent = 30

[stages.b]
[stages.b2]
"#;

/// Submits `n` tasks through the workflow, completes each at `a`, and counts
/// those that went to `b2`.
fn to_canary(dev: &Dev, n: usize) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = baton_client::Client::new(&dev.address).unwrap();
        let mut canary = 0;
        for i in 0..n {
            let payload = api::Payload::from_value(&serde_json::json!({ "n": i })).unwrap();
            let submit = api::SubmitRequest {
                stage: None,
                workflow: Some("canaried".into()),
                ..api::SubmitRequest::new("", payload)
            };
            client.submit(&submit).await.unwrap();
            let leases = client
                .claim(&api::ClaimRequest {
                    stages: vec!["a".into()],
                    max: 1,
                    wait_ms: 1_000,
                    lease_ms: None,
                    agent: Some("worker".into()),
                })
                .await
                .unwrap();
            let lease = &leases[0];
            let complete = api::CompleteRequest {
                epoch: lease.epoch,
                agent: Some("worker".into()),
                result: None,
                note: None,
                findings: None,
                confidence: None,
                claim_next: None,
            };
            let done = client.complete(lease.task, &complete).await.unwrap();
            canary += usize::from(done.task.stage == "b2");
        }
        canary
    })
}

fn run(dir: &Path, dev: &Dev, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--address", dev.address.as_str()]);
    check(dir, &all, 0).0
}

#[test]
fn a_canary_route_shares_traffic_then_promotes_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let dev = Dev::start(dir);
    std::fs::write(dir.join("canaried.toml"), CANARIED).unwrap();
    assert_eq!(run(dir, &dev, &["workflow", "apply", "canaried.toml"]), "applied canaried v1\n");
    let share = to_canary(&dev, 200);
    // 30% of 200 is 60; four standard deviations (about 6.5 each) either side.
    assert!((34..=86).contains(&share), "{share} of 200 went to the canary at 30%");

    let out = run(dir, &dev, &["workflow", "promote", "canaried", "--stage", "a"]);
    assert_eq!(out, "promoted the canary a -> b2: canaried v2\n");
    assert_eq!(to_canary(&dev, 20), 20, "after promotion every new task goes to b2");

    // A new canary back to b, then rolled back: nothing goes to it.
    let again = CANARIED.replace("next = \"b\"\ncanary = \"b2\"", "next = \"b2\"\ncanary = \"b\"");
    std::fs::write(dir.join("again.toml"), again).unwrap();
    assert_eq!(run(dir, &dev, &["workflow", "apply", "again.toml"]), "applied canaried v3\n");
    let out = run(dir, &dev, &["workflow", "rollback", "canaried", "--stage", "a"]);
    assert_eq!(out, "rolled back the canary a -> b: canaried v4\n");
    assert_eq!(to_canary(&dev, 20), 20, "after the rollback every new task stays on next = b2");
    let shown = run(dir, &dev, &["workflow", "show", "canaried"]);
    assert!(!shown.contains("canary"), "{shown}");
}
