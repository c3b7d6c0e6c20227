//! `SqliteStore`: the public face. `open` checks and migrates the file, opens
//! the read pool and starts the writer thread; the `Store` methods send writes
//! to the writer and run reads on the pool. Closing (or dropping) the store
//! lets the writer drain what is queued and exit; later calls get
//! `Unavailable`.

use crate::check::Checker;
use crate::directory::{self, DirectoryWrite};
use crate::error::OpenError;
use crate::oneshot;
use crate::options::{IntegrityCheck, SqliteOptions};
use crate::read::{self, ReadPool};
use crate::schema::open_writer;
use crate::tx::WorkflowCache;
use crate::writer::{Counters, Op, Reply, Writer};
use baton_core::archive::{ArchiveChunk, ArchiveRequest, ArchivedTask};
use baton_core::auth::{Directory, Principal, TokenRecord};
use baton_core::metrics::{Anomaly, Rollup};
use baton_core::store::{Delivery, Notice, SingletonDuty, StageGauge};
use baton_core::{
    ActOutcome, ActRequest, Alert, CancelRequest, ClaimRequest, Error, Event, Grant, Handoff, HandoffId,
    Millis, NewTask, OpOutcome, Page, RequestKey, Store, StoreFuture, Submitted, Task, TaskFilter, TaskId,
    TaskView, Workflow,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

/// A `Store` over one SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    /// The writer's queue, bounded by `queue_max`; `None` once closed.
    queue: RwLock<Option<SyncSender<Op>>>,
    queue_max: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The background integrity check, until the store closes.
    checker: Mutex<Option<Checker>>,
    reads: ReadPool,
    counters: Arc<Counters>,
    page_size_max: usize,
    workflows_max: usize,
    /// The archive (`crate::archive`): its directory, whether a pass runs,
    /// and which chunk files may be orphans (`Some(empty)`: any).
    archive_dir: PathBuf,
    archive_batch_max: usize,
    archiving: Arc<AtomicBool>,
    orphans: Arc<Mutex<Option<Vec<String>>>>,
}

/// What the writer has done since `open`: group commit at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Transactions committed (each one fsync).
    pub commits: u64,
    /// Operations in committed transactions, refused ones included.
    pub ops: u64,
    /// Operations refused: answered `Rejected`, they changed nothing.
    pub refused: u64,
    /// Operations answered `Unavailable` (storage errors, batches that could
    /// not begin or commit, a full queue).
    pub unavailable: u64,
    /// The most operations one transaction carried.
    pub batch_max: u64,
    /// Batches rolled back and run again with a savepoint per operation,
    /// because an operation was refused (or failed) after it had written.
    pub reruns: u64,
    /// The writer stopped after a fatal storage error.
    pub stopped: bool,
}

impl SqliteStore {
    /// Opens or creates the database at `path`: sets the durability pragmas,
    /// checks integrity, migrates, and starts the writer thread.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        options.rules.validate().map_err(OpenError::Rules)?;
        let conn = open_writer(&path, &options)?;
        let reads = ReadPool::open(path.clone(), &options)
            .map_err(|source| OpenError::Sqlite { path: path.clone(), source })?;
        let counters = Arc::new(Counters::default());
        let checker = match options.integrity_check {
            IntegrityCheck::Background => Some(Checker::start(&path, &options, Arc::clone(&counters))?),
            IntegrityCheck::Full | IntegrityCheck::Quick | IntegrityCheck::Off => None,
        };
        let queue_max = options.queue_max.max(1);
        let (queue, rx) = mpsc::sync_channel(queue_max);
        let writer = Writer {
            conn,
            rx,
            clock: options.clock,
            rules: options.rules.clone(),
            listener: options.listener,
            on_fatal: options.on_fatal,
            counters: Arc::clone(&counters),
            workflows: WorkflowCache::default(),
        };
        let handle = std::thread::Builder::new()
            .name("baton-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OpenError::Thread { thread: "writer", path: path.clone(), source })?;
        tracing::info!(path = %path.display(), "SQLite store open");
        Ok(Self {
            archive_dir: crate::archive::archive_dir(&path),
            path,
            queue: RwLock::new(Some(queue)),
            queue_max,
            writer: Mutex::new(Some(handle)),
            checker: Mutex::new(checker),
            reads,
            counters,
            page_size_max: options.rules.limits.page_size_max,
            workflows_max: options.rules.limits.workflows_max,
            archive_batch_max: options.rules.limits.archive_batch_max,
            archiving: Arc::new(AtomicBool::new(false)),
            orphans: Arc::new(Mutex::new(Some(Vec::new()))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive's directory, beside the database file.
    pub fn archive_dir(&self) -> &Path {
        &self.archive_dir
    }

    /// Step 1 of an archive pass only (chunks written and fsynced, nothing
    /// deleted or indexed): what a crash between the two steps leaves. For
    /// the crash-safety tests; returns the chunk names written.
    #[doc(hidden)]
    pub fn archive_write_only(&self, request: ArchiveRequest) -> Result<Vec<String>, Error> {
        let limit = request.limit.min(self.archive_batch_max);
        let dir = self.archive_dir.clone();
        let commit =
            self.reads.with_blocking(move |c| crate::archive::prepare(c, &dir, &request, limit, None))?;
        Ok(commit.chunks.into_iter().map(|c| c.name).collect())
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            commits: c.commits.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            batch_max: c.batch_max.load(Ordering::Relaxed),
            reruns: c.reruns.load(Ordering::Relaxed),
            stopped: c.stopped.load(Ordering::Acquire),
        }
    }

    /// Alerts raised by escalations, oldest first: up to `limit` (at most
    /// `page_size_max`) after the sequence number `after` (0 for the first
    /// page). Each comes with its sequence number, the cursor for the next page.
    pub fn alerts(&self, after: i64, limit: usize) -> Result<Vec<(i64, Alert)>, Error> {
        let limit = limit.clamp(1, self.page_size_max.max(1));
        self.reads.with_blocking(move |c| read::alerts(c, after, limit))
    }

    /// How SQLite answers each of the writer's hot lookups (`EXPLAIN QUERY
    /// PLAN`, one line per lookup): diagnostics for tests and `db check`, to
    /// confirm every lookup goes through an index instead of a scan.
    pub fn lookup_plans(&self) -> Result<Vec<(&'static str, String)>, Error> {
        self.reads.with_blocking(|conn| {
            let mut out = Vec::new();
            for (name, sql) in crate::tx::LOOKUPS {
                let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                // Plans do not depend on values: bind NULL to every parameter.
                let nulls = vec![rusqlite::types::Null; st.parameter_count()];
                let details: Vec<String> = st
                    .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?
                    .collect::<Result<_, _>>()?;
                out.push((*name, details.join("; ")));
            }
            Ok(out)
        })
    }

    /// Stops taking operations, lets the writer commit and answer what is
    /// already queued, and waits for it to exit. Idempotent; `Drop` calls it.
    pub fn close(&self) {
        if let Some(checker) = self.checker.lock().unwrap_or_else(PoisonError::into_inner).take() {
            checker.stop();
        }
        self.reads.close();
        drop(self.queue.write().unwrap_or_else(PoisonError::into_inner).take());
        let handle = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }

    /// Queues a write and returns the future of its answer.
    fn write<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> StoreFuture<'static, T> {
        let (reply, answer) = oneshot::channel();
        let op = op(reply);
        if self.counters.stopped.load(Ordering::Acquire) {
            // After a fatal error (the writer's, or the background integrity
            // check's) nothing more is taken.
            op.abandon("the SQLite store stopped after a fatal storage error");
        } else if let Some(queue) = self.queue.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            match queue.try_send(op) {
                Ok(()) => {}
                // Refuse rather than block: the caller may be an async task,
                // and an overloaded store should say so, not stall its runtime.
                Err(TrySendError::Full(op)) => {
                    self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    op.abandon(&format!(
                        "the SQLite writer has {} operations queued (queue_max); retry shortly",
                        self.queue_max
                    ));
                }
                // The writer is gone: dropping the op (and its reply slot)
                // resolves `answer` to None below.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|| {
                Err(Error::Unavailable("the SQLite store is closed or its writer stopped".into()))
            })
        })
    }
}

/// Clears the store's "an archive pass runs" flag when the pass ends.
struct PassRunning(Arc<AtomicBool>);

impl Drop for PassRunning {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for SqliteStore {
    fn submit(&self, task: NewTask) -> StoreFuture<'_, Submitted> {
        self.write(|reply| Op::Submit(task, reply))
    }

    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, Vec<Grant>> {
        self.write(|reply| Op::Claim(request, reply))
    }

    fn act(&self, request: ActRequest) -> StoreFuture<'_, ActOutcome> {
        self.write(|reply| Op::Act(request, reply))
    }

    fn cancel(&self, request: CancelRequest) -> StoreFuture<'_, Task> {
        self.write(|reply| Op::Cancel(request, reply))
    }

    fn fire_due(&self, limit: usize) -> StoreFuture<'_, usize> {
        self.write(|reply| Op::FireDue(limit, reply))
    }

    /// With one writer running operations in queue order, a repeated key
    /// always finds the first call's record (see `writer`), so this store
    /// never answers `request_in_progress`.
    fn execute(&self, op: baton_core::Op, key: Option<RequestKey>) -> StoreFuture<'_, OpOutcome> {
        self.write(|reply| Op::Execute(Box::new((op, key)), reply))
    }

    fn purge_requests(&self, limit: usize) -> StoreFuture<'_, usize> {
        self.write(|reply| Op::PurgeRequests(limit, reply))
    }

    fn get(&self, task: TaskId) -> StoreFuture<'_, Option<TaskView>> {
        Box::pin(self.reads.with(move |c| read::get(c, task)))
    }

    fn list(&self, filter: TaskFilter) -> StoreFuture<'_, Page> {
        let page_size_max = self.page_size_max;
        Box::pin(self.reads.with(move |c| read::list(c, &filter, page_size_max)))
    }

    /// A task's events; an archived task's from its archive chunk.
    fn history(&self, task: TaskId) -> StoreFuture<'_, Vec<Event>> {
        let dir = self.archive_dir.clone();
        Box::pin(self.reads.with(move |c| match read::history(c, task)? {
            live if live.is_empty() => crate::archive::history(c, &dir, task),
            live => Ok(live),
        }))
    }

    fn history_before(&self, task: TaskId, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        let dir = self.archive_dir.clone();
        Box::pin(self.reads.with(move |c| match read::history_before(c, task, before, limit)? {
            live if live.is_empty() => {
                let before = before.unwrap_or(u64::MAX);
                let all = crate::archive::history(c, &dir, task)?;
                Ok(all.into_iter().rev().filter(|e| e.version < before).take(limit).collect())
            }
            live => Ok(live),
        }))
    }

    /// Writes the chunks on a reader thread (fsynced, see `crate::archive`),
    /// then deletes and indexes through the writer. One pass at a time: a
    /// call while one runs moves nothing. A commit that fails leaves its
    /// chunks as orphans, which the next pass removes.
    fn archive(&self, request: ArchiveRequest) -> StoreFuture<'_, usize> {
        let limit = request.limit.min(self.archive_batch_max);
        if limit == 0 || self.archiving.swap(true, Ordering::AcqRel) {
            return Box::pin(std::future::ready(Ok(0)));
        }
        let running = PassRunning(Arc::clone(&self.archiving));
        let sweep = self.orphans.lock().unwrap_or_else(PoisonError::into_inner).take();
        let dir = self.archive_dir.clone();
        let prepared =
            self.reads.with(move |c| crate::archive::prepare(c, &dir, &request, limit, sweep.as_deref()));
        let orphans = Arc::clone(&self.orphans);
        let suspect = move |names: Vec<String>| {
            let mut o = orphans.lock().unwrap_or_else(PoisonError::into_inner);
            match o.as_mut() {
                Some(listed) if listed.is_empty() => {}
                Some(listed) => listed.extend(names),
                None => *o = Some(names),
            }
        };
        Box::pin(async move {
            let _running = running;
            let commit = match prepared.await {
                Ok(commit) => commit,
                Err(e) => {
                    // A chunk may have been written: look at every file next time.
                    suspect(Vec::new());
                    return Err(e);
                }
            };
            if commit.chunks.is_empty() {
                return Ok(0);
            }
            let names: Vec<String> = commit.chunks.iter().map(|c| c.name.clone()).collect();
            match self.execute(baton_core::Op::Archive(commit), None).await {
                Ok(OpOutcome::Archive(n)) => Ok(n),
                Ok(other) => Err(Error::Unavailable(format!("archive: unexpected outcome {other:?}"))),
                Err(e) => {
                    suspect(names);
                    Err(e)
                }
            }
        })
    }

    fn archived(&self, task: TaskId) -> StoreFuture<'_, Option<ArchivedTask>> {
        let dir = self.archive_dir.clone();
        Box::pin(self.reads.with(move |c| crate::archive::archived(c, &dir, task)))
    }

    fn archive_chunk(&self, after: Option<String>) -> StoreFuture<'_, Option<ArchiveChunk>> {
        let dir = self.archive_dir.clone();
        Box::pin(self.reads.with(move |c| crate::archive::chunk_after(c, &dir, after.as_deref())))
    }

    fn handoff(&self, id: HandoffId) -> StoreFuture<'_, Option<Handoff>> {
        Box::pin(self.reads.with(move |c| read::handoff(c, id)))
    }

    fn workflow(&self, name: String, version: Option<u32>) -> StoreFuture<'_, Option<Workflow>> {
        Box::pin(self.reads.with(move |c| read::workflow(c, &name, version)))
    }

    fn workflows(&self) -> StoreFuture<'_, Vec<Workflow>> {
        let limit = self.workflows_max;
        Box::pin(self.reads.with(move |c| read::workflows(c, limit)))
    }

    fn overdue(&self, before: Millis, limit: usize) -> StoreFuture<'_, Vec<Task>> {
        let limit = limit.clamp(1, self.page_size_max.max(1));
        Box::pin(self.reads.with(move |c| read::overdue(c, before, limit)))
    }

    fn notices(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        let limit = limit.clamp(1, self.page_size_max.max(1));
        Box::pin(self.reads.with(move |c| read::notices(c, after, limit)))
    }

    fn deliveries(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Delivery)>> {
        let limit = limit.clamp(1, self.page_size_max.max(1));
        Box::pin(self.reads.with(move |c| read::deliveries(c, after, limit)))
    }

    fn rollups(&self, from: Millis, to: Millis, limit: usize) -> StoreFuture<'_, Vec<Rollup>> {
        Box::pin(self.reads.with(move |c| read::rollups(c, from, to, limit)))
    }

    fn anomalies(&self, after: u64, limit: usize, open_only: bool) -> StoreFuture<'_, Vec<(u64, Anomaly)>> {
        let limit = limit.clamp(1, self.page_size_max.max(1));
        Box::pin(self.reads.with(move |c| read::anomalies(c, after, limit, open_only)))
    }

    fn stage_gauges(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        Box::pin(self.reads.with(move |c| read::stage_gauges(c, limit)))
    }

    fn stage_gauges_recount(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        Box::pin(self.reads.with(move |c| read::stage_gauges_recount(c, limit)))
    }

    /// One process owns an SQLite store: it always holds every duty.
    fn holds_duty(&self, _duty: SingletonDuty) -> StoreFuture<'_, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn delivery_cursor(&self, webhook: String) -> StoreFuture<'_, Option<u64>> {
        Box::pin(self.reads.with(move |c| read::delivery_cursor(c, &webhook)))
    }

    fn last_delivery(&self, webhook: String) -> StoreFuture<'_, Option<Delivery>> {
        Box::pin(self.reads.with(move |c| read::last_delivery(c, &webhook)))
    }

    fn task_notices(&self, task: TaskId, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        Box::pin(self.reads.with(move |c| read::task_notices(c, task, after, limit)))
    }

    fn push_configs(
        &self,
        task: Option<TaskId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<baton_core::PushConfig>> {
        Box::pin(self.reads.with(move |c| read::push_configs(c, task, limit)))
    }

    fn next_due(&self) -> StoreFuture<'_, Option<Millis>> {
        Box::pin(self.reads.with(read::next_due))
    }
}

/// Principals and tokens: writes through the writer (durable before they
/// answer), reads on the read pool. See `crate::directory`.
impl Directory for SqliteStore {
    fn add_principal(&self, principal: Principal) -> StoreFuture<'_, ()> {
        let done = self.write(|reply| Op::Directory(DirectoryWrite::AddPrincipal(principal), reply));
        Box::pin(async move { done.await.map(drop) })
    }

    fn principal(&self, name: &str) -> StoreFuture<'_, Option<Principal>> {
        let name = name.to_owned();
        Box::pin(self.reads.with(move |c| directory::principal(c, &name)))
    }

    fn principals(&self) -> StoreFuture<'_, Vec<Principal>> {
        Box::pin(self.reads.with(directory::principals))
    }

    fn revoke_principal(&self, name: &str, at: Millis) -> StoreFuture<'_, bool> {
        let name = name.to_owned();
        self.write(|reply| Op::Directory(DirectoryWrite::RevokePrincipal { name, at }, reply))
    }

    fn add_token(&self, token: TokenRecord) -> StoreFuture<'_, ()> {
        let done = self.write(|reply| Op::Directory(DirectoryWrite::AddToken(token), reply));
        Box::pin(async move { done.await.map(drop) })
    }

    fn token(&self, id: &str) -> StoreFuture<'_, Option<TokenRecord>> {
        let id = id.to_owned();
        Box::pin(self.reads.with(move |c| directory::token(c, &id)))
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>> {
        Box::pin(self.reads.with(directory::tokens))
    }

    fn revoke_token(&self, id: &str, at: Millis) -> StoreFuture<'_, bool> {
        let id = id.to_owned();
        self.write(|reply| Op::Directory(DirectoryWrite::RevokeToken { id, at }, reply))
    }
}
