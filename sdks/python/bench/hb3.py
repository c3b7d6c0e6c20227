"""HB3 through the Python SDK's `Worker`, next to the Rust client in the same run.

HB3: a 3-stage pipeline (a -> b -> c -> done), N tasks with 1 KiB payloads
submitted into `a` before the clock starts, K agents each working all three
stages with claim-next. Each agent is a `Worker` in a process of its own
(the way Python agents are deployed; threads would share one GIL). Counted:
3 handoffs per task (two handoffs and the complete), handoffs per second
over the burn-down, and the step latency: from a handler returning its
decision at stage i to a handler starting the same task at stage i+1
(CLOCK_MONOTONIC, which every process shares), p50 and p99.

With `--harness PATH` (a release `baton-harness`), each round also runs the
Rust client's HB3 (`baton-harness bench-http`, its own `baton dev`, with its
raw-SQLite and ideal-writer baselines) at the same K and N, interleaved with
the Python runs. The Rust step is the harness's handoff latency (send of the
handoff to the lease at the next stage), the same span as the Python step
but for the handler's own few microseconds. Results print as a Markdown
table; `--json FILE` keeps them.

    python bench/hb3.py --baton target/release/baton [--harness target/release/baton-harness] \\
        [--agents 1,16] [--tasks 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baton  # noqa: E402
from tests.server import Server  # noqa: E402

STAGES = ("a", "b", "c")
PAYLOAD = {"blob": "x" * 1000}


def agent(address: str, name: str, total: int, out: Any, done: Any) -> None:
    """One worker process: records (task, stage, start, end) per handler run."""
    client = baton.Client(address)
    worker = baton.Worker(client, agent=name, options=baton.WorkerOptions(wait_ms=1000, lease_ms=30_000))
    rows: list[tuple[str, int, float, float]] = []

    def make(i: int) -> Any:
        def handle(job: baton.Job) -> baton.Decision:
            start = time.monotonic()
            decision: baton.Decision = (
                baton.Handoff(STAGES[i + 1]) if i + 1 < len(STAGES) else baton.Complete()
            )
            rows.append((job.task, i, start, time.monotonic()))
            with done.get_lock():
                done.value += 1
            return decision

        return handle

    for i, stage in enumerate(STAGES):
        worker.on(stage, make(i))

    def stop_when_done() -> None:
        while done.value < total:
            time.sleep(0.05)
        worker.stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    worker.run(install_signals=False)
    out.put(rows)
    client.close()


async def preload(address: str, tasks: int) -> None:
    async with baton.AsyncClient(address) as client:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                await client.submit(PAYLOAD, stage="a", idempotency_key=f"t{i}")

        await asyncio.gather(*(one(i) for i in range(tasks)))


def python_run(binary: str, agents: int, tasks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(binary, "dev", Path(tmp))
        server.start()
        try:
            asyncio.run(preload(server.address, tasks))
            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()
            done = ctx.Value("i", 0)
            total = tasks * len(STAGES)
            started = time.monotonic()
            procs = [
                ctx.Process(target=agent, args=(server.address, f"py-{k}", total, out, done)) for k in range(agents)
            ]
            for p in procs:
                p.start()
            rows: list[tuple[str, int, float, float]] = []
            for _ in procs:
                rows += out.get(timeout=600)
            for p in procs:
                p.join(60)
            elapsed = max(r[3] for r in rows) - started
        finally:
            server.stop()
    by_task: dict[tuple[str, int], tuple[float, float]] = {(t, i): (s, e) for t, i, s, e in rows}
    steps = sorted(
        (by_task[(t, i + 1)][0] - e) * 1000
        for (t, i), (s, e) in by_task.items()
        if (t, i + 1) in by_task
    )
    return {
        "client": "python",
        "agents": agents,
        "tasks": tasks,
        "handoffs": len(rows),
        "handoffs_per_s": len(rows) / elapsed,
        "step_p50_ms": steps[len(steps) // 2],
        "step_p99_ms": steps[min(len(steps) - 1, int(len(steps) * 0.99))],
    }


def rust_run(harness: str, binary: str, agents: int, tasks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                harness, "bench-http", "--agents", str(agents), "--tasks", str(tasks), "--runs", "1",
                "--e2e-tasks", "0", "--baton", binary, "--dir", tmp, "--json", str(report), "--quiet-wait-s", "0",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data = json.loads(report.read_text())
    (run,) = [r for r in data["runs"] if r["system"] == "baton_http"]
    return {
        "client": "rust",
        "agents": agents,
        "tasks": tasks,
        "handoffs": run["handoffs"],
        "handoffs_per_s": run["handoffs_per_s"],
        "step_p50_ms": run["handoff_p50_us"] / 1000,
        "step_p99_ms": run["handoff_p99_us"] / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baton", required=True)
    parser.add_argument("--harness")
    parser.add_argument("--agents", default="1,16")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for k in (int(x) for x in args.agents.split(",")):
            if args.harness:
                results.append(rust_run(args.harness, args.baton, k, args.tasks) | {"round": round_})
                print(json.dumps(results[-1])[:400], file=sys.stderr)
            results.append(python_run(args.baton, k, args.tasks) | {"round": round_})
            print(json.dumps(results[-1]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print("| client | K | handoffs/s (median, range) | step p50 ms | step p99 ms |")
    print("|---|---|---|---|---|")
    labels = {"rust": "Rust client (`baton-harness bench-http`)", "python": "Python `Worker` (one process per agent)"}
    for k in sorted({r["agents"] for r in results}):
        for client in ("rust", "python"):
            rows = [r for r in results if r["client"] == client and r["agents"] == k]
            if not rows:
                continue
            rates = [r["handoffs_per_s"] for r in rows]
            print(
                f"| {labels[client]} | {k} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                f"| {statistics.median(r['step_p50_ms'] for r in rows):.1f} "
                f"| {statistics.median(r['step_p99_ms'] for r in rows):.1f} |"
            )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
