//! A one-value channel from the writer thread to a caller's future. It needs
//! no runtime: the receiver is a plain `Future` woken through the `Waker` it was
//! polled with, so store futures work under tokio, under any executor, and
//! with a bare `block_on`. It is a dozen lines of std, lighter than pulling a
//! runtime crate into a storage crate for one type.
//!
//! Dropping the sender without sending resolves the receiver to `None`: that is
//! how a caller learns the writer stopped or the store closed before its
//! operation was answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// Makes a connected sender and receiver.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Slot { value: None, sender_gone: false, waker: None }));
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

struct Slot<T> {
    value: Option<T>,
    /// Set when the sender is dropped, with or without a value.
    sender_gone: bool,
    /// The receiver's waker from its latest pending poll.
    waker: Option<Waker>,
}

pub(crate) struct Sender<T> {
    shared: Arc<Mutex<Slot<T>>>,
}

impl<T> Sender<T> {
    /// Delivers the value; a receiver that was dropped meanwhile just never sees it.
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut slot = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        // `Drop` runs next and marks the sender gone; the value stays readable.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            slot.sender_gone = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

pub(crate) struct Receiver<T> {
    shared: Arc<Mutex<Slot<T>>>,
}

impl<T> Future for Receiver<T> {
    /// `None` when the sender went away without sending.
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.sender_gone {
            return Poll::Ready(None);
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            other => *other = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
