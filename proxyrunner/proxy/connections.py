"""Client connections: a per-replica cap, and a deadline on request heads (slowloris).

aiohttp bounds neither: a connection that sends half a request head stays open until the
keep-alive timeout (and aiohttp 3.14's is an hour by default), and nothing stops a
client from opening connections until the process runs out of file descriptors. Both
live in the one object aiohttp makes per connection, its ``RequestHandler``; the runner
below makes ours instead. Cost per connection: a counter update at open and close, and a
timer only while a request head is arriving (cancelled once the head is complete). Idle
connections are closed by aiohttp's own keep-alive timer (``keepalive_timeout``), and
bodies by the body stage's timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxyrunner.config import LimitsConfig
from proxyrunner.metrics import Metrics

_FULL_BODY: Final = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32002,'
    b'"message":"too many connections to this replica"}}'
)
# Written straight to the socket: past the cap, no request is parsed and no task is made.
_FULL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_FULL_BODY)}\r\n\r\n".encode()
    + _FULL_BODY
)


class ConnectionGuard:
    """What every connection of the listener shares: the count and the limits."""

    def __init__(self, limits: LimitsConfig, metrics: Metrics) -> None:
        self.max = limits.max_connections
        self.header_timeout = limits.header_timeout
        self.open = 0
        self._closed = metrics.connections_closed
        metrics.connections_open.set_function(lambda: self.open)

    def closed(self, reason: str) -> None:
        self._closed.labels(reason=reason).inc()


class _GuardedHandler(RequestHandler):
    # RequestHandler has slots: without these a dict per connection (held for as long as
    # the connection, for hours by a listen stream).
    __slots__ = ("_counted", "_guard", "_head_timer")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max:
            # A stream transport (uvloop's is not an asyncio.WriteTransport subclass).
            cast(asyncio.Transport, transport).write(_FULL)
            transport.close()
            guard.closed("max_connections")
            return
        guard.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return  # refused at the door: aiohttp never saw it
        self._counted = False
        self._guard.open -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_incomplete():
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(
                    self._guard.header_timeout, self._head_too_slow
                )
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_incomplete(self) -> bool:
        # Bytes came, yet no complete head is queued and no request is being handled:
        # they are the start of a head. (Not aiohttp's _waiter: with uvloop the first
        # bytes can arrive before the handler task has begun to wait.)
        return self._current_request is None and not self._messages

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_incomplete() and not self._force_close:
            self._guard.closed("header_timeout")
            self.force_close()


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, guard=self._guard, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are counted and whose request heads have a
    deadline."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server with the app's handler and arguments (and runs the
        # app's startup); the same, with our handler class per connection.
        plain = await super()._make_server()
        return _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            guard=self._guard,
            **plain._kwargs,
        )
