//! Wake-ups for long polls. `ReadyHub` is the store's `ReadyListener`: after a
//! commit that made tasks claimable in some stages, the store calls it, and it
//! wakes one claim waiting on each of those stages (`notify_one`), not all of
//! them: with K idle agents on a stage, waking all would cost K claim
//! transactions per ready task. A woken claim that takes work passes the
//! wake-up on to two more waiters (see `http::claims`), so a burst reaches
//! every waiter in a logarithmic number of hops and a trickle costs about
//! three claims per task. `Signals` is the keyed set of `tokio::sync::Notify`s
//! underneath, also used per task for handoff-outcome waits. Entries are held
//! weakly, so a key lives only while someone waits on it; memory is
//! O(waiters), not O(stages ever seen).
//!
//! The hub is also where the store's observations arrive (`observed`): it
//! hands them to the metrics `Aggregator` it owns (`crate::metrics`) and to
//! the span queue of trace export (`crate::otlp`, when enabled).
//!
//! Waiters must `enable()` their `Notified` before they look at the store, so
//! a wake-up between the look and the wait is not lost; a `Notified` dropped
//! after a `notify_one` reached it hands that wake-up to the next waiter
//! (tokio guarantees this), so abandoned waits lose nothing.

use crate::metrics::Aggregator;
use crate::otlp::Spans;
use baton_core::metrics::Observation;
use baton_core::store::ReadyListener;
use baton_core::{StageName, TaskId};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Per-stage wake-ups for waiting claims; install it as the store's listener.
#[derive(Debug, Default)]
pub struct ReadyHub {
    stages: Signals<StageName>,
    metrics: Aggregator,
    spans: Spans,
}

impl ReadyHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// The signal of one stage; hold it while waiting.
    pub fn subscribe(&self, stage: &StageName) -> Arc<Notify> {
        self.stages.subscribe(stage)
    }

    /// The metrics folded from the store's observations.
    pub fn metrics(&self) -> &Aggregator {
        &self.metrics
    }

    /// The spans made of the store's observations, for OTLP export.
    pub fn spans(&self) -> &Spans {
        &self.spans
    }
}

impl ReadyListener for ReadyHub {
    fn ready(&self, stages: &[StageName]) {
        for stage in stages {
            self.stages.notify_one(stage);
        }
    }

    fn observed(&self, changes: &[Observation]) {
        self.metrics.observe(changes);
        self.spans.observe(changes);
    }
}

/// Per-task wake-ups: a task changed (claimed, cancelled, acted on).
pub type TaskSignals = Signals<TaskId>;

/// Keyed `Notify`s held weakly.
#[derive(Debug)]
pub struct Signals<K> {
    inner: Mutex<SignalMap<K>>,
}

#[derive(Debug)]
struct SignalMap<K> {
    map: HashMap<K, Weak<Notify>>,
    /// Dead entries are pruned when the map grows to this size.
    prune_at: usize,
}

const PRUNE_AT_MIN: usize = 64;

impl<K> Default for Signals<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(SignalMap { map: HashMap::new(), prune_at: PRUNE_AT_MIN }) }
    }
}

impl<K: Hash + Eq + Clone> Signals<K> {
    pub fn subscribe(&self, key: &K) -> Arc<Notify> {
        let mut inner = self.inner.lock().expect("signal map lock");
        if let Some(live) = inner.map.get(key).and_then(Weak::upgrade) {
            return live;
        }
        if inner.map.len() >= inner.prune_at {
            inner.map.retain(|_, w| w.strong_count() > 0);
            inner.prune_at = (inner.map.len() * 2).max(PRUNE_AT_MIN);
        }
        let notify = Arc::new(Notify::new());
        inner.map.insert(key.clone(), Arc::downgrade(&notify));
        notify
    }

    /// Wakes one waiter on `key`, or lets the next one through at once.
    pub fn notify_one(&self, key: &K) {
        let inner = self.inner.lock().expect("signal map lock");
        if let Some(notify) = inner.map.get(key).and_then(Weak::upgrade) {
            notify.notify_one();
        }
    }

    /// Wakes everyone waiting on `key` now.
    pub fn notify(&self, key: &K) {
        let mut inner = self.inner.lock().expect("signal map lock");
        if let Some(weak) = inner.map.get(key) {
            match weak.upgrade() {
                Some(notify) => notify.notify_waiters(),
                None => {
                    inner.map.remove(key);
                }
            }
        }
    }

    pub fn notify_all(&self) {
        let mut inner = self.inner.lock().expect("signal map lock");
        inner.map.retain(|_, weak| match weak.upgrade() {
            Some(notify) => {
                notify.notify_waiters();
                true
            }
            None => false,
        });
    }

    /// Live keys, for tests.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().expect("signal map lock");
        inner.map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Enabled `Notified` futures over several signals; resolves when any fires.
pub struct AnyNotified<'a> {
    futures: Vec<Pin<Box<Notified<'a>>>>,
}

impl<'a> AnyNotified<'a> {
    /// Registers interest in every signal at once (before looking at the store).
    pub fn enable(signals: &'a [Arc<Notify>]) -> Self {
        let mut futures: Vec<_> = signals.iter().map(|n| Box::pin(n.notified())).collect();
        for future in &mut futures {
            future.as_mut().enable();
        }
        Self { futures }
    }
}

impl Future for AnyNotified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        for future in &mut self.futures {
            if future.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls once: has the wait been woken?
    async fn is_woken(wait: &mut AnyNotified<'_>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *wait).poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_ready_stage_wakes_its_waiters_only() {
        let hub = ReadyHub::new();
        let a = [hub.subscribe(&StageName::new("a"))];
        let b = [hub.subscribe(&StageName::new("b"))];
        let mut wait_a = AnyNotified::enable(&a);
        let mut wait_b = AnyNotified::enable(&b);
        hub.ready(&[StageName::new("a")]);
        assert!(is_woken(&mut wait_a).await);
        assert!(!is_woken(&mut wait_b).await, "stage b was not made ready");
    }

    #[tokio::test]
    async fn a_ready_stage_wakes_one_waiter() {
        let hub = ReadyHub::new();
        let stage = StageName::new("a");
        let signals = [hub.subscribe(&stage)];
        let mut first = AnyNotified::enable(&signals);
        let mut second = AnyNotified::enable(&signals);
        hub.ready(std::slice::from_ref(&stage));
        assert!(is_woken(&mut first).await, "the first waiter is woken");
        assert!(!is_woken(&mut second).await, "the second sleeps on");
        drop(first);
        hub.ready(std::slice::from_ref(&stage));
        assert!(is_woken(&mut second).await);
    }

    #[test]
    fn entries_die_with_their_waiters() {
        let signals = Signals::<u32>::default();
        for key in 0..1000 {
            drop(signals.subscribe(&key));
        }
        let held = signals.subscribe(&7);
        assert_eq!(signals.len(), 1);
        assert!(signals.inner.lock().unwrap().map.len() < 200, "dead entries are pruned");
        drop(held);
        assert!(signals.is_empty());
    }
}
