"""Goal: every API route works through both clients and answers the models.

Method: a tour of every route against a real `baton dev` (tasks, holder
calls with claim-next, spawn, abort, workflows, the inbox, operations) and a
real `baton serve` (principals, tokens, metrics with a token), run once with
the sync `Client` and once with the `AsyncClient`. The routes called are
counted against the OpenAPI document, so a route left out fails the test."""

from __future__ import annotations

import time
from typing import Any

import pytest

import baton
from baton import models as m

from .server import Server

WORKFLOW = """
name = "{name}"
entry = "{a}"

[stages.{a}]
routes = ["{b}"]
next = "{b}"
compensate = "{undo}"

[stages.{b}]

[stages.{undo}]
"""


class Recorder:
    """Wraps a client and notes the methods called."""

    def __init__(self, client: Any, seen: set[str]) -> None:
        self._client = client
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        self._seen.add(name)
        return getattr(self._client, name)


def test_every_route_on_dev(dev: Server, make_client: Any, tag: str) -> None:
    seen: set[str] = set()
    c = Recorder(make_client(dev.address, agent="tour-bot"), seen)
    a, b, kids, undo = f"a-{tag}", f"b-{tag}", f"kids-{tag}", f"undo-{tag}"

    assert c.health().status == "ok"
    assert c.ready().status == "ok"
    assert "POST /v1/claims" in c.index().routes
    assert "baton_" in c.metrics()

    # Submit, idempotently.
    first = c.submit({"patient": "p-1"}, stage=a, idempotency_key=f"p-1-{tag}", labels={"ward": "3"}, priority=2)
    again = c.submit({"patient": "p-1"}, stage=a, idempotency_key=f"p-1-{tag}", labels={"ward": "3"}, priority=2)
    assert first.created and not again.created and again.task.id == first.task.id
    task = c.get_task(first.task.id)
    assert task.state == "waiting" and task.labels == {"ward": "3"} and task.priority == 2

    # Claim (long poll), heartbeat, hand off with claim-next.
    second = c.submit({"patient": "p-2"}, stage=a).task
    (lease,) = c.claim([a], max=1, wait_ms=2000, lease_ms=10_000)
    assert lease.task == first.task.id and lease.payload == {"patient": "p-1"}
    beat = c.heartbeat(lease.task, lease.epoch, lease_ms=10_000, note="working")
    assert beat.task.state == "held"
    next_ = m.ClaimNext(stages=[a], max=1)
    handed = c.handoff(
        lease.task, lease.epoch, b, note="vitals taken", findings={"bp": 120}, confidence=0.9, claim_next=next_
    )
    assert handed.handoff_id and handed.task.stage == b
    assert [n.task for n in handed.next] == [second.id]
    outcome = c.handoff_outcome(handed.handoff_id)
    assert outcome.outcome.status == "pending"

    # Release and fail the second; complete the first at b.
    (nxt,) = handed.next
    released = c.release(nxt.task, nxt.epoch, note="not now")
    assert released.task.state == "waiting"
    (lease_b,) = c.claim([b], wait_ms=2000)
    accepted = c.handoff_outcome(handed.handoff_id, wait_ms=1000).outcome
    assert isinstance(accepted, m.HandoffOutcomeAccepted) and accepted.by == "tour-bot"
    done = c.complete(lease_b.task, lease_b.epoch, result={"ok": True}, note="seen", findings=[1], confidence=1.0)
    assert done.task.state == "done"
    (again_lease,) = c.claim([a], wait_ms=2000)
    failed = c.fail(again_lease.task, again_lease.epoch, "no such patient", retryable=False)
    assert failed.task.stage == "inbox"  # escalated to the human inbox

    # History and lineage.
    history = c.history(first.task.id)
    kinds = [e.kind for e in history.events]
    assert kinds[0] == "submitted" and "handed_off" in kinds and kinds[-1] == "completed"
    assert history.events[-1].from_ is not None and history.events[-1].from_.state == "held"
    lineage = c.lineage(first.task.id)
    assert c.verify(first.task.id).ok
    assert [s.stage for s in lineage.steps] == [a, b] and lineage.state == "done"

    # The inbox: an operator claims the escalated task and resolves it.
    page = c.inbox(stage="inbox", limit=100)
    assert second.id in [item.task.id for item in page.items]
    held = c.inbox_claim(second.id, lease_ms=10_000)
    resolved = c.inbox_resolve(second.id, held.epoch, "handoff", to_stage=a, note="retry with the right id")
    assert resolved.task.stage == a and resolved.task.state == "waiting"

    # Spawn children and join them.
    (parent,) = c.claim([a], wait_ms=2000)
    children = [m.ChildSpec(stage=kids, payload={"i": i}) for i in range(3)]
    spawned = c.spawn(parent.task, parent.epoch, children, within_ms=60_000, mode="all")
    assert len(spawned.children) == 3 and spawned.task.state == "blocked"
    kids_page = c.list_tasks(parent=parent.task)
    assert {t.id for t in kids_page.tasks} == set(spawned.children)

    # A message on a live task's history changes nothing else; then cancel.
    doomed = c.submit({"n": 0}, stage=f"doomed-{tag}").task
    noted = c.comment(doomed.id, "is this still needed?", findings={"asked": True})
    assert noted.state == "waiting" and noted.revision == doomed.revision + 1
    assert c.history(doomed.id).events[-1].kind == "commented"
    assert c.cancel(doomed.id, "submitted by mistake").state == "cancelled"

    # List with a cursor, page by page.
    for i in range(5):
        c.submit({"i": i}, stage=f"list-{tag}")
    page1 = c.list_tasks(stage=f"list-{tag}", limit=2)
    assert len(page1.tasks) == 2 and page1.next_cursor
    page2 = c.list_tasks(stage=f"list-{tag}", limit=2, cursor=page1.next_cursor)
    assert not {t.id for t in page1.tasks} & {t.id for t in page2.tasks}
    assert len(list(c.iter_tasks(stage=f"list-{tag}", limit=2))) == 5
    assert all(t.state == "waiting" for t in c.list_tasks(stage=f"list-{tag}", state="waiting").tasks)

    # Workflows, and an abort that compensates.
    name = f"wf-{tag}"
    applied = c.apply_workflow(WORKFLOW.format(name=name, a=f"w{a}", b=f"w{b}", undo=undo))
    assert applied.created and applied.workflow.version == 1
    assert name in [w.name for w in c.list_workflows()]
    assert c.get_workflow(name, version=1).entry == f"w{a}"
    wtask = c.submit({"order": 1}, workflow=name).task
    (wl,) = c.claim([f"w{a}"], wait_ms=2000)
    assert c.complete(wl.task, wl.epoch).task.stage == f"w{b}"
    (wl2,) = c.claim([f"w{b}"], wait_ms=2000)
    aborted = c.abort(wtask.id, wl2.epoch, "order withdrawn")
    assert aborted.task.state == "blocked"  # until its compensation is done
    (compensation,) = c.claim([undo], wait_ms=2000)
    c.complete(compensation.task, compensation.epoch, note="undone")
    deadline = time.monotonic() + 10
    while c.get_task(wtask.id).state != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.get_task(wtask.id).state == "cancelled"

    # Operations.
    stuck = c.stuck(grace_ms=0)
    assert isinstance(stuck.stuck, list)
    stats = c.stats(window="5m")
    assert any(s.stage == a for s in stats.stages)
    assert sum(p.arrivals for p in c.stats_series(stage=a, window="15m").points) >= 1
    assert c.whoami().authentication is False
    assert isinstance(c.alerts(all=True, limit=10).anomalies, list)
    with pytest.raises(baton.NotFound):
        c.ack_alert(987_654)
    assert c.deliveries(after=0, limit=10).deliveries == []

    dev_routes = set(baton.OPERATIONS.values()) - ADMIN_ROUTES
    assert dev_routes <= seen, f"routes not called: {sorted(dev_routes - seen)}"


ADMIN_ROUTES = {"add_principal", "list_principals", "revoke_principal", "create_token", "list_tokens", "revoke_token"}


def test_admin_routes_on_serve(serve: Server, make_client: Any, tag: str) -> None:
    seen: set[str] = set()
    admin = Recorder(make_client(serve.address, token=serve.admin_token), seen)
    name, stage = f"intake-{tag}", f"intake-{tag}"
    principal = admin.add_principal(name, "agent", stages=[stage], routes=[(stage, f"triage-{tag}")])
    assert principal.role == "agent" and principal.routes[0].from_ == stage
    assert name in [p.name for p in admin.list_principals()]
    created = admin.create_token(name)
    assert created.token.startswith("baton_") and created.principal == name
    assert created.id in [t.id for t in admin.list_tokens()]

    # The agent works with its token (its name is its agent id).
    bot = make_client(serve.address, token=created.token)
    task = admin.submit({"n": 1}, stage=stage).task
    (lease,) = bot.claim([stage], wait_ms=2000)
    assert lease.task == task.id
    handed = bot.handoff(lease.task, lease.epoch, f"triage-{tag}", note="to triage")
    assert handed.task.stage == f"triage-{tag}"
    admin.submit({"n": 2}, stage=stage)
    (other,) = bot.claim([stage], wait_ms=2000)
    with pytest.raises(baton.RouteNotAllowed):
        bot.handoff(other.task, other.epoch, f"billing-{tag}")
    assert "baton_" in admin.metrics()

    # Revoking a token, then the principal, locks the agent out.
    assert admin.revoke_token(created.id).revoked_at is not None
    with pytest.raises(baton.Unauthenticated):
        bot.list_tasks()
    assert admin.revoke_principal(name).revoked_at is not None
    assert ADMIN_ROUTES <= seen
