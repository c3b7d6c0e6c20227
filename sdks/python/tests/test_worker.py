"""Goal: the worker never drops or doubles a task: it hands off with note,
findings and confidence, claims the next task in the same call, survives a
SIGKILL and restart of the server mid-run, settles a lost answer, reports a
stale lease as lost, and stops cleanly on SIGTERM.

Method: workers (threads of this process, or a process of their own for
SIGTERM) against a real `baton dev`; every handler run is recorded with its
fence token and checked against each task's history afterwards."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

import baton

from .server import Server

#: Bound on any wait for the system to settle, in seconds.
SETTLE_MAX = 60.0


def wait_until(what: str, check: Callable[[], bool], limit: float = SETTLE_MAX) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Runs:
    """Every handler run, by fence token, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[baton.FenceToken] = []

    def add(self, fence: baton.FenceToken) -> None:
        with self.lock:
            self.runs.append(fence)

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


def pipeline(address: str, flavour: str, agent: str, stages: list[str], runs: Runs,
             options: baton.WorkerOptions, pause: float = 0.0) -> Any:
    """A `Worker` (sync) or an `AsyncWorker` (async) handing each task along
    `stages` and completing it at the last; not started."""

    def decide(job: baton.Job, to: str | None) -> baton.Decision:
        runs.add(job.fence)
        assert job.fence == baton.FenceToken(job.task, job.stage, job.epoch)
        if to is None:
            return baton.Complete(result={"by": agent}, note="finished", findings={"stage": job.stage})
        return baton.Handoff(to, note=f"{job.stage} done", findings={"stage": job.stage}, confidence=0.75)

    worker: Any
    if flavour == "sync":
        worker = baton.Worker(baton.Client(address), agent=agent, options=options)
    else:
        worker = baton.AsyncWorker(baton.AsyncClient(address), agent=agent, options=options)
    for i, stage in enumerate(stages):
        to = stages[i + 1] if i + 1 < len(stages) else None
        if flavour == "sync":
            def handle(job: baton.Job, to: str | None = to) -> baton.Decision:
                time.sleep(pause)
                return decide(job, to)

            worker.on(stage, handle)
        else:
            async def handle_async(job: baton.Job, to: str | None = to) -> baton.Decision:
                await asyncio.sleep(pause)
                return decide(job, to)

            worker.on(stage, handle_async)
    return worker


def start(worker: Any) -> threading.Thread:
    """Runs a worker in a thread (an `AsyncWorker` on its own event loop)."""
    if isinstance(worker, baton.AsyncWorker):
        thread = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    else:
        thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def check_once_per_stage(client: baton.Client, tasks: list[str], stages: list[str], runs: Runs) -> None:
    """Every task done; each stage's decision landed once; a handler ran
    again at a stage only after a lease of that stage expired."""
    by_stage: Counter[tuple[str, str]] = Counter((f.task, f.stage) for f in runs.runs)
    for task in tasks:
        assert client.get_task(task).state == "done", task
        events = client.history(task).events
        for i, stage in enumerate(stages):
            kind = "completed" if i == len(stages) - 1 else "handed_off"
            landed = [e for e in events if e.kind == kind and e.from_ is not None and e.from_.stage == stage]
            assert len(landed) == 1, (task, stage, [e.kind for e in events])
            expiries = [
                e for e in events if e.kind == "lease_expired" and e.from_ is not None and e.from_.stage == stage
            ]
            assert by_stage[(task, stage)] <= 1 + len(expiries), (task, stage, by_stage[(task, stage)])
            assert by_stage[(task, stage)] >= 1


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_pipeline_with_claim_next_and_reports(dev: Server, tag: str, flavour: str) -> None:
    stages = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    client = baton.Client(dev.address)
    tasks = [client.submit({"i": i}, stage=stages[0]).task.id for i in range(20)]
    runs = Runs()
    options = baton.WorkerOptions(wait_ms=500, lease_ms=10_000)
    workers = [pipeline(dev.address, flavour, f"bot-{tag}-{k}", stages, runs, options) for k in range(2)]
    threads = [start(w) for w in workers]
    wait_until("every task done", lambda: all(client.get_task(t).state == "done" for t in tasks))
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
    check_once_per_stage(client, tasks, stages, runs)
    assert runs.count() == 60
    total = sum(w.stats.handed_off for w in workers), sum(w.stats.completed for w in workers)
    assert total == (40, 20)
    # Claim-next gave most leases, in the answers of the decisions.
    assert sum(w.stats.leases for w in workers) >= 60
    assert sum(w.stats.next_leases for w in workers) >= 30
    event = next(e for e in client.history(tasks[0]).events if e.kind == "handed_off")
    assert event.note == f"{stages[0]} done" and event.findings == {"stage": stages[0]} and event.confidence == 0.75
    client.close()


def test_stale_holder_gets_lease_lost(dev: Server, make_client: Any, tag: str) -> None:
    stage = f"s-{tag}"
    c = make_client(dev.address, agent="slow-bot")
    task = c.submit({"n": 1}, stage=stage).task
    (lease,) = c.claim([stage], wait_ms=2000, lease_ms=1000)
    wait_until("the lease to expire", lambda: c.get_task(task.id).epoch > lease.epoch)
    with pytest.raises(baton.LeaseLost) as lost:
        c.complete(lease.task, lease.epoch)
    assert lost.value.current_epoch == lease.epoch + 1 and lost.value.state == "waiting"
    assert c.get_task(task.id).state == "waiting"  # nothing changed
    (fresh,) = c.with_agent("quick-bot").claim([stage], wait_ms=2000)
    assert fresh.epoch == lease.epoch + 2  # one for the expiry, one for the claim


def test_worker_past_its_handler_timeout_loses_the_lease(dev: Server, tag: str) -> None:
    stage, done = f"s-{tag}", f"done-{tag}"
    client = baton.Client(dev.address)
    task = client.submit({"n": 1}, stage=stage).task.id
    slow = baton.Worker(client, agent="slow", options=baton.WorkerOptions(wait_ms=500, lease_ms=1000, handler_timeout=0.3))
    seen: list[baton.Finished] = []
    slow.on_finished(seen.append)
    released = threading.Event()

    @slow.handler(stage)
    def hang(job: baton.Job) -> baton.Decision:
        wait_until("the lease to move on", lambda: client.get_task(job.task).epoch > job.epoch)
        released.set()
        return baton.Handoff(done)

    thread = start(slow)
    wait_until("the slow handler to see its lease lost", released.is_set)
    wait_until("the outcome", lambda: len(seen) == 1)
    slow.stop()
    thread.join(10)
    assert seen[0].outcome == "lost" and seen[0].handler == "timed_out"
    after = client.get_task(task)
    assert after.stage == stage and after.state == "waiting"  # offered again, not handed off
    client.close()


def test_heartbeats_keep_a_slow_handlers_lease_and_tell_it_when_lost(dev: Server, tag: str) -> None:
    stage, done = f"s-{tag}", f"done-{tag}"
    client = baton.Client(dev.address)
    slow_task = client.submit({"n": 1}, stage=stage, priority=1).task.id
    doomed_task = client.submit({"n": 2}, stage=stage).task.id
    worker = baton.Worker(client, agent="slow", options=baton.WorkerOptions(wait_ms=500, lease_ms=2000))
    seen: list[baton.Finished] = []
    worker.on_finished(seen.append)
    noticed: list[bool] = []

    @worker.handler(stage)
    def work(job: baton.Job) -> baton.Decision:
        if job.task == slow_task:
            time.sleep(4.5)  # over twice the lease: only heartbeats keep it
            return baton.Handoff(done)
        # An operator cancels this one while it is worked: a heartbeat learns it.
        client.cancel(job.task, "withdrawn")
        wait_until("a heartbeat to find the lease lost", job.is_lost, limit=10)
        noticed.append(True)
        return baton.Handoff(done)

    thread = start(worker)
    wait_until("both leases finished", lambda: len(seen) == 2)
    worker.stop()
    thread.join(10)
    assert [(f.fence.task, f.outcome) for f in seen] == [(slow_task, "handed_off"), (doomed_task, "lost")]
    assert noticed == [True]
    assert worker.stats.heartbeats >= 5
    events = client.history(slow_task).events
    assert not any(e.kind == "lease_expired" for e in events)
    assert client.get_task(slow_task).stage == done
    assert client.get_task(doomed_task).state == "cancelled"
    client.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_worker_through_a_server_sigkill_and_restart(binary: str, tmp_path: Path, tag: str, flavour: str) -> None:
    server = Server(binary, "dev", tmp_path)
    server.start()
    try:
        stages = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
        client = baton.Client(server.address)
        tasks = [client.submit({"i": i}, stage=stages[0], idempotency_key=f"t-{i}").task.id for i in range(30)]
        runs = Runs()
        options = baton.WorkerOptions(wait_ms=1000, lease_ms=3000, backoff_max=0.5)
        workers = [pipeline(server.address, flavour, f"bot-{k}", stages, runs, options, pause=0.02) for k in range(2)]
        threads = [start(w) for w in workers]
        wait_until("a third of the handler runs", lambda: runs.count() >= 30)
        server.kill()
        time.sleep(1.0)
        server.start()
        wait_until(
            "every task done after the restart",
            lambda: all(client.get_task(t).state == "done" for t in tasks),
        )
        for w in workers:
            w.stop()
        for t in threads:
            t.join(10)
        check_once_per_stage(client, tasks, stages, runs)
        assert sum(w.stats.retries for w in workers) > 0  # the outage was seen, and retried through
        assert sum(w.stats.unknown for w in workers) == 0
        client.close()
    finally:
        server.stop()


class DropFirstAnswer(httpx2.HTTPTransport):
    """A real connection to the server whose first answer to a call ending in
    `suffix` is lost after the server acted on it (optionally sent without its
    Idempotency-Key, as to a server that ignores the header)."""

    def __init__(self, suffix: str, strip_key: bool) -> None:
        super().__init__()
        self.suffix = suffix
        self.strip_key = strip_key
        self.dropped = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.dropped == 0 and request.url.path.endswith(self.suffix):
            self.dropped += 1
            if self.strip_key:
                del request.headers["idempotency-key"]
            response = super().handle_request(request)
            response.read()
            response.close()
            raise httpx2.ReadError("connection reset before the answer arrived", request=request)
        return super().handle_request(request)


class DropFirstAnswerAsync(httpx2.AsyncHTTPTransport):
    """`DropFirstAnswer` for the async client."""

    def __init__(self, suffix: str, strip_key: bool) -> None:
        super().__init__()
        self.suffix = suffix
        self.strip_key = strip_key
        self.dropped = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.dropped == 0 and request.url.path.endswith(self.suffix):
            self.dropped += 1
            if self.strip_key:
                del request.headers["idempotency-key"]
            response = await super().handle_async_request(request)
            await response.aread()
            await response.aclose()
            raise httpx2.ReadError("connection reset before the answer arrived", request=request)
        return await super().handle_async_request(request)


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("strip_key", [False, True], ids=["keyed-replay", "settled-by-history"])
def test_a_lost_answer_is_settled(dev: Server, tag: str, strip_key: bool, flavour: str) -> None:
    stage = f"s-{tag}"
    client = baton.Client(dev.address)
    task = client.submit({"n": 1}, stage=stage).task.id
    options = baton.WorkerOptions(wait_ms=300, claim_next=False)
    seen: list[baton.Finished] = []
    no_retry = baton.RetryPolicy(attempts=1)
    transport: DropFirstAnswer | DropFirstAnswerAsync
    if flavour == "sync":
        transport = DropFirstAnswer("/complete", strip_key)
        worker = baton.Worker(baton.Client(dev.address, transport=transport, retry=no_retry), "bot", options)
        worker.on_finished(seen.append)
        worker.on(stage, lambda job: baton.Complete(result={"ok": 1}))
        worker.run(max_leases=1)
    else:
        transport = DropFirstAnswerAsync("/complete", strip_key)
        aworker = baton.AsyncWorker(baton.AsyncClient(dev.address, transport=transport, retry=no_retry), "bot", options)
        aworker.on_finished(seen.append)

        async def complete(job: baton.Job) -> baton.Decision:
            return baton.Complete(result={"ok": 1})

        aworker.on(stage, complete)
        asyncio.run(aworker.run(max_leases=1))
    assert transport.dropped == 1
    (finished,) = seen
    assert finished.outcome == "completed"
    assert finished.confirmed == ("history" if strip_key else "response")
    events = client.history(task).events
    assert [e.kind for e in events].count("completed") == 1
    client.close()


def read_record(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def spawn_worker(dev: Server, tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        agent: str, stage: str, to: str, sleep: float, wait_ms: int = 20_000, flavour: str = "sync"
    ) -> tuple[subprocess.Popen[bytes], Path]:
        record = tmp_path / f"{agent}.jsonl"
        script = Path(__file__).with_name("worker_proc.py")
        args = [
            sys.executable, str(script), dev.address, agent, stage, to, str(sleep), str(record), str(wait_ms), flavour
        ]
        proc = subprocess.Popen(args)
        procs.append(proc)
        wait_until("the worker to start", lambda: any(e["event"] == "ready" for e in read_record(record)))
        return proc, record

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_sigterm_finishes_the_current_task(dev: Server, tag: str, spawn_worker: Any, flavour: str) -> None:
    stage, to = f"s-{tag}", f"next-{tag}"
    client = baton.Client(dev.address)
    first = client.submit({"n": 1}, stage=stage).task.id
    proc, record = spawn_worker(f"w-{tag}", stage, to, 1.5, flavour=flavour)
    wait_until("the handler to start", lambda: any(e["event"] == "started" for e in read_record(record)))
    second = client.submit({"n": 2}, stage=stage).task.id
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    events = read_record(record)
    assert [e["event"] for e in events if e["event"] in ("started", "finished")] == ["started", "finished"]
    assert events[-1]["event"] == "stats" and events[-1]["handed_off"] == 1
    assert client.get_task(first).stage == to  # finished and handed off
    after = client.get_task(second)
    assert after.state == "waiting" and after.stage == stage  # never claimed, or released unworked
    client.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_sigterm_while_waiting_for_work_stops_at_once(dev: Server, tag: str, spawn_worker: Any, flavour: str) -> None:
    proc, record = spawn_worker(f"w-{tag}", f"empty-{tag}", f"next-{tag}", 0.0, 60_000, flavour)
    time.sleep(0.5)  # into the long poll
    proc.send_signal(signal.SIGTERM)
    # Well before the 60 s wait would end on its own.
    assert proc.wait(20) == 0
    assert read_record(record)[-1]["event"] == "stats"
