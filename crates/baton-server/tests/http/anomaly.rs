//! Anomaly detection on synthetic traffic with a manual clock.
//!
//! Goal: a doubling of accept latency (30 s becoming 60 s) is flagged within
//! the configured window, once per key and metric while it lasts; a backlog
//! ramp is flagged before any task passes its stage's `accept_within`; a
//! simulated week of steady, noisy traffic raises nothing (the count of
//! false positives is printed and documented in docs/benchmarks.md).
//! Method: real traffic through an SQLite store (in /dev/shm when there is
//! one: a simulated week commits ~150,000 times, and fsync on tmpfs is
//! free) whose listener is the server's `ReadyHub`, so every observation comes from a committed change
//! and goes through the server's aggregator; at every minute boundary the
//! simulation flushes the aggregator (`metrics::flush`), fires due timers and
//! runs the detector (`Detector::run`) at that time. Events are scheduled in
//! time order from a seeded xorshift generator, so every run is the same.

use baton_core::metrics::{Anomaly, BUCKET_MS};
use baton_core::{
    ActRequest, Action, AgentId, ClaimRequest, Millis, Policies, Rules, StageName, StagePolicy, Store,
};
use baton_server::anomaly::{AnomalyOptions, Detector};
use baton_server::{AppState, Config, Options, ReadyHub};
use baton_sqlite::{SqliteOptions, SqliteStore};
use baton_testkit::ManualClock;
use std::sync::Arc;

/// How long a task may wait in the simulated stages before the ladder acts.
const ACCEPT_WITHIN_MS: Millis = 10 * 60_000;

struct Sim {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    state: AppState,
    detector: Detector,
    rng: u64,
    /// The next minute boundary at which the detector runs.
    next_run: Millis,
    /// Every anomaly raised, with the time of the run that raised it.
    raised: Vec<(u64, Anomaly)>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let clock = Arc::new(ManualClock::new(1_700_000_040_000 - 1_700_000_040_000 % BUCKET_MS));
        let mut rules = Rules::default();
        let slow = StagePolicy { accept_within_ms: ACCEPT_WITHIN_MS, ..StagePolicy::default() };
        rules.policies = Policies::default().with_stage("b", slow.clone()).with_stage("work", slow);
        rules.limits.leases_per_agent_max = 10_000;
        let hub = Arc::new(ReadyHub::new());
        let shm = std::path::Path::new("/dev/shm");
        let dir =
            if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("temp dir");
        let store = SqliteStore::open(
            dir.path().join("baton.db"),
            SqliteOptions::default().clock(clock.clone()).rules(rules.clone()).listener(hub.clone()),
        )
        .expect("open the store");
        let options = Options { limits: rules.limits, policies: rules.policies, ..Options::default() };
        let state = AppState::new(Config { store: Arc::new(store), clock: clock.clone(), hub, options });
        let next_run = clock.now() + BUCKET_MS;
        Self {
            _dir: dir,
            clock,
            state,
            detector: Detector::new(AnomalyOptions::default()),
            rng: seed,
            next_run,
            raised: Vec::new(),
        }
    }

    fn store(&self) -> &dyn Store {
        self.state.store()
    }

    /// A uniform draw in 0..1.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base` with uniform noise of +-`spread` (a fraction).
    fn noisy(&mut self, base: f64, spread: f64) -> Millis {
        (base * (1.0 + spread * (2.0 * self.uniform() - 1.0))) as Millis
    }

    /// Moves the clock to `t`, running the detector at every minute boundary on the way.
    async fn until(&mut self, t: Millis) {
        while self.next_run <= t {
            self.clock.set(self.next_run);
            self.minute().await;
            self.next_run += BUCKET_MS;
        }
        self.clock.set(t.max(self.clock.now()));
    }

    async fn minute(&mut self) {
        baton_server::metrics::flush(&self.state).await;
        self.store().fire_due(10_000).await.expect("fire due");
        let now = self.clock.now();
        self.detector.run(&self.state, now).await.expect("detection runs");
        let after = self.raised.last().map_or(0, |(id, _)| *id);
        for found in self.store().anomalies(after, 500, false).await.expect("anomalies") {
            self.raised.push(found);
        }
    }

    async fn submit(&self, stage: &str) {
        self.store().submit(baton_testkit::suite::new_task(stage, "{}")).await.expect("submit");
    }

    /// Claims one task in `stage` as `agent`; acts on it with `action`.
    async fn claim_and(&self, agent: &str, stage: &str, action: Action) -> bool {
        let request = ClaimRequest {
            agent: AgentId::new(agent),
            stages: vec![StageName::new(stage)],
            max: 1,
            lease_ms: None,
            only: None,
            credential: None,
        };
        let Some(grant) = self.store().claim(request).await.expect("claim").pop() else { return false };
        let act = ActRequest {
            task: grant.task.id,
            agent: AgentId::new(agent),
            epoch: grant.epoch,
            action,
            claim_next: None,
            caller: None,
        };
        self.store().act(act).await.expect("act");
        true
    }

    /// Runs `minutes` of a -> b handoffs, about `per_minute` of them (+-50%)
    /// at uneven times, with accept latency `latency_ms` +-30% (and 1 in 50
    /// twice as slow), then returns.
    async fn handoffs(&mut self, minutes: i64, per_minute: usize, latency_ms: f64) {
        self.handoffs_losing(minutes, per_minute, latency_ms, 0.0).await;
    }

    /// As `handoffs`, with a `lost` share of the handoffs cancelled while
    /// pending instead of accepted.
    async fn handoffs_losing(&mut self, minutes: i64, per_minute: usize, latency_ms: f64, lost: f64) {
        let start = self.clock.now();
        let mut schedule = Vec::new();
        for m in 0..minutes {
            // Uneven minutes: from half to one and a half times the rate.
            let count = self.noisy(per_minute as f64, 0.5).max(1);
            for _ in 0..count {
                let send = start + m * BUCKET_MS + self.noisy(30_000.0, 1.0);
                let slow = if self.uniform() < 0.02 { 2.0 } else { 1.0 };
                let accept = send + self.noisy(latency_ms * slow, 0.3);
                let outcome = if self.uniform() < lost { 2 } else { 1 };
                schedule.push((send, 0));
                schedule.push((accept, outcome));
            }
        }
        schedule.sort_unstable();
        for (at, kind) in schedule {
            self.until(at).await;
            match kind {
                0 => {
                    self.submit("a").await;
                    assert!(self.claim_and("sender", "a", baton_testkit::suite::handoff_to("b")).await);
                }
                1 => assert!(self.claim_and("receiver", "b", baton_testkit::suite::complete()).await),
                _ => self.cancel_one("b").await,
            }
        }
        self.until(start + minutes * BUCKET_MS).await;
    }

    /// Cancels the oldest task waiting in `stage` (its handoff ends `cancelled`).
    async fn cancel_one(&self, stage: &str) {
        let filter = baton_core::TaskFilter {
            stage: Some(StageName::new(stage)),
            state: Some(baton_core::StateName::Waiting),
            parent: None,
            after: None,
            limit: 1,
        };
        let task = self.store().list(filter).await.expect("list").tasks.remove(0);
        let request = baton_core::CancelRequest {
            task: task.id,
            actor: baton_core::Actor::Principal("operator".into()),
            reason: "lost in the simulation".into(),
            caller: None,
        };
        self.store().cancel(request).await.expect("cancel");
    }

    fn raised(&self, metric: &str) -> Vec<&Anomaly> {
        self.raised.iter().map(|(_, a)| a).filter(|a| a.metric == metric).collect()
    }
}

#[tokio::test]
async fn a_doubling_of_accept_latency_is_flagged_within_the_window_and_once() {
    let mut sim = Sim::new(0x5eed_0001);
    sim.handoffs(90, 6, 30_000.0).await;
    assert_eq!(sim.raised.len(), 0, "steady traffic raises nothing: {:?}", sim.raised);
    let change = sim.clock.now();
    sim.handoffs(30, 6, 60_000.0).await;
    let latency = sim.raised("accept_latency");
    let window = AnomalyOptions::default().window_ms;
    let edge = latency
        .iter()
        .find(|a| matches!(&a.key, baton_core::metrics::RollupKey::Edge { from, to } if from.as_str() == "a" && to.as_str() == "b"))
        .unwrap_or_else(|| panic!("the edge a -> b is flagged: {:?}", sim.raised));
    assert!(
        edge.raised_at <= change + window,
        "flagged {} ms after the change, within the {window} ms window",
        edge.raised_at - change
    );
    assert!(
        edge.observed >= 1.5 * edge.baseline && (25_000.0..40_000.0).contains(&edge.baseline),
        "{edge:?}"
    );
    assert_eq!(latency.len(), 2, "once for the stage edge, once for the agent edge: {latency:?}");
    println!("latency doubling flagged {} ms after the change", edge.raised_at - change);
}

#[tokio::test]
async fn a_backlog_ramp_is_flagged_before_any_task_passes_accept_within() {
    let mut sim = Sim::new(0x5eed_0002);
    // The worker looks every 7.5 s and claims one task: 8 a minute. Arrivals:
    // 6 a minute for 90 minutes, then 12 a minute.
    let start = sim.clock.now();
    let ramp_at = start + 90 * BUCKET_MS;
    let end = ramp_at + 30 * BUCKET_MS;
    let mut schedule = Vec::new();
    let mut t = start;
    while t < end {
        let per_minute = if t < ramp_at { 6.0 } else { 12.0 };
        t += sim.noisy(60_000.0 / per_minute, 0.5);
        schedule.push((t, 0));
    }
    let mut t = start;
    while t < end {
        t += 7_500;
        schedule.push((t, 1));
    }
    schedule.sort_unstable();
    let mut flagged = None;
    for (at, kind) in schedule {
        sim.until(at).await;
        if flagged.is_none() && !sim.raised("backlog_growth").is_empty() {
            let gauges = sim.store().stage_gauges(10).await.expect("gauges");
            let work = gauges.iter().find(|g| g.stage.as_str() == "work").expect("the work stage");
            let oldest = sim.clock.now() - work.oldest_ready_since.expect("a backlog");
            let so_far =
                baton_server::metrics::window(&sim.state, start, sim.clock.now() + 1).await.expect("window");
            let key = baton_core::metrics::RollupKey::Stage { stage: StageName::new("work") };
            flagged = Some((sim.clock.now(), oldest, work.ready, so_far.keys[&key].timeouts));
        }
        if kind == 0 {
            sim.submit("work").await;
        } else {
            sim.claim_and("worker", "work", baton_testkit::suite::complete()).await;
        }
    }
    let (at, oldest, backlog, timeouts) =
        flagged.unwrap_or_else(|| panic!("the ramp is flagged: {:?}", sim.raised));
    assert!(at > ramp_at, "nothing before the ramp: {:?}", sim.raised);
    assert!(oldest < ACCEPT_WITHIN_MS, "flagged while the oldest task had waited {oldest} ms");
    assert_eq!(timeouts, 0, "no task waited out accept_within before the flag");
    assert_eq!(sim.raised("backlog_growth").len(), 1, "raised once while it lasts");
    println!(
        "backlog ramp flagged {} ms after it began, backlog {backlog}, oldest waiting {oldest} ms",
        at - ramp_at
    );
}

#[tokio::test]
async fn a_falling_success_rate_is_flagged() {
    let mut sim = Sim::new(0x5eed_0004);
    sim.handoffs_losing(90, 6, 30_000.0, 0.01).await;
    assert_eq!(sim.raised.len(), 0, "1% lost is the baseline: {:?}", sim.raised);
    let change = sim.clock.now();
    sim.handoffs_losing(20, 6, 30_000.0, 0.3).await;
    let flagged = sim.raised("success_rate");
    let edge =
        flagged.first().unwrap_or_else(|| panic!("the success rate fall is flagged: {:?}", sim.raised));
    assert!(edge.observed < edge.baseline - 0.05, "{edge:?}");
    assert!(edge.raised_at <= change + AnomalyOptions::default().window_ms, "{} ms", edge.raised_at - change);
    assert_eq!(flagged.len(), 1, "once: {flagged:?}");
    println!("success rate fall flagged {} ms after it began: {}", edge.raised_at - change, edge.message);
}

/// The week runs about 3 handoffs a minute (+-50%) at uneven times, with
/// +-30% latency noise, 1 in 50 twice as slow and 1 in 100 lost (cancelled
/// while pending): 10,080 detector runs.
/// Prints the false positives.
#[tokio::test]
async fn a_week_of_steady_noisy_traffic_raises_no_alert() {
    let mut sim = Sim::new(0x5eed_0003);
    let days = 7;
    for _ in 0..days {
        sim.handoffs_losing(24 * 60, 3, 30_000.0, 0.01).await;
    }
    println!("a simulated week: {} false positives: {:?}", sim.raised.len(), sim.raised);
    assert_eq!(sim.raised.len(), 0, "no alert on steady traffic");
}
