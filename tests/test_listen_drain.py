"""Drain ending a listen stream whose relay reads in its own task: at an event boundary at
once, mid-event once the event is complete, and without a retry hint when the rest of
the event does not come within the grace."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
import structlog
from aiohttp import StreamReader

from proxyrunner.proxy import heartbeat
from proxyrunner.proxy.relay import Relay
from proxyrunner.traffic import Traffic


class _Downstream:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class _Stream:
    """The listen loop of a relay, on a backend body the test feeds."""

    def __init__(self, traffic: Traffic | None = None) -> None:
        self.traffic = Traffic() if traffic is None else traffic
        self.relay = Relay(self.traffic, structlog.get_logger(), keepalive=60)
        protocol = mock.Mock(_reading_paused=False)
        self.backend = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
        self.downstream = _Downstream()
        downstream: Any = self.downstream
        self.beat = self.relay._heartbeats.beat(downstream, self.backend)
        self.task: asyncio.Task[None] = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.traffic.stream_begin(self.beat)
        try:
            downstream: Any = self.downstream
            await self.relay._listen(self.backend, downstream, [], None, self.beat)
        finally:
            self.traffic.stream_end(self.beat)
            await self.beat.stop()

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def drain_after(self, sent: bytes) -> None:
        """The backend sent ``sent`` (relayed by now), then the proxy drains."""
        self.backend.feed_data(sent)
        await self.settle()
        self.traffic.close_streams(retry_ms=250)


async def test_a_stream_at_an_event_boundary_ends_at_once_with_a_retry_hint() -> None:
    stream = _Stream()
    await stream.drain_after(b"data: one\n\n")
    async with asyncio.timeout(1):
        await stream.task
    assert stream.downstream.written == [b"data: one\n\n", b"retry: 250\n\n"]
    assert stream.traffic.streams == 0


async def test_a_stream_mid_event_ends_once_the_event_is_complete() -> None:
    stream = _Stream()
    await stream.drain_after(b"data: one")
    await stream.settle()
    assert not stream.task.done()
    stream.backend.feed_data(b"\n\n")
    async with asyncio.timeout(1):
        await stream.task
    assert stream.downstream.written == [b"data: one", b"\n\n", b"retry: 250\n\n"]


async def test_a_stream_mid_event_ends_without_a_hint_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat, "EVENT_COMPLETION_GRACE", 0.05)
    stream = _Stream()
    await stream.drain_after(b"data: one")
    async with asyncio.timeout(1):
        await stream.task
    # No retry hint inside an event: the client would take it as part of the event.
    assert stream.downstream.written == [b"data: one"]


async def test_a_stream_opened_after_the_drain_began_ends_at_once() -> None:
    traffic = Traffic()
    traffic.close_streams(retry_ms=100)
    stream = _Stream(traffic)
    async with asyncio.timeout(1):
        await stream.task
    assert stream.downstream.written == [b"retry: 100\n\n"]
