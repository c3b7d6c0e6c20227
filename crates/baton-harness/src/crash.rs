//! The crash child: the workload of the kill -9 test (T1 of
//! docs/glossary.md). Several threads submit tasks with idempotency keys, claim them, and
//! hand them off through stages a → b → c → done, against Baton's SQLite
//! store, until the parent kills the process. After every acknowledged
//! operation the child prints one line to stdout, flushed, so the parent
//! knows exactly what it was promised; what the parent checks after the
//! kill lives in the test (tests/faults.rs). This module also parses those
//! lines back (`Ack`), the contract between the two processes.

use crate::exec::block_on;
use crate::store::open_sqlite;
use anyhow::{Context as _, Result, bail};
use baton_core::{
    ActRequest, Action, AgentId, ClaimNext, ClaimRequest, Error, Grant, NewTask, Report, StageName, Store,
    TaskId,
};
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The child's stages, in order; tasks finish by completing at the last one.
pub const CRASH_STAGES: [&str; 3] = ["a", "b", "c"];

/// Short leases, so that tasks held by a killed child come back quickly
/// (through the next child's sweeper) instead of staying held for 30 s.
pub const CRASH_LEASE_MS: i64 = 1_000;

/// How often the child's sweeper fires due timers (expired leases).
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Timers one sweep acts on at most.
const SWEEP_BATCH_MAX: usize = 256;

/// What `crash-child` is told.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub db: PathBuf,
    pub seed: u64,
    pub threads: usize,
    /// The child stops by itself after this long, if nobody kills it first.
    pub run_ms_max: u64,
    /// Operations per thread at most, so a forgotten child stays bounded too.
    pub ops_per_thread_max: u64,
}

/// The submit a key stands for. The parent rebuilds it to check idempotency,
/// so it must be a pure function of the key (the store compares a digest).
pub fn new_task(key: &str) -> NewTask {
    NewTask::new(CRASH_STAGES[0], format!("{{\"key\":\"{key}\"}}")).key(key)
}

/// One acknowledged operation, as printed by the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Submit { key: String, task: TaskId },
    Claim { task: TaskId, stage: String, epoch: u64 },
    Handoff { task: TaskId, from: String, to: String, epoch: u64 },
    Complete { task: TaskId, stage: String, epoch: u64 },
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Submit { key, task } => write!(f, "submit {key} {task}"),
            Self::Claim { task, stage, epoch } => write!(f, "claim {task} {stage} {epoch}"),
            Self::Handoff { task, from, to, epoch } => write!(f, "handoff {task} {from} {to} {epoch}"),
            Self::Complete { task, stage, epoch } => write!(f, "complete {task} {stage} {epoch}"),
        }
    }
}

impl Ack {
    /// Parses one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let words: Vec<&str> = line.split(' ').collect();
        let task = |s: &str| s.parse::<TaskId>().ok();
        Some(match words.as_slice() {
            ["submit", key, id] => Self::Submit { key: (*key).to_owned(), task: task(id)? },
            ["claim", id, stage, epoch] => {
                Self::Claim { task: task(id)?, stage: (*stage).to_owned(), epoch: epoch.parse().ok()? }
            }
            ["handoff", id, from, to, epoch] => Self::Handoff {
                task: task(id)?,
                from: (*from).to_owned(),
                to: (*to).to_owned(),
                epoch: epoch.parse().ok()?,
            },
            ["complete", id, stage, epoch] => {
                Self::Complete { task: task(id)?, stage: (*stage).to_owned(), epoch: epoch.parse().ok()? }
            }
            _ => return None,
        })
    }

    /// Parses a child's whole stdout. Only newline-terminated lines count: a
    /// kill can cut the last line short, and a half line promised nothing.
    /// Any other malformed line is an error, since the child writes whole lines.
    pub fn parse_all(stdout: &str) -> Result<Vec<Self>> {
        let complete = match stdout.rfind('\n') {
            Some(i) => &stdout[..i],
            None => return Ok(Vec::new()),
        };
        complete
            .lines()
            .map(|l| {
                Self::parse(l).with_context(|| format!("the crash child printed an unknown line: {l:?}"))
            })
            .collect()
    }
}

/// Runs the child workload until killed, `run_ms_max` passes, or every thread
/// did its operations.
pub fn run_child(config: &ChildConfig) -> Result<()> {
    let store: Arc<dyn Store> = open_sqlite(&config.db)?;
    let deadline = Instant::now() + Duration::from_millis(config.run_ms_max);
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                block_on(store.fire_due(SWEEP_BATCH_MAX))?;
                thread::sleep(SWEEP_EVERY);
            }
            Ok(())
        })
    };
    let workers: Vec<_> = (0..config.threads)
        .map(|t| {
            let store = Arc::clone(&store);
            let config = config.clone();
            thread::spawn(move || worker(store.as_ref(), &config, t, deadline))
        })
        .collect();
    let mut result = Ok(());
    for w in workers {
        if let Err(e) = w.join().expect("crash worker panicked") {
            result = Err(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    sweeper.join().expect("sweeper panicked")?;
    result
}

/// A small deterministic generator (splitmix64): the workload's choices come
/// from the seed, so a failing cycle can be rerun with the same choices (the
/// kill time and thread interleaving still vary).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

fn worker(store: &dyn Store, config: &ChildConfig, thread: usize, deadline: Instant) -> Result<()> {
    let mut rng = SplitMix::new(config.seed ^ (thread as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let agent = AgentId::new(format!("crash-{}-{thread}", config.seed));
    let stages: Vec<StageName> = CRASH_STAGES.iter().map(|s| StageName::new(*s)).collect();
    let mut submitted = 0u64;
    let mut held: Option<Grant> = None;
    for _ in 0..config.ops_per_thread_max {
        if Instant::now() >= deadline {
            break;
        }
        let grant = match held.take() {
            Some(g) => g,
            // Submit about a third of the time, so tasks both pile up and move on.
            None if rng.range(0, 3) == 0 => {
                // Keys carry the seed: each cycle makes new tasks, and the
                // parent re-submits old keys to check they were kept.
                let key = format!("k-{}-{thread}-{submitted}", config.seed);
                submitted += 1;
                let done = block_on(store.submit(new_task(&key)))?;
                ack(&Ack::Submit { key, task: done.task.id })?;
                continue;
            }
            None => {
                let request = ClaimRequest {
                    agent: agent.clone(),
                    stages: stages.clone(),
                    max: 1,
                    lease_ms: Some(CRASH_LEASE_MS),
                    only: None,
                    credential: None,
                };
                match block_on(store.claim(request))?.pop() {
                    Some(g) => {
                        ack(&claim_ack(&g))?;
                        g
                    }
                    None => continue,
                }
            }
        };
        let Some(stage) = CRASH_STAGES.iter().position(|s| *s == grant.task.stage.as_str()) else {
            bail!("granted task {} in unknown stage {}", grant.task.id, grant.task.stage);
        };
        let last = stage + 1 == CRASH_STAGES.len();
        let action = if last {
            Action::Complete { result: None, report: Report::default() }
        } else {
            Action::Handoff { to_stage: stages[stage + 1].clone(), report: Report::default() }
        };
        // Half the acts also claim the next task, so claim-next's commit path
        // is crashed too.
        let claim_next = (rng.range(0, 2) == 0).then(|| ClaimNext {
            stages: stages.clone(),
            max: 1,
            lease_ms: Some(CRASH_LEASE_MS),
            credential: None,
        });
        let request = ActRequest {
            task: grant.task.id,
            agent: agent.clone(),
            epoch: grant.epoch,
            action,
            claim_next,
            caller: None,
        };
        match block_on(store.act(request)) {
            Ok(outcome) => {
                let task = grant.task.id;
                let epoch = grant.epoch;
                ack(&if last {
                    Ack::Complete { task, stage: CRASH_STAGES[stage].to_owned(), epoch }
                } else {
                    Ack::Handoff {
                        task,
                        from: CRASH_STAGES[stage].to_owned(),
                        to: CRASH_STAGES[stage + 1].to_owned(),
                        epoch,
                    }
                })?;
                if let Some(next) = outcome.next.into_iter().next() {
                    ack(&claim_ack(&next))?;
                    held = Some(next);
                }
            }
            // A lease can lapse under load (1 s): a refusal changed nothing
            // and promised nothing, so the worker moves on.
            Err(Error::Rejected(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn claim_ack(g: &Grant) -> Ack {
    Ack::Claim { task: g.task.id, stage: g.task.stage.as_str().to_owned(), epoch: g.epoch }
}

/// Prints one acknowledgement as a whole line and flushes it, so that a kill
/// right after leaves either the whole line or nothing in the pipe.
fn ack(a: &Ack) -> Result<()> {
    let line = format!("{a}\n");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_print_and_parse_back() {
        let task: TaskId = "0190a1b2-0000-7000-8000-000000000001".parse().expect("uuid");
        for a in [
            Ack::Submit { key: "k-1-0-0".into(), task },
            Ack::Claim { task, stage: "a".into(), epoch: 1 },
            Ack::Handoff { task, from: "a".into(), to: "b".into(), epoch: 3 },
            Ack::Complete { task, stage: "c".into(), epoch: 7 },
        ] {
            assert_eq!(Ack::parse(&a.to_string()), Some(a.clone()), "{a}");
        }
    }

    #[test]
    fn a_cut_last_line_is_dropped_and_garbage_is_an_error() {
        let task = "0190a1b2-0000-7000-8000-000000000001";
        let out = format!("claim {task} a 1\nhandoff {task} a b 1\ncomplete {task} c");
        let acks = Ack::parse_all(&out).expect("parses");
        assert_eq!(acks.len(), 2);
        assert!(Ack::parse_all("bogus line\n").is_err());
        assert!(Ack::parse_all("").expect("empty").is_empty());
    }

    #[test]
    fn new_task_is_a_function_of_the_key() {
        assert_eq!(new_task("k-1-2-3"), new_task("k-1-2-3"));
        assert_ne!(new_task("k-1-2-3"), new_task("k-1-2-4"));
    }
}
