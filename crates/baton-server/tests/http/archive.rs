//! An archived task over HTTP: after the sweeper's archive round moves a
//! finished task past its retention, its show and history answer from the
//! archive in the same shape, its lineage and a repeated keyed submit answer
//! 410 `task_archived`, and its handoff's lookup 404. A live task, and one
//! finished within the retention, are untouched.

use super::{Api, id};
use serde_json::json;

#[tokio::test]
async fn an_archived_task_answers_from_the_archive_or_410() {
    let api = Api::with_options(|o| o.sweeper.retention_ms = Some(60_000));
    let submitted = api
        .post("/v1/tasks", json!({"stage": "a", "payload": {"n": 1}, "idempotency_key": "order-1"}))
        .await
        .expect(201);
    let task = id(&submitted);
    api.claim("sender", "a").await;
    let handoff = api
        .post(&format!("/v1/tasks/{task}/handoff"), json!({"agent": "sender", "epoch": 1, "to_stage": "b"}))
        .await
        .expect(200);
    let handoff_id = handoff["handoff_id"].as_str().unwrap().to_owned();
    let lease = api.claim("receiver", "b").await;
    api.post(&format!("/v1/tasks/{task}/complete"), json!({"agent": "receiver", "epoch": lease["epoch"]}))
        .await
        .expect(200);
    let live = id(&api.submit("a", json!({})).await);
    let shown = api.get(&format!("/v1/tasks/{task}")).await.expect(200);
    let history = api.get(&format!("/v1/tasks/{task}/history")).await.expect(200);

    // Within the retention nothing moves.
    assert_eq!(baton_server::archive::round(&api.state).await, (0, false));
    api.clock.advance(60_001);
    assert_eq!(baton_server::archive::round(&api.state).await, (1, false));

    assert_eq!(
        api.get(&format!("/v1/tasks/{task}")).await.expect(200),
        shown,
        "show answers from the archive"
    );
    assert_eq!(api.get(&format!("/v1/tasks/{task}/history")).await.expect(200), history);
    let gone = api.get(&format!("/v1/tasks/{task}/lineage")).await.expect(410);
    assert_eq!(
        (gone["code"].as_str(), gone["details"]["task"].as_str()),
        (Some("task_archived"), Some(&*task))
    );
    let again = api
        .post("/v1/tasks", json!({"stage": "a", "payload": {"n": 1}, "idempotency_key": "order-1"}))
        .await
        .expect(410);
    assert_eq!(again["code"], "task_archived");
    assert!(again["message"].as_str().unwrap().contains("/history"), "{again}");
    api.get(&format!("/v1/handoffs/{handoff_id}")).await.expect(404);
    // The live task is where it was; the listing no longer shows the archived one.
    api.get(&format!("/v1/tasks/{live}")).await.expect(200);
    let listed = api.snapshot().await;
    assert_eq!(listed.iter().map(|(t, ..)| t.clone()).collect::<Vec<_>>(), vec![live]);
}
