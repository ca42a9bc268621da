"""Graceful drain on SIGTERM: readiness fails at once, nothing in flight is lost, streams
end with a reconnect hint, and the process exits 0 within drain_timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time

import aiohttp
import pytest
from mcp import Client

from tests.balancer import balancer
from tests.conftest import StartBackend, StartProxy
from tests.helpers import MCP_HEADERS, raw_initialize, tool_text
from tests.procs import Proxy, eventually, http_status
from tests.redis_server import RedisServer

DRAIN = {"drain_delay": "1s", "drain_timeout": "10s"}


async def inflight(proxy: Proxy) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    match = re.search(r"^proxyrunner_inflight_requests (\S+)$", text, re.MULTILINE)
    assert match is not None
    return int(float(match.group(1)))


async def until_inflight_grows(proxy: Proxy, baseline: int) -> None:
    """Wait until one more request than ``baseline`` is in flight at the proxy."""
    deadline = time.monotonic() + 10
    while await inflight(proxy) <= baseline:
        assert time.monotonic() < deadline, "the request never reached the proxy"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_sigterm_lets_a_long_tool_call_finish_and_exits_0(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = start_backend("alpha")
    proxy = start_proxy({"name": "demo", "remote_url": backend.url, **DRAIN})
    client = Client(proxy.url, mode="legacy")
    await client.__aenter__()
    try:
        # call_tool validates structured output against the tool's schema, listing the
        # tools first if it has not: do that now, while there is a proxy to answer.
        await client.list_tools()
        baseline = await inflight(proxy)
        call = asyncio.create_task(client.call_tool("sleep", {"seconds": 3}))
        await until_inflight_grows(proxy, baseline)
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 2, "readyz 503")
        assert http_status(f"{proxy.base}/health") == 200
        result = await call
        assert not result.is_error
        assert tool_text(result) == "slept 3s"
    finally:
        # The only replica is gone by now: the client's closing DELETE cannot connect.
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
    code = await asyncio.to_thread(proxy.wait, 15)
    assert code == 0
    assert time.monotonic() - signalled <= 10 + 1
    drained = [e for e in proxy.log_events() if e.get("event") == "drained"]
    assert drained
    assert drained[0]["cancelled"] == 0


@pytest.mark.timeout(60)
async def test_new_connections_are_served_during_the_drain_delay(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = start_backend("alpha")
    proxy = start_proxy(
        {"name": "demo", "remote_url": backend.url, "drain_delay": "3s", "drain_timeout": "10s"}
    )
    proxy.signal(signal.SIGTERM)
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 2, "readyz 503")
    async with Client(proxy.url, mode="legacy") as client:
        assert "still here" in tool_text(await client.call_tool("echo", {"text": "still here"}))
    assert await asyncio.to_thread(proxy.wait, 15) == 0


@pytest.mark.timeout(60)
async def test_open_event_streams_end_with_a_retry_hint(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = start_backend("alpha")
    proxy = start_proxy({"name": "demo", "remote_url": backend.url, **DRAIN})
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        headers = {
            "Accept": "text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-06-18",
        }
        async with http.get(proxy.url, headers=headers) as stream:
            assert stream.status == 200
            assert stream.content_type == "text/event-stream"
            proxy.signal(signal.SIGTERM)
            received = await asyncio.wait_for(stream.content.read(), timeout=10)
        assert re.search(rb"(^|\n)retry: \d+\n\n$", received), received
    assert await asyncio.to_thread(proxy.wait, 15) == 0


@pytest.mark.timeout(60)
async def test_a_second_signal_stops_at_once(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = start_backend("alpha")
    proxy = start_proxy(
        {"name": "demo", "remote_url": backend.url, "drain_delay": "1s", "drain_timeout": "30s"}
    ).expect_exit(1)
    # Raw HTTP, not the SDK client: when the proxy dies under it, the SDK's task group
    # cancels whatever task entered it, which would be this test.
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        sleep_call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 20}},
        }

        async def long_call() -> None:
            async with http.post(proxy.url, json=sleep_call, headers=headers) as response:
                await response.read()

        baseline = await inflight(proxy)
        call = asyncio.create_task(long_call())
        try:
            await until_inflight_grows(proxy, baseline)
            proxy.signal(signal.SIGTERM)
            await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 2, "readyz 503")
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            code = await asyncio.to_thread(proxy.wait, 10)
            assert code == 1
            assert time.monotonic() - started < 5
            # The forced stop cut the call off rather than letting it finish.
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(call, 5)
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await call


@pytest.mark.timeout(120)
async def test_draining_one_of_two_replicas_loses_no_request(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha, beta = start_backend("alpha"), start_backend("beta")
    config = {
        "name": "demo",
        "backend_urls": [alpha.url, beta.url],
        "session_redis": {"address": redis_server.address, "key_prefix": "drain"},
        **DRAIN,
    }
    env = {"THV_SESSION_REDIS_PASSWORD": redis_server.password}
    doomed, survivor = (start_proxy(config, env=env, label=f"replica{i}") for i in range(2))
    stop = asyncio.Event()
    completed: list[int] = []
    failures: list[BaseException] = []

    async with balancer([doomed.base, survivor.base]) as lb:

        async def steady_client() -> None:
            async with Client(f"{lb.url}/mcp", mode="legacy") as client:
                await client.list_tools()
                done = 0
                while not stop.is_set():
                    try:
                        result = await client.call_tool("echo", {"text": f"n{done}"})
                        assert tool_text(result) == f"n{done}"
                        done += 1
                    except Exception as exc:  # counted: the assertion below names them
                        failures.append(exc)
                completed.append(done)

        clients = [asyncio.create_task(steady_client()) for _ in range(3)]
        async with aiohttp.ClientSession() as http:
            session_id = await raw_initialize(http, lb.url + "/mcp")
            baseline = await inflight(doomed)
            long_call = asyncio.create_task(
                http.post(
                    doomed.url,
                    json={
                        "jsonrpc": "2.0",
                        "id": 99,
                        "method": "tools/call",
                        "params": {"name": "sleep", "arguments": {"seconds": 3}},
                    },
                    headers={
                        "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json",
                        "Mcp-Session-Id": session_id,
                        "MCP-Protocol-Version": "2025-06-18",
                    },
                )
            )
            await until_inflight_grows(doomed, baseline)
            signalled = time.monotonic()
            doomed.signal(signal.SIGTERM)
            async with await long_call as response:
                assert response.status == 200
                assert "slept 3s" in await response.text()
            code = await asyncio.to_thread(doomed.wait, 15)
            exited_after = time.monotonic() - signalled
            await asyncio.sleep(1.0)  # load keeps running against the survivor
        stop.set()
        await asyncio.gather(*clients)
    assert not failures, failures
    assert code == 0
    assert exited_after <= 10 + 1
    assert sum(completed) > 30
    assert lb.served[survivor.base] > 0
