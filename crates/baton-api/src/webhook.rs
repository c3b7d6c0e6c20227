//! Webhooks on the wire: the notice Baton POSTs to a configured URL
//! (`WebhookNotice`), the delivery records an operator lists
//! (`GET /v1/deliveries`), and the signature scheme with the function a Rust
//! receiver calls to check it (`verify`). The server signs with `sign`, so
//! both ends share one implementation of the scheme; delivering, retrying
//! and recording are the server's business (`baton_server::webhooks`).
//!
//! Each POST carries three headers:
//!
//! - `Baton-Webhook-Id`: the notice's id (its sequence number): the same on
//!   every attempt and every re-delivery, so a receiver drops duplicates by it
//!   (delivery is at least once);
//! - `Baton-Timestamp`: when this attempt was signed, in milliseconds since
//!   the Unix epoch;
//! - `Baton-Signature`: `v1=` and the lowercase hex HMAC-SHA256, keyed with
//!   the webhook's secret, of `"<Baton-Timestamp>.<body>"` (the timestamp's
//!   decimal text, a dot, the body's exact bytes). Several comma-separated
//!   `v1=` values may come while a secret is rotated; one match suffices.
//!
//! A receiver recomputes the signature over the raw body before parsing it,
//! compares in constant time, and refuses a timestamp further than its
//! tolerance from its own clock (five minutes is `TIMESTAMP_TOLERANCE_MS`), so
//! a captured request cannot be replayed later.

use crate::{TaskId, Timestamp};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};

/// The header naming the notice (its id): the receiver's deduplication key.
pub const ID_HEADER: &str = "Baton-Webhook-Id";
/// The header with the signing time, in milliseconds since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "Baton-Timestamp";
/// The header with the signature(s), `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "Baton-Signature";
/// The signature scheme's version prefix.
pub const SIGNATURE_VERSION: &str = "v1";
/// A sensible tolerance between the sender's timestamp and the receiver's
/// clock: older (or further in the future) and `verify` refuses the request.
pub const TIMESTAMP_TOLERANCE_MS: i64 = 5 * 60 * 1000;
/// Bytes of `Baton-Signature` that `verify` looks at (a few rotated secrets).
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 1024;

/// What Baton POSTs to a webhook: one notice from the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookNotice {
    /// The notice's sequence number: increasing, never reused, the same on
    /// every attempt (also in `Baton-Webhook-Id`).
    pub id: u64,
    pub kind: NoticeKind,
    /// The task the notice is about; absent for an anomaly (about an edge or a stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub task: Option<TaskId>,
    /// With `kind: handoff`: the handoff with its final outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<crate::Handoff>,
    /// With `kind: alert`: the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    /// With `kind: anomaly`: the anomaly (acknowledge it with
    /// `POST /v1/alerts/{id}/ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::Anomaly>,
    /// When the notice's news happened (the outcome's or the alert's time;
    /// when an anomaly was raised).
    pub at: Timestamp,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A handoff reached its outcome (accepted, rerouted, escalated, cancelled).
    Handoff,
    /// An escalation or a passed deadline raised an alert.
    Alert,
    /// Anomaly detection flagged an edge or a stage.
    Anomaly,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handoff => "handoff",
            Self::Alert => "alert",
            Self::Anomaly => "anomaly",
        }
    }
}

/// An alert: a task escalated into a human stage, or past its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    /// The stage the alert is for (the human stage of an escalation).
    pub stage: String,
    /// The stage the task was in when the alert was raised: where it
    /// escalated from (the same stage for a deadline passed in a human
    /// stage). Absent for alerts recorded before Baton kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_stage: Option<String>,
    pub at: Timestamp,
    pub message: String,
}

/// One attempt to deliver a notice to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// The record's id: pass the last one as `after` for the next page.
    pub id: u64,
    /// The notice's id.
    pub notice: u64,
    /// The webhook's configured name.
    pub webhook: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Timestamp,
    #[serde(flatten)]
    pub status: DeliveryStatus,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The receiver answered 2xx.
    Delivered { http_status: u16 },
    /// This attempt failed; another follows at `retry_at`.
    Failed { error: String, retry_at: Timestamp },
    /// The last attempt failed; no more follow, and the webhook moved on.
    GaveUp { error: String },
}

/// `GET /v1/deliveries` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// Pass as `after` for the next page; absent when this page was not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// `GET /v1/deliveries` query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Records with ids after this one (0, the default, from the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Records in this page (1 to `page_size_max`; 50 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The `Baton-Signature` value for `body` signed at `timestamp_ms`.
pub fn sign(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp_ms, body).finalize().into_bytes();
    let mut out = String::with_capacity(SIGNATURE_VERSION.len() + 1 + 2 * tag.len());
    out.push_str(SIGNATURE_VERSION);
    out.push('=');
    for byte in tag {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// Checks a received notice: `timestamp` and `signature` are the
/// `Baton-Timestamp` and `Baton-Signature` header values, `body` the raw
/// body bytes (before any parsing), `now_ms` the receiver's clock. Refuses a
/// timestamp more than `tolerance_ms` away from `now_ms`, then a body whose
/// signature matches none of the `v1=` values (compared in constant time).
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now_ms: i64,
    tolerance_ms: i64,
) -> Result<(), VerifyError> {
    let sent: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_ms.saturating_sub(sent).saturating_abs();
    if skew > tolerance_ms {
        return Err(VerifyError::Stale { skew_ms: skew });
    }
    if signature.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(VerifyError::BadSignature);
    }
    let mut any = false;
    for value in signature.split(',') {
        let Some((version, hex)) = value.trim().split_once('=') else { continue };
        if version != SIGNATURE_VERSION {
            continue;
        }
        any = true;
        let Some(tag) = decode_hex(hex) else { continue };
        // `verify_slice` compares in constant time.
        if mac(secret, sent, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(if any { VerifyError::BadSignature } else { VerifyError::NoSignature })
}

/// Why `verify` refused a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// `Baton-Timestamp` is not a number of milliseconds.
    BadTimestamp,
    /// The timestamp is further than the tolerance from the receiver's clock.
    Stale { skew_ms: i64 },
    /// No `v1=` signature in `Baton-Signature`.
    NoSignature,
    /// No `v1=` signature matches: a wrong secret or a changed body.
    BadSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadTimestamp => write!(f, "{TIMESTAMP_HEADER} is not a number of milliseconds"),
            Self::Stale { skew_ms } => {
                write!(f, "{TIMESTAMP_HEADER} is {skew_ms} ms away from now: stale or replayed")
            }
            Self::NoSignature => write!(f, "{SIGNATURE_HEADER} carries no {SIGNATURE_VERSION}= signature"),
            Self::BadSignature => write!(f, "{SIGNATURE_HEADER} does not match the body and the secret"),
        }
    }
}

impl std::error::Error for VerifyError {}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-secret";
    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn a_signed_body_verifies() {
        let signature = sign(SECRET, NOW, b"{\"id\":1}");
        assert!(signature.starts_with("v1=") && signature.len() == 3 + 64, "{signature}");
        assert_eq!(verify(SECRET, &NOW.to_string(), b"{\"id\":1}", &signature, NOW + 1_000, 60_000), Ok(()));
        // One of several values (a rotated secret) suffices.
        let both = format!("v1=00ff, {signature}");
        assert_eq!(verify(SECRET, &NOW.to_string(), b"{\"id\":1}", &both, NOW, 60_000), Ok(()));
    }

    #[test]
    fn refusals() {
        let body = b"{\"id\":1}";
        let good = sign(SECRET, NOW, body);
        let ts = NOW.to_string();
        let check = |secret: &[u8], ts: &str, body: &[u8], sig: &str, now: i64| {
            verify(secret, ts, body, sig, now, 60_000).unwrap_err()
        };
        assert_eq!(check(b"another secret of 16+", &ts, body, &good, NOW), VerifyError::BadSignature);
        assert_eq!(check(SECRET, &ts, b"{\"id\":2}", &good, NOW), VerifyError::BadSignature);
        assert_eq!(check(SECRET, &ts, body, &good, NOW + 60_001), VerifyError::Stale { skew_ms: 60_001 });
        assert_eq!(check(SECRET, &ts, body, &good, NOW - 60_001), VerifyError::Stale { skew_ms: 60_001 });
        // A signature is bound to its timestamp: a fresh timestamp on an old signature fails.
        assert_eq!(check(SECRET, &(NOW + 5).to_string(), body, &good, NOW), VerifyError::BadSignature);
        assert_eq!(check(SECRET, "soon", body, &good, NOW), VerifyError::BadTimestamp);
        assert_eq!(check(SECRET, &ts, body, "v0=abcd", NOW), VerifyError::NoSignature);
        assert_eq!(check(SECRET, &ts, body, "v1=zz", NOW), VerifyError::BadSignature);
    }

    #[test]
    fn notice_wire_shape() {
        let notice = WebhookNotice {
            id: 7,
            kind: NoticeKind::Alert,
            task: Some(uuid::Uuid::nil()),
            handoff: None,
            anomaly: None,
            alert: Some(Alert {
                task: uuid::Uuid::nil(),
                stage: "desk".into(),
                from_stage: Some("take".into()),
                at: Timestamp(0),
                message: "escalated".into(),
            }),
            at: Timestamp(0),
        };
        let text = serde_json::to_string(&notice).unwrap();
        assert_eq!(
            text,
            r#"{"id":7,"kind":"alert","task":"00000000-0000-0000-0000-000000000000","alert":{"task":"00000000-0000-0000-0000-000000000000","stage":"desk","from_stage":"take","at":"1970-01-01T00:00:00.000Z","message":"escalated"},"at":"1970-01-01T00:00:00.000Z"}"#
        );
        let delivery = Delivery {
            id: 1,
            notice: 7,
            webhook: "ops".into(),
            attempt: 2,
            at: Timestamp(0),
            status: DeliveryStatus::Failed { error: "HTTP 500".into(), retry_at: Timestamp(2_000) },
        };
        let text = serde_json::to_string(&delivery).unwrap();
        assert_eq!(
            text,
            r#"{"id":1,"notice":7,"webhook":"ops","attempt":2,"at":"1970-01-01T00:00:00.000Z","status":"failed","error":"HTTP 500","retry_at":"1970-01-01T00:00:02.000Z"}"#
        );
        assert_eq!(serde_json::from_str::<Delivery>(&text).unwrap(), delivery);
    }
}
