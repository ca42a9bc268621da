"""The stdio bridge in-process, in front of a real stdio MCP server (the SDK-built demo as
a child process): the multiplexing rules that the end-to-end tests do not reach."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import structlog

from proxyrunner.backends.channel import MAX_LINE, ProcessChannel
from proxyrunner.backends.stdio import StdioBridge
from tests.helpers import INIT, MCP_HEADERS, raw_initialize, tools_call
from tests.procs import eventually

LOG = structlog.get_logger().bind(test="stdio-bridge")
DEMO = (sys.executable, "-m", "proxyrunner.demo")


@contextlib.asynccontextmanager
async def bridged(command: Sequence[str] = DEMO) -> AsyncIterator[tuple[StdioBridge, str]]:
    """A bridge serving a stdio server child; yields it and its /mcp URL."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "MCP_TRANSPORT": "stdio"},
        start_new_session=True,
        limit=MAX_LINE,  # as the local runtime starts its stdio children
    )
    bridge = StdioBridge("child", LOG)
    await bridge.start()
    serving = asyncio.get_running_loop().create_task(bridge.serve(ProcessChannel(process, LOG)))
    try:
        await bridge.wait_attached()
        yield bridge, f"http://127.0.0.1:{bridge.port}/mcp"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        await serving
        await bridge.close()


def headers(session: str | None) -> dict[str, str]:
    base = {**MCP_HEADERS, "Accept": "application/json"}
    return {**base, "Mcp-Session-Id": session} if session else base


async def post(
    http: aiohttp.ClientSession, url: str, session: str | None, body: object
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers(session)) as response:
        text = await response.read()
        return response.status, (await response.json() if text else None)


async def test_a_batch_gets_every_answer_under_its_own_id() -> None:
    async with bridged() as (_, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        status, answers = await post(
            http,
            url,
            session,
            [tools_call("a", "echo", text="one"), tools_call("b", "add", a=1, b=1)],
        )
    assert status == 200
    assert [a["id"] for a in answers] == ["a", "b"]
    assert answers[0]["result"]["content"][0]["text"] == "one"
    assert answers[1]["result"]["content"][0]["text"] == "2.0"


async def test_a_cancelled_request_ends_at_once_with_an_error_and_the_server_stops_it() -> None:
    async with bridged() as (bridge, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        call = asyncio.create_task(post(http, url, session, tools_call(9, "sleep", seconds=30)))
        await eventually(lambda: bridge.inflight == 1, 10, "the call to reach the server")
        cancel = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": 9, "reason": "user pressed stop"},
        }
        assert (await post(http, url, session, cancel))[0] == 202
        status, answer = await asyncio.wait_for(call, 10)
        assert status == 200
        assert answer["id"] == 9
        assert answer["error"]["code"] == -32800
        assert bridge.inflight == 0
        # The server is still fine and answers the session's next call.
        status, answer = await post(http, url, session, tools_call(10, "echo", text="next"))
        assert answer["result"]["content"][0]["text"] == "next"


async def test_deleting_a_session_ends_its_calls_and_forgets_it() -> None:
    async with bridged() as (bridge, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        call = asyncio.create_task(post(http, url, session, tools_call(1, "sleep", seconds=30)))
        await eventually(lambda: bridge.inflight == 1, 10, "the call to reach the server")
        async with http.delete(url, headers=headers(session)) as response:
            assert response.status == 200
        status, answer = await asyncio.wait_for(call, 10)
        assert answer["error"]["code"] == -32800
        status, answer = await post(http, url, session, tools_call(2, "echo", text="x"))
        assert status == 404
        assert answer["error"]["code"] == -32001


async def test_stdout_lines_that_are_not_json_rpc_are_ignored() -> None:
    noisy = ("sh", "-c", f"echo 'server starting...'; exec {sys.executable} -m proxyrunner.demo")
    async with bridged(noisy) as (_, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        status, answer = await post(http, url, session, tools_call(1, "echo", text="fine"))
    assert status == 200
    assert answer["result"]["content"][0]["text"] == "fine"


async def test_requests_without_a_session_reach_the_initialized_server() -> None:
    async with bridged() as (_, url), aiohttp.ClientSession() as http:
        await raw_initialize(http, url)
        status, answer = await post(
            http, url, None, {"jsonrpc": "2.0", "id": "s", "method": "tools/list"}
        )
    assert status == 200
    assert answer["id"] == "s"
    assert "echo" in {tool["name"] for tool in answer["result"]["tools"]}


async def test_every_initialize_gets_the_servers_answer_and_a_session_of_its_own() -> None:
    async with bridged() as (_, url), aiohttp.ClientSession() as http:
        answers, sessions = [], set()
        for request_id in range(3):
            async with http.post(url, json={**INIT, "id": request_id}, headers=headers(None)) as r:
                assert r.status == 200
                answers.append(await r.json())
                sessions.add(r.headers["Mcp-Session-Id"])
    assert len(sessions) == 3
    assert [a["id"] for a in answers] == [0, 1, 2]
    assert all(a["result"] == answers[0]["result"] for a in answers)
    assert answers[0]["result"]["serverInfo"]["name"] == "proxyrunner-demo"


async def test_a_server_line_nested_too_deeply_to_parse_is_skipped_not_fatal() -> None:
    # Prints a line json.loads cannot take (RecursionError), then serves normally.
    noisy = (
        sys.executable,
        "-c",
        "import os, sys; sys.stdout.write('[' * 100000 + ']' * 100000 + '\\n');"
        " sys.stdout.flush(); os.execv(sys.executable, [sys.executable, '-m', 'proxyrunner.demo'])",
    )
    async with bridged(noisy) as (bridge, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        status, answer = await post(http, url, session, tools_call(1, "echo", text="fine"))
        assert status == 200
        assert answer["result"]["content"][0]["text"] == "fine"
        assert bridge.attached


async def test_the_bridge_refuses_a_host_a_rebinding_page_would_send() -> None:
    # Its loopback port could be found by a page scanning 127.0.0.1.
    async with bridged() as (_, url), aiohttp.ClientSession() as http:
        async with http.post(
            url, json=INIT, headers={**headers(None), "Host": "evil.example.com"}
        ) as response:
            assert response.status == 421
        session = await raw_initialize(http, url)
        assert session


async def test_the_bridge_refuses_odd_ids_with_400_not_500() -> None:
    # Its maps are keyed by id: an unhashable one used to be a 500 and a traceback.
    async with bridged() as (bridge, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        for odd in ([1, 2], {}, 1.5, True, "x" * 257):
            for body in ({"jsonrpc": "2.0", "id": odd, "result": {}}, tools_call(odd)):
                status, answer = await post(http, url, session, body)
                assert status == 400, (odd, answer)
                assert answer["id"] is None
                assert answer["error"]["code"] == -32600
        assert bridge.attached


async def test_a_server_message_with_an_odd_id_is_dropped_not_fatal() -> None:
    # A server (third-party code) writes ids the routing maps cannot key, then serves.
    lines = "\\n".join(
        [
            '{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":[1]}}',
            '{"jsonrpc":"2.0","id":{"a":1},"method":"roots/list"}',
        ]
    )
    odd = (
        sys.executable,
        "-c",
        f"import os, sys; sys.stdout.write('{lines}\\n'); sys.stdout.flush();"
        " os.execv(sys.executable, [sys.executable, '-m', 'proxyrunner.demo'])",
    )
    async with bridged(odd) as (bridge, url), aiohttp.ClientSession() as http:
        session = await raw_initialize(http, url)
        status, answer = await post(http, url, session, tools_call(1, "echo", text="fine"))
        assert status == 200
        assert answer["result"]["content"][0]["text"] == "fine"
        assert bridge.attached
