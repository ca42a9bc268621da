"""The legacy HTTP+SSE transport (2024-11-05): an SDK SSE client through the proxy to an
SDK server that speaks SSE. The client sees only the proxy's endpoint and session id."""

from __future__ import annotations

import aiohttp
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.conftest import StartBackend, StartProxy
from tests.e2e.test_streamable_proxy import tool_text, whoami

pytestmark = pytest.mark.timeout(90)


async def test_sdk_sse_client_calls_tools_through_the_proxy(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    alpha = start_backend("alpha", transport="sse")
    proxy = start_proxy({"name": "legacy", "transport": "sse", "remote_url": alpha.url})
    async with Client(sse_client(f"{proxy.base}/sse"), mode="legacy") as client:
        assert "hello" in tool_text(await client.call_tool("echo", {"text": "hello"}))
        assert (await whoami(client))["id"] == "alpha"


async def test_endpoint_event_names_the_proxy_not_the_backend(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    alpha = start_backend("alpha", transport="sse")
    proxy = start_proxy({"name": "legacy", "transport": "sse", "remote_url": alpha.url})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/sse") as stream:
        assert stream.status == 200
        first = await stream.content.readuntil(b"\n\n")
    assert first.startswith(b"event: endpoint\ndata: /messages?session_id=")
    assert str(alpha.port).encode() not in first


async def test_message_for_an_unknown_session_is_404(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    alpha = start_backend("alpha", transport="sse")
    proxy = start_proxy({"name": "legacy", "transport": "sse", "remote_url": alpha.url})
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.base}/messages?session_id=nope", json={"jsonrpc": "2.0"}) as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]["code"] == -32001
