"""Keep-alive comments on relayed event streams, noticing a client that went away, and
ending a listen stream on drain.

An SSE answer or listen stream can be quiet for minutes: load balancers with an idle
timeout cut it, and a client that went away was only noticed when the backend next wrote
(holding the backend connection, a stream slot and the drain until then). One timer for
every stream of the replica, never a task or a timer per stream or per event: every
``interval`` it sends ``: keep-alive`` (an SSE comment, which clients ignore) to each
stream that stands between two events waiting on the backend. So a stream quiet for an
interval gets a comment within the next one. A write that fails means the client is
gone: the backend side is ended at once by failing the relay's pending read, so both
sides close within one interval.

Drain (``Traffic.close_streams`` calls ``Heartbeat.close``) ends a listen stream the same
way: the relay reads in its own task, with no second task or wait to interrupt it (a task
per wait of every open stream was ~1.5 KB a stream), so a stream standing at an event
boundary gets its pending read failed with ``StreamClosing``; one in the middle of an
event is let finish it, for ``EVENT_COMPLETION_GRACE`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiohttp
from aiohttp import StreamReader, web

KEEPALIVE: Final = b": keep-alive\n\n"
# How long a draining stream waits for a half-relayed event to complete.
EVENT_COMPLETION_GRACE: Final = 2.0


class ClientGone(ConnectionResetError):
    """Set on the backend stream when the client of its relay went away."""


class StreamClosing(Exception):
    """Set on the backend stream of a listen stream that drain ends (at an event boundary,
    or after the grace for the event it was relaying)."""


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
    __slots__ = (
        "_backend",
        "_beats",
        "_downstream",
        "_grace",
        "_sending",
        "at_boundary",
        "closing",
        "waiting",
    )

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
        self.closing = False
        """Drain asked the stream to end at its next event boundary."""
        self._grace: asyncio.TimerHandle | None = None

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

    def close(self) -> None:
        """Drain: the relay ends the stream at its next event boundary, with a retry hint
        (``ListenStream.close``)."""
        if self.closing:
            return
        self.closing = True
        if self.waiting and self.at_boundary:
            self._backend.set_exception(StreamClosing())
        else:
            # Mid-event, or writing (the relay checks ``closing`` before its next read):
            # the rest of the event may come, within the grace.
            self._grace = asyncio.get_running_loop().call_later(
                EVENT_COMPLETION_GRACE, self._backend.set_exception, StreamClosing()
            )

    async def stop(self) -> None:
        """Before the relay finishes the response: no comment may follow its end."""
        self._beats._forget(self)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        sending = self._sending
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
