"""`AsyncWorker`: the worker for asyncio code, with `async def` handlers.

```python
worker = baton.AsyncWorker(baton.AsyncClient(URL), agent="triage-bot")

@worker.handler("triage")
async def triage(job: baton.Job) -> baton.Decision:
    answer = await call_a_model(job.payload)
    return baton.Handoff("review", findings=answer, confidence=0.8)

await worker.run()
```

The same protocol as `Worker` (see `baton.worker`): long-poll claims, a
heartbeat task every `lease_ms / 3`, claim-next, an idempotency key on every
mutating call, ambiguous outcomes retried with the same key and settled by
the task's history, and the fence token on the `Job`. Differences that
asyncio allows: a handler running past `handler_timeout` is cancelled and
the task failed (retryable); on stop (SIGTERM or SIGINT when `run` is called
from the main thread with the default loop, or `stop()`), a claim waiting
for work is cancelled, a running handler finishes, and unstarted leases are
released.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

from . import models as m
from ._async_client import AsyncClient
from ._common import RetryPolicy
from .errors import BatonError, LeaseLost, NotFound, NotHolder, TooManyLeases
from .worker import (
    APPLIED,
    EVENT_KINDS,
    REFUSAL_TEXT_MAX,
    Abort,
    Complete,
    Decision,
    Fail,
    FenceToken,
    Finished,
    Handoff,
    Job,
    Release,
    WorkerGaveUp,
    WorkerOptions,
    WorkerStats,
    decision_call,
    decision_landed,
)

__all__ = ["AsyncWorker"]

log = logging.getLogger("baton.worker")

AsyncHandler = Callable[[Job], Awaitable[Decision]]


class AsyncWorker:
    """The claim loop on asyncio. See the module documentation."""

    def __init__(self, client: AsyncClient, agent: str | None = None, options: WorkerOptions | None = None) -> None:
        name = agent or client.agent
        if not name:
            raise ValueError("name the worker's agent (agent= or a client made with agent=)")
        self.agent = name
        self.options = options or WorkerOptions()
        self.options.check()
        self.client = client.with_agent(name)
        self.actor = f"agent:{name}"
        self.stats = WorkerStats()
        self._handlers: dict[str, AsyncHandler] = {}
        self._observers: list[Callable[[Finished], None]] = []
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def handler(self, stage: str) -> Callable[[AsyncHandler], AsyncHandler]:
        """Decorator: the coroutine function handles the tasks of `stage`."""

        def register(fn: AsyncHandler) -> AsyncHandler:
            self.on(stage, fn)
            return fn

        return register

    def on(self, stage: str, fn: AsyncHandler) -> None:
        if not stage.strip():
            raise ValueError("the stage must not be empty")
        if stage in self._handlers:
            raise ValueError(f"stage {stage!r} already has a handler")
        self._handlers[stage] = fn

    def on_finished(self, observer: Callable[[Finished], None]) -> None:
        self._observers.append(observer)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Asks the worker to stop (safe from any thread or a signal handler)."""
        self._stopping.set()
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, *, install_signals: bool = True, max_leases: int | None = None) -> WorkerStats:
        """Claims and works tasks until stopped (or `max_leases` were worked); returns the counts."""
        if not self._handlers:
            raise ValueError("register at least one handler before run()")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.stopping:
            self._wake.set()
        installed: list[int] = []
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._loop.add_signal_handler(signum, self.stop)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError):
                    pass
        pending: deque[m.Lease] = deque()
        worked = 0
        try:
            while True:
                if max_leases is not None and worked >= max_leases:
                    self.stop()
                if not pending:
                    if self.stopping:
                        break
                    pending.extend(await self._claim())
                    continue
                lease = pending.popleft()
                if self.stopping:
                    finished, _ = await self._apply(lease, Release(note="worker stopping"), None, "not_run")
                else:
                    finished = await self._work(lease, pending)
                    worked += 1
                self._record(finished)
        finally:
            for installed_signal in installed:
                self._loop.remove_signal_handler(installed_signal)
        return self.stats

    async def _until_stopped(self) -> None:
        assert self._wake is not None
        await self._wake.wait()

    async def _claim(self) -> list[m.Lease]:
        """One claim, retried with one key; cancelled at once on stop."""
        key = f"claim:{self.agent}:{uuid.uuid4()}"
        started = time.monotonic()
        attempt = 0
        while not self.stopping:
            self.stats.claims += 1
            claim = asyncio.ensure_future(
                self.client.claim(
                    list(self._handlers),
                    max=1,
                    wait_ms=self.options.wait_ms,
                    lease_ms=self.options.lease_ms,
                    request_key=key,
                )
            )
            stop = asyncio.ensure_future(self._until_stopped())
            await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not claim.done():
                claim.cancel()
                return []
            try:
                leases = claim.result()
                self.stats.leases += len(leases)
                return leases
            except BatonError as error:
                if not (error.retryable or isinstance(error, TooManyLeases)):
                    raise
                if time.monotonic() - started >= self.options.give_up_after:
                    raise WorkerGaveUp(f"gave up claiming after {self.options.give_up_after:.0f} s: {error}") from error
                self.stats.retries += 1
                attempt += 1
                try:
                    await asyncio.wait_for(self._until_stopped(), self._backoff(attempt))
                except TimeoutError:
                    pass
        return []

    async def _work(self, lease: m.Lease, pending: deque[m.Lease]) -> Finished:
        job = Job(lease, lambda: self.stopping)
        fn = self._handlers.get(lease.stage)
        if fn is None:
            finished, _ = await self._apply(lease, Release(note="no handler for this stage"), None, "not_run")
            return finished
        beats = asyncio.ensure_future(self._heartbeats(job))
        handler_end = "returned"
        try:
            decision = await asyncio.wait_for(fn(job), self.options.handler_timeout)
            if not isinstance(decision, Handoff | Complete | Release | Fail | Abort):
                raise TypeError(f"the handler returned {decision!r}, not a Handoff, Complete, Release, Fail or Abort")
        except TimeoutError:
            self.stats.handler_timeouts += 1
            handler_end = "timed_out"
            decision = Fail(f"handler timed out after {self.options.handler_timeout} s", retryable=True)
        except Exception as error:  # the handler's failure is the task's, not the worker's
            self.stats.handler_errors += 1
            handler_end = "raised"
            decision = Fail(f"handler raised {type(error).__name__}: {error}"[:REFUSAL_TEXT_MAX], retryable=True)
        finally:
            beats.cancel()
        if job.is_lost():
            return Finished(job.fence, handler_end, "lost", error=str(job.lost_info) if job.lost_info else None)
        wants_next = self.options.claim_next and not isinstance(decision, Release) and not self.stopping
        next_ = (
            m.ClaimNext(stages=list(self._handlers), max=1, lease_ms=self.options.lease_ms) if wants_next else None
        )
        finished, leases = await self._apply(lease, decision, next_, handler_end)
        self.stats.leases += len(leases)
        self.stats.next_leases += len(leases)
        pending.extend(leases)
        return finished

    async def _heartbeats(self, job: Job) -> None:
        every = max(self.options.lease_ms / 3, 1) / 1000
        client = self.client.with_options(timeout=every, retry=RetryPolicy(attempts=1))
        beat = 0
        wait = every
        while True:
            await asyncio.sleep(wait)
            beat += 1
            try:
                await client.heartbeat(
                    job.task,
                    job.epoch,
                    lease_ms=self.options.lease_ms,
                    request_key=f"{job.task}:{job.epoch}:heartbeat:{beat}",
                )
                self.stats.heartbeats += 1
                wait = every
            except LeaseLost as error:
                job.lost_info = error
                job._lost.set()
                return
            except (NotHolder, NotFound):
                job._lost.set()
                return
            except BatonError as error:
                log.info("worker %s: heartbeat on %s failed: %s", self.agent, job.fence.key, error)
                self.stats.heartbeat_failures += 1
                wait = every / 4

    async def _apply(
        self, lease: m.Lease, decision: Decision, next_: m.ClaimNext | None, handler_end: str
    ) -> tuple[Finished, list[m.Lease]]:
        fence = FenceToken.of(lease)
        applied = APPLIED[decision.verb]
        kind, value = await self._deliver(lease, decision, next_)
        if kind == "applied":
            assert isinstance(value, m.ActResponse)
            return Finished(fence, handler_end, applied, "response", value.handoff_id), value.next
        if kind == "landed":
            return Finished(fence, handler_end, applied, "history"), []
        if kind == "lost":
            return Finished(fence, handler_end, "lost", error=str(value) if value else None), []
        if kind == "unknown":
            return Finished(fence, handler_end, "unknown", error=str(value)), []
        if not isinstance(decision, Fail):
            text = f"worker: {decision.verb} refused: {value}"[:REFUSAL_TEXT_MAX]
            await self._deliver(lease, Fail(text, retryable=False), None)
        return Finished(fence, handler_end, "refused", error=str(value)), []

    async def _deliver(self, lease: m.Lease, decision: Decision, next_: m.ClaimNext | None) -> tuple[str, object]:
        started = time.monotonic()
        attempt = 0
        ambiguous = False
        method, args, kwargs = decision_call(lease, decision, next_)
        while True:
            try:
                answer: m.ActResponse = await getattr(self.client, method)(*args, **kwargs)
                return "applied", answer
            except LeaseLost as error:
                if not ambiguous:
                    return "lost", error
                try:
                    return ("landed", None) if await self._landed(lease, decision) else ("lost", error)
                except BatonError as read_error:
                    return "unknown", read_error
            except (NotHolder, NotFound) as error:
                return "lost", error
            except BatonError as error:
                if not error.retryable:
                    return "refused", error
                ambiguous = True
                if time.monotonic() - started >= self.options.give_up_after:
                    return "unknown", error
                self.stats.retries += 1
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))

    async def _landed(self, lease: m.Lease, decision: Decision) -> bool:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                history = await self.client.history(lease.task)
            except BatonError as error:
                if not error.retryable or time.monotonic() - started >= self.options.give_up_after:
                    raise
                self.stats.retries += 1
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            found = decision_landed(history.events, self.actor, lease.stage, lease.epoch, EVENT_KINDS[decision.verb])
            if found:
                self.stats.confirmed_by_history += 1
            return found

    def _backoff(self, attempt: int) -> float:
        step: float = min(self.options.backoff_max, self.options.backoff_initial * 2 ** min(attempt - 1, 20))
        return step / 2 + (step / 2) * random.random()

    def _record(self, finished: Finished) -> None:
        counts = self.stats.by_outcome
        counts[finished.outcome] = counts.get(finished.outcome, 0) + 1
        if hasattr(self.stats, finished.outcome):
            setattr(self.stats, finished.outcome, getattr(self.stats, finished.outcome) + 1)
        for observer in self._observers:
            observer(finished)
