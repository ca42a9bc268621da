"""Hostile clients against real proxies: what a client may send must never reach past the
proxy as something else, crash it, or leak what other parties trust it with.

Every case here was first reproduced against a live proxy on loopback (issue 10)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import DemoProxy, StartProxy
from tests.helpers import DEMO_STDIO, MCP_HEADERS, answer_of, raw_initialize, tools_call

pytestmark = pytest.mark.timeout(90)

# --------------------------------------------------------------------- odd JSON-RPC ids

ODD_IDS: list[Any] = [[1, 2], {}, {"a": 1}, 1.5, 1e3, True, False, "x" * 257, 2**63]


def _kinds(odd: Any) -> list[tuple[str, Any]]:
    """What a client can put an odd id in: a response, a request, a batch member."""
    return [
        ("response", {"jsonrpc": "2.0", "id": odd, "result": {}}),
        ("request", {"jsonrpc": "2.0", "id": odd, "method": "ping"}),
        ("batch member", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, tools_call(odd)]),
    ]


async def _refused_as_invalid(response: aiohttp.ClientResponse, what: str) -> None:
    assert response.status == 400, f"{what}: {response.status} {await response.text()}"
    answer = await response.json()
    assert answer["id"] is None, what
    assert answer["error"]["code"] == -32600, what


async def _check_odd_ids_refused(http: aiohttp.ClientSession, url: str, session: str) -> None:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
    for odd in ODD_IDS:
        for kind, body in _kinds(odd):
            async with http.post(url, json=body, headers=headers) as response:
                await _refused_as_invalid(response, f"{kind} with id {odd!r:.40}")


async def test_odd_ids_get_400_invalid_request_through_the_streamable_proxy(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        await _check_odd_ids_refused(http, proxy.url, await raw_initialize(http, proxy.url))


async def test_odd_ids_get_400_invalid_request_not_500_in_front_of_a_stdio_server(
    start_proxy: StartProxy,
) -> None:
    # The bridge keyed a map with the id: an array there was a 500 and a traceback.
    proxy = start_proxy(DEMO_STDIO)
    async with aiohttp.ClientSession() as http:
        await _check_odd_ids_refused(http, proxy.url, await raw_initialize(http, proxy.url))
    assert "Traceback" not in proxy.output()


async def test_odd_ids_get_400_invalid_request_on_legacy_message_posts(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(transport="sse")
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/sse") as stream:
        endpoint = (await stream.content.readuntil(b"\n\n")).split(b"data: ", 1)[1].strip()
        url = f"{proxy.base}{endpoint.decode()}"
        for odd in ODD_IDS:
            for kind, body in _kinds(odd):
                async with http.post(url, json=body) as response:
                    await _refused_as_invalid(response, f"legacy {kind} with id {odd!r:.40}")


async def test_ids_mcp_allows_and_id_keys_inside_params_pass(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        for good in ["y" * 256, -(2**63), 2**63 - 1, 7]:
            call = tools_call(good, text="fine")
            call["params"]["_meta"] = {"id": {"nested": [1.5]}}  # not the message's id
            async with http.post(proxy.url, json=call, headers=headers) as response:
                assert response.status == 200, await response.text()
                answer = await answer_of(response)
            assert answer["id"] == good
            assert answer["result"]["content"][0]["text"] == "fine"
