"""stdio servers behind the proxy (`transport: stdio`): the official SDK client talks
streamable HTTP (or legacy SSE) to proxyrunner, which runs the server as a child process
and bridges its stdin and stdout. Real servers: the SDK-built demo and the reference
server-everything from npm."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from mcp import Client, types
from mcp.client.sse import sse_client

from proxyrunner.mcp.revisions import HANDSHAKE_REVISIONS
from tests.conftest import StartProxy
from tests.helpers import (
    DEMO_STDIO,
    EVERYTHING,
    MCP_HEADERS,
    check_a_session_outlives_its_killed_child,
    raw_initialize,
    raw_session,
    tool_text,
    tools_call,
)


async def post_json(
    http: aiohttp.ClientSession, url: str, session_id: str, message: object
) -> tuple[int, Any]:
    headers = {**MCP_HEADERS, "Accept": "application/json", "Mcp-Session-Id": session_id}
    async with http.post(url, json=message, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_sdk_client_lists_and_calls_tools_of_a_stdio_server(start_proxy: StartProxy) -> None:
    proxy = start_proxy(DEMO_STDIO)
    async with Client(proxy.url, mode="legacy") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "add", "whoami", "sleep"} <= names
        assert tool_text(await client.call_tool("echo", {"text": "over stdio"})) == "over stdio"
        assert tool_text(await client.call_tool("add", {"a": 2, "b": 3})) == "5.0"


@pytest.mark.node
async def test_reference_everything_server_works_over_stdio(start_proxy: StartProxy) -> None:
    if not EVERYTHING.exists():
        pytest.fail(f"{EVERYTHING} is missing: run `npm ci` in tests/node (scripts/test does)")
    proxy = start_proxy(
        {"name": "everything", "transport": "stdio", "cmd_args": [str(EVERYTHING), "stdio"]}
    )
    async with Client(proxy.url, mode="legacy") as client:
        result = await client.call_tool("echo", {"message": "hello from stdio"})
        assert "hello from stdio" in tool_text(result)


async def test_clients_sharing_one_stdio_server_get_their_own_answers_for_equal_ids(
    start_proxy: StartProxy,
) -> None:
    """Two sessions multiplexed onto one stdio conversation both use JSON-RPC id 1 at the
    same time: the bridge keeps them apart."""
    proxy = start_proxy(DEMO_STDIO)
    async with aiohttp.ClientSession() as http:
        sessions = [await raw_initialize(http, proxy.url) for _ in range(2)]
        slow = post_json(http, proxy.url, sessions[0], tools_call(1, "sleep", seconds=0.5))
        fast = post_json(http, proxy.url, sessions[1], tools_call(1, "echo", text="second"))
        (slow_status, slow_answer), (fast_status, fast_answer) = await asyncio.gather(slow, fast)
    assert (slow_status, fast_status) == (200, 200)
    assert slow_answer["id"] == fast_answer["id"] == 1
    assert slow_answer["result"]["content"][0]["text"] == "slept 0.5s"
    assert fast_answer["result"]["content"][0]["text"] == "second"


async def test_a_crashed_stdio_server_is_restarted_and_the_session_goes_on(
    start_proxy: StartProxy,
) -> None:
    await check_a_session_outlives_its_killed_child(start_proxy(DEMO_STDIO))


async def test_a_stdio_server_is_served_as_legacy_sse_when_proxy_mode_asks(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy({**DEMO_STDIO, "proxy_mode": "sse"})
    async with Client(sse_client(f"{proxy.base}/sse"), mode="legacy") as client:
        assert tool_text(await client.call_tool("echo", {"text": "legacy"})) == "legacy"


async def test_malformed_and_unknown_session_requests_get_json_rpc_errors(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    async with aiohttp.ClientSession() as http:
        status, answer = await post_json(
            http, proxy.url, "no-such-session", tools_call(7, "echo", text="x")
        )
        assert status == 404
        assert answer["error"]["code"] == -32001
        session_id = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.post(proxy.url, data=b"{not json", headers=headers) as response:
            assert response.status == 400
            body = json.loads(await response.read())
        assert body["error"]["code"] == -32700


@pytest.mark.node
async def test_progress_and_server_requests_reach_the_client_that_caused_them(
    start_proxy: StartProxy,
) -> None:
    """server-everything reports progress on a long operation and asks the client for an
    LLM sample mid-call: over the shared stdio conversation both must reach the session
    whose call caused them, with its own progress token."""
    if not EVERYTHING.exists():
        pytest.fail(f"{EVERYTHING} is missing: run `npm ci` in tests/node (scripts/test does)")
    proxy = start_proxy(
        {"name": "everything", "transport": "stdio", "cmd_args": [str(EVERYTHING), "stdio"]}
    )
    asked: list[str] = []

    async def sample(
        context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="canned sample"),
            model="test-model",
        )

    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with (
        Client(proxy.url, mode="legacy", sampling_callback=sample) as client,
        Client(proxy.url, mode="legacy") as bystander,
    ):
        result = await client.call_tool(
            "trigger-long-running-operation",
            {"duration": 0.3, "steps": 3},
            progress_callback=on_progress,
        )
        assert "completed" in tool_text(result)
        assert [done for done, _ in progress] == [1, 2, 3]
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hi"})
        assert "canned sample" in tool_text(sampled)
        assert len(asked) == 1
        assert "hi" in asked[0]
        # The other session shares the server and is unaffected.
        assert "still here" in tool_text(
            await bystander.call_tool("echo", {"message": "still here"})
        )


# A few hundred kilobytes of brackets: json.loads raises RecursionError (not ValueError) on
# it, which once reached aiohttp as a 500 with a traceback.
DEEPLY_NESTED = b"[" * 100_000 + b"]" * 100_000


async def test_deeply_nested_json_is_a_parse_error_wherever_the_proxy_reads_it(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    async with raw_session(proxy.url) as (http, session_id):
        attempts = {
            # Looks like an initialize: the proxy parses it to route it.
            "initialize": (b'{"method":"initialize","p":' + DEEPLY_NESTED + b"}", {}),
            # Claims 2026-07-28: the proxy parses it to check the standard headers.
            "2026-07-28": (
                DEEPLY_NESTED,
                {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"},
            ),
            # Forwarded as is: the stdio bridge parses it.
            "stateless": (DEEPLY_NESTED, {}),
            "in session": (DEEPLY_NESTED, {"Mcp-Session-Id": session_id}),
        }
        for where, (body, extra) in attempts.items():
            async with http.post(
                proxy.url, data=body, headers={**MCP_HEADERS, **extra}
            ) as response:
                assert response.status == 400, where
                assert (await response.json())["error"]["code"] == -32700, where
        async with http.post(
            proxy.url,
            json=tools_call(1, "echo", text="still here"),
            headers={**MCP_HEADERS, "Mcp-Session-Id": session_id},
        ) as response:
            assert "still here" in await response.text()
    assert "Traceback" not in proxy.output()


async def test_a_2026_client_first_cannot_lock_older_clients_out_of_a_stdio_server(
    start_proxy: StartProxy,
) -> None:
    # A stdio server lives in one era, set by its first message. Served 2026-07-28 first,
    # it would refuse every initialize after: the bridge keeps it in the handshake era,
    # and a negotiating client falls back to initialize.
    proxy = start_proxy(DEMO_STDIO)
    async with Client(proxy.url, mode="auto") as modern_first:
        assert modern_first.protocol_version in HANDSHAKE_REVISIONS
        assert tool_text(await modern_first.call_tool("echo", {"text": "a"})) == "a"
    async with Client(proxy.url, mode="legacy") as older:
        assert tool_text(await older.call_tool("echo", {"text": "b"})) == "b"


async def test_a_2026_request_to_a_stdio_server_is_told_the_revisions_it_speaks(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    message = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}
    headers = {
        **MCP_HEADERS,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/list",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url, json=message, headers=headers) as response,
    ):
        assert response.status == 400
        body = await response.json()
    assert body["id"] == 3
    assert body["error"]["code"] == -32022
    assert body["error"]["data"] == {
        "supported": list(HANDSHAKE_REVISIONS),
        "requested": "2026-07-28",
    }
