//! Webhooks: the dispatcher that calls custodians and operators back. The
//! engine writes a `Notice` into the store's outbox in the same transaction
//! as the change it reports (a handoff's final outcome, an alert, an anomaly
//! raised by `crate::anomaly`); this
//! module reads the outbox in order and POSTs each notice, as a
//! `baton_api::WebhookNotice` signed with `baton_api::webhook::sign`, to every
//! configured webhook that wants it. What is news, and when, is the engine's
//! business; receivers verify with `baton_api::webhook::verify`.
//!
//! Each webhook has its own task and cursor, so one slow or failing receiver
//! holds up no other. Within a webhook delivery is in notice order (a gap in
//! the numbers, which several writers can open for a moment, is waited out
//! for `NOTICE_GAP_WAIT` before it is passed) and at least once: a notice is retried with exponential backoff (`attempts_max`,
//! `backoff_initial_ms` doubling up to `backoff_max_ms`, times on the
//! server's `Clock`) and the next waits until it is delivered or given up.
//! Every attempt is recorded as a `Delivery` in the store; at start the
//! cursor is the store's `delivery_cursor` (the last notice with a final
//! record), so a restart resends at most the notice that was in flight, and
//! that notice's attempts go on from its latest record (`last_delivery`):
//! the next attempt number, not before its `retry_at`, so restarts neither
//! reset the count nor keep a failing receiver from being given up.
//! Only the replica holding the `webhooks` singleton duty delivers (SQLite and
//! memory stores always hold it); another replica that takes the duty over
//! reads the cursor again from the records.
//! The outbox is polled every `poll_ms`, and read at once again while
//! there is more: an idle dispatcher costs one small read per webhook per
//! interval.
//!
//! Only URLs from the operator's configuration are ever called (no request
//! can name one: no SSRF through the API), they are checked when the options
//! are built (`Webhook::new`: `http`, a host, no credentials), redirects are
//! not followed, and a receiver's answer body is never read. Secrets come
//! from the configuration (or an environment variable, `Secret::resolve`),
//! are at least `SECRET_BYTES_MIN` bytes, and are never logged or recorded.

use crate::convert;
use crate::state::AppState;
use baton_api::webhook::{self as wire, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use baton_api::{NoticeKind, Timestamp, WebhookNotice};
use baton_core::metrics::RollupKey;
use baton_core::store::{Delivery, DeliveryStatus, Notice, Op};
use baton_core::{HandoffOutcome, Millis, SingletonDuty};
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Webhooks one server may be configured with.
pub const WEBHOOKS_MAX: usize = 32;
/// Bytes of a webhook's name (its key in delivery records).
pub const WEBHOOK_NAME_BYTES_MAX: usize = 64;
/// Stages one webhook's `stages` filter may name.
pub const WEBHOOK_STAGES_MAX: usize = 256;
/// The shortest secret accepted, in bytes.
pub const SECRET_BYTES_MIN: usize = 16;
/// Bytes of the error text a failed attempt records.
pub const DELIVERY_ERROR_BYTES_MAX: usize = 512;

/// The webhooks and how they are delivered to. Each limit is named in
/// docs/reference/limits.md as `webhook_<field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// The configured webhooks (none: no dispatcher runs).
    pub hooks: Vec<Webhook>,
    /// Attempts per notice and webhook, the first included; after the last
    /// failure the notice is given up (`gave_up`) and the next one is sent.
    pub attempts_max: u32,
    /// Wait after the first failed attempt; it doubles after each failure.
    pub backoff_initial_ms: u64,
    /// The longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// How long connecting to a receiver may take.
    pub connect_timeout_ms: u64,
    /// How long one attempt may take until the receiver's answer (status and
    /// headers), connecting included.
    pub response_timeout_ms: u64,
    /// Notices read from the outbox at once.
    pub batch_max: usize,
    /// How often an idle dispatcher looks at the outbox, and how often a
    /// waiting retry looks at the clock.
    pub poll_ms: u64,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            hooks: Vec::new(),
            attempts_max: 8,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 10_000,
            batch_max: 100,
            poll_ms: 1_000,
        }
    }
}

impl WebhookOptions {
    /// Checks the settings together: limits within range, unique names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("webhook_attempts_max", u64::from(self.attempts_max)),
            ("webhook_connect_timeout_ms", self.connect_timeout_ms),
            ("webhook_response_timeout_ms", self.response_timeout_ms),
            ("webhook_batch_max", self.batch_max as u64),
            ("webhook_poll_ms", self.poll_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(format!("{name} must be at least 1")));
            }
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(ConfigError::new(format!(
                "webhook_backoff_initial_ms ({}) is more than webhook_backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            )));
        }
        if self.hooks.len() > WEBHOOKS_MAX {
            return Err(ConfigError::new(format!(
                "{} webhooks configured; at most {WEBHOOKS_MAX} (webhooks_max)",
                self.hooks.len()
            )));
        }
        let mut names = HashSet::new();
        for hook in &self.hooks {
            if !names.insert(hook.name.as_str()) {
                return Err(ConfigError::new(format!("two webhooks are named {:?}", hook.name)));
            }
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based): `backoff_initial_ms`
    /// doubled per earlier failure, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.backoff_initial_ms.saturating_mul(1u64 << doublings).min(self.backoff_max_ms)
    }
}

/// One configured receiver. Built only through `new`, which checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    name: String,
    url: reqwest::Url,
    secret: Secret,
    kinds: BTreeSet<NoticeKind>,
    /// `None`: notices of tasks in every stage.
    stages: Option<BTreeSet<String>>,
}

impl Webhook {
    /// A webhook named `name` (letters, digits, `-_.`) POSTing `kinds` of
    /// notices to `url` (`http://host[:port]/path`; no credentials in it), of
    /// tasks in `stages` only if given.
    pub fn new(
        name: &str,
        url: &str,
        secret: Secret,
        kinds: &[NoticeKind],
        stages: Option<Vec<String>>,
    ) -> Result<Self, ConfigError> {
        let valid_name = !name.is_empty()
            && name.len() <= WEBHOOK_NAME_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(ConfigError::new(format!(
                "webhook name {name:?}: use 1 to {WEBHOOK_NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
            )));
        }
        let url = check_url(name, url)?;
        if kinds.is_empty() {
            return Err(ConfigError::new(format!(
                "webhook {name}: kinds is empty; name at least one of \"handoff\", \"alert\""
            )));
        }
        if let Some(stages) = &stages
            && (stages.is_empty() || stages.len() > WEBHOOK_STAGES_MAX)
        {
            return Err(ConfigError::new(format!(
                "webhook {name}: stages names 1 to {WEBHOOK_STAGES_MAX} stages (leave it out for every stage)"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            url,
            secret,
            kinds: kinds.iter().copied().collect(),
            stages: stages.map(|s| s.into_iter().collect()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this webhook wants, as the archive's eligibility check reads it
    /// (`baton_core::archive::HookFilter`, the same rule as `wants`).
    pub fn filter(&self) -> baton_core::archive::HookFilter {
        baton_core::archive::HookFilter {
            name: self.name.clone(),
            kinds: self.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            stages: self.stages.as_ref().map(|s| s.iter().cloned().collect()),
        }
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether this webhook is sent `notice`: its kind is wanted, and with a
    /// stage filter, a stage it concerns is listed (a handoff's source or
    /// target stage, an alert's stage).
    pub fn wants(&self, notice: &Notice) -> bool {
        let kind = match notice {
            Notice::Handoff { .. } => NoticeKind::Handoff,
            Notice::Alert { .. } => NoticeKind::Alert,
            Notice::Anomaly { .. } => NoticeKind::Anomaly,
            // Task updates are for push configs (`crate::push`), never webhooks.
            Notice::Update { .. } => return false,
        };
        if !self.kinds.contains(&kind) {
            return false;
        }
        let Some(stages) = &self.stages else { return true };
        match notice {
            Notice::Handoff { handoff } => {
                stages.contains(handoff.from_stage.as_str()) || stages.contains(handoff.to_stage.as_str())
            }
            Notice::Alert { alert } => stages.contains(alert.stage.as_str()),
            // An edge's stages, or the stage; an agent edge names no stage.
            Notice::Anomaly { anomaly, .. } => match &anomaly.key {
                RollupKey::Edge { from, to } => {
                    stages.contains(from.as_str()) || stages.contains(to.as_str())
                }
                RollupKey::Stage { stage } => stages.contains(stage.as_str()),
                RollupKey::AgentEdge { .. } => false,
            },
            Notice::Update { .. } => false,
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("secret", &self.secret)
            .field("kinds", &self.kinds)
            .field("stages", &self.stages)
            .finish()
    }
}

/// A webhook's signing secret. Its `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// The secret a configuration value names: `env:VAR` reads the
    /// environment variable `VAR` through `env`, anything else is the secret
    /// itself. At least `SECRET_BYTES_MIN` bytes either way.
    pub fn resolve(value: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match value.strip_prefix("env:") {
            Some(var) => Self::literal(&env(var).ok_or_else(|| {
                ConfigError::new(format!("the secret names the environment variable {var}, which is not set"))
            })?),
            None => Self::literal(value),
        }
    }

    /// `value` itself as the secret (never an environment variable: a push
    /// config's token comes from a client), at least `SECRET_BYTES_MIN` bytes.
    pub fn literal(value: &str) -> Result<Self, ConfigError> {
        if value.len() < SECRET_BYTES_MIN {
            return Err(ConfigError::new(format!(
                "the secret is {} bytes; use at least {SECRET_BYTES_MIN} random bytes",
                value.len()
            )));
        }
        Ok(Self(value.as_bytes().into()))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A webhook setting that cannot work; the server refuses to start with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: String) -> Self {
        Self(message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Runs one delivery task per configured webhook until shutdown begins.
/// Returns at once when none is configured.
pub async fn run(state: AppState) {
    let options = Arc::new(state.options().webhooks.clone());
    if options.hooks.is_empty() {
        return;
    }
    let client = match client(&options) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot build the HTTP client; no webhook is delivered");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for hook in &options.hooks {
        let dispatcher = Dispatcher {
            state: state.clone(),
            client: client.clone(),
            hook: hook.clone(),
            options: options.clone(),
            token_header: None,
        };
        tasks.spawn(dispatcher.run());
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "webhooks: a delivery task failed");
        }
    }
}

/// The HTTP client every webhook shares: the connect timeout, no redirects
/// (a receiver cannot send Baton to another address), no connection kept
/// longer than needed.
pub(crate) fn client(options: &WebhookOptions) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(options.connect_timeout_ms))
        .timeout(Duration::from_millis(options.response_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("baton-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One webhook's deliveries (or one push config's, `crate::push`).
pub(crate) struct Dispatcher {
    pub(crate) state: AppState,
    pub(crate) client: reqwest::Client,
    pub(crate) hook: Webhook,
    pub(crate) options: Arc<WebhookOptions>,
    /// Sent as `X-A2A-Notification-Token` (push configs only).
    pub(crate) token_header: Option<String>,
}

/// How long a gap in notice numbers may stay open before deliveries pass
/// it. Several writers (or replicas) number notices as they insert them, so a
/// lower number can commit after a higher one; a rolled-back insert leaves a
/// gap that never closes. Longer than any write transaction lasts: the
/// PostgreSQL store rolls back a transaction that ran longer than half of
/// this before its COMMIT, and the server ends one left idle that long; on
/// SQLite one writer numbers and commits in order, so gaps only come from
/// rollbacks. (A COMMIT that itself stalls past the rest of the wait is the
/// one case left; delivery would then pass its notices.)
pub const NOTICE_GAP_WAIT: Duration = Duration::from_secs(10);

/// How many of `ids` (ascending, all after `cursor`) follow `cursor` without
/// a gap.
pub fn contiguous(cursor: u64, ids: &[u64]) -> usize {
    ids.iter().zip(cursor + 1..).take_while(|(id, expected)| **id == *expected).count()
}

/// Whether the dispatcher goes on.
pub(crate) enum Flow {
    Next,
    Stop,
}

impl Dispatcher {
    async fn run(self) {
        // `None` while another replica holds the webhooks duty: the cursor is
        // read again from the delivery records when the duty comes back.
        let mut cursor: Option<u64> = None;
        // The latest record of a notice that was in flight when the cursor
        // was read, until that notice is delivered.
        let mut in_flight: Option<Delivery> = None;
        // A gap after the cursor, and since when it has been seen.
        let mut gap: Option<(u64, Instant)> = None;
        loop {
            if self.state.is_shutting_down() {
                return;
            }
            match self.state.store().holds_duty(SingletonDuty::Webhooks).await {
                Ok(true) => {}
                Ok(false) => {
                    if cursor.take().is_some() {
                        tracing::info!(webhook = %self.hook.name, "webhook deliveries moved to another replica");
                    }
                    if !self.pause(self.options.poll_ms).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(webhook = %self.hook.name, %error, "webhooks: cannot ask for the duty");
                    if !self.pause(self.options.poll_ms).await {
                        return;
                    }
                    continue;
                }
            }
            let after = match cursor {
                Some(after) => after,
                None => {
                    let Some((after, last)) = self.start().await else { return };
                    tracing::info!(webhook = %self.hook.name, after, "webhook deliveries started");
                    cursor = Some(after);
                    in_flight = last;
                    after
                }
            };
            let batch = match self.state.store().notices(after, self.options.batch_max).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(webhook = %self.hook.name, %error, "webhooks: cannot read the outbox");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if !self.pause(self.options.poll_ms).await {
                    return;
                }
                continue;
            }
            // Deliver in number order without skipping a notice that commits
            // late: stop at a gap until it closes or has stayed open for
            // `NOTICE_GAP_WAIT_MS` (a rolled-back insert leaves one for ever).
            let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            let mut ready = contiguous(after, &ids);
            if ready == 0 {
                match gap {
                    Some((at, since)) if at == after && since.elapsed() >= NOTICE_GAP_WAIT => {
                        tracing::info!(webhook = %self.hook.name, after, next = ids[0], "webhooks: passing a gap in notice numbers");
                        ready = contiguous(ids[0] - 1, &ids);
                    }
                    Some((at, _)) if at == after => {}
                    _ => gap = Some((after, Instant::now())),
                }
                if ready == 0 {
                    if !self.pause(self.options.poll_ms).await {
                        return;
                    }
                    continue;
                }
            }
            gap = None;
            for (id, notice) in batch.into_iter().take(ready) {
                let earlier = in_flight.take_if(|d| d.notice == id);
                if self.hook.wants(&notice)
                    && let Flow::Stop = self.deliver(id, &notice, earlier).await
                {
                    return;
                }
                cursor = Some(id);
            }
        }
    }

    /// The cursor to resume from (the last notice with a final delivery) and
    /// the latest record of a notice after it that was in flight.
    async fn start(&self) -> Option<(u64, Option<Delivery>)> {
        loop {
            let store = self.state.store();
            let name = &self.hook.name;
            let read = async {
                Ok::<_, baton_core::Error>((
                    store.delivery_cursor(name.clone()).await?,
                    store.last_delivery(name.clone()).await?,
                ))
            };
            match read.await {
                Ok((cursor, last)) => {
                    let after = cursor.unwrap_or(0);
                    let last = last.filter(|d| !d.status.is_final() && d.notice > after);
                    return Some((after, last));
                }
                Err(error) => {
                    tracing::warn!(webhook = %self.hook.name, %error, "webhooks: cannot read where to resume");
                    if !self.pause(self.options.poll_ms).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends one notice until it is delivered or given up, recording each
    /// attempt; `Stop` when shutdown interrupts it (the notice goes again
    /// after a restart). `earlier`: the latest record of attempts made before
    /// a restart; they count, and the next waits for its `retry_at`.
    async fn deliver(&self, id: u64, notice: &Notice, earlier: Option<Delivery>) -> Flow {
        let body = match wire_notice(id, notice).map(|n| serde_json::to_vec(&n)) {
            Some(Ok(body)) => body,
            Some(Err(error)) => {
                let status = DeliveryStatus::GaveUp { error: format!("cannot encode the notice: {error}") };
                self.record(id, 1, self.state.clock().now(), status).await;
                return Flow::Next;
            }
            None => return Flow::Next,
        };
        self.deliver_body(id, &body, earlier).await
    }

    /// Sends `body` as notice `id` until it is delivered or given up (see
    /// `deliver`).
    pub(crate) async fn deliver_body(&self, id: u64, body: &[u8], earlier: Option<Delivery>) -> Flow {
        let attempts_max = self.options.attempts_max.max(1);
        let mut first = 1;
        if let Some(earlier) = earlier {
            // At least one more attempt, even if the limit was lowered since.
            first = earlier.attempt.saturating_add(1).min(attempts_max);
            if let DeliveryStatus::Failed { retry_at, .. } = earlier.status
                && !self.wait_until(retry_at).await
            {
                return Flow::Stop;
            }
            tracing::info!(webhook = %self.hook.name, notice = id, attempt = first, "webhook delivery resumed");
        }
        for attempt in first..=attempts_max {
            let sent = tokio::select! {
                sent = self.post(id, body) => sent,
                () = self.state.shutting_down() => return Flow::Stop,
            };
            let at = self.state.clock().now();
            let status = match sent {
                Ok(http_status) => DeliveryStatus::Delivered { http_status },
                Err(error) if attempt >= attempts_max => DeliveryStatus::GaveUp { error },
                Err(error) => {
                    let wait = i64::try_from(self.options.backoff_ms(attempt)).unwrap_or(i64::MAX);
                    DeliveryStatus::Failed { error, retry_at: at.saturating_add(wait) }
                }
            };
            let retry_at = match &status {
                DeliveryStatus::Failed { retry_at, .. } => Some(*retry_at),
                _ => None,
            };
            match &status {
                DeliveryStatus::GaveUp { error } => {
                    tracing::warn!(webhook = %self.hook.name, notice = id, attempt, %error, "webhook delivery given up");
                }
                DeliveryStatus::Failed { error, .. } => {
                    tracing::info!(webhook = %self.hook.name, notice = id, attempt, %error, "webhook delivery failed; will retry");
                }
                DeliveryStatus::Delivered { .. } => {
                    tracing::debug!(webhook = %self.hook.name, notice = id, attempt, "webhook delivered");
                }
            }
            self.record(id, attempt, at, status).await;
            match retry_at {
                Some(retry_at) => {
                    if !self.wait_until(retry_at).await {
                        return Flow::Stop;
                    }
                }
                None => return Flow::Next,
            }
        }
        Flow::Next
    }

    /// One signed POST; the receiver's status when it is 2xx, else why not.
    async fn post(&self, id: u64, body: &[u8]) -> Result<u16, String> {
        let timestamp = self.state.clock().now();
        let signature = wire::sign(self.hook.secret.bytes(), timestamp, body);
        let sent = self
            .client
            .post(self.hook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, id.to_string())
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature);
        let sent = match &self.token_header {
            Some(token) => sent.header(crate::push::TOKEN_HEADER, token.as_str()),
            None => sent,
        };
        let sent = sent.body(body.to_vec()).send().await;
        match sent {
            // The answer's body is never read: nothing in it matters to Baton.
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => Err(format!("the receiver answered HTTP {}", response.status().as_u16())),
            Err(error) => Err(self.describe(error)),
        }
    }

    /// A failed request as a short text without its URL (which may carry a
    /// token in its query).
    fn describe(&self, error: reqwest::Error) -> String {
        let connect = error.is_connect();
        let timeout = error.is_timeout();
        let mut text = match (connect, timeout) {
            (true, true) => format!("no connection within {} ms", self.options.connect_timeout_ms),
            (true, false) => "cannot connect".to_owned(),
            (false, true) => format!("no answer within {} ms", self.options.response_timeout_ms),
            (false, false) => "the request failed".to_owned(),
        };
        let error = error.without_url();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        truncate(text, DELIVERY_ERROR_BYTES_MAX)
    }

    async fn record(&self, notice: u64, attempt: u32, at: Millis, status: DeliveryStatus) {
        let delivery = Delivery { notice, webhook: self.hook.name.clone(), attempt, at, status };
        if let Err(error) = self.state.store().execute(Op::RecordDelivery(delivery), None).await {
            // Delivery goes on: a lost record only means a restart may send
            // this notice again, which at-least-once allows.
            tracing::warn!(webhook = %self.hook.name, notice, attempt, %error, "webhooks: cannot record a delivery");
        }
    }

    /// Waits until the server's clock reaches `at`, looking at it at least
    /// every `poll_ms`; false if shutdown began first.
    async fn wait_until(&self, at: Millis) -> bool {
        loop {
            let now = self.state.clock().now();
            if now >= at {
                return true;
            }
            let left = u64::try_from(at - now).unwrap_or(u64::MAX);
            if !self.pause(left.min(self.options.poll_ms)).await {
                return false;
            }
        }
    }

    /// Sleeps `ms`; false if shutdown began first.
    pub(crate) async fn pause(&self, ms: u64) -> bool {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms.max(1))) => !self.state.is_shutting_down(),
            () = self.state.shutting_down() => false,
        }
    }
}

/// A notice as a webhook receiver sees it; `None` for a task update, which
/// only push configs are sent (`crate::push`).
pub fn wire_notice(id: u64, notice: &Notice) -> Option<WebhookNotice> {
    Some(match notice {
        Notice::Update { .. } => return None,
        Notice::Handoff { handoff } => WebhookNotice {
            id,
            kind: NoticeKind::Handoff,
            task: Some(handoff.task.0),
            at: Timestamp(outcome_at(&handoff.outcome).unwrap_or(handoff.at)),
            handoff: Some(convert::handoff(handoff)),
            alert: None,
            anomaly: None,
        },
        Notice::Alert { alert } => WebhookNotice {
            id,
            kind: NoticeKind::Alert,
            task: Some(alert.task.0),
            at: Timestamp(alert.at),
            handoff: None,
            anomaly: None,
            alert: Some(baton_api::Alert {
                task: alert.task.0,
                stage: alert.stage.to_string(),
                from_stage: alert.from.as_ref().map(ToString::to_string),
                at: Timestamp(alert.at),
                message: alert.message.clone(),
            }),
        },
        Notice::Anomaly { id: anomaly_id, anomaly } => WebhookNotice {
            id,
            kind: NoticeKind::Anomaly,
            task: None,
            at: Timestamp(anomaly.raised_at),
            handoff: None,
            alert: None,
            anomaly: Some(crate::http::stats::anomaly(*anomaly_id, anomaly.clone())),
        },
    })
}

fn outcome_at(outcome: &HandoffOutcome) -> Option<Millis> {
    match outcome {
        HandoffOutcome::Pending => None,
        HandoffOutcome::Accepted { at, .. }
        | HandoffOutcome::Rerouted { at, .. }
        | HandoffOutcome::Escalated { at, .. }
        | HandoffOutcome::Cancelled { at } => Some(*at),
    }
}

/// Checks a configured URL: `http`, a host, no user or password.
fn check_url(name: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let refuse = |why: &str| ConfigError::new(format!("webhook {name}: url {url:?} {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| refuse(&format!("is not a URL ({e})")))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(refuse(
                "uses https, which this build does not speak (no TLS backend); \
                 use http to a local TLS-terminating proxy or a receiver on a private network",
            ));
        }
        other => return Err(refuse(&format!("has scheme {other:?}; use http://host[:port]/path"))),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse("has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse("carries credentials; sign with the secret instead"));
    }
    Ok(parsed)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::resolve("0123456789abcdef", |_| None).unwrap()
    }

    #[test]
    fn urls_are_checked() {
        let check = |url: &str| Webhook::new("ops", url, secret(), &[NoticeKind::Handoff], None).map(|_| ());
        assert_eq!(check("http://127.0.0.1:9000/hooks"), Ok(()));
        assert_eq!(check("http://receiver.internal/x?k=v"), Ok(()));
        for (url, why) in [
            ("https://example.com/", "no TLS backend"),
            ("ftp://example.com/", "scheme \"ftp\""),
            ("file:///etc/passwd", "scheme \"file\""),
            ("http://user:pw@example.com/", "credentials"),
            ("not a url", "is not a URL"),
            ("http://", "empty host"),
        ] {
            let error = check(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn names_kinds_and_stages_are_checked() {
        let make = |name: &str, kinds: &[NoticeKind], stages: Option<Vec<String>>| {
            Webhook::new(name, "http://h/", secret(), kinds, stages).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(make("bad name", &[NoticeKind::Alert], None).unwrap_err().contains("letters"));
        assert!(make("", &[NoticeKind::Alert], None).unwrap_err().contains("letters"));
        assert!(make("ops", &[], None).unwrap_err().contains("kinds is empty"));
        assert!(make("ops", &[NoticeKind::Alert], Some(vec![])).unwrap_err().contains("stages"));
        assert_eq!(make("ops-1.a_b", &[NoticeKind::Alert], Some(vec!["desk".into()])), Ok(()));
    }

    #[test]
    fn secrets_resolve_and_never_show() {
        let env = |var: &str| (var == "HOOK_SECRET").then(|| "from-the-environment-32-bytes!!".to_owned());
        let from_env = Secret::resolve("env:HOOK_SECRET", env).unwrap();
        assert_eq!(from_env.bytes(), b"from-the-environment-32-bytes!!");
        assert!(Secret::resolve("env:MISSING", env).unwrap_err().to_string().contains("MISSING"));
        assert!(Secret::resolve("short", env).unwrap_err().to_string().contains("at least 16"));
        let hook = Webhook::new("ops", "http://h/", secret(), &[NoticeKind::Alert], None).unwrap();
        let shown =
            format!("{hook:?} {:?}", WebhookOptions { hooks: vec![hook.clone()], ..Default::default() });
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn options_are_checked_and_backoff_doubles_up_to_its_max() {
        let options = WebhookOptions { backoff_initial_ms: 100, backoff_max_ms: 700, ..Default::default() };
        assert_eq!(options.validate(), Ok(()));
        let waits: Vec<u64> = (1..=5).map(|a| options.backoff_ms(a)).collect();
        assert_eq!(waits, [100, 200, 400, 700, 700]);
        assert_eq!(options.backoff_ms(u32::MAX), 700);
        let bad = WebhookOptions { attempts_max: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("webhook_attempts_max"));
        let bad = WebhookOptions { backoff_initial_ms: 2, backoff_max_ms: 1, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("webhook_backoff_initial_ms"));
        let hook = Webhook::new("ops", "http://h/", secret(), &[NoticeKind::Alert], None).unwrap();
        let twice = WebhookOptions { hooks: vec![hook.clone(), hook], ..Default::default() };
        assert!(twice.validate().unwrap_err().to_string().contains("two webhooks"));
    }

    #[test]
    fn deliveries_stop_at_a_gap_in_notice_numbers() {
        assert_eq!(contiguous(4, &[5, 6, 7]), 3);
        assert_eq!(contiguous(4, &[5, 7, 8]), 1, "6 may still commit: stop before 7");
        assert_eq!(contiguous(4, &[6, 7]), 0, "5 is missing: nothing yet");
        assert_eq!(contiguous(5, &[6, 7]), 2, "once passed, the rest follows");
        assert_eq!(contiguous(0, &[]), 0);
    }

    #[test]
    fn kinds_and_stages_choose_the_notices() {
        use baton_core::store::{Alert, Handoff};
        use baton_core::{AgentId, HandoffId, StageName, TaskId};
        let task = TaskId(uuid::Uuid::nil());
        let handoff = |from: &str, to: &str| Notice::Handoff {
            handoff: Handoff {
                id: HandoffId(uuid::Uuid::nil()),
                task,
                from_stage: StageName::new(from),
                to_stage: StageName::new(to),
                from_agent: AgentId::new("a1"),
                at: 0,
                outcome: HandoffOutcome::Cancelled { at: 1 },
            },
        };
        let alert = |stage: &str| Notice::Alert {
            alert: Alert {
                task,
                stage: StageName::new(stage),
                from: None,
                at: 0,
                message: "escalated".into(),
            },
        };
        let hook = |kinds: &[NoticeKind], stages: Option<&[&str]>| {
            let stages = stages.map(|s| s.iter().map(|x| x.to_string()).collect());
            Webhook::new("ops", "http://h/", secret(), kinds, stages).unwrap()
        };
        let both = [NoticeKind::Handoff, NoticeKind::Alert];
        let all = hook(&both, None);
        assert!(all.wants(&handoff("a", "b")) && all.wants(&alert("inbox")));
        let alerts = hook(&[NoticeKind::Alert], None);
        assert!(!alerts.wants(&handoff("a", "b")) && alerts.wants(&alert("inbox")));
        let triage = hook(&both, Some(&["triage"]));
        assert!(triage.wants(&handoff("triage", "b")), "the source stage");
        assert!(triage.wants(&handoff("a", "triage")), "the target stage");
        assert!(!triage.wants(&handoff("a", "b")));
        assert!(!triage.wants(&alert("inbox")) && triage.wants(&alert("triage")));
        // The archive's copy of the rule agrees with the dispatcher's.
        for h in [&all, &alerts, &triage] {
            for n in [handoff("a", "b"), handoff("triage", "b"), alert("inbox"), alert("triage")] {
                assert_eq!(h.filter().wants(&n), h.wants(&n));
            }
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
