"""Hostile clients against real proxies, on what they can make a replica hold: memory
per session, sessions of others, connections, streams, and time (issue 10, items 4 and 5).

Every case was first reproduced against a live proxy on loopback; each test here failed
before the bound it checks existed."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import aiohttp
import pytest

from tests.conftest import DemoProxy, StartBackend, StartProxy
from tests.helpers import (
    DEMO_STDIO,
    INIT,
    MCP_HEADERS,
    answer_of,
    listen_stream,
    raw_initialize,
    tools_call,
    until_metric,
)
from tests.procs import Proxy
from tests.raw_backend import RawBackend, ok_response, read_message
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


async def labelled_metric(proxy: Proxy, name: str, **labels: str) -> float:
    """The value of one labelled series in the proxy's /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    family = re.escape(name.removesuffix("_total"))
    assert re.search(rf"^# TYPE {family}(_total)? ", text, re.MULTILINE), f"{name} not in /metrics"
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def padded_initialize(size: int) -> dict[str, Any]:
    """An initialize whose body is about ``size`` bytes (the padding in clientInfo)."""
    params = {**INIT["params"], "clientInfo": {"name": "pad", "version": "1", "x": "x" * size}}
    return {**INIT, "params": params}


# ------------------------------------------------------------ item 4: memory per client


async def test_an_initialize_above_the_stored_limit_works_but_is_not_kept_and_is_counted(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(max_stored_initialize=4096)
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url, json=padded_initialize(8192), headers=MCP_HEADERS) as r:
            assert r.status == 200, await r.text()
            session = r.headers["Mcp-Session-Id"]
            await r.read()
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        async with http.post(proxy.url, json=tools_call(1, text="hi"), headers=headers) as r:
            assert r.status == 200
            assert (await answer_of(r))["result"]["content"][0]["text"] == "hi"
        assert await labelled_metric(proxy, "proxyrunner_initialize_not_stored_total") == 1
        # An initialize within the limit is kept (and not counted).
        await raw_initialize(http, proxy.url)
        assert await labelled_metric(proxy, "proxyrunner_initialize_not_stored_total") == 1


async def _refused_for_now(response: aiohttp.ClientResponse) -> None:
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == -32002


@pytest.mark.redis
async def test_new_sessions_beyond_max_pending_get_503_while_redis_is_down(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    config = {
        "name": "demo",
        "remote_url": start_backend("alpha").url,
        "session_redis": {"address": redis_server.address, "key_prefix": "e2e"},
        "max_pending_sessions": 2,
    }
    proxy = start_proxy(config, env={"THV_SESSION_REDIS_PASSWORD": redis_server.password})
    redis_server.kill()
    async with aiohttp.ClientSession() as http:
        kept = [await raw_initialize(http, proxy.url) for _ in range(2)]
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            await _refused_for_now(response)
        assert (
            await labelled_metric(
                proxy, "proxyrunner_sessions_refused_total", reason="pending_full"
            )
            == 1
        )
        for session in kept:
            headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
            async with http.post(proxy.url, json=tools_call(1, text="x"), headers=headers) as r:
                assert r.status == 200, await r.text()


async def _call(http: aiohttp.ClientSession, proxy: Proxy, session: str, **args: Any) -> Any:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    name = "sleep" if "seconds" in args else "echo"
    async with http.post(proxy.url, json=tools_call(1, name, **args), headers=headers) as r:
        assert r.status == 200, await r.text()
        return await answer_of(r)


async def test_a_full_memory_store_refuses_new_sessions_rather_than_evict_busy_ones(
    demo_proxy: DemoProxy,
) -> None:
    # Four initializes used to push the first live session out (404 on its next request).
    proxy = demo_proxy(session_cache_size=3)
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as streams:
        sessions = [await raw_initialize(http, proxy.url) for _ in range(3)]
        for session in sessions[:2]:
            await streams.enter_async_context(listen_stream(http, proxy, "GET /mcp", session))
        # Long enough to outlast the checks below; awaited, so nothing outlives the test.
        slow = asyncio.create_task(_call(http, proxy, sessions[2], seconds=4))
        await until_metric(proxy, "proxyrunner_inflight_requests", at_least=3)
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            await _refused_for_now(response)
        refused = await labelled_metric(
            proxy, "proxyrunner_sessions_refused_total", reason="store_full"
        )
        assert refused == 1
        for session in sessions[:2]:
            answer = await _call(http, proxy, session, text="still here")
            assert answer["result"]["content"][0]["text"] == "still here"
        assert (await slow)["result"]["content"][0]["text"] == "slept 4s"


class SessionCountingBackend:
    """A raw MCP backend that counts the sessions it creates and ends: every initialize
    gets a new ``Mcp-Session-Id``, ``GET /mcp`` an event stream held open."""

    def __init__(self) -> None:
        self.created = 0
        self.ended = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_message(reader)
            if head.startswith(b"GET /mcp"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
                await writer.drain()
                await reader.read()  # until the proxy closes it
                return
            if head.startswith(b"DELETE"):
                self.ended += 1
                writer.write(ok_response(b""))
            elif b'"initialize"' in body:
                self.created += 1
                writer.write(ok_response(extra=b"Mcp-Session-Id: backend-%d\r\n" % self.created))
            elif b'"notifications/' in body:
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(ok_response())
            await writer.drain()


async def test_an_initialize_a_full_memory_store_refuses_never_reaches_the_backend(
    start_proxy: StartProxy,
) -> None:
    counting = SessionCountingBackend()
    async with RawBackend(counting.serve) as backend, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{backend.port}/mcp"
        # A short keep-alive: the closed listen stream is noticed within a second.
        config = {
            "name": "demo",
            "remote_url": url,
            "session_cache_size": 1,
            "stream_keepalive": "1s",
        }
        proxy = await asyncio.to_thread(start_proxy, config)
        session = await raw_initialize(http, proxy.url)
        assert counting.created == 1
        async with listen_stream(http, proxy, "GET /mcp", session):
            for _ in range(3):
                async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
                    await _refused_for_now(response)
            # Refused before forwarding: no backend session was made (and so none leaks).
            assert counting.created == 1
            assert counting.ended == 0
            assert (
                await labelled_metric(
                    proxy, "proxyrunner_sessions_refused_total", reason="store_full"
                )
                == 3
            )
        # The contrast: with the one session idle again, the next initialize evicts it
        # and does reach the backend.
        await until_metric(proxy, "proxyrunner_inflight_requests", at_most=0)
        await raw_initialize(http, proxy.url)
        assert counting.created == 2


async def test_idle_sessions_of_a_full_memory_store_are_still_evicted_least_recent_first(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(session_cache_size=2)
    async with aiohttp.ClientSession() as http:
        first, second = [await raw_initialize(http, proxy.url) for _ in range(2)]
        async with listen_stream(http, proxy, "GET /mcp", first):
            third = await raw_initialize(http, proxy.url)  # evicts the idle second
            headers = {**MCP_HEADERS, "Mcp-Session-Id": second}
            async with http.post(proxy.url, json=tools_call(1, text="x"), headers=headers) as r:
                assert r.status == 404
            for session in (first, third):
                await _call(http, proxy, session, text="x")


# ------------------------------------------------------ item 5: slow and excess clients

# The bounds the tests check: far above the configured timeouts, far below "forever".
CLOSED_WITHIN = 8.0


async def _connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _closed_by_the_proxy(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection (within the bound)."""
    async with asyncio.timeout(CLOSED_WITHIN):
        return await reader.read()


async def _health_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/health"
) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    return head + await reader.readexactly(length)


async def test_a_connection_that_sends_half_a_request_head_is_closed(demo_proxy: DemoProxy) -> None:
    # It stayed open for as long as anyone watched (100 s).
    proxy = demo_proxy(header_timeout="1s")
    reader, writer = await _connect(proxy)
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        assert await _closed_by_the_proxy(reader) == b""
    finally:
        writer.close()
    closed = await labelled_metric(
        proxy, "proxyrunner_client_connections_closed_total", reason="header_timeout"
    )
    assert closed == 1


async def test_a_request_whose_body_trickles_in_gets_408_and_its_connection_closed(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(body_timeout="1s")
    reader, writer = await _connect(proxy)
    try:
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n"
            b'{"jsonrpc":'
        )
        answer = await _closed_by_the_proxy(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code": -32600' in answer or b'"code":-32600' in answer
    closed = await labelled_metric(
        proxy, "proxyrunner_client_connections_closed_total", reason="body_timeout"
    )
    assert closed == 1


async def test_a_streamed_in_session_body_that_trickles_gets_408_and_its_connection_closed(
    demo_proxy: DemoProxy,
) -> None:
    # No Content-Length in a session: the body streams through to the backend instead
    # of being read whole, and used to be held for as long as the client trickled.
    proxy = demo_proxy(body_timeout="1s")
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, proxy.url)
    reader, writer = await _connect(proxy)
    try:
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n"
            b"MCP-Protocol-Version: 2025-06-18\r\n"
            b"Mcp-Session-Id: " + session.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'b\r\n{"jsonrpc":\r\n'
        )
        answer = await _closed_by_the_proxy(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    closed = await labelled_metric(
        proxy, "proxyrunner_client_connections_closed_total", reason="body_timeout"
    )
    assert closed == 1


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(keepalive_timeout="1s")
    reader, writer = await _connect(proxy)
    try:
        assert (await _health_on(reader, writer)).startswith(b"HTTP/1.1 200 ")
        assert await _closed_by_the_proxy(reader) == b""
    finally:
        writer.close()


async def test_connections_past_max_connections_get_503_and_are_closed(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(max_connections=3)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = [await _connect(proxy)]
    try:
        # Once the readiness probes' connections are gone, only this one is open.
        for _ in range(500):  # 10 s at most
            if b"proxyrunner_client_connections 1.0" in await _health_on(*held[0], "/metrics"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the readiness probes' connections stayed open")
        for _ in range(2):
            held.append(await _connect(proxy))
            assert (await _health_on(*held[-1])).startswith(b"HTTP/1.1 200 ")
        reader, writer = await _connect(proxy)
        held.append((reader, writer))
        refused = await _closed_by_the_proxy(reader)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"Retry-After: 1" in refused
        assert b'"code":-32002' in refused
        # The connections it holds still work.
        assert (await _health_on(*held[0])).startswith(b"HTTP/1.1 200 ")
    finally:
        for _, writer in held:
            writer.close()


def _listen_headers(session: str) -> dict[str, str]:
    return {
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-06-18",
    }


async def _stream_refusals(proxy: Proxy, limit: str) -> float:
    return await labelled_metric(proxy, "proxyrunner_streams_refused_total", limit=limit)


@pytest.mark.parametrize("served", ["streamable", "stdio"])
async def test_listen_streams_are_capped_per_session_and_per_replica(
    demo_proxy: DemoProxy, start_proxy: StartProxy, served: str
) -> None:
    # A stdio-bridge session accepted 50 concurrent GET /mcp streams.
    limits = {"max_streams_per_session": 1, "max_streams": 2}
    if served == "streamable":
        proxy = demo_proxy(**limits)
    else:
        proxy = start_proxy({**DEMO_STDIO, **limits})
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as streams:
        first, second, third = [await raw_initialize(http, proxy.url) for _ in range(3)]
        await streams.enter_async_context(listen_stream(http, proxy, "GET /mcp", first))
        async with http.get(proxy.url, headers=_listen_headers(first)) as refused:
            assert refused.status == 429, await refused.text()
            assert (await refused.json())["error"]["code"] == -32600
        await streams.enter_async_context(listen_stream(http, proxy, "GET /mcp", second))
        async with http.get(proxy.url, headers=_listen_headers(third)) as refused:
            await _refused_for_now(refused)
        assert await _stream_refusals(proxy, "session") == 1
        assert await _stream_refusals(proxy, "replica") == 1


async def test_legacy_sse_streams_are_capped_per_replica(demo_proxy: DemoProxy) -> None:
    # 50 GET /sse streams stayed open after their clients had gone.
    proxy = demo_proxy(transport="sse", max_streams=2)
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as streams:
        for _ in range(2):
            await streams.enter_async_context(listen_stream(http, proxy, "GET /sse"))
        async with http.get(f"{proxy.base}/sse", headers={"Accept": "text/event-stream"}) as r:
            await _refused_for_now(r)


# ----------------------------------------------------- item 5: keep-alive and abandonment


async def test_a_quiet_listen_stream_gets_keep_alive_comments_and_no_proxy_buffering(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(stream_keepalive="1s")
    async with aiohttp.ClientSession() as http, listen_stream(http, proxy, "GET /mcp") as stream:
        assert stream.headers["X-Accel-Buffering"] == "no"
        async with asyncio.timeout(CLOSED_WITHIN):
            assert await stream.content.readline() == b": keep-alive\n"


async def test_a_slow_sse_answer_gets_keep_alive_comments_before_its_result(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(stream_keepalive="1s")
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
        async with http.post(
            proxy.url, json=tools_call(1, "sleep", seconds=3), headers=headers
        ) as r:
            assert r.content_type == "text/event-stream"
            assert r.headers["X-Accel-Buffering"] == "no"
            body = await r.read()
    assert body.startswith(b": keep-alive\n\n"), body
    assert b"slept 3s" in body


@pytest.mark.parametrize("kind", ["GET /mcp", "GET /sse"])
async def test_an_abandoned_stream_is_closed_on_both_sides_and_gives_its_slot_back(
    demo_proxy: DemoProxy, kind: str
) -> None:
    # 50 GET /sse streams stayed open after their clients had gone.
    transport = {"transport": "sse"} if kind == "GET /sse" else {}
    proxy = demo_proxy(stream_keepalive="1s", max_streams=1, **transport)
    async with aiohttp.ClientSession() as http:
        async with listen_stream(http, proxy, kind) as stream:
            await until_metric(proxy, "proxyrunner_streams_open", at_least=1)
            stream.close()
        await until_metric(proxy, "proxyrunner_streams_open", at_most=0, timeout=CLOSED_WITHIN)
        await until_metric(proxy, "proxyrunner_inflight_requests", at_most=0)
        # Its slot is free again: the one stream the replica allows opens.
        async with listen_stream(http, proxy, kind):
            pass
