"""The pooled backend client (proxyrunner.proxy.upstream) against real servers on loopback:
aiohttp applications for well-behaved backends, raw asyncio servers for the misbehaving
ones (closing keep-alive connections, answering garbage, never answering)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from proxyrunner.proxy.upstream import UpstreamPool, UpstreamProtocolError
from tests.procs import free_port
from tests.raw_backend import RESULT, RawBackend, ok_response, read_request

BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def head(port: int, length: int = len(BODY)) -> bytes:
    return (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def aiohttp_backend(handler: Handler) -> AsyncIterator[tuple[int, list[object]]]:
    """An aiohttp server answering POST /mcp; yields its port and the list of transports
    that carried requests (one entry per request), to count connections."""
    transports: list[object] = []

    async def tracked(request: web.Request) -> web.StreamResponse:
        transports.append(request.transport)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/mcp", tracked)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield int(runner.addresses[0][1]), transports
    finally:
        await runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool(keepalive_timeout=30.0, connect_timeout=5.0)
    yield upstream
    await upstream.close()


async def test_a_keep_alive_connection_carries_request_after_request(pool: UpstreamPool) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async with aiohttp_backend(echo) as (port, transports):
        for _ in range(3):
            response = await pool.send(("127.0.0.1", port), head(port), BODY)
            assert response.status == 200
            assert response.content_type == "application/json"
            assert response.content_length == len(BODY)
            assert await response.read() == BODY
    assert len(transports) == 3
    assert len(set(map(id, transports))) == 1, "all three requests on one connection"


async def test_backend_closing_keep_alive_connections_between_requests_is_harmless(
    pool: UpstreamPool,
) -> None:
    # Keep-alive per HTTP/1.1 (no Connection: close), yet the socket is closed after every
    # answer, as a backend whose idle timeout is shorter than ours does.
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(ok_response())
        await writer.drain()

    async with RawBackend(one_answer_then_close) as backend:
        for _ in range(3):
            response = await pool.send(("127.0.0.1", backend.port), head(backend.port), BODY)
            assert response.status == 200
            assert await response.read() == RESULT
        assert backend.connections == 3


async def test_a_request_on_a_connection_the_backend_closed_unanswered_is_sent_again(
    pool: UpstreamPool,
) -> None:
    # The race of a keep-alive timeout: the backend drops the idle connection just as the
    # next request is written. Nothing was answered, so the pool resends it, once, on a
    # new connection.
    served = 0

    async def first_connection_answers_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal served
        first = backend.connections == 1
        while True:
            await read_request(reader)
            if first and served == 1:
                return  # close without answering the second request
            served += 1
            writer.write(ok_response())
            await writer.drain()

    async with RawBackend(first_connection_answers_once) as backend:
        key = ("127.0.0.1", backend.port)
        for _ in range(2):
            response = await pool.send(key, head(backend.port), BODY)
            assert response.status == 200
            assert await response.read() == RESULT
        assert backend.connections == 2
        assert served == 2


async def test_a_new_connection_closed_without_an_answer_is_not_retried(
    pool: UpstreamPool,
) -> None:
    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawBackend(read_then_close) as backend:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pool.send(("127.0.0.1", backend.port), head(backend.port), BODY)
        assert backend.connections == 1


async def test_a_reused_connection_that_dies_mid_answer_is_not_retried(
    pool: UpstreamPool,
) -> None:
    async def second_answer_cut_short(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(ok_response())
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: appl")  # then close
        await writer.drain()

    async with RawBackend(second_answer_cut_short) as backend:
        key = ("127.0.0.1", backend.port)
        first = await pool.send(key, head(backend.port), BODY)
        assert await first.read() == RESULT
        with pytest.raises(aiohttp.ClientError):
            await pool.send(key, head(backend.port), BODY)
        assert backend.connections == 1, "a request the backend began answering is not resent"


async def test_chunked_answer_is_decoded_and_the_connection_reused(pool: UpstreamPool) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(RESULT[:10])
        await response.write(RESULT[10:])
        await response.write_eof()
        return response

    async with aiohttp_backend(chunked) as (port, transports):
        for _ in range(2):
            response = await pool.send(("127.0.0.1", port), head(port), BODY)
            assert response.status == 200
            assert response.content_length is None
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert await response.read() == RESULT
    assert len(set(map(id, transports))) == 1


async def test_event_stream_answer_streams_event_by_event(pool: UpstreamPool) -> None:
    second_event_may_go = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: message\ndata: one\n\n")
        await second_event_may_go.wait()
        await response.write(b"event: message\ndata: two\n\n")
        await response.write_eof()
        return response

    async with aiohttp_backend(sse) as (port, _):
        response = await pool.send(("127.0.0.1", port), head(port), BODY)
        assert response.content_type == "text/event-stream"
        # The first event arrives while the backend still holds the second one back.
        assert await response.content.readuntil(b"\n\n") == b"event: message\ndata: one\n\n"
        second_event_may_go.set()
        rest = b"".join([chunk async for chunk in response.content.iter_any()])
        assert rest == b"event: message\ndata: two\n\n"
        response.release()


async def test_an_answer_not_read_to_the_end_closes_its_connection(pool: UpstreamPool) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000, content_type="application/json")

    async with aiohttp_backend(big) as (port, transports):
        key = ("127.0.0.1", port)
        response = await pool.send(key, head(port), BODY)
        await response.content.readany()
        response.release()  # body unread: this connection must not carry another request
        second = await pool.send(key, head(port), BODY)
        assert len(await second.read()) == 200_000
    assert len(set(map(id, transports))) == 2


async def test_large_answer_arrives_whole(pool: UpstreamPool) -> None:
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/octet-stream")

    async with aiohttp_backend(large) as (port, _):
        response = await pool.send(("127.0.0.1", port), head(port), BODY)
        assert response.content_length == len(payload)
        received = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            received += chunk
        response.release()
        assert bytes(received) == payload


async def test_informational_answers_are_skipped(pool: UpstreamPool) -> None:
    async def continue_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok_response())
        await writer.drain()
        await reader.read()

    async with RawBackend(continue_then_ok) as backend:
        response = await pool.send(("127.0.0.1", backend.port), head(backend.port), BODY)
        assert response.status == 200
        assert await response.read() == RESULT


async def test_an_answer_that_is_not_http_is_a_protocol_error(pool: UpstreamPool) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawBackend(garbage) as backend:
        with pytest.raises(UpstreamProtocolError):
            await pool.send(("127.0.0.1", backend.port), head(backend.port), BODY)


async def test_nobody_listening_is_a_connection_error(pool: UpstreamPool) -> None:
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        await pool.send(("127.0.0.1", port), head(port), BODY)


async def test_a_cancelled_request_never_leaves_its_connection_in_the_pool(
    pool: UpstreamPool,
) -> None:
    requests_seen = 0
    first_arrived = asyncio.Event()

    async def first_never_answered(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal requests_seen
        while True:
            await read_request(reader)
            requests_seen += 1
            if requests_seen == 1:
                first_arrived.set()
                continue  # never answered; a late answer must not reach request two
            writer.write(ok_response())
            await writer.drain()

    async with RawBackend(first_never_answered) as backend:
        key = ("127.0.0.1", backend.port)
        stuck = asyncio.create_task(pool.send(key, head(backend.port), BODY))
        await first_arrived.wait()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        response = await pool.send(key, head(backend.port), BODY)
        assert await response.read() == RESULT
        assert backend.connections == 2


async def test_connection_close_from_the_backend_is_honoured(pool: UpstreamPool) -> None:
    async def close_each(request: web.Request) -> web.Response:
        return web.Response(body=RESULT, headers={"Connection": "close"})

    async with aiohttp_backend(close_each) as (port, transports):
        for _ in range(2):
            response = await pool.send(("127.0.0.1", port), head(port), BODY)
            assert await response.read() == RESULT
    assert len(set(map(id, transports))) == 2


async def test_an_answer_dropped_without_release_closes_its_connection(
    pool: UpstreamPool,
) -> None:
    closed_by_pool = asyncio.Event()

    async def answer_then_wait_for_eof(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(ok_response())
        await writer.drain()
        assert await reader.read() == b""
        closed_by_pool.set()

    async with RawBackend(answer_then_wait_for_eof) as backend:
        response = await pool.send(("127.0.0.1", backend.port), head(backend.port), BODY)
        assert response.status == 200
        del response  # as when an exception ends the handler between send and relay
        gc.collect()
        await closed_by_pool.wait()
