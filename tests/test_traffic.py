"""The traffic object: what is in flight, and the waits drain is made of (events, no
polling)."""

from __future__ import annotations

import asyncio

import pytest

from proxyrunner.traffic import Traffic


async def test_work_is_done_when_only_listen_streams_remain() -> None:
    traffic = Traffic()
    done = asyncio.Event()
    release_call = asyncio.Event()

    async def call() -> None:
        traffic.begin()
        await release_call.wait()
        traffic.end()

    async def stream() -> None:
        traffic.begin()
        listening = _Stream()
        traffic.stream_begin(listening)
        await done.wait()
        traffic.stream_end(listening)
        traffic.end()

    tasks = [asyncio.create_task(call()), asyncio.create_task(stream())]
    await asyncio.sleep(0)
    assert (traffic.inflight, traffic.streams) == (2, 1)
    waiting = asyncio.create_task(traffic.wait_work_done())
    await asyncio.sleep(0)
    assert not waiting.done()
    release_call.set()
    async with asyncio.timeout(2):
        await waiting
    assert (traffic.inflight, traffic.streams) == (1, 1)
    idle = asyncio.create_task(traffic.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    done.set()
    async with asyncio.timeout(2):
        await idle
        await asyncio.gather(*tasks)
    assert (traffic.inflight, traffic.streams) == (0, 0)


class _Stream:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_closing_streams_closes_every_open_stream_and_every_later_one() -> None:
    traffic = Traffic()
    streams = [_Stream() for _ in range(3)]
    for stream in streams:
        traffic.stream_begin(stream)
    ended = streams.pop()
    traffic.stream_end(ended)
    assert traffic.streams == 2
    traffic.close_streams(retry_ms=250)
    assert [stream.closed for stream in streams] == [1, 1]
    assert ended.closed == 0
    assert traffic.retry_ms == 250
    # A stream opened after the request to close is closed at once.
    late = _Stream()
    traffic.stream_begin(late)
    assert late.closed == 1
    for stream in [*streams, late]:
        traffic.stream_end(stream)
    assert traffic.streams == 0


@pytest.mark.parametrize(("draining", "counted"), [(False, 0), (True, 1)])
def test_a_request_cancelled_while_draining_is_counted(draining: bool, counted: int) -> None:
    traffic = Traffic()
    traffic.begin()
    traffic.draining = draining
    traffic.end(cancelled=True)
    traffic.begin()
    traffic.end()  # an ordinary end is never counted
    assert traffic.cancelled == counted
    assert traffic.inflight == 0
