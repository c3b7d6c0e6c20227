//! The MCP tool table: every tool's name, description (written for a
//! language model: what it does, when to use it, what a refusal means and
//! what to do next), parameters, the roles that see it, and the `/v1` call
//! it makes. `check` validates a call's arguments against the table before
//! anything is sent, so a bad argument is refused as JSON-RPC invalid params
//! naming the field; `request` turns valid arguments into the API call.

use baton_core::auth::Role;
use serde_json::{Map, Value, json};

/// Who sees a tool: a set of roles (with auth off, everyone sees every tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    const AGENT: u8 = 1;
    const SUBMITTER: u8 = 2;
    const OPERATOR: u8 = 4;
    const ADMIN: u8 = 8;
    /// Agents (working their stages), operators (human stages) and admins.
    pub const WORKERS: Roles = Roles(Self::AGENT | Self::OPERATOR | Self::ADMIN);
    /// Everyone who may submit.
    pub const SUBMITTERS: Roles = Roles(Self::SUBMITTER | Self::OPERATOR | Self::ADMIN);
    /// Operators and admins.
    pub const OPERATORS: Roles = Roles(Self::OPERATOR | Self::ADMIN);
    /// Every role.
    pub const ALL: Roles = Roles(Self::AGENT | Self::SUBMITTER | Self::OPERATOR | Self::ADMIN);

    /// Whether `role` (`None`: auth off) sees the tool.
    pub fn admit(self, role: Option<Role>) -> bool {
        let bit = match role {
            None => return true,
            Some(Role::Agent) => Self::AGENT,
            Some(Role::Submitter) => Self::SUBMITTER,
            Some(Role::Operator) => Self::OPERATOR,
            Some(Role::Admin) => Self::ADMIN,
        };
        self.0 & bit != 0
    }
}

/// A parameter's JSON type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    /// A task id (a UUID), put in the route's path.
    TaskId,
    Int,
    /// A number between 0 and 1.
    Unit,
    Bool,
    Object,
    /// Any JSON value.
    Any,
    /// A non-empty list of strings.
    Strings,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// A list of objects (spawn's children).
    Objects,
}

/// Where a parameter goes in the API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// `{id}` in the path.
    Path,
    /// A field of the JSON body (or of the query string, for a `GET`).
    Body,
    /// The `Idempotency-Key` header.
    KeyHeader,
}

/// One parameter of a tool.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub at: At,
    pub description: &'static str,
}

/// The API call a tool makes.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    Get,
    Post,
}

/// One tool.
#[derive(Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub roles: Roles,
    pub method: Method,
    /// The route, with `{id}` for the task's id.
    pub path: &'static str,
    pub params: &'static [Param],
    /// Body fields the tool always sends (escalate: `retryable: false`).
    pub fixed: &'static [(&'static str, FixedValue)],
    /// Whether it changes nothing (a hint to clients).
    pub read_only: bool,
}

/// A fixed body value.
#[derive(Debug, Clone, Copy)]
pub enum FixedValue {
    Bool(bool),
}

const fn p(name: &'static str, kind: Kind, required: bool, description: &'static str) -> Param {
    Param { name, kind, required, at: At::Body, description }
}

const TASK: Param = Param {
    name: "task",
    kind: Kind::TaskId,
    required: true,
    at: At::Path,
    description: "The task's id (a UUID), as returned by submit, claim or inbox_list.",
};
const EPOCH: Param = p(
    "epoch",
    Kind::Int,
    true,
    "The epoch of your lease, as returned by claim (or inbox_claim). It fences the call: a stale epoch is refused with lease_lost.",
);
const AGENT: Param = p(
    "agent",
    Kind::Str,
    false,
    "Your agent name. Only needed when the server runs without authentication and the session names no agent; with a token, leave it out (it must be the token's principal).",
);
const NOTE: Param =
    p("note", Kind::Str, false, "A short note for the task's history, read by whoever comes next.");
const FINDINGS: Param =
    p("findings", Kind::Any, false, "What you found, as any JSON; kept in the history and passed on.");
const CONFIDENCE: Param =
    p("confidence", Kind::Unit, false, "How sure you are of your work, between 0 and 1.");
const KEY: Param = Param {
    name: "idempotency_key",
    kind: Kind::Str,
    required: false,
    at: At::KeyHeader,
    description: "Any string unique to this decision. If the answer is lost (timeout, disconnect), call again with the same key and arguments: you get the first answer and the change is made once.",
};

/// What every holder call's refusals mean; appended to their descriptions.
pub const HOLDER_REFUSALS: &str = " Refusals: lease_lost means your epoch is stale (the lease expired or \
    the task moved on): stop working on this task and claim new work; not_holder means another agent \
    holds it; invalid_transition means the task is not in a state where this applies (check it with show).";

/// Every tool, in the order `tools/list` shows them.
pub const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "submit",
        title: "Submit a task",
        description: "Create a task: put a work item (any JSON payload) into a stage, or into a workflow's entry stage, where an agent will claim it. Use this to start work. Give an idempotency_key (e.g. an order number) so that a retry returns the same task instead of creating a second one. Returns the task (its id, stage and state). Refusals: invalid_request names the bad field; forbidden means your role may not submit; idempotency_conflict means the key was used with a different payload.",
        roles: Roles::SUBMITTERS,
        method: Method::Post,
        path: "/v1/tasks",
        params: &[
            p("stage", Kind::Str, false, "The stage to put the task in. Give stage or workflow, not both."),
            p("workflow", Kind::Str, false, "A workflow's name; the task starts in its entry stage."),
            p("payload", Kind::Any, true, "The work item: any JSON, stored once as sent."),
            p("priority", Kind::Int, false, "Higher is claimed first; 0 by default."),
            p("deadline", Kind::Str, false, "An absolute deadline for the whole task (RFC 3339 time)."),
            p(
                "idempotency_key",
                Kind::Str,
                false,
                "Makes the submit safe to retry: the same key and payload return the existing task.",
            ),
            p("labels", Kind::Object, false, "String labels, e.g. {\"customer\": \"42\"}."),
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "claim",
        title: "Claim work",
        description: "Take tasks to work on from your stages, each under a lease (a time limit) with an epoch. Use this when you are ready for work; with wait_ms it waits for work to arrive. Returns a list of leases (task id, epoch, payload, lease end); an empty list means no work was ready. While you work, call heartbeat before the lease ends; then finish with handoff, complete, fail, escalate or release, always passing the task id and epoch. Refusals: forbidden means you may not claim from that stage; too_many_leases means finish work you hold first.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/claims",
        params: &[
            p("stages", Kind::Strings, true, "The stages to claim from, e.g. [\"triage\"]."),
            p("max", Kind::Int, false, "How many tasks to take, 1 to 100; 1 by default."),
            p(
                "wait_ms",
                Kind::Int,
                false,
                "How long to wait for work, in milliseconds (0 to 60000); 0 answers at once.",
            ),
            p(
                "lease_ms",
                Kind::Int,
                false,
                "The lease's length in milliseconds; the stage's default when absent.",
            ),
            AGENT,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "heartbeat",
        title: "Extend a lease",
        description: "Tell Baton you are still working on a task you hold, extending its lease (optionally with a progress note). Call it well before the lease ends, e.g. every third of the lease; if the lease ends first, Baton takes the task back and gives it to another agent.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/heartbeat",
        params: &[
            TASK,
            EPOCH,
            p("lease_ms", Kind::Int, false, "The new lease length from now, in milliseconds."),
            NOTE,
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "handoff",
        title: "Hand a task on",
        description: "Finish your part of a task you hold and pass it to the next stage, with a note, findings and confidence for the next agent. Use this when the task needs more work elsewhere. Returns the handoff. Refusals: route_not_allowed means you may not hand from this stage to to_stage (pick an allowed stage or escalate).",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/handoff",
        params: &[
            TASK,
            EPOCH,
            p("to_stage", Kind::Str, true, "The stage to hand the task to."),
            NOTE,
            FINDINGS,
            CONFIDENCE,
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "complete",
        title: "Complete a task",
        description: "Finish a task you hold: it is done (in a workflow stage with a next stage, it moves on). Use this when the work is finished. Give the result as JSON.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/complete",
        params: &[
            TASK,
            EPOCH,
            p("result", Kind::Any, false, "The task's result, as any JSON."),
            NOTE,
            FINDINGS,
            CONFIDENCE,
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "fail",
        title: "Report a failure",
        description: "Report that you could not do a task you hold. With retryable true (the default) the task comes back to its stage after a backoff, for another try; a non-retryable failure (or too many retries) climbs the stage's escalation ladder, up to the human inbox. Use escalate when a person or another stage must decide.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/fail",
        params: &[
            TASK,
            EPOCH,
            p("error", Kind::Str, true, "What went wrong, for the history and whoever picks it up."),
            p("retryable", Kind::Bool, false, "Whether another try may succeed; true by default."),
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "escalate",
        title: "Escalate a task",
        description: "Give up on a task you hold and send it up the stage's escalation ladder (a non-retryable failure): to the next escalation stage, and finally to the human inbox. Use this when the task needs a person or a different kind of agent, not another try.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/fail",
        params: &[TASK, EPOCH, p("error", Kind::Str, true, "Why the task needs escalation."), AGENT, KEY],
        fixed: &[("retryable", FixedValue::Bool(false))],
        read_only: false,
    },
    ToolSpec {
        name: "release",
        title: "Release a task",
        description: "Give a task you hold back to its stage at once, unchanged, for another agent to claim. Use this when you cannot work on it now (shutting down, wrong skills), not when it failed.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/release",
        params: &[TASK, EPOCH, NOTE, AGENT, KEY],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "spawn",
        title: "Spawn child tasks",
        description: "Split a task you hold into child tasks, each in a stage; the parent waits, blocked, until its children join (all done, any done, or a quorum of n) or within_ms passes. Use this to fan work out.",
        roles: Roles::WORKERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/spawn",
        params: &[
            TASK,
            EPOCH,
            p(
                "children",
                Kind::Objects,
                true,
                "The children: [{\"stage\": \"...\", \"payload\": {...}}, ...] (optional priority and labels).",
            ),
            p(
                "join",
                Kind::Object,
                true,
                "How the parent joins: {\"mode\": \"all\" | \"any\" | \"quorum\", \"n\": 2 (quorum only), \"within_ms\": 60000}.",
            ),
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "show",
        title: "Show a task",
        description: "Read a task: its state, stage, custodian (who is accountable now), due time and payload. Use this to see where a task is before acting on it. Refusals: not_found means no such task, or none you may see.",
        roles: Roles::ALL,
        method: Method::Get,
        path: "/v1/tasks/{id}",
        params: &[TASK],
        fixed: &[],
        read_only: true,
    },
    ToolSpec {
        name: "history",
        title: "A task's history",
        description: "Read every change of a task, in order, hash-chained: who did what, when, with their notes and findings. Use this to learn what earlier agents found, or whether your own call landed after a lost answer.",
        roles: Roles::ALL,
        method: Method::Get,
        path: "/v1/tasks/{id}/history",
        params: &[TASK],
        fixed: &[],
        read_only: true,
    },
    ToolSpec {
        name: "lineage",
        title: "A task's lineage",
        description: "Read the path a task took through stages and agents, with times, and its parent and children. Use this for a summary of how a task got where it is.",
        roles: Roles::ALL,
        method: Method::Get,
        path: "/v1/tasks/{id}/lineage",
        params: &[TASK],
        fixed: &[],
        read_only: true,
    },
    ToolSpec {
        name: "cancel",
        title: "Cancel a task",
        description: "Cancel a live task for good, with a reason (operators and admins any task, a submitter the tasks it submitted). Use this for work nobody should do any more.",
        roles: Roles::SUBMITTERS,
        method: Method::Post,
        path: "/v1/tasks/{id}/cancel",
        params: &[TASK, p("reason", Kind::Str, true, "Why the task is cancelled."), KEY],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "inbox_list",
        title: "List the human inbox",
        description: "List tasks waiting for a person (escalated or in human stages), with why and since when. Use this to find work that needs a decision; take one with inbox_claim.",
        roles: Roles::OPERATORS,
        method: Method::Get,
        path: "/v1/inbox",
        params: &[
            p("stage", Kind::Str, false, "Only tasks in this stage."),
            p("limit", Kind::Int, false, "Tasks per page."),
            p("after", Kind::Str, false, "The cursor of the previous page."),
        ],
        fixed: &[],
        read_only: true,
    },
    ToolSpec {
        name: "inbox_claim",
        title: "Claim an inbox task",
        description: "Take one task from the human inbox by id, under a lease. Returns the lease with its epoch; then decide with inbox_resolve.",
        roles: Roles::OPERATORS,
        method: Method::Post,
        path: "/v1/inbox/{id}/claim",
        params: &[TASK, p("lease_ms", Kind::Int, false, "The lease's length in milliseconds."), AGENT],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "inbox_resolve",
        title: "Resolve an inbox task",
        description: "Decide an inbox task you hold: hand it back into its workflow at to_stage, complete it, cancel it or abort its workflow (cancel and abort need a reason).",
        roles: Roles::OPERATORS,
        method: Method::Post,
        path: "/v1/inbox/{id}/resolve",
        params: &[
            TASK,
            EPOCH,
            p("resolution", Kind::OneOf(&["handoff", "complete", "cancel", "abort"]), true, "The decision."),
            p("to_stage", Kind::Str, false, "With handoff: the stage to hand the task to."),
            NOTE,
            p("reason", Kind::Str, false, "With cancel and abort: why."),
            AGENT,
            KEY,
        ],
        fixed: &[],
        read_only: false,
    },
    ToolSpec {
        name: "stuck",
        title: "Stuck work",
        description: "List live tasks that are stuck: overdue timers, escalations, passed deadlines, with why. Use this to find work that needs an operator.",
        roles: Roles::OPERATORS,
        method: Method::Get,
        path: "/v1/stuck",
        params: &[p(
            "grace_ms",
            Kind::Int,
            false,
            "How far past due a task must be to count, in milliseconds.",
        )],
        fixed: &[],
        read_only: true,
    },
    ToolSpec {
        name: "stats",
        title: "Handoff statistics",
        description: "Measure handoffs over a window: per edge (stage to stage, agent to agent) counts, acceptance latency percentiles and success rate; per stage the backlog and the oldest waiting task.",
        roles: Roles::OPERATORS,
        method: Method::Get,
        path: "/v1/stats",
        params: &[
            p("window", Kind::Str, false, "How far back, e.g. \"1h\" or \"15m\"."),
            p("edge", Kind::Str, false, "Only this edge, \"from:to\"."),
            p("stage", Kind::Str, false, "Only this stage."),
        ],
        fixed: &[],
        read_only: true,
    },
];

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

impl Kind {
    fn schema(self) -> Value {
        match self {
            Kind::Str => json!({ "type": "string" }),
            Kind::TaskId => json!({ "type": "string", "format": "uuid" }),
            Kind::Int => json!({ "type": "integer", "minimum": 0 }),
            Kind::Unit => json!({ "type": "number", "minimum": 0, "maximum": 1 }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Object => json!({ "type": "object" }),
            Kind::Any => json!({}),
            Kind::Strings => json!({ "type": "array", "items": { "type": "string" }, "minItems": 1 }),
            Kind::OneOf(values) => json!({ "type": "string", "enum": values }),
            Kind::Objects => json!({ "type": "array", "items": { "type": "object" }, "minItems": 1 }),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::TaskId => "a task id (a UUID string)",
            Kind::Int => "a non-negative integer",
            Kind::Unit => "a number between 0 and 1",
            Kind::Bool => "true or false",
            Kind::Object => "a JSON object",
            Kind::Any => "any JSON value",
            Kind::Strings => "a non-empty list of strings",
            Kind::OneOf(_) => "one of the listed values",
            Kind::Objects => "a non-empty list of objects",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            Kind::Str => value.is_string(),
            Kind::TaskId => value.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            Kind::Int => value.is_u64(),
            Kind::Unit => value.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)),
            Kind::Bool => value.is_boolean(),
            Kind::Object => value.is_object(),
            Kind::Any => true,
            Kind::Strings => {
                value.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
            }
            Kind::OneOf(values) => value.as_str().is_some_and(|s| values.contains(&s)),
            Kind::Objects => {
                value.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            }
        }
    }
}

impl ToolSpec {
    /// The tool's input JSON schema.
    pub fn input_schema(&self) -> Map<String, Value> {
        let mut properties = Map::new();
        for param in self.params {
            let mut schema = param.kind.schema();
            schema["description"] = Value::from(param.description);
            properties.insert(param.name.to_owned(), schema);
        }
        let required: Vec<&str> = self.params.iter().filter(|p| p.required).map(|p| p.name).collect();
        let schema = json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        });
        match schema {
            Value::Object(map) => map,
            _ => unreachable!("built as an object"),
        }
    }

    /// Checks `arguments` against the parameters: no unknown names, every
    /// required one present, each of its kind. `Err((field, problem))`.
    pub fn check(&self, arguments: &Map<String, Value>) -> Result<(), (String, String)> {
        for (name, value) in arguments {
            let Some(param) = self.params.iter().find(|p| p.name == name) else {
                let known: Vec<&str> = self.params.iter().map(|p| p.name).collect();
                return Err((
                    name.clone(),
                    format!("unknown argument \"{name}\"; {} takes {}", self.name, known.join(", ")),
                ));
            };
            if !param.kind.admits(value) {
                let mut problem = format!("\"{name}\" must be {}", param.kind.expected());
                if let Kind::OneOf(values) = param.kind {
                    problem = format!("\"{name}\" must be one of {}", values.join(", "));
                }
                return Err((name.clone(), problem));
            }
        }
        if let Some(missing) = self.params.iter().find(|p| p.required && !arguments.contains_key(p.name)) {
            return Err((
                missing.name.to_owned(),
                format!("\"{}\" is required: {}", missing.name, missing.description),
            ));
        }
        Ok(())
    }

    /// The API call for checked `arguments`; `agent` (the session's agent,
    /// with auth off) fills the `agent` field when the tool has one and the
    /// arguments leave it out.
    pub fn request(&self, arguments: &Map<String, Value>, agent: Option<&str>) -> ApiCall {
        let mut path = self.path.to_owned();
        let mut fields = Map::new();
        let mut idempotency_key = None;
        for param in self.params {
            let Some(value) = arguments.get(param.name) else { continue };
            match param.at {
                At::Path => path = path.replace("{id}", value.as_str().unwrap_or_default()),
                At::KeyHeader => idempotency_key = value.as_str().map(str::to_owned),
                At::Body => {
                    fields.insert(param.name.to_owned(), value.clone());
                }
            }
        }
        for (name, value) in self.fixed {
            let FixedValue::Bool(b) = value;
            fields.insert((*name).to_owned(), Value::Bool(*b));
        }
        if self.name == "fail" && !fields.contains_key("retryable") {
            fields.insert("retryable".to_owned(), Value::Bool(true));
        }
        if let Some(agent) = agent
            && self.params.iter().any(|p| p.name == "agent")
            && !fields.contains_key("agent")
        {
            fields.insert("agent".to_owned(), Value::from(agent));
        }
        match self.method {
            Method::Post => {
                ApiCall { method: self.method, path, body: Some(Value::Object(fields)), idempotency_key }
            }
            Method::Get => {
                let query: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        format!("{}={}", encode(k), encode(&text))
                    })
                    .collect();
                if !query.is_empty() {
                    path = format!("{path}?{}", query.join("&"));
                }
                ApiCall { method: self.method, path, body: None, idempotency_key }
            }
        }
    }
}

/// One call of the `/v1` API.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub body: Option<Value>,
    pub idempotency_key: Option<String>,
}

/// Percent-encodes a query component (everything but unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What to do after a refusal with `code`, for the model reading it.
pub fn next_step(code: &str) -> &'static str {
    match code {
        "lease_lost" => {
            "Your lease is gone (expired, or the task moved on): stop working on this task and claim new work."
        }
        "not_holder" => "Another agent holds this task: leave it alone.",
        "invalid_transition" => {
            "The task is not in a state where this applies: read it with show, then decide."
        }
        "route_not_allowed" => "You may not hand off to that stage: choose an allowed stage, or escalate.",
        "not_found" => "No such task (or none you may see): check the id.",
        "forbidden" => "Your role or grants do not allow this call: do not retry it.",
        "too_many_leases" => "You hold as many leases as you may: finish or release one first.",
        "limit_exceeded" => "A limit refused the call (details.limit names it): make the request smaller.",
        "idempotency_conflict" => "That idempotency key was used for a different call: use a new key.",
        "rate_limited" | "unavailable" | "request_in_progress" => "Retry the same call a little later.",
        "request_timeout" => {
            "The call may have taken effect: retry it unchanged (same epoch, same idempotency key)."
        }
        "unauthenticated" => "The token is missing, unknown or revoked: the session needs a valid token.",
        _ => "Read the message; do not retry the same call unchanged.",
    }
}
