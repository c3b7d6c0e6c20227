//! A2A push notifications: each push config an A2A client made
//! (`CreateTaskPushNotificationConfig`, kept in the store by `crate::a2a`) is
//! followed like a webhook filtered to one task. The engine writes an outbox
//! notice (`Notice::Update`) for every change of a task whose workflow lists
//! push URL prefixes; a follower per config reads its task's notices
//! (`Store::task_notices`) after its cursor and POSTs each update after the
//! config was made as an A2A status-update event, through the webhook
//! dispatcher's own delivery (`webhooks::Dispatcher::deliver_body`): the same
//! HMAC-SHA256 signature headers (keyed by the config's token, which the
//! client chose, so it can verify them), the same retries with backoff, and
//! the same delivery records (`GET /v1/deliveries`, under the config's
//! `webhook_name`), so a restart resumes where each config left off. The
//! token is also sent as `X-A2A-Notification-Token`, which A2A receivers
//! check.
//!
//! A follower ends when its config is deleted, or when its task has finished
//! and every update is sent (it is not started again until the server
//! restarts, when it finds nothing left to send). Only the replica holding
//! the webhooks duty delivers. Configs name only URLs under the workflow's
//! `[a2a] push_url_prefixes`, checked when they are made, so a request can
//! make Baton call only where the operator allowed.

use crate::convert;
use crate::state::AppState;
use crate::webhooks::{self, Dispatcher, Flow, Secret, Webhook};
use baton_api::NoticeKind;
use baton_core::store::{Notice, PushConfig};
use baton_core::{SingletonDuty, TaskId};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The header that carries a push config's token, as A2A receivers expect.
pub const TOKEN_HEADER: &str = "x-a2a-notification-token";
/// Push configs one server follows at once (the rest wait for a slot).
pub const PUSH_CONFIGS_MAX: usize = 1_000;
/// Push configs one task may have.
pub const PUSH_CONFIGS_PER_TASK_MAX: usize = 8;

/// A config as a webhook: its name, URL and token, checked as a configured
/// webhook's are (`http`, a host, no credentials; a long enough secret).
/// The kinds are not used (a follower picks its notices itself).
pub fn hook(config: &PushConfig) -> Result<Webhook, String> {
    let secret = Secret::literal(&config.token).map_err(|e| e.to_string())?;
    Webhook::new(&config.webhook_name(), &config.url, secret, &[NoticeKind::Handoff], None)
        .map_err(|e| e.to_string())
}

/// The dispatcher that delivers a config's updates.
fn dispatcher(state: &AppState, client: reqwest::Client, config: &PushConfig) -> Result<Dispatcher, String> {
    let hook = hook(config)?;
    Ok(Dispatcher {
        state: state.clone(),
        client,
        hook,
        options: Arc::new(state.options().webhooks.clone()),
        token_header: Some(config.token.clone()),
    })
}

/// Follows every push config until shutdown: every `webhook_poll_ms` it
/// starts a follower for each config that has none running.
pub async fn run(state: AppState) {
    let options = state.options().webhooks.clone();
    let client = match webhooks::client(&options) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "push: cannot build the HTTP client; no push notification is delivered");
            return;
        }
    };
    let mut running: HashMap<String, tokio::task::JoinHandle<bool>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let idle = Dispatcher {
        state: state.clone(),
        client: client.clone(),
        hook: match Webhook::new("push", "http://127.0.0.1/", idle_secret(), &[NoticeKind::Handoff], None) {
            Ok(hook) => hook,
            Err(error) => {
                tracing::error!(%error, "push: cannot start");
                return;
            }
        },
        options: Arc::new(options.clone()),
        token_header: None,
    };
    loop {
        let mut done = Vec::new();
        for (name, handle) in &running {
            if handle.is_finished() {
                done.push(name.clone());
            }
        }
        for name in done {
            if let Some(handle) = running.remove(&name)
                && let Ok(true) = handle.await
            {
                finished.insert(name);
            }
        }
        if matches!(state.store().holds_duty(SingletonDuty::Webhooks).await, Ok(true)) {
            match state.store().push_configs(None, PUSH_CONFIGS_MAX).await {
                Ok(configs) => {
                    for config in configs {
                        let name = config.webhook_name();
                        if running.contains_key(&name) || finished.contains(&name) {
                            continue;
                        }
                        match dispatcher(&state, client.clone(), &config) {
                            Ok(d) => {
                                running.insert(name, tokio::spawn(follow(d, config)));
                            }
                            Err(error) => {
                                tracing::warn!(webhook = %name, %error, "push: a stored config cannot be delivered");
                                finished.insert(name);
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "push: cannot read the push configs"),
            }
        }
        if !idle.pause(options.poll_ms).await {
            break;
        }
    }
    for (_, handle) in running {
        let _ = handle.await;
    }
}

/// A secret for the idle dispatcher `run` only pauses with (it sends nothing).
fn idle_secret() -> Secret {
    Secret::literal("push-dispatcher-never-sends").expect("long enough")
}

/// Delivers one config's updates in order; true when its task has finished
/// and everything is sent (or the config cannot be sent to), false when it
/// stopped for another reason (deleted config, lost duty, shutdown).
async fn follow(d: Dispatcher, config: PushConfig) -> bool {
    let store = d.state.store();
    let name = config.webhook_name();
    let (mut cursor, mut in_flight) = loop {
        let read = async {
            Ok::<_, baton_core::Error>((
                store.delivery_cursor(name.clone()).await?,
                store.last_delivery(name.clone()).await?,
            ))
        };
        match read.await {
            Ok((cursor, last)) => {
                let after = cursor.unwrap_or(0);
                break (after, last.filter(|l| !l.status.is_final() && l.notice > after));
            }
            Err(error) => {
                tracing::warn!(webhook = %name, %error, "push: cannot read where to resume");
                if !d.pause(d.options.poll_ms).await {
                    return false;
                }
            }
        }
    };
    loop {
        if d.state.is_shutting_down() || !matches!(store.holds_duty(SingletonDuty::Webhooks).await, Ok(true))
        {
            return false;
        }
        let live = store.push_configs(Some(config.task), PUSH_CONFIGS_PER_TASK_MAX + 1).await;
        if live.is_ok_and(|configs| !configs.iter().any(|c| c.id == config.id)) {
            return false;
        }
        // Read the task before its notices: finished then, its last notice
        // is in the outbox now.
        let ended = matches!(store.get(config.task).await, Ok(Some(view)) if view.task.is_terminal());
        let batch = match store.task_notices(config.task, cursor, d.options.batch_max).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(webhook = %name, %error, "push: cannot read the outbox");
                if !d.pause(d.options.poll_ms).await {
                    return false;
                }
                continue;
            }
        };
        if batch.is_empty() {
            if ended {
                return true;
            }
            if !d.pause(d.options.poll_ms).await {
                return false;
            }
            continue;
        }
        for (id, notice) in batch {
            if let Notice::Update { version, .. } = notice
                && version > config.after_version
            {
                let earlier = in_flight.take_if(|l| l.notice == id);
                let body = match update(&d.state, config.task, version).await {
                    Ok(body) => body,
                    Err(error) => {
                        tracing::warn!(webhook = %name, %error, "push: cannot build an update; will retry");
                        if !d.pause(d.options.poll_ms).await {
                            return false;
                        }
                        break;
                    }
                };
                if let Flow::Stop = d.deliver_body(id, body.to_string().as_bytes(), earlier).await {
                    return false;
                }
            }
            cursor = id;
        }
    }
}

/// The A2A status-update event for version `version` of task `task`, as
/// `SubscribeToTask` streams it: `{"statusUpdate": {taskId, contextId,
/// status: {state, message, timestamp}}}` (the state is the task's now).
pub async fn update(state: &AppState, task: TaskId, version: u64) -> Result<Value, String> {
    let store = state.store();
    let fail = |e: baton_core::Error| e.to_string();
    let view = store.get(task).await.map_err(fail)?.ok_or("the task is gone")?;
    let events = store.history(task).await.map_err(fail)?;
    let reference = view.task.workflow.clone().ok_or("the task has no workflow")?;
    let latest = store.workflow(reference.name.clone(), None).await.map_err(fail)?.ok_or("no workflow")?;
    let own = store.workflow(reference.name.clone(), Some(reference.version)).await.map_err(fail)?;
    let mut shape = convert::workflow(&latest);
    if let Some(own) = own {
        let own = convert::workflow(&own);
        shape.entry = own.entry;
        shape.stages = own.stages;
    }
    let api_task = convert::task(&view.task, None);
    let api_events: Vec<_> = events.iter().map(convert::event).collect();
    let a2a = crate::a2a::mapping::task(&shape, &api_task, &api_events);
    let message = a2a["history"]
        .as_array()
        .and_then(|h| {
            h.iter().find(|m| m.pointer("/metadata/version").and_then(Value::as_u64) == Some(version))
        })
        .cloned()
        .ok_or_else(|| format!("no event {version}"))?;
    Ok(json!({ "statusUpdate": {
        "taskId": a2a["id"],
        "contextId": a2a["contextId"],
        "status": { "state": a2a["status"]["state"], "message": message, "timestamp": a2a["status"]["timestamp"] },
    }}))
}
