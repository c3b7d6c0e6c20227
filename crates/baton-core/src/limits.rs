//! Named limits. Every loop, batch, page, queue and payload has a `_max`; each
//! limit here has a default and a name that refusals carry (`limit_exceeded`
//! with `details.limit`), so users can find the setting that refused them.

use serde::{Deserialize, Serialize};

/// The limits the engine enforces; docs/reference/limits.md lists them with
/// their defaults and the errors that name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Payload of one task, in bytes of JSON text.
    pub payload_bytes_max: usize,
    /// Tasks one claim may take.
    pub claim_max: usize,
    /// Shortest lease a claim or heartbeat may ask for.
    pub lease_ttl_ms_min: i64,
    /// Longest lease a claim or heartbeat may ask for.
    pub lease_ttl_ms_max: i64,
    /// Leases one agent may hold at once.
    pub leases_per_agent_max: u64,
    /// Children one spawn may create.
    pub children_max: usize,
    /// Labels on one task.
    pub labels_max: usize,
    /// Bytes of one label key or value.
    pub label_bytes_max: usize,
    /// Bytes of a stage name.
    pub stage_bytes_max: usize,
    /// Bytes of an idempotency key.
    pub idempotency_key_bytes_max: usize,
    /// Bytes of a note, an error text or a cancel reason.
    pub note_bytes_max: usize,
    /// Bytes of findings or a result, as JSON text.
    pub findings_bytes_max: usize,
    /// Reroutes over a task's life before the ladder escalates instead.
    pub reroutes_max: u32,
    /// Depth of the parent chain (a task's ancestors).
    pub lineage_depth_max: usize,
    /// Operations the SQLite writer commits in one transaction.
    pub commit_batch_max: usize,
    /// Due tasks one timer sweep acts on.
    pub sweep_batch_max: usize,
    /// Tasks in one page of a listing.
    pub page_size_max: usize,
    /// How long a request's `Idempotency-Key` is remembered: for this long the
    /// same key from the same principal returns the first outcome; after it,
    /// the key is free again and its record may be purged (24 h by default).
    pub request_key_ttl_ms: i64,
    /// How long one compensation step of an aborted workflow may take before
    /// the aborted task climbs the ladder (its compensation task has its own).
    pub saga_step_within_ms: i64,
    /// Versions kept of one workflow, and workflows one store keeps.
    pub workflows_max: usize,
    /// Rollups one merge call may add.
    pub rollups_merge_max: usize,
    /// Finished tasks one archive pass moves out of the live store (one
    /// transaction, one chunk per hour of finish).
    pub archive_batch_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            payload_bytes_max: 256 * 1024,
            claim_max: 100,
            lease_ttl_ms_min: 1_000,
            lease_ttl_ms_max: 24 * 3_600_000,
            leases_per_agent_max: 1_000,
            children_max: 100,
            labels_max: 32,
            label_bytes_max: 256,
            stage_bytes_max: 128,
            idempotency_key_bytes_max: 256,
            note_bytes_max: 8 * 1024,
            findings_bytes_max: 64 * 1024,
            reroutes_max: 3,
            lineage_depth_max: 32,
            commit_batch_max: 256,
            sweep_batch_max: 512,
            page_size_max: 500,
            request_key_ttl_ms: 24 * 3_600_000,
            saga_step_within_ms: 24 * 3_600_000,
            workflows_max: 1_000,
            rollups_merge_max: 4_096,
            archive_batch_max: 256,
        }
    }
}
