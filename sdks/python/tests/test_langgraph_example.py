"""Goal: the LangGraph example (examples/langgraph) runs a `StateGraph` on
Baton with one worker process per node, and a worker killed mid-task loses
nothing: every input finishes once, with the state LangGraph itself computes.

Method: a real `baton dev`; the example's workers as processes (`run.py
worker NODE`); SIGKILL the `classify` worker while it is inside a task, start
a replacement, and compare every task's result with `graph.compile().invoke`
on the same input, and each task's history with one landing per node."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import baton

from .server import Server

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "langgraph"
sys.path.insert(0, str(EXAMPLE))

from baton_langgraph import BatonGraph  # noqa: E402
from graph import build  # noqa: E402

TEXTS = [
    "the site is down for everyone",
    "how do I change my   password",
    "urgent: payments outage in eu",
    "thanks for the quick help",
    "invoice number is wrong",
    "login page down again",
    "can I export my data",
    "feature request: dark mode",
]

#: Bound on any wait, in seconds.
SETTLE_MAX = 60.0


class WorkerProcess:
    """`run.py worker NODE` as a process, its stdout lines collected."""

    def __init__(self, address: str, node: str, agent: str, pause: float) -> None:
        args = [
            sys.executable, str(EXAMPLE / "run.py"), "worker", node, "--address", address, "--agent", agent,
            "--pause", str(pause), "--lease-ms", "2000", "--wait-ms", "1000",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=EXAMPLE)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: any(line.startswith("ready") for line in self.lines), f"worker {agent} to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def started(self) -> list[tuple[str, int]]:
        return [(p[1], int(p[2])) for p in (line.split() for line in list(self.lines)) if p[0] == "started"]


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(binary: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(binary, "dev", tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_killed_worker_loses_no_input(server: Server) -> None:
    graph = BatonGraph(build(), "support-tickets")
    client = baton.Client(server.address)
    subprocess.run([sys.executable, "run.py", "apply", "--address", server.address], cwd=EXAMPLE, check=True)
    workers = {
        node: WorkerProcess(server.address, node, f"{node}-1", 0.4 if node == "classify" else 0.0)
        for node in graph.nodes
    }
    inputs = {}
    for i, text in enumerate(TEXTS):
        state = {"ticket": f"t-{i}", "text": text, "trail": []}
        task = client.submit(state, workflow="support-tickets", idempotency_key=f"t-{i}").task
        inputs[task.id] = state

    # Kill the classify worker inside its third task, then replace it.
    victim = workers["classify"]
    wait_for(lambda: len(victim.started()) >= 3, "classify's third task")
    killed_task, killed_epoch = victim.started()[-1]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    replacement = WorkerProcess(server.address, "classify", "classify-2", 0.0)

    wait_for(lambda: all(client.get_task(t).state == "done" for t in inputs), "every input to finish")
    for proc in [w.proc for w in workers.values()] + [replacement.proc]:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in [w.proc for w in workers.values() if w is not victim] + [replacement.proc]:
        assert proc.wait(30) == 0

    expected_graph = build().compile()
    for task_id, state in inputs.items():
        task = client.get_task(task_id)
        assert task.result == expected_graph.invoke(state), task_id
        events = client.history(task_id).events
        left = [e.from_.stage for e in events if e.kind in ("handed_off", "completed") and e.from_ is not None]
        assert left == task.result["trail"], (task_id, left)  # each node's update landed once, in order
    # The killed run never landed: its lease expired and the replacement ran the node again.
    events = client.history(killed_task).events
    assert any(e.kind == "lease_expired" and e.epoch > killed_epoch for e in events)
    assert killed_task in [t for t, _ in replacement.started()]
    client.close()
