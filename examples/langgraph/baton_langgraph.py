"""Run a LangGraph `StateGraph` on Baton: each node is a Baton stage, worked
by the SDK's `Worker` in a process of its own.

The graph's structure becomes a Baton workflow (`workflow_toml`): one stage
per node, its routes the node's possible successors, the entry the node after
`START`. A task's payload is the graph's input; each node's update travels as
the `findings` of the handoff that leaves the node, so the state at any node
is the input with every earlier update applied through the graph's own
channels (last value, or the reducer an `Annotated` key names), in history
order. A node's worker reads that history, runs the node function on the
state, picks the successor with the graph's own edges and conditional edges,
and hands off with the update (or completes with the final state at `END`).

Baton makes the run durable: a worker killed mid-node loses its lease, the
task is offered again, and another worker runs the node (with a new fence
epoch); the killed run's update never lands, so every node's update is
applied once. Supported graphs: one edge from `START`, and from each node
either one edge or conditional edges (no fan-out to several nodes at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import baton
from langchain_core.runnables import Runnable
from langgraph.constants import END, START
from langgraph.graph import StateGraph


class BatonGraph:
    """A `StateGraph` (not compiled) mapped onto a Baton workflow called `name`."""

    def __init__(self, builder: StateGraph[Any], name: str) -> None:
        self.builder = builder
        self.name = name
        self.nodes = list(builder.nodes)
        starts = [dst for src, dst in builder.edges if src == START]
        if len(starts) != 1:
            raise ValueError("the graph needs exactly one edge from START")
        self.entry = starts[0]
        self.static: dict[str, str] = {}
        for src, dst in builder.edges:
            if src == START:
                continue
            if src in self.static:
                raise ValueError(f"node {src!r} fans out to several nodes; not supported")
            self.static[src] = dst
        for src in builder.branches:
            if src in self.static:
                raise ValueError(f"node {src!r} has both an edge and conditional edges")

    # ---- the workflow --------------------------------------------------

    def successors(self, node: str) -> list[str]:
        """Every node that may follow `node` (END excluded)."""
        if node in self.static:
            return [self.static[node]] if self.static[node] != END else []
        ends: list[str] = []
        for spec in self.builder.branches.get(node, {}).values():
            if not spec.ends:
                raise ValueError(f"conditional edges of {node!r} must list their targets")
            ends += [str(target) for target in spec.ends.values() if target != END]
        return sorted(set(ends))

    def workflow_toml(self, lease: str = "30s") -> str:
        lines = [f'name = "{self.name}"', f'entry = "{self.entry}"', "", "[defaults]", f'lease = "{lease}"', ""]
        for node in self.nodes:
            lines.append(f"[stages.{node}]")
            routes = self.successors(node)
            if routes:
                lines.append("routes = [" + ", ".join(f'"{r}"' for r in routes) + "]")
            lines.append("")
        return "\n".join(lines)

    # ---- state ---------------------------------------------------------

    def merge(self, state: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
        """`update` applied to `state` through the graph's channels."""
        merged = dict(state)
        for key, value in update.items():
            channel = self.builder.channels.get(key)
            operator = getattr(channel, "operator", None)
            if operator is not None and key in merged:
                merged[key] = operator(merged[key], value)
            else:
                merged[key] = value
        return merged

    def state_of(self, client: baton.Client, task: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The state at the task's current node: the input and every landed update, in order."""
        state = dict(payload)
        for event in client.history(task).events:
            if event.kind == "handed_off" and isinstance(event.findings, dict):
                state = self.merge(state, event.findings)
        return state

    def next_node(self, node: str, state: Mapping[str, Any]) -> str:
        if node in self.static:
            return self.static[node]
        (spec,) = self.builder.branches[node].values()
        chosen = spec.path.invoke(dict(state))
        target = spec.ends[chosen] if spec.ends and chosen in spec.ends else chosen
        return str(target)

    # ---- workers -------------------------------------------------------

    def worker(
        self,
        client: baton.Client,
        node: str,
        agent: str,
        options: baton.WorkerOptions | None = None,
        before: Callable[[baton.Job], None] | None = None,
    ) -> baton.Worker:
        """A worker that runs `node` for every task that reaches its stage
        (calling `before` with the job first, if given)."""
        if node not in self.builder.nodes:
            raise ValueError(f"no node {node!r}; the graph has {self.nodes}")
        runnable = self.builder.nodes[node].runnable
        if not isinstance(runnable, Runnable):
            raise TypeError(f"node {node!r} is not a runnable: {runnable!r}")
        worker = baton.Worker(client, agent=agent, options=options)

        def run_node(job: baton.Job) -> baton.Decision:
            if before is not None:
                before(job)
            state = self.state_of(worker.client, job.task, job.payload)
            update = runnable.invoke(state) or {}
            after = self.merge(state, update)
            target = self.next_node(node, after)
            if target == END:
                return baton.Complete(result=after, findings=update, note=f"{node} done")
            return baton.Handoff(target, findings=update, note=f"{node} done", confidence=1.0)

        worker.on(node, run_node)
        return worker
