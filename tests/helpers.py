"""What tests share: the MCP messages and headers a raw client sends, readers of what the
SDK client and the proxy answer, a hand-written backend, and the npm reference servers.

Tests import shared helpers from here (or from procs.py for processes), never from
another test module: importing a test module runs its collection-time code and ties two
test files together.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
from aiohttp import web
from mcp import Client

from tests.procs import Proxy, eventually, http_status

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
