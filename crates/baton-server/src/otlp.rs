//! Trace export over OTLP/HTTP (JSON encoding), enabled by an endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` in the binary). Each committed change the
//! store observes becomes a span of its task's trace: the time a task waited
//! at a stage before a claim (`wait <stage>`) and the time an agent held it
//! before its action (`work <stage>`: handed off, completed, failed, released,
//! spawned, aborted, or the lease expired). The trace id is the one of the
//! task's W3C `traceparent` when it has one, so the task's whole journey
//! across agents joins the caller's trace, and otherwise the task's own id; the
//! parent span is the `traceparent`'s. Spans are queued (at most
//! `OTLP_QUEUE_MAX`, older ones dropped and counted) and posted to
//! `<endpoint>/v1/traces` in batches of at most `OTLP_BATCH_MAX` every
//! `interval_ms`. Export is best effort: a failed post is logged and its spans
//! are dropped; nothing in the custody path waits for it. Hand-written to keep
//! the dependency tree small: the OTLP JSON mapping is a few fields.

use crate::state::AppState;
use crate::telemetry::trace_id;
use baton_core::event::{Actor, EventKind};
use baton_core::metrics::Observation;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Spans waiting for export; past it the oldest are dropped.
pub const OTLP_QUEUE_MAX: usize = 65_536;
/// Spans in one export request.
pub const OTLP_BATCH_MAX: usize = 2_048;

/// Where and how often to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpOptions {
    /// The collector's base URL (`http://host:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    pub interval_ms: u64,
    /// Connect and response timeout of one export request.
    pub timeout_ms: u64,
}

impl OtlpOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "baton".into(),
            interval_ms: 1_000,
            timeout_ms: 5_000,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!("OTLP endpoint {:?} must be an http:// URL", self.endpoint));
        }
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            return Err("OTLP interval and timeout must be positive".to_owned());
        }
        Ok(())
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub attributes: Vec<(&'static str, String)>,
}

/// The span queue the store's listener fills (through `ReadyHub`).
#[derive(Debug, Default)]
pub struct Spans {
    on: AtomicBool,
    queue: Mutex<VecDeque<SpanRecord>>,
    dropped: AtomicU64,
    exported: AtomicU64,
}

impl Spans {
    /// Starts collecting (off by default: no cost without an endpoint).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// Turns committed changes into spans.
    pub fn observe(&self, changes: &[Observation]) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for o in changes {
            let Some(span) = span_of(o) else { continue };
            if queue.len() >= OTLP_QUEUE_MAX {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(span);
        }
    }

    fn take(&self, max: usize) -> Vec<SpanRecord> {
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// Spans exported and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.exported.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }
}

/// The span of one change, if it closes a wait or a hold.
pub fn span_of(o: &Observation) -> Option<SpanRecord> {
    let elapsed = o.elapsed_ms?;
    let what = match o.kind {
        EventKind::Claimed => "wait",
        EventKind::HandedOff
        | EventKind::Completed
        | EventKind::Failed
        | EventKind::Released
        | EventKind::Spawned
        | EventKind::Aborted
        | EventKind::LeaseExpired => "work",
        _ => return None,
    };
    let (trace, parent) = match o.trace.as_deref().and_then(|t| trace_id(t).map(|id| (t, id))) {
        Some((traceparent, id)) => (id.to_owned(), traceparent.split('-').nth(2).map(str::to_owned)),
        None => (o.task.0.simple().to_string(), None),
    };
    let mut hasher = DefaultHasher::new();
    (o.task, o.at, o.kind.as_str(), o.stage.as_str()).hash(&mut hasher);
    let span_id = format!("{:016x}", hasher.finish().max(1));
    let mut attributes = vec![
        ("baton.task", o.task.to_string()),
        ("baton.stage", o.from.to_string()),
        ("baton.event", o.kind.as_str().to_owned()),
    ];
    if o.stage != o.from {
        attributes.push(("baton.to_stage", o.stage.to_string()));
    }
    if let Actor::Agent(agent) = &o.actor {
        attributes.push(("baton.agent", agent.to_string()));
    }
    Some(SpanRecord {
        trace_id: trace,
        span_id,
        parent_span_id: parent,
        name: format!("{what} {}", o.from),
        start_ms: o.at.saturating_sub(elapsed),
        end_ms: o.at,
        attributes,
    })
}

/// The OTLP/JSON body for `spans`.
pub fn export_body(service: &str, spans: &[SpanRecord]) -> Value {
    let nanos = |ms: i64| (i128::from(ms) * 1_000_000).to_string();
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": 1,
                "startTimeUnixNano": nanos(s.start_ms),
                "endTimeUnixNano": nanos(s.end_ms),
                "attributes": s.attributes.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect::<Vec<_>>(),
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"scope": {"name": "baton"}, "spans": spans}],
        }]
    })
}

/// The exporter: posts queued spans until shutdown, then once more.
pub async fn run(state: AppState, options: OtlpOptions) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(options.timeout_ms))
        .timeout(Duration::from_millis(options.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "OTLP export disabled: cannot build its HTTP client");
            return;
        }
    };
    let url = format!("{}/v1/traces", options.endpoint.trim_end_matches('/'));
    loop {
        let stopping = state.is_shutting_down();
        loop {
            let batch = state.hub().spans().take(OTLP_BATCH_MAX);
            if batch.is_empty() {
                break;
            }
            let body = export_body(&options.service_name, &batch);
            match client.post(&url).json(&body).send().await {
                Ok(answer) if answer.status().is_success() => {
                    state.hub().spans().exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Ok(answer) => {
                    tracing::warn!(status = %answer.status(), spans = batch.len(), "OTLP export refused; spans dropped");
                    state.hub().spans().dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, spans = batch.len(), "OTLP export failed; spans dropped");
                    state.hub().spans().dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(options.interval_ms)) => {}
            () = state.shutting_down() => {}
        }
    }
}
