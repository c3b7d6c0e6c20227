"""`AsyncClient`: one coroutine per API route, models in and out.

This file is the source of both clients: tools/gen_sync.py rewrites it into
`_sync_client.py` (`Client`, the same methods without `async`), and CI fails
when the two disagree. Request and answer decoding, retries and the route
table live in `_common.py`, shared by both.

Retries: a 429 `rate_limited` (answered before the server reads the body, so
nothing happened) is retried after its `Retry-After`; connection failures and
503 `unavailable` / `request_timeout` / 409 `request_in_progress` are retried
only for reads and for calls that carry an `Idempotency-Key` (`request_key`),
where a repeat cannot act twice. Each call makes at most
`RetryPolicy.attempts` attempts and sleeps at most `RetryPolicy.wait_max`
seconds between two.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx2
from pydantic import BaseModel

from . import models as m
from ._common import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    LONG_POLL_GRACE,
    Plan,
    RetryPolicy,
    Submitted,
    auth_headers,
    check_address,
    decode,
    path_segment,
)
from .errors import TransportError

T = TypeVar("T", bound=BaseModel)

__all__ = ["AsyncClient"]


class AsyncClient:
    """A Baton API client (asyncio). Close it with `await client.aclose()` or `async with`.

    `agent` names the calling agent while auth is off (`baton dev`); `token`
    is a bearer token for `baton serve`. Both may be given (the agent must
    then be the token's principal).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        agent: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        _http: httpx2.AsyncClient | None = None,
    ) -> None:
        self.address = check_address(address)
        self.agent = agent
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._token = token
        self._owns_http = _http is None
        self._http = _http or httpx2.AsyncClient(
            base_url=self.address,
            timeout=timeout,
            transport=transport,
            trust_env=False,
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def __repr__(self) -> str:
        # Never the token.
        return f"AsyncClient({self.address!r}, agent={self.agent!r}, token={'set' if self._token else None})"

    def with_agent(self, agent: str) -> AsyncClient:
        """A client for the same server and connections that names `agent` in its calls."""
        return AsyncClient(
            self.address, agent=agent, token=self._token, timeout=self.timeout, retry=self.retry, _http=self._http
        )

    def with_options(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> AsyncClient:
        """A client for the same server, agent and connections with another
        per-call `timeout` (seconds) or `retry` policy."""
        return AsyncClient(
            self.address,
            agent=self.agent,
            token=self._token,
            timeout=self.timeout if timeout is None else timeout,
            retry=retry or self.retry,
            _http=self._http,
        )

    async def aclose(self) -> None:
        """Closes the connections (a client made by `with_agent` leaves them to its parent)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- service routes ------------------------------------------------

    async def health(self) -> m.Health:
        """`GET /healthz`: the process is up."""
        return await self._call(Plan("GET", "/healthz"), m.Health)

    async def ready(self) -> m.Health:
        """`GET /readyz`: the store is reachable and migrated (raises `Unavailable` until then)."""
        return await self._call(Plan("GET", "/readyz"), m.Health)

    async def index(self) -> m.Index:
        """`GET /v1`: the server's name, version and routes."""
        return await self._call(Plan("GET", "/v1"), m.Index)

    async def metrics(self) -> str:
        """`GET /metrics`: Prometheus text (needs an admin or operator token with auth on)."""
        response = await self._send(Plan("GET", "/metrics"))
        return response.text

    # ---- tasks ---------------------------------------------------------

    async def submit(
        self,
        payload: Any,
        *,
        stage: str | None = None,
        workflow: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
        trace: str | None = None,
        request_key: str | None = None,
    ) -> Submitted:
        """`POST /v1/tasks`: a new task in `stage` (or `workflow`'s entry stage).

        The same `idempotency_key` again returns the existing task (`created` False).
        """
        body = m.SubmitRequest(
            stage=stage,
            workflow=workflow,
            payload=payload,
            priority=priority if priority is not None else 0,
            deadline=deadline,
            idempotency_key=idempotency_key,
            labels=dict(labels or {}),
            parent=parent,
            trace=trace,
        )
        # A submit with an idempotency key is safe to repeat: the key dedupes it.
        plan = Plan("POST", "/v1/tasks", body=body, key=request_key, safe=idempotency_key is not None)
        response = await self._send(plan)
        return Submitted(task=decode(response, m.Task), created=response.status_code == 201)

    async def get_task(self, task: str) -> m.Task:
        """`GET /v1/tasks/{id}`."""
        return await self._call(Plan("GET", f"/v1/tasks/{path_segment(task)}"), m.Task)

    async def history(self, task: str) -> m.History:
        """`GET /v1/tasks/{id}/history`: every committed change, hash-chained."""
        return await self._call(Plan("GET", f"/v1/tasks/{path_segment(task)}/history"), m.History)

    async def lineage(self, task: str) -> m.Lineage:
        """`GET /v1/tasks/{id}/lineage`: the path through stages and agents, and the tree of children."""
        return await self._call(Plan("GET", f"/v1/tasks/{path_segment(task)}/lineage"), m.Lineage)

    async def verify(self, task: str) -> m.ChainVerification:
        """`GET /v1/tasks/{id}/verify`: whether the task's hash chain verifies against its row."""
        return await self._call(Plan("GET", f"/v1/tasks/{path_segment(task)}/verify"), m.ChainVerification)

    async def list_tasks(
        self,
        *,
        stage: str | None = None,
        state: m.TaskStateName | None = None,
        parent: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> m.TaskPage:
        """`GET /v1/tasks`: one page; pass its `next_cursor` as `cursor` for the next."""
        params = {"stage": stage, "state": state, "parent": parent, "cursor": cursor, "limit": limit}
        return await self._call(Plan("GET", "/v1/tasks", params=params), m.TaskPage)

    async def iter_tasks(
        self,
        *,
        stage: str | None = None,
        state: m.TaskStateName | None = None,
        parent: str | None = None,
        limit: int | None = None,
        pages_max: int = 10_000,
    ) -> AsyncIterator[m.Task]:
        """Every task matching the filters, page after page (at most `pages_max` pages)."""
        cursor: str | None = None
        for _ in range(pages_max):
            page = await self.list_tasks(stage=stage, state=state, parent=parent, cursor=cursor, limit=limit)
            for task in page.tasks:
                yield task
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, task: str, reason: str, *, request_key: str | None = None) -> m.Task:
        """`POST /v1/tasks/{id}/cancel`: end the task, saying why (operators, admins, its submitter)."""
        body = m.CancelRequest(reason=reason)
        plan = Plan("POST", f"/v1/tasks/{path_segment(task)}/cancel", body=body, key=request_key)
        return await self._call(plan, m.Task)

    async def comment(
        self,
        task: str,
        note: str = "",
        *,
        findings: Any = None,
        request_key: str | None = None,
    ) -> m.Task:
        """`POST /v1/tasks/{id}/comments`: add a message to a live task's history
        (operators, admins, its submitter); nothing else about the task changes."""
        body = m.CommentRequest(note=note, findings=findings)
        plan = Plan("POST", f"/v1/tasks/{path_segment(task)}/comments", body=body, key=request_key)
        return await self._call(plan, m.Task)

    async def handoff_outcome(self, handoff: str, *, wait_ms: int = 0) -> m.Handoff:
        """`GET /v1/handoffs/{id}`: the handoff and its outcome, waiting up to `wait_ms` while pending."""
        params = {"wait_ms": wait_ms or None}
        plan = Plan("GET", f"/v1/handoffs/{path_segment(handoff)}", params=params, wait_ms=wait_ms)
        return await self._call(plan, m.Handoff)

    # ---- claims and holder calls ---------------------------------------

    async def claim(
        self,
        stages: Sequence[str],
        *,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
        request_key: str | None = None,
    ) -> list[m.Lease]:
        """`POST /v1/claims`: lease up to `max` waiting tasks, waiting up to `wait_ms` for work."""
        body = m.ClaimRequest(stages=list(stages), max=max, wait_ms=wait_ms, lease_ms=lease_ms, agent=self.agent)
        plan = Plan("POST", "/v1/claims", body=body, key=request_key, wait_ms=wait_ms)
        return (await self._call(plan, m.ClaimResponse)).leases

    async def heartbeat(
        self,
        task: str,
        epoch: int,
        *,
        lease_ms: int | None = None,
        note: str | None = None,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/heartbeat`: extend the lease (from now), maybe with a progress note."""
        body = m.HeartbeatRequest(epoch=epoch, agent=self.agent, lease_ms=lease_ms, note=note, claim_next=claim_next)
        return await self._act(task, "heartbeat", body, request_key)

    async def handoff(
        self,
        task: str,
        epoch: int,
        to_stage: str,
        *,
        note: str | None = None,
        findings: Any = None,
        confidence: float | None = None,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/handoff`: finish this part and pass the task to `to_stage`."""
        body = m.HandoffRequest(
            epoch=epoch,
            agent=self.agent,
            to_stage=to_stage,
            note=note,
            findings=findings,
            confidence=confidence,
            claim_next=claim_next,
        )
        return await self._act(task, "handoff", body, request_key)

    async def complete(
        self,
        task: str,
        epoch: int,
        *,
        result: Any = None,
        note: str | None = None,
        findings: Any = None,
        confidence: float | None = None,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/complete`: finish the task (with a workflow: its stage)."""
        body = m.CompleteRequest(
            epoch=epoch,
            agent=self.agent,
            result=result,
            note=note,
            findings=findings,
            confidence=confidence,
            claim_next=claim_next,
        )
        return await self._act(task, "complete", body, request_key)

    async def release(
        self,
        task: str,
        epoch: int,
        *,
        note: str | None = None,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/release`: give the task back to its stage (an attempt is counted)."""
        body = m.ReleaseRequest(epoch=epoch, agent=self.agent, note=note, claim_next=claim_next)
        return await self._act(task, "release", body, request_key)

    async def fail(
        self,
        task: str,
        epoch: int,
        error: str,
        *,
        retryable: bool,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/fail`: retryable failures come back after backoff, the rest escalate."""
        body = m.FailRequest(epoch=epoch, agent=self.agent, error=error, retryable=retryable, claim_next=claim_next)
        return await self._act(task, "fail", body, request_key)

    async def spawn(
        self,
        task: str,
        epoch: int,
        children: Sequence[m.ChildSpec],
        *,
        within_ms: int,
        mode: m.JoinMode = "all",
        n: int | None = None,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/spawn`: create children; the task is blocked until the join holds."""
        body = m.SpawnRequest(
            epoch=epoch,
            agent=self.agent,
            children=list(children),
            join=m.JoinRequest(mode=mode, n=n, within_ms=within_ms),
            claim_next=claim_next,
        )
        return await self._act(task, "spawn", body, request_key)

    async def abort(
        self,
        task: str,
        epoch: int,
        reason: str,
        *,
        claim_next: m.ClaimNext | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/tasks/{id}/abort`: abort the workflow; finished stages are compensated."""
        body = m.AbortRequest(epoch=epoch, agent=self.agent, reason=reason, claim_next=claim_next)
        return await self._act(task, "abort", body, request_key)

    # ---- workflows -----------------------------------------------------

    async def apply_workflow(self, source: str, *, request_key: str | None = None) -> m.AppliedWorkflow:
        """`POST /v1/workflows`: store a workflow file (TOML); `created` is False when unchanged."""
        body = m.ApplyWorkflowRequest(source=source)
        return await self._call(Plan("POST", "/v1/workflows", body=body, key=request_key), m.AppliedWorkflow)

    async def list_workflows(self) -> list[m.WorkflowView]:
        """`GET /v1/workflows`: the latest version of each workflow."""
        return (await self._call(Plan("GET", "/v1/workflows"), m.WorkflowList)).workflows

    async def get_workflow(self, name: str, *, version: int | None = None) -> m.WorkflowView:
        """`GET /v1/workflows/{name}`: the latest version, or `version`."""
        plan = Plan("GET", f"/v1/workflows/{path_segment(name)}", params={"version": version})
        return await self._call(plan, m.WorkflowView)

    # ---- the human inbox and operations ---------------------------------

    async def inbox(
        self, *, stage: str | None = None, limit: int | None = None, after: str | None = None
    ) -> m.InboxPage:
        """`GET /v1/inbox`: tasks waiting in human stages; pass `next_cursor` as `after`."""
        plan = Plan("GET", "/v1/inbox", params={"stage": stage, "limit": limit, "after": after})
        return await self._call(plan, m.InboxPage)

    async def inbox_claim(
        self, task: str, *, lease_ms: int | None = None, request_key: str | None = None
    ) -> m.Lease:
        """`POST /v1/inbox/{id}/claim`: an operator takes an inbox task."""
        body = m.InboxClaimRequest(lease_ms=lease_ms, agent=self.agent)
        plan = Plan("POST", f"/v1/inbox/{path_segment(task)}/claim", body=body, key=request_key)
        return await self._call(plan, m.Lease)

    async def inbox_resolve(
        self,
        task: str,
        epoch: int,
        resolution: m.Resolution,
        *,
        to_stage: str | None = None,
        note: str | None = None,
        reason: str | None = None,
        request_key: str | None = None,
    ) -> m.ActResponse:
        """`POST /v1/inbox/{id}/resolve`: hand off, complete, cancel or abort an inbox task held."""
        body = m.ResolveRequest(
            epoch=epoch, resolution=resolution, to_stage=to_stage, note=note, reason=reason, agent=self.agent
        )
        plan = Plan("POST", f"/v1/inbox/{path_segment(task)}/resolve", body=body, key=request_key)
        return await self._call(plan, m.ActResponse)

    async def stuck(self, *, grace_ms: int | None = None) -> m.StuckList:
        """`GET /v1/stuck`: live tasks past a threshold, with why."""
        return await self._call(Plan("GET", "/v1/stuck", params={"grace_ms": grace_ms}), m.StuckList)

    async def stats(
        self, *, window: str | None = None, edge: str | None = None, stage: str | None = None
    ) -> m.Stats:
        """`GET /v1/stats`: edges and stages over a window (`"5m"`, `"1h"`, ...)."""
        plan = Plan("GET", "/v1/stats", params={"window": window, "edge": edge, "stage": stage})
        return await self._call(plan, m.Stats)

    async def stats_series(
        self,
        *,
        edge: str | None = None,
        agent_edge: str | None = None,
        stage: str | None = None,
        window: str | None = None,
    ) -> m.Series:
        """`GET /v1/stats/series`: one edge (`"a:b"`), agent edge or stage per minute, with learnt baselines."""
        params = {"edge": edge, "agent_edge": agent_edge, "stage": stage, "window": window}
        return await self._call(Plan("GET", "/v1/stats/series", params=params), m.Series)

    async def alerts(
        self, *, all: bool | None = None, after: int | None = None, limit: int | None = None
    ) -> m.AnomalyList:
        """`GET /v1/alerts`: open anomalies (`all=True`: acknowledged ones too)."""
        plan = Plan("GET", "/v1/alerts", params={"all": all, "after": after, "limit": limit})
        return await self._call(plan, m.AnomalyList)

    async def ack_alert(self, alert: int) -> m.Anomaly:
        """`POST /v1/alerts/{id}/ack`: acknowledge an anomaly."""
        return await self._call(Plan("POST", f"/v1/alerts/{int(alert)}/ack"), m.Anomaly)

    async def deliveries(self, *, after: int | None = None, limit: int | None = None) -> m.DeliveryPage:
        """`GET /v1/deliveries`: webhook delivery attempts, oldest first; pass `next_after` as `after`."""
        plan = Plan("GET", "/v1/deliveries", params={"after": after, "limit": limit})
        return await self._call(plan, m.DeliveryPage)

    # ---- principals and tokens (admin) ---------------------------------

    async def add_principal(
        self,
        name: str,
        role: m.Role,
        *,
        stages: Sequence[str] = (),
        routes: Sequence[tuple[str, str]] = (),
    ) -> m.Principal:
        """`POST /v1/principals`: an agent, submitter, operator or admin; `routes` as `(from, to)` pairs."""
        body = m.PrincipalRequest(
            name=name,
            role=role,
            stages=list(stages),
            routes=[m.Route.model_validate({"from": a, "to": b}) for a, b in routes],
        )
        return await self._call(Plan("POST", "/v1/principals", body=body), m.Principal)

    async def list_principals(self) -> list[m.Principal]:
        """`GET /v1/principals`."""
        return (await self._call(Plan("GET", "/v1/principals"), m.PrincipalList)).principals

    async def revoke_principal(self, name: str) -> m.Principal:
        """`DELETE /v1/principals/{name}`: the principal and its tokens stop working."""
        return await self._call(Plan("DELETE", f"/v1/principals/{path_segment(name)}"), m.Principal)

    async def create_token(self, principal: str) -> m.TokenCreated:
        """`POST /v1/tokens`: a token for `principal`, shown this once."""
        body = m.TokenRequest(principal=principal)
        return await self._call(Plan("POST", "/v1/tokens", body=body), m.TokenCreated)

    async def list_tokens(self) -> list[m.TokenInfo]:
        """`GET /v1/tokens`: every token, never its secret."""
        return (await self._call(Plan("GET", "/v1/tokens"), m.TokenList)).tokens

    async def revoke_token(self, token_id: str) -> m.TokenInfo:
        """`DELETE /v1/tokens/{id}`."""
        return await self._call(Plan("DELETE", f"/v1/tokens/{path_segment(token_id)}"), m.TokenInfo)

    async def whoami(self) -> m.Whoami:
        """`GET /v1/whoami`: the principal the token names, and its role."""
        return await self._call(Plan("GET", "/v1/whoami"), m.Whoami)

    # ---- plumbing ------------------------------------------------------

    async def _act(self, task: str, verb: str, body: BaseModel, request_key: str | None) -> m.ActResponse:
        plan = Plan("POST", f"/v1/tasks/{path_segment(task)}/{verb}", body=body, key=request_key)
        return await self._call(plan, m.ActResponse)

    async def _call(self, plan: Plan, model: type[T]) -> T:
        return decode(await self._send(plan), model)

    async def _send(self, plan: Plan) -> httpx2.Response:
        """One call with the retries the module documentation describes."""
        content = plan.content()
        headers = auth_headers(self._token, plan.key, json_body=content is not None)
        timeout = self.timeout + (plan.wait_ms / 1000 + LONG_POLL_GRACE if plan.wait_ms else 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    plan.method,
                    plan.path,
                    params=plan.query(),
                    content=content,
                    headers=headers,
                    timeout=timeout,
                )
            except httpx2.TransportError as error:
                failure = TransportError(self.address, str(error) or type(error).__name__)
                pause = self.retry.after_transport(plan, attempt)
                if pause is None:
                    raise failure from error
                await asyncio.sleep(pause)
                continue
            pause = self.retry.after_response(plan, attempt, response)
            if pause is None:
                return response
            await asyncio.sleep(pause)
