//! `baton stats`, `baton alerts` and `baton gate` against a real `baton dev`.
//!
//! Goal: after known traffic (20 handoffs from `a` to `b`: 19 accepted, 1
//! cancelled while pending, so a 95% success rate over 20 samples), `stats`
//! prints the edge's figures, and `gate` exits 0 at and above its target,
//! 1 below it and 2 with fewer samples than asked for, printing the figures
//! each time; `alerts` lists nothing on a fresh server. Method: the traffic
//! goes through `baton_client` on a small runtime; the commands run as the
//! binary through the crate's `check` helper.

use super::{Dev, check, json};
use baton_client::Client;
use baton_client::api::{ClaimRequest, HandoffRequest, SubmitRequest};
use serde_json::json as j;
use std::path::Path;

/// 20 handoffs a -> b: the 7th is cancelled while pending, the rest accepted.
async fn traffic(address: &str) {
    let sender = Client::new(address).expect("client").with_agent("sender");
    let receiver = Client::new(address).expect("client").with_agent("receiver");
    let claim = |stage: &str| -> ClaimRequest { serde_json::from_value(j!({"stages": [stage]})).unwrap() };
    for i in 0..20 {
        let submit: SubmitRequest = serde_json::from_value(j!({"stage": "a", "payload": {"n": i}})).unwrap();
        let task = sender.submit(&submit).await.expect("submit").task.id;
        let lease = sender.claim(&claim("a")).await.expect("claim a").remove(0);
        let handoff: HandoffRequest =
            serde_json::from_value(j!({"epoch": lease.epoch, "to_stage": "b"})).unwrap();
        sender.handoff(task, &handoff).await.expect("handoff");
        if i == 6 {
            sender.cancel(task, "withdrawn").await.expect("cancel");
            continue;
        }
        let accepted = receiver.claim(&claim("b")).await.expect("claim b");
        assert_eq!(accepted.len(), 1);
    }
}

#[track_caller]
fn run(dir: &Path, dev: &Dev, args: &[&str], code: i32) -> (String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--address", dev.address.as_str()]);
    check(dir, &all, code)
}

#[test]
fn gate_exits_by_target_and_samples_and_stats_show_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let dev = Dev::start(dir);
    let (out, _) = run(dir, &dev, &["alerts"], 0);
    assert_eq!(out, "no anomalies\n");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(traffic(&dev.address));

    let (out, _) = run(dir, &dev, &["stats", "--edge", "a:b", "--json"], 0);
    let stats = json(&out);
    let edge = &stats["edges"][0];
    assert_eq!((edge["handoffs"].as_u64(), edge["accepted"].as_u64()), (Some(20), Some(19)));
    assert_eq!((edge["cancelled"].as_u64(), edge["samples"].as_u64()), (Some(1), Some(20)));
    let (table, _) = run(dir, &dev, &["stats", "--window", "15m"], 0);
    assert!(table.contains("a -> b") && table.contains("95.00%"), "{table}");
    assert!(table.contains("sender -> receiver"), "the agent edge: {table}");

    let gate = |target: &str, min: &str, code: i32| {
        let args = ["gate", "--edge", "a:b", "--target", target, "--window", "1h", "--min-samples", min];
        run(dir, &dev, &args, code)
    };
    let (at, _) = gate("95", "20", 0);
    assert!(at.contains("success rate  95.000% (target 95%)") && at.contains("samples       20"), "{at}");
    assert!(at.contains("accept p99") && at.contains("pass"), "{at}");
    gate("90", "10", 0);
    let (below, err) = gate("99.9", "20", 1);
    assert!(below.contains("fail: below 99.9%"), "{below}");
    assert!(err.contains("gate a:b"), "{err}");
    let (few, _) = gate("90", "1000", 2);
    assert!(few.contains("too few samples: 20 < 1000"), "{few}");
    let (figures, _) = run(dir, &dev, &["gate", "--edge", "a:b", "--target", "95", "--json"], 0);
    assert_eq!(json(&figures)["samples"], 20);
    gate("90", "1", 0);
    // An edge with no traffic has no samples.
    let (none, _) = run(dir, &dev, &["gate", "--edge", "x:y", "--target", "50"], 2);
    assert!(none.contains("too few samples: 0 < 1"), "{none}");
    dev.stop();
}
