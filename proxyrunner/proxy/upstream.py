"""A lean keep-alive HTTP/1.1 client for the hot path: a POST with a body in memory.

Why it exists: through ``aiohttp.ClientSession`` each backend request builds a
ClientRequest and a ClientResponse, runs trace hooks, timers, cookie and redirect
handling, and copies its headers twice. For a proxy that forwards a small JSON-RPC POST,
that machinery was most of the CPU left per request. Here the caller serializes the
request head once (see ``headers.backend_request_head``), the pool writes head and body in
one ``transport.write`` on a pooled connection, and the answer is parsed by aiohttp's own
response protocol (``ResponseHandler``: the C llhttp parser and a ``StreamReader`` with
aiohttp's flow control). So response framing, chunked decoding, SSE streaming and the
errors raised on a broken body are exactly those of ``ClientSession``.

Scope: plain ``http://`` backends, request bodies already in memory, and GET listen
streams (an open stream then holds a handler, a parser and a ``StreamReader``, not a
ClientSession request and response with their timers and traces). Everything else
(streamed request bodies, DELETE, TLS, query strings) stays on the ClientSession path.

Connection rules:

* A connection goes back to the pool only when its response was read to the end and
  neither side asked to close (``ResponseHandler.should_close``). Anything else, a
  cancellation (timeout, client gone) included, closes it.
* Idle connections are reused newest first and dropped after ``keepalive_timeout``.
* A reused connection can turn out to be closed by the backend (its keep-alive timeout
  raced our write). Then, and only if not one byte of a response arrived on it, the
  request is sent once more on a new connection: a backend that closes an idle
  connection has not read the request on it. A failure on a new connection, or after
  response bytes, is never retried (a POST is not idempotent).
* Response size: the pool never reads a body on its own. ``StreamReader``'s flow control
  stops reading from the backend while 128 KiB (two ``_READ_BUFSIZE``) lie unread, and
  the data path reads a body whole only when its Content-Length is under its buffering
  limit; anything else is relayed as it arrives.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, Protocol

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

# The ClientSession path's limits, so that both paths accept the same responses.
_MAX_LINE_SIZE: Final = 8190
_MAX_FIELD_SIZE: Final = 8190
_READ_BUFSIZE: Final = 2**16
# Idle connections kept per backend; more than that are closed on release.
_MAX_IDLE_PER_HOST: Final = 256

HostKey = tuple[str, int]
_NO_HEADERS: Final = CIMultiDictProxy(CIMultiDict[str]())


class BackendResponse(Protocol):
    """What the data path uses of a backend response: ``aiohttp.ClientResponse`` and
    ``UpstreamResponse`` both have it."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> StreamReader: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...


class UpstreamProtocolError(aiohttp.ClientError):
    """The backend's answer is not valid HTTP/1.1 (reported like any unreachable backend)."""


class _Handler(ResponseHandler):
    """aiohttp's response protocol, plus one fact: did any response byte arrive?"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.answered = False

    def data_received(self, data: bytes) -> None:
        if data:
            self.answered = True
        super().data_received(data)


class _Connection:
    __slots__ = ("handler", "idle_since", "key", "reused")

    def __init__(self, key: HostKey, handler: _Handler) -> None:
        self.key = key
        self.handler = handler
        self.idle_since = 0.0
        self.reused = False

    def usable(self) -> bool:
        handler = self.handler
        # should_close also covers bytes that arrived while idle: a stray answer must
        # never be taken for the next request's.
        return handler.is_connected() and not handler.should_close

    def close(self) -> None:
        self.handler.close()


class UpstreamResponse:
    """A backend response read by the pool, with ``ClientResponse``'s surface as the data
    path uses it. ``release()`` returns the connection to the pool when it can."""

    __slots__ = ("_conn", "_pool", "content", "headers", "reason", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    @property
    def content_type(self) -> str:
        # Only the media type, lowercased, as ClientResponse.content_type gives it.
        value = self.headers.get("Content-Type")
        if value is None:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body. The caller has checked its size (Content-Length) first."""
        content = self.content
        if content.is_eof():
            # The usual small answer came in the same segment as its headers: take the
            # buffer as it is, without read()'s loop of awaits.
            body = content.read_nowait()
        else:
            body = await content.read()
        self.release()
        return body

    def drop_head(self) -> None:
        """Forget the parsed headers once nothing reads them: a relayed stream then holds
        its body reader, not a multidict of ~1 KB, for its whole life."""
        self.headers = _NO_HEADERS

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)

    def __del__(self) -> None:
        # Never released (an exception between send and relay): its state is unknown,
        # so close it rather than leave the socket to the garbage collector.
        conn = self._conn
        if conn is not None:
            conn.close()


class UpstreamPool:
    """Keep-alive connections per backend ``(host, port)``; see the module docstring."""

    def __init__(self, keepalive_timeout: float = 30.0, connect_timeout: float = 5.0) -> None:
        self._keepalive_timeout = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._idle: dict[HostKey, list[_Connection]] = {}
        self._closed = False

    async def send(self, key: HostKey, head: bytes, body: bytes) -> UpstreamResponse:
        """Send one request (``head`` is the serialized request line and headers) and
        return once the response headers arrived. Raises ``aiohttp.ClientError`` or
        ``OSError`` when the backend cannot be reached or answers garbage."""
        conn = self._idle_connection(key)
        if conn is None:
            conn = await self._connect(key)
        try:
            return await self._exchange(conn, head, body)
        except (aiohttp.ClientConnectionError, ConnectionError):
            if not conn.reused or conn.handler.answered:
                raise
        # The backend closed an idle connection under us, before answering: it never
        # read the request. Once, on a new connection.
        conn = await self._connect(key)
        return await self._exchange(conn, head, body)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # ------------------------------------------------------------------ internals

    def _idle_connection(self, key: HostKey) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        stale_before = time.monotonic() - self._keepalive_timeout
        while conns:
            conn = conns.pop()  # the newest: the least likely to be timed out by the peer
            if conn.idle_since >= stale_before and conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _connect(self, key: HostKey) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = key
        # The same bound, and the same error, as the ClientSession path's sock_connect
        # (a TimeoutError: the proxy answers 504 for both).
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, handler = await loop.create_connection(lambda: _Handler(loop), host, port)
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"connecting to {host}:{port} timed out") from exc
        return _Connection(key, handler)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> UpstreamResponse:
        handler = conn.handler
        transport = handler.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ServerDisconnectedError()
        try:
            # A new parser for every response, as ClientSession does. read_until_eof:
            # a response with neither Content-Length nor chunked ends when the backend
            # closes the connection.
            handler.set_response_params(
                read_until_eof=True,
                auto_decompress=False,
                read_bufsize=_READ_BUFSIZE,
                max_line_size=_MAX_LINE_SIZE,
                max_field_size=_MAX_FIELD_SIZE,
            )
            handler.answered = False
            transport.write(head + body)  # one segment for the usual small request
            while True:
                message, payload = await handler.read()
                # 1xx answers (100 Continue, 103 Early Hints) precede the real one;
                # ClientSession skips them too. 101 would be an upgrade we never ask for.
                if not 100 <= message.code < 200 or message.code == 101:
                    break
        except HttpProcessingError as exc:
            conn.close()
            raise UpstreamProtocolError(f"invalid response from the backend: {exc}") from exc
        except BaseException:
            # Timeout, cancellation, connection lost: the connection's state is unknown.
            conn.close()
            raise
        return UpstreamResponse(self, conn, message.code, message.reason, message.headers, payload)

    def _release(self, conn: _Connection) -> None:
        if self._closed or not conn.usable():
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= _MAX_IDLE_PER_HOST:
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        conns.append(conn)
        # The oldest idle connection is first: drop the expired ones from there, so an
        # idle pool shrinks without a timer.
        stale_before = now - self._keepalive_timeout
        while conns[0].idle_since < stale_before:
            conns.pop(0).close()
