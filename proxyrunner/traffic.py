"""What the process is serving right now: requests in flight and client listen streams.

One object holds it, so that readiness, the metrics and the drain read the same truth:
every request the server accepts runs inside ``traffic.request()``, and a request that
turns into a long-lived listen stream (``GET /mcp``, legacy ``GET /sse``) also runs inside
``traffic.listen_stream()``. Waiting is on events, never polling:

- ``wait_work_done()`` returns once nothing but listen streams is left in flight;
- ``close_streams(retry_ms)`` asks every listen stream to end at its next event boundary
  with that reconnect hint;
- ``wait_idle()`` returns once nothing at all is in flight.

A request cancelled while the process drains (it outlived the drain deadline) is counted
in ``cancelled``, which the ``drained`` log line reports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager


class Traffic:
    def __init__(self) -> None:
        self._requests = 0
        self._streams = 0
        self._work_done = asyncio.Event()
        self._idle = asyncio.Event()
        self._closing = asyncio.Event()
        self._work_done.set()
        self._idle.set()
        self.draining = False
        """Set when the process stops taking new traffic: /readyz turns 503."""
        self.cancelled = 0
        """Requests cancelled while draining."""
        self.retry_ms = 1000
        """The reconnect hint closed streams send."""

    @property
    def inflight(self) -> int:
        """Requests being served, listen streams included."""
        return self._requests

    @property
    def streams(self) -> int:
        """Open client listen streams."""
        return self._streams

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._counting(requests=1):
            try:
                yield
            except asyncio.CancelledError:
                if self.draining:
                    self.cancelled += 1
                raise

    def listen_stream(self) -> contextlib.AbstractContextManager[None]:
        """Within a ``request()``: the request is now a stream that drain may end early."""
        return self._counting(streams=1)

    @contextmanager
    def _counting(self, requests: int = 0, streams: int = 0) -> Iterator[None]:
        self._requests += requests
        self._streams += streams
        self._changed()
        try:
            yield
        finally:
            self._requests -= requests
            self._streams -= streams
            self._changed()

    def _changed(self) -> None:
        for event, holds in (
            (self._work_done, self._requests <= self._streams),
            (self._idle, self._requests == 0),
        ):
            if holds:
                event.set()
            else:
                event.clear()

    async def wait_work_done(self) -> None:
        """Until every request in flight is a listen stream (or none is left)."""
        while self._requests > self._streams:
            await self._work_done.wait()

    async def wait_idle(self) -> None:
        """Until nothing is in flight."""
        while self._requests:
            await self._idle.wait()

    def close_streams(self, retry_ms: int) -> None:
        """Ask every listen stream, open now or opened later, to end at its next event
        boundary with ``retry_ms`` as the reconnect hint."""
        self.retry_ms = retry_ms
        self._closing.set()

    async def wait_closing(self) -> None:
        await self._closing.wait()
