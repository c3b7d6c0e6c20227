//! Smoke test of `bench` (seconds): the smoke configuration (K = 4, N = 150,
//! one round, backlogs 500 and 2,000) of every system. Checks that the JSON
//! and Markdown reports are produced, that every system selected is either
//! measured (3 handoffs per task, a ratio to its baseline printed) or
//! skipped with a reason, and that the goals table is there. Nothing is
//! asserted on speed (a shared machine makes that flaky).

use std::process::Command;

#[test]
fn bench_smoke_measures_or_skips_every_system() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let md = dir.path().join("bench.md");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-harness"))
        .args(["bench", "--smoke", "--dir"])
        .arg(dir.path().join("runs"))
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .arg("--baton")
        .arg(super::bench_http::baton_binary())
        .output()
        .expect("run baton-harness bench --smoke");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench --smoke failed: {stderr}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json parses");
    let selected = report["config"]["systems"].as_array().expect("systems");
    let skipped = report["skipped"].as_array().expect("skipped");
    let summary = report["summary"].as_array().expect("summary");
    for system in selected {
        let measured = summary.iter().any(|s| s["system"] == *system && s["mode"] == "burn_down");
        let skip = skipped.iter().find(|s| s["system"] == *system);
        assert!(measured ^ skip.is_some(), "{system} is neither measured nor skipped (or both): {stderr}");
        if let Some(s) = skip {
            assert!(!s["reason"].as_str().unwrap_or("").is_empty(), "{system} skipped without a reason");
        }
    }
    for row in report["rows"].as_array().expect("rows") {
        if row["system"] != "fsync" {
            assert_eq!(row["handoffs"], 450, "{row}");
        }
        assert!(row["handoffs_per_s"].as_f64().expect("rate") > 0.0, "{row}");
    }
    for s in summary.iter().filter(|s| s["system"] != "fsync" && s["mode"] == "burn_down") {
        assert!(s["ratio"]["median"].as_f64().is_some(), "no ratio to the baseline: {s}");
    }
    assert!(report["backlog"]["points"].as_array().is_some_and(|p| p.len() == 2), "backlog series");

    let markdown = std::fs::read_to_string(&md).expect("markdown written");
    assert!(markdown.contains("**Burn-down, K = 4**") && markdown.contains("÷ baseline"), "{markdown}");
    assert!(markdown.contains("| goal | measured | target |"), "{markdown}");
}
