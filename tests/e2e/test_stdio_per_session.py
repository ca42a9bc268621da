"""``stdio_isolation: per-session``: each session gets a stdio server process of its own,
against a real proxy running the SDK-built demo as its children, with the official SDK
client and raw HTTP where the test needs to see statuses and headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from mcp import Client

from tests.conftest import StartProxy
from tests.helpers import (
    DEMO_STDIO,
    INIT,
    MCP_HEADERS,
    answer_of,
    metric,
    raw_initialize,
    tool_text,
    tools_call,
    until_metric,
    whoami,
)
from tests.procs import eventually

PER_SESSION: dict[str, Any] = {**DEMO_STDIO, "stdio_isolation": "per-session"}
CHILDREN = "proxyrunner_stdio_children"


def gone(pid: int) -> bool:
    """Whether the process has ended and been reaped (a zombie still has /proc/<pid>)."""
    return not Path(f"/proc/{pid}").exists()


async def pid_of(http: aiohttp.ClientSession, url: str, session_id: str) -> int:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
    async with http.post(url, json=tools_call(1, "whoami"), headers=headers) as response:
        assert response.status == 200, await response.text()
        answer = await answer_of(response)
    pid: int = json.loads(answer["result"]["content"][0]["text"])["pid"]
    return pid


async def test_two_sdk_sessions_are_served_by_different_processes_that_share_no_state(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(PER_SESSION)
    async with Client(proxy.url, mode="legacy") as a, Client(proxy.url, mode="legacy") as b:
        a_pid, b_pid = (await whoami(a))["pid"], (await whoami(b))["pid"]
        assert a_pid != b_pid
        assert tool_text(await a.call_tool("remember", {"note": "A's secret"})) == "A's secret"
        assert tool_text(await b.call_tool("remember", {"note": "B's note"})) == "B's note"
        await until_metric(proxy, CHILDREN, at_least=2, at_most=2)
    # The SDK client deletes its session on exit: both processes end with them.
    await until_metric(proxy, CHILDREN, at_most=0)
    await eventually(lambda: gone(a_pid) and gone(b_pid), 10.0, "both children to exit")


async def test_the_shared_default_keeps_one_process_whose_state_every_session_sees(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    async with Client(proxy.url, mode="legacy") as a, Client(proxy.url, mode="legacy") as b:
        assert (await whoami(a))["pid"] == (await whoami(b))["pid"]
        await a.call_tool("remember", {"note": "A's secret"})
        seen = tool_text(await b.call_tool("remember", {"note": "B's note"}))
    assert seen == "A's secret\nB's note"


async def test_deleting_a_session_stops_its_process(start_proxy: StartProxy) -> None:
    proxy = start_proxy(PER_SESSION)
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        pid = await pid_of(http, proxy.url, session_id)
        assert not gone(pid)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.delete(proxy.url, headers=headers) as response:
            assert response.status in (200, 204)
        await eventually(lambda: gone(pid), 10.0, "the session's process to exit")
        await until_metric(proxy, CHILDREN, at_most=0)
        async with http.post(proxy.url, json=tools_call(2, "whoami"), headers=headers) as response:
            assert response.status == 404


async def test_an_initialize_past_stdio_max_sessions_gets_503_with_retry_after(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy({**PER_SESSION, "stdio_max_sessions": 2})
    async with aiohttp.ClientSession() as http:
        first = await raw_initialize(http, proxy.url)
        await raw_initialize(http, proxy.url)
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            body = await response.json(content_type=None)
        assert body["jsonrpc"] == "2.0"
        assert body["error"]["code"] == -32002
        assert await metric(proxy, "proxyrunner_stdio_sessions_refused_total") == 1
        # A freed place is taken again.
        headers = {**MCP_HEADERS, "Mcp-Session-Id": first}
        async with http.delete(proxy.url, headers=headers) as response:
            assert response.status in (200, 204)
        await until_metric(proxy, CHILDREN, at_most=1)
        await raw_initialize(http, proxy.url)


async def test_an_idle_sessions_process_is_stopped_after_stdio_idle_timeout(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy({**PER_SESSION, "stdio_idle_timeout": "1s"})
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        pid = await pid_of(http, proxy.url, session_id)
        await until_metric(proxy, CHILDREN, at_least=1, at_most=1)
        await until_metric(proxy, CHILDREN, at_most=0, timeout=10.0)
        await eventually(lambda: gone(pid), 10.0, "the idle session's process to exit")


async def test_shutdown_stops_every_sessions_process(start_proxy: StartProxy) -> None:
    proxy = start_proxy(PER_SESSION)
    async with aiohttp.ClientSession() as http:
        pids = [
            await pid_of(http, proxy.url, await raw_initialize(http, proxy.url)) for _ in range(2)
        ]
    assert len(set(pids)) == 2
    await until_metric(proxy, CHILDREN, at_least=2, at_most=2)
    proxy.stop()
    await eventually(lambda: all(gone(pid) for pid in pids), 10.0, "every child to exit")
