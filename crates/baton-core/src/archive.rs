//! The archive: where finished tasks go once their retention has passed, so
//! the live store stays bounded while history stays verifiable.
//!
//! One archived task is one line of JSON (`ArchivedTask`): its index fields,
//! the row, the payload, every event, handoff and alert *as stored* (the
//! store's own text, never re-encoded, so each event's hash still verifies).
//! Lines are grouped into chunks by the hour their tasks finished and each
//! chunk is gzip-compressed JSON lines (`encode_chunk`, `decode_chunk`).
//! Where chunks live is the store's business (a directory beside an SQLite
//! file, a table on PostgreSQL, memory in tests); what this module decides
//! is the format, which tasks may leave (`eligible`), and how an archived
//! chain is checked (`check`, reusing `crate::audit`).
//!
//! A task may leave when it is terminal (done or cancelled), finished before
//! the request's cut-off, no live task still points at it (its parent, if it
//! is still stored, is terminal too, so no join waits on it; and it has no
//! children left in the live store, so every child leaves first), and every
//! outbox notice about it is settled: each configured webhook that wants a
//! notice (`HookFilter::wants`, the same rule the dispatcher applies) has a
//! final delivery record for it, and each push config of the task has one
//! for every update after the config was made. Notices and delivery records
//! are dropped with the task; the archive keeps what the task's history is.

use crate::audit::{BrokenLink, check_task};
use crate::event::{Event, Hash};
use crate::ids::{Millis, TaskId};
use crate::store::{Alert, Handoff, Notice, PushConfig, TaskView};
use crate::task::{Task, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

/// The version of the line format; a reader refuses lines of another.
pub const ARCHIVE_FORMAT: u32 = 1;

/// How many candidates one pass looks at for each task it may move: finished
/// tasks that must still wait (undelivered notices, a live parent) are
/// skipped, but a pass never reads more than this many times its batch.
pub const ARCHIVE_SCAN_FACTOR: usize = 4;

/// Bytes of one decompressed chunk a reader accepts (a guard against a
/// corrupt or hostile file, far above what `archive_batch_max` tasks make).
pub const CHUNK_BYTES_MAX: u64 = 1 << 30;

/// One archived task: one line of a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedTask {
    /// `ARCHIVE_FORMAT` when written.
    pub format: u32,
    pub id: TaskId,
    pub namespace: String,
    pub idempotency_key: Option<String>,
    /// When the task finished (its terminal state's `at`).
    pub finished_at: Millis,
    /// The hash of the task's last event, as the row stored it.
    pub head: Hash,
    /// The task row (`Task` as JSON), as stored.
    pub row: String,
    /// The payload, as stored.
    pub payload: String,
    /// Every event, version 1 first, each exactly as stored.
    pub events: Vec<String>,
    /// The task's handoffs with their outcomes, as stored.
    pub handoffs: Vec<String>,
    /// The alerts raised about the task, as stored.
    pub alerts: Vec<String>,
}

impl ArchivedTask {
    pub fn task(&self) -> Result<Task, String> {
        serde_json::from_str(&self.row).map_err(|e| format!("the archived row does not parse: {e}"))
    }

    /// The events, decoded the way the stores decode their stored bodies
    /// (whole rows, or changes folded from version 1: `ChainReader`).
    pub fn parsed_events(&self) -> Result<Vec<Event>, (u64, String)> {
        let mut reader = crate::event::ChainReader::new(self.id);
        self.events
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let version = i as u64 + 1;
                reader
                    .read(version, body)
                    .map_err(|e| (version, format!("event {version} does not parse: {e}")))
            })
            .collect()
    }

    pub fn parsed_handoffs(&self) -> Result<Vec<Handoff>, String> {
        self.handoffs.iter().map(|b| serde_json::from_str(b).map_err(|e| format!("a handoff: {e}"))).collect()
    }

    pub fn parsed_alerts(&self) -> Result<Vec<Alert>, String> {
        self.alerts.iter().map(|b| serde_json::from_str(b).map_err(|e| format!("an alert: {e}"))).collect()
    }

    /// The task as `Store::get` showed it while it was live.
    pub fn view(&self) -> Result<TaskView, String> {
        Ok(TaskView { task: self.task()?, payload: self.payload.clone(), head: self.head })
    }

    /// The first broken link of the archived chain, if any: the checks of
    /// `baton audit verify` (chain, versions, row against the last event,
    /// payload digest), plus the line's own index fields against its row.
    pub fn check(&self) -> Option<BrokenLink> {
        let broken = |version: u64, problem: String| Some(BrokenLink { task: self.id, version, problem });
        if self.format != ARCHIVE_FORMAT {
            return broken(0, format!("archive line format {} is not {ARCHIVE_FORMAT}", self.format));
        }
        let events = match self.parsed_events() {
            Ok(events) => events,
            Err((version, problem)) => return broken(version, problem),
        };
        let view = match self.view() {
            Ok(view) => view,
            Err(problem) => return broken(0, problem),
        };
        if let Some(link) = check_task(self.id, &events, Some(&view)) {
            return Some(link);
        }
        let task = &view.task;
        if task.id != self.id {
            return broken(
                task.revision,
                format!("the line is indexed as {} but holds task {}", self.id, task.id),
            );
        }
        if finished_at(task) != Some(self.finished_at)
            || task.namespace != self.namespace
            || task.idempotency_key != self.idempotency_key
        {
            return broken(task.revision, "the line's index fields differ from its row".to_owned());
        }
        if let Err(problem) = self.parsed_handoffs().and(self.parsed_alerts()) {
            return broken(task.revision, problem);
        }
        None
    }
}

/// A task's handoffs for its archive line, as JSON, from its stored event
/// bodies in version order (stores keep no handoff record of their own:
/// `event::handoffs_from_history`).
pub fn handoff_lines(task: TaskId, events: &[String]) -> Result<Vec<String>, String> {
    let mut reader = crate::event::ChainReader::new(task);
    let decoded = (1u64..)
        .zip(events)
        .map(|(version, body)| reader.read(version, body))
        .collect::<Result<Vec<Event>, _>>()
        .map_err(|e| format!("event: {e}"))?;
    crate::event::handoffs_from_history(&decoded)
        .iter()
        .map(|h| serde_json::to_string(h).map_err(|e| format!("handoff: {e}")))
        .collect()
}

/// When a task finished; `None` while it is live.
pub fn finished_at(task: &Task) -> Option<Millis> {
    match &task.state {
        TaskState::Done { at, .. } | TaskState::Cancelled { at, .. } => Some(*at),
        _ => None,
    }
}

/// The start of the hour `at` falls in (ms since the epoch).
pub fn hour_of(at: Millis) -> Millis {
    at.div_euclid(3_600_000) * 3_600_000
}

/// A chunk's name: the UTC hour its tasks finished in, then the id of its
/// first task, which makes it unique (a task is archived once), e.g.
/// `2026-12-08T13Z-0193a0c4-...`. Names sort by hour.
pub fn chunk_name(hour: Millis, first: TaskId) -> String {
    let days = hour.div_euclid(86_400_000);
    let h = hour.rem_euclid(86_400_000) / 3_600_000;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{h:02}Z-{first}")
}

/// Whether `name` is a chunk name `chunk_name` could have made (stores use
/// it to tell chunk files from anything else, and to refuse a bad path).
pub fn is_chunk_name(name: &str) -> bool {
    name.len() == 51
        && name.is_char_boundary(15)
        && name[15..].parse::<uuid::Uuid>().is_ok()
        && name.as_bytes()[..15].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 => *b == b'Z',
            14 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A chunk's bytes: gzip of one JSON line per task.
pub fn encode_chunk(tasks: &[ArchivedTask]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for t in tasks {
        let line = serde_json::to_string(t).expect("an archived task always serializes");
        gz.write_all(line.as_bytes()).and_then(|()| gz.write_all(b"\n")).expect("writing to memory");
    }
    gz.finish().expect("writing to memory")
}

/// The lines of a chunk, each parsed or with why not (by line number from
/// 1); `Err` when the chunk itself cannot be read (not gzip, cut short, a
/// checksum that does not match: a changed byte).
#[allow(clippy::type_complexity)]
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<Result<ArchivedTask, (usize, String)>>, String> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let reader = std::io::BufReader::new(std::io::Read::take(gz, CHUNK_BYTES_MAX));
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("the chunk cannot be decompressed: {e}"))?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| (i + 1, format!("line {}: {e}", i + 1))));
    }
    Ok(out)
}

/// The archived task `id` in a chunk's bytes, if the chunk holds it.
pub fn find_in_chunk(bytes: &[u8], id: TaskId) -> Result<Option<ArchivedTask>, String> {
    for line in decode_chunk(bytes)? {
        match line {
            Ok(t) if t.id == id => return Ok(Some(t)),
            Ok(_) => {}
            Err((_, problem)) => return Err(problem),
        }
    }
    Ok(None)
}

/// One archive pass, as the server asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArchiveRequest {
    /// Tasks that finished before this moment may leave (now minus retention).
    pub finished_before: Millis,
    /// Tasks to move at most (the store caps it at `archive_batch_max`).
    pub limit: usize,
    /// The configured webhooks: their notices must be delivered first.
    pub hooks: Vec<HookFilter>,
}

/// Which notices a configured webhook is sent: the kinds it wants and, when
/// it names stages, only notices concerning one of them. The dispatcher
/// decides with the same rule (`baton_server::webhooks::Webhook::wants`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HookFilter {
    /// The webhook's name, as its delivery records carry it.
    pub name: String,
    /// Notice kinds (`Notice::kind`) it wants.
    pub kinds: Vec<String>,
    /// The stages it is limited to, if any.
    pub stages: Option<Vec<String>>,
}

impl HookFilter {
    pub fn wants(&self, notice: &Notice) -> bool {
        if matches!(notice, Notice::Update { .. }) || !self.kinds.iter().any(|k| k == notice.kind()) {
            return false;
        }
        let Some(stages) = &self.stages else { return true };
        let listed = |s: &str| stages.iter().any(|x| x == s);
        match notice {
            Notice::Handoff { handoff } => {
                listed(handoff.from_stage.as_str()) || listed(handoff.to_stage.as_str())
            }
            Notice::Alert { alert } => listed(alert.stage.as_str()),
            Notice::Anomaly { anomaly, .. } => match &anomaly.key {
                crate::metrics::RollupKey::Edge { from, to } => listed(from.as_str()) || listed(to.as_str()),
                crate::metrics::RollupKey::Stage { stage } => listed(stage.as_str()),
                crate::metrics::RollupKey::AgentEdge { .. } => false,
            },
            Notice::Update { .. } => false,
        }
    }
}

/// What a store read about one finished task, for `eligible`.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub task: &'a Task,
    /// The parent's row, if the task has a parent still in the live store.
    pub parent: Option<&'a Task>,
    /// Whether any task in the live store names this one as its parent.
    pub has_children: bool,
    /// Every outbox notice about the task.
    pub notices: &'a [(u64, Notice)],
    /// The task's push configs.
    pub pushes: &'a [PushConfig],
}

/// Whether a finished task may leave the live store now (see the module
/// docs). `delivered(webhook, notice)` says whether that webhook (or push
/// config, by its `webhook_name`) has a final delivery record for the notice.
pub fn eligible(
    c: &Candidate<'_>,
    request: &ArchiveRequest,
    mut delivered: impl FnMut(&str, u64) -> bool,
) -> bool {
    let Some(at) = finished_at(c.task) else { return false };
    if at >= request.finished_before || c.has_children {
        return false;
    }
    if c.parent.is_some_and(|p| !p.is_terminal()) {
        return false;
    }
    for (id, notice) in c.notices {
        for hook in &request.hooks {
            if hook.wants(notice) && !delivered(&hook.name, *id) {
                return false;
            }
        }
        if let Notice::Update { version, .. } = notice {
            for push in c.pushes {
                if *version > push.after_version && !delivered(&push.webhook_name(), *id) {
                    return false;
                }
            }
        }
    }
    true
}

/// One task as a commit names it: the row must still be at `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedEntry {
    pub id: TaskId,
    pub revision: u64,
    pub namespace: String,
    pub idempotency_key: Option<String>,
    pub finished_at: Millis,
}

/// One chunk of a commit: its name, its hour, its tasks, and its bytes when
/// the store writes them in the transaction (PostgreSQL, memory); `None`
/// when the chunk is already durable elsewhere (an SQLite archive file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitChunk {
    pub name: String,
    pub hour: Millis,
    pub tasks: Vec<ArchivedEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
}

/// The second half of a pass (`Op::Archive`): in one transaction, delete the
/// tasks' rows (payload, events, handoffs, alerts, notices and their
/// delivery records, push configs), guarded by revision, and index each
/// under its chunk (`archived`), storing the chunk's bytes if it has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveCommit {
    pub chunks: Vec<CommitChunk>,
}

impl ArchiveCommit {
    pub fn tasks(&self) -> usize {
        self.chunks.iter().map(|c| c.tasks.len()).sum()
    }
}

/// Groups archived tasks into chunks by the hour they finished, each named
/// by `chunk_name`, with their commit entries; `revisions` gives each
/// task's row revision.
pub fn group(tasks: Vec<(ArchivedTask, u64)>) -> Vec<(CommitChunk, Vec<ArchivedTask>)> {
    let mut hours: BTreeMap<Millis, Vec<(ArchivedTask, u64)>> = BTreeMap::new();
    for (t, revision) in tasks {
        hours.entry(hour_of(t.finished_at)).or_default().push((t, revision));
    }
    hours
        .into_iter()
        .map(|(hour, tasks)| {
            let name = chunk_name(hour, tasks[0].0.id);
            let entries = tasks
                .iter()
                .map(|(t, revision)| ArchivedEntry {
                    id: t.id,
                    revision: *revision,
                    namespace: t.namespace.clone(),
                    idempotency_key: t.idempotency_key.clone(),
                    finished_at: t.finished_at,
                })
                .collect();
            let lines = tasks.into_iter().map(|(t, _)| t).collect();
            (CommitChunk { name, hour, tasks: entries, bytes: None }, lines)
        })
        .collect()
}

/// The commit of `tasks` with each chunk's bytes in it, for stores that
/// write chunks in the commit's transaction (PostgreSQL, memory).
pub fn commit_with_bytes(tasks: Vec<(ArchivedTask, u64)>) -> ArchiveCommit {
    let chunks = group(tasks)
        .into_iter()
        .map(|(mut chunk, lines)| {
            chunk.bytes = Some(encode_chunk(&lines));
            chunk
        })
        .collect();
    ArchiveCommit { chunks }
}

/// A stored chunk, as audits read it: its name, bytes, and the tasks the
/// store's index places in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveChunk {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Task ids the store's `archived` index points at this chunk (empty
    /// when the chunk is read without its store, from a directory).
    pub indexed: Vec<TaskId>,
    /// How many tasks the index places in this chunk (`None` without a
    /// store); an audit reports a chunk that holds fewer of them.
    pub indexed_count: Option<u64>,
}

/// What checking an archive found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveAudit {
    pub chunks: u64,
    pub tasks: u64,
    pub events: u64,
    /// Tasks whose archived chain does not verify (or that the index names
    /// but the chunk lacks).
    pub broken: Vec<BrokenLink>,
    /// Chunks or lines that cannot be read at all: (chunk, problem).
    pub unreadable: Vec<(String, String)>,
}

impl ArchiveAudit {
    pub fn ok(&self) -> bool {
        self.broken.is_empty() && self.unreadable.is_empty()
    }

    /// Checks one chunk: every line's chain, and (with an index) that every
    /// indexed task has its line.
    pub fn check_chunk(&mut self, chunk: &ArchiveChunk) {
        self.chunks += 1;
        let lines = match decode_chunk(&chunk.bytes) {
            Ok(lines) => lines,
            Err(problem) => {
                self.unreadable.push((chunk.name.clone(), problem));
                return;
            }
        };
        let mut seen = Vec::with_capacity(lines.len());
        for line in lines {
            match line {
                Ok(task) => {
                    self.tasks += 1;
                    self.events += task.events.len() as u64;
                    seen.push(task.id);
                    if let Some(link) = task.check() {
                        self.broken.push(link);
                    }
                }
                Err((_, problem)) => self.unreadable.push((chunk.name.clone(), problem)),
            }
        }
        if let Some(count) = chunk.indexed_count
            && count != chunk.indexed.len() as u64
        {
            self.unreadable.push((
                chunk.name.clone(),
                format!(
                    "the index places {count} tasks in this chunk, {} of them are in it: lines are missing",
                    chunk.indexed.len()
                ),
            ));
        }
        for id in &chunk.indexed {
            if !seen.contains(id) {
                self.broken.push(BrokenLink {
                    task: *id,
                    version: 0,
                    problem: format!(
                        "the archive index places the task in chunk {} but the chunk lacks it",
                        chunk.name
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pure parts: names, grouping, the chunk format's round trip and
    //! what a changed byte does.

    use super::*;

    #[test]
    fn chunk_names_carry_the_utc_hour_and_are_recognised() {
        let id = TaskId(uuid::Uuid::nil());
        // 2026-12-08 13:00 UTC.
        let hour = 1_796_734_800_000;
        let name = chunk_name(hour_of(hour + 1_234), id);
        assert_eq!(name, format!("2026-12-08T13Z-{id}"));
        assert!(is_chunk_name(&name));
        assert!(!is_chunk_name("../etc/passwd"));
        assert!(!is_chunk_name(&format!("2026-12-08T13Z-{id}.tmp")));
        assert_eq!(chunk_name(0, id), format!("1970-01-01T00Z-{id}"));
    }

    #[test]
    fn a_chunk_round_trips_and_a_changed_byte_is_found() {
        let line = ArchivedTask {
            format: ARCHIVE_FORMAT,
            id: TaskId(uuid::Uuid::nil()),
            namespace: "default".into(),
            idempotency_key: None,
            finished_at: 5,
            head: Hash::ZERO,
            row: "{}".into(),
            payload: "{\"a\":1}".into(),
            events: vec!["{}".into()],
            handoffs: vec![],
            alerts: vec![],
        };
        let bytes = encode_chunk(&[line.clone(), line.clone()]);
        let back = decode_chunk(&bytes).unwrap();
        assert_eq!(back, vec![Ok(line.clone()), Ok(line)]);
        let mut bad = bytes.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x55;
        assert!(decode_chunk(&bad).is_err() || decode_chunk(&bad).unwrap().iter().any(Result::is_err));
    }
}
