"""Graceful drain on SIGTERM, as the README promises it: readiness fails at once, new
connections are served for ``drain_delay`` and refused after it, requests in flight run
to completion and listen streams end after them with a reconnect hint, what outlives
``drain_timeout`` is cancelled and counted, and the process exits 0 within
``drain_timeout``.

Only what a client or an operator sees is checked (HTTP, metrics, the log, the exit
code), and every wait is on one of those with a deadline: the drain's implementation is
free to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest
from mcp import Client

from tests.balancer import balancer
from tests.conftest import DemoProxy, StartBackend, StartProxy
from tests.helpers import (
    LISTEN_STREAMS,
    MCP_HEADERS,
    listen_stream,
    metric,
    raw_initialize,
    raw_session,
    tool_text,
    tools_call,
    until_metric,
)
from tests.procs import Proxy, eventually, http_status
from tests.redis_server import RedisServer

T = TypeVar("T")

DRAIN_TIMEOUT = 10.0
DRAIN = {"drain_delay": "0s", "drain_timeout": f"{DRAIN_TIMEOUT:g}s"}
# How much later than drain_timeout the process may end: interpreter exit on a loaded
# machine. The promise is drain_timeout; this is only slack for measuring it.
EXIT_MARGIN = 1.0
CALL_IDS = itertools.count(2)  # distinct JSON-RPC ids for calls in flight in one session
RECONNECT_HINT = re.compile(rb"(^|\n)retry: \d+\n\n$")


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """``work`` as a task that is cancelled (and awaited) when the block ends."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def long_call(
    http: aiohttp.ClientSession, proxy: Proxy, session_id: str, seconds: float
) -> AsyncIterator[asyncio.Task[tuple[int, str]]]:
    """A ``sleep`` tool call in the session, sent raw (an SDK client's task group would
    cancel this test when the proxy dies under it); yields once the proxy has it in
    flight. The task's result is the answer's status and body."""
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}

    async def call() -> tuple[int, str]:
        body = tools_call(next(CALL_IDS), "sleep", seconds=seconds)
        async with http.post(proxy.url, json=body, headers=headers) as response:
            return response.status, await response.text()

    baseline = await metric(proxy, "proxyrunner_inflight_requests")
    async with running(call()) as task:
        await until_metric(proxy, "proxyrunner_inflight_requests", at_least=baseline + 1)
        yield task


async def new_connection_status(proxy: Proxy) -> int | None:
    """GET /health on a new TCP connection: the status, 0 if the connection was accepted
    and closed unanswered (the listener closing under it), None if it was refused."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    except ConnectionRefusedError:
        return None
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status_line = await reader.readline()
    except ConnectionResetError:
        status_line = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
    return int(status_line.split()[1]) if status_line else 0


async def until_refused(proxy: Proxy, timeout: float = 10.0) -> list[int]:  # noqa: ASYNC109
    """Open new connections until one is refused; the statuses of those before it."""
    served: list[int] = []
    deadline = time.monotonic() + timeout
    while (status := await new_connection_status(proxy)) is not None:
        served.append(status)
        assert time.monotonic() < deadline, f"new connections still served after {timeout}s"
        await asyncio.sleep(0.02)
    return served


def drained_line(proxy: Proxy) -> dict[str, Any]:
    (drained,) = [e for e in proxy.log_events() if e.get("event") == "drained"]
    return drained


@pytest.mark.timeout(60)
async def test_sigterm_lets_a_long_tool_call_finish_and_exits_0(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy(**DRAIN)
    client = Client(proxy.url, mode="legacy")
    await client.__aenter__()
    try:
        # call_tool validates structured output against the tool's schema, listing the
        # tools first if it has not: do that now, while there is a proxy to answer.
        await client.list_tools()
        baseline = await metric(proxy, "proxyrunner_inflight_requests")
        call = asyncio.create_task(client.call_tool("sleep", {"seconds": 3}))
        await until_metric(proxy, "proxyrunner_inflight_requests", at_least=baseline + 1)
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        result = await call
        assert not result.is_error
        assert tool_text(result) == "slept 3s"
    finally:
        # The only replica is gone by now: the client's closing DELETE cannot connect.
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
    assert await asyncio.to_thread(proxy.wait, DRAIN_TIMEOUT + 5) == 0
    assert time.monotonic() - signalled <= DRAIN_TIMEOUT + EXIT_MARGIN
    assert drained_line(proxy)["cancelled"] == 0


@pytest.mark.timeout(60)
async def test_work_that_outlives_drain_timeout_is_cancelled_counted_and_exit_is_0_in_time(
    demo_proxy: DemoProxy,
) -> None:
    drain_timeout = 4.0
    proxy = demo_proxy(drain_delay="0s", drain_timeout=f"{drain_timeout:g}s")
    async with (
        raw_session(proxy.url) as (http, session_id),
        long_call(http, proxy, session_id, seconds=30) as call,
    ):
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.wait, drain_timeout + 10)
        exited_after = time.monotonic() - signalled
        # Cut off: the connection ends without the call's result.
        try:
            status, answer = await asyncio.wait_for(call, 5)
        except aiohttp.ClientError:
            pass
        else:
            assert "slept" not in answer, (status, answer)
    assert code == 0
    assert exited_after <= drain_timeout + EXIT_MARGIN
    assert drained_line(proxy)["cancelled"] == 1


@pytest.mark.timeout(60)
async def test_listen_streams_end_after_the_work_in_flight_not_before(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(**DRAIN)
    async with raw_session(proxy.url) as (http, session_id):
        async with listen_stream(http, proxy, "GET /mcp", session_id) as stream:
            await until_metric(proxy, "proxyrunner_streams_open", at_least=1)
            async with (
                running(stream.content.read()) as listening,
                long_call(http, proxy, session_id, seconds=5) as longer,
                long_call(http, proxy, session_id, seconds=1) as shorter,
            ):
                proxy.signal(signal.SIGTERM)
                status, answer = await asyncio.wait_for(shorter, 15)
                assert (status, "slept 1s" in answer) == (200, True)
                # The longer call is still in flight, so the stream must still be open.
                # (Ended first, its end would have come a second before this answer.)
                assert not longer.done()
                assert not listening.done(), "the listen stream ended before the work"
                status, answer = await asyncio.wait_for(longer, 15)
                assert (status, "slept 5s" in answer) == (200, True)
                received = await asyncio.wait_for(listening, 10)
        assert RECONNECT_HINT.search(received), received
    assert await asyncio.to_thread(proxy.wait, DRAIN_TIMEOUT + 5) == 0
    assert drained_line(proxy)["cancelled"] == 0


@pytest.mark.parametrize("kind", LISTEN_STREAMS)
@pytest.mark.timeout(60)
async def test_an_idle_listen_stream_ends_with_a_retry_hint_at_once(
    kind: str, demo_proxy: DemoProxy
) -> None:
    proxy = demo_proxy(transport="sse" if kind == "GET /sse" else "streamable-http", **DRAIN)
    async with aiohttp.ClientSession() as http, listen_stream(http, proxy, kind) as stream:
        await until_metric(proxy, "proxyrunner_streams_open", at_least=1, timeout=5)
        proxy.signal(signal.SIGTERM)
        # With nothing else in flight the stream ends at once, not at the deadline.
        received = await asyncio.wait_for(stream.content.read(), timeout=DRAIN_TIMEOUT / 2)
    assert RECONNECT_HINT.search(received), received
    assert await asyncio.to_thread(proxy.wait, DRAIN_TIMEOUT + 5) == 0
    assert drained_line(proxy)["cancelled"] == 0


@pytest.mark.timeout(60)
async def test_new_connections_are_served_during_the_drain_delay(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy(drain_delay="3s", drain_timeout="10s")
    proxy.signal(signal.SIGTERM)
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 2, "readyz 503")
    assert http_status(f"{proxy.base}/health") == 200
    async with Client(proxy.url, mode="legacy") as client:
        assert "still here" in tool_text(await client.call_tool("echo", {"text": "still here"}))
    assert await asyncio.to_thread(proxy.wait, 15) == 0


@pytest.mark.timeout(60)
async def test_new_connections_are_refused_once_the_drain_delay_is_over(
    demo_proxy: DemoProxy,
) -> None:
    delay = 1.0
    proxy = demo_proxy(drain_delay=f"{delay:g}s", drain_timeout="15s")
    # The call keeps the process draining well past the delay: a refusal then is the
    # listener's doing, not a process that is gone.
    async with (
        raw_session(proxy.url) as (http, session_id),
        long_call(http, proxy, session_id, seconds=5) as call,
    ):
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        served = await until_refused(proxy)
        refused_after = time.monotonic() - signalled
        assert not call.done(), "new connections were served until the work was done"
        assert proxy.alive()
        assert refused_after >= delay
        # Served until the listener closed (the last one may have raced the close).
        assert set(served[:-1]) <= {200}, served
        assert all([await new_connection_status(proxy) is None for _ in range(5)])
        status, answer = await asyncio.wait_for(call, 15)
        assert status == 200
        assert "slept 5s" in answer
    assert await asyncio.to_thread(proxy.wait, 15) == 0


@pytest.mark.parametrize("phase", ["in the drain delay", "while requests finish"])
@pytest.mark.timeout(60)
async def test_a_second_signal_stops_at_once_with_exit_1(phase: str, demo_proxy: DemoProxy) -> None:
    delay = "5s" if phase == "in the drain delay" else "0s"
    proxy = demo_proxy(drain_delay=delay, drain_timeout="30s").expect_exit(1)
    async with (
        raw_session(proxy.url) as (http, session_id),
        long_call(http, proxy, session_id, seconds=20) as call,
    ):
        proxy.signal(signal.SIGTERM)
        if phase == "in the drain delay":
            await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 2, "readyz 503")
        else:
            await until_refused(proxy)  # the listener is closed: past the delay
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.wait, 10) == 1
        assert time.monotonic() - started < 3
        # The forced stop cut the call off rather than letting it finish.
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(call, 5)


@pytest.mark.timeout(120)
async def test_draining_one_of_two_replicas_loses_no_request(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha, beta = start_backend("alpha"), start_backend("beta")
    config = {
        "name": "demo",
        "backend_urls": [alpha.url, beta.url],
        "session_redis": {"address": redis_server.address, "key_prefix": "drain"},
        # The delay is what lets the balancer take the replica out before it stops
        # accepting connections.
        "drain_delay": "1s",
        "drain_timeout": f"{DRAIN_TIMEOUT:g}s",
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
            async with long_call(http, doomed, session_id, seconds=3) as call:
                signalled = time.monotonic()
                doomed.signal(signal.SIGTERM)
                status, answer = await asyncio.wait_for(call, 15)
                assert status == 200
                assert "slept 3s" in answer
            code = await asyncio.to_thread(doomed.wait, 15)
            exited_after = time.monotonic() - signalled
            # Load keeps running against the survivor alone for a while.
            served_before = lb.served[survivor.base]
            await eventually(
                lambda: lb.served[survivor.base] >= served_before + 10, 10, "more load"
            )
        stop.set()
        await asyncio.gather(*clients)
    assert not failures, failures
    assert code == 0
    assert exited_after <= DRAIN_TIMEOUT + EXIT_MARGIN
    assert sum(completed) > 30
