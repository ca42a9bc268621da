"""Keep-alive comments on relayed event streams, and noticing a client that went away.

An SSE answer or listen stream can be quiet for minutes: load balancers with an idle
timeout cut it, and a client that went away was only noticed when the backend next wrote
(holding the backend connection, a stream slot and the drain until then). One task per
stream, never a timer per event: every ``interval`` it sends ``: keep-alive`` (an SSE
comment, which clients ignore) if the relay stands between two events waiting on the
backend. A write that fails means the client is gone: the backend side is ended at once
by failing the relay's pending read, so both sides close within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiohttp
from aiohttp import StreamReader, web

KEEPALIVE: Final = b": keep-alive\n\n"


class ClientGone(ConnectionResetError):
    """Set on the backend stream when the client of its relay went away."""


class Heartbeat:
    __slots__ = ("_task", "at_boundary", "waiting")

    def __init__(
        self, interval: float, downstream: web.StreamResponse, backend: StreamReader
    ) -> None:
        self.at_boundary = True
        """The relay last wrote the end of an event (or nothing yet)."""
        self.waiting = False
        """The relay is waiting on the backend, not writing: a comment cannot split a
        write of its own."""
        self._task = asyncio.ensure_future(self._run(interval, downstream, backend))

    async def _run(
        self, interval: float, downstream: web.StreamResponse, backend: StreamReader
    ) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                if self.waiting and self.at_boundary:
                    await downstream.write(KEEPALIVE)
        except (ConnectionResetError, aiohttp.ClientError):
            # What aiohttp raises once the client's transport is closed.
            backend.set_exception(ClientGone("the client went away"))

    async def stop(self) -> None:
        """Before the relay finishes the response: no comment may follow its end."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
