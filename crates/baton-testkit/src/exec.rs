//! A minimal executor for tests: `block_on` polls one future on the calling
//! thread and parks between polls, waking when the future's waker is called
//! (for the SQLite store, from its writer thread). It uses only std, because
//! stores must not need an async runtime. It owns no scheduling beyond that:
//! no tasks, no timers, no IO driver.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long `block_on` waits for a future before declaring the store stuck.
/// Store futures resolve in milliseconds; a minute means a lost wake-up.
pub const BLOCK_ON_WAIT_MAX: Duration = Duration::from_secs(60);

/// Runs `future` to completion on this thread.
///
/// # Panics
/// If the future is not ready within `BLOCK_ON_WAIT_MAX`, so a store that
/// never answers fails its test instead of hanging it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + BLOCK_ON_WAIT_MAX;
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "future not ready within {BLOCK_ON_WAIT_MAX:?}: lost wake-up?");
        // Spurious unparks are harmless: the loop polls again.
        thread::park_timeout(left);
    }
}

struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::task::Waker;

    /// A future completed from another thread, as the SQLite writer does.
    struct Slot {
        value: Mutex<(Option<u32>, Option<Waker>)>,
    }

    struct Pending(Arc<Slot>);

    impl Future for Pending {
        type Output = u32;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut guard = self.0.value.lock().expect("not poisoned");
            match guard.0.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    guard.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn ready_future() {
        assert_eq!(block_on(async { 7 }), 7);
    }

    #[test]
    fn woken_from_another_thread() {
        let slot = Arc::new(Slot { value: Mutex::new((None, None)) });
        let writer = {
            let slot = slot.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                let mut guard = slot.value.lock().expect("not poisoned");
                guard.0 = Some(42);
                if let Some(w) = guard.1.take() {
                    w.wake();
                }
            })
        };
        assert_eq!(block_on(Pending(slot)), 42);
        writer.join().expect("writer thread");
    }
}
