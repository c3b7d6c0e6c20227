//! Baton's patient-intake example, end to end against a running server.
//!
//! `run` applies the `patient-intake` workflow (the committed
//! `workflow.toml`, on a demo clock unless told otherwise), starts the
//! agents (see `agents`: one never answers, one crashes mid-task, one
//! answers late), submits the patients through the workflow, waits (bounded)
//! until every task has settled, stops the agents and checks every task and
//! child (see `check`): each ends done, aborted with its compensation, or in
//! the human inbox; none is lost; each history is complete and chained; each
//! case went the way its facts say. The `Report` holds the counts and every
//! violation; `main.rs` prints it and exits non-zero on any violation, and
//! the `baton` crate's CLI tests run the same function against a real
//! `baton dev`.

pub mod agents;
pub mod check;
pub mod patients;
pub mod setup;

use anyhow::Context;
use baton_client::api::{Payload, SubmitRequest};
use baton_client::{Client, Error};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{Instant, sleep};

pub use check::Counts;
pub use setup::Timings;

/// The workflow's name, as the file declares it.
pub const WORKFLOW: &str = "patient-intake";
/// Patients one run may submit.
pub const PATIENTS_MAX: usize = 500;
/// Leases the crashing mailer may hold when it dies.
pub const CRASHES_MAX: usize = 20;
/// How long the run waits for the server to answer before it starts.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long one call may take before it fails (the agents' own calls too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed submits in a row (server busy or unreachable) before the run gives up.
const SUBMIT_RETRIES_MAX: u32 = 20;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server, `http://HOST:PORT`.
    pub url: String,
    /// Patients to submit.
    pub patients: usize,
    /// Email leases the crashing mailer takes before it dies (0: no crash).
    pub crashes: usize,
    /// How long to wait for every task to settle.
    pub settle_within: Duration,
    /// The workflow file's text.
    pub workflow_source: String,
    pub timings: Timings,
    /// Print progress on stderr.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            url: baton_client::DEFAULT_ADDRESS.to_owned(),
            patients: 20,
            crashes: 3,
            settle_within: Duration::from_secs(45),
            workflow_source: setup::WORKFLOW_SOURCE.to_owned(),
            timings: Timings::Demo,
            verbose: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The workflow version the patients ran under.
    pub version: u32,
    pub counts: Counts,
    /// Every broken promise; empty when the run passed.
    pub violations: Vec<String>,
    /// From the first submit to the end of the settle wait.
    pub elapsed: Duration,
    /// Whether a refund could be exercised (a stage follows billing).
    pub refunds_possible: bool,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The summary table, then the violations.
    pub fn render(&self) -> String {
        let mut out = format!(
            "patient-intake v{} in {:.1} s\n{}",
            self.version,
            self.elapsed.as_secs_f64(),
            check::table(&self.counts)
        );
        if !self.refunds_possible {
            out.push_str(
                "  note: no stage follows billing in the workflow, so an abort cannot compensate billing\n\
                 \x20       (only stages already done are compensated); lapsed cases are aborted at billing\n",
            );
        }
        if self.passed() {
            out.push_str(
                "ok: every task done, aborted with its compensation, or in the human inbox; none lost\n",
            );
        } else {
            out.push_str(&format!("FAILED: {} violation(s)\n", self.violations.len()));
            for v in &self.violations {
                out.push_str(&format!("  - {v}\n"));
            }
        }
        out
    }
}

/// Runs the example against the server at `options.url`. Errors mean the
/// run could not be made (bad options, server unreachable, workflow
/// refused); broken promises are in the report's violations.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=PATIENTS_MAX).contains(&options.patients),
        "patients: between 1 and {PATIENTS_MAX} (PATIENTS_MAX)"
    );
    anyhow::ensure!(options.crashes <= CRASHES_MAX, "crashes: at most {CRASHES_MAX} (CRASHES_MAX)");
    let say = |text: &str| {
        if options.verbose {
            eprintln!("patient-intake: {text}");
        }
    };
    let prepared = setup::prepare(&options.workflow_source, options.timings)?;
    let cast = setup::Cast::of(&prepared.workflow)?;
    let client = Client::new(&options.url)?.with_request_timeout(REQUEST_TIMEOUT);
    wait_ready(&client).await?;
    let applied = client.apply_workflow(&prepared.source).await.context("apply the workflow")?;
    let version = applied.workflow.version;
    say(&format!("applied {WORKFLOW} v{version}; specialist {} never answers", cast.specialist));

    let (stop_tx, stop) = agents::Stop::channel();
    let fleet = agents::Fleet::start(&client, &cast, options.crashes, &stop)?;
    let started = Instant::now();
    let run_id = run_id();
    let mut roots = Vec::with_capacity(options.patients);
    for patient in patients::plan(options.patients) {
        let mut request = SubmitRequest::new("", Payload::from_value(&patient.payload())?);
        request.stage = None;
        request.workflow = Some(WORKFLOW.to_owned());
        request.idempotency_key = Some(format!("{run_id}-{}", patient.id));
        request.labels.insert("patient".to_owned(), patient.id.clone());
        let task = submit(&client, &request).await.with_context(|| format!("submit {}", patient.id))?;
        roots.push(check::Tracked { patient, task });
    }
    say(&format!("submitted {} patients; waiting for every task to settle", roots.len()));
    let settled = check::wait_settled(&client, &roots, &cast.human_stages, options.settle_within).await;
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let tally = fleet.tally.clone();
    let mut violations = fleet.join().await;
    match settled {
        Ok(true) => say(&format!("settled in {:.1} s; checking", elapsed.as_secs_f64())),
        Ok(false) => violations.push(format!(
            "not every task settled within {:?}: the unsettled ones are reported as lost",
            options.settle_within
        )),
        Err(error) => return Err(error).context("read the tasks while waiting for them to settle"),
    }
    let crashed = tally.crashed_leases.load(Ordering::Relaxed);
    say(&format!(
        "agents: mailer crashed holding {crashed} lease(s); {} late SMS claims; {} fan-outs; {} aborts",
        tally.late_claims.load(Ordering::Relaxed),
        tally.spawns.load(Ordering::Relaxed),
        tally.aborts.load(Ordering::Relaxed)
    ));
    let checker = check::Checker::new(&client, &cast, &prepared.workflow, crashed);
    let (counts, found) = checker.run(&roots).await.context("read the tasks to check them")?;
    violations.extend(found);
    Ok(Report { version, counts, violations, elapsed, refunds_possible: cast.refunds_possible() })
}

/// Waits until the server answers its health check.
async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        match client.health().await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error).context(format!(
                    "Baton at {} did not answer within {READY_WITHIN:?}; start it with \
                     `cargo run --release -p baton -- dev`",
                    client.address()
                ));
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Submits, retrying while the server is busy or unreachable (the
/// idempotency key makes a repeat return the first task).
async fn submit(client: &Client, request: &SubmitRequest) -> Result<baton_client::TaskId, Error> {
    let mut failures = 0;
    loop {
        match client.submit(request).await {
            Ok(submitted) => return Ok(submitted.task.id),
            Err(error) if error.is_retryable() && failures < SUBMIT_RETRIES_MAX => {
                failures += 1;
                sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A run's prefix for idempotency keys, so runs against one server never collide.
fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("run-{:x}", nanos)
}
