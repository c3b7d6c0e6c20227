//! Refusals become HTTP here, and only here: the one table from error code to
//! status, the conversion of core refusals (with their `details`), and the
//! response body `{code, message, details}`. Store failures are logged with
//! their internal text and answered with a generic message: internal error
//! text never reaches a client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_api::{ErrorBody, ErrorCode};
use baton_core::{Error as StoreError, Rejection};
use serde_json::json;

/// A refusal on its way to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: serde_json::Value,
}

/// The status of each code. Every refusal the server sends goes through this table.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::NotHolder => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TaskArchived => StatusCode::GONE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::LeaseLost | ErrorCode::InvalidTransition | ErrorCode::RequestInProgress => {
            StatusCode::CONFLICT
        }
        ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::IdempotencyConflict
        | ErrorCode::RouteNotAllowed
        | ErrorCode::LimitExceeded
        | ErrorCode::InvalidWorkflow => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited | ErrorCode::TooManyLeases => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable | ErrorCode::RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// Put in a refused response's extensions, so the refusal log can name the code.
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub ErrorCode);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: json!({}) }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// 400 `invalid_request` about one field.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidRequest, format!("{field}: {problem}"))
            .with_details(json!({ "field": field }))
    }

    /// 422 `limit_exceeded` naming the limit.
    pub fn limit(limit: &str, max: u64, what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::LimitExceeded, format!("limit {limit} is {max}; {what}"))
            .with_details(json!({ "limit": limit, "max": max }))
    }

    /// 422 `invalid_workflow`: every mistake of a workflow file, each with
    /// its line, column, field and what to fix, in `details.errors`.
    pub fn invalid_workflow(errors: &[baton_api::WorkflowFileError]) -> Self {
        let message = match errors {
            [] => "the workflow file is not valid".to_owned(),
            [one] => format!("the workflow file has a mistake: {one}"),
            [first, rest @ ..] => {
                format!("the workflow file has {} mistakes; the first: {first}", rest.len() + 1)
            }
        };
        Self::new(ErrorCode::InvalidWorkflow, message).with_details(json!({ "errors": errors }))
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} {id} not found"))
            .with_details(json!({ what: id.to_string() }))
    }

    pub fn body_too_large(max: usize) -> Self {
        Self::new(
            ErrorCode::BodyTooLarge,
            format!("the request body is over {max} bytes; store large data elsewhere and pass a reference"),
        )
        .with_details(json!({ "limit": "body_bytes_max", "max": max }))
    }

    /// 503 after a store failure, whose text is logged, not sent.
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "the store is unavailable; retry later")
    }

    /// 503 `request_timeout`: the request outlasted `request_timeout_ms` (plus
    /// the longest wait, for long polls).
    pub fn request_timeout(limit_ms: u64) -> Self {
        Self::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request took longer than {limit_ms} ms and was stopped; it may have taken effect, \
                 so retry it unchanged (same epoch, same idempotency key)"
            ),
        )
        .with_details(json!({ "limit": "request_timeout_ms", "max": limit_ms }))
    }

    /// 429 `rate_limited`: the caller is over `requests_per_second_max`
    /// (bursts up to `burst`); one more request is accepted after `retry_after_ms`.
    pub fn rate_limited(per_second: u64, burst: u64, retry_after_ms: u64) -> Self {
        Self::new(
            ErrorCode::RateLimited,
            format!(
                "too many requests: limit requests_per_second_max is {per_second} (bursts up to {burst}); \
                 retry after {retry_after_ms} ms"
            ),
        )
        .with_details(json!({
            "limit": "requests_per_second_max",
            "max": per_second,
            "burst": burst,
            "retry_after_ms": retry_after_ms,
        }))
    }

    /// 500 for a bug; the caller logs what happened.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; the server logged it")
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// How long a client told to come back (429, 503) waits when the refusal
/// names no better time: long enough not to hammer a struggling server,
/// short enough that a blip costs little.
pub const RETRY_AFTER_DEFAULT_S: u64 = 1;

impl ApiError {
    /// The `Retry-After` seconds for a refusal the client should repeat
    /// later: every 429 and 503, rounded up from `details.retry_after_ms`
    /// where the refusal knows it.
    pub fn retry_after_s(&self) -> Option<u64> {
        let status = self.status();
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let ms = self.details.get("retry_after_ms").and_then(serde_json::Value::as_u64);
        Some(ms.map_or(RETRY_AFTER_DEFAULT_S, |ms| ms.div_ceil(1000).max(1)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after_s();
        let code = self.code;
        let body = ErrorBody::new(self.code, self.message).with_details(self.details);
        let mut response = (status_of(code), Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if code == ErrorCode::Unauthenticated {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Refused(code));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Rejected(rejection) => rejection.into(),
            StoreError::Unavailable(text) => {
                tracing::warn!(error = %text, "store unavailable");
                Self::unavailable()
            }
            StoreError::StorageFull(text) => {
                tracing::error!(error = %text, "storage full: writes refused until space is freed");
                Self::new(
                    ErrorCode::StorageFull,
                    "the store's disk is full: nothing was written; reads still work, and the same \
                     request succeeds once an operator frees space",
                )
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        let (code, details) = match &rejection {
            Rejection::LeaseLost { task, current_epoch, state } => (
                ErrorCode::LeaseLost,
                json!({ "task": task, "current_epoch": current_epoch, "state": state.as_str() }),
            ),
            Rejection::NotHolder { task } => (ErrorCode::NotHolder, json!({ "task": task })),
            Rejection::InvalidTransition { task, command, state } => (
                ErrorCode::InvalidTransition,
                json!({ "task": task, "command": command, "state": state.as_str() }),
            ),
            Rejection::IdempotencyConflict { key } => (ErrorCode::IdempotencyConflict, json!({ "key": key })),
            Rejection::LimitExceeded { limit, max, .. } => {
                (ErrorCode::LimitExceeded, json!({ "limit": limit, "max": max }))
            }
            Rejection::TooManyLeases { max } => {
                (ErrorCode::TooManyLeases, json!({ "limit": "leases_per_agent_max", "max": max }))
            }
            Rejection::TaskNotFound { task } => (ErrorCode::NotFound, json!({ "task": task })),
            Rejection::TaskArchived { task } => (ErrorCode::TaskArchived, json!({ "task": task })),
            Rejection::HandoffNotFound { handoff } => (ErrorCode::NotFound, json!({ "handoff": handoff })),
            Rejection::RouteNotAllowed { from, to } => {
                (ErrorCode::RouteNotAllowed, json!({ "from": from, "to": to }))
            }
            Rejection::InvalidRequest { field, .. } => (ErrorCode::InvalidRequest, json!({ "field": field })),
            Rejection::WorkflowNotFound { name } => (ErrorCode::NotFound, json!({ "workflow": name })),
            Rejection::AgentNotAllowed { stage, agent } => {
                (ErrorCode::Forbidden, json!({ "stage": stage, "agent": agent }))
            }
            Rejection::Revoked => (ErrorCode::Unauthenticated, json!({})),
            Rejection::Forbidden { .. } => (ErrorCode::Forbidden, json!({})),
            Rejection::LastAdmin { name } => (ErrorCode::InvalidTransition, json!({ "principal": name })),
            Rejection::NotDue { .. } => {
                // The engine keeps `not_due` inside the timer sweep; one here is a bug.
                tracing::error!(%rejection, "a timer refusal reached the API");
                return Self::internal();
            }
        };
        Self { code, message, details }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_storage_full() {
        let error = ApiError::from(StoreError::StorageFull("database or disk is full".into()));
        assert_eq!((error.status(), error.code), (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::StorageFull));
        assert!(!error.message.contains("database or disk"), "internal text stays in the log");
    }

    #[test]
    fn every_code_has_a_4xx_or_5xx_status() {
        for code in ErrorCode::ALL {
            let status = status_of(*code);
            assert!(status.is_client_error() || status.is_server_error(), "{code}: {status}");
        }
    }
}
