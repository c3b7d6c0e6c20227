//! The SQLite-side scenarios. Each records evidence that its fault took
//! effect, and `judge` names what is missing when it did not:
//!
//! - `Kill9`: SIGKILL of `baton dev` under load, restart on the same data.
//!   Evidence: every kill ended the process by signal 9.
//! - `PowerLoss`: the data directory on `baton_lazyfs`; kill -9, drop all
//!   that was not fsync'd, restart. Evidence: the cuts dropped unsynced
//!   bytes, the store fsync'd files and directories. With `lying: true`
//!   every fsync succeeds without making anything durable (a store that
//!   acknowledges before its data is safe), and the checker must flag losses.
//! - `PowerLoss` on `Disk::FailingSync` (`fsync-eio-lazyfs`): from the Nth
//!   file sync of each start, the lazy filesystem answers EIO and keeps the
//!   pages unsynced; the server must stop by itself, and the power cut that
//!   follows drops the failed batch, so any acknowledgement of it shows up
//!   as lost. Evidence: failed syncs, stops with a failure status.
//! - `FsyncEio`: `baton dev` under `strace -f -e inject=...:error=EIO`, so
//!   from the Nth fsync/fdatasync of a thread on, the call fails. Evidence:
//!   strace logged the injection, the process stopped by itself with a
//!   failure status, and no call sent after the injection was accepted
//!   before the restart.
//! - `ClockJump`: `baton dev` under libfaketime with an offset file changed
//!   at run time: +10 min, back, -10 min, back, without touching the
//!   machine's clock (monotonic time is left alone). Evidence: lease expiry
//!   times the clients saw were skewed by both offsets, and leases expired
//!   early (the leases are long enough never to expire without the jumps).
//! - `ClockJumpPg`: the same jumps in `baton serve` on PostgreSQL, in a
//!   schema of its own dropped afterwards. The store takes time from the
//!   database, so leases must not move. Evidence: the process's own clock
//!   (`as_of` of a lineage answer, read from the process clock per request)
//!   was skewed by both offsets, while the lease expiry times clients saw
//!   stayed within `PG_LEASE_SKEW_MAX_MS` of real time and no lease expired.

use super::node::Launch;
use super::{FaultConfig, FaultReport, Run, Scenario, evidence_u64};
use anyhow::{Context as _, Result, bail};
use baton_core::Store;
use baton_lazyfs::{CutReport, LazyFs};
use baton_testkit::history::{Call, Outcome};
use serde_json::{Map, Value, json};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

/// After a kill, wait this long for the kernel to finish the dead process's
/// in-flight filesystem requests before cutting power.
const SETTLE: Duration = Duration::from_millis(100);

/// How long `FsyncEio` waits for the server to stop after the injection.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Debian's libfaketime lives.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// `ClockJump`'s lease: far longer than a run's load phases.
pub const CLOCK_LEASE_MS: u64 = 60_000;

/// The clock offsets `ClockJump` cycles through, in seconds (±10 minutes).
pub const CLOCK_OFFSETS_S: [i64; 4] = [600, 0, -600, 0];

/// `ClockJumpPg`: how far the lease expiry times clients see may stray from
/// real time (request round trips, a busy machine); far below the jumps.
pub const PG_LEASE_SKEW_MAX_MS: i64 = 5_000;

/// The database `ClockJumpPg` uses unless `BATON_TEST_DATABASE_URL` names one.
pub const PG_DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A `[min, max]` pair of the report's evidence under `key`.
fn evidence_range(report: &FaultReport, key: &str) -> Option<(i64, i64)> {
    let pair = report.evidence.get(key)?.as_array()?;
    match pair.iter().filter_map(Value::as_i64).collect::<Vec<_>>().as_slice() {
        [min, max] => Some((*min, *max)),
        _ => None,
    }
}

/// What a jump of `offset_s` must at least show: 90% of it, in ms.
fn jumped_ms(offset_s: i64) -> i64 {
    offset_s.abs() * 1_000 * 9 / 10
}

/// Why a `[min, max]` skew range of `what` fails to show the jumps `applied`.
fn missing_jumps(applied: &[i64], what: &str, (min, max): (i64, i64)) -> Vec<String> {
    let mut missing = Vec::new();
    let most = applied.iter().copied().max().unwrap_or(0);
    let least = applied.iter().copied().min().unwrap_or(0);
    if most > 0 && max < jumped_ms(most) {
        missing.push(format!("no {what} showed the +{most} s clock (max skew {max} ms)"));
    }
    if least < 0 && min > -jumped_ms(least) {
        missing.push(format!("no {what} showed the {least} s clock (min skew {min} ms)"));
    }
    missing
}

fn status_text(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown".into(),
        },
        None => "not reaped".into(),
    }
}

/// kill -9 and restart, cycle after cycle.
#[derive(Default)]
pub struct Kill9 {
    statuses: Vec<String>,
}

impl Scenario for Kill9 {
    fn name(&self) -> String {
        "kill-9".into()
    }

    fn inject(&mut self, run: &mut Run, _cycle: usize) -> Result<()> {
        run.mark_fault();
        self.statuses.push(status_text(run.kill()));
        run.start()
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        run.kill();
        let by_sigkill = self.statuses.iter().filter(|s| *s == "signal 9").count();
        Ok(Map::from_iter([
            ("kills".into(), json!(self.statuses.len())),
            ("killed_by_signal_9".into(), json!(by_sigkill)),
        ]))
    }

    fn judge(&self, report: &FaultReport) -> Vec<String> {
        let (kills, by9) = (evidence_u64(report, "kills"), evidence_u64(report, "killed_by_signal_9"));
        if kills == 0 || kills != by9 {
            vec![format!("{by9} of {kills} kills ended the server by SIGKILL")]
        } else {
            Vec::new()
        }
    }
}

/// How the lazy filesystem's disk behaves in a `PowerLoss` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// fsync makes data durable.
    Honest,
    /// Every fsync succeeds without making anything durable (after the first start).
    Lying,
    /// After this many file syncs of each server start, every file sync fails
    /// with EIO and nothing is made durable: the server must stop without
    /// acknowledging, and the cut then drops the failed batch.
    FailingSync(u64),
}

/// Power loss on the lazy filesystem: kill -9 (or, with a failing disk, the
/// server stopping by itself), drop what was not synced, restart.
pub struct PowerLoss {
    pub disk: Disk,
    fs: Option<LazyFs>,
    cuts: Vec<CutReport>,
    stops: Vec<String>,
}

impl PowerLoss {
    pub fn new(lying: bool) -> Self {
        Self::on(if lying { Disk::Lying } else { Disk::Honest })
    }

    pub fn on(disk: Disk) -> Self {
        Self { disk, fs: None, cuts: Vec::new(), stops: Vec::new() }
    }

    fn fs(&self) -> Result<&LazyFs> {
        self.fs.as_ref().context("not mounted")
    }

    fn cut(&mut self) -> Result<()> {
        std::thread::sleep(SETTLE);
        let report = self.fs()?.power_cut();
        self.cuts.push(report);
        Ok(())
    }

    fn arm(&self) -> Result<()> {
        match self.disk {
            Disk::Honest => {}
            Disk::Lying => self.fs()?.set_fsync_lies(true),
            Disk::FailingSync(n) => self.fs()?.fail_file_syncs_after(Some(n)),
        }
        Ok(())
    }
}

impl Scenario for PowerLoss {
    fn name(&self) -> String {
        match self.disk {
            Disk::Honest => "power-loss".into(),
            Disk::Lying => "power-loss-lying-fsync".into(),
            Disk::FailingSync(_) => "fsync-eio-lazyfs".into(),
        }
    }

    fn prepare(&mut self, launch: &mut Launch, dir: &Path) -> Result<()> {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let fs = LazyFs::mount(&mnt).with_context(|| {
            format!(
                "mount the lazy filesystem at {} (needs /dev/fuse and root or fusermount3)",
                mnt.display()
            )
        })?;
        // The operator's setup: the data directory exists, durably, before Baton starts.
        let data = mnt.join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::File::open(&mnt)?.sync_all()?;
        launch.data_dir = data;
        self.fs = Some(fs);
        Ok(())
    }

    fn started(&mut self, _run: &mut Run) -> Result<()> {
        self.arm()
    }

    fn inject(&mut self, run: &mut Run, cycle: usize) -> Result<()> {
        if let Disk::FailingSync(_) = self.disk {
            let node = run.node.as_mut().context("no server")?;
            let Some(status) = node.wait_exit(STOP_TIMEOUT) else {
                bail!("cycle {cycle}: the server did not stop within {STOP_TIMEOUT:?} of the failed fsync");
            };
            run.node = None;
            run.mark_fault();
            self.stops.push(status_text(Some(status)));
        } else {
            run.mark_fault();
            run.kill();
        }
        self.cut()?;
        run.start()?;
        if let Disk::FailingSync(n) = self.disk {
            self.fs()?.fail_file_syncs_after(Some(n));
        }
        Ok(())
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        run.kill();
        self.cut()?;
        let stats = self.fs()?.stats();
        let sum = |f: fn(&CutReport) -> u64| self.cuts.iter().map(f).sum::<u64>();
        let mut evidence = Map::from_iter([
            ("power_cuts".into(), json!(self.cuts.len())),
            ("files_reverted".into(), json!(sum(|c| c.files_reverted))),
            ("dirty_bytes_dropped".into(), json!(sum(|c| c.dirty_bytes_dropped))),
            ("dirs_reverted".into(), json!(sum(|c| c.dirs_reverted))),
            ("inodes_removed".into(), json!(sum(|c| c.inodes_removed))),
            ("file_syncs".into(), json!(stats.file_syncs)),
            ("dir_syncs".into(), json!(stats.dir_syncs)),
            ("lied_syncs".into(), json!(stats.lied_syncs)),
            ("failed_syncs".into(), json!(stats.failed_syncs)),
        ]);
        if let Disk::FailingSync(_) = self.disk {
            let failed_stops = self.stops.iter().filter(|s| *s != "exit 0").count();
            evidence.insert("stops".into(), json!(self.stops.len()));
            evidence.insert("stops_with_failure_status".into(), json!(failed_stops));
        }
        Ok(evidence)
    }

    fn judge(&self, report: &FaultReport) -> Vec<String> {
        let mut missing = Vec::new();
        if evidence_u64(report, "dirty_bytes_dropped") == 0 {
            missing.push("no power cut dropped unsynced data".into());
        }
        if evidence_u64(report, "file_syncs") == 0 {
            missing.push("the store never fsync'd a file on the lazy filesystem".into());
        }
        match self.disk {
            Disk::Lying if evidence_u64(report, "lied_syncs") == 0 => {
                missing.push("no fsync was answered with a lie".into());
            }
            Disk::FailingSync(_) => {
                let stops = evidence_u64(report, "stops");
                if stops == 0 || evidence_u64(report, "failed_syncs") < stops {
                    missing.push(format!(
                        "{} failed syncs for {stops} stops",
                        evidence_u64(report, "failed_syncs")
                    ));
                }
                if evidence_u64(report, "stops_with_failure_status") != stops {
                    missing.push("a stop after the failed fsync had a success status".into());
                }
            }
            _ => {}
        }
        missing
    }
}

/// fsync/fdatasync failing with EIO, injected by strace.
pub struct FsyncEio {
    /// The invocation (per thread) from which every fsync and fdatasync fails.
    pub nth: u32,
    log: PathBuf,
    stops: Vec<(String, u64)>,
}

impl FsyncEio {
    pub fn new(nth: u32) -> Self {
        Self { nth, log: PathBuf::new(), stops: Vec::new() }
    }

    /// Unix times (ms) of the injected failures strace logged (`-ttt` lines).
    fn injections(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("(INJECTED)"))
            .filter_map(|l| {
                // "PID SECONDS.MICROS fdatasync(...) = -1 EIO (...) (INJECTED)"
                let t = l.split_whitespace().find(|w| w.contains('.') && w.parse::<f64>().is_ok())?;
                Some((t.parse::<f64>().ok()? * 1_000.0) as u64)
            })
            .collect()
    }
}

impl Scenario for FsyncEio {
    fn name(&self) -> String {
        "fsync-eio".into()
    }

    fn prepare(&mut self, launch: &mut Launch, dir: &Path) -> Result<()> {
        self.log = dir.join("strace.log");
        let inject = format!("inject=fsync,fdatasync:error=EIO:when={}+", self.nth);
        launch.wrapper = ["strace", "-f", "-qq", "-ttt", "-A", "-o"]
            .into_iter()
            .map(String::from)
            .chain([
                self.log.display().to_string(),
                "-e".into(),
                "trace=fsync,fdatasync".into(),
                "-e".into(),
                inject,
            ])
            .collect();
        Ok(())
    }

    fn inject(&mut self, run: &mut Run, cycle: usize) -> Result<()> {
        let node = run.node.as_mut().context("no server")?;
        let Some(status) = node.wait_exit(STOP_TIMEOUT) else {
            bail!("cycle {cycle}: the server did not stop within {STOP_TIMEOUT:?} of the injected EIO");
        };
        run.node = None;
        run.mark_fault();
        let stopped_at = *run.fault_times.last().expect("just marked");
        self.stops.push((status_text(Some(status)), stopped_at));
        run.start()
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        run.kill();
        // Calls sent after an injected failure and accepted before the restart
        // that followed it: a server that went on after a failed fsync.
        let start = run.recorder.start_unix_ms();
        let injected: Vec<u64> = self.injections().into_iter().map(|t| t.saturating_sub(start)).collect();
        let entries = run.recorder.entries();
        let mut accepted_after = 0;
        for (_, stopped_at) in &self.stops {
            let Some(first) = injected.iter().copied().filter(|t| t < stopped_at).max() else { continue };
            accepted_after += entries
                .iter()
                .filter(|e| e.invoked_ms > first + 100 && e.returned_ms < *stopped_at)
                .filter(|e| matches!(e.outcome, Outcome::Ok { .. }))
                .count();
        }
        let failed_stops = self.stops.iter().filter(|(s, _)| s != "exit 0").count();
        Ok(Map::from_iter([
            ("injected_eio".into(), json!(injected.len())),
            ("stops".into(), json!(self.stops.len())),
            ("stops_with_failure_status".into(), json!(failed_stops)),
            ("stop_statuses".into(), json!(self.stops.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>())),
            ("accepted_after_injection".into(), json!(accepted_after)),
        ]))
    }

    fn judge(&self, report: &FaultReport) -> Vec<String> {
        let mut missing = Vec::new();
        let (injected, stops) = (evidence_u64(report, "injected_eio"), evidence_u64(report, "stops"));
        if injected < stops || stops == 0 {
            missing.push(format!("strace logged {injected} injected EIO for {stops} stops"));
        }
        if evidence_u64(report, "stops_with_failure_status") != stops {
            missing.push("a stop after the EIO had a success status".into());
        }
        if evidence_u64(report, "accepted_after_injection") > 0 {
            missing.push("calls sent after the failed fsync were accepted: the server went on".into());
        }
        missing
    }
}

/// Wall-clock jumps in the server process only, through libfaketime.
pub struct ClockJump {
    file: PathBuf,
    applied: Vec<i64>,
}

impl Default for ClockJump {
    fn default() -> Self {
        Self { file: PathBuf::new(), applied: Vec::new() }
    }
}

impl ClockJump {
    fn set(&self, offset_s: i64) -> Result<()> {
        std::fs::write(&self.file, format!("{offset_s:+}\n")).context("write the faketime offset file")
    }
}

impl Scenario for ClockJump {
    fn name(&self) -> String {
        "clock-jump".into()
    }

    /// Leases that never expire in a run unless the clock jumps, and agents
    /// that hold them a while, so a jump finds leases to expire.
    fn tune(&self, config: &mut FaultConfig) {
        config.load.lease_ms = CLOCK_LEASE_MS;
        config.load.work_ms = (100, 1_000);
    }

    fn prepare(&mut self, launch: &mut Launch, dir: &Path) -> Result<()> {
        if !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: install Debian's libfaketime (.ci/run does)");
        }
        self.file = dir.join("faketime-offset");
        self.set(0)?;
        launch.env.extend(
            [
                ("LD_PRELOAD", LIBFAKETIME),
                ("FAKETIME_TIMESTAMP_FILE", &self.file.display().to_string()),
                // Read the offset on every call, so a jump takes effect at once.
                ("FAKETIME_NO_CACHE", "1"),
                // Timers and timeouts run on monotonic time: leave it real.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        Ok(())
    }

    fn inject(&mut self, run: &mut Run, cycle: usize) -> Result<()> {
        let offset = CLOCK_OFFSETS_S[cycle % CLOCK_OFFSETS_S.len()];
        self.set(offset)?;
        run.mark_fault();
        self.applied.push(offset);
        Ok(())
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        run.kill();
        Ok(Map::from_iter([("offsets_s".into(), json!(self.applied))]))
    }

    fn judge(&self, report: &FaultReport) -> Vec<String> {
        let skew = evidence_range(report, "server_clock_skew_ms").unwrap_or((0, 0));
        let mut missing = missing_jumps(&self.applied, "lease", skew);
        if evidence_u64(report, "lease_expiries") == 0 {
            missing.push("no lease expired early".into());
        }
        missing
    }
}

/// `ClockJump`'s jumps in `baton serve` on PostgreSQL, which takes time from
/// the database: leases must not move. The process clock is read back from
/// lineage answers (`as_of`), so a run where the jumps never reached the
/// process fails. (The HTTP `Date` header is no such witness: hyper renders
/// it once a second and renders again only when the clock passes the next
/// second, so after a backward jump it stays frozen at the later time.)
pub struct ClockJumpPg {
    jump: ClockJump,
    url: String,
    schema: String,
    runtime: tokio::runtime::Runtime,
    client: Option<baton_client::Client>,
    /// Process clock minus this machine's clock at each probe, in ms.
    process_skews: Vec<i64>,
}

impl ClockJumpPg {
    /// On the database at `url`, in a fresh schema (dropped when this is).
    pub fn new(url: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self {
            jump: ClockJump::default(),
            url: url.to_owned(),
            schema: crate::bench::pg::schema_name("fault_clock"),
            runtime,
            client: None,
            process_skews: Vec::new(),
        })
    }

    /// On `BATON_TEST_DATABASE_URL`, else `PG_DEFAULT_URL`.
    pub fn from_env() -> Result<Self> {
        Self::new(&std::env::var("BATON_TEST_DATABASE_URL").unwrap_or_else(|_| PG_DEFAULT_URL.to_owned()))
    }

    /// Reads the process clock: `as_of` of the lineage of a task a client
    /// submitted, against this machine's clock at the middle of the call.
    fn probe(&mut self, run: &Run) -> Result<()> {
        let Some(task) = run.recorder.entries().iter().find_map(|e| match (&e.call, &e.outcome) {
            (Call::Submit { .. }, Outcome::Ok { task: Some(task), .. }) => Some(*task),
            _ => None,
        }) else {
            return Ok(());
        };
        let client = self.client.as_ref().context("no client: the server did not start")?;
        let before = unix_ms();
        let lineage = self.runtime.block_on(client.lineage(task.0)).context("lineage probe")?;
        let after = unix_ms();
        self.process_skews.push(lineage.as_of.as_millis() - (before + after) / 2);
        Ok(())
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Scenario for ClockJumpPg {
    fn name(&self) -> String {
        "clock-jump-pg".into()
    }

    fn tune(&self, config: &mut FaultConfig) {
        self.jump.tune(config);
    }

    fn prepare(&mut self, launch: &mut Launch, dir: &Path) -> Result<()> {
        self.jump.prepare(launch, dir)?;
        let listen = format!("127.0.0.1:{}", launch.port);
        launch.args = ["serve", "--database-url", &self.url, "--schema", &self.schema, "--listen", &listen]
            .map(String::from)
            .to_vec();
        Ok(())
    }

    fn started(&mut self, run: &mut Run) -> Result<()> {
        let token = run.token.as_deref().context("baton serve printed no admin token: is the schema new?")?;
        self.client = Some(baton_client::Client::new(&run.launch.address())?.with_token(token));
        Ok(())
    }

    /// Reads the clock the last jump set, then jumps again.
    fn inject(&mut self, run: &mut Run, cycle: usize) -> Result<()> {
        self.probe(run)?;
        self.jump.inject(run, cycle)
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        self.probe(run)?;
        let mut evidence = self.jump.finish(run)?;
        evidence.insert("process_clock_probes".into(), json!(self.process_skews.len()));
        if let (Some(min), Some(max)) = (self.process_skews.iter().min(), self.process_skews.iter().max()) {
            evidence.insert("process_clock_skew_ms".into(), json!([min, max]));
        }
        Ok(evidence)
    }

    fn judge(&self, report: &FaultReport) -> Vec<String> {
        let process = evidence_range(report, "process_clock_skew_ms").unwrap_or((0, 0));
        let mut missing = missing_jumps(&self.jump.applied, "probe of the process clock", process);
        match evidence_range(report, "server_clock_skew_ms") {
            None => missing.push("no lease was seen".into()),
            Some((min, max)) if min < -PG_LEASE_SKEW_MAX_MS || max > PG_LEASE_SKEW_MAX_MS => {
                missing.push(format!(
                    "lease expiry times moved with the process clock (skew {min}..{max} ms, \
                     at most {PG_LEASE_SKEW_MAX_MS} either way)"
                ));
            }
            Some(_) => {}
        }
        let expired = evidence_u64(report, "lease_expiries");
        if expired > 0 {
            missing.push(format!("{expired} leases expired early"));
        }
        missing
    }

    fn open_store(&self, _launch: &Launch) -> Result<Arc<dyn Store>> {
        let options = baton_postgres::PostgresOptions::new(&self.url)
            .context("database URL")?
            .schema(self.schema.clone())
            .readers(2)
            .listen(false);
        Ok(Arc::new(baton_postgres::PostgresStore::open(options).context("open the PostgreSQL schema")?))
    }
}

impl Drop for ClockJumpPg {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.block_on(crate::bench::pg::drop_schema(&self.url, &self.schema)) {
            eprintln!("could not drop schema {}: {e:#}", self.schema);
        }
    }
}

/// No fault: steady load, with the server's RSS, open descriptors and call
/// latency sampled once per cycle, and their drift reported (last window
/// against the first). The long tier's soak; nothing is asserted on the
/// figures (a shared machine makes them noisy), only that it ran clean.
#[derive(Default)]
pub struct Soak {
    samples: Vec<SoakSample>,
    window_start_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct SoakSample {
    rss_kib: u64,
    fds: u64,
    p50_ms: u64,
    p99_ms: u64,
    calls: usize,
}

impl Soak {
    /// About ten evenly spaced values of one figure, first and last included.
    fn series(&self, f: fn(&SoakSample) -> u64) -> Vec<u64> {
        let step = self.samples.len().div_ceil(10).max(1);
        let mut out: Vec<u64> = self.samples.iter().step_by(step).map(f).collect();
        if !(self.samples.len() - 1).is_multiple_of(step) {
            out.extend(self.samples.last().map(f));
        }
        out
    }
}

impl Scenario for Soak {
    fn name(&self) -> String {
        "soak".into()
    }

    fn injects_faults(&self) -> bool {
        false
    }

    fn inject(&mut self, run: &mut Run, _cycle: usize) -> Result<()> {
        let node = run.node.as_ref().context("no server")?;
        let (rss_kib, fds) = node.rss_and_fds().context("read the server's /proc")?;
        let now = run.recorder.elapsed_ms();
        // Holder calls and submits; claims long-poll, so their time is not latency.
        let mut took: Vec<u64> = run
            .recorder
            .entries()
            .iter()
            .filter(|e| e.invoked_ms >= self.window_start_ms && e.returned_ms <= now)
            .filter(|e| matches!(e.outcome, Outcome::Ok { .. }) && !matches!(e.call, Call::Claim { .. }))
            .map(|e| e.returned_ms - e.invoked_ms)
            .collect();
        took.sort_unstable();
        let at =
            |q: f64| took.get(((took.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0);
        self.samples.push(SoakSample { rss_kib, fds, p50_ms: at(0.5), p99_ms: at(0.99), calls: took.len() });
        self.window_start_ms = now;
        Ok(())
    }

    fn finish(&mut self, run: &mut Run) -> Result<Map<String, Value>> {
        run.kill();
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return Ok(Map::new());
        };
        let ratio = |a: u64, b: u64| {
            if a == 0 { Value::Null } else { json!((b as f64 / a as f64 * 100.0).round() / 100.0) }
        };
        Ok(Map::from_iter([
            ("samples".into(), json!(self.samples.len())),
            ("rss_kib_first_last".into(), json!([first.rss_kib, last.rss_kib])),
            ("fds_first_last".into(), json!([first.fds, last.fds])),
            ("p50_ms_first_last".into(), json!([first.p50_ms, last.p50_ms])),
            ("p99_ms_first_last".into(), json!([first.p99_ms, last.p99_ms])),
            ("calls_per_window_first_last".into(), json!([first.calls, last.calls])),
            // Every tenth of the run, to tell a plateau (caches filling) from a climb.
            ("rss_kib_series".into(), json!(self.series(|s| s.rss_kib))),
            ("p99_ms_series".into(), json!(self.series(|s| s.p99_ms))),
            ("calls_per_window_series".into(), json!(self.series(|s| s.calls as u64))),
            ("rss_drift".into(), ratio(first.rss_kib, last.rss_kib)),
            ("fds_drift".into(), ratio(first.fds, last.fds)),
            ("p99_drift".into(), ratio(first.p99_ms, last.p99_ms)),
        ]))
    }

    fn judge(&self, _report: &FaultReport) -> Vec<String> {
        if self.samples.len() < 2 { vec!["fewer than two samples".into()] } else { Vec::new() }
    }
}

/// The scenarios by name, as `baton-harness fault <name>` takes them; `eio_nth`
/// is `FsyncEio`'s first failing call.
pub fn by_name(name: &str, eio_nth: u32) -> Option<Box<dyn Scenario>> {
    Some(match name {
        "kill-9" => Box::new(Kill9::default()),
        "power-loss" => Box::new(PowerLoss::new(false)),
        "power-loss-lying-fsync" => Box::new(PowerLoss::new(true)),
        "fsync-eio" => Box::new(FsyncEio::new(eio_nth)),
        "fsync-eio-lazyfs" => Box::new(PowerLoss::on(Disk::FailingSync(u64::from(eio_nth)))),
        "clock-jump" => Box::new(ClockJump::default()),
        "clock-jump-pg" => Box::new(ClockJumpPg::from_env().ok()?),
        "soak" => Box::new(Soak::default()),
        _ => return None,
    })
}

/// Every name `by_name` knows.
pub const NAMES: [&str; 8] = [
    "kill-9",
    "power-loss",
    "power-loss-lying-fsync",
    "fsync-eio",
    "fsync-eio-lazyfs",
    "clock-jump",
    "clock-jump-pg",
    "soak",
];

/// The long tier (`baton-harness fault all`): each scenario with its cycles
/// and load time per cycle (ms).
pub const LONG_TIER: [(&str, usize, (u64, u64)); 8] = [
    ("kill-9", 100, (500, 1_500)),
    ("power-loss", 100, (500, 1_500)),
    ("power-loss-lying-fsync", 10, (500, 1_500)),
    ("fsync-eio", 20, (500, 1_500)),
    ("fsync-eio-lazyfs", 20, (500, 1_500)),
    ("clock-jump", 20, (1_500, 2_500)),
    ("clock-jump-pg", 20, (1_500, 2_500)),
    ("soak", 60, (5_000, 5_000)),
];

/// Whether a report is what its scenario should produce: the fault took
/// effect, and the checkers passed, except for the lying-fsync control run,
/// where they must find losses.
pub fn as_expected(report: &FaultReport) -> bool {
    let lying = report.scenario == "power-loss-lying-fsync";
    report.fault_took_effect && if lying { report.lost > 0 } else { report.passed() }
}

#[cfg(test)]
mod tests {
    //! Goal: a run whose fault did not take effect is never reported as a
    //! pass. Method: each scenario's `judge` over reports whose evidence
    //! lacks one piece at a time (the runs themselves are in tests/faults.rs).

    use super::*;

    fn report(scenario: &str, evidence: Value) -> FaultReport {
        let Value::Object(evidence) = evidence else { panic!("an object") };
        FaultReport {
            scenario: scenario.into(),
            faults_injected: 2,
            fault_took_effect: true,
            evidence,
            ..FaultReport::default()
        }
    }

    #[test]
    fn kill_9_needs_every_kill_by_sigkill() {
        let judge = |e| Kill9::default().judge(&report("kill-9", e));
        assert!(judge(json!({"kills": 3, "killed_by_signal_9": 3})).is_empty());
        assert_eq!(judge(json!({"kills": 3, "killed_by_signal_9": 2})).len(), 1);
        assert_eq!(judge(json!({})).len(), 1);
    }

    #[test]
    fn power_loss_needs_dropped_data_and_syncs() {
        let good = json!({"dirty_bytes_dropped": 4096, "file_syncs": 10, "lied_syncs": 0});
        assert!(PowerLoss::new(false).judge(&report("power-loss", good.clone())).is_empty());
        assert_eq!(
            PowerLoss::new(true).judge(&report("power-loss", good)).len(),
            1,
            "a lying run that never lied"
        );
        let nothing_dropped = json!({"dirty_bytes_dropped": 0, "file_syncs": 10});
        assert_eq!(PowerLoss::new(false).judge(&report("power-loss", nothing_dropped)).len(), 1);
    }

    #[test]
    fn fsync_eio_needs_injections_failed_stops_and_no_acceptance_after() {
        let judge = |e| FsyncEio::new(20).judge(&report("fsync-eio", e));
        let good = json!({"injected_eio": 2, "stops": 2, "stops_with_failure_status": 2, "accepted_after_injection": 0});
        assert!(judge(good).is_empty());
        assert_eq!(judge(json!({"injected_eio": 0, "stops": 2, "stops_with_failure_status": 2})).len(), 1);
        assert_eq!(judge(json!({"injected_eio": 2, "stops": 2, "stops_with_failure_status": 1})).len(), 1);
        let went_on = json!({"injected_eio": 2, "stops": 2, "stops_with_failure_status": 2, "accepted_after_injection": 5});
        assert_eq!(judge(went_on).len(), 1);
    }

    #[test]
    fn clock_jump_needs_both_skews_and_an_early_expiry() {
        let jumped = ClockJump { file: PathBuf::new(), applied: vec![600, 0, -600, 0] };
        let judge = |e| jumped.judge(&report("clock-jump", e));
        assert!(judge(json!({"server_clock_skew_ms": [-600_010, 599_990], "lease_expiries": 3})).is_empty());
        assert_eq!(judge(json!({"server_clock_skew_ms": [-20, 5], "lease_expiries": 3})).len(), 2);
        assert_eq!(judge(json!({"server_clock_skew_ms": [-600_010, 599_990], "lease_expiries": 0})).len(), 1);
    }

    #[test]
    fn clock_jump_pg_needs_both_process_skews_still_leases_and_no_expiry() {
        let mut pg = ClockJumpPg::new(PG_DEFAULT_URL).expect("a runtime");
        pg.jump.applied = vec![600, 0, -600, 0];
        let judge = |e| pg.judge(&report("clock-jump-pg", e));
        let good = json!({"process_clock_skew_ms": [-600_004, 600_002], "server_clock_skew_ms": [-40, 900],
            "lease_expiries": 0});
        assert!(judge(good).is_empty());
        // The jumps never reached the process: no evidence.
        let unmoved = json!({"process_clock_skew_ms": [-3, 2], "server_clock_skew_ms": [-40, 900],
            "lease_expiries": 0});
        assert_eq!(judge(unmoved).len(), 2);
        assert_eq!(judge(json!({"server_clock_skew_ms": [-40, 900], "lease_expiries": 0})).len(), 2);
        // Leases that followed the process clock, or expired early.
        let moved = json!({"process_clock_skew_ms": [-600_004, 600_002], "server_clock_skew_ms": [-599_990, 30],
            "lease_expiries": 0});
        assert_eq!(judge(moved).len(), 1);
        let expired = json!({"process_clock_skew_ms": [-600_004, 600_002], "server_clock_skew_ms": [-40, 900],
            "lease_expiries": 2});
        assert_eq!(judge(expired).len(), 1);
        assert_eq!(
            judge(json!({"process_clock_skew_ms": [-600_004, 600_002], "lease_expiries": 0})).len(),
            1
        );
    }

    #[test]
    fn a_failing_disk_needs_failed_syncs_and_failed_stops() {
        let judge = |e| PowerLoss::on(Disk::FailingSync(20)).judge(&report("fsync-eio-lazyfs", e));
        let good = json!({"dirty_bytes_dropped": 4096, "file_syncs": 40, "failed_syncs": 2, "stops": 2,
            "stops_with_failure_status": 2});
        assert!(judge(good).is_empty());
        let never_failed = json!({"dirty_bytes_dropped": 4096, "file_syncs": 40, "failed_syncs": 0, "stops": 2,
            "stops_with_failure_status": 2});
        assert_eq!(judge(never_failed).len(), 1);
    }

    #[test]
    fn the_lying_control_is_as_expected_only_with_losses() {
        let mut r = report("power-loss-lying-fsync", json!({}));
        assert!(!as_expected(&r));
        r.lost = 3;
        assert!(as_expected(&r));
        let mut clean = report("power-loss", json!({}));
        assert!(as_expected(&clean));
        clean.fault_took_effect = false;
        assert!(!as_expected(&clean));
    }
}
