"""The A2A bridge with the real `a2a-sdk` client against a real `baton dev`:
a message becomes a task that workers carry through three stages to
completion (its result as an artifact, each handoff note in the history); a
repeated message id answers the same task; an escalation to a human stage
reads as input-required; cancel reads as canceled; a push config outside the
allow-list is refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

import baton
from a2a.client import ClientConfig, create_client
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import PushNotificationNotSupportedError

from .server import Server

WORKFLOW = """
name = "{name}"
entry = "{a}"

[stages.{a}]
accept_within = "{accept}"
reoffers = 0
escalate_to = "{desk}"
routes = ["{b}"]
next = "{b}"

[stages.{b}]
routes = ["{c}"]
next = "{c}"

[stages.{c}]

[stages.{desk}]
human = true

[a2a]
description = "Three stages."
push_url_prefixes = ["http://127.0.0.1:9/allowed/"]
"""


def apply(server: Server, tag: str, accept: str = "5m") -> tuple[str, list[str]]:
    name = f"a2a-{tag}"
    stages = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    source = WORKFLOW.format(name=name, a=stages[0], b=stages[1], c=stages[2], desk=f"desk-{tag}", accept=accept)
    baton.Client(server.address).apply_workflow(source)
    return name, stages


def message(text: str, message_id: str | None = None) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(message_id=message_id or uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
    )


async def send(url: str, request: SendMessageRequest) -> Task:
    client = await create_client(url, client_config=ClientConfig(streaming=False))
    async for event in client.send_message(request):
        assert event.HasField("task"), event
        return event.task
    raise AssertionError("no answer")


async def get(url: str, task_id: str) -> Task:
    client = await create_client(url, client_config=ClientConfig(streaming=False))
    return await client.get_task(GetTaskRequest(id=task_id))


def test_a_message_is_worked_through_three_stages_to_completion(dev: Server, tag: str) -> None:
    name, stages = apply(dev, tag)
    url = f"{dev.address}/a2a/{name}"
    card = httpx.get(f"{url}/.well-known/agent-card.json").json()
    assert card["name"] == name and {s["id"] for s in card["skills"]} >= set(stages)

    async def run() -> None:
        message_id = uuid.uuid4().hex
        task = await send(url, message("ship it", message_id))
        assert task.status.state == TaskState.TASK_STATE_SUBMITTED, task
        again = await send(url, message("ship it", message_id))
        assert again.id == task.id

        workers = baton.Client(dev.address, agent=f"worker-{tag}")
        for i, stage in enumerate(stages):
            (lease,) = workers.claim([stage], wait_ms=2000)
            assert lease.task == task.id
            working = await get(url, task.id)
            assert working.status.state == TaskState.TASK_STATE_WORKING, working
            last = i == len(stages) - 1
            workers.complete(
                lease.task, lease.epoch, note=f"done {stage}", findings={"i": i}, result={"shipped": True} if last else None
            )
        done = await get(url, task.id)
        assert done.status.state == TaskState.TASK_STATE_COMPLETED, done
        assert done.history[0].role == Role.ROLE_USER and done.history[0].parts[0].text == "ship it"
        notes = [m.parts[0].text for m in done.history if m.parts[0].text.startswith("done ")]
        assert notes == [f"done {s}" for s in stages], done
        versions = [m.metadata["version"] for m in done.history if m.role == Role.ROLE_AGENT]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        assert done.artifacts[0].parts[0].data.struct_value["shipped"] is True

    asyncio.run(run())
    listed = baton.Client(dev.address).list_tasks(stage=stages[-1], state="done").tasks
    assert len(listed) == 1, "the repeated message made no second task"


def test_escalation_is_input_required_and_cancel_is_canceled(dev: Server, tag: str) -> None:
    name, _ = apply(dev, tag, accept="1s")
    url = f"{dev.address}/a2a/{name}"

    async def run() -> None:
        task = await send(url, message("nobody will take this"))
        state: Any = None
        for _ in range(100):
            state = (await get(url, task.id)).status.state
            if state == TaskState.TASK_STATE_INPUT_REQUIRED:
                break
            await asyncio.sleep(0.1)
        assert state == TaskState.TASK_STATE_INPUT_REQUIRED

        other = await send(url, message("cancel me"))
        client = await create_client(url, client_config=ClientConfig(streaming=False))
        cancelled = await client.cancel_task(CancelTaskRequest(id=other.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED

        config = TaskPushNotificationConfig(task_id=other.id, url="http://example.com/hook")
        with pytest.raises(PushNotificationNotSupportedError):
            await client.create_task_push_notification_config(config)

    asyncio.run(run())


def sse_events(text: str) -> list[tuple[int, dict[str, Any]]]:
    """Server-sent events as (id, JSON data) pairs."""
    out = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
        ids = [int(line[3:].strip()) for line in lines if line.startswith("id:")]
        if data:
            out.append((ids[0] if ids else 0, json.loads(data)))
    return out


def subscribe(url: str, task_id: str, last: int | None) -> list[tuple[int, dict[str, Any]]]:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    body = {"jsonrpc": "2.0", "id": "s", "method": "SubscribeToTask", "params": {"id": task_id}}
    answer = httpx.post(url, json=body, headers=headers, timeout=30)
    assert answer.headers["content-type"].startswith("text/event-stream"), answer.text
    return sse_events(answer.text)


def subscribe_open(url: str, task_id: str) -> list[tuple[int, dict[str, Any]]]:
    """The first event of a subscription to a task still in flight."""
    body = {"jsonrpc": "2.0", "id": "s", "method": "SubscribeToTask", "params": {"id": task_id}}
    with httpx.stream("POST", url, json=body, timeout=30) as answer:
        text = ""
        for chunk in answer.iter_text():
            text += chunk
            if "\n\n" in text:
                return sse_events(text.split("\n\n")[0] + "\n\n")
    raise AssertionError(text)


def test_subscribe_after_a_sigkill_and_restart_misses_and_repeats_nothing(
    binary: str, tmp_path_factory: pytest.TempPathFactory, tag: str
) -> None:
    server = Server(binary, "dev", tmp_path_factory.mktemp("a2a-restart"))
    server.start()
    try:
        name, stages = apply(server, tag)
        url = f"{server.address}/a2a/{name}"
        task = asyncio.run(send(url, message("survive")))
        workers = baton.Client(server.address, agent=f"worker-{tag}")
        (lease,) = workers.claim([stages[0]], wait_ms=2000)
        workers.complete(lease.task, lease.epoch, note="first")
        # What the client saw before the crash: the subscription's snapshot.
        ((snapshot_id, snapshot),) = subscribe_open(url, task.id)
        history = snapshot["result"]["task"]["history"]
        seen = [int(m["metadata"]["version"]) for m in history if m["role"] == "ROLE_AGENT"]
        assert seen and snapshot_id == seen[-1], snapshot
        server.kill()
        server.start()
        workers = baton.Client(server.address, agent=f"worker-{tag}")
        for stage in stages[1:]:
            (lease,) = workers.claim([stage], wait_ms=2000)
            workers.complete(lease.task, lease.epoch, note=f"after {stage}", result={"ok": True})
        resumed = subscribe(url, task.id, seen[-1])
        versions = seen + [v for v, _ in resumed]
        full = asyncio.run(get(url, task.id))
        every = [int(m.metadata["version"]) for m in full.history if m.role == Role.ROLE_AGENT]
        assert versions == every, (versions, every)
    finally:
        server.stop()
