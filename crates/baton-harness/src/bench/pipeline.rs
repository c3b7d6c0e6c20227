//! The HB3 workload's shape, shared by Baton's run and the ideal batching
//! writer so that both do the same thing around the part being compared: the
//! three stages, how K agents split across them, and the board through which
//! agents wait for work and learn that the run is over.
//!
//! Agents with nothing to claim wait on their stage's condition variable
//! until a handoff into that stage (or a short timeout). Real agents would
//! long-poll or be notified; polling the system under test in a tight loop
//! would instead measure how fast it answers empty claims.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The pipeline: tasks start in `a`; `c`'s agents complete them.
pub const STAGES: [&str; 3] = ["a", "b", "c"];

/// The stage indices each of `agents` agents works. With three or more agents
/// each works one stage, spread as evenly as possible; with fewer, every agent
/// works every stage (one or two agents cannot cover three stages otherwise).
pub fn assign(agents: usize) -> Vec<Vec<usize>> {
    if agents < STAGES.len() {
        return vec![(0..STAGES.len()).collect(); agents];
    }
    (0..agents).map(|i| vec![i % STAGES.len()]).collect()
}

/// How long an idle agent sleeps before trying again without a wake-up.
/// Bounds the cost of a missed notification; wake-ups make it rarely matter.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(5);

/// Where agents wait for work and count finished tasks.
pub struct Board {
    /// Per stage: a generation that grows on every handoff into the stage.
    stages: Vec<(Mutex<u64>, Condvar)>,
    done: AtomicUsize,
    target: usize,
    over: AtomicBool,
    end: Mutex<Option<Instant>>,
}

impl Board {
    pub fn new(tasks: usize) -> Self {
        Self {
            stages: STAGES.iter().map(|_| (Mutex::new(0), Condvar::new())).collect(),
            done: AtomicUsize::new(0),
            target: tasks,
            over: AtomicBool::new(tasks == 0),
            end: Mutex::new(None),
        }
    }

    /// The current generations of the given stages, read before a claim so a
    /// handoff that lands between the claim and the wait is not missed.
    pub fn generation(&self, stages: &[usize]) -> u64 {
        stages.iter().map(|&s| *self.stages[s].0.lock().expect("board lock")).sum()
    }

    /// Waits until a handoff into one of `stages` after `seen`, the run ends,
    /// or a short timeout passes.
    pub fn wait(&self, stages: &[usize], seen: u64) {
        if self.is_over() || self.generation(stages) != seen {
            return;
        }
        // Waiting on the first stage is enough: agents that work several
        // stages exist only when K < 3, and the timeout covers the others.
        let (lock, cvar) = &self.stages[stages[0]];
        let guard = lock.lock().expect("board lock");
        let start = *guard;
        let _ = cvar
            .wait_timeout_while(guard, IDLE_WAIT_MAX, |g| *g == start && !self.is_over())
            .expect("board lock");
    }

    /// A task was handed into `stage`: wake one agent waiting there.
    pub fn handed_into(&self, stage: usize) {
        let (lock, cvar) = &self.stages[stage];
        *lock.lock().expect("board lock") += 1;
        cvar.notify_one();
    }

    /// A task left the last stage. The last one ends the run.
    pub fn finished_one(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.end.lock().expect("board lock") = Some(Instant::now());
            self.over.store(true, Ordering::Release);
            for (lock, cvar) in &self.stages {
                let _guard = lock.lock().expect("board lock");
                cvar.notify_all();
            }
        }
    }

    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// When the last task finished, if it has.
    pub fn end(&self) -> Option<Instant> {
        *self.end.lock().expect("board lock")
    }
}

/// A JSON payload of exactly `bytes` bytes (at least `{"p":""}`), the same for
/// every task: payload content does not matter to any system measured here.
pub fn payload(bytes: usize) -> String {
    let fill = bytes.saturating_sub(8);
    format!("{{\"p\":\"{}\"}}", "x".repeat(fill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_split_across_stages() {
        let check = |agents: usize, want: &[usize]| {
            let plan = assign(agents);
            let per_stage: Vec<usize> =
                (0..STAGES.len()).map(|s| plan.iter().filter(|a| a.contains(&s)).count()).collect();
            assert_eq!(per_stage, want, "{agents} agents");
        };
        check(1, &[1, 1, 1]);
        check(2, &[2, 2, 2]);
        check(3, &[1, 1, 1]);
        check(16, &[6, 5, 5]);
        check(64, &[22, 21, 21]);
    }

    #[test]
    fn payload_has_the_asked_size_and_is_json() {
        for bytes in [8, 200, 1024] {
            let p = payload(bytes);
            assert_eq!(p.len(), bytes);
            serde_json::from_str::<serde_json::Value>(&p).expect("json");
        }
    }

    #[test]
    fn the_last_finished_task_ends_the_run() {
        let board = Board::new(2);
        board.finished_one();
        assert!(!board.is_over());
        board.finished_one();
        assert!(board.is_over() && board.end().is_some());
    }
}
