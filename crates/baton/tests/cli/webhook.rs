//! Webhooks as an operator configures them: `[[webhooks]]` in the `--config`
//! file of `baton dev`, and `baton webhook deliveries`.
//!
//! Goal: a mistake in a webhook table (a URL Baton will not call, a short or
//! missing secret, an unknown kind or key, a limit out of range) stops the
//! start with what to fix and never prints the secret; a configured webhook
//! is called with a signed notice and its delivery is listed by the CLI.
//! Method: the real binary against a tiny HTTP receiver on a std thread
//! (127.0.0.1:0) that verifies each request with
//! `baton_api::webhook::verify` on the wall clock (`baton dev` signs with it)
//! and answers 200; the delivery dispatcher's engine-level behaviour
//! (retries, give-up, restarts) is tested in baton-server.

use super::{Dev, check, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "cli-test-secret-0123456789";

#[test]
fn webhook_mistakes_in_the_config_file_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let table = |url: &str, secret: &str, extra: &str| {
        format!(
            "[[webhooks]]\nname = \"ops\"\nurl = \"{url}\"\nsecret = \"{secret}\"\nkinds = [\"alert\"]\n{extra}"
        )
    };
    let good_url = "http://127.0.0.1:9/hook";
    let cases = [
        (table("https://example.com/hook", SECRET, ""), "no TLS backend"),
        (table("http://user:pw@example.com/", SECRET, ""), "credentials"),
        (table("ftp://example.com/", SECRET, ""), "scheme \"ftp\""),
        (table(good_url, "tiny-secret", ""), "use at least 16"),
        (table(good_url, "env:BATON_TEST_NO_SUCH_SECRET", ""), "BATON_TEST_NO_SUCH_SECRET"),
        (table(good_url, SECRET, "urll = \"x\"\n"), "unknown field `urll`"),
        (
            table(good_url, SECRET, "").replace("[\"alert\"]", "[\"everything\"]"),
            "unknown variant `everything`",
        ),
        (format!("{}{}", table(good_url, SECRET, ""), table(good_url, SECRET, "")), "two webhooks"),
        (
            format!("[server]\nwebhook_attempts_max = 0\n\n{}", table(good_url, SECRET, "")),
            "webhook_attempts_max",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(dir.join("bad.toml"), &text).unwrap();
        let (out, err) = check(dir, &["dev", "--listen", "127.0.0.1:0", "--config", "bad.toml"], 1);
        assert!(err.contains(needle) && err.contains("bad.toml"), "{text}\n-> {err}");
        for shown in [&out, &err] {
            assert!(!shown.contains(SECRET) && !shown.contains("tiny-secret"), "a secret shown: {shown}");
        }
    }
}

#[test]
fn a_configured_webhook_is_called_and_its_delivery_listed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (url, notices) = receiver();
    let config = format!(
        "[server]\nwebhook_poll_ms = 20\n\n[[webhooks]]\nname = \"ops\"\nurl = \"{url}\"\n\
         secret = \"{SECRET}\"\nkinds = [\"handoff\", \"alert\"]\nstages = [\"b\"]\n"
    );
    std::fs::write(dir.join("baton.toml"), config).unwrap();
    let dev = Dev::start_with(dir, &["--config", "baton.toml"]);
    let address = dev.address.clone();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--address", address.as_str()]);
        json(&check(dir, &all, 0).0)
    };
    let id = run(&["task", "submit", "--stage", "a", "-o", "json"])["id"].as_str().unwrap().to_owned();
    let claim = |agent: &str, stage: &str| {
        let leases =
            run(&["task", "claim", "--agent", agent, "--stage", stage, "--wait", "5s", "-o", "json"]);
        leases["leases"][0]["epoch"].as_u64().expect("a lease").to_string()
    };
    let epoch = claim("w", "a");
    run(&["task", "handoff", &id, "--agent", "w", "--epoch", &epoch, "--to", "b", "-o", "json"]);
    claim("w2", "b");

    let notice = notices.recv_timeout(Duration::from_secs(20)).expect("a notice within 20 s");
    assert_eq!((notice["kind"].as_str(), notice["task"].as_str()), (Some("handoff"), Some(id.as_str())));
    assert_eq!(notice["handoff"]["outcome"]["status"], "accepted");
    assert_eq!(notice["handoff"]["outcome"]["by"], "w2");

    // The record is written once the receiver has answered: wait for it.
    let start = std::time::Instant::now();
    let page = loop {
        let page = run(&["webhook", "deliveries", "-o", "json"]);
        if page["deliveries"].as_array().is_some_and(|d| !d.is_empty()) || start.elapsed().as_secs() > 20 {
            break page;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let deliveries = page["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{page}");
    assert_eq!(
        (deliveries[0]["webhook"].as_str(), deliveries[0]["status"].as_str()),
        (Some("ops"), Some("delivered"))
    );
    assert_eq!(deliveries[0]["notice"], notice["id"]);
    let (text, _) = check(dir, &["webhook", "deliveries", "--address", &address], 0);
    assert!(text.contains("ops") && text.contains("delivered (HTTP 200)"), "{text}");
    let (text, _) = check(dir, &["webhook", "deliveries", "--after", "1", "--address", &address], 0);
    assert!(text.contains("no deliveries"), "{text}");
    let (_, err) = check(dir, &["webhook", "deliveries", "--limit", "0", "--address", &address], 1);
    assert!(err.contains("invalid_request"), "{err}");
    dev.stop();
}

/// A receiver on 127.0.0.1:0: each POST is verified (signature and
/// timestamp, on the wall clock) and its body sent on the channel; answers
/// 200, or 401 when verification fails. Returns its URL.
fn receiver() -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let header = |name: &str| {
                headers.iter().find(|(n, _)| n == &name.to_ascii_lowercase()).map(|(_, v)| v.clone())
            };
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            let verified = baton_api::webhook::verify(
                SECRET.as_bytes(),
                &header(baton_api::webhook::TIMESTAMP_HEADER).unwrap_or_default(),
                &body,
                &header(baton_api::webhook::SIGNATURE_HEADER).unwrap_or_default(),
                now,
                baton_api::webhook::TIMESTAMP_TOLERANCE_MS,
            );
            let status = if verified.is_ok() { "200 OK" } else { "401 Unauthorized" };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if verified.is_ok() {
                let _ = tx.send(serde_json::from_slice(&body).expect("a JSON notice"));
            }
        }
    });
    (url, rx)
}
