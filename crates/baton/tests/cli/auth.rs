//! `baton serve` with auth on, and the commands that manage who may call it.
//!
//! Goal: on an empty database `baton serve` creates the first admin and
//! prints its token once (never again on a restart); with that token
//! `baton agent add`, `principal add` and `token create|list|revoke` manage
//! principals and tokens; task commands work with a token (an agent need not
//! name itself) and are refused without one, off an agent's stages, and
//! after a revocation; listings never print a secret. Method: the real binary
//! on 127.0.0.1:0 in a temp dir, every command run through one `check` helper
//! that asserts the exit code.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `baton serve`: its address and the first admin's token, if it printed one.
struct Serve {
    child: Child,
    address: String,
    printed_token: Option<String>,
}

impl Serve {
    fn start(dir: &Path) -> Self {
        let mut child = baton(dir)
            .args(["serve", "--database-url", "sqlite://baton.db", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start baton serve");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut address, mut printed_token, mut printed) = (None, None, Vec::new());
        loop {
            let line = lines.next().expect("baton serve printed its banner").expect("utf-8");
            printed.push(line.clone());
            if let Some(url) = line.trim().strip_prefix("API:") {
                address = Some(url.trim().trim_end_matches("/v1").to_owned());
            }
            if line.trim().starts_with("baton_") {
                printed_token = Some(line.trim().to_owned());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        assert!(printed[0].contains("authentication on"), "{printed:?}");
        if printed_token.is_some() {
            assert!(printed.iter().any(|l| l.contains("will not be shown again")), "{printed:?}");
        }
        Self { child, address: address.expect("an API line"), printed_token }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "baton serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn baton(dir: &Path) -> Command {
    let mut command = Command::new(BATON);
    command.current_dir(dir);
    for var in ["BATON_ADDRESS", "BATON_AGENT", "BATON_TOKEN", "BATON_LISTEN", "DATABASE_URL", "RUST_LOG"] {
        command.env_remove(var);
    }
    command
}

/// Runs `baton ARGS --address ADDRESS [--token TOKEN]`, asserts the exit code.
#[track_caller]
fn check(dir: &Path, address: &str, token: Option<&str>, args: &[&str], code: i32) -> (String, String) {
    let mut command = baton(dir);
    command.args(args).args(["--address", address]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command.output().expect("run baton");
    let (out, err) = (String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap());
    assert_eq!(output.status.code(), Some(code), "baton {args:?}\nstdout: {out}\nstderr: {err}");
    (out, err)
}

#[test]
fn serve_prints_the_first_admin_token_once_and_the_cli_manages_principals_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let serve = Serve::start(dir);
    let admin = serve.printed_token.clone().expect("an empty database gets an admin token");
    let address = serve.address.clone();
    let run = |token: Option<&str>, args: &[&str], code: i32| check(dir, &address, token, args, code);
    let as_admin = |args: &[&str], code: i32| run(Some(&admin), args, code);

    as_admin(&["agent", "add", "w1", "--stages", "intake,review", "--routes", "intake:review"], 0);
    as_admin(&["principal", "add", "sub", "--role", "submitter"], 0);
    let (out, _) = as_admin(&["agent", "list"], 0);
    assert!(out.starts_with("w1  agent  stages intake,review  routes intake:review"), "{out}");
    let (w1, err) = as_admin(&["token", "create", "--principal", "w1", "--role", "agent"], 0);
    let w1 = w1.trim().to_owned();
    assert!(w1.starts_with("baton_") && err.contains("will not be shown again"), "{w1} / {err}");
    let (sub, _) = as_admin(&["token", "create", "--principal", "sub", "-o", "json"], 0);
    let sub: serde_json::Value = serde_json::from_str(&sub).unwrap();
    let sub = sub["token"].as_str().unwrap().to_owned();
    let (_, err) = as_admin(&["token", "create", "--principal", "sub", "--role", "admin"], 1);
    assert!(err.contains("not admin"), "{err}");
    let (_, err) = as_admin(&["token", "create", "--principal", "nobody"], 1);
    assert!(err.contains("not_found"), "{err}");

    // Tasks: refused without a token, accepted with the right one.
    let (_, err) = run(None, &["task", "submit", "--stage", "intake"], 1);
    assert!(err.contains("unauthenticated") && err.contains("--token"), "{err}");
    let (_, err) = run(Some(&w1), &["task", "submit", "--stage", "intake"], 1);
    assert!(err.contains("forbidden"), "an agent does not submit: {err}");
    let (out, _) = run(Some(&sub), &["task", "submit", "--stage", "intake", "-o", "json"], 0);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"].as_str().unwrap().to_owned();
    let (_, err) = run(Some(&w1), &["task", "claim", "--stage", "billing"], 1);
    assert!(err.contains("forbidden"), "{err}");
    let (out, _) = run(Some(&w1), &["task", "claim", "--stage", "intake", "-o", "json"], 0);
    assert!(out.contains(&id), "{out}");
    let (_, err) = run(Some(&w1), &["task", "handoff", &id, "--to", "billing", "--epoch", "1"], 1);
    assert!(err.contains("route_not_allowed"), "{err}");
    run(Some(&w1), &["task", "handoff", &id, "--to", "review", "--epoch", "1"], 0);

    // Listings never show a secret; revocations bite.
    let (out, _) = as_admin(&["token", "list", "-o", "json"], 0);
    for secret in [&admin, &w1, &sub] {
        assert!(!out.contains(secret.as_str()), "token list shows a secret");
    }
    let w1_id = w1.split('_').nth(1).unwrap().to_owned();
    as_admin(&["token", "revoke", &w1_id], 0);
    let (_, err) = run(Some(&w1), &["task", "claim", "--stage", "review"], 1);
    assert!(err.contains("unauthenticated"), "{err}");
    let (_, err) = as_admin(&["agent", "revoke", "sub"], 1);
    assert!(err.contains("not an agent"), "{err}");
    as_admin(&["principal", "revoke", "sub"], 0);
    let (_, err) = run(Some(&sub), &["task", "show", &id], 1);
    assert!(err.contains("unauthenticated"), "{err}");
    serve.stop();

    // A restart prints no token: the database has its admin already.
    let serve = Serve::start(dir);
    assert_eq!(serve.printed_token, None);
    let address = serve.address.clone();
    check(dir, &address, Some(&admin), &["task", "show", &id], 0);
    serve.stop();
}
