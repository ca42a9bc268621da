"""The authorization stage in the real pipeline, in front of a real SDK-built MCP server
(served in-process by uvicorn, so the test sees every call the server runs). A stage
before it stands in for the identity stage and sets ``exchange.principal``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from proxyrunner.authz.cedar import CedarAuthorizer
from proxyrunner.config.authz import read_authz_config
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.principal import Principal
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.proxy.stages.authz import Authorization
from tests.helpers import MCP_HEADERS, serve, tools_call
from tests.procs import free_port

POLICIES = [
    'permit(principal, action == Action::"call_tool", resource == Tool::"echo");',
    'permit(principal, action == Action::"call_tool", resource) '
    'when { principal.claim_role == "admin" };',
    'permit(principal, action == Action::"get_prompt", resource == Prompt::"greet");',
]


@dataclass
class Identity:
    """Stands in for the identity stage: who the request comes from."""

    principal: Principal
    name: str = "identity (test)"

    def check(self, exchange: Exchange) -> None:
        exchange.principal = self.principal


@contextlib.asynccontextmanager
async def sdk_server(json_response: bool) -> AsyncIterator[tuple[str, list[str]]]:
    """A real MCP server (stateless, so no initialize is needed); yields its URL and the
    tools it ran."""
    ran: list[str] = []
    server = MCPServer("authz-test", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        ran.append("echo")
        return text

    @server.tool()
    def add(a: float, b: float) -> float:
        ran.append("add")
        return a + b

    @server.prompt()
    def greet() -> str:
        return "hello"

    @server.prompt()
    def secret() -> str:
        return "psst"

    port = free_port()
    app = server.streamable_http_app(json_response=json_response, stateless_http=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    runner = uvicorn.Server(config)
    # Its own thread and event loop: the SDK's tasks are not the test loop's to clean up.
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:  # noqa: ASYNC110 - set by another thread, not awaitable
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp", ran
    finally:
        runner.should_exit = True
        await asyncio.to_thread(thread.join, 10)


@contextlib.asynccontextmanager
async def proxied(json_response: bool, role: str) -> AsyncIterator[tuple[str, list[str], Any]]:
    authorizer = CedarAuthorizer.from_config(
        read_authz_config(
            {"version": "1.0", "type": "cedarv1", "cedar": {"policies": POLICIES}}, "authz_config"
        )
    )
    alice = Principal("https://idp", "alice", claims={"sub": "alice", "role": role})
    async with sdk_server(json_response) as (backend, ran):
        metrics = Metrics()  # the stage's own: serve() builds the proxy's inside
        stages = [Identity(alice), Authorization(authorizer, metrics, get_logger())]
        async for url, _ in serve(backend, stages):
            yield url, ran, metrics
            break


async def post(url: str, message: Any) -> tuple[int, str, Any]:
    """One request; (status, content type, the JSON-RPC message(s) of the answer)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=message, headers=MCP_HEADERS) as r,
    ):
        kind = r.headers.get("Content-Type", "")
        text = await r.text()
    if kind.startswith("text/event-stream"):
        data = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
        return r.status, kind, [json.loads(d) for d in data if d]
    return r.status, kind, json.loads(text) if text else None


def refusals(metrics: Metrics) -> float:
    return float(metrics.auth_refusals.labels("policy_denied")._value.get())


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
async def test_allowed_calls_pass_and_denied_ones_never_reach_the_backend(
    json_response: bool,
) -> None:
    async with proxied(json_response, "user") as (url, ran, parts):
        status, _, answer = await post(url, tools_call(1, "echo", text="hi"))
        assert status == 200, answer
        assert ran == ["echo"]
        status, kind, answer = await post(url, tools_call(2, "add", a=1, b=2))
        assert status == 403
        assert kind.startswith("application/json")
        assert answer["id"] == 2
        assert answer["error"] == {"code": 403, "message": "tools/call of 'add' denied by policy"}
        assert ran == ["echo"]  # the backend never saw the denied call
        assert refusals(parts) == 1
        # A batch is refused when any element is.
        status, _, answer = await post(url, [tools_call(3, "echo", text="x"), tools_call(4, "add")])
        assert status == 403
        assert answer["id"] == 4
        assert ran == ["echo"]


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
async def test_list_answers_are_filtered(json_response: bool) -> None:
    async with proxied(json_response, "user") as (url, _, _parts):
        status, kind, answer = await post(
            url, {"jsonrpc": "2.0", "id": "t", "method": "tools/list"}
        )
        assert status == 200
        assert kind.startswith("application/json" if json_response else "text/event-stream")
        (message,) = answer if isinstance(answer, list) else [answer]
        assert [tool["name"] for tool in message["result"]["tools"]] == ["echo"]
        _, _, answer = await post(url, {"jsonrpc": "2.0", "id": 9, "method": "prompts/list"})
        (message,) = answer if isinstance(answer, list) else [answer]
        assert [p["name"] for p in message["result"]["prompts"]] == ["greet"]


async def test_an_admin_sees_and_calls_everything() -> None:
    async with proxied(True, "admin") as (url, ran, _parts):
        _, _, answer = await post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert sorted(tool["name"] for tool in answer["result"]["tools"]) == ["add", "echo"]
        status, _, answer = await post(url, tools_call(2, "add", a=1, b=2))
        assert status == 200, answer
        assert ran == ["add"]
