"""A worker in its own process, for the SIGTERM tests: works `stage`, handing
each task to `to_stage` after sleeping `sleep` seconds, and appends one JSON
line per event (`started`, `finished`, `stats`) to `record`.

    python worker_proc.py ADDRESS AGENT STAGE TO_STAGE SLEEP RECORD [WAIT_MS [sync|async]]
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import baton


def main() -> int:
    address, agent, stage, to_stage, sleep, record = sys.argv[1:7]
    wait_ms = int(sys.argv[7]) if len(sys.argv) > 7 else 20_000
    flavour = sys.argv[8] if len(sys.argv) > 8 else "sync"

    def note(**entry: Any) -> None:
        with open(record, "a") as out:
            out.write(json.dumps(entry) + "\n")

    options = baton.WorkerOptions(wait_ms=wait_ms, lease_ms=10_000)
    outcome = lambda f: note(event="outcome", task=f.fence.task, outcome=f.outcome, handler=f.handler)  # noqa: E731
    stats: baton.WorkerStats
    if flavour == "async":
        aworker = baton.AsyncWorker(baton.AsyncClient(address), agent=agent, options=options)

        @aworker.handler(stage)
        async def work_async(job: baton.Job) -> baton.Decision:
            note(event="started", task=job.task, epoch=job.epoch, fence=job.fence.key)
            await asyncio.sleep(float(sleep))
            note(event="finished", task=job.task, stopping=job.is_stopping())
            return baton.Handoff(to_stage, note="done by " + agent)

        aworker.on_finished(outcome)
        signal.signal(signal.SIGTERM, lambda signum, frame: aworker.stop())
        note(event="ready")
        stats = asyncio.run(aworker.run())
    else:
        worker = baton.Worker(baton.Client(address), agent=agent, options=options)

        @worker.handler(stage)
        def work(job: baton.Job) -> baton.Decision:
            note(event="started", task=job.task, epoch=job.epoch, fence=job.fence.key)
            time.sleep(float(sleep))
            note(event="finished", task=job.task, stopping=job.is_stopping())
            return baton.Handoff(to_stage, note="done by " + agent)

        worker.on_finished(outcome)
        # Until run() installs its own handlers, a SIGTERM still stops cleanly.
        signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
        note(event="ready")
        stats = worker.run()
    note(event="stats", claims=stats.claims, handed_off=stats.handed_off, released=stats.released)
    return 0


if __name__ == "__main__":
    sys.exit(main())
