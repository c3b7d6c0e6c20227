//! `PostgresStore`: the public face. `open` migrates the schema (under the
//! migration lock), builds the read pool, starts the writer threads and, on
//! the store's own small runtime, the LISTEN task and the duty renewal loop.
//! Writes go to the writer; reads run on the pool, on the store's runtime, so
//! the store's futures work under any executor (the server's tokio, or the
//! test kit's `block_on`). Closing (or dropping) the store lets the writer
//! drain what is queued, release its duties and exit; later calls get
//! `Unavailable`.

use crate::directory::DirectoryWrite;
use crate::error::{OpenError, StoreError};
use crate::leader::{DB_NOW, Duty};
use crate::options::PostgresOptions;
use crate::read;
use crate::writer::{Counters, Op, Reply, Writer};
use baton_core::archive::{ArchiveChunk, ArchiveRequest, ArchivedTask};
use baton_core::auth::{Directory, Principal, TokenRecord};
use baton_core::metrics::{Anomaly, Rollup};
use baton_core::store::{Delivery, Notice, SingletonDuty, StageGauge};
use baton_core::workflow::Workflow;
use baton_core::{
    ActOutcome, ActRequest, Alert, CancelRequest, ClaimRequest, Error, Event, Grant, Handoff, HandoffId,
    Millis, NewTask, OpOutcome, Page, RequestKey, Store, StoreFuture, Submitted, Task, TaskFilter, TaskId,
    TaskView,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::NoTls;

/// Worker threads of the store's runtime (reads, LISTEN, duty renewal): the
/// work there is waiting on sockets, one thread is plenty.
const RUNTIME_THREADS: usize = 1;

/// A `Store` over one PostgreSQL schema, shared with any number of replicas.
pub struct PostgresStore {
    options: PostgresOptions,
    /// The writer's queue, bounded by `queue_max`; `None` once closed.
    queue: RwLock<Option<SyncSender<Op>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    /// The duty renewal task and how to stop it: `close` stops it before the
    /// writers release the duties, so no renewal lands after the release.
    renewing: Mutex<Option<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)>>,
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    pool: Pool,
    counters: Arc<Counters>,
    closed: AtomicBool,
    schema: String,
}

/// What the writer has done since `open`: group commit, and contention with
/// other replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Transactions committed.
    pub commits: u64,
    /// Operations in committed transactions, refused ones included.
    pub ops: u64,
    /// Operations refused: answered `Rejected`, they changed nothing.
    pub refused: u64,
    /// Operations answered `Unavailable`.
    pub unavailable: u64,
    /// The most operations one transaction carried.
    pub batch_max: u64,
    /// Batches rolled back and run again with a savepoint per operation.
    pub reruns: u64,
    /// Operations run again because another replica changed their row first.
    pub conflicts: u64,
    /// Batches run again after a deadlock or serialization failure.
    pub batch_retries: u64,
    /// Connections the writer opened (1 plus reconnections).
    pub connects: u64,
    /// Statements the writers sent (deferred writes included).
    pub statements: u64,
    /// Round trips the writers waited for: each sends one or more statements.
    pub round_trips: u64,
    /// Reads of a stage's ready rows, and those of them that started from a
    /// ready cursor instead of the head (`PostgresOptions::ready_cursors`).
    pub ready_reads: u64,
    pub ready_reads_from_cursor: u64,
}

impl PostgresStore {
    /// Connects, migrates the schema to `SCHEMA_VERSION` (once, whatever the
    /// number of replicas starting), and starts the writer. May be called
    /// from inside an async runtime: the setup runs on the store's own.
    pub fn open(options: PostgresOptions) -> Result<Self, OpenError> {
        options.rules.validate().map_err(OpenError::Rules)?;
        let config = options.connection_config()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("baton-postgres")
            .enable_all()
            .build()
            .map_err(|source| OpenError::Thread { what: "runtime", source })?;
        // On an early return the runtime is shut down in the background:
        // dropping it plainly panics when `open` is called from async code.
        let runtime = RuntimeGuard(Some(runtime));
        let handle = runtime.handle();
        let setup = {
            let options = options.clone();
            async move {
                crate::schema::migrate(&options).await?;
                let client = crate::schema::connect(&options).await?;
                let row = client
                    .query_one("SELECT current_schema()", &[])
                    .await
                    .map_err(|source| OpenError::Sql { during: "reading the schema", source })?;
                let schema: Option<String> = row
                    .try_get(0)
                    .map_err(|source| OpenError::Sql { during: "reading the schema", source })?;
                Ok::<_, OpenError>(schema.unwrap_or_else(|| "public".into()))
            }
        };
        let schema = wait(&handle, setup).ok_or(OpenError::Timeout(options.io_timeout))??;

        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.readers.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.io_timeout))
            .create_timeout(Some(options.io_timeout))
            .recycle_timeout(Some(options.io_timeout))
            .build()
            .map_err(|e| OpenError::Connect(e.to_string()))?;

        let counters = Arc::new(Counters::default());
        let (queue, rx) = mpsc::sync_channel(options.queue_max.max(1));
        let channel = crate::listen::channel(&schema);
        let rx = Arc::new(Mutex::new(rx));
        let cursors = (options.listen && options.ready_cursors)
            .then(|| Arc::new(crate::cursor::Cursors::new(options.writers.max(1))));
        let mut writers = Vec::with_capacity(options.writers.max(1));
        for n in 0..options.writers.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| OpenError::Thread { what: "writer runtime", source })?;
            let writer = Writer {
                rt,
                session: None,
                options: options.clone(),
                rx: Arc::clone(&rx),
                clock: options.clock.clone(),
                rules: options.rules.clone(),
                listener: options.listener.clone(),
                counters: Arc::clone(&counters),
                channel: channel.clone(),
                schema: schema.clone(),
                cursors: cursors.clone(),
                index: n,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("baton-pg-writer-{n}"))
                .spawn(move || writer.run())
                .map_err(|source| OpenError::Thread { what: "writer thread", source })?;
            writers.push(spawned);
        }

        if options.listen {
            handle.spawn(crate::listen::run(options.clone(), channel, options.listener.clone(), cursors));
        }
        let stop_renewing = Arc::new(tokio::sync::Notify::new());
        let renewing = handle.spawn(renew_duties(pool.clone(), options.clone(), stop_renewing.clone()));
        tracing::info!(schema = %schema, replica = %options.replica, "PostgreSQL store open");
        Ok(Self {
            options,
            queue: RwLock::new(Some(queue)),
            writers: Mutex::new(writers),
            renewing: Mutex::new(Some((renewing, stop_renewing))),
            runtime: Mutex::new(runtime.take()),
            handle,
            pool,
            counters,
            closed: AtomicBool::new(false),
            schema,
        })
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// This replica's name (in `leader` and in NOTIFY payloads).
    pub fn replica(&self) -> &str {
        &self.options.replica
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            commits: get(&c.commits),
            ops: get(&c.ops),
            refused: get(&c.refused),
            unavailable: get(&c.unavailable),
            batch_max: get(&c.batch_max),
            reruns: get(&c.reruns),
            conflicts: get(&c.conflicts),
            batch_retries: get(&c.batch_retries),
            connects: get(&c.connects),
            statements: get(&c.statements),
            round_trips: get(&c.round_trips),
            ready_reads: get(&c.ready_reads),
            ready_reads_from_cursor: get(&c.ready_reads_from_cursor),
        }
    }

    /// Alerts raised by escalations, oldest first: up to `limit` (at most
    /// `page_size_max`) after the sequence number `after` (0 for the first page).
    pub fn alerts(&self, after: i64, limit: usize) -> StoreFuture<'_, Vec<(i64, Alert)>> {
        let limit = limit.clamp(1, self.options.rules.limits.page_size_max.max(1));
        self.read(read::alerts(self.pool.clone(), after, limit))
    }

    /// The singleton duties and who holds them (`leader`).
    pub fn duties(&self) -> StoreFuture<'_, Vec<Duty>> {
        self.read(read::duties(self.pool.clone()))
    }

    /// Stops taking operations, lets the writer commit and answer what is
    /// already queued, release this replica's duties, and exit. Idempotent;
    /// `Drop` calls it. Safe to call from inside an async runtime.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Stop renewing (letting a renewal in flight finish) before the
        // writers release the duties on their way out.
        if let Some((task, stop)) = self.renewing.lock().unwrap_or_else(PoisonError::into_inner).take() {
            stop.notify_one();
            let _ = wait(&self.handle, async move { drop(task.await) });
        }
        drop(self.queue.write().unwrap_or_else(PoisonError::into_inner).take());
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(PoisonError::into_inner));
        for writer in writers {
            if writer.join().is_err() {
                tracing::error!("a PostgreSQL writer thread panicked");
            }
        }
        self.pool.close();
        if let Some(runtime) = self.runtime.lock().unwrap_or_else(PoisonError::into_inner).take() {
            runtime.shutdown_background();
        }
    }

    /// Queues a write and returns the future of its answer.
    fn write<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> StoreFuture<'static, T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = op(reply);
        if let Some(queue) = self.queue.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            match queue.try_send(op) {
                Ok(()) => {}
                // Refuse rather than block: the caller may be an async task,
                // and an overloaded store should say so, not stall its runtime.
                Err(TrySendError::Full(op)) => {
                    self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    op.abandon(&format!(
                        "the PostgreSQL writer has {} operations queued (queue_max); retry shortly",
                        self.options.queue_max
                    ));
                }
                // The writer is gone: dropping the op resolves `answer` to an error.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Error::Unavailable("the PostgreSQL store is closed or its writer stopped".into()))
            })
        })
    }

    /// Runs a read on the store's runtime within `io_timeout`.
    fn read<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(Error::Unavailable("the PostgreSQL store is closed".into())) });
        }
        let timeout = self.options.io_timeout;
        let task = self.handle.spawn(async move { tokio::time::timeout(timeout, fut).await });
        Box::pin(async move {
            match task.await {
                Ok(Ok(Ok(value))) => Ok(value),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "PostgreSQL read failed");
                    Err(Error::Unavailable(format!("reading the PostgreSQL store failed: {e}")))
                }
                Ok(Err(_)) => {
                    Err(Error::Unavailable(format!("PostgreSQL did not answer within {timeout:?}")))
                }
                Err(_) => Err(Error::Unavailable("the PostgreSQL store is closed".into())),
            }
        })
    }

    /// A page size within `page_size_max`.
    fn page(&self, limit: usize) -> usize {
        limit.clamp(1, self.options.rules.limits.page_size_max.max(1))
    }

    fn execute_as<T: Send + 'static>(
        &self,
        op: baton_core::Op,
        pick: fn(OpOutcome) -> Option<T>,
    ) -> StoreFuture<'static, T> {
        let done = self.write(|reply| Op::Execute(Box::new((op, None)), reply));
        Box::pin(async move {
            pick(done.await?)
                .ok_or_else(|| Error::Unavailable("internal error: an answer went astray".into()))
        })
    }
}

/// Owns the store's runtime until `open` succeeds.
struct RuntimeGuard(Option<Runtime>);

impl RuntimeGuard {
    fn handle(&self) -> Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the guard holds the runtime until open returns"),
        }
    }

    fn take(mut self) -> Option<Runtime> {
        self.0.take()
    }
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `fut` on the store's runtime and waits for it from this thread
/// (which may itself be inside another runtime); `None` if it was dropped.
fn wait<T: Send + 'static>(handle: &Handle, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

/// Takes and renews this replica's duties every third of `duty_lease`,
/// until `stop` is notified (never in the middle of a renewal).
async fn renew_duties(pool: Pool, options: PostgresOptions, stop: Arc<tokio::sync::Notify>) {
    let lease_ms = i64::try_from(options.duty_lease.as_millis()).unwrap_or(i64::MAX);
    let period = (options.duty_lease / 3).max(Duration::from_millis(100));
    loop {
        let now = options.clock.as_ref().map(|c| c.now());
        let renewal = read::hold_duties(pool.clone(), options.replica.clone(), now, lease_ms);
        match tokio::time::timeout(options.io_timeout, renewal).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not renew the singleton duties"),
            Err(_) => tracing::warn!("renewing the singleton duties timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.notified() => return,
        }
    }
}

/// The database clock, for callers that want the time replicas agree on.
pub async fn database_now(client: &tokio_postgres::Client) -> Result<Millis, tokio_postgres::Error> {
    client.query_one(DB_NOW, &[]).await?.try_get(0)
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for PostgresStore {
    fn submit(&self, task: NewTask) -> StoreFuture<'_, Submitted> {
        self.execute_as(baton_core::Op::Submit(task), OpOutcome::into_submitted)
    }

    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, Vec<Grant>> {
        self.execute_as(baton_core::Op::Claim(request), OpOutcome::into_grants)
    }

    fn act(&self, request: ActRequest) -> StoreFuture<'_, ActOutcome> {
        self.execute_as(baton_core::Op::Act(request), OpOutcome::into_acted)
    }

    fn cancel(&self, request: CancelRequest) -> StoreFuture<'_, Task> {
        self.execute_as(baton_core::Op::Cancel(request), OpOutcome::into_cancelled)
    }

    fn fire_due(&self, limit: usize) -> StoreFuture<'_, usize> {
        self.write(|reply| Op::FireDue(limit, reply))
    }

    /// A repeat of a key from another replica waits on the key's advisory
    /// lock (taken by the first call's transaction) and then finds its
    /// record, so this store never answers `request_in_progress` either.
    fn execute(&self, op: baton_core::Op, key: Option<RequestKey>) -> StoreFuture<'_, OpOutcome> {
        self.write(|reply| Op::Execute(Box::new((op, key)), reply))
    }

    /// Only the replica holding the `purge` duty purges; the others answer 0.
    fn purge_requests(&self, limit: usize) -> StoreFuture<'_, usize> {
        self.write(|reply| Op::PurgeRequests(limit, reply))
    }

    fn get(&self, task: TaskId) -> StoreFuture<'_, Option<TaskView>> {
        self.read(read::get(self.pool.clone(), task))
    }

    fn list(&self, filter: TaskFilter) -> StoreFuture<'_, Page> {
        self.read(read::list(self.pool.clone(), filter, self.options.rules.limits.page_size_max))
    }

    /// A task's events; an archived task's from its archive chunk.
    fn history(&self, task: TaskId) -> StoreFuture<'_, Vec<Event>> {
        let pool = self.pool.clone();
        self.read(async move {
            match read::history(pool.clone(), task).await? {
                live if live.is_empty() => crate::archive::history(pool, task).await,
                live => Ok(live),
            }
        })
    }

    fn history_before(&self, task: TaskId, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        let pool = self.pool.clone();
        self.read(async move {
            match read::history_before(pool.clone(), task, before, limit).await? {
                live if live.is_empty() => {
                    let before = before.unwrap_or(u64::MAX);
                    let all = crate::archive::history(pool, task).await?;
                    Ok(all.into_iter().rev().filter(|e| e.version < before).take(limit).collect())
                }
                live => Ok(live),
            }
        })
    }

    /// Reads and encodes on the read pool, then stores, indexes and deletes
    /// in one writer transaction (`crate::archive`).
    fn archive(&self, request: ArchiveRequest) -> StoreFuture<'_, usize> {
        let max = request.limit.min(self.options.rules.limits.archive_batch_max);
        if max == 0 {
            return Box::pin(std::future::ready(Ok(0)));
        }
        let read = self.read(crate::archive::candidates(self.pool.clone(), request, max));
        Box::pin(async move {
            let records = read.await?;
            if records.is_empty() {
                return Ok(0);
            }
            let commit = baton_core::archive::commit_with_bytes(records);
            match self.execute(baton_core::Op::Archive(commit), None).await? {
                OpOutcome::Archive(n) => Ok(n),
                other => Err(Error::Unavailable(format!("archive: unexpected outcome {other:?}"))),
            }
        })
    }

    fn archived(&self, task: TaskId) -> StoreFuture<'_, Option<ArchivedTask>> {
        self.read(crate::archive::archived(self.pool.clone(), task))
    }

    fn archive_chunk(&self, after: Option<String>) -> StoreFuture<'_, Option<ArchiveChunk>> {
        self.read(crate::archive::chunk_after(self.pool.clone(), after))
    }

    fn handoff(&self, id: HandoffId) -> StoreFuture<'_, Option<Handoff>> {
        self.read(read::handoff(self.pool.clone(), id))
    }

    fn next_due(&self) -> StoreFuture<'_, Option<Millis>> {
        self.read(read::next_due(self.pool.clone()))
    }

    fn workflow(&self, name: String, version: Option<u32>) -> StoreFuture<'_, Option<Workflow>> {
        self.read(read::workflow(self.pool.clone(), name, version))
    }

    fn workflows(&self) -> StoreFuture<'_, Vec<Workflow>> {
        self.read(read::workflows(self.pool.clone(), self.options.rules.limits.workflows_max))
    }

    fn overdue(&self, before: Millis, limit: usize) -> StoreFuture<'_, Vec<Task>> {
        self.read(read::overdue(self.pool.clone(), before, self.page(limit)))
    }

    fn notices(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        self.read(read::notices(self.pool.clone(), after, self.page(limit)))
    }

    fn deliveries(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Delivery)>> {
        self.read(read::deliveries(self.pool.clone(), after, self.page(limit)))
    }

    fn delivery_cursor(&self, webhook: String) -> StoreFuture<'_, Option<u64>> {
        self.read(read::delivery_cursor(self.pool.clone(), webhook))
    }

    fn last_delivery(&self, webhook: String) -> StoreFuture<'_, Option<Delivery>> {
        self.read(read::last_delivery(self.pool.clone(), webhook))
    }

    fn task_notices(&self, task: TaskId, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Notice)>> {
        self.read(read::task_notices(self.pool.clone(), task, after, self.page(limit)))
    }

    fn push_configs(
        &self,
        task: Option<TaskId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<baton_core::PushConfig>> {
        self.read(read::push_configs(self.pool.clone(), task, self.page(limit)))
    }

    fn rollups(&self, from: Millis, to: Millis, limit: usize) -> StoreFuture<'_, Vec<Rollup>> {
        self.read(read::rollups(self.pool.clone(), from, to, limit))
    }

    fn anomalies(&self, after: u64, limit: usize, open_only: bool) -> StoreFuture<'_, Vec<(u64, Anomaly)>> {
        self.read(read::anomalies(self.pool.clone(), after, limit, open_only))
    }

    fn stage_gauges(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        self.read(read::stage_gauges(self.pool.clone(), limit))
    }

    fn stage_gauges_recount(&self, limit: usize) -> StoreFuture<'_, Vec<StageGauge>> {
        self.read(read::stage_gauges_recount(self.pool.clone(), limit))
    }

    /// Takes or renews the duty's lease row (as the renewal loop does, so a
    /// duty the server asks about moves within `duty_lease` of its holder's
    /// death); only one replica at a time gets `true`.
    fn holds_duty(&self, duty: SingletonDuty) -> StoreFuture<'_, bool> {
        let lease_ms = i64::try_from(self.options.duty_lease.as_millis()).unwrap_or(i64::MAX);
        let now = self.options.clock.as_ref().map(|c| c.now());
        self.read(read::hold_duty(
            self.pool.clone(),
            duty.name(),
            self.options.replica.clone(),
            now,
            lease_ms,
        ))
    }
}

/// Principals and tokens: writes through the writer (committed before they
/// answer), reads on the pool. See `crate::directory`.
impl Directory for PostgresStore {
    fn add_principal(&self, principal: Principal) -> StoreFuture<'_, ()> {
        let done = self.write(|reply| Op::Directory(DirectoryWrite::AddPrincipal(principal), reply));
        Box::pin(async move { done.await.map(drop) })
    }

    fn principal(&self, name: &str) -> StoreFuture<'_, Option<Principal>> {
        self.read(read::principal(self.pool.clone(), name.to_owned()))
    }

    fn principals(&self) -> StoreFuture<'_, Vec<Principal>> {
        self.read(read::principals(self.pool.clone()))
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
        self.read(read::token(self.pool.clone(), id.to_owned()))
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>> {
        self.read(read::tokens(self.pool.clone()))
    }

    fn revoke_token(&self, id: &str, at: Millis) -> StoreFuture<'_, bool> {
        let id = id.to_owned();
        self.write(|reply| Op::Directory(DirectoryWrite::RevokeToken { id, at }, reply))
    }
}
