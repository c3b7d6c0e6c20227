//! The manual clock: a `baton_core::Clock` that tests set and advance by hand,
//! so timers (lease expiry, re-offers, backoff, join deadlines) are driven
//! deterministically instead of by sleeping. It owns only a number; deciding
//! what happens when time passes is left to the store's `fire_due` and to the
//! engine.

use baton_core::{Clock, Millis};
use std::sync::atomic::{AtomicI64, Ordering};

/// A clock that moves only when told to. Thread-safe: stores read it from
/// their own threads (the SQLite writer thread) while the test advances it.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start_ms` (milliseconds since the Unix epoch).
    pub fn new(start_ms: Millis) -> Self {
        Self { now_ms: AtomicI64::new(start_ms) }
    }

    pub fn now(&self) -> Millis {
        self.now_ms.load(Ordering::SeqCst)
    }

    /// Moves the clock forward by `ms` and returns the new time.
    pub fn advance(&self, ms: Millis) -> Millis {
        assert!(ms >= 0, "a manual clock only moves forward; use set() to go back");
        self.now_ms.fetch_add(ms, Ordering::SeqCst) + ms
    }

    /// Sets the clock to `ms`, forward or back (a clock jump).
    pub fn set(&self, ms: Millis) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// 2023-11-14T22:13:20Z, a fixed, readable start.
    fn default() -> Self {
        Self::new(1_700_000_000_000)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        ManualClock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_and_sets() {
        let clock = ManualClock::new(1_000);
        assert_eq!(Clock::now(&clock), 1_000);
        assert_eq!(clock.advance(250), 1_250);
        assert_eq!(clock.now(), 1_250);
        clock.set(10);
        assert_eq!(Clock::now(&clock), 10);
    }
}
