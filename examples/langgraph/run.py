"""Command line of the LangGraph example.

    python run.py apply  [--address URL]            # store the graph as a Baton workflow
    python run.py worker NODE [--address URL] [--agent NAME] [--pause SECONDS]
    python run.py submit TEXT... [--address URL]    # one task per text

A worker runs one node of the graph for every task that reaches its stage,
until SIGTERM or Ctrl-C; run one (or more) per node, each in its own process.
It prints `started TASK EPOCH` as it begins each task. `--pause` slows each
node down, to watch tasks move (or to kill a worker mid-task).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

import baton
from baton_langgraph import BatonGraph
from graph import build

WORKFLOW = "support-tickets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["apply", "worker", "submit"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--address", default=baton.DEFAULT_ADDRESS)
    parser.add_argument("--agent")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--lease-ms", type=int, default=30_000)
    parser.add_argument("--wait-ms", type=int, default=20_000)
    args = parser.parse_args(argv)
    graph = BatonGraph(build(), WORKFLOW)
    client = baton.Client(args.address)
    if args.command == "apply":
        applied = client.apply_workflow(graph.workflow_toml())
        print(f"workflow {WORKFLOW} version {applied.workflow.version} (entry {graph.entry})")
        return 0
    if args.command == "submit":
        for text in args.args:
            key = f"ticket-{uuid.uuid4().hex[:12]}"
            task = client.submit({"ticket": key, "text": text, "trail": []}, workflow=WORKFLOW, idempotency_key=key)
            print(task.task.id)
        return 0
    (node,) = args.args

    def before(job: baton.Job) -> None:
        print(f"started {job.task} {job.epoch}", flush=True)
        if args.pause:
            time.sleep(args.pause)

    options = baton.WorkerOptions(lease_ms=args.lease_ms, wait_ms=args.wait_ms)
    worker = graph.worker(client, node, args.agent or f"{node}-{uuid.uuid4().hex[:6]}", options, before)
    print(f"ready {node}", flush=True)
    stats = worker.run()
    print(f"stopped {node}: {stats.handed_off} handed off, {stats.completed} completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
