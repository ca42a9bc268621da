"""Stage: body limits, and the body read once for every later stage.

A body over ``max_request_body`` gets 413 before it is read; one read whole that takes
longer than ``body_timeout`` gets 408 and its connection closed (a trickling client must
not hold a connection, and up to ``max_request_body`` of memory, indefinitely). Bodies
up to 1 MiB are read whole (so a request can be replayed after a transparent
re-initialize, and stages can parse it); a larger body of a request in a known session
streams straight through, bounded on the way (size and ``body_timeout``, by the
forwarder). A body shorter than its Content-Length is a 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from proxyrunner.mcp.jsonrpc import peek_method
from proxyrunner.proxy.errors import BodyIncomplete, BodyTimeout, BodyTooLarge
from proxyrunner.proxy.pipeline import Exchange, Next

BUFFERED_BODY_LIMIT: Final = 1024 * 1024


class BodyLimits:
    name = "body limits"

    def __init__(
        self, max_body: int, timeout: float = 30.0, on_timeout: Callable[[], None] = lambda: None
    ) -> None:
        self._max = max_body
        self._timeout = timeout
        self._on_timeout = on_timeout

    def handle(self, exchange: Exchange, call_next: Next) -> Awaitable[web.StreamResponse]:
        # A plain function: a GET (a listen stream, held for hours) passes with no
        # coroutine of this stage held along.
        if exchange.request.method != "POST":
            return call_next(exchange)
        return self._post(exchange, call_next)

    async def _post(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        request = exchange.request
        length = request.content_length
        if length is not None and length > self._max:
            raise BodyTooLarge.over(self._max)
        body: bytes | aiohttp.StreamReader
        if exchange.session_id is not None and (length is None or length > BUFFERED_BODY_LIMIT):
            body = request.content  # streams straight through, bounded by the forwarder
        elif length == 0:
            body = b""
        elif request.content.is_eof():
            # All of it arrived already (the usual small body, with its head): no timer.
            body = await self._read(request, length)
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    body = await self._read(request, length)
            except TimeoutError:
                self._on_timeout()
                raise BodyTimeout(f"request body not received within {self._timeout:g}s") from None
        exchange.body = body
        exchange.rpc_method = peek_method(body) if isinstance(body, bytes) else "streamed"
        return await call_next(exchange)

    async def _read(self, request: web.Request, length: int | None) -> bytes:
        body: bytes
        if length is not None:
            # Known size (the usual case): one read of exactly that many bytes, which is
            # cheaper than request.read()'s chunk loop. The size was checked above.
            try:
                body = await request.content.readexactly(length)
            except asyncio.IncompleteReadError:
                raise BodyIncomplete("body shorter than its Content-Length") from None
        else:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise BodyTooLarge.over(self._max) from None
        return body
