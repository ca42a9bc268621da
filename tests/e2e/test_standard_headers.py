"""2026-07-28 standard headers through the proxy.

The SDK client (PyPI mcp, which speaks 2026-07-28 and sends the headers) against the
SDK-built demo proves that requests a real client sends are never refused. A backend that
checks nothing and counts what reaches it proves that requests whose headers disagree with
their body never get there: the proxy answers them itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from mcp import Client

from tests.conftest import DemoProxy, StartProxy
from tests.helpers import (
    DEMO_STDIO,
    MCP_HEADERS,
    META_2026,
    MODERN,
    raw_session,
    tool_text,
    tools_call,
)
from tests.procs import Proxy
from tests.raw_backend import RawBackend, ok_response, read_message


def echo_call(request_id: int, text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}, "_meta": META_2026},
    }


async def post(
    http: aiohttp.ClientSession, url: str, message: object, **headers: str
) -> tuple[int, Any]:
    sent = {**MCP_HEADERS, "Accept": "application/json, text/event-stream", **headers}
    async with http.post(url, data=json.dumps(message), headers=sent) as response:
        text = await response.text()
    if text.startswith("event:") or text.startswith("data:") or "\ndata:" in text:
        data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        return response.status, json.loads(data[-1])
    return response.status, json.loads(text) if text else None


def modern(**headers: str) -> dict[str, str]:
    return {"MCP-Protocol-Version": MODERN, **headers}


class CountingBackend:
    """A 2026-07-28 backend that checks nothing: it answers every POST with a canned
    result carrying the request's id, and counts the POSTs that reach it."""

    def __init__(self) -> None:
        self.posts = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_message(reader)
            if head.startswith(b"POST"):
                self.posts += 1
                request_id = json.loads(body).get("id")
                result = {"jsonrpc": "2.0", "id": request_id, "result": {"content": []}}
                writer.write(ok_response(json.dumps(result).encode()))
            else:
                writer.write(ok_response(b"up"))  # the readiness probe
            await writer.drain()


@asynccontextmanager
async def proxy_before_counting_backend(
    start_proxy: StartProxy,
) -> AsyncIterator[tuple[Proxy, CountingBackend]]:
    counting = CountingBackend()
    async with RawBackend(counting.handle) as backend:
        url = f"http://127.0.0.1:{backend.port}/mcp"
        # The backend runs on this loop: start the proxy (which probes it) off the loop.
        proxy = await asyncio.to_thread(start_proxy, {"name": "demo", "remote_url": url})
        yield proxy, counting


async def test_a_2026_sdk_client_passes_the_header_check_through_the_proxy(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with Client(proxy.url, mode="auto") as client:
        assert client.protocol_version == MODERN
        assert "echo" in {tool.name for tool in (await client.list_tools()).tools}
        # tools/call is name-bearing: it only passes with Mcp-Name mirroring the body;
        # non-ASCII arguments do not travel in headers, names may (base64).
        assert tool_text(await client.call_tool("echo", {"text": "héllo wörld"})) == "héllo wörld"


async def test_a_request_whose_headers_disagree_with_its_body_never_reaches_the_backend(
    start_proxy: StartProxy,
) -> None:
    async with (
        proxy_before_counting_backend(start_proxy) as (proxy, backend),
        aiohttp.ClientSession() as http,
    ):
        matching = modern(**{"Mcp-Method": "tools/call", "Mcp-Name": "echo"})
        status, body = await post(http, proxy.url, echo_call(1, "ok"), **matching)
        assert (status, body["id"], backend.posts) == (200, 1, 1)
        refusals = {
            "Mcp-Name": modern(**{"Mcp-Method": "tools/call", "Mcp-Name": "whoami"}),
            "Mcp-Method": modern(**{"Mcp-Method": "tools/list", "Mcp-Name": "echo"}),
            "Mcp-Name header is missing": modern(**{"Mcp-Method": "tools/call"}),
            "MCP-Protocol-Version": {
                "MCP-Protocol-Version": "2027-01-01",
                "Mcp-Method": "tools/call",
                "Mcp-Name": "echo",
            },
        }
        for request_id, (named, headers) in enumerate(refusals.items(), start=2):
            status, body = await post(http, proxy.url, echo_call(request_id, "no"), **headers)
            assert status == 400, (named, body)
            assert body["error"]["code"] == -32020
            assert named in body["error"]["message"]
            assert body["id"] == request_id
        assert backend.posts == 1


async def test_a_base64_wrapped_name_matches_the_name_it_encodes(start_proxy: StartProxy) -> None:
    async with (
        proxy_before_counting_backend(start_proxy) as (proxy, backend),
        aiohttp.ClientSession() as http,
    ):
        headers = modern(**{"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?ZWNobw==?="})
        status, body = await post(http, proxy.url, echo_call(1, "wrapped"), **headers)
        assert (status, body["id"]) == (200, 1)
        broken = modern(**{"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?%%%?="})
        status, body = await post(http, proxy.url, echo_call(2, "no"), **broken)
        assert (status, body["error"]["code"]) == (400, -32020)
        assert backend.posts == 1


async def test_earlier_revisions_do_not_define_the_headers_and_pass_them_through(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    async with raw_session(proxy.url) as (http, session_id):
        status, body = await post(
            http,
            proxy.url,
            tools_call(5, "echo", text="old"),
            **{
                "Mcp-Session-Id": session_id,
                "MCP-Protocol-Version": "2025-06-18",
                "Mcp-Name": "something-else",
            },
        )
        assert status == 200, body
        assert body["result"]["content"][0]["text"] == "old"


async def test_an_http_backend_behind_the_proxy_gets_the_same_answer_for_a_mismatch(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        headers = modern(**{"Mcp-Method": "tools/call", "Mcp-Name": "whoami"})
        status, body = await post(http, proxy.url, echo_call(9, "no"), **headers)
        assert (status, body["error"]["code"], body["id"]) == (400, -32020, 9)
        async with Client(proxy.url, mode="auto") as client:
            assert tool_text(await client.call_tool("echo", {"text": "fine"})) == "fine"


async def test_a_session_header_on_a_2026_request_is_ignored_not_looked_up(
    demo_proxy: DemoProxy,
) -> None:
    # The revision has no sessions: a stray Mcp-Session-Id must not turn into a 404.
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        headers = modern(
            **{"Mcp-Method": "tools/call", "Mcp-Name": "echo", "Mcp-Session-Id": "stale-id"}
        )
        status, body = await post(http, proxy.url, echo_call(1, "sessionless"), **headers)
    assert status == 200, body
    assert body["result"]["content"][0]["text"] == "sessionless"
