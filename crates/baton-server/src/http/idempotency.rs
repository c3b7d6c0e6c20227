//! The `Idempotency-Key` header: any mutating call may carry
//! one; for `request_key_ttl_ms` (24 h) the same key from the same principal
//! returns the first response, and with another request 422
//! `idempotency_conflict`. This module reads and checks the header, takes the
//! request's fingerprint (method, path and the body as canonical JSON) and
//! scopes the key to the caller; the store does the rest, in the operation's
//! own transaction (`baton_core::engine::keyed`), so a crash can never keep
//! an effect while losing the answer a retry gets.
//!
//! A replay answers the same status and body as the first call: handlers
//! build their response from the store's outcome, and the replayed outcome
//! is the stored first one (a lease's payload is re-read, and payloads never
//! change). `request_in_progress` (409) is for stores that can see a first
//! call still running; the SQLite and memory stores run keyed calls one
//! after another, so a repeat always finds the first's record and never gets
//! it. A long-polled claim records only a claim that leased something, so a
//! repeat waits for work like the first.

use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::principal::Principal;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use baton_core::event::canonical_json;
use baton_core::{AgentId, Hash, RequestKey};
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

/// The header's name (HTTP header names are case-insensitive).
pub const HEADER: &str = "idempotency-key";

/// Longest key, in bytes (visible ASCII: one byte per character).
pub const KEY_BYTES_MAX: usize = 255;

/// A mutating call's JSON body (read and refused exactly as `ApiJson` does)
/// with its idempotency key, if the request carried one.
#[derive(Debug, Clone)]
pub struct KeyedJson<T> {
    pub body: T,
    pub key: Option<IdempotencyKey>,
}

/// A checked `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Hash,
}

impl<S, T> FromRequest<S> for KeyedJson<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Some(key) = header_key(req.headers())? else {
            let ApiJson(body) = ApiJson::from_request(req, state).await?;
            return Ok(Self { body, key: None });
        };
        // Read the body once, fingerprint those bytes, and hand the same bytes
        // to `ApiJson` so the body is refused exactly as without a key.
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state).await.map_err(
            |rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large(AppState::from_ref(state).options().body_bytes_max)
                } else {
                    ApiError::invalid("body", "the request body could not be read")
                }
            },
        )?;
        let fingerprint = fingerprint(&parts.method, parts.uri.path(), &bytes);
        let ApiJson(body) =
            ApiJson::from_request(Request::from_parts(parts, Body::from(bytes)), state).await?;
        Ok(Self { body, key: Some(IdempotencyKey { key, fingerprint }) })
    }
}

impl IdempotencyKey {
    /// The store's key: this key, scoped to the caller. With auth on the
    /// caller is the token's principal; with auth off it is the agent the
    /// body names (claims and holder calls) or `anonymous` (submit, cancel).
    pub fn scoped(self, principal: &Principal, agent: Option<&AgentId>) -> RequestKey {
        let scope = match (principal, agent) {
            (Principal::Anonymous, Some(agent)) => format!("agent:{agent}"),
            (Principal::Anonymous, None) => "anonymous".to_owned(),
            #[allow(unreachable_patterns)] // principals with a token, once auth exists
            (other, _) => other.actor().to_string(),
        };
        RequestKey { principal: scope, key: self.key, fingerprint: self.fingerprint }
    }
}

/// The header's value, if present: 1 to `KEY_BYTES_MAX` visible ASCII
/// characters (`!` to `~`, so no spaces), sent once.
pub fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::invalid("Idempotency-Key", "send the header once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > KEY_BYTES_MAX || !bytes.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {KEY_BYTES_MAX} visible ASCII characters, without spaces"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// SHA-256 of the method, the path and the body as canonical JSON (sorted
/// keys, no whitespace), so the same request formatted differently is the
/// same request. A body that is not JSON is refused before this matters; it
/// is hashed as it is.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> Hash {
    let body = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => canonical_json(&value),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    Hash::of(format!("{method} {path}\n{body}").as_bytes())
}

/// A store outcome of another operation than the one asked: a bug.
pub fn unexpected_outcome(op: &str) -> ApiError {
    tracing::error!(op, "the store answered an operation with another operation's outcome");
    ApiError::internal()
}

/// The header, for `params(...)` in `#[utoipa::path]` of every mutating route.
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(KEY_BYTES_MAX))
            .pattern(Some("^[!-~]+$"));
        let parameter = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes the call safe to retry: for 24 h (`request_key_ttl_ms`) the same key from the \
                 same principal answers the first call's status and body, and changes nothing; with \
                 another method, path or body, 422 `idempotency_conflict`. Refused calls are not \
                 remembered, and a claim only once it leased something. 1 to 255 visible ASCII \
                 characters; otherwise 400 `invalid_request`.",
            ))
            .schema(Some(schema));
        vec![parameter.build()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(values: &[&[u8]]) -> Result<Option<String>, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(HEADER, HeaderValue::from_bytes(v).expect("a header value"));
        }
        header_key(&headers)
    }

    #[test]
    fn header_is_one_to_255_visible_ascii_characters_sent_once() {
        let long = "k".repeat(KEY_BYTES_MAX);
        let too_long = "k".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(key(&[]).expect("no header is fine"), None);
        for accepted in ["order-1042", "!~", long.as_str()] {
            assert_eq!(key(&[accepted.as_bytes()]).expect(accepted), Some(accepted.to_owned()));
        }
        let refused: [&[&[u8]]; 6] = [
            &[b""],
            &[too_long.as_bytes()],
            &[b"two words"],
            &[b"tab\there"],
            &["caf\u{e9}".as_bytes()],
            &[b"a", b"b"],
        ];
        for values in refused {
            let e = key(values).expect_err("refused");
            assert_eq!(e.code, baton_api::ErrorCode::InvalidRequest, "{values:?}");
        }
    }

    #[test]
    fn fingerprint_ignores_formatting_not_content() {
        let post = Method::POST;
        let a = fingerprint(&post, "/v1/tasks", br#"{"stage":"a","payload":{"x":1,"y":2}}"#);
        let same =
            fingerprint(&post, "/v1/tasks", b"{ \"payload\": {\"y\": 2, \"x\": 1},\n \"stage\": \"a\" }");
        assert_eq!(a, same);
        for other in [
            fingerprint(&post, "/v1/tasks", br#"{"stage":"b","payload":{"x":1,"y":2}}"#),
            fingerprint(&post, "/v1/claims", br#"{"stage":"a","payload":{"x":1,"y":2}}"#),
            fingerprint(&Method::PUT, "/v1/tasks", br#"{"stage":"a","payload":{"x":1,"y":2}}"#),
        ] {
            assert_ne!(a, other);
        }
    }
}
