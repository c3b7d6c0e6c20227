//! Cross-replica wake-ups. After a commit that made tasks ready, the writer
//! sends `pg_notify(channel, {from, stages})` in a small transaction of its
//! own (never for a rolled-back batch; not inside the write transaction,
//! whose commit it would serialize with every other: see
//! `Writer::notify_replicas`);
//! this module's task LISTENs on its own connection and hands other
//! replicas' stages to the store's `ReadyListener`, exactly as the writer
//! does for its own commits. Its own notifications are skipped (the writer
//! already told the listener). The connection is re-made with a pause when it
//! drops; wake-ups missed meanwhile cost latency only, since long polls
//! re-check the store when their wait ends.
//!
//! A notification also names, per stage, the earliest position in claim
//! order the commit made ready or left ready (rows it had locked), and moves
//! this replica's ready cursors back to it (`crate::cursor`); a stage
//! without one sends them to the head, and so does every new LISTEN
//! connection (it may have missed some). Only `stages` wake claims.

use crate::cursor::{Cursors, Key};
use crate::options::PostgresOptions;
use baton_core::StageName;
use baton_core::store::ReadyListener;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

/// Bytes of one NOTIFY payload, at most (PostgreSQL refuses 8000 and more).
pub(crate) const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_000;

/// Pause before listening again after the connection dropped.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Bytes of a channel name (PostgreSQL identifiers are at most 63).
const CHANNEL_BYTES_MAX: usize = 63;

/// What one notification carries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// The replica that committed (`PostgresOptions::replica`).
    pub from: String,
    /// Stages with new ready work: their claims wake.
    pub stages: Vec<StageName>,
    /// The earliest position made or left ready, by stage, for the cursors
    /// (a stage in `stages` without one: unknown).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub firsts: HashMap<StageName, Key>,
}

/// Bytes of one stage's position in a payload, at most (key and JSON).
const FIRST_BYTES_MAX: usize = 120;

/// The channel of a schema: replicas of one schema share it, other schemas
/// (other Baton deployments, parallel tests) in the same database do not.
pub(crate) fn channel(schema: &str) -> String {
    let mut name = format!("baton_ready_{schema}");
    while name.len() > CHANNEL_BYTES_MAX {
        name.pop();
    }
    name
}

/// The payloads announcing `stages` and `firsts`, each within
/// `NOTIFY_PAYLOAD_BYTES_MAX`.
pub(crate) fn payloads(from: &str, stages: &[StageName], firsts: &HashMap<StageName, Key>) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk: Vec<StageName> = Vec::new();
    let mut bytes = from.len() + 48;
    let only_firsts = firsts.keys().filter(|s| !stages.contains(s));
    for stage in stages.iter().chain(only_firsts) {
        // Worst-case JSON escaping, twice: in `stages` and as a key of `firsts`.
        let cost = 2 * (stage.as_str().len() * 6 + 3) + FIRST_BYTES_MAX;
        if !chunk.is_empty() && bytes + cost > NOTIFY_PAYLOAD_BYTES_MAX {
            out.extend(encode(from, std::mem::take(&mut chunk), stages, firsts));
            bytes = from.len() + 48;
        }
        chunk.push(stage.clone());
        bytes += cost;
    }
    if !chunk.is_empty() {
        out.extend(encode(from, chunk, stages, firsts));
    }
    out
}

/// One payload for `chunk`: its stages with new work, and its positions.
fn encode(
    from: &str,
    chunk: Vec<StageName>,
    waking: &[StageName],
    firsts: &HashMap<StageName, Key>,
) -> Option<String> {
    let positions = chunk.iter().filter_map(|s| firsts.get(s).map(|k| (s.clone(), *k))).collect();
    let stages = chunk.into_iter().filter(|s| waking.contains(s)).collect();
    serde_json::to_string(&Ready { from: from.to_owned(), stages, firsts: positions }).ok()
}

/// Listens until the runtime shuts down.
pub(crate) async fn run(
    options: PostgresOptions,
    channel: String,
    listener: Arc<dyn ReadyListener>,
    cursors: Option<Arc<Cursors>>,
) {
    let Ok(config) = options.connection_config() else { return };
    loop {
        match listen_once(&config, &options, &channel, &listener, cursors.as_deref()).await {
            Ok(()) => tracing::warn!("the LISTEN connection closed; listening again"),
            Err(error) => tracing::warn!(%error, "LISTEN for other replicas' wake-ups failed; retrying"),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    options: &PostgresOptions,
    channel: &str,
    listener: &Arc<dyn ReadyListener>,
    cursors: Option<&Cursors>,
) -> Result<(), tokio_postgres::Error> {
    let connecting = tokio::time::timeout(options.io_timeout, config.connect(NoTls)).await;
    let Ok(connected) = connecting else { return Ok(()) };
    let (client, mut connection) = connected?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the LISTEN connection failed");
                    return;
                }
            }
        }
    });
    let quoted = channel.replace('"', "\"\"");
    client.batch_execute(&format!("LISTEN \"{quoted}\"")).await?;
    if let Some(cursors) = cursors {
        cursors.reset();
    }
    while let Some(payload) = rx.recv().await {
        match serde_json::from_str::<Ready>(&payload) {
            Ok(ready) if ready.from != options.replica => {
                if let Some(cursors) = cursors {
                    for stage in ready.stages.iter().filter(|s| !ready.firsts.contains_key(*s)) {
                        cursors.lower(stage, None);
                    }
                    for (stage, first) in &ready.firsts {
                        cursors.lower(stage, Some(*first));
                    }
                }
                if ready.stages.is_empty() {
                    continue;
                }
                let call = std::panic::AssertUnwindSafe(|| listener.ready(&ready.stages));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!("the ready listener panicked on a notification");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "an unreadable ready notification; ignored"),
        }
    }
    driver.abort();
    drop(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(n: u128) -> Key {
        Key { priority: -3, deadline_rank: i64::MIN, id: Uuid::from_u128(n) }
    }

    #[test]
    fn payloads_wake_only_new_work_and_carry_every_position() {
        let (a, b) = (StageName::new("a"), StageName::new("b"));
        let firsts = HashMap::from([(a.clone(), key(1)), (b.clone(), key(2))]);
        let sent = payloads("r1", std::slice::from_ref(&a), &firsts);
        assert_eq!(sent.len(), 1);
        let ready: Ready = serde_json::from_str(&sent[0]).expect("a payload");
        assert_eq!((ready.from.as_str(), ready.stages), ("r1", vec![a]), "only new work wakes");
        assert_eq!(ready.firsts, firsts, "left rows move cursors too");
        assert!(payloads("r1", &[], &HashMap::new()).is_empty(), "nothing to say, no NOTIFY");
    }

    #[test]
    fn payloads_stay_within_what_notify_takes() {
        let stages: Vec<StageName> =
            (0..400).map(|i| StageName::new(format!("stage-\"{i:0>40}\""))).collect();
        let firsts: HashMap<StageName, Key> = stages.iter().map(|s| (s.clone(), key(7))).collect();
        let sent = payloads("replica", &stages, &firsts);
        assert!(sent.len() > 1, "split");
        let mut heard = 0;
        for payload in &sent {
            assert!(payload.len() <= NOTIFY_PAYLOAD_BYTES_MAX, "{} bytes", payload.len());
            let ready: Ready = serde_json::from_str(payload).expect("a payload");
            assert_eq!(ready.stages.len(), ready.firsts.len());
            heard += ready.stages.len();
        }
        assert_eq!(heard, stages.len());
    }
}
