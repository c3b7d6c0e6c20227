//! Baton's domain, pure: tasks and their states, stage policies and limits, the
//! custody state machine (`decide`), the hash-chained event, and the engine that
//! runs one operation against a store's transaction (load, decide, save if
//! unchanged). This crate does no IO, depends on no runtime, database or HTTP
//! crate, and never reads the clock: `now` is an argument everywhere. The one
//! exception is `clock::SystemClock`, which binaries construct and inject.

pub mod archive;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod clock;
pub mod command;
pub mod decide;
pub mod engine;
pub mod event;
pub mod gauge;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod rejection;
pub mod store;
pub mod task;
pub mod workflow;

pub use clock::{Clock, SystemClock};
pub use command::{Action, Command, JoinSpec, NewChild, NewTask, Report};
pub use decide::{Change, decide, submit};
pub use engine::{Rules, Tx};
pub use event::{Actor, Event, EventKind, Hash, Position};
pub use gauge::{GaugeDeltas, StageCounts};
pub use ids::{AgentId, HandoffId, Millis, StageName, TaskId};
pub use limits::Limits;
pub use policy::{Backoff, DEADLINE_BOOST, Policies, StagePolicy};
pub use rejection::Rejection;
pub use store::{
    ActOutcome, ActRequest, Alert, CancelRequest, ClaimNext, ClaimRequest, Claimed, CommentRequest,
    Credential, Error, Grant, Handoff, HandoffOutcome, Op, OpOutcome, Page, PushConfig, RequestKey,
    RequestRecord, SingletonDuty, Skipped, StageGauge, Store, StoreFuture, Submitted, TaskFilter, TaskView,
};
pub use task::{Custodian, IndexColumns, Join, JoinMode, Lease, StateName, Task, TaskState, Wait};
pub use workflow::{A2aSettings, Canary, GraphError, Workflow, WorkflowRef, WorkflowStage};
