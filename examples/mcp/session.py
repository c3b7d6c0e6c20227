"""An MCP client session that takes a task through two stages.

Two agents, each an MCP session with `baton mcp` (Baton's MCP server on
stdio, the way Claude Desktop or an IDE starts it), against a running
`baton dev`:

1. the writer submits a task into `draft`, claims it and hands it to
   `review` with a note, findings and its confidence;
2. the reviewer claims it from `review`, reads what the writer found (the
   task's history, as an MCP resource) and completes it.

Run it (with `baton dev` on 127.0.0.1:7707 and `baton` on PATH):

    python examples/mcp/session.py
    python examples/mcp/session.py --address http://127.0.0.1:7707 --baton target/debug/baton

It prints each step and exits 0 when the task is done, 1 otherwise. The
same tools answer over streamable HTTP at http://127.0.0.1:7707/mcp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextResourceContents


@asynccontextmanager
async def agent_session(baton: str, address: str, agent: str) -> AsyncIterator[ClientSession]:
    """An MCP session as `agent`: `baton mcp --agent AGENT` as a subprocess."""
    params = StdioServerParameters(command=baton, args=["mcp", "--address", address, "--agent", agent])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """Calls `tool`; its JSON answer, or exits on a refusal."""
    result: CallToolResult = await session.call_tool(tool, arguments)
    if result.is_error:
        text = result.content[0].text if result.content and result.content[0].type == "text" else ""
        raise SystemExit(f"{tool} refused: {text}")
    return result.structured_content


async def run(baton: str, address: str) -> bool:
    suffix = uuid.uuid4().hex[:8]
    draft, review = f"draft-{suffix}", f"review-{suffix}"

    async with agent_session(baton, address, "writer") as writer:
        tools = await writer.list_tools()
        print("tools:", ", ".join(t.name for t in tools.tools))
        task = await call(writer, "submit", stage=draft, payload={"topic": "release notes"}, idempotency_key=suffix)
        print(f"submitted {task['id']} into {draft}")
        leases = await call(writer, "claim", stages=[draft], wait_ms=5000)
        lease = leases["leases"][0]
        print(f"writer claimed it (epoch {lease['epoch']})")
        await call(
            writer, "handoff", task=task["id"], epoch=lease["epoch"], to_stage=review,
            note="first draft written", findings={"words": 412}, confidence=0.8,
        )
        print(f"writer handed it to {review}")

    async with agent_session(baton, address, "reviewer") as reviewer:
        leases = await call(reviewer, "claim", stages=[review], wait_ms=5000)
        lease = leases["leases"][0]
        print(f"reviewer claimed it (epoch {lease['epoch']})")
        history = await reviewer.read_resource(f"baton://tasks/{task['id']}/history")
        contents = history.contents[0]
        assert isinstance(contents, TextResourceContents)
        events = json.loads(contents.text)["events"]
        print("history so far:", ", ".join(e["kind"] for e in events))
        await call(reviewer, "complete", task=task["id"], epoch=lease["epoch"], result={"approved": True})
        done = await call(reviewer, "show", task=task["id"])
        print(f"task {done['id']} is {done['state']}")
        return bool(done["state"] == "done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="http://127.0.0.1:7707")
    parser.add_argument("--baton", default="baton", help="the baton binary")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(run(args.baton, args.address)) else 1)


if __name__ == "__main__":
    main()
