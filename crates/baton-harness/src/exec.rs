//! A minimal executor for driving `Store` futures from plain threads. The
//! benchmark's agents are OS threads (one per agent, like real agent
//! processes), and each waits on exactly one store call at a time, so a full
//! async runtime would only add scheduling cost and a dependency. The future
//! is polled on the calling thread; its waker unparks that thread.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Runs `future` to completion on the current thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    // One waker per thread, built once: a benchmark makes millions of calls and
    // an allocation per call would show up in the CPU figures.
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            // A wake that arrived between the poll and here leaves the park
            // token set, so this returns at once; spurious wake-ups just poll again.
            thread::park();
        }
    })
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(Unparker(thread::current())));
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
    use super::block_on;
    use std::sync::mpsc;
    use std::task::Poll;

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        let (tx, rx) = mpsc::channel::<u32>();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(7).expect("receiver alive");
        });
        // A future that is pending until the value arrives and asks to be
        // polled again by waking itself from a helper thread.
        let mut got = None;
        let value = block_on(std::future::poll_fn(|cx| {
            if let Ok(v) = rx.try_recv() {
                got = Some(v);
                return Poll::Ready(v);
            }
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(1));
                waker.wake();
            });
            Poll::Pending
        }));
        handle.join().expect("sender thread");
        assert_eq!((value, got), (7, Some(7)));
    }
}
