//! The in-memory store's archive: chunks (gzip JSON lines, the format of
//! `baton_core::archive`) kept in memory by name, an index from task to
//! chunk and from idempotency key to task, as the database stores keep
//! them. A pass reads its candidates under the lock, encodes the chunks and
//! then runs `Op::Archive` through the engine like any write, so the
//! deletion and the index commit (or roll back) together.
//!
//! Unlike the database stores, this one keeps the outbox (notices, delivery
//! records) and the alerts list of archived tasks: they are numbered by
//! position here, and nothing in memory needs bounding across restarts.

use super::{MemError, MemTx, Row, State, Undo};
use baton_core::archive::{
    ARCHIVE_FORMAT, ARCHIVE_SCAN_FACTOR, ArchiveChunk, ArchiveCommit, ArchiveRequest, ArchivedTask,
    Candidate, eligible, find_in_chunk, finished_at,
};
use baton_core::store::Notice;
use baton_core::{Handoff, PushConfig, TaskId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the store's archive holds.
#[derive(Debug, Default, Clone)]
pub(super) struct Archive {
    /// Chunks by name: their bytes and the tasks indexed in them.
    chunks: BTreeMap<String, (Vec<u8>, Vec<TaskId>)>,
    /// Task -> its chunk.
    tasks: HashMap<TaskId, String>,
    /// (namespace, idempotency key) -> archived task.
    keys: HashMap<(String, String), TaskId>,
}

/// What an archive commit removed, to put back on rollback.
#[derive(Debug)]
pub(super) struct Removed {
    rows: Vec<Row>,
    handoffs: Vec<Handoff>,
    pushes: Vec<PushConfig>,
    chunks: Vec<String>,
}

impl State {
    /// Puts back what an archive commit removed.
    pub(super) fn unarchive(&mut self, removed: Removed) {
        for name in removed.chunks {
            if let Some((_, ids)) = self.archive.chunks.remove(&name) {
                for id in ids {
                    self.archive.tasks.remove(&id);
                }
            }
        }
        for row in removed.rows {
            if let Some(key) = &row.task.idempotency_key {
                let key = (row.task.namespace.clone(), key.clone());
                self.archive.keys.remove(&key);
                self.keys.insert(key, row.task.id);
            }
            self.indexes.add(&row.task);
            self.tasks.insert(row.task.id, row);
        }
        for h in removed.handoffs {
            self.handoffs.insert(h.id, h);
        }
        for c in removed.pushes {
            self.push_configs.insert((c.task, c.id.clone()), c);
        }
    }
    /// The records of up to `limit` tasks a pass may move now, with their
    /// revisions, oldest finish first.
    pub(super) fn archive_candidates(
        &self,
        request: &ArchiveRequest,
        limit: usize,
    ) -> Vec<(ArchivedTask, u64)> {
        let mut finished: Vec<_> = self
            .tasks
            .values()
            .filter_map(|r| finished_at(&r.task).filter(|at| *at < request.finished_before).map(|at| (at, r)))
            .collect();
        finished.sort_by_key(|(at, r)| (*at, r.task.id));
        finished.truncate(limit.saturating_mul(ARCHIVE_SCAN_FACTOR));
        let parents: HashSet<TaskId> = self.tasks.values().filter_map(|r| r.task.parent).collect();
        let mut notices: HashMap<TaskId, Vec<(u64, Notice)>> = HashMap::new();
        for (i, n) in self.notices.iter().enumerate() {
            if let Some(task) = n.task() {
                notices.entry(task).or_default().push((i as u64 + 1, n.clone()));
            }
        }
        let finals: HashSet<(&str, u64)> = self
            .deliveries
            .iter()
            .filter(|d| d.status.is_final())
            .map(|d| (d.webhook.as_str(), d.notice))
            .collect();
        let mut out = Vec::new();
        for (at, row) in finished {
            if out.len() >= limit {
                break;
            }
            let id = row.task.id;
            let pushes: Vec<PushConfig> = self
                .push_configs
                .range((id, String::new())..)
                .take_while(|((t, _), _)| *t == id)
                .map(|(_, c)| c.clone())
                .collect();
            let task_notices = notices.get(&id).map_or(&[][..], Vec::as_slice);
            let candidate = Candidate {
                task: &row.task,
                parent: row.task.parent.and_then(|p| self.tasks.get(&p)).map(|p| &p.task),
                has_children: parents.contains(&id),
                notices: task_notices,
                pushes: &pushes,
            };
            if !eligible(&candidate, request, |hook, notice| finals.contains(&(hook, notice))) {
                continue;
            }
            let mut handoffs: Vec<&Handoff> = self.handoffs.values().filter(|h| h.task == id).collect();
            handoffs.sort_by_key(|h| (h.at, h.id));
            let record = ArchivedTask {
                format: ARCHIVE_FORMAT,
                id,
                namespace: row.task.namespace.clone(),
                idempotency_key: row.task.idempotency_key.clone(),
                finished_at: at,
                head: row.head(),
                row: to_json(&row.task),
                payload: row.payload.clone(),
                events: row.events.iter().map(to_json).collect(),
                handoffs: handoffs.into_iter().map(to_json).collect(),
                alerts: self.alerts.iter().filter(|a| a.task == id).map(to_json).collect(),
            };
            out.push((record, row.task.revision));
        }
        out
    }

    pub(super) fn archived(&self, id: TaskId) -> Result<Option<ArchivedTask>, String> {
        let Some(name) = self.archive.tasks.get(&id) else { return Ok(None) };
        let (bytes, _) = self.archive.chunks.get(name).ok_or_else(|| format!("chunk {name} is missing"))?;
        find_in_chunk(bytes, id)
    }

    pub(super) fn archive_chunk(&self, after: Option<&str>) -> Option<ArchiveChunk> {
        let mut range = match after {
            Some(after) => self
                .archive
                .chunks
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.archive.chunks.range::<str, _>(..),
        };
        range.next().map(|(name, (bytes, indexed))| ArchiveChunk {
            name: name.clone(),
            bytes: bytes.clone(),
            indexed: indexed.clone(),
            indexed_count: Some(indexed.len() as u64),
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored values serialize")
}

impl MemTx<'_> {
    pub(super) fn key_archived(&self, namespace: &str, key: &str) -> Option<TaskId> {
        self.state.archive.keys.get(&(namespace.to_owned(), key.to_owned())).copied()
    }

    pub(super) fn archive_commit(&mut self, commit: &ArchiveCommit) -> Result<bool, MemError> {
        let ids: HashSet<TaskId> = commit.chunks.iter().flat_map(|c| c.tasks.iter().map(|t| t.id)).collect();
        for entry in commit.chunks.iter().flat_map(|c| &c.tasks) {
            match self.state.tasks.get(&entry.id) {
                Some(row) if row.task.revision == entry.revision && row.task.is_terminal() => {}
                _ => return Ok(false),
            }
        }
        if self
            .state
            .tasks
            .values()
            .any(|r| r.task.parent.is_some_and(|p| ids.contains(&p)) && !ids.contains(&r.task.id))
        {
            return Ok(false);
        }
        if commit.chunks.iter().any(|c| c.bytes.is_none() || self.state.archive.chunks.contains_key(&c.name))
        {
            return Err(MemError("an archive chunk without bytes, or one stored already".into()));
        }
        self.write_allowed()?;
        let mut removed =
            Removed { rows: Vec::new(), handoffs: Vec::new(), pushes: Vec::new(), chunks: Vec::new() };
        for chunk in &commit.chunks {
            let mut indexed = Vec::with_capacity(chunk.tasks.len());
            for entry in &chunk.tasks {
                let row = self.state.tasks.remove(&entry.id).expect("checked above");
                self.state.indexes.remove(&row.task);
                if let Some(key) = &row.task.idempotency_key {
                    let key = (row.task.namespace.clone(), key.clone());
                    self.state.keys.remove(&key);
                    self.state.archive.keys.insert(key, entry.id);
                }
                let handoffs: Vec<_> =
                    self.state.handoffs.values().filter(|h| h.task == entry.id).map(|h| h.id).collect();
                for h in handoffs {
                    removed.handoffs.extend(self.state.handoffs.remove(&h));
                }
                let pushes: Vec<_> = self
                    .state
                    .push_configs
                    .range((entry.id, String::new())..)
                    .take_while(|((t, _), _)| *t == entry.id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in pushes {
                    removed.pushes.extend(self.state.push_configs.remove(&k));
                }
                self.state.archive.tasks.insert(entry.id, chunk.name.clone());
                indexed.push(entry.id);
                removed.rows.push(row);
            }
            let bytes = chunk.bytes.clone().unwrap_or_default();
            self.state.archive.chunks.insert(chunk.name.clone(), (bytes, indexed));
            removed.chunks.push(chunk.name.clone());
        }
        self.undo.push(Undo::Archive(Box::new(removed)));
        Ok(true)
    }
}
