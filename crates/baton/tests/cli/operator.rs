//! The operators' commands against a real `baton dev`: `workflow apply`,
//! `show` and `list`, `task submit --workflow`, `inbox list|claim|resolve`,
//! `stuck` and `task abort`.
//!
//! Goal: a workflow file is applied once (`applied`, then `unchanged`), shown
//! back as TOML or JSON, and refused with its line and column when bad; a task
//! nobody claims in time is escalated to the workflow's human stage, where
//! `inbox list` and `stuck` show it with why; an operator claims it and
//! resolves it every way. Method: the binary on 127.0.0.1:0 with its own
//! clock (a stage with `accept_within = "1s"`, so the sweeper escalates
//! within seconds; waits are polls bounded by `PATIENCE`), through the
//! crate's `check` helper.

use super::{Dev, PATIENCE, check, json};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

const ORDERS: &str = r#"name = "orders"
entry = "take"

[stages.take]
accept_within = "1s"
reoffers = 0
escalate_to = "desk"
routes = ["ship"]
next = "ship"

[stages.ship]

[stages.desk]
human = true
"#;

/// `baton ARGS --address A` with the expected exit code.
#[track_caller]
fn run(dir: &Path, dev: &Dev, args: &[&str], code: i32) -> (String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--address", dev.address.as_str()]);
    check(dir, &all, code)
}

/// Polls the inbox until it holds `n` items; returns them.
fn inbox_with(dir: &Path, dev: &Dev, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (out, _) = run(dir, dev, &["inbox", "list", "-o", "json"], 0);
        let items = json(&out)["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(start.elapsed() < PATIENCE, "the inbox never held {n} tasks: {out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn operators_apply_workflows_and_work_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let dev = Dev::start(dir);
    std::fs::write(dir.join("orders.toml"), ORDERS).unwrap();

    let (out, _) = run(dir, &dev, &["workflow", "apply", "orders.toml"], 0);
    assert_eq!(out, "applied orders v1\n");
    let (out, _) = run(dir, &dev, &["workflow", "apply", "orders.toml"], 0);
    assert_eq!(out, "unchanged orders v1\n");
    let (out, _) = run(dir, &dev, &["workflow", "show", "orders"], 0);
    assert!(out.contains("name = \"orders\"") && out.contains("[stages.desk]"), "{out}");
    let (out, _) = run(dir, &dev, &["workflow", "show", "orders", "--json"], 0);
    let view = json(&out);
    assert_eq!((view["version"].clone(), view["stages"]["take"]["next"].clone()), (1.into(), "ship".into()));
    let (out, _) = run(dir, &dev, &["workflow", "list"], 0);
    assert_eq!(out, "orders v1  entry take  3 stages\n");
    let (_, err) = run(dir, &dev, &["workflow", "show", "nope"], 1);
    assert!(err.contains("not_found"), "{err}");
    std::fs::write(dir.join("bad.toml"), "name = \"bad\"\nentry = \"a\"\n\n[stages.a]\nroutes = [\"b\"]\n")
        .unwrap();
    let (_, err) = run(dir, &dev, &["workflow", "apply", "bad.toml"], 2);
    assert!(err.starts_with("bad.toml:5:11: route to unknown stage `b`"), "{err}");

    // Three tasks nobody takes: the sweeper escalates them to `desk`.
    let mut ids = Vec::new();
    for n in 0..3 {
        let payload = format!("{{\"n\": {n}}}");
        let (out, _) = run(
            dir,
            &dev,
            &["task", "submit", "--workflow", "orders", "--payload", &payload, "-o", "json"],
            0,
        );
        let task = json(&out);
        assert_eq!((task["stage"].clone(), task["workflow"]["version"].clone()), ("take".into(), 1.into()));
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let items = inbox_with(dir, &dev, 3);
    assert!(items.iter().all(|i| i["task"]["stage"] == "desk"), "{items:?}");
    assert!(items[0]["why"].as_str().unwrap().contains("not claimed at take"), "{items:?}");
    let (out, _) = run(dir, &dev, &["inbox", "list", "--stage", "desk"], 0);
    assert!(out.contains(&ids[0]) && out.contains("why: not claimed at take"), "{out}");

    let (out, _) = run(dir, &dev, &["stuck"], 0);
    assert!(out.starts_with("TASK"), "a table: {out}");
    assert!(out.lines().any(|l| l.starts_with(ids[0].as_str()) && l.contains("escalated")), "{out}");
    let (out, _) = run(dir, &dev, &["stuck", "--grace", "5s", "--json"], 0);
    assert_eq!(json(&out)["stuck"].as_array().unwrap().len(), 3, "{out}");

    // Hand the first back into the workflow; the shipper then aborts it.
    let claim = |id: &str| {
        let (out, _) = run(dir, &dev, &["inbox", "claim", id, "-o", "json"], 0);
        json(&out)["epoch"].as_u64().unwrap().to_string()
    };
    let epoch = claim(&ids[0]);
    let (out, _) = run(
        dir,
        &dev,
        &["inbox", "resolve", &ids[0], "--epoch", &epoch, "--to", "ship", "--note", "checked"],
        0,
    );
    assert!(out.starts_with(&format!("handed back task {}: now waiting in ship", ids[0])), "{out}");
    let (out, _) =
        run(dir, &dev, &["task", "claim", "--agent", "shipper", "--stage", "ship", "-o", "json"], 0);
    let epoch = json(&out)["leases"][0]["epoch"].as_u64().unwrap().to_string();
    let (out, _) = run(
        dir,
        &dev,
        &["task", "abort", &ids[0], "--agent", "shipper", "--epoch", &epoch, "--reason", "recall"],
        0,
    );
    assert!(out.starts_with(&format!("aborted task {}: now cancelled", ids[0])), "{out}");

    // Complete the second, cancel the third; a resolution must be named.
    let epoch = claim(&ids[1]);
    let (_, err) = run(dir, &dev, &["inbox", "resolve", &ids[1], "--epoch", &epoch], 2);
    assert!(err.contains("required"), "{err}");
    let (out, _) = run(dir, &dev, &["inbox", "resolve", &ids[1], "--epoch", &epoch, "--complete"], 0);
    assert!(out.contains("now done"), "{out}");
    let epoch = claim(&ids[2]);
    let (out, _) =
        run(dir, &dev, &["inbox", "resolve", &ids[2], "--epoch", &epoch, "--cancel", "duplicate"], 0);
    assert!(out.contains("now cancelled"), "{out}");
    let (_, err) = run(dir, &dev, &["inbox", "claim", &ids[2]], 1);
    assert!(err.contains("invalid_transition: cannot claim a task that is cancelled"), "{err}");
    let (out, _) = run(dir, &dev, &["inbox", "list"], 0);
    assert_eq!(out, "the inbox is empty\n");
    let (out, _) = run(dir, &dev, &["stuck"], 0);
    assert_eq!(out, "nothing is stuck\n");
    dev.stop();
}
