//! The server's configuration file (`--config FILE`, `BATON_CONFIG`): TOML
//! with three optional sections. `[limits]` sets the engine's named limits
//! (`baton_core::Limits`), `[policies]` the default stage policy and named
//! stages (`baton_core::Policies`; durations in milliseconds), `[server]` the
//! HTTP limits (`baton_server::Options`, the webhook delivery limits among
//! them), and `[[webhooks]]` tables the webhooks (`WebhookTable`; checked
//! when the file is read: a bad URL or a short secret stops the start).
//! Unknown keys are refused with the
//! line and column, so a typo never silently keeps a default. Precedence:
//! flag > environment > file > default (the file holds no flag's setting).

use anyhow::Context;
use baton_core::policy::DEFAULT_HUMAN_STAGE;
use baton_core::{Limits, Policies, Rules, StagePolicy};
use baton_server::Options;
use baton_server::anomaly::AnomalyOptions;
use baton_server::metrics::MetricsOptions;
use baton_server::webhooks::{Secret, Webhook, WebhookOptions};
use serde::Deserialize;
use std::path::Path;

/// The whole file. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct File {
    pub limits: Limits,
    pub policies: Policies,
    pub server: ServerSection,
    /// `[[webhooks]]`: where notices are POSTed (docs/reference/webhooks.md).
    pub webhooks: Vec<WebhookTable>,
    /// The webhooks checked, secrets resolved: filled by `parse`.
    #[serde(skip)]
    checked_webhooks: Vec<Webhook>,
}

/// One `[[webhooks]]` table; `Webhook::new` checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTable {
    pub name: String,
    /// `http://host[:port]/path`.
    pub url: String,
    /// The secret, or `env:VAR` to read it from the environment.
    pub secret: ConfigSecret,
    /// `"handoff"`, `"alert"` and/or `"anomaly"`.
    pub kinds: Vec<baton_api::NoticeKind>,
    /// Only notices about these stages; every stage when absent.
    #[serde(default)]
    pub stages: Option<Vec<String>>,
}

/// A secret as written in the file; its `Debug` shows none of it.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ConfigSecret(String);

impl std::fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSecret(..)")
    }
}

/// The server's own limits; each key is an `Options` field of the same name.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub body_bytes_max: Option<usize>,
    pub json_depth_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub connections_max: Option<usize>,
    pub header_bytes_max: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub requests_per_second_max: Option<u64>,
    pub request_burst_max: Option<u64>,
    pub rate_limit_buckets_max: Option<usize>,
    pub wait_ms_max: Option<u64>,
    pub claim_stages_max: Option<usize>,
    pub webhook_attempts_max: Option<u32>,
    pub webhook_backoff_initial_ms: Option<u64>,
    pub webhook_backoff_max_ms: Option<u64>,
    pub webhook_connect_timeout_ms: Option<u64>,
    pub webhook_response_timeout_ms: Option<u64>,
    pub webhook_batch_max: Option<usize>,
    pub webhook_poll_ms: Option<u64>,
    pub metrics_flush_interval_ms: Option<u64>,
    pub metrics_flush_batch_max: Option<usize>,
    pub rollup_retention_ms: Option<i64>,
    pub anomaly_detection: Option<bool>,
    pub anomaly_window_ms: Option<i64>,
    pub anomaly_history_buckets: Option<usize>,
    pub anomaly_samples_min: Option<u64>,
    /// How long a finished task stays before it is archived; 0 is off. The
    /// `--retention` flag wins; without either, `serve` keeps 7 days and
    /// `dev` never archives.
    pub retention_ms: Option<u64>,
    /// How often the archive pass runs while retention is on.
    pub archive_interval_ms: Option<i64>,
}

impl File {
    /// Reads and checks a file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the configuration file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut file: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.checked_webhooks = file.check_webhooks(|var| std::env::var(var).ok())?;
        file.metrics_options(MetricsOptions::default())
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}; fix the metrics_*, rollup_* or anomaly_* keys of [server]"))?;
        file.rules()
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}; fix the [policies] or [limits] section"))?;
        Ok(file)
    }

    /// Each `[[webhooks]]` table as a checked `Webhook` (secrets looked up
    /// through `env`), and the delivery limits with them.
    fn check_webhooks(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Webhook>> {
        let mut hooks = Vec::with_capacity(self.webhooks.len());
        for (i, table) in self.webhooks.iter().enumerate() {
            let at = || format!("in [[webhooks]] number {} (name {:?})", i + 1, table.name);
            let secret = Secret::resolve(&table.secret.0, &env).with_context(at)?;
            let hook = Webhook::new(&table.name, &table.url, secret, &table.kinds, table.stages.clone())
                .with_context(at)?;
            hooks.push(hook);
        }
        let options = WebhookOptions { hooks, ..self.webhook_options(WebhookOptions::default()) };
        options.validate().context("fix the [[webhooks]] tables or the webhook_* keys of [server]")?;
        Ok(options.hooks)
    }

    /// The webhook delivery settings of `[server]` over `base`, with the
    /// checked webhooks.
    fn webhook_options(&self, base: WebhookOptions) -> WebhookOptions {
        let s = &self.server;
        WebhookOptions {
            hooks: self.checked_webhooks.clone(),
            attempts_max: s.webhook_attempts_max.unwrap_or(base.attempts_max),
            backoff_initial_ms: s.webhook_backoff_initial_ms.unwrap_or(base.backoff_initial_ms),
            backoff_max_ms: s.webhook_backoff_max_ms.unwrap_or(base.backoff_max_ms),
            connect_timeout_ms: s.webhook_connect_timeout_ms.unwrap_or(base.connect_timeout_ms),
            response_timeout_ms: s.webhook_response_timeout_ms.unwrap_or(base.response_timeout_ms),
            batch_max: s.webhook_batch_max.unwrap_or(base.batch_max),
            poll_ms: s.webhook_poll_ms.unwrap_or(base.poll_ms),
        }
    }

    /// The metrics and anomaly settings of `[server]` over `base`.
    fn metrics_options(&self, base: MetricsOptions) -> MetricsOptions {
        let s = &self.server;
        let anomaly = AnomalyOptions {
            enabled: s.anomaly_detection.unwrap_or(base.anomaly.enabled),
            window_ms: s.anomaly_window_ms.unwrap_or(base.anomaly.window_ms),
            history_buckets: s.anomaly_history_buckets.unwrap_or(base.anomaly.history_buckets),
            samples_min: s.anomaly_samples_min.unwrap_or(base.anomaly.samples_min),
            ..base.anomaly
        };
        MetricsOptions {
            flush_interval_ms: s.metrics_flush_interval_ms.unwrap_or(base.flush_interval_ms),
            flush_batch_max: s.metrics_flush_batch_max.unwrap_or(base.flush_batch_max),
            retention_ms: s.rollup_retention_ms.unwrap_or(base.retention_ms),
            anomaly,
            ..base
        }
    }

    /// The rules; the built-in human stage `inbox` stays human unless the
    /// file sets its policy itself.
    pub fn rules(&self) -> Rules {
        let mut policies = self.policies.clone();
        policies.stages.entry(DEFAULT_HUMAN_STAGE.into()).or_insert_with(StagePolicy::human);
        Rules { policies, limits: self.limits.clone() }
    }

    /// The server options with this file's settings over the defaults.
    pub fn options(&self, base: Options) -> Options {
        let s = &self.server;
        Options {
            body_bytes_max: s.body_bytes_max.unwrap_or(base.body_bytes_max),
            json_depth_max: s.json_depth_max.unwrap_or(base.json_depth_max),
            header_read_timeout_ms: s.header_read_timeout_ms.unwrap_or(base.header_read_timeout_ms),
            connections_max: s.connections_max.unwrap_or(base.connections_max),
            header_bytes_max: s.header_bytes_max.unwrap_or(base.header_bytes_max),
            request_timeout_ms: s.request_timeout_ms.unwrap_or(base.request_timeout_ms),
            requests_per_second_max: s.requests_per_second_max.unwrap_or(base.requests_per_second_max),
            request_burst_max: s.request_burst_max.unwrap_or(base.request_burst_max),
            rate_limit_buckets_max: s.rate_limit_buckets_max.unwrap_or(base.rate_limit_buckets_max),
            wait_ms_max: s.wait_ms_max.unwrap_or(base.wait_ms_max),
            claim_stages_max: s.claim_stages_max.unwrap_or(base.claim_stages_max),
            limits: self.limits.clone(),
            webhooks: self.webhook_options(base.webhooks.clone()),
            metrics: self.metrics_options(base.metrics.clone()),
            policies: self.rules().policies,
            sweeper: baton_server::state::SweeperOptions {
                archive_interval_ms: s.archive_interval_ms.unwrap_or(base.sweeper.archive_interval_ms),
                ..base.sweeper.clone()
            },
            ..base
        }
    }
}
