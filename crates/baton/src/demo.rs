//! `baton demo`: the loss Baton exists to stop, shown in under a minute.
//!
//! The same patients arrive, on the same schedule, at two copies of one
//! pipeline (intake, triage, specialist, notify, records) with the same faults:
//! triage crashes mid-task once, the specialist never answers on some cases,
//! the notifier (an SMS gateway) answers late on others, the records consumer
//! wakes only every few seconds to take a batch, and the hub in the middle is
//! killed and restarted once. One copy is written the way point-to-point
//! handoffs usually are (`naive`: HTTP calls with timeouts and retries,
//! in-memory queues); the other runs on Baton (`coordinated`: a child `baton
//! dev` in a temporary directory, really SIGKILLed and restarted, with agents
//! that claim, hand off and complete).
//!
//! The tallies are counted, never assumed: the naive one from its own ledger
//! of arrivals and executions (a patient is lost when the last stage never
//! ran for it; sent twice when a stage ran more than once), Baton's from the
//! store (each task's state and history; ran twice when a stage accepted more
//! than one handoff or completion for a task). `--seed` fixes arrivals and
//! the fault schedule, `--no-faults` turns every fault off (then the naive
//! copy loses nothing: the demo is not rigged), `--keep` leaves Baton's data
//! for `baton dev --data-dir`, `-o json` prints the tallies and ledgers.

mod coordinated;
mod naive;

use crate::output::Format;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The pipeline's stages, in order; the last one's execution finishes a patient.
pub const STAGES: [&str; 5] = ["intake", "triage", "specialist", "notify", "records"];

/// Patients per run unless `--patients` says otherwise.
const PATIENTS_DEFAULT: u32 = 24;
/// The most patients a run may have (the run must stay under a minute).
const PATIENTS_MAX: u32 = 200;
/// Arrivals are spread over this long.
const ARRIVALS_SPAN: Duration = Duration::from_secs(8);
/// A run that has not settled by then stops and reports what it has.
pub const RUN_DEADLINE: Duration = Duration::from_secs(45);
/// How often the live table is redrawn.
const REDRAW: Duration = Duration::from_millis(500);
/// How long a crashed agent or the killed hub stays down before it is back.
pub const DOWNTIME: Duration = Duration::from_millis(800);
/// The records consumer, with faults on, wakes this often to take a batch.
pub const BATCH_EVERY: Duration = Duration::from_secs(3);
/// How late the notifier answers on its late cases.
pub const LATE_BY: Duration = Duration::from_millis(2_500);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seed for the arrivals and the fault schedule (same seed, same run plan).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// How many patients arrive.
    #[arg(long, default_value_t = PATIENTS_DEFAULT)]
    patients: u32,
    /// Turn every fault off (the naive pipeline then loses nothing).
    #[arg(long)]
    no_faults: bool,
    /// Keep Baton's data directory and print where it is.
    #[arg(long)]
    keep: bool,
    /// Output format: a live table and a tally, or the tallies and ledgers as JSON.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// What both pipelines face: the arrivals and the faults, fixed by the seed.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub seed: u64,
    pub faults: bool,
    /// Each patient's arrival, in milliseconds from the start.
    pub arrivals_ms: Vec<u64>,
    /// Patients the specialist never answers on.
    pub silent: BTreeSet<u32>,
    /// Patients the notifier answers late on.
    pub late: BTreeSet<u32>,
    /// When triage crashes mid-task (its next task after this moment).
    pub crash_ms: Option<u64>,
    /// When the hub (Baton itself; the naive intake service) is killed.
    pub kill_ms: Option<u64>,
}

impl Plan {
    pub fn new(seed: u64, patients: u32, faults: bool) -> Self {
        let mut rng = SplitMix(seed);
        let span = ARRIVALS_SPAN.as_millis() as u64;
        let mut arrivals_ms: Vec<u64> = (0..patients).map(|_| rng.below(span)).collect();
        arrivals_ms.sort_unstable();
        let mut pick = |share: u64| -> BTreeSet<u32> {
            if !faults {
                return BTreeSet::new();
            }
            (0..patients).filter(|_| rng.below(100) < share).collect()
        };
        let silent = pick(8);
        let late = pick(20);
        let (crash_ms, kill_ms) = if faults {
            (Some(1_500 + rng.below(2_000)), Some(3_500 + rng.below(2_000)))
        } else {
            (None, None)
        };
        Self { seed, faults, arrivals_ms, silent, late, crash_ms, kill_ms }
    }

    pub fn patients(&self) -> u32 {
        self.arrivals_ms.len() as u32
    }
}

/// A small seeded generator (SplitMix64): the plan must be the same for a seed
/// on every machine, without a dependency for it.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a side has done so far, per stage, for the live table.
#[derive(Default)]
pub struct Progress {
    pub ran: [AtomicU32; STAGES.len()],
    /// Naive: patients given up on; Baton: patients escalated to the inbox.
    pub set_aside: AtomicU32,
}

impl Progress {
    pub fn ran(&self, stage: &str) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.ran[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Things that happened, with when, shared by both sides.
#[derive(Default)]
pub struct Timeline {
    events: Mutex<Vec<(u64, String)>>,
}

impl Timeline {
    pub fn note(&self, start: Instant, what: impl Into<String>) {
        let at = start.elapsed().as_millis() as u64;
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((at, what.into()));
    }

    fn all(&self) -> Vec<(u64, String)> {
        let mut all = self.events.lock().unwrap_or_else(PoisonError::into_inner).clone();
        all.sort();
        all
    }
}

#[derive(Debug, Serialize)]
struct Report {
    plan: Plan,
    naive: naive::Tally,
    baton: coordinated::Tally,
    events: Vec<Event>,
    /// Baton's data directory, when `--keep` left it.
    baton_data: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Event {
    at_ms: u64,
    what: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=PATIENTS_MAX).contains(&args.patients),
        "--patients must be between 1 and {PATIENTS_MAX}"
    );
    let plan = Plan::new(args.seed, args.patients, !args.no_faults);
    let dir = tempfile::Builder::new().prefix("baton-demo-").tempdir()?;
    let exe = std::env::current_exe()?;
    let baton = coordinated::Side::prepare(&exe, dir.path(), &plan).await?;
    let naive = naive::Side::prepare(&plan).await?;

    let timeline = Arc::new(Timeline::default());
    let live = args.output == Format::Text && std::io::stdout().is_terminal();
    if args.output == Format::Text {
        println!("{}", intro(&plan));
    }
    let start = Instant::now();
    let naive_run = tokio::spawn(naive.clone().run(start, timeline.clone()));
    let baton_run = tokio::spawn(baton.clone().run(start, timeline.clone()));
    let mut drawn = 0;
    while !(naive_run.is_finished() && baton_run.is_finished()) {
        tokio::time::sleep(REDRAW).await;
        if live {
            drawn = redraw(drawn, start, &naive.progress, &baton.progress, &timeline);
        }
    }
    let naive_tally = naive_run.await??;
    let baton_tally = baton_run.await??;
    baton.stop();
    if live {
        redraw(drawn, start, &naive.progress, &baton.progress, &timeline);
    }
    let baton_data = if args.keep { Some(dir.keep()) } else { None };
    let report = Report {
        plan,
        naive: naive_tally,
        baton: baton_tally,
        events: timeline.all().into_iter().map(|(at_ms, what)| Event { at_ms, what }).collect(),
        baton_data,
    };
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", tally_text(&report)),
    }
    Ok(())
}

fn intro(plan: &Plan) -> String {
    let mut s = format!(
        "baton demo: {} patients through intake, triage, specialist, notify, records (seed {})\n",
        plan.patients(),
        plan.seed
    );
    if plan.faults {
        s.push_str(&format!(
            "faults: triage crashes mid-task once; the specialist never answers on {} cases; the notifier \
             answers {:.1}s late on {}; records wakes every {}s; the hub is SIGKILLed and restarted once\n",
            plan.silent.len(),
            LATE_BY.as_secs_f64(),
            plan.late.len(),
            BATCH_EVERY.as_secs()
        ));
    } else {
        s.push_str("faults: none (--no-faults)\n");
    }
    s.push_str(
        "naive: HTTP calls with timeouts and retries, in-memory queues | baton: a `baton dev` child\n",
    );
    s
}

/// Draws the live table (over the previous one) and returns its line count.
fn redraw(previous: usize, start: Instant, naive: &Progress, baton: &Progress, timeline: &Timeline) -> usize {
    let mut s = String::new();
    if previous > 0 {
        s.push_str(&format!("\x1b[{previous}A\x1b[J"));
    }
    let row = |name: &str, p: &Progress, aside: &str| {
        let ran: Vec<String> = p.ran.iter().map(|n| format!("{:>12}", n.load(Ordering::Relaxed))).collect();
        format!("{name:<7}{} {:>6} {aside}\n", ran.join(""), p.set_aside.load(Ordering::Relaxed))
    };
    s.push_str(&format!("t={:>4.1}s", start.elapsed().as_secs_f64()));
    for stage in STAGES {
        s.push_str(&format!("{stage:>12}"));
    }
    s.push('\n');
    s.push_str(&row("naive", naive, "given up on"));
    s.push_str(&row("baton", baton, "in the inbox"));
    let events = timeline.all();
    let last: Vec<_> = events.iter().rev().take(3).rev().collect();
    for (at, what) in &last {
        s.push_str(&format!("  {:>5.1}s  {what}\n", *at as f64 / 1000.0));
    }
    print!("{s}");
    let _ = std::io::stdout().flush();
    3 + last.len()
}

fn tally_text(r: &Report) -> String {
    let n = r.plan.patients();
    let mut s = String::new();
    s.push_str(&format!(
        "\nnaive: lost {} of {n}, sent {} twice\n",
        r.naive.lost.len(),
        r.naive.sent_twice.iter().map(|t| t.patient).collect::<BTreeSet<_>>().len()
    ));
    for lost in &r.naive.lost {
        s.push_str(&format!("  patient {:>3} lost: {}\n", lost.patient, lost.why));
    }
    for twice in &r.naive.sent_twice {
        s.push_str(&format!("  patient {:>3} ran {} times at {}\n", twice.patient, twice.times, twice.stage));
    }
    s.push_str(&format!(
        "baton: lost {} of {n}, ran {} twice, escalated {} to the inbox\n",
        r.baton.lost.len(),
        r.baton.ran_twice.len(),
        r.baton.escalated.len()
    ));
    for lost in &r.baton.lost {
        s.push_str(&format!("  patient {:>3} LOST: {}\n", lost.patient, lost.why));
    }
    for open in &r.baton.unsettled {
        s.push_str(&format!("  patient {:>3} still in Baton's custody: {}\n", open.patient, open.why));
    }
    for e in &r.baton.escalated {
        s.push_str(&format!("  patient {:>3} in the inbox: {}\n", e.patient, e.why));
    }
    if let Some(dir) = &r.baton_data {
        s.push_str(&format!(
            "Baton's data is kept in {}: `baton dev --data-dir {}/.baton`, then `baton inbox list`\n",
            dir.display(),
            dir.display()
        ));
    }
    s
}
