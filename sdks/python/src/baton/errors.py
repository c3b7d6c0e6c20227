"""Refusals as typed exceptions, one class per stable error code.

Every non-2xx answer of Baton has the body `{code, message, details}`.
`error_from_body` turns it into the exception of its code (`LeaseLost`,
`RouteNotAllowed`, `LimitExceeded`, ...), each carrying the facts its
`details` hold as attributes. A code newer than this package becomes a plain
`ApiError` with the code as text: match on the class or on `code`, never on
`message`. Failures to reach the server are `TransportError`; answers this
package cannot read are `ProtocolError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BatonError",
    "ApiError",
    "TransportError",
    "ProtocolError",
    "InvalidRequest",
    "Unauthenticated",
    "Forbidden",
    "NotHolder",
    "NotFound",
    "TaskArchived",
    "MethodNotAllowed",
    "LeaseLost",
    "InvalidTransition",
    "RequestInProgress",
    "BodyTooLarge",
    "IdempotencyConflict",
    "RouteNotAllowed",
    "InvalidWorkflow",
    "LimitExceeded",
    "RateLimited",
    "TooManyLeases",
    "InternalError",
    "Unavailable",
    "RequestTimeout",
    "StorageFull",
    "ERRORS_BY_CODE",
    "error_from_body",
]


class BatonError(Exception):
    """Anything that went wrong talking to Baton."""

    #: Whether the same call may succeed later, unchanged.
    retryable: bool = False


class TransportError(BatonError):
    """Baton could not be reached, or the connection broke before an answer.

    The call may still have taken effect: repeat it unchanged (same epoch, same
    idempotency key) to learn its outcome safely.
    """

    retryable = True

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"could not reach Baton at {url}: {cause}")
        self.url = url
        self.cause = cause


class ProtocolError(BatonError):
    """Baton answered something this package does not understand."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"unexpected answer from Baton (HTTP {status}): {detail}")
        self.status = status
        self.detail = detail


class ApiError(BatonError):
    """A refusal: the server's status, stable `code`, `message` and `details`."""

    #: The code this class stands for; empty for the base class (unknown codes).
    CODE: ClassVar[str] = ""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        #: Seconds from the `Retry-After` header, when the answer had one.
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"

    def _detail_str(self, key: str) -> str | None:
        value = self.details.get(key)
        return value if isinstance(value, str) else None

    def _detail_int(self, key: str) -> int | None:
        value = self.details.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class InvalidRequest(ApiError):
    """400: malformed JSON, an unknown field, a bad value or a malformed id."""

    CODE = "invalid_request"

    @property
    def field(self) -> str | None:
        """The request field at fault, when the server named one."""
        return self._detail_str("field")


class Unauthenticated(ApiError):
    """401: no token, or an unknown or revoked one."""

    CODE = "unauthenticated"


class Forbidden(ApiError):
    """403: the principal's role or grants do not allow the call."""

    CODE = "forbidden"


class NotHolder(ApiError):
    """403: the epoch is current but another agent holds the lease."""

    CODE = "not_holder"


class NotFound(ApiError):
    """404: no such task, handoff, workflow or route (or none visible to the caller)."""

    CODE = "not_found"


class TaskArchived(ApiError):
    """410: the task finished and was archived.

    Its history is still served; it takes no further call, and its
    idempotency key stays taken (a repeated keyed submit gets this).
    `details["task"]` names it.
    """

    CODE = "task_archived"


class MethodNotAllowed(ApiError):
    """405: the path exists, but not with this HTTP method."""

    CODE = "method_not_allowed"


class LeaseLost(ApiError):
    """409: the caller's epoch is stale. Stop working on the task; nothing changed.

    `current_epoch` and `state` say where the task is now.
    """

    CODE = "lease_lost"

    @property
    def current_epoch(self) -> int | None:
        return self._detail_int("current_epoch")

    @property
    def state(self) -> str | None:
        return self._detail_str("state")

    @property
    def task(self) -> str | None:
        return self._detail_str("task")


class InvalidTransition(ApiError):
    """409: the call does not apply to the task's state (for example completing a waiting task)."""

    CODE = "invalid_transition"

    @property
    def state(self) -> str | None:
        return self._detail_str("state")

    @property
    def command(self) -> str | None:
        return self._detail_str("command")


class RequestInProgress(ApiError):
    """409: the first request with this idempotency key is still running; retry it."""

    CODE = "request_in_progress"
    retryable = True


class _Limited(ApiError):
    """A refusal whose `details` name a limit and its value."""

    @property
    def limit(self) -> str | None:
        """The limit's name, as docs/reference/limits.md lists it."""
        return self._detail_str("limit")

    @property
    def max(self) -> int | None:
        """The limit's value."""
        return self._detail_int("max")


class BodyTooLarge(_Limited):
    """413: the request body is over `body_bytes_max`."""

    CODE = "body_too_large"


class IdempotencyConflict(ApiError):
    """422: an idempotency key was reused with a different request."""

    CODE = "idempotency_conflict"

    @property
    def key(self) -> str | None:
        return self._detail_str("key")


class RouteNotAllowed(ApiError):
    """422: the handoff's target is not an allowed route from the task's stage."""

    CODE = "route_not_allowed"

    @property
    def from_stage(self) -> str | None:
        return self._detail_str("from")

    @property
    def to_stage(self) -> str | None:
        return self._detail_str("to")


class InvalidWorkflow(ApiError):
    """422: a workflow file has mistakes; `errors` lists each with its line, column and field."""

    CODE = "invalid_workflow"

    @property
    def errors(self) -> list[dict[str, Any]]:
        value = self.details.get("errors")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


class LimitExceeded(_Limited):
    """422: a named limit refused the request; `limit` names it and `max` gives its value."""

    CODE = "limit_exceeded"


class RateLimited(_Limited):
    """429: too many requests. `retry_after` (seconds) says when one more is accepted."""

    CODE = "rate_limited"
    retryable = True

    @property
    def retry_after_ms(self) -> int | None:
        return self._detail_int("retry_after_ms")


class TooManyLeases(_Limited):
    """429: the agent holds as many leases as `leases_per_agent_max` allows."""

    CODE = "too_many_leases"


class InternalError(ApiError):
    """500: a bug in Baton; the server logged it."""

    CODE = "internal"


class Unavailable(ApiError):
    """503: the store cannot serve now; retry later."""

    CODE = "unavailable"
    retryable = True


class RequestTimeout(_Limited):
    """503: the request outlasted the server's time limit. It may have taken
    effect: retry it unchanged (same epoch, same idempotency key)."""

    CODE = "request_timeout"
    retryable = True


class StorageFull(ApiError):
    """507: the store is out of space."""

    CODE = "storage_full"


#: The exception class of every code this package knows.
ERRORS_BY_CODE: dict[str, type[ApiError]] = {
    cls.CODE: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        Forbidden,
        NotHolder,
        NotFound,
        TaskArchived,
        MethodNotAllowed,
        LeaseLost,
        InvalidTransition,
        RequestInProgress,
        BodyTooLarge,
        IdempotencyConflict,
        RouteNotAllowed,
        InvalidWorkflow,
        LimitExceeded,
        RateLimited,
        TooManyLeases,
        InternalError,
        Unavailable,
        RequestTimeout,
        StorageFull,
    )
}


def error_from_body(status: int, body: Any, retry_after: float | None = None) -> ApiError:
    """The typed exception for an error answer's decoded JSON body.

    Raises `ProtocolError` when the body is not `{code, message, details}`.
    """
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise ProtocolError(status, f"an error without a code: {str(body)[:200]}")
    code: str = body["code"]
    message = body.get("message")
    details = body.get("details")
    cls = ERRORS_BY_CODE.get(code, ApiError)
    return cls(
        status,
        code,
        message if isinstance(message, str) else code,
        details if isinstance(details, dict) else {},
        retry_after,
    )
