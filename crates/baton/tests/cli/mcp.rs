//! `baton mcp`: MCP on stdio, relayed to the server's `/mcp`.
//!
//! Goal: a client's JSON-RPC lines on stdin get their answers on stdout, one
//! per line and nothing else; `--agent` names the agent while auth is off; a
//! line that is not JSON gets a parse error; the process exits 0 when stdin
//! closes, after answering every request. Method: a real `baton dev` and
//! `baton mcp` as processes; the messages are written at once and the
//! answers matched by id (the relay answers concurrently, so a claim waits
//! for the submit sent beside it). The Python `mcp` client drives the same
//! relay in sdks/python/tests/test_mcp.py.

use super::{BATON, Dev, PATIENCE, baton};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Instant;

#[test]
fn mcp_relays_stdio_to_the_server_and_names_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let mut relay = baton(dir.path())
        .args(["mcp", "--address", &dev.address, "--agent", "stdio-bot"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {BATON} mcp: {e}"));
    let messages = [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "cli-test", "version": "1" } } }),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "claim", "arguments": { "stages": ["relay"], "wait_ms": 10000 } } }),
        json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "submit", "arguments": { "stage": "relay", "payload": { "n": 1 } } } }),
        json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "heartbeat", "arguments": { "task": "not-a-task" } } }),
    ];
    let mut stdin = relay.stdin.take().unwrap();
    for message in &messages {
        writeln!(stdin, "{message}").unwrap();
    }
    writeln!(stdin, "this is not json").unwrap();
    drop(stdin);

    let started = Instant::now();
    let output = relay.wait_with_output().unwrap();
    assert!(started.elapsed() < PATIENCE);
    assert!(output.status.success(), "baton mcp exits 0 when stdin closes: {}", output.status);
    let text = String::from_utf8(output.stdout).unwrap();
    let answers: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("every stdout line is JSON")).collect();
    assert_eq!(answers.len(), 5, "one answer per request, none for the notification: {text}");
    let by_id: BTreeMap<String, &Value> = answers.iter().map(|a| (a["id"].to_string(), a)).collect();

    assert_eq!(by_id["1"]["result"]["serverInfo"]["name"], "baton", "{text}");
    let task = &by_id["3"]["result"]["structuredContent"];
    let lease = &by_id["2"]["result"]["structuredContent"]["leases"][0];
    assert_eq!(lease["task"], task["id"], "the claim waited for the submit: {text}");
    assert_eq!(by_id["4"]["error"]["code"], -32602, "{text}");
    assert_eq!(by_id["4"]["error"]["data"]["field"], "task", "{text}");
    assert_eq!(by_id["null"]["error"]["code"], -32700, "{text}");

    // The lease is the named agent's.
    let task_id = task["id"].as_str().unwrap();
    let (shown, _) =
        super::check(dir.path(), &["task", "show", task_id, "--address", &dev.address, "-o", "json"], 0);
    assert!(shown.contains("stdio-bot"), "{shown}");
    dev.stop();
}
