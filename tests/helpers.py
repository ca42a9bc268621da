"""What tests share: the MCP messages and headers a raw client sends, readers of what the
SDK client and the proxy answer, a hand-written backend, and the npm reference servers.

Tests import shared helpers from here (or from procs.py for processes), never from
another test module: importing a test module runs its collection-time code and ties two
test files together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp import Client

from proxyrunner.backends.local import LocalBackendDirectory
from proxyrunner.config import parse_config
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.forward import Forwarder
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.pipeline import Stage
from proxyrunner.proxy.server import build_app, default_stages
from proxyrunner.proxy.upstream import UpstreamPool
from proxyrunner.sessions.memory import MemorySessionStore
from proxyrunner.traffic import Traffic
from tests.balancer import relay
from tests.procs import Proxy, eventually, free_port, http_status

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO / "tests" / "node" / "node_modules"
EVERYTHING = NODE_MODULES / ".bin" / "mcp-server-everything"

INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODERN = "2026-07-28"
# What a 2026-07-28 request carries in params._meta in place of a session.
META_2026: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
}
# A 2026-07-28 listen stream: the answer is an event stream that stays open.
SUBSCRIBE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "listen-1",
    "method": "subscriptions/listen",
    "params": {"notifications": {"toolsListChanged": True}, "_meta": META_2026},
}
# The kinds of listen stream a client can hold open: what drain ends with a retry hint.
LISTEN_STREAMS = ("GET /mcp", "GET /sse", "subscriptions/listen")
# The SDK-built demo as a stdio child of the proxy.
DEMO_STDIO: dict[str, Any] = {
    "name": "demo",
    "transport": "stdio",
    "cmd_args": [sys.executable, "-m", "proxyrunner.demo"],
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def prerequisite_missing(what: str) -> NoReturn:
    """Skip for want of ``what`` on a developer machine; fail in CI (``CI`` set, as CI
    runners and .ci/run's environment have it), where a skip would leave the promise
    untested without anyone noticing."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what}; CI is set, so this test must run here", pytrace=False)
    pytest.skip(what)


def tool_text(result: Any) -> str:
    return "".join(block.text for block in result.content if getattr(block, "type", "") == "text")


async def whoami(client: Client) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(tool_text(await client.call_tool("whoami", {})))
    return doc


def tools_call(request_id: int | str, name: str = "echo", **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def answer_of(response: aiohttp.ClientResponse) -> Any:
    """The JSON-RPC answer of a POST, whether it came as JSON or as an SSE stream (the
    first ``data:`` line that holds a message with an id)."""
    if response.content_type != "text/event-stream":
        return await response.json()
    async for line in response.content:
        if line.startswith(b"data:"):
            message = json.loads(line[5:])
            if isinstance(message, dict) and "id" in message:
                return message
    raise AssertionError("the event stream ended without an answer")


async def raw_initialize(http: aiohttp.ClientSession, url: str) -> str:
    """Initialize a 2025-06-18 session without the SDK; returns its session id."""
    async with http.post(url, json=INIT, headers=MCP_HEADERS) as response:
        assert response.status == 200, await response.text()
        await response.read()
        session_id = response.headers["Mcp-Session-Id"]
    async with http.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**MCP_HEADERS, "Mcp-Session-Id": session_id},
    ) as response:
        assert response.status == 202
    return session_id


@contextlib.asynccontextmanager
async def raw_session(url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """An HTTP client with a freshly initialized session at ``url``: (client, session id)."""
    async with aiohttp.ClientSession() as http:
        yield http, await raw_initialize(http, url)


@contextlib.asynccontextmanager
async def listen_stream(
    http: aiohttp.ClientSession, proxy: Proxy, kind: str, session_id: str | None = None
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Open a listen stream of ``kind`` (one of ``LISTEN_STREAMS``; ``GET /sse`` needs a
    legacy SSE proxy; ``GET /mcp`` in ``session_id``, or a new session) and check that it
    is one."""
    if kind == "GET /sse":
        request = http.get(f"{proxy.base}/sse", headers={"Accept": "text/event-stream"})
    elif kind == "subscriptions/listen":
        headers = {
            **MCP_HEADERS,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "subscriptions/listen",
        }
        request = http.post(proxy.url, json=SUBSCRIBE, headers=headers)
    else:
        session_id = session_id or await raw_initialize(http, proxy.url)
        headers = {
            "Accept": "text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-06-18",
        }
        request = http.get(proxy.url, headers=headers)
    async with request as stream:
        assert stream.status == 200, await stream.text()
        assert stream.content_type == "text/event-stream"
        yield stream


async def metric(proxy: Proxy, name: str) -> float:
    """The value of an unlabelled metric in the proxy's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} is not in /metrics"
    return float(match.group(1))


async def until_metric(
    proxy: Proxy,
    name: str,
    at_least: float = float("-inf"),
    at_most: float = float("inf"),
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
) -> None:
    """Wait until the metric is within [at_least, at_most]."""
    deadline = time.monotonic() + timeout
    while not at_least <= (value := await metric(proxy, name)) <= at_most:
        assert time.monotonic() < deadline, (
            f"{name} stayed at {value} for {timeout}s, outside [{at_least}, {at_most}]"
        )
        await asyncio.sleep(0.02)


def readyz_text(base: str) -> str:
    """The /readyz body whatever its status ("" if the proxy does not answer)."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:  # noqa: S310
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run an aiohttp application on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def http_backend(post_mcp: Handler) -> AsyncIterator[int]:
    """A hand-written backend on a free port: answers the readiness probe at / and
    POST /mcp with ``post_mcp``. Yields its port."""

    async def probe(request: web.Request) -> web.Response:
        return web.Response(text="up")

    app = web.Application()
    app.router.add_get("/", probe)
    app.router.add_post("/mcp", post_mcp)
    async with serving(app) as base:
        yield int(base.rsplit(":", 1)[1])


async def check_a_session_outlives_its_killed_child(proxy: Proxy) -> None:
    """SIGKILL the child process serving an SDK client's session: the proxy notices,
    restarts it, and the same client session goes on there, re-initialized."""
    async with Client(proxy.url, mode="legacy") as client:
        first = await whoami(client)
        os.kill(first["pid"], signal.SIGKILL)
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 10, "the crash")
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 30, "the restart")
        # The restarted child forgot the session: the proxy re-initializes it there.
        again = await whoami(client)
    assert again["pid"] != first["pid"]
    assert "session re-initialized" in [e.get("event") for e in proxy.log_events()]


async def serve(backend_url: str, extra: list[Stage]) -> AsyncIterator[tuple[str, ProxyParts]]:
    """The proxy app in-process in front of ``backend_url``, with ``extra`` stages after
    the default ones; yields its MCP URL and its parts."""
    config, _ = parse_config({"name": "demo", "remote_url": backend_url})
    log = get_logger().bind(test="in-process")
    metrics = Metrics()
    async with aiohttp.ClientSession() as client:
        pool = UpstreamPool()
        directory = LocalBackendDirectory(config, metrics, log, client)
        await directory.start()
        forwarder = Forwarder(
            client,
            pool,
            timeout=config.backend.timeout,
            max_body=config.listen.max_request_body,
            metrics=metrics,
            log=log,
        )
        store = MemorySessionStore(config.sessions.cache_size, config.sessions.ttl, metrics)
        parts = ProxyParts(config, store, directory, metrics, Traffic(), forwarder, log)
        server = TestServer(build_app(parts, [*default_stages(parts), *extra]), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("/mcp")), parts
        finally:
            await server.close()
            await directory.close()
            await pool.close()


class Tap:
    """An HTTP hop in front of a backend that records every JSON-RPC message passing to
    it, with the content type of its answer: what a test shows never reached the backend,
    and whether the backend answered with JSON or an event stream. Serve ``app()``."""

    def __init__(self, upstream: str) -> None:
        """``upstream``: the backend's base URL; every path is relayed to it."""
        self.upstream = upstream.rstrip("/")
        self.url = ""
        """Where it is served (set by ``running_tap``)."""
        self.seen: list[tuple[dict[str, Any], str]] = []
        """(message, answer's content type) of every JSON-RPC request or notification."""

    def calls(self, method: str) -> list[Any]:
        """The ``params.name`` (or ``params.uri``) of each ``method`` request seen."""
        return [
            (message.get("params") or {}).get("name") or (message.get("params") or {}).get("uri")
            for message, _ in self.seen
            if message.get("method") == method
        ]

    def answered_as(self, method: str) -> set[str]:
        return {kind for message, kind in self.seen if message.get("method") == method}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/mcp":
            # A listen stream would outlive the test; clients go without one on a 405.
            return web.Response(status=405)
        body = await request.read()

        def record(answer: aiohttp.ClientResponse) -> None:
            # Before the answer is relayed: the client may act on it at once.
            if body and request.path == "/mcp":
                kind = answer.headers.get("Content-Type", "").split(";")[0]
                parsed = json.loads(body)
                for message in parsed if isinstance(parsed, list) else [parsed]:
                    self.seen.append((message, kind))

        async with aiohttp.ClientSession(auto_decompress=False) as http:
            return await relay(http, request, self.upstream + request.path_qs, body, record)


@contextlib.contextmanager
def running_tap(upstream: str) -> Iterator[Tap]:
    """A ``Tap`` in front of ``upstream``, served by its own thread and event loop (so it
    answers while a test blocks on a proxy's start); ``tap.url`` is its MCP URL."""
    tap = Tap(upstream)
    port = free_port()
    tap.url = f"http://127.0.0.1:{port}/mcp"
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(tap.app(), shutdown_timeout=0.5)
    started = threading.Event()

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=serve_forever, name="tap", daemon=True)
    thread.start()
    assert started.wait(10), "the tap did not start"
    try:
        yield tap
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
