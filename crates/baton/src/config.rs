//! The server's configuration file (`--config FILE`, `BATON_CONFIG`): TOML
//! with three optional sections. `[limits]` sets the engine's named limits
//! (`baton_core::Limits`), `[policies]` the default stage policy and named
//! stages (`baton_core::Policies`; durations in milliseconds), `[server]` the
//! HTTP limits (`baton_server::Options`). Unknown keys are refused with the
//! line and column, so a typo never silently keeps a default. Precedence:
//! flag > environment > file > default (the file holds no flag's setting).

use anyhow::Context;
use baton_core::policy::DEFAULT_HUMAN_STAGE;
use baton_core::{Limits, Policies, Rules, StagePolicy};
use baton_server::Options;
use serde::Deserialize;
use std::path::Path;

/// The whole file. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct File {
    pub limits: Limits,
    pub policies: Policies,
    pub server: ServerSection,
}

/// The server's own limits; each key is an `Options` field of the same name.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub body_bytes_max: Option<usize>,
    pub json_depth_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub requests_per_second_max: Option<u64>,
    pub request_burst_max: Option<u64>,
    pub rate_limit_buckets_max: Option<usize>,
    pub wait_ms_max: Option<u64>,
    pub claim_stages_max: Option<usize>,
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
        let file: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.rules()
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}; fix the [policies] or [limits] section"))?;
        Ok(file)
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
            request_timeout_ms: s.request_timeout_ms.unwrap_or(base.request_timeout_ms),
            requests_per_second_max: s.requests_per_second_max.unwrap_or(base.requests_per_second_max),
            request_burst_max: s.request_burst_max.unwrap_or(base.request_burst_max),
            rate_limit_buckets_max: s.rate_limit_buckets_max.unwrap_or(base.rate_limit_buckets_max),
            wait_ms_max: s.wait_ms_max.unwrap_or(base.wait_ms_max),
            claim_stages_max: s.claim_stages_max.unwrap_or(base.claim_stages_max),
            limits: self.limits.clone(),
            policies: self.rules().policies,
            ..base
        }
    }
}
