"""The Temporal anchor of `baton bench --anchors` (crates/baton-harness/src/bench/anchors.rs).

A workflow of 3 activities (stages a, b, c), each returning a 256-byte result, as an HB3
stage does; the client starts a workflow and awaits its result.

    python temporal_anchor.py worker --address 127.0.0.1:PORT
        runs the worker (workflow and activities) until killed; prints "ready" once polling.
    python temporal_anchor.py drive --address 127.0.0.1:PORT --payload-bytes B ...
        the measuring client. Before each phase it prints `{"ready": PHASE}` and waits for a
        line on stdin (so the bench can take its readings); after the phase it prints one JSON
        line: {"phase", "latencies_us", "seconds", "errors"}. Phases: "warmup" (untimed),
        "sequential" (one workflow at a time), "concurrent" (CONCURRENCY closed-loop clients,
        each starting its next workflow when the previous one's result arrives, until COUNT
        workflows have finished or TIME_MAX_S has passed).
"""

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "baton-bench-anchor"
RESULT = "r" * 256
# How long the worker and the client keep trying to reach a starting server.
CONNECT_WAIT_S = 60.0


@activity.defn
async def step(stage: str, data: str) -> str:
    return RESULT


@workflow.defn
class Pipeline:
    @workflow.run
    async def run(self, payload: str) -> str:
        data = payload
        for stage in ("a", "b", "c"):
            data = await workflow.execute_activity(
                step, args=[stage, data], start_to_close_timeout=timedelta(seconds=30)
            )
        return "done"


async def connect(address: str) -> Client:
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            return await Client.connect(address)
        except Exception:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def worker(args: argparse.Namespace) -> None:
    client = await connect(args.address)
    w = Worker(client, task_queue=TASK_QUEUE, workflows=[Pipeline], activities=[step])
    print("ready", flush=True)
    await w.run()


async def one(client: Client, payload: str, prefix: str, i: int) -> int:
    t0 = time.perf_counter_ns()
    result = await client.execute_workflow(
        Pipeline.run, payload, id=f"{prefix}-{i}", task_queue=TASK_QUEUE
    )
    if result != "done":
        raise RuntimeError(f"unexpected result {result!r}")
    return (time.perf_counter_ns() - t0) // 1000


async def phase(name: str, run) -> None:
    print(json.dumps({"ready": name}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("stdin closed")
    t0 = time.perf_counter()
    latencies, errors = await run()
    seconds = time.perf_counter() - t0
    print(json.dumps({"phase": name, "latencies_us": latencies, "seconds": seconds, "errors": errors}), flush=True)


async def drive(args: argparse.Namespace) -> None:
    client = await connect(args.address)
    payload = "x" * args.payload_bytes
    prefix = f"bench-{uuid.uuid4().hex[:12]}"

    async def sequential(name: str, count: int):
        out = []
        for i in range(count):
            out.append(await one(client, payload, f"{prefix}-{name}", i))
        return out, 0

    async def concurrent():
        out, errors = [], []
        next_index = iter(range(args.count))
        deadline = time.monotonic() + args.time_max_s

        async def loop():
            for i in next_index:
                if time.monotonic() >= deadline:
                    return
                try:
                    out.append(await one(client, payload, f"{prefix}-c", i))
                except Exception as e:  # counted, never hidden
                    errors.append(repr(e))

        await asyncio.gather(*(loop() for _ in range(args.concurrency)))
        return out, len(errors)

    await phase("warmup", lambda: sequential("w", args.warmup))
    await phase("sequential", lambda: sequential("s", args.samples))
    await phase("concurrent", concurrent)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["worker", "drive"])
    p.add_argument("--address", required=True)
    p.add_argument("--payload-bytes", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--time-max-s", type=float, default=60.0)
    args = p.parse_args()
    asyncio.run(worker(args) if args.role == "worker" else drive(args))


if __name__ == "__main__":
    main()
