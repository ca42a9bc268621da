"""Fixtures shared by the whole suite.

- ``start_backend(identity, transport=...)``: a real demo MCP server (official SDK) on a
  free port, ready when returned.
- ``start_proxy(config, env=None, wait=True)``: ``proxyrunner run`` as a real process with
  that RunConfig (host and port filled in, ``drain_delay`` 0 unless given), ready when
  returned unless ``wait=False``.
- ``demo_proxy(*identities, **config)``: demo backends (one, "alpha", by default) and a
  proxy over them (``proxy.backends``), ready.
All stop everything they started at the end of the test. A proxy must then exit within
its drain_timeout, with 0 or the code the test named (``Proxy.expect_exit``,
``Proxy.exits_with``; ``Proxy.kill`` expects the SIGKILL): anything else fails the test
that started it, with the proxy's log tail. The session ends by failing if any process started
by the suite is still alive, and every async test fails if it leaves tasks running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.identity_fixtures import start_idp  # noqa: F401 - a fixture
from tests.procs import DemoBackend, Proxy, marked_processes
from tests.redis_server import RedisServer
from tests.trace_fixtures import start_traced_backend, trace_backend  # noqa: F401 - fixtures

StartBackend = Callable[..., DemoBackend]
StartProxy = Callable[..., Proxy]
DemoProxy = Callable[..., Proxy]


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind() -> Iterator[None]:
    yield
    leftovers = marked_processes()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"the test run left processes behind: {leftovers}"


@pytest.fixture(autouse=True)
async def no_tasks_left_behind() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while True:
        leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftovers or loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    for task in leftovers:
        task.cancel()
    assert not leftovers, f"the test left tasks running: {leftovers}"


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[StartBackend]:
    started: list[DemoBackend] = []

    def start(identity: str, transport: str = "streamable-http", **env: str) -> DemoBackend:
        backend = DemoBackend(tmp_path, identity, transport, **env)
        started.append(backend)
        return backend.wait_ready()

    yield start
    for backend in started:
        backend.kill()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    started: list[Proxy] = []

    def start(
        config: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        label: str = "proxy",
        extra_args: list[str] | None = None,
    ) -> Proxy:
        proxy = Proxy(tmp_path, config, env, label=label, extra_args=extra_args)
        started.append(proxy)
        return proxy.wait_ready() if wait else proxy

    yield start
    failures = [failure for proxy in started if (failure := proxy.finish())]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture
def demo_proxy(start_backend: StartBackend, start_proxy: StartProxy) -> DemoProxy:
    def start(*identities: str, **config: Any) -> Proxy:
        # A legacy SSE proxy fronts SSE backends; anything else, streamable HTTP ones.
        transport = "sse" if config.get("transport") == "sse" else "streamable-http"
        backends = [start_backend(name, transport) for name in identities or ("alpha",)]
        urls = [backend.url for backend in backends]
        where = {"remote_url": urls[0]} if len(urls) == 1 else {"backend_urls": urls}
        proxy = start_proxy({"name": "demo", **where, **config})
        proxy.backends = backends
        return proxy

    return start


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server with a password on a free port, stopped after the test."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()
