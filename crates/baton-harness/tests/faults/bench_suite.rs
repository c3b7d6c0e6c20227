//! Smoke test of `baton bench` (seconds), which runs this harness's `bench`:
//! the smoke configuration (K = 4, N = 90,
//! one round, backlogs 300 and 1,000) of every system. Checks that the JSON
//! and Markdown reports are produced, that every system selected is either
//! measured (3 handoffs per task, a ratio to its baseline printed) or
//! skipped with a reason, and that the goals table is there. Nothing is
//! asserted on speed (a shared machine makes that flaky).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `baton` binary, rebuilt when it predates `baton bench`.
fn baton_with_bench(harness: &Path) -> PathBuf {
    let baton = super::bench_http::baton_binary();
    let knows_bench = |b: &Path| {
        Command::new(b)
            .args(["bench", "--help"])
            .env("BATON_HARNESS", harness)
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--smoke"))
    };
    if !knows_bench(&baton) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "baton"]);
        if harness.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p baton");
        assert!(status.success() && knows_bench(&baton), "`baton bench` is not available");
    }
    baton
}

#[test]
fn bench_smoke_measures_or_skips_every_system() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let md = dir.path().join("bench.md");
    let harness = Path::new(env!("CARGO_BIN_EXE_baton-harness"));
    let baton = baton_with_bench(harness);
    let out = Command::new(&baton)
        .env("BATON_HARNESS", harness)
        .args(["bench", "--smoke", "--dir"])
        .arg(dir.path().join("runs"))
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .arg("--baton")
        .arg(&baton)
        .output()
        .expect("run baton bench --smoke");
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
            // Every task through all three stages; an open-loop run is bounded
            // in time, so a slow (loaded) machine gives it fewer tasks.
            let tasks = row["tasks"].as_u64().expect("tasks");
            assert_eq!(row["handoffs"].as_u64(), Some(tasks * 3), "{row}");
            if row["mode"] == "burn_down" {
                assert_eq!(tasks, 90, "{row}");
            } else {
                assert!((1..=90).contains(&tasks), "{row}");
            }
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
