//! Baton's side of the benchmark: the HB3 burn-down through the `Store` trait.
//! Each agent thread loops: hold a task, `act` on it (hand off to the next
//! stage, or complete at the last) with claim-next for its own stages, so a
//! busy agent makes one store call per handoff, and the answer already holds
//! its next lease. Only an idle agent calls `claim` on its own.
//!
//! `burn_down` takes any `Store`, so the same loop can measure other stores;
//! `run_baton` opens the SQLite store in the run's directory.

use super::pipeline::{Board, STAGES, assign};
use super::{Measured, RunParams, histogram, record};
use crate::exec::block_on;
use crate::sys::{Probe, Usage};
use anyhow::{Context as _, Result, bail};
use baton_core::{
    ActRequest, Action, AgentId, ClaimNext, ClaimRequest, Grant, NewTask, Report, StageName, Store, TaskId,
};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

/// The SQLite store's writer thread, as the kernel names it ("baton-sqlite-writer"
/// cut to 15 bytes). Its CPU share shows whether group commit is CPU-bound.
pub const BATON_WRITER_THREAD: &str = "baton-sqlite-wr";

/// Called with every task that leaves the last stage (the open loop's clock).
pub type OnDone = Arc<dyn Fn(TaskId) + Send + Sync>;

/// Threads that preload tasks: enough concurrent submits for group commit to
/// make the (untimed) preload quick.
const PRELOAD_THREADS: usize = 8;

/// Opens Baton's SQLite store in the run's directory and burns down.
pub fn run_baton(p: &RunParams, probe: &Probe) -> Result<Measured> {
    let sqlite = crate::store::open_sqlite(&p.dir.join("baton.db"))?;
    let store: Arc<dyn Store> = sqlite.clone();
    let started = Instant::now();
    preload(&store, p.tasks, &p.payload)?;
    let preload_seconds = started.elapsed().as_secs_f64();
    let before = sqlite.stats().commits;
    let (usage, step) = burn_down(store, p.agents, p.tasks, probe, BATON_WRITER_THREAD, None)?;
    // Idle agents' empty claims commit too (an empty transaction), so this
    // counts every transaction the burn-down cost, not only handoffs.
    let transactions = sqlite.stats().commits - before;
    sqlite.close();
    Ok(Measured {
        handoffs: p.tasks as u64 * STAGES.len() as u64,
        usage,
        step,
        transactions: Some(transactions),
        preload_seconds,
    })
}

/// Submits `tasks` tasks into the first stage from a few threads.
pub fn preload(store: &Arc<dyn Store>, tasks: usize, payload: &str) -> Result<()> {
    let threads: Vec<_> = (0..PRELOAD_THREADS)
        .map(|t| {
            let store = Arc::clone(store);
            let payload = payload.to_owned();
            let count = tasks / PRELOAD_THREADS + usize::from(t < tasks % PRELOAD_THREADS);
            thread::spawn(move || -> Result<()> {
                for _ in 0..count {
                    block_on(store.submit(NewTask::new(STAGES[0], payload.clone())))?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("preload thread panicked")?;
    }
    Ok(())
}

/// Runs `agents` agent threads until all `tasks` preloaded tasks are done.
/// Returns the usage from the agents' start to the last completion and the
/// merged histogram of `act` round trips. `writer` names the store's writer
/// thread (its CPU is reported apart); `on_done` hears of every finished task.
pub fn burn_down(
    store: Arc<dyn Store>,
    agents: usize,
    tasks: usize,
    probe: &Probe,
    writer: &'static str,
    on_done: Option<OnDone>,
) -> Result<(Usage, Histogram<u64>)> {
    burn_down_on(store, agents, Arc::new(Board::new(tasks)), probe, writer, on_done)
}

/// `burn_down` on a board the caller also holds (the open loop's submitters
/// wake agents through it).
pub fn burn_down_on(
    store: Arc<dyn Store>,
    agents: usize,
    board: Arc<Board>,
    probe: &Probe,
    writer: &'static str,
    on_done: Option<OnDone>,
) -> Result<(Usage, Histogram<u64>)> {
    let mark = probe.start(Some(writer))?;
    let threads: Vec<_> = assign(agents)
        .into_iter()
        .enumerate()
        .map(|(agent, stages)| {
            let store = Arc::clone(&store);
            let board = Arc::clone(&board);
            let on_done = on_done.clone();
            thread::Builder::new()
                .name(format!("baton-agent-{agent}"))
                .spawn(move || agent_loop(store.as_ref(), agent, &stages, &board, on_done.as_ref()))
        })
        .collect::<Result<_, _>>()?;
    let mut step = histogram();
    let mut failure = None;
    for t in threads {
        match t.join().expect("agent thread panicked") {
            Ok(h) => step.add(&h).expect("histograms share bounds"),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let end = board.end().context("the Baton run ended without finishing its tasks")?;
    Ok((probe.stop(&mark, end)?, step))
}

fn agent_loop(
    store: &dyn Store,
    agent: usize,
    stages: &[usize],
    board: &Board,
    on_done: Option<&OnDone>,
) -> Result<Histogram<u64>> {
    let result = agent_steps(store, agent, stages, board, on_done);
    if result.is_err() {
        // Release the other agents: the run cannot finish.
        while !board.is_over() {
            board.finished_one();
        }
    }
    result
}

fn agent_steps(
    store: &dyn Store,
    agent: usize,
    stages: &[usize],
    board: &Board,
    on_done: Option<&OnDone>,
) -> Result<Histogram<u64>> {
    let id = AgentId::new(format!("agent-{agent}"));
    let names: Vec<StageName> = stages.iter().map(|&s| StageName::new(STAGES[s])).collect();
    let claim_next = ClaimNext { stages: names.clone(), max: 1, lease_ms: None, credential: None };
    let mut step = histogram();
    let mut held: Option<Grant> = None;
    while !board.is_over() {
        let Some(grant) = held.take() else {
            let seen = board.generation(stages);
            let request = ClaimRequest {
                agent: id.clone(),
                stages: names.clone(),
                max: 1,
                lease_ms: None,
                only: None,
                credential: None,
            };
            match block_on(store.claim(request))?.pop() {
                Some(g) => held = Some(g),
                None => board.wait(stages, seen),
            }
            continue;
        };
        let Some(stage) = STAGES.iter().position(|s| *s == grant.task.stage.as_str()) else {
            bail!("agent {agent} was granted task {} in stage {}", grant.task.id, grant.task.stage);
        };
        let last = stage + 1 == STAGES.len();
        let action = if last {
            Action::Complete { result: None, report: Report::default() }
        } else {
            Action::Handoff { to_stage: StageName::new(STAGES[stage + 1]), report: Report::default() }
        };
        let request = ActRequest {
            task: grant.task.id,
            agent: id.clone(),
            epoch: grant.epoch,
            action,
            claim_next: Some(claim_next.clone()),
            caller: None,
        };
        let seen = board.generation(stages);
        let t0 = Instant::now();
        let outcome = block_on(store.act(request))?;
        record(&mut step, t0.elapsed());
        if last {
            if let Some(f) = on_done {
                f(grant.task.id);
            }
            board.finished_one();
        } else {
            board.handed_into(stage + 1);
        }
        held = outcome.next.into_iter().next();
        if held.is_none() {
            board.wait(stages, seen);
        }
    }
    Ok(step)
}
