//! The A2A bridge: every workflow whose file has an `[a2a]` section is also an
//! A2A agent at `/a2a/{workflow}`, speaking A2A 1.0's JSON-RPC binding
//! (`SendMessage`, `GetTask`, `CancelTask`, the push config methods, with `TASK_STATE_*` values and
//! camelCase field names, as the `a2a-sdk` 1.x client sends and reads them),
//! with its agent card at `/a2a/{workflow}/.well-known/agent-card.json`.
//!
//! The bridge owns no state but push configs: each call becomes one or
//! more calls to the server's own `/v1` router, in process, carrying the
//! caller's `Authorization` header, so authentication, roles, limits and
//! checks are exactly the API's (a submitter reaches only its own tasks). A
//! message becomes a task submitted to the workflow (its text and data parts
//! as the payload, its message id as the idempotency key in the sender's own
//! space, so a repeated message does not make a second task and two senders
//! never share one); a message naming a task that waits for input is added
//! to its history (`POST /v1/tasks/{id}/comments`); a task is read back with
//! its history and shown as an A2A task by `mapping`. Push notification
//! configs are stored (after the task is read through `/v1`) and delivered
//! by `crate::push`. The mapping is described in docs/a2a.md.
//!
//! `SendStreamingMessage` and `SubscribeToTask` answer server-sent events
//! (`stream`): the task snapshot, then each newer update with its event
//! version as the SSE `id`, so `Last-Event-ID` resumes after it.
//!
//! Every refusal is a JSON-RPC error in a 200 answer (the A2A codes for a
//! missing task, a task that cannot be cancelled, push and unsupported
//! operations; JSON-RPC's own for bad JSON, requests and params), except a
//! missing or bad token, which keeps the API's 401.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_api as api;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Bytes of one JSON-RPC request body.
pub const A2A_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of an answer from `/v1` the bridge reads (a task with its history).
const INNER_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The A2A protocol version the bridge speaks.
pub const PROTOCOL_VERSION: &str = "1.0";

/// JSON-RPC's and A2A's error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const TASK_NOT_FOUND: i64 = -32001;
    pub const TASK_NOT_CANCELABLE: i64 = -32002;
    pub const PUSH_NOTIFICATION_NOT_SUPPORTED: i64 = -32003;
    pub const UNSUPPORTED_OPERATION: i64 = -32004;
}

/// What the bridge needs: the `/v1` router it calls, and the server's state,
/// for push notification configs only (`push_config`): the one thing the
/// bridge keeps, always after reading the task through `/v1`.
#[derive(Clone)]
struct Bridge {
    api: Router,
    state: crate::state::AppState,
}

/// The `/a2a` routes over `api`, the server's fully layered `/v1` router.
pub fn routes(api: Router, state: crate::state::AppState) -> Router {
    let bridge = Bridge { api, state };
    Router::new()
        .route("/a2a/{workflow}/.well-known/agent-card.json", get(card))
        .route("/a2a/{workflow}", post(rpc))
        .layer(DefaultBodyLimit::max(A2A_BODY_BYTES_MAX))
        .with_state(bridge)
}

/// A JSON-RPC error.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Why a call did not produce a result: a JSON-RPC error, or an HTTP answer
/// passed through as it is (a 401 from authentication).
enum Failure {
    Rpc(RpcError),
    Http(Response),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Self::Rpc(e)
    }
}

/// One call to the `/v1` router: its status and its JSON body.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Bridge {
    async fn call(
        &self,
        auth: &HeaderMap,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<Answer, Failure> {
        self.call_keyed(auth, method, uri, body, None).await
    }

    /// `call` with an `Idempotency-Key` header when `key` is given.
    async fn call_keyed(
        &self,
        auth: &HeaderMap,
        method: Method,
        uri: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = auth.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(key) = key {
            request = request.header(crate::http::idempotency::HEADER, key);
        }
        let request = match body {
            Some(body) => {
                request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string()))
            }
            None => request.body(Body::empty()),
        }
        .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("could not build the API call: {e}")))?;
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(Failure::Http(response));
        }
        let bytes = axum::body::to_bytes(response.into_body(), INNER_BODY_BYTES_MAX).await.map_err(|e| {
            RpcError::new(code::INTERNAL_ERROR, format!("could not read the API's answer: {e}"))
        })?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// A successful answer's body, or the refusal as a JSON-RPC error.
    async fn ok(
        &self,
        auth: &HeaderMap,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let answer = self.call(auth, method, uri, body).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(refusal(&answer).into())
    }

    /// The name whose key space the caller's message ids live in: the
    /// token's principal, or `anonymous` with authentication off.
    async fn principal(&self, auth: &HeaderMap) -> Result<String, Failure> {
        let who: api::Whoami = serde_json::from_value(self.ok(auth, Method::GET, "/v1/whoami", None).await?)
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("unreadable whoami: {e}")))?;
        Ok(who.principal.unwrap_or_else(|| ANONYMOUS.to_owned()))
    }

    /// The workflow's stored latest version, if it opted in to A2A.
    async fn workflow(&self, auth: &HeaderMap, name: &str) -> Result<api::WorkflowView, Failure> {
        let uri = format!("/v1/workflows/{}", encode(name));
        let answer = self.call(auth, Method::GET, &uri, None).await?;
        let not_agent = || {
            RpcError::new(
                code::INVALID_REQUEST,
                format!("no workflow {name:?} with an [a2a] section: no A2A agent at this URL"),
            )
        };
        if answer.status == StatusCode::NOT_FOUND {
            return Err(not_agent().into());
        }
        if !answer.status.is_success() {
            return Err(refusal(&answer).into());
        }
        let view: api::WorkflowView = serde_json::from_value(answer.body)
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("unreadable workflow: {e}")))?;
        if view.a2a.is_none() {
            return Err(not_agent().into());
        }
        Ok(view)
    }

    /// A task of this workflow with its history, as an A2A task.
    async fn task(&self, auth: &HeaderMap, wf: &api::WorkflowView, id: &str) -> Result<Value, Failure> {
        let id = task_id(id)?;
        let task = self.ok(auth, Method::GET, &format!("/v1/tasks/{id}"), None).await?;
        let task: api::Task = serde_json::from_value(task)
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("unreadable task: {e}")))?;
        let Some(version) = task.workflow.as_ref().filter(|w| w.name == wf.name).map(|w| w.version) else {
            return Err(RpcError::new(code::TASK_NOT_FOUND, format!("no task {id} in this agent")).into());
        };
        // Stages as the task's own version declares them; `[a2a]` as the latest says.
        let mut shape = wf.clone();
        if version != wf.version {
            let uri = format!("/v1/workflows/{}?version={version}", encode(&wf.name));
            let old: api::WorkflowView =
                serde_json::from_value(self.ok(auth, Method::GET, &uri, None).await?)
                    .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("unreadable workflow: {e}")))?;
            shape.entry = old.entry;
            shape.stages = old.stages;
        }
        let wf = &shape;
        let history = self.ok(auth, Method::GET, &format!("/v1/tasks/{id}/history"), None).await?;
        let history: api::History = serde_json::from_value(history)
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("unreadable history: {e}")))?;
        Ok(mapping::task(wf, &task, &history.events))
    }
}

/// The principal name of callers with authentication off (the API records
/// their submits as `principal:anonymous`).
const ANONYMOUS: &str = "anonymous";

/// Where the idempotency keys of A2A messages start: `a2a/{principal}/`.
pub const MESSAGE_KEY_PREFIX: &str = "a2a/";

/// `a2a/{principal}/`, the principal percent-encoded (names may hold `/`;
/// encoded they hold none, so no principal's space contains another's).
fn key_space(principal: &str) -> String {
    format!("{MESSAGE_KEY_PREFIX}{}/", encode(principal))
}

/// The task idempotency key of message `message_id` from `principal`: each
/// principal's message ids are a space of their own, so two clients that
/// happen to pick the same id get two tasks, and one client repeating a
/// message gets its first task.
pub fn message_key(principal: &str, message_id: &str) -> String {
    format!("{}{message_id}", key_space(principal))
}

/// The message id inside a task's idempotency key, given the task's
/// submitter as the API shows it (`principal:NAME`); a key from before keys
/// were scoped (or from `/v1`) is shown as it is.
pub fn message_id_of<'a>(key: &'a str, submitter: &str) -> &'a str {
    let name = submitter.strip_prefix("principal:").unwrap_or(submitter);
    key.strip_prefix(key_space(name).as_str()).unwrap_or(key)
}

/// Refuses a `/v1` submit whose idempotency key is in another principal's
/// A2A message space (`a2a/{other}/...`): such a key would answer that
/// principal's task, or tell that it exists. `principal` is `None` with
/// authentication off.
pub fn check_key_space(principal: Option<&str>, key: &str) -> Result<(), crate::http::error::ApiError> {
    let own = key_space(principal.unwrap_or(ANONYMOUS));
    if !key.starts_with(MESSAGE_KEY_PREFIX) || key.starts_with(own.as_str()) {
        return Ok(());
    }
    Err(crate::http::error::ApiError::invalid(
        "idempotency_key",
        format!(
            "keys starting {MESSAGE_KEY_PREFIX:?} are A2A message ids, one space per principal: yours start {own:?}"
        ),
    ))
}

/// An API refusal as a JSON-RPC error: a missing task is A2A's task-not-found,
/// bad input is invalid params, anything else keeps the API's code and message.
fn refusal(answer: &Answer) -> RpcError {
    let api_code = answer.body.get("code").and_then(Value::as_str).unwrap_or("");
    let message = answer.body.get("message").and_then(Value::as_str).unwrap_or("the API refused the call");
    let message = format!("{api_code}: {message}");
    match answer.status {
        StatusCode::NOT_FOUND => RpcError::new(code::TASK_NOT_FOUND, message),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => {
            RpcError::new(code::INVALID_PARAMS, message)
        }
        StatusCode::FORBIDDEN => RpcError::new(code::INVALID_REQUEST, message),
        _ => RpcError::new(code::INTERNAL_ERROR, message),
    }
}

fn task_id(id: &str) -> Result<uuid::Uuid, RpcError> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        RpcError::new(code::TASK_NOT_FOUND, format!("no task {id:?}: task ids are UUIDs this agent gave"))
    })
}

/// Percent-encodes a path segment (workflow names are plain, but never trusted).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /a2a/{workflow}/.well-known/agent-card.json`: the workflow as an agent.
async fn card(State(bridge): State<Bridge>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    // The card is public; read the workflow as the server itself would show it
    // to the caller (with auth on, the caller's token decides).
    match bridge.workflow(&headers, &name).await {
        Ok(wf) => axum::Json(mapping::card(&wf, &base_url(&headers))).into_response(),
        Err(Failure::Http(response)) => response,
        Err(Failure::Rpc(e)) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "code": "not_found", "message": e.message, "details": {} })),
        )
            .into_response(),
    }
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `POST /a2a/{workflow}`: one JSON-RPC request.
async fn rpc(
    State(bridge): State<Bridge>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return reply(
                Value::Null,
                Err(RpcError::new(code::PARSE_ERROR, format!("the body is not JSON: {e}"))),
            );
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let valid_id = matches!(id, Value::String(_) | Value::Number(_) | Value::Null);
    let method = request.get("method").and_then(Value::as_str);
    let (Some(method), true, Some("2.0")) =
        (method, valid_id, request.get("jsonrpc").and_then(Value::as_str))
    else {
        return reply(
            if valid_id { id } else { Value::Null },
            Err(RpcError::new(
                code::INVALID_REQUEST,
                "a JSON-RPC 2.0 request object: {\"jsonrpc\": \"2.0\", \"id\", \"method\", \"params\"}",
            )),
        );
    };
    let params = request.get("params").cloned().unwrap_or(json!({}));
    if !params.is_object() {
        return reply(id, Err(RpcError::new(code::INVALID_PARAMS, "params must be an object")));
    }
    if method == "SendStreamingMessage" || method == "SubscribeToTask" {
        return match bridge.open_stream(&headers, &name, method, &params).await {
            Ok(follow) => stream::respond(bridge, headers, id, follow),
            Err(Failure::Rpc(e)) => reply(id, Err(e)),
            Err(Failure::Http(response)) => response,
        };
    }
    match bridge.dispatch(&headers, &name, method, &params).await {
        Ok(result) => reply(id, Ok(result)),
        Err(Failure::Rpc(e)) => reply(id, Err(e)),
        Err(Failure::Http(response)) => response,
    }
}

fn reply(id: Value, outcome: Result<Value, RpcError>) -> Response {
    let body = match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } }),
    };
    axum::Json(body).into_response()
}

impl Bridge {
    async fn dispatch(
        &self,
        auth: &HeaderMap,
        name: &str,
        method: &str,
        params: &Value,
    ) -> Result<Value, Failure> {
        match method {
            "SendMessage" | "GetTask" | "CancelTask" => {}
            "CreateTaskPushNotificationConfig"
            | "GetTaskPushNotificationConfig"
            | "ListTaskPushNotificationConfigs"
            | "DeleteTaskPushNotificationConfig" => {}
            "ListTasks" | "GetExtendedAgentCard" => {
                return Err(RpcError::new(
                    code::UNSUPPORTED_OPERATION,
                    format!("{method} is not offered by this agent"),
                )
                .into());
            }
            other => return Err(RpcError::new(code::METHOD_NOT_FOUND, format!("no method {other:?}")).into()),
        }
        let wf = self.workflow(auth, name).await?;
        match method {
            "SendMessage" => self.send(auth, &wf, params).await,
            "GetTask" => {
                let id = string_param(params, "id")?;
                let mut task = self.task(auth, &wf, &id).await?;
                if let Some(n) = params.get("historyLength") {
                    let n =
                        n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok())).ok_or_else(|| {
                            RpcError::new(code::INVALID_PARAMS, "historyLength must be a whole number")
                        })?;
                    mapping::keep_last(&mut task, n as usize);
                }
                Ok(task)
            }
            "CancelTask" => {
                let id = string_param(params, "id")?;
                let current = self.task(auth, &wf, &id).await?;
                if mapping::is_terminal(&current) {
                    return Err(RpcError::new(
                        code::TASK_NOT_CANCELABLE,
                        format!("task {id} has already finished"),
                    )
                    .into());
                }
                let uuid = task_id(&id)?;
                let answer = self
                    .call(
                        auth,
                        Method::POST,
                        &format!("/v1/tasks/{uuid}/cancel"),
                        Some(json!({ "reason": "cancelled by the A2A client" })),
                    )
                    .await?;
                if answer.status == StatusCode::CONFLICT {
                    return Err(RpcError::new(code::TASK_NOT_CANCELABLE, refusal(&answer).message).into());
                }
                if !answer.status.is_success() {
                    return Err(refusal(&answer).into());
                }
                self.task(auth, &wf, &id).await
            }
            "CreateTaskPushNotificationConfig" => self.create_push(auth, &wf, params).await,
            "GetTaskPushNotificationConfig" => {
                let (task, configs) = self.push_configs(auth, &wf, params).await?;
                let id = string_param(params, "id")?;
                let config = configs.iter().find(|c| c.id == id).ok_or_else(|| {
                    RpcError::new(
                        code::INVALID_PARAMS,
                        format!("no push notification config {id:?} on task {task}"),
                    )
                })?;
                Ok(push_view(config))
            }
            "ListTaskPushNotificationConfigs" => {
                let (_, configs) = self.push_configs(auth, &wf, params).await?;
                Ok(
                    json!({ "configs": configs.iter().map(push_view).collect::<Vec<_>>(), "nextPageToken": "" }),
                )
            }
            "DeleteTaskPushNotificationConfig" => {
                let (task, _) = self.push_configs(auth, &wf, params).await?;
                let id = string_param(params, "id")?;
                let op = baton_core::Op::DeletePushConfig { task, id };
                self.state.store().execute(op, None).await.map_err(store_failure)?;
                Ok(json!({}))
            }
            _ => unreachable!("methods are checked above"),
        }
    }

    /// `SendMessage`: a message without a task id submits a task; one naming
    /// a task of this agent that waits for input is added to its history
    /// (`POST /v1/tasks/{id}/comments`; it resolves nothing), and one naming a
    /// task in any other state is refused.
    async fn send(&self, auth: &HeaderMap, wf: &api::WorkflowView, params: &Value) -> Result<Value, Failure> {
        let message = params
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| RpcError::new(code::INVALID_PARAMS, "params.message: send the message object"))?;
        let message_id = string_param(message, "messageId")?;
        if let Some(id) = message.get("taskId").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            return self.reply_to(auth, wf, id, &message_id, message).await;
        }
        let payload = mapping::payload(message)?;
        let mut labels = serde_json::Map::new();
        if let Some(context) = message.get("contextId").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            labels.insert(mapping::CONTEXT_LABEL.into(), json!(context));
        }
        let principal = self.principal(auth).await?;
        let submit = json!({
            "workflow": wf.name,
            "payload": payload,
            "idempotency_key": message_key(&principal, &message_id),
            "labels": labels,
        });
        let created = self.ok(auth, Method::POST, "/v1/tasks", Some(submit)).await?;
        let id = created.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let task = self.task(auth, wf, &id).await?;
        Ok(json!({ "task": task }))
    }
}

/// A push config as A2A shows it (its token too: the client chose it).
fn push_view(config: &baton_core::PushConfig) -> Value {
    json!({ "id": config.id, "taskId": config.task.to_string(), "url": config.url, "token": config.token })
}

/// A store failure as a JSON-RPC error.
fn store_failure(e: baton_core::Error) -> RpcError {
    RpcError::new(code::INTERNAL_ERROR, format!("the store refused: {e}"))
}

/// A push config field: flat in the params (as the `a2a-sdk` client sends
/// it) or inside `pushNotificationConfig`.
fn push_param<'a>(params: &'a Value, field: &str) -> Option<&'a str> {
    params
        .pointer(&format!("/pushNotificationConfig/{field}"))
        .or_else(|| params.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Bridge {
    /// The task a push config call names (`taskId`), read through `/v1`
    /// with the caller's token (so only a task the caller may read), and
    /// its push configs.
    async fn push_configs(
        &self,
        auth: &HeaderMap,
        wf: &api::WorkflowView,
        params: &Value,
    ) -> Result<(baton_core::TaskId, Vec<baton_core::PushConfig>), Failure> {
        let id = push_param(params, "taskId")
            .ok_or_else(|| RpcError::new(code::INVALID_PARAMS, "taskId: name the task"))?;
        self.task(auth, wf, id).await?;
        let task = baton_core::TaskId(task_id(id)?);
        let configs = self
            .state
            .store()
            .push_configs(Some(task), crate::push::PUSH_CONFIGS_PER_TASK_MAX + 1)
            .await
            .map_err(store_failure)?;
        Ok((task, configs))
    }

    /// `CreateTaskPushNotificationConfig`: a URL under the workflow's
    /// `push_url_prefixes` and a token of at least `SECRET_BYTES_MIN` bytes
    /// (the notifications' signing key) become a push config of a task the
    /// caller may read; its updates after now are delivered by `crate::push`.
    async fn create_push(
        &self,
        auth: &HeaderMap,
        wf: &api::WorkflowView,
        params: &Value,
    ) -> Result<Value, Failure> {
        let url = push_param(params, "url").unwrap_or("");
        let allowed =
            wf.a2a.as_ref().is_some_and(|a| a.push_url_prefixes.iter().any(|p| url.starts_with(p.as_str())));
        if !allowed {
            return Err(RpcError::new(code::PUSH_NOTIFICATION_NOT_SUPPORTED, format!("push notifications to {url:?} are not supported: the URL is under none of this workflow's [a2a] push_url_prefixes")).into());
        }
        let (task, configs) = self.push_configs(auth, wf, params).await?;
        let token = push_param(params, "token").unwrap_or("");
        let id = push_param(params, "id").map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if id.len() > crate::webhooks::WEBHOOK_NAME_BYTES_MAX {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                format!("id: at most {} bytes", crate::webhooks::WEBHOOK_NAME_BYTES_MAX),
            )
            .into());
        }
        if configs.iter().filter(|c| c.id != id).count() >= crate::push::PUSH_CONFIGS_PER_TASK_MAX {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                format!(
                    "task {task} has {} push configs (PUSH_CONFIGS_PER_TASK_MAX): delete one first",
                    crate::push::PUSH_CONFIGS_PER_TASK_MAX
                ),
            )
            .into());
        }
        let after_version = match self.state.store().get(task).await.map_err(store_failure)? {
            Some(view) => view.task.revision,
            None => return Err(RpcError::new(code::TASK_NOT_FOUND, format!("no task {task}")).into()),
        };
        let config = baton_core::PushConfig {
            task,
            id,
            url: url.to_owned(),
            token: token.to_owned(),
            by: format!("principal:{}", self.principal(auth).await?),
            created_at: self.state.clock().now(),
            after_version,
        };
        // The URL and token as a webhook would take them (http, a host, no
        // credentials; a long enough secret).
        crate::push::hook(&config).map_err(|e| {
            RpcError::new(
                code::INVALID_PARAMS,
                format!("{e} (the token signs the notifications: HMAC-SHA256 as webhooks)"),
            )
        })?;
        let view = push_view(&config);
        self.state
            .store()
            .execute(baton_core::Op::PutPushConfig(config), None)
            .await
            .map_err(store_failure)?;
        Ok(view)
    }

    /// A message naming task `id`: added to the history of a task waiting for
    /// input, under the caller's name (its text as the note, its data parts
    /// as findings); the message id is the call's `Idempotency-Key`, so a
    /// repeat adds nothing. Answers the task after it.
    async fn reply_to(
        &self,
        auth: &HeaderMap,
        wf: &api::WorkflowView,
        id: &str,
        message_id: &str,
        message: &Value,
    ) -> Result<Value, Failure> {
        let current = self.task(auth, wf, id).await?;
        let state = current.pointer("/status/state").and_then(Value::as_str).unwrap_or("");
        if state != "TASK_STATE_INPUT_REQUIRED" {
            return Err(RpcError::new(
                code::UNSUPPORTED_OPERATION,
                format!(
                    "task {id} is {state}: only a task waiting for input (TASK_STATE_INPUT_REQUIRED) takes a \
                     message; follow it with GetTask or SubscribeToTask, or send a message without taskId \
                     for new work"
                ),
            )
            .into());
        }
        let payload = mapping::payload(message)?;
        let comment = json!({
            "note": payload.get("text").and_then(Value::as_str).unwrap_or(""),
            "findings": payload.get("data"),
        });
        let key = format!("a2a-message-{}", baton_core::Hash::of(message_id.as_bytes()).to_hex());
        let uuid = task_id(id)?;
        let answer = self
            .call_keyed(auth, Method::POST, &format!("/v1/tasks/{uuid}/comments"), Some(comment), Some(&key))
            .await?;
        if !answer.status.is_success() {
            return Err(refusal(&answer).into());
        }
        let task = self.task(auth, wf, id).await?;
        Ok(json!({ "task": task }))
    }

    /// Checks a streaming call and does what comes before the stream: a
    /// `SendStreamingMessage` submits its task; both read the task once.
    async fn open_stream(
        &self,
        auth: &HeaderMap,
        name: &str,
        method: &str,
        params: &Value,
    ) -> Result<stream::Follow, Failure> {
        let wf = self.workflow(auth, name).await?;
        let task_id = if method == "SendStreamingMessage" {
            let sent = self.send(auth, &wf, params).await?;
            sent.pointer("/task/id").and_then(Value::as_str).unwrap_or_default().to_owned()
        } else {
            string_param(params, "id")?
        };
        // The task must exist and be this agent's before the stream opens.
        self.task(auth, &wf, &task_id).await?;
        Ok(stream::Follow { wf, task: task_id, after: last_event_id(auth), polls: 0, done: false })
    }
}

/// `Last-Event-ID`: the version the client has seen, if it sent one.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Server-sent events for `SendStreamingMessage` and `SubscribeToTask`: the
/// task snapshot (its history carries every update so far), then each newer
/// update as a status-update event whose SSE `id` is its event version, read
/// by polling the task every `POLL_MS`, until the task finishes or
/// `POLLS_MAX` polls have passed (the client subscribes again with
/// `Last-Event-ID` to go on). With `Last-Event-ID` the snapshot is left out
/// and updates after that version follow.
pub mod stream {
    use super::{Bridge, Failure, HeaderMap, mapping};
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::{IntoResponse, Response};
    use baton_api as api;
    use serde_json::{Value, json};
    use std::convert::Infallible;
    use std::time::Duration;

    /// Milliseconds between two reads of a followed task.
    pub const POLL_MS: u64 = 250;
    /// Reads of one stream before it ends (10 minutes at `POLL_MS`).
    pub const POLLS_MAX: u32 = 2_400;

    /// A stream's position.
    pub(super) struct Follow {
        pub(super) wf: api::WorkflowView,
        pub(super) task: String,
        /// The newest version sent; `None`: the snapshot is still to send.
        pub(super) after: Option<u64>,
        pub(super) polls: u32,
        pub(super) done: bool,
    }

    pub(super) fn respond(bridge: Bridge, auth: HeaderMap, id: Value, follow: Follow) -> Response {
        let events = futures_util::stream::unfold(
            (bridge, auth, id, follow, Vec::<Event>::new()),
            |(bridge, auth, id, mut follow, mut queue)| async move {
                loop {
                    if !queue.is_empty() {
                        let event = queue.remove(0);
                        return Some((Ok::<_, Infallible>(event), (bridge, auth, id, follow, queue)));
                    }
                    if follow.done || follow.polls >= POLLS_MAX {
                        return None;
                    }
                    if follow.after.is_some() {
                        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                    }
                    follow.polls += 1;
                    queue = next(&bridge, &auth, &id, &mut follow).await;
                }
            },
        );
        Sse::new(events).keep_alive(KeepAlive::default()).into_response()
    }

    fn event(id: &Value, version: u64, result: Value) -> Event {
        let body = json!({ "jsonrpc": "2.0", "id": id, "result": result });
        Event::default().id(version.to_string()).data(body.to_string())
    }

    fn version(message: &Value) -> Option<u64> {
        message.pointer("/metadata/version").and_then(Value::as_u64)
    }

    /// One read of the task: the events to send now.
    async fn next(bridge: &Bridge, auth: &HeaderMap, id: &Value, follow: &mut Follow) -> Vec<Event> {
        let task = match bridge.task(auth, &follow.wf, &follow.task).await {
            Ok(task) => task,
            Err(failure) => {
                follow.done = true;
                let message = match failure {
                    Failure::Rpc(e) => json!({ "code": e.code, "message": e.message }),
                    Failure::Http(_) => {
                        json!({ "code": super::code::INVALID_REQUEST, "message": "the token is no longer accepted" })
                    }
                };
                let body = json!({ "jsonrpc": "2.0", "id": id, "error": message });
                return vec![Event::default().data(body.to_string())];
            }
        };
        let history = task["history"].as_array().cloned().unwrap_or_default();
        let newest = history.iter().filter_map(version).max().unwrap_or(0);
        follow.done = mapping::is_terminal(&task);
        let Some(after) = follow.after else {
            follow.after = Some(newest);
            return vec![event(id, newest, json!({ "task": task }))];
        };
        let context = task["contextId"].clone();
        let state = task["status"]["state"].clone();
        let mut out = Vec::new();
        for message in history.into_iter().filter(|m| version(m).is_some_and(|v| v > after)) {
            let v = version(&message).unwrap_or(after);
            let update = json!({ "statusUpdate": {
                "taskId": follow.task,
                "contextId": context,
                "status": { "state": state, "message": message, "timestamp": task["status"]["timestamp"] },
            }});
            out.push(event(id, v, update));
        }
        follow.after = Some(newest.max(after));
        out
    }
}

fn string_param(params: &Value, name: &str) -> Result<String, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMS, format!("{name}: send a non-empty string")))
}

/// Baton tasks and workflows as A2A tasks and agent cards (docs/a2a.md).
pub mod mapping {
    use super::{PROTOCOL_VERSION, RpcError, code};
    use baton_api as api;
    use serde_json::{Value, json};

    /// The label that keeps a message's `contextId`.
    pub const CONTEXT_LABEL: &str = "a2a.context";
    /// Characters of a message's text a task's payload may hold.
    pub const MESSAGE_TEXT_MAX: usize = 256 * 1024;

    /// The agent card of a workflow with an `[a2a]` section.
    pub fn card(wf: &api::WorkflowView, base: &str) -> Value {
        let a2a = wf.a2a.clone().unwrap_or_default();
        let description = if a2a.description.is_empty() {
            format!(
                "The Baton workflow {:?}: tasks handed through its stages, durable across restarts.",
                wf.name
            )
        } else {
            a2a.description
        };
        let skills: Vec<Value> = wf
            .stages
            .iter()
            .map(|(name, stage)| {
                let who = if stage.human { "people" } else { "agents" };
                json!({
                    "id": name,
                    "name": name,
                    "description": format!("The {name:?} stage of {:?}, worked by {who}.", wf.name),
                    "tags": ["baton", if stage.human { "human" } else { "agent" }],
                })
            })
            .collect();
        json!({
            "name": wf.name,
            "description": description,
            "version": wf.version.to_string(),
            "supportedInterfaces": [{
                "url": format!("{base}/a2a/{}", wf.name),
                "protocolBinding": "JSONRPC",
                "protocolVersion": PROTOCOL_VERSION,
            }],
            "capabilities": {
                "streaming": true,
                "pushNotifications": wf.a2a.as_ref().is_some_and(|a| !a.push_url_prefixes.is_empty()),
            },
            "securitySchemes": {
                "bearer": { "httpAuthSecurityScheme": { "scheme": "Bearer", "description": "A Baton API token; not needed when the server runs without auth." } }
            },
            "securityRequirements": [{ "schemes": { "bearer": { "list": [] } } }],
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["application/json"],
            "skills": skills,
        })
    }

    /// A message's parts as a task payload: `{"text": ..., "data": ...}`,
    /// each only when the message has such parts (several data parts: a list).
    pub fn payload(message: &Value) -> Result<Value, RpcError> {
        let parts =
            message.get("parts").and_then(Value::as_array).filter(|p| !p.is_empty()).ok_or_else(|| {
                RpcError::new(code::INVALID_PARAMS, "message.parts: send at least one text or data part")
            })?;
        let mut text = String::new();
        let mut data = Vec::new();
        for part in parts {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            } else if let Some(d) = part.get("data") {
                data.push(d.clone());
            } else {
                return Err(RpcError::new(
                    code::INVALID_PARAMS,
                    "message.parts: only text and data parts are accepted (no files or URLs)",
                ));
            }
        }
        if text.chars().count() > MESSAGE_TEXT_MAX {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                format!("message text is over {MESSAGE_TEXT_MAX} characters (MESSAGE_TEXT_MAX): send less"),
            ));
        }
        let mut payload = serde_json::Map::new();
        if !text.is_empty() || data.is_empty() {
            payload.insert("text".into(), json!(text));
        }
        match data.len() {
            0 => {}
            1 => {
                payload.insert("data".into(), data.remove(0));
            }
            _ => {
                payload.insert("data".into(), Value::Array(data));
            }
        }
        Ok(Value::Object(payload))
    }

    /// The A2A state of a task of `wf`.
    pub fn state(wf: &api::WorkflowView, task: &api::Task, events: &[api::Event]) -> &'static str {
        use api::TaskStateName as S;
        let a2a = wf.a2a.clone().unwrap_or_default();
        match task.state {
            S::Done => return "TASK_STATE_COMPLETED",
            S::Cancelled => return "TASK_STATE_CANCELED",
            S::Blocked => return "TASK_STATE_WORKING",
            S::Waiting | S::Held => {}
        }
        let escalated = events
            .iter()
            .rev()
            .find(|e| e.kind != "heartbeat" && e.kind != "commented")
            .is_some_and(|e| e.kind == "escalated");
        let human = wf.stages.get(&task.stage).is_none_or(|s| s.human);
        if escalated && a2a.escalation_is_failure {
            return "TASK_STATE_FAILED";
        }
        if human || escalated {
            return "TASK_STATE_INPUT_REQUIRED";
        }
        let claimed = events.iter().any(|e| e.kind == "claimed");
        if task.state == S::Waiting && task.stage == wf.entry && !claimed {
            return "TASK_STATE_SUBMITTED";
        }
        "TASK_STATE_WORKING"
    }

    /// A task with its history as an A2A task.
    pub fn task(wf: &api::WorkflowView, task: &api::Task, events: &[api::Event]) -> Value {
        let id = task.id.to_string();
        let context = task.labels.get(CONTEXT_LABEL).cloned().unwrap_or_else(|| id.clone());
        let mut history = Vec::new();
        if let Some(key) = &task.idempotency_key {
            let payload: Value =
                task.payload.as_ref().and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
            let mut parts = Vec::new();
            if let Some(text) = payload.get("text").and_then(Value::as_str) {
                parts.push(json!({ "text": text }));
            }
            if let Some(data) = payload.get("data") {
                parts.push(json!({ "data": data }));
            }
            history.push(json!({
                "messageId": super::message_id_of(key, &task.submitter),
                "contextId": context,
                "taskId": id,
                "role": "ROLE_USER",
                "parts": parts,
            }));
        }
        for event in events.iter().filter(|e| e.kind != "heartbeat" && e.kind != "submitted") {
            history.push(update(&id, &context, event));
        }
        let state = state(wf, task, events);
        let mut status = json!({ "state": state, "timestamp": task.updated_at.to_string() });
        if let Some(last) = history.last().filter(|m| m["role"] == "ROLE_AGENT") {
            status["message"] = last.clone();
        }
        let mut out = json!({
            "id": id,
            "contextId": context,
            "status": status,
            "history": history,
            "metadata": { "stage": task.stage, "batonState": task.state.as_str() },
        });
        if let Some(result) = &task.result {
            out["artifacts"] =
                json!([{ "artifactId": "result", "name": "result", "parts": [{ "data": result }] }]);
        }
        out
    }

    /// One event as a status-update message: its note (or what happened) as
    /// text, its findings as data, its version in the message id and metadata.
    /// A `commented` event is the user's message (`ROLE_USER`): its note and
    /// findings as they were sent.
    pub fn update(task: &str, context: &str, event: &api::Event) -> Value {
        let user = event.kind == "commented";
        let text = event.note.clone().unwrap_or_else(|| match &event.from {
            _ if user => String::new(),
            Some(from) if from.stage != event.to.stage => {
                format!("{}: {} -> {}", event.kind, from.stage, event.to.stage)
            }
            _ => format!("{} at {}", event.kind, event.to.stage),
        });
        let mut parts = Vec::new();
        if !(user && text.is_empty()) {
            parts.push(json!({ "text": text }));
        }
        if let Some(findings) = &event.findings {
            parts.push(json!({ "data": findings }));
        }
        json!({
            "messageId": format!("{task}/{}", event.version),
            "contextId": context,
            "taskId": task,
            "role": if user { "ROLE_USER" } else { "ROLE_AGENT" },
            "parts": parts,
            "metadata": {
                "version": event.version,
                "kind": event.kind,
                "stage": event.to.stage,
                "actor": event.actor,
                "at": event.at.to_string(),
            },
        })
    }

    /// Completed, canceled, failed or rejected: nothing more will happen.
    pub fn is_terminal(task: &Value) -> bool {
        matches!(
            task.pointer("/status/state").and_then(Value::as_str),
            Some(
                "TASK_STATE_COMPLETED" | "TASK_STATE_CANCELED" | "TASK_STATE_FAILED" | "TASK_STATE_REJECTED"
            )
        )
    }

    /// Keeps the last `n` history messages (A2A's `historyLength`).
    pub fn keep_last(task: &mut Value, n: usize) {
        if let Some(history) = task.get_mut("history").and_then(Value::as_array_mut) {
            let drop = history.len().saturating_sub(n);
            history.drain(..drop);
        }
    }
}
