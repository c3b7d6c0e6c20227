"""A worker: the claim loop around plain Python functions, one per stage.

```python
from baton import Client, Worker, Handoff, Complete

worker = Worker(Client("http://127.0.0.1:7707"), agent="triage-bot")

@worker.handler("triage")
def triage(job):
    # job.payload is the task's payload; key side effects by job.fence.key
    return Handoff("review", note="triaged", confidence=0.8)

worker.run()   # until SIGTERM / SIGINT or worker.stop()
```

The worker long-polls a claim from every stage it has a handler for (one
task at a time), runs the stage's handler with a `Job` (the lease: payload
and fence token `(task, stage, epoch)`), heartbeats every `lease_ms / 3` in a
background thread while the handler runs (each heartbeat cut off after that
interval, a failed one tried again after a quarter of it), and applies what the handler
returns: `Handoff`, `Complete`, `Release`, `Fail` or `Abort`, with note,
findings and confidence. The decision carries `claim_next` (except a
release, whose task could come straight back), so a busy worker gets its
next task in the same round trip and commit. Run several workers (threads or
processes) for several tasks at once.

Retries and why they are safe. Every mutating call carries an
`Idempotency-Key`: a holder call's key is `{task}:{epoch}:{verb}` (the fence
token names the lease and only its holder acts under it), a claim's is fresh
per claim and kept across its retries. Connection failures, timeouts and 503s
are retried with the same key and a jittered backoff for at most
`give_up_after` seconds; a server that kept the key answers the first
response (with its `claim_next` leases). A server that no longer knows the
key falls back on the fence: if the first attempt landed, the lease is over
and the retry gets `lease_lost`; the worker then reads the task's history for
the decision's own event (by this agent, leaving `held` at the lease's stage
with the lease's epoch). Found: the decision landed. Not found: the lease was
lost first, and nothing was applied. A `lease_lost` without an earlier
ambiguous failure is taken as lost at once.

Stopping. SIGTERM or SIGINT (handlers installed by `run` in the main thread)
or `stop()`: a claim waiting for work is abandoned at once (a lease it may
have been granted in that instant expires and is offered again), a running
handler finishes and its decision is applied without claiming more, and
leases received but not started are released. A handler cannot be killed
from Python: one that runs past `handler_timeout` stops being heartbeated, so
its lease expires and Baton offers the task again; the worker then reports it
lost. A handler that raises fails the task, retryable, with the error's text.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import models as m
from ._common import RetryPolicy
from ._sync_client import Client
from .errors import BatonError, LeaseLost, NotFound, NotHolder, TooManyLeases

__all__ = [
    "Abort",
    "Complete",
    "Decision",
    "Fail",
    "FenceToken",
    "Finished",
    "Handoff",
    "Job",
    "Release",
    "Worker",
    "WorkerGaveUp",
    "WorkerOptions",
    "WorkerStats",
    "decision_landed",
    "holder_key",
]

log = logging.getLogger("baton.worker")

#: Characters of a refusal quoted in the `fail` that reports it.
REFUSAL_TEXT_MAX = 500


@dataclass(frozen=True)
class FenceToken:
    """`(task, stage, epoch)`: names one lease. Use `key` as the idempotency key
    of the handler's own side effects (a row written, a message sent): a task
    worked again after a lost lease gets a new epoch, so a new key, while a
    retry under the same lease repeats the same key."""

    task: str
    stage: str
    epoch: int

    @property
    def key(self) -> str:
        return f"{self.task}:{self.stage}:{self.epoch}"

    @classmethod
    def of(cls, lease: m.Lease) -> FenceToken:
        return cls(lease.task, lease.stage, lease.epoch)


@dataclass(frozen=True)
class Handoff:
    """Finish this part and pass the task to `to_stage`."""

    to_stage: str
    note: str | None = None
    findings: Any = None
    #: Between 0 and 1.
    confidence: float | None = None
    verb: Literal["handoff"] = "handoff"


@dataclass(frozen=True)
class Complete:
    """Finish the task (with a workflow: its stage, and Baton routes it on)."""

    result: Any = None
    note: str | None = None
    findings: Any = None
    confidence: float | None = None
    verb: Literal["complete"] = "complete"


@dataclass(frozen=True)
class Release:
    """Give the task back to its stage (an attempt is counted)."""

    note: str | None = None
    verb: Literal["release"] = "release"


@dataclass(frozen=True)
class Fail:
    """Report a failure; retryable ones come back after the stage's backoff."""

    error: str
    retryable: bool = True
    verb: Literal["fail"] = "fail"


@dataclass(frozen=True)
class Abort:
    """Abort the task's workflow: finished stages are compensated, then it ends cancelled."""

    reason: str
    verb: Literal["abort"] = "abort"


Decision = Handoff | Complete | Release | Fail | Abort

#: The event kinds a decision's landing may have written.
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "handoff": ("handed_off",),
    "complete": ("completed", "handed_off"),
    "release": ("released", "rerouted", "escalated"),
    "fail": ("failed", "rerouted", "escalated"),
    "abort": ("aborted",),
}


class Job:
    """One claimed task, as a handler gets it."""

    def __init__(self, lease: m.Lease, stopping: Callable[[], bool]) -> None:
        self.lease = lease
        self.fence = FenceToken.of(lease)
        self._stopping = stopping
        self._lost = threading.Event()
        #: What Baton said when a heartbeat found the lease lost.
        self.lost_info: LeaseLost | None = None

    @property
    def task(self) -> str:
        return self.lease.task

    @property
    def stage(self) -> str:
        return self.lease.stage

    @property
    def epoch(self) -> int:
        return self.lease.epoch

    @property
    def payload(self) -> Any:
        return self.lease.payload

    @property
    def attempts(self) -> int:
        return self.lease.attempts

    def is_lost(self) -> bool:
        """Whether a heartbeat learnt that the lease is lost: the decision will not land."""
        return self._lost.is_set()

    def is_stopping(self) -> bool:
        """Whether the worker was asked to stop: finish soon; no more work follows."""
        return self._stopping()


@dataclass(frozen=True)
class Finished:
    """One finished lease, as `on_finished` observers see it."""

    fence: FenceToken
    #: `returned`, `raised` (the task was failed, retryable), `timed_out`
    #: (past `handler_timeout`, heartbeats stopped) or `not_run` (released unworked).
    handler: str
    #: `handed_off`, `completed`, `released`, `failed`, `aborted`, `lost`,
    #: `refused` (Baton refused the decision; the worker failed the task, not
    #: retryable) or `unknown` (no answer within `give_up_after`).
    outcome: str
    #: `response` or `history` (the answer was lost; the history showed it landed).
    confirmed: str | None = None
    handoff_id: str | None = None
    error: str | None = None


@dataclass
class WorkerOptions:
    """How a worker claims, heartbeats and retries (times in milliseconds or seconds as named)."""

    #: How long one claim waits for work (long poll), 0 to 60000.
    wait_ms: int = 20_000
    #: The lease asked for on claims and heartbeats; heartbeats go every third of it.
    lease_ms: int = 30_000
    #: Claim the next task in the same call that applies a decision.
    claim_next: bool = True
    #: Past this, a handler's lease is no longer heartbeated (it expires).
    handler_timeout: float = 15 * 60.0
    #: A call failing (no answer, 503) for this long is given up.
    give_up_after: float = 5 * 60.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0

    def check(self) -> None:
        if not 0 <= self.wait_ms <= 60_000:
            raise ValueError("wait_ms must be 0 to 60000")
        if self.lease_ms < 30:
            raise ValueError("lease_ms must be at least 30 (heartbeats go every third of it)")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("backoff must be positive with backoff_max >= backoff_initial")
        if self.handler_timeout <= 0 or self.give_up_after <= 0:
            raise ValueError("handler_timeout and give_up_after must be positive")


@dataclass
class WorkerStats:
    """Counts over a worker's run."""

    claims: int = 0
    #: Leases received, from claims and from claim-next.
    leases: int = 0
    #: Of those, the leases claim-next brought with a decision's answer.
    next_leases: int = 0
    handed_off: int = 0
    completed: int = 0
    released: int = 0
    failed: int = 0
    aborted: int = 0
    lost: int = 0
    refused: int = 0
    unknown: int = 0
    confirmed_by_history: int = 0
    retries: int = 0
    heartbeats: int = 0
    heartbeat_failures: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


class WorkerGaveUp(BatonError):
    """Baton stayed unreachable or unavailable for the whole `give_up_after` while claiming."""


class _Interrupted(BaseException):
    """Raised by the signal handler to abandon a claim that waits for work."""


Handler = Callable[[Job], Decision]


def holder_key(lease: m.Lease, verb: str) -> str:
    """The `Idempotency-Key` of a holder call: `{task}:{epoch}:{verb}`."""
    return f"{lease.task}:{lease.epoch}:{verb}"


def decision_landed(events: list[m.Event], actor: str, stage: str, epoch: int, kinds: tuple[str, ...]) -> bool:
    """Whether `events` hold the event a decision by `actor` on the lease
    `(stage, epoch)` writes: by that actor, of one of `kinds`, leaving `held`
    at `stage`, with the lease's epoch (decisions keep the epoch; only claims
    and expiries raise it)."""
    return any(
        event.actor == actor
        and event.epoch == epoch
        and event.kind in kinds
        and event.from_ is not None
        and event.from_.state == "held"
        and event.from_.stage == stage
        for event in events
    )


#: The outcome a decision that landed is reported as.
APPLIED: dict[str, str] = {
    "handoff": "handed_off",
    "complete": "completed",
    "release": "released",
    "fail": "failed",
    "abort": "aborted",
}


def decision_call(
    lease: m.Lease, decision: Decision, next_: m.ClaimNext | None
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The client method, arguments and keywords that deliver `decision` on
    `lease` (with `claim_next`), keyed by `holder_key`: the same for the sync
    and the async client."""
    key = holder_key(lease, decision.verb)
    common: dict[str, Any] = {"claim_next": next_, "request_key": key}
    task, epoch = lease.task, lease.epoch
    if isinstance(decision, Handoff):
        report = {"note": decision.note, "findings": decision.findings, "confidence": decision.confidence}
        return "handoff", (task, epoch, decision.to_stage), report | common
    if isinstance(decision, Complete):
        report = {"note": decision.note, "findings": decision.findings, "confidence": decision.confidence}
        return "complete", (task, epoch), {"result": decision.result} | report | common
    if isinstance(decision, Release):
        return "release", (task, epoch), {"note": decision.note} | common
    if isinstance(decision, Fail):
        return "fail", (task, epoch, decision.error), {"retryable": decision.retryable} | common
    return "abort", (task, epoch, decision.reason), common


class Worker:
    """The claim loop. See the module documentation."""

    def __init__(self, client: Client, agent: str | None = None, options: WorkerOptions | None = None) -> None:
        name = agent or client.agent
        if not name:
            raise ValueError("name the worker's agent (agent= or a client made with agent=)")
        self.agent = name
        self.options = options or WorkerOptions()
        self.options.check()
        self.client = client.with_agent(name)
        self.actor = f"agent:{name}"
        self.stats = WorkerStats()
        self._handlers: dict[str, Handler] = {}
        self._observers: list[Callable[[Finished], None]] = []
        self._stop = threading.Event()
        self._claiming = False
        self._lock = threading.Lock()
        self._beat_cond = threading.Condition()
        self._beat_job: Job | None = None
        self._beats_closed = False

    # ---- set-up --------------------------------------------------------

    def handler(self, stage: str) -> Callable[[Handler], Handler]:
        """Decorator: `fn` handles the tasks of `stage`."""

        def register(fn: Handler) -> Handler:
            self.on(stage, fn)
            return fn

        return register

    def on(self, stage: str, fn: Handler) -> None:
        """Registers `fn` for the tasks of `stage` (one handler per stage)."""
        if not stage.strip():
            raise ValueError("the stage must not be empty")
        if stage in self._handlers:
            raise ValueError(f"stage {stage!r} already has a handler")
        self._handlers[stage] = fn

    def on_finished(self, observer: Callable[[Finished], None]) -> None:
        """Calls `observer` with every finished lease, in order, from the worker's thread."""
        self._observers.append(observer)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Asks the worker to stop (safe from any thread)."""
        self._stop.set()

    # ---- the loop ------------------------------------------------------

    def run(self, *, install_signals: bool = True, max_leases: int | None = None) -> WorkerStats:
        """Claims and works tasks until stopped (or until `max_leases` leases
        were worked), then returns the counts. Raises `WorkerGaveUp` when
        Baton stays unreachable, and the `ApiError` of a claim refused for a
        reason retrying cannot fix (an unknown stage, a lease out of bounds)."""
        if not self._handlers:
            raise ValueError("register at least one handler before run()")
        previous = self._install_signals() if install_signals else {}
        pending: deque[m.Lease] = deque()
        worked = 0
        self._beats_closed = False
        beats = threading.Thread(target=self._heartbeats, name=f"baton-heartbeats-{self.agent}", daemon=True)
        beats.start()
        try:
            while True:
                if max_leases is not None and worked >= max_leases:
                    self._stop.set()
                if not pending:
                    if self.stopping:
                        break
                    pending.extend(self._claim())
                    continue
                lease = pending.popleft()
                if self.stopping:
                    finished = self._release_unworked(lease)
                else:
                    finished = self._work(lease, pending)
                    worked += 1
                self._record(finished)
        finally:
            with self._beat_cond:
                self._beats_closed = True
                self._beat_cond.notify()
            beats.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.stats

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: types.FrameType | None) -> None:
            log.info("worker %s: signal %d, stopping", self.agent, signum)
            self._stop.set()
            if self._claiming:
                raise _Interrupted()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    def _claim(self) -> list[m.Lease]:
        """One claim, retried with one key; empty when the wait ended with no work or on stop."""
        key = f"claim:{self.agent}:{uuid.uuid4()}"
        started = time.monotonic()
        attempt = 0
        while not self.stopping:
            self.stats.claims += 1
            try:
                self._claiming = True
                if self.stopping:
                    return []
                leases = self.client.claim(
                    list(self._handlers),
                    max=1,
                    wait_ms=self.options.wait_ms,
                    lease_ms=self.options.lease_ms,
                    request_key=key,
                )
                self._claiming = False
                self.stats.leases += len(leases)
                return leases
            except _Interrupted:
                return []
            except BatonError as error:
                self._claiming = False
                if not (error.retryable or isinstance(error, TooManyLeases)):
                    raise
                if time.monotonic() - started >= self.options.give_up_after:
                    raise WorkerGaveUp(f"gave up claiming after {self.options.give_up_after:.0f} s: {error}") from error
                self.stats.retries += 1
                attempt += 1
                self._stop.wait(self._backoff(attempt))
            finally:
                self._claiming = False
        return []

    def _work(self, lease: m.Lease, pending: deque[m.Lease]) -> Finished:
        job = Job(lease, lambda: self.stopping)
        fn = self._handlers.get(lease.stage)
        if fn is None:  # a lease from a stage without a handler: cannot happen, but never drop it
            return self._release_unworked(lease)
        self._beat_for(job)
        started = time.monotonic()
        handler_end = "returned"
        try:
            decision: Decision = fn(job)
            if not isinstance(decision, Handoff | Complete | Release | Fail | Abort):
                raise TypeError(f"the handler returned {decision!r}, not a Handoff, Complete, Release, Fail or Abort")
        except Exception as error:  # the handler's failure is the task's, not the worker's
            self.stats.handler_errors += 1
            handler_end = "raised"
            text = f"handler raised {type(error).__name__}: {error}"[:REFUSAL_TEXT_MAX]
            log.warning("worker %s: %s on %s", self.agent, text, job.fence.key)
            decision = Fail(text, retryable=True)
        finally:
            self._beat_for(None)
        if time.monotonic() - started > self.options.handler_timeout:
            self.stats.handler_timeouts += 1
            handler_end = "timed_out"
        if job.is_lost():
            return Finished(job.fence, handler_end, "lost", error=str(job.lost_info) if job.lost_info else None)
        wants_next = self.options.claim_next and not isinstance(decision, Release) and not self.stopping
        next_ = (
            m.ClaimNext(stages=list(self._handlers), max=1, lease_ms=self.options.lease_ms) if wants_next else None
        )
        finished, leases = self._apply(lease, decision, next_, handler_end)
        self.stats.leases += len(leases)
        self.stats.next_leases += len(leases)
        pending.extend(leases)
        return finished

    def _release_unworked(self, lease: m.Lease) -> Finished:
        finished, _ = self._apply(lease, Release(note="worker stopping"), None, "not_run")
        return finished

    # ---- heartbeats ----------------------------------------------------

    def _heartbeats(self) -> None:
        """The heartbeat thread, one per worker for its whole run: beats for
        the job in hand every `lease_ms / 3` until the job ends, its lease is
        lost, or its handler runs past `handler_timeout`. A failed heartbeat
        is tried again after a quarter of the interval. Beginning and ending
        a job only swap `_beat_job` under the condition: the worker never
        waits for this thread."""
        every = max(self.options.lease_ms / 3, 1) / 1000
        # Each heartbeat is cut off after the interval, so a hung call never
        # delays the next one past the lease.
        client = self.client.with_options(timeout=every, retry=RetryPolicy(attempts=1))
        cond = self._beat_cond
        finished: Job | None = None
        while True:
            with cond:
                while not self._beats_closed and (self._beat_job is None or self._beat_job is finished):
                    cond.wait()
                if self._beats_closed:
                    return
                job = self._beat_job
                assert job is not None
            finished = job
            deadline = time.monotonic() + self.options.handler_timeout
            next_at = time.monotonic() + every
            beat = 0
            while True:
                with cond:
                    while self._beat_job is job and not self._beats_closed:
                        remaining = next_at - time.monotonic()
                        if remaining <= 0:
                            break
                        cond.wait(remaining)
                    if self._beat_job is not job or self._beats_closed:
                        break
                if time.monotonic() >= deadline:
                    log.warning(
                        "worker %s: handler past handler_timeout on %s; the lease will expire", self.agent, job.fence.key
                    )
                    break
                beat += 1
                try:
                    client.heartbeat(
                        job.task,
                        job.epoch,
                        lease_ms=self.options.lease_ms,
                        request_key=f"{job.task}:{job.epoch}:heartbeat:{beat}",
                    )
                    with self._lock:
                        self.stats.heartbeats += 1
                    next_at = time.monotonic() + every
                except LeaseLost as error:
                    job.lost_info = error
                    job._lost.set()
                    break
                except (NotHolder, NotFound):
                    job._lost.set()
                    break
                except BatonError as error:
                    log.info("worker %s: heartbeat on %s failed: %s", self.agent, job.fence.key, error)
                    with self._lock:
                        self.stats.heartbeat_failures += 1
                    next_at = time.monotonic() + every / 4

    def _beat_for(self, job: Job | None) -> None:
        """Points the heartbeat thread at `job` (None: no job in hand)."""
        with self._beat_cond:
            self._beat_job = job
            self._beat_cond.notify()

    # ---- decisions -----------------------------------------------------

    def _apply(
        self, lease: m.Lease, decision: Decision, next_: m.ClaimNext | None, handler_end: str
    ) -> tuple[Finished, list[m.Lease]]:
        fence = FenceToken.of(lease)
        applied = APPLIED[decision.verb]
        kind, value = self._deliver(lease, decision, next_)
        if kind == "applied":
            assert isinstance(value, m.ActResponse)
            return Finished(fence, handler_end, applied, "response", value.handoff_id), value.next
        if kind == "landed":
            return Finished(fence, handler_end, applied, "history"), []
        if kind == "lost":
            return Finished(fence, handler_end, "lost", error=str(value) if value else None), []
        if kind == "unknown":
            return Finished(fence, handler_end, "unknown", error=str(value)), []
        # Refused: report it with a non-retryable fail so people see it.
        if not isinstance(decision, Fail):
            text = f"worker: {decision.verb} refused: {value}"[:REFUSAL_TEXT_MAX]
            self._deliver(lease, Fail(text, retryable=False), None)
        return Finished(fence, handler_end, "refused", error=str(value)), []

    def _deliver(self, lease: m.Lease, decision: Decision, next_: m.ClaimNext | None) -> tuple[str, object]:
        """Sends a decision, retrying as the module documentation describes.
        Returns (`applied`, answer), (`landed`, None), (`lost`, error),
        (`refused`, error) or (`unknown`, error)."""
        started = time.monotonic()
        attempt = 0
        ambiguous = False
        while True:
            try:
                return "applied", self._send(lease, decision, next_)
            except LeaseLost as error:
                if not ambiguous:
                    return "lost", error
                try:
                    return ("landed", None) if self._landed(lease, decision) else ("lost", error)
                except BatonError as read_error:
                    return "unknown", read_error
            except (NotHolder, NotFound) as error:
                return "lost", error
            except BatonError as error:
                if not error.retryable:
                    return "refused", error
                # The answer is missing, not the decision: it may have landed.
                ambiguous = True
                if time.monotonic() - started >= self.options.give_up_after:
                    return "unknown", error
                self.stats.retries += 1
                attempt += 1
                time.sleep(self._backoff(attempt))

    def _send(self, lease: m.Lease, decision: Decision, next_: m.ClaimNext | None) -> m.ActResponse:
        method, args, kwargs = decision_call(lease, decision, next_)
        answer: m.ActResponse = getattr(self.client, method)(*args, **kwargs)
        return answer

    def _landed(self, lease: m.Lease, decision: Decision) -> bool:
        """Whether the task's history holds the decision's event (retried reads)."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                history = self.client.history(lease.task)
            except BatonError as error:
                if not error.retryable or time.monotonic() - started >= self.options.give_up_after:
                    raise
                self.stats.retries += 1
                attempt += 1
                time.sleep(self._backoff(attempt))
                continue
            found = decision_landed(history.events, self.actor, lease.stage, lease.epoch, EVENT_KINDS[decision.verb])
            if found:
                self.stats.confirmed_by_history += 1
            return found

    # ---- helpers -------------------------------------------------------

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

