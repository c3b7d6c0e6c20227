"""Fixtures: one `baton dev` (auth off) and one `baton serve` (auth on) for the
whole session, each test in its own stages (names with a random suffix), and
helpers to run the async client through the same test code as the sync one."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import baton

from .server import Server, baton_binary


@pytest.fixture(scope="session")
def binary() -> str:
    return baton_binary()


@pytest.fixture(scope="session")
def dev(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(binary, "dev", tmp_path_factory.mktemp("dev"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(binary, "serve", tmp_path_factory.mktemp("serve"))
    server.start()
    assert server.admin_token and server.admin_token.startswith("baton_"), server.lines
    yield server
    server.stop()


@pytest.fixture
def tag() -> str:
    """A suffix that keeps one test's stages apart from the others'."""
    return uuid.uuid4().hex[:8]


class SyncOverAsync:
    """Runs an `AsyncClient`'s coroutines to completion, one call at a time,
    so a test written against the sync `Client` drives the async one too."""

    def __init__(self, client: baton.AsyncClient, runner: asyncio.Runner) -> None:
        self._client = client
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "iter_tasks":
            def collect(*args: Any, **kwargs: Any) -> Iterator[Any]:
                async def run() -> list[Any]:
                    return [t async for t in attr(*args, **kwargs)]

                return iter(self._runner.run(run()))

            return collect
        if name == "with_agent":
            return lambda agent: SyncOverAsync(attr(agent), self._runner)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._runner.run(attr(*args, **kwargs))
        return attr


Factory = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """`make_client(address, agent=..., token=...)`: a `Client`, or an
    `AsyncClient` behind `SyncOverAsync`, per the parameter."""
    flavour: str = request.param
    runner = asyncio.Runner() if flavour == "async" else None
    made: list[Any] = []

    def make(address: str, **kwargs: Any) -> Any:
        if runner is None:
            client = baton.Client(address, **kwargs)
            made.append(client)
            return client
        aclient = baton.AsyncClient(address, **kwargs)
        made.append(aclient)
        return SyncOverAsync(aclient, runner)

    yield make
    for client in made:
        if isinstance(client, baton.AsyncClient):
            assert runner is not None
            runner.run(client.aclose())
        else:
            client.close()
    if runner is not None:
        runner.close()

