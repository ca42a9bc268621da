"""Drain ending a listen stream whose relay reads in its own task: at an event boundary at
once, mid-event once the event is complete, and without a retry hint when the rest of
the event does not come within the grace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from unittest import mock

import pytest
import structlog
from aiohttp import ClientResponse, StreamReader, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from proxyrunner.proxy import heartbeat
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.proxy.relay import Relay
from proxyrunner.traffic import Traffic


class _Backend:
    """A backend's SSE answer whose body the test feeds (``BackendResponse``)."""

    status = 200
    content_length = None
    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/event-stream"}))
        protocol = mock.Mock(_reading_paused=False)
        self.content = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())

    async def read(self) -> bytes:
        raise AssertionError("an event stream is never read whole")

    def release(self) -> None:
        pass


class _Stream:
    def __init__(
        self, traffic: Traffic, backend: _Backend, client: TestClient[web.Request, web.Application]
    ) -> None:
        self.traffic, self.backend, self._client = traffic, backend, client
        self.received = b""
        self._response: ClientResponse | None = None

    async def open(self) -> None:
        response = await self._client.get("/mcp")
        assert response.status == 200
        self._response = response

    async def receive(self, expected: bytes) -> None:
        """Until the client got ``expected`` (what the backend sent, relayed)."""
        async with asyncio.timeout(2):
            while not self.received.endswith(expected):
                self.received += await self._content().readany()

    async def rest(self) -> bytes:
        """Everything up to the end of the stream."""
        async with asyncio.timeout(2):
            self.received += await self._content().read()
        return self.received

    async def drain_after(self, sent: bytes) -> None:
        """The backend sent ``sent``, the client got it, then the proxy drains."""
        self.backend.content.feed_data(sent)
        await self.receive(sent)
        self.traffic.close_streams(retry_ms=250)

    def _content(self) -> StreamReader:
        assert self._response is not None
        return self._response.content


@asynccontextmanager
async def _listen_stream(traffic: Traffic | None = None) -> AsyncIterator[_Stream]:
    traffic = Traffic() if traffic is None else traffic
    relay = Relay(traffic, structlog.get_logger(), keepalive=60)
    backend = _Backend()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await relay.answer(Exchange(request), backend, None)

    app = web.Application()
    app.router.add_get("/mcp", handler)
    async with TestClient(TestServer(app)) as client:
        stream = _Stream(traffic, backend, client)
        await stream.open()
        yield stream


async def test_a_stream_at_an_event_boundary_ends_at_once_with_a_retry_hint() -> None:
    async with _listen_stream() as stream:
        await stream.drain_after(b"data: one\n\n")
        assert await stream.rest() == b"data: one\n\nretry: 250\n\n"
        assert stream.traffic.streams == 0


async def test_a_stream_mid_event_ends_once_the_event_is_complete() -> None:
    async with _listen_stream() as stream:
        await stream.drain_after(b"data: one")
        await asyncio.sleep(0.1)
        assert stream.traffic.streams == 1
        stream.backend.content.feed_data(b"\n\n")
        assert await stream.rest() == b"data: one\n\nretry: 250\n\n"


async def test_a_stream_mid_event_ends_without_a_hint_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat, "EVENT_COMPLETION_GRACE", 0.05)
    async with _listen_stream() as stream:
        await stream.drain_after(b"data: one")
        # No retry hint inside an event: the client would take it as part of the event.
        assert await stream.rest() == b"data: one"


async def test_a_stream_opened_after_the_drain_began_ends_at_once() -> None:
    traffic = Traffic()
    traffic.close_streams(retry_ms=100)
    async with _listen_stream(traffic) as stream:
        assert await stream.rest() == b"retry: 100\n\n"
