//! What the server is built from, injected: the store, the clock, the wake-up
//! hub and the options (`Config`), and the shared state handlers see
//! (`AppState`). Nothing here opens a database or reads the wall clock; the
//! binary (or a test) constructs the world and passes it in.

use crate::http::rate_limit::RateLimiter;
use crate::metrics::MetricsOptions;
use crate::wake::{ReadyHub, TaskSignals};
use crate::webhooks::WebhookOptions;
use baton_core::{Clock, Limits, Policies, StageName, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Everything `serve` needs besides the listener and the shutdown signal.
#[derive(Clone)]
pub struct Config {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The store's `ReadyListener`: give the same hub to the store when
    /// opening it. It is the only source of wake-ups for waiting claims: with
    /// a store that does not call it, a long poll ends only at its deadline.
    pub hub: Arc<ReadyHub>,
    pub options: Options,
}

/// How the server behaves. The limits here are the server's own (the store's
/// are in `limits`); each has a name that refusals carry and a row in
/// docs/reference/limits.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub auth: AuthMode,
    /// Bytes of one request body; past it, 413 `body_too_large`.
    pub body_bytes_max: usize,
    /// Nesting depth of a request body's JSON, the request's own object
    /// included (a submit's payload starts at depth 2, a spawned child's at
    /// depth 4); deeper, 422 `limit_exceeded` naming `json_depth_max`.
    pub json_depth_max: usize,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open; then the connection is
    /// closed without an answer. Applies to `serve` (a socket), not to `app`.
    pub header_read_timeout_ms: u64,
    /// Bytes of a request's head (request line and headers) the server
    /// buffers; past it hyper answers 431 without a body. At least 8192.
    /// Applies to `serve`, not to `app`.
    pub header_bytes_max: usize,
    /// Connections open at once; one more is answered 503 `unavailable`
    /// (with `Retry-After`) and closed. Applies to `serve`, not to `app`.
    pub connections_max: usize,
    /// How long one request may take from its headers to its answer; then
    /// 503 `request_timeout`. Long polls (claims, handoff outcomes) get
    /// `wait_ms_max` on top, since `wait_ms` already bounds their wait.
    pub request_timeout_ms: u64,
    /// The limits the store enforces; the server checks the ones it can
    /// without the store (page size) against the same values.
    pub limits: Limits,
    /// The global stage policies the store runs with (give both the same):
    /// workflow files are checked against them (escalation targets such as
    /// `inbox`), and the stages they mark `human` are inbox stages.
    pub policies: Policies,
    /// Requests per second one principal's token bucket refills at; past it,
    /// 429 `rate_limited` with `Retry-After`. 0 turns the rate limit off; with
    /// auth off it does not apply (no principal). See `http::rate_limit`.
    pub requests_per_second_max: u64,
    /// Requests one principal's full bucket holds: the largest burst above
    /// `requests_per_second_max`. 0 turns the rate limit off.
    pub request_burst_max: u64,
    /// Principals whose buckets are kept at once; past it, full (idle)
    /// buckets are dropped first (no answer changes), then the nearest to full.
    pub rate_limit_buckets_max: usize,
    /// The longest a claim or a handoff-outcome call may wait.
    pub wait_ms_max: u64,
    /// Stages one claim may name.
    pub claim_stages_max: usize,
    /// A handoff-outcome wait looks at the store at least this often, for
    /// changes no wake-up announces.
    pub handoff_poll_ms: u64,
    pub sweeper: SweeperOptions,
    /// The webhooks and their delivery limits (`crate::webhooks`).
    pub webhooks: WebhookOptions,
    /// Rollup flushes, retention and anomaly detection (`crate::metrics`).
    pub metrics: MetricsOptions,
    /// Trace export over OTLP (`crate::otlp`); `None`: off.
    pub otlp: Option<crate::otlp::OtlpOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: AuthMode::Off,
            body_bytes_max: baton_api::limits::BODY_BYTES_MAX,
            json_depth_max: 32,
            header_read_timeout_ms: 30_000,
            connections_max: 4_096,
            header_bytes_max: 64 * 1024,
            request_timeout_ms: 30_000,
            limits: Limits::default(),
            policies: Policies::default(),
            requests_per_second_max: 1_000,
            request_burst_max: 2_000,
            rate_limit_buckets_max: 10_000,
            wait_ms_max: baton_api::limits::WAIT_MS_MAX,
            claim_stages_max: 64,
            handoff_poll_ms: 1_000,
            sweeper: SweeperOptions::default(),
            webhooks: WebhookOptions::default(),
            metrics: MetricsOptions::default(),
            otlp: None,
        }
    }
}

/// Authentication (`crate::auth`); what each principal may do is decided in
/// `http::principal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Every caller is trusted and names its agent in the body (`baton dev`,
    /// loopback only).
    Off,
    /// Every call but the service routes (`/v1`, `/healthz`, `/readyz`, the
    /// API document) carries `Authorization: Bearer <token>`, which names its
    /// principal (`baton serve`).
    Tokens(crate::auth::Auth),
}

impl AuthMode {
    /// The authentication in force, if any.
    pub fn tokens(&self) -> Option<&crate::auth::Auth> {
        match self {
            Self::Off => None,
            Self::Tokens(auth) => Some(auth),
        }
    }
}

/// The timer loop over `due_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperOptions {
    pub enabled: bool,
    /// Due tasks fired per store call; the sweeper loops at once while a batch is full.
    pub batch_max: usize,
    /// The longest the sweeper sleeps, so a task that becomes due earlier than
    /// any the sweeper knew of is acted on within this time.
    pub idle_ms_max: u64,
    /// How long a finished task stays in the live store before an archive
    /// pass moves it to the archive (`crate::archive`); `None`: never.
    pub retention_ms: Option<i64>,
    /// How often the archive task (`crate::archive::run`, beside the
    /// sweeper) runs a round while retention is on.
    pub archive_interval_ms: i64,
}

impl Default for SweeperOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_max: 512,
            idle_ms_max: 1_000,
            retention_ms: None,
            archive_interval_ms: 60_000,
        }
    }
}

/// The state every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hub: Arc<ReadyHub>,
    tasks: TaskSignals,
    rate_limiter: RateLimiter,
    options: Options,
    shutdown_tx: watch::Sender<bool>,
    workflow_humans: WorkflowHumans,
}

/// The human stages of every stored workflow version, by workflow: a task
/// keeps the version it was submitted under, so a human stage that only an
/// older version declares may still hold tasks. Versions never change once
/// stored, so each is read once per process (`http::inbox::human_stages`).
#[derive(Default)]
pub struct WorkflowHumans(Mutex<HashMap<String, (u32, BTreeSet<StageName>)>>);

impl WorkflowHumans {
    /// How many versions of `workflow` have been read (1..=that).
    pub fn versions_read(&self, workflow: &str) -> u32 {
        self.lock().get(workflow).map_or(0, |(read, _)| *read)
    }

    /// Adds what versions up to `version` of `workflow` declare; returns
    /// every human stage of the workflow known now.
    pub fn add(&self, workflow: &str, version: u32, humans: BTreeSet<StageName>) -> BTreeSet<StageName> {
        let mut all = self.lock();
        let (read, known) = all.entry(workflow.to_owned()).or_default();
        *read = (*read).max(version);
        known.extend(humans);
        known.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, BTreeSet<StageName>)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let (shutdown_tx, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                store: config.store,
                clock: config.clock,
                hub: config.hub,
                tasks: TaskSignals::default(),
                rate_limiter: RateLimiter::default(),
                options: config.options,
                shutdown_tx,
                workflow_humans: WorkflowHumans::default(),
            }),
        }
    }

    pub fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    pub fn hub(&self) -> &ReadyHub {
        &self.inner.hub
    }

    /// Per-task wake-ups for handoff-outcome waits.
    pub fn tasks(&self) -> &TaskSignals {
        &self.inner.tasks
    }

    /// The per-principal request buckets (`http::rate_limit`).
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.rate_limiter
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The human stages of the workflow versions read so far.
    pub fn workflow_humans(&self) -> &WorkflowHumans {
        &self.inner.workflow_humans
    }

    /// Tells long polls and the sweeper to finish: polls answer with what they have.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown_tx.subscribe();
        async move {
            // An error means the sender is gone, which also means shutdown.
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }
}
