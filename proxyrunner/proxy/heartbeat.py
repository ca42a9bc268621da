"""Keep-alive comments on relayed event streams, and noticing a client that went away.

An SSE answer or listen stream can be quiet for minutes: load balancers with an idle
timeout cut it, and a client that went away was only noticed when the backend next wrote
(holding the backend connection, a stream slot and the drain until then). One timer for
every stream of the replica, never a task or a timer per stream or per event: every
``interval`` it sends ``: keep-alive`` (an SSE comment, which clients ignore) to each
stream that stands between two events waiting on the backend. So a stream quiet for an
interval gets a comment within the next one. A write that fails means the client is
gone: the backend side is ended at once by failing the relay's pending read, so both
sides close within one interval.
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


class Heartbeats:
    """The one timer; ``beat`` registers a stream until its ``Heartbeat.stop``."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._beats: dict[Heartbeat, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def beat(self, downstream: web.StreamResponse, backend: StreamReader) -> Heartbeat:
        beat = Heartbeat(self, downstream, backend)
        self._beats[beat] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
        return beat

    def _forget(self, beat: Heartbeat) -> None:
        self._beats.pop(beat, None)
        if not self._beats and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        for beat in list(self._beats):
            beat.due()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)


class Heartbeat:
    __slots__ = ("_backend", "_beats", "_downstream", "_sending", "at_boundary", "waiting")

    def __init__(
        self, beats: Heartbeats, downstream: web.StreamResponse, backend: StreamReader
    ) -> None:
        self._beats = beats
        self._downstream = downstream
        self._backend = backend
        self._sending: asyncio.Future[None] | None = None
        self.at_boundary = True
        """The relay last wrote the end of an event (or nothing yet)."""
        self.waiting = False
        """The relay is waiting on the backend, not writing: a comment cannot split a
        write of its own."""

    def due(self) -> None:
        if self.waiting and self.at_boundary and self._sending is None:
            # A task only for the moment of the write (it may wait for the client).
            self._sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        try:
            await self._downstream.write(KEEPALIVE)
        except (ConnectionResetError, aiohttp.ClientError):
            # What aiohttp raises once the client's transport is closed.
            self._backend.set_exception(ClientGone("the client went away"))
        finally:
            self._sending = None

    async def stop(self) -> None:
        """Before the relay finishes the response: no comment may follow its end."""
        self._beats._forget(self)
        sending = self._sending
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
