"""A worker in its own process, for the SIGTERM tests: works `stage`, handing
each task to `to_stage` after sleeping `sleep` seconds, and appends one JSON
line per event (`started`, `finished`, `stats`) to `record`.

    python worker_proc.py ADDRESS AGENT STAGE TO_STAGE SLEEP RECORD [WAIT_MS]
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import baton


def main() -> int:
    address, agent, stage, to_stage, sleep, record = sys.argv[1:7]
    wait_ms = int(sys.argv[7]) if len(sys.argv) > 7 else 20_000

    def note(**entry: Any) -> None:
        with open(record, "a") as out:
            out.write(json.dumps(entry) + "\n")

    worker = baton.Worker(
        baton.Client(address), agent=agent, options=baton.WorkerOptions(wait_ms=wait_ms, lease_ms=10_000)
    )

    @worker.handler(stage)
    def work(job: baton.Job) -> baton.Decision:
        note(event="started", task=job.task, epoch=job.epoch, fence=job.fence.key)
        time.sleep(float(sleep))
        note(event="finished", task=job.task, stopping=job.is_stopping())
        return baton.Handoff(to_stage, note="done by " + agent)

    worker.on_finished(lambda f: note(event="outcome", task=f.fence.task, outcome=f.outcome, handler=f.handler))
    # Until run() installs its own handlers, a SIGTERM still stops cleanly.
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
    note(event="ready")
    stats = worker.run()
    note(event="stats", claims=stats.claims, handed_off=stats.handed_off, released=stats.released)
    return 0


if __name__ == "__main__":
    sys.exit(main())
