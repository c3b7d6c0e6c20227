//! Extractors that refuse in the API's own shape. axum's `Json`, `Path` and
//! `Query` answer malformed input with plain-text bodies; these wrappers turn
//! every such refusal into `{code, message, details}`: 400 `invalid_request`
//! for bad JSON, unknown fields, a missing content type, malformed ids and
//! query strings; 413 `body_too_large` past `body_bytes_max`; 422
//! `limit_exceeded` for JSON nested deeper than `json_depth_max`.

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

/// A JSON request body, refused in the API's shape.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let options = app.options();
        // Requiring a JSON content type also keeps browsers from posting to a
        // loopback server cross-site without a CORS preflight.
        if !is_json(req.headers()) {
            return Err(ApiError::invalid("content-type", "send the body as application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(options.body_bytes_max)
            } else {
                ApiError::invalid("body", "the request body could not be read")
            }
        })?;
        check_depth(&bytes, options.json_depth_max)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Refuses JSON nested deeper than `max` (objects and arrays, the outermost
/// counting as 1), before parsing: one pass over the bytes, no allocation.
/// Malformed JSON passes through to the parser, which says what is wrong.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::limit(
                        "json_depth_max",
                        max as u64,
                        "the request's JSON is nested too deeply; flatten it or store it elsewhere",
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a request body; the message says where and what went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let problem = if bytes.iter().all(u8::is_ascii_whitespace) {
            "the request body is empty; send a JSON object".to_owned()
        } else {
            format!("invalid JSON body: {e}")
        };
        ApiError::new(baton_api::ErrorCode::InvalidRequest, problem)
            .with_details(json!({ "field": "body", "line": e.line(), "column": e.column() }))
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// An id in the path (`/v1/tasks/{id}`, `/v1/handoffs/{id}`), as a UUID.
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("id", "the path needs one id"))?;
        Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a valid id (expected a UUID)")))
    }
}

/// A query string, refused in the API's shape.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::invalid("query", rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, max: usize) -> bool {
        check_depth(text.as_bytes(), max).is_ok()
    }

    #[test]
    fn depth_counts_objects_and_arrays_outside_strings() {
        let cases = [
            ("1", 0, true),
            ("{}", 0, false),
            ("{}", 1, true),
            (r#"{"a":[{"b":[]}]}"#, 4, true),
            (r#"{"a":[{"b":[]}]}"#, 3, false),
            (r#"{"a":"[[[[{{{{"}"#, 1, true),
            (r#"{"a":"\"[[[["}"#, 1, true),
            (r#"{"a":"\\"}"#, 1, true),
            (r#"[[],[],[],[]]"#, 2, true),
            (r#"{"a":"\\",  "b":[[]]}"#, 2, false),
        ];
        for (text, max, ok) in cases {
            assert_eq!(depth_ok(text, max), ok, "{text} with max {max}");
        }
    }
}
