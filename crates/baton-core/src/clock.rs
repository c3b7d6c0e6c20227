//! Time as an injected dependency. The state machine and the engine take `now`
//! as an argument; stores ask their `Clock` once per transaction batch. Tests
//! use a manual clock (in baton-testkit); binaries inject `SystemClock`, the one
//! place in this crate that reads the wall clock.

use crate::ids::Millis;

/// A source of "now" in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The wall clock. Constructed by binaries, never called by `decide` or the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the system clock is set after 1970");
        i64::try_from(since.as_millis()).expect("milliseconds fit in i64 until year 292 million")
    }
}
