//! `baton demo` is honest. Goal: with faults on, Baton loses nothing and runs
//! nothing twice, its tally agrees with its store, and the naive tally agrees
//! with the naive ledger; with faults off the naive pipeline loses nothing
//! (the demo is not rigged). Method: run the real binary with `-o json`
//! (`--keep` for the faulty run), recompute the naive tally from the ledger
//! it printed, then open the kept data with `baton dev` and read every task
//! and its history through the CLI, and run `baton audit verify` on it.
//! Invariants only: the counts depend on timing.

use super::{Dev, check, json};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn patients(values: &Value) -> BTreeSet<u64> {
    values.as_array().unwrap().iter().map(|v| v["patient"].as_u64().unwrap()).collect()
}

/// The naive tally, recomputed from the ledger the demo printed.
fn naive_agrees_with_its_ledger(report: &Value) {
    let arrivals = report["plan"]["arrivals_ms"].as_array().unwrap().len() as u64;
    let naive = &report["naive"];
    assert_eq!(naive["arrived"], arrivals);
    let executions = naive["executions"].as_array().unwrap();
    let finished: BTreeSet<u64> = executions
        .iter()
        .filter(|e| e["stage"] == "records")
        .map(|e| e["patient"].as_u64().unwrap())
        .collect();
    let lost: BTreeSet<u64> = (0..arrivals).filter(|p| !finished.contains(p)).collect();
    assert_eq!(patients(&naive["lost"]), lost, "naive lost = arrived without a records execution");
    assert_eq!(naive["finished"], finished.len() as u64);
    let twice: BTreeSet<(u64, String)> = executions
        .iter()
        .filter(|e| e["times"].as_u64().unwrap() > 1)
        .map(|e| (e["patient"].as_u64().unwrap(), e["stage"].as_str().unwrap().to_owned()))
        .collect();
    let reported: BTreeSet<(u64, String)> = naive["sent_twice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["patient"].as_u64().unwrap(), e["stage"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(reported, twice, "naive sent twice = executions counted more than once");
}

#[test]
fn demo_tallies_agree_with_the_ledger_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (out, _) = check(dir, &["demo", "--seed", "5", "--patients", "20", "-o", "json", "--keep"], 0);
    let report = json(&out);
    naive_agrees_with_its_ledger(&report);
    let baton = &report["baton"];
    assert_eq!(baton["lost"], Value::Array(vec![]), "Baton lost nothing: {baton}");
    assert_eq!(baton["unsettled"], Value::Array(vec![]), "every task settled: {baton}");
    assert_eq!(baton["ran_twice"], Value::Array(vec![]), "Baton ran nothing twice: {baton}");
    let escalated = patients(&baton["escalated"]);
    let silent: BTreeSet<u64> =
        report["plan"]["silent"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(silent.is_subset(&escalated), "every case the specialist never answered is in the inbox");
    for e in baton["escalated"].as_array().unwrap() {
        assert!(!e["why"].as_str().unwrap().is_empty(), "each escalation says why: {e}");
    }
    let kinds: Vec<&str> =
        report["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(kinds.iter().any(|k| k.contains("SIGKILLed")), "the coordinator was killed: {kinds:?}");
    assert!(kinds.iter().any(|k| k.starts_with("baton: restarted")), "and restarted: {kinds:?}");

    // Baton's tally against its store, read back through the CLI.
    let kept = std::path::PathBuf::from(report["baton_data"].as_str().expect("--keep names the directory"));
    let data = kept.join(".baton");
    let (out, _) = check(dir, &["audit", "verify", "--data-dir", data.to_str().unwrap(), "--json"], 0);
    assert!(!out.is_empty());
    let dev = Dev::start_with(dir, &["--data-dir", data.to_str().unwrap()]);
    let at = ["--address", dev.address.as_str()];
    let mut in_inbox = BTreeSet::new();
    for task in baton["tasks"].as_array().unwrap() {
        let id = task["task"].as_str().unwrap();
        let (out, _) = check(dir, &[&["task", "show", id, "-o", "json"][..], &at].concat(), 0);
        let stored = json(&out);
        assert_eq!(stored["state"], task["state"], "{id}");
        assert_eq!(stored["stage"], task["stage"], "{id}");
        assert!(stored["state"] == "done" || stored["stage"] == "front-desk", "settled: {stored}");
        if stored["stage"] == "front-desk" {
            in_inbox.insert(task["patient"].as_u64().unwrap());
        }
        let (out, _) = check(dir, &[&["task", "history", id, "-o", "json"][..], &at].concat(), 0);
        let mut accepted: BTreeMap<String, u32> = BTreeMap::new();
        for event in json(&out)["events"].as_array().unwrap() {
            if event["kind"] == "handed_off" || event["kind"] == "completed" {
                *accepted.entry(event["from"]["stage"].as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
        assert!(accepted.values().all(|n| *n == 1), "each stage accepted once for {id}: {accepted:?}");
    }
    assert_eq!(in_inbox, escalated, "the inbox holds exactly the escalated patients");
    dev.stop();
    std::fs::remove_dir_all(&kept).unwrap();
}

#[test]
fn demo_without_faults_loses_nothing_on_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) =
        check(dir.path(), &["demo", "--no-faults", "--seed", "9", "--patients", "12", "-o", "json"], 0);
    let report = json(&out);
    naive_agrees_with_its_ledger(&report);
    assert_eq!(report["naive"]["lost"], Value::Array(vec![]), "{report}");
    assert_eq!(report["naive"]["sent_twice"], Value::Array(vec![]), "{report}");
    assert_eq!(report["naive"]["finished"], 12);
    assert_eq!(report["baton"]["finished"], 12);
    assert_eq!(report["baton"]["escalated"], Value::Array(vec![]));
    assert_eq!(report["baton_data"], Value::Null, "without --keep nothing is left behind");
}
