"""OTLP/HTTP export against a real HTTP server: what is sent, what is retried, and that a
collector that does not answer costs at most the timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxyrunner.telemetry.export import OtlpHttp

Answer = Callable[[int], web.Response]


class Collector:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.answer: Answer = lambda attempt: web.Response(status=200)
        self.hang = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        if self.hang:
            await asyncio.sleep(30)
        return self.answer(len(self.bodies))


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    state = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield state, f"http://127.0.0.1:{server.port}/v1/traces"
    finally:
        await server.close()


async def test_an_export_posts_protobuf_with_the_configured_headers(
    collector: tuple[Collector, str],
) -> None:
    state, url = collector
    poster = OtlpHttp(url, {"Authorization": "Bearer t0ken"}, 5.0, "proxyrunner/test")
    try:
        assert await asyncio.to_thread(poster.post, b"\x0a\x00")
        assert await asyncio.to_thread(poster.post, b"\x0a\x01\x00")  # the connection is reused
    finally:
        poster.close()
    assert state.bodies == [b"\x0a\x00", b"\x0a\x01\x00"]
    assert state.headers[0]["Content-Type"] == "application/x-protobuf"
    assert state.headers[0]["Authorization"] == "Bearer t0ken"
    assert state.headers[0]["User-Agent"] == "proxyrunner/test"


async def test_an_unavailable_collector_is_retried_until_it_takes_the_export(
    collector: tuple[Collector, str],
) -> None:
    state, url = collector
    state.answer = lambda attempt: web.Response(
        status=503 if attempt < 3 else 200, headers={"Retry-After": "0"}
    )
    poster = OtlpHttp(url, {}, 5.0, "proxyrunner/test")
    try:
        assert await asyncio.to_thread(poster.post, b"x")
    finally:
        poster.close()
    assert len(state.bodies) == 3


async def test_a_refused_export_is_not_retried_and_its_error_names_no_header(
    collector: tuple[Collector, str],
) -> None:
    state, url = collector
    state.answer = lambda attempt: web.Response(status=400)
    poster = OtlpHttp(url, {"Authorization": "Bearer s3cret"}, 5.0, "proxyrunner/test")
    try:
        assert not await asyncio.to_thread(poster.post, b"x")
    finally:
        poster.close()
    assert len(state.bodies) == 1
    assert poster.last_failure == "400"


async def test_a_collector_that_never_answers_costs_at_most_the_timeout(
    collector: tuple[Collector, str],
) -> None:
    state, url = collector
    state.hang = True
    poster = OtlpHttp(url, {}, 0.5, "proxyrunner/test")
    started = time.monotonic()
    try:
        assert not await asyncio.to_thread(poster.post, b"x")
    finally:
        poster.close()
    assert time.monotonic() - started < 2.0
    assert poster.last_failure == "TimeoutError"


async def test_no_collector_at_all_fails_the_export_without_raising() -> None:
    poster = OtlpHttp("http://127.0.0.1:9/v1/traces", {}, 0.5, "proxyrunner/test")
    try:
        assert not await asyncio.to_thread(poster.post, b"x")
    finally:
        poster.close()
    assert poster.last_failure == "ConnectionRefusedError"
