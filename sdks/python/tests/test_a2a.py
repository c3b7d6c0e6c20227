"""The A2A bridge with the real `a2a-sdk` client against a real `baton dev`
and a real `baton serve`: a message becomes a task that workers carry through
three stages to completion (its result as an artifact, each handoff note in
the history); a repeated message id answers the same task; an escalation to a
human stage reads as input-required, and a reply to it joins the history and
the inbox without resolving it; cancel reads as canceled; a push config
outside the allow-list is refused. With auth on, a submitter reaches only the
tasks it submitted (on A2A and on `/v1`), and message ids are per principal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import subprocess
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

import baton
from a2a.client import Client, ClientConfig, create_client
from a2a.types import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import PushNotificationNotSupportedError, TaskNotFoundError, UnsupportedOperationError

from .server import Server, free_port

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
push_url_prefixes = ["{push}"]
"""


def apply(
    server: Server, tag: str, accept: str = "5m", token: str | None = None, push: str = "http://127.0.0.1:9/allowed/"
) -> tuple[str, list[str]]:
    name = f"a2a-{tag}"
    stages = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    source = WORKFLOW.format(
        name=name, a=stages[0], b=stages[1], c=stages[2], desk=f"desk-{tag}", accept=accept, push=push
    )
    baton.Client(server.address, token=token).apply_workflow(source)
    return name, stages


def message(text: str, message_id: str | None = None, task_id: str | None = None) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            message_id=message_id or uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)], task_id=task_id
        )
    )


async def client_for(url: str, token: str | None = None) -> Client:
    """An `a2a-sdk` client; with `token`, every call (the card's too) carries it."""
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) if token else None
    return await create_client(url, client_config=ClientConfig(streaming=False, httpx_client=http))


async def send(url: str, request: SendMessageRequest, token: str | None = None) -> Task:
    client = await client_for(url, token)
    async for event in client.send_message(request):
        assert event.HasField("task"), event
        return event.task
    raise AssertionError("no answer")


async def get(url: str, task_id: str, token: str | None = None) -> Task:
    client = await client_for(url, token)
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

        # A reply to the input-required task joins its history (as the
        # user's) and the inbox, and resolves nothing; a repeat adds nothing.
        reply = message("use the blue boxes", task_id=task.id)
        replied = await send(url, reply)
        assert replied.status.state == TaskState.TASK_STATE_INPUT_REQUIRED, replied
        last = replied.history[-1]
        assert last.role == Role.ROLE_USER and last.parts[0].text == "use the blue boxes", replied
        again = await send(url, reply)
        assert len(again.history) == len(replied.history)
        stored = baton.Client(dev.address).get_task(task.id)
        assert stored.state == "waiting" and stored.stage == f"desk-{tag}"
        items = baton.Client(dev.address).inbox(stage=f"desk-{tag}").items
        (item,) = [i for i in items if i.task.id == task.id]
        assert [(m.by, m.note) for m in item.messages] == [("principal:anonymous", "use the blue boxes")]
        # A person resolves it through the inbox: the A2A task completes,
        # with the resolution's note as its last update.
        people = baton.Client(dev.address, agent=f"person-{tag}")
        held = people.inbox_claim(task.id, lease_ms=10_000)
        people.inbox_resolve(task.id, held.epoch, "complete", note="packed in blue boxes")
        done = await get(url, task.id)
        assert done.status.state == TaskState.TASK_STATE_COMPLETED, done
        # A task that is not waiting for input refuses a message.
        busy = await send(url, message("in the queue"))
        with pytest.raises(UnsupportedOperationError):
            await send(url, message("hurry", task_id=busy.id))

    asyncio.run(run())


def cli(server: Server, token: str, *args: str) -> Any:
    """Runs the `baton` CLI against `server` with `token`; its JSON answer."""
    done = subprocess.run(
        [server.binary, *args, "--address", server.address, "--token", token, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def submitter(server: Server, name: str) -> str:
    """A new submitter principal made with the CLI, as the docs show; its token."""
    assert server.admin_token
    cli(server, server.admin_token, "principal", "add", name, "--role", "submitter")
    token: str = cli(server, server.admin_token, "token", "create", "--principal", name)["token"]
    return token


def rpc(url: str, token: str, method: str, params: dict[str, Any]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": "r", "method": method, "params": params}
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_submitter_reaches_only_its_own_tasks_and_message_ids_are_its_own(serve: Server, tag: str) -> None:
    assert serve.admin_token
    name, stages = apply(serve, tag, token=serve.admin_token)
    url = f"{serve.address}/a2a/{name}"
    alice, bob = submitter(serve, f"alice-{tag}"), submitter(serve, f"bob-{tag}")

    async def run() -> None:
        shared = uuid.uuid4().hex
        mine = await send(url, message("alice's order", shared), alice)
        assert (await send(url, message("alice's order", shared), alice)).id == mine.id
        theirs = await send(url, message("bob's order", shared), bob)
        assert theirs.id != mine.id, "the same message id from two principals: two tasks"
        assert theirs.history[0].message_id == shared and mine.history[0].message_id == shared

        bob_a2a = await client_for(url, bob)
        with pytest.raises(TaskNotFoundError):
            await bob_a2a.get_task(GetTaskRequest(id=mine.id))
        with pytest.raises(TaskNotFoundError):
            await bob_a2a.cancel_task(CancelTaskRequest(id=mine.id))
        with pytest.raises(TaskNotFoundError):
            await send(url, message("let me in", task_id=mine.id), bob)
        # The stream answers a plain JSON-RPC error before it opens.
        streamed = rpc(url, bob, "SubscribeToTask", {"id": mine.id})
        assert streamed.json()["error"]["code"] == -32001, streamed.text

        # /v1: 404 on every read and on cancel; the listing leaves it out.
        as_bob = baton.Client(serve.address, token=bob)
        for call in (
            lambda: as_bob.get_task(mine.id),
            lambda: as_bob.history(mine.id),
            lambda: as_bob.lineage(mine.id),
            lambda: as_bob.cancel(mine.id, "not mine"),
            lambda: as_bob.comment(mine.id, "not mine"),
        ):
            with pytest.raises(baton.NotFound):
                call()
        assert [t.id for t in as_bob.iter_tasks(stage=stages[0])] == [theirs.id]

        # Alice still reads, streams and cancels her own.
        assert (await get(url, mine.id, alice)).status.state == TaskState.TASK_STATE_SUBMITTED
        ((_, snapshot),) = subscribe_open(url, mine.id, alice)
        assert snapshot["result"]["task"]["id"] == mine.id, snapshot
        alice_a2a = await client_for(url, alice)
        cancelled = await alice_a2a.cancel_task(CancelTaskRequest(id=mine.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert baton.Client(serve.address, token=serve.admin_token).get_task(theirs.id).state == "waiting"

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


def subscribe_open(url: str, task_id: str, token: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The first event of a subscription to a task still in flight."""
    body = {"jsonrpc": "2.0", "id": "s", "method": "SubscribeToTask", "params": {"id": task_id}}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as answer:
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


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback that keeps every request it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_push_inside_the_allow_list_delivers_signed_updates(
    binary: str, tmp_path_factory: pytest.TempPathFactory, tag: str
) -> None:
    # A server of its own: its delivery records are this test's only.
    dev = Server(binary, "dev", tmp_path_factory.mktemp("a2a-push"))
    dev.start()
    try:
        push_round_trip(dev, tag)
    finally:
        dev.stop()


def push_round_trip(dev: Server, tag: str) -> None:
    receiver = Receiver()
    allowed = f"http://127.0.0.1:{receiver.server_address[1]}/allowed/"
    name, stages = apply(dev, tag, push=allowed)
    url = f"{dev.address}/a2a/{name}"
    card = httpx.get(f"{url}/.well-known/agent-card.json").json()
    assert card["capabilities"]["pushNotifications"] is True
    token = f"push-token-{tag}-{uuid.uuid4().hex}"

    async def run() -> str:
        task = await send(url, message("tell me when it ships"))
        client = await client_for(url)
        made = await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=task.id, id="p1", url=f"{allowed}{tag}", token=token)
        )
        assert (made.id, made.url) == ("p1", f"{allowed}{tag}")
        got = await client.get_task_push_notification_config(GetTaskPushNotificationConfigRequest(task_id=task.id, id="p1"))
        assert got.url == made.url
        listed = await client.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=task.id))
        assert [c.id for c in listed.configs] == ["p1"]
        with pytest.raises(PushNotificationNotSupportedError):
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, url="http://127.0.0.1:9/elsewhere/", token=token)
            )
        return task.id

    task_id = asyncio.run(run())
    workers = baton.Client(dev.address, agent=f"worker-{tag}")
    for i, stage in enumerate(stages):
        (lease,) = workers.claim([stage], wait_ms=2000)
        last = i == len(stages) - 1
        workers.complete(lease.task, lease.epoch, note=f"done {stage}", result={"ok": True} if last else None)

    def texts() -> list[str]:
        updates = [json.loads(body)["statusUpdate"] for _, _, body in list(receiver.got)]
        return [u["status"]["message"]["parts"][0]["text"] for u in updates]

    # Updates arrive in order; the last is the completion's (its note).
    deadline = time.monotonic() + 20
    while f"done {stages[-1]}" not in texts() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.got, "no notification arrived"
    notes = []
    for path, headers, body in receiver.got:
        assert path == f"/allowed/{tag}"
        signed = f"{headers['baton-timestamp']}.".encode() + body
        expected = "v1=" + hmac.new(token.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["baton-signature"], expected), headers
        assert headers["x-a2a-notification-token"] == token
        update = json.loads(body)["statusUpdate"]
        assert update["taskId"] == task_id and update["status"]["state"] in ("TASK_STATE_WORKING", "TASK_STATE_COMPLETED")
        notes.append(update["status"]["message"]["parts"][0]["text"])
    assert [n for n in notes if n.startswith("done ")] == [f"done {s}" for s in stages], notes
    ids = [int(h["baton-webhook-id"]) for _, h, _ in receiver.got]
    assert ids == sorted(set(ids)), "each update once, in order"
    deliveries = baton.Client(dev.address).deliveries(limit=500).deliveries
    assert sorted(d.notice for d in deliveries if d.status == "delivered") == ids, deliveries

    async def delete() -> None:
        client = await client_for(url)
        await client.delete_task_push_notification_config(DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="p1"))
        listed = await client.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=task_id))
        assert list(listed.configs) == []

    asyncio.run(delete())
    receiver.shutdown()
