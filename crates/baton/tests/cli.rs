//! The `baton` binary as a user runs it.
//!
//! Goal: `baton dev` starts, prints URLs that answer, serves the task
//! commands, and stops cleanly on SIGTERM; client commands print data on
//! stdout, refusals on stderr with a non-zero exit. Method: start the real
//! binary (`CARGO_BIN_EXE_baton`) in a temp dir on 127.0.0.1:0, read the
//! address it prints, and run `baton task ...` commands against it through
//! one `check` helper that asserts the exit code and returns the output.
//!
//! This is the crate's one integration binary; its modules test the server
//! end to end through `baton_client`: `auth` (`baton serve` with tokens and
//! the commands that manage them), `pipeline` (workers through repeated
//! kill -9, T1) and `stale` (a paused holder fenced off, T3), with the
//! restartable server of `support`; `workflow` runs `baton workflow validate`
//! on good and bad files (offline, no server); `operator` applies workflows
//! and works the inbox and `stuck` against `baton dev`; `example` runs the
//! patient-intake example (examples/patient-intake) against `baton dev`;
//! `gate` runs `baton stats`, `alerts` and `gate` against `baton dev`;
//! `demo` runs `baton demo` and checks its tallies against the naive ledger
//! and Baton's store; `docs` runs every shell block in docs/ and checks the
//! links, the CLI reference, the error table and the deployment files;
//! `pgfault` runs the PostgreSQL fault scenarios of docs/reliability.md
//! (ambiguous commits through a cutting proxy and the store's failpoint, and
//! a replica partitioned in network namespaces); `pgfull` fills the disk of
//! Baton's PostgreSQL tablespace under `baton serve`.

#[path = "cli/archive.rs"]
mod archive;
#[path = "cli/audit.rs"]
mod audit;
#[path = "cli/auth.rs"]
mod auth;
#[path = "cli/canary.rs"]
mod canary;
#[path = "cli/demo.rs"]
mod demo;
#[path = "cli/docs.rs"]
mod docs;
#[path = "cli/example.rs"]
mod example;
#[path = "cli/gate.rs"]
mod gate;
#[path = "cli/mcp.rs"]
mod mcp;
#[path = "cli/operator.rs"]
mod operator;
#[path = "cli/pgfault.rs"]
mod pgfault;
#[path = "cli/pgfull.rs"]
mod pgfull;
#[path = "cli/pipeline.rs"]
mod pipeline;
#[path = "cli/postgres.rs"]
mod postgres;
#[path = "cli/stale.rs"]
mod stale;
#[path = "cli/support.rs"]
mod support;
#[path = "cli/webhook.rs"]
mod webhook;
#[path = "cli/workflow.rs"]
mod workflow;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
/// How long `baton dev` may take to start or stop before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `baton dev`, killed if the test fails before stopping it.
struct Dev {
    child: Child,
    address: String,
}

impl Dev {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts `baton dev` with extra arguments (e.g. `--config FILE`).
    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let mut child = baton(dir)
            .args(["dev", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start baton dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        let address = loop {
            let line = lines.next().expect("baton dev printed its URLs before exiting").expect("utf-8");
            printed.push(line.clone());
            if let Some(url) = line.trim().strip_prefix("API:") {
                break url.trim().trim_end_matches("/v1").to_owned();
            }
        };
        // Keep reading in the background so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        assert!(printed[0].contains("authentication off"), "{printed:?}");
        Self { child, address }
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for baton dev") {
                assert!(status.success(), "baton dev exits 0 after SIGTERM: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "baton dev did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary with a clean environment, in `dir`.
fn baton(dir: &Path) -> Command {
    let mut command = Command::new(BATON);
    command.current_dir(dir);
    for var in [
        "BATON_ADDRESS",
        "BATON_AGENT",
        "BATON_TOKEN",
        "BATON_LISTEN",
        "BATON_DATA_DIR",
        "DATABASE_URL",
        "BATON_CONFIG",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs `baton ARGS`, asserts its exit code, and returns stdout and stderr.
#[track_caller]
fn check(dir: &Path, args: &[&str], code: i32) -> (String, String) {
    let Output { status, stdout, stderr } = baton(dir).args(args).output().expect("run baton");
    let (stdout, stderr) = (String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap());
    assert_eq!(status.code(), Some(code), "baton {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn dev_server_serves_the_task_commands_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let dev = Dev::start(dir);
    let address = dev.address.clone();
    let at = ["--address", address.as_str()];
    let run = |args: &[&str], code: i32| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&at);
        check(dir, &all, code)
    };
    assert!(dir.join(".baton/baton.db").exists(), "baton dev keeps its data in ./.baton/");

    let (out, _) = run(
        &[
            "task",
            "submit",
            "--stage",
            "intake",
            "--payload",
            r#"{"patient":"p-1"}"#,
            "--key",
            "p-1",
            "-o",
            "json",
        ],
        0,
    );
    let task = json(&out);
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["state"], "waiting");
    let (again, _) = run(
        &[
            "task",
            "submit",
            "--stage",
            "intake",
            "--payload",
            r#"{"patient":"p-1"}"#,
            "--key",
            "p-1",
            "-o",
            "json",
        ],
        0,
    );
    assert_eq!(json(&again)["id"], id.as_str(), "the same key gives the same task");
    let (_, err) = run(
        &[
            "task",
            "submit",
            "--stage",
            "intake",
            "--payload",
            r#"{"patient":"p-1"}"#,
            "--key",
            "p-1",
            "-o",
            "json",
        ],
        0,
    );
    assert!(err.starts_with("replayed:"), "a replay says so beside the JSON: {err}");
    let (out, _) =
        run(&["task", "submit", "--stage", "intake", "--payload", r#"{"patient":"p-1"}"#, "--key", "p-1"], 0);
    assert!(out.starts_with("replayed") && out.contains(&id), "a replay says so in text: {out}");
    let (out, _) = run(
        &["task", "submit", "--stage", "elsewhere", "--payload", r#"{"patient":"p-9"}"#, "--key", "p-9"],
        0,
    );
    assert!(!out.contains("replayed"), "a new task is not a replay: {out}");

    let (out, _) = run(
        &["task", "claim", "--agent", "intake-bot", "--stage", "intake", "--wait", "5s", "-o", "json"],
        0,
    );
    let claim = json(&out);
    assert_eq!(claim["leases"][0]["task"], id.as_str());
    assert_eq!(claim["leases"][0]["epoch"], 1);
    assert_eq!(claim["leases"][0]["payload"]["patient"], "p-1");

    let (_, err) = run(&["task", "complete", &id, "--agent", "intake-bot", "--epoch", "0"], 1);
    assert!(err.contains("lease_lost"), "a stale epoch is refused: {err}");

    let (out, _) = run(
        &["task", "complete", &id, "--agent", "intake-bot", "--epoch", "1", "--result", r#"{"ok":true}"#],
        0,
    );
    assert!(out.starts_with(&format!("completed task {id}: now done")), "{out}");

    let (out, _) = run(&["task", "show", &id], 0);
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "done"]), "{out}");
    assert!(out.contains(r#"{"patient":"p-1"}"#), "show prints the payload: {out}");
    let (out, _) = run(&["task", "show", &id, "-o", "json"], 0);
    assert_eq!(json(&out)["result"]["ok"], true);

    let (out, _) = run(&["task", "history", &id, "-o", "json"], 0);
    let kinds: Vec<String> = json(&out)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["submitted", "claimed", "completed"]);

    let (out, _) = run(&["task", "list", "--state", "done"], 0);
    assert!(out.starts_with(&id), "{out}");

    let (out, err) = run(&["task", "claim", "--agent", "a2", "--stage", "intake", "--wait", "100ms"], 0);
    assert!(out.is_empty() && err.contains("no task was ready"), "an empty claim is not an error: {err}");

    let (_, err) = run(&["task", "show", "00000000-0000-0000-0000-000000000000"], 1);
    assert!(err.contains("not_found"), "{err}");
    let (_, err) = run(&["task", "cancel", &id, "--reason", "late"], 1);
    assert!(err.contains("invalid_transition"), "{err}");

    dev.stop();
    let (_, err) = check(dir, &["task", "show", &id, "--address", &address], 3);
    assert!(err.contains("could not reach Baton") && err.contains("hint:"), "{err}");
}

#[test]
fn commands_that_must_not_start_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (out, _) = check(dir, &[], 0);
    assert!(
        out.contains("baton demo") && out.contains("baton dev"),
        "`baton` alone says what to run first: {out}"
    );
    let (out, _) = check(dir, &["version"], 0);
    assert_eq!(out.trim(), format!("baton {}", env!("CARGO_PKG_VERSION")));
    let (_, err) = check(dir, &["dev", "--listen", "0.0.0.0:0"], 1);
    assert!(err.contains("loopback"), "{err}");
    let (_, err) = check(dir, &["serve", "--database-url", "postgres://127.0.0.1:1/baton"], 1);
    assert!(err.contains("cannot open the PostgreSQL store"), "{err}");
    let (_, err) = check(dir, &["serve", "--database-url", "sqlite://"], 1);
    assert!(err.contains("names no file"), "{err}");
    let (_, err) = check(dir, &["serve", "--database-url", "mysql://x"], 1);
    assert!(err.contains("sqlite://PATH"), "{err}");
    for bad in ["30", "1.5s", "3d", "s"] {
        let (_, err) = check(dir, &["task", "claim", "--agent", "a", "--stage", "s", "--wait", bad], 2);
        assert!(err.contains("500ms, 30s, 5m or 1h"), "a duration needs a unit: {err}");
    }
    let (_, err) = check(dir, &["task", "submit", "--stage", "s", "--payload", "{nope"], 1);
    assert!(err.contains("not valid JSON"), "{err}");
    // A configuration file with a mistake stops the start and says where.
    for (text, needle) in [
        ("[limits]\npayload_bytes = 1\n", "unknown field `payload_bytes`"),
        ("[server]\njson_depth_max = \"deep\"\n", "line 2"),
        ("[nonsense]\n", "unknown field `nonsense`"),
        ("[policies.default]\nlease_ms = 10\n", "lease 10 ms is outside the lease limits"),
    ] {
        std::fs::write(dir.join("bad.toml"), text).unwrap();
        let (_, err) = check(dir, &["dev", "--listen", "127.0.0.1:0", "--config", "bad.toml"], 1);
        assert!(err.contains(needle) && err.contains("bad.toml"), "{text:?}: {err}");
    }
}

/// `baton db migrate|check` on a SQLite file: migrate creates and checks it,
/// check runs the full `integrity_check` and refuses a damaged file.
#[test]
fn db_check_runs_the_full_integrity_check_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let data = ["--data-dir", "data"];
    let (_, err) = check(dir, &[&["db", "check"][..], &data].concat(), 1);
    assert!(err.contains("nothing to check"), "{err}");
    let (out, _) = check(dir, &[&["db", "migrate"][..], &data].concat(), 0);
    assert!(out.contains("current; quick_check ok"), "{out}");
    let (out, _) = check(dir, &[&["db", "check"][..], &data].concat(), 0);
    assert!(out.contains("current; integrity_check ok"), "{out}");
    // Damage b-tree pages (every page past the schema page is a table's or an index's).
    let file = dir.join("data/baton.db");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() >= 8 * 4096, "the schema spans pages: {} bytes", bytes.len());
    for page in [3, 5, 7] {
        bytes[page * 4096..page * 4096 + 64].fill(0xA5);
    }
    std::fs::write(&file, &bytes).unwrap();
    let (_, err) = check(dir, &[&["db", "check"][..], &data].concat(), 1);
    assert!(err.contains("corrupt") && err.contains(".recover"), "{err}");
}

#[test]
fn a_configuration_file_sets_limits_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(
        dir.join("baton.toml"),
        "[limits]\npayload_bytes_max = 64\n\n[server]\njson_depth_max = 3\n\n\
         [policies.stages.triage]\naccept_within_ms = 60000\n",
    )
    .unwrap();
    let dev = Dev::start_with(dir, &["--config", "baton.toml"]);
    let address = dev.address.clone();
    let submit = |stage: &str, payload: &str, code: i32| {
        check(dir, &["task", "submit", "--stage", stage, "--payload", payload, "--address", &address], code)
    };
    let (_, err) = submit("a", &format!("\"{}\"", "x".repeat(100)), 1);
    assert!(err.contains("payload_bytes_max"), "the file's payload limit: {err}");
    let (_, err) = submit("a", "[[[1]]]", 1);
    assert!(err.contains("json_depth_max"), "the file's depth limit: {err}");
    let (out, _) =
        check(dir, &["task", "submit", "--stage", "triage", "-o", "json", "--address", &address], 0);
    let task = json(&out);
    let (created, due) = (task["created_at"].as_str().unwrap(), task["due_at"].as_str().unwrap());
    assert_ne!(created, due);
    let ms = |t: &str| -> i64 {
        let (hms, frac) = t.trim_end_matches('Z').split_once('T').unwrap().1.split_once('.').unwrap();
        let p: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + frac.parse::<i64>().unwrap()
    };
    assert_eq!((ms(due) - ms(created)).rem_euclid(86_400_000), 60_000, "triage accepts within a minute");
    dev.stop();
}

#[test]
fn holder_commands_lineage_and_handoff_show() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let dev = Dev::start(dir);
    let address = dev.address.clone();
    let run = |args: &[&str], code: i32| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--address", address.as_str()]);
        check(dir, &all, code)
    };
    let claim = |agent: &str, stage: &str| {
        let (out, _) =
            run(&["task", "claim", "--agent", agent, "--stage", stage, "--wait", "10s", "-o", "json"], 0);
        json(&out)["leases"][0]["epoch"].as_u64().expect("a lease").to_string()
    };
    let (out, _) = run(&["task", "submit", "--stage", "a", "-o", "json"], 0);
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    let holder = |verb: &str, agent: &str, epoch: &str, extra: &[&str]| {
        let mut args = vec!["task", verb, id.as_str(), "--agent", agent, "--epoch", epoch, "-o", "json"];
        args.extend_from_slice(extra);
        json(&run(&args, 0).0)
    };

    let epoch = claim("w", "a");
    let beat = holder("heartbeat", "w", &epoch, &["--lease", "1m", "--note", "busy"]);
    assert_eq!(beat["task"]["state"], "held");
    assert_eq!(holder("release", "w", &epoch, &["--note", "later"])["task"]["state"], "waiting");
    let epoch = claim("w", "a");
    let failed = holder("fail", "w", &epoch, &["--error", "boom", "--retryable"]);
    assert_eq!(failed["task"]["waiting"]["kind"], "backoff");
    let epoch = claim("w", "a");
    let handed = holder("handoff", "w", &epoch, &["--to", "b"]);
    let handoff = handed["handoff_id"].as_str().unwrap().to_owned();
    let (out, _) = run(&["handoff", "show", &handoff, "-o", "json"], 0);
    assert_eq!(json(&out)["outcome"]["status"], "pending");
    let epoch = claim("w2", "b");
    let (out, _) = run(&["handoff", "show", &handoff, "--wait", "1s"], 0);
    assert!(out.contains("outcome accepted by w2"), "{out}");
    let spawned =
        holder("spawn", "w2", &epoch, &["--child", "c", "--child", r#"d={"x":1}"#, "--within", "10m"]);
    assert_eq!(spawned["task"]["state"], "blocked");
    assert_eq!(spawned["children"].as_array().unwrap().len(), 2);

    let (out, _) = run(&["task", "lineage", &id, "-o", "json"], 0);
    let lineage = json(&out);
    let exits: Vec<&str> =
        lineage["steps"].as_array().unwrap().iter().map(|s| s["exit"].as_str().unwrap()).collect();
    assert_eq!(exits, ["released", "failed", "handed_off", "spawned"]);
    assert_eq!(lineage["tree"]["children"].as_array().unwrap().len(), 2);
    let (out, _) = run(&["task", "lineage", &id], 0);
    assert!(out.contains("handed_off -> b") && out.contains("child "), "{out}");

    let (_, err) = run(
        &["task", "spawn", &id, "--epoch", "4", "--child", "c", "--within", "1m", "--join", "quorum:0"],
        2,
    );
    assert!(err.contains("all, any or quorum:N"), "{err}");
    dev.stop();
}

/// A PostgreSQL write transaction is rolled back before it can outlast the
/// wait after which webhook delivery passes a gap in notice numbers, so no
/// notice that commits is ever passed over.
#[test]
fn write_transactions_end_well_before_webhooks_pass_a_gap() {
    let wait = baton_server::webhooks::NOTICE_GAP_WAIT;
    assert!(
        baton_postgres::WRITE_TRANSACTION_MAX * 2 <= wait,
        "{:?} vs {wait:?}",
        baton_postgres::WRITE_TRANSACTION_MAX
    );
}
