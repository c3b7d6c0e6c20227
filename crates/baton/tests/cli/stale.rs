//! T3 over HTTP (docs/glossary.md): a paused holder is fenced off.
//!
//! Goal: once a holder's lease expired and another agent took the task, every
//! holder call of the old lease (heartbeat, complete, handoff, release, fail)
//! is refused with 409 `lease_lost` carrying the task's current epoch and
//! state, and changes nothing.
//!
//! Method: `baton dev` in a temp dir; `CYCLES` cycles run concurrently, each on
//! its own stage. Agent A claims with a 1 s lease and then pauses (makes no
//! call). The test waits, bounded, until the server's sweeper has expired the
//! lease (the epoch rises, the task waits again); A's calls are refused
//! already. Agent B claims and completes. A's calls are refused again with B's
//! epoch and state `done`, once through a raw HTTP request to see the status;
//! the task's history and row are the same before and after A's attempts.
//! Finally the stopped server's SQLite file passes the testkit's history
//! checker, and no event after the expiry is A's.

use super::support::Server;
use baton_client::api::{
    self, CompleteRequest, FailRequest, HandoffRequest, HeartbeatRequest, ReleaseRequest,
};
use baton_client::{Client, Error, TaskId};
use baton_core::{EventKind, Store, TaskId as CoreId};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::{block_on, check_store};
use serde_json::{Value, json};
use std::time::Duration;

const CYCLES: usize = 8;
const LEASE_MS: u64 = 1_000;
/// The longest the sweeper may take to expire a lease past its end.
const EXPIRY_PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn a_paused_holder_is_fenced_off_once_its_lease_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let address = server.address.clone();
    let tasks: Vec<TaskId> = runtime.block_on(async {
        let cycles: Vec<_> = (0..CYCLES).map(|i| tokio::spawn(cycle(address.clone(), i))).collect();
        let mut tasks = Vec::new();
        for cycle in cycles {
            tasks.push(cycle.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
        }
        tasks
    });
    drop(runtime);
    server.stop();

    let store = SqliteStore::open(server.database(), SqliteOptions::default()).expect("open the store");
    let report =
        check_store(&store).unwrap_or_else(|p| panic!("history check failed:\n  {}", p.join("\n  ")));
    assert_eq!((report.tasks, report.live), (CYCLES, 0));
    for (i, task) in tasks.iter().enumerate() {
        let events = block_on(store.history(CoreId(*task))).unwrap();
        let expiry =
            events.iter().position(|e| e.kind == EventKind::LeaseExpired).expect("the lease expired");
        let a = format!("agent:a{i}");
        assert!(
            events[expiry..].iter().all(|e| e.actor.to_string() != a),
            "nothing of A's after the expiry: {:?}",
            events.iter().map(|e| (e.kind.as_str(), e.actor.to_string())).collect::<Vec<_>>()
        );
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["submitted", "claimed", "lease_expired", "claimed", "completed"]);
    }
    store.close();
}

/// One cycle on stage `stale-{i}`; returns the task.
async fn cycle(address: String, i: usize) -> TaskId {
    let stage = format!("stale-{i}");
    let a = Client::new(&address).unwrap().with_agent(format!("a{i}"));
    let b = Client::new(&address).unwrap().with_agent(format!("b{i}"));
    let mut submit = api::SubmitRequest::new(&stage, api::Payload::from_json(r#"{"x":1}"#).unwrap());
    submit.idempotency_key = Some(format!("stale-{i}"));
    let task = a.submit(&submit).await.unwrap().task.id;

    let claim = |lease_ms| api::ClaimRequest {
        stages: vec![stage.clone()],
        max: 1,
        wait_ms: 5_000,
        lease_ms: Some(lease_ms),
        agent: None,
    };
    let leases = a.claim(&claim(LEASE_MS)).await.unwrap();
    assert_eq!(leases.len(), 1);
    let stale = leases[0].epoch;

    // A pauses. The sweeper expires the lease and raises the epoch.
    let expired = tokio::time::timeout(EXPIRY_PATIENCE, async {
        loop {
            let now = a.get(task).await.unwrap();
            if now.epoch > stale {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the sweeper expires the lease");
    assert_eq!(expired.state, api::TaskStateName::Waiting);
    assert_eq!(expired.epoch, stale + 1);
    refused_everything(&a, task, stale, stale + 1, "waiting").await;

    // B takes the task and finishes it.
    let leases = b.claim(&claim(30_000)).await.unwrap();
    assert_eq!(leases.len(), 1);
    let current = leases[0].epoch;
    assert_eq!(current, stale + 2);
    let done = b
        .complete(
            task,
            &CompleteRequest { epoch: current, findings: Some(json!({"by": "b"})), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(done.task.state, api::TaskStateName::Done);

    // A wakes up and tries everything with its old epoch.
    let before = (a.history(task).await.unwrap(), a.get(task).await.unwrap());
    refused_everything(&a, task, stale, current, "done").await;
    let raw = reqwest::Client::new()
        .post(format!("{address}/v1/tasks/{task}/complete"))
        .json(&json!({"epoch": stale, "agent": format!("a{i}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 409);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["code"], "lease_lost");
    assert_eq!(body["details"]["current_epoch"], current);
    assert_eq!(body["details"]["state"], "done");
    let after = (a.history(task).await.unwrap(), a.get(task).await.unwrap());
    assert_eq!(before, after, "A's attempts changed nothing");
    task
}

/// A's heartbeat, complete, handoff, release and fail with epoch `stale`
/// are each refused with `lease_lost` naming `current` and `state`.
async fn refused_everything(a: &Client, task: TaskId, stale: u64, current: u64, state: &str) {
    let attempts = [
        (
            "heartbeat",
            a.heartbeat(
                task,
                &HeartbeatRequest { epoch: stale, agent: None, lease_ms: None, note: None, claim_next: None },
            )
            .await,
        ),
        ("complete", a.complete(task, &CompleteRequest { epoch: stale, ..Default::default() }).await),
        (
            "handoff",
            a.handoff(
                task,
                &HandoffRequest {
                    epoch: stale,
                    agent: None,
                    to_stage: "elsewhere".into(),
                    note: None,
                    findings: None,
                    confidence: None,
                    claim_next: None,
                },
            )
            .await,
        ),
        ("release", a.release(task, &ReleaseRequest { epoch: stale, ..Default::default() }).await),
        (
            "fail",
            a.fail(
                task,
                &FailRequest {
                    epoch: stale,
                    agent: None,
                    error: "late".into(),
                    retryable: true,
                    claim_next: None,
                },
            )
            .await,
        ),
    ];
    for (verb, result) in attempts {
        match result {
            Err(Error::LeaseLost { current_epoch, state: got, .. }) => {
                assert_eq!(current_epoch, Some(current), "{verb}");
                assert_eq!(got.as_deref(), Some(state), "{verb}");
            }
            other => panic!("a stale {verb} must be refused with lease_lost: {other:?}"),
        }
    }
}
