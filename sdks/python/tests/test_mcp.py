"""Goal: any MCP client reaches Baton's tools, with the real Python `mcp`
client package, over both transports: stdio (`baton mcp` as a subprocess,
as Claude Desktop starts it) and streamable HTTP (`/mcp` on the server).
It lists the tools and drives a task from submit to done; an agent's token
neither sees nor can call operator tools; a bad argument is a JSON-RPC
invalid-params error naming the field (never an HTTP 5xx); a refusal is a
tool error carrying Baton's code; the MCP example session runs.

Method (each test runs its coroutine with `asyncio.run`): a real `baton dev` (auth off: `baton mcp --agent NAME` names the
agent) and a real `baton serve` (auth on: principals and tokens made with
the SDK's admin calls; each MCP session carries one token)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent, TextResourceContents

import baton

from .server import Server

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mcp" / "session.py"

#: The JSON-RPC code for invalid params.
INVALID_PARAMS = -32602

#: Every tool, as an admin (or anyone, with auth off) sees them.
ALL_TOOLS = {
    "submit", "claim", "heartbeat", "handoff", "complete", "fail", "escalate", "release", "spawn",
    "show", "history", "lineage", "cancel", "inbox_list", "inbox_claim", "inbox_resolve", "stuck", "stats",
}
#: An agent's: the worker tools and the readers.
AGENT_TOOLS = {"claim", "heartbeat", "handoff", "complete", "fail", "escalate", "release", "spawn", "show", "history", "lineage"}
OPERATOR_ONLY = {"cancel", "inbox_list", "inbox_claim", "inbox_resolve", "stuck", "stats"}


@asynccontextmanager
async def stdio_session(binary: str, address: str, *, agent: str | None = None, token: str | None = None) -> AsyncIterator[ClientSession]:
    """`baton mcp` as a subprocess, with an initialized session over it."""
    args = ["mcp", "--address", address]
    if agent is not None:
        args += ["--agent", agent]
    env = {"BATON_TOKEN": token} if token is not None else {}
    params = StdioServerParameters(command=binary, args=args, env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(address: str, token: str) -> AsyncIterator[ClientSession]:
    """A session over streamable HTTP to `/mcp`, with a bearer token."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with streamable_http_client(f"{address}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def find_mcp_error(error: BaseException) -> MCPError | None:
    """The `MCPError` in `error`, however deep in exception groups."""
    if isinstance(error, MCPError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = find_mcp_error(inner)
            if found is not None:
                return found
    return None


async def handshake_error(session: AbstractAsyncContextManager[ClientSession]) -> MCPError:
    """The JSON-RPC error that fails a session's handshake."""
    try:
        async with session:
            pass
    except BaseException as error:  # the anyio task groups wrap it
        found = find_mcp_error(error)
        if found is None:
            raise
        return found
    pytest.fail("the handshake must fail")


async def tool_names(session: ClientSession) -> set[str]:
    return {tool.name for tool in (await session.list_tools()).tools}


async def ok(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """A tool call that must succeed: its JSON answer."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, (tool, result.content)
    assert result.structured_content is not None
    return result.structured_content


async def refused(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call Baton refuses: the refusal, as the tool error's text says it."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, (tool, result.content)
    block = result.content[0]
    assert isinstance(block, TextContent)
    refusal: dict[str, Any] = json.loads(block.text)
    return refusal


async def invalid_field(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool call refused as invalid params: the field it names."""
    with pytest.raises(MCPError) as caught:
        await session.call_tool(tool, arguments)
    error = caught.value.error
    assert error.code == INVALID_PARAMS, error
    assert isinstance(error.data, dict), error
    field: str = error.data["field"]
    assert field in error.message, error
    return field


async def drive_to_done(submitter: ClientSession, worker: ClientSession, first: str, second: str) -> str:
    """Submit into `first`, claim, hand off to `second`, claim, complete:
    the task's id, checked done with each step in its history."""
    task = await ok(submitter, "submit", stage=first, payload={"doc": 1}, idempotency_key=f"k-{first}")
    (lease,) = (await ok(worker, "claim", stages=[first], wait_ms=5000))["leases"]
    assert lease["task"] == task["id"]
    await ok(worker, "heartbeat", task=task["id"], epoch=lease["epoch"], note="reading")
    stale = await refused(worker, "handoff", task=task["id"], epoch=lease["epoch"] - 1, to_stage=second)
    assert stale["code"] == "lease_lost", stale
    await ok(worker, "handoff", task=task["id"], epoch=lease["epoch"], to_stage=second, note="half", confidence=0.7)
    (lease,) = (await ok(worker, "claim", stages=[second], wait_ms=5000))["leases"]
    await ok(worker, "complete", task=task["id"], epoch=lease["epoch"], result={"ok": True})
    assert (await ok(submitter, "show", task=task["id"]))["state"] == "done"
    history = await worker.read_resource(f"baton://tasks/{task['id']}/history")
    contents = history.contents[0]
    assert isinstance(contents, TextResourceContents)
    kinds = [e["kind"] for e in json.loads(contents.text)["events"]]
    assert kinds[0] == "submitted" and "handed_off" in kinds and kinds[-1] == "completed", kinds
    task_id: str = task["id"]
    return task_id


def test_stdio_against_baton_dev(binary: str, dev: Server, tag: str) -> None:
    asyncio.run(_stdio_against_baton_dev(binary, dev, tag))


async def _stdio_against_baton_dev(binary: str, dev: Server, tag: str) -> None:
    async with stdio_session(binary, dev.address, agent=f"writer-{tag}") as session:
        assert await tool_names(session) == ALL_TOOLS
        await drive_to_done(session, session, f"draft-{tag}", f"review-{tag}")
        # The agent the session names is the holder Baton records.
        task = await ok(session, "submit", stage=f"solo-{tag}", payload=1)
        (lease,) = (await ok(session, "claim", stages=[f"solo-{tag}"]))["leases"]
        shown = await ok(session, "show", task=task["id"])
        assert f"writer-{tag}" in json.dumps(shown["custodian"]), shown
        # Bad arguments: invalid params naming the field; nothing changes.
        assert await invalid_field(session, "handoff", task=task["id"], to_stage="x") == "epoch"
        assert await invalid_field(session, "handoff", task=task["id"], epoch="one", to_stage="x") == "epoch"
        assert await invalid_field(session, "show", task="not-a-task-id") == "task"
        assert await invalid_field(session, "claim", stages=[f"solo-{tag}"], colour="red") == "colour"
        assert await invalid_field(session, "submit", stage="", payload=1) == "stage"
        assert (await ok(session, "show", task=task["id"]))["revision"] == shown["revision"]
        await ok(session, "release", task=task["id"], epoch=lease["epoch"])


def test_stdio_names_an_unreachable_server(binary: str, tag: str) -> None:
    asyncio.run(_stdio_names_an_unreachable_server(binary, tag))


async def _stdio_names_an_unreachable_server(binary: str, tag: str) -> None:
    from .server import free_port

    error = await handshake_error(stdio_session(binary, f"http://127.0.0.1:{free_port()}", agent=tag))
    assert "cannot reach Baton" in error.error.message, error.error


@pytest.fixture
def tokens(serve: Server, tag: str) -> dict[str, str]:
    """An agent (stages a, b; route a -> b), a submitter and an operator, each with a token."""
    assert serve.admin_token is not None
    admin = baton.Client(serve.address, token=serve.admin_token)
    first, second = f"a-{tag}", f"b-{tag}"
    admin.add_principal(f"agent-{tag}", "agent", stages=[first, second], routes=[(first, second)])
    admin.add_principal(f"sub-{tag}", "submitter")
    admin.add_principal(f"ops-{tag}", "operator")
    made = {role: admin.create_token(f"{role}-{tag}").token for role in ("agent", "sub", "ops")}
    made["admin"] = serve.admin_token
    admin.close()
    return made


def test_http_with_auth_follows_the_token_role(serve: Server, tokens: dict[str, str], tag: str) -> None:
    asyncio.run(_http_with_auth_follows_the_token_role(serve, tokens, tag))


async def _http_with_auth_follows_the_token_role(serve: Server, tokens: dict[str, str], tag: str) -> None:
    async with http_session(serve.address, tokens["agent"]) as agent, http_session(serve.address, tokens["sub"]) as sub:
        assert await tool_names(agent) == AGENT_TOOLS
        assert await tool_names(sub) == {"submit", "show", "history", "lineage", "cancel"}
        await drive_to_done(sub, agent, f"a-{tag}", f"b-{tag}")
        # Operator tools: not listed, and not callable either.
        for tool in OPERATOR_ONLY:
            assert await invalid_field(agent, tool) == "name"
        # Off the agent's routes: a tool error with Baton's code.
        task = await ok(sub, "submit", stage=f"a-{tag}", payload=2)
        (lease,) = (await ok(agent, "claim", stages=[f"a-{tag}"]))["leases"]
        off = await refused(agent, "handoff", task=task["id"], epoch=lease["epoch"], to_stage="elsewhere")
        assert off["code"] == "route_not_allowed" and off["next"], off
        assert await invalid_field(agent, "complete", task=task["id"], epoch=lease["epoch"], confidence=2) == "confidence"
        await ok(agent, "escalate", task=task["id"], epoch=lease["epoch"], error="needs a person")
    async with http_session(serve.address, tokens["ops"]) as ops:
        assert await tool_names(ops) == ALL_TOOLS
        assert "stuck" in await ok(ops, "stuck")


def test_stdio_with_a_token_follows_its_role(binary: str, serve: Server, tokens: dict[str, str]) -> None:
    asyncio.run(_stdio_with_a_token_follows_its_role(binary, serve, tokens))


async def _stdio_with_a_token_follows_its_role(binary: str, serve: Server, tokens: dict[str, str]) -> None:
    async with stdio_session(binary, serve.address, token=tokens["agent"]) as agent:
        assert await tool_names(agent) == AGENT_TOOLS
        assert await invalid_field(agent, "stats") == "name"
    error = await handshake_error(stdio_session(binary, serve.address, token="baton_0000000000000000_" + "0" * 64))
    assert "401 unauthenticated" in error.error.message, error.error


def test_mcp_without_a_token_is_401(serve: Server) -> None:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    answer = httpx2.post(
        f"{serve.address}/mcp", json=message, headers={"Accept": "application/json, text/event-stream"}, timeout=10
    )
    assert answer.status_code == 401 and answer.json()["code"] == "unauthenticated", answer.text


def test_the_mcp_example_takes_a_task_through_two_stages(binary: str, dev: Server) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--address", dev.address, "--baton", binary],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reviewer claimed it" in done.stdout and " is done" in done.stdout, done.stdout
