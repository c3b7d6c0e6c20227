//! The error body every refusal carries, `{code, message, details}`, and the
//! stable codes. Which HTTP status goes with which code is the server's
//! business (baton-server `http/error.rs`); clients should match on the code,
//! never on the message.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code (see `ErrorCode`), as text: clients should accept codes
    /// newer than the ones they know.
    #[schema(examples("lease_lost"))]
    pub code: String,
    /// A sentence for humans: what happened and what to do.
    pub message: String,
    /// Machine-readable facts, e.g. `limit` and `max` for `limit_exceeded`,
    /// `current_epoch` and `state` for `lease_lost`. Always an object.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object, required = true, examples(json!({"task": "0190a0c4-0000-7000-8000-000000000000", "current_epoch": 3, "state": "held"})))]
    pub details: serde_json::Value,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_str().to_owned(), message: message.into(), details: empty_object() }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The code as a known `ErrorCode`, if it is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

macro_rules! codes {
    ($($variant:ident => $text:literal, $doc:literal;)*) => {
        /// The stable error codes of the API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, for tests and documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// What the code means, in one sentence.
            pub fn doc(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $doc,)*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    InvalidRequest => "invalid_request", "Malformed JSON, an unknown field, a bad value or a malformed id.";
    Unauthenticated => "unauthenticated", "No token, or an unknown one.";
    Forbidden => "forbidden", "The principal's role does not allow the call.";
    NotHolder => "not_holder", "The epoch is current but another agent holds the lease.";
    NotFound => "not_found", "No such task, handoff or route (or none visible to the caller).";
    TaskArchived => "task_archived", "The task finished and was moved to the archive: its history is still served, but it takes no further call and its idempotency key stays taken; `details.task` names it.";
    MethodNotAllowed => "method_not_allowed", "The path exists but not with this HTTP method.";
    LeaseLost => "lease_lost", "The caller's epoch is stale: stop working on the task.";
    InvalidTransition => "invalid_transition", "The call does not apply to the task's state.";
    RequestInProgress => "request_in_progress", "The first request with this idempotency key is still running.";
    BodyTooLarge => "body_too_large", "The request body is over the size limit.";
    IdempotencyConflict => "idempotency_conflict", "An idempotency key was reused with a different request.";
    RouteNotAllowed => "route_not_allowed", "The handoff's target is not an allowed route.";
    InvalidWorkflow => "invalid_workflow", "A workflow file has mistakes: `details.errors` lists each with its `line`, `column`, `field` and what to fix.";
    LimitExceeded => "limit_exceeded", "A named limit refused the request; `details.limit` names it.";
    RateLimited => "rate_limited", "Too many requests; retry later.";
    TooManyLeases => "too_many_leases", "The agent holds as many leases as it may.";
    Internal => "internal", "A bug in Baton; the server logged it.";
    Unavailable => "unavailable", "The store cannot serve now; retry later.";
    RequestTimeout => "request_timeout", "The request outlasted the server's time limit; it may have taken effect, so retry it as it was (same epoch, same idempotency key).";
    StorageFull => "storage_full", "The store is out of space.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl utoipa::PartialSchema for ErrorCode {
    /// The codes as a string enum; the description says what each means.
    fn schema() -> RefOr<Schema> {
        let mut description =
            String::from("The stable error codes. Clients match on these, never on messages.\n");
        for code in ErrorCode::ALL {
            description.push_str(&format!("\n- `{code}`: {}", code.doc()));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some(description))
            .build()
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_text() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn details_default_to_an_empty_object() {
        let body: ErrorBody = serde_json::from_str(r#"{"code":"not_found","message":"m"}"#).unwrap();
        assert_eq!(body.details, serde_json::json!({}));
        assert_eq!(body.error_code(), Some(ErrorCode::NotFound));
    }
}
