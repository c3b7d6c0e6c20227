//! The OpenAPI document, generated from the code: the wire types describe
//! themselves (`baton-api`), each handler carries `#[utoipa::path]`, and the
//! router is built from those handlers (`utoipa-axum`), so a route cannot be
//! served without being documented. This module owns what the annotations
//! share: the document's frame (`ApiDoc`: info, tags, conventions), the sets
//! of refusals each route answers (grouped by status through
//! `http::error::status_of`, the same table the server answers with), the
//! JSON text (`openapi_json`, also written to docs/api/openapi.json by
//! `cargo xtask openapi`) and the offline Swagger UI at `/docs`.

use crate::http::error::status_of;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use baton_api::{ErrorBody, ErrorCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::openapi::example::{Example, ExampleBuilder};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the Swagger UI is served (its assets are compiled in: no network).
pub const DOCS_PATH: &str = "/docs";

/// The document's frame; the paths come from the router (`http::documented_routes`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Baton API", license(name = "Apache-2.0", identifier = "Apache-2.0")),
    components(schemas(ErrorBody, ErrorCode)),
    tags(
        (name = "tasks", description = "Submit, read, list and cancel tasks."),
        (name = "holder", description = "Calls from the agent holding a task's lease, fenced by `epoch`. \
            Handoff, complete, release and fail may claim the agent's next tasks in the same \
            transaction (`claim_next`)."),
        (name = "claims", description = "Take waiting tasks under a lease; long-polled up to `wait_ms`."),
        (name = "handoffs", description = "A handoff's outcome; long-polled up to `wait_ms`."),
        (name = "webhooks", description = "Webhook delivery records (operators and admins): every \
            attempt to POST a notice to a configured webhook, in order."),
        (name = "workflows", description = "Workflow files: apply (operators and admins), list, show. \
            Tasks keep the version they were submitted under."),
        (name = "inbox", description = "The human inbox and stuck work (operators and admins): tasks in \
            human stages, claimed and resolved by people; tasks past a threshold, with why."),
        (name = "metrics", description = "Handoff edge and stage metrics over a window, anomalies \
            (listed and acknowledged) and `/metrics` for Prometheus (operators and admins)."),
        (name = "service", description = "Liveness, readiness and the route index."),
        (name = "admin", description = "Principals and tokens; admins only. A token's text is shown \
            once, when it is created."),
    ),
    security(("bearer" = [])),
    modifiers(&Conventions, &BearerAuth),
)]
pub struct ApiDoc;

/// The whole document: the frame plus every route of the router.
pub fn document() -> OpenApi {
    crate::http::documented_routes().split_for_parts().1
}

/// The document as pretty JSON with a final newline: what `/openapi.json`
/// serves and what docs/api/openapi.json holds.
pub fn openapi_json() -> String {
    to_json(&document())
}

pub(crate) fn to_json(document: &OpenApi) -> String {
    let mut text = document.to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// `GET /openapi.json`, answered with the text built once with the router.
pub(crate) fn serve_json(text: Arc<str>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text.to_string()).into_response()
}

/// The Swagger UI at `/docs`, reading `/openapi.json`. The validator badge is
/// off: it would call a public validator from the browser.
pub(crate) fn docs_ui<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let config = utoipa_swagger_ui::Config::new([OPENAPI_PATH]).validator_url("none");
    SwaggerUi::new(DOCS_PATH).config(config).into()
}

/// The document's description: the conventions every route follows, and the
/// error codes with their statuses (from the same table the server uses).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let mut text = String::from(
            "Baton is a durable handoff coordinator: agents submit tasks into stages, claim them \
             under fenced leases and hand them on; no task is dropped at a boundary.\n\n\
             Conventions: JSON bodies (`Content-Type: application/json`); request bodies refuse \
             unknown fields; times are RFC 3339 UTC strings with milliseconds; durations are \
             integer milliseconds in fields named `*_ms`. With auth off (`baton dev`) claims and \
             holder calls name the calling agent in `agent`. With auth on (`baton serve`) every \
             call but the service routes sends `Authorization: Bearer baton_<id>_<secret>`, which \
             names the principal (an `agent` field, if sent, must be that principal); roles and \
             grants decide what it may do, and a task outside an agent's stages is `not_found`.\n\n\
             Every refusal has the body `ErrorBody` = `{code, message, details}`. Match on \
             `code`, never on `message`; `details` is always an object (for `limit_exceeded` it \
             names the `limit` and its `max`). The codes and their statuses:\n\n\
             | code | status | meaning |\n|---|---|---|\n",
        );
        for code in ErrorCode::ALL {
            text.push_str(&format!("| `{code}` | {} | {} |\n", status_of(*code).as_u16(), code.doc()));
        }
        text.push_str(
            "\nEvery route may also answer 404 `not_found` for an unknown path and 405 \
             `method_not_allowed` for a wrong method. Limits and their settings: \
             docs/reference/limits.md.",
        );
        openapi.info.description = Some(text);
        // One example body per code, referenced by every response that may carry it.
        let examples = &mut openapi.components.get_or_insert_with(Default::default).examples;
        for code in ErrorCode::ALL {
            let body = ErrorBody::new(*code, code.doc()).with_details(example_details(*code));
            let value = serde_json::to_value(body).expect("an error body serializes");
            let example = ExampleBuilder::new().summary(format!("{code} ({})", status_of(*code).as_u16()));
            examples.insert(code.as_str().to_owned(), example.value(Some(value)).build().into());
        }
    }
}

/// The bearer token scheme every API route requires with auth on.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("baton_<id>_<secret>")
            .description(Some(
                "A token from `POST /v1/tokens` (or the one `baton serve` prints on an empty \
                 database). Not needed with auth off (`baton dev`).",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

fn example_ref(code: ErrorCode) -> String {
    format!("#/components/examples/{code}")
}

/// The refusal responses for `codes`: one response per status, whose body is
/// `ErrorBody`, whose description lists the codes, with one example per code
/// (a reference to `components.examples.<code>`).
pub fn refusals(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        by_status.entry(status_of(*code).as_u16()).or_default().push(*code);
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let description =
                codes.iter().map(|c| format!("`{c}`: {}", c.doc())).collect::<Vec<_>>().join("\n\n");
            let examples =
                codes.iter().map(|code| (code.as_str(), RefOr::<Example>::Ref(Ref::new(example_ref(*code)))));
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .examples_from_iter(examples)
                .build();
            let mut response =
                ResponseBuilder::new().description(description).content("application/json", content);
            let retry = |c: &ErrorCode| {
                let status = crate::http::error::status_of(*c);
                status == axum::http::StatusCode::TOO_MANY_REQUESTS
                    || status == axum::http::StatusCode::SERVICE_UNAVAILABLE
            };
            if codes.iter().any(retry) {
                response = response.header("Retry-After", retry_after_header());
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// The `Retry-After` header of every 429 and 503.
fn retry_after_header() -> utoipa::openapi::header::Header {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let schema = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(Some(schema))
        .description(Some(
            "Whole seconds to wait before repeating the request. With `rate_limited`: until the \
             caller's next request is accepted (rounded up; `details.retry_after_ms` has it in \
             milliseconds); otherwise a short pause before retrying.",
        ))
        .build()
}

/// Typical `details` of each code, for the examples.
fn example_details(code: ErrorCode) -> Value {
    let task = "0190a0c4-5e2b-7c3d-9f00-2a6b8c1d4e5f";
    match code {
        ErrorCode::InvalidRequest => json!({ "field": "epoch" }),
        ErrorCode::NotHolder => json!({ "task": task }),
        ErrorCode::NotFound => json!({ "task": task }),
        ErrorCode::TaskArchived => json!({ "task": task }),
        ErrorCode::LeaseLost => json!({ "task": task, "current_epoch": 4, "state": "waiting" }),
        ErrorCode::InvalidTransition => json!({ "task": task, "command": "cancel", "state": "done" }),
        ErrorCode::BodyTooLarge => json!({ "limit": "body_bytes_max", "max": 1_048_576 }),
        ErrorCode::IdempotencyConflict => json!({ "key": "order-1042" }),
        ErrorCode::RouteNotAllowed => json!({ "from": "triage", "to": "billing" }),
        ErrorCode::InvalidWorkflow => json!({ "errors": [{
            "line": 12, "column": 10, "field": "stages.triage.routes",
            "message": "route to unknown stage `specialist`: declare [stages.specialist] or remove the route",
        }] }),
        ErrorCode::LimitExceeded => json!({ "limit": "payload_bytes_max", "max": 262_144 }),
        ErrorCode::TooManyLeases => json!({ "limit": "leases_per_agent_max", "max": 1000 }),
        ErrorCode::RequestTimeout => json!({ "limit": "request_timeout_ms", "max": 30_000 }),
        ErrorCode::RateLimited => {
            json!({ "limit": "requests_per_second_max", "max": 1000, "burst": 2000, "retry_after_ms": 1 })
        }
        _ => json!({}),
    }
}

/// Declares a set of refusals as a type for `responses(...)` in `#[utoipa::path]`.
macro_rules! refusal_sets {
    ($($(#[$doc:meta])* $name:ident: [$($code:ident),* $(,)?];)*) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
                    refusals(&[$(ErrorCode::$code),*])
                }
            }
        )*
    };
}

// What each route can refuse. Every route that reaches the store can answer
// `unavailable`, `request_timeout` and `internal`; every route with a JSON
// body can answer `invalid_request`, `body_too_large` and `limit_exceeded`
// (`json_depth_max`). With auth on, every route but the service routes can
// answer 401 `unauthenticated` and 403 `forbidden` (a role or grant says no).
// With auth on, every route but the service routes can answer 429 `rate_limited` (with
// `Retry-After`).
refusal_sets! {
    /// `POST /v1/tasks`.
    SubmitRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, TaskArchived, BodyTooLarge, IdempotencyConflict, LimitExceeded,
        Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/tasks`.
    ListRefusals: [InvalidRequest, Unauthenticated, Forbidden, LimitExceeded, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/tasks/{id}` and its history.
    ReadRefusals: [InvalidRequest, Unauthenticated, NotFound, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/tasks/{id}/lineage`: an archived task has none.
    LineageRefusals: [InvalidRequest, Unauthenticated, NotFound, TaskArchived, Internal, Unavailable, RequestTimeout,
        RateLimited];
    /// Heartbeat, complete, release, fail and spawn.
    HolderRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotHolder, NotFound, LeaseLost, InvalidTransition, BodyTooLarge,
        IdempotencyConflict, LimitExceeded, TooManyLeases, Internal, Unavailable, RequestTimeout, RateLimited];
    /// Handoff: a holder call whose target must be an allowed route.
    HandoffRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotHolder, NotFound, LeaseLost, InvalidTransition, BodyTooLarge,
        IdempotencyConflict, RouteNotAllowed, LimitExceeded, TooManyLeases, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `POST /v1/tasks/{id}/cancel`.
    CancelRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, InvalidTransition, BodyTooLarge, IdempotencyConflict,
        LimitExceeded, Internal,
        Unavailable, RequestTimeout, RateLimited];
    /// `POST /v1/claims`.
    ClaimRefusals: [InvalidRequest, Unauthenticated, Forbidden, BodyTooLarge, IdempotencyConflict, LimitExceeded, TooManyLeases, Internal, Unavailable,
        RequestTimeout, RateLimited];
    /// `GET /v1/handoffs/{id}`.
    HandoffOutcomeRefusals: [InvalidRequest, Unauthenticated, NotFound, LimitExceeded, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `POST /v1/principals` and `POST /v1/tokens`.
    AdminRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, BodyTooLarge, LimitExceeded,
        Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/principals` and `GET /v1/tokens`.
    AdminReadRefusals: [Unauthenticated, Forbidden, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `DELETE /v1/principals/{name}` and `DELETE /v1/tokens/{id}`.
    AdminRevokeRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, InvalidTransition, Internal,
        Unavailable, RequestTimeout, RateLimited];
    /// `POST /v1/workflows`.
    ApplyWorkflowRefusals: [InvalidRequest, Unauthenticated, Forbidden, BodyTooLarge, IdempotencyConflict,
        InvalidWorkflow, LimitExceeded, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/workflows`.
    ListWorkflowRefusals: [Unauthenticated, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/workflows/{name}`.
    ShowWorkflowRefusals: [InvalidRequest, Unauthenticated, NotFound, Internal, Unavailable, RequestTimeout,
        RateLimited];
    /// `GET /v1/inbox`.
    InboxListRefusals: [InvalidRequest, Unauthenticated, Forbidden, LimitExceeded, Internal, Unavailable,
        RequestTimeout, RateLimited];
    /// `POST /v1/inbox/{id}/claim`.
    InboxClaimRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, InvalidTransition, BodyTooLarge,
        IdempotencyConflict, LimitExceeded, TooManyLeases, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `POST /v1/inbox/{id}/resolve`.
    InboxResolveRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotHolder, NotFound, LeaseLost,
        InvalidTransition, BodyTooLarge, IdempotencyConflict, RouteNotAllowed, LimitExceeded, Internal,
        Unavailable, RequestTimeout, RateLimited];
    /// `GET /v1/stuck`.
    StuckRefusals: [InvalidRequest, Unauthenticated, Forbidden, LimitExceeded, Internal, Unavailable,
        RequestTimeout, RateLimited];
    /// `GET /v1/stats` and `GET /v1/alerts`.
    StatsRefusals: [InvalidRequest, Unauthenticated, Forbidden, LimitExceeded, Internal, Unavailable,
        RequestTimeout, RateLimited];
    /// `POST /v1/alerts/{id}/ack`.
    AckAlertRefusals: [InvalidRequest, Unauthenticated, Forbidden, NotFound, Internal, Unavailable,
        RequestTimeout, RateLimited];
    /// `GET /metrics`.
    MetricsRefusals: [Unauthenticated, Forbidden, Internal, RequestTimeout, RateLimited];
    /// `GET /v1/whoami`.
    WhoamiRefusals: [Unauthenticated, Internal, Unavailable, RequestTimeout, RateLimited];
    /// `GET /readyz`.
    ReadyRefusals: [Unavailable];
}
