"""Goal: every error code reaches the caller as its own exception class with
the facts of its `details`, and `Retry-After` is honoured within bounds.

Method: codes a real server can be made to produce here are provoked on a
real `baton dev` or `baton serve` (sync and async clients alike); the rest
(`request_in_progress`, which the SQLite store never sends, `internal`,
`unavailable`, `request_timeout`, `storage_full`) are decoded from the
example bodies the OpenAPI document records for every code."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

import baton
from baton import errors

from .server import Server

OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "api" / "openapi.json"
STATUS = {
    "invalid_request": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_holder": 403,
    "not_found": 404,
    "task_archived": 410,
    "method_not_allowed": 405,
    "lease_lost": 409,
    "invalid_transition": 409,
    "request_in_progress": 409,
    "body_too_large": 413,
    "idempotency_conflict": 422,
    "route_not_allowed": 422,
    "invalid_workflow": 422,
    "limit_exceeded": 422,
    "rate_limited": 429,
    "too_many_leases": 429,
    "internal": 500,
    "unavailable": 503,
    "request_timeout": 503,
    "storage_full": 507,
}

WORKFLOW = """
name = "{name}"
entry = "{a}"

[stages.{a}]
routes = ["{b}"]
next = "{b}"

[stages.{b}]
"""


def recorded() -> dict[str, Any]:
    examples: dict[str, Any] = json.loads(OPENAPI.read_text())["components"]["examples"]
    return {name: example["value"] for name, example in examples.items()}


@pytest.mark.parametrize("code", sorted(STATUS))
def test_recorded_bodies_decode_to_their_classes(code: str) -> None:
    body = recorded()[code]
    error = baton.error_from_body(STATUS[code], body)
    assert type(error) is errors.ERRORS_BY_CODE[code]
    assert error.code == code and error.status == STATUS[code]
    assert error.message == body["message"]
    if code == "lease_lost":
        assert isinstance(error, baton.LeaseLost)
        assert error.current_epoch == body["details"]["current_epoch"]
        assert error.state == body["details"]["state"]
    if code in ("limit_exceeded", "too_many_leases", "rate_limited", "body_too_large", "request_timeout"):
        assert getattr(error, "limit") == body["details"]["limit"]
        assert getattr(error, "max") == body["details"]["max"]
    if code == "rate_limited":
        assert isinstance(error, baton.RateLimited)
        assert error.retry_after_ms == body["details"]["retry_after_ms"]
    assert error.retryable == (code in ("rate_limited", "request_in_progress", "unavailable", "request_timeout"))


def test_an_unknown_code_is_a_plain_api_error() -> None:
    error = baton.error_from_body(418, {"code": "teapot", "message": "short and stout", "details": {}})
    assert type(error) is baton.ApiError and error.code == "teapot"
    with pytest.raises(baton.ProtocolError):
        baton.error_from_body(500, "not an error body")


def submit_and_claim(client: Any, stage: str) -> Any:
    client.submit({"n": 1}, stage=stage)
    (lease,) = client.claim([stage], max=1, wait_ms=2000)
    return lease


def test_codes_provoked_on_baton_dev(dev: Server, make_client: Any, tag: str) -> None:
    a, b = f"a-{tag}", f"b-{tag}"
    c = make_client(dev.address, agent="bot-1")
    other = c.with_agent("bot-2")

    with pytest.raises(baton.NotFound):
        c.get_task("0190a0c4-5e2b-7c3d-9f00-2a6b8c1d4e5f")
    with pytest.raises(baton.InvalidRequest) as bad:
        c.get_task("not-a-uuid")
    assert bad.value.status == 400

    lease = submit_and_claim(c, a)
    # Another agent with the current epoch: not the holder.
    with pytest.raises(baton.NotHolder):
        other.complete(lease.task, lease.epoch)
    # A stale epoch: lease_lost with the current epoch and state.
    with pytest.raises(baton.LeaseLost) as lost:
        c.complete(lease.task, lease.epoch - 1)
    assert lost.value.current_epoch == lease.epoch and lost.value.state == "held"
    # The same Idempotency-Key with another request.
    c.heartbeat(lease.task, lease.epoch, request_key=f"k-{tag}")
    with pytest.raises(baton.IdempotencyConflict):
        c.heartbeat(lease.task, lease.epoch, note="other", request_key=f"k-{tag}")
    c.complete(lease.task, lease.epoch)
    # A finished task cannot be cancelled.
    with pytest.raises(baton.InvalidTransition):
        c.cancel(lease.task, "too late")

    with pytest.raises(baton.LimitExceeded) as limit:
        c.claim([a], max=1, lease_ms=5)
    assert limit.value.limit == "lease_ttl_ms_min"
    with pytest.raises(baton.LimitExceeded) as limit:
        c.claim([a], max=1000)
    assert limit.value.limit == "claim_max" and limit.value.max == 100
    # The server answers an oversized Content-Length with 413 at once and,
    # before it closes, reads and drops the rest of the body, so a client
    # that sends it all still reads the answer (no connection reset).
    before = len(c.list_tasks(stage=a, limit=500).tasks)
    with pytest.raises(baton.BodyTooLarge) as large:
        c.submit("x" * (1024 * 1024 + 10), stage=a)
    assert large.value.limit == "body_bytes_max" and large.value.status == 413
    assert len(c.list_tasks(stage=a, limit=500).tasks) == before  # refused: nothing changed
    with pytest.raises(baton.IdempotencyConflict):
        c.submit({"n": 1}, stage=a, idempotency_key=f"i-{tag}")
        c.submit({"n": 2}, stage=a, idempotency_key=f"i-{tag}")

    with pytest.raises(baton.InvalidWorkflow) as invalid:
        c.apply_workflow('name = "w"\nentry = "missing"\n')
    assert invalid.value.errors and "line" in invalid.value.errors[0]
    c.apply_workflow(WORKFLOW.format(name=f"w-{tag}", a=f"w{a}", b=f"w{b}"))
    submitted = c.submit({"n": 3}, workflow=f"w-{tag}")
    (lease,) = c.claim([f"w{a}"], wait_ms=2000)
    assert lease.task == submitted.task.id
    with pytest.raises(baton.RouteNotAllowed) as route:
        c.handoff(lease.task, lease.epoch, f"elsewhere-{tag}")
    assert route.value.from_stage == f"w{a}" and route.value.to_stage == f"elsewhere-{tag}"

    # A path with the wrong method, sent raw: the body decodes the same way.
    response = httpx2.delete(f"{dev.address}/v1/claims")
    error = baton.error_from_body(response.status_code, response.json())
    assert isinstance(error, baton.MethodNotAllowed) and error.status == 405


def test_codes_provoked_on_baton_serve(serve: Server, make_client: Any, tag: str) -> None:
    admin = make_client(serve.address, token=serve.admin_token)
    admin.add_principal(f"bot-{tag}", "agent", stages=[f"s-{tag}"])
    token = admin.create_token(f"bot-{tag}").token
    bot = make_client(serve.address, token=token)

    with pytest.raises(baton.Unauthenticated) as unauthenticated:
        make_client(serve.address).list_tasks()
    assert unauthenticated.value.status == 401
    with pytest.raises(baton.Unauthenticated):
        make_client(serve.address, token="baton_nope_nope").list_tasks()
    with pytest.raises(baton.Forbidden):
        bot.list_principals()
    with pytest.raises(baton.Forbidden):
        bot.claim([f"not-mine-{tag}"])
    # A task outside the agent's stages is not found, not forbidden.
    other = admin.submit({"n": 1}, stage=f"other-{tag}").task
    with pytest.raises(baton.NotFound):
        bot.get_task(other.id)


@pytest.fixture(scope="module")
def limited(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = "[server]\nrequests_per_second_max = 2\nrequest_burst_max = 2\n\n[limits]\nleases_per_agent_max = 1\n"
    server = Server(binary, "serve", tmp_path_factory.mktemp("limited"), config=config)
    server.start()
    yield server
    server.stop()


def test_rate_limited_and_retry_after(limited: Server, make_client: Any, tag: str) -> None:
    # Without retries the refusal comes back, with Retry-After in seconds.
    once = make_client(limited.address, token=limited.admin_token, retry=baton.RetryPolicy(attempts=1))
    with pytest.raises(baton.RateLimited) as refused:
        for _ in range(10):
            once.list_workflows()
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 1
    assert refused.value.limit == "requests_per_second_max" and refused.value.max == 2
    # With retries the client waits as told and gets through.
    patient = make_client(limited.address, token=limited.admin_token, retry=baton.RetryPolicy(attempts=10))
    started = time.monotonic()
    for _ in range(6):
        patient.list_workflows()
    assert time.monotonic() - started >= 1.0  # it did wait: 6 calls at 2 per second


def test_too_many_leases(limited: Server, make_client: Any, tag: str) -> None:
    admin = make_client(limited.address, token=limited.admin_token, retry=baton.RetryPolicy(attempts=20))
    stage = f"s-{tag}"
    admin.add_principal(f"bot-{tag}", "agent", stages=[stage])
    bot = make_client(limited.address, token=admin.create_token(f"bot-{tag}").token, retry=baton.RetryPolicy(attempts=20))
    admin.submit({"n": 1}, stage=stage)
    admin.submit({"n": 2}, stage=stage)
    assert len(bot.claim([stage], wait_ms=2000)) == 1
    with pytest.raises(baton.TooManyLeases) as refused:
        bot.claim([stage])
    assert refused.value.limit == "leases_per_agent_max" and refused.value.max == 1
