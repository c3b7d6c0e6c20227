//! MCP at `/mcp`: Baton's calls as Model Context Protocol tools and
//! resources for language-model agents, over streamable HTTP (rmcp, the
//! protocol's official Rust SDK). `baton mcp` relays a stdio session here,
//! so both transports share this one tool layer.
//!
//! Every tool is a call of the `/v1` API (`tools::TOOLS` says which),
//! made in process through the API's own router with the session's
//! `Authorization` header: the same authentication, role checks, fencing,
//! limits and rate limit as any HTTP client, and no second code path to keep
//! in step. `/mcp` itself sits behind the same bearer-token middleware as
//! `/v1`, so an unauthenticated client gets 401 before any MCP message.
//!
//! - `tools/list` shows only the tools the token's role may call (all of
//!   them with auth off).
//! - Arguments are checked against the tool's schema first: a bad one is a
//!   JSON-RPC invalid-params error naming the field, as is an API
//!   `invalid_request` refusal that names one.
//! - Every other refusal is a tool error (`isError`) whose text is the
//!   refusal's JSON (`code`, `message`, `details`, `next`: what to do).
//! - With auth off, the `Baton-Agent` header names the session's agent
//!   (`baton mcp --agent NAME` sends it); a tool's `agent` argument wins.
//! - A task's history and lineage are also resources:
//!   `baton://tasks/{id}/history` and `baton://tasks/{id}/lineage`.
//!
//! The server is stateless (no MCP sessions) and answers with JSON, so any
//! replica can serve any request.

pub mod tools;

use crate::http::principal::Caller;
use axum::Router;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, header};
use baton_core::auth::Role;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use std::sync::Arc;
use tools::{ApiCall, Method, ToolSpec};
use tower::ServiceExt as _;

/// The MCP endpoint's path.
pub const MCP_PATH: &str = "/mcp";

/// The header that names the session's agent while auth is off.
pub const AGENT_HEADER: &str = "baton-agent";

/// Bytes of an API answer the tool layer reads (answers are bounded by the
/// API's own limits; this only guards the in-process read).
const ANSWER_BYTES_MAX: usize = 64 << 20;

/// What the model is told about the server as a whole.
const INSTRUCTIONS: &str = "Baton coordinates work between agents: tasks live in stages, and exactly one \
    agent holds a task at a time, under a lease with an epoch. To work: claim from your stages, heartbeat \
    while you work, then handoff (to the next stage), complete, fail (retry later), escalate (needs a \
    person) or release (give it back); pass the task id and epoch you got from claim to every call. \
    A refusal comes back as a tool error whose JSON has the code, the message and what to do next.";

/// The MCP service for `/mcp`, calling the API through `api` (the router
/// without `/mcp`). `body_bytes_max` bounds a request body, as on `/v1`.
pub fn service(
    api: Router,
    body_bytes_max: usize,
    auth_on: bool,
) -> StreamableHttpService<BatonMcp, NeverSessionManager> {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(body_bytes_max);
    if auth_on {
        // The Host check guards a token-less loopback server against DNS
        // rebinding; with auth on every call needs a bearer token a browser
        // page cannot supply, and the server may be reached by any name.
        config = config.disable_allowed_hosts();
    }
    let handler = BatonMcp { api };
    StreamableHttpService::new(move || Ok(handler.clone()), Arc::new(NeverSessionManager::default()), config)
}

/// The MCP server: the tool table over the in-process API.
#[derive(Clone)]
pub struct BatonMcp {
    api: Router,
}

/// Who is calling, from the HTTP request that carried the MCP message.
struct Session<'a> {
    /// The token's role; `None` with auth off.
    role: Option<Role>,
    authorization: Option<&'a HeaderValue>,
    /// With auth off, the `Baton-Agent` header.
    agent: Option<&'a str>,
}

impl<'a> Session<'a> {
    fn of(context: &'a RequestContext<RoleServer>) -> Session<'a> {
        let parts = context.extensions.get::<Parts>();
        Session {
            role: parts.and_then(|p| p.extensions.get::<Caller>()).map(|Caller(principal, _)| principal.role),
            authorization: parts.and_then(|p| p.headers.get(header::AUTHORIZATION)),
            agent: parts.and_then(|p| p.headers.get(AGENT_HEADER)).and_then(|v| v.to_str().ok()),
        }
    }
}

/// An API answer: the HTTP status and the JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl BatonMcp {
    /// Makes `call` through the API router with the session's credentials.
    async fn call(&self, session: &Session<'_>, call: &ApiCall) -> Result<Answer, ErrorData> {
        let method = match call.method {
            Method::Get => axum::http::Method::GET,
            Method::Post => axum::http::Method::POST,
        };
        let mut request = Request::builder().method(method).uri(&call.path);
        if let Some(authorization) = session.authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if let Some(key) = &call.idempotency_key {
            request = request.header(crate::http::idempotency::HEADER, key);
        }
        let body = match &call.body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let request = request.body(body).map_err(|e| {
            ErrorData::invalid_params(format!("the arguments do not make a valid request: {e}"), None)
        })?;
        let response = self.api.clone().oneshot(request).await.unwrap_or_else(|never| match never {});
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| ErrorData::internal_error(format!("reading the API's answer: {e}"), None))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Answer { status, body })
    }

    /// A tool's answer: the API's JSON on success; a refusal as JSON-RPC
    /// invalid params (a named field) or a tool error.
    fn answer(tool: &ToolSpec, answer: Answer) -> Result<CallToolResult, ErrorData> {
        if (200..300).contains(&answer.status) {
            let text = serde_json::to_string_pretty(&answer.body).unwrap_or_default();
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            if answer.body.is_object() {
                result.structured_content = Some(answer.body);
            }
            return Ok(result);
        }
        let code = answer.body.get("code").and_then(Value::as_str).unwrap_or("internal").to_owned();
        let message = answer.body.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
        let details = answer.body.get("details").cloned().unwrap_or(Value::Null);
        if code == "invalid_request"
            && let Some(field) = details.get("field").and_then(Value::as_str)
        {
            return Err(ErrorData::invalid_params(
                format!("{}: {message}", tool.name),
                Some(json!({ "field": field, "code": code })),
            ));
        }
        let refusal = json!({
            "code": code,
            "message": message,
            "details": details,
            "status": answer.status,
            "next": tools::next_step(&code),
        });
        let text = serde_json::to_string_pretty(&refusal).unwrap_or_default();
        let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
        result.structured_content = Some(refusal);
        Ok(result)
    }
}

/// The MCP description of `spec`.
fn tool(spec: &ToolSpec) -> Tool {
    let mut annotations = ToolAnnotations::new().read_only(spec.read_only);
    annotations.title = Some(spec.title.to_owned());
    if !spec.read_only {
        annotations = annotations.destructive(false);
    }
    let mut description = spec.description.to_owned();
    if spec.params.iter().any(|p| p.name == "epoch") {
        description.push_str(tools::HOLDER_REFUSALS);
    }
    Tool::new(spec.name, description, Arc::new(spec.input_schema()))
        .with_title(spec.title)
        .with_annotations(annotations)
}

/// The resource templates: a task's history and lineage.
const RESOURCES: &[(&str, &str, &str)] = &[
    (
        "history",
        "A task's history",
        "Every change of the task, in order, hash-chained, with notes and findings.",
    ),
    (
        "lineage",
        "A task's lineage",
        "The task's path through stages and agents, with times, parent and children.",
    ),
];

impl ServerHandler for BatonMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("baton", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let role = Session::of(&context).role;
        Ok(ListToolsResult::with_all_items(
            tools::TOOLS.iter().filter(|t| t.roles.admit(role)).map(tool).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(name).map(tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let session = Session::of(&context);
        let spec = tools::find(&request.name).filter(|t| t.roles.admit(session.role)).ok_or_else(|| {
            ErrorData::invalid_params(
                format!("no tool named \"{}\"; see tools/list", request.name),
                Some(json!({ "field": "name" })),
            )
        })?;
        let arguments = request.arguments.unwrap_or_default();
        spec.check(&arguments).map_err(|(field, problem)| {
            ErrorData::invalid_params(format!("{}: {problem}", spec.name), Some(json!({ "field": field })))
        })?;
        let call = spec.request(&arguments, session.agent);
        let answer = self.call(&session, &call).await?;
        Self::answer(spec, answer).map(CallToolResponse::from)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            RESOURCES
                .iter()
                .map(|(kind, title, description)| {
                    ResourceTemplate::new(format!("baton://tasks/{{id}}/{kind}"), format!("task-{kind}"))
                        .with_title(*title)
                        .with_description(*description)
                        .with_mime_type("application/json")
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let session = Session::of(&context);
        let uri = request.uri;
        let bad = || {
            ErrorData::invalid_params(
                format!(
                    "unknown resource {uri}; use baton://tasks/{{id}}/history or baton://tasks/{{id}}/lineage"
                ),
                Some(json!({ "field": "uri" })),
            )
        };
        let rest = uri.strip_prefix("baton://tasks/").ok_or_else(bad)?;
        let (id, kind) = rest.split_once('/').ok_or_else(bad)?;
        if !RESOURCES.iter().any(|(k, _, _)| *k == kind) || uuid::Uuid::parse_str(id).is_err() {
            return Err(bad());
        }
        let call = ApiCall {
            method: Method::Get,
            path: format!("/v1/tasks/{id}/{kind}"),
            body: None,
            idempotency_key: None,
        };
        let answer = self.call(&session, &call).await?;
        if !(200..300).contains(&answer.status) {
            let message = answer.body.get("message").and_then(Value::as_str).unwrap_or("refused").to_owned();
            let data = Some(json!({ "code": answer.body.get("code"), "uri": uri }));
            return Err(if answer.status == 404 {
                ErrorData::resource_not_found(message, data)
            } else {
                ErrorData::invalid_request(message, data)
            });
        }
        let text = serde_json::to_string_pretty(&answer.body).unwrap_or_default();
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type("application/json"),
        ])
        .into())
    }
}
