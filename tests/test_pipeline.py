"""The request pipeline's stage interface, proven with stages a test adds to the real list:
the proxy app in-process, in front of a real SDK-built MCP server, driven by the official
SDK client. What a stage can do: read the parsed JSON-RPC message (parsed once), refuse a
request before it reaches the backend, and wrap the backend call to see its answer,
SSE events included."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client

from proxyrunner.proxy.errors import RequestRefused
from proxyrunner.proxy.pipeline import Exchange, Next
from proxyrunner.proxy.server import default_stages
from tests.conftest import StartBackend
from tests.helpers import MCP_HEADERS, raw_initialize, serve, tools_call


@dataclass
class Watcher:
    statuses: list[int] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    ended: list[BaseException | None] = field(default_factory=list)
    needle: re.Pattern[bytes] | None = None

    def on_response(self, status: int, headers: Any) -> None:
        self.statuses.append(status)

    def on_message(self, message: Any) -> None:
        self.messages.append(message)

    def on_end(self, error: BaseException | None) -> None:
        self.ended.append(error)


@dataclass
class Recorder:
    """A stage that notes the methods it saw, refuses one tool, and watches answers."""

    name: str = "recorder"
    refused_tool: str = "add"
    seen: list[str] = field(default_factory=list)
    same_message: list[bool] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        message = exchange.message() if isinstance(exchange.body, bytes) and exchange.body else None
        if isinstance(message, dict):
            self.seen.append(str(message.get("method")))
            self.same_message.append(exchange.message() is message)
            params = message.get("params") or {}
            if message.get("method") == "tools/call" and params.get("name") == self.refused_tool:
                raise RequestRefused(f"tool {self.refused_tool} is not allowed here")
        watcher = Watcher()
        self.watchers.append(watcher)
        exchange.watch(watcher)
        self.order.append("before")
        response = await call_next(exchange)
        self.order.append("after")
        return response


@pytest.fixture
async def proxied(start_backend: StartBackend) -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    backend = start_backend("alpha")
    async for url, _ in serve(backend.url, [recorder]):
        yield url, recorder


async def test_a_stage_reads_each_message_parsed_once(proxied: tuple[str, Recorder]) -> None:
    url, recorder = proxied
    async with Client(url, mode="legacy") as client:
        await client.call_tool("echo", {"text": "hi"})
    assert recorder.seen[0] == "initialize"
    assert "tools/call" in recorder.seen
    assert all(recorder.same_message)


async def test_a_stage_refuses_a_request_before_it_reaches_the_backend(
    proxied: tuple[str, Recorder],
) -> None:
    url, recorder = proxied
    async with Client(url, mode="legacy") as client:
        await client.list_tools()
        before = len(recorder.watchers)
        with pytest.raises(Exception, match="tool add is not allowed here"):
            await client.call_tool("add", {"a": 1, "b": 2})
        # The stage refused before calling the rest: nothing after it ran.
        assert len(recorder.watchers) == before
        echoed = await client.call_tool("echo", {"text": "still fine"})
    assert echoed.content[0].text == "still fine"  # type: ignore[union-attr]


async def test_a_refused_request_gets_its_status_and_a_json_rpc_error(
    proxied: tuple[str, Recorder],
) -> None:
    url, _ = proxied
    call = tools_call(7, "add")
    async with aiohttp.ClientSession() as http, http.post(url, json=call, headers=MCP_HEADERS) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == -32600
    assert body["error"]["message"] == "tool add is not allowed here"


async def test_a_stage_wraps_the_backend_call_and_sees_each_sse_event_of_the_answer(
    proxied: tuple[str, Recorder],
) -> None:
    url, recorder = proxied
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        call = tools_call("c1", "echo", text="through the stage")
        with_session = {**MCP_HEADERS, "Mcp-Session-Id": session}
        async with http.post(url, json=call, headers=with_session) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.text()
    watcher = recorder.watchers[-1]
    assert watcher.statuses == [200]
    assert watcher.ended == [None]
    (answer,) = [m for m in watcher.messages if m.get("id") == "c1"]
    assert answer["result"]["content"][0]["text"] == "through the stage"
    # The client got the same events the watcher saw, bytes untouched.
    assert json.dumps(answer["result"]["content"][0]["text"]) in raw
    assert recorder.order[-2:] == ["before", "after"]


async def test_stages_run_in_the_order_of_the_list(start_backend: StartBackend) -> None:
    order: list[str] = []

    @dataclass
    class Mark:
        name: str

        async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
            order.append(self.name)
            return await call_next(exchange)

    backend = start_backend("alpha")
    async for url, parts in serve(backend.url, [Mark("first"), Mark("second")]):
        names = [stage.name for stage in default_stages(parts)]
        assert names == [
            "dns-rebinding guard",
            "body limits",
            "id check",
            "standard-header check",
        ]
        async with aiohttp.ClientSession() as http, http.get(url, headers=MCP_HEADERS) as r:
            await r.read()
    assert order == ["first", "second"]
