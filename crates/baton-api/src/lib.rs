//! Baton's wire types: the only types serialized over HTTP. The server converts
//! its domain types into these; clients (the Rust client, the CLI) speak only
//! these. Requests refuse unknown fields; responses tolerate them. Times are
//! RFC 3339 UTC strings with milliseconds (`Timestamp`), durations integer
//! milliseconds in fields named `*_ms`, refusals `{code, message, details}`.
//! Each type also describes itself for the OpenAPI document (`utoipa`
//! `ToSchema`; query strings `IntoParams`), so the schema is written next to
//! the serde attributes it must agree with. Dependencies: serde, serde_json,
//! uuid and utoipa (no HTTP stack), so clients stay light; `workflow` also
//! parses workflow files (toml) into `baton-core`'s checked model, and
//! `webhook` signs and verifies webhook notices (hmac, sha2).

pub mod auth;
pub mod error;
pub mod inbox;
pub mod lineage;
pub mod metrics;
pub mod payload;
pub mod request;
pub mod response;
pub mod time;
pub mod webhook;
pub mod workflow;
pub mod workflows;

pub use auth::{
    PrincipalList, PrincipalRequest, Role, Route, TokenCreated, TokenInfo, TokenList, TokenRequest, Whoami,
};
pub use error::{ErrorBody, ErrorCode};
pub use inbox::{
    InboxClaimRequest, InboxItem, InboxMessage, InboxPage, InboxQuery, Resolution, ResolveRequest, StuckKind,
    StuckList, StuckQuery, StuckTask,
};
pub use lineage::{
    ChainVerification, Lineage, LineageChild, LineageStep, LineageTotals, LineageTree, StepExit,
};
pub use metrics::{
    AlertQuery, Anomaly, AnomalyList, BaselineValue, EdgeStats, Latency, Series, SeriesBaseline, SeriesPoint,
    SeriesQuery, StageStats, Stats, StatsQuery,
};
pub use payload::Payload;
pub use request::{
    AbortRequest, CancelRequest, ChildSpec, ClaimNext, ClaimRequest, CommentRequest, CompleteRequest,
    FailRequest, HandoffQuery, HandoffRequest, HeartbeatRequest, JoinRequest, ListQuery, ReleaseRequest,
    SpawnRequest, SubmitRequest,
};
pub use response::{
    ActResponse, ClaimResponse, Custodian, CustodianKind, Event, FenceToken, Handoff, HandoffOutcome, Health,
    History, Index, Join, JoinMode, Lease, LeaseInfo, Position, SkipReason, SkippedStage, Task, TaskPage,
    TaskStateName, WaitKind, Waiting,
};
pub use time::Timestamp;
pub use webhook::{Alert, Delivery, DeliveryPage, DeliveryQuery, DeliveryStatus, NoticeKind, WebhookNotice};
pub use workflow::{WorkflowFileError, parse_workflow, render_workflow};
pub use workflows::{
    A2aView, AppliedWorkflow, ApplyWorkflowRequest, BackoffView, CanaryView, StagePolicyView, WorkflowList,
    WorkflowQuery, WorkflowRef, WorkflowStageView, WorkflowView,
};

/// A task's id (UUIDv7).
pub type TaskId = uuid::Uuid;
/// A handoff's id (UUIDv7).
pub type HandoffId = uuid::Uuid;

/// Limits of the wire contract that the server enforces before the store.
pub mod limits {
    /// Bytes of one request body.
    pub const BODY_BYTES_MAX: usize = 1024 * 1024;
    /// The longest a claim or a handoff-outcome call may wait.
    pub const WAIT_MS_MAX: u64 = 60_000;
    /// Tasks per page when a listing names no `limit`.
    pub const PAGE_SIZE_DEFAULT: u32 = 50;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields() {
        let err = serde_json::from_str::<ClaimRequest>(r#"{"stages":["a"],"maxx":3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `maxx`"), "{err}");
        let err = serde_json::from_str::<CompleteRequest>(r#"{"epoch":1,"extra":true}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn defaults_fill_optional_request_fields() {
        let claim: ClaimRequest = serde_json::from_str(r#"{"stages":["a"]}"#).unwrap();
        assert_eq!((claim.max, claim.wait_ms, claim.lease_ms), (1, 0, None));
        let submit: SubmitRequest = serde_json::from_str(r#"{"stage":"a","payload":{"x": [1, 2]}}"#).unwrap();
        assert_eq!(submit.payload.get(), r#"{"x": [1, 2]}"#, "payload text is kept as sent");
        assert_eq!(serde_json::to_string(&submit).unwrap(), r#"{"stage":"a","payload":{"x": [1, 2]}}"#);
    }

    #[test]
    fn handoff_outcome_is_tagged_by_status() {
        let outcome = HandoffOutcome::Accepted { by: "a1".into(), at: Timestamp(0), epoch: 2 };
        let text = serde_json::to_string(&outcome).unwrap();
        assert_eq!(text, r#"{"status":"accepted","by":"a1","at":"1970-01-01T00:00:00.000Z","epoch":2}"#);
        assert_eq!(serde_json::from_str::<HandoffOutcome>(&text).unwrap(), outcome);
    }
}
