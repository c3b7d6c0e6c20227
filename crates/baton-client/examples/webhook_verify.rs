//! Verifying a webhook notice in Rust, as docs/reference/webhooks.md shows
//! it: the page's block is the body of `check` (the docs test checks it is
//! this text, and CI builds this example). `main` signs a notice as Baton
//! does and checks it (204), then a tampered copy and a late one (401): `cargo run -p baton-client
//! --example webhook_verify`.

use baton_api::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use reqwest::header::{HeaderMap, HeaderValue};

/// A receiver's check of one request (its headers, raw body and the clock):
/// the HTTP status to answer.
fn check(secret: &str, headers: &HeaderMap, body: Vec<u8>, now_ms: i64) -> u16 {
    use baton_api::webhook::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE_MS};

    let verified = webhook::verify(
        secret.as_bytes(),
        headers.get(TIMESTAMP_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(""),
        &body, // the raw bytes
        headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(""),
        now_ms, // your clock, ms since the epoch
        TIMESTAMP_TOLERANCE_MS,
    );
    // Err(VerifyError::Stale { .. } | BadSignature | NoSignature | BadTimestamp): answer 401.
    match verified {
        Ok(()) => 204,
        Err(_) => 401,
    }
}

fn main() {
    let secret = "a-secret-of-at-least-16-bytes";
    let now_ms = 1_764_000_000_000;
    let body = br#"{"id":1,"kind":"alert"}"#;
    let mut headers = HeaderMap::new();
    headers.insert(TIMESTAMP_HEADER, HeaderValue::from(now_ms));
    headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&sign(secret.as_bytes(), now_ms, body)).unwrap());
    println!("as sent: {}", check(secret, &headers, body.to_vec(), now_ms + 2_000));
    println!("tampered: {}", check(secret, &headers, br#"{"id":1,"kind":"handoff"}"#.to_vec(), now_ms));
    println!("an hour later: {}", check(secret, &headers, body.to_vec(), now_ms + 3_600_000));
}
