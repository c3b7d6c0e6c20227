"""What the sync and async clients share: how a call is described (`Plan`),
encoded, retried (`RetryPolicy`) and decoded (`decode`), and the table of
every API route to the client method that calls it (`OPERATIONS`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ValidationError

from . import models as m
from .errors import ProtocolError, error_from_body

T = TypeVar("T", bound=BaseModel)

#: Where `baton dev` listens.
DEFAULT_ADDRESS = "http://127.0.0.1:7707"

#: Seconds one call may take (long polls get their wait and `LONG_POLL_GRACE` on top).
DEFAULT_TIMEOUT = 30.0

#: Seconds allowed past a long poll's `wait_ms` before the client gives up on it.
LONG_POLL_GRACE = 10.0

#: The request header that makes a mutating call idempotent for 24 h.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"

#: Every API route (its OpenAPI `operationId`) and the client method that calls it.
OPERATIONS: dict[str, str] = {
    "healthz": "health",
    "readyz": "ready",
    "index": "index",
    "metrics": "metrics",
    "submit_task": "submit",
    "show_task": "get_task",
    "task_history": "history",
    "task_lineage": "lineage",
    "verify_task": "verify",
    "list_tasks": "list_tasks",
    "cancel_task": "cancel",
    "comment_task": "comment",
    "show_handoff": "handoff_outcome",
    "claim": "claim",
    "heartbeat": "heartbeat",
    "hand_off": "handoff",
    "complete": "complete",
    "release": "release",
    "fail": "fail",
    "spawn": "spawn",
    "abort": "abort",
    "apply_workflow": "apply_workflow",
    "list_workflows": "list_workflows",
    "show_workflow": "get_workflow",
    "list_inbox": "inbox",
    "claim_inbox_task": "inbox_claim",
    "resolve_inbox_task": "inbox_resolve",
    "list_stuck": "stuck",
    "stats": "stats",
    "stats_series": "stats_series",
    "list_alerts": "alerts",
    "ack_alert": "ack_alert",
    "list_deliveries": "deliveries",
    "add_principal": "add_principal",
    "list_principals": "list_principals",
    "revoke_principal": "revoke_principal",
    "create_token": "create_token",
    "list_tokens": "list_tokens",
    "revoke_token": "revoke_token",
    "whoami": "whoami",
}


@dataclass(frozen=True)
class Submitted:
    """What a submit returns."""

    task: m.Task
    #: False when an earlier submit with the same idempotency key came back.
    created: bool


@dataclass
class Plan:
    """One API call: method, path, query, body and how safe it is to repeat."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: BaseModel | None = None
    #: The `Idempotency-Key` header's value, if any.
    key: str | None = None
    #: Long poll: the call may wait this long on the server.
    wait_ms: int = 0
    #: True when repeating the call cannot act twice even without a key.
    safe: bool = False

    def repeatable(self) -> bool:
        """Whether an ambiguous failure (no answer, 503) may be retried unchanged."""
        return self.method == "GET" or self.key is not None or self.safe

    def query(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.params.items():
            if value is None:
                continue
            out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        data = self.body.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps(data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most `attempts` tries per call, sleeping
    `Retry-After` (for 429) or a jittered exponential backoff from
    `backoff_initial` to `backoff_max` seconds, never more than `wait_max`."""

    attempts: int = 4
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    wait_max: float = 30.0

    def backoff(self, attempt: int) -> float:
        step: float = min(self.backoff_max, self.backoff_initial * (2 ** min(attempt - 1, 20)))
        return min(self.wait_max, step / 2 + random.random() * step / 2)

    def after_transport(self, plan: Plan, attempt: int) -> float | None:
        """The pause before retrying after no answer, or None to give up."""
        if attempt >= self.attempts or not plan.repeatable():
            return None
        return self.backoff(attempt)

    def after_response(self, plan: Plan, attempt: int, response: httpx2.Response) -> float | None:
        """The pause before retrying after `response`, or None to return it."""
        status = response.status_code
        if status < 400 or attempt >= self.attempts:
            return None
        code = error_code(response)
        if status == 429 and code == "rate_limited":
            # Refused before the body was read: nothing happened, any call may repeat.
            after = retry_after(response)
            return min(self.wait_max, after if after is not None else self.backoff(attempt))
        if code in ("unavailable", "request_timeout", "request_in_progress") and plan.repeatable():
            after = retry_after(response)
            return min(self.wait_max, after if after is not None else self.backoff(attempt))
        return None


def error_code(response: httpx2.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds from the `Retry-After` header (delta-seconds form), else from
    `details.retry_after_ms`."""
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    try:
        body = response.json()
    except ValueError:
        return None
    details = body.get("details") if isinstance(body, dict) else None
    value = details.get("retry_after_ms") if isinstance(details, dict) else None
    return value / 1000 if isinstance(value, int) else None


def decode(response: httpx2.Response, model: type[T]) -> T:
    """The answer as `model`, or the typed exception of its error code."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        raise ProtocolError(status, f"not JSON: {response.text[:200]!r}") from None
    if status >= 400:
        raise error_from_body(status, body, retry_after(response))
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ProtocolError(status, f"not a {model.__name__}: {error}") from None


def auth_headers(token: str | None, key: str | None, json_body: bool) -> dict[str, str]:
    headers = {"accept": "application/json"}
    if json_body:
        headers["content-type"] = "application/json"
    if token:
        headers["authorization"] = f"Bearer {token}"
    if key is not None:
        headers[IDEMPOTENCY_KEY_HEADER] = key
    return headers


def check_address(address: str) -> str:
    """`http://HOST:PORT` (or https), without a trailing slash."""
    base = address.rstrip("/")
    if not base.startswith(("http://", "https://")) or "/" in base.split("://", 1)[1]:
        raise ValueError(f"bad Baton address {address!r}: expected http://HOST:PORT with no path")
    return base


def path_segment(value: str) -> str:
    """A name or id as one URL path segment."""
    return quote(str(value), safe="")
