//! Smoke test of `bench-http` (seconds): N = 60, K = 4, one round against a
//! spawned `baton dev`. Checks the JSON parses and counts 180 handoffs per
//! run; nothing is asserted on speed (a shared machine makes that flaky).
//!
//! The `baton` binary is `BATON_BIN` if set, else the one next to this
//! harness binary (`target/<profile>/baton`), built with cargo if missing.

use std::path::PathBuf;
use std::process::Command;

pub fn baton_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_BIN") {
        return PathBuf::from(path);
    }
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_baton-harness"));
    let baton = harness.with_file_name("baton");
    if !baton.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "baton"]);
        if harness.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p baton");
        assert!(status.success(), "cargo build -p baton failed");
    }
    baton
}

#[test]
fn bench_http_runs_and_counts_handoffs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-harness"))
        .args(["bench-http", "--agents", "4", "--tasks", "60", "--runs", "1", "--e2e-tasks", "5"])
        .args(["--quiet-wait-s", "0", "--markdown", "--dir"])
        .arg(dir.path().join("runs"))
        .arg("--json")
        .arg(&json)
        .arg("--baton")
        .arg(baton_binary())
        .output()
        .expect("run baton-harness bench-http");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-http failed: {stderr}");
    let markdown = String::from_utf8_lossy(&out.stdout);
    assert!(markdown.contains("Baton over HTTP") && markdown.contains("| handoffs/s |"), "{markdown}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json parses");
    let runs = report["runs"].as_array().expect("runs");
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().expect("system")).collect();
    assert_eq!(systems, ["raw", "ideal", "baton_http"]);
    for run in runs {
        assert_eq!(run["handoffs"], 180, "{run}");
        assert!(run["handoffs_per_s"].as_f64().expect("rate") > 0.0, "{run}");
    }
    let http = &runs[2];
    for field in ["handoff_p50_us", "complete_rtt_p99_us", "server_cpu_s_per_1k"] {
        assert!(http[field].as_f64().is_some(), "{field} missing: {http}");
    }
    assert_eq!(report["e2e"].as_array().expect("e2e").len(), 1);
}
