"""What the process is serving right now: requests in flight and client listen streams.

One object holds it, so that readiness, the metrics and the drain read the same truth:
the pipeline calls ``begin()`` and ``end()`` around every request it accepts (plain calls,
not a context manager: this runs for every request), and a request that turns into a
long-lived listen stream (``GET /mcp``, legacy ``GET /sse``, ``subscriptions/listen``)
is also registered, between ``stream_begin(stream)`` and ``stream_end(stream)`` (plain
calls again: a stream is held for hours, and a context manager's generator would be
held with it). Waiting is on events, never polling:

- ``wait_work_done()`` returns once nothing but listen streams is left in flight;
- ``close_streams(retry_ms)`` asks every listen stream to end at its next event boundary
  with that reconnect hint (it calls the stream's ``close()``);
- ``wait_idle()`` returns once nothing at all is in flight.

Per session it also knows what is in flight (``hold``/``release``, by the pipeline for a
request that names a session, by the legacy transport for the stream that is its
session): the memory store never evicts a session that is busy.

A request cancelled while the process drains (it outlived the drain deadline) is counted
in ``cancelled``, which the ``drained`` log line reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class ListenStream(Protocol):
    def close(self) -> None:
        """End at the next event boundary, with ``Traffic.retry_ms`` as the hint."""


class Traffic:
    def __init__(self) -> None:
        self._requests = 0
        self._streams = 0
        self._waiters = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        # The open listen streams themselves: nothing per stream of the traffic's own.
        self._open_streams: set[ListenStream] = set()
        self.draining = False
        """Set when the process stops taking new traffic: /readyz turns 503."""
        self.cancelled = 0
        """Requests cancelled while draining."""
        self.retry_ms = 1000
        """The reconnect hint closed streams send."""
        # session id -> requests and streams in flight; absent when none.
        self._held: dict[str, int] = {}

    @property
    def inflight(self) -> int:
        """Requests being served, listen streams included."""
        return self._requests

    @property
    def streams(self) -> int:
        """Open client listen streams."""
        return self._streams

    def begin(self) -> None:
        """A request is now in flight."""
        self._requests += 1
        if self._waiters:
            self._wakeup.set()

    def end(self, cancelled: bool = False) -> None:
        """A request ended; ``cancelled`` when it was cancelled (counted while draining)."""
        self._requests -= 1
        if cancelled and self.draining:
            self.cancelled += 1
        if self._waiters:
            self._wakeup.set()

    def hold(self, session_id: str) -> None:
        """Something of this session is now in flight."""
        held = self._held
        held[session_id] = held.get(session_id, 0) + 1

    def release(self, session_id: str) -> None:
        held = self._held
        left = held[session_id] - 1
        if left:
            held[session_id] = left
        else:
            del held[session_id]

    def busy(self, session_id: str) -> bool:
        """Whether a request or stream of this session is in flight."""
        return session_id in self._held

    def stream_begin(self, stream: ListenStream) -> None:
        """Within a request: the request is now a stream that drain may end early. Once
        ``close_streams`` was called, ``stream.close()`` is called at once."""
        self._open_streams.add(stream)
        self._streams += 1
        if self._closing:
            stream.close()

    def stream_end(self, stream: ListenStream) -> None:
        self._open_streams.discard(stream)
        self._streams -= 1
        if self._waiters:
            self._wakeup.set()

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        # Counters change on every request; only while someone waits do they wake it.
        self._waiters += 1
        try:
            while not done():
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            self._waiters -= 1

    async def wait_work_done(self) -> None:
        """Until every request in flight is a listen stream (or none is left)."""
        await self._wait_until(lambda: self._requests <= self._streams)

    async def wait_idle(self) -> None:
        """Until nothing is in flight."""
        await self._wait_until(lambda: self._requests == 0)

    def close_streams(self, retry_ms: int) -> None:
        """Ask every listen stream, open now or opened later, to end at its next event
        boundary with ``retry_ms`` as the reconnect hint."""
        self.retry_ms = retry_ms
        self._closing = True
        for stream in list(self._open_streams):
            stream.close()
