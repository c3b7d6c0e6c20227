//! `baton mcp`: Baton's MCP server on stdio, for MCP clients that start
//! their servers as processes (Claude Desktop, IDEs, agent frameworks).
//!
//! It is a relay: each JSON-RPC message read from stdin (one per line) is
//! POSTed to the server's `/mcp` endpoint with the token (`--token`) or,
//! with auth off, the agent's name (`--agent`, the `Baton-Agent` header),
//! and every message of the answer is written to stdout, one per line. The
//! tools, their role filter and their checks are therefore exactly the
//! server's (baton-server's `mcp` module), whichever transport a client
//! uses. Messages are relayed concurrently (a claim waiting for work does
//! not hold up the next call); the negotiated protocol version is sent as
//! `MCP-Protocol-Version`, with `Mcp-Method` and `Mcp-Name`, as a streamable
//! HTTP client would. When the server cannot be reached or refuses the
//! HTTP request (401 for a bad token), a request gets a JSON-RPC error
//! saying so. Logs go to stderr; stdout carries only MCP messages.

use anyhow::Context as _;
use baton_client::DEFAULT_ADDRESS;
use serde_json::{Value, json};
use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one relayed message may take: above the longest claim wait
/// (60 s) plus the server's own time limit.
const RELAY_TIMEOUT: Duration = Duration::from_secs(150);

/// Bytes of one stdin line (one JSON-RPC message).
const LINE_BYTES_MAX: usize = 16 << 20;

/// The JSON-RPC error code for "the Baton server refused or could not be reached".
const SERVER_ERROR: i64 = -32000;

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// The Baton server's address; the relay talks to its `/mcp` endpoint.
    #[arg(long, env = "BATON_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: String,
    /// The API token (`baton_<id>_<secret>`) of a server with auth on; the
    /// tools offered are those its principal's role may call.
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With auth off (`baton dev`): the agent the session acts as.
    #[arg(long, env = "BATON_AGENT")]
    pub agent: Option<String>,
}

/// Relays stdin to `/mcp` and the answers to stdout until stdin ends.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let endpoint = format!("{}/mcp", args.address.trim_end_matches('/'));
    let http =
        reqwest::Client::builder().timeout(RELAY_TIMEOUT).build().context("building the HTTP client")?;
    let relay = Arc::new(Relay {
        http,
        endpoint,
        token: args.token.map(|t| t.trim().to_owned()),
        agent: args.agent,
        version: Mutex::new(None),
    });
    tracing::info!(endpoint = %relay.endpoint, "baton mcp: relaying stdio");

    let (lines, mut incoming) = mpsc::channel::<String>(64);
    std::thread::spawn(move || read_stdin(&lines));
    let (out, mut outgoing) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::task::spawn_blocking(move || {
        let mut stdout = std::io::stdout().lock();
        while let Some(message) = outgoing.blocking_recv() {
            if writeln!(stdout, "{message}").and_then(|()| stdout.flush()).is_err() {
                break;
            }
        }
    });

    let mut calls = tokio::task::JoinSet::new();
    while let Some(line) = incoming.recv().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            let _ = out.send(error_message(Value::Null, -32700, "parse error: not a JSON-RPC message", None));
            continue;
        };
        let relay = relay.clone();
        let out = out.clone();
        calls.spawn(async move {
            for answer in relay.send(&message).await {
                let _ = out.send(answer);
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    drop(out);
    let _ = writer.await;
    Ok(())
}

/// Sends stdin's non-empty lines until it ends (or a line is too long).
fn read_stdin(lines: &mpsc::Sender<String>) {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n > LINE_BYTES_MAX => {
                tracing::error!("a message over {LINE_BYTES_MAX} bytes; stopping");
                return;
            }
            Ok(_) => {
                let text = line.trim();
                if !text.is_empty() && lines.blocking_send(text.to_owned()).is_err() {
                    return;
                }
            }
        }
    }
}

struct Relay {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    agent: Option<String>,
    /// The protocol version the client and server agreed on.
    version: Mutex<Option<String>>,
}

impl Relay {
    /// POSTs one message; the messages to write back (none for a notification).
    async fn send(&self, message: &Value) -> Vec<Value> {
        let id = message.get("id").cloned();
        let method = message.get("method").and_then(Value::as_str);
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(agent) = &self.agent {
            request = request.header("baton-agent", agent);
        }
        let meta_version = message
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let version = meta_version.or_else(|| self.version.lock().ok().and_then(|v| v.clone()));
        if let Some(version) = version.filter(|_| method != Some("initialize")) {
            request = request.header("mcp-protocol-version", version);
        }
        if let Some(method) = method {
            request = request.header("mcp-method", method);
            let name = message.pointer("/params/name").or_else(|| message.pointer("/params/uri"));
            if let Some(name) = name.and_then(Value::as_str).filter(|n| plain_header(n)) {
                request = request.header("mcp-name", name);
            }
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => {
                return reply_error(
                    id,
                    &format!("cannot reach Baton at {} ({e}); is it running?", self.endpoint),
                    None,
                );
            }
        };
        let status = answer.status();
        let event_stream = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text = answer.text().await.unwrap_or_default();
        let messages: Vec<Value> = if event_stream {
            sse_messages(&text)
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(batch)) => batch,
                Ok(Value::Null) | Err(_) => Vec::new(),
                Ok(one) => vec![one],
            }
        };
        let messages: Vec<Value> = messages.into_iter().filter(|m| m.get("jsonrpc").is_some()).collect();
        if method == Some("initialize")
            && let Some(agreed) = messages.iter().find_map(|m| m.pointer("/result/protocolVersion"))
            && let Ok(mut version) = self.version.lock()
        {
            *version = agreed.as_str().map(str::to_owned);
        }
        if messages.is_empty() && !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let code = body.get("code").and_then(Value::as_str).unwrap_or("error");
            let detail = body.get("message").and_then(Value::as_str).unwrap_or_default();
            return reply_error(
                id,
                &format!("Baton refused the request: {} {code}: {detail}", status.as_u16()),
                Some(json!({ "status": status.as_u16(), "body": body })),
            );
        }
        messages
    }
}

/// A JSON-RPC error for request `id`; nothing for a notification.
fn reply_error(id: Option<Value>, message: &str, data: Option<Value>) -> Vec<Value> {
    match id {
        Some(id) => vec![error_message(id, SERVER_ERROR, message, data)],
        None => {
            tracing::warn!("{message}");
            Vec::new()
        }
    }
}

fn error_message(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// The JSON messages in an event stream's `data:` fields.
fn sse_messages(text: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(message) = serde_json::from_str(&data) {
                messages.push(message);
            }
            data.clear();
        }
    }
    messages
}

/// Whether `value` may go in a header as it is (visible ASCII, no edge spaces).
fn plain_header(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| (0x21..0x7f).contains(&b))
}
